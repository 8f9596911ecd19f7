//! One connection to the central broker, from CONNECT to its end: a fresh
//! rumqttc client and event loop with the will, the birth first (both carry
//! the session number the caller committed for this connection, see
//! `session`), then the outbox drained in
//! `seq` order through a bounded in-flight window, order commands handed to
//! the orders task and acknowledged only after they are committed. The
//! connection never decides to retry (the caller does, with backoff) and
//! never deletes a row itself: PUBACKed seqs go to the deleter.
//!
//! Sending order: rows stored while the link was up ("live") go first, in
//! `seq` order, as fast as the window allows; rows stored while it was down
//! ("historical", sent with `historical: true`) go in `seq` order too, paced
//! by `historical_per_s` and limited to three quarters of the window, so a
//! new state change never waits behind a week of stored telemetry. Each
//! stream is ordered by `seq`; the two interleave. Because they interleave, a
//! retained row (a machine's state) is published with the retain flag only
//! if no newer row of its topic was handed over before it in this run of the
//! agent: a stale state from the backlog must not replace the retained
//! latest one on the broker.
//!
//! Historical rows are read ahead: the next read runs on the store thread
//! (its own task) while the rows already read are handed over one by one as
//! PUBACKs free the window, so a drain never waits for the store between
//! chunks. The rows in memory are a copy: a row leaves the store only after
//! its PUBACK, and a new connection reads from the store again.
//!
//! Packet ids: rumqttc takes requests from its channel in order and reports
//! `Outgoing::Publish(pkid)` for each publish in the same order, so a FIFO of
//! what was handed over maps each packet id to its seq; the PUBACK of that
//! packet id then releases it (for MQTT 5 only with a success reason code).
//! The event loop runs in its own task and reports through a channel, so no
//! select ever cancels it half-way through a write.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use rumqttc::v5;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::message::{self, GatewayInfo, StatusCounts, ORDERS_CMD_SUFFIX, STATUS_SUFFIX};
use super::outbox::{self, OutboxRow, Stream};
use super::pacing::RateLimit;
use super::session;
use super::{ConnectSettings, Credentials, ErrorKind, UplinkStats};
use crate::config::MqttVersion;
use crate::orders::OrderMessage;
use crate::store::{Store, StoreError};
use crate::systemd::Heartbeat;

/// Most messages published and not yet PUBACKed at once.
pub const WINDOW: usize = 128;
/// Historical messages may fill at most this much of the window.
const HISTORICAL_WINDOW: usize = WINDOW * 3 / 4;
/// Historical rows read from the store per read. The next read starts while
/// at most this many are left in memory, so the window refills from memory
/// as PUBACKs come and never waits for the store (see `HistoricalRead`).
const HISTORICAL_READ: usize = WINDOW;
/// Biggest packet either way; a bigger outbox row is dropped with an error.
pub const MAX_PACKET_BYTES: usize = 4 * 1024 * 1024;
/// Biggest packet accepted from the broker over MQTT 3.1.1. MQTT 3.1.1 cannot
/// tell the broker a limit, and a packet above the client's limit breaks the
/// connection: the broker would then redeliver that one message on every
/// connect (persistent session) and stall the uplink. So the limit is far
/// above any real order message: an oversized order arrives, is answered
/// `rejected` (orders' own limit is 64 KiB) and acknowledged. (MQTT 5
/// announces MAX_PACKET_BYTES in CONNECT and the broker drops bigger ones.)
const MAX_INCOMING_V311_BYTES: usize = 64 * 1024 * 1024;
/// How long a clean shutdown waits for the PUBACK of `online: false`.
const GOODBYE_WAIT: Duration = Duration::from_secs(2);
/// MQTT 5 session expiry: orders sent while we are away wait this long.
const SESSION_EXPIRY_S: u32 = 7 * 24 * 3600;

/// Everything a connection needs that outlives it.
pub(super) struct Shared {
    pub settings: ConnectSettings,
    pub gateway: GatewayInfo,
    pub store: Store,
    pub wake: Arc<Notify>,
    /// Rows just committed, in memory (see `fresh`): sent without a read.
    pub fresh: Arc<super::fresh::FreshRows>,
    pub orders: mpsc::Sender<OrderMessage>,
    pub stats: Arc<UplinkStats>,
    pub shutdown: CancellationToken,
    /// PUBACKed seqs, deleted in batches by the deleter task.
    pub acked: mpsc::UnboundedSender<u64>,
    /// Beats on every turn of the connection loops, for the watchdog.
    pub heartbeat: Heartbeat,
    /// Topic suffix → newest seq handed over with the retain flag, across
    /// connections: an older row of the same topic goes without retain.
    pub retained: std::sync::Mutex<HashMap<String, u64>>,
}

impl Shared {
    /// Whether the row `seq` of `topic_suffix` may replace the broker's
    /// retained message: true unless a newer one was handed over already
    /// (the live stream overtook the backlog). Notes it when true.
    fn newest_retained(&self, topic_suffix: &str, seq: u64) -> bool {
        let Ok(mut newest) = self.retained.lock() else {
            return true;
        };
        match newest.get(topic_suffix) {
            Some(&n) if n > seq => false,
            _ => {
                newest.insert(topic_suffix.to_string(), seq);
                true
            }
        }
    }
}

/// How a connection ended.
#[derive(Debug)]
pub(super) enum Ended {
    /// Shutdown was asked; goodbye said if the link was up.
    Shutdown,
    /// The connection failed or was lost.
    Lost {
        /// A CONNACK arrived.
        connected: bool,
        /// The CONNECT may have reached a broker (see `session`): its
        /// session number is used up. False only when it certainly did not.
        session_spent: bool,
        /// The birth was PUBACKed: the broker accepts us, reset the backoff.
        healthy: bool,
        error: String,
    },
}

/// What a handed-over publish is, until its PUBACK.
#[derive(Debug, Clone, Copy)]
enum Tag {
    Birth,
    Goodbye,
    Row { seq: u64, historical: bool },
}

// ---------------------------------------------------------------------------
// A thin adapter over rumqttc's two protocol stacks (3.1.1 and 5).

enum Client {
    V4(rumqttc::AsyncClient),
    V5(v5::AsyncClient),
}

enum Incoming {
    V4(rumqttc::Publish),
    V5(v5::mqttbytes::v5::Publish),
}

/// Why the event loop stopped, for the log and for the session rule.
struct LinkError {
    /// What went wrong, in words a user can act on.
    text: String,
    /// The error proves the CONNECT never reached a broker's session (see
    /// `session`); only meaningful before the CONNACK.
    connect_never_sent: bool,
}

impl LinkError {
    /// The event loop ended without an error (its task was stopped).
    fn stopped() -> LinkError {
        LinkError {
            text: "event loop stopped".into(),
            connect_never_sent: false,
        }
    }
}

/// What the event loop reports, in protocol-neutral words.
enum LinkEvent {
    ConnAck {
        session_present: bool,
    },
    /// A publish was written with this packet id.
    Sent {
        pkid: u16,
    },
    /// A PUBACK; `Err` holds the MQTT 5 failure reason.
    PubAck {
        pkid: u16,
        result: Result<(), String>,
    },
    Publish {
        topic: String,
        payload: Vec<u8>,
        packet: Box<Incoming>,
    },
    DisconnectSent,
    Other,
}

impl Client {
    fn publish(&self, topic: String, retain: bool, payload: Vec<u8>) -> Result<(), String> {
        match self {
            Client::V4(c) => c
                .try_publish(topic, rumqttc::QoS::AtLeastOnce, retain, payload)
                .map_err(|e| e.to_string()),
            Client::V5(c) => c
                .try_publish(topic, v5::mqttbytes::QoS::AtLeastOnce, retain, payload)
                .map_err(|e| e.to_string()),
        }
    }

    fn subscribe(&self, topic: String) -> Result<(), String> {
        match self {
            Client::V4(c) => c
                .try_subscribe(topic, rumqttc::QoS::AtLeastOnce)
                .map_err(|e| e.to_string()),
            Client::V5(c) => c
                .try_subscribe(topic, v5::mqttbytes::QoS::AtLeastOnce)
                .map_err(|e| e.to_string()),
        }
    }

    fn ack(&self, packet: &Incoming) -> Result<(), String> {
        match (self, packet) {
            (Client::V4(c), Incoming::V4(p)) => c.try_ack(p).map_err(|e| e.to_string()),
            (Client::V5(c), Incoming::V5(p)) => c.try_ack(p).map_err(|e| e.to_string()),
            _ => Err("protocol mismatch".into()),
        }
    }

    fn disconnect(&self) -> Result<(), String> {
        match self {
            Client::V4(c) => c.try_disconnect().map_err(|e| e.to_string()),
            Client::V5(c) => c.try_disconnect().map_err(|e| e.to_string()),
        }
    }
}

fn v4_event(ev: rumqttc::Event) -> LinkEvent {
    use rumqttc::{Event, Outgoing, Packet};
    match ev {
        Event::Incoming(Packet::ConnAck(c)) => LinkEvent::ConnAck {
            session_present: c.session_present,
        },
        Event::Incoming(Packet::PubAck(a)) => LinkEvent::PubAck {
            pkid: a.pkid,
            result: Ok(()),
        },
        Event::Incoming(Packet::Publish(p)) => LinkEvent::Publish {
            topic: p.topic.clone(),
            payload: p.payload.to_vec(),
            packet: Box::new(Incoming::V4(p)),
        },
        Event::Outgoing(Outgoing::Publish(pkid)) => LinkEvent::Sent { pkid },
        Event::Outgoing(Outgoing::Disconnect) => LinkEvent::DisconnectSent,
        _ => LinkEvent::Other,
    }
}

fn v5_event(ev: v5::Event) -> LinkEvent {
    use v5::mqttbytes::v5::{Packet, PubAckReason};
    use v5::Event;
    match ev {
        Event::Incoming(Packet::ConnAck(c)) => LinkEvent::ConnAck {
            session_present: c.session_present,
        },
        Event::Incoming(Packet::PubAck(a)) => LinkEvent::PubAck {
            pkid: a.pkid,
            result: match a.reason {
                PubAckReason::Success | PubAckReason::NoMatchingSubscribers => Ok(()),
                other => Err(format!("{other:?}")),
            },
        },
        Event::Incoming(Packet::Publish(p)) => LinkEvent::Publish {
            topic: String::from_utf8_lossy(&p.topic).into_owned(),
            payload: p.payload.to_vec(),
            packet: Box::new(Incoming::V5(p)),
        },
        Event::Outgoing(rumqttc::Outgoing::Publish(pkid)) => LinkEvent::Sent { pkid },
        Event::Outgoing(rumqttc::Outgoing::Disconnect) => LinkEvent::DisconnectSent,
        _ => LinkEvent::Other,
    }
}

/// A fresh client and its event loop, running in its own task.
fn open(
    s: &ConnectSettings,
    credentials: Credentials,
    will_payload: Vec<u8>,
    status_topic: &str,
) -> (
    Client,
    mpsc::Receiver<Result<LinkEvent, LinkError>>,
    JoinHandle<()>,
) {
    let (tx, rx) = mpsc::channel(WINDOW * 2);
    let capacity = WINDOW * 2 + 64;
    let describe = s.describe_error.clone();
    match s.protocol {
        MqttVersion::V311 => {
            let mut o = rumqttc::MqttOptions::new(&s.client_id, &s.addr.host, s.addr.port);
            o.set_keep_alive(Duration::from_secs(s.keepalive_s))
                .set_clean_session(false)
                .set_manual_acks(true)
                .set_inflight(WINDOW as u16)
                .set_request_channel_capacity(capacity)
                .set_max_packet_size(MAX_INCOMING_V311_BYTES, MAX_PACKET_BYTES)
                .set_last_will(rumqttc::LastWill::new(
                    status_topic,
                    will_payload,
                    rumqttc::QoS::AtLeastOnce,
                    true,
                ));
            if let Some(t) = &credentials.transport {
                o.set_transport(t.clone());
            }
            if let Some((u, p)) = &credentials.login {
                o.set_credentials(u, p);
            }
            let (client, mut events) = rumqttc::AsyncClient::new(o, capacity);
            let task = tokio::spawn(async move {
                loop {
                    let ev = events.poll().await;
                    let stop = ev.is_err();
                    let ev = ev.map(v4_event).map_err(|e| LinkError {
                        text: describe(&e.to_string(), kind_v4(&e)),
                        connect_never_sent: never_sent_v4(&e),
                    });
                    if tx.send(ev).await.is_err() || stop {
                        break;
                    }
                }
            });
            (Client::V4(client), rx, task)
        }
        MqttVersion::V5 => {
            let mut o = v5::MqttOptions::new(&s.client_id, &s.addr.host, s.addr.port);
            o.set_keep_alive(Duration::from_secs(s.keepalive_s))
                .set_clean_start(false)
                .set_session_expiry_interval(Some(SESSION_EXPIRY_S))
                .set_manual_acks(true)
                .set_outgoing_inflight_upper_limit(WINDOW as u16)
                .set_request_channel_capacity(capacity)
                .set_max_packet_size(Some(MAX_PACKET_BYTES as u32))
                .set_last_will(v5::mqttbytes::v5::LastWill::new(
                    status_topic,
                    will_payload,
                    v5::mqttbytes::QoS::AtLeastOnce,
                    true,
                    None,
                ));
            if let Some(t) = &credentials.transport {
                o.set_transport(t.clone());
            }
            if let Some((u, p)) = &credentials.login {
                o.set_credentials(u, p);
            }
            let (client, mut events) = v5::AsyncClient::new(o, capacity);
            let task = tokio::spawn(async move {
                loop {
                    let ev = events.poll().await;
                    let stop = ev.is_err();
                    let ev = ev.map(v5_event).map_err(|e| LinkError {
                        text: describe(&e.to_string(), kind_v5(&e)),
                        connect_never_sent: never_sent_v5(&e),
                    });
                    if tx.send(ev).await.is_err() || stop {
                        break;
                    }
                }
            });
            (Client::V5(client), rx, task)
        }
    }
}

fn kind_v4(e: &rumqttc::ConnectionError) -> ErrorKind {
    use rumqttc::{ConnectReturnCode as C, ConnectionError as E};
    match e {
        E::Tls(_) => ErrorKind::Tls,
        E::ConnectionRefused(C::BadUserNamePassword | C::NotAuthorized) => ErrorKind::Credentials,
        _ => ErrorKind::Other,
    }
}

/// A failed attempt whose CONNECT never reached a broker's session: the TCP
/// connect failed, the TLS handshake failed (CONNECT goes after it), or the
/// broker refused the CONNECT in its CONNACK (a refused client has no will).
fn never_sent_v4(e: &rumqttc::ConnectionError) -> bool {
    use rumqttc::ConnectionError as E;
    match e {
        E::Io(io) => session::connect_never_sent(io),
        E::Tls(_) | E::ConnectionRefused(_) => true,
        _ => false,
    }
}

/// As [`never_sent_v4`], for MQTT 5.
fn never_sent_v5(e: &v5::ConnectionError) -> bool {
    use v5::ConnectionError as E;
    match e {
        E::Io(io) => session::connect_never_sent(io),
        E::Tls(_) | E::ConnectionRefused(_) => true,
        _ => false,
    }
}

fn kind_v5(e: &v5::ConnectionError) -> ErrorKind {
    use v5::mqttbytes::v5::ConnectReturnCode as C;
    use v5::ConnectionError as E;
    match e {
        E::Tls(_) => ErrorKind::Tls,
        E::ConnectionRefused(
            C::BadUserNamePassword | C::NotAuthorized | C::BadAuthenticationMethod,
        ) => ErrorKind::Credentials,
        _ => ErrorKind::Other,
    }
}

// ---------------------------------------------------------------------------

/// A read of historical rows running on the store thread while the
/// connection goes on sending: `(wakes when it started, rows asked, rows)`.
/// Its own task (a read only: left to finish if the connection ends).
type HistoricalRead = JoinHandle<(u64, usize, Result<Vec<OutboxRow>, StoreError>)>;

/// An order command waiting for its commit before its PUBACK goes back.
struct PendingAck {
    packet: Box<Incoming>,
    committed: oneshot::Receiver<()>,
}

/// The state of one connection.
struct Connection<'a> {
    shared: &'a Shared,
    client: Client,
    events: mpsc::Receiver<Result<LinkEvent, LinkError>>,
    /// Handed to rumqttc, packet id not yet known (FIFO, see module doc).
    handed: VecDeque<Tag>,
    /// Written with this packet id, PUBACK not yet received.
    in_flight: HashMap<u16, Tag>,
    historical_in_flight: usize,
    /// Highest seq handed over per stream in this connection.
    live_cursor: u64,
    /// For the historical stream: the highest seq read from the store (the
    /// rows up to it are sent or wait in `historical_rows`).
    historical_cursor: u64,
    /// The stream may hold rows beyond its cursor (cleared when a fetch came back short).
    live_more: bool,
    historical_more: bool,
    /// Historical rows read ahead, in seq order, not yet handed over. Only a
    /// copy: the rows stay in the store until their PUBACK, and a new
    /// connection reads them again.
    historical_rows: VecDeque<OutboxRow>,
    /// The read of the next historical rows, while one runs.
    historical_read: Option<HistoricalRead>,
    /// Wakes seen (rows were committed): a read that started before the
    /// last wake and came back short does not prove the stream empty.
    wakes: u64,
    /// A wake arrived: send a new live row now even if the window is half full.
    urgent: bool,
    /// Rows may wait in `shared.fresh`.
    fresh_waiting: bool,
    pace: RateLimit,
    /// Orders received, not yet handed to the orders task.
    to_orders: VecDeque<OrderMessage>,
    /// Orders handed over, waiting for their commit, in order of arrival.
    pending_acks: VecDeque<PendingAck>,
    orders_closed: bool,
    birth_acked: bool,
    goodbye_acked: bool,
    prefix: String,
}

/// Run one connection until it is lost or shutdown is asked. `session` is
/// this connection's number, committed before the call: its birth, will and
/// goodbye carry it.
pub(super) async fn run(shared: &Shared, session: u64) -> Result<Ended, StoreError> {
    let gw = &shared.gateway;
    let counts = status_counts(&shared.store).await?;
    let now = Utc::now();
    let status_topic = format!("{}/{}", gw.prefix, STATUS_SUFFIX);
    let will = message::offline_payload(gw, session, now, counts);
    // The files are read for every connection: one missing or empty now
    // (being rotated) fails this attempt, before any CONNECT, and the next
    // one reads it again.
    let credentials = match shared.settings.credentials() {
        Ok(c) => c,
        Err(e) => {
            return Ok(Ended::Lost {
                connected: false,
                session_spent: false,
                healthy: false,
                error: e.to_string(),
            })
        }
    };
    let (client, events, task) = open(&shared.settings, credentials, will, &status_topic);

    let mut c = Connection {
        shared,
        client,
        events,
        handed: VecDeque::new(),
        in_flight: HashMap::new(),
        historical_in_flight: 0,
        live_cursor: 0,
        historical_cursor: 0,
        live_more: true,
        historical_more: true,
        historical_rows: VecDeque::new(),
        historical_read: None,
        wakes: 0,
        urgent: false,
        fresh_waiting: true,
        pace: RateLimit::new(shared.settings.historical_per_s, Instant::now()),
        to_orders: VecDeque::new(),
        pending_acks: VecDeque::new(),
        orders_closed: false,
        birth_acked: false,
        goodbye_acked: false,
        prefix: gw.prefix.clone(),
    };
    // Birth first: it is the first request in the channel, so the first
    // packet after CONNECT.
    let birth = message::birth_payload(gw, session, now, counts);
    let mut ended = match c.client.publish(status_topic.clone(), true, birth) {
        Ok(()) => {
            c.handed.push_back(Tag::Birth);
            c.client
                .subscribe(format!("{}/{}", gw.prefix, ORDERS_CMD_SUFFIX))
                .map_err(|e| Ended::Lost {
                    connected: false,
                    session_spent: true,
                    healthy: false,
                    error: e,
                })
        }
        Err(e) => Err(Ended::Lost {
            connected: false,
            session_spent: true,
            healthy: false,
            error: e,
        }),
    };
    if ended.is_ok() {
        ended = c.connect_and_serve(session).await?;
    }
    task.abort();
    Ok(match ended {
        Ok(()) | Err(Ended::Shutdown) => Ended::Shutdown,
        Err(lost) => lost,
    })
}

async fn status_counts(store: &Store) -> Result<StatusCounts, StoreError> {
    let (k, lost) = store
        .call(|c| Ok((outbox::counts(c)?, crate::store::health::lost_events(c)?)))
        .await?;
    // Plus what could not be stored yet (a full disk): counted, not yet written.
    let unstored = store.health().unstored();
    Ok(StatusCounts {
        dropped_telemetry: k.dropped + unstored.telemetry,
        outbox_depth: k.depth,
        lost_events: lost + unstored.lost_events,
    })
}

impl Connection<'_> {
    fn lost(&self, connected: bool, error: LinkError) -> Ended {
        Ended::Lost {
            connected,
            session_spent: connected || !error.connect_never_sent,
            healthy: self.birth_acked,
            error: error.text,
        }
    }

    /// Wait for CONNACK, then serve until the end. `Err(Ended)` is the normal way out.
    async fn connect_and_serve(&mut self, session: u64) -> Result<Result<(), Ended>, StoreError> {
        // CONNACK (the event loop connects on its first poll).
        let mut beat = self.shared.heartbeat.ticker();
        loop {
            self.shared.heartbeat.beat();
            tokio::select! {
                _ = beat.tick() => {}
                _ = self.shared.shutdown.cancelled() => return Ok(Err(Ended::Shutdown)),
                ev = self.events.recv() => match ev {
                    Some(Ok(LinkEvent::ConnAck { session_present })) => {
                        tracing::info!(
                            broker = %self.shared.settings.addr.host,
                            port = self.shared.settings.addr.port,
                            session_present,
                            "uplink connected"
                        );
                        break;
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Ok(Err(self.lost(false, e))),
                    None => return Ok(Err(self.lost(false, LinkError::stopped()))),
                }
            }
        }
        let stats = &self.shared.stats;
        if stats.connects.fetch_add(1, Ordering::Relaxed) > 0 {
            stats.reconnects.fetch_add(1, Ordering::Relaxed);
        }
        stats.connected.store(true, Ordering::Relaxed);
        // Not worth losing the connection over (a full disk): rows stored
        // meanwhile are then sent as historical, nothing else changes.
        if let Err(e) = self
            .shared
            .store
            .call(|c| outbox::set_link_up(c, true))
            .await
        {
            if matches!(e, StoreError::Closed) {
                return Err(e);
            }
            tracing::warn!(error = %e, "could not mark the link up in the store");
        }

        loop {
            self.shared.heartbeat.beat();
            self.refill().await?;
            self.read_ahead();
            let hist_waiting = !self.historical_rows.is_empty()
                && self.historical_in_flight < HISTORICAL_WINDOW
                && self.in_flight_total() < WINDOW;
            let next_token = self.pace.next_token_at();
            tokio::select! {
                biased;
                _ = self.shared.shutdown.cancelled() => {
                    return Ok(self.goodbye(session).await);
                }
                ev = self.events.recv() => match ev {
                    Some(Ok(ev)) => self.on_event(ev),
                    Some(Err(e)) => return Ok(Err(self.lost(true, e))),
                    None => return Ok(Err(self.lost(true, LinkError::stopped()))),
                },
                (wakes, asked, rows) = read_done(&mut self.historical_read) => {
                    self.historical_read = None;
                    self.on_historical_read(wakes, asked, rows?);
                }
                r = front_committed(&mut self.pending_acks) => self.on_committed(r),
                permit = self.shared.orders.reserve(), if !self.to_orders.is_empty() && !self.orders_closed => {
                    match permit {
                        Ok(p) => {
                            if let Some(m) = self.to_orders.pop_front() {
                                p.send(m);
                            }
                        }
                        Err(_) => {
                            tracing::error!("orders task has stopped: order commands stay unacknowledged and come again on the next connection");
                            self.orders_closed = true;
                            self.to_orders.clear();
                        }
                    }
                }
                _ = self.shared.wake.notified() => {
                    self.live_more = true;
                    self.historical_more = true;
                    self.urgent = true;
                    self.wakes += 1;
                }
                _ = self.shared.fresh.notified() => {
                    self.fresh_waiting = true;
                    self.urgent = true;
                }
                _ = tokio::time::sleep_until(next_token), if hist_waiting => {}
                _ = beat.tick() => {}
            }
        }
    }

    fn in_flight_total(&self) -> usize {
        self.handed.len() + self.in_flight.len()
    }

    /// Hand more outbox rows to rumqttc while the window has room.
    async fn refill(&mut self) -> Result<(), StoreError> {
        let room = WINDOW.saturating_sub(self.in_flight_total());
        // Live rows in chunks (fewer store round trips), except for a fresh
        // live row. Historical rows come from memory (read ahead), as many
        // as the window and the pace allow, also one at a time.
        let worth_it = room >= WINDOW / 2 || (self.urgent && room > 0);
        if worth_it {
            self.urgent = false;
            self.refill_live(room).await?;
        }
        let room = WINDOW.saturating_sub(self.in_flight_total());
        let hist_room = room.min(HISTORICAL_WINDOW.saturating_sub(self.historical_in_flight));
        if hist_room > 0 && !self.historical_rows.is_empty() {
            let now = Instant::now();
            let n = hist_room
                .min(self.pace.available(now))
                .min(self.historical_rows.len());
            if n > 0 {
                self.pace.take(n, now);
                for _ in 0..n {
                    if let Some(row) = self.historical_rows.pop_front() {
                        self.send_row(row).await?;
                    }
                }
            }
        }
        Ok(())
    }

    async fn refill_live(&mut self, room: usize) -> Result<(), StoreError> {
        // Rows just committed that follow the cursor: no read (see `fresh`).
        let mut room = room;
        if self.fresh_waiting && !self.live_more {
            let taken = self.shared.fresh.take(self.live_cursor, room);
            self.fresh_waiting = taken.more;
            self.live_more = taken.read_store;
            room -= taken.rows.len();
            for row in taken.rows {
                self.live_cursor = row.seq;
                self.send_row(row).await?;
            }
        }
        if self.live_more && room > 0 {
            let after = self.live_cursor;
            let rows = self
                .shared
                .store
                .call(move |c| outbox::next_batch(c, Stream::Live, after, room))
                .await?;
            if rows.len() < room {
                self.live_more = false;
            }
            for row in rows {
                self.live_cursor = row.seq;
                self.send_row(row).await?;
            }
        }
        Ok(())
    }

    /// Start reading the next historical rows when few are left in memory
    /// and none is being read. The read runs on the store thread while the
    /// connection keeps sending and taking PUBACKs.
    fn read_ahead(&mut self) {
        if !self.historical_more
            || self.historical_read.is_some()
            || self.historical_rows.len() > HISTORICAL_READ
        {
            return;
        }
        let store = self.shared.store.clone();
        let after = self.historical_cursor;
        let wakes = self.wakes;
        self.historical_read = Some(tokio::spawn(async move {
            let rows = store
                .call(move |c| outbox::next_batch(c, Stream::Historical, after, HISTORICAL_READ))
                .await;
            (wakes, HISTORICAL_READ, rows)
        }));
    }

    /// Historical rows read: queue them behind those already in memory.
    fn on_historical_read(&mut self, wakes: u64, asked: usize, rows: Vec<OutboxRow>) {
        // Short: the stream is empty past the cursor, unless rows were
        // committed (a wake) after the read started.
        if rows.len() < asked && wakes == self.wakes {
            self.historical_more = false;
        }
        if let Some(last) = rows.last() {
            self.historical_cursor = last.seq;
        }
        self.historical_rows.extend(rows);
    }

    async fn send_row(&mut self, row: OutboxRow) -> Result<(), StoreError> {
        let seq = row.seq;
        let payload = match message::row_payload(&self.shared.gateway.id, &row) {
            Ok(p)
                if p.len() + row.topic_suffix.len() + self.prefix.len() + 16
                    <= MAX_PACKET_BYTES =>
            {
                p
            }
            Ok(p) => {
                tracing::error!(
                    seq,
                    bytes = p.len(),
                    "outbox row too big for one MQTT packet: dropped"
                );
                self.forget_row(seq).await?;
                return Ok(());
            }
            Err(e) => {
                tracing::error!(seq, error = %e, "outbox row unreadable: dropped");
                self.forget_row(seq).await?;
                return Ok(());
            }
        };
        let topic = format!("{}/{}", self.prefix, row.topic_suffix);
        let retain = row.retain && self.shared.newest_retained(&row.topic_suffix, seq);
        match self.client.publish(topic, retain, payload) {
            Ok(()) => {
                self.handed.push_back(Tag::Row {
                    seq,
                    historical: row.stored_offline,
                });
                if row.stored_offline {
                    self.historical_in_flight += 1;
                }
                self.shared.stats.sent.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                // Only when rumqttc's channel is closed or full: the row stays
                // and goes again on the next connection.
                tracing::warn!(seq, error = %e, "could not hand a message to the MQTT client");
            }
        }
        Ok(())
    }

    /// Remove a row that can never be sent, counting it as dropped.
    async fn forget_row(&self, seq: u64) -> Result<(), StoreError> {
        self.shared
            .store
            .call(move |c| outbox::drop_unsendable(c, seq))
            .await
    }

    fn on_event(&mut self, ev: LinkEvent) {
        match ev {
            LinkEvent::Sent { pkid } => {
                if let Some(tag) = self.handed.pop_front() {
                    self.in_flight.insert(pkid, tag);
                }
            }
            LinkEvent::PubAck { pkid, result } => {
                let Some(tag) = self.in_flight.remove(&pkid) else {
                    return;
                };
                if let Tag::Row {
                    historical: true, ..
                } = tag
                {
                    self.historical_in_flight = self.historical_in_flight.saturating_sub(1);
                }
                if let Err(reason) = result {
                    // MQTT 5 failure code: the broker did not take it. The row
                    // stays and goes again on the next connection.
                    tracing::warn!(?tag, %reason, "broker refused a message");
                    self.shared.stats.rejected.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                match tag {
                    Tag::Birth => self.birth_acked = true,
                    Tag::Goodbye => self.goodbye_acked = true,
                    Tag::Row { seq, .. } => {
                        self.shared.stats.acked.fetch_add(1, Ordering::Relaxed);
                        let _ = self.shared.acked.send(seq);
                    }
                }
            }
            LinkEvent::Publish {
                topic,
                payload,
                packet,
            } => {
                let cmd_topic = format!("{}/{}", self.prefix, ORDERS_CMD_SUFFIX);
                if topic != cmd_topic || self.orders_closed {
                    if topic != cmd_topic {
                        tracing::warn!(%topic, "message on an unexpected topic: ignored");
                        if let Err(e) = self.client.ack(&packet) {
                            tracing::warn!(error = %e, "could not acknowledge a message");
                        }
                    }
                    return;
                }
                let (tx, rx) = oneshot::channel();
                self.to_orders.push_back(OrderMessage {
                    payload,
                    committed: tx,
                });
                self.pending_acks.push_back(PendingAck {
                    packet,
                    committed: rx,
                });
            }
            LinkEvent::ConnAck { .. } | LinkEvent::DisconnectSent | LinkEvent::Other => {}
        }
    }

    /// The oldest pending order was committed (or abandoned): PUBACK it or not.
    fn on_committed(&mut self, r: Result<(), oneshot::error::RecvError>) {
        let Some(p) = self.pending_acks.pop_front() else {
            return;
        };
        match r {
            Ok(()) => {
                if let Err(e) = self.client.ack(&p.packet) {
                    tracing::warn!(error = %e, "could not acknowledge an order command");
                }
            }
            Err(_) => tracing::warn!(
                "an order command was not committed: left unacknowledged, the broker sends it again on the next connection"
            ),
        }
    }

    /// Clean shutdown: `online: false` retained, a short wait for its PUBACK, DISCONNECT.
    async fn goodbye(&mut self, session: u64) -> Result<(), Ended> {
        // The goodbye waits at most GOODBYE_WAIT + 0.5 s, without beating.
        self.shared.heartbeat.beat();
        let gw = &self.shared.gateway;
        let counts = status_counts(&self.shared.store).await.unwrap_or_default();
        let payload = message::offline_payload(gw, session, Utc::now(), counts);
        let topic = format!("{}/{}", gw.prefix, STATUS_SUFFIX);
        if self.client.publish(topic, true, payload).is_ok() {
            self.handed.push_back(Tag::Goodbye);
            let deadline = Instant::now() + GOODBYE_WAIT;
            while !self.goodbye_acked {
                match tokio::time::timeout_at(deadline, self.events.recv()).await {
                    Ok(Some(Ok(ev))) => self.on_event(ev),
                    _ => break,
                }
            }
        }
        if !self.goodbye_acked {
            tracing::warn!(
                "no PUBACK for the goodbye message: the broker publishes the will instead"
            );
        }
        if self.client.disconnect().is_ok() {
            let deadline = Instant::now() + Duration::from_millis(500);
            loop {
                match tokio::time::timeout_at(deadline, self.events.recv()).await {
                    Ok(Some(Ok(LinkEvent::DisconnectSent))) => break,
                    Ok(Some(Ok(ev))) => self.on_event(ev),
                    _ => break,
                }
            }
        }
        Ok(())
    }
}

/// Resolves when the running historical read is done; never when none runs.
async fn read_done(
    read: &mut Option<HistoricalRead>,
) -> (u64, usize, Result<Vec<OutboxRow>, StoreError>) {
    match read {
        // The task is never aborted; should it panic, nothing was read
        // (0 asked: the stream is not taken for empty, the read starts again).
        Some(r) => r.await.unwrap_or((0, 0, Ok(Vec::new()))),
        None => std::future::pending().await,
    }
}

/// Resolves when the oldest pending order is committed; never when none is pending.
async fn front_committed(q: &mut VecDeque<PendingAck>) -> Result<(), oneshot::error::RecvError> {
    match q.front_mut() {
        Some(p) => (&mut p.committed).await,
        None => std::future::pending().await,
    }
}
