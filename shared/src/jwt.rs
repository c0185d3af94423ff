//! Access tokens: HS256 JWTs with `sub` (user id), `iat` and `exp`, signed with `SECRET_KEY`.
//! Every service verifies them locally; the algorithm is pinned, so a token that names another
//! algorithm (including `none`) is refused whatever its signature.

use std::sync::Arc;

use axum::{
    extract::{FromRef, FromRequestParts},
    http::{header, request::Parts},
};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{config::JwtConfig, error::ApiError};

/// The claims of an access token.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    /// The user id.
    pub sub: Uuid,
    /// Issued at, seconds since the epoch.
    pub iat: i64,
    /// Expires at, seconds since the epoch.
    pub exp: i64,
}

/// Why a token was refused. Callers answer all of them with 401; the variant is for logs.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("the token has expired")]
    Expired,
    #[error("the token is invalid")]
    Invalid,
}

/// An issued access token.
#[derive(Debug, Clone)]
pub struct IssuedToken {
    pub token: String,
    /// Seconds until it expires.
    pub expires_in: i64,
}

/// Signs and verifies access tokens.
pub struct JwtKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    ttl_seconds: i64,
}

/// The only algorithm accepted.
pub const ALGORITHM: Algorithm = Algorithm::HS256;

impl JwtKeys {
    pub fn new(config: &JwtConfig) -> Self {
        let secret = config.secret_key.as_bytes();
        let mut validation = Validation::new(ALGORITHM);
        validation.set_required_spec_claims(&["exp", "iat", "sub"]);
        // Services run on clocks kept in step by NTP; a few seconds absorb the rest.
        validation.leeway = 5;
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            ttl_seconds: i64::from(config.access_token_expire_minutes) * 60,
        }
    }

    /// Issues a token for `user_id`, valid for `ACCESS_TOKEN_EXPIRE_MINUTES`.
    pub fn issue(&self, user_id: Uuid) -> Result<IssuedToken, ApiError> {
        let now = chrono::Utc::now().timestamp();
        let claims = Claims {
            sub: user_id,
            iat: now,
            exp: now + self.ttl_seconds,
        };
        let token = jsonwebtoken::encode(&Header::new(ALGORITHM), &claims, &self.encoding)
            .map_err(ApiError::internal)?;
        Ok(IssuedToken {
            token,
            expires_in: self.ttl_seconds,
        })
    }

    /// Verifies signature, algorithm and expiry.
    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map(|data| data.claims)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => TokenError::Expired,
                _ => TokenError::Invalid,
            })
    }
}

/// The caller of an authenticated REST endpoint, from `Authorization: Bearer <token>`.
/// Rejects with 401 before the handler runs.
#[derive(Debug, Clone, Copy)]
pub struct AuthUser {
    pub user_id: Uuid,
}

/// The bearer token of a request, if it has one.
pub fn bearer_token(parts: &Parts) -> Option<&str> {
    let value = parts.headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

impl<S> FromRequestParts<S> for AuthUser
where
    Arc<JwtKeys>: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let keys = Arc::<JwtKeys>::from_ref(state);
        let token = bearer_token(parts).ok_or_else(|| {
            ApiError::unauthorized(
                "not_authenticated",
                "missing Authorization: Bearer <access_token>",
            )
        })?;
        match keys.verify(token) {
            Ok(claims) => Ok(AuthUser {
                user_id: claims.sub,
            }),
            Err(TokenError::Expired) => Err(ApiError::unauthorized(
                "token_expired",
                "the access token has expired; refresh it",
            )),
            Err(TokenError::Invalid) => Err(ApiError::unauthorized(
                "invalid_token",
                "the access token is invalid",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};

    use super::*;

    fn encode_segment(bytes: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    fn keys(secret: &str) -> JwtKeys {
        JwtKeys::new(&JwtConfig {
            secret_key: secret.into(),
            access_token_expire_minutes: 30,
        })
    }

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn round_trip() {
        let k = keys(SECRET);
        let id = Uuid::new_v4();
        let t = k.issue(id).unwrap();
        assert_eq!(t.expires_in, 1800);
        assert_eq!(k.verify(&t.token).unwrap().sub, id);
    }

    #[test]
    fn other_key_expired_none_and_other_algorithms_are_refused() {
        let k = keys(SECRET);
        let other = keys("another-secret-another-secret-xx");
        let id = Uuid::new_v4();
        assert_eq!(
            k.verify(&other.issue(id).unwrap().token),
            Err(TokenError::Invalid)
        );

        let now = chrono::Utc::now().timestamp();
        let expired = Claims {
            sub: id,
            iat: now - 4000,
            exp: now - 3600,
        };
        let t = jsonwebtoken::encode(
            &Header::new(ALGORITHM),
            &expired,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap();
        assert_eq!(k.verify(&t), Err(TokenError::Expired));

        let fresh = Claims {
            sub: id,
            iat: now,
            exp: now + 600,
        };
        let hs512 = jsonwebtoken::encode(
            &Header::new(Algorithm::HS512),
            &fresh,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap();
        assert_eq!(k.verify(&hs512), Err(TokenError::Invalid));

        let none = format!(
            "{}.{}.",
            encode_segment(br#"{"alg":"none","typ":"JWT"}"#),
            encode_segment(serde_json::to_string(&fresh).unwrap().as_bytes())
        );
        assert_eq!(k.verify(&none), Err(TokenError::Invalid));
        assert_eq!(k.verify("not.a.jwt"), Err(TokenError::Invalid));
        assert_eq!(k.verify(""), Err(TokenError::Invalid));
    }
}
