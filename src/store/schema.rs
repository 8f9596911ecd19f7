//! Versioned migrations of the store. `PRAGMA user_version` holds how many
//! have run; each runs once, in its own transaction, in list order. A
//! migration is never edited after it shipped: change the schema by adding
//! one at the end. The SQL of each table lives with the module that owns it.

use std::path::Path;

use rusqlite::Connection;

use super::StoreError;

/// Last value and error of each signal. The agent writes what changed every
/// 5 s; the `read_at` of a value that does not change is refreshed every minute.
pub const SIGNALS_V1: &str = "
CREATE TABLE signal_value (
    machine    TEXT NOT NULL,
    signal     TEXT NOT NULL,
    value      TEXT,          -- JSON of the decoded value, NULL when the read failed
    error      TEXT,          -- why the last read failed, NULL when it worked
    read_at    TEXT NOT NULL, -- RFC 3339 UTC
    PRIMARY KEY (machine, signal)
);
CREATE TABLE machine_read (
    machine    TEXT PRIMARY KEY,
    last_ok_at TEXT,
    last_error TEXT,
    reads      INTEGER NOT NULL DEFAULT 0,
    errors     INTEGER NOT NULL DEFAULT 0
);
";

/// The migrations, in order. Index + 1 is the schema version after it ran.
pub const MIGRATIONS: &[(&str, &str)] = &[
    ("signals", SIGNALS_V1),
    ("machine history", crate::machine::history::SCHEMA_V1),
    ("outbox", crate::uplink::outbox::SCHEMA_V1),
    ("orders", crate::orders::book::SCHEMA_V1),
    ("uplink session", crate::uplink::session::SCHEMA_V1),
    ("observation marks", crate::machine::history::MARKS_V1),
    ("store losses", super::health::SCHEMA_V1),
    ("bus stats", super::bus_stats::SCHEMA_V1),
    ("scorecard", crate::orders::scorecard_task::SCHEMA_V1),
    ("uplink state", crate::uplink::status::SCHEMA_V1),
    ("sparkplug", crate::sparkplug::history::SCHEMA_V1),
    ("order forecasts", crate::orders::outlook::SCHEMA_V1),
    ("line marks", crate::machine::history::LINE_MARKS_V1),
];

pub(super) fn migrate(conn: &mut Connection, path: &Path) -> Result<(), StoreError> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let known = MIGRATIONS.len() as i64;
    if version > known {
        return Err(StoreError::TooNew {
            path: path.to_path_buf(),
            found: version,
            known,
        });
    }
    for (i, (name, sql)) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        // IMMEDIATE takes the write lock first, and the version is read again
        // under it: two processes opening a new store at once (the agent and
        // a CLI command) migrate it once, the second finds it done.
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let now: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if now > i as i64 {
            tx.commit()?;
            continue;
        }
        tx.execute_batch(sql).map_err(|e| {
            tracing::error!(migration = name, error = %e, "store migration failed");
            e
        })?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
    }
    Ok(())
}
