//! The micro-batcher: a batch is flushed when it is full or has waited long enough
//! (`rows >= batch_rows || bytes >= batch_bytes || elapsed >= linger`), whichever comes
//! first. The byte bound keeps memory flat under hostile input: 65,536 records of 1 MiB
//! are never held at once.

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

/// Accumulates records up to a row and a byte bound, remembering when the first one
/// arrived.
#[derive(Debug)]
pub struct Batcher {
    rows: usize,
    max_bytes: usize,
    linger: Duration,
    pending: Vec<Pending>,
    bytes: usize,
    since: Option<Instant>,
}

impl Batcher {
    /// A batcher flushing at `rows` records, at `max_bytes` bytes of record data, or
    /// after `linger`.
    pub fn new(rows: usize, max_bytes: usize, linger: Duration) -> Self {
        Batcher { rows, max_bytes, linger, pending: Vec::new(), bytes: 0, since: None }
    }

    /// How many more records fit.
    pub fn room(&self) -> usize {
        if self.is_full() { 0 } else { self.rows - self.pending.len() }
    }

    /// How many more bytes of record data fit.
    pub fn byte_room(&self) -> usize {
        self.max_bytes.saturating_sub(self.bytes)
    }

    /// True when the batch holds `rows` records or `max_bytes` bytes.
    pub fn is_full(&self) -> bool {
        self.pending.len() >= self.rows || self.bytes >= self.max_bytes
    }

    /// Bytes of record data pending.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// True when nothing is pending.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Adds records.
    pub fn extend(&mut self, records: impl IntoIterator<Item = Pending>) {
        let before = self.pending.len();
        for p in records {
            self.bytes += p.record.data.len();
            self.pending.push(p);
        }
        if before == 0 && !self.pending.is_empty() {
            self.since = Some(Instant::now());
        }
    }

    /// True when the batch is full, or non-empty and has lingered long enough.
    pub fn ready(&self, now: Instant) -> bool {
        self.is_full() || self.time_left(now) == Some(Duration::ZERO)
    }

    /// Time until a non-empty batch has lingered long enough.
    pub fn time_left(&self, now: Instant) -> Option<Duration> {
        self.since.map(|t| self.linger.saturating_sub(now.duration_since(t)))
    }

    /// Takes the pending records, leaving the batcher empty.
    pub fn take(&mut self) -> Vec<Pending> {
        self.since = None;
        self.bytes = 0;
        std::mem::take(&mut self.pending)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::SequenceNumber;

    fn rec(n: u64) -> Pending {
        sized(n, 0)
    }

    fn sized(n: u64, bytes: usize) -> Pending {
        Pending {
            shard: 0,
            record: StreamRecord {
                sequence_number: SequenceNumber::from_u64(n),
                partition_key: "k".into(),
                data: vec![b'x'; bytes],
                arrival: Default::default(),
            },
        }
    }

    #[test]
    fn flushes_when_full_or_lingered() {
        let mut b = Batcher::new(2, usize::MAX, Duration::from_millis(50));
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

    #[test]
    fn flushes_at_the_byte_bound_whatever_the_row_bound() {
        let mut b = Batcher::new(65_536, 3 << 20, Duration::from_secs(60));
        b.extend([sized(1, 1 << 20), sized(2, 1 << 20)]);
        assert!(!b.ready(Instant::now()) && b.byte_room() == 1 << 20 && b.room() == 65_534);
        b.extend([sized(3, (1 << 20) + 1)]);
        assert!(b.is_full() && b.ready(Instant::now()), "over the byte bound");
        assert_eq!((b.room(), b.byte_room(), b.bytes()), (0, 0, (3 << 20) + 1));
        assert_eq!(b.take().len(), 3);
        assert_eq!((b.bytes(), b.room()), (0, 65_536));
    }
}
