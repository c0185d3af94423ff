//! Uploads (`POST /chat/uploads`), downloads (`GET /chat/attachments/{id}`, its thumbnail)
//! and, for the local-directory store, the signed file URLs themselves (`/chat/files/...`).

use axum::{
    body::Body,
    extract::{Query, State},
    http::{header, HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use shared::{
    error::ErrorBody,
    extract::{ApiJson, ApiPath},
    jwt::AuthUser,
    storage::{Served, UploadTerms},
    ApiError, ApiResult,
};
use tokio::io::AsyncWriteExt;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::{attachments, conversation, AppState};

#[derive(Debug, Deserialize, ToSchema)]
pub struct UploadRequest {
    /// 1–255 characters; shown to the people who receive it.
    pub filename: String,
    /// One of `ALLOWED_UPLOAD_TYPES`, e.g. `image/png`.
    pub content_type: String,
    /// Bytes, 1 to `MAX_UPLOAD_BYTES` (default 25 MiB): the upload URL takes exactly this many.
    pub size: u64,
}

/// Where to send the bytes.
#[derive(Debug, Serialize, ToSchema)]
pub struct UploadTicket {
    pub upload_id: Uuid,
    /// Always `PUT`.
    pub method: &'static str,
    /// Send the bytes here, as given (with `headers`); it may be another host (object storage).
    /// It takes exactly `size` bytes of `content_type` (anything else is refused, 403).
    pub url: String,
    /// Headers to send with the bytes (`content-type`, as declared).
    #[schema(value_type = Object)]
    pub headers: serde_json::Map<String, serde_json::Value>,
    /// Seconds the URL stays valid.
    pub expires_in: u64,
}

/// `POST /chat/uploads`
#[utoipa::path(post, path = "/chat/uploads", operation_id = "create_upload", tag = "attachments", security(("bearer" = [])), request_body = UploadRequest,
    responses(
        (status = 201, description = "Send the bytes to `url` with `method` and `headers`; then send a message with `attachment_id`", body = UploadTicket),
        (status = 422, description = "Invalid fields: a filename too long, a type not allowed, a size of 0 or over the limit", body = ErrorBody),
        (status = 429, description = "Too many uploads in the last hour (UPLOADS_PER_HOUR); see Retry-After", body = ErrorBody),
        (status = 503, description = "Object storage unavailable", body = ErrorBody),
    ))]
pub async fn create(
    State(state): State<AppState>,
    caller: AuthUser,
    ApiJson(req): ApiJson<UploadRequest>,
) -> ApiResult<(StatusCode, Json<UploadTicket>)> {
    let limits = &state.files.limits;
    let filename = req.filename.trim();
    let content_type = req.content_type.trim().to_ascii_lowercase();
    let mut problems = std::collections::BTreeMap::new();
    if !(1..=255).contains(&filename.chars().count()) {
        problems.insert(
            "filename".to_owned(),
            "must be 1 to 255 characters".to_owned(),
        );
    }
    if !limits.allows(&content_type) {
        problems.insert(
            "content_type".to_owned(),
            format!("must be one of {}", limits.allowed_types.join(", ")),
        );
    }
    if req.size == 0 || req.size > limits.max_bytes {
        problems.insert(
            "size".to_owned(),
            format!("must be 1 to {} bytes", limits.max_bytes),
        );
    }
    if !problems.is_empty() {
        return Err(ApiError::validation(problems));
    }
    state
        .creation_quota(
            "uploads",
            caller.user_id,
            state.config.quotas.uploads_per_hour,
        )
        .await?;
    let id = Uuid::now_v7();
    let key = format!("uploads/{id}");
    let expires_at = chrono::Utc::now()
        + chrono::Duration::from_std(limits.expiry).unwrap_or(chrono::Duration::hours(24));
    let url = state
        .files
        .storage
        .upload_url(
            &key,
            limits.upload_ttl,
            &UploadTerms {
                content_type: &content_type,
                size: req.size,
            },
        )
        .await?;
    sqlx::query!(
        r#"INSERT INTO uploads (id, owner_id, filename, content_type, size, object_key, expires_at)
           VALUES ($1, $2, $3, $4, $5, $6, $7)"#,
        id,
        caller.user_id,
        filename,
        content_type,
        i64::try_from(req.size).unwrap_or(i64::MAX),
        key,
        expires_at
    )
    .execute(&state.db)
    .await?;
    let mut headers = serde_json::Map::new();
    headers.insert("content-type".into(), content_type.into());
    Ok((
        StatusCode::CREATED,
        Json(UploadTicket {
            upload_id: id,
            method: "PUT",
            url,
            headers,
            expires_in: limits.upload_ttl.as_secs(),
        }),
    ))
}

/// A 302 to a short-lived URL of `key`, served as `served` says.
async fn redirect(state: &AppState, key: &str, served: &Served<'_>) -> ApiResult<Response> {
    let url = state
        .files
        .storage
        .download_url(key, state.files.limits.download_ttl, served)
        .await?;
    let location = HeaderValue::from_str(&url)
        .map_err(|_| ApiError::internal("a signed URL is not a header"))?;
    Ok((
        StatusCode::FOUND,
        [
            (header::LOCATION, location),
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("private, no-store"),
            ),
        ],
    )
        .into_response())
}

/// An attachment the caller may download: its object and how it was declared.
struct Readable {
    key: String,
    content_type: String,
    filename: String,
}

/// The attachment `id` if the caller may download it (a member of its message's
/// conversation): 404 if no message uses it, 403 for anyone else.
async fn readable(state: &AppState, caller: Uuid, id: Uuid) -> ApiResult<Readable> {
    let row = sqlx::query!(
        r#"SELECT COALESCE(u.file_key, u.object_key) AS "key!", u.content_type, u.filename,
                  m.conversation_id
           FROM uploads u JOIN messages m ON m.attachment_id = u.id
           WHERE u.id = $1 AND NOT m.is_deleted"#,
        id
    )
    .fetch_optional(&state.db)
    .await?
    .ok_or_else(|| ApiError::not_found("no such attachment"))?;
    if !conversation::is_member(&state.db, row.conversation_id, caller).await? {
        return Err(attachments::not_a_member());
    }
    Ok(Readable {
        key: row.key,
        content_type: row.content_type,
        filename: row.filename,
    })
}

/// `GET /chat/attachments/{id}`
#[utoipa::path(get, path = "/chat/attachments/{id}", tag = "attachments", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The attachment's id (its upload id)")),
    responses(
        (status = 302, description = "To a short-lived download URL (DOWNLOAD_URL_TTL_SECONDS), served with the declared type, as a download named after the file (an image: inline)"),
        (status = 403, description = "Not a member of the attachment's conversation", body = ErrorBody),
        (status = 404, description = "No message has this attachment (or it was deleted)", body = ErrorBody),
    ))]
pub async fn download(
    State(state): State<AppState>,
    caller: AuthUser,
    ApiPath(id): ApiPath<Uuid>,
) -> ApiResult<Response> {
    let file = readable(&state, caller.user_id, id).await?;
    redirect(
        &state,
        &file.key,
        &Served {
            content_type: &file.content_type,
            filename: &file.filename,
        },
    )
    .await
}

/// `GET /chat/attachments/{id}/thumbnail`
#[utoipa::path(get, path = "/chat/attachments/{id}/thumbnail", tag = "attachments", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The attachment's id")),
    responses(
        (status = 302, description = "To a short-lived URL of a PNG at most 320 pixels on either side"),
        (status = 403, description = "Not a member of the attachment's conversation", body = ErrorBody),
        (status = 404, description = "No such attachment, or not an image that can be decoded", body = ErrorBody),
    ))]
pub async fn thumbnail(
    State(state): State<AppState>,
    caller: AuthUser,
    ApiPath(id): ApiPath<Uuid>,
) -> ApiResult<Response> {
    let file = readable(&state, caller.user_id, id).await?;
    // Made after the send; made now if that has not happened yet.
    let key = attachments::thumbnail(&state.db, &state.files, id)
        .await?
        .ok_or_else(|| ApiError::not_found("this attachment has no thumbnail"))?;
    let stem = file
        .filename
        .rsplit_once('.')
        .map_or(file.filename.as_str(), |(stem, _)| stem);
    redirect(
        &state,
        &key,
        &Served {
            content_type: "image/png",
            filename: &format!("{stem}-thumbnail.png"),
        },
    )
    .await
}

/// A local URL's query: its expiry and signature, and the terms it was signed under (an
/// upload's declared type and size; a download's type and disposition).
#[derive(Debug, Deserialize)]
pub struct Signed {
    expires: Option<i64>,
    sig: Option<String>,
    #[serde(rename = "type")]
    content_type: Option<String>,
    size: Option<String>,
    disposition: Option<String>,
}

fn check_signed(
    state: &AppState,
    method: &str,
    key: &str,
    q: &Signed,
    terms: &[(&str, &Option<String>)],
) -> ApiResult<()> {
    let terms: Option<Vec<(&str, &str)>> = terms
        .iter()
        .map(|(name, value)| value.as_deref().map(|v| (*name, v)))
        .collect();
    let ok = match (q.expires, q.sig.as_deref(), terms) {
        (Some(expires), Some(sig), Some(terms)) => state
            .files
            .storage
            .verify_local(method, key, expires, &terms, sig),
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(ApiError::forbidden("this URL is not valid (or no longer)"))
    }
}

/// 403: the request is not the one the URL was signed for (as S3 answers a presigned URL).
fn not_as_signed(detail: String) -> ApiError {
    ApiError::forbidden(detail)
}

/// `PUT /chat/files/{*key}`: the local store's upload URL. Like a presigned S3 URL, it takes
/// exactly the declared number of bytes, sent with the declared `Content-Type` (403
/// otherwise), streamed to a file; whether the bytes are of that type is checked when the
/// upload is used.
pub async fn put_file(
    State(state): State<AppState>,
    axum::extract::Path(key): axum::extract::Path<String>,
    Query(q): Query<Signed>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<StatusCode> {
    check_signed(
        &state,
        "PUT",
        &key,
        &q,
        &[("type", &q.content_type), ("size", &q.size)],
    )?;
    let declared_type = q.content_type.as_deref().unwrap_or_default();
    let size: u64 = q
        .size
        .as_deref()
        .and_then(|s| s.parse().ok())
        .unwrap_or_default();
    let sent_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if !sent_type.trim().eq_ignore_ascii_case(declared_type) {
        return Err(not_as_signed(format!(
            "this URL takes {declared_type} (send Content-Type: {declared_type})"
        )));
    }
    let sent_length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if sent_length.is_some_and(|n| n != size) {
        return Err(not_as_signed(format!(
            "this URL takes exactly the {size} bytes declared"
        )));
    }
    let unused = sqlx::query_scalar!(
        r#"SELECT EXISTS (SELECT 1 FROM uploads WHERE object_key = $1 AND used_at IS NULL) AS "unused!""#,
        key
    )
    .fetch_one(&state.db)
    .await?;
    if !unused {
        return Err(ApiError::conflict(
            "upload_used",
            "this upload was used already",
        ));
    }
    let path = state
        .files
        .storage
        .local_file(&key)
        .ok_or_else(|| ApiError::not_found("no local store"))?;
    if let Some(parent) = path.parent() {
        tokio::fs::create_dir_all(parent)
            .await
            .map_err(|e| ApiError::internal(format_args!("upload directory: {e}")))?;
    }
    let partial = path.with_extension("partial");
    let io = |e: std::io::Error| ApiError::internal(format_args!("writing an upload: {e}"));
    let mut file = tokio::fs::File::create(&partial).await.map_err(io)?;
    let mut written: u64 = 0;
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => {
                let _ = tokio::fs::remove_file(&partial).await;
                return Err(if shared::extract::body_stalled(&e) {
                    shared::extract::body_timeout()
                } else {
                    ApiError::invalid_field("body", "the upload was interrupted")
                });
            }
        };
        written += chunk.len() as u64;
        if written > size {
            drop(file);
            let _ = tokio::fs::remove_file(&partial).await;
            return Err(not_as_signed(format!(
                "this URL takes exactly the {size} bytes declared"
            )));
        }
        file.write_all(&chunk).await.map_err(io)?;
    }
    if written != size {
        drop(file);
        let _ = tokio::fs::remove_file(&partial).await;
        return Err(not_as_signed(format!(
            "this URL takes exactly the {size} bytes declared, not {written}"
        )));
    }
    file.flush().await.map_err(io)?;
    drop(file);
    tokio::fs::rename(&partial, &path).await.map_err(io)?;
    Ok(StatusCode::OK)
}

/// `GET /chat/files/{*key}`: the local store's download URL, served with the type and
/// disposition it was signed with (as S3 serves a presigned URL's response overrides).
pub async fn get_file(
    State(state): State<AppState>,
    axum::extract::Path(key): axum::extract::Path<String>,
    Query(q): Query<Signed>,
) -> ApiResult<Response> {
    check_signed(
        &state,
        "GET",
        &key,
        &q,
        &[("type", &q.content_type), ("disposition", &q.disposition)],
    )?;
    // Streamed from the file: a download holds a buffer, not the file, in memory.
    let path = state
        .files
        .storage
        .local_file(&key)
        .ok_or_else(|| ApiError::not_found("no local store"))?;
    let file = match tokio::fs::File::open(&path).await {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ApiError::not_found("no such file"))
        }
        Err(e) => return Err(shared::storage::StorageError::from(e).into()),
    };
    let length = file
        .metadata()
        .await
        .map_err(shared::storage::StorageError::from)?
        .len();
    let mut headers = HeaderMap::new();
    for (name, value) in [
        (header::CONTENT_TYPE, &q.content_type),
        (header::CONTENT_DISPOSITION, &q.disposition),
    ] {
        if let Some(v) = value.as_deref().and_then(|v| HeaderValue::from_str(v).ok()) {
            headers.insert(name, v);
        }
    }
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    let body = Body::from_stream(tokio_util::io::ReaderStream::new(file));
    Ok((StatusCode::OK, headers, body).into_response())
}
