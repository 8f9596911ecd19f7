//! `linegate orders` as a planner uses it, on a store that holds orders put
//! there through the library (intake, release, progress): the table, `--json`,
//! `--machine`, a config file that does not exist, what a queued order
//! waits for, and `linegate report`'s delivery scorecard of a scripted day.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use chrono::{DateTime, Utc};
use linegate::config::Config;
use linegate::machine::{MachineState, MachineView};
use linegate::orders::book::{self, Counts};
use linegate::orders::command;
use linegate::store::Store;
use linegate::uplink::outbox::{self, OutboxPolicy};
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_linegate");

/// Two machines that take orders, on one bus nobody has to serve.
fn config_text(data_dir: &Path) -> String {
    let orders = r#"
[machine.counters]
produced = "parts"
[machine.orders]
order_number = { area = "holding", address = 200, type = "u32" }
product_code = { area = "holding", address = 202, type = "u16", map = { "P-4711" = 11, "P-4712" = 12 } }
quantity     = { area = "holding", address = 203, type = "u16", max = 5000 }
start        = { area = "coil", address = 10 }
max_quantity = 5000
"#;
    let machine = |id: &str| {
        format!(
            "[[machine]]\nid = \"{id}\"\nbus = \"line1\"\n[[machine.signal]]\nname = \"parts\"\narea = \"input\"\naddress = 0\ntype = \"u32\"\n{orders}"
        )
    };
    format!(
        "[gateway]\nid = \"gw1\"\nsite = \"plant\"\ndata_dir = {:?}\n\n[[bus]]\nid = \"line1\"\ntransport = \"tcp\"\naddress = \"127.0.0.1:5020\"\n\n{}\n{}",
        data_dir.display().to_string(),
        machine("press07"),
        machine("press08"),
    )
}

fn now() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-11-26T08:00:00Z")
        .unwrap()
        .with_timezone(&Utc)
}

fn order(id: &str, machine: &str, product: &str, quantity: u32, sequence: i64) -> Value {
    json!({"type": "order", "order_id": id, "revision": 1, "machine": machine,
           "product": product, "quantity": quantity, "due": "2026-11-26T14:00:00Z",
           "sequence": sequence})
}

/// A config file and a store holding three orders:
/// WO-1 on press07 running at 37/120, WO-2 queued behind it, WO-3 queued on press08.
struct Line {
    _dir: tempfile::TempDir,
    config: PathBuf,
}

fn line() -> Line {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let text = config_text(&data_dir);
    let config_path = dir.path().join("line.toml");
    std::fs::write(&config_path, &text).unwrap();
    let config = Config::from_toml(&text, &config_path).expect("test config is valid");

    let store = Store::open(&config.gateway.data_dir).unwrap();
    store
        .call_blocking(|c| outbox::configure(c, OutboxPolicy::from_mb(64)))
        .unwrap();
    for o in [
        order("WO-1", "press07", "P-4711", 120, 1),
        order("WO-2", "press07", "P-4712", 40, 2),
        order("WO-3", "press08", "P-4712", 300, 1),
    ] {
        let parsed = command::parse(o.to_string().as_bytes(), &config);
        store
            .call_blocking(move |c| book::intake(c, outbox::enqueue, parsed, &|_| false, now()))
            .unwrap();
    }
    // WO-1 goes onto press07 at a part total of 1000 and has made 37 since.
    let released = now() + chrono::Duration::minutes(1);
    store
        .call_blocking(move |c| {
            let base = Counts {
                produced: 1000,
                good: 1000,
                scrap: 0,
            };
            book::mark_released(c, outbox::enqueue, "WO-1", 1, base, released)
        })
        .unwrap()
        .expect("WO-1 is in the book");
    let view = MachineView {
        machine: "press07".into(),
        state: MachineState::Running,
        since: released,
        reason: None,
        produced_total: 1037,
        good_total: 1035,
        scrap_total: 2,
    };
    store
        .call_blocking(move |c| {
            book::observe(
                c,
                outbox::enqueue,
                &view,
                chrono::Duration::seconds(30),
                released + chrono::Duration::minutes(5),
            )
        })
        .unwrap();
    drop(store);
    Line {
        _dir: dir,
        config: config_path,
    }
}

fn linegate(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_remove("LINEGATE_CONFIG")
        .output()
        .expect("the linegate binary runs")
}

fn stdout_of(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}, stderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).expect("UTF-8 output")
}

/// The table line that starts with `order_id`.
fn row<'a>(table: &'a str, order_id: &str) -> Vec<&'a str> {
    table
        .lines()
        .find(|l| l.split_whitespace().next() == Some(order_id))
        .unwrap_or_else(|| panic!("no row for {order_id} in:\n{table}"))
        .split_whitespace()
        .collect()
}

#[test]
fn the_table_lists_every_order_with_machine_product_progress_and_state() {
    let line = line();
    let table = stdout_of(&linegate(&["orders", "-c", line.config.to_str().unwrap()]));
    let header = table.lines().next().unwrap_or_default();
    for column in ["order", "machine", "product", "produced", "state"] {
        assert!(header.contains(column), "{column} in header: {header}");
    }
    for (id, machine, product, progress, state) in [
        ("WO-1", "press07", "P-4711", "37/120", "running"),
        ("WO-2", "press07", "P-4712", "0/40", "queued"),
        ("WO-3", "press08", "P-4712", "0/300", "queued"),
    ] {
        let cells = row(&table, id);
        for want in [machine, product, progress, state] {
            assert!(
                cells.contains(&want),
                "{want} in the row of {id}: {cells:?}"
            );
        }
    }
}

#[test]
fn json_output_is_an_array_of_orders_with_their_fields() {
    let line = line();
    let text = stdout_of(&linegate(&[
        "orders",
        "-c",
        line.config.to_str().unwrap(),
        "--json",
    ]));
    let rows: Value = serde_json::from_str(&text).expect("--json prints valid JSON");
    let rows = rows.as_array().expect("a JSON array");
    assert_eq!(rows.len(), 3);
    let wo1 = rows
        .iter()
        .find(|r| r["order_id"] == "WO-1")
        .expect("WO-1 listed");
    assert_eq!(wo1["machine"], "press07");
    assert_eq!(wo1["product"], "P-4711");
    assert_eq!(wo1["quantity"], 120);
    assert_eq!(wo1["state"], "running");
    assert_eq!(wo1["progress"]["produced"], 37);
    assert_eq!(wo1["progress"]["scrap"], 2);
    let wo3 = rows
        .iter()
        .find(|r| r["order_id"] == "WO-3")
        .expect("WO-3 listed");
    assert_eq!(wo3["machine"], "press08");
    assert_eq!(wo3["quantity"], 300);
    assert_eq!(wo3["state"], "queued");
    assert_eq!(wo3["progress"]["produced"], 0);
}

/// The fields that docs/orders.md lists under "What `linegate orders
/// --json` prints" (its table's first column).
fn documented_order_fields() -> Vec<String> {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/orders.md"))
        .expect("docs/orders.md");
    let section = doc
        .split("### What `linegate orders --json` prints")
        .nth(1)
        .expect("docs/orders.md has the section");
    section
        .lines()
        .skip_while(|l| !l.starts_with("| `"))
        .take_while(|l| l.starts_with('|'))
        .filter_map(|l| l.strip_prefix("| `")?.split('`').next().map(str::to_string))
        .collect()
}

#[test]
fn json_orders_carry_the_documented_fields_and_not_the_books_bookkeeping() {
    let line = line();
    let text = stdout_of(&linegate(&[
        "orders",
        "-c",
        line.config.to_str().unwrap(),
        "--json",
    ]));
    let rows: Value = serde_json::from_str(&text).expect("valid JSON");
    let documented = documented_order_fields();
    for must in ["order_id", "revision", "machine", "state", "progress"] {
        assert!(
            documented.iter().any(|f| f == must),
            "{must}: {documented:?}"
        );
    }
    let rows = rows.as_array().expect("an array");
    assert!(!rows.is_empty());
    for r in rows {
        let keys: Vec<&str> = r
            .as_object()
            .expect("an object")
            .keys()
            .map(String::as_str)
            .collect();
        for k in &keys {
            assert!(
                documented.iter().any(|f| f == k),
                "{k} is not in docs/orders.md's table of `orders --json`: {r}"
            );
        }
        for k in [
            "arrival",
            "done",
            "base",
            "started_rank",
            "late_reported",
            "reported_at",
        ] {
            assert!(!keys.contains(&k), "{k}: {r}");
        }
    }
}

#[test]
fn top_shows_the_order_in_progress_on_its_machine_and_none_on_the_other() {
    let line = line();
    let text = stdout_of(&linegate(&[
        "top",
        "-c",
        line.config.to_str().unwrap(),
        "--once",
    ]));
    // WO-1 running at 37 of 120 (what the store was given above).
    let press07 = row(&text, "press07");
    assert!(
        press07.contains(&"WO-1") && press07.contains(&"37/120"),
        "{text}"
    );
    let press08 = row(&text, "press08");
    assert!(
        !press08.iter().any(|c| c.starts_with("WO-")),
        "WO-3 is only queued: {text}"
    );
}

#[test]
fn machine_filter_lists_only_that_machines_orders() {
    let line = line();
    let config = line.config.to_str().unwrap();
    let table = stdout_of(&linegate(&["orders", "-c", config, "--machine", "press08"]));
    assert!(row(&table, "WO-3").contains(&"press08"), "{table}");
    assert!(
        !table.contains("WO-1") && !table.contains("WO-2"),
        "{table}"
    );

    let text = stdout_of(&linegate(&[
        "orders",
        "-c",
        config,
        "--machine",
        "press07",
        "--json",
    ]));
    let rows: Value = serde_json::from_str(&text).expect("valid JSON");
    let ids: Vec<&str> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["order_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["WO-1", "WO-2"], "press07's orders in their sequence");

    let none = stdout_of(&linegate(&[
        "orders",
        "-c",
        config,
        "--machine",
        "nosuch",
        "--json",
    ]));
    let rows: Value = serde_json::from_str(&none).expect("valid JSON");
    assert_eq!(rows, json!([]));
}

#[test]
fn an_unknown_config_file_is_a_clear_error_and_a_failing_exit() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nowhere.toml");
    let out = linegate(&["orders", "-c", missing.to_str().unwrap()]);
    assert!(!out.status.success(), "exit {:?}", out.status);
    assert_ne!(out.status.code(), Some(101), "an error, not a panic");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&missing.display().to_string()),
        "the error names the file: {stderr}"
    );
    assert!(stderr.contains("config file"), "{stderr}");
    assert!(out.stdout.is_empty(), "nothing on stdout");
}

#[test]
fn a_queued_order_says_what_it_waits_for() {
    // The fixture's own facts: WO-1 is running on press07 with WO-2 queued
    // behind it; nothing has ever been seen of press08.
    let line = line();
    let table = stdout_of(&linegate(&["orders", "-c", line.config.to_str().unwrap()]));
    let header = table.lines().next().unwrap_or_default();
    assert!(header.contains("waits for"), "{header}");
    let line_of = |id: &str| {
        table
            .lines()
            .find(|l| l.split_whitespace().next() == Some(id))
            .unwrap_or_else(|| panic!("no row for {id} in:\n{table}"))
            .to_owned()
    };
    assert!(
        line_of("WO-2").contains(
            "order WO-1 is on the machine (running); released after it completes, is held or cancelled"
        ),
        "{table}"
    );
    assert!(
        line_of("WO-3").contains("machine not seen yet; released when idle or in setup"),
        "{table}"
    );
    assert!(
        !line_of("WO-1").contains("released when"),
        "a running order waits for nothing: {table}"
    );
}

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

/// A scripted day (UTC, no shift calendar), every step through the book:
/// - WO-1, press07, 10 due 10:00: released 08:00, all 10 good by 09:00 (on time, in full);
/// - WO-2, press07, 10 due 10:30: released 09:01, done 11:00 with 1 scrap (30 min late, short);
/// - WO-3, press08, 5 due 12:00: never started (not completed);
/// - WO-4, press08, 5 due 12:00: cancelled (does not count);
/// - WO-5, press08, 5 due the next day (another day).
fn scripted_day() -> Line {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let text = config_text(&data_dir);
    let config_path = dir.path().join("line.toml");
    std::fs::write(&config_path, &text).unwrap();
    let config = Config::from_toml(&text, &config_path).expect("test config is valid");
    let store = Store::open(&config.gateway.data_dir).unwrap();
    store
        .call_blocking(|c| outbox::configure(c, OutboxPolicy::from_mb(64)))
        .unwrap();
    let send = |v: Value, when: &str| {
        let parsed = command::parse(v.to_string().as_bytes(), &config);
        let when = at(when);
        store
            .call_blocking(move |c| book::intake(c, outbox::enqueue, parsed, &|_| false, when))
            .unwrap();
    };
    let due = |id: &str, machine: &str, qty: u32, due: &str| {
        json!({"type": "order", "order_id": id, "machine": machine, "product": "P-4711",
               "quantity": qty, "due": due})
    };
    send(
        due("WO-1", "press07", 10, "2026-11-26T10:00:00Z"),
        "2026-11-26T07:00:00Z",
    );
    send(
        due("WO-2", "press07", 10, "2026-11-26T10:30:00Z"),
        "2026-11-26T07:00:01Z",
    );
    send(
        due("WO-3", "press08", 5, "2026-11-26T12:00:00Z"),
        "2026-11-26T07:00:02Z",
    );
    send(
        due("WO-4", "press08", 5, "2026-11-26T12:00:00Z"),
        "2026-11-26T07:00:03Z",
    );
    send(
        due("WO-5", "press08", 5, "2026-11-27T09:00:00Z"),
        "2026-11-26T07:00:04Z",
    );
    send(
        json!({"type": "cancel", "order_id": "WO-4"}),
        "2026-11-26T07:30:00Z",
    );
    let run = |id: &'static str, base: u64, released: &str, good: u64, scrap: u64, done: &str| {
        let (released, done) = (at(released), at(done));
        store
            .call_blocking(move |c| {
                let totals = Counts {
                    produced: base,
                    good: base,
                    scrap: 0,
                };
                book::mark_released(c, outbox::enqueue, id, 1, totals, released)?;
                let view = MachineView {
                    machine: "press07".into(),
                    state: MachineState::Running,
                    since: released,
                    reason: None,
                    produced_total: base + good + scrap,
                    good_total: base + good,
                    scrap_total: scrap,
                };
                book::observe(
                    c,
                    outbox::enqueue,
                    &view,
                    chrono::Duration::seconds(30),
                    done,
                )
            })
            .unwrap()
            .unwrap_or_else(|| panic!("{id} is on press07"));
    };
    run(
        "WO-1",
        1000,
        "2026-11-26T08:00:00Z",
        10,
        0,
        "2026-11-26T09:00:00Z",
    );
    run(
        "WO-2",
        1010,
        "2026-11-26T09:01:00Z",
        9,
        1,
        "2026-11-26T11:00:00Z",
    );
    drop(store);
    Line {
        _dir: dir,
        config: config_path,
    }
}

#[test]
fn report_shows_the_delivery_scorecard_of_a_scripted_day() {
    let line = scripted_day();
    let orders = stdout_of(&linegate(&["orders", "-c", line.config.to_str().unwrap()]));
    // The script did what it says before its scorecard is read.
    assert!(row(&orders, "WO-1").contains(&"completed"), "{orders}");
    assert!(row(&orders, "WO-2").contains(&"completed"), "{orders}");
    assert!(row(&orders, "WO-4").contains(&"cancelled"), "{orders}");
    let report = stdout_of(&linegate(&[
        "report",
        "-c",
        line.config.to_str().unwrap(),
        "--from",
        "2026-11-26T00:00:00Z",
        "--to",
        "2026-11-27T00:00:00Z",
    ]));
    let section = report
        .split("delivery scorecard")
        .nth(1)
        .unwrap_or_else(|| panic!("no scorecard section in:\n{report}"));
    let cells = |scope: &str| -> Vec<String> {
        section
            .lines()
            .find(|l| l.split_whitespace().next() == Some(scope))
            .unwrap_or_else(|| panic!("no {scope} row in:\n{section}"))
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    };
    // scope, "day", date, start, closed/open, due, on time, late, open, in
    // full, otif, otif %, mean lateness in minutes (absent when none late).
    assert_eq!(
        cells("press07"),
        [
            "press07",
            "day",
            "2026-11-26",
            "2026-11-26T00:00:00+00:00",
            "closed",
            "2",
            "1",
            "1",
            "0",
            "1",
            "1",
            "50.0%",
            "30"
        ]
    );
    assert_eq!(
        cells("press08"),
        [
            "press08",
            "day",
            "2026-11-26",
            "2026-11-26T00:00:00+00:00",
            "closed",
            "1",
            "0",
            "0",
            "1",
            "0",
            "0",
            "0.0%"
        ]
    );
    assert_eq!(
        cells("(gateway)"),
        [
            "(gateway)",
            "day",
            "2026-11-26",
            "2026-11-26T00:00:00+00:00",
            "closed",
            "3",
            "1",
            "1",
            "1",
            "1",
            "1",
            "33.3%",
            "30"
        ]
    );
    // WO-5 is due the next day, outside the range: no row for it.
    assert!(!section.contains("2026-11-27T00:00:00"), "{section}");

    let machine = stdout_of(&linegate(&[
        "report",
        "-c",
        line.config.to_str().unwrap(),
        "--machine",
        "press08",
        "--from",
        "2026-11-26T00:00:00Z",
        "--to",
        "2026-11-28T00:00:00Z",
    ]));
    let section = machine
        .split("delivery scorecard")
        .nth(1)
        .unwrap_or_default();
    let rows: Vec<&str> = section
        .lines()
        .filter(|l| l.starts_with("press08"))
        .collect();
    assert_eq!(rows.len(), 2, "press08's two days: {section}");
    assert!(
        !section.contains("press07") && !section.contains("(gateway)"),
        "{section}"
    );
}

#[test]
fn the_table_shows_each_open_orders_forecast_and_risk() {
    // press07 gets two orders of 100 parts at 30 s, nothing before them:
    // WO-A ends 08:50 (due 09:00, on time), WO-B 09:40 (due 09:00, at risk).
    let dir = tempfile::tempdir().unwrap();
    let text = config_text(&dir.path().join("data"));
    let config_path = dir.path().join("line.toml");
    std::fs::write(&config_path, &text).unwrap();
    let config = Config::from_toml(&text, &config_path).expect("test config is valid");
    let store = Store::open(&config.gateway.data_dir).unwrap();
    store
        .call_blocking(|c| outbox::configure(c, OutboxPolicy::from_mb(64)))
        .unwrap();
    for (id, sequence) in [("WO-A", 1), ("WO-B", 2)] {
        let mut o = order(id, "press07", "P-4711", 100, sequence);
        o["ideal_cycle_s"] = json!(30.0);
        o["due"] = json!("2026-11-26T09:00:00Z");
        let parsed = command::parse(o.to_string().as_bytes(), &config);
        store
            .call_blocking(move |c| book::intake(c, outbox::enqueue, parsed, &|_| false, now()))
            .unwrap();
    }
    let settings = linegate::orders::outlook::Settings::of(&config.forecast);
    let refreshed = store
        .call_blocking(move |c| {
            linegate::orders::outlook::refresh(
                c,
                outbox::enqueue,
                "press07",
                None,
                None,
                &settings,
                None,
                now(),
            )
        })
        .unwrap();
    assert_eq!(refreshed.published, 2);
    drop(store);

    let table = stdout_of(&linegate(&["orders", "-c", config_path.to_str().unwrap()]));
    let header = table.lines().next().unwrap_or_default();
    assert!(
        header.contains("forecast end") && header.contains("risk"),
        "{header}"
    );
    let a = row(&table, "WO-A");
    assert!(a.contains(&"2026-11-26T08:50:00.000Z"), "{a:?}");
    assert!(!a.contains(&"AT"), "{a:?}");
    let b = row(&table, "WO-B");
    assert!(b.contains(&"2026-11-26T09:40:00.000Z"), "{b:?}");
    assert!(b.contains(&"AT") && b.contains(&"RISK"), "{b:?}");

    let json_text = stdout_of(&linegate(&[
        "orders",
        "-c",
        config_path.to_str().unwrap(),
        "--json",
    ]));
    let rows: Value = serde_json::from_str(&json_text).expect("valid JSON");
    let b = rows
        .as_array()
        .and_then(|r| r.iter().find(|r| r["order_id"] == "WO-B"))
        .expect("WO-B listed");
    assert_eq!(b["forecast_end"], "2026-11-26T09:40:00Z");
    assert_eq!(b["at_risk"], true);
}
