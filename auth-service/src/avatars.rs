//! Avatars: `PUT /auth/me/avatar` takes an image upload of the caller's (`POST
//! /chat/uploads`), stores a resized copy, and points `avatar_url` at `GET
//! /auth/avatars/{id}`, which redirects to a short-lived URL of that copy. Avatars are public,
//! like usernames.

use axum::{
    extract::State,
    http::{header, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use serde::Deserialize;
use shared::{
    error::ErrorBody,
    extract::{ApiJson, ApiPath},
    jwt::AuthUser,
    storage, ApiError, ApiResult,
};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::{users::UserBody, AppState};

/// The object key of the avatar made from upload `id`.
pub fn avatar_key(id: Uuid) -> String {
    format!("avatars/{id}")
}

/// Avatars are resized to at most this many pixels on either side.
pub const AVATAR_SIDE: u32 = 256;

#[derive(Debug, Deserialize, ToSchema)]
pub struct AvatarRequest {
    /// An image upload of the caller's, not used yet.
    pub upload_id: Uuid,
}

fn unusable(detail: impl Into<String>) -> ApiError {
    ApiError::invalid_field("upload_id", detail)
}

/// `PUT /auth/me/avatar`
#[utoipa::path(put, path = "/auth/me/avatar", tag = "auth", security(("bearer" = [])), request_body = AvatarRequest,
    responses(
        (status = 200, description = "The caller, `avatar_url` pointing at the resized copy (at most 256 pixels a side); others who share a conversation with the caller get `user_updated`, as after `PATCH /auth/me`", body = UserBody),
        (status = 422, description = "Not an image upload of the caller's, used already, expired, or the stored file is not as declared", body = ErrorBody),
        (status = 429, description = "`too_many_requests`: past `PROFILE_UPDATES_PER_HOUR`, shared with `PATCH /auth/me`; see Retry-After", body = ErrorBody),
        (status = 503, description = "Object storage unavailable", body = ErrorBody),
    ))]
pub async fn set_avatar(
    State(state): State<AppState>,
    caller: AuthUser,
    ApiJson(req): ApiJson<AvatarRequest>,
) -> ApiResult<Json<UserBody>> {
    let Some(u) = sqlx::query!(
        r#"SELECT owner_id, content_type, size, object_key, used_at, expires_at < now() AS "expired!"
           FROM uploads WHERE id = $1"#,
        req.upload_id
    )
    .fetch_optional(&state.db)
    .await?
    else {
        return Err(unusable("no such upload"));
    };
    if u.owner_id != caller.user_id {
        return Err(unusable("is not an upload of yours"));
    }
    if u.used_at.is_some() {
        return Err(unusable("was used already (an upload is used once)"));
    }
    if u.expired {
        return Err(unusable("has expired; upload the file again"));
    }
    if !u.content_type.starts_with("image/") || !state.config.uploads.allows(&u.content_type) {
        return Err(unusable("an avatar must be an image"));
    }
    let declared = u64::try_from(u.size).unwrap_or(0);
    if let Some(problem) = state
        .storage
        .check_declared(&u.object_key, &u.content_type, declared)
        .await?
    {
        return Err(unusable(problem));
    }
    crate::api::profile_quota(&state, caller.user_id).await?;
    let slot = storage::DecodeSlot::acquire().await;
    // At most the size just checked: the client may have written to its URL since.
    let bytes = match state.storage.get_at_most(&u.object_key, declared).await {
        Err(storage::StorageError::TooLarge(_)) => {
            return Err(unusable("the stored file changed after it was checked"))
        }
        read => read?,
    };
    let (_, _, small) = storage::shrink_image(slot, bytes, AVATAR_SIDE)
        .await
        .map_err(|e| unusable(format!("the image could not be read: {e}")))?;
    let key = avatar_key(req.upload_id);
    state.storage.put(&key, small, "image/png").await?;
    let url = format!(
        "{}/auth/avatars/{}",
        state.config.public_url(),
        req.upload_id
    );
    let mut tx = state.db.begin().await?;
    let claimed = sqlx::query!(
        "UPDATE uploads SET used_at = now(), file_key = $2 WHERE id = $1 AND used_at IS NULL",
        req.upload_id,
        key
    )
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if claimed == 0 {
        return Err(unusable("was used already (an upload is used once)"));
    }
    let previous = sqlx::query_scalar!(
        r#"UPDATE users u SET avatar_url = $2, avatar_upload_id = $3
           FROM (SELECT avatar_upload_id FROM users WHERE id = $1 FOR UPDATE) old
           WHERE u.id = $1 AND u.is_active
           RETURNING old.avatar_upload_id"#,
        caller.user_id,
        url,
        req.upload_id
    )
    .fetch_optional(&mut *tx)
    .await?
    .ok_or_else(|| ApiError::unauthorized("invalid_token", "the account is deactivated"))?;
    // The previous copy is no longer pointed at: deleted by chat-service's removal sweep.
    if let Some(old) = previous {
        storage::queue_removal(&mut *tx, &[avatar_key(old)]).await?;
    }
    tx.commit().await?;
    state.announcer.changed(caller.user_id);
    let user = crate::users::find(&state.db, caller.user_id)
        .await?
        .ok_or_else(|| ApiError::not_found("no such user"))?;
    Ok(Json(user.own()))
}

/// `GET /auth/avatars/{id}`
#[utoipa::path(get, path = "/auth/avatars/{id}", tag = "auth",
    params(("id" = Uuid, Path, description = "The id in an `avatar_url`")),
    responses(
        (status = 302, description = "To a short-lived URL of the PNG"),
        (status = 404, description = "No such avatar (replaced, or never set)", body = ErrorBody),
    ))]
pub async fn serve(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<Uuid>,
) -> ApiResult<Response> {
    let current = sqlx::query_scalar!(
        r#"SELECT EXISTS (SELECT 1 FROM users WHERE avatar_upload_id = $1 AND is_active) AS "current!""#,
        id
    )
    .fetch_one(&state.db)
    .await?;
    if !current {
        return Err(ApiError::not_found("no such avatar"));
    }
    let ttl = state.config.uploads.download_ttl;
    let url = state
        .storage
        .download_url(
            &avatar_key(id),
            ttl,
            &storage::Served {
                content_type: "image/png",
                filename: "avatar.png",
            },
        )
        .await?;
    let location = HeaderValue::from_str(&url)
        .map_err(|_| ApiError::internal("a signed URL is not a header"))?;
    // Clients may reuse the redirect for a while, never past the signed URL's life.
    let cache = HeaderValue::from_str(&format!("public, max-age={}", ttl.as_secs() / 2))
        .unwrap_or(HeaderValue::from_static("no-cache"));
    Ok((
        StatusCode::FOUND,
        [(header::LOCATION, location), (header::CACHE_CONTROL, cache)],
    )
        .into_response())
}
