//! Runs real chat-service instances on free ports against the test's own database, with users
//! inserted directly (auth-service is not needed to mint tokens: any holder of SECRET_KEY can),
//! and a Redis subscriber to watch what is published.
#![allow(dead_code)]

use std::time::Duration;

use chat_service::{worker::WorkerConfig, Application, ChatConfig};
use fred::prelude::*;
use reqwest::{Response, StatusCode};
use serde_json::Value;
use shared::{
    chat::{decode, Event},
    config::{DatabaseConfig, JwtConfig, RedisConfig, ServerConfig},
    jwt::JwtKeys,
    keys::Keys,
};
use sqlx::PgPool;
use tokio::sync::mpsc;
use uuid::Uuid;

/// A key as `openssl rand -hex 32` makes it (the binaries refuse placeholders and weak keys).
pub const SECRET: &str = "3f1c9a7be2d84f60a5c1e9b7d3f2a8c64b0e7d9a1c5f3b8e2d6a4c0f9b7e1d35";

/// Partitions of the send stream in these tests.
pub const PARTITIONS: u16 = 4;

pub fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

pub fn test_config(prefix: &str) -> ChatConfig {
    ChatConfig {
        server: ServerConfig::ephemeral(),
        database: DatabaseConfig {
            url: "postgres://unused-in-tests".into(),
            max_connections: 8,
        },
        redis: RedisConfig {
            url: redis_url(),
            prefix: prefix.to_owned(),
        },
        jwt: JwtConfig {
            secret_key: SECRET.into(),
            access_token_expire_minutes: 30,
            revocation_poll: std::time::Duration::from_millis(200),
        },
        allowed_origins: vec![],
        debug: true,
        max_body_bytes: 64 * 1024,
        max_content_chars: 4000,
        max_group_members: 1000,
        max_rooms_per_user: 1000,
        max_groups_per_user: 1000,
        run_send_worker: true,
        auth_service_url: None,
        worker: WorkerConfig {
            batch_size: 64,
            claim_idle_ms: 1000,
            max_content_chars: 4000,
            partitions: PARTITIONS,
            lease: std::time::Duration::from_millis(1500),
            batch_interval: std::time::Duration::ZERO,
            max_deliveries: 3,
        },
        send_rate: shared::limits::Rate {
            per_second: 20,
            burst: 40,
        },
        quotas: chat_service::config::Quotas::default(),
        internal_max_in_flight: 64,
        presence_max_contacts: chat_service::config::DEFAULT_PRESENCE_MAX_CONTACTS,
        search: chat_service::config::SearchLimits::default(),
        action_rate: chat_service::config::DEFAULT_ACTION_RATE,
        online_list_rate: chat_service::config::DEFAULT_ONLINE_LIST_RATE,
        list_rate: chat_service::config::DEFAULT_LIST_RATE,
        webhook: None,
        // A directory of this test's own: the local store, served by chat-service.
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
    pub prefix: String,
    pub keys: Keys,
    jwt: JwtKeys,
}

pub struct User {
    pub id: Uuid,
    pub name: String,
    pub token: String,
}

pub async fn spawn_app(db: PgPool) -> TestApp {
    let prefix = format!("test:{}:", Uuid::new_v4());
    spawn_app_with(db, &prefix, |_| {}).await
}

/// An instance sharing `prefix` with others, so several instances form one deployment.
pub async fn spawn_app_with(
    db: PgPool,
    prefix: &str,
    adjust: impl FnOnce(&mut ChatConfig),
) -> TestApp {
    let _ = shared::telemetry::init(true, "test", false);
    let mut config = test_config(prefix);
    adjust(&mut config);
    let jwt = JwtKeys::new(&config.jwt);
    let app = Application::build_with_pool(config, db.clone())
        .await
        .expect("chat-service builds");
    let base = format!("http://127.0.0.1:{}", app.port());
    tokio::spawn(app.run_until_stopped());
    TestApp {
        base,
        http: reqwest::Client::new(),
        db,
        prefix: prefix.to_owned(),
        keys: Keys::new(prefix),
        jwt,
    }
}

impl TestApp {
    /// A token of the internal service identity (gateways use one).
    pub fn internal_token(&self) -> String {
        self.jwt.issue_internal().unwrap().token
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// The service's OpenAPI document, as served.
    pub async fn openapi(&self) -> Value {
        let r = self
            .http
            .get(self.url("/openapi.json"))
            .send()
            .await
            .unwrap();
        r.json().await.unwrap()
    }

    /// Inserts an active user and mints an access token for it.
    pub async fn user(&self, name: &str) -> User {
        let id = Uuid::now_v7();
        sqlx::query(
            "INSERT INTO users (id, username, email, display_name, password_hash) VALUES ($1, $2, $3, $4, 'x')",
        )
        .bind(id)
        .bind(name)
        .bind(format!("{name}@example.com"))
        .bind(format!("{name} display"))
        .execute(&self.db)
        .await
        .unwrap();
        User {
            id,
            name: name.to_owned(),
            token: self.jwt.issue(id).unwrap().token,
        }
    }

    pub async fn get(&self, user: &User, path: &str) -> Response {
        self.http
            .get(self.url(path))
            .bearer_auth(&user.token)
            .send()
            .await
            .unwrap()
    }

    pub async fn post(&self, user: &User, path: &str, body: Value) -> Response {
        self.http
            .post(self.url(path))
            .bearer_auth(&user.token)
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    pub async fn patch(&self, user: &User, path: &str, body: Value) -> Response {
        self.http
            .patch(self.url(path))
            .bearer_auth(&user.token)
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    pub async fn put(&self, user: &User, path: &str) -> Response {
        self.http
            .put(self.url(path))
            .bearer_auth(&user.token)
            .send()
            .await
            .unwrap()
    }

    pub async fn put_json(&self, user: &User, path: &str, body: Value) -> Response {
        self.http
            .put(self.url(path))
            .bearer_auth(&user.token)
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    pub async fn delete(&self, user: &User, path: &str) -> Response {
        self.http
            .delete(self.url(path))
            .bearer_auth(&user.token)
            .send()
            .await
            .unwrap()
    }

    /// Creates a room as `owner` and has every one of `members` join it.
    pub async fn room(&self, owner: &User, name: &str, members: &[&User]) -> Uuid {
        let r = self
            .post(owner, "/chat/rooms", serde_json::json!({"name": name}))
            .await;
        assert_eq!(r.status(), StatusCode::CREATED);
        let room: Value = r.json().await.unwrap();
        let id: Uuid = room["id"].as_str().unwrap().parse().unwrap();
        for m in members {
            let r = self
                .post(m, &format!("/chat/rooms/{id}/join"), Value::Null)
                .await;
            assert_eq!(r.status(), StatusCode::OK);
        }
        id
    }

    /// Creates a group as `owner` with `members` in it.
    pub async fn group(&self, owner: &User, name: &str, members: &[&User]) -> Uuid {
        let ids: Vec<Uuid> = members.iter().map(|m| m.id).collect();
        let r = self
            .post(
                owner,
                "/chat/groups",
                serde_json::json!({"name": name, "member_ids": ids}),
            )
            .await;
        assert_eq!(r.status(), StatusCode::CREATED);
        let group: Value = r.json().await.unwrap();
        group["id"].as_str().unwrap().parse().unwrap()
    }

    /// Sends a text message; returns the message object.
    pub async fn send(&self, from: &User, chat: &str, content: &str) -> Value {
        let r = self
            .post(
                from,
                &format!("/chat/messages/{chat}"),
                serde_json::json!({"content": content}),
            )
            .await;
        let status = r.status();
        let body: Value = r.json().await.unwrap();
        assert_eq!(status, StatusCode::CREATED, "send to {chat}: {body}");
        body
    }

    /// Subscribes to channels; events arrive on the returned receiver.
    pub async fn watch(&self, channels: Vec<String>) -> Watcher {
        let subscriber = Builder::from_config(Config::from_url(&redis_url()).unwrap())
            .with_performance_config(|c| c.broadcast_channel_capacity = 65_536)
            .build()
            .unwrap();
        subscriber.init().await.unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        let mut messages = subscriber.message_rx();
        tokio::spawn(async move {
            while let Ok(m) = messages.recv().await {
                let bytes: Vec<u8> = m.value.convert().unwrap();
                // A batch is its events in order, as a gateway handles it.
                let events = match decode(&bytes).unwrap() {
                    Event::Batch(events) => events,
                    event => vec![event],
                };
                for event in events {
                    if tx.send((m.channel.to_string(), event)).is_err() {
                        return;
                    }
                }
            }
        });
        // As a gateway does: sharded subscriptions on a cluster, where events are SPUBLISHed.
        for c in &channels {
            if subscriber.is_clustered() {
                subscriber.ssubscribe(c.as_str()).await.unwrap();
            } else {
                subscriber.subscribe(c.as_str()).await.unwrap();
            }
        }
        Watcher {
            rx,
            _subscriber: subscriber,
        }
    }
}

pub struct Watcher {
    pub rx: mpsc::UnboundedReceiver<(String, Event)>,
    _subscriber: Client,
}

impl Watcher {
    /// The next event, within 5 s.
    pub async fn next(&mut self) -> (String, Event) {
        tokio::time::timeout(Duration::from_secs(5), self.rx.recv())
            .await
            .expect("an event within 5 s")
            .expect("the subscriber is alive")
    }

    /// Everything that arrives within `wait`.
    pub async fn drain(&mut self, wait: Duration) -> Vec<(String, Event)> {
        let mut out = Vec::new();
        let deadline = tokio::time::Instant::now() + wait;
        while let Ok(Some(e)) = tokio::time::timeout_at(deadline, self.rx.recv()).await {
            out.push(e);
        }
        out
    }
}

/// Asserts an error response and returns its JSON body.
pub async fn assert_error(r: Response, status: StatusCode, code: &str) -> Value {
    assert_eq!(r.status(), status);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], code, "{body}");
    body
}
