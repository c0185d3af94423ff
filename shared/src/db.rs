//! The Postgres pool and the schema migrations, which every service that uses Postgres applies at
//! start. sqlx takes an advisory lock while it migrates, so replicas starting together are safe.

use std::time::Duration;

use sqlx::{migrate::Migrator, postgres::PgPoolOptions, Connection, PgPool};

use crate::config::DatabaseConfig;

/// The migrations under `migrations/`, embedded at build time.
pub static MIGRATOR: Migrator = sqlx::migrate!("../migrations");

/// A pooled connection idle for longer than this is pinged before it is handed out.
pub const PING_IDLE_AFTER: Duration = Duration::from_secs(1);

/// A pool that connects on first use. Acquiring waits at most 3 s, so an outage is answered
/// with 503 quickly instead of piling requests up.
///
/// sqlx pings every connection as it goes back to the pool; by default it pings it again as it
/// is taken out, a second round trip to Postgres for every use (at one transaction per
/// message, two of a send's eight). Here only a connection idle for longer than
/// [`PING_IDLE_AFTER`] is pinged again: one that died while it sat idle (Postgres restarted,
/// the link dropped) is replaced before anyone gets it, and a busy pool pays nothing.
pub fn pool(config: &DatabaseConfig) -> Result<PgPool, sqlx::Error> {
    pool_options(config.max_connections).connect_lazy(&config.url)
}

/// A second pool to `pool`'s database, of at most `max_connections`, whose connections plan
/// each prepared statement once, generically (`plan_cache_mode = force_generic_plan`), for a
/// path that runs the same few statements many times a second.
///
/// By default Postgres plans a prepared statement afresh at every execution while a generic
/// plan looks costlier than the custom plans it has made so far, and for statements whose
/// parameters are arrays (a batch's targets, a batch's rows) its estimate of the generic plan
/// is no guide: on the send path the target lookup was planned afresh for every batch (0.16 ms
/// of Postgres CPU, executing took 0.03), and the insert went the same way once the tables had
/// grown (0.39 ms planning, 0.22 executing). The other pool keeps the default, for queries
/// whose best plan does depend on their parameters (search, history pages).
pub fn generic_plan_pool(pool: &PgPool, max_connections: u32) -> PgPool {
    let options = (*pool.connect_options())
        .clone()
        .options([("plan_cache_mode", "force_generic_plan")]);
    pool_options(max_connections).connect_lazy_with(options)
}

fn pool_options(max_connections: u32) -> PgPoolOptions {
    PgPoolOptions::new()
        .max_connections(max_connections)
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

    /// The same statement, run again and again: planned afresh at first on the default pool,
    /// once and generically on the generic-plan pool.
    #[tokio::test]
    async fn the_generic_plan_pool_plans_a_statement_once() {
        const STATEMENT: &str = "SELECT count(*) FROM pg_class WHERE oid = ANY($1)";
        let default = pool(&DatabaseConfig {
            url: url(),
            max_connections: 1,
        })
        .unwrap();
        let generic = generic_plan_pool(&default, 1);
        let mut plans = Vec::new();
        for pool in [&default, &generic] {
            for i in 0..10u32 {
                let _: i64 = sqlx::query_scalar(STATEMENT)
                    .bind(vec![sqlx::postgres::types::Oid(i)])
                    .fetch_one(pool)
                    .await
                    .unwrap();
            }
            let (generic_plans, custom_plans): (i64, i64) = sqlx::query_as(
                "SELECT generic_plans, custom_plans FROM pg_prepared_statements \
                 WHERE statement = $1",
            )
            .bind(STATEMENT)
            .fetch_one(pool)
            .await
            .unwrap();
            plans.push((generic_plans, custom_plans));
        }
        assert!(plans[0].1 >= 5, "the default pool: {:?}", plans[0]);
        assert_eq!(plans[1], (10, 0), "the generic-plan pool");
    }
}
