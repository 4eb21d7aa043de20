//! The bodies of the `cargo fuzz` targets (`fuzz/fuzz_targets/`), with their oracles.
//! Each panics when an oracle fails; none may panic otherwise. The same functions replay
//! the kept corpus and crashers in `tests/it/fuzz_corpus.rs`, on the stable toolchain.
//! Not a public API.

use arrow::array::{Array, AsArray};
use arrow::compute::CastOptions;
use arrow::datatypes::{Decimal128Type, Int64Type, TimestampMicrosecondType};

use crate::ingest::decode::{COLUMNS, decode};
use crate::ingest::validate::validate;
use crate::model::decimal::decimal_text;
use crate::model::event::{DECIMAL_PRECISION, DECIMAL_SCALE, END_FIELDS, FieldType, START_FIELDS, timestamp_type};
use crate::model::{decimal, timestamp};

/// Most records one input is cut into.
const MAX_RECORDS: usize = 64;

/// Decode + validate of the records in `data` (one per line). Oracles: validation never
/// fails on data; every reason names a wire field (or the record itself); a row is
/// valid exactly when it has no reason, and then holds every required field of its
/// kind; every typed value it holds is one the table stores and reads back unchanged.
pub fn decode_validate(data: &[u8]) {
    let records: Vec<&[u8]> = data.split(|&b| b == b'\n').take(MAX_RECORDS).collect();
    let decoded = decode(records.iter().copied());
    assert_eq!(decoded.len(), records.len());
    let v = validate(&decoded).expect("validation fails only on a kernel bug, never on data");
    assert_eq!(v.reasons.len(), records.len());
    for (row, reasons) in v.reasons.iter().enumerate() {
        for r in reasons {
            let field = r.split(':').next().unwrap_or_default();
            assert!(field == "record" || field == "event_type" || COLUMNS.contains(&field), "unknown field in {r:?}");
        }
        if !v.is_valid(row) {
            continue;
        }
        let start = v.is_start.is_valid(row) && v.is_start.value(row);
        let end = v.is_end.is_valid(row) && v.is_end.value(row);
        assert!(start != end, "a valid row is one kind of event");
        assert!(v.trip_ids().is_valid(row), "a valid row has its trip_id");
        let fields = if start { START_FIELDS } else { END_FIELDS };
        for spec in fields {
            let col = v.column(spec.name);
            assert!(!spec.required || col.is_valid(row), "{} is required", spec.name);
            if col.is_null(row) {
                continue;
            }
            match spec.ty {
                FieldType::Integer => {
                    let _ = col.as_primitive::<Int64Type>().value(row);
                }
                FieldType::DateTime => {
                    let micros = col.as_primitive::<TimestampMicrosecondType>().value(row);
                    assert!(timestamp::in_range(micros), "{} {micros} is outside years 0001-9999", spec.name);
                    assert_eq!(timestamp::parse_plain(&timestamp::format(micros)), Some(micros));
                }
                FieldType::Decimal => {
                    let value = col.as_primitive::<Decimal128Type>().value(row);
                    let text = decimal_text(value);
                    assert_eq!(decimal::parse_plain(&text, DECIMAL_PRECISION, DECIMAL_SCALE), Some(value), "{text}");
                }
            }
        }
    }
}

/// The datetime reader. Oracles: the fast path agrees with Arrow's cast kernel wherever
/// it reads the text; an instant in range goes through the stored form unchanged.
pub fn datetime(text: &str) {
    let safe = CastOptions { safe: true, ..Default::default() };
    let Some(fast) = timestamp::parse_plain(text) else { return };
    let kernel = crate::model::cast::cast_one::<TimestampMicrosecondType>(text, &timestamp_type(), &safe, |_| None)
        .expect("a safe cast does not fail");
    assert_eq!(Some(fast), kernel, "{text:?}: the fast path and the kernel disagree");
    if timestamp::in_range(fast) {
        let stored = timestamp::format(fast);
        assert_eq!(stored.len(), 27, "{stored}");
        assert_eq!(timestamp::parse_plain(&stored), Some(fast), "{stored}");
    }
}

/// The decimal readers. Oracles: a value read is within `DECIMAL(38, 18)`; its canonical
/// text reads back to it; a plain value agrees with Arrow's kernel; an exponent form
/// agrees with the kernel reading the same digits spelt out.
pub fn decimal(text: &str) {
    let (p, s) = (DECIMAL_PRECISION, DECIMAL_SCALE);
    let limit = 10i128.pow(u32::from(p));
    let safe = CastOptions { safe: true, ..Default::default() };
    let kernel = |t: &str| {
        crate::model::cast::cast_one::<Decimal128Type>(t, &crate::model::event::DECIMAL_TYPE, &safe, |_| None)
            .expect("a safe cast does not fail")
    };
    for value in [decimal::parse_plain(text, p, s), decimal::parse_exponent(text, p, s)].into_iter().flatten() {
        assert!(value.abs() < limit, "{text:?} read as {value}, past the precision");
        let canonical = decimal_text(value);
        assert_eq!(decimal::parse_plain(&canonical, p, s), Some(value), "{text:?} as {canonical}");
    }
    if let Some(value) = decimal::parse_plain(text, p, s) {
        assert_eq!(kernel(text), Some(value), "{text:?}: the fast path and the kernel disagree");
    }
    if let Some((digits, exp)) = exponent_parts(text) {
        let spelt = match digits.strip_prefix('-') {
            Some(d) => spelt_out(true, d, exp),
            None => spelt_out(false, &digits, exp),
        };
        assert_eq!(decimal::parse_exponent(text, p, s), kernel(&spelt), "{text:?} spelt {spelt:?}");
    }
}

/// `[-]digits[.digits]e[+-]digits` as its sign and digits and the power of ten of its
/// last digit, when the exponent is small enough to spell out.
fn exponent_parts(text: &str) -> Option<(String, i64)> {
    let (mantissa, exp) = text.split_once(['e', 'E'])?;
    let (sign, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => ("-", m),
        None => ("", mantissa.strip_prefix('+').unwrap_or(mantissa)),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let digits = |t: &str| t.bytes().all(|b| b.is_ascii_digit());
    let exp_digits = exp.strip_prefix(['+', '-']).unwrap_or(exp);
    if int.len() + frac.len() == 0 || !digits(int) || !digits(frac) || exp_digits.is_empty() || !digits(exp_digits) {
        return None;
    }
    let exp: i64 = exp.parse().ok().filter(|e: &i64| e.abs() <= 60)?;
    let all = format!("{int}{frac}");
    let power = exp - frac.len() as i64;
    // The kernel reads at most 76 digits on either side of the point: keep within them.
    (all.len() <= 40 && power >= -70).then(|| (format!("{sign}{all}"), power))
}

/// `digits × 10^exp` in plain text (negated when `negative`), for Arrow's kernel, which
/// reads no exponent. Shared by the decimal oracles here, in `decimal`'s tests and in
/// `tests/it/edge_values.rs`.
pub fn spelt_out(negative: bool, digits: &str, exp: i64) -> String {
    let sign = if negative { "-" } else { "" };
    if exp >= 0 {
        return format!("{sign}{digits}{}", "0".repeat(exp as usize));
    }
    let point = digits.len() as i64 + exp;
    if point > 0 {
        format!("{sign}{}.{}", &digits[..point as usize], &digits[point as usize..])
    } else {
        format!("{sign}0.{}{digits}", "0".repeat((-point) as usize))
    }
}

/// The command line: `data` cut at NUL bytes into arguments. Oracle: parsing and the
/// checks every command runs before its work never panic, and a value the checks
/// refuse is a [`crate::Error::Config`] or [`crate::Error::Input`], which the binary
/// exits with 2 (clap's own errors exit with 2, `--help` and `--version` with 0).
pub fn cli_args(data: &[u8]) {
    use clap::Parser;
    let args = String::from_utf8_lossy(data);
    let argv = std::iter::once("tripflow").chain(args.split('\0').take(32));
    let Ok(cli) = crate::cli::Cli::try_parse_from(argv) else { return };
    if let Err(e) = crate::cli::settings::Settings::try_from(cli.command) {
        assert!(matches!(e, crate::Error::Config { .. } | crate::Error::Input { .. }), "exit 1 for a flag: {e}");
    }
}
