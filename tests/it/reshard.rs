//! Ingest across reshards. On kinesalite, an independent Kinesis that reshards as
//! Kinesis does (a closed parent answers empty pages at zero lag with an iterator before
//! its iterator runs out): every shard split, then two merged, both between batch
//! ingests and under `--follow`. On moto: uniform scaling, as UpdateShardCount does it.
//!
//! Checked each time: every record is read once and the counts balance; a child is read
//! only after its parents' ends; checkpoints are kept per shard; a closed parent's end
//! is recorded, and later runs do not read it again.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use aws_sdk_kinesis::types::StreamStatus;
use tripflow::backend::aws::Aws;
use tripflow::ingest::deadletter::FileDeadLetters;
use tripflow::ingest::{DEFAULT_CONSUMER, Ingest, IngestCounts, IngestOptions};
use tripflow::store::TripStore;
use tripflow::store::lsm::LsmStore;
use tripflow::stream::checkpoints_dynamodb::DynamoCheckpoints;
use tripflow::stream::kinesis::KinesisStream;
use tripflow::stream::{
    Checkpoint, CheckpointStore, PutRecord, ReadResult, SequenceNumber, Shard, ShardId, ShardIterator, StartPosition,
    StreamSink, StreamSource,
};

use crate::common::{end_event, start_event};
use crate::moto::unique;

/// One read call: the shard, the sequence numbers it returned, and whether it was the
/// shard's end.
#[derive(Debug, Clone)]
struct Read {
    shard: ShardId,
    seqs: Vec<SequenceNumber>,
    closed: bool,
}

/// The Kinesis source, recording every read.
struct Recording {
    inner: KinesisStream,
    reads: Mutex<Vec<Read>>,
}

#[async_trait]
impl StreamSource for Recording {
    fn identity(&self) -> String {
        self.inner.identity()
    }

    async fn shards(&self) -> tripflow::Result<Vec<Shard>> {
        self.inner.shards().await
    }

    async fn iterator(&self, shard: &ShardId, start: &StartPosition) -> tripflow::Result<ShardIterator> {
        self.inner.iterator(shard, start).await
    }

    async fn read(&self, iterator: &ShardIterator, limit: usize, max_bytes: usize) -> tripflow::Result<ReadResult> {
        let read = self.inner.read(iterator, limit, max_bytes).await?;
        self.reads.lock().unwrap().push(Read {
            shard: iterator.shard.clone(),
            seqs: read.records.iter().map(|r| r.sequence_number.clone()).collect(),
            closed: read.closed,
        });
        Ok(read)
    }
}

impl Recording {
    fn take(&self) -> Vec<Read> {
        std::mem::take(&mut *self.reads.lock().unwrap())
    }
}

/// The starts (or ends) of trips `trips`, keyed by trip id.
fn events(trips: std::ops::Range<u32>, ends: bool) -> Vec<PutRecord> {
    trips
        .map(|i| {
            let trip = format!("trip-{i:03}");
            let data = if ends {
                end_event(&trip, "2024-05-25 14:10:00", "12.5")
            } else {
                start_event(&trip, "2024-05-25 13:30:00")
            };
            PutRecord { partition_key: trip.into(), data: data.into_bytes() }
        })
        .collect()
}

/// A stream, its checkpoints and an embedded trip table, with how many records were put.
struct Rig {
    aws: Aws,
    name: String,
    source: Recording,
    checkpoints: DynamoCheckpoints,
    store: LsmStore,
    dead: FileDeadLetters,
    put: AtomicU64,
    _tmp: tempfile::TempDir,
}

impl Rig {
    async fn new(kinesis: Aws, dynamodb: Aws, shards: u32) -> Rig {
        let name = unique("reshard");
        let stream = KinesisStream::new(&kinesis, &name).with_read_interval(Duration::ZERO);
        assert!(stream.create_if_missing(shards).await.unwrap());
        let table = unique("reshard-checkpoints");
        assert!(DynamoCheckpoints::create_if_missing(&dynamodb, &table).await.unwrap());
        let tmp = tempfile::tempdir().unwrap();
        Rig {
            aws: kinesis,
            name,
            source: Recording { inner: stream, reads: Mutex::default() },
            checkpoints: DynamoCheckpoints::new(&dynamodb, &table),
            store: LsmStore::open(tmp.path()).unwrap(),
            dead: FileDeadLetters::open(&tmp.path().join("dead.ndjson")).unwrap(),
            put: AtomicU64::new(0),
            _tmp: tmp,
        }
    }

    fn ingest(&self) -> Ingest<'_> {
        Ingest { source: &self.source, checkpoints: &self.checkpoints, store: &self.store, dead_letters: &self.dead }
    }

    /// One batch ingest, which must balance.
    async fn run(&self) -> IngestCounts {
        let counts = self.ingest().run(&opts()).await.unwrap();
        assert!(counts.balanced(), "{counts:?}");
        assert_eq!(counts.dead_lettered, 0, "{counts:?}");
        counts
    }

    async fn put(&self, trips: std::ops::Range<u32>, ends: bool) {
        let records = events(trips, ends);
        assert!(self.source.inner.put_records(&records).await.unwrap().is_empty());
        self.put.fetch_add(records.len() as u64, Ordering::Relaxed);
    }

    /// The open shards with their hash-key ranges, by range.
    async fn open_shards(&self) -> Vec<(String, u128, u128)> {
        let listed = self.aws.kinesis().list_shards().stream_name(&self.name).send().await.unwrap();
        let mut open: Vec<(String, u128, u128)> = listed
            .shards()
            .iter()
            .filter(|s| s.sequence_number_range().and_then(|r| r.ending_sequence_number()).is_none())
            .map(|s| {
                let range = s.hash_key_range().unwrap();
                let bound = |key: &str| key.parse::<u128>().unwrap();
                (s.shard_id().to_owned(), bound(range.starting_hash_key()), bound(range.ending_hash_key()))
            })
            .collect();
        open.sort_by_key(|s| s.1);
        open
    }

    async fn wait_active(&self) {
        let began = Instant::now();
        loop {
            let out = self.aws.kinesis().describe_stream_summary().stream_name(&self.name).send().await.unwrap();
            if out.stream_description_summary().unwrap().stream_status() == &StreamStatus::Active {
                return;
            }
            assert!(began.elapsed() < Duration::from_secs(60), "{} not active after a minute", self.name);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Splits every open shard in two at the middle of its range.
    async fn split_every_shard(&self) {
        for (shard, start, end) in self.open_shards().await {
            let kinesis = self.aws.kinesis();
            let req = kinesis.split_shard().stream_name(&self.name).shard_to_split(&shard);
            req.new_starting_hash_key((start + (end - start) / 2 + 1).to_string()).send().await.unwrap();
            self.wait_active().await;
        }
    }

    /// Merges the first two adjacent open shards.
    async fn merge_two(&self) {
        let open = self.open_shards().await;
        let pair = open.windows(2).find(|w| w[0].2 + 1 == w[1].1).expect("two adjacent open shards");
        let kinesis = self.aws.kinesis();
        let req = kinesis.merge_shards().stream_name(&self.name).shard_to_merge(&pair[0].0);
        req.adjacent_shard_to_merge(&pair[1].0).send().await.unwrap();
        self.wait_active().await;
    }

    /// Every trip below `n` is complete in the table.
    async fn complete(&self, n: u32) -> bool {
        for i in 0..n {
            match self.store.get(&format!("trip-{i:03}")).await.unwrap() {
                Some(item) if item.trip_completed() => {}
                _ => return false,
            }
        }
        true
    }

    /// The checks of the module's header, over every read since the stream was made.
    async fn check(&self, reads: &[Read]) {
        let read: Vec<(ShardId, SequenceNumber)> =
            reads.iter().flat_map(|r| r.seqs.iter().map(|s| (r.shard.clone(), s.clone()))).collect();
        let unique: HashSet<&(ShardId, SequenceNumber)> = read.iter().collect();
        assert_eq!(unique.len(), read.len(), "a record was read twice");
        assert_eq!(read.len() as u64, self.put.load(Ordering::Relaxed), "every record put is read");

        let shards = self.source.shards().await.unwrap();
        assert!(shards.iter().any(Shard::is_closed), "the stream was resharded");
        let first_read = |id: &str| reads.iter().position(|r| r.shard == id);
        let last_read = |id: &str| reads.iter().rposition(|r| r.shard == id);
        for shard in &shards {
            for parent in &shard.parents {
                if let (Some(child), Some(parent_end)) = (first_read(&shard.id), last_read(parent)) {
                    assert!(parent_end < child, "{} was read before its parent {parent} ended: {reads:?}", shard.id);
                }
            }
            // A closed shard's last read was its end: its iterator ran out, or the record
            // at its ending sequence number came back, or it held nothing (moto lists an
            // empty closed shard as ending at 0).
            if let (Some(end), Some(last)) = (&shard.ending_sequence_number, last_read(&shard.id)) {
                let last = &reads[last];
                let held_nothing = !read.iter().any(|(s, _)| *s == shard.id);
                assert!(
                    last.closed || last.seqs.last() == Some(end) || held_nothing,
                    "{} was left before its end",
                    shard.id
                );
            }
            let checkpoint = self.checkpoints.get(DEFAULT_CONSUMER, &shard.id).await.unwrap();
            if shard.is_closed() {
                assert_eq!(checkpoint, Some(Checkpoint::ShardEnd), "the end of {} is recorded", shard.id);
            } else {
                let newest = read.iter().filter(|(s, _)| *s == shard.id).map(|(_, q)| q).max();
                assert_eq!(checkpoint, newest.cloned().map(Checkpoint::At), "the checkpoint of {}", shard.id);
            }
        }
    }

    /// A run after everything was read: nothing read, and no closed shard opened.
    async fn check_nothing_left(&self) {
        assert_eq!(self.run().await.read, 0);
        let shards = self.source.shards().await.unwrap();
        let closed: HashSet<ShardId> = shards.into_iter().filter(Shard::is_closed).map(|s| s.id).collect();
        let reads = self.source.take();
        assert!(reads.iter().all(|r| !closed.contains(&r.shard)), "a closed shard was read again: {reads:?}");
    }
}

/// Time between a parent's last record and its reshard. kinesalite stamps the position
/// after a shard's last record a second after that record; a reshard more than about two
/// seconds later makes the parent answer an empty page with an iterator before its end
/// (a reshard sooner ends it at once, and hides the case).
const GAP: Duration = Duration::from_secs(3);

fn opts() -> IngestOptions {
    IngestOptions { batch_rows: 16, poll_interval: Duration::from_millis(20), ..Default::default() }
}

/// The case that stopped batch ingests for good: every parent read to its last record
/// and checkpointed, then resharded more than a second later. Starts of 60 trips are
/// ingested; every shard is split; their ends and 30 new starts go to the children; half
/// of the new trips' ends are ingested, two children are merged, and the other half go
/// to the merged shard.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_ingests_read_every_record_once_across_a_split_and_a_merge() {
    let rig = Rig::new(crate::emulators::kinesalite(), crate::emulators::dynalite(), 2).await;
    let mut reads = Vec::new();

    rig.put(0..60, false).await;
    assert_eq!(rig.run().await.read, 60);
    reads.extend(rig.source.take());

    // Seconds pass before the split, as they do: kinesalite, as Kinesis may,
    // then answers a parent's read past its last record with an empty page at zero lag
    // and an iterator, and ends it only on a later read.
    tokio::time::sleep(GAP).await;
    rig.split_every_shard().await;
    rig.put(0..60, true).await;
    rig.put(60..90, false).await;
    // Before the fix this run took the parents' empty pages for "caught up" and read
    // nothing, and so did every later run.
    assert_eq!(rig.run().await.read, 90, "the children, after their parents' ends");
    reads.extend(rig.source.take());
    assert!(rig.complete(60).await);

    rig.put(60..75, true).await;
    assert_eq!(rig.run().await.read, 15);
    reads.extend(rig.source.take());
    tokio::time::sleep(GAP).await;
    rig.merge_two().await;
    rig.put(75..90, true).await;
    assert_eq!(rig.run().await.read, 15);
    reads.extend(rig.source.take());
    assert!(rig.complete(90).await);

    rig.check(&reads).await;
    rig.check_nothing_left().await;
}

/// The same reshards while one `--follow` ingest runs throughout: it finds the children
/// made after it started.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_reads_every_record_once_across_a_split_and_a_merge() {
    let rig = Rig::new(crate::emulators::kinesalite(), crate::emulators::dynalite(), 2).await;
    let stop = Arc::new(AtomicBool::new(false));
    let follow = IngestOptions { follow: true, stop: stop.clone(), ..opts() };
    let drive = async {
        rig.put(0..60, false).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        rig.put(0..30, true).await;
        tokio::time::sleep(GAP).await;
        rig.split_every_shard().await;
        rig.put(30..60, true).await;
        rig.put(60..90, false).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        rig.merge_two().await;
        rig.put(60..90, true).await;
        let began = Instant::now();
        while !rig.complete(90).await {
            assert!(began.elapsed() < Duration::from_secs(60), "the follower did not merge every trip in a minute");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        stop.store(true, Ordering::Relaxed);
    };
    let (counts, ()) = tokio::join!(async { rig.ingest().run(&follow).await.unwrap() }, drive);
    assert!(counts.balanced(), "{counts:?}");
    assert_eq!(counts.read, rig.put.load(Ordering::Relaxed), "{counts:?}");
    let reads = rig.source.take();
    rig.check(&reads).await;
    rig.check_nothing_left().await;
}

/// Uniform scaling, as UpdateShardCount does it (moto implements it: every shard split,
/// then adjacent pairs merged down to the target), between batch ingests. moto never
/// ends a closed shard's iterator: its end is the record at its ending sequence number.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_ingests_read_every_record_once_across_update_shard_count() {
    let aws = crate::moto::aws();
    let rig = Rig::new(aws.clone(), aws, 2).await;
    let mut reads = Vec::new();
    rig.put(0..60, false).await;
    assert_eq!(rig.run().await.read, 60);
    reads.extend(rig.source.take());

    rig.put(0..30, true).await;
    let kinesis = rig.aws.kinesis();
    let req = kinesis.update_shard_count().stream_name(&rig.name).target_shard_count(3);
    req.scaling_type(aws_sdk_kinesis::types::ScalingType::UniformScaling).send().await.unwrap();
    rig.wait_active().await;
    assert_eq!(rig.open_shards().await.len(), 3);
    rig.put(30..60, true).await;
    assert_eq!(rig.run().await.read, 60);
    reads.extend(rig.source.take());
    assert!(rig.complete(60).await);

    rig.check(&reads).await;
    rig.check_nothing_left().await;
}
