//! Pins, blocking and read receipts (contract, "Conversation features"), and profile changes
//! going out to the conversations.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};
use shared::chat::Event;
use sqlx::PgPool;
use uuid::Uuid;

use crate::helpers::{assert_error, spawn_app};

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn owners_pin_members_see_pins_newest_first(db: PgPool) {
    let app = spawn_app(db).await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let carol = app.user("carol").await;
    let room = app.room(&alice, "r", &[&bob]).await;
    let one = app.send(&bob, &format!("room/{room}"), "one").await;
    let two = app.send(&bob, &format!("room/{room}"), "two").await;
    let (one, two) = (one["id"].as_str().unwrap(), two["id"].as_str().unwrap());
    let mut watcher = app.watch(vec![app.keys.conversation_channel(room)]).await;

    // A plain member may not pin in a room; the owner may.
    let r = app.put(&bob, &format!("/chat/messages/{one}/pin")).await;
    assert_error(r, StatusCode::FORBIDDEN, "forbidden").await;
    for id in [one, two, one] {
        let r = app.put(&alice, &format!("/chat/messages/{id}/pin")).await;
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
    }
    let events: Vec<Event> = watcher
        .drain(std::time::Duration::from_millis(300))
        .await
        .into_iter()
        .map(|(_, e)| e)
        .collect();
    let pins: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            Event::Pin { pinned, by, .. } => Some((*pinned, *by)),
            _ => None,
        })
        .collect();
    assert_eq!(
        pins,
        vec![(true, alice.id), (true, alice.id)],
        "pinning twice is one event"
    );
    let listed: Vec<Value> = app
        .get(&carol, &format!("/chat/pins/room/{room}"))
        .await
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = listed.iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(
        ids,
        vec![two, one],
        "newest pin first; anyone may read a room's pins"
    );
    let r = app
        .delete(&alice, &format!("/chat/messages/{two}/pin"))
        .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let listed: Vec<Value> = app
        .get(&alice, &format!("/chat/pins/room/{room}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(listed.len(), 1);

    // Either user of a private chat pins; a stranger reads no group's pins.
    let dm = app
        .send(&bob, &format!("private/{}", carol.id), "psst")
        .await;
    let r = app
        .put(
            &carol,
            &format!("/chat/messages/{}/pin", dm["id"].as_str().unwrap()),
        )
        .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = app
        .post(
            &alice,
            "/chat/groups",
            json!({"name": "g", "member_ids": [bob.id]}),
        )
        .await;
    let group: Value = r.json().await.unwrap();
    let r = app
        .get(
            &carol,
            &format!("/chat/pins/group/{}", group["id"].as_str().unwrap()),
        )
        .await;
    assert_error(r, StatusCode::FORBIDDEN, "forbidden").await;
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn a_blocked_user_cannot_message_the_blocker_or_add_them_to_a_group(db: PgPool) {
    let app = spawn_app(db).await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let carol = app.user("carol").await;
    app.send(&bob, &format!("private/{}", alice.id), "hello")
        .await;
    let mut watcher = app.watch(vec![app.keys.user_channel(alice.id)]).await;
    let r = app.put(&alice, &format!("/chat/blocks/{}", bob.id)).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    match watcher.next().await.1 {
        Event::Block {
            user_id,
            blocked_id,
            blocked,
        } => assert_eq!((user_id, blocked_id, blocked), (alice.id, bob.id, true)),
        other => panic!("{other:?}"),
    }
    let blocks: Vec<Value> = app.get(&alice, "/chat/blocks").await.json().await.unwrap();
    assert_eq!(blocks.len(), 1);
    assert_eq!(blocks[0]["id"], bob.id.to_string());

    let r = app
        .post(
            &bob,
            &format!("/chat/messages/private/{}", alice.id),
            json!({"content": "are you there?"}),
        )
        .await;
    assert_error(r, StatusCode::FORBIDDEN, "blocked").await;
    let r = app
        .post(
            &bob,
            "/chat/groups",
            json!({"name": "g", "member_ids": [alice.id, carol.id]}),
        )
        .await;
    assert_error(r, StatusCode::FORBIDDEN, "blocked").await;
    let r = app
        .post(
            &bob,
            "/chat/groups",
            json!({"name": "g", "member_ids": [carol.id]}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let group: Value = r.json().await.unwrap();
    let r = app
        .post(
            &bob,
            &format!("/chat/groups/{}/members", group["id"].as_str().unwrap()),
            json!({"user_ids": [alice.id]}),
        )
        .await;
    assert_error(r, StatusCode::FORBIDDEN, "blocked").await;
    // The blocker may still write; others may still write to the blocker.
    app.send(&alice, &format!("private/{}", bob.id), "bye")
        .await;
    app.send(&carol, &format!("private/{}", alice.id), "hi alice")
        .await;
    // Unblocked: messages flow again.
    let r = app
        .delete(&alice, &format!("/chat/blocks/{}", bob.id))
        .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    app.send(&bob, &format!("private/{}", alice.id), "again")
        .await;
    let r = app.put(&alice, &format!("/chat/blocks/{}", alice.id)).await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let r = app
        .put(&alice, &format!("/chat/blocks/{}", uuid::Uuid::new_v4()))
        .await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}

/// Read receipts: every group member's position, and `read` events to every member at most once
/// a second per reader, the newest always arriving last.
#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn read_receipts_reach_every_group_member_at_most_once_a_second(db: PgPool) {
    let app = spawn_app(db).await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let carol = app.user("carol").await;
    let r = app
        .post(
            &alice,
            "/chat/groups",
            json!({"name": "g", "member_ids": [bob.id]}),
        )
        .await;
    let group: Value = r.json().await.unwrap();
    let group = group["id"].as_str().unwrap().to_owned();
    for i in 0..5 {
        app.send(&alice, &format!("group/{group}"), &format!("m{i}"))
            .await;
    }
    let mut watcher = app
        .watch(vec![app.keys.conversation_channel(group.parse().unwrap())])
        .await;
    for seq in 1..=5 {
        let r = app
            .post(
                &bob,
                &format!("/chat/read/group/{group}"),
                json!({ "seq": seq }),
            )
            .await;
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
    }
    let reads: Vec<i64> = watcher
        .drain(std::time::Duration::from_millis(1600))
        .await
        .into_iter()
        .filter_map(|(_, e)| match e {
            Event::Read { user_id, seq, .. } if user_id == bob.id => Some(seq),
            _ => None,
        })
        .collect();
    assert_eq!(
        reads.first(),
        Some(&1),
        "the first goes out at once: {reads:?}"
    );
    assert_eq!(reads.last(), Some(&5), "the newest comes last: {reads:?}");
    assert!(
        reads.len() <= 2,
        "at most one a second, plus the trailing one: {reads:?}"
    );

    let receipts: Vec<Value> = app
        .get(&alice, &format!("/chat/reads/group/{group}"))
        .await
        .json()
        .await
        .unwrap();
    let of = |u: uuid::Uuid| {
        receipts
            .iter()
            .find(|r| r["user_id"] == u.to_string())
            .map(|r| r["last_read_seq"].as_i64().unwrap())
    };
    assert_eq!(of(bob.id), Some(5));
    assert_eq!(of(alice.id), Some(5), "a sender has read its own messages");
    assert_eq!(
        receipts[0]["user_id"],
        bob.id.to_string(),
        "most recent reader first"
    );
    let r = app.get(&carol, &format!("/chat/reads/group/{group}")).await;
    assert_error(r, StatusCode::FORBIDDEN, "forbidden").await;
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn reactions_count_per_emoji_with_the_readers_own(db: PgPool) {
    let app = spawn_app(db).await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let carol = app.user("carol").await;
    let room = app.room(&alice, "r", &[&bob]).await;
    let m = app
        .send(&alice, &format!("room/{room}"), "react to me")
        .await;
    let id = m["id"].as_str().unwrap().to_owned();
    let mut watcher = app.watch(vec![app.keys.conversation_channel(room)]).await;
    let thumbs = "%F0%9F%91%8D"; // 👍, percent-encoded in the path
    for who in [&alice, &bob, &bob] {
        let r = app
            .put(who, &format!("/chat/messages/{id}/reactions/{thumbs}"))
            .await;
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
    }
    let r = app
        .put(&alice, &format!("/chat/messages/{id}/reactions/tada"))
        .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    // Carol has not joined: no reactions from her.
    let r = app
        .put(&carol, &format!("/chat/messages/{id}/reactions/{thumbs}"))
        .await;
    assert_error(r, StatusCode::FORBIDDEN, "forbidden").await;
    let events: Vec<(uuid::Uuid, String, bool)> = watcher
        .drain(std::time::Duration::from_millis(300))
        .await
        .into_iter()
        .filter_map(|(_, e)| match e {
            Event::Reaction {
                user_id,
                emoji,
                added,
                ..
            } => Some((user_id, emoji, added)),
            _ => None,
        })
        .collect();
    assert_eq!(
        events,
        vec![
            (alice.id, "👍".to_owned(), true),
            (bob.id, "👍".to_owned(), true),
            (alice.id, "tada".to_owned(), true)
        ],
        "one event per change; adding twice is harmless"
    );
    let path = format!("/chat/messages/room/{room}");
    assert_eq!(
        reactions_seen(&app, &bob, &path).await,
        json!([{"emoji": "👍", "count": 2, "me": true}, {"emoji": "tada", "count": 1, "me": false}])
    );
    assert_eq!(
        reactions_seen(&app, &carol, &path).await,
        json!([{"emoji": "👍", "count": 2, "me": false}, {"emoji": "tada", "count": 1, "me": false}])
    );
    let r = app
        .delete(&bob, &format!("/chat/messages/{id}/reactions/{thumbs}"))
        .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        reactions_seen(&app, &bob, &path).await[0],
        json!({"emoji": "👍", "count": 1, "me": false})
    );
    // At most 20 distinct emoji; bad ones are 422.
    for i in 0..18 {
        let r = app
            .put(&alice, &format!("/chat/messages/{id}/reactions/e{i}"))
            .await;
        assert_eq!(r.status(), StatusCode::NO_CONTENT, "{i}");
    }
    let r = app
        .put(
            &alice,
            &format!("/chat/messages/{id}/reactions/one-too-many"),
        )
        .await;
    assert_error(r, StatusCode::UNPROCESSABLE_ENTITY, "validation_error").await;
    let r = app
        .put(&bob, &format!("/chat/messages/{id}/reactions/{thumbs}"))
        .await;
    assert_eq!(
        r.status(),
        StatusCode::NO_CONTENT,
        "an existing emoji is still fine"
    );
    let long = "x".repeat(33);
    let r = app
        .put(&alice, &format!("/chat/messages/{id}/reactions/{long}"))
        .await;
    assert_error(r, StatusCode::UNPROCESSABLE_ENTITY, "validation_error").await;
    let r = app
        .put(&alice, &format!("/chat/messages/{id}/reactions/a%00b"))
        .await;
    assert_error(r, StatusCode::UNPROCESSABLE_ENTITY, "validation_error").await;
}

/// Distinct emoji added at once cannot pass the limit together: each add checks the count
/// under the message's row lock.
#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn concurrent_reactions_stop_at_twenty_distinct(db: PgPool) {
    let app = spawn_app(db).await;
    let alice = app.user("alice").await;
    let room = app.room(&alice, "r", &[]).await;
    let m = app.send(&alice, &format!("room/{room}"), "react").await;
    let id = m["id"].as_str().unwrap().to_owned();
    let puts = (0..30).map(|i| {
        let (app, alice, id) = (&app, &alice, &id);
        async move {
            app.put(alice, &format!("/chat/messages/{id}/reactions/e{i}"))
                .await
                .status()
        }
    });
    let statuses = futures_util::future::join_all(puts).await;
    let added = statuses
        .iter()
        .filter(|s| **s == StatusCode::NO_CONTENT)
        .count();
    let refused = statuses
        .iter()
        .filter(|s| **s == StatusCode::UNPROCESSABLE_ENTITY)
        .count();
    assert_eq!((added, refused), (20, 10), "{statuses:?}");
    let seen = reactions_seen(&app, &alice, &format!("/chat/messages/room/{room}")).await;
    assert_eq!(seen.as_array().map(Vec::len), Some(20));
}

/// The reactions of the first message of a history page, as `who` sees them.
async fn reactions_seen(
    app: &crate::helpers::TestApp,
    who: &crate::helpers::User,
    path: &str,
) -> Value {
    let page: Value = app.get(who, path).await.json().await.unwrap();
    page["messages"][0]["reactions"].clone()
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn mentions_are_resolved_when_stored_and_counted_until_read(db: PgPool) {
    let app = spawn_app(db).await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let carol = app.user("carol").await;
    let room = app.room(&alice, "r", &[&bob]).await;
    // Carol is no member: naming her mentions nobody.
    let m = app
        .send(
            &alice,
            &format!("room/{room}"),
            "hey @Bob, @carol and @nobody-here",
        )
        .await;
    assert_eq!(m["mentions"], json!([bob.id]));
    assert_eq!(m["mentions_all"], false);
    app.send(&alice, &format!("room/{room}"), "no mention")
        .await;
    let all = app
        .send(&alice, &format!("room/{room}"), "@room lunch?")
        .await;
    assert_eq!(all["mentions_all"], true);
    // Everyone, by name too (a small room): Alice and Bob.
    let mut everyone = vec![alice.id, bob.id];
    everyone.sort();
    assert_eq!(all["mentions"], json!(everyone));
    assert_eq!(mention_count(&app, &bob, room).await, Some(2));
    assert_eq!(
        mention_count(&app, &alice, room).await,
        Some(0),
        "own messages never count"
    );
    // Reading up to the first leaves the @room one.
    let r = app
        .post(&bob, &format!("/chat/read/room/{room}"), json!({"seq": 2}))
        .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(mention_count(&app, &bob, room).await, Some(1));
    // An edit resolves them again.
    let id = m["id"].as_str().unwrap();
    let edited: Value = app
        .patch(
            &alice,
            &format!("/chat/messages/{id}"),
            json!({"content": "nobody now"}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(edited["mentions"], json!([]));
    let r = app
        .get(&carol, &format!("/chat/messages/room/{room}"))
        .await;
    let page: Value = r.json().await.unwrap();
    assert_eq!(
        page["messages"][2]["mentions_all"], true,
        "history carries them"
    );
}

/// `@room` names every member in `mentions` while the room has at most 50; beyond, the message
/// says `mentions_all` alone, and every member still counts it as a mention.
#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn everyone_is_listed_by_name_in_rooms_of_at_most_fifty(db: PgPool) {
    let app = spawn_app(db).await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let room = app.room(&alice, "r", &[&bob]).await;
    let join = |count: i32| {
        sqlx::query(
            "WITH u AS (INSERT INTO users (id, username, email, display_name, password_hash)
                        SELECT gen_random_uuid(), 'm' || $2 || '_' || i, 'm' || $2 || '_' || i || '@example.com', 'm', 'x'
                        FROM generate_series(1, $1) AS i RETURNING id)
             INSERT INTO conversation_members (conversation_id, user_id) SELECT $3, id FROM u",
        )
        .bind(count)
        .bind(count.to_string())
        .bind(room)
    };
    // 50 members: each is named.
    join(48).execute(&app.db).await.unwrap();
    let m = app.send(&bob, &format!("room/{room}"), "@room hi").await;
    let named = m["mentions"].as_array().unwrap();
    assert_eq!(named.len(), 50);
    assert!(named.contains(&json!(alice.id)) && named.contains(&json!(bob.id)));
    assert_eq!(m["mentions_all"], true);
    // 51: none is, the flag says it.
    join(1).execute(&app.db).await.unwrap();
    let m = app
        .send(&bob, &format!("room/{room}"), "@room hi again @alice")
        .await;
    assert_eq!(m["mentions"], json!([alice.id]), "named ones still are");
    assert_eq!(m["mentions_all"], true);
    assert_eq!(mention_count(&app, &alice, room).await, Some(2));
}

/// A user blocks at most 1,000 users: the next is 409 `too_many_blocks`, blocking one of them
/// again is harmless, and unblocking one makes room.
#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn a_user_blocks_at_most_a_thousand_users(db: PgPool) {
    let app = spawn_app(db).await;
    let alice = app.user("alice").await;
    let more = app.user("onemore").await;
    sqlx::query(
        "INSERT INTO users (id, username, email, display_name, password_hash)
         SELECT gen_random_uuid(), 'blocked' || i, 'blocked' || i || '@example.com', 'b', 'x'
         FROM generate_series(1, 1000) AS i",
    )
    .execute(&app.db)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO user_blocks (blocker_id, blocked_id)
         SELECT $1, id FROM users WHERE username LIKE 'blocked%'",
    )
    .bind(alice.id)
    .execute(&app.db)
    .await
    .unwrap();
    let r = app.put(&alice, &format!("/chat/blocks/{}", more.id)).await;
    assert_error(r, StatusCode::CONFLICT, "too_many_blocks").await;
    let some: uuid::Uuid = sqlx::query_scalar("SELECT id FROM users WHERE username = 'blocked7'")
        .fetch_one(&app.db)
        .await
        .unwrap();
    let r = app.put(&alice, &format!("/chat/blocks/{some}")).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT, "already blocked");
    let r = app.delete(&alice, &format!("/chat/blocks/{some}")).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = app.put(&alice, &format!("/chat/blocks/{}", more.id)).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
}

/// A member's unread mentions follow edits and deletions, and count each message once (named
/// twice, or named and `@room` too).
#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn mention_counts_follow_edits_and_deletions(db: PgPool) {
    let app = spawn_app(db).await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let room = app.room(&alice, "r", &[&bob]).await;
    let chat = format!("room/{room}");
    let both = app.send(&alice, &chat, "@bob and @room: hi").await;
    assert_eq!(mention_count(&app, &bob, room).await, Some(1));
    let plain = app.send(&alice, &chat, "plain").await;
    assert_eq!(mention_count(&app, &bob, room).await, Some(1));
    let r = app
        .patch(
            &alice,
            &format!("/chat/messages/{}", plain["id"].as_str().unwrap()),
            json!({"content": "now @bob"}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(mention_count(&app, &bob, room).await, Some(2));
    let r = app
        .delete(
            &alice,
            &format!("/chat/messages/{}", both["id"].as_str().unwrap()),
        )
        .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(mention_count(&app, &bob, room).await, Some(1));
    // (A member's own message would also move their read position to it.)
    let last = app.send(&alice, &chat, "@bob @Bob twice").await;
    assert_eq!(mention_count(&app, &bob, room).await, Some(2));
    let r = app
        .post(
            &bob,
            &format!("/chat/read/{chat}"),
            json!({"seq": last["seq"]}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(mention_count(&app, &bob, room).await, Some(0));
}

/// The `mention_count` of the conversation `chat_id` in `who`'s list.
async fn mention_count(
    app: &crate::helpers::TestApp,
    who: &crate::helpers::User,
    chat_id: uuid::Uuid,
) -> Option<i64> {
    let list: Vec<Value> = app
        .get(who, "/chat/conversations")
        .await
        .json()
        .await
        .unwrap();
    list.iter()
        .find(|c| c["chat_id"] == chat_id.to_string())
        .map(|c| c["mention_count"].as_i64().unwrap())
}

/// `POST /internal/users/{id}/profile` (auth-service's word that a user changed their display
/// name or avatar) publishes `user_updated`, with the user as stored, once on each channel that
/// reaches someone who shows the user: each room and group they are in, each private chat's
/// peer, their own; nowhere else. Internal callers only; an unknown user is 404.
#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn a_profile_change_goes_to_every_conversation_of_the_user(db: PgPool) {
    let app = spawn_app(db).await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let carol = app.user("carol").await;
    let dave = app.user("dave").await;
    let erin = app.user("erin").await;
    let room = app.room(&bob, "lobby", &[&alice]).await;
    let group = app.group(&carol, "g", &[&alice]).await;
    app.send(&dave, &format!("private/{}", alice.id), "hi")
        .await;
    sqlx::query("UPDATE users SET display_name = 'Alice Liddell' WHERE id = $1")
        .bind(alice.id)
        .execute(&app.db)
        .await
        .unwrap();
    let expected = [
        app.keys.conversation_channel(room),
        app.keys.conversation_channel(group),
        app.keys.user_channel(dave.id),
        app.keys.user_channel(alice.id),
    ];
    let mut watched = expected.to_vec();
    watched.push(app.keys.user_channel(erin.id));
    let mut watcher = app.watch(watched).await;
    let profile = |id: Uuid| app.url(&format!("/internal/users/{id}/profile"));

    let r = app
        .http
        .post(profile(alice.id))
        .bearer_auth(app.internal_token())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let mut reached: Vec<String> = Vec::new();
    for (channel, event) in watcher.drain(Duration::from_millis(500)).await {
        match event {
            Event::UserUpdated(user) => {
                assert_eq!(user.id, alice.id);
                assert_eq!(user.display_name, "Alice Liddell");
                reached.push(channel);
            }
            other => panic!("{other:?}"),
        }
    }
    reached.sort();
    let mut expected = expected.to_vec();
    expected.sort();
    assert_eq!(reached, expected);

    let r = app
        .http
        .post(profile(alice.id))
        .bearer_auth(&alice.token)
        .send()
        .await
        .unwrap();
    assert_error(r, StatusCode::UNAUTHORIZED, "invalid_token").await;
    let r = app
        .http
        .post(profile(Uuid::new_v4()))
        .bearer_auth(app.internal_token())
        .send()
        .await
        .unwrap();
    assert_error(r, StatusCode::NOT_FOUND, "not_found").await;
}
