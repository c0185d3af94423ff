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
            // An S3 setting without a bucket would silently keep files on local disk, which
            // on several replicas means uploads one replica cannot see.
            for name in S3_ONLY {
                if !config::string(name, "")?.is_empty() {
                    return Err(ConfigError::new(
                        "S3_BUCKET",
                        format!(
                            "is not set, but {name} is: set S3_BUCKET to store files in S3, \
                             or unset the S3_* settings to keep them in UPLOAD_DIR"
                        ),
                    ));
                }
            }
            return Ok(StorageConfig::Local {
                dir: PathBuf::from(config::string("UPLOAD_DIR", "data/uploads")?),
                public_url: base_url("PUBLIC_URL")?,
            });
        }
        let endpoint = base_url("S3_ENDPOINT")?;
        let access_key_id = config::string("S3_ACCESS_KEY_ID", "")?;
        let secret_access_key = config::string("S3_SECRET_ACCESS_KEY", "")?;
        match (access_key_id.is_empty(), secret_access_key.is_empty()) {
            (false, true) => {
                return Err(ConfigError::new(
                    "S3_SECRET_ACCESS_KEY",
                    "is not set, but S3_ACCESS_KEY_ID is",
                ))
            }
            (true, false) => {
                return Err(ConfigError::new(
                    "S3_ACCESS_KEY_ID",
                    "is not set, but S3_SECRET_ACCESS_KEY is",
                ))
            }
            _ => {}
        }
        Ok(StorageConfig::S3 {
            public_endpoint: base_url("S3_PUBLIC_ENDPOINT")?,
            path_style: config::flag("S3_PATH_STYLE", !endpoint.is_empty())?,
            endpoint,
            bucket,
            region: config::string("S3_REGION", "us-east-1")?,
            access_key_id,
            secret_access_key,
        })
    }
}

/// Settings that only mean something with `S3_BUCKET`.
const S3_ONLY: [&str; 4] = [
    "S3_ENDPOINT",
    "S3_PUBLIC_ENDPOINT",
    "S3_ACCESS_KEY_ID",
    "S3_SECRET_ACCESS_KEY",
];

/// An optional `http(s)://host[:port][/path]` setting (empty when unset), without a trailing
/// slash: the base that object keys or `/chat/files/...` paths are put after.
fn base_url(name: &'static str) -> Result<String, ConfigError> {
    let value = config::http_url(name, "")?;
    if value.contains(['?', '#']) {
        return Err(ConfigError::new(
            name,
            format!("is invalid ({value:?}): expected no query or fragment"),
        ));
    }
    Ok(value.trim_end_matches('/').to_owned())
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

/// What may be uploaded: `MAX_UPLOAD_BYTES` (default 25 MiB, at most 5 GiB), `ALLOWED_UPLOAD_TYPES` (comma
/// separated), `UPLOAD_URL_TTL_SECONDS` (default 900), `DOWNLOAD_URL_TTL_SECONDS` (default 300), each at
/// most a week, `UPLOAD_EXPIRY_HOURS` (unused uploads are deleted after it, default 24, at most
/// a year).
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
        let allowed_types: Vec<String> = types
            .split(',')
            .map(|t| t.trim().to_ascii_lowercase())
            .filter(|t| !t.is_empty())
            .collect();
        if allowed_types.is_empty() {
            return Err(ConfigError::new(
                "ALLOWED_UPLOAD_TYPES",
                "is invalid: name at least one type",
            ));
        }
        if let Some(bad) = allowed_types.iter().find(|t| !is_media_type(t)) {
            return Err(ConfigError::new(
                "ALLOWED_UPLOAD_TYPES",
                format!("is invalid: {bad:?} is not a media type such as image/png"),
            ));
        }
        // A presigned URL lives at most a week (SigV4's limit).
        const WEEK: u64 = 7 * 24 * 3600;
        Ok(Self {
            // One PUT takes at most 5 GiB on S3.
            max_bytes: config::between("MAX_UPLOAD_BYTES", 25 << 20, 1, 5 << 30)?,
            allowed_types,
            upload_ttl: config::seconds("UPLOAD_URL_TTL_SECONDS", 900, 1, WEEK)?,
            download_ttl: config::seconds("DOWNLOAD_URL_TTL_SECONDS", 300, 1, WEEK)?,
            expiry: Duration::from_secs(
                3600 * config::between("UPLOAD_EXPIRY_HOURS", 24u64, 1, 24 * 366)?,
            ),
        })
    }

    pub fn allows(&self, content_type: &str) -> bool {
        self.allowed_types.iter().any(|t| t == content_type)
    }
}

/// `type/subtype`, each an RFC 9110 token, without parameters.
fn is_media_type(value: &str) -> bool {
    let token = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
    };
    value
        .split_once('/')
        .is_some_and(|(kind, sub)| token(kind) && token(sub))
}
