//! The `/auth` endpoints and their OpenAPI description.

use std::net::{IpAddr, SocketAddr};

use axum::{
    extract::{ConnectInfo, FromRequest, FromRequestParts, Request, State},
    http::{request::Parts, HeaderMap, StatusCode},
    routing::{get, post},
    Json, Router,
};
use serde::{Deserialize, Serialize};
use shared::docs::{BearerAuth, CommonErrors};
use shared::{
    error::{unique_violation, ErrorBody},
    extract::{field_name, media_type, parse_json, read_body, ApiJson, ApiQuery},
    jwt::AuthUser,
    ApiError, ApiResult,
};
use utoipa::{OpenApi, ToSchema};

use crate::{
    users::{self, NewUser, Profile, UserBody},
    validate::{self, Problems},
    AppState,
};

/// The `/auth` routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/auth/register", post(register))
        .route("/auth/login", post(login))
        .route("/auth/refresh", post(refresh))
        .route("/auth/logout", post(logout))
        .route("/auth/me", get(me).patch(update_me).delete(delete_me))
        .route("/auth/me/password", post(change_password))
        .route("/auth/ws-ticket", post(ws_ticket))
        .route("/auth/users", get(search_users))
        .route(
            "/auth/me/avatar",
            axum::routing::put(crate::avatars::set_avatar),
        )
        .route("/auth/avatars/{id}", get(crate::avatars::serve))
}

#[derive(OpenApi)]
#[openapi(
    info(title = "ChatSphere auth-service", description = "Users, login and tokens."),
    paths(register, login, refresh, logout, me, update_me, delete_me, change_password, ws_ticket, search_users,
          crate::avatars::set_avatar, crate::avatars::serve,
          crate::admin::find_users, crate::admin::deactivate),
    components(schemas(RegisterRequest, LoginRequest, RefreshRequest, TokenPair, UpdateMeRequest, DeleteMeRequest, ChangePasswordRequest, WsTicket, UserBody, ErrorBody, crate::admin::AdminUser)),
    modifiers(&BearerAuth, &CommonErrors),
    tags((name = "auth", description = "Accounts and tokens"), (name = "admin", description = "For users with the admin role (`auth-service admin grant USERNAME`)"))
)]
pub struct ApiDoc;

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
async fn register(
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

/// Login credentials, as JSON or as the form-encoded OAuth2 password flow.
#[derive(Debug, Deserialize, ToSchema)]
pub struct LoginRequest {
    /// The username or the email.
    pub username: String,
    pub password: String,
}

impl<S: Send + Sync> FromRequest<S> for LoginRequest {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let media = media_type(req.headers());
        let form = media.as_deref() == Some("application/x-www-form-urlencoded");
        if !form && !shared::extract::is_json(req.headers()) {
            return Err(ApiError::unsupported_media_type(
                "expected application/json or application/x-www-form-urlencoded",
            ));
        }
        let body = read_body(req, state).await?;
        if form {
            let login: LoginRequest = serde_urlencoded::from_bytes(&body).map_err(|e| {
                let message = e.to_string();
                ApiError::invalid_field(field_name("", &message, "body"), message)
            })?;
            // JSON bodies are checked by `parse_json`; the form's fields here.
            let mut problems = Problems::default();
            problems.check("username", shared::text::check(&login.username));
            problems.check("password", shared::text::check(&login.password));
            problems.finish().map(|()| login)
        } else {
            parse_json(&body)
        }
    }
}

/// Access and refresh tokens.
#[derive(Debug, Serialize, ToSchema)]
pub struct TokenPair {
    pub access_token: String,
    pub refresh_token: String,
    /// Always `bearer`.
    pub token_type: &'static str,
    /// Seconds until the access token expires.
    pub expires_in: i64,
}

/// The TCP peer of a request, when the server recorded it.
pub struct Peer(pub Option<SocketAddr>);

impl<S: Send + Sync> FromRequestParts<S> for Peer {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Peer(
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|ConnectInfo(addr)| *addr),
        ))
    }
}

/// The client's address. When the peer is one of `TRUSTED_PROXIES`, the address its proxy chain
/// reports: `X-Forwarded-For` read from the right, skipping every hop that is itself a trusted
/// proxy, else `X-Real-IP`. Otherwise the peer itself, whatever headers it sent.
pub fn client_address(
    trusted: &[ipnet::IpNet],
    headers: &HeaderMap,
    peer: Option<SocketAddr>,
) -> Option<IpAddr> {
    let peer = peer.map(|p| p.ip())?;
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return Some(peer);
    }
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(chain) = header("x-forwarded-for") {
        let hops: Vec<IpAddr> = chain
            .split(',')
            .filter_map(|hop| hop.trim().parse().ok())
            .collect();
        if let Some(client) = hops.iter().rev().find(|ip| !is_trusted(ip)) {
            return Some(*client);
        }
    }
    header("x-real-ip")
        .and_then(|v| v.trim().parse().ok())
        .or(Some(peer))
}

/// Takes a token from `account`'s login bucket (`LOGIN_RATE_PER_SECOND`): 429 `rate_limited`
/// past it. With Redis away the check goes ahead, as the failure throttle's does.
async fn login_rate(state: &AppState, account: &str) -> ApiResult<()> {
    shared::limits::take_one_or_allow(
        &state.redis,
        state.config.login_rate,
        state.keys().login_rate(account),
        "login",
        "too many logins for this account",
    )
    .await
}

/// Checks `password` against `hash` (a dummy when there is none, so timing tells nothing),
/// with the attempt reserved against `account` and `address` first; a match clears them.
async fn throttled_verify(
    state: &AppState,
    account: &str,
    address: Option<IpAddr>,
    password: String,
    hash: Option<String>,
) -> ApiResult<bool> {
    login_rate(state, account).await?;
    state.throttle.reserve(account, address).await?;
    let matched = state.passwords.verify(password, hash).await?;
    if matched {
        state.throttle.succeeded(account, address).await;
    }
    Ok(matched)
}

/// `POST /auth/login`
#[utoipa::path(post, path = "/auth/login", tag = "auth",
    request_body(content(
        (LoginRequest = "application/json"),
        (LoginRequest = "application/x-www-form-urlencoded"),
    )),
    responses(
        (status = 200, description = "Logged in", body = TokenPair),
        (status = 401, description = "Wrong username or password", body = ErrorBody),
        (status = 429, description = "Too many failures (`too_many_requests`), or more logins for the account than 1 a second in bursts of 10 (`rate_limited`); see Retry-After", body = ErrorBody),
    ))]
async fn login(
    State(state): State<AppState>,
    Peer(peer): Peer,
    headers: HeaderMap,
    credentials: LoginRequest,
) -> ApiResult<Json<TokenPair>> {
    let account = credentials.username.trim().to_lowercase();
    let address = client_address(&state.config.trusted_proxies, &headers, peer);
    let user = users::find_by_login(&state.db, &account).await?;
    // Attempts count against the account whichever of its names was typed; for unknown names,
    // against the name itself. Reserved before the password is checked, so parallel guesses
    // cannot all slip in before the first failure is counted.
    let throttle_key = user
        .as_ref()
        .map_or_else(|| account.clone(), |u| u.id.to_string());
    let matched = throttled_verify(
        &state,
        &throttle_key,
        address,
        credentials.password,
        user.as_ref().map(|u| u.password_hash.clone()),
    )
    .await?;
    let user = match user {
        Some(user) if matched => user,
        _ => {
            metrics::counter!("auth_logins_total", "result" => "failed").increment(1);
            return Err(ApiError::unauthorized(
                "invalid_credentials",
                "incorrect username or password",
            ));
        }
    };
    if !user.is_active {
        return Err(ApiError::unauthorized(
            "account_disabled",
            "the account is deactivated",
        ));
    }
    users::touch_last_seen(&state.db, user.id).await?;
    let (login, refresh_token) = state.refresh_tokens.issue(user.id).await?;
    let access = state.jwt.issue_session(user.id, login)?;
    metrics::counter!("auth_logins_total", "result" => "ok").increment(1);
    Ok(Json(TokenPair {
        access_token: access.token,
        refresh_token,
        token_type: "bearer",
        expires_in: access.expires_in,
    }))
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct RefreshRequest {
    pub refresh_token: String,
}

/// `POST /auth/refresh`
#[utoipa::path(post, path = "/auth/refresh", tag = "auth", request_body = RefreshRequest,
    responses(
        (status = 200, description = "A new pair; the presented refresh token stops working. Presented again within REFRESH_REUSE_GRACE_SECONDS of that (a retry after a lost answer, a second tab), the same pair comes back.", body = TokenPair),
        (status = 401, description = "Unknown, expired, revoked or reused refresh token (a reuse past the grace window revokes the whole login and closes its sockets)", body = ErrorBody),
    ))]
async fn refresh(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<RefreshRequest>,
) -> ApiResult<Json<TokenPair>> {
    let rotation = match state
        .refresh_tokens
        .rotate(req.refresh_token.trim())
        .await?
    {
        Ok(rotation) => rotation,
        Err(refused) => {
            if let crate::tokens::Refused::Reused { user, login } = refused {
                crate::sessions::revoke(
                    &state,
                    shared::revocation::Revocation::Session { user, sid: login },
                )
                .await?;
            }
            return Err(refused.into());
        }
    };
    // As of the rotation, so a pair handed out again within the grace window is the same.
    let access = state
        .jwt
        .issue_at(rotation.user_id, rotation.login, rotation.rotated_at)?;
    Ok(Json(TokenPair {
        access_token: access.token,
        refresh_token: rotation.refresh_token,
        token_type: "bearer",
        expires_in: access.expires_in,
    }))
}

/// `POST /auth/logout`
#[utoipa::path(post, path = "/auth/logout", tag = "auth", request_body = RefreshRequest,
    responses(
        (status = 204, description = "Every refresh token of this login stops working, its access tokens are refused from then on, and its sockets are closed (4001) within 5 seconds; the user's other logins keep theirs"),
        (status = 422, description = "Invalid fields", body = ErrorBody),
    ))]
async fn logout(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<RefreshRequest>,
) -> ApiResult<StatusCode> {
    if let Some((user, login)) = state
        .refresh_tokens
        .revoke_family(req.refresh_token.trim())
        .await?
    {
        crate::sessions::revoke(
            &state,
            shared::revocation::Revocation::Session { user, sid: login },
        )
        .await?;
    }
    Ok(StatusCode::NO_CONTENT)
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
async fn delete_me(
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
async fn change_password(
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

/// A single-use WebSocket ticket.
#[derive(Debug, Serialize, ToSchema)]
pub struct WsTicket {
    /// Opaque; pass it as `GET /ws?ticket=…` instead of a token.
    pub ticket: String,
    /// Seconds it stays valid (30), for one upgrade only.
    pub expires_in: u64,
}

/// `POST /auth/ws-ticket`
#[utoipa::path(post, path = "/auth/ws-ticket", tag = "auth", security(("bearer" = [])),
    responses(
        (status = 201, description = "A ticket for one WebSocket upgrade within 30 seconds, so an access token never has to appear in a URL. The socket lives as long as the access token that asked for it.", body = WsTicket),
        (status = 401, description = "Missing, invalid, expired or revoked token", body = ErrorBody),
        (status = 429, description = "`rate_limited`: more tickets than `WS_TICKET_RATE_PER_SECOND` (1 a second, bursts of 40, per user); see Retry-After", body = ErrorBody),
        (status = 503, description = "Redis unavailable", body = ErrorBody),
    ))]
async fn ws_ticket(
    State(state): State<AppState>,
    caller: AuthUser,
) -> ApiResult<(StatusCode, Json<WsTicket>)> {
    shared::limits::take_one(
        &state.redis,
        state.config.ticket_rate,
        state.keys().ticket_rate(caller.user_id),
        "ws_ticket",
        "too many WebSocket tickets; connect with the ones issued",
    )
    .await?;
    let ticket = shared::ticket::issue(&state.redis, &state.keys(), &caller).await?;
    Ok((
        StatusCode::CREATED,
        Json(WsTicket {
            ticket,
            expires_in: shared::ticket::TICKET_SECONDS,
        }),
    ))
}

/// The caller's user row, refusing deactivated or deleted users with 401.
async fn active_user(state: &AppState, caller: AuthUser) -> ApiResult<users::User> {
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
async fn me(State(state): State<AppState>, caller: AuthUser) -> ApiResult<Json<UserBody>> {
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
    /// An http(s) URL; `null` or `""` removes it.
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
async fn update_me(
    State(state): State<AppState>,
    caller: AuthUser,
    ApiJson(req): ApiJson<UpdateMeRequest>,
) -> ApiResult<Json<UserBody>> {
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
        Some(Some(url)) => {
            problems.check("avatar_url", validate::http_url(url.trim()));
            Some(Some(url.trim().to_owned()))
        }
    };
    problems.finish()?;
    let current = active_user(&state, caller).await?;
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
async fn search_users(
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_client_address_comes_from_trusted_proxies_only() {
        let trusted: Vec<ipnet::IpNet> = vec![
            "127.0.0.1/32".parse().unwrap(),
            "10.0.0.0/8".parse().unwrap(),
        ];
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-forwarded-for",
            "203.0.113.9, 198.51.100.7, 10.1.2.3".parse().unwrap(),
        );
        let proxy: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let stranger: SocketAddr = "192.0.2.1:5000".parse().unwrap();
        // Through the proxies: the first hop from the right that is not one of them.
        assert_eq!(
            client_address(&trusted, &headers, Some(proxy)),
            Some("198.51.100.7".parse().unwrap())
        );
        // A peer that is no proxy of ours cannot claim another address.
        assert_eq!(
            client_address(&trusted, &headers, Some(stranger)),
            Some(stranger.ip())
        );
        // No proxies trusted: the headers are ignored.
        assert_eq!(client_address(&[], &headers, Some(proxy)), Some(proxy.ip()));
        let mut real = HeaderMap::new();
        real.insert("x-real-ip", "198.51.100.8".parse().unwrap());
        assert_eq!(
            client_address(&trusted, &real, Some(proxy)),
            Some("198.51.100.8".parse().unwrap())
        );
    }
}
