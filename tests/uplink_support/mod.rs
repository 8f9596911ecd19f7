//! Test support for the uplink tests: a subscriber that records everything
//! the gateway publishes, a gate (TCP proxy) that the test can close or cut
//! between the agent and the broker, and a running uplink.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use linegate::config::{MqttVersion, UplinkConfig};
use linegate::orders::OrderMessage;
use linegate::store::Store;
use linegate::systemd::Liveness;
use linegate::uplink::outbox::{self, MessageClass, Outgoing};
use linegate::uplink::{run_uplink, GatewayInfo, UplinkError, UplinkStats};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub const PREFIX: &str = "linegate/v1/site1/gw1";

/// One message as the subscriber saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub topic: String,
    pub retain: bool,
    pub json: Value,
}

impl Seen {
    pub fn seq(&self) -> Option<u64> {
        self.json.get("seq").and_then(Value::as_u64)
    }
    /// The connection number of a status message (contract v1.1).
    pub fn session(&self) -> Option<u64> {
        self.json.get("session").and_then(Value::as_u64)
    }
    pub fn is_status(&self) -> bool {
        self.topic.ends_with("/status")
    }
    pub fn online(&self) -> Option<bool> {
        self.json.get("online").and_then(Value::as_bool)
    }
}

/// A subscriber on `{p}/#` that reconnects and resubscribes by itself.
pub struct Subscriber {
    pub seen: Arc<Mutex<Vec<Seen>>>,
    /// Counts SUBACKs: after a broker restart, wait for it to grow.
    pub subscriptions: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl Subscriber {
    pub async fn start(port: u16, name: &str) -> Subscriber {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let subscriptions = Arc::new(AtomicU64::new(0));
        let mut o = MqttOptions::new(name, "127.0.0.1", port);
        o.set_keep_alive(Duration::from_secs(5));
        o.set_max_packet_size(1 << 22, 1 << 22);
        let (client, mut events) = AsyncClient::new(o, 100);
        let (s, n) = (seen.clone(), subscriptions.clone());
        let task = tokio::spawn(async move {
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        let _ = client
                            .subscribe(format!("{PREFIX}/#"), QoS::AtLeastOnce)
                            .await;
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        n.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let json = serde_json::from_slice(&p.payload).unwrap_or(Value::Null);
                        s.lock().unwrap().push(Seen {
                            topic: p.topic.clone(),
                            retain: p.retain,
                            json,
                        });
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
        });
        let sub = Subscriber {
            seen,
            subscriptions,
            task,
        };
        sub.wait_subscribed(0).await;
        sub
    }

    /// Wait until more than `before` subscriptions were acknowledged.
    pub async fn wait_subscribed(&self, before: u64) {
        wait_for("subscriber subscribed", Duration::from_secs(10), || {
            self.subscriptions.load(Ordering::SeqCst) > before
        })
        .await;
    }

    pub fn subscribed(&self) -> u64 {
        self.subscriptions.load(Ordering::SeqCst)
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn len(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    /// Data messages (not status) by seq.
    pub fn data_by_seq(&self) -> BTreeMap<u64, Seen> {
        self.seen()
            .into_iter()
            .filter(|m| !m.is_status())
            .filter_map(|m| m.seq().map(|s| (s, m)))
            .collect()
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Poll `cond` every 20 ms until it holds; panics with `what` after `limit`.
pub async fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !cond() {
        if tokio::time::Instant::now() > deadline {
            panic!("timed out waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A TCP proxy between the agent and the broker. Closed: connections are
/// refused (closed at once). `cut` also kills the connections in use, as
/// when a network dies.
pub struct Gate {
    pub port: u16,
    open: Arc<AtomicBool>,
    cut: Arc<Notify>,
    task: JoinHandle<()>,
}

impl Gate {
    pub async fn start(broker_port: u16) -> Gate {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let open = Arc::new(AtomicBool::new(true));
        let cut = Arc::new(Notify::new());
        let (o, c) = (open.clone(), cut.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !o.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let Ok(mut outbound) = TcpStream::connect(("127.0.0.1", broker_port)).await else {
                    continue;
                };
                let cut = c.clone().notified_owned();
                tokio::spawn(async move {
                    tokio::select! {
                        _ = cut => {}
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                    }
                });
            }
        });
        Gate {
            port,
            open,
            cut,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    pub fn open(&self) {
        self.open.store(true, Ordering::SeqCst);
    }

    pub fn close(&self) {
        self.open.store(false, Ordering::SeqCst);
    }

    /// Close the gate and kill every connection through it.
    pub fn cut(&self) {
        self.close();
        self.cut.notify_waiters();
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub fn uplink_config(url: &str) -> UplinkConfig {
    UplinkConfig {
        url: url.to_string(),
        client_id: None,
        keepalive_s: 5,
        protocol: MqttVersion::V311,
        username: None,
        password_file: None,
        password_env: None,
        ca_file: None,
        client_cert_file: None,
        client_key_file: None,
        topic_prefix: None,
        heartbeat_s: 60,
        historical_per_s: 100_000,
        backoff_min_ms: 50,
        backoff_max_ms: 400,
    }
}

pub fn gateway() -> GatewayInfo {
    GatewayInfo {
        id: "gw1".into(),
        prefix: PREFIX.into(),
        version: "0.1.0-test".into(),
        started_at: Utc::now(),
        machines: vec!["press07".into()],
    }
}

/// A running uplink and the handles a test needs.
pub struct Agent {
    pub store: Store,
    pub wake: Arc<Notify>,
    pub stats: Arc<UplinkStats>,
    pub shutdown: CancellationToken,
    pub orders: mpsc::Receiver<OrderMessage>,
    pub task: JoinHandle<Result<(), UplinkError>>,
}

impl Agent {
    pub fn start(cfg: UplinkConfig, store: Store) -> Agent {
        let wake = Arc::new(Notify::new());
        let stats = Arc::new(UplinkStats::default());
        let shutdown = CancellationToken::new();
        let (tx, orders) = mpsc::channel(16);
        let task = tokio::spawn(run_uplink(
            cfg,
            gateway(),
            store.clone(),
            wake.clone(),
            Default::default(),
            Default::default(),
            tx,
            stats.clone(),
            Liveness::new().register("uplink"),
            shutdown.clone(),
        ));
        Agent {
            store,
            wake,
            stats,
            shutdown,
            orders,
            task,
        }
    }

    /// Enqueue one message in its own transaction and wake the uplink.
    pub async fn enqueue(&self, class: MessageClass, n: u64) -> u64 {
        let seq = self
            .store
            .call(move |c| {
                let tx = c.transaction()?;
                let seq = outbox::enqueue(&tx, &message(class, n))?;
                tx.commit()?;
                Ok(seq)
            })
            .await
            .unwrap();
        self.wake.notify_one();
        seq
    }

    pub async fn depth(&self) -> u64 {
        self.store.call(|c| outbox::counts(c)).await.unwrap().depth
    }

    pub async fn stop(self) -> Result<(), UplinkError> {
        self.shutdown.cancel();
        self.task.await.unwrap()
    }
}

/// A test message: state changes are durable, telemetry is not.
pub fn message(class: MessageClass, n: u64) -> Outgoing {
    let mut body = serde_json::Map::new();
    body.insert("machine".into(), "press07".into());
    body.insert("n".into(), n.into());
    body.insert("pad".into(), "x".repeat(200).into());
    Outgoing {
        topic_suffix: match class {
            MessageClass::Durable => "m/press07/state".into(),
            MessageClass::Telemetry => "m/press07/telemetry".into(),
        },
        class,
        retain: false,
        ts: Utc::now(),
        body,
    }
}

pub fn open_store(dir: &std::path::Path) -> Store {
    let store = Store::open(dir).unwrap();
    store
        .call_blocking(|c| outbox::configure(c, outbox::OutboxPolicy::from_mb(64)))
        .unwrap();
    store
}
