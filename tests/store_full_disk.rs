//! A full disk, for real: a small tmpfs mounted as the agent's data folder
//! and filled to the brim with a filler file, the real `linegate` binary on
//! a simulated line (real Modbus TCP, in-process), a real Mosquitto, and a
//! QoS 1 subscriber with a persistent session that checks what the central
//! team would see.
//!
//! The truth is the simulator's own truth file: every state change it made
//! while the disk was full must reach the subscriber (the simulator's
//! sequence of states is a subsequence of the agent's: a read that straddles
//! a change may add a passing state, never remove one), and `seq` has no
//! hole except the will slot after each birth. Telemetry that could not be
//! stored is counted in `dropped_telemetry`, and nothing else is lost
//! (`lost_events` stays 0).
//!
//! An order running on a simulated machine while the disk is full has every
//! status delivered once space is back (the simulator makes exactly the
//! order's quantity), and every period closed meanwhile is stored and
//! published once and matches the truth.
//!
//! Mounting needs root (CI runs as root); without it each test says so and
//! passes without running. `SHOW_AGENT_LOG=1` (with `--nocapture`) prints
//! the agent's warnings and store lines at the end of the agent tests.

mod truth_support;
mod uplink_support;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use linegate::store::health::RESERVE_FILE;
use linegate::store::Store;
use linegate::uplink::outbox::{self, MessageClass};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::Value;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use truth_support::Mosquitto;
use uplink_support::Gate;

const PREFIX: &str = "linegate/v1/demo/gw-demo";
const LONG: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------
// A small file system that can be filled.

/// A tmpfs of a few MiB mounted on a temporary folder; unmounted when dropped.
struct TinyDisk {
    dir: tempfile::TempDir,
}

impl TinyDisk {
    /// `None` (with a printed reason) when not root.
    fn mount(test: &str, mib: u64) -> Option<TinyDisk> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("SKIPPED {test}: mounting a small tmpfs needs root (CI runs as root)");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("run mount");
        assert!(status.success(), "mount -t tmpfs failed");
        Some(TinyDisk { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Write `name` until the file system has not one byte left; returns
    /// the bytes written.
    fn fill(&self, name: &str) -> u64 {
        let mut f = std::fs::File::create(self.path().join(name)).unwrap();
        let mut written = 0u64;
        for chunk in [1 << 20, 64 << 10, 4 << 10, 512, 1] {
            let buf = vec![0xA5u8; chunk];
            while f.write_all(&buf).is_ok() {
                written += chunk as u64;
            }
        }
        let _ = f.sync_all();
        written
    }

    fn unfill(&self, name: &str) {
        std::fs::remove_file(self.path().join(name)).unwrap();
    }

    fn free_bytes(&self) -> u64 {
        linegate::store::health::free_bytes(self.path()).unwrap()
    }
}

impl Drop for TinyDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

// ---------------------------------------------------------------------------
// The simulated line, the agent process, the subscriber.

struct Line {
    dir: tempfile::TempDir,
    config: PathBuf,
    truth: PathBuf,
    stop: CancellationToken,
}

impl Line {
    /// Four simulated machines at speed 40 (spells of 0.125 s to 22 s, read
    /// every 50 ms), the agent's data folder on
    /// `data_dir`, a reserve of `reserve_mb`.
    async fn start(broker_url: &str, data_dir: &Path, reserve_mb: u64) -> Line {
        let dir = tempfile::tempdir().unwrap();
        let truth = dir.path().join("truth.jsonl");
        let stop = CancellationToken::new();
        let line = linegate::sim::serve(
            linegate::sim::SimOptions {
                machines: 4,
                base_port: 0,
                speed: 40.0,
                truth: Some(truth.clone()),
                ..Default::default()
            },
            stop.clone(),
        )
        .await
        .unwrap();
        let mut text = String::new();
        for l in linegate::sim::demo_config(&line, data_dir).lines() {
            if l.starts_with("poll_ms = ") {
                text.push_str("poll_ms = 50\n");
                continue;
            }
            text.push_str(l);
            text.push('\n');
            if l == "[machine.state]" {
                text.push_str("min_dwell_ms = 0\n");
            }
        }
        text.push_str(&format!(
            "\n[store]\nreserve_mb = {reserve_mb}\n\n[uplink]\nurl = {broker_url:?}\n\
             keepalive_s = 5\nheartbeat_s = 2\nbackoff_min_ms = 50\nbackoff_max_ms = 500\n"
        ));
        let config = dir.path().join("linegate.toml");
        std::fs::write(&config, text).unwrap();
        Line {
            dir,
            config,
            truth,
            stop,
        }
    }

    /// The simulator's states per machine, changes made in `[from, to]`
    /// that lasted at least [`MIN_SPELL_MS`] (a shorter one may fall
    /// between two reads), consecutive repeats merged.
    fn truth_states(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> BTreeMap<String, Vec<String>> {
        let text = std::fs::read_to_string(&self.truth).unwrap_or_default();
        let mut changes: BTreeMap<String, Vec<(DateTime<Utc>, String)>> = BTreeMap::new();
        for l in text.lines() {
            let v: Value = serde_json::from_str(l).expect("a truth line is JSON");
            let at = DateTime::parse_from_rfc3339(v["at"].as_str().unwrap())
                .unwrap()
                .with_timezone(&Utc);
            changes
                .entry(v["machine"].as_str().unwrap().to_string())
                .or_default()
                .push((at, v["state"].as_str().unwrap().to_string()));
        }
        let mut out = BTreeMap::new();
        for (machine, list) in changes {
            let mut states: Vec<String> = Vec::new();
            for (i, (at, state)) in list.iter().enumerate() {
                let end = list.get(i + 1).map_or(Utc::now(), |(next, _)| *next);
                let lasted = (end - *at).num_milliseconds();
                if *at < from || *at > to || lasted < MIN_SPELL_MS {
                    continue;
                }
                if states.last() != Some(state) {
                    states.push(state.clone());
                }
            }
            if !states.is_empty() {
                out.insert(machine, states);
            }
        }
        out
    }
}

/// Shortest spell of the simulator that the agent must have seen: ten reads.
const MIN_SPELL_MS: i64 = 500;

impl Drop for Line {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

struct AgentProcess {
    child: Child,
    log: PathBuf,
}

impl AgentProcess {
    fn start(line: &Line, n: usize) -> AgentProcess {
        let log = line.dir.path().join(format!("agent-{n}.log"));
        let child = Command::new(env!("CARGO_BIN_EXE_linegate"))
            .arg("-v")
            .arg("run")
            .arg("-c")
            .arg(&line.config)
            .env_remove("RUST_LOG")
            .env_remove("NOTIFY_SOCKET")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start linegate run");
        AgentProcess { child, log }
    }

    fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGTERM and wait for a clean exit.
    async fn stop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let stopped = eventually(Duration::from_secs(20), || {
            matches!(self.child.try_wait(), Ok(Some(_)))
        })
        .await;
        assert!(
            stopped,
            "agent did not stop on SIGTERM\n{}",
            self.log_tail()
        );
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let from = lines.len().saturating_sub(40);
        format!(
            "--- agent log ({}) ---\n{}",
            self.log.display(),
            lines[from..].join("\n")
        )
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Debug, Clone)]
struct Seen {
    topic: String,
    json: Value,
}

impl Seen {
    fn seq(&self) -> Option<u64> {
        self.json["seq"].as_u64()
    }
    fn is_birth(&self) -> bool {
        self.topic.ends_with("/status") && self.json["online"] == true
    }
    fn kind(&self) -> &str {
        self.topic.rsplit('/').next().unwrap_or("")
    }
}

/// QoS 1, persistent session, on `{PREFIX}/#`.
struct Subscriber {
    seen: Arc<Mutex<Vec<Seen>>>,
    subacks: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl Subscriber {
    async fn start(port: u16, name: &str) -> Subscriber {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let subacks = Arc::new(AtomicU64::new(0));
        let mut o = MqttOptions::new(name, "127.0.0.1", port);
        o.set_keep_alive(Duration::from_secs(5))
            .set_clean_session(false)
            .set_max_packet_size(1 << 22, 1 << 22);
        let (client, mut events) = AsyncClient::new(o, 100);
        let (s, n) = (seen.clone(), subacks.clone());
        let task = tokio::spawn(async move {
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        let _ = client
                            .subscribe(format!("{PREFIX}/#"), QoS::AtLeastOnce)
                            .await;
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        n.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let json = serde_json::from_slice(&p.payload).unwrap_or(Value::Null);
                        s.lock().unwrap().push(Seen {
                            topic: p.topic.clone(),
                            json,
                        });
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
        });
        let sub = Subscriber {
            seen,
            subacks,
            task,
        };
        assert!(
            eventually(Duration::from_secs(10), || sub
                .subacks
                .load(Ordering::SeqCst)
                > 0)
            .await,
            "subscriber did not subscribe"
        );
        sub
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Each machine's states, in seq order, duplicates removed.
    fn states(&self) -> BTreeMap<String, Vec<String>> {
        let by_seq: BTreeMap<u64, Seen> = self
            .seen()
            .into_iter()
            .filter(|m| m.kind() == "state")
            .filter_map(|m| m.seq().map(|s| (s, m)))
            .collect();
        let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for m in by_seq.values() {
            out.entry(m.json["machine"].as_str().unwrap_or("").to_string())
                .or_default()
                .push(m.json["state"].as_str().unwrap_or("").to_string());
        }
        out
    }

    fn last_birth(&self) -> Option<Seen> {
        self.seen().into_iter().rfind(Seen::is_birth)
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    while !cond() {
        if tokio::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    true
}

/// Whether `needle` appears in `hay` in order (not necessarily adjacent).
fn is_subsequence(needle: &[String], hay: &[String]) -> bool {
    let mut it = hay.iter();
    needle.iter().all(|n| it.any(|h| h == n))
}

/// Machines whose truth states are not all in the agent's, in order.
fn missing_states(
    truth: &BTreeMap<String, Vec<String>>,
    agent: &BTreeMap<String, Vec<String>>,
) -> Vec<String> {
    truth
        .iter()
        .filter(|(m, states)| !is_subsequence(states, agent.get(*m).map_or(&[][..], |v| v)))
        .map(|(m, states)| format!("{m}: truth {states:?}, agent {:?}", agent.get(m)))
        .collect()
}

/// Seqs between the first and the last seen that were not seen, other than
/// the will slot after each birth (when status messages carry a seq).
fn unexplained_holes(seen: &[Seen]) -> Vec<u64> {
    let got: BTreeSet<u64> = seen.iter().filter_map(Seen::seq).collect();
    let will_slots: BTreeSet<u64> = seen
        .iter()
        .filter(|m| m.is_birth())
        .filter_map(|m| m.seq().map(|s| s + 1))
        .collect();
    let (Some(&first), Some(&last)) = (got.first(), got.last()) else {
        return Vec::new();
    };
    (first..=last)
        .filter(|s| !got.contains(s) && !will_slots.contains(s))
        .collect()
}

// ---------------------------------------------------------------------------

/// The disk fills up twice while the broker is away: first the agent
/// releases its reserve and goes on storing state changes and periods
/// (dropping telemetry, counted); then the reserve's space is filled too and
/// the agent holds what it cannot store in memory. Space is freed, the
/// broker comes back: every state change of the simulator arrives, with no
/// hole in seq, and the dropped telemetry is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_filled_to_the_brim_while_the_link_is_down_loses_only_counted_telemetry() {
    let Some(disk) = TinyDisk::mount("full_disk_while_the_link_is_down", 48) else {
        return;
    };
    let mut broker = Mosquitto::start();
    let gate = Gate::start(broker.port).await;
    gate.close();
    broker.stop();
    let line = Line::start(&gate.url(), &disk.data_dir(), 4).await;
    let mut agent = AgentProcess::start(&line, 1);

    let reserve = disk.data_dir().join(RESERVE_FILE);
    assert!(
        eventually(Duration::from_secs(10), || reserve.exists()).await,
        "the agent makes its reserve at start\n{}",
        agent.log_tail()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let from = Utc::now();

    // 1. The disk fills: the agent releases its reserve on the first
    // write that fails.
    disk.fill("filler-1");
    assert_eq!(disk.free_bytes(), 0, "filled to the brim");
    assert!(
        eventually(Duration::from_secs(20), || !reserve.exists()).await,
        "the reserve is released when the disk is full\n{}",
        agent.log_tail()
    );
    tokio::time::sleep(Duration::from_secs(6)).await;

    // 2. The reserve's space fills too: nothing can be written any more.
    disk.fill("filler-2");
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert!(
        agent.running(),
        "the agent runs on a full disk\n{}",
        agent.log_tail()
    );

    // 3. Space comes back, then the broker.
    disk.unfill("filler-2");
    disk.unfill("filler-1");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let to = Utc::now();
    broker.resume();
    let sub = Subscriber::start(broker.port, "central-full-disk").await;
    gate.open();

    let truth = line.truth_states(from, to);
    assert!(
        truth.values().map(Vec::len).sum::<usize>() >= 2,
        "the simulator changed state while the disk was full: {truth:?}"
    );
    let delivered = eventually(LONG, || {
        missing_states(&truth, &sub.states()).is_empty()
            && unexplained_holes(&sub.seen()).is_empty()
    })
    .await;
    assert!(
        delivered,
        "every state change arrives and seq has no hole\nmissing: {:?}\nholes: {:?}\n{}",
        missing_states(&truth, &sub.states()),
        unexplained_holes(&sub.seen()),
        agent.log_tail()
    );
    let birth = sub.last_birth().expect("a birth");
    assert!(
        birth.json["dropped_telemetry"].as_u64().unwrap_or(0) > 0,
        "telemetry that could not be stored is counted: {}",
        birth.json
    );
    assert_eq!(birth.json["lost_events"], 0, "{}", birth.json);
    assert!(
        eventually(Duration::from_secs(30), || reserve.exists()).await,
        "the reserve is made again once space is back\n{}",
        agent.log_tail()
    );
    // Periods closed while the disk was full arrived too (1-minute periods
    // may not close in this window, so only when there were some).
    let periods = sub
        .seen()
        .iter()
        .filter(|m| m.kind() == "utilisation")
        .count();
    println!(
        "truth changes while full: {}, dropped_telemetry {}, utilisation messages {periods}",
        truth.values().map(Vec::len).sum::<usize>(),
        birth.json["dropped_telemetry"]
    );
    if std::env::var_os("SHOW_AGENT_LOG").is_some() {
        let text = std::fs::read_to_string(&agent.log).unwrap_or_default();
        for l in text
            .lines()
            .filter(|l| !l.contains("INFO") || l.contains("store"))
        {
            println!("{l}");
        }
    }
    agent.stop().await;
}

/// The agent starts on a disk that is already full, with no reserve left to
/// release: it runs, polls and holds what it reads; once space is freed it
/// opens its store, and every state change since its start arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_starts_on_a_full_disk_and_recovers_when_space_is_freed() {
    let Some(disk) = TinyDisk::mount("starts_on_a_full_disk", 48) else {
        return;
    };
    let broker = Mosquitto::start();
    let sub = Subscriber::start(broker.port, "central-start-full").await;
    let line = Line::start(&broker.url(), &disk.data_dir(), 4).await;

    // First life: a store and a reserve exist.
    let mut first = AgentProcess::start(&line, 1);
    assert!(
        eventually(LONG, || sub.states().len() == 4).await,
        "both machines report\n{}",
        first.log_tail()
    );
    first.stop().await;

    // The reserve is gone (another program used the space) and the disk is full.
    std::fs::remove_file(disk.data_dir().join(RESERVE_FILE)).unwrap();
    disk.fill("filler");
    assert_eq!(disk.free_bytes(), 0, "filled to the brim");

    let from = Utc::now();
    let mut agent = AgentProcess::start(&line, 2);
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert!(
        agent.running(),
        "the agent starts on a full disk\n{}",
        agent.log_tail()
    );
    disk.unfill("filler");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let to = Utc::now();

    let truth = line.truth_states(from, to);
    assert!(
        truth.values().map(Vec::len).sum::<usize>() >= 2,
        "the simulator changed state while the disk was full: {truth:?}"
    );
    let delivered = eventually(LONG, || {
        missing_states(&truth, &sub.states()).is_empty()
            && unexplained_holes(&sub.seen()).is_empty()
    })
    .await;
    assert!(
        delivered,
        "every state change since the start arrives, no hole in seq\nmissing: {:?}\nholes: {:?}\n{}",
        missing_states(&truth, &sub.states()),
        unexplained_holes(&sub.seen()),
        agent.log_tail()
    );
    let birth = sub.last_birth().expect("a birth");
    assert_eq!(birth.json["lost_events"], 0, "{}", birth.json);
    assert!(
        eventually(Duration::from_secs(30), || disk
            .data_dir()
            .join(RESERVE_FILE)
            .exists())
        .await,
        "the reserve is made again\n{}",
        agent.log_tail()
    );
    if std::env::var_os("SHOW_AGENT_LOG").is_some() {
        let text = std::fs::read_to_string(&agent.log).unwrap_or_default();
        for l in text
            .lines()
            .filter(|l| !l.contains("INFO") || l.contains("store"))
        {
            println!("{l}");
        }
    }
    agent.stop().await;
}

/// A new gateway on a disk that is already full: the store cannot even be
/// created. The agent runs and polls anyway, holds what it reads, creates
/// its store once space is freed, and every state change since its start
/// arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_gateway_on_a_full_disk_creates_its_store_once_space_is_freed() {
    let Some(disk) = TinyDisk::mount("new_gateway_on_a_full_disk", 32) else {
        return;
    };
    let broker = Mosquitto::start();
    let sub = Subscriber::start(broker.port, "central-new-full").await;
    let line = Line::start(&broker.url(), &disk.data_dir(), 4).await;
    std::fs::create_dir_all(disk.data_dir()).unwrap();
    disk.fill("filler");
    assert_eq!(disk.free_bytes(), 0, "filled to the brim");

    let from = Utc::now();
    let mut agent = AgentProcess::start(&line, 1);
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert!(
        agent.running(),
        "the agent starts without a store\n{}",
        agent.log_tail()
    );
    assert!(
        sub.states().is_empty(),
        "nothing could be stored, nothing sent"
    );
    disk.unfill("filler");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let to = Utc::now();

    let truth = line.truth_states(from, to);
    assert!(
        truth.values().map(Vec::len).sum::<usize>() >= 2,
        "the simulator changed state while the disk was full: {truth:?}"
    );
    let delivered = eventually(LONG, || {
        missing_states(&truth, &sub.states()).is_empty()
            && unexplained_holes(&sub.seen()).is_empty()
    })
    .await;
    assert!(
        delivered,
        "every state change since the start arrives, no hole in seq\nmissing: {:?}\nholes: {:?}\n{}",
        missing_states(&truth, &sub.states()),
        unexplained_holes(&sub.seen()),
        agent.log_tail()
    );
    let birth = sub.last_birth().expect("a birth");
    assert_eq!(birth.json["lost_events"], 0, "{}", birth.json);
    assert!(
        eventually(Duration::from_secs(30), || disk
            .data_dir()
            .join(RESERVE_FILE)
            .exists())
        .await,
        "the reserve is made once there is room\n{}",
        agent.log_tail()
    );
    agent.stop().await;
}

/// The uplink's own bookkeeping after a lost connection (marking the link
/// down, reserving seqs for the next birth) fails, here because another
/// program holds the store's write lock (SQLITE_BUSY after the busy
/// timeout; SQLite keeps part of a failed write's WAL space for the next
/// small write, so a full disk does not fail these small writes every
/// time): the uplink keeps running, and once the store writes again it
/// reconnects and delivers what was stored meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_uplink_survives_a_store_error_during_reconnect() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start();
    let gate = Gate::start(broker.port).await;
    let store = Store::open_resilient(dir.path(), 0).unwrap();
    store
        .call(|c| outbox::configure(c, outbox::OutboxPolicy::from_mb(64)))
        .await
        .unwrap();
    let sub = uplink_support::Subscriber::start(broker.port, "central-reconnect").await;
    let agent = uplink_support::Agent::start(uplink_support::uplink_config(&gate.url()), store);
    let mut sent = Vec::new();
    for n in 0..5 {
        sent.push(agent.enqueue(MessageClass::Durable, n).await);
    }
    uplink_support::wait_for("the first messages", LONG, || {
        sent.iter().all(|s| sub.data_by_seq().contains_key(s))
    })
    .await;

    // Another program takes the write lock and keeps it; the link is lost.
    let (release, released) = std::sync::mpsc::channel::<()>();
    let (locked_tx, locked) = std::sync::mpsc::channel::<()>();
    let db = dir.path().join(linegate::store::FILE_NAME);
    let locker = std::thread::spawn(move || {
        let c = rusqlite::Connection::open(db).unwrap();
        c.execute_batch("BEGIN IMMEDIATE").unwrap();
        locked_tx.send(()).unwrap();
        let _ = released.recv();
        c.execute_batch("ROLLBACK").unwrap();
    });
    locked.recv().unwrap();
    gate.cut();
    // The reconnect bookkeeping fails now (each try after the 5 s busy timeout).
    uplink_support::wait_for("a store error in the uplink", LONG, || {
        agent
            .stats
            .last_error()
            .is_some_and(|e| e.starts_with("store"))
    })
    .await;
    gate.open();
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert!(!agent.task.is_finished(), "the uplink is still running");
    assert!(
        !agent.stats.connected.load(Ordering::Relaxed),
        "no birth without its seqs"
    );

    release.send(()).unwrap();
    locker.join().unwrap();
    for n in 5..10 {
        sent.push(agent.enqueue(MessageClass::Durable, n).await);
    }
    uplink_support::wait_for("everything, after the lock was released", LONG, || {
        sent.iter().all(|s| sub.data_by_seq().contains_key(s))
    })
    .await;
    let births = sub
        .seen()
        .iter()
        .filter(|m| m.is_status() && m.online() == Some(true))
        .count();
    assert!(births >= 2, "it reconnected: {births} births");
    agent.stop().await.expect("a clean end");
}

/// A table of the test's own in the agent's store file, to take the space
/// left inside the file (free pages, a recycled WAL) that filling the file
/// system does not take: SQLite reuses it, so small writes would go on
/// working on a full disk for a long time.
struct StoreSlack {
    conn: rusqlite::Connection,
}

impl StoreSlack {
    /// Made while there is space.
    fn prepare(data_dir: &Path) -> StoreSlack {
        let conn = rusqlite::Connection::open(data_dir.join("linegate.db")).unwrap();
        conn.busy_timeout(Duration::from_secs(10)).unwrap();
        conn.execute_batch("CREATE TABLE IF NOT EXISTS test_slack (b BLOB)")
            .unwrap();
        StoreSlack { conn }
    }

    /// Fill the slack until SQLite says the disk is full; returns the bytes taken.
    fn take(&self) -> u64 {
        let mut taken = 0u64;
        for size in [256 << 10, 16 << 10, 1 << 10, 64] {
            for _ in 0..100_000 {
                match self
                    .conn
                    .execute("INSERT INTO test_slack VALUES (zeroblob(?1))", [size])
                {
                    Ok(_) => taken += size as u64,
                    Err(_) => break,
                }
            }
        }
        taken
    }

    /// Give the slack back (once the disk has space again).
    fn give_back(&self) {
        self.conn.execute_batch("DROP TABLE test_slack").unwrap();
    }
}

/// Publish one order command (QoS 1) and keep the connection open while
/// the returned task runs (the agent answers on `orders/status`).
async fn publish_order(port: u16, body: Value) -> JoinHandle<()> {
    let o = MqttOptions::new("planner-full-disk", "127.0.0.1", port);
    let (client, mut events) = AsyncClient::new(o, 10);
    client
        .publish(
            format!("{PREFIX}/orders/cmd"),
            QoS::AtLeastOnce,
            false,
            body.to_string().into_bytes(),
        )
        .await
        .expect("planner publishes");
    tokio::spawn(async move {
        let _client = client;
        loop {
            if events.poll().await.is_err() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    })
}

/// An order runs on a simulated machine while the disk fills to the brim
/// (reserve released, then its space filled too, so order writes fail):
/// once space is freed, the central team sees every status of the order in
/// order (released, running, completed with the quantity the simulated
/// machine made), seq has no hole, and nothing is lost (`lost_events` 0 in
/// the store).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_running_while_the_disk_is_full_reports_every_status_once_space_is_back() {
    let Some(disk) = TinyDisk::mount("order_while_the_disk_is_full", 48) else {
        return;
    };
    let broker = Mosquitto::start();
    // The agent reaches the broker through a gate: cut while the disk is
    // full, so the outbox has to grow (a drained outbox reuses its pages).
    let gate = Gate::start(broker.port).await;
    let line = Line::start(&gate.url(), &disk.data_dir(), 4).await;
    let sub = Subscriber::start(broker.port, "central-full-disk-orders").await;
    let mut agent = AgentProcess::start(&line, 1);
    assert!(
        eventually(Duration::from_secs(20), || sub.last_birth().is_some()).await,
        "the agent comes online\n{}",
        agent.log_tail()
    );
    // The agent subscribes to orders/cmd right after its birth.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let slack = StoreSlack::prepare(&disk.data_dir());
    let quantity = 200u64;
    let order_statuses = |sub: &Subscriber| -> Vec<Value> {
        let by_seq: BTreeMap<u64, Value> = sub
            .seen()
            .into_iter()
            .filter(|m| m.topic == format!("{PREFIX}/orders/status"))
            .filter(|m| m.json["order_id"] == "FD-1")
            .filter_map(|m| m.seq().map(|s| (s, m.json)))
            .collect();
        by_seq.into_values().collect()
    };
    let planner = publish_order(
        broker.port,
        serde_json::json!({"type": "order", "order_id": "FD-1", "revision": 1, "product": "P-4711",
                           "quantity": quantity, "machine": "sim01"}),
    )
    .await;
    assert!(
        eventually(LONG, || order_statuses(&sub)
            .iter()
            .any(|s| s["state"] == "running"))
        .await,
        "the order runs: {:?}\n{}",
        order_statuses(&sub),
        agent.log_tail()
    );

    // The link goes and the disk fills while the order runs; then the
    // reserve's space fills too.
    gate.cut();
    disk.fill("filler-1");
    let reserve = disk.data_dir().join(RESERVE_FILE);
    assert!(
        eventually(Duration::from_secs(20), || !reserve.exists()).await,
        "the reserve is released when the disk is full\n{}",
        agent.log_tail()
    );
    disk.fill("filler-2");
    let slack_taken = slack.take();
    let log_of = |agent: &AgentProcess| std::fs::read_to_string(&agent.log).unwrap_or_default();
    assert!(
        eventually(Duration::from_secs(20), || log_of(&agent)
            .contains("writes fail even after the reserve was released"))
        .await,
        "writes fail once the reserve's space is taken too (slack taken: {slack_taken} bytes)\n{}",
        agent.log_tail()
    );
    let full_from = Utc::now();
    let statuses_when_full = order_statuses(&sub).len();
    assert!(
        !order_statuses(&sub)
            .iter()
            .any(|s| s["state"] == "completed"),
        "the order is still running when the disk is full"
    );
    // Long enough for the order (200 parts of 0.15 s) to finish meanwhile,
    // and for a minute to turn (1-minute periods close while writes fail).
    tokio::time::sleep(Duration::from_secs(35)).await;
    truth_support::sleep_until(
        truth_support::next_minute(full_from) + chrono::Duration::seconds(2),
    )
    .await;
    assert!(
        agent.running(),
        "the agent runs on a full disk\n{}",
        agent.log_tail()
    );
    let full_to = Utc::now();
    disk.unfill("filler-2");
    disk.unfill("filler-1");
    slack.give_back();
    tokio::time::sleep(Duration::from_secs(1)).await;
    gate.open();

    let completed = eventually(LONG, || {
        order_statuses(&sub)
            .iter()
            .any(|s| s["state"] == "completed")
            && unexplained_holes(&sub.seen()).is_empty()
    })
    .await;
    let statuses = order_statuses(&sub);
    assert!(
        completed,
        "the order's completion arrives once space is back, seq without holes\nstatuses: {statuses:?}\nholes: {:?}\n{}",
        unexplained_holes(&sub.seen()),
        agent.log_tail()
    );
    let path: Vec<&str> = statuses
        .iter()
        .map(|s| s["state"].as_str().unwrap_or("?"))
        .fold(Vec::new(), |mut p, s| {
            if p.last() != Some(&s) {
                p.push(s);
            }
            p
        });
    assert_eq!(
        path,
        ["accepted", "queued", "released", "running", "completed"],
        "every status of the order, in order: {statuses:?}"
    );
    let done = statuses.last().expect("a completed status");
    assert_eq!(done["state"], "completed", "completion is the last status");
    // The simulated machine makes exactly the order's quantity, then idles.
    assert_eq!(
        done["produced"].as_u64(),
        Some(quantity),
        "the parts the simulated machine made: {done}"
    );
    let birth = sub.last_birth().expect("a birth");
    assert_eq!(birth.json["lost_events"], 0, "{}", birth.json);
    println!(
        "order statuses before the disk filled: {statuses_when_full}, after: {}",
        statuses.len()
    );
    planner.abort();
    agent.stop().await;
    let store = Store::open_existing(&disk.data_dir()).expect("the store opens");
    let lost = store
        .call_blocking(|c| linegate::store::health::lost_events(c))
        .expect("lost_events reads");
    assert_eq!(lost, 0, "nothing was lost");
    drop(store);

    // Every period closed in the run (1-minute periods, some of them while
    // the disk was full) is stored once, published once with the stored
    // seconds, and matches the simulator's truth.
    let stored = truth_support::read_store(&disk.data_dir());
    let mut closed_while_full = 0;
    for n in 1..=4 {
        let machine = linegate::sim::machine_id(n - 1);
        let periods: Vec<_> = stored
            .periods
            .iter()
            .filter(|p| p.machine == machine)
            .cloned()
            .collect();
        closed_while_full += periods
            .iter()
            .filter(|p| p.end > full_from && p.end < full_to)
            .count();
        let published: Vec<Value> = sub
            .seen()
            .into_iter()
            .filter(|m| m.topic == format!("{PREFIX}/m/{machine}/utilisation"))
            .filter_map(|m| m.seq().map(|s| (s, m.json)))
            .collect::<BTreeMap<u64, Value>>()
            .into_values()
            .collect();
        assert_eq!(
            published.len(),
            periods.len(),
            "{machine}: each stored period is published once: stored {:?}, published {published:?}",
            periods.iter().map(|p| (p.start, p.end)).collect::<Vec<_>>()
        );
        for p in &periods {
            let start = linegate::machine::history::ts(p.start);
            let same: Vec<&Value> = published
                .iter()
                .filter(|v| v["period"]["start"] == start.as_str())
                .collect();
            assert_eq!(same.len(), 1, "{machine}: period at {start} published once");
            assert_eq!(
                same[0]["seconds"]["running"].as_f64(),
                Some(p.seconds.running),
                "{machine} {start}: published seconds are the stored ones"
            );
        }
        // The truth, from the agent's first read of the machine on.
        let first_read = stored
            .changes
            .iter()
            .find(|c| c.machine == machine)
            .map(|c| c.since)
            .expect("the agent read the machine");
        let truth = truth_support::truth_timeline(&line.truth, &machine);
        let whole: Vec<_> = periods
            .iter()
            .filter(|p| p.start >= first_read)
            .cloned()
            .collect();
        truth_support::assert_periods_match_truth(
            &machine,
            &whole,
            &truth,
            |p| (p.start, p.end),
            &[(first_read, Utc::now())],
        );
    }
    assert!(
        closed_while_full >= 4,
        "every machine closed a period while the disk was full: {closed_while_full}"
    );
    println!("periods closed while the disk was full: {closed_while_full}");
    let log = std::fs::read_to_string(&agent.log).unwrap_or_default();
    let notable: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("WARN") || l.contains("ERROR") || l.contains("store"))
        .filter(|l| !l.contains("DEBUG"))
        .collect();
    assert!(
        log.contains("order changes stored again"),
        "order changes were held while the disk was full, and stored once space was back\n{}",
        notable.join("\n")
    );
}
