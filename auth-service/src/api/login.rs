//! Logins: tokens for a password, refreshed and given up, and the one-upgrade WebSocket tickets.

use std::net::IpAddr;

use axum::{
    extract::{FromRequest, Request, State},
    http::{HeaderMap, StatusCode},
    Json,
};
use serde::{Deserialize, Serialize};
use shared::{
    error::ErrorBody,
    extract::{field_name, media_type, parse_json, read_body, ApiJson},
    jwt::AuthUser,
    ApiError, ApiResult,
};
use utoipa::ToSchema;

use super::peer::{client_address, Peer};
use crate::{
    users::{self},
    validate::Problems,
    AppState,
};

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
pub(super) async fn throttled_verify(
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
pub async fn login(
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
pub async fn refresh(
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
pub async fn logout(
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
pub async fn ws_ticket(
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
