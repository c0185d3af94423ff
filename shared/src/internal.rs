//! The internal API chat-service offers gateways (never routed publicly: nginx and the ingress
//! expose `/chat`, `/auth` and `/ws` only). Gateways authenticate with a token of the internal
//! service identity ([`crate::jwt::JwtKeys::issue_internal`]: its own audience, the nil subject,
//! five minutes of life), which only holders of `SECRET_KEY` can mint; users' tokens are
//! refused here, and internal tokens everywhere else.

use std::sync::Arc;

use axum::{
    extract::{FromRef, FromRequestParts},
    http::request::Parts,
};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{
    chat::{ChatType, Message},
    error::ApiError,
    jwt::{bearer_token, JwtKeys},
};

/// A gateway calling chat-service's internal routes, holding one of the process's
/// [`InternalSlots`] for as long as the handler runs.
#[derive(Debug)]
pub struct ServiceCaller(#[allow(dead_code)] tokio::sync::OwnedSemaphorePermit);

/// How many internal calls a process serves at once (`INTERNAL_MAX_IN_FLIGHT`). Past it, a
/// call is refused at once with 503 and `Retry-After` rather than queued: when a gateway dies
/// and its thousands of clients reconnect elsewhere, each upgrade's conversation list and each
/// `sync` is an internal call, and a bounded, fast refusal (the client retries with backoff)
/// keeps the process answering instead of drowning.
#[derive(Debug, Clone)]
pub struct InternalSlots(pub Arc<tokio::sync::Semaphore>);

impl InternalSlots {
    pub fn new(max_in_flight: usize) -> Self {
        Self(Arc::new(tokio::sync::Semaphore::new(max_in_flight)))
    }
}

/// The subject of service tokens.
pub const SERVICE_SUBJECT: Uuid = Uuid::nil();

impl<S> FromRequestParts<S> for ServiceCaller
where
    Arc<JwtKeys>: FromRef<S>,
    InternalSlots: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let keys = Arc::<JwtKeys>::from_ref(state);
        match bearer_token(parts).map(|t| keys.verify_internal(t)) {
            Some(Ok(claims)) if claims.sub == SERVICE_SUBJECT => {}
            _ => {
                return Err(ApiError::unauthorized(
                    "invalid_token",
                    "internal routes need a service token",
                ))
            }
        }
        let InternalSlots(slots) = InternalSlots::from_ref(state);
        slots.try_acquire_owned().map(ServiceCaller).map_err(|_| {
            metrics::counter!("chat_internal_calls_shed_total").increment(1);
            ApiError::unavailable("busy", "too many internal calls at once; retry shortly")
        })
    }
}

/// A conversation a user belongs to, as a gateway needs it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Membership {
    pub conversation_id: Uuid,
    pub chat_type: ChatType,
    /// The room or group id; for a private chat, the other user.
    pub chat_id: Uuid,
    pub last_seq: i64,
}

/// `GET /internal/users/{id}/conversations`
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UserConversations {
    pub conversations: Vec<Membership>,
    /// Users who share a private chat or a group with this user (presence goes to them).
    pub contacts: Vec<Uuid>,
    /// Users this user blocked: their typing and presence are not passed on to this user.
    #[serde(default)]
    pub blocked: Vec<Uuid>,
}

/// One position of a `sync`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SyncPosition {
    pub chat_type: ChatType,
    pub chat_id: Uuid,
    pub seq: i64,
}

/// The most messages one `synced` frame carries.
pub const SYNC_PER_FRAME: usize = 5000;

/// About the most bytes of messages one `synced` frame carries (their JSON encoding, estimated
/// by [`Message::approx_encoded_len`]). 5,000 messages of the longest content would be some
/// 80 MB, held by chat-service, the gateway and the client's queue at once, for every sync a
/// client cares to repeat: a sync that reaches this much stops there, and `has_more` marks
/// every position cut short, as with the message count.
pub const SYNC_FRAME_BYTES: usize = 4 << 20;

/// `POST /internal/sync`: answered within [`SYNC_PER_FRAME`] and [`SYNC_FRAME_BYTES`] in all,
/// taking positions in order.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SyncRequest {
    pub user_id: Uuid,
    pub positions: Vec<SyncPosition>,
    /// Messages per conversation at most.
    pub limit: i64,
}

/// One conversation's answer to a sync.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SyncResult {
    pub chat_type: ChatType,
    pub chat_id: Uuid,
    /// `None` when the position was refused (see `error`).
    pub conversation_id: Option<Uuid>,
    pub messages: Vec<Message>,
    pub has_more: bool,
    /// `forbidden` or `not_found` when the user may not read it.
    pub error: Option<String>,
}

/// `POST /internal/sync` answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SyncResponse {
    pub results: Vec<SyncResult>,
}

/// `POST /internal/repair`: messages of conversations after given seqs (gap repair).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RepairRequest {
    /// `(conversation_id, after_seq)`; `after_seq` < 0 asks only for the current last seq.
    pub after: Vec<(Uuid, i64)>,
    pub limit: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RepairResult {
    pub conversation_id: Uuid,
    pub last_seq: i64,
    pub messages: Vec<Message>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RepairResponse {
    pub results: Vec<RepairResult>,
}

/// `POST /internal/read`
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReadRequest {
    pub user_id: Uuid,
    pub chat_type: ChatType,
    pub chat_id: Uuid,
    pub seq: i64,
    /// The connection that sent `mark_read` (its `session_id`): the `read` event spares it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
}
