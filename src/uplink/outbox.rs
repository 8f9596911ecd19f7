//! The outbox: every upward message, committed to SQLite before it is sent.
//! This module owns the outbox tables and the drop policy; it never talks
//! MQTT (the connection does) and never builds payloads (`message` does).
//!
//! # Tables
//!
//! `outbox`, one row per upward message not yet acknowledged by the broker:
//!
//! | column | meaning |
//! |---|---|
//! | `seq` | INTEGER PRIMARY KEY: the contract's envelope `seq` |
//! | `topic_suffix` | topic below the prefix, e.g. `m/press07/state` |
//! | `class` | `telemetry` (may be dropped when full) or `durable` (never) |
//! | `retain` | publish with the retain flag |
//! | `ts` | when the fact happened, RFC 3339 UTC with milliseconds |
//! | `body` | the payload as JSON text, without the envelope |
//! | `bytes` | size charged against the cap: `body` + `topic_suffix` |
//! | `stored_offline` | 1 when the link was down at enqueue: sent with `historical: true` |
//!
//! `outbox_state`, exactly one row (`id = 1`): `next_seq` (the next envelope
//! seq to hand out), `max_bytes` (the cap), `link_up` (whether the uplink is
//! connected right now), `rows` and `bytes` (kept equal to `COUNT(*)` and
//! `SUM(bytes)` of `outbox` by triggers), `dropped` (telemetry rows ever
//! dropped by the cap) and `over_cap` (durable rows alone exceed the cap).
//!
//! # Invariants
//!
//! - `next_seq` only grows. A seq is taken in the same transaction as its
//!   row, so a seq is never reused: not after the row is deleted, not after a
//!   restart, a SIGKILL or a power loss (WAL, `synchronous = FULL`).
//! - A seq is only ever taken with its row. Status messages (birth, will,
//!   shutdown) take none and have no row (contract v1.1; they carry the
//!   connection's `session`, see `uplink::session`), so a seq missing at a
//!   receiver is a lost message and nothing else.
//! - Only the cap deletes a row that was not acknowledged, only `telemetry`
//!   rows, oldest first, and every such deletion is counted in `dropped`
//!   (the dropped seqs then show as gaps to a receiver, explained by the
//!   `dropped_telemetry` count in the gateway status). `durable` rows are
//!   never dropped: when they alone exceed the cap the outbox grows past it
//!   and says so in the log.
//!
//! # Life of a row
//!
//! 1. **write**: a producer (state engine, accounting, orders) calls
//!    [`enqueue`] inside its own transaction, together with its own rows, and
//!    after commit wakes the uplink (`Notify::notify_one`). The row is marked
//!    `stored_offline` when `link_up` is false at that moment.
//! 2. **send**: the connection reads rows in `seq` order ([`next_batch`]),
//!    adds the envelope and publishes at QoS 1.
//! 3. **PUBACK**: the broker has the message.
//! 4. **delete**: [`delete_acked`] removes the row. A row whose PUBACK never
//!    came (connection lost) stays and is sent again on the next connection:
//!    delivery is at-least-once, receivers drop duplicates by `seq`.

use chrono::{DateTime, SecondsFormat, Utc};
use rusqlite::{params, Connection, OptionalExtension};

use crate::store::StoreError;

/// The outbox tables (migration "outbox").
pub const SCHEMA_V1: &str = "
CREATE TABLE outbox (
    seq            INTEGER PRIMARY KEY,
    topic_suffix   TEXT    NOT NULL,
    class          TEXT    NOT NULL CHECK (class IN ('telemetry', 'durable')),
    retain         INTEGER NOT NULL,
    ts             TEXT    NOT NULL,
    body           TEXT    NOT NULL,
    bytes          INTEGER NOT NULL,
    stored_offline INTEGER NOT NULL
);
CREATE INDEX outbox_by_class ON outbox (class, seq);
CREATE INDEX outbox_by_stream ON outbox (stored_offline, seq);
CREATE TABLE outbox_state (
    id        INTEGER PRIMARY KEY CHECK (id = 1),
    next_seq  INTEGER NOT NULL,
    max_bytes INTEGER NOT NULL,
    link_up   INTEGER NOT NULL,
    rows      INTEGER NOT NULL,
    bytes     INTEGER NOT NULL,
    dropped   INTEGER NOT NULL,
    over_cap  INTEGER NOT NULL
);
INSERT INTO outbox_state (id, next_seq, max_bytes, link_up, rows, bytes, dropped, over_cap)
    VALUES (1, 1, 268435456, 0, 0, 0, 0, 0);
CREATE TRIGGER outbox_row_added AFTER INSERT ON outbox BEGIN
    UPDATE outbox_state SET rows = rows + 1, bytes = bytes + NEW.bytes WHERE id = 1;
END;
CREATE TRIGGER outbox_row_removed AFTER DELETE ON outbox BEGIN
    UPDATE outbox_state SET rows = rows - 1, bytes = bytes - OLD.bytes WHERE id = 1;
END;
";

// Read at a batch's first row, and next_seq written once at its end
// (`enqueue_all`). Two statements, not one UPDATE ... RETURNING: that one
// costs about twice as much (its result goes through a temporary table).
// OR ROLLBACK: see INSERT_ROW.
const READ_STATE: &str =
    "SELECT next_seq, link_up, max_bytes, bytes, over_cap FROM outbox_state WHERE id = 1";
const TAKE_SEQ: &str = "UPDATE OR ROLLBACK outbox_state SET next_seq = ?1 + 1 WHERE id = 1";
// OR ROLLBACK: a failing insert ends the whole transaction (the caller's
// commit fails and is retried, as for any error), so SQLite keeps no
// statement journal for it (a copy of every page the insert and its trigger
// touch, otherwise made for every message).
const INSERT_ROW: &str = "INSERT OR ROLLBACK INTO outbox
     (seq, topic_suffix, class, retain, ts, body, bytes, stored_offline)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)";
const OUTBOX_BYTES: &str = "SELECT bytes, over_cap FROM outbox_state WHERE id = 1";
const DROP_OLDEST_TELEMETRY: &str = "DELETE FROM outbox WHERE seq =
     (SELECT seq FROM outbox WHERE class = 'telemetry' ORDER BY seq LIMIT 1)";
const COUNT_DROP: &str = "UPDATE outbox_state SET dropped = dropped + ?1 WHERE id = 1";
const SET_OVER_CAP: &str = "UPDATE outbox_state SET over_cap = ?1 WHERE id = 1";
const NEXT_BATCH: &str = "SELECT seq, topic_suffix, class, retain, ts, body, stored_offline
     FROM outbox WHERE stored_offline = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3";
const DELETE_ROW: &str = "DELETE FROM outbox WHERE seq = ?1";
// One statement for a batch of PUBACKed seqs (a JSON array): each page it
// touches goes to the statement journal once, not once per row.
const DELETE_ROWS: &str = "DELETE FROM outbox WHERE seq IN (SELECT value FROM json_each(?1))";
const DELETE_RANGE: &str = "DELETE FROM outbox WHERE seq BETWEEN ?1 AND ?2";
const COUNTS: &str =
    "SELECT rows, bytes, dropped, next_seq, max_bytes FROM outbox_state WHERE id = 1";
const SET_LINK_UP: &str = "UPDATE outbox_state SET link_up = ?1 WHERE id = 1";
const SET_MAX_BYTES: &str = "UPDATE outbox_state SET max_bytes = ?1, link_up = 0 WHERE id = 1";

/// What may be dropped when the outbox is full: telemetry only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageClass {
    /// Signal values: the oldest are dropped first when the outbox is full.
    Telemetry,
    /// State changes, periods, order statuses: never dropped.
    Durable,
}

impl MessageClass {
    fn as_str(self) -> &'static str {
        match self {
            MessageClass::Telemetry => "telemetry",
            MessageClass::Durable => "durable",
        }
    }
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

/// How big the outbox may grow; written once at start by the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutboxPolicy {
    /// Cap on the sum of row sizes (`body` + topic), in bytes.
    pub max_bytes: u64,
}

impl OutboxPolicy {
    /// The policy of `store.outbox_max_mb`.
    pub fn from_mb(outbox_max_mb: u64) -> OutboxPolicy {
        OutboxPolicy {
            max_bytes: outbox_max_mb.saturating_mul(1024 * 1024),
        }
    }
}

/// One stored message, as the sender reads it back.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxRow {
    pub seq: u64,
    pub topic_suffix: String,
    pub class: MessageClass,
    pub retain: bool,
    /// RFC 3339 UTC with milliseconds, as stored.
    pub ts: String,
    /// JSON object text without the envelope.
    pub body: String,
    /// Stored while the link was down: sent with `historical: true`.
    pub stored_offline: bool,
}

/// The two streams the sender drains: live rows first, historical rows rate-limited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// Rows enqueued while the link was up.
    Live,
    /// Rows enqueued while the link was down (`historical: true`).
    Historical,
}

/// Outbox figures for status, logs and the birth message: one source for all.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OutboxCounts {
    /// Rows waiting for their PUBACK.
    pub depth: u64,
    /// Bytes charged against the cap.
    pub bytes: u64,
    /// Telemetry rows dropped by the cap since the store was created.
    pub dropped: u64,
    /// The seq the next message will get.
    pub next_seq: u64,
    pub max_bytes: u64,
}

/// Write the cap at agent start and mark the link down (it is, until the
/// uplink connects). Call once before producers start enqueueing.
pub fn configure(conn: &Connection, policy: OutboxPolicy) -> Result<(), StoreError> {
    conn.prepare_cached(SET_MAX_BYTES)?
        .execute(params![clamp_i64(policy.max_bytes)])?;
    Ok(())
}

/// Tell the outbox whether the broker is reachable; rows enqueued while it
/// is not are sent later with `historical: true`. Called by the uplink.
pub fn set_link_up(conn: &Connection, up: bool) -> Result<(), StoreError> {
    conn.prepare_cached(SET_LINK_UP)?.execute(params![up])?;
    Ok(())
}

/// Commit `msg` to the outbox inside the caller's transaction; returns its `seq`.
///
/// When the outbox is over its cap afterwards, the oldest telemetry rows are
/// dropped (possibly this one, if it is the only telemetry left) and counted.
/// Durable rows are never dropped: if they alone exceed the cap, they all
/// stay and a warning is logged once.
pub fn enqueue(conn: &Connection, msg: &Outgoing) -> Result<u64, StoreError> {
    enqueue_row(conn, msg).map(|(seq, _)| seq)
}

/// [`enqueue`], also returning the row as stored, to hand it to the
/// connection after the commit (`uplink::fresh`): `None` when the row is
/// not one to hand over (stored while the link was down, or the cap dropped
/// rows, possibly this one).
pub fn enqueue_row(
    conn: &Connection,
    msg: &Outgoing,
) -> Result<(u64, Option<OutboxRow>), StoreError> {
    enqueue_all(conn, |batch| batch.enqueue_row(msg))
}

/// Several messages enqueued in the caller's transaction as one batch: the
/// outbox's state is read at the first and `next_seq` written once at the
/// end, so a row costs its insert alone (a poll's commit carries a message
/// for every machine whose values changed). Each row is as [`enqueue_row`]
/// makes it, in the order enqueued.
///
/// Nothing else may enqueue in the same transaction while `f` runs (it
/// would take a seq the batch also hands out, and the insert would fail the
/// transaction). `next_seq` is written only when `f` succeeds; on an error
/// the caller rolls the transaction back anyway.
pub fn enqueue_all<T>(
    conn: &Connection,
    f: impl FnOnce(&mut Batch<'_>) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    let mut batch = Batch { conn, state: None };
    let out = f(&mut batch)?;
    if let Some(state) = batch.state {
        if state.next_seq != state.first_seq {
            conn.prepare_cached(TAKE_SEQ)?
                .execute(params![state.next_seq - 1])?;
        }
    }
    Ok(out)
}

/// The rows of one [`enqueue_all`].
pub struct Batch<'c> {
    conn: &'c Connection,
    /// Read at the first row.
    state: Option<BatchState>,
}

/// `outbox_state` as the batch goes: the seqs it handed out and the bytes
/// it added.
struct BatchState {
    first_seq: i64,
    next_seq: i64,
    link_up: bool,
    max_bytes: i64,
    bytes: i64,
    over_cap: bool,
}

impl Batch<'_> {
    /// Add `msg`: its seq, and the row as stored for `uplink::fresh` (see
    /// [`enqueue_row`]).
    pub fn enqueue_row(&mut self, msg: &Outgoing) -> Result<(u64, Option<OutboxRow>), StoreError> {
        let conn = self.conn;
        let state = match &mut self.state {
            Some(state) => state,
            None => {
                let state = conn.prepare_cached(READ_STATE)?.query_row([], |r| {
                    let next_seq = r.get::<_, i64>(0)?;
                    Ok(BatchState {
                        first_seq: next_seq,
                        next_seq,
                        link_up: r.get(1)?,
                        max_bytes: r.get(2)?,
                        bytes: r.get(3)?,
                        over_cap: r.get(4)?,
                    })
                })?;
                self.state.insert(state)
            }
        };
        let seq = state.next_seq;
        // A map of JSON values always serializes.
        let body = serde_json::to_string(&msg.body).unwrap_or_else(|_| "{}".into());
        let bytes = (body.len() + msg.topic_suffix.len()) as i64;
        let ts = format_ts(msg.ts);
        conn.prepare_cached(INSERT_ROW)?.execute(params![
            seq,
            msg.topic_suffix,
            msg.class.as_str(),
            msg.retain,
            ts,
            body,
            bytes,
            !state.link_up,
        ])?;
        state.next_seq = seq.saturating_add(1);
        // Under the cap before and after this row: nothing to check (the
        // usual case, saved a statement per message).
        let bytes_before = state.bytes;
        state.bytes = bytes_before.saturating_add(bytes);
        if state.over_cap || state.bytes > state.max_bytes {
            enforce_cap(conn, state.max_bytes)?;
            (state.bytes, state.over_cap) = conn
                .prepare_cached(OUTBOX_BYTES)?
                .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            return Ok((seq as u64, None));
        }
        let row = state.link_up.then(|| OutboxRow {
            seq: seq as u64,
            topic_suffix: msg.topic_suffix.clone(),
            class: msg.class,
            retain: msg.retain,
            ts,
            body,
            stored_offline: false,
        });
        Ok((seq as u64, row))
    }
}

/// Drop the oldest telemetry until the outbox fits `max_bytes`.
fn enforce_cap(conn: &Connection, max_bytes: i64) -> Result<(), StoreError> {
    let (mut bytes, over_cap): (i64, bool) = conn
        .prepare_cached(OUTBOX_BYTES)?
        .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    if bytes <= max_bytes {
        if over_cap {
            conn.prepare_cached(SET_OVER_CAP)?.execute(params![false])?;
            tracing::info!(bytes, max_bytes, "outbox back under its cap");
        }
        return Ok(());
    }
    let mut dropped = 0i64;
    while bytes > max_bytes {
        if conn.prepare_cached(DROP_OLDEST_TELEMETRY)?.execute([])? == 0 {
            break;
        }
        dropped += 1;
        bytes = conn
            .prepare_cached(OUTBOX_BYTES)?
            .query_row([], |r| r.get(0))?;
    }
    if dropped > 0 {
        conn.prepare_cached(COUNT_DROP)?.execute(params![dropped])?;
        // Logged at the first drop and then every 1000, not on every enqueue.
        let total = counts(conn)?.dropped;
        let dropped_now = dropped as u64;
        if total == dropped_now || total / 1000 != total.saturating_sub(dropped_now) / 1000 {
            tracing::warn!(
                dropped_total = total,
                bytes,
                max_bytes,
                "outbox full: oldest telemetry dropped (state changes, periods and order statuses are kept; raise store.outbox_max_mb to keep more)"
            );
        }
    }
    let still_over = bytes > max_bytes;
    if still_over != over_cap {
        conn.prepare_cached(SET_OVER_CAP)?
            .execute(params![still_over])?;
        if still_over {
            tracing::warn!(
                bytes,
                max_bytes,
                "outbox over its cap with only durable rows left: keeping them (raise store.outbox_max_mb?)"
            );
        }
    }
    Ok(())
}

/// Up to `limit` rows of `stream` with a seq above `after`, in seq order.
pub fn next_batch(
    conn: &Connection,
    stream: Stream,
    after: u64,
    limit: usize,
) -> Result<Vec<OutboxRow>, StoreError> {
    let mut stmt = conn.prepare_cached(NEXT_BATCH)?;
    let rows = stmt.query_map(
        params![stream == Stream::Historical, clamp_i64(after), limit as i64],
        |r| {
            let class: String = r.get(2)?;
            Ok(OutboxRow {
                seq: r.get::<_, i64>(0)? as u64,
                topic_suffix: r.get(1)?,
                class: if class == "telemetry" {
                    MessageClass::Telemetry
                } else {
                    MessageClass::Durable
                },
                retain: r.get(3)?,
                ts: r.get(4)?,
                body: r.get(5)?,
                stored_offline: r.get(6)?,
            })
        },
    )?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

/// Delete the rows whose PUBACK arrived, in a transaction of their own;
/// returns the counts after it. (Most deletions ride with the recorder's
/// commits instead: [`delete_rows`], see `uplink::acked`.)
///
/// The commit does not wait for an fsync ([`crate::store::commit_unsynced`]):
/// a deletion only forgets a message the broker already has, so a power cut
/// can at worst undo the last deletions, and those rows are sent again
/// (duplicates, dropped by `seq` at the receiver), never lost. The next
/// commit that does sync (any enqueue) makes them durable too: the WAL is
/// synced as a whole, in order.
pub fn delete_acked(conn: &Connection, seqs: &[u64]) -> Result<OutboxCounts, StoreError> {
    crate::store::commit_unsynced(conn, |tx| delete_rows(tx, seqs))
}

/// Most runs of consecutive seqs deleted one range each; more go as one list.
const MOST_RANGES: usize = 16;

/// Delete the rows of these PUBACKed seqs inside the caller's transaction
/// (seqs without a row are skipped); returns the counts after it.
pub fn delete_rows(conn: &Connection, seqs: &[u64]) -> Result<OutboxCounts, StoreError> {
    let runs = runs_of(seqs);
    if runs.len() <= MOST_RANGES {
        // A burst of PUBACKs is nearly always one run (the rows of one
        // commit): a range is a seek in the table, the list a temporary
        // table of the parsed JSON first.
        let mut range = conn.prepare_cached(DELETE_RANGE)?;
        for (first, last) in runs {
            range.execute(params![clamp_i64(first), clamp_i64(last)])?;
        }
    } else {
        let mut list = String::with_capacity(seqs.len() * 8 + 2);
        list.push('[');
        for (i, seq) in seqs.iter().enumerate() {
            if i > 0 {
                list.push(',');
            }
            list.push_str(&clamp_i64(*seq).to_string());
        }
        list.push(']');
        conn.prepare_cached(DELETE_ROWS)?.execute(params![list])?;
    }
    counts(conn)
}

/// The seqs as runs of consecutive numbers, `(first, last)`, ascending, each
/// seq once.
fn runs_of(seqs: &[u64]) -> Vec<(u64, u64)> {
    let mut sorted = seqs.to_vec();
    sorted.sort_unstable();
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for seq in sorted {
        match runs.last_mut() {
            Some((_, last)) if seq <= last.saturating_add(1) => *last = (*last).max(seq),
            _ => runs.push((seq, seq)),
        }
    }
    runs
}

/// Drop a row that can never be sent (unreadable, or too big for one
/// packet), counting it with the drops.
pub fn drop_unsendable(conn: &Connection, seq: u64) -> Result<(), StoreError> {
    let tx = conn.unchecked_transaction()?;
    if tx
        .prepare_cached(DELETE_ROW)?
        .execute(params![clamp_i64(seq)])?
        > 0
    {
        tx.prepare_cached(COUNT_DROP)?.execute(params![1i64])?;
    }
    tx.commit()?;
    Ok(())
}

/// Count telemetry that never reached the outbox (the store could not take
/// it: a full disk) with the drops, inside the caller's transaction.
pub fn count_unstored_telemetry(conn: &Connection, n: u64) -> Result<(), StoreError> {
    if n > 0 {
        conn.prepare_cached(COUNT_DROP)?
            .execute(params![clamp_i64(n)])?;
    }
    Ok(())
}

/// Depth, bytes and drops of the outbox.
pub fn counts(conn: &Connection) -> Result<OutboxCounts, StoreError> {
    let c = conn
        .prepare_cached(COUNTS)?
        .query_row([], |r| {
            Ok(OutboxCounts {
                depth: r.get::<_, i64>(0)? as u64,
                bytes: r.get::<_, i64>(1)? as u64,
                dropped: r.get::<_, i64>(2)? as u64,
                next_seq: r.get::<_, i64>(3)? as u64,
                max_bytes: r.get::<_, i64>(4)? as u64,
            })
        })
        .optional()?;
    Ok(c.unwrap_or_default())
}

/// The contract's `ts` format: RFC 3339 UTC with milliseconds.
pub fn format_ts(ts: DateTime<Utc>) -> String {
    ts.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn clamp_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use serde_json::json;

    fn conn() -> Connection {
        let mut c = Connection::open_in_memory().unwrap();
        let tx = c.transaction().unwrap();
        tx.execute_batch(SCHEMA_V1).unwrap();
        tx.commit().unwrap();
        c
    }

    fn msg(class: MessageClass, filler: usize) -> Outgoing {
        let mut body = serde_json::Map::new();
        body.insert("machine".into(), json!("press07"));
        body.insert("pad".into(), json!("x".repeat(filler)));
        Outgoing {
            topic_suffix: "m/press07/telemetry".into(),
            class,
            retain: false,
            ts: Utc.with_ymd_and_hms(2026, 11, 26, 8, 0, 0).unwrap(),
            body,
        }
    }

    #[test]
    fn acknowledged_seqs_go_as_runs_and_only_they_are_deleted() {
        assert_eq!(runs_of(&[]), []);
        assert_eq!(runs_of(&[7, 5, 6, 6, 9, 1, 2]), [(1, 2), (5, 7), (9, 9)]);
        assert_eq!(
            runs_of(&[u64::MAX, u64::MAX - 1]),
            [(u64::MAX - 1, u64::MAX)]
        );
        let c = conn();
        let seqs: Vec<u64> = (0..80)
            .map(|_| enqueue(&c, &msg(MessageClass::Telemetry, 1)).unwrap())
            .collect();
        let left = |c: &Connection| -> Vec<u64> {
            let mut s = c.prepare("SELECT seq FROM outbox ORDER BY seq").unwrap();
            s.query_map([], |r| r.get::<_, i64>(0))
                .unwrap()
                .map(|r| r.unwrap() as u64)
                .collect()
        };
        // A few runs: one range each; the rows between them stay.
        let k = delete_acked(&c, &[3, 1, 2, 10, 11, 20]).unwrap();
        assert_eq!(k.depth, 74);
        assert!(!left(&c).contains(&2) && left(&c).contains(&4) && left(&c).contains(&19));
        // More runs than ranges (every other seq): the list.
        let odd: Vec<u64> = seqs
            .iter()
            .copied()
            .filter(|s| s % 2 == 1 && *s > 21)
            .collect();
        assert!(runs_of(&odd).len() > MOST_RANGES);
        delete_acked(&c, &odd).unwrap();
        let rest = left(&c);
        assert!(rest.iter().all(|s| s % 2 == 0 || *s <= 21), "{rest:?}");
        assert!(rest.contains(&22) && rest.contains(&80) && !rest.contains(&79));
        // Back to full durability after a batch.
        let sync: i64 = c.query_row("PRAGMA synchronous", [], |r| r.get(0)).unwrap();
        assert_eq!(sync, 2, "FULL");
    }

    #[test]
    fn seqs_count_up_from_one_and_are_not_reused_after_delete() {
        let c = conn();
        let a = enqueue(&c, &msg(MessageClass::Durable, 1)).unwrap();
        let b = enqueue(&c, &msg(MessageClass::Durable, 1)).unwrap();
        assert_eq!((a, b), (1, 2));
        delete_acked(&c, &[a, b]).unwrap();
        let d = enqueue(&c, &msg(MessageClass::Durable, 1)).unwrap();
        assert_eq!(d, 3);
        assert_eq!(enqueue(&c, &msg(MessageClass::Durable, 1)).unwrap(), 4);
    }

    #[test]
    fn rows_enqueued_while_the_link_is_down_are_historical() {
        let c = conn();
        let offline = enqueue(&c, &msg(MessageClass::Durable, 1)).unwrap();
        set_link_up(&c, true).unwrap();
        let live = enqueue(&c, &msg(MessageClass::Durable, 1)).unwrap();
        let hist = next_batch(&c, Stream::Historical, 0, 10).unwrap();
        let liv = next_batch(&c, Stream::Live, 0, 10).unwrap();
        assert_eq!(hist.iter().map(|r| r.seq).collect::<Vec<_>>(), [offline]);
        assert_eq!(liv.iter().map(|r| r.seq).collect::<Vec<_>>(), [live]);
        assert!(hist[0].stored_offline && !liv[0].stored_offline);
        assert_eq!(liv[0].ts, "2026-11-26T08:00:00.000Z");
    }

    #[test]
    fn full_outbox_drops_oldest_telemetry_and_keeps_durable_rows() {
        let c = conn();
        configure(&c, OutboxPolicy { max_bytes: 2_000 }).unwrap();
        let durable = enqueue(&c, &msg(MessageClass::Durable, 300)).unwrap();
        let tel: Vec<u64> = (0..5)
            .map(|_| enqueue(&c, &msg(MessageClass::Telemetry, 300)).unwrap())
            .collect();
        let counts = counts(&c).unwrap();
        assert!(counts.bytes <= 2_000, "{counts:?}");
        assert!(counts.dropped >= 1);
        let left: Vec<u64> = next_batch(&c, Stream::Historical, 0, 100)
            .unwrap()
            .iter()
            .map(|r| r.seq)
            .collect();
        assert_eq!(left[0], durable);
        assert_eq!(*left.last().unwrap(), *tel.last().unwrap());
        // The dropped ones are the oldest telemetry.
        let dropped: Vec<u64> = tel.iter().copied().filter(|s| !left.contains(s)).collect();
        assert_eq!(dropped, tel[..dropped.len()]);
        assert_eq!(dropped.len() as u64, counts.dropped);
    }

    #[test]
    fn a_batch_hands_out_consecutive_seqs_keeps_the_cap_and_takes_none_when_it_fails() {
        let c = conn();
        configure(&c, OutboxPolicy { max_bytes: 2_000 }).unwrap();
        set_link_up(&c, true).unwrap();
        let first = enqueue(&c, &msg(MessageClass::Durable, 10)).unwrap();
        // Eight telemetry rows of ~330 bytes in one batch: the cap (2,000)
        // drops the oldest telemetry as the batch goes, counted.
        let rows = enqueue_all(&c, |batch| {
            (0..8)
                .map(|_| batch.enqueue_row(&msg(MessageClass::Telemetry, 300)))
                .collect::<Result<Vec<_>, _>>()
        })
        .unwrap();
        let seqs: Vec<u64> = rows.iter().map(|(s, _)| *s).collect();
        assert_eq!(seqs, (first + 1..=first + 8).collect::<Vec<_>>());
        // Rows before the cap was reached are handed over, the rest are not.
        assert!(rows[0].1.as_ref().is_some_and(|r| r.seq == seqs[0]));
        assert!(rows[7].1.is_none());
        let k = counts(&c).unwrap();
        assert_eq!(k.next_seq, first + 9, "next_seq written once, at the end");
        assert!(k.bytes <= 2_000, "{k:?}");
        let (n, sum): (i64, i64) = c
            .query_row("SELECT COUNT(*), SUM(bytes) FROM outbox", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        assert_eq!((k.depth, k.bytes), (n as u64, sum as u64));
        assert_eq!(k.dropped + k.depth, 9);
        let left = next_batch(&c, Stream::Live, 0, 100).unwrap();
        assert_eq!(left[0].seq, first, "the durable row stays");
        // The next row follows the batch.
        assert_eq!(
            enqueue(&c, &msg(MessageClass::Durable, 1)).unwrap(),
            first + 9
        );
        // A batch whose work fails writes no next_seq: in a transaction
        // rolled back, nothing of it stays, and the seqs are handed out again.
        let tx = c.unchecked_transaction().unwrap();
        let failed: Result<(), StoreError> = enqueue_all(&tx, |batch| {
            batch.enqueue_row(&msg(MessageClass::Durable, 1))?;
            Err(StoreError::Closed)
        });
        assert!(failed.is_err());
        drop(tx);
        assert_eq!(counts(&c).unwrap().next_seq, first + 10);
        // An empty batch touches nothing.
        enqueue_all(&c, |_| Ok(())).unwrap();
        assert_eq!(counts(&c).unwrap().next_seq, first + 10);
    }

    #[test]
    fn durable_rows_alone_may_exceed_the_cap_and_are_all_kept() {
        let c = conn();
        configure(&c, OutboxPolicy { max_bytes: 500 }).unwrap();
        for _ in 0..5 {
            enqueue(&c, &msg(MessageClass::Durable, 300)).unwrap();
        }
        let counts = counts(&c).unwrap();
        assert_eq!(counts.depth, 5);
        assert_eq!(counts.dropped, 0);
        assert!(counts.bytes > 500);
        // New telemetry is dropped at once: it is the only telemetry.
        enqueue(&c, &msg(MessageClass::Telemetry, 10)).unwrap();
        let after = super::counts(&c).unwrap();
        assert_eq!((after.depth, after.dropped), (5, 1));
    }

    #[test]
    fn triggers_keep_depth_and_bytes_equal_to_the_rows() {
        let c = conn();
        for i in 0..20 {
            enqueue(&c, &msg(MessageClass::Telemetry, i)).unwrap();
        }
        delete_acked(&c, &[3, 4, 5, 99]).unwrap();
        let (n, sum): (i64, i64) = c
            .query_row("SELECT COUNT(*), SUM(bytes) FROM outbox", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        let k = counts(&c).unwrap();
        assert_eq!((k.depth, k.bytes), (n as u64, sum as u64));
        assert_eq!(k.depth, 17);
    }

    #[test]
    fn deleting_acked_rows_leaves_every_other_commit_fully_synced() {
        let c = conn();
        c.execute_batch("PRAGMA synchronous = FULL").unwrap();
        let a = enqueue(&c, &msg(MessageClass::Telemetry, 10)).unwrap();
        delete_acked(&c, &[a]).unwrap();
        let sync: i64 = c.query_row("PRAGMA synchronous", [], |r| r.get(0)).unwrap();
        assert_eq!(sync, 2, "synchronous = FULL again after the deletion");
        assert_eq!(counts(&c).unwrap().depth, 0);
    }

    #[test]
    fn rows_deleted_in_the_callers_transaction_go_with_its_commit() {
        let mut c = conn();
        let seqs: Vec<u64> = (0..4)
            .map(|i| enqueue(&c, &msg(MessageClass::Telemetry, i)).unwrap())
            .collect();
        // Rolled back: the rows are still there.
        {
            let tx = c.transaction().unwrap();
            assert_eq!(delete_rows(&tx, &seqs[..2]).unwrap().depth, 2);
        }
        assert_eq!(counts(&c).unwrap().depth, 4);
        // Committed with the transaction's other work.
        let tx = c.transaction().unwrap();
        let k = delete_rows(&tx, &[seqs[0], seqs[1], 9_999]).unwrap();
        tx.commit().unwrap();
        assert_eq!(k.depth, 2);
        let left: Vec<u64> = next_batch(&c, Stream::Historical, 0, 10)
            .unwrap()
            .iter()
            .map(|r| r.seq)
            .collect();
        assert_eq!(left, seqs[2..]);
    }
}
