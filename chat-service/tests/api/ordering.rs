//! seq is per conversation, +1 per message, gap-free and in commit order, with several
//! chat-service replicas and concurrent senders.

use std::collections::HashSet;

use serde_json::{json, Value};
use sqlx::PgPool;

use crate::helpers::{spawn_app, spawn_app_with};

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn concurrent_sends_through_two_instances_have_no_gap_and_no_duplicate(db: PgPool) {
    let one = spawn_app(db.clone()).await;
    let prefix = one.prefix.clone();
    let two = spawn_app_with(db, &prefix, |_| {}).await;
    let mut users = Vec::new();
    for i in 0..4 {
        users.push(one.user(&format!("user{i}")).await);
    }
    let refs: Vec<_> = users.iter().skip(1).collect();
    let room = one.room(&users[0], "busy", &refs).await;
    let other_room = one.room(&users[0], "also-busy", &refs).await;

    const PER_USER: usize = 25;
    let mut handles = Vec::new();
    for (u, user) in users.iter().enumerate() {
        for k in 0..PER_USER {
            let instance = if (u + k) % 2 == 0 { &one } else { &two };
            let target = if k % 3 == 0 { other_room } else { room };
            let req = instance
                .http
                .post(instance.url(&format!("/chat/messages/room/{target}")))
                .bearer_auth(&user.token)
                .json(&json!({"content": format!("{u}-{k}")}));
            handles.push(tokio::spawn(async move {
                let r = req.send().await.unwrap();
                assert_eq!(r.status(), 201);
                r.json::<Value>().await.unwrap()
            }));
        }
    }
    for h in handles {
        h.await.unwrap();
    }
    for target in [room, other_room] {
        let seqs: Vec<i64> =
            sqlx::query_scalar("SELECT seq FROM messages WHERE room_id = $1 ORDER BY seq")
                .bind(target)
                .fetch_all(&one.db)
                .await
                .unwrap();
        let n = seqs.len() as i64;
        assert_eq!(seqs, (1..=n).collect::<Vec<_>>(), "gap-free and unique");
        let distinct: HashSet<i64> = seqs.iter().copied().collect();
        assert_eq!(distinct.len() as i64, n);
    }
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM messages")
        .fetch_one(&one.db)
        .await
        .unwrap();
    assert_eq!(total as usize, users.len() * PER_USER);
    let last: i64 = sqlx::query_scalar("SELECT last_seq FROM conversations WHERE id = $1")
        .bind(room)
        .fetch_one(&one.db)
        .await
        .unwrap();
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM messages WHERE room_id = $1")
        .bind(room)
        .fetch_one(&one.db)
        .await
        .unwrap();
    assert_eq!(last, count, "the counter matches the rows");
}
