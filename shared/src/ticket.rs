//! Single-use WebSocket tickets (`POST /auth/ws-ticket`, then `GET /ws?ticket=…`), so an access
//! token never has to appear in a URL (and in a proxy's logs). A ticket is 32 random bytes;
//! Redis keeps only its SHA-256, with the user, the login and the access token's expiry, for
//! [`TICKET_SECONDS`]. Redeeming it deletes it (`GETDEL`): one upgrade, whichever gateway.

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use fred::prelude::*;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::{error::ApiError, jwt::AuthUser, keys::Keys};

/// How long a ticket is valid.
pub const TICKET_SECONDS: u64 = 30;

fn digest(ticket: &str) -> String {
    hex(&Sha256::digest(ticket.as_bytes()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What a redeemed ticket stands for: the access token that asked for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket {
    pub user: Uuid,
    pub sid: Uuid,
    /// When that access token expires (seconds since the epoch): the socket's life.
    pub exp: i64,
}

/// A new ticket for `caller`.
pub async fn issue(redis: &Client, keys: &Keys, caller: &AuthUser) -> Result<String, ApiError> {
    let bytes: [u8; 32] = rand::random();
    let ticket = URL_SAFE_NO_PAD.encode(bytes);
    let value = format!("{}:{}:{}", caller.user_id, caller.sid, caller.exp);
    let ttl = i64::try_from(TICKET_SECONDS).unwrap_or(30);
    let _: () = redis
        .set(
            keys.ws_ticket(&digest(&ticket)),
            value,
            Some(Expiration::EX(ttl)),
            None,
            false,
        )
        .await?;
    Ok(ticket)
}

/// Redeems `ticket`: what it stands for, once; `None` when unknown, used or expired.
pub async fn redeem(redis: &Client, keys: &Keys, ticket: &str) -> Result<Option<Ticket>, Error> {
    if ticket.len() > 128 {
        return Ok(None);
    }
    let value: Option<String> = redis.getdel(keys.ws_ticket(&digest(ticket))).await?;
    Ok(value.and_then(|v| {
        let mut parts = v.split(':');
        Some(Ticket {
            user: parts.next()?.parse().ok()?,
            sid: parts.next()?.parse().ok()?,
            exp: parts.next()?.parse().ok()?,
        })
    }))
}
