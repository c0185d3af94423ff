//! A reconnect storm: `clients` users (in rooms of 100) hold sockets on one gateway while a
//! sender per room, on the other gateway, keeps messages flowing; the first gateway is killed
//! with SIGKILL. Every client reconnects to the other gateway (backing off, jittered, on a
//! refusal such as 503 `gateway_busy`), sends `sync` from the last `seq` it had, and is back
//! when `synced` arrives. Reported: the time until each client was back (from the kill), the
//! connection attempts that failed, and per client the messages of its room it never got or got
//! twice, counted against the highest `seq` the senders were acknowledged.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::{watch, Semaphore};
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;

use crate::{scenarios::Outcome, setup::Setup, stats::latency, ws};

const ROOM: usize = 100;

/// What one client saw.
#[derive(Default)]
struct Seen {
    seqs: Vec<i64>,
    back_after: Option<Duration>,
    failed_attempts: u64,
}

fn seqs_of(frame: &Value, room: &str, into: &mut Vec<i64>) {
    match frame["type"].as_str() {
        Some("message") if frame["data"]["room_id"] == room => {
            into.extend(frame["data"]["seq"].as_i64());
        }
        Some("synced") => {
            for r in frame["data"]["results"].as_array().into_iter().flatten() {
                for m in r["messages"].as_array().into_iter().flatten() {
                    if m["room_id"] == room {
                        into.extend(m["seq"].as_i64());
                    }
                }
            }
        }
        _ => {}
    }
}

#[allow(clippy::too_many_arguments)]
pub async fn storm(
    setup: &Setup,
    victim: SocketAddr,
    victim_pid: u32,
    survivor: SocketAddr,
    clients: usize,
    rate: u64,
    deadline: Duration,
) -> anyhow::Result<Outcome> {
    anyhow::ensure!(victim_pid > 0, "--victim-pid is required");
    let rooms = clients.div_ceil(ROOM);
    let users = setup.users(clients + rooms, "x").await?;
    let mut room_ids = Vec::with_capacity(rooms);
    for r in 0..rooms {
        let mut members: Vec<Uuid> = users[r * ROOM..((r + 1) * ROOM).min(clients)]
            .iter()
            .map(|u| u.id)
            .collect();
        members.push(users[clients + r].id);
        room_ids.push(setup.room(&members).await?);
    }
    setup.analyze().await?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let killed_at: Arc<Mutex<Option<Instant>>> = Arc::default();
    let came_back = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let gate = Arc::new(Semaphore::new(128));
    let mut readers = Vec::with_capacity(clients);
    let mut ready = Vec::with_capacity(clients);
    for (i, user) in users.iter().take(clients).enumerate() {
        let (token, room) = (user.token.clone(), room_ids[i / ROOM]);
        let (gate, killed_at, mut stop) = (gate.clone(), killed_at.clone(), stop_rx.clone());
        let came_back = came_back.clone();
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<bool>();
        ready.push(ready_rx);
        readers.push(tokio::spawn(async move {
            let room_s = room.to_string();
            let mut seen = Seen::default();
            let permit = gate.acquire().await;
            let first = ws::connect(victim, &token, ws::source(i)).await;
            drop(permit);
            let Ok(mut socket) = first else {
                let _ = ready_tx.send(false);
                return seen;
            };
            let _ = ready_tx.send(true);
            // On the victim until it dies.
            loop {
                tokio::select! {
                    _ = stop.changed() => return seen,
                    m = socket.next() => match m {
                        Some(Ok(Message::Text(t))) => {
                            if let Ok(v) = serde_json::from_str::<Value>(&t) {
                                seqs_of(&v, &room_s, &mut seen.seqs);
                            }
                        }
                        Some(Ok(_)) => {}
                        _ => break,
                    },
                }
            }
            // The dead socket's descriptor goes now, not when the task ends: the generator
            // holds 15,000 sockets against a limit of 20,000 open files, and dead ones kept
            // open left room for only about 5,000 reconnections (every later attempt failed
            // here, in the generator, with "too many open files").
            drop(socket);
            // Back on the survivor, as a client would: backoff with jitter (or the server's
            // Retry-After, which it jitters itself), then sync.
            let mut wait = Duration::from_millis(100);
            let mut pause = Duration::from_secs_f64(rand::random::<f64>() * wait.as_secs_f64());
            let mut socket = loop {
                tokio::time::sleep(pause).await;
                match ws::connect(survivor, &token, ws::source(i)).await {
                    Ok(s) => break s,
                    Err(e) => {
                        seen.failed_attempts += 1;
                        wait = (wait * 2).min(Duration::from_secs(5));
                        pause = e
                            .downcast_ref::<ws::Refused>()
                            .and_then(|r| r.retry_after)
                            .unwrap_or_else(|| {
                                Duration::from_secs_f64(rand::random::<f64>() * wait.as_secs_f64())
                            });
                        if *stop.borrow() {
                            return seen;
                        }
                    }
                }
            };
            // The position is what the client had before it came back; a retry asks from the
            // same place (live messages that arrive meanwhile may come after a gap the sync
            // is to fill, so the highest seq seen is not a position).
            let position = seen.seqs.iter().copied().max().unwrap_or(0);
            let sync = json!({"type": "sync", "data": {"positions": [{"chat_type": "room", "chat_id": room, "seq": position}]}})
                .to_string();
            if socket.send(Message::Text(sync.clone().into())).await.is_err() {
                return seen;
            }
            loop {
                tokio::select! {
                    _ = stop.changed() => return seen,
                    m = socket.next() => match m {
                        Some(Ok(Message::Text(t))) => {
                            if let Ok(v) = serde_json::from_str::<Value>(&t) {
                                seqs_of(&v, &room_s, &mut seen.seqs);
                                // A sync chat-service could not answer (busy): again, a moment later.
                                if v["type"] == "error" && seen.back_after.is_none() {
                                    seen.failed_attempts += 1;
                                    let pause = 0.2 + rand::random::<f64>();
                                    tokio::time::sleep(Duration::from_secs_f64(pause)).await;
                                    if socket.send(Message::Text(sync.clone().into())).await.is_err() {
                                        return seen;
                                    }
                                }
                                if v["type"] == "synced" && seen.back_after.is_none() {
                                    let at = *killed_at.lock().unwrap_or_else(|p| p.into_inner());
                                    seen.back_after = at.map(|k| k.elapsed());
                                    came_back.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                }
                            }
                        }
                        Some(Ok(_)) => {}
                        _ => return seen,
                    },
                }
            }
        }));
    }
    let mut connected = 0;
    for r in ready {
        if r.await.unwrap_or(false) {
            connected += 1;
        }
    }
    eprintln!("storm: {connected} of {clients} clients on the victim");

    // A sender per room on the survivor; the highest acknowledged seq of each room.
    let top: Arc<Vec<std::sync::atomic::AtomicI64>> = Arc::new(
        (0..rooms)
            .map(|_| std::sync::atomic::AtomicI64::new(0))
            .collect(),
    );
    let (senders_stop_tx, senders_stop) = watch::channel(false);
    let per_room = Duration::from_secs_f64(rooms as f64 / rate.max(1) as f64);
    let mut senders = Vec::with_capacity(rooms);
    for r in 0..rooms {
        let (token, room, top) = (users[clients + r].token.clone(), room_ids[r], top.clone());
        let mut stop = senders_stop.clone();
        senders.push(tokio::spawn(async move {
            let Ok(socket) = ws::connect(survivor, &token, ws::source(clients + r)).await else {
                return;
            };
            let (mut tx, mut rx) = socket.split();
            let reading = async {
                while let Some(Ok(m)) = rx.next().await {
                    if let Message::Text(t) = m {
                        if let Ok(v) = serde_json::from_str::<Value>(&t) {
                            if v["type"] == "ack" {
                                if let Some(seq) = v["data"]["message"]["seq"].as_i64() {
                                    top[r].fetch_max(seq, std::sync::atomic::Ordering::Relaxed);
                                }
                            }
                        }
                    }
                }
            };
            let writing = async {
                let mut every = tokio::time::interval(per_room);
                let mut n = 0u64;
                loop {
                    tokio::select! {
                        _ = every.tick() => {}
                        _ = stop.changed() => break,
                    }
                    n += 1;
                    let frame = json!({"type": "send_message", "data": {"chat_type": "room", "chat_id": room, "content": format!("s{n}"), "client_id": format!("s{r}-{n}")}});
                    if tx.send(Message::Text(frame.to_string().into())).await.is_err() {
                        break;
                    }
                }
                // Let the last acks come in.
                tokio::time::sleep(Duration::from_secs(2)).await;
            };
            tokio::select! {
                _ = reading => {}
                _ = writing => {}
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let status = std::process::Command::new("kill")
        .args(["-9", &victim_pid.to_string()])
        .status()?;
    anyhow::ensure!(status.success(), "could not kill the victim gateway");
    let kill = Instant::now();
    *killed_at.lock().unwrap_or_else(|p| p.into_inner()) = Some(kill);
    eprintln!("storm: victim killed; waiting for {connected} clients to come back");
    // Messages keep flowing while clients come back, and two seconds more.
    while kill.elapsed() < deadline
        && came_back.load(std::sync::atomic::Ordering::Relaxed) < connected
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let _ = senders_stop_tx.send(true);
    for s in senders {
        let _ = s.await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let _ = stop_tx.send(true);
    let mut back = Vec::new();
    let (mut never_back, mut failed, mut lost, mut doubled, mut clients_losing) = (0, 0, 0, 0, 0);
    for (i, r) in readers.into_iter().enumerate() {
        let Ok(mut seen) = r.await else {
            never_back += 1;
            continue;
        };
        failed += seen.failed_attempts;
        match seen.back_after {
            Some(d) => back.push(d.as_micros() as u64),
            None => never_back += 1,
        }
        let want = top[i / ROOM].load(std::sync::atomic::Ordering::Relaxed);
        let total = seen.seqs.len();
        seen.seqs.sort_unstable();
        seen.seqs.dedup();
        doubled += total - seen.seqs.len();
        let have = seen.seqs.iter().filter(|s| **s <= want).count() as i64;
        if have < want {
            clients_losing += 1;
            lost += want - have;
        }
    }
    let back_ms = latency(back);
    eprintln!(
        "storm: back p50 {:.0} ms, max {:.0} ms; {never_back} never back; {failed} failed attempts; {lost} messages lost by {clients_losing} clients; {doubled} doubled",
        back_ms.p50_ms, back_ms.max_ms
    );
    Ok(Outcome {
        json: json!({"scenario": "storm", "clients": clients, "connected": connected, "rooms": rooms, "rate": rate,
            "back_ms": back_ms, "never_back": never_back, "failed_attempts": failed,
            "lost": lost, "clients_losing": clients_losing, "doubled": doubled}),
        row: format!(
            "| storm | {connected} clients of a SIGKILLed gateway reconnect to the other and `sync`; {rooms} rooms, {rate} msg/s throughout | all back in {:.1} s (p50 {:.1} s), {never_back} never back, {failed} refused attempts, {lost} messages lost, {doubled} doubled | back ≤ 30 s, none lost |",
            back_ms.max_ms / 1000.0,
            back_ms.p50_ms / 1000.0
        ),
    })
}
