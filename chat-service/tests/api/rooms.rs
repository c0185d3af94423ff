use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::PgPool;

use crate::helpers::{assert_error, spawn_app, spawn_app_with};

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn create_list_join_leave_and_members(db: PgPool) {
    let app = spawn_app(db).await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;

    let r = app
        .post(
            &alice,
            "/chat/rooms",
            json!({"name": "General", "description": "Talk"}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let room: Value = r.json().await.unwrap();
    assert_eq!(room["name"], "General");
    assert_eq!(room["description"], "Talk");
    assert_eq!(room["created_by"], alice.id.to_string());
    assert_eq!(room["member_count"], 1);
    assert_eq!(room["is_member"], true);
    let id = room["id"].as_str().unwrap();

    let r = app
        .post(&bob, "/chat/rooms", json!({"name": "general"}))
        .await;
    let body = assert_error(r, StatusCode::CONFLICT, "room_name_taken").await;
    assert!(body["fields"]["name"].is_string());

    let rooms: Vec<Value> = app.get(&bob, "/chat/rooms").await.json().await.unwrap();
    assert_eq!(rooms.len(), 1);
    assert_eq!(rooms[0]["is_member"], false);

    for _ in 0..2 {
        let r = app
            .post(&bob, &format!("/chat/rooms/{id}/join"), Value::Null)
            .await;
        assert_eq!(r.status(), StatusCode::OK);
        let room: Value = r.json().await.unwrap();
        assert_eq!(room["member_count"], 2, "joining twice counts once");
        assert_eq!(room["is_member"], true);
    }
    // The list counts and places each caller the same way, another room beside it.
    app.post(&alice, "/chat/rooms", json!({"name": "quiet"}))
        .await;
    let rooms: Vec<Value> = app.get(&bob, "/chat/rooms").await.json().await.unwrap();
    let seen: Vec<(&str, i64, bool, &Value)> = rooms
        .iter()
        .map(|r| {
            (
                r["name"].as_str().unwrap(),
                r["member_count"].as_i64().unwrap(),
                r["is_member"].as_bool().unwrap(),
                &r["my_role"],
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("General", 2, true, &json!("member")),
            ("quiet", 1, false, &Value::Null)
        ]
    );
    let members: Vec<Value> = app
        .get(&bob, &format!("/chat/rooms/{id}/members"))
        .await
        .json()
        .await
        .unwrap();
    let names: Vec<&str> = members
        .iter()
        .map(|m| m["username"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["alice", "bob"]);
    assert!(members
        .iter()
        .all(|m| m.get("email").is_none() && m.get("password_hash").is_none()));

    let r = app
        .post(&bob, &format!("/chat/rooms/{id}/leave"), Value::Null)
        .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let rooms: Vec<Value> = app.get(&bob, "/chat/rooms").await.json().await.unwrap();
    assert_eq!(rooms[0]["member_count"], 1);
    assert_eq!(rooms[0]["is_member"], false);
    let rooms: Vec<Value> = app.get(&alice, "/chat/rooms").await.json().await.unwrap();
    assert_eq!(rooms[0]["my_role"], "owner");
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn bad_room_requests(db: PgPool) {
    let app = spawn_app(db).await;
    let alice = app.user("alice").await;
    let unknown = uuid::Uuid::new_v4();
    assert_error(
        app.post(&alice, &format!("/chat/rooms/{unknown}/join"), Value::Null)
            .await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    assert_error(
        app.get(&alice, &format!("/chat/rooms/{unknown}/members"))
            .await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    let body = assert_error(
        app.post(&alice, "/chat/rooms/not-a-uuid/join", Value::Null)
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_error",
    )
    .await;
    assert!(body["fields"].as_object().unwrap().len() == 1, "{body}");
    let body = assert_error(
        app.post(&alice, "/chat/rooms", json!({"name": "  "})).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_error",
    )
    .await;
    assert!(body["fields"]["name"].is_string());
    let r = app
        .post(
            &alice,
            "/chat/rooms",
            json!({"name": "x".repeat(65), "description": "d".repeat(501)}),
        )
        .await;
    let body = assert_error(r, StatusCode::UNPROCESSABLE_ENTITY, "validation_error").await;
    assert!(body["fields"]["name"].is_string() && body["fields"]["description"].is_string());
    let r = app.http.get(app.url("/chat/rooms")).send().await.unwrap();
    assert_error(r, StatusCode::UNAUTHORIZED, "not_authenticated").await;
}

/// `GET /chat/rooms` pages by name (`limit`, `after`) and filters by a name prefix (`q`),
/// whatever the case; without them it lists every room.
#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn rooms_are_paged_and_found_by_name(db: PgPool) {
    let app = spawn_app(db).await;
    let alice = app.user("alice").await;
    for name in ["gamma", "Beta", "alpha", "beta-2"] {
        app.room(&alice, name, &[]).await;
    }
    let names = |path: String| {
        let app = &app;
        let alice = &alice;
        async move {
            let r = app.get(alice, &path).await;
            assert_eq!(r.status(), StatusCode::OK, "{path}");
            let rooms: Vec<Value> = r.json().await.unwrap();
            rooms
                .iter()
                .map(|r| r["name"].as_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        names("/chat/rooms".into()).await,
        ["alpha", "Beta", "beta-2", "gamma"]
    );
    assert_eq!(names("/chat/rooms?limit=2".into()).await, ["alpha", "Beta"]);
    assert_eq!(
        names("/chat/rooms?limit=2&after=Beta".into()).await,
        ["beta-2", "gamma"]
    );
    assert!(names("/chat/rooms?limit=2&after=gamma".into())
        .await
        .is_empty());
    assert_eq!(names("/chat/rooms?q=BE".into()).await, ["Beta", "beta-2"]);
    assert_eq!(
        names("/chat/rooms?q=be&after=beta".into()).await,
        ["beta-2"]
    );
    assert!(names("/chat/rooms?q=%25".into()).await.is_empty());
    for (query, field) in [
        ("limit=0", "limit"),
        ("limit=501", "limit"),
        ("limit=x", "limit"),
        ("q=", "q"),
        ("after=", "after"),
        ("q=a%01", "q"),
    ] {
        let body = assert_error(
            app.get(&alice, &format!("/chat/rooms?{query}")).await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_error",
        )
        .await;
        assert!(body["fields"][field].is_string(), "{query}: {body}");
    }
}

/// Each room's member count follows joins, leaves and bans, and nothing else.
#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn member_counts_follow_joins_leaves_and_bans(db: PgPool) {
    let app = spawn_app(db).await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let carol = app.user("carol").await;
    let room = app.room(&alice, "r", &[&bob, &carol]).await;
    let other = app.room(&bob, "other", &[]).await;
    let count = |id: uuid::Uuid| {
        let app = &app;
        let alice = &alice;
        async move {
            let rooms: Vec<Value> = app.get(alice, "/chat/rooms").await.json().await.unwrap();
            rooms
                .iter()
                .find(|r| r["id"] == id.to_string())
                .map(|r| r["member_count"].as_i64().unwrap())
        }
    };
    assert_eq!(count(room).await, Some(3));
    assert_eq!(count(other).await, Some(1));
    let r = app
        .post(
            &alice,
            &format!("/chat/rooms/{room}/bans"),
            json!({"user_id": carol.id}),
        )
        .await;
    assert!(r.status().is_success(), "{}", r.status());
    let r = app
        .post(&bob, &format!("/chat/rooms/{room}/leave"), json!({}))
        .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    // A group's members and a private chat's two are not a room's.
    let r = app
        .post(
            &alice,
            "/chat/groups",
            json!({"name": "g", "member_ids": [bob.id, carol.id]}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    app.send(&alice, &format!("private/{}", bob.id), "hi").await;
    assert_eq!(count(room).await, Some(1));
    assert_eq!(count(other).await, Some(1));
    let r = app
        .get(&alice, &format!("/chat/rooms/{room}/members"))
        .await;
    let members: Vec<Value> = r.json().await.unwrap();
    assert_eq!(members.len(), 1);
}

/// A room's members page by username (`limit`, `after`), whatever its case; without them,
/// every member.
#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn room_members_are_paged_by_username(db: PgPool) {
    let app = spawn_app(db).await;
    let alice = app.user("alice").await;
    let bob = app.user("Bob").await;
    let carol = app.user("carol").await;
    let dave = app.user("dave").await;
    let room = app.room(&dave, "r", &[&carol, &bob, &alice]).await;
    let names = |query: &'static str| {
        let app = &app;
        let alice = &alice;
        async move {
            let r = app
                .get(alice, &format!("/chat/rooms/{room}/members{query}"))
                .await;
            assert_eq!(r.status(), StatusCode::OK, "{query}");
            let members: Vec<Value> = r.json().await.unwrap();
            members
                .iter()
                .map(|m| m["username"].as_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(names("").await, ["alice", "Bob", "carol", "dave"]);
    assert_eq!(names("?limit=2").await, ["alice", "Bob"]);
    assert_eq!(names("?limit=2&after=bob").await, ["carol", "dave"]);
    assert!(names("?after=dave").await.is_empty());
    for (query, field) in [
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("after=", "after"),
        ("after=%07", "after"),
    ] {
        let body = assert_error(
            app.get(&alice, &format!("/chat/rooms/{room}/members?{query}"))
                .await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_error",
        )
        .await;
        assert!(body["fields"][field].is_string(), "{query}: {body}");
    }
}

/// A user belongs to at most `MAX_ROOMS_PER_USER` rooms: joining or creating past it is 409
/// `too_many_rooms`; joining a room again is harmless, and leaving one makes room.
#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn a_user_belongs_to_at_most_max_rooms(db: PgPool) {
    let app = spawn_app_with(db, &format!("test:{}:", uuid::Uuid::new_v4()), |c| {
        c.max_rooms_per_user = 2
    })
    .await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let first = app.room(&alice, "first", &[]).await;
    let second = app.room(&bob, "second", &[&alice]).await;
    let third = app.room(&bob, "third", &[]).await;
    let join = |room: uuid::Uuid| format!("/chat/rooms/{room}/join");
    let r = app.post(&alice, &join(third), Value::Null).await;
    assert_error(r, StatusCode::CONFLICT, "too_many_rooms").await;
    let r = app
        .post(&alice, "/chat/rooms", json!({"name": "fourth"}))
        .await;
    assert_error(r, StatusCode::CONFLICT, "too_many_rooms").await;
    let r = app.post(&alice, &join(first), Value::Null).await;
    assert_eq!(r.status(), StatusCode::OK, "already a member");
    let r = app
        .post(&alice, &format!("/chat/rooms/{second}/leave"), Value::Null)
        .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = app.post(&alice, &join(third), Value::Null).await;
    assert_eq!(r.status(), StatusCode::OK);
}

/// `GET /chat/rooms/{id}`: one room as the list shows it to the caller, for anyone signed in.
#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn one_room_is_read_as_the_list_shows_it(db: PgPool) {
    let app = spawn_app(db).await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let room = app.room(&alice, "Lobby", &[]).await;
    for (who, is_member) in [(&alice, true), (&bob, false)] {
        let r = app.get(who, &format!("/chat/rooms/{room}")).await;
        assert_eq!(r.status(), StatusCode::OK);
        let one: Value = r.json().await.unwrap();
        let list: Vec<Value> = app.get(who, "/chat/rooms").await.json().await.unwrap();
        assert_eq!(one, list[0]);
        assert_eq!(one["is_member"], is_member);
    }
    let r = app
        .get(&alice, &format!("/chat/rooms/{}", uuid::Uuid::new_v4()))
        .await;
    assert_error(r, StatusCode::NOT_FOUND, "not_found").await;
}

/// Whole reads of the lists others make long — every public room, a room's every member,
/// every group with its members, every conversation — share one bucket per user (`LIST_RATE_PER_SECOND`; 429
/// `rate_limited` with `Retry-After` past it). Pages (`limit`) are not counted, and another
/// user has a bucket of their own.
#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn whole_long_lists_are_rated_per_user(db: PgPool) {
    let app = spawn_app_with(db, &format!("test:{}:", uuid::Uuid::new_v4()), |c| {
        c.list_rate = shared::limits::Rate {
            per_second: 1,
            burst: 4,
        }
    })
    .await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let room = app.room(&alice, "lobby", &[&bob]).await;
    let members = format!("/chat/rooms/{room}/members");
    let whole = [
        "/chat/rooms",
        members.as_str(),
        "/chat/groups",
        "/chat/conversations",
    ];
    for path in whole {
        let r = app.get(&alice, path).await;
        assert_eq!(r.status(), StatusCode::OK, "{path}");
    }
    for path in whole {
        let r = app.get(&alice, path).await;
        assert!(r.headers().contains_key("retry-after"), "{path}");
        assert_error(r, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
    }
    for path in [
        "/chat/rooms?limit=10".to_owned(),
        format!("{members}?limit=10"),
        "/chat/groups?limit=10".to_owned(),
        "/chat/conversations?limit=10".to_owned(),
    ] {
        let r = app.get(&alice, &path).await;
        assert_eq!(r.status(), StatusCode::OK, "{path}");
    }
    let r = app.get(&bob, "/chat/rooms").await;
    assert_eq!(r.status(), StatusCode::OK);
    // The bucket fills again.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let r = app.get(&alice, "/chat/rooms").await;
    assert_eq!(r.status(), StatusCode::OK);
}

/// The owner renames a room and sets or clears its description (an extension); others may
/// not, and a name another room has is 409.
#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn the_owner_changes_a_rooms_name_and_description(db: PgPool) {
    let app = spawn_app(db).await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let room = app.room(&alice, "lobby", &[&bob]).await;
    app.room(&bob, "Hall", &[]).await;
    let path = format!("/chat/rooms/{room}");
    let r = app
        .patch(
            &alice,
            &path,
            json!({"name": "  kitchen ", "description": "food talk"}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["name"], "kitchen");
    assert_eq!(body["description"], "food talk");
    // An absent field stays; an empty description is cleared.
    let r = app.patch(&alice, &path, json!({"description": ""})).await;
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["name"], "kitchen");
    assert!(body["description"].is_null(), "{body}");

    let r = app.patch(&bob, &path, json!({"name": "mine"})).await;
    assert_error(r, StatusCode::FORBIDDEN, "forbidden").await;
    let r = app.patch(&alice, &path, json!({"name": "hall"})).await;
    assert_error(r, StatusCode::CONFLICT, "room_name_taken").await;
    for bad in [json!({"name": ""}), json!({"description": "x".repeat(501)})] {
        let r = app.patch(&alice, &path, bad).await;
        assert_error(r, StatusCode::UNPROCESSABLE_ENTITY, "validation_error").await;
    }
    let r = app
        .patch(
            &alice,
            &format!("/chat/rooms/{}", uuid::Uuid::new_v4()),
            json!({"name": "x"}),
        )
        .await;
    assert_error(r, StatusCode::NOT_FOUND, "not_found").await;
    let listed: Value = app.get(&bob, &path).await.json().await.unwrap();
    assert_eq!(listed["name"], "kitchen");
    // Asking for what is already so changes nothing and records nothing.
    let r = app.patch(&alice, &path, json!({"name": "kitchen"})).await;
    assert_eq!(r.status(), StatusCode::OK);
    // Each change is in the room's audit log, newest first.
    let audit: Value = app
        .get(&alice, &format!("{path}/audit"))
        .await
        .json()
        .await
        .unwrap();
    let entries: Vec<(&str, &str)> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap(),
                e["reason"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        entries,
        [
            ("updated", "description cleared"),
            ("updated", "name “lobby” → “kitchen”; description set"),
        ]
    );
}
