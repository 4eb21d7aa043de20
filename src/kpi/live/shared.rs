//! The live state kept as shard items per date, written apart from the trips
//! (DynamoDB: [`crate::store::TripStore::live_shared`]).
//!
//! Each merge hands the store, per date, the change of the rows it makes
//! ([`LiveFold::changes`]); the store takes it into that date's item of each write shard
//! the batch touches ([`LiveFold::apply`]). An item holds, per maintained query, the
//! date's groups of the trips of its shard. A publication reads the items, adds each
//! date's up (nothing retracted), and renders them as [`LiveKpis::publish`] does. A date
//! whose items may miss changes (stale, or of other queries) or whose extreme a change
//! retracted is rebuilt from the table first, once settled (no merge marked it within
//! the grace, so no write is in flight); until then its file is held.

use std::collections::{BTreeMap, BTreeSet};

use arrow::array::{AsArray, RecordBatch};
use chrono::NaiveDate;

use super::state::{self, DateGroups, Folder, QueryState};
use super::{LiveKpis, Position, Published, day, days};
use crate::kpi::output::OutputLocation;
use crate::model::{put_varint, take_varint};
use crate::store::{LiveChange, LiveDate, Projection, TripStore};
use crate::{Error, Result};

/// One date's change, per maintained query: the rows' states retracted and added.
pub(super) struct DateChange {
    date: i32,
    /// Per query (a recomputed query's empty): (added, retracted).
    per_query: Vec<(QueryState, QueryState)>,
}

/// An item's bytes: per query, in order, the length of its date's groups ([`state::encode`])
/// and the groups (none: length 0).
fn encode_item(groups: &[Option<DateGroups>]) -> Vec<u8> {
    let mut out = Vec::new();
    for g in groups {
        let bytes = g.as_ref().map(state::encode).unwrap_or_default();
        put_varint(&mut out, bytes.len() as u64);
        out.extend_from_slice(&bytes);
    }
    out
}

/// [`encode_item`]'s groups, `n` queries; `None` when the bytes are not its.
fn decode_item(mut rest: &[u8], n: usize) -> Option<Vec<Option<DateGroups>>> {
    let mut groups = Vec::with_capacity(n);
    for _ in 0..n {
        let len = usize::try_from(take_varint(&mut rest)?).ok()?;
        let (bytes, after) = rest.split_at_checked(len)?;
        rest = after;
        groups.push(if len == 0 { None } else { Some(state::decode(bytes)?) });
    }
    rest.is_empty().then_some(groups)
}

impl LiveKpis {
    /// [`crate::store::LiveFold::changes`].
    pub(super) fn shared_changes(
        &self,
        before: &[RecordBatch],
        after: &[RecordBatch],
    ) -> Result<Vec<(NaiveDate, LiveChange)>> {
        let mut dates = BTreeSet::new();
        let mut retracted = self.states_of(before, &mut dates)?;
        let mut added = self.states_of(after, &mut dates)?;
        // Something to publish: the next publication reads the items.
        self.lock().shared_unread = true;
        let mut changes = Vec::new();
        for &d in &dates {
            let per_query = (0..self.queries.len())
                .map(|i| {
                    let one = |s: &mut QueryState| QueryState {
                        dates: s.dates.remove(&d).map(|g| BTreeMap::from([(d, g)])).unwrap_or_default(),
                    };
                    (one(&mut added[i]), one(&mut retracted[i]))
                })
                .collect();
            changes.push((day(d), Box::new(DateChange { date: d, per_query }) as LiveChange));
        }
        Ok(changes)
    }

    /// [`crate::store::LiveFold::apply`].
    pub(super) fn shared_apply(&self, stored: Option<&[u8]>, change: &LiveChange) -> Result<Vec<u8>> {
        let change = change
            .downcast_ref::<DateChange>()
            .ok_or_else(|| Error::store("a live change from another fold was handed to the live KPIs"))?;
        let n = self.queries.len();
        let mut groups = match stored {
            Some(bytes) => decode_item(bytes, n).ok_or_else(damaged)?,
            None => vec![None; n],
        };
        for (i, _, m) in self.stems() {
            let mut s = QueryState::default();
            if let Some(g) = groups[i].take() {
                s.dates.insert(change.date, g);
            }
            let (added, retracted) = &change.per_query[i];
            s.absorb(added, retracted, &m.kinds());
            groups[i] = s.dates.remove(&change.date);
        }
        Ok(encode_item(&groups))
    }

    /// A date's items added up, per query; `None` when one may miss changes (stale, of
    /// other queries, or damaged) or an extreme is unknown: the date must be rebuilt.
    fn combined(&self, date: &LiveDate) -> Option<Vec<QueryState>> {
        let n = self.queries.len();
        let d = days(date.date);
        let mut states = vec![QueryState::default(); n];
        for shard in &date.shards {
            if shard.stale || shard.fingerprint != self.shared_fingerprint {
                return None;
            }
            let groups = decode_item(&shard.state, n)?;
            for (i, _, m) in self.stems() {
                let Some(g) = groups[i].clone() else { continue };
                let item = QueryState { dates: BTreeMap::from([(d, g)]) };
                states[i].absorb(&item, &QueryState::default(), &m.kinds());
            }
        }
        let unknown = self.stems().any(|(i, _, _)| !Folder::unknown_dates(&states[i]).is_empty());
        (!unknown).then_some(states)
    }

    /// Rebuilds `date`'s items from the table, one per write shard; false when a merge
    /// wrote one of them since `read` was read (nothing is written then).
    async fn rebuild_date(&self, store: &dyn TripStore, read: &LiveDate) -> Result<bool> {
        let shards = store.live_write_shards().await?;
        let schema = self.projection.schema();
        let whole = self.projection.whole().schema();
        let id = whole.index_of("trip_id").map_err(|e| Error::store(e.to_string()))?;
        let mut columns: BTreeSet<usize> = self.projection.columns().iter().copied().collect();
        columns.insert(id);
        let with_id = Projection::of_with(columns, self.projection.kept());
        let batches = store.export(Some(vec![read.date]), &with_id).await?;
        let mut per_shard: Vec<Vec<RecordBatch>> = vec![Vec::new(); shards as usize];
        for b in &batches {
            let ids = b.column_by_name("trip_id").ok_or_else(|| Error::store("the export has no trip_id"))?;
            let ids = ids.as_string::<i32>();
            let ks: Vec<u32> =
                (0..b.num_rows()).map(|r| crate::store::dynamodb::date_shard(ids.value(r), shards)).collect();
            let picked = schema
                .fields()
                .iter()
                .map(|f| {
                    b.column_by_name(f.name()).cloned().ok_or_else(|| Error::store(format!("no column {}", f.name())))
                })
                .collect::<Result<Vec<_>>>()?;
            let narrow = RecordBatch::try_new(schema.clone(), picked).map_err(|e| Error::store(e.to_string()))?;
            for (k, rows) in per_shard.iter_mut().enumerate() {
                let mask: arrow::array::BooleanArray = ks.iter().map(|&x| Some(x as usize == k)).collect();
                let kept =
                    arrow::compute::filter_record_batch(&narrow, &mask).map_err(|e| Error::store(e.to_string()))?;
                if kept.num_rows() > 0 {
                    rows.push(kept);
                }
            }
        }
        let d = days(read.date);
        let mut states = Vec::with_capacity(per_shard.len());
        for rows in &per_shard {
            let mut fresh = self.states_of(rows, &mut BTreeSet::new())?;
            let groups: Vec<Option<DateGroups>> = fresh.iter_mut().map(|s| s.dates.remove(&d)).collect();
            states.push(encode_item(&groups));
        }
        store.put_live_date(read, states, &self.shared_fingerprint).await
    }

    /// Reads the items of `wanted` dates (every date with an item not yet published when
    /// `None`) into the state, rebuilding the settled dates that need it. Returns the
    /// dates read (their items as read) and those held: not settled, and in need of a
    /// rebuild.
    async fn load_shared(
        &self,
        store: &dyn TripStore,
        wanted: Option<&BTreeSet<NaiveDate>>,
    ) -> Result<(Vec<LiveDate>, Vec<NaiveDate>, Vec<NaiveDate>)> {
        let mut loaded = Vec::new();
        let mut held = Vec::new();
        let mut rebuilt = Vec::new();
        let mut dates = store.live_dates().await?;
        for attempt in 0..3 {
            let mut again = Vec::new();
            for date in dates {
                let pick = match wanted {
                    Some(w) => w.contains(&date.date),
                    None => date.shards.iter().any(|s| s.version > s.published),
                };
                if !pick {
                    continue;
                }
                match self.combined(&date) {
                    Some(states) => {
                        let d = days(date.date);
                        let mut inner = self.lock();
                        for (i, s) in states.into_iter().enumerate() {
                            match s.dates.into_values().next() {
                                Some(g) => inner.states[i].dates.insert(d, g),
                                None => inner.states[i].dates.remove(&d),
                            };
                        }
                        for shard in &date.shards {
                            for (key, seq) in &shard.seen {
                                let (stream, shard_id) = key.rsplit_once('/').unwrap_or(("", key));
                                inner.position.stream = stream.to_owned();
                                let newer = inner.position.shards.get(shard_id).is_none_or(|p| {
                                    crate::stream::SequenceNumber(p.as_str().into())
                                        < crate::stream::SequenceNumber(seq.as_str().into())
                                });
                                if newer {
                                    inner.position.shards.insert(shard_id.to_owned(), seq.clone());
                                }
                            }
                        }
                        loaded.push(date);
                    }
                    None if date.settled && attempt < 2 => {
                        if self.rebuild_date(store, &date).await? {
                            rebuilt.push(date.date);
                        }
                        again.push(date.date);
                    }
                    None => held.push(date.date),
                }
            }
            if again.is_empty() {
                break;
            }
            // Read again what was rebuilt (or written by a merge meanwhile).
            dates = store.live_dates().await?.into_iter().filter(|d| again.contains(&d.date)).collect();
        }
        // A held date keeps no figures: it is not written until it is rebuilt.
        {
            let mut inner = self.lock();
            for d in &held {
                for s in &mut inner.states {
                    s.dates.remove(&days(*d));
                }
            }
        }
        Ok((loaded, held, rebuilt))
    }

    /// Writes the live file of every date whose items changed since they were last
    /// published, then records them published. A date that needs a rebuild and is not
    /// settled is held (see the module).
    ///
    /// # Errors
    /// When a query, the store or the output fails; the dates stay to publish.
    pub async fn publish_shared(
        &self,
        store: &dyn TripStore,
        out: &OutputLocation,
        recompute: bool,
    ) -> Result<Published> {
        self.lock().shared_unread = false;
        let loaded = self.load_shared(store, None).await;
        let (loaded, held, rebuilt) = match loaded {
            Ok(l) => l,
            Err(e) => {
                self.lock().shared_unread = true;
                return Err(e);
            }
        };
        {
            // What the items say changed, not what this process merged.
            let mut inner = self.lock();
            inner.changed = loaded.iter().map(|d| days(d.date)).collect();
            let touched = inner.changed.clone();
            inner.touched.extend(touched);
        }
        let written = async {
            let published = self.publish_changed(store, out, recompute).await?;
            for d in &loaded {
                store.live_published(d).await?;
            }
            Ok::<_, Error>(published)
        }
        .await;
        // Nothing is lost: the items stay unpublished, and are read again next time.
        let mut published = written.inspect_err(|_| self.lock().shared_unread = true)?;
        published.extremes_recomputed = rebuilt;
        published.held = held;
        Ok(published)
    }

    /// Reads the items of `dates` into the state for the certificate; returns those held
    /// (not settled, and in need of a rebuild), which are not compared.
    pub(super) async fn load_for_certificate(
        &self,
        store: &dyn TripStore,
        dates: &[NaiveDate],
    ) -> Result<Vec<NaiveDate>> {
        let wanted: BTreeSet<NaiveDate> = dates.iter().copied().collect();
        {
            let mut inner = self.lock();
            inner.position = Position::default();
        }
        let (_, held, _) = self.load_shared(store, Some(&wanted)).await?;
        Ok(held)
    }

    /// Makes the nightly run's figures the base of `dates`' items (the settled ones).
    pub(super) async fn rebase_shared(&self, store: &dyn TripStore, dates: &[NaiveDate]) -> Result<()> {
        let mut wanted: BTreeSet<NaiveDate> = dates.iter().copied().collect();
        let read = store.live_dates().await?;
        // A date with rows and neither items nor a mark (its trips came before the live
        // state) is settled: no merge marked it.
        let unread: Vec<LiveDate> = wanted
            .iter()
            .filter(|d| !read.iter().any(|r| r.date == **d))
            .map(|&date| LiveDate { date, settled: true, shards: Vec::new() })
            .collect();
        for date in read.into_iter().chain(unread) {
            if wanted.remove(&date.date) && date.settled {
                // A merge that wrote it meanwhile keeps what it wrote; the next night rebases it.
                self.rebuild_date(store, &date).await?;
            }
        }
        Ok(())
    }

    /// Builds the items of every date of the table, where none is stored yet (the live
    /// state's first run over a table that has trips).
    pub(super) async fn build_shared(&self, store: &dyn TripStore) -> Result<bool> {
        if store.live_dates().await?.iter().any(|d| !d.shards.is_empty()) {
            return Ok(false);
        }
        let batches = store.export(None, &self.projection).await?;
        let mut dates = BTreeSet::new();
        for b in &batches {
            if let Some(col) = b.column_by_name("trip_date") {
                dates.extend(col.as_primitive::<arrow::datatypes::Date32Type>().iter().flatten().map(day));
            }
        }
        let dates: Vec<NaiveDate> = dates.into_iter().collect();
        self.rebase_shared(store, &dates).await?;
        Ok(!dates.is_empty())
    }
}

fn damaged() -> Error {
    Error::store("a live state item is damaged; run `tripflow kpi --all` to rebuild it from the table")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_item_round_trips_and_refuses_other_bytes() {
        let bytes = encode_item(&[None, None]);
        assert_eq!(decode_item(&bytes, 2), Some(vec![None, None]));
        assert_eq!(decode_item(&bytes, 3), None, "too few queries");
        assert_eq!(decode_item(&[5, 1], 1), None, "a length past the end");
    }
}
