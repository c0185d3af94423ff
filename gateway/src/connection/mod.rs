//! One WebSocket connection: a single task whose `select!` loop reads client frames, writes
//! what the socket did not take at once (all that is queued, in one write; see [`wire`]),
//! pings, and watches for overflow and shutdown. Every exit path unregisters the connection
//! and withdraws its presence.
//!
//! What each client frame does is in [`frames`] (and a `sync`'s catch-up in [`sync`]); the
//! connection's own rates and read pace are [`bucket`]s.

mod bucket;
mod frames;
pub mod state;
mod sync;
pub mod wire;

use std::{
    future::Future,
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use shared::internal::UserConversations;
use tokio::{io::AsyncReadExt, net::TcpStream};
use tokio_tungstenite::{
    tungstenite::{
        error::{CapacityError, Error as WsError},
        protocol::{frame::coding::CloseCode, CloseFrame, Role},
        Message as WsMessage,
    },
    WebSocketStream,
};
use tracing::Instrument;
use uuid::Uuid;

pub(crate) use self::frames::user_bucket_allows;
use self::{
    bucket::{frame_cost, Bucket},
    frames::{frame_span, handle, reauth},
    state::{ConnShared, Outbound, Work},
};
use crate::{
    protocol::{self, ClientFrame, Encoding, FrameError},
    Gateway,
};

type Socket = WebSocketStream<wire::Stream>;

/// An upgraded connection's socket and what was read from it past the upgrade request.
pub struct Accepted {
    socket: TcpStream,
    read_ahead: Vec<u8>,
}

impl Accepted {
    /// `read_ahead` is copied: the bytes hyper hands over share its whole read buffer (kilobytes),
    /// which would otherwise stay allocated for the connection's life.
    pub fn new(socket: TcpStream, read_ahead: Bytes) -> Self {
        Self {
            socket,
            read_ahead: read_ahead.to_vec(),
        }
    }
}

/// Who a connection belongs to and how long it may live: what `GET /ws` admitted.
#[derive(Debug, Clone, Copy)]
pub struct Admitted {
    pub user: Uuid,
    /// The login of the token (or of the token that asked for the ticket).
    pub sid: Uuid,
    /// When that token expires (seconds since the epoch).
    pub exp: i64,
}

/// A fresh session id for a connection.
pub fn session_id() -> String {
    Uuid::new_v4().simple().to_string()
}

/// Frames written per flush at most.
const WRITE_BATCH: usize = 64;
/// Bad or refused frames tolerated per minute before the connection is closed with 1008
/// (`rate_limited` and `unavailable` answers do not count: they are not the client's fault).
const ABUSE_LIMIT: u32 = 60;
/// `mark_read` frames per second per connection (bursts as large).
const MARK_READ_RATE: u32 = 10;
/// How long a closing connection waits for the client's close frame.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

#[derive(Serialize)]
struct Ready<'a> {
    user_id: Uuid,
    session_id: &'a str,
    heartbeat_interval_ms: u64,
}

fn reply<D: Serialize>(conn: &Arc<ConnShared>, kind: &'static str, data: &D) {
    match protocol::encode(conn.encoding, kind, data) {
        Ok(frame) => conn.push(Outbound::reply(frame, kind)),
        Err(e) => tracing::error!(error = %e, kind, user = %conn.user, "could not encode a reply"),
    }
}

pub(crate) fn reply_error(conn: &Arc<ConnShared>, e: &FrameError) {
    reply(conn, "error", &e.data());
}

/// Serves one upgraded connection until it closes.
///
/// Its task lives as long as the connection, and an async fn's future is as large as its
/// largest suspended state: opening and closing (Redis calls with large futures) are boxed, so
/// what stays allocated per connection is the socket and the loop's own state.
pub async fn run(
    gw: Arc<Gateway>,
    accepted: Accepted,
    admitted: Admitted,
    session: String,
    encoding: Encoding,
    info: UserConversations,
) {
    let user = admitted.user;
    let conn = Arc::new(ConnShared::new(
        gw.hub.next_id(),
        user,
        session.clone(),
        encoding,
        gw.config.outbound_queue,
        gw.config.slow_consumer_grace,
    ));
    conn.set_login(admitted.sid);
    let Accepted { socket, read_ahead } = accepted;
    let socket = Arc::new(socket);
    let mut ws = WebSocketStream::from_partially_read(
        wire::Stream::new(socket.clone(), conn.clone()),
        read_ahead,
        Role::Server,
        Some(gw.ws_config()),
    )
    .await;
    if !Box::pin(open(&gw, &mut ws, &conn, info)).await {
        Box::pin(gw.presence.release_socket(user, &session)).await;
        return;
    }
    // From here frames may go to the socket straight from the dispatcher, behind what is
    // queued (`ready` first).
    conn.attach(socket, admitted.exp);
    // Write `ready` (and whatever came meanwhile) now and give the queue's memory back: most
    // connections then sit idle with nothing allocated for their queue.
    let close = match write_queued(&mut ws, &conn).await {
        Ok(()) => {
            conn.compact();
            serve(&gw, &mut ws, &conn, admitted.exp).await
        }
        Err(_) => None,
    };
    Box::pin(finish(&gw, ws, &conn, close)).await;
}

/// Registers the connection, claims presence, queues `ready`; false if the node filled up.
async fn open(
    gw: &Arc<Gateway>,
    ws: &mut Socket,
    conn: &Arc<ConnShared>,
    info: UserConversations,
) -> bool {
    let user = conn.user;
    // Queued before the hub knows the connection, so `ready` is the first frame it gets.
    reply(
        conn,
        "ready",
        &Ready {
            user_id: user,
            session_id: &conn.session,
            heartbeat_interval_ms: gw.config.heartbeat_interval.as_millis() as u64,
        },
    );
    let registering = Instant::now();
    let registered = gw.hub.register(conn.clone(), info).await;
    stage_done("register", registering);
    let first = match registered {
        Ok(first) => first,
        Err(refusal) => {
            tracing::info!(?refusal, %user, "connection refused after upgrade");
            close_gracefully(ws, CloseCode::Again, "gateway full").await;
            return false;
        }
    };
    if first {
        let claiming = Instant::now();
        match gw.presence.claim(user).await {
            Ok(true) => {
                gw.presence
                    .announce(user, true, &gw.hub.contacts_of(user))
                    .await
            }
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, %user, "presence claim failed"),
        }
        stage_done("presence", claiming);
    }
    metrics::counter!("gateway_connections_opened_total").increment(1);
    true
}

/// Records how long one stage of opening a connection took (`gateway_upgrade_stage_seconds`):
/// `admit` (the token or ticket), `conversations` (chat-service's list of the user's
/// conversations), `reserve` (the user's socket slot in Redis), `register` (the hub, with the
/// channels' subscriptions), `presence`, and the client's first and later `sync` calls. Under a
/// reconnect storm they tell which dependency holds upgrades up.
pub(crate) fn stage_done(stage: &'static str, since: Instant) {
    metrics::histogram!("gateway_upgrade_stage_seconds", "stage" => stage)
        .record(since.elapsed().as_secs_f64());
}

/// Sends the close frame, if any, unregisters the connection and withdraws presence.
async fn finish(
    gw: &Arc<Gateway>,
    mut ws: Socket,
    conn: &Arc<ConnShared>,
    close: Option<(CloseCode, &'static str)>,
) {
    // Nothing goes out after the close frame.
    conn.detach();
    if let Some((code, reason)) = close {
        close_gracefully(&mut ws, code, reason).await;
    }
    drop(ws);
    let user = conn.user;
    gw.presence.release_socket(user, &conn.session).await;
    // Read before unregistering: the node forgets the user with their last connection.
    let contacts = gw.hub.contacts_of(user);
    if gw.hub.unregister(conn) {
        match gw.presence.withdraw(user).await {
            Ok(true) => gw.presence.announce(user, false, &contacts).await,
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, %user, "presence withdrawal failed"),
        }
    }
    metrics::counter!("gateway_connections_closed_total").increment(1);
}

/// Sends a close frame with `code`, then reads (and drops) what the client still sends until
/// its own close frame arrives or [`CLOSE_WAIT`] passes. Closing the socket with unread data in
/// it would make the kernel reset the connection, and a reset can destroy the close frame
/// before the client reads it (a proxy between, nginx, passes the reset on and may drop the
/// close frame it had not yet relayed); this way the client always learns the code.
///
/// After a frame tungstenite refused (one over 64 KiB: its header was read, the rest was not)
/// it reads nothing more, and what follows is no longer frames anyway: then the socket is read
/// as bytes until the client ends the connection or the wait is over.
async fn close_gracefully(ws: &mut Socket, code: CloseCode, reason: &'static str) {
    metrics::counter!("gateway_closes_total", "code" => close_label(code)).increment(1);
    let frame = CloseFrame {
        code,
        reason: reason.into(),
    };
    let _ = tokio::time::timeout(CLOSE_WAIT, async {
        if ws.close(Some(frame)).await.is_err() {
            return;
        }
        loop {
            match ws.next().await {
                // The client's own close frame: the handshake is complete.
                Some(Ok(WsMessage::Close(_))) => return,
                Some(Ok(_)) => {}
                None | Some(Err(_)) => break,
            }
        }
        let mut skipped = [0u8; 4096];
        while let Ok(1..) = ws.get_mut().read(&mut skipped).await {}
    })
    .await;
}

fn close_label(code: CloseCode) -> &'static str {
    match u16::from(code) {
        1008 => "1008",
        1009 => "1009",
        1012 => "1012",
        1013 => "1013",
        4001 => "4001",
        4008 => "4008",
        _ => "other",
    }
}

/// The close for a client too far behind.
const TOO_SLOW: (CloseCode, &str) = (
    CloseCode::Library(4008),
    "too far behind; reconnect and sync",
);
/// The close for a connection whose login was revoked or account deactivated.
const REVOKED: (CloseCode, &str) = (CloseCode::Library(4001), "session revoked");
/// The close at the token's expiry without a `reauth`.
const EXPIRED: (CloseCode, &str) = (
    CloseCode::Library(4001),
    "token expired; reconnect with a fresh token",
);

fn closing(why: Work) -> (CloseCode, &'static str) {
    if why == Work::Revoked {
        REVOKED
    } else {
        TOO_SLOW
    }
}

fn unix_now() -> i64 {
    shared::chat::now_us() / 1_000_000
}

/// The instant `at` (Unix seconds) falls on.
fn instant_at(at: i64) -> tokio::time::Instant {
    let ahead = u64::try_from(at.saturating_sub(unix_now())).unwrap_or(0);
    tokio::time::Instant::now() + Duration::from_secs(ahead)
}

fn rfc3339(at: i64) -> String {
    chrono::DateTime::from_timestamp(at, 0)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

#[derive(Serialize)]
struct ExpiresAt {
    expires_at: String,
}

/// The connection's token: when it expires and whether `token_expiring` went out for that.
struct TokenLife {
    exp: i64,
    noticed: bool,
    notice: i64,
}

impl TokenLife {
    /// When something is next due: the notice, then the expiry.
    fn due(&self) -> tokio::time::Instant {
        if self.noticed {
            instant_at(self.exp)
        } else {
            instant_at(self.exp - self.notice)
        }
    }
}

/// The connection's loop; returns the close frame to send, if any.
async fn serve(
    gw: &Arc<Gateway>,
    ws: &mut Socket,
    conn: &Arc<ConnShared>,
    exp: i64,
) -> Option<(CloseCode, &'static str)> {
    let mut life = TokenLife {
        exp,
        noticed: false,
        notice: i64::try_from(gw.config.reauth_notice.as_secs()).unwrap_or(i64::MAX),
    };
    let token_timer = tokio::time::sleep_until(life.due());
    tokio::pin!(token_timer);
    let interval = gw.config.heartbeat_interval;
    let mut heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    let mut last_heard = Instant::now();
    // The token's expiry as an instant, for a write that waits past it.
    let mut expiry = instant_at(life.exp);
    // A first line before the user's shared bucket in Redis: one socket never gets more than
    // the whole user's budget, so a flood from one socket costs no Redis work.
    let mut sends = Bucket::new(gw.config.send_rate.per_second, gw.config.send_rate.burst);
    let mut typing = Bucket::new(
        gw.config.typing_rate_per_second,
        gw.config.typing_rate_per_second * 2,
    );
    let mut reads = Bucket::new(MARK_READ_RATE, MARK_READ_RATE);
    // Every frame read, whatever it is, is work: past this pace the socket is read more slowly.
    let mut inbound = Bucket::new(
        gw.config.inbound_frame_rate.per_second,
        gw.config.inbound_frame_rate.burst,
    );
    let mut abuse = (0u32, Instant::now());
    let mut shutdown = gw.shutdown.clone();
    // Grows with what is queued; given back when the connection is idle.
    let mut wrote_since_tick = false;
    loop {
        tokio::select! {
            biased;
            why = std::future::poll_fn(|cx| conn.poll_closing(cx)) => return Some(closing(why)),
            () = &mut token_timer => {
                if unix_now() >= life.exp {
                    metrics::counter!("gateway_token_expiry_closes_total").increment(1);
                    return Some(EXPIRED);
                }
                if !life.noticed {
                    life.noticed = true;
                    reply(conn, "token_expiring", &ExpiresAt { expires_at: rfc3339(life.exp) });
                }
                token_timer.as_mut().reset(life.due());
            }
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow() {
                    return Box::pin(drain_then_close(gw, ws, conn)).await;
                }
            }
            work = std::future::poll_fn(|cx| conn.poll_work(cx)) => {
                if work != Work::Write {
                    return Some(closing(work));
                }
                wrote_since_tick = true;
                match within_limit(conn, interval, expiry, write_queued(ws, conn)).await {
                    // The client read what waited for it: it is there, if silent.
                    Ok(true) => last_heard = Instant::now(),
                    Ok(false) => {}
                    Err(close) => return close,
                }
            }
            incoming = ws.next() => {
                last_heard = Instant::now();
                let message = match incoming {
                    None => return None,
                    Some(Ok(m)) => m,
                    Some(Err(WsError::Capacity(CapacityError::MessageTooLong { .. }))) => {
                        return Some((CloseCode::Size, "frame over 64 KiB"));
                    }
                    Some(Err(_)) => return None,
                };
                if let Some(wait) = inbound.pace(frame_cost(&message)) {
                    metrics::counter!("gateway_frames_paced_total").increment(1);
                    tokio::select! {
                        biased;
                        why = std::future::poll_fn(|cx| conn.poll_closing(cx)) => return Some(closing(why)),
                        () = tokio::time::sleep(wait) => {}
                    }
                }
                let bytes = match (&message, conn.encoding) {
                    (WsMessage::Text(t), Encoding::Json) => t.as_bytes(),
                    (WsMessage::Binary(b), Encoding::MsgPack) => &b[..],
                    (WsMessage::Text(_) | WsMessage::Binary(_), _) => {
                        reply_error(conn, &FrameError::new("invalid_payload", match conn.encoding {
                            Encoding::Json => "expected JSON text frames",
                            Encoding::MsgPack => "expected MessagePack binary frames (chatsphere.msgpack)",
                        }));
                        continue;
                    }
                    (WsMessage::Close(_), _) => return None,
                    // Pings are answered by tungstenite on the next flush.
                    (WsMessage::Ping(_), _) => {
                        if let Err(close) = within_limit(conn, interval, expiry, ws.flush()).await {
                            return close;
                        }
                        continue;
                    }
                    _ => continue,
                };
                let parsed = protocol::decode_value(conn.encoding, bytes).and_then(protocol::parse);
                let kind = parsed.as_ref().ok().map(ClientFrame::label);
                let outcome = match parsed {
                    Ok(ClientFrame::Reauth(r)) => {
                        metrics::counter!("gateway_frames_in_total", "type" => "reauth").increment(1);
                        match reauth(gw, conn, &r.token) {
                            Ok(new_exp) => {
                                life = TokenLife { exp: new_exp, noticed: false, ..life };
                                expiry = instant_at(new_exp);
                                token_timer.as_mut().reset(life.due());
                                reply(conn, "reauthed", &ExpiresAt { expires_at: rfc3339(new_exp) });
                                Ok(())
                            }
                            Err(e) => Err(e),
                        }
                    }
                    Ok(frame) => {
                        metrics::counter!("gateway_frames_in_total", "type" => frame.label()).increment(1);
                        // Boxed: the Redis calls' futures are large, and an idle connection should
                        // not carry their space in its task for its whole life.
                        let span = frame_span(frame.label());
                        Box::pin(handle(gw, conn, frame, &mut sends, &mut typing, &mut reads))
                            .instrument(span)
                            .await
                    }
                    Err(e) => Err(e),
                };
                if let Err(mut e) = outcome {
                    e.in_reply_to = e.in_reply_to.or(kind);
                    metrics::counter!("gateway_frame_errors_total", "code" => e.code).increment(1);
                    reply_error(conn, &e);
                    if matches!(e.code, "rate_limited" | "unavailable") {
                        continue;
                    }
                    if abuse.1.elapsed() > Duration::from_secs(60) {
                        abuse = (0, Instant::now());
                    }
                    abuse.0 += 1;
                    if abuse.0 > ABUSE_LIMIT {
                        return Some((CloseCode::Policy, "too many bad frames"));
                    }
                }
            }
            _ = heartbeat.tick() => {
                if last_heard.elapsed() > interval * 3 {
                    metrics::counter!("gateway_dead_connections_reaped_total").increment(1);
                    return None;
                }
                let ping = ws.send(WsMessage::Ping(Default::default()));
                if let Err(close) = within_limit(conn, interval, expiry, ping).await {
                    return close;
                }
                // Nothing written since the last tick: give back what busier moments grew.
                if !wrote_since_tick {
                    conn.compact();
                }
                wrote_since_tick = false;
            }
        }
    }
}

/// Runs one of the loop's writes to the socket (queued frames, a pong, a ping) to its end, or
/// gives up on the connection: `Err` holds the close frame to send, if any; `Ok(true)` says the
/// write had to wait for the client to read.
///
/// While a write waits for the socket nothing else of the loop runs (no ping, no silence
/// check, no token expiry): a client that stops reading with anything still to be written
/// would hold its connection and queue for good. So a write during which the socket takes
/// nothing for three heartbeat intervals, the silence the contract allows, closes the
/// connection as too slow (4008); one still waiting when the token expires (`expiry`) closes
/// it with 4001; a revocation or an overflowing queue meanwhile closes it at once. A client
/// that reads slowly but steadily (a large `synced` frame over a slow link) keeps its
/// connection however long the write takes. A write the socket takes at once (nearly all)
/// costs no timer.
async fn within_limit(
    conn: &ConnShared,
    interval: Duration,
    expiry: tokio::time::Instant,
    write: impl Future<Output = Result<(), WsError>>,
) -> Result<bool, Option<(CloseCode, &'static str)>> {
    tokio::pin!(write);
    if let std::task::Poll::Ready(r) =
        std::future::poll_fn(|cx| std::task::Poll::Ready(write.as_mut().poll(cx))).await
    {
        return r.map(|()| false).map_err(|_| None);
    }
    let stall = interval * 3;
    let mut check = tokio::time::Instant::now() + stall;
    loop {
        let expires = expiry <= check;
        tokio::select! {
            biased;
            r = &mut write => return r.map(|()| true).map_err(|_| None),
            why = std::future::poll_fn(|cx| conn.poll_closing(cx)) => return Err(Some(closing(why))),
            () = tokio::time::sleep_until(if expires { expiry } else { check }) => {
                if expires {
                    metrics::counter!("gateway_token_expiry_closes_total").increment(1);
                    return Err(Some(EXPIRED));
                }
                // Stalled only if the socket took nothing over the last `stall`.
                match conn.progressed().map(tokio::time::Instant::from_std) {
                    Some(at) if at + stall > tokio::time::Instant::now() => check = at + stall,
                    _ => {
                        metrics::counter!("gateway_slow_consumer_closes_total").increment(1);
                        return Err(Some(TOO_SLOW));
                    }
                }
            }
        }
    }
}

/// Writes the queued frames (at most [`WRITE_BATCH`]) in one write to the socket.
///
/// Frames are framed once when encoded ([`protocol::WireFrame`]), so they go to the socket as
/// they are, not through tungstenite's per-connection buffer. What tungstenite itself holds (a
/// ping, the pong to a client's ping) is flushed first, whole, so no frame lands inside another.
async fn write_queued(ws: &mut Socket, conn: &ConnShared) -> Result<(), WsError> {
    ws.flush().await?;
    std::future::poll_fn(|cx| conn.poll_write_queued(cx, WRITE_BATCH)).await?;
    Ok(())
}

/// On shutdown: wait a random share of the spread window (so clients do not all reconnect at
/// once), write what is queued, then close with 1012.
async fn drain_then_close(
    gw: &Arc<Gateway>,
    ws: &mut Socket,
    conn: &Arc<ConnShared>,
) -> Option<(CloseCode, &'static str)> {
    let spread = gw.config.shutdown_spread.as_millis() as u64;
    let jitter = if spread == 0 {
        0
    } else {
        (conn.id.wrapping_mul(2_654_435_761) ^ rand_seed()) % spread
    };
    let deadline = tokio::time::Instant::now() + Duration::from_millis(jitter);
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => break,
            () = conn.wait_queued() => {
                if write_queued(ws, conn).await.is_err() {
                    return None;
                }
            }
            incoming = ws.next() => if !matches!(incoming, Some(Ok(_))) { return None },
        }
    }
    while conn.has_work() {
        if write_queued(ws, conn).await.is_err() {
            return None;
        }
    }
    Some((CloseCode::Restart, "gateway restarting; reconnect"))
}

fn rand_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::from(d.subsec_nanos()))
}

#[cfg(test)]
mod tests {
    /// The size of the future `f` returns, without calling it.
    fn returned_size<F, A, B, C, D, E, G, R>(_: F) -> usize
    where
        F: FnOnce(A, B, C, D, E, G) -> R,
    {
        std::mem::size_of::<R>()
    }

    /// A connection's task lives as long as the connection, and is as large as the largest
    /// state it can be suspended in: a Redis or HTTP call awaited inline anywhere in it (even on
    /// a path never taken) makes every idle connection carry that call's future. Such calls are
    /// boxed; this keeps the next one from slipping in unnoticed.
    #[test]
    fn the_connection_task_stays_small() {
        let size = returned_size(super::run);
        assert!(size <= 2048, "connection::run's future is {size} bytes");
    }
}
