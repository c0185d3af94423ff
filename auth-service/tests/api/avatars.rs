//! `PUT /auth/me/avatar` and `GET /auth/avatars/{id}` on the local-directory store.

use reqwest::{redirect::Policy, StatusCode};
use serde_json::{json, Value};
use shared::storage::Storage;
use sqlx::PgPool;
use uuid::Uuid;

use crate::helpers::{assert_error, spawn_app, TestApp};

fn png(w: u32, h: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([x as u8, y as u8, 7]));
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

/// An upload of `owner` as chat-service records it, with `bytes` stored (declared `size`).
async fn upload(
    app: &TestApp,
    storage: &Storage,
    owner: &str,
    content_type: &str,
    size: usize,
    bytes: Vec<u8>,
) -> Uuid {
    let id = Uuid::now_v7();
    let key = format!("uploads/{id}");
    sqlx::query(
        "INSERT INTO uploads (id, owner_id, filename, content_type, size, object_key, expires_at)
         VALUES ($1, $2::uuid, 'a', $3, $4, $5, now() + interval '1 hour')",
    )
    .bind(id)
    .bind(owner)
    .bind(content_type)
    .bind(size as i64)
    .bind(&key)
    .execute(&app.db)
    .await
    .unwrap();
    storage.put(&key, bytes.into(), content_type).await.unwrap();
    id
}

async fn set(app: &TestApp, token: &str, id: Uuid) -> reqwest::Response {
    app.http
        .put(app.url("/auth/me/avatar"))
        .bearer_auth(token)
        .json(&json!({"upload_id": id}))
        .send()
        .await
        .unwrap()
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn an_image_upload_becomes_a_resized_public_avatar(db: PgPool) {
    let app = spawn_app(db).await;
    let storage = Storage::new(&app.config.storage, &app.config.jwt.secret_key).unwrap();
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let a = app.tokens(&alice).await["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let b = app.tokens(&bob).await["access_token"]
        .as_str()
        .unwrap()
        .to_owned();

    let picture = png(600, 400);
    let id = upload(
        &app,
        &storage,
        &alice.id,
        "image/png",
        picture.len(),
        picture.clone(),
    )
    .await;
    // Not bob's to use.
    let r = set(&app, &b, id).await;
    assert_error(r, StatusCode::UNPROCESSABLE_ENTITY, "validation_error").await;
    let r = set(&app, &a, id).await;
    assert_eq!(r.status(), StatusCode::OK);
    let me: Value = r.json().await.unwrap();
    let url = me["avatar_url"].as_str().unwrap().to_owned();
    assert_eq!(url, format!("/auth/avatars/{id}"));

    // Public: no token. It redirects to the resized copy.
    let http = reqwest::Client::builder()
        .redirect(Policy::none())
        .build()
        .unwrap();
    let r = http.get(app.url(&url)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::FOUND);
    let location = r.headers()["location"].to_str().unwrap();
    assert!(
        location.starts_with(&format!("/chat/files/avatars/{id}?")),
        "{location}"
    );
    let small = image::load_from_memory(
        &storage
            .get_at_most(&format!("avatars/{id}"), u64::MAX)
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!((small.width(), small.height()), (256, 171));

    // Used once; images only; the stored file as declared.
    let r = set(&app, &a, id).await;
    assert_error(r, StatusCode::UNPROCESSABLE_ENTITY, "validation_error").await;
    let text = b"hello".to_vec();
    let doc = upload(&app, &storage, &alice.id, "text/plain", text.len(), text).await;
    let r = set(&app, &a, doc).await;
    assert_error(r, StatusCode::UNPROCESSABLE_ENTITY, "validation_error").await;
    let lie = upload(&app, &storage, &alice.id, "image/png", 10, png(20, 20)).await;
    let r = set(&app, &a, lie).await;
    let e = assert_error(r, StatusCode::UNPROCESSABLE_ENTITY, "validation_error").await;
    assert!(
        e["fields"]["upload_id"].as_str().unwrap().contains("bytes"),
        "{e}"
    );

    // A new avatar replaces the old: its URL is gone, its copy queued for removal (chat-service's
    // sweep deletes it).
    let queued = |key: String| {
        let db = app.db.clone();
        async move {
            sqlx::query_scalar::<_, bool>(
                "SELECT EXISTS (SELECT 1 FROM object_removals WHERE key = $1 AND due_at <= now())",
            )
            .bind(key)
            .fetch_one(&db)
            .await
            .unwrap()
        }
    };
    let next = png(50, 50);
    let second = upload(&app, &storage, &alice.id, "image/png", next.len(), next).await;
    assert_eq!(set(&app, &a, second).await.status(), StatusCode::OK);
    let r = http.get(app.url(&url)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert!(queued(format!("avatars/{id}")).await);
    assert!(!queued(format!("avatars/{second}")).await);

    // Sending the current avatar_url back keeps the avatar; another one retires it.
    let second_url = format!("/auth/avatars/{second}");
    let patch = |body: Value| {
        app.http
            .patch(app.url("/auth/me"))
            .bearer_auth(&a)
            .json(&body)
            .send()
    };
    let r = patch(json!({"display_name": "Alice", "avatar_url": second_url}))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = http.get(app.url(&second_url)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::FOUND);
    assert!(!queued(format!("avatars/{second}")).await);
    let r = patch(json!({"avatar_url": null})).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = http.get(app.url(&second_url)).send().await.unwrap();
    assert_eq!(
        r.status(),
        StatusCode::NOT_FOUND,
        "a cleared avatar is not served"
    );
    assert!(queued(format!("avatars/{second}")).await);

    // A deactivated account's avatar goes too.
    let bob_picture = png(40, 40);
    let bobs = upload(
        &app,
        &storage,
        &bob.id,
        "image/png",
        bob_picture.len(),
        bob_picture,
    )
    .await;
    assert_eq!(set(&app, &b, bobs).await.status(), StatusCode::OK);
    let r = app
        .http
        .delete(app.url("/auth/me"))
        .bearer_auth(&b)
        .json(&json!({"password": bob.password}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert!(queued(format!("avatars/{bobs}")).await);
}
