//! Keeping the search index's upkeep off the send path.
//!
//! New messages go to the search index's pending list (GIN `fastupdate`), which is cheap per
//! row; the insert that finds the list past `gin_pending_list_limit` (4 MB by default, about
//! 100k messages) merges the whole list into the index itself, inside its own statement. On
//! the send path that is one batch stalled for as long as the merge takes, and every send
//! queued behind it: at 200k deliveries/s a merge of the full list took about 200 ms and made
//! the p99 180 ms (2026-12-05). Autovacuum also merges it, when it happens to run.
//!
//! [`flush_loop`] merges the list every [`FLUSH_EVERY`] instead, from its own task, so it never
//! grows to the limit under any send rate the stack sustains. An insert that does reach the
//! limit while a merge is under way skips its own (Postgres lets one merge run at a time).

use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::watch;

/// How often the pending list is merged: at 3,000 messages/s it holds a few hundred kB by then.
pub const FLUSH_EVERY: Duration = Duration::from_secs(2);

/// Merges the search index's pending list into the index; the number of pending pages merged,
/// or `None` when the index does not exist (it can be dropped and built again, as
/// `scripts/bench` does).
pub async fn flush(db: &PgPool) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT gin_clean_pending_list(i) FROM (SELECT to_regclass('messages_search_idx') AS i) s
         WHERE i IS NOT NULL",
    )
    .fetch_optional(db)
    .await
}

/// Runs [`flush`] every `every` until `shutdown`.
pub async fn flush_loop(db: PgPool, every: Duration, mut shutdown: watch::Receiver<bool>) {
    let mut warned = false;
    while !*shutdown.borrow() {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.changed() => break,
        }
        match flush(&db).await {
            Ok(pages) => {
                metrics::counter!("chat_search_index_pages_merged_total")
                    .increment(u64::try_from(pages.unwrap_or(0)).unwrap_or(0));
                warned = false;
            }
            // The process is stopping.
            Err(sqlx::Error::PoolClosed) => break,
            // Once per outage, not every two seconds of it.
            Err(e) if !warned => {
                tracing::warn!(error = %e, "could not merge the search index's pending list");
                warned = true;
            }
            Err(e) => {
                tracing::debug!(error = %e, "could not merge the search index's pending list")
            }
        }
    }
}
