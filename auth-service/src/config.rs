//! auth-service settings. `.env.example` documents each variable.

use shared::config::{self, ConfigError, DatabaseConfig, JwtConfig, RedisConfig, ServerConfig};

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
    /// `LOGIN_MAX_FAILURES_PER_ACCOUNT`: failed logins for one account within the window before 429 (default 5).
    pub login_max_failures_per_account: u32,
    /// `LOGIN_MAX_FAILURES_PER_ADDRESS`: failed logins from one client address within the window before 429 (default 30).
    pub login_max_failures_per_address: u32,
    /// `LOGIN_FAILURE_WINDOW_SECONDS`: how long failures are counted (default 900).
    pub login_failure_window_seconds: u64,
    /// `TRUST_PROXY_HEADERS`: take the client address from `X-Real-IP` / `X-Forwarded-For`
    /// (set it only behind a proxy that writes them, like the bundled nginx; default false).
    pub trust_proxy_headers: bool,
    /// `REGISTRATIONS_PER_HOUR`: accounts one client address may register per hour (default
    /// 20), so nobody fills the database with accounts.
    pub registrations_per_hour: u32,
}

impl AuthConfig {
    /// Reads every setting, failing on the first missing or invalid one.
    pub fn from_env() -> Result<Self, ConfigError> {
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
        let config = Self {
            server: ServerConfig::from_env(8001)?,
            database: DatabaseConfig::from_env()?,
            redis: RedisConfig::from_env()?,
            jwt: JwtConfig::from_env()?,
            allowed_origins: config::allowed_origins()?,
            debug: config::debug()?,
            max_body_bytes: config::parsed("MAX_BODY_BYTES", 64 * 1024)?,
            refresh_token_expire_days: config::parsed("REFRESH_TOKEN_EXPIRE_DAYS", 30)?,
            argon2_max_concurrency: config::parsed("ARGON2_MAX_CONCURRENCY", cpus)?,
            argon2_queue_timeout_ms: config::parsed("ARGON2_QUEUE_TIMEOUT_MS", 5000)?,
            login_max_failures_per_account: config::parsed("LOGIN_MAX_FAILURES_PER_ACCOUNT", 5)?,
            login_max_failures_per_address: config::parsed("LOGIN_MAX_FAILURES_PER_ADDRESS", 30)?,
            login_failure_window_seconds: config::parsed("LOGIN_FAILURE_WINDOW_SECONDS", 900)?,
            trust_proxy_headers: config::flag("TRUST_PROXY_HEADERS", false)?,
            registrations_per_hour: config::parsed("REGISTRATIONS_PER_HOUR", 20)?,
        };
        for (name, value) in [
            ("MAX_BODY_BYTES", config.max_body_bytes as u64),
            (
                "REFRESH_TOKEN_EXPIRE_DAYS",
                u64::from(config.refresh_token_expire_days),
            ),
            (
                "ARGON2_MAX_CONCURRENCY",
                config.argon2_max_concurrency as u64,
            ),
            (
                "LOGIN_MAX_FAILURES_PER_ACCOUNT",
                u64::from(config.login_max_failures_per_account),
            ),
            (
                "LOGIN_MAX_FAILURES_PER_ADDRESS",
                u64::from(config.login_max_failures_per_address),
            ),
            (
                "LOGIN_FAILURE_WINDOW_SECONDS",
                config.login_failure_window_seconds,
            ),
        ] {
            if value == 0 {
                return Err(ConfigError::new(name, "is invalid: must be at least 1"));
            }
        }
        Ok(config)
    }
}
