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

use crate::model::event::{EventKind, FIELDS, MAX_RECORD_BYTES};
use crate::model::extra::{Extras, fields_of};

/// Number of wire columns: `trip_id` and every field of [`FIELDS`].
pub const N_COLUMNS: usize = 1 + FIELDS.len();

/// Wire fields in column order: `trip_id`, then the registry's fields (the start group,
/// then the end group).
pub const COLUMNS: [&str; N_COLUMNS] = {
    let mut columns = ["trip_id"; N_COLUMNS];
    let mut i = 0;
    while i < FIELDS.len() {
        columns[i + 1] = FIELDS[i].name;
        i += 1;
    }
    columns
};

/// The decoded batch's schema: every wire field as nullable text, in [`COLUMNS`] order.
pub static WIRE_SCHEMA: LazyLock<SchemaRef> =
    LazyLock::new(|| Arc::new(Schema::new(COLUMNS.map(|c| Field::new(c, DataType::Utf8, true)).to_vec())));

/// The columns of the groups' versions, which tell an event's kind when it has no
/// `event_type`.
const PICKUP: usize = EventKind::Start.version_column();
const DROPOFF: usize = EventKind::End.version_column();

/// The wire object, borrowing every field's raw JSON text, and the keys no field names
/// with theirs. Read with serde, for the records [`scan_flat`] leaves (escapes, nesting,
/// duplicates).
struct Wire<'a>(Fields<'a>, Unknown<'a>);

/// The keys of a record that no field names, each with its value's JSON text, as found.
type Unknown<'a> = Vec<(Cow<'a, str>, &'a str)>;

impl<'de> Deserialize<'de> for Wire<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Wire<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a trip event object")
            }
            fn visit_map<M: serde::de::MapAccess<'de>>(self, mut map: M) -> Result<Wire<'de>, M::Error> {
                let mut fields: Fields<'de> = [None; N_KEYS];
                let mut unknown: Unknown<'de> = Vec::new();
                let mut seen = [false; N_KEYS];
                while let Some(key) = map.next_key::<Key<'de>>()? {
                    let k = match key {
                        Key::Known(k) => k,
                        Key::Unknown(name) => {
                            if unknown.iter().any(|(n, _)| *n == name) {
                                return Err(serde::de::Error::custom(format_args!("duplicate field `{name}`")));
                            }
                            let value = map.next_value::<&'de RawValue>()?.get();
                            unknown.push((name, value));
                            continue;
                        }
                    };
                    if std::mem::replace(&mut seen[k], true) {
                        return Err(serde::de::Error::duplicate_field(KEYS[k]));
                    }
                    fields[k] = map.next_value::<Option<&'de RawValue>>()?.map(|r| Raw::Json(r.get()));
                }
                Ok(Wire(fields, unknown))
            }
        }
        deserializer.deserialize_map(Visit)
    }
}

/// A key of the wire object: its slot in [`Fields`], or the name of a key no field names.
enum Key<'a> {
    Known(usize),
    Unknown(Cow<'a, str>),
}

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a field name")
            }
            fn visit_borrowed_str<E: serde::de::Error>(self, key: &'de str) -> Result<Key<'de>, E> {
                Ok(slot(key.as_bytes()).map_or(Key::Unknown(Cow::Borrowed(key)), Key::Known))
            }
            fn visit_str<E: serde::de::Error>(self, key: &str) -> Result<Key<'de>, E> {
                Ok(slot(key.as_bytes()).map_or_else(|| Key::Unknown(Cow::Owned(key.to_owned())), Key::Known))
            }
        }
        deserializer.deserialize_str(Visit)
    }
}

/// A field's value as found in the record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Raw<'a> {
    /// A string without escapes, unquoted.
    Plain(&'a str),
    /// Any other value, as JSON text.
    Json(&'a str),
}

/// Number of wire keys: `event_type` and the [`COLUMNS`].
const N_KEYS: usize = 1 + N_COLUMNS;

/// `event_type` and each field in [`COLUMNS`] order, as found.
type Fields<'a> = [Option<Raw<'a>>; N_KEYS];

/// The wire keys in [`Fields`] order: `event_type`, then [`COLUMNS`].
const KEYS: [&str; N_KEYS] = {
    let mut keys = ["event_type"; N_KEYS];
    let mut i = 0;
    while i < COLUMNS.len() {
        keys[i + 1] = COLUMNS[i];
        i += 1;
    }
    keys
};

/// Longest wire key, and most keys of one length, that [`BY_LENGTH`] holds (checked at
/// compile time).
const MAX_KEY: usize = 48;
const SAME_LENGTH: usize = 6;

/// The slots of the keys of each length, plus one (0 ends a list): a key is looked up by
/// its length and then compared with the few of that length, not hashed.
const BY_LENGTH: [[u8; SAME_LENGTH]; MAX_KEY + 1] = {
    let mut table = [[0u8; SAME_LENGTH]; MAX_KEY + 1];
    let mut k = 0;
    while k < N_KEYS {
        let len = KEYS[k].len();
        assert!(len <= MAX_KEY, "a wire key is longer than MAX_KEY");
        let mut j = 0;
        while table[len][j] != 0 {
            j += 1;
            assert!(j < SAME_LENGTH, "more wire keys of one length than SAME_LENGTH");
        }
        table[len][j] = (k + 1) as u8;
        k += 1;
    }
    table
};

/// The slot in [`Fields`] of a wire key.
fn slot(key: &[u8]) -> Option<usize> {
    let slots = BY_LENGTH.get(key.len())?;
    slots.iter().take_while(|&&s| s != 0).map(|&s| usize::from(s) - 1).find(|&k| KEYS[k].as_bytes() == key)
}

/// Reads a flat wire object into `fields` without serde: an object whose keys and
/// strings have no escapes and whose values are strings, numbers, booleans or nulls,
/// with no key twice. Keys no field names go to `unknown`. Returns false for anything
/// else, valid or not, which then goes through serde (`fields` and `unknown` may then
/// hold part of the record, for serde to overwrite); where both read a record they agree
/// (tested), so reasons never depend on the path.
fn scan_flat<'a>(text: &'a str, fields: &mut Fields<'a>, unknown: &mut Unknown<'a>) -> bool {
    scan_into(text, fields, unknown).is_some()
}

fn scan_into<'a>(text: &'a str, fields: &mut Fields<'a>, unknown: &mut Unknown<'a>) -> Option<()> {
    let b = text.as_bytes();
    let mut seen = [false; N_KEYS];
    // Producers write the keys in `KEYS` order, so the key after slot k is first tried
    // as slot k + 1: one comparison instead of a scan and a lookup.
    let mut next = 0;
    let mut i = skip_ws(b, 0);
    if b.get(i) != Some(&b'{') {
        return None;
    }
    i = skip_ws(b, i + 1);
    if b.get(i) == Some(&b'}') {
        return (skip_ws(b, i + 1) == b.len()).then_some(());
    }
    loop {
        let predicted = KEYS.get(next).map(|k| k.as_bytes()).filter(|k| {
            b.get(i) == Some(&b'"') && b.get(i + 1..i + 1 + k.len()) == Some(k) && b.get(i + 1 + k.len()) == Some(&b'"')
        });
        let key_start = i;
        let (key, key_end) = match predicted {
            Some(k) => (Some(next), i + k.len() + 2),
            None => {
                let end = string_end(b, i)?;
                (slot(&b[i + 1..end - 1]), end)
            }
        };
        i = skip_ws(b, key_end);
        if b.get(i) != Some(&b':') {
            return None;
        }
        let start = skip_ws(b, i + 1);
        let (end, quoted) = match *b.get(start)? {
            b'"' => (string_end(b, start)?, true),
            b'-' | b'0'..=b'9' => (number_end(b, start)?, false),
            b'n' => (literal_end(b, start, b"null")?, false),
            b't' => (literal_end(b, start, b"true")?, false),
            b'f' => (literal_end(b, start, b"false")?, false),
            _ => return None,
        };
        if let Some(k) = key {
            if std::mem::replace(&mut seen[k], true) {
                return None; // serde names the duplicate
            }
            // As with serde, `null` is absent. Every end found is just past an ASCII
            // byte, so the slice is on char boundaries.
            fields[k] = match (quoted, &b[start..end]) {
                (true, _) => Some(Raw::Plain(&text[start + 1..end - 1])),
                (false, b"null") => None,
                (false, _) => Some(Raw::Json(&text[start..end])),
            };
            next = k + 1;
        } else {
            // Between ASCII quotes, so on char boundaries; without escapes, as read.
            let name = &text[key_start + 1..key_end - 1];
            if unknown.iter().any(|(n, _)| n == name) {
                return None; // serde names the duplicate
            }
            unknown.push((Cow::Borrowed(name), &text[start..end]));
        }
        i = skip_ws(b, end);
        match b.get(i) {
            Some(b',') => i = skip_ws(b, i + 1),
            Some(b'}') => return (skip_ws(b, i + 1) == b.len()).then_some(()),
            _ => return None,
        }
    }
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while matches!(b.get(i), Some(b' ' | b'\t' | b'\n' | b'\r')) {
        i += 1;
    }
    i
}

/// Just past the closing quote of the string opening at `i`; `None` if it has an
/// escape or a control character, or does not close.
fn string_end(b: &[u8], i: usize) -> Option<usize> {
    if b.get(i) != Some(&b'"') {
        return None;
    }
    let mut at = i + 1;
    // Eight bytes at a time: a byte is flagged when it is `"`, `\` or below 0x20. The
    // lowest flag is exact (borrows only run towards higher bytes), and that is the
    // one taken.
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGH;
    while let Some(chunk) = b.get(at..at + 8) {
        let x = u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
        let flags = zero(x ^ (ONES * u64::from(b'"')))
            | zero(x ^ (ONES * u64::from(b'\\')))
            | (x.wrapping_sub(ONES * 0x20) & !x & HIGH);
        if flags != 0 {
            at += flags.trailing_zeros() as usize / 8;
            return (b[at] == b'"').then_some(at + 1);
        }
        at += 8;
    }
    let close = b[at..].iter().position(|&c| c == b'"' || c == b'\\' || c < 0x20)?;
    (b[at + close] == b'"').then_some(at + close + 1)
}

/// Just past a JSON number (`-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`) at `i`.
fn number_end(b: &[u8], mut i: usize) -> Option<usize> {
    let digits = |b: &[u8], i: usize| i + b[i..].iter().take_while(|c| c.is_ascii_digit()).count();
    if b.get(i) == Some(&b'-') {
        i += 1;
    }
    match b.get(i) {
        Some(b'0') => i += 1,
        Some(b'1'..=b'9') => i = digits(b, i),
        _ => return None,
    }
    if b.get(i) == Some(&b'.') {
        let end = digits(b, i + 1);
        if end == i + 1 {
            return None;
        }
        i = end;
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        let end = digits(b, i);
        if end == i {
            return None;
        }
        i = end;
    }
    Some(i)
}

fn literal_end(b: &[u8], i: usize, literal: &[u8]) -> Option<usize> {
    b[i..].starts_with(literal).then_some(i + literal.len())
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
    /// Per row, the keys no field names, as an [`Extras`] object's text; null when none.
    pub extras: StringArray,
}

/// Each row's undeclared fields (name, JSON text), read once from [`Decoded::extras`]
/// for the steps after decoding that need them: `None` for a row without, and no row at
/// all when none has any (the common batch, which then allocates nothing).
pub type Undeclared<'a> = Vec<Option<Vec<(String, &'a str)>>>;

impl Decoded {
    /// The kind of the event in `row`, if it has one.
    pub fn kind(&self, row: usize) -> Option<EventKind> {
        kind_at(&self.is_start, &self.is_end, row)
    }

    /// Each row's undeclared fields, each object parsed once.
    pub fn undeclared(&self) -> Undeclared<'_> {
        use arrow::array::Array;
        let extras = &self.extras;
        if extras.null_count() == extras.len() {
            return Vec::new();
        }
        (0..extras.len()).map(|row| extras.is_valid(row).then(|| fields_of(extras.value(row)))).collect()
    }

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

pub use crate::model::rules::quote;

enum Text<'a> {
    Blank,
    Value(Cow<'a, str>),
    WrongType(&'static str),
}

/// A field's value as text.
fn text_of(raw: Raw<'_>) -> Text<'_> {
    let s = match raw {
        Raw::Plain(v) => return Text::Value(Cow::Borrowed(v)),
        Raw::Json(s) => s,
    };
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

/// True for empty or all-whitespace text, as `str::trim` sees whitespace.
pub fn is_blank(v: &str) -> bool {
    match v.as_bytes().first() {
        Some(c) if c.is_ascii_graphic() => false,
        _ => v.trim().is_empty(),
    }
}

/// The kind of the event in `row`, from the masks of start and end events.
pub fn kind_at(is_start: &BooleanArray, is_end: &BooleanArray, row: usize) -> Option<EventKind> {
    if is_start.value(row) {
        Some(EventKind::Start)
    } else if is_end.value(row) {
        Some(EventKind::End)
    } else {
        None
    }
}

/// Decodes records into text columns. Never fails: what cannot be decoded is reasoned.
pub fn decode<'a>(records: impl ExactSizeIterator<Item = &'a [u8]>) -> Decoded {
    decode_with(records, true)
}

/// [`decode`], reading flat records with [`scan_flat`] when `scan`, else all with serde.
fn decode_with<'a>(records: impl ExactSizeIterator<Item = &'a [u8]>, scan: bool) -> Decoded {
    let n = records.len();
    // Room for the longest usual value (a datetime or a fare), so builders rarely grow;
    // the pages of what is not written are never touched.
    let mut builders: Vec<StringBuilder> = COLUMNS.iter().map(|_| StringBuilder::with_capacity(n, n * 24)).collect();
    let mut is_start = Vec::with_capacity(n);
    let mut is_end = Vec::with_capacity(n);
    let mut reasons = Vec::with_capacity(n);
    let mut wrong_type = HashSet::new();
    let mut extras = StringBuilder::new();

    for (row, data) in records.enumerate() {
        let mut why = Vec::new();
        let mut fields: Fields<'_> = [None; N_KEYS];
        let mut unknown: Unknown<'_> = Vec::new();
        let parsed = parse(data, scan, &mut fields, &mut unknown, &mut why);
        if unknown.is_empty() || !parsed {
            extras.append_null();
        } else {
            extras.append_option(Extras::from_pairs(unknown).as_json());
        }
        if !parsed {
            for b in &mut builders {
                b.append_null();
            }
            is_start.push(false);
            is_end.push(false);
            reasons.push(why);
            continue;
        }
        let mut present = [false; N_COLUMNS];
        for (col, (&raw, b)) in fields[1..].iter().zip(&mut builders).enumerate() {
            match raw.map(text_of).unwrap_or(Text::Blank) {
                // An empty trip id is kept, so that validation can name it.
                Text::Value(v) if col == 0 || !is_blank(&v) => {
                    present[col] = true;
                    b.append_value(v);
                }
                Text::Value(_) | Text::Blank => b.append_null(),
                Text::WrongType(got) => {
                    why.push(format!("{}: wrong type: expected a string or a number, got {got}", COLUMNS[col]));
                    wrong_type.insert((row, col));
                    b.append_null();
                }
            }
        }
        let kind = kind_of(fields[0], present[PICKUP], present[DROPOFF], &mut why);
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
        extras: extras.finish(),
    }
}

/// Reads a record into `fields`; false, with the reasons in `why`, if it is not a JSON
/// object.
fn parse<'a>(
    data: &'a [u8],
    scan: bool,
    fields: &mut Fields<'a>,
    unknown: &mut Unknown<'a>,
    why: &mut Vec<String>,
) -> bool {
    if data.len() > MAX_RECORD_BYTES {
        why.push(format!("record: {} bytes, over the 1 MiB limit", data.len()));
        return false;
    }
    let Ok(text) = std::str::from_utf8(data) else {
        why.push("record: not UTF-8 text".into());
        return false;
    };
    match text.trim_start().as_bytes().first() {
        Some(b'{') => {}
        None => {
            why.push("record: empty".into());
            return false;
        }
        Some(_) => {
            // Valid JSON of another shape (an array, a number), or no JSON at all.
            why.push(match serde_json::from_str::<&RawValue>(text) {
                Ok(_) => "record: JSON, but not an object".into(),
                Err(e) => format!("record: not JSON: {e}"),
            });
            return false;
        }
    }
    if scan && scan_flat(text, fields, unknown) {
        return true;
    }
    match serde_json::from_str::<Wire<'_>>(text) {
        Ok(Wire(read, others)) => {
            *fields = read;
            *unknown = others;
            true
        }
        Err(e) => {
            why.push(format!("record: not JSON: {e}"));
            false
        }
    }
}

fn kind_of(
    event_type: Option<Raw<'_>>,
    has_pickup: bool,
    has_dropoff: bool,
    why: &mut Vec<String>,
) -> Option<EventKind> {
    match event_type.map(text_of).unwrap_or(Text::Blank) {
        Text::Value(v) if !v.is_empty() => {
            let kind = EventKind::parse(&v);
            if kind.is_none() {
                why.push(format!("event_type: unknown {} (expected trip_start, trip_end, start or end)", quote(&v)));
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
                why.push("event_type: missing, and both pickup_datetime and dropoff_datetime are present".into());
                None
            }
            (false, false) => {
                why.push("event_type: missing, and neither pickup_datetime nor dropoff_datetime tells the kind".into());
                None
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::Array;
    use proptest::prelude::*;

    const SOME_KEYS: &[&str] = &[
        "event_type",
        "trip_id",
        "pickup_datetime",
        "dropoff_datetime",
        "fare_amount",
        "vendor_id",
        "other",
        "trip_i\\u0064",
        "",
    ];
    const VALUES: &[&str] = &[
        r#""t1""#,
        r#""""#,
        r#""  ""#,
        r#""trip_start""#,
        r#""end""#,
        r#""start ""#,
        r#""2024-05-25 13:19:00""#,
        r#""a\"b""#,
        r#""\u0074rip_end""#,
        "\"x\u{1}y\"",
        r#""é""#,
        "93",
        "-0.5",
        "0",
        "01",
        "1.",
        ".5",
        "1e5",
        "-",
        "1.5E+3",
        "2e",
        "40.09620692463166",
        "null",
        "true",
        "false",
        "nul",
        "nulll",
        r#"{"a":1}"#,
        "[1]",
        "[]",
        "{}",
        r#""abcdefghij\"klmnop""#,
        "\"abcdefghijk\u{1f}lmnopq\"",
        r#""éééééééééé""#,
        r#""abcdefgh""#,
        r#""abcdefghijklmnopqrstuvw""#,
    ];
    const SPACE: &[&str] = &["", " ", "\n\t", "\r "];

    prop_compose! {
        fn record()(
            pairs in prop::collection::vec(
                (0..SOME_KEYS.len(), 0..VALUES.len(), 0..SPACE.len(), 0..SPACE.len()), 0..8),
            edge in 0..SPACE.len(),
            cut in prop::option::weighted(0.15, 0usize..200),
            tail in prop_oneof![8 => Just(""), 1 => Just(" x"), 1 => Just(","), 1 => Just("}")],
        ) -> Vec<u8> {
            let body: Vec<String> = pairs
                .iter()
                .map(|&(k, v, a, b)| format!("{}\"{}\"{}:{}{}", SPACE[a], SOME_KEYS[k], SPACE[b], SPACE[a], VALUES[v]))
                .collect();
            let mut text = format!("{}{{{}}}{}{}", SPACE[edge], body.join(","), SPACE[edge], tail);
            if let Some(cut) = cut {
                let mut at = cut.min(text.len());
                while !text.is_char_boundary(at) {
                    at -= 1;
                }
                text.truncate(at);
            }
            text.into_bytes()
        }
    }

    prop_compose! {
        /// Keys in producer order (the order the scan predicts), with any values.
        fn ordered_record()(
            keys in prop::sample::subsequence(KEYS.to_vec(), 0..=N_KEYS),
            values in prop::collection::vec(0..VALUES.len(), N_KEYS),
        ) -> Vec<u8> {
            let body: Vec<String> = keys.iter().zip(values).map(|(k, v)| format!("\"{k}\":{}", VALUES[v])).collect();
            format!("{{{}}}", body.join(",")).into_bytes()
        }
    }

    proptest! {
        #[test]
        fn the_fast_scan_and_serde_decode_alike(
            records in prop::collection::vec(prop_oneof![record(), ordered_record()], 1..6),
        ) {
            let fast = decode_with(records.iter().map(Vec::as_slice), true);
            let slow = decode_with(records.iter().map(Vec::as_slice), false);
            prop_assert_eq!(&fast.reasons, &slow.reasons);
            prop_assert_eq!(&fast.batch, &slow.batch);
            prop_assert_eq!(&fast.is_start, &slow.is_start);
            prop_assert_eq!(&fast.is_end, &slow.is_end);
            prop_assert_eq!(&fast.wrong_type, &slow.wrong_type);
            prop_assert_eq!(&fast.extras, &slow.extras);
        }
    }

    #[test]
    fn producer_records_take_the_fast_scan() {
        let start = r#"{"event_type":"trip_start","trip_id":"c66ce556bc","pickup_location_id":93,"dropoff_location_id":93,"vendor_id":1,"pickup_datetime":"2024-05-25 13:19:00","estimated_dropoff_datetime":"2024-05-25 14:03:00","estimated_fare_amount":34.18595283806629}"#;
        let mut fields = [None; N_KEYS];
        let mut unknown = Vec::new();
        assert!(scan_flat(start, &mut fields, &mut unknown), "a flat record");
        assert!(unknown.is_empty());
        assert_eq!(fields[0], Some(Raw::Plain("trip_start")));
        assert_eq!(fields[7], Some(Raw::Json("34.18595283806629")));
        assert_eq!(fields[8], None);
        assert!(!scan_flat(r#"{"trip_id":"a\"b"}"#, &mut fields, &mut unknown), "escapes go to serde");
        assert_eq!(slot(b"event_type"), Some(0));
        for (i, name) in COLUMNS.iter().enumerate() {
            assert_eq!(slot(name.as_bytes()), Some(i + 1), "{name}");
        }
        for unknown in [&b"tip_amounT"[..], b"trip_idx", b"", &[b'a'; 200]] {
            assert_eq!(slot(unknown), None);
        }
        assert!(!scan_flat(r#"{"trip_id":"a","trip_id":null}"#, &mut fields, &mut unknown), "duplicates go to serde");
        assert!(!scan_flat(r#"{"x":null,"x":1}"#, &mut fields, &mut unknown), "and so do unknown ones");
    }

    #[test]
    fn serde_reads_what_the_scan_leaves() {
        let d = one(
            r#"{"trip_i\u0064":"t1","extra":{"a":[1]},"event_type":"end","dropoff_datetime":"2024-05-25 14:05:00"}"#,
        );
        assert!(d.reasons[0].is_empty(), "{:?}", d.reasons);
        assert_eq!(d.column("trip_id").value(0), "t1");
        assert!(d.is_end.value(0));
        assert_eq!(d.extras.value(0), r#"{"extra":{"a":[1]}}"#, "an unknown object is kept");
        let d = one(r#"{"trip_id":"a","trip_id":null}"#);
        assert_eq!(d.reasons[0].len(), 1);
        assert!(d.reasons[0][0].starts_with("record: not JSON: duplicate field `trip_id`"), "{:?}", d.reasons);
    }

    fn one(record: &str) -> Decoded {
        decode(std::iter::once(record.as_bytes()))
    }

    #[test]
    fn keys_no_field_names_are_kept_sorted_and_compact_and_nulls_are_absent() {
        let d = decode(
            [
                &br#"{"event_type":"end","trip_id":"t1","surge":1.50,"dropoff_datetime":"2024-05-25 14:05:00","app":"v2","gone":null}"#[..],
                br#"{"event_type":"end","trip_id":"t2","app":"\u0076 3","tags":[ 1, 2 ]}"#,
                br#"{"event_type":"end","trip_id":"t3"}"#,
                br#"{"event_type":"end","trip_id":"t4","x":1,"x":2}"#,
                br#"{"x":1,"trip_id":"t5","x":null}"#,
            ]
            .into_iter(),
        );
        assert_eq!(d.extras.value(0), r#"{"app":"v2","surge":1.50}"#);
        assert_eq!(d.extras.value(1), r#"{"app":"\u0076 3","tags":[1,2]}"#, "values as sent");
        assert!(d.extras.is_null(2));
        for row in [3, 4] {
            assert!(d.reasons[row][0].contains("duplicate field `x`"), "{:?}", d.reasons[row]);
            assert!(d.extras.is_null(row));
        }
    }

    #[test]
    fn numbers_keep_their_text_and_strings_are_unquoted() {
        let d = one(
            r#"{"event_type":"end","trip_id":"t1","fare_amount":40.09620692463166,"rate_code":"5.0","dropoff_datetime":"2024-05-25 14:05:00"}"#,
        );
        assert!(d.reasons[0].is_empty(), "{:?}", d.reasons);
        assert_eq!(d.column("fare_amount").value(0), "40.09620692463166");
        assert_eq!(d.column("rate_code").value(0), "5.0");
        assert!(d.is_end.value(0) && !d.is_start.value(0));
    }

    #[test]
    fn blanks_are_nulls_but_an_empty_trip_id_is_kept() {
        let d =
            one(r#"{"trip_id":"","pickup_datetime":"2024-05-25 13:19:00","vendor_id":"","dropoff_location_id":null}"#);
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
