//! What an ingest run accounts for, record by record (docs/design.md §4): what ingest
//! returns, what [`super::progress`] shows and [`super::telemetry`] exports.

use serde::{Serialize, Serializer};

use crate::store::Consumed;

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
    /// Bytes of record data read from the stream.
    pub stream_bytes: u64,
    /// DynamoDB write capacity units consumed, in thousandths (none on an embedded
    /// store); `write_capacity_units` in a report.
    #[serde(rename = "write_capacity_units", serialize_with = "as_units")]
    pub write_milliunits: u64,
    /// DynamoDB read capacity units consumed, in thousandths.
    #[serde(rename = "read_capacity_units", serialize_with = "as_units")]
    pub read_milliunits: u64,
    /// The service reported no capacity (an emulator): the units were computed from the
    /// items' sizes by DynamoDB's rules ([`crate::store::capacity`]).
    pub capacity_computed: bool,
}

fn as_units<S: Serializer>(milli: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(units(*milli))
}

/// Thousandths of a capacity unit as units, for a report.
pub fn units(milli: u64) -> f64 {
    milli as f64 / 1000.0
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
        self.stream_bytes += o.stream_bytes;
        self.write_milliunits += o.write_milliunits;
        self.read_milliunits += o.read_milliunits;
        self.capacity_computed |= o.capacity_computed;
    }

    /// These counts with the capacity a store consumed between `before` and `after`.
    #[must_use]
    pub fn with_consumed(self, before: Consumed, after: Consumed) -> Self {
        let batch = after.since(before);
        IngestCounts {
            write_milliunits: self.write_milliunits + batch.write_milliunits,
            read_milliunits: self.read_milliunits + batch.read_milliunits,
            capacity_computed: self.capacity_computed || batch.computed,
            ..self
        }
    }
}
