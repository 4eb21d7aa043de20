//! Event kinds, field names and the Arrow schemas shared by every stage.
//!
//! A trip has two field groups: the start group, versioned by `pickup_datetime`, and the
//! end group, versioned by `dropoff_datetime` (docs/design.md §3). The tables here are the single
//! source of those names and of each field's rule (docs/design.md §2).

use std::sync::{Arc, LazyLock};

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};

/// Scale of every decimal column: enough for the 14 to 16 significant digits of real
/// fares, with 20 integer digits to spare.
pub const DECIMAL_SCALE: i8 = 18;
/// Precision of every decimal column.
pub const DECIMAL_PRECISION: u8 = 38;
/// Arrow type of decimal fields.
pub const DECIMAL_TYPE: DataType = DataType::Decimal128(DECIMAL_PRECISION, DECIMAL_SCALE);
/// Time zone of every timestamp column.
pub const UTC: &str = "UTC";
/// Kinesis' record size limit (data plus partition key), which the embedded stream keeps too.
pub const MAX_RECORD_BYTES: usize = 1024 * 1024;

/// Arrow type of timestamp fields.
pub fn timestamp_type() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some(UTC.into()))
}

/// The two kinds of trip event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventKind {
    /// A trip started: carries the start group.
    Start,
    /// A trip ended: carries the end group.
    End,
}

impl EventKind {
    /// The canonical `event_type` written by tripflow.
    pub fn event_type(self) -> &'static str {
        match self {
            EventKind::Start => "trip_start",
            EventKind::End => "trip_end",
        }
    }

    /// Parses an `event_type` value: `trip_start`/`start`, `trip_end`/`end`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "trip_start" | "start" => Some(EventKind::Start),
            "trip_end" | "end" => Some(EventKind::End),
            _ => None,
        }
    }

    /// The field whose value versions this kind's group.
    pub fn version_field(self) -> &'static str {
        match self {
            EventKind::Start => "pickup_datetime",
            EventKind::End => "dropoff_datetime",
        }
    }

    /// The fields of this kind's group, `trip_id` excluded.
    pub fn fields(self) -> &'static [FieldSpec] {
        match self {
            EventKind::Start => START_FIELDS,
            EventKind::End => END_FIELDS,
        }
    }
}

/// The rule a field's value must follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldType {
    /// A whole number; `93.0` is accepted, `93.5` is not.
    Integer,
    /// ISO 8601 date and time; stored as fixed-width UTC.
    DateTime,
    /// A finite decimal number.
    Decimal,
}

/// One field of a group.
#[derive(Debug, Clone, Copy)]
pub struct FieldSpec {
    /// Name on the wire, in CSV headers and in the table.
    pub name: &'static str,
    /// Its rule.
    pub ty: FieldType,
    /// Whether an event of its kind must carry it.
    pub required: bool,
}

const fn f(name: &'static str, ty: FieldType, required: bool) -> FieldSpec {
    FieldSpec { name, ty, required }
}

/// The start group, in table order. The first `DateTime` field is the version.
pub const START_FIELDS: &[FieldSpec] = &[
    f("pickup_location_id", FieldType::Integer, true),
    f("dropoff_location_id", FieldType::Integer, true),
    f("vendor_id", FieldType::Integer, true),
    f("pickup_datetime", FieldType::DateTime, true),
    f("estimated_dropoff_datetime", FieldType::DateTime, false),
    f("estimated_fare_amount", FieldType::Decimal, false),
];

/// The end group, in table order.
pub const END_FIELDS: &[FieldSpec] = &[
    f("dropoff_datetime", FieldType::DateTime, true),
    f("rate_code", FieldType::Decimal, false),
    f("passenger_count", FieldType::Decimal, false),
    f("trip_distance", FieldType::Decimal, false),
    f("fare_amount", FieldType::Decimal, true),
    f("tip_amount", FieldType::Decimal, false),
    f("payment_type", FieldType::Decimal, false),
    f("trip_type", FieldType::Decimal, false),
];

/// Header of the `trip_start.csv` files of the original pipeline.
pub const START_CSV_HEADER: &[&str] = &[
    "trip_id",
    "pickup_location_id",
    "dropoff_location_id",
    "vendor_id",
    "pickup_datetime",
    "estimated_dropoff_datetime",
    "estimated_fare_amount",
];

/// Header of the `trip_end.csv` files of the original pipeline.
pub const END_CSV_HEADER: &[&str] = &[
    "dropoff_datetime",
    "rate_code",
    "passenger_count",
    "trip_distance",
    "fare_amount",
    "tip_amount",
    "payment_type",
    "trip_type",
    "trip_id",
];

/// The Arrow type a field's rule gives its values.
pub fn arrow_type(ty: FieldType) -> DataType {
    match ty {
        FieldType::Integer => DataType::Int64,
        FieldType::DateTime => timestamp_type(),
        FieldType::Decimal => DECIMAL_TYPE,
    }
}

/// The trip table as the KPI job and ad-hoc SQL see it (`trips`).
///
/// `trip_date` is the UTC date of `dropoff_datetime`, `trip_completed` is true when both
/// groups are stored, `last_updated` is the newest version stored.
pub static TRIP_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    let mut fields = vec![Field::new("trip_id", DataType::Utf8, false)];
    for spec in START_FIELDS.iter().chain(END_FIELDS) {
        fields.push(Field::new(spec.name, arrow_type(spec.ty), true));
    }
    fields.push(Field::new("trip_date", DataType::Date32, true));
    fields.push(Field::new("trip_completed", DataType::Boolean, false));
    fields.push(Field::new("last_updated", timestamp_type(), false));
    Arc::new(Schema::new(fields))
});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_parse_both_spellings() {
        assert_eq!(EventKind::parse("start"), Some(EventKind::Start));
        assert_eq!(EventKind::parse("trip_end"), Some(EventKind::End));
        assert_eq!(EventKind::parse("trip_middle"), None);
    }

    #[test]
    fn groups_lead_with_their_version() {
        for kind in [EventKind::Start, EventKind::End] {
            let first_dt = kind.fields().iter().find(|f| f.ty == FieldType::DateTime).unwrap();
            assert_eq!(first_dt.name, kind.version_field());
        }
    }

    #[test]
    fn csv_headers_name_every_field_once() {
        for (header, kind) in [(START_CSV_HEADER, EventKind::Start), (END_CSV_HEADER, EventKind::End)] {
            assert!(header.contains(&"trip_id"));
            assert_eq!(header.len(), kind.fields().len() + 1);
            for spec in kind.fields() {
                assert!(header.contains(&spec.name), "{} missing", spec.name);
            }
        }
        assert_eq!(TRIP_SCHEMA.fields().len(), 1 + START_FIELDS.len() + END_FIELDS.len() + 3);
    }
}
