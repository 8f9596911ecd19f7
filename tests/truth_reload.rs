//! SIGHUP reloads against the ground truth: the real binary (`linegate run`)
//! reads simulated machines (`linegate simulate`, which writes its own truth
//! file) over real Modbus TCP and reports to a real Mosquitto broker, where a
//! subscriber records everything from before the agent starts to after it
//! stops. A reload that changes nothing must leave every machine's state,
//! timeline and periods untouched and keep the connection (no new birth); a
//! reload that removes one machine, adds another and changes the bus of a
//! third, then one that changes `[uplink]`, must end the removed one with a
//! clear reason, start the added one cleanly, leave the machine that stays
//! (on its reconnected bus) untouched, and reconnect only for the uplink.

mod common;
mod outage_support;
mod uplink_support;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use linegate::machine::MachineState;
use outage_support::*;
use serde_json::Value;
use uplink_support::{Seen, Subscriber, PREFIX};

const BIN: &str = env!("CARGO_BIN_EXE_linegate");
/// Upper bound for anything the test waits for (never a speed assertion).
const PATIENCE: Duration = Duration::from_secs(30);

/// A child process killed when the test ends, however it ends.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "no {what} within {PATIENCE:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `linegate simulate` on free ports, writing its truth file; returns the
/// process and the config it wrote (with `gw1`/`site1`, the subscriber's
/// prefix, an uplink to `broker` and no state debounce).
fn simulate(dir: &Path, machines: usize, broker: &str) -> (Reaped, String) {
    let config = dir.join("sim.toml");
    let child = Command::new(BIN)
        .args(["simulate", "--machines", &machines.to_string()])
        .args(["--base-port", "0", "--seconds", "300", "--speed", "10"])
        .arg("--truth")
        .arg(dir.join("truth.jsonl"))
        .arg("--write-config")
        .arg(&config)
        .arg("--data-dir")
        .arg(dir.join("data"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start linegate simulate");
    let sim = Reaped(child);
    let text = wait_for("simulator config", || {
        fs::read_to_string(&config).ok().filter(|t| !t.is_empty())
    });
    let mut out = String::new();
    for l in text.lines() {
        match l {
            "id = \"gw-demo\"" => out.push_str("id = \"gw1\"\n"),
            "site = \"demo\"" => out.push_str("site = \"site1\"\n"),
            _ => {
                out.push_str(l);
                out.push('\n');
                if l == "[machine.state]" {
                    out.push_str("min_dwell_ms = 0\n");
                }
            }
        }
    }
    let uplink =
        format!("\n[uplink]\nurl = \"{broker}\"\nbackoff_min_ms = 200\nbackoff_max_ms = 1000\n");
    // Top-level tables come before the [[bus]]/[[machine]] arrays' tables.
    let i = out.find("\n[[bus]]").expect("the demo config has buses");
    (sim, format!("{}{}{}", &out[..i], uplink, &out[i..]))
}

/// The config without the `[[bus]]` and `[[machine]]` entries (with their
/// sub-tables) of machine `id`.
fn without_machine(config: &str, id: &str) -> String {
    let mut blocks = config.split("\n[[");
    let mut out = blocks.next().unwrap_or_default().to_string();
    let mut skipping = false;
    for b in blocks {
        let header = b.split("]]").next().unwrap_or_default();
        if !header.contains('.') {
            let own = b
                .lines()
                .find(|l| l.starts_with("id = "))
                .unwrap_or_default();
            skipping = own == format!("id = \"{id}\"") || own == format!("id = \"bus-{id}\"");
        }
        if !skipping {
            out.push_str("\n[[");
            out.push_str(b);
        }
    }
    out
}

/// The config with bus `id`'s `timeout_ms` set to `ms`.
fn with_bus_timeout(config: &str, id: &str, ms: u64) -> String {
    let at = config
        .find(&format!("id = \"{id}\""))
        .expect("the bus is in the config");
    let key = at
        + config[at..]
            .find("timeout_ms = ")
            .expect("the bus has a timeout");
    let end = key + config[key..].find('\n').expect("a line");
    format!("{}timeout_ms = {ms}{}", &config[..key], &config[end..])
}

/// `linegate run` with its log in a file.
struct Agent {
    child: Reaped,
    log: PathBuf,
}

impl Agent {
    fn start(dir: &Path, config: &Path) -> Agent {
        let log = dir.join("agent.log");
        let child = Command::new(BIN)
            .arg("run")
            .arg("-c")
            .arg(config)
            .env_remove("RUST_LOG")
            .env_remove("NOTIFY_SOCKET")
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("start linegate run");
        Agent {
            child: Reaped(child),
            log,
        }
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn count_log(&self, text: &str) -> usize {
        self.log().lines().filter(|l| l.contains(text)).count()
    }

    /// Send SIGHUP and wait for the reload's log line (the `n`th with `text`).
    fn reload(&self, text: &str) {
        let before = self.count_log(text);
        self.signal("HUP");
        wait_for(&format!("log line {text:?}"), || {
            (self.count_log(text) > before).then_some(())
        });
        assert_eq!(
            self.count_log("reload refused"),
            0,
            "the reload was refused:\n{}",
            self.log()
        );
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.0.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} failed");
    }

    fn stop(mut self) {
        self.signal("TERM");
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.0.try_wait().expect("wait") {
                assert!(status.success(), "exit {status:?}; log:\n{}", self.log());
                return;
            }
            assert!(Instant::now() < deadline, "the agent did not stop");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A status message's connection: `session` (contract v1.1), or the `seq`
/// the status carried before it.
fn connection_of(status: &Value) -> Option<u64> {
    status["session"]
        .as_u64()
        .or_else(|| status["seq"].as_u64())
}

fn births(seen: &[Seen]) -> Vec<&Seen> {
    seen.iter()
        .filter(|m| m.is_status() && m.online() == Some(true))
        .collect()
}

/// A machine's state messages in `seq` order: a live message may overtake
/// a historical one stored before the first connect (docs/mqtt.md, "Order").
fn states<'a>(seen: &'a [Seen], machine: &str) -> Vec<&'a Value> {
    let topic = format!("{PREFIX}/m/{machine}/state");
    let mut states: Vec<&Value> = seen
        .iter()
        .filter(|m| m.topic == topic && !m.retain)
        .map(|m| &m.json)
        .collect();
    states.sort_by_key(|s| s["seq"].as_u64().unwrap_or(u64::MAX));
    states
}

/// The machine's state messages after its first good read hold no
/// `offline`; returns how many it sent.
fn never_offline_after_first_read(seen: &[Seen], machine: &str) -> usize {
    let all = states(seen, machine);
    let first = all
        .iter()
        .position(|s| s["state"] != "offline")
        .unwrap_or_else(|| panic!("{machine}: never read: {all:?}"));
    for s in &all[first..] {
        assert_ne!(
            s["state"], "offline",
            "{machine}: an offline state after its first read: {s}"
        );
    }
    all.len()
}

/// The agent agrees with the truth wherever it read each machine, and
/// every period is exact; returns each machine's windows of good reads.
fn check_against_truth(dir: &Path, machines: &[&str]) -> Vec<usize> {
    let stored = read_store(&dir.join("data"));
    let truth = dir.join("truth.jsonl");
    let mut windows_per_machine = Vec::new();
    for id in machines {
        let agent = agent_timeline(&stored.changes, id);
        let truth_line = truth_timeline(&truth, id);
        let end = stored.snapshots.get(*id).expect("a snapshot").committed_to;
        let windows = observed_windows(&agent, end);
        for &(from, to) in &windows {
            assert_agrees(id, &agent, &truth_line, from, to);
        }
        check_periods(&stored, id);
        windows_per_machine.push(windows.len());
    }
    windows_per_machine
}

fn read_state(seen: &[Seen], machine: &str) -> bool {
    states(seen, machine)
        .iter()
        .any(|s| s["state"] != "offline")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_of_the_same_config_keeps_every_machine_its_periods_and_the_connection() {
    let broker = common::Mosquitto::start();
    let subscriber = Subscriber::start(broker.port, "central").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (_sim, config) = simulate(dir.path(), 2, &broker.url());
    let path = dir.path().join("linegate.toml");
    fs::write(&path, &config).expect("write the config");

    let agent = Agent::start(dir.path(), &path);
    uplink_support::wait_for("both machines read", PATIENCE, || {
        let seen = subscriber.seen();
        read_state(&seen, "sim01") && read_state(&seen, "sim02")
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    // The file is written again (as an editor would), unchanged.
    fs::write(&path, &config).expect("write the config");
    agent.reload("config unchanged: nothing restarted");
    tokio::time::sleep(Duration::from_secs(4)).await;
    agent.stop();
    uplink_support::wait_for("the goodbye", PATIENCE, || {
        subscriber
            .seen()
            .iter()
            .any(|m| m.is_status() && m.online() == Some(false))
    })
    .await;

    let seen = subscriber.seen();
    assert_eq!(
        births(&seen).len(),
        1,
        "one connection, one birth: {seen:?}"
    );
    for id in ["sim01", "sim02"] {
        never_offline_after_first_read(&seen, id);
    }
    let windows = check_against_truth(dir.path(), &["sim01", "sim02"]);
    assert_eq!(windows, vec![1, 1], "each machine read without a gap");
    // The periods sent up are those stored (none lost, none doubled).
    let stored = read_store(&dir.path().join("data"));
    let sent = seen
        .iter()
        .filter(|m| m.topic.ends_with("/utilisation"))
        .count();
    assert_eq!(sent, stored.periods.len(), "periods sent and stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_ends_a_removed_machine_starts_an_added_one_and_reconnects_only_for_the_uplink() {
    let broker = common::Mosquitto::start();
    let subscriber = Subscriber::start(broker.port, "central").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (_sim, full) = simulate(dir.path(), 3, &broker.url());
    let path = dir.path().join("linegate.toml");
    fs::write(&path, without_machine(&full, "sim03")).expect("write the config");

    let agent = Agent::start(dir.path(), &path);
    uplink_support::wait_for("sim01 and sim02 read", PATIENCE, || {
        let seen = subscriber.seen();
        read_state(&seen, "sim01") && read_state(&seen, "sim02")
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    // sim02 out, sim03 in, sim01's bus changed (its machine's section
    // not); [uplink] unchanged.
    let changed = with_bus_timeout(&without_machine(&full, "sim02"), "bus-sim01", 400);
    fs::write(&path, &changed).expect("write the config");
    agent.reload("config reloaded");
    assert!(
        agent.log().contains("buses_restarted=2"),
        "bus-sim01 (changed) and bus-sim03 (added) start, no other:\n{}",
        agent.log()
    );
    uplink_support::wait_for("sim03 read", PATIENCE, || {
        read_state(&subscriber.seen(), "sim03")
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        births(&subscriber.seen()).len(),
        1,
        "the connection is kept"
    );

    // [uplink] changed: a new connection, a new birth.
    let heartbeat = changed.replace(
        "backoff_max_ms = 1000\n\n[[bus]]",
        "backoff_max_ms = 1000\nheartbeat_s = 30\n\n[[bus]]",
    );
    assert!(heartbeat.contains("heartbeat_s = 30"), "{heartbeat}");
    fs::write(&path, heartbeat).expect("write the config");
    agent.reload("config reloaded");
    uplink_support::wait_for("a second birth", PATIENCE, || {
        births(&subscriber.seen()).len() == 2
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    agent.stop();
    uplink_support::wait_for("the goodbye", PATIENCE, || {
        let seen = subscriber.seen();
        // The first connection's goodbye at the reload, the second's at the stop.
        seen.iter()
            .filter(|m| m.is_status() && m.online() == Some(false) && !m.retain)
            .count()
            >= 2
    })
    .await;

    let seen = subscriber.seen();
    let b = births(&seen);
    assert_eq!(b.len(), 2, "{seen:?}");
    let sessions: Vec<u64> = b.iter().filter_map(|b| connection_of(&b.json)).collect();
    assert_eq!(sessions.len(), 2, "{b:?}");
    assert!(sessions[1] > sessions[0], "a new connection: {sessions:?}");
    assert_eq!(b[1].json["machines"], serde_json::json!(["sim01", "sim03"]));

    // The machine that stays is untouched by both reloads.
    never_offline_after_first_read(&seen, "sim01");
    // The removed one ends offline, saying why, and sends nothing after.
    let removed = states(&seen, "sim02");
    let last = removed.last().expect("sim02 states");
    assert_eq!(last["state"], "offline", "{removed:?}");
    assert_eq!(last["reason"], linegate::reload::REMOVED_REASON);
    // The added one starts like a machine at start-up: offline (agent not
    // running) until its first read, then read without a gap.
    let added = states(&seen, "sim03");
    assert_eq!(added[0]["state"], "offline", "{added:?}");
    never_offline_after_first_read(&seen, "sim03");

    let windows = check_against_truth(dir.path(), &["sim01", "sim02", "sim03"]);
    assert_eq!(
        windows,
        vec![1, 1, 1],
        "sim01 without a gap; sim02 until removed; sim03 from added"
    );
    let stored = read_store(&dir.path().join("data"));
    let sim02 = agent_timeline(&stored.changes, "sim02");
    assert_eq!(sim02.last().map(|c| c.1), Some(MachineState::Offline));
}
