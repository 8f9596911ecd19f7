//! The line console over real HTTP against a running agent on the demo
//! line: the simulated machines are real Modbus TCP servers, the agent is
//! `agent::run`, the console its own HTTP server. What the console shows is
//! checked against the simulated line's own record (its machines, the time
//! a machine was silenced), the config and docs/console.md, and the metrics
//! text against `promtool check metrics` (Prometheus's own linter).
mod common;
mod console_support;

use std::collections::BTreeSet;
use std::time::Duration;

use console_support::*;
use linegate::config::Config;
use serde_json::Value;

fn machine_ids(line: &Value) -> Vec<String> {
    line["machines"]
        .as_array()
        .map(|ms| {
            ms.iter()
                .filter_map(|m| m["machine"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn state_of(line: &Value, machine: &str) -> Option<String> {
    line["machines"]
        .as_array()?
        .iter()
        .find(|m| m["machine"] == machine)?["state"]
        .as_str()
        .map(str::to_owned)
}

/// Metric family names of a Prometheus text (from its `# TYPE` lines), and
/// every label name used in its samples.
fn families_and_labels(text: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let families = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .map(str::to_owned)
        .collect();
    let mut labels = BTreeSet::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        if let Some((_, rest)) = line.split_once('{') {
            let inside = rest.split('}').next().unwrap_or("");
            for pair in inside.split("\",") {
                if let Some((k, _)) = pair.split_once('=') {
                    labels.insert(k.trim().to_owned());
                }
            }
        }
    }
    (families, labels)
}

/// The value of the sample `name{labels}` exactly as written.
fn sample(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name_and_labels)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

fn promtool_check(text: &str) {
    use std::io::Write;
    let promtool = ["/usr/bin/promtool", "/usr/local/bin/promtool"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .unwrap_or_else(|| {
            panic!("promtool is not installed: run ./scripts/test (it installs it) or apt-get install prometheus")
        });
    let mut child = std::process::Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool runs");
    child
        .stdin
        .take()
        .expect("promtool stdin")
        .write_all(text.as_bytes())
        .expect("write to promtool");
    let out = child.wait_with_output().expect("promtool ends");
    assert!(
        out.status.success(),
        "promtool check metrics fails:\n{}{}\n--- the text ---\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pages_the_api_and_the_metrics_show_every_machine_of_the_line() {
    let demo = DemoLine::start(4, 20.0, "").await;
    let truth: Vec<String> = demo.line.machines.iter().map(|m| m.id.clone()).collect();

    // Every machine of the simulated line, each with a state once read.
    let line = demo
        .wait_json("/api/v1/line", "every machine has a state", |v| {
            v["machines"]
                .as_array()
                .is_some_and(|ms| ms.iter().all(|m| m["state"].is_string()))
        })
        .await;
    assert_eq!(
        machine_ids(&line),
        truth,
        "the line lists the simulated machines"
    );

    // Pages: HTML shells with their embedded assets, no outside reference.
    for path in ["/", "/machine/sim01", "/orders", "/gateway"] {
        let r = demo.get(path).await;
        assert_eq!(r.status, 200, "GET {path}");
        assert!(
            r.header("content-type")
                .is_some_and(|t| t.starts_with("text/html")),
            "GET {path}: {:?}",
            r.headers
        );
        assert!(
            r.body.contains("/assets/console.js"),
            "GET {path} loads the script"
        );
        assert!(
            !r.body.contains("http://") && !r.body.contains("https://"),
            "GET {path} refers to nothing outside"
        );
    }
    let js = demo.get("/assets/console.js").await;
    assert_eq!(js.status, 200);
    assert!(js
        .header("content-type")
        .is_some_and(|t| t.starts_with("text/javascript")));
    let css = demo.get("/assets/console.css").await;
    assert!(css.status == 200 && !css.body.contains("@import") && !css.body.contains("url("));
    assert_eq!(demo.get("/no/such/page").await.status, 404);

    // One machine in detail: every configured signal, its bus, a timeline.
    let m = demo
        .wait_json(
            "/api/v1/machines/sim01",
            "sim01 has a timeline and bus counts",
            |v| {
                v["timeline"]["day"]["spans"]
                    .as_array()
                    .is_some_and(|s| !s.is_empty())
                    && v["bus_stats"]["counters"]["requests"]
                        .as_u64()
                        .is_some_and(|n| n > 0)
            },
        )
        .await;
    let configured: Vec<&str> = demo
        .config
        .machine("sim01")
        .expect("sim01 in the config")
        .signal
        .iter()
        .map(|s| s.name.as_str())
        .collect();
    let shown: Vec<&str> = m["signals"]
        .as_array()
        .expect("signals")
        .iter()
        .filter_map(|s| s["signal"].as_str())
        .collect();
    assert_eq!(shown, configured, "every signal of sim01, in config order");
    assert!(
        m["signals"]
            .as_array()
            .into_iter()
            .flatten()
            .all(|s| s["last_read"].is_string()),
        "every signal has been read: {}",
        m["signals"]
    );
    assert_eq!(m["bus_stats"]["bus"], "bus-sim01");
    assert!(m["bus_stats"]["latency"]["count"]
        .as_u64()
        .is_some_and(|n| n > 0));
    let missing = demo.get("/api/v1/machines/nope").await;
    assert_eq!(missing.status, 404);
    assert!(
        missing.body.contains("nope"),
        "the 404 names the machine: {}",
        missing.body
    );

    let gateway = demo.json("/api/v1/gateway").await;
    assert_eq!(gateway["gateway"], "gw-demo");
    assert_eq!(gateway["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(gateway["uplink"]["configured"], false);
    assert_eq!(gateway["watchdog"]["healthy"], true);
    let orders = demo.json("/api/v1/orders").await;
    let queues: Vec<&str> = orders["machines"]
        .as_array()
        .expect("queues")
        .iter()
        .filter_map(|q| q["machine"].as_str())
        .collect();
    assert_eq!(queues, truth.iter().map(String::as_str).collect::<Vec<_>>());

    let health = demo.get("/healthz").await;
    assert_eq!(health.status, 200, "{}", health.body);
    let health: Value = serde_json::from_str(&health.body).expect("healthz JSON");
    let loops: Vec<&str> = health["loops"]
        .as_array()
        .expect("loops")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for bus in demo.config.bus.iter() {
        let name = format!("modbus bus {}", bus.id);
        assert!(
            loops.contains(&name.as_str()),
            "{name} is watched: {loops:?}"
        );
    }

    // Metrics: Prometheus accepts them; every family is documented; label
    // names are Prometheus style; each machine is in exactly one state.
    let metrics = demo.get("/metrics").await;
    assert_eq!(metrics.status, 200);
    assert!(metrics
        .header("content-type")
        .is_some_and(|t| t.starts_with("text/plain; version=0.0.4")));
    promtool_check(&metrics.body);
    let docs = std::fs::read_to_string("docs/console.md").expect("docs/console.md");
    let (families, labels) = families_and_labels(&metrics.body);
    for want in [
        "linegate_machine_state",
        "linegate_machine_period_state_seconds",
        "linegate_machine_parts_total",
        "linegate_bus_requests_total",
        "linegate_bus_timeouts_total",
        "linegate_bus_errors_total",
        "linegate_bus_reply_seconds",
        "linegate_outbox_depth_messages",
        "linegate_outbox_dropped_telemetry_total",
        "linegate_uplink_connected",
        "linegate_orders",
    ] {
        assert!(families.contains(want), "/metrics has {want}: {families:?}");
    }
    let undocumented: Vec<&String> = families
        .iter()
        .filter(|f| !docs.contains(&format!("`{f}`")))
        .collect();
    assert!(
        undocumented.is_empty(),
        "families not in docs/console.md: {undocumented:?}"
    );
    for l in &labels {
        assert!(
            !l.is_empty()
                && l.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
                && !l.starts_with("__"),
            "label {l:?} is not Prometheus style"
        );
    }
    for id in &truth {
        let ones: f64 = [
            "running",
            "setup",
            "down",
            "idle",
            "planned_stop",
            "offline",
        ]
        .iter()
        .filter_map(|s| {
            sample(
                &metrics.body,
                &format!("linegate_machine_state{{machine=\"{id}\",state=\"{s}\"}}"),
            )
        })
        .sum();
        assert_eq!(ones, 1.0, "{id} is in exactly one state");
    }
    let requests = sample(
        &metrics.body,
        "linegate_bus_requests_total{bus=\"bus-sim01\",transport=\"tcp\"}",
    )
    .expect("bus-sim01 requests");
    let replies = sample(
        &metrics.body,
        "linegate_bus_reply_seconds_count{bus=\"bus-sim01\"}",
    )
    .expect("replies");
    assert!(
        requests >= replies && replies > 0.0,
        "requests {requests} >= replies {replies}"
    );
    // Prometheus asks for OpenMetrics and gets it.
    let om = request(
        demo.port,
        "GET",
        "/metrics",
        &[("Accept", "application/openmetrics-text;version=1.0.0")],
    )
    .await
    .expect("openmetrics scrape");
    assert!(om
        .header("content-type")
        .is_some_and(|t| t.starts_with("application/openmetrics-text")));
    assert!(om.body.ends_with("# EOF\n"));

    demo.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_machine_that_stops_answering_turns_offline_in_the_api_and_the_metrics() {
    let demo = DemoLine::start(2, 20.0, "").await;
    demo.wait_json("/api/v1/line", "sim02 is read", |v| {
        state_of(v, "sim02").is_some_and(|s| s != "offline")
    })
    .await;
    // The simulated line's own record of when the cable was pulled.
    let pulled = demo.line.set_silent("sim02", true).expect("sim02 exists");
    let line = demo
        .wait_json("/api/v1/line", "sim02 offline", |v| {
            state_of(v, "sim02").as_deref() == Some("offline")
        })
        .await;
    let m = line["machines"]
        .as_array()
        .and_then(|ms| ms.iter().find(|m| m["machine"] == "sim02"))
        .expect("sim02");
    let since =
        chrono::DateTime::parse_from_rfc3339(m["since"].as_str().expect("since")).expect("time");
    // The poll that saw it started before the pull, at most one timeout before.
    let timeout_ms = demo.config.bus("bus-sim02").expect("bus-sim02").timeout_ms;
    let earliest = pulled - chrono::Duration::milliseconds(i64::try_from(timeout_ms).unwrap_or(0));
    assert!(
        since >= earliest,
        "offline since {since}: no earlier than the request in flight when the cable was pulled at {pulled}"
    );
    assert!(m["last_error"].is_string(), "the failed poll says why: {m}");
    assert_ne!(
        state_of(&line, "sim01").as_deref(),
        Some("offline"),
        "its neighbour still answers"
    );
    let metrics = demo.get("/metrics").await.body;
    assert_eq!(
        sample(
            &metrics,
            "linegate_machine_state{machine=\"sim02\",state=\"offline\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &metrics,
            "linegate_machine_state{machine=\"sim01\",state=\"offline\"}"
        ),
        Some(0.0)
    );
    let timeouts = sample(
        &metrics,
        "linegate_bus_timeouts_total{bus=\"bus-sim02\",transport=\"tcp\"}",
    )
    .expect("timeouts");
    assert!(
        timeouts >= 1.0,
        "the silent machine's bus counts its timeouts: {timeouts}"
    );
    let detail = demo.json("/api/v1/machines/sim02").await;
    let last = detail["timeline"]["day"]["spans"]
        .as_array()
        .and_then(|s| s.last().cloned())
        .expect("spans");
    assert_eq!(
        last["state"], "offline",
        "the timeline ends offline: {}",
        detail["timeline"]
    );
    demo.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_route_accepts_a_write_and_a_write_changes_nothing() {
    let demo = DemoLine::start(1, 20.0, "").await;
    demo.wait_json("/api/v1/line", "sim01 read", |v| {
        state_of(v, "sim01").is_some()
    })
    .await;
    let before = demo.json("/api/v1/orders").await;
    for path in [
        "/",
        "/machine/sim01",
        "/orders",
        "/gateway",
        "/api/v1/line",
        "/api/v1/machines/sim01",
        "/api/v1/orders",
        "/api/v1/gateway",
        "/metrics",
        "/healthz",
        "/assets/console.js",
        "/api/v1/orders/o-1",
        "/api/v1/machines/sim01/write",
    ] {
        for method in ["POST", "PUT", "DELETE", "PATCH"] {
            let r = request(demo.port, method, path, &[])
                .await
                .expect("a reply");
            assert_eq!(r.status, 405, "{method} {path}: {}", r.body);
            assert_eq!(
                r.header("allow"),
                Some("GET, HEAD"),
                "{method} {path} says what is allowed"
            );
        }
    }
    let after = demo.json("/api/v1/orders").await;
    assert_eq!(
        before["machines"], after["machines"],
        "the order book is unchanged"
    );
    assert_eq!(before["by_state"], after["by_state"]);
    demo.stop().await;
}

#[test]
fn a_console_off_loopback_needs_a_password_and_the_error_names_the_key() {
    let base = "[gateway]\nid = \"gw1\"\nsite = \"s1\"\n";
    let open = format!("{base}[console]\nlisten = \"0.0.0.0:9780\"\n");
    let e = Config::from_toml(&open, std::path::Path::new("t.toml"))
        .expect_err("off loopback without a password");
    assert!(e.to_string().contains("console.password_file"), "{e}");
    let bad = format!("{base}[console]\nlisten = \"somewhere\"\n");
    let e = Config::from_toml(&bad, std::path::Path::new("t.toml")).expect_err("not IP:port");
    assert!(e.to_string().contains("console.listen"), "{e}");
    let half_tls = format!("{base}[console]\ntls_cert_file = \"c.pem\"\n");
    let e =
        Config::from_toml(&half_tls, std::path::Path::new("t.toml")).expect_err("cert without key");
    assert!(e.to_string().contains("console.tls_cert_file"), "{e}");
    let off = format!("{base}[console]\nlisten = \"\"\n");
    let c = Config::from_toml(&off, std::path::Path::new("t.toml")).expect("off is valid");
    assert_eq!(linegate::console::url(&c.console), None);
    let with_password = format!(
        "{base}[console]\nlisten = \"0.0.0.0:9780\"\npassword_file = \"/etc/linegate/console-password\"\n"
    );
    let c = Config::from_toml(&with_password, std::path::Path::new("t.toml")).expect("valid");
    let warnings = linegate::config::console_warnings(&c.console);
    assert!(
        warnings
            .iter()
            .any(|w| w.key == "console.listen" && w.message.contains("TLS")),
        "plaintext off loopback is warned about: {warnings:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn off_loopback_every_route_but_healthz_asks_for_the_password() {
    let dir = tempfile::tempdir().expect("tempdir");
    let password = dir.path().join("console-password");
    std::fs::write(&password, "s3cret\n").expect("password file");
    // On every address (off loopback), reached here over loopback.
    let demo = DemoLine::start_on(
        "0.0.0.0",
        1,
        20.0,
        &format!("password_file = {:?}", password.display().to_string()),
    )
    .await;
    let port = demo.port;
    use base64::Engine as _;
    let good = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("linegate:s3cret")
    );
    let wrong = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("linegate:guess")
    );
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while request(port, "GET", "/healthz", &[]).await.is_err() {
        assert!(tokio::time::Instant::now() < deadline, "the console starts");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for path in [
        "/",
        "/api/v1/line",
        "/metrics",
        "/machine/sim01",
        "/assets/console.js",
    ] {
        let none = request(port, "GET", path, &[]).await.expect("reply");
        assert_eq!(none.status, 401, "GET {path} without a password");
        assert!(none
            .header("www-authenticate")
            .is_some_and(|v| v.starts_with("Basic")));
        let bad = request(port, "GET", path, &[("Authorization", &wrong)])
            .await
            .expect("reply");
        assert_eq!(bad.status, 401, "GET {path} with a wrong password");
        let ok = request(port, "GET", path, &[("Authorization", &good)])
            .await
            .expect("reply");
        assert_eq!(ok.status, 200, "GET {path} with the password: {}", ok.body);
    }
    assert_eq!(
        request(port, "GET", "/healthz", &[])
            .await
            .expect("reply")
            .status,
        200
    );
    demo.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_serves_the_console_with_the_configured_certificate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let issued =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .expect("a certificate");
    let cert = dir.path().join("console-cert.pem");
    let key = dir.path().join("console-key.pem");
    std::fs::write(&cert, issued.cert.pem()).expect("cert file");
    std::fs::write(&key, issued.signing_key.serialize_pem()).expect("key file");
    let demo = DemoLine::start(
        1,
        20.0,
        &format!(
            "tls_cert_file = {:?}\ntls_key_file = {:?}",
            cert.display().to_string(),
            key.display().to_string()
        ),
    )
    .await;
    assert_eq!(
        linegate::console::url(&demo.config.console).as_deref(),
        Some(format!("https://127.0.0.1:{}/", demo.port).as_str())
    );
    let connector = tls_connector(&issued.cert.pem());
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let reply = loop {
        let attempt = async {
            let tcp = tokio::net::TcpStream::connect(("127.0.0.1", demo.port)).await?;
            let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
            let tls = connector.connect(name, tcp).await?;
            exchange(tls, "GET", "/api/v1/line", &[]).await
        };
        match attempt.await {
            Ok(r) => break r,
            Err(e) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "HTTPS never answered: {e}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert_eq!(reply.status, 200, "{}", reply.body);
    let line: Value = serde_json::from_str(&reply.body).expect("JSON over HTTPS");
    assert_eq!(machine_ids(&line), vec!["sim01".to_string()]);
    // Plain HTTP on the HTTPS port gets no page.
    let plain = request(demo.port, "GET", "/api/v1/line", &[]).await;
    assert!(
        plain.map(|r| r.status != 200).unwrap_or(true),
        "no page over plain HTTP"
    );
    demo.stop().await;
}

/// `/healthz` against the agent's own watchdog ledger: a real loop (it
/// beats on its timer as the bus loops do) stops beating, and the console
/// answers 503 naming it, then 200 again once it beats.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_turns_503_and_names_the_loop_that_stopped_beating() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = format!(
        "[gateway]\nid = \"gw1\"\nsite = \"s1\"\ndata_dir = {:?}\n",
        dir.path().display().to_string()
    );
    let config = std::sync::Arc::new(
        Config::from_toml(&text, std::path::Path::new("t.toml")).expect("config"),
    );
    let store = linegate::store::Store::open(dir.path()).expect("store");
    let liveness = linegate::systemd::Liveness::new();
    let (_config_tx, config_rx) = tokio::sync::watch::channel(config);
    let sources = linegate::console::Sources {
        config: config_rx,
        config_path: None,
        store,
        board: Default::default(),
        uplink: Default::default(),
        liveness: liveness.clone(),
        buses: std::sync::Arc::new(Vec::new),
        started_at: chrono::Utc::now(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let stop = tokio_util::sync::CancellationToken::new();
    let server = tokio::spawn(linegate::console::serve(
        listener,
        None,
        linegate::console::router(sources, linegate::console::Guard::open()),
        stop.clone(),
    ));
    // Two loops on one timer: the bus loop stops beating at `stuck` (as a
    // loop blocked in a branch body would) and beats again at `resumed`;
    // the uplink beats throughout.
    let stuck = tokio_util::sync::CancellationToken::new();
    let resumed = tokio_util::sync::CancellationToken::new();
    let heartbeat = liveness.register("mqtt bus cell-b");
    let other = liveness.register("uplink");
    let looping = {
        let (stuck, resumed) = (stuck.clone(), resumed.clone());
        tokio::spawn(async move {
            let mut tick = heartbeat.ticker();
            loop {
                tick.tick().await;
                other.beat();
                if !stuck.is_cancelled() || resumed.is_cancelled() {
                    heartbeat.beat();
                }
            }
        })
    };
    let get = || async {
        request(port, "GET", "/healthz", &[])
            .await
            .expect("healthz answers")
    };
    let ok = get().await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    stuck.cancel();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let silent = loop {
        let r = get().await;
        if r.status == 503 {
            break r;
        }
        assert_eq!(r.status, 200);
        assert!(
            tokio::time::Instant::now() < deadline,
            "healthz never turned 503"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let body: Value = serde_json::from_str(&silent.body).expect("JSON");
    assert_eq!(
        body["silent"],
        serde_json::json!(["mqtt bus cell-b"]),
        "only the stopped loop is named: {body}"
    );
    assert!(body["error"]
        .as_str()
        .is_some_and(|e| e.contains("mqtt bus cell-b")));
    let metrics = request(port, "GET", "/metrics", &[])
        .await
        .expect("metrics")
        .body;
    assert_eq!(
        sample(&metrics, "linegate_loop_beating{loop=\"mqtt bus cell-b\"}"),
        Some(0.0)
    );
    assert_eq!(
        sample(&metrics, "linegate_loop_beating{loop=\"uplink\"}"),
        Some(1.0)
    );
    resumed.cancel();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while get().await.status != 200 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "healthz never turned 200 again"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    looping.abort();
    stop.cancel();
    server.await.expect("the console stops");
}

/// Another process holds the store's write lock, as a maintenance or backup
/// script would: python3's own sqlite3 module, `BEGIN EXCLUSIVE`, until told
/// to commit (a line on its stdin). It says `locked` once it has the lock.
const LOCK_HOLDER: &str = r#"
import sqlite3, sys
c = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=60)
c.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.readline()
c.execute("COMMIT")
print("released", flush=True)
"#;

/// `/healthz` of the whole agent (`agent::run` on the demo line, reporting
/// to a real Mosquitto) while another process holds the store's write lock
/// (as a backup tool might): every write of the agent then waits out the
/// store's busy timeout (5 s) on its one store thread, each writer in turn.
/// No loop may go silent: the buses keep polling (the last values are
/// flushed beside the samples, not in their way) and the engine keeps
/// handing on its events (the recorder takes them while its commit waits).
/// Before both fixes this lock stopped every bus, then the state engine.
/// Once the lock is gone nothing was lost: every state change of the window
/// is stored and reached the broker, no machine was taken for `offline`, no
/// event was counted lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_stays_200_and_nothing_is_lost_while_another_process_holds_the_store_lock() {
    use std::io::{BufRead, Write};
    use std::sync::{Arc, Mutex};

    let broker = common::Mosquitto::start();
    let demo = DemoLine::start(4, 20.0, &format!("\n[uplink]\nurl = {:?}\n", broker.url())).await;
    demo.wait_json("/api/v1/gateway", "the uplink connects", |g| {
        g["uplink"]["connected"] == true
    })
    .await;
    // The central team's view: every state message the broker delivers.
    let delivered: Arc<Mutex<BTreeSet<(String, String, String)>>> = Arc::default();
    let mut o = rumqttc::MqttOptions::new("console-state-watcher", "127.0.0.1", broker.port);
    o.set_keep_alive(Duration::from_secs(5));
    let (client, mut events) = rumqttc::AsyncClient::new(o, 64);
    let topic = format!("{}/m/+/state", demo.config.topic_prefix());
    client
        .subscribe(&topic, rumqttc::QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    let (suback_tx, suback_rx) = tokio::sync::oneshot::channel();
    let watcher = {
        let delivered = delivered.clone();
        tokio::spawn(async move {
            let mut suback = Some(suback_tx);
            loop {
                match events.poll().await {
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_))) => {
                        if let Some(tx) = suback.take() {
                            let _ = tx.send(());
                        }
                    }
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                        let v: Value = serde_json::from_slice(&p.payload).unwrap_or_default();
                        let field = |k: &str| v[k].as_str().unwrap_or_default().to_string();
                        delivered.lock().unwrap().insert((
                            field("machine"),
                            field("state"),
                            field("since"),
                        ));
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        })
    };
    tokio::time::timeout(PATIENCE, suback_rx)
        .await
        .expect("the broker acknowledges the subscription")
        .expect("watcher");
    let health = || async {
        let r = request(demo.port, "GET", "/healthz", &[])
            .await
            .expect("healthz answers");
        let body: Value = serde_json::from_str(&r.body)
            .unwrap_or_else(|e| panic!("healthz is not JSON ({e}): {}", r.body));
        (r.status, body)
    };
    let (status, body) = health().await;
    assert_eq!(status, 200, "{body}");

    let db = demo.dir.path().join(linegate::store::FILE_NAME);
    let mut holder = std::process::Command::new("python3")
        .args(["-c", LOCK_HOLDER])
        .arg(&db)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs (./scripts/test installs it)");
    let mut said = std::io::BufReader::new(holder.stdout.take().expect("stdout"));
    let said = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        let _ = said.read_line(&mut line);
        (line, said)
    });
    let (line, mut said) = tokio::time::timeout(PATIENCE * 2, said)
        .await
        .expect("the other process gets the lock")
        .expect("reader");
    assert_eq!(line.trim(), "locked");
    let locked_at = chrono::Utc::now();

    // Twelve seconds of lock: more than two busy timeouts of every writer
    // in turn. Every loop beats throughout (the recorder keeps taking the
    // engine's events while its commit waits; the last values are flushed
    // beside the samples), so /healthz stays 200.
    let until = tokio::time::Instant::now() + Duration::from_secs(12);
    let mut asked = 0;
    while tokio::time::Instant::now() < until {
        let (status, body) = health().await;
        assert_eq!(
            status, 200,
            "a loop went silent while another process held the store's lock: {body}"
        );
        asked += 1;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(asked >= 20, "healthz answered {asked} times in 12 s");

    // The lock goes.
    let stdin = holder.stdin.as_mut().expect("stdin");
    stdin.write_all(b"commit\n").expect("tell the holder");
    stdin.flush().expect("tell the holder");
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        let _ = said.read_line(&mut line);
        line
    })
    .await
    .expect("reader");
    assert_eq!(line.trim(), "released");
    let released_at = chrono::Utc::now();
    assert!(holder.wait().expect("holder ends").success());
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let (status, body) = health().await;
        if status == 200 {
            assert_eq!(body["status"], "ok");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "healthz never turned 200 again after the lock went: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The agent ran on: every state change of the window (the store read
    // beside the running agent) reaches the broker.
    let db = demo.dir.path().join(linegate::store::FILE_NAME);
    let deadline = tokio::time::Instant::now() + PATIENCE * 2;
    let window = loop {
        let window = state_changes_between(&db, locked_at, released_at);
        let missing: Vec<_> = {
            let delivered = delivered.lock().unwrap();
            window
                .iter()
                .filter(|c| !delivered.contains(*c))
                .cloned()
                .collect()
        };
        // The changes held while the store was locked are committed once
        // the recorder's retry comes round: wait for them too.
        if !window.is_empty() && missing.is_empty() {
            break window;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} of {} state changes of the lock window never reached the broker (none stored: the machines changed state during the lock, and the changes must be kept): {missing:?}",
            missing.len(),
            window.len()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    watcher.abort();
    assert!(
        !window.is_empty(),
        "the machines changed state during the lock, and the changes were kept"
    );
    let offline: Vec<_> = window.iter().filter(|(_, s, _)| s == "offline").collect();
    assert!(
        offline.is_empty(),
        "every machine answered throughout; none may be recorded offline: {offline:?}"
    );
    let dir = demo.stop_keeping_dir().await;
    let conn = rusqlite::Connection::open(dir.path().join(linegate::store::FILE_NAME))
        .expect("the store opens");
    let lost: i64 = conn
        .query_row("SELECT lost_events FROM store_loss WHERE id = 1", [], |r| {
            r.get(0)
        })
        .expect("store_loss");
    assert_eq!(lost, 0, "no machine event was lost");
}

/// `(machine, state, since)` of the state changes stored in `db` that
/// happened within `[from, to]`, in the order stored.
fn state_changes_between(
    db: &std::path::Path,
    from: chrono::DateTime<chrono::Utc>,
    to: chrono::DateTime<chrono::Utc>,
) -> Vec<(String, String, String)> {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .expect("the store opens");
    let stamp =
        |t: chrono::DateTime<chrono::Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let mut q = conn
        .prepare(
            "SELECT machine, state, since FROM state_change
             WHERE since >= ?1 AND since <= ?2 ORDER BY id",
        )
        .expect("query");
    q.query_map([stamp(from), stamp(to)], |r| {
        Ok((r.get(0)?, r.get(1)?, r.get(2)?))
    })
    .expect("state changes")
    .collect::<Result<_, _>>()
    .expect("rows")
}

/// Publishes to the agent's order topic on the real broker, as the planner does.
async fn planner(port: u16) -> (rumqttc::AsyncClient, tokio::task::JoinHandle<()>) {
    let mut o = rumqttc::MqttOptions::new("console-planner", "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(5));
    let (client, mut events) = rumqttc::AsyncClient::new(o, 16);
    let task = tokio::spawn(async move {
        loop {
            if events.poll().await.is_err() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    });
    (client, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_orders_page_shows_each_queue_in_release_order_and_the_plan_and_the_uplink() {
    let mut broker = common::Mosquitto::start();
    let demo = DemoLine::start(2, 20.0, &format!("\n[uplink]\nurl = {:?}\n", broker.url())).await;
    let gateway = demo
        .wait_json("/api/v1/gateway", "the uplink connects", |g| {
            g["uplink"]["connected"] == true
        })
        .await;
    assert_eq!(gateway["uplink"]["broker"], broker.url());
    let (client, task) = planner(broker.port).await;
    let topic = format!("{}/orders/cmd", demo.config.topic_prefix());
    // The planner's own record: a plan for sim01 (its first order already
    // past due) released in its order, one order for sim02.
    let past = (chrono::Utc::now() - chrono::Duration::minutes(5)).to_rfc3339();
    let later = (chrono::Utc::now() + chrono::Duration::hours(2)).to_rfc3339();
    let plan = serde_json::json!({"type": "plan", "plan_id": "HJ-CONSOLE", "machine": "sim01", "orders": [
        {"order_id": "C-1", "revision": 1, "product": "P-4711", "quantity": 400, "due": past, "sequence": 1},
        {"order_id": "C-2", "revision": 1, "product": "P-4712", "quantity": 3, "due": later, "sequence": 2},
    ]});
    let single = serde_json::json!({"type": "order", "order_id": "D-1", "revision": 1, "machine": "sim02",
        "product": "P-4711", "quantity": 500});
    for m in [plan, single] {
        client
            .publish(&topic, rumqttc::QoS::AtLeastOnce, false, m.to_string())
            .await
            .expect("the planner publishes");
    }
    let queue = |v: &Value, machine: &str| -> Vec<String> {
        v["machines"]
            .as_array()
            .and_then(|ms| ms.iter().find(|m| m["machine"] == machine))
            .and_then(|m| m["orders"].as_array())
            .map(|os| {
                os.iter()
                    .filter_map(|o| o["order_id"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let orders = demo
        .wait_json(
            "/api/v1/orders",
            "the orders are in the book, C-1 running",
            |v| {
                queue(v, "sim01").len() == 2
                    && queue(v, "sim02").len() == 1
                    && v["machines"][0]["orders"][0]["state"] == "running"
            },
        )
        .await;
    assert_eq!(
        queue(&orders, "sim01"),
        ["C-1", "C-2"],
        "release order is the plan's sequence"
    );
    assert_eq!(queue(&orders, "sim02"), ["D-1"]);
    let first = &orders["machines"][0]["orders"][0];
    assert!(
        first["lateness_s"].as_f64().is_some_and(|l| l > 250.0),
        "C-1 is late by about 5 min: {first}"
    );
    let second = &orders["machines"][0]["orders"][1];
    assert!(
        second["lateness_s"].as_f64().is_some_and(|l| l < -3600.0),
        "C-2 is ahead of due: {second}"
    );
    let plans = orders["plans"].as_array().expect("plans");
    assert_eq!(plans.len(), 1, "{plans:?}");
    assert_eq!(plans[0]["plan_id"], "HJ-CONSOLE");
    assert_eq!(plans[0]["orders"], 2);
    // The line page shows the order in progress on its machine.
    let line = demo
        .wait_json("/api/v1/line", "C-1 in progress on sim01", |v| {
            v["machines"][0]["order"]["order_id"] == "C-1"
                && v["machines"][0]["order"]["produced"]
                    .as_u64()
                    .is_some_and(|n| n > 0)
        })
        .await;
    assert_eq!(line["machines"][0]["order"]["quantity"], 400);
    let metrics = demo.get("/metrics").await.body;
    promtool_check(&metrics);
    assert_eq!(sample(&metrics, "linegate_uplink_connected"), Some(1.0));
    let in_book: f64 = [
        "accepted",
        "queued",
        "released",
        "running",
        "held",
        "completed",
        "cancelled",
        "aborted",
        "rejected",
    ]
    .iter()
    .filter_map(|s| sample(&metrics, &format!("linegate_orders{{state=\"{s}\"}}")))
    .sum();
    assert_eq!(in_book, 3.0, "three orders in the book");
    // The broker goes away: the gateway page says so and why.
    broker.stop();
    let gone = demo
        .wait_json("/api/v1/gateway", "the uplink is seen disconnected", |g| {
            g["uplink"]["connected"] == false
        })
        .await;
    assert!(
        gone["uplink"]["last_error"].is_string(),
        "the last uplink error is shown: {gone}"
    );
    let metrics = demo.get("/metrics").await.body;
    assert_eq!(sample(&metrics, "linegate_uplink_connected"), Some(0.0));
    task.abort();
    demo.stop().await;
}
