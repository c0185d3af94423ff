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
    /// None for a send repeated after its message was stored.
    pub copy: Option<UploadCopy>,
}

/// How long after its send gave up an unkept copy is looked at: by then a statement that was
/// storing its message (a request cancelled while it ran) has committed or failed.
const UNKEPT_COPY_GRACE: Duration = Duration::from_secs(30);
/// How many times the database is asked about an unkept copy (30 s, then 60 s more, …: about
/// half an hour in all) before it is left in place.
const UNKEPT_COPY_ATTEMPTS: u32 = 8;

/// A copy of an upload made and checked for one send. Kept ([`UploadCopy::keep`]) once its
/// message is stored; dropped otherwise (the send was refused, failed, will be retried with a
/// copy of its own, or its request was cancelled), it is deleted from the store a little later
/// unless a stored message names it after all.
pub struct UploadCopy {
    key: String,
    cleanup: Option<(Storage, PgPool)>,
}

impl UploadCopy {
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Its message was stored: the copy stays.
    pub fn keep(mut self) {
        self.cleanup = None;
    }
}

impl Drop for UploadCopy {
    fn drop(&mut self) {
        let Some((storage, db)) = self.cleanup.take() else {
            return;
        };
        let key = std::mem::take(&mut self.key);
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn(async move {
            // The database may be what failed the send: asked again, later each time.
            for attempt in 1..=UNKEPT_COPY_ATTEMPTS {
                tokio::time::sleep(UNKEPT_COPY_GRACE * attempt).await;
                let named = sqlx::query_scalar!(
                    r#"SELECT EXISTS (SELECT 1 FROM uploads WHERE file_key = $1) AS "named!""#,
                    key
                )
                .fetch_one(&db)
                .await;
                match named {
                    Ok(false) => {
                        if let Err(e) = storage.delete(&key).await {
                            tracing::warn!(error = %e, key, "could not delete an unused copy of an upload");
                        }
                        return;
                    }
                    Ok(true) => return,
                    Err(e) if attempt == UNKEPT_COPY_ATTEMPTS => {
                        tracing::warn!(error = %e, key, "could not tell whether a copy of an upload is used; left in place")
                    }
                    Err(_) => {}
                }
            }
        });
    }
}

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
            copy: None,
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
        Ok(Err(storage::StorageError::NotFound)) => {
            return Err(unusable("no file was uploaded for it"))
        }
        Ok(Err(e)) => {
            let _ = files.storage.delete(&key).await;
            return Err(e.into());
        }
        Err(_) => {
            // A store that takes this long is as good as down for a send (the send loop's
            // other sends wait for it): noted, so the next sends do not wait too. The copy may
            // still land; its guard deletes it later.
            files.storage.note_outage();
            drop(UploadCopy {
                key,
                cleanup: Some((files.storage.clone(), db.clone())),
            });
            return Err(storage::StorageError::Other(format!(
                "copying and checking an upload took over {CHECK_DEADLINE:?}"
            ))
            .into());
        }
    };
    if let Some(problem) = problem {
        // Refused for good: the copy goes now.
        files.storage.delete(&key).await?;
        return Err(unusable(problem));
    }
    let copy = UploadCopy {
        key,
        cleanup: Some((files.storage.clone(), db.clone())),
    };
    Ok(Checked {
        attachment,
        copy: Some(copy),
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
/// made already; returns the thumbnail's key. `None`: not an image, or not decodable.
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
    sqlx::query!(
        "UPDATE uploads SET thumbnail_key = $2, width = $3, height = $4 WHERE id = $1",
        id,
        key,
        i32::try_from(width).ok(),
        i32::try_from(height).ok()
    )
    .execute(db)
    .await?;
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

/// Deletes every object of attachment `id` (the upload, its checked copy, its thumbnail), on a
/// spawned task: its message was deleted, and nobody may download it any more. The row stays
/// (the deleted message still names it). A failure is logged; the objects then stay.
pub fn remove_files_later(db: PgPool, files: Files, id: Uuid) {
    tokio::spawn(async move {
        let row = match sqlx::query!(
            "SELECT object_key, file_key, thumbnail_key FROM uploads WHERE id = $1",
            id
        )
        .fetch_optional(&db)
        .await
        {
            Ok(Some(row)) => row,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(upload = %id, error = %e, "could not read a deleted attachment's objects; left in place");
                return;
            }
        };
        let keys = std::iter::once(row.object_key)
            .chain(row.file_key)
            .chain(row.thumbnail_key);
        let mut removed = true;
        for key in keys {
            if let Err(e) = files.storage.delete(&key).await {
                tracing::warn!(upload = %id, key, error = %e, "could not delete a deleted attachment's object");
                removed = false;
            }
        }
        if removed {
            metrics::counter!("chat_attachments_removed_total").increment(1);
            if let Err(e) =
                sqlx::query!("UPDATE uploads SET upload_removed = true WHERE id = $1", id)
                    .execute(&db)
                    .await
            {
                tracing::debug!(upload = %id, error = %e, "could not note a removed upload");
            }
        }
    });
}

/// Deletes uploads never used and past `expires_at`, rows and objects; returns how many.
pub async fn clean_up(db: &PgPool, files: &Files) -> Result<u64, ApiError> {
    let expired = sqlx::query!(
        r#"DELETE FROM uploads WHERE id IN (
               SELECT id FROM uploads WHERE used_at IS NULL AND expires_at < now() LIMIT 500)
           RETURNING object_key"#
    )
    .fetch_all(db)
    .await?;
    for row in &expired {
        if let Err(e) = files.storage.delete(&row.object_key).await {
            tracing::warn!(error = %e, key = row.object_key, "could not delete an expired upload's object");
        }
    }
    Ok(expired.len() as u64)
}

/// Deletes the uploaded objects of used uploads whose upload URL has expired (their uses serve
/// copies, see [`check_for_message`]); returns how many. Until the URL expires, its holder could
/// write the object again, so it is left until then.
pub async fn remove_used(db: &PgPool, files: &Files) -> Result<u64, ApiError> {
    let used = sqlx::query!(
        r#"SELECT id, object_key FROM uploads
           WHERE file_key IS NOT NULL AND NOT upload_removed                  AND created_at < now() - make_interval(secs => $1)
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

/// Runs [`clean_up`] and [`remove_used`] every `every` until `shutdown`.
pub async fn clean_up_loop(
    db: PgPool,
    files: Files,
    every: Duration,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    while !*shutdown.borrow() {
        match clean_up(&db, &files).await {
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
            Err(e) => tracing::warn!(error = %e.detail, "could not delete used uploads' objects"),
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
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
