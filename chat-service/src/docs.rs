//! The combined OpenAPI document. chat-service's `/openapi.json` is its own description merged
//! with auth-service's (fetched from `AUTH_SERVICE_URL`, cached for a minute), so the proxy's
//! `/openapi.json`, `/docs` and `/redoc` cover the whole public API in one document. If
//! auth-service cannot be reached the chat endpoints alone are served.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use axum::{extract::State, routing::get, Json, Router};
use tokio::sync::Mutex;
use utoipa::{openapi::OpenApi as Document, OpenApi};

use crate::api::ApiDoc;

const CACHE_FOR: Duration = Duration::from_secs(60);

#[derive(Clone)]
pub struct Combined {
    auth_url: Option<Arc<str>>,
    http: reqwest::Client,
    cached: Arc<Mutex<Option<(Instant, Document)>>>,
}

impl Combined {
    pub fn new(auth_url: Option<String>) -> Self {
        Self {
            auth_url: auth_url.map(|u| u.trim_end_matches('/').into()),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(2))
                .build()
                .unwrap_or_default(),
            cached: Arc::new(Mutex::new(None)),
        }
    }

    async fn auth_document(&self) -> Option<Document> {
        let url = self.auth_url.as_deref()?;
        let mut cached = self.cached.lock().await;
        if let Some((at, doc)) = cached.as_ref() {
            if at.elapsed() < CACHE_FOR {
                return Some(doc.clone());
            }
        }
        let fetched = async {
            let r = self
                .http
                .get(format!("{url}/openapi.json"))
                .send()
                .await
                .ok()?;
            r.error_for_status().ok()?.json::<Document>().await.ok()
        }
        .await;
        match fetched {
            Some(doc) => {
                *cached = Some((Instant::now(), doc.clone()));
                Some(doc)
            }
            None => {
                tracing::warn!("auth-service's OpenAPI document is unavailable; serving chat only");
                cached.as_ref().map(|(_, d)| d.clone())
            }
        }
    }

    /// The whole public API.
    pub async fn document(&self) -> Document {
        let mut doc = ApiDoc::openapi();
        if let Some(auth) = self.auth_document().await {
            doc.merge(auth);
        }
        doc.info.title = "ChatSphere API".into();
        doc.info.description = Some("Accounts and tokens (auth-service) and chat (chat-service). WebSockets: see the README.".into());
        doc
    }
}

async fn combined(State(c): State<Combined>) -> Json<Document> {
    Json(c.document().await)
}

/// The AsyncAPI document of the WebSocket protocol, its object schemas taken from this
/// service's OpenAPI document (see [`shared::asyncapi`]).
pub fn asyncapi_document() -> serde_json::Value {
    let schemas = serde_json::to_value(ApiDoc::openapi().components)
        .ok()
        .and_then(|c| c.get("schemas").cloned())
        .unwrap_or_default();
    shared::asyncapi::document(env!("CARGO_PKG_VERSION"), schemas)
}

async fn asyncapi() -> Json<serde_json::Value> {
    static DOCUMENT: std::sync::OnceLock<serde_json::Value> = std::sync::OnceLock::new();
    Json(DOCUMENT.get_or_init(asyncapi_document).clone())
}

/// `/openapi.json` (combined), `/asyncapi.json`, `/docs` and `/redoc`.
pub fn router<S: Clone + Send + Sync + 'static>(combined_docs: Combined) -> Router<S> {
    shared::docs::pages().merge(
        Router::new()
            .route("/openapi.json", get(combined))
            .route("/asyncapi.json", get(asyncapi))
            .with_state(combined_docs),
    )
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    /// Generated clients name a method after each operation id: two alike break them.
    #[test]
    fn operation_ids_are_unique() {
        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or_default();
        let mut seen: HashMap<String, String> = HashMap::new();
        for (path, ops) in doc["paths"].as_object().into_iter().flatten() {
            for (method, op) in ops.as_object().into_iter().flatten() {
                if let Some(id) = op["operationId"].as_str() {
                    let here = format!("{method} {path}");
                    if let Some(before) = seen.insert(id.to_owned(), here.clone()) {
                        panic!("operation id {id:?} is used by {before} and {here}");
                    }
                }
            }
        }
        assert!(seen.len() > 30, "{}", seen.len());
    }

    #[test]
    fn the_asyncapi_document_uses_the_openapi_schemas() {
        let doc = asyncapi_document();
        for schema in [
            "Message",
            "ChatType",
            "MessageType",
            "Reaction",
            "Attachment",
        ] {
            assert!(
                doc["components"]["schemas"].get(schema).is_some(),
                "{schema} is missing"
            );
        }
    }
}
