//! The benchmark scenarios. Each returns a JSON report and a markdown table row.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;

use crate::{
    raw,
    setup::Setup,
    stats::{cpu_seconds, latency, machine_cpu_since, now_us, rss_kib, CpuSnapshot, MachineCpu},
    ws,
};

pub struct Outcome {
    pub json: Value,
    pub row: String,
}

/// Idle connections: gateway RSS per connection at each checkpoint.
pub async fn idle(
    setup: &Setup,
    gateway: SocketAddr,
    pid: u32,
    checkpoints: &[usize],
    rooms_per_user: usize,
    privates_per_user: usize,
) -> anyhow::Result<Outcome> {
    let max = checkpoints.iter().copied().max().unwrap_or(0);
    let users = setup.users(max, "x").await?;
    let ids: Vec<Uuid> = users.iter().map(|u| u.id).collect();
    setup
        .memberships(&ids, rooms_per_user, privates_per_user)
        .await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let base = rss_kib(pid).unwrap_or(0);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let gate = Arc::new(Semaphore::new(128));
    let mut held = 0usize;
    let mut figures = Vec::new();
    let mut tasks = Vec::with_capacity(max);
    for &checkpoint in checkpoints {
        let mut pending = Vec::new();
        for (i, user) in users.iter().enumerate().take(checkpoint).skip(held) {
            let token = user.token.clone();
            let gate = gate.clone();
            let mut stop = stop_rx.clone();
            let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<bool>();
            pending.push(ready_rx);
            tasks.push(tokio::spawn(async move {
                let Ok(permit) = gate.acquire_owned().await else {
                    return;
                };
                let connected = ws::connect(gateway, &token, ws::source(i)).await;
                drop(permit);
                let Ok(mut socket) = connected else {
                    let _ = ready_tx.send(false);
                    return;
                };
                let _ = ready_tx.send(true);
                // Stay idle, answering the server's pings, until told to stop.
                loop {
                    tokio::select! {
                        _ = stop.changed() => break,
                        m = socket.next() => if !matches!(m, Some(Ok(_))) { break },
                    }
                }
            }));
        }
        let mut ok = 0;
        for r in pending {
            if r.await.unwrap_or(false) {
                ok += 1;
            }
        }
        held = checkpoint;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let rss = rss_kib(pid).unwrap_or(0);
        let per = (rss.saturating_sub(base)) as f64 / checkpoint.max(1) as f64;
        eprintln!("idle: {checkpoint} connections ({ok} new ok), gateway RSS {rss} KiB, {per:.2} KiB per connection");
        let total_ok = figures
            .last()
            .map_or(0, |f: &Value| f["connected"].as_u64().unwrap_or(0))
            + ok;
        figures.push(json!({"connections": checkpoint, "connected": total_ok, "gateway_rss_kib": rss, "kib_per_connection": per}));
    }
    let _ = stop_tx.send(true);
    for t in tasks {
        let _ = t.await;
    }
    let row = figures
        .iter()
        .map(|f| {
            format!(
                "{} conns: {:.2} KiB/conn",
                f["connections"],
                f["kib_per_connection"].as_f64().unwrap_or(0.0)
            )
        })
        .collect::<Vec<_>>()
        .join("; ");
    Ok(Outcome {
        json: json!({"scenario": "idle", "rooms_per_user": rooms_per_user, "privates_per_user": privates_per_user, "baseline_rss_kib": base, "checkpoints": figures}),
        row: if rooms_per_user + privates_per_user == 0 {
            format!("| idle | gateway RSS per idle connection | {row} | ≤ 6 KiB at 15k |")
        } else {
            format!("| idle | gateway RSS per idle connection, each user in {rooms_per_user} rooms of 100 and {privates_per_user} private chats | {row} | ≤ 8 KiB at 15k |")
        },
    })
}

/// Rooms × members over the gateways; senders at `rate` messages/s in all.
#[allow(clippy::too_many_arguments)]
pub async fn fanout(
    setup: &Setup,
    gateways: &[SocketAddr],
    pids: &[u32],
    rooms: usize,
    members: usize,
    rate: u64,
    seconds: u64,
    readers: usize,
) -> anyhow::Result<Outcome> {
    let users = setup.users(rooms * members, "x").await?;
    let mut room_ids = Vec::with_capacity(rooms);
    for r in 0..rooms {
        let ids: Vec<Uuid> = users[r * members..(r + 1) * members]
            .iter()
            .map(|u| u.id)
            .collect();
        room_ids.push(setup.room(&ids).await?);
    }
    setup.analyze().await?;
    let deliveries = Arc::new(AtomicU64::new(0));
    let mut senders = Vec::with_capacity(rooms);
    let gate = Arc::new(Semaphore::new(128));
    let mut connecting = Vec::new();
    for (i, user) in users.iter().enumerate() {
        let gateway = gateways[i % gateways.len()];
        let token = user.token.clone();
        let gate = gate.clone();
        connecting.push(tokio::spawn(async move {
            let _permit = gate.acquire_owned().await?;
            raw::connect(gateway, &token, ws::source(i)).await
        }));
    }
    let mut connections = Vec::with_capacity(users.len());
    for (i, c) in connecting.into_iter().enumerate() {
        // The lean client (`raw`): at 200k frames a second the generator's own reading is a
        // large share of the two cores it shares with the stack.
        let connection = c.await??;
        // Each room's first member sends; with an even member count they are all on the first
        // gateway. Spreading them over the gateways was measured: worse (docs/BENCHMARKS.md).
        if i % members == 0 {
            senders.push(connection.writer());
        }
        connections.push(connection);
    }
    let readers = raw::read_on_threads(connections, readers, |_| Received::new(&deliveries))?;
    let cpu_before: Vec<f64> = pids
        .iter()
        .map(|p| cpu_seconds(*p).unwrap_or(0.0))
        .collect();
    let machine_before = CpuSnapshot::now();
    let started = Instant::now();
    let interval = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut sent = 0u64;
    while started.elapsed() < Duration::from_secs(seconds) {
        ticker.tick().await;
        let r = (sent as usize) % rooms;
        let frame = json!({"type": "send_message", "data": {"content": format!("t{}", now_us()), "chat_type": "room", "chat_id": room_ids[r], "client_id": format!("f{sent}")}});
        // A frame this small goes into the socket's buffer at once: the write does not wait.
        let _ = raw::send_text(&senders[r], frame.to_string().as_bytes());
        sent += 1;
    }
    let window = started.elapsed().as_secs_f64();
    // Let what is in flight arrive.
    let expected = sent * members as u64;
    let deadline = Instant::now() + Duration::from_secs(10);
    while deliveries.load(Ordering::Relaxed) < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let cpu_after: Vec<f64> = pids
        .iter()
        .map(|p| cpu_seconds(*p).unwrap_or(0.0))
        .collect();
    let machine = machine_cpu_since(machine_before);
    let received = readers.stop()?;
    let delivered = deliveries.load(Ordering::Relaxed);
    let cpu: f64 = cpu_after.iter().zip(&cpu_before).map(|(a, b)| a - b).sum();
    let per_million = if delivered > 0 {
        cpu / delivered as f64 * 1e6
    } else {
        0.0
    };
    let (mut samples, mut to_gateway, mut from_gateway) = (Vec::new(), Vec::new(), Vec::new());
    for r in received {
        samples.extend(r.e2e);
        to_gateway.extend(r.to_gateway);
        from_gateway.extend(r.from_gateway);
    }
    let l = latency(samples);
    let rate_achieved = delivered as f64 / window;
    // What a delivery cost the machine, the generator's own CPU left out.
    let stack_us_per_delivery = machine
        .as_ref()
        .filter(|_| rate_achieved > 0.0)
        .map(|m| (m.busy_cores - m.generator_cores) / rate_achieved * 1e6);
    let stack_note = stack_us_per_delivery
        .map(|us| format!("; {us:.1} µs of machine CPU per delivery, generator excluded"))
        .unwrap_or_default();
    Ok(Outcome {
        json: json!({
            "stack_cpu_us_per_delivery": stack_us_per_delivery,
            "scenario": "fanout", "rooms": rooms, "members": members, "gateways": gateways.len(),
            "messages_sent": sent, "deliveries_expected": expected, "deliveries": delivered,
            "missing": expected.saturating_sub(delivered), "window_seconds": window,
            "deliveries_per_second": rate_achieved, "gateway_cpu_seconds": cpu,
            "gateway_cpu_seconds_per_million_deliveries": per_million, "latency": l,
            "latency_send_to_gateway": latency(to_gateway),
            "latency_gateway_to_client": latency(from_gateway), "machine_cpu": machine,
        }),
        row: format!(
            "| fanout | {rooms} rooms × {members} members, {} gateway(s), {rate} msg/s for {seconds} s | {rate_achieved:.0} deliveries/s; e2e p50 {:.1} ms, p99 {:.1} ms, p999 {:.1} ms; {per_million:.2} gateway CPU-s per million deliveries; {} of {expected} delivered{}{stack_note} | {} |",
            gateways.len(), l.p50_ms, l.p99_ms, l.p999_ms, delivered, machine_note(machine.as_ref()),
            fanout_target(rooms, members as u64 * rate)
        ),
    })
}

/// A reader thread's tally of the `message` frames it reads: each one's e2e latency (from the
/// send time in its content to now), and every 16th split at the frame's `timestamp` (when the
/// gateway encoded it, on receiving the event): send → gateway, and gateway → client.
struct Received {
    deliveries: Arc<AtomicU64>,
    content: memchr::memmem::Finder<'static>,
    e2e: Vec<u64>,
    to_gateway: Vec<u64>,
    from_gateway: Vec<u64>,
}

impl Received {
    fn new(deliveries: &Arc<AtomicU64>) -> Self {
        Self {
            deliveries: deliveries.clone(),
            content: memchr::memmem::Finder::new(b"\"content\":\"t"),
            e2e: Vec::new(),
            to_gateway: Vec::new(),
            from_gateway: Vec::new(),
        }
    }
}

impl raw::Tally for Received {
    fn text(&mut self, t: &[u8]) {
        // Only `message` frames (an `ack` carries the message too).
        if !t.starts_with(b"{\"type\":\"message\"") {
            return;
        }
        let Some(at) = self.content.find(t) else {
            return;
        };
        let Some(sent) = leading_number(&t[at + self.content.needle().len()..]) else {
            return;
        };
        let now = now_us();
        self.e2e.push(now.saturating_sub(sent));
        self.deliveries.fetch_add(1, Ordering::Relaxed);
        if self.e2e.len() % 16 == 0 {
            if let Some(at) = std::str::from_utf8(t).ok().and_then(frame_timestamp_us) {
                self.to_gateway.push(at.saturating_sub(sent));
                self.from_gateway.push(now.saturating_sub(at));
            }
        }
    }
}

/// The targets a fan-out run answers to, by its shape and nominal deliveries per second.
fn fanout_target(rooms: usize, deliveries_per_second: u64) -> &'static str {
    match (rooms, deliveries_per_second) {
        (1, _) => "all delivered, p99 ≤ 50 ms",
        (_, 20_000) => "p50 ≤ 4 ms, p99 ≤ 10 ms; ≤ 10 µs per delivery",
        (_, 200_000) => "p99 ≤ 40 ms; ≤ 3 µs per delivery",
        (_, 300_000) => "all delivered, p99 ≤ 100 ms",
        _ => "—",
    }
}

/// The machine's CPU over a scenario's window, for its report row ("" when /proc could not be read).
fn machine_note(machine: Option<&MachineCpu>) -> String {
    machine
        .map(|m| format!("; {}", m.describe()))
        .unwrap_or_default()
}

/// The decimal number `bytes` starts with.
fn leading_number(bytes: &[u8]) -> Option<u64> {
    let digits = bytes.iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&bytes[..digits]).ok()?.parse().ok()
}

/// When the gateway encoded a frame: its `timestamp` (RFC 3339), in µs since the epoch.
fn frame_timestamp_us(frame: &str) -> Option<u64> {
    const KEY: &str = "\"timestamp\":\"";
    let start = frame.rfind(KEY)? + KEY.len();
    let end = start + frame[start..].find('"')?;
    let at = chrono::DateTime::parse_from_rfc3339(&frame[start..end]).ok()?;
    u64::try_from(at.timestamp_micros()).ok()
}

/// The WebSocket send path at full speed: `connections` senders, each to its own room, with up
/// to `window` sends in flight; counts acks (each is a persisted message).
pub async fn ingest(
    setup: &Setup,
    gateway: SocketAddr,
    connections: usize,
    window: usize,
    seconds: u64,
) -> anyhow::Result<Outcome> {
    let users = setup.users(connections, "x").await?;
    let mut rooms = Vec::new();
    for u in &users {
        rooms.push(setup.room(&[u.id]).await?);
    }
    setup.analyze().await?;
    let before: i64 = sqlx::query_scalar("SELECT count(*) FROM messages")
        .fetch_one(&setup.db)
        .await?;
    let acks = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(seconds);
    for (i, (user, room)) in users.iter().zip(rooms).enumerate() {
        let socket = ws::connect(gateway, &user.token, ws::source(i)).await?;
        let acks = acks.clone();
        tasks.push(tokio::spawn(async move {
            let (mut sink, mut stream) = socket.split();
            let mut in_flight: HashMap<String, u64> = HashMap::new();
            let mut samples = Vec::new();
            let mut n = 0u64;
            loop {
                while in_flight.len() < window && Instant::now() < deadline {
                    let id = format!("i{i}-{n}");
                    n += 1;
                    in_flight.insert(id.clone(), now_us());
                    // Written by hand, not through a JSON value: the generator shares the
                    // machine, and its own CPU is taken from the stack it measures.
                    let frame = format!(
                        r#"{{"type":"send_message","data":{{"content":"ingest benchmark message","chat_type":"room","chat_id":"{room}","client_id":"{id}"}}}}"#
                    );
                    if sink.feed(Message::Text(frame.into())).await.is_err() {
                        return samples;
                    }
                }
                if sink.flush().await.is_err() || (in_flight.is_empty() && Instant::now() >= deadline) {
                    return samples;
                }
                match tokio::time::timeout(Duration::from_secs(10), stream.next()).await {
                    // Every message comes back twice (its `message` event, the sender being a
                    // member, and its `ack`): look only at acks, and only at their client_id.
                    Ok(Some(Ok(Message::Text(t)))) if t.starts_with("{\"type\":\"ack\"") => {
                        if let Some(sent) = client_id_of(&t).and_then(|c| in_flight.remove(c)) {
                            samples.push(now_us().saturating_sub(sent));
                            acks.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Ok(Some(Ok(Message::Text(t)))) if t.contains("\"type\":\"error\"") => {
                        let v: Value = serde_json::from_str(&t).unwrap_or(Value::Null);
                        if let Some(c) = v["data"]["client_id"].as_str() {
                            in_flight.remove(c);
                        }
                    }
                    Ok(Some(Ok(_))) => {}
                    _ => return samples,
                }
            }
        }));
    }
    let machine_before = CpuSnapshot::now();
    let started = Instant::now();
    let mut samples = Vec::new();
    for t in tasks {
        samples.extend(t.await.unwrap_or_default());
    }
    let machine = machine_cpu_since(machine_before);
    let elapsed = started.elapsed().as_secs_f64().max(seconds as f64);
    let after: i64 = sqlx::query_scalar("SELECT count(*) FROM messages")
        .fetch_one(&setup.db)
        .await?;
    let acked = acks.load(Ordering::Relaxed);
    // Each ack is a persisted message: none at all, or more acks than new rows, means the
    // scenario measured nothing real.
    anyhow::ensure!(
        acked > 0 && u64::try_from(after - before).unwrap_or(0) >= acked,
        "{acked} acks for {} new rows",
        after - before
    );
    let l = latency(samples);
    let rate = acked as f64 / elapsed;
    // What a persisted message cost the whole machine (stack and generator), which moves less
    // with the machine's speed than the rate does.
    let machine_us_per_message = machine.as_ref().map(|m| m.busy_cores / rate * 1e6);
    let per_message = machine_us_per_message
        .map(|us| format!("; {us:.0} machine CPU-µs per message"))
        .unwrap_or_default();
    Ok(Outcome {
        json: json!({"scenario": "ingest", "connections": connections, "window": window, "seconds": elapsed,
                     "acks": acked, "rows_added": after - before, "persisted_per_second": rate, "ack_latency": l,
                     "machine_cpu": machine, "machine_cpu_us_per_message": machine_us_per_message}),
        row: format!(
            "| ingest | {connections} connections × {window} in flight, {seconds} s | {rate:.0} persisted msg/s; ack p50 {:.1} ms, p99 {:.1} ms{per_message}{} | ≥ 30k/s, ack p99 ≤ 100 ms |",
            l.p50_ms, l.p99_ms, machine_note(machine.as_ref())
        ),
    })
}

/// The `client_id` of an `ack` frame as the gateway writes it (`"client_id":"…"` before the
/// message object, whose own `client_id` is the same).
fn client_id_of(frame: &str) -> Option<&str> {
    let at = frame.find("\"client_id\":\"")? + "\"client_id\":\"".len();
    let rest = &frame[at..];
    rest.find('"').map(|end| &rest[..end])
}

/// History pages of one room of `messages` messages, `workers` at a time.
pub async fn history(
    setup: &Setup,
    chat_url: &str,
    messages: i64,
    workers: usize,
    seconds: u64,
) -> anyhow::Result<Outcome> {
    let users = setup.users(1, "x").await?;
    let room = setup.room(&[users[0].id]).await?;
    let filled = Instant::now();
    setup.history(room, users[0].id, messages).await?;
    let fill_seconds = filled.elapsed().as_secs_f64();
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM messages")
        .fetch_one(&setup.db)
        .await?;
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for w in 0..workers {
        let http = http.clone();
        let token = users[0].token.clone();
        let url = format!("{chat_url}/chat/messages/room/{room}");
        tasks.push(tokio::spawn(async move {
            let mut samples = Vec::new();
            let mut k = w as i64 * 7919;
            while Instant::now() < deadline {
                k = (k * 48271 + 11) % messages.max(2);
                let t = now_us();
                let ok = http
                    .get(format!("{url}?limit=50&before={}", k + 1))
                    .bearer_auth(&token)
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success());
                if ok {
                    samples.push(now_us() - t);
                }
            }
            samples
        }));
    }
    let mut samples = Vec::new();
    for t in tasks {
        samples.extend(t.await.unwrap_or_default());
    }
    let l = latency(samples);
    Ok(Outcome {
        json: json!({"scenario": "history", "room_messages": messages, "table_messages": total, "fill_seconds": fill_seconds, "workers": workers, "pages": l.count, "latency": l}),
        row: format!(
            "| history | `GET /chat/messages` (50 per page, random `before`) in a room of {messages} messages ({total} in the table), {workers} clients | p50 {:.2} ms, p99 {:.2} ms over {} pages | p99 ≤ 5 ms |",
            l.p50_ms, l.p99_ms, l.count
        ),
    })
}

/// `GET /chat/search` over a corpus of `messages` messages in `rooms` rooms, all of which the
/// searching user has joined, `workers` clients at a time: half the queries search everywhere,
/// half one room; 60 % are one word, 25 % two words (drawn as the corpus was, so common words
/// come up often), 15 % three Chinese characters (a substring).
pub async fn search(
    setup: &Setup,
    chat_url: &str,
    messages: i64,
    rooms: usize,
    workers: usize,
    seconds: u64,
) -> anyhow::Result<Outcome> {
    let users = setup.users(1, "x").await?;
    let mut ids = Vec::new();
    for _ in 0..rooms.max(1) {
        ids.push(setup.room(&[users[0].id]).await?);
    }
    let filled = Instant::now();
    let (words, han) = setup.search_corpus(&ids, users[0].id, messages).await?;
    let fill_seconds = filled.elapsed().as_secs_f64();
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM messages")
        .fetch_one(&setup.db)
        .await?;
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let words = Arc::new(words);
    let han = Arc::new(han);
    let ids = Arc::new(ids);
    let mut tasks = Vec::new();
    for w in 0..workers {
        let (http, words, han, ids) = (http.clone(), words.clone(), han.clone(), ids.clone());
        let token = users[0].token.clone();
        let url = format!("{chat_url}/chat/search");
        tasks.push(tokio::spawn(async move {
            let mut samples: [Vec<u64>; 3] = Default::default();
            let mut errors = 0u64;
            let mut x: u64 = 0x2545_F491_4F6C_DD1D ^ (w as u64 + 1);
            let mut next = move || {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x % 1_000_000) as f64 / 1_000_000.0
            };
            let word = |r: f64| words[((5000.0 * r.powi(3)) as usize).min(words.len() - 1)].clone();
            while Instant::now() < deadline {
                let kind = next();
                let (k, q) = if kind < 0.6 {
                    (0, word(next()))
                } else if kind < 0.85 {
                    (1, format!("{} {}", word(next()), word(next())))
                } else {
                    let i = (next() * han.len() as f64) as usize % han.len();
                    (2, han.iter().cycle().skip(i).step_by(37).take(3).collect())
                };
                let mut request = http
                    .get(&url)
                    .bearer_auth(&token)
                    .query(&[("q", q.as_str()), ("limit", "20")]);
                if next() < 0.5 {
                    let room = ids[(next() * ids.len() as f64) as usize % ids.len()];
                    request = request.query(&[
                        ("chat_type", "room".to_owned()),
                        ("chat_id", room.to_string()),
                    ]);
                }
                let t = now_us();
                let ok = request.send().await.is_ok_and(|r| r.status().is_success());
                if ok {
                    samples[k].push(now_us() - t);
                } else {
                    errors += 1;
                }
            }
            (samples, errors)
        }));
    }
    let mut by_kind: [Vec<u64>; 3] = Default::default();
    let mut errors = 0;
    for t in tasks {
        if let Ok((s, e)) = t.await {
            for (all, mine) in by_kind.iter_mut().zip(s) {
                all.extend(mine);
            }
            errors += e;
        }
    }
    let all = latency(by_kind.iter().flatten().copied().collect());
    let [one, two, substring] = by_kind.map(latency);
    Ok(Outcome {
        json: json!({"scenario": "search", "messages": total, "rooms": rooms, "fill_seconds": fill_seconds, "workers": workers, "errors": errors,
                     "latency": all, "one_word": one, "two_words": two, "substring": substring}),
        row: format!(
            "| search | `GET /chat/search` over {total} messages in {rooms} joined rooms, {workers} clients; half everywhere, half one room; 60 % one word, 25 % two, 15 % a Chinese substring | p50 {:.2} ms, p99 {:.2} ms over {} queries, {errors} errors (p99: one word {:.1}, two {:.1}, substring {:.1} ms) | p99 ≤ 50 ms |",
            all.p50_ms, all.p99_ms, all.count, one.p99_ms, two.p99_ms, substring.p99_ms
        ),
    })
}

/// A login flood (`workers` at once) while one client calls `/auth/me` in a loop.
pub async fn login(
    setup: &Setup,
    auth_url: &str,
    users: usize,
    workers: usize,
    seconds: u64,
) -> anyhow::Result<Outcome> {
    let http = reqwest::Client::new();
    let name = format!("lg{}pw", setup.run);
    let password = "benchmark-password";
    let r = http
        .post(format!("{auth_url}/auth/register"))
        .json(
            &json!({"username": name, "email": format!("{name}@bench.test"), "password": password}),
        )
        .send()
        .await?;
    anyhow::ensure!(r.status().is_success(), "register failed: {}", r.status());
    let hash: String = sqlx::query_scalar("SELECT password_hash FROM users WHERE username = $1")
        .bind(&name)
        .fetch_one(&setup.db)
        .await?;
    let accounts = setup.users(users, &hash).await?;
    let names: Vec<String> = (0..users).map(|i| format!("lg{}u{i}", setup.run)).collect();
    let me_token = accounts[0].token.clone();
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let logins = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for w in 0..workers {
        let http = http.clone();
        let url = format!("{auth_url}/auth/login");
        let names = names.clone();
        let logins = logins.clone();
        tasks.push(tokio::spawn(async move {
            let mut i = w;
            while Instant::now() < deadline {
                let body = json!({"username": names[i % names.len()], "password": password});
                if http
                    .post(&url)
                    .json(&body)
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success())
                {
                    logins.fetch_add(1, Ordering::Relaxed);
                }
                i += workers;
            }
        }));
    }
    let mut me = Vec::new();
    while Instant::now() < deadline {
        let t = now_us();
        if http
            .get(format!("{auth_url}/auth/me"))
            .bearer_auth(&me_token)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            me.push(now_us() - t);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for t in tasks {
        let _ = t.await;
    }
    let done = logins.load(Ordering::Relaxed);
    let rate = done as f64 / seconds as f64;
    let l = latency(me);
    Ok(Outcome {
        json: json!({"scenario": "login", "workers": workers, "seconds": seconds, "logins": done, "logins_per_second": rate, "me_latency": l}),
        row: format!(
            "| login | {workers} concurrent logins for {seconds} s | {rate:.1} logins/s; `/auth/me` p50 {:.2} ms, p99 {:.2} ms during the flood | `/auth/me` p99 ≤ 10 ms |",
            l.p50_ms, l.p99_ms
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::{client_id_of, frame_timestamp_us, leading_number};

    #[test]
    fn an_acks_client_id_is_found_without_parsing_the_frame() {
        let frame = r#"{"type":"ack","data":{"client_id":"i3-17","message":{"client_id":"i3-17","seq":4}},"timestamp":"2026-11-26T05:00:00Z"}"#;
        assert_eq!(client_id_of(frame), Some("i3-17"));
        assert_eq!(client_id_of(r#"{"type":"ack","data":{}}"#), None);
    }

    #[test]
    fn a_leading_number_is_read() {
        assert_eq!(
            leading_number(b"1764140000123456\",\"x\""),
            Some(1_764_140_000_123_456)
        );
        assert_eq!(leading_number(b"\",\"x\""), None);
    }

    #[test]
    fn a_frames_timestamp_is_read_in_microseconds() {
        let frame = r#"{"type":"message","data":{"content":"t1"},"timestamp":"2026-11-26T05:00:00.000123Z"}"#;
        assert_eq!(frame_timestamp_us(frame), Some(1_795_669_200_000_123));
        assert_eq!(frame_timestamp_us(r#"{"type":"message","data":{}}"#), None);
    }
}
