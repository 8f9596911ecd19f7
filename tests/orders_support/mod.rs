//! Shared by the order tests: a config with one machine that takes orders
//! and one that does not, a store in a temp folder, and the order status
//! bodies the book recorded (`order_event`).
#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;

use linegate::config::Config;
use linegate::store::{Store, StoreError};
use linegate::uplink::outbox::Outgoing;
use serde_json::Value;

/// `press07` takes orders through holding 200-204 and coil 10; `saw02` takes none.
pub fn config_text(bus_address: &str) -> String {
    format!(
        r#"
[gateway]
id = "gw1"
site = "plant"

[[bus]]
id = "line1"
transport = "tcp"
address = "{bus_address}"

[[machine]]
id = "press07"
bus = "line1"
[[machine.signal]]
name = "parts"
area = "input"
address = 0
type = "u32"
[machine.counters]
produced = "parts"
[machine.orders]
order_number = {{ area = "holding", address = 200, type = "u32" }}
product_code = {{ area = "holding", address = 202, type = "u16", map = {{ "P-4711" = 11, "P-4712" = 12, "P-4713" = 13 }} }}
quantity     = {{ area = "holding", address = 203, type = "u16", max = 5000 }}
start        = {{ area = "coil", address = 10 }}
max_quantity = 5000
[machine.orders.params]
recipe = {{ area = "holding", address = 204, type = "u16", min = 1, max = 20 }}

[[machine]]
id = "saw02"
bus = "line1"
[[machine.signal]]
name = "parts"
area = "input"
address = 0
[machine.counters]
produced = "parts"
"#
    )
}

pub fn config(bus_address: &str) -> Arc<Config> {
    Arc::new(
        Config::from_toml(&config_text(bus_address), Path::new("orders-test.toml"))
            .expect("test config is valid"),
    )
}

/// Stands in for the outbox until the uplink's `enqueue` lands: the status
/// is still recorded by the book in `order_event`, which the tests read.
pub fn record_only(_conn: &rusqlite::Connection, _msg: &Outgoing) -> Result<u64, StoreError> {
    Ok(0)
}

/// An outbox that cannot take anything (disk full, broken file).
pub fn failing_outbox(_conn: &rusqlite::Connection, _msg: &Outgoing) -> Result<u64, StoreError> {
    Err(StoreError::Closed)
}

pub fn open_store(dir: &Path) -> Store {
    Store::open(dir).expect("store opens")
}

/// Every status body recorded so far, oldest first.
pub fn events(store: &Store) -> Vec<Value> {
    store
        .call_blocking(|c| {
            let mut stmt = c.prepare("SELECT body FROM order_event ORDER BY id")?;
            let rows = stmt
                .query_map([], |r| r.get::<_, String>(0))?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
        .expect("events readable")
        .into_iter()
        .map(|b| serde_json::from_str(&b).expect("bodies are JSON"))
        .collect()
}

/// Status bodies of one order, oldest first.
pub fn events_of(store: &Store, order_id: &str) -> Vec<Value> {
    events(store)
        .into_iter()
        .filter(|e| e["order_id"] == order_id)
        .collect()
}

pub fn states_of(store: &Store, order_id: &str) -> Vec<String> {
    events_of(store, order_id)
        .iter()
        .map(|e| e["state"].as_str().unwrap_or("?").to_owned())
        .collect()
}
