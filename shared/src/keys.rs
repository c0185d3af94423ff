//! Every Redis key and channel name, in one place, under one prefix (`REDIS_PREFIX`).
//! Tests give each run its own prefix, so they never see one another's keys or messages.
//! (Pub/sub channels are shared across Redis databases, so the prefix matters for them too.)
//!
//! Every name carries a hash tag (the part in braces, which alone decides a Redis Cluster
//! slot), chosen so that the keys one command or script touches share a slot and everything
//! else spreads: a conversation's channel and a user's keys are tagged with their id, the
//! presence keys with one of [`PRESENCE_BUCKETS`] buckets (a user's claims and the online set
//! they are counted in are one script), the login throttle's two counters and the notifier's
//! queue with a fixed tag each. On a single Redis the tags mean nothing.

use uuid::Uuid;

/// The online set is split into this many sorted sets, each in its own slot with the presence
/// claims of its users (see [`Keys::online_bucket`]).
pub const PRESENCE_BUCKETS: u16 = 32;

/// The bucket of a user's presence keys.
pub fn presence_bucket(user: Uuid) -> u16 {
    let b = user.as_bytes();
    u16::from_be_bytes([b[14], b[15]]) % PRESENCE_BUCKETS
}

/// Builds key names under a prefix.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    /// Braces are left out of the prefix: one there would become every name's hash tag and
    /// put all of them in one cluster slot.
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into().replace(['{', '}'], ""),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Pub/sub channel of a room's or group's conversation: its messages, edits, deletions and
    /// membership changes. One publish reaches every member on every gateway.
    pub fn conversation_channel(&self, conversation_id: Uuid) -> String {
        format!("{}conv:{{{}}}", self.prefix, conversation_id)
    }

    /// Pub/sub channel of one user: private-chat messages, acks, read positions, membership
    /// changes that concern the user, presence of the users they share a chat with.
    pub fn user_channel(&self, user_id: Uuid) -> String {
        format!("{}user:{{{}}}", self.prefix, user_id)
    }

    /// Partition `partition` of the send stream: the Redis Stream through which gateways hand
    /// `send_message` commands of some conversations (see [`crate::chat::SendCommand::partition`])
    /// to the one chat-service replica holding its lease. Each partition is its own hash tag,
    /// so the partitions spread over a cluster's primaries.
    pub fn send_stream(&self, partition: u16) -> String {
        format!("{}{{sends:{}}}", self.prefix, partition)
    }

    /// Which chat-service replica persists partition `partition` (value: its id; expires unless
    /// renewed). Same slot as its stream.
    pub fn send_lease(&self, partition: u16) -> String {
        format!("{}{{sends:{}}}:lease", self.prefix, partition)
    }

    /// Sorted set of live chat-service replicas taking sends: member = replica id, score = when
    /// it counts as gone (Unix ms). Each replica holds about partitions / live replicas leases.
    pub fn send_replicas(&self) -> String {
        format!("{}{{sends}}:replicas", self.prefix)
    }

    /// Send-stream entries that kept failing (`SEND_MAX_DELIVERIES`), moved out of the way with
    /// their fields as they were plus `entry`, `deliveries` and `consumer`. Nothing reads them
    /// automatically: an operator inspects them (`XRANGE`) and replays or deletes them.
    pub fn send_dead_letters(&self) -> String {
        format!("{}{{sends}}:dead", self.prefix)
    }

    /// The consumer group of chat-service workers on [`Keys::send_stream`].
    pub fn send_group(&self) -> &'static str {
        "chat-service"
    }

    /// One of the [`PRESENCE_BUCKETS`] sorted sets of online users: member = user id, score =
    /// when the entry expires (Unix ms). Gateways re-add their users every third of
    /// `PRESENCE_TTL_SECONDS` (default [`crate::presence::TTL_SECONDS`]) with an expiry that far
    /// ahead, so the users of a gateway that died drop out within that time; readers only count
    /// scores in the future.
    pub fn online_bucket(&self, bucket: u16) -> String {
        format!("{}online:{{p{}}}", self.prefix, bucket)
    }

    /// The online set `user` is counted in.
    pub fn online_users(&self, user: Uuid) -> String {
        self.online_bucket(presence_bucket(user))
    }

    /// Hash of one user's gateways: field = gateway node id, value = when that gateway's claim
    /// expires (Unix ms). A user is online while any claim is unexpired. Same slot as
    /// [`Keys::online_users`] of the user.
    pub fn presence_user(&self, user_id: Uuid) -> String {
        format!(
            "{}presence:{{p{}}}:{}",
            self.prefix,
            presence_bucket(user_id),
            user_id
        )
    }

    /// The send token bucket of one user, shared by all of their sockets and REST sends.
    pub fn send_rate(&self, user_id: Uuid) -> String {
        format!("{}rate:send:{{{}}}", self.prefix, user_id)
    }

    /// The `sync` token bucket of one user, shared by all of their sockets on every gateway.
    pub fn sync_rate(&self, user_id: Uuid) -> String {
        format!("{}rate:sync:{{{}}}", self.prefix, user_id)
    }

    /// The bucket of one user's reads of the whole online list, shared by every chat-service
    /// replica.
    pub fn online_list_rate(&self, user_id: Uuid) -> String {
        format!("{}rate:online:{{{}}}", self.prefix, user_id)
    }

    /// The bucket of one user's whole reads of long lists (rooms, a room's members, groups),
    /// shared by every chat-service replica.
    pub fn list_rate(&self, user_id: Uuid) -> String {
        format!("{}rate:list:{{{}}}", self.prefix, user_id)
    }

    /// The bucket of one user's WebSocket tickets, shared by every auth-service replica.
    pub fn ticket_rate(&self, user_id: Uuid) -> String {
        format!("{}rate:ticket:{{{}}}", self.prefix, user_id)
    }

    /// The bucket of one user's WebSocket upgrades, shared by every gateway.
    pub fn connect_rate(&self, user_id: Uuid) -> String {
        format!("{}rate:connect:{{{}}}", self.prefix, user_id)
    }

    /// The bucket of password checks for one account (a user id, or the name typed for an
    /// unknown one), shared by every auth-service replica.
    pub fn login_rate(&self, account: &str) -> String {
        format!("{}rate:login:{{{}}}", self.prefix, account)
    }

    /// The `typing` token bucket of one user, shared by all of their sockets on every gateway.
    pub fn typing_rate(&self, user_id: Uuid) -> String {
        format!("{}rate:typing:{{{}}}", self.prefix, user_id)
    }

    /// The search token bucket of one user, shared by every chat-service replica.
    pub fn search_rate(&self, user_id: Uuid) -> String {
        format!("{}rate:search:{{{}}}", self.prefix, user_id)
    }

    /// The bucket of one user's actions that reach other people (edits, deletes, reactions,
    /// pins, joins and leaves, group membership, moderation), shared by every chat-service
    /// replica.
    pub fn action_rate(&self, user_id: Uuid) -> String {
        format!("{}rate:action:{{{}}}", self.prefix, user_id)
    }

    /// A fixed-window quota: `kind` (`rooms`, `groups`, `register`) for one subject (a user
    /// id or a client address).
    pub fn quota(&self, kind: &str, subject: &str) -> String {
        format!("{}quota:{}:{{{}}}", self.prefix, kind, subject)
    }

    /// Sorted set of message ids waiting for the webhook notifier, scored by when each is due
    /// (Unix ms); a claimed one is scored at its lease's end.
    pub fn notify_queue(&self) -> String {
        format!("{}{{notify}}:due", self.prefix)
    }

    /// Hash: message id → notification attempts so far.
    pub fn notify_attempts(&self) -> String {
        format!("{}{{notify}}:attempts", self.prefix)
    }

    /// Sorted set of one user's open sockets on every gateway: member = session id, score =
    /// when the entry expires (Unix ms), renewed by its gateway with presence, so the sockets
    /// of a gateway that died stop counting within `PRESENCE_TTL_SECONDS`.
    pub fn user_sockets(&self, user_id: Uuid) -> String {
        format!("{}sockets:{{{}}}", self.prefix, user_id)
    }

    /// Present for a second after a `read` event of `user` in `conversation` went out: the
    /// next one waits (at most one per reader per conversation per second).
    pub fn read_gate(&self, user: Uuid, conversation: Uuid) -> String {
        format!("{}readgate:{{{}}}:{}", self.prefix, user, conversation)
    }

    /// Sorted set of revoked logins and accounts (see [`crate::revocation`]).
    pub fn revocations(&self) -> String {
        format!("{}{{revoked}}", self.prefix)
    }

    /// Pub/sub channel on which every revocation is announced as it is recorded (its members,
    /// one a line): every process listens, so none waits for its next poll. Tagged as the set
    /// is, so on a cluster both live in one slot.
    pub fn revocations_channel(&self) -> String {
        format!("{}{{revoked}}:live", self.prefix)
    }

    /// A single-use WebSocket ticket (`POST /auth/ws-ticket`), by the SHA-256 of its text.
    pub fn ws_ticket(&self, ticket_hash: &str) -> String {
        format!("{}ticket:{{{}}}", self.prefix, ticket_hash)
    }

    /// Failed logins for one account (lower-cased username or email) in the current window.
    /// The throttle checks it and [`Keys::login_failures_address`] in one script, so both share
    /// one tag (one slot for every login counter: logins are few).
    pub fn login_failures_account(&self, account: &str) -> String {
        format!(
            "{}{{auth}}:fail:acct:{}",
            self.prefix,
            account.to_lowercase()
        )
    }

    /// Failed logins from one client address in the current window.
    pub fn login_failures_address(&self, address: &str) -> String {
        format!("{}{{auth}}:fail:addr:{}", self.prefix, address)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_the_prefix() {
        let k = Keys::new("t1:");
        assert_eq!(
            k.login_failures_account("Alice"),
            "t1:{auth}:fail:acct:alice"
        );
        assert_eq!(
            k.login_failures_address("127.0.0.1"),
            "t1:{auth}:fail:addr:127.0.0.1"
        );
    }

    fn slot(key: &str) -> u16 {
        fred::util::redis_keyslot(key.as_bytes())
    }

    #[test]
    fn keys_used_together_share_a_slot() {
        let k = Keys::new("t{1}:");
        assert_eq!(k.prefix(), "t1:", "braces are left out of the prefix");
        for _ in 0..50 {
            let user = Uuid::new_v4();
            assert_eq!(slot(&k.presence_user(user)), slot(&k.online_users(user)));
        }
        assert_eq!(
            slot(&k.login_failures_account("a")),
            slot(&k.login_failures_address("::1"))
        );
        assert_eq!(slot(&k.notify_queue()), slot(&k.notify_attempts()));
        assert_eq!(slot(&k.send_stream(3)), slot(&k.send_lease(3)));
        assert_ne!(slot(&k.send_stream(0)), slot(&k.send_stream(1)));
    }

    #[test]
    fn channels_and_user_keys_spread_over_slots() {
        let k = Keys::new("t1:");
        let slots: std::collections::HashSet<u16> = (0..200)
            .map(|_| slot(&k.conversation_channel(Uuid::new_v4())))
            .collect();
        assert!(slots.len() > 180, "{} distinct slots", slots.len());
        // A user's keys live in the user's slot, wherever the prefix puts them.
        let user = Uuid::new_v4();
        assert_eq!(slot(&k.user_channel(user)), slot(&k.send_rate(user)));
        assert_eq!(slot(&k.user_channel(user)), slot(&k.user_sockets(user)));
        let buckets: std::collections::HashSet<u16> = (0..PRESENCE_BUCKETS)
            .map(|b| slot(&k.online_bucket(b)))
            .collect();
        assert_eq!(buckets.len(), usize::from(PRESENCE_BUCKETS));
    }
}
