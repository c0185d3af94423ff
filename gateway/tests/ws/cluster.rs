//! On a real Redis Cluster (`REDIS_URL=redis-cluster://...`, which scripts/test starts with
//! scripts/redis-cluster): a slot that moves to another primary during traffic, and a primary
//! restarted during traffic, lose and double nothing. On a single Redis these tests have
//! nothing to exercise and return at once.

use std::time::Duration;

use fred::{prelude::*, types::CustomCommand};
use serde_json::{json, Value};
use sqlx::PgPool;
use tokio::time::Instant;
use uuid::Uuid;

use crate::helpers::{message_seqs, redis_url, stack, Client, Stack};

/// The cluster's node ports, when `REDIS_URL` names a cluster.
fn cluster_ports() -> Option<Vec<u16>> {
    let url = redis_url();
    let rest = url.strip_prefix("redis-cluster://")?;
    let (first, query) = rest.split_once('?').unwrap_or((rest, ""));
    let mut ports = vec![first
        .trim_end_matches('/')
        .rsplit(':')
        .next()?
        .parse()
        .ok()?];
    for node in query.split('&').filter_map(|p| p.strip_prefix("node=")) {
        ports.push(node.rsplit(':').next()?.parse().ok()?);
    }
    Some(ports)
}

struct Node {
    id: String,
    port: u16,
    client: fred::prelude::Client,
}

/// The tests that disturb the cluster (moving a slot, restarting a primary) run one at a time:
/// a primary restarted under the other test's slot migration left that migration half done (the
/// source never answered SETSLOT MIGRATING) and the test waiting on it.
static ONE_DISTURBANCE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn cluster_command(client: &fred::prelude::Client, args: Vec<String>) -> Value {
    let what = args.join(" ");
    let v: fred::types::Value = tokio::time::timeout(
        Duration::from_secs(15),
        client.custom(CustomCommand::new_static("CLUSTER", None, false), args),
    )
    .await
    .unwrap_or_else(|_| panic!("CLUSTER {what} did not answer within 15 s"))
    .unwrap();
    match v {
        fred::types::Value::String(s) => Value::String(s.to_string()),
        fred::types::Value::Bytes(b) => Value::String(String::from_utf8_lossy(&b).into()),
        other => Value::String(format!("{other:?}")),
    }
}

/// A plain (not cluster-aware) connection to each node, for the administrative commands.
async fn nodes(ports: &[u16]) -> Vec<Node> {
    let mut out = Vec::new();
    for &port in ports {
        let client =
            Builder::from_config(Config::from_url(&format!("redis://127.0.0.1:{port}")).unwrap())
                .build()
                .unwrap();
        client.init().await.unwrap();
        let id = cluster_command(&client, vec!["MYID".into()]).await;
        out.push(Node {
            id: id.as_str().unwrap().to_owned(),
            port,
            client,
        });
    }
    out
}

/// The index in `nodes` of the primary that owns `slot`.
async fn owner(nodes: &[Node], slot: u16) -> usize {
    let listing = cluster_command(&nodes[0].client, vec!["NODES".into()]).await;
    for line in listing.as_str().unwrap().lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let owns = fields.iter().skip(8).any(|range| {
            let (a, b) = range.split_once('-').unwrap_or((range, range));
            match (a.parse::<u16>(), b.parse::<u16>()) {
                (Ok(a), Ok(b)) => (a..=b).contains(&slot),
                _ => false,
            }
        });
        if owns {
            return nodes.iter().position(|n| n.id == fields[0]).unwrap();
        }
    }
    panic!("no owner for slot {slot}");
}

/// Moves `slot` (and its keys) to `nodes[to]`, as `redis-cli --cluster reshard` does.
async fn move_slot(nodes: &[Node], slot: u16, to: usize) {
    let from = owner(nodes, slot).await;
    let (src, dst) = (&nodes[from], &nodes[to]);
    let s = slot.to_string();
    cluster_command(
        &dst.client,
        vec![
            "SETSLOT".into(),
            s.clone(),
            "IMPORTING".into(),
            src.id.clone(),
        ],
    )
    .await;
    cluster_command(
        &src.client,
        vec![
            "SETSLOT".into(),
            s.clone(),
            "MIGRATING".into(),
            dst.id.clone(),
        ],
    )
    .await;
    loop {
        let keys: Vec<String> = src
            .client
            .custom(
                CustomCommand::new_static("CLUSTER", None, false),
                vec!["GETKEYSINSLOT".to_owned(), s.clone(), "100".to_owned()],
            )
            .await
            .unwrap();
        if keys.is_empty() {
            break;
        }
        let mut args = vec![
            "127.0.0.1".to_owned(),
            dst.port.to_string(),
            String::new(),
            "0".to_owned(),
            "5000".to_owned(),
            "KEYS".to_owned(),
        ];
        args.extend(keys);
        let _: fred::types::Value = src
            .client
            .custom(CustomCommand::new_static("MIGRATE", None, false), args)
            .await
            .unwrap();
    }
    for node in std::iter::once(dst).chain(nodes.iter().filter(|n| n.id != dst.id)) {
        cluster_command(
            &node.client,
            vec!["SETSLOT".into(), s.clone(), "NODE".into(), dst.id.clone()],
        )
        .await;
    }
}

/// The send-stream partition of a room's sends (the stacks run 4).
fn room_partition(room: Uuid) -> u16 {
    shared::chat::SendCommand {
        user_id: Uuid::nil(),
        session_id: String::new(),
        client_id: String::new(),
        chat_type: shared::chat::ChatType::Room,
        chat_id: room,
        content: String::new(),
        message_type: shared::chat::MessageType::Text,
        reply_to_id: None,
        attachment_id: None,
        traceparent: None,
    }
    .partition(4)
}

/// Sends `content` as a client with an outbox does: the same `client_id` again after an
/// `error` or a silence, until it is acknowledged.
async fn send_until_acked(c: &mut Client, room: Uuid, client_id: &str, content: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(Instant::now() < deadline, "{client_id} never acknowledged");
        c.send(
            "send_message",
            json!({"content": content, "chat_type": "room", "chat_id": room, "client_id": client_id}),
        )
        .await;
        let give_up = Instant::now() + Duration::from_secs(3);
        'wait: while Instant::now() < give_up {
            for f in c.drain(Duration::from_millis(100)).await {
                let mine = f["data"]["client_id"] == client_id;
                if f["type"] == "ack" && mine {
                    return;
                }
                if f["type"] == "error" && mine {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    break 'wait;
                }
            }
        }
    }
}

/// Alice (gateway 0) sends `n` messages to a room through an outbox while `disturb` runs;
/// bob (gateway 1) must see each once, in order.
async fn traffic_survives<F>(s: &Stack, n: i64, disturb: impl FnOnce(Uuid) -> F)
where
    F: std::future::Future<Output = ()>,
{
    let alice = s.user("alice").await;
    let bob = s.user("bob").await;
    let room = s.room(&alice, "r", &[&bob]).await;
    let mut a = s.connect(0, &alice).await;
    let mut b = s.connect(1, &bob).await;
    let sender = tokio::spawn(async move {
        for i in 1..=n {
            send_until_acked(&mut a, room, &format!("c{i}"), &format!("m{i}")).await;
            // Within the user's send rate (20/s after a burst of 40).
            tokio::time::sleep(Duration::from_millis(40)).await;
        }
    });
    disturb(room).await;
    sender.await.unwrap();
    let mut frames = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while message_seqs(&frames, room).len() < n as usize && Instant::now() < deadline {
        frames.extend(b.drain(Duration::from_millis(300)).await);
    }
    assert_eq!(
        message_seqs(&frames, room),
        (1..=n).collect::<Vec<_>>(),
        "in order, none missing, none twice"
    );
    let contents: Vec<String> = frames
        .iter()
        .filter(|f| f["type"] == "message")
        .map(|f| f["data"]["content"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(
        contents,
        (1..=n).map(|i| format!("m{i}")).collect::<Vec<_>>()
    );
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn a_slot_moving_during_traffic_loses_nothing(db: PgPool) {
    let Some(ports) = cluster_ports() else {
        eprintln!("REDIS_URL is not a cluster: nothing to move");
        return;
    };
    let _alone = ONE_DISTURBANCE_AT_A_TIME.lock().await;
    let s = stack(db, 2, |_| {}).await;
    let nodes = nodes(&ports).await;
    let keys = shared::keys::Keys::new(s.prefix.clone());
    traffic_survives(&s, 60, |room| async move {
        tokio::time::sleep(Duration::from_millis(800)).await;
        let slot = fred::util::redis_keyslot(keys.conversation_channel(room).as_bytes());
        let from = owner(&nodes, slot).await;
        let to = (from + 1) % nodes.len();
        move_slot(&nodes, slot, to).await;
        assert_eq!(owner(&nodes, slot).await, to, "the slot moved");
    })
    .await;
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn a_primary_restart_loses_nothing(db: PgPool) {
    let Some(ports) = cluster_ports() else {
        eprintln!("REDIS_URL is not a cluster: nothing to restart");
        return;
    };
    let _alone = ONE_DISTURBANCE_AT_A_TIME.lock().await;
    let s = stack(db, 2, |_| {}).await;
    let nodes = nodes(&ports).await;
    let keys = shared::keys::Keys::new(s.prefix.clone());
    traffic_survives(&s, 60, |room| async move {
        tokio::time::sleep(Duration::from_millis(800)).await;
        // The primary that carries the room's events, and the one holding the send stream.
        let mut restart = vec![
            owner(
                &nodes,
                fred::util::redis_keyslot(keys.conversation_channel(room).as_bytes()),
            )
            .await,
            owner(
                &nodes,
                fred::util::redis_keyslot(keys.send_stream(room_partition(room)).as_bytes()),
            )
            .await,
        ];
        restart.dedup();
        for i in restart {
            let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/redis-cluster");
            let (port, first) = (nodes[i].port.to_string(), ports[0].to_string());
            // Off the test's runtime thread, which also runs the stack.
            let status = tokio::task::spawn_blocking(move || {
                std::process::Command::new(script)
                    .args(["restart", &port])
                    .env("REDIS_CLUSTER_PORT", first)
                    .status()
            })
            .await
            .unwrap()
            .unwrap();
            assert!(
                status.success(),
                "restarted the primary on {}",
                nodes[i].port
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    })
    .await;
}
