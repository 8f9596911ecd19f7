//! MQTT machine sources: a `transport = "mqtt"` bus subscribes to topics on a
//! local broker and takes signal values from JSON payloads by JSON pointer.
//!
//! This module owns one connection to the local broker per bus, the routing
//! of each incoming topic to the signals that listen on it, decoding the
//! payload into a [`Value`], and the staleness clock of each machine. It sends
//! partial [`SampleContent::Signals`] samples (only the signals that arrived)
//! and one [`SampleContent::Unreachable`] per stale spell. It never decides a
//! machine's state, never publishes anything and never touches the store.
//!
//! Decoding ([`decode_payload`]) is a pure function: a wrong payload is a
//! [`SignalError::BadPayload`] naming the topic, the pointer and what was
//! found, never a panic.
//!
//! The connection loop: rumqttc has no backoff and keeps state across
//! reconnects, so every connection attempt gets a fresh client and event
//! loop, subscribes after its CONNACK, and a failure waits an exponential
//! backoff (`backoff_min_ms` doubling to `backoff_max_ms`, with jitter)
//! before the next attempt.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use rand::Rng;
use rumqttc::{
    AsyncClient, ConnectionError, Event, EventLoop, MqttOptions, Packet, QoS, SubscribeFilter,
    SubscribeReasonCode,
};
use tokio::sync::mpsc;
use tokio::time::{sleep_until, Instant};
use tokio_util::sync::CancellationToken;

use super::{Reading, Readings, Sample, SampleContent, SignalError, Value};
use crate::config::{BusConfig, DataType, MachineConfig, SignalConfig};
use crate::systemd::Heartbeat;

/// Largest payload accepted from the local broker (rumqttc's default of 10 KiB
/// would drop the whole connection on a large PLC payload).
const MAX_INCOMING_PACKET_BYTES: usize = 1024 * 1024;

/// How much of a payload an error message quotes.
const PAYLOAD_PREVIEW_CHARS: usize = 80;

/// One signal that listens on a topic filter.
#[derive(Debug, Clone)]
struct Route {
    /// The topic (or filter) from the signal's config.
    filter: String,
    /// Index into [`MqttBus::machines`].
    machine: usize,
    signal: SignalConfig,
    /// The signal's name, shared by every sample that carries it.
    name: Arc<str>,
}

/// A machine's staleness clock.
#[derive(Debug)]
struct Freshness {
    id: String,
    /// When the machine last published (or when the bus started).
    last_seen: Instant,
    /// An `Unreachable` was already sent for the current silence.
    stale_reported: bool,
}

/// Everything a bus needs between events: routes and staleness clocks.
struct MqttBus {
    bus: BusConfig,
    routes: Vec<Route>,
    machines: Vec<Freshness>,
    stale: Duration,
    samples: mpsc::Sender<Sample>,
    /// Why the last connection attempt failed, while disconnected (for the offline reason).
    broker_error: Option<String>,
}

/// Run one MQTT bus until `shutdown`: connect, subscribe, decode, send samples.
///
/// Never returns an error: a broker that is down is retried with backoff, and
/// the machines on it go `Unreachable` once they are stale. `heartbeat`
/// beats on every turn of the loop and on its own timer (silent machines and
/// a broker that is down still beat); it is retired when the task ends.
pub async fn run_mqtt_bus(
    bus: BusConfig,
    machines: Vec<MachineConfig>,
    samples: mpsc::Sender<Sample>,
    heartbeat: Heartbeat,
    shutdown: CancellationToken,
) {
    let span = tracing::info_span!("mqtt_bus", bus = %bus.id);
    let mut state = MqttBus::new(bus, &machines, samples);
    tracing::Instrument::instrument(state.run(&heartbeat, shutdown), span).await;
    heartbeat.retire();
}

/// Parse `mqtt://host:port` (port defaults to 1883).
fn host_port(address: &str) -> Result<(String, u16), String> {
    let rest = address
        .strip_prefix("mqtt://")
        .ok_or_else(|| format!("address {address:?} must start with mqtt://"))?;
    let rest = rest.trim_end_matches('/');
    match rest.rsplit_once(':') {
        Some((host, port)) => {
            let port = port
                .parse::<u16>()
                .map_err(|_| format!("address {address:?}: port {port:?} is not a number"))?;
            Ok((host.trim_matches(['[', ']']).to_string(), port))
        }
        None => Ok((rest.to_string(), 1883)),
    }
}

impl MqttBus {
    fn new(bus: BusConfig, machines: &[MachineConfig], samples: mpsc::Sender<Sample>) -> Self {
        let now = Instant::now();
        let mut routes = Vec::new();
        let mut fresh = Vec::new();
        for (i, m) in machines.iter().enumerate() {
            fresh.push(Freshness {
                id: m.id.clone(),
                last_seen: now,
                stale_reported: false,
            });
            for s in &m.signal {
                if let Some(topic) = &s.topic {
                    routes.push(Route {
                        filter: topic.clone(),
                        machine: i,
                        signal: s.clone(),
                        name: Arc::from(s.name.as_str()),
                    });
                }
            }
        }
        let stale = Duration::from_millis(bus.stale_ms.max(1));
        MqttBus {
            bus,
            routes,
            machines: fresh,
            stale,
            samples,
            broker_error: None,
        }
    }

    /// The distinct topic filters to subscribe to.
    fn filters(&self) -> Vec<String> {
        let mut f: Vec<String> = self.routes.iter().map(|r| r.filter.clone()).collect();
        f.sort();
        f.dedup();
        f
    }

    fn options(&self) -> Result<MqttOptions, String> {
        let address = self
            .bus
            .address
            .as_deref()
            .ok_or_else(|| "mqtt bus has no address".to_string())?;
        let (host, port) = host_port(address)?;
        let client_id = self
            .bus
            .client_id
            .clone()
            .unwrap_or_else(|| format!("linegate-{}", self.bus.id));
        let mut o = MqttOptions::new(client_id, host, port);
        o.set_clean_session(true)
            .set_keep_alive(Duration::from_secs(15))
            .set_max_packet_size(MAX_INCOMING_PACKET_BYTES, MAX_INCOMING_PACKET_BYTES);
        Ok(o)
    }

    async fn run(&mut self, heartbeat: &Heartbeat, shutdown: CancellationToken) {
        let filters = self.filters();
        if filters.is_empty() {
            tracing::warn!("mqtt bus has no signal with a topic; nothing to subscribe to");
        }
        let backoff_min = Duration::from_millis(self.bus.backoff_min_ms.max(1));
        let backoff_max =
            Duration::from_millis(self.bus.backoff_max_ms.max(self.bus.backoff_min_ms).max(1));
        let mut backoff = backoff_min;
        // The live connection, if any. `None` = waiting until `retry_at`.
        let mut conn: Option<(AsyncClient, EventLoop)> = None;
        let mut retry_at = Instant::now();
        let mut stale_tick = tokio::time::interval((self.stale / 4).max(Duration::from_millis(10)));
        stale_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut beat = heartbeat.ticker();

        loop {
            heartbeat.beat();
            tokio::select! {
                _ = beat.tick() => {}
                _ = shutdown.cancelled() => {
                    if let Some((client, mut events)) = conn.take() {
                        // Say goodbye politely, but never hang on a dead broker.
                        let _ = client.try_disconnect();
                        let _ = tokio::time::timeout(Duration::from_millis(200), events.poll()).await;
                    }
                    tracing::debug!("mqtt bus stopped");
                    return;
                }
                _ = stale_tick.tick() => {
                    if self.report_stale(Instant::now()).await.is_err() {
                        return;
                    }
                }
                _ = sleep_until(retry_at), if conn.is_none() => {
                    match self.options() {
                        Ok(o) => conn = Some(AsyncClient::new(o, 64)),
                        Err(e) => {
                            // Validation should have caught this; keep the machines offline.
                            tracing::error!(error = %e, "mqtt bus cannot connect");
                            self.broker_error = Some(e);
                            retry_at = Instant::now() + backoff_max;
                        }
                    }
                }
                event = next_event(&mut conn) => match event {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        tracing::info!(filters = filters.len(), "connected to local broker; subscribing");
                        backoff = backoff_min;
                        self.broker_error = None;
                        if let Some((client, _)) = &conn {
                            let subs = filters
                                .iter()
                                .map(|f| SubscribeFilter::new(f.clone(), QoS::AtLeastOnce));
                            if !filters.is_empty() {
                                if let Err(e) = client.try_subscribe_many(subs) {
                                    tracing::error!(error = %e, "cannot queue the subscriptions");
                                }
                            }
                        }
                    }
                    Ok(Event::Incoming(Packet::SubAck(ack))) => {
                        for (code, filter) in ack.return_codes.iter().zip(&filters) {
                            if matches!(code, SubscribeReasonCode::Failure) {
                                tracing::error!(topic = %filter, "the local broker refused the subscription");
                            }
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        if self.on_publish(&p.topic, &p.payload).await.is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        let delay = jittered(backoff);
                        tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "local broker connection lost");
                        self.broker_error = Some(e.to_string());
                        conn = None;
                        retry_at = Instant::now() + delay;
                        backoff = (backoff * 2).min(backoff_max);
                    }
                },
            }
        }
    }

    /// Decode one message for every signal that listens on its topic and send
    /// one partial sample per machine. `Err` = the engine has gone away.
    async fn on_publish(&mut self, topic: &str, payload: &[u8]) -> Result<(), ()> {
        let now = Instant::now();
        let mut per_machine: BTreeMap<usize, Readings> = BTreeMap::new();
        for r in &self.routes {
            if r.filter == topic || rumqttc::matches(topic, &r.filter) {
                let reading = decode_payload(&r.signal, topic, payload);
                if let Err(e) = &reading {
                    tracing::warn!(machine = %self.machines[r.machine].id, signal = %r.signal.name, error = %e, "bad payload");
                }
                per_machine
                    .entry(r.machine)
                    .or_default()
                    .insert(r.name.clone(), reading);
            }
        }
        for (i, signals) in per_machine {
            let m = &mut self.machines[i];
            m.last_seen = now;
            if m.stale_reported {
                tracing::info!(machine = %m.id, "machine publishes again");
            }
            m.stale_reported = false;
            let sample = Sample {
                machine: m.id.clone(),
                at: Utc::now(),
                mono: now,
                content: SampleContent::Signals(signals),
            };
            self.samples.send(sample).await.map_err(|_| ())?;
        }
        Ok(())
    }

    /// Send `Unreachable` once for every machine silent for `stale_ms`.
    async fn report_stale(&mut self, now: Instant) -> Result<(), ()> {
        for m in &mut self.machines {
            if m.stale_reported || now.saturating_duration_since(m.last_seen) < self.stale {
                continue;
            }
            m.stale_reported = true;
            let reason = match &self.broker_error {
                Some(e) => format!(
                    "local broker {} unreachable: {e}",
                    self.bus.address.as_deref().unwrap_or("?")
                ),
                None => format!("published nothing for {} ms", self.bus.stale_ms),
            };
            tracing::warn!(machine = %m.id, %reason, "machine is stale");
            let sample = Sample {
                machine: m.id.clone(),
                at: Utc::now(),
                mono: now,
                content: SampleContent::Unreachable { reason },
            };
            self.samples.send(sample).await.map_err(|_| ())?;
        }
        Ok(())
    }
}

/// The next event of the live connection, or never when there is none.
async fn next_event(conn: &mut Option<(AsyncClient, EventLoop)>) -> Result<Event, ConnectionError> {
    match conn {
        Some((_, events)) => events.poll().await,
        None => std::future::pending().await,
    }
}

/// A delay between half and all of `base` (jitter spreads reconnects of many gateways).
fn jittered(base: Duration) -> Duration {
    let ms = base.as_millis().max(1) as u64;
    Duration::from_millis(rand::rng().random_range(ms / 2..=ms))
}

/// Decode one signal's value from an MQTT payload.
///
/// With a `pointer`, the payload must be JSON and the pointer must name a
/// value in it; without one, the payload itself is the value (JSON, or plain
/// text such as `42`, `true` or `RUN`). The value is then read as the signal's
/// `type`, and numbers are scaled (`raw * scale + offset`, which makes a
/// float when scale or offset is set).
pub fn decode_payload(signal: &SignalConfig, topic: &str, payload: &[u8]) -> Reading {
    let bad = |what: String| {
        let at = match &signal.pointer {
            Some(p) => format!(" at pointer {p:?}"),
            None => String::new(),
        };
        SignalError::BadPayload(format!(
            "topic {topic:?}{at}, signal {:?} ({}): {what}",
            signal.name, signal.data_type
        ))
    };
    let text = std::str::from_utf8(payload);
    let json: Option<serde_json::Value> = serde_json::from_slice(payload).ok();
    let found = match (&signal.pointer, json) {
        (Some(p), Some(doc)) => match doc.pointer(p) {
            Some(v) => v.clone(),
            None => {
                return Err(bad(format!(
                    "nothing there in payload {}",
                    preview(payload)
                )))
            }
        },
        (Some(_), None) => {
            return Err(bad(format!("payload is not JSON: {}", preview(payload))));
        }
        (None, Some(v)) => v,
        (None, None) => match text {
            Ok(t) => serde_json::Value::String(t.trim().to_string()),
            Err(_) => {
                return Err(bad(format!(
                    "payload is not UTF-8 text: {}",
                    preview(payload)
                )))
            }
        },
    };
    decode_value(signal, &found).map_err(bad)
}

/// Read a JSON value as the signal's type. `Err` says what was found.
fn decode_value(signal: &SignalConfig, v: &serde_json::Value) -> Result<Value, String> {
    use serde_json::Value as J;
    let found = || format!("found {}", short(v));
    match signal.data_type {
        DataType::Bool => match v {
            J::Bool(b) => Ok(Value::Bool(*b)),
            J::Number(n) if n.as_f64() == Some(0.0) => Ok(Value::Bool(false)),
            J::Number(n) if n.as_f64() == Some(1.0) => Ok(Value::Bool(true)),
            J::String(s) => match s.trim().to_ascii_lowercase().as_str() {
                "true" | "1" | "on" => Ok(Value::Bool(true)),
                "false" | "0" | "off" => Ok(Value::Bool(false)),
                _ => Err(format!("{}, expected true/false, 1/0 or on/off", found())),
            },
            _ => Err(format!("{}, expected true/false, 1/0 or on/off", found())),
        },
        DataType::String => match v {
            J::String(s) => Ok(Value::Text(s.clone())),
            J::Number(n) => Ok(Value::Text(n.to_string())),
            J::Bool(b) => Ok(Value::Text(b.to_string())),
            _ => Err(format!("{}, expected text", found())),
        },
        DataType::F32 | DataType::F64 => {
            let x = number(v).ok_or_else(|| format!("{}, expected a number", found()))?;
            scaled_float(signal, x).ok_or_else(|| format!("{} is not a finite number", found()))
        }
        t => {
            let x = number(v).ok_or_else(|| format!("{}, expected an integer", found()))?;
            if x.fract() != 0.0 {
                return Err(format!("{}, expected an integer ({t})", found()));
            }
            let (lo, hi) = int_range(t);
            if x < lo || x > hi {
                return Err(format!("{}, outside the range of {t}", found()));
            }
            if signal.scale != 1.0 || signal.offset != 0.0 {
                return scaled_float(signal, x)
                    .ok_or_else(|| format!("{} scales to no finite number", found()));
            }
            // Exact integers: prefer the JSON integer itself over the f64 (u64/i64 precision).
            if let J::Number(n) = v {
                if let Some(i) = n.as_i64() {
                    return Ok(Value::Int(i));
                }
                if let Some(u) = n.as_u64() {
                    return Ok(Value::UInt(u));
                }
            }
            if let J::String(s) = v {
                if let Ok(i) = s.trim().parse::<i64>() {
                    return Ok(Value::Int(i));
                }
                if let Ok(u) = s.trim().parse::<u64>() {
                    return Ok(Value::UInt(u));
                }
            }
            if x < 0.0 {
                Ok(Value::Int(x as i64))
            } else {
                Ok(Value::UInt(x as u64))
            }
        }
    }
}

/// A JSON number, or a string holding one.
fn number(v: &serde_json::Value) -> Option<f64> {
    match v {
        serde_json::Value::Number(n) => n.as_f64(),
        serde_json::Value::String(s) => s.trim().parse::<f64>().ok().filter(|x| x.is_finite()),
        _ => None,
    }
}

fn scaled_float(signal: &SignalConfig, x: f64) -> Option<Value> {
    let y = x * signal.scale + signal.offset;
    y.is_finite().then_some(Value::Float(y))
}

/// Inclusive range of an integer type, as f64.
fn int_range(t: DataType) -> (f64, f64) {
    match t {
        DataType::U16 => (0.0, u16::MAX as f64),
        DataType::I16 => (i16::MIN as f64, i16::MAX as f64),
        DataType::U32 => (0.0, u32::MAX as f64),
        DataType::I32 => (i32::MIN as f64, i32::MAX as f64),
        DataType::U64 => (0.0, u64::MAX as f64),
        _ => (i64::MIN as f64, i64::MAX as f64),
    }
}

fn short(v: &serde_json::Value) -> String {
    let s = v.to_string();
    cut(&s)
}

fn preview(payload: &[u8]) -> String {
    match std::str::from_utf8(payload) {
        Ok(t) => format!("{:?}", cut(t)),
        Err(_) => format!("{} bytes of binary data", payload.len()),
    }
}

fn cut(s: &str) -> String {
    if s.chars().count() <= PAYLOAD_PREVIEW_CHARS {
        s.to_string()
    } else {
        let head: String = s.chars().take(PAYLOAD_PREVIEW_CHARS).collect();
        format!("{head}...")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signal(data_type: DataType, pointer: Option<&str>) -> SignalConfig {
        SignalConfig {
            name: "rpm".into(),
            area: None,
            address: None,
            data_type,
            word_order: Default::default(),
            byte_order: Default::default(),
            scale: 1.0,
            offset: 0.0,
            bit: None,
            length: None,
            topic: Some("line/press07/status".into()),
            pointer: pointer.map(str::to_owned),
            deadband: 0.0,
        }
    }

    #[test]
    fn pointer_takes_a_nested_number() {
        let s = signal(DataType::U16, Some("/spindle/rpm"));
        let r = decode_payload(&s, "t", br#"{"spindle":{"rpm":1200}}"#);
        assert_eq!(r, Ok(Value::Int(1200)));
    }

    #[test]
    fn raw_payload_is_the_value_itself() {
        assert_eq!(
            decode_payload(&signal(DataType::I32, None), "t", b" -17\n"),
            Ok(Value::Int(-17))
        );
        assert_eq!(
            decode_payload(&signal(DataType::Bool, None), "t", b"true"),
            Ok(Value::Bool(true))
        );
        assert_eq!(
            decode_payload(&signal(DataType::String, None), "t", b"RUN"),
            Ok(Value::Text("RUN".into()))
        );
    }

    #[test]
    fn scale_and_offset_make_a_float() {
        let mut s = signal(DataType::U16, Some("/t"));
        s.scale = 0.1;
        s.offset = -40.0;
        assert_eq!(
            decode_payload(&s, "t", br#"{"t":500}"#),
            Ok(Value::Float(500.0 * 0.1 - 40.0))
        );
    }

    #[test]
    fn missing_pointer_names_topic_pointer_and_payload() {
        let s = signal(DataType::U16, Some("/spindle/rpm"));
        let Err(SignalError::BadPayload(msg)) = decode_payload(&s, "line/p7", br#"{"spindle":{}}"#)
        else {
            panic!("expected a bad payload");
        };
        assert!(msg.contains("line/p7"), "{msg}");
        assert!(msg.contains("/spindle/rpm"), "{msg}");
        assert!(msg.contains("spindle"), "{msg}");
    }

    #[test]
    fn value_outside_the_type_is_refused() {
        let s = signal(DataType::U16, None);
        let r = decode_payload(&s, "t", b"70000");
        assert!(
            matches!(&r, Err(SignalError::BadPayload(m)) if m.contains("70000") && m.contains("u16")),
            "{r:?}"
        );
        let r = decode_payload(&s, "t", b"-1");
        assert!(r.is_err(), "{r:?}");
        let r = decode_payload(&s, "t", b"1.5");
        assert!(r.is_err(), "{r:?}");
    }

    #[test]
    fn wrong_kinds_and_garbage_are_errors_not_panics() {
        for payload in [
            &b"{"[..],
            b"\xff\xfe\x00",
            b"[1,2,3]",
            b"{\"a\":1}",
            b"null",
            b"",
            b"NaN",
        ] {
            for t in [DataType::U16, DataType::F64, DataType::Bool] {
                let r = decode_payload(&signal(t, None), "t", payload);
                assert!(r.is_err(), "{t} from {payload:?} gave {r:?}");
            }
        }
        let r = decode_payload(&signal(DataType::U16, Some("/a")), "t", b"not json");
        assert!(
            matches!(&r, Err(SignalError::BadPayload(m)) if m.contains("not JSON")),
            "{r:?}"
        );
    }

    #[test]
    fn large_integers_keep_their_precision() {
        let s = signal(DataType::U64, None);
        assert_eq!(
            decode_payload(&s, "t", b"18446744073709551615"),
            Ok(Value::UInt(u64::MAX))
        );
    }

    #[test]
    fn address_gives_host_and_port() {
        assert_eq!(
            host_port("mqtt://10.0.0.5:1884"),
            Ok(("10.0.0.5".into(), 1884))
        );
        assert_eq!(
            host_port("mqtt://plc.local"),
            Ok(("plc.local".into(), 1883))
        );
        assert!(host_port("mqtt://plc:x").is_err());
        assert!(host_port("tcp://plc:1").is_err());
    }
}
