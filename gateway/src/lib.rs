//! gateway: holds WebSocket connections and fans events out to them. For now it serves health
//! and metrics only; `/ws` comes with the gateway issue.

use std::time::Duration;

use anyhow::Context;
use axum::Router;
use shared::{
    config::{self, ConfigError, JwtConfig, RedisConfig, ServerConfig},
    health::HealthState,
    http::EdgeConfig,
};
use tokio::net::TcpListener;

/// Everything the gateway reads at start. `.env.example` documents each variable.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// `HOST`, `PORT` (default 8003).
    pub server: ServerConfig,
    /// `REDIS_URL`, `REDIS_PREFIX`.
    pub redis: RedisConfig,
    /// `SECRET_KEY`, `ACCESS_TOKEN_EXPIRE_MINUTES`: tokens are verified locally.
    pub jwt: JwtConfig,
    /// `ALLOWED_ORIGINS`: the browser origins allowed to open WebSockets.
    pub allowed_origins: Vec<String>,
    /// `DEBUG`.
    pub debug: bool,
}

impl GatewayConfig {
    pub fn from_env() -> Result<Self, ConfigError> {
        Ok(Self {
            server: ServerConfig::from_env(8003)?,
            redis: RedisConfig::from_env()?,
            jwt: JwtConfig::from_env()?,
            allowed_origins: config::allowed_origins()?,
            debug: config::debug()?,
        })
    }
}

/// A bound, ready-to-run gateway.
pub struct Application {
    listener: TcpListener,
    router: Router,
    port: u16,
}

impl Application {
    pub async fn build(config: GatewayConfig) -> anyhow::Result<Self> {
        let redis = shared::redis::connect(&config.redis).context("REDIS_URL")?;
        if !shared::redis::wait_until_ready(&redis, Duration::from_secs(5)).await {
            tracing::warn!("Redis is not answering yet");
        }
        let health = HealthState {
            service: "gateway",
            version: env!("CARGO_PKG_VERSION"),
            db: None,
            redis: Some(redis),
        };
        let router = shared::http::finish(
            shared::health::router(health),
            &EdgeConfig {
                allowed_origins: config.allowed_origins.clone(),
                max_body_bytes: 64 * 1024,
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
        tracing::info!(port = self.port, "gateway listening");
        shared::http::serve(self.listener, self.router).await
    }
}
