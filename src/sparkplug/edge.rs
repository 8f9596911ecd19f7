//! The edge node task: one MQTT connection at a time to the Sparkplug
//! broker, and the data it carries. It moves data only: what a message
//! holds is `node`'s, what is stored is `history`'s.
//!
//! Life of a connection (a loop over `Link`):
//! - `Down`: no connection; metric changes go to the store. After the
//!   back-off, the next `bdSeq` is taken from the store and a fresh rumqttc
//!   client connects with a clean session and the NDEATH of that `bdSeq` as
//!   its will.
//! - `Connecting`: waiting for CONNACK; then NCMD, DCMD and (with a primary
//!   host) the host's STATE are subscribed.
//! - `WaitingHost`: (primary host configured) until the host's STATE says
//!   online; metric changes still go to the store.
//! - `Born`: NBIRTH, a DBIRTH per machine that is not offline, then the
//!   stored values as historical DDATA, and live DDATA by exception. A
//!   machine going offline gets a DDEATH, coming back a DBIRTH. The host's
//!   STATE going offline: NDEATH, disconnect, and back to `Down`.
//!
//! Confirmation: DDATA is QoS 0 (the spec's), so the broker never
//! acknowledges it; instead a SUBSCRIBE (to the node's own NCMD topic) is
//! sent after a batch, and its SUBACK — the broker handles one connection's
//! packets in order — confirms everything sent before it. Stored rows are
//! deleted only then; live values not yet confirmed when a connection
//! breaks are stored and replayed as historical (a host may see such a
//! value twice, never not at all).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use prost::Message;
use rumqttc::{AsyncClient, Event, EventLoop, Incoming, LastWill, MqttOptions, QoS};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::history::{self, HistoryRow};
use super::metrics::{self, OrderInProgress};
use super::node::{self, Change, Current, EdgeNode, Publish};
use super::proto::Metric;
use super::{SparkplugFeed, SparkplugTap};
use crate::config::{Config, SparkplugConfig, UplinkConfig};
use crate::machine::{MachineState, MachineView};
use crate::source::{Sample, SampleContent};
use crate::store::Store;
use crate::systemd::Heartbeat;

/// How often views are looked at and changes stored.
const TICK: Duration = Duration::from_millis(200);
/// How often closed periods and orders are read from the store.
const STORE_POLL: Duration = Duration::from_secs(2);
/// How often live values published are confirmed.
const CONFIRM_EVERY: Duration = Duration::from_secs(1);
/// Stored rows replayed per batch, and batches unconfirmed at once.
const REPLAY_BATCH: usize = 500;
const REPLAY_WINDOW: usize = 4;
/// Requests rumqttc may queue; beyond, the connection counts as broken.
const CLIENT_CAPACITY: usize = 4096;
/// Biggest packet either way (a DBIRTH of a large machine).
const MAX_PACKET_BYTES: usize = 16 * 1024 * 1024;

/// Where the connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    Down,
    Connecting,
    WaitingHost,
    Born,
}

/// What one SUBACK confirms.
#[derive(Default)]
struct Confirm {
    stored: Vec<i64>,
    live: Vec<HistoryRow>,
}

/// One connection's client and event stream.
struct Connection {
    client: AsyncClient,
    events: mpsc::Receiver<Result<Event, String>>,
    task: tokio::task::JoinHandle<()>,
    bd_seq: u64,
}

/// Everything the task keeps between messages.
struct Edge {
    sp: SparkplugConfig,
    broker: UplinkConfig,
    client_id: String,
    node: EdgeNode,
    store: Store,
    views: Vec<(usize, watch::Receiver<MachineView>)>,
    link: Link,
    conn: Option<Connection>,
    /// Changes waiting to be written to the store.
    to_store: Vec<HistoryRow>,
    /// Live values published since the last confirmation request.
    live: Vec<HistoryRow>,
    confirms: VecDeque<Confirm>,
    /// Replay: last stored id looked at, and ids in flight.
    replay_after: i64,
    replaying: bool,
    replay_in_flight: HashSet<i64>,
    periods_after: Option<i64>,
    orders: HashMap<usize, OrderInProgress>,
    refused_commands: u64,
    mismatched_values: u64,
    backoff: Duration,
    reconnect_at: Instant,
}

fn now_ms() -> u64 {
    u64::try_from(Utc::now().timestamp_millis()).unwrap_or(0)
}

/// Run the edge node until `stop`. Takes the feed for its whole run (a
/// restarted edge node waits for the previous one to let go of it).
#[allow(clippy::too_many_arguments)]
pub async fn run_sparkplug(
    config: Arc<Config>,
    store: Store,
    feed: SparkplugFeed,
    tap: SparkplugTap,
    views: HashMap<String, watch::Receiver<MachineView>>,
    heartbeat: Heartbeat,
    stop: CancellationToken,
) {
    let Some(sp) = config.sparkplug.clone() else {
        return;
    };
    let Some(broker) = super::broker(&config, &sp) else {
        error!("sparkplug: no broker (set sparkplug.url or [uplink]); the edge node does not run");
        return;
    };
    let edge_node_id = super::edge_node_id(&config, &sp);
    let node = EdgeNode::new(
        &sp.group_id,
        &edge_node_id,
        config.machine.iter().map(|m| &**m),
    );
    let views = views
        .into_iter()
        .filter_map(|(id, rx)| node.device(&id).map(|d| (d, rx)))
        .collect();
    let client_id = sp
        .client_id
        .clone()
        .unwrap_or_else(|| format!("linegate-sparkplug-{}", config.gateway.id));
    let mut feed = feed.lock().await;
    // Copies that waited for a previous run are stale: the births carry now.
    while feed.try_recv().is_ok() {}
    tap.set_listening(true);
    let backoff = Duration::from_millis(sp.backoff_min_ms);
    let mut edge = Edge {
        sp,
        broker,
        client_id,
        node,
        store,
        views,
        link: Link::Down,
        conn: None,
        to_store: Vec::new(),
        live: Vec::new(),
        confirms: VecDeque::new(),
        replay_after: 0,
        replaying: false,
        replay_in_flight: HashSet::new(),
        periods_after: None,
        orders: HashMap::new(),
        refused_commands: 0,
        mismatched_values: 0,
        backoff,
        reconnect_at: Instant::now(),
    };
    info!(
        group = %edge.node.group_id,
        edge_node = %edge.node.edge_node_id,
        url = %edge.broker.url,
        primary_host = edge.sp.primary_host_id.as_deref(),
        "sparkplug edge node started"
    );
    edge.read_store().await;
    edge.look_at_views(true);
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut store_poll = tokio::time::interval(STORE_POLL);
    store_poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut confirm = tokio::time::interval(CONFIRM_EVERY);
    confirm.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        heartbeat.beat();
        tokio::select! {
            _ = stop.cancelled() => break,
            sample = feed.recv() => match sample {
                Some(s) => edge.take_sample(&s),
                None => break,
            },
            event = next_event(&mut edge.conn) => edge.on_event(event).await,
            _ = tick.tick() => {
                edge.look_at_views(false);
                if edge.link == Link::Down && Instant::now() >= edge.reconnect_at {
                    edge.connect().await;
                }
                edge.replay().await;
                edge.flush_to_store().await;
            }
            _ = confirm.tick() => edge.ask_confirmation(),
            _ = store_poll.tick() => edge.read_store().await,
        }
    }
    tap.set_listening(false);
    edge.goodbye().await;
    heartbeat.retire();
    info!("sparkplug edge node stopped");
}

async fn next_event(conn: &mut Option<Connection>) -> Option<Result<Event, String>> {
    match conn {
        Some(c) => c.events.recv().await,
        None => std::future::pending().await,
    }
}

impl Edge {
    fn state_topic(&self) -> Option<String> {
        self.sp
            .primary_host_id
            .as_ref()
            .map(|h| format!("{}/STATE/{h}", node::NAMESPACE))
    }

    // ------------------------------------------------------------------
    // Data in.

    fn take_sample(&mut self, sample: &Sample) {
        let SampleContent::Signals(readings) = &sample.content else {
            return;
        };
        let Some(device) = self.node.device(&sample.machine) else {
            return;
        };
        let at_ms = u64::try_from(sample.at.timestamp_millis()).unwrap_or(0);
        let mut changes = Vec::new();
        for (name, reading) in readings.iter() {
            let Ok(value) = reading else { continue };
            let Some(d) = self.node.devices.get(device) else {
                return;
            };
            let Some(metric) = d.catalogue.index(&metrics::signal_metric(name)) else {
                continue;
            };
            let datatype = d.catalogue.metrics[metric].datatype;
            let Some(v) = metrics::to_metric_value(datatype, value) else {
                self.mismatched_values += 1;
                if self.mismatched_values.is_power_of_two() {
                    warn!(machine = %sample.machine, signal = %name, value = %value, datatype = ?datatype,
                        count = self.mismatched_values,
                        "sparkplug: a value does not fit its metric's datatype; not sent");
                }
                continue;
            };
            if let Some(c) = self.node.set(device, metric, Some(v), at_ms) {
                changes.push(c);
            }
        }
        self.emit(device, changes);
    }

    /// Views: state metrics, and DDEATH / DBIRTH as machines go offline and
    /// come back. `quiet`: only take the values (at start).
    fn look_at_views(&mut self, quiet: bool) {
        let now = now_ms();
        for i in 0..self.views.len() {
            let (device, view) = {
                let (d, rx) = &mut self.views[i];
                if !quiet && !rx.has_changed().unwrap_or(false) {
                    continue;
                }
                (*d, rx.borrow_and_update().clone())
            };
            let at = u64::try_from(view.since.timestamp_millis()).unwrap_or(now);
            let mut changes = Vec::new();
            for (name, value) in metrics::view_values(&view) {
                // The state metrics take the time of the change; the totals now.
                let at = if name.starts_with("State/") { at } else { now };
                if let Some(c) = self.node.set_named(device, name, value, at) {
                    changes.push(c);
                }
            }
            if quiet {
                continue;
            }
            let online = view.state != MachineState::Offline;
            let born = self.node.devices.get(device).is_some_and(|d| d.born);
            if self.link == Link::Born && online && !born {
                self.device_birth(device);
                continue;
            }
            self.emit(device, changes);
            if self.link == Link::Born && !online && born {
                if let Some(p) = self.node.device_death(device, now) {
                    info!(machine = %view.machine, "sparkplug: DDEATH (machine offline)");
                    self.send(p);
                }
            }
        }
    }

    /// Closed periods and the order on each machine, from the store.
    async fn read_store(&mut self) {
        let after = self.periods_after;
        let machines: Vec<String> = self.node.devices.iter().map(|d| d.id.clone()).collect();
        let result = self
            .store
            .call(move |c| {
                let periods = history::periods_after(c, after)?;
                let mut orders = Vec::new();
                for m in machines {
                    let o = crate::orders::book::current(c, &m)?;
                    orders.push((m, o));
                }
                Ok((periods, orders))
            })
            .await;
        let (periods, orders) = match result {
            Ok(r) => r,
            Err(e) => {
                debug!(error = %e, "sparkplug: could not read periods and orders");
                return;
            }
        };
        let now = now_ms();
        // The first read only takes the values in force: the births carry them.
        let first = self.periods_after.is_none();
        let mut cursor = self.periods_after.unwrap_or(0);
        for (id, p) in periods {
            cursor = cursor.max(id);
            let Some(device) = self.node.device(&p.machine) else {
                continue;
            };
            let at = u64::try_from(p.end.timestamp_millis()).unwrap_or(now);
            let changes: Vec<Change> = metrics::period_values(&p)
                .into_iter()
                .filter_map(|(name, v)| self.node.set_named(device, name, v, at))
                .collect();
            if !first {
                self.emit(device, changes);
            }
        }
        self.periods_after = Some(cursor);
        for (machine, order) in orders {
            let Some(device) = self.node.device(&machine) else {
                continue;
            };
            let o = match order {
                Some(o) => OrderInProgress {
                    order_id: Some(o.order_id),
                    produced: o.progress.produced,
                    quantity: u64::from(o.quantity),
                },
                None => OrderInProgress::default(),
            };
            if self.orders.get(&device) == Some(&o) {
                continue;
            }
            let changes: Vec<Change> = metrics::order_values(&o)
                .into_iter()
                .filter_map(|(name, v)| self.node.set_named(device, name, v, now))
                .collect();
            self.orders.insert(device, o);
            if !first {
                self.emit(device, changes);
            }
        }
    }

    /// Send changes of one device live, or keep them for the next births.
    fn emit(&mut self, device: usize, changes: Vec<Change>) {
        if changes.is_empty() {
            return;
        }
        let born = self.node.devices.get(device).is_some_and(|d| d.born);
        if self.link == Link::Born {
            if !born {
                // Its DBIRTH carries the values of now.
                return;
            }
            let list: Vec<(usize, Current)> = changes
                .iter()
                .map(|c| (c.metric, c.current.clone()))
                .collect();
            let rows: Vec<HistoryRow> = changes.iter().filter_map(|c| self.row_of(c)).collect();
            if let Some(p) = self.node.device_data(device, &list, false, now_ms()) {
                self.send(p);
            }
            // Sent (to be confirmed), or the link broke on it: kept for later.
            if self.link == Link::Born {
                self.live.extend(rows);
            } else {
                self.to_store.extend(rows);
            }
        } else {
            let rows: Vec<HistoryRow> = changes.iter().filter_map(|c| self.row_of(c)).collect();
            self.to_store.extend(rows);
        }
    }

    fn row_of(&self, c: &Change) -> Option<HistoryRow> {
        let d = self.node.devices.get(c.device)?;
        let def = d.catalogue.metrics.get(c.metric)?;
        let metric = Metric {
            timestamp: Some(c.current.at_ms),
            datatype: Some(def.datatype.code()),
            is_null: c.current.value.is_none().then_some(true),
            value: c.current.value.clone(),
            ..Default::default()
        };
        Some(HistoryRow {
            machine: d.id.clone(),
            metric: def.name.clone(),
            telemetry: def.telemetry,
            encoded: metric.encode_to_vec(),
        })
    }

    async fn flush_to_store(&mut self) {
        if self.to_store.is_empty() {
            return;
        }
        let rows = std::mem::take(&mut self.to_store);
        let n = rows.len();
        let max = self.sp.history_max_rows;
        match self
            .store
            .call(move |c| history::append(c, &rows, max))
            .await
        {
            Ok(0) => {}
            Ok(dropped) => warn!(
                dropped,
                max_rows = max,
                "sparkplug: history full, oldest values dropped (signal values first; counted)"
            ),
            Err(e) => {
                error!(error = %e, rows = n, "sparkplug: could not store metric values for later; they are lost")
            }
        }
    }

    // ------------------------------------------------------------------
    // The connection.

    async fn connect(&mut self) {
        let edge_node = self.node.edge_node_id.clone();
        let bd_seq = match self
            .store
            .call(move |c| history::next_bd_seq(c, &edge_node))
            .await
        {
            Ok(n) => n,
            Err(e) => {
                warn!(error = %e, "sparkplug: cannot keep the next bdSeq; not connecting now");
                self.retry_later();
                return;
            }
        };
        let addr = match crate::uplink::tls::parse_url(&self.broker.url) {
            Ok(a) => a,
            Err(e) => {
                error!(error = %e, "sparkplug: bad broker url");
                self.retry_later();
                return;
            }
        };
        let mut o = MqttOptions::new(&self.client_id, &addr.host, addr.port);
        let will = self.node.node_death(bd_seq, now_ms());
        o.set_keep_alive(Duration::from_secs(self.sp.keepalive_s.max(5)))
            .set_clean_session(true)
            .set_max_packet_size(MAX_PACKET_BYTES, MAX_PACKET_BYTES)
            .set_request_channel_capacity(CLIENT_CAPACITY)
            .set_last_will(LastWill::new(
                will.topic,
                will.payload,
                QoS::AtLeastOnce,
                false,
            ));
        if addr.tls {
            match crate::uplink::tls::client_config(&self.broker) {
                Ok(c) => {
                    o.set_transport(rumqttc::Transport::tls_with_config(
                        rumqttc::TlsConfiguration::Rustls(Arc::new(c)),
                    ));
                }
                Err(e) => {
                    warn!(error = %e, "sparkplug: TLS settings unusable now; retrying");
                    self.retry_later();
                    return;
                }
            }
        }
        match (
            &self.broker.username,
            crate::uplink::tls::password(&self.broker),
        ) {
            (_, Err(e)) => {
                warn!(error = %e, "sparkplug: password unreadable now; retrying");
                self.retry_later();
                return;
            }
            (Some(u), Ok(p)) => {
                o.set_credentials(u, p.unwrap_or_default());
            }
            (None, Ok(_)) => {}
        }
        let (client, events) = AsyncClient::new(o, CLIENT_CAPACITY);
        let (tx, rx) = mpsc::channel(1024);
        let task = tokio::spawn(pump(events, tx));
        debug!(bd_seq, "sparkplug: connecting");
        self.conn = Some(Connection {
            client,
            events: rx,
            task,
            bd_seq,
        });
        self.link = Link::Connecting;
    }

    fn retry_later(&mut self) {
        self.reconnect_at = Instant::now() + self.backoff;
        self.backoff = (self.backoff * 2).min(Duration::from_millis(self.sp.backoff_max_ms));
    }

    /// The connection broke (or was closed): unconfirmed live values go to
    /// the store, stored rows in flight stay there.
    fn broken(&mut self, why: &str) {
        if self.link != Link::Down {
            warn!(reason = why, "sparkplug: connection lost");
        }
        if let Some(c) = self.conn.take() {
            c.task.abort();
        }
        self.link = Link::Down;
        for d in &mut self.node.devices {
            d.born = false;
        }
        let mut rows: Vec<HistoryRow> = self.confirms.drain(..).flat_map(|c| c.live).collect();
        rows.append(&mut self.live);
        rows.append(&mut self.to_store);
        self.to_store = rows;
        self.replaying = false;
        self.replay_in_flight.clear();
        self.retry_later();
    }

    async fn on_event(&mut self, event: Option<Result<Event, String>>) {
        let event = match event {
            Some(Ok(e)) => e,
            Some(Err(e)) => return self.broken(&e),
            None => return self.broken("event loop ended"),
        };
        let Event::Incoming(packet) = event else {
            return;
        };
        match packet {
            Incoming::ConnAck(_) => {
                self.backoff = Duration::from_millis(self.sp.backoff_min_ms);
                let mut topics = vec![
                    rumqttc::SubscribeFilter::new(self.node.ncmd_topic(), QoS::AtLeastOnce),
                    rumqttc::SubscribeFilter::new(self.node.dcmd_filter(), QoS::AtLeastOnce),
                ];
                if let Some(t) = self.state_topic() {
                    topics.push(rumqttc::SubscribeFilter::new(t, QoS::AtLeastOnce));
                }
                let sent = self
                    .conn
                    .as_ref()
                    .map(|c| c.client.try_subscribe_many(topics).is_ok());
                if sent != Some(true) {
                    return self.broken("could not subscribe");
                }
                self.confirms.push_back(Confirm::default());
                info!(
                    bd_seq = self.conn.as_ref().map(|c| c.bd_seq),
                    "sparkplug: connected"
                );
                if self.sp.primary_host_id.is_some() {
                    self.link = Link::WaitingHost;
                    info!(
                        host = self.sp.primary_host_id.as_deref(),
                        "sparkplug: waiting for the primary host's STATE online"
                    );
                } else {
                    self.birth();
                }
            }
            Incoming::SubAck(_) => {
                if let Some(done) = self.confirms.pop_front() {
                    for id in &done.stored {
                        self.replay_in_flight.remove(id);
                    }
                    if !done.stored.is_empty() {
                        let ids = done.stored;
                        if let Err(e) = self.store.call(move |c| history::delete(c, &ids)).await {
                            warn!(error = %e, "sparkplug: could not delete replayed values; they may be sent again");
                        }
                    }
                }
            }
            Incoming::Publish(p) => self.on_publish(&p.topic, &p.payload, p.retain).await,
            _ => {}
        }
    }

    async fn on_publish(&mut self, topic: &str, payload: &[u8], retained: bool) {
        if Some(topic) == self.state_topic().as_deref() {
            match node::host_online(payload) {
                Some(true) if self.link == Link::WaitingHost => {
                    info!("sparkplug: primary host online");
                    self.birth();
                }
                Some(false) if self.link == Link::Born => {
                    info!("sparkplug: primary host offline: NDEATH, disconnect, wait for it");
                    self.close().await;
                    self.broken("primary host offline");
                    // Reconnect at once, to wait for the host there.
                    self.backoff = Duration::from_millis(self.sp.backoff_min_ms);
                    self.reconnect_at = Instant::now();
                }
                Some(_) => {}
                None => warn!(topic, "sparkplug: unreadable STATE payload ignored"),
            }
        } else if topic == self.node.ncmd_topic() {
            if retained {
                // A command must not be retained (the spec); the confirming
                // SUBSCRIBEs would otherwise replay it every second.
                debug!(topic, "sparkplug: retained NCMD ignored");
                return;
            }
            match node::asks_rebirth(payload) {
                Ok(true) if self.link == Link::Born => {
                    info!("sparkplug: NCMD Node Control/Rebirth: rebirth");
                    self.birth();
                }
                Ok(_) => {}
                Err(e) => warn!(topic, error = %e, "sparkplug: undecodable NCMD ignored"),
            }
        } else if topic.contains("/DCMD/") {
            self.refused_commands += 1;
            warn!(
                topic,
                refused = self.refused_commands,
                "sparkplug: DCMD refused: linegate writes no register on Sparkplug commands (orders have their own validated path); nothing written"
            );
        }
    }

    /// NBIRTH, then a DBIRTH for every machine not offline; then replay.
    fn birth(&mut self) {
        let Some(bd_seq) = self.conn.as_ref().map(|c| c.bd_seq) else {
            return;
        };
        let now = now_ms();
        let p = self.node.node_birth(bd_seq, now);
        self.link = Link::Born;
        self.send(p);
        let online: Vec<usize> = self
            .views
            .iter()
            .filter(|(_, v)| v.borrow().state != MachineState::Offline)
            .map(|(d, _)| *d)
            .collect();
        for d in online {
            if let Some(p) = self.node.device_birth(d, now) {
                self.send(p);
            }
        }
        info!(bd_seq, "sparkplug: NBIRTH and DBIRTHs sent");
        self.start_replay();
    }

    fn device_birth(&mut self, device: usize) {
        if let Some(p) = self.node.device_birth(device, now_ms()) {
            info!(machine = %self.node.devices[device].id, "sparkplug: DBIRTH (machine online)");
            self.send(p);
            // Values stored for it while it was unborn can go now.
            self.start_replay();
        }
    }

    fn start_replay(&mut self) {
        self.replaying = true;
        self.replay_after = 0;
    }

    fn send(&mut self, p: Publish) {
        if self.conn.is_none() {
            return;
        }
        let ok = self.conn.as_ref().is_some_and(|c| {
            c.client
                .try_publish(p.topic, QoS::AtMostOnce, false, p.payload)
                .is_ok()
        });
        if !ok {
            self.broken("client queue full");
        }
    }

    /// Ask the broker to confirm what was sent live since the last time.
    fn ask_confirmation(&mut self) {
        if self.link != Link::Born || self.live.is_empty() {
            return;
        }
        let live = std::mem::take(&mut self.live);
        self.barrier(Confirm {
            stored: Vec::new(),
            live,
        });
    }

    fn barrier(&mut self, confirm: Confirm) {
        let topic = self.node.ncmd_topic();
        let ok = self
            .conn
            .as_ref()
            .is_some_and(|c| c.client.try_subscribe(topic, QoS::AtLeastOnce).is_ok());
        self.confirms.push_back(confirm);
        if !ok {
            self.broken("client queue full");
        }
    }

    /// Send stored values as historical DDATA, a batch at a time.
    async fn replay(&mut self) {
        while self.link == Link::Born
            && self.replaying
            && self
                .confirms
                .iter()
                .filter(|c| !c.stored.is_empty())
                .count()
                < REPLAY_WINDOW
        {
            let after = self.replay_after;
            let rows = match self
                .store
                .call(move |c| history::rows_after(c, after, REPLAY_BATCH))
                .await
            {
                Ok(r) => r,
                Err(e) => {
                    warn!(error = %e, "sparkplug: cannot read stored values now");
                    return;
                }
            };
            let Some((last, _)) = rows.last() else {
                self.replaying = false;
                return;
            };
            self.replay_after = *last;
            let now = now_ms();
            let mut sent = Vec::new();
            let mut unusable = Vec::new();
            let mut batch: Vec<(usize, Current)> = Vec::new();
            let mut batch_device: Option<usize> = None;
            for (id, row) in rows {
                if self.replay_in_flight.contains(&id) {
                    continue;
                }
                let Some(device) = self.node.device(&row.machine) else {
                    unusable.push(id);
                    continue;
                };
                let Some(d) = self.node.devices.get(device) else {
                    continue;
                };
                if !d.born {
                    // Kept until the machine's next DBIRTH.
                    continue;
                }
                let decoded = Metric::decode(row.encoded.as_slice()).ok();
                let metric = d.catalogue.index(&row.metric);
                let (Some(m), Some(metric)) = (decoded, metric) else {
                    unusable.push(id);
                    continue;
                };
                if m.datatype != Some(d.catalogue.metrics[metric].datatype.code()) {
                    unusable.push(id);
                    continue;
                }
                if batch_device != Some(device) && !batch.is_empty() {
                    if let Some(p) =
                        batch_device.and_then(|bd| self.node.device_data(bd, &batch, true, now))
                    {
                        self.send(p);
                    }
                    batch.clear();
                }
                batch_device = Some(device);
                batch.push((
                    metric,
                    Current {
                        value: m.value,
                        at_ms: m.timestamp.unwrap_or(now),
                    },
                ));
                sent.push(id);
            }
            if let Some(p) =
                batch_device.and_then(|bd| self.node.device_data(bd, &batch, true, now))
            {
                self.send(p);
            }
            if self.link != Link::Born {
                return;
            }
            if !unusable.is_empty() {
                warn!(
                    rows = unusable.len(),
                    "sparkplug: stored values of machines or metrics no longer configured dropped"
                );
            }
            let mut stored = sent;
            self.replay_in_flight.extend(stored.iter().copied());
            stored.extend(unusable);
            if !stored.is_empty() {
                self.barrier(Confirm {
                    stored,
                    live: Vec::new(),
                });
            }
        }
    }

    /// Publish NDEATH and disconnect cleanly; wait briefly for it to go out.
    async fn close(&mut self) {
        let Some(mut c) = self.conn.take() else {
            return;
        };
        if matches!(self.link, Link::Born | Link::WaitingHost | Link::Connecting) {
            let death = self.node.node_death(c.bd_seq, now_ms());
            let _ = c
                .client
                .try_publish(death.topic, QoS::AtLeastOnce, false, death.payload);
            let _ = c.client.try_disconnect();
            let _ = tokio::time::timeout(Duration::from_secs(2), async {
                while let Some(Ok(ev)) = c.events.recv().await {
                    if matches!(ev, Event::Outgoing(rumqttc::Outgoing::Disconnect)) {
                        break;
                    }
                }
            })
            .await;
        }
        c.task.abort();
    }

    async fn goodbye(&mut self) {
        self.close().await;
        self.conn = None;
        self.link = Link::Down;
        // What no broker confirmed is kept for the next run, as historical.
        let mut rows: Vec<HistoryRow> = self.confirms.drain(..).flat_map(|c| c.live).collect();
        rows.append(&mut self.live);
        rows.append(&mut self.to_store);
        self.to_store = rows;
        self.flush_to_store().await;
    }
}

/// Poll rumqttc's event loop in its own task, so no select cancels it
/// half-way; the first error ends it.
async fn pump(mut events: EventLoop, tx: mpsc::Sender<Result<Event, String>>) {
    loop {
        let ev = events.poll().await;
        let stop = ev.is_err();
        if tx.send(ev.map_err(|e| e.to_string())).await.is_err() || stop {
            break;
        }
    }
}
