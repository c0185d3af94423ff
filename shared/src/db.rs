//! The Postgres pool and the schema migrations, which every service that uses Postgres applies at
//! start. sqlx takes an advisory lock while it migrates, so replicas starting together are safe.

use std::time::Duration;

use sqlx::{migrate::Migrator, postgres::PgPoolOptions, Connection, PgPool};

use crate::config::DatabaseConfig;

/// The migrations under `migrations/`, embedded at build time.
pub static MIGRATOR: Migrator = sqlx::migrate!("../migrations");

/// A pooled connection idle for longer than this is pinged before it is handed out.
const PING_IDLE_AFTER: Duration = Duration::from_secs(1);

/// A pool that connects on first use. Acquiring waits at most 3 s, so an outage is answered
/// with 503 quickly instead of piling requests up.
///
/// sqlx pings every connection as it goes back to the pool; by default it pings it again as it
/// is taken out, a second round trip to Postgres for every use (at one transaction per
/// message, two of a send's eight). Here only a connection idle for longer than
/// [`PING_IDLE_AFTER`] is pinged again: one that died while it sat idle (Postgres restarted,
/// the link dropped) is replaced before anyone gets it, and a busy pool pays nothing.
pub fn pool(config: &DatabaseConfig) -> Result<PgPool, sqlx::Error> {
    PgPoolOptions::new()
        .max_connections(config.max_connections)
        .acquire_timeout(Duration::from_secs(3))
        .idle_timeout(Duration::from_secs(300))
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for >= PING_IDLE_AFTER {
                    conn.ping().await?;
                }
                Ok(true)
            })
        })
        .connect_lazy(&config.url)
}

/// Waits until Postgres answers, for at most `limit`, so services can start before it does.
pub async fn wait_until_ready(pool: &PgPool, limit: Duration) -> Result<(), sqlx::Error> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match sqlx::query("SELECT 1").execute(pool).await {
            Ok(_) => return Ok(()),
            Err(e) if tokio::time::Instant::now() >= deadline => return Err(e),
            Err(e) => {
                tracing::warn!(error = %e, "waiting for Postgres");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

/// Applies every pending migration.
pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    MIGRATOR.run(pool).await
}

/// `text` with `LIKE`'s wildcards (`%`, `_`) and its escape character (`\`) escaped, so it
/// matches literally inside a pattern (`format!("{}%", like_literal(prefix))`).
pub fn like_literal(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    for c in text.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url() -> String {
        std::env::var("DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
    }

    /// A connection whose backend ended while it sat idle in the pool is replaced before it is
    /// handed out: the next query works, on a new backend.
    #[tokio::test]
    async fn a_connection_that_died_while_idle_is_replaced() {
        let pool = pool(&DatabaseConfig {
            url: url(),
            max_connections: 1,
        })
        .unwrap();
        let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(&pool)
            .await
            .unwrap();
        let mut other = sqlx::PgConnection::connect(&url()).await.unwrap();
        let ended: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
            .bind(pid)
            .fetch_one(&mut other)
            .await
            .unwrap();
        assert!(ended);
        tokio::time::sleep(PING_IDLE_AFTER + Duration::from_millis(300)).await;
        let again: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_ne!(again, pid);
    }
}
