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
    /// Signal name → value, by position in the source's names table.
    pub values: TelemetryValues,
}

/// Signal values, each a name and a value, a name at most once, in no
/// particular order (the message sorts them). Names are positions in the
/// names table of the sample they came from ([`crate::source::SignalNames`],
/// shared): the engine copies a poll's good values without touching a
/// name, and the telemetry filter finds each signal's last value by
/// position. (A map sorted by name, built for every poll, cost a sort of
/// 20 names and 20 tree nodes a poll, and the filter then searched it name
/// by name again.)
#[derive(Clone, Default)]
pub struct TelemetryValues {
    names: crate::source::SignalNames,
    /// (position in `names`, value).
    values: Vec<(u32, crate::source::Value)>,
}

impl TelemetryValues {
    /// Values of signals named in `names`, added with [`Self::push_at`].
    pub fn of(names: crate::source::SignalNames, capacity: usize) -> Self {
        TelemetryValues {
            names,
            values: Vec::with_capacity(capacity),
        }
    }

    /// Add the value of the signal at `position` in the names table; a
    /// position outside it is ignored.
    pub fn push_at(&mut self, position: usize, value: crate::source::Value) {
        if let (true, Ok(p)) = (position < self.names.len(), u32::try_from(position)) {
            self.values.push((p, value));
        }
    }

    /// Name and value of each signal.
    pub fn iter(&self) -> impl Iterator<Item = (&std::sync::Arc<str>, &crate::source::Value)> {
        self.values
            .iter()
            .filter_map(|(p, v)| self.names.get(*p as usize).map(|n| (n, v)))
    }

    /// Position in [`Self::names`] and value of each signal.
    pub fn positions(&self) -> impl Iterator<Item = (usize, &crate::source::Value)> {
        self.values.iter().map(|(p, v)| (*p as usize, v))
    }

    /// The names table the positions refer to.
    pub fn names(&self) -> &crate::source::SignalNames {
        &self.names
    }

    pub fn get(&self, name: &str) -> Option<&crate::source::Value> {
        self.iter().find(|(n, _)| &***n == name).map(|(_, v)| v)
    }

    pub fn len(&self) -> usize {
        self.values.len()
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// Sorted by name: for equality, debugging and serialisation.
    fn sorted(&self) -> std::collections::BTreeMap<&str, &crate::source::Value> {
        self.iter().map(|(n, v)| (&**n, v)).collect()
    }
}

/// A table of their own; a name given twice keeps its last value.
impl<N: Into<std::sync::Arc<str>>> FromIterator<(N, crate::source::Value)> for TelemetryValues {
    fn from_iter<I: IntoIterator<Item = (N, crate::source::Value)>>(iter: I) -> Self {
        let mut names: Vec<std::sync::Arc<str>> = Vec::new();
        let mut values: Vec<(u32, crate::source::Value)> = Vec::new();
        for (name, value) in iter {
            let name = name.into();
            match names.iter().position(|n| *n == name) {
                Some(at) => {
                    if let Some(slot) = values.iter_mut().find(|(p, _)| *p as usize == at) {
                        slot.1 = value;
                    }
                }
                None => {
                    names.push(name);
                    values.push((u32::try_from(names.len() - 1).unwrap_or(u32::MAX), value));
                }
            }
        }
        TelemetryValues {
            names: std::sync::Arc::new(names),
            values,
        }
    }
}

/// The same names with the same values, whatever the order and tables.
impl PartialEq for TelemetryValues {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.sorted() == other.sorted()
    }
}

impl std::fmt::Debug for TelemetryValues {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.sorted()).finish()
    }
}

/// A map of name → value, sorted by name.
impl Serialize for TelemetryValues {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.sorted().serialize(s)
    }
}

impl<'de> Deserialize<'de> for TelemetryValues {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let map = std::collections::BTreeMap::<String, crate::source::Value>::deserialize(d)?;
        Ok(map.into_iter().collect())
    }
}

/// What the state engine tells the rest of the agent.
#[derive(Debug, Clone, PartialEq)]
pub enum MachineEvent {
    State(StateChange),
    Period(Box<ClosedPeriod>),
    Telemetry(Telemetry),
    /// The open periods of a machine, to save. The engine sends one right
    /// after every state change or period it sends (so the store never holds
    /// a change newer than the snapshot it resumes from) and every few seconds
    /// when more than time passed (at least once a minute).
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::Value;

    #[test]
    fn telemetry_values_are_a_map_by_name_whatever_their_table_and_order() {
        let table: crate::source::SignalNames = std::sync::Arc::new(vec!["b".into(), "a".into()]);
        let mut by_position = TelemetryValues::of(table, 2);
        by_position.push_at(0, Value::Int(2));
        by_position.push_at(1, Value::Int(1));
        // Outside the table: ignored, not a panic.
        by_position.push_at(7, Value::Int(9));
        assert_eq!(by_position.len(), 2);
        let by_name: TelemetryValues = [
            ("a", Value::Int(1)),
            ("b", Value::Int(0)),
            ("b", Value::Int(2)),
        ]
        .into_iter()
        .collect();
        assert_eq!(by_name.len(), 2, "a name given twice keeps its last value");
        assert_eq!(by_position, by_name);
        assert_eq!(by_name.get("b"), Some(&Value::Int(2)));
        assert_eq!(by_name.get("c"), None);
        let json = serde_json::to_string(&by_position).unwrap();
        assert_eq!(json, r#"{"a":1,"b":2}"#);
        let back: TelemetryValues = serde_json::from_str(&json).unwrap();
        assert_eq!(back, by_position);
    }
}
