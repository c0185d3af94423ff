//! A member's notification setting for one conversation (an extension). Muted, a conversation
//! sends no webhook notification (the mobile push an operator plugs in, see [`crate::notify`])
//! to that member for its messages, except those that mention the member by name (`@username`;
//! not `@room` / `@group`); until a given time, or until unmuted. The setting belongs to the
//! membership: leaving, being removed or banned drops it. Unread and mention counts are as
//! before: muting decides what is pushed, not what is shown.

use axum::{extract::State, http::StatusCode};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use shared::{
    chat::ChatType,
    error::ErrorBody,
    extract::{ApiJson, ApiPath},
    jwt::AuthUser,
    ApiError, ApiResult,
};
use utoipa::ToSchema;

use crate::{api::parse_chat, conversation, AppState};

#[derive(Debug, Deserialize, ToSchema)]
pub struct NotificationsRequest {
    /// Whether the conversation's notifications are muted.
    pub muted: bool,
    /// With `muted: true`: until when (in the future); absent or null, until unmuted.
    pub until: Option<DateTime<Utc>>,
}

/// `PUT /chat/conversations/{chat_type}/{chat_id}/notifications`
#[utoipa::path(put, path = "/chat/conversations/{chat_type}/{chat_id}/notifications", tag = "conversations", security(("bearer" = [])),
    params(
        ("chat_type" = ChatType, Path, description = "room, private or group"),
        ("chat_id" = Uuid, Path, description = "Room or group id; for private chats the other user's id"),
    ),
    request_body = NotificationsRequest,
    responses(
        (status = 204, description = "Stored (an extension). Muted, no webhook notification goes to the caller for the conversation's messages, except those that mention the caller by name, until `until` or until unmuted; `GET /chat/conversations` shows it as `notifications_muted` and `notifications_muted_until`"),
        (status = 403, description = "Not a member (rooms: join first)", body = ErrorBody),
        (status = 404, description = "No such room or group, or no private chat with that user yet", body = ErrorBody),
        (status = 422, description = "`until` is not in the future, or is given with `muted: false`", body = ErrorBody),
    ))]
pub async fn set(
    State(state): State<AppState>,
    caller: AuthUser,
    ApiPath((chat_type, chat_id)): ApiPath<(String, String)>,
    ApiJson(req): ApiJson<NotificationsRequest>,
) -> ApiResult<StatusCode> {
    let (chat_type, chat_id) = parse_chat(&chat_type, &chat_id)?;
    match (req.muted, req.until) {
        (true, Some(until)) if until <= Utc::now() => {
            return Err(ApiError::invalid_field("until", "must be in the future"));
        }
        (false, Some(_)) => {
            return Err(ApiError::invalid_field(
                "until",
                "goes with muted: true only",
            ));
        }
        _ => {}
    }
    let c = conversation::for_marking_read(&state.db, caller.user_id, chat_type, chat_id).await?;
    let stored = if req.muted {
        sqlx::query!(
            r#"INSERT INTO notification_mutes (conversation_id, user_id, until)
               VALUES ($1, $2, $3)
               ON CONFLICT (conversation_id, user_id) DO UPDATE SET until = EXCLUDED.until"#,
            c.id,
            caller.user_id,
            req.until
        )
        .execute(&state.db)
        .await
    } else {
        sqlx::query!(
            "DELETE FROM notification_mutes WHERE conversation_id = $1 AND user_id = $2",
            c.id,
            caller.user_id
        )
        .execute(&state.db)
        .await
    };
    match stored {
        Ok(_) => Ok(StatusCode::NO_CONTENT),
        // The membership ended between the check and the write.
        Err(sqlx::Error::Database(e)) if e.is_foreign_key_violation() => {
            Err(ApiError::forbidden("you are not in that conversation"))
        }
        Err(e) => Err(e.into()),
    }
}
