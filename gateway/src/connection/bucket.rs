//! A connection's own token buckets: the first line of its rates (sends, typing, reads),
//! and the pace at which its frames are read.

use std::time::{Duration, Instant};

use tokio_tungstenite::tungstenite::Message as WsMessage;

/// A token bucket.
pub(super) struct Bucket {
    tokens: f64,
    rate: f64,
    burst: f64,
    at: Instant,
}

impl Bucket {
    pub(super) fn new(rate: u32, burst: u32) -> Self {
        Self {
            tokens: f64::from(burst),
            rate: f64::from(rate),
            burst: f64::from(burst),
            at: Instant::now(),
        }
    }

    pub(super) fn take(&mut self) -> bool {
        let now = Instant::now();
        self.tokens =
            (self.tokens + now.duration_since(self.at).as_secs_f64() * self.rate).min(self.burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// How long until the bucket holds a whole token again (zero when it does).
    pub(super) fn wait(&self) -> Duration {
        let missing = 1.0 - self.tokens;
        if missing <= 0.0 || self.rate <= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(missing / self.rate)
        }
    }

    /// Takes `cost` tokens even when there are not that many: the bucket goes into debt, and
    /// the answer is how long until the debt is paid, the wait before doing what was paid for.
    pub(super) fn pace(&mut self, cost: f64) -> Option<Duration> {
        let now = Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.at).as_secs_f64() * self.rate)
            .min(self.burst)
            - cost;
        self.at = now;
        (self.tokens < 0.0).then(|| Duration::from_secs_f64(-self.tokens / self.rate))
    }
}

/// What reading a frame costs against a connection's pace: one token, and one per 8 KiB of
/// payload (parsing a 64 KiB frame is the work of many small ones).
pub(super) fn frame_cost(frame: &WsMessage) -> f64 {
    1.0 + (frame.len() / 8192) as f64
}
