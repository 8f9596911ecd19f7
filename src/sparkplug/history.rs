//! What the Sparkplug edge node keeps in the store (migration "sparkplug"):
//! its `bdSeq`, and the metric values no host has taken yet. SQL only; each
//! function runs on the store thread with the store's connection.
//!
//! Tables:
//! - `sparkplug_node`: one row per edge node id, its last `bdSeq` (0-255).
//!   A connection takes the next one *before* CONNECT, so the will's NDEATH
//!   and the NBIRTH after it carry the same number, across restarts too.
//! - `sparkplug_history`: metric values changed while no host could take
//!   them (broker unreachable, primary host offline), and live values not
//!   yet confirmed by the broker when the connection broke. `encoded` is the
//!   protobuf `Metric` without name and alias (timestamp of the reading,
//!   datatype, value); `machine` and `metric` name it, so a replay after a
//!   config change finds the alias of now or drops the row (counted).
//!   Life of a row: appended in id order; replayed after the next births
//!   as historical DDATA; deleted once the broker confirmed the publish
//!   (the SUBACK of a SUBSCRIBE sent after it on the same connection).
//!   Bounded by `sparkplug.history_max_rows`: beyond it the oldest signal
//!   values go first, then the oldest others; each drop is counted in
//!   `sparkplug_losses`.
//!
//! It also reads, never writes, two tables of other modules: the closed
//! periods (`period`, machine history) and the book's current orders.

use rusqlite::{params, Connection, OptionalExtension};

use crate::store::StoreError;

pub const SCHEMA_V1: &str = "
CREATE TABLE sparkplug_node (
    edge_node TEXT PRIMARY KEY,
    bd_seq    INTEGER NOT NULL
);
CREATE TABLE sparkplug_history (
    id        INTEGER PRIMARY KEY,
    machine   TEXT NOT NULL,
    metric    TEXT NOT NULL,
    telemetry INTEGER NOT NULL,  -- 1: a signal value (dropped first)
    encoded   BLOB NOT NULL       -- protobuf Metric: timestamp, datatype, value
);
CREATE TABLE sparkplug_losses (
    what  TEXT PRIMARY KEY,       -- 'telemetry' or 'other'
    count INTEGER NOT NULL
);
";

const SELECT_BD_SEQ: &str = "SELECT bd_seq FROM sparkplug_node WHERE edge_node = ?1";
const UPSERT_BD_SEQ: &str = "INSERT INTO sparkplug_node (edge_node, bd_seq) VALUES (?1, ?2)
     ON CONFLICT (edge_node) DO UPDATE SET bd_seq = excluded.bd_seq";
const INSERT_ROW: &str =
    "INSERT INTO sparkplug_history (machine, metric, telemetry, encoded) VALUES (?1, ?2, ?3, ?4)";
const COUNT_ROWS: &str = "SELECT COUNT(*) FROM sparkplug_history";
const DROP_OLDEST: &str = "DELETE FROM sparkplug_history WHERE id IN
     (SELECT id FROM sparkplug_history WHERE telemetry = ?1 ORDER BY id LIMIT ?2)";
const ADD_LOSS: &str = "INSERT INTO sparkplug_losses (what, count) VALUES (?1, ?2)
     ON CONFLICT (what) DO UPDATE SET count = count + excluded.count";
const SELECT_LOSSES: &str = "SELECT what, count FROM sparkplug_losses";
const SELECT_ROWS: &str = "SELECT id, machine, metric, telemetry, encoded FROM sparkplug_history
     WHERE id > ?1 ORDER BY id LIMIT ?2";
const DELETE_ROW: &str = "DELETE FROM sparkplug_history WHERE id = ?1";
const SELECT_PERIODS_AFTER: &str = "SELECT id, json FROM period WHERE id > ?1 ORDER BY id";
const SELECT_LAST_PERIODS: &str = "SELECT id, json FROM period
     WHERE id IN (SELECT MAX(id) FROM period GROUP BY machine) ORDER BY id";

/// One metric value waiting for a host.
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryRow {
    pub machine: String,
    pub metric: String,
    pub telemetry: bool,
    pub encoded: Vec<u8>,
}

/// Take the next `bdSeq` of `edge_node` (0 first, then +1 modulo 256) and
/// keep it.
pub fn next_bd_seq(conn: &Connection, edge_node: &str) -> Result<u64, StoreError> {
    let last: Option<i64> = conn
        .query_row(SELECT_BD_SEQ, [edge_node], |r| r.get(0))
        .optional()?;
    let next = match last {
        Some(n) => (n + 1).rem_euclid(256),
        None => 0,
    };
    conn.execute(UPSERT_BD_SEQ, params![edge_node, next])?;
    Ok(next as u64)
}

/// Append rows in order, then keep at most `max_rows` (oldest telemetry
/// first). Returns how many rows were dropped.
pub fn append(
    conn: &mut Connection,
    rows: &[HistoryRow],
    max_rows: u64,
) -> Result<u64, StoreError> {
    let tx = conn.transaction()?;
    {
        let mut insert = tx.prepare_cached(INSERT_ROW)?;
        for r in rows {
            insert.execute(params![r.machine, r.metric, r.telemetry, r.encoded])?;
        }
    }
    let count: i64 = tx.query_row(COUNT_ROWS, [], |r| r.get(0))?;
    let mut over = (count as u64).saturating_sub(max_rows);
    let mut dropped = 0;
    for (telemetry, what) in [(true, "telemetry"), (false, "other")] {
        if over == 0 {
            break;
        }
        let n = tx.execute(DROP_OLDEST, params![telemetry, over as i64])? as u64;
        if n > 0 {
            tx.execute(ADD_LOSS, params![what, n as i64])?;
        }
        over -= n.min(over);
        dropped += n;
    }
    tx.commit()?;
    Ok(dropped)
}

/// Rows after `after_id`, at most `limit`, in id order.
pub fn rows_after(
    conn: &Connection,
    after_id: i64,
    limit: usize,
) -> Result<Vec<(i64, HistoryRow)>, StoreError> {
    let mut stmt = conn.prepare_cached(SELECT_ROWS)?;
    let rows = stmt
        .query_map(params![after_id, limit as i64], |r| {
            Ok((
                r.get(0)?,
                HistoryRow {
                    machine: r.get(1)?,
                    metric: r.get(2)?,
                    telemetry: r.get(3)?,
                    encoded: r.get(4)?,
                },
            ))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

/// Delete rows the broker confirmed.
pub fn delete(conn: &mut Connection, ids: &[i64]) -> Result<(), StoreError> {
    let tx = conn.transaction()?;
    {
        let mut stmt = tx.prepare_cached(DELETE_ROW)?;
        for id in ids {
            stmt.execute([id])?;
        }
    }
    tx.commit()?;
    Ok(())
}

/// Rows waiting and drops counted so far: (rows, dropped telemetry, dropped other).
pub fn counts(conn: &Connection) -> Result<(u64, u64, u64), StoreError> {
    let rows: i64 = conn.query_row(COUNT_ROWS, [], |r| r.get(0))?;
    let mut stmt = conn.prepare_cached(SELECT_LOSSES)?;
    let mut telemetry = 0;
    let mut other = 0;
    for row in stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))? {
        let (what, n) = row?;
        match what.as_str() {
            "telemetry" => telemetry = n as u64,
            _ => other = n as u64,
        }
    }
    Ok((rows as u64, telemetry, other))
}

/// Closed periods stored after row `after_id` (all machines), as
/// (row id, period). `after_id = None`: the last one of each machine.
pub fn periods_after(
    conn: &Connection,
    after_id: Option<i64>,
) -> Result<Vec<(i64, crate::machine::ClosedPeriod)>, StoreError> {
    let mut stmt = match after_id {
        Some(_) => conn.prepare_cached(SELECT_PERIODS_AFTER)?,
        None => conn.prepare_cached(SELECT_LAST_PERIODS)?,
    };
    let map = |r: &rusqlite::Row<'_>| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?));
    let raw: Vec<(i64, String)> = match after_id {
        Some(id) => stmt.query_map([id], map)?.collect::<Result<_, _>>()?,
        None => stmt.query_map([], map)?.collect::<Result<_, _>>()?,
    };
    // A row that does not parse (never written by this version) is skipped.
    Ok(raw
        .into_iter()
        .filter_map(|(id, json)| serde_json::from_str(&json).ok().map(|p| (id, p)))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn() -> Connection {
        let c = Connection::open_in_memory().expect("sqlite");
        c.execute_batch(SCHEMA_V1).expect("schema");
        c
    }

    fn row(telemetry: bool, n: u8) -> HistoryRow {
        HistoryRow {
            machine: "m1".into(),
            metric: if telemetry {
                "Signals/a"
            } else {
                "State/State"
            }
            .into(),
            telemetry,
            encoded: vec![n],
        }
    }

    #[test]
    fn bd_seq_starts_at_0_and_wraps_after_255() {
        let c = conn();
        assert_eq!(next_bd_seq(&c, "gw").ok(), Some(0));
        assert_eq!(next_bd_seq(&c, "gw").ok(), Some(1));
        c.execute(UPSERT_BD_SEQ, params!["gw", 255]).expect("set");
        assert_eq!(next_bd_seq(&c, "gw").ok(), Some(0));
        assert_eq!(next_bd_seq(&c, "other").ok(), Some(0));
    }

    #[test]
    fn a_full_history_drops_the_oldest_signal_values_first_and_counts_them() {
        let mut c = conn();
        let rows = [row(false, 1), row(true, 2), row(true, 3), row(false, 4)];
        assert_eq!(append(&mut c, &rows, 3).ok(), Some(1));
        let left: Vec<u8> = rows_after(&c, 0, 10)
            .expect("rows")
            .into_iter()
            .map(|(_, r)| r.encoded[0])
            .collect();
        assert_eq!(left, vec![1, 3, 4]);
        // Only state rows left beyond the bound: the oldest of them go.
        assert_eq!(
            append(&mut c, &[row(false, 5), row(false, 6)], 2).ok(),
            Some(3)
        );
        let left: Vec<u8> = rows_after(&c, 0, 10)
            .expect("rows")
            .into_iter()
            .map(|(_, r)| r.encoded[0])
            .collect();
        assert_eq!(left, vec![5, 6]);
        assert_eq!(counts(&c).ok(), Some((2, 2, 2)));
    }
}
