//! Gap repair, off the dispatcher. The dispatcher only notes that a stream needs repair (see
//! [`super::ordering`]) and queues a [`Job`]; this task asks chat-service for the missing
//! messages, [`REPAIRS_IN_FLIGHT`] requests at a time, and hands them back to the hub, which
//! forwards them with what was held meanwhile. A slow or absent chat-service delays the
//! streams under repair, never the node's other deliveries.

use std::{collections::HashMap, sync::Arc};

use shared::{chat::Message, internal::RepairRequest};
use tokio::sync::{mpsc, Semaphore};
use uuid::Uuid;

use crate::Gateway;

/// The most messages one repair fetches per conversation.
pub const REPAIR_LIMIT: i64 = 500;

/// Repair requests to chat-service in flight at once per node.
pub const REPAIRS_IN_FLIGHT: usize = 8;

/// What to repair.
#[derive(Debug)]
pub enum Job {
    /// Every conversation on these channels (after a subscription, a reconnect or a lagging
    /// dispatcher): whatever exists past what the node forwarded.
    CatchUp(Vec<String>),
    /// One conversation on one channel lacks the messages after `after` and before `upto`.
    Gap {
        channel: String,
        conversation: Uuid,
        after: i64,
        upto: i64,
    },
}

pub type RepairQueue = mpsc::UnboundedSender<Job>;
pub type RepairJobs = mpsc::UnboundedReceiver<Job>;

pub fn queue() -> (RepairQueue, RepairJobs) {
    mpsc::unbounded_channel()
}

/// Runs the node's repairs until the queue closes.
pub async fn run(gw: Arc<Gateway>, mut jobs: RepairJobs) {
    let slots = Arc::new(Semaphore::new(REPAIRS_IN_FLIGHT));
    while let Some(job) = jobs.recv().await {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let gw = gw.clone();
        tokio::spawn(async move {
            repair(&gw, job).await;
            drop(slot);
        });
    }
}

async fn repair(gw: &Gateway, job: Job) {
    let (wanted, limit) = match job {
        Job::CatchUp(channels) => (gw.hub.begin_catch_up(&channels), REPAIR_LIMIT),
        Job::Gap {
            channel,
            conversation,
            after,
            upto,
        } => {
            metrics::counter!("gateway_gaps_detected_total").increment(1);
            tracing::info!(%channel, %conversation, from = after + 1, to = upto - 1, "repairing a gap");
            (
                vec![(channel, conversation, after)],
                (upto - after - 1).clamp(1, REPAIR_LIMIT),
            )
        }
    };
    if wanted.is_empty() {
        return;
    }
    // One position per conversation (a private chat can be on two local user channels).
    let mut after: HashMap<Uuid, i64> = HashMap::new();
    for (_, conv, last) in &wanted {
        after
            .entry(*conv)
            .and_modify(|a| *a = (*a).min(*last))
            .or_insert(*last);
    }
    let request = RepairRequest {
        after: after.into_iter().collect(),
        limit,
    };
    let fetched: HashMap<Uuid, Vec<Message>> = match gw.hub.chat().repair(&request).await {
        Ok(answer) => answer
            .results
            .into_iter()
            .map(|r| (r.conversation_id, r.messages))
            .collect(),
        Err(e) => {
            metrics::counter!("gateway_repair_failures_total").increment(1);
            tracing::warn!(error = %e, "repair failed; delivering what arrived");
            HashMap::new()
        }
    };
    for (channel, conv, after) in wanted {
        let messages = fetched.get(&conv).cloned().unwrap_or_default();
        gw.hub.finish_repair(&channel, conv, after, messages);
    }
}
