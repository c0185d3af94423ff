//! Routes for gateways only (see [`shared::internal`]): what a user belongs to, sync, gap
//! repair and read positions. Never exposed by the public proxy.

use std::collections::HashMap;

use axum::{extract::State, http::StatusCode, Json};
use shared::{
    chat::{ChatType, Event},
    extract::{ApiJson, ApiPath},
    internal::{
        Membership, ReadRequest, RepairRequest, RepairResponse, RepairResult, ServiceCaller,
        SyncRequest, SyncResponse, SyncResult, UserConversations, SYNC_FRAME_BYTES, SYNC_PER_FRAME,
    },
    ApiError, ApiResult,
};
use uuid::Uuid;

use crate::{api::messages, conversation, model::UserSummary, AppState};

/// The most messages one sync or repair returns per conversation.
const MAX_LIMIT: i64 = 500;

/// `GET /internal/users/{id}/conversations`
pub async fn user_conversations(
    State(state): State<AppState>,
    _: ServiceCaller,
    ApiPath(user): ApiPath<Uuid>,
) -> ApiResult<Json<UserConversations>> {
    let rows = sqlx::query!(
        r#"SELECT c.id, c.chat_type, c.room_id, c.group_id, c.user_low, c.user_high, c.last_seq,
                  COALESCE(c.last_message_at, m.joined_at) AS "active_at!"
           FROM conversation_members m JOIN conversations c ON c.id = m.conversation_id
           WHERE m.user_id = $1"#,
        user
    )
    .fetch_all(&state.db)
    .await?;
    let mut conversations = Vec::with_capacity(rows.len());
    // Private chats and groups, with when each was last active: whom presence goes to.
    let mut shared = Vec::new();
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
        if chat_type != ChatType::Room {
            shared.push((r.active_at, chat_type, r.id, chat_id));
        }
        conversations.push(Membership {
            conversation_id: r.id,
            chat_type,
            chat_id,
            last_seq: r.last_seq,
        });
    }
    shared.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.2.cmp(&b.2)));
    let recent: Vec<(ChatType, Uuid, Uuid)> =
        shared.into_iter().map(|(_, t, c, id)| (t, c, id)).collect();
    let max = usize::try_from(state.config.presence_max_contacts).unwrap_or(usize::MAX);
    let contacts = contacts(&state, user, &recent, max).await?;
    let blocked = sqlx::query_scalar!(
        "SELECT blocked_id FROM user_blocks WHERE blocker_id = $1",
        user
    )
    .fetch_all(&state.db)
    .await?;
    Ok(Json(UserConversations {
        conversations,
        contacts,
        blocked,
    }))
}

/// `POST /internal/users/{id}/profile`: auth-service's word that the user changed their display
/// name or avatar. Everyone who shows the user hears it as `user_updated`, with the user as
/// stored now: one publish per room and group they are in (its members), per private chat (the
/// other user's channel), and on their own channel (their other devices).
///
/// One user's announcements go out one at a time, on every replica (a transaction-scoped
/// advisory lock on the user): each reads the user after the change that called it and
/// publishes before the next one reads, so two quick changes never reach a channel in the
/// wrong order and the last word on every channel is the user as stored.
pub async fn profile_changed(
    State(state): State<AppState>,
    _: ServiceCaller,
    ApiPath(user): ApiPath<Uuid>,
) -> ApiResult<StatusCode> {
    let mut tx = state.db.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1, $2)")
        .bind(PROFILE_ANNOUNCEMENTS)
        .bind(lock_key(user))
        .execute(&mut *tx)
        .await?;
    let profile = sqlx::query_as!(
        UserSummary,
        r#"SELECT id, username, display_name, avatar_url, is_active, created_at, last_seen
           FROM users WHERE id = $1"#,
        user
    )
    .fetch_optional(&mut *tx)
    .await?
    .ok_or_else(|| ApiError::not_found("no such user"))?;
    let rows = sqlx::query!(
        r#"SELECT c.id, c.user_low, c.user_high
           FROM conversation_members m JOIN conversations c ON c.id = m.conversation_id
           WHERE m.user_id = $1"#,
        user
    )
    .fetch_all(&mut *tx)
    .await?;
    let keys = state.publisher.keys();
    let mut channels = Vec::with_capacity(rows.len() + 1);
    channels.push(keys.user_channel(user));
    for r in rows {
        channels.push(match (r.user_low, r.user_high) {
            // A private chat: its pair of users.
            (Some(low), Some(high)) => keys.user_channel(if low == user { high } else { low }),
            _ => keys.conversation_channel(r.id),
        });
    }
    state
        .publisher
        .publish(&channels, &Event::UserUpdated(profile))
        .await;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The first key of the advisory locks that order profile announcements (the second is the
/// user's [`lock_key`]): two 32-bit keys, a space apart from the one-key locks (sqlx's
/// migration lock among them).
const PROFILE_ANNOUNCEMENTS: i32 = 0x7072_6f66; // "prof"

/// A user's 32-bit lock key. Two users sharing one only wait for each other.
fn lock_key(user: Uuid) -> i32 {
    let (high, low) = user.as_u64_pair();
    let folded = high ^ low;
    (folded ^ (folded >> 32)) as u32 as i32
}

/// Groups whose members one query reads while choosing contacts.
const CONTACT_GROUPS_PER_QUERY: usize = 8;

/// The users told of `user`'s presence: at most `max` (`PRESENCE_MAX_CONTACTS`), those of the
/// private chats and groups in `recent` (`(kind, conversation, chat id)`, the latest activity
/// first), each once. A private chat's peer is its chat id; a group's members are read a few
/// groups at a time, in that order, until the bound is reached: a user in a thousand groups of
/// a thousand costs a few thousand rows per upgrade, not a million, and a few thousand
/// publishes per transition.
async fn contacts(
    state: &AppState,
    user: Uuid,
    recent: &[(ChatType, Uuid, Uuid)],
    max: usize,
) -> ApiResult<Vec<Uuid>> {
    let mut contacts = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut members: HashMap<Uuid, Vec<Uuid>> = HashMap::new();
    for (i, &(chat_type, conversation, chat_id)) in recent.iter().enumerate() {
        if contacts.len() >= max {
            break;
        }
        if chat_type == ChatType::Private {
            if seen.insert(chat_id) {
                contacts.push(chat_id);
            }
            continue;
        }
        if !members.contains_key(&conversation) {
            let batch: Vec<Uuid> = recent[i..]
                .iter()
                .filter(|(t, c, _)| *t != ChatType::Private && !members.contains_key(c))
                .map(|(_, c, _)| *c)
                .take(CONTACT_GROUPS_PER_QUERY)
                .collect();
            for c in &batch {
                members.insert(*c, Vec::new());
            }
            let rows = sqlx::query!(
                "SELECT conversation_id, user_id FROM conversation_members
                 WHERE conversation_id = ANY($1) AND user_id <> $2",
                &batch,
                user
            )
            .fetch_all(&state.db)
            .await?;
            for r in rows {
                if let Some(list) = members.get_mut(&r.conversation_id) {
                    list.push(r.user_id);
                }
            }
        }
        for u in members.get(&conversation).into_iter().flatten() {
            if contacts.len() >= max {
                break;
            }
            if seen.insert(*u) {
                contacts.push(*u);
            }
        }
    }
    Ok(contacts)
}

/// `POST /internal/sync`: per position, the messages after it that the user may read.
pub async fn sync(
    State(state): State<AppState>,
    _: ServiceCaller,
    ApiJson(req): ApiJson<SyncRequest>,
) -> ApiResult<Json<SyncResponse>> {
    let limit = req.limit.clamp(1, MAX_LIMIT);
    let mut results = Vec::with_capacity(req.positions.len());
    // What is left of the frame's budget: messages and (about) bytes.
    let mut count_left = SYNC_PER_FRAME;
    let mut bytes_left = SYNC_FRAME_BYTES;
    for p in req.positions {
        let mut result = SyncResult {
            chat_type: p.chat_type,
            chat_id: p.chat_id,
            conversation_id: None,
            messages: vec![],
            has_more: false,
            error: None,
        };
        match conversation::for_reading(&state.db, req.user_id, p.chat_type, p.chat_id).await {
            Ok(Some(c)) => {
                let after = p.seq.max(0);
                result.conversation_id = Some(c.id);
                if count_left == 0 || bytes_left == 0 {
                    // The frame is full: nothing more is read, and the position is cut short
                    // if anything follows it.
                    result.has_more = messages::any_after(&state.db, c.id, after).await?;
                } else {
                    let take = limit.min(i64::try_from(count_left).unwrap_or(MAX_LIMIT));
                    let mut page = messages::page(&state, c.id, take, None, Some(after)).await?;
                    crate::api::enrich(&state, req.user_id, &mut page.messages).await?;
                    let kept = within_bytes(&page.messages, &mut bytes_left);
                    if kept < page.messages.len() {
                        page.messages.truncate(kept);
                        page.has_more = true;
                    }
                    count_left -= kept;
                    result.messages = page.messages;
                    result.has_more = page.has_more;
                }
            }
            Ok(None) => {}
            Err(e) if e.status.is_server_error() => return Err(e),
            Err(e) => {
                result.error = Some(
                    match e.status {
                        StatusCode::FORBIDDEN => "forbidden",
                        StatusCode::NOT_FOUND => "not_found",
                        _ => "invalid_payload",
                    }
                    .to_owned(),
                )
            }
        }
        results.push(result);
    }
    Ok(Json(SyncResponse { results }))
}

/// How many of `messages` fit in `bytes_left` (which they then use up); once it is spent, none.
fn within_bytes(messages: &[shared::chat::Message], bytes_left: &mut usize) -> usize {
    let mut kept = 0;
    for m in messages {
        let size = m.approx_encoded_len();
        if size > *bytes_left {
            // The budget is spent: later positions get nothing more.
            *bytes_left = 0;
            break;
        }
        *bytes_left -= size;
        kept += 1;
    }
    kept
}

/// `POST /internal/repair`: each conversation's last seq and the messages after a seq.
pub async fn repair(
    State(state): State<AppState>,
    _: ServiceCaller,
    ApiJson(req): ApiJson<RepairRequest>,
) -> ApiResult<Json<RepairResponse>> {
    let limit = req.limit.clamp(1, MAX_LIMIT);
    let ids: Vec<Uuid> = req.after.iter().map(|(id, _)| *id).collect();
    let last: HashMap<Uuid, i64> = sqlx::query!(
        "SELECT id, last_seq FROM conversations WHERE id = ANY($1)",
        &ids
    )
    .fetch_all(&state.db)
    .await?
    .into_iter()
    .map(|r| (r.id, r.last_seq))
    .collect();
    let mut results = Vec::with_capacity(req.after.len());
    for (conversation_id, after) in req.after {
        let Some(&last_seq) = last.get(&conversation_id) else {
            continue;
        };
        let messages = if after >= 0 && after < last_seq {
            messages::page(&state, conversation_id, limit, None, Some(after))
                .await?
                .messages
        } else {
            vec![]
        };
        results.push(RepairResult {
            conversation_id,
            last_seq,
            messages,
        });
    }
    Ok(Json(RepairResponse { results }))
}

/// `POST /internal/read`: a `mark_read` from a WebSocket, stored as with REST.
pub async fn read(
    State(state): State<AppState>,
    _: ServiceCaller,
    ApiJson(req): ApiJson<ReadRequest>,
) -> ApiResult<StatusCode> {
    if !shared::chat::is_client_seq(req.seq) {
        return Err(ApiError::invalid_field("seq", shared::chat::SEQ_RANGE));
    }
    let c =
        conversation::for_marking_read(&state.db, req.user_id, req.chat_type, req.chat_id).await?;
    crate::api::reads::record_read(&state, req.user_id, c, req.seq, req.session).await?;
    Ok(StatusCode::NO_CONTENT)
}
