//! Ground-truth support for the outage and reload tests: the simulator's
//! truth file (its state changes and the times its wire was cut), the
//! agent's store, and the comparisons between them.
//!
//! The tolerance of a comparison is 0.5 s plus 0.3 s per state change of the
//! truth in the window compared; sums are exact.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::Path;

use chrono::{DateTime, Duration as ChronoDuration, Utc};
use linegate::machine::accounting::AccountSnapshot;
use linegate::machine::history;
use linegate::machine::{ClosedPeriod, MachineState, StateChange, StateSeconds};
use linegate::store::Store;

/// Fixed part of the tolerance of a window.
pub const TOLERANCE_MS: i64 = 500;
/// Tolerance added per state change of the truth in the window.
pub const TOLERANCE_PER_CHANGE_MS: i64 = 300;

/// A timeline: `(since, state)`, oldest first; a state holds until the next.
pub type Timeline = Vec<(DateTime<Utc>, MachineState)>;

/// What the agent's store holds.
pub struct Stored {
    pub changes: Vec<StateChange>,
    pub periods: Vec<ClosedPeriod>,
    pub snapshots: BTreeMap<String, AccountSnapshot>,
}

pub fn read_store(data_dir: &Path) -> Stored {
    let store = Store::open(data_dir).expect("the store opens");
    store
        .call_blocking(|c| {
            Ok(Stored {
                changes: history::state_changes(c, None, None, None)?,
                periods: history::periods(c, None, None, None)?,
                snapshots: history::load_snapshots(c)?.into_iter().collect(),
            })
        })
        .expect("the store reads")
}

pub fn agent_timeline(changes: &[StateChange], machine: &str) -> Timeline {
    let line: Timeline = changes
        .iter()
        .filter(|c| c.machine == machine)
        .map(|c| (c.since, c.state))
        .collect();
    for pair in line.windows(2) {
        assert!(
            pair[0].0 <= pair[1].0,
            "{machine}: changes out of order {pair:?}"
        );
    }
    line
}

fn truth_lines(truth: &Path, machine: &str) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(truth).expect("the truth file");
    text.lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("a truth line is JSON"))
        .filter(|v| v["machine"] == machine)
        .collect()
}

fn at(v: &serde_json::Value) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(v["at"].as_str().expect("at"))
        .expect("at is RFC 3339")
        .with_timezone(&Utc)
}

/// The simulator's own state changes of `machine`.
pub fn truth_timeline(truth: &Path, machine: &str) -> Timeline {
    truth_lines(truth, machine)
        .iter()
        .filter(|v| v.get("state").is_some())
        .map(|v| {
            let state = match v["state"].as_str().expect("state") {
                "running" => MachineState::Running,
                "idle" => MachineState::Idle,
                "down" => MachineState::Down,
                "setup" => MachineState::Setup,
                other => panic!("the simulator has no state {other:?}"),
            };
            (at(v), state)
        })
        .collect()
}

/// The simulator's own record of when `machine`'s wire was cut and mended:
/// `(silent from, answering again from)`.
pub fn truth_silences(truth: &Path, machine: &str) -> Vec<(DateTime<Utc>, DateTime<Utc>)> {
    let mut out = Vec::new();
    let mut cut = None;
    for v in truth_lines(truth, machine) {
        match v.get("silent").and_then(|s| s.as_bool()) {
            Some(true) => cut = Some(at(&v)),
            Some(false) => {
                let from = cut.take().expect("a mend follows a cut");
                out.push((from, at(&v)));
            }
            None => {}
        }
    }
    out
}

pub fn ms(d: ChronoDuration) -> i64 {
    d.num_milliseconds()
}

/// Milliseconds per state of `line` over `[from, to)`; before its first
/// change the state is `before`.
pub fn integrate(
    line: &Timeline,
    before: MachineState,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> BTreeMap<MachineState, i64> {
    let mut out: BTreeMap<MachineState, i64> = MachineState::ALL.iter().map(|s| (*s, 0)).collect();
    let mut state = before;
    let mut at = from;
    for &(since, next) in line {
        if since > at {
            let end = since.min(to);
            if end > at {
                *out.entry(state).or_default() += ms(end - at);
                at = end;
            }
        }
        if since >= to {
            break;
        }
        state = next;
    }
    if to > at {
        *out.entry(state).or_default() += ms(to - at);
    }
    out
}

pub fn seconds_ms(s: &StateSeconds) -> BTreeMap<MachineState, i64> {
    let r = |x: f64| (x * 1000.0).round() as i64;
    BTreeMap::from([
        (MachineState::Running, r(s.running)),
        (MachineState::Setup, r(s.setup)),
        (MachineState::Down, r(s.down)),
        (MachineState::Idle, r(s.idle)),
        (MachineState::PlannedStop, r(s.planned_stop)),
        (MachineState::Offline, r(s.offline)),
    ])
}

/// A period adds up exactly to its length, and its seconds per state are
/// those of the machine's stored state changes over it (offline before the
/// first change).
pub fn check_period(p: &ClosedPeriod, agent: &Timeline) {
    let secs = seconds_ms(&p.seconds);
    let total: i64 = secs.values().sum();
    assert_eq!(
        total,
        ms(p.end - p.start),
        "{} {:?} {}..{}: seconds add up to {total} ms: {:?}",
        p.machine,
        p.kind,
        p.start,
        p.end,
        p.seconds
    );
    let from_changes = integrate(agent, MachineState::Offline, p.start, p.end);
    assert_eq!(
        secs, from_changes,
        "{} {}..{}: the period's seconds are not those of its state changes",
        p.machine, p.start, p.end
    );
}

/// Every closed period of `machine` and its open one are exact and are
/// what its state changes say, and together they leave no gap.
pub fn check_periods(stored: &Stored, machine: &str) {
    let agent = agent_timeline(&stored.changes, machine);
    let mut spans = Vec::new();
    for p in stored.periods.iter().filter(|p| p.machine == machine) {
        check_period(p, &agent);
        if p.kind == linegate::machine::PeriodKind::Interval {
            spans.push((p.start, p.end));
        }
    }
    if let Some(open) = stored
        .snapshots
        .get(machine)
        .and_then(|s| s.interval_so_far())
    {
        check_period(&open, &agent);
        spans.push((open.start, open.end));
    }
    spans.sort();
    for pair in spans.windows(2) {
        assert_eq!(
            pair[0].1, pair[1].0,
            "{machine}: periods leave a gap or overlap"
        );
    }
}

/// Windows of good reads of one machine: from each first non-offline state
/// after an offline one, to the next offline change (or `end`).
pub fn observed_windows(
    agent: &Timeline,
    end: DateTime<Utc>,
) -> Vec<(DateTime<Utc>, DateTime<Utc>)> {
    let mut out = Vec::new();
    let mut open: Option<DateTime<Utc>> = None;
    for &(since, state) in agent {
        match (state, open) {
            (MachineState::Offline, Some(from)) => {
                out.push((from, since));
                open = None;
            }
            (MachineState::Offline, None) => {}
            (_, None) => open = Some(since),
            (_, Some(_)) => {}
        }
    }
    if let Some(from) = open {
        out.push((from, end));
    }
    out
}

/// The agent agrees with the truth over `[from, to)`: per state within
/// the tolerance, both adding up exactly to the window. Returns the truth's
/// changes in the window.
pub fn assert_agrees(
    machine: &str,
    agent: &Timeline,
    truth: &Timeline,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> usize {
    assert!(to > from, "{machine}: an empty window {from}..{to}");
    let a = integrate(agent, MachineState::Offline, from, to);
    // Before its first change the simulator is in its first state; a window
    // always starts after the agent's first good read, so after it.
    let t = integrate(truth, MachineState::Offline, from, to);
    let window = ms(to - from);
    assert_eq!(a.values().sum::<i64>(), window, "{machine}: agent sums");
    assert_eq!(t.values().sum::<i64>(), window, "{machine}: truth sums");
    let changes = truth.iter().filter(|(t, _)| *t > from && *t < to).count();
    let bound = TOLERANCE_MS + TOLERANCE_PER_CHANGE_MS * changes as i64;
    for s in MachineState::ALL {
        let (a, t) = (a[&s], t[&s]);
        assert!(
            (a - t).abs() <= bound,
            "{machine} {s} over {from}..{to}: agent {a} ms, truth {t} ms, \
             off by {} ms > {bound} ms ({changes} truth changes)",
            (a - t).abs()
        );
    }
    changes
}
