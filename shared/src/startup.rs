//! What the binaries' `main` functions share.

use std::{process::ExitCode, time::Duration};

use anyhow::Context;

use crate::config::DatabaseConfig;

/// `<service> migrate`: creates the database if it does not exist yet, applies pending
/// migrations and returns.
pub async fn migrate_only(database: &DatabaseConfig) -> anyhow::Result<()> {
    use sqlx::migrate::MigrateDatabase;
    let exists = sqlx::Postgres::database_exists(&database.url)
        .await
        .context("connecting to Postgres (DATABASE_URL)")?;
    if !exists {
        sqlx::Postgres::create_database(&database.url)
            .await
            .context("creating the database named in DATABASE_URL")?;
        tracing::info!("database created");
    }
    let db = crate::db::pool(database).context("DATABASE_URL")?;
    crate::db::wait_until_ready(&db, Duration::from_secs(30))
        .await
        .context("Postgres did not answer within 30 s")?;
    crate::db::migrate(&db)
        .await
        .context("applying migrations")?;
    tracing::info!("migrations applied");
    Ok(())
}

/// Logs a fatal error as one line and maps the outcome to the process exit code.
pub fn exit_code(outcome: anyhow::Result<()>) -> ExitCode {
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "fatal");
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
