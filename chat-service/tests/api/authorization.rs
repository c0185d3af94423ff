use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;

use crate::helpers::{assert_error, spawn_app};

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn rooms_are_readable_by_all_but_writable_by_members(db: PgPool) {
    let app = spawn_app(db).await;
    let alice = app.user("alice").await;
    let eve = app.user("eve").await;
    let room = app.room(&alice, "r", &[]).await;
    app.send(&alice, &format!("room/{room}"), "hello").await;

    let page: Value = app
        .get(&eve, &format!("/chat/messages/room/{room}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        page["messages"].as_array().unwrap().len(),
        1,
        "anyone reads a public room"
    );
    let r = app
        .post(
            &eve,
            &format!("/chat/messages/room/{room}"),
            json!({"content": "let me in"}),
        )
        .await;
    assert_error(r, StatusCode::FORBIDDEN, "forbidden").await;
    let r = app
        .post(&eve, &format!("/chat/read/room/{room}"), json!({"seq": 1}))
        .await;
    assert_error(r, StatusCode::FORBIDDEN, "forbidden").await;
    let r = app
        .get(&eve, &format!("/chat/messages/room/{}", Uuid::new_v4()))
        .await;
    assert_error(r, StatusCode::NOT_FOUND, "not_found").await;
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn groups_are_for_members_only(db: PgPool) {
    let app = spawn_app(db).await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let eve = app.user("eve").await;
    let r = app
        .post(
            &alice,
            "/chat/groups",
            json!({"name": "g", "member_ids": [bob.id]}),
        )
        .await;
    let group = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    app.send(&bob, &format!("group/{group}"), "secret").await;

    let r = app
        .get(&eve, &format!("/chat/messages/group/{group}"))
        .await;
    assert_error(r, StatusCode::FORBIDDEN, "forbidden").await;
    let r = app
        .post(
            &eve,
            &format!("/chat/messages/group/{group}"),
            json!({"content": "hi"}),
        )
        .await;
    assert_error(r, StatusCode::FORBIDDEN, "forbidden").await;
    let r = app
        .post(
            &eve,
            &format!("/chat/groups/{group}/members"),
            json!({"user_ids": [eve.id]}),
        )
        .await;
    assert_error(r, StatusCode::FORBIDDEN, "forbidden").await;
    // A group id used as a room is not found, and the other way round.
    let r = app
        .get(&alice, &format!("/chat/messages/room/{group}"))
        .await;
    assert_error(r, StatusCode::NOT_FOUND, "not_found").await;
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn private_chats_are_for_their_two_users(db: PgPool) {
    let app = spawn_app(db).await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let eve = app.user("eve").await;
    app.send(&alice, &format!("private/{}", bob.id), "psst")
        .await;

    // Eve's private chat with Bob is a different (empty) conversation; she cannot name Alice's.
    let page: Value = app
        .get(&eve, &format!("/chat/messages/private/{}", bob.id))
        .await
        .json()
        .await
        .unwrap();
    assert!(page["messages"].as_array().unwrap().is_empty());
    let page: Value = app
        .get(&bob, &format!("/chat/messages/private/{}", alice.id))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(page["messages"][0]["content"], "psst");

    let ghost = Uuid::new_v4();
    let r = app
        .post(
            &alice,
            &format!("/chat/messages/private/{ghost}"),
            json!({"content": "anyone?"}),
        )
        .await;
    assert_error(r, StatusCode::NOT_FOUND, "not_found").await;
    let r = app
        .get(&alice, &format!("/chat/messages/private/{ghost}"))
        .await;
    assert_error(r, StatusCode::NOT_FOUND, "not_found").await;
    let r = app
        .post(
            &alice,
            &format!("/chat/messages/private/{}", alice.id),
            json!({"content": "me"}),
        )
        .await;
    assert_error(r, StatusCode::UNPROCESSABLE_ENTITY, "validation_error").await;
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn only_authors_edit_or_delete(db: PgPool) {
    let app = spawn_app(db).await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let room = app.room(&alice, "r", &[&bob]).await;
    let m = app.send(&alice, &format!("room/{room}"), "mine").await;
    let id = m["id"].as_str().unwrap();
    let r = app
        .patch(
            &bob,
            &format!("/chat/messages/{id}"),
            json!({"content": "yours now"}),
        )
        .await;
    assert_error(r, StatusCode::FORBIDDEN, "forbidden").await;
    let r = app.delete(&bob, &format!("/chat/messages/{id}")).await;
    assert_error(r, StatusCode::FORBIDDEN, "forbidden").await;
    let page: Value = app
        .get(&alice, &format!("/chat/messages/room/{room}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(page["messages"][0]["content"], "mine");
}
