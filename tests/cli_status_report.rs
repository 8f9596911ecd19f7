//! The `linegate` binary as a technician and a planner use it: `run` against a
//! simulated line (stopped with SIGTERM), then `status` and `report` on the
//! store it left; `check-config` on good and bad files; `read --once`
//! against a live simulated machine and a dead address.
//!
//! One simulated line (in-process, real Modbus TCP on loopback) and one run
//! of `linegate run` are shared by the tests of this file: the run lasts past
//! a minute boundary so that one-minute periods close. The line keeps
//! serving until the test process ends, for `read --once`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use chrono::{DateTime, Duration as ChronoDuration, Timelike, Utc};
use linegate::machine::history::{self, MachineStatus};
use linegate::machine::ClosedPeriod;
use linegate::sim::{self, SimOptions};
use linegate::store::Store;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

const BIN: &str = env!("CARGO_BIN_EXE_linegate");

/// What the shared run left behind.
struct Fixture {
    /// The config `linegate run` used (demo config of the line).
    config: PathBuf,
    /// Its text, to derive broken variants from.
    text: String,
    data_dir: PathBuf,
    machines: Vec<String>,
}

static FIXTURE: OnceLock<Fixture> = OnceLock::new();

fn next_minute(t: DateTime<Utc>) -> DateTime<Utc> {
    let floor = t
        .with_second(0)
        .and_then(|t| t.with_nanosecond(0))
        .expect("a minute");
    floor + ChronoDuration::minutes(1)
}

fn fixture() -> &'static Fixture {
    FIXTURE.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("cli_status_report-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("a work directory");
        let (tx, rx) = std::sync::mpsc::channel();
        // The line runs on its own runtime thread for the life of the process.
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .expect("a runtime");
            rt.block_on(async move {
                let line = sim::serve(
                    SimOptions {
                        machines: 2,
                        base_port: 0,
                        seed: 42,
                        speed: 50.0,
                        truth: None,
                        honour_orders: true,
                    },
                    CancellationToken::new(),
                )
                .await
                .expect("the simulated line starts");
                let data_dir = dir.join("data");
                let text = sim::demo_config(&line, &data_dir);
                let config = dir.join("line.toml");
                std::fs::write(&config, &text).expect("config written");
                let machines = line.machines.iter().map(|m| m.id.clone()).collect();
                let _ = tx.send((config, text, data_dir, machines));
                std::future::pending::<()>().await;
            });
        });
        let (config, text, data_dir, machines) = rx.recv().expect("the line started");

        // `linegate run` until a minute boundary has passed (at least 5 s).
        let started = Utc::now();
        let mut agent = Command::new(BIN)
            .args(["run", "-c"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("linegate run starts");
        let until = (started + ChronoDuration::seconds(5))
            .max(next_minute(started) + ChronoDuration::seconds(2));
        if let Ok(d) = (until - Utc::now()).to_std() {
            std::thread::sleep(d);
        }
        let term = Command::new("kill")
            .args(["-TERM", &agent.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(term.success());
        let status = agent.wait().expect("linegate run ends");
        assert!(status.success(), "linegate run after SIGTERM: {status}");
        Fixture {
            config,
            text,
            data_dir,
            machines,
        }
    })
}

fn linegate(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .output()
        .expect("linegate runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn path(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 path")
}

fn stored_periods(f: &Fixture) -> Vec<ClosedPeriod> {
    let store = Store::open(&f.data_dir).expect("the store opens");
    store
        .call_blocking(|c| history::periods(c, None, None, None))
        .expect("periods")
}

fn parse_time(v: &Value) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(v.as_str().expect("a time string"))
        .unwrap_or_else(|e| panic!("{v}: {e}"))
        .with_timezone(&Utc)
}

/// `report --json` lines, each checked against the contract's shape.
fn report_lines(args: &[&str]) -> Vec<Value> {
    let out = linegate(args);
    assert!(out.status.success(), "{args:?}: {}", stderr(&out));
    stdout(&out)
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}"));
            assert_contract_period(&v);
            v
        })
        .collect()
}

fn keys(v: &Value) -> BTreeSet<&str> {
    v.as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"))
        .keys()
        .map(String::as_str)
        .collect()
}

fn set(names: &[&'static str]) -> BTreeSet<&'static str> {
    names.iter().copied().collect()
}

/// The contract's utilisation fields, exactly, and seconds that add up.
fn assert_contract_period(v: &Value) {
    // `clock_step` (contract v1.1) is there only when the wall clock stepped
    // during the period: the machine running the tests may step it too.
    let mut got = keys(v);
    if got.remove("clock_step") {
        assert!(
            v["clock_step"]["by_s"].is_f64() && keys(&v["clock_step"]) == set(&["by_s"]),
            "clock_step is {{\"by_s\": seconds}}: {v}"
        );
    }
    assert_eq!(
        got,
        set(&["machine", "period", "seconds", "counts", "kpi"]),
        "{v}"
    );
    assert!(v["machine"].is_string());
    assert_eq!(keys(&v["period"]), set(&["kind", "start", "end"]), "{v}");
    assert_eq!(v["period"]["kind"], "interval");
    let seconds = set(&[
        "running",
        "setup",
        "down",
        "idle",
        "planned_stop",
        "offline",
    ]);
    assert_eq!(keys(&v["seconds"]), seconds, "{v}");
    assert_eq!(
        keys(&v["counts"]),
        set(&[
            "produced",
            "good",
            "scrap",
            "stops",
            "micro_stops",
            "failures",
            "produced_unobserved"
        ]),
        "{v}"
    );
    for k in keys(&v["counts"]) {
        assert!(v["counts"][k].is_u64(), "counts.{k}: {v}");
    }
    assert_eq!(
        keys(&v["kpi"]),
        set(&[
            "availability",
            "utilisation_efficiency",
            "allocation_efficiency",
            "performance",
            "quality",
            "oee",
            "coverage"
        ]),
        "{v}"
    );
    for k in keys(&v["kpi"]) {
        let x = &v["kpi"][k];
        assert!(
            x.is_null() || x.as_f64().is_some_and(|x| (0.0..=1.5).contains(&x)),
            "kpi.{k}: {v}"
        );
    }
    let len_ms =
        (parse_time(&v["period"]["end"]) - parse_time(&v["period"]["start"])).num_milliseconds();
    let sum_ms: i64 = seconds
        .iter()
        .map(|k| (v["seconds"][k].as_f64().expect("seconds") * 1000.0).round() as i64)
        .sum();
    assert_eq!(sum_ms, len_ms, "seconds add up to the period: {v}");
}

// ---------- status ----------

#[test]
fn status_shows_each_machines_state_since_reason_and_current_period() {
    let f = fixture();
    let out = linegate(&["status", "-c", path(&f.config), "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let json: Value = serde_json::from_str(&stdout(&out)).expect("status --json is JSON");
    let rows = json.as_array().expect("an array of machines");
    assert_eq!(rows.len(), f.machines.len(), "{json}");
    let states = [
        "running",
        "setup",
        "down",
        "idle",
        "planned_stop",
        "offline",
    ];
    for (row, id) in rows.iter().zip(&f.machines) {
        assert_eq!(row["machine"], id.as_str());
        assert!(
            states.contains(&row["state"].as_str().unwrap_or("?")),
            "{row}"
        );
        let since = parse_time(&row["since"]);
        assert!(since <= Utc::now());
        assert!(row.get("reason").is_some(), "{row}");
        if row["state"] == "down" {
            assert!(row["reason"].is_string(), "a down machine says why: {row}");
        }
        // The current period so far, in the contract's utilisation shape.
        assert_eq!(row["period"]["kind"], "interval", "{row}");
        let start = parse_time(&row["period"]["start"]);
        let end = parse_time(&row["period"]["end"]);
        assert!(start <= end && end <= Utc::now(), "{row}");
        let sum: f64 = [
            "running",
            "setup",
            "down",
            "idle",
            "planned_stop",
            "offline",
        ]
        .iter()
        .map(|k| row["seconds"][k].as_f64().expect("seconds"))
        .sum();
        assert_eq!(
            (sum * 1000.0).round() as i64,
            (end - start).num_milliseconds(),
            "the open period adds up so far: {row}"
        );
        assert!(row["counts"]["produced"].is_u64(), "{row}");
        assert!(row["kpi"].get("availability").is_some(), "{row}");
    }
    // Exactly what the store holds.
    let store = Store::open(&f.data_dir).expect("store");
    let current: Vec<MachineStatus> = store
        .call_blocking(|c| history::current(c))
        .expect("current");
    assert_eq!(current.len(), rows.len());
    for (row, s) in rows.iter().zip(&current) {
        assert_eq!(row["state"], s.state.as_str());
        assert_eq!(parse_time(&row["since"]), s.since);
        assert_eq!(row["reason"].as_str(), s.reason.as_deref());
        let p = s.period.as_ref().expect("a snapshot with its open period");
        assert_eq!(parse_time(&row["period"]["start"]), p.start);
        assert_eq!(parse_time(&row["period"]["end"]), p.end);
        assert_eq!(row["seconds"]["running"], p.seconds.running);
        assert_eq!(row["seconds"]["offline"], p.seconds.offline);
        assert_eq!(row["counts"]["produced"], p.counts.produced);
    }

    let table = linegate(&["status", "-c", path(&f.config)]);
    assert!(table.status.success(), "{}", stderr(&table));
    let text = stdout(&table);
    for h in ["machine", "state", "since", "reason", "availability"] {
        assert!(text.contains(h), "header {h}: {text}");
    }
    for s in &current {
        let line = text
            .lines()
            .find(|l| l.contains(s.machine.as_str()))
            .unwrap_or_else(|| panic!("{} missing: {text}", s.machine));
        assert!(line.contains(s.state.as_str()), "{line}");
        assert!(
            line.contains(&s.since.format("%Y-%m-%dT%H:%M:%S").to_string()),
            "{line}"
        );
    }
}

// ---------- report ----------

#[test]
fn report_json_prints_one_contract_object_per_closed_period() {
    let f = fixture();
    let stored = stored_periods(f);
    assert!(!stored.is_empty(), "the run closed periods");
    let lines = report_lines(&["report", "-c", path(&f.config), "--json"]);
    assert_eq!(lines.len(), stored.len());
    for (line, p) in lines.iter().zip(&stored) {
        assert_eq!(line["machine"], p.machine.as_str());
        assert_eq!(parse_time(&line["period"]["start"]), p.start);
        assert_eq!(parse_time(&line["period"]["end"]), p.end);
        assert_eq!(line["counts"]["produced"], p.counts.produced);
        assert_eq!(line["seconds"]["running"], p.seconds.running);
    }
    for id in &f.machines {
        assert!(
            lines.iter().any(|l| l["machine"] == id.as_str()),
            "{id} has a closed period"
        );
    }
    let table = linegate(&["report", "-c", path(&f.config)]);
    assert!(table.status.success(), "{}", stderr(&table));
    let text = stdout(&table);
    assert_eq!(
        text.lines().filter(|l| l.contains("sim0")).count(),
        stored.len(),
        "{text}"
    );
}

#[test]
fn report_filters_by_machine_and_time() {
    let f = fixture();
    let stored = stored_periods(f);
    let config = path(&f.config);

    let id = &f.machines[1];
    let one = report_lines(&["report", "-c", config, "--json", "--machine", id]);
    assert!(!one.is_empty());
    assert!(one.iter().all(|l| l["machine"] == id.as_str()));
    assert_eq!(
        one.len(),
        stored.iter().filter(|p| &p.machine == id).count()
    );

    // Cut at the start of the latest closed period.
    let cut = stored.iter().map(|p| p.start).max().expect("a period");
    let cut_text = cut.to_rfc3339();
    let from = report_lines(&["report", "-c", config, "--json", "--from", &cut_text]);
    let want_from = stored.iter().filter(|p| p.end > cut).count();
    assert_eq!(from.len(), want_from);
    assert!(from.iter().all(|l| parse_time(&l["period"]["end"]) > cut));
    let to = report_lines(&["report", "-c", config, "--json", "--to", &cut_text]);
    let want_to = stored.iter().filter(|p| p.start < cut).count();
    assert_eq!(to.len(), want_to);
    assert!(to.iter().all(|l| parse_time(&l["period"]["start"]) < cut));
    assert_eq!(from.len() + to.len(), stored.len(), "the cut splits them");

    // A machine that is neither configured nor in the store is an error
    // naming the known ones, not an empty table.
    let out = linegate(&["report", "-c", config, "--json", "--machine", "no-such"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = stderr(&out);
    assert!(
        err.contains("\"no-such\"") && err.contains(&f.machines[0]),
        "{err}"
    );
    assert!(stdout(&out).is_empty());
}

#[test]
fn report_with_from_after_to_is_an_error_not_an_empty_table() {
    let f = fixture();
    let out = linegate(&[
        "report",
        "-c",
        path(&f.config),
        "--from",
        "2026-11-26T08:00:00Z",
        "--to",
        "2026-11-26T06:00:00Z",
    ]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = stderr(&out);
    assert!(
        err.contains("--from") && err.contains("after --to"),
        "{err}"
    );
    assert!(stdout(&out).is_empty());
}

/// The cells of the table's row of `p` (the one starting at `start`).
fn table_row<'a>(text: &'a str, p: &ClosedPeriod, start: &str) -> Vec<&'a str> {
    text.lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|cells| cells.first() == Some(&p.machine.as_str()) && cells.get(2) == Some(&start))
        .unwrap_or_else(|| panic!("{} at {start}: {text}", p.machine))
}

#[test]
fn report_table_has_all_six_states_adding_up_in_the_sites_time_zone_or_utc() {
    let f = fixture();
    let stored = stored_periods(f);
    // The same store, seen from a site in New York (the file says UTC).
    let dir = tempfile::tempdir().expect("tempdir");
    let ny = dir.path().join("ny.toml");
    assert!(
        !f.text.contains("timezone"),
        "the demo config leaves the zone at UTC"
    );
    std::fs::write(
        &ny,
        f.text.replacen(
            "[gateway]\n",
            "[gateway]\ntimezone = \"America/New_York\"\n",
            1,
        ),
    )
    .expect("write");
    let zone: chrono_tz::Tz = "America/New_York".parse().expect("a zone");

    let out = linegate(&["report", "-c", path(&ny)]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.starts_with("times in America/New_York\n"), "{text}");
    let header: Vec<&str> = text
        .lines()
        .nth(1)
        .expect("a header")
        .split("  ")
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .collect();
    assert_eq!(
        header,
        [
            "machine",
            "period",
            "start",
            "end",
            "run s",
            "setup s",
            "idle s",
            "down s",
            "planned s",
            "offline s",
            "parts",
            "avail",
            "oee"
        ]
    );
    for p in &stored {
        let start = p
            .start
            .with_timezone(&zone)
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let end = p
            .end
            .with_timezone(&zone)
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let cells = table_row(&text, p, &start);
        assert_eq!(cells[1], "interval");
        assert_eq!(cells[3], end.as_str());
        assert!(
            start.ends_with("-05:00") || start.ends_with("-04:00"),
            "{start}"
        );
        // run, setup, idle, down, planned, offline: as stored, and they add
        // up to the period's length (to a second per rounded cell).
        let secs: Vec<f64> = cells[4..10]
            .iter()
            .map(|c| c.parse().expect("seconds"))
            .collect();
        let want = [
            p.seconds.running,
            p.seconds.setup,
            p.seconds.idle,
            p.seconds.down,
            p.seconds.planned_stop,
            p.seconds.offline,
        ];
        // Cells are rounded for display (`{:.0}` rounds a half to even).
        for (got, want) in secs.iter().zip(want) {
            assert!((*got - want).abs() <= 0.5, "{got} vs {want}: {cells:?}");
        }
        let len = (p.end - p.start).num_milliseconds() as f64 / 1000.0;
        assert!(
            (secs.iter().sum::<f64>() - len).abs() <= 3.0,
            "{cells:?} vs {len}"
        );
    }

    let out = linegate(&["report", "-c", path(&ny), "--utc"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.starts_with("times in UTC\n"), "{text}");
    for p in &stored {
        let start = p.start.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        assert!(start.ends_with('Z'));
        table_row(&text, p, &start);
    }
}

#[test]
fn a_bad_from_time_is_a_clear_error() {
    let f = fixture();
    let out = linegate(&["report", "-c", path(&f.config), "--from", "yesterday"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("--from") && err.contains("\"yesterday\"") && err.contains("RFC 3339"),
        "{err}"
    );
    assert!(stdout(&out).is_empty());
}

// ---------- check-config ----------

#[test]
fn check_config_names_the_machine_and_rule_of_a_bad_rule_and_fails() {
    let f = fixture();
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("bad.toml");
    // The second machine's running rule names a signal it does not have.
    let good = "running = \"cycle_active && spindle_rpm > 0\"";
    let at = f.text.rfind(good).expect("the second machine's rule");
    let mut text = f.text.clone();
    text.replace_range(
        at..at + good.len(),
        "running = \"cycle_active && spindel_rpm > 0\"",
    );
    std::fs::write(&file, text).expect("write");
    let out = linegate(&["check-config", "-c", path(&file)]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("sim02"), "names the machine: {err}");
    assert!(err.contains("state.running"), "names the rule: {err}");
    assert!(
        err.contains("spindel_rpm"),
        "names the unknown signal: {err}"
    );
    assert!(
        !err.contains("sim01"),
        "the good machine is not blamed: {err}"
    );
}

#[test]
fn check_config_of_the_demo_config_passes_and_prints_the_read_plan() {
    let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/demo.toml");
    let out = linegate(&["check-config", "-c", path(&demo)]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains(": ok"), "{text}");
    assert!(text.contains("read plan:"), "{text}");
    for id in ["sim01", "sim02", "sim03", "sim04"] {
        assert!(text.contains(id), "{id} in the plan: {text}");
    }
    for area in ["coil", "discrete", "holding", "input"] {
        assert!(
            text.lines()
                .any(|l| l.contains("sim01: ") && l.contains(area)),
            "sim01 reads its {area} area: {text}"
        );
    }
}

// ---------- read --once ----------

#[test]
fn read_once_prints_the_decoded_values_of_a_simulated_machine() {
    let f = fixture();
    let out = linegate(&["read", "--once", "-c", path(&f.config)]);
    assert!(out.status.success(), "{}", stderr(&out));
    let json: Value = serde_json::from_str(&stdout(&out)).expect("JSON");
    for id in &f.machines {
        let m = &json[id.as_str()];
        assert!(m["cycle_active"].is_boolean(), "{m}");
        let mode = m["mode"].as_u64().expect("mode");
        assert!(mode == 1 || mode == 2, "{m}");
        assert!(m["alarm_code"].is_u64(), "{m}");
        assert!(m["part_count"].is_u64(), "{m}");
        let t = m["temperature"].as_f64().expect("temperature");
        assert!((15.0..80.0).contains(&t), "{m}");
        assert!(
            m["product"].as_str().is_some_and(|p| p.starts_with("P-47")),
            "{m}"
        );
        assert!(keys(m).iter().all(|k| !m[*k].is_object()), "no errors: {m}");
    }
}

#[test]
fn read_once_against_a_dead_address_fails_with_an_error_per_signal() {
    let f = fixture();
    // A port nobody listens on: bind one, then let it go.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = dead.local_addr().expect("addr");
    drop(dead);
    let first_bus = f
        .text
        .lines()
        .find(|l| l.starts_with("address = \"127.0.0.1:"))
        .expect("a bus address");
    let text = f
        .text
        .replacen(first_bus, &format!("address = \"{addr}\""), 1);
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("dead.toml");
    std::fs::write(&file, text).expect("write");
    let started = std::time::Instant::now();
    let out = linegate(&["read", "--once", "-c", path(&file), "--machine", "sim01"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(started.elapsed() < Duration::from_secs(30));
    let json: Value = serde_json::from_str(&stdout(&out)).expect("JSON");
    let m = json["sim01"].as_object().expect("sim01");
    assert_eq!(m.len(), 14, "every signal of sim01: {json}");
    for (name, v) in m {
        let err = v["error"].as_str().unwrap_or_else(|| panic!("{name}: {v}"));
        assert!(!err.is_empty(), "{name}");
    }
}

/// `linegate check-config | head -1` must not panic when `head` has gone:
/// the command ends quietly with the status of a pipe-killed tool.
#[test]
fn output_into_a_closed_pipe_ends_quietly_instead_of_panicking() {
    use std::os::fd::{FromRawFd, OwnedFd};
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe() writes.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0, "pipe()");
    // SAFETY: both descriptors were just made by pipe() and are owned here only.
    let (reader, writer) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    drop(reader); // nobody will read: every write gets EPIPE
    let reference = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/demo.toml");
    let out = Command::new(BIN)
        .args(["check-config", "-c"])
        .arg(&reference)
        .stdout(Stdio::from(writer))
        .stderr(Stdio::piped())
        .output()
        .expect("run linegate");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        stderr.is_empty(),
        "nothing to say about a closed pipe: {stderr}"
    );
    assert_eq!(out.status.code(), Some(141), "{:?}", out.status);
}

/// RUST_LOG is outside input too: a filter it can read applies, one it
/// cannot is named in the log and the default level applies.
#[test]
fn rust_log_is_applied_or_reported_when_it_cannot_be_read() {
    let simulate = |rust_log: &str| {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let dir = tempfile::tempdir().expect("temp dir");
        let out = Command::new(BIN)
            .args(["simulate", "--machines", "1", "--seconds", "1"])
            .args(["--base-port", &port.to_string()])
            .arg("--data-dir")
            .arg(dir.path())
            .env("RUST_LOG", rust_log)
            .env_remove("JOURNAL_STREAM")
            .output()
            .expect("run linegate simulate");
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };

    let bad = simulate("linegate=loud");
    assert!(
        bad.contains(r#"RUST_LOG="linegate=loud" is not a log filter"#),
        "{bad}"
    );
    assert!(bad.contains("logging at info"), "{bad}");
    assert!(
        bad.contains("simulated machine listening"),
        "info applies: {bad}"
    );

    let quiet = simulate("linegate=warn");
    assert!(!quiet.contains("simulated machine listening"), "{quiet}");
    assert!(!quiet.contains("is not a log filter"), "{quiet}");
}
