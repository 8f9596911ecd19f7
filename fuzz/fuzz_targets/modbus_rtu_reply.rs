//! A Modbus RTU reply, as bytes heard on the line after a read request,
//! through the RTU scan, the reply checks and decoding into signal values:
//! `linegate::source::modbus::rtu_reply_readings`, the steps a serial poll
//! takes. Input: one byte picks the request of the machine's read plan, the
//! rest is what the line carried.
//!
//! Properties: no panic; a decoded float is finite (the contract's values
//! are JSON numbers, which have no NaN or infinity); a bit signal decodes to
//! a bool.
#![no_main]

use std::path::Path;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use linegate::config::Config;
use linegate::source::modbus::{plan_reads, rtu_reply_readings};
use linegate::source::Value;

fn config() -> &'static Config {
    static CONFIG: OnceLock<Config> = OnceLock::new();
    CONFIG.get_or_init(|| {
        Config::from_toml(
            include_str!("../configs/modbus.toml"),
            Path::new("modbus.toml"),
        )
        .expect("the fuzz config is valid")
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, heard)) = data.split_first() else {
        return;
    };
    let config = config();
    let machine = &config.machine[usize::from(pick & 1)];
    let Some(bus) = config.bus(&machine.bus) else {
        return;
    };
    let plan = plan_reads(machine, bus);
    let request = usize::from(pick >> 1) % plan.len().max(1);
    let Some(readings) = rtu_reply_readings(machine, bus, request, heard) else {
        return;
    };
    for (name, reading) in readings.iter() {
        let signal = machine.signal.iter().find(|s| *s.name == **name);
        match reading {
            Ok(Value::Float(x)) => assert!(x.is_finite(), "{name}: {x} is not finite"),
            Ok(v) => {
                if signal.and_then(|s| s.area).is_some_and(|a| a.is_bits()) {
                    assert!(matches!(v, Value::Bool(_)), "{name}: bit signal gave {v:?}");
                }
            }
            Err(_) => {}
        }
    }
});
