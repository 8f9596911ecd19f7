//! The simulated line over real Modbus TCP: registers against the truth file,
//! determinism of the truth, rejected writes, and orders run through the
//! order registers. Runs sped up (speed 100..2000); asserts no speed.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use linegate::sim::{self, SimError, SimLine, SimOptions};
use tokio::time::{sleep, timeout, Instant};
use tokio_modbus::client::Context;
use tokio_modbus::prelude::*;
use tokio_util::sync::CancellationToken;

const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// A Modbus TCP client on one simulated machine; every call has a timeout.
struct Probe {
    ctx: Context,
}

impl Probe {
    async fn connect(addr: SocketAddr) -> Probe {
        let ctx = timeout(CALL_TIMEOUT, tcp::connect(addr))
            .await
            .expect("connect in time")
            .expect("connect");
        Probe { ctx }
    }

    async fn holding(&mut self, addr: u16, n: u16) -> Result<Vec<u16>, ExceptionCode> {
        let words = timeout(CALL_TIMEOUT, self.ctx.read_holding_registers(addr, n))
            .await
            .expect("reply in time")
            .expect("no transport error")?;
        assert_eq!(words.len(), usize::from(n), "reply length");
        Ok(words)
    }

    async fn input(&mut self, addr: u16, n: u16) -> Result<Vec<u16>, ExceptionCode> {
        timeout(CALL_TIMEOUT, self.ctx.read_input_registers(addr, n))
            .await
            .expect("reply in time")
            .expect("no transport error")
    }

    async fn coils(&mut self, addr: u16, n: u16) -> Result<Vec<bool>, ExceptionCode> {
        timeout(CALL_TIMEOUT, self.ctx.read_coils(addr, n))
            .await
            .expect("reply in time")
            .expect("no transport error")
    }

    async fn write_registers(&mut self, addr: u16, words: &[u16]) -> Result<(), ExceptionCode> {
        timeout(CALL_TIMEOUT, self.ctx.write_multiple_registers(addr, words))
            .await
            .expect("reply in time")
            .expect("no transport error")
    }

    async fn write_register(&mut self, addr: u16, word: u16) -> Result<(), ExceptionCode> {
        timeout(CALL_TIMEOUT, self.ctx.write_single_register(addr, word))
            .await
            .expect("reply in time")
            .expect("no transport error")
    }

    async fn write_coil(&mut self, addr: u16, value: bool) -> Result<(), ExceptionCode> {
        timeout(CALL_TIMEOUT, self.ctx.write_single_coil(addr, value))
            .await
            .expect("reply in time")
            .expect("no transport error")
    }

    async fn part_count(&mut self) -> u32 {
        let w = self.holding(2, 2).await.expect("part count readable");
        (u32::from(w[0]) << 16) | u32::from(w[1])
    }

    async fn product(&mut self) -> String {
        let w = self.holding(10, 8).await.expect("product readable");
        let bytes: Vec<u8> = w.iter().flat_map(|x| x.to_be_bytes()).collect();
        String::from_utf8_lossy(&bytes)
            .trim_end_matches('\0')
            .to_string()
    }
}

/// One line of the truth file.
#[derive(Debug, Clone, PartialEq)]
struct Truth {
    machine: String,
    state: String,
    at: chrono::DateTime<chrono::Utc>,
    reason: Option<String>,
}

/// Every line of a truth file, checked against the documented shape.
fn read_truth(path: &Path) -> Vec<Truth> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("truth line {line:?} is not JSON: {e}"));
            let obj = v.as_object().expect("a JSON object");
            let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
            keys.sort_unstable();
            assert_eq!(keys, ["at", "machine", "reason", "state"], "{line}");
            let at = obj["at"].as_str().expect("at is a string");
            assert!(
                at.len() == 24 && at.ends_with('Z'),
                "at {at:?} is RFC 3339 UTC with milliseconds"
            );
            let state = obj["state"].as_str().expect("state").to_string();
            assert!(
                ["running", "idle", "down", "setup"].contains(&state.as_str()),
                "{line}"
            );
            let reason = match &obj["reason"] {
                serde_json::Value::Null => None,
                serde_json::Value::String(s) => Some(s.clone()),
                other => panic!("reason {other:?} in {line}"),
            };
            if state == "down" {
                let r = reason.as_deref().unwrap_or_default();
                assert!(
                    r.strip_prefix("alarm ")
                        .is_some_and(|n| n.parse::<u16>().is_ok_and(|n| n > 0)),
                    "down needs an alarm reason: {line}"
                );
            } else {
                assert_eq!(reason, None, "{line}");
            }
            Truth {
                machine: obj["machine"].as_str().expect("machine").to_string(),
                state,
                at: chrono::DateTime::parse_from_rfc3339(at)
                    .expect("RFC 3339")
                    .with_timezone(&chrono::Utc),
                reason,
            }
        })
        .collect()
}

fn truth_of(truth: &[Truth], machine: &str) -> Vec<Truth> {
    truth
        .iter()
        .filter(|t| t.machine == machine)
        .cloned()
        .collect()
}

async fn start_line(
    machines: usize,
    seed: u64,
    speed: f64,
    truth: &Path,
    shutdown: &CancellationToken,
) -> SimLine {
    sim::serve(
        SimOptions {
            machines,
            base_port: 0,
            seed,
            speed,
            truth: Some(truth.to_path_buf()),
            honour_orders: true,
        },
        shutdown.clone(),
    )
    .await
    .expect("line starts")
}

#[tokio::test]
async fn part_counter_rises_while_the_truth_says_running_and_stands_still_otherwise() {
    let dir = tempfile::tempdir().expect("tempdir");
    let truth_path = dir.path().join("truth.jsonl");
    let shutdown = CancellationToken::new();
    let speed = 100.0;
    let line = start_line(2, 3, speed, &truth_path, &shutdown).await;
    let sim01 = &line.machines[0];
    assert_eq!(sim01.id, "sim01");
    let cycle =
        Duration::from_secs_f64(sim::schedule::MachineProfile::for_machine(0).cycle_s / speed);
    let mut probe = Probe::connect(sim01.addr).await;

    let (mut seen_running, mut seen_stopped) = (false, false);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !(seen_running && seen_stopped) {
        assert!(
            Instant::now() < deadline,
            "did not see both running and stopped"
        );
        let before = truth_of(&read_truth(&truth_path), "sim01");
        let Some(state) = before.last().cloned() else {
            sleep(Duration::from_millis(20)).await;
            continue;
        };
        let t0 = Instant::now();
        let p0 = probe.part_count().await;
        let status = probe.holding(0, 2).await.expect("mode and alarm");
        sleep(cycle * 4).await;
        let p1 = probe.part_count().await;
        let window = t0.elapsed();
        // Give a change inside the window time to reach the file.
        sleep(Duration::from_millis(50)).await;
        let after = truth_of(&read_truth(&truth_path), "sim01");
        if after.len() != before.len() {
            continue; // the state changed during the window: look again
        }
        if state.state == "running" {
            assert!(p1 > p0, "running: {p0} -> {p1}");
            let most = (window.as_secs_f64() / cycle.as_secs_f64()).ceil() as u32 + 1;
            assert!(
                p1 - p0 <= most,
                "{} parts in {window:?} at cycle {cycle:?}",
                p1 - p0
            );
            assert_eq!(status, [1, 0], "running: mode auto, no alarm");
            seen_running = true;
        } else {
            assert_eq!(p1, p0, "{}: the part counter stands still", state.state);
            match state.state.as_str() {
                "down" => assert_eq!(
                    state.reason,
                    Some(format!("alarm {}", status[1])),
                    "alarm register matches the truth"
                ),
                "setup" => assert_eq!(status, [2, 0]),
                _ => assert_eq!(status, [1, 0]),
            }
            seen_stopped = true;
        }
    }
    shutdown.cancel();
    line.stopped().await;
}

#[tokio::test]
async fn the_truth_is_json_lines_and_repeats_for_a_seed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let shutdown = CancellationToken::new();
    let paths: Vec<_> = ["a", "b", "c"]
        .iter()
        .map(|n| dir.path().join(format!("{n}.jsonl")))
        .collect();
    // a and b share a seed, c does not; all three run at the same time.
    let a = start_line(3, 7, 2000.0, &paths[0], &shutdown).await;
    let b = start_line(3, 7, 2000.0, &paths[1], &shutdown).await;
    let c = start_line(3, 8, 2000.0, &paths[2], &shutdown).await;
    let addr = a.machines[0].addr;
    sleep(Duration::from_millis(1500)).await;
    shutdown.cancel();
    a.stopped().await;
    b.stopped().await;
    c.stopped().await;
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "a stopped line no longer listens"
    );

    let runs: Vec<Vec<Truth>> = paths.iter().map(|p| read_truth(p)).collect();
    let mut differs_from_other_seed = false;
    for machine in ["sim01", "sim02", "sim03"] {
        let [ta, tb, tc] = [0, 1, 2].map(|i| truth_of(&runs[i], machine));
        assert!(ta.len() >= 3 && tb.len() >= 3, "{machine}: a few changes");
        for run in [&ta, &tb, &tc] {
            assert_eq!(run[0].state, "running", "every machine starts running");
            for pair in run.windows(2) {
                assert!(pair[0].at <= pair[1].at, "{machine}: times never go back");
                assert_ne!(
                    (&pair[0].state, &pair[0].reason),
                    (&pair[1].state, &pair[1].reason),
                    "{machine}: only changes are recorded"
                );
            }
        }
        // Same seed: the same states, reasons and offsets from the start (to
        // the millisecond rounding), as far as both runs got.
        let n = ta.len().min(tb.len());
        for (x, y) in ta[..n].iter().zip(&tb[..n]) {
            assert_eq!((&x.state, &x.reason), (&y.state, &y.reason), "{machine}");
            let dx = (x.at - ta[0].at).num_milliseconds();
            let dy = (y.at - tb[0].at).num_milliseconds();
            assert!((dx - dy).abs() <= 2, "{machine}: {dx} ms vs {dy} ms");
        }
        let m = ta.len().min(tc.len());
        let offsets = |run: &[Truth]| -> Vec<(String, i64)> {
            run[..m]
                .iter()
                .map(|t| (t.state.clone(), (t.at - run[0].at).num_milliseconds()))
                .collect()
        };
        if offsets(&ta) != offsets(&tc) {
            differs_from_other_seed = true;
        }
    }
    assert!(differs_from_other_seed, "another seed gives another line");
}

#[tokio::test]
async fn writes_outside_the_order_registers_are_rejected() {
    let dir = tempfile::tempdir().expect("tempdir");
    let shutdown = CancellationToken::new();
    let line = start_line(1, 1, 1.0, &dir.path().join("t.jsonl"), &shutdown).await;
    let mut probe = Probe::connect(line.machines[0].addr).await;

    let illegal = Some(ExceptionCode::IllegalDataAddress);
    assert_eq!(probe.write_register(0, 2).await.err(), illegal, "mode");
    assert_eq!(
        probe.write_register(2, 0).await.err(),
        illegal,
        "part counter"
    );
    assert_eq!(probe.write_registers(198, &[1, 2, 3]).await.err(), illegal);
    assert_eq!(probe.write_registers(202, &[1, 2, 3]).await.err(), illegal);
    assert_eq!(
        probe.write_coil(0, true).await.err(),
        illegal,
        "cycle_active"
    );
    assert_eq!(probe.write_coil(11, true).await.err(), illegal);
    assert_eq!(
        probe.holding(100, 1).await.err(),
        illegal,
        "read outside the map"
    );
    assert_eq!(
        probe.holding(15, 10).await.err(),
        illegal,
        "read leaving a block"
    );
    assert_eq!(probe.input(10, 1).await.err(), illegal);
    assert_eq!(probe.coils(16, 1).await.err(), illegal);
    // The machine is untouched and still answers.
    assert_eq!(probe.holding(0, 1).await, Ok(vec![1]));

    // The order registers take writes and read them back.
    assert_eq!(
        probe.write_registers(200, &[0x0001, 0xE240, 12, 40]).await,
        Ok(())
    );
    assert_eq!(
        probe.holding(200, 4).await,
        Ok(vec![0x0001, 0xE240, 12, 40])
    );
    assert_eq!(probe.write_register(203, 41).await, Ok(()));
    assert_eq!(probe.holding(203, 1).await, Ok(vec![41]));

    shutdown.cancel();
    line.stopped().await;
}

/// The machine's truth once its last line is `state` (lines reach the file
/// a moment after the change the registers already show).
async fn settled_truth(path: &Path, machine: &str, state: &str) -> Vec<Truth> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let truth = truth_of(&read_truth(path), machine);
        if truth.last().is_some_and(|t| t.state == state) || Instant::now() > deadline {
            return truth;
        }
        sleep(Duration::from_millis(10)).await;
    }
}

/// Load an order through the registers, start it, wait until the machine
/// clears start. Returns the part counter right after start.
async fn run_order(probe: &mut Probe, number: u32, product: u16, quantity: u16) -> u32 {
    let words = [(number >> 16) as u16, number as u16, product, quantity];
    probe
        .write_registers(200, &words)
        .await
        .expect("order loads");
    probe.write_coil(10, true).await.expect("start");
    let start_parts = probe.part_count().await;
    assert_eq!(
        probe.coils(10, 1).await,
        Ok(vec![true]),
        "start reads back set"
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while probe.coils(10, 1).await.expect("start readable")[0] {
        assert!(Instant::now() < deadline, "order {number} never finished");
        sleep(Duration::from_millis(20)).await;
    }
    start_parts
}

#[tokio::test]
async fn an_order_written_to_the_registers_runs_to_its_quantity_then_the_machine_idles() {
    let dir = tempfile::tempdir().expect("tempdir");
    let truth_path = dir.path().join("truth.jsonl");
    let shutdown = CancellationToken::new();
    let line = start_line(2, 5, 100.0, &truth_path, &shutdown).await;
    let sim02 = &line.machines[1];
    let mut probe = Probe::connect(sim02.addr).await;

    let started = chrono::Utc::now();
    let p0 = run_order(&mut probe, 123_456, 12, 6).await;
    assert_eq!(probe.part_count().await - p0, 6, "exactly the quantity");
    assert_eq!(probe.product().await, "P-4712");
    assert_eq!(
        probe.holding(0, 2).await,
        Ok(vec![1, 0]),
        "mode auto, no alarm"
    );
    assert_eq!(probe.coils(0, 1).await, Ok(vec![false]), "no cycle");
    assert_eq!(probe.holding(200, 4).await, Ok(vec![1, 57_920, 12, 6]));

    let truth = settled_truth(&truth_path, "sim02", "idle").await;
    let during: Vec<&str> = truth
        .iter()
        .filter(|t| t.at >= started - chrono::Duration::milliseconds(5))
        .map(|t| t.state.as_str())
        .collect();
    assert!(during.contains(&"setup"), "{during:?}");
    assert!(during.contains(&"running"), "{during:?}");
    assert_eq!(during.last(), Some(&"idle"), "{during:?}");

    // It waits for the next order: nothing moves.
    let parts = probe.part_count().await;
    sleep(Duration::from_millis(300)).await;
    assert_eq!(probe.part_count().await, parts);
    assert_eq!(
        truth_of(&read_truth(&truth_path), "sim02")
            .last()
            .map(|t| t.state.clone()),
        Some("idle".to_string())
    );

    // The next order runs the same way.
    let p1 = run_order(&mut probe, 123_457, 11, 3).await;
    assert_eq!(probe.part_count().await - p1, 3);
    assert_eq!(probe.product().await, "P-4711");

    // The other machine was not disturbed: it still follows its own schedule.
    let other = truth_of(&read_truth(&truth_path), "sim01");
    assert!(!other.is_empty());

    shutdown.cancel();
    line.stopped().await;
}

#[tokio::test]
async fn a_port_in_use_is_an_error_naming_the_machine() {
    let taken = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let result = sim::serve(
        SimOptions {
            machines: 1,
            base_port: port,
            ..SimOptions::default()
        },
        CancellationToken::new(),
    )
    .await;
    match result {
        Err(err @ SimError::Bind { .. }) => {
            let text = err.to_string();
            assert!(
                text.contains("sim01") && text.contains(&port.to_string()),
                "{text}"
            );
        }
        other => panic!("expected a bind error, got {other:?}"),
    }
}

#[tokio::test]
async fn the_demo_config_of_a_running_line_names_its_ports() {
    let shutdown = CancellationToken::new();
    let line = sim::serve(
        SimOptions {
            machines: 2,
            base_port: 0,
            speed: 10.0,
            ..SimOptions::default()
        },
        shutdown.clone(),
    )
    .await
    .expect("line starts");
    let dir = tempfile::tempdir().expect("tempdir");
    let text = sim::demo_config(&line, dir.path());
    let config = linegate::config::Config::from_toml(&text, Path::new("demo"))
        .unwrap_or_else(|e| panic!("{e}\n{text}"));
    let addrs: BTreeMap<String, String> = config
        .machine
        .iter()
        .map(|m| {
            let bus = config.bus(&m.bus).expect("bus");
            (m.id.clone(), bus.address.clone().expect("address"))
        })
        .collect();
    for m in &line.machines {
        assert_eq!(addrs.get(&m.id), Some(&m.addr.to_string()));
    }
    shutdown.cancel();
    line.stopped().await;
}
