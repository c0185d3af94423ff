//! A connection's way out: the frames queued for it, the rest of a frame partly written, and
//! the socket they go to.
//!
//! Two parties write to one socket. The connection's task writes what is queued, and
//! tungstenite's own frames (pings, pongs, the close frame) through [`Stream`]. Whoever
//! delivers a frame (the dispatcher, mostly) writes it straight to the socket when nothing is
//! queued or partly written: no queueing, no waking the task, no polling of its loop — at a
//! busy room's rate that is most of what a delivery costs in user space. Every write happens
//! under the connection's [`Outgoing`] lock and never waits there (the socket is non-blocking),
//! and a frame the socket takes only part of is finished before anything else goes: frames
//! never interleave. Only what the socket does not take at once is left to the task.
//!
//! A batch of events (a busy room's messages, published together) is delivered [`corked`]: each
//! connection's frames of the batch go out in one write when the batch is done, as the task
//! would have written them, instead of one write per frame.

use std::{
    collections::VecDeque,
    io,
    pin::Pin,
    sync::Arc,
    task::{ready, Context, Poll},
};

use bytes::{Buf, Bytes};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};

use super::state::{ConnShared, Outbound};

/// What is on its way to one connection's socket; see the module's documentation.
#[derive(Default)]
pub struct Outgoing {
    pub(super) queue: VecDeque<Outbound>,
    /// The rest of a frame the socket took only part of: it goes before anything else.
    partial: Option<Bytes>,
    /// tungstenite's last write (a ping, a pong, the close frame) ended inside its frame; the
    /// task flushes tungstenite before it writes anything else.
    control_partial: bool,
    /// The socket, while frames may go out: attached once the connection is serving, detached
    /// when it starts closing (nothing is written after the close frame).
    wire: Option<Arc<TcpStream>>,
    /// What is queued waits for the [`corked`] section that queued it to end.
    corked: bool,
    /// When the socket last took part of a write it could not take whole: while the client
    /// reads slowly, this moves; while it reads nothing, it does not.
    progressed: Option<std::time::Instant>,
}

/// What became of a frame offered for writing straight away.
pub(super) enum Direct {
    /// The socket took all of it.
    Written,
    /// The socket took part of it; the connection's task has to write the rest.
    Started,
    /// Not written: it has to be queued.
    Queue(Outbound),
}

impl Outgoing {
    pub(super) fn attach(&mut self, wire: Arc<TcpStream>) {
        self.wire = Some(wire);
    }

    pub(super) fn detach(&mut self) {
        self.wire = None;
    }

    /// Whether anything waits for the connection's task: queued frames or a frame's rest.
    pub(super) fn has_work(&self) -> bool {
        !self.queue.is_empty() || self.partial.is_some()
    }

    /// When the socket last took bytes of a write it could not take whole at once (see the
    /// connection loop's limit on a blocked write).
    pub(super) fn progressed(&self) -> Option<std::time::Instant> {
        self.progressed
    }

    /// Whether what is queued waits for a [`corked`] section (whose end writes it), not for the
    /// connection's task.
    pub(super) fn is_corked(&self) -> bool {
        self.corked
    }

    /// Writes `out` to the socket now if nothing goes before it and the socket has room. While
    /// this thread's writes are held back ([`corked`]) it is to be queued instead, and the
    /// connection (`conn`, whose way out this is) is written when they go.
    pub(super) fn write_now(&mut self, out: Outbound, conn: &Arc<ConnShared>) -> Direct {
        let Some(wire) = &self.wire else {
            return Direct::Queue(out);
        };
        if self.corked
            || !self.queue.is_empty()
            || self.partial.is_some()
            || self.control_partial
            // The clock is read only for a frame that would go out now.
            || conn.expired()
        {
            return Direct::Queue(out);
        }
        if CORK
            .with_borrow_mut(|cork| cork.as_mut().map(|held| held.push(conn.clone())))
            .is_some()
        {
            self.corked = true;
            return Direct::Queue(out);
        }
        let bytes = out.frame.bytes();
        match wire.try_write(bytes) {
            Ok(n) if n == bytes.len() => {
                count_written(out.label, 1, out.published_at_us);
                Direct::Written
            }
            Ok(n) => {
                self.partial = Some(bytes.slice(n..));
                count_written(out.label, 1, out.published_at_us);
                Direct::Started
            }
            // A full socket is the task's to wait for; an error is the task's to meet (its
            // next read or write fails and it closes).
            Err(_) => Direct::Queue(out),
        }
    }

    /// Writes the rest of a partly written frame, then up to `max` queued frames in one
    /// write. `Ok` once that much is written (more may be queued); `WouldBlock` when the socket
    /// is full (what it did not take is kept as the frame's rest).
    fn write_due(&mut self, max: usize) -> io::Result<()> {
        let Some(wire) = self.wire.clone() else {
            return Err(io::ErrorKind::NotConnected.into());
        };
        self.finish_partial(&wire)?;
        let n = self.queue.len().min(max);
        if n > 1 {
            // Joined in the thread's scratch buffer, not in a new allocation.
            return SCRATCH.with_borrow_mut(|joined| {
                joined.clear();
                join(joined, self.queue.drain(..n));
                let written = self.write_or_keep(&wire, joined, |from| {
                    Bytes::copy_from_slice(&joined[from..])
                });
                if joined.capacity() > SCRATCH_KEPT {
                    *joined = Vec::new();
                }
                written
            });
        }
        let Some(out) = self.queue.pop_front() else {
            return Ok(());
        };
        count_written(out.label, 1, out.published_at_us);
        let bytes = out.frame.bytes();
        self.write_or_keep(&wire, bytes, |from| bytes.slice(from..))
    }

    /// Writes `bytes` (whole frames); what the socket does not take, `rest(from)`, is kept as
    /// the frame's rest, and the answer is then `WouldBlock`.
    fn write_or_keep(
        &mut self,
        wire: &TcpStream,
        bytes: &[u8],
        rest: impl FnOnce(usize) -> Bytes,
    ) -> io::Result<()> {
        let from = match wire.try_write(bytes) {
            Ok(n) if n == bytes.len() => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
            Err(e) => return Err(e),
        };
        if from > 0 {
            self.progressed = Some(std::time::Instant::now());
        }
        self.partial = Some(rest(from));
        Err(io::ErrorKind::WouldBlock.into())
    }

    /// Writes what is left of a partly written frame; `WouldBlock` if the socket is still full.
    fn finish_partial(&mut self, wire: &TcpStream) -> io::Result<()> {
        while let Some(rest) = &mut self.partial {
            let written = wire.try_write(rest)?;
            if written == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            self.progressed = Some(std::time::Instant::now());
            rest.advance(written);
            if rest.is_empty() {
                self.partial = None;
            }
        }
        Ok(())
    }
}

thread_local! {
    /// Where the frames of one write are joined.
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The largest scratch buffer kept for the next write.
const SCRATCH_KEPT: usize = 64 * 1024;

/// Appends the frames of one write to `joined`, counting them per run of one type (one counter
/// update per run, not per frame).
fn join(joined: &mut Vec<u8>, frames: impl Iterator<Item = Outbound>) {
    let mut run: (&'static str, u64, i64) = ("", 0, 0);
    for out in frames {
        if out.label != run.0 {
            count_written(run.0, run.1, run.2);
            run = (out.label, 0, 0);
        }
        run.1 += 1;
        run.2 = run.2.max(out.published_at_us);
        joined.extend_from_slice(out.frame.bytes());
    }
    count_written(run.0, run.1, run.2);
}

/// Counts `frames` frames of type `label` as written; `published_at_us`, the latest of their
/// events' publication (0 for none), goes into the fan-out latency histogram.
fn count_written(label: &'static str, frames: u64, published_at_us: i64) {
    if frames == 0 {
        return;
    }
    metrics::counter!("gateway_frames_out_total", "type" => label).increment(frames);
    if published_at_us > 0 {
        let micros = shared::chat::now_us() - published_at_us;
        metrics::histogram!("gateway_fanout_latency_seconds").record(micros.max(0) as f64 / 1e6);
    }
}

thread_local! {
    /// The connections with frames held back on this thread, while [`corked`] runs.
    static CORK: std::cell::RefCell<Option<Vec<Arc<ConnShared>>>> =
        const { std::cell::RefCell::new(None) };
}

/// Runs `f` with this thread's frames held back: a connection that would have had its frames
/// written one by one (nothing queued, nothing half written) has them queued instead, and when
/// `f` returns they go out in one write from here; its task is woken only for what the socket
/// did not take. A batch of a busy room's messages is then one write per member, not one per
/// message. Nested calls join the outer one.
pub fn corked<R>(f: impl FnOnce() -> R) -> R {
    let outer = CORK.with_borrow_mut(|cork| cork.is_some() || cork.replace(Vec::new()).is_some());
    if outer {
        return f();
    }
    /// Writes what was held back even if `f` panics: no connection is left waiting unwoken.
    struct Uncork;
    impl Drop for Uncork {
        fn drop(&mut self) {
            let held = CORK.with_borrow_mut(Option::take).unwrap_or_default();
            for conn in held {
                conn.write_held();
            }
        }
    }
    let _uncork = Uncork;
    f()
}

impl ConnShared {
    /// Writes the frames a [`corked`] section held back, as far as the socket takes them; wakes
    /// the task for the rest.
    fn write_held(&self) {
        let mut out = self.outgoing();
        out.corked = false;
        let mut written = Ok(());
        while written.is_ok() && out.has_work() {
            written = out.write_due(usize::MAX);
        }
        self.caught_up(&out);
        let rest = out.has_work();
        drop(out);
        if rest {
            self.wake();
        }
    }

    /// Writes the rest of a partly written frame and up to `max` queued frames; pending while
    /// the socket is full (woken when it has room). Only the connection's task calls this.
    pub fn poll_write_queued(&self, cx: &mut Context<'_>, max: usize) -> Poll<io::Result<()>> {
        loop {
            let wire = {
                let mut out = self.outgoing();
                let written = out.write_due(max);
                self.caught_up(&out);
                match written {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => out.wire.clone(),
                    done => return Poll::Ready(done),
                }
            };
            let Some(wire) = wire else {
                return Poll::Ready(Err(io::ErrorKind::NotConnected.into()));
            };
            ready!(wire.poll_write_ready(cx))?;
        }
    }
}

/// The byte stream tungstenite runs over: reads straight from the socket, writes (its pings,
/// pongs and close frame) under the connection's [`Outgoing`] lock, after the rest of any
/// partly written frame.
pub struct Stream {
    socket: Arc<TcpStream>,
    conn: Arc<ConnShared>,
}

impl Stream {
    pub fn new(socket: Arc<TcpStream>, conn: Arc<ConnShared>) -> Self {
        Self { socket, conn }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            ready!(self.socket.poll_read_ready(cx))?;
            match self.socket.try_read(buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                // Readiness was stale; polling again registers for the next.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            {
                let mut out = self.conn.outgoing();
                let written = out
                    .finish_partial(&self.socket)
                    .and_then(|()| self.socket.try_write(buf));
                match written {
                    Ok(n) => {
                        // tungstenite hands over whole frames (what is left of its buffer):
                        // all of it taken means the socket is between frames again.
                        if out.control_partial || n < buf.len() {
                            out.progressed = Some(std::time::Instant::now());
                        }
                        out.control_partial = n < buf.len();
                        return Poll::Ready(Ok(n));
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Poll::Ready(Err(e)),
                }
            }
            ready!(self.socket.poll_write_ready(cx))?;
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        // The socket closes when the connection's last owner lets go of it.
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::{TcpListener, TcpSocket},
    };
    use tokio_tungstenite::tungstenite::protocol::frame::coding::Data;
    use uuid::Uuid;

    use super::*;
    use crate::protocol::{Encoding, WireFrame};

    /// A connected pair on loopback; the first has small kernel buffers, so it fills quickly.
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let socket = TcpSocket::new_v4().unwrap();
        socket.set_send_buffer_size(4096).unwrap();
        let (mine, peer) = tokio::join!(
            socket.connect(listener.local_addr().unwrap()),
            listener.accept()
        );
        (mine.unwrap(), peer.unwrap().0)
    }

    fn conn() -> Arc<ConnShared> {
        Arc::new(ConnShared::new(
            1,
            Uuid::new_v4(),
            "s".into(),
            Encoding::Json,
            4096,
            Duration::from_secs(60),
        ))
    }

    fn frame(i: usize) -> Outbound {
        let payload = format!("{i:06}:{}", "x".repeat(1000)).into_bytes();
        Outbound::reply(WireFrame::new(Data::Text, payload).unwrap(), "test")
    }

    /// The payloads of the unmasked frames in `bytes`; panics on a torn frame.
    fn payloads(mut bytes: &[u8]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        while !bytes.is_empty() {
            let (len, header) = match bytes[1] & 0x7f {
                126 => (usize::from(u16::from_be_bytes([bytes[2], bytes[3]])), 4),
                127 => panic!("no frame here is that long"),
                n => (usize::from(n), 2),
            };
            assert!(bytes.len() >= header + len, "a frame is cut short");
            out.push(bytes[header..header + len].to_vec());
            bytes = &bytes[header + len..];
        }
        out
    }

    #[tokio::test]
    async fn frames_go_out_whole_and_in_order_whoever_writes_them() {
        let (mine, mut peer) = pair().await;
        let mine = Arc::new(mine);
        let conn = conn();
        conn.attach(mine.clone(), i64::MAX);
        let mut stream = Stream::new(mine.clone(), conn.clone());
        let reader = tokio::spawn(async move {
            let mut all = Vec::new();
            peer.read_to_end(&mut all).await.map(|_| all)
        });

        conn.push(frame(0));
        assert!(
            !conn.has_work(),
            "an idle connection's frame is written at once"
        );
        let mut queued_at = None;
        for i in 1..2000 {
            conn.push(frame(i));
            if queued_at.is_none() && conn.has_work() {
                queued_at = Some(i);
            }
        }
        let queued_at = queued_at.expect("the socket filled and frames queued");
        // tungstenite's own frame (a pong, say) while a frame may be half written.
        let pong = WireFrame::new(Data::Binary, b"pong".to_vec()).unwrap();
        stream.write_all(pong.bytes()).await.unwrap();
        while conn.has_work() {
            std::future::poll_fn(|cx| conn.poll_write_queued(cx, 64))
                .await
                .unwrap();
        }
        conn.detach();
        drop((stream, mine));

        let got = payloads(&reader.await.unwrap().unwrap());
        let pong_at = got.iter().position(|p| p == b"pong").expect("the pong");
        assert!(pong_at >= 1, "the pong went out after the frames before it");
        let frames: Vec<String> = got
            .iter()
            .filter(|p| p.as_slice() != b"pong")
            .map(|p| String::from_utf8_lossy(&p[..6]).into_owned())
            .collect();
        let expected: Vec<String> = (0..2000).map(|i| format!("{i:06}")).collect();
        assert_eq!(frames, expected, "every frame once, whole, in order");
        assert!(
            queued_at > 1,
            "some frames went straight out before the queue began"
        );
    }

    #[tokio::test]
    async fn a_corked_sections_frames_go_out_together_when_it_ends() {
        let (mine, mut peer) = pair().await;
        let other = conn();
        let conn = conn();
        conn.attach(Arc::new(mine), i64::MAX);
        corked(|| {
            for i in 0..3 {
                conn.push(frame(i));
                // Nested sections join the outer one.
                corked(|| other.push(frame(i)));
            }
            assert_eq!(conn.queued_len(), 3, "held back while the section runs");
            assert_eq!(other.queued_len(), 3, "not attached: queued as ever");
        });
        assert!(!conn.has_work(), "written when the section ended");
        assert_eq!(other.queued_len(), 3, "left for its task");
        conn.push(frame(3));
        assert!(!conn.has_work(), "and straight out again after it");
        conn.detach();
        drop(conn);
        let mut all = Vec::new();
        peer.read_to_end(&mut all).await.unwrap();
        let got: Vec<String> = payloads(&all)
            .iter()
            .map(|p| String::from_utf8_lossy(&p[..6]).into_owned())
            .collect();
        assert_eq!(got, ["000000", "000001", "000002", "000003"]);
    }

    #[tokio::test]
    async fn nothing_goes_straight_out_when_detached_expired_or_revoked() {
        let (mine, _peer) = pair().await;
        let mine = Arc::new(mine);
        let conn = conn();
        conn.push(frame(0));
        assert_eq!(conn.queued_len(), 1, "not attached yet: queued");
        conn.pop();
        conn.attach(mine.clone(), chrono::Utc::now().timestamp() - 1);
        conn.push(frame(1));
        assert_eq!(
            conn.queued_len(),
            1,
            "the token expired: queued for the task, which closes"
        );
        conn.pop();
        conn.set_expiry(i64::MAX);
        conn.push(frame(2));
        assert_eq!(conn.queued_len(), 0, "written straight out");
        conn.detach();
        conn.push(frame(3));
        assert_eq!(conn.queued_len(), 1, "detached: nothing goes out");
        conn.revoke();
        conn.push(frame(4));
        assert_eq!(conn.queued_len(), 1, "revoked: nothing more is even queued");
    }
}
