//! Store-and-forward against a real Mosquitto: nothing lost across broker
//! restarts, the drop policy of a full outbox, birth and will, order
//! commands acknowledged only after their commit, seq kept across a reopen.

mod common;
mod uplink_support;

use std::collections::BTreeSet;
use std::time::Duration;

use linegate::config::MqttVersion;
use linegate::uplink::outbox::{self, MessageClass, OutboxPolicy};
use rumqttc::{AsyncClient, MqttOptions, QoS};
use uplink_support::*;

const LONG: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restarts_while_messages_are_enqueued_lose_nothing() {
    let mut broker = common::Mosquitto::start();
    let gate = Gate::start(broker.port).await;
    let sub = Subscriber::start(broker.port, "checker").await;
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(uplink_config(&gate.url()), open_store(dir.path()));
    wait_for("first connect", LONG, || agent.stats.snapshot().connected).await;

    let mut enqueued = Vec::new();
    let mut offline = BTreeSet::new();
    for round in 0..4u64 {
        // Link up: live messages.
        for i in 0..60 {
            let class = if i % 3 == 0 {
                MessageClass::Durable
            } else {
                MessageClass::Telemetry
            };
            enqueued.push(agent.enqueue(class, round * 1000 + i).await);
            if i % 20 == 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        // Outage: the broker dies with whatever is in flight.
        gate.cut();
        broker.stop();
        wait_for("link down", LONG, || !agent.stats.snapshot().connected).await;
        for i in 0..40 {
            let seq = agent
                .enqueue(MessageClass::Durable, round * 1000 + 500 + i)
                .await;
            enqueued.push(seq);
            offline.insert(seq);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        // Back: the checker subscribes before the agent may reconnect.
        let before = sub.subscribed();
        broker.resume();
        sub.wait_subscribed(before).await;
        gate.open();
        wait_for("reconnect", LONG, || agent.stats.snapshot().connected).await;
    }

    let want: BTreeSet<u64> = enqueued.iter().copied().collect();
    wait_for("every message at the subscriber", LONG, || {
        let got: BTreeSet<u64> = sub.data_by_seq().keys().copied().collect();
        want.is_subset(&got)
    })
    .await;
    wait_for("outbox drained", LONG, || agent.stats.snapshot().depth == 0).await;

    let got = sub.data_by_seq();
    let data: BTreeSet<u64> = got.keys().copied().collect();
    assert_eq!(data, want, "exactly the enqueued seqs, no gap, no stranger");
    for seq in &offline {
        assert_eq!(
            got[seq].json["historical"], true,
            "seq {seq} was stored offline"
        );
    }
    let live_flagged = want
        .difference(&offline)
        .filter(|s| got[*s].json.get("historical").is_some())
        .count();
    assert_eq!(live_flagged, 0, "live messages are not historical");
    // Envelope on every message.
    for m in got.values() {
        assert_eq!(m.json["gateway"], "gw1");
        let ts = m.json["ts"].as_str().unwrap();
        assert!(ts.ends_with('Z') && ts.len() == 24, "ts {ts}");
    }
    // Status messages carry no seq (contract v1.1), a session instead.
    let status: Vec<Seen> = sub.seen().into_iter().filter(|m| m.is_status()).collect();
    assert!(!status.is_empty());
    assert!(status
        .iter()
        .all(|m| m.seq().is_none() && m.session().is_some()));
    assert!(agent.stats.snapshot().reconnects >= 4);
    agent.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn birth_comes_first_on_every_connect_and_is_retained() {
    let broker = common::Mosquitto::start();
    let gate = Gate::start(broker.port).await;
    gate.close();
    let sub = Subscriber::start(broker.port, "checker").await;
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(uplink_config(&gate.url()), open_store(dir.path()));
    // A backlog waits for the connection: the birth must still come first.
    for i in 0..20 {
        agent.enqueue(MessageClass::Durable, i).await;
    }
    for round in 0..3 {
        let mark = sub.len();
        gate.open();
        wait_for("backlog and birth arrive", LONG, || {
            sub.seen()[mark..].iter().filter(|m| !m.is_status()).count()
                >= if round == 0 { 20 } else { 1 }
        })
        .await;
        let after = &sub.seen()[mark..];
        assert!(
            after[0].is_status(),
            "first message after connect: {:?}",
            after[0]
        );
        assert_eq!(after[0].online(), Some(true));
        assert_eq!(after[0].json["machines"][0], "press07");
        gate.cut();
        wait_for("link down", LONG, || !agent.stats.snapshot().connected).await;
        agent.enqueue(MessageClass::Durable, 100 + round).await;
    }
    gate.open();
    wait_for("connected", LONG, || agent.stats.snapshot().connected).await;
    // A newcomer gets the retained birth.
    let late = Subscriber::start(broker.port, "late").await;
    wait_for("retained status", LONG, || {
        late.seen().iter().any(|m| m.is_status())
    })
    .await;
    let status = late.seen().into_iter().find(|m| m.is_status()).unwrap();
    assert!(status.retain);
    assert_eq!(status.online(), Some(true));
    agent.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abrupt_loss_publishes_the_will_and_clean_shutdown_says_offline() {
    let broker = common::Mosquitto::start();
    let gate = Gate::start(broker.port).await;
    let sub = Subscriber::start(broker.port, "checker").await;
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(uplink_config(&gate.url()), open_store(dir.path()));
    wait_for("birth", LONG, || {
        sub.seen().iter().any(|m| m.online() == Some(true))
    })
    .await;
    let birth_session = sub
        .seen()
        .iter()
        .find(|m| m.online() == Some(true))
        .unwrap()
        .session()
        .unwrap();

    gate.cut();
    wait_for("will", LONG, || {
        sub.seen().iter().any(|m| m.online() == Some(false))
    })
    .await;
    let will = sub
        .seen()
        .into_iter()
        .find(|m| m.online() == Some(false))
        .unwrap();
    assert!(will.topic.ends_with("/status"));
    assert_eq!(
        will.session(),
        Some(birth_session),
        "the will carries the session of its birth"
    );
    assert_eq!(will.seq(), None, "status messages take no seq");

    gate.open();
    wait_for("second birth", LONG, || {
        sub.seen()
            .iter()
            .filter(|m| m.online() == Some(true))
            .count()
            >= 2
    })
    .await;
    let mark = sub.len();
    agent.stop().await.unwrap();
    wait_for("goodbye", LONG, || {
        sub.seen()[mark..].iter().any(|m| m.online() == Some(false))
    })
    .await;
    // The goodbye is retained: a newcomer sees the gateway offline.
    let late = Subscriber::start(broker.port, "late").await;
    wait_for("retained goodbye", LONG, || {
        late.seen().iter().any(|m| m.is_status())
    })
    .await;
    let status = late.seen().into_iter().find(|m| m.is_status()).unwrap();
    assert_eq!((status.online(), status.retain), (Some(false), true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_outbox_drops_oldest_telemetry_keeps_durable_and_reports_drops() {
    let broker = common::Mosquitto::start();
    let gate = Gate::start(broker.port).await;
    gate.close();
    let sub = Subscriber::start(broker.port, "checker").await;
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    store
        .call_blocking(|c| outbox::configure(c, OutboxPolicy { max_bytes: 30_000 }))
        .unwrap();
    let agent = Agent::start(uplink_config(&gate.url()), store);
    let mut durable = Vec::new();
    let mut telemetry = Vec::new();
    for i in 0..300 {
        if i % 10 == 0 {
            durable.push(agent.enqueue(MessageClass::Durable, i).await);
        } else {
            telemetry.push(agent.enqueue(MessageClass::Telemetry, i).await);
        }
    }
    let counts = agent.store.call(|c| outbox::counts(c)).await.unwrap();
    assert!(counts.dropped > 0 && counts.bytes <= 30_000, "{counts:?}");

    gate.open();
    wait_for("outbox drained", LONG, || agent.stats.snapshot().depth == 0).await;
    wait_for("all kept rows arrived", LONG, || {
        sub.data_by_seq().len() as u64 == 300 - counts.dropped
    })
    .await;
    let got = sub.data_by_seq();
    for seq in &durable {
        assert!(got.contains_key(seq), "durable seq {seq} was dropped");
    }
    let kept: Vec<u64> = telemetry
        .iter()
        .copied()
        .filter(|s| got.contains_key(s))
        .collect();
    let lost: Vec<u64> = telemetry
        .iter()
        .copied()
        .filter(|s| !got.contains_key(s))
        .collect();
    assert_eq!(lost.len() as u64, counts.dropped);
    assert!(
        lost.iter().max() < kept.iter().min(),
        "the oldest telemetry goes first"
    );
    let birth = sub
        .seen()
        .into_iter()
        .find(|m| m.online() == Some(true))
        .unwrap();
    assert_eq!(birth.json["dropped_telemetry"], counts.dropped);
    assert_eq!(agent.stats.snapshot().drops, counts.dropped);
    agent.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_is_acknowledged_only_after_its_commit() {
    let broker = common::Mosquitto::start();
    let gate = Gate::start(broker.port).await;
    let dir = tempfile::tempdir().unwrap();
    let mut agent = Agent::start(uplink_config(&gate.url()), open_store(dir.path()));
    wait_for("connected", LONG, || agent.stats.snapshot().connected).await;
    tokio::time::sleep(Duration::from_millis(200)).await; // subscription in place

    let planner = planner(broker.port).await;
    planner
        .publish(
            format!("{PREFIX}/orders/cmd"),
            QoS::AtLeastOnce,
            false,
            br#"{"type":"hold","order_id":"WO-1"}"#.to_vec(),
        )
        .await
        .unwrap();
    let first = tokio::time::timeout(LONG, agent.orders.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.payload, br#"{"type":"hold","order_id":"WO-1"}"#);
    // Not committed: the broker keeps it and sends it again after a reconnect.
    gate.cut();
    gate.open();
    let again = tokio::time::timeout(LONG, agent.orders.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(again.payload, first.payload);
    drop(first);
    again.committed.send(()).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await; // the PUBACK goes out
                                                          // Committed and acknowledged: a reconnect brings nothing back.
    gate.cut();
    gate.open();
    wait_for("reconnected", LONG, || {
        agent.stats.snapshot().reconnects >= 2
    })
    .await;
    let none = tokio::time::timeout(Duration::from_secs(1), agent.orders.recv()).await;
    assert!(none.is_err(), "an acknowledged order came again: {none:?}");
    agent.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_delivers_and_deletes_rows_on_success_pubacks() {
    let broker = common::Mosquitto::start();
    let sub = Subscriber::start(broker.port, "checker").await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = uplink_config(&broker.url());
    cfg.protocol = MqttVersion::V5;
    let mut agent = Agent::start(cfg, open_store(dir.path()));
    let mut want = BTreeSet::new();
    for i in 0..200 {
        want.insert(agent.enqueue(MessageClass::Telemetry, i).await);
    }
    wait_for("all arrive", LONG, || {
        let got: BTreeSet<u64> = sub.data_by_seq().keys().copied().collect();
        want.is_subset(&got)
    })
    .await;
    wait_for("outbox empty", LONG, || agent.stats.snapshot().depth == 0).await;
    assert_eq!(agent.depth().await, 0);
    assert!(agent.stats.snapshot().acked >= 200);

    // Orders work on MQTT 5 as well.
    let planner = planner(broker.port).await;
    planner
        .publish(
            format!("{PREFIX}/orders/cmd"),
            QoS::AtLeastOnce,
            false,
            b"{}".to_vec(),
        )
        .await
        .unwrap();
    let order = tokio::time::timeout(LONG, agent.orders.recv())
        .await
        .unwrap()
        .unwrap();
    order.committed.send(()).unwrap();
    agent.stop().await.unwrap();
}

#[tokio::test]
async fn seq_continues_without_reuse_after_the_store_is_reopened() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    let first: Vec<u64> = (0..5)
        .map(|i| {
            store
                .call_blocking(move |c| outbox::enqueue(c, &message(MessageClass::Durable, i)))
                .unwrap()
        })
        .collect();
    // Sent and acknowledged: the rows are gone, their seqs stay used.
    let acked = first.clone();
    store
        .call_blocking(move |c| outbox::delete_acked(c, &acked))
        .unwrap();
    drop(store);
    tokio::time::sleep(Duration::from_millis(100)).await; // store thread ends

    let store = open_store(dir.path());
    let next: Vec<u64> = (0..5)
        .map(|i| {
            store
                .call_blocking(move |c| outbox::enqueue(c, &message(MessageClass::Durable, i)))
                .unwrap()
        })
        .collect();
    assert_eq!(first, [1, 2, 3, 4, 5]);
    assert_eq!(next, [6, 7, 8, 9, 10]);
}

async fn planner(port: u16) -> AsyncClient {
    let (client, mut events) = AsyncClient::new(MqttOptions::new("planner", "127.0.0.1", port), 10);
    tokio::spawn(async move { while events.poll().await.is_ok() {} });
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_state_change_overtakes_a_rate_limited_historical_backlog() {
    let broker = common::Mosquitto::start();
    let gate = Gate::start(broker.port).await;
    gate.close();
    let sub = Subscriber::start(broker.port, "checker").await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = uplink_config(&gate.url());
    cfg.historical_per_s = 50;
    let agent = Agent::start(cfg, open_store(dir.path()));
    let mut backlog = BTreeSet::new();
    for i in 0..200 {
        backlog.insert(agent.enqueue(MessageClass::Telemetry, i).await);
    }
    gate.open();
    wait_for("connected", LONG, || agent.stats.snapshot().connected).await;
    let live = agent.enqueue(MessageClass::Durable, 999).await;
    wait_for("live message", LONG, || {
        sub.data_by_seq().contains_key(&live)
    })
    .await;
    let got = sub.data_by_seq();
    let historical_before = got.keys().filter(|s| backlog.contains(s)).count();
    assert!(
        historical_before < backlog.len(),
        "the live message waited for the whole backlog"
    );
    assert!(got[&live].json.get("historical").is_none());
    assert!(got
        .values()
        .filter(|m| backlog.contains(&m.seq().unwrap()))
        .all(|m| m.json["historical"] == true));
    // The historical stream keeps seq order.
    let order: Vec<u64> = sub
        .seen()
        .iter()
        .filter_map(|m| m.seq())
        .filter(|s| backlog.contains(s))
        .collect();
    assert!(
        order.windows(2).all(|w| w[0] < w[1]),
        "historical out of order"
    );
    agent.stop().await.unwrap();
}
