//! Order intake end to end through the parser and the order book, against a
//! real SQLite store: every message gets exactly one accepted/rejected
//! answer per order, and every rejection says what is wrong.

mod orders_support;

use std::sync::Arc;

use chrono::{DateTime, Utc};
use linegate::config::Config;
use linegate::orders::book::{self, OrderState};
use linegate::orders::command;
use linegate::store::Store;
use orders_support::*;
use proptest::prelude::*;
use serde_json::{json, Value};

fn now() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-11-26T08:00:00Z")
        .unwrap()
        .with_timezone(&Utc)
}

struct Intake {
    _dir: tempfile::TempDir,
    store: Store,
    config: Arc<Config>,
}

impl Intake {
    fn new() -> Intake {
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(dir.path());
        Intake {
            _dir: dir,
            store,
            config: config("127.0.0.1:5020"),
        }
    }

    /// Send one payload; the status bodies it produced.
    fn send(&self, payload: &[u8]) -> Vec<Value> {
        let before = events(&self.store).len();
        let parsed = command::parse(payload, &self.config);
        self.store
            .call_blocking(move |c| book::intake(c, record_only, parsed, &|_| false, now()))
            .expect("intake commits");
        events(&self.store).split_off(before)
    }

    fn send_json(&self, v: Value) -> Vec<Value> {
        self.send(v.to_string().as_bytes())
    }

    /// Send and expect exactly one rejection; its reason.
    fn rejected(&self, v: Value) -> String {
        let answers = self.send_json(v);
        assert_eq!(answers.len(), 1, "one answer: {answers:?}");
        assert_eq!(answers[0]["state"], "rejected", "{answers:?}");
        answers[0]["reason"].as_str().unwrap().to_owned()
    }

    fn rows(&self) -> Vec<book::OrderRow> {
        self.store.call_blocking(|c| book::list(c, None)).unwrap()
    }
}

fn order(id: &str) -> Value {
    json!({"type": "order", "order_id": id, "revision": 1, "machine": "press07",
           "product": "P-4711", "quantity": 120, "due": "2026-11-26T14:00:00Z",
           "sequence": 17, "ideal_cycle_s": 9.5, "params": {"recipe": 4}})
}

fn with(mut v: Value, key: &str, value: Value) -> Value {
    v[key] = value;
    v
}

fn without(mut v: Value, key: &str) -> Value {
    v.as_object_mut().unwrap().remove(key);
    v
}

#[test]
fn a_valid_order_is_accepted_then_queued_with_every_contract_field() {
    let t = Intake::new();
    let answers = t.send_json(order("WO-123"));
    let states: Vec<&str> = answers
        .iter()
        .map(|a| a["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["accepted", "queued"]);
    for a in &answers {
        for key in [
            "order_id",
            "revision",
            "machine",
            "state",
            "reason",
            "produced",
            "good",
            "scrap",
            "actual_start",
            "actual_end",
            "late",
        ] {
            assert!(a.get(key).is_some(), "{key} missing in {a}");
        }
        assert_eq!(a["order_id"], "WO-123");
        assert_eq!(a["machine"], "press07");
        assert_eq!(a["late"], false);
    }
    let rows = t.rows();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].state, OrderState::Queued);
    assert_eq!(rows[0].params.get("recipe"), Some(&json!(4)));
}

#[test]
fn text_that_is_not_json_is_rejected_with_a_null_order_id() {
    let t = Intake::new();
    let answers = t.send(b"{\"type\": \"order\", \"order_id\": \"WO-1\"");
    assert_eq!(answers.len(), 1);
    assert_eq!(answers[0]["state"], "rejected");
    assert_eq!(answers[0]["order_id"], Value::Null);
    assert!(answers[0]["reason"].as_str().unwrap().contains("not JSON"));
    let reason = t.rejected(json!([1, 2]));
    assert!(reason.contains("expected a JSON object"), "{reason}");
}

#[test]
fn a_message_without_a_known_type_is_rejected() {
    let t = Intake::new();
    let reason = t.rejected(without(order("WO-1"), "type"));
    assert!(reason.contains("missing field `type`"), "{reason}");
    let reason = t.rejected(with(order("WO-1"), "type", json!("oder")));
    assert!(reason.contains("unknown `type` \"oder\""), "{reason}");
}

#[test]
fn wrong_types_are_named_and_the_readable_order_id_is_echoed() {
    let t = Intake::new();
    let answers = t.send_json(with(order("WO-7"), "quantity", json!("ten")));
    assert_eq!(answers[0]["order_id"], "WO-7");
    let reason = answers[0]["reason"].as_str().unwrap();
    assert!(
        reason.contains("`quantity` must be a number, got a string"),
        "{reason}"
    );
    let reason = t.rejected(with(order("WO-7"), "order_id", json!(17)));
    assert!(
        reason.contains("`order_id` must be a string, got a number"),
        "{reason}"
    );
    let reason = t.rejected(with(order("WO-7"), "due", json!("tomorrow")));
    assert!(
        reason.contains("`due` \"tomorrow\" is not an RFC 3339 time"),
        "{reason}"
    );
    let reason = t.rejected(with(order("WO-7"), "revision", json!(-1)));
    assert!(
        reason.contains("`revision` must be a whole number"),
        "{reason}"
    );
    let reason = t.rejected(with(order("WO-7"), "params", json!([4])));
    assert!(reason.contains("`params` must be an object"), "{reason}");
}

#[test]
fn missing_fields_are_named() {
    let t = Intake::new();
    for key in ["order_id", "machine", "product", "quantity"] {
        let reason = t.rejected(without(order("WO-1"), key));
        assert!(
            reason.contains(&format!("missing field `{key}`")),
            "{key}: {reason}"
        );
    }
}

#[test]
fn an_unknown_field_is_rejected_rather_than_ignored() {
    let t = Intake::new();
    let reason = t.rejected(with(order("WO-1"), "quantiy", json!(5)));
    assert!(reason.contains("unknown field(s) quantiy"), "{reason}");
}

#[test]
fn an_unknown_machine_is_rejected_listing_the_known_ones() {
    let t = Intake::new();
    let reason = t.rejected(with(order("WO-1"), "machine", json!("press99")));
    assert!(reason.contains("unknown machine \"press99\""), "{reason}");
    assert!(reason.contains("press07, saw02"), "{reason}");
}

#[test]
fn a_machine_without_order_registers_takes_no_orders() {
    let t = Intake::new();
    let reason = t.rejected(with(order("WO-1"), "machine", json!("saw02")));
    assert!(reason.contains("machine saw02 takes no orders"), "{reason}");
}

#[test]
fn a_product_outside_the_machines_map_is_rejected_listing_the_known_ones() {
    let t = Intake::new();
    let reason = t.rejected(with(order("WO-1"), "product", json!("P-9999")));
    assert!(
        reason.contains("does not know product \"P-9999\""),
        "{reason}"
    );
    assert!(reason.contains("P-4711, P-4712, P-4713"), "{reason}");
}

#[test]
fn quantity_must_be_positive_and_within_the_machines_maximum() {
    let t = Intake::new();
    let reason = t.rejected(with(order("WO-1"), "quantity", json!(0)));
    assert!(reason.contains("quantity 0 must be positive"), "{reason}");
    let reason = t.rejected(with(order("WO-1"), "quantity", json!(-3)));
    assert!(reason.contains("must be positive"), "{reason}");
    let reason = t.rejected(with(order("WO-1"), "quantity", json!(5001)));
    assert!(
        reason.contains("above machine press07's max_quantity 5000"),
        "{reason}"
    );
    let reason = t.rejected(with(order("WO-1"), "quantity", json!(2.5)));
    assert!(reason.contains("must be a whole number"), "{reason}");
    assert_eq!(
        t.send_json(with(order("WO-1"), "quantity", json!(5000)))
            .len(),
        2
    );
}

#[test]
fn a_parameter_unknown_or_out_of_range_is_named() {
    let t = Intake::new();
    let reason = t.rejected(with(order("WO-1"), "params", json!({"speed": 3})));
    assert!(
        reason.contains("unknown parameter \"speed\" (known: recipe)"),
        "{reason}"
    );
    let reason = t.rejected(with(order("WO-1"), "params", json!({"recipe": 21})));
    assert!(reason.contains("parameter recipe"), "{reason}");
    assert!(reason.contains("1..=20"), "{reason}");
    let reason = t.rejected(with(order("WO-1"), "params", json!({"recipe": "four"})));
    assert!(
        reason.contains("parameter recipe: must be a number"),
        "{reason}"
    );
}

#[test]
fn an_ideal_cycle_time_must_be_above_zero_and_at_most_a_day() {
    let i = Intake::new();
    for (n, bad) in [
        json!(1e308),
        json!(86400.5),
        json!(0),
        json!(-3),
        json!("9.5"),
    ]
    .into_iter()
    .enumerate()
    {
        let reason = i.rejected(with(order(&format!("O-{n}")), "ideal_cycle_s", bad.clone()));
        assert!(
            reason.contains("ideal_cycle_s") && reason.contains("86400"),
            "{bad}: {reason}"
        );
    }
    assert!(i.rows().is_empty(), "nothing kept");
    let answers = i.send_json(with(order("O-day"), "ideal_cycle_s", json!(86400)));
    assert_eq!(answers[0]["state"], "accepted", "{answers:?}");
}

#[test]
fn an_oversized_payload_is_rejected_unread() {
    let t = Intake::new();
    let mut big = order("WO-1");
    big["pad"] = json!("x".repeat(command::MAX_PAYLOAD_BYTES));
    let reason = t.rejected(big);
    assert!(
        reason.contains("larger than the 65536 bytes allowed"),
        "{reason}"
    );
}

#[test]
fn ids_outside_the_contract_alphabet_are_rejected() {
    let t = Intake::new();
    let reason = t.rejected(with(order("x"), "order_id", json!("WO 1/2")));
    assert!(reason.contains("\"WO 1/2\" is not a valid id"), "{reason}");
    let reason = t.rejected(with(order("x"), "order_id", json!("W".repeat(65))));
    assert!(reason.contains("is not a valid id"), "{reason}");
}

#[test]
fn the_same_order_and_revision_twice_is_one_order_answered_accepted_again() {
    let t = Intake::new();
    t.send_json(order("WO-1"));
    let again = t.send_json(order("WO-1"));
    assert_eq!(again.len(), 1);
    assert_eq!(again[0]["state"], "accepted");
    assert!(again[0]["reason"].as_str().unwrap().contains("duplicate"));
    assert_eq!(t.rows().len(), 1);
}

#[test]
fn a_higher_revision_replaces_an_order_that_has_not_started() {
    let t = Intake::new();
    t.send_json(order("WO-1"));
    let answers = t.send_json(with(
        with(order("WO-1"), "revision", json!(2)),
        "quantity",
        json!(80),
    ));
    let summary: Vec<(u64, &str)> = answers
        .iter()
        .map(|a| {
            (
                a["revision"].as_u64().unwrap(),
                a["state"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(summary, [(1, "cancelled"), (2, "accepted"), (2, "queued")]);
    assert!(answers[0]["reason"]
        .as_str()
        .unwrap()
        .contains("replaced by revision 2"));
    let live: Vec<_> = t
        .rows()
        .into_iter()
        .filter(|r| r.state == OrderState::Queued)
        .collect();
    assert_eq!(live.len(), 1);
    assert_eq!((live[0].revision, live[0].quantity), (2, 80));
}

#[test]
fn a_lower_revision_than_one_already_seen_is_rejected() {
    let t = Intake::new();
    t.send_json(with(order("WO-1"), "revision", json!(3)));
    let reason = t.rejected(with(order("WO-1"), "revision", json!(2)));
    assert!(
        reason.contains("revision 2 is lower than revision 3 already seen"),
        "{reason}"
    );
}

#[test]
fn a_higher_revision_of_a_started_order_is_rejected() {
    let t = Intake::new();
    t.send_json(order("WO-1"));
    t.store
        .call_blocking(|c| {
            book::mark_released(c, record_only, "WO-1", 1, book::Counts::default(), now())
        })
        .unwrap();
    let reason = t.rejected(with(order("WO-1"), "revision", json!(2)));
    assert!(
        reason.contains("cannot replace revision 1: it has started (released)"),
        "{reason}"
    );
}

#[test]
fn a_plan_with_one_bad_order_is_rejected_as_a_whole_with_one_answer_per_order() {
    let t = Intake::new();
    let plan = json!({"type": "plan", "plan_id": "HJ-1", "orders": [
        order("WO-1"),
        with(order("WO-2"), "product", json!("P-0000")),
        order("WO-3"),
    ]});
    let answers = t.send_json(plan);
    assert_eq!(answers.len(), 3);
    assert!(answers
        .iter()
        .all(|a| a["state"] == "rejected" && a["plan_id"] == "HJ-1"));
    let reason_2 = answers[1]["reason"].as_str().unwrap();
    assert!(
        reason_2.contains("does not know product \"P-0000\""),
        "{reason_2}"
    );
    let reason_1 = answers[0]["reason"].as_str().unwrap();
    assert!(
        reason_1.contains("rejected as a whole") && reason_1.contains("WO-2"),
        "{reason_1}"
    );
    assert!(t.rows().is_empty());
}

#[test]
fn a_plan_without_orders_gets_one_rejection() {
    let t = Intake::new();
    let reason = t.rejected(json!({"type": "plan", "plan_id": "HJ-1"}));
    assert!(
        reason.contains("plan HJ-1: missing field `orders`"),
        "{reason}"
    );
    let reason = t.rejected(json!({"type": "plan", "plan_id": "HJ-1", "orders": []}));
    assert!(reason.contains("`orders` is empty"), "{reason}");
}

#[test]
fn a_levelled_plan_is_queued_in_the_textbook_mixed_sequence() {
    let t = Intake::new();
    // Demand A=4, B=2, C=1 orders: the levelled sequence is A B A C A B A.
    let mut orders = Vec::new();
    for (product, n) in [("P-4711", 4), ("P-4712", 2), ("P-4713", 1)] {
        for i in 0..n {
            orders.push(
                json!({"order_id": format!("{product}-{i}"), "machine": "press07",
                               "product": product, "quantity": 10}),
            );
        }
    }
    let answers =
        t.send_json(json!({"type": "plan", "plan_id": "HJ-2", "level": true, "orders": orders}));
    assert_eq!(
        answers.iter().filter(|a| a["state"] == "accepted").count(),
        7
    );
    let sequence: Vec<String> = t.rows().into_iter().map(|r| r.product).collect();
    assert_eq!(
        sequence,
        ["P-4711", "P-4712", "P-4711", "P-4713", "P-4711", "P-4712", "P-4711"]
    );
    let last = answers.last().unwrap();
    assert_eq!(last["plan"]["orders"], 7);
    assert_eq!(last["plan"]["sequence"][0], "P-4711-0");
}

#[test]
fn hold_resume_and_cancel_work_where_they_make_sense_and_are_refused_otherwise() {
    let t = Intake::new();
    let reason = t.rejected(json!({"type": "hold", "order_id": "WO-404"}));
    assert!(reason.contains("hold: order WO-404 is unknown"), "{reason}");
    t.send_json(order("WO-1"));
    let reason = t.rejected(json!({"type": "resume", "order_id": "WO-1"}));
    assert!(
        reason.contains("resume: order WO-1 is queued, not held"),
        "{reason}"
    );

    let held = t.send_json(json!({"type": "hold", "order_id": "WO-1"}));
    let states: Vec<&str> = held.iter().map(|a| a["state"].as_str().unwrap()).collect();
    assert_eq!(states, ["accepted", "held"]);
    assert_eq!(held[0]["command"], "hold");
    let reason = t.rejected(json!({"type": "hold", "order_id": "WO-1"}));
    assert!(reason.contains("already held"), "{reason}");

    let resumed = t.send_json(json!({"type": "resume", "order_id": "WO-1"}));
    assert_eq!(resumed[1]["state"], "queued");
    let cancelled = t.send_json(json!({"type": "cancel", "order_id": "WO-1"}));
    assert_eq!(cancelled[1]["state"], "cancelled");
    let reason = t.rejected(json!({"type": "cancel", "order_id": "WO-1"}));
    assert!(
        reason.contains("cancel: order WO-1 is cancelled; nothing left to cancel"),
        "{reason}"
    );
}

#[test]
fn nothing_is_kept_or_answered_when_the_outbox_cannot_take_the_status() {
    let t = Intake::new();
    let parsed = command::parse(order("WO-1").to_string().as_bytes(), &t.config);
    let result = t
        .store
        .call_blocking(move |c| book::intake(c, failing_outbox, parsed, &|_| false, now()));
    assert!(result.is_err());
    assert!(t.rows().is_empty());
    assert!(events(&t.store).is_empty());
}

#[test]
fn order_state_survives_reopening_the_store() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open_store(dir.path());
        let parsed = command::parse(order("WO-1").to_string().as_bytes(), &config("127.0.0.1:1"));
        store
            .call_blocking(move |c| book::intake(c, record_only, parsed, &|_| false, now()))
            .unwrap();
    }
    let store = open_store(dir.path());
    let rows = store
        .call_blocking(|c| book::list(c, Some("press07")))
        .unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(
        (rows[0].order_id.as_str(), rows[0].state),
        ("WO-1", OrderState::Queued)
    );
}

/// How many accepted/rejected answers a parse result must produce.
fn expected_answers(parsed: &Result<command::Command, Vec<command::Rejection>>) -> usize {
    match parsed {
        Ok(command::Command::Plan(p)) => p.orders.len(),
        Ok(_) => 1,
        Err(r) => r.len(),
    }
}

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        "[ -~]{0,12}".prop_map(Value::from),
        prop_oneof![
            Just("order"),
            Just("plan"),
            Just("hold"),
            Just("cancel"),
            Just("press07"),
            Just("P-4711"),
            Just("WO-1"),
            Just("saw02"),
            Just("2026-11-26T14:00:00Z")
        ]
        .prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 8, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
            proptest::collection::btree_map(
                prop_oneof![
                    Just("type".to_string()),
                    Just("order_id".to_string()),
                    Just("revision".to_string()),
                    Just("machine".to_string()),
                    Just("product".to_string()),
                    Just("quantity".to_string()),
                    Just("due".to_string()),
                    Just("sequence".to_string()),
                    Just("params".to_string()),
                    Just("orders".to_string()),
                    Just("plan_id".to_string()),
                    Just("level".to_string()),
                    Just("pitch".to_string()),
                    Just("recipe".to_string()),
                    "[a-z]{1,6}",
                ],
                inner,
                0..8,
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #[test]
    fn the_parser_answers_arbitrary_bytes_without_panicking(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let config = config("127.0.0.1:1");
        let parsed = command::parse(&bytes, &config);
        prop_assert!(expected_answers(&parsed) >= 1);
    }

    #[test]
    fn the_parser_answers_arbitrary_json_without_panicking(v in arb_json()) {
        let config = config("127.0.0.1:1");
        let parsed = command::parse(v.to_string().as_bytes(), &config);
        prop_assert!(expected_answers(&parsed) >= 1);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    #[test]
    fn every_arbitrary_message_gets_exactly_one_answer_per_order_in_the_book(v in arb_json()) {
        let t = Intake::new();
        let payload = v.to_string();
        let expected = expected_answers(&command::parse(payload.as_bytes(), &t.config));
        let answers = t.send(payload.as_bytes());
        let n = answers
            .iter()
            .filter(|a| a["state"] == "accepted" || a["state"] == "rejected")
            .count();
        prop_assert_eq!(n, expected);
    }
}
