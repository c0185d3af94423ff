use std::time::Duration;

use serde_json::{json, Value};
use sqlx::PgPool;

use crate::helpers::{eventually, message_seqs, stack, Client};

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn the_first_frame_is_ready(db: PgPool) {
    let s = stack(db, 1, |_| {}).await;
    let alice = s.user("alice").await;
    let mut c = Client::connect(s.gateways[0].port, &alice.token, None, None)
        .await
        .unwrap();
    let ready = c.next().await.unwrap();
    assert_eq!(ready["type"], "ready");
    assert_eq!(ready["data"]["user_id"], alice.id.to_string());
    assert!(ready["data"]["session_id"]
        .as_str()
        .is_some_and(|s| !s.is_empty()));
    assert_eq!(ready["data"]["heartbeat_interval_ms"], 25_000);
    assert!(ready["timestamp"].as_str().is_some_and(|t| t.contains('T')));
    c.send("ping", json!({})).await;
    assert_eq!(c.expect("pong").await["data"], json!({}));
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn room_group_and_private_messages_cross_gateways(db: PgPool) {
    let s = stack(db, 2, |_| {}).await;
    let alice = s.user("alice").await;
    let bob = s.user("bob").await;
    let room = s.room(&alice, "lobby", &[&bob]).await;
    let group = s
        .rest(
            &alice,
            reqwest::Method::POST,
            "/chat/groups",
            json!({"name": "g", "member_ids": [bob.id]}),
        )
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut a1 = s.connect(0, &alice).await;
    let mut a2 = s.connect(1, &alice).await;
    let mut b = s.connect(1, &bob).await;

    for (chat_type, chat_id) in [
        ("room", room.to_string()),
        ("group", group.clone()),
        ("private", bob.id.to_string()),
    ] {
        let client_id = format!("{chat_type}-1");
        a1.send("send_message", json!({"content": format!("hi {chat_type}"), "chat_type": chat_type, "chat_id": chat_id, "client_id": client_id}))
            .await;
        let [ack, own] = <[Value; 2]>::try_from(a1.expect_each(&["ack", "message"]).await).unwrap();
        assert_eq!(ack["data"]["client_id"], client_id);
        assert_eq!(ack["data"]["message"]["seq"], 1);
        assert_eq!(own["data"]["content"], format!("hi {chat_type}"));
        for c in [&mut a2, &mut b] {
            let m = c.expect("message").await;
            assert_eq!(m["data"]["content"], format!("hi {chat_type}"));
            assert_eq!(m["data"]["chat_type"], chat_type);
            assert_eq!(m["data"]["from_user_id"], alice.id.to_string());
        }
    }
    // The ack went to the sending connection only.
    let rest = a2.drain(Duration::from_millis(300)).await;
    assert!(rest.iter().all(|f| f["type"] != "ack"), "{rest:?}");

    // A reply from the other gateway reaches the first.
    b.send(
        "send_message",
        json!({"content": "back", "chat_type": "private", "chat_id": alice.id}),
    )
    .await;
    let ack = b.expect("ack").await;
    assert!(
        ack["data"]["client_id"]
            .as_str()
            .is_some_and(|c| !c.is_empty()),
        "a client_id is made up"
    );
    let m = a1.expect("message").await;
    assert_eq!(m["data"]["content"], "back");
    assert_eq!(m["data"]["seq"], 2);

    let metrics = s
        .http
        .get(format!("http://127.0.0.1:{}/metrics", s.gateways[0].port))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for name in [
        "gateway_connections",
        r#"gateway_frames_in_total{type="send_message"}"#,
        r#"gateway_frames_out_total{type="message"}"#,
        "gateway_fanout_latency_seconds_bucket",
    ] {
        assert!(metrics.contains(name), "{name} missing from /metrics");
    }
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn msgpack_subprotocol_speaks_binary_envelopes(db: PgPool) {
    let s = stack(db, 1, |_| {}).await;
    let alice = s.user("alice").await;
    let room = s.room(&alice, "r", &[]).await;
    let mut c = Client::connect(
        s.gateways[0].port,
        &alice.token,
        None,
        Some("chatsphere.msgpack"),
    )
    .await
    .unwrap();
    assert!(c.msgpack, "the server selected chatsphere.msgpack");
    let frame = tokio::time::timeout(
        Duration::from_secs(5),
        futures_util::StreamExt::next(&mut c.ws),
    )
    .await
    .unwrap()
    .unwrap()
    .unwrap();
    let tokio_tungstenite::tungstenite::Message::Binary(bytes) = frame else {
        panic!("binary expected, got {frame:?}")
    };
    let ready: Value = rmp_serde::from_slice(&bytes).unwrap();
    assert_eq!(ready["type"], "ready");
    assert_eq!(
        ready["data"]["user_id"],
        alice.id.to_string(),
        "ids are strings in MessagePack too"
    );

    c.send(
        "send_message",
        json!({"content": "packed", "chat_type": "room", "chat_id": room, "client_id": "p1"}),
    )
    .await;
    let frames = c.expect_each(&["ack", "message"]).await;
    assert_eq!(frames[0]["data"]["client_id"], "p1");
    assert_eq!(frames[1]["data"]["content"], "packed");
    // A text frame on a MessagePack connection is refused, and the connection stays.
    c.send_raw(tokio_tungstenite::tungstenite::Message::Text("{}".into()))
        .await;
    assert_eq!(c.expect("error").await["data"]["code"], "invalid_payload");
    c.send("ping", json!({})).await;
    c.expect("pong").await;
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn typing_and_read_receipts(db: PgPool) {
    let s = stack(db, 2, |_| {}).await;
    let alice = s.user("alice").await;
    let bob = s.user("bob").await;
    let eve = s.user("eve").await;
    let room = s.room(&alice, "r", &[&bob]).await;
    s.send_rest(&alice, &format!("private/{}", bob.id), "hello")
        .await;
    let mut a = s.connect(0, &alice).await;
    let mut a2 = s.connect(0, &alice).await;
    let mut b = s.connect(1, &bob).await;
    let mut b2 = s.connect(0, &bob).await;
    let mut e = s.connect(1, &eve).await;

    a.send("typing", json!({"chat_type": "room", "chat_id": room}))
        .await;
    let t = b.expect("typing").await;
    assert_eq!(
        t["data"],
        json!({"user_id": alice.id, "chat_type": "room", "chat_id": room})
    );
    a.send("typing", json!({"chat_type": "private", "chat_id": bob.id}))
        .await;
    let t = b.expect("typing").await;
    assert_eq!(
        t["data"]["chat_id"],
        alice.id.to_string(),
        "a private chat_id is the other user"
    );
    let others: Vec<Value> = a2.drain(Duration::from_millis(300)).await;
    assert!(
        others.iter().all(|f| f["type"] != "typing"),
        "the typist's own connections are spared"
    );
    assert!(e
        .drain(Duration::from_millis(100))
        .await
        .iter()
        .all(|f| f["type"] != "typing"));
    e.send("typing", json!({"chat_type": "room", "chat_id": room}))
        .await;
    assert_eq!(e.expect("error").await["data"]["code"], "forbidden");
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM messages")
        .fetch_one(&s.db)
        .await
        .unwrap();
    assert_eq!(stored, 1, "typing is never stored");

    b.send(
        "mark_read",
        json!({"chat_type": "private", "chat_id": alice.id, "seq": 1}),
    )
    .await;
    let r = a.expect("read").await;
    assert_eq!(
        r["data"],
        json!({"user_id": bob.id, "chat_type": "private", "chat_id": bob.id, "seq": 1})
    );
    // The reader's other connections hear it; the one that marked it is spared.
    let r = b2.expect("read").await;
    assert_eq!(r["data"]["chat_id"], alice.id.to_string());
    assert!(b
        .drain(Duration::from_millis(300))
        .await
        .iter()
        .all(|f| f["type"] != "read"));
    let unread: i64 = sqlx::query_scalar(
        "SELECT last_read_seq FROM conversation_members WHERE user_id = $1 AND last_read_seq > 0",
    )
    .bind(bob.id)
    .fetch_one(&s.db)
    .await
    .unwrap();
    assert_eq!(unread, 1, "stored as with REST");
    e.send(
        "mark_read",
        json!({"chat_type": "room", "chat_id": room, "seq": 1}),
    )
    .await;
    assert_eq!(e.expect("error").await["data"]["code"], "forbidden");
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn joining_a_room_while_connected_subscribes(db: PgPool) {
    let s = stack(db, 2, |_| {}).await;
    let alice = s.user("alice").await;
    let bob = s.user("bob").await;
    let room = s.room(&alice, "r", &[]).await;
    let mut a = s.connect(0, &alice).await;
    let mut b = s.connect(1, &bob).await;
    s.rest(
        &bob,
        reqwest::Method::POST,
        &format!("/chat/rooms/{room}/join"),
        Value::Null,
    )
    .await;
    let m = b.expect("membership").await;
    assert_eq!(
        m["data"],
        json!({"chat_type": "room", "chat_id": room, "user_id": bob.id, "action": "joined"})
    );
    let m = a.expect("membership").await;
    assert_eq!(m["data"]["user_id"], bob.id.to_string());
    s.send_rest(&alice, &format!("room/{room}"), "welcome")
        .await;
    assert_eq!(b.expect("message").await["data"]["content"], "welcome");

    s.rest(
        &bob,
        reqwest::Method::POST,
        &format!("/chat/rooms/{room}/leave"),
        Value::Null,
    )
    .await;
    b.expect("membership").await;
    s.send_rest(&alice, &format!("room/{room}"), "after you left")
        .await;
    let frames = b.drain(Duration::from_millis(400)).await;
    assert!(message_seqs(&frames, room).is_empty(), "{frames:?}");
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn sync_fills_in_exactly_once_while_messages_flow(db: PgPool) {
    let s = stack(db, 1, |_| {}).await;
    let alice = s.user("alice").await;
    let bob = s.user("bob").await;
    let room = s.room(&alice, "r", &[&bob]).await;
    for i in 1..=5 {
        s.send_rest(&alice, &format!("room/{room}"), &format!("old {i}"))
            .await;
    }
    // Bob saw up to seq 2 before he went away; he reconnects while Alice keeps sending.
    let mut b = s.connect(0, &bob).await;
    let sender = {
        let http = s.http.clone();
        let url = format!("{}/chat/messages/room/{room}", s.chat[0]);
        let token = alice.token.clone();
        tokio::spawn(async move {
            for i in 6..=25 {
                let r = http
                    .post(&url)
                    .bearer_auth(&token)
                    .json(&json!({"content": format!("new {i}")}))
                    .send()
                    .await
                    .unwrap();
                assert!(r.status().is_success());
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(30)).await;
    b.send(
        "sync",
        json!({"positions": [{"chat_type": "room", "chat_id": room, "seq": 2}]}),
    )
    .await;
    sender.await.unwrap();
    let mut seen = Vec::new();
    let frames = b.drain(Duration::from_millis(800)).await;
    let mut synced_at = None;
    for f in &frames {
        match f["type"].as_str() {
            Some("synced") => {
                synced_at = Some(seen.len());
                let r = &f["data"]["results"][0];
                assert_eq!(r["chat_type"], "room");
                assert_eq!(r["chat_id"], room.to_string());
                assert_eq!(r["has_more"], false);
                for m in r["messages"].as_array().unwrap() {
                    seen.push(m["seq"].as_i64().unwrap());
                }
            }
            Some("message") => seen.push(f["data"]["seq"].as_i64().unwrap()),
            _ => {}
        }
    }
    assert!(synced_at.is_some(), "a synced frame: {frames:?}");
    let mut sorted = seen.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(
        sorted,
        (3..=25).collect::<Vec<_>>(),
        "every message after the position: {seen:?}"
    );
    assert_eq!(sorted.len(), seen.len(), "none twice: {seen:?}");
    // Live messages delivered before the sync (up to its start) plus the batch plus the held
    // ones: each live part is ascending.
    let after_sync: Vec<i64> = seen[synced_at.unwrap()..].to_vec();
    let mut ascending = after_sync.clone();
    ascending.sort_unstable();
    assert_eq!(after_sync, ascending, "ascending after the batch: {seen:?}");
}

/// Data frames go to the socket directly while tungstenite writes its own control frames:
/// pongs answering a stream of client pings, interleaved with a stream of messages and acks,
/// must all arrive whole (a frame written inside another would break the client's parser).
#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn pongs_and_data_frames_arrive_whole(db: PgPool) {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;

    let s = stack(db, 1, |c| {
        c.send_rate = shared::limits::Rate {
            per_second: 10_000,
            burst: 10_000,
        };
    })
    .await;
    let alice = s.user("alice").await;
    let room = s.room(&alice, "lobby", &[]).await;
    let mut a = s.connect(0, &alice).await;
    const N: usize = 200;
    for i in 0..N {
        a.send(
            "send_message",
            json!({"content": format!("m{i}"), "chat_type": "room", "chat_id": room, "client_id": format!("c{i}")}),
        )
        .await;
        a.send_raw(Message::Ping(vec![i as u8; 100].into())).await;
    }
    let (mut pongs, mut acks, mut seqs) = (0, 0, Vec::new());
    while pongs < N || acks < N || seqs.len() < N {
        let frame = tokio::time::timeout(Duration::from_secs(10), a.ws.next())
            .await
            .expect("a frame within 10 s")
            .expect("the connection stays open")
            .expect("a well-formed frame");
        match frame {
            Message::Pong(payload) => {
                assert_eq!(payload.len(), 100, "a whole pong");
                pongs += 1;
            }
            Message::Text(t) => {
                let v: Value = serde_json::from_str(&t).expect("a whole JSON frame");
                match v["type"].as_str() {
                    Some("ack") => acks += 1,
                    Some("message") => seqs.push(v["data"]["seq"].as_i64().unwrap()),
                    other => panic!("unexpected frame {other:?}"),
                }
            }
            other => panic!("unexpected frame {other:?}"),
        }
    }
    assert_eq!(
        seqs,
        (1..=N as i64).collect::<Vec<_>>(),
        "every message once, in order"
    );
}

/// A disconnect looks only at its user's channels: after rooms, a group, a private chat, a
/// room joined live and a room left live, closing every connection leaves the node subscribed
/// to nothing.
#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn the_node_forgets_every_channel_once_its_connections_close(db: PgPool) {
    let s = stack(db, 1, |_| {}).await;
    let alice = s.user("alice").await;
    let bob = s.user("bob").await;
    s.room(&alice, "r", &[&bob]).await;
    let left = s.room(&alice, "left", &[&bob]).await;
    s.rest(
        &alice,
        reqwest::Method::POST,
        "/chat/groups",
        json!({"name": "g", "member_ids": [bob.id]}),
    )
    .await;
    s.send_rest(&alice, &format!("private/{}", bob.id), "hi")
        .await;
    let mut a1 = s.connect(0, &alice).await;
    let mut a2 = s.connect(0, &alice).await;
    let mut b = s.connect(0, &bob).await;
    let later = s.room(&bob, "later", &[]).await;
    s.rest(
        &alice,
        reqwest::Method::POST,
        &format!("/chat/rooms/{later}/join"),
        serde_json::Value::Null,
    )
    .await;
    a1.expect("membership").await;
    s.rest(
        &bob,
        reqwest::Method::POST,
        &format!("/chat/rooms/{left}/leave"),
        serde_json::Value::Null,
    )
    .await;
    b.expect("membership").await;
    let hub = &s.gateways[0].gateway.hub;
    assert!(hub.channel_count() >= 5, "{}", hub.channel_count());
    for c in [&mut a1, &mut a2, &mut b] {
        c.ws.close(None).await.unwrap();
    }
    assert!(
        eventually(Duration::from_secs(5), || hub.connection_count() == 0
            && hub.channel_count() == 0)
        .await,
        "{} channels left",
        hub.channel_count()
    );
}

/// A reaction is a `reaction` event on every member's connection, each side of a private chat
/// with its own `chat_id`; `sync` shows the reader's own reactions as `me`.
#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn reactions_arrive_live_and_in_sync(db: PgPool) {
    let s = stack(db, 2, |_| {}).await;
    let alice = s.user("alice").await;
    let bob = s.user("bob").await;
    let m = s
        .send_rest(&alice, &format!("private/{}", bob.id), "hi")
        .await;
    let mut a = s.connect(0, &alice).await;
    let mut b = s.connect(1, &bob).await;
    s.rest(
        &bob,
        reqwest::Method::PUT,
        &format!(
            "/chat/messages/{}/reactions/%E2%9D%A4",
            m["id"].as_str().unwrap()
        ),
        Value::Null,
    )
    .await;
    let ra = a.expect("reaction").await;
    let rb = b.expect("reaction").await;
    assert_eq!(ra["data"]["chat_id"], bob.id.to_string());
    assert_eq!(rb["data"]["chat_id"], alice.id.to_string());
    assert_eq!(ra["data"]["emoji"], "❤");
    assert_eq!(ra["data"]["action"], "added");
    assert_eq!(ra["data"]["user_id"], bob.id.to_string());
    b.send(
        "sync",
        json!({"positions": [{"chat_type": "private", "chat_id": alice.id, "seq": 0}]}),
    )
    .await;
    let synced = b.expect("synced").await;
    assert_eq!(
        synced["data"]["results"][0]["messages"][0]["reactions"],
        json!([{"emoji": "❤", "count": 1, "me": true}])
    );
}

/// Renaming a room or a group reaches its members' connections on every gateway as
/// `conversation_updated`, and no one else's.
#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn renames_reach_the_members(db: PgPool) {
    let s = stack(db, 2, |_| {}).await;
    let alice = s.user("alice").await;
    let bob = s.user("bob").await;
    let carol = s.user("carol").await;
    let room = s.room(&alice, "lobby", &[&bob]).await;
    let group = s
        .rest(
            &alice,
            reqwest::Method::POST,
            "/chat/groups",
            json!({"name": "trip", "member_ids": [bob.id]}),
        )
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut a = s.connect(0, &alice).await;
    let mut b = s.connect(1, &bob).await;
    let mut c = s.connect(1, &carol).await;
    s.rest(
        &alice,
        reqwest::Method::PATCH,
        &format!("/chat/rooms/{room}"),
        json!({"name": "hall", "description": "all welcome"}),
    )
    .await;
    let expected = json!({"chat_type": "room", "chat_id": room, "name": "hall",
                          "description": "all welcome", "by": alice.id});
    assert_eq!(b.expect("conversation_updated").await["data"], expected);
    assert_eq!(a.expect("conversation_updated").await["data"], expected);
    s.rest(
        &alice,
        reqwest::Method::PATCH,
        &format!("/chat/groups/{group}"),
        json!({"name": "summer trip"}),
    )
    .await;
    assert_eq!(
        b.expect("conversation_updated").await["data"],
        json!({"chat_type": "group", "chat_id": group, "name": "summer trip", "by": alice.id})
    );
    let frames = c.drain(Duration::from_millis(400)).await;
    assert!(
        frames.iter().all(|f| f["type"] != "conversation_updated"),
        "{frames:?}"
    );
}

/// A member's own settings (a mute, an archive) reach every connection of theirs, on every
/// gateway, as `conversation_settings` with both settings as they now are; and no one else's.
#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn settings_reach_every_device_of_their_user(db: PgPool) {
    let s = stack(db, 2, |_| {}).await;
    let alice = s.user("alice").await;
    let bob = s.user("bob").await;
    s.send_rest(&alice, &format!("private/{}", bob.id), "hi")
        .await;
    let mut phone = s.connect(0, &alice).await;
    let mut laptop = s.connect(1, &alice).await;
    let mut b = s.connect(1, &bob).await;
    let path = format!("/chat/conversations/private/{}", bob.id);
    let until = "2999-01-01T00:00:00Z";
    s.rest(
        &alice,
        reqwest::Method::PUT,
        &format!("{path}/notifications"),
        json!({"muted": true, "until": until}),
    )
    .await;
    let expected = json!({"chat_type": "private", "chat_id": bob.id, "notifications_muted": true,
                          "notifications_muted_until": until, "archived": false});
    for conn in [&mut phone, &mut laptop] {
        assert_eq!(conn.expect("conversation_settings").await["data"], expected);
    }
    s.rest(
        &alice,
        reqwest::Method::PUT,
        &format!("{path}/archive"),
        Value::Null,
    )
    .await;
    assert_eq!(
        laptop.expect("conversation_settings").await["data"]["archived"],
        true
    );
    s.rest(
        &alice,
        reqwest::Method::PUT,
        &format!("{path}/notifications"),
        json!({"muted": false}),
    )
    .await;
    s.rest(
        &alice,
        reqwest::Method::DELETE,
        &format!("{path}/archive"),
        Value::Null,
    )
    .await;
    let frames = phone.drain(Duration::from_millis(400)).await;
    let settings: Vec<&Value> = frames
        .iter()
        .filter(|f| f["type"] == "conversation_settings")
        .map(|f| &f["data"])
        .collect();
    assert_eq!(
        settings,
        [
            &json!({"chat_type": "private", "chat_id": bob.id, "notifications_muted": true,
                    "notifications_muted_until": until, "archived": true}),
            &json!({"chat_type": "private", "chat_id": bob.id, "notifications_muted": false,
                    "notifications_muted_until": null, "archived": true}),
            &json!({"chat_type": "private", "chat_id": bob.id, "notifications_muted": false,
                    "notifications_muted_until": null, "archived": false}),
        ]
    );
    let frames = b.drain(Duration::from_millis(200)).await;
    assert!(
        frames.iter().all(|f| f["type"] != "conversation_settings"),
        "{frames:?}"
    );
}

/// A display name changed through auth-service reaches, as `user_updated`, everyone who shares
/// a conversation with the user on every gateway — a room's members, a private chat's peer —
/// and the user's own connections; a stranger gets nothing. The path is the real one:
/// auth-service tells chat-service, which publishes to the conversations.
#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn profile_changes_reach_whoever_shares_a_conversation(db: PgPool) {
    let s = stack(db, 2, |_| {}).await;
    let auth = s.auth_service().await;
    let alice = s.user("alice").await;
    let bob = s.user("bob").await;
    let carol = s.user("carol").await;
    let dave = s.user("dave").await;
    s.room(&bob, "lobby", &[&alice]).await;
    s.send_rest(&alice, &format!("private/{}", carol.id), "hi")
        .await;
    let mut own = s.connect(1, &alice).await;
    let mut b = s.connect(0, &bob).await;
    let mut c = s.connect(1, &carol).await;
    let mut d = s.connect(0, &dave).await;
    let r = s
        .http
        .patch(format!("{auth}/auth/me"))
        .bearer_auth(&alice.token)
        .json(&json!({"display_name": "Alice Liddell"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    for conn in [&mut own, &mut b, &mut c] {
        let user = &conn.expect("user_updated").await["data"];
        assert_eq!(user["id"], alice.id.to_string());
        assert_eq!(user["username"], "alice");
        assert_eq!(user["display_name"], "Alice Liddell");
        assert!(user.get("email").is_none(), "{user}");
    }
    let frames = d.drain(Duration::from_millis(300)).await;
    assert!(
        frames.iter().all(|f| f["type"] != "user_updated"),
        "{frames:?}"
    );
}

/// Someone who shares several conversations with the user (two rooms, a group, a private chat)
/// hears a profile change once on each connection, though it is published on the channel of
/// each. Changes made at the same moment reach them in the order they were stored: the last
/// `user_updated` every connection gets is the profile as stored, and none repeats the one
/// before it.
#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn profile_changes_reach_each_connection_once_and_in_order(db: PgPool) {
    let s = stack(db, 2, |_| {}).await;
    let auth = s.auth_service().await;
    let alice = s.user("alice").await;
    let bob = s.user("bob").await;
    s.room(&bob, "lobby", &[&alice]).await;
    s.room(&alice, "den", &[&bob]).await;
    s.rest(
        &alice,
        reqwest::Method::POST,
        "/chat/groups",
        json!({"name": "pair", "member_ids": [bob.id]}),
    )
    .await;
    s.send_rest(&alice, &format!("private/{}", bob.id), "hi")
        .await;
    let mut phone = s.connect(0, &bob).await;
    let mut laptop = s.connect(1, &bob).await;
    let mut own = s.connect(0, &alice).await;
    let rename = |name: String| {
        let request = s
            .http
            .patch(format!("{auth}/auth/me"))
            .bearer_auth(&alice.token)
            .json(&json!({ "display_name": name }));
        async move { request.send().await.unwrap().status() }
    };
    assert_eq!(rename("Alice Liddell".into()).await, 200);
    for conn in [&mut phone, &mut laptop, &mut own] {
        let heard = names_heard(conn.drain(Duration::from_millis(600)).await);
        assert_eq!(heard, ["Alice Liddell"]);
    }

    let statuses =
        futures_util::future::join_all((0..6).map(|i| rename(format!("Alice {i}")))).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    let me: Value = s
        .http
        .get(format!("{auth}/auth/me"))
        .bearer_auth(&alice.token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for conn in [&mut phone, &mut laptop, &mut own] {
        let heard = names_heard(conn.drain(Duration::from_millis(800)).await);
        assert_eq!(
            heard.last().map(String::as_str),
            me["display_name"].as_str(),
            "{heard:?}"
        );
        assert!(heard.windows(2).all(|w| w[0] != w[1]), "{heard:?}");
    }
}

/// The display names of the `user_updated` frames among `frames`, in order.
fn names_heard(frames: Vec<Value>) -> Vec<String> {
    frames
        .iter()
        .filter(|f| f["type"] == "user_updated")
        .filter_map(|f| f["data"]["display_name"].as_str().map(str::to_owned))
        .collect()
}
