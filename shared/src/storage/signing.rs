//! URL signatures: S3's presigned URLs (SigV4 query-string authentication), which here also
//! pin request headers and response overrides, and the local directory's HMAC-signed URLs.
//!
//! object_store presigns URLs too, but over the host alone: the uploader would choose the
//! stored `Content-Type` and the size (up to 5 GB), and a download would be served as whatever
//! the uploader sent. Signing `content-type` and `content-length` makes S3 refuse any other
//! upload; signing `response-content-type` and `response-content-disposition` makes it serve the
//! declared type, as a download unless it is a checked image.

use std::time::Duration;

use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use reqwest::Url;
use sha2::{Digest, Sha256};

/// AWS's URI encoding: everything but `A-Z a-z 0-9 - _ . ~` is percent-encoded.
const AWS_ENCODE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

const ALGORITHM: &str = "AWS4-HMAC-SHA256";

/// The access key a presigned URL is signed with (a session token with temporary keys).
pub(super) struct Keys<'a> {
    pub id: &'a str,
    pub secret: &'a str,
    pub token: Option<&'a str>,
}

/// A request a presigned URL allows.
pub(super) struct Presign<'a> {
    pub method: &'a str,
    /// The object's URL, without a query.
    pub url: Url,
    pub region: &'a str,
    /// Headers the request must carry with exactly these values (names in lower case),
    /// besides `host`.
    pub headers: &'a [(&'a str, String)],
    /// Query parameters signed with the URL (`response-content-type`, …).
    pub query: &'a [(&'a str, String)],
    pub expires_in: Duration,
}

impl Presign<'_> {
    /// The URL with its signature, as of `now`.
    pub(super) fn sign(self, keys: &Keys, now: DateTime<Utc>) -> Url {
        let date = now.format("%Y%m%d").to_string();
        let stamp = now.format("%Y%m%dT%H%M%SZ").to_string();
        let scope = format!("{date}/{}/s3/aws4_request", self.region);

        let host = match (self.url.host_str(), self.url.port()) {
            (Some(host), Some(port)) => format!("{host}:{port}"),
            (Some(host), None) => host.to_owned(),
            (None, _) => String::new(),
        };
        let mut headers: Vec<(String, String)> = self
            .headers
            .iter()
            .map(|(name, value)| (name.to_ascii_lowercase(), value.trim().to_owned()))
            .chain([("host".to_owned(), host)])
            .collect();
        headers.sort();
        let signed_headers = headers
            .iter()
            .map(|(name, _)| name.as_str())
            .collect::<Vec<_>>()
            .join(";");

        let mut query: Vec<(String, String)> = self
            .query
            .iter()
            .map(|(k, v)| (*k, v.as_str()))
            .chain([
                ("X-Amz-Algorithm", ALGORITHM),
                ("X-Amz-Credential", &format!("{}/{scope}", keys.id)),
                ("X-Amz-Date", &stamp),
                ("X-Amz-Expires", &self.expires_in.as_secs().to_string()),
                ("X-Amz-SignedHeaders", &signed_headers),
            ])
            .chain(keys.token.map(|t| ("X-Amz-Security-Token", t)))
            .map(|(k, v)| (aws_encode(k), aws_encode(v)))
            .collect();
        query.sort();
        let query = query
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&");

        let canonical_headers: String = headers
            .iter()
            .map(|(name, value)| format!("{name}:{value}\n"))
            .collect();
        let canonical_request = format!(
            "{}\n{}\n{query}\n{canonical_headers}\n{signed_headers}\nUNSIGNED-PAYLOAD",
            self.method,
            self.url.path()
        );
        let string_to_sign = format!(
            "{ALGORITHM}\n{stamp}\n{scope}\n{}",
            hex(&Sha256::digest(canonical_request.as_bytes()))
        );
        let mut key = hmac(format!("AWS4{}", keys.secret).as_bytes(), date.as_bytes());
        for part in [self.region, "s3", "aws4_request"] {
            key = hmac(&key, part.as_bytes());
        }
        let signature = hex(&hmac(&key, string_to_sign.as_bytes()));

        let mut url = self.url;
        url.set_query(Some(&format!("{query}&X-Amz-Signature={signature}")));
        url
    }
}

pub(super) fn aws_encode(s: &str) -> String {
    utf8_percent_encode(s, AWS_ENCODE).to_string()
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    // HMAC takes a key of any length: this never fails.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key) else {
        return Vec::new();
    };
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The signature of a local URL: `method` on `object` until `expires`, under `terms` (the
/// declared type and size of an upload; the type and disposition a download is served with).
pub(super) fn local_signature(
    key: &[u8],
    method: &str,
    object: &str,
    expires: i64,
    terms: &[(&str, &str)],
) -> String {
    let mut text = format!("{method}\n{object}\n{expires}");
    for (name, value) in terms {
        text.push_str(&format!("\n{name}={value}"));
    }
    hex(&hmac(key, text.as_bytes()))
}

pub(super) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(stamp: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(stamp).unwrap().to_utc()
    }

    fn signature(url: &Url) -> String {
        url.query_pairs()
            .find(|(k, _)| k == "X-Amz-Signature")
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default()
    }

    /// The example of AWS's "Authenticating Requests: Using Query Parameters" page.
    #[test]
    fn signs_as_aws_documents() {
        let url = Presign {
            method: "GET",
            url: Url::parse("https://examplebucket.s3.amazonaws.com/test.txt").unwrap(),
            region: "us-east-1",
            headers: &[],
            query: &[],
            expires_in: Duration::from_secs(86400),
        }
        .sign(
            &Keys {
                id: "AKIAIOSFODNN7EXAMPLE",
                secret: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
                token: None,
            },
            at("2013-05-24T00:00:00Z"),
        );
        assert_eq!(
            signature(&url),
            "aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404"
        );
    }

    const KEYS: Keys = Keys {
        id: "AKIDEXAMPLE",
        secret: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
        token: None,
    };

    /// Signed headers and a port: the signature botocore (another implementation) gives the
    /// same request.
    #[test]
    fn an_upload_url_pins_the_type_and_the_length() {
        let url = Presign {
            method: "PUT",
            url: Url::parse("http://127.0.0.1:9000/files/uploads/0193a").unwrap(),
            region: "eu-west-1",
            headers: &[
                ("content-type", "image/png".into()),
                ("content-length", "1234".into()),
            ],
            query: &[],
            expires_in: Duration::from_secs(900),
        }
        .sign(&KEYS, at("2026-12-07T10:30:00Z"));
        assert!(url
            .as_str()
            .contains("X-Amz-SignedHeaders=content-length%3Bcontent-type%3Bhost"));
        assert_eq!(
            signature(&url),
            "1e6b28be20657693365e0e24a6119035288412b123a13e1d836b7b5a0a8c2f08"
        );
    }

    /// Response overrides, an encoded disposition and a session token: botocore's signature.
    #[test]
    fn a_download_url_pins_how_it_is_served() {
        let url = Presign {
            method: "GET",
            url: Url::parse("https://files.s3.eu-west-1.amazonaws.com/attachments/0193a/77b2")
                .unwrap(),
            region: "eu-west-1",
            headers: &[],
            query: &[
                ("response-content-type", "text/plain".into()),
                (
                    "response-content-disposition",
                    "attachment; filename=\"notes (1).txt\"; filename*=UTF-8''notes%20%281%29.txt"
                        .into(),
                ),
            ],
            expires_in: Duration::from_secs(300),
        }
        .sign(
            &Keys {
                token: Some("session/token+x="),
                ..KEYS
            },
            at("2026-12-07T10:30:00Z"),
        );
        assert_eq!(
            signature(&url),
            "2a0865f0098bea188f3da715333756c366164e5459a53619962ee77a21f94d7b"
        );
        let pairs: Vec<(String, String)> = url.query_pairs().into_owned().collect();
        assert!(pairs.contains(&("response-content-type".into(), "text/plain".into())));
        assert!(pairs.contains(&("X-Amz-Security-Token".into(), "session/token+x=".into())));
    }
}
