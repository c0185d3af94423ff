//! Hostile and careless clients: control characters, floods, limits that hold per user across
//! gateways, clean closes, and membership that follows the user's live connections.

use std::time::Duration;

use futures_util::SinkExt;
use serde_json::json;
use sqlx::PgPool;
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::{push_bulk, stack, Client};

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn control_characters_are_invalid_payload_and_the_socket_stays(db: PgPool) {
    let s = stack(db, 1, |_| {}).await;
    let alice = s.user("alice").await;
    let room = s.room(&alice, "r", &[]).await;
    let mut c = s.connect(0, &alice).await;
    c.send(
        "send_message",
        json!({"content": "a\u{0}b", "chat_type": "room", "chat_id": room, "client_id": "nul"}),
    )
    .await;
    let e = c.expect("error").await;
    assert_eq!(e["data"]["code"], "invalid_payload");
    assert_eq!(e["data"]["client_id"], "nul");
    c.send(
        "send_message",
        json!({"content": "fine\twith tab\n", "chat_type": "room", "chat_id": room, "client_id": "ok"}),
    )
    .await;
    let ack = c.expect("ack").await;
    assert_eq!(ack["data"]["client_id"], "ok");
    assert_eq!(ack["data"]["message"]["content"], "fine\twith tab\n");
}

/// The send bucket is the user's, whichever gateway or REST call the sends come through.
#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn the_send_rate_is_per_user_across_gateways_and_rest(db: PgPool) {
    let s = stack(db, 2, |c| {
        c.send_rate = shared::limits::Rate {
            per_second: 1,
            burst: 4,
        };
    })
    .await;
    let alice = s.user("alice").await;
    let room = s.room(&alice, "r", &[]).await;
    let mut a = s.connect(0, &alice).await;
    let mut b = s.connect(1, &alice).await;
    for i in 0..3 {
        a.send("send_message", json!({"content": "x", "chat_type": "room", "chat_id": room, "client_id": format!("a{i}")})).await;
        b.send("send_message", json!({"content": "x", "chat_type": "room", "chat_id": room, "client_id": format!("b{i}")})).await;
    }
    let mut frames = a.drain(Duration::from_millis(1200)).await;
    frames.extend(b.drain(Duration::from_millis(100)).await);
    let acks = frames.iter().filter(|f| f["type"] == "ack").count();
    let limited = frames
        .iter()
        .filter(|f| f["type"] == "error" && f["data"]["code"] == "rate_limited")
        .count();
    // Four from the burst, perhaps one more refilled meanwhile: never six (two sockets' worth).
    assert!((4..=5).contains(&acks), "{acks} acks: {frames:?}");
    assert_eq!(acks + limited, 6);
    // The same bucket answers REST.
    let mut saw_429 = false;
    for _ in 0..3 {
        let r = s
            .http
            .post(format!("{}/chat/messages/room/{room}", s.chat[0]))
            .bearer_auth(&alice.token)
            .json(&json!({"content": "rest"}))
            .send()
            .await
            .unwrap();
        if r.status() == 429 {
            assert!(r.headers().contains_key("retry-after"));
            let body: serde_json::Value = r.json().await.unwrap();
            assert_eq!(body["code"], "rate_limited");
            saw_429 = true;
            break;
        }
    }
    assert!(saw_429, "REST sends share the user's bucket");
    // Being rate limited is not abuse: the socket is still open.
    a.send("ping", json!({})).await;
    a.expect("pong").await;
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn the_connection_cap_counts_every_gateway(db: PgPool) {
    let s = stack(db, 2, |c| c.max_connections_per_user = 2).await;
    let alice = s.user("alice").await;
    let _one = s.connect(0, &alice).await;
    let mut two = s.connect(1, &alice).await;
    let third = Client::connect(s.gateways[0].port, &alice.token, None, None).await;
    match third {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 429),
        other => panic!("expected 429, got {:?}", other.map(|_| ())),
    }
    // A closed socket gives its place back.
    two.ws.close(None).await.unwrap();
    let mut reconnected = None;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if let Ok(c) = Client::connect(s.gateways[1].port, &alice.token, None, None).await {
            reconnected = Some(c);
            break;
        }
    }
    assert!(reconnected.is_some(), "the place is free again");
}

/// A flood of bad frames closes with 1008, and the client reads the close frame and its code
/// (no reset), even though it had sent far more than the server read.
#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn a_flood_of_bad_frames_is_closed_with_1008_that_the_client_reads(db: PgPool) {
    let s = stack(db, 1, |_| {}).await;
    let alice = s.user("alice").await;
    let mut c = s.connect(0, &alice).await;
    for i in 0..400 {
        c.ws.feed(Message::Text(format!("not json {i}").into()))
            .await
            .unwrap();
    }
    c.ws.flush().await.unwrap();
    assert_eq!(c.close_code().await, Some(1008));
}

/// 200 sends at once: most are `rate_limited`, none of that counts as abuse, the connection
/// stays open.
#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn a_burst_of_sends_is_rate_limited_not_closed(db: PgPool) {
    let s = stack(db, 1, |_| {}).await;
    let alice = s.user("alice").await;
    let room = s.room(&alice, "r", &[]).await;
    let mut c = s.connect(0, &alice).await;
    for i in 0..200 {
        c.ws.feed(Message::Text(
            json!({"type": "send_message", "data": {"content": "x", "chat_type": "room", "chat_id": room, "client_id": format!("c{i}")}}).to_string().into(),
        ))
        .await
        .unwrap();
    }
    c.ws.flush().await.unwrap();
    c.send("ping", json!({})).await;
    let frames = c.drain(Duration::from_millis(1500)).await;
    assert!(frames.iter().any(|f| f["type"] == "pong"), "still open");
    let limited = frames
        .iter()
        .filter(|f| f["type"] == "error" && f["data"]["code"] == "rate_limited")
        .count();
    assert!(limited >= 150, "{limited}");
}

/// `mark_read` is limited to 10 a second per connection; the rest are `rate_limited`, and none
/// of that is abuse.
#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn mark_read_is_rate_limited(db: PgPool) {
    let s = stack(db, 1, |_| {}).await;
    let alice = s.user("alice").await;
    let room = s.room(&alice, "r", &[]).await;
    s.send_rest(&alice, &format!("room/{room}"), "one").await;
    let mut c = s.connect(0, &alice).await;
    for _ in 0..25 {
        c.ws.feed(Message::Text(
            json!({"type": "mark_read", "data": {"chat_type": "room", "chat_id": room, "seq": 1}})
                .to_string()
                .into(),
        ))
        .await
        .unwrap();
    }
    c.ws.flush().await.unwrap();
    c.send("ping", json!({})).await;
    let frames = c.drain(Duration::from_millis(800)).await;
    let limited = frames
        .iter()
        .filter(|f| f["type"] == "error" && f["data"]["code"] == "rate_limited")
        .count();
    assert!((14..=15).contains(&limited), "{limited}: {frames:?}");
    assert!(frames.iter().any(|f| f["type"] == "pong"));
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn sync_is_bounded(db: PgPool) {
    let s = stack(db, 1, |_| {}).await;
    let alice = s.user("alice").await;
    let room = s.room(&alice, "r", &[]).await;
    let mut c = s.connect(0, &alice).await;
    let many: Vec<_> = (0..101)
        .map(|_| json!({"chat_type": "room", "chat_id": uuid::Uuid::new_v4(), "seq": 0}))
        .collect();
    c.send("sync", json!({ "positions": many })).await;
    assert_eq!(c.expect("error").await["data"]["code"], "invalid_payload");
    // The same conversation named 150 times is one position.
    let same: Vec<_> = (0..150)
        .map(|i| json!({"chat_type": "room", "chat_id": room, "seq": i}))
        .collect();
    // Two at once (one write): the second is refused while the first is under way.
    for positions in [json!(same), json!([])] {
        c.ws.feed(Message::Text(
            json!({"type": "sync", "data": {"positions": positions}})
                .to_string()
                .into(),
        ))
        .await
        .unwrap();
    }
    c.ws.flush().await.unwrap();
    let frames = c.drain(Duration::from_millis(1500)).await;
    let synced: Vec<_> = frames.iter().filter(|f| f["type"] == "synced").collect();
    assert_eq!(synced.len(), 1, "{frames:?}");
    assert_eq!(synced[0]["data"]["results"].as_array().unwrap().len(), 1);
    assert!(frames
        .iter()
        .any(|f| f["type"] == "error" && f["data"]["code"] == "rate_limited"));
    // Once it is done, another is taken.
    c.send("sync", json!({ "positions": [] })).await;
    c.expect("synced").await;
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn syncs_are_limited_per_user_across_sockets_and_gateways(db: PgPool) {
    let s = stack(db, 2, |c| {
        c.sync_rate = shared::limits::Rate {
            per_second: 1,
            burst: 2,
        }
    })
    .await;
    let alice = s.user("alice").await;
    let bob = s.user("bob").await;
    let room = s.room(&alice, "r", &[&bob]).await;
    let mut a1 = s.connect(0, &alice).await;
    let mut a2 = s.connect(1, &alice).await;
    let mut b = s.connect(0, &bob).await;
    let at = json!({"positions": [{"chat_type": "room", "chat_id": room, "seq": 0}]});
    a1.send("sync", at.clone()).await;
    a1.expect("synced").await;
    a2.send("sync", at.clone()).await;
    a2.expect("synced").await;
    // Alice's two are spent, one on each gateway.
    a1.send("sync", at.clone()).await;
    let refused = a1.expect("error").await;
    assert_eq!(refused["data"]["code"], "rate_limited");
    // Bob keeps his.
    b.send("sync", at.clone()).await;
    b.expect("synced").await;
    // One comes back within a second; the refusal left the connection open.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    a1.send("sync", at).await;
    a1.expect("synced").await;
}

/// WebSocket upgrades are paced per user across gateways: each asks chat-service for the
/// user's conversations and holds an upgrade slot of the gateway meanwhile, so one user's
/// script reconnecting in a loop could hold every slot. Past the bucket, 429 `rate_limited`
/// with `Retry-After` before any of that; other users connect as before.
#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn connecting_is_limited_per_user_across_gateways(db: PgPool) {
    let s = stack(db, 2, |c| {
        c.connect_rate = shared::limits::Rate {
            per_second: 1,
            burst: 3,
        }
    })
    .await;
    let alice = s.user("alice").await;
    let bob = s.user("bob").await;
    for g in [0, 1, 0] {
        // Opened and closed: the limit is on opening, not on holding.
        drop(s.connect(g, &alice).await);
    }
    let refused = Client::connect(s.gateways[1].port, &alice.token, None, None).await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status().as_u16(), 429);
            assert!(response.headers().contains_key("retry-after"));
            let body: serde_json::Value =
                serde_json::from_slice(response.body().as_deref().unwrap_or_default()).unwrap();
            assert_eq!(body["code"], "rate_limited");
        }
        other => panic!("expected a 429, got {:?}", other.map(|_| "a socket")),
    }
    s.connect(1, &bob).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    s.connect(1, &alice).await;
}

/// `typing` is limited per user across their sockets on every gateway: each is an event to
/// every member, and a per-socket rate alone let a user send twenty times as many from twenty
/// sockets.
#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn typing_is_limited_per_user_across_sockets_and_gateways(db: PgPool) {
    let s = stack(db, 2, |c| c.typing_rate_per_second = 1).await;
    let alice = s.user("alice").await;
    let bob = s.user("bob").await;
    let room = s.room(&alice, "r", &[&bob]).await;
    let mut a1 = s.connect(0, &alice).await;
    let mut a2 = s.connect(1, &alice).await;
    let mut b = s.connect(0, &bob).await;
    let typing = json!({"chat_type": "room", "chat_id": room});
    // Each socket alone may send two (its own first line); the user, two in all.
    for a in [&mut a1, &mut a2] {
        for _ in 0..2 {
            a.send("typing", typing.clone()).await;
        }
    }
    let mut refused = a1.drain(Duration::from_millis(500)).await;
    refused.extend(a2.drain(Duration::from_millis(100)).await);
    let refused = refused
        .iter()
        .filter(|f| f["type"] == "error" && f["data"]["code"] == "rate_limited")
        .count();
    assert_eq!(refused, 2, "two of the four were refused");
    let seen = b
        .drain(Duration::from_millis(300))
        .await
        .into_iter()
        .filter(|f| f["type"] == "typing")
        .count();
    assert_eq!(seen, 2, "bob saw the two let through");
    // The bucket fills again, and bob's is his own.
    b.send("typing", typing.clone()).await;
    a1.expect("typing").await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    a2.send("typing", typing).await;
    b.expect("typing").await;
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn a_sync_stops_at_the_frames_byte_budget(db: PgPool) {
    // 500 messages of the longest content in each of two rooms (about 4.5 MB as JSON): within
    // the contract's counts (500 a position, 5,000 a frame), but past the frame's byte budget.
    // Without one, a client repeating such a sync on each of its sockets made chat-service and
    // the gateway hold some 80 MB per sync at the longest content.
    let s = stack(db, 1, |_| {}).await;
    let alice = s.user("alice").await;
    let rooms = [
        s.room(&alice, "a", &[]).await,
        s.room(&alice, "b", &[]).await,
        s.room(&alice, "c", &[]).await,
        s.room(&alice, "d", &[]).await,
    ];
    push_bulk(&s.prefix, alice.id, rooms[0], 500, 4000).await;
    push_bulk(&s.prefix, alice.id, rooms[1], 500, 4000).await;
    s.send_rest(&alice, &format!("room/{}", rooms[2]), "one")
        .await;
    for room in &rooms[..2] {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let page = s
                .rest(
                    &alice,
                    reqwest::Method::GET,
                    &format!("/chat/messages/room/{room}?limit=1"),
                    serde_json::Value::Null,
                )
                .await;
            if page["messages"][0]["seq"] == 500 {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "500 persisted");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let mut c = s.connect(0, &alice).await;
    let position =
        |room: &uuid::Uuid, seq: i64| json!({"chat_type": "room", "chat_id": room, "seq": seq});
    let mut got: Vec<Vec<i64>> = vec![Vec::new(); 4];
    let mut at = [0i64; 4];
    let mut syncs = 0;
    loop {
        c.send(
            "sync",
            json!({ "positions": rooms.iter().zip(at).map(|(r, seq)| position(r, seq)).collect::<Vec<_>>() }),
        )
        .await;
        let frame = c.expect("synced").await;
        syncs += 1;
        let size = frame.to_string().len();
        assert!(
            size <= shared::internal::SYNC_FRAME_BYTES,
            "a synced frame of {size} bytes"
        );
        let results = frame["data"]["results"].as_array().unwrap();
        let mut more = false;
        for (i, r) in results.iter().enumerate() {
            for m in r["messages"].as_array().unwrap() {
                got[i].push(m["seq"].as_i64().unwrap());
            }
            at[i] = got[i].last().copied().unwrap_or(at[i]);
            more |= r["has_more"] == true;
        }
        if syncs == 1 {
            // The first room whole, the second cut short, the third not read but marked, the
            // fourth (nothing in it) not marked.
            assert_eq!(got[0].len(), 500);
            assert_eq!(results[0]["has_more"], false);
            assert!(got[1].len() < 500 && !got[1].is_empty(), "{}", got[1].len());
            assert_eq!(results[1]["has_more"], true);
            assert!(got[2].is_empty());
            assert_eq!(results[2]["has_more"], true);
            assert_eq!(results[3]["has_more"], false);
        }
        if !more {
            break;
        }
        assert!(syncs < 5, "the rest comes in a few more syncs");
    }
    for (i, want) in [500, 500, 1, 0].into_iter().enumerate() {
        assert_eq!(
            got[i],
            (1..=want).collect::<Vec<_>>(),
            "room {i}: each once, in order"
        );
    }
}

/// A private chat that begins while both users are connected is live on both sides at once:
/// typing in it works either way.
#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn typing_works_in_a_private_chat_begun_while_connected(db: PgPool) {
    let s = stack(db, 2, |_| {}).await;
    let alice = s.user("alice").await;
    let bob = s.user("bob").await;
    let mut a = s.connect(0, &alice).await;
    let mut b = s.connect(1, &bob).await;
    a.send(
        "send_message",
        json!({"content": "hi", "chat_type": "private", "chat_id": bob.id, "client_id": "first"}),
    )
    .await;
    a.expect("ack").await;
    b.expect("message").await;
    b.send(
        "typing",
        json!({"chat_type": "private", "chat_id": alice.id}),
    )
    .await;
    let t = a.expect("typing").await;
    assert_eq!(t["data"]["user_id"], bob.id.to_string());
    assert_eq!(t["data"]["chat_id"], bob.id.to_string());
    a.send("typing", json!({"chat_type": "private", "chat_id": bob.id}))
        .await;
    let t = b.expect("typing").await;
    assert_eq!(t["data"]["chat_id"], alice.id.to_string());
    // And it counts as a conversation for mark_read.
    b.send(
        "mark_read",
        json!({"chat_type": "private", "chat_id": alice.id, "seq": 1}),
    )
    .await;
    let r = a.expect("read").await;
    assert_eq!(r["data"]["user_id"], bob.id.to_string());
}

/// Removed from a group: nothing more of it arrives, and typing and sending are refused.
#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn removal_ends_delivery_typing_and_sending(db: PgPool) {
    let s = stack(db, 2, |_| {}).await;
    let alice = s.user("alice").await;
    let bob = s.user("bob").await;
    let group = s
        .rest(
            &alice,
            reqwest::Method::POST,
            "/chat/groups",
            json!({"name": "g", "member_ids": [bob.id]}),
        )
        .await;
    let group = group["id"].as_str().unwrap().to_owned();
    let mut a = s.connect(0, &alice).await;
    let mut b = s.connect(1, &bob).await;
    s.rest(
        &alice,
        reqwest::Method::DELETE,
        &format!("/chat/groups/{group}/members/{}", bob.id),
        serde_json::Value::Null,
    )
    .await;
    let m = b.expect("membership").await;
    assert_eq!(m["data"]["action"], "removed");
    b.send("typing", json!({"chat_type": "group", "chat_id": group}))
        .await;
    assert_eq!(b.expect("error").await["data"]["code"], "forbidden");
    b.send("send_message", json!({"content": "still here?", "chat_type": "group", "chat_id": group, "client_id": "late"})).await;
    let e = b.expect("error").await;
    assert_eq!(e["data"]["code"], "forbidden");
    assert_eq!(e["data"]["client_id"], "late");
    a.send("send_message", json!({"content": "bob is gone", "chat_type": "group", "chat_id": group, "client_id": "g1"})).await;
    a.expect("ack").await;
    let after = b.drain(Duration::from_millis(500)).await;
    assert!(
        after.iter().all(|f| f["type"] != "message"),
        "nothing of the group reaches bob: {after:?}"
    );
}

/// Banned from a room over live sockets: the ban reaches the user, nothing more of the room
/// does, and a muted member's socket sends are refused `muted`.
#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn bans_end_delivery_and_mutes_refuse_socket_sends(db: PgPool) {
    let s = stack(db, 2, |_| {}).await;
    let alice = s.user("alice").await;
    let bob = s.user("bob").await;
    let carol = s.user("carol").await;
    let room = s
        .rest(
            &alice,
            reqwest::Method::POST,
            "/chat/rooms",
            json!({"name": "mod"}),
        )
        .await;
    let room = room["id"].as_str().unwrap().to_owned();
    for u in [&bob, &carol] {
        s.rest(
            u,
            reqwest::Method::POST,
            &format!("/chat/rooms/{room}/join"),
            serde_json::Value::Null,
        )
        .await;
    }
    let mut a = s.connect(0, &alice).await;
    let mut b = s.connect(1, &bob).await;
    let mut c = s.connect(1, &carol).await;
    let until = chrono::Utc::now() + chrono::Duration::hours(1);
    s.rest(
        &alice,
        reqwest::Method::POST,
        &format!("/chat/rooms/{room}/mutes"),
        json!({"user_id": carol.id, "until": until}),
    )
    .await;
    let m = c.expect("membership").await;
    assert_eq!(m["data"]["action"], "muted");
    assert_eq!(m["data"]["by"], alice.id.to_string());
    c.send(
        "send_message",
        json!({"content": "hush?", "chat_type": "room", "chat_id": room, "client_id": "m1"}),
    )
    .await;
    let e = c.expect("error").await;
    assert_eq!(e["data"]["code"], "muted", "{e}");
    assert_eq!(e["data"]["client_id"], "m1");

    s.rest(
        &alice,
        reqwest::Method::POST,
        &format!("/chat/rooms/{room}/bans"),
        json!({"user_id": bob.id}),
    )
    .await;
    // Bob saw carol's mute first (members see the room's moderation).
    let m = b.expect("membership").await;
    assert_eq!(m["data"]["action"], "muted");
    assert_eq!(m["data"]["user_id"], carol.id.to_string());
    let m = b.expect("membership").await;
    assert_eq!(m["data"]["action"], "banned");
    assert_eq!(m["data"]["user_id"], bob.id.to_string());
    a.send(
        "send_message",
        json!({"content": "bob is out", "chat_type": "room", "chat_id": room, "client_id": "r1"}),
    )
    .await;
    a.expect("ack").await;
    let after = b.drain(Duration::from_millis(500)).await;
    assert!(
        after.iter().all(|f| f["type"] != "message"),
        "nothing of the room reaches bob: {after:?}"
    );
    b.send(
        "send_message",
        json!({"content": "let me in", "chat_type": "room", "chat_id": room, "client_id": "b1"}),
    )
    .await;
    assert_eq!(b.expect("error").await["data"]["code"], "forbidden");
}

/// A file sent over a socket: upload by REST, `send_message` with `attachment_id` and no
/// content, the `ack` and the other member's `message` carry the attachment; a second use of
/// the upload is refused on the socket.
#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn attachments_travel_over_sockets(db: PgPool) {
    let s = stack(db, 2, |_| {}).await;
    let alice = s.user("alice").await;
    let bob = s.user("bob").await;
    let room = s.room(&alice, "files", &[&bob]).await;
    let bytes = b"%PDF-1.7\n a small document".to_vec();
    let ticket = s
        .rest(
            &alice,
            reqwest::Method::POST,
            "/chat/uploads",
            json!({"filename": "doc.pdf", "content_type": "application/pdf", "size": bytes.len()}),
        )
        .await;
    let r = s
        .http
        .put(format!("{}{}", s.chat[0], ticket["url"].as_str().unwrap()))
        .header("content-type", "application/pdf")
        .body(bytes.clone())
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let id = ticket["upload_id"].as_str().unwrap().to_owned();
    let mut a = s.connect(0, &alice).await;
    let mut b = s.connect(1, &bob).await;
    a.send("send_message", json!({"chat_type": "room", "chat_id": room, "message_type": "file", "attachment_id": id, "client_id": "f1"})).await;
    let ack = a.expect("ack").await;
    assert_eq!(
        ack["data"]["message"]["attachment"]["id"],
        id.as_str(),
        "{ack}"
    );
    assert_eq!(ack["data"]["message"]["attachment"]["filename"], "doc.pdf");
    let m = b.expect("message").await;
    assert_eq!(m["data"]["attachment"]["size"], bytes.len());
    assert_eq!(m["data"]["message_type"], "file");
    a.send("send_message", json!({"chat_type": "room", "chat_id": room, "message_type": "file", "attachment_id": id, "client_id": "f2"})).await;
    let e = a.expect("error").await;
    assert_eq!(e["data"]["client_id"], "f2");
    assert!(
        e["data"]["detail"].as_str().unwrap().contains("used"),
        "{e}"
    );
}

/// A reconnect storm is paced: past `UPGRADES_IN_FLIGHT` the upgrade is refused at once with
/// 503 and a jittered `Retry-After` (chat-service's own bound on internal calls is tested in
/// its health.rs).
#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn upgrades_and_internal_calls_are_bounded(db: PgPool) {
    let s = stack(db, 1, |c| c.upgrades_in_flight = 0).await;
    let alice = s.user("alice").await;
    match Client::connect(s.gateways[0].port, &alice.token, None, None).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => {
            assert_eq!(r.status(), 503);
            let wait: u64 = r.headers()["retry-after"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            assert!((1..=5).contains(&wait), "{wait}");
        }
        other => panic!("expected 503, got {:?}", other.map(|_| ())),
    }
}

/// Blocking over live sockets: the blocked user's typing and presence no longer reach the
/// blocker (from the moment of the block, on connections open already), their sends to the
/// blocker's private chat are refused `blocked`; the blocker still sees everyone else.
#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn a_blocker_gets_no_typing_or_presence_from_the_blocked(db: PgPool) {
    let s = stack(db, 2, |_| {}).await;
    let alice = s.user("alice").await;
    let bob = s.user("bob").await;
    let hello = s
        .send_rest(&bob, &format!("private/{}", alice.id), "hello")
        .await;
    let mut a = s.connect(0, &alice).await;
    let mut b = s.connect(1, &bob).await;
    b.send(
        "typing",
        json!({"chat_type": "private", "chat_id": alice.id}),
    )
    .await;
    a.expect("typing").await;
    s.rest(
        &alice,
        reqwest::Method::PUT,
        &format!("/chat/blocks/{}", bob.id),
        serde_json::Value::Null,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    b.send(
        "typing",
        json!({"chat_type": "private", "chat_id": alice.id}),
    )
    .await;
    b.send("send_message", json!({"content": "hey", "chat_type": "private", "chat_id": alice.id, "client_id": "blocked-1"})).await;
    let e = b.expect("error").await;
    assert_eq!(e["data"]["code"], "blocked");
    assert_eq!(e["data"]["client_id"], "blocked-1");
    // Bob goes offline and comes back: no presence for alice either.
    b.ws.close(None).await.unwrap();
    let mut b2 = s.connect(1, &bob).await;
    let frames = a.drain(Duration::from_millis(800)).await;
    assert!(
        frames
            .iter()
            .all(|f| f["type"] != "typing" && f["type"] != "presence"),
        "{frames:?}"
    );
    // Alice still types to bob, and a pin reaches both sides with their own chat_id.
    a.send("typing", json!({"chat_type": "private", "chat_id": bob.id}))
        .await;
    b2.expect("typing").await;
    s.rest(
        &alice,
        reqwest::Method::PUT,
        &format!("/chat/messages/{}/pin", hello["id"].as_str().unwrap()),
        serde_json::Value::Null,
    )
    .await;
    let pa = a.expect("pin").await;
    let pb = b2.expect("pin").await;
    assert_eq!(pa["data"]["chat_id"], bob.id.to_string());
    assert_eq!(pb["data"]["chat_id"], alice.id.to_string());
    assert_eq!(pa["data"]["pinned"], true);
    assert_eq!(pb["data"]["by"], alice.id.to_string());
    assert_eq!(pb["data"]["seq"], 1);
}

/// A connection's frames are read at a pace (`INBOUND_FRAME_RATE_PER_SECOND`, bursts of
/// `INBOUND_FRAME_BURST`): every frame costs the gateway work (a `ping` a `pong`, a refused
/// `typing` an error frame, each parsed and written), and without a pace one socket flooding
/// frames kept a gateway's thread busy for everyone on it. Past the budget the gateway reads
/// that socket more slowly: nothing is refused or dropped, and other clients are answered at
/// once meanwhile.
#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn a_flood_of_frames_is_read_at_a_pace(db: PgPool) {
    let s = stack(db, 1, |c| {
        c.inbound_frame_rate = shared::limits::Rate {
            per_second: 50,
            burst: 20,
        };
    })
    .await;
    let alice = s.user("alice").await;
    let bob = s.user("bob").await;
    let mut flood = s.connect(0, &alice).await;
    let mut other = s.connect(0, &bob).await;
    let started = std::time::Instant::now();
    const PINGS: usize = 120;
    for _ in 0..PINGS {
        flood.send("ping", json!({})).await;
    }
    // Bob is answered while alice's pings are still being read.
    other.send("ping", json!({})).await;
    other.expect("pong").await;
    let pongs_by_then = flood.drain(Duration::from_millis(1)).await.len();
    assert!(
        pongs_by_then < PINGS,
        "bob's pong came before the flood was all answered ({pongs_by_then})"
    );
    let mut pongs = pongs_by_then;
    while pongs < PINGS {
        assert_eq!(flood.expect("pong").await["type"], "pong");
        pongs += 1;
    }
    // 100 frames past the burst at 50 a second: two seconds at least, however fast the
    // machine (without the pace, a few milliseconds).
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1800),
        "{PINGS} pings answered in {took:?}"
    );
    // Paced, not refused: the socket is open and answers.
    flood.send("ping", json!({})).await;
    flood.expect("pong").await;
}

/// A `rate_limited` answer says when to try again (`retry_after_ms`): a send past the rate, as
/// soon as the bucket holds a token; a first message to someone past the quota on private chats
/// started (`PRIVATE_CHATS_PER_HOUR`), when the hour's window ends, and the chat is not started.
#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn rate_limited_answers_say_when_to_retry(db: PgPool) {
    let s = stack(db, 1, |c| {
        c.send_rate = shared::limits::Rate {
            per_second: 4,
            burst: 1,
        };
    })
    .await;
    let alice = s.user("alice").await;
    let bob = s.user("bob").await;
    let room = s.room(&alice, "r", &[]).await;
    let mut c = s.connect(0, &alice).await;
    for id in ["a", "b"] {
        c.send(
            "send_message",
            json!({"content": "x", "chat_type": "room", "chat_id": room, "client_id": id}),
        )
        .await;
    }
    let refused = c.expect("error").await;
    assert_eq!(refused["data"]["code"], "rate_limited");
    assert_eq!(refused["data"]["client_id"], "b");
    let wait = refused["data"]["retry_after_ms"].as_u64().unwrap();
    assert!((1..=250).contains(&wait), "{wait}");
    // Bob is new to Alice, and her quota of new private chats is used up.
    let redis = fred::prelude::Builder::from_config(
        fred::prelude::Config::from_url(&crate::helpers::redis_url()).unwrap(),
    )
    .build()
    .unwrap();
    fred::prelude::ClientLike::init(&redis).await.unwrap();
    let key =
        shared::keys::Keys::new(s.prefix.clone()).quota("private_chats", &alice.id.to_string());
    let full = chat_service::config::Quotas::default().private_chats_per_hour;
    let _: () = fred::prelude::KeysInterface::set(
        &redis,
        &key,
        full,
        Some(fred::types::Expiration::EX(3600)),
        None,
        false,
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    c.send(
        "send_message",
        json!({"content": "hi", "chat_type": "private", "chat_id": bob.id, "client_id": "p"}),
    )
    .await;
    let refused = c.expect("error").await;
    assert_eq!(refused["data"]["code"], "rate_limited", "{refused}");
    assert_eq!(refused["data"]["client_id"], "p");
    assert_eq!(refused["data"]["in_reply_to"], "send_message");
    let wait = refused["data"]["retry_after_ms"].as_u64().unwrap();
    assert!((3_000_000..=3_600_000).contains(&wait), "{wait}");
    let chats: i64 =
        sqlx::query_scalar("SELECT count(*) FROM conversations WHERE chat_type = 'PRIVATE'")
            .fetch_one(&s.db)
            .await
            .unwrap();
    assert_eq!(chats, 0);
}
