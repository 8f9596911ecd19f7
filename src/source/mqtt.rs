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
//! before the next attempt. The backoff starts again from `backoff_min_ms`
//! only after a connection that lived [`STABLE_CONNECTION`]: one that dies
//! right after its CONNACK keeps doubling ([`Backoff`]).
//!
//! What a message is worth (the rules docs/mqtt.md states for technicians):
//!
//! - **Retained messages** (the broker replays them on every subscription,
//!   however old) are not fresh readings. `retained = "ignore"` (default):
//!   counted and dropped, they neither set a value nor keep a machine fresh.
//!   `"timestamped"`: one whose own time (`timestamp_pointer`) is younger
//!   than `stale_ms` and newer than the machine's last message is the state
//!   at that time ([`retained_use`]). Counter signals are never taken from a
//!   retained message, so a replayed old count can never look like a reset.
//! - **Oversized messages** (payload above `max_payload_bytes`) are refused
//!   one by one: logged with topic and size, counted in [`MqttBusStats`], and
//!   every signal on that topic gets a [`SignalError::BadPayload`] saying so.
//!   rumqttc itself accepts any packet the protocol allows, because a packet
//!   over its limit would drop the whole connection.
//! - **Offline** always starts at the machine's last good observation (the
//!   engine's rule for Modbus too): a message whose signals all fail, and a
//!   silence of `stale_ms`, both make the machine offline from the last live
//!   message that gave a value. A retained replay is not such a message.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rand::Rng;
use rumqttc::{
    AsyncClient, ConnectionError, Event, EventLoop, MqttOptions, Packet, QoS, SubscribeFilter,
    SubscribeReasonCode,
};
use tokio::sync::mpsc;
use tokio::time::{sleep_until, Instant};
use tokio_util::sync::CancellationToken;

use super::{Reading, Readings, Sample, SampleContent, SignalError, Value};
use crate::config::{BusConfig, DataType, MachineConfig, RetainedPolicy, SignalConfig};
use crate::systemd::Heartbeat;

/// The packet size rumqttc is told to accept: the protocol's largest
/// remaining length, so that no packet can make rumqttc drop the connection
/// (it does on any packet over its limit). `max_payload_bytes` is enforced
/// per message instead, in [`MqttBus::on_publish`].
const MQTT_MAX_PACKET_BYTES: usize = 268_435_455;

/// Outgoing packets are only CONNECT, SUBSCRIBE, PING and DISCONNECT.
const MAX_OUTGOING_PACKET_BYTES: usize = 64 * 1024;

/// A connection that lived this long was a good one: the backoff starts
/// again from `backoff_min_ms` after it ends. One that dies sooner (a broker
/// that accepts and then drops us) keeps the backoff growing.
pub const STABLE_CONNECTION: Duration = Duration::from_secs(10);

/// How much of a payload an error message quotes.
const PAYLOAD_PREVIEW_CHARS: usize = 80;

/// Counters of one MQTT bus, shared with whoever reports them (logs, tests,
/// status): what was refused or dropped is counted here and nowhere else.
#[derive(Debug, Default)]
pub struct MqttBusStats {
    pub bus: String,
    /// CONNACKs received: connections made (the first one and every reconnect).
    pub connections: AtomicU64,
    /// Messages refused because their payload was over `max_payload_bytes`.
    pub refused_oversized: AtomicU64,
    /// Retained messages not taken as readings (replays, or too old).
    pub retained_ignored: AtomicU64,
    /// Retained messages taken as the state at their own timestamp.
    pub retained_used: AtomicU64,
}

/// A copy of an MQTT bus's counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct MqttBusStatsSnapshot {
    pub connections: u64,
    pub refused_oversized: u64,
    pub retained_ignored: u64,
    pub retained_used: u64,
}

impl MqttBusStats {
    pub fn new(bus: &str) -> Self {
        MqttBusStats {
            bus: bus.to_owned(),
            ..Self::default()
        }
    }

    pub fn snapshot(&self) -> MqttBusStatsSnapshot {
        MqttBusStatsSnapshot {
            connections: self.connections.load(Ordering::Relaxed),
            refused_oversized: self.refused_oversized.load(Ordering::Relaxed),
            retained_ignored: self.retained_ignored.load(Ordering::Relaxed),
            retained_used: self.retained_used.load(Ordering::Relaxed),
        }
    }
}

/// The reconnect delay: doubles from `min` to `max` on every failure, and
/// starts again from `min` only after a connection that lived
/// [`STABLE_CONNECTION`]. Pure: the loop tells it how long a connection lived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        let min = min.max(Duration::from_millis(1));
        let max = max.max(min);
        Backoff {
            min,
            max,
            next: min,
        }
    }

    /// The delay before the next attempt (before jitter), after an attempt
    /// that failed to connect (`lived = None`) or a connection that ended
    /// after `lived`.
    pub fn after_failure(&mut self, lived: Option<Duration>) -> Duration {
        if lived.is_some_and(|l| l >= STABLE_CONNECTION) {
            self.next = self.min;
        }
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        delay
    }
}

/// What a retained message is worth to a machine ([`retained_use`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RetainedUse {
    /// Not a reading: why not.
    Ignore(String),
    /// The state at this time (the payload's own).
    At(DateTime<Utc>),
}

/// How far ahead of our clock a payload's time may be and still count as
/// "now" (two clocks on one line are rarely closer than this).
const TIMESTAMP_AHEAD_MS: i64 = 2_000;

/// Decide whether a retained message is a reading, and of when. Pure.
///
/// `last_message` is the time of the machine's last message taken as a
/// reading: a retained message no newer than that says nothing new.
pub fn retained_use(
    policy: RetainedPolicy,
    timestamp_pointer: Option<&str>,
    payload: &[u8],
    now: DateTime<Utc>,
    stale: Duration,
    last_message: Option<DateTime<Utc>>,
) -> RetainedUse {
    let pointer = match (policy, timestamp_pointer) {
        (RetainedPolicy::Ignore, _) => return RetainedUse::Ignore("retained = \"ignore\"".into()),
        (RetainedPolicy::Timestamped, None) => {
            return RetainedUse::Ignore("no timestamp_pointer".into())
        }
        (RetainedPolicy::Timestamped, Some(p)) => p,
    };
    let Some(ts) = payload_timestamp(payload, pointer) else {
        return RetainedUse::Ignore(format!("no usable time at pointer {pointer:?}"));
    };
    let age_ms = (now - ts).num_milliseconds();
    let stale_ms = i64::try_from(stale.as_millis()).unwrap_or(i64::MAX);
    if age_ms < -TIMESTAMP_AHEAD_MS {
        return RetainedUse::Ignore(format!("its time {ts} is ahead of this gateway's clock"));
    }
    if age_ms > stale_ms {
        return RetainedUse::Ignore(format!(
            "{:.1} s old, older than stale_ms",
            age_ms as f64 / 1000.0
        ));
    }
    if last_message.is_some_and(|last| ts <= last) {
        return RetainedUse::Ignore("no newer than the machine's last message".into());
    }
    RetainedUse::At(ts.min(now))
}

/// The payload's own time at `pointer`: RFC 3339 text, or a number of Unix
/// milliseconds.
fn payload_timestamp(payload: &[u8], pointer: &str) -> Option<DateTime<Utc>> {
    let doc: serde_json::Value = serde_json::from_slice(payload).ok()?;
    match doc.pointer(pointer)? {
        serde_json::Value::String(s) => DateTime::parse_from_rfc3339(s.trim())
            .ok()
            .map(|t| t.with_timezone(&Utc)),
        serde_json::Value::Number(n) => {
            let ms = n.as_i64()?;
            DateTime::from_timestamp_millis(ms)
        }
        _ => None,
    }
}

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
    /// One of the machine's part counters: never taken from a retained message.
    counter: bool,
}

/// A machine's staleness clock.
#[derive(Debug)]
struct Freshness {
    id: String,
    /// When the machine last published (or when the bus started).
    last_seen: Instant,
    /// Wall time of the last message taken as a reading (none yet: `None`).
    last_message: Option<DateTime<Utc>>,
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
    stats: Arc<MqttBusStats>,
}

/// Run one MQTT bus until `shutdown`: connect, subscribe, decode, send samples.
///
/// Never returns an error: a broker that is down is retried with backoff, and
/// the machines on it go `Unreachable` once they are stale. `heartbeat`
/// beats on every turn of the loop and on its own timer (silent machines and
/// a broker that is down still beat); it is retired when the task ends.
pub async fn run_mqtt_bus(
    bus: BusConfig,
    machines: Vec<impl Into<Arc<MachineConfig>>>,
    samples: mpsc::Sender<Sample>,
    heartbeat: Heartbeat,
    shutdown: CancellationToken,
) {
    let stats = Arc::new(MqttBusStats::new(&bus.id));
    run_mqtt_bus_with_stats(bus, machines, samples, stats, heartbeat, shutdown).await;
}

/// [`run_mqtt_bus`], counting into `stats` (shared with whoever reports them).
pub async fn run_mqtt_bus_with_stats(
    bus: BusConfig,
    machines: Vec<impl Into<Arc<MachineConfig>>>,
    samples: mpsc::Sender<Sample>,
    stats: Arc<MqttBusStats>,
    heartbeat: Heartbeat,
    shutdown: CancellationToken,
) {
    let span = tracing::info_span!("mqtt_bus", bus = %bus.id);
    let machines: Vec<Arc<MachineConfig>> = machines.into_iter().map(Into::into).collect();
    let mut state = MqttBus::new(bus, machines.iter().map(|m| &**m), samples, stats);
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
    fn new<'a>(
        bus: BusConfig,
        machines: impl IntoIterator<Item = &'a MachineConfig>,
        samples: mpsc::Sender<Sample>,
        stats: Arc<MqttBusStats>,
    ) -> Self {
        let now = Instant::now();
        let mut routes = Vec::new();
        let mut fresh = Vec::new();
        for (i, m) in machines.into_iter().enumerate() {
            fresh.push(Freshness {
                id: m.id.clone(),
                last_seen: now,
                last_message: None,
                stale_reported: false,
            });
            let counters: Vec<&str> = m
                .counters
                .iter()
                .flat_map(|c| [Some(&c.produced), c.good.as_ref(), c.scrap.as_ref()])
                .flatten()
                .map(String::as_str)
                .collect();
            for s in &m.signal {
                if let Some(topic) = &s.topic {
                    routes.push(Route {
                        filter: topic.clone(),
                        machine: i,
                        signal: s.clone(),
                        name: Arc::from(s.name.as_str()),
                        counter: counters.contains(&s.name.as_str()),
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
            stats,
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
            .set_max_packet_size(MQTT_MAX_PACKET_BYTES, MAX_OUTGOING_PACKET_BYTES);
        Ok(o)
    }

    async fn run(&mut self, heartbeat: &Heartbeat, shutdown: CancellationToken) {
        let filters = self.filters();
        if filters.is_empty() {
            tracing::warn!("mqtt bus has no signal with a topic; nothing to subscribe to");
        }
        let backoff_max =
            Duration::from_millis(self.bus.backoff_max_ms.max(self.bus.backoff_min_ms).max(1));
        let mut backoff = Backoff::new(Duration::from_millis(self.bus.backoff_min_ms), backoff_max);
        // The live connection, if any. `None` = waiting until `retry_at`.
        let mut conn: Option<(AsyncClient, EventLoop)> = None;
        // When the live connection got its CONNACK (how long it lived, when it ends).
        let mut connected_at: Option<Instant> = None;
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
                        connected_at = Some(Instant::now());
                        self.stats.connections.fetch_add(1, Ordering::Relaxed);
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
                        if self.on_publish(&p.topic, &p.payload, p.retain).await.is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        let lived = connected_at.take().map(|t| t.elapsed());
                        let delay = jittered(backoff.after_failure(lived));
                        tracing::warn!(
                            error = %e,
                            connected_for_ms = lived.map(|l| l.as_millis() as u64),
                            retry_in_ms = delay.as_millis() as u64,
                            "local broker connection lost"
                        );
                        self.broker_error = Some(e.to_string());
                        conn = None;
                        retry_at = Instant::now() + delay;
                    }
                },
            }
        }
    }

    /// Decode one message for every signal that listens on its topic and send
    /// one partial sample per machine. An oversized message is refused (its
    /// signals get an error saying so); a retained one is a reading only as
    /// [`retained_use`] allows. `Err` = the engine has gone away.
    async fn on_publish(&mut self, topic: &str, payload: &[u8], retain: bool) -> Result<(), ()> {
        let now = Instant::now();
        let wall = Utc::now();
        let limit = self.bus.max_payload_bytes;
        let oversized = u64::try_from(payload.len()).map_or(true, |n| n > limit);
        let mut refused = 0;
        if oversized {
            refused = self.stats.refused_oversized.fetch_add(1, Ordering::Relaxed) + 1;
            tracing::warn!(
                %topic,
                bytes = payload.len(),
                max_payload_bytes = limit,
                retained = retain,
                refused_on_this_bus = refused,
                "message refused: payload larger than max_payload_bytes"
            );
            if retain {
                // A replay is no reading anyway: nothing to tell the engine.
                return Ok(());
            }
        }
        let mut per_machine: BTreeMap<usize, (Readings, Instant, DateTime<Utc>)> = BTreeMap::new();
        for r in &self.routes {
            if !(r.filter == topic || rumqttc::matches(topic, &r.filter)) {
                continue;
            }
            let m = &self.machines[r.machine];
            let (mono, at) = if retain {
                let use_ = retained_use(
                    self.bus.retained,
                    self.bus.timestamp_pointer.as_deref(),
                    payload,
                    wall,
                    self.stale,
                    m.last_message,
                );
                match use_ {
                    RetainedUse::At(ts) if !r.counter => {
                        let age = (wall - ts).to_std().unwrap_or_default();
                        (now.checked_sub(age).unwrap_or(now), ts)
                    }
                    RetainedUse::At(_) => {
                        tracing::debug!(%topic, machine = %m.id, signal = %r.signal.name, "retained counter value not taken");
                        continue;
                    }
                    RetainedUse::Ignore(why) => {
                        tracing::debug!(%topic, machine = %m.id, signal = %r.signal.name, %why, "retained message not taken as a reading");
                        continue;
                    }
                }
            } else {
                (now, wall)
            };
            let reading = if oversized {
                Err(SignalError::BadPayload(format!(
                    "topic {topic:?}, signal {:?}: message of {} bytes refused, larger than max_payload_bytes = {limit} ({refused} refused on bus {:?} so far)",
                    r.signal.name,
                    payload.len(),
                    self.bus.id
                )))
            } else {
                decode_payload(&r.signal, topic, payload)
            };
            if let Err(e) = &reading {
                if !oversized {
                    tracing::warn!(machine = %m.id, signal = %r.signal.name, error = %e, "bad payload");
                }
            }
            per_machine
                .entry(r.machine)
                .or_insert_with(|| (Readings::default(), mono, at))
                .0
                .insert(r.name.clone(), reading);
        }
        if retain {
            if per_machine.is_empty() {
                let n = self.stats.retained_ignored.fetch_add(1, Ordering::Relaxed) + 1;
                if n.is_power_of_two() {
                    tracing::info!(
                        %topic,
                        retained_ignored = n,
                        policy = ?self.bus.retained,
                        "retained message not taken as a reading (a replay by the broker is not fresh)"
                    );
                }
            } else {
                self.stats.retained_used.fetch_add(1, Ordering::Relaxed);
            }
        }
        for (i, (signals, mono, at)) in per_machine {
            let m = &mut self.machines[i];
            m.last_seen = m.last_seen.max(mono);
            m.last_message = Some(m.last_message.map_or(at, |l| l.max(at)));
            if m.stale_reported {
                tracing::info!(machine = %m.id, "machine publishes again");
            }
            m.stale_reported = false;
            let sample = Sample {
                machine: m.id.clone(),
                at,
                mono,
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
            if !in_int_range(t, v, x) {
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
            // An integer written as a float (`5.0`, `1e3`, `-0.0`): `Int`
            // like every integer that fits i64, so the same number is the
            // same value however it was written; `UInt` only above i64::MAX.
            if x < 9_223_372_036_854_775_808.0 {
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

/// Whether an integral value (`x`, read from `v`) fits the integer type `t`.
///
/// Exact where it matters: a JSON integer (or text) that fits i64/u64 is
/// compared as an integer; anything else is compared as f64 against
/// bounds that f64 holds exactly (the type's minimum and its maximum + 1,
/// powers of two), so 2^64 is not "u64::MAX" and 2^63 is not "i64::MAX"
/// after rounding.
fn in_int_range(t: DataType, v: &serde_json::Value, x: f64) -> bool {
    let (lo, hi): (i128, i128) = match t {
        DataType::U16 => (0, u16::MAX.into()),
        DataType::I16 => (i16::MIN.into(), i16::MAX.into()),
        DataType::U32 => (0, u32::MAX.into()),
        DataType::I32 => (i32::MIN.into(), i32::MAX.into()),
        DataType::U64 => (0, u64::MAX.into()),
        _ => (i64::MIN.into(), i64::MAX.into()),
    };
    let exact: Option<i128> = match v {
        serde_json::Value::Number(n) => n
            .as_i64()
            .map(i128::from)
            .or_else(|| n.as_u64().map(i128::from)),
        serde_json::Value::String(s) => s.trim().parse::<i128>().ok(),
        _ => None,
    };
    match exact {
        Some(i) => lo <= i && i <= hi,
        // lo and hi + 1 are 0 or ±2^k: exact as f64. A number that is no
        // exact integer here may also be an integer literal that did not fit
        // i64 and was rounded (-2^63 - 1 reads as -2^63): i64's own minimum
        // arrives as an exact integer, so -2^63 as f64 is refused.
        None if t == DataType::I64 => x > lo as f64 && x < (hi + 1) as f64,
        None => x >= lo as f64 && x < (hi + 1) as f64,
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
    fn integers_one_past_the_type_are_refused_not_rounded() {
        let u = signal(DataType::U64, None);
        for payload in [
            &b"18446744073709551616"[..],
            b"\"18446744073709551616\"",
            b"1.8446744073709552e19",
            b"1e20",
            b"-1",
        ] {
            let r = decode_payload(&u, "t", payload);
            assert!(
                matches!(&r, Err(SignalError::BadPayload(m)) if m.contains("outside the range of u64")),
                "u64 from {:?}: {r:?}",
                String::from_utf8_lossy(payload)
            );
        }
        let i = signal(DataType::I64, None);
        for payload in [
            &b"9223372036854775808"[..],
            b"9.223372036854775808e18",
            b"-9223372036854775809",
            b"-1e19",
        ] {
            let r = decode_payload(&i, "t", payload);
            assert!(
                matches!(&r, Err(SignalError::BadPayload(m)) if m.contains("outside the range of i64")),
                "i64 from {:?}: {r:?}",
                String::from_utf8_lossy(payload)
            );
        }
        // The extremes themselves are values.
        assert_eq!(
            decode_payload(&i, "t", b"9223372036854775807"),
            Ok(Value::Int(i64::MAX))
        );
        assert_eq!(
            decode_payload(&i, "t", b"-9223372036854775808"),
            Ok(Value::Int(i64::MIN))
        );
        assert_eq!(decode_payload(&u, "t", b"0"), Ok(Value::Int(0)));
        let w = signal(DataType::U32, None);
        assert!(decode_payload(&w, "t", b"4294967296").is_err());
        assert_eq!(
            decode_payload(&w, "t", b"4294967295"),
            Ok(Value::Int(4_294_967_295))
        );
    }

    #[test]
    fn backoff_keeps_growing_while_connections_die_at_once() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(1000));
        // The broker refuses the connection: 100, 200, 400 ...
        assert_eq!(b.after_failure(None), Duration::from_millis(100));
        assert_eq!(b.after_failure(None), Duration::from_millis(200));
        // CONNACK, then dropped 5 ms later (an oversized packet, a client-id
        // clash): no reset, still doubling, up to the ceiling.
        let at_once = Some(Duration::from_millis(5));
        assert_eq!(b.after_failure(at_once), Duration::from_millis(400));
        assert_eq!(b.after_failure(at_once), Duration::from_millis(800));
        assert_eq!(b.after_failure(at_once), Duration::from_millis(1000));
        assert_eq!(b.after_failure(at_once), Duration::from_millis(1000));
        // A connection that lived long enough was a good one: start again.
        assert_eq!(
            b.after_failure(Some(STABLE_CONNECTION)),
            Duration::from_millis(100)
        );
        assert_eq!(b.after_failure(None), Duration::from_millis(200));
    }

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn a_retained_message_is_no_reading_by_default() {
        let now = t("2026-03-02T10:00:00Z");
        let stale = Duration::from_secs(10);
        let fresh = br#"{"heating":true,"ts":"2026-03-02T09:59:59Z"}"#;
        assert!(matches!(
            retained_use(RetainedPolicy::Ignore, Some("/ts"), fresh, now, stale, None),
            RetainedUse::Ignore(_)
        ));
    }

    #[test]
    fn a_timestamped_retained_message_is_the_state_at_its_own_time_while_young() {
        let now = t("2026-03-02T10:00:00Z");
        let stale = Duration::from_secs(10);
        let ts = RetainedPolicy::Timestamped;
        let use_ = |payload: &[u8], last| retained_use(ts, Some("/ts"), payload, now, stale, last);
        // 1 s old, RFC 3339 or Unix ms: the state at that time.
        assert_eq!(
            use_(br#"{"ts":"2026-03-02T09:59:59Z"}"#, None),
            RetainedUse::At(t("2026-03-02T09:59:59Z"))
        );
        let ms = t("2026-03-02T09:59:55Z").timestamp_millis();
        assert_eq!(
            use_(format!(r#"{{"ts":{ms}}}"#).as_bytes(), None),
            RetainedUse::At(t("2026-03-02T09:59:55Z"))
        );
        // 51 s old (a dead publisher's last word): not a reading.
        assert!(matches!(
            use_(br#"{"ts":"2026-03-02T09:59:09Z"}"#, None),
            RetainedUse::Ignore(m) if m.contains("51.0 s old")
        ));
        // No newer than what the machine already said live: nothing new.
        assert!(matches!(
            use_(
                br#"{"ts":"2026-03-02T09:59:59Z"}"#,
                Some(t("2026-03-02T09:59:59.500Z"))
            ),
            RetainedUse::Ignore(_)
        ));
        // Ahead of our clock by more than two clocks disagree: not a reading.
        assert!(matches!(
            use_(br#"{"ts":"2026-03-02T10:00:30Z"}"#, None),
            RetainedUse::Ignore(_)
        ));
        // Slightly ahead: taken as now.
        assert_eq!(
            use_(br#"{"ts":"2026-03-02T10:00:01Z"}"#, None),
            RetainedUse::At(now)
        );
        // No time, or not a time: not a reading.
        for p in [
            &br#"{"heating":true}"#[..],
            br#"{"ts":"yesterday"}"#,
            b"true",
        ] {
            assert!(matches!(use_(p, None), RetainedUse::Ignore(_)), "{p:?}");
        }
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
