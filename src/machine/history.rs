//! State changes, closed periods and the open-period snapshot of each machine
//! in the store: the SQL and the functions that run it on the store thread.

/// Tables of machine history (migration "machine history").
pub const SCHEMA_V1: &str = "";
