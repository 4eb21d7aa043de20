//! Decimal text → `Decimal128`, exactly and fast.
//!
//! Arrow's cast kernel parses each value by formatting a padded copy of it and parsing
//! that as a 256-bit integer. Plain decimal text (`93`, `-12.5`, `40.09620692463166`),
//! which is what producers send and stores keep, is read here digit by digit instead;
//! every other form (an exponent, a leading `+` or `.`, more fraction digits than the
//! scale, too many digits) goes through the kernel, so the results are the kernel's
//! wherever it is defined (tested against it).

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

/// Casts text to `Decimal128(precision, scale)` as Arrow's `cast_with_options` would
/// with `options` (a value that does not convert is null when `options.safe`, an error
/// otherwise), reading plain text with [`parse_plain`].
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
    Ok(crate::cast::cast_text(text, &to, options, |v| parse_plain(v, precision, scale))?.0)
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
        let texts = ["1.5e2", "+7", ".5", "1.", " 3", "12,5", "x", "0.1234567890123456789", "-0", "007.50"];
        assert_eq!(ours(&texts, 38, 18), by_kernel(&texts, 38, 18));
        assert_eq!(parse_plain("40.09620692463166", 38, 18), Some(40_096_206_924_631_660_000));
        assert_eq!(parse_plain("1.5e2", 38, 18), None);
    }

    #[test]
    fn strict_casts_still_fail_on_bad_text() {
        let strict = CastOptions { safe: false, ..Default::default() };
        assert!(cast_text(&StringArray::from(vec!["1", "x"]), 38, 18, &strict).is_err());
    }
}
