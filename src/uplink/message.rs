//! Contract payloads: turns machine events into [`Outgoing`] messages and
//! adds the envelope (`gateway`, `seq`, `ts`, `historical`) when a message is
//! sent. Pure functions: nothing here touches SQLite or the network.
//!
//! Gateway status messages (birth, will, clean shutdown) are not stored in the
//! outbox: they describe the connection, so they are rebuilt on every
//! connect. Since contract v1.1 they carry no `seq` (so a gap in the data
//! stream's `seq` is a lost message and nothing else) but `session`, the
//! number of the connection (see `uplink::session`): the birth, the will and
//! the clean-shutdown message of one connection carry the same number. The
//! will's `ts` is the time of the connect (a will cannot know when it will
//! fire).

use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};

use super::outbox::{format_ts, MessageClass, OutboxRow, Outgoing};
use crate::machine::{ClosedPeriod, PeriodKind, StateChange, Telemetry};

/// Who this gateway is: the fixed part of every status message.
#[derive(Debug, Clone, PartialEq)]
pub struct GatewayInfo {
    /// The gateway id (`gateway.id`), the envelope's `gateway`.
    pub id: String,
    /// The topic prefix `{p}`, e.g. `linegate/v1/plant1/line3`.
    pub prefix: String,
    /// linegate's version, for the birth message.
    pub version: String,
    /// When the agent started.
    pub started_at: DateTime<Utc>,
    /// Machine ids from the config.
    pub machines: Vec<String>,
}

/// The topic suffix of the gateway status.
pub const STATUS_SUFFIX: &str = "status";
/// The topic suffix of incoming orders.
pub const ORDERS_CMD_SUFFIX: &str = "orders/cmd";

/// `{p}/m/{machine}/state`, retained, never dropped.
pub fn state_message(change: &StateChange) -> Outgoing {
    let mut body = Map::new();
    body.insert("machine".into(), json!(change.machine));
    body.insert("state".into(), json!(change.state.as_str()));
    body.insert("prev".into(), json!(change.prev.map(|p| p.as_str())));
    body.insert("since".into(), json!(format_ts(change.since)));
    body.insert("reason".into(), json!(change.reason));
    Outgoing {
        topic_suffix: format!("m/{}/state", change.machine),
        class: MessageClass::Durable,
        retain: true,
        ts: change.since,
        body,
    }
}

/// `{p}/m/{machine}/utilisation`: one closed period, never dropped. `ts` is
/// the end of the period.
pub fn period_message(period: &ClosedPeriod) -> Outgoing {
    let mut p = Map::new();
    match &period.kind {
        PeriodKind::Interval => {
            p.insert("kind".into(), json!("interval"));
        }
        PeriodKind::Shift { .. } => {
            p.insert("kind".into(), json!("shift"));
        }
    }
    p.insert("start".into(), json!(format_ts(period.start)));
    p.insert("end".into(), json!(format_ts(period.end)));
    if let PeriodKind::Shift { name } = &period.kind {
        p.insert("name".into(), json!(name));
    }
    let mut body = Map::new();
    body.insert("machine".into(), json!(period.machine));
    body.insert("period".into(), Value::Object(p));
    body.insert("seconds".into(), to_value(&period.seconds));
    body.insert("counts".into(), to_value(&period.counts));
    body.insert("kpi".into(), to_value(&period.kpi));
    // v1.1: only when the gateway's wall clock stepped during the period.
    if let Some(step) = &period.clock_step {
        body.insert("clock_step".into(), json!({ "by_s": step.by_s }));
    }
    Outgoing {
        topic_suffix: format!("m/{}/utilisation", period.machine),
        class: MessageClass::Durable,
        retain: false,
        ts: period.end,
        body,
    }
}

/// `{p}/m/{machine}/telemetry`: signal values; may be dropped when the outbox is full.
pub fn telemetry_message(t: &Telemetry) -> Outgoing {
    let mut values = Map::new();
    // The map sorts the names: the same message whatever order they came in.
    for (name, v) in t.values.iter() {
        values.insert(name.to_string(), to_value(v));
    }
    let mut body = Map::new();
    body.insert("machine".into(), json!(t.machine));
    body.insert("values".into(), Value::Object(values));
    Outgoing {
        topic_suffix: format!("m/{}/telemetry", t.machine),
        class: MessageClass::Telemetry,
        retain: false,
        ts: t.at,
        body,
    }
}

/// Why an outbox row could not be turned into a payload.
#[derive(Debug, thiserror::Error)]
#[error("outbox row {seq}: body is not a JSON object: {reason}")]
pub struct BadRow {
    pub seq: u64,
    pub reason: String,
}

/// The wire payload of a stored row: its body plus the envelope.
///
/// The body is stored as the JSON object text `enqueue` wrote, without the
/// envelope fields; the envelope is appended to that text as it is, without
/// parsing it back into a map and writing it out again (this runs for every
/// message sent). A body that is not an object (`{...}`) is an error.
pub fn row_payload(gateway: &str, row: &OutboxRow) -> Result<Vec<u8>, BadRow> {
    let body = row.body.trim();
    let members = body
        .strip_prefix('{')
        .and_then(|b| b.strip_suffix('}'))
        .ok_or_else(|| BadRow {
            seq: row.seq,
            reason: "expected a JSON object {...}".into(),
        })?;
    let mut out = Vec::with_capacity(body.len() + gateway.len() + row.ts.len() + 64);
    out.push(b'{');
    out.extend_from_slice(members.as_bytes());
    if !members.trim().is_empty() {
        out.push(b',');
    }
    out.extend_from_slice(b"\"gateway\":");
    write_json_str(&mut out, gateway);
    out.extend_from_slice(b",\"seq\":");
    out.extend_from_slice(row.seq.to_string().as_bytes());
    out.extend_from_slice(b",\"ts\":");
    write_json_str(&mut out, &row.ts);
    if row.stored_offline {
        out.extend_from_slice(b",\"historical\":true");
    }
    out.push(b'}');
    Ok(out)
}

/// `s` as a JSON string (quoted, escaped).
fn write_json_str(out: &mut Vec<u8>, s: &str) {
    // Writing a str to a Vec cannot fail.
    if serde_json::to_writer(&mut *out, s).is_err() {
        out.extend_from_slice(b"\"\"");
    }
}

/// Add `gateway`, `seq`, `ts` and (only when true) `historical` to `body`.
pub fn add_envelope(
    body: &mut Map<String, Value>,
    gateway: &str,
    seq: u64,
    ts: &str,
    historical: bool,
) {
    body.insert("gateway".into(), json!(gateway));
    body.insert("seq".into(), json!(seq));
    body.insert("ts".into(), json!(ts));
    if historical {
        body.insert("historical".into(), json!(true));
    }
}

/// Outbox figures reported in status messages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatusCounts {
    /// Telemetry dropped by the outbox cap since the store was created.
    pub dropped_telemetry: u64,
    /// Messages waiting in the outbox.
    pub outbox_depth: u64,
    /// State changes and periods lost because the store could not take
    /// them (a full disk for longer than the agent can hold them).
    pub lost_events: u64,
}

/// Birth: `{"online": true, "session", "version", "started_at", "machines", ...}`,
/// published retained on `{p}/status` first thing on every connect.
pub fn birth_payload(
    gw: &GatewayInfo,
    session: u64,
    ts: DateTime<Utc>,
    counts: StatusCounts,
) -> Vec<u8> {
    status_payload(gw, true, session, ts, counts)
}

/// Will and clean shutdown: `{"online": false, "session", ...}`, retained,
/// with the `session` of the birth of the same connection.
pub fn offline_payload(
    gw: &GatewayInfo,
    session: u64,
    ts: DateTime<Utc>,
    counts: StatusCounts,
) -> Vec<u8> {
    status_payload(gw, false, session, ts, counts)
}

/// A status message: `gateway` and `ts` as in the envelope, `session`
/// instead of `seq`, never `historical` (it is always about now).
fn status_payload(
    gw: &GatewayInfo,
    online: bool,
    session: u64,
    ts: DateTime<Utc>,
    counts: StatusCounts,
) -> Vec<u8> {
    let mut body = Map::new();
    body.insert("online".into(), json!(online));
    body.insert("session".into(), json!(session));
    body.insert("version".into(), json!(gw.version));
    body.insert("started_at".into(), json!(format_ts(gw.started_at)));
    body.insert("machines".into(), json!(gw.machines));
    body.insert("dropped_telemetry".into(), json!(counts.dropped_telemetry));
    body.insert("outbox_depth".into(), json!(counts.outbox_depth));
    body.insert("lost_events".into(), json!(counts.lost_events));
    body.insert("gateway".into(), json!(gw.id));
    body.insert("ts".into(), json!(format_ts(ts)));
    Value::Object(body).to_string().into_bytes()
}

fn to_value<T: serde::Serialize>(v: &T) -> Value {
    // These types serialize to plain JSON (no maps with non-string keys);
    // a non-finite float becomes null, which the contract allows for KPIs.
    serde_json::to_value(v).unwrap_or(Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::{Kpi, MachineState, PeriodCounts, StateSeconds};
    use crate::source::Value as SigValue;
    use chrono::TimeZone;

    fn at(h: u32, m: u32, ms: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 26, h, m, 0).unwrap()
            + chrono::Duration::milliseconds(ms as i64)
    }

    #[test]
    fn state_message_has_the_contract_shape_and_is_retained() {
        let m = state_message(&StateChange {
            machine: "press07".into(),
            state: MachineState::Down,
            prev: Some(MachineState::Running),
            since: at(8, 0, 125),
            reason: Some("alarm 17".into()),
        });
        assert_eq!(m.topic_suffix, "m/press07/state");
        assert!(m.retain);
        assert_eq!(m.class, MessageClass::Durable);
        assert_eq!(
            Value::Object(m.body),
            json!({"machine": "press07", "state": "down", "prev": "running",
                   "since": "2026-11-26T08:00:00.125Z", "reason": "alarm 17"})
        );
    }

    #[test]
    fn period_message_matches_the_utilisation_json_of_the_contract() {
        let m = period_message(&ClosedPeriod {
            machine: "press07".into(),
            kind: PeriodKind::Shift {
                name: "early".into(),
            },
            start: at(6, 0, 0),
            end: at(6, 15, 0),
            seconds: StateSeconds {
                running: 612.4,
                down: 87.6,
                idle: 200.0,
                ..Default::default()
            },
            counts: PeriodCounts {
                produced: 64,
                good: 63,
                scrap: 1,
                stops: 3,
                micro_stops: 2,
                failures: 1,
                produced_unobserved: 5,
            },
            kpi: Kpi {
                availability: Some(0.68),
                performance: None,
                ..Default::default()
            },
            clock_step: None,
        });
        assert_eq!(m.topic_suffix, "m/press07/utilisation");
        assert!(!m.retain);
        assert_eq!(m.ts, at(6, 15, 0));
        let body = Value::Object(m.body);
        assert_eq!(
            body["period"],
            json!({"kind": "shift", "start": "2026-11-26T06:00:00.000Z",
                   "end": "2026-11-26T06:15:00.000Z", "name": "early"})
        );
        assert_eq!(
            body["seconds"],
            json!({"running": 612.4, "setup": 0.0, "down": 87.6, "idle": 200.0,
                   "planned_stop": 0.0, "offline": 0.0})
        );
        assert_eq!(
            body["counts"],
            json!({"produced": 64, "good": 63, "scrap": 1, "stops": 3, "micro_stops": 2, "failures": 1,
                   "produced_unobserved": 5})
        );
        assert_eq!(body["kpi"]["availability"], json!(0.68));
        assert_eq!(body["kpi"]["performance"], Value::Null);
        assert_eq!(body["kpi"].as_object().map(|o| o.len()), Some(7));
        assert!(
            body.get("clock_step").is_none(),
            "no clock_step without a step"
        );
    }

    #[test]
    fn interval_periods_have_no_name() {
        let m = period_message(&ClosedPeriod {
            machine: "m1".into(),
            kind: PeriodKind::Interval,
            start: at(6, 0, 0),
            end: at(6, 15, 0),
            seconds: StateSeconds::default(),
            counts: PeriodCounts::default(),
            kpi: Kpi::default(),
            clock_step: None,
        });
        let body = Value::Object(m.body);
        assert_eq!(body["period"]["kind"], "interval");
        assert!(body["period"].get("name").is_none());
    }

    #[test]
    fn a_period_that_saw_a_wall_clock_step_says_by_how_much() {
        let m = period_message(&ClosedPeriod {
            machine: "m1".into(),
            kind: PeriodKind::Interval,
            start: at(6, 0, 0),
            end: at(6, 15, 0),
            seconds: StateSeconds::default(),
            counts: PeriodCounts::default(),
            kpi: Kpi::default(),
            clock_step: Some(crate::machine::ClockStep { by_s: -300.0 }),
        });
        let body = Value::Object(m.body);
        assert_eq!(body["clock_step"], json!({"by_s": -300.0}));
    }

    #[test]
    fn telemetry_is_droppable_and_carries_plain_values() {
        let values = [
            ("temp", SigValue::Float(71.5)),
            ("mode", SigValue::Text("auto".into())),
        ]
        .into_iter()
        .collect();
        let m = telemetry_message(&Telemetry {
            machine: "press07".into(),
            at: at(8, 1, 0),
            values,
        });
        assert_eq!(m.class, MessageClass::Telemetry);
        assert_eq!(
            Value::Object(m.body),
            json!({"machine": "press07", "values": {"temp": 71.5, "mode": "auto"}})
        );
    }

    #[test]
    fn envelope_marks_only_offline_rows_historical() {
        let row = |offline| OutboxRow {
            seq: 41,
            topic_suffix: "m/a/state".into(),
            class: MessageClass::Durable,
            retain: true,
            ts: "2026-11-26T08:00:00.125Z".into(),
            body: r#"{"machine":"a"}"#.into(),
            stored_offline: offline,
        };
        let live: Value =
            serde_json::from_slice(&row_payload("gw1", &row(false)).unwrap()).unwrap();
        let late: Value = serde_json::from_slice(&row_payload("gw1", &row(true)).unwrap()).unwrap();
        assert_eq!(
            live,
            json!({"machine": "a", "gateway": "gw1", "seq": 41, "ts": "2026-11-26T08:00:00.125Z"})
        );
        assert_eq!(late["historical"], json!(true));
    }

    #[test]
    fn the_envelope_is_appended_to_the_stored_text_as_parsing_would_add_it() {
        let row = |body: &str| OutboxRow {
            seq: 9,
            topic_suffix: "m/a/telemetry".into(),
            class: MessageClass::Telemetry,
            retain: false,
            ts: "2026-11-26T08:00:00.125Z".into(),
            body: body.into(),
            stored_offline: true,
        };
        for body in [
            "{}",
            " { } ",
            r#"{"machine":"a","values":{"t":1.5,"s":"x\"}"}}"#,
            r#"{"machine":"ä\u0001","values":{}}"#,
        ] {
            let spliced: Value = serde_json::from_slice(&row_payload("gw\"1", &row(body)).unwrap())
                .unwrap_or_else(|e| panic!("{body}: {e}"));
            let mut parsed: Map<String, Value> = serde_json::from_str(body).unwrap();
            add_envelope(&mut parsed, "gw\"1", 9, "2026-11-26T08:00:00.125Z", true);
            assert_eq!(spliced, Value::Object(parsed), "{body}");
        }
    }

    #[test]
    fn a_corrupt_row_is_an_error_naming_its_seq() {
        let row = OutboxRow {
            seq: 7,
            topic_suffix: "x".into(),
            class: MessageClass::Durable,
            retain: false,
            ts: "t".into(),
            body: "[1,2".into(),
            stored_offline: false,
        };
        let e = row_payload("gw", &row).unwrap_err();
        assert!(e.to_string().contains("row 7"), "{e}");
    }

    #[test]
    fn birth_and_will_carry_identity_drops_and_the_session_but_no_seq() {
        let gw = GatewayInfo {
            id: "gw1".into(),
            prefix: "linegate/v1/s/gw1".into(),
            version: "0.1.0".into(),
            started_at: at(7, 0, 0),
            machines: vec!["press07".into()],
        };
        let counts = StatusCounts {
            dropped_telemetry: 3,
            outbox_depth: 10,
            lost_events: 1,
        };
        let b: Value =
            serde_json::from_slice(&birth_payload(&gw, 42, at(8, 0, 0), counts)).unwrap();
        let w: Value =
            serde_json::from_slice(&offline_payload(&gw, 42, at(8, 0, 0), counts)).unwrap();
        assert_eq!(
            b,
            json!({"online": true, "session": 42, "version": "0.1.0",
                   "started_at": "2026-11-26T07:00:00.000Z", "machines": ["press07"],
                   "dropped_telemetry": 3, "outbox_depth": 10, "lost_events": 1,
                   "gateway": "gw1", "ts": "2026-11-26T08:00:00.000Z"})
        );
        assert_eq!(w["online"], json!(false));
        assert_eq!(w["session"], json!(42));
        assert!(w.get("seq").is_none() && w.get("historical").is_none());
    }
}
