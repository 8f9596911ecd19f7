//! Wire contract v1.1 against a real Mosquitto: a gap in `seq` means a loss
//! and nothing else, status messages carry a `session` instead, and plans are
//! answered as a whole.
//!
//! The central team's view is a durable subscriber (QoS 1, clean session
//! off) on `linegate/v1/#`, connected straight to the broker. The agent reaches
//! the broker through a [`Link`]: a TCP proxy the test can close (new
//! connections are refused, as by the host of a stopped broker) or cut (also
//! kills the connections in use, as when a network dies). Faults: the broker
//! killed with SIGKILL while the agent is connected (its will never fires)
//! and restarted on the same port, with persistence and without; link cuts;
//! the real `linegate` binary killed with SIGKILL, twice before its first
//! CONNACK while the broker is down and once while connected.
//!
//! What must hold: data `seq`s arrive without a gap (duplicates allowed, and
//! identical); what the subscriber got plus what is still in the agent's
//! outbox is every seq ever taken; status messages carry no `seq`; the
//! `session` of births grows by exactly one per connection (no attempt here
//! can have reached a broker without its CONNACK: refused connects give their
//! number back); the will or goodbye of a connection carries its birth's
//! session.
//!
//! A broker killed with SIGKILL loses what it acknowledged and had not yet
//! delivered, whatever the agent does; so before each broker kill the test
//! waits until the subscriber has everything the agent had enqueued (the
//! in-process agent enqueues only when the test says so) and closes the
//! link, so the agent's reconnects are refused rather than accepted by the
//! proxy and dropped.

mod common;
mod orders_support;
mod uplink_support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use linegate::config::MqttVersion;
use linegate::orders::{book, command};
use linegate::store::Store;
use linegate::uplink::outbox::{self, MessageClass, Stream};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::{json, Value};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const LONG: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------
// The link: a proxy that refuses while closed.

/// A TCP proxy from a fixed loopback port to the broker. Open: it listens and
/// relays. Closed: nothing listens on the port, so connects are refused.
struct Link {
    port: u16,
    open: Arc<AtomicBool>,
    changed: Arc<Notify>,
    cut: Arc<Notify>,
    task: JoinHandle<()>,
}

impl Link {
    async fn start(broker_port: u16) -> Link {
        let port = common::free_port();
        let open = Arc::new(AtomicBool::new(true));
        let changed = Arc::new(Notify::new());
        let cut = Arc::new(Notify::new());
        let (o, ch, c) = (open.clone(), changed.clone(), cut.clone());
        let task = tokio::spawn(async move {
            loop {
                if !o.load(Ordering::SeqCst) {
                    ch.notified().await;
                    continue;
                }
                let socket = TcpSocket::new_v4().unwrap();
                socket.set_reuseaddr(true).unwrap();
                socket.bind(([127, 0, 0, 1], port).into()).unwrap();
                let listener = socket.listen(64).unwrap();
                // Accept until closed; then the listener is dropped.
                while o.load(Ordering::SeqCst) {
                    tokio::select! {
                        _ = ch.notified() => {}
                        accepted = listener.accept() => {
                            let Ok((mut inbound, _)) = accepted else { continue };
                            let Ok(mut outbound) = TcpStream::connect(("127.0.0.1", broker_port)).await else {
                                continue;
                            };
                            let cut = c.clone().notified_owned();
                            tokio::spawn(async move {
                                tokio::select! {
                                    _ = cut => {}
                                    _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                                }
                            });
                        }
                    }
                }
            }
        });
        let link = Link {
            port,
            open,
            changed,
            cut,
            task,
        };
        link.wait_listening(true).await;
        link
    }

    fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    /// Wait until the port accepts (`true`) or refuses (`false`) connects.
    async fn wait_listening(&self, want: bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let listening = std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok();
            if listening == want {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "link state");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn open(&self) {
        self.open.store(true, Ordering::SeqCst);
        self.changed.notify_waiters();
        self.wait_listening(true).await;
    }

    /// Refuse new connections; the ones in use go on.
    async fn close(&self) {
        self.open.store(false, Ordering::SeqCst);
        self.changed.notify_waiters();
        self.wait_listening(false).await;
    }

    /// Close, and kill the connections in use.
    async fn cut(&self) {
        self.close().await;
        self.cut.notify_waiters();
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// ---------------------------------------------------------------------------
// The central team's view.

#[derive(Debug, Clone)]
struct Seen {
    topic: String,
    retain: bool,
    raw: String,
    json: Value,
}

impl Seen {
    fn is_status(&self) -> bool {
        self.topic.ends_with("/status")
    }
    fn online(&self) -> Option<bool> {
        self.json["online"].as_bool()
    }
    fn session(&self) -> u64 {
        self.json["session"]
            .as_u64()
            .unwrap_or_else(|| panic!("no u64 session in {}", self.raw))
    }
    fn seq(&self) -> u64 {
        self.json["seq"]
            .as_u64()
            .unwrap_or_else(|| panic!("no u64 seq in {}", self.raw))
    }
}

/// QoS 1, clean session off: the broker keeps its subscription and queues
/// for it; it subscribes again on every connect (a broker restarted without
/// persistence forgot it).
struct DurableSubscriber {
    seen: Arc<Mutex<Vec<Seen>>>,
    subacks: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl DurableSubscriber {
    async fn start(broker_port: u16, filter: &str) -> DurableSubscriber {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let subacks = Arc::new(AtomicU64::new(0));
        let mut o = MqttOptions::new("central", "127.0.0.1", broker_port);
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
        let sub = DurableSubscriber {
            seen,
            subacks,
            task,
        };
        sub.wait_subscribed(0).await;
        sub
    }

    async fn wait_subscribed(&self, before: u64) {
        eventually("subscriber subscribed", Duration::from_secs(10), || {
            self.subacks.load(Ordering::SeqCst) > before
        })
        .await;
    }

    fn subscriptions(&self) -> u64 {
        self.subacks.load(Ordering::SeqCst)
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn data_seqs(&self) -> BTreeSet<u64> {
        data_seqs(&self.seen())
    }

    /// Births published while the subscriber was there (not retained copies).
    fn live_births(&self) -> Vec<Seen> {
        self.seen()
            .into_iter()
            .filter(|m| m.is_status() && !m.retain && m.online() == Some(true))
            .collect()
    }
}

impl Drop for DurableSubscriber {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Poll `cond` every 20 ms until it holds; panics naming `what` after `limit`.
async fn eventually(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn data_seqs(seen: &[Seen]) -> BTreeSet<u64> {
    seen.iter()
        .filter(|m| !m.is_status())
        .map(Seen::seq)
        .collect()
}

/// Seqs between 1 and the highest received that never arrived.
fn gaps(got: &BTreeSet<u64>) -> Vec<u64> {
    let last = got.last().copied().unwrap_or(0);
    (1..=last).filter(|s| !got.contains(s)).collect()
}

/// The v1.1 checks on everything the subscriber saw.
fn assert_contract_v1_1(seen: &[Seen], births_expected: u64) {
    // At-least-once: a seq seen twice is the same message twice.
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
    for m in seen.iter().filter(|m| m.is_status()) {
        assert!(m.json.get("seq").is_none(), "status with a seq: {}", m.raw);
        assert!(
            m.json.get("historical").is_none(),
            "status marked historical: {}",
            m.raw
        );
        assert!(
            m.json["session"].is_u64(),
            "status without session: {}",
            m.raw
        );
    }
    let births: Vec<u64> = seen
        .iter()
        .filter(|m| m.is_status() && !m.retain && m.online() == Some(true))
        .map(Seen::session)
        .collect();
    assert_eq!(
        births,
        (1..=births_expected).collect::<Vec<_>>(),
        "the session of births grows by one per connection"
    );
    for m in seen
        .iter()
        .filter(|m| m.is_status() && m.online() == Some(false))
    {
        let born: Vec<&Seen> = seen
            .iter()
            .filter(|b| b.is_status() && b.online() == Some(true) && b.session() == m.session())
            .collect();
        assert!(
            !born.is_empty(),
            "an online: false whose session no birth had: {}",
            m.raw
        );
        assert_eq!(
            born[0].json["started_at"], m.json["started_at"],
            "will and birth of one connection: {}",
            m.raw
        );
    }
}

// ---------------------------------------------------------------------------
// Broker kills and link cuts, with the in-process uplink: the test decides
// every message, so it knows when the subscriber has all of them.

#[derive(Debug, Clone, Copy)]
enum Fault {
    /// The link dies with the agent connected; the broker fires the will.
    LinkCut,
    /// SIGKILL of the broker with the agent connected: no will.
    BrokerKill,
}

/// `persistent`: the broker saves its state every second and loads it again
/// when restarted (sessions, subscriptions, retained messages). `protocol`:
/// the agent's MQTT version.
async fn faults_leave_no_gap(persistent: bool, protocol: MqttVersion) {
    // `user root`: a broker started by root keeps the right to write its
    // temporary folder (it would switch to the `mosquitto` user otherwise).
    let extra = if persistent {
        "persistence true\npersistence_location {dir}/\nautosave_interval 1\nuser root"
    } else {
        ""
    };
    let mut broker = common::Mosquitto::start_with(extra);
    let link = Link::start(broker.port).await;
    let sub = DurableSubscriber::start(broker.port, "linegate/v1/#").await;
    // Persistence: let the broker save the subscriber's session once.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = uplink_support::uplink_config(&link.url());
    cfg.protocol = protocol;
    let agent = uplink_support::Agent::start(cfg, uplink_support::open_store(dir.path()));
    let mut enqueued = BTreeSet::new();
    let mut n = 0u64;
    let mut burst = |count: usize| {
        let agent = &agent;
        let mut seqs = Vec::new();
        let first = n;
        n += count as u64;
        async move {
            for i in 0..count as u64 {
                let class = if i % 3 == 0 {
                    MessageClass::Durable
                } else {
                    MessageClass::Telemetry
                };
                seqs.push(agent.enqueue(class, first + i).await);
            }
            seqs
        }
    };
    let mut connections = 1;
    eventually("first birth", LONG, || sub.live_births().len() == 1).await;
    enqueued.extend(burst(40).await);

    for fault in [
        Fault::LinkCut,
        Fault::BrokerKill,
        Fault::LinkCut,
        Fault::BrokerKill,
    ] {
        // Some messages are still in flight when a link is cut.
        enqueued.extend(burst(40).await);
        match fault {
            Fault::LinkCut => link.cut().await,
            Fault::BrokerKill => {
                eventually("subscriber has everything", LONG, || {
                    enqueued.is_subset(&sub.data_seqs())
                })
                .await;
                link.close().await;
                broker.stop();
            }
        }
        // Stored while the agent is cut off: sent later as historical.
        tokio::time::sleep(Duration::from_millis(300)).await;
        enqueued.extend(burst(20).await);
        tokio::time::sleep(Duration::from_millis(700)).await;
        if let Fault::BrokerKill = fault {
            let before = sub.subscriptions();
            broker.resume();
            sub.wait_subscribed(before).await;
        }
        link.open().await;
        connections += 1;
        eventually(&format!("birth after {fault:?}"), LONG, || {
            sub.live_births().len() == connections
        })
        .await;
    }
    enqueued.extend(burst(20).await);
    eventually("every message arrives", LONG, || {
        enqueued.is_subset(&sub.data_seqs())
    })
    .await;
    agent.stop().await.unwrap();

    let seen = sub.seen();
    let got = data_seqs(&seen);
    assert_eq!(
        got, enqueued,
        "the subscriber got exactly the seqs enqueued"
    );
    assert!(gaps(&got).is_empty(), "gaps in seq: {:?}", gaps(&got));
    assert_contract_v1_1(&seen, connections as u64);
    assert!(
        seen.iter().any(|m| m.json["historical"] == true),
        "messages stored during the faults came late, marked historical"
    );
    // Each link cut fired the will of the connection it killed.
    let wills: BTreeSet<u64> = seen
        .iter()
        .filter(|m| m.is_status() && m.online() == Some(false))
        .map(Seen::session)
        .collect();
    assert!(
        wills.contains(&1) && wills.contains(&3),
        "wills of the cut connections (sessions 1 and 3): {wills:?}"
    );
    if persistent {
        assert!(
            broker.dir().join("mosquitto.db").exists(),
            "the broker saved its state"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_kills_and_link_cuts_leave_no_gap_in_seq_and_sessions_count_connections() {
    faults_leave_no_gap(false, MqttVersion::V311).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_mqtt5_broker_kills_and_link_cuts_leave_no_gap_either() {
    faults_leave_no_gap(false, MqttVersion::V5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persistent_broker_killed_and_restarted_leaves_no_gap_in_seq_either() {
    faults_leave_no_gap(true, MqttVersion::V311).await;
}

// ---------------------------------------------------------------------------
// Agent kills, with the real binary on a simulated line.

const MACHINES: usize = 2;

struct Line {
    dir: tempfile::TempDir,
    config: PathBuf,
    stop: CancellationToken,
}

impl Line {
    async fn start(broker_url: &str) -> Line {
        let dir = tempfile::tempdir().unwrap();
        let stop = CancellationToken::new();
        let line = linegate::sim::serve(
            linegate::sim::SimOptions {
                machines: MACHINES,
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
            "\n[uplink]\nurl = {broker_url:?}\nkeepalive_s = 5\nheartbeat_s = 1\n\
             backoff_min_ms = 50\nbackoff_max_ms = 300\n"
        ));
        let config = dir.path().join("linegate.toml");
        std::fs::write(&config, text).unwrap();
        Line { dir, config, stop }
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }
}

impl Drop for Line {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The real agent. SIGKILLed when dropped.
struct AgentProcess {
    child: Child,
    log: PathBuf,
}

impl AgentProcess {
    fn start(line: &Line, life: usize) -> AgentProcess {
        let log = line.dir.path().join(format!("agent-{life}.log"));
        let child = Command::new(env!("CARGO_BIN_EXE_linegate"))
            .args(["-v", "run", "-c"])
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

    /// SIGKILL: no goodbye, no flush.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, as systemd stops it; true when it exited 0 within 15 s.
    async fn terminate(&mut self) -> bool {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        for _ in 0..750 {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.success();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn connected(&self) -> bool {
        self.log().contains("uplink connected")
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_killed_before_and_after_its_first_connack_leaves_no_gap_in_seq_or_session() {
    let mut broker = common::Mosquitto::start_with("max_queued_messages 0");
    let link = Link::start(broker.port).await;
    link.close().await;
    broker.stop();
    let line = Line::start(&link.url()).await;

    // Lives 1 and 2: the broker is down (its host refuses); SIGKILL before
    // any CONNACK.
    for life in 1..=2 {
        let mut agent = AgentProcess::start(&line, life);
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert!(!agent.connected(), "life {life} cannot have connected");
        // Killed while it waits out its backoff, right after a refused
        // attempt gave its number back. (Killed inside an attempt, between
        // committing its number and learning the connect was refused, it
        // has spent that number: a skip, which receivers tolerate; see
        // docs/contract.md. That window is not what this test is about.)
        let refused = |a: &AgentProcess| a.log().matches("uplink cannot connect").count();
        let seen = refused(&agent);
        eventually("another refused attempt", LONG, || refused(&agent) > seen).await;
        agent.kill();
    }

    broker.resume();
    let sub = DurableSubscriber::start(broker.port, "linegate/v1/#").await;
    link.open().await;

    // Life 3 connects, then is SIGKILLed while connected: the broker fires
    // its will.
    let mut agent = AgentProcess::start(&line, 3);
    eventually("birth of life 3", LONG, || sub.live_births().len() == 1).await;
    assert_eq!(
        sub.live_births()[0].session(),
        1,
        "the two lives that never got a CONNACK spent no session"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    agent.kill();
    eventually("will of life 3", LONG, || {
        sub.seen()
            .iter()
            .any(|m| m.online() == Some(false) && m.session() == 1)
    })
    .await;

    // Life 4: a link cut (will), a reconnect, then a clean stop (goodbye).
    let mut agent = AgentProcess::start(&line, 4);
    eventually("birth of life 4", LONG, || sub.live_births().len() == 2).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    link.cut().await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    link.open().await;
    eventually("birth after the cut", LONG, || sub.live_births().len() == 3).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(agent.terminate().await, "clean exit\n{}", agent.log());
    eventually("goodbye of life 4", LONG, || {
        sub.seen()
            .iter()
            .any(|m| m.online() == Some(false) && m.session() == 3)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    let seen = sub.seen();
    let got = data_seqs(&seen);
    assert!(
        gaps(&got).is_empty(),
        "gaps in seq: {:?}\n{}",
        gaps(&got),
        agent.log()
    );
    assert_contract_v1_1(&seen, 3);
    // Every seq ever taken reached the subscriber or is still in the outbox
    // (enqueued during the clean stop): none was taken for nothing.
    let store = Store::open(&line.data_dir()).unwrap();
    let (counts, left) = store
        .call_blocking(|c| {
            let mut left = outbox::next_batch(c, Stream::Live, 0, 1_000_000)?;
            left.extend(outbox::next_batch(c, Stream::Historical, 0, 1_000_000)?);
            Ok((outbox::counts(c)?, left))
        })
        .unwrap();
    let mut all = got.clone();
    all.extend(left.iter().map(|r| r.seq));
    assert_eq!(
        all,
        (1..counts.next_seq).collect::<BTreeSet<_>>(),
        "received + still stored = every seq taken"
    );
    assert!(
        seen.iter()
            .any(|m| !m.is_status() && m.json["historical"] == true),
        "the lives without a broker stored messages, sent late"
    );
}

// ---------------------------------------------------------------------------
// Plans are answered as a whole.

fn now() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-11-26T08:00:00Z")
        .unwrap()
        .with_timezone(&Utc)
}

fn order(id: &str) -> Value {
    json!({"type": "order", "order_id": id, "revision": 1, "machine": "press07",
           "product": "P-4711", "quantity": 120, "sequence": 17, "params": {"recipe": 4}})
}

/// The answers (order status bodies) one plan message produced.
fn answers_to(plan: Value) -> Vec<Value> {
    let dir = tempfile::tempdir().unwrap();
    let store = orders_support::open_store(dir.path());
    let config = orders_support::config("127.0.0.1:5020");
    let parsed = command::parse(plan.to_string().as_bytes(), &config);
    store
        .call_blocking(move |c| {
            book::intake(c, orders_support::record_only, parsed, &|_| false, now())
        })
        .expect("intake commits");
    let rows = store.call_blocking(|c| book::list(c, None)).unwrap();
    let events = orders_support::events(&store);
    if events.iter().any(|e| e["state"] == "rejected") {
        assert!(rows.is_empty(), "a rejected plan keeps no order: {rows:?}");
    }
    events
}

#[test]
fn a_plan_with_one_bad_order_is_rejected_whole_every_answer_naming_the_bad_order() {
    let mut bad = order("WO-2");
    bad["quantity"] = json!(0);
    let answers = answers_to(json!({"type": "plan", "plan_id": "HJ-7",
        "orders": [order("WO-1"), bad, order("WO-3")]}));
    let ids: Vec<&Value> = answers.iter().map(|a| &a["order_id"]).collect();
    assert_eq!(ids, [&json!("WO-1"), &json!("WO-2"), &json!("WO-3")]);
    for a in &answers {
        assert_eq!(a["state"], "rejected", "{a}");
        assert_eq!(a["plan_id"], "HJ-7", "{a}");
        let reason = a["reason"].as_str().unwrap();
        assert!(
            reason.contains("order WO-2") && reason.contains("quantity 0"),
            "the reason names the order at fault: {reason}"
        );
    }

    // An order without a readable id is named by its place in the plan.
    let mut nameless = order("x");
    nameless.as_object_mut().unwrap().remove("order_id");
    let answers = answers_to(json!({"type": "plan", "plan_id": "HJ-8",
        "orders": [order("WO-1"), nameless]}));
    assert_eq!(answers.len(), 2, "{answers:?}");
    for a in &answers {
        assert_eq!(
            (&a["state"], &a["plan_id"]),
            (&json!("rejected"), &json!("HJ-8"))
        );
        let reason = a["reason"].as_str().unwrap();
        assert!(reason.contains("orders[1]"), "{reason}");
    }
    assert_eq!(answers[0]["order_id"], "WO-1");
    assert_eq!(answers[1]["order_id"], Value::Null);
}

#[test]
fn a_good_plan_is_accepted_whole_one_answer_per_order() {
    let answers = answers_to(json!({"type": "plan", "plan_id": "HJ-9",
        "orders": [order("WO-1"), order("WO-2")]}));
    let accepted: Vec<&Value> = answers
        .iter()
        .filter(|a| a["state"] == "accepted")
        .map(|a| &a["order_id"])
        .collect();
    assert_eq!(accepted, [&json!("WO-1"), &json!("WO-2")]);
    assert!(answers.iter().all(|a| a["state"] != "rejected"));
}

#[test]
fn a_plan_whose_orders_cannot_be_read_gets_one_rejection_with_a_null_order_id() {
    for (plan, why) in [
        (
            json!({"type": "plan", "plan_id": "HJ-1"}),
            "missing field `orders`",
        ),
        (
            json!({"type": "plan", "plan_id": "HJ-1", "orders": "WO-1"}),
            "must be an array",
        ),
        (
            json!({"type": "plan", "plan_id": "HJ-1", "orders": []}),
            "is empty",
        ),
        (
            json!({"type": "plan", "plan_id": "HJ-1", "orders": [1, "two", null]}),
            "none of its orders can be read",
        ),
        (
            json!({"type": "plan", "plan_id": "HJ-1", "orders": [{"quantity": 5}]}),
            "none of its orders can be read",
        ),
        // A stray order_id on the plan itself is not an order of it.
        (
            json!({"type": "plan", "plan_id": "HJ-1", "order_id": "WO-1", "orders": [order("WO-2")]}),
            "unknown field",
        ),
    ] {
        let answers = answers_to(plan.clone());
        assert_eq!(answers.len(), 1, "one answer to {plan}: {answers:?}");
        let a = &answers[0];
        assert_eq!(a["state"], "rejected", "{a}");
        assert_eq!(a["order_id"], Value::Null, "{a}");
        assert_eq!(a["plan_id"], "HJ-1", "{a}");
        let reason = a["reason"].as_str().unwrap();
        assert!(
            reason.contains("plan HJ-1") && reason.contains(why),
            "{reason}"
        );
    }
}
