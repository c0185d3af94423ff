//! Ending logins everywhere at once: a revocation is recorded for every process (REST checks
//! refuse the login's tokens from the next poll on, see [`shared::revocation`]) and published
//! on the user's channel, so the gateways holding the user's sockets close the affected ones
//! (4001) at once.

use shared::{
    chat::{encode, Event},
    revocation::Revocation,
    ApiError,
};

use crate::AppState;

/// Revokes `revocation` and tells the gateways. Fails (503) only if Redis is unreachable: then
/// the refresh tokens are revoked already (Postgres), and the caller may retry.
pub async fn revoke(state: &AppState, revocation: Revocation) -> Result<(), ApiError> {
    state.revocations.revoke(revocation).await?;
    let event = Event::Revoked {
        user_id: revocation.user(),
        sid: match revocation {
            Revocation::Session { sid, .. } => Some(sid),
            Revocation::Account { .. } => None,
        },
    };
    let bytes = encode(&event).map_err(ApiError::internal)?;
    shared::redis::publish(
        &state.redis,
        &state.keys().user_channel(revocation.user()),
        bytes,
    )
    .await?;
    metrics::counter!("auth_revocations_total", "kind" => match revocation {
        Revocation::Session { .. } => "session",
        Revocation::Account { .. } => "account",
    })
    .increment(1);
    Ok(())
}
