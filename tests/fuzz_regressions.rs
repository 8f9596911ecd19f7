//! Inputs the fuzz targets (fuzz/, scripts/fuzz) were built around and the
//! ones they found, fed through the same functions as the targets, as
//! ordinary tests: a finding stays fixed once the fuzzer has moved on.

use std::path::Path;

use linegate::config::Config;
use linegate::source::modbus::rtu_reply_readings;
use linegate::source::{SignalError, Value};

fn modbus_config() -> Config {
    Config::from_toml(
        include_str!("../fuzz/configs/modbus.toml"),
        Path::new("fuzz/configs/modbus.toml"),
    )
    .expect("the fuzz config is valid")
}

/// CRC-16/Modbus, written out here so the frames do not come from the code under test.
fn crc16(data: &[u8]) -> [u8; 2] {
    let mut crc: u16 = 0xFFFF;
    for &b in data {
        crc ^= u16::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xA001
            } else {
                crc >> 1
            };
        }
    }
    crc.to_le_bytes()
}

fn rtu_frame(unit: u8, function: u8, words: &[u16]) -> Vec<u8> {
    let mut f = vec![unit, function, (2 * words.len()) as u8];
    f.extend(words.iter().flat_map(|w| w.to_be_bytes()));
    let crc = crc16(&f);
    f.extend(crc);
    f
}

/// saw02's holding read (request 2 of its plan): speed u16 at 0, pressure
/// f32 ×1e30 at 1, energy f64 ×1e300 at 3.
fn saw02_holding(pressure: f32, energy: f64) -> Vec<u16> {
    let p = pressure.to_be_bytes();
    let e = energy.to_be_bytes();
    let mut words = vec![7];
    words.extend(p.chunks(2).map(|c| u16::from_be_bytes([c[0], c[1]])));
    words.extend(e.chunks(2).map(|c| u16::from_be_bytes([c[0], c[1]])));
    words
}

#[test]
fn an_rtu_reply_after_line_noise_decodes_into_the_values_sent() {
    let config = modbus_config();
    let machine = &config.machine[1];
    let bus = config.bus(&machine.bus).unwrap();
    let mut heard = vec![0x00, 0xFF, 0x02];
    heard.extend(rtu_frame(2, 0x03, &saw02_holding(2.5, 1e-3)));
    let readings = rtu_reply_readings(machine, bus, 2, &heard).expect("the reply is found");
    assert_eq!(readings.get("speed"), Some(&Ok(Value::Int(7))));
    assert_eq!(readings.get("pressure"), Some(&Ok(Value::Float(2.5e30))));
    let Some(Ok(Value::Float(energy))) = readings.get("energy") else {
        panic!("energy: {:?}", readings.get("energy"));
    };
    assert!((energy / 1e297 - 1.0).abs() < 1e-12, "{energy}");
}

#[test]
fn an_rtu_reply_whose_scaled_value_overflows_is_a_bad_value_not_infinity() {
    let config = modbus_config();
    let machine = &config.machine[1];
    let bus = config.bus(&machine.bus).unwrap();
    // 1e300 × 1e300 is past f64::MAX; f32::MAX × 1e30 is not.
    let heard = rtu_frame(2, 0x03, &saw02_holding(f32::MAX, 1e300));
    let readings = rtu_reply_readings(machine, bus, 2, &heard).expect("the reply is found");
    assert!(
        matches!(readings.get("energy"), Some(Err(SignalError::BadValue(_)))),
        "{:?}",
        readings.get("energy")
    );
    let Some(Ok(Value::Float(pressure))) = readings.get("pressure") else {
        panic!("pressure: {:?}", readings.get("pressure"));
    };
    assert!((pressure / 3.4028235e68 - 1.0).abs() < 1e-6, "{pressure}");
}

#[test]
fn an_rtu_reply_from_another_unit_is_not_taken() {
    let config = modbus_config();
    let machine = &config.machine[1];
    let bus = config.bus(&machine.bus).unwrap();
    let heard = rtu_frame(3, 0x03, &saw02_holding(2.5, 1.0));
    assert!(rtu_reply_readings(machine, bus, 2, &heard).is_none());
}

/// An MQTT signal of `data_type`, as the fuzz target makes its signals.
fn mqtt_signal(data_type: &str) -> linegate::config::SignalConfig {
    let text = format!(
        "[gateway]\nid = \"gw1\"\nsite = \"plant\"\n[[bus]]\nid = \"b\"\ntransport = \"mqtt\"\n\
         address = \"mqtt://127.0.0.1:1883\"\n[[machine]]\nid = \"m\"\nbus = \"b\"\n\
         [[machine.signal]]\nname = \"s\"\ntype = \"{data_type}\"\ntopic = \"line/p7\"\n"
    );
    let config = Config::from_toml(&text, Path::new("mqtt.toml")).expect("valid");
    config.machine[0].signal[0].clone()
}

/// Found by mqtt_payload: `0e0` for a u32 signal gave `UInt(0)` where `0`
/// gives `Int(0)` (UInt is only for u64 values above i64::MAX), so the same
/// number was two different values.
#[test]
fn an_integer_written_as_a_float_is_the_same_value_as_written_plain() {
    use linegate::source::mqtt::decode_payload;
    for t in ["u16", "i16", "u32", "i32", "u64", "i64"] {
        let signal = mqtt_signal(t);
        for (float_form, plain) in [
            (&b"0e0"[..], &b"0"[..]),
            (b"5.0", b"5"),
            (b"1e3", b"1000"),
            (b"-0.0", b"0"),
        ] {
            assert_eq!(
                decode_payload(&signal, "line/p7", float_form),
                decode_payload(&signal, "line/p7", plain),
                "{t}: {:?}",
                String::from_utf8_lossy(float_form)
            );
        }
    }
    assert_eq!(
        decode_payload(&mqtt_signal("u64"), "line/p7", b"1e19"),
        Ok(Value::UInt(10_000_000_000_000_000_000))
    );
}
