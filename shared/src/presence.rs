//! Who is online: the layout gateways write and chat-service reads (see
//! [`crate::keys::Keys::online_users`]).

use std::time::{SystemTime, UNIX_EPOCH};

use fred::{prelude::*, types::sorted_sets::Ordering};
use uuid::Uuid;

use crate::keys::Keys;

/// The default life of an entry unless refreshed: a dead gateway's users are gone within it.
pub const TTL_SECONDS: u64 = 45;

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Marks users online until `TTL_SECONDS` from now (never shortening a later expiry).
pub async fn refresh(redis: &Client, keys: &Keys, users: &[Uuid]) -> Result<(), Error> {
    if users.is_empty() {
        return Ok(());
    }
    let expires = (now_ms() + (TTL_SECONDS * 1000) as i64) as f64;
    let members: Vec<(f64, String)> = users.iter().map(|u| (expires, u.to_string())).collect();
    redis
        .zadd::<(), _, _>(
            keys.online_users(),
            None,
            Some(Ordering::GreaterThan),
            false,
            false,
            members,
        )
        .await
}

/// Removes a user at once (their last connection anywhere closed).
pub async fn remove(redis: &Client, keys: &Keys, user: Uuid) -> Result<(), Error> {
    redis
        .zrem::<(), _, _>(keys.online_users(), user.to_string())
        .await
}

/// The users whose entry has not expired. Expired entries are pruned on the way.
pub async fn online(redis: &Client, keys: &Keys) -> Result<Vec<Uuid>, Error> {
    let key = keys.online_users();
    let now = now_ms();
    let _: Result<i64, Error> = redis
        .zremrangebyscore(&key, f64::NEG_INFINITY, now as f64)
        .await;
    let ids: Vec<String> = redis
        .zrangebyscore(&key, now as f64, f64::INFINITY, false, None)
        .await?;
    Ok(ids.iter().filter_map(|s| s.parse().ok()).collect())
}

/// For each of `users`, whether their entry is unexpired (one `ZMSCORE`).
pub async fn online_among(redis: &Client, keys: &Keys, users: &[Uuid]) -> Result<Vec<bool>, Error> {
    if users.is_empty() {
        return Ok(Vec::new());
    }
    let members: Vec<String> = users.iter().map(Uuid::to_string).collect();
    let scores: Vec<Option<f64>> = redis.zmscore(keys.online_users(), members).await?;
    let now = now_ms() as f64;
    Ok(scores
        .into_iter()
        .map(|s| s.is_some_and(|s| s > now))
        .collect())
}
