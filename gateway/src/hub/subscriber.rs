//! The node's subscriptions at Redis, made by one task in the order the hub asks for them, so
//! a channel left and joined again is never unsubscribed after its new subscription. Requests
//! that queue up while one is under way go out together: on a single Redis one `SUBSCRIBE`
//! names up to [`PER_COMMAND`] channels; on a cluster, sharded channels are subscribed with
//! `SSUBSCRIBE`, one command per hash slot (a command's channels must share one), each sent to
//! the slot's primary. After every subscription the channels' conversations are checked for
//! messages published before it took (see [`super::repair`]).

use fred::prelude::*;
use tokio::sync::{mpsc, oneshot};

use super::repair::{Job, RepairQueue};

/// The most channels named in one `SUBSCRIBE` or `UNSUBSCRIBE`.
pub const PER_COMMAND: usize = 512;

enum Op {
    Subscribe(Vec<String>, Option<oneshot::Sender<()>>),
    Unsubscribe(Vec<String>),
}

/// Where the hub asks for subscriptions.
#[derive(Clone)]
pub struct Subscriptions {
    ops: mpsc::UnboundedSender<Op>,
}

/// The task that makes them.
pub struct Subscriber {
    client: Client,
    ops: mpsc::UnboundedReceiver<Op>,
    repairs: RepairQueue,
}

pub fn channel(client: Client, repairs: RepairQueue) -> (Subscriptions, Subscriber) {
    let (tx, rx) = mpsc::unbounded_channel();
    (
        Subscriptions { ops: tx },
        Subscriber {
            client,
            ops: rx,
            repairs,
        },
    )
}

impl Subscriptions {
    /// Subscribes `channels` and waits until Redis has taken the subscription (or refused it:
    /// the reconnect handler subscribes every channel again once Redis is back).
    pub async fn subscribe(&self, channels: Vec<String>) {
        if channels.is_empty() {
            return;
        }
        let (done, taken) = oneshot::channel();
        if self.ops.send(Op::Subscribe(channels, Some(done))).is_ok() {
            let _ = taken.await;
        }
    }

    /// Subscribes `channels` without waiting (from the dispatcher).
    pub fn subscribe_later(&self, channels: Vec<String>) {
        if !channels.is_empty() {
            let _ = self.ops.send(Op::Subscribe(channels, None));
        }
    }

    pub fn unsubscribe(&self, channels: Vec<String>) {
        if !channels.is_empty() {
            let _ = self.ops.send(Op::Unsubscribe(channels));
        }
    }
}

impl Subscriber {
    pub async fn run(mut self) {
        while let Some(first) = self.ops.recv().await {
            // Gather what queued behind it, keeping the order of subscribes and unsubscribes.
            let mut ops = vec![first];
            while let Ok(op) = self.ops.try_recv() {
                ops.push(op);
            }
            let mut run: Vec<Op> = Vec::new();
            for op in ops {
                let same = matches!(
                    (run.last(), &op),
                    (Some(Op::Subscribe(..)), Op::Subscribe(..))
                        | (Some(Op::Unsubscribe(_)), Op::Unsubscribe(_))
                );
                if !same && !run.is_empty() {
                    self.apply(std::mem::take(&mut run)).await;
                }
                run.push(op);
            }
            self.apply(run).await;
        }
    }

    /// Applies a run of operations of one kind as one.
    async fn apply(&self, run: Vec<Op>) {
        let mut channels = Vec::new();
        let mut waiting = Vec::new();
        let mut subscribe = false;
        for op in run {
            match op {
                Op::Subscribe(names, done) => {
                    subscribe = true;
                    channels.extend(names);
                    waiting.extend(done);
                }
                Op::Unsubscribe(names) => channels.extend(names),
            }
        }
        if subscribe {
            let started = std::time::Instant::now();
            self.subscribe(&channels).await;
            metrics::histogram!("gateway_subscribe_seconds")
                .record(started.elapsed().as_secs_f64());
            metrics::counter!("gateway_subscriptions_total").increment(channels.len() as u64);
            let _ = self.repairs.send(Job::CatchUp(channels));
            for done in waiting {
                let _ = done.send(());
            }
        } else {
            self.unsubscribe(&channels).await;
        }
    }

    async fn subscribe(&self, channels: &[String]) {
        self.change(channels, true).await;
    }

    async fn unsubscribe(&self, channels: &[String]) {
        self.change(channels, false).await;
    }

    /// Subscribes (or unsubscribes) `channels`: by slot on a cluster, [`PER_COMMAND`] at a time
    /// on one server.
    async fn change(&self, channels: &[String], subscribe: bool) {
        let result = if self.client.is_clustered() {
            self.by_slot(channels, subscribe).await
        } else {
            let mut result = Ok(());
            for chunk in channels.chunks(PER_COMMAND) {
                let done = if subscribe {
                    self.client.subscribe(chunk.to_vec()).await
                } else {
                    self.client.unsubscribe(chunk.to_vec()).await
                };
                result = result.and(done);
            }
            result
        };
        if let Err(e) = result {
            let what = if subscribe {
                "subscribe"
            } else {
                "unsubscribe"
            };
            tracing::warn!(error = %e, count = channels.len(), "{what} failed");
        }
    }

    /// `SSUBSCRIBE` (or `SUNSUBSCRIBE`) once per hash slot, one after another: the client
    /// follows a `MOVED` answer to a sharded subscription only when it is not pipelined.
    async fn by_slot(&self, channels: &[String], subscribe: bool) -> Result<(), Error> {
        let mut result = Ok(());
        for (_, group) in fred::util::group_by_hash_slot(channels.iter().map(String::as_str))? {
            let group: Vec<Key> = group.into_iter().collect();
            let done = if subscribe {
                self.client.ssubscribe(group).await
            } else {
                self.client.sunsubscribe(group).await
            };
            result = result.and(done);
        }
        result
    }
}
