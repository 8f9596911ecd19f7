//! Publishing the delivery scorecard: the `scorecard_sent` table, the
//! scorecard message, and the task that, every [`TICK`], publishes the
//! cards of the shifts and days that have closed and republishes a closed
//! card whose counts changed (an order completed late after its period
//! closed, one was cancelled). The decisions are in [`super::scorecard`];
//! this only reads the book, enqueues and remembers what it sent.
//!
//! Table `scorecard_sent`: one row per card sent (scope = machine id, or ''
//! for the gateway; the period), with its counts and revision. A card is
//! enqueued and its row written in one transaction, so a card is sent again
//! only when its counts differ from the row. Closed periods are looked at
//! for [`REVISIT_DAYS`] after they close, and never before the first run on
//! this store (`scorecard_state.since`), so a new store does not publish
//! empty cards for days it never saw.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};
use chrono_tz::Tz;
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use serde_json::{json, Map, Value};
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::book::OrderState;
use super::scorecard::{self, Card, CardKey, DueOrder, Period, PeriodKind, Scope, Tally};
use crate::config::Config;
use crate::machine::shift::ShiftCalendar;
use crate::store::{Store, StoreError};
use crate::uplink::outbox::{self, format_ts, MessageClass, Outgoing};

/// Scorecard tables (migration "scorecard").
pub const SCHEMA_V1: &str = "
CREATE TABLE scorecard_sent (
    scope             TEXT NOT NULL,    -- machine id; '' for the gateway
    kind              TEXT NOT NULL,    -- 'shift' or 'day'
    name              TEXT NOT NULL,    -- shift name, or the local date YYYY-MM-DD
    start             TEXT NOT NULL,    -- RFC 3339 UTC
    end               TEXT NOT NULL,
    due               INTEGER NOT NULL,
    completed_on_time INTEGER NOT NULL,
    completed_late    INTEGER NOT NULL,
    in_full           INTEGER NOT NULL,
    on_time_in_full   INTEGER NOT NULL,
    lateness_s        REAL NOT NULL,
    revision          INTEGER NOT NULL,
    sent_at           TEXT NOT NULL,
    PRIMARY KEY (scope, kind, name, start)
);
-- The task reads the orders due in the periods it looks at, every tick.
CREATE INDEX work_order_due ON work_order (due);
CREATE TABLE scorecard_state (
    id    INTEGER PRIMARY KEY CHECK (id = 1),
    since TEXT NOT NULL                 -- first run on this store: nothing before is published
);
";

/// How often closed periods are looked at.
pub const TICK: Duration = Duration::from_secs(30);

/// How long after it closed a period's card is republished when it changes.
pub const REVISIT_DAYS: i64 = 7;

const READ_SINCE: &str = "SELECT since FROM scorecard_state WHERE id = 1";
const WRITE_SINCE: &str = "INSERT OR IGNORE INTO scorecard_state (id, since) VALUES (1, ?1)";
const READ_SENT: &str = "SELECT scope, kind, name, start, end, due, completed_on_time,
    completed_late, in_full, on_time_in_full, lateness_s, revision
    FROM scorecard_sent WHERE end > ?1";
const WRITE_SENT: &str = "INSERT OR REPLACE INTO scorecard_sent (scope, kind, name, start, end,
    due, completed_on_time, completed_late, in_full, on_time_in_full, lateness_s, revision, sent_at)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)";
const DUE_ORDERS: &str = "SELECT machine, quantity, good, due, state, superseded, actual_end
    FROM work_order WHERE due IS NOT NULL AND due >= ?1 AND due < ?2";
const OLD_SENT: &str = "DELETE FROM scorecard_sent WHERE end < ?1";

fn parse_ts(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

fn kind_columns(kind: &PeriodKind) -> (&'static str, String) {
    match kind {
        PeriodKind::Shift { name } => ("shift", name.clone()),
        PeriodKind::Day { date } => ("day", date.format("%Y-%m-%d").to_string()),
    }
}

fn scope_column(scope: &Scope) -> &str {
    match scope {
        Scope::Machine(m) => m,
        Scope::Gateway => "",
    }
}

/// The orders of the book due in `[from, to)`, as the scorecard counts them.
pub fn due_orders(
    conn: &Connection,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Vec<DueOrder>, StoreError> {
    let mut stmt = conn.prepare_cached(DUE_ORDERS)?;
    let rows = stmt
        .query_map(params![format_ts(from), format_ts(to)], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, String>(4)?,
                r.get::<_, i64>(5)?,
                r.get::<_, Option<String>>(6)?,
            ))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows
        .into_iter()
        .filter_map(|(machine, qty, good, due, state, superseded, end)| {
            DueOrder::counted(
                &machine,
                qty.max(0) as u64,
                good.max(0) as u64,
                parse_ts(&due)?,
                // An unknown state (a newer writer) counts as not completed.
                OrderState::parse(&state).unwrap_or(OrderState::Aborted),
                superseded != 0,
                end.as_deref().and_then(parse_ts),
            )
        })
        .collect())
}

/// The cards of every period overlapping `[from, to)` (open ones included),
/// from the book as it is now: what `linegate report` shows.
pub fn cards_between(
    conn: &Connection,
    calendar: Option<&ShiftCalendar>,
    tz: Tz,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Vec<Card>, StoreError> {
    let periods = scorecard::periods(calendar, tz, from, to);
    let (Some(first), Some(last)) = (
        periods.iter().map(|p| p.start).min(),
        periods.iter().map(|p| p.end).max(),
    ) else {
        return Ok(Vec::new());
    };
    let orders = due_orders(conn, first, last)?;
    Ok(scorecard::cards(&periods, &orders))
}

fn read_sent(
    conn: &Connection,
    after: DateTime<Utc>,
) -> Result<BTreeMap<CardKey, (Tally, u32)>, StoreError> {
    let mut stmt = conn.prepare_cached(READ_SENT)?;
    let rows = stmt
        .query_map([format_ts(after)], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, String>(4)?,
                Tally {
                    due: r.get::<_, i64>(5)?.max(0) as u64,
                    completed_on_time: r.get::<_, i64>(6)?.max(0) as u64,
                    completed_late: r.get::<_, i64>(7)?.max(0) as u64,
                    in_full: r.get::<_, i64>(8)?.max(0) as u64,
                    on_time_in_full: r.get::<_, i64>(9)?.max(0) as u64,
                    lateness_s: r.get(10)?,
                },
                r.get::<_, i64>(11)?.clamp(0, i64::from(u32::MAX)) as u32,
            ))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    let mut sent = BTreeMap::new();
    for (scope, kind, name, start, end, tally, revision) in rows {
        let kind = match kind.as_str() {
            "shift" => PeriodKind::Shift { name },
            "day" => match NaiveDate::parse_from_str(&name, "%Y-%m-%d") {
                Ok(date) => PeriodKind::Day { date },
                Err(_) => continue,
            },
            _ => continue,
        };
        let (Some(start), Some(end)) = (parse_ts(&start), parse_ts(&end)) else {
            continue;
        };
        let scope = if scope.is_empty() {
            Scope::Gateway
        } else {
            Scope::Machine(scope)
        };
        sent.insert((scope, Period { kind, start, end }), (tally, revision));
    }
    Ok(sent)
}

/// The body of a scorecard message (without the envelope).
pub fn body(card: &Card, revision: u32) -> Map<String, Value> {
    let mut period = Map::new();
    period.insert("kind".into(), json!(card.period.kind.as_str()));
    match &card.period.kind {
        PeriodKind::Shift { name } => {
            period.insert("name".into(), json!(name));
        }
        PeriodKind::Day { date } => {
            period.insert("date".into(), json!(date.format("%Y-%m-%d").to_string()));
        }
    }
    period.insert("start".into(), json!(format_ts(card.period.start)));
    period.insert("end".into(), json!(format_ts(card.period.end)));
    let t = &card.tally;
    let mut body = Map::new();
    if let Scope::Machine(m) = &card.scope {
        body.insert("machine".into(), json!(m));
    }
    body.insert("period".into(), Value::Object(period));
    body.insert(
        "orders".into(),
        json!({
            "due": t.due,
            "completed_on_time": t.completed_on_time,
            "completed_late": t.completed_late,
            "not_completed": t.not_completed(),
            "in_full": t.in_full,
            "on_time_in_full": t.on_time_in_full,
        }),
    );
    body.insert("lateness_s".into(), json!(t.lateness_s));
    body.insert(
        "on_time_in_full_rate".into(),
        json!(t.on_time_in_full_rate()),
    );
    body.insert("mean_lateness_s".into(), json!(t.mean_lateness_s()));
    body.insert("revision".into(), json!(revision));
    body
}

/// `{p}/m/{machine}/scorecard` or `{p}/scorecard`, retained, never dropped.
/// `ts`: the end of the period for its first card, `now` for a revision.
pub fn message(card: &Card, revision: u32, now: DateTime<Utc>) -> Outgoing {
    Outgoing {
        topic_suffix: match &card.scope {
            Scope::Machine(m) => format!("m/{m}/scorecard"),
            Scope::Gateway => "scorecard".into(),
        },
        class: MessageClass::Durable,
        retain: true,
        ts: if revision <= 1 {
            card.period.end.min(now)
        } else {
            now
        },
        body: body(card, revision),
    }
}

/// Enqueue the cards of the periods closed by `now` that were never sent or
/// changed since; returns how many were enqueued. One transaction.
pub fn publish_closed(
    conn: &mut Connection,
    calendar: Option<&ShiftCalendar>,
    tz: Tz,
    now: DateTime<Utc>,
) -> Result<usize, StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    tx.execute(WRITE_SINCE, [format_ts(now)])?;
    let since = tx
        .query_row(READ_SINCE, [], |r| r.get::<_, String>(0))
        .optional()?
        .as_deref()
        .and_then(parse_ts)
        .unwrap_or(now);
    let from = since.max(now - chrono::Duration::days(REVISIT_DAYS));
    let periods: Vec<Period> = scorecard::periods(calendar, tz, from, now)
        .into_iter()
        .filter(|p| p.end <= now && p.end > from)
        .collect();
    let (Some(first), Some(last)) = (
        periods.iter().map(|p| p.start).min(),
        periods.iter().map(|p| p.end).max(),
    ) else {
        tx.commit()?;
        return Ok(0);
    };
    let orders = due_orders(&tx, first, last)?;
    let sent = read_sent(&tx, from)?;
    let publish = scorecard::to_publish(scorecard::cards(&periods, &orders), &sent);
    for (card, revision) in &publish {
        outbox::enqueue(&tx, &message(card, *revision, now))?;
        let (kind, name) = kind_columns(&card.period.kind);
        let t = &card.tally;
        tx.execute(
            WRITE_SENT,
            params![
                scope_column(&card.scope),
                kind,
                name,
                format_ts(card.period.start),
                format_ts(card.period.end),
                t.due as i64,
                t.completed_on_time as i64,
                t.completed_late as i64,
                t.in_full as i64,
                t.on_time_in_full as i64,
                t.lateness_s,
                i64::from(*revision),
                format_ts(now),
            ],
        )?;
    }
    // Cards no longer revisited are forgotten.
    tx.execute(OLD_SENT, [format_ts(from - chrono::Duration::days(1))])?;
    tx.commit()?;
    Ok(publish.len())
}

/// The agent's scorecard task: every [`TICK`], publish what closed or
/// changed. A store error is logged and the next tick tries again (nothing
/// is lost: the cards are computed from the book each time).
pub async fn run_scorecard(
    store: Store,
    config: watch::Receiver<Arc<Config>>,
    wake: Arc<Notify>,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {
                let cfg = config.borrow().clone();
                if cfg.uplink.is_none() {
                    // Nothing is reported upstream without an uplink.
                    continue;
                }
                let calendar = match crate::machine::engine::calendar(&cfg) {
                    Ok(c) => c,
                    Err(e) => {
                        warn!(error = %e, "scorecard: no shift calendar");
                        None
                    }
                };
                let tz: Tz = cfg.gateway.timezone.parse().unwrap_or(chrono_tz::UTC);
                let now = Utc::now();
                match store
                    .call(move |c| publish_closed(c, calendar.as_deref(), tz, now))
                    .await
                {
                    Ok(0) => {}
                    Ok(n) => {
                        info!(cards = n, "delivery scorecard published");
                        wake.notify_one();
                    }
                    Err(e) => warn!(error = %e, "cannot publish the delivery scorecard; trying again"),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        parse_ts(s).unwrap_or_else(|| panic!("bad time {s}"))
    }

    /// An order row as the book writes it, only the columns the scorecard reads.
    fn put_order(
        c: &Connection,
        id: &str,
        machine: &str,
        due: &str,
        state: &str,
        good: i64,
        end: Option<&str>,
    ) -> Result<(), StoreError> {
        c.execute(
            "INSERT INTO work_order (order_id, revision, arrival, machine, product, quantity, due,
                state, good, produced, actual_end, updated_at)
             VALUES (?1, 1, (SELECT COALESCE(MAX(arrival), 0) + 1 FROM work_order), ?2, 'P', 10,
                     ?3, ?4, ?5, ?5, ?6, ?3)",
            params![id, machine, due, state, good, end],
        )?;
        Ok(())
    }

    fn outbox(c: &Connection) -> Result<Vec<(String, bool, Value)>, StoreError> {
        let mut stmt = c.prepare("SELECT topic_suffix, retain, body FROM outbox ORDER BY seq")?;
        let rows = stmt
            .query_map([], |r| {
                Ok((r.get::<_, String>(0)?, r.get(1)?, r.get::<_, String>(2)?))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows
            .into_iter()
            .map(|(t, r, b)| (t, r, serde_json::from_str(&b).unwrap_or(Value::Null)))
            .collect())
    }

    #[test]
    fn closed_days_are_published_once_and_a_late_completion_republishes_them() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open(dir.path()).expect("store");
        let result = store.call_blocking(|c| {
            // First run on Wednesday noon: nothing before it is published.
            assert_eq!(publish_closed(c, None, chrono_tz::UTC, t("2026-11-25T12:00:00Z"))?, 0);
            put_order(c, "WO-1", "press07", "2026-11-26T08:00:00.000Z", "completed", 10, Some("2026-11-26T07:00:00.000Z"))?;
            put_order(c, "WO-2", "press07", "2026-11-26T09:00:00.000Z", "running", 4, None)?;
            put_order(c, "WO-3", "saw02", "2026-11-26T10:00:00.000Z", "cancelled", 0, None)?;
            // Thursday is still open: only Wednesday (nothing due) closes.
            assert_eq!(publish_closed(c, None, chrono_tz::UTC, t("2026-11-26T23:00:00Z"))?, 1);
            // Friday 00:00:30: Thursday closes; press07 and the gateway.
            assert_eq!(publish_closed(c, None, chrono_tz::UTC, t("2026-11-27T00:00:30Z"))?, 2);
            assert_eq!(publish_closed(c, None, chrono_tz::UTC, t("2026-11-27T00:01:00Z"))?, 0);
            // WO-2 completes late, in full, on Friday 09:00: both cards again.
            c.execute(
                "UPDATE work_order SET state = 'completed', good = 10, actual_end = '2026-11-27T09:00:00.000Z' WHERE order_id = 'WO-2'",
                [],
            )?;
            assert_eq!(publish_closed(c, None, chrono_tz::UTC, t("2026-11-27T09:00:30Z"))?, 2);
            outbox(c)
        });
        let rows = result.expect("store calls");
        let topics: Vec<&str> = rows.iter().map(|(t, _, _)| t.as_str()).collect();
        assert_eq!(
            topics,
            [
                "scorecard",
                "m/press07/scorecard",
                "scorecard",
                "m/press07/scorecard",
                "scorecard"
            ]
        );
        assert!(rows.iter().all(|(_, retain, _)| *retain));
        let (_, _, first) = &rows[1];
        assert_eq!(first["period"]["kind"], "day");
        assert_eq!(first["period"]["date"], "2026-11-26");
        assert_eq!(first["orders"]["due"], 2);
        assert_eq!(first["orders"]["completed_on_time"], 1);
        assert_eq!(first["orders"]["not_completed"], 1);
        assert_eq!(first["on_time_in_full_rate"], 0.5);
        assert_eq!(first["revision"], 1);
        let (_, _, again) = &rows[3];
        assert_eq!(again["orders"]["completed_late"], 1);
        assert_eq!(again["orders"]["on_time_in_full"], 1);
        assert_eq!(again["lateness_s"], 24.0 * 3600.0);
        assert_eq!(again["mean_lateness_s"], 24.0 * 3600.0);
        assert_eq!(again["revision"], 2);
        let (_, _, gateway) = &rows[4];
        assert!(gateway.get("machine").is_none());
        assert_eq!(
            gateway["orders"]["due"], 2,
            "the cancelled order does not count"
        );
    }
}
