//! The conversations list and who is online.

use axum::{extract::State, Json};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use shared::{
    chat::{ChatType, Message},
    error::ErrorBody,
    extract::{bounded_int, id_list, ApiPath, ApiQuery},
    jwt::AuthUser,
    ApiError, ApiResult,
};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::{
    api::member_of,
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
    /// Whether the caller muted the conversation's notifications (an extension; see
    /// `PUT /chat/conversations/{chat_type}/{chat_id}/notifications`).
    pub notifications_muted: bool,
    /// While muted: until when; null, until unmuted.
    pub notifications_muted_until: Option<DateTime<Utc>>,
    /// Whether the caller archived the conversation and no message came after (an extension;
    /// see `PUT /chat/conversations/{chat_type}/{chat_id}/archive`).
    pub archived: bool,
    /// The last message's time, or when the caller joined.
    pub updated_at: DateTime<Utc>,
    /// Where this conversation stands in the list: `before` this gives the conversations
    /// after it (an extension; opaque).
    pub cursor: String,
}

/// Optional paging of `GET /chat/conversations` (extensions: without them, every
/// conversation).
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ConversationsQuery {
    /// 1–500: at most this many conversations; a page this long may have more after it.
    #[param(value_type = Option<i64>)]
    limit: Option<String>,
    /// The `cursor` of the last conversation of the page before: the conversations after it.
    before: Option<String>,
}

/// A conversation's place in the list, most recent activity first: its time (in
/// microseconds) and, between equal times, its id.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Cursor {
    micros: i64,
    conversation: Uuid,
}

impl Cursor {
    fn new(updated_at: DateTime<Utc>, conversation: Uuid) -> Self {
        Self {
            micros: updated_at.timestamp_micros(),
            conversation,
        }
    }

    fn encode(self) -> String {
        format!("{}.{}", self.micros, self.conversation.simple())
    }

    fn decode(s: &str) -> Option<Self> {
        let (micros, id) = s.split_once('.')?;
        Some(Self {
            micros: micros.parse().ok()?,
            conversation: Uuid::try_parse(id).ok()?,
        })
    }

    fn time(self) -> Option<DateTime<Utc>> {
        DateTime::from_timestamp_micros(self.micros)
    }
}

/// `GET /chat/conversations`
#[utoipa::path(get, path = "/chat/conversations", operation_id = "list_conversations", tag = "conversations", security(("bearer" = [])),
    params(ConversationsQuery),
    responses(
        (status = 200, description = "Joined rooms, groups and private chats with a message, most recent activity first: every one, or with `limit` a page of them", body = [ConversationSummary]),
        (status = 422, description = "Invalid `limit` or `before`", body = ErrorBody),
        (status = 429, description = "`rate_limited`: read whole (without `limit`) more often than `LIST_RATE_PER_SECOND` (2 a second, bursts of 20, per user, shared with the other long lists); see Retry-After. Pages are not counted", body = ErrorBody),
    ))]
pub async fn list(
    State(state): State<AppState>,
    caller: AuthUser,
    ApiQuery(query): ApiQuery<ConversationsQuery>,
) -> ApiResult<Json<Vec<ConversationSummary>>> {
    let limit = query
        .limit
        .as_deref()
        .map(|v| bounded_int("limit", Some(v), 0, 1..=500))
        .transpose()?;
    let before = query
        .before
        .as_deref()
        .map(|v| {
            Cursor::decode(v)
                .and_then(|c| Some((c.time()?, c.conversation)))
                .ok_or_else(|| ApiError::invalid_field("before", "not a cursor of this list"))
        })
        .transpose()?;
    if limit.is_none() {
        // The list others make long (private chats they start, groups they add the caller
        // to), each entry with its counts: read whole, it is rated like the other long lists.
        state.list_rate(caller.user_id).await?;
    }
    summaries(&state, caller.user_id, None, before, limit)
        .await
        .map(Json)
}

/// `GET /chat/conversations/{chat_type}/{chat_id}`
#[utoipa::path(get, path = "/chat/conversations/{chat_type}/{chat_id}", operation_id = "get_conversation", tag = "conversations", security(("bearer" = [])),
    params(
        ("chat_type" = ChatType, Path, description = "room, private or group"),
        ("chat_id" = Uuid, Path, description = "Room or group id; for private chats the other user's id"),
    ),
    responses(
        (status = 200, description = "One of the caller's conversations, as `GET /chat/conversations` lists it (an extension): for a conversation that appears while connected (a first private message, a group the caller is added to) without reading the whole list", body = ConversationSummary),
        (status = 403, description = "Not a member (rooms: join first)", body = ErrorBody),
        (status = 404, description = "No such room or group, or no private chat with that user yet", body = ErrorBody),
        (status = 422, description = "Invalid `chat_type` or `chat_id`", body = ErrorBody),
    ))]
pub async fn get_one(
    State(state): State<AppState>,
    caller: AuthUser,
    ApiPath((chat_type, chat_id)): ApiPath<(String, String)>,
) -> ApiResult<Json<ConversationSummary>> {
    let c = member_of(&state, &caller, &chat_type, &chat_id).await?;
    summaries(&state, caller.user_id, Some(c.id), None, None)
        .await?
        .pop()
        // The membership ended between its check and the read.
        .map(Json)
        .ok_or_else(|| ApiError::forbidden("you are not in that conversation"))
}

/// The list's entries of `user`: every conversation, or `only` the one, most recent activity
/// first, those `before` a place in the list, at most `limit`.
async fn summaries(
    state: &AppState,
    user: Uuid,
    only: Option<Uuid>,
    before: Option<(DateTime<Utc>, Uuid)>,
    limit: Option<i64>,
) -> ApiResult<Vec<ConversationSummary>> {
    let (before_time, before_id) = before.unzip();
    // Ties in time (members added in one transaction) are ordered by id, so that a page
    // ends between two conversations, never inside a tie.
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
                       AND NOT x.mentions @> ARRAY[$1]) AS "mention_count!",
                  n.conversation_id IS NOT NULL AS "notifications_muted!",
                  n.until AS notifications_muted_until,
                  a.conversation_id IS NOT NULL AS "archived!"
           FROM conversation_members m
           JOIN conversations c ON c.id = m.conversation_id
           LEFT JOIN notification_mutes n
                  ON n.conversation_id = m.conversation_id AND n.user_id = m.user_id
                 AND (n.until IS NULL OR n.until > now())
           LEFT JOIN conversation_archives a
                  ON a.conversation_id = m.conversation_id AND a.user_id = m.user_id
                 AND c.last_seq <= a.up_to_seq
           LEFT JOIN rooms r ON r.id = c.room_id
           LEFT JOIN groups g ON g.id = c.group_id
           LEFT JOIN users p ON p.id = CASE WHEN c.user_low = $1 THEN c.user_high ELSE c.user_low END
                            AND c.chat_type = 'PRIVATE'
           WHERE m.user_id = $1 AND (c.chat_type <> 'PRIVATE' OR c.last_seq > 0)
             AND ($2::timestamptz IS NULL
                  OR (COALESCE(c.last_message_at, m.joined_at), c.id) < ($2, $3::uuid))
             AND ($5::uuid IS NULL OR c.id = $5)
           ORDER BY 9 DESC, c.id DESC
           LIMIT $4"#,
        user,
        before_time,
        before_id,
        limit,
        only
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
                if r.user_low == Some(user) {
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
            notifications_muted: r.notifications_muted,
            notifications_muted_until: r.notifications_muted_until,
            archived: r.archived,
            updated_at: r.updated_at,
            cursor: Cursor::new(r.updated_at, r.id).encode(),
        });
    }
    Ok(out)
}

/// The most users one `GET /chat/online-users?ids=` asks about.
const MAX_ONLINE_IDS: usize = 100;

/// Which users `GET /chat/online-users` asks about (an extension: without it, everyone).
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct OnlineQuery {
    /// Comma-separated user ids (1–100): only those of them who are online.
    ids: Option<String>,
}

/// `GET /chat/online-users`
#[utoipa::path(get, path = "/chat/online-users", tag = "conversations", security(("bearer" = [])),
    params(OnlineQuery),
    responses(
        (status = 200, description = "Users with at least one open WebSocket on any gateway, by username; with `ids`, only those of them", body = [UserSummary]),
        (status = 422, description = "`ids` is not 1–100 comma-separated user ids", body = ErrorBody),
        (status = 429, description = "`rate_limited`: the whole list read more often than `ONLINE_USERS_RATE_PER_SECOND` (1 a second, bursts of 10, per user); see Retry-After. `ids` is not counted", body = ErrorBody),
    ))]
pub async fn online_users(
    State(state): State<AppState>,
    caller: AuthUser,
    ApiQuery(query): ApiQuery<OnlineQuery>,
) -> ApiResult<Json<Vec<UserSummary>>> {
    let keys = state.publisher.keys();
    let ids = match query
        .ids
        .as_deref()
        .map(|raw| id_list("ids", raw, MAX_ONLINE_IDS))
        .transpose()?
    {
        Some(asked) => {
            let online = shared::presence::online_among(&state.redis, keys, &asked).await?;
            asked
                .into_iter()
                .zip(online)
                .filter_map(|(id, on)| on.then_some(id))
                .collect()
        }
        None => {
            // The whole list is every online user, tens of thousands on a busy deployment.
            state.online_list_rate(caller.user_id).await?;
            shared::presence::online(&state.redis, keys).await?
        }
    };
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
