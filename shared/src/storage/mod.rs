//! Object storage for attachments and avatars: an S3-compatible store (`S3_*` settings), or,
//! with none configured, a local directory (`UPLOAD_DIR`) whose objects chat-service serves
//! through signed URLs of the same shape. Clients send and fetch bytes at the URLs this module
//! signs; the bytes never pass through a gateway or Postgres.
//!
//! S3 goes through the `object_store` crate: it speaks the S3 API to Amazon and to any store
//! that implements it (MinIO, Ceph, R2, …), with custom endpoints, path-style addressing and
//! any region. The presigned URLs handed to clients are signed here ([`signing`]): they pin
//! what an upload may be and how a download is served.

mod config;
mod content;
mod signing;

pub use config::{StorageConfig, UploadLimits, DEFAULT_ALLOWED_TYPES};
pub use content::{mismatch, shrink_image, sniff, DecodeSlot};

use signing::{aws_encode, constant_time_eq, local_signature, Keys, Presign};

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
    Attribute, Attributes, BackoffConfig, ClientOptions, ObjectStore, PutOptions, PutPayload,
    RetryConfig,
};
use sha2::Sha256;

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

/// Queues `keys` for deletion from the store, due now, in the caller's transaction (or
/// statement): chat-service's removal sweep deletes them and tries again whatever the store
/// refuses, so a change that calls for a deletion never loses it to an outage or a crash.
pub async fn queue_removal<'c>(
    conn: impl sqlx::PgExecutor<'c>,
    keys: &[String],
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO object_removals (key, due_at) SELECT unnest($1::text[]), now()
         ON CONFLICT (key) DO UPDATE SET due_at = now(), unless_used = false",
    )
    .bind(keys)
    .execute(conn)
    .await?;
    Ok(())
}

/// What an upload URL admits: exactly `size` bytes, sent as `content_type` (as declared).
pub struct UploadTerms<'a> {
    pub content_type: &'a str,
    pub size: u64,
}

/// How a download is served, whatever the stored object says of itself: as the declared
/// type, and as a download named `filename` unless it is an image whose bytes were checked to
/// be that image. On S3 an object's own `Content-Type` is whatever its uploader's PUT sent.
pub struct Served<'a> {
    pub content_type: &'a str,
    pub filename: &'a str,
}

/// Types shown inline: raster images, whose bytes are checked to be of their declared type
/// before anything serves them (an SVG, say, is a download: it can hold scripts).
const INLINE_TYPES: [&str; 4] = ["image/png", "image/jpeg", "image/gif", "image/webp"];

/// RFC 8187's `attr-char`s stay as they are in `filename*`; everything else is encoded.
const FILENAME_ENCODE: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'!')
    .remove(b'#')
    .remove(b'$')
    .remove(b'&')
    .remove(b'+')
    .remove(b'-')
    .remove(b'.')
    .remove(b'^')
    .remove(b'_')
    .remove(b'`')
    .remove(b'|')
    .remove(b'~');

impl Served<'_> {
    /// `inline` or `attachment`, with the file's name: in ASCII (anything else, `"` and `\`
    /// as `_`) and in full (RFC 6266's `filename*`).
    pub fn content_disposition(&self) -> String {
        let kind = if INLINE_TYPES.contains(&self.content_type) {
            "inline"
        } else {
            "attachment"
        };
        let ascii: String = self
            .filename
            .chars()
            .map(|c| match c {
                '"' | '\\' => '_',
                ' '..='~' => c,
                _ => '_',
            })
            .collect();
        let full = percent_encoding::utf8_percent_encode(self.filename, FILENAME_ENCODE);
        format!("{kind}; filename=\"{ascii}\"; filename*=UTF-8''{full}")
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
    S3 {
        /// The store as the services reach it.
        store: AmazonS3,
        /// The bucket's URL as clients reach it ([`StorageConfig::public_base`]).
        public_base: String,
        region: String,
    },
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
                bucket,
                region,
                access_key_id,
                secret_access_key,
                path_style,
                ..
            } => {
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
                Inner::S3 {
                    store: b.build()?,
                    public_base: config.public_base().unwrap_or_default(),
                    region: region.clone(),
                }
            }
            StorageConfig::Local { dir, public_url } => {
                std::fs::create_dir_all(dir).map_err(|e| {
                    StorageError::Other(format!(
                        "UPLOAD_DIR {} could not be created: {e}",
                        dir.display()
                    ))
                })?;
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

    /// The URL a client uploads `key` to until `ttl` from now: one PUT of exactly
    /// `terms.size` bytes sent with `Content-Type: terms.content_type` (S3 refuses any other,
    /// as does chat-service for the local directory).
    pub async fn upload_url(
        &self,
        key: &str,
        ttl: Duration,
        terms: &UploadTerms<'_>,
    ) -> Result<String, StorageError> {
        let size = terms.size.to_string();
        self.signed(
            "PUT",
            key,
            ttl,
            &[
                ("content-type", terms.content_type.to_owned()),
                ("content-length", size.clone()),
            ],
            &[],
            &[("type", terms.content_type), ("size", &size)],
        )
        .await
    }

    /// The URL a client downloads `key` from until `ttl` from now, served as `served` says
    /// whatever the stored object says of itself.
    pub async fn download_url(
        &self,
        key: &str,
        ttl: Duration,
        served: &Served<'_>,
    ) -> Result<String, StorageError> {
        let disposition = served.content_disposition();
        self.signed(
            "GET",
            key,
            ttl,
            &[],
            &[
                ("response-content-type", served.content_type.to_owned()),
                ("response-content-disposition", disposition.clone()),
            ],
            &[("type", served.content_type), ("disposition", &disposition)],
        )
        .await
    }

    /// A URL for `method` on `key` until `ttl` from now. On S3, presigned with the store's
    /// current keys (static, or the environment's or the instance's role), pinning `headers`
    /// and `query`; in the local directory, signed with chat-service's key under `terms`, which
    /// its `/chat/files` routes enforce the same way.
    async fn signed(
        &self,
        method: &str,
        key: &str,
        ttl: Duration,
        headers: &[(&str, String)],
        query: &[(&str, String)],
        terms: &[(&str, &str)],
    ) -> Result<String, StorageError> {
        match &*self.inner {
            Inner::S3 {
                store,
                public_base,
                region,
            } => {
                let credential = store.credentials().get_credential().await?;
                let url = reqwest::Url::parse(&format!("{public_base}/{key}"))
                    .map_err(|e| StorageError::Other(format!("the object URL of {key}: {e}")))?;
                let signed = Presign {
                    method,
                    url,
                    region,
                    headers,
                    query,
                    expires_in: ttl,
                }
                .sign(
                    &Keys {
                        id: &credential.key_id,
                        secret: &credential.secret_key,
                        token: credential.token.as_deref(),
                    },
                    chrono::Utc::now(),
                );
                Ok(signed.into())
            }
            Inner::Local {
                public_url, key: k, ..
            } => {
                let expires = chrono::Utc::now().timestamp() + ttl.as_secs() as i64;
                let sig = local_signature(k, method, key, expires, terms);
                let terms: String = terms
                    .iter()
                    .map(|(name, value)| format!("&{name}={}", aws_encode(value)))
                    .collect();
                Ok(format!(
                    "{public_url}{LOCAL_PREFIX}{key}?expires={expires}{terms}&sig={sig}"
                ))
            }
        }
    }

    /// Checks a local URL's signature and expiry (for chat-service's `/chat/files` routes):
    /// `method` on `key` until `expires`, under `terms` as the URL carries them.
    pub fn verify_local(
        &self,
        method: &str,
        key: &str,
        expires: i64,
        terms: &[(&str, &str)],
        sig: &str,
    ) -> bool {
        match &*self.inner {
            Inner::Local { key: k, .. } => {
                expires >= chrono::Utc::now().timestamp()
                    && valid_key(key)
                    && constant_time_eq(
                        local_signature(k, method, key, expires, terms).as_bytes(),
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A local directory that cannot be created is named in the error the process stops with.
    #[test]
    fn an_upload_dir_that_cannot_be_created_is_named() {
        let file = std::env::temp_dir().join(format!("cs-not-a-dir-{}", uuid::Uuid::new_v4()));
        std::fs::write(&file, b"").unwrap();
        let dir = file.join("uploads");
        let config = StorageConfig::Local {
            dir: dir.clone(),
            public_url: String::new(),
        };
        let error = Storage::new(&config, "0123456789abcdef0123456789abcdef")
            .err()
            .unwrap()
            .to_string();
        std::fs::remove_file(&file).unwrap();
        assert!(
            error.contains(&format!(
                "UPLOAD_DIR {} could not be created",
                dir.display()
            )),
            "{error}"
        );
    }

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

    const PNG_OF_5: UploadTerms = UploadTerms {
        content_type: "image/png",
        size: 5,
    };

    /// The origin the browser app is told to allow is the one the signed URLs have, for
    /// every way of addressing a store; each URL names the object where object_store's own
    /// requests do.
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
        for (config, object) in [
            (
                s3("", "", false),
                "https://files.s3.eu-west-1.amazonaws.com/uploads/x1",
            ),
            (
                s3("", "", true),
                "https://s3.eu-west-1.amazonaws.com/files/uploads/x1",
            ),
            (
                s3("http://minio:9000", "", true),
                "http://minio:9000/files/uploads/x1",
            ),
            (
                s3("http://minio:9000", "https://files.example.com:8443/", true),
                "https://files.example.com:8443/files/uploads/x1",
            ),
            (
                s3("https://files.store.example", "", false),
                "https://files.store.example/uploads/x1",
            ),
        ] {
            let signed = Storage::new(&config, "secret")
                .unwrap()
                .upload_url("uploads/x1", Duration::from_secs(60), &PNG_OF_5)
                .await
                .unwrap();
            let url = reqwest::Url::parse(&signed).unwrap();
            assert_eq!(signed.split_once('?').unwrap().0, object, "{config:?}");
            assert_eq!(
                config.browser_origin(),
                Ok(Some(url.origin().ascii_serialization())),
                "{config:?}"
            );
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

    /// An S3 upload URL signs the declared type and length; a download URL the type and
    /// disposition it is served with.
    #[tokio::test]
    async fn s3_urls_pin_the_upload_and_the_download() {
        let storage = Storage::new(
            &StorageConfig::S3 {
                endpoint: "http://127.0.0.1:9000".into(),
                public_endpoint: String::new(),
                bucket: "files".into(),
                region: "us-east-1".into(),
                access_key_id: "key".into(),
                secret_access_key: "secret".into(),
                path_style: true,
            },
            "secret",
        )
        .unwrap();
        let query = |url: &str| -> Vec<(String, String)> {
            reqwest::Url::parse(url)
                .unwrap()
                .query_pairs()
                .into_owned()
                .collect()
        };
        let put = storage
            .upload_url("uploads/x1", Duration::from_secs(60), &PNG_OF_5)
            .await
            .unwrap();
        assert!(query(&put).contains(&(
            "X-Amz-SignedHeaders".into(),
            "content-length;content-type;host".into()
        )));
        let get = storage
            .download_url(
                "attachments/x1/y",
                Duration::from_secs(60),
                &Served {
                    content_type: "text/plain",
                    filename: "notes.txt",
                },
            )
            .await
            .unwrap();
        let q = query(&get);
        assert!(q.contains(&("response-content-type".into(), "text/plain".into())));
        assert!(q.contains(&(
            "response-content-disposition".into(),
            "attachment; filename=\"notes.txt\"; filename*=UTF-8''notes.txt".into()
        )));
        assert!(q.iter().any(|(k, _)| k == "X-Amz-Signature"));
    }

    #[test]
    fn only_checked_images_are_shown_inline() {
        let served = |content_type, filename| {
            Served {
                content_type,
                filename,
            }
            .content_disposition()
        };
        assert_eq!(
            served("image/png", "cat.png"),
            "inline; filename=\"cat.png\"; filename*=UTF-8''cat.png"
        );
        assert!(served("image/svg+xml", "x.svg").starts_with("attachment;"));
        assert!(served("text/html", "x.html").starts_with("attachment;"));
        assert_eq!(
            served("application/pdf", "Über \"q\"\\1 (2).pdf"),
            "attachment; filename=\"_ber _q__1 (2).pdf\"; \
             filename*=UTF-8''%C3%9Cber%20%22q%22%5C1%20%282%29.pdf"
        );
    }

    #[tokio::test]
    async fn local_urls_are_signed_per_method_key_expiry_and_terms() {
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
            .upload_url("uploads/x1", Duration::from_secs(60), &PNG_OF_5)
            .await
            .unwrap();
        assert!(url.starts_with("/chat/files/uploads/x1?expires="));
        let q: Vec<(String, String)> = reqwest::Url::parse("http://x")
            .unwrap()
            .join(&url)
            .unwrap()
            .query_pairs()
            .into_owned()
            .collect();
        let get = |name: &str| {
            q.iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
                .unwrap()
        };
        let expires: i64 = get("expires").parse().unwrap();
        let sig = get("sig");
        let terms = [("type", "image/png"), ("size", "5")];
        assert_eq!((get("type"), get("size")), ("image/png".into(), "5".into()));
        assert!(s.verify_local("PUT", "uploads/x1", expires, &terms, &sig));
        let other_type = [("type", "text/html"), ("size", "5")];
        let other_size = [("type", "image/png"), ("size", "6")];
        for (method, key, expires, terms, what) in [
            ("GET", "uploads/x1", expires, terms, "per method"),
            ("PUT", "uploads/x2", expires, terms, "per key"),
            ("PUT", "uploads/x1", expires + 1, terms, "per expiry"),
            ("PUT", "uploads/x1", expires, other_type, "per type"),
            ("PUT", "uploads/x1", expires, other_size, "per size"),
            ("PUT", "uploads/x1", 1, terms, "expired"),
        ] {
            assert!(
                !s.verify_local(method, key, expires, &terms, &sig),
                "{what}"
            );
        }
        let _ = std::fs::remove_dir_all(dir);
    }
}
