//! Simulated machines served as real Modbus TCP servers on loopback: the demo
//! line, and the ground truth that tests compare the agent's numbers with.
//!
//! Each machine is its own TCP server (`127.0.0.1`, one port each) and
//! follows a seeded, deterministic schedule (running with a part counter at
//! its cycle time, idle, down with an alarm code, setup). It honours its order
//! registers: a loaded order and the start coil make it set up, run the
//! order's quantity and go idle, clearing start. With `truth` set, every state
//! change is appended to a JSON-lines file:
//! `{"machine":"sim01","state":"down","at":"2026-11-26T08:00:00.125Z","reason":"alarm 17"}`.
//! [`SimLine::set_silent`] cuts a machine's wire (no replies) and mends it,
//! each switch a truth line `{"machine":"sim01","silent":true,"at":"..."}`.
//!
//! This module owns the options, the line's public API and the demo config
//! ([`demo_config`], which `configs/demo.toml` matches). It never reads a
//! machine the way the agent does and shares no code with `source`: the
//! agent must prove itself against it over the wire.
//!
//! - [`schedule`]: every random draw (spells, parts, order runs), pure.
//! - [`machine`]: one machine's registers and behaviour over time, pure.
//! - `server`: the Modbus TCP servers, the clocks and the truth file.
//!
//! # Register map (every simulated machine, unit id ignored)
//!
//! | area     | address | type | name           | meaning |
//! |----------|---------|------|----------------|---------|
//! | coil     | 0       | bool | `cycle_active` | a cycle is running |
//! | coil     | 10      | bool | `order_start`  | **writable**: start the loaded order; cleared by the machine when the quantity is made |
//! | discrete | 0       | bool | `door_closed`  | false during setup and alarm 17 |
//! | holding  | 0       | u16  | `mode`         | 1 automatic, 2 setup |
//! | holding  | 1       | u16  | `alarm_code`   | 0, or the active alarm: 8 material starved, 17 door open, 23 spindle overload, 42 tool breakage |
//! | holding  | 2-3     | u32  | `part_count`   | parts made (word order big, byte order big) |
//! | holding  | 4-5     | u32  | `good_count`   | good parts |
//! | holding  | 6-7     | u32  | `scrap_count`  | scrap parts (2-4 % per machine) |
//! | holding  | 10-17   | string (8 registers) | `product` | product name, e.g. `P-4711`, NUL padded |
//! | holding  | 200-201 | u32  | `order_number` | **writable** |
//! | holding  | 202     | u16  | `order_product`| **writable**: product code, P-4711 = 11, P-4712 = 12, P-4713 = 13 |
//! | holding  | 203     | u16  | `order_quantity`| **writable**: parts to make |
//! | input    | 0       | u16  | `spindle_rpm`  | 0 unless running |
//! | input    | 1-2     | f32  | `temperature`  | °C (word order big, byte order big) |
//!
//! Served blocks: coils 0-15, discrete inputs 0-7, holding 0-19 and 200-203,
//! input 0-9. Unused addresses inside a block read as 0 (so a reader may
//! bridge small gaps); a read that leaves its block is answered with the
//! `IllegalDataAddress` exception, as is any write other than to holding
//! 200-203 and coil 10. Other function codes get `IllegalFunction`.
//!
//! # Orders
//!
//! Setting the start coil with a quantity above 0 loaded makes the machine
//! leave its own schedule (if it is down, when the alarm clears): a short
//! setup, then cycles until the order's quantity is made (perhaps with one
//! alarm stop, drawn from the seed and the order), then `idle` with the
//! start coil cleared. It then waits, idle, for the next order. Start with
//! quantity 0 is refused (start stays clear); clearing start during an order
//! aborts it. Order values are latched at start. With `honour_orders = false`
//! the registers are plain memory and the machine ignores them.

pub mod machine;
pub mod schedule;
mod server;

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use machine::map;
use schedule::{MachineProfile, ALARMS, FAULT_ALARMS, PRODUCTS};

/// First port of `linegate simulate` and of `configs/demo.toml`: machine
/// `simNN` listens on `DEFAULT_BASE_PORT + NN - 1`.
pub const DEFAULT_BASE_PORT: u16 = 5020;

/// Machines of the demo line.
pub const DEFAULT_MACHINES: usize = 4;

/// Most machines one simulated line serves.
pub const MAX_MACHINES: usize = 2000;

/// Allowed speed factors: from a hundred times slower to a hundred thousand
/// times faster than real time.
pub const SPEED_RANGE: std::ops::RangeInclusive<f64> = 0.01..=100_000.0;

/// How to run a simulated line.
#[derive(Debug, Clone, PartialEq)]
pub struct SimOptions {
    /// Number of machines, `sim01`, `sim02`, ...
    pub machines: usize,
    /// Port of `sim01`; the others follow. 0 lets the OS pick free ports.
    pub base_port: u16,
    /// Same seed, same line: spells, parts and order runs repeat.
    pub seed: u64,
    /// Divides every duration: 60 runs an hour in a minute.
    pub speed: f64,
    /// Append every state change to this JSON-lines file.
    pub truth: Option<PathBuf>,
    /// Machines run orders written to their order registers.
    pub honour_orders: bool,
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions {
            machines: DEFAULT_MACHINES,
            base_port: DEFAULT_BASE_PORT,
            seed: 1,
            speed: 1.0,
            truth: None,
            honour_orders: true,
        }
    }
}

/// Why a simulated line could not start (or be switched).
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("the simulated line has no machine {0:?}")]
    UnknownMachine(String),
    #[error("simulator option `{option}`: {reason}")]
    Option {
        option: &'static str,
        reason: String,
    },
    #[error("machine {machine}: cannot listen on {addr}: {source} (is another simulator running? try another base port, or 0)")]
    Bind {
        machine: String,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("truth file {path}: {source}")]
    Truth {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// One served machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimMachine {
    /// `sim01`, `sim02`, ...
    pub id: String,
    /// Where its Modbus TCP server listens.
    pub addr: SocketAddr,
}

/// A running simulated line. Its servers run until the shutdown token given
/// to [`serve`] is cancelled.
#[derive(Debug)]
pub struct SimLine {
    pub machines: Vec<SimMachine>,
    /// The speed factor the line runs at (the demo config scales by it).
    pub speed: f64,
    /// Server, clock and truth-writer tasks, awaited by [`SimLine::stopped`].
    tasks: Vec<JoinHandle<()>>,
    /// Each machine's silence switch.
    wires: server::Wires,
}

impl SimLine {
    /// Make `machine` stop answering (`silent`: requests reach it and get no
    /// reply, as with a pulled cable or a device rebooting) or answer again;
    /// it keeps running its schedule meanwhile. The switch is appended to
    /// the truth file as `{"machine":"sim01","silent":true,"at":"..."}`.
    /// Returns the time of the switch.
    pub fn set_silent(&self, machine: &str, silent: bool) -> Result<DateTime<Utc>, SimError> {
        self.wires
            .set_silent(machine, silent)
            .ok_or_else(|| SimError::UnknownMachine(machine.to_owned()))
    }

    /// Wait until every task of the line has ended (after the shutdown token
    /// was cancelled); the truth file is then complete.
    pub async fn stopped(self) {
        // The switches hold a sender of the truth writer, which ends when
        // every sender is gone.
        drop(self.wires);
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

/// The id of the machine at `index` (0-based): `sim01`, `sim02`, ...
pub fn machine_id(index: usize) -> String {
    format!("sim{:02}", index + 1)
}

/// Start one Modbus TCP server per machine on 127.0.0.1. Returns as soon as
/// every port is bound; the machines run in spawned tasks until `shutdown`.
pub async fn serve(opts: SimOptions, shutdown: CancellationToken) -> Result<SimLine, SimError> {
    check_options(&opts)?;
    server::serve(opts, shutdown).await
}

fn check_options(opts: &SimOptions) -> Result<(), SimError> {
    if !(1..=MAX_MACHINES).contains(&opts.machines) {
        return Err(SimError::Option {
            option: "machines",
            reason: format!("{} is outside 1..={MAX_MACHINES}", opts.machines),
        });
    }
    if !SPEED_RANGE.contains(&opts.speed) {
        return Err(SimError::Option {
            option: "speed",
            reason: format!(
                "{} is outside {}..={}",
                opts.speed,
                SPEED_RANGE.start(),
                SPEED_RANGE.end()
            ),
        });
    }
    if opts.base_port != 0 && usize::from(opts.base_port) + opts.machines - 1 > 65535 {
        return Err(SimError::Option {
            option: "base_port",
            reason: format!(
                "{} machines from port {} run past 65535",
                opts.machines, opts.base_port
            ),
        });
    }
    Ok(())
}

/// A complete linegate config for `line`: one TCP bus per machine (each is
/// its own server), the signals of the register map, state rules, counters
/// and order registers. Cycle times, poll and micro-stop intervals are
/// scaled by the line's speed. `configs/demo.toml` is this text for the
/// default ports at speed 1.
pub fn demo_config(line: &SimLine, data_dir: &Path) -> String {
    render_config(&line.machines, line.speed, data_dir)
}

fn toml_string(s: &str) -> String {
    // A JSON string is a valid TOML basic string.
    serde_json::Value::String(s.to_owned()).to_string()
}

fn render_config(machines: &[SimMachine], speed: f64, data_dir: &Path) -> String {
    let speed = if speed.is_finite() && speed > 0.0 {
        speed
    } else {
        1.0
    };
    let poll_ms = ((1000.0 / speed).round() as u64).clamp(50, 1000);
    let micro_stop_s = ((120.0 / speed).round() as u64).max(1);
    let mut out = String::new();
    let w = &mut out;
    // `write!` to a String cannot fail.
    let _ = writeln!(
        w,
        "# linegate demo line: {n} simulated machines, each its own Modbus TCP server on\n\
         # 127.0.0.1, read by the agent over real Modbus TCP (`linegate simulate` serves\n\
         # them, from port {DEFAULT_BASE_PORT} by default).\n\
         # Generated by linegate::sim::demo_config for speed {speed:?} (cycle times, poll and\n\
         # micro-stop intervals scale with it). A [[machine]] block is a good start\n\
         # for a real machine.\n\
         #\n\
         # Register map of every simulated machine (0-based addresses, unit id ignored):\n\
         #   coil     0       bool    cycle_active    a cycle is running\n\
         #   coil     10      bool    order_start     writable: start the loaded order\n\
         #   discrete 0       bool    door_closed     false during setup and alarm 17\n\
         #   holding  0       u16     mode            1 automatic, 2 setup\n\
         #   holding  1       u16     alarm_code      0, or 8 material starved, 17 door open,\n\
         #                                            23 spindle overload, 42 tool breakage\n\
         #   holding  2-3     u32     part_count      parts made (word and byte order big)\n\
         #   holding  4-5     u32     good_count      good parts\n\
         #   holding  6-7     u32     scrap_count     scrap parts\n\
         #   holding  10-17   string  product         product name (8 registers), NUL padded\n\
         #   holding  200-201 u32     order_number    writable\n\
         #   holding  202     u16     order_product   writable: P-4711 = 11, P-4712 = 12, P-4713 = 13\n\
         #   holding  203     u16     order_quantity  writable: parts to make\n\
         #   input    0       u16     spindle_rpm     0 unless running\n\
         #   input    1-2     f32     temperature     degrees C (word and byte order big)\n\
         # Served blocks: coils 0-15, discrete 0-7, holding 0-19 and 200-203, input 0-9;\n\
         # a read outside them gets modbus exception 0x02 (IllegalDataAddress).\n\
         \n\
         [gateway]\n\
         id = \"gw-demo\"\n\
         site = \"demo\"\n\
         data_dir = {data_dir}\n\
         \n\
         [accounting]\n\
         # Short periods so the demo shows utilisation soon.\n\
         period_minutes = 1\n\
         micro_stop_s = {micro_stop_s}",
        n = machines.len(),
        data_dir = toml_string(&data_dir.to_string_lossy()),
    );
    for m in machines {
        let _ = writeln!(
            w,
            "\n[[bus]]\n\
             id = \"bus-{id}\"\n\
             transport = \"tcp\"\n\
             address = \"{addr}\"\n\
             timeout_ms = 500\n\
             backoff_min_ms = 500\n\
             backoff_max_ms = 5000",
            id = m.id,
            addr = m.addr,
        );
    }
    for (index, m) in machines.iter().enumerate() {
        render_machine(w, index, m, speed, poll_ms);
    }
    out
}

fn render_machine(w: &mut String, index: usize, m: &SimMachine, speed: f64, poll_ms: u64) {
    // The machine's index on the line is in its id (sim01 = 0); fall back to
    // the position in the list.
    let index =
        m.id.strip_prefix("sim")
            .and_then(|n| n.parse::<usize>().ok())
            .and_then(|n| n.checked_sub(1))
            .unwrap_or(index);
    let profile = MachineProfile::for_machine(index);
    let _ = writeln!(
        w,
        "\n[[machine]]\n\
         id = \"{id}\"\n\
         bus = \"bus-{id}\"\n\
         unit = 1\n\
         poll_ms = {poll_ms}",
        id = m.id
    );
    // (name, area, address, type, extra keys, what it means)
    let signals: [(&str, &str, u16, &str, &str, &str); 14] = [
        (
            "cycle_active",
            "coil",
            map::CYCLE_ACTIVE,
            "bool",
            "",
            "a cycle is running",
        ),
        (
            "order_start",
            "coil",
            map::START,
            "bool",
            "",
            "order start bit (written by orders)",
        ),
        (
            "door_closed",
            "discrete",
            map::DOOR_CLOSED,
            "bool",
            "",
            "guard door closed",
        ),
        (
            "mode",
            "holding",
            map::MODE,
            "u16",
            "",
            "1 automatic, 2 setup",
        ),
        (
            "alarm_code",
            "holding",
            map::ALARM_CODE,
            "u16",
            "",
            "0 or the active alarm",
        ),
        (
            "part_count",
            "holding",
            map::PART_COUNT,
            "u32",
            "",
            "parts made",
        ),
        (
            "good_count",
            "holding",
            map::GOOD_COUNT,
            "u32",
            "",
            "good parts",
        ),
        (
            "scrap_count",
            "holding",
            map::SCRAP_COUNT,
            "u32",
            "",
            "scrap parts",
        ),
        (
            "product",
            "holding",
            map::PRODUCT_NAME,
            "string",
            "length = 8",
            "product name",
        ),
        (
            "order_number",
            "holding",
            map::ORDER_NUMBER,
            "u32",
            "",
            "loaded order number",
        ),
        (
            "order_product",
            "holding",
            map::PRODUCT_CODE,
            "u16",
            "",
            "loaded product code",
        ),
        (
            "order_quantity",
            "holding",
            map::QUANTITY,
            "u16",
            "",
            "loaded quantity",
        ),
        (
            "spindle_rpm",
            "input",
            map::SPINDLE_RPM,
            "u16",
            "deadband = 20.0",
            "spindle speed, rpm",
        ),
        (
            "temperature",
            "input",
            map::TEMPERATURE,
            "f32",
            "deadband = 0.5",
            "temperature, degC",
        ),
    ];
    for (name, area, address, ty, extra, meaning) in signals {
        let _ = writeln!(
            w,
            "\n[[machine.signal]]   # {meaning}\n\
             name = \"{name}\"\n\
             area = \"{area}\"\n\
             address = {address}\n\
             type = \"{ty}\""
        );
        if matches!(ty, "u32" | "f32") {
            let _ = writeln!(w, "word_order = \"big\"\nbyte_order = \"big\"");
        }
        if !extra.is_empty() {
            let _ = writeln!(w, "{extra}");
        }
    }
    let reasons: Vec<String> = ALARMS
        .iter()
        .map(|(code, text)| format!("\"{code}\" = {}", toml_string(text)))
        .collect();
    let faults: Vec<String> = FAULT_ALARMS.iter().map(u16::to_string).collect();
    let products: Vec<String> = PRODUCTS
        .iter()
        .map(|(name, code)| format!("{} = {code}", toml_string(name)))
        .collect();
    let _ = writeln!(
        w,
        "\n[machine.state]\n\
         running = \"cycle_active && spindle_rpm > 0\"\n\
         down = \"alarm_code != 0\"\n\
         setup = \"mode == 2\"\n\
         reason = \"alarm_code\"\n\
         reasons = {{ {reasons} }}\n\
         fault_codes = [{faults}]\n\
         \n\
         [machine.counters]\n\
         produced = \"part_count\"\n\
         good = \"good_count\"\n\
         scrap = \"scrap_count\"\n\
         ideal_cycle_s = {ideal:?}\n\
         \n\
         [machine.orders]\n\
         order_number = {{ area = \"holding\", address = {on}, type = \"u32\" }}\n\
         product_code = {{ area = \"holding\", address = {pc}, type = \"u16\", map = {{ {products} }} }}\n\
         quantity = {{ area = \"holding\", address = {q}, type = \"u16\", min = 1.0, max = 5000.0 }}\n\
         start = {{ area = \"coil\", address = {s}, type = \"bool\" }}\n\
         max_quantity = 5000",
        reasons = reasons.join(", "),
        faults = faults.join(", "),
        ideal = profile.ideal_cycle_s / speed,
        on = map::ORDER_NUMBER,
        pc = map::PRODUCT_CODE,
        q = map::QUANTITY,
        s = map::START,
        products = products.join(", "),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn line_at(base_port: u16, n: usize, speed: f64) -> SimLine {
        SimLine {
            machines: (0..n)
                .map(|i| SimMachine {
                    id: machine_id(i),
                    addr: SocketAddr::from(([127, 0, 0, 1], base_port + i as u16)),
                })
                .collect(),
            speed,
            tasks: Vec::new(),
            wires: Default::default(),
        }
    }

    #[test]
    fn the_demo_config_loads_as_a_linegate_config() {
        let text = demo_config(&line_at(40000, 3, 50.0), Path::new("/tmp/demo \"data\""));
        let config = Config::from_toml(&text, Path::new("demo")).unwrap_or_else(|e| {
            panic!("{e}\n{text}");
        });
        assert_eq!(config.machine.len(), 3);
        assert_eq!(config.bus.len(), 3);
        assert_eq!(config.gateway.data_dir, Path::new("/tmp/demo \"data\""));
        let m = &config.machine[1];
        assert_eq!(m.id, "sim02");
        assert_eq!(
            config.bus(&m.bus).and_then(|b| b.address.as_deref()),
            Some("127.0.0.1:40001")
        );
        let orders = m.orders.as_ref().expect("orders");
        assert_eq!(orders.product_code.map.get("P-4712"), Some(&12));
        assert_eq!(orders.start.address, map::START);
        let counters = m.counters.as_ref().expect("counters");
        let ideal = counters.ideal_cycle_s.expect("ideal cycle");
        assert!((ideal - MachineProfile::for_machine(1).ideal_cycle_s / 50.0).abs() < 1e-9);
        let state = m.state.as_ref().expect("state rules");
        assert_eq!(
            state.reasons.get("17").map(String::as_str),
            Some("door open")
        );
    }

    #[test]
    fn configs_demo_toml_is_the_demo_config_for_the_default_ports() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/demo.toml");
        let text = std::fs::read_to_string(&path).expect("configs/demo.toml exists");
        let file = Config::from_toml(&text, &path).unwrap_or_else(|e| panic!("{e}"));
        let line = line_at(DEFAULT_BASE_PORT, DEFAULT_MACHINES, 1.0);
        let rendered = demo_config(&line, &file.gateway.data_dir);
        let expected = Config::from_toml(&rendered, Path::new("rendered")).expect("renders");
        assert_eq!(
            file, expected,
            "configs/demo.toml differs from sim::demo_config; regenerate it:\n{rendered}"
        );
    }

    #[test]
    fn options_out_of_range_are_refused_by_name() {
        let bad = [
            (
                SimOptions {
                    machines: 0,
                    ..SimOptions::default()
                },
                "machines",
            ),
            (
                SimOptions {
                    speed: 0.0,
                    ..SimOptions::default()
                },
                "speed",
            ),
            (
                SimOptions {
                    speed: f64::NAN,
                    ..SimOptions::default()
                },
                "speed",
            ),
            (
                SimOptions {
                    base_port: 65535,
                    machines: 2,
                    ..SimOptions::default()
                },
                "base_port",
            ),
        ];
        for (opts, name) in bad {
            match check_options(&opts) {
                Err(SimError::Option { option, .. }) => assert_eq!(option, name),
                other => panic!("{opts:?}: {other:?}"),
            }
        }
        assert!(check_options(&SimOptions::default()).is_ok());
    }
}
