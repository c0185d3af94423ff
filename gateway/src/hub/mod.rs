//! The node's subscriptions and fan-out.
//!
//! One Redis connection per node subscribes to the channels its connections need: the channel
//! of every room and group one of its users is in, and each of its users' own channel. A
//! channel is subscribed while at least one local connection needs it. One dispatcher task
//! reads every published event, decodes it once, encodes each outgoing frame at most once per
//! encoding, and queues the same bytes on every receiving connection.
//!
//! Ordering and gaps: for every (channel, conversation) the node remembers the last `seq` it
//! forwarded. A `seq` at or below it is a duplicate (a redelivered send) and is dropped; a `seq`
//! beyond the next one means messages were missed (a publish that failed, a Redis reconnect, a
//! lagging subscriber), and the missing ones are fetched from chat-service and forwarded first.
//! After a Redis reconnect every channel is subscribed again and every conversation checked.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, MutexGuard,
    },
};

use fred::prelude::*;
use serde::Serialize;
use shared::{
    chat::{decode, ChatType, Event, MembershipAction, Message},
    internal::{Membership, RepairRequest, UserConversations},
    keys::Keys,
    revocation::{Revocation, Revocations},
};
use uuid::Uuid;

use crate::{
    chat_client::ChatClient,
    connection::state::{ConnId, ConnShared, Outbound},
    protocol::SharedFrame,
};

/// A subscribed channel and who needs it.
struct Channel {
    /// Local connections that receive its events.
    conns: HashSet<ConnId>,
    /// The same connections as one shared list, built on the first message after a change:
    /// a message is handed to its receivers without a list (and a reference) per message.
    snapshot: Option<Arc<[Arc<ConnShared>]>>,
    /// Whose channel it is, for user channels.
    user: Option<Uuid>,
    /// Last seq forwarded per conversation; absent until known.
    streams: HashMap<Uuid, i64>,
}

impl Channel {
    fn new(conn: ConnId, user: Option<Uuid>) -> Self {
        Self {
            conns: HashSet::from([conn]),
            snapshot: None,
            user,
            streams: HashMap::new(),
        }
    }

    fn insert(&mut self, conn: ConnId) {
        if self.conns.insert(conn) {
            self.snapshot = None;
        }
    }

    fn remove(&mut self, conn: ConnId) {
        if self.conns.remove(&conn) {
            self.snapshot = None;
        }
    }

    /// Its receiving connections, from the snapshot.
    fn receivers(&mut self, conns: &HashMap<ConnId, Arc<ConnShared>>) -> Arc<[Arc<ConnShared>]> {
        self.snapshot
            .get_or_insert_with(|| {
                self.conns
                    .iter()
                    .filter_map(|id| conns.get(id).cloned())
                    .collect()
            })
            .clone()
    }
}

/// What the node knows about one of its users.
struct UserEntry {
    conns: Vec<ConnId>,
    /// Conversations by id.
    conversations: HashMap<Uuid, Membership>,
    /// Users this user blocked: their typing and presence are not passed on.
    blocked: Vec<Uuid>,
    contacts: Vec<Uuid>,
}

impl UserEntry {
    /// Adds the private chat `conv` that `message` belongs to, seen from `user`, and its other
    /// user as a contact (they get each other's presence from now on).
    fn learn_private(&mut self, conv: Uuid, message: &Message, user: Uuid) {
        let Some(peer) = message.chat_id_for(user) else {
            return;
        };
        self.conversations.entry(conv).or_insert(Membership {
            conversation_id: conv,
            chat_type: ChatType::Private,
            chat_id: peer,
            last_seq: 0,
        });
        if !self.contacts.contains(&peer) {
            self.contacts.push(peer);
        }
    }
}

#[derive(Default)]
struct State {
    conns: HashMap<ConnId, Arc<ConnShared>>,
    users: HashMap<Uuid, UserEntry>,
    channels: HashMap<String, Channel>,
}

/// Why a connection was not registered.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    NodeFull,
    UserFull,
}

pub struct Hub {
    state: Mutex<State>,
    revocations: Arc<Revocations>,
    subscriber: Client,
    keys: Keys,
    chat: ChatClient,
    next_id: AtomicU64,
    max_connections: usize,
    max_per_user: usize,
}

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

#[derive(Serialize)]
struct ErrorData<'a> {
    client_id: &'a str,
    code: &'a str,
    detail: &'a str,
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

/// The most messages one repair fetches per conversation.
const REPAIR_LIMIT: i64 = 500;

impl Hub {
    pub fn new(
        subscriber: Client,
        keys: Keys,
        chat: ChatClient,
        max_connections: usize,
        max_per_user: usize,
        revocations: Arc<Revocations>,
    ) -> Self {
        Self {
            state: Mutex::new(State::default()),
            revocations,
            subscriber,
            keys,
            chat,
            next_id: AtomicU64::new(1),
            max_connections,
            max_per_user,
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    pub fn chat(&self) -> &ChatClient {
        &self.chat
    }

    pub fn next_id(&self) -> ConnId {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    pub fn connection_count(&self) -> usize {
        self.state().conns.len()
    }

    /// Channels the node is subscribed to (for tests and metrics).
    pub fn channel_count(&self) -> usize {
        self.state().channels.len()
    }

    /// Checks the node and per-user caps before an upgrade.
    pub fn admit(&self, user: Uuid) -> Result<(), Refusal> {
        let state = self.state();
        if state.conns.len() >= self.max_connections {
            return Err(Refusal::NodeFull);
        }
        if state
            .users
            .get(&user)
            .is_some_and(|u| u.conns.len() >= self.max_per_user)
        {
            return Err(Refusal::UserFull);
        }
        Ok(())
    }

    /// The conversation `(chat_type, chat_id)` of `user`, if the node knows they belong to it.
    pub fn conversation_of(
        &self,
        user: Uuid,
        chat_type: ChatType,
        chat_id: Uuid,
    ) -> Option<Membership> {
        let state = self.state();
        state
            .users
            .get(&user)?
            .conversations
            .values()
            .find(|m| m.chat_type == chat_type && m.chat_id == chat_id)
            .cloned()
    }

    /// Users who share a private chat or group with `user`.
    pub fn contacts_of(&self, user: Uuid) -> Vec<Uuid> {
        self.state()
            .users
            .get(&user)
            .map(|u| u.contacts.clone())
            .unwrap_or_default()
    }

    /// Adds a connection with what its user belongs to; subscribes what is new and forwards
    /// what was published before the subscription took. Returns whether it is the user's
    /// first connection on this node.
    pub async fn register(
        &self,
        conn: Arc<ConnShared>,
        info: UserConversations,
    ) -> Result<bool, Refusal> {
        let user = conn.user;
        let (first, new_channels) = {
            let mut state = self.state();
            if state.conns.len() >= self.max_connections {
                return Err(Refusal::NodeFull);
            }
            if state
                .users
                .get(&user)
                .is_some_and(|u| u.conns.len() >= self.max_per_user)
            {
                return Err(Refusal::UserFull);
            }
            state.conns.insert(conn.id, conn.clone());
            let entry = state.users.entry(user).or_insert_with(|| UserEntry {
                conns: Vec::new(),
                conversations: HashMap::new(),
                contacts: Vec::new(),
                blocked: Vec::new(),
            });
            let first = entry.conns.is_empty();
            entry.conns.push(conn.id);
            // Added to, never replaced: a conversation an earlier connection of the user joined
            // (a membership event newer than this connection's list) stays known, so that
            // `unregister` finds every channel the user's connections are in.
            for m in &info.conversations {
                entry
                    .conversations
                    .entry(m.conversation_id)
                    .or_insert_with(|| m.clone());
            }
            entry.contacts = info.contacts.clone();
            entry.blocked = info.blocked.clone();
            let mut new_channels = Vec::new();
            let user_channel = self.keys.user_channel(user);
            Self::join_channel(
                &mut state,
                &user_channel,
                conn.id,
                Some(user),
                &mut new_channels,
            );
            for m in &info.conversations {
                conn.track(m.conversation_id, m.last_seq);
                let channel = match m.chat_type {
                    ChatType::Private => user_channel.clone(),
                    _ => self.keys.conversation_channel(m.conversation_id),
                };
                Self::join_channel(&mut state, &channel, conn.id, None, &mut new_channels);
                // A conversation new to the node is forwarded from the seq the user was at.
                if let Some(ch) = state.channels.get_mut(&channel) {
                    ch.streams.entry(m.conversation_id).or_insert(m.last_seq);
                }
            }
            (first, new_channels)
        };
        self.subscribe(&new_channels).await;
        if !new_channels.is_empty() {
            self.repair_channels(&new_channels).await;
        }
        metrics::gauge!("gateway_connections").set(self.connection_count() as f64);
        Ok(first)
    }

    /// Adds `conn` to `channel`, noting the name in `new` when the node did not have it.
    fn join_channel(
        state: &mut State,
        channel: &str,
        conn: ConnId,
        user: Option<Uuid>,
        new: &mut Vec<String>,
    ) {
        match state.channels.get_mut(channel) {
            Some(ch) => ch.insert(conn),
            None => {
                state
                    .channels
                    .insert(channel.to_owned(), Channel::new(conn, user));
                new.push(channel.to_owned());
            }
        }
    }

    /// Removes a connection; unsubscribes what no local connection needs any more. Returns
    /// whether it was the user's last connection on this node.
    pub async fn unregister(&self, conn: &ConnShared) -> bool {
        let (last, dropped) = {
            let mut state = self.state();
            state.conns.remove(&conn.id);
            let mut last = false;
            // The channels a connection can be in: its user's own and those of the user's rooms
            // and groups (joins add the conversation to the user's entry first, and leaving
            // takes the user's connections off the channel). Only those are looked at: a
            // disconnect costs its own channels, not every channel of the node.
            let mut candidates = vec![self.keys.user_channel(conn.user)];
            if let Some(entry) = state.users.get_mut(&conn.user) {
                entry.conns.retain(|c| *c != conn.id);
                last = entry.conns.is_empty();
                candidates.extend(
                    entry
                        .conversations
                        .values()
                        .filter(|m| m.chat_type != ChatType::Private)
                        .map(|m| self.keys.conversation_channel(m.conversation_id)),
                );
            }
            if last {
                state.users.remove(&conn.user);
            }
            let mut dropped = Vec::new();
            for name in candidates {
                let emptied = state.channels.get_mut(&name).is_some_and(|ch| {
                    ch.remove(conn.id);
                    ch.conns.is_empty()
                });
                if emptied {
                    state.channels.remove(&name);
                    dropped.push(name);
                }
            }
            (last, dropped)
        };
        for channel in dropped {
            let r: Result<(), Error> = self.subscriber.unsubscribe(channel).await;
            if let Err(e) = r {
                tracing::warn!(error = %e, "unsubscribe failed");
            }
        }
        metrics::gauge!("gateway_connections").set(self.connection_count() as f64);
        last
    }

    async fn subscribe(&self, channels: &[String]) {
        for channel in channels {
            let r: Result<(), Error> = self.subscriber.subscribe(channel.as_str()).await;
            if let Err(e) = r {
                // The reconnect handler subscribes every channel again once Redis is back.
                tracing::warn!(error = %e, %channel, "subscribe failed");
            }
        }
    }

    /// Subscribes every channel again (after a Redis reconnect) and repairs every conversation.
    pub async fn resubscribe_all(&self) {
        let channels: Vec<String> = self.state().channels.keys().cloned().collect();
        self.subscribe(&channels).await;
        self.repair_channels(&channels).await;
    }

    /// Asks chat-service for each known conversation's last seq on these channels, and
    /// forwards whatever the node has not.
    pub async fn repair_channels(&self, channels: &[String]) {
        let wanted: Vec<(String, Uuid, i64)> = {
            let state = self.state();
            channels
                .iter()
                .filter_map(|name| state.channels.get(name).map(|ch| (name, ch)))
                .flat_map(|(name, ch)| {
                    ch.streams
                        .iter()
                        .map(move |(conv, last)| (name.clone(), *conv, *last))
                })
                .collect()
        };
        if wanted.is_empty() {
            return;
        }
        let request = RepairRequest {
            after: wanted
                .iter()
                .map(|(_, conv, last)| (*conv, *last))
                .collect(),
            limit: REPAIR_LIMIT,
        };
        let answer = match self.chat.repair(&request).await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "gap check failed; the next message will trigger it again");
                return;
            }
        };
        let by_conv: HashMap<Uuid, Vec<Message>> = answer
            .results
            .into_iter()
            .map(|r| (r.conversation_id, r.messages))
            .collect();
        for (channel, conv, _) in wanted {
            for m in by_conv.get(&conv).into_iter().flatten() {
                self.forward_message(&channel, conv, m, 0, true);
            }
        }
    }

    /// Forwards a message on `channel` if it is the next one; returns the seq the node had
    /// when this one is beyond the next (a gap), without forwarding it.
    fn forward_message(
        &self,
        channel: &str,
        conv: Uuid,
        message: &Message,
        published_at_us: i64,
        repaired: bool,
    ) -> Option<i64> {
        let receivers = {
            let mut guard = self.state();
            let State {
                channels,
                conns,
                users,
            } = &mut *guard;
            let ch = channels.get_mut(channel)?;
            match ch.streams.get(&conv).copied() {
                Some(last) if message.seq <= last => return None,
                Some(last) if message.seq > last + 1 => return Some(last),
                Some(_) => {}
                // A private chat that began while its user is connected: it is theirs now.
                None => {
                    if let (ChatType::Private, Some(user)) = (message.chat_type, ch.user) {
                        if let Some(entry) = users.get_mut(&user) {
                            entry.learn_private(conv, message, user);
                        }
                    }
                }
            }
            ch.streams.insert(conv, message.seq);
            ch.receivers(conns)
        };
        if repaired {
            metrics::counter!("gateway_gap_messages_repaired_total").increment(1);
        }
        let mut frame = SharedFrame::new("message", message);
        for conn in receivers.iter() {
            if let Some(f) = frame.get(conn.encoding) {
                conn.deliver_message(
                    conv,
                    message.seq,
                    Outbound {
                        frame: f,
                        ephemeral: false,
                        published_at_us,
                        label: "message",
                    },
                );
            }
        }
        None
    }

    /// Handles one published payload: an event, or a batch of them in order.
    pub async fn dispatch(&self, channel: &str, bytes: &[u8]) {
        let event: Event = match decode(bytes) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(error = %e, %channel, "undecodable event dropped");
                return;
            }
        };
        match event {
            Event::Batch(events) => {
                for event in events {
                    self.handle_event(channel, event).await;
                }
            }
            event => self.handle_event(channel, event).await,
        }
    }

    async fn handle_event(&self, channel: &str, event: Event) {
        match event {
            Event::Batch(_) => tracing::warn!(%channel, "nested event batch dropped"),
            Event::Message {
                conversation_id,
                message,
                published_at_us,
            } => {
                if let Some(last) =
                    self.forward_message(channel, conversation_id, &message, published_at_us, false)
                {
                    self.fill_gap(channel, conversation_id, last, message.seq)
                        .await;
                    self.forward_message(
                        channel,
                        conversation_id,
                        &message,
                        published_at_us,
                        false,
                    );
                }
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
                self.on_membership(channel, data).await
            }
            Event::Read {
                user_id,
                chat_type,
                conversation_id,
                peer_id,
                seq,
            } => {
                for conn in self.receivers(channel, None) {
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
            } => {
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
            Event::Block {
                user_id,
                blocked_id,
                blocked,
            } => {
                let mut state = self.state();
                if state.channels.get(channel).and_then(|c| c.user) == Some(user_id) {
                    if let Some(entry) = state.users.get_mut(&user_id) {
                        entry.blocked.retain(|u| *u != blocked_id);
                        if blocked {
                            entry.blocked.push(blocked_id);
                        }
                    }
                }
            }
            Event::Revoked { user_id, sid } => {
                if self.state().channels.get(channel).and_then(|c| c.user) == Some(user_id) {
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
            } => {
                for conn in self
                    .receivers(channel, None)
                    .into_iter()
                    .filter(|c| c.session == session_id)
                {
                    let data = ErrorData {
                        client_id: &client_id,
                        code: &code,
                        detail: &detail,
                    };
                    self.send(&conn, "error", &data, false);
                }
            }
        }
    }

    fn send<D: Serialize>(&self, conn: &ConnShared, kind: &'static str, data: &D, ephemeral: bool) {
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
        ch.conns
            .iter()
            .filter_map(|id| state.conns.get(id))
            .filter(|c| c.user != from)
            .filter(|c| {
                !state
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
        ch.conns
            .iter()
            .filter_map(|id| state.conns.get(id))
            .filter(|c| Some(c.user) != except)
            .cloned()
            .collect()
    }

    /// Fetches the messages between `last` and `upto` and forwards them in order.
    async fn fill_gap(&self, channel: &str, conv: Uuid, last: i64, upto: i64) {
        metrics::counter!("gateway_gaps_detected_total").increment(1);
        tracing::info!(%channel, conversation = %conv, from = last + 1, to = upto - 1, "repairing a gap");
        let request = RepairRequest {
            after: vec![(conv, last)],
            limit: (upto - last - 1).clamp(1, REPAIR_LIMIT),
        };
        match self.chat.repair(&request).await {
            Ok(answer) => {
                for r in answer.results {
                    for m in r.messages.iter().filter(|m| m.seq < upto) {
                        self.forward_message(channel, conv, m, 0, true);
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "gap repair failed; delivering what arrived"),
        }
        // Whatever could not be fetched, live delivery goes on from here; clients `sync`.
        let mut state = self.state();
        if let Some(ch) = state.channels.get_mut(channel) {
            let last_now = ch.streams.get(&conv).copied().unwrap_or(0);
            if last_now < upto - 1 {
                ch.streams.insert(conv, upto - 1);
            }
        }
    }

    async fn on_membership(&self, channel: &str, data: MembershipData) {
        let MembershipData {
            chat_type,
            chat_id,
            user_id,
            action,
            ..
        } = data;
        let is_user_channel =
            self.state().channels.get(channel).and_then(|c| c.user) == Some(user_id);
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
        match action {
            a if a.begins_membership() => {
                let mut new = Vec::new();
                {
                    let mut state = self.state();
                    let conns: Vec<ConnId> = state
                        .users
                        .get(&user_id)
                        .map(|u| u.conns.clone())
                        .unwrap_or_default();
                    if let Some(entry) = state.users.get_mut(&user_id) {
                        entry.conversations.entry(chat_id).or_insert(Membership {
                            conversation_id: chat_id,
                            chat_type,
                            chat_id,
                            last_seq: 0,
                        });
                    }
                    for id in conns {
                        Self::join_channel(&mut state, &conv_channel, id, None, &mut new);
                    }
                }
                self.subscribe(&new).await;
            }
            a if a.ends_membership() => {
                let emptied = {
                    let mut state = self.state();
                    let conns: Vec<ConnId> = state
                        .users
                        .get(&user_id)
                        .map(|u| u.conns.clone())
                        .unwrap_or_default();
                    if let Some(entry) = state.users.get_mut(&user_id) {
                        entry.conversations.remove(&chat_id);
                    }
                    for id in &conns {
                        if let Some(c) = state.conns.get(id) {
                            c.untrack(chat_id);
                        }
                    }
                    let mut emptied = false;
                    if let Some(ch) = state.channels.get_mut(&conv_channel) {
                        for id in &conns {
                            ch.remove(*id);
                        }
                        emptied = ch.conns.is_empty();
                    }
                    if emptied {
                        state.channels.remove(&conv_channel);
                    }
                    emptied
                };
                if emptied {
                    let r: Result<(), Error> = self.subscriber.unsubscribe(conv_channel).await;
                    if let Err(e) = r {
                        tracing::warn!(error = %e, "unsubscribe failed");
                    }
                }
            }
            // Mutes, unbans and role changes: the events above are all there is to do.
            _ => {}
        }
    }

    /// Closes (4001) the connections of `user` on this node whose login `covered` says is
    /// revoked.
    pub fn revoke(&self, covered: impl Fn(Uuid, Uuid) -> bool, user: Uuid) {
        let conns: Vec<Arc<ConnShared>> = {
            let state = self.state();
            let Some(entry) = state.users.get(&user) else {
                return;
            };
            entry
                .conns
                .iter()
                .filter_map(|id| state.conns.get(id).cloned())
                .collect()
        };
        for conn in conns {
            if covered(conn.user, conn.login()) {
                metrics::counter!("gateway_revoked_closes_total").increment(1);
                conn.revoke();
            }
        }
    }

    /// Every local connection, for shutdown.
    pub fn all_connections(&self) -> Vec<Arc<ConnShared>> {
        self.state().conns.values().cloned().collect()
    }

    /// Users with a connection on this node.
    pub fn local_users(&self) -> Vec<Uuid> {
        self.state().users.keys().copied().collect()
    }
}
