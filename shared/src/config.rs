//! Settings come from the process environment; a `.env` file in the working directory is read
//! first and never overrides a variable that is already set.
//!
//! Every reader returns [`ConfigError`], whose `Display` is the single line a binary prints
//! before it exits when a setting is missing or invalid.

use std::{fmt::Display, str::FromStr};

/// A missing or invalid setting, named.
#[derive(Debug, thiserror::Error)]
#[error("configuration error: {name} {problem}")]
pub struct ConfigError {
    /// The environment variable at fault.
    pub name: &'static str,
    /// What is wrong with it, phrased to follow the name.
    pub problem: String,
}

impl ConfigError {
    pub fn new(name: &'static str, problem: impl Into<String>) -> Self {
        Self {
            name,
            problem: problem.into(),
        }
    }
}

/// Loads `.env` from the working directory if there is one. A malformed file is an error, a
/// missing one is not.
pub fn load_dotenv() -> Result<(), ConfigError> {
    match dotenvy::dotenv() {
        Ok(_) => Ok(()),
        Err(e) if e.not_found() => Ok(()),
        Err(e) => Err(ConfigError::new(".env", format!("could not be read: {e}"))),
    }
}

fn raw(name: &'static str) -> Result<Option<String>, ConfigError> {
    match std::env::var(name) {
        Ok(v) if v.trim().is_empty() => Ok(None),
        Ok(v) => Ok(Some(v.trim().to_owned())),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => Err(ConfigError::new(name, "is not valid UTF-8")),
    }
}

/// A setting that has no default.
pub fn required(name: &'static str) -> Result<String, ConfigError> {
    raw(name)?.ok_or_else(|| ConfigError::new(name, "is not set"))
}

/// A setting parsed with [`FromStr`], or `default` when it is unset or empty.
pub fn parsed<T>(name: &'static str, default: T) -> Result<T, ConfigError>
where
    T: FromStr,
    T::Err: Display,
{
    match raw(name)? {
        None => Ok(default),
        Some(v) => v
            .parse()
            .map_err(|e| ConfigError::new(name, format!("is invalid ({v:?}): {e}"))),
    }
}

/// A number setting parsed like [`parsed`] that must be at least `min`.
pub fn at_least<T>(name: &'static str, default: T, min: T) -> Result<T, ConfigError>
where
    T: FromStr + PartialOrd + Display,
    T::Err: Display,
{
    let value = parsed(name, default)?;
    if value < min {
        return Err(ConfigError::new(
            name,
            format!("is invalid: must be at least {min}"),
        ));
    }
    Ok(value)
}

/// A number setting parsed like [`parsed`] that must lie in `min..=max`.
pub fn between<T>(name: &'static str, default: T, min: T, max: T) -> Result<T, ConfigError>
where
    T: FromStr + PartialOrd + Display,
    T::Err: Display,
{
    let value = at_least(name, default, min)?;
    if value > max {
        return Err(ConfigError::new(
            name,
            format!("is invalid: must be at most {max}"),
        ));
    }
    Ok(value)
}

/// An hour in milliseconds, the longest most timing settings may be.
pub const HOUR_MS: u64 = 3_600_000;

/// A duration setting in milliseconds, within `min..=max`.
pub fn millis(
    name: &'static str,
    default: u64,
    min: u64,
    max: u64,
) -> Result<std::time::Duration, ConfigError> {
    between(name, default, min, max).map(std::time::Duration::from_millis)
}

/// A duration setting in seconds, within `min..=max`.
pub fn seconds(
    name: &'static str,
    default: u64,
    min: u64,
    max: u64,
) -> Result<std::time::Duration, ConfigError> {
    between(name, default, min, max).map(std::time::Duration::from_secs)
}

/// A boolean setting: `true/false`, `1/0`, `yes/no`, `on/off`, any case.
pub fn flag(name: &'static str, default: bool) -> Result<bool, ConfigError> {
    match raw(name)? {
        None => Ok(default),
        Some(v) => match v.to_ascii_lowercase().as_str() {
            "1" | "true" | "yes" | "on" => Ok(true),
            "0" | "false" | "no" | "off" => Ok(false),
            _ => Err(ConfigError::new(
                name,
                format!("is invalid ({v:?}): expected true or false"),
            )),
        },
    }
}

/// An http(s) URL setting with a host, or `default` (an empty one: not set, and then empty);
/// anything else stops the process at start.
pub fn http_url(name: &'static str, default: &str) -> Result<String, ConfigError> {
    let value = string(name, default)?;
    if !value.is_empty() {
        parse_http_url(name, &value)?;
    }
    Ok(value)
}

/// `value` of setting `name` as an http(s) URL with a host.
pub fn parse_http_url(name: &'static str, value: &str) -> Result<reqwest::Url, ConfigError> {
    let invalid = |why: &str| ConfigError::new(name, format!("is invalid ({value:?}): {why}"));
    let url = reqwest::Url::parse(value).map_err(|e| invalid(&e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(invalid("expected an http(s) URL"));
    }
    Ok(url)
}

/// A string setting with a default.
pub fn string(name: &'static str, default: &str) -> Result<String, ConfigError> {
    Ok(raw(name)?.unwrap_or_else(|| default.to_owned()))
}

/// A rate setting: `per_second_name` per second, bursts of `burst_name`, each at least 1.
pub fn rate(
    per_second_name: &'static str,
    burst_name: &'static str,
    default: crate::limits::Rate,
) -> Result<crate::limits::Rate, ConfigError> {
    let per_second: u32 = at_least(per_second_name, default.per_second, 1)?;
    let burst: u32 = at_least(burst_name, default.burst, 1)?;
    Ok(crate::limits::Rate { per_second, burst })
}

/// `SEND_RATE_PER_SECOND` (default 20) and `SEND_BURST` (default 40): each user's send rate,
/// read by every process that takes sends (gateways, chat-service's REST sends).
pub fn send_rate() -> Result<crate::limits::Rate, ConfigError> {
    rate(
        "SEND_RATE_PER_SECOND",
        "SEND_BURST",
        crate::limits::Rate {
            per_second: 20,
            burst: 40,
        },
    )
}

/// `SEND_PARTITIONS` (default 1, at most 1024): how many partitions the send stream has. Gateways
/// and chat-service must agree; change it only with the send streams drained. Each partition
/// is a loop with its own batches: on one replica more partitions mean more, smaller
/// transactions (at 200k deliveries/s on the 2-core benchmark machine, 4 partitions raised the
/// fan-out p99 from 50 to 123 ms); give several replicas, or a cluster, at least one each.
pub fn send_partitions() -> Result<u16, ConfigError> {
    let n: u16 = parsed("SEND_PARTITIONS", 1)?;
    if n == 0 || n > 1024 {
        return Err(ConfigError::new(
            "SEND_PARTITIONS",
            "is invalid: must be between 1 and 1024",
        ));
    }
    Ok(n)
}

/// Where a service listens: `HOST` and `PORT`, and how its accept loop treats connections.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// `HOST`, the address to bind (default `0.0.0.0`).
    pub host: String,
    /// `PORT`; `0` picks a free port (tests do this).
    pub port: u16,
    /// `READY_GRACE_SECONDS`: how long Postgres or Redis may fail before `/health/ready` says
    /// so (default 30; see [`crate::health`]).
    pub ready_grace: std::time::Duration,
    /// `HTTP_HEADER_TIMEOUT_SECONDS`: how long a connection may take to deliver a request's
    /// head once it is ready for one (accepted, or its last response sent) before it is closed;
    /// idle keep-alive connections end with it too (see [`crate::server`]). The default is the
    /// service's own.
    pub header_timeout: std::time::Duration,
    /// `HTTP_BODY_TIMEOUT_SECONDS`: the longest a request body may pause between two of its
    /// pieces (default 30) before the request is answered 408 and its connection closed.
    pub body_timeout: std::time::Duration,
}

impl ServerConfig {
    /// Reads the settings, with `default_port` and `default_header_timeout` (seconds) for the
    /// service.
    pub fn from_env(default_port: u16, default_header_timeout: u64) -> Result<Self, ConfigError> {
        let header_timeout = seconds(
            "HTTP_HEADER_TIMEOUT_SECONDS",
            default_header_timeout,
            1,
            3600,
        )?;
        let body_timeout = seconds("HTTP_BODY_TIMEOUT_SECONDS", 30, 1, 3600)?;
        Ok(Self {
            host: string("HOST", "0.0.0.0")?,
            port: parsed("PORT", default_port)?,
            ready_grace: seconds("READY_GRACE_SECONDS", 30, 0, 3600)?,
            header_timeout,
            body_timeout,
        })
    }

    /// Loopback on a free port, for tests.
    pub fn ephemeral() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 0,
            ready_grace: std::time::Duration::from_secs(30),
            header_timeout: std::time::Duration::from_secs(75),
            body_timeout: std::time::Duration::from_secs(30),
        }
    }

    pub fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// Postgres: `DATABASE_URL` and `DATABASE_MAX_CONNECTIONS`.
#[derive(Debug, Clone)]
pub struct DatabaseConfig {
    /// `DATABASE_URL`, e.g. `postgres://postgres@127.0.0.1:5432/chatsphere`. Required.
    pub url: String,
    /// `DATABASE_MAX_CONNECTIONS`, the pool size per process (default 10).
    pub max_connections: u32,
}

impl DatabaseConfig {
    pub fn from_env() -> Result<Self, ConfigError> {
        let url = required("DATABASE_URL")?;
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(ConfigError::new(
                "DATABASE_URL",
                "is invalid: expected a postgres:// or postgresql:// URL",
            ));
        }
        let max_connections = between("DATABASE_MAX_CONNECTIONS", 10u32, 1, 10_000)?;
        Ok(Self {
            url,
            max_connections,
        })
    }
}

/// Redis: `REDIS_URL` and `REDIS_PREFIX`.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// `REDIS_URL` (default `redis://127.0.0.1:6379`): `redis://` or `rediss://` for one
    /// server, `redis-cluster://` or `rediss-cluster://` for a Redis Cluster (any node; more
    /// with `?node=host:port`), `redis-sentinel://` for a primary behind Sentinel (see
    /// [`crate::redis`]).
    pub url: String,
    /// `REDIS_PREFIX`, put before every key and channel name (default `cs:`). Several
    /// deployments, or tests, can share one Redis with different prefixes. No braces: they
    /// would become every key's cluster hash tag.
    pub prefix: String,
}

impl RedisConfig {
    pub fn from_env() -> Result<Self, ConfigError> {
        let url = string("REDIS_URL", "redis://127.0.0.1:6379")?;
        const SCHEMES: [&str; 6] = [
            "redis://",
            "rediss://",
            "redis-cluster://",
            "rediss-cluster://",
            "redis-sentinel://",
            "rediss-sentinel://",
        ];
        if !SCHEMES.iter().any(|s| url.starts_with(s)) {
            return Err(ConfigError::new(
                "REDIS_URL",
                "is invalid: expected a redis://, redis-cluster:// or redis-sentinel:// URL",
            ));
        }
        let prefix = string("REDIS_PREFIX", "cs:")?;
        if prefix.contains(['{', '}']) {
            return Err(ConfigError::new(
                "REDIS_PREFIX",
                "is invalid: braces would put every key in one cluster slot",
            ));
        }
        Ok(Self { url, prefix })
    }
}

/// Access tokens: `SECRET_KEY` and `ACCESS_TOKEN_EXPIRE_MINUTES`.
#[derive(Clone)]
pub struct JwtConfig {
    /// `SECRET_KEY`, the HS256 signing key shared by every service. Required, at least 32 characters.
    pub secret_key: String,
    /// `ACCESS_TOKEN_EXPIRE_MINUTES` (default 30).
    pub access_token_expire_minutes: u32,
    /// `REVOCATION_POLL_MS`: how often a process reads new revocations (default 1000): the
    /// longest a revoked login's or deactivated account's token still passes a REST check.
    pub revocation_poll: std::time::Duration,
}

impl std::fmt::Debug for JwtConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtConfig")
            .field("secret_key", &"<redacted>")
            .field(
                "access_token_expire_minutes",
                &self.access_token_expire_minutes,
            )
            .field("revocation_poll", &self.revocation_poll)
            .finish()
    }
}

/// The shortest `SECRET_KEY` accepted: HS256 wants a key at least as long as its output.
pub const MIN_SECRET_KEY_LEN: usize = 32;

/// Placeholders that stand in examples and manifests (and words that mark one): a key that
/// holds one is public.
const PLACEHOLDERS: &[&str] = &[
    "change-me",
    "changeme",
    "change_me",
    "replace-with",
    "replace_me",
    "placeholder",
    "example",
    "secret-key",
    "your-secret",
    "insecure",
];

/// Why `key` may not sign tokens, if it may not: too short, a known placeholder, or too little
/// entropy (fewer than 10 distinct characters, or under 100 bits by its character frequencies —
/// a random hex key of 32 characters has about 110, of 64 about 250).
pub fn weak_secret_key(key: &str) -> Option<String> {
    if key.len() < MIN_SECRET_KEY_LEN {
        return Some(format!(
            "is too short: use at least {MIN_SECRET_KEY_LEN} characters (e.g. `openssl rand -hex 32`)"
        ));
    }
    let lower = key.to_ascii_lowercase();
    if let Some(p) = PLACEHOLDERS.iter().find(|p| lower.contains(*p)) {
        return Some(format!(
            "is a placeholder (it contains {p:?}): generate a real one with `openssl rand -hex 32`"
        ));
    }
    let mut counts: std::collections::HashMap<char, f64> = std::collections::HashMap::new();
    for c in key.chars() {
        *counts.entry(c).or_insert(0.0) += 1.0;
    }
    let n = key.chars().count() as f64;
    let bits: f64 = counts.values().map(|c| -c * (c / n).log2()).sum();
    if counts.len() < 10 || bits < 100.0 {
        return Some(format!(
            "has too little entropy (about {bits:.0} bits): generate one with `openssl rand -hex 32`"
        ));
    }
    None
}

impl JwtConfig {
    pub fn from_env() -> Result<Self, ConfigError> {
        let secret_key = required("SECRET_KEY")?;
        if let Some(problem) = weak_secret_key(&secret_key) {
            return Err(ConfigError::new("SECRET_KEY", problem));
        }
        let access_token_expire_minutes =
            between("ACCESS_TOKEN_EXPIRE_MINUTES", 30u32, 1, 366 * 24 * 60)?;
        let revocation_poll = millis("REVOCATION_POLL_MS", 1000, 1, HOUR_MS)?;
        Ok(Self {
            secret_key,
            access_token_expire_minutes,
            revocation_poll,
        })
    }
}

/// The browser origins allowed to call the REST services and open WebSockets.
pub const DEFAULT_ALLOWED_ORIGINS: &str =
    "http://localhost:3000,http://localhost:5173,http://localhost:8000";

/// `ALLOWED_ORIGINS`: a JSON list (`["https://a.example"]`) or a comma-separated list.
pub fn allowed_origins() -> Result<Vec<String>, ConfigError> {
    let value = string("ALLOWED_ORIGINS", DEFAULT_ALLOWED_ORIGINS)?;
    parse_origins(&value).map_err(|problem| ConfigError::new("ALLOWED_ORIGINS", problem))
}

/// Parses either form of `ALLOWED_ORIGINS`; each origin is `scheme://host[:port]`, or `*`.
pub fn parse_origins(value: &str) -> Result<Vec<String>, String> {
    let list: Vec<String> = if value.trim_start().starts_with('[') {
        serde_json::from_str(value).map_err(|e| format!("is not a valid JSON list: {e}"))?
    } else {
        value
            .split(',')
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect()
    };
    for origin in &list {
        let ok = origin == "*"
            || ((origin.starts_with("http://") || origin.starts_with("https://"))
                && !origin
                    .trim_end_matches('/')
                    .contains(|c: char| c.is_whitespace())
                && origin.matches('/').count() == 2);
        if !ok {
            return Err(format!(
                "has an invalid origin {origin:?}: expected scheme://host[:port] with no path"
            ));
        }
    }
    Ok(list)
}

/// `DEBUG`: human-readable logs instead of JSON lines.
pub fn debug() -> Result<bool, ConfigError> {
    flag("DEBUG", false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_accept_json_and_comma_lists() {
        assert_eq!(
            parse_origins(r#"["http://a.test", "https://b.test:8443"]"#).unwrap(),
            vec!["http://a.test", "https://b.test:8443"]
        );
        assert_eq!(
            parse_origins("http://a.test, https://b.test").unwrap(),
            vec!["http://a.test", "https://b.test"]
        );
        assert!(parse_origins("http://a.test/path").is_err());
        assert!(parse_origins("a.test").is_err());
        assert!(parse_origins("[not json").is_err());
    }

    #[test]
    fn placeholder_and_weak_keys_are_refused() {
        for weak in [
            "change-me-change-me-change-me-change-me",
            "replace-with-openssl-rand-hex-32-replace-with-openssl",
            "short",
            "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            "abababababababababababababababababababab",
            "this-is-my-example-key-0123456789abcdef",
        ] {
            assert!(weak_secret_key(weak).is_some(), "{weak}");
        }
        // What `openssl rand -hex 32` and `-hex 16` give.
        for strong in [
            "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
            "5d41402abc4b2a76b9719d911017c592",
        ] {
            assert_eq!(weak_secret_key(strong), None, "{strong}");
        }
    }

    #[test]
    fn error_names_the_setting_in_one_line() {
        let e = ConfigError::new("SECRET_KEY", "is not set");
        assert_eq!(e.to_string(), "configuration error: SECRET_KEY is not set");
    }
}
