//! Accounting cost per sample and memory per machine.
//!
//! `cargo bench --bench accounting` (or `cargo run --release --bench
//! accounting`): feeds many synthetic samples (state rules, counters and
//! accounting, as the engine does) through one machine tracker and prints
//! nanoseconds per sample, and the size of one machine's state.

use std::path::Path;
use std::time::Instant as StdInstant;

use chrono::Utc;
use linegate::config::Config;
use linegate::machine::engine::MachineTracker;
use linegate::source::{Readings, Sample, SampleContent, Value};

const CONFIG: &str = r#"
[gateway]
id = "gw"
site = "plant"

[[bus]]
id = "cell-a"
transport = "tcp"
address = "127.0.0.1:502"

[[machine]]
id = "press07"
bus = "cell-a"

[[machine.signal]]
name = "cycle_active"
area = "coil"
address = 0
type = "bool"

[[machine.signal]]
name = "spindle_rpm"
area = "holding"
address = 10
type = "f32"

[[machine.signal]]
name = "alarm_code"
area = "holding"
address = 20

[[machine.signal]]
name = "mode"
area = "holding"
address = 21

[[machine.signal]]
name = "part_count"
area = "holding"
address = 30

[machine.state]
running = "cycle_active && spindle_rpm > 0"
down = "alarm_code != 0"
setup = "mode == 2"
reason = "alarm_code"
reasons = { "17" = "door open" }
min_dwell_ms = 2000

[machine.counters]
produced = "part_count"
ideal_cycle_s = 9.5
"#;

fn main() {
    let config = match Config::from_toml(CONFIG, Path::new("bench.toml")) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("bench config: {e}");
            return;
        }
    };
    let machine = &config.machine[0];
    let mut out = Vec::new();
    let t0 = Utc::now();
    let mono0 = tokio::time::Instant::now();
    let mut tracker = match MachineTracker::new(&config, machine, None, None, t0, 0, &mut out) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("tracker: {e}");
            return;
        }
    };
    let n: i64 = 2_000_000;
    let mut samples = Vec::with_capacity(1024);
    for i in 0..1024i64 {
        let phase = (i / 64) % 4;
        let readings: Readings = [
            ("cycle_active".to_string(), Ok(Value::Bool(phase == 0))),
            (
                "spindle_rpm".to_string(),
                Ok(Value::Float(if phase == 0 { 1200.0 } else { 0.0 })),
            ),
            (
                "alarm_code".to_string(),
                Ok(Value::Int(if phase == 2 { 17 } else { 0 })),
            ),
            (
                "mode".to_string(),
                Ok(Value::Int(if phase == 3 { 2 } else { 1 })),
            ),
            ("part_count".to_string(), Ok(Value::Int(i / 3))),
        ]
        .into_iter()
        .collect();
        samples.push(SampleContent::Signals(readings));
    }
    let mut events = 0usize;
    let start = StdInstant::now();
    for i in 0..n {
        let ms = i * 1000;
        let sample = Sample {
            machine: "press07".into(),
            at: t0 + chrono::Duration::milliseconds(ms),
            mono: mono0,
            content: samples[(i % 1024) as usize].clone(),
        };
        tracker.on_sample(&sample, ms, &mut out);
        events += out.len();
        out.clear();
    }
    let elapsed = start.elapsed();
    println!(
        "accounting: {} samples (one per second, {} days of one machine) in {:.2} s: {:.0} ns per sample (incl. building the sample), {} events",
        n,
        n / 86_400,
        elapsed.as_secs_f64(),
        elapsed.as_nanos() as f64 / n as f64,
        events
    );
    println!(
        "memory per machine: {} bytes tracker struct + ~{} bytes heap",
        std::mem::size_of::<MachineTracker>(),
        tracker.heap_bytes()
    );
}
