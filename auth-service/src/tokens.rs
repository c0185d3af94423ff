//! Rotating refresh tokens with reuse detection (see the `refresh_tokens` migration).

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use chrono::{Duration, Utc};
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

/// Why a refresh was refused; every case is a 401.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    Unknown,
    Expired,
    Revoked,
    /// An already-rotated token came back: the whole family is now revoked.
    Reused,
    UserInactive,
}

impl From<Refused> for ApiError {
    fn from(r: Refused) -> Self {
        let (code, detail) = match r {
            Refused::Unknown => ("invalid_refresh_token", "the refresh token is not valid"),
            Refused::Expired => ("refresh_token_expired", "the refresh token has expired; log in again"),
            Refused::Revoked => ("refresh_token_revoked", "the refresh token was revoked; log in again"),
            Refused::Reused => (
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
}

impl RefreshTokens {
    pub fn new(db: PgPool, lifetime_days: u32) -> Self {
        Self {
            db,
            lifetime: Duration::days(i64::from(lifetime_days)),
        }
    }

    /// Starts a new family (a login) and returns its first token.
    pub async fn issue(&self, user_id: Uuid) -> Result<String, ApiError> {
        let token = new_token();
        sqlx::query!(
            r#"INSERT INTO refresh_tokens (id, user_id, family_id, token_hash, expires_at)
               VALUES ($1, $2, $3, $4, $5)"#,
            Uuid::now_v7(),
            user_id,
            Uuid::now_v7(),
            hash(&token),
            Utc::now() + self.lifetime
        )
        .execute(&self.db)
        .await?;
        Ok(token)
    }

    /// Exchanges `token` for its successor. The row is locked, so of two concurrent refreshes
    /// with one token exactly one succeeds and the other is treated as reuse.
    pub async fn rotate(&self, token: &str) -> Result<Result<(Uuid, String), Refused>, ApiError> {
        let mut tx = self.db.begin().await?;
        let Some(row) = sqlx::query!(
            r#"SELECT t.id, t.user_id, t.family_id, t.expires_at, t.rotated_at, t.revoked_at,
                      u.is_active
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
        if row.revoked_at.is_some() {
            return Ok(Err(Refused::Revoked));
        }
        if row.rotated_at.is_some() {
            sqlx::query!(
                "UPDATE refresh_tokens SET revoked_at = now() WHERE family_id = $1 AND revoked_at IS NULL",
                row.family_id
            )
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            metrics::counter!("auth_refresh_reuse_total").increment(1);
            tracing::warn!(user_id = %row.user_id, family_id = %row.family_id, "refresh token reused; family revoked");
            return Ok(Err(Refused::Reused));
        }
        if row.expires_at <= Utc::now() {
            return Ok(Err(Refused::Expired));
        }
        if !row.is_active {
            return Ok(Err(Refused::UserInactive));
        }
        let next = new_token();
        sqlx::query!(
            "UPDATE refresh_tokens SET rotated_at = now() WHERE id = $1",
            row.id
        )
        .execute(&mut *tx)
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
        Ok(Ok((row.user_id, next)))
    }

    /// Revokes the family `token` belongs to. An unknown token is not an error: logging out
    /// twice is fine.
    pub async fn revoke_family(&self, token: &str) -> Result<(), ApiError> {
        sqlx::query!(
            r#"UPDATE refresh_tokens SET revoked_at = now()
               WHERE family_id = (SELECT family_id FROM refresh_tokens WHERE token_hash = $1)
                 AND revoked_at IS NULL"#,
            hash(token)
        )
        .execute(&self.db)
        .await?;
        Ok(())
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
