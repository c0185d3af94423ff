use serde_json::Value;
use sqlx::PgPool;

use crate::helpers::spawn_app;

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn health_metrics_and_docs(db: PgPool) {
    let app = spawn_app(db).await;
    for path in ["/health", "/health/db", "/health/redis", "/health/ready"] {
        let r = app.http.get(app.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["service"], "chat-service");
        assert_eq!(body["status"], "ok");
    }
    let alice = app.user("alice").await;
    app.room(&alice, "r", &[]).await;
    let metrics = app
        .http
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains(r#"route="/chat/rooms""#), "{metrics}");

    let spec = app.openapi().await;
    for path in [
        "/chat/rooms",
        "/chat/rooms/{id}/join",
        "/chat/rooms/{id}/leave",
        "/chat/rooms/{id}/members",
        "/chat/groups",
        "/chat/groups/{id}/members",
        "/chat/groups/{id}/members/{user_id}",
        "/chat/messages/{chat_type}/{chat_id}",
        "/chat/messages/{id}",
        "/chat/read/{chat_type}/{chat_id}",
        "/chat/conversations",
        "/chat/online-users",
    ] {
        assert!(
            spec["paths"][path].is_object(),
            "{path} missing from the OpenAPI document"
        );
    }
    let r = app.http.get(app.url("/docs")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = app.get(&alice, "/chat/nothing").await;
    assert_eq!(r.status(), 404);
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "not_found");
}

/// Internal calls past `INTERNAL_MAX_IN_FLIGHT` are refused at once (503, `Retry-After`), never
/// queued behind the others.
#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn internal_calls_past_the_bound_are_shed(db: PgPool) {
    let app = crate::helpers::spawn_app_with(db, &format!("test:{}:", uuid::Uuid::new_v4()), |c| {
        c.internal_max_in_flight = 0
    })
    .await;
    let alice = app.user("alice").await;
    let token = app.internal_token();
    let r = app
        .http
        .get(app.url(&format!("/internal/users/{}/conversations", alice.id)))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], "busy");
}
