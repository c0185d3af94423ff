//! API documentation routes: `/openapi.json` (generated from the code by utoipa; a service may
//! serve a richer one, see chat-service's combined document), `/docs` (an interactive Scalar
//! page) and `/redoc` (a ReDoc page). Both pages are small embedded HTML that load their viewer
//! script in the browser and read `/openapi.json` from the same origin, so behind the proxy they
//! show the combined document. Nothing is downloaded at build time.

use axum::{response::Html, routing::get, Json, Router};
use utoipa::{
    openapi::{
        security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
        OpenApi,
    },
    Modify,
};

const SCALAR_PAGE: &str = r#"<!doctype html>
<html><head><meta charset="utf-8"><title>ChatSphere API</title>
<meta name="viewport" content="width=device-width, initial-scale=1"></head>
<body><script id="api-reference" data-url="/openapi.json"></script>
<script src="https://cdn.jsdelivr.net/npm/@scalar/api-reference"></script>
</body></html>"#;

const REDOC_PAGE: &str = r#"<!doctype html>
<html><head><meta charset="utf-8"><title>ChatSphere API</title>
<meta name="viewport" content="width=device-width, initial-scale=1"></head>
<body><redoc spec-url="/openapi.json"></redoc>
<script src="https://cdn.redoc.ly/redoc/latest/bundles/redoc.standalone.js"></script>
</body></html>"#;

/// `/docs` and `/redoc`.
pub fn pages<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/docs", get(|| async { Html(SCALAR_PAGE) }))
        .route("/redoc", get(|| async { Html(REDOC_PAGE) }))
}

/// The pages plus `/openapi.json` serving `openapi`.
pub fn router<S: Clone + Send + Sync + 'static>(openapi: OpenApi) -> Router<S> {
    let json = Json(openapi);
    pages().route("/openapi.json", get(move || async move { json }))
}

/// Declares the `bearer` (JWT) security scheme that authenticated endpoints name with
/// `security(("bearer" = []))`. Use it as `#[openapi(modifiers(&BearerAuth))]`.
pub struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}
