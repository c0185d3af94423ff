use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::PgPool;

use crate::helpers::{assert_error, spawn_app};

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn register_returns_the_user_and_stores_an_argon2id_hash(db: PgPool) {
    let app = spawn_app(db).await;
    let r = app
        .post_json(
            "/auth/register",
            &json!({"username": "Alice", "email": "Alice@Example.com", "password": "s3cret-pass", "display_name": "Alice A."}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let user: Value = r.json().await.unwrap();
    assert_eq!(user["username"], "Alice");
    assert_eq!(user["email"], "Alice@Example.com");
    assert_eq!(user["display_name"], "Alice A.");
    assert_eq!(user["is_active"], true);
    assert!(user["avatar_url"].is_null());
    assert!(user["last_seen"].is_null());
    assert!(user["created_at"].as_str().unwrap().contains('T'));
    assert!(user.get("password_hash").is_none() && user.get("password").is_none());

    let hash: String =
        sqlx::query_scalar("SELECT password_hash FROM users WHERE username = 'Alice'")
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert!(
        hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
        "{hash}"
    );
    assert!(!hash.contains("s3cret-pass"));
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn display_name_defaults_to_the_username(db: PgPool) {
    let app = spawn_app(db).await;
    let r = app
        .post_json(
            "/auth/register",
            &json!({"username": "bob", "email": "bob@example.com", "password": "password1"}),
        )
        .await;
    let user: Value = r.json().await.unwrap();
    assert_eq!(user["display_name"], "bob");
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn usernames_and_emails_clash_whatever_their_case(db: PgPool) {
    let app = spawn_app(db).await;
    app.register("carol").await;

    let r = app
        .post_json(
            "/auth/register",
            &json!({"username": "CAROL", "email": "other@example.com", "password": "password1"}),
        )
        .await;
    let body = assert_error(r, StatusCode::CONFLICT, "username_taken").await;
    assert!(body["fields"]["username"].is_string());

    let r = app
        .post_json(
            "/auth/register",
            &json!({"username": "carol2", "email": "CAROL@EXAMPLE.COM", "password": "password1"}),
        )
        .await;
    let body = assert_error(r, StatusCode::CONFLICT, "email_taken").await;
    assert!(body["fields"]["email"].is_string());

    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(count, 1);
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn concurrent_registrations_of_one_name_give_one_user_and_409s(db: PgPool) {
    let app = spawn_app(db).await;
    let handles: Vec<_> = (0..4)
        .map(|i| {
            let request = app.http.post(app.url("/auth/register")).json(
                &json!({"username": "racer", "email": format!("racer{i}@example.com"), "password": "password1"}),
            );
            tokio::spawn(async move { request.send().await.unwrap().status() })
        })
        .collect();
    let mut statuses = Vec::new();
    for h in handles {
        statuses.push(h.await.unwrap());
    }
    assert_eq!(
        statuses
            .iter()
            .filter(|s| **s == StatusCode::CREATED)
            .count(),
        1,
        "{statuses:?}"
    );
    assert!(
        statuses
            .iter()
            .all(|s| *s == StatusCode::CREATED || *s == StatusCode::CONFLICT),
        "{statuses:?}"
    );
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn invalid_fields_are_each_named(db: PgPool) {
    let app = spawn_app(db).await;
    let r = app
        .post_json(
            "/auth/register",
            &json!({"username": "a b", "email": "not-an-email", "password": "short", "display_name": ""}),
        )
        .await;
    let body = assert_error(r, StatusCode::UNPROCESSABLE_ENTITY, "validation_error").await;
    let fields = body["fields"].as_object().unwrap();
    for f in ["username", "email", "password", "display_name"] {
        assert!(fields.contains_key(f), "{f} missing from {body}");
    }

    for (payload, field) in [
        (
            json!({"username": "ab", "email": "ab@example.com", "password": "password1"}),
            "username",
        ),
        (
            json!({"username": "x".repeat(33), "email": "x@example.com", "password": "password1"}),
            "username",
        ),
        (
            json!({"username": "abc", "email": "abc@example.com", "password": "p".repeat(129)}),
            "password",
        ),
        (
            json!({"email": "abc@example.com", "password": "password1"}),
            "username",
        ),
        (
            json!({"username": 12, "email": "abc@example.com", "password": "password1"}),
            "username",
        ),
    ] {
        let r = app.post_json("/auth/register", &payload).await;
        let body = assert_error(r, StatusCode::UNPROCESSABLE_ENTITY, "validation_error").await;
        assert!(body["fields"][field].is_string(), "{field}: {body}");
    }
}
