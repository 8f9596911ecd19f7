//! The Modbus RTU master of a serial bus: request frames out, the one reply
//! that answers each of them in.
//!
//! Owns the RTU frame (unit, PDU, CRC-16/Modbus), the rule that a reply is
//! taken only for the request it answers, and the line discipline around it:
//!
//! - Before every request the input is discarded (the kernel's buffer and
//!   whatever is still readable), so nothing heard earlier can be read as
//!   this request's reply. The line is kept silent for 3.5 character times
//!   between two frames.
//! - A reply is found by scanning the bytes heard for a frame that fits the
//!   request ([`scan`], pure): the same unit, the same function (or that
//!   function with the exception bit), the byte count of a read of the
//!   request's quantity, or for a write the echo of its address and value or
//!   quantity, and a valid CRC. Bytes that fit no such frame (line noise, a
//!   reply from another unit, a reply to an earlier request) are skipped, and
//!   the scan resynchronises on the next byte; frames are not cut by line
//!   silence, which USB serial adapters do not keep.
//! - If no fitting frame comes within the bus `timeout_ms`, the request fails
//!   and says what was heard instead (a CRC error, a reply from unit 2, a
//!   reply with another function), or that nothing came. The input is then
//!   discarded again, and a next request to the same unit is held back until
//!   `timeout_ms` more have passed or the late reply has come, listening: a
//!   late reply to the request that timed out has the same shape as the
//!   reply to the next one, and must be heard and thrown away, not taken
//!   for it. Requests to other
//!   units go out at once (a late reply from this unit does not fit them).
//!
//! Every byte thrown away is counted in [`BusStats::discarded_bytes`]. It
//! never retries, never decodes values and never reopens the port: the
//! link does that after an I/O error.

use std::ops::Range;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;
use tokio_modbus::{Request, Response};
use tokio_serial::{ClearBuffer, SerialPort, SerialStream};
use tracing::debug;

use super::bus::BusStats;
use crate::config::{BusConfig, Parity};

/// Why an RTU request got no usable reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum RtuError {
    /// Nothing that looks like a reply came in time; `late_reply` says
    /// when the unit's last late reply came, if one did.
    #[error("no reply{late_reply}")]
    NoReply { late_reply: String },
    /// Something came, but no reply that answers the request (the most
    /// telling of what was heard).
    #[error("{0}")]
    WrongReply(Misfit),
    #[error("{0}")]
    Io(String),
    #[error("{0}")]
    Unsupported(String),
}

// ---------------------------------------------------------------------------
// Frames (pure)
// ---------------------------------------------------------------------------

/// CRC-16/Modbus (polynomial 0xA001 reflected, initial 0xFFFF); sent low byte first.
pub(crate) fn crc16(data: &[u8]) -> u16 {
    let mut crc: u16 = 0xFFFF;
    for &byte in data {
        crc ^= u16::from(byte);
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

/// Whether `frame` ends in the CRC of the bytes before it.
fn crc_ok(frame: &[u8]) -> bool {
    match frame.len().checked_sub(2) {
        Some(n) if n >= 2 => crc16(&frame[..n]).to_le_bytes() == [frame[n], frame[n + 1]],
        _ => false,
    }
}

/// What the reply to a request must hold after its function code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// Functions 01/02: a byte count, then `count` bits in whole bytes.
    Bits { count: u16 },
    /// Functions 03/04: a byte count, then `count` registers.
    Words { count: u16 },
    /// Functions 05/06/0F/10: the request's address and value (or
    /// quantity), echoed.
    Echo([u8; 4]),
}

impl Shape {
    /// The whole reply frame's length: unit, function, data, CRC.
    fn frame_len(self) -> usize {
        match self {
            Shape::Bits { count } => 5 + usize::from(count).div_ceil(8),
            Shape::Words { count } => 5 + 2 * usize::from(count),
            Shape::Echo(_) => 8,
        }
    }

    /// Whether the bytes after unit and function that are there (`data`,
    /// maybe only part of them) can start this reply.
    fn fits(self, data: &[u8]) -> bool {
        match self {
            Shape::Bits { .. } | Shape::Words { .. } => data
                .first()
                .is_none_or(|&n| usize::from(n) + 5 == self.frame_len()),
            Shape::Echo(echo) => data.iter().zip(echo).all(|(a, b)| *a == b),
        }
    }
}

/// One request, framed for the line, with what its reply must look like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RtuRequest {
    unit: u8,
    function: u8,
    shape: Shape,
    /// The request frame as sent: unit, PDU, CRC.
    frame: Vec<u8>,
}

impl RtuRequest {
    /// Frame `request` for `unit`. Only the functions linegate uses are framed.
    pub(crate) fn new(unit: u8, request: &Request<'_>) -> Result<Self, RtuError> {
        let quantity = |n: usize| {
            u16::try_from(n).map_err(|_| RtuError::Unsupported(format!("{n} values in one write")))
        };
        let (function, head, tail, shape): (u8, [u16; 2], Vec<u8>, Shape) = match request {
            Request::ReadCoils(a, n) => (0x01, [*a, *n], vec![], Shape::Bits { count: *n }),
            Request::ReadDiscreteInputs(a, n) => {
                (0x02, [*a, *n], vec![], Shape::Bits { count: *n })
            }
            Request::ReadHoldingRegisters(a, n) => {
                (0x03, [*a, *n], vec![], Shape::Words { count: *n })
            }
            Request::ReadInputRegisters(a, n) => {
                (0x04, [*a, *n], vec![], Shape::Words { count: *n })
            }
            Request::WriteSingleCoil(a, on) => {
                let value = if *on { 0xFF00 } else { 0x0000 };
                (0x05, [*a, value], vec![], echo(*a, value))
            }
            Request::WriteSingleRegister(a, word) => (0x06, [*a, *word], vec![], echo(*a, *word)),
            Request::WriteMultipleCoils(a, bits) => {
                let n = quantity(bits.len())?;
                let mut bytes = vec![0u8; bits.len().div_ceil(8)];
                for (i, _) in bits.iter().enumerate().filter(|(_, on)| **on) {
                    bytes[i / 8] |= 1 << (i % 8);
                }
                let mut tail = vec![byte_count(bytes.len())?];
                tail.extend(bytes);
                (0x0F, [*a, n], tail, echo(*a, n))
            }
            Request::WriteMultipleRegisters(a, words) => {
                let n = quantity(words.len())?;
                let mut tail = vec![byte_count(2 * words.len())?];
                tail.extend(words.iter().flat_map(|w| w.to_be_bytes()));
                (0x10, [*a, n], tail, echo(*a, n))
            }
            other => {
                return Err(RtuError::Unsupported(format!(
                    "function {:02x} is not sent over RTU by linegate",
                    other.function_code().value()
                )))
            }
        };
        let mut frame = vec![unit, function];
        frame.extend(head[0].to_be_bytes());
        frame.extend(head[1].to_be_bytes());
        frame.extend(tail);
        let crc = crc16(&frame);
        frame.extend(crc.to_le_bytes());
        Ok(Self {
            unit,
            function,
            shape,
            frame,
        })
    }

    pub(crate) fn frame(&self) -> &[u8] {
        &self.frame
    }

    /// The reply `data` (the bytes after the function code of a frame that
    /// [`scan`] found) as tokio-modbus would hand it back.
    pub(crate) fn response(&self, data: &[u8]) -> Response {
        let payload = data.get(1..).unwrap_or(&[]);
        let word = |i: usize| {
            u16::from_be_bytes([
                data.get(i).copied().unwrap_or(0),
                data.get(i + 1).copied().unwrap_or(0),
            ])
        };
        match (self.function, self.shape) {
            (f, Shape::Bits { count }) => {
                let bits = (0..usize::from(count))
                    .map(|i| payload.get(i / 8).is_some_and(|b| b & (1 << (i % 8)) != 0))
                    .collect();
                if f == 0x01 {
                    Response::ReadCoils(bits)
                } else {
                    Response::ReadDiscreteInputs(bits)
                }
            }
            (f, Shape::Words { .. }) => {
                let words = payload
                    .chunks_exact(2)
                    .map(|c| u16::from_be_bytes([c[0], c[1]]))
                    .collect();
                if f == 0x03 {
                    Response::ReadHoldingRegisters(words)
                } else {
                    Response::ReadInputRegisters(words)
                }
            }
            (0x05, Shape::Echo(_)) => Response::WriteSingleCoil(word(0), word(2) == 0xFF00),
            (0x06, Shape::Echo(_)) => Response::WriteSingleRegister(word(0), word(2)),
            (0x0F, Shape::Echo(_)) => Response::WriteMultipleCoils(word(0), word(2)),
            (_, Shape::Echo(_)) => Response::WriteMultipleRegisters(word(0), word(2)),
        }
    }

    /// What a read of this request's quantity holds, for errors.
    fn expected(&self) -> String {
        match self.shape {
            Shape::Bits { count } => format!("{count} bit(s)"),
            Shape::Words { count } => format!("{count} register(s)"),
            Shape::Echo(e) => format!(
                "the echo of address {} and {}",
                u16::from_be_bytes([e[0], e[1]]),
                u16::from_be_bytes([e[2], e[3]])
            ),
        }
    }
}

fn echo(address: u16, value: u16) -> Shape {
    let [a, b] = address.to_be_bytes();
    let [c, d] = value.to_be_bytes();
    Shape::Echo([a, b, c, d])
}

fn byte_count(n: usize) -> Result<u8, RtuError> {
    u8::try_from(n).map_err(|_| RtuError::Unsupported(format!("{n} bytes in one write")))
}

/// What a request got, when [`scan`] found its reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Answer {
    /// The bytes after the function code (CRC left off).
    Data(Vec<u8>),
    /// An exception reply: the device is there and said no.
    Exception(u8),
}

/// A valid-looking frame that was heard but does not answer the request,
/// kept to say what happened if no answer comes. Each names the request's
/// unit (and function) it was compared with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Misfit {
    /// Shaped like the reply (unit, function, length), but its CRC is wrong.
    #[error("CRC error in reply from unit {unit}")]
    Crc { unit: u8 },
    /// A whole, valid frame from the right unit and function that answers
    /// another request (another length or echo).
    #[error("reply from unit {unit} does not answer the request: {why}")]
    OtherRequest { unit: u8, why: String },
    /// A whole, valid frame from the right unit with another function.
    #[error(
        "reply from unit {unit} with function {got:02x} to a request with function {wanted:02x}"
    )]
    OtherFunction { unit: u8, got: u8, wanted: u8 },
    /// A whole, valid frame from another unit.
    #[error("reply from unit {got} to a request for unit {wanted}")]
    OtherUnit { got: u8, wanted: u8 },
}

impl Misfit {
    /// How much it tells about the request's own reply: a CRC error is the
    /// reply itself, damaged; a frame from another unit tells least.
    fn weight(&self) -> u8 {
        match self {
            Misfit::Crc { .. } => 3,
            Misfit::OtherRequest { .. } => 2,
            Misfit::OtherFunction { .. } => 1,
            Misfit::OtherUnit { .. } => 0,
        }
    }
}

/// What [`scan`] made of the bytes heard since a request was sent.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Scan {
    /// The reply, and where its frame is in the bytes.
    pub(crate) answer: Option<(Answer, Range<usize>)>,
    /// What was heard before it (or instead of it), most telling first.
    pub(crate) misfits: Vec<Misfit>,
}

/// The length of the whole frame starting at `b` if it is a reply (or a
/// request) of a known function, as far as its first bytes tell: `None`
/// for an unknown function or too few bytes to tell.
fn any_frame_len(b: &[u8]) -> Option<usize> {
    let function = *b.get(1)?;
    match function {
        f if f & 0x80 != 0 => Some(5),
        0x01..=0x04 => b.get(2).map(|&n| 5 + usize::from(n)),
        0x05 | 0x06 | 0x0F | 0x10 => Some(8),
        _ => None,
    }
}

/// Look through `heard` (every byte since `request` was sent) for the frame
/// that answers it; see the module doc for what fits. Any byte may start a
/// frame: noise before the reply and frames that answer something else are
/// skipped. Pure, and cheap enough to run again on each chunk read.
pub(crate) fn scan(heard: &[u8], request: &RtuRequest) -> Scan {
    let mut scan = Scan::default();
    let mut i = 0;
    while i + 2 <= heard.len() {
        let b = &heard[i..];
        let (unit, function) = (b[0], b[1]);
        let ours = unit == request.unit;
        if ours && function == request.function | 0x80 {
            if let Some(frame) = b.get(..5) {
                if crc_ok(frame) {
                    scan.answer = Some((Answer::Exception(frame[2]), i..i + 5));
                    break;
                }
                scan.misfits.push(Misfit::Crc { unit });
            }
            i += 1;
            continue;
        }
        if ours && function == request.function && request.shape.fits(&b[2..]) {
            let len = request.shape.frame_len();
            if let Some(frame) = b.get(..len) {
                if crc_ok(frame) {
                    scan.answer = Some((Answer::Data(frame[2..len - 2].to_vec()), i..i + len));
                    break;
                }
                scan.misfits.push(Misfit::Crc { unit });
            }
            // Incomplete, or damaged: a later byte may still start the reply.
            i += 1;
            continue;
        }
        // Not the reply. If it is a whole valid frame, say what it was and
        // step over it; otherwise it is noise: resynchronise on the next byte.
        match any_frame_len(b).and_then(|len| b.get(..len)) {
            Some(frame) if crc_ok(frame) => {
                scan.misfits.push(if !ours {
                    Misfit::OtherUnit {
                        got: unit,
                        wanted: request.unit,
                    }
                } else if function != request.function {
                    Misfit::OtherFunction {
                        unit,
                        got: function,
                        wanted: request.function,
                    }
                } else {
                    Misfit::OtherRequest {
                        unit,
                        why: format!(
                            "it holds {} data byte(s), the request wants {}",
                            frame.len() - 4,
                            request.expected()
                        ),
                    }
                });
                i += frame.len();
            }
            _ => i += 1,
        }
    }
    // Most telling first; among equals, the first heard.
    scan.misfits.sort_by_key(|m| std::cmp::Reverse(m.weight()));
    scan
}

// ---------------------------------------------------------------------------
// The line (I/O)
// ---------------------------------------------------------------------------

/// Bytes kept while looking for a reply; a valid RTU frame is at most 256.
const HEARD_MAX_BYTES: usize = 1024;

/// A request that timed out, whose reply may still come.
struct Late {
    request: RtuRequest,
    sent_at: Instant,
    /// Until when a next request to its unit waits, listening for that reply.
    until: Instant,
}

/// An open serial line and the master's state on it.
pub(crate) struct RtuLine {
    port: SerialStream,
    stats: Arc<BusStats>,
    /// 3.5 character times at the line's speed (1.75 ms above 19200 baud):
    /// the silence that separates two frames.
    frame_gap: Duration,
    /// When the line last carried a byte we know of (sent or heard).
    last_traffic: Instant,
    /// Per unit, the last request that timed out, while its late reply may
    /// still come (a few units at most: those failing right now).
    late: Vec<Late>,
    /// The last late reply heard: from which unit, how long after its
    /// request. Named in the unit's next timeout, so the cause is plain.
    late_reply: Option<(u8, u64)>,
}

impl RtuLine {
    pub(crate) fn open(bus: &BusConfig, stats: Arc<BusStats>) -> Result<Self, String> {
        let device = bus.device.as_deref().ok_or("the bus has no device")?;
        let builder = tokio_serial::new(device, bus.baud)
            .parity(match bus.parity {
                Parity::None => tokio_serial::Parity::None,
                Parity::Even => tokio_serial::Parity::Even,
                Parity::Odd => tokio_serial::Parity::Odd,
            })
            .data_bits(match bus.data_bits {
                5 => tokio_serial::DataBits::Five,
                6 => tokio_serial::DataBits::Six,
                7 => tokio_serial::DataBits::Seven,
                _ => tokio_serial::DataBits::Eight,
            })
            .stop_bits(match bus.stop_bits {
                2 => tokio_serial::StopBits::Two,
                _ => tokio_serial::StopBits::One,
            });
        let port = SerialStream::open(&builder).map_err(|e| e.to_string())?;
        Ok(Self {
            port,
            stats,
            frame_gap: frame_gap(bus),
            last_traffic: Instant::now(),
            late: Vec::new(),
            late_reply: None,
        })
    }

    /// Send `request` and wait up to `timeout` for the frame that answers it.
    pub(crate) async fn transact(
        &mut self,
        request: &RtuRequest,
        timeout: Duration,
    ) -> Result<Answer, RtuError> {
        self.wait_out_late_reply(request.unit).await?;
        let quiet_at = self.last_traffic + self.frame_gap;
        if quiet_at > Instant::now() {
            tokio::time::sleep_until(quiet_at).await;
        }
        self.discard_input()?;
        self.port
            .write_all(request.frame())
            .await
            .map_err(|e| RtuError::Io(format!("sending: {e}")))?;
        self.port
            .flush()
            .await
            .map_err(|e| RtuError::Io(format!("sending: {e}")))?;
        let sent_at = Instant::now();
        self.last_traffic = sent_at;
        let deadline = sent_at + timeout;
        let mut heard = Vec::with_capacity(request.shape.frame_len());
        let mut chunk = [0u8; 256];
        // The most telling thing heard that was not the reply.
        let mut misfit: Option<Misfit> = None;
        loop {
            let n = match tokio::time::timeout_at(deadline, self.port.read(&mut chunk)).await {
                Err(_) => break,
                Ok(Err(e)) => return Err(RtuError::Io(format!("reading: {e}"))),
                Ok(Ok(0)) => return Err(RtuError::Io("the serial line was closed".into())),
                Ok(Ok(n)) => n,
            };
            self.last_traffic = Instant::now();
            heard.extend_from_slice(&chunk[..n]);
            let found = scan(&heard, request);
            if let Some((answer, frame)) = found.answer {
                // Noise before the reply, anything after it.
                self.count_discarded(heard.len() - frame.len(), &found.misfits);
                if self
                    .late_reply
                    .is_some_and(|(unit, _)| unit == request.unit)
                {
                    self.late_reply = None;
                }
                return Ok(answer);
            }
            if let Some(m) = found.misfits.into_iter().next() {
                if misfit.as_ref().is_none_or(|was| m.weight() > was.weight()) {
                    misfit = Some(m);
                }
            }
            if heard.len() > HEARD_MAX_BYTES {
                let cut = heard.len() - 256;
                heard.drain(..cut);
                self.count_discarded(cut, &[]);
            }
        }
        // Timed out: throw away what was heard and what is still coming in,
        // and hold back the next request to this unit while a late reply may come.
        self.count_discarded(heard.len(), &[]);
        let _ = self.discard_input();
        let now = Instant::now();
        self.late.retain(|l| l.request.unit != request.unit);
        self.late.push(Late {
            request: request.clone(),
            sent_at,
            until: now + timeout,
        });
        Err(match misfit {
            Some(misfit) => RtuError::WrongReply(misfit),
            None => RtuError::NoReply {
                late_reply: match self.late_reply {
                    Some((unit, after_ms)) if unit == request.unit => {
                        format!(" (an earlier reply came {after_ms} ms after its request: is timeout_ms too short?)")
                    }
                    _ => String::new(),
                },
            },
        })
    }

    /// If a request to `unit` timed out and its late reply may still come,
    /// listen until that reply has come or the wait is over, and throw away
    /// what was heard.
    async fn wait_out_late_reply(&mut self, unit: u8) -> Result<(), RtuError> {
        let now = Instant::now();
        self.late.retain(|l| l.until > now);
        let Some(at) = self.late.iter().position(|l| l.request.unit == unit) else {
            return Ok(());
        };
        let late = self.late.swap_remove(at);
        let mut heard = Vec::new();
        let mut chunk = [0u8; 256];
        while let Ok(read) = tokio::time::timeout_at(late.until, self.port.read(&mut chunk)).await {
            let n = match read {
                Err(e) => return Err(RtuError::Io(format!("reading: {e}"))),
                Ok(0) => return Err(RtuError::Io("the serial line was closed".into())),
                Ok(n) => n,
            };
            self.last_traffic = Instant::now();
            self.count_discarded(n, &[]);
            if heard.len() > HEARD_MAX_BYTES {
                continue;
            }
            heard.extend_from_slice(&chunk[..n]);
            if scan(&heard, &late.request).answer.is_some() {
                let after = self.last_traffic.duration_since(late.sent_at);
                let after_ms = u64::try_from(after.as_millis()).unwrap_or(u64::MAX);
                debug!(
                    "unit {unit} answered {after_ms} ms after its request, later than timeout_ms; the late reply was thrown away"
                );
                self.late_reply = Some((unit, after_ms));
                // The reply it was waiting for came: nothing more is due.
                break;
            }
        }
        Ok(())
    }

    /// Throw away whatever the line holds: the kernel's input buffer, then
    /// what can still be read without waiting.
    fn discard_input(&mut self) -> Result<(), RtuError> {
        // Not every port can flush (a pty can); reading below still empties it.
        let _ = self.port.clear(ClearBuffer::Input);
        let mut chunk = [0u8; 256];
        loop {
            match self.port.try_read(&mut chunk) {
                Ok(0) => return Ok(()),
                Ok(n) => self.count_discarded(n, &[]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(RtuError::Io(format!("reading: {e}"))),
            }
        }
    }

    fn count_discarded(&self, bytes: usize, misfits: &[Misfit]) {
        if bytes == 0 {
            return;
        }
        self.stats
            .discarded_bytes
            .fetch_add(bytes as u64, Ordering::Relaxed);
        if let Some(m) = misfits.first() {
            debug!("skipped {bytes} byte(s) before the reply, among them: {m}");
        }
    }
}

/// 3.5 character times of `bus`'s line; the specification fixes 1.75 ms
/// above 19200 baud.
fn frame_gap(bus: &BusConfig) -> Duration {
    if bus.baud > 19_200 || bus.baud == 0 {
        return Duration::from_micros(1750);
    }
    let parity = u32::from(bus.parity != Parity::None);
    let bits = 1 + u32::from(bus.data_bits) + parity + u32::from(bus.stop_bits);
    Duration::from_micros(u64::from(bits) * 3_500_000 / u64::from(bus.baud))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `bytes` followed by their CRC, as a device would send them.
    fn framed(bytes: &[u8]) -> Vec<u8> {
        let mut frame = bytes.to_vec();
        frame.extend(crc16(bytes).to_le_bytes());
        frame
    }

    fn holding(unit: u8, address: u16, count: u16) -> RtuRequest {
        RtuRequest::new(unit, &Request::ReadHoldingRegisters(address, count)).expect("framed")
    }

    fn joined(parts: &[&[u8]]) -> Vec<u8> {
        parts.concat()
    }

    #[test]
    fn crc_is_crc16_modbus_and_requests_are_framed_as_the_specification_shows() {
        assert_eq!(crc16(b"123456789"), 0x4B37);
        // The specification's read of one holding register at 0 from unit 1.
        assert_eq!(
            holding(1, 0, 1).frame(),
            &[0x01, 0x03, 0x00, 0x00, 0x00, 0x01, 0x84, 0x0A]
        );
        let write = RtuRequest::new(
            17,
            &Request::WriteMultipleRegisters(1, vec![0x000A, 0x0102].into()),
        )
        .expect("framed");
        assert_eq!(
            &write.frame()[..11],
            &[0x11, 0x10, 0x00, 0x01, 0x00, 0x02, 0x04, 0x00, 0x0A, 0x01, 0x02]
        );
        let coil = RtuRequest::new(1, &Request::WriteSingleCoil(0xAC, true)).expect("framed");
        assert_eq!(&coil.frame()[..6], &[0x01, 0x05, 0x00, 0xAC, 0xFF, 0x00]);
    }

    #[test]
    fn a_clean_reply_is_taken_with_its_registers() {
        let req = holding(1, 0, 2);
        let heard = framed(&[0x01, 0x03, 0x04, 0x00, 0x2A, 0x12, 0x34]);
        let scan = scan(&heard, &req);
        let Some((Answer::Data(data), frame)) = scan.answer else {
            panic!("no answer: {scan:?}")
        };
        assert_eq!(frame, 0..heard.len());
        assert_eq!(
            req.response(&data),
            Response::ReadHoldingRegisters(vec![0x002A, 0x1234])
        );
        assert!(scan.misfits.is_empty());
    }

    #[test]
    fn noise_that_looks_like_a_frame_start_is_skipped_and_the_real_reply_found() {
        let req = holding(1, 0, 1);
        let reply = framed(&[0x01, 0x03, 0x02, 0x00, 0x13]);
        let heard = joined(&[&[0x55, 0x01, 0x03, 0xAA, 0x00, 0xFF, 0x13], &reply]);
        let scan = scan(&heard, &req);
        let Some((Answer::Data(data), frame)) = scan.answer else {
            panic!("no answer: {scan:?}")
        };
        assert_eq!(frame, 7..heard.len());
        assert_eq!(
            req.response(&data),
            Response::ReadHoldingRegisters(vec![19])
        );
    }

    #[test]
    fn noise_alone_is_no_reply_and_no_misfit() {
        let req = holding(1, 0, 1);
        let scan = scan(&[0x55, 0x01, 0x03, 0xAA, 0x00, 0xFF, 0x13], &req);
        assert_eq!(scan, Scan::default());
    }

    #[test]
    fn a_late_reply_to_the_previous_request_is_not_taken_for_this_one() {
        // The previous request read 1 input register; this one 2 holding
        // registers; and before that, 1 holding register.
        let req = holding(1, 10, 2);
        let late_input = framed(&[0x01, 0x04, 0x02, 0x00, 0x13]);
        let late_holding = framed(&[0x01, 0x03, 0x02, 0x00, 0x13]);
        let scan_input = scan(&late_input, &req);
        assert_eq!(scan_input.answer, None);
        assert_eq!(
            scan_input.misfits,
            vec![Misfit::OtherFunction {
                unit: 1,
                got: 4,
                wanted: 3
            }]
        );
        assert_eq!(
            scan_input.misfits[0].to_string(),
            "reply from unit 1 with function 04 to a request with function 03"
        );
        let scan_holding = scan(&late_holding, &req);
        assert_eq!(scan_holding.answer, None);
        assert!(
            matches!(
                &scan_holding.misfits[..],
                [Misfit::OtherRequest { unit: 1, .. }]
            ),
            "{scan_holding:?}"
        );
        assert_eq!(
            scan_holding.misfits[0].to_string(),
            "reply from unit 1 does not answer the request: it holds 3 data byte(s), the request wants 2 register(s)"
        );
        // The real reply after the late one is found.
        let reply = framed(&[0x01, 0x03, 0x04, 0x00, 0x01, 0x00, 0x02]);
        let both = joined(&[&late_holding, &reply]);
        let scan = scan(&both, &req);
        assert_eq!(
            scan.answer.map(|(a, f)| (a, f.start)),
            Some((
                Answer::Data(vec![0x04, 0x00, 0x01, 0x00, 0x02]),
                late_holding.len()
            ))
        );
    }

    #[test]
    fn a_reply_with_a_bad_crc_is_a_crc_error_not_a_value() {
        let req = holding(1, 0, 1);
        let mut heard = framed(&[0x01, 0x03, 0x02, 0x00, 0x13]);
        heard[6] ^= 0x01;
        let scan = scan(&heard, &req);
        assert_eq!(scan.answer, None);
        assert_eq!(scan.misfits, vec![Misfit::Crc { unit: 1 }]);
        assert_eq!(
            scan.misfits[0].to_string(),
            "CRC error in reply from unit 1"
        );
    }

    #[test]
    fn a_reply_from_another_unit_is_named_and_skipped() {
        let req = holding(1, 0, 1);
        let other = framed(&[0x02, 0x03, 0x02, 0x00, 0x13]);
        let scan_other = scan(&other, &req);
        assert_eq!(scan_other.answer, None);
        assert_eq!(
            scan_other.misfits[0].to_string(),
            "reply from unit 2 to a request for unit 1"
        );
        let ours = framed(&[0x01, 0x03, 0x02, 0x00, 0x07]);
        let scan = scan(&joined(&[&other, &ours]), &req);
        assert!(matches!(scan.answer, Some((Answer::Data(ref d), _)) if d == &[2, 0, 7]));
    }

    #[test]
    fn the_most_telling_misfit_comes_first() {
        let req = holding(1, 0, 1);
        let other = framed(&[0x02, 0x03, 0x02, 0x00, 0x13]);
        let mut damaged = framed(&[0x01, 0x03, 0x02, 0x00, 0x13]);
        damaged[3] ^= 0x40;
        let scan = scan(&joined(&[&other, &damaged]), &req);
        assert_eq!(scan.answer, None);
        assert_eq!(scan.misfits.first(), Some(&Misfit::Crc { unit: 1 }));
    }

    #[test]
    fn an_exception_reply_for_the_requests_function_is_the_answer() {
        let req = holding(1, 0, 1);
        let heard = framed(&[0x01, 0x83, 0x02]);
        assert_eq!(
            scan(&heard, &req).answer,
            Some((Answer::Exception(2), 0..5))
        );
        // An exception to another function does not answer this request.
        let other = framed(&[0x01, 0x84, 0x02]);
        let scan = scan(&other, &req);
        assert_eq!(scan.answer, None);
        assert_eq!(
            scan.misfits,
            vec![Misfit::OtherFunction {
                unit: 1,
                got: 0x84,
                wanted: 3
            }]
        );
    }

    #[test]
    fn a_truncated_reply_waits_for_its_end_and_is_taken_once_complete() {
        let req = holding(1, 0, 1);
        let whole = framed(&[0x01, 0x03, 0x02, 0x00, 0x13]);
        for cut in 0..whole.len() {
            let scan = scan(&whole[..cut], &req);
            assert_eq!(scan, Scan::default(), "after {cut} byte(s)");
        }
        assert!(scan(&whole, &req).answer.is_some());
    }

    #[test]
    fn a_write_is_answered_only_by_the_echo_of_that_write() {
        let req = RtuRequest::new(1, &Request::WriteMultipleRegisters(5, vec![1, 2].into()))
            .expect("framed");
        let echo = framed(&[0x01, 0x10, 0x00, 0x05, 0x00, 0x02]);
        let Some((Answer::Data(data), _)) = scan(&echo, &req).answer else {
            panic!("the echo is the answer")
        };
        assert_eq!(req.response(&data), Response::WriteMultipleRegisters(5, 2));
        let wrong = framed(&[0x01, 0x10, 0x00, 0x06, 0x00, 0x02]);
        let scan_wrong = scan(&wrong, &req);
        assert_eq!(scan_wrong.answer, None);
        assert!(matches!(
            &scan_wrong.misfits[..],
            [Misfit::OtherRequest { unit: 1, .. }]
        ));
        let coil = RtuRequest::new(1, &Request::WriteSingleCoil(3, true)).expect("framed");
        let off = framed(&[0x01, 0x05, 0x00, 0x03, 0x00, 0x00]);
        assert_eq!(scan(&off, &coil).answer, None, "the coil echo says off");
        let on = framed(&[0x01, 0x05, 0x00, 0x03, 0xFF, 0x00]);
        let Some((Answer::Data(data), _)) = scan(&on, &coil).answer else {
            panic!("the echo is the answer")
        };
        assert_eq!(coil.response(&data), Response::WriteSingleCoil(3, true));
    }

    #[test]
    fn single_register_and_multiple_coil_writes_are_framed_and_echo_checked() {
        let single = RtuRequest::new(1, &Request::WriteSingleRegister(1, 3)).expect("framed");
        assert_eq!(&single.frame()[..6], &[0x01, 0x06, 0x00, 0x01, 0x00, 0x03]);
        let echo = framed(&[0x01, 0x06, 0x00, 0x01, 0x00, 0x03]);
        let Some((Answer::Data(data), _)) = scan(&echo, &single).answer else {
            panic!("the echo is the answer")
        };
        assert_eq!(single.response(&data), Response::WriteSingleRegister(1, 3));
        let other_value = framed(&[0x01, 0x06, 0x00, 0x01, 0x00, 0x04]);
        assert_eq!(scan(&other_value, &single).answer, None);

        // The specification's example: 10 coils from 19, 1100 1101 0000 0001.
        let bits = [
            true, false, true, true, false, false, true, true, true, false,
        ];
        let coils =
            RtuRequest::new(1, &Request::WriteMultipleCoils(19, bits[..].into())).expect("framed");
        assert_eq!(
            &coils.frame()[..9],
            &[0x01, 0x0F, 0x00, 0x13, 0x00, 0x0A, 0x02, 0xCD, 0x01]
        );
        let echo = framed(&[0x01, 0x0F, 0x00, 0x13, 0x00, 0x0A]);
        let Some((Answer::Data(data), _)) = scan(&echo, &coils).answer else {
            panic!("the echo is the answer")
        };
        assert_eq!(coils.response(&data), Response::WriteMultipleCoils(19, 10));
    }

    #[test]
    fn bits_come_back_without_their_padding() {
        let req = RtuRequest::new(1, &Request::ReadCoils(0, 10)).expect("framed");
        let heard = framed(&[0x01, 0x01, 0x02, 0b0000_0101, 0b1111_1110]);
        let Some((Answer::Data(data), _)) = scan(&heard, &req).answer else {
            panic!("no answer")
        };
        let mut want = vec![true, false, true, false, false, false, false, false];
        want.extend([false, true]);
        assert_eq!(req.response(&data), Response::ReadCoils(want));
    }

    #[test]
    fn frames_are_kept_apart_by_three_and_a_half_characters() {
        let bus = |baud: u32, parity: Parity| BusConfig {
            id: "rs485".into(),
            transport: crate::config::Transport::Rtu,
            address: None,
            device: Some("/dev/null".into()),
            baud,
            parity,
            data_bits: 8,
            stop_bits: 1,
            timeout_ms: 300,
            delay_ms: 0,
            max_registers_per_request: 125,
            max_bits_per_request: 2000,
            max_gap: 0,
            backoff_min_ms: 1000,
            backoff_max_ms: 60_000,
            backoff_after_ms: 60_000,
            client_id: None,
            stale_ms: 10_000,
            max_payload_bytes: 1024 * 1024,
            retained: Default::default(),
            timestamp_pointer: None,
        };
        // 11 bits a character at 9600 baud: 3.5 * 11 / 9600 s.
        assert_eq!(
            frame_gap(&bus(9600, Parity::Even)),
            Duration::from_micros(4010)
        );
        assert_eq!(
            frame_gap(&bus(9600, Parity::None)),
            Duration::from_micros(3645)
        );
        assert_eq!(
            frame_gap(&bus(115_200, Parity::Even)),
            Duration::from_micros(1750)
        );
    }
}
