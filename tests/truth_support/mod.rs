//! Test support for the ground-truth tests of time (tests/truth_clock.rs,
//! tests/truth_crash.rs): the simulated line in this process (its truth file
//! written on the real clock), the real agent binary as a child process
//! (optionally under libfaketime, with a clock the test steps while it runs),
//! a real Mosquitto broker with a subscriber recording what the agent
//! publishes, and the comparison of the agent's stored periods with the truth.
#![allow(dead_code)]

#[path = "../common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Duration as ChronoDuration, Timelike, Utc};
use linegate::machine::accounting::AccountSnapshot;
use linegate::machine::history;
use linegate::machine::{ClosedPeriod, MachineState, StateChange, StateSeconds};
use linegate::sim::{self, SimLine, SimOptions};
use linegate::store::Store;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

pub use common::Mosquitto;

pub const BIN: &str = env!("CARGO_BIN_EXE_linegate");
/// The agent's poll interval in these tests.
pub const POLL_MS: u64 = 100;
/// Speed of the simulated line: spells of 0.1 s to 18 s.
pub const SPEED: f64 = 50.0;
/// The tolerance: per state and period, 0.5 s plus 0.3 s per state
/// change of the truth in the period.
pub const TOLERANCE_MS: i64 = 500;
pub const TOLERANCE_PER_CHANGE_MS: i64 = 300;
/// The demo config's topic prefix.
const PREFIX: &str = "linegate/v1/demo/gw-demo";

// ---------- the simulated line ----------

pub async fn start_line(machines: usize, seed: u64, truth: &Path) -> (SimLine, CancellationToken) {
    let stop = CancellationToken::new();
    let line = sim::serve(
        SimOptions {
            machines,
            base_port: 0,
            seed,
            speed: SPEED,
            truth: Some(truth.to_path_buf()),
            honour_orders: true,
        },
        stop.clone(),
    )
    .await
    .expect("the simulated line starts");
    (line, stop)
}

/// The demo config of `line` (one-minute periods) with `POLL_MS` polls, no
/// debounce and an uplink to `broker`, written into `dir`.
pub fn write_config(line: &SimLine, dir: &Path, broker: &Mosquitto) -> PathBuf {
    let data = dir.join("data");
    let mut text = String::new();
    for l in sim::demo_config(line, &data).lines() {
        if l.starts_with("poll_ms = ") {
            text.push_str(&format!("poll_ms = {POLL_MS}\n"));
            continue;
        }
        text.push_str(l);
        text.push('\n');
        if l == "[machine.state]" {
            text.push_str("min_dwell_ms = 0\n");
        }
    }
    assert!(text.contains("period_minutes = 1"), "{text}");
    text.push_str(&format!("\n[uplink]\nurl = \"{}\"\n", broker.url()));
    let path = dir.join("linegate.toml");
    std::fs::write(&path, text).expect("write the config");
    path
}

pub fn data_dir(dir: &Path) -> PathBuf {
    dir.join("data")
}

// ---------- a wall clock the test steps ----------

/// Debian's libfaketime (multi-threaded build), for any architecture.
fn faketime_lib() -> PathBuf {
    let mut dirs = vec![PathBuf::from("/usr/lib/faketime")];
    if let Ok(entries) = std::fs::read_dir("/usr/lib") {
        dirs.extend(entries.flatten().map(|e| e.path().join("faketime")));
    }
    dirs.into_iter()
        .map(|d| d.join("libfaketimeMT.so.1"))
        .find(|p| p.exists())
        .expect("libfaketime is not installed: apt-get install libfaketime (scripts/test does)")
}

/// libfaketime's control file: the agent's wall clock is the real one plus
/// the offset written here, read again on every clock call
/// (`FAKETIME_NO_CACHE`); the monotonic clock is not faked.
pub struct FakeClock {
    file: PathBuf,
    lib: PathBuf,
}

impl FakeClock {
    pub fn new(dir: &Path, offset_s: i64) -> FakeClock {
        let c = FakeClock {
            file: dir.join("faketime.rc"),
            lib: faketime_lib(),
        };
        c.set(offset_s);
        c
    }

    /// Step the agent's wall clock to real time + `offset_s` (atomically).
    pub fn set(&self, offset_s: i64) {
        let tmp = self.file.with_extension("tmp");
        std::fs::write(&tmp, format!("{offset_s:+}\n")).expect("write the faketime file");
        std::fs::rename(&tmp, &self.file).expect("replace the faketime file");
    }
}

// ---------- the agent binary ----------

/// The agent as a child process; killed when dropped.
pub struct AgentProcess {
    child: Option<Child>,
    pub log: PathBuf,
}

impl AgentProcess {
    pub fn start(config: &Path, clock: Option<&FakeClock>, log: &Path) -> AgentProcess {
        let mut cmd = Command::new(BIN);
        cmd.arg("run")
            .arg("-c")
            .arg(config)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(log)
                    .expect("agent log"),
            );
        if let Some(c) = clock {
            cmd.env("LD_PRELOAD", &c.lib)
                .env("FAKETIME_TIMESTAMP_FILE", &c.file)
                .env("FAKETIME_NO_CACHE", "1")
                .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
                .env("DONT_FAKE_MONOTONIC", "1");
        }
        let child = cmd.spawn().expect("start the agent");
        AgentProcess {
            child: Some(child),
            log: log.to_path_buf(),
        }
    }

    fn signal(&self, name: &str) {
        let Some(c) = &self.child else { return };
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(c.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} failed");
    }

    /// SIGTERM, and wait for a clean exit.
    pub fn stop(mut self) {
        self.signal("TERM");
        let mut c = self.child.take().expect("a running agent");
        for _ in 0..300 {
            if let Ok(Some(status)) = c.try_wait() {
                assert!(
                    status.success(),
                    "agent exit {status}:\n{}",
                    self.log_text()
                );
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = c.kill();
        panic!(
            "the agent did not stop within 15 s of SIGTERM:\n{}",
            self.log_text()
        );
    }

    /// SIGKILL: the agent dies where it is.
    pub fn kill(mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

// ---------- what the agent published ----------

/// Records every state and utilisation message the agent publishes.
pub struct Subscriber {
    seen: Arc<Mutex<Vec<(String, Value)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Subscriber {
    pub async fn start(broker: &Mosquitto) -> Subscriber {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let subscribed = Arc::new(tokio::sync::Notify::new());
        let mut o = MqttOptions::new("truth-subscriber", "127.0.0.1", broker.port);
        o.set_keep_alive(Duration::from_secs(5));
        o.set_max_packet_size(1 << 22, 1 << 22);
        let (client, mut events) = AsyncClient::new(o, 100);
        let (s, n) = (seen.clone(), subscribed.clone());
        let task = tokio::spawn(async move {
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        for t in ["state", "utilisation"] {
                            let _ = client
                                .subscribe(format!("{PREFIX}/m/+/{t}"), QoS::AtLeastOnce)
                                .await;
                        }
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => n.notify_one(),
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let json = serde_json::from_slice(&p.payload).unwrap_or(Value::Null);
                        s.lock().expect("lock").push((p.topic.clone(), json));
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(10), subscribed.notified())
            .await
            .expect("the subscriber subscribes");
        Subscriber { seen, task }
    }

    /// Messages of one kind (`state`, `utilisation`) of one machine, by
    /// `seq`, duplicates (at-least-once delivery) dropped. Retained copies
    /// replayed at subscribe time are left out.
    pub fn messages(&self, machine: &str, kind: &str) -> Vec<Value> {
        let topic = format!("{PREFIX}/m/{machine}/{kind}");
        let by_seq: BTreeMap<u64, Value> = self
            .seen
            .lock()
            .expect("lock")
            .iter()
            .filter(|(t, _)| *t == topic)
            .filter_map(|(_, v)| v["seq"].as_u64().map(|s| (s, v.clone())))
            .collect();
        by_seq.into_values().collect()
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// ---------- the store ----------

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

/// Wait (up to 20 s) until every period stored for `machines` was published.
pub async fn wait_published(data_dir: &Path, sub: &Subscriber, machines: &[String]) {
    for _ in 0..400 {
        let stored = read_store(data_dir);
        let all = machines.iter().all(|m| {
            let n = stored.periods.iter().filter(|p| &p.machine == m).count();
            sub.messages(m, "utilisation").len() >= n
        });
        if all {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("stored periods were not all published within 20 s");
}

// ---------- the truth ----------

/// A timeline: `(since, state)`, oldest first; a state holds until the next.
pub type Timeline = Vec<(DateTime<Utc>, MachineState)>;

pub fn truth_timeline(truth: &Path, machine: &str) -> Timeline {
    let text = std::fs::read_to_string(truth).expect("the truth file");
    let mut line = Timeline::new();
    for l in text.lines() {
        let v: Value = serde_json::from_str(l).expect("a truth line is JSON");
        if v["machine"] != machine {
            continue;
        }
        let at = DateTime::parse_from_rfc3339(v["at"].as_str().expect("at"))
            .expect("at is RFC 3339")
            .with_timezone(&Utc);
        let state = match v["state"].as_str().expect("state") {
            "running" => MachineState::Running,
            "idle" => MachineState::Idle,
            "down" => MachineState::Down,
            "setup" => MachineState::Setup,
            other => panic!("the simulator has no state {other:?}"),
        };
        line.push((at, state));
    }
    line
}

pub fn agent_timeline(changes: &[StateChange], machine: &str) -> Timeline {
    changes
        .iter()
        .filter(|c| c.machine == machine)
        .map(|c| (c.since, c.state))
        .collect()
}

pub fn ms(d: ChronoDuration) -> i64 {
    d.num_milliseconds()
}

/// Milliseconds per state of `line` over `[from, to)` (offline before its first change).
pub fn integrate(
    line: &Timeline,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> BTreeMap<MachineState, i64> {
    let mut out: BTreeMap<MachineState, i64> = MachineState::ALL.iter().map(|s| (*s, 0)).collect();
    let mut state = MachineState::Offline;
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

pub fn changes_within(line: &Timeline, from: DateTime<Utc>, to: DateTime<Utc>) -> usize {
    line.iter().filter(|(t, _)| *t > from && *t < to).count()
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

/// The first whole minute after `t`.
pub fn next_minute(t: DateTime<Utc>) -> DateTime<Utc> {
    let floor = t
        .with_second(0)
        .and_then(|t| t.with_nanosecond(0))
        .expect("a minute");
    floor + ChronoDuration::minutes(1)
}

pub async fn sleep_until(t: DateTime<Utc>) {
    if let Ok(d) = (t - Utc::now()).to_std() {
        tokio::time::sleep(d).await;
    }
}

/// A machine's closed periods and its open one (from the final snapshot),
/// by start. Asserts that each adds up exactly to its length, that no two
/// share a start and that none overlaps the next.
pub fn one_timeline_of_periods(stored: &Stored, machine: &str) -> Vec<ClosedPeriod> {
    let mut all: Vec<ClosedPeriod> = stored
        .periods
        .iter()
        .filter(|p| p.machine == machine)
        .cloned()
        .collect();
    let snap = stored.snapshots.get(machine).expect("a snapshot");
    all.extend(snap.interval_so_far());
    all.sort_by_key(|p| p.start);
    for p in &all {
        let total: i64 = seconds_ms(&p.seconds).values().sum();
        assert_eq!(
            total,
            ms(p.end - p.start),
            "{machine} {}..{}: seconds add up to {total} ms: {:?}",
            p.start,
            p.end,
            p.seconds
        );
    }
    for pair in all.windows(2) {
        assert!(
            pair[0].start < pair[1].start,
            "{machine}: two periods start at {}",
            pair[0].start
        );
        assert!(
            pair[0].end <= pair[1].start,
            "{machine}: periods overlap: {}..{} and {}..{}",
            pair[0].start,
            pair[0].end,
            pair[1].start,
            pair[1].end
        );
    }
    all
}

/// Each period's seconds per machine state (running, idle, down, setup) are
/// the truth's over the same real time, within the tolerance; `real` maps a
/// period to the real time it covers, `observed` are the real windows in
/// which the agent was reading the machine. Returns the worst error in ms
/// and the number of truth changes compared.
pub fn assert_periods_match_truth(
    machine: &str,
    periods: &[ClosedPeriod],
    truth: &Timeline,
    real: impl Fn(&ClosedPeriod) -> (DateTime<Utc>, DateTime<Utc>),
    observed: &[(DateTime<Utc>, DateTime<Utc>)],
) -> (i64, usize) {
    let mut worst = 0;
    let mut all_changes = 0;
    for p in periods {
        let (from, to) = real(p);
        let mut t: BTreeMap<MachineState, i64> = BTreeMap::new();
        let mut changes = 0;
        for &(a, b) in observed {
            let (a, b) = (a.max(from), b.min(to));
            if b > a {
                for (s, v) in integrate(truth, a, b) {
                    *t.entry(s).or_default() += v;
                }
                changes += changes_within(truth, a, b);
            }
        }
        all_changes += changes;
        let bound = TOLERANCE_MS + TOLERANCE_PER_CHANGE_MS * changes as i64;
        let agent = seconds_ms(&p.seconds);
        for s in [
            MachineState::Running,
            MachineState::Idle,
            MachineState::Down,
            MachineState::Setup,
        ] {
            let (a, tr) = (agent[&s], t.get(&s).copied().unwrap_or(0));
            worst = worst.max((a - tr).abs());
            assert!(
                (a - tr).abs() <= bound,
                "{machine} {s} in {}..{} (real {from}..{to}): agent {a} ms, truth {tr} ms, \
                 bound {bound} ms ({changes} truth changes)",
                p.start,
                p.end
            );
        }
    }
    (worst, all_changes)
}

/// Every stored period of `machine` was published exactly once, with the
/// same bounds and seconds, and nothing else was published as a period.
pub fn assert_published_once(machine: &str, stored: &[ClosedPeriod], sub: &Subscriber) {
    let published = sub.messages(machine, "utilisation");
    let key = |v: &Value| {
        (
            v["period"]["start"].as_str().unwrap_or("").to_string(),
            v["period"]["end"].as_str().unwrap_or("").to_string(),
        )
    };
    let mut seen: BTreeMap<(String, String), usize> = BTreeMap::new();
    for v in &published {
        *seen.entry(key(v)).or_default() += 1;
    }
    assert_eq!(
        published.len(),
        stored.len(),
        "{machine}: {} periods stored, {} published",
        stored.len(),
        published.len()
    );
    for p in stored {
        let k = (history::ts(p.start), history::ts(p.end));
        assert_eq!(
            seen.get(&k).copied(),
            Some(1),
            "{machine}: period {k:?} not published exactly once"
        );
        let v = published.iter().find(|v| key(v) == k).expect("published");
        assert_eq!(
            v["seconds"]["running"].as_f64(),
            Some(p.seconds.running),
            "{machine} {k:?}: published running seconds differ from the stored ones"
        );
        assert_eq!(
            v["clock_step"]["by_s"].as_f64(),
            p.clock_step.map(|c| c.by_s),
            "{machine} {k:?}: the published clock_step differs from the stored one"
        );
    }
}

/// One published state message.
#[derive(Debug, Clone)]
pub struct StateMessage {
    pub since: DateTime<Utc>,
    pub state: String,
    pub prev: Option<String>,
    pub reason: Option<String>,
}

/// The state messages of `machine`, in `seq` order: `since` never goes
/// back, and each `prev` is the state of the message before it.
pub fn assert_state_messages_monotonic(machine: &str, sub: &Subscriber) -> Vec<StateMessage> {
    let msgs: Vec<StateMessage> = sub
        .messages(machine, "state")
        .into_iter()
        .map(|v| StateMessage {
            since: DateTime::parse_from_rfc3339(v["since"].as_str().expect("since"))
                .expect("since is RFC 3339")
                .with_timezone(&Utc),
            state: v["state"].as_str().expect("state").to_string(),
            prev: v["prev"].as_str().map(str::to_string),
            reason: v["reason"].as_str().map(str::to_string),
        })
        .collect();
    assert!(!msgs.is_empty(), "{machine}: no state message");
    for pair in msgs.windows(2) {
        assert!(
            pair[1].since >= pair[0].since,
            "{machine}: since goes back: {:?} then {:?}",
            pair[0],
            pair[1]
        );
        assert_eq!(
            pair[1].prev.as_deref(),
            Some(pair[0].state.as_str()),
            "{machine}: prev is not the state last published: {:?} then {:?}",
            pair[0],
            pair[1]
        );
    }
    msgs
}
