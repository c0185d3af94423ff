//! What the dispatcher and a connection's task share about one connection: its way out (the
//! socket and a bounded outbound queue, see [`super::wire`]) and its per-conversation cursors
//! (which `seq`s it has been sent).
//!
//! The queue is a `VecDeque` behind a mutex rather than a channel: an idle connection's queue
//! holds no allocation at all (a bounded tokio channel allocates a block of 32 slots up front),
//! and the connection's task gives the memory back once it has been idle for a heartbeat.

use std::{
    collections::VecDeque,
    sync::{
        atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering},
        Arc, Mutex, MutexGuard, OnceLock,
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use futures_util::task::AtomicWaker;
use tokio::net::TcpStream;
use uuid::Uuid;

use super::wire::{Direct, Outgoing};
use crate::protocol::{Encoding, WireFrame};

/// Node-local connection id.
pub type ConnId = u64;

/// A frame waiting to be written.
#[derive(Debug)]
pub struct Outbound {
    pub frame: WireFrame,
    /// Typing and presence: dropped first under pressure.
    pub ephemeral: bool,
    /// When chat-service published the event (Unix µs), for the fan-out latency histogram; 0 if none.
    pub published_at_us: i64,
    /// The frame's `type`, for metrics.
    pub label: &'static str,
}

impl Outbound {
    pub fn reply(frame: WireFrame, label: &'static str) -> Self {
        Self {
            frame,
            ephemeral: false,
            published_at_us: 0,
            label,
        }
    }
}

/// Which `seq`s of one conversation a connection has been sent: every seq in `first..=last`
/// (live delivery is gap-free), or, while a `sync` for it is under way, the live frames held back.
#[derive(Debug, Default)]
pub struct Cursor {
    pub first: i64,
    pub last: i64,
    pub held: Option<Vec<(i64, Outbound)>>,
}

impl Cursor {
    /// Records that the connection now has `seq`, which comes after `last`. `first..=last` must
    /// be seqs the connection really has (a sync leaves out exactly those): after a jump — the
    /// messages published between loading the user's conversations and registering the
    /// connection went to the node's other connections, or a sync was cut short — the run
    /// starts again at `seq`; otherwise a sync would leave out the skipped ones too.
    pub fn had(&mut self, seq: i64) {
        if self.first == 0 || seq > self.last + 1 {
            self.first = seq;
        }
        self.last = seq;
    }
}

/// A connection's cursors by conversation: a vector sorted by conversation id. A user's 30
/// conversations take 30 entries' room, where a hash map takes 64 buckets (about 2 KiB more per
/// connection); a lookup is a binary search of a few comparisons.
#[derive(Debug, Default)]
pub struct Cursors(Vec<(Uuid, Cursor)>);

impl Cursors {
    pub fn get(&self, conversation: &Uuid) -> Option<&Cursor> {
        let i = self
            .0
            .binary_search_by_key(conversation, |(c, _)| *c)
            .ok()?;
        Some(&self.0[i].1)
    }

    pub fn get_mut(&mut self, conversation: &Uuid) -> Option<&mut Cursor> {
        let i = self
            .0
            .binary_search_by_key(conversation, |(c, _)| *c)
            .ok()?;
        Some(&mut self.0[i].1)
    }

    /// The cursor of `conversation`, made by `make` when there is none.
    pub fn get_or_insert_with(
        &mut self,
        conversation: Uuid,
        make: impl FnOnce() -> Cursor,
    ) -> &mut Cursor {
        let i = match self.0.binary_search_by_key(&conversation, |(c, _)| *c) {
            Ok(i) => i,
            Err(i) => {
                self.0.insert(i, (conversation, make()));
                i
            }
        };
        &mut self.0[i].1
    }

    pub fn remove(&mut self, conversation: &Uuid) {
        if let Ok(i) = self.0.binary_search_by_key(conversation, |(c, _)| *c) {
            self.0.remove(i);
        }
    }
}

/// What a connection's task is woken for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Work {
    /// Too far behind: close with 4008.
    Close,
    /// Its login was revoked or its account deactivated: close with 4001.
    Revoked,
    /// Frames are queued.
    Write,
}

/// How far past its capacity a queue may grow while its connection is still catching up.
pub const BURST_FACTOR: usize = 4;

/// Milliseconds on a monotonic clock that starts with the process (never 0 once read).
fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

pub struct ConnShared {
    pub id: ConnId,
    pub user: Uuid,
    pub session: String,
    pub encoding: Encoding,
    outgoing: Mutex<Outgoing>,
    /// The connection's task, woken when a frame is queued (or one is half written) or the
    /// connection overflows or is revoked. One slot, no registration list: the task registers
    /// on each poll and a wake takes it out, so the frames queued for a busy connection cost no
    /// wake each.
    waker: AtomicWaker,
    capacity: usize,
    /// How long the queue may stay over `capacity` before the client counts as too slow.
    grace: Duration,
    /// When the queue last went over `capacity` ([`now_ms`]); 0 while it is not over.
    over_since: AtomicU64,
    overflowed: AtomicBool,
    /// A `sync` is under way (one at a time per connection).
    pub syncing: AtomicBool,
    /// The login (`sid`) of the token the connection lives on; a `reauth` may move it.
    login: Mutex<Uuid>,
    revoked: AtomicBool,
    /// When the connection's token expires (Unix seconds): nothing is written straight to the
    /// socket from then on, and the task closes the connection.
    expires_at: AtomicI64,
    cursors: Mutex<Cursors>,
}

impl ConnShared {
    pub fn new(
        id: ConnId,
        user: Uuid,
        session: String,
        encoding: Encoding,
        capacity: usize,
        grace: Duration,
    ) -> Self {
        Self {
            id,
            user,
            session,
            encoding,
            outgoing: Mutex::new(Outgoing::default()),
            waker: AtomicWaker::new(),
            capacity: capacity.max(1),
            grace,
            over_since: AtomicU64::new(0),
            overflowed: AtomicBool::new(false),
            syncing: AtomicBool::new(false),
            login: Mutex::new(Uuid::nil()),
            revoked: AtomicBool::new(false),
            expires_at: AtomicI64::new(i64::MAX),
            cursors: Mutex::new(Cursors::default()),
        }
    }

    /// The login the connection lives on.
    pub fn login(&self) -> Uuid {
        *self.login.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn set_login(&self, sid: Uuid) {
        *self.login.lock().unwrap_or_else(|p| p.into_inner()) = sid;
    }

    /// Asks the connection's task to close with 4001 (its login was revoked).
    pub fn revoke(&self) {
        if !self.revoked.swap(true, Ordering::Relaxed) {
            self.waker.wake();
        }
    }

    /// Wakes the connection's task (it looks for work).
    pub(super) fn wake(&self) {
        self.waker.wake();
    }

    pub fn is_revoked(&self) -> bool {
        self.revoked.load(Ordering::Relaxed)
    }

    pub(super) fn outgoing(&self) -> MutexGuard<'_, Outgoing> {
        self.outgoing.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// When the socket last took part of a write it could not take whole.
    pub(super) fn progressed(&self) -> Option<std::time::Instant> {
        self.outgoing().progressed()
    }

    /// Lets frames go to `socket` straight from whoever delivers them, once nothing queued is
    /// ahead of them; until `expires_at` (the token's expiry, Unix seconds).
    pub fn attach(&self, socket: Arc<TcpStream>, expires_at: i64) {
        self.set_expiry(expires_at);
        self.outgoing().attach(socket);
    }

    /// Nothing more goes to the socket but what tungstenite writes itself (the close frame).
    pub fn detach(&self) {
        self.outgoing().detach();
    }

    /// The token the connection lives on now expires at `at` (Unix seconds).
    pub fn set_expiry(&self, at: i64) {
        self.expires_at.store(at, Ordering::Relaxed);
    }

    pub(super) fn expired(&self) -> bool {
        shared::chat::now_us() / 1_000_000 >= self.expires_at.load(Ordering::Relaxed)
    }

    pub fn is_overflowed(&self) -> bool {
        self.overflowed.load(Ordering::Relaxed)
    }

    /// Sends a frame without waiting: straight to the socket when nothing is queued ahead of it
    /// and the socket has room (see [`super::wire`]), queued otherwise. Nothing goes to a
    /// connection that overflowed, was revoked, or whose token expired.
    ///
    /// Ephemeral frames are dropped once the queue is half full. A full queue may still grow,
    /// to [`BURST_FACTOR`] times its capacity, for as long as the grace period: a burst (a
    /// batch of a busy room's messages arrives at once) is not a slow client. A frame that
    /// finds the queue over capacity for longer than that, or at the burst limit, marks the
    /// client as too slow (closed with 4008); nothing more queues.
    pub fn push(self: &Arc<Self>, out: Outbound) {
        if self.is_overflowed() || self.is_revoked() {
            return;
        }
        let mut outgoing = self.outgoing();
        let out = match outgoing.write_now(out, self) {
            Direct::Written => return,
            Direct::Started => {
                drop(outgoing);
                self.waker.wake();
                return;
            }
            Direct::Queue(out) => out,
        };
        let queue = &mut outgoing.queue;
        if out.ephemeral && queue.len() >= self.capacity / 2 {
            metrics::counter!("gateway_ephemeral_dropped_total").increment(1);
            return;
        }
        if queue.len() >= self.capacity {
            let now = now_ms();
            let since = match self.over_since.load(Ordering::Relaxed) {
                0 => {
                    self.over_since.store(now, Ordering::Relaxed);
                    now
                }
                since => since,
            };
            let too_long = now.saturating_sub(since) > self.grace.as_millis() as u64;
            if too_long || queue.len() >= self.capacity.saturating_mul(BURST_FACTOR) {
                drop(outgoing);
                if !self.overflowed.swap(true, Ordering::Relaxed) {
                    metrics::counter!("gateway_slow_consumer_closes_total").increment(1);
                    self.waker.wake();
                }
                return;
            }
        }
        queue.push_back(out);
        let corked = outgoing.is_corked();
        drop(outgoing);
        if !corked {
            self.waker.wake();
        }
    }

    /// What the connection's task has to do: close (overflowed) or write (frames queued).
    /// Registers the task to be woken when that changes. Only the connection's own task may
    /// poll it (one waker slot).
    pub fn poll_work(&self, cx: &mut Context<'_>) -> Poll<Work> {
        if let Some(work) = self.work() {
            return Poll::Ready(work);
        }
        self.waker.register(cx.waker());
        // Checked again after registering: a push in between has woken nobody.
        self.work().map_or(Poll::Pending, Poll::Ready)
    }

    /// Ready once the connection has to close: overflowed ([`Work::Close`]) or revoked
    /// ([`Work::Revoked`]); see [`ConnShared::poll_work`].
    pub fn poll_closing(&self, cx: &mut Context<'_>) -> Poll<Work> {
        if let Some(why) = self.closing() {
            return Poll::Ready(why);
        }
        self.waker.register(cx.waker());
        self.closing().map_or(Poll::Pending, Poll::Ready)
    }

    fn closing(&self) -> Option<Work> {
        if self.is_overflowed() {
            Some(Work::Close)
        } else if self.is_revoked() {
            Some(Work::Revoked)
        } else {
            None
        }
    }

    fn work(&self) -> Option<Work> {
        if let Some(why) = self.closing() {
            Some(why)
        } else if self.outgoing().has_work() {
            Some(Work::Write)
        } else {
            None
        }
    }

    /// Waits until something is to be written (a frame queued, or the rest of one). Cancel-safe:
    /// it takes nothing.
    pub async fn wait_queued(&self) {
        std::future::poll_fn(|cx| {
            if self.has_work() {
                return Poll::Ready(());
            }
            self.waker.register(cx.waker());
            if self.has_work() {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await
    }

    /// Whether frames (or the rest of one) wait for the connection's task to write them.
    pub fn has_work(&self) -> bool {
        self.outgoing().has_work()
    }

    pub fn queued_len(&self) -> usize {
        self.outgoing().queue.len()
    }

    /// The oldest queued frame, if any.
    pub fn pop(&self) -> Option<Outbound> {
        let mut outgoing = self.outgoing();
        let out = outgoing.queue.pop_front();
        self.caught_up(&outgoing);
        out
    }

    /// Below capacity (again): the grace period starts over the next time the queue fills.
    pub(super) fn caught_up(&self, outgoing: &Outgoing) {
        if outgoing.queue.len() < self.capacity {
            self.over_since.store(0, Ordering::Relaxed);
        }
    }

    /// Gives back the queue's memory if it is empty (called when the connection is idle).
    pub fn compact(&self) {
        let queue = &mut self.outgoing().queue;
        if queue.is_empty() && queue.capacity() > 0 {
            *queue = VecDeque::new();
        }
    }

    pub fn cursors(&self) -> MutexGuard<'_, Cursors> {
        // A poisoned lock only means another thread panicked mid-update; the map is still usable.
        self.cursors.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts tracking a conversation whose messages up to `last_seq` exist already.
    pub fn track(&self, conversation: Uuid, last_seq: i64) {
        self.cursors().get_or_insert_with(conversation, || Cursor {
            first: last_seq + 1,
            last: last_seq,
            held: None,
        });
    }

    pub fn untrack(&self, conversation: Uuid) {
        self.cursors().remove(&conversation);
    }

    /// Delivers `message` number `seq` of `conversation`: never twice, never out of order, held
    /// back while a sync of that conversation is under way.
    pub fn deliver_message(self: &Arc<Self>, conversation: Uuid, seq: i64, out: Outbound) {
        let mut cursors = self.cursors();
        let cursor = cursors.get_or_insert_with(conversation, Cursor::default);
        if let Some(held) = &mut cursor.held {
            held.push((seq, out));
            return;
        }
        if seq <= cursor.last {
            metrics::counter!("gateway_duplicates_dropped_total").increment(1);
            return;
        }
        cursor.had(seq);
        // Queued under the lock, so a sync finishing concurrently cannot reorder frames.
        self.push(out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(ephemeral: bool) -> Outbound {
        Outbound {
            frame: WireFrame::new(
                tokio_tungstenite::tungstenite::protocol::frame::coding::Data::Text,
                b"{}".to_vec(),
            )
            .unwrap(),
            ephemeral,
            published_at_us: 0,
            label: "test",
        }
    }

    #[test]
    fn cursors_are_found_by_conversation_whatever_the_order_they_came_in() {
        let mut cursors = Cursors::default();
        let ids: Vec<Uuid> = (0..30).map(|_| Uuid::new_v4()).collect();
        for (i, id) in ids.iter().enumerate() {
            cursors.get_or_insert_with(*id, || Cursor {
                first: 1,
                last: i as i64,
                held: None,
            });
        }
        // Present already: left as it is.
        cursors.get_or_insert_with(ids[3], Cursor::default).first = 7;
        for (i, id) in ids.iter().enumerate() {
            assert_eq!(cursors.get(id).map(|c| c.last), Some(i as i64));
        }
        assert_eq!(cursors.get(&ids[3]).map(|c| c.first), Some(7));
        cursors.remove(&ids[5]);
        assert!(cursors.get(&ids[5]).is_none());
        assert!(cursors.get_mut(&ids[6]).is_some());
        assert!(cursors.get(&Uuid::new_v4()).is_none());
    }

    #[test]
    fn a_jump_restarts_the_run_of_seqs_the_connection_has() {
        let c = conn(8, Duration::from_secs(1));
        let conv = Uuid::new_v4();
        // Registered knowing seq 10; 11 and 12 went out before it was registered.
        c.track(conv, 10);
        c.deliver_message(conv, 13, frame(false));
        c.deliver_message(conv, 14, frame(false));
        let cursor = |c: &ConnShared| {
            let cursors = c.cursors();
            cursors.get(&conv).map(|k| (k.first, k.last))
        };
        // A sync leaves out 13..=14 only: 11 and 12 are still owed.
        assert_eq!(cursor(&c), Some((13, 14)));
        // In order from there: the run grows.
        c.deliver_message(conv, 15, frame(false));
        assert_eq!(cursor(&c), Some((13, 15)));
        // Nothing skipped: the run starts where tracking began.
        let other = Uuid::new_v4();
        c.track(other, 3);
        c.deliver_message(other, 4, frame(false));
        let cursors = c.cursors();
        assert_eq!(cursors.get(&other).map(|k| (k.first, k.last)), Some((4, 4)));
    }

    fn conn(capacity: usize, grace: Duration) -> Arc<ConnShared> {
        Arc::new(ConnShared::new(
            1,
            Uuid::new_v4(),
            "s".into(),
            Encoding::Json,
            capacity,
            grace,
        ))
    }

    #[test]
    fn ephemeral_frames_go_first_and_a_burst_may_pass_the_capacity() {
        let conn = conn(8, Duration::from_secs(60));
        for _ in 0..4 {
            conn.push(frame(false));
        }
        // Half full: typing and presence are dropped, messages still queue.
        conn.push(frame(true));
        conn.push(frame(false));
        assert!(!conn.is_overflowed());
        let queued: Vec<bool> = std::iter::from_fn(|| conn.pop())
            .map(|o| o.ephemeral)
            .collect();
        assert_eq!(queued, vec![false; 5], "the ephemeral frame was dropped");
        for _ in 0..8 * BURST_FACTOR {
            conn.push(frame(false));
        }
        assert!(
            !conn.is_overflowed(),
            "a burst up to the burst limit, within the grace period, is not too far behind"
        );
        conn.push(frame(false));
        assert!(
            conn.is_overflowed(),
            "one more frame than the burst limit marks it"
        );
        let before = conn.queued_len();
        conn.push(frame(false));
        assert_eq!(conn.queued_len(), before, "nothing queues after that");
    }

    #[test]
    fn a_queue_over_capacity_for_longer_than_the_grace_period_overflows() {
        let conn = conn(2, Duration::from_millis(30));
        for _ in 0..3 {
            conn.push(frame(false));
        }
        std::thread::sleep(Duration::from_millis(50));
        // Catching up (below capacity) starts the grace period over.
        conn.pop();
        conn.pop();
        conn.push(frame(false));
        conn.push(frame(false));
        conn.push(frame(false));
        assert!(!conn.is_overflowed(), "it caught up in between");
        assert_eq!(conn.queued_len(), 4);
        std::thread::sleep(Duration::from_millis(50));
        conn.push(frame(false));
        assert!(
            conn.is_overflowed(),
            "over capacity for longer than the grace period"
        );
    }

    #[tokio::test]
    async fn a_waiting_task_is_woken_and_an_idle_queue_holds_no_memory() {
        let conn = conn(64, Duration::from_secs(5));
        let waiter = {
            let conn = conn.clone();
            tokio::spawn(async move {
                conn.wait_queued().await;
                conn.pop().is_some()
            })
        };
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "nothing queued yet");
        assert_eq!(
            conn.outgoing().queue.capacity(),
            0,
            "an unused queue holds no memory"
        );
        conn.push(frame(false));
        conn.push(frame(false));
        assert!(waiter.await.unwrap(), "woken by the push");
        assert!(conn.pop().is_some() && conn.pop().is_none());
        conn.compact();
        assert_eq!(
            conn.outgoing().queue.capacity(),
            0,
            "an empty queue gives its memory back"
        );
    }

    #[test]
    fn cursors_drop_duplicates_and_hold_during_sync() {
        let conn = conn(64, Duration::from_secs(5));
        let conv = Uuid::new_v4();
        conn.track(conv, 3);
        for seq in [2, 3, 4, 4, 5] {
            conn.deliver_message(conv, seq, frame(false));
        }
        assert_eq!(
            std::iter::from_fn(|| conn.pop()).count(),
            2,
            "only 4 and 5 are new"
        );
        conn.cursors()
            .get_or_insert_with(conv, Cursor::default)
            .held = Some(Vec::new());
        conn.deliver_message(conv, 6, frame(false));
        assert!(conn.pop().is_none(), "held while a sync runs");
        assert_eq!(
            conn.cursors()
                .get(&conv)
                .and_then(|c| c.held.as_ref())
                .map(Vec::len),
            Some(1)
        );
    }
}
