//! MQTT machine sources against a real Mosquitto and a publisher that
//! misbehaves the way PLC gateways do: retained replays of old states and
//! counts, oversized messages (retained and live), integers just out of
//! range, a connection that the broker drops right after its CONNACK.
//!
//! The publisher here is a client of its own that logs what it really sent
//! and when (after the broker's PUBACK); the agent's source and state engine
//! run for real, and their states, durations and part counts are compared to
//! that log, never to the agent's own output.
mod common;

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use linegate::config::Config;
use linegate::machine::accounting::AccountSnapshot;
use linegate::machine::engine::{engine_channel, machine_views, run_engine};
use linegate::machine::{MachineEvent, MachineState, MachineView, PeriodKind, StateChange};
use linegate::source::mqtt::{run_mqtt_bus_with_stats, MqttBusStats};
use linegate::source::{Sample, SampleContent, SignalError};
use linegate::systemd::Liveness;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How long a test waits for something that should happen (never asserted as speed).
const PATIENCE: Duration = Duration::from_secs(20);

/// How far the agent's time of a change may be from the publisher's PUBACK
/// (loopback delivery and the engine's turn; generous for a loaded machine).
const SLACK_MS: i64 = 400;

const CLIENT_ID: &str = "linegate-faults-plc";

fn config(broker_url: &str, extra_bus: &str) -> Config {
    let text = format!(
        r#"
[gateway]
id = "gw-test"
site = "plant1"
data_dir = "/tmp/linegate-mqtt-faults-test"

[[bus]]
id = "plc"
transport = "mqtt"
address = "{broker_url}"
client_id = "{CLIENT_ID}"
stale_ms = 1500
backoff_min_ms = 50
backoff_max_ms = 800
{extra_bus}

[[machine]]
id = "oven2"
bus = "plc"

[[machine.signal]]
name = "heating"
type = "bool"
topic = "plc/oven2/status"
pointer = "/heating"

[[machine.signal]]
name = "parts"
type = "u32"
topic = "plc/oven2/count"

[machine.state]
running = "heating"

[machine.counters]
produced = "parts"

[[machine]]
id = "press07"
bus = "plc"

[[machine.signal]]
name = "rpm"
type = "u32"
topic = "plc/press07/rpm"

[[machine.signal]]
name = "energy_wh"
type = "u64"
topic = "plc/press07/energy"

[[machine.signal]]
name = "drift"
type = "i64"
topic = "plc/press07/drift"
"#
    );
    Config::from_toml(&text, Path::new("mqtt-faults-test.toml")).expect("test config is valid")
}

/// One message the publisher really sent: acknowledged by the broker at `at`.
#[derive(Debug, Clone)]
struct Sent {
    at: DateTime<Utc>,
    topic: String,
    payload: String,
    bytes: usize,
    retain: bool,
}

/// The misbehaving PLC gateway: publishes at QoS 1 and logs every message
/// the broker acknowledged.
struct Publisher {
    port: u16,
    log: Vec<Sent>,
}

impl Publisher {
    fn new(port: u16) -> Self {
        Publisher {
            port,
            log: Vec::new(),
        }
    }

    async fn send(&mut self, topic: &str, payload: Vec<u8>, retain: bool) {
        let bytes = payload.len();
        let text = String::from_utf8_lossy(&payload[..bytes.min(40)]).into_owned();
        let at = publish(self.port, topic, payload, retain).await;
        self.log.push(Sent {
            at,
            topic: topic.to_string(),
            payload: text,
            bytes,
            retain,
        });
    }

    /// The live (not retained) messages sent on `topic`.
    fn live<'a>(&'a self, topic: &'a str) -> impl Iterator<Item = &'a Sent> + 'a {
        self.log
            .iter()
            .filter(move |s| s.topic == topic && !s.retain)
    }
}

/// Publish through a short-lived client; returns when the broker's PUBACK arrived.
async fn publish(port: u16, topic: &str, payload: Vec<u8>, retain: bool) -> DateTime<Utc> {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let id = format!("plc-gw-{}", N.fetch_add(1, Ordering::Relaxed));
    let mut o = MqttOptions::new(id, "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(5))
        .set_max_packet_size(1 << 25, 1 << 25);
    let (client, mut events) = AsyncClient::new(o, 10);
    client
        .publish(topic, QoS::AtLeastOnce, retain, payload)
        .await
        .expect("queue the publish");
    let acked = tokio::time::timeout(PATIENCE, async {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => return Utc::now(),
                Ok(_) => {}
                Err(e) => panic!("publisher lost the broker: {e}"),
            }
        }
    })
    .await
    .expect("the broker acknowledges the publish");
    let _ = client.try_disconnect();
    let _ = tokio::time::timeout(Duration::from_millis(200), events.poll()).await;
    acked
}

/// Connect once with the agent's own client id: the broker drops the agent's
/// connection (session takeover), as a PLC gateway with a clashing id does.
async fn take_over_agents_client_id(port: u16) {
    let mut o = MqttOptions::new(CLIENT_ID, "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(5));
    let (client, mut events) = AsyncClient::new(o, 10);
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    let _ = client.try_disconnect();
    let _ = tokio::time::timeout(Duration::from_millis(200), events.poll()).await;
}

/// The agent's MQTT source and state engine, with every sample the source
/// sent and every event the engine made.
struct Agent {
    stats: Arc<MqttBusStats>,
    samples: Arc<Mutex<Vec<Sample>>>,
    views: HashMap<String, watch::Receiver<MachineView>>,
    stop_bus: CancellationToken,
    stop_engine: CancellationToken,
    engine: JoinHandle<(Vec<MachineEvent>, Snapshots)>,
}

/// The engine's final snapshot of every machine.
type Snapshots = Vec<(String, AccountSnapshot)>;

/// What the engine made of one machine by the time it stopped.
struct Outcome {
    changes: Vec<StateChange>,
    /// Running milliseconds in its utilisation periods (closed ones and the open one).
    period_running_ms: i64,
    /// Parts made in its utilisation periods.
    period_parts: u64,
}

impl Agent {
    fn start(config: Config) -> Agent {
        let config = Arc::new(config);
        let stats = Arc::new(MqttBusStats::new("plc"));
        let (bus_tx, mut bus_rx) = mpsc::channel::<Sample>(256);
        let (engine_tx, engine_rx) = mpsc::channel::<Sample>(256);
        let (event_tx, mut event_rx) = mpsc::channel(1024);
        let stop_bus = CancellationToken::new();
        let stop_engine = CancellationToken::new();
        tokio::spawn(run_mqtt_bus_with_stats(
            config.bus[0].clone(),
            config.machine.clone(),
            bus_tx,
            stats.clone(),
            Liveness::new().register("mqtt bus"),
            stop_bus.clone(),
        ));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let seen = samples.clone();
        tokio::spawn(async move {
            while let Some(s) = bus_rx.recv().await {
                seen.lock().unwrap().push(s.clone());
                if engine_tx.send(s).await.is_err() {
                    break;
                }
            }
        });
        let (view_tx, views) = machine_views(&config, Utc::now());
        let (_handle, commands) = engine_channel();
        let engine = {
            let stop = stop_engine.clone();
            tokio::spawn(async move {
                let collect = tokio::spawn(async move {
                    let mut all = Vec::new();
                    while let Some(e) = event_rx.recv().await {
                        all.push(e);
                    }
                    all
                });
                let snapshots = run_engine(
                    config,
                    Vec::new(),
                    engine_rx,
                    event_tx,
                    view_tx,
                    commands,
                    Liveness::new().register("state engine"),
                    stop,
                )
                .await
                .expect("engine runs");
                (collect.await.expect("collector"), snapshots)
            })
        };
        Agent {
            stats,
            samples,
            views,
            stop_bus,
            stop_engine,
            engine,
        }
    }

    /// Wait until `what` holds of the bus counters.
    async fn until_stats(&self, what: &str, f: impl Fn(&MqttBusStats) -> bool) {
        tokio::time::timeout(PATIENCE, async {
            while !f(&self.stats) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("waited in vain for {what}: {:?}", self.stats.snapshot()));
    }

    /// Samples the source has sent so far.
    fn sample_count(&self) -> usize {
        self.samples.lock().unwrap().len()
    }

    /// Wait until a sample satisfies `f`; returns it.
    async fn until_sample(&self, what: &str, f: impl Fn(&Sample) -> bool) -> Sample {
        self.until_sample_after(0, what, f).await
    }

    /// Wait until a sample after the first `from` satisfies `f`; returns it.
    async fn until_sample_after(
        &self,
        from: usize,
        what: &str,
        f: impl Fn(&Sample) -> bool,
    ) -> Sample {
        tokio::time::timeout(PATIENCE, async {
            loop {
                if let Some(s) = self
                    .samples
                    .lock()
                    .unwrap()
                    .iter()
                    .skip(from)
                    .find(|s| f(s))
                {
                    return s.clone();
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("waited in vain for a sample: {what}"))
    }

    async fn until_state(&self, machine: &str, state: MachineState) -> MachineView {
        let mut rx = self.views[machine].clone();
        let v = tokio::time::timeout(PATIENCE, rx.wait_for(|v| v.state == state))
            .await
            .unwrap_or_else(|_| panic!("{machine} never became {state}"))
            .expect("engine alive");
        v.clone()
    }

    fn view(&self, machine: &str) -> MachineView {
        self.views[machine].borrow().clone()
    }

    /// Stop the source, then the engine; what it made of `machine`.
    async fn stop(self, machine: &str) -> Outcome {
        self.stop_bus.cancel();
        tokio::time::sleep(Duration::from_millis(300)).await;
        self.stop_engine.cancel();
        let (events, snapshots) = self.engine.await.expect("engine task");
        let mut out = Outcome {
            changes: Vec::new(),
            period_running_ms: 0,
            period_parts: 0,
        };
        for e in events {
            match e {
                MachineEvent::State(c) if c.machine == machine => out.changes.push(c),
                MachineEvent::Period(p)
                    if p.machine == machine && p.kind == PeriodKind::Interval =>
                {
                    out.period_running_ms += (p.seconds.running * 1000.0).round() as i64;
                    out.period_parts += p.counts.produced;
                }
                _ => {}
            }
        }
        let open = snapshots
            .iter()
            .find(|(m, _)| m == machine)
            .and_then(|(_, s)| s.interval.as_ref());
        if let Some(p) = open {
            out.period_running_ms += p.ms[0];
            out.period_parts += p.counts.produced;
        }
        out
    }
}

/// Milliseconds spent in `state` according to the changes, up to `until`.
fn ms_in(changes: &[StateChange], state: MachineState, until: DateTime<Utc>) -> i64 {
    changes
        .iter()
        .enumerate()
        .filter(|(_, c)| c.state == state)
        .map(|(i, c)| {
            let end = changes.get(i + 1).map_or(until, |n| n.since);
            (end - c.since).num_milliseconds()
        })
        .sum()
}

fn close(what: &str, agent: DateTime<Utc>, truth: DateTime<Utc>) {
    let d = (agent - truth).num_milliseconds();
    assert!(
        d.abs() <= SLACK_MS,
        "{what}: the agent says {agent}, the publisher's log {truth} ({d} ms apart)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_replays_neither_run_the_machine_nor_count_parts_nor_keep_it_fresh() {
    let broker = common::Mosquitto::start();
    let mut plc = Publisher::new(broker.port);
    // Left on the broker long ago by a publisher since gone: "running", 100 parts.
    plc.send("plc/oven2/status", br#"{"heating":true}"#.to_vec(), true)
        .await;
    plc.send("plc/oven2/count", b"100".to_vec(), true).await;

    let agent = Agent::start(config(&broker.url(), ""));
    agent
        .until_stats("the two replays on the first subscription", |s| {
            s.retained_ignored.load(Ordering::Relaxed) >= 2
        })
        .await;
    assert_ne!(
        agent.view("oven2").state,
        MachineState::Running,
        "a retained `running` is no reading"
    );

    // Live: idle with the counter at 1000, then 10 parts while running.
    plc.send("plc/oven2/status", br#"{"heating":false}"#.to_vec(), false)
        .await;
    plc.send("plc/oven2/count", b"1000".to_vec(), false).await;
    agent.until_state("oven2", MachineState::Idle).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    plc.send("plc/oven2/status", br#"{"heating":true}"#.to_vec(), false)
        .await;
    for n in 1001..=1010 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        plc.send("plc/oven2/count", n.to_string().into_bytes(), false)
            .await;
    }
    plc.send("plc/oven2/status", br#"{"heating":false}"#.to_vec(), false)
        .await;
    agent.until_state("oven2", MachineState::Idle).await;

    // The gateway's connection is dropped; on the reconnect the broker
    // replays "running" and 100 again. Then the publisher stays silent.
    tokio::time::sleep(Duration::from_millis(700)).await;
    take_over_agents_client_id(broker.port).await;
    agent
        .until_stats("the reconnect and its two replays", |s| {
            s.connections.load(Ordering::Relaxed) >= 2
                && s.retained_ignored.load(Ordering::Relaxed) >= 4
        })
        .await;
    let offline = agent.until_state("oven2", MachineState::Offline).await;
    let end = Utc::now();
    let parts = agent.view("oven2").produced_total;
    let outcome = agent.stop("oven2").await;
    let changes = outcome.changes;

    // The truth, from the publisher's log.
    let counts: Vec<u64> = plc
        .live("plc/oven2/count")
        .map(|s| s.payload.parse().expect("the log holds numbers"))
        .collect();
    let made = counts.iter().max().unwrap() - counts.first().unwrap();
    assert_eq!(made, 10);
    assert_eq!(
        parts, made,
        "parts made: a replayed 100 after 1010 is not a reset"
    );
    assert_eq!(
        outcome.period_parts, made,
        "parts in the utilisation periods"
    );

    let status: Vec<&Sent> = plc.live("plc/oven2/status").collect();
    let (run_from, run_to) = (status[1].at, status[2].at);
    for c in changes.iter().filter(|c| c.state == MachineState::Running) {
        assert!(
            c.since >= run_from - chrono::TimeDelta::milliseconds(SLACK_MS) && c.since <= run_to,
            "running only while the publisher said so: {c:?}, log {run_from}..{run_to}"
        );
    }
    let running_ms = ms_in(&changes, MachineState::Running, end);
    let truth_ms = (run_to - run_from).num_milliseconds();
    assert!(
        (running_ms - truth_ms).abs() <= SLACK_MS,
        "running {running_ms} ms, the publisher ran it {truth_ms} ms: {changes:#?}"
    );
    assert!(
        (outcome.period_running_ms - truth_ms).abs() <= SLACK_MS,
        "running in the utilisation periods {} ms, the publisher ran it {truth_ms} ms",
        outcome.period_running_ms
    );

    // Offline from the last live message, not from the replays after the reconnect.
    let last_live = plc.log.iter().filter(|s| !s.retain).map(|s| s.at).max();
    close(
        "offline from the last good observation",
        offline.since,
        last_live.expect("live messages"),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_message_is_refused_by_itself_and_the_bus_stays_up() {
    let broker = common::Mosquitto::start();
    let mut plc = Publisher::new(broker.port);
    // A 2 MiB retained status: replayed on every subscription.
    let pad = |n: usize| "x".repeat(n);
    plc.send(
        "plc/oven2/status",
        format!(r#"{{"heating":true,"pad":"{}"}}"#, pad(2 << 20)).into_bytes(),
        true,
    )
    .await;

    let agent = Agent::start(config(&broker.url(), "max_payload_bytes = 65536"));
    agent
        .until_stats("the oversized replay refused", |s| {
            s.refused_oversized.load(Ordering::Relaxed) >= 1
        })
        .await;

    // Other machines' data flows on the same connection.
    plc.send("plc/press07/rpm", b"1200".to_vec(), false).await;
    agent
        .until_sample("press07 rpm 1200", |s| {
            s.machine == "press07" && format!("{:?}", s.content).contains("1200")
        })
        .await;
    plc.send("plc/oven2/status", br#"{"heating":true}"#.to_vec(), false)
        .await;
    agent.until_state("oven2", MachineState::Running).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    // A 10 MB "heating=false": refused, named, counted; the oven is not left running.
    plc.send(
        "plc/oven2/status",
        format!(r#"{{"heating":false,"pad":"{}"}}"#, pad(10_000_000)).into_bytes(),
        false,
    )
    .await;
    let big = plc.log.last().expect("logged").clone();
    let refused = agent
        .until_sample("oven2's refused message", |s| {
            s.machine == "oven2"
                && matches!(&s.content, SampleContent::Signals(r)
                    if matches!(r.get("heating"), Some(Err(SignalError::BadPayload(_)))))
        })
        .await;
    let SampleContent::Signals(r) = &refused.content else {
        unreachable!("matched above")
    };
    let Some(Err(SignalError::BadPayload(m))) = r.get("heating") else {
        unreachable!("matched above")
    };
    assert!(m.contains("plc/oven2/status"), "names the topic: {m}");
    assert!(m.contains(&big.bytes.to_string()), "names the size: {m}");
    let offline = agent.until_state("oven2", MachineState::Offline).await;

    plc.send("plc/press07/rpm", b"1300".to_vec(), false).await;
    agent
        .until_sample("press07 rpm 1300", |s| {
            s.machine == "press07" && format!("{:?}", s.content).contains("1300")
        })
        .await;
    plc.send("plc/oven2/status", br#"{"heating":false}"#.to_vec(), false)
        .await;
    agent.until_state("oven2", MachineState::Idle).await;

    let stats = agent.stats.snapshot();
    assert_eq!(stats.refused_oversized, 2, "{stats:?}");
    assert_eq!(
        stats.connections, 1,
        "no message dropped the connection: {stats:?}"
    );
    let outcome = agent.stop("oven2").await;

    // Offline from the last good observation (the small "heating":true),
    // the same rule as a silence.
    let last_good = plc
        .live("plc/oven2/status")
        .find(|s| s.bytes < 1000)
        .expect("logged")
        .at;
    close("offline after a refused message", offline.since, last_good);
    // Never more running than the publisher said: it ran from its
    // "heating":true until the refused "heating":false at the latest.
    let ran_ms = (big.at - last_good).num_milliseconds();
    assert!(
        outcome.period_running_ms <= ran_ms + SLACK_MS,
        "running {} ms in the periods, the publisher ran it {ran_ms} ms at most",
        outcome.period_running_ms
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn integers_out_of_their_range_are_errors_for_that_signal() {
    let broker = common::Mosquitto::start();
    let mut plc = Publisher::new(broker.port);
    let agent = Agent::start(config(&broker.url(), ""));
    // Subscribed once a live value arrives (publish until one does).
    tokio::time::timeout(PATIENCE, async {
        loop {
            plc.send("plc/press07/rpm", b"1".to_vec(), false).await;
            if agent
                .samples
                .lock()
                .unwrap()
                .iter()
                .any(|s| s.machine == "press07")
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
    .expect("the bus subscribes");

    for (topic, signal, payload, kind) in [
        (
            "plc/press07/energy",
            "energy_wh",
            "18446744073709551616",
            "u64",
        ),
        ("plc/press07/drift", "drift", "9223372036854775808", "i64"),
        ("plc/press07/drift", "drift", "-9223372036854775809", "i64"),
    ] {
        let before = agent.sample_count();
        plc.send(topic, payload.as_bytes().to_vec(), false).await;
        let s = agent
            .until_sample_after(before, payload, |s| {
                s.machine == "press07"
                    && matches!(&s.content, SampleContent::Signals(r) if r.get(signal).is_some())
            })
            .await;
        let SampleContent::Signals(r) = &s.content else {
            unreachable!("matched above")
        };
        let Some(Err(SignalError::BadPayload(m))) = r.get(signal) else {
            panic!("{payload} for a {kind} signal gave {:?}", r.get(signal))
        };
        assert!(m.contains(&format!("outside the range of {kind}")), "{m}");
        assert!(m.contains(topic), "{m}");
    }
    // The largest values themselves are good readings.
    plc.send(
        "plc/press07/energy",
        b"18446744073709551615".to_vec(),
        false,
    )
    .await;
    agent
        .until_sample("u64::MAX", |s| {
            matches!(&s.content, SampleContent::Signals(r)
                if r.get("energy_wh") == Some(&Ok(linegate::source::Value::UInt(u64::MAX))))
        })
        .await;
    let _ = agent.stop("press07").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_dies_right_after_its_connack_does_not_reset_the_backoff() {
    let broker = common::Mosquitto::start();
    let agent = Agent::start(config(&broker.url(), ""));
    agent
        .until_stats("the first connection", |s| {
            s.connections.load(Ordering::Relaxed) >= 1
        })
        .await;
    // A clashing client takes the agent's id over and over for 3 s: every
    // connection of the agent dies within moments of its CONNACK.
    let started = agent.stats.connections.load(Ordering::Relaxed);
    let port = broker.port;
    let until = tokio::time::Instant::now() + Duration::from_secs(3);
    let mut takeovers = 0u64;
    while tokio::time::Instant::now() < until {
        take_over_agents_client_id(port).await;
        takeovers += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let reconnects = agent.stats.connections.load(Ordering::Relaxed) - started;
    // Backoff 50 ms doubling to 800 ms: 50+100+200+400+800+800 fits about
    // 6 attempts in 3 s; with every delay jittered down to its half, 11.
    // A backoff that reset on every CONNACK follows the takeovers (~60).
    assert!(
        reconnects <= 15,
        "{reconnects} reconnects for {takeovers} takeovers in 3 s"
    );
    assert!(reconnects >= 1, "the agent reconnects at all");
    let _ = agent.stop("oven2").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timestamped_retained_message_is_the_state_at_its_own_time_only_while_young() {
    let broker = common::Mosquitto::start();
    let mut plc = Publisher::new(broker.port);
    let stamp = |t: DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    // Just said, retained: the oven is heating, as of this instant.
    let said_at = Utc::now();
    plc.send(
        "plc/oven2/status",
        format!(r#"{{"heating":true,"ts":"{}"}}"#, stamp(said_at)).into_bytes(),
        true,
    )
    .await;
    plc.send("plc/oven2/count", b"100".to_vec(), true).await;

    let agent = Agent::start(config(
        &broker.url(),
        "retained = \"timestamped\"\ntimestamp_pointer = \"/ts\"",
    ));
    let running = agent.until_state("oven2", MachineState::Running).await;
    assert!(
        running.since >= said_at - chrono::TimeDelta::milliseconds(SLACK_MS),
        "running from the message's own time at the earliest: {running:?}, said at {said_at}"
    );
    // The count has no time of its own, and a counter is never taken from a replay.
    let stats = agent.stats.snapshot();
    assert_eq!(
        (stats.retained_used, stats.retained_ignored),
        (1, 1),
        "{stats:?}"
    );

    // Nothing live follows: offline from that observation once stale_ms has passed.
    let offline = agent.until_state("oven2", MachineState::Offline).await;
    close(
        "offline from the retained observation",
        offline.since,
        running.since,
    );

    // A retained "heating" a minute old, replayed when the gateway comes
    // back (published while it was away, so only the replay reaches it), is
    // no reading.
    let _ = agent.stop("oven2").await;
    plc.send(
        "plc/oven2/status",
        format!(
            r#"{{"heating":true,"ts":"{}"}}"#,
            stamp(Utc::now() - chrono::TimeDelta::seconds(60))
        )
        .into_bytes(),
        true,
    )
    .await;
    let agent = Agent::start(config(
        &broker.url(),
        "retained = \"timestamped\"\ntimestamp_pointer = \"/ts\"",
    ));
    agent
        .until_stats("the replays ignored", |s| {
            s.retained_ignored.load(Ordering::Relaxed) >= 2
        })
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(agent.stats.snapshot().retained_used, 0);
    assert_ne!(agent.view("oven2").state, MachineState::Running);
    assert_eq!(agent.view("oven2").produced_total, 0);
    let outcome = agent.stop("oven2").await;
    assert!(
        outcome
            .changes
            .iter()
            .all(|c| c.state != MachineState::Running),
        "{:?}",
        outcome.changes
    );
    assert_eq!(
        outcome.period_running_ms, 0,
        "no running time from an old replay"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_payload_and_a_silence_date_offline_back_by_the_same_rule() {
    let broker = common::Mosquitto::start();
    let mut plc = Publisher::new(broker.port);
    let agent = Agent::start(config(&broker.url(), ""));
    // Idle, said live (publish until the bus has subscribed and passed it on).
    tokio::time::timeout(PATIENCE, async {
        loop {
            plc.send("plc/oven2/status", br#"{"heating":false}"#.to_vec(), false)
                .await;
            if agent.view("oven2").state == MachineState::Idle {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
    .expect("the bus subscribes");
    let idle_at = plc.log.last().expect("logged").at;

    // 800 ms later a message that cannot be read: offline from the last good one.
    tokio::time::sleep(Duration::from_millis(800)).await;
    plc.send(
        "plc/oven2/status",
        br#"{"heating":"maybe"}"#.to_vec(),
        false,
    )
    .await;
    let offline = agent.until_state("oven2", MachineState::Offline).await;
    close("offline after a bad payload", offline.since, idle_at);
    assert!(
        offline
            .reason
            .as_deref()
            .is_some_and(|r| r.contains("maybe")),
        "{offline:?}"
    );

    // Idle again, then silence: offline from that last good message as well.
    plc.send("plc/oven2/status", br#"{"heating":false}"#.to_vec(), false)
        .await;
    let idle_again_at = plc.log.last().expect("logged").at;
    agent.until_state("oven2", MachineState::Idle).await;
    let stale = agent.until_state("oven2", MachineState::Offline).await;
    close("offline after a silence", stale.since, idle_again_at);
    let _ = agent.stop("oven2").await;
}
