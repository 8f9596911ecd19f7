//! The line's one cadence: the agent's periodic work (every machine's
//! polls, the engine's tick, the loops' heartbeats, the copies for
//! `linegate status`) falls on whole multiples of its period on the wall
//! clock: a 1 s period on every whole second, 5 s on every fifth. Work of
//! the same period, and of periods that divide each other, then shares one
//! wake-up of the agent and one commit of the store instead of each waking
//! it on its own (BENCHMARKS.md, "Uplink cost", round 8), and a restart
//! keeps the line's rhythm.
//!
//! The grid is taken from the wall clock once per process and then follows
//! the monotonic clock: a clock step does not move it (the next start
//! lines up with the new wall clock).
//!
//! It only computes instants; it never sleeps on its own, reads devices or
//! writes anything.

use std::sync::OnceLock;
use std::time::Duration;

use tokio::time::{Instant, Interval, MissedTickBehavior};

/// The first multiple of `period_ms` strictly after `wall_ms` (both in
/// milliseconds since the epoch; a period under 1 ms counts as 1 ms).
pub fn next_multiple_ms(wall_ms: i64, period_ms: i64) -> i64 {
    let p = period_ms.max(1);
    wall_ms.div_euclid(p).saturating_add(1).saturating_mul(p)
}

/// One instant of the monotonic clock and the wall clock's milliseconds
/// at it, taken at the first use.
fn anchor() -> (Instant, i64) {
    static ANCHOR: OnceLock<(Instant, i64)> = OnceLock::new();
    *ANCHOR.get_or_init(|| (Instant::now(), chrono::Utc::now().timestamp_millis()))
}

fn period_ms(period: Duration) -> i64 {
    i64::try_from(period.as_millis()).unwrap_or(i64::MAX).max(1)
}

/// The first point of `period`'s grid strictly after `after`.
pub fn next_after(after: Instant, period: Duration) -> Instant {
    let (at, wall) = anchor();
    // Whole milliseconds from the anchor to `after` (rounded down, so the
    // point found is never at or before `after`).
    let elapsed_ms = if after >= at {
        i64::try_from(after.duration_since(at).as_millis()).unwrap_or(i64::MAX)
    } else {
        let back = at.duration_since(after);
        let ms = i64::try_from(back.as_millis()).unwrap_or(i64::MAX);
        // -1.5 ms is -2 whole ms, not -1.
        if back > Duration::from_millis(ms.unsigned_abs()) {
            ms.saturating_add(1).saturating_neg()
        } else {
            ms.saturating_neg()
        }
    };
    let next = next_multiple_ms(wall.saturating_add(elapsed_ms), period_ms(period));
    let from_anchor = next.saturating_sub(wall);
    let point = if from_anchor >= 0 {
        at.checked_add(Duration::from_millis(from_anchor.unsigned_abs()))
    } else {
        at.checked_sub(Duration::from_millis(from_anchor.unsigned_abs()))
    };
    // Past what an Instant can hold: a period that long is not waited for.
    point.unwrap_or(after + period)
}

/// The next point of `period`'s grid from now.
pub fn next_at(period: Duration) -> Instant {
    next_after(Instant::now(), period)
}

/// A timer ticking on `period`'s grid, first at its next point (not at
/// once). A tick missed (a busy thread) is skipped: the next one is on the
/// grid again, never a burst to catch up.
pub fn interval(period: Duration) -> Interval {
    let period = period.max(Duration::from_millis(1));
    let mut t = tokio::time::interval_at(next_at(period), period);
    t.set_missed_tick_behavior(MissedTickBehavior::Skip);
    t
}

/// A timer ticking `offset` after each point of `period`'s grid: for
/// periodic work that should share the cadence's rhythm but not the
/// instant of the polls (the copies for `linegate status` would otherwise
/// hold the store thread while a poll's readings wait for their commit).
pub fn interval_offset(period: Duration, offset: Duration) -> Interval {
    let period = period.max(Duration::from_millis(1));
    let now = Instant::now();
    let first = now
        .checked_sub(offset)
        .map_or(now + period, |back| next_after(back, period) + offset);
    let mut t = tokio::time::interval_at(first, period);
    t.set_missed_tick_behavior(MissedTickBehavior::Skip);
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_next_multiple_is_strictly_after_the_wall_time() {
        // 2026-12-04T01:00:00.000Z and around it.
        let t = 1_796_346_000_000;
        assert_eq!(next_multiple_ms(t, 1000), t + 1000);
        assert_eq!(next_multiple_ms(t + 1, 1000), t + 1000);
        assert_eq!(next_multiple_ms(t + 999, 1000), t + 1000);
        assert_eq!(next_multiple_ms(t + 250, 500), t + 500);
        assert_eq!(next_multiple_ms(t + 4_200, 5000), t + 5000);
        // Periods that divide each other share their points.
        assert_eq!(
            next_multiple_ms(t + 4_999, 5000),
            next_multiple_ms(t + 4_999, 1000)
        );
        // Before the epoch (a clock far off) and odd periods.
        assert_eq!(next_multiple_ms(-1, 1000), 0);
        assert_eq!(next_multiple_ms(-1000, 1000), 0);
        assert_eq!(next_multiple_ms(10, 3), 12);
        // A zero period counts as 1 ms; no overflow at the ends.
        assert_eq!(next_multiple_ms(10, 0), 11);
        assert_eq!(next_multiple_ms(i64::MAX, 1000), i64::MAX);
        assert_eq!(next_multiple_ms(i64::MIN, 1000), -9_223_372_036_854_775_000);
    }

    #[tokio::test]
    async fn points_of_one_period_are_the_same_instants_whoever_asks() {
        let second = Duration::from_secs(1);
        let a = next_at(second);
        tokio::time::sleep(Duration::from_micros(300)).await;
        let b = next_at(second);
        let now = Instant::now();
        assert!(
            a > now - Duration::from_millis(1) && a <= now + second,
            "{a:?} {now:?}"
        );
        // Asked 0.3 ms apart: the same point, or exactly one period later.
        assert!(b == a || b == a + second, "{a:?} {b:?}");
        // The grid of 5 s is on the grid of 1 s; the next points after a
        // point are one period on.
        let five = next_at(Duration::from_secs(5));
        assert_eq!(next_after(five - Duration::from_millis(1), second), five);
        assert_eq!(next_after(a, second), a + second);
        assert_eq!(next_after(a - Duration::from_nanos(1), second), a);
        // Long before the anchor too.
        let early = a - Duration::from_millis(10_500);
        assert_eq!(next_after(early, second), a - Duration::from_secs(10));
    }

    #[tokio::test]
    async fn an_offset_interval_ticks_that_long_after_each_point() {
        let period = Duration::from_millis(40);
        let offset = Duration::from_millis(15);
        let mut t = interval_offset(period, offset);
        let first = t.tick().await;
        let point = first - offset;
        assert_eq!(next_after(point - Duration::from_nanos(1), period), point);
        assert!(
            first <= Instant::now() && first + period > Instant::now() - Duration::from_millis(5)
        );
        assert_eq!(t.tick().await - first, period);
    }

    #[tokio::test]
    async fn an_interval_ticks_on_the_grid_first_at_its_next_point() {
        let period = Duration::from_millis(50);
        let mut t = interval(period);
        let first = t.tick().await;
        let second = t.tick().await;
        assert_eq!(second - first, period);
        assert_eq!(next_after(first - Duration::from_nanos(1), period), first);
    }
}
