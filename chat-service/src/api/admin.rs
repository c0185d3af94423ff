//! `/admin/*` of chat-service, for admins only (see [`shared::admin`]): every room with its
//! member count, any message deleted, any room's audit log.

use axum::{extract::State, http::StatusCode, Json};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use shared::{
    error::ErrorBody,
    extract::{bounded_int, ApiPath, ApiQuery},
    jwt::AuthUser,
    ApiError, ApiResult,
};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::moderation::{AuditPage, AuditQuery};
use crate::AppState;

/// A room as an admin sees it.
#[derive(Debug, Serialize, ToSchema, sqlx::FromRow)]
pub struct AdminRoom {
    pub id: Uuid,
    pub name: String,
    pub description: Option<String>,
    pub created_by: Uuid,
    pub created_at: DateTime<Utc>,
    pub member_count: i64,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RoomsQuery {
    /// Prefix of the name (case-insensitive).
    q: Option<String>,
    /// 1–500, default 100.
    #[param(value_type = Option<i64>)]
    limit: Option<String>,
    /// Rooms to skip (for the next page).
    #[param(value_type = Option<i64>)]
    offset: Option<String>,
}

/// `GET /admin/rooms`
#[utoipa::path(get, path = "/admin/rooms", operation_id = "admin_list_rooms", tag = "admin", security(("bearer" = [])),
    params(RoomsQuery),
    responses(
        (status = 200, description = "Rooms by member count, largest first", body = [AdminRoom]),
        (status = 403, description = "The caller is not an admin (`admin_required`)", body = ErrorBody),
        (status = 422, description = "Invalid parameters", body = ErrorBody),
    ))]
pub async fn rooms(
    State(state): State<AppState>,
    caller: AuthUser,
    ApiQuery(q): ApiQuery<RoomsQuery>,
) -> ApiResult<Json<Vec<AdminRoom>>> {
    shared::admin::require(&state.db, caller.user_id).await?;
    let limit = bounded_int("limit", q.limit.as_deref(), 100, 1..=500)?;
    let offset = bounded_int("offset", q.offset.as_deref(), 0, 0..=1_000_000)?;
    let prefix = q.q.as_deref().map(str::trim).unwrap_or_default();
    if prefix.chars().count() > 64 {
        return Err(ApiError::invalid_field(
            "q",
            "must be at most 64 characters",
        ));
    }
    let pattern = format!("{}%", shared::db::like_literal(&prefix.to_lowercase()));
    let rooms = sqlx::query_as::<_, AdminRoom>(
        r#"SELECT r.id, r.name, r.description, r.created_by, r.created_at,
                  r.member_count
           FROM rooms r WHERE lower(r.name) LIKE $1
           ORDER BY r.member_count DESC, lower(r.name) LIMIT $2 OFFSET $3"#,
    )
    .bind(pattern)
    .bind(limit)
    .bind(offset)
    .fetch_all(&state.db)
    .await?;
    Ok(Json(rooms))
}

/// `DELETE /admin/messages/{id}`
#[utoipa::path(delete, path = "/admin/messages/{id}", operation_id = "admin_delete_message", tag = "admin", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Message id")),
    responses(
        (status = 204, description = "Deleted as by its author (it stays in history, emptied; a `message_deleted` event goes out); in a room, the deletion is in its audit log"),
        (status = 403, description = "The caller is not an admin (`admin_required`)", body = ErrorBody),
        (status = 404, description = "No such message", body = ErrorBody),
    ))]
pub async fn delete_message(
    State(state): State<AppState>,
    caller: AuthUser,
    ApiPath(id): ApiPath<Uuid>,
) -> ApiResult<StatusCode> {
    shared::admin::require(&state.db, caller.user_id).await?;
    super::messages::delete_message(&state, caller.user_id, id, true).await
}

/// `GET /admin/rooms/{id}/audit`
#[utoipa::path(get, path = "/admin/rooms/{id}/audit", operation_id = "admin_audit_log", tag = "admin", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Room id"), AuditQuery),
    responses(
        (status = 200, description = "The room's moderation actions, newest first", body = AuditPage),
        (status = 403, description = "The caller is not an admin (`admin_required`)", body = ErrorBody),
        (status = 404, description = "No such room", body = ErrorBody),
        (status = 422, description = "Invalid parameters", body = ErrorBody),
    ))]
pub async fn audit_log(
    State(state): State<AppState>,
    caller: AuthUser,
    ApiPath(id): ApiPath<Uuid>,
    ApiQuery(q): ApiQuery<AuditQuery>,
) -> ApiResult<Json<AuditPage>> {
    shared::admin::require(&state.db, caller.user_id).await?;
    super::rooms::load(&state, id, caller.user_id).await?;
    super::moderation::audit_page(&state, id, q).await
}
