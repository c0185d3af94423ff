//! `/admin/users`: only for admins (granted in the database, as `auth-service admin grant`
//! does), checked on every call.

use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::PgPool;

use crate::helpers::{assert_error, spawn_app};

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn admins_find_users_and_deactivate_them(db: PgPool) {
    let app = spawn_app(db).await;
    let root = app.register("root").await;
    let bob = app.register("bob").await;
    let root_token = app.tokens(&root).await["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let bob_tokens = app.tokens(&bob).await;
    let bob_token = bob_tokens["access_token"].as_str().unwrap().to_owned();
    let get = |path: &str, token: &str| app.http.get(app.url(path)).bearer_auth(token).send();
    let deactivate = |id: &str, token: &str| {
        app.http
            .post(app.url(&format!("/admin/users/{id}/deactivate")))
            .bearer_auth(token)
            .send()
    };

    // Without the role: refused, whoever asks; bob cannot deactivate root.
    let r = get("/admin/users?q=bo", &root_token).await.unwrap();
    assert_error(r, StatusCode::FORBIDDEN, "admin_required").await;
    let r = deactivate(&root.id, &bob_token).await.unwrap();
    assert_error(r, StatusCode::FORBIDDEN, "admin_required").await;
    assert!(!shared::admin::set_role(&app.db, "nobody", true)
        .await
        .unwrap());

    assert!(shared::admin::set_role(&app.db, "root", true)
        .await
        .unwrap());
    let r = get("/admin/users?q=BO", &root_token).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let found: Vec<Value> = r.json().await.unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0]["username"], "bob");
    assert_eq!(found[0]["email"], "bob@example.com");
    assert_eq!(found[0]["is_admin"], false);
    assert!(found[0].get("password_hash").is_none());
    let all: Vec<Value> = get("/admin/users", &root_token)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(all.len(), 2);
    let r = get("/admin/users?limit=0", &root_token).await.unwrap();
    assert_error(r, StatusCode::UNPROCESSABLE_ENTITY, "validation_error").await;
    let r = deactivate(&root.id, &root_token).await.unwrap();
    assert_error(r, StatusCode::FORBIDDEN, "forbidden").await;
    let r = deactivate(&uuid::Uuid::new_v4().to_string(), &root_token)
        .await
        .unwrap();
    assert_error(r, StatusCode::NOT_FOUND, "not_found").await;

    // Deactivated: bob's tokens stop working at once, his refresh token too, and he still shows
    // (inactive) to the admin.
    let r = deactivate(&bob.id, &root_token).await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_error(
        app.me(&bob_token).await,
        StatusCode::UNAUTHORIZED,
        "account_disabled",
    )
    .await;
    let r = app
        .post_json(
            "/auth/refresh",
            &json!({"refresh_token": bob_tokens["refresh_token"]}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let found: Vec<Value> = get("/admin/users?q=bob", &root_token)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(found[0]["is_active"], false);

    // The role is read on every call.
    assert!(shared::admin::set_role(&app.db, "root", false)
        .await
        .unwrap());
    let r = get("/admin/users", &root_token).await.unwrap();
    assert_error(r, StatusCode::FORBIDDEN, "admin_required").await;
}
