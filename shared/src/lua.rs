//! Lua scripts run on Redis by their SHA-1 (`EVALSHA`), so a call carries the script's hash,
//! not its body, and Redis does not hash the body again on every call. A server that does not
//! know the script yet (just started, flushed, a replica promoted in a cluster) answers
//! `NOSCRIPT`; the call is then sent once more as `EVAL` with the body, which also teaches the
//! server the script for the calls after it.

use std::sync::OnceLock;

use fred::{
    prelude::*,
    types::{FromValue, MultipleKeys, Value},
};
use sha1::{Digest, Sha1};

/// A Lua script; declare it as a `static` and call [`Script::run`].
pub struct Script {
    body: &'static str,
    sha: OnceLock<String>,
}

impl Script {
    pub const fn new(body: &'static str) -> Self {
        Self {
            body,
            sha: OnceLock::new(),
        }
    }

    /// The script's SHA-1 in hex, as Redis names it.
    pub fn sha(&self) -> &str {
        self.sha.get_or_init(|| {
            Sha1::digest(self.body.as_bytes())
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect()
        })
    }

    /// Runs the script with `keys` and `args`: by hash, or with its body when the server does
    /// not know it.
    pub async fn run<R: FromValue>(
        &self,
        redis: &Client,
        keys: Vec<String>,
        args: Vec<String>,
    ) -> Result<R, Error> {
        // Cheap to clone (shared buffers): a retry with the body reuses them.
        let keys = MultipleKeys::from(keys);
        let args = Value::Array(args.into_iter().map(Value::from).collect());
        match redis.evalsha(self.sha(), keys.clone(), args.clone()).await {
            Err(e) if e.details().starts_with("NOSCRIPT") => {
                redis.eval(self.body, keys, args).await
            }
            answer => answer,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn client() -> Client {
        let config = crate::config::RedisConfig {
            url: std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into()),
            prefix: "test:".into(),
        };
        let client = crate::redis::connect(&config).unwrap();
        client.wait_for_connect().await.unwrap();
        client
    }

    #[test]
    fn the_hash_is_the_bodys_sha1_in_hex() {
        // What `SCRIPT LOAD "return 'hello moon'"` answers.
        let script = Script::new("return 'hello moon'");
        assert_eq!(script.sha(), "8e3d8cfcbb6571ecf555cc0a7d6fb950b4437dc6");
    }

    #[tokio::test]
    async fn an_unknown_script_runs_with_its_body_then_by_its_hash() {
        // A body no server has seen: a fresh id in a comment.
        let body: &'static str = Box::leak(
            format!("-- {}\nreturn ARGV[1] .. KEYS[1]", uuid::Uuid::new_v4()).into_boxed_str(),
        );
        let script = Script::new(body);
        let redis = client().await;
        let key = format!("test:lua:{}", uuid::Uuid::new_v4());
        // By hash alone it is unknown (on a cluster: on the key's node).
        let unknown: Result<String, Error> = redis
            .evalsha(script.sha(), vec![key.clone()], vec!["?"])
            .await;
        assert!(unknown.unwrap_err().details().starts_with("NOSCRIPT"));

        let first: String = script
            .run(&redis, vec![key.clone()], vec!["a-".into()])
            .await
            .unwrap();
        assert_eq!(first, format!("a-{key}"));
        // The body taught the server the script, under the hash computed here.
        let by_hash: String = redis
            .evalsha(script.sha(), vec![key.clone()], vec!["b-"])
            .await
            .unwrap();
        assert_eq!(by_hash, format!("b-{key}"));
        let second: String = script
            .run(&redis, vec![key.clone()], vec!["c-".into()])
            .await
            .unwrap();
        assert_eq!(second, format!("c-{key}"));
    }
}
