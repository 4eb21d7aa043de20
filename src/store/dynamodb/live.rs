//! The live KPIs' state on DynamoDB (docs/design.md §7): one item per date and write
//! shard in the changed-dates table, keyed `live#DATE#K` (K = [`date_shard`] of the trip,
//! over the date index's shards), written before the trips and apart from them.
//!
//! A trip write and a state write cannot be one atomic write here, so a merge with the
//! live fold goes in this order:
//! 1. it reads the batch's trips as stored (BatchGetItem, consistent);
//! 2. it marks every date whose state it may change, as the trip writes do;
//! 3. for each date and write shard the batch changes, it reads the item, takes in the
//!    change and writes it back on condition that no other writer wrote it since (a
//!    version), recording per stream shard the last record it holds;
//! 4. only then it writes the trips, as [`TripStore::merge`] does.
//!
//! A replay after a crash or an error, with the same or other batch boundaries, counts
//! nothing twice: an item's change is from each trip as of the item's recorded position
//! (the trip as stored, joined with the batch's events at or before that position: the
//! merge is a join of versions, so order does not matter) to the trip after the batch.
//! So a batch whose items were written before its trips were counts zero for them when
//! replayed, and a batch cut elsewhere counts only its events past the position.
//!
//! The state of a date is the sum of its items ([`crate::kpi::live`] adds them up). A
//! date whose items may miss changes (written under other queries, or before the state
//! was first built) is marked `stale` and rebuilt from the table once settled, as is one
//! whose minimum or maximum a change retracted.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use aws_sdk_dynamodb::error::ProvideErrorMetadata;
use aws_sdk_dynamodb::operation::put_item::PutItemError;
use aws_sdk_dynamodb::types::{AttributeValue, KeysAndAttributes, ReturnConsumedCapacity};
use futures::{StreamExt, TryStreamExt};

use super::{DynamoStore, MAX_CONDITION_RETRIES, as_read, date_shard, text, trip_item};
use crate::store::{
    CompactString, EndGroup, ExportBuilder, LiveBatch, LiveChange, LiveDate, LiveFold, LiveShard, StartGroup, Step,
    TripItem, TripUpdate, capacity, date_of, is_newer,
};
use crate::{Error, Result};

/// The key prefix of the live state's items in the changed-dates table (never a date, so
/// the marks' readers pass them by).
pub(super) const LIVE_KEY_PREFIX: &str = "live#";

/// Keys per BatchGetItem request (DynamoDB's limit).
const KEYS_PER_GET: usize = 100;

fn item_key(date: &str, k: u32) -> String {
    format!("{LIVE_KEY_PREFIX}{date}#{k}")
}

/// The trip as `item` was, with the groups of `start` and `end` that are newer: the merge
/// of docs/design.md §3.
fn joined(trip_id: &str, item: Option<&TripItem>, start: Option<&StartGroup>, end: Option<&EndGroup>) -> TripItem {
    let mut t = item.cloned().unwrap_or(TripItem { trip_id: trip_id.into(), start: None, end: None });
    if let Some(s) = start.filter(|s| is_newer(Some(s.version()), t.start.as_ref().map(StartGroup::version))) {
        t.start = Some(s.clone());
    }
    if let Some(e) = end.filter(|e| is_newer(Some(e.version()), t.end.as_ref().map(EndGroup::version))) {
        t.end = Some(e.clone());
    }
    t
}

/// One trip of the batch: as stored, its steps, and as it will be stored.
struct Trip<'a> {
    k: u32,
    before: Option<TripItem>,
    steps: &'a [Step],
    after: TripItem,
}

impl Trip<'_> {
    /// The trip as of `positions` (per stream shard, the last record an item holds): as
    /// stored, joined with the batch's events at or before them.
    fn as_of(&self, batch: &LiveBatch, positions: &BTreeMap<String, String>) -> TripItem {
        let mut t = self.before.clone().unwrap_or_else(|| TripItem {
            trip_id: self.after.trip_id.clone(),
            start: None,
            end: None,
        });
        for step in self.steps {
            let key = position_key(batch, step.shard);
            let held =
                positions.get(&key).is_some_and(|p| crate::stream::SequenceNumber(p.as_str().into()) >= step.sequence);
            if held {
                t = joined(&t.trip_id.clone(), Some(&t), step.start.as_ref(), step.end.as_ref());
            }
        }
        t
    }
}

/// The key of a stream shard in an item's positions: `stream/shard`.
fn position_key(batch: &LiveBatch, shard: usize) -> String {
    format!("{}/{}", batch.stream, batch.shards[shard])
}

/// A live item, as read.
fn live_shard(k: u32, item: &HashMap<String, AttributeValue>) -> LiveShard {
    let number = |name: &str| text(item, name).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    let map = |name: &str| match item.get(name) {
        Some(AttributeValue::M(m)) => m.iter().filter_map(|(k, v)| Some((k.clone(), v.as_s().ok()?.clone()))).collect(),
        _ => BTreeMap::new(),
    };
    let (positions, seen) = (map("positions"), map("seen"));
    LiveShard {
        k,
        version: number("version"),
        published: number("published"),
        state: match item.get("state") {
            Some(AttributeValue::B(b)) => b.clone().into_inner(),
            _ => Vec::new(),
        },
        fingerprint: text(item, "fingerprint").map(|f| f.to_string()).unwrap_or_default(),
        positions,
        seen,
        stale: matches!(item.get("stale"), Some(AttributeValue::Bool(true))),
    }
}

impl DynamoStore {
    /// The stored items of `ids`, read consistently, by trip id.
    async fn get_trips(&self, ids: &[&str]) -> Result<HashMap<CompactString, TripItem>> {
        let mut found = HashMap::new();
        for chunk in ids.chunks(KEYS_PER_GET) {
            let keys = chunk
                .iter()
                .map(|id| HashMap::from([("trip_id".to_owned(), AttributeValue::S((*id).to_owned()))]))
                .collect::<Vec<_>>();
            let mut left = Some(
                KeysAndAttributes::builder()
                    .set_keys(Some(keys))
                    .consistent_read(true)
                    .build()
                    .map_err(|e| Error::store(e.to_string()))?,
            );
            let mut attempt = 0;
            while let Some(request) = left.take() {
                let out = self
                    .client
                    .batch_get_item()
                    .request_items(&self.table, request)
                    .return_consumed_capacity(ReturnConsumedCapacity::Total)
                    .send()
                    .await
                    .map_err(|e| {
                        if e.code() == Some("ResourceNotFoundException") {
                            super::not_found(&self.table)
                        } else {
                            Error::store(format!("BatchGetItem from {}: {}", self.table, super::describe(&e)))
                        }
                    })?;
                let items = out.responses.and_then(|mut r| r.remove(&self.table)).unwrap_or_default();
                self.capacity.read_items(out.consumed_capacity.as_deref().and_then(<[_]>::first), &items, true);
                for item in &items {
                    let trip = trip_item(item)?;
                    found.insert(trip.trip_id.clone(), trip);
                }
                left = out.unprocessed_keys.and_then(|mut u| u.remove(&self.table)).filter(|k| !k.keys.is_empty());
                if left.is_some() {
                    tokio::time::sleep(super::backoff(attempt)).await;
                    attempt += 1;
                }
            }
        }
        Ok(found)
    }

    /// The write shards of the live items: the date index's.
    pub(super) async fn write_shards(&self) -> Result<u32> {
        Ok(match self.date_index().await? {
            super::DateIndex::Plain => 1,
            super::DateIndex::Sharded(n) => n,
        })
    }

    /// The merge with the live fold: the module's steps 1 to 4.
    pub(super) async fn merge_with_live(
        &self,
        updates: Vec<TripUpdate>,
        live: &dyn LiveFold,
        batch: &LiveBatch,
    ) -> Result<Vec<crate::store::MergeOutcome>> {
        let shards = self.write_shards().await?;
        let ids: Vec<&str> = updates.iter().map(|u| u.trip_id.as_str()).collect();
        let mut stored = self.get_trips(&ids).await?;
        let no_steps: Vec<Step> = Vec::new();
        let trips: Vec<Trip<'_>> = updates
            .iter()
            .enumerate()
            .map(|(i, u)| {
                let before = stored.remove(&u.trip_id);
                let after = joined(&u.trip_id, before.as_ref(), u.start.as_ref(), u.end.as_ref());
                let steps = batch.steps.get(i).map_or(no_steps.as_slice(), Vec::as_slice);
                Trip { k: date_shard(&u.trip_id, shards), before, steps, after }
            })
            .collect();
        // Every item a trip can count in: its date as stored, after, and at each step.
        let mut items: BTreeMap<(CompactString, u32), Vec<usize>> = BTreeMap::new();
        for (i, t) in trips.iter().enumerate() {
            let dates = t
                .before
                .as_ref()
                .and_then(TripItem::trip_date)
                .into_iter()
                .chain(t.after.trip_date())
                .chain(t.steps.iter().filter_map(|s| s.end.as_ref().map(|e| date_of(e.version()))));
            let mut seen = BTreeSet::new();
            for d in dates {
                if seen.insert(d) {
                    items.entry((d.into(), t.k)).or_default().push(i);
                }
            }
        }
        let dates: BTreeSet<CompactString> = items.keys().map(|(d, _)| d.clone()).collect();
        self.mark(dates.iter().map(CompactString::as_str)).await?;
        // Indices, not references, keep the futures free of higher-ranked lifetimes.
        let items: Vec<((CompactString, u32), Vec<usize>)> = items.into_iter().collect();
        let (trips, items) = (&trips, &items);
        futures::stream::iter(0..items.len())
            .map(|i| self.write_live_item(&items[i].0.0, items[i].0.1, &items[i].1, trips, live, batch))
            .buffer_unordered(self.write_concurrency)
            .try_collect::<Vec<()>>()
            .await?;
        let merges = self.live_merges.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        if self.fail_before_trips == Some(merges) {
            return Err(Error::store(format!(
                "merge {merges}: an injected failure after the live items, before the trips"
            )));
        }
        self.merge_trips(updates, dates).await
    }

    /// Takes the change of `which` trips on `date` into its item of write shard `k`.
    async fn write_live_item(
        &self,
        date: &str,
        k: u32,
        which: &[usize],
        trips: &[Trip<'_>],
        live: &dyn LiveFold,
        batch: &LiveBatch,
    ) -> Result<()> {
        let key = item_key(date, k);
        for _ in 0..MAX_CONDITION_RETRIES {
            let item = self.marks_item(&key).await?;
            let exists = item.is_some();
            let read = item.as_ref().map(|i| live_shard(k, i)).unwrap_or_default();
            // The rows of this date, as the item holds them and as they will be.
            let (mut was, mut will) =
                (ExportBuilder::new(live.projection().clone()), ExportBuilder::new(live.projection().clone()));
            let (mut was_rows, mut will_rows) = (Vec::new(), Vec::new());
            for &i in which {
                let t = &trips[i];
                let held = t.as_of(batch, &read.positions);
                if held == t.after {
                    continue;
                }
                if held.trip_date() == Some(date) {
                    was.push_item_into(&held, &mut was_rows)?;
                }
                if t.after.trip_date() == Some(date) {
                    will.push_item_into(&t.after, &mut will_rows)?;
                }
            }
            let was_rows = was.finish_into(was_rows)?;
            let will_rows = will.finish_into(will_rows)?;
            let changes = live.changes(&was_rows, &will_rows)?;
            let change: Option<&LiveChange> =
                changes.iter().find(|(d, _)| d.format("%Y-%m-%d").to_string() == date).map(|(_, c)| c);
            let Some(change) = change else { return Ok(()) };
            // Written under other queries: what it holds cannot take this change.
            let other = exists && read.fingerprint != live.fingerprint();
            let state = live.apply(if other || !exists { None } else { Some(&read.state) }, change)?;
            let (mut positions, mut seen) = (read.positions.clone(), read.seen.clone());
            for (shard, last) in batch.last.iter().enumerate() {
                let Some(last) = last else { continue };
                let key = position_key(batch, shard);
                for map in [&mut positions, &mut seen] {
                    let newer = map.get(&key).is_none_or(|p| crate::stream::SequenceNumber(p.as_str().into()) < *last);
                    if newer {
                        map.insert(key.clone(), last.0.to_string());
                    }
                }
            }
            let seen = AttributeValue::M(seen.into_iter().map(|(k, v)| (k, AttributeValue::S(v))).collect());
            let size = key.len() + state.len() + 64 + positions.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>();
            let put = self
                .client
                .put_item()
                .table_name(&self.marks_table)
                .item("trip_date", AttributeValue::S(key.clone()))
                .item("state", AttributeValue::B(state.into()))
                .item("fingerprint", AttributeValue::S(live.fingerprint().to_owned()))
                .item(
                    "positions",
                    AttributeValue::M(positions.into_iter().map(|(k, v)| (k, AttributeValue::S(v))).collect()),
                )
                .item("seen", seen)
                .item("version", AttributeValue::N((read.version + 1).to_string()))
                .item("published", AttributeValue::N(read.published.to_string()))
                .item("stale", AttributeValue::Bool(read.stale || other))
                .return_consumed_capacity(ReturnConsumedCapacity::Total);
            let put = as_read(put, exists.then_some(read.version));
            self.live_writes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            match put.send().await {
                Ok(out) => {
                    self.capacity.write(out.consumed_capacity(), || capacity::write_units(size));
                    return Ok(());
                }
                // Another batch (of another stream shard) wrote it first: read it again.
                Err(e) if matches!(e.as_service_error(), Some(PutItemError::ConditionalCheckFailedException(_))) => {
                    self.capacity.unreported_write(capacity::write_units(size));
                }
                Err(e) => return Err(self.marks_error(e)),
            }
        }
        Err(Error::store(format!(
            "{}: the live item {key} changed under {MAX_CONDITION_RETRIES} writes in a row",
            self.marks_table
        )))
    }

    /// Every live item, by date, with whether the date is settled; and every marked
    /// date, with no items when it has none.
    pub(super) async fn read_live_dates(&self) -> Result<Vec<LiveDate>> {
        let mut dates: BTreeMap<chrono::NaiveDate, LiveDate> = BTreeMap::new();
        let mut marks: HashMap<String, String> = HashMap::new();
        for item in &self.marks_table_items().await? {
            let Some(key) = text(item, "trip_date") else { continue };
            if let Some(rest) = key.strip_prefix(LIVE_KEY_PREFIX) {
                let Some((date, k)) = rest.rsplit_once('#') else { continue };
                let (Ok(day), Ok(k)) = (chrono::NaiveDate::parse_from_str(date, "%Y-%m-%d"), k.parse::<u32>()) else {
                    continue;
                };
                let entry = dates.entry(day).or_insert_with(|| LiveDate { date: day, ..LiveDate::default() });
                entry.shards.push(live_shard(k, item));
            } else if let Some(mark) = text(item, "marked_at") {
                marks.insert(key.to_string(), mark.to_string());
            }
        }
        // A marked date without items yet: its settledness is what a rebase needs.
        for key in marks.keys() {
            if let Ok(day) = chrono::NaiveDate::parse_from_str(key, "%Y-%m-%d") {
                dates.entry(day).or_insert_with(|| LiveDate { date: day, ..LiveDate::default() });
            }
        }
        for d in dates.values_mut() {
            d.shards.sort_by_key(|s| s.k);
            d.settled = marks.get(&d.date.format("%Y-%m-%d").to_string()).is_none_or(|at| self.settled(at));
        }
        Ok(dates.into_values().collect())
    }

    /// [`crate::store::TripStore::put_live_date`]: each shard's item put on condition
    /// that it is as read. Each item is the state of its shard's trips, so one put that
    /// lost to a merge leaves the others right; that one stays to rebuild.
    pub(super) async fn replace_live_date(
        &self,
        read: &LiveDate,
        states: Vec<Vec<u8>>,
        fingerprint: &str,
    ) -> Result<bool> {
        let date = read.date.format("%Y-%m-%d").to_string();
        let mut all = true;
        for (k, state) in states.into_iter().enumerate() {
            let k = k as u32;
            let was = read.shards.iter().find(|s| s.k == k);
            // No item, and none needed: every query's groups are empty (zero lengths).
            if was.is_none() && state.iter().all(|&b| b == 0) {
                continue;
            }
            // The positions go: the item is the table's now, which may be behind what a
            // failed merge wrote into the item before its trips; a replay then counts
            // from the table. What it has seen stays, for the files' position.
            let seen = was.map(|w| w.seen.clone()).unwrap_or_default();
            let size = item_key(&date, k).len() + state.len() + 64;
            let put = self
                .client
                .put_item()
                .table_name(&self.marks_table)
                .item("trip_date", AttributeValue::S(item_key(&date, k)))
                .item("state", AttributeValue::B(state.into()))
                .item("fingerprint", AttributeValue::S(fingerprint.to_owned()))
                .item("seen", AttributeValue::M(seen.into_iter().map(|(k, v)| (k, AttributeValue::S(v))).collect()))
                .item("version", AttributeValue::N((was.map_or(0, |s| s.version) + 1).to_string()))
                .item("published", AttributeValue::N(was.map_or(0, |s| s.published).to_string()))
                .item("stale", AttributeValue::Bool(false))
                .return_consumed_capacity(ReturnConsumedCapacity::Total);
            let put = as_read(put, was.map(|w| w.version));
            self.live_writes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            match put.send().await {
                Ok(out) => self.capacity.write(out.consumed_capacity(), || capacity::write_units(size)),
                Err(e) if matches!(e.as_service_error(), Some(PutItemError::ConditionalCheckFailedException(_))) => {
                    self.capacity.unreported_write(capacity::write_units(size));
                    all = false;
                }
                Err(e) => return Err(self.marks_error(e)),
            }
        }
        Ok(all)
    }

    /// [`crate::store::TripStore::live_published`].
    pub(super) async fn mark_published(&self, read: &LiveDate) -> Result<()> {
        let date = read.date.format("%Y-%m-%d").to_string();
        for s in read.shards.iter().filter(|s| s.published < s.version) {
            let sent = self
                .client
                .update_item()
                .table_name(&self.marks_table)
                .key("trip_date", AttributeValue::S(item_key(&date, s.k)))
                .update_expression("SET published = :v")
                .condition_expression("version = :v")
                .expression_attribute_values(":v", AttributeValue::N(s.version.to_string()))
                .return_consumed_capacity(ReturnConsumedCapacity::Total)
                .send()
                .await;
            match sent {
                Ok(out) => self.capacity.write(out.consumed_capacity(), || 1.0),
                // Written since it was read: it stays to publish.
                Err(e)
                    if matches!(
                        e.as_service_error(),
                        Some(
                            aws_sdk_dynamodb::operation::update_item::UpdateItemError::ConditionalCheckFailedException(
                                _
                            )
                        )
                    ) => {}
                Err(e) => return Err(self.marks_error(e)),
            }
        }
        Ok(())
    }

    /// Writes of the live items so far.
    pub fn live_writes(&self) -> u64 {
        self.live_writes.load(std::sync::atomic::Ordering::Relaxed)
    }
}
