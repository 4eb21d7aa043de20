//! Decimal text → `Decimal128`, exactly and fast.
//!
//! Arrow's cast kernel parses each value by formatting a padded copy of it and parsing
//! that as a 256-bit integer. Plain decimal text (`93`, `-12.5`, `40.09620692463166`),
//! which is what producers send and stores keep, is read here digit by digit instead;
//! every other form (an exponent, a leading `+` or `.`, more fraction digits than the
//! scale, too many digits) goes through the kernel, so the results are the kernel's
//! wherever it is defined (tested against it).

use arrow::array::{Array, Decimal128Array, StringArray};
use arrow::buffer::{NullBuffer, ScalarBuffer};
use arrow::compute::{CastOptions, cast_with_options};
use arrow::datatypes::DataType;
use arrow::error::ArrowError;

/// Plain decimal text (`-?digits(.digits)?`) as the integer of a `Decimal128(precision,
/// scale)`; `None` for any other form or a value beyond the precision.
pub fn parse_plain(text: &str, precision: u8, scale: i8) -> Option<i128> {
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (int, frac) = match digits.split_once('.') {
        Some((int, frac)) if !frac.is_empty() => (int, frac),
        Some(_) => return None,
        None => (digits, ""),
    };
    let scale = usize::try_from(scale).ok()?;
    if int.is_empty() || frac.len() > scale || int.len() + scale > 38 {
        return None;
    }
    let mut value: i128 = 0;
    for d in int.bytes().chain(frac.bytes()) {
        if !d.is_ascii_digit() {
            return None;
        }
        value = value * 10 + i128::from(d - b'0');
    }
    let value = value * 10i128.pow((scale - frac.len()) as u32);
    if value >= 10i128.pow(u32::from(precision)) {
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
    let mut values = vec![0i128; text.len()];
    let mut valid = vec![false; text.len()];
    let mut others = Vec::new();
    for (i, v) in text.iter().enumerate() {
        let Some(v) = v else { continue };
        match parse_plain(v, precision, scale) {
            Some(parsed) => {
                values[i] = parsed;
                valid[i] = true;
            }
            None => others.push(i),
        }
    }
    if !others.is_empty() {
        let rest = StringArray::from(others.iter().map(|&i| text.value(i)).collect::<Vec<_>>());
        let cast = cast_with_options(&rest, &DataType::Decimal128(precision, scale), options)?;
        let cast = cast.as_any().downcast_ref::<Decimal128Array>().expect("cast to Decimal128");
        for (k, &i) in others.iter().enumerate() {
            if cast.is_valid(k) {
                values[i] = cast.value(k);
                valid[i] = true;
            }
        }
    }
    Decimal128Array::new(ScalarBuffer::from(values), Some(NullBuffer::from(valid)))
        .with_precision_and_scale(precision, scale)
}

#[cfg(test)]
mod tests {
    use super::*;
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
            int in "[0-9]{0,22}",
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
