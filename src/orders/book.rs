//! The order book: every accepted order and its state, in SQLite, and the
//! order state machine. Owns the `work_order`, `order_event` and
//! `write_audit` tables. Every function here takes the store's connection
//! (it runs on the store thread) and changes rows and the status messages
//! that report the change in ONE transaction, so a status is never sent for
//! a change that was not kept, and a kept change is never left unreported.
//! It never talks to a machine or the broker and never reads the clock: the
//! caller passes `now`.
//!
//! Tables:
//! - `work_order`: one row per accepted (order_id, revision). `arrival`
//!   numbers rows in the order they arrived and is the order number written
//!   to the machine. Progress is `done_* + (machine totals - base_*)`:
//!   `base_*` are the machine's part totals when the order went onto the
//!   machine (NULL when it is not on it), `done_*` what it made before (an
//!   earlier release, before a hold, before the totals went backwards).
//! - `order_event`: every status body sent for orders, rejections included
//!   (also those without an order id); the local history of the book.
//! - `write_audit`: every register write made for an order: what, when,
//!   which order, register, value and result (`pending` until the bus
//!   answers, then `ok` or the error).
//!
//! Life of an order: accepted → queued → released (values written) →
//! running (the machine runs on it) → completed (produced ≥ quantity).
//! queued/released/running can be held (released/running after start=false
//! was written) and resumed (back to queued, released again for what is
//! left); queued/held can be cancelled, released/running after start=false
//! was written; a release whose writes keep failing is aborted. `rejected`
//! is only ever an answer: rejected orders get no row.
//!
//! Idempotency (contract: `(order_id, revision)` is one order): the same pair
//! again is answered `accepted` again and changes nothing. A higher revision
//! replaces the latest one if that never went onto the machine (it is
//! reported `cancelled`, reason "replaced by revision N"); if it did, the new
//! revision is rejected. A lower revision than the latest is rejected.

use std::collections::BTreeMap;

use chrono::{DateTime, SecondsFormat, Utc};
use rusqlite::{params, Connection, OptionalExtension, Row, TransactionBehavior};
use serde_json::{Map, Value};

use crate::machine::MachineView;
use crate::orders::command::{Command, CommandKind, Rejection, WorkOrder};
use crate::orders::level;
use crate::store::StoreError;
use crate::uplink::outbox::{MessageClass, Outgoing};

/// Order tables (migration "orders").
pub const SCHEMA_V1: &str = "
CREATE TABLE work_order (
    order_id       TEXT NOT NULL,
    revision       INTEGER NOT NULL,
    arrival        INTEGER NOT NULL UNIQUE, -- order of arrival; the order number written to the machine
    machine        TEXT NOT NULL,
    product        TEXT NOT NULL,
    quantity       INTEGER NOT NULL,
    due            TEXT,                    -- RFC 3339 UTC
    sequence       INTEGER,                 -- release order (levelled plans: the levelled slot)
    plan_id        TEXT,
    plan_pos       INTEGER,                 -- position in the plan's release sequence
    ideal_cycle_s  REAL,
    params         TEXT NOT NULL DEFAULT '{}', -- JSON object
    state          TEXT NOT NULL,
    reason         TEXT,
    superseded     INTEGER NOT NULL DEFAULT 0, -- replaced by a higher revision
    produced       INTEGER NOT NULL DEFAULT 0, -- progress as last seen
    good           INTEGER NOT NULL DEFAULT 0,
    scrap          INTEGER NOT NULL DEFAULT 0,
    done_produced  INTEGER NOT NULL DEFAULT 0, -- made before the current release
    done_good      INTEGER NOT NULL DEFAULT 0,
    done_scrap     INTEGER NOT NULL DEFAULT 0,
    base_produced  INTEGER,                 -- machine totals at the current release
    base_good      INTEGER,
    base_scrap     INTEGER,
    released_at    TEXT,
    actual_start   TEXT,
    actual_end     TEXT,
    started_rank   INTEGER,                 -- n-th order of its plan to start (adherence)
    late_reported  INTEGER NOT NULL DEFAULT 0,
    reported_at    TEXT,                    -- last status sent
    updated_at     TEXT NOT NULL,
    PRIMARY KEY (order_id, revision)
);
CREATE INDEX work_order_machine_state ON work_order (machine, state);
CREATE INDEX work_order_plan ON work_order (plan_id);
CREATE TABLE order_event (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    at        TEXT NOT NULL,
    order_id  TEXT,
    revision  INTEGER,
    machine   TEXT,
    state     TEXT NOT NULL,
    body      TEXT NOT NULL                 -- the status body as enqueued (without envelope)
);
CREATE TABLE write_audit (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    at        TEXT NOT NULL,
    machine   TEXT NOT NULL,
    order_id  TEXT,
    revision  INTEGER,
    what      TEXT NOT NULL,                -- e.g. 'release attempt 1', 'hold', 'cancel'
    register  TEXT NOT NULL,                -- config name and address, e.g. 'quantity (holding 203)'
    value     TEXT NOT NULL,
    result    TEXT NOT NULL                 -- 'pending', 'ok', 'not written' or the error
);
";

/// How a status reaches the outbox: `crate::uplink::outbox::enqueue` in the
/// agent. A parameter so the book can be exercised without an uplink.
pub type Enqueue = fn(&Connection, &Outgoing) -> Result<u64, StoreError>;

/// The states of the contract, exactly these names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderState {
    Accepted,
    Rejected,
    Queued,
    Released,
    Running,
    Held,
    Completed,
    Cancelled,
    Aborted,
}

impl OrderState {
    pub fn as_str(self) -> &'static str {
        match self {
            OrderState::Accepted => "accepted",
            OrderState::Rejected => "rejected",
            OrderState::Queued => "queued",
            OrderState::Released => "released",
            OrderState::Running => "running",
            OrderState::Held => "held",
            OrderState::Completed => "completed",
            OrderState::Cancelled => "cancelled",
            OrderState::Aborted => "aborted",
        }
    }

    pub fn parse(s: &str) -> Option<OrderState> {
        Some(match s {
            "accepted" => OrderState::Accepted,
            "rejected" => OrderState::Rejected,
            "queued" => OrderState::Queued,
            "released" => OrderState::Released,
            "running" => OrderState::Running,
            "held" => OrderState::Held,
            "completed" => OrderState::Completed,
            "cancelled" => OrderState::Cancelled,
            "aborted" => OrderState::Aborted,
            _ => return None,
        })
    }

    /// Nothing more happens to an order in this state.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            OrderState::Completed
                | OrderState::Cancelled
                | OrderState::Aborted
                | OrderState::Rejected
        )
    }

    /// The order is on the machine (its values were written).
    pub fn on_machine(self) -> bool {
        matches!(self, OrderState::Released | OrderState::Running)
    }
}

impl std::fmt::Display for OrderState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Part counts of an order or a machine.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counts {
    pub produced: u64,
    pub good: u64,
    pub scrap: u64,
}

impl Counts {
    pub fn of_view(v: &MachineView) -> Counts {
        Counts {
            produced: v.produced_total,
            good: v.good_total,
            scrap: v.scrap_total,
        }
    }
}

/// One order as the book keeps it (`linegate orders` lists these).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct OrderRow {
    pub order_id: String,
    pub revision: u32,
    pub arrival: u64,
    pub machine: String,
    pub product: String,
    pub quantity: u32,
    pub due: Option<DateTime<Utc>>,
    pub sequence: Option<i64>,
    pub plan_id: Option<String>,
    pub plan_pos: Option<i64>,
    pub ideal_cycle_s: Option<f64>,
    pub params: BTreeMap<String, Value>,
    pub state: OrderState,
    pub reason: Option<String>,
    pub superseded: bool,
    /// Progress as last seen.
    pub progress: Counts,
    pub done: Counts,
    pub base: Option<Counts>,
    pub released_at: Option<DateTime<Utc>>,
    pub actual_start: Option<DateTime<Utc>>,
    pub actual_end: Option<DateTime<Utc>>,
    pub started_rank: Option<i64>,
    pub late_reported: bool,
    pub reported_at: Option<DateTime<Utc>>,
}

impl OrderRow {
    /// Parts still to make (what a re-release writes as quantity).
    pub fn remaining(&self) -> u32 {
        let left = u64::from(self.quantity).saturating_sub(self.progress.produced);
        u32::try_from(left).unwrap_or(u32::MAX).max(1)
    }
}

/// Something the dispatcher has to write before the book can go on.
#[derive(Debug, Clone, PartialEq)]
pub struct StopRequest {
    pub order_id: String,
    pub revision: u32,
    pub machine: String,
    /// `Held` or `Cancelled`, once start=false is on the machine.
    pub then: OrderState,
}

/// What an intake changed, for the dispatcher.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct IntakeOutcome {
    /// Statuses enqueued (one `accepted`/`rejected` per order, plus changes).
    pub statuses: usize,
    /// Machines whose queue changed (look at their interlock again).
    pub machines: Vec<String>,
    /// Stop writes to make (hold/cancel of an order on its machine).
    pub stops: Vec<StopRequest>,
}

pub fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn parse_ts(s: Option<String>) -> Option<DateTime<Utc>> {
    s.and_then(|s| DateTime::parse_from_rfc3339(&s).ok())
        .map(|t| t.with_timezone(&Utc))
}

const ROW_COLUMNS: &str = "order_id, revision, arrival, machine, product, quantity, due, sequence,
    plan_id, plan_pos, ideal_cycle_s, params, state, reason, superseded, produced, good, scrap,
    done_produced, done_good, done_scrap, base_produced, base_good, base_scrap, released_at,
    actual_start, actual_end, started_rank, late_reported, reported_at";

fn read_row(r: &Row<'_>) -> rusqlite::Result<OrderRow> {
    let u = |i: usize| -> rusqlite::Result<u64> { Ok(r.get::<_, i64>(i)?.max(0) as u64) };
    let params: String = r.get(11)?;
    let state: String = r.get(12)?;
    let base = match (
        r.get::<_, Option<i64>>(21)?,
        r.get::<_, Option<i64>>(22)?,
        r.get::<_, Option<i64>>(23)?,
    ) {
        (Some(p), Some(g), Some(s)) => Some(Counts {
            produced: p.max(0) as u64,
            good: g.max(0) as u64,
            scrap: s.max(0) as u64,
        }),
        _ => None,
    };
    Ok(OrderRow {
        order_id: r.get(0)?,
        revision: r.get::<_, i64>(1)?.clamp(0, i64::from(u32::MAX)) as u32,
        arrival: u(2)?,
        machine: r.get(3)?,
        product: r.get(4)?,
        quantity: r.get::<_, i64>(5)?.clamp(0, i64::from(u32::MAX)) as u32,
        due: parse_ts(r.get(6)?),
        sequence: r.get(7)?,
        plan_id: r.get(8)?,
        plan_pos: r.get(9)?,
        ideal_cycle_s: r.get(10)?,
        params: serde_json::from_str(&params).unwrap_or_default(),
        // An unknown state (a newer writer) reads as aborted: never released again.
        state: OrderState::parse(&state).unwrap_or(OrderState::Aborted),
        reason: r.get(13)?,
        superseded: r.get::<_, i64>(14)? != 0,
        progress: Counts {
            produced: u(15)?,
            good: u(16)?,
            scrap: u(17)?,
        },
        done: Counts {
            produced: u(18)?,
            good: u(19)?,
            scrap: u(20)?,
        },
        base,
        released_at: parse_ts(r.get(24)?),
        actual_start: parse_ts(r.get(25)?),
        actual_end: parse_ts(r.get(26)?),
        started_rank: r.get(27)?,
        late_reported: r.get::<_, i64>(28)? != 0,
        reported_at: parse_ts(r.get(29)?),
    })
}

fn query_rows(
    conn: &Connection,
    where_sql: &str,
    args: &[&dyn rusqlite::ToSql],
) -> Result<Vec<OrderRow>, StoreError> {
    let sql = format!("SELECT {ROW_COLUMNS} FROM work_order {where_sql}");
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt
        .query_map(args, read_row)?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

/// Orders of one machine (or all), in release order, for `linegate orders`.
pub fn list(conn: &Connection, machine: Option<&str>) -> Result<Vec<OrderRow>, StoreError> {
    const ORDER: &str = "ORDER BY machine, sequence IS NULL, sequence, due IS NULL, due, arrival";
    match machine {
        Some(m) => query_rows(conn, &format!("WHERE machine = ?1 {ORDER}"), &[&m]),
        None => query_rows(conn, ORDER, &[]),
    }
}

/// How many orders (latest revisions) are in each state, counted by SQLite:
/// a scrape of `/metrics` does not read years of finished orders to count
/// them. A state the store holds that this build does not know counts as
/// aborted, as [`list`] reads it.
pub fn count_by_state(
    conn: &Connection,
) -> Result<std::collections::BTreeMap<&'static str, u64>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT state, COUNT(*) FROM work_order WHERE superseded = 0 GROUP BY state",
    )?;
    let mut out = std::collections::BTreeMap::new();
    let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
    for row in rows {
        let (state, n) = row?;
        let state = OrderState::parse(&state).unwrap_or(OrderState::Aborted);
        *out.entry(state.as_str()).or_default() += n.max(0) as u64;
    }
    Ok(out)
}

/// One order by key.
pub fn get(
    conn: &Connection,
    order_id: &str,
    revision: u32,
) -> Result<Option<OrderRow>, StoreError> {
    Ok(query_rows(
        conn,
        "WHERE order_id = ?1 AND revision = ?2",
        &[&order_id, &i64::from(revision)],
    )?
    .into_iter()
    .next())
}

/// The latest revision of an order.
pub fn latest(conn: &Connection, order_id: &str) -> Result<Option<OrderRow>, StoreError> {
    Ok(query_rows(
        conn,
        "WHERE order_id = ?1 ORDER BY revision DESC LIMIT 1",
        &[&order_id],
    )?
    .into_iter()
    .next())
}

/// The order on a machine (released or running), if any.
pub fn current(conn: &Connection, machine: &str) -> Result<Option<OrderRow>, StoreError> {
    Ok(query_rows(
        conn,
        "WHERE machine = ?1 AND state IN ('released', 'running') ORDER BY arrival LIMIT 1",
        &[&machine],
    )?
    .into_iter()
    .next())
}

/// The orders on machines (released or running, latest revisions), in
/// release order per machine: what the line page shows, without reading
/// the finished orders of years.
pub fn on_machines(conn: &Connection) -> Result<Vec<OrderRow>, StoreError> {
    query_rows(
        conn,
        "WHERE state IN ('released', 'running') AND superseded = 0
         ORDER BY machine, sequence IS NULL, sequence, due IS NULL, due, arrival",
        &[],
    )
}

/// The next order to release on a machine: sequence, then due, then arrival.
pub fn next_to_release(conn: &Connection, machine: &str) -> Result<Option<OrderRow>, StoreError> {
    Ok(query_rows(
        conn,
        "WHERE machine = ?1 AND state = 'queued'
         ORDER BY sequence IS NULL, sequence, due IS NULL, due, arrival LIMIT 1",
        &[&machine],
    )?
    .into_iter()
    .next())
}

/// Machines with an order on them (released or running), for reload after a restart.
pub fn machines_with_orders(conn: &Connection) -> Result<Vec<String>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT DISTINCT machine FROM work_order WHERE state NOT IN ('completed', 'cancelled', 'aborted')",
    )?;
    let rows = stmt
        .query_map([], |r| r.get::<_, String>(0))?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

/// Plan summary: `{"orders", "completed", "completed_on_time", "started",
/// "started_in_sequence", "levelled_sequence"}`. `started_in_sequence`
/// counts started orders that no order planned before them started after.
pub fn plan_summary(conn: &Connection, plan_id: &str) -> Result<Value, StoreError> {
    let (orders, completed, on_time, started): (i64, i64, i64, i64) = conn.query_row(
        "SELECT COUNT(*),
                COALESCE(SUM(state = 'completed'), 0),
                COALESCE(SUM(state = 'completed' AND late_reported = 0), 0),
                COALESCE(SUM(started_rank IS NOT NULL), 0)
         FROM work_order WHERE plan_id = ?1 AND superseded = 0",
        [plan_id],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
    )?;
    let in_sequence: i64 = conn.query_row(
        "SELECT COUNT(*) FROM work_order a
         WHERE a.plan_id = ?1 AND a.superseded = 0 AND a.started_rank IS NOT NULL
           AND NOT EXISTS (SELECT 1 FROM work_order b
                           WHERE b.plan_id = a.plan_id AND b.superseded = 0
                             AND b.plan_pos < a.plan_pos AND b.started_rank > a.started_rank)",
        [plan_id],
        |r| r.get(0),
    )?;
    let mut sequence_stmt = conn.prepare_cached(
        "SELECT order_id FROM work_order WHERE plan_id = ?1 AND superseded = 0 ORDER BY plan_pos",
    )?;
    let sequence: Vec<String> = sequence_stmt
        .query_map([plan_id], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    Ok(serde_json::json!({
        "orders": orders,
        "completed": completed,
        "completed_on_time": on_time,
        "started": started,
        "started_in_sequence": in_sequence,
        "sequence": sequence,
    }))
}

/// The contract's order status body (without envelope). Extra fields:
/// `plan_id` and `plan` (summary) on orders of a plan, `command` on the
/// answer to a hold/resume/cancel.
fn status_body(
    conn: &Connection,
    row: &OrderRow,
    state: OrderState,
    reason: Option<&str>,
    command: Option<CommandKind>,
) -> Result<Map<String, Value>, StoreError> {
    let opt_ts = |t: Option<DateTime<Utc>>| t.map_or(Value::Null, |t| Value::from(ts(t)));
    let mut body = Map::new();
    body.insert("order_id".into(), Value::from(row.order_id.clone()));
    body.insert("revision".into(), Value::from(row.revision));
    body.insert("machine".into(), Value::from(row.machine.clone()));
    body.insert("state".into(), Value::from(state.as_str()));
    body.insert(
        "reason".into(),
        reason.map_or(Value::Null, |r| Value::from(r.to_owned())),
    );
    body.insert("produced".into(), Value::from(row.progress.produced));
    body.insert("good".into(), Value::from(row.progress.good));
    body.insert("scrap".into(), Value::from(row.progress.scrap));
    body.insert("actual_start".into(), opt_ts(row.actual_start));
    body.insert("actual_end".into(), opt_ts(row.actual_end));
    body.insert("late".into(), Value::Bool(row.late_reported));
    if let Some(plan_id) = &row.plan_id {
        body.insert("plan_id".into(), Value::from(plan_id.clone()));
        body.insert("plan".into(), plan_summary(conn, plan_id)?);
    }
    if let Some(c) = command {
        body.insert("command".into(), Value::from(c.as_str()));
    }
    // v1.1: the forecast last published, on statuses of an open order.
    if matches!(
        state,
        OrderState::Queued | OrderState::Released | OrderState::Running | OrderState::Held
    ) {
        crate::orders::outlook::add_forecast_fields(conn, &row.order_id, row.revision, &mut body)?;
    }
    Ok(body)
}

/// A forecast status of an open order: its current state, reason
/// `forecast`, the forecast fields (the caller recorded them first). False
/// when the order is not open. In the caller's transaction.
pub fn report_forecast(
    conn: &Connection,
    enqueue: Enqueue,
    order_id: &str,
    revision: u32,
    now: DateTime<Utc>,
) -> Result<bool, StoreError> {
    let Some(row) = get(conn, order_id, revision)? else {
        return Ok(false);
    };
    if row.state.is_final() || row.state == OrderState::Accepted {
        return Ok(false);
    }
    let body = status_body(conn, &row, row.state, Some("forecast"), None)?;
    send(conn, enqueue, body, now)?;
    Ok(true)
}

/// Record and enqueue one status body.
fn send(
    conn: &Connection,
    enqueue: Enqueue,
    body: Map<String, Value>,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    let get = |k: &str| body.get(k).cloned().unwrap_or(Value::Null);
    conn.execute(
        "INSERT INTO order_event (at, order_id, revision, machine, state, body)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![
            ts(now),
            get("order_id").as_str(),
            get("revision").as_i64(),
            get("machine").as_str(),
            get("state").as_str().unwrap_or(""),
            Value::Object(body.clone()).to_string(),
        ],
    )?;
    enqueue(
        conn,
        &Outgoing {
            topic_suffix: "orders/status".into(),
            class: MessageClass::Durable,
            retain: false,
            ts: now,
            body,
        },
    )?;
    Ok(())
}

/// Report an order's status and remember when.
fn report(
    conn: &Connection,
    enqueue: Enqueue,
    row: &OrderRow,
    state: OrderState,
    reason: Option<&str>,
    command: Option<CommandKind>,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    let body = status_body(conn, row, state, reason, command)?;
    send(conn, enqueue, body, now)?;
    conn.execute(
        "UPDATE work_order SET reported_at = ?3 WHERE order_id = ?1 AND revision = ?2",
        params![row.order_id, i64::from(row.revision), ts(now)],
    )?;
    Ok(())
}

/// Write a row's mutable columns back.
fn save(conn: &Connection, row: &OrderRow, now: DateTime<Utc>) -> Result<(), StoreError> {
    let opt = |t: Option<DateTime<Utc>>| t.map(ts);
    conn.execute(
        "UPDATE work_order SET state = ?3, reason = ?4, superseded = ?5,
            produced = ?6, good = ?7, scrap = ?8,
            done_produced = ?9, done_good = ?10, done_scrap = ?11,
            base_produced = ?12, base_good = ?13, base_scrap = ?14,
            released_at = ?15, actual_start = ?16, actual_end = ?17,
            started_rank = ?18, late_reported = ?19, sequence = ?20, updated_at = ?21
         WHERE order_id = ?1 AND revision = ?2",
        params![
            row.order_id,
            i64::from(row.revision),
            row.state.as_str(),
            row.reason,
            row.superseded,
            row.progress.produced as i64,
            row.progress.good as i64,
            row.progress.scrap as i64,
            row.done.produced as i64,
            row.done.good as i64,
            row.done.scrap as i64,
            row.base.map(|b| b.produced as i64),
            row.base.map(|b| b.good as i64),
            row.base.map(|b| b.scrap as i64),
            opt(row.released_at),
            opt(row.actual_start),
            opt(row.actual_end),
            row.started_rank,
            row.late_reported,
            row.sequence,
            ts(now),
        ],
    )?;
    Ok(())
}

/// Change state, save and report, in the caller's transaction.
fn transition(
    conn: &Connection,
    enqueue: Enqueue,
    row: &mut OrderRow,
    state: OrderState,
    reason: Option<String>,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    row.state = state;
    row.reason = reason;
    save(conn, row, now)?;
    report(
        conn,
        enqueue,
        row,
        state,
        row.reason.clone().as_deref(),
        None,
        now,
    )
}

fn reject(
    conn: &Connection,
    enqueue: Enqueue,
    r: &Rejection,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    let mut body = Map::new();
    let opt = |s: &Option<String>| s.clone().map_or(Value::Null, Value::from);
    body.insert("order_id".into(), opt(&r.order_id));
    body.insert(
        "revision".into(),
        r.revision.map_or(Value::Null, Value::from),
    );
    body.insert("machine".into(), opt(&r.machine));
    body.insert("state".into(), Value::from("rejected"));
    body.insert("reason".into(), Value::from(r.reason.clone()));
    body.insert("produced".into(), Value::from(0));
    body.insert("good".into(), Value::from(0));
    body.insert("scrap".into(), Value::from(0));
    body.insert("actual_start".into(), Value::Null);
    body.insert("actual_end".into(), Value::Null);
    body.insert("late".into(), Value::Bool(false));
    if let Some(p) = &r.plan_id {
        body.insert("plan_id".into(), Value::from(p.clone()));
    }
    if let Some(c) = r.command {
        body.insert("command".into(), Value::from(c.as_str()));
    }
    send(conn, enqueue, body, now)
}

/// What to do with an arriving (order_id, revision).
#[derive(Debug, Clone, PartialEq)]
enum Admit {
    New,
    /// Same pair again: answer accepted, change nothing.
    Duplicate(Box<OrderRow>),
    /// Replaces this not-started revision.
    Replace(Box<OrderRow>),
    Refuse(String),
}

fn admit(conn: &Connection, o: &WorkOrder) -> Result<Admit, StoreError> {
    let Some(prev) = latest(conn, &o.order_id)? else {
        return Ok(Admit::New);
    };
    Ok(if o.revision == prev.revision {
        Admit::Duplicate(Box::new(prev))
    } else if o.revision < prev.revision {
        Admit::Refuse(format!(
            "order {}: revision {} is lower than revision {} already seen",
            o.order_id, o.revision, prev.revision
        ))
    } else if prev.released_at.is_some() || prev.state == OrderState::Completed {
        Admit::Refuse(format!(
            "order {}: revision {} cannot replace revision {}: it has started ({})",
            o.order_id, o.revision, prev.revision, prev.state
        ))
    } else if o.machine != prev.machine && !prev.state.is_final() {
        Admit::Refuse(format!(
            "order {}: revision {} moves the order from machine {} to {}; cancel revision {} first",
            o.order_id, o.revision, prev.machine, o.machine, prev.revision
        ))
    } else {
        Admit::Replace(Box::new(prev))
    })
}

fn next_arrival(conn: &Connection) -> Result<u64, StoreError> {
    let n: i64 = conn.query_row(
        "SELECT COALESCE(MAX(arrival), 0) + 1 FROM work_order",
        [],
        |r| r.get(0),
    )?;
    Ok(n.max(1) as u64)
}

fn insert(
    conn: &Connection,
    o: &WorkOrder,
    plan: Option<(&str, i64)>,
    now: DateTime<Utc>,
) -> Result<OrderRow, StoreError> {
    let arrival = next_arrival(conn)?;
    let params_json = serde_json::to_string(&o.params).unwrap_or_else(|_| "{}".into());
    conn.execute(
        "INSERT INTO work_order (order_id, revision, arrival, machine, product, quantity, due,
            sequence, plan_id, plan_pos, ideal_cycle_s, params, state, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, 'accepted', ?13)",
        params![
            o.order_id,
            i64::from(o.revision),
            arrival as i64,
            o.machine,
            o.product,
            i64::from(o.quantity),
            o.due.map(ts),
            o.sequence,
            plan.map(|p| p.0),
            plan.map(|p| p.1),
            o.ideal_cycle_s,
            params_json,
            ts(now),
        ],
    )?;
    get(conn, &o.order_id, o.revision)?.ok_or(StoreError::Sql(rusqlite::Error::QueryReturnedNoRows))
}

/// Take one parsed message into the book, in one transaction: rows, the
/// `accepted`/`rejected` answer of every order, and the changes that follow
/// (`queued`, `held`, `cancelled`, replaced revisions). `busy` tells whether
/// an order has a write to its machine in flight (commands on it are refused
/// until that write is done).
pub fn intake(
    conn: &mut Connection,
    enqueue: Enqueue,
    parsed: Result<Command, Vec<Rejection>>,
    busy: &dyn Fn(&str) -> bool,
    now: DateTime<Utc>,
) -> Result<IntakeOutcome, StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut out = IntakeOutcome::default();
    match parsed {
        Err(rejections) => {
            for r in &rejections {
                reject(&tx, enqueue, r, now)?;
                out.statuses += 1;
            }
        }
        Ok(Command::Order(o)) => take_orders(&tx, enqueue, vec![o], None, now, &mut out)?,
        Ok(Command::Plan(plan)) => {
            let mut orders = plan.orders;
            // The plan's release sequence: levelled, or as given.
            let order_idx: Vec<usize> = if plan.level {
                match level::level_orders(&orders, plan.pitch) {
                    Ok(seq) => seq,
                    Err(e) => {
                        for o in &orders {
                            reject(
                                &tx,
                                enqueue,
                                &plan_rejection(o, &plan.plan_id, e.to_string()),
                                now,
                            )?;
                            out.statuses += 1;
                        }
                        tx.commit()?;
                        return Ok(out);
                    }
                }
            } else {
                let mut idx: Vec<usize> = (0..orders.len()).collect();
                idx.sort_by_key(|&i| {
                    let o = &orders[i];
                    (o.sequence.is_none(), o.sequence, o.due.is_none(), o.due, i)
                });
                idx
            };
            if plan.level {
                // The levelled slot becomes the release sequence, after the
                // smallest sequence the planner gave.
                let base = orders.iter().filter_map(|o| o.sequence).min().unwrap_or(0);
                for (pos, &i) in order_idx.iter().enumerate() {
                    orders[i].sequence = Some(base.saturating_add(pos as i64));
                }
            }
            let ordered: Vec<WorkOrder> = order_idx.iter().map(|&i| orders[i].clone()).collect();
            take_orders(&tx, enqueue, ordered, Some(&plan.plan_id), now, &mut out)?;
        }
        Ok(Command::OnOrder { kind, order_id }) => {
            on_order(&tx, enqueue, kind, &order_id, busy, now, &mut out)?;
        }
    }
    tx.commit()?;
    out.machines.sort();
    out.machines.dedup();
    Ok(out)
}

fn plan_rejection(o: &WorkOrder, plan_id: &str, reason: String) -> Rejection {
    Rejection {
        order_id: Some(o.order_id.clone()),
        revision: Some(o.revision),
        machine: Some(o.machine.clone()),
        plan_id: Some(plan_id.to_owned()),
        command: None,
        reason: format!("plan {plan_id}: {reason}"),
    }
}

/// Admit a list of orders (a plan is all or nothing), in release order.
fn take_orders(
    tx: &Connection,
    enqueue: Enqueue,
    orders: Vec<WorkOrder>,
    plan_id: Option<&str>,
    now: DateTime<Utc>,
    out: &mut IntakeOutcome,
) -> Result<(), StoreError> {
    let mut admits = Vec::with_capacity(orders.len());
    for o in &orders {
        admits.push(admit(tx, o)?);
    }
    if let Some(problem) = admits.iter().find_map(|a| match a {
        Admit::Refuse(r) => Some(r.clone()),
        _ => None,
    }) {
        for (o, a) in orders.iter().zip(&admits) {
            let reason = match (a, plan_id) {
                (Admit::Refuse(r), Some(p)) => format!("plan {p}: {r}"),
                (Admit::Refuse(r), None) => r.clone(),
                (_, Some(p)) => format!("plan {p} rejected as a whole: {problem}"),
                (_, None) => problem.clone(),
            };
            let mut r = plan_rejection(o, plan_id.unwrap_or(""), String::new());
            r.plan_id = plan_id.map(str::to_owned);
            r.reason = reason;
            reject(tx, enqueue, &r, now)?;
            out.statuses += 1;
        }
        return Ok(());
    }
    for (pos, (o, a)) in orders.iter().zip(admits).enumerate() {
        match a {
            Admit::Duplicate(prev) => {
                let reason = format!(
                    "duplicate of revision {}: already known, now {}",
                    prev.revision, prev.state
                );
                report(
                    tx,
                    enqueue,
                    &prev,
                    OrderState::Accepted,
                    Some(&reason),
                    None,
                    now,
                )?;
                out.statuses += 1;
            }
            Admit::Replace(mut prev) => {
                if !prev.state.is_final() {
                    prev.superseded = true;
                    transition(
                        tx,
                        enqueue,
                        &mut prev,
                        OrderState::Cancelled,
                        Some(format!("replaced by revision {}", o.revision)),
                        now,
                    )?;
                    out.statuses += 1;
                } else {
                    prev.superseded = true;
                    save(tx, &prev, now)?;
                }
                admit_new(tx, enqueue, o, plan_id.map(|p| (p, pos as i64)), now, out)?;
            }
            Admit::New => admit_new(tx, enqueue, o, plan_id.map(|p| (p, pos as i64)), now, out)?,
            Admit::Refuse(_) => {}
        }
    }
    Ok(())
}

fn admit_new(
    tx: &Connection,
    enqueue: Enqueue,
    o: &WorkOrder,
    plan: Option<(&str, i64)>,
    now: DateTime<Utc>,
    out: &mut IntakeOutcome,
) -> Result<(), StoreError> {
    let mut row = insert(tx, o, plan, now)?;
    report(tx, enqueue, &row, OrderState::Accepted, None, None, now)?;
    transition(tx, enqueue, &mut row, OrderState::Queued, None, now)?;
    out.statuses += 2;
    out.machines.push(o.machine.clone());
    Ok(())
}

fn on_order(
    tx: &Connection,
    enqueue: Enqueue,
    kind: CommandKind,
    order_id: &str,
    busy: &dyn Fn(&str) -> bool,
    now: DateTime<Utc>,
    out: &mut IntakeOutcome,
) -> Result<(), StoreError> {
    let refuse = |row: Option<&OrderRow>, reason: String| -> Result<(), StoreError> {
        reject(
            tx,
            enqueue,
            &Rejection {
                order_id: Some(order_id.to_owned()),
                revision: row.map(|r| r.revision),
                machine: row.map(|r| r.machine.clone()),
                plan_id: row.and_then(|r| r.plan_id.clone()),
                command: Some(kind),
                reason,
            },
            now,
        )
    };
    out.statuses += 1;
    let verb = kind.as_str();
    let Some(mut row) = latest(tx, order_id)? else {
        return refuse(None, format!("{verb}: order {order_id} is unknown"));
    };
    if busy(order_id) {
        return refuse(
            Some(&row),
            format!(
                "{verb}: order {order_id} is being written to machine {} right now; send the command again",
                row.machine
            ),
        );
    }
    let state = row.state;
    let accept = |row: &OrderRow| {
        report(
            tx,
            enqueue,
            row,
            OrderState::Accepted,
            None,
            Some(kind),
            now,
        )
    };
    match (kind, state) {
        (CommandKind::Hold, OrderState::Queued | OrderState::Accepted) => {
            accept(&row)?;
            transition(
                tx,
                enqueue,
                &mut row,
                OrderState::Held,
                Some("held by command".into()),
                now,
            )?;
            out.statuses += 1;
            out.machines.push(row.machine.clone());
        }
        (CommandKind::Hold | CommandKind::Cancel, s) if s.on_machine() => {
            accept(&row)?;
            out.stops.push(StopRequest {
                order_id: row.order_id.clone(),
                revision: row.revision,
                machine: row.machine.clone(),
                then: if kind == CommandKind::Hold {
                    OrderState::Held
                } else {
                    OrderState::Cancelled
                },
            });
        }
        (CommandKind::Resume, OrderState::Held) => {
            accept(&row)?;
            transition(
                tx,
                enqueue,
                &mut row,
                OrderState::Queued,
                Some("resumed".into()),
                now,
            )?;
            out.statuses += 1;
            out.machines.push(row.machine.clone());
        }
        (CommandKind::Cancel, OrderState::Queued | OrderState::Held | OrderState::Accepted) => {
            accept(&row)?;
            row.actual_end = Some(now);
            transition(
                tx,
                enqueue,
                &mut row,
                OrderState::Cancelled,
                Some("cancelled by command".into()),
                now,
            )?;
            out.statuses += 1;
            out.machines.push(row.machine.clone());
        }
        (CommandKind::Hold, OrderState::Held) => {
            refuse(
                Some(&row),
                format!("hold: order {order_id} is already held"),
            )?;
        }
        (CommandKind::Resume, s) => {
            refuse(
                Some(&row),
                format!("resume: order {order_id} is {s}, not held"),
            )?;
        }
        (_, s) => {
            refuse(
                Some(&row),
                format!("{verb}: order {order_id} is {s}; nothing left to {verb}"),
            )?;
        }
    }
    Ok(())
}

/// The order's values are on the machine: released, counting from `totals`.
pub fn mark_released(
    conn: &mut Connection,
    enqueue: Enqueue,
    order_id: &str,
    revision: u32,
    totals: Counts,
    now: DateTime<Utc>,
) -> Result<Option<OrderRow>, StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let Some(mut row) = get(&tx, order_id, revision)? else {
        return Ok(None);
    };
    row.base = Some(totals);
    row.released_at = Some(now);
    transition(&tx, enqueue, &mut row, OrderState::Released, None, now)?;
    tx.commit()?;
    Ok(Some(row))
}

/// A release (or a stop) failed for good.
pub fn mark_aborted(
    conn: &mut Connection,
    enqueue: Enqueue,
    order_id: &str,
    revision: u32,
    reason: String,
    now: DateTime<Utc>,
) -> Result<Option<OrderRow>, StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let Some(mut row) = get(&tx, order_id, revision)? else {
        return Ok(None);
    };
    row.actual_end = Some(now);
    row.base = None;
    transition(
        &tx,
        enqueue,
        &mut row,
        OrderState::Aborted,
        Some(reason),
        now,
    )?;
    tx.commit()?;
    Ok(Some(row))
}

/// Progress of an order from machine totals; rebases when the totals went
/// backwards (the engine restarted its count): parts made so far are kept.
fn apply_totals(row: &mut OrderRow, totals: Counts) {
    let base = match row.base {
        Some(b)
            if totals.produced >= b.produced
                && totals.good >= b.good
                && totals.scrap >= b.scrap =>
        {
            b
        }
        _ => {
            row.done = row.progress;
            row.base = Some(totals);
            totals
        }
    };
    row.progress = Counts {
        produced: row.done.produced + (totals.produced - base.produced),
        good: row.done.good + (totals.good - base.good),
        scrap: row.done.scrap + (totals.scrap - base.scrap),
    };
}

/// A stop write finished: on success the order is held or cancelled with
/// its progress kept; on failure it stays as it is and the failure is
/// reported with the reason.
pub fn finish_stop(
    conn: &mut Connection,
    enqueue: Enqueue,
    stop: &StopRequest,
    totals: Option<Counts>,
    result: Result<(), String>,
    now: DateTime<Utc>,
) -> Result<Option<OrderRow>, StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let Some(mut row) = get(&tx, &stop.order_id, stop.revision)? else {
        return Ok(None);
    };
    match result {
        Ok(()) => {
            if let Some(t) = totals {
                apply_totals(&mut row, t);
            }
            row.done = row.progress;
            row.base = None;
            let reason = if stop.then == OrderState::Held {
                "held by command"
            } else {
                row.actual_end = Some(now);
                "cancelled by command"
            };
            transition(&tx, enqueue, &mut row, stop.then, Some(reason.into()), now)?;
        }
        Err(e) => {
            let verb = if stop.then == OrderState::Held {
                "hold"
            } else {
                "cancel"
            };
            let reason = format!("{verb} failed, the order is still on the machine: {e}");
            report(&tx, enqueue, &row, row.state, Some(&reason), None, now)?;
        }
    }
    tx.commit()?;
    Ok(Some(row))
}

/// Follow the machine's view for the order on it: `running` when the
/// machine runs on it, progress from the totals, `completed` when produced
/// reaches the quantity. A progress-only status is sent at most every
/// `progress_every`. Returns the order if it completed.
pub fn observe(
    conn: &mut Connection,
    enqueue: Enqueue,
    view: &MachineView,
    progress_every: chrono::Duration,
    now: DateTime<Utc>,
) -> Result<Option<OrderRow>, StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let Some(mut row) = current(&tx, &view.machine)? else {
        return Ok(None);
    };
    let before = row.clone();
    apply_totals(&mut row, Counts::of_view(view));
    let mut completed = None;
    let mut reported = false;
    if row.state == OrderState::Released
        && (view.state == crate::machine::MachineState::Running
            || row.progress.produced > before.progress.produced)
    {
        let start = if row.released_at.is_some_and(|r| view.since >= r)
            && view.state == crate::machine::MachineState::Running
        {
            view.since
        } else {
            now
        };
        if row.actual_start.is_none() {
            row.actual_start = Some(start);
        }
        if let (Some(plan), None) = (&row.plan_id, row.started_rank) {
            let n: i64 = tx.query_row(
                "SELECT COUNT(*) FROM work_order WHERE plan_id = ?1 AND started_rank IS NOT NULL",
                [plan],
                |r| r.get(0),
            )?;
            row.started_rank = Some(n);
        }
        transition(&tx, enqueue, &mut row, OrderState::Running, None, now)?;
        reported = true;
    }
    if row.progress.produced >= u64::from(row.quantity) {
        row.actual_end = Some(now);
        if row.due.is_some_and(|d| now > d) {
            row.late_reported = true;
        }
        row.done = row.progress;
        row.base = None;
        transition(&tx, enqueue, &mut row, OrderState::Completed, None, now)?;
        completed = Some(row);
    } else if row != before {
        // Progress, or a new baseline after the totals went backwards.
        save(&tx, &row, now)?;
        let due_report = row.reported_at.is_none_or(|t| now - t >= progress_every);
        if !reported && row.progress != before.progress && due_report {
            report(
                &tx,
                enqueue,
                &row,
                row.state,
                row.reason.clone().as_deref(),
                None,
                now,
            )?;
        }
    }
    tx.commit()?;
    Ok(completed)
}

/// Report `late: true` once for every order not completed by its due.
/// Returns how many were reported.
pub fn check_late(
    conn: &mut Connection,
    enqueue: Enqueue,
    now: DateTime<Utc>,
) -> Result<usize, StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let rows = query_rows(
        &tx,
        "WHERE late_reported = 0 AND due IS NOT NULL AND due < ?1
           AND state IN ('accepted', 'queued', 'released', 'running', 'held')",
        &[&ts(now)],
    )?;
    for row in &rows {
        let mut row = row.clone();
        row.late_reported = true;
        save(&tx, &row, now)?;
        let reason = format!(
            "late: not completed by its due {}",
            row.due.map(ts).unwrap_or_default()
        );
        report(&tx, enqueue, &row, row.state, Some(&reason), None, now)?;
    }
    tx.commit()?;
    Ok(rows.len())
}

/// The earliest due among orders that may still become late.
pub fn next_due(conn: &Connection) -> Result<Option<DateTime<Utc>>, StoreError> {
    let s: Option<String> = conn
        .query_row(
            "SELECT MIN(due) FROM work_order WHERE late_reported = 0 AND due IS NOT NULL
               AND state IN ('accepted', 'queued', 'released', 'running', 'held')",
            [],
            |r| r.get(0),
        )
        .optional()?
        .flatten();
    Ok(parse_ts(s))
}

/// One register of a write batch, for the audit trail.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditEntry {
    pub register: String,
    pub value: String,
}

/// Record the writes of a batch as `pending` before they are made; returns their ids.
pub fn audit_pending(
    conn: &Connection,
    machine: &str,
    order: Option<(&str, u32)>,
    what: &str,
    entries: &[AuditEntry],
    now: DateTime<Utc>,
) -> Result<Vec<i64>, StoreError> {
    let mut ids = Vec::with_capacity(entries.len());
    let mut stmt = conn.prepare_cached(
        "INSERT INTO write_audit (at, machine, order_id, revision, what, register, value, result)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'pending')",
    )?;
    for e in entries {
        stmt.execute(params![
            ts(now),
            machine,
            order.map(|o| o.0),
            order.map(|o| i64::from(o.1)),
            what,
            e.register,
            e.value,
        ])?;
        ids.push(conn.last_insert_rowid());
    }
    Ok(ids)
}

/// Record the result of each audited write.
pub fn audit_result(conn: &Connection, results: &[(i64, String)]) -> Result<(), StoreError> {
    let mut stmt = conn.prepare_cached("UPDATE write_audit SET result = ?2 WHERE id = ?1")?;
    for (id, result) in results {
        stmt.execute(params![id, result])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_row(state: OrderState) -> OrderRow {
        OrderRow {
            order_id: "WO-1".into(),
            revision: 1,
            arrival: 1,
            machine: "m".into(),
            product: "P".into(),
            quantity: 10,
            due: None,
            sequence: None,
            plan_id: None,
            plan_pos: None,
            ideal_cycle_s: None,
            params: BTreeMap::new(),
            state,
            reason: None,
            superseded: false,
            progress: Counts::default(),
            done: Counts::default(),
            base: Some(Counts {
                produced: 100,
                good: 90,
                scrap: 10,
            }),
            released_at: None,
            actual_start: None,
            actual_end: None,
            started_rank: None,
            late_reported: false,
            reported_at: None,
        }
    }

    #[test]
    fn progress_counts_from_the_totals_at_release() {
        let mut row = fake_row(OrderState::Running);
        apply_totals(
            &mut row,
            Counts {
                produced: 105,
                good: 94,
                scrap: 11,
            },
        );
        assert_eq!(
            row.progress,
            Counts {
                produced: 5,
                good: 4,
                scrap: 1
            }
        );
        assert_eq!(row.remaining(), 5);
    }

    #[test]
    fn totals_going_backwards_keep_the_parts_already_made() {
        let mut row = fake_row(OrderState::Running);
        apply_totals(
            &mut row,
            Counts {
                produced: 104,
                good: 94,
                scrap: 10,
            },
        );
        apply_totals(
            &mut row,
            Counts {
                produced: 2,
                good: 2,
                scrap: 0,
            },
        );
        assert_eq!(row.progress.produced, 4);
        apply_totals(
            &mut row,
            Counts {
                produced: 5,
                good: 5,
                scrap: 0,
            },
        );
        assert_eq!(row.progress.produced, 7);
    }

    /// Rows as a store holds them: (order, revision, state, superseded).
    fn put_rows(
        c: &Connection,
        machine: &str,
        rows: &[(&str, i64, &str, i64)],
    ) -> Result<(), StoreError> {
        for (id, rev, state, superseded) in rows {
            let arrival = next_arrival(c)? as i64;
            c.execute(
                "INSERT INTO work_order (order_id, revision, arrival, machine, product,
                    quantity, params, state, superseded, updated_at)
                 VALUES (?1, ?2, ?3, ?4, 'P', 10, '{}', ?5, ?6, '2026-12-01T00:00:00Z')",
                params![id, rev, arrival, machine, state, superseded],
            )?;
        }
        Ok(())
    }

    #[tokio::test]
    async fn the_orders_on_machines_are_the_latest_released_or_running_ones() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(dir.path()).unwrap();
        let on = store
            .call(|c| {
                put_rows(
                    c,
                    "press",
                    &[("A", 1, "running", 1), ("A", 2, "running", 0)],
                )?;
                put_rows(
                    c,
                    "press",
                    &[("B", 1, "completed", 0), ("C", 1, "queued", 0)],
                )?;
                put_rows(
                    c,
                    "lathe",
                    &[("D", 1, "released", 0), ("E", 1, "aborted", 0)],
                )?;
                on_machines(c)
            })
            .await
            .unwrap();
        let keys: Vec<_> = on
            .iter()
            .map(|o| (o.machine.as_str(), o.order_id.as_str(), o.revision))
            .collect();
        assert_eq!(keys, [("lathe", "D", 1), ("press", "A", 2)]);
    }

    #[tokio::test]
    async fn orders_are_counted_by_state_in_sql_as_the_rows_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(dir.path()).unwrap();
        let (counted, listed) = store
            .call(|c| {
                let rows = [
                    ("WO-1", 1, "queued", 1),
                    ("WO-1", 2, "running", 0),
                    ("WO-2", 1, "completed", 0),
                    ("WO-3", 1, "completed", 0),
                    ("WO-4", 1, "state-of-a-newer-build", 0),
                    ("WO-5", 1, "held", 1),
                ];
                put_rows(c, "m", &rows)?;
                let mut listed: BTreeMap<&'static str, u64> = BTreeMap::new();
                for o in list(c, None)?.iter().filter(|o| !o.superseded) {
                    *listed.entry(o.state.as_str()).or_default() += 1;
                }
                Ok((count_by_state(c)?, listed))
            })
            .await
            .unwrap();
        assert_eq!(counted, listed);
        assert_eq!(
            counted.into_iter().collect::<Vec<_>>(),
            [("aborted", 1), ("completed", 2), ("running", 1)]
        );
    }

    #[test]
    fn every_state_name_reads_back() {
        for s in [
            OrderState::Accepted,
            OrderState::Rejected,
            OrderState::Queued,
            OrderState::Released,
            OrderState::Running,
            OrderState::Held,
            OrderState::Completed,
            OrderState::Cancelled,
            OrderState::Aborted,
        ] {
            assert_eq!(OrderState::parse(s.as_str()), Some(s));
        }
    }
}
