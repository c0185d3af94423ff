//! `user_updated` once per connection. chat-service publishes a profile change on the channel
//! of every conversation the user is in, so a connection that shares several of them with the
//! user would hear it once on each. The node remembers, per user, the latest profile it passed
//! on and the connections that got it: the same profile arriving on another channel skips
//! those, and a different one starts afresh (a name changed to B and back to A reaches everyone
//! three times, in order). chat-service announces one user's changes one at a time, so the
//! copies of one change reach a node before the next change's.

use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant},
};

use shared::chat::UserSummary;
use uuid::Uuid;

use crate::connection::state::ConnId;

/// How long a change is remembered: its copies arrive within milliseconds of each other; one
/// held up longer (a Redis shard catching up) is passed on again, which costs a duplicate.
const REMEMBERED: Duration = Duration::from_secs(30);

#[derive(Default)]
pub struct Profiles {
    latest: HashMap<Uuid, Heard>,
    pruned_at: Option<Instant>,
}

struct Heard {
    profile: UserSummary,
    at: Instant,
    told: HashSet<ConnId>,
}

impl Profiles {
    /// The connections already told `profile`, for the caller to add those it tells now; empty
    /// when `profile` is news (a first change, or one unlike the latest heard of the user).
    pub fn told(&mut self, profile: &UserSummary, now: Instant) -> &mut HashSet<ConnId> {
        if self
            .pruned_at
            .is_none_or(|t| now.duration_since(t) >= REMEMBERED)
        {
            self.latest
                .retain(|_, h| now.duration_since(h.at) < REMEMBERED);
            self.pruned_at = Some(now);
        }
        let heard = self.latest.entry(profile.id).or_insert_with(|| Heard {
            profile: profile.clone(),
            at: now,
            told: HashSet::new(),
        });
        if heard.profile != *profile || now.duration_since(heard.at) >= REMEMBERED {
            *heard = Heard {
                profile: profile.clone(),
                at: now,
                told: HashSet::new(),
            };
        }
        &mut heard.told
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(id: Uuid, name: &str) -> UserSummary {
        UserSummary {
            id,
            username: "alice".into(),
            display_name: name.into(),
            avatar_url: None,
            is_active: true,
            created_at: chrono::DateTime::UNIX_EPOCH,
            last_seen: None,
        }
    }

    /// Whether `conn` is told `profile` (as the fan-out asks).
    fn tell(p: &mut Profiles, profile: &UserSummary, conn: ConnId, now: Instant) -> bool {
        p.told(profile, now).insert(conn)
    }

    #[test]
    fn each_change_once_per_connection() {
        let mut p = Profiles::default();
        let now = Instant::now();
        let alice = Uuid::new_v4();
        let (a, b) = (user(alice, "A"), user(alice, "B"));
        // A on two channels that both feed connection 1; connection 2 on the second only.
        assert!(tell(&mut p, &a, 1, now));
        assert!(!tell(&mut p, &a, 1, now));
        assert!(tell(&mut p, &a, 2, now));
        // B, then A again: each is news to both.
        assert!(tell(&mut p, &b, 1, now));
        assert!(!tell(&mut p, &b, 1, now));
        assert!(tell(&mut p, &b, 2, now));
        assert!(tell(&mut p, &a, 1, now));
        assert!(tell(&mut p, &a, 2, now));
        assert!(!tell(&mut p, &a, 2, now));
        // Another user's change is its own.
        assert!(tell(&mut p, &user(Uuid::new_v4(), "A"), 1, now));
    }

    #[test]
    fn forgotten_after_a_while() {
        let mut p = Profiles::default();
        let now = Instant::now();
        let a = user(Uuid::new_v4(), "A");
        assert!(tell(&mut p, &a, 1, now));
        assert!(!tell(&mut p, &a, 1, now + REMEMBERED / 2));
        assert!(tell(&mut p, &a, 1, now + REMEMBERED));
        // Pruning drops users not heard of lately.
        let b = user(Uuid::new_v4(), "B");
        assert!(tell(&mut p, &b, 1, now + REMEMBERED * 3));
        assert_eq!(p.latest.len(), 1);
    }
}
