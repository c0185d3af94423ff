//! Every Redis key and channel name, in one place, under one prefix (`REDIS_PREFIX`).
//! Tests give each run its own prefix, so they never see one another's keys or messages.
//! (Pub/sub channels are shared across Redis databases, so the prefix matters for them too.)

use uuid::Uuid;

/// Builds key names under a prefix.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Pub/sub channel of a room's or group's conversation: its messages, edits, deletions and
    /// membership changes. One publish reaches every member on every gateway.
    pub fn conversation_channel(&self, conversation_id: Uuid) -> String {
        format!("{}conv:{}", self.prefix, conversation_id)
    }

    /// Pub/sub channel of one user: private-chat messages, acks, read positions, membership
    /// changes that concern the user, presence of the users they share a chat with.
    pub fn user_channel(&self, user_id: Uuid) -> String {
        format!("{}user:{}", self.prefix, user_id)
    }

    /// The Redis Stream through which gateways hand `send_message` commands to chat-service.
    pub fn send_stream(&self) -> String {
        format!("{}sends", self.prefix)
    }

    /// Send-stream entries that kept failing (`SEND_MAX_DELIVERIES`), moved out of the way with
    /// their fields as they were plus `entry`, `deliveries` and `consumer`. Nothing reads them
    /// automatically: an operator inspects them (`XRANGE`) and replays or deletes them.
    pub fn send_dead_letters(&self) -> String {
        format!("{}sends:dead", self.prefix)
    }

    /// The consumer group of chat-service workers on [`Keys::send_stream`].
    pub fn send_group(&self) -> &'static str {
        "chat-service"
    }

    /// Sorted set of online users: member = user id, score = when the entry expires (Unix ms).
    /// Gateways re-add their users every third of `PRESENCE_TTL_SECONDS` (default
    /// [`crate::presence::TTL_SECONDS`]) with an expiry that far ahead, so the users of a gateway
    /// that died drop out within that time; readers only count scores in the future.
    pub fn online_users(&self) -> String {
        format!("{}online", self.prefix)
    }

    /// Hash of one user's gateways: field = gateway node id, value = when that gateway's claim
    /// expires (Unix ms). A user is online while any claim is unexpired.
    pub fn presence_user(&self, user_id: Uuid) -> String {
        format!("{}presence:{}", self.prefix, user_id)
    }

    /// The send token bucket of one user, shared by all of their sockets and REST sends.
    pub fn send_rate(&self, user_id: Uuid) -> String {
        format!("{}rate:send:{}", self.prefix, user_id)
    }

    /// A fixed-window quota: `kind` (`rooms`, `groups`, `register`) for one subject (a user
    /// id or a client address).
    pub fn quota(&self, kind: &str, subject: &str) -> String {
        format!("{}quota:{}:{}", self.prefix, kind, subject)
    }

    /// Sorted set of one user's open sockets on every gateway: member = session id, score =
    /// when the entry expires (Unix ms), renewed by its gateway with presence, so the sockets
    /// of a gateway that died stop counting within `PRESENCE_TTL_SECONDS`.
    /// Sorted set of message ids waiting for the webhook notifier, scored by when each is due
    /// (Unix ms); a claimed one is scored at its lease's end.
    pub fn notify_queue(&self) -> String {
        format!("{}notify:due", self.prefix)
    }

    /// Hash: message id → notification attempts so far.
    pub fn notify_attempts(&self) -> String {
        format!("{}notify:attempts", self.prefix)
    }

    pub fn user_sockets(&self, user_id: Uuid) -> String {
        format!("{}sockets:{}", self.prefix, user_id)
    }

    /// Present for a second after a `read` event of `user` in `conversation` went out: the
    /// next one waits (at most one per reader per conversation per second).
    pub fn read_gate(&self, user: Uuid, conversation: Uuid) -> String {
        format!("{}readgate:{}:{}", self.prefix, user, conversation)
    }

    /// Sorted set of revoked logins and accounts (see [`crate::revocation`]).
    pub fn revocations(&self) -> String {
        format!("{}revoked", self.prefix)
    }

    /// A single-use WebSocket ticket (`POST /auth/ws-ticket`), by the SHA-256 of its text.
    pub fn ws_ticket(&self, ticket_hash: &str) -> String {
        format!("{}ticket:{}", self.prefix, ticket_hash)
    }

    /// Failed logins for one account (lower-cased username or email) in the current window.
    pub fn login_failures_account(&self, account: &str) -> String {
        format!("{}auth:fail:acct:{}", self.prefix, account.to_lowercase())
    }

    /// Failed logins from one client address in the current window.
    pub fn login_failures_address(&self, address: &str) -> String {
        format!("{}auth:fail:addr:{}", self.prefix, address)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_the_prefix() {
        let k = Keys::new("t1:");
        assert_eq!(k.login_failures_account("Alice"), "t1:auth:fail:acct:alice");
        assert_eq!(
            k.login_failures_address("127.0.0.1"),
            "t1:auth:fail:addr:127.0.0.1"
        );
    }
}
