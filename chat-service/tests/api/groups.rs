use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;

use crate::helpers::{assert_error, spawn_app, spawn_app_with};

fn member_names(group: &Value) -> Vec<String> {
    group["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["username"].as_str().unwrap().to_owned())
        .collect()
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn groups_have_an_owner_and_members(db: PgPool) {
    let app = spawn_app(db).await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let carol = app.user("carol").await;
    let dave = app.user("dave").await;

    let r = app
        .post(
            &alice,
            "/chat/groups",
            json!({"name": "Trip", "member_ids": [bob.id, bob.id]}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let group: Value = r.json().await.unwrap();
    assert_eq!(group["owner_id"], alice.id.to_string());
    assert_eq!(member_names(&group), ["alice", "bob"]);
    let id = group["id"].as_str().unwrap().to_owned();

    let mine: Vec<Value> = app.get(&bob, "/chat/groups").await.json().await.unwrap();
    assert_eq!(mine.len(), 1);
    let theirs: Vec<Value> = app.get(&carol, "/chat/groups").await.json().await.unwrap();
    assert!(theirs.is_empty());

    // Only the owner adds members.
    let r = app
        .post(
            &bob,
            &format!("/chat/groups/{id}/members"),
            json!({"user_ids": [carol.id]}),
        )
        .await;
    assert_error(r, StatusCode::FORBIDDEN, "forbidden").await;
    let r = app
        .post(
            &alice,
            &format!("/chat/groups/{id}/members"),
            json!({"user_ids": [carol.id, dave.id]}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        member_names(&r.json().await.unwrap()),
        ["alice", "bob", "carol", "dave"]
    );

    // A member may not remove another; it may remove itself; the owner removes anyone.
    let r = app
        .delete(&bob, &format!("/chat/groups/{id}/members/{}", carol.id))
        .await;
    assert_error(r, StatusCode::FORBIDDEN, "forbidden").await;
    let r = app
        .delete(&bob, &format!("/chat/groups/{id}/members/{}", bob.id))
        .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = app
        .delete(&alice, &format!("/chat/groups/{id}/members/{}", carol.id))
        .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = app
        .delete(&alice, &format!("/chat/groups/{id}/members/{}", carol.id))
        .await;
    assert_error(r, StatusCode::NOT_FOUND, "not_found").await;

    // The owner leaving hands the group to the longest-standing member.
    let r = app
        .delete(&alice, &format!("/chat/groups/{id}/members/{}", alice.id))
        .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let groups: Vec<Value> = app.get(&dave, "/chat/groups").await.json().await.unwrap();
    assert_eq!(groups[0]["owner_id"], dave.id.to_string());
    assert_eq!(member_names(&groups[0]), ["dave"]);
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn bad_group_requests(db: PgPool) {
    let app = spawn_app(db).await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let ghost = Uuid::new_v4();

    let r = app
        .post(
            &alice,
            "/chat/groups",
            json!({"name": "G", "member_ids": [ghost]}),
        )
        .await;
    let body = assert_error(r, StatusCode::UNPROCESSABLE_ENTITY, "validation_error").await;
    assert!(body["fields"]["member_ids"]
        .as_str()
        .unwrap()
        .contains(&ghost.to_string()));
    let r = app
        .post(
            &alice,
            "/chat/groups",
            json!({"name": "", "member_ids": []}),
        )
        .await;
    assert_error(r, StatusCode::UNPROCESSABLE_ENTITY, "validation_error").await;
    let r = app
        .post(
            &alice,
            "/chat/groups",
            json!({"name": "G", "member_ids": ["nope"]}),
        )
        .await;
    assert_error(r, StatusCode::UNPROCESSABLE_ENTITY, "validation_error").await;
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM groups")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(count, 0, "nothing is half-created");

    let r = app
        .post(
            &alice,
            &format!("/chat/groups/{ghost}/members"),
            json!({"user_ids": [bob.id]}),
        )
        .await;
    assert_error(r, StatusCode::NOT_FOUND, "not_found").await;
    let r = app.post(&alice, "/chat/groups", json!({"name": "G"})).await;
    let id = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = app
        .post(
            &alice,
            &format!("/chat/groups/{id}/members"),
            json!({"user_ids": [ghost]}),
        )
        .await;
    assert_error(r, StatusCode::UNPROCESSABLE_ENTITY, "validation_error").await;
    let r = app
        .post(
            &alice,
            &format!("/chat/groups/{id}/members"),
            json!({"user_ids": []}),
        )
        .await;
    assert_error(r, StatusCode::UNPROCESSABLE_ENTITY, "validation_error").await;
    let r = app
        .delete(&bob, &format!("/chat/groups/{id}/members/{}", alice.id))
        .await;
    assert_error(r, StatusCode::FORBIDDEN, "forbidden").await;
}

/// A group holds at most `MAX_GROUP_MEMBERS`, its owner included: creating or adding past it
/// is a 422 naming the field, and adds nobody; members already in count once.
#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn a_group_holds_at_most_its_bound(db: PgPool) {
    let app = spawn_app_with(db, &format!("test:{}:", Uuid::new_v4()), |c| {
        c.max_group_members = 3
    })
    .await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let carol = app.user("carol").await;
    let dave = app.user("dave").await;
    let r = app
        .post(
            &alice,
            "/chat/groups",
            json!({"name": "four", "member_ids": [bob.id, carol.id, dave.id]}),
        )
        .await;
    let body = assert_error(r, StatusCode::UNPROCESSABLE_ENTITY, "validation_error").await;
    assert!(body["fields"]["member_ids"].is_string(), "{body}");
    let r = app
        .post(
            &alice,
            "/chat/groups",
            json!({"name": "three", "member_ids": [bob.id, carol.id]}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let group: Value = r.json().await.unwrap();
    let members = format!("/chat/groups/{}/members", group["id"].as_str().unwrap());
    let r = app
        .post(&alice, &members, json!({"user_ids": [dave.id]}))
        .await;
    let body = assert_error(r, StatusCode::UNPROCESSABLE_ENTITY, "validation_error").await;
    assert!(body["fields"]["user_ids"].is_string(), "{body}");
    // Naming members already in adds nobody, so it fits.
    let r = app
        .post(&alice, &members, json!({"user_ids": [bob.id, carol.id]}))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let r = app.delete(&alice, &format!("{members}/{}", carol.id)).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = app
        .post(&alice, &members, json!({"user_ids": [dave.id]}))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let group: Value = r.json().await.unwrap();
    assert_eq!(member_names(&group), ["alice", "bob", "dave"]);
}

/// `GET /chat/groups` lists the caller's groups newest first, each with its own members.
#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn the_group_list_carries_each_groups_members(db: PgPool) {
    let app = spawn_app(db).await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let carol = app.user("carol").await;
    for (name, members) in [
        ("one", vec![bob.id]),
        ("two", vec![carol.id]),
        ("three", vec![carol.id, bob.id]),
    ] {
        let r = app
            .post(
                &alice,
                "/chat/groups",
                json!({"name": name, "member_ids": members}),
            )
            .await;
        assert_eq!(r.status(), StatusCode::CREATED);
    }
    let groups: Vec<Value> = app.get(&alice, "/chat/groups").await.json().await.unwrap();
    let listed: Vec<(&str, Vec<String>)> = groups
        .iter()
        .map(|g| (g["name"].as_str().unwrap(), member_names(g)))
        .collect();
    assert_eq!(
        listed,
        [
            (
                "three",
                vec!["alice".to_owned(), "bob".into(), "carol".into()]
            ),
            ("two", vec!["alice".to_owned(), "carol".into()]),
            ("one", vec!["alice".to_owned(), "bob".into()]),
        ]
    );
    let groups: Vec<Value> = app.get(&bob, "/chat/groups").await.json().await.unwrap();
    assert_eq!(groups.len(), 2);
}

/// `limit` and `before` (the last group's id) page the list; groups created at one instant
/// are ordered by id, so a page never ends inside a tie, and a group the caller has left still
/// marks where the next page starts.
#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn the_group_list_pages_by_the_last_groups_id(db: PgPool) {
    let app = spawn_app(db).await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    for name in ["one", "two", "three", "four", "five"] {
        let r = app
            .post(
                &bob,
                "/chat/groups",
                json!({"name": name, "member_ids": [alice.id]}),
            )
            .await;
        assert_eq!(r.status(), StatusCode::CREATED);
    }
    // Three of them created at one instant: a tie in time.
    sqlx::query(
        "UPDATE groups SET created_at = '2026-01-01T00:00:00Z'
         WHERE name IN ('two', 'three', 'four')",
    )
    .execute(&app.db)
    .await
    .unwrap();
    let names = |groups: &[Value]| -> Vec<String> {
        groups
            .iter()
            .map(|g| g["name"].as_str().unwrap().to_owned())
            .collect()
    };
    let all: Vec<Value> = app.get(&alice, "/chat/groups").await.json().await.unwrap();
    assert_eq!(all.len(), 5);
    assert_eq!(names(&all[..2]), ["five", "one"], "newest first");
    let mut paged: Vec<Value> = Vec::new();
    let mut path = "/chat/groups?limit=2".to_owned();
    loop {
        let page: Vec<Value> = app.get(&alice, &path).await.json().await.unwrap();
        assert!(page.len() <= 2);
        let Some(last) = page.last() else { break };
        path = format!(
            "/chat/groups?limit=2&before={}",
            last["id"].as_str().unwrap()
        );
        paged.extend(page);
    }
    assert_eq!(names(&paged), names(&all));
    assert_eq!(member_names(&paged[0]), ["alice", "bob"]);

    // Alice leaves the second group; the page after it is the same.
    let after_second = format!("/chat/groups?before={}", all[1]["id"].as_str().unwrap());
    let before_leaving: Vec<Value> = app.get(&alice, &after_second).await.json().await.unwrap();
    let r = app
        .delete(
            &alice,
            &format!(
                "/chat/groups/{}/members/{}",
                all[1]["id"].as_str().unwrap(),
                alice.id
            ),
        )
        .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let after_leaving: Vec<Value> = app.get(&alice, &after_second).await.json().await.unwrap();
    assert_eq!(names(&after_leaving), names(&before_leaving));
    assert_eq!(names(&after_leaving), names(&all[2..]));

    for bad in [
        "limit=0".to_owned(),
        "limit=101".to_owned(),
        "before=nope".to_owned(),
        format!("before={}", Uuid::new_v4()),
    ] {
        let r = app.get(&alice, &format!("/chat/groups?{bad}")).await;
        assert_error(r, StatusCode::UNPROCESSABLE_ENTITY, "validation_error").await;
    }
}

/// A user belongs to at most `MAX_GROUPS_PER_USER` groups: creating a group with, or adding,
/// a user who already is in as many is 409 `too_many_groups` naming them, and adds nobody;
/// naming a member again is harmless, and leaving a group makes room.
#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn a_user_belongs_to_at_most_max_groups(db: PgPool) {
    let app = spawn_app_with(db, &format!("test:{}:", Uuid::new_v4()), |c| {
        c.max_groups_per_user = 2
    })
    .await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let carol = app.user("carol").await;
    let create = |name: &str, members: &[Uuid]| json!({"name": name, "member_ids": members});
    let mut groups = Vec::new();
    for name in ["one", "two"] {
        let r = app
            .post(&bob, "/chat/groups", create(name, &[alice.id]))
            .await;
        assert_eq!(r.status(), StatusCode::CREATED);
        let g: Value = r.json().await.unwrap();
        groups.push(g["id"].as_str().unwrap().to_owned());
    }
    // Alice is in two groups: Carol can neither create a third with her nor add her to one.
    let r = app
        .post(&carol, "/chat/groups", create("three", &[alice.id]))
        .await;
    let body = assert_error(r, StatusCode::CONFLICT, "too_many_groups").await;
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains(&alice.id.to_string()),
        "{body}"
    );
    let r = app.post(&carol, "/chat/groups", create("three", &[])).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let third: Value = r.json().await.unwrap();
    let members = format!("/chat/groups/{}/members", third["id"].as_str().unwrap());
    let r = app
        .post(&carol, &members, json!({"user_ids": [alice.id]}))
        .await;
    assert_error(r, StatusCode::CONFLICT, "too_many_groups").await;
    let r: Value = app.get(&carol, "/chat/groups").await.json().await.unwrap();
    assert_eq!(r[0]["members"].as_array().unwrap().len(), 1, "{r}");
    // Bob, the owner of both, is at the bound too: a third group of his is refused.
    let r = app.post(&bob, "/chat/groups", create("four", &[])).await;
    assert_error(r, StatusCode::CONFLICT, "too_many_groups").await;
    // Naming a member again is harmless.
    let again = format!("/chat/groups/{}/members", groups[0]);
    let r = app
        .post(&bob, &again, json!({"user_ids": [alice.id]}))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    // Once Alice leaves one, Carol may add her.
    let r = app.delete(&alice, &format!("{again}/{}", alice.id)).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = app
        .post(&carol, &members, json!({"user_ids": [alice.id]}))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
}

/// `GET /chat/groups/{id}`: one group with its members, for its members only.
#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn one_group_is_read_by_its_members(db: PgPool) {
    let app = spawn_app(db).await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let carol = app.user("carol").await;
    let r = app
        .post(
            &alice,
            "/chat/groups",
            json!({"name": "Pals", "member_ids": [bob.id]}),
        )
        .await;
    let created: Value = r.json().await.unwrap();
    let path = format!("/chat/groups/{}", created["id"].as_str().unwrap());
    let r = app.get(&bob, &path).await;
    assert_eq!(r.status(), StatusCode::OK);
    let group: Value = r.json().await.unwrap();
    assert_eq!(group, created, "the same as the create answered");
    assert_eq!(member_names(&group), ["alice", "bob"]);
    assert_error(
        app.get(&carol, &path).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
    let r = app
        .get(&alice, &format!("/chat/groups/{}", Uuid::new_v4()))
        .await;
    assert_error(r, StatusCode::NOT_FOUND, "not_found").await;
}

/// The users told of a user's presence are at most `PRESENCE_MAX_CONTACTS`: those of the
/// private chats and groups with the latest activity (a group's members together).
#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn presence_goes_to_the_most_recent_contacts_only(db: PgPool) {
    let app = spawn_app_with(db, &format!("test:{}:", Uuid::new_v4()), |c| {
        c.presence_max_contacts = 3
    })
    .await;
    let alice = app.user("alice").await;
    let mut others = Vec::new();
    for name in ["user1", "user2", "user3", "user4", "user5"] {
        others.push(app.user(name).await);
    }
    for u in &others[..3] {
        app.send(&alice, &format!("private/{}", u.id), "hi").await;
    }
    let r = app
        .post(
            &alice,
            "/chat/groups",
            json!({"name": "g", "member_ids": [others[3].id, others[4].id]}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let group: Uuid = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    // When each conversation was last active, in hours: the group between the private chats.
    let set_hour = |conversation: Uuid, hour: i32| {
        let db = app.db.clone();
        async move {
            sqlx::query(
                "UPDATE conversations SET last_message_at = '2026-01-01T00:00:00Z'::timestamptz
                                                          + make_interval(hours => $2)
                 WHERE id = $1",
            )
            .bind(conversation)
            .bind(hour)
            .execute(&db)
            .await
            .unwrap();
        }
    };
    let private = |u: Uuid| {
        let db = app.db.clone();
        async move {
            sqlx::query_scalar::<_, Uuid>(
                "SELECT id FROM conversations WHERE chat_type = 'PRIVATE'
                 AND (user_low = $1 OR user_high = $1)",
            )
            .bind(u)
            .fetch_one(&db)
            .await
            .unwrap()
        }
    };
    let chats = [
        private(others[0].id).await,
        private(others[1].id).await,
        private(others[2].id).await,
    ];
    set_hour(chats[0], 5).await;
    set_hour(group, 4).await;
    set_hour(chats[1], 3).await;
    set_hour(chats[2], 1).await;
    let contacts = || async {
        let body: Value = app
            .http
            .get(app.url(&format!("/internal/users/{}/conversations", alice.id)))
            .bearer_auth(app.internal_token())
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let mut ids: Vec<Uuid> = body["contacts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().parse().unwrap())
            .collect();
        ids.sort();
        ids
    };
    let expect = |picked: &[usize]| {
        let mut ids: Vec<Uuid> = picked.iter().map(|&i| others[i].id).collect();
        ids.sort();
        ids
    };
    assert_eq!(contacts().await, expect(&[0, 3, 4]));
    // The oldest private chat becomes the latest: it takes the place of the least recent.
    set_hour(chats[2], 6).await;
    set_hour(chats[0], 2).await;
    assert_eq!(contacts().await, expect(&[2, 3, 4]));
}

/// The owner renames a group (an extension); a member or a stranger may not.
#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn the_owner_renames_a_group(db: PgPool) {
    let app = spawn_app(db).await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let carol = app.user("carol").await;
    let r = app
        .post(
            &alice,
            "/chat/groups",
            json!({"name": "trip", "member_ids": [bob.id]}),
        )
        .await;
    let id = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let path = format!("/chat/groups/{id}");
    let r = app
        .patch(&alice, &path, json!({"name": " summer trip "}))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["name"], "summer trip");
    assert_eq!(member_names(&body), ["alice", "bob"]);
    for who in [&bob, &carol] {
        let r = app.patch(who, &path, json!({"name": "ours"})).await;
        assert_error(r, StatusCode::FORBIDDEN, "forbidden").await;
    }
    let r = app.patch(&alice, &path, json!({"name": ""})).await;
    assert_error(r, StatusCode::UNPROCESSABLE_ENTITY, "validation_error").await;
    let listed: Value = app.get(&bob, &path).await.json().await.unwrap();
    assert_eq!(listed["name"], "summer trip");
}

/// Groups' members are read a few groups at a time, newest first, until the contacts are
/// enough: with ten groups of one member each and room for nine, the members of the nine most
/// recently active groups (past the first query's groups) are the contacts.
#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn presence_contacts_follow_group_activity_across_queries(db: PgPool) {
    let app = spawn_app_with(db, &format!("test:{}:", Uuid::new_v4()), |c| {
        c.presence_max_contacts = 9
    })
    .await;
    let alice = app.user("alice").await;
    let mut members = Vec::new();
    for i in 0..10 {
        let member = app.user(&format!("member{i}")).await;
        let r = app
            .post(
                &alice,
                "/chat/groups",
                json!({"name": format!("g{i}"), "member_ids": [member.id]}),
            )
            .await;
        assert_eq!(r.status(), StatusCode::CREATED);
        let group: Uuid = r.json::<Value>().await.unwrap()["id"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        // Group i was last active i hours in: the first created is the least recent.
        sqlx::query(
            "UPDATE conversations SET last_message_at = '2026-01-01T00:00:00Z'::timestamptz
                                                      + make_interval(hours => $2)
             WHERE id = $1",
        )
        .bind(group)
        .bind(i)
        .execute(&app.db)
        .await
        .unwrap();
        members.push(member.id);
    }
    let body: Value = app
        .http
        .get(app.url(&format!("/internal/users/{}/conversations", alice.id)))
        .bearer_auth(app.internal_token())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let contacts: Vec<Uuid> = body["contacts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().parse().unwrap())
        .collect();
    let newest_first: Vec<Uuid> = members[1..].iter().rev().copied().collect();
    assert_eq!(contacts, newest_first);
}
