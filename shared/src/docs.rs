//! API documentation routes: `/openapi.json` (generated from the code by utoipa), `/docs`
//! (an interactive Scalar page) and `/redoc` (a ReDoc page). The pages are embedded HTML; the
//! browser loads their scripts, nothing is downloaded at build time.

use axum::{response::Html, routing::get, Json, Router};
use utoipa::openapi::OpenApi;
use utoipa_scalar::{Scalar, Servable};

const REDOC_PAGE: &str = r#"<!doctype html>
<html><head><meta charset="utf-8"><title>ChatSphere API</title>
<meta name="viewport" content="width=device-width, initial-scale=1"></head>
<body><redoc spec-url="/openapi.json"></redoc>
<script src="https://cdn.redoc.ly/redoc/latest/bundles/redoc.standalone.js"></script>
</body></html>"#;

/// The documentation routes for `openapi`.
pub fn router<S: Clone + Send + Sync + 'static>(openapi: OpenApi) -> Router<S> {
    let json = Json(openapi.clone());
    Router::new()
        .route("/openapi.json", get(move || async move { json }))
        .route("/redoc", get(|| async { Html(REDOC_PAGE) }))
        .merge(Scalar::with_url("/docs", openapi))
}
