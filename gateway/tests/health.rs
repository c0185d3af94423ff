//! The gateway starts on a free port and answers health and metrics; it has no Postgres.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use gateway::{Application, GatewayConfig};
use serde_json::Value;
use shared::config::{JwtConfig, RedisConfig, ServerConfig};

#[tokio::test]
async fn serves_health_and_metrics() {
    let config = GatewayConfig {
        server: ServerConfig::ephemeral(),
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
    };
    let app = Application::build(config).await.unwrap();
    let base = format!("http://127.0.0.1:{}", app.port());
    tokio::spawn(app.run_until_stopped());
    let http = reqwest::Client::new();
    for path in ["/health", "/health/redis"] {
        let r = http.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["service"], "gateway");
    }
    assert_eq!(
        http.get(format!("{base}/health/db"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    assert_eq!(
        http.get(format!("{base}/metrics"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}
