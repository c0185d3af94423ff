//! The error half of the public contract: every REST error is
//! `{"code": "snake_case", "detail": "human sentence", "fields": {...}?}`.
//!
//! Client errors carry their own message. Database and internal failures are logged with their
//! cause and answered with a generic body, so nothing internal leaks.

use std::collections::BTreeMap;

use axum::{
    http::{header, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use serde::Serialize;

/// Shorthand for handler results.
pub type ApiResult<T> = Result<T, ApiError>;

/// The JSON body of every error response.
#[derive(Debug, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// Stable, machine-readable, snake_case.
    pub code: String,
    /// A sentence for humans.
    pub detail: String,
    /// On 422: each invalid field and what is wrong with it.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub fields: Option<BTreeMap<String, String>>,
}

/// An error that becomes a contract error response.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub detail: String,
    pub fields: Option<BTreeMap<String, String>>,
    /// Seconds for a `Retry-After` header (429, 503).
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        Self {
            status,
            code,
            detail: detail.into(),
            fields: None,
            retry_after: None,
        }
    }

    pub fn bad_request(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, detail)
    }

    pub fn unauthorized(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, code, detail)
    }

    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", detail)
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", detail)
    }

    pub fn conflict(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, code, detail)
    }

    pub fn payload_too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the request body is larger than {limit} bytes"),
        )
    }

    pub fn unsupported_media_type(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            detail,
        )
    }

    /// 422 naming each bad field.
    pub fn validation(fields: BTreeMap<String, String>) -> Self {
        let names: Vec<&str> = fields.keys().map(String::as_str).collect();
        let mut e = Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_error",
            format!("invalid fields: {}", names.join(", ")),
        );
        e.fields = Some(fields);
        e
    }

    /// 422 for one field.
    pub fn invalid_field(field: impl Into<String>, problem: impl Into<String>) -> Self {
        Self::validation(BTreeMap::from([(field.into(), problem.into())]))
    }

    pub fn too_many_requests(detail: impl Into<String>, retry_after_secs: u64) -> Self {
        let mut e = Self::new(StatusCode::TOO_MANY_REQUESTS, "too_many_requests", detail);
        e.retry_after = Some(retry_after_secs.max(1));
        e
    }

    pub fn unavailable(code: &'static str, detail: impl Into<String>) -> Self {
        let mut e = Self::new(StatusCode::SERVICE_UNAVAILABLE, code, detail);
        e.retry_after = Some(1);
        e
    }

    /// A failure that is our fault. The cause is logged here; the client sees a generic body.
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "an internal error occurred",
        )
    }

    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            code: self.code.to_owned(),
            detail: self.detail.clone(),
            fields: self.fields.clone(),
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.status.as_u16(), self.code, self.detail)
    }
}

impl std::error::Error for ApiError {}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.body())).into_response();
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// Whether a database error may go away on retry: the pool or the connection failed, the
/// server is starting or stopping or out of resources, or the transaction lost a race
/// (serialization failure, deadlock). Anything else — a refused value, a violated constraint,
/// a bug in a statement — fails the same way every time.
pub fn is_transient(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            // 08: connection exception; 40: transaction rollback (40001 serialization,
            // 40P01 deadlock); 53: insufficient resources; 57P0x: shutting down, cannot connect now.
            code.starts_with("08")
                || code.starts_with("40")
                || code.starts_with("53")
                || code.starts_with("57P0")
        }),
        _ => false,
    }
}

/// The contract's WebSocket error code for an error answered over REST with `status` and
/// `code`: the one mapping the gateway and chat-service share.
pub fn ws_code(status: u16, code: &str) -> &'static str {
    match (status, code) {
        (_, "send_failed") => "send_failed",
        (_, "blocked") => "blocked",
        (_, "muted") => "muted",
        (_, "banned") => "banned",
        (403, _) => "forbidden",
        (404, _) => "not_found",
        (429, _) => "rate_limited",
        (503, _) => "unavailable",
        (500..=599, _) => "send_failed",
        _ => "invalid_payload",
    }
}

impl ApiError {
    /// A send that cannot be stored for a reason that will not change on retry (422).
    pub fn send_failed(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "send_failed", detail)
    }

    /// Whether retrying may succeed: a dependency is unavailable (503).
    pub fn is_transient(&self) -> bool {
        self.status == StatusCode::SERVICE_UNAVAILABLE
    }

    /// This error's WebSocket code ([`ws_code`]).
    pub fn ws_code(&self) -> &'static str {
        ws_code(self.status.as_u16(), self.code)
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        if is_transient(&e) {
            tracing::warn!(error = %e, "database unavailable");
            Self::unavailable(
                "database_unavailable",
                "the database is unavailable, retry shortly",
            )
        } else {
            Self::internal(format_args!("database: {e}"))
        }
    }
}

impl From<fred::error::Error> for ApiError {
    fn from(e: fred::error::Error) -> Self {
        tracing::warn!(error = %e, "redis unavailable");
        Self::unavailable("redis_unavailable", "redis is unavailable, retry shortly")
    }
}

/// The name of the unique constraint a database error violated, if that is what it is.
pub fn unique_violation(e: &sqlx::Error) -> Option<&str> {
    match e {
        sqlx::Error::Database(db) if db.is_unique_violation() => db.constraint(),
        _ => None,
    }
}
