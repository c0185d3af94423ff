//! The edges every client and operator meets: bad input, unknown routes, health, metrics, docs,
//! CORS, and a configuration mistake at start.

use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::{postgres::PgPoolOptions, PgPool};

use crate::helpers::{assert_error, spawn_app, spawn_app_with};

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn malformed_bodies_get_400_415_413_and_never_500(db: PgPool) {
    let app = spawn_app(db).await;
    let post_raw = |body: Vec<u8>, content_type: &'static str| {
        app.http
            .post(app.url("/auth/register"))
            .header("content-type", content_type)
            .body(body)
            .send()
    };

    let r = post_raw(b"{\"username\": ".to_vec(), "application/json")
        .await
        .unwrap();
    assert_error(r, StatusCode::BAD_REQUEST, "invalid_json").await;

    let r = post_raw(b"username=a".to_vec(), "text/plain")
        .await
        .unwrap();
    assert_error(
        r,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    )
    .await;

    let big = serde_json::to_vec(
        &json!({"username": "a".repeat(70_000), "email": "a@b.co", "password": "password1"}),
    )
    .unwrap();
    let r = post_raw(big, "application/json").await.unwrap();
    assert_error(r, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large").await;

    let r = post_raw(b"[1, 2]".to_vec(), "application/json")
        .await
        .unwrap();
    assert_error(r, StatusCode::UNPROCESSABLE_ENTITY, "validation_error").await;

    let r = post_raw(b"\xff\xfe".to_vec(), "application/json")
        .await
        .unwrap();
    assert_error(r, StatusCode::BAD_REQUEST, "invalid_json").await;

    let r = app
        .http
        .post(app.url("/auth/login"))
        .header("content-type", "application/xml")
        .body("<login/>")
        .send()
        .await
        .unwrap();
    assert_error(
        r,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    )
    .await;
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn unknown_routes_and_methods_answer_json(db: PgPool) {
    let app = spawn_app(db).await;
    let r = app
        .http
        .get(app.url("/auth/nothing-here"))
        .send()
        .await
        .unwrap();
    assert_error(r, StatusCode::NOT_FOUND, "not_found").await;
    let r = app
        .http
        .delete(app.url("/auth/login"))
        .send()
        .await
        .unwrap();
    assert_error(r, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed").await;
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn health_and_metrics(db: PgPool) {
    let app = spawn_app(db).await;
    for path in ["/health", "/health/db", "/health/redis"] {
        let r = app.http.get(app.url(path)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{path}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["status"], "ok");
        assert_eq!(body["service"], "auth-service");
        assert_eq!(body["version"], env!("CARGO_PKG_VERSION"));
    }
    app.login("nobody", "password1").await;
    // A made-up method is counted as `other`: no client can add label values.
    let brew = reqwest::Method::from_bytes(b"BREW").unwrap();
    let r = app
        .http
        .request(brew, app.url("/auth/login"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    let metrics = app
        .http
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("http_requests_total"), "{metrics}");
    assert!(metrics.contains(r#"route="/auth/login""#), "{metrics}");
    assert!(
        metrics.contains(r#"http_requests_total{method="other",route="/auth/login",status="405"}"#),
        "{metrics}"
    );
    assert!(!metrics.contains("BREW"), "{metrics}");
    assert!(metrics.contains("auth_logins_total"), "{metrics}");
}

#[tokio::test]
async fn dependencies_down_give_503_not_500() {
    // Nothing listens on port 9 of loopback: Postgres and Redis are both "down".
    let dead_db = PgPoolOptions::new()
        .acquire_timeout(std::time::Duration::from_millis(500))
        .connect_lazy("postgres://postgres@127.0.0.1:9/none")
        .unwrap();
    let app = spawn_app_with(dead_db, |c| c.redis.url = "redis://127.0.0.1:9".into()).await;
    for path in ["/health/db", "/health/redis"] {
        let r = app.http.get(app.url(path)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE, "{path}");
    }
    assert_eq!(
        app.http
            .get(app.url("/health"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );

    let r = app.login("alice", "password1").await;
    assert_error(r, StatusCode::SERVICE_UNAVAILABLE, "database_unavailable").await;
    let r = app
        .post_json(
            "/auth/register",
            &json!({"username": "alice", "email": "a@example.com", "password": "password1"}),
        )
        .await;
    assert_error(r, StatusCode::SERVICE_UNAVAILABLE, "database_unavailable").await;
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn openapi_and_docs_are_served(db: PgPool) {
    let app = spawn_app(db).await;
    let spec: Value = app
        .http
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for path in [
        "/auth/register",
        "/auth/login",
        "/auth/refresh",
        "/auth/logout",
        "/auth/me",
        "/auth/users",
    ] {
        assert!(
            spec["paths"][path].is_object(),
            "{path} missing from the OpenAPI document"
        );
    }
    assert!(spec["paths"]["/auth/me"]["patch"].is_object());
    assert!(spec["components"]["securitySchemes"]["bearer"].is_object());
    for page in ["/docs", "/redoc"] {
        let r = app.http.get(app.url(page)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert!(r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html"));
        assert!(r.text().await.unwrap().contains("<html"));
    }
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn cors_allows_only_the_configured_origins(db: PgPool) {
    let app = spawn_app(db).await;
    let preflight = |origin: &'static str| {
        app.http
            .request(reqwest::Method::OPTIONS, app.url("/auth/login"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "content-type")
            .send()
    };
    let r = preflight("http://localhost:5173").await.unwrap();
    assert!(r.status().is_success());
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "http://localhost:5173"
    );
    let r = preflight("https://evil.example").await.unwrap();
    assert!(r.headers().get("access-control-allow-origin").is_none());
}

#[test]
fn a_missing_setting_stops_the_process_with_one_line() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_auth-service"))
        .env_clear()
        .env("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/x")
        .current_dir(std::env::temp_dir())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(stderr.trim(), "configuration error: SECRET_KEY is not set");

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_auth-service"))
        .env_clear()
        .env("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/x")
        .env("SECRET_KEY", "0123456789abcdef0123456789abcdef")
        .env("PORT", "eighty")
        .current_dir(std::env::temp_dir())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("configuration error: PORT is invalid"),
        "{stderr}"
    );
}

#[test]
fn a_placeholder_or_weak_secret_key_stops_the_process() {
    for weak in [
        "change-me-change-me-change-me-change-me",
        "replace-with-openssl-rand-hex-32-replace-with-openssl",
        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_auth-service"))
            .env_clear()
            .env("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/x")
            .env("SECRET_KEY", weak)
            .current_dir(std::env::temp_dir())
            .output()
            .unwrap();
        assert!(!out.status.success());
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(
            stderr.starts_with("configuration error: SECRET_KEY "),
            "{stderr}"
        );
    }
}

/// A number setting past what the service can use (a semaphore of 2^64 permits, a delay whose
/// milliseconds overflow) stops it at start with one line naming the setting.
#[test]
fn out_of_range_settings_stop_the_process_with_one_line() {
    for (name, value, expected) in [
        (
            "ARGON2_MAX_CONCURRENCY",
            "18446744073709551615",
            "must be at most 1024",
        ),
        (
            "LOGIN_MAX_DELAY_SECONDS",
            "18446744073709551615",
            "must be at most 3600",
        ),
        (
            "DATABASE_MAX_CONNECTIONS",
            "4294967295",
            "must be at most 10000",
        ),
        (
            "ACCESS_TOKEN_EXPIRE_MINUTES",
            "4294967295",
            "must be at most 527040",
        ),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_auth-service"))
            .env_clear()
            .env("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/x")
            .env("SECRET_KEY", "0123456789abcdef0123456789abcdef")
            .env(name, value)
            .current_dir(std::env::temp_dir())
            .output()
            .unwrap();
        assert!(!out.status.success(), "{name}={value} started");
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert_eq!(
            stderr.trim(),
            format!("configuration error: {name} is invalid: {expected}")
        );
    }
}
