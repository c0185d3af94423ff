//! A member's own settings for one of their conversations (extensions), kept with the
//! membership: leaving, being removed or banned drops them.
//!
//! - Notifications: muted, a conversation sends no webhook notification (the mobile push an
//!   operator plugs in, see [`crate::notify`]) to that member for its messages, except those
//!   that mention the member by name (`@username`; not `@room` / `@group`); until a given time,
//!   or until unmuted. Unread and mention counts are as before: muting decides what is pushed,
//!   not what is shown.
//! - Archive: the conversation is set aside (`archived` in the list) until a message after the
//!   one it was archived at arrives; a conversation with news comes back by itself.
//!
//! Each change goes to every connection of the member as `conversation_settings`, carrying both
//! settings as they now are, so the member's other devices follow without reading the list.

use axum::{extract::State, http::StatusCode};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use shared::{
    chat::{ChatType, Event},
    error::ErrorBody,
    extract::{ApiJson, ApiPath},
    jwt::AuthUser,
    ApiError, ApiResult,
};
use utoipa::ToSchema;

use crate::{api::member_of, conversation::Conversation, AppState};

#[derive(Debug, Deserialize, ToSchema)]
pub struct NotificationsRequest {
    /// Whether the conversation's notifications are muted.
    pub muted: bool,
    /// With `muted: true`: until when (in the future); absent or null, until unmuted.
    pub until: Option<DateTime<Utc>>,
}

/// `PUT /chat/conversations/{chat_type}/{chat_id}/notifications`
#[utoipa::path(put, path = "/chat/conversations/{chat_type}/{chat_id}/notifications", operation_id = "set_conversation_notifications", tag = "conversations", security(("bearer" = [])),
    params(
        ("chat_type" = ChatType, Path, description = "room, private or group"),
        ("chat_id" = Uuid, Path, description = "Room or group id; for private chats the other user's id"),
    ),
    request_body = NotificationsRequest,
    responses(
        (status = 204, description = "Stored (an extension). Muted, no webhook notification goes to the caller for the conversation's messages, except those that mention the caller by name, until `until` or until unmuted; `GET /chat/conversations` shows it as `notifications_muted` and `notifications_muted_until`; every connection of the caller gets `conversation_settings`"),
        (status = 403, description = "Not a member (rooms: join first)", body = ErrorBody),
        (status = 404, description = "No such room or group, or no private chat with that user yet", body = ErrorBody),
        (status = 422, description = "`until` is not in the future, or is given with `muted: false`", body = ErrorBody),
    ))]
pub async fn set_notifications(
    State(state): State<AppState>,
    caller: AuthUser,
    ApiPath((chat_type, chat_id)): ApiPath<(String, String)>,
    ApiJson(req): ApiJson<NotificationsRequest>,
) -> ApiResult<StatusCode> {
    let c = member_of(&state, &caller, &chat_type, &chat_id).await?;
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
    answer(&state, &caller, &c, stored).await
}

/// `PUT /chat/conversations/{chat_type}/{chat_id}/archive`
#[utoipa::path(put, path = "/chat/conversations/{chat_type}/{chat_id}/archive", operation_id = "archive_conversation", tag = "conversations", security(("bearer" = [])),
    params(
        ("chat_type" = ChatType, Path, description = "room, private or group"),
        ("chat_id" = Uuid, Path, description = "Room or group id; for private chats the other user's id"),
    ),
    responses(
        (status = 204, description = "Archived (an extension): `GET /chat/conversations` shows it `archived` until a message after its latest arrives (anyone's, the caller's too), or until unarchived; every connection of the caller gets `conversation_settings`"),
        (status = 403, description = "Not a member (rooms: join first)", body = ErrorBody),
        (status = 404, description = "No such room or group, or no private chat with that user yet", body = ErrorBody),
    ))]
pub async fn archive(
    State(state): State<AppState>,
    caller: AuthUser,
    ApiPath((chat_type, chat_id)): ApiPath<(String, String)>,
) -> ApiResult<StatusCode> {
    let c = member_of(&state, &caller, &chat_type, &chat_id).await?;
    let stored = sqlx::query!(
        r#"INSERT INTO conversation_archives (conversation_id, user_id, up_to_seq)
           SELECT id, $2, last_seq FROM conversations WHERE id = $1
           ON CONFLICT (conversation_id, user_id) DO UPDATE SET up_to_seq = EXCLUDED.up_to_seq"#,
        c.id,
        caller.user_id
    )
    .execute(&state.db)
    .await;
    answer(&state, &caller, &c, stored).await
}

/// `DELETE /chat/conversations/{chat_type}/{chat_id}/archive`
#[utoipa::path(delete, path = "/chat/conversations/{chat_type}/{chat_id}/archive", operation_id = "unarchive_conversation", tag = "conversations", security(("bearer" = [])),
    params(
        ("chat_type" = ChatType, Path, description = "room, private or group"),
        ("chat_id" = Uuid, Path, description = "Room or group id; for private chats the other user's id"),
    ),
    responses(
        (status = 204, description = "Not archived (an extension; also when it was not); every connection of the caller gets `conversation_settings`"),
        (status = 403, description = "Not a member (rooms: join first)", body = ErrorBody),
        (status = 404, description = "No such room or group, or no private chat with that user yet", body = ErrorBody),
    ))]
pub async fn unarchive(
    State(state): State<AppState>,
    caller: AuthUser,
    ApiPath((chat_type, chat_id)): ApiPath<(String, String)>,
) -> ApiResult<StatusCode> {
    let c = member_of(&state, &caller, &chat_type, &chat_id).await?;
    let stored = sqlx::query!(
        "DELETE FROM conversation_archives WHERE conversation_id = $1 AND user_id = $2",
        c.id,
        caller.user_id
    )
    .execute(&state.db)
    .await;
    answer(&state, &caller, &c, stored).await
}

/// 204 once a setting is stored, and the member's connections told the settings as they now
/// are; 403 when the membership ended between its check and the write (the setting's foreign
/// key to it).
async fn answer(
    state: &AppState,
    caller: &AuthUser,
    c: &Conversation,
    stored: Result<sqlx::postgres::PgQueryResult, sqlx::Error>,
) -> ApiResult<StatusCode> {
    match stored {
        Ok(_) => {}
        Err(sqlx::Error::Database(e)) if e.is_foreign_key_violation() => {
            return Err(ApiError::forbidden("you are not in that conversation"));
        }
        Err(e) => return Err(e.into()),
    }
    announce(state, caller.user_id, c).await;
    Ok(StatusCode::NO_CONTENT)
}

/// Tells every connection of `user` their settings for `c` as stored now. Read back rather than
/// taken from the request, so an event never claims what a concurrent change undid; should two
/// devices change settings at the same instant, their events may still arrive in either order,
/// and the conversation list is the record. A failure to read them back is logged, not
/// answered: the setting is stored.
async fn announce(state: &AppState, user: uuid::Uuid, c: &Conversation) {
    let now = sqlx::query!(
        r#"SELECT n.conversation_id IS NOT NULL AS "notifications_muted!",
                  n.until AS notifications_muted_until,
                  a.conversation_id IS NOT NULL AS "archived!"
           FROM conversations c
           LEFT JOIN notification_mutes n
                  ON n.conversation_id = c.id AND n.user_id = $2
                 AND (n.until IS NULL OR n.until > now())
           LEFT JOIN conversation_archives a
                  ON a.conversation_id = c.id AND a.user_id = $2 AND c.last_seq <= a.up_to_seq
           WHERE c.id = $1"#,
        c.id,
        user
    )
    .fetch_one(&state.db)
    .await;
    let now = match now {
        Ok(now) => now,
        Err(e) => {
            tracing::warn!(error = %e, "could not read back a member's settings to announce them");
            return;
        }
    };
    let event = Event::ConversationSettings {
        user_id: user,
        chat_type: c.chat_type,
        chat_id: c.chat_id,
        notifications_muted: now.notifications_muted,
        notifications_muted_until: now.notifications_muted_until,
        archived: now.archived,
    };
    state.publisher.to_user(user, &event).await;
}
