//! Modbus RTU over a serial line that misbehaves the way RS-485 lines do: a
//! responder of the test's own on the master side of a pty pair (raw bytes,
//! not tokio-modbus), which answers late, answers for the previous request,
//! damages CRCs, puts noise on the line and answers as another unit. It logs
//! what it really served for each request; every value the bus yields is
//! checked against that log, for that very request.

mod modbus_device;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use linegate::config::Area;
use linegate::source::modbus::{
    BusStatsSnapshot, RegisterWrite, WriteData, WriteError, WriteRequest,
};
use linegate::source::{Sample, SampleContent, SignalError, Value};
use modbus_device::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_serial::{SerialPort, SerialStream};

/// What the responder does with one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// The right reply, at once.
    Clean,
    /// Noise that looks like a frame start (`55 01 03 AA 00 FF 13`), then
    /// the right reply.
    NoiseFirst,
    /// The right reply, then noise on the line before the next request.
    NoiseAfter,
    /// A valid reply from unit 2 first, then the right reply.
    Unit2First,
    /// The right reply, this long after the request but within the timeout.
    Slow(Duration),
    /// The right reply, but this long after the request (past the timeout).
    Late(Duration),
    /// The right reply with its CRC damaged.
    BadCrc,
    /// The right reply, but from unit 2.
    AsUnit2,
    /// The reply it gave to the previous request (sent only where that one
    /// had another function: a reply of the same shape for another request
    /// is something no master can tell from the right one).
    Previous,
    /// Exception 02 (illegal data address).
    Exception,
    /// For a write: writes, and echoes, one register further on (a device
    /// that misread the request).
    OtherAddress,
}

impl Fault {
    /// Whether the right reply (or exception) reaches the master in time.
    fn answers(self) -> bool {
        matches!(
            self,
            Fault::Clean
                | Fault::Slow(_)
                | Fault::NoiseFirst
                | Fault::NoiseAfter
                | Fault::Unit2First
                | Fault::Exception
        )
    }
}

const NOISE: [u8; 7] = [0x55, 0x01, 0x03, 0xAA, 0x00, 0xFF, 0x13];

/// One request the responder received, and what it did.
#[derive(Debug, Clone)]
struct Served {
    at: Instant,
    unit: u8,
    function: u8,
    address: u16,
    count: u16,
    fault: Fault,
    /// The registers of the right reply to this request (which went out as
    /// such only if `fault.answers()`).
    words: Vec<u16>,
}

type Log = Arc<Mutex<Vec<Served>>>;

fn crc16(data: &[u8]) -> u16 {
    let mut crc: u16 = 0xFFFF;
    for &b in data {
        crc ^= u16::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xA001
            } else {
                crc >> 1
            };
        }
    }
    crc
}

fn framed(mut bytes: Vec<u8>) -> Vec<u8> {
    let crc = crc16(&bytes);
    bytes.extend(crc.to_le_bytes());
    bytes
}

/// The registers `unit` (1 or 2) holds when it gets its request number
/// `seq`: every request sees other values, so a value read for one request
/// (or unit) cannot pass for the value of another. Holding 0..2 is a u32
/// part counter, input 0 an alarm code.
fn registers(unit: u8, function: u8, address: u16, count: u16, seq: u32) -> Vec<u16> {
    let parts = u32::from(unit) * 1_000_000 + seq;
    (0..count)
        .map(|i| match (function, address + i) {
            (0x03, 0) => (parts >> 16) as u16,
            (0x03, 1) => (parts & 0xFFFF) as u16,
            (0x04, 0) => ((u32::from(unit) - 1) * 30_000 + seq % 29_000 + 1) as u16,
            _ => 0,
        })
        .collect()
}

/// What the responder keeps per unit it answers for.
struct Script {
    faults: Vec<Fault>,
    /// Requests this unit got so far.
    seq: u32,
    /// The function of its previous request and the right reply to it.
    previous: Option<(u8, Vec<u8>)>,
}

/// Serve each unit of `scripts` on `port` (the pty master) with
/// `faults[seq % len]` as the fault for its request number `seq`, logging
/// each request in `log`; other units never answer. Writes (function 10,
/// unit 1) take their faults from `write_faults` in turn (then `Clean`);
/// what they write is kept and read back by later reads.
async fn respond(
    mut port: SerialStream,
    scripts: Vec<(u8, Vec<Fault>)>,
    write_faults: Vec<Fault>,
    log: Log,
) {
    let mut units: HashMap<u8, Script> = scripts
        .into_iter()
        .map(|(unit, faults)| {
            let script = Script {
                faults,
                seq: 0,
                previous: None,
            };
            (unit, script)
        })
        .collect();
    let mut write_faults = write_faults.into_iter();
    let mut written: HashMap<u16, u16> = HashMap::new();
    let mut heard: Vec<u8> = Vec::new();
    let mut queue: Vec<(Instant, Vec<u8>)> = Vec::new();
    let mut chunk = [0u8; 256];
    loop {
        queue.sort_by_key(|(at, _)| *at);
        let next_send = queue.first().map(|(at, _)| *at);
        tokio::select! {
            read = port.read(&mut chunk) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => heard.extend_from_slice(&chunk[..n]),
            },
            () = async {
                match next_send {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            } => {
                let (_, bytes) = queue.remove(0);
                if port.write_all(&bytes).await.is_err() {
                    return;
                }
                continue;
            }
        }
        // linegate sends requests whole, one at a time: reads are 8 bytes,
        // a write of registers 9 and its data.
        while heard.len() >= 8 {
            let len = match heard[1] {
                0x10 => 9 + usize::from(heard[6]),
                _ => 8,
            };
            if heard.len() < len {
                break;
            }
            let frame: Vec<u8> = heard.drain(..len).collect();
            if crc16(&frame[..len - 2]).to_le_bytes() != [frame[len - 2], frame[len - 1]] {
                continue;
            }
            let unit = frame[0];
            let Some(script) = units.get_mut(&unit) else {
                continue;
            };
            let (function, address, count) = (
                frame[1],
                u16::from_be_bytes([frame[2], frame[3]]),
                u16::from_be_bytes([frame[4], frame[5]]),
            );
            if function == 0x10 {
                let fault = write_faults.next().unwrap_or(Fault::Clean);
                let words: Vec<u16> = frame[7..len - 2]
                    .chunks_exact(2)
                    .map(|c| u16::from_be_bytes([c[0], c[1]]))
                    .collect();
                let at = if fault == Fault::OtherAddress {
                    address + 1
                } else {
                    address
                };
                for (i, w) in words.iter().enumerate() {
                    written.insert(at + i as u16, *w);
                }
                let [a0, a1] = at.to_be_bytes();
                let [n0, n1] = count.to_be_bytes();
                let mut echo = framed(vec![1, 0x10, a0, a1, n0, n1]);
                if fault == Fault::BadCrc {
                    echo[7] ^= 0x5A;
                }
                queue.push((Instant::now(), echo));
                log.lock().unwrap().push(Served {
                    at: Instant::now(),
                    unit,
                    function,
                    address,
                    count,
                    fault,
                    words,
                });
                continue;
            }
            let seq = script.seq;
            let mut fault = script.faults[seq as usize % script.faults.len()];
            if fault == Fault::Previous
                && script.previous.as_ref().is_none_or(|(f, _)| *f == function)
            {
                fault = Fault::Clean;
            }
            let mut words = registers(unit, function, address, count, seq);
            if function == 0x03 {
                for (i, w) in words.iter_mut().enumerate() {
                    if let Some(v) = written.get(&(address + i as u16)) {
                        *w = *v;
                    }
                }
            }
            let mut reply = vec![unit, function, (2 * count) as u8];
            reply.extend(words.iter().flat_map(|w| w.to_be_bytes()));
            let right = framed(reply.clone());
            let now = Instant::now();
            let soon = now + Duration::from_millis(2);
            let mut as_unit2 = reply.clone();
            as_unit2[0] = 2;
            match fault {
                Fault::Clean => queue.push((now, right.clone())),
                Fault::NoiseFirst => queue.push((now, [&NOISE[..], &right].concat())),
                Fault::NoiseAfter => {
                    queue.push((now, right.clone()));
                    queue.push((soon, NOISE.to_vec()));
                }
                Fault::Unit2First => queue.push((now, [framed(as_unit2), right.clone()].concat())),
                Fault::Slow(after) | Fault::Late(after) => queue.push((now + after, right.clone())),
                Fault::BadCrc => {
                    let mut bad = right.clone();
                    let last = bad.len() - 1;
                    bad[last] ^= 0x5A;
                    queue.push((now, bad));
                }
                Fault::AsUnit2 => queue.push((now, framed(as_unit2))),
                Fault::Previous => {
                    if let Some((_, bytes)) = &script.previous {
                        queue.push((now, bytes.clone()));
                    }
                }
                Fault::Exception => queue.push((now, framed(vec![unit, function | 0x80, 0x02]))),
                Fault::OtherAddress => queue.push((now, right.clone())),
            }
            log.lock().unwrap().push(Served {
                at: now,
                unit,
                function,
                address,
                count,
                fault,
                words,
            });
            script.previous = Some((function, right));
            script.seq += 1;
        }
    }
}

/// A pty pair with the responder on its master side; returns the slave's
/// path for the bus, the log, and the slave stream to keep the line open.
fn hostile_line(
    scripts: Vec<(u8, Vec<Fault>)>,
    write_faults: Vec<Fault>,
) -> (String, Log, SerialStream) {
    let (master, slave) = SerialStream::pair().expect("open a pty pair");
    let path = slave.name().expect("the pty slave has a path");
    let log = Log::default();
    tokio::spawn(respond(master, scripts, write_faults, log.clone()));
    (path, log, slave)
}

const SIGNALS: &str =
    "[[machine.signal]]\nname = \"parts\"\narea = \"holding\"\naddress = 0\ntype = \"u32\"\n\
     [[machine.signal]]\nname = \"alarm\"\narea = \"input\"\naddress = 0\n";

/// A bus on `path` with one machine per unit of `units` (see [`machine_at`]).
fn rtu_config(path: &str, units: &[u8]) -> linegate::config::Config {
    rtu_config_polled(path, units, 50)
}

fn rtu_config_polled(path: &str, units: &[u8], poll_ms: u64) -> linegate::config::Config {
    let machines: String = units
        .iter()
        .map(|&u| machine(machine_at(u), "rs485", u, poll_ms, SIGNALS))
        .collect();
    config(&format!(
        "{}[[bus]]\nid = \"rs485\"\ntransport = \"rtu\"\ndevice = \"{path}\"\nbaud = 19200\n\
         timeout_ms = 300\nbackoff_min_ms = 20\nbackoff_max_ms = 40\n{machines}",
        gateway(),
    ))
}

/// The u32 part count in `words`, the holding registers a reply carried.
fn parts_of(words: &[u16]) -> i64 {
    (i64::from(words[0]) << 16) | i64::from(words[1])
}

/// What an Unreachable sample must say for a request that got `fault`.
fn cause_of(fault: Fault, served: &Served, path: &str) -> String {
    match fault {
        Fault::Late(_) => format!("no reply from {path} within 300 ms"),
        Fault::BadCrc => format!("CRC error in reply from unit {}", served.unit),
        Fault::AsUnit2 => format!("reply from unit 2 to a request for unit {}", served.unit),
        Fault::Previous => {
            let other = if served.function == 3 { 4 } else { 3 };
            format!(
                "reply from unit {} with function {other:02x} to a request with function {:02x}",
                served.unit, served.function
            )
        }
        answered => panic!("{answered:?} answers; it has no cause"),
    }
}

/// Check every sample of the machine at `unit` against what the responder
/// served in its poll: the requests of that unit it logged between the
/// machine's previous sample and this one (the bus polls one machine at a
/// time). Returns how many polls read values and how many failed.
fn check_against_log(samples: &[Sample], unit: u8, log: &[Served], path: &str) -> (usize, usize) {
    let machine = machine_at(unit);
    let (mut good, mut failed) = (0, 0);
    let mut from = None::<Instant>;
    for s in samples.iter().filter(|s| s.machine == machine) {
        let poll: Vec<&Served> = log
            .iter()
            .filter(|r| r.unit == unit && from.is_none_or(|f| r.at > f) && r.at <= s.mono)
            .collect();
        from = Some(s.mono);
        match &s.content {
            SampleContent::Signals(r) => {
                good += 1;
                assert_eq!(poll.len(), 2, "a poll reads two requests: {poll:?}");
                for served in &poll {
                    assert!(served.fault.answers(), "{served:?} gave a value: {s:?}");
                    let (name, want) = match served.function {
                        3 => ("parts", parts_of(&served.words)),
                        _ => ("alarm", i64::from(served.words[0])),
                    };
                    assert_eq!(
                        (served.address, served.count),
                        (0, if name == "parts" { 2 } else { 1 })
                    );
                    if served.fault == Fault::Exception {
                        assert!(
                            matches!(&r[name], Err(SignalError::Exception { code: 2, .. })),
                            "{name}: {:?}",
                            r[name]
                        );
                    } else {
                        assert_eq!(r[name], Ok(Value::Int(want)), "{name} for {served:?}");
                    }
                }
            }
            SampleContent::Unreachable { reason } => {
                failed += 1;
                let (last, before) = poll.split_last().expect("a failed poll sent a request");
                assert!(before.iter().all(|r| r.fault.answers()), "{poll:?}");
                assert!(
                    !last.fault.answers(),
                    "a device that answered went offline: {last:?}: {reason}"
                );
                let cause = cause_of(last.fault, last, path);
                assert!(reason.contains(&cause), "{reason:?} does not say {cause:?}");
            }
        }
    }
    (good, failed)
}

/// The machine the tests put at `unit`.
fn machine_at(unit: u8) -> &'static str {
    match unit {
        1 => "press07",
        _ => "mill02",
    }
}

/// Samples until the responder has logged `requests` requests, then the
/// rest once the bus has stopped.
async fn collect(mut run: Running, log: &Log, requests: usize) -> (Vec<Sample>, BusStatsSnapshot) {
    let mut samples = Vec::new();
    while log.lock().unwrap().len() < requests {
        samples.push(run.next().await);
    }
    let stats = run.stats["rs485"].clone();
    samples.extend(run.stop().await);
    (samples, stats.snapshot())
}

#[tokio::test]
async fn a_misbehaving_serial_device_never_gets_a_wrong_value_reported_as_good() {
    let script = vec![
        Fault::Clean,
        Fault::Clean,
        Fault::NoiseFirst,
        // The retry after the timeout is answered slowly: the late reply
        // comes while it waits, and has the same shape as its reply.
        Fault::Late(Duration::from_millis(380)),
        Fault::Slow(Duration::from_millis(150)),
        Fault::Clean,
        Fault::NoiseAfter,
        Fault::BadCrc,
        Fault::Clean,
        Fault::Unit2First,
        Fault::AsUnit2,
        Fault::Clean,
        Fault::Previous,
        Fault::Clean,
        Fault::Exception,
        Fault::Late(Duration::from_millis(380)),
        Fault::Slow(Duration::from_millis(150)),
        Fault::Clean,
    ];
    let (path, log, _line) = hostile_line(vec![(1, script)], vec![]);
    let run = start(&rtu_config(&path, &[1]));
    let (samples, snap) = collect(run, &log, 120).await;
    let log = log.lock().unwrap().clone();
    let (good, failed) = check_against_log(&samples, 1, &log, &path);
    for fault in [
        Fault::Late(Duration::from_millis(380)),
        Fault::BadCrc,
        Fault::AsUnit2,
        Fault::Previous,
        Fault::NoiseFirst,
        Fault::NoiseAfter,
        Fault::Unit2First,
        Fault::Exception,
    ] {
        assert!(
            log.iter().any(|r| r.fault == fault),
            "the responder never got to serve {fault:?}"
        );
    }
    assert!(good > 0 && failed > 0, "{good} good, {failed} failed polls");
    assert!(snap.discarded_bytes > 0, "noise is counted: {snap:?}");
    assert_eq!(
        snap.reconnects, 0,
        "the line is not reopened for a bad reply"
    );
}

#[tokio::test]
async fn noise_between_frames_never_takes_a_healthy_device_offline() {
    let script = vec![
        Fault::NoiseFirst,
        Fault::NoiseAfter,
        Fault::Unit2First,
        Fault::Clean,
    ];
    let (path, log, _line) = hostile_line(vec![(1, script)], vec![]);
    let (samples, _) = collect(start(&rtu_config(&path, &[1])), &log, 60).await;
    let log = log.lock().unwrap().clone();
    let (good, failed) = check_against_log(&samples, 1, &log, &path);
    assert_eq!(failed, 0);
    assert!(good >= 29, "{good} polls");
}

#[tokio::test]
async fn a_device_that_always_answers_late_is_offline_and_its_late_replies_are_never_values() {
    let script = vec![Fault::Late(Duration::from_millis(380))];
    let (path, log, _line) = hostile_line(vec![(1, script)], vec![]);
    let (samples, _) = collect(start(&rtu_config(&path, &[1])), &log, 6).await;
    let log = log.lock().unwrap().clone();
    let (good, failed) = check_against_log(&samples, 1, &log, &path);
    assert_eq!(good, 0);
    assert!(failed >= 5);
    // After the first late reply was heard, the timeouts say so.
    let last = samples.last().map(|s| &s.content);
    assert!(
        matches!(last, Some(SampleContent::Unreachable { reason }) if reason.contains("an earlier reply came") && reason.contains("is timeout_ms too short?")),
        "{last:?}"
    );
}

#[tokio::test]
async fn a_late_reply_from_one_unit_is_never_taken_for_its_neighbours_reply() {
    // Unit 2 answers every other request late, so its late replies come
    // while unit 1, with replies of the same shape, is being read.
    // (A poll reads two requests: one late, two right, so some polls pass.)
    let late = vec![
        Fault::Late(Duration::from_millis(380)),
        Fault::Clean,
        Fault::Clean,
    ];
    let slow = vec![Fault::Slow(Duration::from_millis(100))];
    let (path, log, _line) = hostile_line(vec![(1, slow), (2, late)], vec![]);
    let (samples, _) = collect(start(&rtu_config(&path, &[1, 2])), &log, 80).await;
    let log = log.lock().unwrap().clone();
    let (good1, failed1) = check_against_log(&samples, 1, &log, &path);
    let (good2, failed2) = check_against_log(&samples, 2, &log, &path);
    assert_eq!(failed1, 0, "unit 1 always answered");
    assert!(
        good1 > 0 && good2 > 0 && failed2 > 0,
        "unit 1: {good1} good; unit 2: {good2} good, {failed2} failed"
    );
}

#[tokio::test]
async fn a_write_is_done_only_when_its_own_echo_comes_back_and_it_reads_back() {
    let write_faults = vec![Fault::OtherAddress, Fault::BadCrc, Fault::Clean];
    let (path, log, _line) = hostile_line(vec![(1, vec![Fault::Clean])], write_faults);
    let mut run = start(&rtu_config_polled(&path, &[1], 60_000));
    run.next_of("press07").await;
    let mut results = Vec::new();
    for value in [4711, 4712, 4713] {
        let (reply, answer) = oneshot::channel();
        run.writes["rs485"]
            .send(Box::new(WriteRequest {
                machine: "press07".into(),
                writes: vec![RegisterWrite {
                    area: Area::Holding,
                    address: 0,
                    data: WriteData::Registers(vec![value]),
                }],
                reply,
            }))
            .await
            .expect("bus takes writes");
        let result = tokio::time::timeout(Duration::from_secs(20), answer)
            .await
            .expect("answered")
            .expect("reply sent");
        results.push(result);
    }
    run.stop().await;
    let reason = |r: &Result<(), WriteError>| match r {
        Err(WriteError::Failed { reason, .. }) => reason.clone(),
        other => panic!("the write did not fail: {other:?}"),
    };
    assert!(
        reason(&results[0]).contains("reply from unit 1 does not answer the request"),
        "{:?}",
        results[0]
    );
    assert!(
        reason(&results[1]).starts_with("CRC error in reply from unit 1"),
        "{:?}",
        results[1]
    );
    assert_eq!(results[2], Ok(()));
    // The device's own record: three writes, and only the last read back,
    // serving the value it was written.
    let log = log.lock().unwrap().clone();
    let writes: Vec<&Served> = log.iter().filter(|r| r.function == 0x10).collect();
    assert_eq!(
        writes.iter().map(|r| r.words.clone()).collect::<Vec<_>>(),
        vec![vec![4711], vec![4712], vec![4713]]
    );
    let last_write = writes[2].at;
    let read_backs: Vec<&Served> = log
        .iter()
        .filter(|r| r.function == 0x03 && r.count == 1 && r.at > writes[0].at)
        .collect();
    assert_eq!(read_backs.len(), 1, "{read_backs:?}");
    assert!(read_backs[0].at > last_write);
    assert_eq!(read_backs[0].words, vec![4713]);
}
