//! The caller of an endpoint whose effect reaches other people's sockets, besides sending:
//! edits and deletes, reactions, pins, joining and leaving rooms, group membership and room
//! moderation. Each such request is one event to every member of a conversation — 5,000
//! sockets in a hot room — so one user repeating them as fast as HTTP allows would fan out
//! more than the gateways can write for everyone. Each takes a token from the user's action
//! bucket (`ACTION_RATE_PER_SECOND`, `ACTION_BURST`), shared by every replica; past it, 429
//! `rate_limited` with `Retry-After`, and nothing is done.
//!
//! Sends have their own bucket (the contract's send rate), creations their hourly quotas;
//! `POST /chat/read` is not counted: its `read` events are already at most one per reader and
//! conversation a second.

use axum::{extract::FromRequestParts, http::request::Parts};
use shared::{jwt::AuthUser, ApiError};

use crate::AppState;

/// An authenticated caller whose request has been counted against their action bucket.
pub struct Acting(pub AuthUser);

impl FromRequestParts<AppState> for Acting {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let caller = AuthUser::from_request_parts(parts, state).await?;
        state.action_rate(caller.user_id).await?;
        Ok(Self(caller))
    }
}
