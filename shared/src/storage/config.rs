//! What the store is (`S3_*` or `UPLOAD_DIR`) and what may be uploaded to it.

use std::{path::PathBuf, time::Duration};

use crate::config::{self, ConfigError};

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
    /// The base of the object URLs handed to clients (an object's is `<base>/<key>`): the
    /// same addressing as object_store's. A custom endpoint is used as given (with
    /// virtual-hosted requests it names the bucket itself), the bucket appended with
    /// `path_style`; without one, Amazon's regional endpoint, the bucket as its subdomain
    /// unless `path_style`. `None`: paths on the page's origin (a local directory without
    /// `PUBLIC_URL`).
    pub fn public_base(&self) -> Option<String> {
        match self {
            StorageConfig::Local { public_url, .. } if public_url.is_empty() => None,
            StorageConfig::Local { public_url, .. } => Some(public_url.clone()),
            StorageConfig::S3 {
                endpoint,
                public_endpoint,
                bucket,
                region,
                path_style,
                ..
            } => {
                let named = if public_endpoint.is_empty() {
                    endpoint
                } else {
                    public_endpoint
                };
                let named = named.trim_end_matches('/');
                Some(match (named.is_empty(), path_style) {
                    (true, true) => format!("https://s3.{region}.amazonaws.com/{bucket}"),
                    (true, false) => format!("https://{bucket}.s3.{region}.amazonaws.com"),
                    (false, true) => format!("{named}/{bucket}"),
                    (false, false) => named.to_owned(),
                })
            }
        }
    }

    /// The origin (`scheme://host[:port]`) at which browsers reach the URLs this store hands
    /// out, when it is not the page's own (see [`Self::public_base`]): what the browser app's
    /// `Content-Security-Policy` must let it connect to.
    pub fn browser_origin(&self) -> Result<Option<String>, String> {
        let Some(url) = self.public_base() else {
            return Ok(None);
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
