//! The trip table: one item per `trip_id`, merged from events in any order.
//!
//! The invariant (docs/design.md §3): the start group is written only when it is absent or the
//! incoming `pickup_datetime` is newer; the end group likewise with `dropoff_datetime`.
//! An equal version is a duplicate and changes nothing. The groups are independent, so
//! any order, duplication or replay of a trip's events gives the same item.
//! `trip_completed`, `trip_date` and `last_updated` are derived from what is stored.

pub mod capacity;
pub mod dynamodb;
pub mod export;
pub mod ledger;
pub mod lsm;
pub mod sqlite;

use arrow::array::RecordBatch;
use async_trait::async_trait;
use std::collections::BTreeMap;

use chrono::NaiveDate;
pub use compact_str::{CompactString, ToCompactString};

pub use self::export::{Cell, EXPORT_BATCH_ROWS, ExportBuilder, Projection, STORED_COLUMNS};
use crate::Result;
use crate::model::event::{END_LEN, EventKind, START_LEN};
pub use crate::model::extra::Extras;
use crate::stream::{SequenceNumber, ShardId};

/// A trip's field group, as stored: its kind's values in [`EventKind::fields`] order,
/// integers in decimal, datetimes in the fixed-width UTC form of
/// [`crate::model::timestamp::format`], decimals as canonical text; and the fields its
/// event carried that no declared field names ([`Extras`]), which are versioned with it.
macro_rules! group {
    ($name:ident, $kind:expr, $len:expr, $what:literal) => {
        #[doc = $what]
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub struct $name(pub [Option<CompactString>; $len], pub Extras);

        impl $name {
            /// The kind of event that carries this group.
            pub const KIND: EventKind = $kind;

            /// The group whose `i`th value (in [`EventKind::fields`] order) is `value(i)`,
            /// with no undeclared field.
            pub fn from_fn(value: impl FnMut(usize) -> Option<CompactString>) -> Self {
                $name(std::array::from_fn(value), Extras::NONE)
            }

            /// The undeclared fields its event carried.
            pub fn extras(&self) -> &Extras {
                &self.1
            }

            /// This group with `extras` as its undeclared fields.
            #[must_use]
            pub fn with_extras(mut self, extras: Extras) -> Self {
                self.1 = extras;
                self
            }

            /// The values, in [`EventKind::fields`] order.
            pub fn values(&self) -> &[Option<CompactString>; $len] {
                &self.0
            }

            /// The group's version: its kind's version field, which validation requires.
            pub fn version(&self) -> &str {
                self.0[Self::KIND.version_index()].as_deref().unwrap_or_default()
            }

            /// The value of the field `name`, if the group has that field and a value.
            pub fn get(&self, name: &str) -> Option<&str> {
                let at = Self::KIND.fields().iter().position(|f| f.name == name)?;
                self.0[at].as_deref()
            }

            /// This group with the field `name` set to `value`.
            ///
            /// # Panics
            /// When the group has no field `name` (a programming error).
            #[must_use]
            pub fn with(mut self, name: &str, value: Option<&str>) -> Self {
                let at = Self::KIND.fields().iter().position(|f| f.name == name);
                let at = at.unwrap_or_else(|| panic!("the {:?} group has no field {name}", Self::KIND));
                self.0[at] = value.map(CompactString::from);
                self
            }

            /// A group of `pairs` (field name, value), the rest absent.
            ///
            /// # Panics
            /// When a name is not one of the group's fields.
            pub fn of<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
                pairs.into_iter().fold($name(Default::default(), Extras::NONE), |g, (k, v)| g.with(k, Some(v)))
            }
        }
    };
}

group!(StartGroup, EventKind::Start, START_LEN, "The start group of a trip, versioned by `pickup_datetime`.");
group!(
    EndGroup,
    EventKind::End,
    END_LEN,
    "The end group of a trip, versioned by `dropoff_datetime`; its UTC date is the trip's `trip_date`."
);

/// What one write asks for: the newest start and end of a trip seen in a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TripUpdate {
    /// The item's key.
    pub trip_id: CompactString,
    /// The start group, if the batch had a start event.
    pub start: Option<StartGroup>,
    /// The end group, if the batch had an end event.
    pub end: Option<EndGroup>,
}

/// The merge rule for one group (docs/design.md §3): an `incoming` version is written when
/// nothing is stored, or when it is newer than the `stored` one. Versions are compared as
/// their stored-form text, whose order is the order of time.
pub(crate) fn is_newer(incoming: Option<&str>, stored: Option<&str>) -> bool {
    incoming.is_some_and(|v| stored.is_none_or(|s| v > s))
}

/// Which groups of an update were stored (the rest were duplicates or stale).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MergeOutcome {
    /// The start group was absent or older, and is now the update's.
    pub start_applied: bool,
    /// The end group was absent or older, and is now the update's.
    pub end_applied: bool,
}

/// Adds to `dates` the dates whose KPIs a merge of one trip changed (docs/design.md §5):
/// the date of an end that was stored, and the date it replaced when that was another
/// day; and, for a start stored beside an end that was already there, that end's date
/// (the trip became complete there). A start without an end changes no date.
pub(crate) fn touched_dates(
    outcome: MergeOutcome,
    stored_date: Option<&str>,
    update: &TripUpdate,
    dates: &mut std::collections::BTreeSet<CompactString>,
) {
    // Called for every trip a merge writes, over a few distinct days: look before
    // making a key (`perf` put the inserts at 1.3% of a 1M-trip run).
    let mut add = |date: &str| {
        if !dates.contains(date) {
            dates.insert(date.into());
        }
    };
    let new_date = update.end.as_ref().map(|e| date_of(e.version()));
    if outcome.end_applied {
        new_date.into_iter().for_each(&mut add);
        stored_date.filter(|&old| Some(old) != new_date).into_iter().for_each(&mut add);
    } else if outcome.start_applied {
        stored_date.into_iter().for_each(add);
    }
}

/// The `YYYY-MM-DD` of a stored datetime (the whole text if it is shorter).
pub(crate) fn date_of(datetime: &str) -> &str {
    datetime.get(..10).unwrap_or(datetime)
}

/// A date whose trips changed since its mark was last cleared (docs/design.md §5). Ingest
/// marks the dates its merges touch, durably, with the trip writes; the KPI job
/// recomputes every marked date and then clears the marks it read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangedDate {
    /// The trips' `trip_date`.
    pub date: NaiveDate,
    /// The mark's value when it was read. Clearing compares it, so a date marked again
    /// since (by a merge during the KPI run) stays marked.
    pub mark: String,
    /// True when every write the mark covers is stored, so a run that reads the date
    /// after reading the mark sees them all. Always true where the mark and the trip
    /// writes are one atomic batch (the embedded tables); on DynamoDB, where the mark
    /// is written just before its writes, true once it is older than any batch lives.
    pub settled: bool,
}

/// A stored trip.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TripItem {
    /// Key.
    pub trip_id: CompactString,
    /// Start group, once stored.
    pub start: Option<StartGroup>,
    /// End group, once stored.
    pub end: Option<EndGroup>,
}

impl TripItem {
    /// True exactly when both groups are stored.
    pub fn trip_completed(&self) -> bool {
        self.start.is_some() && self.end.is_some()
    }

    /// UTC date of the dropoff, `YYYY-MM-DD`.
    pub fn trip_date(&self) -> Option<&str> {
        self.end.as_ref().map(|e| &e.version()[..10])
    }

    /// The newest version stored.
    pub fn last_updated(&self) -> &str {
        let start = self.start.as_ref().map(StartGroup::version);
        let end = self.end.as_ref().map(EndGroup::version);
        start.max(end).unwrap_or_default()
    }
}

/// The error of an [`TripStore::export_to`] whose receiver was dropped.
pub(crate) fn reader_stopped() -> crate::Error {
    crate::Error::store("export: the reader of the export stopped")
}

/// A record of the live KPIs' state ([`crate::kpi::live`]), kept beside the trip table:
/// `value` `None` removes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveRecord {
    /// Its key.
    pub key: String,
    /// Its bytes, or `None` to remove it.
    pub value: Option<Vec<u8>>,
}

/// The live state's record that a store writes when it merges without the live fold:
/// the state missed changes, and the next live run rebuilds it.
pub const LIVE_STALE: &str = "stale";

/// The live KPIs' part in a merge ([`TripStore::merge_live`]): told the rows the merge
/// changes, as they were and as they are, it returns the records of the live state to
/// store with the merge, in the same atomic write.
pub trait LiveFold: Send + Sync {
    /// The columns it reads of each row.
    fn projection(&self) -> &Projection;

    /// Folds the rows a merge changed: `before`, the stored rows it replaced (those that
    /// had a `trip_date`), and `after`, the rows it wrote (likewise). Returns the records
    /// to store.
    ///
    /// # Errors
    /// When an expression of a live query fails on the rows.
    fn fold(&self, before: &[RecordBatch], after: &[RecordBatch]) -> Result<Vec<LiveRecord>>;

    /// A digest of the maintained queries and the state's layout: a shard item written
    /// under another is stale.
    fn fingerprint(&self) -> &str;

    /// The change of rows from `before` to `after` (as [`LiveFold::fold`] takes them),
    /// per date, for a store that writes it into shard items itself.
    ///
    /// # Errors
    /// When an expression of a live query fails on the rows.
    fn changes(&self, before: &[RecordBatch], after: &[RecordBatch]) -> Result<Vec<(NaiveDate, LiveChange)>>;

    /// A shard item's state, `stored` (none: empty), with `change` taken in.
    ///
    /// # Errors
    /// When `stored` is damaged.
    fn apply(&self, stored: Option<&[u8]>, change: &LiveChange) -> Result<Vec<u8>>;
}

/// One date's change of the live state, from [`LiveFold::changes`]: what the store hands
/// back to [`LiveFold::apply`] for each shard item of that date it writes.
pub type LiveChange = Box<dyn std::any::Any + Send + Sync>;

/// One event of a trip in a batch, for a store that writes the live state apart from the
/// trips ([`TripStore::live_shared`]): where it was read, and its group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// Index into [`LiveBatch::shards`].
    pub shard: usize,
    /// Its sequence number in that shard.
    pub sequence: SequenceNumber,
    /// Its start group, for a start event.
    pub start: Option<StartGroup>,
    /// Its end group, for an end event.
    pub end: Option<EndGroup>,
}

/// Where a merge's updates were read, for the live state: per shard of the batch, its
/// last record; and, for a store that writes the live state apart from the trips, per
/// update the events that raised a group's version, in the order they were read
/// (`steps`, empty otherwise).
#[derive(Debug, Clone, Default)]
pub struct LiveBatch {
    /// The stream's identity ([`crate::stream::StreamSource::identity`]).
    pub stream: String,
    /// The shards, as the batch indexes them.
    pub shards: Vec<ShardId>,
    /// Per shard, the sequence number of the batch's last record (`None`: none read).
    pub last: Vec<Option<SequenceNumber>>,
    /// Per update (same order), its steps.
    pub steps: Vec<Vec<Step>>,
}

/// One shard item of a date's live state, written apart from the trips (DynamoDB).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LiveShard {
    /// Its write shard, K of [`dynamodb::date_shard`].
    pub k: u32,
    /// Raised by every write of it.
    pub version: u64,
    /// The version last published.
    pub published: u64,
    /// The state's bytes ([`LiveFold::apply`]).
    pub state: Vec<u8>,
    /// The [`LiveFold::fingerprint`] it was written under.
    pub fingerprint: String,
    /// Per stream shard (`stream/shard`), the last record whose change it holds: a
    /// replay counts only what lies past it. A rebuild from the table clears it.
    pub positions: BTreeMap<String, String>,
    /// Per stream shard, the last record any write of it took, kept by a rebuild: the
    /// position its figures are exact as of.
    pub seen: BTreeMap<String, String>,
    /// It may miss changes (written for other queries, or before the live state was
    /// built): the date is rebuilt from the table once settled.
    pub stale: bool,
}

/// A date's live state as shard items, with whether its trips are settled (no write in
/// flight: see [`ChangedDate::settled`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LiveDate {
    /// The date.
    pub date: NaiveDate,
    /// No merge has marked it within the grace.
    pub settled: bool,
    /// Its shard items.
    pub shards: Vec<LiveShard>,
}

/// The error of a live-state call on a table that keeps none.
pub(crate) fn no_live_state() -> crate::Error {
    crate::Error::config(
        "--live-kpis: this trip table keeps no live KPIs; the embedded LSM table and DynamoDB keep them, the SQLite \
         table of an older home does not: give --live-kpis a home of its own (--home, ingested from the stream's \
         start), or run without it",
    )
}

/// A trip table backend.
#[async_trait]
pub trait TripStore: Send + Sync {
    /// Merges the updates (one per trip) with the conditional writes of docs/design.md §3.
    /// Returns one outcome per update, in order.
    ///
    /// # Errors
    /// When the backend fails; no update of the call is then known to be stored, and a
    /// replay of the same updates is harmless.
    async fn merge(&self, updates: Vec<TripUpdate>) -> Result<Vec<MergeOutcome>>;

    /// [`TripStore::merge`], folding the rows it changes into the live KPIs' state,
    /// which is stored with the trips.
    ///
    /// # Errors
    /// As [`TripStore::merge`]; also when the fold fails, or the table keeps no live state.
    async fn merge_live(
        &self,
        updates: Vec<TripUpdate>,
        live: std::sync::Arc<dyn LiveFold>,
        batch: &LiveBatch,
    ) -> Result<Vec<MergeOutcome>> {
        let _ = (updates, live, batch);
        Err(no_live_state())
    }

    /// True when this table keeps the live KPIs' state with the trips, in one atomic
    /// write ([`TripStore::merge_live`], [`TripStore::live_records`]).
    fn keeps_live_state(&self) -> bool {
        false
    }

    /// True when this table keeps the live KPIs' state as shard items per date, written
    /// before the trips and apart from them ([`TripStore::live_dates`]); its
    /// [`TripStore::merge_live`] needs the batch's [`LiveBatch::steps`].
    fn live_shared(&self) -> bool {
        false
    }

    /// The write shards of the live state's items (the date index's).
    ///
    /// # Errors
    /// When the backend fails.
    async fn live_write_shards(&self) -> Result<u32> {
        Ok(1)
    }

    /// Every date's live shard items ([`TripStore::live_shared`]), and every date marked
    /// changed (without items when it has none), each with whether it is settled.
    ///
    /// # Errors
    /// When the backend fails, or it keeps no shared live state.
    async fn live_dates(&self) -> Result<Vec<LiveDate>> {
        Err(no_live_state())
    }

    /// Replaces `date`'s shard items with `states` (one per write shard, a rebuild
    /// from the table), on condition that none was written since `read` was read.
    /// Returns false, writing nothing, when one was.
    ///
    /// # Errors
    /// When the backend fails, or it keeps no shared live state.
    async fn put_live_date(&self, read: &LiveDate, states: Vec<Vec<u8>>, fingerprint: &str) -> Result<bool> {
        let _ = (read, states, fingerprint);
        Err(no_live_state())
    }

    /// Records that `date`'s shard items were published at the versions of `read`
    /// (an item written since stays unpublished).
    ///
    /// # Errors
    /// When the backend fails, or it keeps no shared live state.
    async fn live_published(&self, read: &LiveDate) -> Result<()> {
        let _ = read;
        Err(no_live_state())
    }

    /// Every record of the live KPIs' state, by key; none where it keeps none.
    ///
    /// # Errors
    /// When the backend fails.
    async fn live_records(&self) -> Result<Vec<(String, Vec<u8>)>> {
        Ok(Vec::new())
    }

    /// Writes (or removes) records of the live KPIs' state, atomically.
    ///
    /// # Errors
    /// When the backend fails, or it keeps no live state.
    async fn put_live(&self, records: Vec<LiveRecord>) -> Result<()> {
        let _ = records;
        Err(no_live_state())
    }

    /// The stored item of `trip_id`.
    ///
    /// # Errors
    /// When the backend fails.
    async fn get(&self, trip_id: &str) -> Result<Option<TripItem>>;

    /// Every item, or those whose `trip_date` is among `dates`, as batches of the
    /// `columns` of [`crate::model::event::TRIP_SCHEMA`], cut every [`EXPORT_BATCH_ROWS`] rows.
    /// With every column (the snapshot files) the rows are ordered by `trip_id`, so
    /// every backend writes the same files; otherwise they may come in storage order.
    ///
    /// # Errors
    /// When the backend fails.
    async fn export(&self, dates: Option<Vec<NaiveDate>>, columns: &Projection) -> Result<Vec<RecordBatch>>;

    /// [`TripStore::export`], handing each batch to `sink` as it is cut, so the caller
    /// need not hold the whole table. The embedded LSM table streams; the default
    /// exports first and then sends. It stops early, with an error, when the receiver
    /// is dropped.
    ///
    /// # Errors
    /// When the backend fails, or the receiver is gone.
    async fn export_to(
        &self,
        dates: Option<Vec<NaiveDate>>,
        columns: &Projection,
        sink: tokio::sync::mpsc::Sender<RecordBatch>,
    ) -> Result<()> {
        for batch in self.export(dates, columns).await? {
            sink.send(batch).await.map_err(|_| reader_stopped())?;
        }
        Ok(())
    }

    /// The dates marked changed, oldest first.
    ///
    /// # Errors
    /// When the backend fails, or a stored mark does not name a date.
    async fn changed_dates(&self) -> Result<Vec<ChangedDate>>;

    /// Clears the marks of `read` that are settled and still hold the value read;
    /// returns how many it cleared. A date marked again since keeps its mark.
    ///
    /// # Errors
    /// When the backend fails; the marks not yet cleared stay, and the next run
    /// recomputes their dates again.
    async fn clear_changed(&self, read: &[ChangedDate]) -> Result<usize>;

    /// Counts in the ledger of undeclared fields the `sightings` past each entry's
    /// position ([`ledger::ShardLedger::add`]), durably. Returns the fields never seen
    /// before in any entry, as `group/name`.
    ///
    /// # Errors
    /// When the backend fails; a replay then counts the sightings once.
    async fn record_fields(&self, sightings: &[ledger::Sighting]) -> Result<Vec<String>> {
        let now = ledger::now();
        let new_in_entries = self.add_sightings(sightings, &now).await?;
        if new_in_entries.is_empty() {
            return Ok(new_in_entries);
        }
        Ok(ledger::first_sightings(new_in_entries, &self.seen_fields().await?, &now))
    }

    /// [`TripStore::record_fields`]'s work on the backend: adds the sightings to their
    /// entries, read at `now`, and returns the fields new to each entry.
    ///
    /// # Errors
    /// When the backend fails.
    async fn add_sightings(&self, sightings: &[ledger::Sighting], now: &str) -> Result<Vec<String>> {
        let _ = (sightings, now);
        Err(crate::Error::store("this trip table keeps no ledger of undeclared fields"))
    }

    /// The ledger of undeclared fields, every entry combined ([`ledger::combine`]).
    ///
    /// # Errors
    /// When the backend fails, or an entry is damaged.
    async fn seen_fields(&self) -> Result<Vec<ledger::SeenField>> {
        Err(crate::Error::store("this trip table keeps no ledger of undeclared fields"))
    }

    /// Write requests sent so far (one per trip per batch in the common case).
    fn write_requests(&self) -> u64;

    /// Capacity units consumed so far: DynamoDB's; none for the embedded stores.
    fn consumed(&self) -> Consumed {
        Consumed::default()
    }
}

/// Capacity units a store consumed, in thousandths of a unit ([`capacity::Meter`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Consumed {
    /// Write units, in thousandths.
    pub write_milliunits: u64,
    /// Read units, in thousandths.
    pub read_milliunits: u64,
    /// Some units were computed from item sizes: the service reported none.
    pub computed: bool,
}

impl Consumed {
    /// What was consumed since `before` was read.
    #[must_use]
    pub fn since(self, before: Consumed) -> Consumed {
        Consumed {
            write_milliunits: self.write_milliunits - before.write_milliunits,
            read_milliunits: self.read_milliunits - before.read_milliunits,
            computed: self.computed,
        }
    }
}

/// A value for the marks of one merge call that no earlier call in this process gave,
/// and that a later process does not give again: microseconds since the epoch when
/// first asked, then one more each call.
pub(crate) fn next_mark() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
    let mut last = LAST.load(Ordering::Relaxed);
    loop {
        let next = now.max(last + 1);
        match LAST.compare_exchange_weak(last, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return next,
            Err(seen) => last = seen,
        }
    }
}

/// Parses a stored mark's date.
pub(crate) fn marked_date(text: &str, place: &dyn std::fmt::Display) -> Result<NaiveDate> {
    NaiveDate::parse_from_str(text, "%Y-%m-%d").map_err(|_| {
        crate::Error::store(format!(
            "a changed-date mark in {place} names {text:?}, which is not a YYYY-MM-DD date; delete that mark"
        ))
    })
}
