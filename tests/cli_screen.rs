//! The live screen (`linegate demo`, `linegate top`) and the uplink's state
//! in `linegate status`, as a technician meets them: the binary under a
//! real pseudo-terminal (keys typed into it) and with stdout not a
//! terminal; `linegate run` against a simulated line (`linegate simulate`)
//! and a real Mosquitto broker that is then killed; the demo's temporary
//! store looked for after every way out (its end, an error, SIGHUP,
//! SIGTERM, a closed stdout).

mod common;

use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_linegate");

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Wait for `child` up to `within`; kill it and fail if it does not end.
fn wait_for(child: &mut Child, within: Duration, what: &str) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what}: still running after {within:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn until(within: Duration, what: &str, mut ok: impl FnMut() -> Option<String>) -> String {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = ok() {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .expect("kill runs")
        .success();
    assert!(ok, "kill {sig}");
}

/// The demo's store folder for a demo of process `pid` under `tmp`.
fn demo_store(tmp: &Path, pid: u32) -> PathBuf {
    tmp.join(format!("linegate-demo-{pid}"))
}

fn leftovers(tmp: &Path) -> Vec<String> {
    std::fs::read_dir(tmp)
        .expect("read the temp dir")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

fn demo(tmp: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.arg("demo")
        .args(["--machines", "2", "--speed", "20"])
        .args(args)
        .env("TMPDIR", tmp);
    c
}

// ---------- stdout not a terminal ----------

#[test]
fn demo_without_a_terminal_prints_plain_lines_and_removes_its_store_at_the_end() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = demo(tmp.path(), &["--seconds", "5"])
        .stdin(Stdio::null())
        .output()
        .expect("demo runs");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(!stdout.contains('\x1b'), "no escape codes: {stdout:?}");
    let blocks: Vec<&str> = stdout.split("\n\n").collect();
    assert!(blocks.len() >= 2, "a block per refresh: {stdout}");
    let last = blocks.last().expect("a block");
    let lines: Vec<&str> = last.lines().collect();
    assert!(
        lines[0].starts_with("linegate demo (2 simulated machines) at "),
        "{last}"
    );
    assert!(lines[1].starts_with("machine  state"), "{last}");
    for h in ["for", "reason", "oee", "parts", "order"] {
        assert!(lines[1].contains(h), "{h}: {last}");
    }
    let states = [
        "running",
        "setup",
        "down",
        "idle",
        "planned_stop",
        "offline",
    ];
    for id in ["sim01", "sim02"] {
        let row = lines
            .iter()
            .find(|l| l.starts_with(id))
            .unwrap_or_else(|| panic!("{id}: {last}"));
        let state = row.split_whitespace().nth(1).unwrap_or("");
        assert!(states.contains(&state), "{row}");
    }
    assert!(last.contains("uplink: not configured"), "{last}");
    assert!(
        last.contains("backlog: 0 message(s) in the outbox"),
        "{last}"
    );
    assert!(
        leftovers(tmp.path()).is_empty(),
        "{:?}",
        leftovers(tmp.path())
    );
}

#[test]
fn demo_removes_its_store_on_sighup_sigterm_a_closed_stdout_and_an_error() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store_file = |pid| demo_store(tmp.path(), pid).join("linegate.db");

    // SIGHUP (the terminal closed) and SIGTERM, once the agent has its store.
    for sig in ["-HUP", "-TERM"] {
        let mut child = demo(tmp.path(), &[])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("demo starts");
        let pid = child.id();
        until(Duration::from_secs(20), "the demo's store", || {
            store_file(pid).is_file().then(String::new)
        });
        signal(&child, sig);
        let status = wait_for(&mut child, Duration::from_secs(20), sig);
        assert!(status.success(), "{sig}: {status}");
        assert!(
            !demo_store(tmp.path(), pid).exists(),
            "{sig}: store left behind"
        );
    }

    // A reader that went away: the first write fails, the demo ends as a
    // pipe-killed tool does, without its store.
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe() writes.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0, "pipe()");
    // SAFETY: both descriptors were just made by pipe() and are owned here only.
    let (reader, writer) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    drop(reader);
    let mut child = demo(tmp.path(), &[])
        .stdin(Stdio::null())
        .stdout(Stdio::from(writer))
        .stderr(Stdio::piped())
        .spawn()
        .expect("demo starts");
    let status = wait_for(&mut child, Duration::from_secs(20), "closed stdout");
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    assert_eq!(status.code(), Some(141), "{status}: {err}");
    assert!(!err.contains("panicked"), "{err}");

    // An error (an option the simulated line refuses).
    let out = demo(tmp.path(), &[])
        .args(["--machines", "0"])
        .stdin(Stdio::null())
        .output()
        .expect("demo runs");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        text(&out.stderr).contains("machines"),
        "{}",
        text(&out.stderr)
    );

    assert!(
        leftovers(tmp.path()).is_empty(),
        "{:?}",
        leftovers(tmp.path())
    );
}

// ---------- a real terminal ----------

/// A child on a pseudo-terminal of 80×24 and what it wrote to it.
struct OnPty {
    child: Child,
    master: std::fs::File,
    screen: Arc<Mutex<Vec<u8>>>,
}

impl OnPty {
    fn spawn(mut cmd: Command) -> OnPty {
        let (mut master, mut slave) = (0, 0);
        let size = libc::winsize {
            ws_row: 24,
            ws_col: 80,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: openpty writes two descriptors into the two ints; the name
        // and termios pointers may be null; `size` outlives the call.
        let r = unsafe {
            libc::openpty(
                &mut master,
                &mut slave,
                std::ptr::null_mut(),
                std::ptr::null(),
                &size,
            )
        };
        assert_eq!(r, 0, "openpty");
        // SAFETY: both descriptors were just made by openpty and are owned here only.
        let (master, slave) =
            unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
        let io = |fd: &OwnedFd| Stdio::from(fd.try_clone().expect("dup the pty"));
        let child = cmd
            .stdin(io(&slave))
            .stdout(io(&slave))
            .stderr(io(&slave))
            .spawn()
            .expect("starts on the pty");
        drop(slave);
        let master = std::fs::File::from(master);
        let screen = Arc::new(Mutex::new(Vec::new()));
        let mut reader = master.try_clone().expect("dup the master");
        let sink = screen.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            // Ends with EIO once the child and its descriptors are gone.
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().expect("screen").extend_from_slice(&buf[..n]);
            }
        });
        OnPty {
            child,
            master,
            screen,
        }
    }

    fn seen(&self) -> String {
        text(&self.screen.lock().expect("screen"))
    }

    fn wait_for_text(&self, what: &str) -> String {
        until(Duration::from_secs(20), what, || {
            let s = self.seen();
            s.contains(what).then_some(s)
        })
    }

    fn type_keys(&mut self, keys: &[u8]) {
        self.master.write_all(keys).expect("type into the pty");
    }
}

#[test]
fn demo_on_a_terminal_uses_the_alternate_screen_and_q_esc_or_ctrl_c_quit() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut runs: Vec<(&str, OnPty)> = [("q", &b"q"[..]), ("Esc", b"\x1b"), ("Ctrl-C", b"\x03")]
        .iter()
        .map(|(name, _)| (*name, OnPty::spawn(demo(tmp.path(), &[]))))
        .collect();
    let keys: [&[u8]; 3] = [b"q", b"\x1b", b"\x03"];
    for ((name, run), key) in runs.iter_mut().zip(keys) {
        let seen = run.wait_for_text("sim02");
        assert!(
            seen.contains("\x1b[?1049h"),
            "{name}: enters the alternate screen"
        );
        assert!(seen.contains("machine"), "{name}: {seen:?}");
        assert!(seen.contains("uplink: not configured"), "{name}: {seen:?}");
        // Nothing wider than 80 columns is drawn: no line wraps.
        run.type_keys(key);
    }
    for (name, run) in runs.iter_mut() {
        let status = wait_for(&mut run.child, Duration::from_secs(20), name);
        assert!(status.success(), "{name}: {status}");
        let seen = run.seen();
        let left = seen
            .rfind("\x1b[?1049l")
            .expect("leaves the alternate screen");
        let entered = seen.rfind("\x1b[?1049h").expect("entered");
        assert!(left > entered, "{name}: the terminal is restored last");
    }
    assert!(
        leftovers(tmp.path()).is_empty(),
        "{:?}",
        leftovers(tmp.path())
    );
}

// ---------- a running agent: status and top ----------

fn linegate(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .output()
        .expect("linegate runs")
}

#[test]
fn status_and_top_show_the_uplink_connected_then_its_error_when_the_broker_dies() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut broker = common::Mosquitto::start();
    let port = common::free_port();
    let config = dir.path().join("line.toml");
    let data = dir.path().join("data");
    let mut line = Command::new(BIN)
        .args([
            "simulate",
            "--machines",
            "2",
            "--speed",
            "20",
            "--seconds",
            "120",
        ])
        .args(["--base-port", &port.to_string()])
        .arg("--write-config")
        .arg(&config)
        .arg("--data-dir")
        .arg(&data)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("simulate starts");
    until(
        Duration::from_secs(20),
        "the simulated line's config",
        || {
            std::fs::read_to_string(&config)
                .ok()
                .filter(|t| t.contains("sim02"))
        },
    );
    let mut text_ = std::fs::read_to_string(&config).expect("config");
    text_.push_str(&format!(
        "\n[uplink]\nurl = \"{}\"\nbackoff_min_ms = 200\nbackoff_max_ms = 500\n",
        broker.url()
    ));
    std::fs::write(&config, text_).expect("config with an uplink");
    let cfg = config.to_str().expect("UTF-8");

    let mut agent = Command::new(BIN)
        .args(["run", "-c", cfg])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("linegate run starts");
    let url = broker.url();
    let connected = format!("uplink {url}: connected");
    let status = until(Duration::from_secs(30), "status says connected", || {
        let out = linegate(&["status", "-c", cfg]);
        let s = text(&out.stdout);
        (out.status.success() && s.contains(&connected)).then_some(s)
    });
    assert!(status.contains("outbox: "), "{status}");

    // top, once, in plain lines: the machines and the same uplink.
    let out = linegate(&["top", "-c", cfg, "--once"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let top = text(&out.stdout);
    assert!(!top.contains('\x1b'), "{top:?}");
    assert!(top.contains(&connected), "{top}");
    assert!(top.lines().any(|l| l.starts_with("sim01")), "{top}");
    assert!(top.lines().any(|l| l.starts_with("sim02")), "{top}");

    // top on a terminal, quit with q.
    let mut on_pty = OnPty::spawn({
        let mut c = Command::new(BIN);
        c.args(["top", "-c", cfg]);
        c
    });
    let seen = on_pty.wait_for_text("sim02");
    assert!(seen.contains("\x1b[?1049h"), "{seen:?}");
    on_pty.type_keys(b"q");
    let s = wait_for(&mut on_pty.child, Duration::from_secs(10), "top");
    assert!(s.success(), "{s}");

    // The broker dies: not connected, and why.
    broker.stop();
    let status = until(Duration::from_secs(30), "status says not connected", || {
        let s = text(&linegate(&["status", "-c", cfg]).stdout);
        (s.contains(&format!("uplink {url}: not connected")) && s.contains("last error:"))
            .then_some(s)
    });
    let line_of = status
        .lines()
        .find(|l| l.starts_with("uplink "))
        .expect("an uplink line");
    assert!(
        line_of.contains(&format!("127.0.0.1:{}", broker.port)),
        "{line_of}"
    );
    let top = text(&linegate(&["top", "-c", cfg, "--once"]).stdout);
    assert!(
        top.contains(&format!("uplink {url}: not connected; last error:")),
        "{top}"
    );

    // The agent stops: the last copy says so.
    signal(&agent, "-TERM");
    let s = wait_for(&mut agent, Duration::from_secs(20), "linegate run");
    assert!(s.success(), "{s}");
    let status = text(&linegate(&["status", "-c", cfg]).stdout);
    assert!(
        status.contains(&format!("uplink {url}: stopped at")),
        "{status}"
    );
    let _ = line.kill();
    let _ = line.wait();
}

#[test]
fn status_exit_codes_are_0_with_a_store_2_without_and_141_into_a_closed_pipe() {
    let dir = tempfile::tempdir().expect("tempdir");
    // No config file: 2, naming it.
    let missing = dir.path().join("nowhere.toml");
    let out = linegate(&["status", "-c", missing.to_str().expect("UTF-8")]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        text(&out.stderr).contains("nowhere.toml"),
        "{}",
        text(&out.stderr)
    );

    // A config whose store does not exist (the agent never ran): 2, naming it.
    let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/demo.toml");
    let data = dir.path().join("data");
    let config = dir.path().join("line.toml");
    let body = std::fs::read_to_string(&demo).expect("demo config");
    let body = body.replacen(
        "data_dir = \"./linegate-demo-data\"",
        &format!("data_dir = {:?}", data.display().to_string()),
        1,
    );
    assert!(
        body.contains(&data.display().to_string()),
        "the demo config names a data_dir"
    );
    std::fs::write(&config, &body).expect("config");
    let cfg = config.to_str().expect("UTF-8");
    let out = linegate(&["status", "-c", cfg]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        text(&out.stderr).contains("linegate.db"),
        "{}",
        text(&out.stderr)
    );
    assert!(!data.exists(), "status creates no store");

    // With a store: 0; into a closed pipe: 141, quietly.
    linegate::store::Store::open(&data).expect("a store");
    let out = linegate(&["status", "-c", cfg]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(
        text(&out.stdout).contains("uplink: not configured"),
        "{}",
        text(&out.stdout)
    );
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe() writes.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0, "pipe()");
    // SAFETY: both descriptors were just made by pipe() and are owned here only.
    let (reader, writer) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    drop(reader);
    let out = Command::new(BIN)
        .args(["status", "-c", cfg])
        .stdout(Stdio::from(writer))
        .output()
        .expect("status runs");
    assert_eq!(out.status.code(), Some(141), "{out:?}");
    assert!(out.stderr.is_empty(), "{}", text(&out.stderr));
}

// ---------- help ----------

#[test]
fn every_option_of_every_command_has_a_description() {
    let commands = [
        "run",
        "demo",
        "simulate",
        "check-config",
        "read",
        "status",
        "report",
        "orders",
        "top",
    ];
    for cmd in commands {
        let out = linegate(&[cmd, "--help"]);
        assert!(out.status.success(), "{cmd} --help");
        let help = text(&out.stdout);
        let lines: Vec<&str> = help.lines().collect();
        for (i, l) in lines.iter().enumerate() {
            if !l.trim_start().starts_with('-') {
                continue;
            }
            // `  --flag <V>  Description [default: x]`, or the description on
            // the next, further indented line.
            let same_line = l
                .trim()
                .split("  ")
                .skip(1)
                .map(str::trim)
                .find(|s| !s.is_empty());
            let described =
                |s: &str| !s.is_empty() && !s.starts_with('-') && !s.starts_with("[default");
            let ok = match same_line {
                Some(s) => described(s),
                None => lines.get(i + 1).is_some_and(|n| described(n.trim())),
            };
            assert!(ok, "{cmd}: {l:?} has no description:\n{help}");
        }
    }
}

#[test]
fn simulate_help_says_machine_n_listens_on_base_port_plus_n_minus_1_as_it_does() {
    let help = text(&linegate(&["simulate", "--help"]).stdout);
    assert!(help.contains("base_port + N - 1"), "{help}");
    // And it does: machine 1 on the base port, machine 2 on the next.
    let base = common::free_port();
    let out = linegate(&[
        "simulate",
        "--machines",
        "2",
        "--seconds",
        "1",
        "--base-port",
        &base.to_string(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains(&format!("sim01 modbus tcp 127.0.0.1:{base}\n")),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("sim02 modbus tcp 127.0.0.1:{}\n", base + 1)),
        "{stdout}"
    );
}
