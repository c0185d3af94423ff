use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::PgPool;

use crate::helpers::{assert_error, spawn_app, spawn_app_with};

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn login_by_username_or_email_as_json_or_form(db: PgPool) {
    let app = spawn_app(db).await;
    let alice = app.register("alice").await;

    for login in ["alice", "ALICE", "alice@example.com", "Alice@Example.COM"] {
        let r = app.login(login, &alice.password).await;
        assert_eq!(r.status(), StatusCode::OK, "login as {login}");
        let t: Value = r.json().await.unwrap();
        assert_eq!(t["token_type"], "bearer");
        assert_eq!(t["expires_in"], 1800);
        assert!(t["access_token"].as_str().unwrap().split('.').count() == 3);
        assert!(t["refresh_token"].as_str().unwrap().len() >= 40);
    }

    // The OAuth2 password flow, as FastAPI's OAuth2PasswordRequestForm took it.
    let r = app
        .http
        .post(app.url("/auth/login"))
        .form(&[
            ("grant_type", "password"),
            ("username", "alice"),
            ("password", alice.password.as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let t: Value = r.json().await.unwrap();
    let me: Value = app
        .me(t["access_token"].as_str().unwrap())
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(me["id"], alice.id.as_str());
    assert!(me["last_seen"].is_string(), "login sets last_seen");

    let r = app
        .http
        .post(app.url("/auth/login"))
        .form(&[("username", "alice")])
        .send()
        .await
        .unwrap();
    let body = assert_error(r, StatusCode::UNPROCESSABLE_ENTITY, "validation_error").await;
    assert!(body["fields"]["password"].is_string());
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn unknown_user_and_wrong_password_look_the_same(db: PgPool) {
    let app = spawn_app(db).await;
    let alice = app.register("alice").await;

    let wrong = app.login("alice", "not-the-password").await;
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    let wrong: Value = wrong.json().await.unwrap();
    let unknown = app.login("nobody", &alice.password).await;
    assert_eq!(unknown.status(), StatusCode::UNAUTHORIZED);
    let unknown: Value = unknown.json().await.unwrap();
    assert_eq!(wrong, unknown);
    assert_eq!(wrong["code"], "invalid_credentials");

    // An unknown user still costs one Argon2 verification (of a dummy hash), so its timing does
    // not reveal that the user does not exist. Compare the fastest of several tries of each.
    async fn fastest(app: &crate::helpers::TestApp, login: &str) -> Duration {
        let mut best = Duration::MAX;
        for _ in 0..4 {
            let t = Instant::now();
            let r = app.login(login, "not-the-password").await;
            assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
            best = best.min(t.elapsed());
        }
        best
    }
    let known = fastest(&app, "alice").await;
    let unknown = fastest(&app, "nobody").await;
    assert!(
        unknown * 2 >= known && known * 2 >= unknown,
        "wrong password took {known:?}, unknown user {unknown:?}"
    );
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn deactivated_users_cannot_log_in(db: PgPool) {
    let app = spawn_app(db).await;
    let alice = app.register("alice").await;
    sqlx::query("UPDATE users SET is_active = false WHERE username = 'alice'")
        .execute(&app.db)
        .await
        .unwrap();
    let r = app.login("alice", &alice.password).await;
    assert_error(r, StatusCode::UNAUTHORIZED, "account_disabled").await;
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn failed_logins_are_throttled_per_account(db: PgPool) {
    let app = spawn_app_with(db, |c| c.login_max_failures_per_account = 3).await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;

    for _ in 0..3 {
        assert_eq!(
            app.login("alice", "wrong-password").await.status(),
            StatusCode::UNAUTHORIZED
        );
    }
    // Now even the right password is refused, before it is checked.
    let r = app.login("alice@example.com", &alice.password).await;
    let retry_after: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=900).contains(&retry_after), "{retry_after}");
    assert_error(r, StatusCode::TOO_MANY_REQUESTS, "too_many_requests").await;

    // Other accounts from the same address are unaffected.
    assert_eq!(
        app.login("bob", &bob.password).await.status(),
        StatusCode::OK
    );
}

/// Password checks are paced per account whatever their outcome: a success clears the failure
/// count, so without a pace one user logging in with their own password as fast as answers
/// came kept the hashing pool busy, and everyone else's logins waited or got 503.
#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn logins_are_paced_per_account_even_when_they_succeed(db: PgPool) {
    let app = spawn_app_with(db, |c| {
        c.login_rate = shared::limits::Rate {
            per_second: 1,
            burst: 3,
        }
    })
    .await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    for login in ["alice", "alice@example.com", "ALICE"] {
        assert_eq!(
            app.login(login, &alice.password).await.status(),
            StatusCode::OK
        );
    }
    let r = app.login("alice", &alice.password).await;
    assert!(r.headers().contains_key("retry-after"));
    assert_error(r, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
    assert_eq!(
        app.login("bob", &bob.password).await.status(),
        StatusCode::OK
    );
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert_eq!(
        app.login("alice", &alice.password).await.status(),
        StatusCode::OK
    );
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn a_success_clears_the_account_count(db: PgPool) {
    let app = spawn_app_with(db, |c| c.login_max_failures_per_account = 3).await;
    let alice = app.register("alice").await;
    for _ in 0..2 {
        app.login("alice", "wrong-password").await;
    }
    assert_eq!(
        app.login("alice", &alice.password).await.status(),
        StatusCode::OK
    );
    for _ in 0..2 {
        app.login("alice", "wrong-password").await;
    }
    assert_eq!(
        app.login("alice", &alice.password).await.status(),
        StatusCode::OK
    );
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn failed_logins_are_throttled_per_client_address(db: PgPool) {
    let app = spawn_app_with(db, |c| {
        c.login_max_failures_per_address = 4;
        c.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
    })
    .await;
    let alice = app.register("alice").await;
    let login_from = |ip: &'static str, user: String, password: String| {
        let req = app
            .http
            .post(app.url("/auth/login"))
            .header("x-forwarded-for", format!("198.51.100.7, {ip}"))
            .json(&json!({"username": user, "password": password}));
        async move { req.send().await.unwrap() }
    };
    // Four different accounts guessed from one address...
    for i in 0..4 {
        let r = login_from("203.0.113.9", format!("user{i}"), "guess-guess".into()).await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    }
    // ...lock that address out, even for a correct password,
    let r = login_from("203.0.113.9", "alice".into(), alice.password.clone()).await;
    assert_error(r, StatusCode::TOO_MANY_REQUESTS, "too_many_requests").await;
    // but not another address.
    let r = login_from("203.0.113.10", "alice".into(), alice.password.clone()).await;
    assert_eq!(r.status(), StatusCode::OK);
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn a_login_flood_does_not_starve_other_requests(db: PgPool) {
    // One hashing slot: 16 logins take at least 16 sequential Argon2 runs (of one account,
    // so its login rate is lifted: this is about the hashing pool and the async workers).
    let app = spawn_app_with(db, |c| {
        c.argon2_max_concurrency = 1;
        c.login_rate = shared::limits::Rate {
            per_second: 1000,
            burst: 1000,
        };
    })
    .await;
    let alice = app.register("alice").await;
    let token = app.tokens(&alice).await["access_token"]
        .as_str()
        .unwrap()
        .to_owned();

    let flood: Vec<_> = (0..16)
        .map(|_| {
            let http = app.http.clone();
            let url = app.url("/auth/login");
            let body = json!({"username": "alice", "password": alice.password});
            tokio::spawn(async move { http.post(url).json(&body).send().await.unwrap().status() })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let r = app.me(&token).await;
    assert_eq!(r.status(), StatusCode::OK);
    let still_running = flood.iter().filter(|h| !h.is_finished()).count();
    assert!(
        still_running > 0,
        "/auth/me was answered while logins were still queued"
    );
    for h in flood {
        assert_eq!(h.await.unwrap(), StatusCode::OK);
    }
}
