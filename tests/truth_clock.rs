//! Ground truth across wall-clock steps: the real agent binary runs under
//! libfaketime with a wall clock the test steps while it runs (the
//! monotonic clock is not faked), reading the simulated line, which runs in
//! this process on the real clock and writes its own truth file. The
//! agent's stored periods are compared with that truth.
//!
//! The clock rule (docs/mqtt.md, "Wall-clock steps") says what to expect:
//! the agent's timeline follows a step only forward and only past itself.
//! So the test knows, from the offsets it wrote alone, the offset of the
//! agent's labels from real time in each part of the run: the running
//! maximum of the offsets written. A period's real time is its labels minus
//! the offset of its part.
//!
//! Asserted for every machine: each period adds up exactly to its length,
//! no two periods share a start or overlap, their observed seconds add up
//! to the real time the agent observed (none lost or counted twice), their
//! seconds per state are the truth's within 0.5 s + 0.3 s per truth change,
//! every closed period is published exactly once, the step shows in the
//! data (`clock_step`), and the state messages never go back.

mod truth_support;

use chrono::{DateTime, Duration as ChronoDuration, Utc};
use linegate::machine::{ClosedPeriod, MachineState};
use truth_support::*;

/// Where the agent's labels stand against real time: from label
/// `from_label` on, labels are real time plus `offset_s`.
#[derive(Debug, Clone, Copy)]
struct Epoch {
    from_label: DateTime<Utc>,
    offset_s: i64,
}

/// The epochs implied by the clock rule, from the offsets the test wrote
/// (real instant, offset): a new one when an offset exceeds all before it.
fn epochs(written: &[(DateTime<Utc>, i64)]) -> Vec<Epoch> {
    let mut out: Vec<Epoch> = Vec::new();
    for &(at, offset_s) in written {
        if out.last().is_none_or(|e| offset_s > e.offset_s) {
            out.push(Epoch {
                from_label: at + ChronoDuration::seconds(offset_s),
                offset_s,
            });
        }
    }
    out
}

/// The offset of the epoch a label belongs to (a second of slack: the
/// agent notices a step at its next read).
fn offset_at(epochs: &[Epoch], label: DateTime<Utc>) -> ChronoDuration {
    let e = epochs
        .iter()
        .rev()
        .find(|e| e.from_label - ChronoDuration::seconds(1) <= label)
        .unwrap_or(&epochs[0]);
    ChronoDuration::seconds(e.offset_s)
}

struct Run {
    started: DateTime<Utc>,
    stopped: DateTime<Utc>,
    written: Vec<(DateTime<Utc>, i64)>,
}

/// Run the agent under a fake clock: `steps` are (seconds after the start,
/// new offset); it runs until two seconds after the first minute boundary
/// (of its labels) after the last step, then gets SIGTERM.
async fn run_with_steps(
    dir: &std::path::Path,
    machines: usize,
    seed: u64,
    first_offset_s: i64,
    steps: &[(u64, i64)],
) -> (Run, Subscriber, Mosquitto, Vec<String>) {
    let truth = dir.join("truth.jsonl");
    let broker = Mosquitto::start();
    let sub = Subscriber::start(&broker).await;
    let (line, sim_stop) = start_line(machines, seed, &truth).await;
    let ids: Vec<String> = line.machines.iter().map(|m| m.id.clone()).collect();
    let config = write_config(&line, dir, &broker);
    let clock = FakeClock::new(dir, first_offset_s);
    let started = Utc::now();
    let agent = AgentProcess::start(&config, Some(&clock), &dir.join("agent.log"));
    let mut written = vec![(started, first_offset_s)];
    for &(after_s, offset_s) in steps {
        sleep_until(started + ChronoDuration::seconds(after_s as i64)).await;
        clock.set(offset_s);
        written.push((Utc::now(), offset_s));
    }
    // Whole-minute offsets: label minute boundaries are real ones.
    let (last_at, _) = *written.last().expect("a start");
    sleep_until(next_minute(last_at + ChronoDuration::seconds(3)) + ChronoDuration::seconds(2))
        .await;
    wait_published(&data_dir(dir), &sub, &ids).await;
    let stopped = Utc::now();
    let log = agent.log_text();
    agent.stop();
    sim_stop.cancel();
    line.stopped().await;
    assert!(
        log.contains("wall clock stepped"),
        "the agent logs the step:\n{log}"
    );
    (
        Run {
            started,
            stopped,
            written,
        },
        sub,
        broker,
        ids,
    )
}

/// Everything the clock rule promises, for every machine. Returns each
/// machine's periods.
fn check_run(
    dir: &std::path::Path,
    run: &Run,
    sub: &Subscriber,
    ids: &[String],
) -> Vec<ClosedPeriod> {
    let stored = read_store(&data_dir(dir));
    let epochs = epochs(&run.written);
    let mut every = Vec::new();
    for id in ids {
        let periods = one_timeline_of_periods(&stored, id);
        let closed: Vec<ClosedPeriod> = stored
            .periods
            .iter()
            .filter(|p| &p.machine == id)
            .cloned()
            .collect();
        assert!(closed.len() >= 2, "{id}: periods before and after the step");
        assert_published_once(id, &closed, sub);
        let msgs = assert_state_messages_monotonic(id, sub);

        // The real time the agent observed: from its first state other than
        // offline to its last attributed instant.
        let first_seen = msgs
            .iter()
            .find(|m| m.state != "offline")
            .map(|m| m.since)
            .expect("the machine was seen");
        let last = stored.snapshots[id].committed_to;
        let real = |label: DateTime<Utc>| label - offset_at(&epochs, label);
        let (first_real, last_real) = (real(first_seen), real(last));
        assert!(
            first_real >= run.started - ChronoDuration::milliseconds(50)
                && last_real <= run.stopped + ChronoDuration::seconds(1),
            "{id}: observed {first_real}..{last_real}, the agent ran {}..{}",
            run.started,
            run.stopped
        );
        // No observed second lost or counted twice: the periods' observed
        // seconds are the real time observed.
        let observed_ms: i64 = periods
            .iter()
            .map(|p| ms(p.end - p.start) - seconds_ms(&p.seconds)[&MachineState::Offline])
            .sum();
        let real_ms = ms(last_real - first_real);
        assert!(
            (observed_ms - real_ms).abs() <= 100,
            "{id}: the periods hold {observed_ms} ms of observed time, the agent observed {real_ms} ms"
        );
        // Consecutive periods touch, except across a forward step, where the
        // gap is the wall time the clock skipped.
        for pair in periods.windows(2) {
            let gap = ms(pair[1].start - pair[0].end);
            let jumped = ms(offset_at(&epochs, pair[1].start) - offset_at(&epochs, pair[0].end));
            assert!(
                (gap - jumped).abs() <= 100,
                "{id}: {}..{} then {}..{}: a gap of {gap} ms, the clock rule says {jumped} ms",
                pair[0].start,
                pair[0].end,
                pair[1].start,
                pair[1].end
            );
        }
        let truth = truth_timeline(&dir.join("truth.jsonl"), id);
        let (worst, changes) = assert_periods_match_truth(
            id,
            &periods,
            &truth,
            |p| {
                let o = offset_at(&epochs, p.start);
                (p.start - o, p.end - o)
            },
            &[(first_real, last_real)],
        );
        assert!(
            changes >= 3,
            "{id}: the line should change state often: {changes}"
        );
        println!(
            "{id}: {} periods, {observed_ms} ms observed, {changes} truth changes, \
             worst state off by {worst} ms",
            periods.len()
        );
        every.extend(periods);
    }
    every
}

fn steps_of(periods: &[ClosedPeriod], machine: &str) -> Vec<f64> {
    periods
        .iter()
        .filter(|p| p.machine == machine)
        .filter_map(|p| p.clock_step.map(|c| c.by_s))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_days_behind_then_a_step_forward_keeps_every_observed_second_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A line controller without RTC boots three days in the past; after
    // 12 s NTP steps its clock to the right time.
    let days = 3 * 24 * 3600;
    let (run, sub, _broker, ids) = run_with_steps(dir.path(), 2, 11, -days, &[(12, 0)]).await;
    let periods = check_run(dir.path(), &run, &sub, &ids);
    for id in &ids {
        let steps = steps_of(&periods, id);
        assert_eq!(steps.len(), 1, "{id}: one period shows the step: {steps:?}");
        assert!(
            (steps[0] - days as f64).abs() <= 2.0,
            "{id}: clock_step {} s",
            steps[0]
        );
        let first = periods.iter().find(|p| &p.machine == id).expect("a period");
        assert!(
            first.start < run.started - ChronoDuration::days(2),
            "{id}: the first period is labelled with the clock as it was: {}",
            first.start
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_forward_then_back_by_minutes_keeps_every_observed_second_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The case: +180 s after 8 s, then -300 s (to -120 s) 8 s later.
    let (run, sub, _broker, ids) =
        run_with_steps(dir.path(), 2, 12, 0, &[(8, 180), (16, -120)]).await;
    let periods = check_run(dir.path(), &run, &sub, &ids);
    for id in &ids {
        let steps = steps_of(&periods, id);
        assert_eq!(steps.len(), 2, "{id}: both steps show: {steps:?}");
        assert!((steps[0] - 180.0).abs() <= 2.0, "{id}: {steps:?}");
        assert!((steps[1] + 300.0).abs() <= 2.0, "{id}: {steps:?}");
    }
}
