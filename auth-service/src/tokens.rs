//! Rotating refresh tokens with reuse detection (see the `refresh_tokens` migration). Each
//! login is a family; its id is the `sid` of the login's access tokens.
//!
//! A token's successor is derived from it (HMAC-SHA256 under `SECRET_KEY`), not drawn at
//! random: presenting a token again within `REFRESH_REUSE_GRACE_SECONDS` of its rotation (a
//! retry after a lost answer, two tabs) gives back the same successor, without the database
//! ever holding a token in the clear. Later reuse revokes the family.

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use chrono::{Duration, Utc};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use shared::ApiError;
use sqlx::PgPool;
use uuid::Uuid;

fn hash(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

fn new_token() -> String {
    let bytes: [u8; 32] = rand::random();
    URL_SAFE_NO_PAD.encode(bytes)
}

/// What a successful rotation hands out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rotation {
    pub user_id: Uuid,
    /// The login (family); the `sid` of its access tokens.
    pub login: Uuid,
    pub refresh_token: String,
    /// When the presented token was rotated (seconds since the epoch): the new access token is
    /// issued as of then, so a grace-window repeat gets the very same one.
    pub rotated_at: i64,
}

/// Why a refresh was refused; every case is a 401.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    Unknown,
    Expired,
    Revoked,
    /// An already-rotated token came back after its grace window: the whole family (login)
    /// is now revoked.
    Reused {
        user: Uuid,
        login: Uuid,
    },
    UserInactive,
}

impl From<Refused> for ApiError {
    fn from(r: Refused) -> Self {
        let (code, detail) = match r {
            Refused::Unknown => ("invalid_refresh_token", "the refresh token is not valid"),
            Refused::Expired => ("refresh_token_expired", "the refresh token has expired; log in again"),
            Refused::Revoked => ("refresh_token_revoked", "the refresh token was revoked; log in again"),
            Refused::Reused { .. } => (
                "refresh_token_reused",
                "the refresh token was already used; every session of this login is revoked, log in again",
            ),
            Refused::UserInactive => ("account_disabled", "the account is deactivated"),
        };
        ApiError::unauthorized(code, detail)
    }
}

/// Issues and rotates refresh tokens.
#[derive(Clone)]
pub struct RefreshTokens {
    db: PgPool,
    lifetime: Duration,
    grace: Duration,
    /// Derives successors; keyed with `SECRET_KEY`.
    successor_key: std::sync::Arc<[u8]>,
}

impl RefreshTokens {
    pub fn new(db: PgPool, lifetime_days: u32, grace_seconds: u32, secret_key: &str) -> Self {
        Self {
            db,
            lifetime: Duration::days(i64::from(lifetime_days)),
            grace: Duration::seconds(i64::from(grace_seconds)),
            successor_key: secret_key.as_bytes().into(),
        }
    }

    /// The token that succeeds `token`: the same every time.
    fn successor(&self, token: &str) -> String {
        // HMAC takes keys of any length; `new_from_slice` cannot fail for it.
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&self.successor_key) else {
            return new_token();
        };
        mac.update(b"chatsphere refresh successor\0");
        mac.update(token.as_bytes());
        URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
    }

    /// Starts a new family (a login); returns its id and its first token.
    pub async fn issue(&self, user_id: Uuid) -> Result<(Uuid, String), ApiError> {
        let token = new_token();
        let login = Uuid::now_v7();
        sqlx::query!(
            r#"INSERT INTO refresh_tokens (id, user_id, family_id, token_hash, expires_at)
               VALUES ($1, $2, $3, $4, $5)"#,
            Uuid::now_v7(),
            user_id,
            login,
            hash(&token),
            Utc::now() + self.lifetime
        )
        .execute(&self.db)
        .await?;
        Ok((login, token))
    }

    /// Exchanges `token` for its successor. The row is locked, so of two concurrent refreshes
    /// with one token one rotates it and the other, within the grace window, gets the same
    /// successor.
    pub async fn rotate(&self, token: &str) -> Result<Result<Rotation, Refused>, ApiError> {
        let mut tx = self.db.begin().await?;
        let Some(row) = sqlx::query!(
            r#"SELECT t.id, t.user_id, t.family_id, t.expires_at, t.rotated_at, t.revoked_at,
                      u.is_active,
                      EXISTS (SELECT 1 FROM refresh_tokens f
                              WHERE f.family_id = t.family_id AND f.revoked_at IS NOT NULL)
                        AS "family_revoked!"
               FROM refresh_tokens t JOIN users u ON u.id = t.user_id
               WHERE t.token_hash = $1
               FOR UPDATE OF t"#,
            hash(token)
        )
        .fetch_optional(&mut *tx)
        .await?
        else {
            return Ok(Err(Refused::Unknown));
        };
        // A family is revoked as a whole, so one revoked token revokes the rest: that also
        // covers a successor inserted by a rotation that committed while the revoking
        // statement was running (it waited for the presented token's row, which it revoked,
        // but could not see the new row).
        if row.revoked_at.is_some() || row.family_revoked {
            return Ok(Err(Refused::Revoked));
        }
        if let Some(rotated_at) = row.rotated_at {
            if rotated_at + self.grace > Utc::now() && row.is_active {
                metrics::counter!("auth_refresh_grace_repeats_total").increment(1);
                return Ok(Ok(Rotation {
                    user_id: row.user_id,
                    login: row.family_id,
                    refresh_token: self.successor(token),
                    rotated_at: rotated_at.timestamp(),
                }));
            }
            sqlx::query!(
                "UPDATE refresh_tokens SET revoked_at = now() WHERE family_id = $1 AND revoked_at IS NULL",
                row.family_id
            )
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            metrics::counter!("auth_refresh_reuse_total").increment(1);
            tracing::warn!(user_id = %row.user_id, family_id = %row.family_id, "refresh token reused; family revoked");
            return Ok(Err(Refused::Reused {
                user: row.user_id,
                login: row.family_id,
            }));
        }
        if row.expires_at <= Utc::now() {
            return Ok(Err(Refused::Expired));
        }
        if !row.is_active {
            return Ok(Err(Refused::UserInactive));
        }
        let next = self.successor(token);
        let rotated_at = sqlx::query_scalar!(
            r#"UPDATE refresh_tokens SET rotated_at = now() WHERE id = $1
               RETURNING rotated_at AS "rotated_at!""#,
            row.id
        )
        .fetch_one(&mut *tx)
        .await?;
        sqlx::query!(
            r#"INSERT INTO refresh_tokens (id, user_id, family_id, token_hash, expires_at)
               VALUES ($1, $2, $3, $4, $5)"#,
            Uuid::now_v7(),
            row.user_id,
            row.family_id,
            hash(&next),
            Utc::now() + self.lifetime
        )
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Ok(Rotation {
            user_id: row.user_id,
            login: row.family_id,
            refresh_token: next,
            rotated_at: rotated_at.timestamp(),
        }))
    }

    /// Revokes the family `token` belongs to; returns its user and login id, or `None` for an
    /// unknown token (logging out twice is fine).
    pub async fn revoke_family(&self, token: &str) -> Result<Option<(Uuid, Uuid)>, ApiError> {
        let Some(row) = sqlx::query!(
            "SELECT user_id, family_id FROM refresh_tokens WHERE token_hash = $1",
            hash(token)
        )
        .fetch_optional(&self.db)
        .await?
        else {
            return Ok(None);
        };
        sqlx::query!(
            "UPDATE refresh_tokens SET revoked_at = now() WHERE family_id = $1 AND revoked_at IS NULL",
            row.family_id
        )
        .execute(&self.db)
        .await?;
        Ok(Some((row.user_id, row.family_id)))
    }

    /// Revokes every login of `user_id`.
    pub async fn revoke_user(&self, user_id: Uuid) -> Result<(), ApiError> {
        sqlx::query!(
            "UPDATE refresh_tokens SET revoked_at = now() WHERE user_id = $1 AND revoked_at IS NULL",
            user_id
        )
        .execute(&self.db)
        .await?;
        Ok(())
    }

    /// Revokes every login of `user_id` but `keep`. Returns the logins whose access tokens
    /// may still be live: those revoked now, and those with a token issued since `since`
    /// (revoked before, by an earlier call that may not have got as far as recording them for
    /// the access tokens), so that calling again finishes what a failed call left.
    pub async fn revoke_others(
        &self,
        user_id: Uuid,
        keep: Uuid,
        since: chrono::DateTime<Utc>,
    ) -> Result<Vec<Uuid>, ApiError> {
        let logins = sqlx::query_scalar!(
            r#"WITH revoked AS (
                 UPDATE refresh_tokens SET revoked_at = now()
                 WHERE user_id = $1 AND family_id <> $2 AND revoked_at IS NULL
                 RETURNING family_id)
               SELECT family_id AS "family_id!" FROM revoked
               UNION
               SELECT family_id FROM refresh_tokens
               WHERE user_id = $1 AND family_id <> $2 AND created_at > $3"#,
            user_id,
            keep,
            since
        )
        .fetch_all(&self.db)
        .await?;
        Ok(logins)
    }

    /// Deletes tokens that expired more than a day ago; returns how many.
    pub async fn purge_expired(&self) -> Result<u64, sqlx::Error> {
        let done =
            sqlx::query!("DELETE FROM refresh_tokens WHERE expires_at < now() - interval '1 day'")
                .execute(&self.db)
                .await?;
        Ok(done.rows_affected())
    }
}
