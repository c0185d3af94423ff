//! One user must never be able to stop anyone else's sends: a command the database refuses is
//! answered and acknowledged while the rest of its batch is stored, and a command that keeps
//! failing goes to the dead letters instead of being retried for ever.

use std::{collections::BTreeMap, time::Duration};

use chat_service::worker::{BATCH_FIELD, COMMAND_FIELD};
use fred::prelude::*;
use shared::chat::{encode, ChatType, Event, MessageType, SendCommand};
use sqlx::PgPool;
use uuid::Uuid;

use crate::{
    bus::{pending, redis},
    helpers::{spawn_app, TestApp},
};

fn command(user: Uuid, room: Uuid, client_id: &str, content: &str) -> SendCommand {
    SendCommand {
        user_id: user,
        session_id: "session-1".into(),
        client_id: client_id.into(),
        chat_type: ChatType::Room,
        chat_id: room,
        content: content.into(),
        message_type: MessageType::Text,
        reply_to_id: None,
        attachment_id: None,
        traceparent: None,
    }
}

async fn xadd(redis: &Client, app: &TestApp, field: &str, bytes: Vec<u8>) {
    let _: String = redis
        .xadd(
            app.keys.send_stream(0),
            false,
            None,
            "*",
            vec![(field, bytes)],
        )
        .await
        .unwrap();
}

/// Makes the database refuse every message whose content is `content` with `errcode`, the
/// way a constraint (or a lost race) would.
async fn fail_inserts_of(app: &TestApp, content: &str, errcode: &str) {
    sqlx::raw_sql(&format!(
        r#"CREATE FUNCTION refuse_content() RETURNS trigger LANGUAGE plpgsql AS $$
           BEGIN
             IF NEW.content = '{content}' THEN
               RAISE EXCEPTION 'refused by the test' USING ERRCODE = '{errcode}';
             END IF;
             RETURN NEW;
           END $$;
           CREATE TRIGGER refuse_content BEFORE INSERT ON messages
             FOR EACH ROW EXECUTE FUNCTION refuse_content();"#
    ))
    .execute(&app.db)
    .await
    .unwrap();
}

/// Waits for an answer (ack or error code) to each of `count` client ids on the sender's channel.
async fn outcomes(watcher: &mut crate::helpers::Watcher, count: usize) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    while out.len() < count {
        match tokio::time::timeout(Duration::from_secs(15), watcher.next())
            .await
            .expect("every send is answered")
            .1
        {
            Event::SendFailed {
                client_id, code, ..
            } => {
                out.insert(client_id, code);
            }
            Event::Ack { client_id, .. } => {
                out.insert(client_id, "ack".into());
            }
            _ => {}
        }
    }
    out
}

/// A U+0000 among good sends (as an old or hostile gateway would append it): the good ones are
/// stored and acknowledged, the bad one is refused, and nothing is left pending.
#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn a_nul_send_among_good_ones_is_refused_alone(db: PgPool) {
    let app = spawn_app(db).await;
    let alice = app.user("alice").await;
    let room = app.room(&alice, "r", &[]).await;
    let mut watcher = app.watch(vec![app.keys.user_channel(alice.id)]).await;
    let redis = redis().await;
    let batch = vec![
        command(alice.id, room, "good-1", "hello"),
        command(alice.id, room, "bad", "a\u{0}b"),
        command(alice.id, room, "good-2", "world"),
    ];
    xadd(&redis, &app, BATCH_FIELD, encode(&batch).unwrap()).await;
    xadd(
        &redis,
        &app,
        COMMAND_FIELD,
        encode(&command(alice.id, room, "bad-alone", "\u{0}")).unwrap(),
    )
    .await;
    let got = outcomes(&mut watcher, 4).await;
    assert_eq!(got["good-1"], "ack");
    assert_eq!(got["good-2"], "ack");
    assert_eq!(got["bad"], "invalid_payload");
    assert_eq!(got["bad-alone"], "invalid_payload");
    // Later sends go through at once.
    xadd(
        &redis,
        &app,
        COMMAND_FIELD,
        encode(&command(alice.id, room, "after", "still working")).unwrap(),
    )
    .await;
    assert_eq!(outcomes(&mut watcher, 1).await["after"], "ack");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(pending(&redis, &app).await, 0, "nothing left pending");
    let seqs: Vec<i64> = sqlx::query_scalar("SELECT seq FROM messages ORDER BY seq")
        .fetch_all(&app.db)
        .await
        .unwrap();
    assert_eq!(
        seqs,
        vec![1, 2, 3],
        "gap-free: the refused sends used no seq"
    );
}

/// A send that passes every check but that the database refuses for good (here a trigger
/// refuses one content; in life, a value some future column or constraint will not take): the
/// batch is stored send by send, the refused one answered `send_failed`.
#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn a_send_the_database_refuses_fails_alone(db: PgPool) {
    let app = spawn_app(db).await;
    fail_inserts_of(&app, "poison", "check_violation").await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let room = app.room(&alice, "r", &[&bob]).await;
    let mut watcher = app.watch(vec![app.keys.user_channel(alice.id)]).await;
    let mut bobs = app.watch(vec![app.keys.user_channel(bob.id)]).await;
    let redis = redis().await;
    let mut batch = vec![
        command(alice.id, room, "a", "one"),
        command(alice.id, room, "poison", "poison"),
        command(alice.id, room, "b", "two"),
    ];
    let mut bobs_send = command(bob.id, room, "bob", "three");
    bobs_send.session_id = "session-2".into();
    batch.push(bobs_send);
    xadd(&redis, &app, BATCH_FIELD, encode(&batch).unwrap()).await;
    let got = outcomes(&mut watcher, 3).await;
    assert_eq!(got["a"], "ack");
    assert_eq!(got["b"], "ack");
    assert_eq!(got["poison"], "send_failed");
    assert_eq!(
        outcomes(&mut bobs, 1).await["bob"],
        "ack",
        "another user's send is stored"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(pending(&redis, &app).await, 0);
    let stored: Vec<(i64, String)> =
        sqlx::query_as("SELECT seq, content FROM messages ORDER BY seq")
            .fetch_all(&app.db)
            .await
            .unwrap();
    assert_eq!(
        stored,
        vec![(1, "one".into()), (2, "two".into()), (3, "three".into())]
    );
}

/// A command whose every attempt fails with an error that looks transient (a trigger raises a
/// serialization failure for it): after `SEND_MAX_DELIVERIES` (3 in tests) deliveries it is
/// moved to the dead-letter stream, the sends behind it are stored meanwhile, and nothing stays
/// pending.
#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn a_command_that_keeps_failing_goes_to_the_dead_letters(db: PgPool) {
    let app = spawn_app(db).await;
    fail_inserts_of(&app, "forever", "serialization_failure").await;
    let alice = app.user("alice").await;
    let room = app.room(&alice, "r", &[]).await;
    let mut watcher = app.watch(vec![app.keys.user_channel(alice.id)]).await;
    let redis = redis().await;
    xadd(
        &redis,
        &app,
        COMMAND_FIELD,
        encode(&command(alice.id, room, "forever", "forever")).unwrap(),
    )
    .await;
    xadd(
        &redis,
        &app,
        COMMAND_FIELD,
        encode(&command(alice.id, room, "behind", "fine")).unwrap(),
    )
    .await;
    assert_eq!(outcomes(&mut watcher, 1).await["behind"], "ack");
    let dead = app.keys.send_dead_letters();
    let mut letters: Vec<(String, BTreeMap<String, Vec<u8>>)> = Vec::new();
    for _ in 0..100 {
        letters = redis.xrange(&dead, "-", "+", None).await.unwrap();
        if !letters.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(letters.len(), 1, "the failing entry is a dead letter");
    let fields = &letters[0].1;
    let kept: SendCommand = shared::chat::decode(&fields[COMMAND_FIELD]).unwrap();
    assert_eq!(kept.client_id, "forever", "kept as it was");
    let deliveries: u64 = String::from_utf8_lossy(&fields["deliveries"])
        .parse()
        .unwrap();
    assert!(deliveries >= 3, "{deliveries}");
    assert_eq!(pending(&redis, &app).await, 0, "nothing left pending");
    // Nobody retries it any more: no new attempt within a while.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let after: Vec<(String, BTreeMap<String, Vec<u8>>)> =
        redis.xrange(&dead, "-", "+", None).await.unwrap();
    assert_eq!(after.len(), 1);
    let _: i64 = redis.del(&dead).await.unwrap();
}
