//! `/health`, `/health/db`, `/health/redis` and `/metrics`, the same on every service.

use std::time::Duration;

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

async fn health_redis(State(state): State<HealthState>) -> (StatusCode, Json<HealthBody>) {
    let ok = match &state.redis {
        Some(client) => tokio::time::timeout(CHECK_TIMEOUT, client.ping::<String>(None))
            .await
            .is_ok_and(|r| r.is_ok()),
        None => false,
    };
    answer(&state, ok)
}
