//! Order forecasts and machine capacity end to end, nothing stood in: a
//! planner publishes orders to a real Mosquitto; the real agent
//! (`agent::run`, in-process) releases them over Modbus TCP to the
//! simulated line, forecasts them and publishes; the planner follows
//! `{p}/orders/status` and `{p}/m/+/capacity`.
//!
//! Forecasts are checked against the simulator's own truth file (when the
//! machine went idle after an order: its completion), never against what
//! the agent says. The simulator's order runs are seeded: the tests pick
//! seeds whose order plans (setup, stop) give the case they need, through
//! the simulator's own `OrderPlan`.

mod common;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Timelike, Utc};
use linegate::agent::{self, RunOptions};
use linegate::config::Config;
use linegate::sim::schedule::{OrderPlan, Schedule};
use linegate::sim::{self, SimLine, SimOptions};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::{json, Value};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const LONG: Duration = Duration::from_secs(90);
/// sim01's cycle at speed 1 (MachineProfile::for_machine(0)).
const CYCLE_S: f64 = 6.0;

/// Forecasts recomputed every 100 ms, published on any move over 50 ms.
const FAST_FORECASTS: &str = "
[forecast]
every_ms = 100
move_s = 0.05
move_pct = 1.0
min_interval_ms = 100
capacity_move_s = 1.0
";

#[derive(Debug, Clone)]
struct Seen {
    topic: String,
    json: Value,
}

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
        let mut o = MqttOptions::new("forecast-planner", "127.0.0.1", port);
        o.set_keep_alive(Duration::from_secs(5));
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
                        for t in ["orders/status", "status", "m/+/capacity"] {
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

    async fn send(&self, v: Value) {
        self.client
            .publish(
                format!("{}/orders/cmd", self.prefix),
                QoS::AtLeastOnce,
                false,
                v.to_string().into_bytes(),
            )
            .await
            .expect("planner publishes");
    }

    fn on(&self, suffix: &str) -> Vec<Value> {
        let topic = format!("{}/{suffix}", self.prefix);
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|m| m.topic == topic)
            .map(|m| m.json.clone())
            .collect()
    }

    fn of(&self, order_id: &str) -> Vec<Value> {
        self.on("orders/status")
            .into_iter()
            .filter(|s| s["order_id"] == order_id)
            .collect()
    }

    async fn wait(&self, what: &str, cond: impl Fn(&Planner) -> bool) {
        let deadline = tokio::time::Instant::now() + LONG;
        while !cond(self) {
            if tokio::time::Instant::now() > deadline {
                panic!(
                    "timed out waiting for: {what}\nstatuses so far:\n{}",
                    self.on("orders/status")
                        .iter()
                        .map(Value::to_string)
                        .collect::<Vec<_>>()
                        .join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn wait_for_agent(&self) {
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

struct Rig {
    _broker: common::Mosquitto,
    dir: tempfile::TempDir,
    line_stop: CancellationToken,
    agent_stop: CancellationToken,
    agent: JoinHandle<()>,
    planner: Planner,
    line: Option<SimLine>,
    speed: f64,
}

impl Rig {
    async fn start(seed: u64, speed: f64, extra: &str) -> Rig {
        let broker = common::Mosquitto::start();
        let dir = tempfile::tempdir().expect("tempdir");
        let line_stop = CancellationToken::new();
        let line = sim::serve(
            SimOptions {
                machines: 1,
                base_port: 0,
                seed,
                speed,
                truth: Some(dir.path().join("truth.jsonl")),
                honour_orders: true,
            },
            line_stop.clone(),
        )
        .await
        .expect("simulated line starts");
        let text = format!(
            "{}\n[uplink]\nurl = \"{}\"\n{FAST_FORECASTS}{extra}",
            sim::demo_config(&line, &dir.path().join("data")),
            broker.url()
        );
        let config =
            Config::from_toml(&text, Path::new("forecast.toml")).unwrap_or_else(|e| panic!("{e}"));
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
            dir,
            line_stop,
            agent_stop,
            agent,
            planner,
            line: Some(line),
            speed,
        }
    }

    fn truth_path(&self) -> PathBuf {
        self.dir.path().join("truth.jsonl")
    }

    /// Seconds of one sim01 part, in real time.
    fn cycle(&self) -> f64 {
        CYCLE_S / self.speed
    }

    async fn stop(mut self) -> Vec<(DateTime<Utc>, String)> {
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
        truth(&self.truth_path())
    }
}

/// The simulator's own record: `(at, state)` of sim01, oldest first.
fn truth(path: &Path) -> Vec<(DateTime<Utc>, String)> {
    let text = std::fs::read_to_string(path).expect("the truth file");
    text.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["machine"] == "sim01" && v["state"].is_string())
        .map(|v| (t(&v["at"]), v["state"].as_str().unwrap_or("").to_owned()))
        .collect()
}

fn t(v: &Value) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(v.as_str().unwrap_or_else(|| panic!("not a time: {v}")))
        .unwrap_or_else(|e| panic!("{v}: {e}"))
        .with_timezone(&Utc)
}

fn secs(a: DateTime<Utc>, b: DateTime<Utc>) -> f64 {
    (b - a).num_milliseconds() as f64 / 1000.0
}

/// When the machine, by its own record, finished the order released at `released`.
fn truth_end(truth: &[(DateTime<Utc>, String)], released: DateTime<Utc>) -> DateTime<Utc> {
    truth
        .iter()
        .find(|(at, s)| *at > released && s == "idle")
        .map(|(at, _)| *at)
        .unwrap_or_else(|| panic!("the simulator never went idle after {released}: {truth:?}"))
}

fn released_at(statuses: &[Value]) -> DateTime<Utc> {
    statuses
        .iter()
        .find(|s| s["state"] == "released")
        .map(|s| t(&s["ts"]))
        .unwrap_or_else(|| panic!("never released: {statuses:?}"))
}

/// Forecast statuses of an order (reason `forecast`): `(ts, forecast_end, at_risk, produced)`.
fn forecasts(statuses: &[Value]) -> Vec<(DateTime<Utc>, DateTime<Utc>, bool, u64)> {
    statuses
        .iter()
        .filter(|s| s["reason"] == "forecast" && s["forecast_end"].is_string())
        .map(|s| {
            (
                t(&s["ts"]),
                t(&s["forecast_end"]),
                s["at_risk"] == true,
                s["produced"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

fn completed(p: &Planner, id: &str) -> bool {
    p.of(id).iter().any(|s| s["state"] == "completed")
}

/// Seconds (at speed 1) of sim01's first spell of its own, before it
/// takes an order: kept short so the tests do not wait for it.
fn first_spell_s(seed: u64, speed: f64) -> f64 {
    Schedule::new(seed, 0, speed)
        .next_spell()
        .duration
        .as_secs_f64()
        * speed
}

/// A seed whose sim01 runs orders `numbers` of `quantity` without a stop
/// and with setups of at most `max_setup_s` (at speed 1).
fn steady_seed(numbers: &[u32], quantity: u16, speed: f64, max_setup_s: f64) -> u64 {
    (1..200_000u64)
        .find(|&seed| {
            first_spell_s(seed, speed) <= 300.0
                && numbers.iter().all(|&n| {
                    let plan = OrderPlan::new(seed, 0, n, quantity, speed);
                    plan.stop.is_none() && plan.setup.as_secs_f64() * speed <= max_setup_s
                })
        })
        .expect("a seed with steady order runs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_orders_forecast_at_its_release_is_within_5_percent_of_its_completion_on_a_steady_machine(
) {
    // 15 s per order: the agent's own latencies (polls, a loaded CI
    // machine) stay well inside 5 %.
    let (speed, quantity) = (100.0, 250u16);
    let seed = steady_seed(&[1, 2, 3], quantity, speed, 30.0);
    let rig = Rig::start(seed, speed, "").await;
    let p = &rig.planner;
    let ideal = rig.cycle();
    let orders: Vec<Value> = ["F1", "F2", "F3"]
        .iter()
        .enumerate()
        .map(|(i, id)| {
            json!({"order_id": id, "product": "P-4711", "quantity": quantity,
                   "sequence": i, "ideal_cycle_s": ideal})
        })
        .collect();
    p.send(json!({"type": "plan", "plan_id": "STEADY", "machine": "sim01", "orders": orders}))
        .await;
    p.wait("all three completed", |p| {
        ["F1", "F2", "F3"].iter().all(|id| completed(p, id))
    })
    .await;
    let statuses: Vec<Vec<Value>> = ["F1", "F2", "F3"].iter().map(|id| p.of(id)).collect();
    let capacity = p.on("m/sim01/capacity");
    let truth = rig.stop().await;

    for (id, s) in ["F1", "F2", "F3"].iter().zip(&statuses) {
        let released = released_at(s);
        if let Some(done) = s.iter().find(|x| x["state"] == "completed") {
            eprintln!(
                "{id}: released {released}, started {}, ended {} (agent)",
                done["actual_start"], done["actual_end"]
            );
        }
        let end = truth_end(&truth, released);
        // The forecast made at the release: the first one after it.
        let (_, forecast, at_risk, _) = *forecasts(s)
            .iter()
            .find(|f| f.0 >= released)
            .unwrap_or_else(|| panic!("{id}: no forecast after its release: {s:?}"));
        let error = secs(end, forecast).abs() / secs(released, end);
        eprintln!("{id}: forecast at release {:.2} % off", error * 100.0);
        assert!(
            error <= 0.05,
            "{id}: forecast {forecast} at release {released}, done {end} by the simulator: {:.1} % off",
            error * 100.0
        );
        assert!(!at_risk, "{id} has no due and is never at risk");
        // Every status of the open order carries the fields.
        assert!(s
            .iter()
            .filter(|x| x["state"] == "running")
            .all(|x| x.get("forecast_end").is_some()));
    }
    // Orders 2 and 3 were forecast from the measured history of order 1.
    assert!(statuses[2]
        .iter()
        .any(|s| s["forecast_basis"] == "product_history"));
    // Capacity: no calendar, one window of the 24 h horizon, all of it planned.
    let last = capacity.last().expect("a capacity message");
    assert_eq!(last["planned_s"], json!(86_400.0));
    let sum: f64 = ["booked_s", "free_s"]
        .iter()
        .map(|k| last[*k].as_f64().unwrap_or(f64::NAN))
        .sum();
    assert!((sum - 86_400.0).abs() < 0.01, "{last}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_stop_flags_the_order_at_risk_before_its_due_and_the_forecast_converges() {
    // Order 1 (W, 20 parts) warms the history up; order 2 (A, 50 parts)
    // is stopped once by an alarm of at least 50 s in its first half, and
    // its setup is close to W's (the forecast learns it from W).
    let (speed, quantity) = (25.0, 50u16);
    let seed = (1..50_000u64)
        .find(|&seed| {
            let w = OrderPlan::new(seed, 0, 1, 20, speed);
            let a = OrderPlan::new(seed, 0, 2, quantity, speed);
            let close = (w.setup.as_secs_f64() - a.setup.as_secs_f64()).abs() * speed < 5.0;
            first_spell_s(seed, speed) <= 200.0
                && w.stop.is_none()
                && close
                && a.stop.is_some_and(|s| {
                    s.duration.as_secs_f64() * speed >= 50.0 && (10..=25).contains(&s.after_parts)
                })
        })
        .expect("a seed with a long stop");
    let plan = OrderPlan::new(seed, 0, 2, quantity, speed);
    let stop = plan.stop.expect("the order has its stop");
    let rig = Rig::start(seed, speed, "").await;
    let p = &rig.planner;
    let cycle = rig.cycle();
    p.send(
        json!({"type": "order", "order_id": "W", "machine": "sim01", "product": "P-4711",
                  "quantity": 20, "ideal_cycle_s": cycle}),
    )
    .await;
    p.wait("W completed", |p| completed(p, "W")).await;
    // Due: what the order takes without its stop, plus 4/5 of the stop.
    let expected = plan.setup.as_secs_f64() + f64::from(quantity) * cycle;
    let slack = stop.duration.as_secs_f64() * 0.8;
    let due = Utc::now() + chrono::Duration::milliseconds(((expected + slack) * 1000.0) as i64);
    p.send(
        json!({"type": "order", "order_id": "A", "machine": "sim01", "product": "P-4711",
                  "quantity": quantity, "ideal_cycle_s": cycle,
                  "due": due.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)}),
    )
    .await;
    p.wait("A completed", |p| completed(p, "A")).await;
    let a = p.of("A");
    let w = p.of("W");
    let truth = rig.stop().await;

    let released = released_at(&a);
    let end = truth_end(&truth, released);
    let stop_start = truth
        .iter()
        .find(|(at, s)| *at > released && s == "down")
        .map(|(at, _)| *at)
        .expect("the simulator's stop");
    assert!(end > due, "the stop makes A late: done {end}, due {due}");
    let f = forecasts(&a);
    let after_release: Vec<_> = f.iter().filter(|x| x.0 >= released).collect();
    assert!(
        !after_release.first().expect("a forecast at release").2,
        "A is not at risk before its stop: {f:?}"
    );
    let before_stop = f
        .iter()
        .rev()
        .find(|x| x.0 < stop_start)
        .expect("a forecast before the stop");
    assert!(
        !before_stop.2,
        "A is not at risk right before its stop: {f:?}"
    );
    // The flag that holds until A is done: raised in the stop, before the due.
    let flagged = f
        .iter()
        .rposition(|x| !x.2)
        .and_then(|i| f.get(i + 1))
        .unwrap_or_else(|| panic!("A was never flagged at risk for good: {f:?}"));
    assert!(
        flagged.0 >= stop_start && flagged.0 < due,
        "flagged at {} (stop at {stop_start}, due {due}, released {released}, done {end}): {f:?}\nW: {:?}",
        flagged.0, forecasts(&w)
    );
    // Converges: the last forecasts, with most parts made, are close to the truth.
    let duration = secs(released, end);
    let error = |x: &(DateTime<Utc>, DateTime<Utc>, bool, u64)| secs(end, x.1).abs() / duration;
    let late: Vec<f64> = f
        .iter()
        .filter(|x| x.3 >= u64::from(quantity) * 9 / 10)
        .map(error)
        .collect();
    let at_half: Vec<f64> = f
        .iter()
        .filter(|x| x.3 >= u64::from(quantity) / 2 && x.3 < u64::from(quantity) * 6 / 10)
        .map(error)
        .collect();
    assert!(!late.is_empty() && !at_half.is_empty(), "{f:?}");
    let worst_late = late.iter().cloned().fold(0.0, f64::max);
    assert!(
        worst_late <= 0.03,
        "forecasts at 90 % done are {:.1} % off",
        worst_late * 100.0
    );
    assert!(
        worst_late <= at_half.iter().cloned().fold(0.0, f64::max),
        "no closer at 90 % ({late:?}) than at 50 % ({at_half:?})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_forecast_moves_during_a_planned_stop_and_capacity_is_the_calendars_planned_time() {
    // One shift of an hour, starting 2 to 3 hours from now, every day: the
    // machine is in a planned stop, the order stays queued.
    let start = Utc::now() + chrono::Duration::hours(2);
    let start = start
        .with_second(0)
        .and_then(|t| t.with_nanosecond(0))
        .expect("a whole minute")
        + chrono::Duration::minutes(1);
    let end = start + chrono::Duration::hours(1);
    let shifts = format!(
        "\n[shifts]\n[[shifts.shift]]\nname = \"only\"\n\
         days = [\"mon\", \"tue\", \"wed\", \"thu\", \"fri\", \"sat\", \"sun\"]\n\
         start = \"{}\"\nend = \"{}\"\n",
        start.format("%H:%M"),
        end.format("%H:%M")
    );
    let rig = Rig::start(3, 100.0, &shifts).await;
    let p = &rig.planner;
    p.send(
        json!({"type": "order", "order_id": "Q", "machine": "sim01", "product": "P-4711",
                  "quantity": 100, "ideal_cycle_s": 1.0,
                  "due": (start + chrono::Duration::seconds(50)).to_rfc3339()}),
    )
    .await;
    p.wait("Q forecast", |p| !forecasts(&p.of("Q")).is_empty())
        .await;
    // Time passes in the planned stop; forecasts are made every 100 ms.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let q = p.of("Q");
    let capacity = p.on("m/sim01/capacity");
    rig.stop().await;

    assert!(
        q.iter().all(|s| s["state"] != "released"),
        "released in a planned stop: {q:?}"
    );
    let f = forecasts(&q);
    // No setup known, 100 parts of 1 s from the shift's start.
    let expected = start + chrono::Duration::seconds(100);
    assert!(
        f.iter().all(|x| x.1 == expected),
        "every forecast is the shift start + 100 s ({expected}): {f:?}"
    );
    assert_eq!(
        f.len(),
        1,
        "the forecast never moved, so it was published once: {f:?}"
    );
    assert!(f[0].2, "due 50 s into the shift, 100 s of work: at risk");
    let last = capacity.last().expect("a capacity message");
    assert_eq!(last["planned_s"], json!(3600.0), "{last}");
    assert_eq!(last["booked_s"], json!(100.0), "{last}");
    assert_eq!(last["free_s"], json!(3500.0), "{last}");
    let shifts = last["shifts"].as_array().expect("shifts");
    assert_eq!(shifts.len(), 1, "{last}");
    assert_eq!(shifts[0]["name"], "only");
    assert_eq!(t(&shifts[0]["start"]), start);
    assert_eq!(t(&shifts[0]["end"]), end);
    assert_eq!(shifts[0]["planned_s"], json!(3600.0));
    assert_eq!(t(&last["queue_dry_at"]), expected);
}
