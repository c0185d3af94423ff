//! Every service's accept loop: binds `HOST:PORT`, serves a router on each accepted connection
//! (HTTP/1.1, upgrades included; nothing here speaks HTTP/2), and stops gracefully.
//!
//! It is hyper's, driven directly rather than through `axum::serve`, for one setting axum does
//! not expose: the **header read timeout** (`HTTP_HEADER_TIMEOUT_SECONDS`). A connection must
//! deliver a request's head within it of being ready for one — just accepted, or its previous
//! response sent — or it is closed. Without it a client that connects and sends nothing, or
//! half a request line, holds a connection (a file descriptor of the process's few thousand)
//! for as long as it likes, and enough of them stop the service for everyone. The same limit
//! ends idle keep-alive connections, so a proxy in front must give up its idle upstream
//! connections sooner (nginx's `keepalive_timeout`, 60 s by default, against the REST
//! services' 75 s), or a request it sends on one just as the service closes it fails.

use std::{future::Future, io, time::Duration};

use axum::{body::Body, extract::ConnectInfo, Router};
use hyper::{body::Incoming, server::conn::http1};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tower::Service;

/// Binds `HOST:PORT` and reports the port actually bound (`PORT=0` picks a free one).
pub async fn bind(server: &crate::config::ServerConfig) -> anyhow::Result<(TcpListener, u16)> {
    use anyhow::Context;
    let listener = TcpListener::bind(server.address())
        .await
        .with_context(|| format!("binding {}", server.address()))?;
    let port = listener.local_addr()?.port();
    Ok((listener, port))
}

/// Serves `router` on `listener` until SIGTERM/SIGINT, then lets in-flight requests finish.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    header_timeout: Duration,
) -> io::Result<()> {
    serve_until(listener, router, header_timeout, crate::shutdown::signal()).await
}

/// Serves `router` on `listener` until `stop` completes: then accepts nothing more, lets each
/// connection finish the request it is serving (idle ones close at once) and returns when all
/// have. Upgraded connections (WebSockets) are the router's own from the upgrade on. Handlers
/// see the client's address as `ConnectInfo<SocketAddr>`.
pub async fn serve_until(
    listener: TcpListener,
    router: Router,
    header_timeout: Duration,
    stop: impl Future<Output = ()>,
) -> io::Result<()> {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    // `stopping` is dropped to tell the connections to stop; each holds a `running` receiver,
    // so `finished.closed()` says when the last one is done.
    let (stopping, _) = tokio::sync::watch::channel(());
    let (finished, running) = tokio::sync::watch::channel(());
    tokio::pin!(stop);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    accept_failed(e).await;
                    continue;
                }
            },
            () = &mut stop => break,
        };
        without_delay(&stream);
        let router = router.clone();
        let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            router.clone().call(req.map(Body::new))
        });
        let conn = builder
            .serve_connection(TokioIo::new(stream), service)
            .with_upgrades();
        let mut stopping = stopping.subscribe();
        let running = running.clone();
        tokio::spawn(async move {
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = stopping.changed() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
            drop(running);
        });
    }
    drop(listener);
    drop(stopping);
    drop(running);
    finished.closed().await;
    Ok(())
}

/// A failed accept: the client gave up first (nothing to do), or the process is out of file
/// descriptors or memory (`EMFILE`, `ENFILE`, `ENOMEM`), when accepting again at once would
/// only spin: it waits a moment for connections to close.
async fn accept_failed(e: io::Error) {
    if matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    ) {
        return;
    }
    metrics::counter!("http_accept_errors_total").increment(1);
    tracing::error!(error = %e, "accepting a connection failed; pausing accepts for 100 ms");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// Sets `TCP_NODELAY`, which sockets lack by default: with Nagle's algorithm a small write
/// waits while an earlier one is unacknowledged, and a client that has nothing to send
/// acknowledges late (delayed ACKs, 40 ms on Linux). A gateway's frames are small writes to
/// clients that mostly listen: without it about one frame in a hundred came 40 ms late.
fn without_delay(stream: &TcpStream) {
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(error = %e, "could not set TCP_NODELAY on an accepted connection");
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::{io, net::SocketAddr, time::Duration};

    use axum::{extract::ConnectInfo, routing::get, Router};
    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::{TcpListener, TcpStream},
    };

    /// Serves `router` on a free port with `header_timeout`; stops when the sender sends or
    /// drops. Also for other modules' tests of the edge.
    pub(crate) async fn serving(
        router: Router,
        header_timeout: Duration,
    ) -> io::Result<(SocketAddr, tokio::sync::oneshot::Sender<()>)> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(super::serve_until(
            listener,
            router,
            header_timeout,
            async move {
                let _ = stopped.await;
            },
        ));
        Ok((addr, stop))
    }

    /// A server answering `/peer` with the client's address, with a one-second header timeout.
    async fn server() -> io::Result<(SocketAddr, tokio::sync::oneshot::Sender<()>)> {
        let router = Router::new().route(
            "/peer",
            get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move { peer.to_string() }),
        );
        serving(router, Duration::from_secs(1)).await
    }

    /// A connection to `addr` that has sent `request` (whole or not).
    pub(crate) async fn sent(addr: SocketAddr, request: &[u8]) -> io::Result<TcpStream> {
        let mut stream = TcpStream::connect(addr).await?;
        stream.write_all(request).await?;
        Ok(stream)
    }

    /// Reads until the server closes the connection; `None` if it is still open after 5 s.
    pub(crate) async fn read_to_close(stream: &mut TcpStream) -> Option<String> {
        let mut all = Vec::new();
        match tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut all)).await {
            Ok(_) => Some(String::from_utf8_lossy(&all).into_owned()),
            Err(_) => None,
        }
    }

    #[tokio::test]
    async fn a_connection_that_never_completes_a_request_head_is_closed() -> io::Result<()> {
        let (addr, _stop) = server().await?;
        let mut silent = sent(addr, b"").await?;
        let mut partial = sent(addr, b"GET /peer HTTP/1.1\r\nHost: x\r\n").await?;
        for stream in [&mut silent, &mut partial] {
            assert!(
                read_to_close(stream).await.is_some(),
                "closed after the header timeout"
            );
        }
        Ok(())
    }

    #[tokio::test]
    async fn requests_are_answered_with_the_peer_address_and_without_delay() -> io::Result<()> {
        let (addr, _stop) = server().await?;
        let request = b"GET /peer HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
        let mut client = sent(addr, request).await?;
        let local = client.local_addr()?;
        let answer = read_to_close(&mut client).await.unwrap_or_default();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.ends_with(&local.to_string()), "{answer}");

        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let client = TcpStream::connect(listener.local_addr()?);
        let (accepted, client) = tokio::join!(listener.accept(), client);
        let ((accepted, _), _client) = (accepted?, client?);
        assert!(!accepted.nodelay()?, "the OS default: Nagle on");
        super::without_delay(&accepted);
        assert!(accepted.nodelay()?);
        Ok(())
    }

    #[tokio::test]
    async fn an_idle_keep_alive_connection_is_closed_and_stopping_waits_for_none() -> io::Result<()>
    {
        let (addr, stop) = server().await?;
        let mut client = sent(addr, b"GET /peer HTTP/1.1\r\nHost: x\r\n\r\n").await?;
        let answer = read_to_close(&mut client).await;
        assert!(
            answer
                .as_deref()
                .is_some_and(|a| a.starts_with("HTTP/1.1 200")),
            "answered, then closed after the header timeout: {answer:?}"
        );
        assert!(stop.send(()).is_ok(), "the server is still running");
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            TcpStream::connect(addr).await.is_err(),
            "nothing is accepted once stopped"
        );
        Ok(())
    }
}
