//! Which replica persists which partition of the send stream. Every replica that takes sends
//! heartbeats into [`Keys::send_replicas`] and holds leases ([`Keys::send_lease`], a key with
//! its id that expires unless renewed) on about `partitions / live replicas` of them, and runs
//! one [`SendWorker`] loop per partition it holds. Every third of `SEND_LEASE_MS` each replica
//! renews its leases, gives back those over its fair share (after their loop has finished its
//! batch, so the next holder starts where it stopped), and takes free ones up to its share. A
//! replica that dies stops renewing: within one lease its partitions are free and the others
//! take them; the entries it had read but not acknowledged are claimed after
//! `SEND_CLAIM_IDLE_MS` and persisted again (once: `client_id` is unique per sender).
//!
//! A lease is not a fence: a replica stalled for longer than a lease may finish a batch while
//! the next holder starts. Nothing is stored twice (the unique `client_id`), and the gateways
//! drop a `seq` they forwarded before.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use fred::{
    prelude::*,
    types::{Expiration, SetOptions},
};
use shared::{keys::Keys, lua::Script};
use tokio::{sync::watch, task::JoinHandle};
use uuid::Uuid;

use crate::worker::SendWorker;

/// Extends the lease at `KEYS[1]` by `ARGV[2]` ms if `ARGV[1]` holds it; 1 when it does.
static RENEW: Script = Script::new(
    r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
",
);

/// Deletes the lease at `KEYS[1]` if `ARGV[1]` holds it.
static RELEASE: Script = Script::new(
    r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
",
);

/// Builds the loop of one partition.
pub type MakeWorker = Arc<dyn Fn(u16) -> SendWorker + Send + Sync>;

/// A partition this replica holds: its loop and the switch that stops it.
struct Held {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

pub struct Partitions {
    redis: Client,
    keys: Keys,
    replica: String,
    partitions: u16,
    lease: Duration,
    make: MakeWorker,
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl Partitions {
    pub fn new(
        redis: Client,
        keys: Keys,
        partitions: u16,
        lease: Duration,
        make: MakeWorker,
    ) -> Self {
        Self {
            redis,
            keys,
            replica: format!("chat-{}", Uuid::new_v4().simple()),
            partitions: partitions.max(1),
            lease: lease.max(Duration::from_millis(300)),
            make,
        }
    }

    /// Balances until `shutdown` turns true, then stops every loop and gives its lease back.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut held: BTreeMap<u16, Held> = BTreeMap::new();
        let mut every = tokio::time::interval(self.lease / 3);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while !*shutdown.borrow() {
            tokio::select! {
                _ = every.tick() => {}
                _ = shutdown.changed() => break,
            }
            if let Err(e) = self.balance(&mut held).await {
                tracing::warn!(error = %e, "could not balance the send partitions");
            }
        }
        let stopping: Vec<(u16, Held)> = held.into_iter().collect();
        for (partition, h) in stopping {
            self.give_back(partition, h).await;
        }
        let _: Result<i64, Error> = self
            .redis
            .zrem(self.keys.send_replicas(), &self.replica)
            .await;
    }

    /// The share of partitions this replica should hold, from the live replicas.
    async fn fair_share(&self) -> Result<usize, Error> {
        let now = now_ms();
        let key = self.keys.send_replicas();
        let expires = (now + self.lease.as_millis() as i64) as f64;
        let _: () = self
            .redis
            .zadd(
                &key,
                None,
                None,
                false,
                false,
                (expires, self.replica.as_str()),
            )
            .await?;
        let _: i64 = self
            .redis
            .zremrangebyscore(&key, f64::NEG_INFINITY, now as f64)
            .await?;
        let live: u64 = self.redis.zcard(&key).await?;
        let live = usize::try_from(live.max(1)).unwrap_or(1);
        Ok(usize::from(self.partitions).div_ceil(live))
    }

    async fn balance(&self, held: &mut BTreeMap<u16, Held>) -> Result<(), Error> {
        let fair = self.fair_share().await?;
        let lease_ms = self.lease.as_millis().to_string();
        // Renew; a lease lost (this replica stalled past it) stops its loop at once.
        let mut lost = Vec::new();
        for &partition in held.keys() {
            let renewed: i64 = RENEW
                .run(
                    &self.redis,
                    vec![self.keys.send_lease(partition)],
                    vec![self.replica.clone(), lease_ms.clone()],
                )
                .await?;
            if renewed != 1 {
                lost.push(partition);
            }
        }
        for partition in lost {
            if let Some(h) = held.remove(&partition) {
                let _ = h.stop.send(true);
                metrics::counter!("chat_send_leases_lost_total").increment(1);
                tracing::warn!(partition, "lost the lease of a send partition");
            }
        }
        // Over the share (another replica came up): give the last ones back.
        while held.len() > fair {
            let Some((partition, h)) = held.pop_last() else {
                break;
            };
            self.give_back(partition, h).await;
        }
        // Under it: take free ones.
        for partition in 0..self.partitions {
            if held.len() >= fair {
                break;
            }
            if held.contains_key(&partition) {
                continue;
            }
            let taken: Option<String> = self
                .redis
                .set(
                    self.keys.send_lease(partition),
                    self.replica.as_str(),
                    Some(Expiration::PX(self.lease.as_millis() as i64)),
                    Some(SetOptions::NX),
                    false,
                )
                .await?;
            if taken.is_some() {
                let (stop, stopped) = watch::channel(false);
                let task = tokio::spawn((self.make)(partition).run(stopped));
                held.insert(partition, Held { stop, task });
                metrics::counter!("chat_send_leases_taken_total").increment(1);
                tracing::info!(partition, replica = %self.replica, "took a send partition");
            }
        }
        metrics::gauge!("chat_send_partitions_held").set(held.len() as f64);
        Ok(())
    }

    /// Stops the loop of `partition` (its batch under way finishes), then frees its lease.
    async fn give_back(&self, partition: u16, h: Held) {
        let _ = h.stop.send(true);
        let _ = h.task.await;
        let released: Result<i64, Error> = RELEASE
            .run(
                &self.redis,
                vec![self.keys.send_lease(partition)],
                vec![self.replica.clone()],
            )
            .await;
        if let Err(e) = released {
            tracing::warn!(error = %e, partition, "could not give a send partition back");
        }
        tracing::info!(partition, "gave a send partition back");
    }
}
