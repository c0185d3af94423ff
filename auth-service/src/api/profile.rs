//! The caller's own user (reading and changing it) and looking other users up.

use axum::{extract::State, Json};
use serde::Deserialize;
use shared::{
    error::ErrorBody,
    extract::{ApiJson, ApiQuery},
    jwt::AuthUser,
    ApiError, ApiResult,
};
use utoipa::ToSchema;

use crate::{
    users::{self, Profile, UserBody},
    validate::{self, Problems},
    AppState,
};

/// The caller's user row, refusing deactivated or deleted users with 401.
pub(super) async fn active_user(state: &AppState, caller: AuthUser) -> ApiResult<users::User> {
    match users::find(&state.db, caller.user_id).await? {
        Some(user) if user.is_active => Ok(user),
        Some(_) => Err(ApiError::unauthorized(
            "account_disabled",
            "the account is deactivated",
        )),
        None => Err(ApiError::unauthorized(
            "invalid_token",
            "the user no longer exists",
        )),
    }
}

/// `GET /auth/me`
#[utoipa::path(get, path = "/auth/me", tag = "auth", security(("bearer" = [])),
    responses(
        (status = 200, description = "The caller", body = UserBody),
        (status = 401, description = "Missing, invalid or expired token, or a deactivated user", body = ErrorBody),
    ))]
pub async fn me(State(state): State<AppState>, caller: AuthUser) -> ApiResult<Json<UserBody>> {
    Ok(Json(active_user(&state, caller).await?.own()))
}

/// `Some(None)` for an explicit `null`, `None` when the field is absent.
fn present<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct UpdateMeRequest {
    /// 1–64 characters.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    pub display_name: Option<Option<String>>,
    /// An http(s) URL; `null` or `""` removes it. Another value than the current one retires an
    /// avatar set by `PUT /auth/me/avatar` (its URL stops serving it); the current value sent
    /// back changes nothing.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    pub avatar_url: Option<Option<String>>,
}

/// `PATCH /auth/me`
#[utoipa::path(patch, path = "/auth/me", tag = "auth", security(("bearer" = [])), request_body = UpdateMeRequest,
    responses(
        (status = 200, description = "The updated caller. Everyone in a room, group or private chat with the caller, and the caller's other connections, get `user_updated` (an extension)", body = UserBody),
        (status = 422, description = "Invalid fields", body = ErrorBody),
        (status = 429, description = "`too_many_requests`: more than `PROFILE_UPDATES_PER_HOUR` (20) changes of the display name or avatar in an hour; see Retry-After", body = ErrorBody),
    ))]
pub async fn update_me(
    State(state): State<AppState>,
    caller: AuthUser,
    ApiJson(req): ApiJson<UpdateMeRequest>,
) -> ApiResult<Json<UserBody>> {
    let current = active_user(&state, caller).await?;
    let mut problems = Problems::default();
    let display_name = match req.display_name {
        None => None,
        Some(None) => {
            problems.check("display_name", Err("must not be null".into()));
            None
        }
        Some(Some(name)) => {
            problems.check("display_name", validate::display_name(&name));
            Some(name.trim().to_owned())
        }
    };
    let avatar_url = match req.avatar_url {
        None => None,
        Some(None) => Some(None),
        Some(Some(url)) if url.trim().is_empty() => Some(None),
        // The current URL sent back (a client saving the whole profile) changes nothing, and
        // may be the relative `/auth/avatars/{id}` this service hands out.
        Some(Some(url)) if current.avatar_url.as_deref() == Some(url.trim()) => None,
        Some(Some(url)) => {
            problems.check("avatar_url", validate::http_url(url.trim()));
            Some(Some(url.trim().to_owned()))
        }
    };
    problems.finish()?;
    if display_name.is_none() && avatar_url.is_none() {
        // Nothing to change: nothing counted, nothing announced.
        return Ok(Json(current.own()));
    }
    profile_quota(&state, caller.user_id).await?;
    let user = users::update_profile(
        &state.db,
        caller.user_id,
        Profile {
            display_name,
            avatar_url,
        },
    )
    .await?
    .ok_or_else(|| ApiError::unauthorized("account_disabled", "the account is deactivated"))?;
    state.announcer.changed(caller.user_id);
    Ok(Json(user.own()))
}

/// Counts a change of `user`'s display name or avatar against `PROFILE_UPDATES_PER_HOUR`: each
/// is announced to every conversation the user is in.
pub async fn profile_quota(state: &AppState, user: uuid::Uuid) -> ApiResult<()> {
    shared::limits::quota(
        &state.redis,
        state.keys().quota("profile", &user.to_string()),
        state.config.profile_updates_per_hour,
        3600,
        "too many profile changes; try again later",
    )
    .await
}

#[derive(Debug, Deserialize)]
pub struct SearchQuery {
    q: Option<String>,
    limit: Option<String>,
    ids: Option<String>,
}

/// The most users one `GET /auth/users?ids=` looks up.
const MAX_LOOKUP_IDS: usize = 100;

/// `GET /auth/users?q=PREFIX&limit=N`, or `GET /auth/users?ids=ID,…`
#[utoipa::path(get, path = "/auth/users", tag = "auth", security(("bearer" = [])),
    params(
        ("q" = Option<String>, Query, description = "Prefix of a username or display name, 1–64 characters (without `ids`)"),
        ("limit" = Option<i64>, Query, description = "1–50, default 20 (with `q`)"),
        ("ids" = Option<String>, Query, description = "Instead of `q` (an extension): 1–100 comma-separated user ids, looked up whether or not the account is still active, so that a client can name the authors of the messages it shows"),
    ),
    responses(
        (status = 200, description = "With `q`: matching active users by username. With `ids`: those of the users that exist, by username. Never with emails.", body = [UserBody]),
        (status = 422, description = "Invalid parameters, or both `q` and `ids`", body = ErrorBody),
    ))]
pub async fn search_users(
    State(state): State<AppState>,
    _caller: AuthUser,
    ApiQuery(query): ApiQuery<SearchQuery>,
) -> ApiResult<Json<Vec<UserBody>>> {
    if let Some(raw) = query.ids.as_deref() {
        if query.q.is_some() || query.limit.is_some() {
            return Err(ApiError::invalid_field(
                "ids",
                "give either ids, or q (and limit), not both",
            ));
        }
        let ids = shared::extract::id_list("ids", raw, MAX_LOOKUP_IDS)?;
        let found = users::find_many(&state.db, &ids).await?;
        return Ok(Json(found.into_iter().map(users::User::public).collect()));
    }
    let mut problems = Problems::default();
    let q = query.q.unwrap_or_default();
    let q = q.trim();
    problems.check(
        "q",
        if (1..=64).contains(&q.chars().count()) {
            Ok(())
        } else {
            Err("must be 1 to 64 characters".into())
        },
    );
    let limit = match query.limit.as_deref().map(str::parse::<i64>) {
        None => 20,
        Some(Ok(n)) if (1..=50).contains(&n) => n,
        Some(_) => {
            problems.check("limit", Err("must be a whole number from 1 to 50".into()));
            20
        }
    };
    problems.finish()?;
    let found = users::search(&state.db, q, limit).await?;
    Ok(Json(found.into_iter().map(users::User::public).collect()))
}
