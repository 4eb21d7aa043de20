//! What an ingest run accounts for, record by record (docs/design.md §4): what ingest
//! returns, what [`super::progress`] shows and [`super::telemetry`] exports.

use serde::Serialize;

/// What an ingest run did, in records.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct IngestCounts {
    /// Records read from the stream.
    pub read: u64,
    /// Records whose group was stored (absent before, or older).
    pub applied: u64,
    /// Records whose version was already stored, or older than the stored one.
    pub duplicate_or_stale: u64,
    /// Records rejected to the dead-letter output.
    pub dead_lettered: u64,
    /// Records that carried fields no declared field names (kept, or rejected under
    /// `--unknown-fields reject`); they are also counted above.
    pub undeclared: u64,
    /// Micro-batches flushed.
    pub batches: u64,
    /// Write requests sent to the store.
    pub store_writes: u64,
}

impl IngestCounts {
    /// True when every record read is accounted for exactly once.
    pub fn balanced(&self) -> bool {
        self.read == self.applied + self.duplicate_or_stale + self.dead_lettered
    }

    /// Adds another run's (or batch's) counts to these.
    pub fn add(&mut self, o: &IngestCounts) {
        self.read += o.read;
        self.applied += o.applied;
        self.duplicate_or_stale += o.duplicate_or_stale;
        self.dead_lettered += o.dead_lettered;
        self.undeclared += o.undeclared;
        self.batches += o.batches;
        self.store_writes += o.store_writes;
    }
}
