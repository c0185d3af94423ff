//! The `/chat` endpoints and their OpenAPI description.

pub mod acting;
pub mod admin;
pub mod conversations;
pub mod groups;
pub mod internal;
pub mod member_settings;
pub mod messages;
pub mod moderation;
pub mod pins_blocks;
pub mod reactions;
pub mod reads;
pub mod rooms;
pub mod search;
pub mod uploads;

use std::collections::HashMap;

use axum::{
    routing::{delete, get, patch, post, put},
    Router,
};
use shared::docs::{BearerAuth, CommonErrors};
use shared::{chat::ChatType, jwt::AuthUser, ApiError, ApiResult};
use utoipa::OpenApi;
use uuid::Uuid;

use crate::{conversation::Conversation, model::UserSummary, AppState};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/chat/rooms", get(rooms::list).post(rooms::create))
        .route("/chat/rooms/{id}", get(rooms::get_one).patch(rooms::update))
        .route("/chat/rooms/{id}/join", post(rooms::join))
        .route("/chat/rooms/{id}/leave", post(rooms::leave))
        .route("/chat/rooms/{id}/members", get(rooms::members))
        .route(
            "/chat/rooms/{id}/moderators/{user_id}",
            put(moderation::promote).delete(moderation::demote),
        )
        .route(
            "/chat/rooms/{id}/bans",
            get(moderation::bans).post(moderation::ban),
        )
        .route("/chat/rooms/{id}/bans/{user_id}", delete(moderation::unban))
        .route("/chat/rooms/{id}/mutes", post(moderation::mute))
        .route(
            "/chat/rooms/{id}/mutes/{user_id}",
            delete(moderation::unmute),
        )
        .route("/chat/rooms/{id}/audit", get(moderation::audit_log))
        .route("/admin/rooms", get(admin::rooms))
        .route("/admin/rooms/{id}/audit", get(admin::audit_log))
        .route("/admin/messages/{id}", delete(admin::delete_message))
        .route("/chat/groups", get(groups::list).post(groups::create))
        .route(
            "/chat/groups/{id}",
            get(groups::get_one).patch(groups::update),
        )
        .route("/chat/groups/{id}/members", post(groups::add_members))
        .route(
            "/chat/groups/{id}/members/{user_id}",
            delete(groups::remove_member),
        )
        .route(
            "/chat/messages/{chat_type}/{chat_id}",
            get(messages::history).post(messages::send),
        )
        .route(
            "/chat/messages/{id}",
            patch(messages::edit).delete(messages::delete),
        )
        .route(
            "/chat/read/{chat_type}/{chat_id}",
            post(messages::mark_read),
        )
        .route(
            "/chat/messages/{id}/pin",
            put(pins_blocks::pin).delete(pins_blocks::unpin),
        )
        .route("/chat/pins/{chat_type}/{chat_id}", get(pins_blocks::pins))
        .route("/chat/reads/{chat_type}/{chat_id}", get(reads::reads))
        .route(
            "/chat/messages/{id}/reactions/{emoji}",
            put(reactions::add).delete(reactions::remove),
        )
        .route("/chat/blocks", get(pins_blocks::blocks))
        .route(
            "/chat/blocks/{user_id}",
            put(pins_blocks::block).delete(pins_blocks::unblock),
        )
        .route("/chat/search", get(search::search))
        .route("/chat/uploads", post(uploads::create))
        .route("/chat/attachments/{id}", get(uploads::download))
        .route("/chat/attachments/{id}/thumbnail", get(uploads::thumbnail))
        .route(
            "/chat/files/{*key}",
            get(uploads::get_file).put(uploads::put_file),
        )
        .route("/chat/conversations", get(conversations::list))
        .route(
            "/chat/conversations/{chat_type}/{chat_id}",
            get(conversations::get_one),
        )
        .route(
            "/chat/conversations/{chat_type}/{chat_id}/notifications",
            put(member_settings::set_notifications),
        )
        .route(
            "/chat/conversations/{chat_type}/{chat_id}/archive",
            put(member_settings::archive).delete(member_settings::unarchive),
        )
        .route("/chat/online-users", get(conversations::online_users))
        .route(
            "/internal/users/{id}/conversations",
            get(internal::user_conversations),
        )
        .route(
            "/internal/users/{id}/profile",
            post(internal::profile_changed),
        )
        .route("/internal/sync", post(internal::sync))
        .route("/internal/repair", post(internal::repair))
        .route("/internal/read", post(internal::read))
}

#[derive(OpenApi)]
#[openapi(
    info(title = "ChatSphere chat-service", description = "Rooms, groups, private chats and history."),
    paths(
        rooms::list, rooms::create, rooms::get_one, rooms::update, rooms::join, rooms::leave, rooms::members,
        groups::create, groups::list, groups::get_one, groups::update, groups::add_members, groups::remove_member,
        messages::history, messages::send, messages::edit, messages::delete, messages::mark_read,
        search::search, uploads::create, uploads::download, uploads::thumbnail,
        conversations::list, conversations::get_one, conversations::online_users,
        member_settings::set_notifications, member_settings::archive, member_settings::unarchive,
        pins_blocks::pin, pins_blocks::unpin, pins_blocks::pins,
        pins_blocks::block, pins_blocks::unblock, pins_blocks::blocks,
        reads::reads, reactions::add, reactions::remove,
        moderation::promote, moderation::demote, moderation::ban, moderation::unban,
        moderation::bans, moderation::mute, moderation::unmute, moderation::audit_log,
        admin::rooms, admin::delete_message, admin::audit_log,
    ),
    components(schemas(shared::error::ErrorBody, shared::chat::Message, UserSummary, reads::ReadReceipt, shared::chat::Reaction)),
    modifiers(&BearerAuth, &CommonErrors),
    tags(
        (name = "rooms", description = "Public rooms"),
        (name = "groups", description = "Groups"),
        (name = "messages", description = "History, sending, edits, deletions, read positions"),
        (name = "conversations", description = "The caller's conversations, their settings (notifications, archive), and online users"),
        (name = "blocks", description = "Users the caller blocked"),
        (name = "moderation", description = "Room moderators, bans, mutes and the audit log"),
        (name = "attachments", description = "Uploads to object storage, and downloads for the conversation's members"),
        (name = "admin", description = "For users with the admin role (`auth-service admin grant USERNAME`)"),
    )
)]
pub struct ApiDoc;

/// Completes messages as `viewer` reads them: reactions (with their own) and attachments.
pub async fn enrich(
    state: &AppState,
    viewer: Uuid,
    messages: &mut [shared::chat::Message],
) -> ApiResult<()> {
    reactions::attach(state, viewer, messages).await?;
    crate::attachments::fill(&state.db, messages).await
}

/// The `{chat_type}/{chat_id}` of a path; a bad one is 422 naming it.
pub fn parse_chat(chat_type: &str, chat_id: &str) -> ApiResult<(ChatType, Uuid)> {
    let mut problems = std::collections::BTreeMap::new();
    let t = chat_type
        .parse::<ChatType>()
        .map_err(|p| problems.insert("chat_type".to_owned(), p))
        .ok();
    let id = chat_id
        .parse::<Uuid>()
        .map_err(|_| problems.insert("chat_id".to_owned(), "must be a UUID".to_owned()))
        .ok();
    match (t, id) {
        (Some(t), Some(id)) => Ok((t, id)),
        _ => Err(ApiError::validation(problems)),
    }
}

/// The caller's conversation at `{chat_type}/{chat_id}`: 422 for a bad path, 403 for a room or
/// group they are not in, 404 for a private chat not started.
pub async fn member_of(
    state: &AppState,
    caller: &AuthUser,
    chat_type: &str,
    chat_id: &str,
) -> ApiResult<Conversation> {
    let (chat_type, chat_id) = parse_chat(chat_type, chat_id)?;
    crate::conversation::for_marking_read(&state.db, caller.user_id, chat_type, chat_id).await
}

/// Members of a room or group, by username.
pub async fn members_of(state: &AppState, conversation: Uuid) -> ApiResult<Vec<UserSummary>> {
    members_page(state, conversation, None, None).await
}

/// Members of a room or group by username: those after `after` (a username, whatever its
/// case), at most `limit` of them.
pub async fn members_page(
    state: &AppState,
    conversation: Uuid,
    after: Option<&str>,
    limit: Option<i64>,
) -> ApiResult<Vec<UserSummary>> {
    Ok(sqlx::query_as!(
        UserSummary,
        r#"SELECT u.id, u.username, u.display_name, u.avatar_url, u.is_active, u.created_at, u.last_seen
           FROM conversation_members m JOIN users u ON u.id = m.user_id
           WHERE m.conversation_id = $1
             AND ($2::text IS NULL OR lower(u.username) COLLATE "C" > lower($2) COLLATE "C")
           ORDER BY lower(u.username) COLLATE "C"
           LIMIT $3"#,
        conversation,
        after,
        limit
    )
    .fetch_all(&state.db)
    .await?)
}

/// Members of each of several rooms or groups, by username, in one query.
pub async fn members_of_each(
    state: &AppState,
    conversations: &[Uuid],
) -> ApiResult<HashMap<Uuid, Vec<UserSummary>>> {
    let rows = sqlx::query!(
        r#"SELECT m.conversation_id, u.id, u.username, u.display_name, u.avatar_url,
                  u.is_active, u.created_at, u.last_seen
           FROM conversation_members m JOIN users u ON u.id = m.user_id
           WHERE m.conversation_id = ANY($1)
           ORDER BY lower(u.username) COLLATE "C""#,
        conversations
    )
    .fetch_all(&state.db)
    .await?;
    let mut members: HashMap<Uuid, Vec<UserSummary>> = HashMap::new();
    for m in rows {
        members
            .entry(m.conversation_id)
            .or_default()
            .push(UserSummary {
                id: m.id,
                username: m.username,
                display_name: m.display_name,
                avatar_url: m.avatar_url,
                is_active: m.is_active,
                created_at: m.created_at,
                last_seen: m.last_seen,
            });
    }
    Ok(members)
}
