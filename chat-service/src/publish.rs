//! Publishing events on Redis after a transaction commits. Each event is encoded once and sent
//! to as few channels as its audience needs: one per room or group whatever its size, one per
//! user for private chats and per-user events. A failed publish is logged and counted, never
//! undone: the data is committed, and gateways repair a missing `message` from history when the
//! next seq of that conversation arrives.

use std::{future::Future, sync::Arc};

use fred::prelude::*;
use shared::{
    chat::{encode, ChatType, Event, Message},
    keys::Keys,
};
use tokio::sync::{Mutex, OwnedMutexGuard};
use tracing::Instrument;
use uuid::Uuid;

#[derive(Clone)]
pub struct Publisher {
    redis: Client,
    keys: Keys,
    order: Arc<Mutex<()>>,
}

/// Held from just before a send's statement (a transaction of its own) until its events are
/// queued for publishing (on the one Redis connection, which keeps their order): within one
/// process, REST sends and the send workers then publish a conversation's messages in `seq`
/// order. Nothing waits for it while holding a row lock, so its holder may wait for one.
pub type PublishTurn = OwnedMutexGuard<()>;

impl Publisher {
    pub fn new(redis: Client, keys: Keys) -> Self {
        Self {
            redis,
            keys,
            order: Arc::new(Mutex::new(())),
        }
    }

    /// Waits for this process's turn to write and publish; see [`PublishTurn`].
    pub async fn turn(&self) -> PublishTurn {
        self.order.clone().lock_owned().await
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// The publishing connection: commands sent on it after a batch's publishes run after them.
    pub fn client(&self) -> &Client {
        &self.redis
    }

    /// Whether Redis is connected right now; writes that must publish check it first, so an
    /// outage is a clean 503 with nothing written.
    pub fn is_connected(&self) -> bool {
        self.redis.is_connected()
    }

    /// Sends `event` to every channel in `channels`.
    pub async fn publish(&self, channels: &[String], event: &Event) {
        let bytes = match encode(event) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %e, "could not encode an event");
                return;
            }
        };
        let events: Vec<(String, Vec<u8>)> = channels
            .iter()
            .map(|c| (c.clone(), bytes.clone()))
            .collect();
        self.publish_all(&events).await;
    }

    /// Sends many payloads, in order (so a conversation's messages reach Redis in `seq` order),
    /// without waiting for one answer before sending the next: every `PUBLISH` is handed to the
    /// client's one connection before any answer is awaited, so they leave pipelined, in order.
    pub async fn publish_all(&self, events: &[(String, Vec<u8>)]) {
        self.publish_all_then_release(events, None).await;
    }

    /// As [`Publisher::publish_all`], giving up `turn` as soon as every `PUBLISH` is queued on
    /// the connection, before the answers come back: the next holder's publishes queue behind
    /// these on the same connection, so the order on the wire (and so at Redis) is still the
    /// turn's order, and the next statement need not wait for this batch's round trip.
    pub async fn publish_all_then_release(
        &self,
        events: &[(String, Vec<u8>)],
        turn: Option<PublishTurn>,
    ) {
        let span = shared::telemetry::traced(None, || {
            tracing::info_span!(
                "redis.publish",
                otel.kind = "producer",
                messaging.system = "redis",
                channels = events.len(),
            )
        });
        // Instrumented futures poll their inner one on their own first poll: the order on the
        // wire is unchanged.
        self.publish_in_order(events, turn).instrument(span).await
    }

    async fn publish_in_order(&self, events: &[(String, Vec<u8>)], turn: Option<PublishTurn>) {
        // `join_all` polls the futures in order on its first pass, and each one queues its
        // command on its first poll: the order on the wire is the order of `events`.
        let mut sending = std::pin::pin!(futures_util::future::join_all(events.iter().map(
            |(channel, bytes)| { shared::redis::publish(&self.redis, channel, bytes.clone()) }
        )));
        let mut early = None;
        std::future::poll_fn(|cx| {
            if let std::task::Poll::Ready(done) = sending.as_mut().poll(cx) {
                early = Some(done);
            }
            std::task::Poll::Ready(())
        })
        .await;
        drop(turn);
        let sent = match early {
            Some(done) => done,
            None => sending.await,
        };
        for ((channel, _), result) in events.iter().zip(sent) {
            match result {
                Ok(_) => metrics::counter!("chat_events_published_total").increment(1),
                Err(e) => {
                    metrics::counter!("chat_event_publish_failures_total").increment(1);
                    tracing::warn!(error = %e, %channel, "could not publish an event");
                }
            }
        }
    }

    /// The channels that carry a message of `conversation_id` to its members.
    pub fn message_channels(&self, message: &Message, conversation_id: Uuid) -> Vec<String> {
        match message.chat_type {
            ChatType::Room | ChatType::Group => {
                vec![self.keys.conversation_channel(conversation_id)]
            }
            ChatType::Private => {
                let mut users = vec![self.keys.user_channel(message.from_user_id)];
                if let Some(to) = message.to_user_id {
                    users.push(self.keys.user_channel(to));
                }
                users
            }
        }
    }

    /// Publishes a new message to its members.
    pub async fn new_message(&self, message: &Message, conversation_id: Uuid) {
        let event = Event::Message {
            conversation_id,
            message: message.clone(),
            published_at_us: shared::chat::now_us(),
            traceparent: shared::telemetry::traceparent(&tracing::Span::current()),
        };
        self.message_event(message, conversation_id, event).await;
    }

    /// Publishes a message-related event (`message`, `message_edited`, `message_deleted`).
    pub async fn message_event(&self, message: &Message, conversation_id: Uuid, event: Event) {
        let channels = self.message_channels(message, conversation_id);
        self.publish(&channels, &event).await;
    }

    /// An event for one user's connections.
    pub async fn to_user(&self, user: Uuid, event: &Event) {
        self.publish(&[self.keys.user_channel(user)], event).await;
    }

    /// Tells a room's or group's members that its name (or a room's description) changed.
    pub async fn conversation_updated(
        &self,
        chat_type: ChatType,
        chat_id: Uuid,
        name: String,
        description: Option<String>,
        by: Uuid,
    ) {
        let event = Event::ConversationUpdated {
            chat_type,
            chat_id,
            name,
            description,
            by,
        };
        self.publish(&[self.keys.conversation_channel(chat_id)], &event)
            .await;
    }

    /// A membership change: to the conversation (its members see it) and to the user concerned
    /// (their gateways subscribe or unsubscribe).
    pub async fn membership(&self, conversation_id: Uuid, user: Uuid, event: &Event) {
        let channels = [
            self.keys.conversation_channel(conversation_id),
            self.keys.user_channel(user),
        ];
        self.publish(&channels, event).await;
    }
}
