//! `/health`, `/health/db`, `/health/redis`, `/health/ready` and `/metrics`, the same on every
//! service.
//!
//! `/health/ready` is for load balancers (Kubernetes readiness). It checks the same dependencies
//! but forgives a blip: it answers 503 only once they have been failing for longer than
//! `READY_GRACE_SECONDS` (default 30). Every pod shares the same Postgres and Redis, so a
//! readiness that failed at the first refused ping would take every pod out of the Service at
//! once for a hiccup — and put them all back at once, into a reconnect storm.

use std::{
    sync::{
        atomic::{AtomicI64, Ordering},
        Arc,
    },
    time::Duration,
};

use axum::{extract::State, http::StatusCode, routing::get, Json, Router};
use fred::{interfaces::ClientLike, prelude::Client};
use serde::Serialize;
use sqlx::PgPool;

/// What the health endpoints check.
#[derive(Clone)]
pub struct HealthState {
    /// The service name reported by `/health`.
    pub service: &'static str,
    /// The service version reported by `/health`.
    pub version: &'static str,
    /// Postgres, for services that use it.
    pub db: Option<PgPool>,
    /// Redis.
    pub redis: Option<Client>,
    /// How long the dependencies may fail before `/health/ready` does.
    pub ready: Readiness,
}

/// The state behind `/health/ready`: since when the dependencies have been failing.
#[derive(Clone, Debug)]
pub struct Readiness {
    grace_ms: i64,
    /// Unix ms of the first failed check of the current run of failures; 0 while they pass.
    failing_since: Arc<AtomicI64>,
}

impl Readiness {
    pub fn new(grace: Duration) -> Self {
        Self {
            grace_ms: i64::try_from(grace.as_millis()).unwrap_or(i64::MAX),
            failing_since: Arc::new(AtomicI64::new(0)),
        }
    }

    /// Records a check's outcome at `now_ms`; whether the service counts as ready.
    pub fn observe(&self, ok: bool, now_ms: i64) -> bool {
        if ok {
            self.failing_since.store(0, Ordering::Relaxed);
            return true;
        }
        let since = match self.failing_since.compare_exchange(
            0,
            now_ms,
            Ordering::Relaxed,
            Ordering::Relaxed,
        ) {
            Ok(_) => now_ms,
            Err(earlier) => earlier,
        };
        now_ms - since < self.grace_ms
    }
}

/// The body of every health answer.
#[derive(Debug, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct HealthBody {
    /// `ok` or `unavailable`.
    pub status: String,
    pub service: String,
    pub version: String,
}

const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// The health and metrics routes, ready to merge into a service's router.
pub fn router<S: Clone + Send + Sync + 'static>(state: HealthState) -> Router<S> {
    let mut router = Router::new()
        .route("/health", get(health))
        .route("/health/redis", get(health_redis))
        .route("/health/ready", get(health_ready))
        .route("/metrics", get(crate::metrics::render));
    // Only services that use Postgres answer for it.
    if state.db.is_some() {
        router = router.route("/health/db", get(health_db));
    }
    router.with_state(state)
}

fn answer(state: &HealthState, ok: bool) -> (StatusCode, Json<HealthBody>) {
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(HealthBody {
            status: if ok { "ok" } else { "unavailable" }.into(),
            service: state.service.into(),
            version: state.version.into(),
        }),
    )
}

async fn health(State(state): State<HealthState>) -> (StatusCode, Json<HealthBody>) {
    answer(&state, true)
}

async fn health_db(State(state): State<HealthState>) -> (StatusCode, Json<HealthBody>) {
    let ok = match &state.db {
        Some(pool) => tokio::time::timeout(CHECK_TIMEOUT, sqlx::query("SELECT 1").execute(pool))
            .await
            .is_ok_and(|r| r.is_ok()),
        None => false,
    };
    answer(&state, ok)
}

async fn db_ok(state: &HealthState) -> bool {
    match &state.db {
        Some(pool) => tokio::time::timeout(CHECK_TIMEOUT, sqlx::query("SELECT 1").execute(pool))
            .await
            .is_ok_and(|r| r.is_ok()),
        None => true,
    }
}

async fn redis_ok(state: &HealthState) -> bool {
    match &state.redis {
        Some(client) => tokio::time::timeout(CHECK_TIMEOUT, client.ping::<String>(None))
            .await
            .is_ok_and(|r| r.is_ok()),
        None => true,
    }
}

async fn health_ready(State(state): State<HealthState>) -> (StatusCode, Json<HealthBody>) {
    let (db, redis) = tokio::join!(db_ok(&state), redis_ok(&state));
    let now = chrono::Utc::now().timestamp_millis();
    let ready = state.ready.observe(db && redis, now);
    answer(&state, ready)
}

async fn health_redis(State(state): State<HealthState>) -> (StatusCode, Json<HealthBody>) {
    let ok = match &state.redis {
        Some(client) => tokio::time::timeout(CHECK_TIMEOUT, client.ping::<String>(None))
            .await
            .is_ok_and(|r| r.is_ok()),
        None => false,
    };
    answer(&state, ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_forgives_a_blip_not_an_outage() {
        let r = Readiness::new(Duration::from_secs(30));
        assert!(r.observe(true, 0));
        // Failing since 1 s: still ready at 20 s, not at 31 s.
        assert!(r.observe(false, 1_000));
        assert!(r.observe(false, 20_000));
        assert!(!r.observe(false, 31_001));
        // Back: ready at once, and a new failure starts a new grace period.
        assert!(r.observe(true, 32_000));
        assert!(r.observe(false, 40_000));
        assert!(r.observe(false, 69_000));
        assert!(!r.observe(false, 70_001));
        // No grace: the first failure counts.
        assert!(!Readiness::new(Duration::ZERO).observe(false, 5));
    }
}
