//! The layers every REST router gets, so each service answers the same way at its edges:
//! CORS for `ALLOWED_ORIGINS`, a request-body limit (413), JSON 404 and 405, a JSON 500 should a
//! handler ever panic, request metrics, and request spans that never record query strings
//! (they can carry tokens).

use std::time::Duration;

use axum::{
    extract::{DefaultBodyLimit, Request},
    http::{header, HeaderName, HeaderValue, Method, StatusCode},
    middleware,
    response::{IntoResponse, Response},
    Router,
};
use tower_http::{
    catch_panic::CatchPanicLayer,
    cors::{AllowOrigin, CorsLayer},
    trace::TraceLayer,
};

use crate::error::ApiError;

/// Settings for [`finish`].
#[derive(Debug, Clone)]
pub struct EdgeConfig {
    /// Origins allowed by CORS; `*` allows any.
    pub allowed_origins: Vec<String>,
    /// The largest request body accepted, in bytes.
    pub max_body_bytes: usize,
}

/// Wraps a service's complete router with the shared edge layers.
pub fn finish(router: Router, edge: &EdgeConfig) -> Router {
    // Install the recorder before the first request so no early sample is lost.
    crate::metrics::handle();
    router
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(edge.max_body_bytes))
        .layer(middleware::from_fn(crate::metrics::track_http))
        .layer(cors(&edge.allowed_origins))
        .layer(CatchPanicLayer::custom(|_| {
            ApiError::internal("a handler panicked").into_response()
        }))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(request_span)
                .on_response(|res: &Response, _latency: Duration, span: &tracing::Span| {
                    span.record("status", res.status().as_u16());
                })
                .on_failure(log_failure),
        )
}

/// A request's span, named (in traces) by its method and route — never by its query string,
/// which can carry tokens. It continues the trace of the request's `traceparent` header.
fn request_span(req: &Request) -> tracing::Span {
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|p| p.as_str());
    let span = tracing::info_span!(
        "http",
        otel.name = %format_args!("{} {}", req.method(), route.unwrap_or("")),
        otel.kind = "server",
        method = %req.method(),
        path = %req.uri().path(),
        status = tracing::field::Empty,
        trace_id = tracing::field::Empty,
    );
    crate::telemetry::continue_from_headers(&span, req.headers());
    span
}

/// Logs a 5xx or a failed response at error level — except 503, the deliberate shedding of
/// load (a busy gateway during a reconnect storm answers thousands a second; logging each one
/// would cost the CPU the shedding saves). 503s are still counted in `http_requests_total`.
fn log_failure(
    class: tower_http::classify::ServerErrorsFailureClass,
    latency: std::time::Duration,
    _span: &tracing::Span,
) {
    use tower_http::classify::ServerErrorsFailureClass;
    match class {
        ServerErrorsFailureClass::StatusCode(StatusCode::SERVICE_UNAVAILABLE) => {
            tracing::debug!(
                latency_ms = latency.as_millis() as u64,
                "response shed (503)"
            );
        }
        class => {
            tracing::error!(classification = %class, latency_ms = latency.as_millis() as u64, "response failed");
        }
    }
}

/// CORS for the configured origins only.
pub fn cors(origins: &[String]) -> CorsLayer {
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(
            origins
                .iter()
                .filter_map(|o| HeaderValue::from_str(o.trim_end_matches('/')).ok()),
        )
    };
    CorsLayer::new()
        .allow_origin(allow)
        .allow_methods([
            Method::GET,
            Method::POST,
            Method::PATCH,
            Method::PUT,
            Method::DELETE,
            Method::OPTIONS,
        ])
        .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE, header::ACCEPT])
        .expose_headers([header::RETRY_AFTER, HeaderName::from_static("x-request-id")])
        .max_age(Duration::from_secs(600))
}

async fn not_found(req: Request) -> Response {
    ApiError::not_found(format!(
        "no route for {} {}",
        req.method(),
        req.uri().path()
    ))
    .into_response()
}

async fn method_not_allowed(req: Request) -> Response {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{} is not allowed on {}", req.method(), req.uri().path()),
    )
    .into_response()
}
