//! From a `(chat_type, chat_id)` path to a conversation, and who may read or write it.
//!
//! - A room: any authenticated user may read it; only members may send or mark read.
//! - A group: only members may read, send or mark read (403 for others, 404 when no such group).
//! - A private chat: `chat_id` is the other user (404 when no such user). The conversation row is
//!   created with the first message; before that it reads as empty. Starting one counts
//!   against its sender's [`NewPrivateChats`] quota.

use shared::{chat::ChatType, ApiError};
use sqlx::{PgConnection, PgExecutor, PgPool};
use uuid::Uuid;

/// The quota on private chats one user starts (`PRIVATE_CHATS_PER_HOUR`): a first message to
/// someone counts once against its sender, in Redis like the other creation quotas; messages
/// to people already talked to, and answers to whoever started a chat, never count. Past it,
/// 429 `too_many_requests` with `Retry-After` (the hour's remaining time; over the socket,
/// `rate_limited` with `retry_after_ms`).
#[derive(Clone, Copy)]
pub struct NewPrivateChats<'a> {
    pub redis: &'a fred::prelude::Client,
    pub keys: &'a shared::keys::Keys,
    pub per_hour: u32,
}

impl NewPrivateChats<'_> {
    fn key(&self, sender: Uuid) -> String {
        self.keys.quota("private_chats", &sender.to_string())
    }

    async fn count(&self, sender: Uuid) -> Result<(), ApiError> {
        shared::limits::quota(
            self.redis,
            self.key(sender),
            self.per_hour,
            3600,
            "too many new private chats in the last hour; try again later",
        )
        .await
    }

    /// Gives back the use [`Self::count`] took for a chat this send did not start after all.
    async fn give_back(&self, sender: Uuid) {
        shared::limits::refund(self.redis, self.key(sender)).await;
    }
}

/// A resolved conversation, seen from one user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conversation {
    pub id: Uuid,
    pub chat_type: ChatType,
    /// Rooms and groups: their id. Private chats: the other user.
    pub chat_id: Uuid,
    /// Whether the viewer is a member (private chats: always, once the row exists).
    pub is_member: bool,
}

impl Conversation {
    pub fn room_id(&self) -> Option<Uuid> {
        (self.chat_type == ChatType::Room).then_some(self.chat_id)
    }

    pub fn group_id(&self) -> Option<Uuid> {
        (self.chat_type == ChatType::Group).then_some(self.chat_id)
    }

    /// The recipient of a private message.
    pub fn peer(&self) -> Option<Uuid> {
        (self.chat_type == ChatType::Private).then_some(self.chat_id)
    }
}

/// Whether `user` is (still) a member of `conversation`.
pub async fn is_member(db: &PgPool, conversation: Uuid, user: Uuid) -> Result<bool, ApiError> {
    Ok(sqlx::query_scalar!(
        r#"SELECT EXISTS (SELECT 1 FROM conversation_members
                          WHERE conversation_id = $1 AND user_id = $2) AS "member!""#,
        conversation,
        user
    )
    .fetch_one(db)
    .await?)
}

/// The two users of a private chat in storage order.
pub fn pair(a: Uuid, b: Uuid) -> (Uuid, Uuid) {
    if a < b {
        (a, b)
    } else {
        (b, a)
    }
}

/// Resolves a room or group (they are their own conversation), checking it exists.
async fn shared_chat(
    db: impl PgExecutor<'_>,
    viewer: Uuid,
    chat_type: ChatType,
    chat_id: Uuid,
) -> Result<Conversation, ApiError> {
    let row = sqlx::query!(
        r#"SELECT c.chat_type,
                  EXISTS (SELECT 1 FROM conversation_members m
                          WHERE m.conversation_id = c.id AND m.user_id = $2) AS "is_member!"
           FROM conversations c WHERE c.id = $1"#,
        chat_id,
        viewer
    )
    .fetch_optional(db)
    .await?;
    match row {
        Some(r) if r.chat_type == chat_type.as_db() => Ok(Conversation {
            id: chat_id,
            chat_type,
            chat_id,
            is_member: r.is_member,
        }),
        _ => Err(ApiError::not_found(match chat_type {
            ChatType::Room => "no such room",
            _ => "no such group",
        })),
    }
}

/// Refuses (403 `blocked`) a send to the private chat of `peer` when `peer` blocked `sender`.
async fn check_not_blocked(db: &PgPool, sender: Uuid, peer: Uuid) -> Result<(), ApiError> {
    let blocked = sqlx::query_scalar!(
        r#"SELECT EXISTS (SELECT 1 FROM user_blocks
                          WHERE blocker_id = $1 AND blocked_id = $2) AS "blocked!""#,
        peer,
        sender
    )
    .fetch_one(db)
    .await?;
    if blocked {
        Err(ApiError::new(
            axum::http::StatusCode::FORBIDDEN,
            "blocked",
            "this user has blocked you",
        ))
    } else {
        Ok(())
    }
}

/// The 403 `muted` of a send to a room that muted the sender until `until`.
fn muted(until: chrono::DateTime<chrono::Utc>) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::FORBIDDEN,
        "muted",
        format!(
            "you are muted in this room until {}",
            until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        ),
    )
}

/// Refuses (403 `muted`) a send to a room that muted the sender.
async fn check_not_muted(db: &PgPool, sender: Uuid, room: Uuid) -> Result<(), ApiError> {
    let until = sqlx::query_scalar!(
        "SELECT until FROM room_mutes WHERE room_id = $1 AND user_id = $2 AND until > now()",
        room,
        sender
    )
    .fetch_optional(db)
    .await?;
    match until {
        Some(until) => Err(muted(until)),
        None => Ok(()),
    }
}

/// Checks that the other user of a private chat exists and is not the viewer.
async fn check_peer(db: &PgPool, viewer: Uuid, peer: Uuid) -> Result<(), ApiError> {
    if peer == viewer {
        return Err(ApiError::invalid_field(
            "chat_id",
            "a private chat needs another user",
        ));
    }
    let exists = sqlx::query_scalar!(
        r#"SELECT EXISTS (SELECT 1 FROM users WHERE id = $1 AND is_active) AS "exists!""#,
        peer
    )
    .fetch_one(db)
    .await?;
    if exists {
        Ok(())
    } else {
        Err(ApiError::not_found("no such user"))
    }
}

/// The existing private conversation of a pair.
async fn private_id(db: impl PgExecutor<'_>, a: Uuid, b: Uuid) -> sqlx::Result<Option<Uuid>> {
    let (low, high) = pair(a, b);
    sqlx::query_scalar!(
        "SELECT id FROM conversations WHERE user_low = $1 AND user_high = $2",
        low,
        high
    )
    .fetch_optional(db)
    .await
}

/// For reading history: the conversation, or `None` for a private chat with no message yet.
/// Groups refuse non-members with 403.
pub async fn for_reading(
    db: &PgPool,
    viewer: Uuid,
    chat_type: ChatType,
    chat_id: Uuid,
) -> Result<Option<Conversation>, ApiError> {
    match chat_type {
        ChatType::Room => shared_chat(db, viewer, chat_type, chat_id).await.map(Some),
        ChatType::Group => {
            let c = shared_chat(db, viewer, chat_type, chat_id).await?;
            if c.is_member {
                Ok(Some(c))
            } else {
                Err(ApiError::forbidden("you are not a member of this group"))
            }
        }
        ChatType::Private => {
            check_peer(db, viewer, chat_id).await?;
            Ok(private_id(db, viewer, chat_id)
                .await?
                .map(|id| Conversation {
                    id,
                    chat_type,
                    chat_id,
                    is_member: true,
                }))
        }
    }
}

/// For sending: rooms and groups need membership (403); a private chat is created on first use,
/// within the sender's `new_chats` quota.
pub async fn for_sending(
    db: &PgPool,
    new_chats: NewPrivateChats<'_>,
    sender: Uuid,
    chat_type: ChatType,
    chat_id: Uuid,
) -> Result<Conversation, ApiError> {
    match chat_type {
        ChatType::Room | ChatType::Group => {
            let c = shared_chat(db, sender, chat_type, chat_id).await?;
            if c.is_member {
                if chat_type == ChatType::Room {
                    check_not_muted(db, sender, chat_id).await?;
                }
                Ok(c)
            } else if chat_type == ChatType::Room {
                Err(ApiError::forbidden("join the room before sending to it"))
            } else {
                Err(ApiError::forbidden("you are not a member of this group"))
            }
        }
        ChatType::Private => {
            check_peer(db, sender, chat_id).await?;
            check_not_blocked(db, sender, chat_id).await?;
            let id = match private_id(db, sender, chat_id).await? {
                Some(id) => id,
                None => {
                    // Counted before creating, so two first messages at once cannot both slip
                    // under the limit; given back when this send did not start the chat (the
                    // other user started it at the same moment) or could not store it (a
                    // retried batch then counts it once, not twice).
                    new_chats.count(sender).await?;
                    match create_private(db, sender, chat_id).await {
                        Ok((id, true)) => id,
                        Ok((id, false)) => {
                            new_chats.give_back(sender).await;
                            id
                        }
                        Err(e) => {
                            new_chats.give_back(sender).await;
                            return Err(e.into());
                        }
                    }
                }
            };
            Ok(Conversation {
                id,
                chat_type,
                chat_id,
                is_member: true,
            })
        }
    }
}

/// Creates the private conversation of a pair (or finds the one a concurrent send created):
/// its id, and whether this call created it.
async fn create_private(db: &PgPool, a: Uuid, b: Uuid) -> sqlx::Result<(Uuid, bool)> {
    let (low, high) = pair(a, b);
    let mut tx = db.begin().await?;
    let created = sqlx::query!(
        r#"INSERT INTO conversations (id, chat_type, user_low, user_high)
           VALUES ($1, 'PRIVATE', $2, $3)
           ON CONFLICT (user_low, user_high) DO NOTHING"#,
        Uuid::now_v7(),
        low,
        high
    )
    .execute(&mut *tx)
    .await?
    .rows_affected()
        == 1;
    let id = sqlx::query_scalar!(
        "SELECT id FROM conversations WHERE user_low = $1 AND user_high = $2",
        low,
        high
    )
    .fetch_one(&mut *tx)
    .await?;
    sqlx::query!(
        r#"INSERT INTO conversation_members (conversation_id, user_id)
           VALUES ($1, $2), ($1, $3) ON CONFLICT DO NOTHING"#,
        id,
        low,
        high
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok((id, created))
}

/// For marking read: the viewer must be a member (rooms: joined).
pub async fn for_marking_read(
    db: &PgPool,
    viewer: Uuid,
    chat_type: ChatType,
    chat_id: Uuid,
) -> Result<Conversation, ApiError> {
    match for_reading(db, viewer, chat_type, chat_id).await? {
        Some(c) if c.is_member => Ok(c),
        Some(_) => Err(ApiError::forbidden("join the room first")),
        None => Err(ApiError::not_found("no messages with this user yet")),
    }
}

/// [`for_sending`] for many sends at once: every room and group target is checked in one query
/// on `lookup`; private chats one by one on `db` (they may need creating). One result per
/// target, in order.
pub async fn for_sending_many(
    lookup: &mut PgConnection,
    db: &PgPool,
    new_chats: NewPrivateChats<'_>,
    targets: &[(Uuid, ChatType, Uuid)],
) -> Result<Vec<Result<Conversation, ApiError>>, ApiError> {
    let shared: Vec<usize> = (0..targets.len())
        .filter(|&i| targets[i].1 != ChatType::Private)
        .collect();
    let users: Vec<Uuid> = shared.iter().map(|&i| targets[i].0).collect();
    let chats: Vec<Uuid> = shared.iter().map(|&i| targets[i].2).collect();
    // One index lookup per target, whatever the tables' size or statistics. Written as joins,
    // the prepared statement's generic plan (it cannot see the arrays' length, so it assumes
    // about ten targets) hashed the targets and scanned `conversations` whole on every batch.
    // Membership is a scalar subquery, not `EXISTS`: the planner may run an `EXISTS` as a
    // hashed subplan, which reads the whole members table into a hash on every batch (while
    // the table is small enough to look cheap: at 1,000 members that was a third of Postgres's
    // CPU per send); a scalar subquery is always one lookup in the primary key.
    let rows = sqlx::query!(
        r#"SELECT t.i AS "i!",
                  (SELECT c.chat_type FROM conversations c WHERE c.id = t.chat_id) AS "chat_type?",
                  (SELECT true FROM conversation_members m
                   WHERE m.conversation_id = t.chat_id AND m.user_id = t.user_id) IS NOT NULL
                      AS "is_member!",
                  (SELECT mu.until FROM room_mutes mu
                   WHERE mu.room_id = t.chat_id AND mu.user_id = t.user_id AND mu.until > now()) AS muted_until
           FROM unnest($1::uuid[], $2::uuid[]) WITH ORDINALITY AS t(user_id, chat_id, i)"#,
        &users,
        &chats
    )
    .fetch_all(lookup)
    .await?;
    let mut results: Vec<Option<Result<Conversation, ApiError>>> =
        targets.iter().map(|_| None).collect();
    for r in rows {
        let Some(&i) = usize::try_from(r.i - 1).ok().and_then(|k| shared.get(k)) else {
            continue;
        };
        let (_, chat_type, chat_id) = targets[i];
        results[i] = Some(match r.chat_type.as_deref() {
            Some(t) if t == chat_type.as_db() && r.is_member => match r.muted_until {
                Some(until) => Err(muted(until)),
                None => Ok(Conversation {
                    id: chat_id,
                    chat_type,
                    chat_id,
                    is_member: true,
                }),
            },
            Some(t) if t == chat_type.as_db() => Err(ApiError::forbidden(match chat_type {
                ChatType::Room => "join the room before sending to it",
                _ => "you are not a member of this group",
            })),
            _ => Err(ApiError::not_found(match chat_type {
                ChatType::Room => "no such room",
                _ => "no such group",
            })),
        });
    }
    for (i, (user, chat_type, chat_id)) in targets.iter().enumerate() {
        if results[i].is_none() {
            results[i] = Some(for_sending(db, new_chats, *user, *chat_type, *chat_id).await);
        }
    }
    Ok(results
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err(ApiError::internal("a target was left unresolved"))))
        .collect())
}
