//! The conversations list and who is online.

use axum::{extract::State, Json};
use chrono::{DateTime, Utc};
use serde::Serialize;
use shared::{
    chat::{ChatType, Message},
    jwt::AuthUser,
    ApiError, ApiResult,
};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::{
    model::{MessageRow, UserSummary},
    AppState,
};

/// One conversation of the caller.
#[derive(Debug, Serialize, ToSchema)]
pub struct ConversationSummary {
    pub chat_type: ChatType,
    /// Room or group id; for a private chat, the other user's id.
    pub chat_id: Uuid,
    /// The room's or group's name; for a private chat, the other user's display name.
    pub name: String,
    pub last_message: Option<Message>,
    /// Messages after the caller's read position (the caller's own sends move it).
    pub unread_count: i64,
    /// Unread messages that mention the caller (`@username`, or `@room` / `@group`).
    pub mention_count: i64,
    pub last_read_seq: i64,
    /// The last message's time, or when the caller joined.
    pub updated_at: DateTime<Utc>,
}

/// `GET /chat/conversations`
#[utoipa::path(get, path = "/chat/conversations", operation_id = "list_conversations", tag = "conversations", security(("bearer" = [])),
    responses((status = 200, description = "Joined rooms, groups and private chats with a message, most recent activity first", body = [ConversationSummary])))]
pub async fn list(
    State(state): State<AppState>,
    caller: AuthUser,
) -> ApiResult<Json<Vec<ConversationSummary>>> {
    let rows = sqlx::query!(
        r#"SELECT c.id, c.chat_type, c.room_id, c.group_id, c.user_low, c.user_high,
                  c.last_seq, m.last_read_seq,
                  COALESCE(c.last_message_at, m.joined_at) AS "updated_at!",
                  COALESCE(r.name, g.name, p.display_name) AS "name?",
                  (SELECT count(*) FROM message_mentions mm
                   WHERE mm.user_id = $1 AND mm.conversation_id = c.id
                     AND mm.seq > m.last_read_seq)
                  + (SELECT count(*) FROM messages x
                     WHERE x.conversation_id = c.id AND x.seq > m.last_read_seq
                       AND x.mentions_all AND NOT x.is_deleted AND x.from_user_id <> $1
                       AND NOT x.mentions @> ARRAY[$1]) AS "mention_count!"
           FROM conversation_members m
           JOIN conversations c ON c.id = m.conversation_id
           LEFT JOIN rooms r ON r.id = c.room_id
           LEFT JOIN groups g ON g.id = c.group_id
           LEFT JOIN users p ON p.id = CASE WHEN c.user_low = $1 THEN c.user_high ELSE c.user_low END
                            AND c.chat_type = 'PRIVATE'
           WHERE m.user_id = $1 AND (c.chat_type <> 'PRIVATE' OR c.last_seq > 0)
           ORDER BY 9 DESC"#,
        caller.user_id
    )
    .fetch_all(&state.db)
    .await?;

    // The last messages, fetched in one query through the (conversation_id, seq) index.
    let (ids, seqs): (Vec<Uuid>, Vec<i64>) = rows
        .iter()
        .filter(|r| r.last_seq > 0)
        .map(|r| (r.id, r.last_seq))
        .unzip();
    let last: std::collections::HashMap<Uuid, MessageRow> = sqlx::query_as!(
        MessageRow,
        r#"SELECT * FROM messages
           WHERE (conversation_id, seq) IN (SELECT * FROM unnest($1::uuid[], $2::bigint[]))"#,
        &ids,
        &seqs
    )
    .fetch_all(&state.db)
    .await?
    .into_iter()
    .map(|m| (m.conversation_id, m))
    .collect();

    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let chat_type = ChatType::from_db(&r.chat_type)
            .ok_or_else(|| ApiError::internal(format!("chat_type {:?}", r.chat_type)))?;
        let chat_id = match chat_type {
            ChatType::Room => r.room_id,
            ChatType::Group => r.group_id,
            ChatType::Private => {
                if r.user_low == Some(caller.user_id) {
                    r.user_high
                } else {
                    r.user_low
                }
            }
        }
        .ok_or_else(|| ApiError::internal("a conversation without its chat id"))?;
        out.push(ConversationSummary {
            chat_type,
            chat_id,
            name: r.name.unwrap_or_default(),
            last_message: last
                .get(&r.id)
                .cloned()
                .map(Message::try_from)
                .transpose()?,
            unread_count: (r.last_seq - r.last_read_seq).max(0),
            mention_count: r.mention_count,
            last_read_seq: r.last_read_seq,
            updated_at: r.updated_at,
        });
    }
    Ok(Json(out))
}

/// `GET /chat/online-users`
#[utoipa::path(get, path = "/chat/online-users", tag = "conversations", security(("bearer" = [])),
    responses((status = 200, description = "Users with at least one open WebSocket on any gateway", body = [UserSummary])))]
pub async fn online_users(
    State(state): State<AppState>,
    _caller: AuthUser,
) -> ApiResult<Json<Vec<UserSummary>>> {
    let ids = shared::presence::online(&state.redis, state.publisher.keys()).await?;
    let users = sqlx::query_as!(
        UserSummary,
        r#"SELECT id, username, display_name, avatar_url, is_active, created_at, last_seen
           FROM users WHERE id = ANY($1) AND is_active ORDER BY lower(username) COLLATE "C""#,
        &ids
    )
    .fetch_all(&state.db)
    .await?;
    Ok(Json(users))
}
