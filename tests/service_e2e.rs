//! The real binary under the unit's own command line, as systemd would run
//! it: the `ExecStart=` and `Environment=` lines of `systemd/linegate.service`
//! (paths moved into a temp folder), a fake `NOTIFY_SOCKET` (a Unix datagram
//! socket, as systemd provides), `WATCHDOG_USEC`, and stderr behind
//! `JOURNAL_STREAM`, against simulated machines (`linegate simulate`) over
//! real Modbus TCP. The uplink points at a closed port, so every message
//! stays in the SQLite outbox where the test can count it.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_linegate");
const UNIT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/systemd/linegate.service");
/// Paths of the unit that the test moves into its temp folder.
const UNIT_CONFIG: &str = "/etc/linegate/linegate.toml";
const UNIT_STATE_DIR: &str = "/var/lib/linegate";
/// Small, so a test sees many pets (systemd's minimum is 1 s).
const WATCHDOG_USEC: &str = "2000000";
/// Upper bound for anything the test waits for (never a speed assertion).
const PATIENCE: Duration = Duration::from_secs(30);

/// A child process killed when the test ends, however it ends.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Simulated machines on free ports; returns the process and the config it wrote.
fn simulate(dir: &Path, machines: usize) -> (Reaped, String) {
    let config = dir.join("sim.toml");
    let child = Command::new(BIN)
        .args(["simulate", "--machines", &machines.to_string()])
        .args(["--base-port", "0", "--seconds", "300", "--speed", "4"])
        .arg("--write-config")
        .arg(&config)
        // The unit's Environment= overrides it with the state folder.
        .arg("--data-dir")
        .arg(dir.join("not-the-state-dir"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start linegate simulate");
    let sim = Reaped(child);
    let text = wait_for(|| fs::read_to_string(&config).ok().filter(|t| !t.is_empty()))
        .expect("the simulator writes its config");
    // The simulator writes the config after its listeners are bound.
    (sim, text)
}

/// The same config with an uplink to a broker that is not there (a port
/// that was free a moment ago): every message stays in the outbox.
fn with_dead_uplink(config: &str) -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let uplink = format!(
        "\n[uplink]\nurl = \"mqtt://127.0.0.1:{port}\"\nbackoff_min_ms = 200\nbackoff_max_ms = 1000\n"
    );
    // Top-level tables must come before the [[bus]]/[[machine]] arrays' tables.
    match config.find("\n[[bus]]") {
        Some(i) => format!("{}{}{}", &config[..i], uplink, &config[i..]),
        None => format!("{config}{uplink}"),
    }
}

/// The config without the `[[bus]]` and `[[machine]]` entries (with their
/// `[[machine.signal]]` sub-tables) that name `id`.
fn without_machine(config: &str, id: &str) -> String {
    let mut blocks = config.split("\n[[");
    let mut out = blocks.next().unwrap_or_default().to_string();
    let mut skipping = false;
    for b in blocks {
        let header = b.split("]]").next().unwrap_or_default();
        if !header.contains('.') {
            // A new bus or machine: does its own id line name `id`?
            let own = b
                .lines()
                .find(|l| l.starts_with("id = "))
                .unwrap_or_default();
            skipping = own == format!("id = \"{id}\"") || own == format!("id = \"bus-{id}\"");
        }
        if !skipping {
            out.push_str("\n[[");
            out.push_str(b);
        }
    }
    out
}

/// What systemd would run: `ExecStart=` split on spaces and the
/// `Environment=` assignments, with the unit's paths moved to `dir`.
fn unit_command(dir: &Path, config: &Path) -> Command {
    let unit = fs::read_to_string(UNIT).expect("read the unit file");
    let data = dir.join("state");
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("the unit has an ExecStart= line");
    let mut argv = exec.split_whitespace();
    let program = argv.next().expect("ExecStart names a program");
    assert!(
        program.ends_with("/linegate"),
        "ExecStart runs {program}, not linegate"
    );
    let mut cmd = Command::new(BIN);
    for arg in argv {
        if arg == UNIT_CONFIG {
            cmd.arg(config);
        } else {
            cmd.arg(arg);
        }
    }
    for assignment in unit.lines().filter_map(|l| l.strip_prefix("Environment=")) {
        let (key, value) = assignment
            .split_once('=')
            .expect("Environment= holds KEY=VALUE");
        let value = value.replace(UNIT_STATE_DIR, &data.to_string_lossy());
        cmd.env(key, value);
    }
    cmd
}

/// The fake systemd side: the notify socket, read by a thread.
struct Notifications {
    _socket_dir: tempfile::TempDir,
    /// The agent's log, shown when a notification does not come.
    log: PathBuf,
    rx: mpsc::Receiver<(Instant, String)>,
    seen: Vec<(Instant, String)>,
}

impl Notifications {
    fn listen(cmd: &mut Command, log: &Path) -> Notifications {
        let socket_dir = tempfile::tempdir().expect("tempdir");
        let path = socket_dir.path().join("notify.sock");
        let socket = UnixDatagram::bind(&path).expect("bind the notify socket");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 4096];
            while let Ok(n) = socket.recv(&mut buf) {
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                if tx.send((Instant::now(), msg)).is_err() {
                    break;
                }
            }
        });
        cmd.env("NOTIFY_SOCKET", &path)
            .env("WATCHDOG_USEC", WATCHDOG_USEC)
            .env_remove("WATCHDOG_PID");
        Notifications {
            _socket_dir: socket_dir,
            log: log.to_path_buf(),
            rx,
            seen: Vec::new(),
        }
    }

    /// Wait for a datagram holding `line`; the time it arrived.
    fn wait_for(&mut self, line: &str) -> Instant {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok((at, msg)) => {
                    let found = msg.lines().any(|l| l == line);
                    self.seen.push((at, msg));
                    if found {
                        return at;
                    }
                }
                Err(_) => panic!(
                    "no {line} within {PATIENCE:?}; got {:?}; log:\n{}",
                    self.seen,
                    fs::read_to_string(&self.log).unwrap_or_default()
                ),
            }
        }
    }

    /// How many datagrams with `line` arrive within `window`.
    fn count_for(&mut self, line: &str, window: Duration) -> usize {
        let until = Instant::now() + window;
        let mut n = 0;
        while let Some(left) = until.checked_duration_since(Instant::now()) {
            match self.rx.recv_timeout(left) {
                Ok((at, msg)) => {
                    if msg.lines().any(|l| l == line) {
                        n += 1;
                    }
                    self.seen.push((at, msg));
                }
                Err(_) => break,
            }
        }
        n
    }
}

/// The agent, started from the unit, with stderr in a file that
/// `JOURNAL_STREAM` names (so it logs as it would to the journal).
struct Agent {
    child: Reaped,
    log: PathBuf,
    notify: Notifications,
    db: PathBuf,
}

impl Agent {
    fn start(dir: &Path, config: &Path) -> Agent {
        let mut cmd = unit_command(dir, config);
        let log = dir.join("journal.log");
        let notify = Notifications::listen(&mut cmd, &log);
        let stderr = fs::File::create(&log).expect("create the log file");
        let meta = stderr.metadata().expect("stat the log file");
        cmd.env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()))
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(stderr);
        let child = Reaped(cmd.spawn().expect("start linegate run"));
        Agent {
            child,
            log,
            notify,
            db: dir.join("state").join("linegate.db"),
        }
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.0.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} failed");
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Wait until the log has a line containing `text`.
    fn wait_for_log(&self, text: &str) -> String {
        wait_for(|| {
            self.log()
                .lines()
                .find(|l| l.contains(text))
                .map(str::to_string)
        })
        .unwrap_or_else(|| panic!("no log line with {text:?}; log:\n{}", self.log()))
    }

    /// Run a read-only query on the store.
    fn query<T>(&self, f: impl Fn(&rusqlite::Connection) -> rusqlite::Result<T>) -> T {
        let conn = rusqlite::Connection::open_with_flags(
            &self.db,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .expect("open the store read-only");
        conn.busy_timeout(Duration::from_secs(5))
            .expect("busy timeout");
        f(&conn).expect("query the store")
    }

    fn state_changes(&self, machine: &str) -> i64 {
        self.query(|c| {
            c.query_row(
                "SELECT COUNT(*) FROM state_change WHERE machine = ?1",
                [machine],
                |r| r.get(0),
            )
        })
    }

    fn outbox_seqs(&self) -> Vec<i64> {
        self.query(|c| {
            let mut s = c.prepare("SELECT seq FROM outbox ORDER BY seq")?;
            let rows = s.query_map([], |r| r.get(0))?;
            rows.collect()
        })
    }

    fn latest_read(&self, machine: &str) -> Option<String> {
        self.query(|c| {
            c.query_row(
                "SELECT MAX(read_at) FROM signal_value WHERE machine = ?1",
                [machine],
                |r| r.get(0),
            )
        })
    }

    /// Wait for the process to end; its exit code.
    fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(status) = self.child.0.try_wait().expect("wait for linegate") {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    fn still_running(&mut self) -> bool {
        matches!(self.child.0.try_wait(), Ok(None))
    }
}

/// Poll `f` until it gives something, for at most [`PATIENCE`].
fn wait_for<T>(mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_units_exec_start_reports_ready_pets_the_watchdog_and_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_sim, config) = simulate(dir.path(), 1);
    let config_path = dir.path().join("linegate.toml");
    fs::write(&config_path, with_dead_uplink(&config)).expect("write config");

    let mut agent = Agent::start(dir.path(), &config_path);
    agent.notify.wait_for("READY=1");
    // Pets keep coming: the poll loop, the engine and the uplink (waiting
    // for a broker that is not there) all beat.
    agent.notify.wait_for("WATCHDOG=1");
    let pets = agent.notify.count_for("WATCHDOG=1", Duration::from_secs(5));
    assert!(
        pets >= 2,
        "only {pets} WATCHDOG=1 in 5 s with WATCHDOG_USEC={WATCHDOG_USEC}; got {:?}",
        agent.notify.seen
    );
    // The machine is read and its state recorded in the Unit's state folder.
    wait_for(|| (agent.state_changes("sim01") > 0).then_some(()))
        .expect("a state change of sim01 is stored");

    agent.signal("TERM");
    let code = agent.wait_exit(Duration::from_secs(15));
    assert_eq!(code, Some(0), "exit after SIGTERM; log:\n{}", agent.log());
    agent.notify.wait_for("STOPPING=1");
    let log = agent.log();
    assert!(log.contains("SIGTERM: stopping"), "log:\n{log}");
    assert!(log.contains("linegate stopped"), "log:\n{log}");

    // Logged as for the journal: no colour codes, no timestamps (journald
    // adds its own), one line per event, the machine id in the fields.
    assert!(
        !log.contains('\u{1b}'),
        "colour codes under JOURNAL_STREAM:\n{log}"
    );
    let year = chrono::Utc::now().format("%Y-").to_string();
    for line in log.lines() {
        assert!(
            !line.trim_start().starts_with(&year),
            "a timestamp under JOURNAL_STREAM: {line}"
        );
        assert!(
            ["ERROR", "WARN", "INFO", "DEBUG", "TRACE"]
                .iter()
                .any(|l| line.trim_start().starts_with(l)),
            "a line that is not one event (continued message?): {line}"
        );
    }
    assert!(
        log.lines().any(|l| l.contains("machine=sim01")),
        "no line carries machine=sim01:\n{log}"
    );
}

#[test]
fn sighup_refuses_an_invalid_config_and_applies_a_valid_one_without_losing_state() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_sim, config) = simulate(dir.path(), 2);
    let full = with_dead_uplink(&config);
    let config_path = dir.path().join("linegate.toml");
    // Start with sim01 only; sim02 comes with the reload.
    fs::write(&config_path, without_machine(&full, "sim02")).expect("write config");

    let mut agent = Agent::start(dir.path(), &config_path);
    agent.notify.wait_for("READY=1");
    wait_for(|| (agent.state_changes("sim01") > 0).then_some(()))
        .expect("a state change of sim01 is stored");
    assert_eq!(
        agent.state_changes("sim02"),
        0,
        "sim02 is not configured yet"
    );

    // (c) An invalid config: refused, the key named, the old config keeps running.
    let invalid =
        without_machine(&full, "sim02").replacen("poll_ms = ", "poll_ms = \"fast\" # ", 1);
    fs::write(&config_path, &invalid).expect("write the invalid config");
    agent.signal("HUP");
    agent.notify.wait_for("RELOADING=1");
    let refused = agent.wait_for_log("reload refused");
    assert!(
        refused.contains("poll_ms"),
        "the error names the key: {refused}"
    );
    agent.notify.wait_for("READY=1");
    let pets = agent.notify.count_for("WATCHDOG=1", Duration::from_secs(4));
    assert!(pets >= 1, "the watchdog stopped after a refused reload");
    let read_before = agent.latest_read("sim01");
    wait_for(|| (agent.latest_read("sim01") > read_before).then_some(()))
        .expect("sim01 is still read after the refused reload");
    assert!(agent.still_running());

    // (d) A valid changed config (sim02 added): applied, nothing lost.
    let sim01_changes = agent.state_changes("sim01");
    let seqs_before = agent.outbox_seqs();
    assert!(!seqs_before.is_empty(), "messages wait in the outbox");
    fs::write(&config_path, &full).expect("write the new config");
    agent.signal("HUP");
    agent.wait_for_log("config reloaded");
    agent.notify.wait_for("READY=1");
    wait_for(|| (agent.state_changes("sim02") > 0).then_some(()))
        .expect("the added machine sim02 is read and its state stored");
    assert!(
        agent.state_changes("sim01") >= sim01_changes,
        "state changes of sim01 from before the reload are kept"
    );
    let read_before = agent.latest_read("sim01");
    wait_for(|| (agent.latest_read("sim01") > read_before).then_some(()))
        .expect("sim01 is still read after the reload");
    let seqs_after = agent.outbox_seqs();
    let max_before = *seqs_before.last().unwrap_or(&0);
    let kept: Vec<i64> = seqs_after
        .iter()
        .copied()
        .filter(|s| *s <= max_before)
        .collect();
    assert_eq!(
        kept, seqs_before,
        "every message from before the reload is still queued"
    );
    assert!(
        seqs_after.iter().any(|s| *s > max_before),
        "new messages continue the seq after the reload"
    );
    let pets = agent.notify.count_for("WATCHDOG=1", Duration::from_secs(4));
    assert!(pets >= 1, "the watchdog stopped after the reload");

    agent.signal("TERM");
    assert_eq!(agent.wait_exit(Duration::from_secs(15)), Some(0));
    agent.notify.wait_for("STOPPING=1");
}

/// How the unit and the scripts pass settings: `LINEGATE_CONFIG` names the
/// file, `LINEGATE_<SECTION>__<KEY>` overrides a key (the unit's
/// `Environment=` does so for the data folder), and other `LINEGATE_*`
/// variables are not mistaken for config keys.
#[test]
fn linegate_config_names_the_file_and_only_section_keys_override() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_sim, config) = simulate(dir.path(), 1);
    let path = dir.path().join("linegate.toml");
    fs::write(&path, config).expect("write config");
    let out = Command::new(BIN)
        .arg("check-config")
        .env("LINEGATE_CONFIG", &path)
        .env("LINEGATE_GATEWAY__ID", "gw-from-env")
        .env("LINEGATE_SOMETHING_ELSE", "1")
        .output()
        .expect("run check-config");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "check-config failed: {stderr}");
    assert!(
        stdout.contains("gateway gw-from-env"),
        "the override is applied: {stdout}"
    );

    // A bad override is an error naming the key.
    let out = Command::new(BIN)
        .arg("check-config")
        .env("LINEGATE_CONFIG", &path)
        .env("LINEGATE_GATEWAY__COLOUR", "blue")
        .output()
        .expect("run check-config");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "an unknown key is refused");
    assert!(
        stderr.contains("colour"),
        "the error names the key: {stderr}"
    );
}
