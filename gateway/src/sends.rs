//! The node's writer to the send stream. Connections hand their `send_message` commands to one
//! task, which appends them to the stream with one `XADD` per gathering and partition: the
//! commands that arrived while the previous `XADD`s were under way go in one entry per
//! partition of their conversations ([`SendCommand::partition`]), in the order they came (at
//! most `SEND_ENTRY_MAX_COMMANDS` per gathering), the partitions' `XADD`s sent together. Under load this is one Redis command, one stream entry and
//! one entry to read and acknowledge for many messages; a lone send goes out at once, as a
//! one-command entry, without waiting to be joined.
//!
//! A connection does not wait for its `XADD`: its next frame is read straight away. The queue
//! to the writer is bounded, so a node whose Redis is slow stops reading client frames instead
//! of buffering without limit. When an `XADD` fails, every sender of that entry gets an
//! `error` frame with code `unavailable` and its `client_id`, and may send again.
//!
//! Before appending, the writer takes one token per command from each sender's bucket in Redis
//! ([`shared::limits`], one script call per gathering): the send rate is per user, across all
//! of a user's sockets on every gateway and REST sends. Commands past a user's budget are
//! answered `rate_limited` and never appended.
//!
//! The stream holds only work in progress (chat-service deletes an entry once it is
//! acknowledged), so its length is the consumers' backlog. A watcher reads it a few times a
//! second (`gateway_send_stream_entries`); while it is over `SEND_STREAM_MAX_ENTRIES` (say,
//! Postgres is down and nothing is persisted), sends are refused at once with `unavailable`
//! instead of growing the stream without bound.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use fred::prelude::*;
use shared::{
    chat::{encode, SendCommand, SEND_BATCH_FIELD, SEND_FIELD},
    keys::Keys,
    limits::{self, Rate},
};
use tokio::sync::mpsc;
use tracing::Instrument;
use uuid::Uuid;

use crate::{connection::reply_error, connection::state::ConnShared, protocol::FrameError};

/// Commands waiting for the writer, node-wide, before connections wait to hand theirs over.
const QUEUE: usize = 4096;

/// A command and the connection to tell if it cannot be appended.
pub struct Pending {
    command: SendCommand,
    conn: Arc<ConnShared>,
}

/// How often the stream's length is read.
const BACKLOG_EVERY: Duration = Duration::from_millis(200);

/// The connections' side of the writer.
pub struct Sends {
    queue: mpsc::Sender<Pending>,
    /// Handed over and not yet appended (or refused): shutdown waits for this to reach zero.
    unfinished: Arc<AtomicUsize>,
    /// The stream's length as last read, and the most it may be for sends to be taken.
    backlog: Arc<AtomicU64>,
    max_backlog: u64,
}

/// The writer's side: run it with [`Writer::run`], and its watcher with [`Writer::watch_backlog`].
pub struct Writer {
    queue: mpsc::Receiver<Pending>,
    unfinished: Arc<AtomicUsize>,
    backlog: Arc<AtomicU64>,
    redis: Client,
    keys: Keys,
    settings: Settings,
}

/// How the writer appends.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Commands per entry at most (`SEND_ENTRY_MAX_COMMANDS`).
    pub max_per_entry: usize,
    /// Each user's send rate (`SEND_RATE_PER_SECOND`, `SEND_BURST`).
    pub rate: Rate,
    /// Stream entries, over every partition, past which sends are refused
    /// (`SEND_STREAM_MAX_ENTRIES`).
    pub max_backlog: u64,
    /// Partitions of the send stream (`SEND_PARTITIONS`).
    pub partitions: u16,
}

/// The send cannot be taken now: the node is stopping, or the stream's backlog is over its bound.
#[derive(Debug)]
pub struct Unavailable;

/// A connected pair: [`Sends`] for connections, [`Writer`] for the task that appends.
pub fn channel(redis: Client, keys: Keys, settings: Settings) -> (Sends, Writer) {
    let (tx, rx) = mpsc::channel(QUEUE);
    let unfinished = Arc::new(AtomicUsize::new(0));
    let backlog = Arc::new(AtomicU64::new(0));
    (
        Sends {
            queue: tx,
            unfinished: unfinished.clone(),
            backlog: backlog.clone(),
            max_backlog: settings.max_backlog,
        },
        Writer {
            queue: rx,
            unfinished,
            backlog,
            redis,
            keys,
            settings: Settings {
                max_per_entry: settings.max_per_entry.max(1),
                ..settings
            },
        },
    )
}

impl Sends {
    /// Hands `command` to the writer; waits only while the node-wide queue is full.
    pub async fn send(
        &self,
        conn: &Arc<ConnShared>,
        command: SendCommand,
    ) -> Result<(), Unavailable> {
        if self.backlog.load(Ordering::Relaxed) > self.max_backlog {
            metrics::counter!("gateway_sends_refused_total", "reason" => "backlog").increment(1);
            return Err(Unavailable);
        }
        self.unfinished.fetch_add(1, Ordering::AcqRel);
        let handed = self
            .queue
            .send(Pending {
                command,
                conn: conn.clone(),
            })
            .await;
        if handed.is_err() {
            self.unfinished.fetch_sub(1, Ordering::AcqRel);
            return Err(Unavailable);
        }
        Ok(())
    }

    /// Commands handed over and not yet appended or refused.
    pub fn unfinished(&self) -> usize {
        self.unfinished.load(Ordering::Acquire)
    }
}

impl Writer {
    /// A task that reads the stream's length every [`BACKLOG_EVERY`], for [`Sends::send`] and
    /// `gateway_send_stream_entries`; run it beside [`Writer::run`]. A failed read keeps the
    /// last value (while Redis is away, appends fail anyway).
    pub fn watch_backlog(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let (redis, backlog) = (self.redis.clone(), self.backlog.clone());
        let streams: Vec<String> = (0..self.settings.partitions)
            .map(|p| self.keys.send_stream(p))
            .collect();
        async move {
            let mut every = tokio::time::interval(BACKLOG_EVERY);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                let lengths = futures_util::future::try_join_all(
                    streams.iter().map(|s| redis.xlen::<u64, _>(s)),
                )
                .await;
                if let Ok(lengths) = lengths {
                    let len = lengths.iter().sum();
                    backlog.store(len, Ordering::Relaxed);
                    metrics::gauge!("gateway_send_stream_entries").set(len as f64);
                }
            }
        }
    }

    /// Appends until every [`Sends`] is dropped, in two stages that overlap: while one
    /// gathering's `XADD` is under way, the next one's rate check is (both on the node's one
    /// command connection, which pipelines them), so the check costs no round trip of its own.
    /// Gatherings still reach the stream in the order they were taken.
    pub async fn run(self) {
        let Writer {
            mut queue,
            unfinished,
            redis,
            keys,
            settings,
            ..
        } = self;
        let io = Io {
            redis,
            keys,
            settings,
        };
        let (checked_tx, mut checked) = mpsc::channel::<Vec<Pending>>(1);
        let check = async {
            let max = io.settings.max_per_entry;
            loop {
                let mut gathered: Vec<Pending> = Vec::with_capacity(max);
                if queue.recv_many(&mut gathered, max).await == 0 {
                    break;
                }
                let taken = gathered.len();
                match io.within_rate(&mut gathered).await {
                    Ok(()) => {
                        unfinished.fetch_sub(taken - gathered.len(), Ordering::AcqRel);
                        if !gathered.is_empty() {
                            let left = gathered.len();
                            if checked_tx.send(gathered).await.is_err() {
                                unfinished.fetch_sub(left, Ordering::AcqRel);
                                break;
                            }
                        }
                    }
                    Err(e) => {
                        io.refuse(&gathered, &e);
                        unfinished.fetch_sub(taken, Ordering::AcqRel);
                    }
                }
            }
            drop(checked_tx);
        };
        let append = async {
            while let Some(gathered) = checked.recv().await {
                let count = gathered.len();
                for (entry, appended) in io.append(gathered).await {
                    metrics::histogram!("gateway_send_entry_commands").record(entry.len() as f64);
                    if let Err(e) = appended {
                        io.refuse(&entry, &e);
                    }
                }
                unfinished.fetch_sub(count, Ordering::AcqRel);
            }
        };
        futures_util::future::join(check, append).await;
    }
}

/// What the writer's two stages share: the connection, the key names, the settings.
struct Io {
    redis: Client,
    keys: Keys,
    settings: Settings,
}

impl Io {
    /// Tells each sender of `gathered` that its send was not appended.
    fn refuse(&self, gathered: &[Pending], e: &Error) {
        metrics::counter!("gateway_send_append_failures_total").increment(1);
        tracing::warn!(error = %e, commands = gathered.len(), "could not append sends");
        for p in gathered {
            reply_error(
                &p.conn,
                &FrameError::send(
                    "unavailable",
                    "messages cannot be accepted right now; retry",
                    p.command.client_id.clone(),
                ),
            );
        }
    }

    /// Takes each sender's tokens for their commands (one script call); answers the commands
    /// past a user's budget `rate_limited` and leaves the rest in `gathered`, in order.
    async fn within_rate(&self, gathered: &mut Vec<Pending>) -> Result<(), Error> {
        let mut wants: Vec<(Uuid, u32)> = Vec::new();
        for p in gathered.iter() {
            match wants.iter_mut().find(|(u, _)| *u == p.command.user_id) {
                Some((_, n)) => *n += 1,
                None => wants.push((p.command.user_id, 1)),
            }
        }
        let keyed: Vec<(String, u32)> = wants
            .iter()
            .map(|(u, n)| (self.keys.send_rate(*u), *n))
            .collect();
        let granted = limits::take(&self.redis, self.settings.rate, &keyed).await?;
        let mut left: HashMap<Uuid, u32> = wants
            .iter()
            .zip(granted)
            .map(|((u, _), g)| (*u, g))
            .collect();
        gathered.retain(|p| match left.get_mut(&p.command.user_id) {
            Some(n) if *n > 0 => {
                *n -= 1;
                true
            }
            _ => {
                metrics::counter!("gateway_sends_refused_total", "reason" => "rate").increment(1);
                reply_error(
                    &p.conn,
                    &FrameError::send(
                        "rate_limited",
                        "too many messages; slow down",
                        p.command.client_id.clone(),
                    )
                    .retry_after(self.settings.rate.refill()),
                );
                false
            }
        });
        Ok(())
    }

    /// One entry per partition among `gathered`, each command in its partition's in the order
    /// they came; the `XADD`s go out together. Returns each entry with how its `XADD` went.
    async fn append(&self, gathered: Vec<Pending>) -> Vec<(Vec<Pending>, Result<(), Error>)> {
        let mut entries: Vec<(u16, Vec<Pending>)> = Vec::new();
        for p in gathered {
            let partition = p.command.partition(self.settings.partitions);
            match entries.iter_mut().find(|(q, _)| *q == partition) {
                Some((_, entry)) => entry.push(p),
                None => entries.push((partition, vec![p])),
            }
        }
        let results = futures_util::future::join_all(
            entries
                .iter()
                .map(|(partition, entry)| self.append_entry(*partition, entry)),
        )
        .await;
        entries.into_iter().map(|(_, e)| e).zip(results).collect()
    }

    /// One `XADD` to `partition`: a lone command as itself, several as one array.
    async fn append_entry(&self, partition: u16, gathered: &[Pending]) -> Result<(), Error> {
        let encoded = match gathered {
            [one] => encode(&one.command).map(|b| (SEND_FIELD, b)),
            many => {
                let commands: Vec<&SendCommand> = many.iter().map(|p| &p.command).collect();
                encode(&commands).map(|b| (SEND_BATCH_FIELD, b))
            }
        };
        let (field, bytes) = encoded.map_err(|e| Error::new(ErrorKind::Parse, e.to_string()))?;
        // In the trace of the entry's first traced send, linked to the others'.
        let mut traced = gathered
            .iter()
            .filter_map(|p| p.command.traceparent.as_deref());
        let span = shared::telemetry::traced(traced.next(), || {
            tracing::info_span!(
                "send.append",
                otel.kind = "producer",
                messaging.system = "redis",
                commands = gathered.len(),
                trace_id = tracing::field::Empty,
            )
        });
        for other in traced {
            shared::telemetry::link(&span, other);
        }
        let _: String = self
            .redis
            .xadd(
                self.keys.send_stream(partition),
                false,
                None,
                "*",
                vec![(field, bytes)],
            )
            .instrument(span)
            .await?;
        Ok(())
    }
}
