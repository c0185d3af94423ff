//! Failed-login throttling in Redis: a fixed window per account and per client address.
//! Once either count reaches its limit, logins for it are refused with 429 and `Retry-After`
//! (the window's remaining time) before any password is checked.
//!
//! If Redis is unreachable the throttle lets logins through (and logs it): Argon2's bounded
//! concurrency still caps the guessing rate, and a Redis outage should not lock everyone out.

use std::net::IpAddr;

use fred::prelude::*;
use shared::{keys::Keys, ApiError};

pub struct LoginThrottle {
    redis: Client,
    keys: Keys,
    max_per_account: i64,
    max_per_address: i64,
    window_seconds: i64,
}

impl LoginThrottle {
    pub fn new(
        redis: Client,
        keys: Keys,
        max_per_account: u32,
        max_per_address: u32,
        window_seconds: u64,
    ) -> Self {
        Self {
            redis,
            keys,
            max_per_account: i64::from(max_per_account),
            max_per_address: i64::from(max_per_address),
            window_seconds: i64::try_from(window_seconds).unwrap_or(i64::MAX),
        }
    }

    fn keys_for(&self, account: &str, address: Option<IpAddr>) -> Vec<(String, i64)> {
        let mut keys = vec![(
            self.keys.login_failures_account(account),
            self.max_per_account,
        )];
        if let Some(ip) = address {
            keys.push((
                self.keys.login_failures_address(&ip.to_string()),
                self.max_per_address,
            ));
        }
        keys
    }

    /// Refuses with 429 when the account or the address has failed too often.
    pub async fn check(&self, account: &str, address: Option<IpAddr>) -> Result<(), ApiError> {
        for (key, limit) in self.keys_for(account, address) {
            let count: Option<i64> = match self.redis.get(&key).await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "login throttle unavailable; letting the login through");
                    return Ok(());
                }
            };
            if count.unwrap_or(0) >= limit {
                let ttl: i64 = self.redis.ttl(&key).await.unwrap_or(self.window_seconds);
                metrics::counter!("auth_login_throttled_total").increment(1);
                return Err(ApiError::too_many_requests(
                    "too many failed logins; try again later",
                    u64::try_from(ttl).unwrap_or(1),
                ));
            }
        }
        Ok(())
    }

    /// Counts a failure against the account and the address.
    pub async fn record_failure(&self, account: &str, address: Option<IpAddr>) {
        for (key, _) in self.keys_for(account, address) {
            let counted: Result<i64, Error> = self.redis.incr(&key).await;
            match counted {
                // The first failure opens the window.
                Ok(1) => {
                    let _: Result<(), Error> =
                        self.redis.expire(&key, self.window_seconds, None).await;
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "could not record a failed login"),
            }
        }
    }

    /// A successful login clears the account's count (not the address's).
    pub async fn clear_account(&self, account: &str) {
        let _: Result<i64, Error> = self
            .redis
            .del(self.keys.login_failures_account(account))
            .await;
    }
}
