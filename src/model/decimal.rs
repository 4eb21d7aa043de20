//! Decimal text → `Decimal128`, exactly and fast.
//!
//! Arrow's cast kernel parses each value by formatting a padded copy of it and parsing
//! that as a 256-bit integer. Plain decimal text (`93`, `-12.5`, `40.09620692463166`),
//! which is what producers send and stores keep, is read here digit by digit instead;
//! every other form (an exponent, a leading `+` or `.`, more fraction digits than the
//! scale, too many digits) goes through the kernel, so the results are the kernel's
//! wherever it is defined (tested against it).
//!
//! The kernel does not read exponents, which JSON numbers may carry (`1E+19`, or
//! `1.234e-05` from a float): [`parse_exponent`] reads those exactly, rounding digits
//! past the scale half away from zero as the kernel rounds plain text.

use arrow::array::{Decimal128Array, StringArray};
use arrow::compute::CastOptions;
use arrow::datatypes::DataType;
use arrow::error::ArrowError;

/// Powers of ten that fit an `i128`: `POW10[n] == 10^n`.
const POW10: [i128; 39] = {
    let mut table = [1i128; 39];
    let mut n = 1;
    while n < 39 {
        table[n] = table[n - 1] * 10;
        n += 1;
    }
    table
};

/// Plain decimal text (`-?digits(.digits)?`) as the integer of a `Decimal128(precision,
/// scale)`; `None` for any other form or a value beyond the precision.
pub fn parse_plain(text: &str, precision: u8, scale: i8) -> Option<i128> {
    let scale = usize::try_from(scale).ok()?;
    let (negative, b) = match text.as_bytes() {
        [b'-', rest @ ..] => (true, rest),
        all => (false, all),
    };
    if b.len() > 39 {
        return None; // over 38 digits and a dot
    }
    // One pass: digits into a u64 (19 always fit, and its arithmetic is cheaper than an
    // i128's), the rest into an i128.
    let mut short = 0u64;
    let mut long = 0i128;
    let mut dot = None;
    for (i, &c) in b.iter().enumerate() {
        let d = c.wrapping_sub(b'0');
        if d < 10 {
            if i < 19 {
                short = short * 10 + u64::from(d);
            } else {
                long = long * 10 + i128::from(d);
            }
        } else if c == b'.' && dot.is_none() {
            dot = Some(i);
        } else {
            return None;
        }
    }
    let (int, frac) = match dot {
        Some(dot) => (dot, b.len() - dot - 1),
        None => (b.len(), 0),
    };
    if int == 0 || dot.is_some() && frac == 0 || frac > scale || int + scale > 38 || usize::from(precision) > 38 {
        return None;
    }
    // The value's digits: the first 19 bytes' (less a dot among them), then the rest's.
    let value = if b.len() <= 19 {
        i128::from(short)
    } else {
        let rest_digits = b.len() - 19 - usize::from(dot.is_some_and(|d| d >= 19));
        i128::from(short) * POW10[rest_digits] + long
    };
    let value = value * POW10[scale - frac];
    if value >= POW10[usize::from(precision)] {
        return None;
    }
    Some(if negative { -value } else { value })
}

/// Text with an exponent (`[+-]digits[.digits](e|E)[+-]digits`) as the integer of a
/// `Decimal128(precision, scale)`: exact, with digits past `scale` rounded half away from
/// zero; `None` for any other form or a value beyond the precision.
pub fn parse_exponent(text: &str, precision: u8, scale: i8) -> Option<i128> {
    let (mantissa, exponent) = text.split_once(['e', 'E'])?;
    let (negative, mantissa) = match mantissa.as_bytes().first()? {
        b'-' => (true, &mantissa[1..]),
        b'+' => (false, &mantissa[1..]),
        _ => (false, mantissa),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let all_digits = |t: &str| t.bytes().all(|b| b.is_ascii_digit());
    if int.len() + frac.len() == 0 || !all_digits(int) || !all_digits(frac) {
        return None;
    }
    let exp_digits = exponent.strip_prefix(['+', '-']).unwrap_or(exponent);
    if exp_digits.is_empty() || !all_digits(exp_digits) {
        return None;
    }
    // Saturates: beyond ±10^9 every nonzero value overflows or rounds to zero anyway.
    let magnitude = match exp_digits.trim_start_matches('0') {
        "" => 0,
        digits => digits.parse::<i64>().unwrap_or(i64::MAX).min(1_000_000_000),
    };
    let exponent = if exponent.starts_with('-') { -magnitude } else { magnitude };
    // The value is digits × 10^shift at the target scale.
    let digits: Vec<u8> = int.bytes().chain(frac.bytes()).map(|b| b - b'0').skip_while(|&d| d == 0).collect();
    let shift = exponent - frac.len() as i64 + i64::from(scale);
    let (kept, round_up) = if shift >= 0 {
        if digits.is_empty() {
            return Some(0);
        }
        if digits.len() as i64 + shift > i64::from(precision) {
            return None;
        }
        (&digits[..], false)
    } else {
        // -shift digits are dropped; the first of them decides the rounding.
        match usize::try_from(-shift) {
            Ok(cut) if cut <= digits.len() => (&digits[..digits.len() - cut], digits[digits.len() - cut] >= 5),
            _ => return Some(0),
        }
    };
    if kept.len() > usize::from(precision) {
        return None;
    }
    let mut value = kept.iter().fold(0i128, |v, &d| v * 10 + i128::from(d));
    if shift > 0 {
        value *= POW10[shift as usize];
    }
    value += i128::from(round_up);
    if value >= POW10[usize::from(precision)] {
        return None;
    }
    Some(if negative { -value } else { value })
}

/// Casts text to `Decimal128(precision, scale)` as Arrow's `cast_with_options` would
/// with `options` (a value that does not convert is null when `options.safe`, an error
/// otherwise), reading plain text with [`parse_plain`] and exponents, which the kernel
/// does not read, with [`parse_exponent`].
///
/// # Errors
/// When `options.safe` is false and a value does not convert.
pub fn cast_text(
    text: &StringArray,
    precision: u8,
    scale: i8,
    options: &CastOptions<'_>,
) -> Result<Decimal128Array, ArrowError> {
    let to = DataType::Decimal128(precision, scale);
    let fast = |v: &str| parse_plain(v, precision, scale).or_else(|| parse_exponent(v, precision, scale));
    Ok(crate::model::cast::cast_text(text, &to, options, fast)?.0)
}

/// Canonical text of a Decimal128 at [`DECIMAL_SCALE`](crate::model::event::DECIMAL_SCALE): no trailing zeros, no exponent.
/// Up to 24 bytes (any fare, distance or code) are held inline, with no allocation.
pub fn decimal_text(value: i128) -> compact_str::CompactString {
    // Written digit by digit from the end of a buffer, the fraction in a u64 (18 places
    // fit): `perf` put the `write!`s and the 128-bit divisions of the loop that trimmed
    // the fraction's zeros at 3.7% of a 1M-trip run.
    const SCALE: u32 = crate::model::event::DECIMAL_SCALE as u32;
    const _: () = assert!(SCALE <= 19, "the fraction must fit a u64");
    let magnitude = value.unsigned_abs();
    let scale = 10u128.pow(SCALE);
    let (int, frac) = (magnitude / scale, (magnitude % scale) as u64);
    // A sign, 21 integer digits (u128::MAX / 10^18 has 21), a point, SCALE digits.
    let mut buf = [0u8; 2 + 21 + SCALE as usize];
    let mut at = buf.len();
    let mut push = |digit: u8| {
        at -= 1;
        buf[at] = digit;
    };
    if frac != 0 {
        let (mut frac, mut width) = (frac, SCALE);
        while frac % 10 == 0 {
            frac /= 10;
            width -= 1;
        }
        for _ in 0..width {
            push(b'0' + (frac % 10) as u8);
            frac /= 10;
        }
        push(b'.');
    }
    match u64::try_from(int) {
        Ok(mut int) => loop {
            push(b'0' + (int % 10) as u8);
            int /= 10;
            if int == 0 {
                break;
            }
        },
        Err(_) => {
            let mut int = int;
            while int != 0 {
                push(b'0' + (int % 10) as u8);
                int /= 10;
            }
        }
    }
    if value < 0 {
        push(b'-');
    }
    compact_str::CompactString::from(std::str::from_utf8(&buf[at..]).expect("ASCII digits"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::Array;
    use arrow::compute::cast_with_options;
    use proptest::prelude::*;

    fn by_kernel(texts: &[&str], precision: u8, scale: i8) -> Decimal128Array {
        let safe = CastOptions { safe: true, ..Default::default() };
        let a = cast_with_options(&StringArray::from(texts.to_vec()), &DataType::Decimal128(precision, scale), &safe);
        a.unwrap().as_any().downcast_ref::<Decimal128Array>().unwrap().clone()
    }

    fn ours(texts: &[&str], precision: u8, scale: i8) -> Decimal128Array {
        let safe = CastOptions { safe: true, ..Default::default() };
        cast_text(&StringArray::from(texts.to_vec()), precision, scale, &safe).unwrap()
    }

    /// What `decimal_text` wrote before it wrote digits by hand.
    fn by_fmt(value: i128) -> String {
        let scale = 10i128.pow(crate::model::event::DECIMAL_SCALE as u32);
        let sign = if value < 0 { "-" } else { "" };
        let (int, frac) = ((value / scale).unsigned_abs(), (value % scale).unsigned_abs());
        let text = format!("{sign}{int}.{frac:018}");
        text.trim_end_matches('0').trim_end_matches('.').to_owned()
    }

    #[test]
    fn decimal_text_at_the_edges() {
        for v in [
            0,
            1,
            -1,
            10i128.pow(18),
            -(10i128.pow(18)),
            10i128.pow(38) - 1,
            -(10i128.pow(38) - 1),
            i128::MAX,
            i128::MIN + 1,
        ] {
            assert_eq!(decimal_text(v), by_fmt(v), "{v}");
        }
        assert_eq!(decimal_text(0), "0");
    }

    proptest! {
        #[test]
        fn decimal_text_writes_what_the_formatter_wrote(v in any::<i128>().prop_filter("i128::MIN has no magnitude in i128", |v| *v != i128::MIN)) {
            prop_assert_eq!(decimal_text(v).to_string(), by_fmt(v));
        }
    }

    proptest! {
        #[test]
        fn agrees_with_the_cast_kernel(
            sign in "-?",
            int in "[0-9]{0,40}",
            dot in "\\.?",
            frac in "[0-9]{0,20}",
            scale in prop_oneof![Just(10i8), Just(18i8)],
        ) {
            let text = format!("{sign}{int}{dot}{frac}");
            prop_assert_eq!(ours(&[&text], 38, scale), by_kernel(&[&text], 38, scale), "{}", text);
        }
    }

    #[test]
    fn other_forms_go_through_the_kernel() {
        let texts = ["+7", ".5", "1.", " 3", "12,5", "x", "0.1234567890123456789", "-0", "007.50"];
        assert_eq!(ours(&texts, 38, 18), by_kernel(&texts, 38, 18));
        assert_eq!(parse_plain("40.09620692463166", 38, 18), Some(40_096_206_924_631_660_000));
        assert_eq!(parse_plain("1.5e2", 38, 18), None);
    }

    proptest! {
        /// An exponent is read as the same value spelt out in plain text is read by the
        /// kernel: exact, rounded half away from zero past the scale, null past the
        /// precision.
        #[test]
        fn exponents_read_as_their_plain_spelling(
            negative in any::<bool>(),
            digits in "[1-9][0-9]{0,24}",
            exp in -45i32..45,
            e in prop_oneof![Just("e"), Just("E")],
            plus in any::<bool>(),
            zeros in "0{0,2}",
        ) {
            let exp_sign = if exp < 0 { "-" } else if plus { "+" } else { "" };
            let text = format!("{}{digits}{e}{exp_sign}{zeros}{}", if negative { "-" } else { "" }, exp.abs());
            let plain = crate::fuzzing::spelt_out(negative, &digits, i64::from(exp));
            prop_assert_eq!(ours(&[&text], 38, 18), by_kernel(&[&plain], 38, 18), "{} as {}", text, plain);
        }
    }

    #[test]
    fn exponent_edges() {
        let p = |t: &str| parse_exponent(t, 38, 18);
        assert_eq!(p("1E+19"), Some(10i128.pow(37)));
        assert_eq!(p("1e20"), None, "10^20 is past DECIMAL(38, 18)");
        assert_eq!(p("9.9999999999999999999999999999999999999e19"), Some(10i128.pow(38) - 1));
        assert_eq!(p("1.234e-05"), Some(12_340_000_000_000));
        assert_eq!(p("5e-19"), Some(1), "half away from zero");
        assert_eq!(p("-5e-19"), Some(-1));
        assert_eq!(p("4.9e-19"), Some(0));
        assert_eq!(p("1e-999999999999999999999"), Some(0));
        assert_eq!(p("0e999999999999"), Some(0));
        assert_eq!(p("-0e0"), Some(0));
        assert_eq!(p("1e999999999999"), None);
        for bad in ["e5", "1e", "1e+", "1.e", "--1e2", "1e2.5", "1e2e3", "0x1e2", "1 e2", "NaN"] {
            assert_eq!(p(bad), None, "{bad}");
        }
    }

    #[test]
    fn strict_casts_still_fail_on_bad_text() {
        let strict = CastOptions { safe: false, ..Default::default() };
        assert!(cast_text(&StringArray::from(vec!["1", "x"]), 38, 18, &strict).is_err());
    }
}
