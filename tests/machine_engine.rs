//! Ground truth, synthetic: a seeded schedule of machine states is played to
//! the state engine as a sample stream (one read per second, paused tokio
//! time); the engine's seconds per state must match the schedule within one
//! poll interval per change, and every period must add up exactly.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use linegate::config::Config;
use linegate::machine::accounting::AccountSnapshot;
use linegate::machine::engine::{engine_channel, machine_views, run_engine};
use linegate::machine::{ClosedPeriod, MachineEvent, MachineState, StateSeconds};
use linegate::source::{Readings, Sample, SampleContent, Value};
use linegate::systemd::Liveness;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

const CONFIG: &str = r#"
[gateway]
id = "gw-line2"
site = "plant1"

[accounting]
period_minutes = 1
micro_stop_s = 30

[[bus]]
id = "cell-a"
transport = "tcp"
address = "127.0.0.1:502"
timeout_ms = 500

[[machine]]
id = "press07"
bus = "cell-a"
poll_ms = 1000

[[machine.signal]]
name = "cycle_active"
area = "coil"
address = 0
type = "bool"

[[machine.signal]]
name = "alarm_code"
area = "holding"
address = 20

[[machine.signal]]
name = "mode"
area = "holding"
address = 21

[[machine.signal]]
name = "part_count"
area = "holding"
address = 30

[machine.state]
running = "cycle_active"
down = "alarm_code != 0"
setup = "mode == 2"
reason = "alarm_code"
reasons = { "17" = "door open" }

[machine.counters]
produced = "part_count"
"#;

/// What the simulated machine does in one spell.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Truth {
    Running,
    Idle,
    Down,
    Setup,
    /// Reads fail (the source reports the machine unreachable).
    Unreachable,
    /// The source sends nothing at all.
    Silent,
}

impl Truth {
    fn state(self) -> MachineState {
        match self {
            Truth::Running => MachineState::Running,
            Truth::Idle => MachineState::Idle,
            Truth::Down => MachineState::Down,
            Truth::Setup => MachineState::Setup,
            Truth::Unreachable | Truth::Silent => MachineState::Offline,
        }
    }
}

/// A seeded schedule: (what, seconds).
fn schedule(seed: u64, spells: usize) -> Vec<(Truth, u64)> {
    let mut x = seed;
    let mut next = || {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        x >> 33
    };
    let kinds = [
        Truth::Running,
        Truth::Idle,
        Truth::Down,
        Truth::Setup,
        Truth::Unreachable,
        Truth::Silent,
    ];
    let mut out: Vec<(Truth, u64)> = vec![(Truth::Running, 30)];
    while out.len() < spells {
        let k = kinds[(next() % kinds.len() as u64) as usize];
        if out
            .last()
            .is_some_and(|(prev, _)| prev.state() == k.state())
        {
            continue;
        }
        out.push((k, 5 + next() % 110));
    }
    out.push((Truth::Running, 10));
    out
}

fn signals(truth: Truth, parts: u16) -> Readings {
    let b = |v: bool| Ok(Value::Bool(v));
    let i = |v: i64| Ok(Value::Int(v));
    [
        ("cycle_active".to_string(), b(truth == Truth::Running)),
        (
            "alarm_code".to_string(),
            i(if truth == Truth::Down { 17 } else { 0 }),
        ),
        (
            "mode".to_string(),
            i(if truth == Truth::Setup { 2 } else { 1 }),
        ),
        ("part_count".to_string(), i(i64::from(parts))),
    ]
    .into_iter()
    .collect()
}

fn add(total: &mut StateSeconds, s: &StateSeconds) {
    total.running += s.running;
    total.setup += s.setup;
    total.down += s.down;
    total.idle += s.idle;
    total.planned_stop += s.planned_stop;
    total.offline += s.offline;
}

fn get(s: &StateSeconds, state: MachineState) -> f64 {
    match state {
        MachineState::Running => s.running,
        MachineState::Setup => s.setup,
        MachineState::Down => s.down,
        MachineState::Idle => s.idle,
        MachineState::PlannedStop => s.planned_stop,
        MachineState::Offline => s.offline,
    }
}

fn ms(x: f64) -> i64 {
    (x * 1000.0).round() as i64
}

#[tokio::test(start_paused = true)]
async fn the_engine_matches_a_seeded_schedule_within_one_poll_per_change() {
    // With an uplink (never connected here), so telemetry is made too.
    let text = format!("{CONFIG}\n[uplink]\nurl = \"mqtt://127.0.0.1:1883\"\n");
    let config = Arc::new(Config::from_toml(&text, Path::new("line2.toml")).unwrap());
    let (sample_tx, sample_rx) = mpsc::channel(64);
    let (event_tx, mut event_rx) = mpsc::channel(4096);
    let (view_tx, view_rx) = machine_views(&config, Utc::now());
    let (handle, commands) = engine_channel();
    let shutdown = CancellationToken::new();
    let engine = tokio::spawn(run_engine(
        config.clone(),
        Vec::new(),
        sample_rx,
        event_tx,
        view_tx,
        commands,
        Liveness::new().register("state engine"),
        shutdown.clone(),
    ));
    let collector = tokio::spawn(async move {
        let mut all = Vec::new();
        while let Some(e) = event_rx.recv().await {
            all.push(e);
        }
        all
    });

    let plan = schedule(7, 24);
    let origin = Instant::now();
    let wall0 = Utc::now();
    let mut truth: HashMap<MachineState, u64> = HashMap::new();
    let mut parts: u16 = 65_480; // wraps during the run
    let mut made: u64 = 0;
    let mut second = 0u64;
    for (what, secs) in &plan {
        *truth.entry(what.state()).or_default() += secs;
        for _ in 0..*secs {
            let now = Instant::now();
            let at = wall0 + chrono::Duration::from_std(now - origin).unwrap();
            let content = match what {
                Truth::Silent => None,
                Truth::Unreachable => Some(SampleContent::Unreachable {
                    reason: "no reply: timeout".into(),
                }),
                _ => Some(SampleContent::Signals(signals(*what, parts))),
            };
            if let Some(content) = content {
                sample_tx
                    .send(Sample {
                        machine: "press07".into(),
                        at,
                        mono: now,
                        content,
                    })
                    .await
                    .unwrap();
            }
            if *what == Truth::Running && second % 4 == 0 {
                parts = parts.wrapping_add(1);
                made += 1;
            }
            second += 1;
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
    // One last read so the final spell is seen to its end.
    let now = Instant::now();
    sample_tx
        .send(Sample {
            machine: "press07".into(),
            at: wall0 + chrono::Duration::from_std(now - origin).unwrap(),
            mono: now,
            content: SampleContent::Signals(signals(Truth::Running, parts)),
        })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
    let live = handle.snapshot().await.unwrap();
    assert_eq!(live.len(), 1);

    let view = view_rx["press07"].borrow().clone();
    assert_eq!(view.state, MachineState::Running);
    // The counter's last read value was seen at the final read: every part made
    // before the last sample is counted (the first value is the baseline).
    assert_eq!(view.produced_total, made);

    shutdown.cancel();
    let finals: Vec<(String, AccountSnapshot)> = engine.await.unwrap().unwrap();
    let events = collector.await.unwrap();

    let periods: Vec<ClosedPeriod> = events
        .iter()
        .filter_map(|e| match e {
            MachineEvent::Period(p) => Some((**p).clone()),
            _ => None,
        })
        .collect();
    assert!(
        periods.len() >= 20,
        "periods of one minute closed on time: {}",
        periods.len()
    );
    for p in &periods {
        let s = &p.seconds;
        let total = ms(s.running)
            + ms(s.setup)
            + ms(s.down)
            + ms(s.idle)
            + ms(s.planned_stop)
            + ms(s.offline);
        assert_eq!(
            total,
            (p.end - p.start).num_milliseconds(),
            "period {} .. {}",
            p.start,
            p.end
        );
    }
    let mut seen = StateSeconds::default();
    for p in &periods {
        add(&mut seen, &p.seconds);
    }
    let last = finals[0].1.interval_so_far().unwrap();
    add(&mut seen, &last.seconds);

    // The part of the first period before the engine started is offline.
    let started: DateTime<Utc> = events
        .iter()
        .find_map(|e| match e {
            MachineEvent::State(c) if c.prev.is_none() => Some(c.since),
            _ => None,
        })
        .unwrap();
    let before = (started - periods[0].start).num_milliseconds() as f64 / 1000.0;
    seen.offline -= before;

    let changes = plan.len() as f64;
    eprintln!(
        "truth {truth:?}\nagent {seen:?}\nperiods {}, parts {made}",
        periods.len()
    );
    for state in [
        MachineState::Running,
        MachineState::Idle,
        MachineState::Down,
        MachineState::Setup,
        MachineState::Offline,
    ] {
        let t = *truth.get(&state).unwrap_or(&0) as f64;
        let a = get(&seen, state);
        assert!(
            (a - t).abs() <= changes,
            "{state}: agent {a} s, truth {t} s (tolerance {changes} s)"
        );
    }
    let total_truth: u64 = plan.iter().map(|(_, s)| s).sum();
    let total_seen =
        seen.running + seen.setup + seen.down + seen.idle + seen.planned_stop + seen.offline;
    assert_eq!(
        ms(total_seen),
        total_truth as i64 * 1000,
        "not a millisecond created or lost"
    );

    let downs = plan.iter().filter(|(t, _)| *t == Truth::Down).count() as u64;
    let stops: u64 = periods.iter().map(|p| p.counts.stops).sum::<u64>() + last.counts.stops;
    assert_eq!(stops, downs);
    let failures: u64 =
        periods.iter().map(|p| p.counts.failures).sum::<u64>() + last.counts.failures;
    assert_eq!(
        failures, downs,
        "alarm 17 is a fault (no fault_codes: every nonzero reason)"
    );
    let reason = events.iter().find_map(|e| match e {
        MachineEvent::State(c) if c.state == MachineState::Down => c.reason.clone(),
        _ => None,
    });
    assert_eq!(reason.as_deref(), Some("alarm_code 17: door open"));
    let produced: u64 =
        periods.iter().map(|p| p.counts.produced).sum::<u64>() + last.counts.produced;
    assert_eq!(produced, made, "parts across the 16-bit wrap");
    assert!(events
        .iter()
        .any(|e| matches!(e, MachineEvent::Telemetry(t) if t.values.get("part_count").is_some())));
}

#[tokio::test(start_paused = true)]
async fn a_restart_resumes_the_open_period_from_the_final_snapshot() {
    let config = Arc::new(Config::from_toml(CONFIG, Path::new("line2.toml")).unwrap());
    let run = |resume: Vec<(String, AccountSnapshot)>, secs: u64| {
        let config = config.clone();
        async move {
            let (sample_tx, sample_rx) = mpsc::channel(64);
            let (event_tx, mut event_rx) = mpsc::channel(4096);
            let (view_tx, _view_rx) = machine_views(&config, Utc::now());
            let (_handle, commands) = engine_channel();
            let shutdown = CancellationToken::new();
            let engine = tokio::spawn(run_engine(
                config,
                resume,
                sample_rx,
                event_tx,
                view_tx,
                commands,
                Liveness::new().register("state engine"),
                shutdown.clone(),
            ));
            let collector = tokio::spawn(async move {
                let mut all = Vec::new();
                while let Some(e) = event_rx.recv().await {
                    all.push(e);
                }
                all
            });
            let origin = Instant::now();
            let wall0 = Utc::now();
            for _ in 0..=secs {
                let now = Instant::now();
                sample_tx
                    .send(Sample {
                        machine: "press07".into(),
                        at: wall0 + chrono::Duration::from_std(now - origin).unwrap(),
                        mono: now,
                        content: SampleContent::Signals(signals(Truth::Running, 0)),
                    })
                    .await
                    .unwrap();
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            shutdown.cancel();
            let finals = engine.await.unwrap().unwrap();
            (finals, collector.await.unwrap())
        }
    };
    let (finals, _) = run(Vec::new(), 5).await;
    let first = finals[0].1.clone();
    let (_, events) = run(finals, 5).await;
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, MachineEvent::Telemetry(_))),
        "no uplink: no telemetry is made"
    );
    let states: Vec<MachineState> = events
        .iter()
        .filter_map(|e| match e {
            MachineEvent::State(c) => Some(c.state),
            _ => None,
        })
        .collect();
    assert_eq!(
        states.first(),
        Some(&MachineState::Offline),
        "the gap while the agent was down"
    );
    assert!(states.contains(&MachineState::Running));
    // The open period resumed: the first closed one starts where the first run's did.
    if let Some(p) = events.iter().find_map(|e| match e {
        MachineEvent::Period(p) => Some(p.clone()),
        _ => None,
    }) {
        assert_eq!(
            Some(p.start),
            first
                .interval
                .as_ref()
                .map(|i| linegate::machine::accounting::utc(i.start_ms))
        );
        assert!(p.seconds.running >= 5.0);
    }
}

/// Plays `secs` reads of a running machine, one a second, counting a part
/// every `part_every` reads (0: none); returns the events and the engine's
/// live snapshot at the end.
async fn play_running(secs: u64, part_every: u64) -> (Vec<MachineEvent>, AccountSnapshot) {
    // Hour-long periods: none closes in the run.
    let text = CONFIG.replace("period_minutes = 1", "period_minutes = 60");
    let config = Arc::new(Config::from_toml(&text, Path::new("line2.toml")).unwrap());
    let (sample_tx, sample_rx) = mpsc::channel(64);
    let (event_tx, mut event_rx) = mpsc::channel(4096);
    let (view_tx, _views) = machine_views(&config, Utc::now());
    let (handle, commands) = engine_channel();
    let shutdown = CancellationToken::new();
    let engine = tokio::spawn(run_engine(
        config.clone(),
        Vec::new(),
        sample_rx,
        event_tx,
        view_tx,
        commands,
        Liveness::new().register("state engine"),
        shutdown.clone(),
    ));
    let collector = tokio::spawn(async move {
        let mut all = Vec::new();
        while let Some(e) = event_rx.recv().await {
            all.push(e);
        }
        all
    });
    let origin = Instant::now();
    let wall0 = Utc::now();
    let mut parts: u16 = 100;
    for second in 0..secs {
        let now = Instant::now();
        sample_tx
            .send(Sample {
                machine: "press07".into(),
                at: wall0 + chrono::Duration::from_std(now - origin).unwrap(),
                mono: now,
                content: SampleContent::Signals(signals(Truth::Running, parts)),
            })
            .await
            .unwrap();
        if part_every > 0 && second % part_every == 0 {
            parts = parts.wrapping_add(1);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let live = handle.snapshot().await.unwrap().remove(0).1;
    shutdown.cancel();
    engine.await.unwrap().unwrap();
    drop(sample_tx);
    let mut events = collector.await.unwrap();
    // What the engine sends on its way out (shutdown's snapshot) is not
    // the periodic ones this is about.
    while matches!(events.last(), Some(MachineEvent::Snapshot(_))) {
        events.pop();
    }
    (events, live)
}

#[tokio::test(start_paused = true)]
async fn periodic_snapshots_are_not_stored_again_while_only_time_passes() {
    // Running steadily for 150 s, nothing counted: after the first periodic
    // snapshot only the refreshes every 60 s, and the marks.
    let (events, live) = play_running(150, 0).await;
    let snapshots: Vec<&AccountSnapshot> = events
        .iter()
        .filter_map(|e| match e {
            MachineEvent::Snapshot(s) => Some(&**s),
            _ => None,
        })
        .collect();
    // At the start (with the change to running), then every 60 s at most.
    assert!(
        (2..=5).contains(&snapshots.len()),
        "{} snapshots in 150 s (30 periodic ones without the rule)",
        snapshots.len()
    );
    for pair in snapshots.windows(2).skip(1) {
        let gap = pair[1].committed_to - pair[0].committed_to;
        assert!(gap.num_seconds() >= 55, "refreshed after {gap}");
    }
    // The last one stored, projected to the last mark, is the live account:
    // what a restart or `linegate status` computes from the store is true.
    let last = snapshots.last().unwrap();
    let mark = events
        .iter()
        .rev()
        .find_map(|e| match e {
            MachineEvent::Observed { to, .. } => Some(*to),
            _ => None,
        })
        .unwrap();
    assert!(mark > last.committed_to);
    assert!(
        last.implies(&live),
        "the live account is the stored one projected"
    );
    let at_mark = last.projected(mark).unwrap();
    assert_eq!(
        at_mark.interval.as_ref().unwrap().ms[0],
        live.interval.as_ref().unwrap().ms[0] - (live.committed_to - mark).num_milliseconds()
    );

    // A part every 2 s: every periodic snapshot says something new.
    let (events, _) = play_running(40, 2).await;
    let n = events
        .iter()
        .filter(|e| matches!(e, MachineEvent::Snapshot(_)))
        .count();
    assert!(n >= 8, "{n} snapshots in 40 s with parts counted");
}
