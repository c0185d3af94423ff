//! Read positions and receipts: storing a position (REST `POST /chat/read/...` and the
//! gateways' `mark_read`), the `read` event, and `GET /chat/reads/...`.
//!
//! `read` goes to every member of a group or private chat (a room's only to the reader's own
//! connections), at most once per reader per conversation per second: the first position of a
//! second goes out at once, and the newest of the rest once that second is over, so a client
//! reading quickly through a backlog sends many positions but its peers see a few events, the
//! last one always the newest.

use std::time::Duration;

use axum::{extract::State, Json};
use fred::prelude::*;
use serde::Serialize;
use shared::{
    chat::{ChatType, Event},
    error::ErrorBody,
    extract::ApiPath,
    jwt::AuthUser,
    ApiResult,
};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::{api::parse_chat, conversation, AppState};

/// How often one reader's `read` events of one conversation go out at most.
const READ_EVENT_EVERY: Duration = Duration::from_secs(1);
/// The most readers a room's receipts list.
const ROOM_READERS: i64 = 200;

/// Moves a read position forwards (never past the newest message) and tells who should know;
/// `session`, the WebSocket connection that asked, excepted.
pub async fn record_read(
    state: &AppState,
    user: Uuid,
    conversation: conversation::Conversation,
    seq: i64,
    session: Option<String>,
) -> ApiResult<()> {
    let moved = sqlx::query_scalar!(
        r#"UPDATE conversation_members m
           SET last_read_seq = LEAST($3, c.last_seq), read_at = now()
           FROM conversations c
           WHERE m.conversation_id = $1 AND m.user_id = $2 AND c.id = m.conversation_id
             AND LEAST($3, c.last_seq) > m.last_read_seq
           RETURNING m.last_read_seq"#,
        conversation.id,
        user,
        seq
    )
    .fetch_optional(&state.db)
    .await?;
    if let Some(seq) = moved {
        announce_read(state, user, conversation, seq, session).await;
    }
    Ok(())
}

/// Publishes `read` now if this reader published none in this conversation within the last
/// second; otherwise makes sure one (the newest position) goes out when the second is over,
/// to every connection (the newest position may be another connection's).
async fn announce_read(
    state: &AppState,
    user: Uuid,
    conversation: conversation::Conversation,
    seq: i64,
    session: Option<String>,
) {
    let keys = state.publisher.keys();
    let gate = keys.read_gate(user, conversation.id);
    let window = i64::try_from(READ_EVENT_EVERY.as_millis()).unwrap_or(1000);
    let first: Result<Option<String>, Error> = state
        .redis
        .set(
            &gate,
            "1",
            Some(Expiration::PX(window)),
            Some(SetOptions::NX),
            false,
        )
        .await;
    match first {
        // The first of this second (or Redis is away: better an event too many than none).
        Ok(Some(_)) | Err(_) => publish_read(state, user, conversation, seq, session).await,
        Ok(None) => {
            let trailing = format!("{gate}:trailing");
            let scheduled: Result<Option<String>, Error> = state
                .redis
                .set(
                    &trailing,
                    "1",
                    Some(Expiration::PX(window + 500)),
                    Some(SetOptions::NX),
                    false,
                )
                .await;
            if let Ok(Some(_)) = scheduled {
                let state = state.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(READ_EVENT_EVERY).await;
                    let newest = sqlx::query_scalar!(
                        "SELECT last_read_seq FROM conversation_members WHERE conversation_id = $1 AND user_id = $2",
                        conversation.id,
                        user
                    )
                    .fetch_optional(&state.db)
                    .await;
                    let _: Result<i64, Error> = state.redis.del(&trailing).await;
                    if let Ok(Some(seq)) = newest {
                        publish_read(&state, user, conversation, seq, None).await;
                    }
                });
            }
        }
    }
}

async fn publish_read(
    state: &AppState,
    user: Uuid,
    conversation: conversation::Conversation,
    seq: i64,
    session: Option<String>,
) {
    let event = Event::Read {
        user_id: user,
        chat_type: conversation.chat_type,
        conversation_id: conversation.id,
        peer_id: conversation.peer(),
        seq,
        session,
    };
    match conversation.chat_type {
        // Every member's connections (the reader's included) are on the group's channel.
        ChatType::Group => {
            let channel = state.publisher.keys().conversation_channel(conversation.id);
            state.publisher.publish(&[channel], &event).await;
        }
        ChatType::Private => {
            state.publisher.to_user(user, &event).await;
            if let Some(peer) = conversation.peer() {
                state.publisher.to_user(peer, &event).await;
            }
        }
        ChatType::Room => state.publisher.to_user(user, &event).await,
    }
}

/// One member's read position.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReadReceipt {
    pub user_id: Uuid,
    pub last_read_seq: i64,
}

/// `GET /chat/reads/{chat_type}/{chat_id}`
#[utoipa::path(get, path = "/chat/reads/{chat_type}/{chat_id}", tag = "messages", security(("bearer" = [])),
    params(
        ("chat_type" = ChatType, Path, description = "room, private or group"),
        ("chat_id" = Uuid, Path, description = "Room or group id; for private chats the other user's id"),
    ),
    responses(
        (status = 200, description = "Each member's read position (rooms: the 200 who read most recently), most recent reader first", body = [ReadReceipt]),
        (status = 401, description = "Not signed in", body = ErrorBody),
        (status = 403, description = "Not a member of the group", body = ErrorBody),
        (status = 404, description = "No such room, group or user", body = ErrorBody),
        (status = 422, description = "Invalid path", body = ErrorBody),
    ))]
pub async fn reads(
    State(state): State<AppState>,
    caller: AuthUser,
    ApiPath((chat_type, chat_id)): ApiPath<(String, String)>,
) -> ApiResult<Json<Vec<ReadReceipt>>> {
    let (chat_type, chat_id) = parse_chat(&chat_type, &chat_id)?;
    let Some(conversation) =
        conversation::for_reading(&state.db, caller.user_id, chat_type, chat_id).await?
    else {
        return Ok(Json(Vec::new()));
    };
    let limit = if chat_type == ChatType::Room {
        ROOM_READERS
    } else {
        i64::MAX
    };
    let receipts = sqlx::query_as!(
        ReadReceipt,
        r#"SELECT user_id, last_read_seq FROM conversation_members
           WHERE conversation_id = $1
           ORDER BY read_at DESC NULLS LAST, last_read_seq DESC, user_id
           LIMIT $2"#,
        conversation.id,
        limit
    )
    .fetch_all(&state.db)
    .await?;
    Ok(Json(receipts))
}
