//! The order of one conversation's messages on one channel: each `seq` forwarded once, in
//! order. A `seq` at or below the last one forwarded is a duplicate (a redelivered send); one
//! beyond the next means messages were missed (a publish that failed, a Redis reconnect, a slot
//! that moved). Then the stream is *under repair*: what arrives is held, in `seq` order, until
//! the missing messages come back from chat-service (off the dispatcher, see
//! [`super::repair`]), and the fetched and held messages go out together, in order. A repair
//! that fetched nothing (chat-service down) releases what was held as it is: live delivery goes
//! on and clients `sync` what they lack.

use std::collections::BTreeMap;

/// The most messages held for one stream while it is under repair; past it, new ones are
/// dropped (and counted) rather than growing without bound behind a chat-service that does not
/// answer. Clients `sync` what they lack.
pub const HELD_MAX: usize = 10_000;

/// What to do with an offered message.
#[derive(Debug, PartialEq, Eq)]
pub enum Offer<T> {
    /// The next one: forward it now.
    Forward(T),
    /// Forwarded before.
    Duplicate,
    /// Kept until the repair under way ends.
    Held,
    /// Kept, and messages after `after` are missing: start a repair.
    Gap { after: i64 },
    /// Held messages are at [`HELD_MAX`]: dropped.
    Dropped,
}

/// The last `seq` forwarded and, under repair, what waits for it.
#[derive(Debug)]
pub struct Order<T> {
    last: i64,
    held: Option<BTreeMap<i64, T>>,
}

impl<T> Order<T> {
    pub fn new(last: i64) -> Self {
        Self { last, held: None }
    }

    pub fn last(&self) -> i64 {
        self.last
    }

    pub fn is_repairing(&self) -> bool {
        self.held.is_some()
    }

    /// A live message number `seq`.
    pub fn offer(&mut self, seq: i64, item: T) -> Offer<T> {
        if seq <= self.last {
            return Offer::Duplicate;
        }
        if let Some(held) = &mut self.held {
            if held.len() >= HELD_MAX && !held.contains_key(&seq) {
                return Offer::Dropped;
            }
            held.insert(seq, item);
            return Offer::Held;
        }
        if seq == self.last + 1 {
            self.last = seq;
            return Offer::Forward(item);
        }
        self.held = Some(BTreeMap::from([(seq, item)]));
        Offer::Gap { after: self.last }
    }

    /// Puts the stream under repair (a catch-up after a subscription or a reconnect, when
    /// nothing says yet whether messages are missing); returns the seq to fetch after, or
    /// `None` when a repair is under way already.
    pub fn begin_repair(&mut self) -> Option<i64> {
        if self.held.is_some() {
            return None;
        }
        self.held = Some(BTreeMap::new());
        Some(self.last)
    }

    /// Ends the repair with what chat-service returned (`fetched`, any order): returns what to
    /// forward, in `seq` order, each once — the fetched messages and the held ones merged.
    pub fn finish_repair(&mut self, fetched: impl IntoIterator<Item = (i64, T)>) -> Vec<T> {
        let mut all = self.held.take().unwrap_or_default();
        for (seq, item) in fetched {
            // A fetched message is the stored one; it replaces a held copy of itself.
            all.insert(seq, item);
        }
        let mut out = Vec::with_capacity(all.len());
        for (seq, item) in all {
            if seq > self.last {
                self.last = seq;
                out.push(item);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_next_seq_goes_out_and_old_ones_are_duplicates() {
        let mut o = Order::new(4);
        assert_eq!(o.offer(5, "m5"), Offer::Forward("m5"));
        assert_eq!(o.offer(5, "m5"), Offer::Duplicate);
        assert_eq!(o.offer(3, "m3"), Offer::Duplicate);
        assert_eq!(o.last(), 5);
        assert!(!o.is_repairing());
    }

    #[test]
    fn a_gap_holds_what_follows_until_the_repair_fills_it() {
        let mut o = Order::new(1);
        assert_eq!(o.offer(4, "m4"), Offer::Gap { after: 1 });
        assert!(o.is_repairing());
        assert_eq!(o.offer(6, "m6"), Offer::Held);
        assert_eq!(o.offer(5, "m5"), Offer::Held);
        assert_eq!(o.offer(1, "m1"), Offer::Duplicate);
        // A second gap while one is repaired starts nothing new.
        assert_eq!(o.begin_repair(), None);
        let out = o.finish_repair([(3, "f3"), (2, "f2"), (4, "f4")]);
        assert_eq!(out, vec!["f2", "f3", "f4", "m5", "m6"]);
        assert_eq!(o.last(), 6);
        assert!(!o.is_repairing());
        assert_eq!(o.offer(7, "m7"), Offer::Forward("m7"));
    }

    #[test]
    fn a_repair_that_fetched_nothing_releases_what_was_held() {
        let mut o = Order::new(1);
        assert_eq!(o.offer(5, "m5"), Offer::Gap { after: 1 });
        assert_eq!(o.offer(7, "m7"), Offer::Held);
        assert_eq!(o.finish_repair([]), vec!["m5", "m7"]);
        assert_eq!(o.last(), 7);
    }

    #[test]
    fn a_catch_up_holds_live_messages_and_skips_what_was_forwarded() {
        let mut o = Order::new(10);
        assert_eq!(o.begin_repair(), Some(10));
        assert_eq!(o.offer(13, "m13"), Offer::Held);
        // chat-service returns what exists after 10, including the held one.
        let out = o.finish_repair([(11, "f11"), (12, "f12"), (13, "f13")]);
        assert_eq!(out, vec!["f11", "f12", "f13"]);
        // Nothing was missing: the catch-up forwards nothing and holds nothing.
        assert_eq!(o.begin_repair(), Some(13));
        assert!(o.finish_repair([(13, "again")]).is_empty());
    }

    #[test]
    fn what_is_held_is_bounded() {
        let mut o = Order::new(0);
        assert_eq!(o.offer(2, 2), Offer::Gap { after: 0 });
        for seq in 3..(HELD_MAX as i64 + 2) {
            assert_eq!(o.offer(seq, seq), Offer::Held);
        }
        assert_eq!(o.offer(HELD_MAX as i64 + 5, 0), Offer::Dropped);
        assert_eq!(o.finish_repair([]).len(), HELD_MAX);
    }
}
