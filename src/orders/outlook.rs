//! The outlook of a machine, from the store to the outbox: reads its open
//! orders and recent history, has [`forecast`] and [`capacity`] decide,
//! and records and enqueues what is news, in one transaction. Runs on the
//! store thread (the order task hands it over); never reads the clock:
//! the caller passes `now`.
//!
//! Owns the `order_forecast` table: the forecast last published for each
//! order (`forecast_end`, `at_risk`, `basis`, `published_at`). Every order
//! status of an open order carries it (`book::status_body`), and
//! `linegate orders` shows it. A forecast is published as an order status
//! in the order's current state with reason `forecast`; capacity as the
//! retained `{p}/m/{machine}/capacity`.

use std::collections::HashMap;

use chrono::{DateTime, Duration, Utc};
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use serde_json::{json, Map, Value};

use crate::machine::shift::ShiftCalendar;
use crate::orders::book::{self, ts, Enqueue, OrderState};
use crate::orders::capacity::{self, Capacity};
use crate::orders::forecast::{
    self, Basis, Forecast, OpenOrder, PastOrder, PublishRule, Published, QueueForecast,
};
use crate::store::StoreError;
use crate::uplink::outbox::{MessageClass, Outgoing};

/// Forecast table (migration "order forecasts").
pub const SCHEMA_V1: &str = "
CREATE TABLE order_forecast (
    order_id      TEXT NOT NULL,
    revision      INTEGER NOT NULL,
    forecast_end  TEXT,             -- RFC 3339 UTC; NULL: no rate known
    at_risk       INTEGER NOT NULL,
    basis         TEXT,             -- product_history, machine_history, ideal_cycle
    published_at  TEXT NOT NULL,
    PRIMARY KEY (order_id, revision)
);
";

/// Open orders of a machine in release order: on the machine first, then
/// queued and held by sequence, due, arrival.
const OPEN_ORDERS: &str = "
SELECT order_id, revision, product, state, quantity, produced, due, ideal_cycle_s,
       released_at, actual_start
FROM work_order
WHERE machine = ?1 AND state IN ('released', 'running', 'queued', 'held')
ORDER BY state NOT IN ('released', 'running'), sequence IS NULL, sequence,
         due IS NULL, due, arrival";

/// Completed orders of a machine since a time, newest first.
const HISTORY: &str = "
SELECT product, produced, released_at, actual_start, actual_end
FROM work_order
WHERE machine = ?1 AND state = 'completed' AND actual_end >= ?2
  AND released_at IS NOT NULL AND actual_start IS NOT NULL
ORDER BY actual_end DESC LIMIT 200";

const LAST_PUBLISHED: &str = "
SELECT f.order_id, f.revision, f.forecast_end, f.at_risk, f.published_at
FROM order_forecast f JOIN work_order w USING (order_id, revision)
WHERE w.machine = ?1 AND w.state IN ('released', 'running', 'queued', 'held')";

const UPSERT: &str = "
INSERT INTO order_forecast (order_id, revision, forecast_end, at_risk, basis, published_at)
VALUES (?1, ?2, ?3, ?4, ?5, ?6)
ON CONFLICT (order_id, revision) DO UPDATE SET
  forecast_end = excluded.forecast_end, at_risk = excluded.at_risk,
  basis = excluded.basis, published_at = excluded.published_at";

const ONE: &str =
    "SELECT forecast_end, at_risk, basis FROM order_forecast WHERE order_id = ?1 AND revision = ?2";

/// What the outlook of a machine needs besides the store.
#[derive(Debug, Clone)]
pub struct Settings {
    pub rule: PublishRule,
    pub history: Duration,
    pub horizon: Duration,
    pub capacity_move_s: f64,
}

impl Settings {
    pub fn of(config: &crate::config::ForecastConfig) -> Settings {
        Settings {
            rule: PublishRule {
                move_s: config.move_s,
                move_pct: config.move_pct,
                min_interval: Duration::milliseconds(
                    i64::try_from(config.min_interval_ms).unwrap_or(i64::MAX),
                ),
            },
            history: Duration::hours(i64::try_from(config.history_h).unwrap_or(8760)),
            horizon: Duration::hours(i64::try_from(config.capacity_horizon_h).unwrap_or(24)),
            capacity_move_s: config.capacity_move_s,
        }
    }
}

/// What one refresh did.
#[derive(Debug, Clone, PartialEq)]
pub struct Refreshed {
    pub queue: QueueForecast,
    /// Forecast statuses enqueued.
    pub published: usize,
    /// The capacity, and whether it was published.
    pub capacity: Capacity,
    pub capacity_published: bool,
}

fn parse_ts(s: Option<String>) -> Option<DateTime<Utc>> {
    s.and_then(|s| DateTime::parse_from_rfc3339(&s).ok())
        .map(|t| t.with_timezone(&Utc))
}

/// The machine's open orders, in release order.
pub fn open_orders(conn: &Connection, machine: &str) -> Result<Vec<OpenOrder>, StoreError> {
    let mut stmt = conn.prepare_cached(OPEN_ORDERS)?;
    let rows = stmt
        .query_map([machine], |r| {
            let state: String = r.get(3)?;
            Ok(OpenOrder {
                order_id: r.get(0)?,
                revision: r.get::<_, i64>(1)?.clamp(0, i64::from(u32::MAX)) as u32,
                product: r.get(2)?,
                state: OrderState::parse(&state).unwrap_or(OrderState::Aborted),
                quantity: r.get::<_, i64>(4)?.max(0) as u64,
                produced: r.get::<_, i64>(5)?.max(0) as u64,
                due: parse_ts(r.get(6)?),
                ideal_cycle_s: r.get(7)?,
                released_at: parse_ts(r.get(8)?),
                actual_start: parse_ts(r.get(9)?),
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

/// The machine's completed orders since `since`, newest first.
pub fn history(
    conn: &Connection,
    machine: &str,
    since: DateTime<Utc>,
) -> Result<Vec<PastOrder>, StoreError> {
    let mut stmt = conn.prepare_cached(HISTORY)?;
    let rows = stmt
        .query_map(params![machine, ts(since)], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                parse_ts(r.get(2)?),
                parse_ts(r.get(3)?),
                parse_ts(r.get(4)?),
            ))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows
        .into_iter()
        .filter_map(|(product, produced, rel, start, end)| {
            Some(PastOrder {
                product,
                produced: produced.max(0) as u64,
                released_at: rel?,
                actual_start: start?,
                actual_end: end?,
            })
        })
        .collect())
}

fn last_published(
    conn: &Connection,
    machine: &str,
) -> Result<HashMap<(String, u32), Published>, StoreError> {
    let mut stmt = conn.prepare_cached(LAST_PUBLISHED)?;
    let rows = stmt
        .query_map([machine], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                parse_ts(r.get(2)?),
                r.get::<_, i64>(3)? != 0,
                parse_ts(r.get(4)?),
            ))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows
        .into_iter()
        .filter_map(|(id, rev, end, at_risk, at)| {
            Some((
                (id, rev.clamp(0, i64::from(u32::MAX)) as u32),
                Published {
                    forecast_end: end,
                    at_risk,
                    at: at?,
                },
            ))
        })
        .collect())
}

/// The forecast fields of an order status (`forecast_end`, `at_risk`,
/// `forecast_basis`), from the forecast last published; nothing when
/// there is none yet.
pub fn add_forecast_fields(
    conn: &Connection,
    order_id: &str,
    revision: u32,
    body: &mut Map<String, Value>,
) -> Result<(), StoreError> {
    let found = conn
        .query_row(ONE, params![order_id, i64::from(revision)], |r| {
            Ok((
                r.get::<_, Option<String>>(0)?,
                r.get::<_, i64>(1)? != 0,
                r.get::<_, Option<String>>(2)?,
            ))
        })
        .optional()?;
    if let Some((end, at_risk, basis)) = found {
        body.insert("forecast_end".into(), json!(end));
        body.insert("at_risk".into(), json!(at_risk));
        body.insert("forecast_basis".into(), json!(basis));
    }
    Ok(())
}

/// An order's last published `forecast_end` and `at_risk`.
pub type LastForecast = (Option<DateTime<Utc>>, bool);

/// The last published forecast of an order, for `linegate orders`.
pub fn forecast_of(
    conn: &Connection,
    order_id: &str,
    revision: u32,
) -> Result<Option<LastForecast>, StoreError> {
    Ok(conn
        .query_row(ONE, params![order_id, i64::from(revision)], |r| {
            Ok((parse_ts(r.get(0)?), r.get::<_, i64>(1)? != 0))
        })
        .optional()?)
}

/// `{p}/m/{machine}/capacity`, retained.
pub fn capacity_message(machine: &str, c: &Capacity, now: DateTime<Utc>) -> Outgoing {
    let round = |s: f64| (s * 1000.0).round() / 1000.0;
    let shifts: Vec<Value> = c
        .windows
        .iter()
        .map(|w| {
            json!({
                "name": w.name,
                "start": ts(w.start),
                "end": ts(w.end),
                "planned_s": round(w.planned_s),
                "booked_s": round(w.booked_s),
                "free_s": round(w.free_s),
            })
        })
        .collect();
    let mut body = Map::new();
    body.insert("machine".into(), json!(machine));
    body.insert("from".into(), json!(ts(c.from)));
    body.insert("until".into(), json!(ts(c.until)));
    body.insert("planned_s".into(), json!(round(c.planned_s)));
    body.insert("booked_s".into(), json!(round(c.booked_s)));
    body.insert("free_s".into(), json!(round(c.free_s)));
    body.insert("queue_dry_at".into(), json!(c.queue_dry_at.map(ts)));
    body.insert("shifts".into(), Value::Array(shifts));
    Outgoing {
        topic_suffix: format!("m/{machine}/capacity"),
        class: MessageClass::Durable,
        retain: true,
        ts: now,
        body,
    }
}

/// Forecast the machine's open orders, publish those that are news, and
/// its capacity when it changed from `last_capacity` (published at
/// `capacity_at`) beyond its threshold. One transaction.
#[allow(clippy::too_many_arguments)]
pub fn refresh(
    conn: &mut Connection,
    enqueue: Enqueue,
    machine: &str,
    calendar: Option<&ShiftCalendar>,
    machine_ideal_cycle_s: Option<f64>,
    settings: &Settings,
    last_capacity: Option<(&Capacity, DateTime<Utc>)>,
    now: DateTime<Utc>,
) -> Result<Refreshed, StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let orders = open_orders(&tx, machine)?;
    let past = history(&tx, machine, now - settings.history)?;
    let queue = forecast::forecast_queue(calendar, &past, &orders, machine_ideal_cycle_s, now);
    let published_before = last_published(&tx, machine)?;
    let mut published = 0;
    for f in &queue.orders {
        let key = (f.order_id.clone(), f.revision);
        if !forecast::should_publish(published_before.get(&key), f, &settings.rule, now) {
            continue;
        }
        record(&tx, f, now)?;
        if book::report_forecast(&tx, enqueue, &f.order_id, f.revision, now)? {
            published += 1;
        }
    }
    let cap = capacity::capacity(calendar, now, settings.horizon, queue.dry_at);
    let due = last_capacity.is_none_or(|(last, at)| {
        !forecast::within(at, now, settings.rule.min_interval)
            && capacity::capacity_changed(Some(last), &cap, settings.capacity_move_s)
    });
    if due {
        enqueue(&tx, &capacity_message(machine, &cap, now))?;
    }
    tx.commit()?;
    Ok(Refreshed {
        queue,
        published,
        capacity: cap,
        capacity_published: due,
    })
}

fn record(conn: &Connection, f: &Forecast, now: DateTime<Utc>) -> Result<(), StoreError> {
    conn.execute(
        UPSERT,
        params![
            f.order_id,
            i64::from(f.revision),
            f.forecast_end.map(ts),
            i64::from(f.at_risk),
            f.basis.map(Basis::as_str),
            ts(now),
        ],
    )?;
    Ok(())
}
