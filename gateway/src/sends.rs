//! The node's writer to the send stream. Connections hand their `send_message` commands to one
//! task, which appends them to the stream with one `XADD` per gathering: the commands that
//! arrived while the previous `XADD` was under way go in one entry, in the order they came (at
//! most `SEND_ENTRY_MAX_COMMANDS`). Under load this is one Redis command, one stream entry and
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
    /// Stream entries past which sends are refused (`SEND_STREAM_MAX_ENTRIES`).
    pub max_backlog: u64,
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
        let (redis, stream, backlog) = (
            self.redis.clone(),
            self.keys.send_stream(),
            self.backlog.clone(),
        );
        async move {
            let mut every = tokio::time::interval(BACKLOG_EVERY);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                if let Ok(len) = redis.xlen::<u64, _>(&stream).await {
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
                metrics::histogram!("gateway_send_entry_commands").record(gathered.len() as f64);
                if let Err(e) = io.append(&gathered).await {
                    io.refuse(&gathered, &e);
                }
                unfinished.fetch_sub(gathered.len(), Ordering::AcqRel);
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
                &FrameError {
                    code: "unavailable",
                    detail: "messages cannot be accepted right now; retry".into(),
                    client_id: Some(p.command.client_id.clone()),
                },
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
                    &FrameError {
                        code: "rate_limited",
                        detail: "too many messages; slow down".into(),
                        client_id: Some(p.command.client_id.clone()),
                    },
                );
                false
            }
        });
        Ok(())
    }

    /// One `XADD`: a lone command as itself, several as one array.
    async fn append(&self, gathered: &[Pending]) -> Result<(), Error> {
        let encoded = match gathered {
            [one] => encode(&one.command).map(|b| (SEND_FIELD, b)),
            many => {
                let commands: Vec<&SendCommand> = many.iter().map(|p| &p.command).collect();
                encode(&commands).map(|b| (SEND_BATCH_FIELD, b))
            }
        };
        let (field, bytes) = encoded.map_err(|e| Error::new(ErrorKind::Parse, e.to_string()))?;
        let _: String = self
            .redis
            .xadd(
                self.keys.send_stream(),
                false,
                None,
                "*",
                vec![(field, bytes)],
            )
            .await?;
        Ok(())
    }
}
