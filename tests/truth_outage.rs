//! Device outages against the ground truth: the simulated line runs as real
//! Modbus TCP servers, the real agent reads it with the default retry
//! settings, and the simulator cuts machines' wires (requests get no reply)
//! for 10 s and 30 s (set `TRUTH_OUTAGE_S`, e.g. `10,60`, for other
//! lengths). The simulator's own record says when each machine was silent and
//! what it did meanwhile; the agent must report it offline for no longer
//! than the silence plus 2 s, agree with the truth where it could read, and
//! keep every period exact.

mod outage_support;

use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, Duration as ChronoDuration, Utc};
use linegate::agent::{self, RunOptions};
use linegate::config::Config;
use linegate::machine::MachineState;
use linegate::sim::{self, SimOptions};
use outage_support::*;
use tokio_util::sync::CancellationToken;

/// Speed of the simulated line: spells of 0.5 s to 90 s, polls every 100 ms.
const SPEED: f64 = 10.0;
/// Poll interval of the demo config at that speed.
const POLL_MS: i64 = 100;
/// The promise: a machine that answers again is back within this.
const BACK_WITHIN_MS: i64 = 2000;

fn outages_s() -> Vec<u64> {
    match std::env::var("TRUTH_OUTAGE_S") {
        Ok(v) => v
            .split(',')
            .map(|s| {
                s.trim()
                    .parse()
                    .expect("TRUTH_OUTAGE_S: seconds, comma separated")
            })
            .collect(),
        Err(_) => vec![10, 30],
    }
}

/// The demo config with the bus retry settings at their defaults and no
/// state debounce (so the truth comparison is the poll's alone).
fn agent_config(demo: &str) -> Config {
    let mut text = String::new();
    for l in demo.lines() {
        if l.starts_with("backoff_") {
            continue;
        }
        text.push_str(l);
        text.push('\n');
        if l == "[machine.state]" {
            text.push_str("min_dwell_ms = 0\n");
        }
    }
    assert!(text.contains(&format!("poll_ms = {POLL_MS}\n")), "{text}");
    let config =
        Config::from_toml(&text, Path::new("outage.toml")).unwrap_or_else(|e| panic!("{e}"));
    for bus in &config.bus {
        assert_eq!(
            (bus.backoff_min_ms, bus.backoff_max_ms, bus.backoff_after_ms),
            (1000, 60_000, 60_000),
            "the defaults are under test"
        );
    }
    config
}

async fn sleep_until_wall(t: DateTime<Utc>) {
    if let Ok(d) = (t - Utc::now()).to_std() {
        tokio::time::sleep(d).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_machine_that_answers_again_is_back_within_two_seconds_and_its_numbers_stay_true() {
    let outages = outages_s();
    let dir = tempfile::tempdir().expect("tempdir");
    let truth = dir.path().join("truth.jsonl");
    let data = dir.path().join("data");
    let sim_stop = CancellationToken::new();
    // One machine per outage, and one that never goes silent.
    let line = sim::serve(
        SimOptions {
            machines: outages.len() + 1,
            base_port: 0,
            seed: 20261201,
            speed: SPEED,
            truth: Some(truth.clone()),
            honour_orders: true,
        },
        sim_stop.clone(),
    )
    .await
    .expect("the simulated line starts");
    let ids: Vec<String> = line.machines.iter().map(|m| m.id.clone()).collect();
    let config = agent_config(&sim::demo_config(&line, &data));

    let agent_stop = CancellationToken::new();
    let agent = tokio::spawn(agent::run(
        config,
        RunOptions {
            config_path: None,
            board: None,
            alone_in_process: false,
        },
        agent_stop.clone(),
    ));
    tokio::time::sleep(Duration::from_secs(4)).await;
    // Cut every wire at once; mend each after its outage.
    let cut_at = Utc::now();
    for id in &ids[..outages.len()] {
        line.set_silent(id, true).expect("a machine of the line");
    }
    let mut mends: Vec<(DateTime<Utc>, &String)> = ids
        .iter()
        .zip(&outages)
        .map(|(id, s)| (cut_at + ChronoDuration::seconds(*s as i64), id))
        .collect();
    mends.sort();
    for (at, id) in &mends {
        sleep_until_wall(*at).await;
        line.set_silent(id, false).expect("a machine of the line");
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    agent_stop.cancel();
    agent
        .await
        .expect("agent task")
        .expect("the agent stops cleanly");
    sim_stop.cancel();
    line.stopped().await;

    let stored = read_store(&data);
    for (i, id) in ids.iter().enumerate() {
        let agent = agent_timeline(&stored.changes, id);
        let truth_line = truth_timeline(&truth, id);
        let end = stored.snapshots.get(id).expect("a snapshot").committed_to;
        let windows = observed_windows(&agent, end);
        let silences = truth_silences(&truth, id);
        if i == outages.len() {
            assert!(silences.is_empty());
            assert_eq!(windows.len(), 1, "{id} answered throughout: {agent:?}");
        } else {
            assert_eq!(silences.len(), 1, "{id}: one outage in the truth");
            let (cut, mend) = silences[0];
            // Offline from the last read before the cut (at most a poll
            // and a read before it), never before.
            let (off, _) = *agent
                .iter()
                .find(|(t, s)| *s == MachineState::Offline && ms(*t - cut) > -1000)
                .unwrap_or_else(|| panic!("{id}: never offline around {cut}: {agent:?}"));
            assert!(
                ms(off - cut) <= 2 && ms(cut - off) <= POLL_MS + 200,
                "{id}: offline from {off}, the wire was cut at {cut}"
            );
            let (back, _) = *agent
                .iter()
                .find(|(t, s)| *t > off && *s != MachineState::Offline)
                .unwrap_or_else(|| panic!("{id}: never back after {mend}: {agent:?}"));
            let late = ms(back - mend);
            println!(
                "{id}: silent {:.1} s, offline {:.1} s, back {late} ms after it answered again",
                ms(mend - cut) as f64 / 1000.0,
                ms(back - off) as f64 / 1000.0
            );
            assert!(late >= -2, "{id}: read at {back} while silent until {mend}");
            assert!(
                late <= BACK_WITHIN_MS,
                "{id}: answered again at {mend}, offline until {back}: {late} ms"
            );
            assert_eq!(
                windows.len(),
                2,
                "{id}: read before and after its outage only: {agent:?}"
            );
        }
        for (from, to) in windows {
            assert_agrees(id, &agent, &truth_line, from, to);
        }
        check_periods(&stored, id);
    }
}
