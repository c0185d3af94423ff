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

use crate::helpers::{assert_error, redis_url, spawn_app_with, TestApp};

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

/// A receiver that answers 204, or with `fail_first` 500 to its first request.
async fn receiver(fail_first: bool) -> (String, mpsc::UnboundedReceiver<Delivery>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let seen = Arc::new(AtomicUsize::new(0));
    let app = Router::new().route(
        "/hook",
        post(move |headers: HeaderMap, raw: Bytes| {
            let tx = tx.clone();
            let seen = seen.clone();
            async move {
                let status = if fail_first && seen.fetch_add(1, Ordering::SeqCst) == 0 {
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

/// An instance whose webhook is a [`receiver`] (`fail_first` as there).
async fn notifying_app(
    db: PgPool,
    fail_first: bool,
) -> (TestApp, mpsc::UnboundedReceiver<Delivery>) {
    let (url, deliveries) = receiver(fail_first).await;
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
    (app, deliveries)
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
    let (app, mut deliveries) = notifying_app(db, true).await;
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

/// The recipients of each delivery of `messages`, by message id, once all of them arrived.
async fn recipients_of(
    deliveries: &mut mpsc::UnboundedReceiver<Delivery>,
    messages: &[&Value],
) -> std::collections::HashMap<String, Vec<String>> {
    let mut got = std::collections::HashMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while messages
        .iter()
        .any(|m| !got.contains_key(m["id"].as_str().unwrap()))
    {
        match tokio::time::timeout_at(deadline, deliveries.recv()).await {
            Ok(Some(d)) => {
                let mut to: Vec<String> = d.body["recipients"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|r| r.as_str().unwrap().to_owned())
                    .collect();
                to.sort();
                got.insert(d.delivery, to);
            }
            _ => panic!("only {got:?} delivered"),
        }
    }
    got
}

/// A member who muted a conversation's notifications is not pushed for its messages, unless one
/// names them, until the mute ends or they unmute; leaving drops the setting. The conversation
/// list shows it.
#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn muted_conversations_notify_only_by_name(db: PgPool) {
    let (app, mut deliveries) = notifying_app(db, false).await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let carol = app.user("carol").await;
    let dave = app.user("dave").await;
    let room = app.room(&alice, "r", &[&bob, &carol, &dave]).await;
    let setting =
        |muted: bool, until: Option<String>| serde_json::json!({"muted": muted, "until": until});
    let path = format!("/chat/conversations/room/{room}/notifications");
    let in_an_hour = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    assert_eq!(
        app.put_json(&bob, &path, setting(true, None))
            .await
            .status(),
        204
    );
    assert_eq!(
        app.put_json(&carol, &path, setting(true, Some(in_an_hour.clone())))
            .await
            .status(),
        204
    );
    // Bad settings, and someone not in the room.
    let past = (chrono::Utc::now() - chrono::Duration::minutes(1)).to_rfc3339();
    let r = app.put_json(&dave, &path, setting(true, Some(past))).await;
    assert_error(
        r,
        reqwest::StatusCode::UNPROCESSABLE_ENTITY,
        "validation_error",
    )
    .await;
    let r = app
        .put_json(&dave, &path, setting(false, Some(in_an_hour.clone())))
        .await;
    assert_error(
        r,
        reqwest::StatusCode::UNPROCESSABLE_ENTITY,
        "validation_error",
    )
    .await;
    let erin = app.user("erin").await;
    let r = app.put_json(&erin, &path, setting(true, None)).await;
    assert_error(r, reqwest::StatusCode::FORBIDDEN, "forbidden").await;

    let list: Value = app
        .get(&carol, "/chat/conversations")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list[0]["notifications_muted"], true);
    let until = list[0]["notifications_muted_until"].as_str().unwrap();
    assert_eq!(
        chrono::DateTime::parse_from_rfc3339(until)
            .unwrap()
            .timestamp(),
        chrono::DateTime::parse_from_rfc3339(&in_an_hour)
            .unwrap()
            .timestamp()
    );
    let list: Value = app
        .get(&bob, "/chat/conversations")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list[0]["notifications_muted"], true);
    assert_eq!(list[0]["notifications_muted_until"], Value::Null);
    let list: Value = app
        .get(&dave, "/chat/conversations")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list[0]["notifications_muted"], false);

    // Everyone is away. `@room` reaches only Dave; a message naming Bob reaches Bob.
    let everyone = app
        .send(&alice, &format!("room/{room}"), "@room lunch?")
        .await;
    let named = app
        .send(&alice, &format!("room/{room}"), "@bob you too")
        .await;
    let got = recipients_of(&mut deliveries, &[&everyone, &named]).await;
    let ids = |users: &[&crate::helpers::User]| -> Vec<String> {
        let mut v: Vec<String> = users.iter().map(|u| u.id.to_string()).collect();
        v.sort();
        v
    };
    assert_eq!(got[everyone["id"].as_str().unwrap()], ids(&[&dave]));
    assert_eq!(got[named["id"].as_str().unwrap()], ids(&[&bob]));

    // Bob unmutes; Carol leaves and joins again, which drops her setting.
    assert_eq!(
        app.put_json(&bob, &path, setting(false, None))
            .await
            .status(),
        204
    );
    let r = app
        .post(&carol, &format!("/chat/rooms/{room}/leave"), Value::Null)
        .await;
    assert!(r.status().is_success(), "{}", r.status());
    let r = app
        .post(&carol, &format!("/chat/rooms/{room}/join"), Value::Null)
        .await;
    assert!(r.status().is_success(), "{}", r.status());
    let again = app
        .send(&alice, &format!("room/{room}"), "@room again")
        .await;
    let got = recipients_of(&mut deliveries, &[&again]).await;
    assert_eq!(
        got[again["id"].as_str().unwrap()],
        ids(&[&bob, &carol, &dave])
    );
}
