//! `/admin/*` of chat-service: only for admins, checked on every call.

use reqwest::StatusCode;
use serde_json::Value;
use sqlx::PgPool;

use crate::helpers::{assert_error, spawn_app};

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn admins_list_rooms_delete_any_message_and_read_any_audit_log(db: PgPool) {
    let app = spawn_app(db).await;
    let root = app.user("root").await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let carol = app.user("carol").await;
    let big = app.room(&alice, "big", &[&bob, &carol]).await;
    let small = app.room(&bob, "small", &[]).await;
    let message = app.send(&bob, &format!("room/{big}"), "spam").await;
    let private = app
        .send(&bob, &format!("private/{}", carol.id), "hello")
        .await;

    // Nobody is an admin yet: every admin endpoint refuses, whoever asks.
    for user in [&root, &alice] {
        assert_error(
            app.get(user, "/admin/rooms").await,
            StatusCode::FORBIDDEN,
            "admin_required",
        )
        .await;
        assert_error(
            app.get(user, &format!("/admin/rooms/{big}/audit")).await,
            StatusCode::FORBIDDEN,
            "admin_required",
        )
        .await;
        assert_error(
            app.delete(
                user,
                &format!("/admin/messages/{}", message["id"].as_str().unwrap()),
            )
            .await,
            StatusCode::FORBIDDEN,
            "admin_required",
        )
        .await;
    }

    assert!(shared::admin::set_role(&app.db, "ROOT", true)
        .await
        .unwrap());
    let r = app.get(&root, "/admin/rooms").await;
    assert_eq!(r.status(), StatusCode::OK);
    let rooms: Vec<Value> = r.json().await.unwrap();
    let counts: Vec<(String, i64)> = rooms
        .iter()
        .map(|r| {
            (
                r["name"].as_str().unwrap().to_owned(),
                r["member_count"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(counts, vec![("big".to_owned(), 3), ("small".to_owned(), 1)]);
    let r = app.get(&root, "/admin/rooms?q=SM&limit=1").await;
    let rooms: Vec<Value> = r.json().await.unwrap();
    assert_eq!(rooms.len(), 1);
    assert_eq!(rooms[0]["id"], small.to_string());
    assert_error(
        app.get(&root, "/admin/rooms?limit=0").await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_error",
    )
    .await;

    // Any message, in a room (audited) or a private chat the admin is not in.
    for m in [&message, &private] {
        let r = app
            .delete(
                &root,
                &format!("/admin/messages/{}", m["id"].as_str().unwrap()),
            )
            .await;
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
    }
    let history: Value = app
        .get(&carol, &format!("/chat/messages/private/{}", bob.id))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(history["messages"][0]["is_deleted"], true);
    let r = app.get(&root, &format!("/admin/rooms/{big}/audit")).await;
    assert_eq!(r.status(), StatusCode::OK);
    let audit: Value = r.json().await.unwrap();
    assert_eq!(audit["entries"][0]["action"], "message_deleted");
    assert_eq!(audit["entries"][0]["actor_id"], root.id.to_string());
    assert_eq!(audit["entries"][0]["target_id"], bob.id.to_string());
    assert_error(
        app.get(
            &root,
            &format!("/admin/rooms/{}/audit", uuid::Uuid::new_v4()),
        )
        .await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;

    // The role is read on every call: revoked, the same token stops working at once.
    assert!(shared::admin::set_role(&app.db, "root", false)
        .await
        .unwrap());
    assert_error(
        app.get(&root, "/admin/rooms").await,
        StatusCode::FORBIDDEN,
        "admin_required",
    )
    .await;
}
