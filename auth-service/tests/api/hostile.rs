//! Client text at auth-service's edge: control characters in any field are a 422 naming it
//! (they used to reach Postgres and come back as 500s), and registrations are limited per
//! client address.

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
    let alice = app.register("alice").await;
    let token = app.tokens(&alice).await["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let good = json!({"username": "bob", "email": "bob@example.com", "password": "long enough", "display_name": "Bob"});
    for bad in ["a\u{0}b", "a\u{7}b", "a\u{9b}b"] {
        for field in ["username", "email", "password", "display_name"] {
            let mut body = good.clone();
            body[field] = Value::String(format!("{bad}-padding"));
            assert_names(app.post_json("/auth/register", &body).await, field).await;
        }
        // Login, JSON and form-encoded.
        for field in ["username", "password"] {
            let mut body = json!({"username": "alice", "password": "whatever1"});
            body[field] = Value::String(bad.to_owned());
            assert_names(app.post_json("/auth/login", &body).await, field).await;
            let form = if field == "username" {
                vec![("username", bad), ("password", "whatever1")]
            } else {
                vec![("username", "alice"), ("password", bad)]
            };
            let r = app
                .http
                .post(app.url("/auth/login"))
                .form(&form)
                .send()
                .await
                .unwrap();
            assert_names(r, field).await;
        }
        let r = app
            .http
            .patch(app.url("/auth/me"))
            .bearer_auth(&token)
            .json(&json!({"display_name": bad}))
            .send()
            .await
            .unwrap();
        assert_names(r, "display_name").await;
        let r = app
            .http
            .get(app.url("/auth/users"))
            .query(&[("q", bad)])
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_names(r, "q").await;
        let r = app
            .post_json("/auth/refresh", &json!({"refresh_token": bad}))
            .await;
        assert_names(r, "refresh_token").await;
    }
    let users: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(users, 1, "nothing refused was stored");
    // Bad text in a login is not a failed login: alice is not throttled.
    assert_eq!(
        app.login(&alice.username, &alice.password).await.status(),
        StatusCode::OK
    );
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn registrations_are_limited_per_address(db: PgPool) {
    let app = spawn_app_with(db, |c| c.registrations_per_hour = 2).await;
    app.register("one").await;
    app.register("two").await;
    let r = app
        .post_json(
            "/auth/register",
            &json!({"username": "three", "email": "three@example.com", "password": "long enough"}),
        )
        .await;
    assert!(r.headers().contains_key("retry-after"));
    assert_error(r, StatusCode::TOO_MANY_REQUESTS, "too_many_requests").await;
    // A clash costs nothing: the quota counts accounts about to be created.
    let r = app
        .post_json(
            "/auth/register",
            &json!({"username": "one", "email": "other@example.com", "password": "long enough"}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CONFLICT);
}
