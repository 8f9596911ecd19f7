//! Pacing decisions of the uplink: the reconnect backoff and the rate limit
//! of historical messages. Pure: callers pass the time and the randomness
//! in; nothing here sleeps, reads a clock or touches the network.

use std::time::Duration;

use tokio::time::Instant;

/// Exponential reconnect backoff with "equal jitter": attempt `n` waits a
/// random time between half and all of `min * 2^n` (capped at `max`), so a
/// hundred gateways that lost the same broker do not come back in step.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(min_ms: u64, max_ms: u64) -> Backoff {
        let min = Duration::from_millis(min_ms.max(1));
        Backoff {
            min,
            max: Duration::from_millis(max_ms).max(min),
            attempt: 0,
        }
    }

    /// After a healthy connection: the next failure waits `min` again.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// The wait before the next attempt; `jitter` is uniform in `[0, 1)`.
    pub fn next_delay(&mut self, jitter: f64) -> Duration {
        let factor = 2u32.saturating_pow(self.attempt.min(30));
        let ceiling = self.min.saturating_mul(factor).min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        let half = ceiling / 2;
        half + half.mul_f64(jitter.clamp(0.0, 1.0))
    }
}

/// Token bucket for historical messages: `per_s` tokens a second, at most a
/// tenth of a second's worth (at least one) saved up.
#[derive(Debug, Clone)]
pub struct RateLimit {
    per_s: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl RateLimit {
    pub fn new(per_s: u32, now: Instant) -> RateLimit {
        let per_s = f64::from(per_s.max(1));
        let burst = (per_s / 10.0).max(1.0);
        RateLimit {
            per_s,
            burst,
            tokens: burst,
            at: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + dt * self.per_s).min(self.burst);
        self.at = now;
    }

    /// Whole messages that may go now.
    pub fn available(&mut self, now: Instant) -> usize {
        self.refill(now);
        self.tokens.floor() as usize
    }

    /// Spend `n` tokens (after sending `n` messages).
    pub fn take(&mut self, n: usize, now: Instant) {
        self.refill(now);
        self.tokens -= n as f64;
    }

    /// When the next whole token will be there.
    pub fn next_token_at(&self) -> Instant {
        let missing = (1.0 - self.tokens).max(0.0);
        self.at + Duration::from_secs_f64(missing / self.per_s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_maximum_and_stays_within_jitter_bounds() {
        let mut b = Backoff::new(100, 1_000);
        let lows: Vec<u128> = (0..6).map(|_| b.next_delay(0.0).as_millis()).collect();
        assert_eq!(lows, [50, 100, 200, 400, 500, 500]);
        b.reset();
        assert_eq!(b.next_delay(0.999_999).as_millis(), 99);
    }

    #[test]
    fn jitter_spreads_gateways_that_fail_together() {
        let mut a = Backoff::new(1_000, 60_000);
        let mut b = Backoff::new(1_000, 60_000);
        assert_ne!(a.next_delay(0.1), b.next_delay(0.9));
    }

    #[test]
    fn rate_limit_allows_a_short_burst_then_its_rate() {
        let t0 = Instant::now();
        let mut r = RateLimit::new(100, t0);
        assert_eq!(r.available(t0), 10);
        r.take(10, t0);
        assert_eq!(r.available(t0), 0);
        assert!(r.next_token_at() > t0);
        assert_eq!(r.available(t0 + Duration::from_millis(50)), 5);
        assert_eq!(
            r.available(t0 + Duration::from_secs(60)),
            10,
            "burst is capped"
        );
    }

    #[test]
    fn rate_limit_of_one_per_second_still_sends() {
        let t0 = Instant::now();
        let mut r = RateLimit::new(1, t0);
        assert_eq!(r.available(t0), 1);
        r.take(1, t0);
        let next = r.next_token_at();
        assert_eq!(r.available(next), 1);
    }
}
