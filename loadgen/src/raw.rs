//! A lean WebSocket client for the fan-out scenario, where the load generator reads 200k frames
//! a second on the same cores as the stack it measures: frames are parsed in place from one
//! buffer per socket (tungstenite's frame header parser and formatter, without its per-message
//! allocation, buffer zeroing and stream machinery), and client frames are written masked, as
//! the protocol requires.

use std::{
    io::Cursor,
    net::{Ipv4Addr, SocketAddr},
    sync::Arc,
};

use anyhow::{bail, Context};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{
        tcp::{OwnedReadHalf, OwnedWriteHalf},
        TcpSocket,
    },
    sync::Mutex,
};
use tokio_tungstenite::tungstenite::protocol::frame::{
    coding::{Control, Data, OpCode},
    Frame, FrameHeader,
};

/// Bytes read from the socket at once.
const READ_CHUNK: usize = 16 * 1024;
/// The largest frame accepted from the gateway.
const MAX_FRAME: u64 = 1 << 20;

/// The writing half, shared by a connection's reader (for pongs) and its sender, if any.
pub type Writer = Arc<Mutex<OwnedWriteHalf>>;

/// The reading half and the bytes read but not yet parsed.
pub struct Reader {
    socket: OwnedReadHalf,
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

/// A whole frame from the gateway.
pub enum Incoming<'a> {
    Text(&'a [u8]),
    Ping(Vec<u8>),
    Close,
    Other,
}

/// Connects to `gateway` as the holder of `token`, from `from`, and waits for `ready`.
pub async fn connect(
    gateway: SocketAddr,
    token: &str,
    from: Ipv4Addr,
) -> anyhow::Result<(Reader, Writer)> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(from.into(), 0))?;
    let stream = socket.connect(gateway).await.context("tcp connect")?;
    stream.set_nodelay(true)?;
    let (read, mut write) = stream.into_split();
    let key = tokio_tungstenite::tungstenite::handshake::client::generate_key();
    let request = format!(
        "GET /ws?token={token} HTTP/1.1\r\nHost: {gateway}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    write.write_all(request.as_bytes()).await?;
    let mut reader = Reader {
        socket: read,
        buf: vec![0; READ_CHUNK],
        start: 0,
        end: 0,
    };
    // The response head; whatever follows it is the first frames.
    let head_end = loop {
        if let Some(at) = reader.buf[..reader.end]
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
        {
            break at + 4;
        }
        if reader.end == reader.buf.len() || !reader.fill().await? {
            bail!("no complete handshake response");
        }
    };
    let head = String::from_utf8_lossy(&reader.buf[..head_end]);
    if !head.starts_with("HTTP/1.1 101") {
        bail!(
            "handshake refused: {}",
            head.lines().next().unwrap_or_default()
        );
    }
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    if !head.contains(&accept) {
        bail!("handshake response without the expected Sec-WebSocket-Accept");
    }
    reader.start = head_end;
    let writer = Arc::new(Mutex::new(write));
    loop {
        match reader.next().await? {
            Some(Incoming::Text(t)) if contains(t, b"\"ready\"") => return Ok((reader, writer)),
            Some(Incoming::Ping(payload)) => pong(&writer, payload).await?,
            Some(Incoming::Close) | None => bail!("closed before ready"),
            Some(_) => {}
        }
    }
}

impl Reader {
    /// Reads more bytes; `false` at the end of the stream.
    pub async fn fill(&mut self) -> anyhow::Result<bool> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.buf.len() - self.end < READ_CHUNK / 4 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end == self.buf.len() {
            self.buf.resize(self.buf.len() + READ_CHUNK, 0);
        }
        let n = self.socket.read(&mut self.buf[self.end..]).await?;
        self.end += n;
        Ok(n > 0)
    }

    /// Whether a whole frame is buffered; when only its start is, makes room for the rest.
    fn complete(&mut self) -> anyhow::Result<bool> {
        let mut cursor = Cursor::new(&self.buf[self.start..self.end]);
        let Some((_, length)) = FrameHeader::parse(&mut cursor)? else {
            return Ok(false);
        };
        if length > MAX_FRAME {
            bail!("a {length}-byte frame from the gateway");
        }
        let size = cursor.position() as usize + length as usize;
        if self.start + size <= self.end {
            return Ok(true);
        }
        if self.start + size > self.buf.len() {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
            if size > self.buf.len() {
                self.buf.resize(size + READ_CHUNK, 0);
            }
        }
        Ok(false)
    }

    /// The next frame, reading as needed; `None` at the end of the stream.
    pub async fn next(&mut self) -> anyhow::Result<Option<Incoming<'_>>> {
        while !self.complete()? {
            if !self.fill().await? {
                return Ok(None);
            }
        }
        let mut cursor = Cursor::new(&self.buf[self.start..self.end]);
        let Some((header, length)) = FrameHeader::parse(&mut cursor)? else {
            bail!("a frame vanished from the buffer");
        };
        let body = self.start + cursor.position() as usize;
        let end = body + length as usize;
        self.start = end;
        if !header.is_final || header.mask.is_some() {
            bail!("a fragmented or masked frame from the gateway");
        }
        let payload = &self.buf[body..end];
        Ok(Some(match header.opcode {
            OpCode::Data(Data::Text) => Incoming::Text(payload),
            OpCode::Control(Control::Ping) => Incoming::Ping(payload.to_vec()),
            OpCode::Control(Control::Close) => Incoming::Close,
            _ => Incoming::Other,
        }))
    }
}

/// Writes `payload` as one masked text frame.
pub async fn send_text(writer: &Writer, payload: &[u8]) -> anyhow::Result<()> {
    write_frame(
        writer,
        Frame::message(payload.to_vec(), OpCode::Data(Data::Text), true),
    )
    .await
}

/// Answers a ping.
pub async fn pong(writer: &Writer, payload: Vec<u8>) -> anyhow::Result<()> {
    write_frame(writer, Frame::pong(payload)).await
}

async fn write_frame(writer: &Writer, mut frame: Frame) -> anyhow::Result<()> {
    let key = uuid::Uuid::new_v4();
    let b = key.as_bytes();
    frame.header_mut().mask = Some([b[0], b[1], b[2], b[3]]);
    let mut bytes = Vec::with_capacity(frame.len() + 4);
    frame.format(&mut bytes)?;
    writer.lock().await.write_all(&bytes).await?;
    Ok(())
}

/// Whether `needle` occurs in `haystack`.
fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    memchr::memmem::find(haystack, needle).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;
    use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

    /// An unmasked server frame.
    fn server_frame(opcode: OpCode, payload: &[u8]) -> Vec<u8> {
        let frame = match opcode {
            OpCode::Control(Control::Ping) => Frame::ping(payload.to_vec()),
            data => Frame::message(payload.to_vec(), data, true),
        };
        let mut out = Vec::new();
        frame.format(&mut out).unwrap();
        out
    }

    /// Reads one masked client frame and returns its opcode and unmasked payload.
    async fn client_frame(socket: &mut tokio::net::TcpStream) -> (OpCode, Vec<u8>) {
        let mut buf = Vec::new();
        loop {
            let mut cursor = Cursor::new(&buf[..]);
            if let Some((header, length)) = FrameHeader::parse(&mut cursor).unwrap() {
                let start = cursor.position() as usize;
                if buf.len() >= start + length as usize {
                    let mask = header.mask.expect("client frames are masked");
                    let payload = buf[start..start + length as usize]
                        .iter()
                        .enumerate()
                        .map(|(i, b)| b ^ mask[i % 4])
                        .collect();
                    return (header.opcode, payload);
                }
            }
            let mut chunk = [0u8; 512];
            let n = socket.read(&mut chunk).await.unwrap();
            assert!(n > 0, "client closed");
            buf.extend_from_slice(&chunk[..n]);
        }
    }

    #[tokio::test]
    async fn frames_split_anywhere_or_larger_than_the_buffer_arrive_whole() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let big = "x".repeat(3 * READ_CHUNK);
        let server = {
            let big = big.clone();
            tokio::spawn(async move {
                let (mut socket, _) = listener.accept().await.unwrap();
                let mut request = Vec::new();
                while !request.ends_with(b"\r\n\r\n") {
                    let mut byte = [0u8; 1];
                    socket.read_exact(&mut byte).await.unwrap();
                    request.push(byte[0]);
                }
                let request = String::from_utf8(request).unwrap();
                assert!(request.starts_with("GET /ws?token=tok HTTP/1.1\r\n"));
                let key = request
                    .lines()
                    .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: "))
                    .unwrap();
                // The response, a ping and `ready` in one write: the frames after the head
                // must not be lost.
                let mut first = format!(
                    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                     Connection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
                    derive_accept_key(key.as_bytes())
                )
                .into_bytes();
                first.extend(server_frame(OpCode::Control(Control::Ping), b"hb"));
                first.extend(server_frame(
                    OpCode::Data(Data::Text),
                    br#"{"type":"ready"}"#,
                ));
                socket.write_all(&first).await.unwrap();
                assert_eq!(
                    client_frame(&mut socket).await,
                    (OpCode::Control(Control::Pong), b"hb".to_vec())
                );
                // Split inside a header, then a frame three buffers long, then two at once.
                let one = server_frame(OpCode::Data(Data::Text), b"one");
                let long = server_frame(OpCode::Data(Data::Text), big.as_bytes());
                socket.write_all(&one[..1]).await.unwrap();
                socket.flush().await.unwrap();
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                socket.write_all(&one[1..]).await.unwrap();
                socket.write_all(&long).await.unwrap();
                let mut two = server_frame(OpCode::Data(Data::Text), b"two");
                two.extend(server_frame(OpCode::Data(Data::Text), b"three"));
                socket.write_all(&two).await.unwrap();
                let (opcode, text) = client_frame(&mut socket).await;
                assert_eq!(opcode, OpCode::Data(Data::Text));
                assert_eq!(text, b"sent");
            })
        };
        let (mut reader, writer) = connect(addr, "tok", Ipv4Addr::LOCALHOST).await.unwrap();
        let mut texts = Vec::new();
        while texts.len() < 4 {
            match reader.next().await.unwrap() {
                Some(Incoming::Text(t)) => texts.push(t.to_vec()),
                Some(_) => {}
                None => panic!("closed early"),
            }
        }
        assert_eq!(
            texts,
            vec![
                b"one".to_vec(),
                big.into_bytes(),
                b"two".to_vec(),
                b"three".to_vec()
            ]
        );
        send_text(&writer, b"sent").await.unwrap();
        server.await.unwrap();
    }

    #[tokio::test]
    async fn a_refused_handshake_is_an_error() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = socket.read(&mut buf).await;
            let _ = socket
                .write_all(b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\n\r\n")
                .await;
        });
        let refused = connect(addr, "bad", Ipv4Addr::LOCALHOST).await;
        assert!(refused.is_err_and(|e| e.to_string().contains("401")));
    }
}
