//! The metrics of one machine as a Sparkplug device: their names (a stable,
//! documented hierarchy, docs/sparkplug.md), their Sparkplug data types, and
//! how linegate's values become Sparkplug values. Pure: no I/O, no protocol
//! state (that is `node`).

use std::collections::HashMap;

use super::proto::{DataType, MetricValue};
use crate::config::{Area, DataType as SignalType, MachineConfig, SignalConfig};
use crate::machine::{ClosedPeriod, MachineView};
use crate::source::Value;

pub const STATE: &str = "State/State";
pub const STATE_REASON: &str = "State/Reason";
pub const STATE_SINCE: &str = "State/Since";
pub const PARTS_PRODUCED: &str = "Parts/Produced";
pub const PARTS_GOOD: &str = "Parts/Good";
pub const PARTS_SCRAP: &str = "Parts/Scrap";
pub const ORDER_ID: &str = "Order/Id";
pub const ORDER_PRODUCED: &str = "Order/Produced";
pub const ORDER_QUANTITY: &str = "Order/Quantity";
/// The metric name of a signal.
pub fn signal_metric(signal: &str) -> String {
    format!("Signals/{signal}")
}

/// The metrics of the last closed period, in birth order, with their types.
const PERIOD_METRICS: [(&str, DataType); 21] = [
    ("Utilisation/Start", DataType::DateTime),
    ("Utilisation/End", DataType::DateTime),
    ("Utilisation/Availability", DataType::Double),
    ("Utilisation/UtilisationEfficiency", DataType::Double),
    ("Utilisation/AllocationEfficiency", DataType::Double),
    ("Utilisation/Performance", DataType::Double),
    ("Utilisation/Quality", DataType::Double),
    ("Utilisation/OEE", DataType::Double),
    ("Utilisation/Coverage", DataType::Double),
    ("Utilisation/Seconds/Running", DataType::Double),
    ("Utilisation/Seconds/Setup", DataType::Double),
    ("Utilisation/Seconds/Down", DataType::Double),
    ("Utilisation/Seconds/Idle", DataType::Double),
    ("Utilisation/Seconds/PlannedStop", DataType::Double),
    ("Utilisation/Seconds/Offline", DataType::Double),
    ("Utilisation/Produced", DataType::UInt64),
    ("Utilisation/Good", DataType::UInt64),
    ("Utilisation/Scrap", DataType::UInt64),
    ("Utilisation/Stops", DataType::UInt64),
    ("Utilisation/MicroStops", DataType::UInt64),
    ("Utilisation/Failures", DataType::UInt64),
];

/// One metric of a device as its birth declares it.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricDef {
    pub name: String,
    pub datatype: DataType,
    /// A signal value (dropped first when the history store is full); the
    /// state, counters, utilisation and order metrics are not.
    pub telemetry: bool,
}

/// The metrics of one machine, in birth order, and their positions by name.
#[derive(Debug, Clone)]
pub struct Catalogue {
    pub metrics: Vec<MetricDef>,
    by_name: HashMap<String, usize>,
}

impl Catalogue {
    pub fn of_machine(machine: &MachineConfig) -> Catalogue {
        let mut metrics: Vec<MetricDef> = machine
            .signal
            .iter()
            .map(|s| MetricDef {
                name: signal_metric(&s.name),
                datatype: signal_datatype(s),
                telemetry: true,
            })
            .collect();
        let fixed = [
            (STATE, DataType::String),
            (STATE_REASON, DataType::String),
            (STATE_SINCE, DataType::DateTime),
            (PARTS_PRODUCED, DataType::UInt64),
            (PARTS_GOOD, DataType::UInt64),
            (PARTS_SCRAP, DataType::UInt64),
        ];
        let order = [
            (ORDER_ID, DataType::String),
            (ORDER_PRODUCED, DataType::UInt64),
            (ORDER_QUANTITY, DataType::UInt64),
        ];
        for (name, datatype) in fixed.into_iter().chain(PERIOD_METRICS).chain(order) {
            metrics.push(MetricDef {
                name: name.to_string(),
                datatype,
                telemetry: false,
            });
        }
        let by_name = metrics
            .iter()
            .enumerate()
            .map(|(i, m)| (m.name.clone(), i))
            .collect();
        Catalogue { metrics, by_name }
    }

    pub fn index(&self, name: &str) -> Option<usize> {
        self.by_name.get(name).copied()
    }
}

/// The Sparkplug type of a signal: its declared type, or `Double` once a
/// scale or offset makes a decoded integer a fraction.
pub fn signal_datatype(s: &SignalConfig) -> DataType {
    if s.bit.is_some() || matches!(s.area, Some(Area::Coil | Area::Discrete)) {
        return DataType::Boolean;
    }
    let scaled = s.scale != 1.0 || s.offset != 0.0;
    match s.data_type {
        SignalType::Bool => DataType::Boolean,
        SignalType::String => DataType::String,
        SignalType::F32 if !scaled => DataType::Float,
        SignalType::F32 | SignalType::F64 => DataType::Double,
        _ if scaled => DataType::Double,
        SignalType::U16 => DataType::UInt16,
        SignalType::I16 => DataType::Int16,
        SignalType::U32 => DataType::UInt32,
        SignalType::I32 => DataType::Int32,
        SignalType::U64 => DataType::UInt64,
        SignalType::I64 => DataType::Int64,
    }
}

/// A decoded value as a Sparkplug value of `datatype`; `None` when it does
/// not fit (a text on a number metric, a number out of range).
pub fn to_metric_value(datatype: DataType, value: &Value) -> Option<MetricValue> {
    let int = match value {
        Value::Int(i) => Some(i128::from(*i)),
        Value::UInt(u) => Some(i128::from(*u)),
        Value::Bool(b) => Some(i128::from(*b)),
        Value::Float(f) if f.fract() == 0.0 && f.is_finite() => Some(*f as i128),
        _ => None,
    };
    let in_range = |lo: i128, hi: i128| int.filter(|i| (lo..=hi).contains(i));
    Some(match datatype {
        DataType::Boolean => match value {
            Value::Bool(b) => MetricValue::BooleanValue(*b),
            _ => MetricValue::BooleanValue(value.as_f64()? != 0.0),
        },
        DataType::Int8 => MetricValue::IntValue(in_range(-128, 127)? as i32 as u32),
        DataType::Int16 => MetricValue::IntValue(in_range(-32768, 32767)? as i32 as u32),
        DataType::Int32 => {
            MetricValue::IntValue(in_range(i32::MIN.into(), i32::MAX.into())? as i32 as u32)
        }
        DataType::UInt8 => MetricValue::IntValue(in_range(0, 255)? as u32),
        DataType::UInt16 => MetricValue::IntValue(in_range(0, 65535)? as u32),
        DataType::UInt32 => MetricValue::IntValue(in_range(0, u32::MAX.into())? as u32),
        DataType::Int64 => {
            MetricValue::LongValue(in_range(i64::MIN.into(), i64::MAX.into())? as i64 as u64)
        }
        DataType::UInt64 => MetricValue::LongValue(in_range(0, u64::MAX.into())? as u64),
        DataType::Float => MetricValue::FloatValue(value.as_f64()? as f32),
        DataType::Double => MetricValue::DoubleValue(value.as_f64()?),
        DataType::String | DataType::Text => MetricValue::StringValue(match value {
            Value::Text(t) => t.clone(),
            other => other.to_string(),
        }),
        _ => return None,
    })
}

/// Metric name → value (`None`: null) of a machine's live view.
pub fn view_values(view: &MachineView) -> Vec<(&'static str, Option<MetricValue>)> {
    vec![
        (
            STATE,
            Some(MetricValue::StringValue(view.state.as_str().into())),
        ),
        (
            STATE_REASON,
            view.reason.clone().map(MetricValue::StringValue),
        ),
        (STATE_SINCE, Some(datetime(view.since))),
        (
            PARTS_PRODUCED,
            Some(MetricValue::LongValue(view.produced_total)),
        ),
        (PARTS_GOOD, Some(MetricValue::LongValue(view.good_total))),
        (PARTS_SCRAP, Some(MetricValue::LongValue(view.scrap_total))),
    ]
}

/// Metric name → value of a closed period.
pub fn period_values(p: &ClosedPeriod) -> Vec<(&'static str, Option<MetricValue>)> {
    let d = |x: Option<f64>| x.map(MetricValue::DoubleValue);
    let s = |x: f64| Some(MetricValue::DoubleValue(x));
    let n = |x: u64| Some(MetricValue::LongValue(x));
    let values = [
        Some(datetime(p.start)),
        Some(datetime(p.end)),
        d(p.kpi.availability),
        d(p.kpi.utilisation_efficiency),
        d(p.kpi.allocation_efficiency),
        d(p.kpi.performance),
        d(p.kpi.quality),
        d(p.kpi.oee),
        d(p.kpi.coverage),
        s(p.seconds.running),
        s(p.seconds.setup),
        s(p.seconds.down),
        s(p.seconds.idle),
        s(p.seconds.planned_stop),
        s(p.seconds.offline),
        n(p.counts.produced),
        n(p.counts.good),
        n(p.counts.scrap),
        n(p.counts.stops),
        n(p.counts.micro_stops),
        n(p.counts.failures),
    ];
    PERIOD_METRICS
        .iter()
        .map(|(name, _)| *name)
        .zip(values)
        .collect()
}

/// The order on a machine: id, parts produced for it, quantity.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct OrderInProgress {
    pub order_id: Option<String>,
    pub produced: u64,
    pub quantity: u64,
}

pub fn order_values(o: &OrderInProgress) -> Vec<(&'static str, Option<MetricValue>)> {
    vec![
        (ORDER_ID, o.order_id.clone().map(MetricValue::StringValue)),
        (ORDER_PRODUCED, Some(MetricValue::LongValue(o.produced))),
        (ORDER_QUANTITY, Some(MetricValue::LongValue(o.quantity))),
    ]
}

/// A DateTime metric: milliseconds since the epoch.
pub fn datetime(t: chrono::DateTime<chrono::Utc>) -> MetricValue {
    MetricValue::LongValue(u64::try_from(t.timestamp_millis()).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signal(json: serde_json::Value) -> SignalConfig {
        serde_json::from_value(json).expect("signal")
    }

    #[test]
    fn a_scaled_integer_signal_is_a_double_and_an_unscaled_one_keeps_its_type() {
        let plain = signal(
            serde_json::json!({"name": "count", "type": "u32", "area": "holding", "address": 0}),
        );
        assert_eq!(signal_datatype(&plain), DataType::UInt32);
        let scaled = signal(
            serde_json::json!({"name": "temp", "type": "i16", "area": "holding", "address": 0, "scale": 0.1}),
        );
        assert_eq!(signal_datatype(&scaled), DataType::Double);
        let coil =
            signal(serde_json::json!({"name": "run", "type": "u16", "area": "coil", "address": 0}));
        assert_eq!(signal_datatype(&coil), DataType::Boolean);
    }

    #[test]
    fn negative_small_integers_are_twos_complement_in_32_bits() {
        assert_eq!(
            to_metric_value(DataType::Int16, &Value::Int(-2)),
            Some(MetricValue::IntValue(0xFFFF_FFFE))
        );
        assert_eq!(
            to_metric_value(DataType::Int64, &Value::Int(-1)),
            Some(MetricValue::LongValue(u64::MAX))
        );
    }

    #[test]
    fn a_value_that_does_not_fit_its_metric_is_refused() {
        assert_eq!(to_metric_value(DataType::UInt16, &Value::Int(70_000)), None);
        assert_eq!(to_metric_value(DataType::UInt32, &Value::Int(-1)), None);
        assert_eq!(
            to_metric_value(DataType::Double, &Value::Text("x".into())),
            None
        );
    }

    #[test]
    fn every_metric_of_a_machine_has_one_position_and_the_names_are_unique() {
        let m: MachineConfig = serde_json::from_value(serde_json::json!({
            "id": "m1", "bus": "b",
            "signal": [{"name": "a", "type": "u16", "area": "holding", "address": 0}]
        }))
        .expect("machine");
        let c = Catalogue::of_machine(&m);
        assert_eq!(c.index("Signals/a"), Some(0));
        assert_eq!(c.metrics.len(), 1 + 6 + 21 + 3);
        for (i, def) in c.metrics.iter().enumerate() {
            assert_eq!(c.index(&def.name), Some(i));
        }
    }
}
