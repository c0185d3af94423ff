//! API documentation routes: `/openapi.json` (generated from the code by utoipa; a service may
//! serve a richer one, see chat-service's combined document), `/docs` (an interactive Scalar
//! page) and `/redoc` (a ReDoc page). Both pages are small embedded HTML that load their viewer
//! script from this same service (`/docs/assets/...`, the npm packages `scripts/docs-assets`
//! installs under `web/docs`, found through `DOCS_ASSETS_DIR`) and read `/openapi.json` from
//! the same origin, so they work without internet access and, behind the proxy, show the
//! combined document.

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
<noscript>The API document is at <a href="/openapi.json">/openapi.json</a>.</noscript>
<script src="/docs/assets/scalar.js" onerror="document.body.insertAdjacentHTML('beforeend','<p>The documentation viewer is not installed here (run scripts/docs-assets). The document is at <a href=/openapi.json>/openapi.json</a>.</p>')"></script>
</body></html>"#;

const REDOC_PAGE: &str = r#"<!doctype html>
<html><head><meta charset="utf-8"><title>ChatSphere API</title>
<meta name="viewport" content="width=device-width, initial-scale=1"></head>
<body><redoc spec-url="/openapi.json"></redoc>
<noscript>The API document is at <a href="/openapi.json">/openapi.json</a>.</noscript>
<script src="/docs/assets/redoc.js" onerror="document.body.insertAdjacentHTML('beforeend','<p>The documentation viewer is not installed here (run scripts/docs-assets). The document is at <a href=/openapi.json>/openapi.json</a>.</p>')"></script>
</body></html>"#;

/// The viewers' scripts, by the name the pages use, inside `DOCS_ASSETS_DIR` (default
/// `web/docs/node_modules`, where `scripts/docs-assets` installs them).
const ASSETS: [(&str, &str); 2] = [
    (
        "scalar.js",
        "@scalar/api-reference/dist/browser/standalone.js",
    ),
    ("redoc.js", "redoc/bundles/redoc.standalone.js"),
];

async fn asset(axum::extract::Path(name): axum::extract::Path<String>) -> axum::response::Response {
    use axum::{http::header, response::IntoResponse};
    let dir = std::env::var("DOCS_ASSETS_DIR").unwrap_or_else(|_| "web/docs/node_modules".into());
    let Some((_, file)) = ASSETS.iter().find(|(n, _)| *n == name) else {
        return crate::ApiError::not_found("no such asset").into_response();
    };
    match tokio::fs::read(std::path::Path::new(&dir).join(file)).await {
        Ok(bytes) => (
            [
                (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
                (header::CACHE_CONTROL, "public, max-age=86400"),
            ],
            bytes,
        )
            .into_response(),
        Err(_) => crate::ApiError::not_found(
            "the documentation viewer is not installed here: run scripts/docs-assets (or set DOCS_ASSETS_DIR)",
        )
        .into_response(),
    }
}

/// `/docs`, `/redoc` and their viewers' scripts.
pub fn pages<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/docs", get(|| async { Html(SCALAR_PAGE) }))
        .route("/redoc", get(|| async { Html(REDOC_PAGE) }))
        .route("/docs/assets/{name}", get(asset))
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
/// Statuses an operation already documents are left as they are. Summaries that are a route
/// in backticks lose the backticks. Use it as
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
                // Handlers' doc comments start with their route in backticks (`GET /x`), which
                // viewers would print with the backticks.
                if let Some(summary) = op.summary.as_mut() {
                    if summary.len() > 2 && summary.starts_with('`') && summary.ends_with('`') {
                        *summary = summary.trim_matches('`').to_owned();
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use utoipa::openapi::{
        path::{HttpMethod, OperationBuilder, PathItem},
        request_body::RequestBodyBuilder,
        security::SecurityRequirement,
        OpenApiBuilder, PathsBuilder, ResponseBuilder,
    };

    use super::*;

    fn statuses(doc: &OpenApi, path: &str) -> Vec<String> {
        let item = &doc.paths.paths[path];
        let op = item.post.as_ref().or(item.get.as_ref()).unwrap();
        op.responses.responses.keys().cloned().collect()
    }

    #[test]
    fn operations_get_the_statuses_the_shared_layers_answer() {
        let secured_with_body = OperationBuilder::new()
            .summary(Some("`POST /things/{id}`"))
            .security(SecurityRequirement::new("bearer", Vec::<String>::new()))
            .request_body(Some(RequestBodyBuilder::new().build()))
            .response("201", ResponseBuilder::new().description("made").build())
            .response(
                "422",
                ResponseBuilder::new().description("own words").build(),
            )
            .build();
        let open = OperationBuilder::new()
            .response("200", ResponseBuilder::new().description("ok").build())
            .build();
        let mut doc = OpenApiBuilder::new()
            .paths(
                PathsBuilder::new()
                    .path(
                        "/things/{id}",
                        PathItem::new(HttpMethod::Post, secured_with_body),
                    )
                    .path("/health", PathItem::new(HttpMethod::Get, open)),
            )
            .build();
        CommonErrors.modify(&mut doc);
        assert_eq!(
            statuses(&doc, "/things/{id}"),
            ["201", "400", "401", "404", "413", "415", "422", "503"]
        );
        let op = doc.paths.paths["/things/{id}"].post.as_ref().unwrap();
        match &op.responses.responses["422"] {
            utoipa::openapi::RefOr::T(r) => assert_eq!(r.description, "own words", "kept"),
            utoipa::openapi::RefOr::Ref(_) => panic!("a reference where the operation had its own"),
        }
        assert_eq!(op.summary.as_deref(), Some("POST /things/{id}"));
        assert_eq!(statuses(&doc, "/health"), ["200", "503"]);
    }
}
