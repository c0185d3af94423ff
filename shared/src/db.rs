//! The Postgres pool and the schema migrations, which every service that uses Postgres applies at
//! start. sqlx takes an advisory lock while it migrates, so replicas starting together are safe.

use std::time::Duration;

use sqlx::{migrate::Migrator, postgres::PgPoolOptions, PgPool};

use crate::config::DatabaseConfig;

/// The migrations under `migrations/`, embedded at build time.
pub static MIGRATOR: Migrator = sqlx::migrate!("../migrations");

/// A pool that connects on first use. Acquiring waits at most 3 s, so an outage is answered
/// with 503 quickly instead of piling requests up.
pub fn pool(config: &DatabaseConfig) -> Result<PgPool, sqlx::Error> {
    PgPoolOptions::new()
        .max_connections(config.max_connections)
        .acquire_timeout(Duration::from_secs(3))
        .idle_timeout(Duration::from_secs(300))
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
