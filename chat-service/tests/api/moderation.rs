//! Room roles, bans, mutes, moderator deletes and the audit log (contract, "Room moderation").

use std::time::Duration;

use chrono::Utc;
use reqwest::StatusCode;
use serde_json::{json, Value};
use shared::chat::{ChatType, Event, MembershipAction};
use sqlx::PgPool;

use crate::helpers::{assert_error, spawn_app, TestApp, User};

async fn my_role(app: &TestApp, user: &User, room: uuid::Uuid) -> Value {
    let rooms: Vec<Value> = app.get(user, "/chat/rooms").await.json().await.unwrap();
    let r = rooms.iter().find(|r| r["id"] == room.to_string()).unwrap();
    r["my_role"].clone()
}

/// An instance whose action rate does not stop many changes at once.
async fn unthrottled(db: PgPool) -> TestApp {
    let prefix = format!("test:{}:", uuid::Uuid::new_v4());
    crate::helpers::spawn_app_with(db, &prefix, |c| {
        c.action_rate = shared::limits::Rate {
            per_second: 1000,
            burst: 1000,
        };
    })
    .await
}

/// `n` users, `user0`, `user1`, …
async fn users(app: &TestApp, n: usize) -> Vec<User> {
    let mut users = Vec::with_capacity(n);
    for i in 0..n {
        users.push(app.user(&format!("user{i}")).await);
    }
    users
}

fn membership_actions(events: &[(String, Event)]) -> Vec<(MembershipAction, Option<uuid::Uuid>)> {
    events
        .iter()
        .filter_map(|(_, e)| match e {
            Event::Membership { action, by, .. } => Some((*action, *by)),
            _ => None,
        })
        .collect()
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn the_owner_names_moderators_and_roles_show_on_rooms(db: PgPool) {
    let app = spawn_app(db).await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let carol = app.user("carol").await;
    let dave = app.user("dave").await;
    let room = app.room(&alice, "r", &[&bob, &carol]).await;
    let mut watcher = app.watch(vec![app.keys.conversation_channel(room)]).await;

    assert_eq!(my_role(&app, &alice, room).await, "owner");
    assert_eq!(my_role(&app, &bob, room).await, "member");
    assert_eq!(my_role(&app, &dave, room).await, Value::Null);

    // Only the owner names moderators, and only members.
    let r = app
        .put(&bob, &format!("/chat/rooms/{room}/moderators/{}", carol.id))
        .await;
    assert_error(r, StatusCode::FORBIDDEN, "forbidden").await;
    let r = app
        .put(
            &alice,
            &format!("/chat/rooms/{room}/moderators/{}", dave.id),
        )
        .await;
    assert_error(r, StatusCode::NOT_FOUND, "not_found").await;
    for _ in 0..2 {
        let r = app
            .put(&alice, &format!("/chat/rooms/{room}/moderators/{}", bob.id))
            .await;
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
    }
    assert_eq!(my_role(&app, &bob, room).await, "moderator");
    // Moderators pin.
    let m = app.send(&carol, &format!("room/{room}"), "pin me").await;
    let r = app
        .put(
            &bob,
            &format!("/chat/messages/{}/pin", m["id"].as_str().unwrap()),
        )
        .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    // A moderator cannot name others, nor demote.
    let r = app
        .put(&bob, &format!("/chat/rooms/{room}/moderators/{}", carol.id))
        .await;
    assert_error(r, StatusCode::FORBIDDEN, "forbidden").await;
    let r = app
        .delete(&alice, &format!("/chat/rooms/{room}/moderators/{}", bob.id))
        .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(my_role(&app, &bob, room).await, "member");

    let events = watcher.drain(Duration::from_millis(300)).await;
    assert_eq!(
        membership_actions(&events),
        vec![
            (MembershipAction::Promoted, Some(alice.id)),
            (MembershipAction::Demoted, Some(alice.id)),
        ],
        "promoting twice is one event"
    );
    let audit: Value = app
        .get(&alice, &format!("/chat/rooms/{room}/audit"))
        .await
        .json()
        .await
        .unwrap();
    let actions: Vec<&str> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, vec!["demoted", "promoted"], "newest first");
    assert_eq!(audit["entries"][0]["target_id"], bob.id.to_string());
    let r = app.get(&bob, &format!("/chat/rooms/{room}/audit")).await;
    assert_error(r, StatusCode::FORBIDDEN, "forbidden").await;
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn a_ban_removes_the_user_and_refuses_rejoining_until_lifted(db: PgPool) {
    let app = spawn_app(db).await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let carol = app.user("carol").await;
    let room = app.room(&alice, "r", &[&bob, &carol]).await;
    let r = app
        .put(&alice, &format!("/chat/rooms/{room}/moderators/{}", bob.id))
        .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let mut watcher = app
        .watch(vec![
            app.keys.conversation_channel(room),
            app.keys.user_channel(carol.id),
        ])
        .await;

    // Plain members do not ban; nobody bans the owner; a moderator bans a member.
    let r = app
        .post(
            &carol,
            &format!("/chat/rooms/{room}/bans"),
            json!({"user_id": bob.id}),
        )
        .await;
    assert_error(r, StatusCode::FORBIDDEN, "forbidden").await;
    let r = app
        .post(
            &bob,
            &format!("/chat/rooms/{room}/bans"),
            json!({"user_id": alice.id}),
        )
        .await;
    assert_error(r, StatusCode::FORBIDDEN, "forbidden").await;
    let r = app
        .post(
            &bob,
            &format!("/chat/rooms/{room}/bans"),
            json!({"user_id": bob.id}),
        )
        .await;
    assert_error(r, StatusCode::UNPROCESSABLE_ENTITY, "validation_error").await;
    let past = Utc::now() - chrono::Duration::minutes(1);
    let r = app
        .post(
            &bob,
            &format!("/chat/rooms/{room}/bans"),
            json!({"user_id": carol.id, "until": past}),
        )
        .await;
    assert_error(r, StatusCode::UNPROCESSABLE_ENTITY, "validation_error").await;
    let r = app
        .post(
            &bob,
            &format!("/chat/rooms/{room}/bans"),
            json!({"user_id": carol.id, "reason": "spam"}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);

    // Carol is out: no longer a member, cannot send nor join.
    let members: Vec<Value> = app
        .get(&alice, &format!("/chat/rooms/{room}/members"))
        .await
        .json()
        .await
        .unwrap();
    assert!(members.iter().all(|m| m["id"] != carol.id.to_string()));
    let r = app
        .post(
            &carol,
            &format!("/chat/messages/room/{room}"),
            json!({"content": "hi"}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = app
        .post(&carol, &format!("/chat/rooms/{room}/join"), Value::Null)
        .await;
    assert_error(r, StatusCode::FORBIDDEN, "banned").await;
    let bans: Vec<Value> = app
        .get(&bob, &format!("/chat/rooms/{room}/bans"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(bans.len(), 1);
    assert_eq!(bans[0]["reason"], "spam");

    // The ban reaches the room and carol's own channel (her gateways unsubscribe).
    let events = watcher.drain(Duration::from_millis(300)).await;
    let to_carol = events
        .iter()
        .filter(|(ch, e)| {
            *ch == app.keys.user_channel(carol.id)
                && matches!(
                    e,
                    Event::Membership {
                        action: MembershipAction::Banned,
                        chat_type: ChatType::Room,
                        ..
                    }
                )
        })
        .count();
    assert_eq!(to_carol, 1);

    // Lifted: she may join again.
    let r = app
        .delete(&bob, &format!("/chat/rooms/{room}/bans/{}", carol.id))
        .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = app
        .post(&carol, &format!("/chat/rooms/{room}/join"), Value::Null)
        .await;
    assert_eq!(r.status(), StatusCode::OK);

    // A moderator does not ban a moderator; the owner does, and the ban ends the role.
    let r = app
        .put(
            &alice,
            &format!("/chat/rooms/{room}/moderators/{}", carol.id),
        )
        .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = app
        .post(
            &bob,
            &format!("/chat/rooms/{room}/bans"),
            json!({"user_id": carol.id}),
        )
        .await;
    assert_error(r, StatusCode::FORBIDDEN, "forbidden").await;
    let r = app
        .post(
            &alice,
            &format!("/chat/rooms/{room}/bans"),
            json!({"user_id": carol.id}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(my_role(&app, &carol, room).await, Value::Null);

    let audit: Value = app
        .get(&alice, &format!("/chat/rooms/{room}/audit?limit=2"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(audit["has_more"], true);
    let first = audit["entries"][0].clone();
    assert_eq!(first["action"], "banned");
    assert_eq!(first["actor_id"], alice.id.to_string());
    let older: Value = app
        .get(
            &alice,
            &format!(
                "/chat/rooms/{room}/audit?before={}",
                audit["entries"][1]["id"]
            ),
        )
        .await
        .json()
        .await
        .unwrap();
    let actions: Vec<&str> = older["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, vec!["unbanned", "banned", "promoted"]);
    assert_eq!(older["entries"][1]["reason"], "spam");
}

/// A ban and the banned user's join at the same moment: whichever comes first, the user ends
/// up outside the room (before, a join that had checked for bans just before the ban was
/// stored added its membership after the ban had removed none).
#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn a_join_racing_a_ban_never_leaves_the_user_inside(db: PgPool) {
    let app = unthrottled(db).await;
    let alice = app.user("alice").await;
    let room = app.room(&alice, "r", &[]).await;
    let users = users(&app, 40).await;
    let rounds = users.iter().map(|u| {
        let (app, alice) = (&app, &alice);
        async move {
            let (join, ban) = (
                format!("/chat/rooms/{room}/join"),
                format!("/chat/rooms/{room}/bans"),
            );
            let (joined, banned) = tokio::join!(
                app.post(u, &join, json!({})),
                app.post(alice, &ban, json!({"user_id": u.id})),
            );
            assert_eq!(banned.status(), StatusCode::NO_CONTENT);
            assert!(
                [StatusCode::OK, StatusCode::FORBIDDEN].contains(&joined.status()),
                "{}",
                joined.status()
            );
        }
    });
    futures_util::future::join_all(rounds).await;
    let inside: Vec<uuid::Uuid> = sqlx::query_scalar(
        "SELECT user_id FROM conversation_members WHERE conversation_id = $1 AND user_id <> $2",
    )
    .bind(room)
    .bind(alice.id)
    .fetch_all(&app.db)
    .await
    .unwrap();
    assert_eq!(inside, Vec::<uuid::Uuid>::new(), "banned users are members");
}

/// One user joining and leaving a room many times at once: every answer is a success (the
/// changes lock the room's row before its memberships, so none deadlocks another) and the
/// member count matches the members.
#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn joins_and_leaves_at_once_neither_fail_nor_miscount(db: PgPool) {
    let app = unthrottled(db).await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let room = app.room(&alice, "r", &[]).await;
    let (join, leave) = (
        format!("/chat/rooms/{room}/join"),
        format!("/chat/rooms/{room}/leave"),
    );
    let calls = (0..40).map(|i| {
        let (app, bob) = (&app, &bob);
        let path = if i % 2 == 0 { &join } else { &leave };
        async move { app.post(bob, path, json!({})).await.status() }
    });
    let statuses = futures_util::future::join_all(calls).await;
    assert!(statuses.iter().all(|s| s.is_success()), "{statuses:?}");
    let (count, members): (i64, i64) = sqlx::query_as(
        "SELECT r.member_count, (SELECT count(*) FROM conversation_members m WHERE m.conversation_id = r.id)
         FROM rooms r WHERE r.id = $1",
    )
    .bind(room)
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!(count, members);
}

/// A moderator who leaves moderates nothing more, and coming back makes a plain member.
#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn a_moderator_who_leaves_is_one_no_more(db: PgPool) {
    let app = spawn_app(db).await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let carol = app.user("carol").await;
    let room = app.room(&alice, "r", &[&bob, &carol]).await;
    let r = app
        .put(&alice, &format!("/chat/rooms/{room}/moderators/{}", bob.id))
        .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let m = app.send(&carol, &format!("room/{room}"), "hello").await;
    let r = app
        .post(&bob, &format!("/chat/rooms/{room}/leave"), json!({}))
        .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    // Gone: no deleting others' messages, no muting or banning.
    let r = app
        .delete(
            &bob,
            &format!("/chat/messages/{}", m["id"].as_str().unwrap()),
        )
        .await;
    assert_error(r, StatusCode::FORBIDDEN, "forbidden").await;
    let r = app
        .post(
            &bob,
            &format!("/chat/rooms/{room}/bans"),
            json!({"user_id": carol.id}),
        )
        .await;
    assert_error(r, StatusCode::FORBIDDEN, "forbidden").await;
    let r = app
        .post(&bob, &format!("/chat/rooms/{room}/join"), json!({}))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(my_role(&app, &bob, room).await, "member");
    let r = app
        .delete(
            &bob,
            &format!("/chat/messages/{}", m["id"].as_str().unwrap()),
        )
        .await;
    assert_error(r, StatusCode::FORBIDDEN, "forbidden").await;
}

/// The owner promoting a member while banning them: whichever comes first, a banned user
/// is no moderator.
#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn a_promotion_racing_a_ban_never_makes_a_banned_moderator(db: PgPool) {
    let app = unthrottled(db).await;
    let alice = app.user("alice").await;
    let users = users(&app, 30).await;
    let members: Vec<&User> = users.iter().collect();
    let room = app.room(&alice, "r", &members).await;
    let rounds = users.iter().map(|u| {
        let (app, alice) = (&app, &alice);
        async move {
            let (promote, ban) = (
                format!("/chat/rooms/{room}/moderators/{}", u.id),
                format!("/chat/rooms/{room}/bans"),
            );
            let (promoted, banned) = tokio::join!(
                app.put(alice, &promote),
                app.post(alice, &ban, json!({"user_id": u.id})),
            );
            assert_eq!(banned.status(), StatusCode::NO_CONTENT);
            assert!(
                [StatusCode::NO_CONTENT, StatusCode::NOT_FOUND].contains(&promoted.status()),
                "{}",
                promoted.status()
            );
        }
    });
    futures_util::future::join_all(rounds).await;
    let moderators: Vec<uuid::Uuid> =
        sqlx::query_scalar("SELECT user_id FROM room_moderators WHERE room_id = $1")
            .bind(room)
            .fetch_all(&app.db)
            .await
            .unwrap();
    assert_eq!(moderators, Vec::<uuid::Uuid>::new(), "banned moderators");
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn an_expired_ban_no_longer_refuses(db: PgPool) {
    let app = spawn_app(db).await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let room = app.room(&alice, "r", &[&bob]).await;
    let soon = Utc::now() + chrono::Duration::milliseconds(800);
    let r = app
        .post(
            &alice,
            &format!("/chat/rooms/{room}/bans"),
            json!({"user_id": bob.id, "until": soon}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = app
        .post(&bob, &format!("/chat/rooms/{room}/join"), Value::Null)
        .await;
    let body = assert_error(r, StatusCode::FORBIDDEN, "banned").await;
    assert!(body["detail"].as_str().unwrap().contains("until"));
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let r = app
        .post(&bob, &format!("/chat/rooms/{room}/join"), Value::Null)
        .await;
    assert_eq!(r.status(), StatusCode::OK);
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn a_mute_refuses_sends_on_rest_and_the_bus_until_lifted(db: PgPool) {
    let app = spawn_app(db.clone()).await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let room = app.room(&alice, "r", &[&bob]).await;
    let r = app
        .post(
            &alice,
            &format!("/chat/rooms/{room}/mutes"),
            json!({"user_id": bob.id}),
        )
        .await;
    assert_error(r, StatusCode::UNPROCESSABLE_ENTITY, "validation_error").await;
    let until = Utc::now() + chrono::Duration::hours(1);
    let r = app
        .post(
            &alice,
            &format!("/chat/rooms/{room}/mutes"),
            json!({"user_id": bob.id, "until": until}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);

    let r = app
        .post(
            &bob,
            &format!("/chat/messages/room/{room}"),
            json!({"content": "hi"}),
        )
        .await;
    let body = assert_error(r, StatusCode::FORBIDDEN, "muted").await;
    // Until when, in the contract's form of a time (UTC, `Z`), to the second.
    let expected = until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .ends_with(&format!("until {expected}")),
        "{body}"
    );
    // The send stream's batch check refuses it too.
    let mut lookup = db.acquire().await.unwrap();
    let redis = crate::bus::redis().await;
    let new_chats = chat_service::conversation::NewPrivateChats {
        redis: &redis,
        keys: &app.keys,
        per_hour: 1,
    };
    let results = chat_service::conversation::for_sending_many(
        &mut lookup,
        &db,
        new_chats,
        &[
            (bob.id, ChatType::Room, room),
            (alice.id, ChatType::Room, room),
        ],
    )
    .await
    .unwrap();
    assert_eq!(results[0].as_ref().unwrap_err().code, "muted");
    assert!(results[1].is_ok(), "the owner is not muted");
    // Still a member who reads and marks read.
    let r = app.get(&bob, &format!("/chat/messages/room/{room}")).await;
    assert_eq!(r.status(), StatusCode::OK);

    let r = app
        .delete(&alice, &format!("/chat/rooms/{room}/mutes/{}", bob.id))
        .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    app.send(&bob, &format!("room/{room}"), "back").await;
    let audit: Value = app
        .get(&alice, &format!("/chat/rooms/{room}/audit"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(audit["entries"][0]["action"], "unmuted");
    assert_eq!(audit["entries"][1]["action"], "muted");
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn moderators_delete_anyones_message_and_it_is_audited(db: PgPool) {
    let app = spawn_app(db).await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let carol = app.user("carol").await;
    let room = app.room(&alice, "r", &[&bob, &carol]).await;
    let m = app.send(&carol, &format!("room/{room}"), "rude").await;
    let id = m["id"].as_str().unwrap();

    let r = app.delete(&bob, &format!("/chat/messages/{id}")).await;
    assert_error(r, StatusCode::FORBIDDEN, "forbidden").await;
    let r = app
        .put(&alice, &format!("/chat/rooms/{room}/moderators/{}", bob.id))
        .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = app.delete(&bob, &format!("/chat/messages/{id}")).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let page: Value = app
        .get(&alice, &format!("/chat/messages/room/{room}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(page["messages"][0]["is_deleted"], true);
    let audit: Value = app
        .get(&alice, &format!("/chat/rooms/{room}/audit"))
        .await
        .json()
        .await
        .unwrap();
    let e = &audit["entries"][0];
    assert_eq!(e["action"], "message_deleted");
    assert_eq!(e["actor_id"], bob.id.to_string());
    assert_eq!(e["target_id"], carol.id.to_string());
    assert_eq!(e["message_id"], id);

    // Moderating a room gives nothing in a group.
    let g: Value = app
        .post(
            &bob,
            "/chat/groups",
            json!({"name": "g", "member_ids": [carol.id]}),
        )
        .await
        .json()
        .await
        .unwrap();
    let gm = app
        .send(&carol, &format!("group/{}", g["id"].as_str().unwrap()), "x")
        .await;
    let r = app
        .delete(
            &alice,
            &format!("/chat/messages/{}", gm["id"].as_str().unwrap()),
        )
        .await;
    assert_error(r, StatusCode::FORBIDDEN, "forbidden").await;
}
