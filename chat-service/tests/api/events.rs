//! What chat-service publishes, where, and how often.

use std::time::Duration;

use serde_json::{json, Value};
use shared::chat::{ChatType, Event, MembershipAction};
use sqlx::PgPool;

use crate::helpers::spawn_app;

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn a_room_message_is_one_publish_whatever_the_member_count(db: PgPool) {
    let app = spawn_app(db).await;
    let alice = app.user("alice").await;
    let mut members = Vec::new();
    for i in 0..20 {
        members.push(app.user(&format!("member{i}")).await);
    }
    let refs: Vec<_> = members.iter().collect();
    let room = app.room(&alice, "big", &refs).await;

    let mut channels = vec![
        app.keys.conversation_channel(room),
        app.keys.user_channel(alice.id),
    ];
    channels.extend(members.iter().map(|m| app.keys.user_channel(m.id)));
    let mut watcher = app.watch(channels).await;
    let sent = app.send(&alice, &format!("room/{room}"), "hello all").await;

    let seen = watcher.drain(Duration::from_millis(500)).await;
    assert_eq!(seen.len(), 1, "one publish for 21 members: {seen:?}");
    let (channel, event) = &seen[0];
    assert_eq!(channel, &app.keys.conversation_channel(room));
    match event {
        Event::Message { message: m, .. } => {
            assert_eq!(m.id.to_string(), sent["id"].as_str().unwrap());
            assert_eq!(m.seq, 1);
        }
        other => panic!("expected a message, got {other:?}"),
    }
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn private_messages_go_to_both_users_channels(db: PgPool) {
    let app = spawn_app(db).await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let mut watcher = app
        .watch(vec![
            app.keys.user_channel(alice.id),
            app.keys.user_channel(bob.id),
        ])
        .await;
    app.send(&alice, &format!("private/{}", bob.id), "hi").await;
    let seen = watcher.drain(Duration::from_millis(500)).await;
    let mut channels: Vec<&str> = seen.iter().map(|(c, _)| c.as_str()).collect();
    channels.sort();
    let mut expected = vec![
        app.keys.user_channel(alice.id),
        app.keys.user_channel(bob.id),
    ];
    expected.sort();
    assert_eq!(channels, expected);
    assert!(seen.iter().all(
        |(_, e)| matches!(e, Event::Message { message: m, .. } if m.chat_type == ChatType::Private)
    ));
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn membership_edit_delete_and_read_events(db: PgPool) {
    let app = spawn_app(db).await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let room = app.room(&alice, "r", &[]).await;
    let mut watcher = app
        .watch(vec![
            app.keys.conversation_channel(room),
            app.keys.user_channel(bob.id),
            app.keys.user_channel(alice.id),
        ])
        .await;

    app.post(&bob, &format!("/chat/rooms/{room}/join"), Value::Null)
        .await;
    let seen = watcher.drain(Duration::from_millis(400)).await;
    assert_eq!(seen.len(), 2, "to the room and to bob: {seen:?}");
    assert!(seen.iter().all(|(_, e)| *e
        == Event::Membership {
            chat_type: ChatType::Room,
            chat_id: room,
            user_id: bob.id,
            action: MembershipAction::Joined,
            by: None,
            until: None,
        }));

    let m = app.send(&alice, &format!("room/{room}"), "typo").await;
    watcher.next().await;
    let id = m["id"].as_str().unwrap();
    app.patch(
        &alice,
        &format!("/chat/messages/{id}"),
        json!({"content": "fixed"}),
    )
    .await;
    match watcher.next().await.1 {
        Event::MessageEdited { message: m, .. } => assert_eq!(m.content, "fixed"),
        other => panic!("{other:?}"),
    }
    app.delete(&alice, &format!("/chat/messages/{id}")).await;
    match watcher.next().await.1 {
        Event::MessageDeleted {
            seq,
            conversation_id,
            ..
        } => {
            assert_eq!(seq, 1);
            assert_eq!(conversation_id, room);
        }
        other => panic!("{other:?}"),
    }
    app.post(&bob, &format!("/chat/read/room/{room}"), json!({"seq": 1}))
        .await;
    let (channel, event) = watcher.next().await;
    assert_eq!(
        channel,
        app.keys.user_channel(bob.id),
        "a room read goes to the reader's own connections only"
    );
    assert_eq!(
        event,
        Event::Read {
            user_id: bob.id,
            chat_type: ChatType::Room,
            conversation_id: room,
            peer_id: None,
            seq: 1,
            session: None
        }
    );
}
