//! The session lifecycle: `sid` in access tokens, logout and refresh reuse ending one login,
//! account deletion ending all of them, a password change ending all but the caller's, the
//! refresh grace window, WebSocket tickets, the internal identity kept out, and a login
//! throttle that parallel guesses cannot race.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::PgPool;

use crate::helpers::{assert_error, spawn_app, spawn_app_with, SECRET};

fn claims(token: &str) -> Value {
    use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn logout_ends_that_login_and_no_other(db: PgPool) {
    let app = spawn_app(db).await;
    let alice = app.register("alice").await;
    let one = app.tokens(&alice).await;
    let two = app.tokens(&alice).await;
    let access_one = one["access_token"].as_str().unwrap();
    let access_two = two["access_token"].as_str().unwrap();
    let sid_one = claims(access_one)["sid"].as_str().unwrap().to_owned();
    assert_ne!(sid_one, claims(access_two)["sid"].as_str().unwrap());
    // A refresh stays on its login.
    let refreshed: Value = app
        .post_json(
            "/auth/refresh",
            &json!({"refresh_token": one["refresh_token"]}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        claims(refreshed["access_token"].as_str().unwrap())["sid"],
        sid_one
    );

    let r = app
        .post_json(
            "/auth/logout",
            &json!({"refresh_token": refreshed["refresh_token"]}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    for token in [access_one, refreshed["access_token"].as_str().unwrap()] {
        assert_error(
            app.me(token).await,
            StatusCode::UNAUTHORIZED,
            "session_revoked",
        )
        .await;
    }
    assert_eq!(app.me(access_two).await.status(), StatusCode::OK);
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn a_refresh_repeated_within_the_grace_window_gets_the_same_pair(db: PgPool) {
    let app = spawn_app_with(db, |c| c.refresh_reuse_grace_seconds = 2).await;
    let alice = app.register("alice").await;
    let first = app.tokens(&alice).await;
    let refresh = |token: Value| {
        let app = &app;
        async move {
            app.post_json("/auth/refresh", &json!({"refresh_token": token}))
                .await
        }
    };
    let a = refresh(first["refresh_token"].clone()).await;
    assert_eq!(a.status(), StatusCode::OK);
    let a: Value = a.json().await.unwrap();
    // A retry after a lost answer: the same successor pair, the login intact.
    let b = refresh(first["refresh_token"].clone()).await;
    assert_eq!(b.status(), StatusCode::OK);
    let b: Value = b.json().await.unwrap();
    assert_eq!(a["refresh_token"], b["refresh_token"]);
    assert_eq!(a["access_token"], b["access_token"]);
    assert_eq!(
        app.me(a["access_token"].as_str().unwrap()).await.status(),
        StatusCode::OK
    );
    // Past the window, the same reuse revokes the login.
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let late = refresh(first["refresh_token"].clone()).await;
    assert_error(late, StatusCode::UNAUTHORIZED, "refresh_token_reused").await;
    assert_error(
        app.me(a["access_token"].as_str().unwrap()).await,
        StatusCode::UNAUTHORIZED,
        "session_revoked",
    )
    .await;
    let next = refresh(a["refresh_token"].clone()).await;
    assert_error(next, StatusCode::UNAUTHORIZED, "refresh_token_revoked").await;
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn deleting_the_account_needs_the_password_and_ends_every_login(db: PgPool) {
    let app = spawn_app(db).await;
    let alice = app.register("alice").await;
    let one = app.tokens(&alice).await;
    let two = app.tokens(&alice).await;
    let token = one["access_token"].as_str().unwrap();
    let delete = |password: &str| {
        app.http
            .delete(app.url("/auth/me"))
            .bearer_auth(token)
            .json(&json!({ "password": password }))
            .send()
    };
    let r = delete("not the password").await.unwrap();
    assert_error(r, StatusCode::UNAUTHORIZED, "invalid_credentials").await;
    assert_eq!(app.me(token).await.status(), StatusCode::OK);
    let r = delete(&alice.password).await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    for t in [&one, &two] {
        let r = app.me(t["access_token"].as_str().unwrap()).await;
        assert_error(r, StatusCode::UNAUTHORIZED, "account_disabled").await;
        let r = app
            .post_json(
                "/auth/refresh",
                &json!({"refresh_token": t["refresh_token"]}),
            )
            .await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    }
    let r = app.login(&alice.username, &alice.password).await;
    assert_error(r, StatusCode::UNAUTHORIZED, "account_disabled").await;
    let active: bool = sqlx::query_scalar("SELECT is_active FROM users WHERE username = 'alice'")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert!(!active, "deactivated, not deleted: its messages stay");
}

/// Changing the password needs the current one and ends every other login of the user (its
/// access tokens refused, its refresh tokens revoked); the caller's login goes on, and logins
/// made afterwards are untouched.
#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn changing_the_password_ends_every_other_login(db: PgPool) {
    let app = spawn_app(db).await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let mine = app.tokens(&alice).await;
    let other = app.tokens(&alice).await;
    let bobs = app.tokens(&bob).await;
    let token = mine["access_token"].as_str().unwrap();
    let change = |current: &str, new: &str| {
        app.http
            .post(app.url("/auth/me/password"))
            .bearer_auth(token)
            .json(&json!({ "current_password": current, "new_password": new }))
            .send()
    };
    let r = change("not the password", "a new secret").await.unwrap();
    assert_error(r, StatusCode::UNAUTHORIZED, "invalid_credentials").await;
    let r = change(&alice.password, "short").await.unwrap();
    let body = assert_error(r, StatusCode::UNPROCESSABLE_ENTITY, "validation_error").await;
    assert!(body["fields"]["new_password"].is_string(), "{body}");
    let other_access = other["access_token"].as_str().unwrap();
    assert_eq!(app.me(other_access).await.status(), StatusCode::OK);

    let r = change(&alice.password, "a new secret").await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    // The other login is over, however it is presented.
    assert_error(
        app.me(other_access).await,
        StatusCode::UNAUTHORIZED,
        "session_revoked",
    )
    .await;
    let r = app
        .post_json(
            "/auth/refresh",
            &json!({"refresh_token": other["refresh_token"]}),
        )
        .await;
    assert_error(r, StatusCode::UNAUTHORIZED, "refresh_token_revoked").await;
    // The caller's goes on, refresh included; another user's is untouched.
    assert_eq!(app.me(token).await.status(), StatusCode::OK);
    let r = app
        .post_json(
            "/auth/refresh",
            &json!({"refresh_token": mine["refresh_token"]}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        app.me(bobs["access_token"].as_str().unwrap())
            .await
            .status(),
        StatusCode::OK
    );
    // Only the new password logs in, and a login made now is not caught by the change.
    let r = app.login(&alice.username, &alice.password).await;
    assert_error(r, StatusCode::UNAUTHORIZED, "invalid_credentials").await;
    let r = app.login(&alice.username, "a new secret").await;
    assert_eq!(r.status(), StatusCode::OK);
    let later: Value = r.json().await.unwrap();
    assert_eq!(
        app.me(later["access_token"].as_str().unwrap())
            .await
            .status(),
        StatusCode::OK
    );
}

/// A login is revoked as a whole: once any of its refresh tokens is revoked, none of the others
/// is exchanged, even one a rotation inserted after the revoking statement began (here: the
/// first token revoked by hand, its successor untouched).
#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn a_login_with_a_revoked_token_refreshes_no_more(db: PgPool) {
    let app = spawn_app(db).await;
    let alice = app.register("alice").await;
    let first = app.tokens(&alice).await;
    let r = app
        .post_json(
            "/auth/refresh",
            &json!({"refresh_token": first["refresh_token"]}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let second: Value = r.json().await.unwrap();
    let revoked = sqlx::query(
        "UPDATE refresh_tokens SET revoked_at = now()
         WHERE id = (SELECT id FROM refresh_tokens ORDER BY created_at, id LIMIT 1)",
    )
    .execute(&app.db)
    .await
    .unwrap()
    .rows_affected();
    assert_eq!(revoked, 1);
    let r = app
        .post_json(
            "/auth/refresh",
            &json!({"refresh_token": second["refresh_token"]}),
        )
        .await;
    assert_error(r, StatusCode::UNAUTHORIZED, "refresh_token_revoked").await;
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn a_ws_ticket_is_issued_to_a_signed_in_user(db: PgPool) {
    let app = spawn_app(db).await;
    let alice = app.register("alice").await;
    let tokens = app.tokens(&alice).await;
    let r = app
        .http
        .post(app.url("/auth/ws-ticket"))
        .bearer_auth(tokens["access_token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let body: Value = r.json().await.unwrap();
    assert!(body["ticket"].as_str().is_some_and(|t| t.len() >= 32));
    assert_eq!(body["expires_in"], 30);
    let r = app
        .http
        .post(app.url("/auth/ws-ticket"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
}

/// Tickets are rated per user (`WS_TICKET_RATE_PER_SECOND`): past the burst, 429
/// `rate_limited` with `Retry-After`; another user's bucket is their own.
#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn ws_tickets_are_rated_per_user(db: PgPool) {
    let app = spawn_app_with(db, |c| {
        c.ticket_rate = shared::limits::Rate {
            per_second: 1,
            burst: 3,
        }
    })
    .await;
    let ticket = |token: String| {
        let request = app.http.post(app.url("/auth/ws-ticket")).bearer_auth(token);
        async move { request.send().await.unwrap() }
    };
    let alice = app.register("alice").await;
    let alice = app.tokens(&alice).await["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    for _ in 0..3 {
        assert_eq!(ticket(alice.clone()).await.status(), StatusCode::CREATED);
    }
    let r = ticket(alice.clone()).await;
    assert!(r.headers().contains_key("retry-after"));
    assert_error(r, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
    let bob = app.register("bob").await;
    let bob = app.tokens(&bob).await["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(ticket(bob).await.status(), StatusCode::CREATED);
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn the_internal_identity_is_refused_publicly(db: PgPool) {
    let app = spawn_app(db).await;
    let keys = shared::jwt::JwtKeys::new(&shared::config::JwtConfig {
        secret_key: SECRET.into(),
        access_token_expire_minutes: 30,
        revocation_poll: Duration::from_millis(200),
    });
    let internal = keys.issue_internal().unwrap().token;
    for path in ["/auth/me", "/auth/users?q=al"] {
        let r = app
            .http
            .get(app.url(path))
            .bearer_auth(&internal)
            .send()
            .await
            .unwrap();
        assert_error(r, StatusCode::UNAUTHORIZED, "invalid_token").await;
    }
    let r = app
        .http
        .post(app.url("/auth/ws-ticket"))
        .bearer_auth(&internal)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
}

/// Twenty wrong guesses at once: the throttle reserves each attempt before its password is
/// checked, so only the free ones get through to Argon2, however they interleave.
#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn parallel_guesses_cannot_race_the_throttle(db: PgPool) {
    let app = spawn_app_with(db, |c| {
        c.login_max_failures_per_account = 3;
        c.login_max_delay_seconds = 2;
    })
    .await;
    let alice = app.register("alice").await;
    let guesses: Vec<_> = (0..20)
        .map(|i| {
            let http = app.http.clone();
            let url = app.url("/auth/login");
            let body = json!({"username": "alice", "password": format!("guess-{i}-guess")});
            tokio::spawn(async move { http.post(url).json(&body).send().await.unwrap().status() })
        })
        .collect();
    let mut checked = 0;
    let mut throttled = 0;
    for g in guesses {
        match g.await.unwrap() {
            StatusCode::UNAUTHORIZED => checked += 1,
            StatusCode::TOO_MANY_REQUESTS => throttled += 1,
            other => panic!("{other}"),
        }
    }
    assert_eq!(
        checked, 3,
        "only the free attempts reached the password check"
    );
    assert_eq!(throttled, 17);
    // No lockout: after the (growing, capped) delay the owner logs in.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(
        app.login(&alice.username, &alice.password).await.status(),
        StatusCode::OK
    );
}
