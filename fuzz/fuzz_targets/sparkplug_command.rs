//! What a Sparkplug host (or anyone on the broker) sends the edge node:
//! an NCMD payload (`sparkplug::node::asks_rebirth`, protobuf) or a primary
//! host's STATE payload (`sparkplug::node::host_online`, JSON or text).
//!
//! Input: one byte picks NCMD (even) or STATE (odd), the rest is the payload.
//!
//! Properties: no panic; a STATE is understood only as the 2.2 texts or a
//! JSON object whose `online` is a bool, and then says exactly that.
#![no_main]

use libfuzzer_sys::fuzz_target;
use linegate::sparkplug::node::{asks_rebirth, host_online};

fuzz_target!(|data: &[u8]| {
    let Some((&pick, payload)) = data.split_first() else {
        return;
    };
    if pick % 2 == 0 {
        let _ = asks_rebirth(payload);
        return;
    }
    let got = host_online(payload);
    let want = match payload {
        b"ONLINE" => Some(true),
        b"OFFLINE" => Some(false),
        _ => serde_json::from_slice::<serde_json::Value>(payload)
            .ok()
            .and_then(|v| v.get("online").and_then(|o| o.as_bool())),
    };
    assert_eq!(got, want, "STATE {payload:?}");
});
