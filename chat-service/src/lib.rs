//! chat-service: rooms, groups, private chats, message history and the worker that persists
//! WebSocket sends. For now it serves health and metrics only; it already applies migrations
//! at start, as it will own most of the schema.

use std::time::Duration;

use anyhow::Context;
use axum::Router;
use shared::{
    config::{self, ConfigError, DatabaseConfig, JwtConfig, RedisConfig, ServerConfig},
    health::HealthState,
    http::EdgeConfig,
};
use sqlx::PgPool;
use tokio::net::TcpListener;

/// Everything chat-service reads at start. `.env.example` documents each variable.
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
}

impl ChatConfig {
    pub fn from_env() -> Result<Self, ConfigError> {
        Ok(Self {
            server: ServerConfig::from_env(8002)?,
            database: DatabaseConfig::from_env()?,
            redis: RedisConfig::from_env()?,
            jwt: JwtConfig::from_env()?,
            allowed_origins: config::allowed_origins()?,
            debug: config::debug()?,
            max_body_bytes: config::parsed("MAX_BODY_BYTES", 64 * 1024)?,
        })
    }
}

/// A bound, ready-to-run chat-service.
pub struct Application {
    listener: TcpListener,
    router: Router,
    port: u16,
}

impl Application {
    /// Connects to Postgres (waiting up to 30 s), applies pending migrations, and binds.
    pub async fn build(config: ChatConfig) -> anyhow::Result<Self> {
        let db = shared::db::pool(&config.database).context("DATABASE_URL")?;
        shared::db::wait_until_ready(&db, Duration::from_secs(30))
            .await
            .context("Postgres did not answer within 30 s")?;
        shared::db::migrate(&db)
            .await
            .context("applying migrations")?;
        Self::build_with_pool(config, db).await
    }

    /// Binds with an existing, migrated pool (tests pass a fresh database).
    pub async fn build_with_pool(config: ChatConfig, db: PgPool) -> anyhow::Result<Self> {
        let redis = shared::redis::connect(&config.redis).context("REDIS_URL")?;
        if !shared::redis::wait_until_ready(&redis, Duration::from_secs(5)).await {
            tracing::warn!("Redis is not answering yet");
        }
        let health = HealthState {
            service: "chat-service",
            version: env!("CARGO_PKG_VERSION"),
            db: Some(db),
            redis: Some(redis),
        };
        let router = shared::http::finish(
            shared::health::router(health),
            &EdgeConfig {
                allowed_origins: config.allowed_origins.clone(),
                max_body_bytes: config.max_body_bytes,
            },
        );
        let listener = TcpListener::bind(config.server.address())
            .await
            .with_context(|| format!("binding {}", config.server.address()))?;
        let port = listener.local_addr()?.port();
        Ok(Self {
            listener,
            router,
            port,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Serves until SIGTERM or SIGINT.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        tracing::info!(port = self.port, "chat-service listening");
        shared::http::serve(self.listener, self.router).await
    }
}
