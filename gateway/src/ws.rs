//! `GET /ws`: everything that can refuse a client happens here, before the upgrade, as a plain
//! HTTP answer: a missing or bad token (401), a foreign `Origin` (403), a full node (503) or too
//! many connections for one user (429), chat-service unreachable (503).

use std::{collections::HashMap, sync::Arc};

use axum::{
    extract::{Query, Request, State},
    http::{header, HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
};
use hyper::upgrade::Parts;
use hyper_util::rt::TokioIo;
use shared::ApiError;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use crate::{
    connection::{self, session_id, Admitted},
    hub::Refusal,
    protocol::{Encoding, MSGPACK_PROTOCOL},
    Gateway,
};

/// 1 to 5 seconds, differing from one refused client to the next, so a crowd refused together
/// does not come back together.
fn jittered_retry_after() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    1 + u64::from(nanos % 5)
}

fn header_has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// How the client proves who it is.
enum Credential {
    /// `?token=` or `Authorization: Bearer`.
    Token(String),
    /// `?ticket=` from `POST /auth/ws-ticket`.
    Ticket(String),
}

fn credential(req: &Request) -> Option<Credential> {
    let query = Query::<HashMap<String, String>>::try_from_uri(req.uri())
        .ok()
        .map(|Query(q)| q)
        .unwrap_or_default();
    let param = |name: &str| query.get(name).filter(|v| !v.is_empty()).cloned();
    if let Some(ticket) = param("ticket") {
        return Some(Credential::Ticket(ticket));
    }
    param("token")
        .or_else(|| {
            let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
            let (scheme, token) = value.split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("bearer")
                .then(|| token.trim().to_owned())
        })
        .map(Credential::Token)
}

/// Checks the credential: a valid user token, or an unused ticket; never a revoked login.
async fn admit(gw: &Gateway, credential: Credential) -> Result<Admitted, ApiError> {
    let admitted = match credential {
        Credential::Token(token) => {
            let claims = gw
                .jwt
                .verify(&token)
                .map_err(|e| shared::jwt::token_rejection(&e))?;
            Admitted {
                user: claims.sub,
                sid: claims.sid,
                exp: claims.exp,
            }
        }
        Credential::Ticket(ticket) => {
            let redeemed = shared::ticket::redeem(&gw.bus.redis, gw.hub.keys(), &ticket)
                .await
                .map_err(|_| {
                    ApiError::unavailable("redis_unavailable", "tickets cannot be checked now")
                })?;
            match redeemed {
                Some(t) if t.exp > chrono::Utc::now().timestamp() => Admitted {
                    user: t.user,
                    sid: t.sid,
                    exp: t.exp,
                },
                _ => {
                    return Err(ApiError::unauthorized(
                        "invalid_ticket",
                        "the ticket is unknown, used or expired",
                    ))
                }
            }
        }
    };
    if let Some(revoked) = gw.revocations.check(admitted.user, admitted.sid) {
        return Err(revoked.rejection());
    }
    Ok(admitted)
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
    let Some(credential) = credential(&req) else {
        return ApiError::unauthorized(
            "not_authenticated",
            "pass ?ticket=TICKET, ?token=ACCESS_TOKEN or Authorization: Bearer",
        )
        .into_response();
    };
    let admitting = std::time::Instant::now();
    let admitted = admit(&gw, credential).await;
    connection::stage_done("admit", admitting);
    let admitted = match admitted {
        Ok(a) => a,
        Err(e) => return e.into_response(),
    };
    let user = admitted.user;
    let headers = req.headers();
    if let Some(origin) = headers.get(header::ORIGIN) {
        let allowed = origin
            .to_str()
            .is_ok_and(|o| gw.config.allowed_origins.iter().any(|a| a == "*" || a == o));
        if !allowed {
            return ApiError::forbidden("this Origin may not open WebSockets").into_response();
        }
    }
    // One user's upgrades are paced before they take a slot of the gateway's.
    if !connection::user_bucket_allows(
        &gw,
        gw.config.connect_rate,
        gw.hub.keys().connect_rate(user),
        "gateway_connects_rate_limited_total",
    )
    .await
    {
        let mut e = ApiError::too_many_requests("too many connections opened; retry later", 2);
        e.code = "rate_limited";
        return e.into_response();
    }
    // Paced: what follows asks chat-service for the user's conversations.
    let Ok(_preparing) = gw.upgrades.clone().try_acquire_owned() else {
        metrics::counter!("gateway_upgrades_shed_total").increment(1);
        let mut busy = ApiError::unavailable(
            "gateway_busy",
            "too many connections opening at once; retry",
        );
        busy.retry_after = Some(jittered_retry_after());
        return busy.into_response();
    };
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
    let listing = std::time::Instant::now();
    let info = gw.hub.chat().conversations(user).await;
    connection::stage_done("conversations", listing);
    let info = match info {
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
    let reserving = std::time::Instant::now();
    let reserved = gw
        .presence
        .reserve_socket(user, &session, gw.config.max_connections_per_user)
        .await;
    connection::stage_done("reserve", reserving);
    if !reserved {
        return ApiError::too_many_requests("too many connections for this user", 5)
            .into_response();
    }
    let gateway = gw.clone();
    tokio::spawn(async move {
        let socket = match on_upgrade.await {
            Ok(upgraded) => upgraded.downcast::<TokioIo<TcpStream>>().map_err(|_| {
                tracing::error!("an upgraded connection is not a TCP stream; closed");
            }),
            Err(e) => {
                tracing::debug!(error = %e, "upgrade failed");
                Err(())
            }
        };
        match socket {
            Ok(Parts { io, read_buf, .. }) => {
                let socket = io.into_inner();
                limit_send_buffer(&socket, gateway.config.socket_send_buffer_bytes);
                let accepted = connection::Accepted::new(socket, read_buf);
                connection::run(gateway, accepted, admitted, session, encoding, info).await;
            }
            // Boxed, as in `connection::run`: a Redis call's future is large, and inline it
            // would be part of every connection task for the connection's whole life.
            Err(()) => Box::pin(gateway.presence.release_socket(user, &session)).await,
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

/// Fixes the socket's kernel send buffer at `bytes` (0: leaves the kernel's autotuning), so
/// that what a client does not read waits in the bounded outbound queue rather than in kernel
/// memory (`SOCKET_SEND_BUFFER_BYTES`). A refusal is logged and the connection goes on with
/// the kernel's buffer.
fn limit_send_buffer(socket: &TcpStream, bytes: usize) {
    if bytes == 0 {
        return;
    }
    if let Err(e) = socket2::SockRef::from(socket).set_send_buffer_size(bytes) {
        tracing::warn!(error = %e, bytes, "could not set the socket's send buffer");
    }
}
