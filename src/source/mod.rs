//! Southbound sources: everything that reads machines and turns what they say
//! into [`Sample`]s. A source owns its connections (a Modbus bus, a local MQTT
//! broker) and nothing else: it never decides what a machine's state is, never
//! touches the store and never talks upstream. It only sends samples down one
//! channel to the state engine.

pub mod modbus;
pub mod mqtt;

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// A decoded signal value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Value {
    Bool(bool),
    Int(i64),
    /// Unsigned values above i64::MAX (u64 signals).
    UInt(u64),
    Float(f64),
    Text(String),
}

impl Value {
    /// The value as a number, if it is one (bools are 0/1).
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Bool(b) => Some(if *b { 1.0 } else { 0.0 }),
            Value::Int(i) => Some(*i as f64),
            Value::UInt(u) => Some(*u as f64),
            Value::Float(f) => Some(*f),
            Value::Text(_) => None,
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Bool(b) => write!(f, "{b}"),
            Value::Int(i) => write!(f, "{i}"),
            Value::UInt(u) => write!(f, "{u}"),
            Value::Float(x) => write!(f, "{x}"),
            Value::Text(s) => write!(f, "{s:?}"),
        }
    }
}

/// Why one signal has no value in a sample.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum SignalError {
    /// The device answered with a Modbus exception.
    #[error("modbus exception {code:#04x} ({name}) reading {area} {address}")]
    Exception {
        code: u8,
        name: String,
        area: String,
        address: u16,
    },
    /// The registers decode to no usable value (NaN, infinity, bad UTF-8, ...).
    #[error("bad value: {0}")]
    BadValue(String),
    /// The device did not answer, or the connection failed.
    #[error("no reply: {0}")]
    NoReply(String),
    /// An MQTT payload did not hold the value where the config says.
    #[error("bad payload: {0}")]
    BadPayload(String),
}

/// Result of reading one signal.
pub type Reading = Result<Value, SignalError>;

/// What one poll (or one MQTT message) of a machine produced.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The machine id from the config.
    pub machine: String,
    /// Wall-clock time of the read, for reports.
    pub at: DateTime<Utc>,
    /// Monotonic time of the read, for durations (wall clock may jump).
    pub mono: tokio::time::Instant,
    pub content: SampleContent,
}

#[derive(Debug, Clone, PartialEq)]
pub enum SampleContent {
    /// Signals read in this poll. A partial update (MQTT) holds only the signals that arrived.
    Signals(BTreeMap<String, Reading>),
    /// The machine could not be read at all: it is offline from its last good read.
    Unreachable { reason: String },
}
