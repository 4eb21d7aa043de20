//! The embedded stream: Kinesis' model in one SQLite file under `--home`.
//!
//! The shard count is fixed when the stream is created. Every record gets the next value
//! of one AUTOINCREMENT key as its sequence number, so numbers increase within a shard
//! and are never reused. Checkpoints live in the same file, one row per consumer and
//! shard, and only move forward. A producer and a consumer may use the file at the same
//! time from separate processes.

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use chrono::{TimeZone, Utc};
use rusqlite::{OptionalExtension, params};

use super::{
    CheckpointStore, PutRecord, ReadResult, Refused, SequenceNumber, Shard, ShardId, ShardIterator, StartPosition,
    StreamRecord, StreamSink, StreamSource, refusal, shard_index, shard_name,
};
use crate::error::Stage;
use crate::sqlite::Db;
use crate::{Error, Result};

/// Default number of shards of a new embedded stream.
pub const DEFAULT_SHARDS: u32 = 4;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS stream_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS records (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    shard INTEGER NOT NULL,
    partition_key TEXT NOT NULL,
    data BLOB NOT NULL,
    arrival_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS records_by_shard ON records (shard, seq);
CREATE INDEX IF NOT EXISTS records_by_arrival ON records (shard, arrival_ms);
CREATE TABLE IF NOT EXISTS checkpoints (
    consumer TEXT NOT NULL,
    shard TEXT NOT NULL,
    seq TEXT NOT NULL,
    PRIMARY KEY (consumer, shard)
);
";

/// Page cache of the stream file: writes append and reads follow one shard's index
/// forward, so a small cache does.
const CACHE_MIB: i64 = 8;

/// A durable, sharded stream in `<home>/stream.sqlite`.
#[derive(Clone)]
pub struct EmbeddedStream {
    db: Db,
    shard_count: u32,
    path: PathBuf,
    id: String,
}

impl EmbeddedStream {
    /// Opens the stream under `home`, creating it with `shards` shards (default
    /// [`DEFAULT_SHARDS`]) if it does not exist.
    ///
    /// # Errors
    /// When the file cannot be opened, or it exists with a different shard count than
    /// `shards` asks for.
    pub fn open(home: &Path, shards: Option<u32>) -> Result<Self> {
        if shards == Some(0) {
            return Err(Error::Config("--shards must be at least 1".into()));
        }
        let path = home.join("stream.sqlite");
        let db = Db::open(&path, SCHEMA, CACHE_MIB, Stage::Stream)?;
        let want = shards.unwrap_or(DEFAULT_SHARDS);
        // A new stream file draws its identity once; the first writer's draw stays.
        let new_id = format!("{:016x}", rand::random::<u64>());
        let meta = || -> rusqlite::Result<(String, String)> {
            let conn = db.blocking();
            let get = |key: &str| {
                conn.query_row("SELECT value FROM stream_meta WHERE key = ?1", [key], |row| row.get::<_, String>(0))
            };
            let put = "INSERT OR IGNORE INTO stream_meta (key, value) VALUES (?1, ?2)";
            conn.execute(put, ["shard_count", &want.to_string()])?;
            conn.execute(put, ["stream_id", &new_id])?;
            Ok((get("shard_count")?, get("stream_id")?))
        };
        let (stored, id) = meta().map_err(|e| db.label(e.into()))?;
        let shard_count = stored
            .parse::<u32>()
            .map_err(|_| Error::stream(format!("{} holds a bad shard count {stored:?}", path.display())))?;
        if let Some(asked) = shards
            && asked != shard_count
        {
            return Err(Error::Config(format!(
                "the stream in {} has {shard_count} shards, but --shards asks for {asked}; \
                 omit --shards or use a new --home",
                home.display()
            )));
        }
        Ok(EmbeddedStream { db, shard_count, path, id })
    }

    /// Number of shards.
    pub fn shard_count(&self) -> u32 {
        self.shard_count
    }

    /// The stream's file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn shard_number(shard: &ShardId, count: u32) -> Result<u32> {
    shard
        .strip_prefix("shardId-")
        .and_then(|n| n.parse::<u32>().ok())
        .filter(|&n| n < count)
        .ok_or_else(|| Error::stream(format!("no shard {shard:?} in the embedded stream")))
}

fn parse_position(it: &ShardIterator) -> Result<i64> {
    it.position.parse().map_err(|_| Error::stream(format!("bad embedded iterator {:?}", it.position)))
}

#[async_trait]
impl StreamSink for EmbeddedStream {
    async fn put_records(&self, records: &[PutRecord]) -> Result<Vec<Refused>> {
        let mut refused = Vec::new();
        let mut rows = Vec::with_capacity(records.len());
        for (index, r) in records.iter().enumerate() {
            match refusal(r) {
                Some(reason) => refused.push(Refused { index, reason }),
                None => {
                    let shard = shard_index(&r.partition_key, self.shard_count);
                    rows.push((shard, r.partition_key.clone(), r.data.clone()));
                }
            }
        }
        self.db
            .call(move |conn| {
                let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
                {
                    let now = Utc::now().timestamp_millis();
                    let mut insert = tx.prepare_cached(
                        "INSERT INTO records (shard, partition_key, data, arrival_ms) VALUES (?1, ?2, ?3, ?4)",
                    )?;
                    for (shard, key, data) in &rows {
                        insert.execute(params![shard, key, data, now])?;
                    }
                }
                tx.commit()?;
                Ok(())
            })
            .await
            .map_err(|e| Error::stream(format!("put to {}: {e}", self.path.display())))?;
        Ok(refused)
    }
}

#[async_trait]
impl StreamSource for EmbeddedStream {
    fn identity(&self) -> String {
        format!("embedded:{}", self.id)
    }

    async fn shards(&self) -> Result<Vec<Shard>> {
        Ok((0..self.shard_count).map(|i| Shard::root(shard_name(i))).collect())
    }

    async fn iterator(&self, shard: &ShardId, start: &StartPosition) -> Result<ShardIterator> {
        let n = shard_number(shard, self.shard_count)?;
        let start = start.clone();
        let after: i64 = self
            .db
            .call(move |conn| {
                Ok(match start {
                    StartPosition::TrimHorizon => 0,
                    StartPosition::AfterSequenceNumber(seq) => {
                        seq.as_u64().ok_or_else(|| Error::stream(format!("bad embedded sequence number {seq}")))? as i64
                    }
                    StartPosition::Latest => {
                        conn.query_row("SELECT coalesce(max(seq), 0) FROM records WHERE shard = ?1", [n], |row| {
                            row.get(0)
                        })?
                    }
                    StartPosition::AtTimestamp(at) => conn.query_row(
                        "SELECT coalesce(max(seq), 0) FROM records WHERE shard = ?1 AND arrival_ms < ?2",
                        params![n, at.timestamp_millis()],
                        |row| row.get(0),
                    )?,
                })
            })
            .await?;
        Ok(ShardIterator { shard: shard.clone(), position: after.to_string() })
    }

    async fn records_behind(&self, iterator: &ShardIterator) -> Result<Option<u64>> {
        let n = shard_number(&iterator.shard, self.shard_count)?;
        let after = parse_position(iterator)?;
        let cap = crate::telemetry::RECORDS_BEHIND_CAP as i64;
        // Sequence numbers are shared by the shards, so the records are counted, along
        // the shard's index and no further than the cap.
        let behind: i64 = self
            .db
            .call(move |conn| {
                Ok(conn
                    .prepare_cached(
                        "SELECT count(*) FROM (SELECT 1 FROM records WHERE shard = ?1 AND seq > ?2 LIMIT ?3)",
                    )?
                    .query_row(params![n, after, cap], |row| row.get(0))?)
            })
            .await?;
        Ok(Some(behind.unsigned_abs()))
    }

    async fn read(&self, iterator: &ShardIterator, limit: usize, max_bytes: usize) -> Result<ReadResult> {
        let n = shard_number(&iterator.shard, self.shard_count)?;
        let after = parse_position(iterator)?;
        // Rows are stepped one by one, so a read that reaches `max_bytes` leaves the
        // rest of the shard on disk.
        let (records, full, millis_behind) = self
            .db
            .call(move |conn| {
                let mut stmt = conn.prepare_cached(
                    "SELECT seq, partition_key, data, arrival_ms FROM records \
                     WHERE shard = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
                )?;
                let mut rows = stmt.query(params![n, after, limit as i64])?;
                let (mut records, mut bytes) = (Vec::new(), 0usize);
                while let Some(row) = rows.next()? {
                    let seq: i64 = row.get(0)?;
                    let arrival_ms: i64 = row.get(3)?;
                    let data: Vec<u8> = row.get(2)?;
                    bytes += data.len();
                    records.push(StreamRecord {
                        sequence_number: SequenceNumber::from_u64(seq as u64),
                        partition_key: row.get(1)?,
                        data,
                        arrival: Utc.timestamp_millis_opt(arrival_ms).single().unwrap_or_default(),
                    });
                    if bytes >= max_bytes {
                        break;
                    }
                }
                let full = records.len() == limit || bytes >= max_bytes;
                // The lag, as Kinesis gives it: from the last record read to the newest
                // in the shard (one step down the shard's index).
                let millis_behind = match records.last() {
                    Some(last) if full => {
                        let newest: Option<i64> = conn
                            .query_row(
                                "SELECT arrival_ms FROM records WHERE shard = ?1 ORDER BY seq DESC LIMIT 1",
                                [n],
                                |row| row.get(0),
                            )
                            .optional()?;
                        newest.map(|ms| u64::try_from(ms - last.arrival.timestamp_millis()).unwrap_or(0))
                    }
                    _ => Some(0),
                };
                Ok((records, full, millis_behind))
            })
            .await?;
        let next_after = records.last().and_then(|r| r.sequence_number.as_u64()).map_or(after, |s| s as i64);
        Ok(ReadResult {
            caught_up: !full,
            closed: false,
            millis_behind,
            records,
            next: ShardIterator { shard: iterator.shard.clone(), position: next_after.to_string() },
        })
    }
}

#[async_trait]
impl CheckpointStore for EmbeddedStream {
    async fn get(&self, consumer: &str, shard: &ShardId) -> Result<Option<SequenceNumber>> {
        let (consumer, shard) = (consumer.to_owned(), shard.clone());
        self.db
            .call(move |conn| {
                Ok(conn
                    .query_row(
                        "SELECT seq FROM checkpoints WHERE consumer = ?1 AND shard = ?2",
                        params![consumer, shard],
                        |row| row.get::<_, String>(0),
                    )
                    .optional()?
                    .map(SequenceNumber))
            })
            .await
    }

    async fn set(&self, consumer: &str, shard: &ShardId, seq: &SequenceNumber) -> Result<()> {
        let (consumer, shard, seq) = (consumer.to_owned(), shard.clone(), seq.clone());
        let padded =
            SequenceNumber::from_u64(seq.as_u64().ok_or_else(|| Error::stream(format!("bad sequence number {seq}")))?);
        self.db
            .call(move |conn| {
                // Sequence numbers are zero-padded, so text order is number order and the
                // condition keeps a checkpoint from ever moving back.
                conn.execute(
                    "INSERT INTO checkpoints (consumer, shard, seq) VALUES (?1, ?2, ?3) \
                     ON CONFLICT (consumer, shard) DO UPDATE SET seq = excluded.seq \
                     WHERE excluded.seq > checkpoints.seq",
                    params![consumer, shard, padded.0],
                )?;
                Ok(())
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn shard_count_is_fixed_at_creation() {
        let dir = tempfile::tempdir().unwrap();
        let s = EmbeddedStream::open(dir.path(), Some(2)).unwrap();
        assert_eq!(s.shard_count(), 2);
        assert_eq!(EmbeddedStream::open(dir.path(), None).unwrap().shard_count(), 2);
        let err = EmbeddedStream::open(dir.path(), Some(3)).err().unwrap().to_string();
        assert!(err.contains("has 2 shards") && err.contains("--shards"), "{err}");
    }

    #[tokio::test]
    async fn a_read_says_how_far_behind_the_newest_record_it_ends() {
        let dir = tempfile::tempdir().unwrap();
        let s = EmbeddedStream::open(dir.path(), Some(1)).unwrap();
        let put = |key: &str| PutRecord { partition_key: key.into(), data: b"{}".to_vec() };
        s.put_records(&[put("a")]).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(40)).await;
        s.put_records(&[put("b")]).await.unwrap();
        let it = ShardIterator { shard: shard_name(0), position: "0".into() };
        let first = s.read(&it, 1, usize::MAX).await.unwrap();
        assert!(!first.caught_up && first.millis_behind.is_some_and(|ms| ms >= 30), "{:?}", first.millis_behind);
        assert_eq!(s.records_behind(&it).await.unwrap(), Some(2));
        assert_eq!(s.records_behind(&first.next).await.unwrap(), Some(1));
        let rest = s.read(&first.next, 10, usize::MAX).await.unwrap();
        assert!(rest.caught_up && rest.millis_behind == Some(0));
        assert_eq!(s.records_behind(&rest.next).await.unwrap(), Some(0));
    }

    #[tokio::test]
    async fn a_sqlite_failure_is_a_stream_error_that_keeps_its_cause() {
        let dir = tempfile::tempdir().unwrap();
        let s = EmbeddedStream::open(dir.path(), Some(1)).unwrap();
        s.db.blocking().execute_batch("DROP TABLE records").unwrap();
        let it = ShardIterator { shard: shard_name(0), position: "0".into() };
        let err = s.read(&it, 10, usize::MAX).await.unwrap_err();
        assert_eq!(err.stage(), "stream", "{err}");
        assert!(err.to_string().starts_with("stream: ") && err.to_string().contains("stream.sqlite"), "{err}");
        let cause = std::error::Error::source(&err).expect("the SQLite error is kept");
        assert!(cause.downcast_ref::<rusqlite::Error>().is_some(), "{cause:?}");
    }
}
