//! The uplink end to end, through the real `linegate` binary: a simulated
//! line served in-process (`linegate::sim::serve`, real Modbus TCP), the
//! agent as a child process (`linegate run -c FILE`), a real Mosquitto, and a
//! subscriber on `linegate/v1/#` that checks what the central team would see:
//! every `seq`, the `historical` flag, birth and will, and the exact shape of
//! each contract payload.
//!
//! Holes in `seq`: none. Status messages carry no `seq` (contract v1.1),
//! only their connection's `session`; data messages take a seq only with
//! their row. Telemetry dropped by a full outbox would be holes (real losses,
//! counted in the birth's `dropped_telemetry`); no test here fills the
//! outbox, so none is allowed. tests/contract_v1_1.rs tests the session.
//!
//! Run with `--nocapture` to print one real payload of each kind (used for
//! docs/mqtt.md).

mod common;
mod uplink_support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use linegate::store::Store;
use linegate::uplink::outbox::{self, Stream};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::Value;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uplink_support::Gate;

const PREFIX: &str = "linegate/v1/demo/gw-demo";
const MACHINES: [&str; 2] = ["sim01", "sim02"];
const STATES: [&str; 6] = [
    "running",
    "setup",
    "down",
    "idle",
    "planned_stop",
    "offline",
];
const LONG: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------
// The parts of a run: simulated line, agent process, subscriber.

/// A simulated line of two machines and the agent config for it.
struct Line {
    dir: tempfile::TempDir,
    config: PathBuf,
    stop: CancellationToken,
}

impl Line {
    /// Serve two simulated machines at speed 20 and write a config for them
    /// with `[uplink] url = broker_url`.
    async fn start(broker_url: &str) -> Line {
        Line::start_with(broker_url, "").await
    }

    /// As [`Line::start`], with extra `[uplink]` keys.
    async fn start_with(broker_url: &str, uplink_extra: &str) -> Line {
        let dir = tempfile::tempdir().unwrap();
        let stop = CancellationToken::new();
        let line = linegate::sim::serve(
            linegate::sim::SimOptions {
                machines: MACHINES.len(),
                base_port: 0,
                speed: 20.0,
                ..Default::default()
            },
            stop.clone(),
        )
        .await
        .unwrap();
        let mut text = linegate::sim::demo_config(&line, &dir.path().join("data"));
        text.push_str(&format!(
            "\n[uplink]\nurl = {broker_url:?}\nkeepalive_s = 5\nheartbeat_s = 2\n\
             backoff_min_ms = 50\nbackoff_max_ms = 500\n{uplink_extra}\n"
        ));
        let config = dir.path().join("linegate.toml");
        std::fs::write(&config, text).unwrap();
        Line { dir, config, stop }
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log_file(&self, n: usize) -> PathBuf {
        self.dir.path().join(format!("agent-{n}.log"))
    }
}

impl Drop for Line {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The real agent binary, running. Killed when dropped.
struct AgentProcess {
    child: Child,
    log: PathBuf,
}

impl AgentProcess {
    fn start(line: &Line, n: usize) -> AgentProcess {
        let log = line.log_file(n);
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

    /// SIGKILL: no goodbye, no flush; what is committed must survive.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, as systemd stops it.
    fn terminate(&self) {
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM failed");
    }

    /// The exit status, if the process ends within `limit`.
    async fn exited_within(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            if tokio::time::Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The end of the agent's log, for failure messages.
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
        self.kill();
    }
}

/// One message as the subscriber saw it, in arrival order.
#[derive(Debug, Clone)]
struct Seen {
    topic: String,
    retain: bool,
    raw: String,
    json: Value,
}

impl Seen {
    /// The data seq; status messages have none (contract v1.1).
    fn seq(&self) -> u64 {
        assert!(!self.is_status(), "status messages carry no seq");
        self.json["seq"]
            .as_u64()
            .unwrap_or_else(|| panic!("no u64 seq in {}", self.raw))
    }
    fn session(&self) -> u64 {
        self.json["session"]
            .as_u64()
            .unwrap_or_else(|| panic!("no u64 session in {}", self.raw))
    }
    fn is_status(&self) -> bool {
        self.topic == format!("{PREFIX}/status")
    }
    fn is_birth(&self) -> bool {
        self.is_status() && self.json["online"] == Value::Bool(true)
    }
    fn kind(&self) -> &str {
        self.topic.rsplit('/').next().unwrap_or("")
    }
}

/// A QoS 1 subscriber on a filter, with a persistent session
/// (clean_session = false) so the broker queues for it while it is away; it
/// resubscribes on every connect (a restarted broker without persistence
/// forgets sessions).
struct Subscriber {
    seen: Arc<Mutex<Vec<Seen>>>,
    subacks: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl Subscriber {
    async fn start(port: u16, name: &str, filter: &str) -> Subscriber {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let subacks = Arc::new(AtomicU64::new(0));
        let mut o = MqttOptions::new(name, "127.0.0.1", port);
        o.set_keep_alive(Duration::from_secs(5))
            .set_clean_session(false)
            .set_max_packet_size(1 << 22, 1 << 22);
        let (client, mut events) = AsyncClient::new(o, 100);
        let (s, n, filter) = (seen.clone(), subacks.clone(), filter.to_string());
        let task = tokio::spawn(async move {
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        let _ = client.subscribe(filter.clone(), QoS::AtLeastOnce).await;
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        n.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let raw = String::from_utf8_lossy(&p.payload).into_owned();
                        let json = serde_json::from_str(&raw).unwrap_or(Value::Null);
                        s.lock().unwrap().push(Seen {
                            topic: p.topic.clone(),
                            retain: p.retain,
                            raw,
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
        sub.wait_subscribed(0).await;
        sub
    }

    async fn wait_subscribed(&self, before: u64) {
        assert!(
            eventually(Duration::from_secs(10), || self
                .subacks
                .load(Ordering::SeqCst)
                > before)
            .await,
            "subscriber did not subscribe"
        );
    }

    fn subscriptions(&self) -> u64 {
        self.subacks.load(Ordering::SeqCst)
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn len(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    fn births(&self) -> Vec<Seen> {
        self.seen().into_iter().filter(Seen::is_birth).collect()
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Poll `cond` every 20 ms until it holds (true) or `limit` passes (false).
async fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    while !cond() {
        if tokio::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

/// The data seqs received (status messages have none).
fn data_seqs(seen: &[Seen]) -> BTreeSet<u64> {
    seen.iter()
        .filter(|m| !m.is_status())
        .map(Seen::seq)
        .collect()
}

/// Seqs between the first and the last received that are neither received
/// nor in `extra`.
fn unexplained_holes(seen: &[Seen], extra: &BTreeSet<u64>) -> Vec<u64> {
    let got = data_seqs(seen);
    let (Some(&first), Some(&last)) = (got.first(), got.last()) else {
        return Vec::new();
    };
    (first..=last)
        .filter(|s| !got.contains(s) && !extra.contains(s))
        .collect()
}

/// At-least-once: a seq seen twice is the same message twice.
fn assert_duplicates_are_identical(seen: &[Seen]) {
    let mut by_seq: BTreeMap<u64, &Seen> = BTreeMap::new();
    for m in seen.iter().filter(|m| !m.is_status()) {
        if let Some(prev) = by_seq.insert(m.seq(), m) {
            assert_eq!(
                (&prev.topic, &prev.json),
                (&m.topic, &m.json),
                "seq {} reused for two different messages",
                m.seq()
            );
        }
    }
}

// ---------------------------------------------------------------------------
// Contract shape checks: exact field names and types.

fn is_contract_ts(v: &Value) -> bool {
    let Some(s) = v.as_str() else { return false };
    s.len() == 24
        && s.ends_with('Z')
        && s.as_bytes()[19] == b'.'
        && chrono::DateTime::parse_from_rfc3339(s).is_ok()
}

fn keys(v: &Value) -> BTreeSet<&str> {
    v.as_object()
        .map(|o| o.keys().map(String::as_str).collect())
        .unwrap_or_default()
}

/// The envelope, and the exact set of body fields next to it.
fn assert_envelope(m: &Seen, body: &[&str]) {
    let j = &m.json;
    let mut want: BTreeSet<&str> = body.iter().copied().collect();
    want.extend(["gateway", "seq", "ts"]);
    let mut got = keys(j);
    if got.remove("historical") {
        assert_eq!(
            j["historical"],
            Value::Bool(true),
            "historical is only ever true: {}",
            m.raw
        );
    }
    assert_eq!(got, want, "fields of {}: {}", m.topic, m.raw);
    assert_eq!(j["gateway"], "gw-demo", "{}", m.raw);
    assert!(j["seq"].is_u64(), "seq is an unsigned integer: {}", m.raw);
    assert!(
        is_contract_ts(&j["ts"]),
        "ts is RFC 3339 UTC with ms: {}",
        m.raw
    );
}

fn assert_machine_topic(m: &Seen, kind: &str) {
    let machine = m.json["machine"]
        .as_str()
        .unwrap_or_else(|| panic!("machine: {}", m.raw));
    assert!(MACHINES.contains(&machine), "{}", m.raw);
    assert_eq!(m.topic, format!("{PREFIX}/m/{machine}/{kind}"));
}

fn assert_status_payload(m: &Seen, online: bool) {
    let j = &m.json;
    assert_eq!(
        keys(j),
        BTreeSet::from([
            "online",
            "session",
            "version",
            "started_at",
            "machines",
            "dropped_telemetry",
            "outbox_depth",
            "lost_events",
            "gateway",
            "ts"
        ]),
        "fields of a status message (no seq, no historical): {}",
        m.raw
    );
    assert_eq!(j["gateway"], "gw-demo", "{}", m.raw);
    assert!(j["session"].is_u64(), "{}", m.raw);
    assert!(is_contract_ts(&j["ts"]), "{}", m.raw);
    assert_eq!(j["online"], Value::Bool(online), "{}", m.raw);
    assert_eq!(j["version"], env!("CARGO_PKG_VERSION"), "{}", m.raw);
    assert!(is_contract_ts(&j["started_at"]), "{}", m.raw);
    assert_eq!(j["machines"], serde_json::json!(MACHINES), "{}", m.raw);
    assert!(
        j["dropped_telemetry"].is_u64() && j["outbox_depth"].is_u64() && j["lost_events"] == 0,
        "{}",
        m.raw
    );
}

fn assert_state_payload(m: &Seen) {
    assert_envelope(m, &["machine", "state", "prev", "since", "reason"]);
    assert_machine_topic(m, "state");
    let j = &m.json;
    let state = j["state"].as_str().unwrap_or_default();
    assert!(STATES.contains(&state), "{}", m.raw);
    assert!(
        j["prev"].is_null() || STATES.contains(&j["prev"].as_str().unwrap_or_default()),
        "{}",
        m.raw
    );
    assert_ne!(
        j["prev"], j["state"],
        "a change changes the state: {}",
        m.raw
    );
    assert!(is_contract_ts(&j["since"]), "{}", m.raw);
    assert_eq!(
        j["since"], j["ts"],
        "ts of a state change is its since: {}",
        m.raw
    );
    assert!(
        j["reason"].is_null() || j["reason"].is_string(),
        "{}",
        m.raw
    );
}

fn assert_telemetry_payload(m: &Seen) {
    assert_envelope(m, &["machine", "values"]);
    assert_machine_topic(m, "telemetry");
    let values = m.json["values"]
        .as_object()
        .unwrap_or_else(|| panic!("{}", m.raw));
    assert!(!values.is_empty(), "{}", m.raw);
    for (name, v) in values {
        let ok = match name.as_str() {
            "cycle_active" | "order_start" | "door_closed" => v.is_boolean(),
            "product" => v.is_string(),
            "temperature" => v.is_f64(),
            "mode" | "alarm_code" | "part_count" | "good_count" | "scrap_count"
            | "order_number" | "order_product" | "order_quantity" | "spindle_rpm" => v.is_u64(),
            _ => panic!("unknown signal {name} in {}", m.raw),
        };
        assert!(ok, "signal {name} has the wrong type: {}", m.raw);
    }
}

fn assert_utilisation_payload(m: &Seen) {
    // `clock_step` (contract v1.1) only when the wall clock stepped during
    // the period: the machine running the tests may step it too.
    if m.json.get("clock_step").is_some() {
        assert!(
            m.json["clock_step"]["by_s"].is_f64(),
            "clock_step is {{\"by_s\": seconds}}: {}",
            m.raw
        );
        assert_envelope(
            m,
            &[
                "machine",
                "period",
                "seconds",
                "counts",
                "kpi",
                "clock_step",
            ],
        );
    } else {
        assert_envelope(m, &["machine", "period", "seconds", "counts", "kpi"]);
    }
    assert_machine_topic(m, "utilisation");
    let j = &m.json;
    let period = &j["period"];
    assert_eq!(
        keys(period),
        BTreeSet::from(["kind", "start", "end"]),
        "{}",
        m.raw
    );
    assert_eq!(period["kind"], "interval", "{}", m.raw);
    assert!(
        is_contract_ts(&period["start"]) && is_contract_ts(&period["end"]),
        "{}",
        m.raw
    );
    assert_eq!(
        period["end"], j["ts"],
        "ts of a period is its end: {}",
        m.raw
    );
    let start = chrono::DateTime::parse_from_rfc3339(period["start"].as_str().unwrap()).unwrap();
    let end = chrono::DateTime::parse_from_rfc3339(period["end"].as_str().unwrap()).unwrap();
    let length = (end - start).num_milliseconds() as f64 / 1000.0;
    assert!(
        length > 0.0 && length <= 60.0,
        "a period of at most one minute: {}",
        m.raw
    );

    let seconds = &j["seconds"];
    assert_eq!(keys(seconds), STATES.iter().copied().collect(), "{}", m.raw);
    let sum: f64 = STATES
        .iter()
        .map(|s| {
            let v = seconds[*s]
                .as_f64()
                .unwrap_or_else(|| panic!("seconds.{s}: {}", m.raw));
            assert!(v >= 0.0, "{}", m.raw);
            v
        })
        .sum();
    assert!(
        (sum - length).abs() < 0.01,
        "seconds add up to the period ({sum} vs {length}): {}",
        m.raw
    );

    let counts = &j["counts"];
    assert_eq!(
        keys(counts),
        BTreeSet::from([
            "produced",
            "good",
            "scrap",
            "stops",
            "micro_stops",
            "failures",
            "produced_unobserved"
        ]),
        "{}",
        m.raw
    );
    for (k, v) in counts.as_object().unwrap() {
        assert!(v.is_u64(), "counts.{k} is a count: {}", m.raw);
    }

    let kpi = &j["kpi"];
    assert_eq!(
        keys(kpi),
        BTreeSet::from([
            "availability",
            "utilisation_efficiency",
            "allocation_efficiency",
            "performance",
            "quality",
            "oee",
            "coverage"
        ]),
        "{}",
        m.raw
    );
    for (k, v) in kpi.as_object().unwrap() {
        assert!(
            v.is_null() || v.as_f64().is_some_and(|x| x.is_finite() && x >= 0.0),
            "kpi.{k} is a number or null: {}",
            m.raw
        );
    }
    for k in [
        "availability",
        "utilisation_efficiency",
        "allocation_efficiency",
        "quality",
        "coverage",
    ] {
        assert!(
            kpi[k].as_f64().is_none_or(|x| x <= 1.0 + 1e-9),
            "kpi.{k} <= 1: {}",
            m.raw
        );
    }
}

// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_killed_while_offline_keeps_its_backlog_and_seq_continues() {
    let mut broker = common::Mosquitto::start_with("max_queued_messages 0");
    let gate = Gate::start(broker.port).await;
    gate.close();
    broker.stop();
    let line = Line::start(&gate.url()).await;

    // First life: no broker, everything goes to the outbox; then SIGKILL.
    let mut agent = AgentProcess::start(&line, 1);
    tokio::time::sleep(Duration::from_secs(5)).await;
    agent.kill();

    let store = Store::open(&line.data_dir()).unwrap();
    let (counts, backlog, live) = store
        .call_blocking(|c| {
            Ok((
                outbox::counts(c)?,
                outbox::next_batch(c, Stream::Historical, 0, 1_000_000)?,
                outbox::next_batch(c, Stream::Live, 0, 1_000_000)?,
            ))
        })
        .unwrap();
    drop(store);
    assert!(live.is_empty(), "nothing was stored as live: {live:?}");
    assert_eq!(counts.dropped, 0, "nothing dropped");
    let kinds: BTreeSet<&str> = backlog
        .iter()
        .map(|r| r.topic_suffix.rsplit('/').next().unwrap())
        .collect();
    assert!(
        kinds.contains("state") && kinds.contains("telemetry"),
        "a backlog of state and telemetry: {kinds:?}\n{}",
        agent.log_tail()
    );
    let stored: BTreeSet<u64> = backlog.iter().map(|r| r.seq).collect();
    let burned: BTreeSet<u64> = (1..counts.next_seq)
        .filter(|s| !stored.contains(s))
        .collect();
    assert!(
        burned.is_empty(),
        "every seq taken has its row (status messages take none): {burned:?}"
    );

    // Second life, still offline for a while; then the broker comes back and
    // the subscriber is in before the agent may connect.
    let agent = AgentProcess::start(&line, 2);
    tokio::time::sleep(Duration::from_secs(2)).await;
    broker.resume();
    let sub = Subscriber::start(broker.port, "central", "linegate/v1/#").await;
    gate.open();

    assert!(
        eventually(LONG, || { stored.is_subset(&data_seqs(&sub.seen())) }).await,
        "the backlog of the killed agent arrives\n{}",
        agent.log_tail()
    );
    // Let the second life's own offline rows and some live ones through.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        eventually(LONG, || unexplained_holes(&sub.seen(), &burned).is_empty()).await,
        "holes in seq: {:?}\n{}",
        unexplained_holes(&sub.seen(), &burned),
        agent.log_tail()
    );

    let seen = sub.seen();
    assert_duplicates_are_identical(&seen);
    let births: Vec<&Seen> = seen.iter().filter(|m| m.is_birth()).collect();
    assert_eq!(births.len(), 1, "one connect, one birth");
    let birth = births[0];
    assert_status_payload(birth, true);
    assert_eq!(birth.json["dropped_telemetry"], 0);
    assert!(
        birth.json["outbox_depth"].as_u64().unwrap() >= stored.len() as u64,
        "the birth reports the backlog: {}",
        birth.raw
    );
    for m in seen.iter().filter(|m| !m.is_status()) {
        let seq = m.seq();
        if stored.contains(&seq) {
            assert_eq!(
                m.json["historical"], true,
                "stored while offline: {}",
                m.raw
            );
            let row = backlog.iter().find(|r| r.seq == seq).unwrap();
            assert_eq!(m.topic, format!("{PREFIX}/{}", row.topic_suffix));
        } else {
            assert!(seq >= counts.next_seq, "seq {seq} is not reused: {}", m.raw);
        }
    }
    assert!(
        seen.iter()
            .any(|m| !m.is_status() && m.json.get("historical").is_none()),
        "live messages follow once connected"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restarts_while_the_agent_runs_lose_no_message() {
    let mut broker = common::Mosquitto::start_with("max_queued_messages 0");
    let gate = Gate::start(broker.port).await;
    let sub = Subscriber::start(broker.port, "central", "linegate/v1/#").await;
    let line = Line::start(&gate.url()).await;
    let agent = AgentProcess::start(&line, 1);

    assert!(
        eventually(LONG, || sub.births().len() == 1).await,
        "first birth\n{}",
        agent.log_tail()
    );
    // Where each connection's messages start in the subscriber's record.
    let mut connects = vec![0usize];
    tokio::time::sleep(Duration::from_secs(2)).await;
    for round in 1..=3 {
        // The link dies first, so the broker has delivered what it took
        // before it goes down too (a broker without persistence loses what
        // it has not delivered, whatever the agent does).
        gate.cut();
        tokio::time::sleep(Duration::from_millis(500)).await;
        broker.stop();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let before = sub.subscriptions();
        broker.resume();
        sub.wait_subscribed(before).await;
        connects.push(sub.len());
        gate.open();
        assert!(
            eventually(LONG, || sub.births().len() == round + 1).await,
            "birth after restart {round}\n{}",
            agent.log_tail()
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    }

    assert!(
        eventually(Duration::from_secs(60), || {
            unexplained_holes(&sub.seen(), &BTreeSet::new()).is_empty()
        })
        .await,
        "holes in seq: {:?}\n{}",
        unexplained_holes(&sub.seen(), &BTreeSet::new()),
        agent.log_tail()
    );
    let seen = sub.seen();
    assert_duplicates_are_identical(&seen);
    assert!(
        seen.iter().any(|m| m.json["historical"] == true),
        "messages stored during the outages came late, marked historical"
    );

    // Birth is the first message of every connect and lists the machines.
    for (i, &at) in connects.iter().enumerate() {
        let first = &seen[at];
        assert!(
            first.is_birth(),
            "connect {i}: first message is the birth, got {}",
            first.raw
        );
        assert_status_payload(first, true);
        assert_eq!(first.json["dropped_telemetry"], 0);
    }
    // Each lost connection fired its will, with the session of its birth.
    let births: Vec<u64> = sub.births().iter().map(Seen::session).collect();
    assert!(
        births.windows(2).all(|w| w[0] < w[1]),
        "sessions grow: {births:?}"
    );
    for b in &births[..3] {
        let will = seen
            .iter()
            .find(|m| m.is_status() && m.json["online"] == false && m.session() == *b);
        let will = will.unwrap_or_else(|| panic!("will of the connection of session {b}"));
        assert_status_payload(will, false);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_state_stays_the_latest_when_live_overtakes_the_backlog() {
    let mut broker = common::Mosquitto::start_with("max_queued_messages 0");
    let gate = Gate::start(broker.port).await;
    gate.close();
    broker.stop();
    // A slow historical drain, so live messages overtake the backlog.
    let line = Line::start_with(&gate.url(), "historical_per_s = 40").await;
    let agent = AgentProcess::start(&line, 1);
    tokio::time::sleep(Duration::from_secs(4)).await;
    broker.resume();
    let sub = Subscriber::start(broker.port, "central", "linegate/v1/#").await;
    gate.open();
    assert!(
        eventually(LONG, || !sub.births().is_empty()).await,
        "birth\n{}",
        agent.log_tail()
    );
    // The machines vanish: a live `offline` state for each, newer than
    // every state in the backlog, goes out before the backlog has drained.
    line.stop.cancel();
    let offline_live = |seen: &[Seen]| {
        MACHINES.iter().all(|id| {
            seen.iter().any(|m| {
                m.kind() == "state"
                    && m.json["machine"] == *id
                    && m.json["state"] == "offline"
                    && m.json.get("historical").is_none()
            })
        })
    };
    assert!(
        eventually(LONG, || offline_live(&sub.seen())).await,
        "live offline states\n{}",
        agent.log_tail()
    );
    let last_historical = |seen: &[Seen]| seen.iter().rposition(|m| m.json["historical"] == true);
    // Wait for the backlog to drain.
    assert!(
        eventually(Duration::from_secs(90), || {
            let seen = sub.seen();
            unexplained_holes(&seen, &BTreeSet::new()).is_empty()
                && last_historical(&seen).is_some_and(|i| i + 1 < seen.len())
                && seen[seen.len() - 1].json.get("historical").is_none()
        })
        .await,
        "backlog drained\n{}",
        agent.log_tail()
    );
    tokio::time::sleep(Duration::from_secs(1)).await;

    let seen = sub.seen();
    let late = Subscriber::start(broker.port, "late", &format!("{PREFIX}/m/+/state")).await;
    assert!(
        eventually(LONG, || late.len() >= MACHINES.len()).await,
        "retained states"
    );
    for id in MACHINES {
        let newest = seen
            .iter()
            .filter(|m| m.kind() == "state" && m.json["machine"] == id)
            .max_by_key(|m| m.seq())
            .unwrap();
        let retained = late
            .seen()
            .into_iter()
            .find(|m| m.json["machine"] == id)
            .unwrap();
        assert_eq!(
            retained.json, newest.json,
            "{id}: the retained state is the newest"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clean_shutdown_publishes_offline_and_exits_zero() {
    let broker = common::Mosquitto::start();
    let sub = Subscriber::start(broker.port, "central", "linegate/v1/#").await;
    let line = Line::start(&broker.url()).await;
    let mut agent = AgentProcess::start(&line, 1);
    assert!(
        eventually(LONG, || !sub.births().is_empty()).await,
        "birth\n{}",
        agent.log_tail()
    );
    let birth = sub.births()[0].clone();

    // A late subscriber gets the birth as the retained status.
    let late = Subscriber::start(broker.port, "late", &format!("{PREFIX}/status")).await;
    assert!(eventually(LONG, || late.len() == 1).await, "retained birth");
    let retained = late.seen()[0].clone();
    assert!(retained.retain, "the birth is retained");
    assert_eq!(retained.json, birth.json);
    assert_status_payload(&retained, true);
    drop(late);

    tokio::time::sleep(Duration::from_secs(1)).await;
    agent.terminate();
    let status = agent.exited_within(Duration::from_secs(15)).await;
    let status = status.unwrap_or_else(|| panic!("no exit after SIGTERM\n{}", agent.log_tail()));
    assert!(
        status.success(),
        "exit status {status:?}\n{}",
        agent.log_tail()
    );

    let after = Subscriber::start(broker.port, "after", &format!("{PREFIX}/status")).await;
    assert!(
        eventually(LONG, || after.len() == 1).await,
        "retained status after shutdown"
    );
    let goodbye = after.seen()[0].clone();
    assert!(goodbye.retain);
    assert_status_payload(&goodbye, false);
    assert_eq!(
        goodbye.session(),
        birth.session(),
        "the goodbye carries the session of its birth"
    );
    assert_eq!(goodbye.json["started_at"], birth.json["started_at"]);
    assert!(
        sub.seen()
            .iter()
            .any(|m| m.is_status() && m.json["online"] == false),
        "the live subscriber saw the goodbye too"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_agent_payloads_follow_the_contract() {
    let broker = common::Mosquitto::start();
    let sub = Subscriber::start(broker.port, "central", "linegate/v1/#").await;
    let line = Line::start(&broker.url()).await;
    let mut agent = AgentProcess::start(&line, 1);

    // One minute periods aligned to the clock: the first closes within 60 s.
    let has = |kind: &str| sub.seen().iter().any(|m| m.kind() == kind);
    assert!(
        eventually(Duration::from_secs(90), || has("state")
            && has("telemetry")
            && has("utilisation"))
        .await,
        "state, telemetry and utilisation messages\n{}",
        agent.log_tail()
    );
    let seen = sub.seen();
    let mut examples: BTreeMap<&str, &Seen> = BTreeMap::new();
    for m in &seen {
        match m.kind() {
            "status" => assert_status_payload(m, true),
            "state" => assert_state_payload(m),
            "telemetry" => assert_telemetry_payload(m),
            "utilisation" => assert_utilisation_payload(m),
            // v1.1: a day that closed while the test ran (around midnight UTC).
            "scorecard" => assert!(
                m.json["orders"]["due"].is_u64() && m.json["period"]["kind"] == "day",
                "scorecard: {}",
                m.raw
            ),
            // v1.1: each machine's free capacity (docs/contract.md).
            "capacity" => assert!(
                ["planned_s", "booked_s", "free_s"]
                    .iter()
                    .all(|k| m.json[*k].is_number())
                    && m.json["shifts"].is_array()
                    && m.json["from"].is_string()
                    && m.json["until"].is_string(),
                "capacity: {}",
                m.raw
            ),
            other => panic!("unexpected topic {other}: {}", m.topic),
        }
        examples.entry(m.kind()).or_insert(m);
    }
    assert_duplicates_are_identical(&seen);
    // Messages may still be in flight: the holes close.
    assert!(
        eventually(LONG, || unexplained_holes(&sub.seen(), &BTreeSet::new())
            .is_empty())
        .await,
        "holes in seq: {:?}",
        unexplained_holes(&sub.seen(), &BTreeSet::new())
    );

    // The latest state of each machine is retained.
    let late = Subscriber::start(broker.port, "late", &format!("{PREFIX}/m/+/state")).await;
    assert!(
        eventually(LONG, || late.len() >= MACHINES.len()).await,
        "retained states"
    );
    // The first message on each topic is the broker's retained copy; a
    // state change published since arrives live (not retained) after it.
    let mut first_on_topic = BTreeSet::new();
    for m in late.seen() {
        if first_on_topic.insert(m.topic.clone()) {
            assert!(m.retain, "retained state: {}", m.raw);
        }
        assert_state_payload(&m);
    }

    for (kind, m) in examples {
        println!(
            "example {kind} on {}:\n{}\n",
            m.topic,
            serde_json::to_string_pretty(&m.json).unwrap()
        );
    }
    agent.terminate();
    let _ = agent.exited_within(Duration::from_secs(15)).await;
}
