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

mod entries;

use std::{collections::HashMap, time::Duration};

use fred::prelude::*;
use shared::{
    chat::{ChatType, Event, SendCommand},
    keys::Keys,
    ApiError,
};
use sqlx::{pool::PoolConnection, PgPool, Postgres};
use tokio::sync::watch;
use tracing::Instrument;
use uuid::Uuid;

use crate::{
    conversation::{self, Conversation},
    pacer::Pacer,
    pipeline::{self, check_send, Draft, Outcome},
    publish::{PublishTurn, Publisher},
};
use entries::{batch_ends, decode_entry, entries_per_read, parse_read, StreamEntry};
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

/// A target resolved once per batch: the conversation, or why sends to it are refused.
type Resolution = Result<Conversation, Refusal>;

/// Why a send was refused, as its sender is told (an `error` frame with its `client_id`).
#[derive(Debug, Clone)]
struct Refusal {
    code: &'static str,
    detail: String,
    /// With `rate_limited` (a quota): how long until the send can succeed.
    retry_after_ms: Option<u64>,
}

impl Refusal {
    fn new(code: &'static str, detail: impl Into<String>) -> Self {
        Self {
            code,
            detail: detail.into(),
            retry_after_ms: None,
        }
    }

    /// The refusal an error of a check or a lookup amounts to (its fields, when it names
    /// them, as the detail).
    fn of(e: &ApiError) -> Self {
        let detail = match &e.fields {
            Some(fields) => fields
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join("; "),
            None => e.detail.clone(),
        };
        let code = e.ws_code();
        Self {
            code,
            detail,
            retry_after_ms: e
                .retry_after
                .filter(|_| code == "rate_limited")
                .map(|secs| secs.saturating_mul(1000)),
        }
    }
}

/// What a command came to. Most are `Stored`, so the variants' sizes differing is the common
/// case, not waste; boxing the message would cost an allocation per stored send.
#[allow(clippy::large_enum_variant)]
enum Verdict {
    /// Persisted (now or before).
    Stored(Outcome, Conversation),
    /// Refused: tell the sender.
    Refused(Refusal),
    /// Not decodable: nobody to tell.
    Garbage,
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

    async fn ensure_group(&self) -> Result<(), Error> {
        let created: Result<(), Error> = self
            .reader
            .xgroup_create(self.stream.clone(), self.keys.send_group(), "0", true)
            .await;
        match created {
            Err(e) if !e.details().contains("BUSYGROUP") => Err(e),
            _ => Ok(()),
        }
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

    async fn read(&self, from: &str, count: u64) -> Result<Vec<StreamEntry>, ApiError> {
        let block = if from == ">" { Some(1000) } else { None };
        let response: Value = self
            .reader
            .xreadgroup(
                self.keys.send_group(),
                &self.consumer,
                Some(count),
                block,
                false,
                self.stream.clone(),
                from,
            )
            .await?;
        Ok(parse_read(response))
    }

    /// Takes over entries another consumer left pending for `min_idle_ms` (it probably died),
    /// all of them (page after page); they are this consumer's pending entries now, which it
    /// processes next. Returns how many.
    async fn claim_abandoned(&self, min_idle_ms: u64) -> Result<usize, ApiError> {
        let mut cursor = "0-0".to_owned();
        let mut claimed = 0;
        loop {
            let response: Value = self
                .reader
                .xautoclaim(
                    self.stream.clone(),
                    self.keys.send_group(),
                    &self.consumer,
                    min_idle_ms,
                    cursor.as_str(),
                    Some(self.config.batch_size),
                    true,
                )
                .await?;
            let Value::Array(parts) = response else {
                break;
            };
            let mut parts = parts.into_iter();
            let next = parts.next().and_then(|v| v.as_string());
            if let Some(Value::Array(ids)) = parts.next() {
                claimed += ids.len();
            }
            match next {
                Some(next) if next != "0-0" => cursor = next,
                _ => break,
            }
        }
        if claimed > 0 {
            metrics::counter!("chat_send_entries_claimed_total").increment(claimed as u64);
            tracing::info!(count = claimed, "claimed abandoned send entries");
        }
        Ok(claimed)
    }

    /// This consumer's pending entries, at most `count`, with how often each was delivered.
    async fn own_pending(&self, count: u64) -> Result<Vec<(String, u64)>, ApiError> {
        let rows: Vec<(String, String, u64, u64)> = self
            .reader
            .xpending(
                self.stream.clone(),
                self.keys.send_group(),
                ("-", "+", count, self.consumer.as_str()),
            )
            .await?;
        Ok(rows
            .into_iter()
            .map(|(id, _, _, deliveries)| (id, deliveries))
            .collect())
    }

    /// Processes this consumer's pending entries again (after a failure or a claim): those
    /// delivered `max_deliveries` times go to the dead letters; the rest are read again and
    /// processed, as a batch when they were claimed, one entry at a time after a failure, so
    /// an entry that keeps failing holds up only itself. Returns the entries read and the
    /// commands they held; zero entries when nothing is pending.
    async fn retry_pending(&self, count: u64, isolate: bool) -> Result<(usize, usize), ApiError> {
        let pending = self.own_pending(count).await?;
        if pending.is_empty() {
            return Ok((0, 0));
        }
        let (exhausted, retry): (Vec<_>, Vec<_>) = pending
            .into_iter()
            .partition(|(_, deliveries)| *deliveries >= self.config.max_deliveries);
        for (id, deliveries) in &exhausted {
            self.dead_letter(id, *deliveries).await?;
        }
        if retry.is_empty() {
            return Ok((exhausted.len(), 0));
        }
        let entries = self.read("0", count).await?;
        let read = entries.len().max(exhausted.len());
        if !isolate {
            return Ok((read, self.process(entries).await?));
        }
        let mut commands = 0;
        let mut failed = None;
        for entry in entries {
            match self.process(vec![entry]).await {
                Ok(n) => commands += n,
                Err(e) => failed = Some(e),
            }
        }
        match failed {
            Some(e) => Err(e),
            None => Ok((read, commands)),
        }
    }

    /// Moves one entry to the dead-letter stream: its fields as they were, plus `entry` (its
    /// id), `deliveries` and `consumer`; then acknowledges and deletes it.
    async fn dead_letter(&self, id: &str, deliveries: u64) -> Result<(), ApiError> {
        let stream = self.stream.clone();
        let found: Vec<StreamEntry> = self.reader.xrange(&stream, id, id, Some(1)).await?;
        let mut fields: Vec<(String, Vec<u8>)> = found
            .into_iter()
            .next()
            .map(|(_, f)| f.into_iter().collect())
            .unwrap_or_default();
        fields.push(("entry".into(), id.as_bytes().to_vec()));
        fields.push(("deliveries".into(), deliveries.to_string().into_bytes()));
        fields.push(("consumer".into(), self.consumer.clone().into_bytes()));
        let _: String = self
            .reader
            .xadd(self.keys.send_dead_letters(), false, None, "*", fields)
            .await?;
        let _: i64 = self
            .reader
            .xack(&stream, self.keys.send_group(), id)
            .await?;
        let _: i64 = self.reader.xdel(&stream, id).await?;
        metrics::counter!("chat_send_dead_letters_total").increment(1);
        tracing::error!(
            entry = %id,
            deliveries,
            dead_letters = %self.keys.send_dead_letters(),
            "a send entry kept failing and was moved to the dead letters"
        );
        Ok(())
    }

    /// Persists the entries read, publishes their events, then acknowledges them, as batches
    /// of about `SEND_BATCH_SIZE` commands one after the other (see [`batch_ends`]); returns how
    /// many commands the entries held. An error leaves its batch and the ones after it pending.
    pub async fn process(&self, entries: Vec<StreamEntry>) -> Result<usize, ApiError> {
        let decoded: Vec<Vec<Option<SendCommand>>> = entries
            .iter()
            .map(|(id, fields)| decode_entry(id, fields))
            .collect();
        let sizes: Vec<usize> = decoded.iter().map(Vec::len).collect();
        let mut entries = entries.into_iter();
        let mut decoded = decoded.into_iter();
        let mut start = 0;
        let mut total = 0;
        for end in batch_ends(&sizes, self.config.batch_size as usize) {
            let batch: Vec<StreamEntry> = entries.by_ref().take(end - start).collect();
            let commands: Vec<Option<SendCommand>> =
                decoded.by_ref().take(end - start).flatten().collect();
            start = end;
            let span = batch_span(&commands);
            total += self
                .process_commands(batch, commands)
                .instrument(span)
                .await?;
        }
        Ok(total)
    }

    async fn process_commands(
        &self,
        entries: Vec<StreamEntry>,
        commands: Vec<Option<SendCommand>>,
    ) -> Result<usize, ApiError> {
        let started = std::time::Instant::now();
        let (verdicts, turn) = self.judge(&commands).await?;
        // The batch's trace, for the events of the command that began it; every other command's
        // events continue the trace of its own frame (the batch links to them).
        let batch_trace = shared::telemetry::traceparent(&tracing::Span::current());
        let mut batch_trace_taken = false;
        let mut trace_of = |command: &SendCommand| match &command.traceparent {
            Some(own) if batch_trace_taken => Some(own.clone()),
            Some(_) => {
                batch_trace_taken = true;
                batch_trace.clone()
            }
            None => None,
        };
        // The batch's events, grouped into one publish per channel (a conversation's messages
        // in seq order), all sent pipelined.
        let mut events: Vec<(String, Event)> = Vec::with_capacity(commands.len() * 2);
        let published_at_us = shared::chat::now_us();
        for (command, verdict) in commands.iter().zip(&verdicts) {
            let Some(command) = command else { continue };
            let traceparent = trace_of(command);
            match verdict {
                Verdict::Stored(outcome, conversation) => {
                    let m = outcome.message();
                    // Sent again for redeliveries too: the first attempt may have died before
                    // publishing. Gateways drop a seq a connection already has.
                    let message = Event::Message {
                        conversation_id: conversation.id,
                        message: m.clone(),
                        published_at_us,
                        traceparent: traceparent.clone(),
                    };
                    for channel in self.publisher.message_channels(m, conversation.id) {
                        events.push((channel, message.clone()));
                    }
                    let ack = Event::Ack {
                        session_id: command.session_id.clone(),
                        client_id: command.client_id.clone(),
                        message: m.clone(),
                        traceparent,
                    };
                    events.push((self.keys.user_channel(command.user_id), ack));
                }
                Verdict::Refused(refusal) => {
                    let failed = Event::SendFailed {
                        session_id: command.session_id.clone(),
                        client_id: command.client_id.clone(),
                        code: refusal.code.to_owned(),
                        detail: refusal.detail.clone(),
                        retry_after_ms: refusal.retry_after_ms,
                    };
                    events.push((self.keys.user_channel(command.user_id), failed));
                }
                Verdict::Garbage => {}
            }
        }
        let publishing = std::time::Instant::now();
        let payloads = match shared::chat::batch_by_channel(events) {
            Ok(payloads) => payloads,
            // Not expected (every event encodes); gateways repair missing messages from history.
            Err(e) => {
                tracing::error!(error = %e, "could not encode a batch's events");
                Vec::new()
            }
        };
        let ids: Vec<String> = entries.into_iter().map(|(id, _)| id).collect();
        let count = ids.len() as u64;
        // Done with for good (chat-service is the stream's only group): acknowledge and delete
        // the entries on the publishing connection, queued right behind the batch's `PUBLISH`es:
        // Redis runs one connection's commands in order, so the entries are acknowledged only
        // after the events are published, and no round trip is spent waiting in between. The
        // stream stays as short as the work in progress. The delete is best effort: a failure
        // leaves entries that are acknowledged, harmless, and deleted by nobody.
        let redis = self.publisher.client();
        let stream = self.stream.clone();
        let acking = futures_util::future::join(
            redis.xack::<i64, _, _, _>(&stream, self.keys.send_group(), ids.clone()),
            redis.xdel::<i64, _, _>(&stream, ids),
        );
        // `join` polls the publishing first: its first poll queues every `PUBLISH`.
        // New messages that may need a push, queued for the notifier on the same connection
        // (not redeliveries: the first delivery queued them).
        let notifiable: Vec<&shared::chat::Message> = if self.notify {
            verdicts
                .iter()
                .filter_map(|v| match v {
                    Verdict::Stored(Outcome::Created(m), _) => Some(m),
                    _ => None,
                })
                .collect()
        } else {
            Vec::new()
        };
        // Thumbnails of new image attachments, after the send.
        let images: Vec<Uuid> = verdicts
            .iter()
            .filter_map(|v| match v {
                Verdict::Stored(Outcome::Created(m), _) => m
                    .attachment
                    .as_ref()
                    .filter(|a| a.content_type.starts_with("image/"))
                    .map(|a| a.id),
                _ => None,
            })
            .collect();
        if !images.is_empty() {
            crate::attachments::thumbnails_later(self.db.clone(), self.files.clone(), images);
        }
        let ((), (acked, deleted), ()) = futures_util::future::join3(
            self.publisher.publish_all_then_release(&payloads, turn),
            acking,
            crate::notify::enqueue(redis, &self.keys, &notifiable),
        )
        .await;
        stage("publish", publishing);
        acked?;
        if let Err(e) = deleted {
            tracing::debug!(error = %e, "could not delete processed send entries");
        }
        metrics::counter!("chat_send_entries_processed_total").increment(count);
        metrics::histogram!("chat_send_batch_duration_seconds")
            .record(started.elapsed().as_secs_f64());
        Ok(commands.len())
    }

    /// Validates, authorizes and persists the commands. Transient failures are errors (the
    /// batch is retried); refusals are verdicts.
    async fn judge(
        &self,
        commands: &[Option<SendCommand>],
    ) -> Result<(Vec<Verdict>, Option<PublishTurn>), ApiError> {
        let mut verdicts: Vec<Option<Verdict>> = commands.iter().map(|_| None).collect();
        // Validate, then resolve every distinct target of the batch at once.
        let mut targets: Vec<(Uuid, ChatType, Uuid)> = Vec::new();
        for (i, command) in commands.iter().enumerate() {
            let Some(c) = command else {
                verdicts[i] = Some(Verdict::Garbage);
                continue;
            };
            if let Some(shared::revocation::Revocation::Account { .. }) =
                self.revocations.check(c.user_id, uuid::Uuid::nil())
            {
                verdicts[i] = Some(Verdict::Refused(Refusal::new(
                    "forbidden",
                    "the account is deactivated",
                )));
                continue;
            }
            if let Err(e) = check_send(
                &c.content,
                c.message_type,
                c.attachment_id.is_some(),
                Some(&c.client_id),
                self.config.max_content_chars,
            ) {
                verdicts[i] = Some(Verdict::Refused(Refusal::of(&e)));
                continue;
            }
            targets.push((c.user_id, c.chat_type, c.chat_id));
        }
        targets.sort_unstable_by_key(|(u, t, c)| (*u, t.as_db(), *c));
        targets.dedup();
        let mut resolved: HashMap<(Uuid, ChatType, Uuid), Resolution> = HashMap::new();
        let resolving = std::time::Instant::now();
        // The loop's connections (see `Kept`); on an error they go back to the pool.
        let mut kept = self.kept.lock().await;
        let (lookup, writer) = (kept.lookup.take(), kept.writer.take());
        let (mut lookup, mut writer) =
            tokio::try_join!(ready(&self.db, lookup), ready(&self.db, writer))?;
        let new_chats = conversation::NewPrivateChats {
            redis: self.publisher.client(),
            keys: &self.keys,
            per_hour: self.private_chats_per_hour,
        };
        let resolutions =
            conversation::for_sending_many(&mut lookup, &self.db, new_chats, &targets)
                .instrument(db_span("resolve targets", targets.len()))
                .await;
        let resolutions = match resolutions {
            Ok(r) => r,
            Err(e) if e.is_transient() => return Err(e),
            // Refused for good (not expected: a failure of the lookup itself): every target.
            Err(e) => targets
                .iter()
                .map(|_| Err(ApiError::new(e.status, e.code, e.detail.clone())))
                .collect(),
        };
        stage("resolve", resolving);
        for (target, result) in targets.iter().zip(resolutions) {
            let r = match result {
                Ok(conv) => Ok(conv),
                Err(e) if e.is_transient() => return Err(e),
                Err(e) => Err(Refusal::of(&e)),
            };
            resolved.insert(*target, r);
        }
        let mut drafts = Vec::new();
        let mut draft_of = Vec::new();
        for (i, command) in commands.iter().enumerate() {
            let Some(c) = command else { continue };
            if verdicts[i].is_some() {
                continue;
            }
            match resolved.get(&(c.user_id, c.chat_type, c.chat_id)) {
                Some(Ok(conversation)) => {
                    // Attachments are rare: checked one by one (the stored object included).
                    let attachment = match c.attachment_id {
                        None => None,
                        Some(id) => match crate::attachments::check_for_message(
                            &self.db,
                            &self.files,
                            c.user_id,
                            id,
                            c.message_type,
                            Some(&c.client_id),
                        )
                        .await
                        {
                            Ok(a) => Some(a),
                            Err(e) if e.is_transient() => return Err(e),
                            Err(e) => {
                                verdicts[i] = Some(Verdict::Refused(Refusal::of(&e)));
                                continue;
                            }
                        },
                    };
                    draft_of.push(i);
                    drafts.push(Draft {
                        sender: c.user_id,
                        conversation: *conversation,
                        client_id: Some(c.client_id.clone()),
                        content: c.content.clone(),
                        message_type: c.message_type,
                        reply_to_id: c.reply_to_id,
                        attachment,
                    });
                }
                Some(Err(refusal)) => {
                    verdicts[i] = Some(Verdict::Refused(refusal.clone()));
                }
                None => {
                    verdicts[i] = Some(Verdict::Refused(Refusal::new(
                        "invalid_payload",
                        "unresolved target",
                    )))
                }
            }
        }
        let mut turn = None;
        if !drafts.is_empty() {
            let writing = std::time::Instant::now();
            let persisted =
                match pipeline::persist_on(&self.db, Some(&mut writer), &self.publisher, &drafts)
                    .instrument(db_span("insert messages", drafts.len()))
                    .await
                {
                    Ok(p) => p,
                    Err(e) if e.is_transient() => return Err(e),
                    // Not expected (refusals come per draft): refuse the batch, never retry it.
                    Err(e) => pipeline::Persisted {
                        results: drafts
                            .iter()
                            .map(|_| Err(ApiError::new(e.status, e.code, e.detail.clone())))
                            .collect(),
                        turn: None,
                    },
                };
            stage("write", writing);
            turn = persisted.turn;
            for ((i, result), draft) in draft_of.into_iter().zip(persisted.results).zip(&drafts) {
                verdicts[i] = Some(match result {
                    Ok(outcome) => Verdict::Stored(outcome, draft.conversation),
                    Err(e) if e.is_transient() => return Err(e),
                    Err(e) => Verdict::Refused(Refusal::of(&e)),
                });
            }
        }
        let now = tokio::time::Instant::now();
        *kept = Kept {
            lookup: Some((lookup, now)),
            writer: Some((writer, now)),
        };
        let verdicts = verdicts
            .into_iter()
            .map(|v| v.unwrap_or(Verdict::Garbage))
            .collect();
        Ok((verdicts, turn))
    }
}

/// The two connections a send loop keeps from one batch to the next, each with when it was
/// last used: one for the targets' lookup, one to write on. sqlx checks a connection with a
/// round trip to Postgres each time it goes back to the pool: at one batch per message (light
/// load) that was two of a send's four. A kept connection idle for
/// [`shared::db::PING_IDLE_AFTER`] is checked before use, as the pool would; a batch that fails
/// gives both back to the pool, which closes a broken one. The pool holds a third per loop for
/// a batch's other queries (mentions, duplicates, attachments, private chats).
#[derive(Default)]
struct Kept {
    lookup: Option<(PoolConnection<Postgres>, tokio::time::Instant)>,
    writer: Option<(PoolConnection<Postgres>, tokio::time::Instant)>,
}

/// The kept connection, checked first if it has been idle; else (or if the check fails) one
/// from the pool.
async fn ready(
    db: &PgPool,
    kept: Option<(PoolConnection<Postgres>, tokio::time::Instant)>,
) -> Result<PoolConnection<Postgres>, ApiError> {
    if let Some((mut conn, since)) = kept {
        if since.elapsed() < shared::db::PING_IDLE_AFTER
            || sqlx::Connection::ping(&mut *conn).await.is_ok()
        {
            return Ok(conn);
        }
    }
    Ok(db.acquire().await?)
}

/// The span of one batch: it continues the trace of the first command that carries one and
/// links to the others' (a batch persists many sends at once; each send's own trace goes on
/// from its gateway frame to the gateways that deliver it). No span while tracing is off.
fn batch_span(commands: &[Option<SendCommand>]) -> tracing::Span {
    let mut traced = commands
        .iter()
        .flatten()
        .filter_map(|c| c.traceparent.as_deref());
    let span = shared::telemetry::traced(traced.next(), || {
        tracing::info_span!(
            "send.batch",
            otel.kind = "consumer",
            commands = commands.len(),
            trace_id = tracing::field::Empty,
        )
    });
    for other in traced {
        shared::telemetry::link(&span, other);
    }
    span
}

/// A span for one of a batch's Postgres statements (none while tracing is off).
fn db_span(operation: &'static str, rows: usize) -> tracing::Span {
    shared::telemetry::traced(None, || {
        tracing::info_span!(
            "postgres",
            otel.name = operation,
            otel.kind = "client",
            db.system.name = "postgresql",
            rows,
        )
    })
}

/// Records how long one stage of a send batch took (`chat_send_stage_seconds`).
fn stage(name: &'static str, since: std::time::Instant) {
    metrics::histogram!("chat_send_stage_seconds", "stage" => name)
        .record(since.elapsed().as_secs_f64());
}
