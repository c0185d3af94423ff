//! Postgres or Redis away: a clear 503, and nothing half-written.

use reqwest::StatusCode;
use serde_json::json;
use sqlx::{postgres::PgPoolOptions, PgPool};

use crate::helpers::{assert_error, spawn_app, spawn_app_with};

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn redis_down_refuses_writes_before_writing(db: PgPool) {
    let healthy = spawn_app(db.clone()).await;
    let alice = healthy.user("alice").await;
    let bob = healthy.user("bob").await;
    let room = healthy.room(&alice, "r", &[]).await;

    let prefix = healthy.prefix.clone();
    let app = spawn_app_with(db, &prefix, |c| {
        c.redis.url = "redis://127.0.0.1:9".into();
        c.run_send_worker = false;
    })
    .await;
    let r = app
        .post(
            &alice,
            &format!("/chat/messages/room/{room}"),
            json!({"content": "lost?"}),
        )
        .await;
    assert_error(r, StatusCode::SERVICE_UNAVAILABLE, "redis_unavailable").await;
    let r = app
        .post(
            &alice,
            &format!("/chat/messages/private/{}", bob.id),
            json!({"content": "lost?"}),
        )
        .await;
    assert_error(r, StatusCode::SERVICE_UNAVAILABLE, "redis_unavailable").await;
    let r = app
        .post(&alice, "/chat/rooms", json!({"name": "new"}))
        .await;
    assert_error(r, StatusCode::SERVICE_UNAVAILABLE, "redis_unavailable").await;
    let messages: i64 = sqlx::query_scalar("SELECT count(*) FROM messages")
        .fetch_one(&app.db)
        .await
        .unwrap();
    let rooms: i64 = sqlx::query_scalar("SELECT count(*) FROM rooms")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!((messages, rooms), (0, 1));
    // Reads that need no Redis still work; online users need it.
    let r = app
        .get(&alice, &format!("/chat/messages/room/{room}"))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let r = app.get(&alice, "/chat/online-users").await;
    assert_error(r, StatusCode::SERVICE_UNAVAILABLE, "redis_unavailable").await;
    // Searching needs only Postgres: its rate bucket lets it through while Redis is away.
    let r = app.get(&alice, "/chat/search?q=lost").await;
    assert_eq!(r.status(), StatusCode::OK);
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn postgres_down_is_503(db: PgPool) {
    let healthy = spawn_app(db).await;
    let alice = healthy.user("alice").await;
    let dead = PgPoolOptions::new()
        .acquire_timeout(std::time::Duration::from_millis(500))
        .connect_lazy("postgres://postgres@127.0.0.1:9/none")
        .unwrap();
    let prefix = healthy.prefix.clone();
    let app = spawn_app_with(dead, &prefix, |c| c.run_send_worker = false).await;
    for r in [
        app.get(&alice, "/chat/rooms").await,
        app.post(&alice, "/chat/rooms", json!({"name": "x"})).await,
        app.get(&alice, "/chat/conversations").await,
    ] {
        assert_error(r, StatusCode::SERVICE_UNAVAILABLE, "database_unavailable").await;
    }
    assert_eq!(
        app.http
            .get(app.url("/health/db"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
}
