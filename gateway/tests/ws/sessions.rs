//! A WebSocket lives no longer than its access token, and no longer than its login: expiry
//! with and without `reauth`, logout and account deletion through a real auth-service on the
//! other gateway, tickets, and the internal identity kept out.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::PgPool;

use crate::helpers::{stack, Client, Stack, SECRET};

fn keys() -> shared::jwt::JwtKeys {
    shared::jwt::JwtKeys::new(&shared::config::JwtConfig {
        secret_key: SECRET.into(),
        access_token_expire_minutes: 30,
        revocation_poll: Duration::from_millis(200),
    })
}

/// A token of `user` that expires `seconds` from now.
fn expiring_in(user: uuid::Uuid, seconds: i64) -> String {
    let k = keys();
    let iat = chrono::Utc::now().timestamp() - k.ttl_seconds() + seconds;
    k.issue_at(user, uuid::Uuid::now_v7(), iat).unwrap().token
}

async fn connect(s: &Stack, g: usize, token: &str) -> Client {
    let mut c = Client::connect(s.gateways[g].port, token, None, None)
        .await
        .unwrap();
    c.expect("ready").await;
    c
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn a_socket_closes_with_4001_when_its_token_expires(db: PgPool) {
    let s = stack(db, 1, |_| {}).await;
    let alice = s.user("alice").await;
    let mut c = connect(&s, 0, &expiring_in(alice.id, 2)).await;
    // The notice comes at once: the token has less than REAUTH_NOTICE_SECONDS (60) left.
    let notice = c.expect("token_expiring").await;
    let at = chrono::DateTime::parse_from_rfc3339(notice["data"]["expires_at"].as_str().unwrap())
        .unwrap();
    assert!((at.timestamp() - chrono::Utc::now().timestamp()).abs() <= 3);
    let started = std::time::Instant::now();
    assert_eq!(c.close_code().await, Some(4001));
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn reauth_keeps_a_socket_open_past_its_first_token(db: PgPool) {
    let s = stack(db, 1, |_| {}).await;
    let alice = s.user("alice").await;
    let bob = s.user("bob").await;
    let mut c = connect(&s, 0, &expiring_in(alice.id, 2)).await;
    c.expect("token_expiring").await;
    // Another user's token, or garbage, changes nothing.
    c.send("reauth", json!({"token": bob.token})).await;
    assert_eq!(c.expect("error").await["data"]["code"], "invalid_token");
    c.send("reauth", json!({"token": "garbage"})).await;
    assert_eq!(c.expect("error").await["data"]["code"], "invalid_token");
    c.send("reauth", json!({"token": alice.token})).await;
    let r = c.expect("reauthed").await;
    let at =
        chrono::DateTime::parse_from_rfc3339(r["data"]["expires_at"].as_str().unwrap()).unwrap();
    assert!(at.timestamp() > chrono::Utc::now().timestamp() + 1000);
    tokio::time::sleep(Duration::from_secs(3)).await;
    c.send("ping", json!({})).await;
    c.expect("pong").await;
}

async fn login(s: &Stack, auth: &str, user: &str) -> Value {
    let r = s
        .http
        .post(format!("{auth}/auth/login"))
        .json(&json!({"username": user, "password": "long enough password"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    r.json().await.unwrap()
}

async fn register(s: &Stack, auth: &str, user: &str) {
    let r = s
        .http
        .post(format!("{auth}/auth/register"))
        .json(&json!({"username": user, "email": format!("{user}@example.com"), "password": "long enough password"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
}

/// Logout through auth-service closes that login's sockets on every gateway within 5 s; the
/// user's other login keeps its socket.
#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn logout_closes_that_logins_sockets_on_every_gateway(db: PgPool) {
    let s = stack(db, 2, |_| {}).await;
    let auth = s.auth_service().await;
    register(&s, &auth, "alice").await;
    let one = login(&s, &auth, "alice").await;
    let two = login(&s, &auth, "alice").await;
    let mut a0 = connect(&s, 0, one["access_token"].as_str().unwrap()).await;
    let mut a1 = connect(&s, 1, one["access_token"].as_str().unwrap()).await;
    let mut other = connect(&s, 1, two["access_token"].as_str().unwrap()).await;
    let r = s
        .http
        .post(format!("{auth}/auth/logout"))
        .json(&json!({"refresh_token": one["refresh_token"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let started = std::time::Instant::now();
    assert_eq!(a0.close_code().await, Some(4001));
    assert_eq!(a1.close_code().await, Some(4001));
    assert!(started.elapsed() < Duration::from_secs(5));
    other.send("ping", json!({})).await;
    other.expect("pong").await;
    // The logged-out token cannot open a new socket either.
    let again = Client::connect(
        s.gateways[0].port,
        one["access_token"].as_str().unwrap(),
        None,
        None,
    )
    .await;
    match again {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 401),
        other => panic!("expected 401, got {:?}", other.map(|_| ())),
    }
}

/// A gateway that missed the live event (here: the event never existed, only the record)
/// still closes the socket at its next poll.
#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn a_gateway_that_missed_the_event_closes_at_its_next_poll(db: PgPool) {
    let s = stack(db, 1, |_| {}).await;
    let alice = s.user("alice").await;
    let claims = keys().verify(&alice.token).unwrap();
    let mut c = connect(&s, 0, &alice.token).await;
    let redis = fred::prelude::Builder::from_config(
        fred::prelude::Config::from_url(&crate::helpers::redis_url()).unwrap(),
    )
    .build()
    .unwrap();
    fred::prelude::ClientLike::init(&redis).await.unwrap();
    let record = shared::revocation::Revocations::new(
        redis,
        shared::keys::Keys::new(s.prefix.clone()),
        1800,
        Duration::from_secs(1),
    );
    record
        .revoke(shared::revocation::Revocation::Session {
            user: alice.id,
            sid: claims.sid,
        })
        .await
        .unwrap();
    let started = std::time::Instant::now();
    assert_eq!(c.close_code().await, Some(4001));
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn deleting_the_account_closes_every_socket(db: PgPool) {
    let s = stack(db, 2, |_| {}).await;
    let auth = s.auth_service().await;
    register(&s, &auth, "alice").await;
    let one = login(&s, &auth, "alice").await;
    let two = login(&s, &auth, "alice").await;
    let token = one["access_token"].as_str().unwrap();
    let mut a = connect(&s, 0, token).await;
    let mut b = connect(&s, 1, two["access_token"].as_str().unwrap()).await;
    let r = s
        .http
        .delete(format!("{auth}/auth/me"))
        .bearer_auth(token)
        .json(&json!({"password": "long enough password"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    // At once, on chat-service too (it polls only every 10 minutes here): reads, writes.
    let r = s
        .http
        .get(format!("{}/chat/conversations", s.chat[0]))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], "account_disabled");
    let r = s
        .http
        .post(format!("{}/chat/rooms", s.chat[0]))
        .bearer_auth(two["access_token"].as_str().unwrap())
        .json(&json!({"name": "after the end"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(a.close_code().await, Some(4001));
    assert_eq!(b.close_code().await, Some(4001));
}

/// A password change closes the sockets of the user's other logins on every gateway, three
/// logins at once (one batch of revocations); the changing login's socket stays.
#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn a_password_change_closes_the_other_logins_sockets(db: PgPool) {
    let s = stack(db, 2, |_| {}).await;
    let auth = s.auth_service().await;
    register(&s, &auth, "alice").await;
    let mine = login(&s, &auth, "alice").await;
    let token = mine["access_token"].as_str().unwrap();
    let mut kept = connect(&s, 0, token).await;
    let mut others = Vec::new();
    for g in [0, 1, 1] {
        let other = login(&s, &auth, "alice").await;
        others.push(connect(&s, g, other["access_token"].as_str().unwrap()).await);
    }
    let r = s
        .http
        .post(format!("{auth}/auth/me/password"))
        .bearer_auth(token)
        .json(&json!({"current_password": "long enough password", "new_password": "another long one"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let started = std::time::Instant::now();
    for c in &mut others {
        assert_eq!(c.close_code().await, Some(4001));
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    kept.send("ping", json!({})).await;
    kept.expect("pong").await;
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn a_ticket_opens_one_socket(db: PgPool) {
    let s = stack(db, 2, |_| {}).await;
    let auth = s.auth_service().await;
    register(&s, &auth, "alice").await;
    let tokens = login(&s, &auth, "alice").await;
    let r = s
        .http
        .post(format!("{auth}/auth/ws-ticket"))
        .bearer_auth(tokens["access_token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let ticket: Value = r.json().await.unwrap();
    let ticket = ticket["ticket"].as_str().unwrap().to_owned();
    let url = |g: usize| format!("ws://127.0.0.1:{}/ws?ticket={ticket}", s.gateways[g].port);
    let (mut ws, _) = tokio_tungstenite::connect_async(url(1)).await.unwrap();
    let ready = futures_util::StreamExt::next(&mut ws)
        .await
        .unwrap()
        .unwrap();
    assert!(ready.to_text().unwrap().contains("\"ready\""));
    // Used: refused on any gateway.
    for g in [0, 1] {
        match tokio_tungstenite::connect_async(url(g)).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 401),
            other => panic!("expected 401, got {:?}", other.map(|_| ())),
        }
    }
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn the_internal_identity_opens_no_socket_and_users_no_internal_route(db: PgPool) {
    let s = stack(db, 1, |_| {}).await;
    let alice = s.user("alice").await;
    let internal = keys().issue_internal().unwrap().token;
    match Client::connect(s.gateways[0].port, &internal, None, None).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 401),
        other => panic!("expected 401, got {:?}", other.map(|_| ())),
    }
    let internal_route = format!("{}/internal/users/{}/conversations", s.chat[0], alice.id);
    let r = s
        .http
        .get(&internal_route)
        .bearer_auth(&alice.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = s
        .http
        .get(&internal_route)
        .bearer_auth(&internal)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = s
        .http
        .get(format!("{}/chat/conversations", s.chat[0]))
        .bearer_auth(&internal)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
}
