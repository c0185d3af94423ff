//! Public rooms.

use axum::{extract::State, http::StatusCode, Json};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use shared::{
    chat::{ChatType, Event, MembershipAction},
    error::{unique_violation, ErrorBody},
    extract::{bounded_int, ApiJson, ApiPath, ApiQuery},
    jwt::AuthUser,
    ApiError, ApiResult,
};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::acting::Acting;
use crate::{model::UserSummary, AppState};

/// A public room.
#[derive(Debug, Serialize, ToSchema)]
pub struct Room {
    pub id: Uuid,
    pub name: String,
    pub description: Option<String>,
    pub created_by: Uuid,
    pub created_at: DateTime<Utc>,
    pub member_count: i64,
    /// Whether the caller has joined it.
    pub is_member: bool,
    /// The caller's role: `owner` (its creator), `moderator` or `member`; `null` when the
    /// caller has no role and has not joined.
    #[schema(example = "member")]
    pub my_role: Option<String>,
}

/// What `PATCH /chat/rooms/{id}` changes: an absent field stays as it is.
#[derive(Debug, Deserialize, ToSchema)]
pub struct UpdateRoom {
    /// 1–64 characters, unique whatever its case.
    pub name: Option<String>,
    /// At most 500 characters; empty clears it.
    pub description: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct CreateRoom {
    /// 1–64 characters, unique whatever its case.
    pub name: String,
    /// At most 500 characters.
    pub description: Option<String>,
}

pub(crate) async fn load(state: &AppState, id: Uuid, viewer: Uuid) -> ApiResult<Room> {
    sqlx::query_as!(
        Room,
        r#"SELECT r.id, r.name, r.description, r.created_by, r.created_at,
                  r.member_count,
                  EXISTS (SELECT 1 FROM conversation_members m
                          WHERE m.conversation_id = r.id AND m.user_id = $2) AS "is_member!",
                  CASE WHEN r.created_by = $2 THEN 'owner'
                       WHEN EXISTS (SELECT 1 FROM room_moderators d
                                    WHERE d.room_id = r.id AND d.user_id = $2) THEN 'moderator'
                       WHEN EXISTS (SELECT 1 FROM conversation_members m
                                    WHERE m.conversation_id = r.id AND m.user_id = $2) THEN 'member'
                  END AS my_role
           FROM rooms r WHERE r.id = $1"#,
        id,
        viewer
    )
    .fetch_optional(&state.db)
    .await?
    .ok_or_else(|| ApiError::not_found("no such room"))
}

/// Optional paging and filtering of `GET /chat/rooms` (extensions: without them, every room).
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RoomsQuery {
    /// 1–500: at most this many rooms; a page this long may have more after it.
    #[param(value_type = Option<i64>)]
    limit: Option<String>,
    /// The rooms after the room of this name (the last name of the page before), by name.
    after: Option<String>,
    /// Only rooms whose name starts with this, whatever its case (1–64 characters).
    q: Option<String>,
}

/// The longest room name, in characters.
const MAX_NAME_CHARS: usize = 64;

/// `GET /chat/rooms`
#[utoipa::path(get, path = "/chat/rooms", operation_id = "list_rooms", tag = "rooms", security(("bearer" = [])),
    params(RoomsQuery),
    responses(
        (status = 200, description = "Public rooms by name, whatever its case: every one, or with `limit` a page of them", body = [Room]),
        (status = 422, description = "Invalid `limit`, `after` or `q`", body = ErrorBody),
        (status = 429, description = "`rate_limited`: without `limit`, more whole lists than `LIST_RATE_PER_SECOND` (2 a second, bursts of 20, per user, shared with a room's members and the groups); see Retry-After. Pages are not counted", body = ErrorBody),
    ))]
pub async fn list(
    State(state): State<AppState>,
    caller: AuthUser,
    ApiQuery(query): ApiQuery<RoomsQuery>,
) -> ApiResult<Json<Vec<Room>>> {
    let limit = query
        .limit
        .as_deref()
        .map(|v| bounded_int("limit", Some(v), 0, 1..=500))
        .transpose()?;
    for (field, value) in [("after", &query.after), ("q", &query.q)] {
        if let Some(v) = value {
            if v.is_empty() || v.chars().count() > MAX_NAME_CHARS {
                return Err(ApiError::invalid_field(
                    field,
                    format!("must be 1 to {MAX_NAME_CHARS} characters"),
                ));
            }
            shared::text::check(v).map_err(|p| ApiError::invalid_field(field, p))?;
        }
    }
    if limit.is_none() {
        state.list_rate(caller.user_id).await?;
    }
    // Counts are kept on each room; the caller's membership and role are joined once.
    let rooms = sqlx::query_as!(
        Room,
        r#"SELECT r.id, r.name, r.description, r.created_by, r.created_at, r.member_count,
                  me.user_id IS NOT NULL AS "is_member!",
                  CASE WHEN r.created_by = $1 THEN 'owner'
                       WHEN moderator.user_id IS NOT NULL THEN 'moderator'
                       WHEN me.user_id IS NOT NULL THEN 'member'
                  END AS my_role
           FROM rooms r
           LEFT JOIN conversation_members me ON me.conversation_id = r.id AND me.user_id = $1
           LEFT JOIN room_moderators moderator
                  ON moderator.room_id = r.id AND moderator.user_id = $1
           WHERE ($2::text IS NULL OR lower(r.name) > lower($2))
             AND ($3::text IS NULL OR starts_with(lower(r.name), lower($3)))
           ORDER BY lower(r.name)
           LIMIT $4"#,
        caller.user_id,
        query.after,
        query.q,
        limit
    )
    .fetch_all(&state.db)
    .await?;
    Ok(Json(rooms))
}

/// `POST /chat/rooms`
#[utoipa::path(post, path = "/chat/rooms", operation_id = "create_room", tag = "rooms", security(("bearer" = [])), request_body = CreateRoom,
    responses(
        (status = 201, description = "Created; the creator has joined", body = Room),
        (status = 409, description = "The name is taken (`room_name_taken`), or the caller already belongs to `MAX_ROOMS_PER_USER` rooms (`too_many_rooms`)", body = ErrorBody),
        (status = 422, description = "Invalid fields", body = ErrorBody),
        (status = 429, description = "Too many rooms created in the last hour (ROOMS_PER_HOUR); see Retry-After", body = ErrorBody),
    ))]
pub async fn create(
    State(state): State<AppState>,
    caller: AuthUser,
    ApiJson(req): ApiJson<CreateRoom>,
) -> ApiResult<(StatusCode, Json<Room>)> {
    let name = req.name.trim();
    let description = req
        .description
        .as_deref()
        .map(str::trim)
        .filter(|d| !d.is_empty());
    check_fields(Some(name), description)?;
    state.require_events()?;
    check_room_count(&state.db, state.config.max_rooms_per_user, caller.user_id).await?;
    state
        .creation_quota("rooms", caller.user_id, state.config.quotas.rooms_per_hour)
        .await?;
    let id = Uuid::now_v7();
    let mut tx = state.db.begin().await?;
    sqlx::query!(
        "INSERT INTO rooms (id, name, description, created_by) VALUES ($1, $2, $3, $4)",
        id,
        name,
        description,
        caller.user_id
    )
    .execute(&mut *tx)
    .await
    .map_err(name_taken)?;
    sqlx::query!(
        "INSERT INTO conversations (id, chat_type, room_id) VALUES ($1, 'ROOM', $1)",
        id
    )
    .execute(&mut *tx)
    .await?;
    sqlx::query!(
        "INSERT INTO conversation_members (conversation_id, user_id) VALUES ($1, $2)",
        id,
        caller.user_id
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    announce(&state, id, caller.user_id, MembershipAction::Joined).await;
    Ok((
        StatusCode::CREATED,
        Json(load(&state, id, caller.user_id).await?),
    ))
}

/// A room's name (1–64 characters) and description (at most 500), as given: 422 naming each
/// bad one.
fn check_fields(name: Option<&str>, description: Option<&str>) -> ApiResult<()> {
    let mut problems = std::collections::BTreeMap::new();
    if name.is_some_and(|n| !(1..=MAX_NAME_CHARS).contains(&n.chars().count())) {
        problems.insert(
            "name".to_owned(),
            format!("must be 1 to {MAX_NAME_CHARS} characters"),
        );
    }
    if description.is_some_and(|d| d.chars().count() > 500) {
        problems.insert(
            "description".to_owned(),
            "must be at most 500 characters".to_owned(),
        );
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(ApiError::validation(problems))
    }
}

/// 409 `room_name_taken` for a clash on the unique name, else the error as it is.
fn name_taken(e: sqlx::Error) -> ApiError {
    match unique_violation(&e) {
        Some("rooms_name_lower_key") => {
            let mut err = ApiError::conflict("room_name_taken", "a room with that name exists");
            err.fields = Some([("name".to_owned(), "is already taken".to_owned())].into());
            err
        }
        _ => ApiError::from(e),
    }
}

/// Takes the room's row lock for the rest of `tx`. A join and a ban of one room hold it from
/// before they read the other's table to their commit, so one waits for the other: a join
/// that checked for bans just before a ban was stored cannot add its membership after the
/// ban removed none. Every change to a room's members takes it before touching a membership,
/// so they all lock in one order.
pub(crate) async fn lock_room(tx: &mut sqlx::PgConnection, room: Uuid) -> ApiResult<()> {
    sqlx::query_scalar!("SELECT id FROM rooms WHERE id = $1 FOR NO KEY UPDATE", room)
        .fetch_optional(tx)
        .await?
        .ok_or_else(|| ApiError::not_found("no such room"))?;
    Ok(())
}

/// 409 `too_many_rooms` when `user` already belongs to `MAX_ROOMS_PER_USER` rooms: each of a
/// user's rooms is loaded and subscribed to by every upgrade of their sockets, and, at 10
/// joins a second, one user could otherwise join every public room there is.
async fn check_room_count(db: impl sqlx::PgExecutor<'_>, max: usize, user: Uuid) -> ApiResult<()> {
    let joined = sqlx::query_scalar!(
        r#"SELECT count(*) AS "n!" FROM conversation_members m
           JOIN rooms r ON r.id = m.conversation_id
           WHERE m.user_id = $1"#,
        user
    )
    .fetch_one(db)
    .await?;
    if usize::try_from(joined).unwrap_or(usize::MAX) >= max {
        return Err(ApiError::conflict(
            "too_many_rooms",
            format!("a user belongs to at most {max} rooms; leave one first"),
        ));
    }
    Ok(())
}

async fn announce(state: &AppState, room: Uuid, user: Uuid, action: MembershipAction) {
    announce_by(state, room, user, action, None, None).await;
}

/// A `membership` event of a room, to its members and to the user concerned.
pub(crate) async fn announce_by(
    state: &AppState,
    room: Uuid,
    user: Uuid,
    action: MembershipAction,
    by: Option<Uuid>,
    until: Option<DateTime<Utc>>,
) {
    let event = Event::Membership {
        chat_type: ChatType::Room,
        chat_id: room,
        user_id: user,
        action,
        by,
        until,
    };
    state.publisher.membership(room, user, &event).await;
}

/// `GET /chat/rooms/{id}`
#[utoipa::path(get, path = "/chat/rooms/{id}", operation_id = "get_room", tag = "rooms", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Room id")),
    responses(
        (status = 200, description = "The room, as the rooms list shows it to the caller (an extension)", body = Room),
        (status = 404, description = "No such room", body = ErrorBody),
    ))]
pub async fn get_one(
    State(state): State<AppState>,
    caller: AuthUser,
    ApiPath(id): ApiPath<Uuid>,
) -> ApiResult<Json<Room>> {
    Ok(Json(load(&state, id, caller.user_id).await?))
}

/// `PATCH /chat/rooms/{id}`
#[utoipa::path(patch, path = "/chat/rooms/{id}", operation_id = "update_room", tag = "rooms", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Room id")), request_body = UpdateRoom,
    responses(
        (status = 200, description = "Changed (an extension); the members' sockets get `conversation_updated`", body = Room),
        (status = 403, description = "Only the owner changes the room", body = ErrorBody),
        (status = 404, description = "No such room", body = ErrorBody),
        (status = 409, description = "`room_name_taken`: another room has that name", body = ErrorBody),
        (status = 422, description = "Invalid fields", body = ErrorBody),
        (status = 429, description = "`rate_limited`: the user's changes that reach others (`ACTION_RATE_PER_SECOND`, 10 a second, bursts of 40, by default) are used up; nothing was done; `Retry-After` says when to try again", body = ErrorBody),
    ))]
pub async fn update(
    State(state): State<AppState>,
    Acting(caller): Acting,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(req): ApiJson<UpdateRoom>,
) -> ApiResult<Json<Room>> {
    let name = req.name.as_deref().map(str::trim);
    let description = req.description.as_deref().map(str::trim);
    check_fields(name, description)?;
    let room = load(&state, id, caller.user_id).await?;
    if room.created_by != caller.user_id {
        return Err(ApiError::forbidden("only the room's owner changes it"));
    }
    state.require_events()?;
    let mut tx = state.db.begin().await?;
    // The values before, read under the row's lock in the same statement, so the audit row
    // says what this change replaced even when two owners' requests cross.
    let updated = sqlx::query!(
        r#"UPDATE rooms r SET name = COALESCE($2, r.name),
                              description = CASE WHEN $3::text IS NULL THEN r.description
                                                 ELSE NULLIF($3, '') END
           FROM (SELECT name, description FROM rooms WHERE id = $1 FOR UPDATE) old
           WHERE r.id = $1
           RETURNING r.name, r.description, old.name AS old_name,
                     old.description AS old_description"#,
        id,
        name,
        description
    )
    .fetch_one(&mut *tx)
    .await
    .map_err(name_taken)?;
    let mut changes = Vec::new();
    if updated.name != updated.old_name {
        changes.push(format!("name “{}” → “{}”", updated.old_name, updated.name));
    }
    if updated.description != updated.old_description {
        changes.push(
            if updated.description.is_some() {
                "description set"
            } else {
                "description cleared"
            }
            .to_owned(),
        );
    }
    if changes.is_empty() {
        // Nothing changed: nothing to record or tell anyone.
        return Ok(Json(room));
    }
    let reason = changes.join("; ");
    super::moderation::audit(
        &mut *tx,
        super::moderation::Entry {
            room: id,
            actor: caller.user_id,
            action: "updated",
            target: None,
            message: None,
            reason: Some(&reason),
            until: None,
        },
    )
    .await?;
    tx.commit().await?;
    state
        .publisher
        .conversation_updated(
            ChatType::Room,
            id,
            updated.name,
            updated.description,
            caller.user_id,
        )
        .await;
    Ok(Json(load(&state, id, caller.user_id).await?))
}

/// `POST /chat/rooms/{id}/join`
#[utoipa::path(post, path = "/chat/rooms/{id}/join", tag = "rooms", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Room id")),
    responses(
        (status = 200, description = "Joined (joining twice is harmless)", body = Room),
        (status = 403, description = "Banned from the room (`banned`; the detail says until when)", body = ErrorBody),
        (status = 404, description = "No such room", body = ErrorBody),
        (status = 409, description = "`too_many_rooms`: the caller already belongs to `MAX_ROOMS_PER_USER` rooms (1000)", body = ErrorBody),
        (status = 429, description = "`rate_limited`: the user's changes that reach others (`ACTION_RATE_PER_SECOND`, 10 a second, bursts of 40, by default) are used up; nothing was done; `Retry-After` says when to try again", body = ErrorBody),
    ))]
pub async fn join(
    State(state): State<AppState>,
    Acting(caller): Acting,
    ApiPath(id): ApiPath<Uuid>,
) -> ApiResult<Json<Room>> {
    let room = load(&state, id, caller.user_id).await?;
    state.require_events()?;
    let mut tx = state.db.begin().await?;
    // Joins and bans of a room hold its row's lock (see `lock_room`): a ban stored while this
    // join waited is seen by the check below.
    lock_room(&mut tx, id).await?;
    crate::api::moderation::check_not_banned(&mut *tx, id, caller.user_id).await?;
    if !room.is_member {
        check_room_count(&mut *tx, state.config.max_rooms_per_user, caller.user_id).await?;
    }
    let joined = sqlx::query!(
        "INSERT INTO conversation_members (conversation_id, user_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        id,
        caller.user_id
    )
    .execute(&mut *tx)
    .await?
    .rows_affected();
    tx.commit().await?;
    if joined > 0 {
        announce(&state, id, caller.user_id, MembershipAction::Joined).await;
    }
    Ok(Json(load(&state, id, caller.user_id).await?))
}

/// `POST /chat/rooms/{id}/leave`
#[utoipa::path(post, path = "/chat/rooms/{id}/leave", tag = "rooms", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Room id")),
    responses(
        (status = 204, description = "Left (leaving twice is harmless)"),
        (status = 404, description = "No such room", body = ErrorBody),
        (status = 429, description = "`rate_limited`: the user's changes that reach others (`ACTION_RATE_PER_SECOND`, 10 a second, bursts of 40, by default) are used up; nothing was done; `Retry-After` says when to try again", body = ErrorBody),
    ))]
pub async fn leave(
    State(state): State<AppState>,
    Acting(caller): Acting,
    ApiPath(id): ApiPath<Uuid>,
) -> ApiResult<StatusCode> {
    load(&state, id, caller.user_id).await?;
    state.require_events()?;
    // The room's lock first, as joins and bans take it: the member count's trigger locks the
    // room's row after the membership's, which in the other order could deadlock with a join.
    let mut tx = state.db.begin().await?;
    lock_room(&mut tx, id).await?;
    let left = sqlx::query!(
        "DELETE FROM conversation_members WHERE conversation_id = $1 AND user_id = $2",
        id,
        caller.user_id
    )
    .execute(&mut *tx)
    .await?
    .rows_affected();
    // A moderator who leaves is one no more (as a banned one): coming back makes a member.
    sqlx::query!(
        "DELETE FROM room_moderators WHERE room_id = $1 AND user_id = $2",
        id,
        caller.user_id
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    if left > 0 {
        announce(&state, id, caller.user_id, MembershipAction::Left).await;
    }
    Ok(StatusCode::NO_CONTENT)
}

/// Optional paging of a room's members (extensions: without them, every member).
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct MembersQuery {
    /// 1–1000: at most this many members; a page this long may have more after it.
    #[param(value_type = Option<i64>)]
    limit: Option<String>,
    /// The members after this username (the last one of the page before), by username.
    after: Option<String>,
}

/// `GET /chat/rooms/{id}/members`
#[utoipa::path(get, path = "/chat/rooms/{id}/members", tag = "rooms", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Room id"), MembersQuery),
    responses(
        (status = 200, description = "Members by username, whatever its case: every one, or with `limit` a page of them", body = [UserSummary]),
        (status = 404, description = "No such room", body = ErrorBody),
        (status = 422, description = "Invalid `limit` or `after`", body = ErrorBody),
        (status = 429, description = "`rate_limited`: without `limit`, more whole lists than `LIST_RATE_PER_SECOND` (2 a second, bursts of 20, per user, shared with the rooms and the groups); see Retry-After. Pages are not counted", body = ErrorBody),
    ))]
pub async fn members(
    State(state): State<AppState>,
    caller: AuthUser,
    ApiPath(id): ApiPath<Uuid>,
    ApiQuery(query): ApiQuery<MembersQuery>,
) -> ApiResult<Json<Vec<UserSummary>>> {
    let limit = query
        .limit
        .as_deref()
        .map(|v| bounded_int("limit", Some(v), 0, 1..=1000))
        .transpose()?;
    if let Some(after) = &query.after {
        // Usernames are 3–32 characters; any text up to that length is a position.
        if after.is_empty() || after.chars().count() > 32 {
            return Err(ApiError::invalid_field(
                "after",
                "must be 1 to 32 characters",
            ));
        }
        shared::text::check(after).map_err(|p| ApiError::invalid_field("after", p))?;
    }
    load(&state, id, caller.user_id).await?;
    if limit.is_none() {
        state.list_rate(caller.user_id).await?;
    }
    Ok(Json(
        crate::api::members_page(&state, id, query.after.as_deref(), limit).await?,
    ))
}
