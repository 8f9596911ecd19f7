//! Southbound sources: everything that reads machines and turns what they say
//! into [`Sample`]s. A source owns its connections (a Modbus bus, a local MQTT
//! broker) and nothing else: it never decides what a machine's state is, never
//! touches the store and never talks upstream. It only sends samples down one
//! channel to the state engine.

pub mod modbus;
pub mod mqtt;

use std::fmt;
use std::sync::Arc;

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
    /// The device answered with a Modbus exception. (The code's name is
    /// looked up when shown, so that a reading stays small: a poll's
    /// readings then fit the allocator's per-thread cache.)
    #[error("modbus exception {code:#04x} ({}) reading {area} {address}", modbus::exception_name(*.code))]
    Exception {
        code: u8,
        area: crate::config::Area,
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

// A poll's readings are one allocation per sample; kept at 32 bytes a
// reading, the 20 signals of a typical machine (48 bytes each with the
// name) fit glibc's per-thread cache (chunks up to 1032 bytes), which
// hands the same memory back poll after poll (BENCHMARKS.md, "Polling").
const _: () = assert!(std::mem::size_of::<Reading>() <= 32);

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
    Signals(Readings),
    /// The machine could not be read at all: it is offline from its last good read.
    Unreachable { reason: String },
}

/// The signals of one sample, each with its reading, in the order the source
/// read them; a name appears at most once.
///
/// Names are shared [`Arc<str>`]s: a Modbus bus hands out the same names on
/// every poll instead of allocating them again, and consumers that keep
/// per-signal state can match a sample to the last one position by
/// position. (A map of owned names, built and dropped with every poll, was
/// nearly a third of the agent's instructions at 50 machines x 20 signals.)
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Readings(Vec<(Arc<str>, Reading)>);

impl Readings {
    pub fn with_capacity(n: usize) -> Self {
        Readings(Vec::with_capacity(n))
    }

    /// Set the reading of `name`, replacing one already there.
    pub fn insert(&mut self, name: Arc<str>, reading: Reading) {
        match self.0.iter_mut().find(|(n, _)| **n == *name) {
            Some((_, r)) => *r = reading,
            None => self.0.push((name, reading)),
        }
    }

    /// Add the reading of a signal not in here yet (a source that reads
    /// each signal once per sample saves the search of [`Readings::insert`]).
    pub(crate) fn push(&mut self, name: Arc<str>, reading: Reading) {
        debug_assert!(self.get(&name).is_none(), "signal {name:?} read twice");
        self.0.push((name, reading));
    }

    pub fn get(&self, name: &str) -> Option<&Reading> {
        self.0.iter().find(|(n, _)| &**n == name).map(|(_, r)| r)
    }

    /// Name and reading of each signal, in the order read.
    pub fn iter(&self) -> impl Iterator<Item = (&Arc<str>, &Reading)> {
        self.0.iter().map(|(n, r)| (n, r))
    }

    pub fn values(&self) -> impl Iterator<Item = &Reading> {
        self.0.iter().map(|(_, r)| r)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<N: Into<Arc<str>>> FromIterator<(N, Reading)> for Readings {
    fn from_iter<I: IntoIterator<Item = (N, Reading)>>(iter: I) -> Self {
        let mut readings = Readings::default();
        for (name, reading) in iter {
            readings.insert(name.into(), reading);
        }
        readings
    }
}

/// `readings["name"]`, for tests and other places where the name is known
/// to be there; panics like a map's index when it is not.
impl std::ops::Index<&str> for Readings {
    type Output = Reading;

    fn index(&self, name: &str) -> &Reading {
        match self.get(name) {
            Some(r) => r,
            None => panic!("no reading of signal {name:?}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readings_keep_their_order_and_one_reading_per_name() {
        let mut r: Readings = [("b", Ok(Value::Int(1))), ("a", Ok(Value::Int(2)))]
            .into_iter()
            .collect();
        r.insert("b".into(), Ok(Value::Int(3)));
        let names: Vec<&str> = r.iter().map(|(n, _)| &**n).collect();
        assert_eq!(names, ["b", "a"]);
        assert_eq!(r.get("b"), Some(&Ok(Value::Int(3))));
        assert_eq!(r["a"], Ok(Value::Int(2)));
        assert_eq!(r.get("c"), None);
        assert_eq!(r.len(), 2);
    }
}
