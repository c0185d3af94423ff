//! WebSocket clients from chosen loopback source addresses (127.0.0.x), so tens of thousands
//! of connections do not run out of ephemeral ports.

use std::net::{Ipv4Addr, SocketAddr};

use anyhow::Context;
use futures_util::StreamExt;
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::{
    tungstenite::{protocol::WebSocketConfig, Message},
    WebSocketStream,
};

pub type Ws = WebSocketStream<TcpStream>;

/// A refused upgrade, with the wait the server asked for (`Retry-After`, seconds).
#[derive(Debug)]
pub struct Refused {
    pub status: u16,
    pub retry_after: Option<std::time::Duration>,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "upgrade refused with {}", self.status)
    }
}

impl std::error::Error for Refused {}

/// The source address for connection number `i`: 127.0.0.2 … 127.0.0.201.
pub fn source(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, 2 + (i % 200) as u8)
}

/// Connects to `gateway` as the holder of `token` and waits for `ready`.
pub async fn connect(gateway: SocketAddr, token: &str, from: Ipv4Addr) -> anyhow::Result<Ws> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(from.into(), 0))?;
    let stream = socket.connect(gateway).await.context("tcp connect")?;
    stream.set_nodelay(true)?;
    // Small buffers: the load generator holds as many sockets as the gateway.
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let handshake = tokio_tungstenite::client_async_with_config(
        format!("ws://{gateway}/ws?token={token}"),
        stream,
        Some(config),
    )
    .await;
    let (mut ws, _) = match handshake {
        Ok(done) => done,
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            let retry_after = response
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok())
                .map(std::time::Duration::from_secs);
            return Err(Refused {
                status: response.status().as_u16(),
                retry_after,
            }
            .into());
        }
        Err(e) => return Err(anyhow::Error::new(e).context("websocket handshake")),
    };
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) if t.contains("\"ready\"") => return Ok(ws),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(e.into()),
            None => anyhow::bail!("closed before ready"),
        }
    }
}
