//! Text → Arrow values, fast for the forms tripflow writes and exactly as Arrow's cast
//! kernel for every other form.
//!
//! Producers send, and stores keep, a few plain forms ([`crate::model::decimal::parse_plain`],
//! [`crate::model::timestamp::parse_plain`]); those are read by hand, and only what they do
//! not read goes through `cast_with_options`, so each result is the kernel's wherever
//! the kernel reads the text (each parser is tested against it).

use arrow::array::{Array, ArrowPrimitiveType, BooleanBufferBuilder, PrimitiveArray, StringArray};
use arrow::buffer::{NullBuffer, ScalarBuffer};
use arrow::compute::{CastOptions, cast_with_options};
use arrow::datatypes::DataType;
use arrow::error::ArrowError;

/// Casts `text` to `to` as `cast_with_options(text, to, options)` would (null where a
/// value does not convert and `options.safe`, else an error), reading each value with
/// `fast` first. Also returns the rows `fast` did not read, which went to the kernel.
///
/// # Errors
/// When `options.safe` is false and a value does not convert.
pub fn cast_text<T: ArrowPrimitiveType>(
    text: &StringArray,
    to: &DataType,
    options: &CastOptions<'_>,
    fast: impl Fn(&str) -> Option<T::Native>,
) -> Result<(PrimitiveArray<T>, Vec<usize>), ArrowError> {
    let mut values = Vec::with_capacity(text.len());
    let mut valid = BooleanBufferBuilder::new(text.len());
    let mut others = Vec::new();
    for (i, v) in text.iter().enumerate() {
        let parsed = v.and_then(|v| {
            let parsed = fast(v);
            if parsed.is_none() {
                others.push(i);
            }
            parsed
        });
        values.push(parsed.unwrap_or_default());
        valid.append(parsed.is_some());
    }
    if !others.is_empty() {
        let rest = StringArray::from(others.iter().map(|&i| text.value(i)).collect::<Vec<_>>());
        let cast = cast_with_options(&rest, to, options)?;
        let cast = cast.as_any().downcast_ref::<PrimitiveArray<T>>().expect("cast to the asked type");
        for (k, &i) in others.iter().enumerate() {
            if cast.is_valid(k) {
                values[i] = cast.value(k);
                valid.set_bit(i, true);
            }
        }
    }
    let array = PrimitiveArray::<T>::new(ScalarBuffer::from(values), Some(NullBuffer::new(valid.finish())));
    Ok((array.with_data_type(to.clone()), others))
}

/// One value cast as [`cast_text`] casts it; no array is built when `fast` reads it.
///
/// # Errors
/// When `options.safe` is false and the value does not convert.
pub fn cast_one<T: ArrowPrimitiveType>(
    text: &str,
    to: &DataType,
    options: &CastOptions<'_>,
    fast: impl Fn(&str) -> Option<T::Native>,
) -> Result<Option<T::Native>, ArrowError> {
    if let Some(value) = fast(text) {
        return Ok(Some(value));
    }
    let cast = cast_with_options(&StringArray::from(vec![text]), to, options)?;
    let cast = cast.as_any().downcast_ref::<PrimitiveArray<T>>().expect("cast to the asked type");
    Ok(cast.is_valid(0).then(|| cast.value(0)))
}
