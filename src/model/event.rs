//! Event kinds, field names and the Arrow schemas shared by every stage.
//!
//! A trip has two field groups: the start group, versioned by `pickup_datetime`, and the
//! end group, versioned by `dropoff_datetime` (docs/design.md §3). [`FIELDS`] is the single
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

    /// The field whose value versions this kind's group: the group's first datetime.
    pub fn version_field(self) -> &'static str {
        self.fields()[self.version_index()].name
    }

    /// The position of [`EventKind::version_field`] in [`EventKind::fields`].
    pub const fn version_index(self) -> usize {
        match self {
            EventKind::Start => START_VERSION,
            EventKind::End => END_VERSION,
        }
    }

    /// The column of this kind's first field wherever the columns are `trip_id` and then
    /// [`FIELDS`]: the wire columns, the validated batch, the stored cells, the trip table.
    pub const fn first_column(self) -> usize {
        match self {
            EventKind::Start => 1,
            EventKind::End => 1 + START_LEN,
        }
    }

    /// The column of [`EventKind::version_field`], counted as [`EventKind::first_column`].
    pub const fn version_column(self) -> usize {
        self.first_column() + self.version_index()
    }

    /// The fields of this kind's group, `trip_id` excluded, in table order.
    pub const fn fields(self) -> &'static [FieldSpec] {
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

impl FieldType {
    /// Its name, as a fields file and `tripflow fields` write it.
    pub fn name(self) -> &'static str {
        match self {
            FieldType::Integer => "integer",
            FieldType::DateTime => "datetime",
            FieldType::Decimal => "decimal",
        }
    }
}

/// A DynamoDB attribute type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttributeType {
    /// A number (`N`): exact decimal text, which DynamoDB compares as a number.
    Number,
    /// A string (`S`).
    String,
}

/// One field of a trip event: an entry of [`FIELDS`].
#[derive(Debug, Clone, Copy)]
pub struct FieldSpec {
    /// Name on the wire, in the trip table, in DynamoDB and in SQL.
    pub name: &'static str,
    /// The kind of event that carries it, and so its group.
    pub kind: EventKind,
    /// Its rule, which gives its Arrow type.
    pub ty: FieldType,
    /// Whether an event of its kind must carry it.
    pub required: bool,
    /// Its column's name in a CSV file of its kind.
    pub csv_header: &'static str,
    /// Its attribute's type in the DynamoDB table.
    pub dynamodb: AttributeType,
}

const fn field(name: &'static str, kind: EventKind, ty: FieldType, required: bool) -> FieldSpec {
    // The original lab's CSV columns carry the wire names, and DynamoDB keeps numbers as
    // numbers and datetimes as their fixed-width text (which sorts as time does).
    let dynamodb = match ty {
        FieldType::Integer | FieldType::Decimal => AttributeType::Number,
        FieldType::DateTime => AttributeType::String,
    };
    FieldSpec { name, kind, ty, required, csv_header: name, dynamodb }
}

use EventKind::{End, Start};
use FieldType::{DateTime, Decimal, Integer};
const REQUIRED: bool = true;
const OPTIONAL: bool = false;

/// The registry of the trip's fields (`trip_id` aside, which every event carries):
/// decode, validation, CSV reading, the store groups, the SQLite schema, the DynamoDB
/// attributes and export are all driven from it. The start group comes first, then the
/// end group, each in table order; a group's first datetime is its version, which the
/// merge compares (docs/design.md §3). Adding a field is one line here.
pub const FIELDS: &[FieldSpec] = &[
    field("pickup_location_id", Start, Integer, REQUIRED),
    field("dropoff_location_id", Start, Integer, REQUIRED),
    field("vendor_id", Start, Integer, REQUIRED),
    field("pickup_datetime", Start, DateTime, REQUIRED),
    field("estimated_dropoff_datetime", Start, DateTime, OPTIONAL),
    field("estimated_fare_amount", Start, Decimal, OPTIONAL),
    field("dropoff_datetime", End, DateTime, REQUIRED),
    field("rate_code", End, Decimal, OPTIONAL),
    field("passenger_count", End, Decimal, OPTIONAL),
    field("trip_distance", End, Decimal, OPTIONAL),
    field("fare_amount", End, Decimal, REQUIRED),
    field("tip_amount", End, Decimal, OPTIONAL),
    field("payment_type", End, Decimal, OPTIONAL),
    field("trip_type", End, Decimal, OPTIONAL),
];

/// Number of start fields: the registry's leading run of them.
pub const START_LEN: usize = count_leading(Start);
/// Number of end fields.
pub const END_LEN: usize = FIELDS.len() - START_LEN;
/// The start group, in table order.
pub const START_FIELDS: &[FieldSpec] = FIELDS.split_at(START_LEN).0;
/// The end group, in table order.
pub const END_FIELDS: &[FieldSpec] = FIELDS.split_at(START_LEN).1;
const START_VERSION: usize = first_datetime(START_FIELDS);
const END_VERSION: usize = first_datetime(END_FIELDS);

const fn count_leading(kind: EventKind) -> usize {
    let mut n = 0;
    while n < FIELDS.len() && FIELDS[n].kind as u8 == kind as u8 {
        n += 1;
    }
    n
}

/// The index of the first datetime of `fields`, which must be required (checked at
/// compile time: a group without a version cannot be merged).
const fn first_datetime(fields: &[FieldSpec]) -> usize {
    let mut i = 0;
    while i < fields.len() {
        if matches!(fields[i].ty, FieldType::DateTime) {
            assert!(fields[i].required, "a group's version (its first datetime) must be required");
            return i;
        }
        i += 1;
    }
    panic!("every group needs a datetime to version it")
}

// The registry is grouped: every start field before every end field.
const _: () = {
    let mut i = START_LEN;
    while i < FIELDS.len() {
        assert!(FIELDS[i].kind as u8 == End as u8, "FIELDS lists the start group, then the end group");
        i += 1;
    }
};

/// The header of a CSV file of `kind`, as the original lab wrote them: `trip_id` first in
/// `trip_start.csv`, last in `trip_end.csv`.
pub fn csv_header(kind: EventKind) -> Vec<&'static str> {
    let fields = kind.fields().iter().map(|f| f.csv_header);
    match kind {
        EventKind::Start => std::iter::once("trip_id").chain(fields).collect(),
        EventKind::End => fields.chain(std::iter::once("trip_id")).collect(),
    }
}

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
            assert!(kind.fields().iter().all(|f| f.kind == kind));
        }
        // The names the design, the SQL KPIs and the DynamoDB conditions know them by.
        assert_eq!(EventKind::Start.version_field(), "pickup_datetime");
        assert_eq!(EventKind::End.version_field(), "dropoff_datetime");
        assert_eq!(START_LEN + END_LEN, FIELDS.len());
    }

    #[test]
    fn csv_headers_name_every_field_once() {
        for kind in [EventKind::Start, EventKind::End] {
            let header = csv_header(kind);
            assert!(header.contains(&"trip_id"));
            assert_eq!(header.len(), kind.fields().len() + 1);
            for spec in kind.fields() {
                assert!(header.contains(&spec.name), "{} missing", spec.name);
            }
        }
        assert_eq!(TRIP_SCHEMA.fields().len(), 1 + START_FIELDS.len() + END_FIELDS.len() + 3);
    }
}
