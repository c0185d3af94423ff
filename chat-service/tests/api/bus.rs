//! The send stream: gateways XADD commands, chat-service persists them in batches and answers
//! each with an `ack` or a `send_failed` on the sender's channel.

use std::time::Duration;

use chat_service::worker::{BATCH_FIELD, COMMAND_FIELD};
use fred::prelude::*;
use shared::chat::{encode, ChatType, Event, MessageType, SendCommand};
use sqlx::PgPool;
use uuid::Uuid;

use crate::helpers::{redis_url, spawn_app, spawn_app_with, TestApp, Watcher, PARTITIONS, SECRET};

pub(crate) async fn redis() -> Client {
    let c = Builder::from_config(Config::from_url(&redis_url()).unwrap())
        .build()
        .unwrap();
    c.init().await.unwrap();
    c
}

pub(crate) fn command(
    user: Uuid,
    chat_type: ChatType,
    chat_id: Uuid,
    client_id: &str,
    content: &str,
) -> SendCommand {
    SendCommand {
        user_id: user,
        session_id: "session-1".into(),
        client_id: client_id.into(),
        chat_type,
        chat_id,
        content: content.into(),
        message_type: MessageType::Text,
        reply_to_id: None,
        attachment_id: None,
        traceparent: None,
    }
}

/// What became of `n` commands, by `client_id`: "ack", or the code they were refused with.
/// Messages are passed over; any other event fails the test.
pub(crate) async fn outcomes(
    watcher: &mut Watcher,
    n: usize,
) -> std::collections::BTreeMap<String, String> {
    let mut outcomes = std::collections::BTreeMap::new();
    while outcomes.len() < n {
        match watcher.next().await.1 {
            Event::SendFailed {
                client_id, code, ..
            } => {
                outcomes.insert(client_id, code);
            }
            Event::Ack { client_id, .. } => {
                outcomes.insert(client_id, "ack".into());
            }
            Event::Message { .. } => {}
            other => panic!("{other:?}"),
        }
    }
    outcomes
}

/// How many entries of the send stream are delivered but not yet acknowledged.
pub(crate) async fn pending(redis: &Client, app: &TestApp) -> i64 {
    type Summary = (
        i64,
        Option<String>,
        Option<String>,
        Option<Vec<(String, String)>>,
    );
    let mut total = 0;
    for partition in 0..PARTITIONS {
        let summary: Summary = redis
            .xpending(app.keys.send_stream(partition), "chat-service", ())
            .await
            .unwrap_or((0, None, None, None));
        total += summary.0;
    }
    total
}

/// Entries in the send stream, over every partition.
pub(crate) async fn stream_length(redis: &Client, app: &TestApp) -> i64 {
    let mut total = 0;
    for partition in 0..PARTITIONS {
        let n: i64 = redis.xlen(app.keys.send_stream(partition)).await.unwrap();
        total += n;
    }
    total
}

pub(crate) async fn push(redis: &Client, app: &TestApp, commands: &[SendCommand]) {
    for c in commands {
        let (stream, fields) = entry(app, c);
        let _: String = redis.xadd(stream, false, None, "*", fields).await.unwrap();
    }
}

/// As [`push`], in one round trip: the whole backlog is in place before a replica reads any.
pub(crate) async fn push_at_once(redis: &Client, app: &TestApp, commands: &[SendCommand]) {
    let pipe = redis.pipeline();
    for c in commands {
        let (stream, fields) = entry(app, c);
        pipe.xadd::<(), _, _, _, _>(stream, false, None, "*", fields)
            .await
            .unwrap();
    }
    pipe.all::<()>().await.unwrap();
}

/// The stream a gateway appends `c` to, and the entry's fields.
fn entry(app: &TestApp, c: &SendCommand) -> (String, Vec<(&'static str, Vec<u8>)>) {
    (
        app.keys.send_stream(c.partition(PARTITIONS)),
        vec![(COMMAND_FIELD, encode(c).unwrap())],
    )
}

/// As [`entry`], for commands a gateway gathered into one entry (all of one conversation).
fn gathered(app: &TestApp, commands: &[SendCommand]) -> (String, Vec<(&'static str, Vec<u8>)>) {
    (
        app.keys.send_stream(commands[0].partition(PARTITIONS)),
        vec![(BATCH_FIELD, encode(&commands).unwrap())],
    )
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn commands_are_persisted_and_acknowledged(db: PgPool) {
    let app = spawn_app(db).await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let room = app.room(&alice, "r", &[&bob]).await;
    let mut watcher = app
        .watch(vec![
            app.keys.user_channel(alice.id),
            app.keys.conversation_channel(room),
        ])
        .await;
    let redis = redis().await;
    let commands: Vec<_> = (0..20)
        .map(|i| {
            command(
                alice.id,
                ChatType::Room,
                room,
                &format!("c{i}"),
                &format!("m{i}"),
            )
        })
        .collect();
    push(&redis, &app, &commands).await;
    // A redelivered (repeated) command.
    push(&redis, &app, &commands[3..4]).await;

    let mut acks = Vec::new();
    let mut messages = 0;
    // Acks and messages travel different channels (on a cluster, different servers): either
    // may come first.
    while acks.len() < 21 || messages < 20 {
        match watcher.next().await.1 {
            Event::Ack {
                session_id,
                client_id,
                message,
                ..
            } => {
                assert_eq!(session_id, "session-1");
                assert_eq!(message.client_id.as_deref(), Some(client_id.as_str()));
                acks.push((client_id, message.seq));
            }
            Event::Message { .. } => messages += 1,
            other => panic!("{other:?}"),
        }
    }
    assert!(messages >= 20);
    let repeated: Vec<_> = acks.iter().filter(|(c, _)| c == "c3").collect();
    assert_eq!(repeated.len(), 2);
    assert_eq!(
        repeated[0].1, repeated[1].1,
        "the repeat is the same message"
    );
    let seqs: Vec<i64> = sqlx::query_scalar("SELECT seq FROM messages ORDER BY seq")
        .fetch_all(&app.db)
        .await
        .unwrap();
    assert_eq!(seqs, (1..=20).collect::<Vec<_>>());
    let pending = pending(&redis, &app).await;
    assert_eq!(pending, 0, "everything acknowledged");
    let mut length: i64 = -1;
    for _ in 0..50 {
        length = stream_length(&redis, &app).await;
        if length == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        length, 0,
        "processed entries are deleted, so the stream does not grow"
    );
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn a_worker_whose_connections_died_persists_on_new_ones(db: PgPool) {
    let app = spawn_app(db).await;
    let alice = app.user("alice").await;
    let room = app.room(&alice, "r", &[]).await;
    let mut watcher = app.watch(vec![app.keys.user_channel(alice.id)]).await;
    let redis = redis().await;
    let mut seqs = Vec::new();
    for (i, kill) in [false, true, false].into_iter().enumerate() {
        if kill {
            // Every connection to the test database but this one: the send loops' pooled
            // ones among them, taken again at once (a pool checks only those idle for a
            // second), so the next batch meets a dead connection and is retried.
            let killed: Vec<bool> = sqlx::query_scalar(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                 WHERE datname = current_database() AND pid <> pg_backend_pid()",
            )
            .fetch_all(&app.db)
            .await
            .unwrap();
            assert!(killed.len() >= 2, "the services' pools hold connections");
        }
        let client_id = format!("k{i}");
        let c = command(alice.id, ChatType::Room, room, &client_id, "hello");
        push(&redis, &app, &[c]).await;
        let ack = tokio::time::timeout(Duration::from_secs(15), ack_of(&mut watcher, &client_id))
            .await
            .expect("acknowledged once the worker has new connections");
        seqs.push(ack);
    }
    assert_eq!(seqs, vec![1, 2, 3]);
    assert_eq!(pending(&redis, &app).await, 0);
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn refused_commands_get_send_failed_and_garbage_is_dropped(db: PgPool) {
    let app = spawn_app(db).await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let room = app.room(&bob, "bobs", &[]).await;
    let mut watcher = app.watch(vec![app.keys.user_channel(alice.id)]).await;
    let redis = redis().await;
    let _: String = redis
        .xadd(
            app.keys.send_stream(0),
            false,
            None,
            "*",
            vec![(COMMAND_FIELD, b"not msgpack".to_vec())],
        )
        .await
        .unwrap();
    push(
        &redis,
        &app,
        &[
            command(alice.id, ChatType::Room, room, "a", "not a member"),
            command(alice.id, ChatType::Private, Uuid::new_v4(), "b", "nobody"),
            command(alice.id, ChatType::Private, bob.id, "c", ""),
            command(alice.id, ChatType::Private, bob.id, "d", "fine"),
        ],
    )
    .await;
    let outcomes = outcomes(&mut watcher, 4).await;
    assert_eq!(outcomes["a"], "forbidden");
    assert_eq!(outcomes["b"], "not_found");
    assert_eq!(outcomes["c"], "invalid_payload");
    assert_eq!(outcomes["d"], "ack");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pending = pending(&redis, &app).await;
    assert_eq!(pending, 0, "garbage is acknowledged, not retried for ever");
}

/// Gateways gather the sends that arrive while their previous `XADD` is under way into one
/// entry: its commands are judged one by one (one refused, the rest stored in order), and an
/// entry that cannot be decoded is acknowledged and dropped without holding up the others.
#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn an_entry_of_several_commands_is_judged_command_by_command(db: PgPool) {
    let app = spawn_app(db).await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let room = app.room(&alice, "r", &[]).await;
    let bobs = app.room(&bob, "bobs", &[]).await;
    let mut watcher = app.watch(vec![app.keys.user_channel(alice.id)]).await;
    let redis = redis().await;
    let xadd = |field: &'static str, bytes: Vec<u8>| {
        let redis = redis.clone();
        let stream = app.keys.send_stream(0);
        async move {
            let _: String = redis
                .xadd(stream, false, None, "*", vec![(field, bytes)])
                .await
                .unwrap();
        }
    };
    let first: Vec<SendCommand> = (0..5)
        .map(|i| command(alice.id, ChatType::Room, room, &format!("a{i}"), "hi"))
        .chain([command(alice.id, ChatType::Room, bobs, "refused", "no")])
        .collect();
    xadd(BATCH_FIELD, encode(&first).unwrap()).await;
    xadd(BATCH_FIELD, b"not msgpack".to_vec()).await;
    push(
        &redis,
        &app,
        &[command(alice.id, ChatType::Room, room, "single", "hi")],
    )
    .await;
    let second: Vec<SendCommand> = (5..8)
        .map(|i| command(alice.id, ChatType::Room, room, &format!("a{i}"), "hi"))
        .collect();
    xadd(BATCH_FIELD, encode(&second).unwrap()).await;

    let mut outcomes = std::collections::BTreeMap::new();
    while outcomes.len() < 10 {
        match watcher.next().await.1 {
            Event::SendFailed {
                client_id, code, ..
            } => {
                outcomes.insert(client_id, code);
            }
            Event::Ack {
                client_id, message, ..
            } => {
                outcomes.insert(client_id, message.seq.to_string());
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(outcomes["refused"], "forbidden");
    let stored: Vec<(String, i64)> =
        sqlx::query_as("SELECT client_id, seq FROM messages ORDER BY seq")
            .fetch_all(&app.db)
            .await
            .unwrap();
    let mut order: Vec<&str> = stored.iter().map(|(c, _)| c.as_str()).collect();
    // An entry's commands are stored in its order; separate entries may be taken by different
    // worker loops, so only their sets are compared.
    let within = |ids: &[&str]| {
        order.iter().filter(|c| ids.contains(c)).count() == ids.len()
            && order.iter().filter(|c| ids.contains(c)).eq(ids.iter())
    };
    assert!(within(&["a0", "a1", "a2", "a3", "a4"]), "{order:?}");
    assert!(within(&["a5", "a6", "a7"]), "{order:?}");
    order.sort_unstable();
    assert_eq!(
        order,
        ["a0", "a1", "a2", "a3", "a4", "a5", "a6", "a7", "single"],
        "each stored once"
    );
    for (client_id, seq) in &stored {
        assert_eq!(outcomes[client_id], seq.to_string(), "{client_id}");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(pending(&redis, &app).await, 0, "every entry acknowledged");
}

/// A read that brings more than `SEND_BATCH_SIZE` commands is persisted as several batches of
/// whole entries, in stream order: with batches of 4 and entries of 3 commands, every entry is
/// a transaction of its own (its messages share one `created_at`, the entries' all differ).
/// The entries wait in the stream before any worker runs, so the first read takes all four.
#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn a_large_read_is_persisted_as_batches_in_order(db: PgPool) {
    let prefix = format!("test:{}:", Uuid::new_v4());
    let app = spawn_app_with(db.clone(), &prefix, |c| c.run_send_worker = false).await;
    let alice = app.user("alice").await;
    let room = app.room(&alice, "r", &[]).await;
    let mut watcher = app.watch(vec![app.keys.user_channel(alice.id)]).await;
    let redis = redis().await;
    let pipe = redis.pipeline();
    for e in 0..4 {
        let commands: Vec<SendCommand> = (0..3)
            .map(|i| command(alice.id, ChatType::Room, room, &format!("e{e}c{i}"), "hi"))
            .collect();
        let (stream, fields) = gathered(&app, &commands);
        pipe.xadd::<(), _, _, _, _>(stream, false, None, "*", fields)
            .await
            .unwrap();
    }
    pipe.all::<()>().await.unwrap();
    let _worker = spawn_app_with(db, &prefix, |c| c.worker.batch_size = 4).await;
    let mut acked = 0;
    while acked < 12 {
        if let Event::Ack { .. } = watcher.next().await.1 {
            acked += 1;
        }
    }
    let stored: Vec<(String, i64, chrono::DateTime<chrono::Utc>)> =
        sqlx::query_as("SELECT client_id, seq, created_at FROM messages ORDER BY seq")
            .fetch_all(&app.db)
            .await
            .unwrap();
    let order: Vec<String> = stored.iter().map(|(c, _, _)| c.clone()).collect();
    let expected: Vec<String> = (0..4)
        .flat_map(|e| (0..3).map(move |i| format!("e{e}c{i}")))
        .collect();
    assert_eq!(order, expected, "stored once each, in stream order");
    for entry in stored.chunks(3) {
        assert!(
            entry.iter().all(|(_, _, at)| *at == entry[0].2),
            "an entry is one batch: {entry:?}"
        );
    }
    let mut times: Vec<_> = stored.iter().map(|(_, _, at)| *at).collect();
    times.dedup();
    assert_eq!(times.len(), 4, "each entry a batch of its own: {stored:?}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(pending(&redis, &app).await, 0, "every entry acknowledged");
}

/// The chat-service binary as a replica of `prefix`'s deployment on the test's database, its
/// output discarded; the caller adds settings and spawns it.
fn chat_service_binary(db: &PgPool, prefix: &str) -> std::process::Command {
    let database = db.connect_options().get_database().unwrap().to_owned();
    let base = std::env::var("DATABASE_URL").unwrap();
    let url = format!("{}/{}", &base[..base.rfind('/').unwrap()], database);
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_chat-service"));
    command
        .env_clear()
        .env("DATABASE_URL", url)
        .env("REDIS_URL", redis_url())
        .env("REDIS_PREFIX", prefix)
        .env("SECRET_KEY", SECRET)
        .env("HOST", "127.0.0.1")
        .env("PORT", "0")
        .env("AUTH_SERVICE_URL", "")
        .env("SEND_CLAIM_IDLE_MS", "1000")
        .env("SEND_PARTITIONS", PARTITIONS.to_string())
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    command
}

/// The real binary is SIGKILLed while it works through a backlog, then started again: every
/// command ends up stored exactly once, with gap-free seqs.
#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn a_killed_worker_loses_nothing_and_stores_nothing_twice(db: PgPool) {
    const TOTAL: i64 = 3000;
    let prefix = format!("test:{}:", Uuid::new_v4());
    let setup = spawn_app_with(db.clone(), &prefix, |c| c.run_send_worker = false).await;
    let alice = setup.user("alice").await;
    let room = setup.room(&alice, "r", &[]).await;
    let redis = redis().await;
    let commands: Vec<_> = (0..TOTAL)
        .map(|i| {
            command(
                alice.id,
                ChatType::Room,
                room,
                &format!("k{i}"),
                &format!("m{i}"),
            )
        })
        .collect();
    push(&redis, &setup, &commands).await;

    let start = || {
        chat_service_binary(&db, &prefix)
            .env("SEND_BATCH_SIZE", "50")
            .spawn()
            .unwrap()
    };
    let count = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM messages")
            .fetch_one(&db)
            .await
            .unwrap()
    };

    let mut first = start();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while count().await == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the worker never started"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    first.kill().unwrap(); // SIGKILL: no cleanup, no acknowledgement of the batch under way.
    first.wait().unwrap();
    let at_kill = count().await;
    assert!(at_kill < TOTAL, "killed mid-backlog ({at_kill} stored)");

    let mut second = start();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let pending = pending(&redis, &setup).await;
        let stored = count().await;
        if stored == TOTAL && pending == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "stuck at {stored} stored, {} pending",
            pending
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    second.kill().unwrap();
    second.wait().unwrap();

    let distinct: i64 = sqlx::query_scalar("SELECT count(DISTINCT client_id) FROM messages")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(distinct, TOTAL);
    let seqs: Vec<i64> = sqlx::query_scalar("SELECT seq FROM messages ORDER BY seq")
        .fetch_all(&db)
        .await
        .unwrap();
    assert_eq!(seqs, (1..=TOTAL).collect::<Vec<_>>());
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn a_lost_stream_and_group_are_created_again(db: PgPool) {
    let app = spawn_app(db).await;
    let alice = app.user("alice").await;
    let room = app.room(&alice, "r", &[]).await;
    let mut watcher = app.watch(vec![app.keys.user_channel(alice.id)]).await;
    let redis = redis().await;
    push(
        &redis,
        &app,
        &[command(alice.id, ChatType::Room, room, "before", "1")],
    )
    .await;
    loop {
        if let Event::Ack { client_id, .. } = watcher.next().await.1 {
            assert_eq!(client_id, "before");
            break;
        }
    }
    // What a Redis restart without persistence does: the stream, and its group, are gone.
    for partition in 0..PARTITIONS {
        let _: i64 = redis.del(app.keys.send_stream(partition)).await.unwrap();
    }
    let mut after = None;
    for i in 0..100 {
        // Entries appended while no group exists are read once the group is made again
        // (from the stream's start); keep appending until one is answered.
        push(
            &redis,
            &app,
            &[command(
                alice.id,
                ChatType::Room,
                room,
                &format!("after{i}"),
                "2",
            )],
        )
        .await;
        let answered = tokio::time::timeout(Duration::from_millis(100), async {
            loop {
                if let Event::Ack { client_id, .. } = watcher.next().await.1 {
                    return client_id;
                }
            }
        })
        .await;
        if let Ok(client_id) = answered {
            after = Some(client_id);
            break;
        }
    }
    assert!(
        after.is_some_and(|c| c.starts_with("after")),
        "the workers made the group again and went on"
    );
}

/// Waits for the `ack` of `client_id` on `watcher`, skipping other events.
async fn ack_of(watcher: &mut crate::helpers::Watcher, client_id: &str) -> i64 {
    loop {
        if let (
            _,
            Event::Ack {
                client_id: c,
                message,
                ..
            },
        ) = watcher.next().await
        {
            if c == client_id {
                return message.seq;
            }
        }
    }
}

/// Group commit: while sends are few (fewer than `LIGHT_LOAD` per interval) each is taken as it
/// comes; once they come fast (at least `HEAVY_LOAD` per interval) the loop waits for its whole
/// interval and batches them; after a quiet spell a send is taken at once again.
#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn quiet_sends_go_at_once_and_busy_ones_wait_for_the_interval(db: PgPool) {
    const INTERVAL: Duration = Duration::from_millis(1000);
    let prefix = format!("test:{}:", Uuid::new_v4());
    let app = spawn_app_with(db, &prefix, |c| {
        c.worker.batch_interval = INTERVAL;
    })
    .await;
    let alice = app.user("alice").await;
    let room = app.room(&alice, "r", &[]).await;
    let mut watcher = app.watch(vec![app.keys.user_channel(alice.id)]).await;
    let redis = redis().await;
    let send = |id: &str| command(alice.id, ChatType::Room, room, id, id);

    // The loop is idle: a send is persisted at once, and so is the next one, though it comes
    // well within the interval (the old pacing held it for the whole interval).
    let pushed = std::time::Instant::now();
    push(&redis, &app, &[send("a")]).await;
    assert_eq!(ack_of(&mut watcher, "a").await, 1);
    push(&redis, &app, &[send("b")]).await;
    assert_eq!(ack_of(&mut watcher, "b").await, 2);
    assert!(
        pushed.elapsed() < INTERVAL / 2,
        "two sends on an idle loop took {:?}",
        pushed.elapsed()
    );
    // Then 20 sends in one entry, milliseconds later: far above 40 a second (HEAVY_LOAD per
    // interval). They go at once (the loop was not waiting), and the next two wait for the
    // whole interval after them and go together.
    let burst: Vec<SendCommand> = (0..20).map(|i| send(&format!("burst{i}"))).collect();
    let burst_pushed = std::time::Instant::now();
    let (stream, fields) = gathered(&app, &burst);
    let _: String = redis.xadd(stream, false, None, "*", fields).await.unwrap();
    assert_eq!(ack_of(&mut watcher, "burst19").await, 22);
    push(&redis, &app, &[send("c")]).await;
    push(&redis, &app, &[send("d")]).await;
    assert_eq!(ack_of(&mut watcher, "c").await, 23);
    assert!(
        burst_pushed.elapsed() >= INTERVAL,
        "the batch after the burst began {:?} after it was pushed",
        burst_pushed.elapsed()
    );
    assert_eq!(ack_of(&mut watcher, "d").await, 24);
    // `created_at` is the transaction's start: one value per batch.
    let batches: Vec<i64> =
        sqlx::query_scalar("SELECT count(*) FROM messages GROUP BY created_at ORDER BY min(seq)")
            .fetch_all(&app.db)
            .await
            .unwrap();
    assert_eq!(
        batches,
        vec![1, 1, 20, 2],
        "c and d were persisted in one batch"
    );

    // After a quiet spell, a send is taken at once again.
    tokio::time::sleep(INTERVAL + Duration::from_millis(200)).await;
    let lone = std::time::Instant::now();
    push(&redis, &app, &[send("e")]).await;
    assert_eq!(ack_of(&mut watcher, "e").await, 25);
    assert!(
        lone.elapsed() < INTERVAL / 2,
        "a send after a quiet spell waited {:?}",
        lone.elapsed()
    );
}

/// Two replicas share the partitions; the one running as a real binary is SIGKILLed mid-backlog:
/// the other takes its partitions when their leases run out, takes over what it had read, and
/// every room's sends end up stored once each, in the order they were appended.
#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn a_killed_replicas_partitions_move_and_each_room_keeps_its_order(db: PgPool) {
    const ROOMS: usize = 8;
    const EACH: usize = 150;
    let prefix = format!("test:{}:", Uuid::new_v4());
    let app = spawn_app_with(db.clone(), &prefix, |c| c.worker.batch_size = 20).await;
    let alice = app.user("alice").await;
    let mut rooms = Vec::new();
    for i in 0..ROOMS {
        rooms.push(app.room(&alice, &format!("r{i}"), &[]).await);
    }
    let redis = redis().await;

    let mut other = chat_service_binary(&db, &prefix)
        .env("SEND_LEASE_MS", "1500")
        .env("SEND_BATCH_SIZE", "20")
        .env("SEND_BATCH_INTERVAL_MS", "20")
        .spawn()
        .unwrap();
    let holders = || async {
        let mut holders = Vec::new();
        for p in 0..PARTITIONS {
            let h: Option<String> = redis.get(app.keys.send_lease(p)).await.unwrap();
            holders.push(h);
        }
        holders
    };
    // The two replicas share the partitions: two each.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let split = loop {
        let h = holders().await;
        let mut distinct: Vec<&String> = h.iter().flatten().collect();
        distinct.sort();
        distinct.dedup();
        if h.iter().all(Option::is_some) && distinct.len() == 2 {
            break h;
        }
        assert!(tokio::time::Instant::now() < deadline, "never split: {h:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    let commands: Vec<SendCommand> = (0..EACH)
        .flat_map(|i| rooms.iter().map(move |room| (i, *room)).collect::<Vec<_>>())
        .map(|(i, room)| {
            command(
                alice.id,
                ChatType::Room,
                room,
                &format!("{room}-{i:04}"),
                &format!("m{i}"),
            )
        })
        .collect();
    // Appended in one round trip, so the backlog is there before the replicas can drain it
    // (one XADD at a time, a busy machine's replicas kept up with the pushing).
    push_at_once(&redis, &app, &commands).await;
    let stored = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM messages")
            .fetch_one(&db)
            .await
            .unwrap()
    };
    while stored().await < (ROOMS * EACH / 4) as i64 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    other.kill().unwrap(); // SIGKILL: its leases and its batch under way are left as they are.
    other.wait().unwrap();
    assert!(stored().await < (ROOMS * EACH) as i64, "killed mid-backlog");

    // Everything stored, nothing pending, and the dead replica's leases taken over: the backlog
    // can be finished before those leases run out (when the dead replica had already emptied
    // its partitions), so the move is waited for too, not checked once.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (n, pending) = (stored().await, pending(&redis, &app).await);
        let now = holders().await;
        let moved = now.iter().all(|h| h.is_some() && *h == now[0]);
        if n == (ROOMS * EACH) as i64 && pending == 0 && moved {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "stuck at {n} stored, {pending} pending, partitions held by {now:?} (before: {split:?})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for room in &rooms {
        let ids: Vec<String> =
            sqlx::query_scalar("SELECT client_id FROM messages WHERE room_id = $1 ORDER BY seq")
                .bind(room)
                .fetch_all(&db)
                .await
                .unwrap();
        let want: Vec<String> = (0..EACH).map(|i| format!("{room}-{i:04}")).collect();
        assert_eq!(ids, want, "room {room}: once each, in append order");
    }
}
