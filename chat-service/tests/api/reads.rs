use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::PgPool;

use crate::helpers::{assert_error, spawn_app, spawn_app_with};

fn find<'a>(list: &'a [Value], chat_type: &str, chat_id: &str) -> &'a Value {
    list.iter()
        .find(|c| c["chat_type"] == chat_type && c["chat_id"] == chat_id)
        .unwrap_or_else(|| panic!("{chat_type}/{chat_id} not in {list:?}"))
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn conversations_show_last_message_and_falling_unread_counts(db: PgPool) {
    let app = spawn_app(db).await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let room = app.room(&alice, "Lobby", &[&bob]).await;
    let group = app.group(&alice, "Pals", &[&bob]).await.to_string();

    // No private chat listed before its first message.
    let list: Vec<Value> = app
        .get(&bob, "/chat/conversations")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list.len(), 2);

    for i in 0..3 {
        app.send(&alice, &format!("room/{room}"), &format!("room {i}"))
            .await;
    }
    app.send(&alice, &format!("group/{group}"), "group 0").await;
    app.send(&alice, &format!("private/{}", bob.id), "dm 0")
        .await;
    app.send(&alice, &format!("private/{}", bob.id), "dm 1")
        .await;

    let list: Vec<Value> = app
        .get(&bob, "/chat/conversations")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list.len(), 3);
    // Most recent activity first: the private chat, then the group, then the room.
    assert_eq!(list[0]["chat_type"], "private");
    assert_eq!(list[1]["chat_type"], "group");
    assert_eq!(list[2]["chat_type"], "room");
    let dm = find(&list, "private", &alice.id.to_string());
    assert_eq!(dm["name"], "alice display");
    assert_eq!(dm["unread_count"], 2);
    assert_eq!(dm["last_message"]["content"], "dm 1");
    let lobby = find(&list, "room", &room.to_string());
    assert_eq!(lobby["name"], "Lobby");
    assert_eq!(lobby["unread_count"], 3);
    assert_eq!(lobby["last_read_seq"], 0);
    assert_eq!(find(&list, "group", &group)["name"], "Pals");

    // The sender's own messages count as read.
    let mine: Vec<Value> = app
        .get(&alice, "/chat/conversations")
        .await
        .json()
        .await
        .unwrap();
    assert!(mine.iter().all(|c| c["unread_count"] == 0), "{mine:?}");
    assert_eq!(
        find(&mine, "private", &bob.id.to_string())["name"],
        "bob display"
    );

    // Marking read lowers the count; positions never move backwards or past the end.
    let read_path = format!("/chat/read/room/{room}");
    let read = |seq: i64| app.post(&bob, &read_path, json!({"seq": seq}));
    assert_eq!(read(2).await.status(), StatusCode::NO_CONTENT);
    let list: Vec<Value> = app
        .get(&bob, "/chat/conversations")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(find(&list, "room", &room.to_string())["unread_count"], 1);
    assert_eq!(read(1).await.status(), StatusCode::NO_CONTENT);
    assert_eq!(read(99).await.status(), StatusCode::NO_CONTENT);
    let list: Vec<Value> = app
        .get(&bob, "/chat/conversations")
        .await
        .json()
        .await
        .unwrap();
    let lobby = find(&list, "room", &room.to_string());
    assert_eq!(lobby["unread_count"], 0);
    assert_eq!(lobby["last_read_seq"], 3);

    let r = app
        .post(
            &bob,
            &format!("/chat/read/private/{}", alice.id),
            json!({"seq": 2}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let list: Vec<Value> = app
        .get(&bob, "/chat/conversations")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        find(&list, "private", &alice.id.to_string())["unread_count"],
        0
    );

    let r = app
        .post(&bob, &format!("/chat/read/room/{room}"), json!({"seq": -1}))
        .await;
    assert_error(r, StatusCode::UNPROCESSABLE_ENTITY, "validation_error").await;
    let carol = app.user("carol").await;
    let r = app
        .post(
            &bob,
            &format!("/chat/read/private/{}", carol.id),
            json!({"seq": 1}),
        )
        .await;
    assert_error(r, StatusCode::NOT_FOUND, "not_found").await;
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn online_users_come_from_unexpired_presence(db: PgPool) {
    let app = spawn_app(db).await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let carol = app.user("carol").await;
    let redis = fred::prelude::Builder::from_config(
        fred::prelude::Config::from_url(&crate::helpers::redis_url()).unwrap(),
    )
    .build()
    .unwrap();
    fred::prelude::ClientLike::init(&redis).await.unwrap();
    shared::presence::refresh(&redis, &app.keys, &[alice.id, bob.id])
        .await
        .unwrap();
    // Carol's gateway died a minute ago: her entry has expired.
    use fred::prelude::SortedSetsInterface;
    let expired = (chrono::Utc::now().timestamp_millis() - 60_000) as f64;
    let _: () = redis
        .zadd(
            app.keys.online_users(carol.id),
            None,
            None,
            false,
            false,
            (expired, carol.id.to_string()),
        )
        .await
        .unwrap();

    let online: Vec<Value> = app
        .get(&alice, "/chat/online-users")
        .await
        .json()
        .await
        .unwrap();
    let names: Vec<&str> = online
        .iter()
        .map(|u| u["username"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["alice", "bob"]);
    assert!(online[0]["display_name"].is_string() && online[0].get("email").is_none());

    // `?ids=` asks about some users: only those of them online, whatever the order asked.
    let path = format!(
        "/chat/online-users?ids={},{},{},{}",
        carol.id,
        bob.id,
        uuid::Uuid::new_v4(),
        bob.id
    );
    let online: Vec<Value> = app.get(&alice, &path).await.json().await.unwrap();
    assert_eq!(online.len(), 1, "{online:?}");
    assert_eq!(online[0]["id"], bob.id.to_string());
    let many = (0..101)
        .map(|_| uuid::Uuid::new_v4().to_string())
        .collect::<Vec<_>>()
        .join(",");
    for bad in ["", "nope", &format!("{},x", bob.id), &many] {
        let r = app
            .get(&alice, &format!("/chat/online-users?ids={bad}"))
            .await;
        assert_error(r, StatusCode::UNPROCESSABLE_ENTITY, "validation_error").await;
    }

    shared::presence::remove(&redis, &app.keys, bob.id)
        .await
        .unwrap();
    let online: Vec<Value> = app
        .get(&alice, "/chat/online-users")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(online.len(), 1);
    let online: Vec<Value> = app.get(&alice, &path).await.json().await.unwrap();
    assert_eq!(online.len(), 0);
}

/// The whole online list is read at most `ONLINE_USERS_RATE_PER_SECOND` times a second per
/// user (429 `rate_limited` with `Retry-After` past the burst); `?ids=` is not counted, and
/// another user has a bucket of their own.
#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn the_whole_online_list_is_rated_per_user(db: PgPool) {
    let app = spawn_app_with(db, &format!("test:{}:", uuid::Uuid::new_v4()), |c| {
        c.online_list_rate = shared::limits::Rate {
            per_second: 1,
            burst: 2,
        }
    })
    .await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    for _ in 0..2 {
        let r = app.get(&alice, "/chat/online-users").await;
        assert_eq!(r.status(), StatusCode::OK);
    }
    let r = app.get(&alice, "/chat/online-users").await;
    assert!(r.headers().contains_key("retry-after"));
    assert_error(r, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
    let r = app
        .get(&alice, &format!("/chat/online-users?ids={}", bob.id))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let r = app.get(&bob, "/chat/online-users").await;
    assert_eq!(r.status(), StatusCode::OK);
}

/// `GET /chat/conversations?limit=N&before=CURSOR` pages the list in its order, most recent
/// first: following each page's last `cursor` visits every conversation once, ties in time
/// included (a page may end inside a tie); a bad `limit` or cursor is 422.
#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn conversations_page_by_cursor(db: PgPool) {
    let app = spawn_app(db).await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    for name in ["one", "two", "three", "four"] {
        app.room(&bob, name, &[&alice]).await;
    }
    let r = app
        .post(
            &bob,
            "/chat/groups",
            json!({"name": "g", "member_ids": [alice.id]}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    app.send(&bob, &format!("private/{}", alice.id), "hi").await;
    // Four conversations without a message joined at one instant: a tie in time.
    sqlx::query(
        "UPDATE conversation_members m SET joined_at = '2026-01-01T00:00:00Z'
         FROM conversations c
         WHERE c.id = m.conversation_id AND m.user_id = $1 AND c.chat_type = 'ROOM'",
    )
    .bind(alice.id)
    .execute(&app.db)
    .await
    .unwrap();
    let key = |c: &Value| (c["chat_type"].to_string(), c["chat_id"].to_string());
    let all: Vec<Value> = app
        .get(&alice, "/chat/conversations")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(all.len(), 6);
    let mut paged: Vec<Value> = Vec::new();
    let mut path = "/chat/conversations?limit=2".to_owned();
    loop {
        let page: Vec<Value> = app.get(&alice, &path).await.json().await.unwrap();
        assert!(page.len() <= 2);
        let Some(last) = page.last() else { break };
        path = format!(
            "/chat/conversations?limit=2&before={}",
            last["cursor"].as_str().unwrap()
        );
        paged.extend(page);
    }
    assert_eq!(
        paged.iter().map(key).collect::<Vec<_>>(),
        all.iter().map(key).collect::<Vec<_>>()
    );
    assert_eq!(all[0]["chat_type"], "private", "the latest activity first");
    for bad in [
        "limit=0",
        "limit=501",
        "before=nope",
        "before=1.zz",
        "before=99999999999999999999.0",
    ] {
        let r = app.get(&alice, &format!("/chat/conversations?{bad}")).await;
        assert_error(r, StatusCode::UNPROCESSABLE_ENTITY, "validation_error").await;
    }
}

/// `GET /chat/conversations/{chat_type}/{chat_id}` (an extension) answers one entry of the
/// list exactly as the list has it, for each kind of conversation and from either side of a
/// private chat; 403 outside a room or group, 404 for a private chat not started, 422 for a bad
/// path. It is not rated like the whole list.
#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn one_conversation_reads_as_the_list_has_it(db: PgPool) {
    let app = spawn_app(db).await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let erin = app.user("erin").await;
    let room = app.room(&alice, "Lobby", &[&bob]).await;
    let group = app.group(&alice, "Pals", &[&bob]).await.to_string();
    app.send(&alice, &format!("room/{room}"), "hello @bob")
        .await;
    app.send(&alice, &format!("private/{}", bob.id), "psst")
        .await;
    let r = app
        .put_json(
            &bob,
            &format!("/chat/conversations/group/{group}/notifications"),
            json!({"muted": true}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);

    let list: Vec<Value> = app
        .get(&bob, "/chat/conversations")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list.len(), 3);
    for entry in &list {
        let path = format!(
            "/chat/conversations/{}/{}",
            entry["chat_type"].as_str().unwrap(),
            entry["chat_id"].as_str().unwrap()
        );
        let r = app.get(&bob, &path).await;
        assert_eq!(r.status(), StatusCode::OK, "{path}");
        assert_eq!(&r.json::<Value>().await.unwrap(), entry, "{path}");
    }
    let private = find(&list, "private", &alice.id.to_string());
    assert_eq!(private["unread_count"], 1);
    assert_eq!(find(&list, "room", &room.to_string())["mention_count"], 1);
    assert_eq!(find(&list, "group", &group)["notifications_muted"], true);
    // Alice's side of the private chat is named by Bob's id, and read.
    let r = app
        .get(&alice, &format!("/chat/conversations/private/{}", bob.id))
        .await;
    let mine = r.json::<Value>().await.unwrap();
    assert_eq!(mine["chat_id"], bob.id.to_string());
    assert_eq!(mine["unread_count"], 0);
    assert_eq!(mine["last_message"]["id"], private["last_message"]["id"]);

    for (path, status, code) in [
        (
            format!("/chat/conversations/room/{room}"),
            StatusCode::FORBIDDEN,
            "forbidden",
        ),
        (
            format!("/chat/conversations/group/{group}"),
            StatusCode::FORBIDDEN,
            "forbidden",
        ),
        (
            format!("/chat/conversations/private/{}", bob.id),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            format!("/chat/conversations/private/{}", uuid::Uuid::new_v4()),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            format!("/chat/conversations/channel/{room}"),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_error",
        ),
        (
            "/chat/conversations/room/nope".to_owned(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_error",
        ),
    ] {
        assert_error(app.get(&erin, &path).await, status, code).await;
    }
    // Many single reads in a row are answered (the whole list is rated at bursts of 20).
    for _ in 0..30 {
        let r = app
            .get(&bob, &format!("/chat/conversations/room/{room}"))
            .await;
        assert_eq!(r.status(), StatusCode::OK);
    }
}

/// A member archives a conversation (an extension): the list shows it `archived` until a
/// message after its latest arrives, whoever sends it, or until unarchived; leaving drops it;
/// only members may.
#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn archived_conversations_come_back_with_news(db: PgPool) {
    let app = spawn_app(db).await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let erin = app.user("erin").await;
    let room = app.room(&alice, "r", &[&bob]).await;
    app.send(&alice, &format!("private/{}", bob.id), "hi").await;
    let archived = |list: &Value, chat_id: String| -> bool {
        let c = list
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["chat_id"] == chat_id.as_str())
            .unwrap_or_else(|| panic!("{chat_id} listed: {list}"));
        c["archived"].as_bool().unwrap()
    };
    let bobs = || async {
        app.get(&bob, "/chat/conversations")
            .await
            .json::<Value>()
            .await
            .unwrap()
    };
    let private = format!("/chat/conversations/private/{}/archive", alice.id);
    let in_room = format!("/chat/conversations/room/{room}/archive");

    assert_eq!(
        app.put(&bob, &private).await.status(),
        StatusCode::NO_CONTENT
    );
    let list = bobs().await;
    assert!(archived(&list, alice.id.to_string()));
    assert!(!archived(&list, room.to_string()));
    // News brings it back.
    app.send(&alice, &format!("private/{}", bob.id), "still there?")
        .await;
    assert!(!archived(&bobs().await, alice.id.to_string()));

    // Unarchived by hand, and by the member's own message.
    assert_eq!(
        app.put(&bob, &in_room).await.status(),
        StatusCode::NO_CONTENT
    );
    assert!(archived(&bobs().await, room.to_string()));
    assert_eq!(
        app.delete(&bob, &in_room).await.status(),
        StatusCode::NO_CONTENT
    );
    assert!(!archived(&bobs().await, room.to_string()));
    assert_eq!(
        app.put(&bob, &in_room).await.status(),
        StatusCode::NO_CONTENT
    );
    app.send(&bob, &format!("room/{room}"), "back").await;
    assert!(!archived(&bobs().await, room.to_string()));

    // Leaving drops it: archived, left and joined again with no message since, it is not.
    assert_eq!(
        app.put(&bob, &in_room).await.status(),
        StatusCode::NO_CONTENT
    );
    let r = app
        .post(&bob, &format!("/chat/rooms/{room}/leave"), Value::Null)
        .await;
    assert!(r.status().is_success(), "{}", r.status());
    let r = app
        .post(&bob, &format!("/chat/rooms/{room}/join"), Value::Null)
        .await;
    assert!(r.status().is_success(), "{}", r.status());
    assert!(!archived(&bobs().await, room.to_string()));

    // Only members; a private chat not started is not there to archive.
    assert_error(
        app.put(&erin, &in_room).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
    let r = app
        .put(
            &erin,
            &format!("/chat/conversations/private/{}/archive", bob.id),
        )
        .await;
    assert_error(r, StatusCode::NOT_FOUND, "not_found").await;
}
