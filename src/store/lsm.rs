//! The embedded trip table: an LSM tree (`fjall`) at `<home>/trips/`.
//!
//! A B-tree keyed by random trip ids turns every merge into page rewrites scattered over
//! the whole file once the table outgrows its cache: SQLite fell from 55,000 to 26,000
//! events a second between a 1M- and a 10M-trip table. An LSM tree writes each batch
//! once, sorted, and merges files in the background. Measured inside tripflow it is
//! faster, though not yet flat: a 10M-trip ingest runs at about 76,000 events/s, under
//! 60% of its 1M rate, the rest being compaction (the README's Performance section has
//! the figures and what is left to find).
//!
//! Three keyspaces, written together by one atomic batch per merge call, made durable
//! (fsync) before the call returns:
//! - `trips`: `trip_id` → the item's two groups (see `encode`);
//! - `by_date`: `YYYY-MM-DD` + `trip_id` → nothing, for every trip with an end group:
//!   the date index a date-filtered export walks, like the DynamoDB backend's sparse
//!   index;
//! - `changed`: `YYYY-MM-DD` → the mark of the last merge call that touched the date
//!   (docs/design.md §5). Being in the trips' batch, a mark is never lost to a crash;
//!
//! and a fourth, `fields`, the ledger of undeclared fields: `stream/shard` → its entry
//! ([`super::ledger::ShardLedger`], JSON), written by its own durable batch.
//!
//! The merge reads each trip's stored item, keeps the groups whose incoming version is
//! newer, and writes the whole item back (a point read per trip, no read-modify-write
//! race: one writer holds the table). `fjall` locks its folder, so one process at a time
//! opens the table; a second gets a message saying so. Inside a process, every open of
//! the same folder shares one database.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use arrow::array::RecordBatch;
use async_trait::async_trait;
use chrono::NaiveDate;
use fjall::config::{CompressionPolicy, FilterPolicy};
use fjall::{AbstractTree, CompressionType, Database, Keyspace, KeyspaceCreateOptions, PersistMode};

use super::export::{DROPOFF, PICKUP, cells_of};
use super::ledger::{self, SeenField, ShardLedger, Sighting};
use super::{
    Cell, ChangedDate, CompactString, EndGroup, ExportBuilder, LIVE_STALE, LiveFold, LiveRecord, MergeOutcome,
    Projection, STORED_COLUMNS, StartGroup, ToCompactString, TripItem, TripStore, TripUpdate, date_of, is_newer,
    marked_date, next_mark, touched_dates,
};
use crate::error::{Context, Stage};
use crate::model::event::{END_LEN, EventKind, FIELDS, FieldType, START_LEN};
use crate::model::extra::Extras;
use crate::model::{put_varint, take_varint, timestamp};
use crate::{Error, Result};

/// The folder of the table under `--home`.
pub const FOLDER: &str = "trips";

/// Block cache of the table. The merge's point reads hit the newest files and their
/// filters; the rest of the memory budget is the write buffer.
const CACHE_BYTES: u64 = 32 << 20;

/// One keyspace's memtable, sealed and flushed to a file when full (fjall's default is
/// 64 MiB; a 1M-trip ingest with it and a 64 MiB cache peaked at 384 MiB). With the
/// items of layout 2, 16 MiB holds as many trips as 40 MiB of layout 1: a 10M-trip
/// ingest peaked at 308 MiB against 395-410 MiB with 32 MiB, in about the same time.
/// With one worker, up to four sealed memtables wait for their flush behind a
/// compaction, so they went down to 8 MiB: 10M-trip ingests of 259.7-268.9 s at
/// 308-328 MiB, against 260.3-268.1 s at 329-350 MiB with 16 MiB.
const MEMTABLE_BYTES: u64 = 8 << 20;

/// fjall's background threads, which flush memtables and compact files. fjall 3.1.13
/// starts one per core (up to 4), and while another compacts, its worker 0 puts every
/// compaction request it takes back on the queue and takes it again at once
/// (`worker_pool.rs`, `worker_tick`): a thread at 100% for as long as a compaction runs,
/// on two cores half the machine. `perf` of a 10M-trip ingest put 17% of its samples in
/// that loop. One worker never spins, but it also seals full memtables only between
/// compactions, so the table seals them itself (`Tables::seal_when_full`).
const WORKER_THREADS: usize = 1;

/// Data blocks are written uncompressed at every level. fjall's default compresses the
/// blocks of L2 and below with LZ4, where most of compaction's writes go once the table
/// outgrows L1 (256 MiB): at 10M trips LZ4 saved 8% of the disk (1,118 against
/// 1,207-1,222 MB) and cost 7% of the compaction thread's CPU, on two cores that
/// compaction shares with the merge and decoding. 10M ingest, in turn: 276.3 and
/// 292.9 s uncompressed against 296.4 and 301.9 s with LZ4 (1.05x). A 1M-trip table
/// fits in L0 and L1, which fjall never compressed.
const COMPRESSION: CompressionType = CompressionType::None;

/// The first byte of every stored value: the layout [`encode`] writes. Layouts 1 to 3,
/// which earlier builds wrote, are still read (see [`decode`]).
const LAYOUT: u8 = 4;
const LAYOUT_3: u8 = 3;
const LAYOUT_2: u8 = 2;
const LAYOUT_1: u8 = 1;
/// The lengths of the start and end groups when layouts 1 and 2 were written, which
/// those values do not record. Layout 3 records each group's length, so an item stored
/// before a field was appended to its group reads with that field absent.
const LEGACY_LENGTHS: [usize; 2] = [6, 8];
const _: () = assert!(FIELDS.len() <= u8::MAX as usize, "a group's length is one byte");
const HAS_START: u8 = 1;
const HAS_END: u8 = 2;
const NULL: u8 = 0;
const INT: u8 = 1;
const TEXT: u8 = 2;
/// Layout 2 on: a datetime in the stored form, as microseconds since the epoch.
const TIME: u8 = 3;

/// A stored item's undeclared fields, per group (start, end): the [`Extras`] text.
type ExtraCells<'a> = [Option<&'a str>; 2];

/// Column positions of the groups among the stored cells.
const START: std::ops::Range<usize> = EventKind::Start.first_column()..EventKind::Start.first_column() + START_LEN;
const END: std::ops::Range<usize> = EventKind::End.first_column()..EventKind::End.first_column() + END_LEN;
/// True for the columns holding datetimes, which are kept as microseconds.
const IS_DATETIME: [bool; STORED_COLUMNS] = {
    let mut is = [false; STORED_COLUMNS];
    let mut i = 0;
    while i < FIELDS.len() {
        is[1 + i] = matches!(FIELDS[i].ty, FieldType::DateTime);
        i += 1;
    }
    is
};

/// The LSM trip table.
pub struct LsmStore {
    tables: Arc<Tables>,
    writes: Arc<AtomicU64>,
}

struct Tables {
    db: Database,
    trips: Keyspace,
    by_date: Keyspace,
    changed: Keyspace,
    fields: Keyspace,
    /// The live KPIs' state ([`crate::kpi::live`]): written with the merges that change it.
    live: Keyspace,
    /// True once the table holds live state: a merge without the live fold then marks
    /// it stale, so the next live run rebuilds it instead of resuming a state that
    /// missed changes.
    live_kept: std::sync::atomic::AtomicBool,
    /// Held while a merge commits and while marks are compared and cleared, so a mark
    /// set between a clear's read and its removal is never removed.
    marks: Mutex<()>,
    path: PathBuf,
}

impl LsmStore {
    /// Opens (creating if needed) the table in `<home>/trips/`.
    ///
    /// # Errors
    /// When the folder cannot be created or opened, or another process has it open.
    pub fn open(home: &Path) -> Result<Self> {
        /// The tables open in this process, by folder: fjall's lock would refuse a
        /// second open of a folder even from the same process.
        static OPEN: Mutex<Vec<(PathBuf, Weak<Tables>)>> = Mutex::new(Vec::new());
        let path = home.join(FOLDER);
        std::fs::create_dir_all(&path).map_err(|e| crate::error::home_io(Stage::Store, &path, e))?;
        let key = path.canonicalize().unwrap_or_else(|_| path.clone());
        let mut open = OPEN.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        open.retain(|(_, tables)| tables.strong_count() > 0);
        if let Some(tables) = open.iter().find(|(p, _)| *p == key).and_then(|(_, t)| t.upgrade()) {
            return Ok(LsmStore { tables, writes: Arc::default() });
        }
        let tables = Arc::new(Tables::open(path)?);
        open.push((key, Arc::downgrade(&tables)));
        Ok(LsmStore { tables, writes: Arc::default() })
    }

    /// Runs `work` on tokio's blocking pool: fjall's calls do disk I/O.
    async fn call<T: Send + 'static>(&self, work: impl FnOnce(&Tables) -> Result<T> + Send + 'static) -> Result<T> {
        let tables = self.tables.clone();
        tokio::task::spawn_blocking(move || work(&tables))
            .await
            .map_err(|e| Stage::Store.error("the trip table's worker stopped", e))?
    }
}

impl Tables {
    fn open(path: PathBuf) -> Result<Self> {
        Self::open_with_workers(path, WORKER_THREADS)
    }

    /// Opens the table with `workers` background threads (none, in a test, to see what
    /// the merge does by itself).
    fn open_with_workers(path: PathBuf, workers: usize) -> Result<Self> {
        let builder = Database::builder(&path).cache_size(CACHE_BYTES);
        // `worker_threads` refuses 0, which only a test asks for.
        let builder = if workers == 0 { builder.worker_threads_unchecked(0) } else { builder.worker_threads(workers) };
        let db = match builder.open() {
            Ok(db) => db,
            Err(fjall::Error::Locked) => {
                return Err(Error::store(format!(
                    "the trip table {} is open in another tripflow process (an `ingest --follow`?); the embedded \
                     table takes one process at a time: stop that process first, or run this command in it \
                     (`tripflow run` ingests and then runs the KPI job)",
                    path.display()
                )));
            }
            Err(e) => return Err(Stage::Store.error(format!("cannot open the trip table {}", path.display()), e)),
        };
        let keyspace = |name: &str, options: KeyspaceCreateOptions| {
            db.keyspace(name, || {
                options
                    .max_memtable_size(MEMTABLE_BYTES)
                    .data_block_compression_policy(CompressionPolicy::all(COMPRESSION))
            })
            .stage(Stage::Store, format!("cannot open {name} in {}", path.display()))
        };
        // Options apply when a keyspace is created; an existing one keeps those it was
        // created with (a table an earlier build made keeps LZ4 below L1, still read).
        // The merge's point reads go to `trips`, and almost all of them miss (a trip's
        // start and end mostly arrive in one batch): its bloom filters answer those.
        // `by_date` is only walked by prefix, which no filter serves, so it builds none
        // (on every flush and compaction of 10M keys).
        let trips = keyspace("trips", KeyspaceCreateOptions::default())?;
        let by_date = keyspace("by_date", KeyspaceCreateOptions::default().filter_policy(FilterPolicy::disabled()))?;
        let changed = keyspace("changed", KeyspaceCreateOptions::default())?;
        let fields = keyspace("fields", KeyspaceCreateOptions::default())?;
        let live = keyspace("live", KeyspaceCreateOptions::default())?;
        let live_kept =
            (!live.is_empty().map_err(|e| Stage::Store.error(format!("cannot read {}", path.display()), e))?).into();
        Ok(Tables { db, trips, by_date, changed, fields, live, live_kept, marks: Mutex::new(()), path })
    }

    /// Builds every item, or those of `dates`, into batches of `columns`, handing each
    /// full batch to `out`; returns the builder with the rows of the last, partial
    /// batch. Keys come in order, so every export is in `trip_id` order (by date first
    /// when dates are given, as the other backends do).
    fn scan(
        &self,
        dates: Option<Vec<NaiveDate>>,
        columns: Projection,
        mut out: impl FnMut(RecordBatch) -> Result<()>,
    ) -> Result<ExportBuilder> {
        let mut builder = ExportBuilder::new(columns);
        let mut full = Vec::with_capacity(1);
        let mut push = |key: &[u8], value: &[u8]| -> Result<()> {
            let trip_id = std::str::from_utf8(key)
                .map_err(|_| Error::store(format!("a stored trip_id in {} is not UTF-8", self.path.display())))?;
            let (cells, extras) = self.cells(trip_id, value)?;
            builder.push_with_extras(&cells, extras, &mut full)?;
            full.drain(..).try_for_each(&mut out)
        };
        match dates {
            None => {
                for guard in self.trips.iter() {
                    let (key, value) = guard.into_inner().map_err(|e| self.failed("cannot read the table", e))?;
                    push(&key, &value)?;
                }
            }
            Some(mut dates) => {
                dates.sort();
                dates.dedup();
                for d in dates {
                    let prefix = d.format("%Y-%m-%d").to_string();
                    for guard in self.by_date.prefix(&prefix) {
                        let (key, _) = guard.into_inner().map_err(|e| self.failed("cannot read the date index", e))?;
                        let trip_id = &key[prefix.len()..];
                        let value = self.trips.get(trip_id).map_err(|e| self.failed("cannot read a trip", e))?;
                        let value = value.ok_or_else(|| {
                            Error::store(format!(
                                "the date index of {} names a trip that is not stored ({:?}); delete the \
                                 folder and ingest the stream again from its start",
                                self.path.display(),
                                String::from_utf8_lossy(trip_id)
                            ))
                        })?;
                        push(trip_id, &value)?;
                    }
                }
            }
        }
        Ok(builder)
    }

    /// Adds the live state's `records` to `batch` (a record without a value removes its key).
    fn stage_live(&self, batch: &mut fjall::OwnedWriteBatch, records: Vec<LiveRecord>) {
        for r in records {
            match r.value {
                Some(v) => batch.insert(&self.live, r.key, v),
                None => batch.remove(&self.live, r.key),
            }
        }
    }

    fn failed(&self, what: &str, e: fjall::Error) -> Error {
        Stage::Store.error(format!("{what} in {}", self.path.display()), e)
    }

    /// Seals `keyspace`'s memtable once it holds [`MEMTABLE_BYTES`].
    ///
    /// fjall asks its worker to seal a full memtable and does not wait. With the one
    /// worker busy compacting for seconds, the memtable grows past its size for as long:
    /// a 10M-trip ingest peaked at 375 and 438 MiB, against 318 MiB with the spinning
    /// pool. Sealed here, the memtable waits for its flush, and fjall holds writes back
    /// while four of them wait, which bounds the memory again. `tree` and
    /// `rotate_memtable` are public but hidden from fjall's docs, so a fjall upgrade
    /// may move them; a seal that someone else did first is a no-op.
    fn seal_when_full(&self, keyspace: &Keyspace) -> Result<()> {
        if keyspace.tree.active_memtable().size() < MEMTABLE_BYTES {
            return Ok(());
        }
        keyspace.rotate_memtable().map(drop).map_err(|e| self.failed("cannot seal a memtable", e))
    }

    /// The stored cells of `trip_id` and its groups' undeclared fields, decoded from
    /// `value` (borrowing from it).
    fn cells<'a>(&self, trip_id: &'a str, value: &'a [u8]) -> Result<([Cell<'a>; STORED_COLUMNS], ExtraCells<'a>)> {
        decode(trip_id, value).ok_or_else(|| {
            Error::store(format!(
                "the stored item of trip_id {trip_id:?} in {} is damaged, or was written by a newer \
                 tripflow (not layout {LAYOUT_1} to {LAYOUT} of these fields); delete the folder and ingest the stream \
                 again from its start",
                self.path.display()
            ))
        })
    }
}

/// The item of `cells` and `extras` as stored: the groups that have a version.
fn item((cells, extras): &([Cell<'_>; STORED_COLUMNS], ExtraCells<'_>)) -> TripItem {
    let text = |c: Cell<'_>| match c {
        Cell::Text(t) => Some(CompactString::from(t)),
        Cell::Int(v) => Some(v.to_compact_string()),
        Cell::Time(v) => Some(timestamp::format(v).into()),
        Cell::Null => None,
    };
    let trip_id = text(cells[0]).unwrap_or_default();
    let extras = |g: usize| Extras::from_canonical(extras[g]);
    let start = has(cells, StartGroup::KIND)
        .then(|| StartGroup::from_fn(|i| text(cells[START.start + i])).with_extras(extras(0)));
    let end =
        has(cells, EndGroup::KIND).then(|| EndGroup::from_fn(|i| text(cells[END.start + i])).with_extras(extras(1)));
    TripItem { trip_id, start, end }
}

/// True when `cells` hold a group of `kind`: its version is stored.
fn has(cells: &[Cell<'_>; STORED_COLUMNS], kind: EventKind) -> bool {
    !matches!(cells[kind.version_column()], Cell::Null)
}

/// The value stored for a trip: the layout byte, a byte of which groups are present,
/// then each present group's length (one byte) and cells, in [`FIELDS`] order, each a
/// tag and its bytes:
/// - null: nothing;
/// - integer: zigzag LEB128 (location and vendor ids take a byte or two);
/// - datetime in the stored form (`2024-05-25T13:19:00.000000Z`, 27 bytes of text):
///   8 little-endian bytes of microseconds, which [`timestamp::format`] gives back
///   exactly; a datetime in any other form is kept as text;
/// - text: a LEB128 length, then the UTF-8 bytes;
///
/// and after each group's cells, its undeclared fields: a null, or the [`Extras`] object
/// as text.
///
/// Layout 1 kept every integer in 8 bytes and every value as text behind a 4-byte
/// length: 185 bytes for a typical complete trip against 75 here, and the table's
/// background compaction rewrites every byte several times over as it grows. Layout 2
/// was this one without the groups' lengths (73 bytes), so a field added to the
/// registry would have misread every stored item; a field is appended at its group's
/// end, and an older item reads with it absent. Layout 3 was this one without the
/// undeclared fields, and reads with none.
fn encode(cells: &[Cell<'_>; STORED_COLUMNS], extras: ExtraCells<'_>, out: &mut Vec<u8>) {
    let (start, end) = (has(cells, EventKind::Start), has(cells, EventKind::End));
    out.clear();
    out.push(LAYOUT);
    out.push(if start { HAS_START } else { 0 } | if end { HAS_END } else { 0 });
    for (g, range) in [start.then_some(START), end.then_some(END)].into_iter().enumerate() {
        let Some(range) = range else { continue };
        out.push(range.len() as u8);
        for at in range {
            encode_cell(cells[at], IS_DATETIME[at], out);
        }
        encode_cell(extras[g].map_or(Cell::Null, Cell::Text), false, out);
    }
}

fn encode_cell(cell: Cell<'_>, is_datetime: bool, out: &mut Vec<u8>) {
    fn text(out: &mut Vec<u8>, v: &str) {
        out.push(TEXT);
        put_varint(out, v.len() as u64);
        out.extend_from_slice(v.as_bytes());
    }
    fn time(out: &mut Vec<u8>, micros: i64) {
        out.push(TIME);
        out.extend_from_slice(&micros.to_le_bytes());
    }
    match cell {
        Cell::Null => out.push(NULL),
        Cell::Int(v) => {
            out.push(INT);
            put_varint(out, ((v << 1) ^ (v >> 63)) as u64);
        }
        Cell::Time(micros) => time(out, micros),
        Cell::Text(v) => match is_datetime.then(|| stored_micros(v)).flatten() {
            Some(micros) => time(out, micros),
            None => text(out, v),
        },
    }
}

/// [`is_newer`] against a stored cell. No text is made for a version kept as
/// microseconds when the incoming one has the stored form too: their microseconds
/// compare as their texts do.
fn newer(incoming: Option<&str>, stored: Cell<'_>) -> bool {
    match stored {
        Cell::Null => is_newer(incoming, None),
        Cell::Text(s) => is_newer(incoming, Some(s)),
        Cell::Time(m) => match incoming.and_then(stored_micros) {
            Some(i) => i > m,
            None => is_newer(incoming, Some(&timestamp::format(m))),
        },
        Cell::Int(n) => is_newer(incoming, Some(&n.to_string())),
    }
}

/// The UTC date (`YYYY-MM-DD`) of a stored dropoff, if one is stored.
fn stored_date(dropoff: Cell<'_>) -> Option<CompactString> {
    match dropoff {
        Cell::Text(t) => Some(date_of(t).into()),
        Cell::Time(m) => Some(date_of(&timestamp::format(m)).into()),
        Cell::Int(_) | Cell::Null => None,
    }
}

/// The microseconds of a datetime in the stored form, when formatting them gives the
/// same text back (so the item reads back byte for byte); `None` for any other text.
fn stored_micros(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    if b.len() != 27 || b[10] != b'T' || b[19] != b'.' || b[26] != b'Z' {
        return None;
    }
    // With a `T`, six fraction digits and a `Z`, parse_plain reads every digit and
    // format writes them all back; years 0000-9999 are four digits both ways.
    timestamp::parse_plain(text)
}

/// The cells and undeclared fields of a stored value of layout 1 to 4, or `None` when it
/// is not one that [`encode`] or an earlier build wrote. Fields missing from a group
/// that was shorter when it was written are null.
fn decode<'a>(trip_id: &'a str, value: &'a [u8]) -> Option<([Cell<'a>; STORED_COLUMNS], ExtraCells<'a>)> {
    fn take<const N: usize>(rest: &mut &[u8]) -> Option<[u8; N]> {
        let (bytes, after) = rest.split_first_chunk::<N>()?;
        *rest = after;
        Some(*bytes)
    }
    let mut cells = [Cell::Null; STORED_COLUMNS];
    cells[0] = Cell::Text(trip_id);
    let (&layout, rest) = value.split_first()?;
    let (&groups, mut rest) = rest.split_first()?;
    if !matches!(layout, LAYOUT | LAYOUT_3 | LAYOUT_2 | LAYOUT_1) || groups & !(HAS_START | HAS_END) != 0 {
        return None;
    }
    let v1 = layout == LAYOUT_1;
    let mut extras = [None; 2];
    let mut read =
        |group: usize, range: std::ops::Range<usize>, cells: &mut [Cell<'a>; STORED_COLUMNS]| -> Option<()> {
            let len = match layout {
                LAYOUT | LAYOUT_3 => usize::from(take::<1>(&mut rest)?[0]),
                _ => LEGACY_LENGTHS[group],
            };
            if len > range.len() {
                return None;
            }
            let mut extra = Cell::Null;
            let has_extras = layout == LAYOUT;
            let cells = cells[range.start..range.start + len].iter_mut().chain(has_extras.then_some(&mut extra));
            for cell in cells {
                let [tag] = take(&mut rest)?;
                *cell = match tag {
                    NULL => Cell::Null,
                    INT if v1 => Cell::Int(i64::from_le_bytes(take(&mut rest)?)),
                    INT => {
                        let v = take_varint(&mut rest)?;
                        Cell::Int((v >> 1) as i64 ^ -((v & 1) as i64))
                    }
                    TEXT => {
                        let len =
                            if v1 { u64::from(u32::from_le_bytes(take(&mut rest)?)) } else { take_varint(&mut rest)? };
                        let len = usize::try_from(len).ok()?;
                        let (bytes, after) = rest.split_at_checked(len)?;
                        rest = after;
                        Cell::Text(std::str::from_utf8(bytes).ok()?)
                    }
                    TIME if !v1 => Cell::Time(i64::from_le_bytes(take(&mut rest)?)),
                    _ => return None,
                };
            }
            extras[group] = match extra {
                Cell::Null => None,
                Cell::Text(t) => Some(t),
                Cell::Int(_) | Cell::Time(_) => return None,
            };
            Some(())
        };
    if groups & HAS_START != 0 {
        read(0, START, &mut cells)?;
    }
    if groups & HAS_END != 0 {
        read(1, END, &mut cells)?;
    }
    rest.is_empty().then_some((cells, extras))
}

/// The key of a trip in `by_date`: its dropoff's UTC date, then its id.
fn date_key(dropoff_datetime: &str, trip_id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(10 + trip_id.len());
    key.extend_from_slice(date_of(dropoff_datetime).as_bytes());
    key.extend_from_slice(trip_id.as_bytes());
    key
}

impl LsmStore {
    /// The merge, with the live fold or without.
    async fn merge_with(&self, updates: Vec<TripUpdate>, live: Option<Arc<dyn LiveFold>>) -> Result<Vec<MergeOutcome>> {
        let writes = self.writes.clone();
        self.call(move |t| {
            // The rows the merge changes, as they were and as they are, for the live fold.
            let mut changes = live.as_ref().map(|l| {
                let builder = || ExportBuilder::new(l.projection().clone());
                ((builder(), Vec::new()), (builder(), Vec::new()))
            });
            // Trips in key order: the point reads walk each file's blocks forward.
            let mut order: Vec<usize> = (0..updates.len()).collect();
            order.sort_unstable_by(|&a, &b| updates[a].trip_id.cmp(&updates[b].trip_id));
            let mut outcomes = vec![MergeOutcome::default(); updates.len()];
            let mut batch = t.db.batch().durability(Some(PersistMode::SyncAll));
            let mut value = Vec::new();
            let mut written = 0;
            let mut touched = std::collections::BTreeSet::new();
            for &i in &order {
                let u = &updates[i];
                let stored = t.trips.get(u.trip_id.as_str()).map_err(|e| t.failed("cannot read a trip", e))?;
                // The stored cells are compared and kept as they are: the group the
                // update does not replace is written back without being made into text.
                let (mut cells, mut extras) = match &stored {
                    Some(bytes) => t.cells(&u.trip_id, bytes)?,
                    None => ([Cell::Null; STORED_COLUMNS], [None; 2]),
                };
                let stored_end = cells[DROPOFF];
                let outcome = MergeOutcome {
                    start_applied: newer(u.start.as_ref().map(StartGroup::version), cells[PICKUP]),
                    end_applied: newer(u.end.as_ref().map(EndGroup::version), stored_end),
                };
                outcomes[i] = outcome;
                if !outcome.start_applied && !outcome.end_applied {
                    continue;
                }
                let old_date = stored_date(stored_end);
                touched_dates(outcome, old_date.as_deref(), u, &mut touched);
                let before = changes.is_some().then_some((cells, extras));
                let incoming = cells_of(&u.trip_id, u.start.as_ref(), u.end.as_ref());
                let incoming_extras = [u.start.as_ref().map(|g| g.extras()), u.end.as_ref().map(|g| g.extras())]
                    .map(|e| e.and_then(Extras::as_json));
                for (g, (applied, group)) in
                    [(outcome.start_applied, START), (outcome.end_applied, END)].into_iter().enumerate()
                {
                    if applied {
                        cells[group.clone()].copy_from_slice(&incoming[group]);
                        extras[g] = incoming_extras[g];
                    }
                }
                if let (Some(((before_rows, before_full), (after_rows, after_full))), Some(before)) =
                    (&mut changes, &before)
                {
                    // The written datetimes become microseconds once, for the live fold's
                    // rows and the item's encoding alike.
                    for (cell, _) in cells.iter_mut().zip(IS_DATETIME).filter(|(_, is)| *is) {
                        if let Cell::Text(t) = *cell
                            && let Some(micros) = stored_micros(t)
                        {
                            *cell = Cell::Time(micros);
                        }
                    }
                    if has(&before.0, EventKind::End) {
                        before_rows.push_with_extras(&before.0, before.1, before_full)?;
                    }
                    if has(&cells, EventKind::End) {
                        after_rows.push_with_extras(&cells, extras, after_full)?;
                    }
                }
                encode(&cells, extras, &mut value);
                batch.insert(&t.trips, u.trip_id.as_str(), &value);
                if outcome.end_applied {
                    let new = u.end.as_ref().map(|e| date_key(e.version(), &u.trip_id));
                    if let Some(old) = old_date.map(|d| date_key(&d, &u.trip_id))
                        && Some(&old) != new.as_ref()
                    {
                        batch.remove(&t.by_date, old);
                    }
                    if let Some(new) = new {
                        batch.insert(&t.by_date, new, []);
                    }
                }
                written += 1;
            }
            let mark = next_mark().to_be_bytes();
            for date in &touched {
                batch.insert(&t.changed, date.as_str(), mark);
            }
            match (&live, changes) {
                (Some(live), Some(((before_rows, before_full), (after_rows, after_full)))) => {
                    let before = before_rows.finish_into(before_full)?;
                    let after = after_rows.finish_into(after_full)?;
                    t.stage_live(&mut batch, live.fold(&before, &after)?);
                    t.live_kept.store(true, Ordering::Relaxed);
                }
                _ if t.live_kept.load(Ordering::Relaxed) && written > 0 => batch.insert(&t.live, LIVE_STALE, []),
                _ => {}
            }
            {
                let _marks = t.marks.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                batch.commit().map_err(|e| t.failed("cannot commit a merge", e))?;
            }
            t.seal_when_full(&t.trips)?;
            t.seal_when_full(&t.by_date)?;
            writes.fetch_add(written, Ordering::Relaxed);
            Ok(outcomes)
        })
        .await
    }
}

#[async_trait]
impl TripStore for LsmStore {
    async fn merge(&self, updates: Vec<TripUpdate>) -> Result<Vec<MergeOutcome>> {
        self.merge_with(updates, None).await
    }

    async fn merge_live(
        &self,
        updates: Vec<TripUpdate>,
        live: Arc<dyn LiveFold>,
        _batch: &super::LiveBatch,
    ) -> Result<Vec<MergeOutcome>> {
        self.merge_with(updates, Some(live)).await
    }

    fn keeps_live_state(&self) -> bool {
        true
    }

    async fn live_records(&self) -> Result<Vec<(String, Vec<u8>)>> {
        self.call(|t| {
            let mut records = Vec::new();
            for guard in t.live.iter() {
                let (key, value) = guard.into_inner().map_err(|e| t.failed("cannot read the live KPIs' state", e))?;
                records.push((String::from_utf8_lossy(&key).into_owned(), value.to_vec()));
            }
            Ok(records)
        })
        .await
    }

    async fn put_live(&self, records: Vec<LiveRecord>) -> Result<()> {
        self.call(move |t| {
            let mut batch = t.db.batch().durability(Some(PersistMode::SyncAll));
            t.stage_live(&mut batch, records);
            let _marks = t.marks.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            batch.commit().map_err(|e| t.failed("cannot write the live KPIs' state", e))?;
            t.live_kept.store(true, Ordering::Relaxed);
            Ok(())
        })
        .await
    }

    async fn get(&self, trip_id: &str) -> Result<Option<TripItem>> {
        let trip_id = trip_id.to_owned();
        self.call(move |t| {
            let stored = t.trips.get(&trip_id).map_err(|e| t.failed("cannot read a trip", e))?;
            stored.map(|bytes| Ok(item(&t.cells(&trip_id, &bytes)?))).transpose()
        })
        .await
    }

    async fn export(&self, dates: Option<Vec<NaiveDate>>, columns: &Projection) -> Result<Vec<RecordBatch>> {
        let columns = columns.clone();
        self.call(move |t| {
            let mut batches = Vec::new();
            let builder = t.scan(dates, columns, |batch| {
                batches.push(batch);
                Ok(())
            })?;
            builder.finish_into(batches)
        })
        .await
    }

    async fn export_to(
        &self,
        dates: Option<Vec<NaiveDate>>,
        columns: &Projection,
        sink: tokio::sync::mpsc::Sender<RecordBatch>,
    ) -> Result<()> {
        let columns = columns.clone();
        self.call(move |t| {
            let send = |batch| sink.blocking_send(batch).map_err(|_| super::reader_stopped());
            let builder = t.scan(dates, columns, send)?;
            builder.finish_into(Vec::new())?.into_iter().try_for_each(send)
        })
        .await
    }

    async fn changed_dates(&self) -> Result<Vec<ChangedDate>> {
        self.call(|t| {
            let mut marks = Vec::new();
            for guard in t.changed.iter() {
                let (key, value) = guard.into_inner().map_err(|e| t.failed("cannot read the changed dates", e))?;
                let date = marked_date(&String::from_utf8_lossy(&key), &t.path.display())?;
                marks.push(ChangedDate { date, mark: hex(&value), settled: true });
            }
            Ok(marks)
        })
        .await
    }

    async fn clear_changed(&self, read: &[ChangedDate]) -> Result<usize> {
        let read = read.to_vec();
        self.call(move |t| {
            let _marks = t.marks.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let mut batch = t.db.batch().durability(Some(PersistMode::SyncAll));
            let mut cleared = 0;
            for m in read.iter().filter(|m| m.settled) {
                let key = m.date.format("%Y-%m-%d").to_string();
                let now = t.changed.get(&key).map_err(|e| t.failed("cannot read a changed date", e))?;
                if now.is_some_and(|v| hex(&v) == m.mark) {
                    batch.remove(&t.changed, key);
                    cleared += 1;
                }
            }
            batch.commit().map_err(|e| t.failed("cannot clear the changed dates", e))?;
            Ok(cleared)
        })
        .await
    }

    async fn add_sightings(&self, sightings: &[Sighting], now: &str) -> Result<Vec<String>> {
        let (sightings, now) = (sightings.to_vec(), now.to_owned());
        self.call(move |t| {
            let mut batch = t.db.batch().durability(Some(PersistMode::SyncAll));
            let mut new = Vec::new();
            for (position, seen) in ledger::by_position(&sightings) {
                let stored = t.fields.get(position).map_err(|e| t.failed("cannot read the ledger", e))?;
                let mut entry = match stored {
                    Some(bytes) => ShardLedger::parse(&String::from_utf8_lossy(&bytes), &t.path.display())?,
                    None => ShardLedger::default(),
                };
                if let Some(first) = entry.add(seen, &now) {
                    new.extend(first);
                    batch.insert(&t.fields, position, entry.to_text());
                }
            }
            batch.commit().map_err(|e| t.failed("cannot write the ledger", e))?;
            Ok(new)
        })
        .await
    }

    async fn seen_fields(&self) -> Result<Vec<SeenField>> {
        self.call(|t| {
            let mut entries = Vec::new();
            for guard in t.fields.iter() {
                let (_, value) = guard.into_inner().map_err(|e| t.failed("cannot read the ledger", e))?;
                entries.push(ShardLedger::parse(&String::from_utf8_lossy(&value), &t.path.display())?);
            }
            Ok(ledger::combine(entries))
        })
        .await
    }

    fn write_requests(&self) -> u64 {
        self.writes.load(Ordering::Relaxed)
    }
}

/// A mark's bytes as text, the form [`ChangedDate::mark`] keeps.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use compact_str::format_compact;
    use proptest::prelude::*;

    use super::*;
    use crate::model::event::END_FIELDS;

    fn encode_groups(start: Option<&StartGroup>, end: Option<&EndGroup>, out: &mut Vec<u8>) {
        let extras = [start.and_then(|s| s.extras().as_json()), end.and_then(|e| e.extras().as_json())];
        encode(&cells_of("t", start, end), extras, out);
    }

    /// The groups as layout 3 wrote them: layout 4 without the undeclared fields.
    fn layout_3(start: Option<&StartGroup>, end: Option<&EndGroup>) -> Vec<u8> {
        let groups = (u8::from(start.is_some()) * HAS_START) | (u8::from(end.is_some()) * HAS_END);
        let mut value = vec![LAYOUT_3, groups];
        let cells = cells_of("t", start, end);
        for range in [start.map(|_| START), end.map(|_| END)].into_iter().flatten() {
            value.push(range.len() as u8);
            for at in range {
                encode_cell(cells[at], IS_DATETIME[at], &mut value);
            }
        }
        value
    }

    /// The groups as an earlier build wrote them, in `layout` 1 or 2: the fields the
    /// groups had then ([`LEGACY_LENGTHS`]), without the groups' lengths.
    fn legacy(layout: u8, start: Option<&StartGroup>, end: Option<&EndGroup>) -> Vec<u8> {
        let groups = (u8::from(start.is_some()) * HAS_START) | (u8::from(end.is_some()) * HAS_END);
        let mut value = vec![layout, groups];
        let cells = cells_of("t", start, end);
        let present = [start.is_some(), end.is_some()];
        for (g, range) in [START, END].into_iter().enumerate().filter(|&(g, _)| present[g]) {
            for at in range.start..range.start + LEGACY_LENGTHS[g] {
                match (layout, cells[at]) {
                    (LAYOUT_2, cell) => encode_cell(cell, IS_DATETIME[at], &mut value),
                    // Layout 1: integers in 8 bytes, every other value as text behind a
                    // 4-byte length.
                    (_, Cell::Null) => value.push(NULL),
                    (_, Cell::Int(i)) => {
                        value.push(INT);
                        value.extend_from_slice(&i.to_le_bytes());
                    }
                    (_, Cell::Text(v)) => {
                        value.push(TEXT);
                        value.extend_from_slice(&(v.len() as u32).to_le_bytes());
                        value.extend_from_slice(v.as_bytes());
                    }
                    (_, Cell::Time(_)) => unreachable!("cells_of gives datetimes as text"),
                }
            }
        }
        value
    }

    /// Any values of `kind`'s group, by the registry: integers of any size, required
    /// datetimes with a date, and any text elsewhere (a backend keeps what it is given).
    fn arb_values(kind: EventKind) -> impl Strategy<Value = Vec<Option<CompactString>>> {
        let values: Vec<BoxedStrategy<Option<CompactString>>> = kind
            .fields()
            .iter()
            .map(|f| {
                let value = match f.ty {
                    FieldType::Integer => any::<i64>().prop_map(|i| i.to_compact_string()).boxed(),
                    FieldType::DateTime if f.required => "[0-9T:.Z-]{10,30}".prop_map(CompactString::from).boxed(),
                    _ => ".{0,40}".prop_map(CompactString::from).boxed(),
                };
                if f.required { value.prop_map(Some).boxed() } else { proptest::option::of(value).boxed() }
            })
            .collect();
        values
    }

    fn arb_start() -> impl Strategy<Value = StartGroup> {
        (arb_values(EventKind::Start), arb_extras())
            .prop_map(|(v, x)| StartGroup(v.try_into().expect("one value a field"), x))
    }

    fn arb_end() -> impl Strategy<Value = EndGroup> {
        (arb_values(EventKind::End), arb_extras())
            .prop_map(|(v, x)| EndGroup(v.try_into().expect("one value a field"), x))
    }

    /// None, or a few undeclared fields of any name and a JSON value.
    fn arb_extras() -> impl Strategy<Value = Extras> {
        let value = prop_oneof![
            any::<i64>().prop_map(|i| i.to_string()),
            ".{0,12}".prop_map(|s| serde_json::to_string(&s).unwrap()),
            Just(r#"{"a":[1,true]}"#.to_owned()),
        ];
        prop::collection::vec((".{0,10}", value), 0..3).prop_map(Extras::from_pairs)
    }

    #[tokio::test]
    async fn opens_in_one_process_share_the_table_and_a_closed_table_opens_again() {
        let tmp = tempfile::tempdir().unwrap();
        let end = EndGroup::of([("dropoff_datetime", "2024-05-25T10:00:00.000000Z"), ("fare_amount", "7.5")]);
        let update = TripUpdate { trip_id: "t".into(), start: None, end: Some(end.clone()) };
        {
            let a = LsmStore::open(tmp.path()).unwrap();
            let b = LsmStore::open(tmp.path()).unwrap();
            a.merge(vec![update]).await.unwrap();
            assert_eq!(b.get("t").await.unwrap().unwrap().end, Some(end.clone()), "b sees a's write");
        }
        let again = LsmStore::open(tmp.path()).expect("the lock went with the last handle");
        assert_eq!(again.get("t").await.unwrap().unwrap().end, Some(end), "the merge was durable");
    }

    #[tokio::test]
    async fn a_merge_that_fills_the_memtable_seals_it_without_waiting_for_the_worker() {
        // No background worker: fjall's own request to seal the memtable is never
        // served, as when its one worker is busy compacting.
        let tmp = tempfile::tempdir().unwrap();
        let tables = Tables::open_with_workers(tmp.path().join(FOLDER), 0).unwrap();
        let store = LsmStore { tables: Arc::new(tables), writes: Arc::default() };
        let (start, end) = typical_trip();
        let update = |i: usize| TripUpdate {
            trip_id: format_compact!("{i:036}"),
            start: Some(start.clone()),
            end: Some(end.clone()),
        };
        // About 175 bytes a trip in fjall's count: `full` trips fill a memtable.
        let full = usize::try_from(MEMTABLE_BYTES / 175).unwrap();
        store.merge((0..full / 2).map(update).collect()).await.unwrap();
        let trips = &store.tables.trips.tree;
        assert_eq!(trips.sealed_memtable_count(), 0, "not full yet");
        let before = trips.active_memtable().size();
        assert!(before > MEMTABLE_BYTES / 3, "{before} bytes after {} trips: the test writes too little", full / 2);
        store.merge((full / 2..2 * full).map(update).collect()).await.unwrap();
        assert_eq!(trips.sealed_memtable_count(), 1, "the full memtable was sealed");
        assert!(trips.active_memtable().size() < MEMTABLE_BYTES, "a new memtable took the writes");
        assert!(store.get(&format!("{:036}", 0)).await.unwrap().is_some(), "a sealed memtable is still read");
    }

    /// Writes `n` copies of a typical trip to `keyspace` and compacts them into its last
    /// level, where fjall's default compresses; returns the bytes on disk.
    fn compacted_disk_space(keyspace: &Keyspace, n: usize) -> u64 {
        let (start, end) = typical_trip();
        let mut value = Vec::new();
        encode_groups(Some(&start), Some(&end), &mut value);
        for i in 0..n {
            keyspace.insert(format!("{i:010}"), value.as_slice()).unwrap();
        }
        keyspace.rotate_memtable_and_wait().unwrap();
        keyspace.major_compact().unwrap();
        keyspace.disk_space()
    }

    #[tokio::test]
    async fn new_tables_are_uncompressed_and_a_table_an_earlier_build_compressed_still_reads() {
        const TRIPS: usize = 20_000;
        // The same 75-byte value again and again: LZ4 shrinks the values to a fraction,
        // and nothing else can (the keys' shared prefixes are left out either way).
        let raw = (TRIPS * 75) as u64;
        let earlier = tempfile::tempdir().unwrap();
        {
            // What earlier builds created: fjall's default options, LZ4 below L1.
            let db = Database::builder(earlier.path().join(FOLDER)).open().unwrap();
            let trips = db.keyspace("trips", KeyspaceCreateOptions::default).unwrap();
            let bytes = compacted_disk_space(&trips, TRIPS);
            assert!(bytes < raw / 4, "{bytes} bytes for {raw} of values: fjall's default no longer compresses");
        }
        let store = LsmStore::open(earlier.path()).unwrap();
        let (start, end) = typical_trip();
        let item = store.get(&format!("{:010}", TRIPS - 1)).await.unwrap().expect("the compressed item reads");
        assert_eq!((item.start, item.end), (Some(start), Some(end)));

        let new = tempfile::tempdir().unwrap();
        let store = LsmStore::open(new.path()).unwrap();
        let bytes = compacted_disk_space(&store.tables.trips, TRIPS);
        assert!(bytes > raw, "{bytes} bytes for {raw} of values: the new table compressed them");
    }

    fn arb_datetime() -> impl Strategy<Value = String> {
        prop_oneof![
            (timestamp::MIN..=timestamp::MAX).prop_map(timestamp::format),
            "[0-9]{4}-[01][0-9]-[0-3][0-9][T ][0-2][0-9]:[0-5][0-9]:[0-6][0-9](\\.[0-9]{0,9})?Z?",
        ]
    }

    fn typical_trip() -> (StartGroup, EndGroup) {
        let start = StartGroup::of([
            ("pickup_location_id", "93"),
            ("dropoff_location_id", "132"),
            ("vendor_id", "2"),
            ("pickup_datetime", "2024-05-25T13:19:00.000000Z"),
            ("estimated_dropoff_datetime", "2024-05-25T13:40:00.000000Z"),
            ("estimated_fare_amount", "31.5"),
        ]);
        let end = EndGroup::of([
            ("dropoff_datetime", "2024-05-25T13:43:12.000000Z"),
            ("rate_code", "1"),
            ("passenger_count", "1"),
            ("trip_distance", "7.85"),
            ("fare_amount", "33.8"),
            ("tip_amount", "5.07"),
            ("payment_type", "1"),
            ("trip_type", "1"),
        ]);
        (start, end)
    }

    #[test]
    fn a_typical_trip_is_stored_in_75_bytes_and_reads_back() {
        let (start, end) = typical_trip();
        let mut value = Vec::new();
        encode_groups(Some(&start), Some(&end), &mut value);
        // One byte more for each field added since (absent here), and one a group for
        // its undeclared fields (none here).
        assert_eq!(value.len(), 77 + FIELDS.len() - 14, "layout 1 took 185, layout 2 73, layout 3 75");
        let cells = decode("t", &value).unwrap();
        let times = cells.0.iter().filter(|c| matches!(c, Cell::Time(_))).count();
        assert_eq!(times, 3, "the three datetimes are kept as microseconds");
        assert_eq!(item(&cells), TripItem { trip_id: "t".into(), start: Some(start), end: Some(end) });
    }

    #[test]
    fn a_value_of_layout_2_and_a_group_written_shorter_still_read() {
        let (start, end) = typical_trip();
        let v2 = legacy(LAYOUT_2, Some(&start), Some(&end));
        assert_eq!(v2.len(), 73, "layout 2 took 73 bytes");
        let both = TripItem { trip_id: "t".into(), start: Some(start), end: Some(end.clone()) };
        assert_eq!(item(&decode("t", &v2).expect("layout 2 reads")), both);

        // An end group stored before its last field was added: one cell fewer.
        let end = end.with(END_FIELDS[END_LEN - 1].name, None);
        let mut value = Vec::new();
        encode_groups(None, Some(&end), &mut value);
        assert_eq!(value.pop(), Some(NULL), "no undeclared field");
        assert_eq!(value.pop(), Some(NULL), "the last field is absent");
        value[2] -= 1;
        value.push(NULL);
        assert_eq!(item(&decode("t", &value).expect("a shorter group reads")).end, Some(end.clone()));

        // A longer group is a newer build's: refused, not misread.
        value[2] += 2;
        value.extend([NULL, NULL]);
        assert!(decode("t", &value).is_none());
    }

    #[test]
    fn a_value_an_earlier_build_wrote_in_layout_1_still_reads() {
        let (_, end) = typical_trip();
        let v1 = legacy(LAYOUT_1, None, Some(&end));
        assert_eq!(item(&decode("t", &v1).unwrap()), TripItem { trip_id: "t".into(), start: None, end: Some(end) });
        let mut with_start = vec![LAYOUT_1, HAS_START];
        for id in [93i64, 132, 2] {
            with_start.push(INT);
            with_start.extend_from_slice(&id.to_le_bytes());
        }
        with_start.extend_from_slice(&[NULL, NULL, NULL]);
        let (cells, _) = decode("t", &with_start).expect("layout 1 reads its 8-byte integers");
        assert_eq!(&cells[1..4], &[Cell::Int(93), Cell::Int(132), Cell::Int(2)]);
        with_start[0] = 9;
        assert!(decode("t", &with_start).is_none(), "an unknown layout is refused");
    }

    proptest! {
        #[test]
        fn a_datetime_kept_as_microseconds_formats_back_to_its_text(text in arb_datetime()) {
            if let Some(micros) = stored_micros(&text) {
                prop_assert_eq!(timestamp::format(micros), text);
            }
        }

        #[test]
        fn every_instant_in_the_stored_form_is_kept_as_microseconds(micros in timestamp::MIN..=timestamp::MAX) {
            prop_assert_eq!(stored_micros(&timestamp::format(micros)), Some(micros));
        }

        #[test]
        fn an_item_with_stored_form_datetimes_decodes_to_itself(id in ".{1,20}", pickup in arb_datetime(),
                                                               dropoff in arb_datetime(), ids in any::<[i64; 3]>()) {
            let (start, end) = typical_trip();
            let [a, b, c] = ids.map(|i| i.to_string());
            let start = start.with("pickup_datetime", Some(&pickup)).with("pickup_location_id", Some(&a))
                .with("dropoff_location_id", Some(&b)).with("vendor_id", Some(&c));
            let end = end.with("dropoff_datetime", Some(&dropoff));
            let mut value = Vec::new();
            encode_groups(Some(&start), Some(&end), &mut value);
            let cells = decode(&id, &value).expect("what encode wrote decodes");
            prop_assert_eq!(item(&cells), TripItem { trip_id: id.as_str().into(), start: Some(start), end: Some(end) });
        }

        #[test]
        fn a_stored_item_decodes_to_itself(id in ".{1,20}", start in proptest::option::of(arb_start()),
                                            end in proptest::option::of(arb_end())) {
            let mut value = Vec::new();
            encode_groups(start.as_ref(), end.as_ref(), &mut value);
            let cells = decode(&id, &value).expect("what encode wrote decodes");
            prop_assert_eq!(item(&cells), TripItem { trip_id: id.as_str().into(), start, end });
        }

        #[test]
        fn stored_cells_encode_back_to_the_bytes_their_item_encodes_to(id in ".{1,20}",
                                                                       start in proptest::option::of(arb_start()),
                                                                       end in proptest::option::of(arb_end())) {
            // A merge writes the group it keeps from the stored cells, as they are.
            let mut value = Vec::new();
            encode_groups(start.as_ref(), end.as_ref(), &mut value);
            let mut again = Vec::new();
            let (cells, extras) = decode(&id, &value).expect("what encode wrote decodes");
            encode(&cells, extras, &mut again);
            prop_assert_eq!(&again, &value);
            // Layout 1 kept datetimes as text: from its cells they become microseconds,
            // as they did when the item was read whole.
            let v1 = legacy(LAYOUT_1, start.as_ref(), end.as_ref());
            let stored = decode(&id, &v1).expect("layout 1 decodes");
            let item = item(&stored);
            encode(&stored.0, stored.1, &mut again);
            encode_groups(item.start.as_ref(), item.end.as_ref(), &mut value);
            prop_assert_eq!(again, value);
        }

        #[test]
        fn a_value_of_layout_3_reads_with_no_undeclared_field(id in ".{1,20}",
                                                               start in proptest::option::of(arb_start()),
                                                               end in proptest::option::of(arb_end())) {
            let v3 = layout_3(start.as_ref(), end.as_ref());
            let read = item(&decode(&id, &v3).expect("layout 3 decodes"));
            prop_assert_eq!(read.start, start.map(|s| s.with_extras(Extras::NONE)));
            prop_assert_eq!(read.end, end.map(|e| e.with_extras(Extras::NONE)));
        }

        #[test]
        fn newer_compares_a_version_kept_as_microseconds_as_its_text(a in arb_datetime(), b in arb_datetime()) {
            let kept = stored_micros(&b).map_or(Cell::Text(&b), Cell::Time);
            prop_assert_eq!(newer(Some(a.as_str()), kept), a > b);
            prop_assert!(newer(Some(a.as_str()), Cell::Null) && !newer(None, kept));
        }

        #[test]
        fn a_damaged_value_is_refused_not_misread(id in ".{1,20}", start in arb_start(), end in arb_end(),
                                                   cut in any::<prop::sample::Index>()) {
            let mut value = Vec::new();
            encode_groups(Some(&start), Some(&end), &mut value);
            let cut = cut.index(value.len());
            prop_assert!(decode(&id, &value[..cut]).is_none(), "a value cut at {} of {}", cut, value.len());
        }
    }
}
