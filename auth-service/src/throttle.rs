//! Login throttling in Redis that guessing in parallel cannot race: every attempt is reserved
//! *before* its password is checked, in one script per login (atomic against every other
//! replica), so a hundred simultaneous guesses are counted as a hundred.
//!
//! - Per account: `LOGIN_MAX_FAILURES_PER_ACCOUNT` attempts (default 5) go through freely; after
//!   that each further attempt must wait a delay that doubles with every failure (1 s, 2 s,
//!   4 s, …, at most `LOGIN_MAX_DELAY_SECONDS`, default 30) after the previous attempt. There
//!   is no lockout: an attacker can slow an account's logins down to one per maximum delay, never
//!   stop its owner from logging in. A refused attempt changes nothing, so hammering does not
//!   push the delay further out.
//! - Per client address: `LOGIN_MAX_FAILURES_PER_ADDRESS` attempts (default 30) that did not
//!   succeed within `LOGIN_FAILURE_WINDOW_SECONDS`; past that, 429 until the window ends.
//!
//! A successful login clears the account's count and gives its reserved attempt back to the
//! address. If Redis is unreachable the throttle lets logins through (and logs it): Argon2's
//! bounded concurrency still caps the guessing rate, and a Redis outage should not lock
//! everyone out.

use std::net::IpAddr;

use fred::prelude::*;
use shared::{keys::Keys, lua::Script, ApiError};

/// Reserves an attempt. KEYS[1]: the account's hash (`n` attempts not yet cleared, `last`
/// attempt in Unix ms); KEYS[2] (optional): the address's counter. ARGV: free attempts, the
/// longest delay (ms), the window (s), the address limit. Returns {0, 0} when reserved, else
/// {1 (account) or 2 (address), seconds to wait}.
static RESERVE: Script = Script::new(
    r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local free = tonumber(ARGV[1])
local max_delay = tonumber(ARGV[2])
local window = tonumber(ARGV[3])
local a = redis.call('HMGET', KEYS[1], 'n', 'last')
local n = tonumber(a[1]) or 0
local last = tonumber(a[2]) or 0
if n >= free then
  local delay = math.min(max_delay, 1000 * 2 ^ (n - free))
  if now < last + delay then
    return {1, math.max(1, math.ceil((last + delay - now) / 1000))}
  end
end
if KEYS[2] then
  local m = tonumber(redis.call('GET', KEYS[2]) or '0')
  if m >= tonumber(ARGV[4]) then
    return {2, math.max(1, redis.call('TTL', KEYS[2]))}
  end
  redis.call('INCR', KEYS[2])
  if m == 0 then redis.call('EXPIRE', KEYS[2], window) end
end
redis.call('HSET', KEYS[1], 'n', n + 1, 'last', now)
redis.call('EXPIRE', KEYS[1], window)
return {0, 0}
"#,
);

/// A successful attempt: the account starts over, the address gets its attempt back.
static SUCCEEDED: Script = Script::new(
    r#"
redis.call('DEL', KEYS[1])
if KEYS[2] and tonumber(redis.call('GET', KEYS[2]) or '0') > 0 then
  redis.call('DECR', KEYS[2])
end
return 0
"#,
);

pub struct LoginThrottle {
    redis: Client,
    keys: Keys,
    free_per_account: u32,
    max_per_address: u32,
    max_delay_ms: u64,
    window_seconds: u64,
}

impl LoginThrottle {
    pub fn new(
        redis: Client,
        keys: Keys,
        free_per_account: u32,
        max_per_address: u32,
        max_delay_seconds: u64,
        window_seconds: u64,
    ) -> Self {
        Self {
            redis,
            keys,
            free_per_account,
            max_per_address,
            max_delay_ms: max_delay_seconds.max(1) * 1000,
            window_seconds: window_seconds.max(1),
        }
    }

    fn keys_for(&self, account: &str, address: Option<IpAddr>) -> Vec<String> {
        let mut keys = vec![self.keys.login_failures_account(account)];
        if let Some(ip) = address {
            keys.push(self.keys.login_failures_address(&ip.to_string()));
        }
        keys
    }

    /// Reserves one attempt for `account` from `address`, before its password is checked:
    /// 429 with `Retry-After` when the account must wait or the address is over its limit.
    pub async fn reserve(&self, account: &str, address: Option<IpAddr>) -> Result<(), ApiError> {
        let answer: Result<(i64, i64), Error> = RESERVE
            .run(
                &self.redis,
                self.keys_for(account, address),
                vec![
                    self.free_per_account.to_string(),
                    self.max_delay_ms.to_string(),
                    self.window_seconds.to_string(),
                    self.max_per_address.to_string(),
                ],
            )
            .await;
        match answer {
            Ok((0, _)) => Ok(()),
            Ok((_, wait)) => {
                metrics::counter!("auth_login_throttled_total").increment(1);
                Err(ApiError::too_many_requests(
                    "too many failed logins; try again later",
                    u64::try_from(wait).unwrap_or(1),
                ))
            }
            Err(e) => {
                tracing::warn!(error = %e, "login throttle unavailable; letting the login through");
                Ok(())
            }
        }
    }

    /// The reserved attempt succeeded.
    pub async fn succeeded(&self, account: &str, address: Option<IpAddr>) {
        let done: Result<i64, Error> = SUCCEEDED
            .run(
                &self.redis,
                self.keys_for(account, address),
                Vec::<String>::new(),
            )
            .await;
        if let Err(e) = done {
            tracing::warn!(error = %e, "could not clear a login's throttle");
        }
    }
}
