//! The message pipeline: validated sends in, persisted messages out. REST sends and bus sends
//! both come through [`persist`], which writes a whole batch in one statement (one round trip,
//! its own transaction):
//!
//! 1. sends whose `(sender, client_id)` is already stored resolve to the stored message
//!    (idempotency), as do repeats within the batch — looked up only after a first attempt met
//!    a duplicate;
//! 2. `reply_to_id` must name a message of the same conversation;
//! 3. every conversation's counter is advanced by its number of new messages, locking its row
//!    until commit (rows are locked in id order, so concurrent batches cannot deadlock);
//! 4. one multi-row `INSERT … SELECT unnest(…)` writes every message;
//! 5. senders' read positions move to their own newest message.
//!
//! A duplicate `client_id` (a redelivery, or a concurrent send that won the race) fails the
//! statement whole, so no seq is used; the batch is retried, when step 1 finds it.

use std::collections::HashMap;

use shared::{
    chat::{Message, MessageType},
    ApiError,
};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::{
    conversation::Conversation,
    model::{self, MessageRow},
    publish::{PublishTurn, Publisher},
};

/// A send that passed validation and authorization.
#[derive(Debug, Clone)]
pub struct Draft {
    pub sender: Uuid,
    pub conversation: Conversation,
    pub client_id: Option<String>,
    pub content: String,
    pub message_type: MessageType,
    pub reply_to_id: Option<Uuid>,
    /// The upload it carries, checked (`attachments::check_for_message`).
    pub attachment: Option<shared::chat::Attachment>,
    /// The checked copy of that upload the message serves (none for a send repeated after its
    /// message was stored): recorded on the upload in the statement that stores the message.
    pub attachment_file: Option<String>,
}

/// What became of one draft.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// Stored now.
    Created(Message),
    /// Stored before (same sender and `client_id`).
    Existing(Message),
}

impl Outcome {
    pub fn message(&self) -> &Message {
        match self {
            Outcome::Created(m) | Outcome::Existing(m) => m,
        }
    }
}

/// Content rules of the contract: 1 to `max_chars` characters; an image without an
/// attachment is an http(s) URL. With an attachment, `content` is a caption: 0 to `max_chars`.
pub fn check_content(
    content: &str,
    message_type: MessageType,
    attached: bool,
    max_chars: usize,
) -> Result<(), String> {
    let chars = content.chars().count();
    if attached {
        if chars > max_chars {
            return Err(format!("a caption is at most {max_chars} characters"));
        }
        return shared::text::check(content);
    }
    if content.trim().is_empty() || chars > max_chars {
        return Err(format!("must be 1 to {max_chars} characters"));
    }
    shared::text::check(content)?;
    if message_type == MessageType::Image {
        let rest = content
            .strip_prefix("https://")
            .or_else(|| content.strip_prefix("http://"));
        if !rest.is_some_and(|r| !r.is_empty() && !r.starts_with('/'))
            || content.chars().any(char::is_whitespace)
        {
            return Err("an image message must be an http(s) URL".into());
        }
    }
    Ok(())
}

/// A `client_id` is 1–128 characters.
pub fn check_client_id(client_id: &str) -> Result<(), String> {
    if (1..=128).contains(&client_id.chars().count()) {
        shared::text::check(client_id)
    } else {
        Err("must be 1 to 128 characters".into())
    }
}

/// Validates the fields of a send, naming each bad one. `attached`: it carries an
/// `attachment_id` (checked against the upload separately, see `attachments`).
pub fn check_send(
    content: &str,
    message_type: MessageType,
    attached: bool,
    client_id: Option<&str>,
    max_chars: usize,
) -> Result<(), ApiError> {
    let mut problems = std::collections::BTreeMap::new();
    if let Err(p) = check_content(content, message_type, attached, max_chars) {
        problems.insert("content".to_owned(), p);
    }
    match (attached, message_type) {
        (true, MessageType::Text) => {
            problems.insert(
                "message_type".to_owned(),
                "must be file or image with an attachment_id".to_owned(),
            );
        }
        (false, MessageType::File) => {
            problems.insert(
                "attachment_id".to_owned(),
                "is needed for a file message".to_owned(),
            );
        }
        _ => {}
    }
    if let Some(Err(p)) = client_id.map(check_client_id) {
        problems.insert("client_id".to_owned(), p);
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(ApiError::validation(problems))
    }
}

const ATTEMPTS: usize = 3;

/// One result per draft, in order, and, when something was written, the publisher's turn:
/// publish the new messages' events before dropping it.
pub struct Persisted {
    pub results: Vec<Result<Outcome, ApiError>>,
    pub turn: Option<PublishTurn>,
}

/// Persists `drafts` in one statement, run in `publisher`'s turn. The first attempt assumes
/// no draft is stored yet (the common case: redeliveries are rare); a duplicate `client_id`
/// makes the statement fail whole (nothing written, no seq used), and the next attempt first
/// looks up what is stored.
pub async fn persist(
    db: &PgPool,
    publisher: &Publisher,
    drafts: &[Draft],
) -> Result<Persisted, ApiError> {
    persist_on(db, None, publisher, drafts).await
}

/// As [`persist`], the statement on `writer` when given (a connection the caller keeps), else
/// on one of `db`'s. After an error `writer` may hold a rolled-back transaction's `ROLLBACK`
/// unsent: give it back to the pool, which flushes it.
pub async fn persist_on(
    db: &PgPool,
    mut writer: Option<&mut PgConnection>,
    publisher: &Publisher,
    drafts: &[Draft],
) -> Result<Persisted, ApiError> {
    let mut check_stored = false;
    for _ in 0..ATTEMPTS {
        match try_persist(db, writer.as_deref_mut(), publisher, drafts, check_stored).await? {
            Some(persisted) => return Ok(persisted),
            None => {
                metrics::counter!("chat_persist_retries_total").increment(1);
                check_stored = true;
            }
        }
    }
    Err(ApiError::internal("concurrent duplicate sends kept racing"))
}

/// Whether `e` is a duplicate `(from_user_id, client_id)`.
fn is_duplicate_send(e: &sqlx::Error) -> bool {
    e.as_database_error().is_some_and(|d| {
        d.is_unique_violation() && d.constraint() == Some("messages_sender_client_id_key")
    })
}

/// `None` when a draft turned out to be stored already (then nothing was written).
async fn try_persist(
    db: &PgPool,
    writer: Option<&mut PgConnection>,
    publisher: &Publisher,
    drafts: &[Draft],
    check_stored: bool,
) -> Result<Option<Persisted>, ApiError> {
    let mut results: Vec<Option<Result<Outcome, ApiError>>> =
        (0..drafts.len()).map(|_| None).collect();

    // 1. Idempotency: what is stored already (after a first attempt met a duplicate).
    let keyed: Vec<(Uuid, String)> = drafts
        .iter()
        .filter_map(|d| d.client_id.clone().map(|c| (d.sender, c)))
        .collect();
    let mut stored: HashMap<(Uuid, String), Message> = HashMap::new();
    if check_stored && !keyed.is_empty() {
        let (senders, client_ids): (Vec<Uuid>, Vec<String>) = keyed.iter().cloned().unzip();
        let rows = sqlx::query_as!(
            MessageRow,
            r#"SELECT * FROM messages
               WHERE (from_user_id, client_id) IN (SELECT * FROM unnest($1::uuid[], $2::text[]))"#,
            &senders,
            &client_ids
        )
        .fetch_all(db)
        .await?;
        for m in model::messages(rows)? {
            if let Some(c) = m.client_id.clone() {
                stored.insert((m.from_user_id, c), m);
            }
        }
    }

    // 2. Replies must stay within their conversation.
    let reply_ids: Vec<Uuid> = drafts.iter().filter_map(|d| d.reply_to_id).collect();
    let reply_conversations: HashMap<Uuid, Uuid> = if reply_ids.is_empty() {
        HashMap::new()
    } else {
        sqlx::query!(
            "SELECT id, conversation_id FROM messages WHERE id = ANY($1)",
            &reply_ids
        )
        .fetch_all(db)
        .await?
        .into_iter()
        .map(|r| (r.id, r.conversation_id))
        .collect()
    };

    // Which drafts are new, and which repeat an earlier draft of this batch.
    let mut first_of: HashMap<(Uuid, String), usize> = HashMap::new();
    let mut repeats: Vec<(usize, usize)> = Vec::new();
    let mut new: Vec<usize> = Vec::new();
    for (i, d) in drafts.iter().enumerate() {
        if let Some(reply) = d.reply_to_id {
            if reply_conversations.get(&reply) != Some(&d.conversation.id) {
                results[i] = Some(Err(ApiError::invalid_field(
                    "reply_to_id",
                    "must be a message of the same conversation",
                )));
                continue;
            }
        }
        if let Some(c) = &d.client_id {
            let key = (d.sender, c.clone());
            if let Some(m) = stored.get(&key) {
                results[i] = Some(Ok(Outcome::Existing(m.clone())));
                continue;
            }
            if let Some(&first) = first_of.get(&key) {
                repeats.push((i, first));
                continue;
            }
            first_of.insert(key, i);
        }
        new.push(i);
    }

    let mut turn = None;
    if !new.is_empty() {
        let ids: Vec<Uuid> = new.iter().map(|_| Uuid::now_v7()).collect();
        // Mentions are resolved before the statement (one query, and none when no content has
        // an `@`).
        let items: Vec<(Uuid, shared::chat::ChatType, &str)> = new
            .iter()
            .map(|&i| {
                let d = &drafts[i];
                (
                    d.conversation.id,
                    d.conversation.chat_type,
                    d.content.as_str(),
                )
            })
            .collect();
        let mentions = crate::mentions::resolve(db, &items).await?;
        let all: Vec<(&Draft, Uuid, &crate::mentions::Mentions)> = new
            .iter()
            .zip(&ids)
            .zip(&mentions)
            .map(|((&i, &id), m)| (&drafts[i], id, m))
            .collect();
        // 3–5 in one statement (see `insert`), a transaction of its own (no `BEGIN`, no
        // `COMMIT`: two round trips fewer), run in the publisher's turn, which is held until
        // the events are queued: this process publishes in commit order. Nothing waits for the
        // turn while holding a row lock, so its holder may wait for one.
        let waiting = std::time::Instant::now();
        let my_turn = publisher.turn().await;
        metrics::histogram!("chat_send_stage_seconds", "stage" => "turn")
            .record(waiting.elapsed().as_secs_f64());
        let mut pooled: Option<sqlx::pool::PoolConnection<sqlx::Postgres>> = None;
        let conn: &mut PgConnection = match writer {
            Some(conn) => conn,
            None => pooled.insert(db.acquire().await?),
        };
        let rows = match insert(conn, &all).await {
            Ok(rows) => rows,
            Err(e) if is_duplicate_send(&e) => return Ok(None),
            Err(e) if shared::error::is_transient(&e) => return Err(e.into()),
            Err(e) => {
                // Something in the batch the database refuses for good. It must not take the
                // others down: store them one by one, each behind a savepoint, in one
                // transaction (in the same turn), and refuse the ones that fail.
                tracing::warn!(error = %e, drafts = all.len(), "a send batch was refused; storing its sends one by one");
                metrics::counter!("chat_send_batches_isolated_total").increment(1);
                let mut tx = sqlx::Connection::begin(&mut *conn).await?;
                let mut rows = Vec::with_capacity(all.len());
                for (k, one) in all.iter().enumerate() {
                    sqlx::query("SAVEPOINT one_send").execute(&mut *tx).await?;
                    match insert(&mut tx, std::slice::from_ref(one)).await {
                        Ok(mut row) => rows.append(&mut row),
                        Err(e) if is_duplicate_send(&e) => {
                            tx.rollback().await?;
                            return Ok(None);
                        }
                        Err(e) if shared::error::is_transient(&e) => return Err(e.into()),
                        Err(e) => {
                            tracing::warn!(error = %e, sender = %one.0.sender, "a send was refused by the database");
                            metrics::counter!("chat_sends_refused_total", "reason" => "database")
                                .increment(1);
                            sqlx::query("ROLLBACK TO SAVEPOINT one_send")
                                .execute(&mut *tx)
                                .await?;
                            results[new[k]] = Some(Err(ApiError::send_failed(
                                "the message could not be stored",
                            )));
                        }
                    }
                }
                tx.commit().await?;
                rows
            }
        };
        turn = Some(my_turn);
        // A draft without a row: its conversation was deleted meanwhile (the rest were
        // written, with gap-free seqs). Only what the database chose comes back (seq, the
        // commit-time created_at); the rest of each message is the draft as written.
        let written = rows.len() as u64;
        let mut by_id: HashMap<Uuid, (i64, chrono::DateTime<chrono::Utc>)> = rows
            .into_iter()
            .map(|r| (r.id, (r.seq, r.created_at)))
            .collect();
        for (k, &i) in new.iter().enumerate() {
            if results[i].is_some() {
                continue;
            }
            let d = &drafts[i];
            results[i] = Some(match by_id.remove(&ids[k]) {
                Some((seq, created_at)) => Ok(Outcome::Created(Message {
                    id: ids[k],
                    seq,
                    chat_type: d.conversation.chat_type,
                    from_user_id: d.sender,
                    to_user_id: d.conversation.peer(),
                    room_id: d.conversation.room_id(),
                    group_id: d.conversation.group_id(),
                    content: d.content.clone(),
                    message_type: d.message_type,
                    reply_to_id: d.reply_to_id,
                    client_id: d.client_id.clone(),
                    is_edited: false,
                    is_deleted: false,
                    created_at,
                    edited_at: None,
                    reactions: Vec::new(),
                    mentions: mentions[k].users.clone(),
                    mentions_all: mentions[k].everyone,
                    attachment: d.attachment.clone(),
                })),
                None => Err(ApiError::not_found("the conversation no longer exists")),
            });
        }
        metrics::counter!("chat_messages_persisted_total").increment(written);
    }

    for (i, first) in repeats {
        let repeated = match &results[first] {
            Some(Ok(outcome)) => Ok(Outcome::Existing(outcome.message().clone())),
            Some(Err(e)) => Err(ApiError::new(e.status, e.code, e.detail.clone())),
            None => Err(ApiError::internal("a repeated send has no original")),
        };
        results[i] = Some(repeated);
    }
    Ok(Some(Persisted {
        results: results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(ApiError::internal("a draft was left unprocessed"))))
            .collect(),
        turn,
    }))
}

/// A row the database chose for a new message.
struct Written {
    id: Uuid,
    seq: i64,
    created_at: chrono::DateTime<chrono::Utc>,
}

/// Steps 3–5 for `new` (each draft with its message id) in one statement: lock the
/// conversations in id order (concurrent batches cannot deadlock), advance each counter by its
/// number of new messages, insert every message, move each sender's read position to their
/// newest message. A duplicate `client_id` fails it whole. A draft whose conversation was
/// deleted meanwhile gets no row.
async fn insert(
    conn: &mut PgConnection,
    new: &[(&Draft, Uuid, &crate::mentions::Mentions)],
) -> sqlx::Result<Vec<Written>> {
    // Each new message's place among the batch's new messages of its conversation (1, 2, …):
    // its seq is the conversation's last_seq before the batch plus that.
    let mut counts: HashMap<Uuid, i64> = HashMap::new();
    let mut ids = Vec::with_capacity(new.len());
    let mut conversation_ids = Vec::with_capacity(new.len());
    let mut places = Vec::with_capacity(new.len());
    let mut senders = Vec::with_capacity(new.len());
    let mut to_users: Vec<Option<Uuid>> = Vec::with_capacity(new.len());
    let mut rooms: Vec<Option<Uuid>> = Vec::with_capacity(new.len());
    let mut groups: Vec<Option<Uuid>> = Vec::with_capacity(new.len());
    let mut contents = Vec::with_capacity(new.len());
    let mut message_types = Vec::with_capacity(new.len());
    let mut chat_types = Vec::with_capacity(new.len());
    let mut replies: Vec<Option<Uuid>> = Vec::with_capacity(new.len());
    let mut client_ids: Vec<Option<String>> = Vec::with_capacity(new.len());
    // Arrays of arrays must be rectangular in Postgres: each message's mentions travel as one
    // comma-separated text, split back in the statement.
    let mut mentioned: Vec<String> = Vec::with_capacity(new.len());
    let mut everyone: Vec<bool> = Vec::with_capacity(new.len());
    let mut attachments: Vec<Option<Uuid>> = Vec::with_capacity(new.len());
    let mut attachment_files: Vec<Option<String>> = Vec::with_capacity(new.len());
    for &(d, id, m) in new {
        let place = counts.entry(d.conversation.id).or_insert(0);
        *place += 1;
        ids.push(id);
        conversation_ids.push(d.conversation.id);
        places.push(*place);
        senders.push(d.sender);
        to_users.push(d.conversation.peer());
        rooms.push(d.conversation.room_id());
        groups.push(d.conversation.group_id());
        contents.push(d.content.clone());
        message_types.push(d.message_type.as_db().to_owned());
        chat_types.push(d.conversation.chat_type.as_db().to_owned());
        replies.push(d.reply_to_id);
        client_ids.push(d.client_id.clone());
        mentioned.push(
            m.users
                .iter()
                .map(Uuid::to_string)
                .collect::<Vec<_>>()
                .join(","),
        );
        everyone.push(m.everyone);
        attachments.push(d.attachment.as_ref().map(|a| a.id));
        attachment_files.push(d.attachment_file.clone());
    }
    let rows = sqlx::query!(
        r#"WITH input AS (
                   SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::bigint[], $4::uuid[],
                                        $5::uuid[], $6::uuid[], $7::uuid[], $8::text[], $9::text[],
                                        $10::text[], $11::uuid[], $12::text[], $13::text[],
                                        $14::bool[], $15::uuid[], $16::text[])
                       AS t(id, conversation_id, place, from_user_id, to_user_id, room_id,
                            group_id, content, message_type, chat_type, reply_to_id, client_id,
                            mentions, mentions_all, attachment_id, attachment_file)
               ),
               counts AS (
                   SELECT conversation_id, count(*) AS n FROM input GROUP BY conversation_id
               ),
               locked AS (
                   SELECT c.id FROM conversations c
                   WHERE c.id IN (SELECT conversation_id FROM counts)
                   ORDER BY c.id FOR NO KEY UPDATE
               ),
               bumped AS (
                   UPDATE conversations c
                   SET last_seq = c.last_seq + counts.n, last_message_at = now()
                   FROM counts
                   WHERE c.id = counts.conversation_id AND c.id IN (SELECT id FROM locked)
                   RETURNING c.id, c.last_seq - counts.n AS base
               ),
               inserted AS (
                   INSERT INTO messages (id, conversation_id, seq, from_user_id, to_user_id,
                                         room_id, group_id, content, message_type, chat_type,
                                         reply_to_id, client_id, mentions, mentions_all,
                                         attachment_id)
                   SELECT i.id, i.conversation_id, b.base + i.place, i.from_user_id, i.to_user_id,
                          i.room_id, i.group_id, i.content, i.message_type, i.chat_type,
                          i.reply_to_id, i.client_id,
                          string_to_array(i.mentions, ',')::uuid[], i.mentions_all,
                          i.attachment_id
                   FROM input i JOIN bumped b ON b.id = i.conversation_id
                   RETURNING id, conversation_id, from_user_id, seq, created_at, attachment_id
               ),
               -- An upload is used once: the unique index on messages.attachment_id refuses a
               -- second message with it (the batch then stores its sends one by one). The
               -- message serves the copy its send checked.
               used AS (
                   UPDATE uploads u SET used_at = now(), file_key = i.attachment_file
                   FROM inserted n JOIN input i ON i.id = n.id
                   WHERE u.id = n.attachment_id
               ),
               -- The senders' array restricts `m` before the join (through the members'
               -- (user_id, conversation_id) index): without it, a members table small enough
               -- to look cheap to scan was read whole (and hashed) on every batch. Not the
               -- conversations' array too: then Postgres may search the index once per pair
               -- of the two arrays' elements.
               read_positions AS (
                   UPDATE conversation_members m
                   SET last_read_seq = GREATEST(m.last_read_seq, r.seq)
                   FROM (SELECT conversation_id, from_user_id, max(seq) AS seq
                         FROM inserted GROUP BY conversation_id, from_user_id) r
                   WHERE m.conversation_id = r.conversation_id AND m.user_id = r.from_user_id
                     AND m.user_id = ANY($4::uuid[])
               )
               SELECT id AS "id!", seq AS "seq!", created_at AS "created_at!"
               FROM inserted"#,
        &ids,
        &conversation_ids,
        &places,
        &senders,
        &to_users as &[Option<Uuid>],
        &rooms as &[Option<Uuid>],
        &groups as &[Option<Uuid>],
        &contents,
        &message_types,
        &chat_types,
        &replies as &[Option<Uuid>],
        &client_ids as &[Option<String>],
        &mentioned,
        &everyone,
        &attachments as &[Option<Uuid>],
        &attachment_files as &[Option<String>]
    )
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| Written {
            id: r.id,
            seq: r.seq,
            created_at: r.created_at,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_rules() {
        assert!(check_content("hi", MessageType::Text, false, 4000).is_ok());
        assert!(check_content("", MessageType::Text, false, 4000).is_err());
        assert!(check_content("   ", MessageType::Text, false, 4000).is_err());
        assert!(check_content(&"é".repeat(4000), MessageType::Text, false, 4000).is_ok());
        assert!(check_content(&"é".repeat(4001), MessageType::Text, false, 4000).is_err());
        // A caption may be empty; not too long.
        assert!(check_content("", MessageType::File, true, 4000).is_ok());
        assert!(check_content(&"é".repeat(4001), MessageType::File, true, 4000).is_err());
        assert!(check_content(
            "https://cdn.example.com/cat.png",
            MessageType::Image,
            false,
            4000
        )
        .is_ok());
        assert!(check_content("cat.png", MessageType::Image, false, 4000).is_err());
        assert!(check_content("javascript:alert(1)", MessageType::Image, false, 4000).is_err());
        assert!(check_content("a\u{0}b", MessageType::Text, false, 4000).is_err());
        assert!(check_content("line\nnext\ttab", MessageType::Text, false, 4000).is_ok());
        assert!(check_client_id("c\u{1b}").is_err());
    }
}
