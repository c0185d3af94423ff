//! The Redis client: one multiplexed connection per process (per primary, on a cluster) that
//! reconnects by itself.
//!
//! `REDIS_URL` names the topology: `redis://` or `rediss://` one server, `redis-cluster://`
//! (or `rediss-cluster://`) a Redis Cluster through any of its nodes (more with `?node=host:port`),
//! `redis-sentinel://` a primary found through Sentinel (`?sentinelServiceName=...`). On a
//! cluster, events go out with sharded pub/sub ([`publish`]), which only the channel's shard
//! carries, instead of `PUBLISH`, which every node of a cluster copies to every other.

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

/// Publishes `bytes` on `channel`: `SPUBLISH` on a cluster, `PUBLISH` on a single server
/// (which gateways subscribe with `SUBSCRIBE`, taking many channels per command). The command
/// is queued on the connection at the future's first poll, so publishes polled in order leave
/// in order.
pub async fn publish(client: &Client, channel: &str, bytes: Vec<u8>) -> Result<i64, Error> {
    if client.is_clustered() {
        client.spublish(channel, bytes).await
    } else {
        client.publish(channel, bytes).await
    }
}

/// Waits until the client is connected, for at most `limit`.
pub async fn wait_until_ready(client: &Client, limit: Duration) -> bool {
    client.is_connected()
        || tokio::time::timeout(limit, client.wait_for_connect())
            .await
            .is_ok_and(|r| r.is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_topology_parses() {
        let single = Config::from_url("redis://127.0.0.1:6379").map(|c| c.server);
        assert!(matches!(single, Ok(ServerConfig::Centralized { .. })));
        let cluster = Config::from_url("redis-cluster://127.0.0.1:7001?node=127.0.0.1:7002")
            .map(|c| c.server);
        assert!(
            matches!(cluster, Ok(ServerConfig::Clustered { ref hosts, .. }) if hosts.len() == 2)
        );
        let sentinel =
            Config::from_url("redis-sentinel://127.0.0.1:26379?sentinelServiceName=main")
                .map(|c| c.server);
        assert!(
            matches!(sentinel, Ok(ServerConfig::Sentinel { .. })),
            "{sentinel:?}"
        );
    }
}
