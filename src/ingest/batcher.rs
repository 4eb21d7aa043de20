//! The micro-batcher: a batch is flushed when it is full or has waited long enough
//! (`rows >= batch_rows || elapsed >= linger`), whichever comes first.

use std::time::{Duration, Instant};

use crate::stream::StreamRecord;

/// A record waiting in a batch, with the index of the shard it came from.
#[derive(Debug)]
pub struct Pending {
    /// Index into the consumer's shard list.
    pub shard: usize,
    /// The record.
    pub record: StreamRecord,
}

/// Accumulates records up to a row bound, remembering when the first one arrived.
#[derive(Debug)]
pub struct Batcher {
    rows: usize,
    linger: Duration,
    pending: Vec<Pending>,
    since: Option<Instant>,
}

impl Batcher {
    /// A batcher flushing at `rows` records or after `linger`.
    pub fn new(rows: usize, linger: Duration) -> Self {
        Batcher { rows, linger, pending: Vec::with_capacity(rows), since: None }
    }

    /// How many more records fit.
    pub fn room(&self) -> usize {
        self.rows.saturating_sub(self.pending.len())
    }

    /// True when nothing is pending.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Adds records.
    pub fn extend(&mut self, records: impl IntoIterator<Item = Pending>) {
        let before = self.pending.len();
        self.pending.extend(records);
        if before == 0 && !self.pending.is_empty() {
            self.since = Some(Instant::now());
        }
    }

    /// True when the batch is full, or non-empty and has lingered long enough.
    pub fn ready(&self, now: Instant) -> bool {
        self.pending.len() >= self.rows || self.time_left(now) == Some(Duration::ZERO)
    }

    /// Time until a non-empty batch has lingered long enough.
    pub fn time_left(&self, now: Instant) -> Option<Duration> {
        self.since.map(|t| self.linger.saturating_sub(now.duration_since(t)))
    }

    /// Takes the pending records, leaving the batcher empty.
    pub fn take(&mut self) -> Vec<Pending> {
        self.since = None;
        std::mem::replace(&mut self.pending, Vec::with_capacity(self.rows))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::SequenceNumber;

    fn rec(n: u64) -> Pending {
        Pending {
            shard: 0,
            record: StreamRecord {
                sequence_number: SequenceNumber::from_u64(n),
                partition_key: "k".into(),
                data: vec![],
                arrival: Default::default(),
            },
        }
    }

    #[test]
    fn flushes_when_full_or_lingered() {
        let mut b = Batcher::new(2, Duration::from_millis(50));
        let t0 = Instant::now();
        assert!(!b.ready(t0) && b.time_left(t0).is_none());
        b.extend([rec(1)]);
        assert!(!b.ready(Instant::now()));
        assert!(b.ready(Instant::now() + Duration::from_millis(60)), "lingered");
        b.extend([rec(2)]);
        assert_eq!(b.room(), 0);
        assert!(b.ready(Instant::now()), "full");
        assert_eq!(b.take().len(), 2);
        assert!(b.is_empty() && b.time_left(Instant::now()).is_none());
    }
}
