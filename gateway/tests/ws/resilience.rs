use std::{process::Stdio, time::Duration};

use fred::prelude::*;
use futures_util::SinkExt;
use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;

use crate::helpers::{
    eventually, message_seqs, push_bulk, redis, redis_url, stack, Client, Stack, SECRET,
};

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn a_redis_reconnect_loses_nothing(db: PgPool) {
    if redis_url().starts_with("redis-cluster") {
        // A cluster subscriber holds a connection per primary, on servers this test cannot
        // tell apart by client id; cluster::a_primary_restart_loses_nothing cuts them instead.
        return;
    }
    let s = stack(db, 2, |_| {}).await;
    let alice = s.user("alice").await;
    let bob = s.user("bob").await;
    let room = s.room(&alice, "r", &[&bob]).await;
    let mut b = s.connect(1, &bob).await;
    const N: i64 = 60;
    let sender = {
        let http = s.http.clone();
        let url = format!("{}/chat/messages/room/{room}", s.chat[0]);
        let token = alice.token.clone();
        tokio::spawn(async move {
            for i in 1..=N {
                let r = http
                    .post(&url)
                    .bearer_auth(&token)
                    .json(&json!({"content": format!("m{i}")}))
                    .send()
                    .await
                    .unwrap();
                assert!(r.status().is_success());
                // Within the user's send rate (20/s after a burst of 40).
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
        })
    };
    // Cut bob's gateway off from Redis pub/sub mid-stream: whatever is published meanwhile is
    // lost to it, and must be repaired from history.
    tokio::time::sleep(Duration::from_millis(150)).await;
    let admin = redis().await;
    let killed: i64 = admin
        .custom(
            fred::types::CustomCommand::new_static("CLIENT", None, false),
            vec![
                "KILL".to_owned(),
                "ID".to_owned(),
                s.gateways[1].subscriber_id.to_string(),
            ],
        )
        .await
        .unwrap();
    assert_eq!(killed, 1, "the subscriber connection was killed");
    sender.await.unwrap();
    let mut seqs = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while seqs.last() != Some(&N) && tokio::time::Instant::now() < deadline {
        seqs.extend(message_seqs(
            &b.drain(Duration::from_millis(300)).await,
            room,
        ));
    }
    assert_eq!(
        seqs,
        (1..=N).collect::<Vec<_>>(),
        "in order, none missing, none twice"
    );
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn a_client_that_never_reads_is_closed_and_delays_nobody(db: PgPool) {
    // A small queue, so the silent client is found out soon; bursts of a whole send batch (64
    // here) still fit in what a connection catching up may hold.
    let s = stack(db, 1, |c| c.outbound_queue = 32).await;
    never_reading_client_is_closed(s, 2000).await;
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn what_a_silent_client_has_not_read_is_bounded_by_the_queue_not_the_kernel(db: PgPool) {
    // The default queue (256 frames) and socket send buffer. An autotuned kernel send buffer
    // (up to 4 MiB) would take about a thousand of these 3.5 KB frames before the queue saw
    // any, so that 1,500 of them never reach the queue's burst limit (1,024) and the client is
    // never found out; with the buffer fixed they do, and it is closed.
    let s = stack(db, 1, |_| {}).await;
    never_reading_client_is_closed(s, 1500).await;
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn a_client_that_stops_reading_with_frames_due_is_closed_once_the_room_is_quiet(db: PgPool) {
    // Short heartbeats, and a grace the queue never outlasts: 300 frames of 3.5 KB fill the
    // socket's buffers and leave the queue under its capacity (256), so only the stalled write
    // can tell. While it waits, the connection's loop does nothing else: without a limit on
    // the write, no ping and no silence check ever ran again.
    let s = stack(db, 1, |c| {
        c.heartbeat_interval = Duration::from_secs(1);
        c.slow_consumer_grace = Duration::from_secs(600);
    })
    .await;
    let alice = s.user("alice").await;
    let slow = s.user("slow").await;
    let room = s.room(&alice, "r", &[&slow]).await;
    let mut a = s.connect(0, &alice).await;
    let _slow_ws = silent_client(&s, &slow).await;
    let hub = &s.gateways[0].gateway.hub;
    assert!(eventually(Duration::from_secs(2), || hub.connection_count() == 2).await);

    push_bulk(&s.prefix, alice.id, room, 300, 3500).await;
    // The reader keeps reading (and answering pings) while the silent one is judged.
    let mut seqs = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while tokio::time::Instant::now() < deadline && (seqs.len() < 300 || hub.connection_count() > 1)
    {
        seqs.extend(message_seqs(
            &a.drain(Duration::from_millis(200)).await,
            room,
        ));
    }
    assert_eq!(
        seqs,
        (1..=300).collect::<Vec<_>>(),
        "the reader got everything"
    );
    assert_eq!(hub.connection_count(), 1, "the silent client was closed");
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn a_client_that_pings_and_never_reads_its_pongs_is_closed(db: PgPool) {
    // Every ping is answered by a pong the gateway writes at once. A client that sends pings
    // and reads nothing fills its socket's buffers with pongs, and the next pong's write
    // waits for good: no message is due, so only a limit on every write of the connection's
    // loop (pongs and the gateway's own pings too, not only queued frames) can tell.
    // Read at any pace: this is about the writes, not the reads.
    let s = stack(db, 1, |c| {
        c.heartbeat_interval = Duration::from_secs(1);
        c.inbound_frame_rate = shared::limits::Rate {
            per_second: 1_000_000,
            burst: 1_000_000,
        };
    })
    .await;
    let slow = s.user("slow").await;
    let mut ws = silent_client(&s, &slow).await;
    let hub = &s.gateways[0].gateway.hub;
    assert!(eventually(Duration::from_secs(2), || hub.connection_count() == 1).await);
    let mut sent = 0;
    for _ in 0..20_000 {
        let ping = tokio_tungstenite::tungstenite::Message::Ping(vec![7u8; 125].into());
        // Once the gateway stops reading (its loop waits on a pong), the client's own
        // buffers fill and its sends block too.
        match tokio::time::timeout(Duration::from_millis(200), ws.send(ping)).await {
            Ok(Ok(())) => sent += 1,
            _ => break,
        }
    }
    assert!(sent > 100, "the gateway read some pings first ({sent})");
    assert!(
        eventually(Duration::from_secs(10), || hub.connection_count() == 0).await,
        "the client that never read its pongs was closed ({sent} pings sent)"
    );
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn a_client_that_reads_slowly_but_steadily_keeps_its_connection(db: PgPool) {
    // 1 s heartbeats: a write the socket takes nothing of for 3 s is a stall. 80 frames of
    // 4,000 characters (about 350 KB; a batch of 64 of them is one write) read at about 50 KB/s
    // take some 7 s, a batch over 5 s: the client is slow, never stalled, and must get every
    // frame. Before, a write not done within three intervals closed it (4008), and a client
    // silent while a long write waited was reaped as dead once it was done. A small socket
    // buffer (16 KiB) makes the socket report room, and so progress, every few hundred ms at
    // that pace (the kernel wakes a writer once about half its buffer has drained), far inside
    // the 3 s even on a busy machine.
    let s = stack(db, 1, |c| {
        c.heartbeat_interval = Duration::from_secs(1);
        c.slow_consumer_grace = Duration::from_secs(600);
        c.socket_send_buffer_bytes = 16 * 1024;
    })
    .await;
    let alice = s.user("alice").await;
    let slow = s.user("slow").await;
    let room = s.room(&alice, "r", &[&slow]).await;
    let ws = silent_client(&s, &slow).await;
    let hub = &s.gateways[0].gateway.hub;
    assert!(eventually(Duration::from_secs(2), || hub.connection_count() == 1).await);
    push_bulk(&s.prefix, alice.id, room, 80, 4000).await;
    // Read the raw bytes, 1 KB every 20 ms; the frames' JSON is in them as sent.
    let mut stream = ws.into_inner();
    let mut read = Vec::new();
    let mut chunk = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    let messages = |bytes: &[u8]| {
        bytes
            .windows(16)
            .filter(|w| w == b"\"type\":\"message\"")
            .count()
    };
    while messages(&read) < 80 && tokio::time::Instant::now() < deadline {
        match tokio::io::AsyncReadExt::read(&mut stream, &mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => read.extend_from_slice(&chunk[..n]),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        messages(&read),
        80,
        "every frame reached the slow reader before any close ({} bytes, ending {:?})",
        read.len(),
        String::from_utf8_lossy(&read[read.len().saturating_sub(40)..])
    );
}

/// A client of `user` on the first gateway that upgrades, then never reads a byte (its receive
/// buffer small, so the gateway's writes soon block).
async fn silent_client(
    s: &Stack,
    user: &crate::helpers::User,
) -> tokio_tungstenite::WebSocketStream<tokio::net::TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket
        .connect(format!("127.0.0.1:{}", s.gateways[0].port).parse().unwrap())
        .await
        .unwrap();
    let (ws, _) =
        tokio_tungstenite::client_async(format!("ws://127.0.0.1/ws?token={}", user.token), stream)
            .await
            .unwrap();
    ws
}

/// A member that upgrades and then never reads a byte, while `count` large messages go to its
/// room: the reading member gets every one, in order, and the silent one is closed.
async fn never_reading_client_is_closed(s: Stack, count: i64) {
    let alice = s.user("alice").await;
    let slow = s.user("slow").await;
    let room = s.room(&alice, "r", &[&slow]).await;
    let mut a = s.connect(0, &alice).await;
    // The slow client upgrades, then never reads a byte.
    let _slow_ws = silent_client(&s, &slow).await;
    let hub = &s.gateways[0].gateway.hub;
    assert!(eventually(Duration::from_secs(2), || hub.connection_count() == 2).await);

    // Bulk sends straight onto the bus: `count` messages of 3,500 characters. Sent from another task, so the reading client reads while
    // they go out (a reader that waited for the last send would itself be a slow consumer).
    let bulk = tokio::spawn({
        let (prefix, sender) = (s.prefix.clone(), alice.id);
        async move { push_bulk(&prefix, sender, room, count, 3500).await }
    });
    let mut seqs = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while (seqs.len() as i64) < count && tokio::time::Instant::now() < deadline {
        seqs.extend(message_seqs(
            &a.drain(Duration::from_millis(200)).await,
            room,
        ));
    }
    assert_eq!(
        seqs,
        (1..=count).collect::<Vec<_>>(),
        "the reading client got everything"
    );
    bulk.await.unwrap();
    assert!(
        eventually(Duration::from_secs(5), || hub.connection_count() == 1).await,
        "the slow client was closed"
    );
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn sigterm_flushes_then_closes_with_1012(db: PgPool) {
    let mut s = stack(db, 1, |_| {}).await;
    let alice = s.user("alice").await;
    let mut c = s.connect(0, &alice).await;
    let mut d = s.connect(0, &alice).await;
    s.gateways[0].stop();
    for client in [&mut c, &mut d] {
        assert_eq!(client.close_code().await, Some(1012));
    }
    let finished = tokio::time::timeout(Duration::from_secs(6), &mut s.gateways[0].task).await;
    assert!(
        finished.is_ok(),
        "the gateway exits within its grace period"
    );
    assert!(
        Client::connect(s.gateways[0].port, &alice.token, None, None)
            .await
            .is_err(),
        "no new connections"
    );
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn presence_goes_to_contacts(db: PgPool) {
    let s = stack(db, 2, |_| {}).await;
    let alice = s.user("alice").await;
    let bob = s.user("bob").await;
    let stranger = s.user("stranger").await;
    s.send_rest(&alice, &format!("private/{}", bob.id), "hi")
        .await;
    let mut b = s.connect(1, &bob).await;
    let mut x = s.connect(1, &stranger).await;
    let a = s.connect(0, &alice).await;
    let p = b.expect("presence").await;
    assert_eq!(p["data"], json!({"user_id": alice.id, "status": "online"}));
    let online: Vec<Value> = s
        .http
        .get(format!("{}/chat/online-users", s.chat[0]))
        .bearer_auth(&bob.token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(online.len(), 3);
    // A second connection is not news; closing one of two is not either.
    let a2 = s.connect(1, &alice).await;
    drop(a);
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(a2);
    let p = b.expect("presence").await;
    assert_eq!(p["data"], json!({"user_id": alice.id, "status": "offline"}));
    let frames = b.drain(Duration::from_millis(200)).await;
    assert!(
        frames.iter().all(|f| f["type"] != "presence"),
        "exactly one online and one offline: {frames:?}"
    );
    assert!(
        x.drain(Duration::from_millis(100))
            .await
            .iter()
            .all(|f| f["type"] != "presence"),
        "strangers are not told"
    );
}

/// Presence reaches every contact of a user with hundreds of them (the events go out in
/// pipelined chunks): each of 300 group members connected gets `online` once.
#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn presence_reaches_every_one_of_many_contacts(db: PgPool) {
    let s = stack(db, 1, |_| {}).await;
    let alice = s.user("alice").await;
    let mut contacts = Vec::new();
    for i in 0..300 {
        contacts.push(s.user(&format!("member_{i}")).await);
    }
    let group = Uuid::now_v7();
    sqlx::query("INSERT INTO groups (id, name, owner_id) VALUES ($1, 'big', $2)")
        .bind(group)
        .bind(alice.id)
        .execute(&s.db)
        .await
        .unwrap();
    sqlx::query("INSERT INTO conversations (id, chat_type, group_id) VALUES ($1, 'GROUP', $1)")
        .bind(group)
        .execute(&s.db)
        .await
        .unwrap();
    let members: Vec<Uuid> = contacts.iter().map(|c| c.id).chain([alice.id]).collect();
    sqlx::query(
        "INSERT INTO conversation_members (conversation_id, user_id) SELECT $1, unnest($2::uuid[])",
    )
    .bind(group)
    .bind(&members)
    .execute(&s.db)
    .await
    .unwrap();
    let mut clients = Vec::new();
    for c in &contacts {
        clients.push(s.connect(0, c).await);
    }
    let _a = s.connect(0, &alice).await;
    // The members are each other's contacts too: each skips the others' presence.
    let alices = json!({"user_id": alice.id, "status": "online"});
    for (c, client) in contacts.iter().zip(clients.iter_mut()) {
        let mut seen = 0;
        while client.expect("presence").await["data"] != alices {
            seen += 1;
            assert!(seen < contacts.len(), "{} never heard of alice", c.name);
        }
    }
}

/// A real gateway process, for SIGKILL.
struct Process(std::process::Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn spawn_gateway_process(prefix: &str, chat_url: &str) -> (Process, u16) {
    spawn_gateway_process_logging(prefix, chat_url, None).await
}

async fn spawn_gateway_process_logging(
    prefix: &str,
    chat_url: &str,
    log: Option<&std::path::Path>,
) -> (Process, u16) {
    let port = free_port();
    let (out, err, level) = match log {
        Some(path) => {
            let file = std::fs::File::create(path).unwrap();
            (
                Stdio::from(file.try_clone().unwrap()),
                Stdio::from(file),
                "debug",
            )
        }
        None => (Stdio::null(), Stdio::null(), "warn"),
    };
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_gateway"))
        .env_clear()
        .env("REDIS_URL", redis_url())
        .env("REDIS_PREFIX", prefix)
        .env("SECRET_KEY", SECRET)
        .env("HOST", "127.0.0.1")
        .env("PORT", port.to_string())
        .env("CHAT_SERVICE_URL", chat_url)
        .env("SEND_PARTITIONS", "4")
        .env("PRESENCE_TTL_SECONDS", "2")
        .env("RUST_LOG", level)
        .stdout(out)
        .stderr(err)
        .spawn()
        .unwrap();
    let process = Process(child);
    let up = async {
        loop {
            if reqwest::get(format!("http://127.0.0.1:{port}/health"))
                .await
                .is_ok_and(|r| r.status() == 200)
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(20), up)
        .await
        .expect("the gateway process starts");
    (process, port)
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn clients_of_a_killed_gateway_reconnect_elsewhere_sync_and_miss_nothing(db: PgPool) {
    let s = stack(db, 1, |_| {}).await;
    let alice = s.user("alice").await;
    let bob = s.user("bob").await;
    let room = s.room(&alice, "r", &[&bob]).await;
    let (mut doomed, port) = spawn_gateway_process(&s.prefix, &s.chat[0]).await;
    // The container health check: `gateway health` probes the running process.
    let probe = |port: u16| {
        std::process::Command::new(env!("CARGO_BIN_EXE_gateway"))
            .arg("health")
            .env_clear()
            .env("SECRET_KEY", SECRET)
            .env("PORT", port.to_string())
            .output()
            .unwrap()
            .status
            .success()
    };
    assert!(probe(port), "healthy while running");

    let mut b = Client::connect(port, &bob.token, None, None).await.unwrap();
    b.expect("ready").await;
    for i in 1..=5 {
        s.send_rest(&alice, &format!("room/{room}"), &format!("m{i}"))
            .await;
    }
    let mut seen = Vec::new();
    while seen.len() < 5 {
        seen.extend(message_seqs(
            &b.drain(Duration::from_millis(200)).await,
            room,
        ));
    }
    // Bob is online; his gateway dies without a word.
    let online = |token: String| {
        let http = s.http.clone();
        let url = format!("{}/chat/online-users?ids={}", s.chat[0], bob.id);
        async move {
            let users: Vec<Value> = http
                .get(url)
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            users
                .iter()
                .map(|u| u["id"].as_str().unwrap().parse::<Uuid>().unwrap())
                .collect::<Vec<_>>()
        }
    };
    assert!(online(alice.token.clone()).await.contains(&bob.id));
    doomed.0.kill().unwrap();
    doomed.0.wait().unwrap();
    assert!(!probe(port), "unhealthy once dead");
    for i in 6..=10 {
        s.send_rest(&alice, &format!("room/{room}"), &format!("m{i}"))
            .await;
    }
    // The dead gateway's users leave the online list within its presence TTL (2 s here).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while online(alice.token.clone()).await.contains(&bob.id) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "bob is still listed online"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Bob reconnects to the surviving gateway and syncs from his last seq.
    let mut b = s.connect(0, &bob).await;
    let last = *seen.last().unwrap();
    b.send(
        "sync",
        json!({"positions": [{"chat_type": "room", "chat_id": room, "seq": last}]}),
    )
    .await;
    let synced = b.expect("synced").await;
    for m in synced["data"]["results"][0]["messages"].as_array().unwrap() {
        seen.push(m["seq"].as_i64().unwrap());
    }
    s.send_rest(&alice, &format!("room/{room}"), "m11").await;
    seen.extend(message_seqs(
        &b.drain(Duration::from_millis(500)).await,
        room,
    ));
    assert_eq!(seen, (1..=11).collect::<Vec<_>>());
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn tokens_never_reach_the_logs(db: PgPool) {
    let s = stack(db, 0, |_| {}).await;
    let alice = s.user("alice").await;
    let log = std::env::temp_dir().join(format!("gateway-{}.log", Uuid::new_v4()));
    let (process, port) = spawn_gateway_process_logging(&s.prefix, &s.chat[0], Some(&log)).await;
    let mut c = Client::connect(port, &alice.token, None, None)
        .await
        .unwrap();
    c.expect("ready").await;
    let forged = "leaked-token-value-that-must-not-be-logged";
    assert!(Client::connect(port, forged, None, None).await.is_err());
    drop(c);
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(process);
    let text = std::fs::read_to_string(&log).unwrap();
    let _ = std::fs::remove_file(&log);
    assert!(text.contains("/ws"), "debug logs were written: {text}");
    assert!(!text.contains(&alice.token), "a valid token was logged");
    assert!(!text.contains(forged), "a refused token was logged");
    assert!(!text.contains("token="), "a query string was logged");
}

/// A send the stream will not take (here: the stream key holds a string, so `XADD` fails with
/// WRONGTYPE) is answered at once with `unavailable` and its `client_id`; the connection stays
/// open, and the same send goes through once the stream is back.
#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn a_send_the_stream_refuses_is_answered_unavailable(db: PgPool) {
    let s = stack(db, 1, |_| {}).await;
    let alice = s.user("alice").await;
    let room = s.room(&alice, "r", &[]).await;
    let mut a = s.connect(0, &alice).await;
    let admin = redis().await;
    let keys = shared::keys::Keys::new(s.prefix.clone());
    for partition in 0..4 {
        let stream = keys.send_stream(partition);
        let _: i64 = admin.del(&stream).await.unwrap();
        let _: () = admin
            .set(&stream, "not a stream", None, None, false)
            .await
            .unwrap();
    }
    let send = json!({"content": "hi", "chat_type": "room", "chat_id": room, "client_id": "one"});
    a.send("send_message", send.clone()).await;
    let refused = a.expect("error").await;
    assert_eq!(refused["data"]["code"], "unavailable");
    assert_eq!(refused["data"]["client_id"], "one");

    for partition in 0..4 {
        let _: i64 = admin.del(keys.send_stream(partition)).await.unwrap();
    }
    a.send("send_message", send).await;
    let ack = a.expect("ack").await;
    assert_eq!(ack["data"]["client_id"], "one");
    assert_eq!(ack["data"]["message"]["seq"], 1);
}

/// Sends that reach the node's stream writer together leave in one entry, in the order they
/// were handed over; a lone send is an entry of its own.
#[tokio::test]
async fn sends_handed_over_together_share_one_entry_in_order() {
    use gateway::sends;
    use shared::chat::{decode, SendCommand, SEND_BATCH_FIELD, SEND_FIELD};

    let admin = redis().await;
    let keys = shared::keys::Keys::new(format!("test:{}:", Uuid::new_v4().simple()));
    let (handle, writer) = sends::channel(admin.clone(), keys.clone(), settings(64, 10_000));
    let conn = writer_conn();
    let command = |i: usize| room_command(conn.user, i);
    // Handed over before the writer runs: they are all waiting when it first looks.
    for i in 0..10 {
        handle.send(&conn, command(i)).await.unwrap();
    }
    assert_eq!(handle.unfinished(), 10);
    let writer = tokio::spawn(writer.run());
    assert!(eventually(Duration::from_secs(5), || handle.unfinished() == 0).await);
    handle.send(&conn, command(10)).await.unwrap();
    assert!(eventually(Duration::from_secs(5), || handle.unfinished() == 0).await);

    type Fields = Vec<(String, Vec<u8>)>;
    let entries: Vec<(String, Fields)> = admin
        .xrange(keys.send_stream(0), "-", "+", None)
        .await
        .unwrap();
    assert_eq!(entries.len(), 2, "one entry for the ten, one for the last");
    let (field, bytes) = &entries[0].1[0];
    assert_eq!(field, SEND_BATCH_FIELD);
    let gathered: Vec<SendCommand> = decode(bytes).unwrap();
    let ids: Vec<&str> = gathered.iter().map(|c| c.client_id.as_str()).collect();
    assert_eq!(ids, (0..10).map(|i| format!("c{i}")).collect::<Vec<_>>());
    let (field, bytes) = &entries[1].1[0];
    assert_eq!(field, SEND_FIELD);
    assert_eq!(decode::<SendCommand>(bytes).unwrap(), command(10));
    assert_eq!(conn.queued_len(), 0, "nobody was told of a failure");
    writer.abort();
    let _: i64 = admin.del(keys.send_stream(0)).await.unwrap();
}

/// A connection for the stream writer to answer, with no socket behind it.
fn writer_conn() -> std::sync::Arc<gateway::connection::state::ConnShared> {
    std::sync::Arc::new(gateway::connection::state::ConnShared::new(
        1,
        Uuid::new_v4(),
        "s".into(),
        gateway::protocol::Encoding::Json,
        16,
        Duration::from_secs(5),
    ))
}

/// The `i`th send of `user` to a room.
fn room_command(user: Uuid, i: usize) -> shared::chat::SendCommand {
    shared::chat::SendCommand {
        user_id: user,
        session_id: "s".into(),
        client_id: format!("c{i}"),
        chat_type: shared::chat::ChatType::Room,
        chat_id: Uuid::nil(),
        content: format!("m{i}"),
        message_type: shared::chat::MessageType::Text,
        reply_to_id: None,
        attachment_id: None,
        traceparent: None,
    }
}

fn settings(max_per_entry: usize, max_backlog: u64) -> gateway::sends::Settings {
    gateway::sends::Settings {
        max_per_entry,
        rate: shared::limits::Rate {
            per_second: 1000,
            burst: 1000,
        },
        max_backlog,
        partitions: 1,
    }
}

/// While the send stream holds more than `SEND_STREAM_MAX_ENTRIES` (nothing persists them:
/// Postgres is down, say), sends are refused at once instead of growing it; once the backlog
/// is worked off they are taken again.
#[tokio::test]
async fn a_backlogged_stream_refuses_sends_until_it_drains() {
    use gateway::sends;

    let admin = redis().await;
    let keys = shared::keys::Keys::new(format!("test:{}:", Uuid::new_v4().simple()));
    let (handle, writer) = sends::channel(admin.clone(), keys.clone(), settings(64, 5));
    let watcher = tokio::spawn(writer.watch_backlog());
    let writer = tokio::spawn(writer.run());
    let conn = writer_conn();
    let command = |i: usize| room_command(conn.user, i);
    // Six entries nobody consumes: one past the bound.
    for i in 0..6 {
        handle.send(&conn, command(i)).await.unwrap();
        assert!(eventually(Duration::from_secs(5), || handle.unfinished() == 0).await);
    }
    let mut refused = false;
    for _ in 0..50 {
        if handle.send(&conn, command(99)).await.is_err() {
            refused = true;
            break;
        }
        assert!(eventually(Duration::from_secs(5), || handle.unfinished() == 0).await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(refused, "a send past the bound is refused");
    let len: u64 = admin.xlen(keys.send_stream(0)).await.unwrap();
    assert!(len <= 8, "the stream stopped growing near the bound: {len}");
    // The consumers catch up: sends are taken again.
    let _: i64 = admin.del(keys.send_stream(0)).await.unwrap();
    let mut taken = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if handle.send(&conn, command(100)).await.is_ok() {
            taken = true;
            break;
        }
    }
    assert!(taken, "sends are taken again once the backlog is gone");
    watcher.abort();
    writer.abort();
    let _: i64 = admin.del(keys.send_stream(0)).await.unwrap();
}
