//! Groups: private multi-user chats with an owner.

use std::collections::BTreeSet;

use axum::{extract::State, http::StatusCode, Json};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use shared::{
    chat::{ChatType, Event, MembershipAction},
    error::ErrorBody,
    extract::{bounded_int, ApiJson, ApiPath, ApiQuery},
    jwt::AuthUser,
    ApiError, ApiResult,
};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::acting::Acting;
use crate::{model::UserSummary, AppState};

/// The most members one request may add.
const MAX_MEMBERS_PER_REQUEST: usize = 100;

/// A group and its members.
#[derive(Debug, Serialize, ToSchema)]
pub struct Group {
    pub id: Uuid,
    pub name: String,
    pub owner_id: Uuid,
    pub created_at: DateTime<Utc>,
    pub members: Vec<UserSummary>,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct CreateGroup {
    /// 1–64 characters.
    pub name: String,
    /// Users to add besides the creator (at most 100).
    #[serde(default)]
    pub member_ids: Vec<Uuid>,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct UpdateGroup {
    /// 1–64 characters.
    pub name: String,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct AddMembers {
    /// Users to add (1–100).
    pub user_ids: Vec<Uuid>,
}

struct GroupRow {
    id: Uuid,
    name: String,
    owner_id: Uuid,
    created_at: DateTime<Utc>,
}

/// A group's name, trimmed: 1–64 characters, else 422 on `name`.
fn checked_name(name: &str) -> ApiResult<&str> {
    let name = name.trim();
    if (1..=64).contains(&name.chars().count()) {
        Ok(name)
    } else {
        Err(ApiError::invalid_field(
            "name",
            "must be 1 to 64 characters",
        ))
    }
}

async fn row(state: &AppState, id: Uuid) -> ApiResult<GroupRow> {
    sqlx::query_as!(
        GroupRow,
        "SELECT id, name, owner_id, created_at FROM groups WHERE id = $1",
        id
    )
    .fetch_optional(&state.db)
    .await?
    .ok_or_else(|| ApiError::not_found("no such group"))
}

async fn with_members(state: &AppState, g: GroupRow) -> ApiResult<Group> {
    Ok(Group {
        members: crate::api::members_of(state, g.id).await?,
        id: g.id,
        name: g.name,
        owner_id: g.owner_id,
        created_at: g.created_at,
    })
}

async fn is_member(state: &AppState, group: Uuid, user: Uuid) -> ApiResult<bool> {
    Ok(sqlx::query_scalar!(
        r#"SELECT EXISTS (SELECT 1 FROM conversation_members
                          WHERE conversation_id = $1 AND user_id = $2) AS "m!""#,
        group,
        user
    )
    .fetch_one(&state.db)
    .await?)
}

/// Checks every id names an active user; 422 naming `field` otherwise.
async fn check_users(state: &AppState, field: &str, ids: &BTreeSet<Uuid>) -> ApiResult<()> {
    if ids.len() > MAX_MEMBERS_PER_REQUEST {
        return Err(ApiError::invalid_field(
            field,
            format!("at most {MAX_MEMBERS_PER_REQUEST} users at once"),
        ));
    }
    let list: Vec<Uuid> = ids.iter().copied().collect();
    let found: BTreeSet<Uuid> = sqlx::query_scalar!(
        "SELECT id FROM users WHERE id = ANY($1) AND is_active",
        &list
    )
    .fetch_all(&state.db)
    .await?
    .into_iter()
    .collect();
    let unknown: Vec<String> = ids.difference(&found).map(Uuid::to_string).collect();
    if unknown.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid_field(
            field,
            format!("unknown users: {}", unknown.join(", ")),
        ))
    }
}

/// 422 naming `field` when a group would hold more than `max` members.
fn too_many(field: &str, members: usize, max: usize) -> ApiResult<()> {
    if members > max {
        return Err(ApiError::invalid_field(
            field,
            format!("a group holds at most {max} members (this would make {members}); larger audiences are rooms"),
        ));
    }
    Ok(())
}

/// 409 `too_many_groups` when any of `users` already belongs to `MAX_GROUPS_PER_USER` groups
/// other than `group`. Others add a user to groups (blocking them stops that), and every
/// upgrade of the user's sockets loads and registers each one.
async fn check_group_counts(state: &AppState, group: Uuid, users: &[Uuid]) -> ApiResult<()> {
    let max = state.config.max_groups_per_user;
    let full: Vec<String> = sqlx::query_scalar!(
        r#"SELECT m.user_id FROM conversation_members m
           JOIN groups g ON g.id = m.conversation_id
           WHERE m.user_id = ANY($1) AND m.conversation_id <> $2
           GROUP BY m.user_id HAVING count(*) >= $3
           ORDER BY m.user_id"#,
        users,
        group,
        i64::try_from(max).unwrap_or(i64::MAX)
    )
    .fetch_all(&state.db)
    .await?
    .iter()
    .map(Uuid::to_string)
    .collect();
    if full.is_empty() {
        return Ok(());
    }
    Err(ApiError::conflict(
        "too_many_groups",
        format!(
            "a user belongs to at most {max} groups; already in as many: {}",
            full.join(", ")
        ),
    ))
}

async fn announce(state: &AppState, group: Uuid, user: Uuid, action: MembershipAction) {
    let event = Event::Membership {
        chat_type: ChatType::Group,
        chat_id: group,
        user_id: user,
        action,
        by: None,
        until: None,
    };
    state.publisher.membership(group, user, &event).await;
}

/// `POST /chat/groups`
#[utoipa::path(post, path = "/chat/groups", operation_id = "create_group", tag = "groups", security(("bearer" = [])), request_body = CreateGroup,
    responses(
        (status = 201, description = "Created; the creator owns it and is a member", body = Group),
        (status = 409, description = "`too_many_groups`: the caller or a user named already belongs to `MAX_GROUPS_PER_USER` groups (1000); the detail names them", body = ErrorBody),
        (status = 422, description = "Invalid name, unknown users, or more members than a group holds (`MAX_GROUP_MEMBERS`)", body = ErrorBody),
        (status = 429, description = "Too many groups created in the last hour (GROUPS_PER_HOUR); see Retry-After", body = ErrorBody),
    ))]
pub async fn create(
    State(state): State<AppState>,
    caller: AuthUser,
    ApiJson(req): ApiJson<CreateGroup>,
) -> ApiResult<(StatusCode, Json<Group>)> {
    let name = checked_name(&req.name)?;
    let mut members: BTreeSet<Uuid> = req.member_ids.into_iter().collect();
    members.remove(&caller.user_id);
    check_users(&state, "member_ids", &members).await?;
    let list: Vec<Uuid> = members.iter().copied().collect();
    crate::api::pins_blocks::refuse_if_blocked_by(&state, caller.user_id, &list).await?;
    state.require_events()?;
    state
        .creation_quota(
            "groups",
            caller.user_id,
            state.config.quotas.groups_per_hour,
        )
        .await?;
    members.insert(caller.user_id);
    too_many("member_ids", members.len(), state.config.max_group_members)?;
    let id = Uuid::now_v7();
    let list: Vec<Uuid> = members.iter().copied().collect();
    check_group_counts(&state, id, &list).await?;
    let mut tx = state.db.begin().await?;
    sqlx::query!(
        "INSERT INTO groups (id, name, owner_id) VALUES ($1, $2, $3)",
        id,
        name,
        caller.user_id
    )
    .execute(&mut *tx)
    .await?;
    sqlx::query!(
        "INSERT INTO conversations (id, chat_type, group_id) VALUES ($1, 'GROUP', $1)",
        id
    )
    .execute(&mut *tx)
    .await?;
    sqlx::query!(
        "INSERT INTO conversation_members (conversation_id, user_id) SELECT $1, unnest($2::uuid[])",
        id,
        &list
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    for user in members {
        let action = if user == caller.user_id {
            MembershipAction::Joined
        } else {
            MembershipAction::Added
        };
        announce(&state, id, user, action).await;
    }
    let group = with_members(&state, row(&state, id).await?).await?;
    Ok((StatusCode::CREATED, Json(group)))
}

/// Optional paging of `GET /chat/groups` (extensions: without them, every group).
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct GroupsQuery {
    /// 1–100: at most this many groups; a page this long may have more after it.
    #[param(value_type = Option<i64>)]
    limit: Option<String>,
    /// The id of the last group of the page before: the groups after it.
    #[param(value_type = Option<Uuid>)]
    before: Option<String>,
}

/// `GET /chat/groups`
#[utoipa::path(get, path = "/chat/groups", operation_id = "list_groups", tag = "groups", security(("bearer" = [])),
    params(GroupsQuery),
    responses(
        (status = 200, description = "The caller's groups with their members, newest first (between groups created at the same instant, by id): every one, or with `limit` a page of them", body = [Group]),
        (status = 422, description = "Invalid `limit`, or `before` is not a group's id", body = ErrorBody),
        (status = 429, description = "`rate_limited`: without `limit`, more whole lists than `LIST_RATE_PER_SECOND` (2 a second, bursts of 20, per user, shared with the rooms and a room's members); see Retry-After. Pages are not counted", body = ErrorBody),
    ))]
pub async fn list(
    State(state): State<AppState>,
    caller: AuthUser,
    ApiQuery(query): ApiQuery<GroupsQuery>,
) -> ApiResult<Json<Vec<Group>>> {
    let limit = query
        .limit
        .as_deref()
        .map(|v| bounded_int("limit", Some(v), 0, 1..=100))
        .transpose()?;
    // The page starts after the named group's place in the order, which a group keeps
    // (its creation time and id) even if the caller has left it since.
    let before = match query.before.as_deref() {
        None => None,
        Some(v) => {
            let id = Uuid::try_parse(v)
                .map_err(|_| ApiError::invalid_field("before", "must be a group id"))?;
            let created_at = sqlx::query_scalar!("SELECT created_at FROM groups WHERE id = $1", id)
                .fetch_optional(&state.db)
                .await?
                .ok_or_else(|| ApiError::invalid_field("before", "no such group"))?;
            Some((created_at, id))
        }
    };
    if limit.is_none() {
        state.list_rate(caller.user_id).await?;
    }
    let (before_time, before_id) = before.unzip();
    let rows = sqlx::query_as!(
        GroupRow,
        r#"SELECT g.id, g.name, g.owner_id, g.created_at
           FROM groups g JOIN conversation_members m ON m.conversation_id = g.id
           WHERE m.user_id = $1
             AND ($2::timestamptz IS NULL OR (g.created_at, g.id) < ($2, $3::uuid))
           ORDER BY g.created_at DESC, g.id DESC
           LIMIT $4"#,
        caller.user_id,
        before_time,
        before_id,
        limit
    )
    .fetch_all(&state.db)
    .await?;
    // Every group's members in one query, not one per group.
    let ids: Vec<Uuid> = rows.iter().map(|g| g.id).collect();
    let mut by_group = crate::api::members_of_each(&state, &ids).await?;
    let groups = rows
        .into_iter()
        .map(|g| Group {
            members: by_group.remove(&g.id).unwrap_or_default(),
            id: g.id,
            name: g.name,
            owner_id: g.owner_id,
            created_at: g.created_at,
        })
        .collect();
    Ok(Json(groups))
}

/// `GET /chat/groups/{id}`
#[utoipa::path(get, path = "/chat/groups/{id}", operation_id = "get_group", tag = "groups", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Group id")),
    responses(
        (status = 200, description = "The group with its members (an extension; the list gives every group's)", body = Group),
        (status = 403, description = "Not a member", body = ErrorBody),
        (status = 404, description = "No such group", body = ErrorBody),
    ))]
pub async fn get_one(
    State(state): State<AppState>,
    caller: AuthUser,
    ApiPath(id): ApiPath<Uuid>,
) -> ApiResult<Json<Group>> {
    let group = row(&state, id).await?;
    if !is_member(&state, id, caller.user_id).await? {
        return Err(ApiError::forbidden("you are not a member of this group"));
    }
    Ok(Json(with_members(&state, group).await?))
}

/// `PATCH /chat/groups/{id}`
#[utoipa::path(patch, path = "/chat/groups/{id}", operation_id = "update_group", tag = "groups", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Group id")), request_body = UpdateGroup,
    responses(
        (status = 200, description = "Renamed (an extension); the members' sockets get `conversation_updated`", body = Group),
        (status = 403, description = "Only the owner renames the group", body = ErrorBody),
        (status = 404, description = "No such group", body = ErrorBody),
        (status = 422, description = "Invalid `name`", body = ErrorBody),
        (status = 429, description = "`rate_limited`: the user's changes that reach others (`ACTION_RATE_PER_SECOND`, 10 a second, bursts of 40, by default) are used up; nothing was done; `Retry-After` says when to try again", body = ErrorBody),
    ))]
pub async fn update(
    State(state): State<AppState>,
    Acting(caller): Acting,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(req): ApiJson<UpdateGroup>,
) -> ApiResult<Json<Group>> {
    let name = checked_name(&req.name)?;
    let group = row(&state, id).await?;
    if group.owner_id != caller.user_id {
        if !is_member(&state, id, caller.user_id).await? {
            return Err(ApiError::forbidden("you are not a member of this group"));
        }
        return Err(ApiError::forbidden("only the owner renames the group"));
    }
    state.require_events()?;
    sqlx::query!("UPDATE groups SET name = $2 WHERE id = $1", id, name)
        .execute(&state.db)
        .await?;
    state
        .publisher
        .conversation_updated(ChatType::Group, id, name.to_owned(), None, caller.user_id)
        .await;
    Ok(Json(with_members(&state, row(&state, id).await?).await?))
}

/// `POST /chat/groups/{id}/members`
#[utoipa::path(post, path = "/chat/groups/{id}/members", tag = "groups", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Group id")), request_body = AddMembers,
    responses(
        (status = 200, description = "The group with its members", body = Group),
        (status = 403, description = "Only the owner adds members", body = ErrorBody),
        (status = 404, description = "No such group", body = ErrorBody),
        (status = 409, description = "`too_many_groups`: a user named already belongs to `MAX_GROUPS_PER_USER` groups (1000); the detail names them", body = ErrorBody),
        (status = 422, description = "Unknown users, or more members than a group holds (`MAX_GROUP_MEMBERS`)", body = ErrorBody),
        (status = 429, description = "`rate_limited`: the user's changes that reach others (`ACTION_RATE_PER_SECOND`, 10 a second, bursts of 40, by default) are used up; nothing was done; `Retry-After` says when to try again", body = ErrorBody),
    ))]
pub async fn add_members(
    State(state): State<AppState>,
    Acting(caller): Acting,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(req): ApiJson<AddMembers>,
) -> ApiResult<Json<Group>> {
    let group = row(&state, id).await?;
    if group.owner_id != caller.user_id {
        return Err(ApiError::forbidden("only the group's owner adds members"));
    }
    let users: BTreeSet<Uuid> = req.user_ids.into_iter().collect();
    if users.is_empty() {
        return Err(ApiError::invalid_field(
            "user_ids",
            "name at least one user",
        ));
    }
    check_users(&state, "user_ids", &users).await?;
    let list: Vec<Uuid> = users.iter().copied().collect();
    crate::api::pins_blocks::refuse_if_blocked_by(&state, caller.user_id, &list).await?;
    check_group_counts(&state, id, &list).await?;
    state.require_events()?;
    let mut tx = state.db.begin().await?;
    // The group's row is locked while its members are counted and added, so two adds at once
    // cannot together pass the bound.
    let counts = sqlx::query!(
        r#"SELECT (SELECT count(*) FROM conversation_members WHERE conversation_id = g.id) AS "members!",
                  (SELECT count(*) FROM unnest($2::uuid[]) AS u (id)
                   WHERE NOT EXISTS (SELECT 1 FROM conversation_members m
                                     WHERE m.conversation_id = g.id AND m.user_id = u.id)) AS "new!"
           FROM groups g WHERE g.id = $1 FOR UPDATE"#,
        id,
        &list
    )
    .fetch_optional(&mut *tx)
    .await?
    .ok_or_else(|| ApiError::not_found("no such group"))?;
    too_many(
        "user_ids",
        usize::try_from(counts.members + counts.new).unwrap_or(usize::MAX),
        state.config.max_group_members,
    )?;
    let added = sqlx::query_scalar!(
        r#"INSERT INTO conversation_members (conversation_id, user_id)
           SELECT $1, unnest($2::uuid[]) ON CONFLICT DO NOTHING RETURNING user_id"#,
        id,
        &list
    )
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    for user in added {
        announce(&state, id, user, MembershipAction::Added).await;
    }
    Ok(Json(with_members(&state, group).await?))
}

/// `DELETE /chat/groups/{id}/members/{user_id}`: the owner removes anyone; a member removes
/// itself. When the owner leaves, the longest-standing member becomes the owner.
#[utoipa::path(delete, path = "/chat/groups/{id}/members/{user_id}", tag = "groups", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Group id"), ("user_id" = Uuid, Path, description = "Member to remove")),
    responses(
        (status = 204, description = "Removed"),
        (status = 403, description = "Neither the owner nor the member itself", body = ErrorBody),
        (status = 404, description = "No such group, or not a member", body = ErrorBody),
        (status = 429, description = "`rate_limited`: the user's changes that reach others (`ACTION_RATE_PER_SECOND`, 10 a second, bursts of 40, by default) are used up; nothing was done; `Retry-After` says when to try again", body = ErrorBody),
    ))]
pub async fn remove_member(
    State(state): State<AppState>,
    Acting(caller): Acting,
    ApiPath((id, user)): ApiPath<(Uuid, Uuid)>,
) -> ApiResult<StatusCode> {
    let group = row(&state, id).await?;
    let is_owner = group.owner_id == caller.user_id;
    if !is_owner && user != caller.user_id {
        if !is_member(&state, id, caller.user_id).await? {
            return Err(ApiError::forbidden("you are not a member of this group"));
        }
        return Err(ApiError::forbidden("only the owner removes other members"));
    }
    state.require_events()?;
    let mut tx = state.db.begin().await?;
    let removed = sqlx::query!(
        "DELETE FROM conversation_members WHERE conversation_id = $1 AND user_id = $2",
        id,
        user
    )
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if removed == 0 {
        return Err(ApiError::not_found(
            "that user is not a member of this group",
        ));
    }
    if user == group.owner_id {
        sqlx::query!(
            r#"UPDATE groups SET owner_id = m.user_id
               FROM (SELECT user_id FROM conversation_members WHERE conversation_id = $1
                     ORDER BY joined_at, user_id LIMIT 1) m
               WHERE groups.id = $1"#,
            id
        )
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    let action = if user == caller.user_id {
        MembershipAction::Left
    } else {
        MembershipAction::Removed
    };
    announce(&state, id, user, action).await;
    Ok(StatusCode::NO_CONTENT)
}
