//! What long work tells a watcher as it goes.
//!
//! produce, ingest and the KPI job call a [`Progress`] once per batch or step, never per
//! record, so watching costs nothing measurable. The library draws nothing: the command
//! line turns these calls into progress bars on a terminal (`cli`), and anything else
//! (metrics, a test) can implement the trait. Every method has an empty default, so a
//! watcher implements only what it shows.

use std::fmt::Debug;

use super::IngestCounts;

/// Receives the progress of long work. Calls come from the task doing the work, so an
/// implementation should return at once.
pub trait Progress: Send + Sync + Debug {
    /// produce: how many events it will put, once the inputs are indexed.
    fn produce_total(&self, _events: u64) {}
    /// produce: events put so far (after each put call).
    fn produced(&self, _put: u64) {}
    /// ingest: the totals so far after each batch, and how far behind the end of the
    /// stream its reads are: the largest over the shards of the time between the last
    /// record read and the newest one put (Kinesis' `MillisBehindLatest`), where the
    /// stream can tell.
    fn ingested(&self, _totals: &IngestCounts, _millis_behind: Option<u64>) {}
    /// The KPI job: trips exported to the query engine.
    fn exported(&self, _rows: u64) {}
    /// The KPI job: query `index` (from 0) of `of` starts, named by its file stem.
    fn query(&self, _stem: &str, _index: usize, _of: usize) {}
}

/// A watcher that shows nothing: the default.
#[derive(Debug, Clone, Copy, Default)]
pub struct Quiet;

impl Progress for Quiet {}
