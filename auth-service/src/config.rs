//! auth-service settings. `.env.example` documents each variable.

use shared::config::{
    self, ConfigError, DatabaseConfig, JwtConfig, RedisConfig, ServerConfig, HOUR_MS,
};

/// Everything auth-service reads at start.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// `HOST`, `PORT` (default 8001).
    pub server: ServerConfig,
    /// `DATABASE_URL`, `DATABASE_MAX_CONNECTIONS`.
    pub database: DatabaseConfig,
    /// `REDIS_URL`, `REDIS_PREFIX`.
    pub redis: RedisConfig,
    /// `SECRET_KEY`, `ACCESS_TOKEN_EXPIRE_MINUTES`.
    pub jwt: JwtConfig,
    /// `ALLOWED_ORIGINS`: browser origins allowed by CORS.
    pub allowed_origins: Vec<String>,
    /// `DEBUG`: human-readable logs.
    pub debug: bool,
    /// `MAX_BODY_BYTES`: the largest request body (default 65536).
    pub max_body_bytes: usize,
    /// `REFRESH_TOKEN_EXPIRE_DAYS`: a refresh token's life; each rotation starts a new one (default 30).
    pub refresh_token_expire_days: u32,
    /// `ARGON2_MAX_CONCURRENCY`: password hashes computed at once (default: the number of CPUs).
    /// Each takes 19 MiB and one core for ~50 ms.
    pub argon2_max_concurrency: usize,
    /// `ARGON2_QUEUE_TIMEOUT_MS`: how long a login waits for a hashing slot before 503 (default 5000).
    pub argon2_queue_timeout_ms: u64,
    /// `LOGIN_MAX_FAILURES_PER_ACCOUNT`: attempts for one account that go through freely
    /// (default 5); after them each attempt waits a delay that doubles per failure, up to
    /// `LOGIN_MAX_DELAY_SECONDS` (default 30). No lockout.
    pub login_max_failures_per_account: u32,
    pub login_max_delay_seconds: u64,
    /// `LOGIN_RATE_PER_SECOND`, `LOGIN_BURST`: password checks for one account, whatever
    /// their outcome (default 1 a second, bursts of 10; 429 `rate_limited` past it). Each is
    /// ~50 ms of a core on the bounded hashing pool, and the failure throttle forgets a login
    /// that succeeds: without this, one user's script logging in with their own password could
    /// keep the pool busy, and every other login waited or got 503.
    pub login_rate: shared::limits::Rate,
    /// `WS_TICKET_RATE_PER_SECOND`, `WS_TICKET_BURST`: WebSocket tickets one user is issued
    /// (default 1 a second, bursts of 40, as the gateways' upgrades; 429 `rate_limited` past
    /// it). Each is a key in Redis for 30 seconds.
    pub ticket_rate: shared::limits::Rate,
    /// `LOGIN_MAX_FAILURES_PER_ADDRESS`: failed logins from one client address within the window before 429 (default 30).
    pub login_max_failures_per_address: u32,
    /// `LOGIN_FAILURE_WINDOW_SECONDS`: how long failures are counted (default 900).
    pub login_failure_window_seconds: u64,
    /// `TRUSTED_PROXIES`: the proxies (CIDRs, comma-separated) whose `X-Forwarded-For` /
    /// `X-Real-IP` give the client address (default none: the peer is the client).
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// `REFRESH_REUSE_GRACE_SECONDS`: a refresh token presented again this soon after its
    /// rotation gets the same successor pair instead of revoking the login (default 10).
    pub refresh_reuse_grace_seconds: u32,
    /// `REGISTRATIONS_PER_HOUR`: accounts one client address may register per hour (default
    /// 20), so nobody fills the database with accounts.
    pub registrations_per_hour: u32,
    /// `PROFILE_UPDATES_PER_HOUR`: display name and avatar changes one user may make per hour
    /// (default 20; 429 `too_many_requests` past it). Each is announced to every conversation
    /// the user is in.
    pub profile_updates_per_hour: u32,
    /// `CHAT_SERVICE_URL`: chat-service's internal API, told of profile changes (default
    /// `http://127.0.0.1:8002`).
    pub chat_service_url: String,
    /// Where avatars are stored: the same `S3_*` or `UPLOAD_DIR` as chat-service's.
    pub storage: shared::storage::StorageConfig,
    /// The same upload limits as chat-service's.
    pub uploads: shared::storage::UploadLimits,
}

impl AuthConfig {
    /// The prefix of URLs handed out (`PUBLIC_URL`; empty: paths).
    pub fn public_url(&self) -> &str {
        match &self.storage {
            shared::storage::StorageConfig::Local { public_url, .. } => public_url,
            shared::storage::StorageConfig::S3 { .. } => "",
        }
    }

    /// Reads every setting, failing on the first missing or invalid one.
    pub fn from_env() -> Result<Self, ConfigError> {
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
        Ok(Self {
            server: ServerConfig::from_env(8001, 75)?,
            database: DatabaseConfig::from_env()?,
            redis: RedisConfig::from_env()?,
            jwt: JwtConfig::from_env()?,
            allowed_origins: config::allowed_origins()?,
            debug: config::debug()?,
            max_body_bytes: config::between("MAX_BODY_BYTES", 64 * 1024, 1, 64 * 1024 * 1024)?,
            refresh_token_expire_days: config::between("REFRESH_TOKEN_EXPIRE_DAYS", 30, 1, 3650)?,
            argon2_max_concurrency: config::between("ARGON2_MAX_CONCURRENCY", cpus, 1, 1024)?,
            argon2_queue_timeout_ms: config::between("ARGON2_QUEUE_TIMEOUT_MS", 5000, 0, HOUR_MS)?,
            login_max_failures_per_account: config::at_least(
                "LOGIN_MAX_FAILURES_PER_ACCOUNT",
                5,
                1,
            )?,
            login_rate: config::rate(
                "LOGIN_RATE_PER_SECOND",
                "LOGIN_BURST",
                shared::limits::Rate {
                    per_second: 1,
                    burst: 10,
                },
            )?,
            ticket_rate: config::rate(
                "WS_TICKET_RATE_PER_SECOND",
                "WS_TICKET_BURST",
                shared::limits::Rate {
                    per_second: 1,
                    burst: 40,
                },
            )?,
            login_max_failures_per_address: config::at_least(
                "LOGIN_MAX_FAILURES_PER_ADDRESS",
                30,
                1,
            )?,
            login_failure_window_seconds: config::between(
                "LOGIN_FAILURE_WINDOW_SECONDS",
                900,
                1,
                30 * 86_400,
            )?,
            trusted_proxies: trusted_proxies()?,
            refresh_reuse_grace_seconds: config::between(
                "REFRESH_REUSE_GRACE_SECONDS",
                10,
                0,
                3600,
            )?,
            login_max_delay_seconds: config::between("LOGIN_MAX_DELAY_SECONDS", 30, 0, 3600)?,
            registrations_per_hour: config::parsed("REGISTRATIONS_PER_HOUR", 20)?,
            profile_updates_per_hour: config::at_least("PROFILE_UPDATES_PER_HOUR", 20, 1)?,
            chat_service_url: config::http_url("CHAT_SERVICE_URL", "http://127.0.0.1:8002")?,
            storage: shared::storage::StorageConfig::from_env()?,
            uploads: shared::storage::UploadLimits::from_env()?,
        })
    }
}

/// `TRUSTED_PROXIES`: comma-separated CIDRs (a bare address is one host). The yes/no
/// `TRUST_PROXY_HEADERS` it replaces is refused with a pointer to it when it is on, so nobody
/// believes every peer's headers are still trusted; off (as older `.env` files have it), it is
/// ignored.
fn trusted_proxies() -> Result<Vec<ipnet::IpNet>, ConfigError> {
    if config::flag("TRUST_PROXY_HEADERS", false)? {
        return Err(ConfigError::new(
            "TRUST_PROXY_HEADERS",
            "is no longer read: name your proxies in TRUSTED_PROXIES (CIDRs, e.g. 127.0.0.1/32,10.0.0.0/8)",
        ));
    }
    parse_cidrs(&config::string("TRUSTED_PROXIES", "")?)
        .map_err(|e| ConfigError::new("TRUSTED_PROXIES", e))
}

fn parse_cidrs(list: &str) -> Result<Vec<ipnet::IpNet>, String> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<ipnet::IpNet>()
                .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| format!("is invalid: {s:?} is not a CIDR or an address"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxies_are_cidrs_or_addresses() {
        let nets = parse_cidrs("127.0.0.1/32, 10.0.0.0/8,::1").unwrap();
        assert_eq!(nets.len(), 3);
        assert!(nets[1].contains(&"10.9.8.7".parse::<std::net::IpAddr>().unwrap()));
        assert!(parse_cidrs("").unwrap().is_empty());
        assert!(parse_cidrs("10.0.0.0/33").is_err());
        assert!(parse_cidrs("proxy.local").is_err());
    }
}
