//! The planner's command line end to end: `linegate order send|hold|resume|
//! cancel` (the real binary) publishes through a real Mosquitto to the real
//! agent (`agent::run`, in-process), which releases to the simulated line
//! (`sim::serve`, real Modbus TCP). The test's own MQTT client follows
//! `{p}/orders/status` independently: what the command prints must be the
//! answers the gateway published, and the orders must really move
//! (released, held, cancelled) on that record.
//!
//! Faults: a rejected order (exit 1, reason printed), a rejected command, a
//! broker that is not there (exit 2, which broker), a gateway that does not
//! answer (exit 2, timeout named). Nothing asserts speed.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use linegate::agent::{self, RunOptions};
use linegate::config::Config;
use linegate::sim::{self, SimOptions};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

const BIN: &str = env!("CARGO_BIN_EXE_linegate");
const LONG: Duration = Duration::from_secs(60);

async fn linegate(args: &[&str]) -> Output {
    tokio::process::Command::new(BIN)
        .args(args)
        .env_remove("LINEGATE_CONFIG")
        .env_remove("RUST_LOG")
        .output()
        .await
        .expect("the linegate binary runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The test's own record of `{p}/orders/status`.
#[derive(Clone, Default)]
struct Record(Arc<Mutex<Vec<Value>>>);

impl Record {
    fn all(&self) -> Vec<Value> {
        self.0.lock().map(|v| v.clone()).unwrap_or_default()
    }
    fn states_of(&self, id: &str) -> Vec<String> {
        self.all()
            .iter()
            .filter(|s| s["order_id"] == id)
            .map(|s| s["state"].as_str().unwrap_or("?").to_owned())
            .collect()
    }
    async fn wait(&self, what: &str, cond: impl Fn(&Record) -> bool) {
        let deadline = tokio::time::Instant::now() + LONG;
        while !cond(self) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}; statuses seen: {:#?}",
                self.all()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn follow(port: u16, topic: String) -> (Record, tokio::task::JoinHandle<()>) {
    let record = Record::default();
    let mut o = MqttOptions::new("observer", "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(5));
    let (client, mut events) = AsyncClient::new(o, 16);
    let subscribed = Arc::new(tokio::sync::Notify::new());
    let (r, s) = (record.clone(), subscribed.clone());
    let task = tokio::spawn(async move {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    let _ = client.subscribe(topic.clone(), QoS::AtLeastOnce).await;
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => s.notify_one(),
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    if let (Ok(v), Ok(mut all)) =
                        (serde_json::from_slice::<Value>(&p.payload), r.0.lock())
                    {
                        all.push(v);
                    }
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    });
    tokio::time::timeout(LONG, subscribed.notified())
        .await
        .expect("the observer subscribes");
    (record, task)
}

fn write(dir: &Path, name: &str, v: &Value) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, v.to_string()).expect("write a message file");
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_planner_command_line_sends_orders_and_commands_and_reports_every_answer() {
    let broker = common::Mosquitto::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let line_stop = CancellationToken::new();
    let line = sim::serve(
        SimOptions {
            machines: 1,
            base_port: 0,
            seed: 5,
            speed: 200.0,
            truth: None,
            honour_orders: true,
        },
        line_stop.clone(),
    )
    .await
    .expect("simulated line starts");
    let machine = line.machines[0].id.clone();
    let text_config = format!(
        "{}\n[uplink]\nurl = \"{}\"\n",
        sim::demo_config(&line, &dir.path().join("data")),
        broker.url()
    );
    let config_file = dir.path().join("linegate.toml");
    std::fs::write(&config_file, &text_config).expect("write config");
    let config = Config::from_toml(&text_config, &config_file).unwrap_or_else(|e| panic!("{e}"));
    let prefix = config.topic_prefix();
    let cfg = config_file.display().to_string();
    let (record, observer) = follow(broker.port, format!("{prefix}/orders/status")).await;

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

    // A command on an unknown order until the agent answers: the command
    // line's own rejection path (exit 1, reason printed).
    let deadline = tokio::time::Instant::now() + LONG;
    let probe = loop {
        let out = linegate(&["order", "hold", "-c", &cfg, "PROBE", "--timeout-s", "2"]).await;
        if out.status.code() == Some(1) {
            break out;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the agent never answered: exit {:?}, {}",
            out.status,
            text(&out.stderr)
        );
    };
    assert_eq!(
        text(&probe.stdout).trim(),
        "rejected PROBE [hold]: hold: order PROBE is unknown"
    );

    // Accepted: exit 0; the printed answer is the gateway's own status.
    let big = write(
        dir.path(),
        "wo-a.json",
        &json!({"type": "order", "order_id": "WO-A", "machine": machine,
                "product": "P-4711", "quantity": 5000}),
    );
    let out = linegate(&[
        "order",
        "send",
        "-c",
        &cfg,
        &big.display().to_string(),
        "--json",
    ])
    .await;
    assert!(out.status.success(), "send: {out:?}");
    let printed: Vec<Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("--json prints JSON lines"))
        .collect();
    assert_eq!(printed.len(), 1, "{printed:?}");
    assert_eq!(printed[0]["state"], "accepted");
    record
        .wait("WO-A's accepted on the observer", |r| {
            r.all().iter().any(|s| s["seq"] == printed[0]["seq"])
        })
        .await;
    let seen = record
        .all()
        .into_iter()
        .find(|s| s["seq"] == printed[0]["seq"]);
    assert_eq!(seen.as_ref(), Some(&printed[0]));
    record
        .wait("WO-A on the machine", |r| {
            r.states_of("WO-A").iter().any(|s| s == "running")
        })
        .await;

    // A plan of two: one answer per order, both printed.
    let plan = write(
        dir.path(),
        "plan.json",
        &json!({"type": "plan", "plan_id": "HJ-1", "machine": machine, "orders": [
            {"order_id": "WO-B", "product": "P-4712", "quantity": 3},
            {"order_id": "WO-C", "product": "P-4713", "quantity": 3}]}),
    );
    let out = linegate(&["order", "send", "-c", &cfg, &plan.display().to_string()]).await;
    assert!(out.status.success(), "plan: {out:?}");
    let lines: Vec<String> = text(&out.stdout).lines().map(str::to_owned).collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(lines
        .iter()
        .any(|l| l.starts_with("accepted WO-B (revision 1)")));
    assert!(lines
        .iter()
        .any(|l| l.starts_with("accepted WO-C (revision 1)")));

    // Rejected: exit 1 and the gateway's reason.
    let bad = write(
        dir.path(),
        "bad.json",
        &json!({"type": "order", "order_id": "WO-X", "machine": machine,
                "product": "P-9999", "quantity": 3}),
    );
    let out = linegate(&["order", "send", "-c", &cfg, &bad.display().to_string()]).await;
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        text(&out.stdout).contains("rejected WO-X")
            && text(&out.stdout).contains("does not know product \"P-9999\""),
        "{}",
        text(&out.stdout)
    );

    // Hold, hold again (rejected), resume, cancel, on the queued WO-B;
    // cancel of WO-A stops it on the machine.
    let out = linegate(&["order", "hold", "-c", &cfg, "WO-B"]).await;
    assert!(out.status.success(), "hold: {out:?}");
    assert!(text(&out.stdout).starts_with("accepted WO-B"), "{out:?}");
    record
        .wait("WO-B held", |r| {
            r.states_of("WO-B").iter().any(|s| s == "held")
        })
        .await;
    let out = linegate(&["order", "hold", "-c", &cfg, "WO-B"]).await;
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(text(&out.stdout).contains("already held"), "{out:?}");
    let out = linegate(&["order", "resume", "-c", &cfg, "WO-B"]).await;
    assert!(out.status.success(), "resume: {out:?}");
    record
        .wait("WO-B queued again", |r| {
            r.all().iter().any(|s| {
                s["order_id"] == "WO-B" && s["state"] == "queued" && s["reason"] == "resumed"
            })
        })
        .await;
    for id in ["WO-B", "WO-A"] {
        let out = linegate(&["order", "cancel", "-c", &cfg, id]).await;
        assert!(out.status.success(), "cancel {id}: {out:?}");
        record
            .wait(&format!("{id} cancelled"), |r| {
                r.states_of(id).iter().any(|s| s == "cancelled")
            })
            .await;
    }

    // Broker not there: exit 2, the broker named, nothing hangs.
    let nobody = common::free_port();
    let gone = dir.path().join("gone.toml");
    std::fs::write(
        &gone,
        text_config.replace(&broker.url(), &format!("mqtt://127.0.0.1:{nobody}")),
    )
    .expect("write config");
    let out = linegate(&["order", "cancel", "-c", &gone.display().to_string(), "WO-C"]).await;
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        text(&out.stderr).contains(&format!("cannot reach the broker 127.0.0.1:{nobody}")),
        "{}",
        text(&out.stderr)
    );

    // A gateway that does not answer (no agent on this prefix): exit 2 after the timeout.
    let silent = dir.path().join("silent.toml");
    std::fs::write(
        &silent,
        format!("{text_config}topic_prefix = \"linegate/v1/demo/nobody\"\n"),
    )
    .expect("write config");
    let out = linegate(&[
        "order",
        "hold",
        "-c",
        &silent.display().to_string(),
        "WO-C",
        "--timeout-s",
        "1",
    ])
    .await;
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        text(&out.stderr).contains("no answer from gateway gw-demo within 1s"),
        "{}",
        text(&out.stderr)
    );

    agent_stop.cancel();
    tokio::time::timeout(Duration::from_secs(30), agent)
        .await
        .expect("agent stops in time")
        .expect("agent task ends cleanly");
    observer.abort();
    line_stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(10), line.stopped()).await;
}
