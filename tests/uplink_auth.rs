//! The uplink's username and password against a real Mosquitto that refuses
//! anonymous clients: the password from `uplink.password_file` and from
//! `uplink.password_env` both connect and deliver; a wrong password is
//! refused and the uplink says so; a password file that is missing or empty
//! is named in the uplink's error and read again on every attempt, so the
//! uplink connects once the password is there.

mod common;
mod uplink_support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use linegate::config::{MqttVersion, UplinkConfig};
use linegate::uplink::outbox::MessageClass;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::Value;
use tokio::sync::mpsc;
use uplink_support::*;

const LONG: Duration = Duration::from_secs(30);
const USER: &str = "gw1";
const PASS: &str = "s3cret-Pa55";

/// A broker that only lets `USER`/`PASS` in, with its password file in `dir`.
fn broker_with_password(dir: &Path) -> common::Mosquitto {
    let pw = dir.join("pw");
    let out = Command::new("/usr/bin/mosquitto_passwd")
        .arg("-b")
        .arg("-c")
        .arg(&pw)
        .arg(USER)
        .arg(PASS)
        .output()
        .expect("mosquitto_passwd runs (installed with mosquitto)");
    assert!(
        out.status.success(),
        "mosquitto_passwd: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    common::Mosquitto::start_with(&format!(
        "listener {{port}} 127.0.0.1\nallow_anonymous false\npassword_file {}\n",
        pw.display()
    ))
}

fn password_file(dir: &Path, text: &str) -> PathBuf {
    let p = dir.join("uplink-password");
    std::fs::write(&p, text).unwrap();
    p
}

fn with_user(url: &str) -> UplinkConfig {
    let mut cfg = uplink_config(url);
    cfg.username = Some(USER.into());
    cfg
}

/// A subscriber on `{p}/#` logged in as `USER`; every payload it receives.
/// Returns once its subscription is acknowledged.
async fn authenticated_subscriber(port: u16) -> mpsc::UnboundedReceiver<(String, Value)> {
    let mut o = MqttOptions::new("auth-checker", "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(5));
    o.set_credentials(USER, PASS);
    let (client, mut events) = AsyncClient::new(o, 16);
    let (tx, rx) = mpsc::unbounded_channel();
    let (subscribed_tx, mut subscribed) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    let _ = client
                        .subscribe(format!("{PREFIX}/#"), QoS::AtLeastOnce)
                        .await;
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    let _ = subscribed_tx.send(());
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let json = serde_json::from_slice(&p.payload).unwrap_or(Value::Null);
                    if tx.send((p.topic.clone(), json)).is_err() {
                        break;
                    }
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    });
    tokio::time::timeout(LONG, subscribed.recv())
        .await
        .expect("the authenticated subscriber is subscribed within 30 s")
        .expect("subscriber task alive");
    rx
}

/// Wait for a message on `topic` whose JSON satisfies `want`.
async fn receive(
    rx: &mut mpsc::UnboundedReceiver<(String, Value)>,
    topic: &str,
    want: impl Fn(&Value) -> bool,
) -> Value {
    let found = tokio::time::timeout(LONG, async {
        while let Some((t, json)) = rx.recv().await {
            if t == topic && want(&json) {
                return Some(json);
            }
        }
        None
    })
    .await;
    match found {
        Ok(Some(json)) => json,
        _ => panic!("no matching message on {topic} within 30 s"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_from_a_file_connects_and_delivers_birth_and_messages() {
    let dir = tempfile::tempdir().unwrap();
    let broker = broker_with_password(dir.path());
    let mut sub = authenticated_subscriber(broker.port).await;

    let mut cfg = with_user(&broker.url());
    // A trailing newline, as an editor leaves it, is not part of the password.
    cfg.password_file = Some(password_file(dir.path(), &format!("{PASS}\n")));
    let store_dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(cfg, open_store(store_dir.path()));

    let birth = receive(&mut sub, &format!("{PREFIX}/status"), |j| {
        j["online"] == true
    })
    .await;
    assert_eq!(birth["gateway"], "gw1");
    // rumqttc writes the queued birth as soon as the CONNACK is in, which can
    // be before the uplink has handled the CONNACK and marked itself connected.
    wait_for("connected", LONG, || agent.stats.snapshot().connected).await;

    let seq = agent.enqueue(MessageClass::Durable, 7).await;
    let got = receive(&mut sub, &format!("{PREFIX}/m/press07/state"), |j| {
        j["seq"] == seq
    })
    .await;
    assert_eq!(got["n"], 7);
    wait_for("outbox drained", LONG, || agent.stats.snapshot().depth == 0).await;
    assert_eq!(agent.stats.last_error(), None);
    agent.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_from_an_environment_variable_connects() {
    let dir = tempfile::tempdir().unwrap();
    let broker = broker_with_password(dir.path());
    let mut sub = authenticated_subscriber(broker.port).await;

    // A name no other test uses: tests of this file run in parallel threads.
    let var = "LINEGATE_TEST_UPLINK_AUTH_PASSWORD";
    std::env::set_var(var, PASS);
    let mut cfg = with_user(&broker.url());
    cfg.password_env = Some(var.into());
    let store_dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(cfg, open_store(store_dir.path()));

    wait_for("connected", LONG, || agent.stats.snapshot().connected).await;
    let birth = receive(&mut sub, &format!("{PREFIX}/status"), |j| {
        j["online"] == true
    })
    .await;
    assert_eq!(birth["machines"][0], "press07");
    agent.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_is_refused_and_the_uplink_says_so() {
    wrong_password_is_refused(MqttVersion::V311).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_is_refused_and_the_uplink_says_so_over_mqtt_5() {
    wrong_password_is_refused(MqttVersion::V5).await;
}

async fn wrong_password_is_refused(protocol: MqttVersion) {
    let dir = tempfile::tempdir().unwrap();
    let broker = broker_with_password(dir.path());
    let mut sub = authenticated_subscriber(broker.port).await;

    let mut cfg = with_user(&broker.url());
    cfg.protocol = protocol;
    cfg.password_file = Some(password_file(dir.path(), "not-the-password"));
    let store_dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(cfg, open_store(store_dir.path()));
    agent.enqueue(MessageClass::Durable, 1).await;

    wait_for("a connection error", LONG, || {
        agent.stats.last_error().is_some()
    })
    .await;
    // Several attempts, all refused: never connected, nothing delivered.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let snap = agent.stats.snapshot();
    assert!(!snap.connected);
    assert_eq!(
        agent
            .stats
            .connects
            .load(std::sync::atomic::Ordering::SeqCst),
        0
    );
    assert_eq!(snap.sent, 0);
    assert_eq!(snap.depth, 1, "the message waits in the outbox");
    let error = snap.last_error.unwrap();
    assert!(
        error.contains("refused") && error.contains("credentials"),
        "the error says the broker refused the credentials: {error}"
    );
    assert!(
        error.contains("uplink.username \"gw1\"") && error.contains("uplink.password_file"),
        "the error names the settings to check: {error}"
    );
    assert!(
        sub.try_recv().is_err(),
        "nothing reached the broker's subscribers"
    );
    // Still running (it keeps retrying) and stops cleanly.
    assert!(!agent.task.is_finished());
    agent.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_file_missing_then_empty_is_retried_until_it_holds_the_password() {
    let dir = tempfile::tempdir().unwrap();
    let broker = broker_with_password(dir.path());
    let mut sub = authenticated_subscriber(broker.port).await;
    // Not there yet when the agent starts (a credential being rotated in).
    let file = dir.path().join("uplink-password");
    let mut cfg = with_user(&broker.url());
    cfg.password_file = Some(file.clone());
    // Its own client id: should two tests' brokers ever share a port, the
    // broker must not hand one test's session to the other.
    cfg.client_id = Some("linegate-gw1-rotated-password".into());
    let store_dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(cfg, open_store(store_dir.path()));
    let seq = agent.enqueue(MessageClass::Durable, 3).await;

    wait_for("the missing file in the uplink's error", LONG, || {
        agent.stats.last_error().is_some_and(|e| {
            e.contains("uplink.password_file") && e.contains(&file.display().to_string())
        })
    })
    .await;
    assert!(!agent.task.is_finished(), "the uplink keeps trying");
    assert!(!agent.stats.snapshot().connected);

    // Created but still empty: not a password, the uplink still waits.
    std::fs::write(&file, "").unwrap();
    wait_for("the empty file in the uplink's error", LONG, || {
        agent
            .stats
            .last_error()
            .is_some_and(|e| e.contains("empty"))
    })
    .await;
    assert_eq!(
        agent
            .stats
            .connects
            .load(std::sync::atomic::Ordering::SeqCst),
        0
    );

    // The password arrives: the next attempt reads it and connects.
    std::fs::write(&file, format!("{PASS}\n")).unwrap();
    let got = receive(&mut sub, &format!("{PREFIX}/m/press07/state"), |j| {
        j["seq"] == seq
    })
    .await;
    assert_eq!(got["n"], 3);
    assert!(agent.stats.snapshot().connected);
    agent.stop().await.unwrap();
}
