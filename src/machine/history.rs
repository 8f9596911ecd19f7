//! State changes, closed periods and the open-period snapshot of each machine
//! in the store: the SQL and the functions that run it on the store thread
//! (each takes the store's `&rusqlite::Connection`).
//!
//! Tables (migration "machine history"):
//! - `state_change`: one row per reported state change, in arrival order.
//! - `period`: one row per closed period; `json` is the [`ClosedPeriod`]
//!   exactly as the engine closed it, `machine`/`kind`/`start_at`/`end_at`
//!   are copies for lookups. `(machine, kind, start_at)` is unique. Two
//!   different periods never share a start (the accounting's timeline never
//!   goes back, and each snapshot is stored with the changes and periods
//!   before it, so a restart never closes a stored period again); a row that
//!   would repeat one is not stored, logged as an error, and [`record`]
//!   returns false so it is not sent twice.
//! - `machine_snapshot`: the latest [`AccountSnapshot`] of each machine,
//!   read at start-up to resume and by `linegate status`. The engine sends
//!   one right after every state change or period (same or next event, and
//!   the agent commits them in one transaction) and every few seconds when
//!   more than time passed (at least once a minute); `linegate status`
//!   projects it to the machine's mark.
//! - `line_observed` (migration "line marks"; `machine_observed` of the
//!   migration "observation marks" before it, still read): up to when each
//!   machine's time was attributed, written about once a second; loaded
//!   into the snapshot's `observed_to`, so a crash costs at most about half
//!   a second of observed time.
//!
//! Instants are stored as RFC 3339 UTC text with milliseconds
//! (`2026-11-26T08:00:00.125Z`), which sorts in time order.
//! Telemetry is not kept here. This module never decides anything.

use chrono::{DateTime, SecondsFormat, Utc};
use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};

use super::accounting::AccountSnapshot;
use super::{ClosedPeriod, MachineEvent, MachineState, PeriodKind, StateChange};
use crate::store::StoreError;

/// Tables of machine history (migration "machine history").
pub const SCHEMA_V1: &str = "
CREATE TABLE state_change (
    id       INTEGER PRIMARY KEY,
    machine  TEXT NOT NULL,
    state    TEXT NOT NULL,
    prev     TEXT,
    since    TEXT NOT NULL,   -- RFC 3339 UTC, when the change happened
    reason   TEXT
);
CREATE INDEX state_change_by_machine ON state_change (machine, since);
CREATE INDEX state_change_by_since ON state_change (since);
CREATE TABLE period (
    id        INTEGER PRIMARY KEY,
    machine   TEXT NOT NULL,
    kind      TEXT NOT NULL,  -- 'interval' or 'shift:<name>'
    start_at  TEXT NOT NULL,
    end_at    TEXT NOT NULL,
    json      TEXT NOT NULL,  -- the ClosedPeriod
    UNIQUE (machine, kind, start_at)
);
CREATE INDEX period_by_start ON period (start_at);
CREATE INDEX period_by_end ON period (end_at);
CREATE TABLE machine_snapshot (
    machine   TEXT PRIMARY KEY,
    json      TEXT NOT NULL,  -- the AccountSnapshot
    saved_at  TEXT NOT NULL
);
";

/// Up to when each machine's time was attributed (migration "observation marks").
pub const MARKS_V1: &str = "
CREATE TABLE machine_observed (
    machine     TEXT PRIMARY KEY,
    observed_to TEXT NOT NULL   -- RFC 3339 UTC
);
";

/// Every machine's mark in one row (migration "line marks"): one write per
/// commit, whatever the number of machines. (One row per machine, eight to
/// a statement, was a tenth of the agent's instructions at 50 machines.)
pub const LINE_MARKS_V1: &str = "
CREATE TABLE line_observed (
    id    INTEGER PRIMARY KEY CHECK (id = 1),
    marks TEXT NOT NULL   -- JSON: {machine: attributed up to, ms since the epoch}
);
";

/// Marks of the first schema (`machine_observed`): no longer written, still
/// read (the later of the two wins), so a store upgraded in place keeps them.
const SELECT_MARKS: &str = "SELECT machine, observed_to FROM machine_observed";
const SELECT_LINE_MARKS: &str = "SELECT marks FROM line_observed WHERE id = 1";
const UPSERT_LINE_MARKS: &str = "INSERT INTO line_observed (id, marks) VALUES (1, ?1)
     ON CONFLICT (id) DO UPDATE SET marks = excluded.marks";

const INSERT_STATE: &str =
    "INSERT INTO state_change (machine, state, prev, since, reason) VALUES (?1, ?2, ?3, ?4, ?5)";
const INSERT_PERIOD: &str = "INSERT OR IGNORE INTO period (machine, kind, start_at, end_at, json)
     VALUES (?1, ?2, ?3, ?4, ?5)";
const UPSERT_SNAPSHOT: &str =
    "INSERT INTO machine_snapshot (machine, json, saved_at) VALUES (?1, ?2, ?3)
     ON CONFLICT (machine) DO UPDATE SET json = excluded.json, saved_at = excluded.saved_at";
const SELECT_SNAPSHOTS: &str = "SELECT machine, json FROM machine_snapshot ORDER BY machine";
const SELECT_PERIODS: &str = "SELECT json FROM period
     WHERE (?1 IS NULL OR machine = ?1) AND (?2 IS NULL OR end_at > ?2) AND (?3 IS NULL OR start_at < ?3)
     ORDER BY start_at, machine, kind";
const SELECT_LAST_CHANGES: &str = "SELECT s.machine, s.state, s.since, s.reason FROM state_change s
     WHERE s.id = (SELECT MAX(id) FROM state_change t WHERE t.machine = s.machine)
     ORDER BY s.machine";
const SELECT_STATE_CHANGES: &str = "SELECT machine, state, prev, since, reason FROM state_change
     WHERE (?1 IS NULL OR machine = ?1) AND (?2 IS NULL OR since >= ?2) AND (?3 IS NULL OR since < ?3)
     ORDER BY id";
const DELETE_OLD_STATES: &str = "DELETE FROM state_change WHERE since < ?1";
const DELETE_OLD_PERIODS: &str = "DELETE FROM period WHERE end_at < ?1";

/// An instant as stored.
pub fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn kind_key(kind: &PeriodKind) -> String {
    match kind {
        PeriodKind::Interval => "interval".into(),
        PeriodKind::Shift { name } => format!("shift:{name}"),
    }
}

fn json_err(e: serde_json::Error) -> StoreError {
    StoreError::Sql(rusqlite::Error::ToSqlConversionFailure(Box::new(e)))
}

fn parse_state(s: &str) -> Option<MachineState> {
    serde_json::from_value(serde_json::Value::String(s.to_string())).ok()
}

/// Keep a state change, a closed period, a snapshot or an observation mark.
/// Returns whether a row was added that is to be sent (false for telemetry,
/// snapshots and marks, and for a period already stored).
pub fn record(conn: &Connection, event: &MachineEvent) -> Result<bool, StoreError> {
    match event {
        MachineEvent::State(c) => {
            conn.prepare_cached(INSERT_STATE)?.execute(params![
                c.machine,
                c.state.as_str(),
                c.prev.map(MachineState::as_str),
                ts(c.since),
                c.reason
            ])?;
            Ok(true)
        }
        MachineEvent::Period(p) => {
            let json = serde_json::to_string(p).map_err(json_err)?;
            let n = conn.prepare_cached(INSERT_PERIOD)?.execute(params![
                p.machine,
                kind_key(&p.kind),
                ts(p.start),
                ts(p.end),
                json
            ])?;
            if n == 0 {
                tracing::error!(
                    machine = %p.machine,
                    kind = %kind_key(&p.kind),
                    start = %ts(p.start),
                    end = %ts(p.end),
                    "a period with this start is already stored: this one is not stored or sent"
                );
            }
            Ok(n == 1)
        }
        MachineEvent::Snapshot(snap) => {
            save_snapshot(conn, snap)?;
            Ok(false)
        }
        MachineEvent::Observed { machine, to } => {
            record_marks(conn, &[(machine.as_str(), *to)])?;
            Ok(false)
        }
        MachineEvent::Telemetry(_) => Ok(false),
    }
}

/// Keep these observation marks, in order (a machine's later mark replaces
/// its earlier): the line's row is read, changed and written once.
pub fn record_marks(conn: &Connection, marks: &[(&str, DateTime<Utc>)]) -> Result<(), StoreError> {
    if marks.is_empty() {
        return Ok(());
    }
    let mut all = line_marks(conn)?;
    for (machine, to) in marks {
        let ms = to.timestamp_millis();
        match all.get_mut(*machine) {
            Some(m) => *m = ms,
            None => {
                all.insert((*machine).to_string(), ms);
            }
        }
    }
    let json = serde_json::to_string(&all).map_err(json_err)?;
    conn.prepare_cached(UPSERT_LINE_MARKS)?.execute([json])?;
    Ok(())
}

/// The line's row of marks; empty when there is none, or when it cannot be
/// read (logged: the marks only narrow what a crash costs, and the next
/// commit writes them again).
fn line_marks(conn: &Connection) -> Result<std::collections::BTreeMap<String, i64>, StoreError> {
    let json: Option<String> = conn
        .prepare_cached(SELECT_LINE_MARKS)?
        .query_row([], |r| r.get(0))
        .optional()?;
    Ok(match json {
        None => Default::default(),
        Some(json) => serde_json::from_str(&json).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "unreadable observation marks ignored");
            Default::default()
        }),
    })
}

/// Save the open period of one machine (replaces the previous one).
pub fn save_snapshot(conn: &Connection, snapshot: &AccountSnapshot) -> Result<(), StoreError> {
    save_snapshot_in(conn, snapshot, &mut Vec::new())
}

/// [`save_snapshot`], writing the JSON into `buf` (cleared first), so that
/// saving many reuses one buffer instead of growing a new one for each.
fn save_snapshot_in(
    conn: &Connection,
    snapshot: &AccountSnapshot,
    buf: &mut Vec<u8>,
) -> Result<(), StoreError> {
    buf.clear();
    serde_json::to_writer(&mut *buf, snapshot).map_err(json_err)?;
    // serde_json writes UTF-8 only; checked rather than assumed.
    let json =
        std::str::from_utf8(buf).map_err(|e| StoreError::Sql(rusqlite::Error::Utf8Error(e)))?;
    conn.prepare_cached(UPSERT_SNAPSHOT)?.execute(params![
        snapshot.machine,
        json,
        ts(snapshot.saved_at)
    ])?;
    Ok(())
}

/// A snapshot encoded as its row, ready to bind: encoded where the
/// snapshot is taken from the engine, so the commit that stores it (often
/// the one carrying a poll's messages) does not spend its time on JSON.
#[derive(Debug, Clone)]
pub struct SnapshotRow {
    machine: String,
    json: String,
    saved_at: String,
}

impl SnapshotRow {
    pub fn of(snapshot: &AccountSnapshot) -> Result<Self, StoreError> {
        Ok(SnapshotRow {
            machine: snapshot.machine.clone(),
            json: serde_json::to_string(snapshot).map_err(json_err)?,
            saved_at: ts(snapshot.saved_at),
        })
    }

    pub fn machine(&self) -> &str {
        &self.machine
    }
}

/// Save an encoded snapshot (replaces the machine's previous one), as
/// [`save_snapshot`] does.
pub fn save_snapshot_row(conn: &Connection, row: &SnapshotRow) -> Result<(), StoreError> {
    conn.prepare_cached(UPSERT_SNAPSHOT)?
        .execute(params![row.machine, row.json, row.saved_at])?;
    Ok(())
}

/// Save several snapshots in one transaction.
pub fn save_snapshots(
    conn: &mut Connection,
    snapshots: &[(String, AccountSnapshot)],
) -> Result<(), StoreError> {
    let tx = conn.transaction()?;
    let mut buf = Vec::with_capacity(1024);
    for (_, s) in snapshots {
        save_snapshot_in(&tx, s, &mut buf)?;
    }
    tx.commit()?;
    Ok(())
}

/// Every saved snapshot, with its machine's observation mark as
/// `observed_to` when the mark is later. One that cannot be read (written by
/// an incompatible version) is skipped with a warning: the machine then
/// starts fresh.
pub fn load_snapshots(conn: &Connection) -> Result<Vec<(String, AccountSnapshot)>, StoreError> {
    let mut marks: std::collections::HashMap<String, DateTime<Utc>> = line_marks(conn)?
        .into_iter()
        .filter_map(|(machine, ms)| Some((machine, DateTime::from_timestamp_millis(ms)?)))
        .collect();
    {
        let mut stmt = conn.prepare_cached(SELECT_MARKS)?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
        for row in rows {
            let (machine, at) = row?;
            match DateTime::parse_from_rfc3339(&at) {
                Ok(t) => {
                    let t = t.with_timezone(&Utc);
                    let m = marks.entry(machine).or_insert(t);
                    *m = (*m).max(t);
                }
                Err(e) => {
                    tracing::warn!(machine = %machine, error = %e, "unreadable observation mark ignored")
                }
            }
        }
    }
    let mut stmt = conn.prepare_cached(SELECT_SNAPSHOTS)?;
    let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
    let mut out = Vec::new();
    for row in rows {
        let (machine, json) = row?;
        match serde_json::from_str::<AccountSnapshot>(&json) {
            Ok(mut s) => {
                s.observed_to = marks.get(&machine).copied().filter(|m| *m > s.committed_to);
                out.push((machine, s))
            }
            Err(e) => {
                tracing::warn!(machine = %machine, error = %e, "unreadable machine snapshot ignored")
            }
        }
    }
    Ok(out)
}

/// Closed periods that overlap `[from, to)`, oldest first; `machine` narrows to one.
pub fn periods(
    conn: &Connection,
    machine: Option<&str>,
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
) -> Result<Vec<ClosedPeriod>, StoreError> {
    let mut stmt = conn.prepare_cached(SELECT_PERIODS)?;
    let rows = stmt.query_map(params![machine, from.map(ts), to.map(ts)], |r| {
        r.get::<_, String>(0)
    })?;
    let mut out = Vec::new();
    for json in rows {
        let json = json?;
        match serde_json::from_str::<ClosedPeriod>(&json) {
            Ok(p) => out.push(p),
            Err(e) => tracing::warn!(error = %e, "unreadable period row skipped"),
        }
    }
    Ok(out)
}

/// Stored state changes in the order they were recorded, with `since` in
/// `[from, to)`; `machine` narrows to one. A row that cannot be read (an
/// unknown state name) is skipped with a warning.
pub fn state_changes(
    conn: &Connection,
    machine: Option<&str>,
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
) -> Result<Vec<StateChange>, StoreError> {
    let mut stmt = conn.prepare_cached(SELECT_STATE_CHANGES)?;
    let rows = stmt.query_map(params![machine, from.map(ts), to.map(ts)], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, Option<String>>(2)?,
            r.get::<_, String>(3)?,
            r.get::<_, Option<String>>(4)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (machine, state, prev, since, reason) = row?;
        let since = DateTime::parse_from_rfc3339(&since)
            .ok()
            .map(|t| t.with_timezone(&Utc));
        match (parse_state(&state), since) {
            (Some(state), Some(since)) => out.push(StateChange {
                machine,
                state,
                prev: prev.as_deref().and_then(parse_state),
                since,
                reason,
            }),
            _ => {
                tracing::warn!(machine = %machine, state = %state, "unreadable state change row skipped")
            }
        }
    }
    Ok(out)
}

/// What `linegate status` shows about one machine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MachineStatus {
    pub machine: String,
    pub state: MachineState,
    pub since: DateTime<Utc>,
    pub reason: Option<String>,
    /// When this was last saved (the agent may have stopped since).
    pub saved_at: Option<DateTime<Utc>>,
    /// The open interval period so far (`end` = how far it is attributed).
    pub period: Option<ClosedPeriod>,
    /// Counting signals that were preset (counted as zero): how often, the latest.
    #[serde(default)]
    pub counter_presets: Vec<crate::machine::counters::SignalPresets>,
}

/// Each machine's latest known state and current period, from the
/// snapshots, each projected to its machine's "attributed up to" mark (the
/// engine does not store a snapshot again while only time passes: see
/// [`AccountSnapshot::implies`]); machines with state changes but no
/// snapshot show their last change.
pub fn current(conn: &Connection) -> Result<Vec<MachineStatus>, StoreError> {
    let mut out: Vec<MachineStatus> = load_snapshots(conn)?
        .into_iter()
        .map(|(machine, s)| {
            let s = match s.observed_to.and_then(|to| s.projected(to)) {
                Some(p) => p,
                None => s,
            };
            MachineStatus {
                machine,
                state: s.state,
                since: s.since,
                reason: s.reason.clone(),
                // Saved with the snapshot, or with the mark it reaches.
                saved_at: Some(s.saved_at.max(s.committed_to)),
                period: s.interval_so_far(),
                counter_presets: s.counters.as_ref().map(|c| c.presets()).unwrap_or_default(),
            }
        })
        .collect();
    let mut stmt = conn.prepare_cached(SELECT_LAST_CHANGES)?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, Option<String>>(3)?,
        ))
    })?;
    for row in rows {
        let (machine, state, since, reason) = row?;
        let newer = DateTime::parse_from_rfc3339(&since)
            .ok()
            .map(|t| t.with_timezone(&Utc));
        let (Some(state), Some(since)) = (parse_state(&state), newer) else {
            continue;
        };
        match out.iter_mut().find(|s| s.machine == machine) {
            // A change recorded after the snapshot was saved is newer.
            Some(s) if since > s.since && s.saved_at.is_some_and(|at| since > at) => {
                s.state = state;
                s.since = since;
                s.reason = reason;
            }
            Some(_) => {}
            None => out.push(MachineStatus {
                machine,
                state,
                since,
                reason,
                saved_at: None,
                period: None,
                counter_presets: Vec::new(),
            }),
        }
    }
    out.sort_by(|a, b| a.machine.cmp(&b.machine));
    Ok(out)
}

/// Delete state changes and periods older than `before`; returns rows deleted.
pub fn delete_older_than(conn: &Connection, before: DateTime<Utc>) -> Result<usize, StoreError> {
    let cut = ts(before);
    let a = conn.prepare_cached(DELETE_OLD_STATES)?.execute([&cut])?;
    let b = conn.prepare_cached(DELETE_OLD_PERIODS)?.execute([&cut])?;
    Ok(a + b)
}

/// Retention: keep `days` days before `now` (`store.retention_days`).
pub fn apply_retention(
    conn: &Connection,
    now: DateTime<Utc>,
    days: u32,
) -> Result<usize, StoreError> {
    delete_older_than(conn, now - chrono::Duration::days(i64::from(days)))
}

/// The latest state change of one machine (for tests and diagnostics).
pub fn last_state(
    conn: &Connection,
    machine: &str,
) -> Result<Option<(MachineState, DateTime<Utc>)>, StoreError> {
    let row: Option<(String, String)> = conn
        .query_row(
            "SELECT state, since FROM state_change WHERE machine = ?1 ORDER BY id DESC LIMIT 1",
            [machine],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    Ok(row.and_then(|(s, t)| {
        Some((
            parse_state(&s)?,
            DateTime::parse_from_rfc3339(&t).ok()?.with_timezone(&Utc),
        ))
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::accounting::{Account, AccountSettings, Observation, Observed};
    use crate::store::Store;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn settings(machine: &str) -> AccountSettings {
        AccountSettings {
            machine: machine.into(),
            tz: chrono_tz::UTC,
            period_ms: 15 * 60_000,
            micro_stop_ms: 120_000,
            min_dwell_ms: 0,
            ideal_cycle_s: None,
            has_good_counter: false,
            calendar: None,
        }
    }

    /// A machine running from 10:00 for `minutes`, read every second.
    fn run(machine: &str, minutes: i64) -> (Account, Vec<MachineEvent>) {
        let t0 = t("2026-03-02T10:00:00Z");
        let mut out = Vec::new();
        let mut acc = Account::new(settings(machine), t0, 0, &mut out);
        for s in 0..=minutes * 60 {
            acc.observe(
                Observation {
                    at: t0 + chrono::Duration::seconds(s),
                    mono_ms: s * 1000,
                    observed: Observed::State {
                        state: MachineState::Running,
                        reason: None,
                        fault: false,
                    },
                    counts: Default::default(),
                },
                &mut out,
            );
        }
        (acc, out)
    }

    #[test]
    fn periods_and_states_survive_reopening_the_store_file() {
        let dir = tempfile::tempdir().unwrap();
        let (acc, events) = run("press07", 47);
        let snap = acc.snapshot(t("2026-03-02T10:47:00Z"));
        {
            let store = Store::open(dir.path()).unwrap();
            store
                .call_blocking(move |c| {
                    for e in &events {
                        record(c, e)?;
                    }
                    save_snapshot(c, &snap)?;
                    Ok(())
                })
                .unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        let all = store
            .call_blocking(|c| periods(c, None, None, None))
            .unwrap();
        assert_eq!(all.len(), 3);
        assert_eq!(all[0].start, t("2026-03-02T10:00:00Z"));
        assert_eq!(all[2].seconds.running, 900.0);
        let some = store
            .call_blocking(|c| {
                periods(
                    c,
                    Some("press07"),
                    Some(t("2026-03-02T10:20:00Z")),
                    Some(t("2026-03-02T10:40:00Z")),
                )
            })
            .unwrap();
        assert_eq!(
            some.iter().map(|p| p.start).collect::<Vec<_>>(),
            vec![t("2026-03-02T10:15:00Z"), t("2026-03-02T10:30:00Z")]
        );
        assert!(store
            .call_blocking(|c| periods(c, Some("other"), None, None))
            .unwrap()
            .is_empty());

        let status = store.call_blocking(|c| current(c)).unwrap();
        assert_eq!(status.len(), 1);
        assert_eq!(status[0].state, MachineState::Running);
        assert_eq!(status[0].since, t("2026-03-02T10:00:00Z"));
        let p = status[0].period.as_ref().unwrap();
        assert_eq!(p.start, t("2026-03-02T10:45:00Z"));
        assert_eq!(p.seconds.running, 120.0);

        let snaps = store.call_blocking(|c| load_snapshots(c)).unwrap();
        assert_eq!(snaps[0].1, acc.snapshot(t("2026-03-02T10:47:00Z")));
    }

    #[test]
    fn a_snapshot_loads_with_the_observation_mark_only_when_the_mark_is_later() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (acc, _) = run("press07", 2);
        let snap = acc.snapshot(t("2026-03-02T10:02:00Z"));
        assert_eq!(snap.committed_to, t("2026-03-02T10:02:00Z"));
        let mark = |at: &str| MachineEvent::Observed {
            machine: "press07".into(),
            to: t(at),
        };
        let (early, late) = (
            mark("2026-03-02T10:01:30Z"),
            mark("2026-03-02T10:02:45.500Z"),
        );
        let snapshot = MachineEvent::Snapshot(Box::new(snap));
        let loaded = store
            .call_blocking(move |c| {
                assert!(!record(c, &snapshot)?, "a snapshot is not sent");
                assert!(!record(c, &early)?, "a mark is not sent");
                let before = load_snapshots(c)?;
                record(c, &late)?;
                Ok((before, load_snapshots(c)?))
            })
            .unwrap();
        assert_eq!(
            loaded.0[0].1.observed_to, None,
            "a mark older than the snapshot"
        );
        assert_eq!(
            loaded.1[0].1.observed_to,
            Some(t("2026-03-02T10:02:45.500Z"))
        );
    }

    #[test]
    fn a_snapshot_encoded_ahead_is_stored_as_the_snapshot_itself() {
        let dir = tempfile::tempdir().unwrap();
        let (acc, _) = run("press07", 3);
        let snap = acc.snapshot(t("2026-03-02T10:03:00.250Z"));
        let conn = crate::store::open_connection(Store::open(dir.path()).unwrap().path()).unwrap();
        save_snapshot(&conn, &snap).unwrap();
        let direct: (String, String) = conn
            .query_row("SELECT json, saved_at FROM machine_snapshot", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        conn.execute("DELETE FROM machine_snapshot", []).unwrap();
        let row = SnapshotRow::of(&snap).unwrap();
        assert_eq!(row.machine(), "press07");
        save_snapshot_row(&conn, &row).unwrap();
        let ahead: (String, String) = conn
            .query_row("SELECT json, saved_at FROM machine_snapshot", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        assert_eq!(ahead, direct);
        assert_eq!(ahead.1, "2026-03-02T10:03:00.250Z");
        let loaded = load_snapshots(&conn).unwrap();
        assert_eq!(loaded.len(), 1);
        assert_eq!(loaded[0].1.committed_to, snap.committed_to);
    }

    #[test]
    fn marks_kept_in_the_lines_row_are_each_machines_last() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let marks = store
            .call_blocking(|c| {
                // One alone, then many (a name JSON must escape among them).
                record_marks(c, &[("press07", t("2026-03-02T10:00:00Z"))])?;
                // More than a statement's worth: two machines taking turns,
                // each one's last in the middle of a statement.
                let mut many: Vec<(&str, DateTime<Utc>)> = (0..10)
                    .map(|i| {
                        let m = if i % 2 == 0 { "press07" } else { "lathe \"3\"" };
                        (
                            m,
                            t("2026-03-02T10:00:01Z") + chrono::Duration::milliseconds(i * 100),
                        )
                    })
                    .collect();
                many.push(("press07", t("2026-03-02T10:00:01.750Z")));
                many.push(("drill", t("2026-03-02T10:00:02Z")));
                record_marks(c, &many)?;
                record_marks(c, &[])?;
                line_marks(c)
            })
            .unwrap();
        let ms = |s: &str| t(s).timestamp_millis();
        assert_eq!(marks.len(), 3);
        assert_eq!(marks["press07"], ms("2026-03-02T10:00:01.750Z"));
        assert_eq!(marks["lathe \"3\""], ms("2026-03-02T10:00:01.900Z"));
        assert_eq!(marks["drill"], ms("2026-03-02T10:00:02.000Z"));
    }

    #[test]
    fn a_mark_of_the_first_schema_still_counts_when_it_is_the_later_one() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (acc, _) = run("press07", 2);
        let snap = acc.snapshot(t("2026-03-02T10:02:00Z"));
        let (a, b) = store
            .call_blocking(move |c| {
                save_snapshot(c, &snap)?;
                record_marks(c, &[("press07", t("2026-03-02T10:03:00Z"))])?;
                // Written by a build before "line marks", later than the row.
                c.execute(
                    "INSERT INTO machine_observed (machine, observed_to) VALUES ('press07', '2026-03-02T10:04:00.000Z')",
                    [],
                )?;
                let a = load_snapshots(c)?[0].1.observed_to;
                record_marks(c, &[("press07", t("2026-03-02T10:05:00Z"))])?;
                let b = load_snapshots(c)?[0].1.observed_to;
                Ok((a, b))
            })
            .unwrap();
        assert_eq!(a, Some(t("2026-03-02T10:04:00Z")));
        assert_eq!(b, Some(t("2026-03-02T10:05:00Z")));
    }

    #[test]
    fn an_unreadable_row_of_marks_is_ignored_and_the_next_commit_writes_it_anew() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (acc, _) = run("press07", 2);
        let snap = acc.snapshot(t("2026-03-02T10:02:00Z"));
        let (loaded, marks) = store
            .call_blocking(move |c| {
                save_snapshot(c, &snap)?;
                record_marks(c, &[("press07", t("2026-03-02T10:03:00Z"))])?;
                // A row another tool (or a torn edit) left unreadable.
                c.execute(
                    "UPDATE line_observed SET marks = '{\"press07\": \"soon\"' WHERE id = 1",
                    [],
                )?;
                let loaded = load_snapshots(c)?;
                record_marks(c, &[("mill02", t("2026-03-02T10:04:00Z"))])?;
                Ok((loaded, line_marks(c)?))
            })
            .unwrap();
        // The snapshot still loads, without a mark (time after it is offline).
        assert_eq!(loaded.len(), 1);
        assert_eq!(loaded[0].1.observed_to, None);
        // The next commit's marks make a readable row again.
        assert_eq!(marks.len(), 1);
        assert_eq!(
            marks["mill02"],
            t("2026-03-02T10:04:00Z").timestamp_millis()
        );
    }

    #[test]
    fn a_period_closed_twice_keeps_the_first() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (_, events) = run("press07", 16);
        let period = events
            .iter()
            .find(|e| matches!(e, MachineEvent::Period(_)))
            .cloned()
            .unwrap();
        let (first, second) = store
            .call_blocking(move |c| {
                let first = record(c, &period)?;
                let mut again = period.clone();
                if let MachineEvent::Period(p) = &mut again {
                    p.seconds.offline = 900.0;
                }
                Ok((first, record(c, &again)?))
            })
            .unwrap();
        assert!(first);
        assert!(!second);
        let all = store
            .call_blocking(|c| periods(c, None, None, None))
            .unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].seconds.offline, 0.0);
    }

    #[test]
    fn status_projects_each_snapshot_to_its_machines_mark() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (acc, _) = run("press07", 2);
        let snap = acc.snapshot(t("2026-03-02T10:02:00Z"));
        let status = store
            .call_blocking(move |c| {
                save_snapshot(c, &snap)?;
                // Running on: the engine sent marks, not the same snapshot again.
                record_marks(c, &[("press07", t("2026-03-02T10:07:00Z"))])?;
                current(c)
            })
            .unwrap();
        assert_eq!(status.len(), 1);
        let p = status[0].period.as_ref().unwrap();
        assert_eq!(p.end, t("2026-03-02T10:07:00Z"));
        assert_eq!(p.seconds.running, 420.0);
        assert_eq!(status[0].saved_at, Some(t("2026-03-02T10:07:00Z")));
        // A mark past the end of the open interval: not projected across it.
        let status = store
            .call_blocking(|c| {
                record_marks(c, &[("press07", t("2026-03-02T10:20:00Z"))])?;
                current(c)
            })
            .unwrap();
        let p = status[0].period.as_ref().unwrap();
        assert_eq!(p.seconds.running, 120.0);
        assert_eq!(status[0].saved_at, Some(t("2026-03-02T10:02:00Z")));
    }

    #[test]
    fn status_shows_machines_without_a_snapshot_from_their_last_change() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let status = store
            .call_blocking(|c| {
                for (state, since) in [
                    (MachineState::Running, "2026-03-02T10:00:00Z"),
                    (MachineState::Down, "2026-03-02T10:03:00Z"),
                ] {
                    record(
                        c,
                        &MachineEvent::State(StateChange {
                            machine: "lathe2".into(),
                            state,
                            prev: None,
                            since: t(since),
                            reason: Some("alarm_code 17: door open".into()),
                        }),
                    )?;
                }
                current(c)
            })
            .unwrap();
        assert_eq!(status.len(), 1);
        assert_eq!(status[0].state, MachineState::Down);
        let changes = store
            .call_blocking(|c| state_changes(c, Some("lathe2"), None, None))
            .unwrap();
        assert_eq!(
            changes
                .iter()
                .map(|c| (c.state, c.since))
                .collect::<Vec<_>>(),
            vec![
                (MachineState::Running, t("2026-03-02T10:00:00Z")),
                (MachineState::Down, t("2026-03-02T10:03:00Z")),
            ]
        );
        let later = store
            .call_blocking(|c| state_changes(c, None, Some(t("2026-03-02T10:01:00Z")), None))
            .unwrap();
        assert_eq!(later.len(), 1);
        assert_eq!(later[0].reason.as_deref(), Some("alarm_code 17: door open"));
        assert_eq!(
            status[0].reason.as_deref(),
            Some("alarm_code 17: door open")
        );
        assert!(status[0].period.is_none());
    }

    #[test]
    fn retention_deletes_only_old_rows() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (_, events) = run("press07", 31);
        let (deleted, left) = store
            .call_blocking(move |c| {
                for e in &events {
                    record(c, e)?;
                }
                let deleted = delete_older_than(c, t("2026-03-02T10:20:00Z"))?;
                Ok((deleted, periods(c, None, None, None)?))
            })
            .unwrap();
        // Periods ending 10:15 and the two early state changes (10:00) go.
        assert_eq!(deleted, 3);
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].start, t("2026-03-02T10:15:00Z"));
    }
}
