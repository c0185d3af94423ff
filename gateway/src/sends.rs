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

use std::sync::{
    atomic::{AtomicUsize, Ordering},
    Arc,
};

use fred::prelude::*;
use shared::{
    chat::{encode, SendCommand, SEND_BATCH_FIELD, SEND_FIELD},
    keys::Keys,
};
use tokio::sync::mpsc;

use crate::{conn::ConnShared, connection::reply_error, protocol::FrameError};

/// Commands waiting for the writer, node-wide, before connections wait to hand theirs over.
const QUEUE: usize = 4096;

/// A command and the connection to tell if it cannot be appended.
pub struct Pending {
    command: SendCommand,
    conn: Arc<ConnShared>,
}

/// The connections' side of the writer.
pub struct Sends {
    queue: mpsc::Sender<Pending>,
    /// Handed over and not yet appended (or refused): shutdown waits for this to reach zero.
    unfinished: Arc<AtomicUsize>,
}

/// The writer's side: run it with [`Writer::run`].
pub struct Writer {
    queue: mpsc::Receiver<Pending>,
    unfinished: Arc<AtomicUsize>,
    redis: Client,
    keys: Keys,
    max_per_entry: usize,
}

/// The writer is gone (the node is stopping).
#[derive(Debug)]
pub struct Closed;

/// A connected pair: [`Sends`] for connections, [`Writer`] for the task that appends entries
/// of at most `max_per_entry` commands.
pub fn channel(redis: Client, keys: Keys, max_per_entry: usize) -> (Sends, Writer) {
    let (tx, rx) = mpsc::channel(QUEUE);
    let unfinished = Arc::new(AtomicUsize::new(0));
    (
        Sends {
            queue: tx,
            unfinished: unfinished.clone(),
        },
        Writer {
            queue: rx,
            unfinished,
            redis,
            keys,
            max_per_entry: max_per_entry.max(1),
        },
    )
}

impl Sends {
    /// Hands `command` to the writer; waits only while the node-wide queue is full.
    pub async fn send(&self, conn: &Arc<ConnShared>, command: SendCommand) -> Result<(), Closed> {
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
            return Err(Closed);
        }
        Ok(())
    }

    /// Commands handed over and not yet appended or refused.
    pub fn unfinished(&self) -> usize {
        self.unfinished.load(Ordering::Acquire)
    }
}

impl Writer {
    /// Appends until every [`Sends`] is dropped.
    pub async fn run(mut self) {
        let mut gathered: Vec<Pending> = Vec::with_capacity(self.max_per_entry);
        while self
            .queue
            .recv_many(&mut gathered, self.max_per_entry)
            .await
            > 0
        {
            let appended = self.append(&gathered).await;
            metrics::histogram!("gateway_send_entry_commands").record(gathered.len() as f64);
            if let Err(e) = appended {
                metrics::counter!("gateway_send_append_failures_total").increment(1);
                tracing::warn!(error = %e, commands = gathered.len(), "could not append sends");
                for p in &gathered {
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
            self.unfinished.fetch_sub(gathered.len(), Ordering::AcqRel);
            gathered.clear();
        }
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
