//! A config file's text through loading and every cross-check:
//! `Config::from_toml`, the code path of `Config::load` after the file is
//! read (TOML parsing, the typed shape with unknown keys refused, then
//! `validate`).
//!
//! Properties: no panic; loading either succeeds or names a key (a shape
//! error with its key path, or validation issues each with its key); a
//! config that loads plans only reads within the Modbus protocol's limits.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use linegate::config::{Config, ConfigError, Transport};
use linegate::source::modbus::plan::{plan_reads, PROTOCOL_MAX_BITS, PROTOCOL_MAX_REGISTERS};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        // The file is read as UTF-8 first; other bytes are a read error.
        return;
    };
    match Config::from_toml(text, Path::new("fuzz.toml")) {
        Ok(config) => {
            for machine in &config.machine {
                let Some(bus) = config.bus(&machine.bus) else {
                    panic!("machine {} loaded on a bus that is not there", machine.id);
                };
                if bus.transport == Transport::Mqtt {
                    continue;
                }
                for req in plan_reads(machine, bus) {
                    let max = if req.area.is_bits() {
                        PROTOCOL_MAX_BITS
                    } else {
                        PROTOCOL_MAX_REGISTERS
                    };
                    assert!(req.count >= 1 && req.count <= max, "{}: {req}", machine.id);
                    assert!(req.last() <= 65535, "{}: {req} runs past 65535", machine.id);
                }
            }
        }
        Err(ConfigError::Shape { key, reason, .. }) => {
            assert!(!key.is_empty(), "a shape error names no key: {reason}");
        }
        Err(ConfigError::Invalid { issues, .. }) => {
            assert!(!issues.is_empty(), "an invalid config lists no issue");
            for issue in &issues {
                assert!(!issue.key.is_empty(), "an issue names no key: {issue}");
            }
        }
        Err(other) => panic!("loading text gave {other}"),
    }
});
