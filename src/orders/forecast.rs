//! Order completion forecasts: when each open order of a machine will be
//! done, and whether that is after its due (`at_risk`).
//!
//! Pure functions of their inputs: the machine's open orders in release
//! order, what its recently completed orders show about its throughput, the
//! shift calendar and `now`. No I/O, no clock; `outlook` reads the inputs
//! from the store and publishes, the order task calls it.
//!
//! The model, per machine:
//! - **Rate**: seconds of planned time per part (`cycle_s`) and per order
//!   before its first part (`setup_s`, release to running). Measured over the
//!   machine's recently completed orders (planned seconds between release,
//!   start and end; parts made): of this product when the machine has made
//!   it in the window, else of any product. Without history: the order's
//!   `ideal_cycle_s`, else the machine's, and no setup.
//! - **The running order** blends that rate with its own: `(prior_cycle_s *
//!   k + planned seconds since its start - one prior cycle (the part in
//!   progress)) / (k + parts made)`, `k` = 20 % of the quantity, at least 5
//!   parts (the prior is worth that much evidence), so the forecast
//!   converges on the order's own pace, and a stop in planned time moves it
//!   out as it lasts.
//! - **The queue**: orders follow each other in release order from `now`
//!   (the running order first), each taking `setup_s + remaining *
//!   cycle_s` of planned time. Only planned time counts (the calendar): a
//!   forecast made during a planned stop is the same as one made at its
//!   start. A held order is forecast as if resumed now: at its place in
//!   release order, without delaying the orders behind it (it is not
//!   booked).
//! - `at_risk`: the forecast end is after the order's due.

use std::collections::HashMap;

use chrono::{DateTime, Duration, Utc};

use crate::machine::shift::ShiftCalendar;
use crate::orders::book::OrderState;

/// Pseudo-parts the prior rate weighs in a running order's own rate: at
/// least this many, or [`PRIOR_SHARE`] of the order's quantity.
pub const PRIOR_PARTS: f64 = 5.0;
pub const PRIOR_SHARE: f64 = 0.2;
/// Completed orders of a machine that make its measured rate (newest first).
pub const HISTORY_ORDERS: usize = 20;
/// Longest planned time a forecast looks ahead; beyond it there is none.
pub const MAX_AHEAD_DAYS: i64 = 400;

/// Where an order's rate came from (`forecast_basis` on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Basis {
    /// Recent orders of this product on this machine.
    Product,
    /// Recent orders of this machine (another product).
    Machine,
    /// The order's or the machine's ideal cycle time (no history).
    Ideal,
}

impl Basis {
    pub fn as_str(self) -> &'static str {
        match self {
            Basis::Product => "product_history",
            Basis::Machine => "machine_history",
            Basis::Ideal => "ideal_cycle",
        }
    }
}

/// Planned seconds per part and per order start.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub cycle_s: f64,
    pub setup_s: f64,
    pub basis: Basis,
}

/// A completed order of the machine, as history.
#[derive(Debug, Clone, PartialEq)]
pub struct PastOrder {
    pub product: String,
    pub produced: u64,
    pub released_at: DateTime<Utc>,
    pub actual_start: DateTime<Utc>,
    pub actual_end: DateTime<Utc>,
}

/// An open order, as the forecast needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct OpenOrder {
    pub order_id: String,
    pub revision: u32,
    pub product: String,
    pub state: OrderState,
    pub quantity: u64,
    pub produced: u64,
    pub due: Option<DateTime<Utc>>,
    pub ideal_cycle_s: Option<f64>,
    pub released_at: Option<DateTime<Utc>>,
    pub actual_start: Option<DateTime<Utc>>,
}

/// One order's forecast.
#[derive(Debug, Clone, PartialEq)]
pub struct Forecast {
    pub order_id: String,
    pub revision: u32,
    /// `None`: no rate is known (no history, no ideal cycle time) or the
    /// calendar has no planned time within [`MAX_AHEAD_DAYS`].
    pub forecast_end: Option<DateTime<Utc>>,
    pub at_risk: bool,
    pub basis: Option<Basis>,
    /// Planned seconds of work still to do on the order.
    pub work_s: Option<f64>,
}

/// A machine's queue forecast: every open order, and when the booked
/// orders (released, running, queued; not held) are all done.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueForecast {
    pub orders: Vec<Forecast>,
    /// When the queue runs dry: `now` when nothing is booked; `None` when a
    /// booked order has no forecast.
    pub dry_at: Option<DateTime<Utc>>,
    /// Booked orders without a forecast (their time is not in `dry_at`).
    pub unforecast: usize,
}

/// Walks planned time forward through the calendar, keeping the span it is
/// in, so a whole queue costs one pass.
pub struct PlannedClock<'a> {
    calendar: Option<&'a ShiftCalendar>,
    at: DateTime<Utc>,
    /// The calendar span `at` is in: planned or not, and until when.
    span: Option<(bool, Option<DateTime<Utc>>)>,
    limit: DateTime<Utc>,
}

impl<'a> PlannedClock<'a> {
    pub fn new(calendar: Option<&'a ShiftCalendar>, at: DateTime<Utc>) -> Self {
        PlannedClock {
            calendar,
            at,
            span: None,
            limit: at + Duration::days(MAX_AHEAD_DAYS),
        }
    }

    pub fn at(&self) -> DateTime<Utc> {
        self.at
    }

    fn span(&mut self) -> (bool, Option<DateTime<Utc>>) {
        if let Some((planned, until)) = self.span {
            if until.is_none_or(|u| self.at < u) {
                return (planned, until);
            }
        }
        let s = match self.calendar {
            None => (true, None),
            Some(cal) => {
                let span = cal.span_at(self.at);
                (span.planned, span.until)
            }
        };
        self.span = Some(s);
        s
    }

    /// Move on by `secs` of planned time; `None` when the calendar has no
    /// more planned time within the limit.
    pub fn advance(&mut self, secs: f64) -> Option<DateTime<Utc>> {
        let mut left = secs.max(0.0);
        // Every step passes a calendar boundary; a bound keeps a broken
        // calendar from spinning.
        for _ in 0..100_000 {
            if self.at > self.limit {
                return None;
            }
            let (planned, until) = self.span();
            if !planned {
                self.at = until?;
                continue;
            }
            let room = until.map_or(f64::INFINITY, |u| secs_between(self.at, u));
            if left <= room {
                self.at += duration_s(left);
                return Some(self.at);
            }
            left -= room;
            self.at = until?;
        }
        None
    }

    /// The first planned instant at or after the current one (skips a
    /// planned stop).
    pub fn to_planned(&mut self) -> Option<DateTime<Utc>> {
        self.advance(0.0)
    }
}

fn secs_between(a: DateTime<Utc>, b: DateTime<Utc>) -> f64 {
    (b - a).num_milliseconds() as f64 / 1000.0
}

fn duration_s(s: f64) -> Duration {
    Duration::milliseconds((s * 1000.0).round().clamp(0.0, 1e15) as i64)
}

/// Planned seconds between `from` and `to` (0 when `to` is not after `from`).
pub fn planned_seconds(
    calendar: Option<&ShiftCalendar>,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> f64 {
    if to <= from {
        return 0.0;
    }
    let Some(cal) = calendar else {
        return secs_between(from, to);
    };
    let mut at = from;
    let mut total = 0.0;
    for _ in 0..100_000 {
        if at >= to {
            break;
        }
        let span = cal.span_at(at);
        let end = span.until.map_or(to, |u| u.min(to));
        if span.planned {
            total += secs_between(at, end);
        }
        if end <= at {
            break;
        }
        at = end;
    }
    total
}

/// The machine's measured rate for `product` from its completed orders
/// (newest first, already limited to the window), or `None` without history.
pub fn measured_rate(
    calendar: Option<&ShiftCalendar>,
    history: &[PastOrder],
    product: &str,
) -> Option<Rate> {
    let rate_of = |orders: &mut dyn Iterator<Item = &PastOrder>, basis| {
        let (mut run_s, mut setup_s, mut parts, mut n) = (0.0, 0.0, 0u64, 0usize);
        for o in orders.take(HISTORY_ORDERS) {
            if o.produced == 0 {
                continue;
            }
            run_s += planned_seconds(calendar, o.actual_start, o.actual_end);
            setup_s += planned_seconds(calendar, o.released_at, o.actual_start);
            parts += o.produced;
            n += 1;
        }
        (n > 0 && run_s > 0.0).then(|| Rate {
            cycle_s: run_s / parts as f64,
            setup_s: setup_s / n as f64,
            basis,
        })
    };
    rate_of(
        &mut history.iter().filter(|o| o.product == product),
        Basis::Product,
    )
    .or_else(|| rate_of(&mut history.iter(), Basis::Machine))
}

/// The rate an order is forecast with: measured, else the ideal cycle time.
pub fn rate_for(
    calendar: Option<&ShiftCalendar>,
    history: &[PastOrder],
    order: &OpenOrder,
    machine_ideal_cycle_s: Option<f64>,
) -> Option<Rate> {
    measured_rate(calendar, history, &order.product)
        .or_else(|| ideal_rate(order, machine_ideal_cycle_s))
}

/// The order's ideal cycle time, else the machine's, and no setup.
fn ideal_rate(order: &OpenOrder, machine_ideal_cycle_s: Option<f64>) -> Option<Rate> {
    order
        .ideal_cycle_s
        .or(machine_ideal_cycle_s)
        .filter(|c| c.is_finite() && *c > 0.0)
        .map(|cycle_s| Rate {
            cycle_s,
            setup_s: 0.0,
            basis: Basis::Ideal,
        })
}

/// Planned seconds still to work on `order` from `now`, with `rate`.
pub fn work_left(
    calendar: Option<&ShiftCalendar>,
    order: &OpenOrder,
    rate: Rate,
    now: DateTime<Utc>,
) -> f64 {
    let remaining = order.quantity.saturating_sub(order.produced) as f64;
    match (order.state, order.released_at, order.actual_start) {
        (OrderState::Running, _, Some(start)) => {
            // Up to a cycle of the time is spent on the part in progress
            // (and the first part comes a cycle after the start): not
            // evidence of a slower pace.
            let elapsed = (planned_seconds(calendar, start, now) - rate.cycle_s).max(0.0);
            let prior = PRIOR_PARTS.max(order.quantity as f64 * PRIOR_SHARE);
            let cycle = (rate.cycle_s * prior + elapsed) / (prior + order.produced as f64);
            remaining * cycle
        }
        (OrderState::Released | OrderState::Running, Some(released), _) => {
            let setup_done = planned_seconds(calendar, released, now);
            (rate.setup_s - setup_done).max(0.0) + remaining * rate.cycle_s
        }
        _ => rate.setup_s + remaining * rate.cycle_s,
    }
}

/// Forecast every open order of one machine. `orders` in release order:
/// the order on the machine (released/running) first, then queued and held
/// orders by sequence, due, arrival. Final orders are skipped.
pub fn forecast_queue(
    calendar: Option<&ShiftCalendar>,
    history: &[PastOrder],
    orders: &[OpenOrder],
    machine_ideal_cycle_s: Option<f64>,
    now: DateTime<Utc>,
) -> QueueForecast {
    let mut clock = PlannedClock::new(calendar, now);
    // The measured rate per product: history is walked once per product,
    // not once per order (a long queue of few products).
    let mut measured: HashMap<&str, Option<Rate>> = HashMap::new();
    // Once a booked order has no forecast, none after it has one.
    let mut lost = false;
    let mut unforecast = 0;
    let mut out = Vec::with_capacity(orders.len());
    for order in orders {
        if order.state.is_final() {
            continue;
        }
        let booked = order.state != OrderState::Held;
        let rate = measured
            .entry(order.product.as_str())
            .or_insert_with(|| measured_rate(calendar, history, &order.product))
            .or_else(|| ideal_rate(order, machine_ideal_cycle_s));
        let (end, work) = match rate {
            Some(rate) if !lost => {
                let work = work_left(calendar, order, rate, now);
                let end = if booked {
                    clock.advance(work)
                } else {
                    // As if resumed now: after what is booked so far, not booked itself.
                    let mut probe = PlannedClock::new(calendar, clock.at());
                    probe.advance(work)
                };
                (end, Some(work))
            }
            _ => (None, None),
        };
        if booked && end.is_none() {
            lost = true;
            unforecast += 1;
        }
        out.push(Forecast {
            order_id: order.order_id.clone(),
            revision: order.revision,
            forecast_end: end,
            at_risk: matches!((end, order.due), (Some(e), Some(d)) if e > d),
            basis: rate.map(|r| r.basis),
            work_s: work,
        });
    }
    QueueForecast {
        orders: out,
        dry_at: (!lost).then(|| clock.at()),
        unforecast,
    }
}

/// Is `now` less than `bound` after `at`? A clock stepped back before `at`
/// is not: forecasts must not freeze until the clock catches up.
pub fn within(at: DateTime<Utc>, now: DateTime<Utc>, bound: Duration) -> bool {
    let since = now - at;
    since >= Duration::zero() && since < bound
}

/// When a forecast is published again.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PublishRule {
    /// A move by more than this many seconds is news.
    pub move_s: f64,
    /// A move by more than this share (percent) of the time from now to the
    /// forecast last published is news too (0: off).
    pub move_pct: f64,
    /// Least time between two forecasts of one order.
    pub min_interval: Duration,
}

/// What was last published for an order.
#[derive(Debug, Clone, PartialEq)]
pub struct Published {
    pub forecast_end: Option<DateTime<Utc>>,
    pub at_risk: bool,
    pub at: DateTime<Utc>,
}

/// Publish `new` now? The first forecast with an end, a change of risk, a
/// forecast appearing or vanishing, or a move beyond the rule; never twice within
/// `min_interval`.
pub fn should_publish(
    last: Option<&Published>,
    new: &Forecast,
    rule: &PublishRule,
    now: DateTime<Utc>,
) -> bool {
    let Some(last) = last else {
        // A first forecast without an end says nothing.
        return new.forecast_end.is_some();
    };
    if within(last.at, now, rule.min_interval) {
        return false;
    }
    if last.at_risk != new.at_risk {
        return true;
    }
    match (last.forecast_end, new.forecast_end) {
        (None, None) => false,
        (Some(_), None) | (None, Some(_)) => true,
        (Some(old), Some(end)) => {
            let moved = secs_between(old, end).abs();
            let ahead = secs_between(now, old).max(0.0);
            moved > rule.move_s || (rule.move_pct > 0.0 && moved > ahead * rule.move_pct / 100.0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ShiftCalendarConfig, ShiftConfig};

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    /// 06:00-14:00 every day, UTC.
    fn early_shift() -> ShiftCalendar {
        let cfg = ShiftCalendarConfig {
            shift: vec![ShiftConfig {
                name: "early".into(),
                days: ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
                    .iter()
                    .map(|d| d.to_string())
                    .collect(),
                start: "06:00".into(),
                end: "14:00".into(),
                breaks: vec![],
            }],
            holidays: vec![],
        };
        ShiftCalendar::from_config(&cfg, chrono_tz::UTC).unwrap_or_else(|e| panic!("{e}"))
    }

    fn queued(id: &str, quantity: u64, due: Option<&str>) -> OpenOrder {
        OpenOrder {
            order_id: id.into(),
            revision: 1,
            product: "P-1".into(),
            state: OrderState::Queued,
            quantity,
            produced: 0,
            due: due.map(utc),
            ideal_cycle_s: Some(10.0),
            released_at: None,
            actual_start: None,
        }
    }

    fn past(product: &str, produced: u64, released: &str, start: &str, end: &str) -> PastOrder {
        PastOrder {
            product: product.into(),
            produced,
            released_at: utc(released),
            actual_start: utc(start),
            actual_end: utc(end),
        }
    }

    #[test]
    fn without_history_orders_follow_each_other_at_the_ideal_cycle_time() {
        let now = utc("2026-12-01T08:00:00Z");
        let q = forecast_queue(
            None,
            &[],
            &[queued("A", 6, None), queued("B", 3, None)],
            None,
            now,
        );
        assert_eq!(q.orders[0].forecast_end, Some(utc("2026-12-01T08:01:00Z")));
        assert_eq!(q.orders[1].forecast_end, Some(utc("2026-12-01T08:01:30Z")));
        assert_eq!(q.orders[0].basis, Some(Basis::Ideal));
        assert_eq!(q.dry_at, Some(utc("2026-12-01T08:01:30Z")));
    }

    #[test]
    fn no_production_outside_planned_time() {
        // 13:50 + 20 min of work: 10 min today, 10 min from 06:00 tomorrow.
        let cal = early_shift();
        let now = utc("2026-12-01T13:50:00Z");
        let q = forecast_queue(Some(&cal), &[], &[queued("A", 120, None)], None, now);
        assert_eq!(q.orders[0].forecast_end, Some(utc("2026-12-02T06:10:00Z")));
    }

    #[test]
    fn a_forecast_made_during_a_planned_stop_does_not_move_as_time_passes() {
        let cal = early_shift();
        let orders = [queued("A", 120, Some("2026-12-02T07:00:00Z"))];
        let at_stop_start =
            forecast_queue(Some(&cal), &[], &orders, None, utc("2026-12-01T14:00:00Z"));
        let at_night = forecast_queue(Some(&cal), &[], &orders, None, utc("2026-12-02T02:17:00Z"));
        assert_eq!(at_stop_start.orders, at_night.orders);
        assert_eq!(
            at_night.orders[0].forecast_end,
            Some(utc("2026-12-02T06:20:00Z"))
        );
        assert!(!at_night.orders[0].at_risk);
    }

    #[test]
    fn history_of_the_same_product_wins_over_the_machine_and_the_ideal() {
        let history = [
            // P-1: 10 parts in 200 s after a 60 s setup.
            past(
                "P-1",
                10,
                "2026-12-01T07:00:00Z",
                "2026-12-01T07:01:00Z",
                "2026-12-01T07:04:20Z",
            ),
            // P-2: 10 parts in 100 s.
            past(
                "P-2",
                10,
                "2026-12-01T07:10:00Z",
                "2026-12-01T07:10:00Z",
                "2026-12-01T07:11:40Z",
            ),
        ];
        let order = queued("A", 5, None);
        let rate = rate_for(None, &history, &order, Some(1.0)).unwrap_or_else(|| panic!("rate"));
        assert_eq!(rate.basis, Basis::Product);
        assert!((rate.cycle_s - 20.0).abs() < 1e-9);
        assert!((rate.setup_s - 60.0).abs() < 1e-9);
        let mut other = order.clone();
        other.product = "P-3".into();
        let rate = rate_for(None, &history, &other, None).unwrap_or_else(|| panic!("rate"));
        assert_eq!(rate.basis, Basis::Machine);
        assert!((rate.cycle_s - 15.0).abs() < 1e-9);
        assert!((rate.setup_s - 30.0).abs() < 1e-9);
    }

    #[test]
    fn measured_time_counts_only_planned_seconds() {
        // Started 13:55, ended 06:05 next day: 10 planned minutes for 60 parts.
        let cal = early_shift();
        let history = [past(
            "P-1",
            60,
            "2026-12-01T13:55:00Z",
            "2026-12-01T13:55:00Z",
            "2026-12-02T06:05:00Z",
        )];
        let rate = measured_rate(Some(&cal), &history, "P-1").unwrap_or_else(|| panic!("rate"));
        assert!((rate.cycle_s - 10.0).abs() < 1e-9, "{rate:?}");
    }

    #[test]
    fn a_running_order_converges_on_its_own_pace() {
        // Prior 10 s/part; the order really makes a part every 20 s.
        let start = utc("2026-12-01T08:00:00Z");
        let mut o = queued("A", 100, None);
        o.state = OrderState::Running;
        o.released_at = Some(start);
        o.actual_start = Some(start);
        let truth_end = start + Duration::seconds(2000);
        let mut errors = Vec::new();
        for made in [0u64, 10, 50, 90] {
            o.produced = made;
            let now = start + Duration::seconds(20 * made as i64);
            let q = forecast_queue(None, &[], std::slice::from_ref(&o), None, now);
            let end = q.orders[0]
                .forecast_end
                .unwrap_or_else(|| panic!("forecast"));
            errors.push((end - truth_end).num_seconds().abs());
        }
        assert!(errors.windows(2).all(|w| w[1] <= w[0]), "{errors:?}");
        assert!(errors[3] < 20, "{errors:?}");
    }

    #[test]
    fn a_long_stop_makes_the_order_at_risk_before_its_due() {
        // 20 parts at 10 s from 08:00, due 08:05; a stop after 10 parts at 08:01:40.
        let start = utc("2026-12-01T08:00:00Z");
        let mut o = queued("A", 20, Some("2026-12-01T08:05:00Z"));
        o.state = OrderState::Running;
        o.released_at = Some(start);
        o.actual_start = Some(start);
        o.produced = 10;
        let at = |s: &str| forecast_queue(None, &[], std::slice::from_ref(&o), None, utc(s));
        assert!(!at("2026-12-01T08:01:40Z").orders[0].at_risk);
        let during_stop = at("2026-12-01T08:03:00Z");
        assert!(during_stop.orders[0].at_risk, "{during_stop:?}");
    }

    #[test]
    fn a_held_order_is_forecast_as_if_resumed_but_delays_nobody() {
        let now = utc("2026-12-01T08:00:00Z");
        let mut held = queued("H", 6, None);
        held.state = OrderState::Held;
        let q = forecast_queue(
            None,
            &[],
            &[queued("A", 6, None), held, queued("B", 6, None)],
            None,
            now,
        );
        assert_eq!(q.orders[1].forecast_end, Some(utc("2026-12-01T08:02:00Z")));
        assert_eq!(q.orders[2].forecast_end, Some(utc("2026-12-01T08:02:00Z")));
        assert_eq!(q.dry_at, Some(utc("2026-12-01T08:02:00Z")));
    }

    #[test]
    fn an_order_without_any_rate_has_no_forecast_and_neither_has_what_follows() {
        let now = utc("2026-12-01T08:00:00Z");
        let mut blind = queued("X", 6, None);
        blind.ideal_cycle_s = None;
        let q = forecast_queue(None, &[], &[blind, queued("B", 6, None)], None, now);
        assert_eq!(q.orders[0].forecast_end, None);
        assert_eq!(q.orders[1].forecast_end, None);
        assert_eq!(q.dry_at, None);
        assert_eq!(q.unforecast, 2);
    }

    #[test]
    fn publishing_follows_the_thresholds_and_the_bound() {
        let rule = PublishRule {
            move_s: 120.0,
            move_pct: 5.0,
            min_interval: Duration::seconds(30),
        };
        let now = utc("2026-12-01T08:00:00Z");
        let last = Published {
            forecast_end: Some(utc("2026-12-01T12:00:00Z")),
            at_risk: false,
            at: now - Duration::seconds(60),
        };
        let f = |end: &str, at_risk| Forecast {
            order_id: "A".into(),
            revision: 1,
            forecast_end: Some(utc(end)),
            at_risk,
            basis: Some(Basis::Ideal),
            work_s: None,
        };
        assert!(should_publish(
            None,
            &f("2026-12-01T12:00:00Z", false),
            &rule,
            now
        ));
        let blind = Forecast {
            forecast_end: None,
            basis: None,
            ..f("2026-12-01T12:00:00Z", false)
        };
        assert!(!should_publish(None, &blind, &rule, now), "nothing to say");
        assert!(
            should_publish(Some(&last), &blind, &rule, now),
            "the forecast is gone"
        );
        // 60 s move, 4 h ahead: neither 120 s nor 5 % (12 min).
        assert!(!should_publish(
            Some(&last),
            &f("2026-12-01T12:01:00Z", false),
            &rule,
            now
        ));
        assert!(should_publish(
            Some(&last),
            &f("2026-12-01T12:02:01Z", false),
            &rule,
            now
        ));
        assert!(should_publish(
            Some(&last),
            &f("2026-12-01T12:00:00Z", true),
            &rule,
            now
        ));
        // Near the end 5 % is the tighter: 10 s on 100 s ahead.
        let near = Published {
            forecast_end: Some(utc("2026-12-01T08:01:40Z")),
            ..last.clone()
        };
        assert!(should_publish(
            Some(&near),
            &f("2026-12-01T08:01:46Z", false),
            &rule,
            now
        ));
        assert!(!should_publish(
            Some(&near),
            &f("2026-12-01T08:01:44Z", false),
            &rule,
            now
        ));
        // Never within the bound, not even for a change of risk.
        let recent = Published {
            at: now - Duration::seconds(10),
            ..last
        };
        let stepped_back = Published {
            at: now + Duration::hours(2),
            ..recent.clone()
        };
        assert!(
            should_publish(
                Some(&stepped_back),
                &f("2026-12-01T15:00:00Z", true),
                &rule,
                now
            ),
            "a clock stepped back does not freeze forecasts"
        );
        assert!(!should_publish(
            Some(&recent),
            &f("2026-12-01T15:00:00Z", true),
            &rule,
            now
        ));
    }
}
