//! The `users` table.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;
use utoipa::ToSchema;
use uuid::Uuid;

/// A row of `users`.
#[derive(Debug, Clone)]
pub struct User {
    pub id: Uuid,
    pub username: String,
    pub email: String,
    pub display_name: String,
    pub password_hash: String,
    pub avatar_url: Option<String>,
    pub is_active: bool,
    pub created_at: DateTime<Utc>,
    pub last_seen: Option<DateTime<Utc>>,
}

/// A user as the API shows it. `email` appears only on the caller's own user; the password hash never.
#[derive(Debug, Serialize, ToSchema)]
pub struct UserBody {
    pub id: Uuid,
    pub username: String,
    /// Present only on the caller's own user.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    pub display_name: String,
    pub avatar_url: Option<String>,
    pub is_active: bool,
    pub created_at: DateTime<Utc>,
    pub last_seen: Option<DateTime<Utc>>,
}

impl User {
    /// The caller's own view, with the email.
    pub fn own(self) -> UserBody {
        let email = Some(self.email.clone());
        UserBody {
            email,
            ..self.public()
        }
    }

    /// Anyone else's view.
    pub fn public(self) -> UserBody {
        UserBody {
            id: self.id,
            username: self.username,
            email: None,
            display_name: self.display_name,
            avatar_url: self.avatar_url,
            is_active: self.is_active,
            created_at: self.created_at,
            last_seen: self.last_seen,
        }
    }
}

/// Which of a username and an email are taken already (case-insensitively).
pub async fn taken(db: &PgPool, username: &str, email: &str) -> sqlx::Result<(bool, bool)> {
    let row = sqlx::query!(
        r#"SELECT
             bool_or(lower(username) = lower($1)) AS "username!",
             bool_or(lower(email) = lower($2)) AS "email!"
           FROM users
           WHERE lower(username) = lower($1) OR lower(email) = lower($2)
           HAVING count(*) > 0"#,
        username,
        email
    )
    .fetch_optional(db)
    .await?;
    Ok(row.map_or((false, false), |r| (r.username, r.email)))
}

pub struct NewUser<'a> {
    pub username: &'a str,
    pub email: &'a str,
    pub display_name: &'a str,
    pub password_hash: &'a str,
}

pub async fn insert(db: &PgPool, new: NewUser<'_>) -> sqlx::Result<User> {
    sqlx::query_as!(
        User,
        r#"INSERT INTO users (id, username, email, display_name, password_hash)
           VALUES ($1, $2, $3, $4, $5)
           RETURNING id, username, email, display_name, password_hash, avatar_url,
                     is_active, created_at, last_seen"#,
        Uuid::now_v7(),
        new.username,
        new.email,
        new.display_name,
        new.password_hash
    )
    .fetch_one(db)
    .await
}

/// The user whose username or email is `login` (case-insensitively). A username cannot contain
/// `@` and an email must, so at most one row matches.
pub async fn find_by_login(db: &PgPool, login: &str) -> sqlx::Result<Option<User>> {
    sqlx::query_as!(
        User,
        r#"SELECT id, username, email, display_name, password_hash, avatar_url,
                  is_active, created_at, last_seen
           FROM users
           WHERE lower(username) = lower($1) OR lower(email) = lower($1)
           LIMIT 1"#,
        login
    )
    .fetch_optional(db)
    .await
}

pub async fn find(db: &PgPool, id: Uuid) -> sqlx::Result<Option<User>> {
    sqlx::query_as!(
        User,
        r#"SELECT id, username, email, display_name, password_hash, avatar_url,
                  is_active, created_at, last_seen
           FROM users WHERE id = $1"#,
        id
    )
    .fetch_optional(db)
    .await
}

pub async fn touch_last_seen(db: &PgPool, id: Uuid) -> sqlx::Result<DateTime<Utc>> {
    sqlx::query_scalar!(
        r#"UPDATE users SET last_seen = now() WHERE id = $1 RETURNING last_seen AS "last_seen!""#,
        id
    )
    .fetch_one(db)
    .await
}

/// Deactivates an account (`DELETE /auth/me`): it can no longer log in or refresh; its rows and
/// messages stay. Its uploaded avatar stops being served and its copy is queued for removal.
pub async fn deactivate(db: &PgPool, id: Uuid) -> sqlx::Result<()> {
    let mut tx = db.begin().await?;
    let avatar = sqlx::query_scalar!(
        r#"UPDATE users u SET is_active = FALSE, avatar_upload_id = NULL
           FROM (SELECT avatar_upload_id FROM users WHERE id = $1 FOR UPDATE) old
           WHERE u.id = $1
           RETURNING old.avatar_upload_id"#,
        id
    )
    .fetch_optional(&mut *tx)
    .await?
    .flatten();
    if let Some(avatar) = avatar {
        shared::storage::queue_removal(&mut *tx, &[crate::avatars::avatar_key(avatar)]).await?;
    }
    tx.commit().await
}

/// What `PATCH /auth/me` changes: `None` leaves a field alone; `Some(None)` clears the avatar.
pub struct Profile {
    pub display_name: Option<String>,
    pub avatar_url: Option<Option<String>>,
}

/// Applies `p` to an active user. An `avatar_url` other than the current one retires an
/// uploaded avatar: `/auth/avatars/{id}` stops serving it and its copy is queued for removal
/// (sending the current URL back changes nothing).
pub async fn update_profile(db: &PgPool, id: Uuid, p: Profile) -> sqlx::Result<Option<User>> {
    let set_avatar = p.avatar_url.is_some();
    let avatar = p.avatar_url.flatten();
    let mut tx = db.begin().await?;
    let retired = if set_avatar {
        sqlx::query_scalar!(
            r#"SELECT avatar_upload_id AS "upload!" FROM users
               WHERE id = $1 AND is_active AND avatar_upload_id IS NOT NULL
                 AND avatar_url IS DISTINCT FROM $2
               FOR UPDATE"#,
            id,
            avatar.as_deref()
        )
        .fetch_optional(&mut *tx)
        .await?
    } else {
        None
    };
    let user = sqlx::query_as!(
        User,
        r#"UPDATE users SET
             display_name = COALESCE($2, display_name),
             avatar_url = CASE WHEN $3 THEN $4 ELSE avatar_url END,
             avatar_upload_id = CASE WHEN $5 THEN NULL ELSE avatar_upload_id END
           WHERE id = $1 AND is_active
           RETURNING id, username, email, display_name, password_hash, avatar_url,
                     is_active, created_at, last_seen"#,
        id,
        p.display_name,
        set_avatar,
        avatar,
        retired.is_some()
    )
    .fetch_optional(&mut *tx)
    .await?;
    if let Some(upload) = retired {
        shared::storage::queue_removal(&mut *tx, &[crate::avatars::avatar_key(upload)]).await?;
    }
    tx.commit().await?;
    Ok(user)
}

/// Replaces an active user's password hash; false if the user is gone or deactivated.
pub async fn set_password(db: &PgPool, id: Uuid, password_hash: &str) -> sqlx::Result<bool> {
    let done = sqlx::query!(
        "UPDATE users SET password_hash = $2 WHERE id = $1 AND is_active",
        id,
        password_hash
    )
    .execute(db)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// A LIKE pattern matching what starts with `prefix` (lower-cased), wildcards taken literally.
pub fn like_prefix(prefix: &str) -> String {
    format!("{}%", shared::db::like_literal(&prefix.to_lowercase()))
}

/// The users of `ids` that exist, active or not, by username.
pub async fn find_many(db: &PgPool, ids: &[Uuid]) -> sqlx::Result<Vec<User>> {
    sqlx::query_as!(
        User,
        r#"SELECT id, username, email, display_name, password_hash, avatar_url,
                  is_active, created_at, last_seen
           FROM users
           WHERE id = ANY($1)
           ORDER BY lower(username) COLLATE "C""#,
        ids
    )
    .fetch_all(db)
    .await
}

pub async fn search(db: &PgPool, prefix: &str, limit: i64) -> sqlx::Result<Vec<User>> {
    sqlx::query_as!(
        User,
        r#"SELECT id, username, email, display_name, password_hash, avatar_url,
                  is_active, created_at, last_seen
           FROM users
           WHERE is_active AND (lower(username) LIKE $1 OR lower(display_name) LIKE $1)
           ORDER BY lower(username) COLLATE "C"
           LIMIT $2"#,
        like_prefix(prefix),
        limit
    )
    .fetch_all(db)
    .await
}

#[cfg(test)]
mod tests {
    #[test]
    fn like_prefix_escapes_wildcards() {
        assert_eq!(super::like_prefix("Al_%\\"), "al\\_\\%\\\\%");
    }
}
