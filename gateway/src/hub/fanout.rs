//! Fan-out: each published event turned into the frames its receivers get. A frame is
//! encoded at most once per encoding and the same bytes are queued on every receiving
//! connection; typing and presence skip users who blocked their sender.

use std::{sync::Arc, time::Instant};

use serde::Serialize;
use shared::{
    chat::{ChatType, Event, MembershipAction, Message},
    internal::Membership,
    revocation::Revocation,
};
use uuid::Uuid;

use super::{Hub, State};
use crate::{
    connection::state::{ConnShared, Outbound},
    protocol::{ErrorData, SharedFrame},
};

#[derive(Serialize)]
struct MessageDeletedData {
    id: Uuid,
    chat_type: ChatType,
    chat_id: Uuid,
    seq: i64,
}

#[derive(Serialize)]
struct MembershipData {
    chat_type: ChatType,
    chat_id: Uuid,
    user_id: Uuid,
    action: MembershipAction,
    #[serde(skip_serializing_if = "Option::is_none")]
    by: Option<Uuid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    until: Option<chrono::DateTime<chrono::Utc>>,
}

#[derive(Serialize)]
struct ReactionData<'a> {
    message_id: Uuid,
    chat_type: ChatType,
    chat_id: Uuid,
    seq: i64,
    user_id: Uuid,
    emoji: &'a str,
    action: &'static str,
}

#[derive(Serialize)]
struct PinData {
    message_id: Uuid,
    chat_type: ChatType,
    chat_id: Uuid,
    seq: i64,
    pinned: bool,
    by: Uuid,
}

#[derive(Serialize)]
struct ConversationUpdatedData<'a> {
    chat_type: ChatType,
    chat_id: Uuid,
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<&'a str>,
    by: Uuid,
}

#[derive(Serialize)]
struct ConversationSettingsData {
    chat_type: ChatType,
    chat_id: Uuid,
    notifications_muted: bool,
    notifications_muted_until: Option<chrono::DateTime<chrono::Utc>>,
    archived: bool,
}

#[derive(Serialize)]
struct ReadData {
    user_id: Uuid,
    chat_type: ChatType,
    chat_id: Uuid,
    seq: i64,
}

#[derive(Serialize)]
struct TypingData {
    user_id: Uuid,
    chat_type: ChatType,
    chat_id: Uuid,
}

#[derive(Serialize)]
struct PresenceData {
    user_id: Uuid,
    status: &'static str,
}

#[derive(Serialize)]
struct AckData<'a> {
    client_id: &'a str,
    message: &'a Message,
}

/// The `chat_id` `viewer` sees for an event about a message of `from` (to `to`, in a private
/// chat): the room or group id (the conversation's), or the other user of the private chat.
fn chat_id_for(
    viewer: Uuid,
    chat_type: ChatType,
    conversation_id: Uuid,
    from: Uuid,
    to: Option<Uuid>,
) -> Uuid {
    match chat_type {
        ChatType::Private if viewer == from => to.unwrap_or(from),
        ChatType::Private => from,
        _ => conversation_id,
    }
}

/// The span of one event's fan-out on this node, in the trace of the send it comes from; none
/// while tracing is off or when the event carries no trace.
fn delivery_span(kind: &'static str, traceparent: Option<&str>) -> tracing::Span {
    let Some(parent) = traceparent else {
        return tracing::Span::none();
    };
    shared::telemetry::traced(Some(parent), || {
        tracing::info_span!(
            "deliver",
            otel.name = %format_args!("deliver {kind}"),
            otel.kind = "consumer",
            event = kind,
            trace_id = tracing::field::Empty,
        )
    })
}

impl Hub {
    pub(super) fn handle_event(&self, channel: &str, event: Event) {
        match event {
            Event::Batch(_) => tracing::warn!(%channel, "nested event batch dropped"),
            Event::Message {
                conversation_id,
                message,
                published_at_us,
                traceparent,
            } => {
                let _delivering = delivery_span("message", traceparent.as_deref()).entered();
                self.offer_message(channel, conversation_id, message, published_at_us)
            }
            Event::MessageEdited { message, .. } => {
                let mut frame = SharedFrame::new("message_edited", &message);
                for conn in self.receivers(channel, None) {
                    if let Some(f) = frame.get(conn.encoding) {
                        conn.push(Outbound::reply(f, "message_edited"));
                    }
                }
            }
            Event::MessageDeleted {
                id,
                seq,
                chat_type,
                conversation_id,
                from_user_id,
                to_user_id,
            } => {
                for conn in self.receivers(channel, None) {
                    let chat_id = chat_id_for(
                        conn.user,
                        chat_type,
                        conversation_id,
                        from_user_id,
                        to_user_id,
                    );
                    self.send(
                        &conn,
                        "message_deleted",
                        &MessageDeletedData {
                            id,
                            chat_type,
                            chat_id,
                            seq,
                        },
                        false,
                    );
                }
            }
            Event::Membership {
                chat_type,
                chat_id,
                user_id,
                action,
                by,
                until,
            } => {
                let data = MembershipData {
                    chat_type,
                    chat_id,
                    user_id,
                    action,
                    by,
                    until,
                };
                self.on_membership(channel, data)
            }
            Event::Read {
                user_id,
                chat_type,
                conversation_id,
                peer_id,
                seq,
                session,
            } => {
                for conn in self.receivers(channel, None) {
                    if session.as_ref() == Some(&conn.session) {
                        continue;
                    }
                    let chat_id = match (chat_type, peer_id) {
                        (ChatType::Private, Some(peer)) if conn.user == user_id => peer,
                        (ChatType::Private, _) => user_id,
                        _ => conversation_id,
                    };
                    self.send(
                        &conn,
                        "read",
                        &ReadData {
                            user_id,
                            chat_type,
                            chat_id,
                            seq,
                        },
                        false,
                    );
                }
            }
            Event::Typing {
                user_id,
                chat_type,
                chat_id,
                ..
            } => {
                let data = TypingData {
                    user_id,
                    chat_type,
                    chat_id,
                };
                let mut frame = SharedFrame::new("typing", &data);
                for conn in self.receivers_not_blocking(channel, user_id) {
                    if let Some(f) = frame.get(conn.encoding) {
                        conn.push(Outbound {
                            frame: f,
                            ephemeral: true,
                            published_at_us: 0,
                            label: "typing",
                        });
                    }
                }
            }
            Event::Presence { user_id, online } => {
                let data = PresenceData {
                    user_id,
                    status: if online { "online" } else { "offline" },
                };
                for conn in self.receivers_not_blocking(channel, user_id) {
                    self.send(&conn, "presence", &data, true);
                }
            }
            Event::Ack {
                session_id,
                client_id,
                message,
                traceparent,
            } => {
                let _delivering = delivery_span("ack", traceparent.as_deref()).entered();
                for conn in self
                    .receivers(channel, None)
                    .into_iter()
                    .filter(|c| c.session == session_id)
                {
                    let data = AckData {
                        client_id: &client_id,
                        message: &message,
                    };
                    self.send(&conn, "ack", &data, false);
                }
            }
            Event::Pin {
                message_id,
                chat_type,
                conversation_id,
                from_user_id,
                to_user_id,
                seq,
                pinned,
                by,
            } => {
                for conn in self.receivers(channel, None) {
                    let chat_id = chat_id_for(
                        conn.user,
                        chat_type,
                        conversation_id,
                        from_user_id,
                        to_user_id,
                    );
                    self.send(
                        &conn,
                        "pin",
                        &PinData {
                            message_id,
                            chat_type,
                            chat_id,
                            seq,
                            pinned,
                            by,
                        },
                        false,
                    );
                }
            }
            Event::ConversationUpdated {
                chat_type,
                chat_id,
                name,
                description,
                by,
            } => {
                let data = ConversationUpdatedData {
                    chat_type,
                    chat_id,
                    name: &name,
                    description: description.as_deref(),
                    by,
                };
                for conn in self.receivers(channel, None) {
                    self.send(&conn, "conversation_updated", &data, false);
                }
            }
            Event::Reaction {
                message_id,
                chat_type,
                conversation_id,
                from_user_id,
                to_user_id,
                seq,
                user_id,
                emoji,
                added,
            } => {
                for conn in self.receivers(channel, None) {
                    let chat_id = chat_id_for(
                        conn.user,
                        chat_type,
                        conversation_id,
                        from_user_id,
                        to_user_id,
                    );
                    self.send(
                        &conn,
                        "reaction",
                        &ReactionData {
                            message_id,
                            chat_type,
                            chat_id,
                            seq,
                            user_id,
                            emoji: &emoji,
                            action: if added { "added" } else { "removed" },
                        },
                        false,
                    );
                }
            }
            Event::ConversationSettings {
                user_id,
                chat_type,
                chat_id,
                notifications_muted,
                notifications_muted_until,
                archived,
            } => {
                let data = ConversationSettingsData {
                    chat_type,
                    chat_id,
                    notifications_muted,
                    notifications_muted_until,
                    archived,
                };
                for conn in self
                    .receivers(channel, None)
                    .into_iter()
                    .filter(|c| c.user == user_id)
                {
                    self.send(&conn, "conversation_settings", &data, false);
                }
            }
            Event::Block {
                user_id,
                blocked_id,
                blocked,
            } => {
                let mut state = self.state();
                if state.channels.user_of(channel) == Some(user_id) {
                    if let Some(entry) = state.registry.users.get_mut(&user_id) {
                        entry.blocked.retain(|u| *u != blocked_id);
                        if blocked {
                            entry.blocked.push(blocked_id);
                        }
                    }
                }
            }
            Event::UserUpdated(user) => {
                // To everyone here who shares the conversation (or is the user), once: the
                // same change comes on the channel of each conversation they share.
                let now = Instant::now();
                let mut receivers = self.receivers(channel, None);
                {
                    let mut profiles = self.profiles.lock().unwrap_or_else(|p| p.into_inner());
                    let told = profiles.told(&user, now);
                    receivers.retain(|c| told.insert(c.id));
                }
                for conn in receivers {
                    self.send(&conn, "user_updated", &user, false);
                }
            }
            Event::Revoked { user_id, sid } => {
                if self.state().channels.user_of(channel) == Some(user_id) {
                    // Known to the node at once: its sockets close (see `close_revoked`) and
                    // the login cannot open new ones, before the next poll.
                    self.revocations.note(match sid {
                        Some(sid) => Revocation::Session { user: user_id, sid },
                        None => Revocation::Account { user: user_id },
                    });
                }
            }
            Event::SendFailed {
                session_id,
                client_id,
                code,
                detail,
                retry_after_ms,
            } => {
                for conn in self
                    .receivers(channel, None)
                    .into_iter()
                    .filter(|c| c.session == session_id)
                {
                    let data = ErrorData {
                        client_id: Some(&client_id),
                        code: &code,
                        detail: &detail,
                        in_reply_to: Some("send_message"),
                        retry_after_ms,
                    };
                    self.send(&conn, "error", &data, false);
                }
            }
        }
    }

    fn send<D: Serialize>(
        &self,
        conn: &Arc<ConnShared>,
        kind: &'static str,
        data: &D,
        ephemeral: bool,
    ) {
        match crate::protocol::encode(conn.encoding, kind, data) {
            Ok(frame) => conn.push(Outbound {
                frame,
                ephemeral,
                published_at_us: 0,
                label: kind,
            }),
            Err(e) => tracing::error!(error = %e, "could not encode a frame"),
        }
    }

    /// The local connections on `channel` other than `from`'s, leaving out those whose user
    /// blocked `from` (typing and presence never reach a blocker).
    fn receivers_not_blocking(&self, channel: &str, from: Uuid) -> Vec<Arc<ConnShared>> {
        let state = self.state();
        let Some(ch) = state.channels.get(channel) else {
            return Vec::new();
        };
        ch.conns()
            .filter_map(|id| state.registry.conns.get(&id))
            .filter(|c| c.user != from)
            .filter(|c| {
                !state
                    .registry
                    .users
                    .get(&c.user)
                    .is_some_and(|u| u.blocked.contains(&from))
            })
            .cloned()
            .collect()
    }

    /// The local connections on `channel`, leaving out those of `except`.
    fn receivers(&self, channel: &str, except: Option<Uuid>) -> Vec<Arc<ConnShared>> {
        let state = self.state();
        let Some(ch) = state.channels.get(channel) else {
            return Vec::new();
        };
        ch.conns()
            .filter_map(|id| state.registry.conns.get(&id))
            .filter(|c| Some(c.user) != except)
            .cloned()
            .collect()
    }

    fn on_membership(&self, channel: &str, data: MembershipData) {
        let MembershipData {
            chat_type,
            chat_id,
            user_id,
            action,
            ..
        } = data;
        let is_user_channel = self.state().channels.user_of(channel) == Some(user_id);
        if !is_user_channel {
            // The room's or group's other members.
            for conn in self.receivers(channel, Some(user_id)) {
                self.send(&conn, "membership", &data, false);
            }
            return;
        }
        for conn in self.receivers(channel, None) {
            self.send(&conn, "membership", &data, false);
        }
        let conv_channel = self.keys.conversation_channel(chat_id);
        // Subscriptions change off the dispatcher: it goes on with the next event at once.
        match action {
            a if a.begins_membership() => {
                let mut state = self.state();
                let State { registry, channels } = &mut *state;
                let conns = registry.conns_of(user_id);
                if let Some(entry) = registry.users.get_mut(&user_id) {
                    entry.conversations.add(&Membership {
                        conversation_id: chat_id,
                        chat_type,
                        chat_id,
                        last_seq: 0,
                    });
                }
                let mut new = false;
                for id in conns {
                    new |= channels.join(&conv_channel, id, None);
                }
                if new {
                    self.subscriptions.subscribe_later(vec![conv_channel]);
                }
            }
            a if a.ends_membership() => {
                let mut state = self.state();
                let State { registry, channels } = &mut *state;
                let conns = registry.conns_of(user_id);
                if let Some(entry) = registry.users.get_mut(&user_id) {
                    entry.conversations.remove(chat_id);
                }
                for id in &conns {
                    if let Some(c) = registry.conns.get(id) {
                        c.untrack(chat_id);
                    }
                }
                if channels.leave(&conv_channel, &conns) {
                    self.subscriptions.unsubscribe(vec![conv_channel]);
                }
            }
            // Mutes, unbans and role changes: the events above are all there is to do.
            _ => {}
        }
    }
}
