//! A machine that cannot be read says why: a Modbus TCP device that accepts
//! the connection and hangs up at once is described as such (not as a stale
//! errno, "Operation now in progress (os error 115)"), and a machine offline
//! since the agent started carries that cause in its state message on the
//! broker and in `status`, not "agent not running". The device is a real
//! TCP listener that keeps its own count of the connections it hung up on.

mod common;

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::Value;
use tokio::sync::mpsc;

const BIN: &str = env!("CARGO_BIN_EXE_linegate");
const PATIENCE: Duration = Duration::from_secs(30);
/// The device hangs up before it replies: a close, or a reset when our
/// request was already in its socket; either way it is named as such.
const CLOSED: &str = "the connection without replying";

/// A "device" that accepts every connection and closes it at once.
struct HangingUpDevice {
    addr: String,
    /// Connections accepted and closed: the device's own record.
    hung_up: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl HangingUpDevice {
    fn start() -> HangingUpDevice {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let hung_up = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (count, halt) = (hung_up.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !halt.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        drop(conn);
                        count.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        HangingUpDevice {
            addr,
            hung_up,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for HangingUpDevice {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A child process killed when the test ends, however it ends.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn config(dir: &std::path::Path, device: &str, uplink: &str) -> std::path::PathBuf {
    let file = dir.join("linegate.toml");
    let text = format!(
        r#"[gateway]
id = "gw"
site = "s"
data_dir = {data:?}
{uplink}
[[bus]]
id = "cell-a"
transport = "tcp"
address = "{device}"
timeout_ms = 500
backoff_min_ms = 100
backoff_max_ms = 300

[[machine]]
id = "press07"
bus = "cell-a"
poll_ms = 200

[[machine.signal]]
name = "part_count"
area = "holding"
address = 100
"#,
        data = dir.join("data").display().to_string(),
    );
    std::fs::write(&file, text).unwrap();
    file
}

#[test]
fn a_device_that_accepts_and_closes_at_once_is_described_by_read_once() {
    let device = HangingUpDevice::start();
    let dir = tempfile::tempdir().unwrap();
    let file = config(dir.path(), &device.addr, "");
    let out = Command::new(BIN)
        .args(["read", "--once", "-c"])
        .arg(&file)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "a failed read: {stdout}");
    let json: Value = serde_json::from_str(&stdout).unwrap();
    let error = json["press07"]["part_count"]["error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(error.contains(CLOSED), "{error}");
    assert!(
        error.contains("the device closed") || error.contains("the device reset"),
        "{error}"
    );
    assert!(error.contains(&device.addr), "names the device: {error}");
    assert!(!error.contains("os error 115"), "{error}");
    assert!(
        device.hung_up.load(Ordering::SeqCst) >= 1,
        "the device saw the connection it hung up on"
    );
}

/// Every state message of press07 on the broker, in arrival order.
async fn state_messages(port: u16) -> mpsc::UnboundedReceiver<Value> {
    let mut o = MqttOptions::new("state-watcher", "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(5));
    let (client, mut events) = AsyncClient::new(o, 16);
    let (tx, rx) = mpsc::unbounded_channel();
    let (subscribed_tx, mut subscribed) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    let _ = client
                        .subscribe("linegate/v1/s/gw/m/press07/state", QoS::AtLeastOnce)
                        .await;
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    let _ = subscribed_tx.send(());
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let json = serde_json::from_slice(&p.payload).unwrap_or(Value::Null);
                    if tx.send(json).is_err() {
                        break;
                    }
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    });
    tokio::time::timeout(PATIENCE, subscribed.recv())
        .await
        .expect("subscribed within 30 s");
    rx
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_machine_offline_since_start_reports_the_real_cause_in_its_state_message() {
    let broker = common::Mosquitto::start();
    let mut states = state_messages(broker.port).await;
    let device = HangingUpDevice::start();
    let dir = tempfile::tempdir().unwrap();
    let uplink = format!("[uplink]\nurl = {:?}\n", broker.url());
    let file = config(dir.path(), &device.addr, &uplink);
    let agent = Reaped(
        Command::new(BIN)
            .arg("run")
            .arg("-c")
            .arg(&file)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );

    // Both reports, in whatever order they arrive: one stored before the
    // link was up goes as historical, one stored after it as live, and live
    // rows may overtake the backlog. `seq` says which came first.
    let mut seen: Vec<Value> = Vec::new();
    let reason_of = |m: &Value| m["reason"].as_str().unwrap_or_default().to_string();
    let both = tokio::time::timeout(PATIENCE, async {
        while let Some(m) = states.recv().await {
            seen.push(m);
            let start = seen.iter().find(|m| reason_of(m) == "agent not running");
            let cause = seen.iter().find(|m| reason_of(m).contains(CLOSED));
            if let (Some(start), Some(cause)) = (start, cause) {
                return Some((start.clone(), cause.clone()));
            }
        }
        None
    })
    .await;
    let (start, cause) = match both {
        Ok(Some(pair)) => pair,
        _ => panic!("not both reports within 30 s: {seen:?}"),
    };
    assert_eq!(start["prev"], Value::Null, "the first report: {start}");
    assert_eq!(cause["state"], "offline", "{cause}");
    assert_eq!(cause["prev"], "offline", "{cause}");
    assert_eq!(cause["machine"], "press07", "{cause}");
    assert!(
        start["seq"].as_u64() < cause["seq"].as_u64(),
        "the cause is reported after the start: {start} {cause}"
    );
    assert_eq!(
        cause["since"], start["since"],
        "the same offline spell, still from the start"
    );
    assert!(device.hung_up.load(Ordering::SeqCst) >= 1);

    // SIGTERM: a clean stop saves the state; `status` shows the cause too.
    // SAFETY: kill only sends a signal to the agent this test started.
    unsafe { libc::kill(agent.0.id() as libc::pid_t, libc::SIGTERM) };
    let mut agent = agent;
    let stopped = tokio::task::spawn_blocking(move || {
        let status = agent.0.wait();
        (agent, status)
    });
    let (_agent, status) = tokio::time::timeout(PATIENCE, stopped)
        .await
        .expect("the agent stops within 30 s")
        .unwrap();
    assert!(status.unwrap().success());
    let out = Command::new(BIN)
        .args(["status", "--json", "-c"])
        .arg(&file)
        .output()
        .unwrap();
    let rows: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(rows[0]["state"], "offline", "{rows}");
    assert!(
        rows[0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains(CLOSED)),
        "{rows}"
    );
}
