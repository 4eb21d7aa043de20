//! Live KPIs (docs/design.md §7): the KPI queries kept up to date as ingest merges,
//! written to `kpi_output/live/date=YYYY-MM-DD/kpi.json`, and certified equal to the
//! nightly run.
//!
//! - [`plan`] reads each query's logical plan: a query of the maintained shape is kept
//!   from the rows each merge changes, as they were and as they are; any other is run
//!   again over its changed dates, at a slower interval.
//! - `state` keeps, per query, date and group, the rows and each aggregate's running
//!   value. The store writes it with the merge that changed it, in the same atomic batch
//!   ([`crate::store::TripStore::merge_live`]), so a restart resumes it as it was.
//! - At publication the running values become the Aggregate node's output, through
//!   DataFusion's own accumulators, and the rest of the query's plan (its SELECT list
//!   and ORDER BY) runs over them, so a live file is the nightly file's bytes, plus the
//!   stream position it is exact as of.
//! - The nightly job compares the two ([`LiveKpis::certify`]) and makes the batch's
//!   figures the live state's base.

pub mod plan;
mod shared;
mod state;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use arrow::array::RecordBatch;
use chrono::NaiveDate;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::datasource::{MemTable, provider_as_source};
use datafusion::logical_expr::{LogicalPlan, LogicalPlanBuilder, col};
use datafusion::prelude::{DataFrame, SessionContext};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

pub use self::plan::Keeping;
use self::plan::Maintained;
use self::state::{Evaluated, Folder, QueryState};
use super::engine::{self, DateSelection, ExportColumns, QueryResult};
use super::output::{self, OutputLocation};
use super::queries::KpiQuery;
use super::tables;
use crate::model::declared::Fields;
use crate::observe::progress::Quiet;
use crate::store::export::ExtraColumn;
use crate::store::{LIVE_STALE, LiveChange, LiveFold, LiveRecord, Projection, TripStore};
use crate::stream::{SequenceNumber, ShardId};
use crate::{Error, Result};

/// Where a live file is exact as of: per shard of the stream, the last record merged.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    /// The stream's identity.
    pub stream: String,
    /// Per shard, the sequence number of the last record merged.
    pub shards: BTreeMap<String, String>,
}

/// The live state's keys in the store.
const POSITION: &str = "position";

fn state_key(stem: &str, date: i32) -> String {
    format!("state/{stem}/{}", day(date))
}

/// A date changed since its live file was last written.
fn pending_key(date: i32) -> String {
    format!("pending/{}", day(date))
}

fn query_key(stem: &str) -> String {
    format!("query/{stem}")
}

/// The date of `days` since the epoch.
fn day(days: i32) -> NaiveDate {
    NaiveDate::from_num_days_from_ce_opt(days + 719_163).unwrap_or_default()
}

fn days(date: NaiveDate) -> i32 {
    use chrono::Datelike;
    date.num_days_from_ce() - 719_163
}

/// The queries, their live state, and what changed since it was last published.
pub struct LiveKpis {
    queries: Vec<KpiQuery>,
    keeping: Vec<Keeping>,
    maintained: Vec<Option<Maintained>>,
    projection: Projection,
    fields: Fields,
    ctx: SessionContext,
    inner: Mutex<Inner>,
    /// A digest of the maintained queries' fingerprints: the shard items' (shared state).
    shared_fingerprint: String,
}

#[derive(Default)]
struct Inner {
    /// Per query (empty for a recomputed one).
    states: Vec<QueryState>,
    /// Dates whose maintained figures changed since the last publication.
    changed: BTreeSet<i32>,
    /// Dates any row changed on since the recomputed queries last ran.
    touched: BTreeSet<i32>,
    position: Position,
    /// The recomputed queries' rows, per (query, date), and where they were computed.
    recomputed: BTreeMap<(usize, i32), Vec<RecordBatch>>,
    recomputed_at: Position,
    /// Shared state (DynamoDB): the items may hold changes not yet published (after a
    /// start, or a merge), which the next publication reads.
    shared_unread: bool,
}

/// How [`LiveKpis::resume`] found the stored state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resumed {
    /// As the last merge left it.
    Resumed,
    /// Rebuilt from the table, for this reason.
    Rebuilt(String),
}

/// What a publication wrote.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Published {
    /// Dates whose live file was written.
    pub written: Vec<NaiveDate>,
    /// Dates whose live file was removed: no row left.
    pub removed: Vec<NaiveDate>,
    /// Dates recomputed from the table first, an extreme having been retracted.
    pub extremes_recomputed: Vec<NaiveDate>,
    /// Dates not written: to be rebuilt from the table once settled (shared state).
    pub held: Vec<NaiveDate>,
}

fn engine(what: &str, e: datafusion::error::DataFusionError) -> Error {
    Error::Query { file: "live KPIs".into(), message: format!("{what}: {e}"), source: Some(e.into()) }
}

impl LiveKpis {
    /// Plans `queries` over the table with the further `kept` columns, and compiles
    /// those of the maintained shape ([`plan`]).
    ///
    /// # Errors
    /// When a query does not plan (named by its file).
    pub async fn compile(queries: &[KpiQuery], fields: &Fields, kept: Arc<[ExtraColumn]>) -> Result<Self> {
        let whole = Projection::all_with(kept.clone());
        let probe = engine::context_over(whole.schema(), &[])?;
        let mut keeping = Vec::new();
        let mut columns = BTreeSet::new();
        columns.insert(whole.schema().index_of("trip_date").expect("trips has trip_date"));
        for q in queries {
            let plan = analysed(&probe, q).await?;
            match plan::reason(&plan) {
                Some(why) => keeping.push(Keeping::Recomputed { why }),
                None => {
                    keeping.push(Keeping::Maintained);
                    columns.extend(row_columns(&plan).iter().filter_map(|c| whole.schema().index_of(c).ok()));
                }
            }
        }
        let projection = Projection::of_with(columns, kept);
        let ctx = engine::context_over(projection.schema(), &[])?;
        let mut maintained = Vec::new();
        for (q, k) in queries.iter().zip(&keeping) {
            maintained.push(match k {
                Keeping::Maintained => {
                    let plan = analysed(&ctx, q).await?;
                    let m = plan::compile(&ctx.state(), q, plan)?;
                    Some(m.ok_or_else(|| plan::not_maintained(q, "its plan changed shape over the live columns"))?)
                }
                Keeping::Recomputed { .. } => None,
            });
        }
        let inner = Inner { states: vec![QueryState::default(); queries.len()], ..Inner::default() };
        let shared_fingerprint = {
            use md5::{Digest, Md5};
            let all: String = maintained.iter().flatten().map(|m| format!("{}\n", m.fingerprint)).collect();
            Md5::digest(all.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
        };
        Ok(LiveKpis {
            shared_fingerprint,
            queries: queries.to_vec(),
            keeping,
            maintained,
            projection,
            fields: fields.clone(),
            ctx,
            inner: Mutex::new(inner),
        })
    }

    /// Each query, with how it is kept.
    pub fn explain(&self) -> impl Iterator<Item = (&KpiQuery, &Keeping)> {
        self.queries.iter().zip(&self.keeping)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The dates the maintained queries have figures for.
    pub fn dates(&self) -> BTreeSet<NaiveDate> {
        let inner = self.lock();
        inner.states.iter().flat_map(|s| s.dates.keys().copied().map(day)).collect()
    }

    /// The live state's position.
    pub fn position(&self) -> Position {
        self.lock().position.clone()
    }

    /// Reads the state `store` keeps, or rebuilds it from the table when there is none,
    /// it was made for other queries, or a merge ran without the live fold since.
    ///
    /// # Errors
    /// When the store fails, or a stored state is damaged.
    pub async fn resume(&self, store: &dyn TripStore) -> Result<Resumed> {
        if store.live_shared() {
            // Shard items, read at each publication; built here when there are none.
            // Those a stop or a crash left unpublished go out at the first publication.
            self.lock().shared_unread = true;
            return Ok(if self.build_shared(store).await? {
                Resumed::Rebuilt("the table has no live state yet".to_owned())
            } else {
                Resumed::Resumed
            });
        }
        if !store.keeps_live_state() {
            return Err(crate::store::no_live_state());
        }
        let records: BTreeMap<String, Vec<u8>> = store.live_records().await?.into_iter().collect();
        let why = if records.is_empty() {
            Some("the table has no live state yet".to_owned())
        } else if records.contains_key(LIVE_STALE) {
            Some("trips were merged without --live-kpis since it was written".to_owned())
        } else {
            self.stems()
                .find(|(_, q, m)| records.get(&query_key(&q.stem)).map(Vec::as_slice) != Some(m.fingerprint.as_bytes()))
                .map(|(_, q, _)| format!("it was made for another definition of {}", q.stem))
        };
        if let Some(why) = why {
            self.rebuild_all(store, &records).await?;
            return Ok(Resumed::Rebuilt(why));
        }
        let mut inner = self.lock();
        for (i, q, _) in self.stems() {
            let prefix = format!("state/{}/", q.stem);
            for (key, value) in records.range(prefix.clone()..).take_while(|(k, _)| k.starts_with(&prefix)) {
                let date = NaiveDate::parse_from_str(&key[prefix.len()..], "%Y-%m-%d").ok();
                let groups = state::decode(value);
                let (Some(date), Some(groups)) = (date, groups) else {
                    return Err(Error::store(format!(
                        "the live state {key} is damaged; run `tripflow kpi --all` to rebuild it from the table"
                    )));
                };
                inner.states[i].dates.insert(days(date), groups);
            }
        }
        if let Some(p) = records.get(POSITION) {
            inner.position = serde_json::from_slice(p).unwrap_or_default();
        }
        // Dates changed by merges whose publication a stop or a crash cut short.
        for key in records.keys().filter_map(|k| k.strip_prefix("pending/")) {
            if let Ok(date) = NaiveDate::parse_from_str(key, "%Y-%m-%d") {
                inner.changed.insert(days(date));
                inner.touched.insert(days(date));
            }
        }
        Ok(Resumed::Resumed)
    }

    /// The maintained queries: index, query, compiled plan.
    fn stems(&self) -> impl Iterator<Item = (usize, &KpiQuery, &Maintained)> {
        self.queries.iter().zip(&self.maintained).enumerate().filter_map(|(i, (q, m))| Some((i, q, m.as_ref()?)))
    }

    /// The maintained queries' states of the rows of `batches`, by query (a recomputed
    /// query's stays empty): each batch goes once through every query, which share what
    /// they evaluate. Adds to `touched` the dates they hold rows of.
    fn states_of(&self, batches: &[RecordBatch], touched: &mut BTreeSet<i32>) -> Result<Vec<QueryState>> {
        let folders = self.stems().map(|(i, _, m)| Ok((i, Folder::new(m)?))).collect::<Result<Vec<_>>>()?;
        let mut states = vec![QueryState::default(); self.queries.len()];
        for batch in batches {
            let mut evaluated = Evaluated::new();
            for (i, folder) in &folders {
                folder.fold(&mut states[*i], batch, touched, &mut evaluated)?;
            }
        }
        Ok(states)
    }

    /// The dates with an extreme left unknown by a retraction, in any maintained query.
    fn unknown_dates(&self) -> BTreeSet<i32> {
        let inner = self.lock();
        self.stems().flat_map(|(i, _, _)| Folder::unknown_dates(&inner.states[i])).collect()
    }

    /// Rebuilds every maintained query's state from the whole table, replacing what
    /// `stored` held.
    async fn rebuild_all(&self, store: &dyn TripStore, stored: &BTreeMap<String, Vec<u8>>) -> Result<()> {
        let batches = store.export(None, &self.projection).await?;
        let mut touched = BTreeSet::new();
        let fresh = self.states_of(&batches, &mut touched)?;
        let mut records = Vec::new();
        for (i, q, m) in self.stems() {
            for (d, groups) in &fresh[i].dates {
                records.push(LiveRecord { key: state_key(&q.stem, *d), value: Some(state::encode(groups)) });
            }
            records.push(LiveRecord { key: query_key(&q.stem), value: Some(m.fingerprint.clone().into_bytes()) });
        }
        // What was stored and is not written again goes: other dates, queries no longer
        // run, the stale mark.
        let written: BTreeSet<&str> = records.iter().map(|r| r.key.as_str()).collect();
        let gone: Vec<LiveRecord> = stored
            .keys()
            .filter(|k| k.starts_with("state/") || k.starts_with("query/") || *k == LIVE_STALE)
            .filter(|k| !written.contains(k.as_str()))
            .map(|k| LiveRecord { key: k.clone(), value: None })
            .collect();
        records.extend(gone);
        {
            let mut inner = self.lock();
            inner.states = fresh;
            inner.changed.extend(&touched);
            inner.touched.extend(&touched);
        }
        store.put_live(records).await
    }

    /// Rebuilds the maintained queries' state of `dates` from the table (the nightly
    /// run's rebase, and a retracted extreme's recomputation).
    ///
    /// # Errors
    /// When the export or the store fails.
    pub async fn rebuild(&self, store: &dyn TripStore, dates: &[NaiveDate]) -> Result<()> {
        if dates.is_empty() {
            return Ok(());
        }
        let batches = store.export(Some(dates.to_vec()), &self.projection).await?;
        let mut fresh = self.states_of(&batches, &mut BTreeSet::new())?;
        let wanted: BTreeSet<i32> = dates.iter().copied().map(days).collect();
        let mut records = Vec::new();
        {
            let mut inner = self.lock();
            for (i, q, _) in self.stems() {
                for &d in &wanted {
                    let groups = fresh[i].dates.remove(&d);
                    records.push(LiveRecord { key: state_key(&q.stem, d), value: groups.as_ref().map(state::encode) });
                    match groups {
                        Some(g) => inner.states[i].dates.insert(d, g),
                        None => inner.states[i].dates.remove(&d),
                    };
                }
            }
            // Their files are written again by the next publication, even by another process.
            records.extend(wanted.iter().map(|&d| LiveRecord { key: pending_key(d), value: Some(Vec::new()) }));
            inner.changed.extend(&wanted);
        }
        store.put_live(records).await
    }

    /// Sets the position the next merge's fold brings the state to: each shard's last
    /// record in the batch (shards not in it keep theirs).
    pub fn advance(&self, stream: &str, shards: &[ShardId], last: &[Option<SequenceNumber>]) {
        let mut inner = self.lock();
        inner.position.stream = stream.to_owned();
        for (shard, seq) in shards.iter().zip(last) {
            if let Some(seq) = seq {
                inner.position.shards.insert(shard.to_string(), seq.0.to_string());
            }
        }
    }

    /// True when a publication has something to write.
    pub fn has_changes(&self) -> bool {
        let inner = self.lock();
        !inner.changed.is_empty() || inner.shared_unread
    }

    /// True when the recomputed queries have changed dates to run again.
    pub fn has_recomputation(&self) -> bool {
        self.maintained.iter().any(Option::is_none) && !self.lock().touched.is_empty()
    }

    /// Writes the live file of every date whose figures changed since the last
    /// publication (removing it where no row is left); with `recompute`, the recomputed
    /// queries first run again over the dates changed since they last ran.
    ///
    /// # Errors
    /// When a query, the store or the output fails; the dates stay changed.
    pub async fn publish(&self, store: &dyn TripStore, out: &OutputLocation, recompute: bool) -> Result<Published> {
        if store.live_shared() {
            self.publish_shared(store, out, recompute).await
        } else {
            self.publish_changed(store, out, recompute).await
        }
    }

    /// [`LiveKpis::publish`] of the dates changed in this process (or pending in the
    /// store); shared state sets them from the items it read.
    async fn publish_changed(&self, store: &dyn TripStore, out: &OutputLocation, recompute: bool) -> Result<Published> {
        let mut published = Published::default();
        // A retracted extreme is recomputed from the table before anything is written.
        let unknown = self.unknown_dates();
        if !unknown.is_empty() {
            let dates: Vec<NaiveDate> = unknown.iter().copied().map(day).collect();
            self.rebuild(store, &dates).await?;
            published.extremes_recomputed = dates;
        }
        let recomputed_queries: Vec<usize> =
            (0..self.queries.len()).filter(|&i| self.maintained[i].is_none()).collect();
        let (mut dates, rerun) = {
            let mut inner = self.lock();
            let mut dates = std::mem::take(&mut inner.changed);
            let rerun = if recompute && !recomputed_queries.is_empty() {
                std::mem::take(&mut inner.touched)
            } else {
                BTreeSet::new()
            };
            dates.extend(&rerun);
            (dates, rerun)
        };
        let result = async {
            // The recomputed queries' rows: run again where asked, and wherever a date to
            // write has none yet.
            let missing: BTreeSet<i32> = {
                let inner = self.lock();
                dates
                    .iter()
                    .copied()
                    .filter(|d| recomputed_queries.iter().any(|&q| !inner.recomputed.contains_key(&(q, *d))))
                    .collect()
            };
            let run: BTreeSet<i32> = rerun.union(&missing).copied().collect();
            if !run.is_empty() && !recomputed_queries.is_empty() {
                self.recompute(store, &recomputed_queries, &run).await?;
            }
            let wanted: Vec<i32> = dates.iter().copied().collect();
            let results = self.results(&wanted).await?;
            let (per_date, _) = engine::render(&results)?;
            let (position, recomputed_at) = {
                let inner = self.lock();
                (inner.position.clone(), inner.recomputed_at.clone())
            };
            let recomputed_at = (!recomputed_queries.is_empty()).then_some(&recomputed_at);
            for &d in &wanted {
                let date = day(d);
                let key = format!("kpi_output/live/date={date}/kpi.json");
                match per_date.get(&date.to_string()) {
                    Some(json) => {
                        out.put(&key, live_json(json, &position, recomputed_at).into_bytes()).await?;
                        published.written.push(date);
                    }
                    None => {
                        out.delete(&key).await?;
                        published.removed.push(date);
                    }
                }
            }
            Ok::<_, Error>(())
        }
        .await;
        let result = match result {
            Ok(()) => {
                let done: Vec<LiveRecord> = {
                    let inner = self.lock();
                    dates
                        .iter()
                        .filter(|d| !inner.changed.contains(d) && !inner.touched.contains(d))
                        .map(|&d| LiveRecord { key: pending_key(d), value: None })
                        .collect()
                };
                if done.is_empty() || !store.keeps_live_state() { Ok(()) } else { store.put_live(done).await }
            }
            e => e,
        };
        if let Err(e) = result {
            // Nothing is lost: the dates are published next time.
            let mut inner = self.lock();
            inner.changed.append(&mut dates);
            if recompute {
                inner.touched.extend(&rerun);
            }
            return Err(e);
        }
        Ok(published)
    }

    /// Runs the recomputed queries over `dates` and keeps their rows.
    async fn recompute(&self, store: &dyn TripStore, which: &[usize], dates: &BTreeSet<i32>) -> Result<()> {
        let queries: Vec<KpiQuery> = which.iter().map(|&i| self.queries[i].clone()).collect();
        let selection = DateSelection::Dates(dates.iter().copied().map(day).collect());
        let position = self.position();
        let (results, _) =
            engine::run_queries(store, &queries, &self.fields, &selection, ExportColumns::Queried, &Quiet).await?;
        let mut inner = self.lock();
        for (&i, r) in which.iter().zip(&results) {
            for &d in dates {
                let rows = if r.schema.index_of("trip_date").is_ok() {
                    output::rows_of_date(&r.batches, "trip_date", &day(d).to_string())?
                } else {
                    Vec::new()
                };
                inner.recomputed.insert((i, d), rows);
            }
        }
        inner.recomputed_at = position;
        Ok(())
    }

    /// Every query's rows for `dates`: the maintained ones from the state, the
    /// recomputed ones as last run.
    async fn results(&self, dates: &[i32]) -> Result<Vec<QueryResult>> {
        let mut results = Vec::with_capacity(self.queries.len());
        for (i, q) in self.queries.iter().enumerate() {
            match &self.maintained[i] {
                Some(m) => results.push(self.maintained_result(q, m, i, dates).await?),
                None => {
                    let inner = self.lock();
                    let batches: Vec<RecordBatch> =
                        dates.iter().filter_map(|d| inner.recomputed.get(&(i, *d))).flatten().cloned().collect();
                    let schema = batches.first().map(RecordBatch::schema);
                    let Some(schema) = schema else {
                        // No rows on these dates: the query adds nothing to their files.
                        results.push(QueryResult {
                            query: q.clone(),
                            schema: Arc::new(arrow::datatypes::Schema::empty()),
                            batches: Vec::new(),
                        });
                        continue;
                    };
                    results.push(QueryResult { query: q.clone(), schema, batches });
                }
            }
        }
        Ok(results)
    }

    /// A maintained query's rows for `dates`: its plan with the Aggregate node replaced
    /// by the live figures.
    async fn maintained_result(&self, q: &KpiQuery, m: &Maintained, i: usize, dates: &[i32]) -> Result<QueryResult> {
        let figures = {
            let inner = self.lock();
            Folder::new(m)?.output(&inner.states[i], dates)?
        };
        let plan = replace_aggregate(&m.plan, figures, m).map_err(|e| engine("the live figures' plan", e))?;
        let df = DataFrame::new(self.ctx.state(), plan);
        let schema = Arc::new(df.schema().as_arrow().clone());
        let batches = df.collect().await.map_err(|e| engine::query_error(q, e))?;
        Ok(QueryResult { query: q.clone(), schema, batches })
    }

    /// Compares, for each of `dates`, the live figures of every maintained query with
    /// the nightly run's `results`, then makes the batch the live state's base.
    ///
    /// # Errors
    /// When a query or the store fails.
    pub async fn certify(
        &self,
        store: &dyn TripStore,
        results: &[QueryResult],
        dates: &[NaiveDate],
    ) -> Result<Certificate> {
        let (dates, held) = if store.live_shared() {
            let held = self.load_for_certificate(store, dates).await?;
            (dates.iter().copied().filter(|d| !held.contains(d)).collect::<Vec<_>>(), held)
        } else {
            (dates.to_vec(), Vec::new())
        };
        let dates = dates.as_slice();
        let wanted: Vec<i32> = dates.iter().copied().map(days).collect();
        // An extreme left unknown is recomputed, as a publication would.
        let unknown: Vec<NaiveDate> =
            self.unknown_dates().into_iter().filter(|d| wanted.contains(d)).map(day).collect();
        self.rebuild(store, &unknown).await?;
        let mut certificate = Certificate {
            position: self.position(),
            held: held.iter().map(ToString::to_string).collect(),
            compared: dates.iter().map(ToString::to_string).collect(),
            queries: self.stems().map(|(_, q, _)| q.stem.clone()).collect(),
            ..Certificate::default()
        };
        let mut unequal = BTreeSet::new();
        for (i, q, m) in self.stems() {
            let live = self.maintained_result(q, m, i, &wanted).await?;
            let Some(batch) = results.iter().find(|r| r.query.stem == q.stem) else { continue };
            let (live, _) = engine::render(std::slice::from_ref(&live))?;
            let (batch, _) = engine::render(std::slice::from_ref(batch))?;
            for date in &certificate.compared {
                let (l, b) = (live.get(date), batch.get(date));
                if l != b {
                    unequal.insert(date.clone());
                    certificate.mismatches.push(Mismatch {
                        date: date.clone(),
                        query: q.stem.clone(),
                        live: l.map(|t| section(t)),
                        batch: b.map(|t| section(t)),
                    });
                }
            }
        }
        certificate.equal = certificate.compared.iter().filter(|d| !unequal.contains(*d)).cloned().collect();
        if store.live_shared() {
            self.rebase_shared(store, dates).await?;
        } else {
            self.rebuild(store, dates).await?;
        }
        Ok(certificate)
    }
}

/// A date's rendered `kpi.json` of one query, as a JSON value for the certificate.
fn section(text: &str) -> Box<serde_json::value::RawValue> {
    serde_json::value::RawValue::from_string(text.trim_end().to_owned())
        .unwrap_or_else(|_| serde_json::value::to_raw_value(text).expect("a string is JSON"))
}

/// The nightly run's comparison of the live figures with its own.
#[derive(Debug, Default, Serialize)]
pub struct Certificate {
    /// Set when the live state could not be compared, being rebuilt from the table
    /// first (why); nothing is compared then.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rebuilt: Option<String>,
    /// The live state's position when compared.
    pub position: Position,
    /// The maintained queries compared.
    pub queries: Vec<String>,
    /// The dates compared.
    pub compared: Vec<String>,
    /// The dates not compared: their shared live state is being written, and needs a
    /// rebuild from the table once settled (DynamoDB).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub held: Vec<String>,
    /// The dates whose every maintained query was equal.
    pub equal: Vec<String>,
    /// Each (date, query) that differed, with both files' text of it.
    pub mismatches: Vec<Mismatch>,
}

/// A date and query whose live figures differ from the batch's.
#[derive(Debug, Serialize)]
pub struct Mismatch {
    /// The date.
    pub date: String,
    /// The query's stem.
    pub query: String,
    /// The live file's figures of that query (`null`: none).
    pub live: Option<Box<serde_json::value::RawValue>>,
    /// The nightly file's (`null`: none).
    pub batch: Option<Box<serde_json::value::RawValue>>,
}

/// The live file of a date: the nightly file's text, then where it is exact as of.
fn live_json(nightly: &str, position: &Position, recomputed_at: Option<&Position>) -> String {
    let body = nightly.trim_end().strip_suffix('}').unwrap_or(nightly).trim_end();
    let position = serde_json::to_string(position).unwrap_or_default();
    let recomputed = recomputed_at
        .map(|p| format!(",\n  \"live_recomputed_position\": {}", serde_json::to_string(p).unwrap_or_default()))
        .unwrap_or_default();
    format!("{body},\n  \"live_position\": {position}{recomputed}\n}}\n")
}

/// The nightly file's text of a live file: without the position fields.
pub fn nightly_text(live: &str) -> String {
    match live.find(",\n  \"live_position\": ") {
        Some(at) => format!("{}\n}}\n", &live[..at]),
        None => live.to_owned(),
    }
}

/// `q`'s plan, analysed (type coercion applied) but not optimised: the shape it was
/// written in.
async fn analysed(ctx: &SessionContext, q: &KpiQuery) -> Result<LogicalPlan> {
    let df = ctx.sql_with_options(&q.sql, tables::read_only()).await.map_err(|e| engine::query_error(q, e))?;
    let state = ctx.state();
    state
        .analyzer()
        .execute_and_check(df.into_unoptimized_plan(), state.config_options(), |_, _| {})
        .map_err(|e| engine::query_error(q, e))
}

/// The columns of the rows a plan's aggregation reads (its filter, grouping and
/// aggregate arguments).
fn row_columns(plan: &LogicalPlan) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let _ = plan.apply(|node| {
        if matches!(node, LogicalPlan::Aggregate(_) | LogicalPlan::Filter(_)) {
            for e in node.expressions() {
                names.extend(e.column_refs().into_iter().map(|c| c.name.clone()));
            }
        }
        Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
    });
    names
}

/// `plan` with its Aggregate node (and what is below) replaced by a scan of `figures`,
/// whose columns `c0`, `c1`, … are renamed to the Aggregate's output columns.
fn replace_aggregate(
    plan: &LogicalPlan,
    figures: RecordBatch,
    m: &Maintained,
) -> datafusion::error::Result<LogicalPlan> {
    let table = MemTable::try_new(figures.schema(), vec![vec![figures]])?;
    let scan = LogicalPlanBuilder::scan("live_figures", provider_as_source(Arc::new(table)), None)?;
    let names = m.output.iter().enumerate().map(|(i, (qualifier, field))| {
        col(datafusion::common::Column::new(Some("live_figures"), format!("c{i}")))
            .alias_qualified(qualifier.cloned(), field.name())
    });
    let replacement = scan.project(names)?.build()?;
    let replaced = plan.clone().transform_up(|node| {
        Ok(match node {
            LogicalPlan::Aggregate(_) => Transformed::yes(replacement.clone()),
            other => Transformed::no(other),
        })
    })?;
    Ok(replaced.data)
}

impl LiveFold for LiveKpis {
    fn projection(&self) -> &Projection {
        &self.projection
    }

    fn fingerprint(&self) -> &str {
        &self.shared_fingerprint
    }

    fn changes(&self, before: &[RecordBatch], after: &[RecordBatch]) -> Result<Vec<(NaiveDate, LiveChange)>> {
        self.shared_changes(before, after)
    }

    fn apply(&self, stored: Option<&[u8]>, change: &LiveChange) -> Result<Vec<u8>> {
        self.shared_apply(stored, change)
    }

    fn fold(&self, before: &[RecordBatch], after: &[RecordBatch]) -> Result<Vec<LiveRecord>> {
        // The change, per query: the rows retracted and those added; then taken in by
        // the state.
        let mut all = BTreeSet::new();
        let retracted = self.states_of(before, &mut all)?;
        let added = self.states_of(after, &mut all)?;
        let mut inner = self.lock();
        let mut records = Vec::new();
        for (i, q, m) in self.stems() {
            inner.states[i].absorb(&added[i], &retracted[i], &m.kinds());
            for &d in &all {
                let value = inner.states[i].dates.get(&d).map(state::encode);
                records.push(LiveRecord { key: state_key(&q.stem, d), value });
            }
        }
        // Any row's date, for the recomputed queries.
        let mut touched = BTreeSet::new();
        if self.maintained.iter().any(Option::is_none) {
            for b in before.iter().chain(after) {
                if let Some(dates) = b.column_by_name("trip_date") {
                    let dates = arrow::array::AsArray::as_primitive::<arrow::datatypes::Date32Type>(dates.as_ref());
                    touched.extend(dates.iter().flatten());
                }
            }
        }
        // Stored with the merge, so a date whose file a crash kept from being written
        // is written after the restart.
        for &d in all.union(&touched).filter(|d| !inner.changed.contains(d) && !inner.touched.contains(d)) {
            records.push(LiveRecord { key: pending_key(d), value: Some(Vec::new()) });
        }
        inner.touched.extend(touched);
        inner.changed.extend(all);
        records.push(LiveRecord {
            key: POSITION.into(),
            value: Some(serde_json::to_vec(&inner.position).unwrap_or_default()),
        });
        Ok(records)
    }
}

/// Logs how each query is kept.
pub fn log_keeping(live: &LiveKpis) {
    for (q, k) in live.explain() {
        match k {
            Keeping::Maintained => info!(query = %q.stem, "Live: maintained from each merge."),
            Keeping::Recomputed { why } => warn!(query = %q.stem, %why, "Live: recomputed for its changed dates."),
        }
    }
}
