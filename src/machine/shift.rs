//! The shift calendar: which wall-clock time is planned production time, in
//! the site's time zone (daylight saving handled by chrono-tz).
//!
//! A shift runs on some weekdays from a local start to a local end; an end at
//! or before the start runs past midnight (22:00-06:00). Breaks lie inside a
//! shift. A holiday is a whole local day without production: a shift that
//! would start on it does not happen, and the part of a night shift that
//! reaches into it is not planned either. Time outside every shift, in a
//! break or on a holiday is `planned_stop`.
//!
//! Local times that do not exist (the hour skipped when clocks go forward)
//! move forward by the gap, as the clock does: 02:30 becomes 03:30. Local
//! times that exist twice (clocks go back) take the first one. So a night
//! shift across a change is one hour shorter or longer, as it is on the floor.
//!
//! This module only answers questions about time; it never reads a clock.

use std::collections::BTreeSet;

use chrono::{
    DateTime, Datelike, Duration, NaiveDate, NaiveDateTime, NaiveTime, Offset, TimeZone, Utc,
};
use chrono_tz::Tz;

use crate::config::ShiftCalendarConfig;

/// A problem in the `[shifts]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShiftError {
    /// Key path, e.g. `shifts.shift[1].start`.
    pub key: String,
    pub message: String,
}

impl std::fmt::Display for ShiftError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "`{}`: {}", self.key, self.message)
    }
}

impl std::error::Error for ShiftError {}

/// One configured shift, parsed.
#[derive(Debug, Clone)]
struct Shift {
    name: String,
    /// Monday = 0 .. Sunday = 6.
    days: [bool; 7],
    start: NaiveTime,
    end: NaiveTime,
    breaks: Vec<(NaiveTime, NaiveTime)>,
}

/// One shift on one day, resolved to UTC instants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShiftInstance {
    pub name: String,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    /// Breaks inside the shift, `[start, end)`.
    pub breaks: Vec<(DateTime<Utc>, DateTime<Utc>)>,
}

/// What the calendar says about a stretch of time that starts at the instant
/// asked about and lasts until `until` (the next boundary; `None` = forever).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CalendarSpan {
    /// Planned production time (inside a shift, not in a break, not a holiday).
    pub planned: bool,
    /// Why it is not planned: `no shift`, `break` or `holiday`.
    pub reason: Option<&'static str>,
    /// The shift that covers the instant (breaks and holidays included).
    pub shift: Option<ShiftInstance>,
    pub until: Option<DateTime<Utc>>,
}

/// Shifts, breaks and holidays, resolved for one time zone.
#[derive(Debug, Clone)]
pub struct ShiftCalendar {
    pub tz: Tz,
    shifts: Vec<Shift>,
    holidays: BTreeSet<NaiveDate>,
}

const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

/// Longest stretch searched for the next boundary (a calendar of holidays only).
const SEARCH_DAYS: i64 = 800;

fn parse_hhmm(text: &str, key: String) -> Result<NaiveTime, ShiftError> {
    let bad = || ShiftError {
        key: key.clone(),
        message: format!("{text} is not HH:MM (00:00 to 23:59), e.g. \"06:00\""),
    };
    let (h, m) = text.split_once(':').ok_or_else(bad)?;
    if h.len() != 2 || m.len() != 2 {
        return Err(bad());
    }
    let h: u32 = h.parse().map_err(|_| bad())?;
    let m: u32 = m.parse().map_err(|_| bad())?;
    NaiveTime::from_hms_opt(h, m, 0).ok_or_else(bad)
}

/// Minutes from `from` to `to` going forward on the clock face (0..1440).
fn minutes_after(from: NaiveTime, to: NaiveTime) -> i64 {
    (to - from).num_minutes().rem_euclid(1440)
}

/// Length of a shift in clock minutes: an end at or before the start runs past midnight.
fn shift_minutes(start: NaiveTime, end: NaiveTime) -> i64 {
    match minutes_after(start, end) {
        0 => 1440,
        m => m,
    }
}

impl ShiftCalendar {
    pub fn from_config(cfg: &ShiftCalendarConfig, tz: Tz) -> Result<Self, ShiftError> {
        let mut shifts = Vec::with_capacity(cfg.shift.len());
        let mut names = BTreeSet::new();
        for (i, s) in cfg.shift.iter().enumerate() {
            let k = |f: &str| format!("shifts.shift[{i}].{f}");
            if s.name.trim().is_empty() {
                return Err(ShiftError {
                    key: k("name"),
                    message: "a shift needs a name, e.g. \"early\"".into(),
                });
            }
            if !names.insert(s.name.as_str()) {
                return Err(ShiftError {
                    key: k("name"),
                    message: format!("shift name {:?} is used twice", s.name),
                });
            }
            let mut days = [false; 7];
            if s.days.is_empty() {
                return Err(ShiftError {
                    key: k("days"),
                    message: "list the days of the shift, e.g. [\"mon\", \"tue\"]".into(),
                });
            }
            for (j, d) in s.days.iter().enumerate() {
                let Some(idx) = DAYS.iter().position(|x| x.eq_ignore_ascii_case(d)) else {
                    return Err(ShiftError {
                        key: format!("shifts.shift[{i}].days[{j}]"),
                        message: format!(
                            "{d:?} is not a day: use mon, tue, wed, thu, fri, sat, sun"
                        ),
                    });
                };
                days[idx] = true;
            }
            let start = parse_hhmm(&s.start, k("start"))?;
            let end = parse_hhmm(&s.end, k("end"))?;
            let len = shift_minutes(start, end);
            let mut breaks = Vec::new();
            for (j, b) in s.breaks.iter().enumerate() {
                let bs = parse_hhmm(&b.start, format!("shifts.shift[{i}].break[{j}].start"))?;
                let be = parse_hhmm(&b.end, format!("shifts.shift[{i}].break[{j}].end"))?;
                let from = minutes_after(start, bs);
                let to = from + shift_minutes(bs, be);
                if to > len || minutes_after(bs, be) == 0 {
                    return Err(ShiftError {
                        key: format!("shifts.shift[{i}].break[{j}].start"),
                        message: format!(
                            "break {}-{} does not lie inside shift {:?} ({}-{})",
                            b.start, b.end, s.name, s.start, s.end
                        ),
                    });
                }
                breaks.push((bs, be));
            }
            shifts.push(Shift {
                name: s.name.clone(),
                days,
                start,
                end,
                breaks,
            });
        }
        let mut holidays = BTreeSet::new();
        for (i, h) in cfg.holidays.iter().enumerate() {
            let date = NaiveDate::parse_from_str(h, "%Y-%m-%d")
                .ok()
                .filter(|_| h.len() == 10)
                .ok_or_else(|| ShiftError {
                    key: format!("shifts.holidays[{i}]"),
                    message: format!("{h:?} is not a date YYYY-MM-DD, e.g. \"2026-12-25\""),
                })?;
            holidays.insert(date);
        }
        let cal = ShiftCalendar {
            tz,
            shifts,
            holidays,
        };
        cal.check_overlaps()?;
        Ok(cal)
    }

    /// Two shifts may not cover the same time: check one reference week.
    fn check_overlaps(&self) -> Result<(), ShiftError> {
        // Monday 2024-01-01; the week after too, for shifts that run past Sunday.
        let Some(monday) = NaiveDate::from_ymd_opt(2024, 1, 1) else {
            return Ok(());
        };
        let mut all: Vec<(usize, ShiftInstance)> = Vec::new();
        for day in 0..8 {
            let date = monday + Duration::days(day);
            for (idx, shift) in self.shifts.iter().enumerate() {
                if shift.days[date.weekday().num_days_from_monday() as usize] {
                    all.push((idx, self.instance(shift, date)));
                }
            }
        }
        all.sort_by_key(|(_, i)| i.start);
        for pair in all.windows(2) {
            let (a, b) = (&pair[0], &pair[1]);
            if b.1.start < a.1.end {
                let (first, second) = if a.0 < b.0 { (a, b) } else { (b, a) };
                return Err(ShiftError {
                    key: format!("shifts.shift[{}]", second.0),
                    message: format!(
                        "shift {:?} overlaps shift {:?} on {}",
                        second.1.name,
                        first.1.name,
                        DAYS[b
                            .1
                            .start
                            .with_timezone(&self.tz)
                            .weekday()
                            .num_days_from_monday() as usize]
                    ),
                });
            }
        }
        Ok(())
    }

    /// A local date and time as a UTC instant: gaps move forward, repeats take the first.
    fn resolve(&self, date: NaiveDate, time: NaiveTime) -> DateTime<Utc> {
        let naive = NaiveDateTime::new(date, time);
        match self.tz.from_local_datetime(&naive).earliest() {
            Some(t) => t.with_timezone(&Utc),
            None => {
                // In the gap: use the offset in force before it (moves forward by the gap).
                let before = naive - Duration::hours(3);
                let off = self
                    .tz
                    .offset_from_utc_datetime(&before)
                    .fix()
                    .local_minus_utc();
                Utc.from_utc_datetime(&(naive - Duration::seconds(i64::from(off))))
            }
        }
    }

    fn instance(&self, shift: &Shift, date: NaiveDate) -> ShiftInstance {
        let start = self.resolve(date, shift.start);
        // An end at or before the start is on the next day.
        let end_date = if shift.end <= shift.start {
            date + Duration::days(1)
        } else {
            date
        };
        let end = self.resolve(end_date, shift.end);
        let breaks = shift
            .breaks
            .iter()
            .map(|&(bs, be)| {
                let bs_date = if bs >= shift.start {
                    date
                } else {
                    date + Duration::days(1)
                };
                let be_date = if be > bs {
                    bs_date
                } else {
                    bs_date + Duration::days(1)
                };
                (self.resolve(bs_date, bs), self.resolve(be_date, be))
            })
            .collect();
        ShiftInstance {
            name: shift.name.clone(),
            start,
            end,
            breaks,
        }
    }

    /// The shifts that start on a local date (none on a holiday).
    fn instances_starting_on(&self, date: NaiveDate) -> impl Iterator<Item = ShiftInstance> + '_ {
        let holiday = self.holidays.contains(&date);
        let weekday = date.weekday().num_days_from_monday() as usize;
        self.shifts
            .iter()
            .filter(move |s| !holiday && s.days[weekday])
            .map(move |s| self.instance(s, date))
    }

    fn local_date(&self, at: DateTime<Utc>) -> NaiveDate {
        at.with_timezone(&self.tz).date_naive()
    }

    /// The shift that covers `at` (its breaks included), if any.
    pub fn shift_at(&self, at: DateTime<Utc>) -> Option<ShiftInstance> {
        let date = self.local_date(at);
        [date - Duration::days(1), date]
            .into_iter()
            .flat_map(|d| self.instances_starting_on(d))
            .find(|i| i.start <= at && at < i.end)
    }

    /// Is `at` planned production time?
    pub fn is_planned(&self, at: DateTime<Utc>) -> bool {
        self.span_at(at).planned
    }

    /// Everything the calendar says about `at`, and until when it holds.
    pub fn span_at(&self, at: DateTime<Utc>) -> CalendarSpan {
        let shift = self.shift_at(at);
        let holiday = self.holidays.contains(&self.local_date(at));
        let reason = match &shift {
            None => Some("no shift"),
            Some(_) if holiday => Some("holiday"),
            Some(s) if s.breaks.iter().any(|&(a, b)| a <= at && at < b) => Some("break"),
            Some(_) => None,
        };
        CalendarSpan {
            planned: reason.is_none(),
            reason,
            shift,
            until: self.next_boundary_after(at),
        }
    }

    /// The first instant after `at` where planned time or the shift changes
    /// (a shift starts or ends, a break starts or ends, a holiday starts or ends).
    pub fn next_boundary_after(&self, at: DateTime<Utc>) -> Option<DateTime<Utc>> {
        if self.shifts.is_empty() && self.holidays.is_empty() {
            return None;
        }
        let first = self.local_date(at) - Duration::days(1);
        let mut best: Option<DateTime<Utc>> = None;
        let consider = |t: DateTime<Utc>, best: &mut Option<DateTime<Utc>>| {
            if t > at && best.is_none_or(|b| t < b) {
                *best = Some(t);
            }
        };
        for day in 0..SEARCH_DAYS {
            let date = first + Duration::days(day);
            for inst in self.instances_starting_on(date) {
                consider(inst.start, &mut best);
                consider(inst.end, &mut best);
                for (a, b) in &inst.breaks {
                    consider(*a, &mut best);
                    consider(*b, &mut best);
                }
            }
            let next_midnight = self.resolve(date + Duration::days(1), NaiveTime::MIN);
            if self.holidays.contains(&date) || self.holidays.contains(&(date + Duration::days(1)))
            {
                consider(next_midnight, &mut best);
            }
            if let Some(b) = best {
                if b <= next_midnight {
                    return Some(b);
                }
            }
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{BreakConfig, ShiftConfig};

    fn shift(
        name: &str,
        days: &[&str],
        start: &str,
        end: &str,
        breaks: &[(&str, &str)],
    ) -> ShiftConfig {
        ShiftConfig {
            name: name.into(),
            days: days.iter().map(|d| d.to_string()).collect(),
            start: start.into(),
            end: end.into(),
            breaks: breaks
                .iter()
                .map(|(s, e)| BreakConfig {
                    start: s.to_string(),
                    end: e.to_string(),
                })
                .collect(),
        }
    }

    fn cal(
        shifts: Vec<ShiftConfig>,
        holidays: &[&str],
        tz: Tz,
    ) -> Result<ShiftCalendar, ShiftError> {
        ShiftCalendar::from_config(
            &ShiftCalendarConfig {
                shift: shifts,
                holidays: holidays.iter().map(|h| h.to_string()).collect(),
            },
            tz,
        )
    }

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn a_bad_time_names_its_key() {
        let e = cal(
            vec![
                shift("early", &["mon"], "06:00", "14:00", &[]),
                shift("late", &["mon"], "25:00", "22:00", &[]),
            ],
            &[],
            chrono_tz::UTC,
        )
        .unwrap_err();
        assert_eq!(e.key, "shifts.shift[1].start");
        assert!(e.message.contains("25:00 is not HH:MM"), "{}", e.message);
    }

    #[test]
    fn bad_days_holidays_and_breaks_name_their_keys() {
        let e = cal(
            vec![shift("a", &["mon", "mo"], "06:00", "14:00", &[])],
            &[],
            chrono_tz::UTC,
        )
        .unwrap_err();
        assert_eq!(e.key, "shifts.shift[0].days[1]");
        let e = cal(
            vec![shift("a", &["mon"], "06:00", "14:00", &[])],
            &["2026-13-01"],
            chrono_tz::UTC,
        )
        .unwrap_err();
        assert_eq!(e.key, "shifts.holidays[0]");
        let e = cal(
            vec![shift(
                "a",
                &["mon"],
                "06:00",
                "14:00",
                &[("15:00", "15:30")],
            )],
            &[],
            chrono_tz::UTC,
        )
        .unwrap_err();
        assert_eq!(e.key, "shifts.shift[0].break[0].start");
    }

    #[test]
    fn overlapping_shifts_are_refused() {
        let e = cal(
            vec![
                shift("early", &["mon"], "06:00", "14:00", &[]),
                shift("late", &["mon"], "13:00", "22:00", &[]),
            ],
            &[],
            chrono_tz::UTC,
        )
        .unwrap_err();
        assert_eq!(e.key, "shifts.shift[1]");
        assert!(e.message.contains("overlaps"), "{}", e.message);
    }

    #[test]
    fn breaks_and_days_decide_planned_time() {
        // 2026-03-02 is a Monday.
        let c = cal(
            vec![shift(
                "early",
                &["mon"],
                "06:00",
                "14:00",
                &[("10:00", "10:30")],
            )],
            &[],
            chrono_tz::UTC,
        )
        .unwrap();
        assert!(!c.is_planned(utc("2026-03-02T05:59:59Z")));
        assert!(c.is_planned(utc("2026-03-02T06:00:00Z")));
        assert!(!c.is_planned(utc("2026-03-02T10:15:00Z")));
        assert_eq!(c.span_at(utc("2026-03-02T10:15:00Z")).reason, Some("break"));
        assert!(c.is_planned(utc("2026-03-02T10:30:00Z")));
        assert!(!c.is_planned(utc("2026-03-02T14:00:00Z")));
        assert!(
            !c.is_planned(utc("2026-03-03T08:00:00Z")),
            "tuesday has no shift"
        );
        assert_eq!(
            c.next_boundary_after(utc("2026-03-02T06:00:00Z")),
            Some(utc("2026-03-02T10:00:00Z"))
        );
        assert_eq!(
            c.next_boundary_after(utc("2026-03-02T14:00:00Z")),
            Some(utc("2026-03-09T06:00:00Z")),
            "next monday"
        );
        assert_eq!(
            c.shift_at(utc("2026-03-02T07:00:00Z")).unwrap().name,
            "early"
        );
    }

    #[test]
    fn a_night_shift_runs_past_midnight_with_its_break() {
        let c = cal(
            vec![shift(
                "night",
                &["fri"],
                "22:00",
                "06:00",
                &[("02:00", "02:30")],
            )],
            &[],
            chrono_tz::UTC,
        )
        .unwrap();
        // 2026-03-06 is a Friday.
        let s = c.shift_at(utc("2026-03-07T01:00:00Z")).unwrap();
        assert_eq!(s.start, utc("2026-03-06T22:00:00Z"));
        assert_eq!(s.end, utc("2026-03-07T06:00:00Z"));
        assert!(!c.is_planned(utc("2026-03-07T02:10:00Z")));
        assert!(c.is_planned(utc("2026-03-07T05:59:00Z")));
        assert!(
            !c.is_planned(utc("2026-03-07T22:30:00Z")),
            "saturday has no night shift"
        );
    }

    #[test]
    fn a_night_shift_across_the_spring_dst_change_in_berlin_is_an_hour_shorter() {
        // Clocks go forward in Berlin on 2026-03-29 at 02:00 local (01:00 UTC).
        let c = cal(
            vec![shift("night", &["sat"], "22:00", "06:00", &[])],
            &[],
            chrono_tz::Europe::Berlin,
        )
        .unwrap();
        let s = c.shift_at(utc("2026-03-29T00:30:00Z")).unwrap();
        assert_eq!(s.start, utc("2026-03-28T21:00:00Z"), "22:00 CET");
        assert_eq!(s.end, utc("2026-03-29T04:00:00Z"), "06:00 CEST");
        assert_eq!((s.end - s.start).num_hours(), 7);
        assert!(c.is_planned(utc("2026-03-29T03:59:59Z")));
        assert!(!c.is_planned(utc("2026-03-29T04:00:00Z")));
    }

    #[test]
    fn a_night_shift_across_the_autumn_dst_change_in_berlin_is_an_hour_longer() {
        // Clocks go back in Berlin on 2026-10-25 at 03:00 local (01:00 UTC).
        let c = cal(
            vec![shift("night", &["sat"], "22:00", "06:00", &[])],
            &[],
            chrono_tz::Europe::Berlin,
        )
        .unwrap();
        let s = c.shift_at(utc("2026-10-25T01:30:00Z")).unwrap();
        assert_eq!((s.end - s.start).num_hours(), 9);
        assert_eq!(s.end, utc("2026-10-25T05:00:00Z"), "06:00 CET");
    }

    #[test]
    fn a_shift_that_starts_in_the_skipped_hour_moves_forward() {
        let c = cal(
            vec![shift("odd", &["sun"], "02:30", "08:00", &[])],
            &[],
            chrono_tz::Europe::Berlin,
        )
        .unwrap();
        let s = c.shift_at(utc("2026-03-29T05:00:00Z")).unwrap();
        assert_eq!(s.start, utc("2026-03-29T01:30:00Z"), "03:30 CEST");
    }

    #[test]
    fn a_holiday_is_not_planned_and_ends_a_night_shift_at_midnight() {
        let c = cal(
            vec![shift("night", &["thu", "fri"], "22:00", "06:00", &[])],
            &["2026-12-25"],
            chrono_tz::UTC,
        )
        .unwrap();
        // Thu 2026-12-24 22:00 starts; Fri 25 is a holiday from midnight.
        assert!(c.is_planned(utc("2026-12-24T23:00:00Z")));
        assert!(!c.is_planned(utc("2026-12-25T01:00:00Z")));
        assert_eq!(
            c.span_at(utc("2026-12-25T01:00:00Z")).reason,
            Some("holiday")
        );
        assert_eq!(
            c.next_boundary_after(utc("2026-12-24T23:00:00Z")),
            Some(utc("2026-12-25T00:00:00Z"))
        );
        // The friday night shift would start on the holiday: it does not happen.
        assert!(c.shift_at(utc("2026-12-25T23:00:00Z")).is_none());
    }
}
