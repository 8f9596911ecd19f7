//! Config loading: every mistake a technician can make gives an error that
//! names the key and says what is allowed.

use std::path::Path;

use linegate::config::{Config, ConfigError};

const GOOD: &str = r#"
[gateway]
id = "gw-line2"
site = "plant1"
data_dir = "/tmp/x"

[[bus]]
id = "cell-a"
transport = "tcp"
address = "127.0.0.1:502"

[[machine]]
id = "press07"
bus = "cell-a"
unit = 1

[[machine.signal]]
name = "part_count"
area = "holding"
address = 100
type = "u32"

[[machine.signal]]
name = "running"
area = "coil"
address = 0
type = "bool"
"#;

fn load(text: &str) -> Result<Config, ConfigError> {
    Config::from_toml(text, Path::new("test.toml"))
}

fn error_of(text: &str) -> String {
    match load(text) {
        Ok(_) => panic!("config should have been refused:\n{text}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn a_good_config_loads() {
    let c = load(GOOD).unwrap();
    assert_eq!(c.machine[0].signal.len(), 2);
    assert_eq!(
        c.machine[0].signal[0].data_type,
        linegate::config::DataType::U32
    );
}

#[test]
fn a_typo_key_is_named_with_its_path() {
    let e = error_of(&GOOD.replace("type = \"u32\"", "typ = \"u32\""));
    assert!(e.contains("machine[0].signal[0]"), "{e}");
    assert!(e.contains("unknown field `typ`"), "{e}");
}

#[test]
fn a_bad_type_names_the_allowed_types() {
    let e = error_of(&GOOD.replace("type = \"u32\"", "type = \"uint32\""));
    assert!(e.contains("machine[0].signal[0].type"), "{e}");
    assert!(e.contains("u32"), "{e}");
}

#[test]
fn an_unknown_bus_is_named() {
    let e = error_of(&GOOD.replace("bus = \"cell-a\"", "bus = \"cell-b\""));
    assert!(e.contains("machine[0].bus"), "{e}");
    assert!(e.contains("\"cell-b\""), "{e}");
    assert!(e.contains("cell-a"), "{e}");
}

#[test]
fn overlapping_signals_are_refused() {
    let text = format!(
        "{GOOD}\n[[machine.signal]]\nname = \"speed\"\narea = \"holding\"\naddress = 101\ntype = \"u16\"\n"
    );
    let e = error_of(&text);
    assert!(e.contains("machine[0].signal[2].address"), "{e}");
    assert!(e.contains("overlaps signal \"part_count\""), "{e}");
}

#[test]
fn a_type_that_does_not_fit_its_area_is_refused() {
    let e = error_of(&GOOD.replace("type = \"bool\"", "type = \"u16\""));
    assert!(e.contains("machine[0].signal[1].type"), "{e}");
    assert!(e.contains("does not fit area coil"), "{e}");
}

#[test]
fn all_problems_are_reported_at_once() {
    let text = GOOD
        .replace("id = \"gw-line2\"", "id = \"gw line2\"")
        .replace("bus = \"cell-a\"", "bus = \"nope\"");
    let e = error_of(&text);
    assert!(e.contains("gateway.id"), "{e}");
    assert!(e.contains("machine[0].bus"), "{e}");
}

#[test]
fn orders_on_a_machine_of_an_mqtt_bus_are_refused() {
    let text = r#"
[gateway]
id = "gw"
site = "s"

[[bus]]
id = "plc"
transport = "mqtt"
address = "mqtt://127.0.0.1:1883"

[[machine]]
id = "oven2"
bus = "plc"

[[machine.signal]]
name = "count"
topic = "plc/oven2/count"

[machine.counters]
produced = "count"

[machine.orders]
order_number = { area = "holding", address = 200, type = "u32" }
product_code = { area = "holding", address = 202, map = { "P-1" = 1 } }
quantity = { area = "holding", address = 203 }
start = { area = "coil", address = 10 }
max_quantity = 10
"#;
    let e = error_of(text);
    assert!(e.contains("machine[0].orders"), "{e}");
    assert!(e.contains("mqtt bus"), "{e}");
}

#[test]
fn mqtt_payload_limit_and_retained_policy_are_checked_with_their_keys() {
    let mqtt = GOOD.replace(
        "transport = \"tcp\"\naddress = \"127.0.0.1:502\"",
        "transport = \"mqtt\"\naddress = \"mqtt://127.0.0.1:1883\"\nmax_payload_bytes = 0\nretained = \"timestamped\"",
    );
    let e = error_of(&mqtt);
    assert!(e.contains("bus[0].max_payload_bytes"), "{e}");
    assert!(e.contains("bus[0].timestamp_pointer"), "{e}");
    let e = error_of(&mqtt.replace(
        "retained = \"timestamped\"",
        "retained = \"timestamped\"\ntimestamp_pointer = \"ts\"",
    ));
    assert!(
        e.contains("bus[0].timestamp_pointer") && e.contains("JSON pointer"),
        "{e}"
    );
    let e = error_of(&mqtt.replace("retained = \"timestamped\"", "retained = \"always\""));
    assert!(e.contains("retained"), "{e}");
    assert!(e.contains("ignore") && e.contains("timestamped"), "{e}");
}

#[test]
fn a_steady_retry_phase_longer_than_a_day_is_refused_by_name() {
    let text = GOOD.replace(
        "address = \"127.0.0.1:502\"",
        "address = \"127.0.0.1:502\"\nbackoff_after_ms = 90000000",
    );
    let e = error_of(&text);
    assert!(e.contains("bus[0].backoff_after_ms"), "{e}");
    assert!(e.contains("above a day"), "{e}");
    let ok = GOOD.replace(
        "address = \"127.0.0.1:502\"",
        "address = \"127.0.0.1:502\"\nbackoff_after_ms = 0",
    );
    assert_eq!(load(&ok).unwrap().bus[0].backoff_after_ms, 0);
}

#[test]
fn a_store_reserve_beyond_its_bound_is_named() {
    let e = error_of(&format!("{GOOD}\n[store]\nreserve_mb = 5000\n"));
    assert!(e.contains("store.reserve_mb"), "{e}");
    assert!(e.contains("4096"), "{e}");
    let c = load(&format!("{GOOD}\n[store]\nreserve_mb = 0\n")).unwrap();
    assert_eq!(c.store.reserve_mb, 0, "0 turns the reserve off");
    assert_eq!(load(GOOD).unwrap().store.reserve_mb, 16, "the default");
}
