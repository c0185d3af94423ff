//! A lean WebSocket client for the fan-out scenario, where the load generator reads 200k frames
//! a second on the same cores as the stack it measures. Connections are opened and upgraded on
//! the async runtime, then handed to reader threads of their own ([`read_on_threads`]): each
//! waits on one epoll set for all its sockets and reads whatever is ready, with no task to wake
//! and no future to poll per frame. Frames are parsed in place from one buffer per socket
//! (tungstenite's frame header parser and formatter, without its per-message allocation, buffer
//! zeroing and stream machinery), and client frames are written masked, as the protocol
//! requires.

use std::{
    io::{Cursor, ErrorKind, Read, Write},
    net::{Ipv4Addr, SocketAddr},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpSocket, TcpStream},
};
use tokio_tungstenite::tungstenite::protocol::frame::{
    coding::{Control, Data, OpCode},
    Frame, FrameHeader,
};

/// Bytes read from the socket at once.
const READ_CHUNK: usize = 16 * 1024;
/// The largest frame accepted from the gateway.
const MAX_FRAME: u64 = 1 << 20;
/// How long a reader thread waits for readiness before looking at its stop flag.
const POLL_TIMEOUT: Duration = Duration::from_millis(20);
/// How long a write may wait for room in a full socket buffer before it fails.
const WRITE_PATIENCE: Duration = Duration::from_secs(5);

/// A connection's writing side (a duplicate of its socket), shared by its reader thread (for
/// pongs) and its sender, if any; the lock keeps their frames whole.
pub type Writer = Arc<Mutex<std::net::TcpStream>>;

/// An upgraded connection: its socket (non-blocking) and the bytes read but not yet parsed.
pub struct Connection {
    socket: std::net::TcpStream,
    frames: Frames,
    writer: Writer,
}

/// A socket's read buffer: `buf[start..end]` is read and not yet parsed.
struct Frames {
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
) -> anyhow::Result<Connection> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(from.into(), 0))?;
    let mut stream = socket.connect(gateway).await.context("tcp connect")?;
    stream.set_nodelay(true)?;
    let key = tokio_tungstenite::tungstenite::handshake::client::generate_key();
    let request = format!(
        "GET /ws?token={token} HTTP/1.1\r\nHost: {gateway}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    let mut frames = Frames {
        buf: vec![0; READ_CHUNK],
        start: 0,
        end: 0,
    };
    // The response head; whatever follows it is the first frames.
    let head_end = loop {
        if let Some(at) = frames.buf[..frames.end]
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
        {
            break at + 4;
        }
        if frames.end == frames.buf.len() || !fill(&mut stream, &mut frames).await? {
            bail!("no complete handshake response");
        }
    };
    let head = String::from_utf8_lossy(&frames.buf[..head_end]);
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
    frames.start = head_end;
    loop {
        match frames.next()? {
            Some(Incoming::Text(t)) if contains(t, b"\"ready\"") => break,
            Some(Incoming::Ping(payload)) => {
                stream.write_all(&masked(Frame::pong(payload))?).await?
            }
            Some(Incoming::Close) => bail!("closed before ready"),
            Some(_) => {}
            None => {
                if !fill(&mut stream, &mut frames).await? {
                    bail!("closed before ready");
                }
            }
        }
    }
    // Off the runtime: from here the socket is read by a reader thread.
    let socket = stream.into_std()?;
    let writer = Arc::new(Mutex::new(socket.try_clone()?));
    Ok(Connection {
        socket,
        frames,
        writer,
    })
}

/// A connection with no handshake, whose peer writes server frames straight away (the `floor`
/// scenario's sockets).
pub fn unwrapped(socket: std::net::TcpStream) -> anyhow::Result<Connection> {
    socket.set_nonblocking(true)?;
    let writer = Arc::new(Mutex::new(socket.try_clone()?));
    Ok(Connection {
        socket,
        frames: Frames {
            buf: vec![0; READ_CHUNK],
            start: 0,
            end: 0,
        },
        writer,
    })
}

/// Reads more bytes during the handshake; `false` at the end of the stream.
async fn fill(stream: &mut TcpStream, frames: &mut Frames) -> anyhow::Result<bool> {
    let n = stream.read(frames.spare()).await?;
    frames.end += n;
    Ok(n > 0)
}

impl Connection {
    /// The writing side, for a sender.
    pub fn writer(&self) -> Writer {
        self.writer.clone()
    }

    /// Reads and handles everything the socket holds; `false` once the connection is over
    /// (closed, refused a pong, or sent something this client cannot read).
    fn drain(&mut self, tally: &mut impl Tally) -> bool {
        if !self.handle_buffered(tally) {
            return false;
        }
        loop {
            let room = self.frames.spare();
            let wanted = room.len();
            match (&self.socket).read(room) {
                Ok(0) => return false,
                Ok(n) => {
                    self.frames.end += n;
                    if !self.handle_buffered(tally) {
                        return false;
                    }
                    // A read that did not fill the room emptied the socket: the next bytes to
                    // arrive raise a new readiness event (as tokio also relies on).
                    if n < wanted {
                        return true;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
    }

    /// Handles every whole frame buffered; `false` once the connection is over.
    fn handle_buffered(&mut self, tally: &mut impl Tally) -> bool {
        loop {
            match self.frames.next() {
                Ok(Some(Incoming::Text(t))) => tally.text(t),
                Ok(Some(Incoming::Ping(payload))) => {
                    if write_frame(&self.writer, Frame::pong(payload)).is_err() {
                        return false;
                    }
                }
                Ok(Some(Incoming::Other)) => {}
                Ok(None) => return true,
                Ok(Some(Incoming::Close)) | Err(_) => return false,
            }
        }
    }
}

impl Frames {
    /// Room for more bytes after what is buffered, compacting or growing the buffer as needed.
    fn spare(&mut self) -> &mut [u8] {
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
        &mut self.buf[self.end..]
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

    /// The next whole frame buffered, if any.
    fn next(&mut self) -> anyhow::Result<Option<Incoming<'_>>> {
        if !self.complete()? {
            return Ok(None);
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

/// What a reader thread does with the text frames of its connections.
pub trait Tally: Send + 'static {
    fn text(&mut self, payload: &[u8]);
}

/// Reader threads, each with its share of the connections.
pub struct Readers<T> {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<T>>,
}

/// Spreads `connections` over `threads` reader threads, each handing its text frames to its own
/// tally (`tally(k)` for thread `k`) and answering pings, until [`Readers::stop`].
pub fn read_on_threads<T: Tally>(
    connections: Vec<Connection>,
    threads: usize,
    tally: impl Fn(usize) -> T,
) -> anyhow::Result<Readers<T>> {
    let threads = threads.max(1);
    let mut shares: Vec<Vec<Connection>> = (0..threads).map(|_| Vec::new()).collect();
    for (i, c) in connections.into_iter().enumerate() {
        shares[i % threads].push(c);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let mut handles = Vec::with_capacity(threads);
    for (k, share) in shares.into_iter().enumerate() {
        let mut poll = mio::Poll::new()?;
        let mut open = Vec::with_capacity(share.len());
        for (i, c) in share.into_iter().enumerate() {
            poll.registry().register(
                &mut mio::unix::SourceFd(&std::os::fd::AsRawFd::as_raw_fd(&c.socket)),
                mio::Token(i),
                mio::Interest::READABLE,
            )?;
            open.push(Some(c));
        }
        let stop = stop.clone();
        let mut tally = tally(k);
        handles.push(
            std::thread::Builder::new()
                .name(format!("reader-{k}"))
                .spawn(move || {
                    read_loop(&mut poll, &mut open, &mut tally, &stop);
                    tally
                })?,
        );
    }
    Ok(Readers {
        stop,
        threads: handles,
    })
}

/// One reader thread: every connection is drained once at the start (frames may have arrived
/// before registration), then whenever it is readable, until `stop` or no connection is open.
fn read_loop(
    poll: &mut mio::Poll,
    open: &mut [Option<Connection>],
    tally: &mut impl Tally,
    stop: &AtomicBool,
) {
    let mut events = mio::Events::with_capacity(1024);
    let mut left = open.len();
    let mut ready: Vec<usize> = (0..open.len()).collect();
    while left > 0 && !stop.load(Ordering::Relaxed) {
        for i in ready.drain(..) {
            let Some(c) = open[i].as_mut() else { continue };
            if !c.drain(tally) {
                open[i] = None;
                left -= 1;
            }
        }
        match poll.poll(&mut events, Some(POLL_TIMEOUT)) {
            Ok(()) => ready.extend(events.iter().map(|e| e.token().0)),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

impl<T> Readers<T> {
    /// Stops the threads and returns their tallies; an error if one of them panicked (its
    /// samples would be missing from the figures).
    pub fn stop(self) -> anyhow::Result<Vec<T>> {
        self.stop.store(true, Ordering::Relaxed);
        self.threads
            .into_iter()
            .map(|t| {
                t.join()
                    .map_err(|_| anyhow::anyhow!("a reader thread panicked"))
            })
            .collect()
    }
}

/// Writes `payload` as one masked text frame.
pub fn send_text(writer: &Writer, payload: &[u8]) -> anyhow::Result<()> {
    write_frame(
        writer,
        Frame::message(payload.to_vec(), OpCode::Data(Data::Text), true),
    )
}

/// `frame`, masked, as bytes.
fn masked(mut frame: Frame) -> anyhow::Result<Vec<u8>> {
    let key = uuid::Uuid::new_v4();
    let b = key.as_bytes();
    frame.header_mut().mask = Some([b[0], b[1], b[2], b[3]]);
    let mut bytes = Vec::with_capacity(frame.len() + 4);
    frame.format(&mut bytes)?;
    Ok(bytes)
}

/// Writes `frame` whole on the non-blocking socket, waiting (briefly, at most
/// [`WRITE_PATIENCE`]) while its buffer is full.
fn write_frame(writer: &Writer, frame: Frame) -> anyhow::Result<()> {
    let bytes = masked(frame)?;
    let socket = writer
        .lock()
        .map_err(|_| anyhow::anyhow!("a writer's lock was poisoned"))?;
    let mut rest = &bytes[..];
    let since = Instant::now();
    while !rest.is_empty() {
        match (&*socket).write(rest) {
            Ok(0) => bail!("the socket took nothing"),
            Ok(n) => rest = &rest[n..],
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                if since.elapsed() > WRITE_PATIENCE {
                    bail!("the socket stayed full");
                }
                std::thread::sleep(Duration::from_micros(200));
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
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

    /// Collects the text frames a reader thread sees.
    struct Texts(Arc<Mutex<Vec<Vec<u8>>>>);

    impl Tally for Texts {
        fn text(&mut self, payload: &[u8]) {
            self.0.lock().unwrap().push(payload.to_vec());
        }
    }

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

    /// Reads one masked client frame and returns its opcode and unmasked payload. Reads no byte
    /// past the frame: the next one may have arrived with it (a pong and the text after it).
    async fn client_frame(socket: &mut tokio::net::TcpStream) -> anyhow::Result<(OpCode, Vec<u8>)> {
        let mut head = Vec::new();
        let (header, length) = loop {
            let mut byte = [0u8; 1];
            socket
                .read_exact(&mut byte)
                .await
                .context("client closed")?;
            head.push(byte[0]);
            if let Some(parsed) = FrameHeader::parse(&mut Cursor::new(&head[..]))? {
                break parsed;
            }
        };
        let mut payload = vec![0u8; usize::try_from(length)?];
        socket
            .read_exact(&mut payload)
            .await
            .context("client closed")?;
        let mask = header.mask.context("client frames are masked")?;
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= mask[i % 4];
        }
        Ok((header.opcode, payload))
    }

    #[tokio::test]
    async fn frames_split_anywhere_or_larger_than_the_buffer_arrive_whole() -> anyhow::Result<()> {
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
                // A frame right behind `ready`: read with the handshake, handled by the reader.
                first.extend(server_frame(OpCode::Data(Data::Text), b"early"));
                socket.write_all(&first).await.unwrap();
                assert_eq!(
                    client_frame(&mut socket).await?,
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
                // A ping among them: the reader thread answers it before it reads on.
                let mut two = server_frame(OpCode::Control(Control::Ping), b"later");
                two.extend(server_frame(OpCode::Data(Data::Text), b"two"));
                two.extend(server_frame(OpCode::Data(Data::Text), b"three"));
                socket.write_all(&two).await.unwrap();
                assert_eq!(
                    client_frame(&mut socket).await?,
                    (OpCode::Control(Control::Pong), b"later".to_vec())
                );
                let (opcode, text) = client_frame(&mut socket).await?;
                assert_eq!(opcode, OpCode::Data(Data::Text));
                assert_eq!(text, b"sent");
                anyhow::Ok(())
            })
        };
        let connection = connect(addr, "tok", Ipv4Addr::LOCALHOST).await.unwrap();
        let writer = connection.writer();
        let texts: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
        let readers = read_on_threads(vec![connection], 1, |_| Texts(texts.clone())).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while texts.lock().unwrap().len() < 5 {
            assert!(
                Instant::now() < deadline,
                "only {:?}",
                texts.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            *texts.lock().unwrap(),
            vec![
                b"early".to_vec(),
                b"one".to_vec(),
                big.into_bytes(),
                b"two".to_vec(),
                b"three".to_vec()
            ]
        );
        send_text(&writer, b"sent")?;
        server.await??;
        assert_eq!(readers.stop()?.len(), 1);
        Ok(())
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
