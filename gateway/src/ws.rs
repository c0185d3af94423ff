//! `GET /ws`: everything that can refuse a client happens here, before the upgrade, as a plain
//! HTTP answer: a missing or bad token (401), a foreign `Origin` (403), a full node (503) or too
//! many connections for one user (429), chat-service unreachable (503).

use std::{collections::HashMap, sync::Arc};

use axum::{
    extract::{Query, Request, State},
    http::{header, HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
};
use hyper_util::rt::TokioIo;
use shared::{jwt::TokenError, ApiError};
use tokio_tungstenite::{
    tungstenite::{handshake::derive_accept_key, protocol::Role},
    WebSocketStream,
};
use uuid::Uuid;

use crate::{
    connection,
    hub::Refusal,
    protocol::{Encoding, MSGPACK_PROTOCOL},
    Gateway,
};

fn header_has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// The access token from `?token=` or `Authorization: Bearer`.
fn token(req: &Request) -> Option<String> {
    let from_query = Query::<HashMap<String, String>>::try_from_uri(req.uri())
        .ok()
        .and_then(|Query(q)| q.get("token").cloned())
        .filter(|t| !t.is_empty());
    from_query.or_else(|| {
        let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
        let (scheme, token) = value.split_once(' ')?;
        scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| token.trim().to_owned())
    })
}

pub async fn handler(State(gw): State<Arc<Gateway>>, mut req: Request) -> Response {
    let headers = req.headers();
    let is_upgrade = header_has_token(headers, header::CONNECTION, "upgrade")
        && header_has_token(headers, header::UPGRADE, "websocket")
        && headers
            .get(header::SEC_WEBSOCKET_VERSION)
            .and_then(|v| v.to_str().ok())
            == Some("13");
    let Some(key) = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .cloned()
        .filter(|_| is_upgrade)
    else {
        return ApiError::bad_request("not_websocket", "expected a WebSocket upgrade (version 13)")
            .into_response();
    };
    let Some(token) = token(&req) else {
        return ApiError::unauthorized(
            "not_authenticated",
            "pass ?token=ACCESS_TOKEN or Authorization: Bearer",
        )
        .into_response();
    };
    let user = match gw.jwt.verify(&token) {
        Ok(claims) => claims.sub,
        Err(TokenError::Expired) => {
            return ApiError::unauthorized("token_expired", "the access token has expired")
                .into_response()
        }
        Err(TokenError::Invalid) => {
            return ApiError::unauthorized("invalid_token", "the access token is invalid")
                .into_response()
        }
    };
    if let Some(origin) = headers.get(header::ORIGIN) {
        let allowed = origin
            .to_str()
            .is_ok_and(|o| gw.config.allowed_origins.iter().any(|a| a == "*" || a == o));
        if !allowed {
            return ApiError::forbidden("this Origin may not open WebSockets").into_response();
        }
    }
    match gw.hub.admit(user) {
        Err(Refusal::NodeFull) => {
            return ApiError::unavailable("gateway_full", "this gateway is full, try another")
                .into_response()
        }
        Err(Refusal::UserFull) => {
            return ApiError::too_many_requests("too many connections for this user", 5)
                .into_response()
        }
        Ok(()) => {}
    }
    let encoding = if header_has_token(headers, header::SEC_WEBSOCKET_PROTOCOL, MSGPACK_PROTOCOL) {
        Encoding::MsgPack
    } else {
        Encoding::Json
    };
    // What the user belongs to, before the upgrade: if chat-service is away, the client learns it now.
    let info = match gw.hub.chat().conversations(user).await {
        Ok(info) => info,
        Err(e) => {
            tracing::warn!(error = %e, "could not load the user's conversations");
            return ApiError::unavailable(
                "chat_unavailable",
                "chat-service is unavailable, retry shortly",
            )
            .into_response();
        }
    };
    let Some(on_upgrade) = req.extensions_mut().remove::<hyper::upgrade::OnUpgrade>() else {
        return ApiError::internal("the connection cannot be upgraded").into_response();
    };
    // The per-user cap counts the user's sockets on every gateway.
    let session = session_id();
    if !gw
        .presence
        .reserve_socket(user, &session, gw.config.max_connections_per_user)
        .await
    {
        return ApiError::too_many_requests("too many connections for this user", 5)
            .into_response();
    }
    let ws_config = gw.ws_config();
    let gateway = gw.clone();
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let socket = WebSocketStream::from_raw_socket(
                    TokioIo::new(upgraded),
                    Role::Server,
                    Some(ws_config),
                )
                .await;
                connection::run(gateway, socket, user, session, encoding, info).await;
            }
            Err(e) => {
                tracing::debug!(error = %e, "upgrade failed");
                gateway.presence.release_socket(user, &session).await;
            }
        }
    });
    let mut response = StatusCode::SWITCHING_PROTOCOLS.into_response();
    let h = response.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(accept) = HeaderValue::from_str(&derive_accept_key(key.as_bytes())) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    if encoding == Encoding::MsgPack {
        h.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(MSGPACK_PROTOCOL),
        );
    }
    response
}

/// A fresh session id for a connection.
pub fn session_id() -> String {
    Uuid::new_v4().simple().to_string()
}
