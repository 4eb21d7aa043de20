//! The nightly KPI job: export the trip table to Arrow, run every `queries/*.sql` with
//! DataFusion over it as `trips`, and write one `kpi_output/date=YYYY-MM-DD/kpi.json`
//! per date.
//!
//! Output shape (documented in the README):
//! - the columns of `daily_kpis.sql` (the default query) sit flat at the top level;
//! - every further query with a `trip_date` column appears under its file stem, as an
//!   array of its rows for that date (without `trip_date`);
//! - a query without `trip_date` is written once, to `kpi_output/summary/<stem>.json`.
//!
//! Every query is planned before any runs, so one broken file writes nothing.

pub mod engine;
pub mod live;
pub mod output;
pub mod queries;
pub mod report;
pub mod schedule;
pub mod sql;
pub mod tables;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use arrow::array::{Array, RecordBatch};
use arrow::util::display::ArrayFormatter;
use chrono::NaiveDate;
use tracing::{info, warn};

use self::engine::render;
pub use self::engine::{DateSelection, ExportColumns, Exported, QueryResult, check, run_queries, table_columns};
pub use self::output::OutputLocation;
pub use self::queries::{DEFAULT_QUERY, KpiQuery};
use crate::error::{Context, Stage};
use crate::model::declared::Fields;
use crate::observe::progress::Progress;
use crate::store::TripStore;
use crate::{Error, Result};

/// What the job wrote.
#[derive(Debug)]
pub struct KpiReport {
    /// The dates exported and queried, in order (`None`: every date in the table).
    pub queried: Option<Vec<NaiveDate>>,
    /// The dates marked changed when the job began, recomputed with the others.
    pub changed: Vec<NaiveDate>,
    /// Marked dates left without completed trips (each trip's end moved to another
    /// day): their `kpi.json`, `kpi.parquet` and snapshot were removed.
    pub removed: Vec<NaiveDate>,
    /// Marks cleared after the files were written. A date marked again during the run,
    /// or marked too recently to be settled (DynamoDB), keeps its mark.
    pub cleared: usize,
    /// Dates with a `kpi.json`, in order.
    pub dates: Vec<NaiveDate>,
    /// Every KPI file written (JSON, and Parquet when asked).
    pub files: Vec<String>,
    /// Where the report went: `kpi_output/report.html` under the output location.
    pub report: String,
    /// Each query's results, in file order.
    pub results: Vec<QueryResult>,
    /// Trips exported to the query engine.
    pub exported_rows: usize,
    /// DynamoDB capacity the job consumed (the export's reads, the marks' clearing).
    pub consumed: crate::store::Consumed,
    /// Bytes of the files written (S3 PUTs, on S3).
    pub bytes_written: u64,
    /// The comparison of the live KPIs with this run's, when the table keeps them
    /// (`kpi_output/live/certificate.json`).
    pub certificate: Option<crate::kpi::live::Certificate>,
}

impl KpiReport {
    /// The default query's results, for printing.
    pub fn default_results(&self) -> Option<&[RecordBatch]> {
        self.results.iter().find(|r| r.query.stem == DEFAULT_QUERY).map(|r| r.batches.as_slice())
    }
}

/// Runs the job: queries, then one `kpi.json` per date, one summary file per date-less
/// query, and the report ([`crate::kpi::report`]) over every date under `out`.
///
/// Unless given dates, the job first reads the dates marked changed and recomputes them
/// too; once every file is written it clears the marks it read (docs/design.md §5). A
/// marked date left without completed trips has its files removed.
///
/// # Errors
/// When a query fails (nothing is written then), an output cannot be written, or the
/// marks cannot be read or cleared.
pub async fn run(
    store: &dyn TripStore,
    queries: &[KpiQuery],
    fields: &Fields,
    dates: &DateSelection,
    out: &OutputLocation,
    formats: Formats,
    progress: &dyn Progress,
) -> Result<KpiReport> {
    let (consumed_before, written_before) = (store.consumed(), out.bytes_written());
    // Read before the export, so every change a mark covers is in it.
    let marks = match dates {
        DateSelection::Dates(_) => Vec::new(),
        DateSelection::All | DateSelection::Nightly(_) => store.changed_dates().await?,
    };
    let changed: Vec<NaiveDate> = marks.iter().map(|m| m.date).collect();
    let dates = match dates {
        DateSelection::Nightly(window) => {
            let all: BTreeSet<NaiveDate> = window.iter().chain(&changed).copied().collect();
            DateSelection::Nightly(all.into_iter().collect())
        }
        other => other.clone(),
    };
    let queried = dates.dates().map(<[NaiveDate]>::to_vec);
    if !changed.is_empty() {
        info!(changed = changed.len(), "Recomputing the dates whose trips changed since the last run.");
    }
    let columns = if formats.parquet { ExportColumns::All } else { ExportColumns::Queried };
    let (results, export) = run_queries(store, queries, fields, &dates, columns, progress).await?;
    let exported_rows = export.rows;
    let (per_date, summaries) = render(&results)?;
    let mut files = Vec::new();
    for (date, json) in &per_date {
        files.push(out.put(&format!("kpi_output/date={date}/kpi.json"), json.clone().into_bytes()).await?);
    }
    if formats.parquet {
        if let Some(daily) = results.iter().find(|r| r.query.stem == DEFAULT_QUERY) {
            for date in per_date.keys() {
                let rows = output::rows_of_date(&daily.batches, "trip_date", date)?;
                let bytes = output::parquet_bytes(daily.schema.clone(), &rows)?;
                files.push(out.put(&format!("kpi_output/date={date}/kpi.parquet"), bytes).await?);
            }
        }
        files.extend(write_snapshots(&export.batches, out).await?);
    }
    for (stem, json) in summaries {
        files.push(out.put(&format!("kpi_output/summary/{stem}.json"), json.into_bytes()).await?);
    }
    // A changed date without completed trips left: its published figures are gone.
    let removed: Vec<NaiveDate> =
        changed.iter().copied().filter(|d| !per_date.contains_key(&d.format("%Y-%m-%d").to_string())).collect();
    for date in &removed {
        for key in [
            format!("kpi_output/date={date}/kpi.json"),
            format!("kpi_output/date={date}/kpi.parquet"),
            format!("snapshots/trip_date={date}/trips.parquet"),
        ] {
            out.delete(&key).await?;
        }
        warn!(%date, "No completed trips are left on a changed date; its KPI files were removed.");
    }
    // Last, over every date under `out` (this run's and earlier ones').
    let written = crate::kpi::report::write(out).await?;
    for (file, why) in &written.skipped {
        warn!(file = %file, %why, "The KPI report skips a file it cannot read.");
    }
    let certificate = certify(store, queries, fields, &results, queried.as_deref(), &per_date, out).await?;
    if let Some(c) = &certificate {
        files.push(format!("{}/{CERTIFICATE}", out.display().trim_end_matches('/')));
        if !c.mismatches.is_empty() {
            warn!(
                dates = c.compared.len() - c.equal.len(),
                mismatches = c.mismatches.len(),
                "The live KPIs differed from this run's; see {CERTIFICATE}. The live state now starts from this run's."
            );
        }
    }
    // Only now that every file is written: a failure before leaves the marks for the next run.
    let cleared = store.clear_changed(&marks).await?;
    let dates = per_date.keys().filter_map(|d| NaiveDate::parse_from_str(d, "%Y-%m-%d").ok()).collect::<Vec<_>>();
    info!(dates = dates.len(), files = files.len(), exported_rows, changed = changed.len(), cleared, "KPI job done.");
    let consumed = store.consumed().since(consumed_before);
    let bytes_written = out.bytes_written() - written_before;
    Ok(KpiReport {
        queried,
        changed,
        removed,
        cleared,
        dates,
        files,
        report: written.path,
        results,
        exported_rows,
        consumed,
        bytes_written,
        certificate,
    })
}

/// Where the nightly run's comparison with the live KPIs goes, under `--out`.
pub const CERTIFICATE: &str = "kpi_output/live/certificate.json";

/// When `store` keeps live KPIs: compares them, for each date of this run (`queried`,
/// or every date either side has), with the run's `results`, writes the certificate,
/// and makes the run's figures the live state's base.
async fn certify(
    store: &dyn TripStore,
    queries: &[KpiQuery],
    fields: &Fields,
    results: &[QueryResult],
    queried: Option<&[NaiveDate]>,
    per_date: &BTreeMap<String, String>,
    out: &OutputLocation,
) -> Result<Option<crate::kpi::live::Certificate>> {
    let keeps = if store.live_shared() {
        store.live_dates().await?.iter().any(|d| !d.shards.is_empty())
    } else {
        !store.live_records().await?.is_empty()
    };
    if !keeps {
        return Ok(None);
    }
    let live = crate::kpi::live::LiveKpis::compile(queries, fields, table_columns(store, fields).await?).await?;
    let certificate = match live.resume(store).await? {
        crate::kpi::live::Resumed::Rebuilt(why) => {
            warn!(%why, "The live KPIs' state was rebuilt from the table; there was nothing to compare.");
            crate::kpi::live::Certificate { rebuilt: Some(why), position: live.position(), ..Default::default() }
        }
        crate::kpi::live::Resumed::Resumed => {
            let dates: Vec<NaiveDate> = match queried {
                Some(d) => d.to_vec(),
                None => {
                    let mut all = live.dates();
                    all.extend(per_date.keys().filter_map(|d| NaiveDate::parse_from_str(d, "%Y-%m-%d").ok()));
                    all.into_iter().collect()
                }
            };
            live.certify(store, results, &dates).await?
        }
    };
    let mut json = serde_json::to_string_pretty(&certificate).map_err(|e| Error::output(e.to_string()))?;
    json.push('\n');
    out.put(CERTIFICATE, json.into_bytes()).await?;
    info!(
        compared = certificate.compared.len(),
        equal = certificate.equal.len(),
        mismatches = certificate.mismatches.len(),
        "Live KPIs certified against this run."
    );
    Ok(Some(certificate))
}

/// Which files the job writes besides `kpi.json`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Formats {
    /// Also `kpi.parquet` beside each `kpi.json`, and a Parquet snapshot of the exported
    /// trips, partitioned by date: `snapshots/trip_date=YYYY-MM-DD/trips.parquet`.
    pub parquet: bool,
}

/// Writes the exported trips that have a `trip_date` as one Parquet file per date, in
/// the hive layout (`trip_date` is in the path, not in the file).
async fn write_snapshots(export: &[RecordBatch], out: &OutputLocation) -> Result<Vec<String>> {
    let mut dates = std::collections::BTreeSet::new();
    for b in export {
        let col = b.column_by_name("trip_date").expect("trip table has trip_date");
        let f = ArrayFormatter::try_new(col.as_ref(), &Default::default()).stage(Stage::Output, "snapshot dates")?;
        dates.extend((0..b.num_rows()).filter(|&i| col.is_valid(i)).map(|i| f.value(i).to_string()));
    }
    // Every column but `trip_date`, which the path holds: the built-in ones and the kept.
    let Some(first) = export.first() else { return Ok(Vec::new()) };
    let date_col = first.schema().index_of("trip_date").expect("trip table has trip_date");
    let keep: Vec<usize> = (0..first.num_columns()).filter(|&i| i != date_col).collect();
    let schema = Arc::new(first.schema().project(&keep).stage(Stage::Output, "snapshot columns")?);
    let mut files = Vec::new();
    for date in dates {
        let rows = output::rows_of_date(export, "trip_date", &date)?;
        let rows = rows
            .iter()
            .map(|b| b.project(&keep))
            .collect::<Result<Vec<_>, _>>()
            .stage(Stage::Output, "snapshot rows")?;
        let bytes = output::parquet_bytes(schema.clone(), &rows)?;
        files.push(out.put(&format!("snapshots/trip_date={date}/trips.parquet"), bytes).await?);
    }
    Ok(files)
}
