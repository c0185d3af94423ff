//! The consumer side of the send bus: gateways `XADD` each `send_message` to the partition of its
//! conversation of the send stream ([`shared::keys::Keys::send_stream`]); one loop of the replica
//! holding that partition's lease ([`crate::partitions`]) reads it in the consumer group
//! `chat-service` and persists what it reads in batches, so a conversation's sends are
//! persisted by one writer, in stream order, and a busy partition never holds up another.
//!
//! Delivery guarantees:
//! - An entry is acknowledged (`XACK`) only after its batch's transaction has committed and its
//!   events are published, and then deleted (`XDEL`), so the stream holds only work in progress. A process that dies mid-batch leaves its entries pending; any live
//!   process claims entries idle for longer than `SEND_CLAIM_IDLE_MS` (`XAUTOCLAIM`) and persists
//!   them again.
//! - Persisting again never stores twice: every command carries a `client_id` (the gateway
//!   makes one up when the client sent none), and `(from_user_id, client_id)` is unique, so a
//!   redelivered command resolves to the stored message, whose `message` event and `ack` are sent
//!   again (gateways drop a `seq` a connection has already had).
//! - A refusal (not a member, invalid content, a value the database will not store) is final:
//!   the sender gets `error {code}` and the entry is acknowledged. One refused command never
//!   holds up the others of its batch.
//! - Only a transient failure (Postgres or Redis unavailable, a serialization failure or
//!   deadlock) leaves the batch pending; the worker backs off, waits until Postgres answers,
//!   and retries its own pending entries before reading new ones, one entry at a time, so one
//!   that keeps failing holds up only itself.
//! - An entry delivered `SEND_MAX_DELIVERIES` times without being processed is moved to the
//!   dead-letter stream ([`shared::keys::Keys::send_dead_letters`]) with a log line and
//!   `chat_send_dead_letters_total`, and never retried inline again.
//!
//! In parts: this module's loop (when to read, what to read first, backing off); `entries`,
//! what a read holds and where it is cut into batches; `batch`, one batch judged, persisted,
//! published and acknowledged; `stream`, the stream's bookkeeping (the group, claims,
//! retries of pending entries, dead letters).

mod batch;
mod entries;
mod stream;

use std::time::Duration;

use fred::prelude::*;
use shared::{keys::Keys, ApiError};
use sqlx::PgPool;
use tokio::sync::watch;
use uuid::Uuid;

use crate::{pacer::Pacer, publish::Publisher};
use batch::Kept;
use entries::entries_per_read;
pub use entries::{BATCH_FIELD, COMMAND_FIELD};

/// Settings of the send worker.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Commands per batch (`SEND_BATCH_SIZE`): entries are read and persisted whole, how many
    /// to read is set from the commands per entry of the previous read, and a read that brings
    /// more than this is persisted as several batches (an entry larger than it, alone).
    pub batch_size: u64,
    /// Entries pending this long on another consumer are taken over (`SEND_CLAIM_IDLE_MS`).
    pub claim_idle_ms: u64,
    /// The content limit in characters.
    pub max_content_chars: usize,
    /// Partitions of the send stream (`SEND_PARTITIONS`); each is persisted by one loop of the
    /// replica holding its lease (see [`crate::partitions`]), with its own Redis connection.
    pub partitions: u16,
    /// How long a replica's lease on a partition lasts unless renewed (`SEND_LEASE_MS`): the
    /// partitions of a replica that died move within it.
    pub lease: Duration,
    /// How far apart a loop's batches begin under heavy load (`SEND_BATCH_INTERVAL_MS`); under
    /// lighter load, a fraction of it or nothing; see [`Pacer`]. Zero reads again as soon as a
    /// batch is done, whatever the load.
    pub batch_interval: Duration,
    /// Deliveries after which an entry goes to the dead-letter stream (`SEND_MAX_DELIVERIES`).
    pub max_deliveries: u64,
}

pub struct SendWorker {
    db: PgPool,
    reader: Client,
    publisher: Publisher,
    keys: Keys,
    /// The partition of the send stream this loop persists.
    stream: String,
    consumer: String,
    config: WorkerConfig,
    /// Sends of deactivated accounts are refused.
    revocations: std::sync::Arc<shared::revocation::Revocations>,
    /// Queue new messages for [`crate::notify`].
    notify: bool,
    /// The quota on private chats a user starts (`PRIVATE_CHATS_PER_HOUR`).
    private_chats_per_hour: u32,
    /// Where attachments are checked.
    files: crate::attachments::Files,
    /// The connections the loop keeps between batches.
    kept: tokio::sync::Mutex<Kept>,
}

impl SendWorker {
    /// A loop persisting `partition` of the send stream. The publisher's Redis client is cloned
    /// into a connection of the worker's own, since its reads block; its keys are the worker's.
    pub fn new(
        db: PgPool,
        publisher: Publisher,
        config: WorkerConfig,
        partition: u16,
        revocations: std::sync::Arc<shared::revocation::Revocations>,
        files: crate::attachments::Files,
    ) -> Self {
        let reader = publisher.client().clone_new();
        reader.connect();
        Self {
            db,
            reader,
            keys: publisher.keys().clone(),
            stream: publisher.keys().send_stream(partition),
            publisher,
            consumer: format!("chat-{}", Uuid::new_v4().simple()),
            config,
            revocations,
            notify: false,
            private_chats_per_hour: crate::config::Quotas::default().private_chats_per_hour,
            files,
            kept: tokio::sync::Mutex::default(),
        }
    }

    /// Queues the new messages of each batch for the webhook notifier.
    pub fn notifying(mut self, on: bool) -> Self {
        self.notify = on;
        self
    }

    /// The quota on private chats a user starts (`PRIVATE_CHATS_PER_HOUR`).
    pub fn private_chats_per_hour(mut self, per_hour: u32) -> Self {
        self.private_chats_per_hour = per_hour;
        self
    }

    /// Runs until `shutdown` turns true; a batch under way is finished first.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        tracing::info!(consumer = %self.consumer, stream = %self.stream, "send worker started");
        let mut backoff = Duration::from_millis(200);
        let mut own_pending_first = true;
        // Whether this loop's pending entries failed (rather than were claimed): then they
        // are retried one entry at a time.
        let mut failed = false;
        // The group is created once, and again after any failure (Redis may have lost it).
        let mut group_ready = false;
        let mut last_claim = tokio::time::Instant::now();
        // The loop holds its partition's lease: what the group has pending is a previous
        // holder's, which died (or stalled past its lease). Taken over at once, before any new
        // entry, so the partition's entries are persisted in stream order.
        let mut taking_over = true;
        // Entries to read at once: `SEND_BATCH_SIZE` commands' worth, as far as the last read
        // tells how many commands an entry holds.
        let mut count = self.config.batch_size.max(1);
        // When this loop's last batch began, if it had work, and whether its read came back
        // full: then the loop may wait (see `Pacer`) before reading again; otherwise
        // it reads (blocking) at once.
        let mut last_batch: Option<(tokio::time::Instant, bool)> = None;
        let mut pacer = Pacer::new(self.config.batch_interval);
        while !*shutdown.borrow() {
            if let Some((began, full)) = last_batch.take() {
                let slot = pacer.next_read(began, full);
                if slot > tokio::time::Instant::now() {
                    tokio::select! {
                        _ = tokio::time::sleep_until(slot) => {}
                        _ = shutdown.changed() => break,
                    }
                }
            }
            let step = async {
                if !group_ready {
                    self.ensure_group().await.map_err(ApiError::from)?;
                    group_ready = true;
                }
                if taking_over
                    || last_claim.elapsed()
                        >= Duration::from_millis(self.config.claim_idle_ms / 2)
                            .max(Duration::from_millis(500))
                {
                    last_claim = tokio::time::Instant::now();
                    let idle = if taking_over {
                        0
                    } else {
                        self.config.claim_idle_ms
                    };
                    if self.claim_abandoned(idle).await? > 0 {
                        own_pending_first = true;
                    }
                    taking_over = false;
                }
                // After a failure or a claim, this consumer's own pending entries ("0") come
                // before new ones (">").
                if own_pending_first {
                    let started = tokio::time::Instant::now();
                    let (read, commands) = self.retry_pending(count, failed).await?;
                    if read == 0 {
                        own_pending_first = false;
                        failed = false;
                    }
                    return Ok::<_, ApiError>((read, commands, started));
                }
                let entries = self.read(">", count).await?;
                let started = tokio::time::Instant::now();
                let read = entries.len();
                let commands = self.process(entries).await?;
                Ok::<_, ApiError>((read, commands, started))
            };
            let outcome = tokio::select! {
                r = step => r,
                _ = shutdown.changed() => break,
            };
            match outcome {
                Ok((read, commands, started)) => {
                    backoff = Duration::from_millis(200);
                    if read > 0 && !self.config.batch_interval.is_zero() {
                        pacer.began(started, commands);
                        last_batch = Some((started, read as u64 >= count));
                    }
                    count =
                        entries_per_read(self.config.batch_size, read, commands).unwrap_or(count);
                }
                Err(e) => {
                    metrics::counter!("chat_send_batch_failures_total").increment(1);
                    own_pending_first = true;
                    failed = true;
                    group_ready = false;
                    tracing::warn!(error = %e, "send worker: batch failed, will retry");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = shutdown.changed() => break,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    // Every read of a pending entry counts as a delivery towards the dead
                    // letter: while Postgres does not answer at all, the entries are not read.
                    while sqlx::query("SELECT 1").execute(&self.db).await.is_err() {
                        tracing::warn!("send worker: waiting for Postgres");
                        tokio::select! {
                            _ = tokio::time::sleep(backoff) => {}
                            _ = shutdown.changed() => break,
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                    }
                }
            }
        }
        tracing::info!(stream = %self.stream, "send worker stopped");
        let _ = self.reader.quit().await;
    }
}
