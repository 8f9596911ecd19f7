//! Modbus TCP acquisition against in-process tokio-modbus servers: decoding
//! end to end, coalescing, dead and slow devices, devices that come back,
//! exception and malformed replies, writes with read-back, `read --once`.

// A unit is set up like a register map: start blank, then poke values in.
#![allow(clippy::field_reassign_with_default)]

mod modbus_device;

use std::time::Duration;

use linegate::source::modbus::{
    plan_reads, read_once, readouts_to_json, RegisterWrite, WriteData, WriteError, WriteRequest,
};
use linegate::source::{SampleContent, SignalError, Value};
use modbus_device::*;
use tokio::sync::oneshot;
use tokio_modbus::ExceptionCode;

#[tokio::test]
async fn every_type_and_order_is_decoded_right_end_to_end() {
    let devices = Devices::new();
    devices.add(1, typed_unit());
    let addr = serve_tcp(devices.clone()).await;
    let cfg = config(&format!(
        "{}{}{}",
        gateway(),
        tcp_bus("cell-a", &addr.to_string(), ""),
        machine("press07", "cell-a", 1, 1000, TYPED_SIGNALS)
    ));
    let readouts = read_once(&cfg, None).await.expect("machines exist");
    let press = &readouts["press07"];
    assert_eq!(press.error, None);
    assert_eq!(values(&press.signals), expected_typed_values());
}

#[tokio::test]
async fn coalescing_makes_the_expected_number_of_requests() {
    let devices = Devices::new();
    devices.add(1, typed_unit());
    devices.add(2, Unit::default());
    let addr = serve_tcp(devices.clone()).await;
    // 30 consecutive registers at most 10 per request, plus one far away: 4 requests.
    let mut many = String::new();
    for i in 0..30 {
        many.push_str(&format!(
            "[[machine.signal]]\nname = \"r{i}\"\narea = \"holding\"\naddress = {i}\n"
        ));
    }
    many.push_str("[[machine.signal]]\nname = \"far\"\narea = \"holding\"\naddress = 500\n");
    let cfg = config(&format!(
        "{}{}{}{}{}",
        gateway(),
        tcp_bus("cell-a", &addr.to_string(), ""),
        tcp_bus(
            "cell-b",
            &addr.to_string(),
            "max_registers_per_request = 10\nmax_gap = 0"
        ),
        machine("press07", "cell-a", 1, 1000, TYPED_SIGNALS),
        machine("mill02", "cell-b", 2, 1000, &many),
    ));
    let readouts = read_once(&cfg, None).await.expect("machines exist");
    assert!(!readouts["press07"].failed());
    assert!(!readouts["mill02"].failed());
    // The typed map: one holding request over 0..=85, one input, one coil, one discrete.
    assert_eq!(devices.requests(1), 4);
    assert_eq!(devices.requests(2), 4);
    let planned = plan_reads(&cfg.machine[1], &cfg.bus[1]).len();
    assert_eq!(planned, 4);
}

#[tokio::test]
async fn dead_or_slow_device_delays_its_bus_neighbours_by_at_most_one_timeout_per_retry() {
    let devices = Devices::new();
    let mut live = Unit::default();
    live.holding[0] = 1111;
    live.coils[0] = true;
    devices.add(1, live);
    let mut slow = Unit::default();
    slow.holding[0] = 2222; // a stale reply would show up as this value on unit 1
    slow.behaviour = Behaviour::Slow(Duration::from_millis(600));
    devices.add(2, slow);
    // unit 3 is not there at all: nothing ever answers it.
    let addr = serve_tcp(devices.clone()).await;
    let cfg = config(&format!(
        "{}{}{}{}{}",
        gateway(),
        tcp_bus(
            "cell-a",
            &addr.to_string(),
            "timeout_ms = 200\nbackoff_min_ms = 300\nbackoff_max_ms = 600"
        ),
        machine("live", "cell-a", 1, 20, two_area_signals()),
        machine("slow", "cell-a", 2, 20, two_area_signals()),
        machine("absent", "cell-a", 3, 20, two_area_signals()),
    ));
    let mut run = start(&cfg);
    let mut seen = Vec::new();
    let mut failed = 0;
    while failed < 6 {
        let s = run.next().await;
        if matches!(s.content, SampleContent::Unreachable { .. }) {
            failed += 1;
        }
        seen.push(s);
    }
    let stats = run.stats["cell-a"].clone();
    seen.extend(run.stop().await);

    let unreachable = |m: &str| {
        seen.iter()
            .filter(|s| s.machine == m && matches!(s.content, SampleContent::Unreachable { .. }))
            .count()
    };
    // Each failed poll cost exactly one timeout, though each machine reads two areas.
    let failed_polls = unreachable("slow") + unreachable("absent");
    assert_eq!(stats.snapshot().timeouts as usize, failed_polls);
    assert_eq!(devices.requests(2), unreachable("slow"));
    // The neighbour was never offline and never got a stale reply.
    assert_eq!(unreachable("live"), 0);
    for s in seen.iter().filter(|s| s.machine == "live") {
        let SampleContent::Signals(r) = &s.content else {
            unreachable!()
        };
        assert_eq!(r["count"], Ok(Value::Int(1111)));
        assert_eq!(r["running"], Ok(Value::Bool(true)));
    }
    // Between two retries of the dead devices the neighbour was read: backoff
    // keeps them from taking turns ahead of it.
    let order: Vec<bool> = seen
        .iter()
        .map(|s| matches!(s.content, SampleContent::Unreachable { .. }))
        .collect();
    let live_reads = seen.iter().filter(|s| s.machine == "live").count();
    assert!(
        live_reads >= failed_polls,
        "live read {live_reads} times during {failed_polls} failed polls: {order:?}"
    );
    assert!(stats.snapshot().reconnects >= 1);
}

#[tokio::test]
async fn a_dead_device_does_not_stall_machines_on_other_buses() {
    let stuck = Devices::new();
    let mut silent = Unit::default();
    silent.behaviour = Behaviour::Silent;
    stuck.add(1, silent);
    let stuck_addr = serve_tcp(stuck.clone()).await;
    let fine = Devices::new();
    let mut live = Unit::default();
    live.holding[0] = 42;
    fine.add(1, live);
    let fine_addr = serve_tcp(fine.clone()).await;
    let cfg = config(&format!(
        "{}{}{}{}{}",
        gateway(),
        tcp_bus("cell-a", &stuck_addr.to_string(), "timeout_ms = 1500"),
        tcp_bus("cell-b", &fine_addr.to_string(), ""),
        machine("dead", "cell-a", 1, 20, ONE_U16),
        machine("live", "cell-b", 1, 20, ONE_U16),
    ));
    let mut run = start(&cfg);
    // Wait until the dead device has its request in flight, then read the live one
    // several times while that request is still waiting for its timeout.
    while stuck.requests(1) == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for _ in 0..5 {
        let s = run.next().await;
        assert_eq!(
            s.machine, "live",
            "the dead device answered before the live one"
        );
        let SampleContent::Signals(r) = &s.content else {
            panic!("live machine unreachable: {s:?}")
        };
        assert_eq!(r["count"], Ok(Value::Int(42)));
    }
    assert_eq!(
        run.stats["cell-a"].snapshot().timeouts,
        0,
        "the dead request is still in flight"
    );
    run.stop().await;
}

#[tokio::test]
async fn a_device_that_comes_back_is_read_again() {
    let addr = unused_address();
    let cfg = config(&format!(
        "{}{}{}",
        gateway(),
        tcp_bus(
            "cell-a",
            &addr.to_string(),
            "timeout_ms = 300\nbackoff_min_ms = 50\nbackoff_max_ms = 100"
        ),
        machine("press07", "cell-a", 1, 20, ONE_U16),
    ));
    let mut run = start(&cfg);
    let s = run.next_of("press07").await;
    let SampleContent::Unreachable { reason } = &s.content else {
        panic!("nothing listens yet, but got {s:?}")
    };
    assert!(reason.contains(&addr.to_string()), "{reason}");

    let devices = Devices::new();
    let mut unit = Unit::default();
    unit.holding[0] = 77;
    devices.add(1, unit);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .expect("rebind port");
    serve_tcp_on(listener, devices);
    loop {
        let s = run.next_of("press07").await;
        if let SampleContent::Signals(r) = &s.content {
            assert_eq!(r["count"], Ok(Value::Int(77)));
            break;
        }
    }
    let health = run.stats["cell-a"].snapshot().machines["press07"].clone();
    assert!(health.last_ok.is_some() && health.last_error.is_some());
    assert_eq!(health.failures, 0);
    run.stop().await;
}

#[tokio::test]
async fn exception_replies_are_reported_per_signal_by_name() {
    let devices = Devices::new();
    let mut unit = Unit::default();
    unit.holding_exception = Some((0, 10, ExceptionCode::IllegalDataAddress));
    unit.coils[0] = true;
    devices.add(1, unit);
    let addr = serve_tcp(devices).await;
    let cfg = config(&format!(
        "{}{}{}",
        gateway(),
        tcp_bus("cell-a", &addr.to_string(), ""),
        machine("press07", "cell-a", 1, 20, two_area_signals()),
    ));
    let mut run = start(&cfg);
    for _ in 0..3 {
        let s = run.next_of("press07").await;
        let SampleContent::Signals(r) = &s.content else {
            panic!("an exception reply means the machine is reachable: {s:?}")
        };
        assert_eq!(r["running"], Ok(Value::Bool(true)));
        match &r["count"] {
            Err(
                e @ SignalError::Exception {
                    code,
                    area,
                    address,
                },
            ) => {
                assert_eq!(
                    (*code, *area, *address),
                    (2, linegate::config::Area::Holding, 0)
                );
                assert_eq!(
                    e.to_string(),
                    "modbus exception 0x02 (IllegalDataAddress) reading holding 0"
                );
            }
            other => panic!("expected an exception, got {other:?}"),
        }
    }
    let stats = run.stats["cell-a"].clone();
    run.stop().await;
    assert_eq!(
        stats.snapshot().reconnects,
        0,
        "an exception keeps the connection"
    );
}

#[tokio::test]
async fn a_reply_of_the_wrong_length_is_an_error_not_a_panic() {
    let devices = Devices::new();
    let mut unit = Unit::default();
    unit.behaviour = Behaviour::WrongLength;
    unit.coils[0] = true;
    devices.add(1, unit);
    let addr = serve_tcp(devices).await;
    let cfg = config(&format!(
        "{}{}{}",
        gateway(),
        tcp_bus("cell-a", &addr.to_string(), ""),
        machine("press07", "cell-a", 1, 20, two_area_signals()),
    ));
    let mut run = start(&cfg);
    for _ in 0..2 {
        let s = run.next_of("press07").await;
        let SampleContent::Signals(r) = &s.content else {
            panic!("unexpected {s:?}")
        };
        match &r["count"] {
            Err(SignalError::BadValue(why)) => {
                assert!(why.contains("held 0 registers, expected 1"), "{why}")
            }
            other => panic!("expected a bad value, got {other:?}"),
        }
        assert_eq!(r["running"], Ok(Value::Bool(true)));
    }
    let stats = run.stats["cell-a"].clone();
    run.stop().await;
    let snap = stats.snapshot();
    assert!(snap.errors >= 2);
    assert!(
        snap.reconnects >= 1,
        "the connection is rebuilt after a malformed reply"
    );
}

async fn write(run: &Running, machine: &str, writes: Vec<RegisterWrite>) -> Result<(), WriteError> {
    let (reply, answer) = oneshot::channel();
    run.writes["cell-a"]
        .send(Box::new(WriteRequest {
            machine: machine.into(),
            writes,
            reply,
        }))
        .await
        .expect("bus task takes writes");
    tokio::time::timeout(Duration::from_secs(20), answer)
        .await
        .expect("write answered")
        .expect("reply sent")
}

#[tokio::test]
async fn writes_are_made_and_read_back() {
    let devices = Devices::new();
    let mut unit = Unit::default();
    unit.read_only = vec![300];
    devices.add(1, unit);
    let addr = serve_tcp(devices.clone()).await;
    let cfg = config(&format!(
        "{}{}{}",
        gateway(),
        tcp_bus("cell-a", &addr.to_string(), ""),
        machine("press07", "cell-a", 1, 50, ONE_U16),
    ));
    let mut run = start(&cfg);
    run.next_of("press07").await;

    let ok = write(
        &run,
        "press07",
        vec![
            RegisterWrite {
                area: linegate::config::Area::Holding,
                address: 200,
                data: WriteData::Registers(vec![0x0001, 0xE240]),
            },
            RegisterWrite {
                area: linegate::config::Area::Coil,
                address: 10,
                data: WriteData::Coil(true),
            },
        ],
    )
    .await;
    assert_eq!(ok, Ok(()));
    devices.with(1, |u| {
        assert_eq!(&u.holding[200..202], &[0x0001, 0xE240]);
        assert!(u.coils[10]);
    });

    let mismatch = write(
        &run,
        "press07",
        vec![RegisterWrite {
            area: linegate::config::Area::Holding,
            address: 300,
            data: WriteData::Registers(vec![5]),
        }],
    )
    .await;
    assert_eq!(
        mismatch,
        Err(WriteError::Mismatch {
            machine: "press07".into(),
            area: linegate::config::Area::Holding,
            address: 300,
            wanted: vec![5],
            got: vec![0],
        })
    );

    let unknown = write(&run, "nobody", vec![]).await;
    assert_eq!(unknown, Err(WriteError::UnknownMachine("nobody".into())));

    let wrong_area = write(
        &run,
        "press07",
        vec![RegisterWrite {
            area: linegate::config::Area::Input,
            address: 1,
            data: WriteData::Registers(vec![1]),
        }],
    )
    .await;
    assert!(
        matches!(&wrong_area, Err(WriteError::Failed { address: 1, .. })),
        "{wrong_area:?}"
    );
    // Polling carries on after the writes.
    assert!(matches!(
        run.next_of("press07").await.content,
        SampleContent::Signals(_)
    ));
    run.stop().await;
}

#[tokio::test]
async fn read_once_returns_the_json_shape_and_names_what_failed() {
    let devices = Devices::new();
    let mut unit = Unit::default();
    unit.holding[0] = 12;
    unit.holding[1] = 0x7FC0; // f32 NaN
    devices.add(1, unit);
    let addr = serve_tcp(devices).await;
    let nothing = unused_address();
    let nan =
        "[[machine.signal]]\nname = \"temp\"\narea = \"holding\"\naddress = 1\ntype = \"f32\"\n";
    let cfg = config(&format!(
        "{}{}{}{}{}",
        gateway(),
        tcp_bus("cell-a", &addr.to_string(), ""),
        tcp_bus("cell-b", &nothing.to_string(), "timeout_ms = 300"),
        machine("press07", "cell-a", 1, 1000, &format!("{ONE_U16}{nan}")),
        machine("lathe03", "cell-b", 1, 1000, ONE_U16),
    ));
    let readouts = read_once(&cfg, None).await.expect("machines exist");
    let json = readouts_to_json(&readouts);
    assert_eq!(json["press07"]["count"], serde_json::json!(12));
    let temp_error = json["press07"]["temp"]["error"]
        .as_str()
        .expect("error text");
    assert!(temp_error.contains("bad value"), "{temp_error}");
    let lathe_error = json["lathe03"]["count"]["error"]
        .as_str()
        .expect("error text");
    assert!(lathe_error.contains(&nothing.to_string()), "{lathe_error}");
    assert!(readouts["press07"].failed() && readouts["lathe03"].failed());
    assert!(readouts["lathe03"].error.is_some());

    let only = read_once(&cfg, Some("press07")).await.expect("exists");
    assert_eq!(only.keys().collect::<Vec<_>>(), vec!["press07"]);
    assert!(read_once(&cfg, Some("nope")).await.is_err());
}
