//! auth-service: users, Argon2id password hashes, JWT access tokens and rotating refresh tokens.
//!
//! - [`config`] — settings.
//! - [`api`] — the `/auth` endpoints and their OpenAPI description.
//! - [`users`], [`tokens`] — the `users` and `refresh_tokens` tables.
//! - [`password`] — Argon2id off the async executor with bounded concurrency.
//! - [`throttle`] — failed-login counting in Redis.
//! - [`validate`] — the contract's field rules.
//!
//! [`Application`] binds, reports its port and serves until SIGTERM/SIGINT; tests run it on port 0.

pub mod admin;
pub mod announce;
pub mod api;
pub mod avatars;
pub mod config;
pub mod password;
pub mod sessions;
pub mod throttle;
pub mod tokens;
pub mod users;
pub mod validate;

use std::{sync::Arc, time::Duration};

use anyhow::Context;
use axum::{extract::FromRef, Router};
use fred::prelude::Client;
use shared::{
    health::HealthState, http::EdgeConfig, jwt::JwtKeys, keys::Keys, revocation::Revocations,
};
use sqlx::PgPool;
use tokio::net::TcpListener;
use utoipa::OpenApi;

pub use config::AuthConfig;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub db: PgPool,
    pub redis: Client,
    pub jwt: Arc<JwtKeys>,
    pub passwords: Arc<password::Passwords>,
    pub refresh_tokens: tokens::RefreshTokens,
    pub throttle: Arc<throttle::LoginThrottle>,
    pub revocations: Arc<Revocations>,
    pub config: Arc<AuthConfig>,
    /// Object storage, for avatars.
    pub storage: shared::storage::Storage,
    /// Tells chat-service of profile changes.
    pub announcer: announce::ProfileAnnouncer,
}

impl AppState {
    pub fn keys(&self) -> Keys {
        Keys::new(self.config.redis.prefix.clone())
    }
}

impl FromRef<AppState> for Arc<JwtKeys> {
    fn from_ref(state: &AppState) -> Self {
        state.jwt.clone()
    }
}

impl FromRef<AppState> for Arc<Revocations> {
    fn from_ref(state: &AppState) -> Self {
        state.revocations.clone()
    }
}

/// A bound, ready-to-run auth-service.
pub struct Application {
    listener: TcpListener,
    router: Router,
    port: u16,
    header_timeout: Duration,
    purge: tokens::RefreshTokens,
}

impl Application {
    /// Connects to Postgres (waiting up to 30 s for it), applies pending migrations, and binds.
    pub async fn build(config: AuthConfig) -> anyhow::Result<Self> {
        let db = shared::startup::migrated_pool(&config.database).await?;
        Self::build_with_pool(config, db).await
    }

    /// Binds with an existing pool whose schema is up to date (tests pass a fresh database).
    pub async fn build_with_pool(config: AuthConfig, db: PgPool) -> anyhow::Result<Self> {
        shared::metrics::zero_counters(&[
            "auth_login_throttled_total",
            "auth_password_queue_timeouts_total",
            "auth_refresh_reuse_total",
        ]);
        let redis = shared::redis::connect(&config.redis).context("REDIS_URL")?;
        if !shared::redis::wait_until_ready(&redis, Duration::from_secs(5)).await {
            tracing::warn!("Redis is not answering yet; login throttling is off until it does");
        }
        let passwords = password::Passwords::new(
            config.argon2_max_concurrency,
            Duration::from_millis(config.argon2_queue_timeout_ms),
        )
        .map_err(anyhow::Error::msg)?;
        let refresh_tokens = tokens::RefreshTokens::new(
            db.clone(),
            config.refresh_token_expire_days,
            config.refresh_reuse_grace_seconds,
            &config.jwt.secret_key,
        );
        let throttle = throttle::LoginThrottle::new(
            redis.clone(),
            Keys::new(config.redis.prefix.clone()),
            config.login_max_failures_per_account,
            config.login_max_failures_per_address,
            config.login_max_delay_seconds,
            config.login_failure_window_seconds,
        );
        let jwt = Arc::new(JwtKeys::new(&config.jwt));
        let revocations = Revocations::start(
            redis.clone(),
            Keys::new(config.redis.prefix.clone()),
            &jwt,
            config.jwt.revocation_poll,
        )
        .await;
        let announcer = announce::ProfileAnnouncer::new(&config.chat_service_url, jwt.clone())?;
        let state = AppState {
            db: db.clone(),
            redis: redis.clone(),
            jwt,
            passwords: Arc::new(passwords),
            refresh_tokens: refresh_tokens.clone(),
            throttle: Arc::new(throttle),
            revocations,
            config: Arc::new(config.clone()),
            storage: shared::storage::Storage::new(&config.storage, &config.jwt.secret_key)
                .map_err(|e| anyhow::anyhow!("object storage (S3_* or UPLOAD_DIR): {e}"))?,
            announcer,
        };
        let health = HealthState {
            service: "auth-service",
            version: env!("CARGO_PKG_VERSION"),
            db: Some(db),
            redis: Some(redis),
            ready: shared::health::Readiness::new(config.server.ready_grace),
        };
        let router = Router::new()
            .merge(api::router())
            .merge(admin::router())
            .with_state(state)
            .merge(shared::health::router(health))
            .merge(shared::docs::router(api::ApiDoc::openapi()));
        let router = shared::http::finish(
            router,
            &EdgeConfig {
                allowed_origins: config.allowed_origins.clone(),
                max_body_bytes: config.max_body_bytes,
                body_timeout: config.server.body_timeout,
            },
        );
        let (listener, port) = shared::server::bind(&config.server).await?;
        Ok(Self {
            listener,
            router,
            port,
            header_timeout: config.server.header_timeout,
            purge: refresh_tokens,
        })
    }

    /// The port actually bound (useful with `PORT=0`).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Serves until SIGTERM or SIGINT, then finishes in-flight requests.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let purge = self.purge;
        let purger = tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(3600));
            loop {
                every.tick().await;
                match purge.purge_expired().await {
                    Ok(n) if n > 0 => tracing::info!(deleted = n, "purged expired refresh tokens"),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "could not purge expired refresh tokens"),
                }
            }
        });
        tracing::info!(port = self.port, "auth-service listening");
        let served = shared::server::serve(self.listener, self.router, self.header_timeout).await;
        purger.abort();
        served
    }
}
