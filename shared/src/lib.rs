//! Code that every ChatSphere binary shares, and nothing service-specific.
//!
//! - [`config`] — reading settings from the environment and `.env`, with one clear error per bad setting.
//! - [`error`] — the JSON error body of the public contract and the [`error::ApiError`] type behind it.
//! - [`extract`] — axum extractors that turn malformed input into contract errors instead of panics.
//! - [`jwt`] — access-token claims, issuing and verification (HS256, pinned), and the [`jwt::AuthUser`] extractor.
//! - [`keys`] — every Redis key name, under one configurable prefix.
//! - [`limits`] — per-user token buckets and quotas in Redis; [`lua`] — the scripts behind them (and every other one), run by hash.
//! - [`db`], [`redis`] — connection pools, migrations, readiness waits.
//! - [`http`] — the layers every REST router gets (CORS, body limit, JSON 404/405, metrics, request tracing).
//! - [`server`] — every service's accept loop (binding, `TCP_NODELAY`, the header read timeout, graceful stop).
//! - [`health`], [`metrics`], [`telemetry`], [`shutdown`] — operations plumbing.
//! - `storage` (feature `storage`) — object storage (S3 or a local directory) and images.

pub mod admin;
pub mod asyncapi;
pub mod chat;
pub mod config;
pub mod db;
pub mod docs;
pub mod error;
pub mod extract;
pub mod health;
pub mod http;
pub mod internal;
pub mod jwt;
pub mod keys;
pub mod limits;
pub mod lua;
pub mod metrics;
pub mod presence;
pub mod redis;
pub mod revocation;
pub mod server;
pub mod shutdown;
pub mod startup;
#[cfg(feature = "storage")]
pub mod storage;
pub mod telemetry;
pub mod text;
pub mod ticket;

pub use error::{ApiError, ApiResult};
