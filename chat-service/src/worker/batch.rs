//! One batch of sends: its commands judged (validated, authorized, persisted in one
//! transaction), their events published one payload per channel, and their entries
//! acknowledged behind the publishes.

use std::collections::HashMap;

use fred::prelude::*;
use shared::{
    chat::{ChatType, Event, SendCommand},
    ApiError,
};
use sqlx::{pool::PoolConnection, PgPool, Postgres};
use tracing::Instrument;
use uuid::Uuid;

use super::{
    entries::{batch_ends, decode_entry, StreamEntry},
    SendWorker,
};
use crate::{
    conversation::{self, Conversation},
    pipeline::{self, check_send, Draft, Outcome},
    publish::PublishTurn,
};

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
        // Each attachment's check copies its upload within the store and reads the copy: the
        // batch's checks (of the sends whose target resolved) run at once, so during a store
        // outage they all give up within one deadline. Text sends cost nothing here.
        let attached: Vec<(usize, &SendCommand, Uuid)> = commands
            .iter()
            .enumerate()
            .filter_map(|(i, command)| {
                let c = command.as_ref()?;
                let id = c.attachment_id?;
                let resolved_ok = matches!(
                    resolved.get(&(c.user_id, c.chat_type, c.chat_id)),
                    Some(Ok(_))
                );
                (verdicts[i].is_none() && resolved_ok).then_some((i, c, id))
            })
            .collect();
        let mut checks: HashMap<usize, Result<crate::attachments::Checked, ApiError>> =
            futures_util::future::join_all(attached.into_iter().map(|(i, c, id)| async move {
                let checked = crate::attachments::check_for_message(
                    &self.db,
                    &self.files,
                    c.user_id,
                    id,
                    c.message_type,
                    Some(&c.client_id),
                )
                .await;
                (i, checked)
            }))
            .await
            .into_iter()
            .collect();
        let mut drafts = Vec::new();
        let mut draft_of = Vec::new();
        for (i, command) in commands.iter().enumerate() {
            let Some(c) = command else { continue };
            if verdicts[i].is_some() {
                continue;
            }
            match resolved.get(&(c.user_id, c.chat_type, c.chat_id)) {
                Some(Ok(conversation)) => {
                    let checked = checks.remove(&i);
                    let (attachment, file_key) = match (c.attachment_id, checked) {
                        (None, _) => (None, None),
                        (Some(_), None) => {
                            verdicts[i] = Some(Verdict::Refused(Refusal::new(
                                "send_failed",
                                "the attachment was not checked",
                            )));
                            continue;
                        }
                        (Some(_), Some(checked)) => match checked {
                            Ok(checked) => (Some(checked.attachment), checked.file_key),
                            // The object store is down: this send is answered `unavailable`
                            // (its client retries); the others of the batch go on.
                            Err(e) if e.code == "storage_unavailable" => {
                                verdicts[i] = Some(Verdict::Refused(Refusal::of(&e)));
                                continue;
                            }
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
                        // A retry copies afresh; the sweep deletes copies never stored.
                        attachment_file: file_key,
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
pub(super) struct Kept {
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
