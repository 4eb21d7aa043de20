//! Column-wise validation (docs/design.md §2): each rule types a whole column at once (plain
//! text read by hand, any other form by Arrow's cast kernels, with the same results),
//! and only the rows a rule rejects get reasons written.
//!
//! Rules apply to the fields of the row's own kind; a start event's stray end fields are
//! ignored. A rejected row collects every reason it fails, not just the first.

use std::sync::{Arc, LazyLock};

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, RecordBatch, StringArray};
use arrow::compute::kernels::boolean::{and, or};
use arrow::compute::{is_not_null, is_null};
use arrow::datatypes::{DataType, Decimal128Type, Field, Int64Type, Schema, SchemaRef, TimestampMicrosecondType};
use compact_str::{CompactString, ToCompactString};

use super::decode::{COLUMNS, Decoded, Undeclared, is_blank, kind_at, quote};
use crate::error::{Context, Stage};
use crate::model::decimal::decimal_text;
use crate::model::declared::Fields;
use crate::model::event::{EventKind, FIELDS, FieldSpec, FieldType, arrow_type};
use crate::model::extra::scalar_text;
#[cfg(test)]
use crate::model::rules::{Integer, integers, safe};
use crate::model::rules::{check_typed, rows, typed_column};
use crate::model::timestamp;

/// The kernels' errors, inside validation; [`validate`] labels them with the stage.
type Result<T, E = arrow::error::ArrowError> = std::result::Result<T, E>;

/// Longest accepted `trip_id`, in bytes (DynamoDB allows 2048 for a partition key).
pub const MAX_TRIP_ID_BYTES: usize = 1024;

/// `test` of every value; null where the value is null.
fn each(text: &StringArray, test: impl Fn(&str) -> bool) -> BooleanArray {
    text.iter().map(|v| v.map(&test)).collect()
}

/// The validated batch's schema: `trip_id` as text, then every field of both groups
/// with its rule's type: Int64, Timestamp(µs, UTC) or Decimal128(38, 18).
pub static VALIDATED_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    let fields = std::iter::once(Field::new("trip_id", DataType::Utf8, true))
        .chain(FIELDS.iter().map(|f| Field::new(f.name, arrow_type(f.ty), true)));
    Arc::new(Schema::new(fields.collect::<Vec<_>>()))
});

/// A validated batch: typed columns and, per row, the reasons it was rejected.
#[derive(Debug)]
pub struct Validated {
    /// Per row; a row is valid when its list is empty.
    pub reasons: Vec<Vec<String>>,
    /// Rows that are start events.
    pub is_start: BooleanArray,
    /// Rows that are end events.
    pub is_end: BooleanArray,
    /// The typed batch, of [`VALIDATED_SCHEMA`]; null where absent or invalid.
    pub batch: RecordBatch,
    /// Per row, the fields no declared field names ([`Decoded::extras`]).
    pub extras: StringArray,
}

impl Validated {
    /// True when row `row` passed every rule.
    pub fn is_valid(&self, row: usize) -> bool {
        self.reasons[row].is_empty()
    }

    /// The typed column of a wire field.
    pub fn column(&self, name: &str) -> &ArrayRef {
        self.batch.column_by_name(name).expect("known column")
    }

    /// The `trip_id` column.
    pub fn trip_ids(&self) -> &StringArray {
        self.batch.column(0).as_string::<i32>()
    }

    /// The validated column `col` (of [`VALIDATED_SCHEMA`]) of the field `spec`, typed
    /// once for reading many rows.
    pub fn typed(&self, col: usize, spec: &FieldSpec) -> Typed<'_> {
        let col = self.batch.column(col);
        match spec.ty {
            FieldType::Integer => Typed::Integer(col.as_primitive()),
            FieldType::DateTime => Typed::DateTime(col.as_primitive()),
            FieldType::Decimal => Typed::Decimal(col.as_primitive()),
        }
    }
}

/// A validated column as its field's type.
pub enum Typed<'a> {
    /// An integer field.
    Integer(&'a arrow::array::PrimitiveArray<Int64Type>),
    /// A datetime field, in microseconds (UTC).
    DateTime(&'a arrow::array::PrimitiveArray<TimestampMicrosecondType>),
    /// A decimal field, at [`crate::model::event::DECIMAL_SCALE`].
    Decimal(&'a arrow::array::PrimitiveArray<Decimal128Type>),
}

impl Typed<'_> {
    /// The value of `row` in the stored form: integers in decimal, datetimes
    /// fixed-width, decimals canonical.
    pub fn stored_text(&self, row: usize) -> Option<CompactString> {
        match self {
            Typed::Integer(a) => a.is_valid(row).then(|| a.value(row).to_compact_string()),
            Typed::DateTime(a) => a.is_valid(row).then(|| timestamp::format_compact(a.value(row))),
            Typed::Decimal(a) => a.is_valid(row).then(|| decimal_text(a.value(row))),
        }
    }
}

struct Checker<'a> {
    decoded: &'a Decoded,
    reasons: Vec<Vec<String>>,
}

impl Checker<'_> {
    fn reject(&mut self, mask: &BooleanArray, col: usize, rule: impl Fn(&str) -> String) {
        for row in rows(mask) {
            self.reject_row(row, col, &rule);
        }
    }

    fn reject_row(&mut self, row: usize, col: usize, rule: impl Fn(&str) -> String) {
        if self.decoded.wrong_type.contains(&(row, col)) {
            return;
        }
        let raw = self.decoded.text(col);
        let value = if raw.is_null(row) { "" } else { raw.value(row) };
        self.reasons[row].push(format!("{}: {}", COLUMNS[col], rule(value)));
    }

    /// A reason for `row`'s field `col`, already worded (see [`typed_column`]).
    fn reject_worded(&mut self, row: usize, col: usize, why: String) {
        if !self.decoded.wrong_type.contains(&(row, col)) {
            self.reasons[row].push(format!("{}: {why}", COLUMNS[col]));
        }
    }
}

/// Validates a decoded batch.
///
/// # Errors
/// Only when an Arrow kernel fails, which would be a bug, not bad data.
pub fn validate(decoded: &Decoded) -> crate::Result<Validated> {
    validate_columns(decoded).stage(Stage::Ingest, "validating a micro-batch")
}

fn validate_columns(decoded: &Decoded) -> Result<Validated> {
    let is_start = &decoded.is_start;
    let is_end = &decoded.is_end;
    let any_kind = or(is_start, is_end)?;
    let mut checker = Checker { decoded, reasons: decoded.reasons.clone() };
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(COLUMNS.len());

    // trip_id: present, not blank, not too long.
    let ids = decoded.text(0);
    checker.reject(&and(&any_kind, &is_null(ids)?)?, 0, |_| "missing".into());
    let blank = each(ids, is_blank);
    checker.reject(&and(&any_kind, &blank)?, 0, |_| "empty".into());
    let long = arrow::compute::kernels::cmp::gt(
        &arrow::compute::kernels::length::length(ids)?,
        &arrow::array::Int32Array::new_scalar(MAX_TRIP_ID_BYTES as i32),
    )?;
    checker
        .reject(&and(&any_kind, &long)?, 0, |v| format!("longer than {MAX_TRIP_ID_BYTES} bytes ({} bytes)", v.len()));
    columns.push(Arc::new(ids.clone()));

    for (i, spec) in FIELDS.iter().enumerate() {
        let col = i + 1;
        let of_kind = match spec.kind {
            EventKind::Start => is_start,
            EventKind::End => is_end,
        };
        let raw = decoded.text(col);
        let present = is_not_null(raw)?;
        if spec.required {
            checker.reject(&and(of_kind, &is_null(raw)?)?, col, |_| "missing".into());
        }
        let checked = and(of_kind, &present)?;
        let typed = check_typed(spec.ty, raw, &checked, &mut |row, why| checker.reject_worded(row, col, why))?;
        columns.push(typed);
    }

    Ok(Validated {
        reasons: checker.reasons,
        is_start: is_start.clone(),
        is_end: is_end.clone(),
        batch: RecordBatch::try_new(VALIDATED_SCHEMA.clone(), columns)?,
        extras: decoded.extras.clone(),
    })
}

impl Validated {
    /// The kind of the event in `row`, if it has one.
    fn kind(&self, row: usize) -> Option<EventKind> {
        kind_at(&self.is_start, &self.is_end, row)
    }
}

/// Checks the fields a fields file declares, as the built-in ones are checked: each
/// row of the field's group must carry it if it is required, as a string or a number
/// that its rule types. Their values stay in the row's [`Validated::extras`], as sent;
/// `undeclared` holds them read ([`Decoded::undeclared`]).
///
/// # Errors
/// Only when an Arrow kernel fails.
pub fn check_declared(v: &mut Validated, undeclared: &Undeclared<'_>, fields: &Fields) -> crate::Result<()> {
    if fields.declared().is_empty() {
        return Ok(());
    }
    let rows = v.reasons.len();
    for f in fields.declared() {
        let mut wrong = vec![false; rows];
        let raw: StringArray = (0..rows)
            .map(|row| {
                if v.kind(row) != Some(f.kind) {
                    return None;
                }
                let kept = undeclared.get(row)?.as_ref()?;
                let value = kept.iter().find(|(name, _)| *name == f.name)?.1;
                match scalar_text(value) {
                    Ok(text) => text,
                    Err(got) => {
                        v.reasons[row]
                            .push(format!("{}: wrong type: expected a string or a number, got {got}", f.name));
                        wrong[row] = true;
                        None
                    }
                }
            })
            .collect();
        for (row, &wrong) in wrong.iter().enumerate() {
            if f.required && !wrong && raw.is_null(row) && v.kind(row) == Some(f.kind) {
                v.reasons[row].push(format!("{}: missing", f.name));
            }
        }
        if let Some(rule) = f.ty.rule() {
            let (_, rejected) = typed_column(rule, &raw).stage(Stage::Ingest, "validating a declared field")?;
            for (row, why) in rejected {
                v.reasons[row].push(format!("{}: {why}", f.name));
            }
        }
    }
    Ok(())
}

/// Rejects every record that carries a field no field names, built-in or declared for
/// its group, with a reason naming each such field (`--unknown-fields reject`).
pub fn refuse_unknown(v: &mut Validated, undeclared: &Undeclared<'_>, fields: &Fields) {
    for (row, kept) in undeclared.iter().enumerate() {
        let kind = v.kind(row);
        for (name, _) in kept.iter().flatten() {
            if kind.is_some_and(|k| fields.names(k, name)) {
                continue;
            }
            let plain = !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
            let name = if plain { name.clone() } else { quote(name) };
            v.reasons[row].push(format!("{name}: undeclared field (refused by --unknown-fields reject)"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::decode::decode;
    use super::*;
    use arrow::compute::cast_with_options;
    use arrow::compute::kernels::cmp::neq;
    use proptest::prelude::*;

    /// The value of the field `name` in `row`, in the stored form.
    fn text(v: &Validated, name: &str, row: usize) -> Option<CompactString> {
        let at = FIELDS.iter().position(|f| f.name == name).expect("a field of the registry");
        v.typed(1 + at, &FIELDS[at]).stored_text(row)
    }

    /// The integer rule as three cast kernels: text → Decimal128(38, 10) → Int64, and back
    /// to tell a dropped fraction.
    fn integer_by_kernels(text: &str) -> Option<Integer> {
        let wide = DataType::Decimal128(38, 10);
        let dec = cast_with_options(&StringArray::from(vec![text]), &wide, &safe()).unwrap();
        if dec.is_null(0) {
            return Some(Integer::NotANumber);
        }
        let int = cast_with_options(&dec, &DataType::Int64, &safe()).unwrap();
        if int.is_null(0) {
            return Some(Integer::OutOfRange);
        }
        let n = int.as_primitive::<Int64Type>().value(0);
        let back = cast_with_options(&int, &wide, &safe()).unwrap();
        Some(if neq(&dec, &back).unwrap().value(0) { Integer::Fraction(n) } else { Integer::Whole(n) })
    }

    proptest! {
        #[test]
        fn integers_read_as_the_cast_kernels_read_them(
            sign in "-?",
            int in "[0-9]{0,21}",
            dot in "\\.?",
            frac in prop_oneof!["0{0,12}", "[0-9]{0,12}"],
            other in prop_oneof![9 => Just(""), 1 => Just("e3"), 1 => Just("x")],
        ) {
            let text = format!("{sign}{int}{dot}{frac}{other}");
            let ours = integers(&StringArray::from(vec![text.as_str()])).unwrap();
            // The kernel reads no exponent: it reads `e3` spelt out, the point moved.
            let spelt = if other == "e3" && !(int.is_empty() && frac.is_empty()) {
                // Without a dot, the "fraction" digits are more of the integer's.
                let (int, frac) = if dot.is_empty() { (format!("{int}{frac}"), String::new()) } else { (int.clone(), frac.clone()) };
                let frac = format!("{frac:0<3}");
                let rest = &frac[3..];
                format!("{sign}{int}{}{}{rest}", &frac[..3], if rest.is_empty() { "" } else { "." })
            } else {
                text.clone()
            };
            prop_assert_eq!(ours[0], integer_by_kernels(&spelt), "{} as {}", text, spelt);
        }
    }

    /// Datetime text at the edges docs/design.md §2 names: years 0000-0002 and 9998-9999, the
    /// first and last days and seconds (and a leap second), offsets up to ±23:59 in
    /// three spellings, 0 to 9 fraction digits, `T`, `t` or a space, `Z` or `z`.
    fn edge_datetime() -> impl Strategy<Value = String> {
        let year = prop_oneof![0u32..=2, 9998u32..=9999, 0u32..=9999];
        let month = prop_oneof![Just(1u32), Just(12u32), 1u32..=12];
        let day = prop_oneof![Just(1u32), Just(28u32), Just(31u32), 1u32..=31];
        let hour = prop_oneof![Just(0u32), Just(23u32), 0u32..=23];
        let minute_second = prop_oneof![Just(0u32), Just(59u32), Just(60u32), 0u32..=59];
        let fraction = prop_oneof![Just(String::new()), "\\.[0-9]{1,9}"];
        let sep = prop_oneof![Just('T'), Just('t'), Just(' ')];
        let zone = prop_oneof![
            Just(String::new()),
            Just("Z".to_owned()),
            Just("z".to_owned()),
            ("[+-]", 0u32..=23, 0u32..=59).prop_map(|(s, h, m)| format!("{s}{h:02}:{m:02}")),
            ("[+-]", 0u32..=23, 0u32..=59).prop_map(|(s, h, m)| format!("{s}{h:02}{m:02}")),
            ("[+-]", 0u32..=23).prop_map(|(s, h)| format!("{s}{h:02}")),
        ];
        (year, month, day, hour, minute_second.clone(), minute_second, fraction, sep, zone).prop_map(
            |(y, mo, d, h, mi, se, f, sep, z)| format!("{y:04}-{mo:02}-{d:02}{sep}{h:02}:{mi:02}:{se:02}{f}{z}"),
        )
    }

    proptest! {
        /// Every edge datetime is either rejected with a reason naming the field, or
        /// kept as an instant the stored form holds and the export reads back exactly.
        #[test]
        fn an_edge_datetime_is_rejected_with_a_reason_or_kept_exactly(text in edge_datetime()) {
            let record = START.replace("2024-05-25 13:19:00", &text);
            let v = check(&[&record]);
            if v.is_valid(0) {
                let col = v.column("pickup_datetime").as_primitive::<TimestampMicrosecondType>();
                prop_assert!(col.is_valid(0), "{}", text);
                let micros = col.value(0);
                prop_assert!(timestamp::in_range(micros), "{} is {}", text, micros);
                let stored = timestamp::format(micros);
                prop_assert_eq!(stored.len(), 27, "{}", stored);
                prop_assert_eq!(timestamp::parse_plain(&stored), Some(micros), "{}", stored);
            } else {
                prop_assert!(v.reasons[0].iter().all(|r| r.starts_with("pickup_datetime: ")), "{:?}", v.reasons[0]);
                prop_assert!(v.column("pickup_datetime").is_null(0), "{}", text);
            }
        }
    }

    fn check(records: &[&str]) -> Validated {
        validate(&decode(records.iter().map(|r| r.as_bytes()))).unwrap()
    }

    const START: &str = r#"{"event_type":"trip_start","trip_id":"c66ce556bc","pickup_location_id":93,"dropoff_location_id":"93","vendor_id":1.0,"pickup_datetime":"2024-05-25 13:19:00","estimated_dropoff_datetime":"2024-05-25T14:03:00+02:00","estimated_fare_amount":34.18595283806629}"#;

    #[test]
    fn a_good_start_is_typed_and_normalised() {
        let v = check(&[START]);
        assert!(v.is_valid(0), "{:?}", v.reasons);
        assert_eq!(text(&v, "dropoff_location_id", 0).unwrap(), "93");
        assert_eq!(text(&v, "vendor_id", 0).unwrap(), "1");
        assert_eq!(text(&v, "pickup_datetime", 0).unwrap(), "2024-05-25T13:19:00.000000Z");
        assert_eq!(text(&v, "estimated_dropoff_datetime", 0).unwrap(), "2024-05-25T12:03:00.000000Z");
        assert_eq!(text(&v, "estimated_fare_amount", 0).unwrap(), "34.18595283806629");
    }

    #[test]
    fn every_reason_is_reported() {
        let v = check(&[
            r#"{"event_type":"start","trip_id":"t","pickup_location_id":93.5,"vendor_id":"x","pickup_datetime":"25-05-2024 13:19","estimated_fare_amount":"NaN"}"#,
        ]);
        let r = &v.reasons[0];
        assert!(r.contains(&"pickup_location_id: not a whole number: \"93.5\"".to_string()), "{r:?}");
        assert!(r.contains(&"dropoff_location_id: missing".to_string()), "{r:?}");
        assert!(r.contains(&"vendor_id: not an integer: \"x\"".to_string()), "{r:?}");
        assert!(r.contains(&"pickup_datetime: not ISO 8601: \"25-05-2024 13:19\"".to_string()), "{r:?}");
        assert!(r.iter().any(|m| m.starts_with("estimated_fare_amount: not a finite decimal")), "{r:?}");
        assert_eq!(r.len(), 5, "{r:?}");
    }

    #[test]
    fn datetimes_the_kernel_reads_must_still_be_iso_8601() {
        let bare_date = START.replace("2024-05-25 13:19:00", "2024-05-25");
        let v = check(&[&bare_date, START]);
        assert_eq!(v.reasons[0], ["pickup_datetime: not ISO 8601: \"2024-05-25\""]);
        assert!(v.is_valid(1), "{:?}", v.reasons[1]);
    }

    #[test]
    fn lower_case_t_and_z_are_taken_as_rfc_3339_allows() {
        let v = check(&[&START.replace("2024-05-25 13:19:00", "2024-05-25t13:19:00.5z")]);
        assert!(v.is_valid(0), "{:?}", v.reasons);
        assert_eq!(text(&v, "pickup_datetime", 0).unwrap(), "2024-05-25T13:19:00.500000Z");
        let v = check(&[&START.replace("2024-05-25 13:19:00", "2024-05-25x13:19:00")]);
        assert_eq!(v.reasons[0], ["pickup_datetime: not ISO 8601: \"2024-05-25x13:19:00\""]);
        assert!(v.column("pickup_datetime").is_null(0), "a rejected value is not kept");
    }

    #[test]
    fn stray_fields_of_the_other_kind_are_ignored() {
        let v = check(&[&START.replace("}", r#","fare_amount":"junk"}"#)]);
        assert!(v.is_valid(0), "{:?}", v.reasons);
    }

    #[test]
    fn decimals_round_trip_as_canonical_text() {
        assert_eq!(decimal_text(40_096_206_924_631_660_000), "40.09620692463166");
        assert_eq!(decimal_text(-5 * 10i128.pow(17)), "-0.5");
        assert_eq!(decimal_text(93 * 10i128.pow(18)), "93");
        assert_eq!(timestamp::format(0), "1970-01-01T00:00:00.000000Z");
    }
}
