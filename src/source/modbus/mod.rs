//! Modbus acquisition (TCP and RTU): read planning, decoding and one polling
//! task per bus.
//!
//! - [`plan`]: which requests read a machine's signals (pure).
//! - [`decode`]: registers and bits to values and back, exception names (pure).
//! - `link`: one bus connection, every request under a timeout, one machine's poll.
//! - `rtu`: the RTU master of a serial bus: frames, CRC, and the rule that a
//!   reply is taken only for the request it answers.
//! - [`bus`]: the polling task of a bus: schedule, backoff, writes, counters.
//! - [`once`]: `linegate read --once`, built on the same poll as the bus task.
//!
//! This module reads and writes devices and sends [`crate::source::Sample`]s;
//! it never derives machine states and never touches the store.

pub mod bus;
pub mod decode;
mod link;
pub mod once;
pub mod plan;
mod rtu;

pub use bus::{run_bus, BusStats, BusStatsSnapshot, MachineHealth};
pub use decode::{decode_bit, decode_registers, encode_registers, exception_name, EncodeError};
pub use link::rtu_reply_readings;
pub use once::{read_once, readouts_to_json, MachineReadout, ReadOnceError};
pub use plan::{describe_plan, plan_reads, ReadRequest};

use tokio::sync::oneshot;

use crate::config::Area;

/// One write the order dispatcher asks a bus to make. Only order registers
/// listed in a machine's config are ever written (checked by `orders`).
#[derive(Debug, Clone, PartialEq)]
pub struct RegisterWrite {
    pub area: Area,
    pub address: u16,
    pub data: WriteData,
}

#[derive(Debug, Clone, PartialEq)]
pub enum WriteData {
    Coil(bool),
    Registers(Vec<u16>),
}

/// A batch of writes to one machine, made in order, each read back and
/// compared. The bus answers on `reply` once all are done or one failed.
#[derive(Debug)]
pub struct WriteRequest {
    pub machine: String,
    pub writes: Vec<RegisterWrite>,
    pub reply: oneshot::Sender<Result<(), WriteError>>,
}

/// Why a write batch failed; names the register.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum WriteError {
    #[error("machine {machine}: writing {area} {address}: {reason}")]
    Failed {
        machine: String,
        area: Area,
        address: u16,
        reason: String,
    },
    #[error("machine {machine}: {area} {address} read back {got:?}, wrote {wanted:?}")]
    Mismatch {
        machine: String,
        area: Area,
        address: u16,
        wanted: Vec<u16>,
        got: Vec<u16>,
    },
    #[error("machine {0} is not on this bus")]
    UnknownMachine(String),
}
