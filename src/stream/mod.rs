//! The stream between `produce` and `ingest`: sinks, sources and consumer checkpoints.
//!
//! The model is Kinesis': a stream has shards; a record goes to the shard whose hash-key
//! range holds the MD5 of its partition key, so a trip's events share a shard and keep
//! their order. Within a shard, sequence numbers increase. A reader opens an iterator at
//! a [`StartPosition`] and reads forward; a consumer checkpoints the last sequence number
//! it has fully processed, per shard.

pub mod checkpoints_dynamodb;
pub mod embedded;
pub mod kinesis;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use compact_str::CompactString;

use crate::Result;

/// How far [`StreamSource::records_behind`] counts, so the count stays cheap: a shard
/// further behind reads as this many.
pub const RECORDS_BEHIND_CAP: u64 = 100_000;

/// Identifies a shard, as Kinesis names them (`shardId-000000000000`).
pub type ShardId = String;

/// A Kinesis-style sequence number: decimal digits, compared as numbers (so leading
/// zeros do not matter).
#[derive(Debug, Clone)]
pub struct SequenceNumber(pub CompactString);

impl PartialEq for SequenceNumber {
    fn eq(&self, other: &Self) -> bool {
        self.0.trim_start_matches('0') == other.0.trim_start_matches('0')
    }
}

impl Eq for SequenceNumber {}

impl std::hash::Hash for SequenceNumber {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.trim_start_matches('0').hash(state);
    }
}

impl SequenceNumber {
    /// The sequence number of an embedded record, zero-padded so text order is number order.
    pub fn from_u64(n: u64) -> Self {
        // By hand: `format_compact!("{n:020}")` was 2.2% of a 1M-trip run, once per record.
        let mut digits = [0; 20];
        crate::model::zero_padded(&mut digits, n);
        SequenceNumber(std::str::from_utf8(&digits).expect("ASCII digits").into())
    }

    /// The value as `u64`, when it fits (always, for the embedded stream).
    pub fn as_u64(&self) -> Option<u64> {
        self.0.parse().ok()
    }
}

impl Ord for SequenceNumber {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        let a = self.0.trim_start_matches('0');
        let b = other.0.trim_start_matches('0');
        a.len().cmp(&b.len()).then_with(|| a.cmp(b))
    }
}

impl PartialOrd for SequenceNumber {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl std::fmt::Display for SequenceNumber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where a reader starts in a shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartPosition {
    /// The oldest record kept.
    TrimHorizon,
    /// Just after the newest record at the time the iterator is opened.
    Latest,
    /// Just after the given record (how a checkpoint resumes).
    AfterSequenceNumber(SequenceNumber),
    /// The first record that arrived at or after the instant.
    AtTimestamp(DateTime<Utc>),
}

/// One record to put on the stream.
#[derive(Debug, Clone)]
pub struct PutRecord {
    /// Chooses the shard; tripflow uses the trip id.
    pub partition_key: CompactString,
    /// The record's bytes, sent and stored as they are.
    pub data: Vec<u8>,
}

/// One record read from a shard.
#[derive(Debug, Clone)]
pub struct StreamRecord {
    /// Its position in the shard.
    pub sequence_number: SequenceNumber,
    /// The partition key it was put with.
    pub partition_key: CompactString,
    /// The bytes as put.
    pub data: Vec<u8>,
    /// When the stream accepted it.
    pub arrival: DateTime<Utc>,
}

/// A shard, and the shards it was split or merged from (after resharding). A child is
/// read only once its parents are read to their end, so a trip's events stay in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shard {
    /// The shard.
    pub id: ShardId,
    /// Its parent and adjacent parent, when it was made by a split or a merge.
    pub parents: Vec<ShardId>,
    /// Set when the shard was closed by a split or a merge: the last sequence number it
    /// may hold. It takes no new records, and it is done once a read says
    /// [`ReadResult::closed`] or a record at this number has been read. A read that comes
    /// back empty and "caught up" before either is not its end: Kinesis may answer a
    /// closed shard with empty pages before its iterator runs out.
    pub ending_sequence_number: Option<SequenceNumber>,
}

impl Shard {
    /// An open shard with no parents.
    pub fn root(id: ShardId) -> Self {
        Shard { id, parents: Vec::new(), ending_sequence_number: None }
    }

    /// True when the shard was closed by a reshard.
    pub fn is_closed(&self) -> bool {
        self.ending_sequence_number.is_some()
    }
}

/// A consumer's checkpoint in one shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Checkpoint {
    /// Every record up to and including this one is processed.
    At(SequenceNumber),
    /// The shard was closed by a reshard and read to its end, every record processed:
    /// later runs do not open it again, and its children may be read (KCL's
    /// `SHARD_END` checkpoint). It is past every sequence number.
    ShardEnd,
}

impl Checkpoint {
    /// How a [`Checkpoint::ShardEnd`] is stored, by every checkpoint store: its text
    /// order is after every zero-padded sequence number ('S' > '9'), so a conditional
    /// "only forward" write treats it as the last position.
    pub const SHARD_END: &'static str = "SHARD_END";

    /// The checkpoint stored as `text`.
    pub fn from_stored(text: &str) -> Self {
        if text == Self::SHARD_END { Checkpoint::ShardEnd } else { Checkpoint::At(SequenceNumber(text.into())) }
    }
}

/// A reader's position in one shard, returned by [`StreamSource::iterator`].
#[derive(Debug, Clone)]
pub struct ShardIterator {
    /// The shard read.
    pub shard: ShardId,
    /// Backend-specific position.
    pub position: String,
}

/// What one read returned.
#[derive(Debug)]
pub struct ReadResult {
    /// The records, in sequence order.
    pub records: Vec<StreamRecord>,
    /// Where the next read continues.
    pub next: ShardIterator,
    /// True when the read reached the end of what the shard holds now.
    pub caught_up: bool,
    /// True when the shard is closed (split or merged) and every record has been read:
    /// its children may now be read.
    pub closed: bool,
    /// How far behind the newest record of the shard this read ends, in time
    /// (Kinesis' `MillisBehindLatest`), where the backend can tell.
    pub millis_behind: Option<u64>,
}

/// Outcome of a put for one record that the stream refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// Index of the record in the call's input.
    pub index: usize,
    /// Why it was refused.
    pub reason: String,
}

/// Puts records on a stream.
#[async_trait]
pub trait StreamSink: Send + Sync {
    /// Puts the records, keeping their order within each partition key. Records the stream
    /// refuses for good (too large, empty key) are returned; the rest are stored.
    ///
    /// # Errors
    /// When the backend fails; nothing is then known to be stored.
    async fn put_records(&self, records: &[PutRecord]) -> Result<Vec<Refused>>;
}

/// Reads the records of a stream, shard by shard.
#[async_trait]
pub trait StreamSource: Send + Sync {
    /// What tells this stream apart from every other, stable across runs:
    /// `kinesis:NAME`, or `embedded:ID` with the ID the stream file was created with.
    /// Dead letters are keyed by it with the shard and sequence number, as two streams'
    /// sequence numbers can be equal.
    fn identity(&self) -> String;

    /// How many records the shard holds after `iterator`'s position, where the backend
    /// can count them cheaply (the embedded stream, up to
    /// [`RECORDS_BEHIND_CAP`]); Kinesis cannot, and says `None`.
    ///
    /// # Errors
    /// When the backend fails.
    async fn records_behind(&self, _iterator: &ShardIterator) -> Result<Option<u64>> {
        Ok(None)
    }

    /// The stream's shards, parents before children, in a stable order.
    ///
    /// # Errors
    /// When the backend fails.
    async fn shards(&self) -> Result<Vec<Shard>>;

    /// Opens a position in a shard.
    ///
    /// # Errors
    /// When the shard does not exist or the backend fails.
    async fn iterator(&self, shard: &ShardId, start: &StartPosition) -> Result<ShardIterator>;

    /// Reads up to `limit` records after the iterator's position, stopping after the
    /// record that brings their data to `max_bytes` where the backend can (the embedded
    /// stream; a Kinesis GetRecords call has no byte limit, and returns at most 10 MiB).
    /// At least one record is returned when there is one.
    ///
    /// # Errors
    /// When the backend fails.
    async fn read(&self, iterator: &ShardIterator, limit: usize, max_bytes: usize) -> Result<ReadResult>;
}

/// A stream that can be both written and read.
pub trait Stream: StreamSink + StreamSource {}

impl<T: StreamSink + StreamSource> Stream for T {}

/// Keeps, per consumer and shard, the last sequence number fully processed, or that the
/// shard was read to its end.
#[async_trait]
pub trait CheckpointStore: Send + Sync {
    /// The checkpoint of `consumer` in `shard`, if any.
    ///
    /// # Errors
    /// When the backend fails.
    async fn get(&self, consumer: &str, shard: &ShardId) -> Result<Option<Checkpoint>>;

    /// Moves the checkpoint forward to `to`; a checkpoint never moves back, and nothing
    /// moves it past [`Checkpoint::ShardEnd`].
    ///
    /// # Errors
    /// When the backend fails; the checkpoint is then unchanged.
    async fn set(&self, consumer: &str, shard: &ShardId, to: &Checkpoint) -> Result<()>;
}

/// Why a stream would refuse `record` for good (an empty partition key, or over the
/// 1 MiB record limit), or `None` when it may be sent.
pub fn refusal(record: &PutRecord) -> Option<String> {
    let size = record.data.len() + record.partition_key.len();
    if record.partition_key.is_empty() {
        Some("empty partition key".into())
    } else if record.partition_key.len() > 256 {
        Some(format!("partition key of {} bytes is over the 256-byte limit", record.partition_key.len()))
    } else if size > crate::model::event::MAX_RECORD_BYTES {
        Some(format!("record of {size} bytes is over the 1 MiB limit"))
    } else {
        None
    }
}

/// The index of the shard, among `shard_count` shards splitting the 128-bit hash-key space
/// evenly, that holds `partition_key`, as Kinesis assigns it (MD5 of the key).
pub fn shard_index(partition_key: &str, shard_count: u32) -> u32 {
    use md5::{Digest, Md5};
    if shard_count <= 1 {
        return 0;
    }
    let hash = u128::from_be_bytes(Md5::digest(partition_key.as_bytes()).into());
    let width = u128::MAX / u128::from(shard_count) + 1;
    ((hash / width) as u32).min(shard_count - 1)
}

/// The Kinesis name of shard `index`.
pub fn shard_name(index: u32) -> ShardId {
    format!("shardId-{index:012}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_numbers_compare_as_numbers() {
        let a = SequenceNumber("9".into());
        let b = SequenceNumber("10".into());
        assert!(a < b);
        assert_eq!(SequenceNumber::from_u64(10).cmp(&b), std::cmp::Ordering::Equal);
        assert!(SequenceNumber::from_u64(11) > b);
        for n in [0, 1, 9, 10, 1_234_567, u64::MAX] {
            assert_eq!(SequenceNumber::from_u64(n).0, format!("{n:020}"));
        }
    }

    #[test]
    fn shards_split_the_hash_space_evenly() {
        // MD5("") = d41d8cd9…: 0xd4 is in the upper half, and in the fourth quarter.
        assert_eq!(shard_index("", 2), 1);
        assert_eq!(shard_index("", 4), 3);
        assert_eq!(shard_index("anything", 1), 0);
        let mut counts = [0u32; 4];
        for i in 0..4000 {
            counts[shard_index(&format!("trip-{i}"), 4) as usize] += 1;
        }
        assert!(counts.iter().all(|&c| c > 800), "uneven split: {counts:?}");
    }
}
