//! The flags of every command (clap definitions, each with its `TRIPFLOW_*` variable),
//! and what several commands print. The flags become each command's checked settings in
//! [`super::settings`]; each command's work is in `command/`.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::config::{self, AwsTuning};
use crate::error::{Context, Stage};
use crate::ingest::{IngestCounts, IngestOptions};
use crate::kpi::{KpiReport, OutputLocation};
use crate::observe::units;
use crate::stream::StartPosition;
use crate::{Error, Result};

/// tripflow: ride-hailing trip events into a consistent trip table and nightly KPI reports.
#[derive(Debug, Parser)]
#[command(name = "tripflow", version, about, propagate_version = true)]
pub struct Cli {
    /// Log progress to stderr (-v: info, -vv: debug); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// No progress bars (they are drawn only when stdout and stderr are a terminal).
    #[arg(short, long, global = true)]
    pub quiet: bool,
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
    /// Create the stream, tables and bucket the URLs name, where missing (idempotent).
    Setup(SetupArgs),
    /// Rebuild kpi_output/report.html from the kpi.json files under --out.
    Report(ReportArgs),
    /// Put dead letters back on the stream (after a fix); a second redrive skips what
    /// the first one sent.
    Redrive(RedriveArgs),
    /// List the declared fields and every undeclared field ingest has kept: its group,
    /// where it was first seen, how many records carried it, its JSON types.
    Fields(FieldsArgs),
}

/// `tripflow fields`.
#[derive(Debug, Args)]
pub struct FieldsArgs {
    #[command(flatten)]
    pub(crate) declared: DeclaredArgs,
    #[command(flatten)]
    pub(crate) home: HomeArgs,
    #[command(flatten)]
    pub(crate) store: StoreArgs,
    /// `check`: list every stored value of a field --fields declares that its type
    /// cannot read (what the KPI job would stop at), and fail if there is one.
    #[arg(value_enum)]
    pub(crate) action: Option<FieldsAction>,
    /// How the fields are printed.
    #[arg(long, env = "TRIPFLOW_FORMAT", value_enum, default_value_t = FieldsFormat::Table)]
    pub(crate) format: FieldsFormat,
}

/// What `tripflow fields` does besides listing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FieldsAction {
    /// Check the stored values of the declared fields against their types.
    Check,
}

/// How `tripflow fields` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FieldsFormat {
    /// A table for a person.
    Table,
    /// One JSON object: `declared` and `undeclared`.
    Json,
}

/// `tripflow redrive`.
#[derive(Debug, Args)]
pub struct RedriveArgs {
    #[command(flatten)]
    pub(crate) home: HomeArgs,
    /// The stream the records go back on.
    #[command(flatten)]
    pub(crate) stream: StreamArgs,
    /// The dead letters to redrive.
    #[command(flatten)]
    pub(crate) dead_letter: DeadLetterArgs,
    /// Only letters with a reason containing this text (e.g. fare_amount).
    #[arg(long, value_name = "SUBSTRING")]
    pub(crate) reason: Option<String>,
    /// Only letters whose record the stream took at or after this RFC 3339 time.
    #[arg(long, value_name = "TIME")]
    pub(crate) since: Option<String>,
    /// Count what would be redriven, and send nothing.
    #[arg(long)]
    pub(crate) dry_run: bool,
    /// Instead of dead letters, the on-failure queue of the Lambda ingest function
    /// (sqs://NAME or its URL): the batch ranges it names are read again from Kinesis.
    #[arg(long, value_name = "QUEUE", conflicts_with_all = ["reason", "since", "dead_letter"])]
    pub(crate) failures: Option<String>,
}

/// `tripflow report`.
#[derive(Debug, Args)]
pub struct ReportArgs {
    /// Output location of an earlier KPI run: a directory, file:// or s3://bucket/prefix URL.
    #[arg(long, env = "TRIPFLOW_OUT", default_value = "./tripflow-out")]
    pub out: String,
}

/// `--stream`.
#[derive(Debug, Args)]
pub struct StreamArgs {
    /// The stream: kinesis://NAME; without it, the embedded stream under --home.
    #[arg(long, env = "TRIPFLOW_STREAM")]
    pub stream: Option<String>,
    /// DynamoDB table of a Kinesis consumer's checkpoints.
    #[arg(long, env = "TRIPFLOW_CHECKPOINT_TABLE", default_value = crate::stream::checkpoints_dynamodb::DEFAULT_TABLE)]
    pub checkpoint_table: String,
    /// Pause between two GetRecords calls on one Kinesis shard (200 keeps to 5 calls/s).
    #[arg(long, env = "TRIPFLOW_KINESIS_READ_INTERVAL_MS", default_value_t = 200)]
    pub kinesis_read_interval_ms: u64,
}

/// `--store`.
#[derive(Debug, Args)]
pub struct StoreArgs {
    /// The trip table: dynamodb://TABLE; without it, the embedded table under --home.
    #[arg(long, env = "TRIPFLOW_STORE")]
    pub store: Option<String>,
    /// DynamoDB UpdateItem calls in flight.
    #[arg(long, env = "TRIPFLOW_WRITE_CONCURRENCY", default_value_t = crate::store::dynamodb::DEFAULT_WRITE_CONCURRENCY, value_parser = parse_positive)]
    pub write_concurrency: usize,
    /// Parallel DynamoDB Scan segments of the KPI export.
    #[arg(long, env = "TRIPFLOW_SCAN_SEGMENTS", default_value_t = crate::store::dynamodb::DEFAULT_SCAN_SEGMENTS, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub scan_segments: u32,
}

/// `--fields`, one definition for every command that reads or writes trips.
#[derive(Debug, Args)]
pub struct DeclaredArgs {
    /// A TOML file of fields to declare beside the built-in ones ([[field]] with name,
    /// group start|end, type integer|decimal|datetime|text, required): a path or
    /// s3://BUCKET/KEY. See docs/usage.md#schema-changes.
    #[arg(long, env = "TRIPFLOW_FIELDS", value_name = "FILE")]
    pub fields: Option<String>,
}

/// `--dead-letter`.
#[derive(Debug, Args)]
pub struct DeadLetterArgs {
    /// Rejected records: a file, file:// or s3://bucket/prefix; without it, <home>/dead_letters.ndjson.
    #[arg(long, env = "TRIPFLOW_DEAD_LETTER")]
    pub dead_letter: Option<String>,
    /// Fields no declared field names: keep them with their group (and count them, see
    /// `tripflow fields`), or reject the record to the dead letters.
    #[arg(long, env = "TRIPFLOW_UNKNOWN_FIELDS", value_enum, default_value_t)]
    pub unknown_fields: crate::model::extra::UnknownFields,
}

impl StreamArgs {
    /// `--stream`, parsed: the embedded stream under `home` without it.
    ///
    /// # Errors
    /// When the URL is not a stream's.
    pub fn url(&self, home: &config::Home) -> Result<config::StreamUrl> {
        config::StreamUrl::parse(self.stream.as_deref(), home)
    }
}

impl StoreArgs {
    /// `--store`, parsed: the embedded table under `home` without it.
    ///
    /// # Errors
    /// When the URL is not a trip table's.
    pub fn url(&self, home: &config::Home) -> Result<config::StoreUrl> {
        config::StoreUrl::parse(self.store.as_deref(), home)
    }
}

impl DeadLetterArgs {
    /// `--dead-letter`, parsed: the file under `home` without it.
    ///
    /// # Errors
    /// When the URL is not a dead-letter output's.
    pub fn url(&self, home: &config::Home) -> Result<config::DeadLetterUrl> {
        config::DeadLetterUrl::parse(self.dead_letter.as_deref(), home)
    }
}

pub(crate) fn parse_positive(s: &str) -> std::result::Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("{s:?} is not a positive whole number")),
    }
}

/// A size: plain bytes, or a whole number of KiB, MiB or GiB (`64MiB`, `512KiB`).
pub(crate) fn parse_bytes(s: &str) -> std::result::Result<usize, String> {
    let t = s.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (n, unit) = t.split_at(digits);
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kib" => 10,
        "m" | "mib" => 20,
        "g" | "gib" => 30,
        _ => return Err(format!("{s:?} is not a size; write bytes or a whole number of KiB, MiB or GiB, as 64MiB")),
    };
    n.parse::<usize>()
        .ok()
        .and_then(|n| n.checked_mul(1 << shift))
        .filter(|&bytes| bytes > 0)
        .ok_or_else(|| format!("{s:?} is not a size above zero that fits this machine; write one as 64MiB"))
}

pub(crate) fn tuning(stream: Option<&StreamArgs>, store: Option<&StoreArgs>) -> AwsTuning {
    let mut t = AwsTuning::default();
    if let Some(s) = stream {
        t.checkpoint_table = s.checkpoint_table.clone();
        t.read_interval = Duration::from_millis(s.kinesis_read_interval_ms);
    }
    if let Some(s) = store {
        t.write_concurrency = s.write_concurrency;
        t.scan_segments = s.scan_segments;
    }
    t
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
    #[arg(long, env = "TRIPFLOW_BATCH_ROWS", default_value_t = 65_536, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub batch_rows: u64,
    /// ...or at this many bytes of record data (64MiB; also KiB, MiB, GiB or plain bytes)...
    #[arg(long, env = "TRIPFLOW_BATCH_BYTES", default_value = "64MiB", value_parser = parse_bytes)]
    pub batch_bytes: usize,
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
    /// Output location for kpi_output/…: a directory, file:// or s3://bucket/prefix URL.
    #[arg(long, env = "TRIPFLOW_OUT", default_value = "./tripflow-out")]
    pub out: String,
    /// Folder of KPI queries, one per .sql file; without it, the shipped queries/ (built in).
    #[arg(long, env = "TRIPFLOW_QUERIES")]
    pub queries: Option<PathBuf>,
    /// Also write kpi.parquet beside each kpi.json, and a Parquet snapshot of the trips
    /// under snapshots/trip_date=YYYY-MM-DD/.
    #[arg(long, env = "TRIPFLOW_PARQUET")]
    pub parquet: bool,
}

/// The Lambda functions' settings, defined here with the commands': the flags they share
/// with `tripflow ingest` and `tripflow kpi`, read from the same `TRIPFLOW_*` variables,
/// so every bound and every message is the command line's
/// ([`crate::lambda::Settings::from_vars`]).
#[derive(Debug, Parser)]
#[command(name = "tripflow-lambda")]
pub struct LambdaArgs {
    /// The trip table and its tuning (both functions).
    #[command(flatten)]
    pub store: StoreArgs,
    /// Where rejected records go (the ingest function).
    #[command(flatten)]
    pub dead_letter: DeadLetterArgs,
    /// The KPI files, queries and formats (the KPI function).
    #[command(flatten)]
    pub kpi: KpiOutArgs,
    /// The days a nightly run covers.
    #[command(flatten)]
    pub window: LookbackArgs,
    /// The declared fields (both functions).
    #[command(flatten)]
    pub fields: DeclaredArgs,
    /// Whether the live KPIs are kept (the ingest function) and published (the KPI
    /// function's `{"live": true}`).
    #[command(flatten)]
    pub live: LambdaLiveArgs,
}

/// `TRIPFLOW_LIVE_KPIS` of the functions.
#[derive(Debug, Args)]
pub struct LambdaLiveArgs {
    /// Keep the KPIs live: the ingest function takes each batch's change into the live
    /// state in DynamoDB.
    #[arg(long, env = "TRIPFLOW_LIVE_KPIS")]
    pub live_kpis: bool,
}

/// `--lookback`, one definition for `kpi`, `schedule` and the KPI function.
#[derive(Debug, Args)]
pub struct LookbackArgs {
    /// Days before its day (UTC) that a run also covers: `kpi` with no date flag covers
    /// today, `schedule` and the nightly function each run's day. Besides these, such a
    /// run recomputes every date whose trips changed since the last run, however old.
    #[arg(long, env = "TRIPFLOW_LOOKBACK", default_value_t = 1)]
    pub lookback: u32,
}

/// `tripflow run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub(crate) declared: DeclaredArgs,
    #[command(flatten)]
    pub(crate) input: InputArgs,
    #[command(flatten)]
    pub(crate) home: HomeArgs,
    #[command(flatten)]
    pub(crate) stream: StreamArgs,
    #[command(flatten)]
    pub(crate) store: StoreArgs,
    #[command(flatten)]
    pub(crate) dead_letter: DeadLetterArgs,
    #[command(flatten)]
    pub(crate) kpi: KpiOutArgs,
    #[command(flatten)]
    pub(crate) batch: BatchArgs,
}

/// `tripflow produce`.
#[derive(Debug, Args)]
pub struct ProduceArgs {
    #[command(flatten)]
    pub(crate) input: InputArgs,
    /// Send each line of this file as one record, byte for byte, instead of the CSV files.
    #[arg(long, env = "TRIPFLOW_NDJSON")]
    pub(crate) ndjson: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) home: HomeArgs,
    #[command(flatten)]
    pub(crate) stream: StreamArgs,
}

/// `tripflow ingest`.
#[derive(Debug, Args)]
pub struct IngestArgs {
    #[command(flatten)]
    pub(crate) declared: DeclaredArgs,
    #[command(flatten)]
    pub(crate) home: HomeArgs,
    #[command(flatten)]
    pub(crate) stream: StreamArgs,
    #[command(flatten)]
    pub(crate) store: StoreArgs,
    #[command(flatten)]
    pub(crate) dead_letter: DeadLetterArgs,
    #[command(flatten)]
    pub(crate) batch: BatchArgs,
    /// Keep reading after catching up, until SIGINT or SIGTERM.
    #[arg(long, env = "TRIPFLOW_FOLLOW")]
    pub(crate) follow: bool,
    /// Where a shard without a checkpoint starts: trim-horizon, latest, or an RFC 3339 time.
    #[arg(long, env = "TRIPFLOW_INITIAL_POSITION", default_value = "trim-horizon")]
    pub(crate) initial_position: String,
    /// Name the checkpoints are kept under.
    #[arg(long, env = "TRIPFLOW_CONSUMER", default_value = crate::ingest::DEFAULT_CONSUMER)]
    pub(crate) consumer: String,
    /// Serve live metrics as Prometheus text at http://ADDR/metrics (e.g. 127.0.0.1:9464).
    #[arg(long, env = "TRIPFLOW_METRICS_ADDR", value_name = "ADDR")]
    pub(crate) metrics_addr: Option<std::net::SocketAddr>,
    #[command(flatten)]
    pub(crate) live: LiveArgs,
}

/// `--live-kpis` and its settings (`tripflow ingest`).
#[derive(Debug, Args)]
pub struct LiveArgs {
    /// Keep the KPIs live as batches are merged: write kpi_output/live/date=YYYY-MM-DD/kpi.json
    /// under --out for each date whose figures changed, with the stream position they are
    /// exact as of.
    #[arg(long, env = "TRIPFLOW_LIVE_KPIS")]
    pub(crate) live_kpis: bool,
    /// The least time between two publications of the live files (5s, 1m, …).
    #[arg(long, env = "TRIPFLOW_LIVE_EVERY", default_value = "60s", value_name = "DURATION")]
    pub(crate) live_every: String,
    /// The least time between two runs, over their changed dates, of the queries that are
    /// not maintained from each merge (see `tripflow kpi --explain-live`).
    #[arg(long, env = "TRIPFLOW_LIVE_RECOMPUTE_EVERY", default_value = "15m", value_name = "DURATION")]
    pub(crate) live_recompute_every: String,
    /// Output location of the live files (with --live-kpis): a directory, file:// or
    /// s3://bucket/prefix URL.
    #[arg(long, env = "TRIPFLOW_OUT", default_value = "./tripflow-out")]
    pub(crate) out: String,
    /// Folder of KPI queries kept live, one per .sql file; without it, the shipped queries/.
    #[arg(long, env = "TRIPFLOW_QUERIES")]
    pub(crate) queries: Option<PathBuf>,
}

/// `tripflow kpi`.
#[derive(Debug, Args)]
pub struct KpiArgs {
    #[command(flatten)]
    pub(crate) declared: DeclaredArgs,
    #[command(flatten)]
    pub(crate) home: HomeArgs,
    #[command(flatten)]
    pub(crate) store: StoreArgs,
    #[command(flatten)]
    pub(crate) kpi: KpiOutArgs,
    /// Only this date (YYYY-MM-DD); repeat, or separate with commas, for several.
    #[arg(long, env = "TRIPFLOW_DATE", value_delimiter = ',', conflicts_with_all = ["all", "from", "to"])]
    pub(crate) date: Vec<String>,
    /// First date of a range (YYYY-MM-DD).
    #[arg(long, env = "TRIPFLOW_FROM", conflicts_with = "all")]
    pub(crate) from: Option<String>,
    /// Last date of a range (YYYY-MM-DD); defaults to today (UTC).
    #[arg(long, env = "TRIPFLOW_TO", conflicts_with = "all")]
    pub(crate) to: Option<String>,
    /// Every date in the table.
    #[arg(long, env = "TRIPFLOW_ALL")]
    pub(crate) all: bool,
    #[command(flatten)]
    pub(crate) window: LookbackArgs,
    /// Say how each query is kept live (`ingest --live-kpis`): maintained from each
    /// merge, or recomputed for its changed dates and why; then stop.
    #[arg(long)]
    pub(crate) explain_live: bool,
}

impl KpiArgs {
    /// The date flags, for [`config::date_selection`].
    pub(crate) fn date_flags(&self) -> config::DateFlags {
        config::DateFlags {
            dates: self.date.clone(),
            from: self.from.clone(),
            to: self.to.clone(),
            all: self.all,
            lookback: self.window.lookback,
        }
    }
}

/// `tripflow gen`.
#[derive(Debug, Args)]
pub struct GenArgs {
    /// Number of trips.
    #[arg(long, env = "TRIPFLOW_GEN_TRIPS", default_value_t = 5000)]
    pub(crate) trips: u64,
    /// Seed; the same seed gives the same bytes.
    #[arg(long, env = "TRIPFLOW_GEN_SEED", default_value_t = 42)]
    pub(crate) seed: u64,
    /// Days the pickups are spread over, from 2024-05-24.
    #[arg(long, env = "TRIPFLOW_GEN_DAYS", default_value_t = crate::produce::synthetic::DAYS)]
    pub(crate) days: u32,
    /// Folder for trip_start.csv and trip_end.csv.
    #[arg(long, env = "TRIPFLOW_GEN_OUT", default_value = "data")]
    pub(crate) out: PathBuf,
}

/// `tripflow schedule`.
#[derive(Debug, Args)]
pub struct ScheduleArgs {
    #[command(flatten)]
    pub(crate) declared: DeclaredArgs,
    #[command(flatten)]
    pub(crate) home: HomeArgs,
    #[command(flatten)]
    pub(crate) store: StoreArgs,
    #[command(flatten)]
    pub(crate) kpi: KpiOutArgs,
    /// When to run: minute hour day-of-month month day-of-week, in UTC.
    #[arg(long, env = "TRIPFLOW_CRON", default_value = crate::kpi::schedule::DEFAULT_CRON)]
    pub(crate) cron: String,
    #[command(flatten)]
    pub(crate) window: LookbackArgs,
}

/// `tripflow sql`.
#[derive(Debug, Args)]
pub struct SqlArgs {
    #[command(flatten)]
    pub(crate) declared: DeclaredArgs,
    /// The query; without one (or --file), an interactive prompt opens. Text that
    /// begins with `-`, such as a `--` comment, goes after `--`: `tripflow sql -- "…"`.
    #[arg(conflicts_with = "file")]
    pub(crate) query: Option<String>,
    /// Run the query in this .sql file, comments and all.
    #[arg(long, short = 'f', value_name = "FILE")]
    pub(crate) file: Option<PathBuf>,
    /// The --out location of a 'tripflow kpi --parquet' run: a folder, file:// or s3://bucket/prefix.
    #[arg(long, env = "TRIPFLOW_SNAPSHOTS", default_value = "./tripflow-out")]
    pub(crate) snapshots: String,
    /// How results are printed.
    #[arg(long, env = "TRIPFLOW_FORMAT", value_enum, default_value_t = crate::kpi::sql::Format::Table)]
    pub(crate) format: crate::kpi::sql::Format,
}

impl SqlArgs {
    /// The query of the command line or of --file, if any.
    pub(crate) fn query(&self) -> Result<Option<String>> {
        let Some(path) = &self.file else { return Ok(self.query.clone()) };
        std::fs::read_to_string(path)
            .map(Some)
            .map_err(|e| Error::input_because(path, "cannot read the query file", e, "check --file"))
    }
}

/// `tripflow setup`.
#[derive(Debug, Args)]
pub struct SetupArgs {
    #[command(flatten)]
    pub(crate) home: HomeArgs,
    /// The stream (with its checkpoint table on Kinesis), the trip table (with its
    /// trip_date index on DynamoDB) and the dead-letter bucket: the flags the other
    /// commands take, so one set of TRIPFLOW_* variables serves them all.
    #[command(flatten)]
    pub(crate) stream: StreamArgs,
    #[command(flatten)]
    pub(crate) store: StoreArgs,
    #[command(flatten)]
    pub(crate) dead_letter: DeadLetterArgs,
    /// Shards of a new stream.
    #[arg(long, env = "TRIPFLOW_SHARDS", value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub(crate) shards: Option<u32>,
    /// Shards of a new DynamoDB trip table's date index: a day's writes spread over this
    /// many partition keys (DynamoDB takes about 1,000 writes/s per key), and a KPI run
    /// reads a day with this many Queries in parallel. An existing table keeps its index.
    #[arg(
        long,
        env = "TRIPFLOW_DATE_INDEX_SHARDS",
        default_value_t = crate::store::dynamodb::DEFAULT_DATE_SHARDS,
        value_parser = clap::value_parser!(u32).range(1..=crate::store::dynamodb::MAX_DATE_SHARDS as i64)
    )]
    pub(crate) date_index_shards: u32,
    /// The KPI output whose bucket to create, when it is s3://bucket/prefix.
    #[arg(long, env = "TRIPFLOW_OUT")]
    pub(crate) out: Option<String>,
}

pub(crate) fn ingest_options(batch: &BatchArgs) -> IngestOptions {
    IngestOptions {
        batch_rows: batch.batch_rows as usize,
        batch_bytes: batch.batch_bytes,
        linger: Duration::from_millis(batch.batch_linger_ms),
        ..Default::default()
    }
}

pub(crate) fn parse_position(s: &str) -> Result<StartPosition> {
    match s.trim() {
        "trim-horizon" | "TRIM_HORIZON" => Ok(StartPosition::TrimHorizon),
        "latest" | "LATEST" => Ok(StartPosition::Latest),
        other => {
            chrono::DateTime::parse_from_rfc3339(other).map(|t| StartPosition::AtTimestamp(t.to_utc())).map_err(|_| {
                Error::config(format!(
                    "--initial-position {other:?}: give trim-horizon, latest, or a time like 2024-05-25T00:00:00Z"
                ))
            })
        }
    }
}

/// `DynamoDB capacity: 12 write units, 3.5 read units`, in the order given (thousandths
/// of a unit in), and whether they were computed.
fn capacity(first: (&str, u64), second: (&str, u64), computed: bool) -> String {
    format!(
        "DynamoDB capacity: {} {} units, {} {} units{}",
        units(first.1),
        first.0,
        units(second.1),
        second.0,
        if computed { " (computed from item sizes: the service reported none)" } else { "" }
    )
}

pub(crate) fn print_counts(c: &IngestCounts, dead_letters: &str) {
    println!(
        "read {} = applied {} + duplicate_or_stale {} + dead_lettered {}  ({} batches, {} store writes)",
        c.read, c.applied, c.duplicate_or_stale, c.dead_lettered, c.batches, c.store_writes
    );
    if c.write_milliunits + c.read_milliunits > 0 {
        let capacity = capacity(("write", c.write_milliunits), ("read", c.read_milliunits), c.capacity_computed);
        println!("{capacity}, for {} bytes read from the stream", c.stream_bytes);
    }
    if c.dead_lettered > 0 {
        println!("dead letters, with their reasons: {dead_letters}");
    }
}

pub(crate) fn print_kpis(report: &KpiReport, out: &OutputLocation) -> Result<()> {
    match report.default_results() {
        Some(batches) if batches.iter().any(|b| b.num_rows() > 0) => {
            let table = arrow::util::pretty::pretty_format_batches(batches).stage(Stage::Output, "the KPI table")?;
            println!("{table}");
        }
        _ => println!("no completed trips for the dates asked; no KPI file written"),
    }
    let dates = |d: &[chrono::NaiveDate]| d.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
    // A run over every date recomputes the changed ones anyway.
    if !report.changed.is_empty() && report.queried.is_some() {
        println!(
            "recomputed {} date(s) whose trips changed since the last run: {}",
            report.changed.len(),
            dates(&report.changed)
        );
    }
    if !report.removed.is_empty() {
        println!(
            "removed the KPI files of {} date(s) left without completed trips: {}",
            report.removed.len(),
            dates(&report.removed)
        );
    }
    println!(
        "{} KPI file(s) for {} date(s) under {}/kpi_output",
        report.files.len(),
        report.dates.len(),
        out.display().trim_end_matches('/')
    );
    println!("report: {}", report.report);
    if let Some(c) = &report.certificate {
        let at = format!("{}/{}", out.display().trim_end_matches('/'), crate::kpi::CERTIFICATE);
        match &c.rebuilt {
            Some(why) => println!("live KPIs: not compared ({why}); their state was rebuilt from the table: {at}"),
            None if c.mismatches.is_empty() => {
                println!("live KPIs: equal to this run on {} of {} date(s): {at}", c.equal.len(), c.compared.len());
            }
            None => println!(
                "live KPIs: DIFFERENT from this run on {} of {} date(s) ({} mismatches; now rebased on this run): {at}",
                c.compared.len() - c.equal.len(),
                c.compared.len(),
                c.mismatches.len()
            ),
        }
    }
    let c = report.consumed;
    if c.read_milliunits + c.write_milliunits > 0 {
        let capacity = capacity(("read", c.read_milliunits), ("write", c.write_milliunits), c.computed);
        println!("{capacity}; {} bytes written", report.bytes_written);
    }
    Ok(())
}

/// A stop flag set by SIGINT or SIGTERM.
pub(crate) fn stop_on_signal() -> Arc<AtomicBool> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn sql(args: &[&str]) -> SqlArgs {
        let cli = Cli::try_parse_from([&["tripflow", "sql"], args].concat()).expect("parses");
        match cli.command {
            Command::Sql(a) => a,
            other => panic!("not sql: {other:?}"),
        }
    }

    #[test]
    fn sizes_read_with_binary_units() {
        assert_eq!(parse_bytes("64MiB"), Ok(64 << 20));
        assert_eq!(parse_bytes("512 kib"), Ok(512 << 10));
        assert_eq!(parse_bytes("1g"), Ok(1 << 30));
        assert_eq!(parse_bytes("1000"), Ok(1000));
        for bad in ["", "0", "MiB", "1.5MiB", "-1", "12 parsecs", "99999999999999999999GiB"] {
            let e = parse_bytes(bad).unwrap_err();
            assert!(e.contains(&format!("{bad:?}")) && e.contains("64MiB"), "{bad}: {e}");
        }
    }

    #[test]
    fn a_query_comes_from_the_line_or_a_file() {
        let text = "-- Daily KPIs\nSELECT 1";
        assert_eq!(sql(&["--", text]).query().unwrap().as_deref(), Some(text));
        assert_eq!(sql(&["SELECT 2", "--format", "csv"]).query().unwrap().as_deref(), Some("SELECT 2"));
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("q.sql");
        std::fs::write(&file, text).unwrap();
        assert_eq!(sql(&["-f", file.to_str().unwrap()]).query().unwrap().as_deref(), Some(text));
        assert_eq!(sql(&["--snapshots", "snap"]).query().unwrap(), None);
        let missing = sql(&["--file", "nope.sql"]).query().unwrap_err().to_string();
        assert!(missing.contains("nope.sql") && missing.contains("--file"), "{missing}");
        assert!(Cli::try_parse_from(["tripflow", "sql", "SELECT 1", "--file", "q.sql"]).is_err(), "one or the other");
    }
}
