//! Work orders end to end, nothing stood in: a planner publishes to
//! `{p}/orders/cmd` on a real Mosquitto; the real agent (`agent::run`,
//! in-process) takes the messages from its uplink, levels the plan and
//! releases each order through its Modbus bus task to the simulated line
//! (`sim::serve`, real Modbus TCP), whose machine runs the order's quantity
//! and idles; the planner follows `{p}/orders/status`.
//!
//! The line runs sped up. Timeouts are generous and nothing asserts speed:
//! only what arrives and in which order.

mod common;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use linegate::agent::{self, RunOptions};
use linegate::config::Config;
use linegate::sim::{self, SimLine, SimOptions};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::{json, Value};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Longest wait for anything the line has to do (a whole plan included).
const LONG: Duration = Duration::from_secs(240);
/// Sim speed: 6 s cycles take 30 ms, an order's setup 0.1..0.45 s.
const SPEED: f64 = 200.0;

/// One message seen by the planner.
#[derive(Debug, Clone)]
struct Seen {
    topic: String,
    json: Value,
}

/// The planner: publishes commands, follows `orders/status` and `status`.
struct Planner {
    client: AsyncClient,
    prefix: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: JoinHandle<()>,
}

impl Planner {
    async fn start(port: u16, prefix: &str) -> Planner {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let subscribed = Arc::new(tokio::sync::Notify::new());
        let mut o = MqttOptions::new("planner", "127.0.0.1", port);
        o.set_keep_alive(Duration::from_secs(5));
        o.set_max_packet_size(1 << 21, 6 << 20);
        let (client, mut events) = AsyncClient::new(o, 100);
        let (s, sub, c, p) = (
            seen.clone(),
            subscribed.clone(),
            client.clone(),
            prefix.to_owned(),
        );
        let task = tokio::spawn(async move {
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        for t in ["orders/status", "status"] {
                            let _ = c.subscribe(format!("{p}/{t}"), QoS::AtLeastOnce).await;
                        }
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => sub.notify_one(),
                    Ok(Event::Incoming(Packet::Publish(m))) => {
                        let json = serde_json::from_slice(&m.payload).unwrap_or(Value::Null);
                        s.lock().unwrap().push(Seen {
                            topic: m.topic.clone(),
                            json,
                        });
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(10), subscribed.notified())
            .await
            .expect("planner subscribed");
        Planner {
            client,
            prefix: prefix.to_owned(),
            seen,
            task,
        }
    }

    async fn send_raw(&self, payload: Vec<u8>) {
        self.client
            .publish(
                format!("{}/orders/cmd", self.prefix),
                QoS::AtLeastOnce,
                false,
                payload,
            )
            .await
            .expect("planner publishes");
    }

    async fn send(&self, v: Value) {
        self.send_raw(v.to_string().into_bytes()).await;
    }

    /// Every `orders/status` body, in arrival order.
    fn statuses(&self) -> Vec<Value> {
        let topic = format!("{}/orders/status", self.prefix);
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|m| m.topic == topic)
            .map(|m| m.json.clone())
            .collect()
    }

    /// Status bodies of one order, in arrival order.
    fn of(&self, order_id: &str) -> Vec<Value> {
        self.statuses()
            .into_iter()
            .filter(|s| s["order_id"] == order_id)
            .collect()
    }

    fn gateway_online(&self) -> bool {
        let topic = format!("{}/status", self.prefix);
        self.seen
            .lock()
            .unwrap()
            .iter()
            .any(|m| m.topic == topic && m.json["online"] == true)
    }

    /// Wait (bounded by `limit`) until `cond` holds on the statuses so far.
    async fn wait(&self, what: &str, limit: Duration, cond: impl Fn(&Planner) -> bool) {
        let deadline = tokio::time::Instant::now() + limit;
        while !cond(self) {
            if tokio::time::Instant::now() > deadline {
                panic!(
                    "timed out waiting for: {what}\nstatuses so far:\n{}",
                    self.statuses()
                        .iter()
                        .map(Value::to_string)
                        .collect::<Vec<_>>()
                        .join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Wait until the agent is online and takes commands: a hold of an
    /// unknown order is sent until its rejection comes back (the agent
    /// subscribes right after its birth; the first probe may beat that).
    async fn wait_for_agent(&self) {
        self.wait("gateway birth", LONG, Planner::gateway_online)
            .await;
        let deadline = tokio::time::Instant::now() + LONG;
        loop {
            self.send(json!({"type": "hold", "order_id": "PROBE"}))
                .await;
            for _ in 0..40 {
                if !self.of("PROBE").is_empty() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the agent never answered a command"
            );
        }
    }
}

impl Drop for Planner {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Broker, simulated line and agent, each real, each stopped at the end.
struct Rig {
    _broker: common::Mosquitto,
    _dir: tempfile::TempDir,
    line_stop: CancellationToken,
    agent_stop: CancellationToken,
    agent: JoinHandle<()>,
    planner: Planner,
    line: Option<SimLine>,
}

impl Rig {
    async fn start(machines: usize) -> Rig {
        let broker = common::Mosquitto::start();
        let dir = tempfile::tempdir().expect("tempdir");
        let line_stop = CancellationToken::new();
        let line = sim::serve(
            SimOptions {
                machines,
                base_port: 0,
                seed: 11,
                speed: SPEED,
                truth: None,
                honour_orders: true,
            },
            line_stop.clone(),
        )
        .await
        .expect("simulated line starts");
        let text = format!(
            "{}\n[uplink]\nurl = \"{}\"\n",
            sim::demo_config(&line, &dir.path().join("data")),
            broker.url()
        );
        let config =
            Config::from_toml(&text, Path::new("e2e.toml")).unwrap_or_else(|e| panic!("{e}"));
        let planner = Planner::start(broker.port, &config.topic_prefix()).await;
        let agent_stop = CancellationToken::new();
        let stop = agent_stop.clone();
        let agent = tokio::spawn(async move {
            let options = RunOptions {
                config_path: None,
                board: None,
                alone_in_process: false,
            };
            if let Err(e) = agent::run(config, options, stop).await {
                panic!("agent stopped with an error: {e}");
            }
        });
        planner.wait_for_agent().await;
        Rig {
            _broker: broker,
            _dir: dir,
            line_stop,
            agent_stop,
            agent,
            planner,
            line: Some(line),
        }
    }

    async fn stop(mut self) {
        self.agent_stop.cancel();
        let agent = std::mem::replace(&mut self.agent, tokio::spawn(async {}));
        tokio::time::timeout(Duration::from_secs(30), agent)
            .await
            .expect("agent stops in time")
            .expect("agent task ends cleanly");
        self.line_stop.cancel();
        if let Some(line) = self.line.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), line.stopped()).await;
        }
    }
}

fn order(id: &str, product: &str, quantity: u32) -> Value {
    json!({"order_id": id, "revision": 1, "product": product, "quantity": quantity})
}

/// An order's states with consecutive repeats (progress reports) folded.
fn state_path(statuses: &[Value]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for s in statuses {
        let state = s["state"].as_str().unwrap_or("?").to_owned();
        if out.last() != Some(&state) {
            out.push(state);
        }
    }
    out
}

/// Position in `all` of the first status of `order_id` in `state`.
fn position(all: &[Value], order_id: &str, state: &str) -> usize {
    all.iter()
        .position(|s| s["order_id"] == order_id && s["state"] == state)
        .unwrap_or_else(|| panic!("no {state} status for {order_id}"))
}

fn is_completed(p: &Planner, order_id: &str) -> bool {
    p.of(order_id).iter().any(|s| s["state"] == "completed")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_levelled_plan_is_released_in_turn_and_every_order_completes_on_the_simulated_line() {
    let rig = Rig::start(1).await;
    let p = &rig.planner;

    // A=4, B=2, C=1 orders, given grouped by product: the agent levels them.
    let mut plan_orders = vec![
        order("A1", "P-4711", 3),
        order("A2", "P-4711", 2),
        order("A3", "P-4711", 3),
        order("A4", "P-4711", 2),
        order("B1", "P-4712", 2),
        order("B2", "P-4712", 3),
        order("C1", "P-4713", 1),
    ];
    plan_orders[0]["ideal_cycle_s"] = json!(0.027);
    p.send(
        json!({"type": "plan", "plan_id": "HJ-E2E", "machine": "sim01", "level": true,
                  "orders": plan_orders}),
    )
    .await;
    // Two more orders for the same machine, after the plan: one is held
    // while queued, one cancelled while queued.
    let mut held = order("WO-H", "P-4712", 2);
    held["machine"] = json!("sim01");
    held["sequence"] = json!(100);
    let mut cancelled = order("WO-C", "P-4711", 2);
    cancelled["machine"] = json!("sim01");
    cancelled["sequence"] = json!(101);
    held["type"] = json!("order");
    cancelled["type"] = json!("order");
    p.send(held).await;
    p.send(cancelled).await;
    p.send(json!({"type": "hold", "order_id": "WO-H"})).await;
    p.send(json!({"type": "cancel", "order_id": "WO-C"})).await;
    p.wait("WO-H held and WO-C cancelled", LONG, |p| {
        p.of("WO-H").iter().any(|s| s["state"] == "held")
            && p.of("WO-C").iter().any(|s| s["state"] == "cancelled")
    })
    .await;

    let levelled = ["A1", "B1", "A2", "C1", "A3", "B2", "A4"];
    p.wait("every order of the plan completed", LONG, |p| {
        levelled.iter().all(|id| is_completed(p, id))
    })
    .await;

    // Held: not released while the plan ran (nor after it, until resumed).
    assert!(
        !p.of("WO-H").iter().any(|s| s["state"] == "released"),
        "a held order is never released: {:?}",
        p.of("WO-H")
    );
    p.send(json!({"type": "resume", "order_id": "WO-H"})).await;
    p.wait("WO-H completed after resume", LONG, |p| {
        is_completed(p, "WO-H")
    })
    .await;
    // Cancel of a cancelled order, resume of a completed one: rejected, with a reason.
    p.send(json!({"type": "cancel", "order_id": "WO-C"})).await;
    p.send(json!({"type": "resume", "order_id": "A1"})).await;
    p.wait("answers to the late commands", LONG, |p| {
        p.of("WO-C").iter().any(|s| s["state"] == "rejected")
            && p.of("A1").iter().any(|s| s["state"] == "rejected")
    })
    .await;

    let all = p.statuses();

    // Every status carries the envelope; seq grows with every message.
    let seqs: Vec<u64> = all
        .iter()
        .map(|s| s["seq"].as_u64().expect("seq is a number"))
        .collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "seq increases with every status: {seqs:?}"
    );
    for s in &all {
        assert_eq!(s["gateway"], "gw-demo", "{s}");
        let ts = s["ts"].as_str().expect("ts");
        assert!(ts.ends_with('Z') && ts.len() == 24, "ts {ts}");
    }

    // Every plan order: accepted, queued, released, running, completed, in that order.
    for id in levelled {
        let statuses = p.of(id);
        let path: Vec<String> = state_path(&statuses)
            .into_iter()
            .filter(|s| s != "rejected")
            .collect();
        assert_eq!(
            path,
            ["accepted", "queued", "released", "running", "completed"],
            "order {id}: {statuses:?}"
        );
        let done = statuses
            .iter()
            .find(|s| s["state"] == "completed")
            .expect("completed");
        let quantity = plan_quantity(id);
        let produced = done["produced"].as_u64().expect("produced");
        assert!(
            produced >= quantity,
            "{id}: produced {produced} < {quantity}"
        );
        assert_eq!(
            done["good"].as_u64().unwrap_or(0) + done["scrap"].as_u64().unwrap_or(0),
            produced,
            "{id}: good + scrap = produced"
        );
        assert!(done["actual_start"].is_string() && done["actual_end"].is_string());
        assert_eq!(done["machine"], "sim01");
        assert_eq!(done["plan_id"], "HJ-E2E");
    }

    // Released in the levelled sequence A B A C A B A, then the resumed order.
    let released: Vec<&str> = all
        .iter()
        .filter(|s| s["state"] == "released")
        .filter_map(|s| s["order_id"].as_str())
        .collect();
    assert_eq!(
        released,
        ["A1", "B1", "A2", "C1", "A3", "B2", "A4", "WO-H"],
        "release order"
    );

    // Interlock: each order is released only after the one before completed.
    let mut chain: Vec<&str> = levelled.to_vec();
    chain.push("WO-H");
    for pair in chain.windows(2) {
        let done = position(&all, pair[0], "completed");
        let next = position(&all, pair[1], "released");
        assert!(
            done < next,
            "{} released before {} completed",
            pair[1],
            pair[0]
        );
    }

    // The plan summary of the last completion: everything done, in sequence.
    let last = p
        .of("A4")
        .into_iter()
        .find(|s| s["state"] == "completed")
        .expect("A4 completed");
    let plan = &last["plan"];
    assert_eq!(plan["orders"], 7, "{plan}");
    assert_eq!(plan["completed"], 7, "{plan}");
    assert_eq!(plan["started"], 7, "{plan}");
    assert_eq!(plan["started_in_sequence"], 7, "{plan}");
    assert_eq!(plan["sequence"], json!(levelled), "{plan}");

    // Hold and resume of a queued order, each answered for its command.
    let h = p.of("WO-H");
    let h_path: Vec<String> = state_path(&h);
    assert_eq!(
        h_path,
        [
            "accepted",
            "queued",
            "accepted",
            "held",
            "accepted",
            "queued",
            "released",
            "running",
            "completed"
        ],
        "{h:?}"
    );
    let commands: Vec<&str> = h.iter().filter_map(|s| s["command"].as_str()).collect();
    assert_eq!(commands, ["hold", "resume"]);
    let done = h.iter().find(|s| s["state"] == "completed").expect("done");
    assert!(done["produced"].as_u64().unwrap_or(0) >= 2);

    // Cancel of a queued order: answered, cancelled, never released; a
    // second cancel is rejected with a reason.
    let c = p.of("WO-C");
    assert_eq!(
        state_path(&c),
        ["accepted", "queued", "accepted", "cancelled", "rejected"],
        "{c:?}"
    );
    let again = c.last().expect("an answer");
    assert_eq!(again["command"], "cancel");
    assert!(
        again["reason"]
            .as_str()
            .is_some_and(|r| r.contains("WO-C") && r.contains("cancelled")),
        "{again}"
    );
    let resume_done = p
        .of("A1")
        .into_iter()
        .find(|s| s["state"] == "rejected")
        .expect("rejected");
    assert_eq!(resume_done["command"], "resume");
    assert!(
        resume_done["reason"]
            .as_str()
            .is_some_and(|r| r.contains("not held")),
        "{resume_done}"
    );

    rig.stop().await;
}

fn plan_quantity(id: &str) -> u64 {
    match id {
        "A1" | "A3" | "B2" => 3,
        "C1" => 1,
        _ => 2,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_order_messages_over_mqtt_are_rejected_with_a_reason_and_nothing_is_released() {
    let rig = Rig::start(1).await;
    let p = &rig.planner;

    // The readiness probe already was a hold of an unknown order.
    let probe = p.of("PROBE");
    assert_eq!(probe[0]["state"], "rejected");
    assert_eq!(probe[0]["command"], "hold");
    assert!(
        probe[0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("unknown")),
        "{}",
        probe[0]
    );

    let before = p.statuses().len();
    p.send_raw(b"this is not JSON {".to_vec()).await;
    p.send_raw(vec![b' '; 1024 * 1024]).await;
    // Above the uplink's own 4 MiB packet limit: still answered, and it does
    // not wedge the connection (the next messages are answered too).
    p.send_raw(vec![b' '; 5 * 1024 * 1024]).await;
    p.send(
        json!({"type": "order", "order_id": "WO-BAD-PRODUCT", "machine": "sim01",
                  "product": "P-9999", "quantity": 5}),
    )
    .await;
    p.send(
        json!({"type": "order", "order_id": "WO-BAD-MACHINE", "machine": "press99",
                  "product": "P-4711", "quantity": 5}),
    )
    .await;
    p.send(
        json!({"type": "order", "order_id": "WO-TOO-MANY", "machine": "sim01",
                  "product": "P-4711", "quantity": 5001}),
    )
    .await;
    p.send(
        json!({"type": "order", "order_id": "WO-NO-QTY", "machine": "sim01",
                  "product": "P-4711"}),
    )
    .await;
    p.send(
        json!({"type": "order", "order_id": "WO-TYPES", "machine": "sim01",
                  "product": "P-4711", "quantity": "five"}),
    )
    .await;
    p.send(
        json!({"type": "plan", "plan_id": "HJ-BAD", "machine": "sim01", "level": true,
                  "orders": [order("P1", "P-4711", 2), order("P2", "P-0000", 2)]}),
    )
    .await;
    p.wait("an answer to every bad message", LONG, |p| {
        p.statuses().len() >= before + 10
    })
    .await;

    let all = p.statuses();
    let answers = &all[before..];
    assert!(
        answers.iter().all(|s| s["state"] == "rejected"),
        "{answers:?}"
    );
    let reason_of = |id: Value| -> String {
        answers
            .iter()
            .find(|s| s["order_id"] == id)
            .and_then(|s| s["reason"].as_str())
            .unwrap_or_else(|| panic!("no answer for {id}: {answers:?}"))
            .to_owned()
    };
    let bare: Vec<&str> = answers
        .iter()
        .filter(|s| s["order_id"].is_null())
        .filter_map(|s| s["reason"].as_str())
        .collect();
    assert_eq!(bare.len(), 3, "{bare:?}");
    assert!(bare[0].starts_with("not JSON"), "{}", bare[0]);
    for oversized in &bare[1..] {
        assert!(
            oversized.contains("larger than the 65536 bytes allowed"),
            "{oversized}"
        );
    }
    let product = reason_of(json!("WO-BAD-PRODUCT"));
    assert!(
        product.contains("does not know product") && product.contains("P-9999"),
        "{product}"
    );
    let machine = reason_of(json!("WO-BAD-MACHINE"));
    assert!(machine.contains("unknown machine"), "{machine}");
    let qty = reason_of(json!("WO-TOO-MANY"));
    assert!(qty.contains("max_quantity 5000"), "{qty}");
    let missing = reason_of(json!("WO-NO-QTY"));
    assert!(missing.contains("missing field `quantity`"), "{missing}");
    let types = reason_of(json!("WO-TYPES"));
    assert!(types.contains("must be a number"), "{types}");
    // A plan is accepted or rejected as a whole: the good order too.
    let p1 = reason_of(json!("P1"));
    assert!(p1.contains("rejected as a whole"), "{p1}");
    let p2 = reason_of(json!("P2"));
    assert!(p2.contains("P-0000"), "{p2}");
    for s in answers {
        assert!(
            s["seq"].is_u64() && s["gateway"] == "gw-demo",
            "envelope: {s}"
        );
    }

    // Nothing was accepted, so nothing reaches the machine.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !p.statuses()
            .iter()
            .any(|s| s["state"] == "released" || s["state"] == "accepted"),
        "{:?}",
        p.statuses()
    );
    rig.stop().await;
}
