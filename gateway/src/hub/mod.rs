//! The node's subscriptions and fan-out, in parts:
//!
//! - [`registry`] — the node's connections and what it knows of their users.
//! - [`memberships`] — the conversations of each connected user, kept small.
//! - [`channels`] — the channels the node is subscribed to and whom each one feeds.
//! - [`subscriber`] — the subscriptions at Redis, made in order and in batches by one task.
//! - [`ordering`] — each conversation's messages once and in order; gaps held until repaired.
//! - [`repair`] — fetching missed messages from chat-service, off the dispatcher.
//! - [`fanout`] — each event turned into its receivers' frames.
//! - [`profiles`] — a profile change once per connection, though it comes on many channels.
//!
//! One Redis connection per node subscribes to the channels its connections need: the channel
//! of every room and group one of its users is in, and each of its users' own channel. One
//! dispatcher task reads every published event, decodes it once and hands it to [`Hub::dispatch`],
//! which never waits on the network: subscriptions and repairs are queued for their tasks.
//! After a Redis reconnect (or a cluster slot that moved) every channel is subscribed again and
//! every conversation checked.

mod channels;
mod fanout;
mod memberships;
pub mod ordering;
mod profiles;
mod registry;
pub mod repair;
pub mod subscriber;

use std::sync::{
    atomic::{AtomicU64, Ordering},
    Arc, Mutex, MutexGuard,
};

use fred::prelude::Client;
use shared::{
    chat::{decode, ChatType, Event, Message},
    internal::UserConversations,
    keys::Keys,
    revocation::Revocations,
};
use uuid::Uuid;

use self::profiles::Profiles;
pub use self::registry::Refusal;
use self::{
    channels::{Channels, Pending},
    ordering::{Offer, Order},
    registry::Registry,
    repair::{Job, RepairJobs, RepairQueue},
    subscriber::{Subscriber, Subscriptions},
};
use crate::{
    chat_client::ChatClient,
    connection::{
        state::{ConnId, ConnShared, Outbound},
        wire,
    },
    protocol::SharedFrame,
};

struct State {
    registry: Registry,
    channels: Channels,
}

pub struct Hub {
    state: Mutex<State>,
    revocations: Arc<Revocations>,
    subscriptions: Subscriptions,
    repairs: RepairQueue,
    keys: Keys,
    chat: ChatClient,
    next_id: AtomicU64,
    /// Used by the dispatcher only.
    profiles: Mutex<Profiles>,
}

/// The hub's tasks, for the application to run: subscriptions and repairs.
pub struct Tasks {
    pub subscriber: Subscriber,
    pub repairs: RepairJobs,
}

impl Hub {
    pub fn new(
        subscriber: Client,
        keys: Keys,
        chat: ChatClient,
        max_connections: usize,
        max_per_user: usize,
        revocations: Arc<Revocations>,
    ) -> (Self, Tasks) {
        let (repairs, jobs) = repair::queue();
        let (subscriptions, subscriber) = subscriber::channel(subscriber, repairs.clone());
        let hub = Self {
            state: Mutex::new(State {
                registry: Registry::new(max_connections, max_per_user),
                channels: Channels::default(),
            }),
            revocations,
            subscriptions,
            repairs,
            keys,
            chat,
            next_id: AtomicU64::new(1),
            profiles: Mutex::default(),
        };
        (
            hub,
            Tasks {
                subscriber,
                repairs: jobs,
            },
        )
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
        self.state().registry.conns.len()
    }

    /// Channels the node is subscribed to (for tests and metrics).
    pub fn channel_count(&self) -> usize {
        self.state().channels.len()
    }

    /// Checks the node and per-user caps before an upgrade.
    pub fn admit(&self, user: Uuid) -> Result<(), Refusal> {
        self.state().registry.admit(user)
    }

    /// The conversation of the chat `(chat_type, chat_id)` of `user`, if the node knows they
    /// belong to it.
    pub fn conversation_of(&self, user: Uuid, chat_type: ChatType, chat_id: Uuid) -> Option<Uuid> {
        self.state()
            .registry
            .users
            .get(&user)?
            .conversations
            .conversation(chat_type, chat_id)
    }

    /// Users who share a private chat or group with `user`.
    pub fn contacts_of(&self, user: Uuid) -> Vec<Uuid> {
        self.state()
            .registry
            .users
            .get(&user)
            .map(|u| u.contacts.clone())
            .unwrap_or_default()
    }

    /// Adds a connection with what its user belongs to, and returns once the channels new to
    /// the node are subscribed (what was published before that is repaired right after).
    /// Returns whether it is the user's first connection on this node.
    pub async fn register(
        &self,
        conn: Arc<ConnShared>,
        info: UserConversations,
    ) -> Result<bool, Refusal> {
        let user = conn.user;
        let (first, new_channels) = {
            let mut state = self.state();
            let State { registry, channels } = &mut *state;
            let first = registry.add(conn.clone(), &info)?;
            let mut new_channels = Vec::new();
            let user_channel = self.keys.user_channel(user);
            if channels.join(&user_channel, conn.id, Some(user)) {
                new_channels.push(user_channel.clone());
            }
            for m in &info.conversations {
                let name = match m.chat_type {
                    ChatType::Private => user_channel.clone(),
                    _ => self.keys.conversation_channel(m.conversation_id),
                };
                if channels.join(&name, conn.id, None) {
                    new_channels.push(name.clone());
                }
                let Some(ch) = channels.get_mut(&name) else {
                    continue;
                };
                // Where the node's order for the conversation is. A room or group new to the
                // node is forwarded from the seq the user was at. A private chat's order is made
                // only when a message of it arrives (most never see one while connected), from
                // the seq of the user's first list on this node, kept with its memberships.
                let forwarded = match (ch.streams.get(&m.conversation_id), m.chat_type) {
                    (Some(order), _) => order.last(),
                    (None, ChatType::Private) => registry
                        .users
                        .get(&user)
                        .and_then(|u| u.conversations.private_start(m.conversation_id))
                        .unwrap_or(m.last_seq),
                    (None, _) => ch
                        .streams
                        .entry(m.conversation_id)
                        .or_insert_with(|| Order::new(m.last_seq))
                        .last(),
                };
                // Only a node that has not yet forwarded up to the seq the user's list was read
                // at can still hand this connection messages its client had (on the connection
                // it replaces): then they are marked as had. Otherwise the connection's cursor
                // begins with its first message, and an idle connection keeps no cursor at all.
                if forwarded < m.last_seq {
                    conn.track(m.conversation_id, m.last_seq);
                }
            }
            (first, new_channels)
        };
        self.subscriptions.subscribe(new_channels).await;
        metrics::gauge!("gateway_connections").set(self.connection_count() as f64);
        Ok(first)
    }

    /// Removes a connection; unsubscribes what no local connection needs any more. Only the
    /// connection's own channels are looked at. Returns whether it was the user's last
    /// connection on this node.
    pub fn unregister(&self, conn: &ConnShared) -> bool {
        let (last, dropped) = {
            let mut state = self.state();
            let State { registry, channels } = &mut *state;
            let (names, last) = registry.remove(conn, &self.keys);
            let dropped: Vec<String> = names
                .into_iter()
                .filter(|name| channels.leave(name, &[conn.id]))
                .collect();
            (last, dropped)
        };
        self.subscriptions.unsubscribe(dropped);
        metrics::gauge!("gateway_connections").set(self.connection_count() as f64);
        last
    }

    /// Subscribes every channel again (after a Redis reconnect or a slot move); each
    /// conversation is checked for what was missed once the subscription is back.
    pub async fn resubscribe_all(&self) {
        self.resubscribe(|_| true).await;
    }

    /// Subscribes again the channels `which` picks (those of cluster slots that moved), and
    /// catches them up; returns how many.
    pub async fn resubscribe(&self, which: impl Fn(&str) -> bool) -> usize {
        let names: Vec<String> = self
            .state()
            .channels
            .names()
            .into_iter()
            .filter(|n| which(n))
            .collect();
        let count = names.len();
        self.subscriptions.subscribe(names).await;
        count
    }

    /// Checks every conversation for missed messages (after the dispatcher lagged).
    pub fn repair_all(&self) {
        let names = self.state().channels.names();
        let _ = self.repairs.send(Job::CatchUp(names));
    }

    /// Puts every conversation on `channels` not under repair already under repair; returns
    /// `(channel, conversation, last seq forwarded)` of each. A user channel's private chats
    /// without an order yet are asked for too, from the seq of the user's list, but stay without
    /// one unless the answer has messages (see [`Hub::finish_repair`]).
    pub(crate) fn begin_catch_up(&self, channels: &[String]) -> Vec<(String, Uuid, i64)> {
        let mut guard = self.state();
        let State {
            registry,
            channels: subscribed,
        } = &mut *guard;
        let mut wanted = Vec::new();
        for name in channels {
            let Some(ch) = subscribed.get_mut(name) else {
                continue;
            };
            for (conv, order) in ch.streams.iter_mut() {
                if let Some(after) = order.begin_repair() {
                    wanted.push((name.clone(), *conv, after));
                }
            }
            if let Some(entry) = ch.user.and_then(|u| registry.users.get(&u)) {
                for (conv, after) in entry.conversations.private() {
                    if !ch.streams.contains_key(&conv) {
                        wanted.push((name.clone(), conv, after));
                    }
                }
            }
        }
        wanted
    }

    /// Ends the repair of `conv` on `channel` (asked for after `after`) with what chat-service
    /// returned, forwarding it and what was held meanwhile, in order. A private chat without an
    /// order gets one, from `after`, only if messages came back.
    pub(crate) fn finish_repair(
        &self,
        channel: &str,
        conv: Uuid,
        after: i64,
        fetched: Vec<Message>,
    ) {
        let (out, receivers) = {
            let mut guard = self.state();
            let State { registry, channels } = &mut *guard;
            let Some(ch) = channels.get_mut(channel) else {
                return;
            };
            if fetched.is_empty() && !ch.streams.contains_key(&conv) {
                return;
            }
            let order = ch.streams.entry(conv).or_insert_with(|| Order::new(after));
            let out = order.finish_repair(fetched.into_iter().map(|m| {
                (
                    m.seq,
                    Pending {
                        message: m,
                        published_at_us: 0,
                        repaired: true,
                    },
                )
            }));
            (out, ch.receivers(&registry.conns))
        };
        for p in out {
            if p.repaired {
                metrics::counter!("gateway_gap_messages_repaired_total").increment(1);
            }
            deliver(&receivers, conv, &p.message, p.published_at_us);
        }
    }

    /// A live message: forwarded if it is the next one of its conversation on this channel,
    /// dropped if it is a duplicate, held (and a repair queued) if messages are missing.
    fn offer_message(&self, channel: &str, conv: Uuid, message: Message, published_at_us: i64) {
        let seq = message.seq;
        let (forward, receivers) = {
            let mut guard = self.state();
            let State { registry, channels } = &mut *guard;
            let Some(ch) = channels.get_mut(channel) else {
                return;
            };
            if !ch.streams.contains_key(&conv) {
                // A private chat's first message on this node: its order starts where the
                // user's list was read, or, for a chat that began while its user is
                // connected, just before this message (and the chat is theirs now).
                let mut start = seq - 1;
                if let (ChatType::Private, Some(user)) = (message.chat_type, ch.user) {
                    if let Some(entry) = registry.users.get_mut(&user) {
                        match entry.conversations.private_start(conv) {
                            Some(known) => start = known,
                            None => entry.learn_private(conv, &message, user),
                        }
                    }
                }
                ch.streams.insert(conv, Order::new(start));
            }
            let Some(order) = ch.streams.get_mut(&conv) else {
                return;
            };
            let pending = Pending {
                message,
                published_at_us,
                repaired: false,
            };
            match order.offer(seq, pending) {
                Offer::Forward(p) => (p, ch.receivers(&registry.conns)),
                Offer::Duplicate | Offer::Held => return,
                Offer::Dropped => {
                    metrics::counter!("gateway_held_messages_dropped_total").increment(1);
                    return;
                }
                Offer::Gap { after } => {
                    let _ = self.repairs.send(Job::Gap {
                        channel: channel.to_owned(),
                        conversation: conv,
                        after,
                        upto: seq,
                    });
                    return;
                }
            }
        };
        deliver(&receivers, conv, &forward.message, forward.published_at_us);
    }

    /// Handles one published payload: an event, or a batch of them in order.
    pub fn dispatch(&self, channel: &str, bytes: &[u8]) {
        let event: Event = match decode(bytes) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(error = %e, %channel, "undecodable event dropped");
                return;
            }
        };
        match event {
            // A batch's frames for one connection go out in one write (see `wire::corked`).
            Event::Batch(events) => wire::corked(|| {
                for event in events {
                    self.handle_event(channel, event);
                }
            }),
            event => self.handle_event(channel, event),
        }
    }

    /// Closes (4001) the connections of `user` on this node whose login `covered` says is
    /// revoked.
    pub fn revoke(&self, covered: impl Fn(Uuid, Uuid) -> bool, user: Uuid) {
        let conns: Vec<Arc<ConnShared>> = {
            let state = self.state();
            state
                .registry
                .conns_of(user)
                .iter()
                .filter_map(|id| state.registry.conns.get(id).cloned())
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
        self.state().registry.conns.values().cloned().collect()
    }

    /// Users with a connection on this node.
    pub fn local_users(&self) -> Vec<Uuid> {
        self.state().registry.users.keys().copied().collect()
    }
}

/// Queues `message` on each receiver, the frame encoded once per encoding.
fn deliver(receivers: &[Arc<ConnShared>], conv: Uuid, message: &Message, published_at_us: i64) {
    let mut frame = SharedFrame::new("message", message);
    for conn in receivers {
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
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use chrono::Utc;
    use fred::prelude::Builder;
    use shared::{
        chat::{encode, MessageType},
        config::JwtConfig,
        internal::Membership,
        jwt::JwtKeys,
    };

    use super::*;
    use crate::protocol::Encoding;

    /// A hub with no Redis behind it (nothing here subscribes) and its repair queue.
    fn hub() -> (Hub, RepairJobs) {
        let redis = Builder::default_centralized()
            .build()
            .expect("a client that never connects");
        let keys = Keys::new("t:");
        let jwt = Arc::new(JwtKeys::new(&JwtConfig {
            secret_key: "k".repeat(32),
            access_token_expire_minutes: 30,
            revocation_poll: Duration::from_secs(1),
        }));
        let chat = ChatClient::new("http://127.0.0.1:9", jwt).expect("a client");
        let revocations =
            Revocations::new(redis.clone(), keys.clone(), 1800, Duration::from_secs(1));
        let (hub, tasks) = Hub::new(redis, keys, chat, 10, 10, revocations);
        // With the subscriber gone, `register` does not wait for subscriptions.
        drop(tasks.subscriber);
        (hub, tasks.repairs)
    }

    fn private_message(seq: i64, from: Uuid, to: Uuid) -> Message {
        Message {
            id: Uuid::new_v4(),
            seq,
            chat_type: ChatType::Private,
            from_user_id: from,
            to_user_id: Some(to),
            room_id: None,
            group_id: None,
            content: format!("m{seq}"),
            message_type: MessageType::Text,
            reply_to_id: None,
            client_id: None,
            is_edited: false,
            is_deleted: false,
            created_at: Utc::now(),
            edited_at: None,
            reactions: Vec::new(),
            mentions: Vec::new(),
            mentions_all: false,
            attachment: None,
        }
    }

    fn connection(hub: &Hub, user: Uuid) -> Arc<ConnShared> {
        Arc::new(ConnShared::new(
            hub.next_id(),
            user,
            "s".into(),
            Encoding::Json,
            64,
            Duration::from_secs(1),
        ))
    }

    /// A user's list with one private chat, with `peer`, read at `last_seq`.
    fn private_chat(conv: Uuid, peer: Uuid, last_seq: i64) -> UserConversations {
        UserConversations {
            conversations: vec![Membership {
                conversation_id: conv,
                chat_type: ChatType::Private,
                chat_id: peer,
                last_seq,
            }],
            contacts: vec![peer],
            blocked: Vec::new(),
        }
    }

    fn publish(hub: &Hub, channel: &str, conv: Uuid, message: Message) {
        let event = Event::Message {
            conversation_id: conv,
            message,
            published_at_us: 0,
            traceparent: None,
        };
        hub.dispatch(channel, &encode(&event).expect("encodes"));
    }

    /// The seqs queued on `conn`, in order.
    fn seqs(conn: &ConnShared) -> Vec<i64> {
        let mut seqs = Vec::new();
        while let Some(out) = conn.pop() {
            let frame: serde_json::Value =
                serde_json::from_slice(out.frame.payload()).expect("a JSON frame");
            seqs.push(frame["data"]["seq"].as_i64().unwrap_or(-1));
        }
        seqs
    }

    #[tokio::test]
    async fn a_private_chat_gets_its_order_with_its_first_message_from_the_lists_seq() {
        let (hub, mut jobs) = hub();
        let (bob, alice, conv) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let conn = connection(&hub, bob);
        let info = private_chat(conv, alice, 5);
        assert_eq!(hub.register(conn.clone(), info).await, Ok(true));
        let channel = hub.keys().user_channel(bob);
        let streams = |hub: &Hub| {
            hub.state()
                .channels
                .get(&channel)
                .map(|c| c.streams.len())
                .unwrap_or(usize::MAX)
        };
        assert_eq!(streams(&hub), 0, "an idle private chat has no order");
        assert_eq!(
            hub.conversation_of(bob, ChatType::Private, alice),
            Some(conv)
        );

        // A catch-up asks for it from the list's seq; an empty answer leaves it without one.
        assert_eq!(
            hub.begin_catch_up(std::slice::from_ref(&channel)),
            vec![(channel.clone(), conv, 5)]
        );
        hub.finish_repair(&channel, conv, 5, Vec::new());
        assert_eq!(streams(&hub), 0);

        // Its first message is seq 7: 6 is missing since the list was read, and is repaired.
        publish(&hub, &channel, conv, private_message(7, alice, bob));
        assert_eq!(streams(&hub), 1);
        assert!(seqs(&conn).is_empty(), "7 waits for 6");
        match jobs.try_recv() {
            Ok(Job::Gap { after, upto, .. }) => assert_eq!((after, upto), (5, 7)),
            other => panic!("expected a gap job, got {other:?}"),
        }
        hub.finish_repair(&channel, conv, 5, vec![private_message(6, alice, bob)]);
        publish(&hub, &channel, conv, private_message(8, alice, bob));
        assert_eq!(seqs(&conn), vec![6, 7, 8]);
    }

    #[tokio::test]
    async fn a_catch_up_that_finds_messages_makes_the_order() {
        let (hub, _jobs) = hub();
        let (bob, alice, conv) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let conn = connection(&hub, bob);
        let info = private_chat(conv, alice, 2);
        hub.register(conn.clone(), info).await.expect("registered");
        let channel = hub.keys().user_channel(bob);
        // Messages 3 and 4 were published while the subscription was down.
        let wanted = hub.begin_catch_up(std::slice::from_ref(&channel));
        assert_eq!(wanted, vec![(channel.clone(), conv, 2)]);
        hub.finish_repair(
            &channel,
            conv,
            2,
            vec![
                private_message(4, alice, bob),
                private_message(3, alice, bob),
            ],
        );
        publish(&hub, &channel, conv, private_message(4, alice, bob));
        publish(&hub, &channel, conv, private_message(5, alice, bob));
        assert_eq!(seqs(&conn), vec![3, 4, 5], "in order, each once");
    }

    #[tokio::test]
    async fn a_private_chat_begun_while_connected_is_learned() {
        let (hub, _jobs) = hub();
        let (bob, carol, conv) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let conn = connection(&hub, bob);
        let none = UserConversations {
            conversations: Vec::new(),
            contacts: Vec::new(),
            blocked: Vec::new(),
        };
        hub.register(conn.clone(), none).await.expect("registered");
        let channel = hub.keys().user_channel(bob);
        publish(&hub, &channel, conv, private_message(1, carol, bob));
        assert_eq!(seqs(&conn), vec![1]);
        assert_eq!(
            hub.conversation_of(bob, ChatType::Private, carol),
            Some(conv)
        );
        assert_eq!(hub.contacts_of(bob), vec![carol]);
    }
}
