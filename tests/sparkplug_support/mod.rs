//! Support for the Sparkplug tests: the independent host (pysparkplug,
//! tests/sparkplug/host.py, in the venv `./scripts/test` makes under
//! target/py-venv), a simulated line with its agent, and the protocol
//! checks every test runs over the host's log.
#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio_util::sync::CancellationToken;

pub const GROUP: &str = "line1";
pub const NODE: &str = "gw-demo";

/// The venv's python, with pysparkplug importable; a clear failure otherwise.
pub fn python() -> PathBuf {
    let py = std::env::var_os("LINEGATE_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/py-venv/bin/python"));
    let ok = Command::new(&py)
        .args(["-c", "import pysparkplug"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        ok,
        "the Sparkplug tests need python with pysparkplug at {}: run ./scripts/test (it creates target/py-venv and installs pysparkplug), or set LINEGATE_TEST_PYTHON",
        py.display()
    );
    py
}

/// The independent Sparkplug host, running. Killed when dropped.
pub struct Host {
    child: Child,
    stdin: Option<ChildStdin>,
    pub log: PathBuf,
}

impl Host {
    pub fn start(port: u16, log: PathBuf, host_id: Option<&str>) -> Host {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sparkplug/host.py");
        let mut cmd = Command::new(python());
        cmd.arg(script)
            .arg("--port")
            .arg(port.to_string())
            .arg("--log")
            .arg(&log);
        if let Some(h) = host_id {
            cmd.arg("--host-id").arg(h);
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the python Sparkplug host");
        let stdin = child.stdin.take();
        let host = Host { child, stdin, log };
        host.wait_for("the host to subscribe", Duration::from_secs(20), |m| {
            m.iter().any(|e| e["kind"] == "ready")
        });
        host
    }

    /// Send a command line (see host.py).
    pub fn command(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("host stdin");
        writeln!(stdin, "{line}").expect("write to host");
        stdin.flush().expect("flush host stdin");
        let n = line.to_string();
        self.wait_for("the host to take a command", Duration::from_secs(5), |m| {
            m.iter()
                .any(|e| e["kind"] == "command" && e["line"] == n.as_str())
        });
    }

    /// Every line of the log so far.
    pub fn messages(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Wait until `done` holds for the log; panics after `limit` naming `what`.
    pub fn wait_for(&self, what: &str, limit: Duration, done: impl Fn(&[Value]) -> bool) {
        let deadline = Instant::now() + limit;
        loop {
            let m = self.messages();
            if done(&m) {
                return;
            }
            if Instant::now() > deadline {
                let tail: Vec<String> = m
                    .iter()
                    .rev()
                    .take(15)
                    .map(|e| format!("{} {}", e["kind"], e["topic"]))
                    .collect();
                panic!("timed out after {limit:?} waiting for {what}; last messages (newest first): {tail:?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Messages of the edge node under test, in arrival order.
pub fn node_messages(all: &[Value]) -> Vec<&Value> {
    all.iter()
        .filter(|e| e["group"] == GROUP && e["node"] == NODE)
        .collect()
}

pub fn kind(e: &Value) -> &str {
    e["kind"].as_str().unwrap_or("")
}

pub fn device(e: &Value) -> &str {
    e["device"].as_str().unwrap_or("")
}

pub fn metrics(e: &Value) -> &[Value] {
    e["metrics"].as_array().map(Vec::as_slice).unwrap_or(&[])
}

pub fn bd_seq(e: &Value) -> u64 {
    metrics(e)
        .iter()
        .find(|m| m["name"] == "bdSeq")
        .and_then(|m| m["value"].as_u64())
        .unwrap_or_else(|| panic!("no bdSeq in {e}"))
}

/// What the protocol checks found, for the tests' own assertions.
#[derive(Debug, Default)]
pub struct Checked {
    pub nbirths: Vec<u64>,
    /// NDEATHs that ended a session (their bdSeq is that of its NBIRTH).
    pub ending_ndeaths: usize,
    pub data_metrics: usize,
    pub historical_metrics: usize,
}

/// Check the whole log against the spec: NBIRTH (seq 0) before any DBIRTH,
/// DBIRTH before a device's DDATA, seq +1 modulo 256 on every message of a
/// session, every alias resolved to a birth metric with the same datatype,
/// an NDEATH ends a session only with the bdSeq of its NBIRTH.
pub fn check_protocol(all: &[Value]) -> Checked {
    let mut out = Checked::default();
    let mut session: Option<u64> = None;
    let mut last_seq: u64 = 0;
    let mut born: HashSet<String> = HashSet::new();
    let mut births: HashMap<String, HashMap<String, u64>> = HashMap::new();
    for (i, e) in node_messages(all).into_iter().enumerate() {
        assert!(e.get("error").is_none(), "message {i} did not decode: {e}");
        let k = kind(e);
        let seq = e["seq"].as_u64();
        let step = |last: u64| {
            let s = seq.unwrap_or_else(|| panic!("message {i} without seq: {e}"));
            assert_eq!(
                s,
                (last + 1) % 256,
                "seq not continuous at message {i}: {e}"
            );
            s
        };
        match k {
            "NBIRTH" => {
                assert_eq!(seq, Some(0), "NBIRTH seq must be 0: {e}");
                let bd = bd_seq(e);
                session = Some(bd);
                out.nbirths.push(bd);
                last_seq = 0;
                born.clear();
                assert!(
                    metrics(e)
                        .iter()
                        .any(|m| m["name"] == "Node Control/Rebirth"),
                    "NBIRTH without Node Control/Rebirth: {e}"
                );
            }
            "NDEATH" if session == Some(bd_seq(e)) => {
                session = None;
                born.clear();
                out.ending_ndeaths += 1;
            }
            "DBIRTH" => {
                assert!(session.is_some(), "DBIRTH without an NBIRTH before it: {e}");
                last_seq = step(last_seq);
                let mut types = HashMap::new();
                for m in metrics(e) {
                    let name = m["name"]
                        .as_str()
                        .unwrap_or_else(|| panic!("DBIRTH metric without name: {m}"));
                    assert!(
                        m["alias"].as_u64().is_some(),
                        "DBIRTH metric without alias: {m}"
                    );
                    types.insert(name.to_string(), m["datatype"].as_u64().unwrap_or(0));
                }
                births.insert(device(e).to_string(), types);
                born.insert(device(e).to_string());
            }
            "DDATA" => {
                assert!(session.is_some(), "DDATA without an NBIRTH before it: {e}");
                assert!(
                    born.contains(device(e)),
                    "DDATA of {} before its DBIRTH: {e}",
                    device(e)
                );
                last_seq = step(last_seq);
                let types = &births[device(e)];
                for m in metrics(e) {
                    let name = m["name"]
                        .as_str()
                        .unwrap_or_else(|| panic!("DDATA alias not resolved: {m}"));
                    let birth_type = types
                        .get(name)
                        .unwrap_or_else(|| panic!("DDATA metric {name} not in the DBIRTH"));
                    assert_eq!(
                        m["datatype"].as_u64(),
                        Some(*birth_type),
                        "datatype of {name} differs from its birth: {m}"
                    );
                    assert!(
                        m["timestamp"].as_u64().is_some(),
                        "DDATA metric without timestamp: {m}"
                    );
                    out.data_metrics += 1;
                    if m["is_historical"] == true {
                        out.historical_metrics += 1;
                    }
                }
            }
            "DDEATH" => {
                assert!(session.is_some(), "DDEATH without an NBIRTH: {e}");
                last_seq = step(last_seq);
                born.remove(device(e));
            }
            _ => {}
        }
    }
    out
}

/// A simulated line (in-process Modbus TCP servers) and its agent config.
pub struct Line {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub sim: linegate::sim::SimLine,
    stop: CancellationToken,
}

impl Line {
    /// Two machines at `speed`; `extra` is appended to the config. The
    /// `spindle_rpm` signal gets `scale = 0.5` (a scaled integer: Double).
    pub async fn start(speed: f64, extra: &str) -> Line {
        let dir = tempfile::tempdir().expect("tempdir");
        let stop = CancellationToken::new();
        let sim = linegate::sim::serve(
            linegate::sim::SimOptions {
                machines: 2,
                base_port: 0,
                speed,
                ..Default::default()
            },
            stop.clone(),
        )
        .await
        .expect("serve the simulated line");
        let mut text = linegate::sim::demo_config(&sim, &dir.path().join("data"));
        assert!(
            text.contains("deadband = 20.0"),
            "the demo config changed: spindle_rpm"
        );
        text = text.replace("deadband = 20.0", "deadband = 20.0\nscale = 0.5");
        text.push_str(extra);
        let config = dir.path().join("linegate.toml");
        std::fs::write(&config, text).expect("write config");
        Line {
            dir,
            config,
            sim,
            stop,
        }
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }
}

impl Drop for Line {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The real agent binary. Killed when dropped.
pub struct Agent {
    child: Child,
    pub log: PathBuf,
}

impl Agent {
    pub fn start(line: &Line, n: usize) -> Agent {
        let log = line.dir.path().join(format!("agent-{n}.log"));
        let child = Command::new(env!("CARGO_BIN_EXE_linegate"))
            .arg("-v")
            .arg("run")
            .arg("-c")
            .arg(&line.config)
            .env_remove("RUST_LOG")
            .env_remove("NOTIFY_SOCKET")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("agent log"))
            .spawn()
            .expect("start linegate run");
        Agent { child, log }
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, and wait for the exit.
    pub fn terminate(&mut self) {
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .expect("kill -TERM");
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "agent did not stop within 15 s of SIGTERM\n{}",
            self.log_text()
        );
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            let text = self.log_text();
            let lines: Vec<&str> = text.lines().collect();
            let from = lines.len().saturating_sub(40);
            eprintln!(
                "--- agent log ({}) ---\n{}",
                self.log.display(),
                lines[from..].join("\n")
            );
        }
    }
}
