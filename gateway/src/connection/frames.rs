//! What each client frame does: `send_message` goes to the send stream, `typing` to the
//! conversation's members, `mark_read` to chat-service, `sync` to [`super::sync`]; `ping` is
//! answered, `reauth` checked here and applied by the connection's loop.

use std::sync::Arc;

use shared::chat::{encode as encode_event, ChatType, Event, SendCommand};
use shared::internal::ReadRequest;
use tracing::Instrument;
use uuid::Uuid;

use super::{bucket::Bucket, reply, reply_error, state::ConnShared, sync::sync};
use crate::{
    chat_client::CallError,
    protocol::{ClientFrame, FrameError},
    Gateway,
};

/// The most positions one `sync` may name (after duplicates are merged).
const MAX_SYNC_POSITIONS: usize = 100;

/// `reauth`: a valid, unrevoked access token of the connection's user moves the connection
/// onto it (its expiry and its login); anything else is `invalid_token` and changes nothing.
pub(super) fn reauth(gw: &Gateway, conn: &ConnShared, token: &str) -> Result<i64, FrameError> {
    let claims = gw
        .jwt
        .verify(token)
        .map_err(|_| FrameError::new("invalid_token", "the token is invalid or expired"))?;
    if claims.sub != conn.user {
        return Err(FrameError::new(
            "invalid_token",
            "the token is another user's",
        ));
    }
    if gw.revocations.check(claims.sub, claims.sid).is_some() {
        return Err(FrameError::new(
            "invalid_token",
            "the token's login was revoked",
        ));
    }
    conn.set_login(claims.sid);
    conn.set_expiry(claims.exp);
    Ok(claims.exp)
}

/// The span of one client frame, the root of its trace (none while tracing is off).
pub(super) fn frame_span(label: &'static str) -> tracing::Span {
    shared::telemetry::traced(None, || {
        tracing::info_span!(
            "ws.frame",
            otel.name = %format_args!("ws {label}"),
            otel.kind = "server",
            frame = label,
            trace_id = tracing::field::Empty,
        )
    })
}

pub(super) async fn handle(
    gw: &Arc<Gateway>,
    conn: &Arc<ConnShared>,
    frame: ClientFrame,
    sends: &mut Bucket,
    typing: &mut Bucket,
    reads: &mut Bucket,
) -> Result<(), FrameError> {
    match frame {
        ClientFrame::Ping => {
            reply(conn, "pong", &serde_json::json!({}));
            Ok(())
        }
        // Handled by the connection's loop, which owns the token's timer.
        ClientFrame::Reauth(_) => Ok(()),
        ClientFrame::SendMessage(m) => {
            let client_id = m
                .client_id
                .clone()
                .unwrap_or_else(|| Uuid::new_v4().to_string());
            let refuse = |code: &'static str, detail: &str| {
                FrameError::send(code, detail, client_id.clone())
            };
            if !sends.take() {
                return Err(refuse("rate_limited", "too many messages; slow down")
                    .retry_after(sends.wait()));
            }
            // With an attachment, content is an optional caption.
            let needs_content = m.attachment_id.is_none();
            if (needs_content && m.content.trim().is_empty()) || m.content.chars().count() > 4000 {
                return Err(refuse(
                    "invalid_payload",
                    "content must be 1 to 4000 characters",
                ));
            }
            if !(1..=128).contains(&client_id.chars().count()) {
                return Err(refuse(
                    "invalid_payload",
                    "client_id must be 1 to 128 characters",
                ));
            }
            let command = SendCommand {
                user_id: conn.user,
                session_id: conn.session.clone(),
                client_id: client_id.clone(),
                chat_type: m.chat_type,
                chat_id: m.chat_id,
                content: m.content,
                message_type: m.message_type,
                reply_to_id: m.reply_to_id,
                attachment_id: m.attachment_id,
                traceparent: shared::telemetry::traceparent(&tracing::Span::current()),
            };
            gw.bus.sends.send(conn, command).await.map_err(|_| {
                refuse(
                    "unavailable",
                    "messages cannot be accepted right now; retry",
                )
            })
        }
        ClientFrame::Typing(t) => {
            if !typing.take() {
                return Err(
                    FrameError::new("rate_limited", "typing too often").retry_after(typing.wait())
                );
            }
            let Some(conversation_id) = gw.hub.conversation_of(conn.user, t.chat_type, t.chat_id)
            else {
                return Err(FrameError::new(
                    "forbidden",
                    "you are not in that conversation",
                ));
            };
            let (channel, chat_id) = match t.chat_type {
                ChatType::Private => (gw.hub.keys().user_channel(t.chat_id), conn.user),
                _ => (
                    gw.hub.keys().conversation_channel(conversation_id),
                    t.chat_id,
                ),
            };
            let rate = shared::limits::Rate {
                per_second: gw.config.typing_rate_per_second,
                burst: gw.config.typing_rate_per_second * 2,
            };
            let key = gw.hub.keys().typing_rate(conn.user);
            if !user_bucket_allows(gw, rate, key, "gateway_typing_rate_limited_total").await {
                return Err(
                    FrameError::new("rate_limited", "typing too often").retry_after(rate.refill())
                );
            }
            let event = Event::Typing {
                user_id: conn.user,
                chat_type: t.chat_type,
                conversation_id,
                chat_id,
            };
            if let Ok(bytes) = encode_event(&event) {
                gw.bus.publish(channel, bytes).await;
            }
            Ok(())
        }
        ClientFrame::MarkRead(r) => {
            if !reads.take() {
                return Err(FrameError::new("rate_limited", "mark_read too often")
                    .retry_after(reads.wait()));
            }
            if gw
                .hub
                .conversation_of(conn.user, r.chat_type, r.chat_id)
                .is_none()
            {
                return Err(FrameError::new(
                    "forbidden",
                    "you are not in that conversation",
                ));
            }
            let gw = gw.clone();
            let conn = conn.clone();
            tokio::spawn(
                async move {
                    let request = ReadRequest {
                        user_id: conn.user,
                        chat_type: r.chat_type,
                        chat_id: r.chat_id,
                        seq: r.seq,
                        session: Some(conn.session.clone()),
                    };
                    if let Err(e) = gw.hub.chat().mark_read(&request).await {
                        reply_error(&conn, &call_error(e).answering("mark_read"));
                    }
                }
                .in_current_span(),
            );
            Ok(())
        }
        ClientFrame::Sync(s) => {
            let positions = merge_positions(s.positions);
            if positions.len() > MAX_SYNC_POSITIONS {
                return Err(FrameError::new(
                    "invalid_payload",
                    format!("at most {MAX_SYNC_POSITIONS} positions"),
                ));
            }
            if conn.syncing.swap(true, std::sync::atomic::Ordering::AcqRel) {
                return Err(FrameError::new(
                    "rate_limited",
                    "a sync is already under way on this connection",
                ));
            }
            let (gw, conn) = (gw.clone(), conn.clone());
            tokio::spawn(
                async move {
                    let key = gw.hub.keys().sync_rate(conn.user);
                    let rate = gw.config.sync_rate;
                    if user_bucket_allows(&gw, rate, key, "gateway_syncs_rate_limited_total").await
                    {
                        sync(gw, conn.clone(), positions).await;
                    } else {
                        reply_error(
                            &conn,
                            &FrameError::new("rate_limited", "too many syncs; retry in a second")
                                .answering("sync")
                                .retry_after(rate.refill()),
                        );
                    }
                    conn.syncing
                        .store(false, std::sync::atomic::Ordering::Release);
                }
                .in_current_span(),
            );
            Ok(())
        }
    }
}

/// Takes a token from one of the user's buckets shared by their sockets on every gateway, and
/// counts a refusal in `refused` (a counter's name).
///
/// - Connecting: each upgrade asks chat-service for the user's conversations and holds one of
///   the gateway's upgrade slots meanwhile, so one user's script reconnecting in a loop could
///   hold them all.
/// - `sync`: one sync of 100 positions is hundreds of queries, and one in flight per socket
///   alone lets a user repeat them back to back on 20 sockets.
/// - `typing`: each is an event to every member (5,000 sockets in a hot room), and a
///   per-socket rate alone lets a user send 20 times as many from 20 sockets.
///
/// With Redis away the request goes ahead: a sync needs only chat-service, and a reconnecting
/// client needs it most (typing goes nowhere without Redis anyway).
pub(crate) async fn user_bucket_allows(
    gw: &Gateway,
    rate: shared::limits::Rate,
    key: String,
    refused: &'static str,
) -> bool {
    let allowed = shared::limits::allows(&gw.bus.redis, rate, key).await;
    if !allowed {
        metrics::counter!(refused).increment(1);
    }
    allowed
}

/// One position per conversation, the lowest `seq` of those named, in first-named order.
fn merge_positions(
    positions: Vec<shared::internal::SyncPosition>,
) -> Vec<shared::internal::SyncPosition> {
    let mut merged: Vec<shared::internal::SyncPosition> = Vec::with_capacity(positions.len());
    let mut index: std::collections::HashMap<(ChatType, Uuid), usize> =
        std::collections::HashMap::with_capacity(positions.len());
    for p in positions {
        match index.get(&(p.chat_type, p.chat_id)) {
            Some(&i) => merged[i].seq = merged[i].seq.min(p.seq),
            None => {
                index.insert((p.chat_type, p.chat_id), merged.len());
                merged.push(p);
            }
        }
    }
    merged
}

pub(super) fn call_error(e: CallError) -> FrameError {
    match e {
        CallError::Refused {
            code,
            detail,
            status,
        } => FrameError::new(shared::error::ws_code(status, &code), detail),
        CallError::Unavailable(_) => {
            FrameError::new("unavailable", "chat-service is unavailable; retry")
        }
    }
}
