//! Who is online: the layout gateways write and chat-service reads (see
//! [`crate::keys::Keys::online_users`]).

use std::{
    collections::BTreeMap,
    time::{SystemTime, UNIX_EPOCH},
};

use fred::{prelude::*, types::sorted_sets::Ordering};
use uuid::Uuid;

use crate::keys::{Keys, PRESENCE_BUCKETS};

/// The default life of an entry unless refreshed: a dead gateway's users are gone within it.
pub const TTL_SECONDS: u64 = 45;

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The users of `users` grouped by the online set they are counted in.
fn by_bucket<'a>(
    keys: &Keys,
    users: impl IntoIterator<Item = &'a Uuid>,
) -> BTreeMap<String, Vec<Uuid>> {
    let mut out: BTreeMap<String, Vec<Uuid>> = BTreeMap::new();
    for user in users {
        out.entry(keys.online_users(*user)).or_default().push(*user);
    }
    out
}

/// Marks users online until `TTL_SECONDS` from now (never shortening a later expiry): one
/// `ZADD` per bucket, pipelined.
pub async fn refresh(redis: &Client, keys: &Keys, users: &[Uuid]) -> Result<(), Error> {
    if users.is_empty() {
        return Ok(());
    }
    let expires = (now_ms() + (TTL_SECONDS * 1000) as i64) as f64;
    let pipe = redis.pipeline();
    for (key, users) in by_bucket(keys, users) {
        let members: Vec<(f64, String)> = users.iter().map(|u| (expires, u.to_string())).collect();
        pipe.zadd::<(), _, _>(
            key,
            None,
            Some(Ordering::GreaterThan),
            false,
            false,
            members,
        )
        .await?;
    }
    pipe.all::<()>().await
}

/// Removes a user at once (their last connection anywhere closed).
pub async fn remove(redis: &Client, keys: &Keys, user: Uuid) -> Result<(), Error> {
    redis
        .zrem::<(), _, _>(keys.online_users(user), user.to_string())
        .await
}

/// The users whose entry has not expired, from every bucket (pipelined). Expired entries are
/// pruned on the way.
pub async fn online(redis: &Client, keys: &Keys) -> Result<Vec<Uuid>, Error> {
    let now = now_ms() as f64;
    let prune = redis.pipeline();
    let read = redis.pipeline();
    for bucket in 0..PRESENCE_BUCKETS {
        let key = keys.online_bucket(bucket);
        prune
            .zremrangebyscore::<(), _, _, _>(&key, f64::NEG_INFINITY, now)
            .await?;
        read.zrangebyscore::<(), _, _, _>(&key, now, f64::INFINITY, false, None)
            .await?;
    }
    let _: Result<Vec<Value>, Error> = prune.all().await;
    let buckets: Vec<Vec<String>> = read.all().await?;
    Ok(buckets
        .iter()
        .flatten()
        .filter_map(|s| s.parse().ok())
        .collect())
}

/// For each of `users`, whether their entry is unexpired (one `ZMSCORE` per bucket).
pub async fn online_among(redis: &Client, keys: &Keys, users: &[Uuid]) -> Result<Vec<bool>, Error> {
    if users.is_empty() {
        return Ok(Vec::new());
    }
    let now = now_ms() as f64;
    let mut online = std::collections::HashSet::new();
    for (key, group) in by_bucket(keys, users) {
        let members: Vec<String> = group.iter().map(Uuid::to_string).collect();
        let scores: Vec<Option<f64>> = redis.zmscore(key, members).await?;
        online.extend(
            group
                .iter()
                .zip(scores)
                .filter(|(_, s)| s.is_some_and(|s| s > now))
                .map(|(u, _)| *u),
        );
    }
    Ok(users.iter().map(|u| online.contains(u)).collect())
}
