//! The Kinesis stream: `kinesis://<stream-name>`.
//!
//! The sink sends PutRecords calls of at most 500 records and 5 MiB, and retries only the
//! entries a call failed, with backoff and jitter. A call never holds two records with the
//! same partition key, and calls are sent one after another, so a retried start can never
//! be overtaken by its trip's end.
//!
//! The source lists the shards with their parents, opens an iterator per shard and reads
//! with GetRecords within the service limits (at most 10,000 records a call, and a
//! configurable pause between calls on a shard: 200 ms keeps to five calls a second).
//! A throttled read backs off; an expired iterator is renewed from the last record read.
//! `MillisBehindLatest == 0` tells the consumer it has caught up with an open shard. A
//! closed shard (split or merged: ListShards gives it an ending sequence number) is read
//! until its iterator runs out, however many empty pages at zero lag come first, as
//! GetRecords' documentation warns; only then may its children be read.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use aws_sdk_kinesis::types::{PutRecordsRequestEntry, ShardIteratorType, StreamStatus};
use aws_smithy_types::Blob;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;
use chrono::{DateTime, Utc};
use tracing::{debug, info, warn};

use super::{
    PutRecord, ReadResult, Refused, SequenceNumber, Shard, ShardId, ShardIterator, StartPosition, StreamRecord,
    StreamSink, StreamSource, refusal,
};
use crate::backend::aws::{Aws, backoff, describe, wait_for};
use crate::{Error, Result};

/// Records per PutRecords call, the service's limit.
pub const MAX_PUT_RECORDS: usize = 500;
/// Bytes (data plus partition keys) per PutRecords call, the service's limit.
pub const MAX_PUT_BYTES: usize = 5 * 1024 * 1024;
/// Records per GetRecords call, the service's limit.
pub const MAX_GET_RECORDS: usize = 10_000;
/// Attempts at the failed entries of one PutRecords call before giving up.
const MAX_PUT_ATTEMPTS: u32 = 12;
/// Default pause between two reads of one shard: five calls a second per shard.
pub const DEFAULT_READ_INTERVAL: Duration = Duration::from_millis(200);

/// A Kinesis data stream.
pub struct KinesisStream {
    client: aws_sdk_kinesis::Client,
    name: String,
    read_interval: Duration,
    last_read: Mutex<HashMap<ShardId, Instant>>,
}

/// Where a renewed iterator resumes: what the last read got to.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Resume {
    TrimHorizon,
    At(i64),
    After(String),
}

impl Resume {
    fn encode(&self, iterator: &str) -> String {
        match self {
            Resume::TrimHorizon => format!("trim\n{iterator}"),
            Resume::At(ms) => format!("at:{ms}\n{iterator}"),
            Resume::After(seq) => format!("after:{seq}\n{iterator}"),
        }
    }

    fn decode(position: &str) -> Result<(Resume, &str)> {
        let bad = || Error::stream(format!("not a Kinesis iterator position: {position:?}"));
        let (resume, iterator) = position.split_once('\n').ok_or_else(bad)?;
        let resume = match resume.split_once(':') {
            None if resume == "trim" => Resume::TrimHorizon,
            Some(("at", ms)) => Resume::At(ms.parse().map_err(|_| bad())?),
            Some(("after", seq)) => Resume::After(seq.to_owned()),
            _ => return Err(bad()),
        };
        Ok((resume, iterator))
    }
}

impl KinesisStream {
    /// The stream `name`, reached with `aws`'s configuration.
    pub fn new(aws: &Aws, name: &str) -> Self {
        KinesisStream {
            client: aws.kinesis(),
            name: name.to_owned(),
            read_interval: DEFAULT_READ_INTERVAL,
            last_read: Mutex::default(),
        }
    }

    /// Sets the pause between two reads of one shard (tests against an emulator use 0).
    pub fn with_read_interval(mut self, interval: Duration) -> Self {
        self.read_interval = interval;
        self
    }

    /// The stream's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Creates the stream with `shards` shards unless it exists, and waits until it is
    /// active. Returns whether it was created.
    ///
    /// # Errors
    /// When Kinesis refuses, or the stream does not become active within two minutes.
    pub async fn create_if_missing(&self, shards: u32) -> Result<bool> {
        let created = match self.client.create_stream().stream_name(&self.name).shard_count(shards as i32).send().await
        {
            Ok(_) => true,
            Err(e) if e.code() == Some("ResourceInUseException") => false,
            Err(e) => {
                return Err(Error::stream(format!("cannot create Kinesis stream {}: {}", self.name, describe(&e))));
            }
        };
        let late = || Error::stream(format!("Kinesis stream {} is not active after two minutes", self.name));
        wait_for(Duration::from_secs(120), late, async || {
            Ok((self.status().await? == Some(StreamStatus::Active)).then_some(()))
        })
        .await?;
        Ok(created)
    }

    /// The stream's status, or `None` when it does not exist.
    async fn status(&self) -> Result<Option<StreamStatus>> {
        match self.client.describe_stream_summary().stream_name(&self.name).send().await {
            Ok(out) => Ok(out.stream_description_summary().map(|s| s.stream_status().clone())),
            Err(e) if e.code() == Some("ResourceNotFoundException") => Ok(None),
            Err(e) => Err(Error::stream(format!("cannot describe Kinesis stream {}: {}", self.name, describe(&e)))),
        }
    }

    /// Checks that the stream exists, with a message saying how to create it if not.
    ///
    /// # Errors
    /// When it does not exist or cannot be described.
    pub async fn check_exists(&self) -> Result<()> {
        match self.status().await? {
            Some(_) => Ok(()),
            None => Err(Error::config(format!(
                "Kinesis stream {} does not exist; create it with 'tripflow setup --stream kinesis://{}'",
                self.name, self.name
            ))),
        }
    }

    /// Sends one call's records until every entry is stored.
    async fn put_chunk(&self, chunk: Vec<&PutRecord>) -> Result<()> {
        let mut todo = chunk;
        for attempt in 0.. {
            let entries = todo
                .iter()
                .map(|r| {
                    PutRecordsRequestEntry::builder()
                        .partition_key(r.partition_key.as_str())
                        .data(Blob::new(r.data.clone()))
                        .build()
                        .map_err(|e| crate::error::Stage::Stream.error("PutRecords entry", e))
                })
                .collect::<Result<Vec<_>>>()?;
            let out =
                self.client.put_records().stream_name(&self.name).set_records(Some(entries)).send().await.map_err(
                    |e| Error::stream(format!("PutRecords to Kinesis stream {}: {}", self.name, describe(&e))),
                )?;
            if out.failed_record_count().unwrap_or(0) == 0 {
                return Ok(());
            }
            let failed: Vec<&PutRecord> = todo
                .iter()
                .zip(out.records())
                .filter(|(_, result)| result.error_code().is_some())
                .map(|(r, _)| *r)
                .collect();
            let first_error = out.records().iter().find_map(|r| r.error_code()).unwrap_or("unknown").to_owned();
            if attempt + 1 >= MAX_PUT_ATTEMPTS {
                return Err(Error::stream(format!(
                    "PutRecords to {}: {} records still failing after {MAX_PUT_ATTEMPTS} attempts ({first_error})",
                    self.name,
                    failed.len()
                )));
            }
            debug!(failed = failed.len(), error = %first_error, attempt, "Retrying failed PutRecords entries.");
            todo = failed;
            tokio::time::sleep(backoff(attempt)).await;
        }
        unreachable!("the loop returns")
    }

    /// Waits until the shard may be read again.
    async fn pace(&self, shard: &ShardId) {
        if self.read_interval.is_zero() {
            return;
        }
        let wait = {
            let last = self.last_read.lock().expect("read pacing");
            last.get(shard).map(|at| (*at + self.read_interval).saturating_duration_since(Instant::now()))
        };
        if let Some(wait) = wait.filter(|w| !w.is_zero()) {
            tokio::time::sleep(wait).await;
        }
        self.last_read.lock().expect("read pacing").insert(shard.clone(), Instant::now());
    }

    /// Opens an iterator at `resume`, or at LATEST when `latest` (remembering `resume`
    /// for renewals).
    async fn open(&self, shard: &ShardId, resume: Resume, latest: bool) -> Result<ShardIterator> {
        let mut req = self.client.get_shard_iterator().stream_name(&self.name).shard_id(shard);
        req = match &resume {
            _ if latest => req.shard_iterator_type(ShardIteratorType::Latest),
            Resume::TrimHorizon => req.shard_iterator_type(ShardIteratorType::TrimHorizon),
            Resume::At(ms) => req
                .shard_iterator_type(ShardIteratorType::AtTimestamp)
                .timestamp(aws_smithy_types::DateTime::from_millis(*ms)),
            Resume::After(seq) => {
                req.shard_iterator_type(ShardIteratorType::AfterSequenceNumber).starting_sequence_number(seq)
            }
        };
        let out = req
            .send()
            .await
            .map_err(|e| Error::stream(format!("GetShardIterator for {} {shard}: {}", self.name, describe(&e))))?;
        let iterator = out
            .shard_iterator()
            .ok_or_else(|| Error::stream(format!("GetShardIterator for {} {shard} returned no iterator", self.name)))?;
        Ok(ShardIterator { shard: shard.clone(), position: resume.encode(iterator) })
    }
}

/// Splits records into PutRecords calls: at most [`MAX_PUT_RECORDS`] records and
/// [`MAX_PUT_BYTES`] bytes, and never two records with the same partition key.
pub fn put_calls<'a>(records: impl IntoIterator<Item = &'a PutRecord>) -> Vec<Vec<&'a PutRecord>> {
    let mut calls = Vec::new();
    let mut call: Vec<&PutRecord> = Vec::new();
    let mut keys: HashSet<&str> = HashSet::new();
    let mut bytes = 0;
    for r in records {
        let size = r.data.len() + r.partition_key.len();
        if call.len() == MAX_PUT_RECORDS || bytes + size > MAX_PUT_BYTES || keys.contains(r.partition_key.as_str()) {
            calls.push(std::mem::take(&mut call));
            keys.clear();
            bytes = 0;
        }
        keys.insert(&r.partition_key);
        bytes += size;
        call.push(r);
    }
    if !call.is_empty() {
        calls.push(call);
    }
    calls
}

#[async_trait]
impl StreamSink for KinesisStream {
    async fn put_records(&self, records: &[PutRecord]) -> Result<Vec<Refused>> {
        let mut refused = Vec::new();
        let mut ok = Vec::with_capacity(records.len());
        for (index, r) in records.iter().enumerate() {
            match refusal(r) {
                Some(reason) => refused.push(Refused { index, reason }),
                None => ok.push(r),
            }
        }
        for call in put_calls(ok) {
            self.put_chunk(call).await?;
        }
        Ok(refused)
    }
}

#[async_trait]
impl StreamSource for KinesisStream {
    fn identity(&self) -> String {
        format!("kinesis:{}", self.name)
    }

    async fn shards(&self) -> Result<Vec<Shard>> {
        let mut shards = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let req = match &token {
                Some(t) => self.client.list_shards().next_token(t),
                None => self.client.list_shards().stream_name(&self.name),
            };
            let out = req.send().await.map_err(|e| {
                if e.code() == Some("ResourceNotFoundException") {
                    Error::config(format!(
                        "Kinesis stream {} does not exist; create it with 'tripflow setup --stream kinesis://{}'",
                        self.name, self.name
                    ))
                } else {
                    Error::stream(format!("ListShards of {}: {}", self.name, describe(&e)))
                }
            })?;
            for s in out.shards() {
                let parents = [s.parent_shard_id(), s.adjacent_parent_shard_id()].into_iter().flatten();
                shards.push(Shard {
                    id: s.shard_id().to_owned(),
                    parents: parents.map(str::to_owned).collect(),
                    ending_sequence_number: s
                        .sequence_number_range()
                        .and_then(|r| r.ending_sequence_number())
                        .map(|seq| SequenceNumber(seq.into())),
                });
            }
            match out.next_token() {
                Some(t) => token = Some(t.to_owned()),
                None => break,
            }
        }
        // Shard ids grow with creation, so this puts parents before their children.
        shards.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(shards)
    }

    async fn iterator(&self, shard: &ShardId, start: &StartPosition) -> Result<ShardIterator> {
        let resume = match start {
            StartPosition::TrimHorizon => Resume::TrimHorizon,
            StartPosition::AfterSequenceNumber(seq) => Resume::After(seq.0.trim_start_matches('0').to_owned()),
            StartPosition::AtTimestamp(at) => Resume::At(at.timestamp_millis()),
            // Renewing a LATEST iterator resumes at the instant it was opened, so a record
            // put in between is not skipped.
            StartPosition::Latest => return self.open(shard, Resume::At(Utc::now().timestamp_millis()), true).await,
        };
        self.open(shard, resume, false).await
    }

    async fn read(&self, iterator: &ShardIterator, limit: usize, _max_bytes: usize) -> Result<ReadResult> {
        let (mut resume, first) = Resume::decode(&iterator.position)?;
        let mut current = first.to_owned();
        let shard = &iterator.shard;
        for attempt in 0.. {
            self.pace(shard).await;
            let sent = self
                .client
                .get_records()
                .shard_iterator(&current)
                .limit(limit.clamp(1, MAX_GET_RECORDS) as i32)
                .send()
                .await;
            let out = match sent {
                Ok(out) => out,
                Err(e) if e.code() == Some("ExpiredIteratorException") && attempt < 3 => {
                    info!(shard = %shard, "Shard iterator expired; renewing it from the last record read.");
                    current = Resume::decode(&self.open(shard, resume.clone(), false).await?.position)?.1.to_owned();
                    continue;
                }
                Err(e) if e.code() == Some("ProvisionedThroughputExceededException") => {
                    warn!(shard = %shard, "GetRecords throttled; backing off.");
                    tokio::time::sleep(backoff(attempt.min(6) + 2)).await;
                    return Ok(ReadResult {
                        records: Vec::new(),
                        next: ShardIterator { shard: shard.clone(), position: resume.encode(&current) },
                        caught_up: false,
                        closed: false,
                        millis_behind: None,
                    });
                }
                Err(e) => {
                    return Err(Error::stream(format!("GetRecords from {} {shard}: {}", self.name, describe(&e))));
                }
            };
            let records: Vec<StreamRecord> = out
                .records()
                .iter()
                .map(|r| StreamRecord {
                    sequence_number: SequenceNumber(r.sequence_number().into()),
                    partition_key: r.partition_key().into(),
                    data: r.data().as_ref().to_vec(),
                    arrival: r
                        .approximate_arrival_timestamp()
                        .and_then(|t| t.to_millis().ok())
                        .and_then(DateTime::from_timestamp_millis)
                        .unwrap_or_default(),
                })
                .collect();
            if let Some(last) = records.last() {
                resume = Resume::After(last.sequence_number.0.to_string());
            }
            // A full read may have stopped just short of more records; only a short read
            // at zero lag is caught up.
            let caught_up = match out.millis_behind_latest() {
                Some(ms) => ms == 0 && records.len() < limit,
                None => records.is_empty(),
            };
            let (position, closed) = match out.next_shard_iterator() {
                Some(next) => (resume.encode(next), false),
                None => (resume.encode(&current), true),
            };
            return Ok(ReadResult {
                records,
                next: ShardIterator { shard: shard.clone(), position },
                caught_up: caught_up || closed,
                closed,
                millis_behind: out.millis_behind_latest().and_then(|ms| u64::try_from(ms).ok()),
            });
        }
        unreachable!("the loop returns")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(key: &str, bytes: usize) -> PutRecord {
        PutRecord { partition_key: key.into(), data: vec![b'x'; bytes] }
    }

    #[test]
    fn calls_respect_the_limits_and_never_repeat_a_key() {
        let records: Vec<PutRecord> = (0..1200).map(|i| rec(&format!("trip-{i}"), 10)).collect();
        let calls = put_calls(&records);
        assert_eq!(calls.iter().map(Vec::len).collect::<Vec<_>>(), [500, 500, 200]);

        let big: Vec<PutRecord> = (0..12).map(|i| rec(&format!("k{i}"), 1024 * 1024 - 8)).collect();
        let calls = put_calls(&big);
        assert!(
            calls
                .iter()
                .all(|c| c.iter().map(|r| r.data.len() + r.partition_key.len()).sum::<usize>() <= MAX_PUT_BYTES)
        );
        assert_eq!(calls.iter().map(Vec::len).sum::<usize>(), 12);

        let same = vec![rec("a", 1), rec("b", 1), rec("a", 1), rec("c", 1)];
        let calls = put_calls(&same);
        assert_eq!(calls.len(), 2, "the second 'a' starts a new call");
        assert_eq!(calls[1][0].partition_key, "a");
    }

    #[test]
    fn positions_round_trip() {
        for resume in [Resume::TrimHorizon, Resume::At(1_716_000_000_000), Resume::After("4959".into())] {
            let encoded = resume.encode("AAAA/iterator+=");
            let (back, iterator) = Resume::decode(&encoded).unwrap();
            assert_eq!((back, iterator), (resume, "AAAA/iterator+="));
        }
        assert!(Resume::decode("garbage").is_err());
    }
}
