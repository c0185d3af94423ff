//! The Redis client: one multiplexed connection per process that reconnects by itself.

use std::time::Duration;

use fred::prelude::*;

use crate::config::RedisConfig;

/// Builds a client and starts connecting in the background; commands issued while Redis is
/// unreachable fail after a short timeout (callers answer 503) instead of hanging.
pub fn connect(config: &RedisConfig) -> Result<Client, Error> {
    let client = Builder::from_config(Config::from_url(&config.url)?)
        .with_connection_config(|c| {
            c.connection_timeout = Duration::from_secs(2);
            c.internal_command_timeout = Duration::from_secs(2);
            c.max_command_attempts = 2;
            c.tcp = TcpConfig {
                nodelay: Some(true),
                ..Default::default()
            };
        })
        .with_performance_config(|c| {
            c.default_command_timeout = Duration::from_secs(2);
        })
        // Retry for ever, backing off from 100 ms to 2 s.
        .set_policy(ReconnectPolicy::new_exponential(0, 100, 2_000, 2))
        .build()?;
    client.connect();
    Ok(client)
}

/// Waits until the client is connected, for at most `limit`.
pub async fn wait_until_ready(client: &Client, limit: Duration) -> bool {
    client.is_connected()
        || tokio::time::timeout(limit, client.wait_for_connect())
            .await
            .is_ok_and(|r| r.is_ok())
}
