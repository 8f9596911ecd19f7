//! The Sparkplug B edge node end to end: the real `linegate` binary, a
//! simulated line over real Modbus TCP, a real Mosquitto, and an
//! independent Sparkplug host (pysparkplug, tests/sparkplug/host.py) that
//! decodes every message on `spBv1.0/#`. The protocol rules are checked over
//! the host's whole log (`sparkplug_support::check_protocol`); values are
//! checked against what `linegate read --once` reads from the simulated
//! machines, never against the agent's own output.

mod common;
mod sparkplug_support;

use std::collections::{BTreeMap, HashSet};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use sparkplug_support::*;

fn epoch_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn count(all: &[Value], k: &str, dev: Option<&str>) -> usize {
    node_messages(all)
        .into_iter()
        .filter(|e| kind(e) == k && dev.is_none_or(|d| device(e) == d))
        .count()
}

/// Every value a device's metric had in DBIRTH and DDATA: (timestamp, value, historical).
fn values_of(all: &[Value], dev: &str, name: &str) -> Vec<(u64, Value, bool)> {
    let mut out = Vec::new();
    for e in node_messages(all) {
        if device(e) != dev || !matches!(kind(e), "DBIRTH" | "DDATA") {
            continue;
        }
        for m in metrics(e) {
            if m["name"] == name && m["is_null"] != true {
                out.push((
                    m["timestamp"].as_u64().unwrap_or(0),
                    m["value"].clone(),
                    m["is_historical"] == true,
                ));
            }
        }
    }
    out
}

/// The birth datatype of each metric of the last DBIRTH of `dev`.
fn birth_types(all: &[Value], dev: &str) -> BTreeMap<String, u64> {
    let birth = node_messages(all)
        .into_iter()
        .rev()
        .find(|e| kind(e) == "DBIRTH" && device(e) == dev)
        .unwrap_or_else(|| panic!("no DBIRTH of {dev}"));
    metrics(birth)
        .iter()
        .map(|m| {
            (
                m["name"].as_str().unwrap_or("").to_string(),
                m["datatype"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

fn read_once(line: &Line) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_linegate"))
        .args(["read", "--once", "-c"])
        .arg(&line.config)
        .output()
        .expect("run read --once");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "read --once printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sparkplug_host_sees_births_data_by_exception_rebirth_and_a_device_outage() {
    let broker = common::Mosquitto::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut host = Host::start(broker.port, dir.path().join("host.jsonl"), None);
    let url = broker.url();
    // Beside the JSON uplink, on its broker (the default).
    let extra = format!(
        "\n[uplink]\nurl = {url:?}\nkeepalive_s = 5\n\n[sparkplug]\ngroup_id = {GROUP:?}\nbackoff_min_ms = 100\nbackoff_max_ms = 500\n"
    );
    let line = Line::start(10.0, &extra).await;
    let mut agent = Agent::start(&line, 1);

    host.wait_for(
        "DBIRTH of both machines and data",
        Duration::from_secs(20),
        |m| {
            count(m, "DBIRTH", Some("sim01")) >= 1
                && count(m, "DBIRTH", Some("sim02")) >= 1
                && count(m, "DDATA", None) >= 10
        },
    );
    let all = host.messages();
    let nodes = node_messages(&all);
    assert_eq!(kind(nodes[0]), "NBIRTH", "the first message is NBIRTH");

    // Datatypes from the signal types (and the scale).
    let types = birth_types(&all, "sim01");
    for (name, want) in [
        ("Signals/cycle_active", 11),
        ("Signals/mode", 6),
        ("Signals/part_count", 7),
        ("Signals/product", 12),
        ("Signals/temperature", 9),
        ("Signals/spindle_rpm", 10),
        ("State/State", 12),
        ("State/Since", 13),
        ("Parts/Produced", 8),
        ("Utilisation/OEE", 10),
        ("Utilisation/Seconds/Running", 10),
        ("Order/Id", 12),
        ("Order/Quantity", 8),
    ] {
        assert_eq!(
            types.get(name),
            Some(&want),
            "datatype of {name}: {types:?}"
        );
    }

    // Values: what the machines hold, read independently, arrives.
    let readout = read_once(&line);
    let read_at = epoch_ms();
    std::thread::sleep(Duration::from_millis(1500));
    let all = host.messages();
    for machine in ["sim01", "sim02"] {
        let signals = readout[machine].as_object().expect("read --once machine");
        for (signal, value) in signals {
            let seen = values_of(&all, machine, &format!("Signals/{signal}"));
            assert!(!seen.is_empty(), "{machine} {signal}: never sent");
            let near: Vec<&Value> = seen
                .iter()
                .filter(|(t, _, _)| t.abs_diff(read_at) < 3000)
                .map(|(_, v, _)| v)
                .collect();
            // The value in force then: the last sent before the read, or one sent around it.
            let current = seen
                .iter()
                .rev()
                .find(|(t, _, _)| *t <= read_at + 200)
                .map(|(_, v, _)| v);
            let candidates: Vec<&Value> = near.into_iter().chain(current).collect();
            let hit = match value {
                Value::Number(n) if n.is_f64() => {
                    let x = n.as_f64().unwrap_or(f64::NAN);
                    let xs: Vec<f64> = candidates.iter().filter_map(|v| v.as_f64()).collect();
                    let lo = xs.iter().cloned().fold(f64::INFINITY, f64::min);
                    let hi = xs.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    x >= lo - 1e-3 && x <= hi + 1e-3
                }
                other => candidates.contains(&other),
            };
            assert!(
                hit,
                "{machine} {signal}: read --once gave {value}, the host saw {candidates:?} around then"
            );
        }
    }

    // Rebirth on NCMD: a new NBIRTH (same bdSeq), then both DBIRTHs again.
    let nbirths = count(&all, "NBIRTH", None);
    host.command(&format!("rebirth {GROUP} {NODE}"));
    host.wait_for(
        "NBIRTH and DBIRTHs after the rebirth command",
        Duration::from_secs(10),
        |m| count(m, "NBIRTH", None) > nbirths && count(m, "DBIRTH", Some("sim02")) >= 2,
    );

    // DCMD: refused, logged, nothing written.
    host.command(&format!("dcmd {GROUP} {NODE} sim01 Signals/mode 2"));
    let deadline = Instant::now() + Duration::from_secs(5);
    while !agent.log_text().contains("DCMD refused") {
        assert!(
            Instant::now() < deadline,
            "no DCMD refusal in the agent log:\n{}",
            agent.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        !agent.log_text().contains("write request"),
        "a DCMD led to a write"
    );

    // Device outage: DDEATH when it goes silent, DBIRTH when it answers again.
    let before = count(&host.messages(), "DDEATH", Some("sim02"));
    line.sim.set_silent("sim02", true).expect("silence sim02");
    host.wait_for("DDEATH of sim02", Duration::from_secs(10), |m| {
        count(m, "DDEATH", Some("sim02")) > before
    });
    let births = count(&host.messages(), "DBIRTH", Some("sim02"));
    line.sim.set_silent("sim02", false).expect("wake sim02");
    host.wait_for(
        "DBIRTH of sim02 after its outage",
        Duration::from_secs(10),
        |m| count(m, "DBIRTH", Some("sim02")) > births,
    );
    let all = host.messages();
    let death = node_messages(&all)
        .into_iter()
        .rposition(|e| kind(e) == "DDEATH" && device(e) == "sim02");
    let offline_sent = node_messages(&all)
        .into_iter()
        .take(death.unwrap_or(0))
        .filter(|e| device(e) == "sim02")
        .flat_map(|e| metrics(e).iter())
        .any(|m| m["name"] == "State/State" && m["value"] == "offline");
    assert!(
        offline_sent,
        "State/State offline was not sent before the DDEATH"
    );

    // SIGTERM: NDEATH with the bdSeq of the NBIRTH.
    agent.terminate();
    host.wait_for("NDEATH", Duration::from_secs(5), |m| {
        count(m, "NDEATH", None) >= 1
    });
    let all = host.messages();
    let checked = check_protocol(&all);
    assert_eq!(
        checked.ending_ndeaths, 1,
        "the NDEATH must carry the NBIRTH's bdSeq"
    );
    assert!(checked.nbirths.len() >= 2);
    assert!(
        checked.nbirths.windows(2).all(|w| w[0] == w[1]),
        "a rebirth keeps the bdSeq: {:?}",
        checked.nbirths
    );
    // Historical: only what was read before the first connection was up.
    let first_birth = node_messages(&all)
        .into_iter()
        .find(|e| kind(e) == "NBIRTH")
        .and_then(|e| e["timestamp"].as_u64())
        .expect("NBIRTH timestamp");
    for e in node_messages(&all) {
        for m in metrics(e).iter().filter(|m| m["is_historical"] == true) {
            let t = m["timestamp"].as_u64().unwrap_or(u64::MAX);
            assert!(
                t <= first_birth,
                "historical metric read after the first NBIRTH on the calm path: {m}"
            );
        }
    }
    assert!(checked.data_metrics > 0);
    // The JSON uplink ran beside it, unchanged.
    assert!(agent.log_text().contains("uplink"), "{}", agent.log_text());
}

/// Every part counted reaches the host: consecutive values of a machine's
/// part counter, live and historical together in reading order, step by at
/// most one (the simulator makes one part at a time, slower than the poll).
fn assert_no_part_lost(all: &[Value], machine: &str) {
    let mut seen = values_of(all, machine, "Signals/part_count");
    seen.sort_by_key(|(t, _, _)| *t);
    seen.dedup_by(|a, b| a.0 == b.0 && a.1 == b.1);
    for w in seen.windows(2) {
        let (a, b) = (w[0].1.as_u64().unwrap_or(0), w[1].1.as_u64().unwrap_or(0));
        assert!(
            b <= a + 1,
            "{machine}: part_count went from {a} (at {}) to {b} (at {}): values lost",
            w[0].0,
            w[1].0
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_primary_host_data_waits_for_it_and_arrives_historical_after_outages_and_a_kill() {
    let mut broker = common::Mosquitto::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut host = Host::start(broker.port, dir.path().join("host.jsonl"), Some("scada"));
    let url = broker.url();
    // Alone: no JSON uplink.
    let extra = format!(
        "\n[sparkplug]\ngroup_id = {GROUP:?}\nprimary_host_id = \"scada\"\nurl = {url:?}\nkeepalive_s = 5\nbackoff_min_ms = 100\nbackoff_max_ms = 500\n"
    );
    let line = Line::start(10.0, &extra).await;
    let mut agent = Agent::start(&line, 1);

    // No NBIRTH while the host has said nothing.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        count(&host.messages(), "NBIRTH", None),
        0,
        "NBIRTH before the host's STATE"
    );
    host.command("state online");
    host.wait_for("NBIRTH after STATE online", Duration::from_secs(10), |m| {
        count(m, "NBIRTH", None) >= 1 && count(m, "DBIRTH", None) >= 2
    });
    host.wait_for(
        "historical values from before the host came",
        Duration::from_secs(10),
        |m| check_protocol(m).historical_metrics > 0,
    );

    // A broker outage: what was read meanwhile arrives, historical.
    let outage_from = epoch_ms();
    broker.stop();
    std::thread::sleep(Duration::from_secs(3));
    broker.resume();
    let outage_to = epoch_ms();
    host.wait_for(
        "a new NBIRTH after the broker came back",
        Duration::from_secs(15),
        |m| count(m, "NBIRTH", None) >= 2,
    );
    host.wait_for(
        "historical values read during the outage",
        Duration::from_secs(15),
        |m| {
            ["sim01", "sim02"].iter().any(|d| {
                values_of(m, d, "Signals/part_count")
                    .iter()
                    .any(|(t, _, h)| *h && *t > outage_from + 500 && *t < outage_to)
            })
        },
    );
    std::thread::sleep(Duration::from_secs(2));
    let all = host.messages();
    for machine in ["sim01", "sim02"] {
        assert_no_part_lost(&all, machine);
    }

    // The host goes offline: NDEATH; the agent is killed, the broker restarts.
    host.command("state offline");
    host.wait_for("NDEATH after STATE offline", Duration::from_secs(10), |m| {
        count(m, "NDEATH", None) >= 1
    });
    std::thread::sleep(Duration::from_secs(2));
    let deaths_before = count(&host.messages(), "NDEATH", None);
    agent.kill();
    // The broker publishes the killed connection's will when it sees the
    // socket close; a broker killed before that never sends it.
    host.wait_for(
        "the killed connection's will (NDEATH)",
        Duration::from_secs(10),
        |m| count(m, "NDEATH", None) > deaths_before,
    );
    broker.stop();
    broker.resume();
    // What the killed agent had stored for the host.
    let store = linegate::store::Store::open_existing(&line.data_dir()).expect("open the store");
    let stored = store
        .call_blocking(|c| linegate::sparkplug::history::rows_after(c, 0, 1_000_000))
        .expect("read the history");
    drop(store);
    assert!(
        !stored.is_empty(),
        "nothing stored while the host was offline"
    );
    let stored: HashSet<(String, String, u64)> = stored
        .into_iter()
        .map(|(_, r)| {
            let m = <linegate::sparkplug::proto::Metric as prost::Message>::decode(
                r.encoded.as_slice(),
            )
            .expect("stored metric decodes");
            (r.machine, r.metric, m.timestamp.unwrap_or(0))
        })
        .collect();

    let mut agent = Agent::start(&line, 2);
    std::thread::sleep(Duration::from_secs(2));
    let births_before = count(&host.messages(), "NBIRTH", None);
    host.command("state online");
    host.wait_for(
        "every stored metric, historical",
        Duration::from_secs(20),
        |m| {
            let got: HashSet<(String, String, u64)> = node_messages(m)
                .into_iter()
                .filter(|e| kind(e) == "DDATA")
                .flat_map(|e| {
                    metrics(e)
                        .iter()
                        .filter(|x| x["is_historical"] == true)
                        .map(move |x| {
                            (
                                device(e).to_string(),
                                x["name"].as_str().unwrap_or("").to_string(),
                                x["timestamp"].as_u64().unwrap_or(0),
                            )
                        })
                })
                .collect();
            count(m, "NBIRTH", None) > births_before && stored.is_subset(&got)
        },
    );
    agent.terminate();
    let all = host.messages();
    let checked = check_protocol(&all);
    // bdSeq persisted: each connection takes the next, across the kill.
    let deaths: Vec<u64> = node_messages(&all)
        .into_iter()
        .filter(|e| kind(e) == "NDEATH")
        .map(bd_seq)
        .collect();
    let last_birth = *checked.nbirths.last().expect("NBIRTH");
    assert!(
        deaths.iter().any(|d| (d + 1) % 256 == last_birth),
        "the NBIRTH after the kill ({last_birth}) takes the bdSeq after the killed connection's will ({deaths:?})"
    );
    assert_eq!(
        deaths.last(),
        Some(&last_birth),
        "the last NDEATH ends the last session"
    );
}
