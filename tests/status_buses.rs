//! `linegate status` shows each bus's counters, as the running agent copies
//! them into the store: the agent runs for real (`agent::run`) against an
//! in-process Modbus device and a real Mosquitto; `linegate status` is the
//! real binary, a separate process reading the store. What it shows is
//! compared with the device's own count of the requests it received and
//! with the publisher's own log of what it sent, never with the agent's
//! own numbers.
mod common;
mod modbus_device;

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use linegate::agent::{self, RunOptions};
use linegate::config::Config;
use modbus_device::{serve_tcp, Behaviour, Devices, Unit};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

/// How long a test waits for something that should happen (never asserted as speed).
const PATIENCE: Duration = Duration::from_secs(30);

/// A running agent.
struct Agent {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), agent::AgentError>>,
}

impl Agent {
    fn start(config: &Config) -> Agent {
        make_store(&config.gateway.data_dir);
        let stop = CancellationToken::new();
        let task = tokio::spawn(agent::run(
            config.clone(),
            RunOptions {
                config_path: None,
                board: None,
                alone_in_process: false,
            },
            stop.clone(),
        ));
        Agent { stop, task }
    }

    async fn stop(self) {
        self.stop.cancel();
        let ended = tokio::time::timeout(PATIENCE, self.task)
            .await
            .expect("the agent stops within the patience");
        ended.expect("agent task").expect("the agent stops cleanly");
    }
}

/// Create the store before the agent and the CLI open it: both migrate a
/// new file, and the two first migrations must not meet (the one that
/// loses fails with "table ... already exists", the agent's start included).
fn make_store(data_dir: &Path) {
    drop(linegate::store::Store::open(data_dir).expect("the store is created"));
}

/// Write `text` as the config file in `dir` and parse it.
fn config_file(dir: &Path, text: &str) -> (std::path::PathBuf, Config) {
    let file = dir.join("linegate.toml");
    std::fs::write(&file, text).expect("write the config file");
    let config = Config::from_toml(text, &file).unwrap_or_else(|e| panic!("{e}"));
    (file, config)
}

/// Run `linegate status -c file ARGS`, the real binary, and return its stdout.
async fn status(file: &Path, args: &[&str]) -> String {
    match try_status(file, args).await {
        Ok(out) => out,
        Err(e) => panic!("linegate status failed: {e}"),
    }
}

/// [`status`], or why it failed (the polling loops ask again).
async fn try_status(file: &Path, args: &[&str]) -> Result<String, String> {
    let file = file.to_path_buf();
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_linegate"))
            .arg("status")
            .arg("-c")
            .arg(&file)
            .args(&args)
            .output()
            .expect("run linegate status")
    })
    .await
    .expect("status runs");
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `bus` in `status --buses --json` (null when absent).
async fn bus_stats_of(file: &Path, bus: &str) -> Value {
    let text = status(file, &["--buses", "--json"]).await;
    bus_stats_in(&text, bus)
}

fn bus_stats_in(text: &str, bus: &str) -> Value {
    let all: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"));
    let buses = all["buses"]
        .as_array()
        .unwrap_or_else(|| panic!("status --buses --json has a buses array: {text}"));
    buses
        .iter()
        .find(|b| b["bus"] == bus)
        .cloned()
        .unwrap_or(Value::Null)
}

fn counter(stats: &Value, name: &str) -> u64 {
    stats["counters"][name]
        .as_u64()
        .unwrap_or_else(|| panic!("no counter {name}: {stats}"))
}

/// Ask `status --buses --json` until `done` holds for `bus`'s counters.
async fn until_bus_stats(file: &Path, bus: &str, what: &str, done: impl Fn(&Value) -> bool) {
    let waited = tokio::time::timeout(PATIENCE, async {
        loop {
            if let Ok(text) = try_status(file, &["--buses", "--json"]).await {
                let stats = bus_stats_in(&text, bus);
                if !stats.is_null() && done(&stats) {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    })
    .await;
    if waited.is_err() {
        let last = bus_stats_of(file, bus).await;
        panic!("status never showed {what}: {last}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_counts_the_requests_the_device_received_and_the_timeouts_of_a_silent_unit() {
    let devices = Devices::new();
    devices.add(1, Unit::default());
    devices.add(
        2,
        Unit {
            behaviour: Behaviour::Silent,
            ..Unit::default()
        },
    );
    let address = serve_tcp(devices.clone()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let text = format!(
        "[gateway]\nid = \"gw-test\"\nsite = \"lab\"\ndata_dir = {data:?}\n\n{bus}\n{ok}\n{dead}",
        data = dir.path().join("data").to_string_lossy(),
        bus = modbus_device::tcp_bus("cell-a", &address.to_string(), "timeout_ms = 200"),
        ok = modbus_device::machine("press-ok", "cell-a", 1, 100, modbus_device::ONE_U16),
        dead = modbus_device::machine("press-dead", "cell-a", 2, 100, modbus_device::ONE_U16),
    );
    let (file, config) = config_file(dir.path(), &text);
    let agent = Agent::start(&config);

    // While the agent runs: the silent unit's timeouts show up.
    until_bus_stats(&file, "cell-a", "a timeout on cell-a", |s| {
        counter(s, "timeouts") >= 1 && counter(s, "requests") >= 3
    })
    .await;
    agent.stop().await;

    // Stopped: the last copy was taken after the bus stopped.
    let received_ok = devices.requests(1) as u64;
    let received_dead = devices.requests(2) as u64;
    let stats = bus_stats_of(&file, "cell-a").await;
    assert_eq!(stats["transport"], "tcp", "{stats}");
    let requests = counter(&stats, "requests");
    let timeouts = counter(&stats, "timeouts");
    assert_eq!(
        requests,
        received_ok + received_dead,
        "every request sent is one the device received (ok unit {received_ok}, silent unit {received_dead}): {stats}"
    );
    // Each request to the silent unit times out, but for one that the
    // stop may have cut short.
    assert!(
        timeouts >= 1 && timeouts <= received_dead && timeouts + 1 >= received_dead,
        "timeouts {timeouts} vs requests the silent unit got {received_dead}: {stats}"
    );
    assert!(counter(&stats, "errors") >= timeouts, "{stats}");

    // The machines' table ends with the same line.
    let table = status(&file, &[]).await;
    assert_eq!(
        status(&file, &["--buses"]).await.trim(),
        table
            .lines()
            .find(|l| l.starts_with("bus cell-a (tcp):"))
            .unwrap_or("(none)"),
        "{table}"
    );
    let line = table
        .lines()
        .find(|l| l.starts_with("bus cell-a (tcp):"))
        .unwrap_or_else(|| panic!("no line for bus cell-a: {table}"));
    assert!(
        line.contains(&format!("{requests} requests, {timeouts} timeout")),
        "{line}"
    );
}

/// Publish through a short-lived client; returns when the broker's PUBACK arrived.
async fn publish(port: u16, topic: &str, payload: Vec<u8>, retain: bool) {
    static N: AtomicU64 = AtomicU64::new(0);
    let id = format!("status-plc-{}", N.fetch_add(1, Ordering::Relaxed));
    let mut o = MqttOptions::new(id, "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(5))
        .set_max_packet_size(1 << 22, 1 << 22);
    let (client, mut events) = AsyncClient::new(o, 10);
    client
        .publish(topic, QoS::AtLeastOnce, retain, payload)
        .await
        .expect("queue the publish");
    tokio::time::timeout(PATIENCE, async {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => return,
                Ok(_) => {}
                Err(e) => panic!("publisher lost the broker: {e}"),
            }
        }
    })
    .await
    .expect("the broker acknowledges the publish");
    let _ = client.try_disconnect();
    let _ = tokio::time::timeout(Duration::from_millis(200), events.poll()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_the_one_oversized_message_the_mqtt_bus_refused() {
    let broker = common::Mosquitto::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let text = format!(
        r#"[gateway]
id = "gw-test"
site = "lab"
data_dir = {data:?}

[[bus]]
id = "line-plc"
transport = "mqtt"
address = "{url}"
client_id = "linegate-status-test"
max_payload_bytes = 1024

[[machine]]
id = "oven2"
bus = "line-plc"

[[machine.signal]]
name = "parts"
type = "u32"
topic = "plc/oven2/count"
"#,
        data = dir.path().join("data").to_string_lossy(),
        url = broker.url(),
    );
    let (file, config) = config_file(dir.path(), &text);
    // The publisher's log: one message over the limit, retained, so the
    // broker hands it to the agent's subscription whenever that is made.
    let oversized_sent = 1;
    let big = format!("{{\"pad\":\"{}\"}}", "x".repeat(4096));
    publish(broker.port, "plc/oven2/count", big.into_bytes(), true).await;
    let agent = Agent::start(&config);
    until_bus_stats(&file, "line-plc", "the refused message", |s| {
        counter(s, "refused_oversized") >= 1
    })
    .await;
    agent.stop().await;

    let stats = bus_stats_of(&file, "line-plc").await;
    assert_eq!(stats["transport"], "mqtt", "{stats}");
    assert_eq!(
        counter(&stats, "refused_oversized"),
        oversized_sent,
        "{stats}"
    );
    let table = status(&file, &["--buses"]).await;
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("bus line-plc (mqtt): 1 connection, 1 oversized refused")),
        "{table}"
    );
}

/// `linegate run`, the real binary, with its log in a file; killed when dropped.
struct RunningBinary {
    child: std::process::Child,
    log: std::path::PathBuf,
}

impl RunningBinary {
    fn start(dir: &Path, config: &Path) -> RunningBinary {
        let log = dir.join("agent.log");
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_linegate"))
            .arg("run")
            .arg("-c")
            .arg(config)
            .env_remove("RUST_LOG")
            .env_remove("NOTIFY_SOCKET")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("start linegate run");
        RunningBinary { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn signal(&self, name: &str) {
        let status = std::process::Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} failed");
    }

    async fn stop(mut self) {
        self.signal("TERM");
        let waited = tokio::time::timeout(PATIENCE, async {
            loop {
                if let Some(status) = self.child.try_wait().expect("wait") {
                    return status;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
        match waited {
            Ok(status) => assert!(status.success(), "exit {status:?}; log:\n{}", self.log()),
            Err(_) => panic!("the agent did not stop; log:\n{}", self.log()),
        }
    }
}

impl Drop for RunningBinary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_removes_a_bus_takes_its_line_out_of_status_and_the_other_keeps_counting() {
    let device_a = Devices::new();
    device_a.add(1, Unit::default());
    let device_b = Devices::new();
    device_b.add(1, Unit::default());
    let address_a = serve_tcp(device_a.clone()).await;
    let address_b = serve_tcp(device_b.clone()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let head = format!(
        "[gateway]\nid = \"gw-test\"\nsite = \"lab\"\ndata_dir = {data:?}\n\n{bus}\n{machine}",
        data = dir.path().join("data").to_string_lossy(),
        bus = modbus_device::tcp_bus("cell-a", &address_a.to_string(), ""),
        machine = modbus_device::machine("press-a", "cell-a", 1, 100, modbus_device::ONE_U16),
    );
    let both = format!(
        "{head}\n{bus}\n{machine}",
        bus = modbus_device::tcp_bus("cell-b", &address_b.to_string(), ""),
        machine = modbus_device::machine("press-b", "cell-b", 1, 100, modbus_device::ONE_U16),
    );
    let (file, _) = config_file(dir.path(), &both);
    make_store(&dir.path().join("data"));
    let agent = RunningBinary::start(dir.path(), &file);
    until_bus_stats(&file, "cell-b", "cell-b counting", |s| {
        counter(s, "requests") >= 1
    })
    .await;
    until_bus_stats(&file, "cell-a", "cell-a counting", |s| {
        counter(s, "requests") >= 1
    })
    .await;
    let before = bus_stats_of(&file, "cell-a").await;

    // cell-b and its machine go; cell-a is not touched by the reload.
    config_file(dir.path(), &head);
    agent.signal("HUP");
    let gone = tokio::time::timeout(PATIENCE, async {
        loop {
            if let Ok(text) = try_status(&file, &["--buses", "--json"]).await {
                if bus_stats_in(&text, "cell-b").is_null() {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    })
    .await;
    assert!(
        gone.is_ok(),
        "cell-b stayed in status after the reload; log:\n{}",
        agent.log()
    );
    let seen = counter(&before, "requests");
    until_bus_stats(&file, "cell-a", "cell-a counting on", |s| {
        counter(s, "requests") > seen
    })
    .await;
    agent.stop().await;

    let after = bus_stats_of(&file, "cell-a").await;
    assert_eq!(
        after["since"], before["since"],
        "cell-a was not restarted: its counters went on: {before} -> {after}"
    );
    assert_eq!(
        counter(&after, "requests"),
        device_a.requests(1) as u64,
        "cell-a's requests are those its device received: {after}"
    );
    let lines = status(&file, &["--buses"]).await;
    assert_eq!(lines.lines().count(), 1, "{lines}");
    assert!(lines.starts_with("bus cell-a (tcp): "), "{lines}");
}
