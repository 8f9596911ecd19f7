//! Order forecasts: error against the simulator's order runs, and CPU cost.
//!
//! `cargo bench --bench forecast` (or `cargo run --release --bench forecast`):
//!
//! 1. **Error.** For 200 seeds, sim01 (6 s cycle) runs 10 orders back to
//!    back, each as the simulator's own `OrderPlan` says (a setup of
//!    20-90 s, and with 40 % chance one alarm stop of 5-60 s): "random
//!    stops". "Steady" is the same runs with the stops left out. Each order
//!    is forecast at its release and when half of it is made, from the
//!    completed orders before it (the first from the machine's ideal cycle
//!    time, 5.4 s, as configs/demo.toml states it), and compared with its
//!    true end. This is the forecast model against the simulator's
//!    timeline, without the agent's polling latency (tests/orders_forecast.rs
//!    checks the whole path, agent and Modbus included).
//! 2. **CPU.** One machine's queue of 1000 orders forecast at once, with
//!    20 orders of history, without a calendar and with three shifts and
//!    breaks; and its capacity over 24 h.

use std::time::Instant;

use chrono::{DateTime, Duration, Utc};
use linegate::config::{BreakConfig, ShiftCalendarConfig, ShiftConfig};
use linegate::machine::shift::ShiftCalendar;
use linegate::orders::book::OrderState;
use linegate::orders::capacity;
use linegate::orders::forecast::{forecast_queue, OpenOrder, PastOrder};
use linegate::sim::schedule::{MachineProfile, OrderPlan};

fn t0() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-12-01T06:00:00Z")
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or_else(|_| Utc::now())
}

fn ms(s: f64) -> Duration {
    Duration::milliseconds((s * 1000.0).round() as i64)
}

/// One order's run as the simulator makes it: times from its release.
struct Run {
    quantity: u64,
    setup_s: f64,
    /// The stop: after this many parts, this long.
    stop: Option<(u64, f64)>,
}

impl Run {
    fn duration_s(&self, cycle: f64) -> f64 {
        self.setup_s + self.quantity as f64 * cycle + self.stop.map_or(0.0, |s| s.1)
    }
    /// Seconds after the release when `parts` are made.
    fn made_at(&self, parts: u64, cycle: f64) -> f64 {
        let stopped = self.stop.filter(|s| s.0 < parts).map_or(0.0, |s| s.1);
        self.setup_s + parts as f64 * cycle + stopped
    }
}

fn open(id: usize, q: u64, state: OrderState, ideal: f64) -> OpenOrder {
    OpenOrder {
        order_id: format!("WO-{id}"),
        revision: 1,
        product: "P-4711".into(),
        state,
        quantity: q,
        produced: 0,
        due: None,
        ideal_cycle_s: Some(ideal),
        released_at: None,
        actual_start: None,
    }
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return f64::NAN;
    }
    let i = ((v.len() - 1) as f64 * p).round() as usize;
    v[i]
}

fn error_study(with_stops: bool) -> [(String, Vec<f64>); 3] {
    let profile = MachineProfile::for_machine(0);
    let cycle = profile.cycle_s;
    let ideal = profile.ideal_cycle_s;
    let (mut first, mut at_release, mut at_half) = (Vec::new(), Vec::new(), Vec::new());
    for seed in 1..=200u64 {
        let mut history: Vec<PastOrder> = Vec::new();
        let mut now = t0();
        for n in 1..=10u32 {
            let quantity = 20 + u64::from((seed as u32 * 37 + n * 53) % 181);
            let plan = OrderPlan::new(seed, 0, n, quantity as u16, 1.0);
            let run = Run {
                quantity,
                setup_s: plan.setup.as_secs_f64(),
                stop: plan
                    .stop
                    .filter(|_| with_stops)
                    .map(|s| (u64::from(s.after_parts), s.duration.as_secs_f64())),
            };
            let released = now;
            let end = released + ms(run.duration_s(cycle));
            let truth_s = run.duration_s(cycle);

            let mut o = open(n as usize, quantity, OrderState::Released, ideal);
            o.released_at = Some(released);
            let q = forecast_queue(None, &history, std::slice::from_ref(&o), None, released);
            if let Some(f) = q.orders[0].forecast_end {
                let e = (f - end).num_milliseconds().abs() as f64 / 1000.0 / truth_s;
                if n == 1 {
                    first.push(e);
                } else {
                    at_release.push(e);
                }
            }

            let half = quantity / 2;
            let half_at = released + ms(run.made_at(half, cycle));
            o.state = OrderState::Running;
            o.actual_start = Some(released + ms(run.setup_s));
            o.produced = half;
            let q = forecast_queue(None, &history, std::slice::from_ref(&o), None, half_at);
            if let Some(f) = q.orders[0].forecast_end {
                at_half.push((f - end).num_milliseconds().abs() as f64 / 1000.0 / truth_s);
            }

            history.insert(
                0,
                PastOrder {
                    product: "P-4711".into(),
                    produced: quantity,
                    released_at: released,
                    actual_start: released + ms(run.setup_s),
                    actual_end: end,
                },
            );
            now = end;
        }
    }
    [
        ("first order (ideal cycle)".into(), first),
        ("at release (history)".into(), at_release),
        ("at 50 % made".into(), at_half),
    ]
}

fn three_shifts() -> ShiftCalendar {
    let days: Vec<String> = ["mon", "tue", "wed", "thu", "fri"]
        .iter()
        .map(|d| d.to_string())
        .collect();
    let shift = |name: &str, start: &str, end: &str, b: (&str, &str)| ShiftConfig {
        name: name.into(),
        days: days.clone(),
        start: start.into(),
        end: end.into(),
        breaks: vec![BreakConfig {
            start: b.0.into(),
            end: b.1.into(),
        }],
    };
    let cfg = ShiftCalendarConfig {
        shift: vec![
            shift("early", "06:00", "14:00", ("10:00", "10:30")),
            shift("late", "14:00", "22:00", ("18:00", "18:30")),
            shift("night", "22:00", "06:00", ("02:00", "02:30")),
        ],
        holidays: vec!["2026-12-25".into()],
    };
    match ShiftCalendar::from_config(&cfg, chrono_tz::Europe::Berlin) {
        Ok(c) => c,
        Err(e) => panic!("bench calendar: {e}"),
    }
}

fn cpu(calendar: Option<&ShiftCalendar>, label: &str) {
    let now = t0();
    let history: Vec<PastOrder> = (0..20)
        .map(|i| PastOrder {
            product: if i % 2 == 0 { "P-4711" } else { "P-4712" }.into(),
            produced: 100,
            released_at: now - Duration::hours(40 - i),
            actual_start: now - Duration::hours(40 - i) + Duration::minutes(2),
            actual_end: now - Duration::hours(40 - i) + Duration::minutes(50),
        })
        .collect();
    let orders: Vec<OpenOrder> = (0..1000)
        .map(|i| {
            let mut o = open(i, 50 + (i as u64 * 7) % 200, OrderState::Queued, 6.0);
            o.product = ["P-4711", "P-4712", "P-4713"][i % 3].into();
            o.due = Some(now + Duration::hours(i as i64));
            o
        })
        .collect();
    let rounds = 20;
    let mut times = Vec::with_capacity(rounds);
    let mut sink = 0usize;
    for _ in 0..rounds {
        let start = Instant::now();
        let q = forecast_queue(calendar, &history, &orders, None, now);
        let c = capacity::capacity(calendar, now, Duration::hours(24), q.dry_at);
        sink += q.orders.iter().filter(|f| f.at_risk).count() + c.windows.len();
        times.push(start.elapsed().as_secs_f64() * 1000.0);
    }
    let median = percentile(&mut times, 0.5);
    let max = percentile(&mut times, 1.0);
    println!(
        "| 1000 queued orders + capacity, {label} | {median:.2} ms | {max:.2} ms | {:.1} µs |",
        median * 1000.0 / 1000.0
    );
    std::hint::black_box(sink);
}

fn main() {
    println!("## Forecast error (|forecast - true end| / order duration), 200 seeds x 10 orders\n");
    println!("| machine | when | median | p90 | max |");
    println!("|---|---|---|---|---|");
    for (name, stops) in [("steady", false), ("random stops", true)] {
        for (when, mut errors) in error_study(stops) {
            let (m, p90, max) = (
                percentile(&mut errors, 0.5),
                percentile(&mut errors, 0.9),
                percentile(&mut errors, 1.0),
            );
            println!(
                "| {name} | {when} | {:.1} % | {:.1} % | {:.1} % |",
                m * 100.0,
                p90 * 100.0,
                max * 100.0
            );
        }
    }
    println!("\n## CPU: forecasting one machine's queue (median of 20 runs)\n");
    println!("| what | median | max | per order |");
    println!("|---|---|---|---|");
    cpu(None, "no calendar");
    let cal = three_shifts();
    cpu(Some(&cal), "three shifts with breaks (Europe/Berlin)");
}
