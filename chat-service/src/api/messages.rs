//! History, sending, editing, deleting and read positions.

use axum::{extract::State, http::StatusCode, Json};
use serde::{Deserialize, Serialize};
use shared::{
    chat::{ChatType, Event, Message, MessageType},
    error::ErrorBody,
    extract::{bounded_int, ApiJson, ApiPath, ApiQuery},
    jwt::AuthUser,
    ApiError, ApiResult,
};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::acting::Acting;
use crate::{
    api::{moderation, parse_chat},
    conversation,
    model::{self, MessageRow},
    pipeline::{self, Draft, Outcome},
    AppState,
};

/// A page of history, ascending by `seq`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Page {
    pub messages: Vec<Message>,
    /// With `before` or neither: older messages exist. With `after` (alone or with `before`):
    /// more messages follow the page.
    pub has_more: bool,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// 1–100, default 50.
    #[param(value_type = Option<i64>)]
    limit: Option<String>,
    /// The page just before this seq. With `after` too: the messages strictly between the two,
    /// from the oldest.
    #[param(value_type = Option<i64>, minimum = 0, maximum = 9007199254740991.0)]
    before: Option<String>,
    /// The page just after this seq (with `before`, up to it).
    #[param(value_type = Option<i64>, minimum = 0, maximum = 9007199254740991.0)]
    after: Option<String>,
}

fn parse_bound(field: &str, value: Option<&str>) -> ApiResult<Option<i64>> {
    match value.map(str::parse::<i64>) {
        None => Ok(None),
        Some(Ok(n)) if shared::chat::is_client_seq(n) => Ok(Some(n)),
        Some(_) => Err(ApiError::invalid_field(field, shared::chat::SEQ_RANGE)),
    }
}

/// `GET /chat/messages/{chat_type}/{chat_id}`
#[utoipa::path(get, path = "/chat/messages/{chat_type}/{chat_id}", tag = "messages", security(("bearer" = [])),
    params(
        ("chat_type" = ChatType, Path, description = "room, private or group"),
        ("chat_id" = Uuid, Path, description = "Room or group id; for private chats the other user's id"),
        PageQuery,
    ),
    responses(
        (status = 200, description = "A page of messages, ascending by seq", body = Page),
        (status = 403, description = "Not a member of the group", body = ErrorBody),
        (status = 404, description = "No such room, group or user", body = ErrorBody),
        (status = 422, description = "Invalid path or parameters", body = ErrorBody),
    ))]
pub async fn history(
    State(state): State<AppState>,
    caller: AuthUser,
    ApiPath((chat_type, chat_id)): ApiPath<(String, String)>,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> ApiResult<Json<Page>> {
    let (chat_type, chat_id) = parse_chat(&chat_type, &chat_id)?;
    let limit = bounded_int("limit", q.limit.as_deref(), 50, 1..=100)?;
    let before = parse_bound("before", q.before.as_deref())?;
    let after = parse_bound("after", q.after.as_deref())?;
    let Some(conversation) =
        conversation::for_reading(&state.db, caller.user_id, chat_type, chat_id).await?
    else {
        return Ok(Json(Page {
            messages: vec![],
            has_more: false,
        }));
    };
    let mut page = page(&state, conversation.id, limit, before, after).await?;
    crate::api::enrich(&state, caller.user_id, &mut page.messages).await?;
    Ok(Json(page))
}

/// Whether the conversation holds a message after `seq`.
pub async fn any_after(db: &sqlx::PgPool, conversation_id: Uuid, seq: i64) -> ApiResult<bool> {
    let last = sqlx::query_scalar!(
        "SELECT last_seq FROM conversations WHERE id = $1",
        conversation_id
    )
    .fetch_optional(db)
    .await?;
    Ok(last.is_some_and(|last| last > seq))
}

/// Reads one page: `after` walks forwards, otherwise backwards from `before` (or the end).
pub async fn page(
    state: &AppState,
    conversation_id: Uuid,
    limit: i64,
    before: Option<i64>,
    after: Option<i64>,
) -> ApiResult<Page> {
    let take = limit + 1;
    let mut rows = match after {
        Some(after) => {
            sqlx::query_as!(
                MessageRow,
                r#"SELECT * FROM messages
                   WHERE conversation_id = $1 AND seq > $2 AND seq < $3
                   ORDER BY seq LIMIT $4"#,
                conversation_id,
                after,
                before.unwrap_or(i64::MAX),
                take
            )
            .fetch_all(&state.db)
            .await?
        }
        None => {
            let mut rows = sqlx::query_as!(
                MessageRow,
                r#"SELECT * FROM messages
                   WHERE conversation_id = $1 AND seq < $2
                   ORDER BY seq DESC LIMIT $3"#,
                conversation_id,
                before.unwrap_or(i64::MAX),
                take
            )
            .fetch_all(&state.db)
            .await?;
            let has_more = rows.len() as i64 > limit;
            rows.truncate(limit as usize);
            rows.reverse();
            return Ok(Page {
                messages: model::messages(rows)?,
                has_more,
            });
        }
    };
    let has_more = rows.len() as i64 > limit;
    rows.truncate(limit as usize);
    Ok(Page {
        messages: model::messages(rows)?,
        has_more,
    })
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct SendRequest {
    /// 1–4000 characters; for `image` without an attachment, an http(s) URL; with an
    /// `attachment_id`, an optional caption (0–4000).
    #[serde(default)]
    pub content: String,
    #[serde(default)]
    pub message_type: MessageType,
    /// A message of the same conversation.
    pub reply_to_id: Option<Uuid>,
    /// The client's id for this send (1–128 characters): sending it again gives the same message.
    pub client_id: Option<String>,
    /// For `file` and `image`: an upload of the caller's (`POST /chat/uploads`), used once;
    /// `content` is then an optional caption.
    pub attachment_id: Option<Uuid>,
}

/// `POST /chat/messages/{chat_type}/{chat_id}`
#[utoipa::path(post, path = "/chat/messages/{chat_type}/{chat_id}", tag = "messages", security(("bearer" = [])),
    params(
        ("chat_type" = ChatType, Path, description = "room, private or group"),
        ("chat_id" = Uuid, Path, description = "Room or group id; for private chats the other user's id"),
    ),
    request_body = SendRequest,
    responses(
        (status = 201, description = "Stored and published (or, for a repeated client_id, the message stored before)", body = Message),
        (status = 403, description = "Not a member", body = ErrorBody),
        (status = 404, description = "No such room, group or user", body = ErrorBody),
        (status = 422, description = "Invalid fields, or `send_failed`: the message cannot be stored", body = ErrorBody),
        (status = 429, description = "`rate_limited`: the user's send rate (shared with their sockets) is used up; or `too_many_requests`: a first message to someone past PRIVATE_CHATS_PER_HOUR private chats started in the last hour. See Retry-After", body = ErrorBody),
        (status = 503, description = "Postgres or Redis unavailable; nothing was stored", body = ErrorBody),
    ))]
pub async fn send(
    State(state): State<AppState>,
    caller: AuthUser,
    ApiPath((chat_type, chat_id)): ApiPath<(String, String)>,
    ApiJson(req): ApiJson<SendRequest>,
) -> ApiResult<(StatusCode, Json<Message>)> {
    let (chat_type, chat_id) = parse_chat(&chat_type, &chat_id)?;
    pipeline::check_send(
        &req.content,
        req.message_type,
        req.attachment_id.is_some(),
        req.client_id.as_deref(),
        state.config.max_content_chars,
    )?;
    state.require_events()?;
    // Before the target is resolved: a send past the rate starts no private chat.
    state.send_rate(caller.user_id).await?;
    let conversation = conversation::for_sending(
        &state.db,
        state.new_private_chats(),
        caller.user_id,
        chat_type,
        chat_id,
    )
    .await?;
    let (attachment, file_key) = match req.attachment_id {
        Some(id) => {
            let checked = crate::attachments::check_for_message(
                &state.db,
                &state.files,
                caller.user_id,
                id,
                req.message_type,
                req.client_id.as_deref(),
            )
            .await?;
            (Some(checked.attachment), checked.file_key)
        }
        None => (None, None),
    };
    let draft = Draft {
        sender: caller.user_id,
        conversation,
        client_id: req.client_id,
        content: req.content,
        message_type: req.message_type,
        reply_to_id: req.reply_to_id,
        attachment,
        attachment_file: file_key,
    };
    let mut persisted =
        pipeline::persist(&state.db, &state.publisher, std::slice::from_ref(&draft)).await?;
    let outcome = persisted
        .results
        .pop()
        .ok_or_else(|| ApiError::internal("persist returned nothing"))??;
    if let Outcome::Created(m) = &outcome {
        state.publisher.new_message(m, conversation.id).await;
        if let Some(a) = m
            .attachment
            .as_ref()
            .filter(|a| a.content_type.starts_with("image/"))
        {
            crate::attachments::thumbnails_later(state.db.clone(), state.files.clone(), vec![a.id]);
        }
        if state.config.webhook.is_some() {
            crate::notify::enqueue(&state.redis, state.publisher.keys(), &[m]).await;
        }
    }
    drop(persisted.turn);
    Ok((StatusCode::CREATED, Json(outcome.message().clone())))
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct EditRequest {
    /// 1–4000 characters (an http(s) URL for an image message).
    pub content: String,
}

/// The message, for its author while they are still a member of its conversation.
async fn own_message(state: &AppState, id: Uuid, caller: Uuid) -> ApiResult<MessageRow> {
    let row = sqlx::query_as!(MessageRow, "SELECT * FROM messages WHERE id = $1", id)
        .fetch_optional(&state.db)
        .await?
        .ok_or_else(|| ApiError::not_found("no such message"))?;
    if row.from_user_id != caller {
        return Err(ApiError::forbidden("only the author may change a message"));
    }
    if !conversation::is_member(&state.db, row.conversation_id, caller).await? {
        return Err(ApiError::forbidden(
            "you are no longer a member of this conversation",
        ));
    }
    Ok(row)
}

/// `PATCH /chat/messages/{id}`
#[utoipa::path(patch, path = "/chat/messages/{id}", tag = "messages", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Message id")), request_body = EditRequest,
    responses(
        (status = 200, description = "The edited message", body = Message),
        (status = 403, description = "Not the author, or no longer a member of the conversation", body = ErrorBody),
        (status = 404, description = "No such message", body = ErrorBody),
        (status = 409, description = "The message was deleted", body = ErrorBody),
        (status = 429, description = "`rate_limited`: the user's changes that reach others (`ACTION_RATE_PER_SECOND`, 10 a second, bursts of 40, by default) are used up; nothing was done; `Retry-After` says when to try again", body = ErrorBody),
    ))]
pub async fn edit(
    State(state): State<AppState>,
    Acting(caller): Acting,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(req): ApiJson<EditRequest>,
) -> ApiResult<Json<Message>> {
    let current = own_message(&state, id, caller.user_id).await?;
    if current.is_deleted {
        return Err(ApiError::conflict(
            "message_deleted",
            "a deleted message cannot be edited",
        ));
    }
    let message_type = MessageType::from_db(&current.message_type).unwrap_or_default();
    pipeline::check_send(
        &req.content,
        message_type,
        current.attachment_id.is_some(),
        None,
        state.config.max_content_chars,
    )?;
    state.require_events()?;
    let chat_type = shared::chat::ChatType::from_db(&current.chat_type)
        .ok_or_else(|| ApiError::internal("a message without a chat type"))?;
    let mentions = crate::mentions::resolve(
        &state.db,
        &[(current.conversation_id, chat_type, req.content.as_str())],
    )
    .await?
    .pop()
    .unwrap_or_default();
    let row = sqlx::query_as!(
        MessageRow,
        r#"UPDATE messages SET content = $2, is_edited = TRUE, edited_at = now(),
                               mentions = $3, mentions_all = $4
           WHERE id = $1 AND NOT is_deleted RETURNING *"#,
        id,
        req.content,
        &mentions.users,
        mentions.everyone
    )
    .fetch_optional(&state.db)
    .await?
    .ok_or_else(|| ApiError::conflict("message_deleted", "a deleted message cannot be edited"))?;
    let conversation_id = row.conversation_id;
    let mut message = Message::try_from(row)?;
    crate::attachments::fill(&state.db, std::slice::from_mut(&mut message)).await?;
    state
        .publisher
        .message_event(
            &message,
            conversation_id,
            Event::MessageEdited {
                conversation_id,
                message: message.clone(),
            },
        )
        .await;
    Ok(Json(message))
}

/// `DELETE /chat/messages/{id}`
#[utoipa::path(delete, path = "/chat/messages/{id}", tag = "messages", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Message id")),
    responses(
        (status = 204, description = "Deleted: it stays in history, emptied, with is_deleted (deleting twice is harmless). A room's owner and moderators delete anyone's message there; that deletion is in the room's audit log"),
        (status = 403, description = "Not the author (nor moderating the room), or no longer a member of the conversation", body = ErrorBody),
        (status = 404, description = "No such message", body = ErrorBody),
        (status = 429, description = "`rate_limited`: the user's changes that reach others (`ACTION_RATE_PER_SECOND`, 10 a second, bursts of 40, by default) are used up; nothing was done; `Retry-After` says when to try again", body = ErrorBody),
    ))]
pub async fn delete(
    State(state): State<AppState>,
    Acting(caller): Acting,
    ApiPath(id): ApiPath<Uuid>,
) -> ApiResult<StatusCode> {
    delete_message(&state, caller.user_id, id, false).await
}

/// Deletes message `id` as `actor`: its author, an owner or moderator of its room, or, with
/// `admin` (checked by the caller), anyone. Someone else's message in a room goes in the room's
/// audit log.
pub async fn delete_message(
    state: &AppState,
    actor: Uuid,
    id: Uuid,
    admin: bool,
) -> ApiResult<StatusCode> {
    let current = sqlx::query_as!(MessageRow, "SELECT * FROM messages WHERE id = $1", id)
        .fetch_optional(&state.db)
        .await?
        .ok_or_else(|| ApiError::not_found("no such message"))?;
    let someone_elses = current.from_user_id != actor;
    let moderated_room = match current.room_id {
        Some(room) if someone_elses => {
            if !admin && !moderation::moderates(&state.db, room, actor).await? {
                return Err(ApiError::forbidden("only the author may change a message"));
            }
            Some(room)
        }
        _ if admin && someone_elses => None,
        _ => {
            own_message(state, id, actor).await?;
            None
        }
    };
    if current.is_deleted {
        return Ok(StatusCode::NO_CONTENT);
    }
    state.require_events()?;
    let mut tx = state.db.begin().await?;
    let row = sqlx::query_as!(
        MessageRow,
        r#"UPDATE messages SET content = '', is_deleted = TRUE, deleted_at = now()
           WHERE id = $1 AND NOT is_deleted RETURNING *"#,
        id
    )
    .fetch_optional(&mut *tx)
    .await?;
    if let (Some(room), Some(row)) = (moderated_room, &row) {
        moderation::audit_message_deleted(&mut *tx, room, actor, row.from_user_id, id).await?;
    }
    // Nobody may download its attachment any more: its bytes go too.
    let files = match row.as_ref().and_then(|r| r.attachment_id) {
        Some(attachment) => crate::attachments::queue_removal(&mut tx, attachment).await?,
        None => Vec::new(),
    };
    tx.commit().await?;
    crate::attachments::remove_later(state.db.clone(), state.files.clone(), files);
    if let Some(row) = row {
        let conversation_id = row.conversation_id;
        let message = Message::try_from(row)?;
        let event = Event::MessageDeleted {
            id: message.id,
            seq: message.seq,
            chat_type: message.chat_type,
            conversation_id,
            from_user_id: message.from_user_id,
            to_user_id: message.to_user_id,
        };
        state
            .publisher
            .message_event(&message, conversation_id, event)
            .await;
    }
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct ReadRequest {
    /// The caller has read every message up to this seq (0 to 2^53 - 1).
    #[schema(minimum = 0, maximum = 9007199254740991.0)]
    pub seq: i64,
}

/// `POST /chat/read/{chat_type}/{chat_id}`
#[utoipa::path(post, path = "/chat/read/{chat_type}/{chat_id}", tag = "messages", security(("bearer" = [])),
    params(
        ("chat_type" = ChatType, Path, description = "room, private or group"),
        ("chat_id" = Uuid, Path, description = "Room or group id; for private chats the other user's id"),
    ),
    request_body = ReadRequest,
    responses(
        (status = 204, description = "Stored. Read positions only move forwards and stop at the newest message."),
        (status = 403, description = "Not a member", body = ErrorBody),
        (status = 404, description = "No such conversation", body = ErrorBody),
    ))]
pub async fn mark_read(
    State(state): State<AppState>,
    caller: AuthUser,
    ApiPath((chat_type, chat_id)): ApiPath<(String, String)>,
    ApiJson(req): ApiJson<ReadRequest>,
) -> ApiResult<StatusCode> {
    let (chat_type, chat_id) = parse_chat(&chat_type, &chat_id)?;
    if !shared::chat::is_client_seq(req.seq) {
        return Err(ApiError::invalid_field("seq", shared::chat::SEQ_RANGE));
    }
    let conversation =
        conversation::for_marking_read(&state.db, caller.user_id, chat_type, chat_id).await?;
    state.require_events()?;
    crate::api::reads::record_read(&state, caller.user_id, conversation, req.seq, None).await?;
    Ok(StatusCode::NO_CONTENT)
}
