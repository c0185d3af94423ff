//! Attachments (contract, "Attachments and avatars"): against the local-directory default and
//! against a real S3 API (moto's server, started here on loopback).

use std::{process::Stdio, time::Duration};

use reqwest::{redirect::Policy, StatusCode};
use serde_json::{json, Value};
use shared::{
    chat::{ChatType, Event, MessageType},
    storage::StorageConfig,
};
use sqlx::PgPool;
use uuid::Uuid;

use crate::helpers::{assert_error, spawn_app, spawn_app_with, TestApp, User};

/// A real PNG of `w`×`h` pixels.
fn png(w: u32, h: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([x as u8, y as u8, 90]));
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

/// `url` as a client reaches it: the local store's URLs are paths on chat-service.
fn absolute(app: &TestApp, url: &str) -> String {
    if url.starts_with('/') {
        app.url(url)
    } else {
        url.to_owned()
    }
}

/// Declares an upload and sends `bytes` where the ticket says; returns the upload id.
async fn upload(
    app: &TestApp,
    user: &User,
    name: &str,
    content_type: &str,
    declared: usize,
    bytes: Vec<u8>,
) -> String {
    upload_at(app, user, name, content_type, declared, bytes)
        .await
        .0
}

/// [`upload`], returning the upload URL too.
async fn upload_at(
    app: &TestApp,
    user: &User,
    name: &str,
    content_type: &str,
    declared: usize,
    bytes: Vec<u8>,
) -> (String, String) {
    let (id, url, status) = try_upload(app, user, name, content_type, declared, bytes).await;
    assert!(status.is_success(), "upload: {status}");
    (id, url)
}

/// Declares an upload and sends `bytes` to its URL: the upload id, the URL and the status of
/// the PUT.
async fn try_upload(
    app: &TestApp,
    user: &User,
    name: &str,
    content_type: &str,
    declared: usize,
    bytes: Vec<u8>,
) -> (String, String, StatusCode) {
    let r = app
        .post(
            user,
            "/chat/uploads",
            json!({"filename": name, "content_type": content_type, "size": declared}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let ticket: Value = r.json().await.unwrap();
    assert_eq!(ticket["method"], "PUT");
    assert!(ticket["expires_in"].as_u64().unwrap() > 0);
    let r = reqwest::Client::new()
        .put(absolute(app, ticket["url"].as_str().unwrap()))
        .header(
            "content-type",
            ticket["headers"]["content-type"].as_str().unwrap(),
        )
        .body(bytes)
        .send()
        .await
        .unwrap();
    (
        ticket["upload_id"].as_str().unwrap().to_owned(),
        absolute(app, ticket["url"].as_str().unwrap()),
        r.status(),
    )
}

/// Sends attachment `id` to `room` as a message of `kind` (`file` or `image`), over REST.
async fn send_attachment(
    app: &TestApp,
    user: &User,
    room: Uuid,
    kind: &str,
    id: impl serde::Serialize,
) -> reqwest::Response {
    app.post(
        user,
        &format!("/chat/messages/room/{room}"),
        json!({"message_type": kind, "attachment_id": id}),
    )
    .await
}

/// Follows a download's 302 by hand: (status of the API call, bytes behind the Location).
async fn download(app: &TestApp, user: &User, path: &str) -> (StatusCode, Option<Vec<u8>>) {
    let (status, served) = download_served(app, user, path).await;
    (status, served.map(|s| s.bytes))
}

/// What a download URL served.
struct ServedFile {
    location: String,
    headers: reqwest::header::HeaderMap,
    bytes: Vec<u8>,
}

/// [`download`], with the Location and the headers the file came with.
async fn download_served(
    app: &TestApp,
    user: &User,
    path: &str,
) -> (StatusCode, Option<ServedFile>) {
    let http = reqwest::Client::builder()
        .redirect(Policy::none())
        .build()
        .unwrap();
    let r = http
        .get(app.url(path))
        .bearer_auth(&user.token)
        .send()
        .await
        .unwrap();
    let status = r.status();
    if status != StatusCode::FOUND {
        return (status, None);
    }
    let location = r.headers()["location"].to_str().unwrap().to_owned();
    let body = http.get(absolute(app, &location)).send().await.unwrap();
    assert_eq!(body.status(), StatusCode::OK, "{location}");
    let headers = body.headers().clone();
    let bytes = body.bytes().await.unwrap().to_vec();
    (
        status,
        Some(ServedFile {
            location,
            headers,
            bytes,
        }),
    )
}

/// `file` was served as `content_type` with `disposition`: S3 is asked to in the signed URL
/// (moto ignores the request; S3 and MinIO honour it), the local store does it.
fn assert_served(file: &ServedFile, content_type: &str, disposition: &str) {
    if file.location.starts_with('/') {
        assert_eq!(file.headers["content-type"], content_type);
        assert_eq!(file.headers["content-disposition"], disposition);
        assert_eq!(file.headers["x-content-type-options"], "nosniff");
        assert_eq!(
            file.headers["content-length"],
            file.bytes.len().to_string().as_str()
        );
    } else {
        let url = reqwest::Url::parse(&file.location).unwrap();
        let query: Vec<(String, String)> = url.query_pairs().into_owned().collect();
        for pair in [
            ("response-content-type", content_type),
            ("response-content-disposition", disposition),
        ] {
            assert!(
                query.contains(&(pair.0.into(), pair.1.into())),
                "{pair:?} in {url}"
            );
        }
    }
}

/// Upload, send, the live event, download as a member, 403 as a stranger, a thumbnail, and
/// every refusal at use: reuse, someone else's upload, a size lie, a type lie.
async fn attachments_work(app: TestApp) {
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let carol = app.user("carol").await;
    let room = app.room(&alice, "files", &[&bob]).await;
    let mut watcher = app.watch(vec![app.keys.conversation_channel(room)]).await;

    let picture = png(400, 300);
    let (id, url) = upload_at(
        &app,
        &alice,
        "cat.png",
        "image/png",
        picture.len(),
        picture.clone(),
    )
    .await;
    let r = app
        .post(
            &alice,
            &format!("/chat/messages/room/{room}"),
            json!({"message_type": "image", "attachment_id": id, "content": "our cat"}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let sent: Value = r.json().await.unwrap();
    assert_eq!(sent["attachment"]["id"], id.as_str());
    assert_eq!(sent["attachment"]["filename"], "cat.png");
    assert_eq!(sent["attachment"]["content_type"], "image/png");
    assert_eq!(sent["attachment"]["size"], picture.len());
    assert_eq!(sent["content"], "our cat");
    let (_, event) = watcher.next().await;
    match event {
        Event::Message { message, .. } => {
            assert_eq!(
                message.attachment.map(|a| a.id.to_string()),
                Some(id.clone())
            )
        }
        other => panic!("expected the message, got {other:?}"),
    }

    // A member downloads the very bytes, shown inline as the declared type; a stranger may
    // not download them.
    let (status, served) = download_served(&app, &bob, &format!("/chat/attachments/{id}")).await;
    assert_eq!(status, StatusCode::FOUND);
    let served = served.unwrap();
    assert_eq!(served.bytes, picture);
    assert_served(
        &served,
        "image/png",
        "inline; filename=\"cat.png\"; filename*=UTF-8''cat.png",
    );
    let (status, _) = download(&app, &carol, &format!("/chat/attachments/{id}")).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // The upload URL lasts beyond the send, and S3 takes a second PUT to it: what a member gets
    // stays what was checked, not another picture of the same size and type written there now.
    let other: Vec<u8> = picture.iter().map(|b| b ^ 0x55).collect();
    let mut swapped = png(400, 300);
    swapped.truncate(64);
    swapped.extend_from_slice(&other[64..]);
    let r = reqwest::Client::new()
        .put(&url)
        .header("content-type", "image/png")
        .body(swapped)
        .send()
        .await
        .unwrap();
    // The local store refuses it; S3 stores it.
    assert!(
        r.status().is_success() || r.status() == StatusCode::CONFLICT,
        "{}",
        r.status()
    );
    let (status, bytes) = download(&app, &bob, &format!("/chat/attachments/{id}")).await;
    assert_eq!(status, StatusCode::FOUND);
    assert!(
        bytes.unwrap() == picture,
        "the download changed after the send"
    );
    let (status, thumb) =
        download_served(&app, &bob, &format!("/chat/attachments/{id}/thumbnail")).await;
    assert_eq!(status, StatusCode::FOUND);
    let thumb = thumb.unwrap();
    assert_served(
        &thumb,
        "image/png",
        "inline; filename=\"cat-thumbnail.png\"; filename*=UTF-8''cat-thumbnail.png",
    );
    let thumb = image::load_from_memory(&thumb.bytes).unwrap();
    assert_eq!((thumb.width(), thumb.height()), (320, 240));

    // A page of HTML declared as text: the upload URL takes it only as text (S3 signs the
    // type; moto does not check), and it is served as text, as a download, under its name.
    let page = b"notes <img src=x onerror=alert(document.cookie)>".to_vec();
    let r = app
        .post(
            &alice,
            "/chat/uploads",
            json!({"filename": "pag\u{e9} \"1\".txt", "content_type": "text/plain", "size": page.len()}),
        )
        .await;
    let ticket: Value = r.json().await.unwrap();
    let url = absolute(&app, ticket["url"].as_str().unwrap());
    let put = |content_type: &'static str, body: Vec<u8>| {
        reqwest::Client::new()
            .put(&url)
            .header("content-type", content_type)
            .body(body)
            .send()
    };
    if url.starts_with(&app.url("/")) {
        let refused = put("text/html", page.clone()).await.unwrap();
        assert_eq!(refused.status(), StatusCode::FORBIDDEN);
        let refused = put("text/plain", b"<script></script>".to_vec())
            .await
            .unwrap();
        assert_eq!(refused.status(), StatusCode::FORBIDDEN, "a shorter body");
    }
    assert!(put("text/plain", page.clone())
        .await
        .unwrap()
        .status()
        .is_success());
    let page_id = ticket["upload_id"].as_str().unwrap();
    let r = send_attachment(&app, &alice, room, "file", page_id).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let (_, served) = download_served(&app, &bob, &format!("/chat/attachments/{page_id}")).await;
    let served = served.unwrap();
    assert_eq!(served.bytes, page);
    assert_served(
        &served,
        "text/plain",
        "attachment; filename=\"pag_ _1_.txt\"; filename*=UTF-8''pag%C3%A9%20%221%22.txt",
    );
    // History carries the attachment, with the image's size once the thumbnail is made.
    let page: Value = app
        .get(&bob, &format!("/chat/messages/room/{room}"))
        .await
        .json()
        .await
        .unwrap();
    let a = &page["messages"][0]["attachment"];
    assert_eq!(a["id"], id.as_str());
    assert_eq!(
        (a["width"].as_i64(), a["height"].as_i64()),
        (Some(400), Some(300))
    );

    // Used once.
    let r = app
        .post(
            &alice,
            &format!("/chat/messages/room/{room}"),
            json!({"message_type": "image", "attachment_id": id, "client_id": "again"}),
        )
        .await;
    let body = assert_error(r, StatusCode::UNPROCESSABLE_ENTITY, "validation_error").await;
    assert!(body["fields"]["attachment_id"]
        .as_str()
        .unwrap()
        .contains("used"));

    // Someone else's upload.
    let doc = b"minutes of the meeting".to_vec();
    let theirs = upload(&app, &alice, "notes.txt", "text/plain", doc.len(), doc).await;
    let r = send_attachment(&app, &bob, room, "file", &theirs).await;
    let body = assert_error(r, StatusCode::UNPROCESSABLE_ENTITY, "validation_error").await;
    assert!(body["fields"]["attachment_id"]
        .as_str()
        .unwrap()
        .contains("yours"));

    // A size lie: the upload URL refuses it (an S3 URL signs the length; moto does not check
    // signatures and stores it), and a stored one is refused at use.
    let (lie, _, status) = try_upload(
        &app,
        &bob,
        "big.txt",
        "text/plain",
        5,
        b"far more than five".to_vec(),
    )
    .await;
    if status.is_success() {
        let r = send_attachment(&app, &bob, room, "file", &lie).await;
        let body = assert_error(r, StatusCode::UNPROCESSABLE_ENTITY, "validation_error").await;
        assert!(
            body["fields"]["attachment_id"]
                .as_str()
                .unwrap()
                .contains("bytes"),
            "{body}"
        );
    } else {
        assert_eq!(status, StatusCode::FORBIDDEN);
    }
    // A type lie.
    let text = b"not a picture at all".to_vec();
    let fake = upload(&app, &bob, "fake.png", "image/png", text.len(), text).await;
    let r = send_attachment(&app, &bob, room, "image", &fake).await;
    assert_error(r, StatusCode::UNPROCESSABLE_ENTITY, "validation_error").await;

    // Declared but never uploaded; a file message needs an attachment.
    let r = app
        .post(
            &bob,
            "/chat/uploads",
            json!({"filename": "x.pdf", "content_type": "application/pdf", "size": 10}),
        )
        .await;
    let never: Value = r.json().await.unwrap();
    let r = send_attachment(&app, &bob, room, "file", &never["upload_id"]).await;
    assert_error(r, StatusCode::UNPROCESSABLE_ENTITY, "validation_error").await;
    let r = app
        .post(
            &bob,
            &format!("/chat/messages/room/{room}"),
            json!({"message_type": "file", "content": "where is it"}),
        )
        .await;
    let body = assert_error(r, StatusCode::UNPROCESSABLE_ENTITY, "validation_error").await;
    assert!(body["fields"]["attachment_id"].is_string());
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn attachments_on_the_local_directory(db: PgPool) {
    attachments_work(spawn_app(db).await).await;
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn uploads_are_declared_within_the_limits(db: PgPool) {
    let app = spawn_app(db).await;
    let alice = app.user("alice").await;
    for (body, field) in [
        (
            json!({"filename": "a.exe", "content_type": "application/x-msdownload", "size": 10}),
            "content_type",
        ),
        (
            json!({"filename": "a.png", "content_type": "image/png", "size": 0}),
            "size",
        ),
        (
            json!({"filename": "a.png", "content_type": "image/png", "size": 26 * 1024 * 1024}),
            "size",
        ),
        (
            json!({"filename": "", "content_type": "image/png", "size": 10}),
            "filename",
        ),
    ] {
        let r = app.post(&alice, "/chat/uploads", body.clone()).await;
        let e = assert_error(r, StatusCode::UNPROCESSABLE_ENTITY, "validation_error").await;
        assert!(e["fields"][field].is_string(), "{body}: {e}");
    }
    // The local store's URLs are signed: a changed signature or key is refused.
    let r = app
        .post(
            &alice,
            "/chat/uploads",
            json!({"filename": "a.txt", "content_type": "text/plain", "size": 3}),
        )
        .await;
    let ticket: Value = r.json().await.unwrap();
    let url = ticket["url"].as_str().unwrap();
    let forged = url.replace("sig=", "sig=0");
    let r = reqwest::Client::new()
        .put(app.url(&forged))
        .body("abc")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let other = url.replace(
        ticket["upload_id"].as_str().unwrap(),
        &Uuid::now_v7().to_string(),
    );
    let r = reqwest::Client::new()
        .put(app.url(&other))
        .body("abc")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn the_store_keeps_only_what_is_served(db: PgPool) {
    // The app's store is a directory this test knows, so it can see the objects go.
    let dir = std::env::temp_dir().join(format!("cs-cleanup-{}", Uuid::new_v4()));
    let config = StorageConfig::Local {
        dir: dir.clone(),
        public_url: String::new(),
    };
    let prefix = format!("test:{}:", Uuid::new_v4());
    let store = config.clone();
    let app = spawn_app_with(db.clone(), &prefix, |c| c.storage = store).await;
    let alice = app.user("alice").await;
    let bytes = b"temporary".to_vec();
    let mut ids = Vec::new();
    for name in ["t.txt", "u.txt", "s.txt"] {
        ids.push(upload(&app, &alice, name, "text/plain", bytes.len(), bytes.clone()).await);
    }
    // An upload left to expire, one still fresh, and one a message uses.
    let [old, fresh, sent]: [String; 3] = ids.try_into().unwrap();
    let room = app.room(&alice, "notes", &[]).await;
    let r = send_attachment(&app, &alice, room, "file", &sent).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let message = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // A send refused by the check of its copy leaves no copy behind.
    let lie = upload(
        &app,
        &alice,
        "l.png",
        "image/png",
        bytes.len(),
        bytes.clone(),
    )
    .await;
    let r = send_attachment(&app, &alice, room, "file", &lie).await;
    assert_error(r, StatusCode::UNPROCESSABLE_ENTITY, "validation_error").await;
    let lie_copies = dir.join(format!("attachments/{lie}"));
    assert!(
        !lie_copies.exists() || std::fs::read_dir(&lie_copies).unwrap().count() == 0,
        "a refused send's copy is deleted"
    );
    sqlx::query("UPDATE uploads SET expires_at = now() - interval '1 minute' WHERE id = $1::uuid")
        .bind(&old)
        .execute(&db)
        .await
        .unwrap();
    assert!(dir.join(format!("uploads/{old}")).exists());
    let files = chat_service::attachments::Files {
        storage: shared::storage::Storage::new(&config, "k").unwrap(),
        limits: shared::storage::UploadLimits {
            upload_ttl: Duration::ZERO,
            ..Default::default()
        },
    };
    let removed = chat_service::attachments::clean_up(&db).await.unwrap();
    assert_eq!(removed, 1);
    assert!(
        dir.join(format!("uploads/{old}")).exists(),
        "queued for the removal sweep"
    );
    let removed = chat_service::attachments::remove_due(&db, &files)
        .await
        .unwrap();
    assert_eq!(removed, 1);
    assert!(
        !dir.join(format!("uploads/{old}")).exists(),
        "the object goes with its row"
    );
    assert!(
        dir.join(format!("uploads/{fresh}")).exists(),
        "an unexpired upload stays"
    );
    assert!(dir.join(format!("uploads/{sent}")).exists());
    let mut left: Vec<String> = sqlx::query_scalar("SELECT id::text FROM uploads")
        .fetch_all(&db)
        .await
        .unwrap();
    left.sort();
    let mut kept = vec![fresh.clone(), sent.clone(), lie.clone()];
    kept.sort();
    assert_eq!(left, kept);

    // A used upload's own object goes once its upload URL has expired (here at once): the
    // message serves the copy checked when it was sent.
    let removed = chat_service::attachments::remove_used(&db, &files)
        .await
        .unwrap();
    assert_eq!(removed, 1);
    assert!(!dir.join(format!("uploads/{sent}")).exists());
    assert!(dir.join(format!("uploads/{fresh}")).exists());
    let (status, got) = download(&app, &alice, &format!("/chat/attachments/{sent}")).await;
    assert_eq!(status, StatusCode::FOUND);
    assert_eq!(got.unwrap(), bytes);
    let copies = std::fs::read_dir(dir.join(format!("attachments/{sent}")))
        .unwrap()
        .count();
    assert_eq!(copies, 1, "one copy, the message's");
    assert_eq!(
        chat_service::attachments::remove_used(&db, &files)
            .await
            .unwrap(),
        0
    );

    // A deleted message's attachment goes from the store (nobody may download it any more).
    let r = app
        .delete(&alice, &format!("/chat/messages/{message}"))
        .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let copies = dir.join(format!("attachments/{sent}"));
    let mut gone = false;
    for _ in 0..100 {
        if std::fs::read_dir(&copies).unwrap().count() == 0 {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(gone, "the deleted message's file is still stored");
    let _ = std::fs::remove_dir_all(dir);
}

/// Sends with attachments that reach the send loop together are checked together, and each is
/// stored with its own file; a refused one among them holds up nobody else.
#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn attachment_sends_of_one_batch_each_keep_their_file(db: PgPool) {
    let app = spawn_app(db).await;
    let alice = app.user("alice").await;
    let room = app.room(&alice, "files", &[]).await;
    let mut commands = Vec::new();
    let mut sent = std::collections::BTreeMap::new();
    for i in 0..5 {
        let doc = format!("document number {i}").into_bytes();
        let name = format!("d{i}.txt");
        let id = upload(&app, &alice, &name, "text/plain", doc.len(), doc.clone()).await;
        let mut c = crate::bus::command(alice.id, ChatType::Room, room, &format!("f{i}"), "");
        c.message_type = MessageType::File;
        c.attachment_id = Some(id.parse().unwrap());
        commands.push(c);
        sent.insert(id, doc);
    }
    let text = b"not a picture".to_vec();
    let fake = upload(&app, &alice, "fake.png", "image/png", text.len(), text).await;
    let mut lie = crate::bus::command(alice.id, ChatType::Room, room, "lie", "");
    lie.message_type = MessageType::Image;
    lie.attachment_id = Some(fake.parse().unwrap());
    commands.insert(2, lie);
    commands.push(crate::bus::command(
        alice.id,
        ChatType::Room,
        room,
        "text",
        "hello",
    ));
    let mut watcher = app.watch(vec![app.keys.user_channel(alice.id)]).await;
    let redis = crate::bus::redis().await;
    crate::bus::push_at_once(&redis, &app, &commands).await;
    let outcomes = crate::bus::outcomes(&mut watcher, commands.len()).await;
    for i in 0..5 {
        assert_eq!(outcomes[&format!("f{i}")], "ack", "{outcomes:?}");
    }
    assert_eq!(outcomes["text"], "ack");
    assert_eq!(outcomes["lie"], "invalid_payload");
    let page: Value = app
        .get(&alice, &format!("/chat/messages/room/{room}"))
        .await
        .json()
        .await
        .unwrap();
    let mut downloaded = 0;
    for m in page["messages"].as_array().unwrap() {
        let Some(id) = m["attachment"]["id"].as_str() else {
            continue;
        };
        let (status, bytes) = download(&app, &alice, &format!("/chat/attachments/{id}")).await;
        assert_eq!(status, StatusCode::FOUND);
        assert_eq!(bytes.as_ref(), sent.get(id), "{id}");
        downloaded += 1;
    }
    assert_eq!(downloaded, 5);
}

/// Whether the boolean `query` is true within five seconds.
async fn holds_soon(db: &PgPool, query: &str) -> bool {
    for _ in 0..100 {
        if sqlx::query_scalar::<_, bool>(query)
            .fetch_one(db)
            .await
            .unwrap()
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// A thumbnail finished after its message was deleted is not kept: the deletion queued the
/// upload's objects before the thumbnail existed, so the thumbnail queues itself.
#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn a_thumbnail_made_after_its_message_was_deleted_is_removed(db: PgPool) {
    let dir = std::env::temp_dir().join(format!("cs-thumbnail-{}", Uuid::new_v4()));
    let config = StorageConfig::Local {
        dir: dir.clone(),
        public_url: String::new(),
    };
    let store = config.clone();
    let app = spawn_app_with(db.clone(), &format!("test:{}:", Uuid::new_v4()), |c| {
        c.storage = store
    })
    .await;
    let alice = app.user("alice").await;
    let room = app.room(&alice, "pictures", &[]).await;
    let picture = png(64, 48);
    let id = upload(
        &app,
        &alice,
        "p.png",
        "image/png",
        picture.len(),
        picture.clone(),
    )
    .await;
    let r = send_attachment(&app, &alice, room, "image", &id).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let message = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // The thumbnail made after the send is recorded before the message goes.
    assert!(
        holds_soon(
            &db,
            &format!("SELECT thumbnail_key IS NOT NULL FROM uploads WHERE id = '{id}'"),
        )
        .await
    );
    let r = app
        .delete(&alice, &format!("/chat/messages/{message}"))
        .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    // The deletion's own removal is done once the queue is empty.
    assert!(
        holds_soon(&db, "SELECT NOT EXISTS (SELECT 1 FROM object_removals)").await,
        "the deleted message's files were not removed"
    );
    // As if the thumbnail's task had read the picture before the deletion and recorded its
    // thumbnail after: the file is back for it to read, and no thumbnail is recorded.
    let upload: Uuid = id.parse().unwrap();
    let file: String = sqlx::query_scalar("SELECT file_key FROM uploads WHERE id = $1")
        .bind(upload)
        .fetch_one(&db)
        .await
        .unwrap();
    std::fs::create_dir_all(dir.join(&file).parent().unwrap()).unwrap();
    std::fs::write(dir.join(&file), &picture).unwrap();
    sqlx::query("UPDATE uploads SET thumbnail_key = NULL WHERE id = $1")
        .bind(upload)
        .execute(&db)
        .await
        .unwrap();
    let files = chat_service::attachments::Files {
        storage: shared::storage::Storage::new(&config, "k").unwrap(),
        limits: Default::default(),
    };
    let made = chat_service::attachments::thumbnail(&db, &files, upload)
        .await
        .unwrap();
    assert_eq!(made, None);
    let recorded: Option<String> =
        sqlx::query_scalar("SELECT thumbnail_key FROM uploads WHERE id = $1")
            .bind(upload)
            .fetch_one(&db)
            .await
            .unwrap();
    assert_eq!(recorded, None);
    let queued: Vec<String> = sqlx::query_scalar("SELECT key FROM object_removals")
        .fetch_all(&db)
        .await
        .unwrap();
    assert_eq!(queued, vec![format!("thumbnails/{id}")]);
    let _ = std::fs::remove_dir_all(dir);
}

/// A TCP forwarder to a store that can be cut: every connection through it closed and new ones
/// dropped, the store itself and what it holds untouched.
struct Cable {
    endpoint: String,
    up: tokio::sync::watch::Sender<bool>,
}

async fn cable(target: &str) -> Cable {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let target = target.trim_start_matches("http://").to_owned();
    let (up, state) = tokio::sync::watch::channel(true);
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            let mut state = state.clone();
            let target = target.clone();
            tokio::spawn(async move {
                if !*state.borrow() {
                    return;
                }
                let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await else {
                    return;
                };
                tokio::select! {
                    _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                    _ = state.wait_for(|up| !up) => {}
                }
            });
        }
    });
    Cable { endpoint, up }
}

/// What the store deletes outlasts the store being down, and a copy checked for a send that is
/// never stored (its process gone before the insert) is deleted too; a stored message's copy
/// stays.
#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn removals_outlast_a_store_outage_and_a_lost_send(db: PgPool) {
    let s3 = moto().await;
    let bucket = "chatsphere-removals";
    let r = reqwest::Client::new()
        .put(format!("{}/{bucket}", s3.endpoint))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let line = cable(&s3.endpoint).await;
    let endpoint = line.endpoint.clone();
    let app = spawn_app_with(db.clone(), &format!("test:{}:", Uuid::new_v4()), |c| {
        c.storage = s3_config(endpoint, bucket)
    })
    .await;
    let store =
        shared::storage::Storage::new(&s3_config(s3.endpoint.clone(), bucket), "k").unwrap();
    let alice = app.user("alice").await;
    let room = app.room(&alice, "files", &[]).await;
    let doc = b"minutes of the meeting".to_vec();
    let mut ids = Vec::new();
    for name in ["deleted.txt", "kept.txt", "lost.txt"] {
        ids.push(upload(&app, &alice, name, "text/plain", doc.len(), doc.clone()).await);
    }
    let [deleted, kept, lost]: [String; 3] = ids.try_into().unwrap();
    let mut messages = Vec::new();
    for id in [&deleted, &kept] {
        let r = send_attachment(&app, &alice, room, "file", id).await;
        assert_eq!(r.status(), StatusCode::CREATED);
        messages.push(
            r.json::<Value>().await.unwrap()["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    let keys = |id: &str| {
        let id: Uuid = id.parse().unwrap();
        let db = db.clone();
        async move {
            let (upload, copy): (String, Option<String>) =
                sqlx::query_as("SELECT object_key, file_key FROM uploads WHERE id = $1")
                    .bind(id)
                    .fetch_one(&db)
                    .await
                    .unwrap();
            (upload, copy.unwrap())
        }
    };
    let (deleted_upload, deleted_copy) = keys(&deleted).await;
    let (_, kept_copy) = keys(&kept).await;
    // A send checked (its copy made) whose message is never stored.
    let files = |endpoint: &str| chat_service::attachments::Files {
        storage: shared::storage::Storage::new(&s3_config(endpoint.to_owned(), bucket), "k")
            .unwrap(),
        limits: Default::default(),
    };
    let checked = chat_service::attachments::check_for_message(
        &db,
        &files(&line.endpoint),
        alice.id,
        lost.parse().unwrap(),
        MessageType::File,
        None,
    )
    .await
    .unwrap();
    let lost_copy = checked.file_key.unwrap();
    for key in [&deleted_upload, &deleted_copy, &kept_copy, &lost_copy] {
        assert!(store.size(key).await.is_ok(), "{key} is stored");
    }

    // The store goes down; the message with an attachment is deleted all the same.
    line.up.send(false).unwrap();
    let r = app
        .delete(&alice, &format!("/chat/messages/{}", messages[0]))
        .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let sweep = files(&line.endpoint);
    assert_eq!(
        chat_service::attachments::remove_due(&db, &sweep)
            .await
            .unwrap(),
        0
    );
    for key in [&deleted_upload, &deleted_copy] {
        assert!(store.size(key).await.is_ok(), "{key} outlived the outage");
    }
    let queued: Vec<(String, i32)> =
        sqlx::query_as("SELECT key, attempts FROM object_removals WHERE NOT unless_used")
            .fetch_all(&db)
            .await
            .unwrap();
    assert_eq!(queued.len(), 2, "{queued:?}");
    assert!(
        queued.iter().all(|(_, attempts)| *attempts >= 1),
        "{queued:?}"
    );

    // Back up, and later: the sweep deletes the deleted message's files and the lost send's
    // copy, and leaves the stored message's copy.
    line.up.send(true).unwrap();
    sqlx::query("UPDATE object_removals SET due_at = now()")
        .execute(&db)
        .await
        .unwrap();
    let removed = chat_service::attachments::remove_due(&db, &files(&line.endpoint))
        .await
        .unwrap();
    assert_eq!(removed, 3);
    for key in [&deleted_upload, &deleted_copy, &lost_copy] {
        assert!(
            matches!(
                store.size(key).await,
                Err(shared::storage::StorageError::NotFound)
            ),
            "{key} is still stored"
        );
    }
    assert!(store.size(&kept_copy).await.is_ok(), "the kept copy went");
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM object_removals")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(left, 0);
    let (status, got) = download(&app, &alice, &format!("/chat/attachments/{kept}")).await;
    assert_eq!(status, StatusCode::FOUND);
    assert_eq!(got.unwrap(), doc);
}

/// moto's S3 server on a free loopback port, killed when dropped.
struct Moto {
    child: std::process::Child,
    endpoint: String,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn moto() -> Moto {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = std::process::Command::new("moto_server")
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("moto_server (pip install 'moto[server]'; scripts/test installs it)");
    let endpoint = format!("http://127.0.0.1:{port}");
    for _ in 0..100 {
        if reqwest::get(&endpoint).await.is_ok() {
            return Moto { child, endpoint };
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("moto_server did not start");
}

/// An S3 store at `endpoint` (path-style, moto's test credentials).
fn s3_config(endpoint: String, bucket: &str) -> StorageConfig {
    StorageConfig::S3 {
        endpoint,
        public_endpoint: String::new(),
        bucket: bucket.into(),
        region: "eu-central-1".into(),
        access_key_id: "testing".into(),
        secret_access_key: "testing".into(),
        path_style: true,
    }
}

/// An app whose store is a bucket of moto's S3 server (running while the `Moto` lives).
async fn s3_app(db: PgPool) -> (Moto, TestApp) {
    let s3 = moto().await;
    // moto takes a bucket made with a plain PUT.
    let r = reqwest::Client::new()
        .put(format!("{}/chatsphere-test", s3.endpoint))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let prefix = format!("test:{}:", Uuid::new_v4());
    let endpoint = s3.endpoint.clone();
    let app = spawn_app_with(db, &prefix, |c| {
        c.storage = s3_config(endpoint, "chatsphere-test")
    })
    .await;
    (s3, app)
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn attachments_on_an_s3_api(db: PgPool) {
    let (_s3, app) = s3_app(db).await;
    attachments_work(app).await;
}

/// An object store that stops answering refuses only the sends that need it: a socket send
/// with an attachment is answered `unavailable` (its client retries), and the other sends of
/// its partition, before and after it, are stored at once rather than waiting for the store.
#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn a_store_outage_holds_up_only_the_sends_that_need_it(db: PgPool) {
    let (s3, app) = s3_app(db).await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let room = app.room(&alice, "files", &[&bob]).await;
    let doc = b"minutes of the meeting".to_vec();
    let id = upload(&app, &alice, "notes.txt", "text/plain", doc.len(), doc).await;
    drop(s3);

    let mut watcher = app
        .watch(vec![
            app.keys.user_channel(alice.id),
            app.keys.user_channel(bob.id),
        ])
        .await;
    let redis = crate::bus::redis().await;
    let mut file = crate::bus::command(alice.id, ChatType::Room, room, "file", "");
    file.message_type = MessageType::File;
    file.attachment_id = Some(id.parse().unwrap());
    let started = std::time::Instant::now();
    crate::bus::push(
        &redis,
        &app,
        &[
            crate::bus::command(bob.id, ChatType::Room, room, "before", "one"),
            file,
            crate::bus::command(bob.id, ChatType::Room, room, "after", "two"),
        ],
    )
    .await;
    let outcomes = crate::bus::outcomes(&mut watcher, 3).await;
    assert_eq!(outcomes["before"], "ack");
    assert_eq!(outcomes["after"], "ack");
    assert_eq!(outcomes["file"], "unavailable");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the store's outage held the partition up for {:?}",
        started.elapsed()
    );
}

/// A store that takes connections and never answers: a send with an attachment is answered 503
/// once the check's deadline is past, and the sends after it at once, without waiting again.
#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn a_silent_store_is_given_up_on(db: PgPool) {
    // Never accepted: the kernel completes connections, nothing ever answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", silent.local_addr().unwrap());
    let prefix = format!("test:{}:", Uuid::new_v4());
    let app = spawn_app_with(db, &prefix, |c| c.storage = s3_config(endpoint, "silent")).await;
    let alice = app.user("alice").await;
    let room = app.room(&alice, "files", &[]).await;
    let mut waits = Vec::new();
    for _ in 0..2 {
        // Declaring signs a URL: the store is not asked.
        let r = app
            .post(
                &alice,
                "/chat/uploads",
                json!({"filename": "a.txt", "content_type": "text/plain", "size": 3}),
            )
            .await;
        assert_eq!(r.status(), StatusCode::CREATED);
        let ticket: Value = r.json().await.unwrap();
        let started = std::time::Instant::now();
        let r = send_attachment(&app, &alice, room, "file", &ticket["upload_id"]).await;
        assert_error(r, StatusCode::SERVICE_UNAVAILABLE, "storage_unavailable").await;
        waits.push(started.elapsed());
    }
    assert!(waits[0] < Duration::from_secs(8), "{waits:?}");
    assert!(waits[1] < Duration::from_secs(1), "{waits:?}");
    // Sends without attachments are not held up.
    app.send(&alice, &format!("room/{room}"), "still here")
        .await;
}
