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
    let naive = t.naive_utc();
    let (date, time) = (naive.date(), naive.time());
    let mut b = [0u8; MOST];
    let year = year.unsigned_abs();
    b[0] = b'0' + (year / 1000) as u8;
    b[1] = b'0' + (year / 100 % 10) as u8;
    two(&mut b, 2, year % 100);
    b[4] = b'-';
    two(&mut b, 5, date.month());
    b[7] = b'-';
    two(&mut b, 8, date.day());
    b[10] = b'T';
    two(&mut b, 11, time.hour());
    b[13] = b':';
    two(&mut b, 14, time.minute());
    b[16] = b':';
    two(&mut b, 17, time.second());
    let mut n = 19;
    if digits > 0 {
        b[n] = b'.';
        n += 1;
        // Constant divisors: the compiler turns them into multiplications.
        let fraction = match digits {
            3 => nanos / 1_000_000,
            6 => nanos / 1_000,
            _ => nanos,
        };
        let mut rest = fraction;
        for i in (0..digits as usize).rev() {
            b[n + i] = b'0' + (rest % 10) as u8;
            rest /= 10;
        }
        n += digits as usize;
    }
    b[n] = b'Z';
    n += 1;
    // Only ASCII digits and separators were written.
    String::from_utf8_lossy(&b[..n]).into_owned()
}

/// The longest text: `9999-12-31T23:59:59.999999999Z`.
const MOST: usize = 30;

/// `value` (0..=99) as two digits at `at`.
fn two(b: &mut [u8; MOST], at: usize, value: u32) {
    b[at] = b'0' + (value / 10 % 10) as u8;
    b[at + 1] = b'0' + (value % 10) as u8;
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
