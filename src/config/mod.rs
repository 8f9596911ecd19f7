//! The technician's interface: the TOML file that describes the gateway, its
//! buses, machines and signals, and how to report upstream.
//!
//! This module owns the config types, loading them and checking them as a
//! whole. Loading goes: the text (`raw`: syntax, numbers, the position of
//! every key), `LINEGATE_<SECTION>__<KEY>` environment overrides (`env`),
//! the typed shape (`shape`: unknown keys, wrong types, missing keys), then
//! the cross-checks (`validate`); every problem of every step is reported
//! at once, in file order. Every problem names the file's line and column
//! (or the variable), the key path (`machine[2].signal[0].type`) and says
//! what is allowed. It never opens a device, a socket or the store.
//!
//! Every struct rejects unknown keys: a typo must never be silently ignored.
//! Keys carry their unit in the name (`poll_ms`, `timeout_ms`, `outbox_max_mb`).

mod env;
mod raw;
mod shape;
mod validate;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub use validate::{
    address_warnings, is_valid_id, uplink_warnings, validate, writable_range, ConfigIssue, Place,
    MAX_IDEAL_CYCLE_S,
};
pub use validate::{console_addr, console_warnings};

/// A config that loaded, and what in it works but looks wrong.
#[derive(Debug)]
pub struct Loaded {
    pub config: Config,
    /// E.g. a 40001-style address; each placed like an error.
    pub warnings: Vec<ConfigIssue>,
}

/// File order (line, column), then the environment's, then the rest.
fn sort_by_place(issues: &mut [ConfigIssue]) {
    issues.sort_by_key(|i| match &i.place {
        Place::File { line, column } => (0, *line, *column, String::new()),
        Place::Env { variable } => (1, 0, 0, variable.clone()),
        Place::Unknown => (2, 0, 0, String::new()),
    });
}

/// Where the config file is looked for when neither `-c` nor `$LINEGATE_CONFIG` is given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/linegate/linegate.toml";

/// Prefix of environment overrides: `LINEGATE_GATEWAY__ID=gw2` sets `gateway.id`.
pub const ENV_PREFIX: &str = "LINEGATE";

/// Why a config could not be used. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read the config file: {reason}")]
    Read { file: PathBuf, reason: String },
    #[error("{file}: `{key}`: {reason}")]
    Shape {
        file: PathBuf,
        key: String,
        reason: String,
    },
    #[error("{}: {} problem(s):\n{}{}", file.display(), issues.len(), list(file, issues), also_warn(file, warnings))]
    Invalid {
        file: PathBuf,
        issues: Vec<ConfigIssue>,
        /// What would be warned about once the problems are fixed (a
        /// 40001-style address), so that one run tells everything.
        warnings: Vec<ConfigIssue>,
    },
}

fn also_warn(file: &Path, warnings: &[ConfigIssue]) -> String {
    if warnings.is_empty() {
        return String::new();
    }
    format!(
        "\nand {} warning(s):\n{}",
        warnings.len(),
        warnings
            .iter()
            .map(|w| format!("  - {}", w.labelled_in_file(file, "warning: ")))
            .collect::<Vec<_>>()
            .join("\n")
    )
}

fn list(file: &Path, issues: &[ConfigIssue]) -> String {
    issues
        .iter()
        .map(|i| format!("  - {}", i.in_file(file)))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The whole gateway configuration.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub gateway: GatewayConfig,
    #[serde(default)]
    pub bus: Vec<BusConfig>,
    /// Shared, not copied: every bus task, the state engine and the
    /// uplink hold the machines they serve as these same `Arc`s (a copy per
    /// bus was 2.2 KB a machine).
    #[serde(default)]
    pub machine: Vec<Arc<MachineConfig>>,
    #[serde(default)]
    pub accounting: AccountingConfig,
    /// The shift calendar; without it all time is planned production time.
    #[serde(default)]
    pub shifts: Option<ShiftCalendarConfig>,
    /// The central broker; without it nothing is sent, everything is still stored locally.
    #[serde(default)]
    pub uplink: Option<UplinkConfig>,
    #[serde(default)]
    pub store: StoreConfig,
    /// The Sparkplug B edge node (its own connection); without it, none.
    #[serde(default)]
    pub sparkplug: Option<SparkplugConfig>,
    /// Order completion forecasts and free capacity.
    #[serde(default)]
    pub forecast: ForecastConfig,
    /// The local web console, `/metrics` and `/healthz` (on by default, loopback).
    #[serde(default)]
    pub console: ConsoleConfig,
}

/// Identity of this gateway and where it keeps its data.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// Gateway id, part of every topic: `[A-Za-z0-9_.-]{1,64}`.
    pub id: String,
    /// Site id, part of every topic: `[A-Za-z0-9_.-]{1,64}`.
    pub site: String,
    /// Folder of the SQLite store.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// IANA time zone of the site, used by the shift calendar (e.g. `Europe/Berlin`).
    #[serde(default = "default_timezone")]
    pub timezone: String,
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("/var/lib/linegate")
}
fn default_timezone() -> String {
    "UTC".into()
}

/// How a bus reaches its devices.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// Modbus TCP, one connection per address shared by the unit ids behind it.
    Tcp,
    /// Modbus RTU on a serial line (RS-485/RS-232).
    Rtu,
    /// A local MQTT broker where machines publish their own values.
    Mqtt,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Parity {
    None,
    Even,
    Odd,
}

/// One physical connection: a TCP address, a serial line or an MQTT broker.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BusConfig {
    pub id: String,
    pub transport: Transport,
    /// tcp: `host:port`; mqtt: `mqtt://host:port`.
    #[serde(default)]
    pub address: Option<String>,
    /// rtu: the serial device, e.g. `/dev/ttyUSB0`.
    #[serde(default)]
    pub device: Option<String>,
    #[serde(default = "default_baud")]
    pub baud: u32,
    #[serde(default = "default_parity")]
    pub parity: Parity,
    #[serde(default = "default_data_bits")]
    pub data_bits: u8,
    #[serde(default = "default_stop_bits")]
    pub stop_bits: u8,
    /// How long one request may take before the device counts as not answering.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Pause between two requests on this bus (some RS-485 devices need it).
    #[serde(default)]
    pub delay_ms: u64,
    /// Most registers in one read request (protocol limit 125).
    #[serde(default = "default_max_registers")]
    pub max_registers_per_request: u16,
    /// Most bits in one coil/discrete read (protocol limit 2000).
    #[serde(default = "default_max_bits")]
    pub max_bits_per_request: u16,
    /// Unused registers (or bits) a request may read to join two signals into one request.
    #[serde(default = "default_max_gap")]
    pub max_gap: u16,
    /// Retry interval of a device that stopped answering, for its first
    /// `backoff_after_ms` of silence; then the first step of the backoff.
    #[serde(default = "default_backoff_min_ms")]
    pub backoff_min_ms: u64,
    #[serde(default = "default_backoff_max_ms")]
    pub backoff_max_ms: u64,
    /// Modbus: how long a silent device is retried every `backoff_min_ms`
    /// before the wait starts doubling (short outages end quickly).
    #[serde(default = "default_backoff_after_ms")]
    pub backoff_after_ms: u64,
    /// mqtt: client id on the local broker (default `linegate-<gateway>-<bus>`).
    #[serde(default)]
    pub client_id: Option<String>,
    /// mqtt: a machine that publishes nothing for this long is offline.
    #[serde(default = "default_stale_ms")]
    pub stale_ms: u64,
    /// mqtt: largest payload taken from the local broker; a larger message
    /// is refused by itself (named, counted), the connection stays up.
    #[serde(default = "default_max_payload_bytes")]
    pub max_payload_bytes: u64,
    /// mqtt: what a retained message (a replay by the broker) is worth.
    #[serde(default)]
    pub retained: RetainedPolicy,
    /// mqtt, `retained = "timestamped"`: JSON pointer to the payload's own
    /// time (RFC 3339 text or Unix milliseconds).
    #[serde(default)]
    pub timestamp_pointer: Option<String>,
}

/// What an MQTT source makes of a retained message: the broker replays it on
/// every (re)subscription, however old it is, so it is never a fresh reading.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RetainedPolicy {
    /// Not an observation at all: counted and dropped.
    #[default]
    Ignore,
    /// The state at the payload's own timestamp (`timestamp_pointer`), when
    /// that is younger than `stale_ms`; otherwise dropped like `ignore`.
    /// Counter signals are never taken from a retained message.
    Timestamped,
}

fn default_baud() -> u32 {
    19200
}
fn default_parity() -> Parity {
    Parity::Even
}
fn default_data_bits() -> u8 {
    8
}
fn default_stop_bits() -> u8 {
    1
}
fn default_timeout_ms() -> u64 {
    500
}
fn default_max_registers() -> u16 {
    125
}
fn default_max_bits() -> u16 {
    2000
}
fn default_max_gap() -> u16 {
    10
}
fn default_backoff_min_ms() -> u64 {
    1000
}
fn default_backoff_max_ms() -> u64 {
    60_000
}
fn default_backoff_after_ms() -> u64 {
    60_000
}
fn default_stale_ms() -> u64 {
    10_000
}
fn default_max_payload_bytes() -> u64 {
    1024 * 1024
}

/// One machine: where it is, how often to read it, what its signals mean.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MachineConfig {
    pub id: String,
    pub bus: String,
    /// Modbus unit (slave) id; ignored on mqtt buses.
    #[serde(default = "default_unit")]
    pub unit: u8,
    #[serde(default = "default_poll_ms")]
    pub poll_ms: u64,
    #[serde(default)]
    pub signal: Vec<SignalConfig>,
    #[serde(default)]
    pub state: Option<StateRulesConfig>,
    #[serde(default)]
    pub counters: Option<CountersConfig>,
    #[serde(default)]
    pub orders: Option<OrderRegistersConfig>,
}

fn default_unit() -> u8 {
    1
}
fn default_poll_ms() -> u64 {
    1000
}

/// The four Modbus data areas.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Area {
    Coil,
    Discrete,
    Holding,
    Input,
}

impl Area {
    /// Coils and discrete inputs are bits; holding and input registers are 16-bit words.
    pub fn is_bits(self) -> bool {
        matches!(self, Area::Coil | Area::Discrete)
    }
}

impl fmt::Display for Area {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Area::Coil => "coil",
            Area::Discrete => "discrete",
            Area::Holding => "holding",
            Area::Input => "input",
        })
    }
}

/// How the raw registers of a signal are read as a value.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum DataType {
    Bool,
    U16,
    I16,
    U32,
    I32,
    U64,
    I64,
    F32,
    F64,
    String,
}

impl DataType {
    /// Registers a value of this type takes; strings take their `length`.
    pub fn registers(self, length: Option<u16>) -> u16 {
        match self {
            DataType::Bool | DataType::U16 | DataType::I16 => 1,
            DataType::U32 | DataType::I32 | DataType::F32 => 2,
            DataType::U64 | DataType::I64 | DataType::F64 => 4,
            DataType::String => length.unwrap_or(1),
        }
    }
}

impl fmt::Display for DataType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = serde_json::to_value(self)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        f.write_str(&s)
    }
}

/// Order of bytes or words: `big` is the Modbus standard (most significant first).
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Endian {
    #[default]
    Big,
    Little,
}

/// One value read from a machine.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SignalConfig {
    /// Name used in state rules, counters and messages: `[A-Za-z_][A-Za-z0-9_]*`.
    pub name: String,
    /// Modbus area (Modbus buses).
    #[serde(default)]
    pub area: Option<Area>,
    /// 0-based protocol address (Modbus buses). Manuals often print 1-based
    /// "40001"-style numbers: 40001 is holding address 0.
    #[serde(default)]
    pub address: Option<u16>,
    #[serde(default = "default_type", rename = "type")]
    pub data_type: DataType,
    /// Order of the 16-bit words of a 32/64-bit value.
    #[serde(default)]
    pub word_order: Endian,
    /// Order of the two bytes inside each word.
    #[serde(default)]
    pub byte_order: Endian,
    /// value = raw * scale + offset (numbers only).
    #[serde(default = "default_scale")]
    pub scale: f64,
    #[serde(default)]
    pub offset: f64,
    /// A bool taken from one bit (0 = least significant) of a register.
    #[serde(default)]
    pub bit: Option<u8>,
    /// Registers of a string (two characters each).
    #[serde(default)]
    pub length: Option<u16>,
    /// mqtt buses: the topic the value arrives on.
    #[serde(default)]
    pub topic: Option<String>,
    /// mqtt buses: JSON pointer into the payload (`/status/rpm`); absent = the payload itself.
    #[serde(default)]
    pub pointer: Option<String>,
    /// Telemetry deadband: a change smaller than this is not sent until the heartbeat.
    #[serde(default)]
    pub deadband: f64,
}

fn default_type() -> DataType {
    DataType::U16
}
fn default_scale() -> f64 {
    1.0
}

/// When a machine is down, in setup or running: boolean expressions over its signals.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StateRulesConfig {
    #[serde(default)]
    pub running: Option<String>,
    #[serde(default)]
    pub down: Option<String>,
    #[serde(default)]
    pub setup: Option<String>,
    /// A signal whose value explains a `down` or `setup` state (e.g. an alarm code).
    #[serde(default)]
    pub reason: Option<String>,
    /// Text for reason codes: `reasons = { "17" = "door open" }`.
    #[serde(default)]
    pub reasons: BTreeMap<String, String>,
    /// Reason codes that are faults (count as failures); empty = every nonzero down reason.
    #[serde(default)]
    pub fault_codes: Vec<i64>,
    /// A state shorter than this is not a state (debounce).
    #[serde(default)]
    pub min_dwell_ms: u64,
}

/// Which signals count parts.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CountersConfig {
    pub produced: String,
    #[serde(default)]
    pub good: Option<String>,
    #[serde(default)]
    pub scrap: Option<String>,
    /// Seconds one part ideally takes; an order's own value wins.
    #[serde(default)]
    pub ideal_cycle_s: Option<f64>,
    /// The most parts per second each counting signal of this machine can
    /// plausibly count; a larger forward step is a preset, counted as zero.
    /// Default: 4 / `ideal_cycle_s`, or 1000 without an ideal cycle time.
    #[serde(default)]
    pub max_parts_per_s: Option<f64>,
}

/// One register an order may write.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OrderRegister {
    pub area: Area,
    pub address: u16,
    #[serde(default = "default_type", rename = "type")]
    pub data_type: DataType,
    #[serde(default)]
    pub word_order: Endian,
    #[serde(default)]
    pub byte_order: Endian,
    /// Allowed range of the written value.
    #[serde(default)]
    pub min: Option<f64>,
    #[serde(default)]
    pub max: Option<f64>,
    /// product_code: product id → the number the machine knows it by.
    #[serde(default)]
    pub map: BTreeMap<String, i64>,
}

/// The registers through which orders reach a machine. Nothing else is ever written.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OrderRegistersConfig {
    pub order_number: OrderRegister,
    pub product_code: OrderRegister,
    pub quantity: OrderRegister,
    pub start: OrderRegister,
    /// Largest quantity an order may ask for.
    pub max_quantity: u32,
    /// Order parameters (`params` in an order) the machine accepts, each to its own register.
    #[serde(default)]
    pub params: BTreeMap<String, OrderRegister>,
}

/// How time is cut into periods.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AccountingConfig {
    /// Length of the fixed reporting interval, aligned to the wall clock (1..=1440).
    #[serde(default = "default_period_minutes")]
    pub period_minutes: u32,
    /// A `down` spell shorter than this is a micro-stop.
    #[serde(default = "default_micro_stop_s")]
    pub micro_stop_s: u64,
}

impl Default for AccountingConfig {
    fn default() -> Self {
        Self {
            period_minutes: default_period_minutes(),
            micro_stop_s: default_micro_stop_s(),
        }
    }
}

fn default_period_minutes() -> u32 {
    15
}
fn default_micro_stop_s() -> u64 {
    120
}

/// When order forecasts and machine capacity are computed and published.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ForecastConfig {
    /// How often each machine's forecasts are computed again, ms.
    #[serde(default = "default_forecast_every_ms")]
    pub every_ms: u64,
    /// A forecast that moved by more than this is published again, seconds.
    #[serde(default = "default_forecast_move_s")]
    pub move_s: f64,
    /// ... or by more than this share of the time still to go, percent (0: off).
    #[serde(default = "default_forecast_move_pct")]
    pub move_pct: f64,
    /// Least time between two forecasts of one order (and two capacities of one machine), ms.
    #[serde(default = "default_forecast_min_interval_ms")]
    pub min_interval_ms: u64,
    /// Completed orders younger than this make the measured throughput, hours.
    #[serde(default = "default_forecast_history_h")]
    pub history_h: u64,
    /// How far ahead the capacity message looks, hours.
    #[serde(default = "default_capacity_horizon_h")]
    pub capacity_horizon_h: u64,
    /// A capacity whose free or booked time moved by more than this is published, seconds.
    #[serde(default = "default_capacity_move_s")]
    pub capacity_move_s: f64,
}

impl Default for ForecastConfig {
    fn default() -> Self {
        Self {
            every_ms: default_forecast_every_ms(),
            move_s: default_forecast_move_s(),
            move_pct: default_forecast_move_pct(),
            min_interval_ms: default_forecast_min_interval_ms(),
            history_h: default_forecast_history_h(),
            capacity_horizon_h: default_capacity_horizon_h(),
            capacity_move_s: default_capacity_move_s(),
        }
    }
}

fn default_forecast_every_ms() -> u64 {
    5000
}
fn default_forecast_move_s() -> f64 {
    120.0
}
fn default_forecast_move_pct() -> f64 {
    5.0
}
fn default_forecast_min_interval_ms() -> u64 {
    30_000
}
fn default_forecast_history_h() -> u64 {
    168
}
fn default_capacity_horizon_h() -> u64 {
    24
}
fn default_capacity_move_s() -> f64 {
    300.0
}

/// Shifts and breaks per weekday, and holidays, in the gateway's time zone.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ShiftCalendarConfig {
    #[serde(default)]
    pub shift: Vec<ShiftConfig>,
    /// Whole days without production, `YYYY-MM-DD`.
    #[serde(default)]
    pub holidays: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ShiftConfig {
    pub name: String,
    /// `mon`..`sun`.
    pub days: Vec<String>,
    /// `HH:MM` local time; an end before the start runs past midnight.
    pub start: String,
    pub end: String,
    #[serde(default, rename = "break")]
    pub breaks: Vec<BreakConfig>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BreakConfig {
    pub start: String,
    pub end: String,
}

/// MQTT protocol version spoken to the central broker.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
pub enum MqttVersion {
    #[default]
    #[serde(rename = "3.1.1")]
    V311,
    #[serde(rename = "5")]
    V5,
}

/// The central broker and how to reach it.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UplinkConfig {
    /// `mqtt://host:1883` or `mqtts://host:8883`.
    pub url: String,
    #[serde(default)]
    pub client_id: Option<String>,
    #[serde(default = "default_keepalive_s")]
    pub keepalive_s: u64,
    #[serde(default)]
    pub protocol: MqttVersion,
    #[serde(default)]
    pub username: Option<String>,
    /// Read the password from this file (e.g. a systemd credential).
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// Read the password from this environment variable.
    #[serde(default)]
    pub password_env: Option<String>,
    /// PEM CA bundle for `mqtts://`; default: the system's roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    #[serde(default)]
    pub client_cert_file: Option<PathBuf>,
    #[serde(default)]
    pub client_key_file: Option<PathBuf>,
    /// Topic prefix; default `linegate/v1/{site}/{gateway}`.
    #[serde(default)]
    pub topic_prefix: Option<String>,
    /// Periodic full telemetry, even without changes.
    #[serde(default = "default_heartbeat_s")]
    pub heartbeat_s: u64,
    /// Most historical (stored while offline) messages sent per second.
    #[serde(default = "default_historical_per_s")]
    pub historical_per_s: u32,
    #[serde(default = "default_backoff_min_ms")]
    pub backoff_min_ms: u64,
    #[serde(default = "default_backoff_max_ms")]
    pub backoff_max_ms: u64,
}

fn default_keepalive_s() -> u64 {
    30
}

/// `[sparkplug]`: the gateway as a Sparkplug B 3.0 edge node, its machines
/// as devices (see docs/sparkplug.md and `crate::sparkplug`).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SparkplugConfig {
    /// Sparkplug group id (topic level): `[A-Za-z0-9_.-]{1,64}`.
    pub group_id: String,
    /// Edge node id; default: `gateway.id`.
    #[serde(default)]
    pub edge_node_id: Option<String>,
    /// The primary host application: NBIRTH only once its STATE is online.
    #[serde(default)]
    pub primary_host_id: Option<String>,
    /// Own broker; default: `[uplink]`'s url and credentials.
    #[serde(default)]
    pub url: Option<String>,
    /// Default `linegate-sparkplug-<gateway id>` (never the uplink's).
    #[serde(default)]
    pub client_id: Option<String>,
    #[serde(default = "default_keepalive_s")]
    pub keepalive_s: u64,
    /// Credentials of the own broker (only with `sparkplug.url`).
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    #[serde(default)]
    pub password_env: Option<String>,
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    #[serde(default)]
    pub client_cert_file: Option<PathBuf>,
    #[serde(default)]
    pub client_key_file: Option<PathBuf>,
    /// Most metric values kept in the store while no host takes them.
    #[serde(default = "default_sparkplug_history_max_rows")]
    pub history_max_rows: u64,
    #[serde(default = "default_backoff_min_ms")]
    pub backoff_min_ms: u64,
    #[serde(default = "default_backoff_max_ms")]
    pub backoff_max_ms: u64,
}

fn default_sparkplug_history_max_rows() -> u64 {
    500_000
}
fn default_heartbeat_s() -> u64 {
    60
}
fn default_historical_per_s() -> u32 {
    2000
}

/// Bounds of the local store.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// Outbox size cap; when full the oldest telemetry is dropped first.
    #[serde(default = "default_outbox_max_mb")]
    pub outbox_max_mb: u64,
    /// Closed periods and state changes older than this are deleted.
    #[serde(default = "default_retention_days")]
    pub retention_days: u32,
    /// Disk space held back in `data_dir/reserve.bin`, released when the
    /// disk is full so state changes, periods and order statuses still commit.
    #[serde(default = "default_reserve_mb")]
    pub reserve_mb: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            outbox_max_mb: default_outbox_max_mb(),
            retention_days: default_retention_days(),
            reserve_mb: default_reserve_mb(),
        }
    }
}

fn default_outbox_max_mb() -> u64 {
    256
}
fn default_retention_days() -> u32 {
    90
}
fn default_reserve_mb() -> u64 {
    16
}

/// The local web console (`crate::console`): where it listens and how it
/// proves who may look. Read-only: nothing on it writes to a machine.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ConsoleConfig {
    /// `IP:port` to listen on; `""` turns the console off.
    #[serde(default = "default_console_listen")]
    pub listen: String,
    /// The user name HTTP basic auth asks for (with `password_file`).
    #[serde(default = "default_console_username")]
    pub username: String,
    /// A file holding the password; required when `listen` is not loopback.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// PEM certificate chain for HTTPS (with `tls_key_file`).
    #[serde(default)]
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key for HTTPS (with `tls_cert_file`).
    #[serde(default)]
    pub tls_key_file: Option<PathBuf>,
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        Self {
            listen: default_console_listen(),
            username: default_console_username(),
            password_file: None,
            tls_cert_file: None,
            tls_key_file: None,
        }
    }
}

fn default_console_listen() -> String {
    "127.0.0.1:9780".into()
}
fn default_console_username() -> String {
    "linegate".into()
}

impl Config {
    /// The config file to use: `-c`, else `$LINEGATE_CONFIG`, else the default path.
    pub fn locate(explicit: Option<&Path>) -> PathBuf {
        if let Some(p) = explicit {
            return p.to_path_buf();
        }
        match std::env::var_os("LINEGATE_CONFIG") {
            Some(p) if !p.is_empty() => PathBuf::from(p),
            _ => PathBuf::from(DEFAULT_CONFIG_PATH),
        }
    }

    /// Load a file with environment overrides, and validate it as a whole.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Self::load_with_warnings(path).map(|l| l.config)
    }

    /// [`Config::load`], with the warnings about the settings that work but
    /// look wrong (for `check-config` to print and the agent to log).
    pub fn load_with_warnings(path: &Path) -> Result<Loaded, ConfigError> {
        // Only `LINEGATE_<SECTION>__<KEY>` is an override: every key lives in
        // a section, so a variable without `__` (`LINEGATE_CONFIG`, the file
        // to load) is not a config key and must not be refused as one.
        let overrides: Vec<(String, String)> = std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .filter(|(k, _)| {
                k.strip_prefix(ENV_PREFIX)
                    .and_then(|rest| rest.strip_prefix('_'))
                    .is_some_and(|rest| rest.contains("__"))
            })
            .collect();
        Self::load_with(path, &overrides)
    }

    /// Load a file without environment overrides (tests, `check-config --no-env`).
    pub fn load_file_only(path: &Path) -> Result<Config, ConfigError> {
        Self::load_with(path, &[]).map(|l| l.config)
    }

    fn load_with(path: &Path, env: &[(String, String)]) -> Result<Loaded, ConfigError> {
        let read_error = |reason: String| ConfigError::Read {
            file: path.to_path_buf(),
            reason,
        };
        let bytes = std::fs::read(path).map_err(|e| read_error(e.to_string()))?;
        let text = raw::utf8_text(bytes).map_err(read_error)?;
        Self::from_toml_str(&text, path, env)
    }

    /// Parse TOML text as if it came from `file` (tests and embedded demo config).
    pub fn from_toml(text: &str, file: &Path) -> Result<Config, ConfigError> {
        Self::from_toml_str(text, file, &[]).map(|l| l.config)
    }

    /// [`Config::from_toml`] with these environment overrides (name, value).
    pub fn from_toml_with_env(
        text: &str,
        file: &Path,
        env: &[(String, String)],
    ) -> Result<Loaded, ConfigError> {
        Self::from_toml_str(text, file, env)
    }

    /// Every problem at once: syntax, then numbers, overrides, shape and
    /// cross-checks together, each placed (line and column, or the
    /// environment variable), in file order.
    fn from_toml_str(
        text: &str,
        file: &Path,
        env: &[(String, String)],
    ) -> Result<Loaded, ConfigError> {
        let invalid = |issues: Vec<ConfigIssue>| ConfigError::Invalid {
            file: file.to_path_buf(),
            issues,
            warnings: Vec::new(),
        };
        let raw::Tree {
            mut value,
            places,
            mut issues,
            left_out,
        } = raw::parse(text).map_err(invalid)?;
        let (applied, env_issues) = env::apply(&mut value, env);
        issues.extend(env_issues);
        let shaped = shape::read(value, &places, &applied, left_out);
        issues.extend(shaped.issues);
        let silenced = shaped.silenced;
        let place = |mut list: Vec<ConfigIssue>| -> Vec<ConfigIssue> {
            list.retain(|i| !silenced.iter().any(|s| shape::is_under(&i.key, s)));
            for i in &mut list {
                i.place = shape::place(&places, &applied, &i.key, false);
            }
            list
        };
        let mut warnings = Vec::new();
        if let Some(config) = &shaped.config {
            issues.extend(place(validate(config)));
            warnings = place(address_warnings(config));
        }
        if shaped.config.is_none() && issues.is_empty() {
            // Not expected: every way out of the shape check names a problem.
            issues.push(ConfigIssue {
                key: "(top level)".into(),
                message: "the file cannot be read as a config".into(),
                place: Place::Unknown,
            });
        }
        sort_by_place(&mut issues);
        sort_by_place(&mut warnings);
        match shaped.config {
            Some(config) if issues.is_empty() => Ok(Loaded { config, warnings }),
            _ => Err(ConfigError::Invalid {
                file: file.to_path_buf(),
                issues,
                warnings,
            }),
        }
    }
    pub fn machine(&self, id: &str) -> Option<&MachineConfig> {
        self.machine.iter().find(|m| m.id == id).map(|m| &**m)
    }

    pub fn bus(&self, id: &str) -> Option<&BusConfig> {
        self.bus.iter().find(|b| b.id == id)
    }

    /// `linegate/v1/{site}/{gateway}` unless the uplink overrides it.
    pub fn topic_prefix(&self) -> String {
        self.uplink
            .as_ref()
            .and_then(|u| u.topic_prefix.clone())
            .unwrap_or_else(|| format!("linegate/v1/{}/{}", self.gateway.site, self.gateway.id))
    }
}
