//! Settings that cannot work stop chat-service at start, with one line naming the setting,
//! before it connects to anything.

use std::process::Command;

/// Runs chat-service with the required settings, `extra` on top, and returns its stderr.
fn refused_with(extra: &[(&str, &str)]) -> String {
    let mut command = Command::new(env!("CARGO_BIN_EXE_chat-service"));
    command
        .env_clear()
        .env("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/x")
        .env("SECRET_KEY", "0123456789abcdef0123456789abcdef")
        .current_dir(std::env::temp_dir());
    for (name, value) in extra {
        command.env(name, value);
    }
    let out = command.output().unwrap();
    assert!(!out.status.success(), "started with {extra:?}");
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    stderr
}

#[test]
fn storage_settings_that_cannot_work_stop_the_process() {
    for (extra, expected) in [
        // An endpoint without a bucket would keep files on this replica's disk.
        (
            &[("S3_ENDPOINT", "http://minio:9000")][..],
            "configuration error: S3_BUCKET is not set, but S3_ENDPOINT is",
        ),
        (
            &[("S3_SECRET_ACCESS_KEY", "secret")][..],
            "configuration error: S3_BUCKET is not set, but S3_SECRET_ACCESS_KEY is",
        ),
        (
            &[("S3_BUCKET", "b"), ("S3_ENDPOINT", "::::")][..],
            "configuration error: S3_ENDPOINT is invalid (\"::::\")",
        ),
        (
            &[("S3_BUCKET", "b"), ("S3_ENDPOINT", "ftp://minio")][..],
            "configuration error: S3_ENDPOINT is invalid (\"ftp://minio\"): expected an http(s) URL",
        ),
        (
            &[("S3_BUCKET", "b"), ("S3_PUBLIC_ENDPOINT", "minio:9000")][..],
            "configuration error: S3_PUBLIC_ENDPOINT is invalid",
        ),
        (
            &[("S3_BUCKET", "b"), ("S3_ACCESS_KEY_ID", "id")][..],
            "configuration error: S3_SECRET_ACCESS_KEY is not set, but S3_ACCESS_KEY_ID is",
        ),
        (
            &[("WEBHOOK_URL", "https://")][..],
            "configuration error: WEBHOOK_URL is invalid (\"https://\")",
        ),
        (
            &[("PUBLIC_URL", "https://chat.example.com/?x=1")][..],
            "configuration error: PUBLIC_URL is invalid",
        ),
        (
            &[("ALLOWED_UPLOAD_TYPES", "image/png,pdf")][..],
            "configuration error: ALLOWED_UPLOAD_TYPES is invalid: \"pdf\" is not a media type",
        ),
        (
            &[("ALLOWED_UPLOAD_TYPES", " , ")][..],
            "configuration error: ALLOWED_UPLOAD_TYPES is invalid: name at least one type",
        ),
        (
            &[("MAX_UPLOAD_BYTES", "0")][..],
            "configuration error: MAX_UPLOAD_BYTES is invalid: must be at least 1",
        ),
        (
            &[("MAX_UPLOAD_BYTES", "5368709121")][..],
            "configuration error: MAX_UPLOAD_BYTES is invalid: must be at most 5368709120",
        ),
        (
            &[("UPLOAD_URL_TTL_SECONDS", "604801")][..],
            "configuration error: UPLOAD_URL_TTL_SECONDS is invalid: must be at most 604800",
        ),
        (
            &[("UPLOAD_EXPIRY_HOURS", "0")][..],
            "configuration error: UPLOAD_EXPIRY_HOURS is invalid: must be at least 1",
        ),
    ] {
        let stderr = refused_with(extra);
        assert!(stderr.starts_with(expected), "{extra:?}: {stderr}");
    }
}

#[test]
fn out_of_range_numbers_stop_the_process() {
    for (name, value, expected) in [
        (
            "INTERNAL_MAX_IN_FLIGHT",
            "18446744073709551615",
            "must be at most 100000",
        ),
        (
            "SEND_LEASE_MS",
            "18446744073709551615",
            "must be at most 3600000",
        ),
        ("SEND_LEASE_MS", "100", "must be at least 300"),
        ("MAX_BODY_BYTES", "0", "must be at least 1"),
    ] {
        let stderr = refused_with(&[(name, value)]);
        assert_eq!(
            stderr.trim(),
            format!("configuration error: {name} is invalid: {expected}")
        );
    }
}
