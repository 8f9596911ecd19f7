//! Part counts against a device's own record, when the line misbehaves: the
//! agent stopped while the machine keeps producing, a counter preset by a
//! technician, 16- and 32-bit wraps and a reset to zero.
//!
//! The device is an in-process Modbus TCP server (tests/modbus_device) with a
//! producer task that makes parts on its own clock: each part increments the
//! counter register and is written to the device's own record with the phase
//! it was made in. The test sets the phases (making while the agent watches,
//! making while the agent is stopped, pauses around every stop, start and
//! counter write so that no part is made while a boundary is crossed). The
//! real agent reads the device into a real SQLite store; its periods (closed
//! ones, and the open one of the snapshot saved at shutdown) are compared
//! with the record:
//! - the parts the periods count as `produced` are exactly those the device
//!   made while the agent was watching, and `produced_unobserved` exactly
//!   those made while it was stopped (sums exact);
//! - per period, `produced` is the device's parts made inside the period,
//!   give or take the parts made within one read of its boundaries;
//! - no period claims more ideal time for its parts than it had running time
//!   (performance <= 1 within the time tolerance of a read);
//! - the counter's total, which orders take their progress from, is every
//!   part the device made after the agent's first read.

mod modbus_device;

use std::path::Path;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use linegate::agent::{self, RunOptions};
use linegate::config::Config;
use linegate::machine::accounting::AccountSnapshot;
use linegate::machine::history;
use linegate::machine::ClosedPeriod;
use linegate::store::Store;
use modbus_device::{serve_tcp, Devices, Unit};
use tokio_util::sync::CancellationToken;

/// The agent's poll interval.
const POLL_MS: u64 = 50;
/// The device makes one part every this long while it is making parts.
const CYCLE_MS: u64 = 50;
/// The machine's ideal cycle time in the agent's config: the device runs at
/// 80 % of it, so a period's true performance is at most 0.8.
const IDEAL_CYCLE_S: f64 = 0.04;
/// Time tolerance of a period (the ground-truth tests' bound for a period
/// without state changes: the device stays `running` throughout).
const TOLERANCE_S: f64 = 0.5;
/// How long before and after a boundary a part may be counted on either side
/// of it: one poll plus the time a read takes on a loaded machine.
const READ_MS: i64 = 150;
/// Pause around every stop, start and write so that the agent has read the
/// counter before and after.
const SETTLE: Duration = Duration::from_millis(600);

/// What the device is doing, as the test sets it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Phase {
    Paused = 0,
    /// Making parts while the agent reads the machine.
    Watched = 1,
    /// Making parts while the agent is not running.
    AgentStopped = 2,
}

/// The counter register of the device.
#[derive(Debug, Clone, Copy)]
enum Counter {
    /// u16 at holding 0.
    U16,
    /// u32 at holding 0-1, high word first.
    U32,
}

impl Counter {
    fn toml_type(self) -> &'static str {
        match self {
            Counter::U16 => "\"u16\"",
            Counter::U32 => "\"u32\"\nword_order = \"big\"",
        }
    }

    fn write(self, unit: &mut Unit, value: u64) {
        match self {
            Counter::U16 => unit.holding[0] = value as u16,
            Counter::U32 => {
                unit.holding[0] = (value >> 16) as u16;
                unit.holding[1] = value as u16;
            }
        }
    }

    fn range(self) -> u64 {
        match self {
            Counter::U16 => 1 << 16,
            Counter::U32 => 1 << 32,
        }
    }
}

/// One part in the device's own record.
#[derive(Debug, Clone, Copy)]
struct Part {
    at: DateTime<Utc>,
    phase: Phase,
}

/// The simulated machine: always `running`, making parts when told.
struct Device {
    devices: Devices,
    counter: Counter,
    phase: Arc<AtomicU8>,
    /// The counter's current value (the producer and presets write it).
    value: Arc<Mutex<u64>>,
    record: Arc<Mutex<Vec<Part>>>,
    stop: CancellationToken,
    address: std::net::SocketAddr,
}

impl Device {
    async fn start(counter: Counter, first_value: u64) -> Device {
        let devices = Devices::new();
        let mut unit = Unit::default();
        unit.coils[0] = true; // running
        counter.write(&mut unit, first_value);
        devices.add(1, unit);
        let address = serve_tcp(devices.clone()).await;
        let device = Device {
            devices,
            counter,
            phase: Arc::new(AtomicU8::new(Phase::Paused as u8)),
            value: Arc::new(Mutex::new(first_value)),
            record: Arc::new(Mutex::new(Vec::new())),
            stop: CancellationToken::new(),
            address,
        };
        let (devices, phase, value, record, stop) = (
            device.devices.clone(),
            device.phase.clone(),
            device.value.clone(),
            device.record.clone(),
            device.stop.clone(),
        );
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(CYCLE_MS));
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tick.tick() => {}
                }
                let phase = match phase.load(Ordering::SeqCst) {
                    1 => Phase::Watched,
                    2 => Phase::AgentStopped,
                    _ => continue,
                };
                let mut v = value.lock().unwrap();
                *v = (*v + 1) % counter.range();
                let new = *v;
                // The register and the record change together.
                let mut rec = record.lock().unwrap();
                devices.with(1, |u| counter.write(u, new));
                rec.push(Part {
                    at: Utc::now(),
                    phase,
                });
            }
        });
        device
    }

    async fn make(&self, phase: Phase, for_how_long: Duration) {
        self.phase.store(phase as u8, Ordering::SeqCst);
        tokio::time::sleep(for_how_long).await;
        self.phase.store(Phase::Paused as u8, Ordering::SeqCst);
        tokio::time::sleep(SETTLE).await;
    }

    /// A technician (or a PLC program reload) writes the counter register.
    async fn write_counter(&self, to: u64) {
        {
            let mut v = self.value.lock().unwrap();
            *v = to;
            self.devices.with(1, |u| self.counter.write(u, to));
        }
        tokio::time::sleep(SETTLE).await;
    }

    fn parts(&self, phase: Phase) -> Vec<DateTime<Utc>> {
        let rec = self.record.lock().unwrap();
        rec.iter()
            .filter(|p| p.phase == phase)
            .map(|p| p.at)
            .collect()
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn agent_config(device: &Device, data_dir: &Path, counters_extra: &str) -> Config {
    let text = agent_config_text(device, data_dir, counters_extra);
    Config::from_toml(&text, Path::new("truth-counters.toml")).unwrap_or_else(|e| panic!("{e}"))
}

fn agent_config_text(device: &Device, data_dir: &Path, counters_extra: &str) -> String {
    format!(
        "[gateway]\nid = \"gw-test\"\nsite = \"lab\"\ndata_dir = {data:?}\n\n\
         [accounting]\nperiod_minutes = 1\n\n\
         [[bus]]\nid = \"b\"\ntransport = \"tcp\"\naddress = \"{addr}\"\ntimeout_ms = 500\n\n\
         [[machine]]\nid = \"press07\"\nbus = \"b\"\nunit = 1\npoll_ms = {POLL_MS}\n\n\
         [[machine.signal]]\nname = \"running\"\narea = \"coil\"\naddress = 0\ntype = \"bool\"\n\n\
         [[machine.signal]]\nname = \"part_count\"\narea = \"holding\"\naddress = 0\ntype = {ty}\n\n\
         [machine.state]\nrunning = \"running\"\n\n\
         [machine.counters]\nproduced = \"part_count\"\nideal_cycle_s = {IDEAL_CYCLE_S}\n{counters_extra}",
        data = data_dir.to_string_lossy(),
        addr = device.address,
        ty = device.counter.toml_type(),
    )
}

/// A running agent.
struct Agent {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), agent::AgentError>>,
}

impl Agent {
    /// Start the agent and wait until it has read the machine.
    async fn start(config: &Config) -> Agent {
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
        tokio::time::sleep(SETTLE).await;
        Agent { stop, task }
    }

    async fn stop(self) {
        self.stop.cancel();
        self.task
            .await
            .expect("agent task")
            .expect("the agent stops cleanly");
    }
}

/// The machine's closed periods and the open one of its snapshot.
struct Stored {
    periods: Vec<ClosedPeriod>,
    snapshot: AccountSnapshot,
    status: history::MachineStatus,
}

fn read_store(data_dir: &Path) -> Stored {
    let store = Store::open(data_dir).expect("the store opens");
    store
        .call_blocking(|c| {
            let mut periods: Vec<ClosedPeriod> = history::periods(c, None, None, None)?
                .into_iter()
                .filter(|p| {
                    p.machine == "press07" && p.kind == linegate::machine::PeriodKind::Interval
                })
                .collect();
            let snapshot = history::load_snapshots(c)?
                .into_iter()
                .find(|(m, _)| m == "press07")
                .map(|(_, s)| s)
                .expect("a snapshot of press07");
            if let Some(open) = snapshot.interval_so_far() {
                periods.push(open);
            }
            let status = history::current(c)?
                .into_iter()
                .find(|s| s.machine == "press07")
                .expect("a status row of press07");
            Ok(Stored {
                periods,
                snapshot,
                status,
            })
        })
        .expect("the store reads")
}

/// Every period against the device's record of parts made while watched.
fn check_periods(stored: &Stored, watched: &[DateTime<Utc>]) {
    let mut spans: Vec<_> = stored.periods.iter().map(|p| (p.start, p.end)).collect();
    spans.sort();
    for pair in spans.windows(2) {
        assert_eq!(
            pair[0].1, pair[1].0,
            "periods leave a gap or overlap: {spans:?}"
        );
    }
    for p in &stored.periods {
        let within = |t: &DateTime<Utc>, ms: i64| {
            *t >= p.start - chrono::Duration::milliseconds(ms)
                && *t < p.end + chrono::Duration::milliseconds(ms)
        };
        let inside = watched.iter().filter(|t| within(t, 0)).count() as u64;
        let near_edges = watched.iter().filter(|t| within(t, READ_MS)).count() as u64
            - watched.iter().filter(|t| within(t, -READ_MS)).count() as u64;
        assert!(
            p.counts.produced.abs_diff(inside) <= near_edges,
            "{}..{}: {} parts counted, the device made {inside} (and {near_edges} within a read of the edges)",
            p.start,
            p.end,
            p.counts.produced
        );
        let ideal_s = p.counts.produced as f64 * IDEAL_CYCLE_S;
        assert!(
            ideal_s <= p.seconds.running + TOLERANCE_S,
            "{}..{}: {} parts are {ideal_s:.2} s of ideal time in {:.2} s of running \
             (performance {:?})",
            p.start,
            p.end,
            p.counts.produced,
            p.seconds.running,
            p.kpi.performance
        );
        if let Some(perf) = p.kpi.performance {
            assert!(
                perf <= 1.0 + TOLERANCE_S / p.seconds.running,
                "{}..{}: performance {perf}",
                p.start,
                p.end
            );
        }
        if let Some(oee) = p.kpi.oee {
            assert!(oee <= 1.0 + TOLERANCE_S / p.seconds.running, "oee {oee}");
        }
    }
}

fn produced(stored: &Stored) -> u64 {
    stored.periods.iter().map(|p| p.counts.produced).sum()
}

fn produced_unobserved(stored: &Stored) -> u64 {
    stored
        .periods
        .iter()
        .map(|p| p.counts.produced_unobserved)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parts_made_while_the_agent_was_stopped_are_counted_apart_and_kept_out_of_performance() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let device = Device::start(Counter::U32, 1_000).await;
    let config = agent_config(&device, &data, "");

    let agent = Agent::start(&config).await;
    device.make(Phase::Watched, Duration::from_secs(3)).await;
    agent.stop().await;
    // The machine keeps producing for longer than the agent watched it.
    device
        .make(Phase::AgentStopped, Duration::from_secs(5))
        .await;
    let agent = Agent::start(&config).await;
    device.make(Phase::Watched, Duration::from_secs(3)).await;
    agent.stop().await;

    let watched = device.parts(Phase::Watched);
    let unwatched = device.parts(Phase::AgentStopped);
    assert!(
        watched.len() > 20 && unwatched.len() > 40,
        "the device made parts"
    );
    let stored = read_store(&data);
    assert_eq!(
        produced(&stored),
        watched.len() as u64,
        "produced is the parts made while the agent watched"
    );
    assert_eq!(
        produced_unobserved(&stored),
        unwatched.len() as u64,
        "produced_unobserved is the parts made while the agent was stopped"
    );
    let counters = stored.snapshot.counters.as_ref().expect("counters saved");
    assert_eq!(
        counters.produced_total(),
        (watched.len() + unwatched.len()) as u64,
        "the total (what orders progress by) has every part"
    );
    check_periods(&stored, &watched);
    assert!(stored.status.counter_presets.is_empty(), "no preset");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_counter_preset_to_near_its_top_counts_zero_shows_in_status_and_counting_goes_on_across_the_wrap(
) {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let device = Device::start(Counter::U32, 95).await;
    let config = agent_config(&device, &data, "");
    let config_file = dir.path().join("linegate.toml");
    std::fs::write(&config_file, agent_config_text(&device, &data, "")).expect("config file");

    let agent = Agent::start(&config).await;
    device.make(Phase::Watched, Duration::from_secs(2)).await;
    let before = *device.value.lock().unwrap();
    device.write_counter(4_294_967_200).await;
    // 95 parts to the top of the register, then it wraps past 0.
    device.make(Phase::Watched, Duration::from_secs(7)).await;
    let after = *device.value.lock().unwrap();
    assert!(after < 1_000, "the device's counter wrapped: {after}");
    agent.stop().await;

    let watched = device.parts(Phase::Watched);
    let stored = read_store(&data);
    assert_eq!(
        produced(&stored),
        watched.len() as u64,
        "the preset counts nothing, every part made counts once"
    );
    assert_eq!(produced_unobserved(&stored), 0);
    check_periods(&stored, &watched);
    let presets = &stored.status.counter_presets;
    assert_eq!(presets.len(), 1, "{presets:?}");
    assert_eq!(presets[0].signal, "part_count");
    assert_eq!(presets[0].count, 1);
    assert_eq!(
        (presets[0].last.from, presets[0].last.to),
        (before, 4_294_967_200),
        "status shows the old and the new value"
    );

    // And so does the `linegate status` command.
    let status = |json: bool| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_linegate"));
        cmd.arg("status").arg("-c").arg(&config_file);
        if json {
            cmd.arg("--json");
        }
        let out = cmd.output().expect("linegate status runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let json: serde_json::Value = serde_json::from_str(&status(true)).expect("status --json");
    let p = &json[0]["counter_presets"][0];
    assert_eq!(p["signal"], "part_count", "{json}");
    assert_eq!(p["count"], 1, "{json}");
    assert_eq!(p["last"]["from"], before, "{json}");
    assert_eq!(p["last"]["to"], 4_294_967_200u64, "{json}");
    let table = status(false);
    assert!(
        table.contains("part_count preset 1 time(s)")
            && table.contains(&format!("{before} -> 4294967200")),
        "{table}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_16_bit_counter_wraps_and_a_reset_to_zero_still_count_every_part() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let device = Device::start(Counter::U16, 65_500).await;
    let config = agent_config(&device, &data, "");

    let agent = Agent::start(&config).await;
    device.make(Phase::Watched, Duration::from_secs(3)).await;
    let wrapped = *device.value.lock().unwrap();
    assert!(wrapped < 1_000, "the device's counter wrapped: {wrapped}");
    // An operator resets the counter (a new order).
    device.write_counter(0).await;
    device.make(Phase::Watched, Duration::from_secs(2)).await;
    agent.stop().await;

    let watched = device.parts(Phase::Watched);
    let stored = read_store(&data);
    assert_eq!(produced(&stored), watched.len() as u64);
    assert_eq!(produced_unobserved(&stored), 0);
    check_periods(&stored, &watched);
    assert!(
        stored.status.counter_presets.is_empty(),
        "a wrap and a reset are no presets: {:?}",
        stored.status.counter_presets
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_rate_limit_decides_what_is_a_preset() {
    // The same jump of 150 parts between two reads is a preset at 5 parts/s
    // (at most 5 x (0.05 s + 2 s of slack) = 11 parts) and counted at the
    // default, 4 per ideal cycle: 100 parts/s, at least 200 parts.
    for (extra, preset) in [("max_parts_per_s = 5.0\n", true), ("", false)] {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        let device = Device::start(Counter::U32, 10).await;
        let config = agent_config(&device, &data, extra);
        let agent = Agent::start(&config).await;
        device.write_counter(160).await;
        agent.stop().await;
        let stored = read_store(&data);
        assert_eq!(produced(&stored), if preset { 0 } else { 150 }, "{extra:?}");
        assert_eq!(stored.status.counter_presets.len(), usize::from(preset));
    }
}

#[test]
fn a_rate_limit_that_is_not_a_positive_number_is_refused_by_its_key() {
    let base = "[gateway]\nid = \"gw-test\"\nsite = \"lab\"\ndata_dir = \"/tmp/x\"\n\
                [[bus]]\nid = \"b\"\ntransport = \"tcp\"\naddress = \"127.0.0.1:502\"\n\
                [[machine]]\nid = \"press07\"\nbus = \"b\"\nunit = 1\n\
                [[machine.signal]]\nname = \"part_count\"\narea = \"holding\"\naddress = 0\n\
                [machine.counters]\nproduced = \"part_count\"\n";
    for bad in ["0.0", "-3.0"] {
        let text = format!("{base}max_parts_per_s = {bad}\n");
        let e = match Config::from_toml(&text, Path::new("test.toml")) {
            Ok(_) => panic!("max_parts_per_s = {bad} should be refused"),
            Err(e) => e.to_string(),
        };
        assert!(
            e.contains("machine[0].counters.max_parts_per_s") && e.contains("positive"),
            "{bad}: {e}"
        );
    }
    let ok = format!("{base}max_parts_per_s = 12.5\n");
    let c = Config::from_toml(&ok, Path::new("test.toml")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        c.machine[0]
            .counters
            .as_ref()
            .and_then(|c| c.max_parts_per_s),
        Some(12.5)
    );
}

/// A hand-written timeline through the machine tracker (rules, counters and
/// accounting, no I/O): parts counted after the machine was unreachable, or
/// silent for longer than its staleness time, are unobserved.
#[test]
fn parts_counted_after_an_outage_or_a_silence_are_unobserved() {
    use linegate::machine::engine::MachineTracker;
    use linegate::source::{Readings, Sample, SampleContent, Value};

    let text = "[gateway]\nid = \"gw-test\"\nsite = \"lab\"\ndata_dir = \"/tmp/x\"\n\
                [[bus]]\nid = \"b\"\ntransport = \"tcp\"\naddress = \"127.0.0.1:502\"\ntimeout_ms = 500\n\
                [[machine]]\nid = \"press07\"\nbus = \"b\"\nunit = 1\npoll_ms = 1000\n\
                [[machine.signal]]\nname = \"running\"\narea = \"coil\"\naddress = 0\ntype = \"bool\"\n\
                [[machine.signal]]\nname = \"part_count\"\narea = \"holding\"\naddress = 0\n\
                [machine.state]\nrunning = \"running\"\n\
                [machine.counters]\nproduced = \"part_count\"\nideal_cycle_s = 1.0\n";
    let config = Config::from_toml(text, Path::new("test.toml")).unwrap_or_else(|e| panic!("{e}"));
    let t0: DateTime<Utc> = "2026-03-02T10:00:00Z".parse().expect("a time");
    let mut out = Vec::new();
    let mut m = MachineTracker::new(&config, &config.machine[0], None, None, t0, 0, &mut out)
        .expect("a tracker");
    let sample = |s: i64, content: SampleContent| Sample {
        machine: "press07".into(),
        at: t0 + chrono::Duration::seconds(s),
        mono: tokio::time::Instant::now(),
        content,
    };
    let parts = |n: i64| {
        let r: Readings = [
            ("running", Ok(Value::Bool(true))),
            ("part_count", Ok(Value::Int(n))),
        ]
        .into_iter()
        .collect();
        SampleContent::Signals(r)
    };
    let read = |m: &mut MachineTracker, out: &mut Vec<_>, s: i64, content: SampleContent| {
        m.on_sample(&sample(s, content), s * 1000, out);
        m.tick(s * 1000, out);
    };
    // One part a second, watched: 10 parts.
    for s in 0..=10 {
        read(&mut m, &mut out, s, parts(100 + s));
    }
    // Unreachable for ten seconds while it makes 40 parts (a fast spell).
    for s in 11..=20 {
        read(
            &mut m,
            &mut out,
            s,
            SampleContent::Unreachable {
                reason: "no reply: timeout".into(),
            },
        );
    }
    read(&mut m, &mut out, 21, parts(150));
    read(&mut m, &mut out, 22, parts(151));
    // Then no sample for 18 s (more than 3 polls + the timeout): 19 parts.
    for s in 23..40 {
        m.tick(s * 1000, &mut out);
    }
    read(&mut m, &mut out, 40, parts(170));
    read(&mut m, &mut out, 41, parts(171));
    // (A read's parts count once the time after it is attributed.)
    read(&mut m, &mut out, 42, parts(171));

    let p = m.account.interval_so_far().expect("the open period");
    assert_eq!(p.counts.produced, 10 + 1 + 1, "parts seen being made");
    assert_eq!(p.counts.produced_unobserved, 40 + 19);
    assert_eq!(
        m.view().produced_total,
        10 + 40 + 1 + 19 + 1,
        "orders get them all"
    );
    assert_eq!(p.seconds.offline, 11.0 + 18.0, "from each last good read");
}
