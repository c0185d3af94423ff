//! Runs a real auth-service on a free port against the test's own database and a Redis prefix
//! of its own, and wraps the requests the tests make.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use auth_service::{Application, AuthConfig};
use reqwest::{Response, StatusCode};
use serde_json::{json, Value};
use shared::config::{DatabaseConfig, JwtConfig, RedisConfig, ServerConfig};
use sqlx::PgPool;

/// A key as `openssl rand -hex 32` makes it (the binaries refuse placeholders and weak keys).
pub const SECRET: &str = "3f1c9a7be2d84f60a5c1e9b7d3f2a8c64b0e7d9a1c5f3b8e2d6a4c0f9b7e1d35";

pub fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A configuration for tests: loopback, port 0, a fresh Redis prefix, generous throttles.
pub fn test_config() -> AuthConfig {
    AuthConfig {
        server: ServerConfig::ephemeral(),
        database: DatabaseConfig {
            url: "postgres://unused-in-tests".into(),
            max_connections: 5,
        },
        redis: RedisConfig {
            url: redis_url(),
            prefix: format!("test:{}:", uuid::Uuid::new_v4()),
        },
        jwt: JwtConfig {
            secret_key: SECRET.into(),
            access_token_expire_minutes: 30,
            revocation_poll: std::time::Duration::from_millis(200),
        },
        allowed_origins: vec!["http://localhost:5173".into()],
        debug: true,
        max_body_bytes: 64 * 1024,
        refresh_token_expire_days: 30,
        argon2_max_concurrency: 2,
        argon2_queue_timeout_ms: 30_000,
        login_max_failures_per_account: 100,
        login_rate: shared::limits::Rate {
            per_second: 1,
            burst: 10,
        },
        ticket_rate: shared::limits::Rate {
            per_second: 1,
            burst: 40,
        },
        login_max_failures_per_address: 1000,
        login_failure_window_seconds: 900,
        trusted_proxies: vec![],
        refresh_reuse_grace_seconds: 10,
        login_max_delay_seconds: 30,
        registrations_per_hour: 10_000,
        profile_updates_per_hour: 100,
        // No chat-service here: profile announcements fail and are logged (the gateway's tests
        // run them against a real one).
        chat_service_url: "http://127.0.0.1:9".into(),
        storage: shared::storage::StorageConfig::Local {
            dir: std::env::temp_dir().join(format!("chatsphere-test-{}", uuid::Uuid::new_v4())),
            public_url: String::new(),
        },
        uploads: shared::storage::UploadLimits::default(),
    }
}

pub struct TestApp {
    pub base: String,
    pub http: reqwest::Client,
    pub db: PgPool,
    pub config: AuthConfig,
}

pub async fn spawn_app(db: PgPool) -> TestApp {
    spawn_app_with(db, |_| {}).await
}

pub async fn spawn_app_with(db: PgPool, adjust: impl FnOnce(&mut AuthConfig)) -> TestApp {
    let _ = shared::telemetry::init(true, "test", false);
    let mut config = test_config();
    adjust(&mut config);
    let app = Application::build_with_pool(config.clone(), db.clone())
        .await
        .expect("auth-service builds");
    let base = format!("http://127.0.0.1:{}", app.port());
    tokio::spawn(app.run_until_stopped());
    TestApp {
        base,
        http: reqwest::Client::new(),
        db,
        config,
    }
}

/// A registered user with its password.
pub struct Account {
    pub id: String,
    pub username: String,
    pub email: String,
    pub password: String,
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> Response {
        self.http
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .unwrap()
    }

    pub async fn register(&self, username: &str) -> Account {
        let email = format!("{username}@example.com");
        let password = format!("pw-{username}-secret");
        let r = self
            .post_json(
                "/auth/register",
                &json!({"username": username, "email": email, "password": password}),
            )
            .await;
        assert_eq!(r.status(), StatusCode::CREATED, "register {username}");
        let body: Value = r.json().await.unwrap();
        Account {
            id: body["id"].as_str().unwrap().to_owned(),
            username: username.to_owned(),
            email,
            password,
        }
    }

    pub async fn login(&self, login: &str, password: &str) -> Response {
        self.post_json(
            "/auth/login",
            &json!({"username": login, "password": password}),
        )
        .await
    }

    /// Logs in and returns the token pair.
    pub async fn tokens(&self, account: &Account) -> Value {
        let r = self.login(&account.username, &account.password).await;
        assert_eq!(r.status(), StatusCode::OK);
        r.json().await.unwrap()
    }

    pub async fn me(&self, token: &str) -> Response {
        self.http
            .get(self.url("/auth/me"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
    }
}

/// Asserts an error response: status, JSON body with the code, and returns the body.
pub async fn assert_error(r: Response, status: StatusCode, code: &str) -> Value {
    assert_eq!(r.status(), status);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json"),
        "errors are JSON"
    );
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], code, "{body}");
    assert!(body["detail"].as_str().is_some_and(|d| !d.is_empty()));
    body
}
