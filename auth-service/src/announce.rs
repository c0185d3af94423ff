//! Tells chat-service that a user changed their display name or avatar
//! (`POST /internal/users/{id}/profile`), so that everyone who shows the user — the members of
//! their rooms and groups, their private chats' peers, their own other devices — gets
//! `user_updated` (chat-service knows who those are; auth-service does not).

use std::{sync::Arc, time::Duration};

use shared::jwt::JwtKeys;
use uuid::Uuid;

/// How long one announcement may take before it is given up.
const TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone)]
pub struct ProfileAnnouncer {
    http: reqwest::Client,
    /// chat-service's base URL (`CHAT_SERVICE_URL`).
    base: Arc<str>,
    jwt: Arc<JwtKeys>,
}

impl ProfileAnnouncer {
    pub fn new(base: &str, jwt: Arc<JwtKeys>) -> Result<Self, reqwest::Error> {
        Ok(Self {
            http: reqwest::Client::builder().timeout(TIMEOUT).build()?,
            base: base.trim_end_matches('/').into(),
            jwt,
        })
    }

    /// Announces `user`'s profile as stored now, in the background: the change is stored and
    /// answered whether or not chat-service can be reached. A failure is logged and counted
    /// (`auth_profile_announce_failures_total`); clients learn the change on their next lookup
    /// of the user.
    pub fn changed(&self, user: Uuid) {
        let this = self.clone();
        tokio::spawn(async move {
            if let Err(e) = this.announce(user).await {
                metrics::counter!("auth_profile_announce_failures_total").increment(1);
                tracing::warn!(error = %e, %user, "could not announce a profile change");
            }
        });
    }

    async fn announce(&self, user: Uuid) -> Result<(), String> {
        let token = self.jwt.issue_internal().map_err(|e| e.to_string())?.token;
        let response = self
            .http
            .post(format!("{}/internal/users/{user}/profile", self.base))
            .bearer_auth(token)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        match response.status() {
            s if s.is_success() => Ok(()),
            s => Err(format!("chat-service answered {s}")),
        }
    }
}
