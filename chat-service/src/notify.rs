//! Notifications for people who are away: with `WEBHOOK_URL` set, each stored message that
//! mentions someone, or is a private message, is queued, and a background loop POSTs
//! `{event: "message.notify", message, recipients}` for the members it concerns who have no
//! open socket.
//!
//! The queue is a Redis sorted set of message ids scored by when each is due. Sends only add to
//! it (after their events are published), so a slow or failing receiver never delays a send. A
//! loop claims due ids with a script that also pushes each one's score a lease ahead, so several
//! chat-service replicas share the queue and a replica that dies mid-delivery leaves its ids to
//! be retried when the lease ends. A failed delivery is due again after a back-off that doubles
//! from `WEBHOOK_RETRY_BASE_MS`; after `WEBHOOK_MAX_ATTEMPTS` it is dropped with an error log.
//! Recipients are worked out at each attempt: someone who came back online meanwhile is not
//! pushed, and a message deleted meanwhile is not sent at all. A member who muted the
//! conversation's notifications ([`crate::api::member_settings`]) is left out unless the message
//! names them.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fred::prelude::*;
use hmac::{Hmac, Mac};
use serde::Serialize;
use sha2::Sha256;
use shared::{
    chat::{ChatType, Message},
    config::{self, ConfigError},
    keys::Keys,
    lua::Script,
};
use sqlx::PgPool;
use tokio::sync::watch;
use uuid::Uuid;

use crate::model::MessageRow;

/// `WEBHOOK_URL`, `WEBHOOK_SECRET`, `WEBHOOK_MAX_ATTEMPTS`, `WEBHOOK_RETRY_BASE_MS`,
/// `WEBHOOK_TIMEOUT_MS`.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    pub url: String,
    pub secret: String,
    /// Deliveries tried per message before it is dropped (default 8).
    pub max_attempts: u32,
    /// The first retry's wait; each later one doubles it, up to ten minutes (default 1 s).
    pub retry_base: Duration,
    /// One POST's time limit (default 5 s).
    pub timeout: Duration,
}

impl WebhookConfig {
    /// `None` without `WEBHOOK_URL`. With it, `WEBHOOK_SECRET` must be at least 16 characters.
    pub fn from_env() -> Result<Option<Self>, ConfigError> {
        let url = config::http_url("WEBHOOK_URL", "")?;
        if url.is_empty() {
            return Ok(None);
        }
        let secret = config::string("WEBHOOK_SECRET", "")?;
        if secret.chars().count() < 16 {
            return Err(ConfigError::new(
                "WEBHOOK_SECRET",
                "is needed with WEBHOOK_URL: at least 16 characters",
            ));
        }
        Ok(Some(Self {
            url,
            secret,
            max_attempts: config::parsed::<u32>("WEBHOOK_MAX_ATTEMPTS", 8)?.max(1),
            retry_base: Duration::from_millis(config::parsed("WEBHOOK_RETRY_BASE_MS", 1000u64)?),
            timeout: Duration::from_millis(config::parsed("WEBHOOK_TIMEOUT_MS", 5000u64)?),
        }))
    }
}

/// Whether a stored message may need a push: it mentions someone or is private.
pub fn concerns_someone(m: &Message) -> bool {
    m.chat_type == ChatType::Private || m.mentions_all || !m.mentions.is_empty()
}

/// `sha256=HEX`: the HMAC-SHA256 of `body` under `secret`, as `X-ChatSphere-Signature` carries.
pub fn signature(secret: &str, body: &[u8]) -> String {
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret.as_bytes()) {
        Ok(mac) => mac,
        // HMAC takes a key of any length.
        Err(_) => return String::new(),
    };
    mac.update(body);
    let bytes = mac.finalize().into_bytes();
    let mut out = String::with_capacity(7 + bytes.len() * 2);
    out.push_str("sha256=");
    for b in bytes {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Queues messages for the notifier (one `ZADD`; `NX`, so a redelivered send is queued once).
/// Best effort: a failure is logged and counted, never the send's.
pub async fn enqueue(redis: &Client, keys: &Keys, messages: &[&Message]) {
    let due: Vec<(f64, String)> = messages
        .iter()
        .filter(|m| concerns_someone(m))
        .map(|m| (now_ms() as f64, m.id.to_string()))
        .collect();
    if due.is_empty() {
        return;
    }
    let count = due.len() as u64;
    let added: Result<i64, Error> = redis
        .zadd(
            keys.notify_queue(),
            Some(SetOptions::NX),
            None,
            false,
            false,
            due,
        )
        .await;
    match added {
        Ok(_) => metrics::counter!("chat_webhook_queued_total").increment(count),
        Err(e) => {
            metrics::counter!("chat_webhook_queue_failures_total").increment(count);
            tracing::warn!(error = %e, count, "could not queue notifications");
        }
    }
}

/// Takes up to ARGV[3] ids due by ARGV[1] and moves each one's score to ARGV[2] (its lease).
static CLAIM: Script = Script::new(
    r"
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[3])
for _, id in ipairs(due) do redis.call('ZADD', KEYS[1], 'XX', ARGV[2], id) end
return due
",
);

/// How long a claimed id stays with its claimer before anyone may take it again.
const LEASE: Duration = Duration::from_secs(60);
/// Ids claimed per round.
const CLAIM_COUNT: usize = 32;
/// The longest wait between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(600);

#[derive(Serialize)]
struct Payload<'a> {
    event: &'static str,
    message: &'a Message,
    recipients: &'a [Uuid],
}

/// What one attempt came to.
#[derive(Debug, PartialEq, Eq)]
enum Attempt {
    /// Delivered, or nothing to deliver (no one away, the message gone).
    Done,
    /// Try again later.
    Failed,
}

/// The background loop that delivers queued notifications.
pub struct Notifier {
    db: PgPool,
    redis: Client,
    keys: Keys,
    http: reqwest::Client,
    config: WebhookConfig,
}

impl Notifier {
    pub fn new(db: PgPool, redis: Client, keys: Keys, config: WebhookConfig) -> Self {
        let http = reqwest::Client::builder()
            .timeout(config.timeout)
            .build()
            .unwrap_or_default();
        Self {
            db,
            redis,
            keys,
            http,
            config,
        }
    }

    /// Runs until `shutdown` turns true.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        tracing::info!(url = %self.config.url, "webhook notifier running");
        while !*shutdown.borrow() {
            let claimed = match self.claim().await {
                Ok(ids) => ids,
                Err(e) => {
                    tracing::warn!(error = %e, "could not claim notifications");
                    Vec::new()
                }
            };
            let full = claimed.len() == CLAIM_COUNT;
            let deliveries = claimed.iter().map(|id| self.deliver(id));
            futures_util::future::join_all(deliveries).await;
            if !full {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                    _ = shutdown.changed() => {}
                }
            }
        }
    }

    async fn claim(&self) -> Result<Vec<String>, Error> {
        let now = now_ms();
        CLAIM
            .run(
                &self.redis,
                vec![self.keys.notify_queue()],
                vec![
                    now.to_string(),
                    (now + LEASE.as_millis() as i64).to_string(),
                    CLAIM_COUNT.to_string(),
                ],
            )
            .await
    }

    /// One attempt for one queued id, then its fate: removed, or due again after its back-off.
    async fn deliver(&self, id: &str) {
        let attempts_key = self.keys.notify_attempts();
        let attempt: i64 = match self.redis.hincrby(&attempts_key, id, 1).await {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "could not count a notification attempt");
                return;
            }
        };
        let outcome = match id.parse::<Uuid>() {
            Ok(message) => self.attempt(message, attempt).await,
            Err(_) => Attempt::Done,
        };
        let give_up = outcome == Attempt::Failed && attempt >= i64::from(self.config.max_attempts);
        let result: Result<(), Error> = if outcome == Attempt::Done || give_up {
            if give_up {
                metrics::counter!("chat_webhook_dropped_total").increment(1);
                tracing::error!(
                    message = id,
                    attempts = attempt,
                    "notification dropped after its last attempt"
                );
            }
            let pipe = self.redis.pipeline();
            let _: Result<(), Error> = pipe.zrem(self.keys.notify_queue(), id).await;
            let _: Result<(), Error> = pipe.hdel(&attempts_key, id).await;
            pipe.all().await
        } else {
            let wait = backoff(self.config.retry_base, attempt);
            let due = (now_ms() + wait.as_millis() as i64) as f64;
            self.redis
                .zadd(
                    self.keys.notify_queue(),
                    Some(SetOptions::XX),
                    None,
                    false,
                    false,
                    (due, id),
                )
                .await
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "could not settle a notification");
        }
    }

    async fn attempt(&self, id: Uuid, attempt: i64) -> Attempt {
        let (message, recipients) = match self.recipients(id).await {
            Ok(Some(found)) => found,
            Ok(None) => return Attempt::Done,
            Err(e) => {
                tracing::warn!(error = %e, "could not read a notification's message");
                return Attempt::Failed;
            }
        };
        if recipients.is_empty() {
            return Attempt::Done;
        }
        for chunk in recipients.chunks(1000) {
            let body = match serde_json::to_vec(&Payload {
                event: "message.notify",
                message: &message,
                recipients: chunk,
            }) {
                Ok(body) => body,
                Err(_) => return Attempt::Done,
            };
            let sent = self
                .http
                .post(&self.config.url)
                .header("content-type", "application/json")
                .header(
                    "x-chatsphere-signature",
                    signature(&self.config.secret, &body),
                )
                .header("x-chatsphere-delivery", id.to_string())
                .header("x-chatsphere-attempt", attempt.to_string())
                .body(body)
                .send()
                .await;
            match sent {
                Ok(r) if r.status().is_success() => {
                    metrics::counter!("chat_webhook_deliveries_total", "outcome" => "delivered")
                        .increment(1);
                }
                Ok(r) => {
                    metrics::counter!("chat_webhook_deliveries_total", "outcome" => "failed")
                        .increment(1);
                    tracing::warn!(status = %r.status(), attempt, "webhook receiver refused a notification");
                    return Attempt::Failed;
                }
                Err(e) => {
                    metrics::counter!("chat_webhook_deliveries_total", "outcome" => "failed")
                        .increment(1);
                    tracing::warn!(error = %e, attempt, "webhook receiver unreachable");
                    return Attempt::Failed;
                }
            }
        }
        Attempt::Done
    }

    /// The message (unless deleted since) and the members it concerns who have no open socket:
    /// the private chat's recipient, the members it mentions (everyone for `@room`/`@group`),
    /// never the sender, nor anyone who blocked the sender, nor anyone who muted the
    /// conversation's notifications (unless the message names them).
    async fn recipients(&self, id: Uuid) -> anyhow::Result<Option<(Message, Vec<Uuid>)>> {
        let Some(row) = sqlx::query_as!(
            MessageRow,
            "SELECT * FROM messages WHERE id = $1 AND NOT is_deleted",
            id
        )
        .fetch_optional(&self.db)
        .await?
        else {
            return Ok(None);
        };
        // Who the content names (`mentions` also lists everyone for `@room` in a small room):
        // naming someone passes their mute, `@room` does not.
        let conversation = row.conversation_id;
        let message = Message::try_from(row).map_err(|e| anyhow::anyhow!("{}", e.detail))?;
        let named: Vec<String> = crate::mentions::parse(&message.content, message.chat_type)
            .0
            .into_iter()
            .collect();
        let concerned = sqlx::query_scalar!(
            r#"SELECT m.user_id FROM conversation_members m JOIN users u ON u.id = m.user_id
               WHERE m.conversation_id = $1 AND m.user_id <> $2
                 AND ($3 OR m.user_id = ANY($4) OR m.user_id = $5)
                 AND NOT EXISTS (SELECT 1 FROM user_blocks b
                                 WHERE b.blocker_id = m.user_id AND b.blocked_id = $2)
                 AND ((m.user_id = ANY($4) AND lower(u.username) = ANY($6))
                      OR NOT EXISTS (SELECT 1 FROM notification_mutes n
                                     WHERE n.conversation_id = m.conversation_id
                                       AND n.user_id = m.user_id
                                       AND (n.until IS NULL OR n.until > now())))"#,
            conversation,
            message.from_user_id,
            message.mentions_all,
            &message.mentions,
            message.to_user_id,
            &named
        )
        .fetch_all(&self.db)
        .await?;
        let online = shared::presence::online_among(&self.redis, &self.keys, &concerned).await?;
        let away = concerned
            .into_iter()
            .zip(online)
            .filter_map(|(user, online)| (!online).then_some(user))
            .collect();
        Ok(Some((message, away)))
    }
}

/// The wait after failed attempt `attempt` (1-based): `base`, then doubling, at most ten
/// minutes.
fn backoff(base: Duration, attempt: i64) -> Duration {
    let doublings = u32::try_from(attempt.saturating_sub(1))
        .unwrap_or(0)
        .min(20);
    base.saturating_mul(1 << doublings).min(MAX_BACKOFF)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backoff_doubles_up_to_ten_minutes() {
        let base = Duration::from_secs(1);
        assert_eq!(backoff(base, 1), base);
        assert_eq!(backoff(base, 2), Duration::from_secs(2));
        assert_eq!(backoff(base, 4), Duration::from_secs(8));
        assert_eq!(backoff(base, 40), MAX_BACKOFF);
    }

    #[test]
    fn the_signature_is_hmac_sha256_in_hex() {
        // RFC 4231, test case 2.
        assert_eq!(
            signature("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
