//! MQTT machine sources against a real Mosquitto broker: values by JSON
//! pointer and raw payloads arrive as samples, bad payloads are errors naming
//! the topic, a silent machine goes unreachable, and the subscription comes
//! back after the broker restarts.
mod common;

use std::path::Path;
use std::time::Duration;

use linegate::config::Config;
use linegate::source::mqtt::run_mqtt_bus;
use linegate::source::{Sample, SampleContent, SignalError, Value};
use linegate::systemd::Liveness;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// How long a test waits for something that should happen (never asserted as speed).
const PATIENCE: Duration = Duration::from_secs(15);

fn config(broker_url: &str, stale_ms: u64) -> Config {
    let text = format!(
        r#"
[gateway]
id = "gw-test"
site = "plant1"
data_dir = "/tmp/linegate-mqtt-test"

[[bus]]
id = "plc"
transport = "mqtt"
address = "{broker_url}"
client_id = "linegate-test-plc"
stale_ms = {stale_ms}
backoff_min_ms = 50
backoff_max_ms = 400

[[machine]]
id = "press07"
bus = "plc"

[[machine.signal]]
name = "spindle_rpm"
type = "u32"
topic = "line2/press07/status"
pointer = "/spindle/rpm"

[[machine.signal]]
name = "cycle_active"
type = "bool"
topic = "line2/press07/status"
pointer = "/cycle"

[[machine.signal]]
name = "temperature"
type = "f32"
topic = "line2/press07/temp"
scale = 0.1

[[machine]]
id = "lathe03"
bus = "plc"

[[machine.signal]]
name = "part_count"
type = "u32"
topic = "line2/lathe03/count"
"#
    );
    Config::from_toml(&text, Path::new("mqtt-test.toml")).expect("test config is valid")
}

/// Start the bus for every machine of the config; returns the sample stream.
fn start_bus(cfg: &Config, shutdown: &CancellationToken) -> mpsc::Receiver<Sample> {
    let (tx, rx) = mpsc::channel(256);
    let bus = cfg.bus[0].clone();
    let machines = cfg.machine.clone();
    tokio::spawn(run_mqtt_bus(
        bus,
        machines,
        tx,
        Liveness::new().register("mqtt bus"),
        shutdown.clone(),
    ));
    rx
}

/// Publish one message with QoS 1 through a short-lived client; true once the broker acked it.
async fn publish(port: u16, topic: &str, payload: &[u8]) -> bool {
    let mut o = MqttOptions::new(format!("pub-{}", rand_suffix()), "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(5));
    let (client, mut events) = AsyncClient::new(o, 10);
    if client
        .publish(topic, QoS::AtLeastOnce, false, payload.to_vec())
        .await
        .is_err()
    {
        return false;
    }
    let acked = tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => return true,
                Ok(_) => {}
                Err(_) => return false,
            }
        }
    })
    .await
    .unwrap_or(false);
    let _ = client.try_disconnect();
    let _ = tokio::time::timeout(Duration::from_millis(200), events.poll()).await;
    acked
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// Publish again and again (the source may not have subscribed yet) until a
/// sample of `machine` with signals arrives; returns it.
async fn publish_until_sample(
    port: u16,
    rx: &mut mpsc::Receiver<Sample>,
    machine: &str,
    topic: &str,
    payload: &[u8],
) -> Sample {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no sample of {machine} after publishing to {topic}"
        );
        publish(port, topic, payload).await;
        let wait = tokio::time::sleep(Duration::from_millis(300));
        tokio::pin!(wait);
        loop {
            tokio::select! {
                _ = &mut wait => break,
                s = rx.recv() => {
                    let s = s.expect("the bus stopped sending");
                    if s.machine == machine && matches!(s.content, SampleContent::Signals(_)) {
                        return s;
                    }
                }
            }
        }
    }
}

fn signals(s: &Sample) -> &linegate::source::Readings {
    match &s.content {
        SampleContent::Signals(m) => m,
        other => panic!("expected signals, got {other:?}"),
    }
}

#[tokio::test]
async fn values_from_json_pointers_and_raw_payloads_arrive_as_samples() {
    let broker = common::Mosquitto::start();
    let cfg = config(&broker.url(), 60_000);
    let shutdown = CancellationToken::new();
    let mut rx = start_bus(&cfg, &shutdown);

    let s = publish_until_sample(
        broker.port,
        &mut rx,
        "press07",
        "line2/press07/status",
        br#"{"spindle":{"rpm":1450},"cycle":true}"#,
    )
    .await;
    let got = signals(&s);
    assert_eq!(got.get("spindle_rpm"), Some(&Ok(Value::Int(1450))));
    assert_eq!(got.get("cycle_active"), Some(&Ok(Value::Bool(true))));
    assert!(
        got.get("temperature").is_none(),
        "a partial sample holds only the signals that arrived: {got:?}"
    );

    let s = publish_until_sample(
        broker.port,
        &mut rx,
        "press07",
        "line2/press07/temp",
        b"523",
    )
    .await;
    match signals(&s).get("temperature") {
        Some(Ok(Value::Float(t))) => assert!((t - 52.3).abs() < 1e-9, "{t}"),
        other => panic!("temperature: {other:?}"),
    }

    let s = publish_until_sample(
        broker.port,
        &mut rx,
        "lathe03",
        "line2/lathe03/count",
        b"77",
    )
    .await;
    assert_eq!(signals(&s).get("part_count"), Some(&Ok(Value::Int(77))));
    assert_eq!(signals(&s).len(), 1);

    shutdown.cancel();
}

#[tokio::test]
async fn bad_payloads_are_errors_naming_the_topic_and_the_bus_keeps_going() {
    let broker = common::Mosquitto::start();
    let cfg = config(&broker.url(), 60_000);
    let shutdown = CancellationToken::new();
    let mut rx = start_bus(&cfg, &shutdown);

    let s = publish_until_sample(
        broker.port,
        &mut rx,
        "press07",
        "line2/press07/status",
        br#"{"spindle":{"speed":3},"cycle":"maybe"}"#,
    )
    .await;
    let got = signals(&s);
    match got.get("spindle_rpm") {
        Some(Err(SignalError::BadPayload(m))) => {
            assert!(m.contains("line2/press07/status"), "{m}");
            assert!(m.contains("/spindle/rpm"), "{m}");
            assert!(m.contains("speed"), "names what was found: {m}");
        }
        other => panic!("spindle_rpm: {other:?}"),
    }
    match got.get("cycle_active") {
        Some(Err(SignalError::BadPayload(m))) => assert!(m.contains("maybe"), "{m}"),
        other => panic!("cycle_active: {other:?}"),
    }

    let s = publish_until_sample(
        broker.port,
        &mut rx,
        "lathe03",
        "line2/lathe03/count",
        b"\xff\x00garbage",
    )
    .await;
    assert!(
        matches!(signals(&s).get("part_count"), Some(Err(SignalError::BadPayload(m))) if m.contains("line2/lathe03/count")),
        "{s:?}"
    );

    // A good payload afterwards still decodes: the bus did not fall over.
    let s =
        publish_until_sample(broker.port, &mut rx, "lathe03", "line2/lathe03/count", b"5").await;
    assert_eq!(signals(&s).get("part_count"), Some(&Ok(Value::Int(5))));
    shutdown.cancel();
}

#[tokio::test]
async fn a_silent_machine_goes_unreachable_once_per_stale_spell() {
    let broker = common::Mosquitto::start();
    let cfg = config(&broker.url(), 400);
    let shutdown = CancellationToken::new();
    let mut rx = start_bus(&cfg, &shutdown);

    // press07 publishes, then falls silent.
    publish_until_sample(
        broker.port,
        &mut rx,
        "press07",
        "line2/press07/temp",
        b"200",
    )
    .await;
    let mut unreachable = 0;
    let until = tokio::time::Instant::now() + Duration::from_millis(2000);
    while let Ok(Some(s)) = tokio::time::timeout_at(until, rx.recv()).await {
        if s.machine == "press07" {
            match s.content {
                SampleContent::Unreachable { reason } => {
                    assert!(reason.contains("400 ms"), "{reason}");
                    unreachable += 1;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    assert_eq!(unreachable, 1, "one Unreachable per stale spell");

    // It publishes again: values flow, and a new silence is a new spell.
    publish_until_sample(
        broker.port,
        &mut rx,
        "press07",
        "line2/press07/temp",
        b"201",
    )
    .await;
    let s = tokio::time::timeout(PATIENCE, async {
        loop {
            let s = rx.recv().await.expect("bus alive");
            if s.machine == "press07" {
                return s;
            }
        }
    })
    .await
    .expect("a second stale spell is reported");
    assert!(
        matches!(s.content, SampleContent::Unreachable { .. }),
        "{s:?}"
    );
    shutdown.cancel();
}

#[tokio::test]
async fn subscription_resumes_after_the_broker_restarts() {
    let mut broker = common::Mosquitto::start();
    let cfg = config(&broker.url(), 60_000);
    let shutdown = CancellationToken::new();
    let mut rx = start_bus(&cfg, &shutdown);

    let s =
        publish_until_sample(broker.port, &mut rx, "lathe03", "line2/lathe03/count", b"1").await;
    assert_eq!(signals(&s).get("part_count"), Some(&Ok(Value::Int(1))));

    broker.stop();
    tokio::time::sleep(Duration::from_millis(800)).await;
    broker.resume();

    // The broker has no session for us: only a resubscription brings values back.
    let s =
        publish_until_sample(broker.port, &mut rx, "lathe03", "line2/lathe03/count", b"2").await;
    assert_eq!(signals(&s).get("part_count"), Some(&Ok(Value::Int(2))));
    shutdown.cancel();
}

#[tokio::test]
async fn machines_on_a_dead_broker_go_unreachable_with_the_broker_named() {
    let mut broker = common::Mosquitto::start();
    broker.stop();
    let cfg = config(&broker.url(), 300);
    let shutdown = CancellationToken::new();
    let mut rx = start_bus(&cfg, &shutdown);

    let mut seen = std::collections::BTreeSet::new();
    tokio::time::timeout(PATIENCE, async {
        while seen.len() < 2 {
            let s = rx.recv().await.expect("bus alive");
            match s.content {
                SampleContent::Unreachable { reason } => {
                    assert!(reason.contains(&broker.url()), "{reason}");
                    seen.insert(s.machine);
                }
                other => panic!("no broker, yet {other:?}"),
            }
        }
    })
    .await
    .expect("both machines go unreachable");
    shutdown.cancel();
}
