use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::PgPool;

use crate::helpers::{assert_error, spawn_app, spawn_app_with};

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn refresh_rotates_and_reuse_revokes_the_whole_login(db: PgPool) {
    // No grace window: any reuse revokes.
    let app = spawn_app_with(db, |c| c.refresh_reuse_grace_seconds = 0).await;
    let alice = app.register("alice").await;
    let first = app.tokens(&alice).await;
    let other_login = app.tokens(&alice).await;

    // Rotation: a new pair, and the new access token works.
    let r = app
        .post_json(
            "/auth/refresh",
            &json!({"refresh_token": first["refresh_token"]}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let second: Value = r.json().await.unwrap();
    assert_ne!(second["refresh_token"], first["refresh_token"]);
    assert_eq!(second["token_type"], "bearer");
    assert_eq!(
        app.me(second["access_token"].as_str().unwrap())
            .await
            .status(),
        StatusCode::OK
    );

    let r = app
        .post_json(
            "/auth/refresh",
            &json!({"refresh_token": second["refresh_token"]}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let third: Value = r.json().await.unwrap();

    // The first token comes back (a stolen copy): refused, and every descendant is revoked.
    let r = app
        .post_json(
            "/auth/refresh",
            &json!({"refresh_token": first["refresh_token"]}),
        )
        .await;
    assert_error(r, StatusCode::UNAUTHORIZED, "refresh_token_reused").await;
    let r = app
        .post_json(
            "/auth/refresh",
            &json!({"refresh_token": third["refresh_token"]}),
        )
        .await;
    assert_error(r, StatusCode::UNAUTHORIZED, "refresh_token_revoked").await;

    // Another login of the same user is a different family and keeps working.
    let r = app
        .post_json(
            "/auth/refresh",
            &json!({"refresh_token": other_login["refresh_token"]}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);

    // Only hashes are stored.
    let stored: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM refresh_tokens WHERE token_hash = convert_to($1, 'UTF8')",
    )
    .bind(first["refresh_token"].as_str().unwrap())
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!(stored, 0);
}

async fn refresh_concurrently(
    app: &crate::helpers::TestApp,
    token: &Value,
) -> Vec<(StatusCode, Value)> {
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let http = app.http.clone();
            let url = app.url("/auth/refresh");
            let body = json!({ "refresh_token": token });
            tokio::spawn(async move {
                let r = http.post(url).json(&body).send().await.unwrap();
                (r.status(), r.json().await.unwrap_or(Value::Null))
            })
        })
        .collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn concurrent_refreshes_with_one_token_let_exactly_one_through(db: PgPool) {
    let app = spawn_app_with(db, |c| c.refresh_reuse_grace_seconds = 0).await;
    let alice = app.register("alice").await;
    let pair = app.tokens(&alice).await;
    let answers = refresh_concurrently(&app, &pair["refresh_token"]).await;
    let ok = answers.iter().filter(|(s, _)| *s == StatusCode::OK).count();
    assert!(answers
        .iter()
        .all(|(s, _)| *s == StatusCode::OK || *s == StatusCode::UNAUTHORIZED));
    assert_eq!(ok, 1);
}

/// Within the grace window (two tabs refreshing at once) every one of them gets the same pair.
#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn concurrent_refreshes_within_the_grace_window_share_one_successor(db: PgPool) {
    let app = spawn_app(db).await;
    let alice = app.register("alice").await;
    let pair = app.tokens(&alice).await;
    let answers = refresh_concurrently(&app, &pair["refresh_token"]).await;
    assert!(
        answers.iter().all(|(s, _)| *s == StatusCode::OK),
        "{answers:?}"
    );
    let first = &answers[0].1["refresh_token"];
    assert!(answers.iter().all(|(_, b)| &b["refresh_token"] == first));
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn logout_ends_the_login(db: PgPool) {
    let app = spawn_app(db).await;
    let alice = app.register("alice").await;
    let pair = app.tokens(&alice).await;
    let r = app
        .post_json(
            "/auth/refresh",
            &json!({"refresh_token": pair["refresh_token"]}),
        )
        .await;
    let rotated: Value = r.json().await.unwrap();

    let r = app
        .post_json(
            "/auth/logout",
            &json!({"refresh_token": rotated["refresh_token"]}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = app
        .post_json(
            "/auth/refresh",
            &json!({"refresh_token": rotated["refresh_token"]}),
        )
        .await;
    assert_error(r, StatusCode::UNAUTHORIZED, "refresh_token_revoked").await;

    // Logging out again, or with an unknown token, is harmless.
    let r = app
        .post_json(
            "/auth/logout",
            &json!({"refresh_token": rotated["refresh_token"]}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = app
        .post_json("/auth/logout", &json!({"refresh_token": "nonsense"}))
        .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn unknown_expired_and_inactive_refreshes_are_refused(db: PgPool) {
    let app = spawn_app(db).await;
    let r = app
        .post_json("/auth/refresh", &json!({"refresh_token": "made-up"}))
        .await;
    assert_error(r, StatusCode::UNAUTHORIZED, "invalid_refresh_token").await;
    let r = app.post_json("/auth/refresh", &json!({})).await;
    assert_error(r, StatusCode::UNPROCESSABLE_ENTITY, "validation_error").await;

    let alice = app.register("alice").await;
    let pair = app.tokens(&alice).await;
    sqlx::query("UPDATE refresh_tokens SET expires_at = now() - interval '1 minute'")
        .execute(&app.db)
        .await
        .unwrap();
    let r = app
        .post_json(
            "/auth/refresh",
            &json!({"refresh_token": pair["refresh_token"]}),
        )
        .await;
    assert_error(r, StatusCode::UNAUTHORIZED, "refresh_token_expired").await;

    let pair = app.tokens(&alice).await;
    sqlx::query("UPDATE users SET is_active = false")
        .execute(&app.db)
        .await
        .unwrap();
    let r = app
        .post_json(
            "/auth/refresh",
            &json!({"refresh_token": pair["refresh_token"]}),
        )
        .await;
    assert_error(r, StatusCode::UNAUTHORIZED, "account_disabled").await;
}
