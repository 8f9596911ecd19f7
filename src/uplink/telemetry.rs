//! Telemetry by exception: decides which signal values are worth sending.
//! A value is sent when it moved more than its signal's `deadband` since the
//! value last sent (text and bool: any change; the first value always), and
//! every `heartbeat_s` a machine's next telemetry carries all its latest
//! values, changed or not. Pure: the caller passes the time in; nothing here
//! reads a clock, touches SQLite or talks MQTT.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use tokio::time::Instant;

use crate::config::MachineConfig;
use crate::machine::Telemetry;
use crate::source::Value;

/// Per machine and signal: what was last sent, and when the last heartbeat went.
///
/// Called for every poll of every machine: a poll whose values are already
/// known allocates nothing here (names are looked up, not cloned; a value is
/// copied only when it changed).
#[derive(Debug)]
pub struct TelemetryFilter {
    /// Machine → signal → deadband, for the signals not seen yet whose
    /// deadband is not 0 (missing means 0: any change). Each is moved into
    /// the signal's [`SignalLast`] when its first value comes.
    deadbands: HashMap<String, HashMap<String, f64>>,
    heartbeat: Duration,
    machines: HashMap<String, MachineLast>,
}

#[derive(Debug)]
struct MachineLast {
    /// Per signal, the value last sent and the latest seen, sorted by
    /// name (a vector sized to the machine's signals: kept per machine, a
    /// map's nodes took twice the room).
    signals: Vec<(std::sync::Arc<str>, SignalLast)>,
    /// When the last full report went out.
    heartbeat_at: Instant,
}

#[derive(Debug)]
struct SignalLast {
    /// The value last sent; `None` until the first one goes.
    sent: Option<Value>,
    /// The latest value seen, sent or not (what a heartbeat sends).
    latest: Value,
    /// The signal's deadband, looked up once.
    deadband: f64,
}

impl TelemetryFilter {
    /// A filter with each signal's `deadband` from the config.
    pub fn new<'a>(
        machines: impl IntoIterator<Item = &'a MachineConfig>,
        heartbeat_s: u64,
    ) -> TelemetryFilter {
        let mut deadbands: HashMap<String, HashMap<String, f64>> = HashMap::new();
        for m in machines {
            let signals: HashMap<String, f64> = m
                .signal
                .iter()
                .filter(|s| s.deadband != 0.0)
                .map(|s| (s.name.clone(), s.deadband.abs()))
                .collect();
            if !signals.is_empty() {
                deadbands.insert(m.id.clone(), signals);
            }
        }
        TelemetryFilter {
            deadbands,
            heartbeat: Duration::from_secs(heartbeat_s),
            machines: HashMap::new(),
        }
    }

    /// The part of `t` to send now, or `None` when nothing changed enough
    /// and no heartbeat is due.
    pub fn offer(&mut self, t: &Telemetry, now: Instant) -> Option<Telemetry> {
        if !self.machines.contains_key(&t.machine) {
            self.machines.insert(
                t.machine.clone(),
                MachineLast {
                    signals: Vec::with_capacity(t.values.len()),
                    // A new machine's first report is a full one.
                    heartbeat_at: now,
                },
            );
        }
        let last = self.machines.get_mut(&t.machine)?;
        let heartbeat_due = now.saturating_duration_since(last.heartbeat_at) >= self.heartbeat;
        let mut values = BTreeMap::new();
        for (name, v) in &t.values {
            match last.signals.binary_search_by(|(k, _)| (**k).cmp(&**name)) {
                Ok(at) => {
                    let s = &mut last.signals[at].1;
                    if s.latest != *v {
                        s.latest = v.clone();
                    }
                    let send = !heartbeat_due
                        && s.sent
                            .as_ref()
                            .is_none_or(|prev| changed(prev, v, s.deadband));
                    if send {
                        s.sent = Some(v.clone());
                        values.insert(name.clone(), v.clone());
                    }
                }
                Err(at) => {
                    // The first value of a signal always goes.
                    let deadband = take_deadband(&mut self.deadbands, &t.machine, name);
                    let sent = (!heartbeat_due).then(|| {
                        values.insert(name.clone(), v.clone());
                        v.clone()
                    });
                    last.signals.insert(
                        at,
                        (
                            name.clone(),
                            SignalLast {
                                sent,
                                latest: v.clone(),
                                deadband,
                            },
                        ),
                    );
                }
            }
        }
        if heartbeat_due {
            last.heartbeat_at = now;
            for (name, s) in last.signals.iter_mut() {
                s.sent = Some(s.latest.clone());
                values.insert(name.clone(), s.latest.clone());
            }
        }
        if values.is_empty() {
            return None;
        }
        Some(Telemetry {
            machine: t.machine.clone(),
            at: t.at,
            values,
        })
    }
}

/// The deadband of a signal seen for the first time (0 when it has none),
/// taken out of `deadbands`: a machine's entry goes once all are taken.
fn take_deadband(
    deadbands: &mut HashMap<String, HashMap<String, f64>>,
    machine: &str,
    signal: &str,
) -> f64 {
    let Some(signals) = deadbands.get_mut(machine) else {
        return 0.0;
    };
    let deadband = signals.remove(signal).unwrap_or(0.0);
    if signals.is_empty() {
        deadbands.remove(machine);
        // Given back as machines are first seen, not rebuilt on each one.
        if deadbands.len() < deadbands.capacity() / 4 {
            deadbands.shrink_to_fit();
        }
    }
    deadband
}

/// Whether `new` differs from `prev` by more than `deadband`.
pub fn changed(prev: &Value, new: &Value, deadband: f64) -> bool {
    match (prev, new) {
        (Value::Bool(_), _) | (_, Value::Bool(_)) | (Value::Text(_), _) | (_, Value::Text(_)) => {
            prev != new
        }
        _ => match (prev.as_f64(), new.as_f64()) {
            (Some(a), Some(b)) if a.is_finite() && b.is_finite() => {
                if deadband > 0.0 {
                    (b - a).abs() > deadband
                } else {
                    a != b
                }
            }
            _ => prev != new,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;

    fn machines() -> Vec<MachineConfig> {
        let cfg = crate::config::Config::from_toml(
            r#"
[gateway]
id = "gw1"
site = "s"
[[bus]]
id = "b1"
transport = "tcp"
address = "127.0.0.1:502"
[[machine]]
id = "press07"
bus = "b1"
[[machine.signal]]
name = "temp"
area = "holding"
address = 0
deadband = 0.5
[[machine.signal]]
name = "count"
area = "holding"
address = 1
"#,
            std::path::Path::new("t.toml"),
        )
        .unwrap();
        cfg.machine.into_iter().map(|m| (*m).clone()).collect()
    }

    fn tel(values: &[(&str, Value)]) -> Telemetry {
        Telemetry {
            machine: "press07".into(),
            at: Utc::now(),
            values: values
                .iter()
                .map(|(k, v)| (std::sync::Arc::from(*k), v.clone()))
                .collect(),
        }
    }

    fn names(t: &Option<Telemetry>) -> Vec<String> {
        t.as_ref()
            .map(|t| t.values.keys().map(|k| k.to_string()).collect())
            .unwrap_or_default()
    }

    #[test]
    fn changes_within_the_deadband_wait_for_the_heartbeat() {
        let mut f = TelemetryFilter::new(&machines(), 60);
        let t0 = Instant::now();
        let first = f.offer(&tel(&[("temp", Value::Float(70.0))]), t0);
        assert_eq!(names(&first), ["temp"]);
        let small = f.offer(
            &tel(&[("temp", Value::Float(70.4))]),
            t0 + Duration::from_secs(1),
        );
        assert!(small.is_none());
        let big = f.offer(
            &tel(&[("temp", Value::Float(70.6))]),
            t0 + Duration::from_secs(2),
        );
        assert_eq!(big.unwrap().values["temp"], Value::Float(70.6));
    }

    #[test]
    fn a_deadband_is_kept_once_moved_to_its_signal_and_signals_stay_sorted() {
        let mut f = TelemetryFilter::new(&machines(), 60);
        assert_eq!(f.deadbands.len(), 1, "only the machine with a deadband");
        let t0 = Instant::now();
        let first = f.offer(
            &tel(&[("temp", Value::Float(70.0)), ("count", Value::Int(3))]),
            t0,
        );
        assert_eq!(names(&first), ["count", "temp"]);
        assert!(f.deadbands.is_empty(), "taken into the signals");
        let small = f.offer(
            &tel(&[("temp", Value::Float(70.4))]),
            t0 + Duration::from_secs(1),
        );
        assert!(small.is_none(), "the deadband still holds");
        let last = &f.machines["press07"].signals;
        let order: Vec<&str> = last.iter().map(|(n, _)| &**n).collect();
        assert_eq!(order, ["count", "temp"]);
        let beat = f.offer(
            &tel(&[("temp", Value::Float(70.4))]),
            t0 + Duration::from_secs(61),
        );
        assert_eq!(names(&beat), ["count", "temp"]);
    }

    #[test]
    fn deadband_is_measured_from_the_value_last_sent_not_the_last_seen() {
        let mut f = TelemetryFilter::new(&machines(), 60);
        let t0 = Instant::now();
        f.offer(&tel(&[("temp", Value::Float(70.0))]), t0);
        for (i, v) in [70.2, 70.4].iter().enumerate() {
            let r = f.offer(
                &tel(&[("temp", Value::Float(*v))]),
                t0 + Duration::from_secs(i as u64 + 1),
            );
            assert!(r.is_none());
        }
        let drift = f.offer(
            &tel(&[("temp", Value::Float(70.55))]),
            t0 + Duration::from_secs(5),
        );
        assert!(drift.is_some(), "creeping drift past the deadband is sent");
    }

    #[test]
    fn signals_without_deadband_send_every_change_and_only_changes() {
        let mut f = TelemetryFilter::new(&machines(), 60);
        let t0 = Instant::now();
        f.offer(
            &tel(&[("count", Value::Int(1)), ("temp", Value::Float(70.0))]),
            t0,
        );
        let r = f.offer(
            &tel(&[("count", Value::Int(2)), ("temp", Value::Float(70.0))]),
            t0 + Duration::from_secs(1),
        );
        assert_eq!(names(&r), ["count"]);
        let same = f.offer(
            &tel(&[("count", Value::Int(2))]),
            t0 + Duration::from_secs(2),
        );
        assert!(same.is_none());
    }

    #[test]
    fn heartbeat_sends_all_latest_values_even_unchanged_ones() {
        let mut f = TelemetryFilter::new(&machines(), 60);
        let t0 = Instant::now();
        f.offer(
            &tel(&[("count", Value::Int(1)), ("temp", Value::Float(70.0))]),
            t0,
        );
        f.offer(
            &tel(&[("temp", Value::Float(70.1))]),
            t0 + Duration::from_secs(30),
        );
        let hb = f
            .offer(
                &tel(&[("count", Value::Int(1))]),
                t0 + Duration::from_secs(60),
            )
            .unwrap();
        assert_eq!(hb.values["temp"], Value::Float(70.1));
        assert_eq!(hb.values["count"], Value::Int(1));
        let after = f.offer(
            &tel(&[("count", Value::Int(1))]),
            t0 + Duration::from_secs(61),
        );
        assert!(after.is_none(), "the heartbeat restarts its period");
    }

    #[test]
    fn text_and_bool_values_are_sent_on_any_change() {
        assert!(changed(
            &Value::Text("a".into()),
            &Value::Text("b".into()),
            100.0
        ));
        assert!(!changed(
            &Value::Text("a".into()),
            &Value::Text("a".into()),
            0.0
        ));
        assert!(changed(&Value::Bool(false), &Value::Bool(true), 5.0));
        assert!(changed(&Value::Int(1), &Value::Text("1".into()), 5.0));
        assert!(!changed(&Value::Int(3), &Value::Float(3.0), 0.0));
    }

    #[test]
    fn unknown_signals_and_machines_count_every_change() {
        let mut f = TelemetryFilter::new(&machines(), 60);
        let t0 = Instant::now();
        let mut t = tel(&[("x", Value::Float(1.0))]);
        t.machine = "other".into();
        assert!(f.offer(&t, t0).is_some());
        t.values.insert("x".into(), Value::Float(1.001));
        assert!(f.offer(&t, t0 + Duration::from_secs(1)).is_some());
    }
}
