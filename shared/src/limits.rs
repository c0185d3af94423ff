//! Limits that hold across every process: token buckets per user (the send rate of the
//! contract, shared by all of a user's sockets on every gateway and REST sends) and fixed-window
//! quotas (rooms and groups created per hour, registrations per client address). Each check is
//! one Lua script, so it is one round trip and atomic against every other process; time is
//! Redis's own clock, so processes whose clocks disagree still share one bucket.

use fred::prelude::*;

use crate::{error::ApiError, lua::Script};

/// Takes up to `ARGV[2 + i]` tokens from the bucket at `KEYS[i]` (rate `ARGV[1]` per second,
/// capacity `ARGV[2]`), for each key in order; returns how many each got. A bucket is one
/// string, "millitokens:ms": two commands per key (a `GET`, a `SET … PX`), integers only — it
/// runs once per gathered stream entry on the send path, so it is kept lean.
static TAKE: Script = Script::new(
    r#"
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2]) * 1000
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = math.ceil(burst / rate) + 1000
local out = {}
for i, key in ipairs(KEYS) do
  local want = tonumber(ARGV[2 + i]) * 1000
  local tokens, at = burst, now
  local b = redis.call('GET', key)
  if b then
    local sep = string.find(b, ':', 1, true)
    tokens = tonumber(string.sub(b, 1, sep - 1))
    at = tonumber(string.sub(b, sep + 1))
    if now > at then
      tokens = math.min(burst, tokens + (now - at) * rate)
      at = now
    end
  end
  local granted = math.min(want, tokens - tokens % 1000)
  redis.call('SET', key, (tokens - granted) .. ':' .. at, 'PX', ttl)
  out[i] = granted / 1000
end
return out
"#,
);

/// Counts one use of the window at `KEYS[1]` (`ARGV[1]` uses per `ARGV[2]` seconds); returns
/// 0 when allowed, else the window's remaining seconds.
static QUOTA: Script = Script::new(
    r#"
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('EXPIRE', KEYS[1], ARGV[2]) end
if n > tonumber(ARGV[1]) then
  redis.call('DECR', KEYS[1])
  local ttl = redis.call('TTL', KEYS[1])
  if ttl < 1 then ttl = 1 end
  return ttl
end
return 0
"#,
);

/// Gives back one use of the window at `KEYS[1]`, if it holds any (an expired window holds
/// none, and is not brought back).
static REFUND: Script = Script::new(
    r#"
local n = tonumber(redis.call('GET', KEYS[1]) or '0')
if n > 0 then redis.call('DECR', KEYS[1]) end
return 0
"#,
);

/// A rate: `rate` per second, bursts of `burst`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub per_second: u32,
    pub burst: u32,
}

impl Rate {
    /// How long an empty bucket of this rate takes to hold one token again: the wait a refused
    /// caller is told (the bucket is at most that far from its next token).
    pub fn refill(self) -> std::time::Duration {
        std::time::Duration::from_secs(1) / self.per_second.max(1)
    }
}

/// For each `(bucket key, tokens wanted)`, the tokens granted, in order. A key named twice
/// is one bucket, taken from in order. On a cluster the keys are taken one slot at a time (a
/// script's keys must share one), the slots' scripts sent together.
pub async fn take(redis: &Client, rate: Rate, wants: &[(String, u32)]) -> Result<Vec<u32>, Error> {
    if !redis.is_clustered() {
        return take_in_one_slot(redis, rate, wants).await;
    }
    let mut by_slot: std::collections::BTreeMap<u16, Vec<usize>> = Default::default();
    for (i, (key, _)) in wants.iter().enumerate() {
        by_slot
            .entry(fred::util::redis_keyslot(key.as_bytes()))
            .or_default()
            .push(i);
    }
    let groups: Vec<Vec<usize>> = by_slot.into_values().collect();
    let answers = futures_util::future::try_join_all(groups.iter().map(|group| {
        let part: Vec<(String, u32)> = group.iter().map(|&i| wants[i].clone()).collect();
        async move { take_in_one_slot(redis, rate, &part).await }
    }))
    .await?;
    let mut granted = vec![0; wants.len()];
    for (group, answer) in groups.iter().zip(answers) {
        for (&i, g) in group.iter().zip(answer) {
            granted[i] = g;
        }
    }
    Ok(granted)
}

async fn take_in_one_slot(
    redis: &Client,
    rate: Rate,
    wants: &[(String, u32)],
) -> Result<Vec<u32>, Error> {
    if wants.is_empty() {
        return Ok(Vec::new());
    }
    let keys: Vec<String> = wants.iter().map(|(k, _)| k.clone()).collect();
    let mut args: Vec<String> = vec![
        rate.per_second.max(1).to_string(),
        rate.burst.max(1).to_string(),
    ];
    args.extend(wants.iter().map(|(_, n)| n.to_string()));
    let granted: Vec<i64> = TAKE.run(redis, keys, args).await?;
    Ok(granted
        .into_iter()
        .map(|g| u32::try_from(g).unwrap_or(0))
        .collect())
}

/// One token from one bucket, failing open: `false` only when Redis answers that the bucket is
/// empty. With Redis away the caller goes ahead (logged at debug): these buckets pace what one
/// user repeats, and an outage should not refuse everyone.
pub async fn allows(redis: &Client, rate: Rate, key: String) -> bool {
    match take(redis, rate, &[(key, 1)]).await {
        Ok(granted) => granted.first().copied().unwrap_or(0) > 0,
        Err(e) => {
            tracing::debug!(error = %e, "rate bucket unavailable; allowed");
            true
        }
    }
}

/// One token from one bucket: `Ok` or 429 `rate_limited` with `Retry-After` and `detail`;
/// `limit` labels `rate_limited_total` (`send`, `action`, …).
pub async fn take_one(
    redis: &Client,
    rate: Rate,
    key: String,
    limit: &'static str,
    detail: &str,
) -> Result<(), ApiError> {
    let granted = take(redis, rate, &[(key, 1)]).await?;
    if granted.first().copied().unwrap_or(0) >= 1 {
        Ok(())
    } else {
        Err(refused(limit, detail))
    }
}

/// The 429 `rate_limited` of an empty bucket, counted in `rate_limited_total{limit}`.
fn refused(limit: &'static str, detail: &str) -> ApiError {
    metrics::counter!("rate_limited_total", "limit" => limit).increment(1);
    let mut e = ApiError::too_many_requests(detail, 1);
    e.code = "rate_limited";
    e
}

/// As [`take_one`], failing open: with Redis away the request goes ahead (see [`allows`]).
/// For what needs no Redis otherwise (searching, logging in), so an outage of the buckets'
/// store does not refuse it.
pub async fn take_one_or_allow(
    redis: &Client,
    rate: Rate,
    key: String,
    limit: &'static str,
    detail: &str,
) -> Result<(), ApiError> {
    if allows(redis, rate, key).await {
        Ok(())
    } else {
        Err(refused(limit, detail))
    }
}

/// Counts one use against `limit` per `window_seconds` at `key`; past it, 429 with the
/// window's remaining time in `Retry-After` and `detail` as the message.
pub async fn quota(
    redis: &Client,
    key: String,
    limit: u32,
    window_seconds: u64,
    detail: &str,
) -> Result<(), ApiError> {
    let wait: i64 = QUOTA
        .run(
            redis,
            vec![key],
            vec![limit.to_string(), window_seconds.max(1).to_string()],
        )
        .await?;
    if wait == 0 {
        Ok(())
    } else {
        metrics::counter!("rate_limited_total", "limit" => "quota").increment(1);
        Err(ApiError::too_many_requests(
            detail,
            u64::try_from(wait).unwrap_or(1),
        ))
    }
}

/// Gives back a use [`quota`] counted for something that then did not happen (it failed, or
/// someone else did it first). Best effort: when Redis cannot be reached the use stays counted
/// until its window ends, which errs on the side of the limit.
pub async fn refund(redis: &Client, key: String) {
    let done: Result<i64, _> = REFUND.run(redis, vec![key], Vec::new()).await;
    if let Err(e) = done {
        tracing::warn!(error = %e, "could not give back a counted use of a quota");
    }
}
