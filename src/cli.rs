//! The `tripflow` commands: clap definitions and what each command prints.
//!
//! Every flag has a `TRIPFLOW_*` environment equivalent, and every default works from
//! the repository root, so `tripflow run` with no flags runs the whole pipeline on the
//! embedded backends.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::config::{self, Home};
use crate::ingest::{Ingest, IngestCounts, IngestOptions};
use crate::kpi::{self, Formats, KpiReport, OutputLocation};
use crate::pipeline::{self, RunSettings};
use crate::produce::{self, ProduceReport};
use crate::stream::StartPosition;
use crate::{Error, Result};

/// tripflow: ride-hailing trip events into a consistent trip table and nightly KPI reports.
#[derive(Debug, Parser)]
#[command(name = "tripflow", version, about, propagate_version = true)]
pub struct Cli {
    /// Log progress to stderr (-v: info, -vv: debug); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Produce the CSV files, ingest until caught up, then run the KPI job for every date.
    Run(RunArgs),
    /// Put CSV rows (or NDJSON records) on the stream as JSON events.
    Produce(ProduceArgs),
    /// Read the stream from the checkpoints into the trip table.
    Ingest(IngestArgs),
    /// Run the KPI queries over the trip table and write the KPI files.
    Kpi(KpiArgs),
    /// Write a synthetic trip_start.csv / trip_end.csv pair.
    Gen(GenArgs),
    /// Run the KPI job at cron times (UTC) until SIGINT or SIGTERM.
    Schedule(ScheduleArgs),
    /// Ask SQL of the Parquet snapshots and KPI outputs; with no query, an interactive prompt.
    Sql(SqlArgs),
}

/// Where the embedded backends live.
#[derive(Debug, Args)]
pub struct HomeArgs {
    /// Folder of the embedded stream, trip table and dead letters.
    #[arg(long, env = "TRIPFLOW_HOME", default_value = "./tripflow-data")]
    pub home: PathBuf,
}

/// The input CSV files.
#[derive(Debug, Args)]
pub struct InputArgs {
    /// Start events, with the header of the original trip_start.csv.
    #[arg(long, env = "TRIPFLOW_START", default_value = "data/trip_start.csv")]
    pub start: PathBuf,
    /// End events, with the header of the original trip_end.csv.
    #[arg(long, env = "TRIPFLOW_END", default_value = "data/trip_end.csv")]
    pub end: PathBuf,
    /// Shards of a new stream (an existing stream keeps its count).
    #[arg(long, env = "TRIPFLOW_SHARDS", value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub shards: Option<u32>,
}

/// Micro-batch bounds and the run report.
#[derive(Debug, Args)]
pub struct BatchArgs {
    /// Flush a micro-batch at this many records...
    #[arg(long, env = "TRIPFLOW_BATCH_ROWS", default_value_t = 4096, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub batch_rows: u64,
    /// ...or when its first record has waited this long.
    #[arg(long, env = "TRIPFLOW_BATCH_LINGER_MS", default_value_t = 100)]
    pub batch_linger_ms: u64,
    /// Write the run's counts as JSON to this file.
    #[arg(long, env = "TRIPFLOW_REPORT")]
    pub report: Option<PathBuf>,
}

/// Where the KPI job reads queries and writes files.
#[derive(Debug, Args)]
pub struct KpiOutArgs {
    /// Output location for kpi_output/…: a directory or file:// URL.
    #[arg(long, env = "TRIPFLOW_OUT", default_value = "./tripflow-out")]
    pub out: String,
    /// Folder of KPI queries, one per .sql file.
    #[arg(long, env = "TRIPFLOW_QUERIES", default_value = "./queries")]
    pub queries: PathBuf,
    /// Also write kpi.parquet beside each kpi.json, and a Parquet snapshot of the trips
    /// under snapshots/trip_date=YYYY-MM-DD/.
    #[arg(long, env = "TRIPFLOW_PARQUET")]
    pub parquet: bool,
}

/// `tripflow run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    input: InputArgs,
    #[command(flatten)]
    home: HomeArgs,
    #[command(flatten)]
    kpi: KpiOutArgs,
    #[command(flatten)]
    batch: BatchArgs,
}

/// `tripflow produce`.
#[derive(Debug, Args)]
pub struct ProduceArgs {
    #[command(flatten)]
    input: InputArgs,
    /// Send each line of this file as one record, byte for byte, instead of the CSV files.
    #[arg(long, env = "TRIPFLOW_NDJSON")]
    ndjson: Option<PathBuf>,
    #[command(flatten)]
    home: HomeArgs,
}

/// `tripflow ingest`.
#[derive(Debug, Args)]
pub struct IngestArgs {
    #[command(flatten)]
    home: HomeArgs,
    #[command(flatten)]
    batch: BatchArgs,
    /// Keep reading after catching up, until SIGINT or SIGTERM.
    #[arg(long, env = "TRIPFLOW_FOLLOW")]
    follow: bool,
    /// Where a shard without a checkpoint starts: trim-horizon, latest, or an RFC 3339 time.
    #[arg(long, env = "TRIPFLOW_INITIAL_POSITION", default_value = "trim-horizon")]
    initial_position: String,
    /// Name the checkpoints are kept under.
    #[arg(long, env = "TRIPFLOW_CONSUMER", default_value = crate::ingest::DEFAULT_CONSUMER)]
    consumer: String,
}

/// `tripflow kpi`.
#[derive(Debug, Args)]
pub struct KpiArgs {
    #[command(flatten)]
    home: HomeArgs,
    #[command(flatten)]
    kpi: KpiOutArgs,
    /// Only this date (YYYY-MM-DD); repeat, or separate with commas, for several.
    #[arg(long, env = "TRIPFLOW_DATE", value_delimiter = ',', conflicts_with_all = ["all", "from", "to"])]
    date: Vec<String>,
    /// First date of a range (YYYY-MM-DD).
    #[arg(long, env = "TRIPFLOW_FROM", conflicts_with = "all")]
    from: Option<String>,
    /// Last date of a range (YYYY-MM-DD); defaults to today (UTC).
    #[arg(long, env = "TRIPFLOW_TO", conflicts_with = "all")]
    to: Option<String>,
    /// Every date in the table.
    #[arg(long, env = "TRIPFLOW_ALL")]
    all: bool,
    /// With no date flag, the job covers today (UTC) and this many days before it.
    #[arg(long, env = "TRIPFLOW_LOOKBACK", default_value_t = 1)]
    lookback: u32,
}

/// `tripflow gen`.
#[derive(Debug, Args)]
pub struct GenArgs {
    /// Number of trips.
    #[arg(long, env = "TRIPFLOW_GEN_TRIPS", default_value_t = 5000)]
    trips: u64,
    /// Seed; the same seed gives the same bytes.
    #[arg(long, env = "TRIPFLOW_GEN_SEED", default_value_t = 42)]
    seed: u64,
    /// Folder for trip_start.csv and trip_end.csv.
    #[arg(long, env = "TRIPFLOW_GEN_OUT", default_value = "data")]
    out: PathBuf,
}

/// `tripflow schedule`.
#[derive(Debug, Args)]
pub struct ScheduleArgs {
    #[command(flatten)]
    home: HomeArgs,
    #[command(flatten)]
    kpi: KpiOutArgs,
    /// When to run: minute hour day-of-month month day-of-week, in UTC.
    #[arg(long, env = "TRIPFLOW_CRON", default_value = crate::schedule::DEFAULT_CRON)]
    cron: String,
    /// Each run covers its day (UTC) and this many days before it.
    #[arg(long, env = "TRIPFLOW_LOOKBACK", default_value_t = 1)]
    lookback: u32,
}

/// `tripflow sql`.
#[derive(Debug, Args)]
pub struct SqlArgs {
    /// The query; without one, an interactive prompt opens.
    query: Option<String>,
    /// The --out location of a 'tripflow kpi --parquet' run.
    #[arg(long, env = "TRIPFLOW_SNAPSHOTS", default_value = "./tripflow-out")]
    snapshots: String,
    /// How results are printed.
    #[arg(long, env = "TRIPFLOW_FORMAT", value_enum, default_value_t = crate::sql::Format::Table)]
    format: crate::sql::Format,
}

fn ingest_options(batch: &BatchArgs) -> IngestOptions {
    IngestOptions {
        batch_rows: batch.batch_rows as usize,
        linger: Duration::from_millis(batch.batch_linger_ms),
        ..Default::default()
    }
}

fn parse_position(s: &str) -> Result<StartPosition> {
    match s.trim() {
        "trim-horizon" | "TRIM_HORIZON" => Ok(StartPosition::TrimHorizon),
        "latest" | "LATEST" => Ok(StartPosition::Latest),
        other => chrono::DateTime::parse_from_rfc3339(other)
            .map(|t| StartPosition::AtTimestamp(t.to_utc()))
            .map_err(|_| {
                Error::Config(format!(
                    "--initial-position {other:?}: give trim-horizon, latest, or a time like 2024-05-25T00:00:00Z"
                ))
            }),
    }
}

fn print_counts(c: &IngestCounts, dead_letters: &std::path::Path) {
    println!(
        "read {} = applied {} + duplicate_or_stale {} + dead_lettered {}  ({} batches, {} store writes)",
        c.read, c.applied, c.duplicate_or_stale, c.dead_lettered, c.batches, c.store_writes
    );
    if c.dead_lettered > 0 {
        println!("dead letters, with their reasons: {}", dead_letters.display());
    }
}

fn print_not_sent(report: &ProduceReport) {
    for line in &report.not_sent {
        eprintln!("warning: {line}");
    }
}

fn print_kpis(report: &KpiReport, out: &OutputLocation) -> Result<()> {
    match report.default_results() {
        Some(batches) if batches.iter().any(|b| b.num_rows() > 0) => {
            println!("{}", arrow::util::pretty::pretty_format_batches(batches)?);
        }
        _ => println!("no completed trips for the dates asked; no KPI file written"),
    }
    println!(
        "{} KPI file(s) for {} date(s) under {}/kpi_output",
        report.files.len(),
        report.dates.len(),
        out.display().trim_end_matches('/')
    );
    Ok(())
}

/// A stop flag set by SIGINT or SIGTERM.
fn stop_on_signal() -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(t) => t,
                Err(_) => return,
            };
            tokio::select! { _ = ctrl_c => {}, _ = term.recv() => {} }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
        tracing::info!("Stopping after the batch in hand.");
        flag.store(true, Ordering::Relaxed);
    });
    stop
}

/// Runs a parsed command.
///
/// # Errors
/// Whatever stops the command; the message says what is wrong and what to do.
pub async fn execute(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Run(a) => {
            let settings = RunSettings {
                start: config::input_file(&a.input.start, "--start")?,
                end: config::input_file(&a.input.end, "--end")?,
                home: Home::new(&a.home.home)?,
                shards: a.input.shards,
                out: OutputLocation::parse(&a.kpi.out)?,
                queries: a.kpi.queries.clone(),
                ingest: ingest_options(&a.batch),
                formats: Formats { parquet: a.kpi.parquet },
            };
            let (report, kpi) = pipeline::run(&settings).await?;
            for line in &report.not_sent {
                eprintln!("warning: {line}");
            }
            print_kpis(&kpi, &settings.out)?;
            print_counts(&report.ingest, &settings.home.dead_letter_path());
            if let Some(path) = &a.batch.report {
                pipeline::write_report(path, &report)?;
            }
        }
        Command::Produce(a) => {
            let home = Home::new(&a.home.home)?;
            let report = match &a.ndjson {
                Some(path) => {
                    let path = config::input_file(path, "--ndjson")?;
                    produce::produce_ndjson(&home.stream(a.input.shards)?, &path).await?
                }
                None => {
                    let start = config::input_file(&a.input.start, "--start")?;
                    let end = config::input_file(&a.input.end, "--end")?;
                    produce::produce_csv(&home.stream(a.input.shards)?, &start, &end).await?
                }
            };
            print_not_sent(&report);
            println!("sent {} records; {} not sent", report.sent, report.not_sent.len());
        }
        Command::Ingest(a) => {
            let home = Home::new(&a.home.home)?;
            let stream = home.stream(None)?;
            let store = home.store()?;
            let dead_letters = home.dead_letters()?;
            let mut opts = ingest_options(&a.batch);
            opts.follow = a.follow;
            opts.consumer = a.consumer.clone();
            opts.initial_position = parse_position(&a.initial_position)?;
            opts.stop = stop_on_signal();
            let began = std::time::Instant::now();
            let counts = Ingest { source: &stream, checkpoints: &stream, store: &store, dead_letters: &dead_letters }
                .run(&opts)
                .await?;
            print_counts(&counts, &home.dead_letter_path());
            if let Some(path) = &a.batch.report {
                #[derive(serde::Serialize)]
                struct Report {
                    #[serde(flatten)]
                    counts: IngestCounts,
                    elapsed_s: f64,
                }
                pipeline::write_report(path, &Report { counts, elapsed_s: began.elapsed().as_secs_f64() })?;
            }
        }
        Command::Kpi(a) => {
            let home = Home::new(&a.home.home)?;
            let flags = config::DateFlags {
                dates: a.date.clone(),
                from: a.from.clone(),
                to: a.to.clone(),
                all: a.all,
                lookback: a.lookback,
            };
            let dates = config::date_selection(&flags, chrono::Utc::now().date_naive())?;
            let queries = kpi::queries::load(&a.kpi.queries)?;
            let out = OutputLocation::parse(&a.kpi.out)?;
            let report = kpi::run(&home.store()?, &queries, &dates, &out, Formats { parquet: a.kpi.parquet }).await?;
            print_kpis(&report, &out)?;
        }
        Command::Schedule(a) => {
            let schedule = crate::schedule::Schedule::parse(&a.cron)?;
            let home = Home::new(&a.home.home)?;
            let out = OutputLocation::parse(&a.kpi.out)?;
            kpi::queries::load(&a.kpi.queries)?;
            let stop = stop_on_signal();
            let formats = Formats { parquet: a.kpi.parquet };
            let (home, out, queries, lookback) = (&home, &out, &a.kpi.queries, a.lookback);
            crate::schedule::run(&schedule, &crate::schedule::SystemClock, &stop, |at| async move {
                // Queries are read at each run, so an edited file takes effect at the next one.
                let queries = kpi::queries::load(queries)?;
                let flags = config::DateFlags { lookback, ..Default::default() };
                let dates = config::date_selection(&flags, at.date_naive())?;
                let report = kpi::run(&home.store()?, &queries, &dates, out, formats).await?;
                Ok(format!("{} files for {} dates", report.files.len(), report.dates.len()))
            })
            .await?;
        }
        Command::Sql(a) => {
            let session = crate::sql::SqlSession::open(&a.snapshots).await?;
            match &a.query {
                Some(q) => print!("{}", crate::sql::render(&session.query(q).await?, a.format)?),
                None => crate::sql::repl(&session, a.format).await?,
            }
        }
        Command::Gen(a) => {
            crate::synthetic::generate(a.trips, a.seed, &a.out)?;
            println!(
                "wrote {} trips to {} and {}",
                a.trips,
                a.out.join("trip_start.csv").display(),
                a.out.join("trip_end.csv").display()
            );
        }
    }
    Ok(())
}
