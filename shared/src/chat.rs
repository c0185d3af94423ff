//! The chat wire types both sides speak: the message object of the contract, the events
//! chat-service publishes on Redis (MessagePack), and the send command gateways hand to
//! chat-service. One enum for the events, so the publisher and the gateway cannot drift apart.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

/// The largest `seq` a client may send, exclusive: 2^53, the integers every JSON parser keeps
/// exact (contract, "WebSocket limits and closing"). REST parameters and bodies take the same
/// range, so a position is valid or not whichever way it arrives.
pub const SEQ_LIMIT: i64 = 1 << 53;

/// Whether a client's `seq` is in range: 0 ≤ seq < 2^53.
pub fn is_client_seq(seq: i64) -> bool {
    (0..SEQ_LIMIT).contains(&seq)
}

/// What a client is told when its `seq` is out of range.
pub const SEQ_RANGE: &str = "must be a whole number from 0 to 2^53 - 1";

/// `room`, `private` or `group` on the wire; `ROOM`, `PRIVATE`, `GROUP` in the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ChatType {
    Room,
    Private,
    Group,
}

impl ChatType {
    pub fn as_db(self) -> &'static str {
        match self {
            ChatType::Room => "ROOM",
            ChatType::Private => "PRIVATE",
            ChatType::Group => "GROUP",
        }
    }

    pub fn from_db(s: &str) -> Option<Self> {
        match s {
            "ROOM" => Some(ChatType::Room),
            "PRIVATE" => Some(ChatType::Private),
            "GROUP" => Some(ChatType::Group),
            _ => None,
        }
    }
}

impl std::str::FromStr for ChatType {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "room" => Ok(ChatType::Room),
            "private" => Ok(ChatType::Private),
            "group" => Ok(ChatType::Group),
            _ => Err("must be room, private or group".into()),
        }
    }
}

/// `text`; `image` (an uploaded image in `attachment`, or else an http(s) URL in `content`);
/// `file` (an uploaded file in `attachment`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum MessageType {
    #[default]
    Text,
    Image,
    File,
}

impl MessageType {
    pub fn as_db(self) -> &'static str {
        match self {
            MessageType::Text => "TEXT",
            MessageType::Image => "IMAGE",
            MessageType::File => "FILE",
        }
    }

    pub fn from_db(s: &str) -> Option<Self> {
        match s {
            "TEXT" => Some(MessageType::Text),
            "IMAGE" => Some(MessageType::Image),
            "FILE" => Some(MessageType::File),
            _ => None,
        }
    }
}

/// The message object of the contract.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Message {
    pub id: Uuid,
    /// Counts up by one per conversation, with no gaps, in commit order.
    pub seq: i64,
    pub chat_type: ChatType,
    pub from_user_id: Uuid,
    /// Private chats: the recipient.
    pub to_user_id: Option<Uuid>,
    pub room_id: Option<Uuid>,
    pub group_id: Option<Uuid>,
    /// Empty once deleted.
    pub content: String,
    pub message_type: MessageType,
    pub reply_to_id: Option<Uuid>,
    pub client_id: Option<String>,
    pub is_edited: bool,
    pub is_deleted: bool,
    pub created_at: DateTime<Utc>,
    pub edited_at: Option<DateTime<Utc>>,
    /// Reactions, in the order they were first given. `me` is the reader's own: it is filled
    /// in where the message is read (history, sync, pins); live events carry none (a new
    /// message has none; changes arrive as `reaction` events).
    #[serde(default)]
    pub reactions: Vec<Reaction>,
    /// Members named `@username` in the content, resolved when it was stored (or edited); with
    /// `@room` / `@group`, every member too while the conversation has at most 50 (beyond,
    /// `mentions_all` alone says it).
    #[serde(default)]
    pub mentions: Vec<Uuid>,
    /// Whether `@room` (in a room) or `@group` (in a group) named every member.
    #[serde(default)]
    pub mentions_all: bool,
    /// The uploaded file of a `file` or `image` message (`content` is then its caption).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attachment: Option<Attachment>,
}

impl Attachment {
    /// An attachment known by its id only, until its details are loaded.
    pub fn unloaded(id: Uuid) -> Self {
        Self {
            id,
            filename: String::new(),
            content_type: String::new(),
            size: 0,
            width: None,
            height: None,
        }
    }
}

/// A user as other users see it (the contract's user object, without email): in member and
/// online lists, and in `user_updated` events.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct UserSummary {
    pub id: Uuid,
    pub username: String,
    pub display_name: String,
    pub avatar_url: Option<String>,
    pub is_active: bool,
    pub created_at: DateTime<Utc>,
    pub last_seen: Option<DateTime<Utc>>,
}

/// An uploaded file attached to a message. Download it at `GET /chat/attachments/{id}` (and
/// an image's thumbnail at `.../thumbnail`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Attachment {
    pub id: Uuid,
    pub filename: String,
    pub content_type: String,
    pub size: i64,
    /// Images, once their thumbnail is made (shortly after the send).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub width: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub height: Option<i32>,
}

/// One emoji's reactions on a message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Reaction {
    pub emoji: String,
    pub count: i64,
    /// Whether the reader is among them.
    pub me: bool,
}

impl Message {
    /// About how many bytes the message's JSON takes: its fixed fields (ids, times, names),
    /// its content, mentions, reactions and attachment. An estimate for budgets, never less
    /// than the encoding by more than the escapes in its strings.
    pub fn approx_encoded_len(&self) -> usize {
        const FIXED: usize = 520;
        FIXED
            + self.content.len()
            + self.client_id.as_ref().map_or(0, String::len)
            + self.mentions.len() * 39
            + self
                .reactions
                .iter()
                .map(|r| r.emoji.len() + 40)
                .sum::<usize>()
            + self
                .attachment
                .as_ref()
                .map_or(0, |a| a.filename.len() + a.content_type.len() + 140)
    }

    /// The conversation's `chat_id` as `viewer` sees it: the room or group id, or for a
    /// private chat the other user's id.
    pub fn chat_id_for(&self, viewer: Uuid) -> Option<Uuid> {
        match self.chat_type {
            ChatType::Room => self.room_id,
            ChatType::Group => self.group_id,
            ChatType::Private => {
                if viewer == self.from_user_id {
                    self.to_user_id
                } else {
                    Some(self.from_user_id)
                }
            }
        }
    }
}

/// What happened to a membership.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum MembershipAction {
    Joined,
    Left,
    Added,
    Removed,
    /// Removed from a room by a moderator and refused re-joining until the ban ends.
    Banned,
    Unbanned,
    /// A room member's sends are refused until `until`.
    Muted,
    Unmuted,
    /// Made a room moderator (by the owner).
    Promoted,
    Demoted,
}

impl MembershipAction {
    /// Its name on the wire (and in the room audit log).
    pub fn name(self) -> &'static str {
        match self {
            Self::Joined => "joined",
            Self::Left => "left",
            Self::Added => "added",
            Self::Removed => "removed",
            Self::Banned => "banned",
            Self::Unbanned => "unbanned",
            Self::Muted => "muted",
            Self::Unmuted => "unmuted",
            Self::Promoted => "promoted",
            Self::Demoted => "demoted",
        }
    }

    /// Whether the user is no longer a member afterwards (their gateways unsubscribe).
    pub fn ends_membership(self) -> bool {
        matches!(self, Self::Left | Self::Removed | Self::Banned)
    }

    /// Whether the user is a member afterwards who was not before (their gateways subscribe).
    pub fn begins_membership(self) -> bool {
        matches!(self, Self::Joined | Self::Added)
    }
}

/// Events chat-service publishes after its transaction commits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data", rename_all = "snake_case")]
pub enum Event {
    /// A new message. `conversation_id` lets gateways order, deduplicate and repair per
    /// conversation without knowing how chat ids map to conversations.
    Message {
        conversation_id: Uuid,
        message: Message,
        /// When chat-service published it (Unix microseconds), for the fan-out latency metric.
        #[serde(default)]
        published_at_us: i64,
        /// The trace the send belongs to, when chat-service traces ([`crate::telemetry`]).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        traceparent: Option<String>,
    },
    /// An edited message.
    MessageEdited {
        conversation_id: Uuid,
        message: Message,
    },
    /// A deleted message (it stays in history, emptied).
    MessageDeleted {
        id: Uuid,
        seq: i64,
        chat_type: ChatType,
        conversation_id: Uuid,
        from_user_id: Uuid,
        to_user_id: Option<Uuid>,
    },
    /// Someone joined, left, was added to or removed from a room or group, or a moderator
    /// acted on them.
    Membership {
        chat_type: ChatType,
        /// The room or group id (its conversation id too).
        chat_id: Uuid,
        user_id: Uuid,
        action: MembershipAction,
        /// Who acted, when it was someone else (an owner or moderator).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        by: Option<Uuid>,
        /// When a ban or mute ends (`None`: a ban without end).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        until: Option<DateTime<Utc>>,
    },
    /// `user_id` has read `conversation_id` up to `seq`. For a private chat `peer_id` is the
    /// other user, so each side can be shown its own `chat_id`.
    Read {
        user_id: Uuid,
        chat_type: ChatType,
        conversation_id: Uuid,
        peer_id: Option<Uuid>,
        seq: i64,
        /// The connection whose `mark_read` this is (its `session_id`), which is not told:
        /// the contract's "the reader's other connections".
        #[serde(default, skip_serializing_if = "Option::is_none")]
        session: Option<String>,
    },
    /// Someone is typing; ephemeral, published by gateways, never stored. Rooms and groups:
    /// on the conversation channel; private chats: on the peer's user channel.
    Typing {
        user_id: Uuid,
        chat_type: ChatType,
        conversation_id: Uuid,
        /// The room or group id; for a private chat, the typist (the peer's `chat_id`).
        chat_id: Uuid,
    },
    /// A user came online (first connection anywhere) or went offline (last one closed).
    Presence { user_id: Uuid, online: bool },
    /// A send from the bus was persisted: for the sending connection only.
    Ack {
        session_id: String,
        client_id: String,
        message: Message,
        /// As for [`Event::Message`].
        #[serde(default, skip_serializing_if = "Option::is_none")]
        traceparent: Option<String>,
    },
    /// A send from the bus was refused: for the sending connection only.
    SendFailed {
        session_id: String,
        client_id: String,
        code: String,
        detail: String,
        /// With `rate_limited`: how long until the send can succeed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_after_ms: Option<u64>,
    },
    /// A message was pinned or unpinned. Rooms and groups: on the conversation channel;
    /// private chats: on both users' channels (`from_user_id`, `to_user_id` give each side its
    /// `chat_id`).
    Pin {
        message_id: Uuid,
        chat_type: ChatType,
        conversation_id: Uuid,
        from_user_id: Uuid,
        to_user_id: Option<Uuid>,
        seq: i64,
        pinned: bool,
        by: Uuid,
    },
    /// `user_id` added or removed the reaction `emoji` on a message. Routed like [`Event::Pin`].
    Reaction {
        message_id: Uuid,
        chat_type: ChatType,
        conversation_id: Uuid,
        from_user_id: Uuid,
        to_user_id: Option<Uuid>,
        seq: i64,
        user_id: Uuid,
        emoji: String,
        added: bool,
    },
    /// A room's name or description, or a group's name, was changed (by its owner): on the
    /// conversation channel.
    ConversationUpdated {
        chat_type: ChatType,
        /// The room or group id (its conversation id too).
        chat_id: Uuid,
        name: String,
        /// A room's description (`None`: none); groups have none.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        description: Option<String>,
        by: Uuid,
    },
    /// `user_id` blocked (or unblocked) `blocked_id`: on the blocker's channel, so their
    /// gateways stop (or resume) passing on the other's typing and presence.
    Block {
        user_id: Uuid,
        blocked_id: Uuid,
        blocked: bool,
    },
    /// `user_id` changed their own settings for a conversation (its notifications muted, or
    /// archived): on the user's channel, so every device of theirs shows the settings as they
    /// now are. `chat_id` is the user's own (for a private chat, the other user).
    ConversationSettings {
        user_id: Uuid,
        chat_type: ChatType,
        chat_id: Uuid,
        notifications_muted: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        notifications_muted_until: Option<DateTime<Utc>>,
        archived: bool,
    },
    /// A user changed their display name or avatar: on the channel of every room and group
    /// they are in, their private chats' peers' channels and their own, so whoever shows their
    /// name shows the new one. Published by chat-service when auth-service tells it.
    UserUpdated(UserSummary),
    /// A login (`sid`) or, without one, every login of `user_id` was revoked: their sockets
    /// close with 4001. Published on the user's channel by auth-service.
    Revoked { user_id: Uuid, sid: Option<Uuid> },
    /// Several events for one channel, in order, in one publish: the send worker publishes a
    /// batch's events this way (one `PUBLISH` per channel per batch, not one per event).
    /// Batches are not nested.
    Batch(Vec<Event>),
}

/// Groups `(channel, event)` pairs into one payload per channel: the channel's events in their
/// order, as a [`Event::Batch`] when there are several. Channels come in order of first use.
pub fn batch_by_channel(
    events: Vec<(String, Event)>,
) -> Result<Vec<(String, Vec<u8>)>, rmp_serde::encode::Error> {
    let mut order: Vec<String> = Vec::new();
    let mut grouped: std::collections::HashMap<String, Vec<Event>> =
        std::collections::HashMap::new();
    for (channel, event) in events {
        let list = grouped.entry(channel.clone()).or_default();
        if list.is_empty() {
            order.push(channel);
        }
        list.push(event);
    }
    order
        .into_iter()
        .filter_map(|channel| {
            let mut list = grouped.remove(&channel)?;
            let encoded = if list.len() == 1 {
                encode(&list.pop()?)
            } else {
                encode(&Event::Batch(list))
            };
            Some(encoded.map(|bytes| (channel, bytes)))
        })
        .collect()
}

/// Now, in Unix microseconds.
pub fn now_us() -> i64 {
    // Read straight from the system clock: it runs for every frame a gateway writes, and
    // `Utc::now()` also works out the calendar date, which nothing here needs.
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

/// The field of a send-stream entry that holds one MessagePack-encoded [`SendCommand`].
pub const SEND_FIELD: &str = "c";
/// The field of a send-stream entry that holds a MessagePack array of [`SendCommand`]s: the
/// sends a gateway gathered while its previous `XADD` was under way, in the order they came.
pub const SEND_BATCH_FIELD: &str = "b";

/// A `send_message` a gateway hands to chat-service through the send stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SendCommand {
    pub user_id: Uuid,
    /// The sending connection, so the `ack` reaches it alone.
    pub session_id: String,
    /// The client's id for this send; the gateway makes one up when the client gave none, so a
    /// redelivered command is recognised and never stored twice.
    pub client_id: String,
    pub chat_type: ChatType,
    pub chat_id: Uuid,
    pub content: String,
    #[serde(default)]
    pub message_type: MessageType,
    pub reply_to_id: Option<Uuid>,
    /// An upload of the sender's, for a `file` or `image` message.
    #[serde(default)]
    pub attachment_id: Option<Uuid>,
    /// The W3C trace context of the frame that sent it, when the gateway traces
    /// ([`crate::telemetry`]): chat-service continues that trace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}

impl SendCommand {
    /// The send-stream partition of the command's conversation, out of `partitions`: a room's
    /// or group's from its id, a private chat's from its two users (either direction gives the
    /// same one). A conversation's sends all go through one partition, so one writer persists
    /// them, in the order they were appended.
    pub fn partition(&self, partitions: u16) -> u16 {
        let key = match self.chat_type {
            ChatType::Private => self.user_id.as_u64_pair().1 ^ self.chat_id.as_u64_pair().1,
            _ => self.chat_id.as_u64_pair().1,
        };
        // The low halves are random in v4 and v7 ids; a multiplicative mix spreads the rest.
        let mixed = key.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32;
        (mixed % u64::from(partitions.max(1))) as u16
    }
}

/// MessagePack with field names, so either side can add optional fields without breaking the other.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, rmp_serde::encode::Error> {
    rmp_serde::to_vec_named(value)
}

pub fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, rmp_serde::decode::Error> {
    rmp_serde::from_slice(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn now_is_read_in_unix_microseconds() {
        let calendar = Utc::now().timestamp_micros();
        let now = now_us();
        assert!(
            (now - calendar).abs() < 1_000_000,
            "{now} µs against the calendar's {calendar}"
        );
    }

    fn send(user: Uuid, chat_type: ChatType, chat_id: Uuid) -> SendCommand {
        SendCommand {
            user_id: user,
            session_id: "s".into(),
            client_id: "c".into(),
            chat_type,
            chat_id,
            content: "hi".into(),
            message_type: MessageType::Text,
            reply_to_id: None,
            attachment_id: None,
            traceparent: None,
        }
    }

    #[test]
    fn the_trace_context_is_optional_both_ways() {
        // A command of a gateway that does not trace (or predates tracing) has no field.
        #[derive(Serialize, Deserialize)]
        struct Untraced {
            user_id: Uuid,
            session_id: String,
            client_id: String,
            chat_type: ChatType,
            chat_id: Uuid,
            content: String,
            reply_to_id: Option<Uuid>,
        }
        let mut traced = send(Uuid::new_v4(), ChatType::Room, Uuid::new_v4());
        let untraced = encode(&traced).unwrap();
        assert!(!untraced.windows(11).any(|w| w == b"traceparent"));
        assert_eq!(decode::<SendCommand>(&untraced).unwrap().traceparent, None);
        traced.traceparent = Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into());
        let bytes = encode(&traced).unwrap();
        assert_eq!(
            decode::<SendCommand>(&bytes).unwrap().traceparent,
            traced.traceparent
        );
        // A consumer that knows nothing of traces still reads it.
        assert_eq!(decode::<Untraced>(&bytes).unwrap().content, "hi");
    }

    #[test]
    fn a_conversation_has_one_partition_and_conversations_spread() {
        let (a, b, room) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        assert_eq!(
            send(a, ChatType::Private, b).partition(8),
            send(b, ChatType::Private, a).partition(8),
            "both directions of a private chat"
        );
        assert_eq!(
            send(a, ChatType::Room, room).partition(8),
            send(b, ChatType::Room, room).partition(8),
            "every sender of a room"
        );
        let mut counts = [0u32; 8];
        for _ in 0..8_000 {
            counts[usize::from(send(a, ChatType::Room, Uuid::now_v7()).partition(8))] += 1;
        }
        assert!(
            counts.iter().all(|&n| (800..1200).contains(&n)),
            "{counts:?}"
        );
        assert_eq!(send(a, ChatType::Group, room).partition(1), 0);
    }

    fn message() -> Message {
        Message {
            id: Uuid::new_v4(),
            seq: 7,
            chat_type: ChatType::Private,
            from_user_id: Uuid::new_v4(),
            to_user_id: Some(Uuid::new_v4()),
            room_id: None,
            group_id: None,
            content: "hi".into(),
            message_type: MessageType::Text,
            reply_to_id: None,
            client_id: Some("c1".into()),
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

    #[test]
    fn events_are_batched_per_channel_in_order() {
        let m = message();
        let ack = |c: &str| Event::Ack {
            session_id: "s".into(),
            client_id: c.into(),
            message: m.clone(),
            traceparent: None,
        };
        let presence = Event::Presence {
            user_id: m.from_user_id,
            online: true,
        };
        let out = batch_by_channel(vec![
            ("a".into(), ack("1")),
            ("b".into(), presence.clone()),
            ("a".into(), ack("2")),
        ])
        .unwrap();
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].0, "a");
        assert_eq!(
            decode::<Event>(&out[0].1).unwrap(),
            Event::Batch(vec![ack("1"), ack("2")])
        );
        assert_eq!(out[1].0, "b");
        assert_eq!(
            decode::<Event>(&out[1].1).unwrap(),
            presence,
            "one event is sent alone"
        );
    }

    #[test]
    fn membership_action_names_are_the_wire_names() {
        use MembershipAction::*;
        for a in [
            Joined, Left, Added, Removed, Banned, Unbanned, Muted, Unmuted, Promoted, Demoted,
        ] {
            assert_eq!(serde_json::to_value(a).unwrap(), a.name());
        }
    }

    #[test]
    fn events_round_trip_through_messagepack() {
        let m = message();
        for event in [
            Event::Message {
                conversation_id: Uuid::new_v4(),
                message: m.clone(),
                published_at_us: 1,
                traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
            },
            Event::Ack {
                session_id: "s".into(),
                client_id: "c1".into(),
                message: m.clone(),
                traceparent: None,
            },
            Event::Membership {
                chat_type: ChatType::Room,
                chat_id: Uuid::new_v4(),
                user_id: Uuid::new_v4(),
                action: MembershipAction::Joined,
                by: None,
                until: None,
            },
            Event::Membership {
                chat_type: ChatType::Room,
                chat_id: Uuid::new_v4(),
                user_id: Uuid::new_v4(),
                action: MembershipAction::Muted,
                by: Some(Uuid::new_v4()),
                until: Some(m.created_at),
            },
        ] {
            let bytes = encode(&event).unwrap();
            assert_eq!(decode::<Event>(&bytes).unwrap(), event);
        }
        assert!(decode::<Event>(b"\x01\x02").is_err());
    }

    #[test]
    fn private_chat_ids_are_seen_from_the_viewer() {
        let m = message();
        assert_eq!(m.chat_id_for(m.from_user_id), m.to_user_id);
        assert_eq!(m.chat_id_for(m.to_user_id.unwrap()), Some(m.from_user_id));
    }
}
