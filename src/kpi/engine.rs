//! The KPI job's engine, which the nightly run and the live KPIs share: the queries
//! planned and run with DataFusion over an export of the trip table, and their results
//! rendered as the text of each date's `kpi.json`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use arrow::array::{Array, RecordBatch};
use arrow::datatypes::SchemaRef;
use arrow::util::display::ArrayFormatter;
use chrono::NaiveDate;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::datasource::MemTable;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::{DataFrame, SessionConfig, SessionContext};

use super::output;
use super::queries::{DEFAULT_QUERY, KpiQuery};
use crate::error::{Context, Stage};
use crate::model::declared::Fields;
use crate::observe::progress::Progress;
use crate::store::export::ExtraColumn;
use crate::store::{Projection, TripStore};
use crate::{Error, Result};

/// Which dates the job reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DateSelection {
    /// Every date in the table. The dates marked changed are cleared after, since they
    /// are among them.
    All,
    /// Only these dates (a backfill); the marks are left for the nightly run.
    Dates(Vec<NaiveDate>),
    /// The nightly run: these dates (the scheduled date and its lookback), and every
    /// date marked changed since the last run however old (docs/design.md §5), whose
    /// marks it clears once their files are written.
    Nightly(Vec<NaiveDate>),
}

impl DateSelection {
    /// The dates selected; `None` for every date in the table.
    pub fn dates(&self) -> Option<&[NaiveDate]> {
        match self {
            DateSelection::All => None,
            DateSelection::Dates(d) | DateSelection::Nightly(d) => Some(d),
        }
    }
}

/// A query's results.
#[derive(Debug)]
pub struct QueryResult {
    /// The query.
    pub query: KpiQuery,
    /// Its columns.
    pub schema: SchemaRef,
    /// Its rows.
    pub batches: Vec<RecordBatch>,
}

/// Names the file, and the line where DataFusion can tell it, of a failed query.
pub(crate) fn query_error(q: &KpiQuery, e: datafusion::error::DataFusionError) -> Error {
    let line = e.diagnostic().and_then(|d| d.span).map(|span| span.start.line).or_else(|| {
        // Parser errors carry the position in their text: "at Line: 3, Column: 5".
        let text = e.to_string();
        let at = text.find("Line: ")? + "Line: ".len();
        text[at..].split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
    });
    let file = match line {
        Some(line) => format!("{}:{line}", q.path.display()),
        None => q.path.display().to_string(),
    };
    Error::Query { file, message: e.to_string(), source: Some(e.into()) }
}

/// Which columns of the trip table the KPI job exports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportColumns {
    /// Only those the queries read: what a job without snapshots needs.
    Queried,
    /// Every column, for the Parquet snapshots.
    All,
}

/// Plans every query on `ctx`, naming the file of the first that does not plan.
pub(crate) async fn plan_all<'q>(
    ctx: &SessionContext,
    queries: &'q [KpiQuery],
) -> Result<Vec<(&'q KpiQuery, DataFrame)>> {
    let read_only = crate::kpi::tables::read_only();
    let mut planned = Vec::with_capacity(queries.len());
    for q in queries {
        let df = ctx.sql_with_options(&q.sql, read_only).await.map_err(|e| query_error(q, e))?;
        planned.push((q, df));
    }
    Ok(planned)
}

/// A context whose `trips` table holds `batches`, dealt round-robin into one partition
/// per core, so the queries use every core; the results do not depend on it (exact
/// decimal sums, explicit ORDER BY).
pub(crate) fn context_over(schema: SchemaRef, batches: &[RecordBatch]) -> Result<SessionContext> {
    let ctx = SessionContext::new();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut partitions = vec![Vec::new(); cores.min(batches.len()).max(1)];
    for (i, b) in batches.iter().enumerate() {
        let n = partitions.len();
        partitions[i % n].push(b.clone());
    }
    let engine = |e: datafusion::error::DataFusionError| Error::Query {
        file: "trips".into(),
        message: format!("cannot register the exported trips with DataFusion: {e}"),
        source: Some(e.into()),
    };
    let table = MemTable::try_new(schema, partitions).map_err(engine)?;
    ctx.register_table("trips", Arc::new(table)).map_err(engine)?;
    Ok(ctx)
}

/// The columns of `trips` (of `schema`) the planned queries read, from their optimised
/// plans' scans (`None`: all of them).
fn read_columns(planned: &[(&KpiQuery, DataFrame)], schema: &SchemaRef) -> Result<Option<BTreeSet<usize>>> {
    let mut read = BTreeSet::new();
    let mut all = false;
    for (q, df) in planned {
        let plan = df.clone().into_optimized_plan().map_err(|e| query_error(q, e))?;
        plan.apply_with_subqueries(|node| {
            if let LogicalPlan::TableScan(scan) = node
                && scan.table_name.table() == "trips"
            {
                match &scan.projection {
                    Some(p) => read.extend(p.iter().copied()),
                    None => all = true,
                }
                for filter in &scan.filters {
                    read.extend(filter.column_refs().iter().filter_map(|c| schema.index_of(&c.name).ok()));
                }
            }
            Ok(TreeNodeRecursion::Continue)
        })
        .map_err(|e| query_error(q, e))?;
    }
    Ok((!all).then_some(read))
}

/// Plans every query against an empty `trips` table with the further `columns` of
/// [`table_columns`], naming the file (and line) of the first that does not parse or
/// plan. `tripflow run` and `tripflow schedule` call it before any long work, so a typo
/// costs seconds, not a night.
///
/// # Errors
/// The first query that does not plan.
pub async fn check(queries: &[KpiQuery], columns: Arc<[ExtraColumn]>) -> Result<()> {
    let probe = context_over(Projection::all_with(columns).schema(), &[])?;
    plan_all(&probe, queries).await.map(drop)
}

/// The columns of `store`'s `trips` after the built-in ones: a typed column per field
/// `fields` declares, then a text column per undeclared field of its ledger
/// ([`crate::store::export::table_columns`]).
///
/// # Errors
/// When the ledger cannot be read.
pub async fn table_columns(store: &dyn TripStore, fields: &Fields) -> Result<Arc<[ExtraColumn]>> {
    Ok(crate::store::export::table_columns(fields, &store.seen_fields().await?))
}

/// What a KPI job's export held.
#[derive(Debug, Default)]
pub struct Exported {
    /// Trips exported.
    pub rows: usize,
    /// The exported trips, kept only when every column was exported (the snapshots
    /// are cut from them); otherwise the export went through a spill.
    pub batches: Vec<RecordBatch>,
}

/// Runs the queries over the exported table and returns their results with the export.
///
/// Every query is planned first against an empty table, so a broken one fails before
/// the export; the plans name the columns to export. (With only the columns the default
/// queries read, a 1M-trip export holds about 60 MB instead of 230.) Without snapshots
/// the export is spilled to Arrow files as it is made and the queries read those a
/// batch at a time, so the job's memory does not grow with the table.
///
/// # Errors
/// When the export fails, or a query does not plan or run (named by its file).
pub async fn run_queries(
    store: &dyn TripStore,
    queries: &[KpiQuery],
    fields: &Fields,
    dates: &DateSelection,
    columns: ExportColumns,
    progress: &dyn Progress,
) -> Result<(Vec<QueryResult>, Exported)> {
    let wanted = dates.dates().map(<[NaiveDate]>::to_vec);
    // The table's columns: the built-in ones, then one per undeclared field kept.
    let whole = Projection::all_with(table_columns(store, fields).await?);
    let probe = context_over(whole.schema(), &[])?;
    let read = read_columns(&plan_all(&probe, queries).await?, &whole.schema())?;
    let mut projection = match (columns, read) {
        (ExportColumns::Queried, Some(read)) => Projection::of_with(read, whole.kept()),
        _ => whole.clone(),
    };
    // A query whose optimised plan dropped a column it names needs them all.
    if !projection.is_all() && plan_all(&context_over(projection.schema(), &[])?, queries).await.is_err() {
        projection = whole;
    }
    let (ctx, exported, spill) = match columns {
        ExportColumns::All => {
            let batches = store.export(wanted, &projection).await?;
            let rows = batches.iter().map(RecordBatch::num_rows).sum();
            (context_over(projection.schema(), &batches)?, Exported { rows, batches }, None)
        }
        ExportColumns::Queried => {
            let spill = Spill::write(store, wanted, &projection).await?;
            let ctx = spill.context().await?;
            (ctx, Exported { rows: spill.rows, batches: Vec::new() }, Some(spill))
        }
    };
    progress.exported(exported.rows as u64);
    let planned = plan_all(&ctx, queries).await?;
    let mut results = Vec::with_capacity(planned.len());
    let of = planned.len();
    for (i, (q, df)) in planned.into_iter().enumerate() {
        progress.query(&q.stem, i, of);
        let schema = Arc::new(df.schema().as_arrow().clone());
        let batches = df.collect().await.map_err(|e| query_error(q, e))?;
        results.push(QueryResult { query: q.clone(), schema, batches });
    }
    // The spill folder goes once every query has read it.
    drop(spill);
    Ok((results, exported))
}

/// A KPI job's export, written as it is made to Arrow IPC files in a temporary folder
/// (under `$TMPDIR`), one per core, that DataFusion then reads a batch at a time. The
/// job holds a few batches instead of the table; the folder is removed on drop.
struct Spill {
    dir: tempfile::TempDir,
    schema: SchemaRef,
    rows: usize,
}

impl Spill {
    /// Exports `dates` (or all) of `projection` from `store` into a new spill.
    async fn write(store: &dyn TripStore, dates: Option<Vec<NaiveDate>>, projection: &Projection) -> Result<Self> {
        use arrow::ipc::writer::FileWriter;
        let dir = tempfile::Builder::new()
            .prefix("tripflow-kpi-")
            .tempdir()
            .stage(Stage::Output, "cannot create the KPI job's spill folder; set TMPDIR to a folder with room")?;
        let schema = projection.schema();
        let failed = |path: &std::path::Path| {
            format!("cannot write the KPI job's spill file {}; set TMPDIR to a folder with room", path.display())
        };
        let files = std::thread::available_parallelism().map_or(1, |n| n.get());
        let mut writers = Vec::with_capacity(files);
        for i in 0..files {
            let path = dir.path().join(format!("part-{i}.arrow"));
            let file = std::fs::File::create(&path).stage(Stage::Output, failed(&path))?;
            let writer =
                FileWriter::try_new(std::io::BufWriter::new(file), &schema).stage(Stage::Output, failed(&path))?;
            writers.push((path, writer));
        }
        let (tx, mut rx) = tokio::sync::mpsc::channel(2);
        let export = store.export_to(dates, projection, tx);
        let write = async move {
            let mut rows = 0;
            let mut next = 0;
            while let Some(batch) = rx.recv().await {
                rows += batch.num_rows();
                let (path, writer) = &mut writers[next % files];
                writer.write(&batch).stage(Stage::Output, failed(path))?;
                next += 1;
            }
            for (path, mut writer) in writers {
                writer.finish().stage(Stage::Output, failed(&path))?;
            }
            Ok::<_, Error>(rows)
        };
        let (exported, written) = tokio::join!(export, write);
        // The writer's failure first: it is why an export stops early.
        let rows = written?;
        exported?;
        Ok(Spill { dir, schema, rows })
    }

    /// A context whose `trips` table reads the spill.
    async fn context(&self) -> Result<SessionContext> {
        // One partition per file, each read a batch at a time. (A file split into byte
        // ranges is read range by range, and DataFusion 55 fetches a whole range of an
        // Arrow file at once: the 10M-trip job went from 110 MiB to 670 MiB that way.)
        let ctx = SessionContext::new_with_config(SessionConfig::new().with_repartition_file_scans(false));
        let options =
            datafusion::execution::options::ArrowReadOptions { schema: Some(&self.schema), ..Default::default() };
        let folder = format!("{}/", self.dir.path().display());
        ctx.register_arrow("trips", &folder, options)
            .await
            .stage(Stage::Output, format!("cannot read the KPI job's spill folder {folder}"))?;
        Ok(ctx)
    }
}

pub(crate) type Rendered = (BTreeMap<String, String>, Vec<(String, String)>);

/// A date's `kpi.json` in the making: the default query's flat fields, then each
/// further query's rows, by stem.
type DateFields = (Vec<String>, Vec<(String, Vec<String>)>);

/// Builds the files' text: per date, and per date-less query.
pub(crate) fn render(results: &[QueryResult]) -> Result<Rendered> {
    let mut dates: BTreeMap<String, DateFields> = BTreeMap::new();
    let mut summaries = Vec::new();
    for r in results {
        let stem = &r.query.stem;
        let Ok(date_col) = r.schema.index_of("trip_date") else {
            let mut rows = Vec::new();
            for b in &r.batches {
                let f = output::formatters(b)?;
                rows.extend((0..b.num_rows()).map(|i| output::json_row(b, &f, i, None)));
            }
            summaries.push((stem.clone(), json_array(&rows, "") + "\n"));
            continue;
        };
        for b in &r.batches {
            let f = output::formatters(b)?;
            let date_array = b.column(date_col);
            let date_fmt =
                ArrayFormatter::try_new(date_array.as_ref(), &Default::default()).stage(Stage::Output, "trip_date")?;
            for row in 0..b.num_rows() {
                if date_array.is_null(row) {
                    continue;
                }
                let entry = dates.entry(date_fmt.value(row).to_string()).or_default();
                if stem == DEFAULT_QUERY {
                    for (i, field) in b.schema().fields().iter().enumerate() {
                        entry.0.push(format!(
                            "{}: {}",
                            serde_json::to_string(field.name()).unwrap_or_default(),
                            output::json_value(b.column(i).as_ref(), &f[i], row)
                        ));
                    }
                } else {
                    let row_json = output::json_row(b, &f, row, Some(date_col));
                    match entry.1.last_mut() {
                        Some((s, rows)) if s == stem => rows.push(row_json),
                        _ => entry.1.push((stem.clone(), vec![row_json])),
                    }
                }
            }
        }
    }
    let per_date = dates
        .into_iter()
        .map(|(date, (flat, nested))| {
            let mut fields = if flat.is_empty() { vec![format!("\"trip_date\": \"{date}\"")] } else { flat };
            for (stem, rows) in nested {
                fields.push(format!(
                    "{}: {}",
                    serde_json::to_string(&stem).unwrap_or_default(),
                    json_array(&rows, "  ")
                ));
            }
            (date, format!("{{\n  {}\n}}\n", fields.join(",\n  ")))
        })
        .collect();
    Ok((per_date, summaries))
}

fn json_array(rows: &[String], indent: &str) -> String {
    if rows.is_empty() {
        return "[]".into();
    }
    let inner: Vec<String> = rows.iter().map(|r| format!("{indent}  {r}")).collect();
    format!("[\n{}\n{indent}]", inner.join(",\n"))
}
