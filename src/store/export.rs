//! Export: stored items → Arrow batches of [`TRIP_SCHEMA`], or of the columns a job reads.
//! Past [`TRIP_SCHEMA`]'s columns, a table has a typed column per declared field, then
//! a text column per undeclared field it keeps ([`table_columns`]), both read from each
//! group's [`crate::model::extra::Extras`]. A declared field's values are typed a batch
//! at a time by the rules validation applies ([`crate::model::rules::typed_column`]).
//!
//! Values are parsed straight from their stored text into typed builders: datetimes in
//! the fixed-width UTC form, decimals as canonical text ([`crate::model::decimal`]), with
//! Arrow's cast kernel kept only for a value outside those forms. (Casting whole text
//! columns with the kernel spent a fifth of a 1M-trip KPI job formatting strings inside
//! its decimal parser.)

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanBuilder, Date32Builder, Decimal128Builder, Int64Builder, RecordBatch, StringBuilder,
    TimestampMicrosecondBuilder,
};
use arrow::compute::CastOptions;
use arrow::datatypes::{DataType, Decimal128Type, Field, Schema, SchemaRef, TimestampMicrosecondType};
use serde_json::value::RawValue;

use super::ledger::SeenField;
use super::{EndGroup, Extras, StartGroup, TripItem};
use crate::error::{Context, Stage};
use crate::model::declared::{DeclaredType, Fields};
use crate::model::event::{
    DECIMAL_PRECISION, DECIMAL_SCALE, DECIMAL_TYPE, EventKind, FIELDS, FieldType, TRIP_SCHEMA, UTC, timestamp_type,
};
use crate::model::extra::{column_text, scalar_text};
use crate::model::rules::typed_column;
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

/// The columns of a table an export fills, in schema order: indices into
/// [`TRIP_SCHEMA`], then past its end into the table's further columns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Projection {
    columns: Vec<usize>,
    /// The table's columns after [`TRIP_SCHEMA`]'s: declared and kept fields.
    kept: Arc<[ExtraColumn]>,
}

/// A column of `trips` after the built-in ones, read from the groups' stored
/// [`crate::model::extra::Extras`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtraColumn {
    /// Its name: the field's.
    pub name: String,
    /// How it is read.
    pub from: ExtraSource,
}

/// How an [`ExtraColumn`] reads its values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExtraSource {
    /// An undeclared field, as text: the end group's value, else the start group's.
    Kept,
    /// A declared field of a group, typed by its rule.
    Declared(EventKind, DeclaredType),
    /// A declared field's values as stored, as their JSON text (`tripflow fields check`).
    Stored(EventKind),
}

impl ExtraColumn {
    fn data_type(&self) -> DataType {
        match self.from {
            ExtraSource::Kept | ExtraSource::Stored(_) => DataType::Utf8,
            ExtraSource::Declared(_, ty) => ty.arrow_type(),
        }
    }
}

/// Number of [`TRIP_SCHEMA`]'s columns, after which the kept ones come.
fn built_in() -> usize {
    TRIP_SCHEMA.fields().len()
}

impl Projection {
    /// Every column of [`TRIP_SCHEMA`].
    pub fn all() -> Self {
        Self::all_with(Arc::from([]))
    }

    /// Every column of [`TRIP_SCHEMA`], then the `kept` columns ([`table_columns`]).
    pub fn all_with(kept: Arc<[ExtraColumn]>) -> Self {
        Projection { columns: (0..built_in() + kept.len()).collect(), kept }
    }

    /// These columns, by index into [`TRIP_SCHEMA`]. With none, `trip_completed` (one
    /// bit a row) is kept, so the batches still carry their row counts.
    pub fn of(columns: impl IntoIterator<Item = usize>) -> Self {
        Self::of_with(columns, Arc::from([]))
    }

    /// These columns, by index into the schema of [`Projection::all_with`]`(kept)`.
    pub fn of_with(columns: impl IntoIterator<Item = usize>, kept: Arc<[ExtraColumn]>) -> Self {
        let width = built_in() + kept.len();
        let mut set: BTreeSet<usize> = columns.into_iter().filter(|&c| c < width).collect();
        if set.is_empty() {
            set.insert(TRIP_COMPLETED);
        }
        Projection { columns: set.into_iter().collect(), kept }
    }

    /// The table's columns after [`TRIP_SCHEMA`]'s.
    pub fn kept(&self) -> Arc<[ExtraColumn]> {
        self.kept.clone()
    }

    /// Every column of the same table.
    pub fn whole(&self) -> Self {
        Self::all_with(self.kept.clone())
    }

    /// The indices into the table's schema.
    pub fn columns(&self) -> &[usize] {
        &self.columns
    }

    /// True when every column is kept.
    pub fn is_all(&self) -> bool {
        self.columns.len() == built_in() + self.kept.len()
    }

    /// True when a kept column is among the columns: the export then needs each
    /// group's undeclared fields.
    pub fn has_kept(&self) -> bool {
        self.columns.last().is_some_and(|&c| c >= built_in())
    }

    /// The table's whole schema: [`TRIP_SCHEMA`], then a column per declared field and a
    /// nullable text column per kept one.
    pub fn table_schema(&self) -> SchemaRef {
        trip_schema_with(&self.kept)
    }

    /// The exported batches' schema.
    pub fn schema(&self) -> SchemaRef {
        Arc::new(self.table_schema().project(&self.columns).expect("projection indices are in range"))
    }

    /// The stored columns the kept ones are built from, in table order (the kept
    /// columns come from each group's undeclared fields: see [`Projection::has_kept`]).
    pub fn stored(&self) -> Vec<usize> {
        let mut stored = BTreeSet::new();
        for &c in &self.columns {
            match c {
                TRIP_DATE => {
                    stored.insert(DROPOFF);
                }
                TRIP_COMPLETED | LAST_UPDATED => {
                    stored.extend([PICKUP, DROPOFF]);
                }
                c if c >= built_in() => {}
                c => {
                    stored.insert(c);
                }
            }
        }
        stored.into_iter().collect()
    }
}

/// A stored value of a declared field that its rule cannot read.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Misfit {
    /// The trip.
    pub trip_id: String,
    /// The declared field.
    pub field: String,
    /// The value as stored (its JSON text).
    pub value: String,
    /// Why it does not read, as validation would say it.
    pub reason: String,
}

/// Every stored value of a field `fields` declares that its declared type cannot read:
/// what the KPI export would stop at, found before the file is deployed
/// (`tripflow fields check`).
///
/// # Errors
/// When the store fails.
pub async fn misfits(store: &dyn super::TripStore, fields: &Fields) -> Result<Vec<Misfit>> {
    use arrow::array::{Array, AsArray};
    let columns: Arc<[ExtraColumn]> = fields
        .declared()
        .iter()
        .map(|f| ExtraColumn { name: f.name.clone(), from: ExtraSource::Stored(f.kind) })
        .collect();
    let projection = Projection::of_with(std::iter::once(0).chain(built_in()..built_in() + columns.len()), columns);
    let mut found = Vec::new();
    for batch in store.export(None, &projection).await? {
        let ids = batch.column(0).as_string::<i32>();
        for (k, f) in fields.declared().iter().enumerate() {
            let stored = batch.column(1 + k).as_string::<i32>();
            let mut misfit = |row: usize, reason: String| {
                found.push(Misfit {
                    trip_id: ids.value(row).to_owned(),
                    field: f.name.clone(),
                    value: stored.value(row).to_owned(),
                    reason,
                });
            };
            let mut texts = Vec::with_capacity(stored.len());
            for row in 0..stored.len() {
                texts.push(match stored.is_valid(row).then(|| scalar_text(stored.value(row))) {
                    None | Some(Ok(None)) => None,
                    Some(Ok(Some(text))) => Some(text),
                    Some(Err(got)) => {
                        misfit(row, format!("wrong type: expected a string or a number, got {got}"));
                        None
                    }
                });
            }
            let Some(rule) = f.ty.rule() else { continue };
            let (_, rejected) =
                typed_column(rule, &arrow::array::StringArray::from(texts)).stage(Stage::Store, "fields check")?;
            for (row, why) in rejected {
                misfit(row, why);
            }
        }
    }
    found.sort_by(|a, b| (&a.trip_id, &a.field).cmp(&(&b.trip_id, &b.field)));
    Ok(found)
}

/// [`TRIP_SCHEMA`], then a nullable column for each of `kept`.
pub fn trip_schema_with(kept: &[ExtraColumn]) -> SchemaRef {
    if kept.is_empty() {
        return TRIP_SCHEMA.clone();
    }
    let extra = kept.iter().map(|c| Arc::new(Field::new(&c.name, c.data_type(), true)));
    Arc::new(Schema::new(TRIP_SCHEMA.fields().iter().cloned().chain(extra).collect::<Vec<_>>()))
}

/// The columns a table has after the built-in ones: each field `fields` declares, typed,
/// in the file's order; then, sorted, each undeclared field of its ledger (`seen`) once
/// (a name both groups carry is one column), leaving out those named like a built-in or
/// declared column, which they never shadow.
pub fn table_columns(fields: &Fields, seen: &[SeenField]) -> Arc<[ExtraColumn]> {
    let declared = fields
        .declared()
        .iter()
        .map(|f| ExtraColumn { name: f.name.clone(), from: ExtraSource::Declared(f.kind, f.ty) });
    let names: BTreeSet<&str> = seen
        .iter()
        .map(|f| f.name.as_str())
        .filter(|n| TRIP_SCHEMA.index_of(n).is_err() && fields.get(n).is_none())
        .collect();
    let kept = names.into_iter().map(|n| ExtraColumn { name: n.to_owned(), from: ExtraSource::Kept });
    declared.chain(kept).collect()
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
    /// A kept field, by its name: the end group's value, else the start group's.
    Kept(String, StringBuilder),
    /// A declared field of a group: its text values, typed by `rule` (text without one)
    /// when the batch is finished.
    Declared {
        name: String,
        kind: EventKind,
        rule: Option<FieldType>,
        raw: StringBuilder,
    },
    /// A declared field's values as stored (JSON text), from its group.
    Stored(String, EventKind, StringBuilder),
    Text(StringBuilder),
    Int(Int64Builder),
    Time(TimestampMicrosecondBuilder),
    Decimal(Decimal128Builder),
    Date(Date32Builder),
    Bool(BooleanBuilder),
}

impl Column {
    fn for_index(index: usize, kept: &[ExtraColumn]) -> Self {
        match index {
            0 => Column::Text(StringBuilder::new()),
            i if i >= built_in() => {
                let c = &kept[i - built_in()];
                let name = c.name.clone();
                match c.from {
                    ExtraSource::Kept => Column::Kept(name, StringBuilder::new()),
                    ExtraSource::Stored(kind) => Column::Stored(name, kind, StringBuilder::new()),
                    ExtraSource::Declared(kind, ty) => {
                        Column::Declared { name, kind, rule: ty.rule(), raw: StringBuilder::new() }
                    }
                }
            }
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

    /// The column's values; `ids` names the rows in a declared value's error.
    fn finish(&mut self, ids: &[String]) -> Result<ArrayRef> {
        Ok(match self {
            Column::Text(b) | Column::Kept(_, b) | Column::Stored(_, _, b) => Arc::new(b.finish()),
            Column::Declared { name, rule, raw, .. } => {
                let raw = raw.finish();
                let Some(rule) = rule else { return Ok(Arc::new(raw)) };
                let (typed, rejected) =
                    typed_column(*rule, &raw).stage(Stage::Store, format!("export of the declared field {name}"))?;
                if let Some((row, why)) = rejected.first() {
                    let trip = ids.get(*row).map_or("", String::as_str);
                    return Err(Error::store(format!(
                        "trip {trip:?}: the kept value of the declared field {name} is {why}, so it cannot be read \
                         as its declared type. List every such value with 'tripflow fields check --fields FILE', then \
                         change the field's type in the fields file, or rewrite the value in the trip table \
                         (start_extras / end_extras), and run the KPI job again"
                    )));
                }
                typed
            }
            Column::Int(b) => Arc::new(b.finish()),
            Column::Time(b) => Arc::new(b.finish()),
            Column::Decimal(b) => Arc::new(b.finish()),
            Column::Date(b) => Arc::new(b.finish()),
            Column::Bool(b) => Arc::new(b.finish()),
        })
    }
}

/// Builds export batches from stored items, one typed builder per kept column.
pub struct ExportBuilder {
    projection: Projection,
    schema: SchemaRef,
    columns: Vec<Column>,
    rows: usize,
    /// The rows' trip ids, kept while a declared column may need to name one.
    ids: Option<Vec<String>>,
}

impl ExportBuilder {
    /// An empty builder of the `projection`'s columns.
    pub fn new(projection: Projection) -> Self {
        ExportBuilder {
            schema: projection.schema(),
            columns: projection.columns().iter().map(|&i| Column::for_index(i, &projection.kept)).collect(),
            ids: projection.kept.iter().any(|c| matches!(c.from, ExtraSource::Declared(..))).then(Vec::new),
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
        self.push_with_extras(cells, [None; 2], batches)
    }

    /// [`ExportBuilder::push_into`], with each group's undeclared fields (start, end),
    /// as their [`crate::model::extra::Extras`] text, for the kept columns.
    ///
    /// # Errors
    /// See [`ExportBuilder::push_into`]; also when a group's undeclared fields are not
    /// a JSON object.
    pub fn push_with_extras(
        &mut self,
        cells: &[Cell<'_>; STORED_COLUMNS],
        extras: [Option<&str>; 2],
        batches: &mut Vec<RecordBatch>,
    ) -> Result<()> {
        self.push_row(cells, extras).map_err(|e| e.into_error(cells[0]))?;
        self.rows += 1;
        if self.rows == EXPORT_BATCH_ROWS {
            batches.push(self.finish()?);
        }
        Ok(())
    }

    fn push_row(&mut self, cells: &[Cell<'_>; STORED_COLUMNS], extras: [Option<&str>; 2]) -> Result<(), Unreadable> {
        let pickup = timestamp(cells[PICKUP], PICKUP)?;
        let dropoff = timestamp(cells[DROPOFF], DROPOFF)?;
        // Each group's fields are read once a row, and only when a kept column asks.
        let kept = if self.projection.has_kept() { kept_fields(extras)? } else { [None, None] };
        let group = |kind: EventKind| kept[usize::from(kind == EventKind::End)].as_ref();
        if let Some(ids) = &mut self.ids {
            ids.push(match cells[0] {
                Cell::Text(t) => t.to_owned(),
                _ => String::new(),
            });
        }
        for (&index, column) in self.projection.columns.iter().zip(&mut self.columns) {
            match column {
                Column::Kept(name, b) => {
                    let value = kept.iter().rev().flatten().find_map(|fields| fields.get(name.as_str()));
                    b.append_option(value.map(|v| column_text(v.get())));
                }
                Column::Stored(name, kind, b) => {
                    b.append_option(group(*kind).and_then(|f| f.get(name.as_str())).map(|v| v.get()));
                }
                Column::Declared { name, kind, raw, .. } => {
                    let value = group(*kind).and_then(|f| f.get(name.as_str()));
                    match value.map(|v| scalar_text(v.get())) {
                        None | Some(Ok(None)) => raw.append_null(),
                        Some(Ok(Some(text))) => raw.append_value(text),
                        Some(Err(_)) => {
                            let value = value.map(|v| v.get().to_owned()).unwrap_or_default();
                            return Err(Unreadable { index: usize::MAX - 1, value: format!("{name}={value}") });
                        }
                    }
                }
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
        let extras = [item.start.as_ref().map(StartGroup::extras), item.end.as_ref().map(EndGroup::extras)];
        let extras = extras.map(|e| e.and_then(Extras::as_json));
        self.push_with_extras(&cells_of(&item.trip_id, item.start.as_ref(), item.end.as_ref()), extras, batches)
    }

    /// The pending rows as one batch.
    ///
    /// # Errors
    /// Never in practice: every column has the schema's type and the same length.
    pub fn finish(&mut self) -> Result<RecordBatch> {
        let ids = self.ids.as_mut().map(std::mem::take).unwrap_or_default();
        let arrays = self.columns.iter_mut().map(|c| c.finish(&ids)).collect::<Result<Vec<_>>>()?;
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

/// Each group's undeclared fields, by name.
type KeptFields<'a> = [Option<BTreeMap<String, &'a RawValue>>; 2];

/// Reads each group's [`crate::model::extra::Extras`] text into its fields.
fn kept_fields(extras: [Option<&str>; 2]) -> Result<KeptFields<'_>, Unreadable> {
    fn read(text: Option<&str>) -> Result<Option<BTreeMap<String, &RawValue>>, Unreadable> {
        text.map(|t| serde_json::from_str(t).map_err(|_| Unreadable { index: usize::MAX, value: t.to_owned() }))
            .transpose()
    }
    Ok([read(extras[0])?, read(extras[1])?])
}

/// A stored value its column's type cannot hold: which column, and the value.
#[derive(Debug)]
struct Unreadable {
    /// The column; `usize::MAX` for a group's undeclared fields.
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
        if self.index == usize::MAX - 1 {
            return Error::store(format!(
                "trip {trip_id:?}: the kept value of a declared field is not a string or a number ({}), so it cannot \
                 be read as its declared type. List every such value with 'tripflow fields check --fields FILE', \
                 then change the fields file, or rewrite the value in the trip table, and run the KPI job again",
                self.value
            ));
        }
        if self.index == usize::MAX {
            return Error::store(format!(
                "trip {trip_id:?}: its stored undeclared fields {:?} are not a JSON object; an older build wrote \
                 them or they were edited by hand. Rewrite start_extras / end_extras in the trip table (or delete the \
                 item and replay its events), then run the KPI job again",
                self.value
            ));
        }
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
