//! The embedded stream: Kinesis' model in a folder under `--home`.
//!
//! Each shard's records are an append-only log of segment files ([`segments`]), with
//! sequence numbers that count the shard's records from 1. The shard count and the
//! stream's identity are fixed when the stream is created, and kept with the consumer
//! checkpoints in a small SQLite file, `checkpoints.sqlite`, one row per consumer and
//! shard, that only move forward. A producer and a consumer may use the stream at the
//! same time from separate processes.
//!
//! A home made before the log (`stream.sqlite`, every record a row of one SQLite table)
//! keeps that format, so its unread records and checkpoints stay where they are.

pub mod segments;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{TimeZone, Utc};
use rusqlite::{OptionalExtension, params};

use super::{
    Checkpoint, CheckpointStore, PutRecord, ReadResult, Refused, SequenceNumber, Shard, ShardId, ShardIterator,
    StartPosition, StreamRecord, StreamSink, StreamSource, refusal, shard_index, shard_name,
};
use crate::backend::sqlite::Db;
use crate::error::Stage;
use crate::{Error, Result};
use segments::SegmentLog;

/// Default number of shards of a new embedded stream.
pub const DEFAULT_SHARDS: u32 = 4;

/// The stream's folder under `--home`.
pub const FOLDER: &str = "stream";

/// The single file of a stream made before the log.
pub const SQLITE_FILE: &str = "stream.sqlite";

/// The stream's identity and shard count, and the consumer checkpoints.
const META_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS stream_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS checkpoints (
    consumer TEXT NOT NULL,
    shard TEXT NOT NULL,
    seq TEXT NOT NULL,
    PRIMARY KEY (consumer, shard)
);
";

/// The records table of a stream made before the log.
const SQLITE_RECORDS_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS records (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    shard INTEGER NOT NULL,
    partition_key TEXT NOT NULL,
    data BLOB NOT NULL,
    arrival_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS records_by_shard ON records (shard, seq);
CREATE INDEX IF NOT EXISTS records_by_arrival ON records (shard, arrival_ms);
";

/// Page cache of the SQLite file: the checkpoints are a few rows; a stream made before
/// the log appends, and its reads follow one shard's index forward.
const CACHE_MIB: i64 = 8;

/// Where a stream's records are kept.
#[derive(Clone)]
enum Records {
    /// A log of segment files per shard.
    Log(Arc<SegmentLog>),
    /// The `records` table of `stream.sqlite` (a stream made before the log).
    Sqlite,
}

/// A durable, sharded stream under `--home`: `<home>/stream/`, or `<home>/stream.sqlite`
/// for a stream made before the log.
#[derive(Clone)]
pub struct EmbeddedStream {
    /// Identity, shard count and checkpoints (and the records of a SQLite stream).
    db: Db,
    records: Records,
    shard_count: u32,
    path: PathBuf,
    id: String,
}

impl EmbeddedStream {
    /// Opens the stream under `home`, creating it with `shards` shards (default
    /// [`DEFAULT_SHARDS`]) if it does not exist. A home with a `stream.sqlite` and no
    /// `stream/` folder keeps its SQLite stream.
    ///
    /// # Errors
    /// When the stream cannot be opened, or it exists with a different shard count than
    /// `shards` asks for.
    pub fn open(home: &Path, shards: Option<u32>) -> Result<Self> {
        if home.join(SQLITE_FILE).exists() && !home.join(FOLDER).exists() {
            Self::open_sqlite(home, shards)
        } else {
            let dir = home.join(FOLDER);
            let log = SegmentLog::open(&dir)?;
            let db = Db::open(&dir.join("checkpoints.sqlite"), META_SCHEMA, CACHE_MIB, Stage::Stream)?;
            Self::with_meta(db, Records::Log(Arc::new(log)), dir, home, shards)
        }
    }

    /// Opens (or creates) the stream of `home` in the format made before the log:
    /// every record a row of one SQLite table in `<home>/stream.sqlite`.
    ///
    /// # Errors
    /// As [`EmbeddedStream::open`].
    pub fn open_sqlite(home: &Path, shards: Option<u32>) -> Result<Self> {
        let path = home.join(SQLITE_FILE);
        let schema = format!("{META_SCHEMA}{SQLITE_RECORDS_SCHEMA}");
        let db = Db::open(&path, &schema, CACHE_MIB, Stage::Stream)?;
        Self::with_meta(db, Records::Sqlite, path, home, shards)
    }

    /// Reads the shard count and identity, recording them first for a new stream.
    fn with_meta(db: Db, records: Records, path: PathBuf, home: &Path, shards: Option<u32>) -> Result<Self> {
        if shards == Some(0) {
            return Err(Error::config("--shards must be at least 1"));
        }
        let want = shards.unwrap_or(DEFAULT_SHARDS);
        // A new stream draws its identity once; the first writer's draw stays.
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
            return Err(Error::config(format!(
                "the stream in {} has {shard_count} shards, but --shards asks for {asked}; \
                 omit --shards or use a new --home",
                home.display()
            )));
        }
        Ok(EmbeddedStream { db, records, shard_count, path, id })
    }

    /// Rolls the log's segments over at `bytes` instead of
    /// [`segments::SEGMENT_BYTES`]; on a stream just opened (tests use small segments).
    pub fn with_segment_bytes(mut self, bytes: u64) -> Self {
        if let Records::Log(log) = &mut self.records
            && let Some(log) = Arc::get_mut(log)
        {
            log.set_segment_bytes(bytes);
        }
        self
    }

    /// Number of shards.
    pub fn shard_count(&self) -> u32 {
        self.shard_count
    }

    /// The stream's folder (or file, for a stream made before the log).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` on the log on the blocking pool.
    async fn on_log<T: Send + 'static>(
        log: &Arc<SegmentLog>,
        f: impl FnOnce(&SegmentLog) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let log = log.clone();
        tokio::task::spawn_blocking(move || f(&log)).await.map_err(|e| Stage::Stream.error("the stream's log", e))?
    }
}

fn shard_number(shard: &ShardId, count: u32) -> Result<u32> {
    shard
        .strip_prefix("shardId-")
        .and_then(|n| n.parse::<u32>().ok())
        .filter(|&n| n < count)
        .ok_or_else(|| Error::stream(format!("no shard {shard:?} in the embedded stream")))
}

fn parse_position(it: &ShardIterator) -> Result<u64> {
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
                None => rows.push((shard_index(&r.partition_key, self.shard_count), index)),
            }
        }
        match &self.records {
            Records::Log(log) => {
                // Framed here, in one buffer per shard: the blocking pool needs owned
                // bytes, and this is the one copy the write makes.
                let frames = segments::encode(
                    rows.iter()
                        .map(|&(shard, i)| (shard, records[i].partition_key.as_str(), records[i].data.as_slice())),
                );
                Self::on_log(log, move |log| log.put(frames)).await?;
            }
            Records::Sqlite => {
                let rows: Vec<(u32, String, Vec<u8>)> = rows
                    .iter()
                    .map(|&(shard, i)| (shard, records[i].partition_key.to_string(), records[i].data.clone()))
                    .collect();
                sqlite::put(&self.db, rows).await?;
            }
        }
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
        let after = match (start, &self.records) {
            (StartPosition::TrimHorizon, _) => 0,
            (StartPosition::AfterSequenceNumber(seq), _) => {
                seq.as_u64().ok_or_else(|| Error::stream(format!("bad embedded sequence number {seq}")))?
            }
            (StartPosition::Latest, Records::Log(log)) => Self::on_log(log, move |log| log.latest(n)).await?,
            (StartPosition::AtTimestamp(at), Records::Log(log)) => {
                let at = at.timestamp_millis();
                Self::on_log(log, move |log| log.before_arrival(n, at)).await?
            }
            (start, Records::Sqlite) => sqlite::position(&self.db, n, start.clone()).await?,
        };
        Ok(ShardIterator { shard: shard.clone(), position: after.to_string() })
    }

    async fn records_behind(&self, iterator: &ShardIterator) -> Result<Option<u64>> {
        let n = shard_number(&iterator.shard, self.shard_count)?;
        let after = parse_position(iterator)?;
        let cap = super::RECORDS_BEHIND_CAP;
        Ok(Some(match &self.records {
            // Sequence numbers count a shard's records, so this is a subtraction.
            Records::Log(log) => Self::on_log(log, move |log| log.latest(n)).await?.saturating_sub(after).min(cap),
            Records::Sqlite => sqlite::records_behind(&self.db, n, after, cap).await?,
        }))
    }

    async fn read(&self, iterator: &ShardIterator, limit: usize, max_bytes: usize) -> Result<ReadResult> {
        let n = shard_number(&iterator.shard, self.shard_count)?;
        let after = parse_position(iterator)?;
        let (records, full, millis_behind) = match &self.records {
            Records::Log(log) => {
                Self::on_log(log, move |log| {
                    let (records, full) = log.read(n, after, limit, max_bytes)?;
                    // The lag, as Kinesis gives it: from the last record read to the
                    // newest in the shard.
                    let millis_behind = match records.last() {
                        Some(last) if full => log.millis_after(n, last.arrival.timestamp_millis())?,
                        _ => Some(0),
                    };
                    Ok((records, full, millis_behind))
                })
                .await?
            }
            Records::Sqlite => sqlite::read(&self.db, n, after, limit, max_bytes).await?,
        };
        let next_after = records.last().and_then(|r| r.sequence_number.as_u64()).unwrap_or(after);
        Ok(ReadResult {
            caught_up: !full,
            closed: false,
            millis_behind,
            records,
            next: ShardIterator { shard: iterator.shard.clone(), position: next_after.to_string() },
        })
    }
}

/// The records of a stream made before the log, in the `records` table of
/// `stream.sqlite`: one AUTOINCREMENT key gives every record its sequence number, so
/// numbers increase within a shard and are shared by the shards.
mod sqlite {
    use super::*;

    pub(super) async fn put(db: &Db, rows: Vec<(u32, String, Vec<u8>)>) -> Result<()> {
        db.call(move |conn| {
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
    }

    pub(super) async fn position(db: &Db, n: u32, start: StartPosition) -> Result<u64> {
        let after: i64 = db
            .call(move |conn| {
                Ok(match start {
                    StartPosition::TrimHorizon | StartPosition::AfterSequenceNumber(_) => 0,
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
        Ok(after.unsigned_abs())
    }

    pub(super) async fn records_behind(db: &Db, n: u32, after: u64, cap: u64) -> Result<u64> {
        // Sequence numbers are shared by the shards, so the records are counted, along
        // the shard's index and no further than the cap.
        let behind: i64 = db
            .call(move |conn| {
                Ok(conn
                    .prepare_cached(
                        "SELECT count(*) FROM (SELECT 1 FROM records WHERE shard = ?1 AND seq > ?2 LIMIT ?3)",
                    )?
                    .query_row(params![n, after as i64, cap as i64], |row| row.get(0))?)
            })
            .await?;
        Ok(behind.unsigned_abs())
    }

    pub(super) async fn read(
        db: &Db,
        n: u32,
        after: u64,
        limit: usize,
        max_bytes: usize,
    ) -> Result<(Vec<StreamRecord>, bool, Option<u64>)> {
        // Rows are stepped one by one, so a read that reaches `max_bytes` leaves the
        // rest of the shard on disk.
        db.call(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT seq, partition_key, data, arrival_ms FROM records \
                 WHERE shard = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
            )?;
            let mut rows = stmt.query(params![n, after as i64, limit as i64])?;
            let (mut records, mut bytes) = (Vec::new(), 0usize);
            while let Some(row) = rows.next()? {
                let seq: i64 = row.get(0)?;
                let arrival_ms: i64 = row.get(3)?;
                let data: Vec<u8> = row.get(2)?;
                bytes += data.len();
                records.push(StreamRecord {
                    sequence_number: SequenceNumber::from_u64(seq as u64),
                    partition_key: row.get::<_, String>(1)?.into(),
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
        .await
    }
}

#[async_trait]
impl CheckpointStore for EmbeddedStream {
    async fn get(&self, consumer: &str, shard: &ShardId) -> Result<Option<Checkpoint>> {
        let (consumer, shard) = (consumer.to_owned(), shard.clone());
        self.db
            .call(move |conn| {
                Ok(conn
                    .query_row(
                        "SELECT seq FROM checkpoints WHERE consumer = ?1 AND shard = ?2",
                        params![consumer, shard],
                        |row| Ok(Checkpoint::from_stored(row.get_ref(0)?.as_str()?)),
                    )
                    .optional()?)
            })
            .await
    }

    async fn set(&self, consumer: &str, shard: &ShardId, to: &Checkpoint) -> Result<()> {
        let (consumer, shard) = (consumer.to_owned(), shard.clone());
        let padded = match to {
            Checkpoint::At(seq) => SequenceNumber::from_u64(
                seq.as_u64().ok_or_else(|| Error::stream(format!("bad sequence number {seq}")))?,
            ),
            // Sorts after every padded number: see `Checkpoint::SHARD_END`.
            Checkpoint::ShardEnd => SequenceNumber(Checkpoint::SHARD_END.into()),
        };
        self.db
            .call(move |conn| {
                // Sequence numbers are zero-padded, so text order is number order and the
                // condition keeps a checkpoint from ever moving back.
                conn.execute(
                    "INSERT INTO checkpoints (consumer, shard, seq) VALUES (?1, ?2, ?3) \
                     ON CONFLICT (consumer, shard) DO UPDATE SET seq = excluded.seq \
                     WHERE excluded.seq > checkpoints.seq",
                    params![consumer, shard, padded.0.as_str()],
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
        let s = EmbeddedStream::open_sqlite(dir.path(), Some(1)).unwrap();
        s.db.blocking().execute_batch("DROP TABLE records").unwrap();
        let it = ShardIterator { shard: shard_name(0), position: "0".into() };
        let err = s.read(&it, 10, usize::MAX).await.unwrap_err();
        assert_eq!(err.stage(), "stream", "{err}");
        assert!(err.to_string().starts_with("stream: ") && err.to_string().contains("stream.sqlite"), "{err}");
        let cause = std::error::Error::source(&err).expect("the SQLite error is kept");
        assert!(cause.downcast_ref::<rusqlite::Error>().is_some(), "{cause:?}");
    }
}
