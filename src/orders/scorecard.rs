//! The delivery scorecard: how many orders were due in a shift or a day, how
//! many were completed on time, late, in full, and by how much they were
//! late, per machine and for the whole gateway. Pure: the periods come from
//! the shift calendar and the site's time zone, the orders from the book;
//! nothing here reads a clock, the store or the network.
//!
//! The rules (docs/orders.md, "Delivery scorecard"):
//! - An order counts in the period that holds its `due` (`[start, end)`):
//!   the local calendar day of the site's time zone, and the shift instance
//!   of the calendar whose span (breaks included) holds it. A due outside
//!   every shift counts in its day only.
//! - Only the latest revision counts (replaced revisions are not orders any
//!   more) and cancelled orders do not count (the planner withdrew them).
//!   Aborted, held and open orders count as due and not completed.
//! - Completed on time: completed at or before its due. Late: after it.
//!   In full: completed with good parts ≥ the quantity.
//!   On time in full: both.
//! - `lateness_s`: the sum over the orders completed late of
//!   (completed − due) in seconds; mean lateness = `lateness_s /
//!   completed_late`. The rate and the mean are `None` when their
//!   denominator is zero; the counts are published so that receivers add
//!   numerators and denominators across periods and gateways.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Duration, NaiveDate, NaiveTime, TimeZone, Utc};
use chrono_tz::Tz;

use crate::machine::shift::ShiftCalendar;
use crate::orders::book::{OrderRow, OrderState};

/// What kind of stretch of time a card covers.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PeriodKind {
    /// One shift instance of the calendar, by name.
    Shift { name: String },
    /// One local calendar day of the site.
    Day { date: NaiveDate },
}

impl PeriodKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            PeriodKind::Shift { .. } => "shift",
            PeriodKind::Day { .. } => "day",
        }
    }
}

/// A shift or a day, `[start, end)` in UTC.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Period {
    pub kind: PeriodKind,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

impl Period {
    pub fn holds(&self, t: DateTime<Utc>) -> bool {
        self.start <= t && t < self.end
    }
}

/// Whom a card is about.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    Machine(String),
    Gateway,
}

/// One order as the scorecard sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct DueOrder {
    pub machine: String,
    pub quantity: u64,
    pub good: u64,
    pub due: DateTime<Utc>,
    /// When it completed; `None` while it is not completed (open, held, aborted).
    pub completed_at: Option<DateTime<Utc>>,
}

impl DueOrder {
    /// The order as the scorecard counts it, or `None` when it does not
    /// count: no due, cancelled, or replaced by a higher revision.
    pub fn from_row(row: &OrderRow) -> Option<DueOrder> {
        DueOrder::counted(
            &row.machine,
            u64::from(row.quantity),
            row.progress.good,
            row.due?,
            row.state,
            row.superseded,
            row.actual_end,
        )
    }

    /// The same rule on the book's columns (the store reads only these).
    pub fn counted(
        machine: &str,
        quantity: u64,
        good: u64,
        due: DateTime<Utc>,
        state: OrderState,
        superseded: bool,
        actual_end: Option<DateTime<Utc>>,
    ) -> Option<DueOrder> {
        if superseded || state == OrderState::Cancelled {
            return None;
        }
        Some(DueOrder {
            machine: machine.to_owned(),
            quantity,
            good,
            due,
            completed_at: if state == OrderState::Completed {
                // A completed order without an end (never written so) counts at its due.
                Some(actual_end.unwrap_or(due))
            } else {
                None
            },
        })
    }
}

/// The numerators and denominators of one card.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Tally {
    pub due: u64,
    pub completed_on_time: u64,
    pub completed_late: u64,
    pub in_full: u64,
    pub on_time_in_full: u64,
    /// Sum of (completed − due) over the orders completed late, seconds.
    pub lateness_s: f64,
}

impl Tally {
    pub fn add(&mut self, o: &DueOrder) {
        self.due += 1;
        let Some(done) = o.completed_at else {
            return;
        };
        let on_time = done <= o.due;
        let in_full = o.good >= o.quantity;
        if on_time {
            self.completed_on_time += 1;
        } else {
            self.completed_late += 1;
            self.lateness_s += (done - o.due).num_milliseconds() as f64 / 1000.0;
        }
        if in_full {
            self.in_full += 1;
        }
        if on_time && in_full {
            self.on_time_in_full += 1;
        }
    }

    /// Due orders not completed (yet): open, held or aborted.
    pub fn not_completed(&self) -> u64 {
        self.due - self.completed_on_time - self.completed_late
    }

    /// On time in full / due.
    pub fn on_time_in_full_rate(&self) -> Option<f64> {
        (self.due > 0).then(|| self.on_time_in_full as f64 / self.due as f64)
    }

    /// Lateness per order completed late, seconds.
    pub fn mean_lateness_s(&self) -> Option<f64> {
        (self.completed_late > 0).then(|| self.lateness_s / self.completed_late as f64)
    }
}

/// One scorecard: a scope, a period and its tally.
#[derive(Debug, Clone, PartialEq)]
pub struct Card {
    pub scope: Scope,
    pub period: Period,
    pub tally: Tally,
}

/// Local midnight of `date`; where a clock change skips midnight, the first
/// instant of the day that exists.
fn local_midnight(tz: Tz, date: NaiveDate) -> DateTime<Utc> {
    for minutes in (0..=180).step_by(15) {
        let t = date.and_time(NaiveTime::MIN) + Duration::minutes(minutes);
        if let Some(t) = tz.from_local_datetime(&t).earliest() {
            return t.with_timezone(&Utc);
        }
    }
    // No zone skips three hours at midnight; UTC midnight keeps the day whole.
    Utc.from_utc_datetime(&date.and_time(NaiveTime::MIN))
}

/// The local days of `tz` that overlap `[from, to)`, in order.
pub fn days(tz: Tz, from: DateTime<Utc>, to: DateTime<Utc>) -> Vec<Period> {
    let mut out = Vec::new();
    let mut date = from.with_timezone(&tz).date_naive();
    while out.len() < 100_000 {
        let start = local_midnight(tz, date);
        let Some(next) = date.succ_opt() else { break };
        let end = local_midnight(tz, next);
        if start >= to {
            break;
        }
        if end > from {
            out.push(Period {
                kind: PeriodKind::Day { date },
                start,
                end,
            });
        }
        date = next;
    }
    out
}

/// The shift instances of the calendar that overlap `[from, to)`, in order.
pub fn shifts(calendar: &ShiftCalendar, from: DateTime<Utc>, to: DateTime<Utc>) -> Vec<Period> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    let mut at = from;
    for _ in 0..1_000_000 {
        let span = calendar.span_at(at);
        if let Some(s) = span.shift {
            if s.end > from && s.start < to && seen.insert((s.start, s.name.clone())) {
                out.push(Period {
                    kind: PeriodKind::Shift { name: s.name },
                    start: s.start,
                    end: s.end,
                });
            }
        }
        match span.until {
            Some(next) if next < to && next > at => at = next,
            _ => break,
        }
    }
    out
}

/// Every period (shifts, then days) that overlaps `[from, to)`.
pub fn periods(
    calendar: Option<&ShiftCalendar>,
    tz: Tz,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Vec<Period> {
    let mut out = calendar.map(|c| shifts(c, from, to)).unwrap_or_default();
    out.extend(days(tz, from, to));
    out
}

/// The cards of `periods`: one per machine with an order due in the period,
/// and one for the gateway for every period (zero due says nothing was due).
pub fn cards(periods: &[Period], orders: &[DueOrder]) -> Vec<Card> {
    let mut out = Vec::new();
    for p in periods {
        let mut gateway = Tally::default();
        let mut machines: BTreeMap<&str, Tally> = BTreeMap::new();
        for o in orders.iter().filter(|o| p.holds(o.due)) {
            gateway.add(o);
            machines.entry(o.machine.as_str()).or_default().add(o);
        }
        for (m, tally) in machines {
            out.push(Card {
                scope: Scope::Machine(m.to_owned()),
                period: p.clone(),
                tally,
            });
        }
        out.push(Card {
            scope: Scope::Gateway,
            period: p.clone(),
            tally: gateway,
        });
    }
    out
}

/// What identifies a card across publications.
pub type CardKey = (Scope, Period);

/// The cards to publish: those never sent, and those whose tally differs
/// from the one last sent, each with its revision (1 for the first).
pub fn to_publish(cards: Vec<Card>, sent: &BTreeMap<CardKey, (Tally, u32)>) -> Vec<(Card, u32)> {
    cards
        .into_iter()
        .filter_map(|c| match sent.get(&(c.scope.clone(), c.period.clone())) {
            None => Some((c, 1)),
            Some((t, _)) if *t == c.tally => None,
            Some((_, rev)) => Some((c, rev.saturating_add(1))),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{BreakConfig, ShiftCalendarConfig, ShiftConfig};

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn order(machine: &str, qty: u64, good: u64, due: &str, done: Option<&str>) -> DueOrder {
        DueOrder {
            machine: machine.into(),
            quantity: qty,
            good,
            due: t(due),
            completed_at: done.map(t),
        }
    }

    /// Early 06:00-14:00 (break 10:00-10:30), late 14:00-22:00, Mon-Fri, Berlin.
    fn calendar() -> ShiftCalendar {
        let shift = |name: &str, start: &str, end: &str, breaks: Vec<BreakConfig>| ShiftConfig {
            name: name.into(),
            days: ["mon", "tue", "wed", "thu", "fri"]
                .iter()
                .map(|d| d.to_string())
                .collect(),
            start: start.into(),
            end: end.into(),
            breaks,
        };
        let cfg = ShiftCalendarConfig {
            shift: vec![
                shift(
                    "early",
                    "06:00",
                    "14:00",
                    vec![BreakConfig {
                        start: "10:00".into(),
                        end: "10:30".into(),
                    }],
                ),
                shift("late", "14:00", "22:00", vec![]),
            ],
            holidays: vec![],
        };
        match ShiftCalendar::from_config(&cfg, chrono_tz::Europe::Berlin) {
            Ok(c) => c,
            Err(e) => panic!("calendar: {e}"),
        }
    }

    fn find<'a>(cards: &'a [Card], scope: &Scope, kind: &str, start: &str) -> &'a Tally {
        cards
            .iter()
            .find(|c| {
                &c.scope == scope && c.period.kind.as_str() == kind && c.period.start == t(start)
            })
            .map(|c| &c.tally)
            .unwrap_or_else(|| panic!("no {kind} card for {scope:?} starting {start}"))
    }

    #[test]
    fn a_scripted_day_gives_the_hand_counted_scorecard() {
        // Thursday 2026-11-26 in Berlin (UTC+1): early = 05:00Z-13:00Z, late = 13:00Z-21:00Z.
        let orders = vec![
            // press07, early: on time in full; on time short (good 9 of 10);
            // late by 30 min in full; not completed.
            order(
                "press07",
                10,
                10,
                "2026-11-26T08:00:00Z",
                Some("2026-11-26T07:59:00Z"),
            ),
            order(
                "press07",
                10,
                9,
                "2026-11-26T09:00:00Z",
                Some("2026-11-26T09:00:00Z"),
            ),
            order(
                "press07",
                5,
                5,
                "2026-11-26T12:00:00Z",
                Some("2026-11-26T12:30:00Z"),
            ),
            order("press07", 5, 0, "2026-11-26T12:59:59.999Z", None),
            // saw02, early, due in the break: late by 2 h, short.
            order(
                "saw02",
                4,
                3,
                "2026-11-26T09:15:00Z",
                Some("2026-11-26T11:15:00Z"),
            ),
            // saw02, late shift: on time in full.
            order(
                "saw02",
                4,
                4,
                "2026-11-26T13:00:00Z",
                Some("2026-11-26T12:00:00Z"),
            ),
            // press07 at 22:30 local (21:30Z): after the late shift, still Thursday.
            order(
                "press07",
                1,
                1,
                "2026-11-26T21:30:00Z",
                Some("2026-11-26T21:29:00Z"),
            ),
            // Friday 00:30 local (Thu 23:30Z): the next day.
            order(
                "press07",
                1,
                1,
                "2026-11-26T23:30:00Z",
                Some("2026-11-26T20:00:00Z"),
            ),
        ];
        let cal = calendar();
        let ps = periods(
            Some(&cal),
            cal.tz,
            t("2026-11-25T23:00:00Z"),
            t("2026-11-26T23:00:00Z"),
        );
        let cards = cards(&ps, &orders);
        let press = Scope::Machine("press07".into());
        let saw = Scope::Machine("saw02".into());

        let early_press = find(&cards, &press, "shift", "2026-11-26T05:00:00Z");
        assert_eq!(early_press.due, 4);
        assert_eq!(early_press.completed_on_time, 2);
        assert_eq!(early_press.completed_late, 1);
        assert_eq!(early_press.in_full, 2);
        assert_eq!(early_press.on_time_in_full, 1);
        assert_eq!(early_press.not_completed(), 1);
        assert_eq!(early_press.lateness_s, 1800.0);
        assert_eq!(early_press.on_time_in_full_rate(), Some(0.25));
        assert_eq!(early_press.mean_lateness_s(), Some(1800.0));

        let early_saw = find(&cards, &saw, "shift", "2026-11-26T05:00:00Z");
        assert_eq!(
            (early_saw.due, early_saw.completed_late, early_saw.in_full),
            (1, 1, 0)
        );
        assert_eq!(early_saw.lateness_s, 7200.0);
        assert_eq!(early_saw.on_time_in_full_rate(), Some(0.0));

        let early = find(&cards, &Scope::Gateway, "shift", "2026-11-26T05:00:00Z");
        assert_eq!(early.due, 5);
        assert_eq!(early.completed_on_time, 2);
        assert_eq!(early.completed_late, 2);
        assert_eq!(early.in_full, 2);
        assert_eq!(early.on_time_in_full, 1);
        assert_eq!(early.lateness_s, 9000.0);
        assert_eq!(early.mean_lateness_s(), Some(4500.0));

        let late = find(&cards, &Scope::Gateway, "shift", "2026-11-26T13:00:00Z");
        assert_eq!((late.due, late.on_time_in_full), (1, 1));
        // press07 had nothing due in the late shift: no card of its own.
        assert!(!cards.iter().any(|c| c.scope == press
            && c.period.kind.as_str() == "shift"
            && c.period.start == t("2026-11-26T13:00:00Z")));

        // The day (local midnight to midnight) holds every order but Friday's.
        let day = find(&cards, &Scope::Gateway, "day", "2026-11-25T23:00:00Z");
        assert_eq!(day.due, 7);
        assert_eq!(day.completed_on_time, 4);
        assert_eq!(day.completed_late, 2);
        assert_eq!(day.in_full, 4);
        assert_eq!(day.on_time_in_full, 3);
        assert_eq!(day.not_completed(), 1);
        let day_press = find(&cards, &press, "day", "2026-11-25T23:00:00Z");
        assert_eq!((day_press.due, day_press.on_time_in_full), (5, 2));
        // The two shifts and the day; Friday starts at `to`, so it is not in.
        assert_eq!(ps.len(), 3, "{ps:?}");
    }

    #[test]
    fn a_gateway_card_says_nothing_was_due() {
        let ps = days(
            chrono_tz::UTC,
            t("2026-11-26T00:00:00Z"),
            t("2026-11-26T01:00:00Z"),
        );
        let cards = cards(&ps, &[]);
        assert_eq!(cards.len(), 1);
        assert_eq!(cards[0].scope, Scope::Gateway);
        assert_eq!(cards[0].tally.due, 0);
        assert_eq!(cards[0].tally.on_time_in_full_rate(), None);
        assert_eq!(cards[0].tally.mean_lateness_s(), None);
    }

    #[test]
    fn days_follow_the_site_time_zone_across_a_clock_change() {
        // Berlin goes back on Sunday 2026-10-25: that day has 25 hours.
        let ps = days(
            chrono_tz::Europe::Berlin,
            t("2026-10-24T12:00:00Z"),
            t("2026-10-26T12:00:00Z"),
        );
        let spans: Vec<(DateTime<Utc>, i64)> = ps
            .iter()
            .map(|p| (p.start, (p.end - p.start).num_hours()))
            .collect();
        assert_eq!(
            spans,
            vec![
                (t("2026-10-23T22:00:00Z"), 24),
                (t("2026-10-24T22:00:00Z"), 25),
                (t("2026-10-25T23:00:00Z"), 24),
            ]
        );
    }

    #[test]
    fn shifts_are_the_calendars_instances_and_skip_the_weekend() {
        let cal = calendar();
        // Friday 2026-11-27 00:00Z to Monday 2026-11-30 12:00Z.
        let ps = shifts(&cal, t("2026-11-27T00:00:00Z"), t("2026-11-30T12:00:00Z"));
        let got: Vec<(String, DateTime<Utc>, DateTime<Utc>)> = ps
            .iter()
            .map(|p| match &p.kind {
                PeriodKind::Shift { name } => (name.clone(), p.start, p.end),
                PeriodKind::Day { .. } => panic!("a day among shifts"),
            })
            .collect();
        assert_eq!(
            got,
            vec![
                (
                    "early".into(),
                    t("2026-11-27T05:00:00Z"),
                    t("2026-11-27T13:00:00Z")
                ),
                (
                    "late".into(),
                    t("2026-11-27T13:00:00Z"),
                    t("2026-11-27T21:00:00Z")
                ),
                (
                    "early".into(),
                    t("2026-11-30T05:00:00Z"),
                    t("2026-11-30T13:00:00Z")
                ),
            ]
        );
    }

    #[test]
    fn a_card_is_published_once_and_again_only_when_it_changes() {
        let ps = days(
            chrono_tz::UTC,
            t("2026-11-26T00:00:00Z"),
            t("2026-11-26T01:00:00Z"),
        );
        let mut orders = vec![order("m1", 2, 0, "2026-11-26T10:00:00Z", None)];
        let first = to_publish(cards(&ps, &orders), &BTreeMap::new());
        assert_eq!(first.len(), 2);
        assert!(first.iter().all(|(_, rev)| *rev == 1));
        let sent: BTreeMap<CardKey, (Tally, u32)> = first
            .iter()
            .map(|(c, r)| ((c.scope.clone(), c.period.clone()), (c.tally, *r)))
            .collect();
        assert!(to_publish(cards(&ps, &orders), &sent).is_empty());
        // The order completes late, the next day: both cards change.
        orders[0].completed_at = Some(t("2026-11-27T08:00:00Z"));
        orders[0].good = 2;
        let again = to_publish(cards(&ps, &orders), &sent);
        assert_eq!(again.len(), 2);
        assert!(again.iter().all(|(c, rev)| *rev == 2
            && c.tally.completed_late == 1
            && c.tally.lateness_s == 22.0 * 3600.0));
    }

    #[test]
    fn cancelled_and_replaced_orders_do_not_count() {
        use crate::orders::book::Counts;
        let row = OrderRow {
            order_id: "WO-1".into(),
            revision: 1,
            arrival: 1,
            machine: "m1".into(),
            product: "P".into(),
            quantity: 3,
            due: Some(t("2026-11-26T10:00:00Z")),
            sequence: None,
            plan_id: None,
            plan_pos: None,
            ideal_cycle_s: None,
            params: BTreeMap::new(),
            state: OrderState::Completed,
            reason: None,
            superseded: false,
            progress: Counts {
                produced: 3,
                good: 3,
                scrap: 0,
            },
            done: Counts::default(),
            base: None,
            released_at: None,
            actual_start: None,
            actual_end: Some(t("2026-11-26T09:00:00Z")),
            started_rank: None,
            late_reported: false,
            reported_at: None,
        };
        let o = DueOrder::from_row(&row);
        assert_eq!(
            o.map(|o| (o.good, o.completed_at)),
            Some((3, Some(t("2026-11-26T09:00:00Z"))))
        );
        let cancelled = OrderRow {
            state: OrderState::Cancelled,
            ..row.clone()
        };
        assert_eq!(DueOrder::from_row(&cancelled), None);
        let replaced = OrderRow {
            superseded: true,
            ..row.clone()
        };
        assert_eq!(DueOrder::from_row(&replaced), None);
        let held = OrderRow {
            state: OrderState::Held,
            ..row.clone()
        };
        assert_eq!(DueOrder::from_row(&held).and_then(|o| o.completed_at), None);
        let no_due = OrderRow { due: None, ..row };
        assert_eq!(DueOrder::from_row(&no_due), None);
    }
}
