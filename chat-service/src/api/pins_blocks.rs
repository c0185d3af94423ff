//! Pins (`/chat/messages/{id}/pin`, `/chat/pins/...`) and blocking (`/chat/blocks`).

use axum::{extract::State, http::StatusCode, Json};
use shared::{
    chat::{ChatType, Event, Message},
    error::ErrorBody,
    extract::ApiPath,
    jwt::AuthUser,
    ApiError, ApiResult,
};
use uuid::Uuid;

use super::acting::Acting;
use crate::{
    api::parse_chat,
    conversation,
    model::{self, MessageRow, UserSummary},
    AppState,
};

/// The most pins one conversation lists.
const MAX_PINS: i64 = 100;
/// The most users one user blocks. Each gateway holding the user's sockets checks the list for
/// every `typing` and `presence` meant for them.
const MAX_BLOCKS: i64 = 1000;

/// May `caller` pin in the conversation of `row`? Room owner or moderators, group owner,
/// either user of a private chat; always a current member.
async fn may_pin(state: &AppState, caller: Uuid, row: &MessageRow) -> ApiResult<()> {
    let allowed = sqlx::query_scalar!(
        r#"SELECT EXISTS (
               SELECT 1 FROM conversation_members m
               JOIN conversations c ON c.id = m.conversation_id
               LEFT JOIN rooms r ON r.id = c.room_id
               LEFT JOIN groups g ON g.id = c.group_id
               WHERE m.conversation_id = $1 AND m.user_id = $2
                 AND (c.chat_type = 'PRIVATE' OR r.created_by = $2 OR g.owner_id = $2
                      OR EXISTS (SELECT 1 FROM room_moderators d
                                 WHERE d.room_id = r.id AND d.user_id = $2))
           ) AS "allowed!""#,
        row.conversation_id,
        caller
    )
    .fetch_one(&state.db)
    .await?;
    if allowed {
        Ok(())
    } else {
        Err(ApiError::forbidden(
            "only the room's owner and moderators, the group's owner, or either user of a private chat pin",
        ))
    }
}

async fn set_pin(state: &AppState, caller: Uuid, id: Uuid, pinned: bool) -> ApiResult<StatusCode> {
    let row = sqlx::query_as!(MessageRow, "SELECT * FROM messages WHERE id = $1", id)
        .fetch_optional(&state.db)
        .await?
        .ok_or_else(|| ApiError::not_found("no such message"))?;
    may_pin(state, caller, &row).await?;
    if pinned && row.is_deleted {
        return Err(ApiError::conflict(
            "message_deleted",
            "a deleted message cannot be pinned",
        ));
    }
    state.require_events()?;
    let changed = if pinned {
        sqlx::query!(
            r#"INSERT INTO message_pins (conversation_id, message_id, pinned_by)
               VALUES ($1, $2, $3) ON CONFLICT DO NOTHING"#,
            row.conversation_id,
            id,
            caller
        )
        .execute(&state.db)
        .await?
        .rows_affected()
    } else {
        sqlx::query!(
            "DELETE FROM message_pins WHERE conversation_id = $1 AND message_id = $2",
            row.conversation_id,
            id
        )
        .execute(&state.db)
        .await?
        .rows_affected()
    };
    if changed > 0 {
        let conversation_id = row.conversation_id;
        let message = Message::try_from(row)?;
        let event = Event::Pin {
            message_id: message.id,
            chat_type: message.chat_type,
            conversation_id,
            from_user_id: message.from_user_id,
            to_user_id: message.to_user_id,
            seq: message.seq,
            pinned,
            by: caller,
        };
        state
            .publisher
            .message_event(&message, conversation_id, event)
            .await;
    }
    Ok(StatusCode::NO_CONTENT)
}

/// `PUT /chat/messages/{id}/pin`
#[utoipa::path(put, path = "/chat/messages/{id}/pin", tag = "messages", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Message id")),
    responses(
        (status = 204, description = "Pinned (pinning twice is harmless); a `pin` event with `pinned: true` reaches the members"),
        (status = 401, description = "Not signed in", body = ErrorBody),
        (status = 403, description = "Not the room's owner or a moderator, nor the group's owner, nor a user of the private chat, or no longer a member", body = ErrorBody),
        (status = 404, description = "No such message", body = ErrorBody),
        (status = 409, description = "The message was deleted", body = ErrorBody),
        (status = 422, description = "Invalid path", body = ErrorBody),
        (status = 429, description = "`rate_limited`: the user's changes that reach others (`ACTION_RATE_PER_SECOND`, 10 a second, bursts of 40, by default) are used up; nothing was done; `Retry-After` says when to try again", body = ErrorBody),
    ))]
pub async fn pin(
    State(state): State<AppState>,
    Acting(caller): Acting,
    ApiPath(id): ApiPath<Uuid>,
) -> ApiResult<StatusCode> {
    set_pin(&state, caller.user_id, id, true).await
}

/// `DELETE /chat/messages/{id}/pin`
#[utoipa::path(delete, path = "/chat/messages/{id}/pin", tag = "messages", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Message id")),
    responses(
        (status = 204, description = "Unpinned (unpinning twice is harmless); a `pin` event with `pinned: false` reaches the members"),
        (status = 401, description = "Not signed in", body = ErrorBody),
        (status = 403, description = "Not allowed to pin here", body = ErrorBody),
        (status = 404, description = "No such message", body = ErrorBody),
        (status = 422, description = "Invalid path", body = ErrorBody),
        (status = 429, description = "`rate_limited`: the user's changes that reach others (`ACTION_RATE_PER_SECOND`, 10 a second, bursts of 40, by default) are used up; nothing was done; `Retry-After` says when to try again", body = ErrorBody),
    ))]
pub async fn unpin(
    State(state): State<AppState>,
    Acting(caller): Acting,
    ApiPath(id): ApiPath<Uuid>,
) -> ApiResult<StatusCode> {
    set_pin(&state, caller.user_id, id, false).await
}

/// `GET /chat/pins/{chat_type}/{chat_id}`
#[utoipa::path(get, path = "/chat/pins/{chat_type}/{chat_id}", tag = "messages", security(("bearer" = [])),
    params(
        ("chat_type" = ChatType, Path, description = "room, private or group"),
        ("chat_id" = Uuid, Path, description = "Room or group id; for private chats the other user's id"),
    ),
    responses(
        (status = 200, description = "The pinned messages, newest pin first (at most 100)", body = [Message]),
        (status = 401, description = "Not signed in", body = ErrorBody),
        (status = 403, description = "Not a member of the group", body = ErrorBody),
        (status = 404, description = "No such room, group or user", body = ErrorBody),
        (status = 422, description = "Invalid path", body = ErrorBody),
    ))]
pub async fn pins(
    State(state): State<AppState>,
    caller: AuthUser,
    ApiPath((chat_type, chat_id)): ApiPath<(String, String)>,
) -> ApiResult<Json<Vec<Message>>> {
    let (chat_type, chat_id) = parse_chat(&chat_type, &chat_id)?;
    let Some(conversation) =
        conversation::for_reading(&state.db, caller.user_id, chat_type, chat_id).await?
    else {
        return Ok(Json(Vec::new()));
    };
    let rows = sqlx::query_as!(
        MessageRow,
        r#"SELECT m.* FROM message_pins p JOIN messages m ON m.id = p.message_id
           WHERE p.conversation_id = $1
           ORDER BY p.pinned_at DESC, m.seq DESC LIMIT $2"#,
        conversation.id,
        MAX_PINS
    )
    .fetch_all(&state.db)
    .await?;
    let mut messages = model::messages(rows)?;
    crate::api::enrich(&state, caller.user_id, &mut messages).await?;
    Ok(Json(messages))
}

async fn set_block(
    state: &AppState,
    caller: Uuid,
    other: Uuid,
    blocked: bool,
) -> ApiResult<StatusCode> {
    if other == caller {
        return Err(ApiError::invalid_field(
            "user_id",
            "you cannot block yourself",
        ));
    }
    let exists = sqlx::query_scalar!(
        r#"SELECT EXISTS (SELECT 1 FROM users WHERE id = $1) AS "exists!""#,
        other
    )
    .fetch_one(&state.db)
    .await?;
    if !exists {
        return Err(ApiError::not_found("no such user"));
    }
    state.require_events()?;
    let changed = if blocked {
        let held = sqlx::query_scalar!(
            r#"SELECT count(*) AS "n!" FROM user_blocks WHERE blocker_id = $1 AND blocked_id <> $2"#,
            caller,
            other
        )
        .fetch_one(&state.db)
        .await?;
        if held >= MAX_BLOCKS {
            return Err(ApiError::conflict(
                "too_many_blocks",
                format!("a user blocks at most {MAX_BLOCKS} users; unblock someone first"),
            ));
        }
        sqlx::query!(
            "INSERT INTO user_blocks (blocker_id, blocked_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            caller,
            other
        )
        .execute(&state.db)
        .await?
        .rows_affected()
    } else {
        sqlx::query!(
            "DELETE FROM user_blocks WHERE blocker_id = $1 AND blocked_id = $2",
            caller,
            other
        )
        .execute(&state.db)
        .await?
        .rows_affected()
    };
    if changed > 0 {
        let event = Event::Block {
            user_id: caller,
            blocked_id: other,
            blocked,
        };
        state.publisher.to_user(caller, &event).await;
    }
    Ok(StatusCode::NO_CONTENT)
}

/// `PUT /chat/blocks/{user_id}`
#[utoipa::path(put, path = "/chat/blocks/{user_id}", tag = "blocks", security(("bearer" = [])),
    params(("user_id" = Uuid, Path, description = "The user to block")),
    responses(
        (status = 204, description = "Blocked (twice is harmless): they cannot send to your private chat (403 blocked) nor add you to a group, and their typing and presence no longer reach you"),
        (status = 401, description = "Not signed in", body = ErrorBody),
        (status = 404, description = "No such user", body = ErrorBody),
        (status = 409, description = "`too_many_blocks`: the caller already blocks 1,000 users", body = ErrorBody),
        (status = 422, description = "Invalid path, or yourself", body = ErrorBody),
    ))]
pub async fn block(
    State(state): State<AppState>,
    caller: AuthUser,
    ApiPath(user_id): ApiPath<Uuid>,
) -> ApiResult<StatusCode> {
    set_block(&state, caller.user_id, user_id, true).await
}

/// `DELETE /chat/blocks/{user_id}`
#[utoipa::path(delete, path = "/chat/blocks/{user_id}", tag = "blocks", security(("bearer" = [])),
    params(("user_id" = Uuid, Path, description = "The user to unblock")),
    responses(
        (status = 204, description = "Unblocked (twice is harmless)"),
        (status = 401, description = "Not signed in", body = ErrorBody),
        (status = 404, description = "No such user", body = ErrorBody),
        (status = 422, description = "Invalid path, or yourself", body = ErrorBody),
    ))]
pub async fn unblock(
    State(state): State<AppState>,
    caller: AuthUser,
    ApiPath(user_id): ApiPath<Uuid>,
) -> ApiResult<StatusCode> {
    set_block(&state, caller.user_id, user_id, false).await
}

/// `GET /chat/blocks`
#[utoipa::path(get, path = "/chat/blocks", tag = "blocks", security(("bearer" = [])),
    responses(
        (status = 200, description = "The users the caller blocked, most recent first", body = [UserSummary]),
        (status = 401, description = "Not signed in", body = ErrorBody),
    ))]
pub async fn blocks(
    State(state): State<AppState>,
    caller: AuthUser,
) -> ApiResult<Json<Vec<UserSummary>>> {
    Ok(Json(
        sqlx::query_as!(
            UserSummary,
            r#"SELECT u.id, u.username, u.display_name, u.avatar_url, u.is_active, u.created_at, u.last_seen
               FROM user_blocks b JOIN users u ON u.id = b.blocked_id
               WHERE b.blocker_id = $1 ORDER BY b.created_at DESC"#,
            caller.user_id
        )
        .fetch_all(&state.db)
        .await?,
    ))
}

/// Refuses (403 `blocked`) when any of `others` blocked `user`.
pub async fn refuse_if_blocked_by(state: &AppState, user: Uuid, others: &[Uuid]) -> ApiResult<()> {
    let blocked = sqlx::query_scalar!(
        r#"SELECT EXISTS (SELECT 1 FROM user_blocks
                          WHERE blocked_id = $1 AND blocker_id = ANY($2)) AS "blocked!""#,
        user,
        others
    )
    .fetch_one(&state.db)
    .await?;
    if blocked {
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "blocked",
            "one of these users has blocked you",
        ))
    } else {
        Ok(())
    }
}
