//! The DynamoDB trip table: `dynamodb://<table>`.
//!
//! Each trip of a batch is one conditional UpdateItem, sent with bounded concurrency.
//! The condition is docs/design.md §3's: a group is written only when it is absent or older.
//! The same write also sets `trip_completed`, `trip_date` and `last_updated`, which
//! depend on the other group; the write states what it assumes of that group in its
//! condition (absent for a lone start, present and not newer for a lone end: the order
//! in which trips happen). When the assumption is wrong, or a group is stale, the
//! condition fails and `ReturnValuesOnConditionCheckFailure=ALL_OLD` returns the stored
//! item, which tells a stale event from a wrong assumption without an extra read; the
//! write is then sent again with what is now known. So a trip costs one write when its
//! events share a batch, and at most two when they arrive in order in separate batches.
//! DynamoDB-compatible stores that do not implement that parameter (dynalite) answer a
//! failed condition without the item; until a failed condition has once come back with
//! an item, such an answer is followed by one consistent GetItem (after which an answer
//! without an item means "absent").
//!
//! Throttling, 5xx responses and dropped connections are retried by the SDK with
//! backoff and jitter. The export scans the table in parallel segments, or queries the
//! sparse date index when only some dates are wanted.
//!
//! The dates a merge changes (docs/design.md §5) are marked in a second table,
//! `<table>-changed-dates`: one item per date, `trip_date` → `marked_at`. A merge marks
//! them before it writes the trips (one BatchWriteItem for the dates of its ends), so no
//! crash leaves a changed trip without its mark. The dates a write can only learn from
//! the stored item (the day an end moves away from, or the day of the end a late start
//! completes) are pinned by the write's condition: a write that would change another
//! day than the ones marked fails, the failed condition names that day, and the day is
//! marked before the write is sent again. A mark younger than [`DEFAULT_MARK_GRACE`]
//! may cover writes still in flight, so a KPI run recomputes its date but leaves the
//! mark for the next run.
//!
//! The ledger of undeclared fields lives in the same second table, one item per stream
//! shard, keyed `fields#stream/shard` (never a date, so the marks' readers pass it by):
//! its entry as JSON text and a version that each write raises, on condition that no
//! other write raised it first; and one item per field, `fields@group/name`, whose
//! conditional put tells its first sighting in the whole ledger.
//!
//! The date index is write-sharded, so that a day's writes spread over N partitions
//! (DynamoDB takes about 1,000 writes a second per partition key) and a day is read by N
//! Queries in parallel: an item with a `trip_date` carries `trip_date_shard` =
//! `DATE#K`, K = [`date_shard`]`(trip_id, N)`, and the index `trip_date_shard-N-index`
//! (its name says N, so every reader and writer learns it from DescribeTable) is keyed
//! by it. A table made before the shards has `trip_date-index` on `trip_date`, and is
//! read as one shard.

mod live;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use arrow::array::RecordBatch;
use arrow::compute::{concat_batches, sort_to_indices, take_record_batch};
use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use aws_sdk_dynamodb::operation::delete_item::DeleteItemError;
use aws_sdk_dynamodb::operation::put_item::PutItemError;
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, CreateGlobalSecondaryIndexAction, GlobalSecondaryIndex,
    GlobalSecondaryIndexUpdate, IndexStatus, KeySchemaElement, KeyType, Projection, ProjectionType, PutRequest,
    ReturnConsumedCapacity, ReturnValue, ReturnValuesOnConditionCheckFailure, ScalarAttributeType, TableStatus,
    WriteRequest,
};
use aws_smithy_types::error::metadata::ProvideErrorMetadata;
use chrono::NaiveDate;
use futures::{StreamExt, TryStreamExt};
use tracing::debug;

use super::capacity;
use super::ledger::{self, SeenField, ShardLedger, Sighting};
use super::{
    ChangedDate, CompactString, EXPORT_BATCH_ROWS, EndGroup, ExportBuilder, MergeOutcome, Projection as Columns,
    StartGroup, ToCompactString, TripItem, TripStore, TripUpdate, date_of, is_newer, marked_date,
};
use crate::backend::aws::{Aws, backoff, create_key_table, describe, wait_for};
use crate::error::{Context, Stage};
use crate::model::event::{AttributeType, END_FIELDS, EventKind, FieldSpec, FieldType, START_FIELDS};
use crate::model::extra::{EXTRAS_ATTRIBUTES, Extras};
use crate::{Error, Result};

/// The unsharded date index of tables made before write-sharding: on `trip_date` (only
/// trips with an end carry the attribute). Still read where it is the table's index.
pub const DATE_INDEX: &str = "trip_date-index";
/// The attribute the sharded date index is keyed by: `YYYY-MM-DD#K`.
pub const DATE_SHARD_ATTRIBUTE: &str = "trip_date_shard";
/// Shards of a new table's date index, unless set ([`DynamoStore::with_date_shards`]).
pub const DEFAULT_DATE_SHARDS: u32 = 1;
/// The most shards a date index may have: a day is read by that many Queries.
pub const MAX_DATE_SHARDS: u32 = 256;

/// The date index of a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DateIndex {
    /// [`DATE_INDEX`], on `trip_date`.
    Plain,
    /// `trip_date_shard-N-index`, on [`DATE_SHARD_ATTRIBUTE`], with N shards.
    Sharded(u32),
}

impl DateIndex {
    /// The index's name.
    pub fn name(&self) -> String {
        match self {
            DateIndex::Plain => DATE_INDEX.to_owned(),
            DateIndex::Sharded(n) => format!("{DATE_SHARD_ATTRIBUTE}-{n}-index"),
        }
    }

    /// The index named `name`, if it is a date index.
    pub fn from_name(name: &str) -> Option<Self> {
        if name == DATE_INDEX {
            return Some(DateIndex::Plain);
        }
        let n = name.strip_prefix(DATE_SHARD_ATTRIBUTE)?.strip_prefix('-')?.strip_suffix("-index")?;
        n.parse().ok().filter(|n| (1..=MAX_DATE_SHARDS).contains(n)).map(DateIndex::Sharded)
    }

    /// The attribute the index is keyed by.
    fn attribute(&self) -> &'static str {
        match self {
            DateIndex::Plain => "trip_date",
            DateIndex::Sharded(_) => DATE_SHARD_ATTRIBUTE,
        }
    }

    /// The index keys of `date`: one per shard.
    fn keys(&self, date: &str) -> Vec<String> {
        match self {
            DateIndex::Plain => vec![date.to_owned()],
            DateIndex::Sharded(n) => (0..*n).map(|k| shard_key(date, k)).collect(),
        }
    }
}

/// The sharded index's key of shard `k` of `date`: `DATE#K`.
fn shard_key(date: &str, k: u32) -> String {
    format!("{date}#{k}")
}

/// The shard of the date index that `trip_id` is written to, among `shards`: the first
/// eight bytes of the MD5 of the trip id, big-endian, modulo `shards`. It is part of the
/// stored format: a table's items are written and read with it.
pub fn date_shard(trip_id: &str, shards: u32) -> u32 {
    use md5::{Digest, Md5};
    let digest = Md5::digest(trip_id.as_bytes());
    let head = u64::from_be_bytes(digest[..8].try_into().expect("an MD5 digest has 16 bytes"));
    (head % u64::from(shards.max(1))) as u32
}
/// The table of changed dates beside trip table `table`.
pub fn changed_dates_table(table: &str) -> String {
    format!("{table}-changed-dates")
}

/// How long a mark may cover writes still in flight: the longest a merge call can take
/// from its marks to its last write. Lambda stops a function after 15 minutes at most;
/// a merge's retries end well before.
pub const DEFAULT_MARK_GRACE: Duration = Duration::from_secs(15 * 60);

/// The key prefix of the ledger's entries in the table of changed dates.
const LEDGER_KEY_PREFIX: &str = "fields#";
/// The key prefix of the items that say a field was seen (`fields@group/name`), put
/// once, on condition that none is there: the put that succeeds is the first sighting.
const FIRST_SEEN_KEY_PREFIX: &str = "fields@";

/// Marks in one BatchWriteItem, DynamoDB's most.
const MARKS_PER_REQUEST: usize = 25;
/// BatchWriteItem calls for one chunk of marks, while DynamoDB leaves some unprocessed.
const MAX_MARK_ATTEMPTS: u32 = 8;

/// Default number of UpdateItem calls in flight.
pub const DEFAULT_WRITE_CONCURRENCY: usize = 16;
/// Default number of parallel Scan segments of an export.
pub const DEFAULT_SCAN_SEGMENTS: u32 = 4;
/// Conditional writes of one trip before a merge gives up (each retry follows a
/// concurrent change of the same item).
const MAX_CONDITION_RETRIES: u32 = 8;

/// The DynamoDB trip table.
pub struct DynamoStore {
    aws: Aws,
    client: aws_sdk_dynamodb::Client,
    table: String,
    /// [`changed_dates_table`] of `table`.
    marks_table: String,
    /// [`DEFAULT_MARK_GRACE`] unless set.
    mark_grace: Duration,
    write_concurrency: usize,
    scan_segments: u32,
    writes: Arc<AtomicU64>,
    /// The capacity units its requests consumed.
    capacity: Arc<capacity::Meter>,
    /// Shards of the date index of a table this store creates.
    date_shards: u32,
    /// The table's date index, from DescribeTable, learnt once.
    index: tokio::sync::OnceCell<DateIndex>,
    /// Set once a failed condition came back with the stored item: the table implements
    /// `ReturnValuesOnConditionCheckFailure`, so a failure without one means absent.
    returns_old_items: AtomicBool,
    /// Writes of the live KPIs' items ([`live`]).
    live_writes: Arc<AtomicU64>,
    /// Merges with the live fold so far, and the one that fails between its live items
    /// and its trips ([`DynamoStore::with_failure_before_trips`]).
    live_merges: AtomicU64,
    fail_before_trips: Option<u64>,
}

/// What a write assumes of the group it does not write.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Other {
    /// The group is not stored.
    Absent,
    /// The group is stored with a version not newer than the written one.
    NotNewer,
    /// The group is stored with exactly this version.
    Is(CompactString),
}

/// One conditional write: which groups it writes, its assumption about the other, and,
/// when it writes the end, about the stored `trip_date`: absent or the new end's
/// (`None`), or exactly this other day, already marked (`Some`).
#[derive(Debug, Clone)]
struct Plan {
    start: bool,
    end: bool,
    other: Other,
    stored_date: Option<CompactString>,
}

impl Plan {
    /// The first try: the common case, in which trips start before they end.
    fn first(u: &TripUpdate) -> Plan {
        let (start, end, other) = match (&u.start, &u.end) {
            (Some(_), None) => (true, false, Other::Absent),
            (None, Some(_)) => (false, true, Other::NotNewer),
            _ => (true, true, Other::Absent),
        };
        Plan { start, end, other, stored_date: None }
    }

    /// The next try after the condition failed against the `stored` versions; `None`
    /// when nothing of the update is newer than what is stored.
    fn after_failure(u: &TripUpdate, stored: &StoredVersions) -> Option<Plan> {
        let start = is_newer(u.start.as_ref().map(StartGroup::version), stored.pickup.as_deref());
        let end = is_newer(u.end.as_ref().map(EndGroup::version), stored.dropoff.as_deref());
        let other_stored = if start { &stored.dropoff } else { &stored.pickup };
        let other = other_stored.clone().map_or(Other::Absent, Other::Is);
        let new_date = u.end.as_ref().map(|e| date_of(e.version()));
        let stored_date = stored.dropoff.as_deref().map(date_of).filter(|&d| end && Some(d) != new_date);
        (start || end).then(|| Plan { start, end, other, stored_date: stored_date.map(CompactString::from) })
    }

    /// The day this write changes besides its own end's, which must be marked before it
    /// is sent: the day its end moves the trip from, or the day of the stored end that
    /// its start completes.
    fn other_date(&self) -> Option<&str> {
        match (&self.stored_date, &self.other) {
            (Some(d), _) => Some(d),
            (None, Other::Is(dropoff)) if self.start && !self.end => Some(date_of(dropoff)),
            _ => None,
        }
    }
}

/// The versions of a stored item, from a failed condition's ALL_OLD.
#[derive(Debug, Default)]
struct StoredVersions {
    pickup: Option<CompactString>,
    dropoff: Option<CompactString>,
    /// The [`WRITE_TOKEN_ATTRIBUTE`] of the write that stored it.
    token: Option<CompactString>,
}

/// The attribute each write sets to a token of its own: when a write's answer is lost
/// and the SDK's retry finds its condition failed, the stored token tells whether it
/// was that very write that took effect (then it counts as applied) or another.
const WRITE_TOKEN_ATTRIBUTE: &str = "write_token";

/// The size of the attributes an update writes, with its key: the item's size when it
/// holds no other group.
fn written_size(trip_id: &str, e: &Expression) -> usize {
    let values = e.values.iter().filter_map(|(placeholder, v)| {
        let name = e.names.get(&format!("#{}", placeholder.trim_start_matches(':')))?;
        Some(name.len() + capacity::value_size(v))
    });
    "trip_id".len() + trip_id.len() + values.sum::<usize>()
}

/// A token no other write sends: 64 random bits.
fn write_token() -> String {
    use rand::Rng;
    format!("{:016x}", rand::rng().random::<u64>())
}

/// The UpdateItem expression of a plan.
struct Expression {
    update: String,
    condition: String,
    names: HashMap<String, String>,
    values: HashMap<String, AttributeValue>,
}

fn expression(u: &TripUpdate, plan: &Plan, index: DateIndex, token: &str) -> Expression {
    let mut set = Vec::new();
    let mut remove = Vec::new();
    let mut names = HashMap::new();
    let mut values = HashMap::new();
    let mut put = |spec: &FieldSpec, value: &Option<CompactString>, set: &mut Vec<String>, remove: &mut Vec<String>| {
        names.insert(format!("#{}", spec.name), spec.name.to_owned());
        match value {
            Some(v) => {
                set.push(format!("#{0} = :{0}", spec.name));
                let v = match spec.dynamodb {
                    AttributeType::Number => AttributeValue::N(v.to_string()),
                    AttributeType::String => AttributeValue::S(v.to_string()),
                };
                values.insert(format!(":{}", spec.name), v);
            }
            None => remove.push(format!("#{}", spec.name)),
        }
    };
    let start = u.start.as_ref().filter(|_| plan.start);
    let end = u.end.as_ref().filter(|_| plan.end);
    if let Some(s) = start {
        for (spec, v) in START_FIELDS.iter().zip(s.values()) {
            put(spec, v, &mut set, &mut remove);
        }
    }
    if let Some(e) = end {
        for (spec, v) in END_FIELDS.iter().zip(e.values()) {
            put(spec, v, &mut set, &mut remove);
        }
    }
    // A group's undeclared fields go with it: the winning group's replace the stored ones.
    let extras = [start.map(StartGroup::extras), end.map(EndGroup::extras)];
    for (attribute, extras) in EXTRAS_ATTRIBUTES.iter().zip(extras) {
        let Some(extras) = extras else { continue };
        names.insert(format!("#{attribute}"), (*attribute).to_owned());
        match extras.as_json() {
            Some(json) => {
                set.push(format!("#{attribute} = :{attribute}"));
                values.insert(format!(":{attribute}"), AttributeValue::S(json.to_owned()));
            }
            None => remove.push(format!("#{attribute}")),
        }
    }

    // The groups' versions, and the condition on each.
    let (pickup, dropoff) = (StartGroup::KIND.version_field(), EndGroup::KIND.version_field());
    let p = start.map(StartGroup::version);
    let d = end.map(EndGroup::version);
    let newer = |field: &str| format!("(attribute_not_exists(#{field}) OR #{field} < :{field})");
    let mut condition = Vec::new();
    if p.is_some() {
        condition.push(newer(pickup));
    }
    if d.is_some() {
        condition.push(newer(dropoff));
    }
    let (completed, last_updated) = match (p, d) {
        (Some(p), Some(d)) => (true, p.max(d)),
        (Some(mine), None) | (None, Some(mine)) => {
            let (other_field, my_field) = if p.is_some() { (dropoff, pickup) } else { (pickup, dropoff) };
            names.insert(format!("#{other_field}"), other_field.to_owned());
            match &plan.other {
                Other::Absent => {
                    condition.push(format!("attribute_not_exists(#{other_field})"));
                    (false, mine)
                }
                Other::NotNewer => {
                    condition.push(format!("#{other_field} <= :{my_field}"));
                    (true, mine)
                }
                Other::Is(v) => {
                    condition.push(format!("#{other_field} = :stored_{other_field}"));
                    values.insert(format!(":stored_{other_field}"), AttributeValue::S(v.to_string()));
                    (true, mine.max(v.as_str()))
                }
            }
        }
        (None, None) => unreachable!("a plan writes at least one group"),
    };
    if let Some(d) = d {
        set.push("#trip_date = :trip_date".into());
        names.insert("#trip_date".into(), "trip_date".into());
        values.insert(":trip_date".into(), AttributeValue::S(date_of(d).to_owned()));
        // The day the trip leaves is marked only once known: a write that would move it
        // from an unmarked day fails, and the failure names the day.
        match &plan.stored_date {
            None => condition.push("(attribute_not_exists(#trip_date) OR #trip_date = :trip_date)".into()),
            Some(old) => {
                condition.push("#trip_date = :stored_trip_date".into());
                values.insert(":stored_trip_date".into(), AttributeValue::S(old.to_string()));
            }
        }
        if let DateIndex::Sharded(n) = index {
            set.push(format!("#{DATE_SHARD_ATTRIBUTE} = :{DATE_SHARD_ATTRIBUTE}"));
            names.insert(format!("#{DATE_SHARD_ATTRIBUTE}"), DATE_SHARD_ATTRIBUTE.into());
            let key = shard_key(date_of(d), date_shard(&u.trip_id, n));
            values.insert(format!(":{DATE_SHARD_ATTRIBUTE}"), AttributeValue::S(key));
        }
    }
    set.push("#trip_completed = :trip_completed".into());
    set.push("#last_updated = :last_updated".into());
    names.insert("#trip_completed".into(), "trip_completed".into());
    names.insert("#last_updated".into(), "last_updated".into());
    values.insert(":trip_completed".into(), AttributeValue::Bool(completed));
    values.insert(":last_updated".into(), AttributeValue::S(last_updated.to_owned()));
    set.push(format!("#{WRITE_TOKEN_ATTRIBUTE} = :{WRITE_TOKEN_ATTRIBUTE}"));
    names.insert(format!("#{WRITE_TOKEN_ATTRIBUTE}"), WRITE_TOKEN_ATTRIBUTE.into());
    values.insert(format!(":{WRITE_TOKEN_ATTRIBUTE}"), AttributeValue::S(token.to_owned()));

    let mut update = format!("SET {}", set.join(", "));
    if !remove.is_empty() {
        update.push_str(&format!(" REMOVE {}", remove.join(", ")));
    }
    Expression { update, condition: condition.join(" AND "), names, values }
}

fn text(item: &HashMap<String, AttributeValue>, name: &str) -> Option<CompactString> {
    match item.get(name)? {
        AttributeValue::S(s) | AttributeValue::N(s) => Some(s.into()),
        _ => None,
    }
}

fn stored_versions(item: Option<&HashMap<String, AttributeValue>>) -> StoredVersions {
    item.map(|i| StoredVersions {
        pickup: text(i, StartGroup::KIND.version_field()),
        dropoff: text(i, EndGroup::KIND.version_field()),
        token: text(i, WRITE_TOKEN_ATTRIBUTE),
    })
    .unwrap_or_default()
}

/// A stored item as a [`TripItem`].
fn trip_item(item: &HashMap<String, AttributeValue>) -> Result<TripItem> {
    let trip_id = text(item, "trip_id").ok_or_else(|| Error::store("an item has no trip_id"))?;
    // A group is stored when its version is; its required fields must be there too.
    let group = |kind: EventKind| -> Result<Option<Vec<Option<CompactString>>>> {
        if text(item, kind.version_field()).is_none() {
            return Ok(None);
        }
        let values = kind.fields().iter().map(|f| match (text(item, f.name), f.ty) {
            (None, _) if f.required => Err(Error::store(format!("trip {trip_id}: {} is missing", f.name))),
            (Some(v), FieldType::Integer) => match v.parse::<i64>() {
                Ok(i) => Ok(Some(i.to_compact_string())),
                Err(_) => Err(Error::store(format!("trip {trip_id}: {} is not an integer", f.name))),
            },
            (value, _) => Ok(value),
        });
        values.collect::<Result<_>>().map(Some)
    };
    let extras = |g: usize| {
        let attribute = EXTRAS_ATTRIBUTES[g];
        Extras::from_stored(text(item, attribute).as_deref())
            .map_err(|e| Error::store(format!("trip {trip_id}: {attribute} is {e}")))
    };
    let start = group(EventKind::Start)?.map(|mut v| StartGroup::from_fn(|i| v[i].take()));
    let end = group(EventKind::End)?.map(|mut v| EndGroup::from_fn(|i| v[i].take()));
    let start = start.map(|g| extras(0).map(|x| g.with_extras(x))).transpose()?;
    let end = end.map(|g| extras(1).map(|x| g.with_extras(x))).transpose()?;
    Ok(TripItem { trip_id, start, end })
}

/// Rows of `schema` sorted by `trip_id`.
fn sorted(schema: &SchemaRef, batches: &[RecordBatch]) -> Result<RecordBatch> {
    let all = concat_batches(schema, batches).stage(Stage::Store, "export")?;
    let order = sort_to_indices(all.column(0), None, None).stage(Stage::Store, "export")?;
    take_record_batch(&all, &order).stage(Stage::Store, "export")
}

/// Cuts rows into batches of [`EXPORT_BATCH_ROWS`], the shape the embedded store
/// exports, so both backends give the same files.
fn chunked(schema: &SchemaRef, batches: &[RecordBatch]) -> Result<Vec<RecordBatch>> {
    let all = concat_batches(schema, batches).stage(Stage::Store, "export")?;
    if all.num_rows() == 0 {
        return Ok(vec![all]);
    }
    Ok((0..all.num_rows())
        .step_by(EXPORT_BATCH_ROWS)
        .map(|at| all.slice(at, EXPORT_BATCH_ROWS.min(all.num_rows() - at)))
        .collect())
}

fn not_found(table: &str) -> Error {
    Error::config(format!(
        "DynamoDB table {table} does not exist; create it with 'tripflow setup --store dynamodb://{table}'"
    ))
}

impl DynamoStore {
    /// The table `table`, reached with `aws`'s configuration.
    pub fn new(aws: &Aws, table: &str) -> Self {
        DynamoStore {
            aws: aws.clone(),
            client: aws.dynamodb(),
            table: table.to_owned(),
            marks_table: changed_dates_table(table),
            mark_grace: DEFAULT_MARK_GRACE,
            write_concurrency: DEFAULT_WRITE_CONCURRENCY,
            scan_segments: DEFAULT_SCAN_SEGMENTS,
            writes: Arc::default(),
            capacity: Arc::default(),
            date_shards: DEFAULT_DATE_SHARDS,
            index: tokio::sync::OnceCell::new(),
            returns_old_items: AtomicBool::new(false),
            live_writes: Arc::new(AtomicU64::new(0)),
            live_merges: AtomicU64::new(0),
            fail_before_trips: None,
        }
    }

    /// Sets how many writes are in flight at once.
    pub fn with_write_concurrency(mut self, n: usize) -> Self {
        self.write_concurrency = n.max(1);
        self
    }

    /// Sets the shards of the date index, for a table [`Self::create_if_missing`] creates
    /// (1 to [`MAX_DATE_SHARDS`]). An existing table keeps the index it has.
    pub fn with_date_shards(mut self, n: u32) -> Self {
        self.date_shards = n.clamp(1, MAX_DATE_SHARDS);
        self
    }

    /// The table's date index, described once.
    ///
    /// # Errors
    /// When the table cannot be described or has no date index.
    pub async fn date_index(&self) -> Result<DateIndex> {
        let index = self
            .index
            .get_or_try_init(|| async {
                match statuses(&self.client, &self.table).await?.index {
                    Some((index, _)) => Ok(index),
                    None => Err(self.no_index()),
                }
            })
            .await?;
        Ok(*index)
    }

    fn no_index(&self) -> Error {
        Error::config(format!(
            "DynamoDB table {} has no date index ({} or {}); add it with 'tripflow setup --store dynamodb://{}'",
            self.table,
            DateIndex::Sharded(self.date_shards).name(),
            DATE_INDEX,
            self.table
        ))
    }

    /// Sets how old a mark must be before a KPI run may clear it ([`DEFAULT_MARK_GRACE`]).
    pub fn with_mark_grace(mut self, grace: Duration) -> Self {
        self.mark_grace = grace;
        self
    }

    /// This store, with the `merges`th merge with the live fold failing after its live
    /// items are written and before any trip is: a crash between the two, for the tests
    /// of its replay.
    #[must_use]
    pub fn with_failure_before_trips(mut self, merges: u64) -> Self {
        self.fail_before_trips = Some(merges);
        self
    }

    /// Sets the number of parallel Scan segments of an export.
    pub fn with_scan_segments(mut self, n: u32) -> Self {
        self.scan_segments = n.max(1);
        self
    }

    /// The table's name.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// Creates the table (key `trip_id`, on-demand) with its sparse date index, sharded
    /// [`Self::with_date_shards`] ways, and its table of changed dates, unless they
    /// exist, and waits until all are active. A table without a date index gets the
    /// unsharded [`DATE_INDEX`], which covers the items it already holds. Returns whether
    /// anything was created.
    ///
    /// # Errors
    /// When DynamoDB refuses, or the table does not become active within two minutes.
    pub async fn create_if_missing(&self) -> Result<bool> {
        let attr = |name: &str| {
            AttributeDefinition::builder().attribute_name(name).attribute_type(ScalarAttributeType::S).build()
        };
        let key = |name: &str, ty: KeyType| KeySchemaElement::builder().attribute_name(name).key_type(ty).build();
        let build = |e: aws_smithy_types::error::operation::BuildError| Error::store(e.to_string());
        let index_keys = |index: DateIndex| -> Result<Vec<KeySchemaElement>> {
            Ok(vec![
                key(index.attribute(), KeyType::Hash).map_err(build)?,
                key("trip_id", KeyType::Range).map_err(build)?,
            ])
        };
        let projection = Projection::builder().projection_type(ProjectionType::All).build();
        let new_index = DateIndex::Sharded(self.date_shards);
        let created_table = match self
            .client
            .create_table()
            .table_name(&self.table)
            .billing_mode(BillingMode::PayPerRequest)
            .attribute_definitions(attr("trip_id").map_err(build)?)
            .attribute_definitions(attr(new_index.attribute()).map_err(build)?)
            .key_schema(key("trip_id", KeyType::Hash).map_err(build)?)
            .global_secondary_indexes(
                GlobalSecondaryIndex::builder()
                    .index_name(new_index.name())
                    .set_key_schema(Some(index_keys(new_index)?))
                    .projection(projection.clone())
                    .build()
                    .map_err(build)?,
            )
            .send()
            .await
        {
            Ok(_) => true,
            Err(e) if e.code() == Some("ResourceInUseException") => false,
            Err(e) => {
                return Err(Error::store(format!("cannot create DynamoDB table {}: {}", self.table, describe(&e))));
            }
        };
        let created_marks = create_key_table(&self.aws, &self.marks_table, "trip_date", None).await?;
        if wait_until(&self.client, &self.table, &Statuses::table_active, TABLE_WAIT).await?.index.is_some() {
            wait_until(&self.client, &self.table, &Statuses::index_active, INDEX_WAIT).await?;
            return Ok(created_table || created_marks);
        }
        // A table made without a date index: add the one its items already fit.
        let index = DateIndex::Plain;
        self.client
            .update_table()
            .table_name(&self.table)
            .attribute_definitions(attr(index.attribute()).map_err(build)?)
            .attribute_definitions(attr("trip_id").map_err(build)?)
            .global_secondary_index_updates(
                GlobalSecondaryIndexUpdate::builder()
                    .create(
                        CreateGlobalSecondaryIndexAction::builder()
                            .index_name(index.name())
                            .set_key_schema(Some(index_keys(index)?))
                            .projection(projection)
                            .build()
                            .map_err(build)?,
                    )
                    .build(),
            )
            .send()
            .await
            .map_err(|e| Error::store(format!("cannot add {DATE_INDEX} to {}: {}", self.table, describe(&e))))?;
        wait_until(&self.client, &self.table, &Statuses::index_active, INDEX_WAIT).await?;
        Ok(true)
    }

    /// Checks that the table exists with its date index, with a message saying how to
    /// create them if not.
    ///
    /// # Errors
    /// When they do not exist or cannot be described.
    pub async fn check_exists(&self) -> Result<()> {
        self.date_index().await?;
        self.client.describe_table().table_name(&self.marks_table).send().await.map_err(|e| self.marks_error(e))?;
        Ok(())
    }

    /// The error of a call to the table of changed dates.
    fn marks_error<E>(
        &self,
        e: aws_sdk_dynamodb::error::SdkError<E, aws_smithy_runtime_api::client::orchestrator::HttpResponse>,
    ) -> Error
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        if e.code() == Some("ResourceNotFoundException") {
            return Error::config(format!(
                "DynamoDB table {} (the dates whose KPIs changed) does not exist; create it with 'tripflow setup \
                 --store dynamodb://{}'",
                self.marks_table, self.table
            ));
        }
        Error::store(format!("{}: {}", self.marks_table, describe(&e)))
    }

    /// Adds `seen` to the ledger entry of `position`, read and written again until no
    /// other write came between. Returns the fields it saw first.
    async fn record_position(&self, position: &str, seen: &[&Sighting], now: &str) -> Result<Vec<String>> {
        let key = format!("{LEDGER_KEY_PREFIX}{position}");
        for _ in 0..MAX_CONDITION_RETRIES {
            let item = self.marks_item(&key).await?.unwrap_or_default();
            let version = text(&item, "version").and_then(|v| v.parse::<u64>().ok());
            let mut entry = match text(&item, "ledger") {
                Some(t) => ShardLedger::parse(&t, &self.marks_table)?,
                None => ShardLedger::default(),
            };
            let Some(new) = entry.add(seen.iter().copied(), now) else { return Ok(Vec::new()) };
            let text = entry.to_text();
            let size = "trip_date".len() + key.len() + "ledger".len() + text.len() + "version".len() + 3;
            let put = self
                .client
                .put_item()
                .table_name(&self.marks_table)
                .item("trip_date", AttributeValue::S(key.clone()))
                .item("ledger", AttributeValue::S(text))
                .item("version", AttributeValue::N((version.unwrap_or(0) + 1).to_string()))
                .return_consumed_capacity(ReturnConsumedCapacity::Total);
            match as_read(put, version).send().await {
                Ok(out) => {
                    self.capacity.write(out.consumed_capacity(), || capacity::write_units(size));
                    return Ok(new);
                }
                Err(e) if matches!(e.as_service_error(), Some(PutItemError::ConditionalCheckFailedException(_))) => {
                    self.capacity.unreported_write(capacity::write_units(size));
                }
                Err(e) => return Err(self.marks_error(e)),
            }
        }
        Err(Error::store(format!(
            "{}: the ledger entry of {position} changed under {MAX_CONDITION_RETRIES} writes in a row; are two \
             consumers reading the same shard?",
            self.marks_table
        )))
    }

    /// Every item of the changed-dates table (the marks, the ledger, the live items): a
    /// small table, read consistently.
    async fn marks_table_items(&self) -> Result<Vec<HashMap<String, AttributeValue>>> {
        let mut pages = self
            .client
            .scan()
            .table_name(&self.marks_table)
            .consistent_read(true)
            .return_consumed_capacity(ReturnConsumedCapacity::Total)
            .into_paginator()
            .send();
        let mut items = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| self.marks_error(e))?;
            self.capacity.read_items(page.consumed_capacity(), page.items(), true);
            items.extend(page.items.unwrap_or_default());
        }
        Ok(items)
    }

    /// True when a mark made `at` is older than the grace: no write it covers is still
    /// in flight.
    fn settled(&self, at: &str) -> bool {
        let before = chrono::Utc::now() - chrono::Duration::from_std(self.mark_grace).unwrap_or(chrono::Duration::MAX);
        chrono::DateTime::parse_from_rfc3339(at).is_ok_and(|at| at < before)
    }

    /// The changed-dates table's item `key` (a ledger entry, a live item), read
    /// consistently.
    async fn marks_item(&self, key: &str) -> Result<Option<HashMap<String, AttributeValue>>> {
        let out = self
            .client
            .get_item()
            .table_name(&self.marks_table)
            .key("trip_date", AttributeValue::S(key.to_owned()))
            .consistent_read(true)
            .return_consumed_capacity(ReturnConsumedCapacity::Total)
            .send()
            .await
            .map_err(|e| self.marks_error(e))?;
        self.capacity.read_items(out.consumed_capacity(), out.item(), true);
        Ok(out.item)
    }

    /// Removes the mark of `m` if it still holds the value read: 1 if removed, else 0.
    async fn clear_mark(&self, m: &ChangedDate) -> Result<usize> {
        let sent = self
            .client
            .delete_item()
            .table_name(&self.marks_table)
            .key("trip_date", AttributeValue::S(m.date.format("%Y-%m-%d").to_string()))
            .condition_expression("marked_at = :read")
            .expression_attribute_values(":read", AttributeValue::S(m.mark.clone()))
            .return_consumed_capacity(ReturnConsumedCapacity::Total)
            .send()
            .await;
        match sent {
            Ok(out) => {
                self.capacity.write(out.consumed_capacity(), || 1.0);
                Ok(1)
            }
            // Marked again since it was read: it stays for the next run.
            Err(e) if matches!(e.as_service_error(), Some(DeleteItemError::ConditionalCheckFailedException(_))) => {
                Ok(0)
            }
            Err(e) => Err(self.marks_error(e)),
        }
    }

    /// Marks `dates` changed, as of now, in as few BatchWriteItem calls as DynamoDB
    /// allows; items it leaves unprocessed are sent again, after a jittered backoff.
    async fn mark(&self, dates: impl IntoIterator<Item = &str>) -> Result<()> {
        let at = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string();
        let requests = dates
            .into_iter()
            .map(|date| {
                let put = PutRequest::builder()
                    .item("trip_date", AttributeValue::S(date.to_owned()))
                    .item("marked_at", AttributeValue::S(at.clone()))
                    .build()
                    .map_err(|e| Error::store(e.to_string()))?;
                Ok(WriteRequest::builder().put_request(put).build())
            })
            .collect::<Result<Vec<_>>>()?;
        for chunk in requests.chunks(MARKS_PER_REQUEST) {
            let mut left = chunk.to_vec();
            for attempt in 0.. {
                let sent = left.len();
                let out = self
                    .client
                    .batch_write_item()
                    .request_items(&self.marks_table, std::mem::take(&mut left))
                    .return_consumed_capacity(ReturnConsumedCapacity::Total)
                    .send()
                    .await
                    .map_err(|e| self.marks_error(e))?;
                let unprocessed = out.unprocessed_items().and_then(|u| u.get(&self.marks_table)).map_or(0, Vec::len);
                // One unit per mark written (a mark is far under 1 KB).
                self.capacity.write(out.consumed_capacity().first(), || (sent - unprocessed) as f64);
                left = out.unprocessed_items.and_then(|mut u| u.remove(&self.marks_table)).unwrap_or_default();
                if left.is_empty() {
                    break;
                }
                if attempt + 1 >= MAX_MARK_ATTEMPTS {
                    return Err(Error::store(format!(
                        "{}: DynamoDB left {} marks unwritten after {MAX_MARK_ATTEMPTS} tries",
                        self.marks_table,
                        left.len()
                    )));
                }
                tokio::time::sleep(backoff(attempt)).await;
            }
        }
        Ok(())
    }

    async fn merge_one(&self, u: &TripUpdate, index: DateIndex, marked: &Marked) -> Result<MergeOutcome> {
        let mut plan = Plan::first(u);
        for _ in 0..MAX_CONDITION_RETRIES {
            if let Some(date) = plan.other_date()
                && marked.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(date.into())
            {
                self.mark([date]).await?;
            }
            let token = write_token();
            let e = expression(u, &plan, index, &token);
            // Without reported capacity, the new item's size is what the units follow.
            let written = written_size(&u.trip_id, &e);
            let computes = self.capacity.computes();
            self.writes.fetch_add(1, Ordering::Relaxed);
            let sent = self
                .client
                .update_item()
                .table_name(&self.table)
                .key("trip_id", AttributeValue::S(u.trip_id.to_string()))
                .update_expression(e.update)
                .condition_expression(e.condition)
                .set_expression_attribute_names(Some(e.names))
                .set_expression_attribute_values(Some(e.values))
                .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
                .return_consumed_capacity(ReturnConsumedCapacity::Total)
                .return_values(if computes { ReturnValue::AllNew } else { ReturnValue::None })
                .send()
                .await;
            match sent {
                Ok(out) => {
                    self.capacity.write(out.consumed_capacity(), || {
                        let size = out.attributes().map_or(written, capacity::item_size);
                        // The item, and its date index's item when it has one (moved:
                        // deleted under the old key too).
                        let indexed = out.attributes().map_or(plan.end, |a| a.contains_key(index.attribute()));
                        let index_items = if !indexed {
                            0.0
                        } else if plan.stored_date.is_some() {
                            2.0
                        } else {
                            1.0
                        };
                        capacity::write_units(size) * (1.0 + index_items)
                    });
                    return Ok(MergeOutcome { start_applied: plan.start, end_applied: plan.end });
                }
                Err(err) => match err.as_service_error() {
                    Some(UpdateItemError::ConditionalCheckFailedException(failed)) => {
                        self.capacity
                            .unreported_write(capacity::write_units(failed.item().map_or(0, capacity::item_size)));
                        let stored = match failed.item() {
                            Some(item) => {
                                self.returns_old_items.store(true, Ordering::Relaxed);
                                stored_versions(Some(item))
                            }
                            None if self.returns_old_items.load(Ordering::Relaxed) => StoredVersions::default(),
                            None => stored_versions(self.get_raw(&u.trip_id).await?.as_ref()),
                        };
                        // An earlier attempt of this very write took effect, and its
                        // answer was lost: the SDK's retry failed against it.
                        if stored.token.as_deref() == Some(token.as_str()) {
                            return Ok(MergeOutcome { start_applied: plan.start, end_applied: plan.end });
                        }
                        match Plan::after_failure(u, &stored) {
                            None => return Ok(MergeOutcome::default()),
                            Some(next) => {
                                debug!(trip_id = %u.trip_id, ?stored, ?next, "Condition failed; writing again with the stored versions.");
                                plan = next;
                            }
                        }
                    }
                    _ if err.code() == Some("ResourceNotFoundException") => return Err(not_found(&self.table)),
                    _ => {
                        return Err(Error::store(format!(
                            "UpdateItem of trip {} in {}: {}",
                            u.trip_id,
                            self.table,
                            describe(&err)
                        )));
                    }
                },
            }
        }
        Err(Error::store(format!(
            "trip {} in {} changed under {MAX_CONDITION_RETRIES} writes in a row; is another writer replaying the same events?",
            u.trip_id, self.table
        )))
    }

    /// The stored item of `trip_id`, read consistently.
    async fn get_raw(&self, trip_id: &str) -> Result<Option<HashMap<String, AttributeValue>>> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("trip_id", AttributeValue::S(trip_id.to_owned()))
            .consistent_read(true)
            .return_consumed_capacity(ReturnConsumedCapacity::Total)
            .send()
            .await
            .map_err(|e| {
                if e.code() == Some("ResourceNotFoundException") {
                    not_found(&self.table)
                } else {
                    Error::store(format!("GetItem {trip_id} from {}: {}", self.table, describe(&e)))
                }
            })?;
        self.capacity.read_items(out.consumed_capacity(), out.item(), true);
        Ok(out.item)
    }

    /// Every item of one Scan segment, into Arrow batches.
    async fn scan_segment(&self, segment: u32, whole: &Columns) -> Result<Vec<RecordBatch>> {
        let mut builder = ExportBuilder::new(whole.clone());
        let mut batches = Vec::new();
        let mut pages = self
            .client
            .scan()
            .table_name(&self.table)
            .consistent_read(true)
            .segment(segment as i32)
            .total_segments(self.scan_segments as i32)
            .return_consumed_capacity(ReturnConsumedCapacity::Total)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| Error::store(format!("Scan of {}: {}", self.table, describe(&e))))?;
            self.capacity.read_items(page.consumed_capacity(), page.items(), true);
            page.items().iter().try_for_each(|item| builder.push_item_into(&trip_item(item)?, &mut batches))?;
        }
        if !builder.is_empty() {
            batches.push(builder.finish()?);
        }
        Ok(batches)
    }

    /// The items of one `trip_date`, from the sparse date index: one Query per shard, in
    /// parallel.
    async fn query_date(&self, index: DateIndex, date: NaiveDate, whole: &Columns) -> Result<Vec<RecordBatch>> {
        let keys = index.keys(&date.format("%Y-%m-%d").to_string());
        let shards: Vec<Vec<RecordBatch>> = futures::stream::iter(keys)
            .map(|key| self.query_key(index, key, whole))
            .buffer_unordered(MAX_DATE_SHARDS as usize)
            .try_collect()
            .await?;
        Ok(shards.concat())
    }

    /// The items under one key of the date index.
    async fn query_key(&self, index: DateIndex, key: String, whole: &Columns) -> Result<Vec<RecordBatch>> {
        let mut builder = ExportBuilder::new(whole.clone());
        let mut batches = Vec::new();
        let name = index.name();
        let mut pages = self
            .client
            .query()
            .table_name(&self.table)
            .index_name(&name)
            .key_condition_expression("#d = :d")
            .expression_attribute_names("#d", index.attribute())
            .expression_attribute_values(":d", AttributeValue::S(key))
            .return_consumed_capacity(ReturnConsumedCapacity::Total)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page =
                page.map_err(|e| Error::store(format!("Query of {} on {name}: {}", self.table, describe(&e))))?;
            // An index is read eventually consistent.
            self.capacity.read_items(page.consumed_capacity(), page.items(), false);
            page.items().iter().try_for_each(|item| builder.push_item_into(&trip_item(item)?, &mut batches))?;
        }
        if !builder.is_empty() {
            batches.push(builder.finish()?);
        }
        Ok(batches)
    }
}

/// What DescribeTable says of a table and of its date index (`None`: no such index).
struct Statuses {
    table: Option<TableStatus>,
    index: Option<(DateIndex, IndexStatus)>,
}

impl Statuses {
    fn table_active(&self) -> bool {
        self.table == Some(TableStatus::Active)
    }

    fn index_active(&self) -> bool {
        matches!(self.index, Some((_, IndexStatus::Active)))
    }
}

async fn statuses(client: &aws_sdk_dynamodb::Client, table: &str) -> Result<Statuses> {
    let out = client.describe_table().table_name(table).send().await.map_err(|e| {
        if e.code() == Some("ResourceNotFoundException") {
            not_found(table)
        } else {
            Error::store(format!("cannot describe DynamoDB table {table}: {}", describe(&e)))
        }
    })?;
    let t = out.table();
    Ok(Statuses {
        table: t.and_then(|t| t.table_status()).cloned(),
        // A sharded index before the plain one, should a table have both.
        index: t.and_then(|t| {
            let indexes = t.global_secondary_indexes();
            let found = indexes.iter().filter_map(|i| Some((DateIndex::from_name(i.index_name()?)?, i)));
            found
                .min_by_key(|(index, _)| *index == DateIndex::Plain)
                .map(|(index, i)| (index, i.index_status().cloned().unwrap_or(IndexStatus::Active)))
        }),
    })
}

/// Waits for a new table two minutes, for a new index ten (an index on a big table takes
/// long to build).
const TABLE_WAIT: Duration = Duration::from_secs(120);
const INDEX_WAIT: Duration = Duration::from_secs(600);

/// Polls the table until `ready`, for up to `limit`. Returns the statuses that were ready.
async fn wait_until(
    client: &aws_sdk_dynamodb::Client,
    table: &str,
    ready: &dyn Fn(&Statuses) -> bool,
    limit: Duration,
) -> Result<Statuses> {
    let late = || {
        Error::store(format!("DynamoDB table {table} (or its date index) is not active after {} s", limit.as_secs()))
    };
    wait_for(limit, late, async || {
        let now = statuses(client, table).await?;
        Ok(ready(&now).then_some(now))
    })
    .await
}

/// `put` of a changed-dates item, on condition that the item is as read: at `version`,
/// or absent (`None`). Its writers read, change and put again until no other came between.
fn as_read(
    put: aws_sdk_dynamodb::operation::put_item::builders::PutItemFluentBuilder,
    version: Option<u64>,
) -> aws_sdk_dynamodb::operation::put_item::builders::PutItemFluentBuilder {
    match version {
        Some(v) => put
            .condition_expression("version = :read")
            .expression_attribute_values(":read", AttributeValue::N(v.to_string())),
        None => put.condition_expression("attribute_not_exists(trip_date)"),
    }
}

/// The dates a merge call has marked.
type Marked = std::sync::Mutex<std::collections::BTreeSet<CompactString>>;

impl DynamoStore {
    /// Writes the trips of a merge whose dates `marked` are marked already.
    async fn merge_trips(
        &self,
        updates: Vec<TripUpdate>,
        marked: std::collections::BTreeSet<CompactString>,
    ) -> Result<Vec<MergeOutcome>> {
        let index = self.date_index().await?;
        let marked = Marked::new(marked);
        // Indices, not references, keep the futures free of higher-ranked lifetimes.
        futures::stream::iter(0..updates.len())
            .map(|i| self.merge_one(&updates[i], index, &marked))
            .buffered(self.write_concurrency)
            .try_collect()
            .await
    }
}

#[async_trait]
impl TripStore for DynamoStore {
    async fn merge(&self, updates: Vec<TripUpdate>) -> Result<Vec<MergeOutcome>> {
        // The days of the ends, marked before any trip is written.
        let ends: std::collections::BTreeSet<CompactString> =
            updates.iter().filter_map(|u| u.end.as_ref()).map(|e| date_of(e.version()).into()).collect();
        self.mark(ends.iter().map(CompactString::as_str)).await?;
        self.merge_trips(updates, ends).await
    }

    async fn merge_live(
        &self,
        updates: Vec<TripUpdate>,
        live: Arc<dyn super::LiveFold>,
        batch: &super::LiveBatch,
    ) -> Result<Vec<MergeOutcome>> {
        self.merge_with_live(updates, live.as_ref(), batch).await
    }

    fn live_shared(&self) -> bool {
        true
    }

    async fn live_write_shards(&self) -> Result<u32> {
        self.write_shards().await
    }

    async fn live_dates(&self) -> Result<Vec<super::LiveDate>> {
        self.read_live_dates().await
    }

    async fn put_live_date(&self, read: &super::LiveDate, states: Vec<Vec<u8>>, fingerprint: &str) -> Result<bool> {
        self.replace_live_date(read, states, fingerprint).await
    }

    async fn live_published(&self, read: &super::LiveDate) -> Result<()> {
        self.mark_published(read).await
    }

    async fn changed_dates(&self) -> Result<Vec<ChangedDate>> {
        let mut marks = Vec::new();
        for item in &self.marks_table_items().await? {
            if text(item, "trip_date").is_some_and(|k| k.starts_with("fields") || k.starts_with(live::LIVE_KEY_PREFIX))
            {
                continue; // the ledger's and the live state's items, never a date
            }
            let (Some(date), Some(at)) = (text(item, "trip_date"), text(item, "marked_at")) else {
                return Err(Error::store(format!("{}: an item has no trip_date or marked_at", self.marks_table)));
            };
            let date = marked_date(&date, &self.marks_table)?;
            marks.push(ChangedDate { date, settled: self.settled(&at), mark: at.to_string() });
        }
        marks.sort_by_key(|m| m.date);
        Ok(marks)
    }

    async fn clear_changed(&self, read: &[ChangedDate]) -> Result<usize> {
        let settled: Vec<&ChangedDate> = read.iter().filter(|m| m.settled).collect();
        let cleared: Vec<usize> = futures::stream::iter(0..settled.len())
            .map(|i| self.clear_mark(settled[i]))
            .buffer_unordered(self.write_concurrency)
            .try_collect()
            .await?;
        Ok(cleared.iter().sum())
    }

    async fn get(&self, trip_id: &str) -> Result<Option<TripItem>> {
        self.get_raw(trip_id).await?.as_ref().map(trip_item).transpose()
    }

    async fn export(&self, dates: Option<Vec<NaiveDate>>, columns: &Columns) -> Result<Vec<RecordBatch>> {
        // Rows in the embedded store's order: by trip_id, or by date and then trip_id.
        let whole = columns.whole();
        let schema = whole.schema();
        let rows = match dates {
            None => {
                let segments: Vec<Vec<RecordBatch>> = futures::stream::iter(0..self.scan_segments)
                    .map(|s| self.scan_segment(s, &whole))
                    .buffer_unordered(self.scan_segments as usize)
                    .try_collect()
                    .await?;
                vec![sorted(&schema, &segments.concat())?]
            }
            Some(mut dates) => {
                dates.sort();
                dates.dedup();
                let index = self.date_index().await?;
                let per_date: Vec<Vec<RecordBatch>> = futures::stream::iter(dates)
                    .map(|d| self.query_date(index, d, &whole))
                    .buffered(self.scan_segments as usize)
                    .try_collect()
                    .await?;
                per_date.iter().map(|b| sorted(&schema, b)).collect::<Result<_>>()?
            }
        };
        // Whole items come back either way; the kept columns are cut out at the end.
        let out = chunked(&schema, &rows)?
            .iter()
            .map(|b| b.project(columns.columns()))
            .collect::<Result<Vec<_>, _>>()
            .stage(Stage::Store, "export")?;
        debug!(rows = out.iter().map(RecordBatch::num_rows).sum::<usize>(), "Exported the table.");
        Ok(out)
    }

    async fn record_fields(&self, sightings: &[Sighting]) -> Result<Vec<String>> {
        // A field new to its entry is new to the ledger when this put is the first of
        // its item: a conditional put, which no other writer can also win (and which
        // needs no Scan, which the ingest function's role does not grant).
        let now = ledger::now();
        let mut first = Vec::new();
        for key in self.add_sightings(sightings, &now).await? {
            let put = self
                .client
                .put_item()
                .table_name(&self.marks_table)
                .item("trip_date", AttributeValue::S(format!("{FIRST_SEEN_KEY_PREFIX}{key}")))
                .item("seen_at", AttributeValue::S(now.clone()))
                .condition_expression("attribute_not_exists(trip_date)")
                .return_consumed_capacity(ReturnConsumedCapacity::Total)
                .send()
                .await;
            match put {
                Ok(out) => {
                    self.capacity.write(out.consumed_capacity(), || 1.0);
                    first.push(key);
                }
                Err(e) if matches!(e.as_service_error(), Some(PutItemError::ConditionalCheckFailedException(_))) => {}
                Err(e) => return Err(self.marks_error(e)),
            }
        }
        first.sort();
        first.dedup();
        Ok(first)
    }

    async fn add_sightings(&self, sightings: &[Sighting], now: &str) -> Result<Vec<String>> {
        let mut new = Vec::new();
        for (position, seen) in ledger::by_position(sightings) {
            new.extend(self.record_position(position, &seen, now).await?);
        }
        Ok(new)
    }

    async fn seen_fields(&self) -> Result<Vec<SeenField>> {
        let mut pages = self
            .client
            .scan()
            .table_name(&self.marks_table)
            .consistent_read(true)
            .filter_expression("begins_with(trip_date, :prefix)")
            .expression_attribute_values(":prefix", AttributeValue::S(LEDGER_KEY_PREFIX.into()))
            .return_consumed_capacity(ReturnConsumedCapacity::Total)
            .into_paginator()
            .send();
        let mut entries = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| self.marks_error(e))?;
            // Filtered after the read: what it read is what the filter kept and left,
            // which the page does not say; the kept items are a lower bound.
            self.capacity.read_items(page.consumed_capacity(), page.items(), true);
            for item in page.items() {
                let text = text(item, "ledger")
                    .ok_or_else(|| Error::store(format!("{}: a ledger item has no ledger", self.marks_table)))?;
                entries.push(ShardLedger::parse(&text, &self.marks_table)?);
            }
        }
        Ok(ledger::combine(entries))
    }

    fn write_requests(&self) -> u64 {
        self.writes.load(Ordering::Relaxed)
    }

    fn consumed(&self) -> super::Consumed {
        self.capacity.consumed()
    }
}

#[cfg(test)]
mod tests {
    use md5::Digest;

    use super::*;

    fn start(p: &str) -> StartGroup {
        StartGroup::of([
            ("pickup_location_id", "1"),
            ("dropoff_location_id", "2"),
            ("vendor_id", "1"),
            ("pickup_datetime", p),
            ("estimated_fare_amount", "12.5"),
        ])
    }

    fn end(d: &str) -> EndGroup {
        EndGroup::of([("dropoff_datetime", d), ("fare_amount", "10")])
    }

    #[test]
    fn a_lone_start_assumes_no_end_and_a_lone_end_assumes_an_earlier_start() {
        let u = TripUpdate { trip_id: "t".into(), start: Some(start("2024-05-25 10:00:00")), end: None };
        let e = expression(&u, &Plan::first(&u), DateIndex::Sharded(4), "t");
        assert!(e.condition.contains("attribute_not_exists(#dropoff_datetime)"), "{}", e.condition);
        assert!(!e.values.contains_key(":trip_date_shard"), "no date, no shard");
        assert_eq!(e.values[":trip_completed"], AttributeValue::Bool(false));
        assert!(e.update.contains("REMOVE #estimated_dropoff_datetime"), "{}", e.update);
        // Each write stores its token, to know itself again if its answer is lost.
        assert!(e.update.contains("#write_token = :write_token"), "{}", e.update);
        assert_eq!(e.values[":write_token"], AttributeValue::S("t".into()));
        assert_ne!(write_token(), write_token());

        let u = TripUpdate { trip_id: "t".into(), start: None, end: Some(end("2024-05-25 11:00:00")) };
        assert!(!expression(&u, &Plan::first(&u), DateIndex::Plain, "t").values.contains_key(":trip_date_shard"));
        let e = expression(&u, &Plan::first(&u), DateIndex::Sharded(4), "t");
        assert!(e.condition.contains("#pickup_datetime <= :dropoff_datetime"), "{}", e.condition);
        assert_eq!(e.values[":trip_date"], AttributeValue::S("2024-05-25".into()));
        let shard = format!("2024-05-25#{}", date_shard("t", 4));
        assert_eq!(e.values[":trip_date_shard"], AttributeValue::S(shard));
        assert_eq!(e.values[":trip_completed"], AttributeValue::Bool(true));
        // Every name and value placeholder is used: DynamoDB refuses unused ones.
        for name in e.names.keys() {
            assert!(e.update.contains(name.as_str()) || e.condition.contains(name.as_str()), "{name} unused");
        }
        for value in e.values.keys() {
            assert!(e.update.contains(value.as_str()) || e.condition.contains(value.as_str()), "{value} unused");
        }
    }

    #[test]
    fn a_failed_condition_tells_stale_from_a_wrong_assumption() {
        let u = TripUpdate { trip_id: "t".into(), start: None, end: Some(end("2024-05-25 11:00:00")) };
        let stored = StoredVersions { pickup: None, dropoff: Some("2024-05-25 11:00:00".into()), ..Default::default() };
        assert!(Plan::after_failure(&u, &stored).is_none(), "an equal version is a duplicate");

        let stored = StoredVersions { pickup: None, dropoff: None, ..Default::default() };
        let next = Plan::after_failure(&u, &stored).unwrap();
        assert_eq!(next.other, Other::Absent, "the end came first");
        let e = expression(&u, &next, DateIndex::Plain, "t");
        assert_eq!(e.values[":trip_completed"], AttributeValue::Bool(false));

        let stored = StoredVersions { pickup: Some("2024-05-25 12:00:00".into()), dropoff: None, ..Default::default() };
        let next = Plan::after_failure(&u, &stored).unwrap();
        let e = expression(&u, &next, DateIndex::Plain, "t");
        assert_eq!(e.values[":last_updated"], AttributeValue::S("2024-05-25 12:00:00".into()), "the newer version");

        let both = TripUpdate { start: Some(start("2024-05-25 10:00:00")), ..u };
        let stored = StoredVersions { pickup: Some("2024-05-25 10:00:00".into()), dropoff: None, ..Default::default() };
        let next = Plan::after_failure(&both, &stored).unwrap();
        assert!(!next.start && next.end, "only the newer group is written again");
        assert_eq!(next.other, Other::Is("2024-05-25 10:00:00".into()));
    }

    #[test]
    fn a_write_names_every_day_it_changes_before_it_is_sent() {
        // First try: an end assumes the trip is on no day yet, or on the end's own day.
        let u = TripUpdate { trip_id: "t".into(), start: None, end: Some(end("2024-05-27 11:00:00")) };
        let first = Plan::first(&u);
        assert_eq!(first.other_date(), None);
        let e = expression(&u, &first, DateIndex::Plain, "t");
        assert!(
            e.condition.contains("(attribute_not_exists(#trip_date) OR #trip_date = :trip_date)"),
            "{}",
            e.condition
        );

        // Stored on another day: that day is marked, and the write pins it.
        let stored = StoredVersions {
            pickup: Some("2024-05-25 09:00:00".into()),
            dropoff: Some("2024-05-25 10:00:00".into()),
            ..Default::default()
        };
        let next = Plan::after_failure(&u, &stored).unwrap();
        assert_eq!(next.other_date(), Some("2024-05-25"));
        let e = expression(&u, &next, DateIndex::Plain, "t");
        assert!(e.condition.contains("#trip_date = :stored_trip_date"), "{}", e.condition);
        assert_eq!(e.values[":stored_trip_date"], AttributeValue::S("2024-05-25".into()));

        // Stored on the same day: nothing more to mark.
        let stored = StoredVersions { pickup: None, dropoff: Some("2024-05-27 10:00:00".into()), ..Default::default() };
        assert_eq!(Plan::after_failure(&u, &stored).unwrap().other_date(), None);

        // A start that completes a stored end changes the end's day.
        let s = TripUpdate { trip_id: "t".into(), start: Some(start("2024-05-20 10:00:00")), end: None };
        assert_eq!(Plan::first(&s).other_date(), None, "first assumed without an end");
        let stored = StoredVersions { pickup: None, dropoff: Some("2024-05-21 10:00:00".into()), ..Default::default() };
        assert_eq!(Plan::after_failure(&s, &stored).unwrap().other_date(), Some("2024-05-21"));
    }

    #[test]
    fn date_indexes_are_named_by_their_shards_and_trips_spread_over_them() {
        for index in [DateIndex::Plain, DateIndex::Sharded(1), DateIndex::Sharded(16)] {
            assert_eq!(DateIndex::from_name(&index.name()), Some(index));
        }
        assert_eq!(DateIndex::Sharded(16).name(), "trip_date_shard-16-index");
        for other in ["trip_date_shard-0-index", "trip_date_shard-x-index", "trip_date_shard-999-index", "by_vendor"] {
            assert_eq!(DateIndex::from_name(other), None, "{other}");
        }
        assert_eq!(DateIndex::Sharded(3).keys("2024-05-25"), ["2024-05-25#0", "2024-05-25#1", "2024-05-25#2"]);
        assert_eq!(DateIndex::Plain.keys("2024-05-25"), ["2024-05-25"]);

        // The stored format: MD5("trip-1") begins 868c1fa9872958b4, which is 4 modulo 16.
        let head = u64::from_be_bytes(md5::Md5::digest(b"trip-1")[..8].try_into().unwrap());
        assert_eq!(head, 0x868c_1fa9_8729_58b4);
        assert_eq!(date_shard("trip-1", 16), 4);
        assert_eq!(date_shard("trip-1", 1), 0);
        let mut counts = [0u32; 16];
        for i in 0..16_000 {
            counts[date_shard(&format!("trip-{i}"), 16) as usize] += 1;
        }
        assert!(counts.iter().all(|&c| (800..1200).contains(&c)), "{counts:?}");
    }
}
