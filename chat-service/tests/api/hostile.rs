//! Client text and quotas at the REST edge: every text field refuses control characters with a
//! 422 naming the field (never a 500), creation is limited per user per hour, the changes that
//! reach others per user per second, and a member who left can no longer change what they wrote
//! there.

use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::PgPool;

use crate::helpers::{assert_error, spawn_app, spawn_app_with};

async fn assert_names(r: reqwest::Response, field: &str) {
    let body = assert_error(r, StatusCode::UNPROCESSABLE_ENTITY, "validation_error").await;
    assert!(
        body["fields"].get(field).is_some(),
        "the 422 names {field}: {body}"
    );
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn every_text_field_refuses_control_characters(db: PgPool) {
    let app = spawn_app(db).await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let room = app.room(&alice, "r", &[]).await;
    let nul = "a\u{0}b";
    let esc = "x\u{1b}[2J";
    let c1 = "y\u{85}";
    let del = "z\u{7f}";

    for bad in [nul, esc, c1, del] {
        assert_names(
            app.post(&alice, "/chat/rooms", json!({"name": bad})).await,
            "name",
        )
        .await;
        assert_names(
            app.post(
                &alice,
                "/chat/rooms",
                json!({"name": "ok", "description": bad}),
            )
            .await,
            "description",
        )
        .await;
        assert_names(
            app.post(
                &alice,
                "/chat/groups",
                json!({"name": bad, "member_ids": [bob.id]}),
            )
            .await,
            "name",
        )
        .await;
        assert_names(
            app.post(
                &alice,
                &format!("/chat/messages/room/{room}"),
                json!({"content": bad}),
            )
            .await,
            "content",
        )
        .await;
        assert_names(
            app.post(
                &alice,
                &format!("/chat/messages/room/{room}"),
                json!({"content": "fine", "client_id": bad}),
            )
            .await,
            "client_id",
        )
        .await;
    }
    let sent = app.send(&alice, &format!("room/{room}"), "original").await;
    let id = sent["id"].as_str().unwrap();
    assert_names(
        app.patch(
            &alice,
            &format!("/chat/messages/{id}"),
            json!({"content": nul}),
        )
        .await,
        "content",
    )
    .await;
    // A query string's values too.
    let r = app
        .get(
            &alice,
            "/chat/messages/room/00000000-0000-0000-0000-000000000000?limit=%00",
        )
        .await;
    assert_names(r, "limit").await;
    // Tab, line feed and carriage return are text.
    let ok = app
        .send(&alice, &format!("room/{room}"), "two\tcolumns\r\nand lines")
        .await;
    assert_eq!(ok["content"], "two\tcolumns\r\nand lines");
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM messages")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(stored, 2, "nothing refused was stored");
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn a_seq_is_refused_outside_zero_to_two_to_the_53(db: PgPool) {
    let app = spawn_app(db).await;
    let alice = app.user("alice").await;
    let room = app.room(&alice, "r", &[]).await;
    app.send(&alice, &format!("room/{room}"), "one").await;
    let too_big = 1_i64 << 53;

    for seq in [json!(too_big), json!(-1), json!(1.5), json!("1")] {
        assert_names(
            app.post(
                &alice,
                &format!("/chat/read/room/{room}"),
                json!({ "seq": seq }),
            )
            .await,
            "seq",
        )
        .await;
    }
    for query in [
        format!("before={too_big}"),
        format!("after={too_big}"),
        "after=-1".to_owned(),
    ] {
        let field = query.split('=').next().unwrap().to_owned();
        let r = app
            .get(&alice, &format!("/chat/messages/room/{room}?{query}"))
            .await;
        assert_names(r, &field).await;
    }
    let r = app
        .get(&alice, &format!("/chat/search?q=one&before_seq={too_big}"))
        .await;
    assert_names(r, "before_seq").await;

    // The largest valid seq is taken, and a read position stops at the newest message.
    let r = app
        .post(
            &alice,
            &format!("/chat/read/room/{room}"),
            json!({ "seq": too_big - 1 }),
        )
        .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let page = app
        .get(
            &alice,
            &format!("/chat/messages/room/{room}?before={}", too_big - 1),
        )
        .await;
    assert_eq!(page.status(), StatusCode::OK);
    let stored: i64 = sqlx::query_scalar("SELECT last_read_seq FROM conversation_members")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(stored, 1);

    // The OpenAPI document states the same range.
    let spec = app.openapi().await;
    let largest = (too_big - 1) as f64;
    let seq = &spec["components"]["schemas"]["ReadRequest"]["properties"]["seq"];
    assert_eq!(
        (seq["minimum"].as_f64(), seq["maximum"].as_f64()),
        (Some(0.0), Some(largest))
    );
    let params = spec["paths"]["/chat/messages/{chat_type}/{chat_id}"]["get"]["parameters"]
        .as_array()
        .unwrap();
    let before = params.iter().find(|p| p["name"] == "before").unwrap();
    assert_eq!(
        before["schema"]["maximum"].as_f64(),
        Some(largest),
        "{before}"
    );
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn a_removed_member_can_no_longer_edit_or_delete(db: PgPool) {
    let app = spawn_app(db).await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let r = app
        .post(
            &alice,
            "/chat/groups",
            json!({"name": "g", "member_ids": [bob.id]}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let group: Value = r.json().await.unwrap();
    let group = group["id"].as_str().unwrap().to_owned();
    let m = app.send(&bob, &format!("group/{group}"), "mine").await;
    let id = m["id"].as_str().unwrap().to_owned();
    let room = app.room(&alice, "r", &[&bob]).await;
    let in_room = app.send(&bob, &format!("room/{room}"), "mine too").await;
    let in_room = in_room["id"].as_str().unwrap().to_owned();
    // While a member, bob may edit.
    let r = app
        .patch(
            &bob,
            &format!("/chat/messages/{id}"),
            json!({"content": "edited"}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);

    let r = app
        .delete(&alice, &format!("/chat/groups/{group}/members/{}", bob.id))
        .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = app
        .post(&bob, &format!("/chat/rooms/{room}/leave"), Value::Null)
        .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    for id in [&id, &in_room] {
        let r = app
            .patch(
                &bob,
                &format!("/chat/messages/{id}"),
                json!({"content": "again"}),
            )
            .await;
        assert_error(r, StatusCode::FORBIDDEN, "forbidden").await;
        let r = app.delete(&bob, &format!("/chat/messages/{id}")).await;
        assert_error(r, StatusCode::FORBIDDEN, "forbidden").await;
    }
    let content: String = sqlx::query_scalar("SELECT content FROM messages WHERE id = $1::uuid")
        .bind(&id)
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(content, "edited");
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn rooms_and_groups_created_per_hour_are_limited(db: PgPool) {
    let app = spawn_app_with(db, &format!("test:{}:", uuid::Uuid::new_v4()), |c| {
        c.quotas.rooms_per_hour = 2;
        c.quotas.groups_per_hour = 1;
    })
    .await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    for name in ["one", "two"] {
        let r = app.post(&alice, "/chat/rooms", json!({"name": name})).await;
        assert_eq!(r.status(), StatusCode::CREATED);
    }
    let r = app
        .post(&alice, "/chat/rooms", json!({"name": "three"}))
        .await;
    assert!(r.headers().contains_key("retry-after"));
    assert_error(r, StatusCode::TOO_MANY_REQUESTS, "too_many_requests").await;
    // Another user's quota is their own.
    let r = app.post(&bob, "/chat/rooms", json!({"name": "bobs"})).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let r = app
        .post(
            &alice,
            "/chat/groups",
            json!({"name": "g1", "member_ids": [bob.id]}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let r = app
        .post(
            &alice,
            "/chat/groups",
            json!({"name": "g2", "member_ids": [bob.id]}),
        )
        .await;
    assert_error(r, StatusCode::TOO_MANY_REQUESTS, "too_many_requests").await;
    let groups: i64 = sqlx::query_scalar("SELECT count(*) FROM groups")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(groups, 1);
}

/// Every change that reaches the other members (reactions, edits, deletes, pins, joins and
/// leaves, group membership, moderation) takes a token from the user's action bucket: past it,
/// 429 `rate_limited` with `Retry-After`, nothing stored and no event; other users keep their
/// own bucket, and the tokens come back.
#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn changes_that_reach_others_are_limited_per_user(db: PgPool) {
    let app = spawn_app_with(db, &format!("test:{}:", uuid::Uuid::new_v4()), |c| {
        c.action_rate = shared::limits::Rate {
            per_second: 1,
            burst: 3,
        };
    })
    .await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let room = app.room(&alice, "r", &[]).await;
    let join = format!("/chat/rooms/{room}/join");
    assert_eq!(
        app.post(&bob, &join, json!({})).await.status(),
        StatusCode::OK
    );
    let message = app.send(&alice, &format!("room/{room}"), "hello").await;
    let id = message["id"].as_str().unwrap().to_owned();
    let mut watcher = app.watch(vec![app.keys.conversation_channel(room)]).await;

    // Three of alice's changes of three kinds go through; the fourth, a fifth of another kind,
    // are refused.
    for path in ["reactions/%F0%9F%91%8D", "reactions/%F0%9F%8E%89", "pin"] {
        let r = app
            .put(&alice, &format!("/chat/messages/{id}/{path}"))
            .await;
        assert_eq!(r.status(), StatusCode::NO_CONTENT, "{path}");
    }
    let r = app
        .put(&alice, &format!("/chat/messages/{id}/reactions/%E2%9D%A4"))
        .await;
    assert!(r.headers().contains_key("retry-after"));
    assert_error(r, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
    let r = app
        .patch(
            &alice,
            &format!("/chat/messages/{id}"),
            json!({"content": "edited"}),
        )
        .await;
    assert_error(r, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;

    // Nothing of the refused ones was stored or published.
    let reactions: i64 =
        sqlx::query_scalar("SELECT count(*) FROM message_reactions WHERE user_id = $1")
            .bind(alice.id)
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!(reactions, 2);
    let edited: bool = sqlx::query_scalar("SELECT is_edited FROM messages WHERE id = $1")
        .bind(uuid::Uuid::parse_str(&id).unwrap())
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert!(!edited);
    let events = watcher.drain(std::time::Duration::from_millis(300)).await;
    assert_eq!(events.len(), 3, "two reactions and a pin: {events:?}");

    // Bob's bucket is his own.
    let r = app
        .put(&bob, &format!("/chat/messages/{id}/reactions/%E2%9D%A4"))
        .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    // A second later alice has a token again.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let r = app
        .patch(
            &alice,
            &format!("/chat/messages/{id}"),
            json!({"content": "edited"}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
}

/// Private chats a user starts are limited per hour (`PRIVATE_CHATS_PER_HOUR`): a first message
/// to someone past it is 429 with `Retry-After` and starts nothing; messages to people already
/// talked to, and answers to whoever started a chat, do not count.
#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn private_chats_started_per_hour_are_limited(db: PgPool) {
    let app = spawn_app_with(db, &format!("test:{}:", uuid::Uuid::new_v4()), |c| {
        c.quotas.private_chats_per_hour = 2;
    })
    .await;
    let [alice, bob, carol, dave] = [
        app.user("alice").await,
        app.user("bob").await,
        app.user("carol").await,
        app.user("dave").await,
    ];
    app.send(&alice, &format!("private/{}", bob.id), "hi bob")
        .await;
    app.send(&alice, &format!("private/{}", carol.id), "hi carol")
        .await;
    let r = app
        .post(
            &alice,
            &format!("/chat/messages/private/{}", dave.id),
            json!({"content": "hi dave"}),
        )
        .await;
    let wait: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=3600).contains(&wait), "{wait}");
    assert_error(r, StatusCode::TOO_MANY_REQUESTS, "too_many_requests").await;
    // Chats already started take any number of messages, from either side.
    for i in 0..3 {
        app.send(
            &alice,
            &format!("private/{}", bob.id),
            &format!("again {i}"),
        )
        .await;
    }
    app.send(&carol, &format!("private/{}", alice.id), "hello alice")
        .await;
    // Dave's quota is his own; once he has started the chat, Alice answers in it.
    app.send(&dave, &format!("private/{}", alice.id), "hi alice")
        .await;
    app.send(&alice, &format!("private/{}", dave.id), "hi dave")
        .await;
    let chats: i64 =
        sqlx::query_scalar("SELECT count(*) FROM conversations WHERE chat_type = 'PRIVATE'")
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!(chats, 3, "alice-bob, alice-carol, dave-alice");
}

/// Two users who write to each other first at the same moment start one chat: only the one
/// whose send created it has used a new chat of the hour; the other's count is given back.
#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn a_chat_both_start_at_once_counts_once(db: PgPool) {
    let app = spawn_app_with(db, &format!("test:{}:", uuid::Uuid::new_v4()), |c| {
        c.quotas.private_chats_per_hour = 1;
    })
    .await;
    let newcomer = app.user("newcomer").await;
    let mut pairs = Vec::new();
    for i in 0..8 {
        pairs.push((
            app.user(&format!("left{i}")).await,
            app.user(&format!("right{i}")).await,
        ));
    }
    // Each pair writes to each other at once: one send creates the chat, the other finds it
    // (before its lookup, or by the insert's conflict).
    futures_util::future::join_all(pairs.iter().map(|(a, b)| async {
        let (to_b, to_a) = (format!("private/{}", b.id), format!("private/{}", a.id));
        tokio::join!(app.send(a, &to_b, "hi"), app.send(b, &to_a, "hi"))
    }))
    .await;
    // Exactly one of each pair has a new chat left for the hour.
    for (a, b) in &pairs {
        let mut started = 0;
        for u in [a, b] {
            let r = app
                .post(
                    u,
                    &format!("/chat/messages/private/{}", newcomer.id),
                    json!({"content": "hello"}),
                )
                .await;
            match r.status() {
                StatusCode::CREATED => started += 1,
                StatusCode::TOO_MANY_REQUESTS => {}
                other => panic!("{other}"),
            }
        }
        assert_eq!(started, 1, "{} and {}", a.name, b.name);
    }
}
