//! Stream records → Arrow: one text column per wire field, one row per record.
//!
//! Decoding keeps every record, so row `i` is always record `i` of the batch. A record
//! that is not JSON, not an object, or of no known kind gets its reasons here and a row
//! of nulls; it cannot spoil its neighbours. Numbers keep their exact text (`93.0`,
//! `40.09620692463166`), blanks (`""`, `null`, absent) become nulls, and typing is left
//! to [`super::validate`], which works on whole columns.

use std::borrow::Cow;
use std::collections::HashSet;
use std::sync::{Arc, LazyLock};

use arrow::array::{ArrayRef, AsArray, BooleanArray, RecordBatch, StringArray, StringBuilder};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::event::{EventKind, MAX_RECORD_BYTES};

/// Wire fields in column order: `trip_id`, then the start group, then the end group.
pub const COLUMNS: [&str; 15] = [
    "trip_id",
    "pickup_location_id",
    "dropoff_location_id",
    "vendor_id",
    "pickup_datetime",
    "estimated_dropoff_datetime",
    "estimated_fare_amount",
    "dropoff_datetime",
    "rate_code",
    "passenger_count",
    "trip_distance",
    "fare_amount",
    "tip_amount",
    "payment_type",
    "trip_type",
];

/// The decoded batch's schema: every wire field as nullable text, in [`COLUMNS`] order.
pub static WIRE_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(COLUMNS.map(|c| Field::new(c, DataType::Utf8, true)).to_vec()))
});

const PICKUP: usize = 4;
const DROPOFF: usize = 7;

/// The wire object, borrowing every field's raw JSON text. Unknown fields are ignored.
#[derive(Deserialize)]
struct Wire<'a> {
    #[serde(borrow, default)]
    event_type: Option<&'a RawValue>,
    #[serde(borrow, default)]
    trip_id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pickup_location_id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    dropoff_location_id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    vendor_id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pickup_datetime: Option<&'a RawValue>,
    #[serde(borrow, default)]
    estimated_dropoff_datetime: Option<&'a RawValue>,
    #[serde(borrow, default)]
    estimated_fare_amount: Option<&'a RawValue>,
    #[serde(borrow, default)]
    dropoff_datetime: Option<&'a RawValue>,
    #[serde(borrow, default)]
    rate_code: Option<&'a RawValue>,
    #[serde(borrow, default)]
    passenger_count: Option<&'a RawValue>,
    #[serde(borrow, default)]
    trip_distance: Option<&'a RawValue>,
    #[serde(borrow, default)]
    fare_amount: Option<&'a RawValue>,
    #[serde(borrow, default)]
    tip_amount: Option<&'a RawValue>,
    #[serde(borrow, default)]
    payment_type: Option<&'a RawValue>,
    #[serde(borrow, default)]
    trip_type: Option<&'a RawValue>,
}

impl<'a> Wire<'a> {
    fn fields(&self) -> [Option<&'a RawValue>; 15] {
        [
            self.trip_id,
            self.pickup_location_id,
            self.dropoff_location_id,
            self.vendor_id,
            self.pickup_datetime,
            self.estimated_dropoff_datetime,
            self.estimated_fare_amount,
            self.dropoff_datetime,
            self.rate_code,
            self.passenger_count,
            self.trip_distance,
            self.fare_amount,
            self.tip_amount,
            self.payment_type,
            self.trip_type,
        ]
    }
}

/// A decoded micro-batch.
#[derive(Debug)]
pub struct Decoded {
    /// The records as a batch of [`WIRE_SCHEMA`]: one text column per wire field, null
    /// where the field is absent or blank.
    pub batch: RecordBatch,
    /// Rows that are start events.
    pub is_start: BooleanArray,
    /// Rows that are end events.
    pub is_end: BooleanArray,
    /// Reasons found while decoding, per row (empty when none).
    pub reasons: Vec<Vec<String>>,
    /// `(row, column)` pairs whose value had a JSON type no rule accepts (already reasoned).
    pub wrong_type: HashSet<(usize, usize)>,
}

impl Decoded {
    /// Number of rows (= records).
    pub fn len(&self) -> usize {
        self.reasons.len()
    }

    /// True when the batch holds no record.
    pub fn is_empty(&self) -> bool {
        self.reasons.is_empty()
    }

    /// The column of a wire field.
    pub fn column(&self, name: &str) -> &StringArray {
        self.batch.column_by_name(name).expect("known column").as_string()
    }

    /// The column at `index` of [`COLUMNS`].
    pub fn text(&self, index: usize) -> &StringArray {
        self.batch.column(index).as_string()
    }
}

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

enum Text<'a> {
    Blank,
    Value(Cow<'a, str>),
    WrongType(&'static str),
}

fn text_of(raw: &RawValue) -> Text<'_> {
    let s = raw.get();
    match s.as_bytes().first() {
        Some(b'"') => match serde_json::from_str::<Cow<'_, str>>(s) {
            Ok(v) => Text::Value(v),
            Err(_) => Text::WrongType("a malformed string"),
        },
        Some(b'-' | b'0'..=b'9') => Text::Value(Cow::Borrowed(s)),
        Some(b't' | b'f') => Text::WrongType("a boolean"),
        Some(b'{') => Text::WrongType("an object"),
        Some(b'[') => Text::WrongType("an array"),
        _ => Text::Blank,
    }
}

/// Decodes records into text columns. Never fails: what cannot be decoded is reasoned.
pub fn decode<'a>(records: impl ExactSizeIterator<Item = &'a [u8]>) -> Decoded {
    let n = records.len();
    let mut builders: Vec<StringBuilder> =
        COLUMNS.iter().map(|_| StringBuilder::with_capacity(n, n * 16)).collect();
    let mut is_start = Vec::with_capacity(n);
    let mut is_end = Vec::with_capacity(n);
    let mut reasons = Vec::with_capacity(n);
    let mut wrong_type = HashSet::new();

    for (row, data) in records.enumerate() {
        let mut why = Vec::new();
        let wire = parse(data, &mut why);
        let Some(wire) = wire else {
            for b in &mut builders {
                b.append_null();
            }
            is_start.push(false);
            is_end.push(false);
            reasons.push(why);
            continue;
        };
        let fields = wire.fields();
        let mut present = [false; 15];
        for (col, (raw, b)) in fields.iter().zip(&mut builders).enumerate() {
            match raw.map(text_of).unwrap_or(Text::Blank) {
                // An empty trip id is kept, so that validation can name it.
                Text::Value(v) if col == 0 || !v.trim().is_empty() => {
                    present[col] = true;
                    b.append_value(v);
                }
                Text::Value(_) | Text::Blank => b.append_null(),
                Text::WrongType(got) => {
                    why.push(format!(
                        "{}: wrong type: expected a string or a number, got {got}",
                        COLUMNS[col]
                    ));
                    wrong_type.insert((row, col));
                    b.append_null();
                }
            }
        }
        let kind = kind_of(wire.event_type, present[PICKUP], present[DROPOFF], &mut why);
        is_start.push(kind == Some(EventKind::Start));
        is_end.push(kind == Some(EventKind::End));
        reasons.push(why);
    }

    let columns = builders.iter_mut().map(|b| Arc::new(b.finish()) as ArrayRef).collect();
    Decoded {
        batch: RecordBatch::try_new(WIRE_SCHEMA.clone(), columns).expect("columns match the schema"),
        is_start: BooleanArray::from(is_start),
        is_end: BooleanArray::from(is_end),
        reasons,
        wrong_type,
    }
}

fn parse<'a>(data: &'a [u8], why: &mut Vec<String>) -> Option<Wire<'a>> {
    if data.len() > MAX_RECORD_BYTES {
        why.push(format!("record: {} bytes, over the 1 MiB limit", data.len()));
        return None;
    }
    let Ok(text) = std::str::from_utf8(data) else {
        why.push("record: not UTF-8 text".into());
        return None;
    };
    match text.trim_start().as_bytes().first() {
        Some(b'{') => {}
        None => {
            why.push("record: empty".into());
            return None;
        }
        Some(_) => {
            // Valid JSON of another shape (an array, a number), or no JSON at all.
            why.push(match serde_json::from_str::<&RawValue>(text) {
                Ok(_) => "record: JSON, but not an object".into(),
                Err(e) => format!("record: not JSON: {e}"),
            });
            return None;
        }
    }
    match serde_json::from_str::<Wire<'_>>(text) {
        Ok(w) => Some(w),
        Err(e) => {
            why.push(format!("record: not JSON: {e}"));
            None
        }
    }
}

fn kind_of(
    event_type: Option<&RawValue>,
    has_pickup: bool,
    has_dropoff: bool,
    why: &mut Vec<String>,
) -> Option<EventKind> {
    match event_type.map(text_of).unwrap_or(Text::Blank) {
        Text::Value(v) if !v.is_empty() => {
            let kind = EventKind::parse(&v);
            if kind.is_none() {
                why.push(format!(
                    "event_type: unknown {} (expected trip_start, trip_end, start or end)",
                    quote(&v)
                ));
            }
            kind
        }
        Text::WrongType(got) => {
            why.push(format!("event_type: wrong type: expected a string, got {got}"));
            None
        }
        Text::Value(_) | Text::Blank => match (has_pickup, has_dropoff) {
            (true, false) => Some(EventKind::Start),
            (false, true) => Some(EventKind::End),
            (true, true) => {
                why.push(
                    "event_type: missing, and both pickup_datetime and dropoff_datetime are present"
                        .into(),
                );
                None
            }
            (false, false) => {
                why.push(
                    "event_type: missing, and neither pickup_datetime nor dropoff_datetime tells the kind"
                        .into(),
                );
                None
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::Array;

    fn one(record: &str) -> Decoded {
        decode(std::iter::once(record.as_bytes()))
    }

    #[test]
    fn numbers_keep_their_text_and_strings_are_unquoted() {
        let d = one(r#"{"event_type":"end","trip_id":"t1","fare_amount":40.09620692463166,"rate_code":"5.0","dropoff_datetime":"2024-05-25 14:05:00"}"#);
        assert!(d.reasons[0].is_empty(), "{:?}", d.reasons);
        assert_eq!(d.column("fare_amount").value(0), "40.09620692463166");
        assert_eq!(d.column("rate_code").value(0), "5.0");
        assert!(d.is_end.value(0) && !d.is_start.value(0));
    }

    #[test]
    fn blanks_are_nulls_but_an_empty_trip_id_is_kept() {
        let d = one(r#"{"trip_id":"","pickup_datetime":"2024-05-25 13:19:00","vendor_id":"","dropoff_location_id":null}"#);
        assert!(d.is_start.value(0), "kind inferred from pickup_datetime");
        assert_eq!(d.column("trip_id").value(0), "");
        assert!(d.column("vendor_id").is_null(0));
        assert!(d.column("dropoff_location_id").is_null(0));
        assert!(d.column("rate_code").is_null(0));
    }

    #[test]
    fn a_record_over_1_mib_is_rejected_unread() {
        let big = format!(r#"{{"trip_id":"{}"}}"#, "x".repeat(MAX_RECORD_BYTES));
        let d = one(&big);
        assert_eq!(d.reasons[0], [format!("record: {} bytes, over the 1 MiB limit", big.len())]);
        assert!(d.column("trip_id").is_null(0));
    }

    #[test]
    fn undecodable_records_do_not_spoil_their_neighbours() {
        let records: Vec<&[u8]> = vec![
            b"not json",
            br#"{"trip_id":"a","dropoff_datetime":"2024-05-25 13:19:00""#,
            b"[1,2,3]",
            br#"{"event_type":"trip_end","trip_id":"ok"}"#,
            br#"{"event_type":"trip_middle","trip_id":"x"}"#,
            br#"{"trip_id":"y"}"#,
            br#"{"event_type":"end","trip_id":{"a":1},"fare_amount":true}"#,
        ];
        let d = decode(records.into_iter());
        assert_eq!(d.len(), 7);
        assert!(d.reasons[0][0].starts_with("record: not JSON"), "{:?}", d.reasons[0]);
        assert!(d.reasons[1][0].starts_with("record: not JSON"), "{:?}", d.reasons[1]);
        assert_eq!(d.reasons[2], ["record: JSON, but not an object"]);
        assert!(d.reasons[3].is_empty());
        assert_eq!(d.column("trip_id").value(3), "ok");
        assert!(d.reasons[4][0].contains("unknown \"trip_middle\""));
        assert!(d.reasons[5][0].starts_with("event_type: missing"));
        assert_eq!(d.reasons[6].len(), 2, "{:?}", d.reasons[6]);
        assert!(d.wrong_type.contains(&(6, 0)) && d.wrong_type.contains(&(6, 11)));
    }
}
