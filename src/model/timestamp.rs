//! Datetime text ↔ microseconds since the epoch, UTC, exactly and fast.
//!
//! Arrow's cast kernel tries several formats per value through chrono, and chrono's
//! `format` interprets its pattern per value. The forms producers send
//! (`2024-05-25 13:19:00`) and the stored form (`2024-05-25T13:19:00.000000Z`) are read
//! and written by position here instead; every other form goes through the kernel
//! ([`crate::model::cast`]), so results are the kernel's wherever it reads the text (tested
//! against it).

use chrono::DateTime;

const MICROS_PER_SECOND: i64 = 1_000_000;
const SECONDS_PER_DAY: i64 = 86_400;

/// The first instant every stage can represent: `0001-01-01T00:00:00.000000Z`.
///
/// docs/design.md §2 keeps datetimes to years 0001–9999 in UTC: the stored form has four year
/// digits (so comparing the text compares the instants), and the export reads it back.
pub const MIN: i64 = -62_135_596_800 * MICROS_PER_SECOND;
/// The last instant every stage can represent: `9999-12-31T23:59:59.999999Z`.
pub const MAX: i64 = 253_402_300_800 * MICROS_PER_SECOND - 1;

/// True when `micros` is an instant of years 0001–9999 in UTC ([`MIN`]..=[`MAX`]).
pub fn in_range(micros: i64) -> bool {
    (MIN..=MAX).contains(&micros)
}

/// `YYYY-MM-DD`, `T` or a space, `HH:MM:SS`, an optional fraction of 1 to 9 digits and
/// an optional `Z`, as microseconds since the epoch (a finer fraction is truncated, as
/// the kernel does); `None` for any other form or an impossible date or time.
pub fn parse_plain(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    let head: &[u8; 19] = b.get(..19)?.try_into().ok()?;
    if head[4] != b'-' || head[7] != b'-' || !matches!(head[10], b'T' | b' ') || head[13] != b':' || head[16] != b':' {
        return None;
    }
    let d = |i: usize| head[i].wrapping_sub(b'0');
    let at = [0, 1, 2, 3, 5, 6, 8, 9, 11, 12, 14, 15, 17, 18];
    if at.iter().any(|&i| d(i) > 9) {
        return None;
    }
    let two = |i: usize| i64::from(d(i)) * 10 + i64::from(d(i + 1));
    let (year, month, day) = (two(0) * 100 + two(2), two(5), two(8));
    let (hour, minute, second) = (two(11), two(14), two(17));
    let mut rest = &b[19..];
    let mut micros = 0;
    if let Some(fraction) = rest.strip_prefix(b".") {
        let n = fraction.iter().take_while(|d| d.is_ascii_digit()).count();
        if n == 0 || n > 9 {
            return None;
        }
        let digits = fraction[..n].iter().fold(0i64, |v, &d| v * 10 + i64::from(d - b'0'));
        micros = digits * 10i64.pow(9 - n as u32) / 1000;
        rest = &fraction[n..];
    }
    if !(rest.is_empty() || rest == b"Z")
        || !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 59
    {
        return None;
    }
    let seconds = days_from_civil(year, month, day) * SECONDS_PER_DAY + hour * 3600 + minute * 60 + second;
    Some(seconds * MICROS_PER_SECOND + micros)
}

/// The stored form of an instant: `YYYY-MM-DDTHH:MM:SS.ffffffZ`, always 27 bytes for
/// years 0 to 9999, so comparing two as text compares the instants.
pub fn format(micros: i64) -> String {
    match fixed_width(micros) {
        Some(bytes) => String::from_utf8(bytes.to_vec()).expect("ASCII digits"),
        None => beyond_four_digits(micros),
    }
}

/// [`format`], as the compact string a stored group holds (one allocation, not two).
pub fn format_compact(micros: i64) -> compact_str::CompactString {
    match fixed_width(micros) {
        Some(bytes) => std::str::from_utf8(&bytes).expect("ASCII digits").into(),
        None => beyond_four_digits(micros).into(),
    }
}

/// Beyond four digits the form is chrono's, sign and all.
fn beyond_four_digits(micros: i64) -> String {
    DateTime::from_timestamp_micros(micros).map(|t| t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()).unwrap_or_default()
}

/// The 27 bytes of [`format`] for years 0 to 9999; `None` beyond.
fn fixed_width(micros: i64) -> Option<[u8; 27]> {
    let seconds = micros.div_euclid(MICROS_PER_SECOND);
    let fraction = micros.rem_euclid(MICROS_PER_SECOND);
    let (year, month, day) = civil_from_days(seconds.div_euclid(SECONDS_PER_DAY));
    if !(0..=9999).contains(&year) {
        return None;
    }
    let second_of_day = seconds.rem_euclid(SECONDS_PER_DAY);
    let mut out = *b"0000-00-00T00:00:00.000000Z";
    // Every part is at least 0: the year by the check above, the rest by `rem_euclid`.
    let mut put = |at: usize, width: usize, value: i64| super::zero_padded(&mut out[at..at + width], value as u64);
    put(0, 4, year);
    put(5, 2, month);
    put(8, 2, day);
    put(11, 2, second_of_day / 3600);
    put(14, 2, second_of_day / 60 % 60);
    put(17, 2, second_of_day % 60);
    put(20, 6, fraction);
    Some(out)
}

fn is_leap(year: i64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let year_of_era = y - era * 400;
    let day_of_year = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// The date of a day since 1970-01-01 (H. Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z - era * 146_097;
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    (year_of_era + era * 400 + i64::from(month <= 2), month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::event::timestamp_type;
    use arrow::array::{Array, StringArray, TimestampMicrosecondArray};
    use arrow::compute::CastOptions;
    use arrow::compute::cast_with_options;
    use arrow::datatypes::TimestampMicrosecondType;
    use proptest::prelude::*;

    /// The cast validation makes: plain text by hand, the rest by the kernel.
    fn cast_text(text: &StringArray, options: &CastOptions<'_>) -> TimestampMicrosecondArray {
        crate::model::cast::cast_text::<TimestampMicrosecondType>(text, &timestamp_type(), options, parse_plain)
            .unwrap()
            .0
    }

    fn by_kernel(text: &str) -> Option<i64> {
        let safe = CastOptions { safe: true, ..Default::default() };
        let a = cast_with_options(&StringArray::from(vec![text]), &timestamp_type(), &safe).unwrap();
        let a = a.as_any().downcast_ref::<TimestampMicrosecondArray>().unwrap();
        a.is_valid(0).then(|| a.value(0))
    }

    fn by_chrono(micros: i64) -> String {
        DateTime::from_timestamp_micros(micros).unwrap().format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
    }

    proptest! {
        #[test]
        fn plain_text_reads_as_the_kernel_reads_it(
            year in 0u32..10_000,
            month in 0u32..14,
            day in 0u32..33,
            hour in 0u32..25,
            minute in 0u32..61,
            second in 0u32..61,
            sep in prop_oneof![Just('T'), Just(' ')],
            fraction in "(\\.[0-9]{1,10})?",
            zone in prop_oneof![Just(""), Just("Z")],
        ) {
            let text = format!("{year:04}-{month:02}-{day:02}{sep}{hour:02}:{minute:02}:{second:02}{fraction}{zone}");
            let ours = parse_plain(&text);
            if ours.is_some() {
                prop_assert_eq!(ours, by_kernel(&text), "{}", text);
            }
            let safe = CastOptions { safe: true, ..Default::default() };
            let cast = cast_text(&StringArray::from(vec![text.as_str()]), &safe);
            prop_assert_eq!(cast.is_valid(0).then(|| cast.value(0)), by_kernel(&text), "{}", text);
        }

        #[test]
        fn formats_as_chrono_and_reads_back(micros in -62_167_219_200_000_000i64..253_402_300_800_000_000) {
            let text = format(micros);
            prop_assert_eq!(&text, &by_chrono(micros));
            prop_assert_eq!(format_compact(micros).to_string(), text.clone());
            prop_assert_eq!(parse_plain(&text), Some(micros));
        }
    }

    #[test]
    fn plain_forms_are_read_and_others_are_left_to_the_kernel() {
        assert_eq!(parse_plain("1970-01-01 00:00:00"), Some(0));
        assert_eq!(parse_plain("2024-05-25T13:19:00.000001Z"), Some(1_716_643_140_000_001));
        assert_eq!(parse_plain("2024-02-29 00:00:00"), by_kernel("2024-02-29 00:00:00"));
        for other in ["2023-02-29 00:00:00", "2024-05-25 13:19", "2024-05-25T13:19:00+02:00", "2024-05-25", "x"] {
            assert_eq!(parse_plain(other), None, "{other}");
        }
        assert_eq!(by_kernel("2024-05-25T13:19:00+02:00"), Some(1_716_635_940_000_000));
        let safe = CastOptions { safe: true, ..Default::default() };
        let mixed =
            cast_text(&StringArray::from(vec!["2024-05-25T13:19:00+02:00", "junk", "1970-01-01 00:00:01"]), &safe);
        assert_eq!((mixed.value(0), mixed.is_null(1), mixed.value(2)), (1_716_635_940_000_000, true, 1_000_000));
        assert_eq!(mixed.data_type(), &timestamp_type());
        assert_eq!(format(-1), "1969-12-31T23:59:59.999999Z");
        assert_eq!(format(-62_167_219_200_000_001), by_chrono(-62_167_219_200_000_001));
    }

    #[test]
    fn the_representable_range_is_years_0001_to_9999() {
        assert_eq!(format(MIN), "0001-01-01T00:00:00.000000Z");
        assert_eq!(format(MAX), "9999-12-31T23:59:59.999999Z");
        assert_eq!(parse_plain("0001-01-01 00:00:00"), Some(MIN));
        assert_eq!(parse_plain("9999-12-31T23:59:59.999999Z"), Some(MAX));
        assert!(in_range(MIN) && in_range(MAX) && in_range(0));
        assert!(!in_range(MIN - 1) && !in_range(MAX + 1));
        assert!(!in_range(parse_plain("0000-12-31 23:59:59").unwrap()));
    }
}
