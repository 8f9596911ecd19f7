//! `linegate read --once`: poll every selected machine one time and return
//! the decoded values, the technician's tool for commissioning a register map.
//!
//! Built on the same plan, link and poll as the bus task (one connection per
//! bus, requests one at a time, buses in parallel); it adds no retries and no
//! schedule. It never sends samples and never touches the store.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{json, Map, Value as Json};

use super::bus::BusStats;
use super::link::{poll_machine, Link, PollPlan};
use super::plan::plan_reads;
use crate::config::{Config, MachineConfig, Transport};
use crate::source::{Reading, SignalError};

/// What one machine gave in a single poll.
#[derive(Debug, Clone, PartialEq)]
pub struct MachineReadout {
    /// Set when the machine could not be read at all (then every signal
    /// carries the same reason as a `NoReply` error).
    pub error: Option<String>,
    /// Every Modbus signal by name: its value or why not.
    pub signals: BTreeMap<String, Reading>,
}

impl MachineReadout {
    /// The machine failed, or at least one of its signals did.
    pub fn failed(&self) -> bool {
        self.error.is_some() || self.signals.values().any(Result::is_err)
    }

    /// `{"<signal>": <value> | {"error": "<why>"}}`.
    pub fn to_json(&self) -> Json {
        let map: Map<String, Json> = self
            .signals
            .iter()
            .map(|(name, reading)| {
                let v = match reading {
                    Ok(value) => serde_json::to_value(value).unwrap_or(Json::Null),
                    Err(e) => json!({ "error": e.to_string() }),
                };
                (name.clone(), v)
            })
            .collect();
        Json::Object(map)
    }
}

/// `{"<machine>": {"<signal>": <value> | {"error": "<why>"}}}`.
pub fn readouts_to_json(readouts: &BTreeMap<String, MachineReadout>) -> Json {
    Json::Object(
        readouts
            .iter()
            .map(|(id, r)| (id.clone(), r.to_json()))
            .collect(),
    )
}

/// Why `read --once` could not start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadOnceError {
    #[error("no machine {0:?} in the config")]
    UnknownMachine(String),
    #[error("machine {machine:?} is on mqtt bus {bus:?}; read --once polls Modbus machines only")]
    NotModbus { machine: String, bus: String },
}

/// Poll each selected Modbus machine once (all of them when `machine` is
/// `None`; machines on mqtt buses are then left out), buses in parallel.
pub async fn read_once(
    config: &Config,
    machine: Option<&str>,
) -> Result<BTreeMap<String, MachineReadout>, ReadOnceError> {
    let is_modbus = |m: &MachineConfig| {
        config
            .bus(&m.bus)
            .is_some_and(|b| b.transport != Transport::Mqtt)
    };
    let selected: Vec<&MachineConfig> = match machine {
        Some(id) => {
            let m = config
                .machine(id)
                .ok_or_else(|| ReadOnceError::UnknownMachine(id.to_owned()))?;
            if !is_modbus(m) {
                return Err(ReadOnceError::NotModbus {
                    machine: m.id.clone(),
                    bus: m.bus.clone(),
                });
            }
            vec![m]
        }
        None => config
            .machine
            .iter()
            .filter(|m| is_modbus(m))
            .map(|m| &**m)
            .collect(),
    };

    let per_bus = config.bus.iter().filter_map(|bus| {
        let machines: Vec<&MachineConfig> = selected
            .iter()
            .copied()
            .filter(|m| m.bus == bus.id)
            .collect();
        if machines.is_empty() {
            return None;
        }
        Some(async move {
            let mut link = Link::new(bus.clone(), Arc::new(BusStats::new(&bus.id)));
            let mut out = Vec::new();
            for m in machines {
                let plan = PollPlan::new(m, plan_reads(m, bus));
                let readout = match poll_machine(&mut link, &plan, None).await {
                    Ok(poll) => MachineReadout {
                        error: None,
                        signals: poll
                            .readings
                            .iter()
                            .map(|(name, r)| (name.to_string(), r.clone()))
                            .collect(),
                    },
                    Err(e) => {
                        let reason = e.to_string();
                        MachineReadout {
                            signals: plan
                                .requests()
                                .iter()
                                .flat_map(|r| r.signals.iter())
                                .filter_map(|&i| m.signal.get(i))
                                .map(|s| {
                                    (s.name.clone(), Err(SignalError::NoReply(reason.clone())))
                                })
                                .collect(),
                            error: Some(reason),
                        }
                    }
                };
                out.push((m.id.clone(), readout));
            }
            out
        })
    });
    let results = futures::future::join_all(per_bus).await;
    Ok(results.into_iter().flatten().collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::Value;

    #[test]
    fn readouts_become_the_documented_json_shape() {
        let mut ok = BTreeMap::new();
        ok.insert("count".to_string(), Ok(Value::Int(42)));
        ok.insert(
            "temp".to_string(),
            Err(SignalError::BadValue("f32 NaN".into())),
        );
        let mut all = BTreeMap::new();
        all.insert(
            "press07".to_string(),
            MachineReadout {
                error: None,
                signals: ok,
            },
        );
        assert_eq!(
            readouts_to_json(&all),
            json!({"press07": {"count": 42, "temp": {"error": "bad value: f32 NaN"}}})
        );
        assert!(all["press07"].failed());
    }
}
