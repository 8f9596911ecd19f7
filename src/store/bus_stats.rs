//! The buses' counters as `linegate status` reads them: the CLI is another
//! process than the agent, so the agent copies each bus's counters here
//! every few seconds (and once more when it stops).
//!
//! Table `bus_stats` (migration "bus stats"): one row per running bus,
//! `bus` (its id), `transport` (`tcp`, `rtu`, `mqtt`), `since` (when its
//! task started counting: counters start at zero with every start of the
//! task, a reload that restarts the bus included), `at` (when the copy was
//! taken) and `counters` (JSON object of counter name → count). Every write
//! replaces the whole table in one transaction, so a bus that a reload
//! removed disappears with the next write.
//!
//! The counters themselves are counted in one place only, the stats of the
//! bus task (`source::modbus::BusStats`, `source::mqtt::MqttBusStats`); this
//! module never counts, it only stores and reads copies, and says what a row
//! means in one line ([`describe`]).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use rusqlite::{params, Connection};

use super::StoreError;

/// The table (migration "bus stats").
pub const SCHEMA_V1: &str = "
CREATE TABLE bus_stats (
    bus       TEXT PRIMARY KEY,
    transport TEXT NOT NULL,  -- tcp | rtu | mqtt
    since     TEXT NOT NULL,  -- RFC 3339 UTC: when the bus task started counting
    at        TEXT NOT NULL,  -- RFC 3339 UTC: when these counts were copied
    counters  TEXT NOT NULL   -- JSON object: counter name -> count since `since`
);
";

const DELETE_ALL: &str = "DELETE FROM bus_stats";

const INSERT_BUS: &str =
    "INSERT INTO bus_stats (bus, transport, since, at, counters) VALUES (?1, ?2, ?3, ?4, ?5)";

const SELECT_ALL: &str = "SELECT bus, transport, since, at, counters FROM bus_stats ORDER BY bus";

/// One bus's counters at one moment.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct BusCounts {
    pub bus: String,
    pub transport: String,
    pub since: DateTime<Utc>,
    pub at: DateTime<Utc>,
    pub counters: BTreeMap<String, u64>,
}

impl BusCounts {
    /// A counter by name; 0 when the row does not have it (an older agent).
    pub fn get(&self, name: &str) -> u64 {
        self.counters.get(name).copied().unwrap_or(0)
    }
}

/// Replace the table with `rows`, in one transaction.
pub fn write_all(conn: &Connection, rows: &[BusCounts]) -> Result<(), StoreError> {
    // A copy for `linegate status`: a power cut may undo the last one.
    super::commit_unsynced(conn, |tx| {
        tx.execute(DELETE_ALL, [])?;
        let mut insert = tx.prepare_cached(INSERT_BUS)?;
        for r in rows {
            // A map of names to integers always serialises.
            let counters = serde_json::to_string(&r.counters).unwrap_or_else(|_| "{}".into());
            insert.execute(params![
                r.bus,
                r.transport,
                crate::machine::history::ts(r.since),
                crate::machine::history::ts(r.at),
                counters
            ])?;
        }
        Ok(())
    })
}

/// Every bus's last copied counters, by bus id. A row that does not parse
/// (a hand-edited store) comes back with what could be read, never an error.
pub fn read_all(conn: &Connection) -> Result<Vec<BusCounts>, StoreError> {
    let mut stmt = conn.prepare(SELECT_ALL)?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, String>(3)?,
            r.get::<_, String>(4)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (bus, transport, since, at, counters) = row?;
        let time = |s: &str| {
            DateTime::parse_from_rfc3339(s)
                .map(|t| t.with_timezone(&Utc))
                .unwrap_or(DateTime::<Utc>::UNIX_EPOCH)
        };
        out.push(BusCounts {
            bus,
            transport,
            since: time(&since),
            at: time(&at),
            counters: serde_json::from_str(&counters).unwrap_or_default(),
        });
    }
    Ok(out)
}

/// `n thing` or `n things`.
fn count(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// The line of `linegate status` for one bus, e.g.
/// `bus cell-a (tcp): 1234 requests, 3 timeouts, 0 errors, 1 reconnect`.
pub fn describe(b: &BusCounts) -> String {
    let mut parts = Vec::new();
    match b.transport.as_str() {
        "mqtt" => {
            parts.push(count(b.get("connections"), "connection", "connections"));
            parts.push(format!("{} oversized refused", b.get("refused_oversized")));
            parts.push(format!("{} retained ignored", b.get("retained_ignored")));
            parts.push(format!("{} retained used", b.get("retained_used")));
        }
        _ => {
            parts.push(count(b.get("requests"), "request", "requests"));
            parts.push(count(b.get("timeouts"), "timeout", "timeouts"));
            parts.push(count(b.get("errors"), "error", "errors"));
            parts.push(count(b.get("reconnects"), "reconnect", "reconnects"));
            if b.transport == "rtu" {
                parts.push(format!("{} discarded bytes", b.get("discarded_bytes")));
            }
        }
    }
    format!(
        "bus {} ({}): {} (since {}, as of {})",
        b.bus,
        b.transport,
        parts.join(", "),
        b.since.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        b.at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(bus: &str, transport: &str, counters: &[(&str, u64)]) -> BusCounts {
        let t = DateTime::parse_from_rfc3339("2026-03-02T06:00:00Z")
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_default();
        BusCounts {
            bus: bus.into(),
            transport: transport.into(),
            since: t,
            at: t + chrono::Duration::seconds(65),
            counters: counters.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
        }
    }

    #[test]
    fn a_modbus_tcp_bus_line_names_requests_timeouts_errors_and_reconnects() {
        let line = describe(&row(
            "cell-a",
            "tcp",
            &[
                ("requests", 1234),
                ("timeouts", 3),
                ("errors", 0),
                ("reconnects", 1),
            ],
        ));
        assert_eq!(
            line,
            "bus cell-a (tcp): 1234 requests, 3 timeouts, 0 errors, 1 reconnect \
             (since 2026-03-02T06:00:00Z, as of 2026-03-02T06:01:05Z)"
        );
    }

    #[test]
    fn a_serial_bus_line_adds_the_discarded_bytes_and_a_missing_counter_reads_zero() {
        let line = describe(&row(
            "line-1",
            "rtu",
            &[("requests", 1), ("discarded_bytes", 7)],
        ));
        assert!(
            line.starts_with(
                "bus line-1 (rtu): 1 request, 0 timeouts, 0 errors, 0 reconnects, 7 discarded bytes"
            ),
            "{line}"
        );
    }

    #[test]
    fn an_mqtt_bus_line_names_what_was_refused_and_ignored() {
        let line = describe(&row(
            "line-plc",
            "mqtt",
            &[
                ("connections", 1),
                ("refused_oversized", 2),
                ("retained_ignored", 5),
            ],
        ));
        assert!(
            line.starts_with(
                "bus line-plc (mqtt): 1 connection, 2 oversized refused, 5 retained ignored, 0 retained used"
            ),
            "{line}"
        );
    }

    #[test]
    fn each_write_replaces_the_table_so_a_removed_bus_disappears() -> Result<(), StoreError> {
        let conn = Connection::open_in_memory()?;
        conn.execute_batch(SCHEMA_V1)?;
        let a = row("cell-a", "tcp", &[("requests", 10)]);
        let b = row("line-plc", "mqtt", &[("refused_oversized", 1)]);
        write_all(&conn, &[a.clone(), b.clone()])?;
        assert_eq!(read_all(&conn)?, vec![a.clone(), b]);
        let a2 = row("cell-a", "tcp", &[("requests", 12)]);
        write_all(&conn, std::slice::from_ref(&a2))?;
        assert_eq!(read_all(&conn)?, vec![a2]);
        Ok(())
    }
}
