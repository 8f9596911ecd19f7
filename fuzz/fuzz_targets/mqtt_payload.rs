//! An MQTT machine-source payload through extraction into a sample value:
//! `source::mqtt::decode_payload`, what the MQTT bus task calls for every
//! signal a message's topic feeds, for signals of every type, with and
//! without a JSON pointer, scaled and not.
//!
//! Input: one byte picks the signal, the rest is the payload.
//!
//! Properties: no panic; a float is finite; a value has the kind its
//! signal's type says (bool, integer inside the type, text).
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use linegate::config::{DataType, SignalConfig};
use linegate::source::mqtt::decode_payload;
use linegate::source::Value;

fn signals() -> &'static [SignalConfig] {
    static SIGNALS: OnceLock<Vec<SignalConfig>> = OnceLock::new();
    SIGNALS.get_or_init(|| {
        let types = [
            DataType::Bool,
            DataType::U16,
            DataType::I16,
            DataType::U32,
            DataType::I32,
            DataType::U64,
            DataType::I64,
            DataType::F32,
            DataType::F64,
            DataType::String,
        ];
        let mut out = Vec::new();
        for t in types {
            for pointer in [None, Some("/spindle/rpm"), Some("/v/0"), Some("")] {
                for (scale, offset) in [(1.0, 0.0), (0.1, -40.0), (1e300, 0.0)] {
                    let text = format!(
                        "name = \"s\"\ntype = \"{t}\"\ntopic = \"line/p7\"\nscale = {scale:e}\noffset = {offset:e}\n{}",
                        pointer.map(|p| format!("pointer = \"{p}\"\n")).unwrap_or_default()
                    ) + if t == DataType::String {
                        // Validation asks every string signal for one, mqtt too.
                        "length = 4\n"
                    } else {
                        ""
                    };
                    let signal: SignalConfig = toml_signal(&text);
                    out.push(signal);
                }
            }
        }
        out
    })
}

/// A signal as a machine's config would give it.
fn toml_signal(text: &str) -> SignalConfig {
    let config = linegate::config::Config::from_toml(
        &format!(
            "[gateway]\nid = \"gw1\"\nsite = \"plant\"\n[[bus]]\nid = \"b\"\ntransport = \"mqtt\"\naddress = \"mqtt://127.0.0.1:1883\"\n[[machine]]\nid = \"m\"\nbus = \"b\"\n[[machine.signal]]\n{text}"
        ),
        std::path::Path::new("mqtt.toml"),
    )
    .unwrap_or_else(|e| panic!("the fuzz signal is valid: {e}\n{text}"));
    config.machine[0].signal[0].clone()
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, payload)) = data.split_first() else {
        return;
    };
    let signals = signals();
    let signal = &signals[usize::from(pick) % signals.len()];
    let Ok(value) = decode_payload(signal, "line/p7", payload) else {
        return;
    };
    let scaled = signal.scale != 1.0 || signal.offset != 0.0;
    match (&value, signal.data_type) {
        (Value::Float(x), _) => assert!(x.is_finite(), "{x} from {payload:?}"),
        (Value::Bool(_), DataType::Bool) | (Value::Text(_), DataType::String) => {}
        (Value::Int(i), t) if !scaled => {
            let (lo, hi): (i128, i128) = match t {
                DataType::U16 => (0, 65535),
                DataType::I16 => (-32768, 32767),
                DataType::U32 => (0, 4294967295),
                DataType::I32 => (-2147483648, 2147483647),
                DataType::U64 => (0, i128::from(u64::MAX)),
                DataType::I64 => (i128::from(i64::MIN), i128::from(i64::MAX)),
                other => panic!("{other} signal gave integer {i}"),
            };
            assert!(
                (lo..=hi).contains(&i128::from(*i)),
                "{t}: {i} outside the type"
            );
        }
        (Value::UInt(_), DataType::U64) => {}
        (v, t) => panic!("{t} signal (scaled: {scaled}) gave {v:?} from {payload:?}"),
    }
});
