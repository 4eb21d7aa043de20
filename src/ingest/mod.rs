//! Ingest: stream records → micro-batches → Arrow → validated → coalesced → merged.
//!
//! The consumer loop keeps the delivery guarantee of docs/design.md §4: a shard's checkpoint moves
//! to the last record of a batch only after the batch's merge and its dead letters are
//! durable. A crash anywhere replays from the previous checkpoint, and the merge makes
//! the replay harmless. Every record read is counted once as applied, duplicate or stale,
//! or dead-lettered, so `read = applied + duplicate_or_stale + dead_lettered`.

pub mod batcher;
pub mod coalesce;
pub mod deadletter;
pub mod decode;
pub mod failures;
pub mod redrive;
pub mod validate;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tracing::{debug, info, instrument, warn};

use self::batcher::{Batcher, Pending};
use self::deadletter::{DeadLetter, DeadLetterSink};
use crate::model::declared::Fields;
use crate::model::event::EventKind;
use crate::model::extra::JsonType;
pub use crate::model::extra::UnknownFields;
pub use crate::observe::IngestCounts;
use crate::observe::progress::{Progress, Quiet};
use crate::observe::telemetry::{self, BatchTimes};
use crate::store::ledger::Sighting;
use crate::store::{LiveBatch, Step, TripStore, TripUpdate};
use crate::stream::{
    Checkpoint, CheckpointStore, SequenceNumber, Shard, ShardId, ShardIterator, StartPosition, StreamSource,
};
use crate::{Error, Result};

/// Default consumer name under which checkpoints are kept.
pub const DEFAULT_CONSUMER: &str = "tripflow";

/// What ingest does with fields beyond the built-in ones: those a fields file declares
/// are checked and kept typed; the rest are kept (or refused) as `unknown` says.
#[derive(Debug, Clone, Default)]
pub struct FieldRules {
    /// The fields the `--fields` file declares.
    pub declared: Fields,
    /// What to do with a field no field names.
    pub unknown: UnknownFields,
}

/// Settings of one ingest run.
#[derive(Debug, Clone)]
pub struct IngestOptions {
    /// Name the checkpoints are kept under.
    pub consumer: String,
    /// A batch is flushed when it holds this many records...
    pub batch_rows: usize,
    /// ...or when its first record has waited this long.
    pub linger: Duration,
    /// Flush a micro-batch once its records hold this many bytes, whatever its row
    /// count. A read never asks for more than the bytes left (on Kinesis one
    /// GetRecords response, at most 10 MiB, can go past it).
    pub batch_bytes: usize,
    /// Keep reading after catching up, until `stop` is set.
    pub follow: bool,
    /// Where to start in a shard that has no checkpoint yet.
    pub initial_position: StartPosition,
    /// How long to wait before polling a caught-up stream again (with `follow`).
    pub poll_interval: Duration,
    /// The declared fields, and what to do with undeclared ones.
    pub fields: FieldRules,
    /// Set to finish the batch in hand, checkpoint it and return.
    pub stop: Arc<AtomicBool>,
    /// With `follow`, a producer running beside ingest (`tripflow run`) sets this once it
    /// has put everything; ingest then reads what the stream holds and returns. Until
    /// then only full batches are flushed: throughput matters there, not latency.
    pub drain: Option<Arc<AtomicBool>>,
    /// Test hook: fail after the merge and dead letters of this many batches, before
    /// their checkpoint, as a crash would. The error is a stream error whose source is
    /// [`InjectedCrash`].
    #[doc(hidden)]
    pub crash_after_batches: Option<u64>,
    /// Told the totals and the lag after every batch ([`Progress::ingested`]).
    pub progress: Arc<dyn Progress>,
    /// After every batch, ask the stream how many records each shard has left
    /// ([`StreamSource::records_behind`]) for the metrics: a query per shard, so only
    /// when someone scrapes them.
    pub count_records_behind: bool,
    /// Keep the KPIs live as the batches are merged (`--live-kpis`).
    pub live: Option<LiveOptions>,
}

/// How ingest keeps the KPIs live (docs/design.md §7).
#[derive(Clone)]
pub struct LiveOptions {
    /// The queries and their state.
    pub kpis: Arc<crate::kpi::live::LiveKpis>,
    /// Where the live files go.
    pub out: crate::kpi::OutputLocation,
    /// The least time between two publications (`--live-every`).
    pub every: Duration,
    /// The least time between two runs of the recomputed queries (`--live-recompute-every`).
    pub recompute_every: Duration,
}

impl std::fmt::Debug for LiveOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveOptions")
            .field("out", &self.out.display())
            .field("every", &self.every)
            .field("recompute_every", &self.recompute_every)
            .finish_non_exhaustive()
    }
}

/// The cause of the error that [`IngestOptions::crash_after_batches`] raises; never
/// raised otherwise.
#[doc(hidden)]
#[derive(Debug, thiserror::Error)]
#[error("crash injected by a test after the merge, before the checkpoint")]
pub struct InjectedCrash;

impl Default for IngestOptions {
    fn default() -> Self {
        IngestOptions {
            consumer: DEFAULT_CONSUMER.into(),
            batch_rows: 65_536,
            batch_bytes: DEFAULT_BATCH_BYTES,
            linger: Duration::from_millis(100),
            follow: false,
            initial_position: StartPosition::TrimHorizon,
            poll_interval: Duration::from_millis(200),
            fields: FieldRules::default(),
            stop: Arc::default(),
            drain: None,
            crash_after_batches: None,
            progress: Arc::new(Quiet),
            count_records_behind: false,
            live: None,
        }
    }
}

/// The default byte bound of a micro-batch: 64 MiB, three times what 65,536 typical
/// 320-byte events hold, so it only acts on unusually large records.
pub const DEFAULT_BATCH_BYTES: usize = 64 << 20;

/// The shards an ingest run reads: those opened, indexed as their records' `shard`, and
/// those waiting for their parents to be read to their end.
#[derive(Default)]
struct Readers {
    ids: Vec<ShardId>,
    iterators: Vec<ShardIterator>,
    caught_up: Vec<bool>,
    /// Set for a shard listed as closed by a reshard: caught up only once read to its end.
    ending: Vec<Option<SequenceNumber>>,
    /// The last record read (or checkpointed before this run) of each open shard.
    last: Vec<Option<SequenceNumber>>,
    millis_behind: Vec<Option<u64>>,
    finished: Vec<bool>,
    waiting: Vec<Shard>,
    known: HashSet<ShardId>,
    done: HashSet<ShardId>,
    /// Shards read to their end in this run, whose [`Checkpoint::ShardEnd`] goes with the
    /// next hand-over: after the batch that holds their last records.
    ended: Vec<ShardId>,
}

impl Readers {
    /// Adds the shards the stream lists that this run has not seen (the children of a
    /// reshard made while it runs), and marks the open ones that are now closed.
    async fn discover(&mut self, source: &dyn StreamSource) -> Result<()> {
        for shard in source.shards().await? {
            if let Some(i) = self.ids.iter().position(|id| *id == shard.id) {
                self.ending[i] = self.ending[i].take().or(shard.ending_sequence_number);
            } else if let Some(w) = self.waiting.iter_mut().find(|w| w.id == shard.id) {
                w.ending_sequence_number = w.ending_sequence_number.take().or(shard.ending_sequence_number);
            } else if self.known.insert(shard.id.clone()) {
                debug!(shard = %shard.id, parents = ?shard.parents, "A new shard is listed.");
                self.waiting.push(shard);
            }
        }
        Ok(())
    }

    /// Opens every waiting shard whose parents are read to their end (or were never
    /// listed: expired past the retention period), from its checkpoint. A shard whose
    /// checkpoint is [`Checkpoint::ShardEnd`] is done without being opened, which may
    /// make its children ready in turn. A child of a shard this run knows starts at its
    /// trim horizon when it has no checkpoint, whatever the initial position: its
    /// parents' records were read, and its own follow them.
    async fn open_ready(&mut self, ingest: &Ingest<'_>, opts: &IngestOptions) -> Result<()> {
        loop {
            let (ready, waiting): (Vec<Shard>, Vec<Shard>) = std::mem::take(&mut self.waiting)
                .into_iter()
                .partition(|s| s.parents.iter().all(|p| self.done.contains(p) || !self.known.contains(p)));
            self.waiting = waiting;
            let mut ended_before = false;
            for shard in ready {
                let (start, last) = match ingest.checkpoints.get(&opts.consumer, &shard.id).await? {
                    Some(Checkpoint::ShardEnd) => {
                        debug!(shard = %shard.id, "Read to its end by an earlier run.");
                        self.done.insert(shard.id);
                        ended_before = true;
                        continue;
                    }
                    Some(Checkpoint::At(seq)) => (StartPosition::AfterSequenceNumber(seq.clone()), Some(seq)),
                    None if shard.parents.iter().any(|p| self.known.contains(p)) => (StartPosition::TrimHorizon, None),
                    None => (opts.initial_position.clone(), None),
                };
                self.iterators.push(ingest.source.iterator(&shard.id, &start).await?);
                self.ids.push(shard.id);
                self.caught_up.push(false);
                self.ending.push(shard.ending_sequence_number);
                self.last.push(last);
                self.millis_behind.push(None);
                self.finished.push(false);
            }
            if !ended_before {
                return Ok(());
            }
        }
    }

    /// True when shard `i` is closed and a record at its ending sequence number was read.
    /// Before any record, the position counts as 0, which no record has: a closed shard
    /// that ends at 0 holds nothing (moto lists an empty closed shard so).
    fn read_to_ending(&self, i: usize) -> bool {
        let Some(end) = &self.ending[i] else { return false };
        match &self.last[i] {
            Some(last) => last >= end,
            None => end.0.trim_start_matches('0').is_empty(),
        }
    }

    /// True when every open shard has been read to what it holds now.
    fn all_caught_up(&self) -> bool {
        self.caught_up.iter().zip(&self.finished).all(|(&c, &f)| c || f)
    }
}

/// The stages an ingest run drives.
pub struct Ingest<'a> {
    /// Where records come from.
    pub source: &'a dyn StreamSource,
    /// Where the consumer's positions are kept.
    pub checkpoints: &'a dyn CheckpointStore,
    /// The trip table.
    pub store: &'a dyn TripStore,
    /// Where rejected records go.
    pub dead_letters: &'a dyn DeadLetterSink,
}

impl Ingest<'_> {
    /// Reads from the checkpoints until caught up (or, with `follow`, until `stop`),
    /// processing micro-batches.
    ///
    /// # Errors
    /// When a backend fails. What was checkpointed stays done; the rest is replayed by
    /// the next run.
    #[instrument(skip_all, fields(consumer = %opts.consumer))]
    pub async fn run(&self, opts: &IngestOptions) -> Result<IngestCounts> {
        if opts.batch_rows == 0 {
            return Err(Error::config("--batch-rows must be at least 1"));
        }
        if opts.batch_bytes == 0 {
            return Err(Error::config("--batch-bytes must be at least 1"));
        }
        // One batch is merged while the next is read, decoded and validated: the merge
        // waits on the table's disk writes, the rest is CPU. The hand-over holds one
        // batch, so at most two are in memory, and batches are merged and checkpointed
        // in the order they were read.
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let (read, merged) = tokio::join!(self.read_batches(opts, tx), self.merge_batches(opts, rx));
        // A failed merge closes the hand-over, which stops the reads without an error of
        // their own; a failed read lets the batch in flight finish and be checkpointed.
        let totals = merged?;
        read?;
        opts.progress.ingested(&totals, Some(0));
        info!(
            read = totals.read,
            applied = totals.applied,
            duplicate_or_stale = totals.duplicate_or_stale,
            dead_lettered = totals.dead_lettered,
            "Ingest caught up."
        );
        Ok(totals)
    }

    /// Reads the shards into micro-batches and hands each over, prepared, to
    /// [`Self::merge_batches`]; returns once caught up (or, with `follow`, stopped), or
    /// when the merges stopped.
    async fn read_batches(&self, opts: &IngestOptions, tx: tokio::sync::mpsc::Sender<Handover>) -> Result<()> {
        let mut readers = Readers { waiting: self.source.shards().await?, ..Default::default() };
        readers.known = readers.waiting.iter().map(|s| s.id.clone()).collect();
        readers.open_ready(self, opts).await?;
        let mut batcher = Batcher::new(opts.batch_rows, opts.batch_bytes, opts.linger);
        let stream = self.source.identity();
        // The slot of the next hand-over, taken before its records are read: while the
        // previous batch waits in the hand-over, no third one is gathered.
        let mut slot = None;

        // Each round starts at the next shard, so a busy shard cannot starve the others.
        let mut first_shard = 0;
        loop {
            // The merges stopped (their error is the run's): a follower waiting for
            // records would otherwise never come back to the hand-over to see it.
            if tx.is_closed() {
                return Ok(());
            }
            if slot.is_none() {
                let Ok(permit) = tx.reserve().await else { return Ok(()) };
                slot = Some(permit);
            }
            // Read before this round's reads: "caught up" below then covers every record
            // put before the producer said it was done.
            let drained = opts.drain.as_ref().map(|d| d.load(Ordering::Acquire));
            let following = opts.follow && drained != Some(true);
            let may_linger = drained != Some(false);
            let n = readers.ids.len();
            let mut closed_now = false;
            for k in 0..n {
                let i = (first_shard + k) % n;
                if readers.finished[i] {
                    continue;
                }
                let room = batcher.room();
                if room == 0 {
                    break;
                }
                let read = self.source.read(&readers.iterators[i], room, batcher.byte_room()).await?;
                readers.iterators[i] = read.next;
                if let Some(r) = read.records.last() {
                    readers.last[i] = Some(r.sequence_number.clone());
                }
                // An empty page of a closed shard is not its end (see
                // `Shard::ending_sequence_number`).
                readers.caught_up[i] = read.caught_up && readers.ending[i].is_none();
                readers.millis_behind[i] = read.millis_behind;
                telemetry::shard_lag(&readers.ids[i], read.millis_behind, None);
                batcher.extend(read.records.into_iter().map(|record| Pending { shard: i, record }));
                if read.closed || readers.read_to_ending(i) {
                    info!(shard = %readers.ids[i], "Shard closed and read to its end; its children may start.");
                    readers.finished[i] = true;
                    readers.done.insert(readers.ids[i].clone());
                    readers.ended.push(readers.ids[i].clone());
                    closed_now = true;
                }
            }
            if closed_now {
                // The children of a reshard made during this run are not listed yet.
                readers.discover(self.source).await?;
            }
            readers.open_ready(self, opts).await?;
            first_shard = (first_shard + 1) % readers.ids.len().max(1);
            let all_caught_up = readers.all_caught_up();
            let stopping = opts.stop.load(Ordering::Relaxed);
            let due = batcher.room() == 0 || (may_linger && batcher.ready(Instant::now()));
            if due || (!batcher.is_empty() && (all_caught_up && !following || stopping)) {
                let steps = opts.live.is_some() && self.store.live_shared();
                let batch = prepare_batch(&stream, &readers.ids, batcher.take(), &opts.fields, steps)?;
                let millis_behind = readers.millis_behind.iter().flatten().max().copied();
                slot.take().expect("reserved above").send(Handover {
                    batch: Some(batch),
                    shards: readers.ids.clone(),
                    ended: std::mem::take(&mut readers.ended),
                    millis_behind,
                });
                if opts.count_records_behind {
                    for (id, it) in readers.ids.iter().zip(&readers.iterators) {
                        telemetry::shard_lag(id, None, self.source.records_behind(it).await?);
                    }
                }
                continue;
            }
            if batcher.is_empty() && !readers.ended.is_empty() {
                // Shards ended after their last records were handed over: their ends go
                // on their own, behind those records' batches.
                slot.take().expect("reserved above").send(Handover {
                    batch: None,
                    shards: readers.ids.clone(),
                    ended: std::mem::take(&mut readers.ended),
                    millis_behind: None,
                });
                continue;
            }
            if all_caught_up && batcher.is_empty() && (!following || stopping) {
                return Ok(());
            }
            if all_caught_up {
                let left = batcher.time_left(Instant::now()).filter(|_| may_linger);
                let wait = left.map_or(opts.poll_interval, |left| left.min(opts.poll_interval));
                tokio::time::sleep(wait).await;
            }
        }
    }

    /// Merges each batch handed over, in order, and moves the checkpoints past it;
    /// returns the totals once the reads are done and the last batch is merged.
    async fn merge_batches(
        &self,
        opts: &IngestOptions,
        mut rx: tokio::sync::mpsc::Receiver<Handover>,
    ) -> Result<IngestCounts> {
        let mut totals = IngestCounts::default();
        let mut live = match &opts.live {
            Some(l) => Some(Publisher::start(l, self.store).await?),
            None => None,
        };
        let stream = self.source.identity();
        loop {
            let handover = match &mut live {
                Some(p) if p.pending() => tokio::select! {
                    h = rx.recv() => h,
                    () = tokio::time::sleep_until(p.due()) => {
                        p.publish(self.store).await?;
                        continue;
                    }
                },
                _ => rx.recv().await,
            };
            let Some(Handover { batch, shards, ended, millis_behind }) = handover else { break };
            if let Some(batch) = batch {
                let fold = live.as_ref().map(|p| {
                    p.options.kpis.advance(&stream, &shards, batch.last());
                    p.options.kpis.clone() as Arc<dyn crate::store::LiveFold>
                });
                let (counts, last, _) = merge_prepared(self.store, self.dead_letters, batch, fold).await?;
                if opts.crash_after_batches.is_some_and(|n| totals.batches + 1 >= n) {
                    return Err(crate::error::Stage::Stream.error("checkpoint", InjectedCrash));
                }
                for (shard, seq) in shards.iter().zip(last) {
                    if let Some(seq) = seq {
                        self.checkpoints.set(&opts.consumer, shard, &Checkpoint::At(seq)).await?;
                    }
                }
                telemetry::checkpointed();
                totals.add(&counts);
                opts.progress.ingested(&totals, millis_behind);
                // The batch is freed now; without this the resident size creeps up.
                crate::observe::memory::release_freed();
            }
            // Every record of these shards is checkpointed above or in an earlier batch.
            for shard in &ended {
                self.checkpoints.set(&opts.consumer, shard, &Checkpoint::ShardEnd).await?;
                info!(shard = %shard, "Recorded the end of a closed shard.");
            }
            if let Some(p) = &mut live
                && p.pending()
                && Instant::now() >= p.due().into_std()
            {
                p.publish(self.store).await?;
            }
        }
        // Stopping (or caught up): what changed since the last publication goes out now.
        if let Some(p) = &mut live {
            p.recompute_at = tokio::time::Instant::now();
            if p.pending() {
                p.publish(self.store).await?;
            }
        }
        Ok(totals)
    }
}

/// Publishes the live KPIs of an ingest run: at most every `--live-every`, and the
/// recomputed queries at most every `--live-recompute-every`.
struct Publisher {
    options: LiveOptions,
    /// When the next publication may be.
    next: tokio::time::Instant,
    /// When the recomputed queries may run again.
    recompute_at: tokio::time::Instant,
}

impl Publisher {
    /// Resumes (or rebuilds) the live state from `store`.
    async fn start(options: &LiveOptions, store: &dyn TripStore) -> Result<Self> {
        crate::kpi::live::log_keeping(&options.kpis);
        match options.kpis.resume(store).await? {
            crate::kpi::live::Resumed::Resumed => info!("Live KPIs: resumed the state stored with the table."),
            crate::kpi::live::Resumed::Rebuilt(why) => info!(%why, "Live KPIs: rebuilt the state from the table."),
        }
        let now = tokio::time::Instant::now();
        Ok(Publisher { options: options.clone(), next: now, recompute_at: now })
    }

    /// True when something waits to be published.
    fn pending(&self) -> bool {
        let kpis = &self.options.kpis;
        kpis.has_changes() || (kpis.has_recomputation() && self.recompute_at <= tokio::time::Instant::now())
    }

    /// When the next publication may be.
    fn due(&self) -> tokio::time::Instant {
        if self.options.kpis.has_changes() { self.next } else { self.next.max(self.recompute_at) }
    }

    async fn publish(&mut self, store: &dyn TripStore) -> Result<()> {
        let now = tokio::time::Instant::now();
        let recompute = now >= self.recompute_at;
        let published = self.options.kpis.publish(store, &self.options.out, recompute).await?;
        if recompute {
            self.recompute_at = now + self.options.recompute_every;
        }
        self.next = now + self.options.every;
        if !published.extremes_recomputed.is_empty() {
            info!(
                dates = published.extremes_recomputed.len(),
                "Live KPIs: recomputed the dates whose minimum or maximum was retracted."
            );
        }
        debug!(written = published.written.len(), removed = published.removed.len(), "Live KPIs published.");
        telemetry::live_published(published.written.len(), published.extremes_recomputed.len());
        Ok(())
    }
}

/// A prepared batch on its way from the reads to the merges, with the shards its
/// positions are indexed by, the shards read to their end with it (or, without a batch,
/// after the batches before it), and how far behind the reads were.
struct Handover {
    batch: Option<PreparedBatch>,
    shards: Vec<ShardId>,
    ended: Vec<ShardId>,
    millis_behind: Option<u64>,
}

/// A micro-batch decoded, validated and coalesced: what its merge, dead letters and
/// checkpoints need, with the records and their Arrow columns freed.
pub struct PreparedBatch {
    read: u64,
    /// Bytes of the records' data.
    bytes: u64,
    updates: Vec<TripUpdate>,
    /// Valid groups among the updates, and valid events superseded inside the batch.
    groups: u64,
    superseded: u64,
    letters: Vec<DeadLetter>,
    /// The records that carried undeclared fields, for the ledger.
    sightings: Vec<Sighting>,
    /// Its shards, each one's last position, and the updates' steps when asked for.
    live: LiveBatch,
    decode_validate: Duration,
}

impl PreparedBatch {
    /// Per shard, the sequence number of the batch's last record.
    pub fn last(&self) -> &[Option<SequenceNumber>] {
        &self.live.last
    }
}

/// One micro-batch through every stage but the checkpoint: decode into Arrow, validate
/// column-wise, coalesce each trip's events, merge them into `store` with the conditional
/// write, and dead-letter the rejected records. `stream` is the stream's
/// [identity](crate::stream::StreamSource::identity), and `shards` names the shard of
/// each [`Pending::shard`] index. `tripflow ingest` and the Lambda ingest handler both call
/// this, so the two cannot drift apart.
///
/// Returns the batch's counts, per shard the last sequence number it held, and the time
/// each phase took (also recorded as [metrics](crate::observe::telemetry)): once this returns,
/// every record up to that position is merged or dead-lettered, so a checkpoint may
/// move there.
///
/// # Errors
/// When the store or the dead-letter output fails (after its own retries). Part of the
/// batch may then be merged; replaying it is harmless.
pub async fn merge_batch(
    store: &dyn TripStore,
    dead_letters: &dyn DeadLetterSink,
    stream: &str,
    shards: &[ShardId],
    batch: Vec<Pending>,
    fields: &FieldRules,
    live: Option<Arc<dyn crate::store::LiveFold>>,
) -> Result<(IngestCounts, Vec<Option<SequenceNumber>>, BatchTimes)> {
    let steps = live.is_some() && store.live_shared();
    merge_prepared(store, dead_letters, prepare_batch(stream, shards, batch, fields, steps)?, live).await
}

/// The CPU half of [`merge_batch`]: decode into Arrow, validate, coalesce, and take the
/// dead letters and each shard's last position; with `steps`, each update's
/// [`crate::store::Step`]s too (the live state on DynamoDB).
///
/// # Errors
/// Only on an Arrow kernel failure, never because of the records' contents.
pub fn prepare_batch(
    stream: &str,
    shards: &[ShardId],
    batch: Vec<Pending>,
    fields: &FieldRules,
    steps: bool,
) -> Result<PreparedBatch> {
    let read = batch.len() as u64;
    let bytes = batch.iter().map(|p| p.record.data.len() as u64).sum();
    let began = Instant::now();
    let decoded = decode::decode(batch.iter().map(|p| p.record.data.as_slice()));
    let mut validated = validate::validate(&decoded)?;
    // Each record's undeclared fields, read once for the three steps that need them.
    let undeclared = decoded.undeclared();
    validate::check_declared(&mut validated, &undeclared, &fields.declared)?;
    if fields.unknown == UnknownFields::Reject {
        validate::refuse_unknown(&mut validated, &undeclared, &fields.declared);
    }
    let sightings = sightings(stream, shards, &batch, &decoded, &undeclared, &fields.declared);
    drop(undeclared);
    drop(decoded);
    let coalesced = coalesce::coalesce(&validated, steps);
    let steps: Vec<Vec<Step>> = coalesced
        .steps
        .into_iter()
        .map(|raised| {
            raised
                .into_iter()
                .map(|(row, start, end)| Step {
                    shard: batch[row].shard,
                    sequence: batch[row].record.sequence_number.clone(),
                    start,
                    end,
                })
                .collect()
        })
        .collect();
    let groups: u64 = coalesced.updates.iter().map(|u| u64::from(u.start.is_some()) + u64::from(u.end.is_some())).sum();
    // What the records are still needed for, the dead letters and each shard's last
    // position, is taken now: the records and their Arrow columns are freed before the
    // merge, the longest step, so a batch waiting for its merge holds only its updates.
    let letters: Vec<DeadLetter> = batch
        .iter()
        .zip(std::mem::take(&mut validated.reasons))
        .filter(|(_, reasons)| !reasons.is_empty())
        .map(|(p, reasons)| DeadLetter {
            stream: stream.to_owned(),
            shard: shards[p.shard].clone(),
            sequence_number: p.record.sequence_number.clone(),
            partition_key: p.record.partition_key.to_string(),
            raw: p.record.data.clone(),
            reasons,
            arrival: p.record.arrival,
        })
        .collect();
    let mut last: Vec<Option<SequenceNumber>> = vec![None; shards.len()];
    for p in batch {
        last[p.shard] = Some(p.record.sequence_number);
    }
    drop(validated);

    Ok(PreparedBatch {
        read,
        bytes,
        updates: coalesced.updates,
        groups,
        superseded: coalesced.superseded as u64,
        letters,
        sightings,
        live: LiveBatch { stream: stream.to_owned(), shards: shards.to_vec(), last, steps },
        decode_validate: began.elapsed(),
    })
}

/// The records of a batch that carried undeclared fields, with what the ledger keeps of
/// each: where it was read, its kind and event time, and each field's JSON type. A
/// record of no known kind has no group to count under (it is dead-lettered, bytes and
/// all).
fn sightings(
    stream: &str,
    shards: &[ShardId],
    batch: &[Pending],
    decoded: &decode::Decoded,
    undeclared: &decode::Undeclared<'_>,
    declared: &Fields,
) -> Vec<Sighting> {
    use arrow::array::Array;
    let version = |kind: EventKind| decoded.text(kind.version_column());
    (0..undeclared.len())
        .filter_map(|row| {
            let kept = undeclared[row].as_ref()?;
            let kind = decoded.kind(row)?;
            let fields: Vec<(String, JsonType)> = kept
                .iter()
                .filter(|(name, _)| !declared.names(kind, name))
                .map(|(name, value)| (name.clone(), JsonType::of(value)))
                .collect();
            if fields.is_empty() {
                return None;
            }
            let time = version(kind);
            let p = &batch[row];
            Some(Sighting {
                position: format!("{stream}/{}", shards[p.shard]),
                sequence: p.record.sequence_number.clone(),
                kind,
                event_time: time.is_valid(row).then(|| time.value(row).to_owned()),
                fields,
            })
        })
        .collect()
}

/// The I/O half of [`merge_batch`]: the conditional merge into `store` and the dead
/// letters.
///
/// # Errors
/// When the store or the dead-letter output fails (after its own retries).
pub async fn merge_prepared(
    store: &dyn TripStore,
    dead_letters: &dyn DeadLetterSink,
    batch: PreparedBatch,
    live: Option<Arc<dyn crate::store::LiveFold>>,
) -> Result<(IngestCounts, Vec<Option<SequenceNumber>>, BatchTimes)> {
    let PreparedBatch { read, bytes, updates, groups, superseded, letters, sightings, live: at, decode_validate } =
        batch;
    let began = Instant::now();
    let writes_before = store.write_requests();
    let consumed_before = store.consumed();
    let outcomes = match live {
        Some(live) => store.merge_live(updates, live, &at).await?,
        None => store.merge(updates).await?,
    };
    let last = at.last;
    let applied: u64 = outcomes.iter().map(|o| u64::from(o.start_applied) + u64::from(o.end_applied)).sum();
    dead_letters.write(&letters).await?;
    if !sightings.is_empty() {
        for field in store.record_fields(&sightings).await? {
            warn!(%field, "Undeclared field seen for the first time; it is kept with its group (see `tripflow fields`).");
        }
    }

    let counts = IngestCounts {
        read,
        applied,
        duplicate_or_stale: superseded + groups - applied,
        dead_lettered: letters.len() as u64,
        undeclared: sightings.len() as u64,
        batches: 1,
        store_writes: store.write_requests() - writes_before,
        stream_bytes: bytes,
        ..IngestCounts::default()
    }
    .with_consumed(consumed_before, store.consumed());
    debug!(
        rows = counts.read,
        applied = counts.applied,
        duplicate_or_stale = counts.duplicate_or_stale,
        dead_lettered = counts.dead_lettered,
        "Flushed batch."
    );
    let times = BatchTimes { decode_validate, merge: began.elapsed() };
    telemetry::batch(&counts, &times);
    Ok((counts, last, times))
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use async_trait::async_trait;

    use self::deadletter::FileDeadLetters;
    use super::*;
    use crate::store::sqlite::SqliteStore;
    use crate::stream::embedded::EmbeddedStream;
    use crate::stream::{ReadResult, StreamRecord};

    /// A resharded stream: shard 0 was split into 1 and 2. Each shard holds events of
    /// one trip; a child holds the later event of a trip its parent started. At its end
    /// the parent first answers an empty page at zero lag with an iterator, as Kinesis
    /// may, and only then says it is closed.
    struct Resharded {
        reads: Mutex<Vec<String>>,
    }

    fn record(seq: u64, data: String) -> StreamRecord {
        StreamRecord {
            sequence_number: SequenceNumber::from_u64(seq),
            partition_key: "k".into(),
            data: data.into_bytes(),
            arrival: Default::default(),
        }
    }

    fn start(trip: &str, at: &str) -> String {
        format!(
            r#"{{"trip_id":"{trip}","pickup_location_id":1,"dropoff_location_id":2,"vendor_id":1,"pickup_datetime":"{at}"}}"#
        )
    }

    fn end(trip: &str, at: &str) -> String {
        format!(r#"{{"trip_id":"{trip}","dropoff_datetime":"{at}","fare_amount":"12.5"}}"#)
    }

    fn contents(shard: &str) -> Vec<StreamRecord> {
        match shard {
            "shardId-000000000000" => {
                vec![record(1, start("t1", "2024-05-25 10:00:00")), record(2, start("t2", "2024-05-25 10:01:00"))]
            }
            "shardId-000000000001" => vec![record(3, end("t1", "2024-05-25 10:30:00"))],
            _ => vec![record(4, end("t2", "2024-05-25 10:40:00"))],
        }
    }

    #[async_trait]
    impl StreamSource for Resharded {
        async fn shards(&self) -> Result<Vec<Shard>> {
            let parent = "shardId-000000000000".to_string();
            Ok(vec![
                // Past its records' numbers, as Kinesis' ending sequence numbers can be.
                Shard { ending_sequence_number: Some(SequenceNumber::from_u64(99)), ..Shard::root(parent.clone()) },
                Shard { parents: vec![parent.clone()], ..Shard::root("shardId-000000000001".into()) },
                Shard { parents: vec![parent], ..Shard::root("shardId-000000000002".into()) },
            ])
        }

        async fn iterator(&self, shard: &ShardId, start: &StartPosition) -> Result<ShardIterator> {
            let at = match start {
                StartPosition::AfterSequenceNumber(seq) => {
                    contents(shard).iter().take_while(|r| r.sequence_number <= *seq).count()
                }
                _ => 0,
            };
            Ok(ShardIterator { shard: shard.clone(), position: at.to_string() })
        }

        fn identity(&self) -> String {
            "test:resharded".into()
        }

        async fn read(&self, it: &ShardIterator, limit: usize, _max_bytes: usize) -> Result<ReadResult> {
            self.reads.lock().unwrap().push(it.shard.clone());
            let parent = it.shard.ends_with('0');
            // The parent's empty page at its end has been answered.
            if let Some(at) = it.position.strip_suffix(" empty page") {
                let next = ShardIterator { shard: it.shard.clone(), position: at.into() };
                return Ok(ReadResult { records: vec![], next, caught_up: true, closed: true, millis_behind: Some(0) });
            }
            let at: usize = it.position.parse().unwrap();
            let all = contents(&it.shard);
            let records: Vec<StreamRecord> = all.into_iter().skip(at).take(limit.min(1)).collect();
            let next = at + records.len();
            let end = next == contents(&it.shard).len();
            let position = if parent && records.is_empty() { format!("{next} empty page") } else { next.to_string() };
            Ok(ReadResult {
                records,
                next: ShardIterator { shard: it.shard.clone(), position },
                caught_up: end,
                closed: false,
                millis_behind: Some(0),
            })
        }
    }

    #[tokio::test]
    async fn a_closed_parent_is_read_to_its_end_before_its_children() {
        let tmp = tempfile::tempdir().unwrap();
        let source = Resharded { reads: Mutex::default() };
        let checkpoints = EmbeddedStream::open(tmp.path(), Some(1)).unwrap();
        let store = SqliteStore::open(tmp.path()).unwrap();
        let dead = FileDeadLetters::open(&tmp.path().join("dead.ndjson")).unwrap();
        let ingest = Ingest { source: &source, checkpoints: &checkpoints, store: &store, dead_letters: &dead };
        let counts = ingest.run(&IngestOptions { batch_rows: 2, ..Default::default() }).await.unwrap();
        assert_eq!((counts.read, counts.applied), (4, 4));

        let reads = source.reads.lock().unwrap().clone();
        let last_parent = reads.iter().rposition(|s| s.ends_with('0')).unwrap();
        let first_child = reads.iter().position(|s| !s.ends_with('0')).unwrap();
        assert!(last_parent < first_child, "a child was read before its parent closed: {reads:?}");
        for trip in ["t1", "t2"] {
            assert!(store.get(trip).await.unwrap().unwrap().trip_completed());
        }
        let parent_checkpoint = checkpoints.get(DEFAULT_CONSUMER, &"shardId-000000000000".to_string()).await.unwrap();
        assert_eq!(parent_checkpoint, Some(Checkpoint::ShardEnd), "the parent's end is recorded");
        for child in ["shardId-000000000001", "shardId-000000000002"] {
            let at = checkpoints.get(DEFAULT_CONSUMER, &child.to_string()).await.unwrap();
            assert!(matches!(at, Some(Checkpoint::At(_))), "{child}: {at:?}");
        }

        // A later run does not open the parent again.
        source.reads.lock().unwrap().clear();
        let again = ingest.run(&IngestOptions { batch_rows: 2, ..Default::default() }).await.unwrap();
        assert_eq!(again.read, 0);
        let reads = source.reads.lock().unwrap().clone();
        assert!(!reads.is_empty() && reads.iter().all(|s| !s.ends_with('0')), "{reads:?}");
    }

    /// One shard whose first read holds two trips' starts and whose second read fails.
    struct FailsOnSecondRead;

    #[async_trait]
    impl StreamSource for FailsOnSecondRead {
        async fn shards(&self) -> Result<Vec<Shard>> {
            Ok(vec![Shard::root("shardId-000000000000".into())])
        }

        async fn iterator(&self, shard: &ShardId, _start: &StartPosition) -> Result<ShardIterator> {
            Ok(ShardIterator { shard: shard.clone(), position: "0".into() })
        }

        fn identity(&self) -> String {
            "test:fails".into()
        }

        async fn read(&self, it: &ShardIterator, _limit: usize, _max_bytes: usize) -> Result<ReadResult> {
            if it.position != "0" {
                return Err(Error::stream("the shard went away"));
            }
            Ok(ReadResult {
                records: vec![
                    record(1, start("t1", "2024-05-25 10:00:00")),
                    record(2, start("t2", "2024-05-25 10:01:00")),
                ],
                next: ShardIterator { shard: it.shard.clone(), position: "2".into() },
                caught_up: false,
                closed: false,
                millis_behind: None,
            })
        }
    }

    #[tokio::test]
    async fn a_failed_read_still_merges_and_checkpoints_the_batch_read_before_it() {
        let tmp = tempfile::tempdir().unwrap();
        let checkpoints = EmbeddedStream::open(tmp.path(), Some(1)).unwrap();
        let store = SqliteStore::open(tmp.path()).unwrap();
        let dead = FileDeadLetters::open(&tmp.path().join("dead.ndjson")).unwrap();
        let ingest =
            Ingest { source: &FailsOnSecondRead, checkpoints: &checkpoints, store: &store, dead_letters: &dead };
        let err = ingest.run(&IngestOptions { batch_rows: 2, ..Default::default() }).await.unwrap_err();
        assert!(err.to_string().contains("the shard went away"), "{err}");
        for trip in ["t1", "t2"] {
            assert!(store.get(trip).await.unwrap().is_some(), "{trip} was read before the failure but not merged");
        }
        let checkpoint = checkpoints.get(DEFAULT_CONSUMER, &"shardId-000000000000".to_string()).await.unwrap();
        assert_eq!(checkpoint, Some(Checkpoint::At(SequenceNumber::from_u64(2))));
    }

    /// A table whose every merge fails, after a while.
    struct FailingStore;

    #[async_trait]
    impl TripStore for FailingStore {
        async fn merge(&self, _updates: Vec<crate::store::TripUpdate>) -> Result<Vec<crate::store::MergeOutcome>> {
            // As a real table's merge does, it returns to the runtime first: the reads
            // go on meanwhile, into their wait for the next records.
            tokio::time::sleep(Duration::from_millis(50)).await;
            Err(Error::store("the disk is full"))
        }

        async fn get(&self, _trip_id: &str) -> Result<Option<crate::store::TripItem>> {
            Ok(None)
        }

        async fn export(
            &self,
            _dates: Option<Vec<chrono::NaiveDate>>,
            _columns: &crate::store::Projection,
        ) -> Result<Vec<arrow::array::RecordBatch>> {
            Ok(Vec::new())
        }

        async fn changed_dates(&self) -> Result<Vec<crate::store::ChangedDate>> {
            Ok(Vec::new())
        }

        async fn clear_changed(&self, _read: &[crate::store::ChangedDate]) -> Result<usize> {
            Ok(0)
        }

        fn write_requests(&self) -> u64 {
            0
        }
    }

    #[tokio::test]
    async fn a_follower_stops_with_the_merge_error_instead_of_waiting_for_records() {
        use crate::stream::{PutRecord, StreamSink};
        let tmp = tempfile::tempdir().unwrap();
        let stream = EmbeddedStream::open(tmp.path(), Some(1)).unwrap();
        let data = start("t1", "2024-05-25 10:00:00").into_bytes();
        stream.put_records(&[PutRecord { partition_key: "t1".into(), data }]).await.unwrap();
        let dead = FileDeadLetters::open(&tmp.path().join("dead.ndjson")).unwrap();
        let ingest = Ingest { source: &stream, checkpoints: &stream, store: &FailingStore, dead_letters: &dead };
        let opts = IngestOptions { follow: true, poll_interval: Duration::from_millis(10), ..Default::default() };
        let run = tokio::time::timeout(Duration::from_secs(20), ingest.run(&opts)).await;
        let err = run.expect("the follower kept waiting after its merge failed").unwrap_err();
        assert!(err.to_string().contains("the disk is full"), "{err}");
        assert_eq!(stream.get(DEFAULT_CONSUMER, &stream.shards().await.unwrap()[0].id).await.unwrap(), None);
    }
}
