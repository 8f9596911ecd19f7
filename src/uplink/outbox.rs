//! The outbox: every upward message, committed before it is sent.

use chrono::{DateTime, Utc};

use crate::store::StoreError;

/// The outbox table (migration "outbox").
pub const SCHEMA_V1: &str = "";

/// What may be dropped when the outbox is full: telemetry only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageClass {
    /// Signal values: the oldest are dropped first when the outbox is full.
    Telemetry,
    /// State changes, periods, order statuses: never dropped.
    Durable,
}

/// An upward message before it has its envelope (`gateway`, `seq`, `historical`).
#[derive(Debug, Clone, PartialEq)]
pub struct Outgoing {
    /// Topic below the prefix, e.g. `m/press07/state` or `orders/status`.
    pub topic_suffix: String,
    pub class: MessageClass,
    pub retain: bool,
    /// When the fact happened (the envelope's `ts`).
    pub ts: DateTime<Utc>,
    /// The contract payload without the envelope fields.
    pub body: serde_json::Map<String, serde_json::Value>,
}

/// Commit `msg` to the outbox inside the caller's transaction; returns its `seq`.
pub fn enqueue(_conn: &rusqlite::Connection, _msg: &Outgoing) -> Result<u64, StoreError> {
    Err(StoreError::Closed)
}
