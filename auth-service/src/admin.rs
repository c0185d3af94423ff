//! `/admin/users`: find and deactivate users, for admins only (see [`shared::admin`]).

use axum::{
    extract::State,
    http::StatusCode,
    routing::{get, post},
    Json, Router,
};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use shared::{
    error::ErrorBody,
    extract::{bounded_int, ApiPath, ApiQuery},
    jwt::AuthUser,
    ApiError, ApiResult,
};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/admin/users", get(find_users))
        .route("/admin/users/{id}/deactivate", post(deactivate))
}

/// A user as an admin sees it: with the email, the admin flag, and deactivated ones too.
#[derive(Debug, Serialize, ToSchema, sqlx::FromRow)]
pub struct AdminUser {
    pub id: Uuid,
    pub username: String,
    pub email: String,
    pub display_name: String,
    pub is_active: bool,
    pub is_admin: bool,
    pub created_at: DateTime<Utc>,
    pub last_seen: Option<DateTime<Utc>>,
}

#[derive(Debug, Deserialize)]
pub struct FindQuery {
    q: Option<String>,
    limit: Option<String>,
}

/// `GET /admin/users?q=&limit=`
#[utoipa::path(get, path = "/admin/users", operation_id = "admin_find_users", tag = "admin", security(("bearer" = [])),
    params(
        ("q" = Option<String>, Query, description = "Prefix of a username, display name or email (case-insensitive); none lists the newest users"),
        ("limit" = Option<i64>, Query, description = "1–200, default 50"),
    ),
    responses(
        (status = 200, description = "Users, active or not, by username (newest first without `q`)", body = [AdminUser]),
        (status = 403, description = "The caller is not an admin (`admin_required`)", body = ErrorBody),
        (status = 422, description = "Invalid parameters", body = ErrorBody),
    ))]
pub async fn find_users(
    State(state): State<AppState>,
    caller: AuthUser,
    ApiQuery(query): ApiQuery<FindQuery>,
) -> ApiResult<Json<Vec<AdminUser>>> {
    shared::admin::require(&state.db, caller.user_id).await?;
    let limit = bounded_int("limit", query.limit.as_deref(), 50, 1..=200)?;
    let q = query.q.as_deref().map(str::trim).unwrap_or_default();
    if q.chars().count() > 64 {
        return Err(ApiError::invalid_field(
            "q",
            "must be at most 64 characters",
        ));
    }
    let found = if q.is_empty() {
        sqlx::query_as::<_, AdminUser>(
            "SELECT id, username, email, display_name, is_active, is_admin, created_at, last_seen
             FROM users ORDER BY created_at DESC LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&state.db)
        .await?
    } else {
        sqlx::query_as::<_, AdminUser>(
            r#"SELECT id, username, email, display_name, is_active, is_admin, created_at, last_seen
               FROM users
               WHERE lower(username) LIKE $1 OR lower(display_name) LIKE $1 OR lower(email) LIKE $1
               ORDER BY lower(username) COLLATE "C" LIMIT $2"#,
        )
        .bind(crate::users::like_prefix(q))
        .bind(limit)
        .fetch_all(&state.db)
        .await?
    };
    Ok(Json(found))
}

/// `POST /admin/users/{id}/deactivate`
#[utoipa::path(post, path = "/admin/users/{id}/deactivate", operation_id = "admin_deactivate_user", tag = "admin", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "User id")),
    responses(
        (status = 204, description = "Deactivated, as by `DELETE /auth/me`: every login revoked, every socket of the user closed within 5 s (4001), and later calls with its tokens answer 401 `account_disabled`. Deactivating twice is harmless."),
        (status = 403, description = "The caller is not an admin, or names itself", body = ErrorBody),
        (status = 404, description = "No such user", body = ErrorBody),
    ))]
pub async fn deactivate(
    State(state): State<AppState>,
    caller: AuthUser,
    ApiPath(id): ApiPath<Uuid>,
) -> ApiResult<StatusCode> {
    shared::admin::require(&state.db, caller.user_id).await?;
    if id == caller.user_id {
        return Err(ApiError::forbidden(
            "an admin does not deactivate itself here (DELETE /auth/me does)",
        ));
    }
    if crate::users::find(&state.db, id).await?.is_none() {
        return Err(ApiError::not_found("no such user"));
    }
    crate::api::end_account(&state, id).await?;
    tracing::info!(admin = %caller.user_id, user = %id, "account deactivated by an admin");
    Ok(StatusCode::NO_CONTENT)
}
