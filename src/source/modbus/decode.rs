//! Decoding: raw Modbus registers and bits into signal values, and back.
//!
//! Owns how the words of a register block become a [`Value`]: word order (the
//! order of the 16-bit words of a 32/64-bit value), byte order (the order of
//! the two bytes inside each word), `value = raw * scale + offset`, bits of
//! registers and strings. It also owns the inverse for order writes
//! ([`encode_registers`]) and the names of Modbus exception codes. Pure: no
//! I/O, no connection, no logging.
//!
//! Rules a technician can rely on:
//! - With `scale = 1` and `offset = 0` integer types stay integers; otherwise
//!   the value is a float.
//! - An `f32` is reported as the shortest decimal that reads back as the same
//!   `f32` (`123.456`, not `123.45600128173828`).
//! - NaN or infinity (from an f32/f64, or from scaling) is a bad value, never a number.
//! - A string is `length` registers of two ASCII characters each, high byte
//!   first unless `byte_order = "little"`; trailing NULs and spaces are trimmed.

use crate::config::{DataType, Endian, SignalConfig};
use crate::source::{Reading, SignalError, Value};

/// Why a value cannot be written to registers of a given type.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EncodeError {
    #[error("{value} is not a finite number")]
    NotFinite { value: f64 },
    #[error("{value} is not a whole number, and {data_type} holds whole numbers only")]
    NotWhole { data_type: DataType, value: f64 },
    #[error("{value} is outside the range of {data_type} ({min}..={max})")]
    OutOfRange {
        data_type: DataType,
        value: f64,
        min: f64,
        max: f64,
    },
    #[error("type {0} cannot be written as a number")]
    Unsupported(DataType),
}

/// The name of a Modbus exception code, as the specification spells it.
pub fn exception_name(code: u8) -> &'static str {
    match code {
        0x01 => "IllegalFunction",
        0x02 => "IllegalDataAddress",
        0x03 => "IllegalDataValue",
        0x04 => "ServerDeviceFailure",
        0x05 => "Acknowledge",
        0x06 => "ServerDeviceBusy",
        0x07 => "NegativeAcknowledge",
        0x08 => "MemoryParityError",
        0x0A => "GatewayPathUnavailable",
        0x0B => "GatewayTargetDeviceFailedToRespond",
        _ => "UnknownException",
    }
}

/// The bytes of `words`, most significant first, after undoing the device's
/// word and byte order.
fn big_endian_bytes(words: &[u16], word_order: Endian, byte_order: Endian) -> Vec<u8> {
    let mut ordered: Vec<u16> = words.to_vec();
    if word_order == Endian::Little {
        ordered.reverse();
    }
    ordered
        .into_iter()
        .flat_map(|w| match byte_order {
            Endian::Big => w.to_be_bytes(),
            Endian::Little => w.to_le_bytes(),
        })
        .collect()
}

/// [`big_endian_bytes`] for the at most four registers of a number, without
/// allocating (this runs for every numeric signal of every poll).
fn number_bytes(words: &[u16], word_order: Endian, byte_order: Endian) -> [u8; 8] {
    let mut out = [0u8; 8];
    let words = &words[..words.len().min(4)];
    let n = words.len();
    for (i, &w) in words.iter().enumerate() {
        let slot = match word_order {
            Endian::Big => i,
            Endian::Little => n - 1 - i,
        };
        let pair = match byte_order {
            Endian::Big => w.to_be_bytes(),
            Endian::Little => w.to_le_bytes(),
        };
        out[2 * slot..2 * slot + 2].copy_from_slice(&pair);
    }
    out
}

/// The registers of a value given as big-endian bytes, in the device's orders.
fn words_from_big_endian(bytes: &[u8], word_order: Endian, byte_order: Endian) -> Vec<u16> {
    let mut words: Vec<u16> = bytes
        .chunks(2)
        .map(|c| {
            let pair = [c[0], c.get(1).copied().unwrap_or(0)];
            match byte_order {
                Endian::Big => u16::from_be_bytes(pair),
                Endian::Little => u16::from_le_bytes(pair),
            }
        })
        .collect();
    if word_order == Endian::Little {
        words.reverse();
    }
    words
}

fn array<const N: usize>(bytes: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&bytes[..N]);
    out
}

/// What decoding one signal takes from its config, in 32 bytes. A bus
/// keeps one per signal of a machine, side by side in the order they are
/// read, so a poll reads them from a few cache lines instead of touching
/// every signal's whole config (a machine's objects are touched once a
/// second and are cold by then: BENCHMARKS.md, "Polling").
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Decoding {
    pub data_type: DataType,
    pub word_order: Endian,
    pub byte_order: Endian,
    pub bit: Option<u8>,
    pub length: Option<u16>,
    pub scale: f64,
    pub offset: f64,
}

impl From<&SignalConfig> for Decoding {
    fn from(signal: &SignalConfig) -> Self {
        Decoding {
            data_type: signal.data_type,
            word_order: signal.word_order,
            byte_order: signal.byte_order,
            bit: signal.bit,
            length: signal.length,
            scale: signal.scale,
            offset: signal.offset,
        }
    }
}

const _: () = assert!(std::mem::size_of::<Decoding>() <= 32);

/// A raw integer after scale and offset.
fn scaled_int(raw: i128, signal: &Decoding) -> Reading {
    if signal.scale == 1.0 && signal.offset == 0.0 {
        return Ok(match i64::try_from(raw) {
            Ok(i) => Value::Int(i),
            // Only u64 values above i64::MAX land here.
            Err(_) => Value::UInt(u64::try_from(raw).unwrap_or(u64::MAX)),
        });
    }
    finite(raw as f64 * signal.scale + signal.offset)
}

fn finite(value: f64) -> Reading {
    if value.is_finite() {
        Ok(Value::Float(value))
    } else {
        Err(SignalError::BadValue(format!(
            "{value} is not a finite number"
        )))
    }
}

/// Decode one signal from exactly its registers (`words` may be longer; the
/// first ones are used). Never panics on short input: it is a bad value.
pub fn decode_registers(signal: &SignalConfig, words: &[u16]) -> Reading {
    decode_words(&Decoding::from(signal), words)
}

/// [`decode_registers`] by a signal's [`Decoding`].
pub fn decode_words(signal: &Decoding, words: &[u16]) -> Reading {
    let t = signal.data_type;
    let needed = usize::from(t.registers(signal.length).max(1));
    let Some(words) = words.get(..needed) else {
        return Err(SignalError::BadValue(format!(
            "{t} needs {needed} register(s), got {}",
            words.len()
        )));
    };
    let (wo, bo) = (signal.word_order, signal.byte_order);
    let bytes = number_bytes(words, wo, bo);
    match t {
        DataType::Bool => {
            let word = words[0];
            Ok(Value::Bool(match signal.bit {
                Some(bit) if bit < 16 => (word >> bit) & 1 == 1,
                Some(bit) => {
                    return Err(SignalError::BadValue(format!(
                        "bit {bit} is not a bit of a 16-bit register"
                    )))
                }
                None => word != 0,
            }))
        }
        DataType::U16 => scaled_int(u16::from_be_bytes(array(&bytes)).into(), signal),
        DataType::I16 => scaled_int(i16::from_be_bytes(array(&bytes)).into(), signal),
        DataType::U32 => scaled_int(u32::from_be_bytes(array(&bytes)).into(), signal),
        DataType::I32 => scaled_int(i32::from_be_bytes(array(&bytes)).into(), signal),
        DataType::U64 => scaled_int(u64::from_be_bytes(array(&bytes)).into(), signal),
        DataType::I64 => scaled_int(i64::from_be_bytes(array(&bytes)).into(), signal),
        DataType::F32 => {
            let raw = f32::from_be_bytes(array(&bytes));
            if !raw.is_finite() {
                return Err(SignalError::BadValue(format!("f32 {raw}")));
            }
            // The shortest decimal of the f32, so 123.456 stays 123.456.
            let x: f64 = raw.to_string().parse().unwrap_or(f64::from(raw));
            finite(x * signal.scale + signal.offset)
        }
        DataType::F64 => {
            let raw = f64::from_be_bytes(array(&bytes));
            if !raw.is_finite() {
                return Err(SignalError::BadValue(format!("f64 {raw}")));
            }
            finite(raw * signal.scale + signal.offset)
        }
        DataType::String => {
            // Strings ignore word order: characters run from the first register on.
            let bytes = big_endian_bytes(words, Endian::Big, bo);
            let end = bytes
                .iter()
                .rposition(|&b| b != 0 && b != b' ')
                .map_or(0, |i| i + 1);
            match std::str::from_utf8(&bytes[..end]) {
                Ok(s) => Ok(Value::Text(s.to_owned())),
                Err(e) => Err(SignalError::BadValue(format!(
                    "registers are not text: {e} (bytes {:02x?})",
                    &bytes[..end]
                ))),
            }
        }
    }
}

/// Decode a coil or discrete input. `bits` holds the signal's bit first.
/// (It is a bool whatever the signal's config says.)
pub fn decode_bit(bits: &[bool]) -> Reading {
    match bits.first() {
        Some(&b) => Ok(Value::Bool(b)),
        None => Err(SignalError::BadValue("no bit in the reply".into())),
    }
}

/// Registers that hold `value` as `data_type` in the device's word and byte
/// order: the inverse of [`decode_registers`] without scale and offset.
/// Integers must be whole and in range; `bool` is 0 or 1 in one register.
/// The value is an f64, so 64-bit integers are exact only up to 2^53.
pub fn encode_registers(
    data_type: DataType,
    word_order: Endian,
    byte_order: Endian,
    value: f64,
) -> Result<Vec<u16>, EncodeError> {
    if !value.is_finite() {
        return Err(EncodeError::NotFinite { value });
    }
    let whole = |min: f64, max: f64| -> Result<(), EncodeError> {
        if value.fract() != 0.0 {
            return Err(EncodeError::NotWhole { data_type, value });
        }
        // `max` is exclusive for 64-bit types where the float cannot hold it exactly.
        if value < min || value > max {
            return Err(EncodeError::OutOfRange {
                data_type,
                value,
                min,
                max,
            });
        }
        Ok(())
    };
    const TWO_63: f64 = 9_223_372_036_854_775_808.0;
    const TWO_64: f64 = 18_446_744_073_709_551_616.0;
    let bytes: Vec<u8> = match data_type {
        DataType::Bool => {
            whole(0.0, 1.0)?;
            (value as u16).to_be_bytes().to_vec()
        }
        DataType::U16 => {
            whole(0.0, f64::from(u16::MAX))?;
            (value as u16).to_be_bytes().to_vec()
        }
        DataType::I16 => {
            whole(f64::from(i16::MIN), f64::from(i16::MAX))?;
            (value as i16).to_be_bytes().to_vec()
        }
        DataType::U32 => {
            whole(0.0, f64::from(u32::MAX))?;
            (value as u32).to_be_bytes().to_vec()
        }
        DataType::I32 => {
            whole(f64::from(i32::MIN), f64::from(i32::MAX))?;
            (value as i32).to_be_bytes().to_vec()
        }
        DataType::U64 => {
            whole(0.0, TWO_64)?;
            if value >= TWO_64 {
                return Err(EncodeError::OutOfRange {
                    data_type,
                    value,
                    min: 0.0,
                    max: u64::MAX as f64,
                });
            }
            (value as u64).to_be_bytes().to_vec()
        }
        DataType::I64 => {
            whole(-TWO_63, TWO_63)?;
            if value >= TWO_63 {
                return Err(EncodeError::OutOfRange {
                    data_type,
                    value,
                    min: -TWO_63,
                    max: i64::MAX as f64,
                });
            }
            (value as i64).to_be_bytes().to_vec()
        }
        DataType::F32 => {
            if value.abs() > f64::from(f32::MAX) {
                return Err(EncodeError::OutOfRange {
                    data_type,
                    value,
                    min: f64::from(f32::MIN),
                    max: f64::from(f32::MAX),
                });
            }
            (value as f32).to_be_bytes().to_vec()
        }
        DataType::F64 => value.to_be_bytes().to_vec(),
        DataType::String => return Err(EncodeError::Unsupported(data_type)),
    };
    Ok(words_from_big_endian(&bytes, word_order, byte_order))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Area;

    const BIG: Endian = Endian::Big;
    const LITTLE: Endian = Endian::Little;

    #[test]
    fn number_bytes_match_big_endian_bytes_for_every_order_and_width() {
        let words = [0x0102, 0x0304, 0x0506, 0x0708];
        for n in 1..=4 {
            for wo in [BIG, LITTLE] {
                for bo in [BIG, LITTLE] {
                    let want = big_endian_bytes(&words[..n], wo, bo);
                    let got = number_bytes(&words[..n], wo, bo);
                    assert_eq!(&got[..2 * n], &want[..], "{n} words, {wo:?}/{bo:?}");
                    assert!(got[2 * n..].iter().all(|&b| b == 0));
                }
            }
        }
    }

    fn sig(data_type: DataType, word_order: Endian, byte_order: Endian) -> SignalConfig {
        SignalConfig {
            name: "s".into(),
            area: Some(Area::Holding),
            address: Some(0),
            data_type,
            word_order,
            byte_order,
            scale: 1.0,
            offset: 0.0,
            bit: None,
            length: None,
            topic: None,
            pointer: None,
            deadband: 0.0,
        }
    }

    fn decode(t: DataType, wo: Endian, bo: Endian, words: &[u16]) -> Reading {
        decode_registers(&sig(t, wo, bo), words)
    }

    /// (word order, byte order, registers) of f32 123.456 = 0x42F6_E979.
    const F32_123_456: [(Endian, Endian, [u16; 2]); 4] = [
        (BIG, BIG, [0x42F6, 0xE979]),
        (LITTLE, BIG, [0xE979, 0x42F6]),
        (BIG, LITTLE, [0xF642, 0x79E9]),
        (LITTLE, LITTLE, [0x79E9, 0xF642]),
    ];

    #[test]
    fn f32_decodes_in_all_four_orders() {
        for (wo, bo, words) in F32_123_456 {
            assert_eq!(
                decode(DataType::F32, wo, bo, &words),
                Ok(Value::Float(123.456)),
                "{wo:?}/{bo:?}"
            );
        }
    }

    #[test]
    fn f32_encodes_in_all_four_orders() {
        for (wo, bo, words) in F32_123_456 {
            assert_eq!(
                encode_registers(DataType::F32, wo, bo, 123.456),
                Ok(words.to_vec())
            );
        }
    }

    #[test]
    fn u32_decodes_in_all_four_orders() {
        // 0x1234_5678 = 305419896
        for (wo, bo, words) in [
            (BIG, BIG, [0x1234, 0x5678]),
            (LITTLE, BIG, [0x5678, 0x1234]),
            (BIG, LITTLE, [0x3412, 0x7856]),
            (LITTLE, LITTLE, [0x7856, 0x3412]),
        ] {
            assert_eq!(
                decode(DataType::U32, wo, bo, &words),
                Ok(Value::Int(305_419_896))
            );
        }
    }

    #[test]
    fn i32_is_signed() {
        assert_eq!(
            decode(DataType::I32, BIG, BIG, &[0xFFFF, 0xFFFE]),
            Ok(Value::Int(-2))
        );
        assert_eq!(
            decode(DataType::I32, LITTLE, BIG, &[0xFFFE, 0xFFFF]),
            Ok(Value::Int(-2))
        );
    }

    #[test]
    fn sixteen_bit_types_follow_the_byte_order() {
        assert_eq!(
            decode(DataType::U16, BIG, BIG, &[0x1234]),
            Ok(Value::Int(0x1234))
        );
        assert_eq!(
            decode(DataType::U16, BIG, LITTLE, &[0x3412]),
            Ok(Value::Int(0x1234))
        );
        assert_eq!(
            decode(DataType::I16, BIG, BIG, &[0xFF85]),
            Ok(Value::Int(-123))
        );
        assert_eq!(
            decode(DataType::I16, BIG, LITTLE, &[0x85FF]),
            Ok(Value::Int(-123))
        );
    }

    #[test]
    fn sixty_four_bit_types_decode_in_all_four_orders() {
        // 0x0102_0304_0506_0708
        let raw: u64 = 0x0102_0304_0506_0708;
        for (wo, bo, words) in [
            (BIG, BIG, [0x0102, 0x0304, 0x0506, 0x0708]),
            (LITTLE, BIG, [0x0708, 0x0506, 0x0304, 0x0102]),
            (BIG, LITTLE, [0x0201, 0x0403, 0x0605, 0x0807]),
            (LITTLE, LITTLE, [0x0807, 0x0605, 0x0403, 0x0201]),
        ] {
            assert_eq!(
                decode(DataType::U64, wo, bo, &words),
                Ok(Value::Int(raw as i64))
            );
            assert_eq!(
                decode(DataType::I64, wo, bo, &words),
                Ok(Value::Int(raw as i64))
            );
            // Writes take an f64, exact up to 2^53: round-trip a value that fits.
            let exact: u64 = 0x0001_0203_0405_0607;
            let written = encode_registers(DataType::U64, wo, bo, exact as f64).expect("encodes");
            assert_eq!(
                decode(DataType::U64, wo, bo, &written),
                Ok(Value::Int(exact as i64))
            );
        }
    }

    #[test]
    fn u64_above_i64_max_stays_unsigned_and_i64_is_signed() {
        assert_eq!(
            decode(DataType::U64, BIG, BIG, &[0xFFFF; 4]),
            Ok(Value::UInt(u64::MAX))
        );
        assert_eq!(
            decode(DataType::I64, BIG, BIG, &[0xFFFF; 4]),
            Ok(Value::Int(-1))
        );
    }

    #[test]
    fn f64_decodes_in_all_four_orders() {
        // 1234.5678 = 0x40934A456D5CFAAD
        for (wo, bo, words) in [
            (BIG, BIG, [0x4093, 0x4A45, 0x6D5C, 0xFAAD]),
            (LITTLE, BIG, [0xFAAD, 0x6D5C, 0x4A45, 0x4093]),
            (BIG, LITTLE, [0x9340, 0x454A, 0x5C6D, 0xADFA]),
            (LITTLE, LITTLE, [0xADFA, 0x5C6D, 0x454A, 0x9340]),
        ] {
            assert_eq!(
                decode(DataType::F64, wo, bo, &words),
                Ok(Value::Float(1234.5678))
            );
            assert_eq!(
                encode_registers(DataType::F64, wo, bo, 1234.5678),
                Ok(words.to_vec())
            );
        }
    }

    #[test]
    fn nan_and_infinity_are_bad_values() {
        // f32 NaN 0x7FC00000, +inf 0x7F800000; f64 -inf 0xFFF0...
        for words in [[0x7FC0u16, 0x0000], [0x7F80, 0x0000]] {
            assert!(matches!(
                decode(DataType::F32, BIG, BIG, &words),
                Err(SignalError::BadValue(_))
            ));
        }
        assert!(matches!(
            decode(DataType::F64, BIG, BIG, &[0xFFF0, 0, 0, 0]),
            Err(SignalError::BadValue(_))
        ));
    }

    #[test]
    fn scale_and_offset_make_a_float() {
        let mut s = sig(DataType::I16, BIG, BIG);
        s.scale = 0.1;
        s.offset = -40.0;
        // raw 650 -> 65.0 - 40.0 = 25.0
        assert_eq!(decode_registers(&s, &[650]), Ok(Value::Float(25.0)));
        let mut f = sig(DataType::F32, BIG, BIG);
        f.scale = 2.0;
        f.offset = 1.0;
        assert_eq!(
            decode_registers(&f, &[0x42F6, 0xE979]),
            Ok(Value::Float(247.912))
        );
    }

    #[test]
    fn a_bool_takes_one_bit_of_a_register() {
        let mut s = sig(DataType::Bool, BIG, BIG);
        for (bit, want) in [(0, false), (1, true), (3, true), (15, true), (14, false)] {
            s.bit = Some(bit);
            assert_eq!(
                decode_registers(&s, &[0b1000_0000_0000_1010]),
                Ok(Value::Bool(want)),
                "bit {bit}"
            );
        }
    }

    #[test]
    fn strings_are_two_characters_per_register_and_trimmed() {
        let mut s = sig(DataType::String, BIG, BIG);
        s.length = Some(4);
        // "P-4711" then a space and a NUL
        let words = [0x502D, 0x3437, 0x3131, 0x2000];
        assert_eq!(
            decode_registers(&s, &words),
            Ok(Value::Text("P-4711".into()))
        );
        s.byte_order = LITTLE;
        let swapped: Vec<u16> = words.iter().map(|w| w.swap_bytes()).collect();
        assert_eq!(
            decode_registers(&s, &swapped),
            Ok(Value::Text("P-4711".into()))
        );
    }

    #[test]
    fn a_string_that_is_not_utf8_is_a_bad_value() {
        let mut s = sig(DataType::String, BIG, BIG);
        s.length = Some(1);
        assert!(matches!(
            decode_registers(&s, &[0xFF41]),
            Err(SignalError::BadValue(_))
        ));
    }

    #[test]
    fn too_few_registers_is_a_bad_value_not_a_panic() {
        assert!(matches!(
            decode(DataType::F64, BIG, BIG, &[1, 2]),
            Err(SignalError::BadValue(_))
        ));
        assert!(matches!(decode_bit(&[]), Err(SignalError::BadValue(_))));
    }

    #[test]
    fn a_coil_decodes_as_a_bool() {
        assert_eq!(decode_bit(&[true, false]), Ok(Value::Bool(true)));
    }

    #[test]
    fn encoded_integers_decode_back() {
        for t in [
            DataType::U16,
            DataType::I16,
            DataType::U32,
            DataType::I32,
            DataType::I64,
        ] {
            for (wo, bo) in [(BIG, BIG), (LITTLE, BIG), (BIG, LITTLE), (LITTLE, LITTLE)] {
                let v = if matches!(t, DataType::U16 | DataType::U32) {
                    4711.0
                } else {
                    -4711.0
                };
                let words = encode_registers(t, wo, bo, v).expect("encodes");
                assert_eq!(decode(t, wo, bo, &words), Ok(Value::Int(v as i64)));
            }
        }
    }

    #[test]
    fn encoding_rejects_fractions_out_of_range_and_non_numbers() {
        assert!(matches!(
            encode_registers(DataType::U16, BIG, BIG, 1.5),
            Err(EncodeError::NotWhole { .. })
        ));
        assert!(matches!(
            encode_registers(DataType::U16, BIG, BIG, 65536.0),
            Err(EncodeError::OutOfRange { .. })
        ));
        assert!(matches!(
            encode_registers(DataType::I16, BIG, BIG, -32769.0),
            Err(EncodeError::OutOfRange { .. })
        ));
        assert!(matches!(
            encode_registers(DataType::U32, BIG, BIG, -1.0),
            Err(EncodeError::OutOfRange { .. })
        ));
        assert!(matches!(
            encode_registers(DataType::I64, BIG, BIG, 9.3e18),
            Err(EncodeError::OutOfRange { .. })
        ));
        assert!(matches!(
            encode_registers(DataType::F32, BIG, BIG, 1e39),
            Err(EncodeError::OutOfRange { .. })
        ));
        assert!(matches!(
            encode_registers(DataType::F64, BIG, BIG, f64::NAN),
            Err(EncodeError::NotFinite { .. })
        ));
        assert!(matches!(
            encode_registers(DataType::String, BIG, BIG, 1.0),
            Err(EncodeError::Unsupported(_))
        ));
        assert_eq!(encode_registers(DataType::Bool, BIG, BIG, 1.0), Ok(vec![1]));
        assert!(encode_registers(DataType::Bool, BIG, BIG, 2.0).is_err());
    }

    #[test]
    fn exception_codes_have_their_names() {
        assert_eq!(exception_name(1), "IllegalFunction");
        assert_eq!(exception_name(2), "IllegalDataAddress");
        assert_eq!(exception_name(3), "IllegalDataValue");
        assert_eq!(exception_name(4), "ServerDeviceFailure");
        assert_eq!(exception_name(0x0B), "GatewayTargetDeviceFailedToRespond");
        assert_eq!(exception_name(0x42), "UnknownException");
    }
}
