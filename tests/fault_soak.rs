//! The fault soak: the real agent binary, simulated machines over real Modbus
//! TCP (`linegate simulate`), a real Mosquitto broker with persistence, and a
//! TCP proxy of the test's own between agent and broker that can refuse,
//! cut or silently blackhole the link. Faults are injected at random (seeded)
//! for `SOAK_SECS` seconds: agent SIGKILLs (also before its first CONNACK),
//! agent SIGTERMs, broker kill -9s, link cuts, blackholes and, when the test
//! runs as root, a full disk under `data_dir` (a small tmpfs filled to the
//! brim). Then the faults stop, the outbox drains and the agent says goodbye.
//!
//! The judge is independent of the agent: `mosquitto_sub` (libmosquitto, not
//! the agent's rumqttc) as a durable subscriber (clean session off, QoS 1).
//! It must see, at the end:
//! - every data `seq` from the first to the last, with no gap except telemetry
//!   the agent itself counted as dropped (`outbox_state.dropped`);
//! - duplicates only within the in-flight window of a connection that died
//!   (at most `max_inflight` per connection the agent made; a SIGKILL's
//!   resending of the PUBACKs of its last 1.5 s, whose deletion was waiting
//!   for the next commit, is far less than a window at the soak's rate);
//! - no `seq` on status messages, and a `session` that grows per connection;
//! - the retained state of every machine equal to its latest state message;
//! - `PRAGMA integrity_check` ok after every kill, and the watchdog petted at
//!   the end.
//!
//! `scripts/soak` runs it for 10 minutes and prints the figures recorded in
//! docs/reliability.md; CI runs the short default.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::Mosquitto;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value as Json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

const BIN: &str = env!("CARGO_BIN_EXE_linegate");
/// In-flight window the agent is configured with (`uplink.max_inflight` is
/// not a key: rumqttc's default of the agent, 100, bounds duplicates).
const INFLIGHT: u64 = 100;
const PATIENCE: Duration = Duration::from_secs(120);

fn env_u64(key: &str, default: u64) -> u64 {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

// ---------- the link: a proxy that can refuse, cut and blackhole ----------

const OPEN: u8 = 0;
const REFUSE: u8 = 1;
const BLACKHOLE: u8 = 2;

/// A TCP proxy between agent and broker. `Refuse` closes new connections at
/// once; `Blackhole` keeps every connection open and swallows its bytes in
/// both directions, as a dead route does; `cut` kills the connections in use.
struct Link {
    port: u16,
    mode: Arc<AtomicU8>,
    cut: Arc<Notify>,
}

impl Link {
    async fn start(broker_port: u16) -> Link {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the link");
        let port = listener.local_addr().expect("link address").port();
        let mode = Arc::new(AtomicU8::new(OPEN));
        let cut = Arc::new(Notify::new());
        let (m, c) = (mode.clone(), cut.clone());
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                match m.load(Ordering::SeqCst) {
                    REFUSE => drop(inbound),
                    BLACKHOLE => {
                        let cut = c.clone().notified_owned();
                        tokio::spawn(swallow(inbound, cut));
                    }
                    _ => {
                        let Ok(outbound) = TcpStream::connect(("127.0.0.1", broker_port)).await
                        else {
                            continue;
                        };
                        let cut = c.clone().notified_owned();
                        tokio::spawn(relay(inbound, outbound, m.clone(), cut));
                    }
                }
            }
        });
        Link { port, mode, cut }
    }

    fn set(&self, mode: u8) {
        self.mode.store(mode, Ordering::SeqCst);
    }

    /// Kill every connection through the link (new ones follow the mode).
    fn cut(&self) {
        self.cut.notify_waiters();
    }
}

async fn swallow(mut s: TcpStream, cut: tokio::sync::futures::OwnedNotified) {
    let mut buf = [0u8; 4096];
    tokio::select! {
        _ = cut => {}
        _ = async { while let Ok(n) = s.read(&mut buf).await { if n == 0 { break; } } } => {}
    }
}

async fn relay(
    a: TcpStream,
    b: TcpStream,
    mode: Arc<AtomicU8>,
    cut: tokio::sync::futures::OwnedNotified,
) {
    let (mut ar, mut aw) = a.into_split();
    let (mut br, mut bw) = b.into_split();
    let m1 = mode.clone();
    let up = async move {
        let mut buf = [0u8; 16384];
        while let Ok(n) = ar.read(&mut buf).await {
            if n == 0 {
                break;
            }
            // A blackholed route swallows what it carries, silently.
            if m1.load(Ordering::SeqCst) != BLACKHOLE && bw.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
    };
    let down = async move {
        let mut buf = [0u8; 16384];
        while let Ok(n) = br.read(&mut buf).await {
            if n == 0 {
                break;
            }
            if mode.load(Ordering::SeqCst) != BLACKHOLE && aw.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
    };
    tokio::select! {
        _ = cut => {}
        _ = up => {}
        _ = down => {}
    }
}

// ---------- the judge: mosquitto_sub, a durable subscriber ----------

/// One message the judge saw.
#[derive(Debug, Clone)]
struct Seen {
    topic: String,
    body: Json,
}

struct Judge {
    seen: Arc<Mutex<Vec<Seen>>>,
    child: Arc<Mutex<Option<Child>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl Judge {
    /// Subscribes to everything the gateway publishes. mosquitto_sub
    /// reconnects by itself; if it ever exits (the broker was down when it
    /// tried), it is started again with the same client id and session.
    fn start(broker_port: u16, filter: &str) -> Judge {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let child: Arc<Mutex<Option<Child>>> = Arc::new(Mutex::new(None));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (s, c, st, filter) = (
            seen.clone(),
            child.clone(),
            stop.clone(),
            filter.to_string(),
        );
        std::thread::spawn(move || {
            while !st.load(Ordering::SeqCst) {
                let spawned = Command::new("mosquitto_sub")
                    .args(["-h", "127.0.0.1", "-p", &broker_port.to_string()])
                    .args(["-i", "soak-judge", "-c", "-q", "1", "-R"])
                    .args(["-t", &filter, "-F", "%t\t%p"])
                    .stdout(Stdio::piped())
                    .stderr(Stdio::null())
                    .spawn();
                let Ok(mut ch) = spawned else {
                    std::thread::sleep(Duration::from_millis(200));
                    continue;
                };
                let out = ch.stdout.take();
                *c.lock().unwrap() = Some(ch);
                if let Some(out) = out {
                    for line in BufReader::new(out).lines() {
                        let Ok(line) = line else { break };
                        let Some((topic, payload)) = line.split_once('\t') else {
                            continue;
                        };
                        let body = serde_json::from_str(payload).unwrap_or(Json::Null);
                        s.lock().unwrap().push(Seen {
                            topic: topic.to_string(),
                            body,
                        });
                    }
                }
                if let Some(mut ch) = c.lock().unwrap().take() {
                    let _ = ch.kill();
                    let _ = ch.wait();
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        });
        Judge { seen, child, stop }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn data_seqs(&self) -> Vec<u64> {
        self.seen()
            .iter()
            .filter(|m| !m.topic.ends_with("/status") || m.topic.ends_with("/orders/status"))
            .filter_map(|m| m.body.get("seq").and_then(Json::as_u64))
            .collect()
    }
}

impl Drop for Judge {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(mut ch) = self.child.lock().unwrap().take() {
            let _ = ch.kill();
            let _ = ch.wait();
        }
    }
}

// ---------- the agent, the machines, the disk ----------

struct Reaped(Option<Child>);

impl Drop for Reaped {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The agent under test with a fake systemd notify socket.
struct Agent {
    config: PathBuf,
    log: PathBuf,
    notify: PathBuf,
    child: Reaped,
    starts: u32,
}

impl Agent {
    fn start(&mut self) {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("agent log");
        let child = Command::new(BIN)
            .arg("run")
            .arg("--config")
            .arg(&self.config)
            .env("NOTIFY_SOCKET", &self.notify)
            .env("WATCHDOG_USEC", "2000000")
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start the agent");
        self.child = Reaped(Some(child));
        self.starts += 1;
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, as systemd stops it; returns whether it exited 0 in time.
    fn terminate(&mut self) -> bool {
        let Some(mut c) = self.child.0.take() else {
            return true;
        };
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(c.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = c.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        let _ = c.wait();
        false
    }

    fn running(&mut self) -> bool {
        match self.child.0.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }
}

/// A small tmpfs for `data_dir`, unmounted at the end. None when the test
/// cannot mount (not root): the disk fault is then left out, and said so.
struct SmallDisk {
    dir: PathBuf,
}

impl SmallDisk {
    fn mount(dir: &Path, mb: u64) -> Option<SmallDisk> {
        if std::env::var("SOAK_DISK").as_deref() == Ok("0") {
            return None;
        }
        fs::create_dir_all(dir).ok()?;
        let ok = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={mb}m,mode=0700"),
                "tmpfs",
            ])
            .arg(dir)
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        ok.then(|| SmallDisk {
            dir: dir.to_path_buf(),
        })
    }

    fn filler(&self) -> PathBuf {
        self.dir.join("filler")
    }

    /// Write until the disk is full to the last byte.
    fn fill(&self) {
        let mut f = fs::File::create(self.filler()).expect("create the filler");
        let block = vec![0xA5u8; 64 * 1024];
        while f.write_all(&block).is_ok() {}
        let small = [0u8; 512];
        while f.write_all(&small).is_ok() {}
        while f.write_all(&small[..1]).is_ok() {}
        let _ = f.sync_all();
    }

    fn free(&self) {
        let _ = fs::remove_file(self.filler());
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

fn integrity_ok(db: &Path) -> Result<(), String> {
    if !db.exists() {
        return Ok(());
    }
    let conn = rusqlite::Connection::open(db).map_err(|e| e.to_string())?;
    let r: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .map_err(|e| e.to_string())?;
    if r == "ok" {
        Ok(())
    } else {
        Err(r)
    }
}

/// Rows in the outbox and telemetry it dropped by its cap (None when the
/// store cannot be read at this moment).
fn outbox(db: &Path) -> Option<(u64, u64)> {
    let conn = rusqlite::Connection::open_with_flags(
        db,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .ok()?;
    conn.busy_timeout(Duration::from_secs(2)).ok()?;
    conn.query_row(
        "SELECT rows, dropped FROM outbox_state WHERE id = 1",
        [],
        |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64)),
    )
    .ok()
}

/// The simulator's config with the uplink through the link and `data_dir`.
fn agent_config(sim_config: &str, data_dir: &Path, link_port: u16) -> String {
    let mut text = String::new();
    for line in sim_config.lines() {
        if line.starts_with("data_dir") {
            text.push_str(&format!("data_dir = \"{}\"\n", data_dir.display()));
        } else {
            text.push_str(line);
            text.push('\n');
        }
    }
    let uplink = format!(
        "\n[uplink]\nurl = \"mqtt://127.0.0.1:{link_port}\"\nclient_id = \"soak-gw\"\n\
         keepalive_s = 5\nheartbeat_s = 5\nbackoff_min_ms = 200\nbackoff_max_ms = 2000\n"
    );
    match text.find("\n[[bus]]") {
        Some(i) => format!("{}{}{}", &text[..i], uplink, &text[i..]),
        None => format!("{text}{uplink}"),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Fault {
    AgentKill,
    AgentKillBeforeConnack,
    AgentTerm,
    BrokerKill,
    LinkCut,
    Blackhole,
    DiskFull,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_random_faults_nothing_is_lost_and_the_store_stays_sound() {
    let soak = Duration::from_secs(env_u64("SOAK_SECS", 45));
    let seed = env_u64("SOAK_SEED", 7);
    let mut rng = StdRng::seed_from_u64(seed);
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();

    // Machines: the simulator at 4x speed, for many state changes.
    let sim_cfg = dir.join("sim.toml");
    let sim = Command::new(BIN)
        .args([
            "simulate",
            "--machines",
            "3",
            "--base-port",
            "0",
            "--speed",
            "4",
        ])
        .args(["--seconds", &(soak.as_secs() + 600).to_string()])
        .arg("--write-config")
        .arg(&sim_cfg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the simulator");
    let _sim = Reaped(Some(sim));
    let started = Instant::now();
    let sim_text = loop {
        if let Some(t) = fs::read_to_string(&sim_cfg).ok().filter(|t| !t.is_empty()) {
            break t;
        }
        assert!(
            started.elapsed() < PATIENCE,
            "the simulator wrote no config"
        );
        std::thread::sleep(Duration::from_millis(50));
    };

    // The broker keeps sessions across its own kills (the judge's queue).
    let mut broker = Mosquitto::start_with(
        "user root\npersistence true\npersistence_location {dir}/\nautosave_interval 1\nautosave_on_changes true\n",
    );
    let link = Link::start(broker.port).await;
    let judge = Judge::start(broker.port, "linegate/v1/#");
    tokio::time::sleep(Duration::from_millis(500)).await;

    let data_dir = dir.join("data");
    let disk = SmallDisk::mount(&data_dir, 48);
    if disk.is_none() {
        println!("soak: no tmpfs under data_dir (not root, or SOAK_DISK=0): no disk-full faults");
        fs::create_dir_all(&data_dir).expect("data dir");
    }
    let db = data_dir.join("linegate.db");
    let config = dir.join("agent.toml");
    fs::write(&config, agent_config(&sim_text, &data_dir, link.port)).expect("write config");

    // The fake systemd: the notify socket, read by a thread.
    let notify = dir.join("notify.sock");
    let socket = UnixDatagram::bind(&notify).expect("notify socket");
    let pets: Arc<Mutex<Vec<Instant>>> = Arc::new(Mutex::new(Vec::new()));
    let p = pets.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = socket.recv(&mut buf) {
            if String::from_utf8_lossy(&buf[..n]).contains("WATCHDOG=1") {
                p.lock().unwrap().push(Instant::now());
            }
        }
    });

    let mut agent = Agent {
        config: config.clone(),
        log: dir.join("agent.log"),
        notify,
        child: Reaped(None),
        starts: 0,
    };
    agent.start();

    let mut faults: BTreeMap<Fault, u32> = BTreeMap::new();
    let mut integrity_checks = 0u32;
    let mut failed_terms = 0u32;
    let mut kinds = vec![
        Fault::AgentKill,
        Fault::AgentKillBeforeConnack,
        Fault::AgentTerm,
        Fault::BrokerKill,
        Fault::LinkCut,
        Fault::Blackhole,
    ];
    if disk.is_some() {
        kinds.push(Fault::DiskFull);
    }
    let soak_start = Instant::now();
    while soak_start.elapsed() < soak {
        tokio::time::sleep(Duration::from_millis(rng.random_range(1500..4000))).await;
        let fault = kinds[rng.random_range(0..kinds.len())];
        *faults.entry(fault).or_default() += 1;
        match fault {
            Fault::AgentKill => {
                agent.kill();
                integrity_ok(&db).expect("integrity_check after SIGKILL");
                integrity_checks += 1;
                tokio::time::sleep(Duration::from_millis(rng.random_range(100..1500))).await;
                agent.start();
            }
            Fault::AgentKillBeforeConnack => {
                // The link refuses: the agent starts, never gets a CONNACK, dies.
                link.set(REFUSE);
                link.cut();
                agent.kill();
                agent.start();
                tokio::time::sleep(Duration::from_millis(rng.random_range(300..1500))).await;
                agent.kill();
                integrity_ok(&db).expect("integrity_check after SIGKILL before CONNACK");
                integrity_checks += 1;
                agent.start();
                tokio::time::sleep(Duration::from_millis(500)).await;
                link.set(OPEN);
            }
            Fault::AgentTerm => {
                if !agent.terminate() {
                    failed_terms += 1;
                }
                integrity_ok(&db).expect("integrity_check after SIGTERM");
                integrity_checks += 1;
                agent.start();
            }
            Fault::BrokerKill => {
                broker.stop();
                tokio::time::sleep(Duration::from_millis(rng.random_range(500..3000))).await;
                broker.resume();
            }
            Fault::LinkCut => {
                link.set(REFUSE);
                link.cut();
                tokio::time::sleep(Duration::from_millis(rng.random_range(500..3000))).await;
                link.set(OPEN);
            }
            Fault::Blackhole => {
                link.set(BLACKHOLE);
                tokio::time::sleep(Duration::from_millis(rng.random_range(3000..9000))).await;
                link.set(OPEN);
                link.cut();
            }
            Fault::DiskFull => {
                if let Some(d) = disk.as_ref() {
                    link.set(REFUSE);
                    link.cut();
                    d.fill();
                    tokio::time::sleep(Duration::from_millis(rng.random_range(2000..6000))).await;
                    // An agent started on a full disk must run too.
                    if rng.random_bool(0.5) {
                        agent.kill();
                        agent.start();
                        tokio::time::sleep(Duration::from_millis(1500)).await;
                    }
                    d.free();
                    link.set(OPEN);
                }
            }
        }
        assert!(
            agent.running(),
            "the agent exited after {fault:?}; its log:\n{}",
            fs::read_to_string(&agent.log).unwrap_or_default()
        );
    }

    // Calm: everything up; the outbox drains.
    link.set(OPEN);
    let calm = Instant::now();
    let dropped = loop {
        if let Some((0, d)) = outbox(&db) {
            break d;
        }
        assert!(
            calm.elapsed() < PATIENCE,
            "the outbox did not drain within {PATIENCE:?}; agent log:\n{}",
            fs::read_to_string(&agent.log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let drain = calm.elapsed();
    // The watchdog is still petted at the end.
    let last_pet = pets.lock().unwrap().last().copied();
    assert!(
        last_pet.is_some_and(|t| t.elapsed() < Duration::from_secs(3)),
        "no watchdog pet in the last 3 s"
    );
    assert!(
        agent.terminate(),
        "the final SIGTERM did not end the agent with 0"
    );
    integrity_ok(&db).expect("integrity_check at the end");
    tokio::time::sleep(Duration::from_secs(2)).await;

    // The verdict.
    let seqs = judge.data_seqs();
    let unique: BTreeSet<u64> = seqs.iter().copied().collect();
    let (first, last) = (
        unique.first().copied().unwrap_or(0),
        unique.last().copied().unwrap_or(0),
    );
    let gaps: Vec<u64> = (first..=last).filter(|s| !unique.contains(s)).collect();
    let duplicates = seqs.len() as u64 - unique.len() as u64;
    let seen = judge.seen();
    let statuses: Vec<&Seen> = seen
        .iter()
        .filter(|m| m.topic.ends_with("/status") && !m.topic.ends_with("/orders/status"))
        .collect();
    let births: Vec<u64> = statuses
        .iter()
        .filter(|m| m.body.get("online") == Some(&Json::Bool(true)))
        .filter_map(|m| m.body.get("session").and_then(Json::as_u64))
        .collect();

    println!("soak: {} s, seed {seed}", soak.as_secs());
    println!("soak: faults {faults:?}");
    println!(
        "soak: agent starts {}, integrity checks {integrity_checks} (all ok), births seen {}",
        agent.starts,
        births.len()
    );
    println!(
        "soak: data messages {} (seq {first}..={last}), unique {}, duplicates {duplicates}, gaps {}, dropped telemetry {dropped}",
        seqs.len(),
        unique.len(),
        gaps.len()
    );
    println!(
        "soak: drain after the last fault {:.1} s",
        drain.as_secs_f64()
    );

    assert!(
        unique.len() > 20,
        "the judge saw almost nothing: {}",
        unique.len()
    );
    assert_eq!(
        first, 1,
        "the first data seq the judge saw is {first}, not 1"
    );
    assert!(
        gaps.len() as u64 <= dropped,
        "{} seq gaps but only {dropped} telemetry messages counted as dropped; first gaps {:?}",
        gaps.len(),
        &gaps[..gaps.len().min(20)]
    );
    assert!(
        duplicates <= INFLIGHT * u64::from(agent.starts + births.len() as u32),
        "{duplicates} duplicates: more than the in-flight window of the connections made"
    );
    assert_eq!(
        failed_terms, 0,
        "a SIGTERM did not end the agent with exit 0"
    );
    for s in &statuses {
        assert!(
            s.body.get("seq").is_none(),
            "a status message carries a seq: {}",
            s.body
        );
        assert!(
            s.body.get("session").is_some(),
            "a status message without session: {}",
            s.body
        );
    }
    let mut sorted = births.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(
        sorted.len(),
        births.len(),
        "two births carry the same session: {births:?}"
    );

    // Retained state: the latest of each machine.
    let mut latest: BTreeMap<String, (u64, Json)> = BTreeMap::new();
    for m in seen.iter().filter(|m| m.topic.ends_with("/state")) {
        if let Some(seq) = m.body.get("seq").and_then(Json::as_u64) {
            let e = latest.entry(m.topic.clone()).or_insert((0, Json::Null));
            if seq >= e.0 {
                *e = (seq, m.body.clone());
            }
        }
    }
    let retained = Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &broker.port.to_string()])
        .args(["-t", "linegate/v1/+/+/m/+/state", "-F", "%t\t%p"])
        .args(["-W", "3", "-C", &latest.len().to_string()])
        .output()
        .expect("mosquitto_sub for the retained state");
    let text = String::from_utf8_lossy(&retained.stdout);
    let got: BTreeMap<String, Json> = text
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .map(|(t, p)| (t.to_string(), serde_json::from_str(p).unwrap_or(Json::Null)))
        .collect();
    assert!(!latest.is_empty(), "the judge saw no state message");
    for (topic, (seq, body)) in &latest {
        let r = got
            .get(topic)
            .unwrap_or_else(|| panic!("no retained state on {topic}"));
        assert_eq!(
            r.get("seq").and_then(Json::as_u64),
            Some(*seq),
            "{topic}: retained {r}, latest seen {body}"
        );
    }
    drop(judge);
    drop(disk);
}
