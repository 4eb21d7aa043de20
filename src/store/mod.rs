//! The trip table: one item per `trip_id`, merged from events in any order.
//!
//! The invariant (DESIGN §3): the start group is written only when it is absent or the
//! incoming `pickup_datetime` is newer; the end group likewise with `dropoff_datetime`.
//! An equal version is a duplicate and changes nothing. The groups are independent, so
//! any order, duplication or replay of a trip's events gives the same item.
//! `trip_completed`, `trip_date` and `last_updated` are derived from what is stored.

pub mod dynamodb;
pub mod sqlite;

use arrow::array::{ArrayRef, BooleanArray, RecordBatch, StringBuilder};
use arrow::compute::{CastOptions, cast_with_options};
use arrow::datatypes::DataType;
use async_trait::async_trait;
use chrono::NaiveDate;
use std::sync::Arc;

use crate::event::{END_FIELDS, START_FIELDS, TRIP_SCHEMA};
use crate::{Error, Result};

/// The start group of a trip, as stored: datetimes in the fixed-width UTC form of
/// [`crate::ingest::validate::format_timestamp`], decimals as canonical text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartGroup {
    /// Pickup zone.
    pub pickup_location_id: i64,
    /// Planned dropoff zone.
    pub dropoff_location_id: i64,
    /// Vendor.
    pub vendor_id: i64,
    /// The group's version.
    pub pickup_datetime: String,
    /// Optional estimate.
    pub estimated_dropoff_datetime: Option<String>,
    /// Optional estimate.
    pub estimated_fare_amount: Option<String>,
}

/// The end group of a trip, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndGroup {
    /// The group's version; its UTC date is the trip's `trip_date`.
    pub dropoff_datetime: String,
    /// Optional code.
    pub rate_code: Option<String>,
    /// Optional count.
    pub passenger_count: Option<String>,
    /// Optional distance.
    pub trip_distance: Option<String>,
    /// The fare.
    pub fare_amount: String,
    /// Optional tip.
    pub tip_amount: Option<String>,
    /// Optional code.
    pub payment_type: Option<String>,
    /// Optional code.
    pub trip_type: Option<String>,
}

impl StartGroup {
    /// Values in [`START_FIELDS`] order, as text.
    pub fn values(&self) -> [Option<String>; 6] {
        [
            Some(self.pickup_location_id.to_string()),
            Some(self.dropoff_location_id.to_string()),
            Some(self.vendor_id.to_string()),
            Some(self.pickup_datetime.clone()),
            self.estimated_dropoff_datetime.clone(),
            self.estimated_fare_amount.clone(),
        ]
    }
}

impl EndGroup {
    /// Values in [`END_FIELDS`] order, as text.
    pub fn values(&self) -> [Option<String>; 8] {
        [
            Some(self.dropoff_datetime.clone()),
            self.rate_code.clone(),
            self.passenger_count.clone(),
            self.trip_distance.clone(),
            Some(self.fare_amount.clone()),
            self.tip_amount.clone(),
            self.payment_type.clone(),
            self.trip_type.clone(),
        ]
    }
}

/// What one write asks for: the newest start and end of a trip seen in a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TripUpdate {
    /// The item's key.
    pub trip_id: String,
    /// The start group, if the batch had a start event.
    pub start: Option<StartGroup>,
    /// The end group, if the batch had an end event.
    pub end: Option<EndGroup>,
}

/// Which groups of an update were stored (the rest were duplicates or stale).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MergeOutcome {
    /// The start group was absent or older, and is now the update's.
    pub start_applied: bool,
    /// The end group was absent or older, and is now the update's.
    pub end_applied: bool,
}

/// A stored trip.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TripItem {
    /// Key.
    pub trip_id: String,
    /// Start group, once stored.
    pub start: Option<StartGroup>,
    /// End group, once stored.
    pub end: Option<EndGroup>,
}

impl TripItem {
    /// True exactly when both groups are stored.
    pub fn trip_completed(&self) -> bool {
        self.start.is_some() && self.end.is_some()
    }

    /// UTC date of the dropoff, `YYYY-MM-DD`.
    pub fn trip_date(&self) -> Option<&str> {
        self.end.as_ref().map(|e| &e.dropoff_datetime[..10])
    }

    /// The newest version stored.
    pub fn last_updated(&self) -> &str {
        let start = self.start.as_ref().map(|s| s.pickup_datetime.as_str());
        let end = self.end.as_ref().map(|e| e.dropoff_datetime.as_str());
        start.max(end).unwrap_or_default()
    }
}

/// Rows per Arrow batch of an export, the same for every backend so their files agree.
pub const EXPORT_BATCH_ROWS: usize = 65_536;

/// A trip table backend.
#[async_trait]
pub trait TripStore: Send + Sync {
    /// Merges the updates (one per trip) with the conditional writes of DESIGN §3.
    /// Returns one outcome per update, in order.
    ///
    /// # Errors
    /// When the backend fails; no update of the call is then known to be stored, and a
    /// replay of the same updates is harmless.
    async fn merge(&self, updates: Vec<TripUpdate>) -> Result<Vec<MergeOutcome>>;

    /// The stored item of `trip_id`.
    ///
    /// # Errors
    /// When the backend fails.
    async fn get(&self, trip_id: &str) -> Result<Option<TripItem>>;

    /// Every item, or those whose `trip_date` is among `dates`, as batches of
    /// [`TRIP_SCHEMA`], ordered by `trip_id`.
    ///
    /// # Errors
    /// When the backend fails.
    async fn export(&self, dates: Option<Vec<NaiveDate>>) -> Result<Vec<RecordBatch>>;

    /// Write requests sent so far (one per trip per batch in the common case).
    fn write_requests(&self) -> u64;
}

/// Builds batches of [`TRIP_SCHEMA`] from stored items, column-wise: values are gathered
/// as text and cast to the table's Arrow types in one kernel call per column.
pub struct ExportBuilder {
    columns: Vec<StringBuilder>,
    completed: Vec<bool>,
    rows: usize,
}

impl Default for ExportBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl ExportBuilder {
    const TEXT_COLUMNS: usize = 1 + START_FIELDS.len() + END_FIELDS.len() + 1;

    /// An empty builder.
    pub fn new() -> Self {
        ExportBuilder {
            columns: (0..Self::TEXT_COLUMNS).map(|_| StringBuilder::new()).collect(),
            completed: Vec::new(),
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

    /// Adds one item.
    pub fn push(&mut self, item: &TripItem) {
        let mut cols = self.columns.iter_mut();
        cols.next().unwrap().append_value(&item.trip_id);
        let start = item.start.as_ref().map(StartGroup::values).unwrap_or_default();
        let end = item.end.as_ref().map(EndGroup::values).unwrap_or_default();
        for v in start.iter().chain(end.iter()) {
            cols.next().unwrap().append_option(v.as_deref());
        }
        cols.next().unwrap().append_value(item.last_updated());
        self.completed.push(item.trip_completed());
        self.rows += 1;
    }

    /// Adds one item, moving a full batch of [`EXPORT_BATCH_ROWS`] rows to `batches`.
    ///
    /// # Errors
    /// See [`ExportBuilder::finish`].
    pub fn push_into(&mut self, item: &TripItem, batches: &mut Vec<RecordBatch>) -> Result<()> {
        self.push(item);
        if self.rows == EXPORT_BATCH_ROWS {
            batches.push(self.finish()?);
        }
        Ok(())
    }

    /// The pending rows as one batch of [`TRIP_SCHEMA`].
    ///
    /// # Errors
    /// When a stored value does not convert to its column's type (a corrupt table).
    pub fn finish(&mut self) -> Result<RecordBatch> {
        let schema = TRIP_SCHEMA.clone();
        let strict = CastOptions { safe: false, ..Default::default() };
        let mut text: Vec<ArrayRef> =
            self.columns.iter_mut().map(|b| Arc::new(b.finish()) as ArrayRef).collect();
        let last_updated = text.pop().expect("last_updated column");
        let mut arrays = Vec::with_capacity(schema.fields().len());
        for (field, col) in schema.fields().iter().zip(&text) {
            arrays.push(cast_with_options(col, field.data_type(), &strict).map_err(|e| {
                Error::Store(format!("stored {} does not convert: {e}", field.name()))
            })?);
        }
        let dropoff = &arrays[1 + START_FIELDS.len()];
        arrays.push(cast_with_options(dropoff, &DataType::Date32, &strict)?);
        arrays.push(Arc::new(BooleanArray::from(std::mem::take(&mut self.completed))));
        arrays.push(cast_with_options(&last_updated, schema.field(schema.fields().len() - 1).data_type(), &strict)?);
        self.rows = 0;
        Ok(RecordBatch::try_new(schema, arrays)?)
    }
}
