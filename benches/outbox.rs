//! Outbox benchmark: enqueue rate, drain rate to a real Mosquitto after an
//! outage, and end-to-end latency enqueue → subscriber (p50/p99).
//! Run: `cargo bench --bench outbox` (Mosquitto must be installed).

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use linegate::config::{MqttVersion, UplinkConfig};
use linegate::store::Store;
use linegate::systemd::Liveness;
use linegate::uplink::outbox::{self, MessageClass, OutboxPolicy, Outgoing};
use linegate::uplink::{run_uplink, GatewayInfo, UplinkStats};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

const PREFIX: &str = "linegate/v1/bench/gw1";

fn message(n: u64) -> Outgoing {
    let mut body = serde_json::Map::new();
    body.insert("machine".into(), "press07".into());
    body.insert("state".into(), "running".into());
    body.insert("prev".into(), "idle".into());
    body.insert("since".into(), "2026-11-26T08:00:00.125Z".into());
    body.insert("reason".into(), serde_json::Value::Null);
    body.insert("n".into(), n.into());
    Outgoing {
        topic_suffix: "m/press07/state".into(),
        class: MessageClass::Durable,
        retain: false,
        ts: Utc::now(),
        body,
    }
}

fn open_store(dir: &std::path::Path) -> Store {
    let store = Store::open(dir).expect("store");
    store
        .call_blocking(|c| outbox::configure(c, OutboxPolicy::from_mb(256)))
        .expect("configure");
    store
}

async fn enqueue_batch(store: &Store, from: u64, n: u64) {
    store
        .call(move |c| {
            let tx = c.transaction()?;
            for i in from..from + n {
                outbox::enqueue(&tx, &message(i))?;
            }
            tx.commit()?;
            Ok(())
        })
        .await
        .expect("enqueue");
}

/// A subscriber that reports (seq, arrival time) of every data message.
async fn subscriber(port: u16) -> mpsc::UnboundedReceiver<(u64, Instant)> {
    let (tx, rx) = mpsc::unbounded_channel();
    let mut o = MqttOptions::new("bench-sub", "127.0.0.1", port);
    o.set_inflight(1000);
    let (client, mut events) = AsyncClient::new(o, 100);
    let (ready_tx, mut ready_rx) = mpsc::channel(1);
    tokio::spawn(async move {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    let _ = client
                        .subscribe(format!("{PREFIX}/m/#"), QoS::AtLeastOnce)
                        .await;
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    let _ = ready_tx.try_send(());
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let at = Instant::now();
                    let v: serde_json::Value =
                        serde_json::from_slice(&p.payload).unwrap_or_default();
                    if let Some(seq) = v.get("seq").and_then(|s| s.as_u64()) {
                        let _ = tx.send((seq, at));
                    }
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    });
    ready_rx.recv().await;
    rx
}

fn uplink(url: String) -> UplinkConfig {
    UplinkConfig {
        url,
        client_id: Some("bench-gw".into()),
        keepalive_s: 30,
        protocol: MqttVersion::V311,
        username: None,
        password_file: None,
        password_env: None,
        ca_file: None,
        client_cert_file: None,
        client_key_file: None,
        topic_prefix: None,
        heartbeat_s: 60,
        // Measure the raw drain: the default (2000/s) paces historical rows on purpose.
        historical_per_s: 10_000_000,
        backoff_min_ms: 50,
        backoff_max_ms: 500,
    }
}

struct Running {
    wake: Arc<Notify>,
    stats: Arc<UplinkStats>,
    shutdown: CancellationToken,
    _orders: mpsc::Receiver<linegate::orders::OrderMessage>,
}

fn start(url: String, store: Store) -> Running {
    let wake = Arc::new(Notify::new());
    let stats = Arc::new(UplinkStats::default());
    let shutdown = CancellationToken::new();
    let (tx, orders) = mpsc::channel(16);
    let gw = GatewayInfo {
        id: "gw1".into(),
        prefix: PREFIX.into(),
        version: "bench".into(),
        started_at: Utc::now(),
        machines: vec!["press07".into()],
    };
    tokio::spawn(run_uplink(
        uplink(url),
        gw,
        store,
        wake.clone(),
        Default::default(),
        Default::default(),
        tx,
        stats.clone(),
        Liveness::new().register("uplink"),
        shutdown.clone(),
    ));
    Running {
        wake,
        stats,
        shutdown,
        _orders: orders,
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // 1. Enqueue rate.
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_store(dir.path());
    let n = 2_000u64;
    let t = Instant::now();
    for i in 0..n {
        enqueue_batch(&store, i, 1).await;
    }
    let single = n as f64 / t.elapsed().as_secs_f64();
    let n_batched = 50_000u64;
    let t = Instant::now();
    for b in 0..n_batched / 100 {
        enqueue_batch(&store, b * 100, 100).await;
    }
    let batched = n_batched as f64 / t.elapsed().as_secs_f64();
    println!("outbox enqueue, one transaction (fsync) per message: {single:>10.0} msg/s");
    println!("outbox enqueue, 100 messages per transaction:         {batched:>10.0} msg/s");
    drop(store);

    // 2. Drain after an outage: a backlog stored while the broker was away.
    // No per-subscriber queue limit: a slow subscriber must not lose messages.
    let broker = common::Mosquitto::start_with("max_queued_messages 0");
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_store(dir.path());
    let backlog = 20_000u64;
    for b in 0..backlog / 1000 {
        enqueue_batch(&store, b * 1000, 1000).await;
    }
    let mut rx = subscriber(broker.port).await;
    let t = Instant::now();
    let up = start(broker.url(), store.clone());
    let mut got = 0u64;
    let mut emptied = None;
    while got < backlog && t.elapsed() < Duration::from_secs(120) {
        match tokio::time::timeout(Duration::from_millis(5), rx.recv()).await {
            Ok(Some(_)) => got += 1,
            Ok(None) => break,
            Err(_) => {}
        }
        if emptied.is_none()
            && up.stats.snapshot().depth == 0
            && up.stats.snapshot().acked >= backlog
        {
            emptied = Some(t.elapsed());
        }
    }
    let received = t.elapsed();
    while emptied.is_none() && t.elapsed() < Duration::from_secs(120) {
        if up.stats.snapshot().depth == 0 {
            emptied = Some(t.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let emptied = emptied.unwrap_or(t.elapsed());
    println!(
        "drain {backlog} stored messages (all PUBACKed, rows deleted): {:>7.0} msg/s ({:.2} s)",
        backlog as f64 / emptied.as_secs_f64(),
        emptied.as_secs_f64()
    );
    println!(
        "  received by a subscriber:                        {:>7.0} msg/s ({got} in {:.2} s)",
        got as f64 / received.as_secs_f64(),
        received.as_secs_f64()
    );

    // 3. End-to-end latency: enqueue (commit + wake) → subscriber.
    let samples = 1_000u64;
    let mut sent: HashMap<u64, Instant> = HashMap::new();
    let mut lat = Vec::with_capacity(samples as usize);
    let mut commit = Vec::with_capacity(samples as usize);
    for i in 0..samples {
        let t0 = Instant::now();
        let seq = store
            .call(move |c| {
                let tx = c.transaction()?;
                let s = outbox::enqueue(&tx, &message(i))?;
                tx.commit()?;
                Ok(s)
            })
            .await
            .expect("enqueue");
        up.wake.notify_one();
        commit.push(t0.elapsed());
        sent.insert(seq, t0);
        while let Ok(Some((s, at))) = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await
        {
            if let Some(t0) = sent.remove(&s) {
                lat.push(at - t0);
                break;
            }
        }
    }
    lat.sort();
    commit.sort();
    if !commit.is_empty() {
        println!(
            "  of which the enqueue commit (fsync):             p50 {:>7.2} ms   p99 {:>7.2} ms",
            percentile(&commit, 0.50).as_secs_f64() * 1e3,
            percentile(&commit, 0.99).as_secs_f64() * 1e3,
        );
    }
    if !lat.is_empty() {
        println!(
            "latency enqueue -> subscriber ({} samples):     p50 {:>7.2} ms   p99 {:>7.2} ms   max {:>7.2} ms",
            lat.len(),
            percentile(&lat, 0.50).as_secs_f64() * 1e3,
            percentile(&lat, 0.99).as_secs_f64() * 1e3,
            lat.last().map(|d| d.as_secs_f64() * 1e3).unwrap_or(0.0)
        );
    }
    up.shutdown.cancel();
    tokio::time::sleep(Duration::from_millis(300)).await;
}
