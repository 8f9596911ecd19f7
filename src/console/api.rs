//! The console's JSON API (`/api/v1/...`) and `/healthz`: what the pages
//! show, put together from the live board, the running buses' counters,
//! the uplink's figures and the store's read functions (those of
//! `linegate status`, `report` and `orders`). The shapes are documented in
//! docs/console.md. Only reads; the timeline is a pure function.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use super::Sources;
use crate::agent::MachineBoard;
use crate::machine::history::{self, ts, MachineStatus};
use crate::machine::{ClosedPeriod, MachineState, StateChange};
use crate::orders::book::{self, OrderRow};
use crate::store::StoreError;

/// How far back the machine page's day timeline and period table go.
const DAY: chrono::Duration = chrono::Duration::hours(24);
/// The longest "current shift" without a shift calendar.
const NO_CALENDAR_SHIFT: chrono::Duration = chrono::Duration::hours(8);

/// A store error as the API answers it: 503, the error said.
fn unavailable(e: StoreError) -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({ "error": format!("store: {e}") })),
    )
        .into_response()
}

fn opt_ts(t: Option<DateTime<Utc>>) -> Value {
    t.map_or(Value::Null, |t| Value::from(ts(t)))
}

/// A copy of the board, taken under its lock and released at once.
fn board_copy(s: &Sources) -> BTreeMap<String, MachineBoard> {
    match s.board.lock() {
        Ok(b) => b.clone(),
        Err(poisoned) => poisoned.into_inner().clone(),
    }
}

/// The current period of a machine, as the line page shows it.
fn period_json(p: &ClosedPeriod) -> Value {
    json!({
        "start": ts(p.start),
        "end": ts(p.end),
        "seconds": p.seconds,
        "counts": { "produced": p.counts.produced, "good": p.counts.good, "scrap": p.counts.scrap },
        "kpi": {
            "availability": p.kpi.availability,
            "performance": p.kpi.performance,
            "quality": p.kpi.quality,
            "oee": p.kpi.oee,
        },
    })
}

/// Seconds past due: at the order's end when it ended, else at `now`;
/// negative when ahead of due; `None` without a due time.
pub fn lateness_s(o: &OrderRow, now: DateTime<Utc>) -> Option<f64> {
    let due = o.due?;
    let at = if o.state.is_final() {
        o.actual_end.unwrap_or(now)
    } else {
        now
    };
    Some((at - due).num_milliseconds() as f64 / 1000.0)
}

fn order_json(o: &OrderRow, now: DateTime<Utc>) -> Value {
    json!({
        "order_id": o.order_id,
        "revision": o.revision,
        "machine": o.machine,
        "product": o.product,
        "quantity": o.quantity,
        "produced": o.progress.produced,
        "good": o.progress.good,
        "scrap": o.progress.scrap,
        "state": o.state.as_str(),
        "reason": o.reason,
        "due": opt_ts(o.due),
        "lateness_s": lateness_s(o, now),
        "late": o.late_reported,
        "sequence": o.sequence,
        "plan_id": o.plan_id,
        "released_at": opt_ts(o.released_at),
        "actual_start": opt_ts(o.actual_start),
        "actual_end": opt_ts(o.actual_end),
    })
}

/// `GET /api/v1/line`: every machine at a glance.
pub async fn line(State(s): State<Arc<Sources>>) -> Response {
    let statuses = match s.store.call(|c| history::current(c)).await {
        Ok(r) => r,
        Err(e) => return unavailable(e),
    };
    let orders = match s.store.call(|c| book::on_machines(c)).await {
        Ok(r) => r,
        Err(e) => return unavailable(e),
    };
    let config = s.config.borrow().clone();
    let board = board_copy(&s);
    let now = Utc::now();
    let machines: Vec<Value> = config
        .machine
        .iter()
        .map(|m| {
            let empty = MachineBoard::default();
            let b = board.get(&m.id).unwrap_or(&empty);
            let status = statuses.iter().find(|st| st.machine == m.id);
            machine_summary(&m.id, &m.bus, b, status, &orders, now)
        })
        .collect();
    Json(json!({
        "gateway": config.gateway.id,
        "site": config.gateway.site,
        "at": ts(now),
        "machines": machines,
    }))
    .into_response()
}

fn machine_summary(
    id: &str,
    bus: &str,
    b: &MachineBoard,
    status: Option<&MachineStatus>,
    orders: &[OrderRow],
    now: DateTime<Utc>,
) -> Value {
    let order = orders
        .iter()
        .find(|o| o.machine == id && !o.superseded && o.state.on_machine());
    json!({
        "machine": id,
        "bus": bus,
        "state": b.state.or(status.map(|s| s.state)).map(MachineState::as_str),
        "since": opt_ts(b.since.or(status.map(|s| s.since))),
        "reason": b.reason.clone().or_else(|| status.and_then(|s| s.reason.clone())),
        "produced_total": b.produced_total,
        "good_total": b.good_total,
        "last_read": opt_ts(b.last_read),
        "last_error": b.last_error,
        "period": status.and_then(|s| s.period.as_ref()).map(period_json),
        "order": order.map(|o| order_json(o, now)),
    })
}

/// One stretch of a timeline: a state from `from` to `to`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Span {
    pub state: MachineState,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub reason: Option<String>,
}

/// A machine's states over `[from, to)` from its recorded changes (in the
/// order recorded, `since` within the window or not) and the state it was in
/// at `from` (`before`; `None`: unknown, that stretch is left out). Pure.
pub fn timeline(
    changes: &[StateChange],
    before: Option<(MachineState, Option<String>)>,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Vec<Span> {
    let mut spans = Vec::new();
    let mut current = before;
    let mut at = from;
    for c in changes {
        if c.since >= to {
            break;
        }
        let since = c.since.max(at);
        if let Some((state, reason)) = current.take() {
            if since > at {
                spans.push(Span {
                    state,
                    from: at,
                    to: since,
                    reason,
                });
            }
        }
        current = Some((c.state, c.reason.clone()));
        at = since;
    }
    if let Some((state, reason)) = current {
        if to > at {
            spans.push(Span {
                state,
                from: at,
                to,
                reason,
            });
        }
    }
    spans
}

fn spans_json(from: DateTime<Utc>, to: DateTime<Utc>, spans: &[Span]) -> Value {
    json!({
        "from": ts(from),
        "to": ts(to),
        "spans": spans.iter().map(|s| json!({
            "state": s.state.as_str(),
            "from": ts(s.from),
            "to": ts(s.to),
            "reason": s.reason,
        })).collect::<Vec<_>>(),
    })
}

/// `GET /api/v1/machines/{id}`: one machine in detail.
pub async fn machine(State(s): State<Arc<Sources>>, Path(id): Path<String>) -> Response {
    let config = s.config.borrow().clone();
    let Some(m) = config.machine(&id).cloned() else {
        return (
            StatusCode::NOT_FOUND,
            Json(json!({ "error": format!("no machine {id:?} in the running config") })),
        )
            .into_response();
    };
    let now = Utc::now();
    let day_from = now - DAY;
    let shift = crate::machine::engine::calendar(&config)
        .ok()
        .flatten()
        .and_then(|cal| cal.shift_at(now));
    let (shift_name, shift_from, shift_to) = match &shift {
        Some(sh) => (Some(sh.name.clone()), sh.start, sh.end.min(now)),
        // Without a calendar: since the agent started, at most 8 h back.
        None => (None, (now - NO_CALENDAR_SHIFT).max(s.started_at), now),
    };
    let earliest = day_from.min(shift_from);
    let machine_id = id.clone();
    let read = s
        .store
        .call(move |c| {
            let changes = history::state_changes(c, Some(&machine_id), Some(earliest), None)?;
            let periods = history::periods(c, Some(&machine_id), Some(day_from), None)?;
            let orders = book::list(c, Some(&machine_id))?;
            let status = history::current(c)?
                .into_iter()
                .find(|st| st.machine == machine_id);
            Ok((changes, periods, orders, status))
        })
        .await;
    let (changes, periods, orders, status) = match read {
        Ok(r) => r,
        Err(e) => return unavailable(e),
    };
    let board = board_copy(&s).remove(&id).unwrap_or_default();
    // The state before the first change in view is that change's `prev`;
    // without any change in view, the present state (since when it began).
    let present = board
        .state
        .map(|st| (st, board.reason.clone(), board.since))
        .or(status
            .as_ref()
            .map(|st| (st.state, st.reason.clone(), Some(st.since))));
    let draw = |from: DateTime<Utc>, to: DateTime<Utc>| {
        let in_view: Vec<StateChange> = changes
            .iter()
            .filter(|c| c.since >= from)
            .cloned()
            .collect();
        match in_view.first() {
            Some(first) => timeline(&in_view, first.prev.map(|p| (p, None)), from, to),
            None => match &present {
                Some((st, reason, since)) => {
                    let start = since.map_or(from, |t| t.max(from));
                    timeline(&[], Some((*st, reason.clone())), start, to)
                }
                None => Vec::new(),
            },
        }
    };
    let shift_spans = draw(shift_from, shift_to);
    let day_spans = draw(day_from, now);
    let bus = (s.buses)().into_iter().find(|b| b.counts.bus == m.bus);
    let bus_json = json!({
        "bus": m.bus,
        "transport": config.bus(&m.bus).map(|b| format!("{:?}", b.transport).to_lowercase()),
        "running": bus.is_some(),
        "counters": bus.as_ref().map(|b| b.counts.counters.clone()),
        "since": opt_ts(bus.as_ref().map(|b| b.counts.since)),
        "latency": bus.as_ref().and_then(|b| b.latency.as_ref()).map(|l| json!({
            "count": l.count,
            "mean_s": if l.count > 0 { Some(l.sum_s / l.count as f64) } else { None },
            "bounds_s": crate::source::modbus::bus::LATENCY_BOUNDS_S,
            "buckets": l.buckets,
        })),
    });
    let signals: Vec<Value> = m
        .signal
        .iter()
        .map(|sig| {
            let last = board.reading(&sig.name);
            let (value, error) = match last.map(|l| &l.reading) {
                Some(Ok(v)) => (Some(v.to_string()), None),
                Some(Err(e)) => (None, Some(e.to_string())),
                None => (None, None),
            };
            json!({
                "signal": sig.name,
                "value": value,
                "error": error,
                "last_read": opt_ts(last.map(|l| l.at)),
            })
        })
        .collect();
    let mut summary = machine_summary(&m.id, &m.bus, &board, status.as_ref(), &orders, now);
    if let Some(obj) = summary.as_object_mut() {
        obj.insert("signals".into(), Value::from(signals));
        obj.insert("bus_stats".into(), bus_json);
        obj.insert(
            "timeline".into(),
            json!({
                "shift": {
                    "name": shift_name,
                    "view": spans_json(shift_from, shift_to, &shift_spans),
                },
                "day": spans_json(day_from, now, &day_spans),
            }),
        );
        obj.insert(
            "periods".into(),
            Value::from(
                periods
                    .iter()
                    .rev()
                    .map(|p| {
                        let mut v = period_json(p);
                        if let Some(o) = v.as_object_mut() {
                            o.insert(
                                "kind".into(),
                                match &p.kind {
                                    crate::machine::PeriodKind::Interval => json!("interval"),
                                    crate::machine::PeriodKind::Shift { name } => {
                                        json!(format!("shift {name}"))
                                    }
                                },
                            );
                        }
                        v
                    })
                    .collect::<Vec<_>>(),
            ),
        );
        obj.insert("reads".into(), Value::from(board.reads));
        obj.insert("failed_reads".into(), Value::from(board.failed_reads));
    }
    Json(summary).into_response()
}

/// `GET /api/v1/orders`: each machine's queue in release order, and plans.
pub async fn orders(State(s): State<Arc<Sources>>) -> Response {
    let read = s
        .store
        .call(|c| {
            let rows = book::list(c, None)?;
            let mut plan_ids: Vec<String> = rows.iter().filter_map(|o| o.plan_id.clone()).collect();
            plan_ids.sort();
            plan_ids.dedup();
            let mut plans = Vec::new();
            for id in plan_ids {
                let summary = book::plan_summary(c, &id)?;
                plans.push((id, summary));
            }
            Ok((rows, plans))
        })
        .await;
    let (rows, plans) = match read {
        Ok(r) => r,
        Err(e) => return unavailable(e),
    };
    let config = s.config.borrow().clone();
    let now = Utc::now();
    let mut by_machine: BTreeMap<&str, Vec<Value>> = BTreeMap::new();
    for m in &config.machine {
        by_machine.entry(m.id.as_str()).or_default();
    }
    // `book::list` is in release order per machine; older revisions are history.
    for o in rows.iter().filter(|o| !o.superseded) {
        by_machine
            .entry(o.machine.as_str())
            .or_default()
            .push(order_json(o, now));
    }
    let mut by_state: BTreeMap<&str, u64> = BTreeMap::new();
    for o in rows.iter().filter(|o| !o.superseded) {
        *by_state.entry(o.state.as_str()).or_default() += 1;
    }
    let plans: Vec<Value> = plans
        .into_iter()
        .map(|(id, mut summary)| {
            let completed = summary["completed"].as_f64().unwrap_or(0.0);
            let on_time = summary["completed_on_time"].as_f64().unwrap_or(0.0);
            let rate = (completed > 0.0).then(|| on_time / completed);
            if let Some(o) = summary.as_object_mut() {
                o.insert("plan_id".into(), Value::from(id));
                o.insert("on_time_rate".into(), json!(rate));
            }
            summary
        })
        .collect();
    Json(json!({
        "at": ts(now),
        "machines": by_machine.into_iter().map(|(m, orders)| json!({"machine": m, "orders": orders})).collect::<Vec<_>>(),
        "by_state": by_state,
        "plans": plans,
    }))
    .into_response()
}

/// Loops silent for longer than this make `/healthz` answer 503: at
/// least 3 s, and three of the longest bus timeouts (a loop in a request
/// beats again when its timeout ends).
pub fn max_silence(config: &crate::config::Config) -> Duration {
    let longest = config.bus.iter().map(|b| b.timeout_ms).max().unwrap_or(0);
    Duration::from_millis(longest.saturating_mul(3)).max(Duration::from_secs(3))
}

/// `GET /api/v1/gateway`: the uplink, the outbox, the watchdog, the build.
pub async fn gateway(State(s): State<Arc<Sources>>) -> Response {
    let outbox = match s.store.call(|c| crate::uplink::outbox::counts(c)).await {
        Ok(k) => k,
        Err(e) => return unavailable(e),
    };
    let config = s.config.borrow().clone();
    let up = s.uplink.snapshot();
    let silent = s
        .liveness
        .silent(tokio::time::Instant::now(), max_silence(&config));
    Json(json!({
        "gateway": config.gateway.id,
        "site": config.gateway.site,
        "version": env!("CARGO_PKG_VERSION"),
        "config_file": s.config_path.as_ref().map(|p| p.display().to_string()),
        "started_at": ts(s.started_at),
        "store": s.store.path().display().to_string(),
        "uplink": {
            "configured": config.uplink.is_some(),
            "broker": config.uplink.as_ref().map(|u| u.url.clone()),
            "connected": up.connected,
            "sent": up.sent,
            "acked": up.acked,
            "rejected": up.rejected,
            "reconnects": up.reconnects,
            "last_error": up.last_error,
        },
        "outbox": {
            "depth": outbox.depth,
            "bytes": outbox.bytes,
            "max_bytes": outbox.max_bytes,
            "dropped_telemetry": outbox.dropped,
        },
        "store_condition": format!("{:?}", s.store.health().condition()).to_lowercase(),
        "watchdog": {
            "loops": s.liveness.registered(),
            "silent": silent,
            "healthy": silent.is_empty(),
            "max_silence_s": max_silence(&config).as_secs_f64(),
        },
    }))
    .into_response()
}

/// `GET /healthz`: 200 while every loop beats, 503 naming the silent ones.
pub async fn healthz(State(s): State<Arc<Sources>>) -> Response {
    let limit = max_silence(&s.config.borrow());
    let silent = s.liveness.silent(tokio::time::Instant::now(), limit);
    if silent.is_empty() {
        (
            StatusCode::OK,
            Json(json!({ "status": "ok", "loops": s.liveness.registered() })),
        )
            .into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({
                "status": "silent",
                "silent": silent,
                "error": format!("not beating for over {:.0} s: {}", limit.as_secs_f64(), silent.join(", ")),
            })),
        )
            .into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::orders::book::OrderState;

    fn at(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap_or_default()
    }

    fn change(s: i64, state: MachineState, prev: Option<MachineState>) -> StateChange {
        StateChange {
            machine: "m1".into(),
            state,
            prev,
            since: at(s),
            reason: None,
        }
    }

    #[test]
    fn a_timeline_runs_from_the_state_before_through_each_change_to_the_end() {
        use MachineState::*;
        let changes = [
            change(10, Down, Some(Running)),
            change(25, Running, Some(Down)),
        ];
        let spans = timeline(&changes, Some((Running, None)), at(0), at(40));
        let got: Vec<(MachineState, i64, i64)> = spans
            .iter()
            .map(|s| {
                (
                    s.state,
                    s.from.timestamp() - at(0).timestamp(),
                    s.to.timestamp() - at(0).timestamp(),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![(Running, 0, 10), (Down, 10, 25), (Running, 25, 40)]
        );
    }

    #[test]
    fn a_timeline_with_an_unknown_start_begins_at_the_first_change_and_stops_at_the_window() {
        use MachineState::*;
        let changes = [change(10, Idle, None), change(50, Down, Some(Idle))];
        let spans = timeline(&changes, None, at(0), at(30));
        assert_eq!(spans.len(), 1);
        assert_eq!(
            (spans[0].state, spans[0].from, spans[0].to),
            (Idle, at(10), at(30))
        );
    }

    #[test]
    fn a_change_recorded_out_of_order_never_makes_a_span_run_backwards() {
        use MachineState::*;
        // A clock stepped back: the second change is dated before the first.
        let changes = [
            change(20, Down, Some(Running)),
            change(15, Running, Some(Down)),
        ];
        let spans = timeline(&changes, Some((Running, None)), at(0), at(30));
        assert!(spans.iter().all(|s| s.from <= s.to), "{spans:?}");
        assert_eq!(
            spans.last().map(|s| (s.state, s.to)),
            Some((Running, at(30)))
        );
    }

    #[test]
    fn lateness_counts_from_due_to_the_end_or_to_now() {
        let mut o = OrderRow {
            order_id: "o1".into(),
            revision: 1,
            arrival: 1,
            machine: "m1".into(),
            product: "p".into(),
            quantity: 10,
            due: Some(at(100)),
            sequence: None,
            plan_id: None,
            plan_pos: None,
            ideal_cycle_s: None,
            params: BTreeMap::new(),
            state: OrderState::Running,
            reason: None,
            superseded: false,
            progress: Default::default(),
            done: Default::default(),
            base: None,
            released_at: None,
            actual_start: None,
            actual_end: None,
            started_rank: None,
            late_reported: false,
            reported_at: None,
        };
        assert_eq!(lateness_s(&o, at(130)), Some(30.0));
        o.state = OrderState::Completed;
        o.actual_end = Some(at(90));
        assert_eq!(lateness_s(&o, at(500)), Some(-10.0));
        o.due = None;
        assert_eq!(lateness_s(&o, at(500)), None);
    }
}
