//! Ending logins everywhere at once: a revocation is recorded for every process (REST checks
//! refuse the login's tokens from the next poll on, see [`shared::revocation`]) and published
//! on the user's channel, so the gateways holding the user's sockets close the affected ones
//! (4001) at once.

use shared::{
    chat::{batch_by_channel, Event},
    revocation::Revocation,
    ApiError,
};

use crate::AppState;

/// Revokes `revocation` and tells the gateways. Fails (503) only if Redis is unreachable: then
/// the refresh tokens are revoked already (Postgres), and the caller may retry.
pub async fn revoke(state: &AppState, revocation: Revocation) -> Result<(), ApiError> {
    revoke_all(state, &[revocation]).await
}

/// Revokes several logins or accounts at once: one record in Redis for them all, and one
/// publish per user (the user's revocations as one batch). Fails as [`revoke`] does.
pub async fn revoke_all(state: &AppState, revocations: &[Revocation]) -> Result<(), ApiError> {
    state.revocations.revoke_all(revocations).await?;
    let events = revocations
        .iter()
        .map(|r| {
            let event = Event::Revoked {
                user_id: r.user(),
                sid: match r {
                    Revocation::Session { sid, .. } => Some(*sid),
                    Revocation::Account { .. } => None,
                },
            };
            (state.keys().user_channel(r.user()), event)
        })
        .collect();
    for (channel, bytes) in batch_by_channel(events).map_err(ApiError::internal)? {
        shared::redis::publish(&state.redis, &channel, bytes).await?;
    }
    for r in revocations {
        metrics::counter!("auth_revocations_total", "kind" => match r {
            Revocation::Session { .. } => "session",
            Revocation::Account { .. } => "account",
        })
        .increment(1);
    }
    Ok(())
}
