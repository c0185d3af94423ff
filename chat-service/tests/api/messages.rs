use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;

use crate::helpers::{assert_error, spawn_app};

fn seqs(page: &Value) -> Vec<i64> {
    page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["seq"].as_i64().unwrap())
        .collect()
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn history_pages_by_seq(db: PgPool) {
    let app = spawn_app(db).await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let room = app.room(&alice, "r", &[&bob]).await;
    for i in 1..=7 {
        let m = app
            .send(
                if i % 2 == 0 { &bob } else { &alice },
                &format!("room/{room}"),
                &format!("m{i}"),
            )
            .await;
        assert_eq!(m["seq"], i);
        assert_eq!(m["chat_type"], "room");
        assert_eq!(m["room_id"], room.to_string());
        assert!(m["to_user_id"].is_null() && m["group_id"].is_null());
        assert_eq!(m["message_type"], "text");
        assert_eq!(m["is_edited"], false);
        assert_eq!(m["is_deleted"], false);
    }
    let path = format!("/chat/messages/room/{room}");
    let latest: Value = app
        .get(&alice, &format!("{path}?limit=3"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(seqs(&latest), [5, 6, 7]);
    assert_eq!(latest["has_more"], true);
    let older: Value = app
        .get(&alice, &format!("{path}?limit=3&before=5"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(seqs(&older), [2, 3, 4]);
    assert_eq!(older["has_more"], true);
    let oldest: Value = app
        .get(&alice, &format!("{path}?limit=3&before=2"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(seqs(&oldest), [1]);
    assert_eq!(oldest["has_more"], false);
    let newer: Value = app
        .get(&alice, &format!("{path}?limit=3&after=2"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(seqs(&newer), [3, 4, 5]);
    assert_eq!(newer["has_more"], true);
    let end: Value = app
        .get(&alice, &format!("{path}?after=5"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(seqs(&end), [6, 7]);
    assert_eq!(end["has_more"], false);
    // Both: the messages strictly between, from the oldest, a page at a time (a gap filled).
    let between: Value = app
        .get(&alice, &format!("{path}?limit=2&after=1&before=6"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(seqs(&between), [2, 3]);
    assert_eq!(between["has_more"], true);
    let rest: Value = app
        .get(&alice, &format!("{path}?limit=2&after=3&before=6"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(seqs(&rest), [4, 5]);
    assert_eq!(rest["has_more"], false);
    let all: Value = app.get(&alice, &path).await.json().await.unwrap();
    assert_eq!(seqs(&all), [1, 2, 3, 4, 5, 6, 7]);
    assert_eq!(all["messages"][0]["content"], "m1");

    for bad in ["limit=0", "limit=101", "limit=x", "before=-1", "after=abc"] {
        let r = app.get(&alice, &format!("{path}?{bad}")).await;
        assert_error(r, StatusCode::UNPROCESSABLE_ENTITY, "validation_error").await;
    }
    let r = app
        .get(&alice, &format!("/chat/messages/channel/{room}"))
        .await;
    let body = assert_error(r, StatusCode::UNPROCESSABLE_ENTITY, "validation_error").await;
    assert!(body["fields"]["chat_type"].is_string());
    let r = app.get(&alice, "/chat/messages/room/12345").await;
    let body = assert_error(r, StatusCode::UNPROCESSABLE_ENTITY, "validation_error").await;
    assert!(body["fields"]["chat_id"].is_string());
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn the_same_client_id_gives_the_same_message(db: PgPool) {
    let app = spawn_app(db).await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let path = format!("/chat/messages/private/{}", bob.id);
    let first: Value = app
        .post(&alice, &path, json!({"content": "hi", "client_id": "c-1"}))
        .await
        .json()
        .await
        .unwrap();
    let again = app
        .post(&alice, &path, json!({"content": "hi", "client_id": "c-1"}))
        .await;
    assert_eq!(again.status(), StatusCode::CREATED);
    let again: Value = again.json().await.unwrap();
    assert_eq!(first, again);
    assert_eq!(first["client_id"], "c-1");
    assert_eq!(first["to_user_id"], bob.id.to_string());
    assert_eq!(first["from_user_id"], alice.id.to_string());
    // Another user may use the same client_id.
    let bobs: Value = app
        .post(
            &bob,
            &format!("/chat/messages/private/{}", alice.id),
            json!({"content": "yo", "client_id": "c-1"}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        bobs["seq"], 2,
        "one private conversation, whichever side sends"
    );
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM messages")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(count, 2);

    // Concurrent repeats of one client_id still give one message and no seq gap.
    let handles: Vec<_> = (0..6)
        .map(|_| {
            let req = app
                .http
                .post(app.url(&path))
                .bearer_auth(&alice.token)
                .json(&json!({"content": "race", "client_id": "c-2"}));
            tokio::spawn(async move { req.send().await.unwrap().json::<Value>().await.unwrap() })
        })
        .collect();
    let mut ids = std::collections::HashSet::new();
    for h in handles {
        ids.insert(h.await.unwrap()["id"].as_str().unwrap().to_owned());
    }
    assert_eq!(ids.len(), 1);
    let page: Value = app.get(&alice, &path).await.json().await.unwrap();
    let seqs: Vec<i64> = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(seqs, [1, 2, 3]);
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn edit_and_delete(db: PgPool) {
    let app = spawn_app(db).await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let room = app.room(&alice, "r", &[&bob]).await;
    let m = app.send(&alice, &format!("room/{room}"), "first").await;
    let id = m["id"].as_str().unwrap();

    let r = app
        .patch(
            &alice,
            &format!("/chat/messages/{id}"),
            json!({"content": "first!"}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let edited: Value = r.json().await.unwrap();
    assert_eq!(edited["content"], "first!");
    assert_eq!(edited["is_edited"], true);
    assert!(edited["edited_at"].is_string());
    assert_eq!(edited["seq"], m["seq"]);

    let r = app
        .patch(
            &alice,
            &format!("/chat/messages/{id}"),
            json!({"content": ""}),
        )
        .await;
    assert_error(r, StatusCode::UNPROCESSABLE_ENTITY, "validation_error").await;

    let r = app.delete(&alice, &format!("/chat/messages/{id}")).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = app.delete(&alice, &format!("/chat/messages/{id}")).await;
    assert_eq!(
        r.status(),
        StatusCode::NO_CONTENT,
        "deleting twice is harmless"
    );
    let page: Value = app
        .get(&bob, &format!("/chat/messages/room/{room}"))
        .await
        .json()
        .await
        .unwrap();
    let stored = &page["messages"][0];
    assert_eq!(stored["is_deleted"], true);
    assert_eq!(stored["content"], "");
    let r = app
        .patch(
            &alice,
            &format!("/chat/messages/{id}"),
            json!({"content": "back"}),
        )
        .await;
    assert_error(r, StatusCode::CONFLICT, "message_deleted").await;

    let unknown = Uuid::new_v4();
    assert_error(
        app.delete(&alice, &format!("/chat/messages/{unknown}"))
            .await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    assert_error(
        app.delete(&alice, "/chat/messages/xyz").await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_error",
    )
    .await;
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn content_and_reply_rules(db: PgPool) {
    let app = spawn_app(db).await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let room = app.room(&alice, "r", &[]).await;
    let other = app.room(&alice, "other", &[]).await;
    let path = format!("/chat/messages/room/{room}");
    for (body, field) in [
        (json!({"content": ""}), "content"),
        (json!({"content": "x".repeat(4001)}), "content"),
        (
            json!({"content": "not a url", "message_type": "image"}),
            "content",
        ),
        (
            json!({"content": "ok", "message_type": "video"}),
            "message_type",
        ),
        (json!({"content": "ok", "client_id": ""}), "client_id"),
        (
            json!({"content": "ok", "reply_to_id": "nope"}),
            "reply_to_id",
        ),
        (json!({"content": 5}), "content"),
    ] {
        let r = app.post(&alice, &path, body.clone()).await;
        let err = assert_error(r, StatusCode::UNPROCESSABLE_ENTITY, "validation_error").await;
        assert!(err["fields"][field].is_string(), "{body}: {err}");
    }
    let image = app
        .post(
            &alice,
            &path,
            json!({"content": "https://cdn.example.com/cat.png", "message_type": "image"}),
        )
        .await;
    assert_eq!(image.status(), StatusCode::CREATED);
    assert_eq!(
        image.json::<Value>().await.unwrap()["message_type"],
        "image"
    );
    let longest = app
        .post(&alice, &path, json!({"content": "é".repeat(4000)}))
        .await;
    assert_eq!(longest.status(), StatusCode::CREATED);

    let elsewhere = app
        .send(&alice, &format!("room/{other}"), "elsewhere")
        .await;
    let r = app
        .post(
            &alice,
            &path,
            json!({"content": "re", "reply_to_id": elsewhere["id"]}),
        )
        .await;
    let err = assert_error(r, StatusCode::UNPROCESSABLE_ENTITY, "validation_error").await;
    assert!(err["fields"]["reply_to_id"].is_string());
    let here = app.send(&alice, &format!("room/{room}"), "here").await;
    let r = app
        .post(
            &alice,
            &path,
            json!({"content": "re", "reply_to_id": here["id"]}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(r.json::<Value>().await.unwrap()["reply_to_id"], here["id"]);

    // A refused send left no gap.
    let page: Value = app.get(&alice, &path).await.json().await.unwrap();
    let seqs: Vec<i64> = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(seqs, [1, 2, 3, 4]);

    let r = app
        .http
        .post(app.url(&path))
        .bearer_auth(&bob.token)
        .header("content-type", "application/json")
        .body("{\"content\":")
        .send()
        .await
        .unwrap();
    assert_error(r, StatusCode::BAD_REQUEST, "invalid_json").await;
}

/// Messages follow their conversation out (a trigger since the foreign key was dropped from the
/// send path): deleting a room deletes its conversation and its messages, replies included,
/// and nothing of any other conversation.
#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn deleting_a_room_deletes_its_messages_and_no_others(db: PgPool) {
    let app = spawn_app(db.clone()).await;
    let alice = app.user("alice").await;
    let gone = app.room(&alice, "gone", &[]).await;
    let kept = app.room(&alice, "kept", &[]).await;
    let first = app.send(&alice, &format!("room/{gone}"), "one").await;
    let reply = app
        .post(
            &alice,
            &format!("/chat/messages/room/{gone}"),
            json!({"content": "two", "reply_to_id": first["id"]}),
        )
        .await;
    assert!(reply.status().is_success(), "{}", reply.status());
    app.send(&alice, &format!("room/{kept}"), "stays").await;
    let count = |room: Uuid| {
        let db = db.clone();
        async move {
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM messages WHERE room_id = $1")
                .bind(room)
                .fetch_one(&db)
                .await
                .unwrap()
        }
    };
    assert_eq!(count(gone).await, 2);
    sqlx::query("DELETE FROM rooms WHERE id = $1")
        .bind(gone)
        .execute(&db)
        .await
        .unwrap();
    assert_eq!(count(gone).await, 0);
    assert_eq!(count(kept).await, 1);
    let conversations: i64 =
        sqlx::query_scalar("SELECT count(*) FROM conversations WHERE room_id = $1")
            .bind(gone)
            .fetch_one(&db)
            .await
            .unwrap();
    assert_eq!(conversations, 0);
}
