//! A whole deployment in one test: chat-service instances and gateways on free ports sharing a
//! database and a Redis prefix, users inserted directly with minted tokens, and a small
//! WebSocket client.
#![allow(dead_code)]

use std::{sync::Arc, time::Duration};

use futures_util::{SinkExt, StreamExt};
use gateway::{Gateway, GatewayConfig};
use serde_json::{json, Value};
use shared::{
    config::{DatabaseConfig, JwtConfig, RedisConfig, ServerConfig},
    jwt::JwtKeys,
};
use sqlx::PgPool;
use tokio::{net::TcpStream, sync::oneshot};
use tokio_tungstenite::{
    tungstenite::{client::IntoClientRequest, http::HeaderValue, Message},
    MaybeTlsStream, WebSocketStream,
};
use uuid::Uuid;

/// A key as `openssl rand -hex 32` makes it (the binaries refuse placeholders and weak keys).
pub const SECRET: &str = "3f1c9a7be2d84f60a5c1e9b7d3f2a8c64b0e7d9a1c5f3b8e2d6a4c0f9b7e1d35";

pub fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

pub struct Stack {
    pub db: PgPool,
    pub prefix: String,
    pub chat: Vec<String>,
    pub gateways: Vec<GatewayHandle>,
    jwt: JwtKeys,
    pub http: reqwest::Client,
}

pub struct GatewayHandle {
    pub port: u16,
    pub gateway: Arc<Gateway>,
    pub subscriber_id: i64,
    stop: Option<oneshot::Sender<()>>,
    pub task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl GatewayHandle {
    /// Starts the graceful shutdown (as SIGTERM would).
    pub fn stop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

pub struct User {
    pub id: Uuid,
    pub name: String,
    pub token: String,
}

pub fn gateway_config(prefix: &str, chat_url: &str) -> GatewayConfig {
    GatewayConfig {
        server: ServerConfig::ephemeral(),
        redis: RedisConfig {
            url: redis_url(),
            prefix: prefix.to_owned(),
        },
        jwt: JwtConfig {
            secret_key: SECRET.into(),
            access_token_expire_minutes: 30,
            revocation_poll: std::time::Duration::from_millis(200),
        },
        allowed_origins: vec!["http://localhost:5173".into()],
        debug: true,
        chat_service_url: chat_url.to_owned(),
        heartbeat_interval: Duration::from_secs(25),
        max_connections: 1000,
        max_connections_per_user: 5,
        outbound_queue: 256,
        slow_consumer_grace: Duration::from_secs(5),
        send_entry_max_commands: 64,
        send_partitions: 4,
        send_rate: shared::limits::Rate {
            per_second: 20,
            burst: 40,
        },
        sync_rate: shared::limits::Rate {
            per_second: 5,
            burst: 40,
        },
        connect_rate: shared::limits::Rate {
            per_second: 1,
            burst: 40,
        },
        inbound_frame_rate: shared::limits::Rate {
            per_second: 100,
            burst: 200,
        },
        send_stream_max_entries: 20_000,
        typing_rate_per_second: 4,
        ws_read_buffer_bytes: 4096,
        ws_write_buffer_bytes: 16384,
        socket_send_buffer_bytes: 128 * 1024,
        max_frame_bytes: 65536,
        presence_ttl: Duration::from_secs(45),
        reauth_notice: Duration::from_secs(60),
        upgrades_in_flight: 64,
        redis_cluster_check: std::time::Duration::from_millis(200),
        shutdown_grace: Duration::from_secs(5),
        shutdown_spread: Duration::from_millis(500),
    }
}

/// One chat-service and `gateways` gateways, each adjusted by `adjust`.
pub async fn stack(db: PgPool, gateways: usize, adjust: impl Fn(&mut GatewayConfig)) -> Stack {
    let _ = shared::telemetry::init(true, "test", false);
    let prefix = format!("test:{}:", Uuid::new_v4());
    // One deployment, one send rate: chat-service's REST sends take from the same buckets.
    let send_rate = {
        let mut probe = gateway_config(&prefix, "http://unused");
        adjust(&mut probe);
        probe.send_rate
    };
    let mut config = chat_service::ChatConfig {
        server: ServerConfig::ephemeral(),
        database: DatabaseConfig {
            url: "postgres://unused".into(),
            max_connections: 10,
        },
        redis: RedisConfig {
            url: redis_url(),
            prefix: prefix.clone(),
        },
        jwt: JwtConfig {
            secret_key: SECRET.into(),
            access_token_expire_minutes: 30,
            // chat-service hears revocations as they are announced: a test that needs its poll
            // fails.
            revocation_poll: std::time::Duration::from_secs(600),
        },
        allowed_origins: vec![],
        debug: true,
        max_body_bytes: 65536,
        max_content_chars: 4000,
        max_group_members: 1000,
        max_rooms_per_user: 1000,
        max_groups_per_user: 1000,
        run_send_worker: true,
        auth_service_url: None,
        worker: chat_service::worker::WorkerConfig {
            batch_size: 64,
            claim_idle_ms: 2000,
            max_content_chars: 4000,
            partitions: 4,
            lease: std::time::Duration::from_millis(1500),
            batch_interval: std::time::Duration::ZERO,
            max_deliveries: 3,
        },
        send_rate,
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
    };
    config.server.port = 0;
    let chat = chat_service::Application::build_with_pool(config.clone(), db.clone())
        .await
        .unwrap();
    let chat_url = format!("http://127.0.0.1:{}", chat.port());
    tokio::spawn(chat.run_until_stopped());
    let mut stack = Stack {
        db,
        prefix: prefix.clone(),
        chat: vec![chat_url.clone()],
        gateways: Vec::new(),
        jwt: JwtKeys::new(&JwtConfig {
            secret_key: SECRET.into(),
            access_token_expire_minutes: 30,
            revocation_poll: std::time::Duration::from_millis(200),
        }),
        http: reqwest::Client::new(),
    };
    for _ in 0..gateways {
        stack.add_gateway(&adjust).await;
    }
    stack
}

impl Stack {
    pub async fn add_gateway(&mut self, adjust: &impl Fn(&mut GatewayConfig)) -> usize {
        let mut config = gateway_config(&self.prefix, &self.chat[0]);
        adjust(&mut config);
        let app = gateway::Application::build(config).await.unwrap();
        let port = app.port();
        let gateway = app.gateway();
        let subscriber_id = app.subscriber_redis_id().await.unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(app.run_until(async move {
            let _ = stopped.await;
        }));
        self.gateways.push(GatewayHandle {
            port,
            gateway,
            subscriber_id,
            stop: Some(stop),
            task,
        });
        self.gateways.len() - 1
    }

    /// An auth-service of this deployment (same database and Redis prefix); its base URL.
    pub async fn auth_service(&self) -> String {
        let config = auth_service::AuthConfig {
            server: ServerConfig::ephemeral(),
            database: DatabaseConfig {
                url: "postgres://unused".into(),
                max_connections: 5,
            },
            redis: RedisConfig {
                url: redis_url(),
                prefix: self.prefix.clone(),
            },
            jwt: JwtConfig {
                secret_key: SECRET.into(),
                access_token_expire_minutes: 30,
                revocation_poll: std::time::Duration::from_millis(200),
            },
            allowed_origins: vec![],
            debug: true,
            max_body_bytes: 65536,
            refresh_token_expire_days: 30,
            argon2_max_concurrency: 2,
            argon2_queue_timeout_ms: 30_000,
            login_max_failures_per_account: 100,
            login_max_delay_seconds: 30,
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
            registrations_per_hour: 1000,
            profile_updates_per_hour: 1000,
            chat_service_url: self.chat[0].clone(),
            storage: shared::storage::StorageConfig::Local {
                dir: std::env::temp_dir().join(format!("chatsphere-test-{}", uuid::Uuid::new_v4())),
                public_url: String::new(),
            },
            uploads: shared::storage::UploadLimits::default(),
        };
        let app = auth_service::Application::build_with_pool(config, self.db.clone())
            .await
            .unwrap();
        let url = format!("http://127.0.0.1:{}", app.port());
        tokio::spawn(app.run_until_stopped());
        url
    }

    pub async fn user(&self, name: &str) -> User {
        let id = Uuid::now_v7();
        sqlx::query("INSERT INTO users (id, username, email, display_name, password_hash) VALUES ($1, $2, $3, $2, 'x')")
            .bind(id)
            .bind(name)
            .bind(format!("{name}@example.com"))
            .execute(&self.db)
            .await
            .unwrap();
        User {
            id,
            name: name.into(),
            token: self.jwt.issue(id).unwrap().token,
        }
    }

    pub async fn rest(
        &self,
        user: &User,
        method: reqwest::Method,
        path: &str,
        body: Value,
    ) -> Value {
        let r = self
            .http
            .request(method, format!("{}{path}", self.chat[0]))
            .bearer_auth(&user.token)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{path}: {}", r.status());
        r.json().await.unwrap_or(Value::Null)
    }

    /// A room created by `owner` and joined by `members`.
    pub async fn room(&self, owner: &User, name: &str, members: &[&User]) -> Uuid {
        let room = self
            .rest(
                owner,
                reqwest::Method::POST,
                "/chat/rooms",
                json!({"name": name}),
            )
            .await;
        let id: Uuid = room["id"].as_str().unwrap().parse().unwrap();
        for m in members {
            self.rest(
                m,
                reqwest::Method::POST,
                &format!("/chat/rooms/{id}/join"),
                Value::Null,
            )
            .await;
        }
        id
    }

    pub async fn send_rest(&self, from: &User, chat: &str, content: &str) -> Value {
        self.rest(
            from,
            reqwest::Method::POST,
            &format!("/chat/messages/{chat}"),
            json!({"content": content}),
        )
        .await
    }

    /// Connects `user` to gateway `g` and waits for `ready`.
    pub async fn connect(&self, g: usize, user: &User) -> Client {
        let mut c = Client::connect(self.gateways[g].port, &user.token, None, None)
            .await
            .unwrap();
        let ready = c.expect("ready").await;
        assert_eq!(ready["data"]["user_id"], user.id.to_string());
        c
    }
}

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

pub struct Client {
    pub ws: Ws,
    pub msgpack: bool,
}

impl Client {
    pub async fn connect(
        port: u16,
        token: &str,
        origin: Option<&str>,
        protocol: Option<&str>,
    ) -> Result<Client, tokio_tungstenite::tungstenite::Error> {
        let mut request = format!("ws://127.0.0.1:{port}/ws?token={token}")
            .into_client_request()
            .unwrap();
        if let Some(o) = origin {
            request
                .headers_mut()
                .insert("origin", HeaderValue::from_str(o).unwrap());
        }
        if let Some(p) = protocol {
            request
                .headers_mut()
                .insert("sec-websocket-protocol", HeaderValue::from_str(p).unwrap());
        }
        let (ws, response) = tokio_tungstenite::connect_async(request).await?;
        let msgpack = response
            .headers()
            .get("sec-websocket-protocol")
            .is_some_and(|v| v == "chatsphere.msgpack");
        Ok(Client { ws, msgpack })
    }

    pub async fn send(&mut self, kind: &str, data: Value) {
        let envelope = json!({"type": kind, "data": data});
        let frame = if self.msgpack {
            Message::Binary(rmp_serde::to_vec_named(&envelope).unwrap().into())
        } else {
            Message::Text(envelope.to_string().into())
        };
        self.ws.send(frame).await.unwrap();
    }

    pub async fn send_raw(&mut self, frame: Message) {
        self.ws.send(frame).await.unwrap();
    }

    /// The next data frame as JSON, within 5 s; `None` when the connection closed.
    pub async fn next(&mut self) -> Option<Value> {
        loop {
            let frame = tokio::time::timeout(Duration::from_secs(5), self.ws.next())
                .await
                .expect("a frame within 5 s")?;
            match frame.ok()? {
                Message::Text(t) => return Some(serde_json::from_str(&t).unwrap()),
                Message::Binary(b) => {
                    let mut de = rmp_serde::Deserializer::new(&b[..]);
                    return Some(serde::Deserialize::deserialize(&mut de).unwrap());
                }
                Message::Close(_) => return None,
                _ => continue,
            }
        }
    }

    /// Skips frames until one of type `kind`.
    pub async fn expect(&mut self, kind: &str) -> Value {
        loop {
            let frame = self
                .next()
                .await
                .unwrap_or_else(|| panic!("closed while waiting for {kind}"));
            if frame["type"] == kind {
                return frame;
            }
        }
    }

    /// Reads until one frame of each of `kinds` has arrived, in whatever order (an `ack` and the
    /// `message` it acknowledges travel different channels); returns them in `kinds` order.
    pub async fn expect_each(&mut self, kinds: &[&str]) -> Vec<Value> {
        let mut found: Vec<Option<Value>> = vec![None; kinds.len()];
        while found.iter().any(Option::is_none) {
            let frame = self
                .next()
                .await
                .unwrap_or_else(|| panic!("closed while waiting for {kinds:?}"));
            if let Some(i) = kinds.iter().position(|k| frame["type"] == *k) {
                if found[i].is_none() {
                    found[i] = Some(frame);
                }
            }
        }
        found.into_iter().flatten().collect()
    }

    /// Every frame arriving within `wait`.
    pub async fn drain(&mut self, wait: Duration) -> Vec<Value> {
        let mut out = Vec::new();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Ok(Some(Ok(Message::Text(t)))) => out.push(serde_json::from_str(&t).unwrap()),
                Ok(Some(Ok(Message::Binary(b)))) => out.push(rmp_serde::from_slice(&b).unwrap()),
                Ok(Some(Ok(_))) => {}
                // Closed: wait out the deadline anyway, so a caller that drains in a loop does
                // not spin (and starve the single-threaded test runtime).
                Ok(Some(Err(_)) | None) => {
                    tokio::time::sleep_until(deadline).await;
                    return out;
                }
                Err(_) => return out,
            }
        }
    }

    /// The close code the server sent, reading (and discarding) frames until it comes.
    pub async fn close_code(&mut self) -> Option<u16> {
        loop {
            match tokio::time::timeout(Duration::from_secs(10), self.ws.next())
                .await
                .ok()?
            {
                Some(Ok(Message::Close(Some(frame)))) => return Some(frame.code.into()),
                Some(Ok(Message::Close(None))) | None | Some(Err(_)) => return None,
                Some(Ok(_)) => continue,
            }
        }
    }
}

/// The `seq`s of `message` frames of one conversation among `frames`.
pub fn message_seqs(frames: &[Value], room: Uuid) -> Vec<i64> {
    frames
        .iter()
        .filter(|f| f["type"] == "message" && f["data"]["room_id"] == room.to_string())
        .map(|f| f["data"]["seq"].as_i64().unwrap())
        .collect()
}

/// Waits until `check` holds, for at most `limit`.
pub async fn eventually(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    check()
}

/// A client of the tests' Redis.
pub async fn redis() -> fred::prelude::Client {
    use fred::prelude::*;
    let c = Builder::from_config(Config::from_url(&redis_url()).unwrap())
        .build()
        .unwrap();
    c.init().await.unwrap();
    c
}

/// `count` sends of `chars` characters from `sender` to `room`, straight onto the send stream
/// (no rate limit, no socket): what a busy room brings.
pub async fn push_bulk(prefix: &str, sender: Uuid, room: Uuid, count: i64, chars: usize) {
    use fred::prelude::*;
    let admin = redis().await;
    let keys = shared::keys::Keys::new(prefix.to_owned());
    for i in 0..count {
        let command = shared::chat::SendCommand {
            user_id: sender,
            session_id: "bulk".into(),
            client_id: format!("bulk-{room}-{i}"),
            chat_type: shared::chat::ChatType::Room,
            chat_id: room,
            content: "x".repeat(chars),
            message_type: shared::chat::MessageType::Text,
            reply_to_id: None,
            attachment_id: None,
            traceparent: None,
        };
        let _: String = admin
            .xadd(
                keys.send_stream(command.partition(4)),
                false,
                None,
                "*",
                vec![("c", shared::chat::encode(&command).unwrap())],
            )
            .await
            .unwrap();
    }
}
