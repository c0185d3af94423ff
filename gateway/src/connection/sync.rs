//! `sync`: a reconnecting client's catch-up. Live frames of the named conversations are held
//! while chat-service reads history after each position; the batch goes out minus what the
//! connection already had live, then the held frames past it.

use std::{sync::Arc, time::Instant};

use serde::Serialize;
use shared::{
    chat::{ChatType, Message},
    internal::SyncRequest,
};
use uuid::Uuid;

use super::{frames::call_error, reply, reply_error, stage_done, state, state::ConnShared};
use crate::Gateway;

/// The most messages per position of a `sync`.
const SYNC_PER_POSITION: i64 = 500;

#[derive(Serialize)]
struct SyncedResult {
    chat_type: ChatType,
    chat_id: Uuid,
    messages: Vec<Message>,
    has_more: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

#[derive(Serialize)]
struct Synced {
    results: Vec<SyncedResult>,
}

/// `sync`: hold live frames of the named conversations, fetch history after each position,
/// send it minus what this connection already had live, then release the held frames past it.
pub(super) async fn sync(
    gw: Arc<Gateway>,
    conn: Arc<ConnShared>,
    positions: Vec<shared::internal::SyncPosition>,
) {
    let known: Vec<Option<Uuid>> = positions
        .iter()
        .map(|p| gw.hub.conversation_of(conn.user, p.chat_type, p.chat_id))
        .collect();
    {
        let mut cursors = conn.cursors();
        for conv in known.iter().flatten() {
            cursors
                .get_or_insert_with(*conv, state::Cursor::default)
                .held
                .get_or_insert_with(Vec::new);
        }
    }
    let request = SyncRequest {
        user_id: conn.user,
        positions: positions.clone(),
        limit: SYNC_PER_POSITION,
    };
    let asked = Instant::now();
    let answer = gw.hub.chat().sync(&request).await;
    stage_done("sync", asked);
    let mut cursors = conn.cursors();
    let results = match answer {
        Ok(a) => a.results,
        Err(e) => {
            release_held(&conn, &mut cursors, &known);
            drop(cursors);
            reply_error(&conn, &call_error(e).answering("sync"));
            return;
        }
    };
    let mut synced = Vec::with_capacity(results.len());
    let mut batch_max: Vec<(Uuid, i64, bool, i64)> = Vec::new();
    // What is left of the frame's SYNC_PER_FRAME messages.
    let mut room = shared::internal::SYNC_PER_FRAME;
    for (r, position) in results.into_iter().zip(&positions) {
        let mut messages = r.messages;
        let mut has_more = r.has_more;
        if let Some(conv) = r.conversation_id {
            if let Some(c) = cursors.get(&conv) {
                if c.first > 0 {
                    messages.retain(|m| m.seq < c.first || m.seq > c.last);
                }
            }
            if messages.len() > room {
                messages.truncate(room);
                has_more = true;
            }
            room -= messages.len();
            let top = messages.last().map_or(position.seq, |m| m.seq);
            batch_max.push((conv, top, has_more, position.seq));
        }
        synced.push(SyncedResult {
            chat_type: r.chat_type,
            chat_id: r.chat_id,
            messages,
            has_more,
            error: r.error,
        });
    }
    reply(&conn, "synced", &Synced { results: synced });
    for (conv, top, has_more, from) in batch_max {
        if let Some(c) = cursors.get_mut(&conv) {
            if !has_more && (c.first == 0 || c.first > from + 1) {
                c.first = from + 1;
            }
            c.last = c.last.max(top);
        }
    }
    release_held(&conn, &mut cursors, &known);
}

/// Sends the frames held during a sync that come after what the client now has, in order.
fn release_held(conn: &Arc<ConnShared>, cursors: &mut state::Cursors, known: &[Option<Uuid>]) {
    for conv in known.iter().flatten() {
        let Some(c) = cursors.get_mut(conv) else {
            continue;
        };
        let Some(mut held) = c.held.take() else {
            continue;
        };
        held.sort_by_key(|(seq, _)| *seq);
        for (seq, out) in held {
            if seq > c.last {
                c.had(seq);
                conn.push(out);
            }
        }
    }
}
