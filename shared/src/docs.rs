//! API documentation routes: `/openapi.json` (generated from the code by utoipa), `/docs`
//! (an interactive Scalar page) and `/redoc` (a ReDoc page). The pages are embedded HTML; the
//! browser loads their scripts, nothing is downloaded at build time.

use axum::{response::Html, routing::get, Json, Router};
use utoipa::{
    openapi::{
        security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
        OpenApi,
    },
    Modify,
};
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
