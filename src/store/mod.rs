//! The trip table: one item per `trip_id`, merged from events in any order.
//!
//! The invariant (docs/design.md §3): the start group is written only when it is absent or the
//! incoming `pickup_datetime` is newer; the end group likewise with `dropoff_datetime`.
//! An equal version is a duplicate and changes nothing. The groups are independent, so
//! any order, duplication or replay of a trip's events gives the same item.
//! `trip_completed`, `trip_date` and `last_updated` are derived from what is stored.

pub mod dynamodb;
pub mod export;
pub mod lsm;
pub mod sqlite;

use arrow::array::RecordBatch;
use async_trait::async_trait;
use chrono::NaiveDate;
pub use compact_str::{CompactString, ToCompactString};

pub use self::export::{Cell, EXPORT_BATCH_ROWS, ExportBuilder, Projection, STORED_COLUMNS};
use crate::Result;

/// The start group of a trip, as stored: datetimes in the fixed-width UTC form of
/// [`crate::model::timestamp::format`], decimals as canonical text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartGroup {
    /// Pickup zone.
    pub pickup_location_id: i64,
    /// Planned dropoff zone.
    pub dropoff_location_id: i64,
    /// Vendor.
    pub vendor_id: i64,
    /// The group's version.
    pub pickup_datetime: CompactString,
    /// Optional estimate.
    pub estimated_dropoff_datetime: Option<CompactString>,
    /// Optional estimate.
    pub estimated_fare_amount: Option<CompactString>,
}

/// The end group of a trip, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndGroup {
    /// The group's version; its UTC date is the trip's `trip_date`.
    pub dropoff_datetime: CompactString,
    /// Optional code.
    pub rate_code: Option<CompactString>,
    /// Optional count.
    pub passenger_count: Option<CompactString>,
    /// Optional distance.
    pub trip_distance: Option<CompactString>,
    /// The fare.
    pub fare_amount: CompactString,
    /// Optional tip.
    pub tip_amount: Option<CompactString>,
    /// Optional code.
    pub payment_type: Option<CompactString>,
    /// Optional code.
    pub trip_type: Option<CompactString>,
}

impl StartGroup {
    /// Values in [`crate::model::event::START_FIELDS`] order, as text.
    pub fn values(&self) -> [Option<CompactString>; 6] {
        [
            Some(self.pickup_location_id.to_compact_string()),
            Some(self.dropoff_location_id.to_compact_string()),
            Some(self.vendor_id.to_compact_string()),
            Some(self.pickup_datetime.clone()),
            self.estimated_dropoff_datetime.clone(),
            self.estimated_fare_amount.clone(),
        ]
    }
}

impl EndGroup {
    /// Values in [`crate::model::event::END_FIELDS`] order, as text.
    pub fn values(&self) -> [Option<CompactString>; 8] {
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
    pub trip_id: CompactString,
    /// The start group, if the batch had a start event.
    pub start: Option<StartGroup>,
    /// The end group, if the batch had an end event.
    pub end: Option<EndGroup>,
}

/// The merge rule for one group (docs/design.md §3): an `incoming` version is written when
/// nothing is stored, or when it is newer than the `stored` one. Versions are compared as
/// their stored-form text, whose order is the order of time.
pub(crate) fn is_newer(incoming: Option<&str>, stored: Option<&str>) -> bool {
    incoming.is_some_and(|v| stored.is_none_or(|s| v > s))
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
    pub trip_id: CompactString,
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

/// The error of an [`TripStore::export_to`] whose receiver was dropped.
pub(crate) fn reader_stopped() -> crate::Error {
    crate::Error::store("export: the reader of the export stopped")
}

/// A trip table backend.
#[async_trait]
pub trait TripStore: Send + Sync {
    /// Merges the updates (one per trip) with the conditional writes of docs/design.md §3.
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

    /// Every item, or those whose `trip_date` is among `dates`, as batches of the
    /// `columns` of [`crate::model::event::TRIP_SCHEMA`], cut every [`EXPORT_BATCH_ROWS`] rows.
    /// With every column (the snapshot files) the rows are ordered by `trip_id`, so
    /// every backend writes the same files; otherwise they may come in storage order.
    ///
    /// # Errors
    /// When the backend fails.
    async fn export(&self, dates: Option<Vec<NaiveDate>>, columns: &Projection) -> Result<Vec<RecordBatch>>;

    /// [`TripStore::export`], handing each batch to `sink` as it is cut, so the caller
    /// need not hold the whole table. The embedded LSM table streams; the default
    /// exports first and then sends. It stops early, with an error, when the receiver
    /// is dropped.
    ///
    /// # Errors
    /// When the backend fails, or the receiver is gone.
    async fn export_to(
        &self,
        dates: Option<Vec<NaiveDate>>,
        columns: &Projection,
        sink: tokio::sync::mpsc::Sender<RecordBatch>,
    ) -> Result<()> {
        for batch in self.export(dates, columns).await? {
            sink.send(batch).await.map_err(|_| reader_stopped())?;
        }
        Ok(())
    }

    /// Write requests sent so far (one per trip per batch in the common case).
    fn write_requests(&self) -> u64;
}
