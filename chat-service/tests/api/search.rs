//! `GET /chat/search` (contract, "Search").

use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;

use crate::helpers::{assert_error, spawn_app, TestApp, User};

async fn search(app: &TestApp, user: &User, query: &str) -> Value {
    let r = app.get(user, &format!("/chat/search?{query}")).await;
    assert_eq!(r.status(), StatusCode::OK, "{query}");
    r.json().await.unwrap()
}

fn contents(v: &Value) -> Vec<String> {
    v["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["content"].as_str().unwrap().to_owned())
        .collect()
}

/// Fills `room` with `n` messages by `author`: seq 1 to `n`, a second apart up to now, each
/// one's content the SQL expression `content` of its seq `s`; the room's `last_seq` follows.
async fn fill(db: &PgPool, room: Uuid, author: Uuid, n: i64, content: &str) {
    sqlx::query(&format!(
        "INSERT INTO messages (id, conversation_id, seq, from_user_id, room_id, content, message_type, chat_type, created_at)
         SELECT gen_random_uuid(), $1, s, $2, $1, {content}, 'TEXT', 'ROOM',
                now() - make_interval(secs => ($3 - s)::double precision)
         FROM generate_series(1, $3::bigint) AS s"
    ))
    .bind(room)
    .bind(author)
    .bind(n)
    .execute(db)
    .await
    .unwrap();
    sqlx::query("UPDATE conversations SET last_seq = $2 WHERE id = $1")
        .bind(room)
        .bind(n)
        .execute(db)
        .await
        .unwrap();
}

/// Percent-encodes a query value.
fn q(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn every_word_matches_as_a_prefix_newest_first(db: PgPool) {
    let app = spawn_app(db).await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let room = app.room(&alice, "r", &[&bob]).await;
    let chat = format!("room/{room}");
    app.send(&alice, &chat, "The quick brown fox").await;
    app.send(&bob, &chat, "a QUICKER brown dog").await;
    app.send(&alice, &chat, "quick, but not brownish? no: grey")
        .await;
    app.send(&bob, &chat, "slow brown fox").await;
    app.send(&bob, &chat, "concatenate quickly").await;

    let found = search(&app, &alice, &format!("q={}", q("quick brown"))).await;
    assert_eq!(
        contents(&found),
        vec![
            "quick, but not brownish? no: grey",
            "a QUICKER brown dog",
            "The quick brown fox"
        ],
        "every word, as a prefix, whatever its case; newest first"
    );
    assert_eq!(found["has_more"], false);
    // A prefix of a word, not a piece inside one.
    let found = search(&app, &alice, "q=cat").await;
    assert!(contents(&found).is_empty(), "{found}");
    let found = search(&app, &alice, "q=conc").await;
    assert_eq!(contents(&found), vec!["concatenate quickly"]);
    // Messages carry what history carries.
    assert_eq!(found["messages"][0]["room_id"], room.to_string());
    assert!(found["messages"][0]["reactions"].is_array());
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn scripts_without_spaces_match_substrings(db: PgPool) {
    let app = spawn_app(db).await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let chat = format!("private/{}", bob.id);
    app.send(&alice, &chat, "我们明天去北京开会").await;
    app.send(&alice, &chat, "東京タワーに行きました").await;
    app.send(
        &bob,
        &format!("private/{}", alice.id),
        "100% sure, 北京 is far",
    )
    .await;

    let found = search(&app, &bob, &format!("q={}", q("北京"))).await;
    assert_eq!(
        contents(&found),
        vec!["100% sure, 北京 is far", "我们明天去北京开会"]
    );
    let found = search(&app, &alice, &format!("q={}", q("タワー"))).await;
    assert_eq!(contents(&found), vec!["東京タワーに行きました"]);
    // Mixed: a word and a substring, both must match. LIKE's wildcards are literal.
    let found = search(&app, &alice, &format!("q={}", q("sure 北京"))).await;
    assert_eq!(contents(&found), vec!["100% sure, 北京 is far"]);
    let found = search(&app, &alice, &format!("q={}", q("0%北"))).await;
    assert!(contents(&found).is_empty(), "{found}");
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn only_what_the_caller_may_read_and_never_deleted(db: PgPool) {
    let app = spawn_app(db).await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let carol = app.user("carol").await;
    let joined = app.room(&alice, "joined", &[&bob]).await;
    let other = app.room(&carol, "other", &[]).await;
    app.send(&alice, &format!("room/{joined}"), "secret plan in the room")
        .await;
    app.send(&carol, &format!("room/{other}"), "secret plan elsewhere")
        .await;
    let g: Value = app
        .post(
            &carol,
            "/chat/groups",
            json!({"name": "g", "member_ids": [alice.id]}),
        )
        .await
        .json()
        .await
        .unwrap();
    let group = g["id"].as_str().unwrap().to_owned();
    app.send(
        &carol,
        &format!("group/{group}"),
        "secret plan in the group",
    )
    .await;
    app.send(
        &carol,
        &format!("private/{}", alice.id),
        "secret plan, privately",
    )
    .await;
    let gone = app
        .send(&alice, &format!("room/{joined}"), "secret plan deleted")
        .await;
    let r = app
        .delete(
            &alice,
            &format!("/chat/messages/{}", gone["id"].as_str().unwrap()),
        )
        .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);

    // Everywhere: alice's room, group and private chat; not a room she has not joined.
    let mut mine = contents(&search(&app, &alice, "q=secret+plan").await);
    mine.sort();
    assert_eq!(
        mine,
        vec![
            "secret plan in the group",
            "secret plan in the room",
            "secret plan, privately"
        ]
    );
    // Bob is in the room only.
    assert_eq!(
        contents(&search(&app, &bob, "q=secret").await),
        vec!["secret plan in the room"]
    );
    // One public room may be searched without joining it, like its history; a group not.
    assert_eq!(
        contents(
            &search(
                &app,
                &bob,
                &format!("q=secret&chat_type=room&chat_id={other}")
            )
            .await
        ),
        vec!["secret plan elsewhere"]
    );
    let r = app
        .get(
            &bob,
            &format!("/chat/search?q=secret&chat_type=group&chat_id={group}"),
        )
        .await;
    assert_error(r, StatusCode::FORBIDDEN, "forbidden").await;
    // A private chat is named by the other user.
    assert_eq!(
        contents(
            &search(
                &app,
                &alice,
                &format!("q=secret&chat_type=private&chat_id={}", carol.id)
            )
            .await
        ),
        vec!["secret plan, privately"]
    );
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn results_page_and_bad_parameters_are_422(db: PgPool) {
    let app = spawn_app(db).await;
    let alice = app.user("alice").await;
    let room = app.room(&alice, "r", &[]).await;
    for i in 1..=5 {
        app.send(&alice, &format!("room/{room}"), &format!("note {i}"))
            .await;
    }
    let chat = format!("chat_type=room&chat_id={room}");
    let first = search(&app, &alice, &format!("q=note&limit=2&{chat}")).await;
    assert_eq!(contents(&first), vec!["note 5", "note 4"]);
    assert_eq!(first["has_more"], true);
    let seq = first["messages"][1]["seq"].as_i64().unwrap();
    let next = search(
        &app,
        &alice,
        &format!("q=note&limit=2&{chat}&before_seq={seq}"),
    )
    .await;
    assert_eq!(contents(&next), vec!["note 3", "note 2"]);
    // Everywhere, paged by the last message's id.
    let first = search(&app, &alice, "q=note&limit=3").await;
    assert_eq!(contents(&first), vec!["note 5", "note 4", "note 3"]);
    let id = first["messages"][2]["id"].as_str().unwrap();
    let next = search(&app, &alice, &format!("q=note&limit=3&before_id={id}")).await;
    assert_eq!(contents(&next), vec!["note 2", "note 1"]);
    assert_eq!(next["has_more"], false);

    for (query, field) in [
        ("", "q"),
        ("q=%21%21", "q"),
        (&format!("q={}", "a".repeat(201)) as &str, "q"),
        ("q=x&limit=0", "limit"),
        ("q=x&before_seq=3", "before_seq"),
        ("q=x&before_id=nope", "before_id"),
        (&format!("q=x&chat_id={room}"), "chat_type"),
        ("q=x&chat_type=room", "chat_id"),
    ] {
        let r = app.get(&alice, &format!("/chat/search?{query}")).await;
        let body = assert_error(r, StatusCode::UNPROCESSABLE_ENTITY, "validation_error").await;
        assert!(body["fields"][field].is_string(), "{query}: {body}");
    }
}

/// A query matching most messages takes the plan that walks each conversation newest first, a
/// rare one the index's matches: the planner's estimates tell them apart (the statistics on the
/// search expression; without them every query was estimated at 0.5 % of the table), and both
/// give the answers the contract asks for.
#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn common_words_walk_conversations_with_the_same_answers(db: PgPool) {
    let app = spawn_app(db.clone()).await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let mine = app.room(&alice, "mine", &[]).await;
    let theirs = app.room(&bob, "theirs", &[]).await;
    for (room, author) in [(mine, alice.id), (theirs, bob.id)] {
        let content = "'common word ' || s || CASE WHEN s % 1000 = 500 THEN ' zebra' ELSE '' END";
        fill(&db, room, author, 6000, content).await;
    }
    // Other talk, in 200 words: the planner estimates a prefix from the most common lexemes only
    // when it knows at least 100 of them, as any real table's messages give it.
    let elsewhere = app.room(&bob, "elsewhere", &[]).await;
    fill(&db, elsewhere, bob.id, 2000, "'talk t' || (s % 200)").await;
    sqlx::query("ANALYZE messages").execute(&db).await.unwrap();
    let estimate = |q: &'static str| {
        let db = db.clone();
        async move {
            sqlx::query_scalar::<_, Option<i64>>(
                "SELECT search_match_estimate(to_tsquery('simple', $1))",
            )
            .bind(q)
            .fetch_one(&db)
            .await
            .unwrap()
            .unwrap_or(-1)
        }
    };
    let (common, rare) = (estimate("common:*").await, estimate("zebra:*").await);
    assert!(
        (9_000..=15_000).contains(&common),
        "12,000 messages hold `common`, estimated {common}"
    );
    assert!(rare < 500, "12 messages hold `zebra`, estimated {rare}");

    let found = search(&app, &alice, "q=common+wor&limit=3").await;
    assert_eq!(
        contents(&found),
        vec!["common word 6000", "common word 5999", "common word 5998"],
        "only alice's room, newest first"
    );
    assert_eq!(found["has_more"], true);
    let id = found["messages"][2]["id"].as_str().unwrap();
    let next = search(&app, &alice, &format!("q=common&limit=2&before_id={id}")).await;
    assert_eq!(
        contents(&next),
        vec!["common word 5997", "common word 5996"]
    );
    let one = search(
        &app,
        &alice,
        &format!("q=common&limit=2&chat_type=room&chat_id={theirs}&before_seq=10"),
    )
    .await;
    assert_eq!(contents(&one), vec!["common word 9", "common word 8"]);

    let found = search(&app, &alice, "q=zebra&limit=2").await;
    assert_eq!(
        contents(&found),
        vec!["common word 5500 zebra", "common word 4500 zebra"]
    );
    assert_eq!(found["has_more"], true);
    let one = search(
        &app,
        &alice,
        &format!("q=zebra&limit=5&chat_type=room&chat_id={theirs}&before_seq=3000"),
    )
    .await;
    assert_eq!(
        contents(&one),
        vec![
            "common word 2500 zebra",
            "common word 1500 zebra",
            "common word 500 zebra"
        ]
    );
}

/// A common word across more conversations than one merging statement walks (128): the
/// newest matches of all of them, interleaved in time, come out in one order, page after page,
/// whichever statement found them; a deleted match and a room the caller is not in never.
#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn common_words_across_many_conversations_merge_newest_first(db: PgPool) {
    const ROOMS: i64 = 140;
    // Few enough pages of 100 for the search rate's burst.
    const PER_ROOM: i64 = 5;
    let app = spawn_app(db.clone()).await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    // Rooms made in SQL (140 creations would meet the per-user room quota), each alice's.
    let rooms: Vec<Uuid> = sqlx::query_scalar(
        "WITH made AS (
             INSERT INTO rooms (id, name, created_by)
             SELECT gen_random_uuid(), 'many ' || r, $1 FROM generate_series(0, $2 - 1) AS r
             RETURNING id, name)
         SELECT id FROM made ORDER BY substring(name FROM 6)::int",
    )
    .bind(alice.id)
    .bind(ROOMS)
    .fetch_all(&db)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO conversations (id, chat_type, room_id) SELECT r, 'ROOM', r FROM unnest($1::uuid[]) AS r",
    )
    .bind(&rooms)
    .execute(&db)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO conversation_members (conversation_id, user_id)
         SELECT r, $2 FROM unnest($1::uuid[]) AS r",
    )
    .bind(&rooms)
    .bind(alice.id)
    .execute(&db)
    .await
    .unwrap();
    // Message `s` of room `r` is number `s * 140 + r` in time: every room takes a turn.
    sqlx::query(
        "INSERT INTO messages (id, conversation_id, seq, from_user_id, room_id, content, message_type, chat_type, created_at)
         SELECT gen_random_uuid(), rooms.id, s, $2, rooms.id, 'common ' || (s * $3 + rooms.n - 1),
                'TEXT', 'ROOM', now() - make_interval(secs => (($4 - s) * $3 + $3 - rooms.n)::double precision)
         FROM unnest($1::uuid[]) WITH ORDINALITY AS rooms(id, n) CROSS JOIN generate_series(1, $4) AS s",
    )
    .bind(&rooms)
    .bind(alice.id)
    .bind(ROOMS)
    .bind(PER_ROOM)
    .execute(&db)
    .await
    .unwrap();
    sqlx::query("UPDATE conversations SET last_seq = $2 WHERE id = ANY($1)")
        .bind(&rooms)
        .bind(PER_ROOM)
        .execute(&db)
        .await
        .unwrap();
    // Newer than all of them, in a room alice is not in; and other talk, for the estimates.
    let theirs = app.room(&bob, "theirs", &[]).await;
    fill(&db, theirs, bob.id, 100, "'common word ' || s").await;
    let elsewhere = app.room(&bob, "elsewhere", &[]).await;
    fill(&db, elsewhere, bob.id, 2000, "'talk t' || (s % 200)").await;
    // The newest match of all is deleted.
    sqlx::query("UPDATE messages SET is_deleted = true, content = '' WHERE content = $1")
        .bind(format!("common {}", PER_ROOM * ROOMS + ROOMS - 1))
        .execute(&db)
        .await
        .unwrap();
    sqlx::query("ANALYZE messages").execute(&db).await.unwrap();

    let expected = |from: i64, n: i64| -> Vec<String> {
        (0..n).map(|i| format!("common {}", from - i)).collect()
    };
    let newest = PER_ROOM * ROOMS + ROOMS - 2;
    let mut page = search(&app, &alice, "q=common&limit=30").await;
    assert_eq!(contents(&page), expected(newest, 30));
    let mut seen = 30;
    while page["has_more"] == true {
        let id = page["messages"].as_array().unwrap().last().unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned();
        page = search(&app, &alice, &format!("q=common&limit=100&before_id={id}")).await;
        let got = contents(&page);
        assert_eq!(
            got,
            expected(newest - seen, got.len() as i64),
            "after {seen}"
        );
        seen += got.len() as i64;
    }
    assert_eq!(
        seen,
        PER_ROOM * ROOMS - 1,
        "every match once, the deleted one never"
    );
}

/// Rows wait in the search index's pending list until merged; the background task merges them
/// (so no send's insert has to), and [`flush`] finds nothing to do when the index is gone.
#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn the_pending_list_is_merged_off_the_send_path(db: PgPool) {
    use chat_service::search_index::flush;

    let app = spawn_app(db.clone()).await;
    let alice = app.user("alice").await;
    let room = app.room(&alice, "mine", &[]).await;
    sqlx::query("CREATE EXTENSION IF NOT EXISTS pgstattuple")
        .execute(&db)
        .await
        .unwrap();
    let pending = || async {
        sqlx::query_scalar::<_, i32>(
            "SELECT pending_pages FROM pgstatginindex('messages_search_idx')",
        )
        .fetch_one(&db)
        .await
        .unwrap()
    };
    fill(&db, room, alice.id, 3000, "'pending word ' || s").await;
    // Well under the 4 MB limit, no insert merges them: left alone they would wait for
    // autovacuum. The app's own task merges them within its period.
    let deadline = std::time::Instant::now() + chat_service::search_index::FLUSH_EVERY * 3;
    while pending().await > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the background task merged nothing"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(flush(&db).await.unwrap(), Some(0), "nothing left to merge");
    let found = search(&app, &alice, "q=pending&limit=1").await;
    assert_eq!(
        contents(&found),
        vec!["pending word 3000"],
        "merged rows are found"
    );
    sqlx::query("DROP INDEX messages_search_idx")
        .execute(&db)
        .await
        .unwrap();
    assert_eq!(
        flush(&db).await.unwrap(),
        None,
        "no index: nothing to do, no error"
    );
}

/// Searching can read thousands of rows a query: each user has a rate (429 past it, with
/// `Retry-After`), others keep theirs, and a malformed query costs no token.
#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn searches_are_limited_per_user(db: PgPool) {
    let app = crate::helpers::spawn_app_with(db, &format!("test:{}:", Uuid::new_v4()), |c| {
        c.search.rate = shared::limits::Rate {
            per_second: 1,
            burst: 3,
        }
    })
    .await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    for _ in 0..5 {
        let r = app.get(&alice, "/chat/search?q=%21%21").await;
        assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    }
    for _ in 0..3 {
        search(&app, &alice, "q=hello").await;
    }
    let r = app.get(&alice, "/chat/search?q=hello").await;
    assert!(r.headers().contains_key("retry-after"));
    assert_error(r, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
    search(&app, &bob, "q=hello").await;
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    search(&app, &alice, "q=hello").await;
}

/// Past `SEARCH_MAX_IN_FLIGHT` searches at once, a search is refused at once (503 `busy`,
/// `Retry-After`) rather than queued for the database; history still answers.
#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn searches_past_the_bound_are_shed(db: PgPool) {
    let app = crate::helpers::spawn_app_with(db, &format!("test:{}:", Uuid::new_v4()), |c| {
        c.search.max_in_flight = 0
    })
    .await;
    let alice = app.user("alice").await;
    let room = app.room(&alice, "r", &[]).await;
    let r = app.get(&alice, "/chat/search?q=hello").await;
    assert!(r.headers().contains_key("retry-after"));
    assert_error(r, StatusCode::SERVICE_UNAVAILABLE, "busy").await;
    let r = app
        .get(&alice, &format!("/chat/messages/room/{room}"))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
}
