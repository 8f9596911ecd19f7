//! Telemetry by exception: decides which signal values are worth sending.
//! A value is sent when it moved more than its signal's `deadband` since the
//! value last sent (text and bool: any change; the first value always), and
//! every `heartbeat_s` a machine's next telemetry carries all its latest
//! values, changed or not. Pure: the caller passes the time in; nothing here
//! reads a clock, touches SQLite or talks MQTT.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::config::MachineConfig;
use crate::machine::{Telemetry, TelemetryValues};
use crate::source::positions::SignalPositions;
use crate::source::Value;

/// Per machine and signal: what was last sent, and when the last heartbeat went.
///
/// Called for every poll of every machine: a poll whose values are already
/// known allocates nothing here and compares no names (a value is found by
/// its position in the poll's names table, the same table every poll of a
/// Modbus machine; a value is copied only when it changed).
#[derive(Debug)]
pub struct TelemetryFilter {
    /// Machine → signal → deadband, for the signals not seen yet whose
    /// deadband is not 0 (missing means 0: any change). Each is moved into
    /// the signal's [`SignalLast`] when its first value comes.
    deadbands: HashMap<String, HashMap<String, f64>>,
    heartbeat: Duration,
    machines: rustc_hash::FxHashMap<String, MachineLast>,
}

#[derive(Debug)]
struct MachineLast {
    /// Per signal, the value last sent and the latest seen, in the order
    /// first seen (a vector sized to the machine's signals: kept per
    /// machine, a map's nodes took twice the room).
    signals: Vec<(Arc<str>, SignalLast)>,
    /// The names table of the last telemetry, and for each of its
    /// positions the signal's index in `signals`.
    positions: SignalPositions,
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
            machines: Default::default(),
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
                    positions: SignalPositions::default(),
                    // A new machine's first report is a full one.
                    heartbeat_at: now,
                },
            );
        }
        let last = self.machines.get_mut(&t.machine)?;
        let table = t.values.names();
        // Another table (an MQTT message, or the first poll) is learnt
        // signal by signal.
        last.positions.follow(table);
        let heartbeat_due = now.saturating_duration_since(last.heartbeat_at) >= self.heartbeat;
        let mut values = TelemetryValues::of(table.clone(), 0);
        for (position, v) in t.values.positions() {
            let signals = &last.signals;
            let known = last
                .positions
                .get_or_find(position, |name| signals.iter().position(|(n, _)| n == name));
            match known {
                Some(i) => {
                    let Some((_, s)) = last.signals.get_mut(i) else {
                        continue;
                    };
                    if s.latest != *v {
                        s.latest = v.clone();
                    }
                    let send = !heartbeat_due
                        && s.sent
                            .as_ref()
                            .is_none_or(|prev| changed(prev, v, s.deadband));
                    if send {
                        s.sent = Some(v.clone());
                        values.push_at(position, v.clone());
                    }
                }
                None => {
                    let Some(name) = table.get(position) else {
                        continue;
                    };
                    // The first value of a signal always goes.
                    let deadband = take_deadband(&mut self.deadbands, &t.machine, name);
                    let sent = (!heartbeat_due).then(|| {
                        values.push_at(position, v.clone());
                        v.clone()
                    });
                    last.signals.push((
                        name.clone(),
                        SignalLast {
                            sent,
                            latest: v.clone(),
                            deadband,
                        },
                    ));
                    last.positions.set(position, last.signals.len() - 1);
                }
            }
        }
        if heartbeat_due {
            // Every signal's latest value, those of other tables too.
            last.heartbeat_at = now;
            values = last
                .signals
                .iter_mut()
                .map(|(name, s)| {
                    s.sent = Some(s.latest.clone());
                    (name.clone(), s.latest.clone())
                })
                .collect();
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
    use crate::source::SignalNames;
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
            .map(|t| {
                let mut names: Vec<String> = t.values.iter().map(|(k, _)| k.to_string()).collect();
                names.sort();
                names
            })
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
        assert_eq!(
            big.unwrap().values.get("temp").cloned().unwrap(),
            Value::Float(70.6)
        );
    }

    #[test]
    fn a_deadband_is_kept_once_moved_to_its_signal_and_signals_keep_their_first_order() {
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
        assert_eq!(order, ["temp", "count"]);
        let beat = f.offer(
            &tel(&[("temp", Value::Float(70.4))]),
            t0 + Duration::from_secs(61),
        );
        assert_eq!(names(&beat), ["count", "temp"]);
    }

    #[test]
    fn signals_are_matched_by_position_in_a_shared_table_and_by_name_in_another() {
        let mut f = TelemetryFilter::new(&machines(), 60);
        let t0 = Instant::now();
        // A bus's table: every poll the same `Arc`, signals by position.
        let table: SignalNames = Arc::new(vec!["count".into(), "temp".into(), "speed".into()]);
        let poll = |count: i64, temp: f64| {
            let mut values = TelemetryValues::of(table.clone(), 2);
            values.push_at(1, Value::Float(temp));
            values.push_at(0, Value::Int(count));
            Telemetry {
                machine: "press07".into(),
                at: Utc::now(),
                values,
            }
        };
        assert_eq!(names(&f.offer(&poll(1, 70.0), t0)), ["count", "temp"]);
        let s = t0 + Duration::from_secs(1);
        // temp within its deadband (0.5), count changed.
        let next = f.offer(&poll(2, 70.3), s).unwrap();
        assert_eq!(next.values.get("count"), Some(&Value::Int(2)));
        assert_eq!(next.values.get("temp"), None);
        assert!(
            Arc::ptr_eq(next.values.names(), &table),
            "the poll's table, not a copy"
        );
        // Another table with the names in another order (an MQTT message):
        // the same signals, found by name; temp's deadband still holds.
        let other = tel(&[("temp", Value::Float(70.4)), ("count", Value::Int(2))]);
        assert!(f.offer(&other, t0 + Duration::from_secs(2)).is_none());
        let moved = tel(&[("temp", Value::Float(70.6))]);
        let sent = f.offer(&moved, t0 + Duration::from_secs(3)).unwrap();
        assert_eq!(sent.values.get("temp"), Some(&Value::Float(70.6)));
        // Back to the bus's table: its positions are learnt again.
        assert!(f
            .offer(&poll(2, 70.7), t0 + Duration::from_secs(4))
            .is_none());
        assert_eq!(f.machines["press07"].signals.len(), 2);
        // The heartbeat carries every signal, whichever table it came in.
        let beat = f
            .offer(&poll(2, 70.7), t0 + Duration::from_secs(61))
            .unwrap();
        assert_eq!(names(&Some(beat.clone())), ["count", "temp"]);
        assert_eq!(beat.values.get("temp"), Some(&Value::Float(70.7)));
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
        assert_eq!(hb.values.get("temp"), Some(&Value::Float(70.1)));
        assert_eq!(hb.values.get("count"), Some(&Value::Int(1)));
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
        t.values = [("x", Value::Float(1.001))].into_iter().collect();
        assert!(f.offer(&t, t0 + Duration::from_secs(1)).is_some());
    }
}
