//! Machine state and accounting: turns samples into the truth about each
//! machine. Owns state derivation (rules over signals), part counters, the
//! shift calendar and the attribution of time to states and periods (ISO
//! 22400). The decisions here are pure functions of their inputs; only
//! `engine` is a task, and it only moves data: samples in, [`MachineEvent`]s
//! out. Nothing here reads a device, writes SQLite or talks MQTT.

pub mod accounting;
pub mod counters;
pub mod engine;
pub mod history;
pub mod rules;
pub mod shift;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The six states of the contract, exactly these names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MachineState {
    Running,
    Setup,
    Down,
    Idle,
    PlannedStop,
    Offline,
}

impl MachineState {
    pub const ALL: [MachineState; 6] = [
        MachineState::Running,
        MachineState::Setup,
        MachineState::Down,
        MachineState::Idle,
        MachineState::PlannedStop,
        MachineState::Offline,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            MachineState::Running => "running",
            MachineState::Setup => "setup",
            MachineState::Down => "down",
            MachineState::Idle => "idle",
            MachineState::PlannedStop => "planned_stop",
            MachineState::Offline => "offline",
        }
    }
}

impl std::fmt::Display for MachineState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One state change of a machine (contract: "Machine state").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StateChange {
    pub machine: String,
    pub state: MachineState,
    pub prev: Option<MachineState>,
    /// When the change happened: the time of the read that saw it.
    pub since: DateTime<Utc>,
    pub reason: Option<String>,
}

/// Seconds per state in one period. They add up to the period's length.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct StateSeconds {
    pub running: f64,
    pub setup: f64,
    pub down: f64,
    pub idle: f64,
    pub planned_stop: f64,
    pub offline: f64,
}

/// Part and stop counts of one period.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeriodCounts {
    pub produced: u64,
    pub good: u64,
    pub scrap: u64,
    /// Every `down` spell that started in the period.
    pub stops: u64,
    /// `down` spells shorter than `accounting.micro_stop_s`.
    pub micro_stops: u64,
    /// `down` spells with a fault reason.
    pub failures: u64,
    /// Parts counted in the period that were made while the agent did not
    /// observe the machine (agent not running, machine offline): real, of
    /// unknown date, so not in `produced`, `good`, `scrap` or any KPI.
    #[serde(default)]
    pub produced_unobserved: u64,
}

/// ISO 22400-2 KPIs; `None` (JSON null) when the denominator is zero.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Kpi {
    pub availability: Option<f64>,
    pub utilisation_efficiency: Option<f64>,
    pub allocation_efficiency: Option<f64>,
    pub performance: Option<f64>,
    pub quality: Option<f64>,
    pub oee: Option<f64>,
    pub coverage: Option<f64>,
}

/// What a period is: a fixed wall-clock interval or a shift of the calendar.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PeriodKind {
    Interval,
    Shift { name: String },
}

/// One closed accounting period of one machine (contract: "Utilisation").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClosedPeriod {
    pub machine: String,
    pub kind: PeriodKind,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    pub seconds: StateSeconds,
    pub counts: PeriodCounts,
    pub kpi: Kpi,
    /// The wall clock stepped while this period was open (v1.1): see
    /// [`accounting`]'s clock rule. Absent when it did not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock_step: Option<ClockStep>,
}

/// How far the gateway's wall clock stepped during a period: the sum of the
/// steps seen while it was open, in seconds (negative: backwards).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ClockStep {
    pub by_s: f64,
}

/// Signal values of one machine to report upstream as telemetry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Telemetry {
    pub machine: String,
    pub at: DateTime<Utc>,
    /// Signal name → value. The names are the source's own (shared, not
    /// copied: a copy of every name for every poll was 20 allocations a
    /// sample, most of them dropped unsent by the telemetry filter).
    pub values: std::collections::BTreeMap<std::sync::Arc<str>, crate::source::Value>,
}

/// What the state engine tells the rest of the agent.
#[derive(Debug, Clone, PartialEq)]
pub enum MachineEvent {
    State(StateChange),
    Period(Box<ClosedPeriod>),
    Telemetry(Telemetry),
    /// The open periods of a machine, to save. The engine sends one right
    /// after every state change or period it sends (so the store never holds
    /// a change newer than the snapshot it resumes from) and every few seconds.
    Snapshot(Box<accounting::AccountSnapshot>),
    /// A machine's time is attributed up to `to` (sent about twice a second,
    /// so a crash loses at most about that much observed time to `offline`).
    Observed {
        machine: String,
        to: DateTime<Utc>,
    },
}

/// The live view of one machine that other parts of the agent watch (order
/// interlock, status): published by the engine on a `tokio::sync::watch`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MachineView {
    pub machine: String,
    pub state: MachineState,
    pub since: DateTime<Utc>,
    pub reason: Option<String>,
    /// Parts counted since the agent started tracking this machine, across
    /// counter wraps and resets (never goes backwards). Orders take their
    /// progress as differences of these.
    pub produced_total: u64,
    pub good_total: u64,
    pub scrap_total: u64,
}
