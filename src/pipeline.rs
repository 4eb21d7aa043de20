//! `tripflow run`: produce and ingest side by side until every record put is merged,
//! then the KPI job for every date, on one set of backends, with one report of the
//! whole run.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::Result;
use crate::config::{self, AwsEnv, AwsTuning, DeadLetterUrl, StoreUrl, StreamUrl};
use crate::error::Stage;
use crate::ingest::{Ingest, IngestCounts, IngestOptions};
use crate::kpi::{self, DateSelection, Formats, KpiReport, OutputLocation};
use crate::produce::{self, ProduceReport};

/// Settings of a whole run.
#[derive(Debug, Clone)]
pub struct RunSettings {
    /// `trip_start.csv`.
    pub start: PathBuf,
    /// `trip_end.csv`.
    pub end: PathBuf,
    /// `--stream`.
    pub stream: StreamUrl,
    /// `--store`.
    pub store: StoreUrl,
    /// `--dead-letter`.
    pub dead_letter: DeadLetterUrl,
    /// AWS backend tuning.
    pub tuning: AwsTuning,
    /// Shard count for a new stream.
    pub shards: Option<u32>,
    /// Where KPI files go.
    pub out: OutputLocation,
    /// The KPI queries folder; `None` for the built-in queries.
    pub queries: Option<PathBuf>,
    /// Ingest settings.
    pub ingest: IngestOptions,
    /// Extra KPI output formats.
    pub formats: Formats,
}

/// The run report (`--report FILE`): `read = applied + duplicate_or_stale + dead_lettered`.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    /// Ingest counts, flattened: `read`, `applied`, `duplicate_or_stale`, `dead_lettered`, ….
    #[serde(flatten)]
    pub ingest: IngestCounts,
    /// Records produced.
    pub produced: u64,
    /// Rows not sent by produce, with file, line and reason.
    pub not_sent: Vec<String>,
    /// Dates with KPI files.
    pub kpi_dates: Vec<String>,
    /// Files written by the KPI job.
    pub kpi_files: Vec<String>,
    /// DynamoDB read capacity units the KPI job consumed (0 on the embedded table).
    pub kpi_read_capacity_units: f64,
    /// DynamoDB write capacity units the KPI job consumed (clearing the marks).
    pub kpi_write_capacity_units: f64,
    /// Bytes of the files the KPI job wrote.
    pub kpi_bytes_written: u64,
    /// Dead-letter file.
    pub dead_letter_file: String,
    /// Wall-clock seconds of the run.
    pub elapsed_s: f64,
    /// Seconds and rates of each stage.
    pub stages: Stages,
}

/// Where a run's time went.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Stages {
    /// Reading the CSV files and putting the events on the stream (while ingest runs).
    pub produce_s: f64,
    /// Events put per second.
    pub produce_events_per_s: f64,
    /// Reading, validating and merging the stream into the trip table: from the start of
    /// produce until the last record put is merged.
    pub ingest_s: f64,
    /// Events ingested per second.
    pub ingest_events_per_s: f64,
    /// Exporting the table and running the KPI queries, writing the files.
    pub kpi_s: f64,
    /// Trips exported per second.
    pub kpi_trips_per_s: f64,
}

/// Aborts a task when dropped: a run whose ingest fails stops its producer too.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn rate(n: u64, seconds: f64) -> f64 {
    if seconds > 0.0 { (n as f64 / seconds).round() } else { 0.0 }
}

/// Runs the pipeline on the backends the settings name.
///
/// # Errors
/// When an input, a backend, a query or an output fails; bad records are not errors.
pub async fn run(settings: &RunSettings, aws: &AwsEnv) -> Result<(RunReport, KpiReport)> {
    let began = Instant::now();
    // The queries first: a broken one fails the run before produce and ingest start.
    let queries = kpi::queries::load_or_builtin(settings.queries.as_deref())?;
    let store = config::open_store(&settings.store, aws, &settings.tuning).await?;
    kpi::check(&queries, kpi::table_columns(store.as_ref(), &settings.ingest.fields.declared).await?).await?;
    let opened = config::open_stream(&settings.stream, settings.shards, aws, &settings.tuning).await?;
    let (dead_letters, dead_letter_file) = config::open_dead_letters(&settings.dead_letter, aws).await?;

    // Produce and ingest side by side, as the original's script and Lambda ran: the
    // producer on its own task, ingest following the stream until the producer is done
    // and everything it put is read.
    let drain = Arc::new(AtomicBool::new(false));
    let producer = {
        let (stream, start, end, drain, progress) = (
            opened.stream.clone(),
            settings.start.clone(),
            settings.end.clone(),
            drain.clone(),
            settings.ingest.progress.clone(),
        );
        tokio::spawn(async move {
            let began = Instant::now();
            let produced = produce::produce_csv(stream.as_ref(), &start, &end, progress.as_ref()).await;
            drain.store(true, Ordering::Release);
            (produced, began.elapsed().as_secs_f64())
        })
    };
    let mut producer = AbortOnDrop(producer);
    let stage = Instant::now();
    // A caught-up ingest looks again every 20 ms, so the end of produce is noticed at
    // once (the Kinesis source paces its own reads).
    let options = IngestOptions {
        follow: true,
        drain: Some(drain),
        poll_interval: settings.ingest.poll_interval.min(Duration::from_millis(20)),
        ..settings.ingest.clone()
    };
    let counts = Ingest {
        source: opened.stream.as_ref(),
        checkpoints: opened.checkpoints.as_ref(),
        store: store.as_ref(),
        dead_letters: dead_letters.as_ref(),
    }
    .run(&options)
    .await?;
    let (produced, produce_s) =
        (&mut producer.0).await.map_err(|e| Stage::Stream.error("the producer task failed", e))?;
    let ProduceReport { sent, not_sent } = produced?;
    let ingest_s = stage.elapsed().as_secs_f64();
    let stage = Instant::now();
    let kpi = kpi::run(
        store.as_ref(),
        &queries,
        &settings.ingest.fields.declared,
        &DateSelection::All,
        &settings.out,
        settings.formats,
        settings.ingest.progress.as_ref(),
    )
    .await?;
    let kpi_s = stage.elapsed().as_secs_f64();
    let stages = Stages {
        produce_s,
        produce_events_per_s: rate(sent, produce_s),
        ingest_s,
        ingest_events_per_s: rate(counts.read, ingest_s),
        kpi_s,
        kpi_trips_per_s: rate(kpi.exported_rows as u64, kpi_s),
    };
    let report = RunReport {
        ingest: counts,
        produced: sent,
        not_sent,
        kpi_dates: kpi.dates.iter().map(|d| d.to_string()).collect(),
        kpi_files: kpi.files.clone(),
        kpi_read_capacity_units: crate::observe::units(kpi.consumed.read_milliunits),
        kpi_write_capacity_units: crate::observe::units(kpi.consumed.write_milliunits),
        kpi_bytes_written: kpi.bytes_written,
        dead_letter_file,
        elapsed_s: began.elapsed().as_secs_f64(),
        stages,
    };
    Ok((report, kpi))
}

/// Writes a report as pretty JSON.
///
/// # Errors
/// When the file cannot be written.
pub fn write_report(path: &std::path::Path, report: &impl Serialize) -> Result<()> {
    let json = serde_json::to_string_pretty(report).map_err(|e| Stage::Output.error("the run report", e))?;
    std::fs::write(path, json + "\n").map_err(|e| {
        let context = format!("cannot write the report {}", path.display());
        Stage::Output.error_then(context, e, "choose a writable --report path")
    })
}
