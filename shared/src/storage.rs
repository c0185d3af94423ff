//! Object storage for attachments and avatars: an S3-compatible store (`S3_*` settings), or,
//! with none configured, a local directory (`UPLOAD_DIR`) whose objects chat-service serves
//! through signed URLs of the same shape. Clients send and fetch bytes at the URLs this module
//! signs; the bytes never pass through a gateway or Postgres.
//!
//! S3 goes through the `object_store` crate: it speaks the S3 API to Amazon and to any store
//! that implements it (MinIO, Ceph, R2, …), with custom endpoints, path-style addressing and
//! any region, and it signs presigned URLs (SigV4) itself.

use std::{
    future::Future,
    path::PathBuf,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use hmac::{Hmac, Mac};
use object_store::{
    aws::{AmazonS3, AmazonS3Builder},
    path::Path as ObjectPath,
    signer::Signer,
    Attribute, Attributes, BackoffConfig, ClientOptions, ObjectStore, PutOptions, PutPayload,
    RetryConfig,
};
use sha2::Sha256;

use crate::config::{self, ConfigError};

/// The HTTP method a signed URL allows.
pub use reqwest::Method;

/// `S3_ENDPOINT`, `S3_BUCKET`, `S3_REGION`, `S3_ACCESS_KEY_ID`, `S3_SECRET_ACCESS_KEY`,
/// `S3_PATH_STYLE`, or `UPLOAD_DIR` and `PUBLIC_URL` for the local directory.
#[derive(Debug, Clone)]
pub enum StorageConfig {
    S3 {
        /// Empty: Amazon's endpoint for the region.
        endpoint: String,
        /// The endpoint in the URLs handed to clients when they reach the store at another
        /// address than the services do (`S3_PUBLIC_ENDPOINT`; empty: `endpoint`).
        public_endpoint: String,
        bucket: String,
        region: String,
        access_key_id: String,
        secret_access_key: String,
        /// `https://endpoint/bucket/key` rather than `https://bucket.endpoint/key` (default:
        /// on with a custom endpoint, off for Amazon).
        path_style: bool,
    },
    Local {
        dir: PathBuf,
        /// Prefix of the URLs handed to clients (`PUBLIC_URL`, e.g. `https://chat.example.com`);
        /// empty gives paths (`/chat/files/...`) that a browser resolves against the page.
        public_url: String,
    },
}

impl StorageConfig {
    pub fn from_env() -> Result<Self, ConfigError> {
        let bucket = config::string("S3_BUCKET", "")?;
        if bucket.is_empty() {
            return Ok(StorageConfig::Local {
                dir: PathBuf::from(config::string("UPLOAD_DIR", "data/uploads")?),
                public_url: config::string("PUBLIC_URL", "")?
                    .trim_end_matches('/')
                    .to_owned(),
            });
        }
        let endpoint = config::string("S3_ENDPOINT", "")?;
        Ok(StorageConfig::S3 {
            public_endpoint: config::string("S3_PUBLIC_ENDPOINT", "")?,
            path_style: config::flag("S3_PATH_STYLE", !endpoint.is_empty())?,
            endpoint,
            bucket,
            region: config::string("S3_REGION", "us-east-1")?,
            access_key_id: config::string("S3_ACCESS_KEY_ID", "")?,
            secret_access_key: config::string("S3_SECRET_ACCESS_KEY", "")?,
        })
    }
}

impl StorageConfig {
    /// The origin (`scheme://host[:port]`) at which browsers reach the URLs this store hands
    /// out, when it is not the page's own: what the browser app's `Content-Security-Policy`
    /// must let it connect to. `None`: paths on the page's origin (a local directory without
    /// `PUBLIC_URL`). The same addressing as the signer's: a custom endpoint is used as given
    /// (with virtual-hosted requests it names the bucket itself); without one, Amazon's
    /// regional endpoint, the bucket as its subdomain unless `path_style`.
    pub fn browser_origin(&self) -> Result<Option<String>, String> {
        let url = match self {
            StorageConfig::Local { public_url, .. } if public_url.is_empty() => return Ok(None),
            StorageConfig::Local { public_url, .. } => public_url.clone(),
            StorageConfig::S3 {
                endpoint,
                public_endpoint,
                bucket,
                region,
                path_style,
                ..
            } => match (public_endpoint.as_str(), endpoint.as_str()) {
                ("", "") if *path_style => format!("https://s3.{region}.amazonaws.com"),
                ("", "") => format!("https://{bucket}.s3.{region}.amazonaws.com"),
                ("", named) | (named, _) => named.to_owned(),
            },
        };
        let parsed = reqwest::Url::parse(&url).map_err(|e| format!("{url}: {e}"))?;
        let origin = parsed.origin();
        if origin.is_tuple() {
            Ok(Some(origin.ascii_serialization()))
        } else {
            Err(format!("{url}: not an http(s) URL"))
        }
    }
}

/// What may be uploaded: `MAX_UPLOAD_BYTES` (default 25 MiB), `ALLOWED_UPLOAD_TYPES` (comma
/// separated), `UPLOAD_URL_TTL_SECONDS` (default 900), `DOWNLOAD_URL_TTL_SECONDS` (default 300),
/// `UPLOAD_EXPIRY_HOURS` (unused uploads are deleted after it, default 24).
#[derive(Debug, Clone)]
pub struct UploadLimits {
    pub max_bytes: u64,
    pub allowed_types: Vec<String>,
    pub upload_ttl: Duration,
    pub download_ttl: Duration,
    pub expiry: Duration,
}

/// The default `ALLOWED_UPLOAD_TYPES`.
pub const DEFAULT_ALLOWED_TYPES: &str =
    "image/png,image/jpeg,image/gif,image/webp,application/pdf,text/plain,application/zip";

impl Default for UploadLimits {
    fn default() -> Self {
        Self {
            max_bytes: 25 * 1024 * 1024,
            allowed_types: DEFAULT_ALLOWED_TYPES
                .split(',')
                .map(str::to_owned)
                .collect(),
            upload_ttl: Duration::from_secs(900),
            download_ttl: Duration::from_secs(300),
            expiry: Duration::from_secs(24 * 3600),
        }
    }
}

impl UploadLimits {
    pub fn from_env() -> Result<Self, ConfigError> {
        let types = config::string("ALLOWED_UPLOAD_TYPES", DEFAULT_ALLOWED_TYPES)?;
        Ok(Self {
            max_bytes: config::parsed("MAX_UPLOAD_BYTES", 25u64 * 1024 * 1024)?,
            allowed_types: types
                .split(',')
                .map(|t| t.trim().to_ascii_lowercase())
                .filter(|t| !t.is_empty())
                .collect(),
            upload_ttl: Duration::from_secs(config::parsed("UPLOAD_URL_TTL_SECONDS", 900u64)?),
            download_ttl: Duration::from_secs(config::parsed("DOWNLOAD_URL_TTL_SECONDS", 300u64)?),
            expiry: Duration::from_secs(3600 * config::parsed("UPLOAD_EXPIRY_HOURS", 24u64)?),
        })
    }

    pub fn allows(&self, content_type: &str) -> bool {
        self.allowed_types.iter().any(|t| t == content_type)
    }
}

/// Why a stored object does not match its declaration (a 422 on `upload_id`/`attachment_id`),
/// or `None` when it does: the size as declared, and, when the bytes show a type (images, PDF,
/// archives…), that type. A declared image must show its type.
pub fn mismatch(
    declared_type: &str,
    declared_size: u64,
    stored_size: u64,
    head: &[u8],
) -> Option<String> {
    if stored_size != declared_size {
        return Some(format!(
            "the stored object is {stored_size} bytes, not the {declared_size} declared"
        ));
    }
    match sniff(head) {
        Some(seen) if seen != declared_type => Some(format!(
            "the stored object is {seen}, not the {declared_type} declared"
        )),
        None if declared_type.starts_with("image/") => {
            Some(format!("the stored object is not {declared_type}"))
        }
        _ => None,
    }
}

/// A failure of the store (unreachable, refused) or of a local file.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("object not found")]
    NotFound,
    /// Larger than the reader allowed (it changed since it was checked, or was never as
    /// declared).
    #[error("the object is larger than {0} bytes")]
    TooLarge(u64),
    #[error("storage: {0}")]
    Other(String),
}

impl From<object_store::Error> for StorageError {
    fn from(e: object_store::Error) -> Self {
        match e {
            object_store::Error::NotFound { .. } => StorageError::NotFound,
            e => StorageError::Other(e.to_string()),
        }
    }
}

impl From<StorageError> for crate::ApiError {
    /// 404 for a missing object; anything else is the store being unavailable (503).
    fn from(e: StorageError) -> Self {
        match e {
            StorageError::NotFound => crate::ApiError::not_found("no such object"),
            StorageError::TooLarge(max) => crate::ApiError::new(
                axum::http::StatusCode::UNPROCESSABLE_ENTITY,
                "object_too_large",
                format!("the stored object is larger than {max} bytes"),
            ),
            StorageError::Other(detail) => {
                tracing::warn!(error = %detail, "object storage unavailable");
                crate::ApiError::unavailable(
                    "storage_unavailable",
                    "object storage is unavailable, retry shortly",
                )
            }
        }
    }
}

impl From<std::io::Error> for StorageError {
    fn from(e: std::io::Error) -> Self {
        if e.kind() == std::io::ErrorKind::NotFound {
            StorageError::NotFound
        } else {
            StorageError::Other(e.to_string())
        }
    }
}

/// Where objects live.
#[derive(Clone)]
pub struct Storage {
    inner: Arc<Inner>,
    outage: Arc<Outage>,
}

/// How long after a failed request to the object store every request fails at once, without
/// trying: during an outage a send with an attachment is answered `unavailable` straight away
/// instead of each waiting out its own timeouts and retries (on the send loop, that wait would
/// hold up every send of its partition).
const OUTAGE_PAUSE: Duration = Duration::from_secs(10);

/// A request to the object store is tried at most this many times more, within this long, and
/// waits at most this long to connect: an unreachable store fails a request in seconds (the
/// crate's defaults retry for up to three minutes).
const STORE_RETRIES: usize = 2;
const STORE_RETRY_TIMEOUT: Duration = Duration::from_secs(5);
const STORE_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// When the object store last failed (as time since `since`), so [`Storage`] can fail fast.
struct Outage {
    since: Instant,
    /// Milliseconds after `since` until which requests fail at once; 0 when none failed.
    until_ms: AtomicU64,
}

impl Outage {
    fn new() -> Self {
        Self {
            since: Instant::now(),
            until_ms: AtomicU64::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.since.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn ongoing(&self) -> bool {
        self.now_ms() < self.until_ms.load(Ordering::Relaxed)
    }

    fn failed(&self) {
        let until = self
            .now_ms()
            .saturating_add(OUTAGE_PAUSE.as_millis() as u64);
        self.until_ms.store(until, Ordering::Relaxed);
    }
}

enum Inner {
    /// The store as the services reach it, and the same store as clients do (it only signs).
    S3 { store: AmazonS3, signer: AmazonS3 },
    Local {
        dir: PathBuf,
        public_url: String,
        /// Signs local URLs (derived from `SECRET_KEY`).
        key: Vec<u8>,
    },
}

/// The path of local objects' URLs, before the key.
pub const LOCAL_PREFIX: &str = "/chat/files/";

/// Keys are ours (`uploads/<uuid>`, `attachments/<uuid>/<uuid>`, `thumbnails/<uuid>`,
/// `avatars/<uuid>`): ASCII letters, digits, `-` and `/`, never `..`.
pub fn valid_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 200
        && !key.starts_with('/')
        && !key.contains("..")
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'/')
}

impl Storage {
    /// `secret` (the deployment's `SECRET_KEY`) signs the local directory's URLs.
    pub fn new(config: &StorageConfig, secret: &str) -> Result<Self, StorageError> {
        let inner = match config {
            StorageConfig::S3 {
                endpoint,
                public_endpoint,
                bucket,
                region,
                access_key_id,
                secret_access_key,
                path_style,
            } => {
                let build = |endpoint: &str| {
                    // Client options first: setting them replaces any set before
                    // (`with_allow_http` is one).
                    let mut b = AmazonS3Builder::new()
                        .with_client_options(
                            ClientOptions::new().with_connect_timeout(STORE_CONNECT_TIMEOUT),
                        )
                        .with_retry(RetryConfig {
                            backoff: BackoffConfig::default(),
                            max_retries: STORE_RETRIES,
                            retry_timeout: STORE_RETRY_TIMEOUT,
                        })
                        .with_bucket_name(bucket)
                        .with_region(region)
                        .with_virtual_hosted_style_request(!path_style);
                    if !endpoint.is_empty() {
                        b = b
                            .with_endpoint(endpoint)
                            .with_allow_http(endpoint.starts_with("http://"));
                    }
                    if !access_key_id.is_empty() {
                        b = b
                            .with_access_key_id(access_key_id)
                            .with_secret_access_key(secret_access_key);
                    }
                    b.build()
                };
                let public = if public_endpoint.is_empty() {
                    endpoint
                } else {
                    public_endpoint
                };
                Inner::S3 {
                    store: build(endpoint)?,
                    signer: build(public)?,
                }
            }
            StorageConfig::Local { dir, public_url } => {
                std::fs::create_dir_all(dir)?;
                let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes())
                    .map_err(|e| StorageError::Other(e.to_string()))?;
                mac.update(b"chatsphere local storage urls");
                Inner::Local {
                    dir: dir.clone(),
                    public_url: public_url.clone(),
                    key: mac.finalize().into_bytes().to_vec(),
                }
            }
        };
        Ok(Self {
            inner: Arc::new(inner),
            outage: Arc::new(Outage::new()),
        })
    }

    /// Notes an outage of the store (a caller gave up waiting for it): for a while every
    /// request fails at once.
    pub fn note_outage(&self) {
        if !self.is_local() {
            self.outage.failed();
        }
    }

    /// A request to the S3 store: refused at once while an outage is noted, and noting one when
    /// it fails for any reason but a missing object.
    async fn s3<T>(
        &self,
        request: impl Future<Output = object_store::Result<T>>,
    ) -> Result<T, StorageError> {
        if self.outage.ongoing() {
            return Err(StorageError::Other(
                "the object store failed moments ago; not tried".into(),
            ));
        }
        match request.await {
            Ok(v) => Ok(v),
            Err(e) => {
                let e = StorageError::from(e);
                if matches!(e, StorageError::Other(_)) {
                    self.outage.failed();
                }
                Err(e)
            }
        }
    }

    pub fn is_local(&self) -> bool {
        matches!(*self.inner, Inner::Local { .. })
    }

    /// A URL at which `method` (`GET` or `PUT`) on `key` is allowed until `ttl` from now.
    pub async fn signed_url(
        &self,
        method: reqwest::Method,
        key: &str,
        ttl: Duration,
    ) -> Result<String, StorageError> {
        match &*self.inner {
            Inner::S3 { signer, .. } => Ok(signer
                .signed_url(method, &ObjectPath::from(key), ttl)
                .await?
                .to_string()),
            Inner::Local {
                public_url, key: k, ..
            } => {
                let expires = chrono::Utc::now().timestamp() + ttl.as_secs() as i64;
                let sig = local_signature(k, method.as_str(), key, expires);
                Ok(format!(
                    "{public_url}{LOCAL_PREFIX}{key}?expires={expires}&sig={sig}"
                ))
            }
        }
    }

    /// Checks a local URL's signature and expiry (for chat-service's `/chat/files` routes).
    pub fn verify_local(&self, method: &str, key: &str, expires: i64, sig: &str) -> bool {
        match &*self.inner {
            Inner::Local { key: k, .. } => {
                expires >= chrono::Utc::now().timestamp()
                    && valid_key(key)
                    && constant_time_eq(
                        local_signature(k, method, key, expires).as_bytes(),
                        sig.as_bytes(),
                    )
            }
            Inner::S3 { .. } => false,
        }
    }

    /// The stored object's size, or `NotFound`.
    pub async fn size(&self, key: &str) -> Result<u64, StorageError> {
        match &*self.inner {
            Inner::S3 { store: s3, .. } => Ok(self.s3(s3.head(&ObjectPath::from(key))).await?.size),
            Inner::Local { dir, .. } => Ok(tokio::fs::metadata(local_path(dir, key)?).await?.len()),
        }
    }

    /// At most the first `n` bytes.
    pub async fn head_bytes(&self, key: &str, n: u64) -> Result<Bytes, StorageError> {
        let size = self.size(key).await?;
        let end = n.min(size);
        if end == 0 {
            return Ok(Bytes::new());
        }
        match &*self.inner {
            Inner::S3 { store: s3, .. } => {
                self.s3(s3.get_range(&ObjectPath::from(key), 0..end)).await
            }
            Inner::Local { dir, .. } => {
                use tokio::io::AsyncReadExt;
                let mut f = tokio::fs::File::open(local_path(dir, key)?).await?;
                let mut buf = vec![0; end as usize];
                f.read_exact(&mut buf).await?;
                Ok(Bytes::from(buf))
            }
        }
    }

    /// Checks the object at `key` against what its uploader declared: `None` when it matches,
    /// else the problem (nothing uploaded, another size, bytes of another type; see
    /// [`mismatch`]).
    pub async fn check_declared(
        &self,
        key: &str,
        declared_type: &str,
        declared_size: u64,
    ) -> Result<Option<String>, StorageError> {
        let stored = match self.size(key).await {
            Ok(n) => n,
            Err(StorageError::NotFound) => return Ok(Some("no file was uploaded for it".into())),
            Err(e) => return Err(e),
        };
        let head = self.head_bytes(key, 64).await?;
        Ok(mismatch(declared_type, declared_size, stored, &head))
    }

    /// The whole object, when it is at most `limit` bytes ([`StorageError::TooLarge`] if not,
    /// read no further than that): a client can replace what it uploaded (on S3, as long as
    /// its URL lasts), so a size checked before is no bound on what is read after.
    pub async fn get_at_most(&self, key: &str, limit: u64) -> Result<Bytes, StorageError> {
        let bytes = match &*self.inner {
            Inner::S3 { store: s3, .. } => {
                self.s3(s3.get_range(&ObjectPath::from(key), 0..limit.saturating_add(1)))
                    .await?
            }
            Inner::Local { dir, .. } => {
                use tokio::io::AsyncReadExt;
                let file = tokio::fs::File::open(local_path(dir, key)?).await?;
                let mut buf = Vec::new();
                file.take(limit.saturating_add(1))
                    .read_to_end(&mut buf)
                    .await?;
                Bytes::from(buf)
            }
        };
        if bytes.len() as u64 > limit {
            return Err(StorageError::TooLarge(limit));
        }
        Ok(bytes)
    }

    /// Copies the object at `from` to `to` within the store (the bytes do not pass through
    /// this process on S3).
    pub async fn copy(&self, from: &str, to: &str) -> Result<(), StorageError> {
        match &*self.inner {
            Inner::S3 { store: s3, .. } => {
                self.s3(s3.copy(&ObjectPath::from(from), &ObjectPath::from(to)))
                    .await?;
            }
            Inner::Local { dir, .. } => {
                let target = local_path(dir, to)?;
                if let Some(parent) = target.parent() {
                    tokio::fs::create_dir_all(parent).await?;
                }
                tokio::fs::copy(local_path(dir, from)?, target).await?;
            }
        }
        Ok(())
    }

    /// Stores `bytes` at `key` with `content_type`.
    pub async fn put(
        &self,
        key: &str,
        bytes: Bytes,
        content_type: &str,
    ) -> Result<(), StorageError> {
        match &*self.inner {
            Inner::S3 { store: s3, .. } => {
                let mut attributes = Attributes::new();
                attributes.insert(Attribute::ContentType, content_type.to_owned().into());
                self.s3(s3.put_opts(
                    &ObjectPath::from(key),
                    PutPayload::from(bytes),
                    PutOptions {
                        attributes,
                        ..Default::default()
                    },
                ))
                .await?;
                Ok(())
            }
            Inner::Local { dir, .. } => {
                let path = local_path(dir, key)?;
                if let Some(parent) = path.parent() {
                    tokio::fs::create_dir_all(parent).await?;
                }
                tokio::fs::write(path, bytes).await?;
                Ok(())
            }
        }
    }

    /// Removes an object (absent is fine).
    pub async fn delete(&self, key: &str) -> Result<(), StorageError> {
        let r = match &*self.inner {
            Inner::S3 { store: s3, .. } => self.s3(s3.delete(&ObjectPath::from(key))).await,
            Inner::Local { dir, .. } => tokio::fs::remove_file(local_path(dir, key)?)
                .await
                .map_err(StorageError::from),
        };
        match r {
            Err(StorageError::NotFound) | Ok(()) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The local file of `key`, for chat-service to stream into or out of.
    pub fn local_file(&self, key: &str) -> Option<PathBuf> {
        match &*self.inner {
            Inner::Local { dir, .. } => local_path(dir, key).ok(),
            Inner::S3 { .. } => None,
        }
    }
}

fn local_path(dir: &std::path::Path, key: &str) -> Result<PathBuf, StorageError> {
    if !valid_key(key) {
        return Err(StorageError::Other(format!("invalid object key {key:?}")));
    }
    Ok(dir.join(key))
}

fn local_signature(key: &[u8], method: &str, object: &str, expires: i64) -> String {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key) else {
        return String::new();
    };
    mac.update(method.as_bytes());
    mac.update(b"\n");
    mac.update(object.as_bytes());
    mac.update(b"\n");
    mac.update(expires.to_string().as_bytes());
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The largest image (either side, in pixels) decoded for a thumbnail or an avatar.
const MAX_DECODED_SIDE: u32 = 12_000;

/// The most memory one decode may take: an 8,000 × 8,000 picture with an alpha channel, a
/// 48-megapixel photo without one. A small file can claim far more (a decompression bomb):
/// the decoder refuses it from its header, before allocating.
const MAX_DECODE_BYTES: u64 = 256 * 1024 * 1024;

/// Images decoded at once in one process. Decoding is CPU work, and each decode may take
/// [`MAX_DECODE_BYTES`]: without a bound, one user's burst of image messages (their thumbnails
/// are made off the send path, all at once) could take every core and gigabytes of memory.
const DECODES_AT_ONCE: usize = 2;

static DECODING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(DECODES_AT_ONCE);

/// One of the process's [`DECODES_AT_ONCE`] turns at decoding an image. Take it before reading
/// the file, so files waiting for a turn are not held in memory meanwhile; [`shrink_image`]
/// keeps it until the decode is done.
pub struct DecodeSlot(#[allow(dead_code)] Option<tokio::sync::SemaphorePermit<'static>>);

impl DecodeSlot {
    /// Waits for a turn.
    pub async fn acquire() -> Self {
        // The semaphore is never closed, so a permit always comes.
        Self(DECODING.acquire().await.ok())
    }
}

/// A decoded image: its size, and a copy no larger than `max` on either side (never enlarged) as
/// PNG. Runs on a blocking thread (decoding is CPU work), holding `slot` until done; a
/// decompression bomb is refused by the decoder's limits, not allocated.
pub async fn shrink_image(
    slot: DecodeSlot,
    bytes: Bytes,
    max: u32,
) -> Result<(u32, u32, Bytes), String> {
    tokio::task::spawn_blocking(move || {
        let _slot = slot;
        let mut reader = image::ImageReader::new(std::io::Cursor::new(&bytes[..]))
            .with_guessed_format()
            .map_err(|e| e.to_string())?;
        let mut limits = image::Limits::default();
        limits.max_image_width = Some(MAX_DECODED_SIDE);
        limits.max_image_height = Some(MAX_DECODED_SIDE);
        limits.max_alloc = Some(MAX_DECODE_BYTES);
        reader.limits(limits);
        let img = reader.decode().map_err(|e| e.to_string())?;
        let (w, h) = (img.width(), img.height());
        // `thumbnail` scales to fit either way: a smaller image is kept at its size.
        let small = if w > max || h > max {
            img.thumbnail(max, max)
        } else {
            img
        };
        let mut out = std::io::Cursor::new(Vec::new());
        small
            .write_to(&mut out, image::ImageFormat::Png)
            .map_err(|e| e.to_string())?;
        Ok((w, h, Bytes::from(out.into_inner())))
    })
    .await
    .map_err(|e| e.to_string())?
}

/// The content type the bytes show (their magic numbers), when they show one.
pub fn sniff(head: &[u8]) -> Option<&'static str> {
    infer::get(head).map(|t| t.mime_type())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An unreachable store fails a request within the retry budget, and the requests after it
    /// at once, without trying, until the pause is over.
    #[tokio::test]
    async fn an_unreachable_store_fails_fast() {
        // A loopback port nobody listens on: connections are refused.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap_or(9);
        let storage = Storage::new(
            &StorageConfig::S3 {
                endpoint: format!("http://127.0.0.1:{port}"),
                public_endpoint: String::new(),
                bucket: "b".into(),
                region: "us-east-1".into(),
                access_key_id: "k".into(),
                secret_access_key: "s".into(),
                path_style: true,
            },
            "secret",
        )
        .unwrap();
        let started = Instant::now();
        let first = storage.size("uploads/x").await;
        assert!(matches!(first, Err(StorageError::Other(_))), "{first:?}");
        assert!(
            started.elapsed() < STORE_RETRY_TIMEOUT + STORE_CONNECT_TIMEOUT * 2,
            "the first failure took {:?}",
            started.elapsed()
        );
        let started = Instant::now();
        let second = storage.copy("uploads/x", "attachments/x/y").await;
        match second {
            Err(StorageError::Other(e)) => assert!(e.contains("not tried"), "{e}"),
            other => panic!("{other:?}"),
        }
        assert!(started.elapsed() < Duration::from_millis(50));
        // Once the pause is over, the store is tried again.
        storage.outage.until_ms.store(0, Ordering::Relaxed);
        match storage.delete("uploads/x").await {
            Err(StorageError::Other(e)) => assert!(!e.contains("not tried"), "{e}"),
            other => panic!("{other:?}"),
        }
    }

    /// A PNG that claims `width` × `height` RGBA pixels and holds none.
    fn png_claiming(width: u32, height: u32) -> Vec<u8> {
        fn chunk(out: &mut Vec<u8>, kind: &[u8], data: &[u8]) {
            out.extend_from_slice(&(data.len() as u32).to_be_bytes());
            let mut crc = crc32fast::Hasher::new();
            crc.update(kind);
            crc.update(data);
            out.extend_from_slice(kind);
            out.extend_from_slice(data);
            out.extend_from_slice(&crc.finalize().to_be_bytes());
        }
        let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
        let mut header = Vec::new();
        header.extend_from_slice(&width.to_be_bytes());
        header.extend_from_slice(&height.to_be_bytes());
        // 8 bits per channel, RGBA, deflate, adaptive filtering, not interlaced.
        header.extend_from_slice(&[8, 6, 0, 0, 0]);
        chunk(&mut png, b"IHDR", &header);
        // An empty zlib stream: no pixel data at all.
        chunk(
            &mut png,
            b"IDAT",
            &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01],
        );
        chunk(&mut png, b"IEND", &[]);
        png
    }

    #[tokio::test]
    async fn an_image_claiming_more_memory_than_a_decode_may_take_is_refused_unread() {
        // 9,000 × 9,000 RGBA is 324 MB: within the side limit, past the memory one.
        let refused = shrink_image(
            DecodeSlot::acquire().await,
            Bytes::from(png_claiming(9_000, 9_000)),
            64,
        )
        .await;
        let e = refused.err().unwrap_or_default();
        assert!(e.to_lowercase().contains("limit"), "{e}");
        // Too wide, however little memory it claims.
        let e = shrink_image(
            DecodeSlot::acquire().await,
            Bytes::from(png_claiming(13_000, 1)),
            64,
        )
        .await
        .err()
        .unwrap_or_default();
        assert!(e.to_lowercase().contains("limit"), "{e}");
    }

    /// A real `width` × `height` RGB image, encoded as PNG.
    fn png(width: u32, height: u32) -> Bytes {
        let mut out = std::io::Cursor::new(Vec::new());
        image::DynamicImage::new_rgb8(width, height)
            .write_to(&mut out, image::ImageFormat::Png)
            .map(|()| Bytes::from(out.into_inner()))
            .unwrap_or_default()
    }

    async fn shrunk_size(bytes: Bytes, max: u32) -> (u32, u32) {
        let (_, _, small) = shrink_image(DecodeSlot::acquire().await, bytes, max)
            .await
            .unwrap_or_default();
        image::load_from_memory(&small).map_or((0, 0), |i| (i.width(), i.height()))
    }

    #[tokio::test]
    async fn images_are_shrunk_to_fit_and_never_enlarged() {
        assert_eq!(shrunk_size(png(640, 320), 64).await, (64, 32));
        assert_eq!(shrunk_size(png(16, 12), 64).await, (16, 12));
    }

    #[tokio::test]
    async fn images_are_decoded_a_few_at_a_time() {
        let held: Vec<DecodeSlot> =
            futures_util::future::join_all((0..DECODES_AT_ONCE).map(|_| DecodeSlot::acquire()))
                .await;
        let waiting = tokio::spawn(DecodeSlot::acquire());
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!waiting.is_finished(), "a turn past the bound waits");
        drop(held);
        let turn = tokio::time::timeout(Duration::from_secs(2), waiting).await;
        assert!(turn.is_ok(), "and gets one once a decode is done");
    }

    #[test]
    fn keys_stay_inside_the_directory() {
        assert!(valid_key("uploads/0190-ab"));
        for bad in [
            "",
            "/etc/passwd",
            "uploads/../x",
            "a b",
            "a\\b",
            "uploads/%2e",
        ] {
            assert!(!valid_key(bad), "{bad}");
        }
    }

    /// The origin the browser app is told to allow is the one the signer's URLs have, for
    /// every way of addressing a store.
    #[tokio::test]
    async fn the_browser_origin_is_where_signed_urls_point() {
        let s3 = |endpoint: &str, public_endpoint: &str, path_style: bool| StorageConfig::S3 {
            endpoint: endpoint.into(),
            public_endpoint: public_endpoint.into(),
            bucket: "files".into(),
            region: "eu-west-1".into(),
            access_key_id: "key".into(),
            secret_access_key: "secret".into(),
            path_style,
        };
        for config in [
            s3("", "", false),
            s3("", "", true),
            s3("http://minio:9000", "", true),
            s3("http://minio:9000", "https://files.example.com:8443", true),
            s3("https://files.store.example", "", false),
        ] {
            let signed = Storage::new(&config, "secret")
                .unwrap()
                .signed_url(reqwest::Method::PUT, "uploads/x1", Duration::from_secs(60))
                .await
                .unwrap();
            let expected = reqwest::Url::parse(&signed)
                .unwrap()
                .origin()
                .ascii_serialization();
            assert_eq!(config.browser_origin(), Ok(Some(expected)), "{config:?}");
        }
        let local = |public_url: &str| StorageConfig::Local {
            dir: std::env::temp_dir(),
            public_url: public_url.into(),
        };
        assert_eq!(local("").browser_origin(), Ok(None));
        assert_eq!(
            local("https://chat.example.com/base").browser_origin(),
            Ok(Some("https://chat.example.com".into()))
        );
        assert!(local("chat.example.com").browser_origin().is_err());
    }

    #[tokio::test]
    async fn local_urls_are_signed_per_method_key_and_expiry() {
        let dir = std::env::temp_dir().join(format!("cs-storage-{}", uuid::Uuid::new_v4()));
        let s = Storage::new(
            &StorageConfig::Local {
                dir: dir.clone(),
                public_url: String::new(),
            },
            "secret",
        )
        .unwrap();
        let url = s
            .signed_url(reqwest::Method::PUT, "uploads/x1", Duration::from_secs(60))
            .await
            .unwrap();
        assert!(url.starts_with("/chat/files/uploads/x1?expires="));
        let q = url.split_once('?').unwrap().1;
        let expires: i64 = q.split('&').next().unwrap()[8..].parse().unwrap();
        let sig = q.split("sig=").nth(1).unwrap();
        assert!(s.verify_local("PUT", "uploads/x1", expires, sig));
        assert!(
            !s.verify_local("GET", "uploads/x1", expires, sig),
            "per method"
        );
        assert!(
            !s.verify_local("PUT", "uploads/x2", expires, sig),
            "per key"
        );
        assert!(
            !s.verify_local("PUT", "uploads/x1", expires + 1, sig),
            "per expiry"
        );
        assert!(!s.verify_local("PUT", "uploads/x1", 1, sig), "expired");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_stored_object_must_match_its_declaration() {
        let png = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR";
        assert_eq!(mismatch("image/png", 16, 16, png), None);
        assert!(mismatch("image/png", 15, 16, png)
            .unwrap()
            .contains("16 bytes"));
        assert!(mismatch("image/jpeg", 16, 16, png)
            .unwrap()
            .contains("image/png"));
        assert!(
            mismatch("image/png", 5, 5, b"hello").is_some(),
            "an image must look like one"
        );
        assert_eq!(mismatch("text/plain", 5, 5, b"hello"), None);
        assert!(
            mismatch("text/plain", 16, 16, png).is_some(),
            "no PNG passed off as text"
        );
    }

    #[test]
    fn sniffing_sees_images_and_pdfs() {
        assert_eq!(sniff(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR"), Some("image/png"));
        assert_eq!(sniff(b"%PDF-1.7\n"), Some("application/pdf"));
        assert_eq!(sniff(b"hello world"), None);
    }
}
