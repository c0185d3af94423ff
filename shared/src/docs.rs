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

/// Documents, on every operation, the error answers that come from the shared layers rather
/// than from the handler, so the document lists every status a client can receive: 401 when
/// it needs a token; 400 (malformed JSON), 413 (too large) and 415 (not JSON) when it takes a
/// body; 422 when it takes parameters or a body (a value that does not parse or validate); 404
/// when its path names something; 503 when a dependency is down. Each with the error body.
/// Statuses an operation already documents are left as they are. Use it as
/// `#[openapi(modifiers(&BearerAuth, &CommonErrors))]`.
pub struct CommonErrors;

impl CommonErrors {
    fn error(description: &str) -> utoipa::openapi::RefOr<utoipa::openapi::Response> {
        use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
        ResponseBuilder::new()
            .description(description)
            .content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("ErrorBody")))
                    .build(),
            )
            .build()
            .into()
    }
}

impl Modify for CommonErrors {
    fn modify(&self, openapi: &mut OpenApi) {
        let global_security = openapi.security.as_ref().is_some_and(|s| !s.is_empty());
        for (path, item) in openapi.paths.paths.iter_mut() {
            let names_something = path.contains('{');
            let operations = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
            ];
            for op in operations.into_iter().flatten() {
                let secured = op
                    .security
                    .as_ref()
                    .map_or(global_security, |s| !s.is_empty());
                let has_body = op.request_body.is_some();
                let has_params =
                    names_something || op.parameters.as_ref().is_some_and(|p| !p.is_empty());
                let mut add = |status: &str, description: &str| {
                    op.responses
                        .responses
                        .entry(status.to_owned())
                        .or_insert_with(|| Self::error(description));
                };
                if secured {
                    add("401", "No valid access token (`invalid_token`)");
                }
                if has_body {
                    add("400", "The body is not well-formed JSON (`invalid_json`)");
                    add(
                        "413",
                        "The body is larger than MAX_BODY_BYTES (`payload_too_large`)",
                    );
                    add(
                        "415",
                        "The body is not `application/json` (`unsupported_media_type`)",
                    );
                }
                if has_body || has_params {
                    add(
                        "422",
                        "A parameter or field is missing or invalid; `fields` names each",
                    );
                }
                if names_something {
                    add("404", "Nothing by that id");
                }
                add(
                    "503",
                    "A dependency (Postgres, Redis, object storage) is unavailable; retry",
                );
            }
        }
    }
}
