//! Modbus RTU acquisition over a real serial line: a pty pair, the
//! in-process tokio-modbus RTU server on the master side, the bus opening the
//! slave device path through tokio-serial like it would open /dev/ttyUSB0.

// A unit is set up like a register map: start blank, then poke values in.
#![allow(clippy::field_reassign_with_default)]

mod modbus_device;

use std::time::Duration;

use linegate::config::Area;
use linegate::source::modbus::{read_once, RegisterWrite, WriteData, WriteRequest};
use linegate::source::{SampleContent, SignalError, Value};
use modbus_device::*;
use tokio::sync::oneshot;
use tokio_modbus::ExceptionCode;
use tokio_serial::{SerialPort, SerialStream};

/// A serial line with `devices` on its far end. Keep the returned stream
/// alive: it holds the line's slave side open so the server never sees a hangup.
fn serial_line(devices: Devices) -> (String, SerialStream) {
    // The pair takes no lock on the slave side, so the bus can open its path
    // exclusively, as it does a real serial device.
    let (master, slave) = SerialStream::pair().expect("open a pty pair");
    let path = slave.name().expect("the pty slave has a path");
    let server = tokio_modbus::server::rtu::Server::new(master);
    tokio::spawn(server.serve_forever(DeviceService(devices)));
    (path, slave)
}

fn rtu_bus(id: &str, device: &str, extra: &str) -> String {
    format!("[[bus]]\nid = \"{id}\"\ntransport = \"rtu\"\ndevice = \"{device}\"\nbaud = 19200\nparity = \"even\"\n{extra}\n")
}

#[tokio::test]
async fn every_type_and_order_is_decoded_right_over_a_serial_line() {
    let devices = Devices::new();
    devices.add(7, typed_unit());
    let (path, _line) = serial_line(devices.clone());
    let cfg = config(&format!(
        "{}{}{}",
        gateway(),
        rtu_bus("rs485", &path, "timeout_ms = 2000"),
        machine("press07", "rs485", 7, 1000, TYPED_SIGNALS)
    ));
    let readouts = read_once(&cfg, None).await.expect("machines exist");
    let press = &readouts["press07"];
    assert_eq!(press.error, None, "{press:?}");
    assert_eq!(values(&press.signals), expected_typed_values());
    assert_eq!(devices.requests(7), 4, "one request per area");
}

#[tokio::test]
async fn a_dead_unit_on_the_line_costs_its_neighbour_at_most_one_timeout_per_retry() {
    let devices = Devices::new();
    let mut live = Unit::default();
    live.holding[0] = 1234;
    live.coils[0] = true;
    devices.add(1, live);
    // unit 2 is configured but not on the line.
    let (path, _line) = serial_line(devices.clone());
    let cfg = config(&format!(
        "{}{}{}{}",
        gateway(),
        rtu_bus(
            "rs485",
            &path,
            "timeout_ms = 200\nbackoff_min_ms = 300\nbackoff_max_ms = 600"
        ),
        machine("live", "rs485", 1, 20, two_area_signals()),
        machine("dead", "rs485", 2, 20, two_area_signals()),
    ));
    let mut run = start(&cfg);
    let mut seen = Vec::new();
    let mut failed = 0;
    while failed < 3 {
        let s = run.next().await;
        if matches!(s.content, SampleContent::Unreachable { .. }) {
            assert_eq!(s.machine, "dead");
            failed += 1;
        }
        seen.push(s);
    }
    let stats = run.stats["rs485"].clone();
    seen.extend(run.stop().await);
    let dead_failures = seen
        .iter()
        .filter(|s| matches!(s.content, SampleContent::Unreachable { .. }))
        .count();
    // Two areas per poll, but a retry ends at its first timeout.
    assert_eq!(stats.snapshot().timeouts as usize, dead_failures);
    let live_reads: Vec<_> = seen.iter().filter(|s| s.machine == "live").collect();
    assert!(live_reads.len() >= dead_failures);
    for s in live_reads {
        let SampleContent::Signals(r) = &s.content else {
            panic!("the live unit went offline: {s:?}")
        };
        assert_eq!(r["count"], Ok(Value::Int(1234)));
        assert_eq!(r["running"], Ok(Value::Bool(true)));
    }
}

#[tokio::test]
async fn exception_replies_over_a_serial_line_are_reported_by_name() {
    let devices = Devices::new();
    let mut unit = Unit::default();
    unit.holding_exception = Some((0, 0, ExceptionCode::ServerDeviceFailure));
    devices.add(3, unit);
    let (path, _line) = serial_line(devices);
    let cfg = config(&format!(
        "{}{}{}",
        gateway(),
        rtu_bus("rs485", &path, "timeout_ms = 2000"),
        machine("press07", "rs485", 3, 1000, two_area_signals()),
    ));
    let readouts = read_once(&cfg, Some("press07")).await.expect("exists");
    let press = &readouts["press07"];
    assert_eq!(press.error, None, "the device answered");
    assert_eq!(press.signals["running"], Ok(Value::Bool(false)));
    assert!(
        matches!(&press.signals["count"], Err(e @ SignalError::Exception { code: 4, .. }) if e.to_string().contains("(ServerDeviceFailure)")),
        "{:?}",
        press.signals["count"]
    );
}

#[tokio::test]
async fn writes_over_a_serial_line_are_read_back() {
    let devices = Devices::new();
    devices.add(1, Unit::default());
    let (path, _line) = serial_line(devices.clone());
    let cfg = config(&format!(
        "{}{}{}",
        gateway(),
        rtu_bus("rs485", &path, "timeout_ms = 2000"),
        machine("press07", "rs485", 1, 50, ONE_U16),
    ));
    let mut run = start(&cfg);
    run.next_of("press07").await;
    let (reply, answer) = oneshot::channel();
    run.writes["rs485"]
        .send(Box::new(WriteRequest {
            machine: "press07".into(),
            writes: vec![
                RegisterWrite {
                    area: Area::Holding,
                    address: 0,
                    data: WriteData::Registers(vec![4711]),
                },
                RegisterWrite {
                    area: Area::Coil,
                    address: 3,
                    data: WriteData::Coil(true),
                },
            ],
            reply,
        }))
        .await
        .expect("bus takes writes");
    let result = tokio::time::timeout(Duration::from_secs(20), answer)
        .await
        .expect("answered")
        .expect("reply sent");
    assert_eq!(result, Ok(()));
    devices.with(1, |u| assert!(u.holding[0] == 4711 && u.coils[3]));
    // The next poll reads the written value.
    loop {
        let s = run.next_of("press07").await;
        if let SampleContent::Signals(r) = &s.content {
            if r["count"] == Ok(Value::Int(4711)) {
                break;
            }
        }
    }
    run.stop().await;
}
