//! The gateway's client for chat-service's internal API (see [`shared::internal`]).

use std::{sync::Arc, time::Duration};

use serde::{de::DeserializeOwned, Serialize};
use shared::{
    internal::{
        ReadRequest, RepairRequest, RepairResponse, SyncRequest, SyncResponse, UserConversations,
    },
    jwt::JwtKeys,
};
use uuid::Uuid;

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// chat-service refused (4xx): the code of its error body.
    #[error("{code}: {detail}")]
    Refused {
        code: String,
        detail: String,
        status: u16,
    },
    /// chat-service could not be reached or failed (5xx, timeout).
    #[error("chat-service unavailable: {0}")]
    Unavailable(String),
}

#[derive(Clone)]
pub struct ChatClient {
    http: reqwest::Client,
    base: Arc<str>,
    jwt: Arc<JwtKeys>,
}

impl ChatClient {
    pub fn new(base: &str, jwt: Arc<JwtKeys>) -> Result<Self, reqwest::Error> {
        Ok(Self {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .pool_max_idle_per_host(32)
                .build()?,
            base: base.trim_end_matches('/').into(),
            jwt,
        })
    }

    fn token(&self) -> Result<String, CallError> {
        self.jwt
            .issue_internal()
            .map(|t| t.token)
            .map_err(|e| CallError::Unavailable(e.to_string()))
    }

    async fn call<T: DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<Option<T>, CallError> {
        // The caller's trace goes on in chat-service.
        let response = shared::telemetry::inject_header(&tracing::Span::current(), request)
            .bearer_auth(self.token()?)
            .send()
            .await
            .map_err(|e| CallError::Unavailable(e.to_string()))?;
        let status = response.status();
        if status.is_success() {
            if status == reqwest::StatusCode::NO_CONTENT {
                return Ok(None);
            }
            return response
                .json()
                .await
                .map(Some)
                .map_err(|e| CallError::Unavailable(e.to_string()));
        }
        if status.is_server_error() {
            return Err(CallError::Unavailable(format!("status {status}")));
        }
        let body: shared::error::ErrorBody =
            response.json().await.unwrap_or(shared::error::ErrorBody {
                code: "invalid_payload".into(),
                detail: format!("status {status}"),
                fields: None,
            });
        Err(CallError::Refused {
            code: body.code,
            detail: body.detail,
            status: status.as_u16(),
        })
    }

    async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<Option<T>, CallError> {
        self.call(self.http.post(format!("{}{path}", self.base)).json(body))
            .await
    }

    /// The conversations a user belongs to, and who shares a private chat or group with them.
    pub async fn conversations(&self, user: Uuid) -> Result<UserConversations, CallError> {
        self.call(
            self.http
                .get(format!("{}/internal/users/{user}/conversations", self.base)),
        )
        .await?
        .ok_or_else(|| CallError::Unavailable("empty answer".into()))
    }

    pub async fn sync(&self, request: &SyncRequest) -> Result<SyncResponse, CallError> {
        self.post("/internal/sync", request)
            .await?
            .ok_or_else(|| CallError::Unavailable("empty answer".into()))
    }

    pub async fn repair(&self, request: &RepairRequest) -> Result<RepairResponse, CallError> {
        self.post("/internal/repair", request)
            .await?
            .ok_or_else(|| CallError::Unavailable("empty answer".into()))
    }

    pub async fn mark_read(&self, request: &ReadRequest) -> Result<(), CallError> {
        self.post::<_, serde_json::Value>("/internal/read", request)
            .await
            .map(|_| ())
    }
}
