//! chat-service starts on a free port and answers health and metrics.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use chat_service::{Application, ChatConfig};
use serde_json::Value;
use shared::config::{DatabaseConfig, JwtConfig, RedisConfig, ServerConfig};
use sqlx::PgPool;

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn serves_health_and_metrics(db: PgPool) {
    let config = ChatConfig {
        server: ServerConfig::ephemeral(),
        database: DatabaseConfig {
            url: "postgres://unused-in-tests".into(),
            max_connections: 2,
        },
        redis: RedisConfig {
            url: std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into()),
            prefix: format!("test:{}:", uuid::Uuid::new_v4()),
        },
        jwt: JwtConfig {
            secret_key: "test-secret-test-secret-test-secret!".into(),
            access_token_expire_minutes: 30,
        },
        allowed_origins: vec![],
        debug: true,
        max_body_bytes: 65536,
    };
    let app = Application::build_with_pool(config, db).await.unwrap();
    let base = format!("http://127.0.0.1:{}", app.port());
    tokio::spawn(app.run_until_stopped());
    let http = reqwest::Client::new();
    for path in ["/health", "/health/db", "/health/redis"] {
        let r = http.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["service"], "chat-service");
        assert_eq!(body["status"], "ok");
    }
    let r = http.get(format!("{base}/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = http
        .get(format!("{base}/chat/nothing"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], "not_found");
}
