//! An `orders/cmd` payload (order, plan, hold/resume/cancel) through the
//! daemon's intake: `orders::command::parse` against the line's config, then
//! `orders::book::intake` into a real SQLite store (a temporary file), the
//! same two calls the uplink makes for every message.
//!
//! Properties: no panic; the intake commits; every message gets its
//! answers, one `accepted`/`rejected` per order (per rejection when it could
//! not be read, one for a command); an accepted order's release writes only
//! the registers its machine's config lists, each value inside the
//! register's `min`/`max`.
#![no_main]

use std::path::Path;
use std::sync::{Mutex, OnceLock};

use chrono::{DateTime, Utc};
use libfuzzer_sys::fuzz_target;
use linegate::config::{Config, OrderRegister, OrderRegistersConfig};
use linegate::orders::book;
use linegate::orders::command::{self, Command, WorkOrder};
use linegate::source::modbus::decode::{decode_words, Decoding};
use linegate::source::modbus::WriteData;
use linegate::source::Value;
use linegate::store::{Store, StoreError};
use linegate::uplink::outbox::Outgoing;

struct Fixture {
    _dir: tempfile::TempDir,
    store: Store,
    config: Config,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let store = Store::open(dir.path()).expect("the store opens");
        let config = Config::from_toml(
            include_str!("../configs/orders.toml"),
            Path::new("orders.toml"),
        )
        .expect("the fuzz config is valid");
        Fixture {
            _dir: dir,
            store,
            config,
        }
    })
}

/// The status bodies the book enqueued for the message being taken in.
static SENT: Mutex<Vec<serde_json::Map<String, serde_json::Value>>> = Mutex::new(Vec::new());

fn capture(_conn: &rusqlite::Connection, msg: &Outgoing) -> Result<u64, StoreError> {
    let mut sent = SENT.lock().unwrap_or_else(|e| e.into_inner());
    sent.push(msg.body.clone());
    Ok(sent.len() as u64)
}

fn now() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-11-26T08:00:00Z")
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or_default()
}

fn is_answer(body: &serde_json::Map<String, serde_json::Value>) -> bool {
    matches!(
        body.get("state").and_then(|s| s.as_str()),
        Some("accepted" | "rejected")
    )
}

/// Every write of an order's release goes to a register of `regs`, with a
/// value inside that register's limits.
fn check_release(regs: &OrderRegistersConfig, order: &WorkOrder) {
    let number = command::order_number_for(regs, 1);
    let writes =
        command::release_writes(regs, number, &order.product, order.quantity, &order.params)
            .unwrap_or_else(|e| panic!("accepted order {} has no release: {e}", order.order_id));
    for w in &writes {
        let reg: &OrderRegister = match w.name.as_str() {
            "order_number" => &regs.order_number,
            "product_code" => &regs.product_code,
            "quantity" => &regs.quantity,
            "start" => &regs.start,
            name => {
                let param = name.strip_prefix("parameter ").unwrap_or(name);
                regs.params
                    .get(param)
                    .unwrap_or_else(|| panic!("write {name:?} is to no configured register"))
            }
        };
        assert_eq!(
            (w.write.area, w.write.address),
            (reg.area, reg.address),
            "{}",
            w.name
        );
        let value = match &w.write.data {
            WriteData::Coil(on) => f64::from(u8::from(*on)),
            WriteData::Registers(words) => {
                let decoding = Decoding {
                    data_type: reg.data_type,
                    word_order: reg.word_order,
                    byte_order: reg.byte_order,
                    bit: None,
                    length: None,
                    scale: 1.0,
                    offset: 0.0,
                };
                match decode_words(&decoding, words) {
                    Ok(v) => match v {
                        Value::Bool(b) => f64::from(u8::from(b)),
                        other => other.as_f64().unwrap_or(f64::NAN),
                    },
                    Err(e) => panic!("{}: written words do not decode: {e}", w.name),
                }
            }
        };
        assert!(value.is_finite(), "{}: {value}", w.name);
        if let Some(min) = reg.min {
            assert!(value >= min, "{}: {value} below min {min}", w.name);
        }
        if let Some(max) = reg.max {
            assert!(value <= max, "{}: {value} above max {max}", w.name);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let fixture = fixture();
    let config = &fixture.config;
    let parsed = command::parse(data, config);
    // What the message must be answered with.
    let (orders, expected): (Vec<WorkOrder>, usize) = match &parsed {
        Err(rejections) => {
            assert!(!rejections.is_empty(), "a refused message names why");
            (vec![], rejections.len())
        }
        Ok(Command::Order(o)) => (vec![o.clone()], 1),
        Ok(Command::Plan(p)) => (p.orders.clone(), p.orders.len()),
        Ok(Command::OnOrder { .. }) => (vec![], 1),
    };
    SENT.lock().unwrap_or_else(|e| e.into_inner()).clear();
    fixture
        .store
        .call_blocking(move |c| book::intake(c, capture, parsed, &|_| false, now()))
        .expect("the intake commits");
    let sent = std::mem::take(&mut *SENT.lock().unwrap_or_else(|e| e.into_inner()));
    let answers: Vec<_> = sent.iter().filter(|b| is_answer(b)).collect();
    assert_eq!(answers.len(), expected, "answers: {sent:?}");
    for o in &orders {
        let accepted = answers.iter().any(|b| {
            b.get("order_id").and_then(|v| v.as_str()) == Some(&o.order_id)
                && b.get("state").and_then(|v| v.as_str()) == Some("accepted")
        });
        if accepted {
            let regs = config
                .machine(&o.machine)
                .and_then(|m| m.orders.as_ref())
                .unwrap_or_else(|| {
                    panic!("order {} accepted for a machine without orders", o.order_id)
                });
            check_release(regs, o);
        }
    }
});
