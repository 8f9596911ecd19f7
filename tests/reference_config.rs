//! The annotated reference config in configs/ is documentation users read
//! first: it must load, and it must show every option.

use std::path::Path;

use linegate::config::{Config, Transport};

#[test]
fn the_reference_config_loads() {
    let c = Config::load_file_only(Path::new("configs/linegate.toml"))
        .unwrap_or_else(|e| panic!("configs/linegate.toml does not load:\n{e}"));
    assert_eq!(c.gateway.id, "gw-line2");
    let transports: Vec<Transport> = c.bus.iter().map(|b| b.transport).collect();
    assert!(transports.contains(&Transport::Tcp));
    assert!(transports.contains(&Transport::Rtu));
    assert!(transports.contains(&Transport::Mqtt));
    assert!(c.uplink.is_some());
    assert!(c.shifts.is_some());
    assert!(c.sparkplug.is_some());
    let press = c.machine("press07").expect("press07");
    assert!(press.state.is_some() && press.counters.is_some() && press.orders.is_some());
}

#[test]
fn the_reference_config_names_every_option() {
    // Every key of the config types appears in the reference file, so a new
    // option cannot be added without documenting it there.
    let text = std::fs::read_to_string("configs/linegate.toml").unwrap();
    let c = Config::load_file_only(Path::new("configs/linegate.toml")).unwrap();
    let tree = serde_json::to_value(&c).unwrap();
    let mut missing = Vec::new();
    collect_keys(&tree, &mut |k| {
        if !text.contains(&format!("{k} ="))
            && !text.contains(&format!("{k}]"))
            && !text.contains(&format!("{k} ="))
        {
            missing.push(k.to_string());
        }
    });
    missing.sort();
    missing.dedup();
    // Map keys of user data (reason codes, product ids, params) are values, not options.
    missing.retain(|k| !["17", "23", "P-4711", "P-4712", "recipe"].contains(&k.as_str()));
    assert!(
        missing.is_empty(),
        "options not documented in configs/linegate.toml: {missing:?}"
    );
}

fn collect_keys(v: &serde_json::Value, f: &mut dyn FnMut(&str)) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                f(k);
                collect_keys(v, f);
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|i| collect_keys(i, f)),
        _ => {}
    }
}
