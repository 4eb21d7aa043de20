//! The rules a field's text value must follow to be typed (docs/design.md §2), a whole
//! column at a time: plain text read by hand, any other form by Arrow's cast kernels,
//! with the same results. Ingest's validation types the built-in and the declared
//! fields with them, and the export types the declared fields' stored values with them
//! too, so a value is valid or not the same way at both ends.

use std::sync::{Arc, LazyLock};

use arrow::array::{Array, ArrayRef, BooleanArray, Int64Array, StringArray, TimestampMicrosecondArray};
use arrow::buffer::{BooleanBuffer, NullBuffer};
use arrow::compute::kernels::boolean::and;
use arrow::compute::{CastOptions, is_not_null, is_null};
use arrow::datatypes::TimestampMicrosecondType;
use regex::Regex;

use super::event::{DECIMAL_PRECISION, DECIMAL_SCALE, FieldType, timestamp_type};
use super::{cast, decimal, timestamp};

/// The kernels' errors.
type Result<T, E = arrow::error::ArrowError> = std::result::Result<T, E>;

/// Quotes a value for a reason, cut to a readable length.
pub fn quote(value: &str) -> String {
    const MAX: usize = 80;
    if value.len() <= MAX {
        return serde_json::to_string(value).unwrap_or_default();
    }
    let mut end = MAX;
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", serde_json::to_string(&value[..end]).unwrap_or_default())
}

/// What a datetime must look like before it is parsed: date, `T` or space, time, optional
/// fraction, optional `Z` or offset; `t` and `z` are taken too, as RFC 3339 allows.
/// Compiled once: Arrow's `regexp_is_match_scalar` compiles its pattern on every call,
/// an eighth of decode + validate in `perf`.
pub(crate) static ISO_8601: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?([Zz]|[+-]\d{2}(:?\d{2})?)?$")
        .expect("a valid pattern")
});

/// Rows where `mask` is true (nulls count as false).
pub(crate) fn rows(mask: &BooleanArray) -> impl Iterator<Item = usize> + '_ {
    let any = mask.true_count() > 0;
    (0..mask.len()).filter(move |&i| any && mask.is_valid(i) && mask.value(i))
}

pub(crate) fn safe() -> CastOptions<'static> {
    CastOptions { safe: true, ..Default::default() }
}

/// How a value reads as a 64-bit integer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Integer {
    Whole(i64),
    NotANumber,
    OutOfRange,
    /// A fraction was dropped; the value truncated toward zero is kept, as the cast
    /// kernel would.
    Fraction(i64),
}

/// Plain integer text (`-?digits`, at most 18 digits, with an optional `.` and up to
/// ten zeros) as an `i64`; `None` for any other form.
pub(crate) fn plain_integer(v: &str) -> Option<i64> {
    let (negative, b) = match v.as_bytes() {
        [b'-', rest @ ..] => (true, rest),
        all => (false, all),
    };
    let (digits, zeros) = match b.iter().position(|&c| c == b'.') {
        Some(dot) => (&b[..dot], &b[dot + 1..]),
        None => (b, &b[..0]),
    };
    if digits.is_empty() || digits.len() > 18 || zeros.len() > 10 || (zeros.is_empty() && digits.len() < b.len()) {
        return None;
    }
    if !zeros.iter().all(|&z| z == b'0') {
        return None;
    }
    let n = digits.iter().try_fold(0i64, |n, &d| d.is_ascii_digit().then(|| n * 10 + i64::from(d - b'0')))?;
    Some(if negative { -n } else { n })
}

/// How each value of `raw` reads as an integer, as the cast kernels read it (text →
/// Decimal128(38, 10), truncated toward zero to 64 bits); plain integers are read
/// directly.
pub(crate) fn integers(raw: &StringArray) -> Result<Vec<Option<Integer>>> {
    const SCALE: i8 = 10;
    let mut out = Vec::with_capacity(raw.len());
    let mut others = Vec::new();
    for (row, v) in raw.iter().enumerate() {
        out.push(v.map(|v| match plain_integer(v) {
            Some(n) => Integer::Whole(n),
            None => {
                others.push(row);
                Integer::NotANumber
            }
        }));
    }
    if others.is_empty() {
        return Ok(out);
    }
    let rest = StringArray::from(others.iter().map(|&row| raw.value(row)).collect::<Vec<_>>());
    let dec = decimal::cast_text(&rest, 38, SCALE, &safe())?;
    let one = 10i128.pow(SCALE as u32);
    for (k, &row) in others.iter().enumerate() {
        if dec.is_valid(k) {
            let value = dec.value(k);
            out[row] = Some(match i64::try_from(value / one) {
                Err(_) => Integer::OutOfRange,
                Ok(n) if value % one != 0 => Integer::Fraction(n),
                Ok(n) => Integer::Whole(n),
            });
        }
    }
    Ok(out)
}

/// The typed column of `raw` under the rule `ty`, calling `reject` with each row of
/// `checked` whose value breaks it and the reason (without the field's name). The
/// built-in fields, the declared ones and the export of declared ones all read their
/// values here, so a value is valid or not the same way at ingest and at export.
pub(crate) fn check_typed(
    ty: FieldType,
    raw: &StringArray,
    checked: &BooleanArray,
    reject: &mut dyn FnMut(usize, String),
) -> Result<ArrayRef> {
    match ty {
        FieldType::Integer => check_integer(raw, checked, reject),
        FieldType::DateTime => check_datetime(raw, checked, reject),
        FieldType::Decimal => {
            let dec = decimal::cast_text(raw, DECIMAL_PRECISION, DECIMAL_SCALE, &safe())?;
            for row in rows(&and(checked, &is_null(&dec)?)?) {
                reject(row, format!("not a finite decimal within ±10^20: {}", quote(raw.value(row))));
            }
            Ok(Arc::new(dec))
        }
    }
}

/// The typed column of the text values `raw` under the rule `ty`, and each row whose
/// value breaks it, with the reason: what [`validate`] makes of a field's values.
///
/// # Errors
/// Only when an Arrow kernel fails.
pub fn typed_column(ty: FieldType, raw: &StringArray) -> Result<(ArrayRef, Vec<(usize, String)>)> {
    let mut rejected = Vec::new();
    let checked = is_not_null(raw)?;
    let typed = check_typed(ty, raw, &checked, &mut |row, why| rejected.push((row, why)))?;
    Ok((typed, rejected))
}

pub(crate) fn check_integer(
    raw: &StringArray,
    checked: &BooleanArray,
    reject: &mut dyn FnMut(usize, String),
) -> Result<ArrayRef> {
    let read = integers(raw)?;
    for (row, int) in read.iter().enumerate() {
        let rule = match int {
            _ if !checked.value(row) => continue,
            None | Some(Integer::Whole(_)) => continue,
            Some(Integer::NotANumber) => "not an integer",
            Some(Integer::OutOfRange) => "out of the 64-bit range",
            Some(Integer::Fraction(_)) => "not a whole number",
        };
        reject(row, format!("{rule}: {}", quote(raw.value(row))));
    }
    Ok(Arc::new(Int64Array::from_iter(read.into_iter().map(|int| match int? {
        Integer::Whole(n) | Integer::Fraction(n) => Some(n),
        Integer::NotANumber | Integer::OutOfRange => None,
    }))))
}

pub(crate) fn check_datetime(
    raw: &StringArray,
    checked: &BooleanArray,
    reject: &mut dyn FnMut(usize, String),
) -> Result<ArrayRef> {
    let (ts, not_plain) =
        cast::cast_text::<TimestampMicrosecondType>(raw, &timestamp_type(), &safe(), timestamp::parse_plain)?;
    // Rows whose value the kernel read but a rule rejects.
    let mut rejected = Vec::new();
    for row in (0..ts.len()).filter(|&row| checked.value(row)) {
        // Plain text is ISO 8601. The kernel also reads forms docs/design.md §2 does not allow
        // (a bare date, say), so what it read must have the shape as well.
        let shaped = || not_plain.binary_search(&row).is_err() || ISO_8601.is_match(raw.value(row));
        if ts.is_null(row) || !shaped() {
            reject(row, format!("not ISO 8601: {}", quote(raw.value(row))));
            rejected.push(row);
        } else if !timestamp::in_range(ts.value(row)) {
            // Valid text, but an instant the stored form and the export cannot hold
            // (`0000-01-01T00:30:00+01:00` is in year -1 in UTC): stored, it would stop
            // every later KPI run.
            let utc = timestamp::format(ts.value(row));
            reject(row, format!("outside years 0001-9999 once in UTC: {} is {utc}", quote(raw.value(row))));
        }
    }
    // A rejected value, and any instant out of range, is null in the typed column, as a
    // value the cast cannot read is, so it can never reach the store.
    let outside = |row: usize| ts.is_valid(row) && !timestamp::in_range(ts.value(row));
    if !rejected.is_empty() || (0..ts.len()).any(outside) {
        let kept: BooleanBuffer = (0..ts.len())
            .map(|row| ts.is_valid(row) && !outside(row) && rejected.binary_search(&row).is_err())
            .collect();
        let ts = TimestampMicrosecondArray::new(ts.values().clone(), Some(NullBuffer::new(kept)));
        return Ok(Arc::new(ts.with_data_type(timestamp_type())));
    }
    Ok(Arc::new(ts))
}
