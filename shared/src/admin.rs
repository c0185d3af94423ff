//! The admin role: `users.is_admin`, granted and revoked with `auth-service admin grant|revoke
//! USERNAME` (never over the API). Every `/admin/*` handler checks it against the database on
//! each call, so a revoked role or a deactivated admin stops working at once, whatever their
//! tokens say.

use axum::http::StatusCode;
use sqlx::PgPool;
use uuid::Uuid;

use crate::ApiError;

/// Refuses (403 `admin_required`) unless `user` is an active admin.
pub async fn require(db: &PgPool, user: Uuid) -> Result<(), ApiError> {
    let admin: Option<bool> =
        sqlx::query_scalar("SELECT is_admin AND is_active FROM users WHERE id = $1")
            .bind(user)
            .fetch_optional(db)
            .await?;
    if admin == Some(true) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "admin_required",
            "this needs the admin role",
        ))
    }
}

/// Grants (`on`) or revokes the role of the user named `username` (case-insensitively); false
/// when there is no such user.
pub async fn set_role(db: &PgPool, username: &str, on: bool) -> sqlx::Result<bool> {
    let done = sqlx::query("UPDATE users SET is_admin = $2 WHERE lower(username) = lower($1)")
        .bind(username)
        .bind(on)
        .execute(db)
        .await?;
    Ok(done.rows_affected() > 0)
}
