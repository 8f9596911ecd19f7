//! Free capacity of a machine over a horizon (the next 24 h by default),
//! per shift: planned seconds, seconds booked by its queue, free seconds,
//! and when the queue runs dry.
//!
//! Pure: the calendar, `now`, the horizon and when the machine's queue runs
//! dry (from [`forecast`](super::forecast)) in, the figures out. The queue
//! works back to back from `now` in planned time, so what it books of a
//! window is the planned time of that window before `dry_at`. No I/O;
//! `outlook` publishes.

use chrono::{DateTime, Duration, Utc};

use crate::machine::shift::ShiftCalendar;
use crate::orders::forecast::planned_seconds;

/// One window of the horizon: a shift (its part inside the horizon), or
/// the whole horizon without a calendar.
#[derive(Debug, Clone, PartialEq)]
pub struct Window {
    /// The shift's name; `None` without a calendar.
    pub name: Option<String>,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    pub planned_s: f64,
    pub booked_s: f64,
    pub free_s: f64,
}

/// A machine's capacity over the horizon.
#[derive(Debug, Clone, PartialEq)]
pub struct Capacity {
    pub from: DateTime<Utc>,
    pub until: DateTime<Utc>,
    pub planned_s: f64,
    pub booked_s: f64,
    pub free_s: f64,
    /// When the queue runs dry (may be beyond the horizon); `None` when an
    /// order of it has no forecast.
    pub queue_dry_at: Option<DateTime<Utc>>,
    pub windows: Vec<Window>,
}

/// The windows of `[from, until)`: every shift that overlaps it, clipped.
fn windows_of(
    calendar: Option<&ShiftCalendar>,
    from: DateTime<Utc>,
    until: DateTime<Utc>,
) -> Vec<(Option<String>, DateTime<Utc>, DateTime<Utc>)> {
    let Some(cal) = calendar else {
        return vec![(None, from, until)];
    };
    let mut out: Vec<(Option<String>, DateTime<Utc>, DateTime<Utc>)> = Vec::new();
    let mut at = from;
    for _ in 0..100_000 {
        if at >= until {
            break;
        }
        let span = cal.span_at(at);
        if let Some(shift) = &span.shift {
            let (s, e) = (shift.start.max(from), shift.end.min(until));
            if e > s && !out.iter().any(|w| w.1 == s) {
                out.push((Some(shift.name.clone()), s, e));
            }
        }
        match span.until {
            Some(next) if next > at => at = next,
            _ => break,
        }
    }
    out
}

/// Capacity of a machine from `now` over `horizon`, its queue running dry at `dry_at`.
pub fn capacity(
    calendar: Option<&ShiftCalendar>,
    now: DateTime<Utc>,
    horizon: Duration,
    dry_at: Option<DateTime<Utc>>,
) -> Capacity {
    let until = now + horizon;
    // Unknown end of the queue: book the whole horizon, it is not free.
    let booked_until = dry_at.unwrap_or(until);
    let windows: Vec<Window> = windows_of(calendar, now, until)
        .into_iter()
        .map(|(name, start, end)| {
            let planned_s = planned_seconds(calendar, start, end);
            let booked_s = planned_seconds(calendar, start, booked_until.min(end));
            Window {
                name,
                start,
                end,
                planned_s,
                booked_s,
                free_s: (planned_s - booked_s).max(0.0),
            }
        })
        .collect();
    Capacity {
        from: now,
        until,
        planned_s: windows.iter().map(|w| w.planned_s).sum(),
        booked_s: windows.iter().map(|w| w.booked_s).sum(),
        free_s: windows.iter().map(|w| w.free_s).sum(),
        queue_dry_at: dry_at,
        windows,
    }
}

/// Publish `new` instead of `last`? When the free time moved by more than
/// `move_s`, the windows changed (a shift ended or came into the
/// horizon), or whether the queue's end is known changed.
pub fn capacity_changed(last: Option<&Capacity>, new: &Capacity, move_s: f64) -> bool {
    let Some(last) = last else {
        return true;
    };
    // The first window starts at `now` and the last ends with the horizon:
    // those ends slide with the clock and are no news.
    let starts = |c: &Capacity| {
        let n = c.windows.len();
        c.windows
            .iter()
            .enumerate()
            .map(|(i, w)| {
                (
                    w.name.clone(),
                    (i > 0).then_some(w.start),
                    (i + 1 < n).then_some(w.end),
                )
            })
            .collect::<Vec<_>>()
    };
    (last.free_s - new.free_s).abs() > move_s
        || (last.booked_s - new.booked_s).abs() > move_s
        || starts(last) != starts(new)
        || last.queue_dry_at.is_some() != new.queue_dry_at.is_some()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{BreakConfig, ShiftCalendarConfig, ShiftConfig};

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    /// Early 06:00-14:00 with a break 10:00-10:30, late 14:00-22:00, weekdays.
    fn two_shifts() -> ShiftCalendar {
        let days: Vec<String> = ["mon", "tue", "wed", "thu", "fri"]
            .iter()
            .map(|d| d.to_string())
            .collect();
        let cfg = ShiftCalendarConfig {
            shift: vec![
                ShiftConfig {
                    name: "early".into(),
                    days: days.clone(),
                    start: "06:00".into(),
                    end: "14:00".into(),
                    breaks: vec![BreakConfig {
                        start: "10:00".into(),
                        end: "10:30".into(),
                    }],
                },
                ShiftConfig {
                    name: "late".into(),
                    days,
                    start: "14:00".into(),
                    end: "22:00".into(),
                    breaks: vec![],
                },
            ],
            holidays: vec![],
        };
        ShiftCalendar::from_config(&cfg, chrono_tz::UTC).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn the_windows_sum_to_the_calendars_planned_time() {
        // Tuesday 2026-12-01 09:00 + 24 h: early from 09:00 (4.5 h planned),
        // late 8 h, next early until 09:00 (3 h).
        let cal = two_shifts();
        let now = utc("2026-12-01T09:00:00Z");
        let c = capacity(Some(&cal), now, Duration::hours(24), Some(now));
        let names: Vec<_> = c
            .windows
            .iter()
            .map(|w| w.name.clone().unwrap_or_default())
            .collect();
        assert_eq!(names, ["early", "late", "early"]);
        let planned: Vec<f64> = c.windows.iter().map(|w| w.planned_s).collect();
        assert_eq!(planned, [4.5 * 3600.0, 8.0 * 3600.0, 3.0 * 3600.0]);
        assert_eq!(c.planned_s, 15.5 * 3600.0);
        assert_eq!(c.booked_s, 0.0);
        assert_eq!(c.free_s, c.planned_s);
    }

    #[test]
    fn the_queue_books_planned_time_from_now_until_it_runs_dry() {
        // Dry at 16:00: early 09:00-14:00 less the break (4.5 h), late 2 h.
        let cal = two_shifts();
        let now = utc("2026-12-01T09:00:00Z");
        let c = capacity(
            Some(&cal),
            now,
            Duration::hours(24),
            Some(utc("2026-12-01T16:00:00Z")),
        );
        let booked: Vec<f64> = c.windows.iter().map(|w| w.booked_s).collect();
        assert_eq!(booked, [4.5 * 3600.0, 2.0 * 3600.0, 0.0]);
        assert_eq!(c.windows[1].free_s, 6.0 * 3600.0);
        assert_eq!(c.free_s + c.booked_s, c.planned_s);
    }

    #[test]
    fn without_a_calendar_the_horizon_is_one_window_of_planned_time() {
        let now = utc("2026-12-01T09:00:00Z");
        let c = capacity(
            None,
            now,
            Duration::hours(24),
            Some(now + Duration::hours(30)),
        );
        assert_eq!(c.windows.len(), 1);
        assert_eq!(c.planned_s, 86_400.0);
        assert_eq!(c.booked_s, 86_400.0);
        assert_eq!(c.free_s, 0.0);
    }

    #[test]
    fn a_queue_without_a_forecast_leaves_nothing_free() {
        let now = utc("2026-12-01T09:00:00Z");
        let c = capacity(None, now, Duration::hours(1), None);
        assert_eq!(c.free_s, 0.0);
        assert_eq!(c.queue_dry_at, None);
    }

    #[test]
    fn capacity_is_news_only_beyond_its_threshold_or_when_shifts_change() {
        let cal = two_shifts();
        let now = utc("2026-12-01T09:00:00Z");
        let a = capacity(Some(&cal), now, Duration::hours(24), Some(now));
        let b = capacity(
            Some(&cal),
            now + Duration::seconds(60),
            Duration::hours(24),
            Some(now + Duration::seconds(60)),
        );
        assert!(capacity_changed(None, &a, 300.0));
        // A minute later nothing but the clipped ends moved.
        assert!(!capacity_changed(Some(&a), &b, 300.0));
        let booked = capacity(
            Some(&cal),
            now,
            Duration::hours(24),
            Some(now + Duration::hours(1)),
        );
        assert!(capacity_changed(Some(&a), &booked, 300.0));
    }
}
