//! Southbound sources: everything that reads machines and turns what they say
//! into [`Sample`]s. A source owns its connections (a Modbus bus, a local MQTT
//! broker) and nothing else: it never decides what a machine's state is, never
//! touches the store and never talks upstream. It only sends samples down one
//! channel to the state engine.

pub mod modbus;
pub mod mqtt;
pub mod positions;

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
    #[error("not read: {0}")]
    NoReply(String),
    /// An MQTT payload did not hold the value where the config says.
    #[error("bad payload: {0}")]
    BadPayload(String),
}

/// Result of reading one signal.
pub type Reading = Result<Value, SignalError>;

// A poll's readings are one allocation per sample; kept at 32 bytes a
// reading, the 20 signals of a typical machine (40 bytes each with its
// position in the names table) fit glibc's per-thread cache (chunks up to 1032 bytes), which
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
/// Names are shared [`Arc<str>`]s in a table the source keeps for a machine:
/// a Modbus bus hands the same table to every poll, so a sample costs one
/// pointer for its names instead of a name per reading, and consumers that
/// keep per-signal state can match a sample to the last one position by
/// position ([`positions::SignalPositions`]). (A map of owned names, built and dropped with every poll, was
/// nearly a third of the agent's instructions at 50 machines x 20 signals;
/// a shared name per reading still touched 20 cold names a poll.)
#[derive(Clone, Default)]
pub struct Readings {
    /// Signal names; readings refer to them by position. A source's table
    /// may name signals this sample did not read.
    names: SignalNames,
    /// (position in `names`, reading), in the order read.
    values: Vec<(u32, Reading)>,
}

/// The names of a machine's signals, shared by its samples' [`Readings`].
pub type SignalNames = Arc<Vec<Arc<str>>>;

impl Readings {
    pub fn with_capacity(n: usize) -> Self {
        Readings {
            names: SignalNames::default(),
            values: Vec::with_capacity(n),
        }
    }

    /// Readings of signals named in `names`, added with [`Readings::push_at`].
    pub(crate) fn of_signals(names: SignalNames) -> Self {
        let values = Vec::with_capacity(names.len());
        Readings { names, values }
    }

    /// Set the reading of `name`, replacing one already there.
    pub fn insert(&mut self, name: Arc<str>, reading: Reading) {
        let at = match self.names.iter().position(|n| **n == *name) {
            Some(at) => at,
            None => {
                let names = Arc::make_mut(&mut self.names);
                names.push(name);
                names.len() - 1
            }
        };
        // A machine has far fewer than 2^32 signals: its config says so.
        let at = u32::try_from(at).unwrap_or(u32::MAX);
        match self.values.iter_mut().find(|(p, _)| *p == at) {
            Some((_, r)) => *r = reading,
            None => self.values.push((at, reading)),
        }
    }

    /// Add the reading of the signal at `position` in the names this was
    /// made [`of_signals`](Readings::of_signals), not read yet in this
    /// sample (a source that reads each signal once per sample saves the
    /// search of [`Readings::insert`]).
    pub(crate) fn push_at(&mut self, position: u32, reading: Reading) {
        debug_assert!(
            (position as usize) < self.names.len(),
            "no signal {position}"
        );
        debug_assert!(
            self.values.iter().all(|(p, _)| *p != position),
            "signal {position} read twice"
        );
        self.values.push((position, reading));
    }

    pub fn get(&self, name: &str) -> Option<&Reading> {
        self.iter().find(|(n, _)| &***n == name).map(|(_, r)| r)
    }

    /// Name and reading of each signal, in the order read.
    pub fn iter(&self) -> impl Iterator<Item = (&Arc<str>, &Reading)> {
        self.values
            .iter()
            .filter_map(|(p, r)| self.names.get(*p as usize).map(|n| (n, r)))
    }

    /// Position in [`Readings::names`] and reading of each signal, in the
    /// order read: for consumers that keep per-signal state and match a
    /// names table by pointer, without touching the names.
    pub fn positions(&self) -> impl Iterator<Item = (usize, &Reading)> {
        self.values.iter().map(|(p, r)| (*p as usize, r))
    }

    /// The names table the readings refer to: the same `Arc` for every
    /// sample of a Modbus machine.
    pub fn names(&self) -> &SignalNames {
        &self.names
    }

    pub fn values(&self) -> impl Iterator<Item = &Reading> {
        self.values.iter().map(|(_, r)| r)
    }

    pub fn len(&self) -> usize {
        self.values.len()
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }
}

/// The same signals with the same readings in the same order, whatever the
/// names tables behind them hold.
impl PartialEq for Readings {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len()
            && self
                .iter()
                .zip(other.iter())
                .all(|((a, x), (b, y))| a == b && x == y)
    }
}

impl std::fmt::Debug for Readings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.iter()).finish()
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

    #[test]
    fn readings_of_a_shared_names_table_leave_the_table_alone() {
        let names: SignalNames = Arc::new(vec!["speed".into(), "state".into(), "count".into()]);
        let mut r = Readings::of_signals(names.clone());
        r.push_at(2, Ok(Value::Int(7)));
        r.push_at(0, Ok(Value::Float(1.5)));
        // Read order, not table order; the signal not read is not there.
        let read: Vec<&str> = r.iter().map(|(n, _)| &**n).collect();
        assert_eq!(read, ["count", "speed"]);
        assert_eq!(r.get("state"), None);
        // The readings share the source's names, pointer for pointer.
        assert!(r
            .iter()
            .all(|(n, _)| names.iter().any(|k| Arc::ptr_eq(k, n))));
        // A name the table lacks is added to this sample's copy only.
        r.insert("extra".into(), Ok(Value::Bool(true)));
        r.insert("count".into(), Ok(Value::Int(8)));
        assert_eq!(names.len(), 3);
        assert_eq!(r["extra"], Ok(Value::Bool(true)));
        assert_eq!(r["count"], Ok(Value::Int(8)));
        // Equal means the same names and readings in the same order,
        // whatever tables are behind them.
        let same: Readings = [
            ("count", Ok(Value::Int(8))),
            ("speed", Ok(Value::Float(1.5))),
            ("extra", Ok(Value::Bool(true))),
        ]
        .into_iter()
        .collect();
        assert_eq!(r, same);
        assert_eq!(format!("{same:?}"), format!("{r:?}"));
    }
}
