//! The outbox: every upward message, committed before it is sent.

/// The outbox table (migration "outbox").
pub const SCHEMA_V1: &str = "";
