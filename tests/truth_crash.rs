//! Ground truth across a crash: the real agent binary reads the simulated
//! line (in this process, writing its own truth file), is killed with
//! SIGKILL, and started again on the same store. What it published is
//! recorded by a subscriber on a real Mosquitto broker.
//!
//! Asserted for every machine: the state messages never go back (`since`
//! never earlier than the one before, `prev` the state last published), the
//! offline spell of the crash starts at most one second before the kill
//! (observed time lost to `offline`), every period adds up exactly to its
//! length, periods touch without overlap and each boundary is there once,
//! every closed period is stored and published exactly once, and the
//! seconds per state are the truth's within 0.5 s + 0.3 s per truth change.

mod truth_support;

use std::time::Duration;

use chrono::{DateTime, Duration as ChronoDuration, Timelike, Utc};
use linegate::machine::MachineState;
use truth_support::*;

/// Observed time a crash may turn into `offline`.
const MAX_LOST_MS: i64 = 1000;

struct Crash {
    killed_at: DateTime<Utc>,
}

/// Run, kill the agent at `kill_at(start)`, restart it after two seconds and
/// run until `run_until(kill)`, then stop it and check everything.
async fn crash_and_check(
    seed: u64,
    kill_at: impl Fn(DateTime<Utc>) -> DateTime<Utc>,
    run_until: impl Fn(DateTime<Utc>) -> DateTime<Utc>,
) -> (Crash, Stored, Vec<String>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let truth = dir.path().join("truth.jsonl");
    let broker = Mosquitto::start();
    let sub = Subscriber::start(&broker).await;
    let (line, sim_stop) = start_line(2, seed, &truth).await;
    let ids: Vec<String> = line.machines.iter().map(|m| m.id.clone()).collect();
    let config = write_config(&line, dir.path(), &broker);
    let log = dir.path().join("agent.log");

    let started = Utc::now();
    let agent = AgentProcess::start(&config, None, &log);
    sleep_until(kill_at(started)).await;
    let killed_at = Utc::now();
    agent.kill();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let agent = AgentProcess::start(&config, None, &log);
    sleep_until(run_until(killed_at)).await;
    wait_published(&data_dir(dir.path()), &sub, &ids).await;
    agent.stop();
    sim_stop.cancel();
    line.stopped().await;

    let stored = read_store(&data_dir(dir.path()));
    for id in &ids {
        let msgs = assert_state_messages_monotonic(id, &sub);
        // The offline spell of the crash.
        let crash = msgs
            .iter()
            .find(|m| {
                m.state == "offline"
                    && m.reason.as_deref() == Some("agent not running")
                    && m.since > started + ChronoDuration::seconds(1)
            })
            .unwrap_or_else(|| panic!("{id}: no offline spell for the crash: {msgs:?}"));
        let lost = ms(killed_at - crash.since);
        assert!(
            (0..=MAX_LOST_MS).contains(&lost),
            "{id}: offline from {}, killed at {killed_at}: {lost} ms of observed time lost",
            crash.since
        );
        println!("{id}: the crash cost {lost} ms of observed time");

        let periods = one_timeline_of_periods(&stored, id);
        for pair in periods.windows(2) {
            assert_eq!(
                pair[0].end, pair[1].start,
                "{id}: periods leave a gap or overlap"
            );
        }
        let closed: Vec<_> = stored
            .periods
            .iter()
            .filter(|p| &p.machine == id)
            .cloned()
            .collect();
        assert_published_once(id, &closed, &sub);

        // The windows in which the agent read the machine, from its stored
        // changes; the truth is compared over them.
        let agent = agent_timeline(&stored.changes, id);
        let end = stored.snapshots[id].committed_to;
        let mut windows = Vec::new();
        let mut open: Option<DateTime<Utc>> = None;
        for &(since, state) in &agent {
            match (state, open) {
                (MachineState::Offline, Some(from)) => {
                    windows.push((from, since));
                    open = None;
                }
                (MachineState::Offline, None) => {}
                (_, None) => open = Some(since),
                (_, Some(_)) => {}
            }
        }
        if let Some(from) = open {
            windows.push((from, end));
        }
        assert_eq!(
            windows.len(),
            2,
            "{id}: read before and after the crash: {windows:?}"
        );
        assert_eq!(
            windows[0].1, crash.since,
            "{id}: the first run ends where offline starts"
        );
        let truth = truth_timeline(&truth, id);
        let (worst, changes) =
            assert_periods_match_truth(id, &periods, &truth, |p| (p.start, p.end), &windows);
        assert!(
            changes >= 3,
            "{id}: the line should change state often: {changes}"
        );
        println!(
            "{id}: {} periods, {changes} truth changes, worst state off by {worst} ms",
            periods.len()
        );
    }
    (Crash { killed_at }, stored, ids)
}

fn floor_minute(t: DateTime<Utc>) -> DateTime<Utc> {
    t.with_second(0)
        .and_then(|t| t.with_nanosecond(0))
        .expect("a minute")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkill_mid_period_loses_at_most_a_second_and_the_timeline_stays_monotonic() {
    // At least 8 s in, and at least 5 s from a period boundary.
    let kill_at = |start: DateTime<Utc>| {
        let k = start + ChronoDuration::seconds(8);
        let s = k.second();
        if (5..=55).contains(&s) {
            k
        } else {
            floor_minute(k) + ChronoDuration::seconds(if s < 5 { 10 } else { 70 })
        }
    };
    // On until the period open at the kill has closed.
    let until = |killed: DateTime<Utc>| next_minute(killed) + ChronoDuration::seconds(2);
    let (crash, stored, ids) = crash_and_check(21, kill_at, until).await;
    let boundary = next_minute(crash.killed_at);
    for id in &ids {
        let across: Vec<_> = stored
            .periods
            .iter()
            .filter(|p| &p.machine == id && p.start < crash.killed_at && p.end > crash.killed_at)
            .collect();
        assert_eq!(
            across.len(),
            1,
            "{id}: the period open at the kill is stored once"
        );
        assert_eq!(across[0].end, boundary, "{id}: and closes at its end");
        assert!(
            across[0].seconds.offline >= 2.0,
            "{id}: the time the agent was away is offline: {:?}",
            across[0].seconds
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkill_just_after_a_period_boundary_keeps_that_period_once() {
    // 150 ms after a boundary at least 6 s in: the period may or may not be
    // committed yet.
    let kill_at = |start: DateTime<Utc>| {
        next_minute(start + ChronoDuration::seconds(6)) + ChronoDuration::milliseconds(150)
    };
    let until = |killed: DateTime<Utc>| killed + ChronoDuration::seconds(6);
    let (crash, stored, ids) = crash_and_check(22, kill_at, until).await;
    let boundary = floor_minute(crash.killed_at);
    for id in &ids {
        let ending: Vec<_> = stored
            .periods
            .iter()
            .filter(|p| &p.machine == id && p.end == boundary)
            .collect();
        assert_eq!(
            ending.len(),
            1,
            "{id}: the period ending at the boundary, once"
        );
        let from_boundary = stored
            .snapshots
            .get(id)
            .and_then(|s| s.interval_so_far())
            .filter(|p| p.start == boundary);
        assert!(
            from_boundary.is_some(),
            "{id}: the next period starts at the boundary and is still open"
        );
    }
}
