//! Accounts: registering one, and what needs its password (changing it, ending the account).

use std::net::SocketAddr;

use axum::{
    extract::State,
    http::{HeaderMap, StatusCode},
    Json,
};
use serde::Deserialize;
use shared::{
    error::{unique_violation, ErrorBody},
    extract::ApiJson,
    jwt::AuthUser,
    ApiError, ApiResult,
};
use utoipa::ToSchema;

use super::{
    login::throttled_verify,
    peer::{client_address, Peer},
    profile::active_user,
};
use crate::{
    users::{self, NewUser, UserBody},
    validate::{self, Problems},
    AppState,
};

#[derive(Debug, Deserialize, ToSchema)]
pub struct RegisterRequest {
    /// 3–32 of `[A-Za-z0-9_.-]`, unique whatever its case.
    pub username: String,
    /// Unique whatever its case.
    pub email: String,
    /// 8–128 characters.
    pub password: String,
    /// 1–64 characters; defaults to the username.
    pub display_name: Option<String>,
}

/// `POST /auth/register`
#[utoipa::path(post, path = "/auth/register", tag = "auth", request_body = RegisterRequest,
    responses(
        (status = 201, description = "Registered", body = UserBody),
        (status = 409, description = "Username or email taken", body = ErrorBody),
        (status = 422, description = "Invalid fields", body = ErrorBody),
        (status = 429, description = "Too many registrations from this address (REGISTRATIONS_PER_HOUR); see Retry-After", body = ErrorBody),
    ))]
pub async fn register(
    State(state): State<AppState>,
    Peer(peer): Peer,
    headers: HeaderMap,
    ApiJson(req): ApiJson<RegisterRequest>,
) -> ApiResult<(StatusCode, Json<UserBody>)> {
    let username = req.username.trim();
    let email = req.email.trim();
    let display_name = req
        .display_name
        .as_deref()
        .map(str::trim)
        .unwrap_or(username);
    let mut problems = Problems::default();
    problems.check("username", validate::username(username));
    problems.check("email", validate::email(email));
    problems.check("password", validate::password(&req.password));
    problems.check("display_name", validate::display_name(display_name));
    problems.finish()?;

    // Checked before hashing so a clash costs no Argon2 time; the unique indexes still decide races.
    let (username_taken, email_taken) = users::taken(&state.db, username, email).await?;
    if username_taken || email_taken {
        return Err(conflict(username_taken, email_taken));
    }
    if let Some(address) = client_address(&state.config.trusted_proxies, &headers, peer) {
        let keys = shared::keys::Keys::new(state.config.redis.prefix.clone());
        shared::limits::quota(
            &state.redis,
            keys.quota("register", &address.to_string()),
            state.config.registrations_per_hour,
            3600,
            "too many registrations from this address; try again later",
        )
        .await?;
    }

    let password_hash = state.passwords.hash(req.password).await?;
    let user = users::insert(
        &state.db,
        NewUser {
            username,
            email,
            display_name,
            password_hash: &password_hash,
        },
    )
    .await
    .map_err(|e| match unique_violation(&e) {
        Some("users_username_lower_key") => conflict(true, false),
        Some("users_email_lower_key") => conflict(false, true),
        _ => ApiError::from(e),
    })?;
    metrics::counter!("auth_registrations_total").increment(1);
    Ok((StatusCode::CREATED, Json(user.own())))
}

/// 409 naming the taken field(s).
fn conflict(username: bool, email: bool) -> ApiError {
    let mut fields = std::collections::BTreeMap::new();
    if username {
        fields.insert("username".to_owned(), "is already taken".to_owned());
    }
    if email {
        fields.insert("email".to_owned(), "is already registered".to_owned());
    }
    let mut e = ApiError::conflict(
        if username {
            "username_taken"
        } else {
            "email_taken"
        },
        if username {
            "that username is already taken"
        } else {
            "that email is already registered"
        },
    );
    e.fields = Some(fields);
    e
}

/// The caller's active user, once `password` is confirmed as theirs: a stolen access token
/// must not be enough to end the account or lock its owner out. Throttled like a login; a
/// wrong password is 401 `invalid_credentials`.
async fn confirm_password(
    state: &AppState,
    peer: Option<SocketAddr>,
    headers: &HeaderMap,
    caller: AuthUser,
    password: String,
) -> ApiResult<users::User> {
    let user = active_user(state, caller).await?;
    let address = client_address(&state.config.trusted_proxies, headers, peer);
    let matched = throttled_verify(
        state,
        &user.id.to_string(),
        address,
        password,
        Some(user.password_hash.clone()),
    )
    .await?;
    if !matched {
        return Err(ApiError::unauthorized(
            "invalid_credentials",
            "incorrect password",
        ));
    }
    Ok(user)
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct DeleteMeRequest {
    /// The account's password, to confirm.
    pub password: String,
}

/// `DELETE /auth/me`
#[utoipa::path(delete, path = "/auth/me", tag = "auth", security(("bearer" = [])), request_body = DeleteMeRequest,
    responses(
        (status = 204, description = "Deactivated: every login revoked, every socket closed (4001) within 5 seconds, and every later call with one of its access tokens answers 401 account_disabled. Its messages stay."),
        (status = 401, description = "Missing or invalid token, or a wrong password (invalid_credentials)", body = ErrorBody),
        (status = 422, description = "Invalid fields", body = ErrorBody),
        (status = 429, description = "Too many wrong passwords, or password checks for the account (`LOGIN_RATE_PER_SECOND`, `rate_limited`); see Retry-After", body = ErrorBody),
    ))]
pub async fn delete_me(
    State(state): State<AppState>,
    Peer(peer): Peer,
    headers: HeaderMap,
    caller: AuthUser,
    ApiJson(req): ApiJson<DeleteMeRequest>,
) -> ApiResult<StatusCode> {
    let user = confirm_password(&state, peer, &headers, caller, req.password).await?;
    end_account(&state, user.id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct ChangePasswordRequest {
    /// The password now, to confirm.
    pub current_password: String,
    /// 8–128 characters.
    pub new_password: String,
}

/// `POST /auth/me/password`
#[utoipa::path(post, path = "/auth/me/password", tag = "auth", security(("bearer" = [])), request_body = ChangePasswordRequest,
    responses(
        (status = 204, description = "Changed. Every other login of the user is revoked as a logout revokes one: its refresh tokens stop working, its access tokens are refused, its sockets close (4001) within 5 seconds. The caller's own login keeps working."),
        (status = 401, description = "Missing or invalid token, or a wrong `current_password` (invalid_credentials)", body = ErrorBody),
        (status = 422, description = "Invalid fields (`new_password` 8–128 characters)", body = ErrorBody),
        (status = 429, description = "Too many wrong passwords, or password checks for the account (`LOGIN_RATE_PER_SECOND`, `rate_limited`); see Retry-After", body = ErrorBody),
    ))]
pub async fn change_password(
    State(state): State<AppState>,
    Peer(peer): Peer,
    headers: HeaderMap,
    caller: AuthUser,
    ApiJson(req): ApiJson<ChangePasswordRequest>,
) -> ApiResult<StatusCode> {
    let mut problems = Problems::default();
    problems.check("new_password", validate::password(&req.new_password));
    problems.finish()?;
    let user = confirm_password(&state, peer, &headers, caller, req.current_password).await?;
    let password_hash = state.passwords.hash(req.new_password).await?;
    if !users::set_password(&state.db, user.id, &password_hash).await? {
        return Err(ApiError::unauthorized(
            "account_disabled",
            "the account is deactivated",
        ));
    }
    // Whoever else holds a login of this account (the reason passwords are changed) loses it.
    // Logins whose last token is older than an access token lives (and the verification
    // leeway) have no live access token left to refuse.
    let since = chrono::Utc::now() - chrono::Duration::seconds(state.jwt.ttl_seconds() + 60);
    let others = state
        .refresh_tokens
        .revoke_others(user.id, caller.sid, since)
        .await?;
    let revocations: Vec<shared::revocation::Revocation> = others
        .into_iter()
        .map(|sid| shared::revocation::Revocation::Session { user: user.id, sid })
        .collect();
    crate::sessions::revoke_all(&state, &revocations).await?;
    metrics::counter!("auth_password_changes_total").increment(1);
    Ok(StatusCode::NO_CONTENT)
}

/// Deactivates an account: every login revoked, every socket closed (4001), and its still
/// unexpired access tokens refused everywhere (`account_disabled`).
pub async fn end_account(state: &AppState, user: uuid::Uuid) -> ApiResult<()> {
    users::deactivate(&state.db, user).await?;
    state.refresh_tokens.revoke_user(user).await?;
    crate::sessions::revoke(state, shared::revocation::Revocation::Account { user }).await?;
    metrics::counter!("auth_accounts_deleted_total").increment(1);
    Ok(())
}
