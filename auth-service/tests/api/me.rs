use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::StatusCode;
use serde_json::{json, Value};
use shared::jwt::Claims;
use sqlx::PgPool;
use uuid::Uuid;

use crate::helpers::{assert_error, spawn_app, spawn_app_with, SECRET};

fn sign(claims: &Claims, alg: Algorithm, secret: &str) -> String {
    jsonwebtoken::encode(
        &Header::new(alg),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn me_shows_the_caller_with_email(db: PgPool) {
    let app = spawn_app(db).await;
    let alice = app.register("alice").await;
    let token = app.tokens(&alice).await["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = app.me(&token).await;
    assert_eq!(r.status(), StatusCode::OK);
    let me: Value = r.json().await.unwrap();
    assert_eq!(me["id"], alice.id.as_str());
    assert_eq!(me["email"], "alice@example.com");
    assert!(me.get("password_hash").is_none());
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn bad_tokens_are_401(db: PgPool) {
    let app = spawn_app(db).await;
    let alice = app.register("alice").await;
    let id: Uuid = alice.id.parse().unwrap();
    let now = chrono::Utc::now().timestamp();
    let fresh = Claims {
        sub: id,
        sid: Uuid::new_v4(),
        iat: now,
        exp: now + 600,
        aud: shared::jwt::USER_AUDIENCE.into(),
    };
    let expired = Claims {
        sub: id,
        sid: Uuid::new_v4(),
        iat: now - 7200,
        exp: now - 3600,
        aud: shared::jwt::USER_AUDIENCE.into(),
    };

    let none = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#),
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(&fresh).unwrap())
    );
    let cases = [
        (sign(&expired, Algorithm::HS256, SECRET), "token_expired"),
        (
            sign(
                &fresh,
                Algorithm::HS256,
                "some-other-key-some-other-key-12345",
            ),
            "invalid_token",
        ),
        (sign(&fresh, Algorithm::HS512, SECRET), "invalid_token"),
        (none, "invalid_token"),
        ("garbage".to_owned(), "invalid_token"),
        // The internal service identity is no user.
        (
            sign(
                &Claims {
                    sub: Uuid::nil(),
                    sid: Uuid::nil(),
                    aud: shared::jwt::INTERNAL_AUDIENCE.into(),
                    ..fresh.clone()
                },
                Algorithm::HS256,
                SECRET,
            ),
            "invalid_token",
        ),
        // Nor is a token for another audience.
        (
            sign(
                &Claims {
                    aud: "somebody-else".into(),
                    ..fresh.clone()
                },
                Algorithm::HS256,
                SECRET,
            ),
            "invalid_token",
        ),
        (
            sign(
                &Claims {
                    sub: Uuid::new_v4(),
                    ..fresh.clone()
                },
                Algorithm::HS256,
                SECRET,
            ),
            "invalid_token",
        ),
    ];
    for (token, code) in cases {
        assert_error(app.me(&token).await, StatusCode::UNAUTHORIZED, code).await;
    }
    // The same token signed correctly works, so the refusals above are about the token.
    assert_eq!(
        app.me(&sign(&fresh, Algorithm::HS256, SECRET))
            .await
            .status(),
        StatusCode::OK
    );

    let r = app.http.get(app.url("/auth/me")).send().await.unwrap();
    assert_error(r, StatusCode::UNAUTHORIZED, "not_authenticated").await;
    let r = app
        .http
        .get(app.url("/auth/me"))
        .header("authorization", "Basic abc")
        .send()
        .await
        .unwrap();
    assert_error(r, StatusCode::UNAUTHORIZED, "not_authenticated").await;
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn a_deactivated_users_token_is_401(db: PgPool) {
    let app = spawn_app(db).await;
    let alice = app.register("alice").await;
    let token = app.tokens(&alice).await["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    sqlx::query("UPDATE users SET is_active = false")
        .execute(&app.db)
        .await
        .unwrap();
    assert_error(
        app.me(&token).await,
        StatusCode::UNAUTHORIZED,
        "account_disabled",
    )
    .await;
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn patch_me_updates_the_profile(db: PgPool) {
    let app = spawn_app(db).await;
    let alice = app.register("alice").await;
    let token = app.tokens(&alice).await["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let patch = |body: Value| {
        app.http
            .patch(app.url("/auth/me"))
            .bearer_auth(&token)
            .json(&body)
            .send()
    };

    let r =
        patch(json!({"display_name": "Alice W.", "avatar_url": "https://cdn.example.com/a.png"}))
            .await
            .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let me: Value = r.json().await.unwrap();
    assert_eq!(me["display_name"], "Alice W.");
    assert_eq!(me["avatar_url"], "https://cdn.example.com/a.png");

    // Absent fields stay; null removes the avatar.
    let r = patch(json!({"avatar_url": null})).await.unwrap();
    let me: Value = r.json().await.unwrap();
    assert_eq!(me["display_name"], "Alice W.");
    assert!(me["avatar_url"].is_null());

    let r = patch(json!({"display_name": "", "avatar_url": "javascript:alert(1)"}))
        .await
        .unwrap();
    let body = assert_error(r, StatusCode::UNPROCESSABLE_ENTITY, "validation_error").await;
    assert!(body["fields"]["display_name"].is_string() && body["fields"]["avatar_url"].is_string());

    let r = app
        .http
        .patch(app.url("/auth/me"))
        .json(&json!({"display_name": "x"}))
        .send()
        .await
        .unwrap();
    assert_error(r, StatusCode::UNAUTHORIZED, "not_authenticated").await;
}

/// Display name and avatar changes are limited per user and hour
/// (`PROFILE_UPDATES_PER_HOUR`, here 2): each is announced to every conversation of the user.
/// Refused changes store nothing; an empty body is no change; another user is not held up.
#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn profile_changes_are_limited_per_hour(db: PgPool) {
    let app = spawn_app_with(db, |c| c.profile_updates_per_hour = 2).await;
    let patch = |token: String, name: &'static str| {
        app.http
            .patch(app.url("/auth/me"))
            .bearer_auth(token)
            .json(&json!({ "display_name": name }))
            .send()
    };
    let token = |v: Value| v["access_token"].as_str().unwrap().to_owned();
    let alice = app.register("alice").await;
    let alice = token(app.tokens(&alice).await);
    let bob = app.register("bob").await;
    let bob = token(app.tokens(&bob).await);
    for name in ["one", "two"] {
        assert_eq!(
            patch(alice.clone(), name).await.unwrap().status(),
            StatusCode::OK
        );
    }
    // A body that changes nothing is not counted.
    let r = app
        .http
        .patch(app.url("/auth/me"))
        .bearer_auth(&alice)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["display_name"], "two");
    let r = patch(alice.clone(), "three").await.unwrap();
    assert!(r.headers().contains_key("retry-after"));
    assert_error(r, StatusCode::TOO_MANY_REQUESTS, "too_many_requests").await;
    let me: Value = app.me(&alice).await.json().await.unwrap();
    assert_eq!(me["display_name"], "two");
    assert_eq!(patch(bob, "b").await.unwrap().status(), StatusCode::OK);
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn user_search_matches_prefixes_without_emails(db: PgPool) {
    let app = spawn_app(db).await;
    let alice = app.register("alice").await;
    app.register("alfred").await;
    app.register("bob").await;
    app.register("al_x").await;
    sqlx::query("UPDATE users SET display_name = 'Albert Bob' WHERE username = 'bob'")
        .execute(&app.db)
        .await
        .unwrap();
    let token = app.tokens(&alice).await["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let search = |q: &str| {
        app.http
            .get(app.url("/auth/users"))
            .bearer_auth(&token)
            .query(&[("q", q)])
            .send()
    };

    let found: Vec<Value> = search("AL").await.unwrap().json().await.unwrap();
    let names: Vec<&str> = found
        .iter()
        .map(|u| u["username"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["al_x", "alfred", "alice", "bob"]);
    assert!(found.iter().all(|u| u.get("email").is_none()));

    // `_` is literal, not a wildcard.
    let found: Vec<Value> = search("al_").await.unwrap().json().await.unwrap();
    assert_eq!(found.len(), 1);

    let r = app
        .http
        .get(app.url("/auth/users?q=al&limit=2"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    let found: Vec<Value> = r.json().await.unwrap();
    assert_eq!(found.len(), 2);

    for bad in [
        "/auth/users",
        "/auth/users?q=al&limit=0",
        "/auth/users?q=al&limit=abc",
    ] {
        let r = app
            .http
            .get(app.url(bad))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_error(r, StatusCode::UNPROCESSABLE_ENTITY, "validation_error").await;
    }
    let r = app
        .http
        .get(app.url("/auth/users?q=al"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
}

/// `ids` names users by id (an extension, for the authors of the messages a client shows):
/// those that exist, deactivated accounts included, by username, never with emails.
#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn users_are_looked_up_by_id(db: PgPool) {
    let app = spawn_app(db).await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let carol = app.register("carol").await;
    app.register("dave").await;
    sqlx::query("UPDATE users SET is_active = false WHERE username = 'carol'")
        .execute(&app.db)
        .await
        .unwrap();
    let token = app.tokens(&alice).await["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let get = |query: String| {
        app.http
            .get(app.url(&format!("/auth/users?{query}")))
            .bearer_auth(&token)
            .send()
    };
    let unknown = Uuid::new_v4();
    let r = get(format!(
        "ids={},{}, {},{unknown},{}",
        carol.id, bob.id, alice.id, bob.id
    ))
    .await
    .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let found: Vec<Value> = r.json().await.unwrap();
    let names: Vec<(&str, bool)> = found
        .iter()
        .map(|u| {
            (
                u["username"].as_str().unwrap(),
                u["is_active"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(names, [("alice", true), ("bob", true), ("carol", false)]);
    assert!(found.iter().all(|u| u.get("email").is_none()));

    let many = (0..101)
        .map(|_| Uuid::new_v4().to_string())
        .collect::<Vec<_>>()
        .join(",");
    for bad in [
        "ids=".to_owned(),
        "ids=nope".to_owned(),
        format!("ids={many}"),
        format!("ids={}&q=al", bob.id),
    ] {
        let r = get(bad).await.unwrap();
        let body = assert_error(r, StatusCode::UNPROCESSABLE_ENTITY, "validation_error").await;
        assert!(body["fields"]["ids"].is_string(), "{body}");
    }
}
