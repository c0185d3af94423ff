//! Spacing of a send loop's batches: none while the load is light (a send that finds the loop
//! idle is persisted at once), further apart as it grows (group commit). Each send
//! loop of [`crate::worker`] has its own [`Pacer`].

use std::time::Duration;

/// Spaces a send loop's batches, but only under load (group commit). While the sends arriving
/// would come to fewer than [`LIGHT_LOAD`] per `interval`, the loop reads again as soon as a batch
/// is done, blocking on the stream: a send that finds the loop idle is taken at once, and
/// batches grow only by what arrived while one was in flight. Above that rate, a loop that has
/// just finished a batch waits until one *spacing* after that batch began, so a busy partition
/// runs fewer, larger batches (each batch costs a transaction and a publish per channel, and
/// the gateways' CPU follows the batch rate: a member gets about one socket write per batch
/// that touched its room). The spacing is half the `interval` from [`LIGHT_LOAD`] on and grows
/// in proportion to the load past half of [`HEAVY_LOAD`], to the whole interval at
/// [`HEAVY_LOAD`] sends per interval. Half an interval is the least that pays: batches of one or
/// two sends cost what unbatched ones do (a spacing growing from nothing nearly doubled the CPU
/// per delivery at 500 sends/s); a heavily loaded partition batches twice as much, as the
/// writes that saves are then what the machine is short of. A loop whose batch outlasted the
/// spacing reads again at once, and so does one whose read came back full (more is waiting, and
/// waiting longer would only cap the rate at a batch per spacing).
#[derive(Debug)]
pub struct Pacer {
    interval: Duration,
    /// When the previous batch that had work began, to estimate the arrival rate.
    previous: Option<tokio::time::Instant>,
    /// Sends arriving per interval, a moving average over the last [`RATE_WINDOW`].
    per_interval: f64,
}

/// Below this many sends per interval (averaged over the last [`RATE_WINDOW`]) a loop does not
/// wait between batches: at the default 20 ms, below 400 sends/s a partition persists every send
/// as it arrives, and a quiet conversation pays no batching delay at all.
pub const LIGHT_LOAD: f64 = 8.0;

/// From this many sends per interval on, batches begin a whole interval apart (at the default
/// 20 ms, from 2,000 sends/s); from [`LIGHT_LOAD`] to half of this, half an interval apart
/// (400 to 1,000 sends/s), and in proportion to the load between.
pub const HEAVY_LOAD: f64 = 40.0;

/// The span of time the send rate is averaged over.
const RATE_WINDOW: Duration = Duration::from_millis(100);

impl Pacer {
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            previous: None,
            per_interval: 0.0,
        }
    }

    /// Sends per interval, as estimated from the batches so far.
    pub fn load(&self) -> f64 {
        self.per_interval
    }

    /// How far apart batches begin at the present load: nothing below [`LIGHT_LOAD`], then half
    /// the interval, growing in proportion to the load to the whole of it at [`HEAVY_LOAD`].
    pub fn spacing(&self) -> Duration {
        let load = self.load();
        if load >= LIGHT_LOAD {
            self.interval.mul_f64((load / HEAVY_LOAD).clamp(0.5, 1.0))
        } else {
            Duration::ZERO
        }
    }

    /// When a loop whose last batch began at `began` reads again; `full` when that batch's read
    /// came back with as many entries as it asked for.
    pub fn next_read(&self, began: tokio::time::Instant, full: bool) -> tokio::time::Instant {
        self.next_read_at(began, full, tokio::time::Instant::now())
    }

    fn next_read_at(
        &self,
        began: tokio::time::Instant,
        full: bool,
        now: tokio::time::Instant,
    ) -> tokio::time::Instant {
        let spacing = self.spacing();
        if full || spacing.is_zero() {
            return now;
        }
        began.checked_add(spacing).map_or(now, |slot| slot.max(now))
    }

    /// A batch of `commands` sends began at `at`. The sends it took arrived since the previous
    /// batch began: that gives the rate.
    pub fn began(&mut self, at: tokio::time::Instant, commands: usize) {
        if let Some(previous) = self.previous {
            let gap = at.saturating_duration_since(previous).as_secs_f64();
            if gap > 0.0 {
                // A moving average over about the last `RATE_WINDOW` of time, whatever the
                // batches' lengths: after a long silence the estimate is this batch's alone.
                let sample = commands as f64 * self.interval.as_secs_f64() / gap;
                let weight = 1.0 - (-gap / RATE_WINDOW.as_secs_f64()).exp();
                self.per_interval += weight * (sample - self.per_interval);
            }
        }
        self.previous = Some(at);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pacer that has seen heavy load (above [`HEAVY_LOAD`]): it spaces batches a whole
    /// interval apart.
    fn loaded(interval: Duration) -> Pacer {
        let mut pacer = Pacer::new(interval);
        pacer.per_interval = 50.0;
        pacer
    }

    #[test]
    fn under_load_a_short_batch_waits_and_a_long_or_full_one_does_not() {
        let ms = Duration::from_millis;
        let pacer = loaded(ms(10));
        let t0 = tokio::time::Instant::now();
        // A batch that began at 0 and took 4 ms: the next read is one spacing after it began.
        assert_eq!(pacer.next_read_at(t0, false, t0 + ms(4)), t0 + ms(10));
        // A batch that began at 12 and took 15 ms: the loop reads again at once, not at 22.
        assert_eq!(
            pacer.next_read_at(t0 + ms(12), false, t0 + ms(27)),
            t0 + ms(27)
        );
        // A short batch whose read came back full: more is waiting, so it reads at once too.
        assert_eq!(
            pacer.next_read_at(t0 + ms(30), true, t0 + ms(33)),
            t0 + ms(33)
        );
        assert_eq!(
            pacer.next_read_at(t0 + ms(30), false, t0 + ms(33)),
            t0 + ms(40)
        );
        // With no interval there is no spacing, whatever the load.
        let mut unpaced = Pacer::new(Duration::ZERO);
        unpaced.per_interval = 50.0;
        assert_eq!(unpaced.spacing(), Duration::ZERO);
        assert_eq!(unpaced.next_read_at(t0, false, t0 + ms(1)), t0 + ms(1));
    }

    #[test]
    fn the_spacing_is_half_the_interval_under_load_and_grows_to_all_of_it() {
        let ms = Duration::from_millis;
        let mut pacer = Pacer::new(ms(20));
        let mut at = |load: f64| {
            pacer.per_interval = load;
            pacer.spacing()
        };
        assert_eq!(at(0.0), Duration::ZERO);
        assert_eq!(at(LIGHT_LOAD - 0.1), Duration::ZERO);
        assert_eq!(at(LIGHT_LOAD), ms(10));
        assert_eq!(at(HEAVY_LOAD / 2.0), ms(10));
        assert_eq!(at(HEAVY_LOAD * 3.0 / 4.0), ms(15));
        assert_eq!(at(HEAVY_LOAD), ms(20));
        assert_eq!(at(HEAVY_LOAD * 10.0), ms(20));
        // At three quarters of the heavy load, a loop reads 15 ms after its batch began.
        pacer.per_interval = HEAVY_LOAD * 3.0 / 4.0;
        let t0 = tokio::time::Instant::now();
        assert_eq!(pacer.next_read_at(t0, false, t0 + ms(1)), t0 + ms(15));
    }

    #[test]
    fn a_quiet_partition_never_waits_and_a_busy_one_does() {
        let ms = Duration::from_millis;
        let mut pacer = Pacer::new(ms(20));
        let t0 = tokio::time::Instant::now();
        // 200 sends/s, one per batch, each batch 1 ms long: every read is at once.
        for i in 0..50u64 {
            let began = t0 + ms(5 * i);
            pacer.began(began, 1);
            assert_eq!(
                pacer.next_read_at(began, false, began + ms(1)),
                began + ms(1)
            );
        }
        assert!(pacer.load() < LIGHT_LOAD, "{}", pacer.load());
        // Then 3,000 sends/s, each batch taking what arrived since the previous one began and
        // lasting 1 ms: batches run back to back at first; once the estimate passes the
        // threshold (within the averaging window), the loop waits for its slot and batches grow,
        // until they begin a whole interval apart.
        let t1 = t0 + ms(1000);
        let (mut previous, mut at) = (t1, t1 + ms(1));
        let mut waits = 0;
        for _ in 0..100 {
            let arrived = 3 * at.duration_since(previous).as_millis() as usize;
            pacer.began(at, arrived.max(1));
            let next = pacer.next_read_at(at, false, at + ms(1));
            if next > at + ms(1) {
                waits += 1;
            }
            (previous, at) = (at, next);
        }
        assert!(pacer.load() >= HEAVY_LOAD, "{}", pacer.load());
        assert!(waits > 50, "{waits}");
        assert_eq!(pacer.spacing(), ms(20));
        assert_eq!(pacer.next_read_at(at, false, at + ms(1)), at + ms(20));
        // A second of silence: the next send goes at once again.
        let later = at + ms(1000);
        pacer.began(later, 1);
        assert!(pacer.load() < LIGHT_LOAD, "{}", pacer.load());
        assert_eq!(
            pacer.next_read_at(later, false, later + ms(1)),
            later + ms(1)
        );
    }
}
