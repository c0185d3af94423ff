//! Access tokens: HS256 JWTs with `sub` (user id), `sid` (the login they were issued to),
//! `iat`, `exp` and `aud`, signed with `SECRET_KEY`. Every service verifies them locally; the
//! algorithm is pinned, so a token that names another algorithm (including `none`) is refused
//! whatever its signature.
//!
//! Two identities share the key but never each other's doors: users' tokens have audience
//! [`USER_AUDIENCE`] and live `ACCESS_TOKEN_EXPIRE_MINUTES`; the internal service identity
//! (gateways calling chat-service's `/internal/*`) has audience [`INTERNAL_AUDIENCE`], the nil
//! subject and a life of [`INTERNAL_TOKEN_SECONDS`]. [`JwtKeys::verify`] accepts only the first,
//! [`JwtKeys::verify_internal`] only the second.

use std::sync::Arc;

use axum::{
    extract::{FromRef, FromRequestParts},
    http::{header, request::Parts},
};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{config::JwtConfig, error::ApiError, revocation::Revocations};

/// The audience of users' access tokens.
pub const USER_AUDIENCE: &str = "chatsphere";
/// The audience of the internal service identity's tokens.
pub const INTERNAL_AUDIENCE: &str = "chatsphere-internal";
/// How long an internal token lives.
pub const INTERNAL_TOKEN_SECONDS: i64 = 300;

/// The claims of an access token.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    /// The user id (the nil id for the internal identity).
    pub sub: Uuid,
    /// The login (refresh-token family) the token was issued to; nil for internal tokens.
    pub sid: Uuid,
    /// Issued at, seconds since the epoch.
    pub iat: i64,
    /// Expires at, seconds since the epoch.
    pub exp: i64,
    /// [`USER_AUDIENCE`] or [`INTERNAL_AUDIENCE`].
    pub aud: String,
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
    user: Validation,
    internal: Validation,
    ttl_seconds: i64,
}

/// The only algorithm accepted.
pub const ALGORITHM: Algorithm = Algorithm::HS256;

fn validation(audience: &str) -> Validation {
    let mut validation = Validation::new(ALGORITHM);
    validation.set_required_spec_claims(&["exp", "iat", "sub", "aud"]);
    validation.set_audience(&[audience]);
    // Services run on clocks kept in step by NTP; a few seconds absorb the rest.
    validation.leeway = 5;
    validation
}

impl JwtKeys {
    pub fn new(config: &JwtConfig) -> Self {
        let secret = config.secret_key.as_bytes();
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            user: validation(USER_AUDIENCE),
            internal: validation(INTERNAL_AUDIENCE),
            ttl_seconds: i64::from(config.access_token_expire_minutes) * 60,
        }
    }

    /// How long a user's access token lives, in seconds.
    pub fn ttl_seconds(&self) -> i64 {
        self.ttl_seconds
    }

    /// Issues a token for `user_id` on the login `sid`, valid for `ACCESS_TOKEN_EXPIRE_MINUTES`.
    pub fn issue_session(&self, user_id: Uuid, sid: Uuid) -> Result<IssuedToken, ApiError> {
        self.issue_at(user_id, sid, chrono::Utc::now().timestamp())
    }

    /// As [`JwtKeys::issue_session`], as if issued at `iat`: the same claims give the same
    /// token, which a refresh retried within its grace window relies on.
    pub fn issue_at(&self, user_id: Uuid, sid: Uuid, iat: i64) -> Result<IssuedToken, ApiError> {
        let claims = Claims {
            sub: user_id,
            sid,
            iat,
            exp: iat + self.ttl_seconds,
            aud: USER_AUDIENCE.to_owned(),
        };
        let token = jsonwebtoken::encode(&Header::new(ALGORITHM), &claims, &self.encoding)
            .map_err(ApiError::internal)?;
        Ok(IssuedToken {
            token,
            expires_in: claims.exp - chrono::Utc::now().timestamp(),
        })
    }

    /// A token for `user_id` on a login of its own (tools and tests that mint tokens directly;
    /// auth-service issues them with [`JwtKeys::issue_session`]).
    pub fn issue(&self, user_id: Uuid) -> Result<IssuedToken, ApiError> {
        self.issue_session(user_id, Uuid::now_v7())
    }

    /// A token of the internal service identity, valid for [`INTERNAL_TOKEN_SECONDS`].
    pub fn issue_internal(&self) -> Result<IssuedToken, ApiError> {
        let now = chrono::Utc::now().timestamp();
        let claims = Claims {
            sub: Uuid::nil(),
            sid: Uuid::nil(),
            iat: now,
            exp: now + INTERNAL_TOKEN_SECONDS,
            aud: INTERNAL_AUDIENCE.to_owned(),
        };
        let token = jsonwebtoken::encode(&Header::new(ALGORITHM), &claims, &self.encoding)
            .map_err(ApiError::internal)?;
        Ok(IssuedToken {
            token,
            expires_in: INTERNAL_TOKEN_SECONDS,
        })
    }

    /// Verifies a user's token: signature, algorithm, expiry and the users' audience.
    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        let claims = self.decode(token, &self.user)?;
        if claims.sub.is_nil() {
            return Err(TokenError::Invalid);
        }
        Ok(claims)
    }

    /// Verifies an internal token: signature, algorithm, expiry and the internal audience.
    pub fn verify_internal(&self, token: &str) -> Result<Claims, TokenError> {
        self.decode(token, &self.internal)
    }

    fn decode(&self, token: &str, validation: &Validation) -> Result<Claims, TokenError> {
        jsonwebtoken::decode::<Claims>(token, &self.decoding, validation)
            .map(|data| data.claims)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => TokenError::Expired,
                _ => TokenError::Invalid,
            })
    }
}

/// The caller of an authenticated REST endpoint, from `Authorization: Bearer <token>`.
/// Rejects with 401 before the handler runs: a missing, invalid or expired token, a token of
/// the internal identity, or one whose login was revoked or whose account was deactivated
/// (checked against the process's [`Revocations`], an in-process lookup).
#[derive(Debug, Clone, Copy)]
pub struct AuthUser {
    pub user_id: Uuid,
    /// The login the token belongs to.
    pub sid: Uuid,
    /// When the token expires (seconds since the epoch).
    pub exp: i64,
}

/// The 401 for a token refused by [`JwtKeys::verify`].
pub fn token_rejection(e: &TokenError) -> ApiError {
    match e {
        TokenError::Expired => {
            ApiError::unauthorized("token_expired", "the access token has expired; refresh it")
        }
        TokenError::Invalid => {
            ApiError::unauthorized("invalid_token", "the access token is invalid")
        }
    }
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
    Arc<Revocations>: FromRef<S>,
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
        let claims = keys.verify(token).map_err(|e| token_rejection(&e))?;
        if let Some(revoked) = Arc::<Revocations>::from_ref(state).check(claims.sub, claims.sid) {
            return Err(revoked.rejection());
        }
        Ok(AuthUser {
            user_id: claims.sub,
            sid: claims.sid,
            exp: claims.exp,
        })
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
            revocation_poll: std::time::Duration::from_millis(200),
        })
    }

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn users_and_the_internal_identity_never_pass_for_each_other() {
        let k = keys(SECRET);
        let internal = k.issue_internal().unwrap();
        assert_eq!(k.verify(&internal.token), Err(TokenError::Invalid));
        assert!(k.verify_internal(&internal.token).is_ok());
        let user = k.issue(Uuid::new_v4()).unwrap();
        assert_eq!(k.verify_internal(&user.token), Err(TokenError::Invalid));
        // A token without an audience (as issued before audiences existed) is refused by both.
        #[derive(Serialize)]
        struct Old {
            sub: Uuid,
            iat: i64,
            exp: i64,
        }
        let now = chrono::Utc::now().timestamp();
        let old = jsonwebtoken::encode(
            &Header::new(ALGORITHM),
            &Old {
                sub: Uuid::nil(),
                iat: now,
                exp: now + 60,
            },
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap();
        assert!(k.verify(&old).is_err());
        assert!(k.verify_internal(&old).is_err());
        // The same claims make the same token (a refresh retried within its grace window).
        let (u, sid) = (Uuid::new_v4(), Uuid::new_v4());
        assert_eq!(
            k.issue_at(u, sid, now).unwrap().token,
            k.issue_at(u, sid, now).unwrap().token
        );
    }

    #[test]
    fn round_trip() {
        let k = keys(SECRET);
        let id = Uuid::new_v4();
        let sid = Uuid::new_v4();
        let t = k.issue_session(id, sid).unwrap();
        assert!((1799..=1800).contains(&t.expires_in));
        let claims = k.verify(&t.token).unwrap();
        assert_eq!((claims.sub, claims.sid), (id, sid));
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
            sid: Uuid::new_v4(),
            iat: now - 4000,
            exp: now - 3600,
            aud: USER_AUDIENCE.into(),
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
            sid: Uuid::new_v4(),
            iat: now,
            exp: now + 600,
            aud: USER_AUDIENCE.into(),
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
