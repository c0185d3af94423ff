//! Reactions: `PUT` / `DELETE /chat/messages/{id}/reactions/{emoji}`, and the `reactions` of
//! message objects as each reader sees them.

use std::collections::HashMap;

use axum::{extract::State, http::StatusCode};
use shared::{
    chat::{Event, Message, Reaction},
    error::ErrorBody,
    extract::ApiPath,
    ApiError, ApiResult,
};
use uuid::Uuid;

use super::acting::Acting;
use crate::{model::MessageRow, AppState};

/// Distinct emoji one message may carry.
const MAX_DISTINCT: i64 = 20;
/// The longest emoji, in Unicode scalar values.
const MAX_EMOJI_CHARS: usize = 32;

fn check_emoji(emoji: &str) -> ApiResult<()> {
    let len = emoji.chars().count();
    if emoji.trim().is_empty() || len > MAX_EMOJI_CHARS {
        return Err(ApiError::invalid_field(
            "emoji",
            format!("must be 1 to {MAX_EMOJI_CHARS} characters"),
        ));
    }
    shared::text::check(emoji).map_err(|p| ApiError::invalid_field("emoji", p))
}

/// The message, for a caller who is a member of its conversation (as sending needs).
async fn message_for_member(state: &AppState, caller: Uuid, id: Uuid) -> ApiResult<MessageRow> {
    let row = sqlx::query_as!(MessageRow, "SELECT * FROM messages WHERE id = $1", id)
        .fetch_optional(&state.db)
        .await?
        .ok_or_else(|| ApiError::not_found("no such message"))?;
    if crate::conversation::is_member(&state.db, row.conversation_id, caller).await? {
        Ok(row)
    } else {
        Err(ApiError::forbidden("join the conversation to react in it"))
    }
}

async fn set_reaction(
    state: &AppState,
    caller: Uuid,
    id: Uuid,
    emoji: String,
    added: bool,
) -> ApiResult<StatusCode> {
    check_emoji(&emoji)?;
    let row = message_for_member(state, caller, id).await?;
    state.require_events()?;
    let changed = if added {
        // Adds to one message take its row lock, so two at once cannot both pass the limit,
        // and a deletion meanwhile is either seen here or waits for this add.
        let mut tx = state.db.begin().await?;
        let deleted = sqlx::query_scalar!(
            "SELECT is_deleted FROM messages WHERE id = $1 FOR NO KEY UPDATE",
            id
        )
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| ApiError::not_found("no such message"))?;
        if deleted {
            return Err(ApiError::conflict(
                "message_deleted",
                "a deleted message takes no reactions",
            ));
        }
        let seen = sqlx::query!(
            r#"SELECT count(DISTINCT emoji) AS "distinct!",
                      coalesce(bool_or(emoji = $2), FALSE) AS "present!"
               FROM message_reactions WHERE message_id = $1"#,
            id,
            emoji
        )
        .fetch_one(&mut *tx)
        .await?;
        if !seen.present && seen.distinct >= MAX_DISTINCT {
            return Err(ApiError::invalid_field(
                "emoji",
                format!("a message carries at most {MAX_DISTINCT} distinct reactions"),
            ));
        }
        let inserted = sqlx::query!(
            r#"INSERT INTO message_reactions (message_id, user_id, emoji)
               VALUES ($1, $2, $3) ON CONFLICT DO NOTHING"#,
            id,
            caller,
            emoji
        )
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        inserted
    } else {
        sqlx::query!(
            "DELETE FROM message_reactions WHERE message_id = $1 AND user_id = $2 AND emoji = $3",
            id,
            caller,
            emoji
        )
        .execute(&state.db)
        .await?
        .rows_affected()
    };
    if changed > 0 {
        let conversation_id = row.conversation_id;
        let message = Message::try_from(row)?;
        let event = Event::Reaction {
            message_id: message.id,
            chat_type: message.chat_type,
            conversation_id,
            from_user_id: message.from_user_id,
            to_user_id: message.to_user_id,
            seq: message.seq,
            user_id: caller,
            emoji,
            added,
        };
        state
            .publisher
            .message_event(&message, conversation_id, event)
            .await;
    }
    Ok(StatusCode::NO_CONTENT)
}

/// `PUT /chat/messages/{id}/reactions/{emoji}`
#[utoipa::path(put, path = "/chat/messages/{id}/reactions/{emoji}", tag = "messages", security(("bearer" = [])),
    params(
        ("id" = Uuid, Path, description = "Message id"),
        ("emoji" = String, Path, description = "1–32 characters, percent-encoded"),
    ),
    responses(
        (status = 204, description = "Added (adding twice is harmless); a `reaction` event with `action: added` reaches the members"),
        (status = 401, description = "Not signed in", body = ErrorBody),
        (status = 403, description = "Not a member of the message's conversation", body = ErrorBody),
        (status = 404, description = "No such message", body = ErrorBody),
        (status = 409, description = "The message was deleted", body = ErrorBody),
        (status = 422, description = "An invalid emoji, or a 21st distinct one", body = ErrorBody),
        (status = 429, description = "`rate_limited`: the user's changes that reach others (`ACTION_RATE_PER_SECOND`, 10 a second, bursts of 40, by default) are used up; nothing was done; `Retry-After` says when to try again", body = ErrorBody),
    ))]
pub async fn add(
    State(state): State<AppState>,
    Acting(caller): Acting,
    ApiPath((id, emoji)): ApiPath<(Uuid, String)>,
) -> ApiResult<StatusCode> {
    set_reaction(&state, caller.user_id, id, emoji, true).await
}

/// `DELETE /chat/messages/{id}/reactions/{emoji}`
#[utoipa::path(delete, path = "/chat/messages/{id}/reactions/{emoji}", tag = "messages", security(("bearer" = [])),
    params(
        ("id" = Uuid, Path, description = "Message id"),
        ("emoji" = String, Path, description = "1–32 characters, percent-encoded"),
    ),
    responses(
        (status = 204, description = "Removed (removing twice is harmless); a `reaction` event with `action: removed` reaches the members"),
        (status = 401, description = "Not signed in", body = ErrorBody),
        (status = 403, description = "Not a member of the message's conversation", body = ErrorBody),
        (status = 404, description = "No such message", body = ErrorBody),
        (status = 422, description = "An invalid emoji", body = ErrorBody),
        (status = 429, description = "`rate_limited`: the user's changes that reach others (`ACTION_RATE_PER_SECOND`, 10 a second, bursts of 40, by default) are used up; nothing was done; `Retry-After` says when to try again", body = ErrorBody),
    ))]
pub async fn remove(
    State(state): State<AppState>,
    Acting(caller): Acting,
    ApiPath((id, emoji)): ApiPath<(Uuid, String)>,
) -> ApiResult<StatusCode> {
    set_reaction(&state, caller.user_id, id, emoji, false).await
}

/// Fills in the `reactions` of `messages` as `viewer` sees them: one query for all of them.
pub async fn attach(state: &AppState, viewer: Uuid, messages: &mut [Message]) -> ApiResult<()> {
    if messages.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = messages.iter().map(|m| m.id).collect();
    let rows = sqlx::query!(
        r#"SELECT message_id, emoji, count(*) AS "count!", bool_or(user_id = $2) AS "me!"
           FROM message_reactions WHERE message_id = ANY($1)
           GROUP BY message_id, emoji
           ORDER BY message_id, min(created_at), emoji"#,
        &ids,
        viewer
    )
    .fetch_all(&state.db)
    .await?;
    let mut by_message: HashMap<Uuid, Vec<Reaction>> = HashMap::new();
    for r in rows {
        by_message.entry(r.message_id).or_default().push(Reaction {
            emoji: r.emoji,
            count: r.count,
            me: r.me,
        });
    }
    for m in messages {
        m.reactions = by_message.remove(&m.id).unwrap_or_default();
    }
    Ok(())
}
