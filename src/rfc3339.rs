//! The RFC 3339 UTC text of an instant, as the store keeps it and messages
//! carry it (`2026-11-26T08:00:00.125Z`): exactly the text of chrono's
//! `to_rfc3339_opts(format, true)`, written digit by digit instead of
//! through chrono's general formatter, which took several times the
//! instructions (every mark, snapshot and message writes one or more).
//! Instants chrono would write differently from the plain form (years
//! outside 0..=9999, a leap second) are handed to chrono itself. Pure; it
//! never parses (chrono does).

use chrono::{DateTime, Datelike, SecondsFormat, Timelike, Utc};

/// `t` as chrono's `t.to_rfc3339_opts(format, true)` would write it.
pub fn utc(t: DateTime<Utc>, format: SecondsFormat) -> String {
    let nanos = t.nanosecond();
    let year = t.year();
    if !(0..=9999).contains(&year) || nanos >= 1_000_000_000 {
        return t.to_rfc3339_opts(format, true);
    }
    let digits = match format {
        SecondsFormat::Secs => 0,
        SecondsFormat::Millis => 3,
        SecondsFormat::Micros => 6,
        SecondsFormat::Nanos => 9,
        SecondsFormat::AutoSi if nanos == 0 => 0,
        SecondsFormat::AutoSi if nanos % 1_000_000 == 0 => 3,
        SecondsFormat::AutoSi if nanos % 1_000 == 0 => 6,
        SecondsFormat::AutoSi => 9,
        // A format a later chrono adds: its own text.
        _ => return t.to_rfc3339_opts(format, true),
    };
    let mut text = Text::default();
    text.number(year.unsigned_abs(), 4);
    for (separator, value) in [
        (b'-', t.month()),
        (b'-', t.day()),
        (b'T', t.hour()),
        (b':', t.minute()),
        (b':', t.second()),
    ] {
        text.byte(separator);
        text.number(value, 2);
    }
    if digits > 0 {
        text.byte(b'.');
        text.number(nanos / 10u32.pow(9 - digits), digits);
    }
    text.byte(b'Z');
    text.into_string()
}

/// The longest text: `9999-12-31T23:59:59.999999999Z`.
const MOST: usize = 30;

#[derive(Default)]
struct Text {
    bytes: [u8; MOST],
    len: usize,
}

impl Text {
    fn byte(&mut self, b: u8) {
        if let Some(slot) = self.bytes.get_mut(self.len) {
            *slot = b;
            self.len += 1;
        }
    }

    /// `value`'s last `width` decimal digits, zero-padded.
    fn number(&mut self, value: u32, width: u32) {
        for place in (0..width).rev() {
            let digit = (value / 10u32.pow(place)) % 10;
            self.byte(b'0' + digit as u8);
        }
    }

    fn into_string(self) -> String {
        // Only ASCII digits and separators were written.
        self.bytes[..self.len]
            .iter()
            .map(|&b| char::from(b))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    const FORMATS: [SecondsFormat; 5] = [
        SecondsFormat::Secs,
        SecondsFormat::Millis,
        SecondsFormat::Micros,
        SecondsFormat::Nanos,
        SecondsFormat::AutoSi,
    ];

    fn same_as_chrono(t: DateTime<Utc>) {
        for f in FORMATS {
            assert_eq!(utc(t, f), t.to_rfc3339_opts(f, true), "{t:?} {f:?}");
        }
    }

    #[test]
    fn every_format_writes_chronos_text() {
        let at = |s: i64, ns: u32| Utc.timestamp_opt(s, ns).single().unwrap_or_default();
        for (s, ns) in [
            (0, 0),
            (1_796_317_707, 73_453_549),
            (1_796_317_707, 125_000_000),
            (1_796_317_707, 125_400_000),
            (1_796_317_707, 125_400_001),
            (1_796_317_707, 1),
            (1_796_317_707, 999_999_999),
            (951_782_400, 0),       // 2000-02-29
            (253_402_300_799, 0),   // 9999-12-31T23:59:59
            (-62_167_219_200, 0),   // 0000-01-01
            (-62_167_219_201, 0),   // -0001: chrono's own
            (253_402_300_800, 500), // 10000: chrono's own
        ] {
            same_as_chrono(at(s, ns));
        }
    }

    #[test]
    fn a_spread_of_instants_over_the_years_writes_chronos_text() {
        // A deterministic walk over ~80 years in uneven steps, every sub-second shape.
        let mut s: i64 = 0;
        let mut ns: u32 = 0;
        for i in 0..20_000u32 {
            s += 123_457 + i64::from(i % 97) * 3_607;
            ns = ns.wrapping_mul(1_103_515_245).wrapping_add(12_345) % 1_000_000_000;
            let ns = match i % 4 {
                0 => 0,
                1 => ns / 1_000_000 * 1_000_000,
                2 => ns / 1_000 * 1_000,
                _ => ns,
            };
            same_as_chrono(Utc.timestamp_opt(s, ns).single().unwrap_or_default());
        }
    }

    #[test]
    fn a_leap_second_is_chronos_own_text() {
        let leap = chrono::NaiveDate::from_ymd_opt(2016, 12, 31)
            .and_then(|d| d.and_hms_nano_opt(23, 59, 59, 1_500_000_000))
            .map(|n| n.and_utc())
            .unwrap_or_default();
        same_as_chrono(leap);
    }
}
