//! Orders and their states in the store.

/// Order tables (migration "orders").
pub const SCHEMA_V1: &str = "";
