//! The message pipeline: validated sends in, persisted messages out. REST sends and bus sends
//! both come through [`persist`], which takes a whole batch in one transaction:
//!
//! 1. sends whose `(sender, client_id)` is already stored resolve to the stored message
//!    (idempotency), as do repeats within the batch;
//! 2. `reply_to_id` must name a message of the same conversation;
//! 3. each conversation's counter is advanced once by the number of new messages, locking its
//!    row until commit (rows are locked in id order, so concurrent batches cannot deadlock);
//! 4. one multi-row `INSERT … SELECT unnest(…)` writes every message;
//! 5. senders' read positions move to their own newest message.
//!
//! Should a concurrent send with the same `client_id` win the race, the insert comes back short;
//! the transaction is rolled back (so no seq is lost) and the batch retried, when step 1 finds it.

use std::collections::{BTreeMap, HashMap};

use shared::{
    chat::{Message, MessageType},
    ApiError,
};
use sqlx::PgPool;
use uuid::Uuid;

use crate::{
    conversation::Conversation,
    model::{self, MessageRow},
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

/// Content rules of the contract: 1 to `max_chars` characters; an image is an http(s) URL.
pub fn check_content(
    content: &str,
    message_type: MessageType,
    max_chars: usize,
) -> Result<(), String> {
    let chars = content.chars().count();
    if content.trim().is_empty() || chars > max_chars {
        return Err(format!("must be 1 to {max_chars} characters"));
    }
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
        Ok(())
    } else {
        Err("must be 1 to 128 characters".into())
    }
}

const ATTEMPTS: usize = 3;

/// Persists `drafts` in one transaction; one result per draft, in order.
pub async fn persist(
    db: &PgPool,
    drafts: &[Draft],
) -> Result<Vec<Result<Outcome, ApiError>>, ApiError> {
    for _ in 0..ATTEMPTS {
        match try_persist(db, drafts).await? {
            Some(results) => return Ok(results),
            None => metrics::counter!("chat_persist_retries_total").increment(1),
        }
    }
    Err(ApiError::internal("concurrent duplicate sends kept racing"))
}

/// `None` when a concurrent duplicate made the insert come back short (then nothing was written).
async fn try_persist(
    db: &PgPool,
    drafts: &[Draft],
) -> Result<Option<Vec<Result<Outcome, ApiError>>>, ApiError> {
    let mut results: Vec<Option<Result<Outcome, ApiError>>> =
        (0..drafts.len()).map(|_| None).collect();

    // 1. Idempotency: what is stored already.
    let keyed: Vec<(Uuid, String)> = drafts
        .iter()
        .filter_map(|d| d.client_id.clone().map(|c| (d.sender, c)))
        .collect();
    let mut stored: HashMap<(Uuid, String), Message> = HashMap::new();
    if !keyed.is_empty() {
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

    if !new.is_empty() {
        let mut per_conversation: BTreeMap<Uuid, Vec<usize>> = BTreeMap::new();
        for &i in &new {
            per_conversation
                .entry(drafts[i].conversation.id)
                .or_default()
                .push(i);
        }
        let mut tx = db.begin().await?;
        // 3. Sequence numbers, conversation by conversation in id order (so concurrent batches
        // cannot deadlock); each row stays locked until commit.
        let mut seqs: Vec<i64> = vec![0; drafts.len()];
        for (conversation_id, members) in &per_conversation {
            let n = i64::try_from(members.len()).map_err(ApiError::internal)?;
            let last = sqlx::query_scalar!(
                r#"UPDATE conversations SET last_seq = last_seq + $2, last_message_at = now()
                   WHERE id = $1 RETURNING last_seq"#,
                conversation_id,
                n
            )
            .fetch_one(&mut *tx)
            .await?;
            for (k, &i) in members.iter().enumerate() {
                seqs[i] = last - n + 1 + k as i64;
            }
        }

        // 4. One insert for the whole batch.
        let mut ids = Vec::with_capacity(new.len());
        let mut conversation_ids = Vec::with_capacity(new.len());
        let mut seq_col = Vec::with_capacity(new.len());
        let mut senders = Vec::with_capacity(new.len());
        let mut to_users: Vec<Option<Uuid>> = Vec::with_capacity(new.len());
        let mut rooms: Vec<Option<Uuid>> = Vec::with_capacity(new.len());
        let mut groups: Vec<Option<Uuid>> = Vec::with_capacity(new.len());
        let mut contents = Vec::with_capacity(new.len());
        let mut message_types = Vec::with_capacity(new.len());
        let mut chat_types = Vec::with_capacity(new.len());
        let mut replies: Vec<Option<Uuid>> = Vec::with_capacity(new.len());
        let mut client_ids: Vec<Option<String>> = Vec::with_capacity(new.len());
        for &i in &new {
            let d = &drafts[i];
            ids.push(Uuid::now_v7());
            conversation_ids.push(d.conversation.id);
            seq_col.push(seqs[i]);
            senders.push(d.sender);
            to_users.push(d.conversation.peer());
            rooms.push(d.conversation.room_id());
            groups.push(d.conversation.group_id());
            contents.push(d.content.clone());
            message_types.push(d.message_type.as_db().to_owned());
            chat_types.push(d.conversation.chat_type.as_db().to_owned());
            replies.push(d.reply_to_id);
            client_ids.push(d.client_id.clone());
        }
        let rows = sqlx::query_as!(
            MessageRow,
            r#"INSERT INTO messages (id, conversation_id, seq, from_user_id, to_user_id, room_id,
                                     group_id, content, message_type, chat_type, reply_to_id, client_id)
               SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::bigint[], $4::uuid[], $5::uuid[],
                                    $6::uuid[], $7::uuid[], $8::text[], $9::text[], $10::text[],
                                    $11::uuid[], $12::text[])
               ON CONFLICT (from_user_id, client_id) WHERE client_id IS NOT NULL DO NOTHING
               RETURNING *"#,
            &ids,
            &conversation_ids,
            &seq_col,
            &senders,
            &to_users as &[Option<Uuid>],
            &rooms as &[Option<Uuid>],
            &groups as &[Option<Uuid>],
            &contents,
            &message_types,
            &chat_types,
            &replies as &[Option<Uuid>],
            &client_ids as &[Option<String>]
        )
        .fetch_all(&mut *tx)
        .await?;
        if rows.len() != new.len() {
            tx.rollback().await?;
            return Ok(None);
        }

        // 5. A sender has read up to their own newest message.
        let mut newest: HashMap<(Uuid, Uuid), i64> = HashMap::new();
        for &i in &new {
            let key = (drafts[i].conversation.id, drafts[i].sender);
            let seq = newest.entry(key).or_insert(0);
            *seq = (*seq).max(seqs[i]);
        }
        let (keys, read_seqs): (Vec<(Uuid, Uuid)>, Vec<i64>) = newest.into_iter().unzip();
        let (read_conversations, read_users): (Vec<Uuid>, Vec<Uuid>) = keys.into_iter().unzip();
        sqlx::query!(
            r#"UPDATE conversation_members m SET last_read_seq = GREATEST(m.last_read_seq, t.seq)
               FROM unnest($1::uuid[], $2::uuid[], $3::bigint[]) AS t(conversation_id, user_id, seq)
               WHERE m.conversation_id = t.conversation_id AND m.user_id = t.user_id"#,
            &read_conversations,
            &read_users,
            &read_seqs
        )
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;

        let by_id: HashMap<Uuid, MessageRow> = rows.into_iter().map(|r| (r.id, r)).collect();
        for (k, &i) in new.iter().enumerate() {
            let row = by_id
                .get(&ids[k])
                .cloned()
                .ok_or_else(|| ApiError::internal("an inserted message was not returned"))?;
            results[i] = Some(Ok(Outcome::Created(Message::try_from(row)?)));
        }
        metrics::counter!("chat_messages_persisted_total").increment(new.len() as u64);
    }

    for (i, first) in repeats {
        let repeated = match &results[first] {
            Some(Ok(outcome)) => Ok(Outcome::Existing(outcome.message().clone())),
            Some(Err(e)) => Err(ApiError::new(e.status, e.code, e.detail.clone())),
            None => Err(ApiError::internal("a repeated send has no original")),
        };
        results[i] = Some(repeated);
    }
    Ok(Some(
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(ApiError::internal("a draft was left unprocessed"))))
            .collect(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_rules() {
        assert!(check_content("hi", MessageType::Text, 4000).is_ok());
        assert!(check_content("", MessageType::Text, 4000).is_err());
        assert!(check_content("   ", MessageType::Text, 4000).is_err());
        assert!(check_content(&"é".repeat(4000), MessageType::Text, 4000).is_ok());
        assert!(check_content(&"é".repeat(4001), MessageType::Text, 4000).is_err());
        assert!(check_content("https://cdn.example.com/cat.png", MessageType::Image, 4000).is_ok());
        assert!(check_content("cat.png", MessageType::Image, 4000).is_err());
        assert!(check_content("javascript:alert(1)", MessageType::Image, 4000).is_err());
    }
}
