//! Notifications for people who are away, against a real HTTP receiver on loopback.

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use axum::{body::Bytes, http::HeaderMap, http::StatusCode, routing::post, Router};
use chat_service::notify::WebhookConfig;
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;
use sqlx::PgPool;
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::helpers::{redis_url, spawn_app_with};

const SECRET: &str = "a webhook secret of some length";

/// One request the receiver got.
struct Delivery {
    status: StatusCode,
    signature: String,
    attempt: String,
    delivery: String,
    body: Value,
    raw: Bytes,
}

/// A receiver that answers 500 to its first request and 204 to the rest.
async fn receiver() -> (String, mpsc::UnboundedReceiver<Delivery>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let seen = Arc::new(AtomicUsize::new(0));
    let app = Router::new().route(
        "/hook",
        post(move |headers: HeaderMap, raw: Bytes| {
            let tx = tx.clone();
            let seen = seen.clone();
            async move {
                let status = if seen.fetch_add(1, Ordering::SeqCst) == 0 {
                    StatusCode::INTERNAL_SERVER_ERROR
                } else {
                    StatusCode::NO_CONTENT
                };
                let header = |name: &str| {
                    headers
                        .get(name)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_owned()
                };
                let _ = tx.send(Delivery {
                    status,
                    signature: header("x-chatsphere-signature"),
                    attempt: header("x-chatsphere-attempt"),
                    delivery: header("x-chatsphere-delivery"),
                    body: serde_json::from_slice(&raw).unwrap_or(Value::Null),
                    raw,
                });
                status
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, rx)
}

fn expected_signature(body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(body);
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256={hex}")
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn away_members_are_notified_signed_and_retried(db: PgPool) {
    let (url, mut deliveries) = receiver().await;
    let prefix = format!("test:{}:", Uuid::new_v4());
    let app = spawn_app_with(db, &prefix, |c| {
        c.webhook = Some(WebhookConfig {
            url,
            secret: SECRET.to_owned(),
            max_attempts: 5,
            retry_base: Duration::from_millis(300),
            timeout: Duration::from_secs(2),
        })
    })
    .await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let carol = app.user("carol").await;
    let dave = app.user("dave").await;
    let room = app.room(&alice, "r", &[&carol, &dave]).await;
    // Carol has a socket open somewhere (a gateway's presence entry); dave and bob do not.
    let redis =
        fred::prelude::Builder::from_config(fred::prelude::Config::from_url(&redis_url()).unwrap())
            .build()
            .unwrap();
    fred::prelude::ClientLike::init(&redis).await.unwrap();
    shared::presence::refresh(&redis, &app.keys, &[carol.id])
        .await
        .unwrap();

    app.send(&alice, &format!("room/{room}"), "nobody named here")
        .await;
    let mention = app
        .send(&alice, &format!("room/{room}"), "hi @carol and @dave")
        .await;
    let private = app
        .send(&alice, &format!("private/{}", bob.id), "psst")
        .await;

    // Collect until both messages were delivered (or give up after 10 s).
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while got
        .iter()
        .filter(|d: &&Delivery| d.status.is_success())
        .count()
        < 2
    {
        match tokio::time::timeout_at(deadline, deliveries.recv()).await {
            Ok(Some(d)) => got.push(d),
            _ => break,
        }
    }
    // Nothing more arrives: the plain message was never sent, nothing is sent twice.
    tokio::time::sleep(Duration::from_millis(800)).await;
    while let Ok(d) = deliveries.try_recv() {
        got.push(d);
    }
    assert_eq!(got.len(), 3, "one failed delivery, then one per message");

    for d in &got {
        assert_eq!(d.signature, expected_signature(&d.raw), "signed");
        assert_eq!(d.body["event"], "message.notify");
        assert_eq!(d.body["message"]["id"].as_str().unwrap(), d.delivery);
    }
    // The first failed and was retried: same message, attempt 2.
    assert!(!got[0].status.is_success());
    assert_eq!(got[0].attempt, "1");
    let retried = got
        .iter()
        .skip(1)
        .find(|d| d.delivery == got[0].delivery)
        .expect("the failed delivery is retried");
    assert_eq!(retried.attempt, "2");
    assert!(retried.status.is_success());

    let recipients = |id: &Value| -> Vec<String> {
        let d = got
            .iter()
            .find(|d| d.status.is_success() && d.body["message"]["id"] == *id)
            .unwrap_or_else(|| panic!("{id} delivered"));
        d.body["recipients"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(
        recipients(&mention["id"]),
        vec![dave.id.to_string()],
        "mentioned and away; not carol (online), not the sender"
    );
    assert_eq!(recipients(&private["id"]), vec![bob.id.to_string()]);
}
