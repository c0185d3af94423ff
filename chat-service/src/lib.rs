//! chat-service: rooms, groups, private chats, message history and conversations, and the
//! worker that persists WebSocket sends.
//!
//! - [`config`] — settings.
//! - [`api`] — the `/chat` endpoints and their OpenAPI description.
//! - [`conversation`] — from `(chat_type, chat_id)` to a conversation, and who may do what.
//! - [`pipeline`] — sends in, persisted messages out: batching, seq, idempotency.
//! - [`publish`] — events on Redis after commit.
//! - [`worker`] — the consumer of the send stream gateways write to.
//! - [`partitions`] — which replica persists which partition of it (leases).
//! - [`notify`] — webhooks for people who are away.
//! - [`attachments`] — uploads checked when used, thumbnails, clean-up.
//! - [`search_index`] — the search index's pending list merged in the background.
//! - [`model`] — rows and their API shapes.

pub mod api;
pub mod attachments;
pub mod config;
pub mod conversation;
pub mod docs;
pub mod mentions;
pub mod model;
pub mod notify;
pub mod pacer;
pub mod partitions;
pub mod pipeline;
pub mod publish;
pub mod search_index;
pub mod worker;

use std::{sync::Arc, time::Duration};

use anyhow::Context;
use axum::{extract::FromRef, Router};
use fred::prelude::Client;
use shared::{
    health::HealthState, http::EdgeConfig, jwt::JwtKeys, keys::Keys, revocation::Revocations,
    ApiError,
};
use sqlx::PgPool;
use tokio::{net::TcpListener, sync::watch};

pub use config::ChatConfig;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub db: PgPool,
    pub redis: Client,
    pub publisher: publish::Publisher,
    pub jwt: Arc<JwtKeys>,
    pub revocations: Arc<Revocations>,
    pub internal_slots: shared::internal::InternalSlots,
    /// Searches this process runs at once (`SEARCH_MAX_IN_FLIGHT`).
    pub search_slots: Arc<tokio::sync::Semaphore>,
    pub config: Arc<ChatConfig>,
    /// Object storage for attachments.
    pub files: attachments::Files,
}

impl AppState {
    /// Counts one creation of `kind` (`rooms`, `groups`) by `user` against `per_hour`: 429
    /// with `Retry-After` past it.
    pub async fn creation_quota(
        &self,
        kind: &str,
        user: uuid::Uuid,
        per_hour: u32,
    ) -> Result<(), ApiError> {
        shared::limits::quota(
            &self.redis,
            self.publisher.keys().quota(kind, &user.to_string()),
            per_hour,
            3600,
            &format!("too many {kind} created in the last hour; try again later"),
        )
        .await
    }

    /// Where the private chats a user starts are counted.
    pub fn new_private_chats(&self) -> crate::conversation::NewPrivateChats<'_> {
        crate::conversation::NewPrivateChats {
            redis: &self.redis,
            keys: self.publisher.keys(),
            per_hour: self.config.quotas.private_chats_per_hour,
        }
    }

    /// Takes one token from `user`'s send bucket (shared with their sockets): 429 past it.
    pub async fn send_rate(&self, user: uuid::Uuid) -> Result<(), ApiError> {
        shared::limits::take_one(
            &self.redis,
            self.config.send_rate,
            self.publisher.keys().send_rate(user),
            "send",
            "too many messages; slow down",
        )
        .await
    }

    /// Takes one token from `user`'s search bucket: 429 past it. Searching needs only
    /// Postgres, so with Redis away it goes ahead.
    pub async fn search_rate(&self, user: uuid::Uuid) -> Result<(), ApiError> {
        shared::limits::take_one_or_allow(
            &self.redis,
            self.config.search.rate,
            self.publisher.keys().search_rate(user),
            "search",
            "too many searches; slow down",
        )
        .await
    }

    /// Takes one token from `user`'s bucket of whole online lists (`ONLINE_USERS_RATE_PER_SECOND`):
    /// 429 past it. The list is read from Redis, so without Redis it fails anyway.
    pub async fn online_list_rate(&self, user: uuid::Uuid) -> Result<(), ApiError> {
        shared::limits::take_one(
            &self.redis,
            self.config.online_list_rate,
            self.publisher.keys().online_list_rate(user),
            "online_users",
            "too many whole online lists; ask about the users you show with ?ids=",
        )
        .await
    }

    /// Takes one token from `user`'s bucket of whole long lists (every public room, a room's
    /// every member, every group with its members, every conversation of the caller;
    /// `LIST_RATE_PER_SECOND`): 429 past it. The
    /// lists need only Postgres, so with Redis away the read goes ahead.
    pub async fn list_rate(&self, user: uuid::Uuid) -> Result<(), ApiError> {
        shared::limits::take_one_or_allow(
            &self.redis,
            self.config.list_rate,
            self.publisher.keys().list_rate(user),
            "list",
            "too many whole lists; read long ones a page at a time with `limit`",
        )
        .await
    }

    /// Takes one token from `user`'s action bucket (edits, deletes, reactions, pins,
    /// membership, moderation): 429 past it.
    pub async fn action_rate(&self, user: uuid::Uuid) -> Result<(), ApiError> {
        shared::limits::take_one(
            &self.redis,
            self.config.action_rate,
            self.publisher.keys().action_rate(user),
            "action",
            "too many changes; slow down",
        )
        .await
    }

    /// Writes that publish events refuse up front, with nothing written, while Redis is away.
    pub fn require_events(&self) -> Result<(), ApiError> {
        if self.publisher.is_connected() {
            Ok(())
        } else {
            Err(ApiError::unavailable(
                "redis_unavailable",
                "redis is unavailable, retry shortly",
            ))
        }
    }
}

impl FromRef<AppState> for Arc<JwtKeys> {
    fn from_ref(state: &AppState) -> Self {
        state.jwt.clone()
    }
}

impl FromRef<AppState> for shared::internal::InternalSlots {
    fn from_ref(state: &AppState) -> Self {
        state.internal_slots.clone()
    }
}

impl FromRef<AppState> for Arc<Revocations> {
    fn from_ref(state: &AppState) -> Self {
        state.revocations.clone()
    }
}

/// A bound, ready-to-run chat-service.
pub struct Application {
    listener: TcpListener,
    router: Router,
    port: u16,
    header_timeout: Duration,
    /// The send-stream partitions this replica persists, when it takes sends (`SEND_WORKER`).
    partitions: Option<partitions::Partitions>,
    notifier: Option<notify::Notifier>,
    /// Deletes expired unused uploads.
    clean_up: (PgPool, attachments::Files),
}

impl Application {
    /// Connects to Postgres (waiting up to 30 s), applies pending migrations, and binds.
    pub async fn build(config: ChatConfig) -> anyhow::Result<Self> {
        let db = shared::startup::migrated_pool(&config.database).await?;
        Self::build_with_pool(config, db).await
    }

    /// Binds with an existing, migrated pool (tests pass a fresh database).
    pub async fn build_with_pool(config: ChatConfig, db: PgPool) -> anyhow::Result<Self> {
        shared::metrics::zero_counters(&[
            "chat_messages_persisted_total",
            "chat_events_published_total",
            "chat_event_publish_failures_total",
            "chat_send_dead_letters_total",
            "chat_send_batch_failures_total",
            "chat_send_batches_isolated_total",
            "chat_send_entries_claimed_total",
            "chat_search_index_pages_merged_total",
            "chat_internal_calls_shed_total",
        ]);
        let redis = shared::redis::connect(&config.redis).context("REDIS_URL")?;
        if !shared::redis::wait_until_ready(&redis, Duration::from_secs(5)).await {
            tracing::warn!("Redis is not answering yet");
        }
        let keys = Keys::new(config.redis.prefix.clone());
        let publisher = publish::Publisher::new(redis.clone(), keys.clone());
        let jwt = Arc::new(JwtKeys::new(&config.jwt));
        let revocations = Revocations::start(
            redis.clone(),
            keys.clone(),
            &jwt,
            config.jwt.revocation_poll,
        )
        .await;
        let storage = shared::storage::Storage::new(&config.storage, &config.jwt.secret_key)
            .map_err(|e| anyhow::anyhow!("object storage (S3_* or UPLOAD_DIR): {e}"))?;
        let files = attachments::Files {
            storage,
            limits: config.uploads.clone(),
        };
        let partitions = config.run_send_worker.then(|| {
            // The send loops' own connections, which plan their statements generically (see
            // `generic_plan_pool`): three per partition (each loop keeps two, see
            // `worker::batch::Kept`, and a batch's other queries take a third), as many as this
            // replica could hold.
            let send_db = shared::db::generic_plan_pool(
                &db,
                u32::from(config.worker.partitions).saturating_mul(3).max(3),
            );
            let (db, publisher, worker, revocations, files) = (
                send_db,
                publisher.clone(),
                config.worker.clone(),
                revocations.clone(),
                files.clone(),
            );
            let notifying = config.webhook.is_some();
            let private_chats_per_hour = config.quotas.private_chats_per_hour;
            let make: partitions::MakeWorker = Arc::new(move |partition| {
                worker::SendWorker::new(
                    db.clone(),
                    publisher.clone(),
                    worker.clone(),
                    partition,
                    revocations.clone(),
                    files.clone(),
                )
                .notifying(notifying)
                .private_chats_per_hour(private_chats_per_hour)
            });
            partitions::Partitions::new(
                redis.clone(),
                keys.clone(),
                config.worker.partitions,
                config.worker.lease,
                make,
            )
        });
        let notifier = config
            .webhook
            .clone()
            .map(|w| notify::Notifier::new(db.clone(), redis.clone(), keys.clone(), w));
        let state = AppState {
            db: db.clone(),
            redis: redis.clone(),
            publisher,
            jwt,
            revocations,
            internal_slots: shared::internal::InternalSlots::new(config.internal_max_in_flight),
            search_slots: Arc::new(tokio::sync::Semaphore::new(config.search.max_in_flight)),
            config: Arc::new(config.clone()),
            files: files.clone(),
        };
        let db_for_clean_up = db.clone();
        let health = HealthState {
            service: "chat-service",
            version: env!("CARGO_PKG_VERSION"),
            db: Some(db),
            redis: Some(redis),
            ready: shared::health::Readiness::new(config.server.ready_grace),
        };
        let router = Router::new()
            .merge(api::router())
            .with_state(state)
            .merge(shared::health::router(health))
            .merge(docs::router(docs::Combined::new(
                config.auth_service_url.clone(),
            )));
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
            partitions,
            notifier,
            clean_up: (db_for_clean_up, files),
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Serves (and runs the send workers) until SIGTERM or SIGINT; each worker finishes its
    /// batch before the process exits.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        tracing::info!(port = self.port, "chat-service listening");
        let (stop, stopped) = watch::channel(false);
        let partitions = self
            .partitions
            .map(|p| tokio::spawn(p.run(stopped.clone())));
        let notifier = self.notifier.map(|n| tokio::spawn(n.run(stopped.clone())));
        let (db, files) = self.clean_up;
        let search_index = tokio::spawn(search_index::flush_loop(
            db.clone(),
            search_index::FLUSH_EVERY,
            stopped.clone(),
        ));
        let clean_up = tokio::spawn(attachments::clean_up_loop(
            db,
            files,
            Duration::from_secs(300),
            stopped.clone(),
        ));
        let served = shared::server::serve(self.listener, self.router, self.header_timeout).await;
        let _ = stop.send(true);
        if let Some(p) = partitions {
            let _ = p.await;
        }
        if let Some(n) = notifier {
            let _ = n.await;
        }
        let _ = clean_up.await;
        let _ = search_index.await;
        served
    }
}
