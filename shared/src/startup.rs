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
    migrated_pool(database).await?;
    tracing::info!("migrations applied");
    Ok(())
}

/// A pool on `DATABASE_URL` once Postgres answers (waiting up to 30 s, so services may start
/// before it) and every pending migration is applied.
pub async fn migrated_pool(database: &DatabaseConfig) -> anyhow::Result<sqlx::PgPool> {
    let db = crate::db::pool(database).context("DATABASE_URL")?;
    crate::db::wait_until_ready(&db, Duration::from_secs(30))
        .await
        .context("Postgres did not answer within 30 s")?;
    crate::db::migrate(&db)
        .await
        .context("applying migrations")?;
    Ok(db)
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

/// `<service> health`: asks the service on this machine's `port` for `/health`; for container
/// health checks, which then need no curl in the image.
pub async fn probe(port: u16) -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let attempt = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        stream
            .write_all(b"GET /health HTTP/1.0\r\nHost: localhost\r\n\r\n")
            .await?;
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).await?;
        anyhow::Ok(head)
    };
    let head = tokio::time::timeout(Duration::from_secs(3), attempt)
        .await
        .context("no answer within 3 s")??;
    anyhow::ensure!(
        head.ends_with(b"200"),
        "unhealthy: {}",
        String::from_utf8_lossy(&head)
    );
    Ok(())
}
