//! Logins and accounts whose access tokens must stop working before they expire: a logout, a
//! refresh-token reuse that revokes a login, a password change (every other login of the
//! user), a deleted (deactivated) account.
//!
//! auth-service records each revocation in the sorted set [`Keys::revocations`] (member
//! `s:{user}:{sid}` or `u:{user}`, score = when it was recorded, Unix ms), announces it on
//! [`Keys::revocations_channel`] and publishes [`crate::chat::Event::Revoked`] on the user's
//! channel, so gateways holding the user's sockets close them at once. Every process keeps the
//! set in memory: checking a token is one in-process lookup. It hears each announcement on a
//! connection of its own, before auth-service has answered the call that revoked (Redis has
//! passed the announcement on by the time it acknowledges the publish), so a client's next call
//! is refused wherever it lands. A process that missed announcements (its listening connection
//! was down) learns them from the set, which it reads for what is new every
//! `REVOCATION_POLL_MS` (default 1000) and whenever that connection comes back. A record is
//! kept for as long as any token it concerns can live (the access-token lifetime plus the
//! verification leeway); after that every such token has expired anyway, so it is pruned.

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
    time::Duration,
};

use fred::prelude::*;
use tokio::sync::broadcast;
use uuid::Uuid;

use crate::{error::ApiError, keys::Keys};

/// What was revoked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Revocation {
    /// One login of a user (logout, refresh-token reuse, a password change made elsewhere).
    Session { user: Uuid, sid: Uuid },
    /// Every login of a user: the account was deactivated.
    Account { user: Uuid },
}

impl Revocation {
    pub fn user(&self) -> Uuid {
        match self {
            Revocation::Session { user, .. } | Revocation::Account { user } => *user,
        }
    }

    /// Whether a token of `user` on login `sid` is refused by this.
    pub fn covers(&self, user: Uuid, sid: Uuid) -> bool {
        match self {
            Revocation::Session { user: u, sid: s } => *u == user && *s == sid,
            Revocation::Account { user: u } => *u == user,
        }
    }

    /// The 401 a REST call with such a token gets.
    pub fn rejection(&self) -> ApiError {
        match self {
            Revocation::Session { .. } => ApiError::unauthorized(
                "session_revoked",
                "this login was revoked (logged out, or the password changed); log in again",
            ),
            Revocation::Account { .. } => {
                ApiError::unauthorized("account_disabled", "the account is deactivated")
            }
        }
    }

    fn member(&self) -> String {
        match self {
            Revocation::Session { user, sid } => format!("s:{user}:{sid}"),
            Revocation::Account { user } => format!("u:{user}"),
        }
    }

    fn parse(member: &str) -> Option<Self> {
        let mut parts = member.split(':');
        match (parts.next()?, parts.next(), parts.next(), parts.next()) {
            ("s", Some(user), Some(sid), None) => Some(Revocation::Session {
                user: user.parse().ok()?,
                sid: sid.parse().ok()?,
            }),
            ("u", Some(user), None, None) => Some(Revocation::Account {
                user: user.parse().ok()?,
            }),
            _ => None,
        }
    }
}

#[derive(Default)]
struct Known {
    /// Revoked logins and accounts, with when each was recorded (Unix ms).
    sessions: HashMap<Uuid, i64>,
    accounts: HashMap<Uuid, i64>,
    /// The newest record read.
    newest: i64,
}

/// The process's view of revocations; see the module documentation.
pub struct Revocations {
    redis: Client,
    keys: Keys,
    /// How long a record matters (ms).
    keep_ms: i64,
    poll: Duration,
    known: RwLock<Known>,
    news: broadcast::Sender<Revocation>,
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// How far back a poll looks beyond the newest record it has, for writers whose clocks lag.
const CLOCK_SLACK_MS: i64 = 5_000;

impl Revocations {
    /// `token_ttl_seconds`: the access-token lifetime; `poll`: `REVOCATION_POLL_MS`.
    pub fn new(redis: Client, keys: Keys, token_ttl_seconds: i64, poll: Duration) -> Arc<Self> {
        Arc::new(Self {
            redis,
            keys,
            // The verification leeway (5 s) and the clock slack on top of the lifetime.
            keep_ms: (token_ttl_seconds + 5) * 1000 + CLOCK_SLACK_MS,
            poll,
            known: RwLock::new(Known::default()),
            news: broadcast::channel(1024).0,
        })
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Known> {
        self.known.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Known> {
        self.known.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a token of `user` on login `sid` is revoked: an in-process lookup.
    pub fn check(&self, user: Uuid, sid: Uuid) -> Option<Revocation> {
        let known = self.read();
        if known.accounts.contains_key(&user) {
            return Some(Revocation::Account { user });
        }
        known
            .sessions
            .contains_key(&sid)
            .then_some(Revocation::Session { user, sid })
    }

    /// Revocations learnt from now on (by poll or by [`Revocations::revoke`] here).
    pub fn subscribe(&self) -> broadcast::Receiver<Revocation> {
        self.news.subscribe()
    }

    /// Records `revocation` for every process, and here at once. The caller publishes the
    /// live event.
    pub async fn revoke(&self, revocation: Revocation) -> Result<(), Error> {
        self.revoke_all(&[revocation]).await
    }

    /// Records several revocations for every process in one round trip, and here at once.
    /// The caller publishes the live events.
    pub async fn revoke_all(&self, revocations: &[Revocation]) -> Result<(), Error> {
        if revocations.is_empty() {
            return Ok(());
        }
        let now = now_ms();
        let members: Vec<(f64, String)> = revocations
            .iter()
            .map(|r| (now as f64, r.member()))
            .collect();
        let _: i64 = self
            .redis
            .zadd(self.keys.revocations(), None, None, false, false, members)
            .await?;
        for r in revocations {
            self.learn(*r, now);
        }
        // Recorded: a process that misses the announcement reads the record at its next poll.
        // Each line is a member and its score, so that listeners note it as the poll would (the
        // poll reads on from the newest score it knows).
        let announcement = revocations
            .iter()
            .map(|r| format!("{} {now}", r.member()))
            .collect::<Vec<_>>()
            .join("\n");
        if let Err(e) = crate::redis::publish(
            &self.redis,
            &self.keys.revocations_channel(),
            announcement.into_bytes(),
        )
        .await
        {
            tracing::warn!(error = %e, "could not announce revocations; other processes learn them at their next poll");
        }
        Ok(())
    }

    /// Takes in a revocation heard of live (the gateways' `revoked` event), ahead of the poll.
    pub fn note(&self, revocation: Revocation) {
        self.learn(revocation, now_ms());
    }

    fn learn(&self, revocation: Revocation, at: i64) {
        let new = {
            let mut known = self.write();
            known.newest = known.newest.max(at);
            let (map, key) = match revocation {
                Revocation::Session { sid, .. } => (&mut known.sessions, sid),
                Revocation::Account { user } => (&mut known.accounts, user),
            };
            map.insert(key, at).is_none()
        };
        if new {
            let _ = self.news.send(revocation);
        }
    }

    /// Reads the records newer than what this process has (all that still matter, the first
    /// time), and forgets those past their life, here and (best effort) in Redis.
    pub async fn refresh(&self) -> Result<(), Error> {
        let now = now_ms();
        let oldest = now - self.keep_ms;
        let from = {
            let known = self.read();
            if known.newest == 0 {
                oldest
            } else {
                (known.newest - CLOCK_SLACK_MS).max(oldest)
            }
        };
        let records: Vec<(String, f64)> = self
            .redis
            .zrangebyscore(self.keys.revocations(), from as f64, "+inf", true, None)
            .await?;
        for (member, at) in records {
            if let Some(r) = Revocation::parse(&member) {
                self.learn(r, at as i64);
            }
        }
        {
            let mut known = self.write();
            known.sessions.retain(|_, at| *at > oldest);
            known.accounts.retain(|_, at| *at > oldest);
        }
        let _: Result<i64, Error> = self
            .redis
            .zremrangebyscore(self.keys.revocations(), "-inf", oldest as f64)
            .await;
        Ok(())
    }

    /// A process's view, read once now and then kept up to date by a task of its own (the
    /// current tokio runtime's) for as long as the process runs.
    pub async fn start(
        redis: Client,
        keys: Keys,
        jwt: &crate::jwt::JwtKeys,
        poll: Duration,
    ) -> Arc<Self> {
        let revocations = Self::new(redis, keys, jwt.ttl_seconds(), poll);
        if let Err(e) = revocations.refresh().await {
            tracing::warn!(error = %e, "could not read revocations yet; will retry");
        }
        tokio::spawn(revocations.clone().run());
        tokio::spawn(revocations.clone().listen());
        revocations
    }

    /// Takes in every announcement (see [`Revocations::revoke_all`]), on a connection of its
    /// own, for as long as the process runs. Each time the connection comes back it subscribes
    /// again and reads the set for what was announced meanwhile.
    pub async fn listen(self: Arc<Self>) {
        let listener = self.redis.clone_new();
        let mut messages = listener.message_rx();
        let mut connections = listener.reconnect_rx();
        let channel = self.keys.revocations_channel();
        listener.connect();
        loop {
            tokio::select! {
                connected = connections.recv() => {
                    if connected.is_err() {
                        return;
                    }
                    let subscribed = if listener.is_clustered() {
                        listener.ssubscribe(channel.as_str()).await
                    } else {
                        listener.subscribe(channel.as_str()).await
                    };
                    if let Err(e) = subscribed {
                        tracing::warn!(error = %e, "could not listen for revocations; polling only");
                    }
                    if let Err(e) = self.refresh().await {
                        tracing::warn!(error = %e, "could not read revocations; will retry");
                    }
                }
                message = messages.recv() => match message {
                    Ok(m) => {
                        let text = m.value.as_bytes().map(String::from_utf8_lossy).unwrap_or_default();
                        for (r, at) in text.lines().filter_map(announced) {
                            self.learn(r, at);
                        }
                    }
                    // Announcements were dropped here: the set has them.
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        if let Err(e) = self.refresh().await {
                            tracing::warn!(error = %e, "could not read revocations; will retry");
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
            }
        }
    }

    /// Polls every `REVOCATION_POLL_MS`, for as long as the process runs.
    pub async fn run(self: Arc<Self>) {
        let mut every = tokio::time::interval(self.poll);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            if let Err(e) = self.refresh().await {
                tracing::warn!(error = %e, "could not read revocations; will retry");
            }
        }
    }
}

/// One line of an announcement: a revocation and when it was recorded.
fn announced(line: &str) -> Option<(Revocation, i64)> {
    let (member, at) = line.split_once(' ')?;
    Some((Revocation::parse(member)?, at.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn announcements_carry_each_revocation_and_its_score() {
        let user = Uuid::new_v4();
        let r = Revocation::Account { user };
        assert_eq!(
            announced(&format!("{} 1700000000123", r.member())),
            Some((r, 1_700_000_000_123))
        );
        assert_eq!(announced(&r.member()), None);
        assert_eq!(announced("u:nonsense 5"), None);
    }

    #[test]
    fn members_round_trip() {
        let (user, sid) = (Uuid::new_v4(), Uuid::new_v4());
        for r in [
            Revocation::Session { user, sid },
            Revocation::Account { user },
        ] {
            assert_eq!(Revocation::parse(&r.member()), Some(r));
        }
        assert_eq!(Revocation::parse("x:1"), None);
        assert_eq!(Revocation::parse("u:not-a-uuid"), None);
        let other = Uuid::new_v4();
        assert!(Revocation::Account { user }.covers(user, other));
        assert!(!Revocation::Session { user, sid }.covers(user, other));
    }
}
