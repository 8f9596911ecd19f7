//! One bus connection and the requests made over it.
//!
//! Owns the connection of a bus (a tokio-modbus TCP context shared by the
//! unit ids behind it, or an open serial line with linegate's own RTU master,
//! [`super::rtu`]), the rule that every request runs under the bus's
//! `timeout_ms` (tokio-modbus has no timeout of its own), the rule that after
//! a timeout, an I/O or protocol error or a malformed reply a TCP connection
//! is dropped and rebuilt on the next request (a reused context can hand back
//! a stale reply; a serial line is reopened only after an I/O error, since
//! the RTU master discards stale input before every request itself), the
//! `delay_ms` pause between requests, and the reply length checks. It also
//! holds the one poll of a machine ([`poll_machine`]) and the
//! write-with-read-back ([`write_verified`]) that both the bus task and
//! `read --once` use. It never schedules, never
//! retries and never sends samples.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_modbus::client::{Client, Context};
use tokio_modbus::slave::{Slave, SlaveContext};
use tokio_modbus::{Request, Response};
use tokio_util::sync::CancellationToken;

use super::bus::BusStats;
use super::decode::{decode_bit, decode_words, exception_name, Decoding};
use super::plan::ReadRequest;
use super::rtu::{Answer, RtuError, RtuLine, RtuRequest};
use super::{RegisterWrite, WriteData, WriteError};
use crate::config::{Area, BusConfig, MachineConfig, Transport};
use crate::source::{Readings, SignalError, SignalNames};

/// Why a request got no usable reply; the machine counts as not answering.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum LinkError {
    /// `note` adds what else is known (an earlier late reply), or is empty.
    #[error("no reply from {target} within {timeout_ms} ms{note}")]
    Timeout {
        target: String,
        timeout_ms: u64,
        note: String,
    },
    /// Serial buses: something came, but no reply that answers the request
    /// (a CRC error, a reply from another unit or to another request).
    #[error("{what} on {target}, no valid reply within {timeout_ms} ms")]
    WrongReply {
        target: String,
        what: String,
        timeout_ms: u64,
    },
    #[error("cannot connect to {target}: {reason}")]
    Connect { target: String, reason: String },
    #[error("connection to {target} failed: {reason}")]
    Io { target: String, reason: String },
    #[error("the poll was stopped by shutdown")]
    Cancelled,
}

/// What a device answered to one request.
#[derive(Debug)]
pub(crate) enum Reply {
    Response(Response),
    /// A Modbus exception reply: the device is there and said no.
    Exception(u8),
}

/// A bus connection, opened on first use and rebuilt after a failure (TCP:
/// any; serial: an I/O error).
pub(crate) struct Link {
    bus: BusConfig,
    /// `None` until the first request and after a failure that needs a new one.
    conn: Option<Connection>,
    stats: Arc<BusStats>,
    /// `delay_ms` after the previous request ended: the earliest next
    /// request (`None` while `delay_ms` is 0: no pause to keep).
    next_request_at: Option<Instant>,
    /// Whether a connection was ever opened, so later ones count as reconnects.
    connected_before: bool,
}

impl Link {
    pub(crate) fn new(bus: BusConfig, stats: Arc<BusStats>) -> Self {
        Self {
            bus,
            conn: None,
            stats,
            next_request_at: None,
            connected_before: false,
        }
    }

    pub(crate) fn bus(&self) -> &BusConfig {
        &self.bus
    }

    /// Where this bus goes: the TCP address or the serial device.
    pub(crate) fn target(&self) -> String {
        match self.bus.transport {
            Transport::Rtu => self.bus.device.clone().unwrap_or_default(),
            _ => self.bus.address.clone().unwrap_or_default(),
        }
    }

    fn timeout(&self) -> Duration {
        Duration::from_millis(self.bus.timeout_ms)
    }

    /// Forget the connection; the next request opens a new one.
    pub(crate) fn drop_connection(&mut self) {
        self.conn = None;
    }

    async fn connect(&mut self) -> Result<(), LinkError> {
        let target = self.target();
        let opened = tokio::time::timeout(self.timeout(), open(&self.bus, &self.stats)).await;
        let conn = match opened {
            Err(_) => {
                self.stats.timeouts.fetch_add(1, Ordering::Relaxed);
                self.stats.errors.fetch_add(1, Ordering::Relaxed);
                return Err(LinkError::Timeout {
                    target,
                    timeout_ms: self.bus.timeout_ms,
                    note: String::new(),
                });
            }
            Ok(Err(reason)) => {
                self.stats.errors.fetch_add(1, Ordering::Relaxed);
                return Err(LinkError::Connect { target, reason });
            }
            Ok(Ok(conn)) => conn,
        };
        if self.connected_before {
            self.stats.reconnects.fetch_add(1, Ordering::Relaxed);
        }
        self.connected_before = true;
        self.conn = Some(conn);
        Ok(())
    }

    /// Make one request to `unit`: connect if needed, wait out `delay_ms`,
    /// then the request under the bus timeout. A failure drops a TCP connection;
    /// a serial line only after an I/O error.
    pub(crate) async fn call(
        &mut self,
        unit: u8,
        request: Request<'_>,
    ) -> Result<Reply, LinkError> {
        if let Some(at) = self.next_request_at {
            if at > Instant::now() {
                tokio::time::sleep_until(at).await;
            }
        }
        let result = self.call_now(unit, request).await;
        if self.bus.delay_ms > 0 {
            self.next_request_at = Some(Instant::now() + Duration::from_millis(self.bus.delay_ms));
        }
        // A serial line stays open after a timeout or a wrong reply: its RTU
        // master discards stale input itself and must keep listening for a
        // late reply. Only an I/O error reopens it.
        let keep_line = matches!(self.conn, Some(Connection::Rtu(_)))
            && !matches!(result, Err(LinkError::Io { .. }));
        if result.is_err() && !keep_line {
            self.drop_connection();
        }
        result
    }

    async fn call_now(&mut self, unit: u8, request: Request<'_>) -> Result<Reply, LinkError> {
        if self.conn.is_none() {
            self.connect().await?;
        }
        let timeout = self.timeout();
        let timeout_ms = self.bus.timeout_ms;
        // The target is named only in errors: made when one happens.
        let Some(conn) = self.conn.as_mut() else {
            return Err(LinkError::Io {
                target: self.target(),
                reason: "not connected".into(),
            });
        };
        let line = match conn {
            Connection::Rtu(line) => line,
            Connection::Tcp(ctx) => {
                ctx.set_slave(Slave(unit));
                self.stats.requests.fetch_add(1, Ordering::Relaxed);
                let asked = Instant::now();
                let answer = tokio::time::timeout(timeout, ctx.call(request)).await;
                if let Ok(Ok(_)) = &answer {
                    self.stats.latency.observe(asked.elapsed());
                }
                return match answer {
                    Err(_) => {
                        self.stats.timeouts.fetch_add(1, Ordering::Relaxed);
                        self.stats.errors.fetch_add(1, Ordering::Relaxed);
                        Err(LinkError::Timeout {
                            target: self.target(),
                            timeout_ms,
                            note: String::new(),
                        })
                    }
                    Ok(Err(e)) => {
                        self.stats.errors.fetch_add(1, Ordering::Relaxed);
                        Err(LinkError::Io {
                            target: self.target(),
                            reason: describe_tcp_call_error(&e),
                        })
                    }
                    Ok(Ok(Err(exception))) => Ok(Reply::Exception(u8::from(exception))),
                    Ok(Ok(Ok(response))) => Ok(Reply::Response(response)),
                };
            }
        };
        let result = match RtuRequest::new(unit, &request) {
            Err(e) => Err(e),
            Ok(framed) => {
                self.stats.requests.fetch_add(1, Ordering::Relaxed);
                let asked = Instant::now();
                let answer = line.transact(&framed, timeout).await;
                if answer.is_ok() {
                    self.stats.latency.observe(asked.elapsed());
                }
                match answer {
                    Ok(Answer::Exception(code)) => Ok(Reply::Exception(code)),
                    Ok(Answer::Data(data)) => Ok(Reply::Response(framed.response(&data))),
                    Err(e) => Err(e),
                }
            }
        };
        result.map_err(|e| {
            self.stats.errors.fetch_add(1, Ordering::Relaxed);
            let target = self.target();
            match e {
                RtuError::NoReply { late_reply } => {
                    self.stats.timeouts.fetch_add(1, Ordering::Relaxed);
                    LinkError::Timeout {
                        target,
                        timeout_ms,
                        note: late_reply,
                    }
                }
                RtuError::WrongReply(misfit) => LinkError::WrongReply {
                    target,
                    what: misfit.to_string(),
                    timeout_ms,
                },
                RtuError::Io(reason) | RtuError::Unsupported(reason) => {
                    LinkError::Io { target, reason }
                }
            }
        })
    }

    /// A reply that does not fit its request: count it and start afresh.
    fn bad_reply(&mut self) {
        self.stats.errors.fetch_add(1, Ordering::Relaxed);
        self.drop_connection();
    }
}

/// An open bus connection.
enum Connection {
    Tcp(Context),
    Rtu(RtuLine),
}

/// The reason of a failed request. tokio-modbus reports a TCP connection
/// that the device closed before replying as whatever `errno` last held
/// ("Operation now in progress (os error 115)" after a fresh connect): say
/// what happened instead.
fn describe_tcp_call_error(e: &tokio_modbus::Error) -> String {
    use std::io::ErrorKind;
    if let tokio_modbus::Error::Transport(io) = e {
        let leftover_errno = matches!(
            io.raw_os_error(),
            Some(0) | Some(libc::EINPROGRESS) | Some(libc::EAGAIN)
        );
        let how = match io.kind() {
            _ if leftover_errno => "closed",
            ErrorKind::UnexpectedEof | ErrorKind::BrokenPipe => "closed",
            ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted => "reset",
            _ => return e.to_string(),
        };
        return format!(
            "the device {how} the connection without replying (if it accepts \
             connections and hangs up at once: does it take only one client at a \
             time, or not this gateway's address?)"
        );
    }
    e.to_string()
}

/// Open the transport of a bus. Errors are the reason, for a [`LinkError`].
async fn open(bus: &BusConfig, stats: &Arc<BusStats>) -> Result<Connection, String> {
    match bus.transport {
        Transport::Tcp => {
            let address = bus.address.as_deref().ok_or("the bus has no address")?;
            let stream = tokio::net::TcpStream::connect(address)
                .await
                .map_err(|e| e.to_string())?;
            // Requests are small and strictly one at a time: send them at once.
            let _ = stream.set_nodelay(true);
            Ok(Connection::Tcp(tokio_modbus::client::tcp::attach(stream)))
        }
        Transport::Rtu => Ok(Connection::Rtu(RtuLine::open(bus, stats.clone())?)),
        Transport::Mqtt => Err("an mqtt bus is not a Modbus bus".into()),
    }
}

/// What one read request gave.
enum ReadReply {
    Words(Vec<u16>),
    Bits(Vec<bool>),
    Exception(u8),
    /// The reply does not fit the request (wrong length or function).
    Malformed(String),
}

/// The Modbus request of a planned read.
fn read_request(req: &ReadRequest) -> Request<'static> {
    let (a, n) = (req.address, req.count);
    match req.area {
        Area::Coil => Request::ReadCoils(a, n),
        Area::Discrete => Request::ReadDiscreteInputs(a, n),
        Area::Holding => Request::ReadHoldingRegisters(a, n),
        Area::Input => Request::ReadInputRegisters(a, n),
    }
}

async fn read(link: &mut Link, unit: u8, req: &ReadRequest) -> Result<ReadReply, LinkError> {
    let request = read_request(req);
    let reply = check_reply(req, link.call(unit, request).await?);
    if matches!(reply, ReadReply::Malformed(_)) {
        link.bad_reply();
    }
    Ok(reply)
}

/// What a device's reply gives for the read `req` (pure): the words or bits
/// when the reply fits the request, else why not.
fn check_reply(req: &ReadRequest, reply: Reply) -> ReadReply {
    let response = match reply {
        Reply::Exception(code) => return ReadReply::Exception(code),
        Reply::Response(r) => r,
    };
    let count = usize::from(req.count);
    let reply = match (req.area, response) {
        (Area::Coil, Response::ReadCoils(bits))
        | (Area::Discrete, Response::ReadDiscreteInputs(bits)) => {
            // Bits come in whole bytes: up to 7 padding bits are fine.
            if bits.len() < count || bits.len() >= count + 8 {
                ReadReply::Malformed(format!(
                    "reply to {req} held {} bits, expected {count}",
                    bits.len()
                ))
            } else {
                ReadReply::Bits(bits)
            }
        }
        (Area::Holding, Response::ReadHoldingRegisters(words))
        | (Area::Input, Response::ReadInputRegisters(words)) => {
            if words.len() != count {
                ReadReply::Malformed(format!(
                    "reply to {req} held {} registers, expected {count}",
                    words.len()
                ))
            } else {
                ReadReply::Words(words)
            }
        }
        (_, other) => ReadReply::Malformed(format!(
            "reply to {req} was {:?}, not a read of that area",
            other.function_code()
        )),
    };
    reply
}

/// The result of polling one machine once.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Poll {
    /// Every Modbus signal of the machine, in plan order: a value or why not.
    pub(crate) readings: Readings,
    /// Per request of the plan: the exception code it got, if any.
    pub(crate) exceptions: Vec<Option<u8>>,
}

/// A machine's poll, made once from its config and read plan and used for
/// every poll: the requests, and for each signal they read, in the order
/// read, where its value sits in the reply and how to decode it.
pub(crate) struct PollPlan {
    unit: u8,
    requests: Vec<ReadRequest>,
    /// Per request: how many of `signals` it reads.
    counts: Vec<usize>,
    /// The signals of request 0, then those of request 1, and so on.
    signals: Vec<PlannedSignal>,
    /// The machine's signal names, indexed like `machine.signal`.
    names: SignalNames,
}

/// One signal of a [`PollPlan`]: 40 bytes, side by side with the others of
/// its machine (see [`Decoding`]).
#[derive(Debug, Clone, Copy)]
struct PlannedSignal {
    /// Position in `machine.signal` and in the plan's names.
    position: u32,
    /// Its first register (or bit), and where that is in its request's reply.
    address: u16,
    start: u16,
    decoding: Decoding,
}

impl PollPlan {
    pub(crate) fn new(machine: &MachineConfig, requests: Vec<ReadRequest>) -> Self {
        let names: Vec<Arc<str>> = machine
            .signal
            .iter()
            .map(|s| Arc::from(s.name.as_str()))
            .collect();
        // Kept for as long as the bus runs: sized to fit, not grown.
        let mut signals = Vec::with_capacity(requests.iter().map(|r| r.signals.len()).sum());
        let mut counts = Vec::with_capacity(requests.len());
        for req in &requests {
            let before = signals.len();
            for &index in &req.signals {
                let (Some(signal), Ok(position)) =
                    (machine.signal.get(index), u32::try_from(index))
                else {
                    continue;
                };
                let address = signal.address.unwrap_or(req.address);
                signals.push(PlannedSignal {
                    position,
                    address,
                    start: address.saturating_sub(req.address),
                    decoding: Decoding::from(signal),
                });
            }
            counts.push(signals.len() - before);
        }
        PollPlan {
            unit: machine.unit,
            requests,
            counts,
            signals,
            names: Arc::new(names),
        }
    }

    /// The read requests of a poll, in order.
    pub(crate) fn requests(&self) -> &[ReadRequest] {
        &self.requests
    }
}

/// Poll a machine once by its `plan`. A request that gets no reply (timeout,
/// I/O or protocol error) ends the poll at once, so a dead device costs its
/// bus at most one timeout per poll. Exception and malformed replies only
/// affect the signals of their request. Between requests the poll stops if
/// `shutdown` is cancelled.
pub(crate) async fn poll_machine(
    link: &mut Link,
    plan: &PollPlan,
    shutdown: Option<&CancellationToken>,
) -> Result<Poll, LinkError> {
    let mut readings = Readings::of_signals(plan.names.clone());
    let mut exceptions = Vec::with_capacity(plan.requests.len());
    let mut signals = plan.signals.iter();
    for (i, (req, &count)) in plan.requests.iter().zip(&plan.counts).enumerate() {
        if i > 0 && shutdown.is_some_and(CancellationToken::is_cancelled) {
            return Err(LinkError::Cancelled);
        }
        let reply = read(link, plan.unit, req).await?;
        exceptions.push(match reply {
            ReadReply::Exception(code) => Some(code),
            _ => None,
        });
        decode_reply(&mut readings, signals.by_ref().take(count), req, &reply);
    }
    Ok(Poll {
        readings,
        exceptions,
    })
}

/// Decode the `signals` that the read `req` covers from its `reply` (pure).
fn decode_reply<'p>(
    readings: &mut Readings,
    signals: impl Iterator<Item = &'p PlannedSignal>,
    req: &ReadRequest,
    reply: &ReadReply,
) {
    for signal in signals {
        let start = usize::from(signal.start);
        let reading = match reply {
            ReadReply::Words(words) => {
                decode_words(&signal.decoding, words.get(start..).unwrap_or(&[]))
            }
            ReadReply::Bits(bits) => decode_bit(bits.get(start..).unwrap_or(&[])),
            ReadReply::Exception(code) => Err(SignalError::Exception {
                code: *code,
                area: req.area,
                address: signal.address,
            }),
            ReadReply::Malformed(why) => Err(SignalError::BadValue(why.clone())),
        };
        // A plan reads each signal once: no need to search for it.
        readings.push_at(signal.position, reading);
    }
}

/// What a serial poll makes of the bytes `heard` on the line after request
/// `request` (an index into `plan_reads(machine, bus)`) went out: the RTU
/// scan for its reply, the reply checks and the decoding of the request's
/// signals, the same steps as `poll_machine` without a line (fuzzing and
/// tests). `None` when the scan finds no reply (the poll would time out) or
/// the plan has no such request.
pub fn rtu_reply_readings(
    machine: &MachineConfig,
    bus: &BusConfig,
    request: usize,
    heard: &[u8],
) -> Option<Readings> {
    let plan = PollPlan::new(machine, super::plan::plan_reads(machine, bus));
    let req = plan.requests.get(request)?;
    let framed = RtuRequest::new(plan.unit, &read_request(req)).ok()?;
    let reply = match super::rtu::scan(heard, &framed).answer?.0 {
        Answer::Exception(code) => Reply::Exception(code),
        Answer::Data(data) => Reply::Response(framed.response(&data)),
    };
    let reply = check_reply(req, reply);
    let skip: usize = plan.counts.iter().take(request).sum();
    let count = plan.counts.get(request).copied().unwrap_or(0);
    let mut readings = Readings::of_signals(plan.names.clone());
    decode_reply(
        &mut readings,
        plan.signals.iter().skip(skip).take(count),
        req,
        &reply,
    );
    Some(readings)
}

/// Make one write to `machine` and read it back; the read-back must equal
/// what was written.
pub(crate) async fn write_verified(
    link: &mut Link,
    machine: &MachineConfig,
    write: &RegisterWrite,
) -> Result<(), WriteError> {
    let failed = |reason: String| WriteError::Failed {
        machine: machine.id.clone(),
        area: write.area,
        address: write.address,
        reason,
    };
    let a = write.address;
    let (request, wanted, read_back) = match (&write.data, write.area) {
        (WriteData::Coil(on), Area::Coil) => (
            Request::WriteSingleCoil(a, *on),
            vec![u16::from(*on)],
            ReadRequest {
                area: Area::Coil,
                address: a,
                count: 1,
                signals: Vec::new(),
            },
        ),
        (WriteData::Registers(words), Area::Holding) if !words.is_empty() => {
            let count = u16::try_from(words.len())
                .ok()
                .filter(|&n| n <= 123)
                .ok_or_else(|| {
                    failed(format!(
                        "{} registers is more than one write may hold (123)",
                        words.len()
                    ))
                })?;
            (
                Request::WriteMultipleRegisters(a, words.clone().into()),
                words.clone(),
                ReadRequest {
                    area: Area::Holding,
                    address: a,
                    count,
                    signals: Vec::new(),
                },
            )
        }
        (data, area) => {
            return Err(failed(format!("cannot write {data:?} to area {area}")));
        }
    };
    match link.call(machine.unit, request).await {
        Err(e) => return Err(failed(e.to_string())),
        Ok(Reply::Exception(code)) => {
            return Err(failed(format!(
                "modbus exception {code:#04x} ({})",
                exception_name(code)
            )))
        }
        Ok(Reply::Response(_)) => {}
    }
    let got: Vec<u16> = match read(link, machine.unit, &read_back).await {
        Err(e) => return Err(failed(format!("reading back: {e}"))),
        Ok(ReadReply::Exception(code)) => {
            return Err(failed(format!(
                "reading back: modbus exception {code:#04x} ({})",
                exception_name(code)
            )))
        }
        Ok(ReadReply::Malformed(why)) => return Err(failed(format!("reading back: {why}"))),
        Ok(ReadReply::Words(words)) => words,
        Ok(ReadReply::Bits(bits)) => bits
            .first()
            .map(|&b| vec![u16::from(b)])
            .unwrap_or_default(),
    };
    if got != wanted {
        return Err(WriteError::Mismatch {
            machine: machine.id.clone(),
            area: write.area,
            address: write.address,
            wanted,
            got,
        });
    }
    Ok(())
}
