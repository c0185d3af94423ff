//! Attachments: uploads declared by their owner, checked against the stored object when a
//! message uses one, image thumbnails made after the send, and unused uploads removed when
//! they expire. The bytes go between clients and object storage ([`shared::storage`]) only.

use std::{collections::HashMap, time::Duration};

use axum::http::StatusCode;
use shared::{
    chat::{Attachment, MessageType},
    storage::{self, Storage, UploadLimits},
    ApiError,
};
use sqlx::PgPool;
use uuid::Uuid;

/// Thumbnails are at most this many pixels on either side.
pub const THUMBNAIL_SIDE: u32 = 320;

/// Object storage and its limits, as every handler and the send worker see them.
#[derive(Clone)]
pub struct Files {
    pub storage: Storage,
    pub limits: UploadLimits,
}

fn unusable(detail: impl Into<String>) -> ApiError {
    ApiError::invalid_field("attachment_id", detail)
}

/// An upload checked for a message: what the message shows, and the checked copy it will
/// serve ([`check_for_message`]).
pub struct Checked {
    pub attachment: Attachment,
    /// The copy's key; None for a send repeated after its message was stored.
    pub file_key: Option<String>,
}

/// How long a copy made for a send is kept before the removal sweep deletes it unless a stored
/// message names it: far longer than a send takes to be stored or to fail.
const COPY_GRACE: Duration = Duration::from_secs(120);

/// How often the removal sweep ([`remove_due`]) runs.
pub const REMOVAL_EVERY: Duration = Duration::from_secs(30);

/// Checks that `sender` may attach upload `id` to a message of `message_type` now: their own,
/// unused, unexpired, of an allowed type (an image for `image`); then copies the stored object
/// and checks the copy as declared (size; type, where the bytes show one). 422 naming
/// `attachment_id` otherwise.
///
/// The message serves the copy, never the upload itself: the uploader can write to the upload
/// URL until it expires (S3 cannot refuse a second PUT to a presigned URL), so only a copy
/// made and checked here is known to hold what was checked, for as long as the message lasts.
/// Each check copies to a key of its own: two sends of one upload at once cannot overwrite each
/// other's checked copy, and the one the database stores names its copy in the same statement.
///
/// A send repeated with the same `client_id` passes the "used" check when its first delivery
/// stored the message with this upload: the pipeline then answers with that message (and no
/// copy is made).
pub async fn check_for_message(
    db: &PgPool,
    files: &Files,
    sender: Uuid,
    id: Uuid,
    message_type: MessageType,
    client_id: Option<&str>,
) -> Result<Checked, ApiError> {
    let Some(u) = sqlx::query!(
        r#"SELECT owner_id, filename, content_type, size, object_key, used_at,
                  expires_at < now() AS "expired!", width, height
           FROM uploads WHERE id = $1"#,
        id
    )
    .fetch_optional(db)
    .await?
    else {
        return Err(unusable("no such upload"));
    };
    if u.owner_id != sender {
        return Err(unusable("is not an upload of yours"));
    }
    let attachment = Attachment {
        id,
        filename: u.filename,
        content_type: u.content_type,
        size: u.size,
        width: u.width,
        height: u.height,
    };
    if u.used_at.is_some() {
        let repeated = match client_id {
            Some(client_id) => {
                sqlx::query_scalar!(
                    r#"SELECT EXISTS (SELECT 1 FROM messages WHERE attachment_id = $1
                                  AND from_user_id = $2 AND client_id = $3) AS "repeated!""#,
                    id,
                    sender,
                    client_id
                )
                .fetch_one(db)
                .await?
            }
            None => false,
        };
        if !repeated {
            return Err(unusable("was used already (an upload is used once)"));
        }
        return Ok(Checked {
            attachment,
            file_key: None,
        });
    }
    if u.expired {
        return Err(unusable("has expired; upload the file again"));
    }
    if !files.limits.allows(&attachment.content_type) {
        return Err(unusable(format!(
            "{} is not allowed",
            attachment.content_type
        )));
    }
    if message_type == MessageType::Image && !attachment.content_type.starts_with("image/") {
        return Err(unusable("an image message needs an image upload"));
    }
    let declared = u64::try_from(attachment.size).unwrap_or(0);
    if declared > files.limits.max_bytes {
        return Err(unusable("is larger than MAX_UPLOAD_BYTES"));
    }
    let key = format!("attachments/{id}/{}", Uuid::new_v4());
    // Due for removal before it exists: a copy whose send is never stored (refused later,
    // failed, retried with a copy of its own, its request cancelled, the process gone) is
    // deleted by the sweep, which leaves a copy a stored message names.
    sqlx::query!(
        "INSERT INTO object_removals (key, due_at, unless_used)
         VALUES ($1, now() + make_interval(secs => $2), true)",
        key,
        COPY_GRACE.as_secs_f64()
    )
    .execute(db)
    .await?;
    let checked = tokio::time::timeout(
        CHECK_DEADLINE,
        copy_and_check(
            files,
            &u.object_key,
            &key,
            &attachment.content_type,
            declared,
        ),
    )
    .await;
    let problem = match checked {
        Ok(Ok(problem)) => problem,
        Ok(Err(storage::StorageError::NotFound)) => Some("no file was uploaded for it".into()),
        // The store failed: the sweep deletes whatever copy landed.
        Ok(Err(e)) => return Err(e.into()),
        Err(_) => {
            // A store that takes this long is as good as down for a send (the send loop's
            // other sends wait for it): noted, so the next sends do not wait too. The copy may
            // still land; the sweep deletes it.
            files.storage.note_outage();
            return Err(storage::StorageError::Other(format!(
                "copying and checking an upload took over {CHECK_DEADLINE:?}"
            ))
            .into());
        }
    };
    if let Some(problem) = problem {
        // Refused for good: the copy goes now (or, if the store fails, with the sweep).
        remove(db, files, vec![key]).await?;
        return Err(unusable(problem));
    }
    Ok(Checked {
        attachment,
        file_key: Some(key),
    })
}

/// The longest a send waits for its upload's copy and check.
const CHECK_DEADLINE: Duration = Duration::from_secs(5);

/// Copies `object_key` to `key` and checks the copy against the declaration: the problem, if
/// any ([`storage::mismatch`]).
async fn copy_and_check(
    files: &Files,
    object_key: &str,
    key: &str,
    content_type: &str,
    declared: u64,
) -> Result<Option<String>, storage::StorageError> {
    files.storage.copy(object_key, key).await?;
    files
        .storage
        .check_declared(key, content_type, declared)
        .await
}

/// The attachments of `ids` (uploads used by messages), by id.
pub async fn load(db: &PgPool, ids: &[Uuid]) -> Result<HashMap<Uuid, Attachment>, ApiError> {
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    Ok(sqlx::query_as!(
        Attachment,
        "SELECT id, filename, content_type, size, width, height FROM uploads WHERE id = ANY($1)",
        ids
    )
    .fetch_all(db)
    .await?
    .into_iter()
    .map(|a| (a.id, a))
    .collect())
}

/// Loads the details of the attachments of `messages` (known by id until then).
pub async fn fill(db: &PgPool, messages: &mut [shared::chat::Message]) -> Result<(), ApiError> {
    let ids: Vec<Uuid> = messages
        .iter()
        .filter_map(|m| m.attachment.as_ref().map(|a| a.id))
        .collect();
    let mut loaded = load(db, &ids).await?;
    for m in messages {
        if let Some(a) = &m.attachment {
            m.attachment = loaded.remove(&a.id);
        }
    }
    Ok(())
}

/// Makes the thumbnail of an image upload (and records its width and height), unless it is
/// made already; returns the thumbnail's key. `None`: not an image, not decodable, or its
/// message was deleted while it was made (the thumbnail is then queued for removal).
pub async fn thumbnail(db: &PgPool, files: &Files, id: Uuid) -> Result<Option<String>, ApiError> {
    let Some(u) = sqlx::query!(
        r#"SELECT content_type, size, COALESCE(file_key, object_key) AS "key!", thumbnail_key
           FROM uploads WHERE id = $1"#,
        id
    )
    .fetch_optional(db)
    .await?
    else {
        return Ok(None);
    };
    if let Some(key) = u.thumbnail_key {
        return Ok(Some(key));
    }
    if !u.content_type.starts_with("image/") {
        return Ok(None);
    }
    let slot = storage::DecodeSlot::acquire().await;
    let declared = u64::try_from(u.size).unwrap_or(0);
    let bytes = match files.storage.get_at_most(&u.key, declared).await {
        Err(storage::StorageError::TooLarge(_)) => {
            tracing::warn!(upload = %id, "an image is larger than declared; no thumbnail");
            return Ok(None);
        }
        read => read?,
    };
    let (width, height, small) = match storage::shrink_image(slot, bytes, THUMBNAIL_SIDE).await {
        Ok(made) => made,
        Err(e) => {
            tracing::info!(upload = %id, error = %e, "an image upload could not be decoded");
            return Ok(None);
        }
    };
    let key = format!("thumbnails/{id}");
    files.storage.put(&key, small, "image/png").await?;
    // Recorded under the upload row's lock, which deleting the message takes too to queue the
    // upload's objects: either that deletion sees this thumbnail, or this sees the deletion
    // (each statement here sees what committed before it) and queues the thumbnail itself.
    let mut tx = db.begin().await?;
    sqlx::query!("SELECT id FROM uploads WHERE id = $1 FOR UPDATE", id)
        .fetch_optional(&mut *tx)
        .await?;
    let deleted = sqlx::query_scalar!(
        r#"SELECT EXISTS (SELECT 1 FROM messages WHERE attachment_id = $1 AND is_deleted)
           AS "deleted!""#,
        id
    )
    .fetch_one(&mut *tx)
    .await?;
    if deleted {
        storage::queue_removal(&mut *tx, std::slice::from_ref(&key)).await?;
        tx.commit().await?;
        return Ok(None);
    }
    sqlx::query!(
        "UPDATE uploads SET thumbnail_key = $2, width = $3, height = $4 WHERE id = $1",
        id,
        key,
        i32::try_from(width).ok(),
        i32::try_from(height).ok()
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    metrics::counter!("chat_thumbnails_made_total").increment(1);
    Ok(Some(key))
}

/// Makes thumbnails for the image uploads of new messages, off the send path.
pub fn thumbnails_later(db: PgPool, files: Files, ids: Vec<Uuid>) {
    if ids.is_empty() {
        return;
    }
    tokio::spawn(async move {
        for id in ids {
            if let Err(e) = thumbnail(&db, &files, id).await {
                tracing::warn!(upload = %id, error = %e.detail, "thumbnail failed; made when first asked for");
            }
        }
    });
}

/// Queues every object of attachment `id` (the upload, its checked copy, its thumbnail) for
/// removal, in the transaction that deletes its message: nobody may download it any more.
/// The row stays (the deleted message still names it). Returns the keys, for [`remove_later`].
pub async fn queue_removal(
    conn: &mut sqlx::PgConnection,
    id: Uuid,
) -> Result<Vec<String>, ApiError> {
    let Some(u) = sqlx::query!(
        "UPDATE uploads SET upload_removed = true WHERE id = $1
         RETURNING object_key, file_key, thumbnail_key",
        id
    )
    .fetch_optional(&mut *conn)
    .await?
    else {
        return Ok(Vec::new());
    };
    let keys: Vec<String> = std::iter::once(u.object_key)
        .chain(u.file_key)
        .chain(u.thumbnail_key)
        .collect();
    storage::queue_removal(conn, &keys).await?;
    Ok(keys)
}

/// Removes `keys` (queued) on a spawned task, now rather than at the next sweep; what the
/// store fails to delete is left to the sweep.
pub fn remove_later(db: PgPool, files: Files, keys: Vec<String>) {
    if keys.is_empty() {
        return;
    }
    tokio::spawn(async move {
        if let Err(e) = remove(&db, &files, keys).await {
            tracing::debug!(error = %e.detail, "queued objects left to the removal sweep");
        }
    });
}

/// Deletes the objects of `keys` and, for each one deleted, its removal row; returns the keys
/// the store failed to delete (their rows stay, for the sweep).
async fn remove(db: &PgPool, files: &Files, keys: Vec<String>) -> Result<Vec<String>, ApiError> {
    let mut removed = Vec::with_capacity(keys.len());
    let mut failed = Vec::new();
    for key in keys {
        match files.storage.delete(&key).await {
            Ok(()) => removed.push(key),
            Err(e) => {
                tracing::debug!(error = %e, key, "could not delete an object; tried again later");
                failed.push(key);
            }
        }
    }
    sqlx::query!("DELETE FROM object_removals WHERE key = ANY($1)", &removed)
        .execute(db)
        .await?;
    metrics::counter!("chat_objects_removed_total").increment(removed.len() as u64);
    Ok(failed)
}

/// Removes the objects due for removal, at most 500 a round: a copy a stored message names
/// only loses its row. What the store fails to delete is tried again later, each time later
/// (30 s, 1 min, 2 min, … at most an hour apart). Returns how many objects were deleted.
pub async fn remove_due(db: &PgPool, files: &Files) -> Result<u64, ApiError> {
    sqlx::query!(
        "DELETE FROM object_removals r
         WHERE r.unless_used AND r.due_at <= now()
           AND EXISTS (SELECT 1 FROM uploads u WHERE u.file_key = r.key)"
    )
    .execute(db)
    .await?;
    let due = sqlx::query_scalar!(
        "SELECT key FROM object_removals WHERE due_at <= now() ORDER BY due_at LIMIT 500"
    )
    .fetch_all(db)
    .await?;
    let count = due.len();
    let failed = remove(db, files, due).await?;
    metrics::counter!("chat_object_removals_failed_total").increment(failed.len() as u64);
    if !failed.is_empty() {
        tracing::warn!(
            count = failed.len(),
            "the object store could not delete objects due for removal; tried again later"
        );
        sqlx::query!(
            "UPDATE object_removals
             SET attempts = attempts + 1,
                 due_at = now() + LEAST(interval '1 hour',
                                        interval '30 seconds' * power(2, attempts))
             WHERE key = ANY($1)",
            &failed
        )
        .execute(db)
        .await?;
    }
    Ok((count - failed.len()) as u64)
}

/// Deletes uploads never used and past `expires_at`, and queues their objects for removal
/// (in the same statement); returns how many.
pub async fn clean_up(db: &PgPool) -> Result<u64, ApiError> {
    let expired = sqlx::query!(
        r#"WITH gone AS (
               DELETE FROM uploads WHERE id IN (
                   SELECT id FROM uploads WHERE used_at IS NULL AND expires_at < now() LIMIT 500)
               RETURNING object_key)
           INSERT INTO object_removals (key, due_at)
           SELECT object_key, now() FROM gone
           ON CONFLICT (key) DO UPDATE SET due_at = now(), unless_used = false"#
    )
    .execute(db)
    .await?;
    Ok(expired.rows_affected())
}

/// Deletes the uploaded objects of used uploads whose upload URL has expired (their uses serve
/// copies, see [`check_for_message`]); returns how many. Until the URL expires, its holder could
/// write the object again, so it is left until then.
pub async fn remove_used(db: &PgPool, files: &Files) -> Result<u64, ApiError> {
    let used = sqlx::query!(
        r#"SELECT id, object_key FROM uploads
           WHERE file_key IS NOT NULL AND NOT upload_removed
             AND created_at < now() - make_interval(secs => $1)
           LIMIT 500"#,
        files.limits.upload_ttl.as_secs_f64()
    )
    .fetch_all(db)
    .await?;
    let mut removed = Vec::with_capacity(used.len());
    for row in used {
        match files.storage.delete(&row.object_key).await {
            Ok(()) => removed.push(row.id),
            Err(e) => {
                tracing::warn!(error = %e, key = row.object_key, "could not delete a used upload's object")
            }
        }
    }
    sqlx::query!(
        "UPDATE uploads SET upload_removed = true WHERE id = ANY($1)",
        &removed
    )
    .execute(db)
    .await?;
    Ok(removed.len() as u64)
}

/// Runs [`clean_up`] and [`remove_used`] every `every`, and [`remove_due`] every
/// [`REMOVAL_EVERY`], until `shutdown`.
pub async fn clean_up_loop(
    db: PgPool,
    files: Files,
    every: Duration,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut swept: Option<std::time::Instant> = None;
    while !*shutdown.borrow() {
        if swept.is_none_or(|at| at.elapsed() >= every) {
            swept = Some(std::time::Instant::now());
            match clean_up(&db).await {
                Ok(0) => {}
                Ok(n) => {
                    metrics::counter!("chat_uploads_expired_total").increment(n);
                    tracing::info!(count = n, "expired uploads deleted");
                }
                Err(e) => tracing::warn!(error = %e.detail, "could not clean up expired uploads"),
            }
            match remove_used(&db, &files).await {
                Ok(0) => {}
                Ok(n) => {
                    metrics::counter!("chat_uploads_copied_removed_total").increment(n);
                    tracing::debug!(count = n, "used uploads' own objects deleted");
                }
                Err(e) => {
                    tracing::warn!(error = %e.detail, "could not delete used uploads' objects")
                }
            }
        }
        if let Err(e) = remove_due(&db, &files).await {
            tracing::warn!(error = %e.detail, "could not remove the objects due for removal");
        }
        tokio::select! {
            _ = tokio::time::sleep(REMOVAL_EVERY) => {}
            _ = shutdown.changed() => {}
        }
    }
}

/// 403 for a download by someone not in the attachment's conversation.
pub fn not_a_member() -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        "forbidden",
        "only members of the attachment's conversation may download it",
    )
}
