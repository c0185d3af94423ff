//! The `/auth` endpoints and their OpenAPI description, in parts: `account` (registering,
//! changing the password, ending the account), `login` (tokens and WebSocket tickets),
//! `profile` (the caller's own user, looking users up) and `peer` (where a request comes
//! from).

mod account;
mod login;
mod peer;
mod profile;

use axum::{
    routing::{get, post},
    Router,
};
use shared::docs::{BearerAuth, CommonErrors};
use shared::error::ErrorBody;
use utoipa::OpenApi;

use crate::{users::UserBody, AppState};
pub use account::end_account;
use account::{ChangePasswordRequest, DeleteMeRequest, RegisterRequest};
use login::{LoginRequest, RefreshRequest, TokenPair, WsTicket};
pub use profile::profile_quota;
use profile::UpdateMeRequest;

/// The `/auth` routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/auth/register", post(account::register))
        .route("/auth/login", post(login::login))
        .route("/auth/refresh", post(login::refresh))
        .route("/auth/logout", post(login::logout))
        .route(
            "/auth/me",
            get(profile::me)
                .patch(profile::update_me)
                .delete(account::delete_me),
        )
        .route("/auth/me/password", post(account::change_password))
        .route("/auth/ws-ticket", post(login::ws_ticket))
        .route("/auth/users", get(profile::search_users))
        .route(
            "/auth/me/avatar",
            axum::routing::put(crate::avatars::set_avatar),
        )
        .route("/auth/avatars/{id}", get(crate::avatars::serve))
}

#[derive(OpenApi)]
#[openapi(
    info(title = "ChatSphere auth-service", description = "Users, login and tokens."),
    paths(account::register, login::login, login::refresh, login::logout, profile::me, profile::update_me,
          account::delete_me, account::change_password, login::ws_ticket, profile::search_users,
          crate::avatars::set_avatar, crate::avatars::serve,
          crate::admin::find_users, crate::admin::deactivate),
    components(schemas(RegisterRequest, LoginRequest, RefreshRequest, TokenPair, UpdateMeRequest, DeleteMeRequest, ChangePasswordRequest, WsTicket, UserBody, ErrorBody, crate::admin::AdminUser)),
    modifiers(&BearerAuth, &CommonErrors),
    tags((name = "auth", description = "Accounts and tokens"), (name = "admin", description = "For users with the admin role (`auth-service admin grant USERNAME`)"))
)]
pub struct ApiDoc;
