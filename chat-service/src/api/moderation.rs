//! Room moderation: moderators, bans, mutes, moderator deletes and the audit log.
//!
//! A room's owner is its creator. The owner names moderators; the owner and moderators ban,
//! mute and delete anyone's message in the room, but a moderator cannot act on the owner or on
//! another moderator. Every action is a `membership` event and a row of the audit log, which
//! the owner reads.

use axum::{extract::State, http::StatusCode, Json};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use shared::{
    chat::MembershipAction,
    error::ErrorBody,
    extract::{bounded_int, ApiJson, ApiPath, ApiQuery},
    jwt::AuthUser,
    ApiError, ApiResult,
};
use sqlx::{PgExecutor, Postgres, Transaction};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::acting::Acting;
use crate::{api::rooms::announce_by, AppState};

/// A user's standing in a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Neither a member nor holding a role.
    Outsider,
    Member,
    Moderator,
    Owner,
}

impl Role {
    fn moderates(self) -> bool {
        self >= Role::Moderator
    }
}

/// `user`'s role in `room`; 404 when there is no such room.
pub async fn role(db: impl PgExecutor<'_>, room: Uuid, user: Uuid) -> ApiResult<Role> {
    let row = sqlx::query!(
        r#"SELECT r.created_by = $2 AS "owner!",
                  EXISTS (SELECT 1 FROM room_moderators d
                          WHERE d.room_id = r.id AND d.user_id = $2) AS "moderator!",
                  EXISTS (SELECT 1 FROM conversation_members m
                          WHERE m.conversation_id = r.id AND m.user_id = $2) AS "member!"
           FROM rooms r WHERE r.id = $1"#,
        room,
        user
    )
    .fetch_optional(db)
    .await?
    .ok_or_else(|| ApiError::not_found("no such room"))?;
    Ok(if row.owner {
        Role::Owner
    } else if row.moderator && row.member {
        // A moderator who is no longer a member (left, banned) moderates nothing.
        Role::Moderator
    } else if row.member {
        Role::Member
    } else {
        Role::Outsider
    })
}

/// Whether `user` may moderate `room` (its owner or a moderator).
pub async fn moderates(db: impl PgExecutor<'_>, room: Uuid, user: Uuid) -> ApiResult<bool> {
    Ok(role(db, room, user).await?.moderates())
}

/// `user`'s role in `room` when they moderate it, else 403.
async fn require_moderator(db: impl PgExecutor<'_>, room: Uuid, user: Uuid) -> ApiResult<Role> {
    let r = role(db, room, user).await?;
    if r.moderates() {
        Ok(r)
    } else {
        Err(ApiError::forbidden(
            "only the room's owner and moderators moderate it",
        ))
    }
}

/// Checks that `actor` may ban or mute `target` in `room`: the actor moderates, the target is
/// someone else, not the owner, and a moderator only when the actor is the owner.
async fn check_may_act(state: &AppState, room: Uuid, actor: Uuid, target: Uuid) -> ApiResult<()> {
    let actor_role = require_moderator(&state.db, room, actor).await?;
    if actor == target {
        return Err(ApiError::invalid_field("user_id", "cannot be yourself"));
    }
    let exists = sqlx::query_scalar!(
        r#"SELECT EXISTS (SELECT 1 FROM users WHERE id = $1) AS "exists!""#,
        target
    )
    .fetch_one(&state.db)
    .await?;
    if !exists {
        return Err(ApiError::not_found("no such user"));
    }
    match role(&state.db, room, target).await? {
        Role::Owner => Err(ApiError::forbidden("the room's owner cannot be moderated")),
        Role::Moderator if actor_role != Role::Owner => {
            Err(ApiError::forbidden("only the owner acts on a moderator"))
        }
        _ => Ok(()),
    }
}

/// One row of the audit log, written in the action's transaction.
pub(crate) struct Entry<'a> {
    pub room: Uuid,
    pub actor: Uuid,
    pub action: &'a str,
    pub target: Option<Uuid>,
    pub message: Option<Uuid>,
    pub reason: Option<&'a str>,
    pub until: Option<DateTime<Utc>>,
}

pub(crate) async fn audit(db: impl PgExecutor<'_>, e: Entry<'_>) -> sqlx::Result<()> {
    sqlx::query!(
        r#"INSERT INTO room_audit_log (room_id, actor_id, action, target_id, message_id, reason, until)
           VALUES ($1, $2, $3, $4, $5, $6, $7)"#,
        e.room,
        e.actor,
        e.action,
        e.target,
        e.message,
        e.reason,
        e.until
    )
    .execute(db)
    .await?;
    Ok(())
}

/// A moderation action on `target`: its audit row and its `membership` event.
struct Act<'a> {
    room: Uuid,
    actor: Uuid,
    target: Uuid,
    action: MembershipAction,
    reason: Option<&'a str>,
    until: Option<DateTime<Utc>>,
}

/// Writes the audit row of `act` (when something changed) in `tx`, commits, then announces
/// it to the room and the user concerned.
async fn commit_act(
    state: &AppState,
    mut tx: Transaction<'_, Postgres>,
    act: Option<Act<'_>>,
) -> ApiResult<()> {
    if let Some(a) = &act {
        audit(
            &mut *tx,
            Entry {
                room: a.room,
                actor: a.actor,
                action: a.action.name(),
                target: Some(a.target),
                message: None,
                reason: a.reason,
                until: a.until,
            },
        )
        .await?;
    }
    tx.commit().await?;
    if let Some(a) = act {
        announce_by(state, a.room, a.target, a.action, Some(a.actor), a.until).await;
    }
    Ok(())
}

/// Records a moderator's deletion of someone else's message (see `messages::delete`).
pub async fn audit_message_deleted(
    db: impl PgExecutor<'_>,
    room: Uuid,
    actor: Uuid,
    author: Uuid,
    message: Uuid,
) -> sqlx::Result<()> {
    audit(
        db,
        Entry {
            room,
            actor,
            action: "message_deleted",
            target: Some(author),
            message: Some(message),
            reason: None,
            until: None,
        },
    )
    .await
}

/// Refuses (403 `banned`) a join while a ban lasts.
pub async fn check_not_banned(db: impl PgExecutor<'_>, room: Uuid, user: Uuid) -> ApiResult<()> {
    let ban = sqlx::query!(
        "SELECT until FROM room_bans WHERE room_id = $1 AND user_id = $2 AND (until IS NULL OR until > now())",
        room,
        user
    )
    .fetch_optional(db)
    .await?;
    match ban {
        None => Ok(()),
        Some(b) => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "banned",
            match b.until {
                Some(until) => {
                    format!(
                        "you are banned from this room until {}",
                        until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                    )
                }
                None => "you are banned from this room".to_owned(),
            },
        )),
    }
}

fn check_until(until: Option<DateTime<Utc>>) -> ApiResult<()> {
    match until {
        Some(t) if t <= Utc::now() => {
            Err(ApiError::invalid_field("until", "must be in the future"))
        }
        _ => Ok(()),
    }
}

fn check_reason(reason: Option<&str>) -> ApiResult<Option<&str>> {
    let reason = reason.map(str::trim).filter(|r| !r.is_empty());
    if reason.is_some_and(|r| r.chars().count() > 500) {
        return Err(ApiError::invalid_field(
            "reason",
            "must be at most 500 characters",
        ));
    }
    Ok(reason)
}

/// `PUT /chat/rooms/{id}/moderators/{user_id}`
#[utoipa::path(put, path = "/chat/rooms/{id}/moderators/{user_id}", tag = "moderation", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Room id"), ("user_id" = Uuid, Path, description = "A member of the room")),
    responses(
        (status = 204, description = "A moderator (twice is harmless); a `membership` event with `promoted` when it is new"),
        (status = 403, description = "Not the room's owner", body = ErrorBody),
        (status = 404, description = "No such room, or the user is not a member", body = ErrorBody),
        (status = 422, description = "The owner themself", body = ErrorBody),
        (status = 429, description = "`rate_limited`: the user's changes that reach others (`ACTION_RATE_PER_SECOND`, 10 a second, bursts of 40, by default) are used up; nothing was done; `Retry-After` says when to try again", body = ErrorBody),
    ))]
pub async fn promote(
    State(state): State<AppState>,
    Acting(caller): Acting,
    ApiPath((id, user)): ApiPath<(Uuid, Uuid)>,
) -> ApiResult<StatusCode> {
    state.require_events()?;
    let mut tx = state.db.begin().await?;
    // Under the room's lock, as bans and leaves take it: a user banned or gone meanwhile is
    // seen as an outsider here, not made a moderator after the fact.
    crate::api::rooms::lock_room(&mut tx, id).await?;
    if role(&mut *tx, id, caller.user_id).await? != Role::Owner {
        return Err(ApiError::forbidden(
            "only the room's owner names moderators",
        ));
    }
    match role(&mut *tx, id, user).await? {
        Role::Owner => {
            return Err(ApiError::invalid_field(
                "user_id",
                "the owner already moderates",
            ))
        }
        Role::Outsider => {
            return Err(ApiError::not_found(
                "that user is not a member of this room",
            ))
        }
        Role::Moderator => return Ok(StatusCode::NO_CONTENT),
        Role::Member => {}
    }
    let added = sqlx::query!(
        "INSERT INTO room_moderators (room_id, user_id, added_by) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
        id,
        user,
        caller.user_id
    )
    .execute(&mut *tx)
    .await?
    .rows_affected();
    let act = (added > 0).then_some(Act {
        room: id,
        actor: caller.user_id,
        target: user,
        action: MembershipAction::Promoted,
        reason: None,
        until: None,
    });
    commit_act(&state, tx, act).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `DELETE /chat/rooms/{id}/moderators/{user_id}`
#[utoipa::path(delete, path = "/chat/rooms/{id}/moderators/{user_id}", tag = "moderation", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Room id"), ("user_id" = Uuid, Path, description = "A moderator")),
    responses(
        (status = 204, description = "No longer a moderator (twice is harmless); a `membership` event with `demoted` when they were one"),
        (status = 403, description = "Not the room's owner", body = ErrorBody),
        (status = 404, description = "No such room", body = ErrorBody),
        (status = 429, description = "`rate_limited`: the user's changes that reach others (`ACTION_RATE_PER_SECOND`, 10 a second, bursts of 40, by default) are used up; nothing was done; `Retry-After` says when to try again", body = ErrorBody),
    ))]
pub async fn demote(
    State(state): State<AppState>,
    Acting(caller): Acting,
    ApiPath((id, user)): ApiPath<(Uuid, Uuid)>,
) -> ApiResult<StatusCode> {
    if role(&state.db, id, caller.user_id).await? != Role::Owner {
        return Err(ApiError::forbidden(
            "only the room's owner names moderators",
        ));
    }
    state.require_events()?;
    let mut tx = state.db.begin().await?;
    let removed = sqlx::query!(
        "DELETE FROM room_moderators WHERE room_id = $1 AND user_id = $2",
        id,
        user
    )
    .execute(&mut *tx)
    .await?
    .rows_affected();
    let act = (removed > 0).then_some(Act {
        room: id,
        actor: caller.user_id,
        target: user,
        action: MembershipAction::Demoted,
        reason: None,
        until: None,
    });
    commit_act(&state, tx, act).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct BanRequest {
    pub user_id: Uuid,
    /// At most 500 characters; shown in the audit log.
    pub reason: Option<String>,
    /// When the ban ends; without it, it lasts until lifted.
    pub until: Option<DateTime<Utc>>,
}

/// `POST /chat/rooms/{id}/bans`
#[utoipa::path(post, path = "/chat/rooms/{id}/bans", tag = "moderation", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Room id")), request_body = BanRequest,
    responses(
        (status = 204, description = "Banned: no longer a member, re-joining is refused with 403 `banned`; a `membership` event with `banned` reaches the room and the user (banning again updates reason and end)"),
        (status = 403, description = "Not the owner or a moderator, or the target is the owner (or a moderator, for a moderator)", body = ErrorBody),
        (status = 404, description = "No such room or user", body = ErrorBody),
        (status = 422, description = "Invalid fields: yourself, `until` in the past, a long reason", body = ErrorBody),
        (status = 429, description = "`rate_limited`: the user's changes that reach others (`ACTION_RATE_PER_SECOND`, 10 a second, bursts of 40, by default) are used up; nothing was done; `Retry-After` says when to try again", body = ErrorBody),
    ))]
pub async fn ban(
    State(state): State<AppState>,
    Acting(caller): Acting,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(req): ApiJson<BanRequest>,
) -> ApiResult<StatusCode> {
    let reason = check_reason(req.reason.as_deref())?;
    check_until(req.until)?;
    check_may_act(&state, id, caller.user_id, req.user_id).await?;
    state.require_events()?;
    let mut tx = state.db.begin().await?;
    crate::api::rooms::lock_room(&mut tx, id).await?;
    sqlx::query!(
        r#"INSERT INTO room_bans (room_id, user_id, banned_by, reason, until) VALUES ($1, $2, $3, $4, $5)
           ON CONFLICT (room_id, user_id) DO UPDATE
           SET banned_by = excluded.banned_by, reason = excluded.reason, until = excluded.until,
               created_at = now()"#,
        id,
        req.user_id,
        caller.user_id,
        reason,
        req.until
    )
    .execute(&mut *tx)
    .await?;
    sqlx::query!(
        "DELETE FROM conversation_members WHERE conversation_id = $1 AND user_id = $2",
        id,
        req.user_id
    )
    .execute(&mut *tx)
    .await?;
    // A banned moderator is one no more.
    sqlx::query!(
        "DELETE FROM room_moderators WHERE room_id = $1 AND user_id = $2",
        id,
        req.user_id
    )
    .execute(&mut *tx)
    .await?;
    commit_act(
        &state,
        tx,
        Some(Act {
            room: id,
            actor: caller.user_id,
            target: req.user_id,
            action: MembershipAction::Banned,
            reason,
            until: req.until,
        }),
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `DELETE /chat/rooms/{id}/bans/{user_id}`
#[utoipa::path(delete, path = "/chat/rooms/{id}/bans/{user_id}", tag = "moderation", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Room id"), ("user_id" = Uuid, Path, description = "A banned user")),
    responses(
        (status = 204, description = "The ban is lifted (twice is harmless); they may join again. A `membership` event with `unbanned` when there was a ban"),
        (status = 403, description = "Not the owner or a moderator", body = ErrorBody),
        (status = 404, description = "No such room", body = ErrorBody),
        (status = 429, description = "`rate_limited`: the user's changes that reach others (`ACTION_RATE_PER_SECOND`, 10 a second, bursts of 40, by default) are used up; nothing was done; `Retry-After` says when to try again", body = ErrorBody),
    ))]
pub async fn unban(
    State(state): State<AppState>,
    Acting(caller): Acting,
    ApiPath((id, user)): ApiPath<(Uuid, Uuid)>,
) -> ApiResult<StatusCode> {
    lift(&state, id, caller.user_id, user, Lift::Ban).await
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct MuteRequest {
    pub user_id: Uuid,
    /// When the mute ends.
    pub until: DateTime<Utc>,
}

/// `POST /chat/rooms/{id}/mutes`
#[utoipa::path(post, path = "/chat/rooms/{id}/mutes", tag = "moderation", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Room id")), request_body = MuteRequest,
    responses(
        (status = 204, description = "Muted: their sends to the room are refused with 403 `muted` until `until` (muting again moves the end); a `membership` event with `muted`"),
        (status = 403, description = "Not the owner or a moderator, or the target is the owner (or a moderator, for a moderator)", body = ErrorBody),
        (status = 404, description = "No such room or user", body = ErrorBody),
        (status = 422, description = "Invalid fields: yourself, `until` missing or in the past", body = ErrorBody),
        (status = 429, description = "`rate_limited`: the user's changes that reach others (`ACTION_RATE_PER_SECOND`, 10 a second, bursts of 40, by default) are used up; nothing was done; `Retry-After` says when to try again", body = ErrorBody),
    ))]
pub async fn mute(
    State(state): State<AppState>,
    Acting(caller): Acting,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(req): ApiJson<MuteRequest>,
) -> ApiResult<StatusCode> {
    check_until(Some(req.until))?;
    check_may_act(&state, id, caller.user_id, req.user_id).await?;
    state.require_events()?;
    let mut tx = state.db.begin().await?;
    sqlx::query!(
        r#"INSERT INTO room_mutes (room_id, user_id, muted_by, until) VALUES ($1, $2, $3, $4)
           ON CONFLICT (room_id, user_id) DO UPDATE
           SET muted_by = excluded.muted_by, until = excluded.until, created_at = now()"#,
        id,
        req.user_id,
        caller.user_id,
        req.until
    )
    .execute(&mut *tx)
    .await?;
    commit_act(
        &state,
        tx,
        Some(Act {
            room: id,
            actor: caller.user_id,
            target: req.user_id,
            action: MembershipAction::Muted,
            reason: None,
            until: Some(req.until),
        }),
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `DELETE /chat/rooms/{id}/mutes/{user_id}`
#[utoipa::path(delete, path = "/chat/rooms/{id}/mutes/{user_id}", tag = "moderation", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Room id"), ("user_id" = Uuid, Path, description = "A muted user")),
    responses(
        (status = 204, description = "The mute is lifted (twice is harmless); a `membership` event with `unmuted` when there was one"),
        (status = 403, description = "Not the owner or a moderator", body = ErrorBody),
        (status = 404, description = "No such room", body = ErrorBody),
        (status = 429, description = "`rate_limited`: the user's changes that reach others (`ACTION_RATE_PER_SECOND`, 10 a second, bursts of 40, by default) are used up; nothing was done; `Retry-After` says when to try again", body = ErrorBody),
    ))]
pub async fn unmute(
    State(state): State<AppState>,
    Acting(caller): Acting,
    ApiPath((id, user)): ApiPath<(Uuid, Uuid)>,
) -> ApiResult<StatusCode> {
    lift(&state, id, caller.user_id, user, Lift::Mute).await
}

#[derive(Clone, Copy)]
enum Lift {
    Ban,
    Mute,
}

/// Lifts a ban or a mute. An expired one is lifted silently (no event, no audit row).
async fn lift(
    state: &AppState,
    room: Uuid,
    actor: Uuid,
    user: Uuid,
    what: Lift,
) -> ApiResult<StatusCode> {
    require_moderator(&state.db, room, actor).await?;
    state.require_events()?;
    let mut tx = state.db.begin().await?;
    let lasting = match what {
        Lift::Ban => {
            sqlx::query_scalar!(
                r#"DELETE FROM room_bans WHERE room_id = $1 AND user_id = $2
               RETURNING (until IS NULL OR until > now()) AS "lasting!""#,
                room,
                user
            )
            .fetch_optional(&mut *tx)
            .await?
        }
        Lift::Mute => {
            sqlx::query_scalar!(
                r#"DELETE FROM room_mutes WHERE room_id = $1 AND user_id = $2
               RETURNING until > now() AS "lasting!""#,
                room,
                user
            )
            .fetch_optional(&mut *tx)
            .await?
        }
    };
    let action = match what {
        Lift::Ban => MembershipAction::Unbanned,
        Lift::Mute => MembershipAction::Unmuted,
    };
    let act = (lasting == Some(true)).then_some(Act {
        room,
        actor,
        target: user,
        action,
        reason: None,
        until: None,
    });
    commit_act(state, tx, act).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A ban in force.
#[derive(Debug, Serialize, ToSchema)]
pub struct Ban {
    pub user_id: Uuid,
    pub username: String,
    pub banned_by: Uuid,
    pub reason: Option<String>,
    pub until: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

/// `GET /chat/rooms/{id}/bans`
#[utoipa::path(get, path = "/chat/rooms/{id}/bans", tag = "moderation", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Room id")),
    responses(
        (status = 200, description = "The bans in force, newest first", body = [Ban]),
        (status = 403, description = "Not the owner or a moderator", body = ErrorBody),
        (status = 404, description = "No such room", body = ErrorBody),
    ))]
pub async fn bans(
    State(state): State<AppState>,
    caller: AuthUser,
    ApiPath(id): ApiPath<Uuid>,
) -> ApiResult<Json<Vec<Ban>>> {
    require_moderator(&state.db, id, caller.user_id).await?;
    Ok(Json(
        sqlx::query_as!(
            Ban,
            r#"SELECT b.user_id, u.username, b.banned_by, b.reason, b.until, b.created_at
               FROM room_bans b JOIN users u ON u.id = b.user_id
               WHERE b.room_id = $1 AND (b.until IS NULL OR b.until > now())
               ORDER BY b.created_at DESC"#,
            id
        )
        .fetch_all(&state.db)
        .await?,
    ))
}

/// One moderation action.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditEntry {
    /// Increasing; pass the last one seen as `before` for the next page.
    pub id: i64,
    /// `banned`, `unbanned`, `muted`, `unmuted`, `promoted`, `demoted`, `message_deleted`, or
    /// `updated` (the owner changed the room's name or description; `reason` says what).
    pub action: String,
    pub actor_id: Uuid,
    pub target_id: Option<Uuid>,
    /// For `message_deleted`.
    pub message_id: Option<Uuid>,
    pub reason: Option<String>,
    pub until: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AuditPage {
    /// Newest first.
    pub entries: Vec<AuditEntry>,
    pub has_more: bool,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// 1–200, default 50.
    #[param(value_type = Option<i64>)]
    limit: Option<String>,
    /// Entries older than this id.
    #[param(value_type = Option<i64>)]
    before: Option<String>,
}

/// `GET /chat/rooms/{id}/audit`
#[utoipa::path(get, path = "/chat/rooms/{id}/audit", tag = "moderation", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Room id"), AuditQuery),
    responses(
        (status = 200, description = "Moderation actions, newest first", body = AuditPage),
        (status = 403, description = "Not the room's owner", body = ErrorBody),
        (status = 404, description = "No such room", body = ErrorBody),
        (status = 422, description = "Invalid parameters", body = ErrorBody),
    ))]
pub async fn audit_log(
    State(state): State<AppState>,
    caller: AuthUser,
    ApiPath(id): ApiPath<Uuid>,
    ApiQuery(q): ApiQuery<AuditQuery>,
) -> ApiResult<Json<AuditPage>> {
    if role(&state.db, id, caller.user_id).await? != Role::Owner {
        return Err(ApiError::forbidden(
            "only the room's owner reads its audit log",
        ));
    }
    audit_page(&state, id, q).await
}

/// A page of room `id`'s audit log, for whoever the caller let read it.
pub async fn audit_page(state: &AppState, id: Uuid, q: AuditQuery) -> ApiResult<Json<AuditPage>> {
    let limit = bounded_int("limit", q.limit.as_deref(), 50, 1..=200)?;
    let before = match q.before.as_deref().map(str::parse::<i64>) {
        None => i64::MAX,
        Some(Ok(n)) if n >= 0 => n,
        Some(_) => {
            return Err(ApiError::invalid_field(
                "before",
                "must be a whole number, 0 or more",
            ))
        }
    };
    let mut entries = sqlx::query_as!(
        AuditEntry,
        r#"SELECT id, action, actor_id, target_id, message_id, reason, until, created_at
           FROM room_audit_log WHERE room_id = $1 AND id < $2
           ORDER BY id DESC LIMIT $3"#,
        id,
        before,
        limit + 1
    )
    .fetch_all(&state.db)
    .await?;
    let has_more = entries.len() as i64 > limit;
    entries.truncate(limit as usize);
    Ok(Json(AuditPage { entries, has_more }))
}
