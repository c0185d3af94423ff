//! chat-service settings. `.env.example` documents each variable.

use shared::config::{
    self, ConfigError, DatabaseConfig, JwtConfig, RedisConfig, ServerConfig, HOUR_MS,
};

use crate::worker::WorkerConfig;

/// Everything chat-service reads at start.
#[derive(Debug, Clone)]
pub struct ChatConfig {
    /// `HOST`, `PORT` (default 8002).
    pub server: ServerConfig,
    /// `DATABASE_URL`, `DATABASE_MAX_CONNECTIONS`.
    pub database: DatabaseConfig,
    /// `REDIS_URL`, `REDIS_PREFIX`.
    pub redis: RedisConfig,
    /// `SECRET_KEY`, `ACCESS_TOKEN_EXPIRE_MINUTES`: access tokens are verified locally.
    pub jwt: JwtConfig,
    /// `ALLOWED_ORIGINS`.
    pub allowed_origins: Vec<String>,
    /// `DEBUG`.
    pub debug: bool,
    /// `MAX_BODY_BYTES` (default 65536).
    pub max_body_bytes: usize,
    /// `MAX_CONTENT_CHARS`: the longest message (default 4000).
    pub max_content_chars: usize,
    /// `MAX_GROUP_MEMBERS`: the most members a group holds, its owner included (default
    /// 1000); larger audiences are rooms.
    pub max_group_members: usize,
    /// `MAX_ROOMS_PER_USER`: the most rooms one user belongs to (default 1000). Every upgrade of
    /// a user's sockets loads each of their conversations and subscribes to it.
    pub max_rooms_per_user: usize,
    /// `MAX_GROUPS_PER_USER`: the most groups one user belongs to (default 1000). Others add
    /// a user to groups, and every upgrade of the user's sockets loads each of them.
    pub max_groups_per_user: usize,
    /// `SEND_WORKER`: run the worker that persists WebSocket sends (default true).
    pub run_send_worker: bool,
    /// `AUTH_SERVICE_URL`: where auth-service's OpenAPI document is fetched for the combined one
    /// (default `http://127.0.0.1:8001`; empty turns it off).
    pub auth_service_url: Option<String>,
    /// `SEND_BATCH_SIZE` (default 256), `SEND_CLAIM_IDLE_MS` (default 30000),
    /// `SEND_PARTITIONS` (default 1), `SEND_LEASE_MS` (default 5000),
    /// `SEND_BATCH_INTERVAL_MS` (default 20, per partition) and `SEND_MAX_DELIVERIES`
    /// (default 10, at least 2).
    pub worker: WorkerConfig,
    /// `SEND_RATE_PER_SECOND`, `SEND_BURST`: each user's send rate, the bucket gateways share.
    pub send_rate: shared::limits::Rate,
    /// Creation quotas per user.
    pub quotas: Quotas,
    /// `SEARCH_RATE_PER_SECOND`, `SEARCH_BURST`, `SEARCH_MAX_IN_FLIGHT`.
    pub search: SearchLimits,
    /// `ACTION_RATE_PER_SECOND`, `ACTION_BURST`: each user's rate of the other writes that
    /// reach other people's sockets (see [`crate::api::acting`]; 10 a second, bursts of 40).
    pub action_rate: shared::limits::Rate,
    /// `ONLINE_USERS_RATE_PER_SECOND`, `ONLINE_USERS_BURST`: each user's reads of the whole
    /// `GET /chat/online-users` list (1 a second, bursts of 10). Each reads every online user,
    /// tens of thousands on a busy deployment; `?ids=` asks about a few and is not counted.
    pub online_list_rate: shared::limits::Rate,
    /// `LIST_RATE_PER_SECOND`, `LIST_BURST`: each user's reads, without `limit`, of the lists
    /// other people make long (every public room, every member of a room, every group of the
    /// caller with every member, every conversation of the caller; 2 a second, bursts of 20).
    /// Pages are not counted.
    pub list_rate: shared::limits::Rate,
    /// `INTERNAL_MAX_IN_FLIGHT`: gateways' internal calls served at once (default 64); past it,
    /// 503 at once (see [`shared::internal::InternalSlots`]).
    pub internal_max_in_flight: usize,
    /// `PRESENCE_MAX_CONTACTS`: the most users told when a user comes online or goes offline
    /// (default 5,000): those sharing the private chats and groups with the most recent
    /// activity. Each is a publish on every transition.
    pub presence_max_contacts: i64,
    /// `WEBHOOK_URL` and the rest: notifications for people who are away (off without it).
    pub webhook: Option<crate::notify::WebhookConfig>,
    /// `S3_*`, or `UPLOAD_DIR` and `PUBLIC_URL`: where attachments are stored.
    pub storage: shared::storage::StorageConfig,
    /// `MAX_UPLOAD_BYTES`, `ALLOWED_UPLOAD_TYPES` and the URLs' lives.
    pub uploads: shared::storage::UploadLimits,
}

/// Each user's changes that reach others, by default: 10 a second, bursts of 40 (a moderator
/// clearing a burst of spam, a quick run of reactions).
pub const DEFAULT_ACTION_RATE: shared::limits::Rate = shared::limits::Rate {
    per_second: 10,
    burst: 40,
};

/// Each user's whole reads of long lists, by default: 2 a second, bursts of 20 (a client
/// starting up reads a few; a loop over a room of 100,000 members would take a core).
pub const DEFAULT_LIST_RATE: shared::limits::Rate = shared::limits::Rate {
    per_second: 2,
    burst: 20,
};

/// The most contacts told of one user's presence, by default.
pub const DEFAULT_PRESENCE_MAX_CONTACTS: i64 = 5_000;

/// Each user's reads of the whole online list, by default: 1 a second, bursts of 10.
pub const DEFAULT_ONLINE_LIST_RATE: shared::limits::Rate = shared::limits::Rate {
    per_second: 1,
    burst: 10,
};

/// What searching may cost: each query can read thousands of rows, so one user's rate
/// (`SEARCH_RATE_PER_SECOND`, default 2, bursts of `SEARCH_BURST`, default 10: 429 past it)
/// and the searches one process runs at once (`SEARCH_MAX_IN_FLIGHT`, default 4: 503 `busy`
/// past it) are bounded, so searching never takes the database from sends and history.
#[derive(Debug, Clone, Copy)]
pub struct SearchLimits {
    pub rate: shared::limits::Rate,
    pub max_in_flight: usize,
}

impl Default for SearchLimits {
    fn default() -> Self {
        Self {
            rate: shared::limits::Rate {
                per_second: 2,
                burst: 10,
            },
            max_in_flight: 4,
        }
    }
}

impl SearchLimits {
    fn from_env() -> Result<Self, ConfigError> {
        let d = Self::default();
        let rate = config::rate("SEARCH_RATE_PER_SECOND", "SEARCH_BURST", d.rate)?;
        let max_in_flight = config::between("SEARCH_MAX_IN_FLIGHT", d.max_in_flight, 1, 100_000)?;
        Ok(Self {
            rate,
            max_in_flight,
        })
    }
}

/// How much one user may create (`ROOMS_PER_HOUR`, default 10; `GROUPS_PER_HOUR`, default 30),
/// so nobody can fill the database or other users' group lists.
#[derive(Debug, Clone, Copy)]
pub struct Quotas {
    pub rooms_per_hour: u32,
    pub groups_per_hour: u32,
    /// `UPLOADS_PER_HOUR` (default 200).
    pub uploads_per_hour: u32,
    /// `PRIVATE_CHATS_PER_HOUR` (default 100): private chats a user starts (see
    /// [`crate::conversation::NewPrivateChats`]).
    pub private_chats_per_hour: u32,
}

impl Default for Quotas {
    fn default() -> Self {
        Self {
            rooms_per_hour: 10,
            groups_per_hour: 30,
            uploads_per_hour: 200,
            private_chats_per_hour: 100,
        }
    }
}

impl ChatConfig {
    pub fn from_env() -> Result<Self, ConfigError> {
        let max_content_chars = config::between("MAX_CONTENT_CHARS", 4000usize, 1, 1_000_000)?;
        let batch_size = config::between("SEND_BATCH_SIZE", 256u64, 1, 100_000)?;
        let max_group_members = config::at_least("MAX_GROUP_MEMBERS", 1000usize, 2)?;
        Ok(Self {
            server: ServerConfig::from_env(8002, 75)?,
            database: DatabaseConfig::from_env()?,
            redis: RedisConfig::from_env()?,
            jwt: JwtConfig::from_env()?,
            allowed_origins: config::allowed_origins()?,
            debug: config::debug()?,
            max_body_bytes: config::between("MAX_BODY_BYTES", 64 * 1024, 1, 64 * 1024 * 1024)?,
            max_content_chars,
            max_group_members,
            max_rooms_per_user: config::parsed("MAX_ROOMS_PER_USER", 1000usize)?.max(1),
            max_groups_per_user: config::parsed("MAX_GROUPS_PER_USER", 1000usize)?.max(1),
            run_send_worker: config::flag("SEND_WORKER", true)?,
            auth_service_url: Some(config::string("AUTH_SERVICE_URL", "http://127.0.0.1:8001")?)
                .filter(|u| !u.is_empty()),
            worker: WorkerConfig {
                batch_size,
                claim_idle_ms: config::between("SEND_CLAIM_IDLE_MS", 30_000u64, 0, HOUR_MS)?,
                max_content_chars,
                partitions: config::send_partitions()?,
                lease: config::millis("SEND_LEASE_MS", 5_000, 300, HOUR_MS)?,
                batch_interval: batch_interval(config::parsed("SEND_BATCH_INTERVAL_MS", 20u64)?)?,
                max_deliveries: config::parsed::<u64>("SEND_MAX_DELIVERIES", 10)?.max(2),
            },
            send_rate: config::send_rate()?,
            search: SearchLimits::from_env()?,
            action_rate: config::rate(
                "ACTION_RATE_PER_SECOND",
                "ACTION_BURST",
                DEFAULT_ACTION_RATE,
            )?,
            online_list_rate: config::rate(
                "ONLINE_USERS_RATE_PER_SECOND",
                "ONLINE_USERS_BURST",
                DEFAULT_ONLINE_LIST_RATE,
            )?,
            list_rate: config::rate("LIST_RATE_PER_SECOND", "LIST_BURST", DEFAULT_LIST_RATE)?,
            internal_max_in_flight: config::between("INTERNAL_MAX_IN_FLIGHT", 64, 1, 100_000)?,
            presence_max_contacts: config::parsed::<i64>(
                "PRESENCE_MAX_CONTACTS",
                DEFAULT_PRESENCE_MAX_CONTACTS,
            )?
            .max(1),
            webhook: crate::notify::WebhookConfig::from_env()?,
            storage: shared::storage::StorageConfig::from_env()?,
            uploads: shared::storage::UploadLimits::from_env()?,
            quotas: Quotas {
                rooms_per_hour: config::parsed("ROOMS_PER_HOUR", Quotas::default().rooms_per_hour)?,
                groups_per_hour: config::parsed(
                    "GROUPS_PER_HOUR",
                    Quotas::default().groups_per_hour,
                )?,
                uploads_per_hour: config::parsed(
                    "UPLOADS_PER_HOUR",
                    Quotas::default().uploads_per_hour,
                )?,
                private_chats_per_hour: config::parsed(
                    "PRIVATE_CHATS_PER_HOUR",
                    Quotas::default().private_chats_per_hour,
                )?,
            },
        })
    }
}

/// The longest `SEND_BATCH_INTERVAL_MS`: beyond a second a loop would hold sends back for longer
/// than any client waits for an ack.
const MAX_BATCH_INTERVAL_MS: u64 = 1000;

fn batch_interval(ms: u64) -> Result<std::time::Duration, ConfigError> {
    if ms > MAX_BATCH_INTERVAL_MS {
        return Err(ConfigError::new(
            "SEND_BATCH_INTERVAL_MS",
            format!("is invalid ({ms}): must be at most {MAX_BATCH_INTERVAL_MS}"),
        ));
    }
    Ok(std::time::Duration::from_millis(ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_batch_interval_is_bounded() {
        assert_eq!(batch_interval(0).ok(), Some(std::time::Duration::ZERO));
        assert_eq!(
            batch_interval(1000).ok(),
            Some(std::time::Duration::from_secs(1))
        );
        let e = batch_interval(1001).err().map(|e| e.to_string());
        assert_eq!(
            e.as_deref(),
            Some("configuration error: SEND_BATCH_INTERVAL_MS is invalid (1001): must be at most 1000")
        );
    }
}
