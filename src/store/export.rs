//! Export: stored items → Arrow batches of [`TRIP_SCHEMA`], or of the columns a job reads.
//!
//! Values are parsed straight from their stored text into typed builders: datetimes in
//! the fixed-width UTC form, decimals as canonical text ([`crate::model::decimal`]), with
//! Arrow's cast kernel kept only for a value outside those forms. (Casting whole text
//! columns with the kernel spent a fifth of a 1M-trip KPI job formatting strings inside
//! its decimal parser.)

use std::collections::BTreeSet;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanBuilder, Date32Builder, Decimal128Builder, Int64Builder, RecordBatch, StringBuilder,
    TimestampMicrosecondBuilder,
};
use arrow::compute::CastOptions;
use arrow::datatypes::{Decimal128Type, SchemaRef, TimestampMicrosecondType};

use super::{EndGroup, StartGroup, TripItem};
use crate::error::{Context, Stage};
use crate::model::event::{
    DECIMAL_PRECISION, DECIMAL_SCALE, DECIMAL_TYPE, EventKind, FIELDS, FieldType, TRIP_SCHEMA, UTC, timestamp_type,
};
use crate::model::{cast, decimal, timestamp};
use crate::{Error, Result};

/// Rows per Arrow batch of an export, the same for every backend so their files agree.
pub const EXPORT_BATCH_ROWS: usize = 65_536;

/// Columns a backend stores: `trip_id`, the start group, the end group, in
/// [`TRIP_SCHEMA`] order. The schema's last three columns are derived from them.
pub const STORED_COLUMNS: usize = 1 + FIELDS.len();
/// The columns of the groups' versions.
pub(crate) const PICKUP: usize = EventKind::Start.version_column();
pub(crate) const DROPOFF: usize = EventKind::End.version_column();
const TRIP_DATE: usize = STORED_COLUMNS;
const TRIP_COMPLETED: usize = STORED_COLUMNS + 1;
const LAST_UPDATED: usize = STORED_COLUMNS + 2;
const MICROS_PER_DAY: i64 = 86_400_000_000;

/// The columns of [`TRIP_SCHEMA`] an export fills, in schema order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Projection(Vec<usize>);

impl Projection {
    /// Every column.
    pub fn all() -> Self {
        Projection((0..TRIP_SCHEMA.fields().len()).collect())
    }

    /// These columns, by index into [`TRIP_SCHEMA`]. With none, `trip_completed` (one
    /// bit a row) is kept, so the batches still carry their row counts.
    pub fn of(columns: impl IntoIterator<Item = usize>) -> Self {
        let mut set: BTreeSet<usize> = columns.into_iter().filter(|&c| c < TRIP_SCHEMA.fields().len()).collect();
        if set.is_empty() {
            set.insert(TRIP_COMPLETED);
        }
        Projection(set.into_iter().collect())
    }

    /// The indices into [`TRIP_SCHEMA`].
    pub fn columns(&self) -> &[usize] {
        &self.0
    }

    /// True when every column is kept.
    pub fn is_all(&self) -> bool {
        self.0.len() == TRIP_SCHEMA.fields().len()
    }

    /// The exported batches' schema.
    pub fn schema(&self) -> SchemaRef {
        Arc::new(TRIP_SCHEMA.project(&self.0).expect("projection indices are in range"))
    }

    /// The stored columns the kept ones are built from, in table order.
    pub fn stored(&self) -> Vec<usize> {
        let mut stored = BTreeSet::new();
        for &c in &self.0 {
            match c {
                TRIP_DATE => {
                    stored.insert(DROPOFF);
                }
                TRIP_COMPLETED | LAST_UPDATED => {
                    stored.extend([PICKUP, DROPOFF]);
                }
                c => {
                    stored.insert(c);
                }
            }
        }
        stored.into_iter().collect()
    }
}

/// One stored value, as a backend reads it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Cell<'a> {
    /// Absent.
    #[default]
    Null,
    /// An integer the backend keeps as one.
    Int(i64),
    /// Text (and numbers a backend keeps as text).
    Text(&'a str),
    /// A datetime a backend keeps as microseconds since the epoch, UTC.
    Time(i64),
}

/// A trip's cells as [`ExportBuilder::push_into`] takes them: `trip_id`, then each
/// group's values (all null for a group that is `None`), integers as [`Cell::Int`].
pub(crate) fn cells_of<'a>(
    trip_id: &'a str,
    start: Option<&'a StartGroup>,
    end: Option<&'a EndGroup>,
) -> [Cell<'a>; STORED_COLUMNS] {
    let mut cells = [Cell::Null; STORED_COLUMNS];
    cells[0] = Cell::Text(trip_id);
    let groups = [(EventKind::Start, start.map(|s| &s.values()[..])), (EventKind::End, end.map(|e| &e.values()[..]))];
    for (kind, values) in groups {
        for ((spec, value), cell) in
            kind.fields().iter().zip(values.into_iter().flatten()).zip(&mut cells[kind.first_column()..])
        {
            *cell = match (spec.ty, value.as_deref()) {
                (_, None) => Cell::Null,
                (FieldType::Integer, Some(v)) => v.parse().map_or(Cell::Text(v), Cell::Int),
                (_, Some(v)) => Cell::Text(v),
            };
        }
    }
    cells
}

enum Column {
    Text(StringBuilder),
    Int(Int64Builder),
    Time(TimestampMicrosecondBuilder),
    Decimal(Decimal128Builder),
    Date(Date32Builder),
    Bool(BooleanBuilder),
}

impl Column {
    fn for_index(index: usize) -> Self {
        match index {
            0 => Column::Text(StringBuilder::new()),
            TRIP_DATE => Column::Date(Date32Builder::new()),
            TRIP_COMPLETED => Column::Bool(BooleanBuilder::new()),
            LAST_UPDATED => Column::Time(TimestampMicrosecondBuilder::new().with_timezone(UTC)),
            i => match FIELDS[i - 1].ty {
                FieldType::Integer => Column::Int(Int64Builder::new()),
                FieldType::DateTime => Column::Time(TimestampMicrosecondBuilder::new().with_timezone(UTC)),
                FieldType::Decimal => Column::Decimal(
                    Decimal128Builder::new()
                        .with_precision_and_scale(DECIMAL_PRECISION, DECIMAL_SCALE)
                        .expect("the decimal type is valid"),
                ),
            },
        }
    }

    fn finish(&mut self) -> ArrayRef {
        match self {
            Column::Text(b) => Arc::new(b.finish()),
            Column::Int(b) => Arc::new(b.finish()),
            Column::Time(b) => Arc::new(b.finish()),
            Column::Decimal(b) => Arc::new(b.finish()),
            Column::Date(b) => Arc::new(b.finish()),
            Column::Bool(b) => Arc::new(b.finish()),
        }
    }
}

/// Builds export batches from stored items, one typed builder per kept column.
pub struct ExportBuilder {
    projection: Projection,
    schema: SchemaRef,
    columns: Vec<Column>,
    rows: usize,
}

impl ExportBuilder {
    /// An empty builder of the `projection`'s columns.
    pub fn new(projection: Projection) -> Self {
        ExportBuilder {
            schema: projection.schema(),
            columns: projection.columns().iter().map(|&i| Column::for_index(i)).collect(),
            projection,
            rows: 0,
        }
    }

    /// Rows added since the last [`ExportBuilder::finish`].
    pub fn len(&self) -> usize {
        self.rows
    }

    /// True when no row is pending.
    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// Adds one row, given by its stored cells (those outside [`Projection::stored`] may
    /// be `Null`), moving a full batch of [`EXPORT_BATCH_ROWS`] rows to `batches`.
    ///
    /// # Errors
    /// When a stored value does not convert to its column's type (a corrupt table).
    pub fn push_into(&mut self, cells: &[Cell<'_>; STORED_COLUMNS], batches: &mut Vec<RecordBatch>) -> Result<()> {
        self.push_row(cells).map_err(|e| e.into_error(cells[0]))?;
        self.rows += 1;
        if self.rows == EXPORT_BATCH_ROWS {
            batches.push(self.finish()?);
        }
        Ok(())
    }

    fn push_row(&mut self, cells: &[Cell<'_>; STORED_COLUMNS]) -> Result<(), Unreadable> {
        let pickup = timestamp(cells[PICKUP], PICKUP)?;
        let dropoff = timestamp(cells[DROPOFF], DROPOFF)?;
        for (&index, column) in self.projection.0.iter().zip(&mut self.columns) {
            match column {
                Column::Text(b) => match cells[index] {
                    Cell::Text(v) => b.append_value(v),
                    Cell::Null => b.append_null(),
                    Cell::Int(v) => b.append_value(v.to_string()),
                    Cell::Time(v) => b.append_value(timestamp::format(v)),
                },
                Column::Int(b) => b.append_option(integer(cells[index], index)?),
                Column::Time(b) => b.append_option(match index {
                    PICKUP => pickup,
                    DROPOFF => dropoff,
                    LAST_UPDATED => Some(pickup.max(dropoff).ok_or_else(|| not_convertible(index, "no version"))?),
                    _ => timestamp(cells[index], index)?,
                }),
                Column::Decimal(b) => b.append_option(decimal(cells[index], index)?),
                Column::Date(b) => b.append_option(dropoff.map(|t| t.div_euclid(MICROS_PER_DAY) as i32)),
                Column::Bool(b) => b.append_value(pickup.is_some() && dropoff.is_some()),
            }
        }
        Ok(())
    }

    /// [`ExportBuilder::push_into`] for an item read whole.
    ///
    /// # Errors
    /// See [`ExportBuilder::push_into`].
    pub fn push_item_into(&mut self, item: &TripItem, batches: &mut Vec<RecordBatch>) -> Result<()> {
        self.push_into(&cells_of(&item.trip_id, item.start.as_ref(), item.end.as_ref()), batches)
    }

    /// The pending rows as one batch.
    ///
    /// # Errors
    /// Never in practice: every column has the schema's type and the same length.
    pub fn finish(&mut self) -> Result<RecordBatch> {
        let arrays = self.columns.iter_mut().map(Column::finish).collect();
        self.rows = 0;
        RecordBatch::try_new(self.schema.clone(), arrays).stage(Stage::Store, "export")
    }

    /// Ends an export: the pending rows join `batches`, and an export of no rows is one
    /// empty batch, so the caller always has the schema.
    ///
    /// # Errors
    /// See [`ExportBuilder::finish`].
    pub fn finish_into(mut self, mut batches: Vec<RecordBatch>) -> Result<Vec<RecordBatch>> {
        if !self.is_empty() || batches.is_empty() {
            batches.push(self.finish()?);
        }
        Ok(batches)
    }
}

/// A stored value its column's type cannot hold: which column, and the value.
#[derive(Debug)]
struct Unreadable {
    index: usize,
    value: String,
}

fn not_convertible(index: usize, value: &str) -> Unreadable {
    Unreadable { index, value: value.to_owned() }
}

impl Unreadable {
    /// The error of the item whose `trip_id` cell is `trip_id`: what cannot be read, and
    /// how to repair it. Validation admits no such value (docs/design.md §2), so the item was
    /// written by an older build or edited by hand.
    fn into_error(self, trip_id: Cell<'_>) -> Error {
        let trip_id = match trip_id {
            Cell::Text(v) => v.to_owned(),
            Cell::Int(v) => v.to_string(),
            Cell::Time(v) => timestamp::format(v),
            Cell::Null => String::new(),
        };
        let field = TRIP_SCHEMA.field(self.index);
        Error::store(format!(
            "trip {trip_id:?}: stored {} {:?} cannot be read as {}; an older build wrote it or it was edited by \
             hand. Rewrite that attribute in the trip table (or delete the item and replay its events), then run \
             the KPI job again",
            field.name(),
            self.value,
            field.data_type(),
        ))
    }
}

fn strict() -> CastOptions<'static> {
    CastOptions { safe: false, ..Default::default() }
}

fn integer(cell: Cell<'_>, index: usize) -> Result<Option<i64>, Unreadable> {
    match cell {
        Cell::Null => Ok(None),
        Cell::Int(v) => Ok(Some(v)),
        Cell::Text(v) => v.parse().map(Some).map_err(|_| not_convertible(index, v)),
        Cell::Time(v) => Err(not_convertible(index, &timestamp::format(v))),
    }
}

/// A stored datetime: the fixed-width `YYYY-MM-DDTHH:MM:SS.ffffffZ` read by position,
/// anything else through Arrow's cast.
fn timestamp(cell: Cell<'_>, index: usize) -> Result<Option<i64>, Unreadable> {
    match cell {
        Cell::Null => Ok(None),
        Cell::Int(v) => Err(not_convertible(index, &v.to_string())),
        Cell::Time(v) if timestamp::in_range(v) => Ok(Some(v)),
        Cell::Time(v) => Err(not_convertible(index, &timestamp::format(v))),
        Cell::Text(v) => {
            cast::cast_one::<TimestampMicrosecondType>(v, &timestamp_type(), &strict(), timestamp::parse_plain)
                .map_err(|_| not_convertible(index, v))
        }
    }
}

/// A stored decimal: canonical text (`-12.5`) read by [`decimal::parse_plain`], anything
/// else (an exponent, more fraction digits than the scale) through Arrow's cast.
fn decimal(cell: Cell<'_>, index: usize) -> Result<Option<i128>, Unreadable> {
    match cell {
        Cell::Null => Ok(None),
        Cell::Int(v) => Ok(Some(i128::from(v) * 10i128.pow(DECIMAL_SCALE as u32))),
        Cell::Text(v) => cast::cast_one::<Decimal128Type>(v, &DECIMAL_TYPE, &strict(), |v| {
            decimal::parse_plain(v, DECIMAL_PRECISION, DECIMAL_SCALE)
        })
        .map_err(|_| not_convertible(index, v)),
        Cell::Time(v) => Err(not_convertible(index, &timestamp::format(v))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::decimal::decimal_text;
    use crate::model::timestamp::format as format_timestamp;
    use arrow::array::{Array, Decimal128Array, StringArray};
    use arrow::compute::cast_with_options;
    use proptest::prelude::*;

    fn cast_decimal(v: &str) -> Option<i128> {
        let a = cast_with_options(&StringArray::from(vec![v]), &DECIMAL_TYPE, &strict()).ok()?;
        let a = a.as_any().downcast_ref::<Decimal128Array>()?.clone();
        a.is_valid(0).then(|| a.value(0))
    }

    proptest! {
        #[test]
        fn stored_decimals_read_back_as_arrow_casts_them(v in -(10i128.pow(38) - 1)..10i128.pow(38)) {
            let text = decimal_text(v);
            prop_assert_eq!(decimal(Cell::Text(&text), 6).unwrap(), Some(v));
            prop_assert_eq!(cast_decimal(&text), Some(v));
        }

        #[test]
        fn stored_datetimes_read_back_exactly(micros in -62_135_596_800_000_000i64..253_402_300_799_999_999) {
            let text = format_timestamp(micros);
            prop_assert_eq!(timestamp(Cell::Text(&text), PICKUP).unwrap(), Some(micros));
        }
    }

    #[test]
    fn other_forms_read_as_the_cast_kernel_reads_them() {
        for v in ["1.5e2", "0.1234567890123456789", "+7", "12,5", "1.", "x"] {
            assert_eq!(decimal(Cell::Text(v), 6).ok().flatten(), cast_decimal(v), "{v}");
        }
        assert!(decimal(Cell::Text("12,5"), 6).is_err());
        assert_eq!(
            timestamp(Cell::Text("2024-05-25T13:19:00Z"), PICKUP).unwrap(),
            timestamp::parse_plain("2024-05-25T13:19:00.000000Z")
        );
        assert!(timestamp(Cell::Text("yesterday"), PICKUP).is_err());
    }

    #[test]
    fn derived_columns_follow_the_stored_versions() {
        let projection = Projection::of([TRIP_DATE, TRIP_COMPLETED, LAST_UPDATED]);
        assert_eq!(projection.stored(), vec![PICKUP, DROPOFF]);
        let mut builder = ExportBuilder::new(projection);
        let mut cells = [Cell::Null; STORED_COLUMNS];
        cells[PICKUP] = Cell::Text("2024-05-25T23:50:00.000000Z");
        builder.push_into(&cells, &mut Vec::new()).unwrap();
        cells[DROPOFF] = Cell::Text("2024-05-26T00:10:00.000000Z");
        builder.push_into(&cells, &mut Vec::new()).unwrap();
        let batch = builder.finish().unwrap();
        let text = arrow::util::pretty::pretty_format_batches(&[batch]).unwrap().to_string();
        assert!(text.contains("|            | false          | 2024-05-25T23:50:00Z |"), "{text}");
        assert!(text.contains("| 2024-05-26 | true           | 2024-05-26T00:10:00Z |"), "{text}");
    }

    #[test]
    fn no_columns_keeps_the_row_count() {
        let projection = Projection::of([]);
        assert_eq!(projection.schema().field(0).name(), "trip_completed");
        assert!(Projection::all().is_all());
    }

    #[test]
    fn an_unreadable_stored_value_names_the_trip_column_value_and_repair() {
        let mut builder = ExportBuilder::new(Projection::all());
        let mut cells = [Cell::Null; STORED_COLUMNS];
        cells[0] = Cell::Text("p1");
        cells[PICKUP] = Cell::Text("-0001-12-31T23:30:00.000000Z");
        let e = builder.push_into(&cells, &mut Vec::new()).unwrap_err().to_string();
        assert!(
            e.starts_with("store: trip \"p1\": stored pickup_datetime \"-0001-12-31T23:30:00.000000Z\" cannot be read"),
            "{e}"
        );
        assert!(e.contains("Rewrite that attribute"), "{e}");
        assert!(builder.is_empty(), "the unreadable row is not counted");
    }
}
