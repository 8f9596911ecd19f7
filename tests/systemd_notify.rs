//! sd_notify against a fake NOTIFY_SOCKET (a Unix datagram socket in a temp
//! folder, as systemd would provide): readiness arrives, the watchdog is
//! petted while every heartbeat beats, and petting stops once one stops.

use std::time::Duration;

use linegate::systemd::{self, Liveness};
use tokio::net::UnixDatagram;
use tokio_util::sync::CancellationToken;

/// NOTIFY_SOCKET and WATCHDOG_USEC are process-wide: one test at a time touches them.
static ENV: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A fake systemd end of the notification socket.
struct FakeSystemd {
    _dir: tempfile::TempDir,
    socket: UnixDatagram,
}

impl FakeSystemd {
    fn listen() -> FakeSystemd {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("notify.sock");
        let socket = UnixDatagram::bind(&path).expect("bind notify socket");
        std::env::set_var("NOTIFY_SOCKET", &path);
        FakeSystemd { _dir: dir, socket }
    }

    /// The next notification, or None after `wait`.
    async fn next(&self, wait: Duration) -> Option<String> {
        let mut buf = vec![0u8; 4096];
        match tokio::time::timeout(wait, self.socket.recv(&mut buf)).await {
            Ok(Ok(n)) => Some(String::from_utf8_lossy(&buf[..n]).into_owned()),
            _ => None,
        }
    }

    /// Every notification that arrives within `window`.
    async fn collect(&self, window: Duration) -> Vec<String> {
        let until = tokio::time::Instant::now() + window;
        let mut all = Vec::new();
        loop {
            let left = until.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return all;
            }
            match self.next(left).await {
                Some(m) => all.push(m),
                None => return all,
            }
        }
    }
}

fn has_line(msg: &str, line: &str) -> bool {
    msg.lines().any(|l| l == line)
}

#[tokio::test]
async fn ready_stopping_and_status_reach_the_notify_socket() {
    let _env = ENV.lock().await;
    let systemd_end = FakeSystemd::listen();

    systemd::ready();
    let m = systemd_end
        .next(Duration::from_secs(5))
        .await
        .expect("READY");
    assert!(has_line(&m, "READY=1"), "{m:?}");

    systemd::status("3 machines, 1 offline\nsecond line");
    let m = systemd_end
        .next(Duration::from_secs(5))
        .await
        .expect("STATUS");
    assert!(
        has_line(&m, "STATUS=3 machines, 1 offline second line"),
        "{m:?}"
    );

    systemd::reloading();
    let m = systemd_end
        .next(Duration::from_secs(5))
        .await
        .expect("RELOADING");
    assert!(has_line(&m, "RELOADING=1"), "{m:?}");
    assert!(m.contains("MONOTONIC_USEC="), "{m:?}");

    systemd::stopping();
    let m = systemd_end
        .next(Duration::from_secs(5))
        .await
        .expect("STOPPING");
    assert!(has_line(&m, "STOPPING=1"), "{m:?}");
}

#[tokio::test]
async fn watchdog_is_petted_only_while_every_heartbeat_beats() {
    let _env = ENV.lock().await;
    let systemd_end = FakeSystemd::listen();
    // What systemd sets with WatchdogSec=: 300 ms here.
    std::env::set_var("WATCHDOG_USEC", "300000");
    std::env::set_var("WATCHDOG_PID", std::process::id().to_string());
    assert_eq!(
        systemd::watchdog_interval(),
        Some(Duration::from_millis(300))
    );

    let liveness = Liveness::new();
    let shutdown = CancellationToken::new();
    let bus = liveness.register("bus cell-a");
    let uplink = liveness.register("uplink");

    // Both loops beat; the uplink stops when `uplink_stops` is cancelled.
    let uplink_stops = CancellationToken::new();
    let beaters = {
        let shutdown = shutdown.clone();
        let uplink_stops = uplink_stops.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                }
                bus.beat();
                if !uplink_stops.is_cancelled() {
                    uplink.beat();
                }
            }
        })
    };
    let watchdog = tokio::spawn(systemd::run_watchdog(liveness.clone(), shutdown.clone()));

    let alive = systemd_end.collect(Duration::from_millis(1200)).await;
    let pets = alive.iter().filter(|m| has_line(m, "WATCHDOG=1")).count();
    assert!(pets >= 2, "pets while everything beats: {alive:?}");

    uplink_stops.cancel();
    // Pets already due may still arrive for up to one interval; then they stop.
    let _ = systemd_end.collect(Duration::from_millis(600)).await;
    let stuck = systemd_end.collect(Duration::from_millis(1200)).await;
    assert!(
        !stuck.iter().any(|m| has_line(m, "WATCHDOG=1")),
        "no pet while the uplink is silent: {stuck:?}"
    );

    shutdown.cancel();
    watchdog.await.expect("watchdog task");
    beaters.await.expect("beaters task");
    std::env::remove_var("WATCHDOG_USEC");
    std::env::remove_var("WATCHDOG_PID");
}

#[tokio::test]
async fn the_silent_loop_is_named_in_the_status() {
    let _env = ENV.lock().await;
    let systemd_end = FakeSystemd::listen();
    let liveness = Liveness::new();
    let _stuck = liveness.register("bus cell-b");
    let shutdown = CancellationToken::new();
    let watchdog = tokio::spawn(systemd::run_watchdog_every(
        liveness,
        Duration::from_millis(100),
        shutdown.clone(),
    ));
    let seen = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Some(m) = systemd_end.next(Duration::from_secs(10)).await {
                if has_line(&m, "STATUS=stuck: bus cell-b") {
                    return m;
                }
            }
        }
    })
    .await;
    assert!(seen.is_ok(), "the status names the stuck loop");
    shutdown.cancel();
    watchdog.await.expect("watchdog task");
}

/// A gateway whose every peer is down: a Modbus device, an MQTT broker and
/// the central broker, all on ports that were free a moment ago.
fn config_with_everything_down(data_dir: &std::path::Path) -> linegate::config::Config {
    let port = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port()
    };
    let text = format!(
        r#"
[gateway]
id = "gw-beat"
site = "plant1"
data_dir = {data_dir:?}

[uplink]
url = "mqtt://127.0.0.1:{uplink}"
backoff_min_ms = 2000
backoff_max_ms = 2000

[[bus]]
id = "cell-a"
transport = "tcp"
address = "127.0.0.1:{modbus}"
timeout_ms = 200
backoff_min_ms = 2000
backoff_max_ms = 2000

[[bus]]
id = "plc"
transport = "mqtt"
address = "mqtt://127.0.0.1:{mqtt}"
stale_ms = 60000
backoff_min_ms = 2000
backoff_max_ms = 2000

[[machine]]
id = "press07"
bus = "cell-a"
unit = 1
poll_ms = 5000

[[machine.signal]]
name = "count"
type = "u16"
area = "holding"
address = 0

[[machine]]
id = "lathe03"
bus = "plc"

[[machine.signal]]
name = "count"
type = "u32"
topic = "line2/lathe03/count"
"#,
        data_dir = data_dir.to_string_lossy(),
        uplink = port(),
        modbus = port(),
        mqtt = port(),
    );
    linegate::config::Config::from_toml(&text, std::path::Path::new("beat-test.toml"))
        .expect("test config is valid")
}

/// Loops that only wait (a dead device in backoff, a silent MQTT broker, an
/// uplink between connection attempts) still beat on their own timers, and
/// retire their heartbeats when they stop on purpose.
#[tokio::test]
async fn idle_loops_keep_beating_and_retire_when_they_stop() {
    use linegate::source::modbus::{run_bus, BusStats};
    use linegate::source::mqtt::run_mqtt_bus;
    use linegate::uplink::{run_uplink, GatewayInfo, UplinkStats};
    use std::sync::Arc;
    use tokio::sync::{mpsc, Notify};

    let dir = tempfile::tempdir().expect("tempdir");
    let config = config_with_everything_down(dir.path());
    // Beats every 100 ms; each loop waits 2 s or more between attempts.
    let liveness = Liveness::for_watchdog(Duration::from_millis(400));
    let shutdown = CancellationToken::new();
    let (samples, mut sample_rx) = mpsc::channel(64);
    tokio::spawn(async move { while sample_rx.recv().await.is_some() {} });
    let (_writes, write_rx) = mpsc::channel(1);
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(run_bus(
        config.bus[0].clone(),
        config.machine.clone(),
        samples.clone(),
        write_rx,
        Arc::new(BusStats::new("cell-a")),
        liveness.register("modbus bus cell-a"),
        shutdown.clone(),
    ));
    tasks.spawn(run_mqtt_bus(
        config.bus[1].clone(),
        config.machine.clone(),
        samples,
        liveness.register("mqtt bus plc"),
        shutdown.clone(),
    ));
    let store = linegate::store::Store::open(dir.path()).expect("store");
    let (orders, _order_rx) = mpsc::channel(1);
    let uplink = liveness.register("uplink");
    let gateway = GatewayInfo {
        id: "gw-beat".into(),
        prefix: "linegate/v1/plant1/gw-beat".into(),
        version: "test".into(),
        started_at: chrono::Utc::now(),
        machines: vec!["press07".into(), "lathe03".into()],
    };
    let uplink_config = config.uplink.clone().expect("uplink config");
    let uplink_shutdown = shutdown.clone();
    tasks.spawn(async move {
        let result = run_uplink(
            uplink_config,
            gateway,
            store,
            Arc::new(Notify::new()),
            Default::default(),
            Default::default(),
            orders,
            Arc::new(UplinkStats::default()),
            uplink,
            uplink_shutdown,
        )
        .await;
        assert!(result.is_ok(), "uplink ended with {result:?}");
    });

    // Over several backoff waits, no loop goes a whole second without a beat.
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let silent = liveness.silent(tokio::time::Instant::now(), Duration::from_secs(1));
        assert!(silent.is_empty(), "silent while waiting: {silent:?}");
    }
    let mut registered = liveness.registered();
    registered.sort();
    assert_eq!(
        registered,
        vec!["modbus bus cell-a", "mqtt bus plc", "uplink"]
    );

    shutdown.cancel();
    while let Some(r) = tasks.join_next().await {
        r.expect("task ended without panic");
    }
    assert!(
        liveness.registered().is_empty(),
        "heartbeats left after a clean stop: {:?}",
        liveness.registered()
    );
}
