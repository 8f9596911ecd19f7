//! The edge node's protocol state, pure: the current value of every metric
//! of every device, which devices are born, the message `seq` (0-255,
//! NBIRTH is 0, every later message of the node one more, modulo 256), and
//! the topics and payloads of NBIRTH, NDEATH, DBIRTH, DDATA and DDEATH.
//! It never touches a socket or the store: the task in `edge` sends what
//! this returns and stores what it cannot send.
//!
//! Aliases: device `d` (0-based, config order), metric `m` (catalogue order)
//! has alias `(d + 1) << 16 | m`; node metrics have aliases below 65536.
//! They are unique across the node and stable while the config is.

use std::collections::HashMap;

use prost::Message;

use super::metrics::{Catalogue, MetricDef};
use super::proto::{DataType, Metric, MetricValue, Payload};
use crate::config::MachineConfig;

pub const NAMESPACE: &str = "spBv1.0";
pub const BD_SEQ: &str = "bdSeq";
pub const REBIRTH: &str = "Node Control/Rebirth";
const REBIRTH_ALIAS: u64 = 1;

/// One message to publish.
#[derive(Debug, Clone, PartialEq)]
pub struct Publish {
    pub topic: String,
    pub payload: Vec<u8>,
}

/// A metric value as read (`None`: null), with when it was read.
#[derive(Debug, Clone, PartialEq)]
pub struct Current {
    pub value: Option<MetricValue>,
    pub at_ms: u64,
}

/// One changed metric of one device.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub device: usize,
    pub metric: usize,
    pub current: Current,
}

/// One machine as a Sparkplug device.
#[derive(Debug, Clone)]
pub struct Device {
    pub id: String,
    pub catalogue: Catalogue,
    /// `None` until first known.
    values: Vec<Option<Current>>,
    /// A DBIRTH was sent on this connection and no DDEATH since.
    pub born: bool,
}

/// The whole edge node.
#[derive(Debug, Clone)]
pub struct EdgeNode {
    pub group_id: String,
    pub edge_node_id: String,
    pub devices: Vec<Device>,
    by_id: HashMap<String, usize>,
    /// The seq of the next message.
    seq: u8,
}

pub fn alias(device: usize, metric: usize) -> u64 {
    ((device as u64 + 1) << 16) | metric as u64
}

impl EdgeNode {
    pub fn new<'a>(
        group_id: &str,
        edge_node_id: &str,
        machines: impl IntoIterator<Item = &'a MachineConfig>,
    ) -> EdgeNode {
        let devices: Vec<Device> = machines
            .into_iter()
            .map(|m| {
                let catalogue = Catalogue::of_machine(m);
                Device {
                    id: m.id.clone(),
                    values: vec![None; catalogue.metrics.len()],
                    catalogue,
                    born: false,
                }
            })
            .collect();
        let by_id = devices
            .iter()
            .enumerate()
            .map(|(i, d)| (d.id.clone(), i))
            .collect();
        EdgeNode {
            group_id: group_id.to_string(),
            edge_node_id: edge_node_id.to_string(),
            devices,
            by_id,
            seq: 0,
        }
    }

    pub fn device(&self, id: &str) -> Option<usize> {
        self.by_id.get(id).copied()
    }

    fn topic(&self, kind: &str, device: Option<usize>) -> String {
        match device.and_then(|d| self.devices.get(d)) {
            Some(d) => format!(
                "{NAMESPACE}/{}/{kind}/{}/{}",
                self.group_id, self.edge_node_id, d.id
            ),
            None => format!("{NAMESPACE}/{}/{kind}/{}", self.group_id, self.edge_node_id),
        }
    }

    pub fn ncmd_topic(&self) -> String {
        self.topic("NCMD", None)
    }

    pub fn dcmd_filter(&self) -> String {
        format!("{}/+", self.topic("DCMD", None))
    }

    fn next_seq(&mut self) -> u64 {
        let s = self.seq;
        self.seq = self.seq.wrapping_add(1);
        u64::from(s)
    }

    /// Set a metric's value; the change if it differs from the current one
    /// (report by exception). An unknown device or metric changes nothing.
    pub fn set(
        &mut self,
        device: usize,
        metric: usize,
        value: Option<MetricValue>,
        at_ms: u64,
    ) -> Option<Change> {
        let slot = self.devices.get_mut(device)?.values.get_mut(metric)?;
        if slot.as_ref().is_some_and(|c| c.value == value) {
            return None;
        }
        let current = Current { value, at_ms };
        *slot = Some(current.clone());
        Some(Change {
            device,
            metric,
            current,
        })
    }

    /// Set a metric by name.
    pub fn set_named(
        &mut self,
        device: usize,
        name: &str,
        value: Option<MetricValue>,
        at_ms: u64,
    ) -> Option<Change> {
        let metric = self.devices.get(device)?.catalogue.index(name)?;
        self.set(device, metric, value, at_ms)
    }

    /// NBIRTH: seq starts again at 0; every device is unborn until its DBIRTH.
    pub fn node_birth(&mut self, bd_seq: u64, now_ms: u64) -> Publish {
        self.seq = 0;
        for d in &mut self.devices {
            d.born = false;
        }
        let metrics = vec![
            Metric {
                name: Some(BD_SEQ.into()),
                timestamp: Some(now_ms),
                datatype: Some(DataType::Int64.code()),
                value: Some(MetricValue::LongValue(bd_seq)),
                ..Default::default()
            },
            Metric {
                name: Some(REBIRTH.into()),
                alias: Some(REBIRTH_ALIAS),
                timestamp: Some(now_ms),
                datatype: Some(DataType::Boolean.code()),
                value: Some(MetricValue::BooleanValue(false)),
                ..Default::default()
            },
        ];
        let seq = self.next_seq();
        self.publish("NBIRTH", None, seq, metrics, now_ms)
    }

    /// NDEATH (the will, or sent before a clean disconnect): only `bdSeq`, no seq.
    pub fn node_death(&self, bd_seq: u64, now_ms: u64) -> Publish {
        let payload = Payload {
            timestamp: Some(now_ms),
            metrics: vec![Metric {
                name: Some(BD_SEQ.into()),
                timestamp: Some(now_ms),
                datatype: Some(DataType::Int64.code()),
                value: Some(MetricValue::LongValue(bd_seq)),
                ..Default::default()
            }],
            ..Default::default()
        };
        Publish {
            topic: self.topic("NDEATH", None),
            payload: payload.encode_to_vec(),
        }
    }

    /// DBIRTH: every metric with name, alias, datatype, current value (null
    /// if not known yet) and the time it was read.
    pub fn device_birth(&mut self, device: usize, now_ms: u64) -> Option<Publish> {
        let d = self.devices.get_mut(device)?;
        d.born = true;
        let metrics = d
            .catalogue
            .metrics
            .iter()
            .zip(&d.values)
            .enumerate()
            .map(|(m, (def, current))| {
                let mut metric = metric_of(def, device, m, current.as_ref(), now_ms);
                metric.name = Some(def.name.clone());
                metric
            })
            .collect();
        let seq = self.next_seq();
        Some(self.publish("DBIRTH", Some(device), seq, metrics, now_ms))
    }

    /// DDATA of changes of one device, by alias only.
    pub fn device_data(
        &mut self,
        device: usize,
        changes: &[(usize, Current)],
        historical: bool,
        now_ms: u64,
    ) -> Option<Publish> {
        let d = self.devices.get(device)?;
        let metrics = changes
            .iter()
            .filter_map(|(m, current)| {
                let def = d.catalogue.metrics.get(*m)?;
                let mut metric = metric_of(def, device, *m, Some(current), now_ms);
                if historical {
                    metric.is_historical = Some(true);
                }
                Some(metric)
            })
            .collect::<Vec<_>>();
        if metrics.is_empty() {
            return None;
        }
        let seq = self.next_seq();
        Some(self.publish("DDATA", Some(device), seq, metrics, now_ms))
    }

    /// DDEATH: the device is unborn until its next DBIRTH.
    pub fn device_death(&mut self, device: usize, now_ms: u64) -> Option<Publish> {
        self.devices.get_mut(device)?.born = false;
        let seq = self.next_seq();
        Some(self.publish("DDEATH", Some(device), seq, Vec::new(), now_ms))
    }

    fn publish(
        &self,
        kind: &str,
        device: Option<usize>,
        seq: u64,
        metrics: Vec<Metric>,
        now_ms: u64,
    ) -> Publish {
        let payload = Payload {
            timestamp: Some(now_ms),
            metrics,
            seq: Some(seq),
            ..Default::default()
        };
        Publish {
            topic: self.topic(kind, device),
            payload: payload.encode_to_vec(),
        }
    }
}

fn metric_of(
    def: &MetricDef,
    device: usize,
    m: usize,
    current: Option<&Current>,
    now_ms: u64,
) -> Metric {
    let value = current.and_then(|c| c.value.clone());
    Metric {
        alias: Some(alias(device, m)),
        timestamp: Some(current.map(|c| c.at_ms).unwrap_or(now_ms)),
        datatype: Some(def.datatype.code()),
        is_null: value.is_none().then_some(true),
        value,
        ..Default::default()
    }
}

/// Whether an NCMD payload asks for a rebirth (`Node Control/Rebirth` =
/// true, by name or alias). An undecodable payload is an error to log.
pub fn asks_rebirth(payload: &[u8]) -> Result<bool, prost::DecodeError> {
    let p = Payload::decode(payload)?;
    Ok(p.metrics.iter().any(|m| {
        let named = m.name.as_deref() == Some(REBIRTH) || m.alias == Some(REBIRTH_ALIAS);
        named && m.value == Some(MetricValue::BooleanValue(true))
    }))
}

/// A primary host's STATE payload: Sparkplug 3.0 JSON `{"online": bool,
/// "timestamp": ms}`, or the 2.2 text `ONLINE` / `OFFLINE`. `None`: neither.
pub fn host_online(payload: &[u8]) -> Option<bool> {
    match payload {
        b"ONLINE" => return Some(true),
        b"OFFLINE" => return Some(false),
        _ => {}
    }
    let v: serde_json::Value = serde_json::from_slice(payload).ok()?;
    v.get("online")?.as_bool()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node() -> EdgeNode {
        let m: MachineConfig = serde_json::from_value(serde_json::json!({
            "id": "press1", "bus": "b",
            "signal": [{"name": "speed", "type": "u16", "area": "holding", "address": 0}]
        }))
        .expect("machine");
        EdgeNode::new("line1", "gw1", &[m])
    }

    fn decode(p: &Publish) -> Payload {
        Payload::decode(p.payload.as_slice()).expect("decodes")
    }

    #[test]
    fn nbirth_has_seq_0_and_every_later_message_counts_on_modulo_256() {
        let mut n = node();
        let birth = n.node_birth(7, 1000);
        assert_eq!(birth.topic, "spBv1.0/line1/NBIRTH/gw1");
        let b = decode(&birth);
        assert_eq!(b.seq, Some(0));
        assert_eq!(b.metrics[0].value, Some(MetricValue::LongValue(7)));
        let db = n.device_birth(0, 1000).expect("device");
        assert_eq!(db.topic, "spBv1.0/line1/DBIRTH/gw1/press1");
        assert_eq!(decode(&db).seq, Some(1));
        let mut last = 1;
        for i in 0..300u64 {
            n.set(0, 0, Some(MetricValue::IntValue(i as u32)), 1000 + i);
            let c = vec![(
                0,
                Current {
                    value: Some(MetricValue::IntValue(i as u32)),
                    at_ms: 1000 + i,
                },
            )];
            let d = n.device_data(0, &c, false, 2000).expect("data");
            let seq = decode(&d).seq.expect("seq");
            assert_eq!(seq, (last + 1) % 256);
            last = seq;
        }
        // A rebirth starts again at 0.
        assert_eq!(decode(&n.node_birth(7, 3000)).seq, Some(0));
    }

    #[test]
    fn ndeath_carries_the_bdseq_and_no_seq() {
        let n = node();
        let d = decode(&n.node_death(42, 5));
        assert_eq!(d.seq, None);
        assert_eq!(d.metrics[0].name.as_deref(), Some(BD_SEQ));
        assert_eq!(d.metrics[0].value, Some(MetricValue::LongValue(42)));
    }

    #[test]
    fn dbirth_names_every_metric_with_alias_and_type_and_data_uses_aliases_only() {
        let mut n = node();
        n.node_birth(1, 0);
        n.set(0, 0, Some(MetricValue::IntValue(5)), 123);
        let b = decode(&n.device_birth(0, 200).expect("birth"));
        let count = n.devices[0].catalogue.metrics.len();
        assert_eq!(b.metrics.len(), count);
        assert_eq!(b.metrics[0].name.as_deref(), Some("Signals/speed"));
        assert_eq!(b.metrics[0].alias, Some(alias(0, 0)));
        assert_eq!(b.metrics[0].datatype, Some(DataType::UInt16.code()));
        assert_eq!(b.metrics[0].timestamp, Some(123));
        // Not known yet: null, with its type.
        assert_eq!(b.metrics[1].is_null, Some(true));
        let c = vec![(
            0,
            Current {
                value: Some(MetricValue::IntValue(6)),
                at_ms: 300,
            },
        )];
        let d = decode(&n.device_data(0, &c, true, 400).expect("data"));
        assert_eq!(d.metrics[0].name, None);
        assert_eq!(d.metrics[0].alias, Some(alias(0, 0)));
        assert_eq!(d.metrics[0].timestamp, Some(300));
        assert_eq!(d.metrics[0].is_historical, Some(true));
    }

    #[test]
    fn an_unchanged_value_is_not_a_change() {
        let mut n = node();
        assert!(n.set(0, 0, Some(MetricValue::IntValue(1)), 1).is_some());
        assert!(n.set(0, 0, Some(MetricValue::IntValue(1)), 2).is_none());
        assert!(n.set(0, 0, None, 3).is_some());
        assert!(n.set(9, 0, None, 3).is_none());
    }

    #[test]
    fn rebirth_is_asked_by_name_or_alias_with_true_only() {
        let ask = |m: Metric| {
            Payload {
                metrics: vec![m],
                ..Default::default()
            }
            .encode_to_vec()
        };
        let by_name = ask(Metric {
            name: Some(REBIRTH.into()),
            value: Some(MetricValue::BooleanValue(true)),
            ..Default::default()
        });
        assert!(asks_rebirth(&by_name).expect("decodes"));
        let by_alias = ask(Metric {
            alias: Some(1),
            value: Some(MetricValue::BooleanValue(true)),
            ..Default::default()
        });
        assert!(asks_rebirth(&by_alias).expect("decodes"));
        let no = ask(Metric {
            name: Some(REBIRTH.into()),
            value: Some(MetricValue::BooleanValue(false)),
            ..Default::default()
        });
        assert!(!asks_rebirth(&no).expect("decodes"));
        assert!(asks_rebirth(&[0xff, 0xff]).is_err());
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_from_the_broker_are_an_answer_never_a_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..256)) {
            let _ = asks_rebirth(&bytes);
            let _ = host_online(&bytes);
        }
    }

    #[test]
    fn host_state_is_read_from_3_0_json_and_2_2_text() {
        assert_eq!(host_online(br#"{"online":true,"timestamp":1}"#), Some(true));
        assert_eq!(
            host_online(br#"{"online":false,"timestamp":1}"#),
            Some(false)
        );
        assert_eq!(host_online(b"ONLINE"), Some(true));
        assert_eq!(host_online(b"garbage"), None);
    }
}
