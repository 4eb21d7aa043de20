//! The AWS Lambda functions: the ingest and KPI stages behind the Lambda Runtime API, for
//! a deployment as the original pipeline ran (`deploy/template.yaml`).
//!
//! One binary, `tripflow-lambda`, serves both; the template's `Handler` (given to custom
//! runtimes in `_HANDLER`) picks one. Both are configured by the CLI's variables and
//! build their clients, store and outputs once, at init, never per invocation.
//!
//! - **ingest** takes a Kinesis batch through [`crate::ingest::merge_batch`], the code
//!   path of `tripflow ingest`. Lambda owns the checkpoints here (docs/design.md §4): the batch
//!   succeeds when every record is merged or dead-lettered; a store or dead-letter
//!   failure is returned as an error, so Lambda retries or bisects and the merge makes
//!   the replay harmless. Near the deadline it stops between chunks and names the first
//!   record it did not process in `batchItemFailures`; Lambda resumes from there.
//! - **kpi** takes an EventBridge Scheduler payload (`{"scheduled_time": …}`: that UTC
//!   date, the lookback days before it and every date marked changed) or a backfill
//!   (`{"dates": [...]}`), exports those dates through the table's date index and
//!   writes the files `tripflow kpi` would.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_lambda_events::event::kinesis::KinesisEvent;
use aws_lambda_events::event::streams::KinesisEventResponse;
use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use tracing::info;

use crate::backend::location::{DeadLetterPlace, Location, ObjectPlace, StorePlace};
use crate::config::{self, AwsEnv, AwsTuning, DeadLetterUrl, StoreUrl};
use crate::ingest::batcher::Pending;
use crate::ingest::deadletter::DeadLetterSink;
use crate::ingest::{FieldRules, IngestCounts, merge_batch};
use crate::kpi::{self, DateSelection, Formats, KpiQuery, OutputLocation};
use crate::model::declared::Fields;
use crate::model::extra::UnknownFields;
use crate::observe::telemetry::{self, BatchTimes};
use crate::store::TripStore;
use crate::stream::{SequenceNumber, ShardId, StreamRecord};
use crate::{Error, Result};

/// Records merged between two looks at the deadline.
pub const DEFAULT_CHUNK_RECORDS: usize = 500;
/// Time kept in hand at the deadline, beyond the longest chunk so far: enough to answer
/// the Runtime API before Lambda stops the invocation.
pub const DEFAULT_DEADLINE_MARGIN: Duration = Duration::from_secs(3);

/// Which function an invocation runs: the template's `Handler`, in `_HANDLER`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handler {
    /// Kinesis batches into the trip table.
    Ingest,
    /// The nightly (or backfill) KPI run.
    Kpi,
}

impl Handler {
    /// Parses the value of `_HANDLER`.
    ///
    /// # Errors
    /// When it is missing or not one of `ingest` and `kpi`.
    pub fn parse(value: Option<&str>) -> Result<Self> {
        match value.map(str::trim) {
            Some("ingest") => Ok(Handler::Ingest),
            Some("kpi") => Ok(Handler::Kpi),
            other => Err(Error::config(format!(
                "_HANDLER is {}; set the function's Handler to 'ingest' (Kinesis batches) or 'kpi' (the nightly KPI run)",
                other.map_or_else(|| "not set".to_owned(), |v| format!("{v:?}"))
            ))),
        }
    }
}

/// The function's settings, from the same `TRIPFLOW_*` variables as the CLI.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `TRIPFLOW_STORE`: `dynamodb://TABLE` (required).
    pub store: StoreUrl,
    /// `TRIPFLOW_DEAD_LETTER`: `s3://BUCKET/PREFIX` or a path (required by ingest).
    pub dead_letter: Option<ObjectPlace>,
    /// `TRIPFLOW_OUT`: `s3://BUCKET/PREFIX` or a path (required by kpi).
    pub out: Option<ObjectPlace>,
    /// `TRIPFLOW_LOOKBACK`: days before the scheduled date a nightly run also covers.
    pub lookback: u32,
    /// `TRIPFLOW_QUERIES`: a folder of `.sql` files; the built-in queries without it.
    pub queries: Option<PathBuf>,
    /// `TRIPFLOW_PARQUET`: also write `kpi.parquet` and the snapshots.
    pub parquet: bool,
    /// `TRIPFLOW_WRITE_CONCURRENCY`, `TRIPFLOW_SCAN_SEGMENTS`.
    pub tuning: AwsTuning,
    /// `TRIPFLOW_UNKNOWN_FIELDS`: keep (the default) or reject undeclared fields.
    pub unknown_fields: UnknownFields,
    /// `TRIPFLOW_FIELDS`: the fields file, a path or `s3://BUCKET/KEY`; read when a
    /// function opens ([`crate::config::read_fields`]).
    pub fields: Option<String>,
    /// `TRIPFLOW_LIVE_KPIS`: the ingest function keeps the live KPIs' state.
    pub live: bool,
    /// `TRIPFLOW_STACK` (the template sets the stack's name), else the function's own
    /// name (`AWS_LAMBDA_FUNCTION_NAME`): the `stack` dimension of the EMF metrics, so
    /// that two stacks in one account have series, and alarms, of their own.
    pub stack: String,
}

impl Settings {
    /// Reads the settings through `var` (the process environment in the binary), with
    /// the command line's own definitions of these flags ([`crate::cli::LambdaArgs`]):
    /// a value the CLI refuses is refused here, with the CLI's message and the variable's
    /// name in front.
    ///
    /// # Errors
    /// When a variable is missing or invalid; the message names it and what to set.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Self> {
        use clap::{CommandFactory, FromArgMatches};
        // The variables become the flags they stand for.
        let command = crate::cli::LambdaArgs::command();
        let mut argv = vec!["tripflow-lambda".to_owned()];
        let mut flag_of = Vec::new();
        for arg in command.get_arguments() {
            let (Some(name), Some(long)) = (arg.get_env().and_then(|e| e.to_str()), arg.get_long()) else {
                continue;
            };
            flag_of.push((format!("--{long}"), name.to_owned()));
            let Some(value) = var(name).filter(|v| !v.trim().is_empty()) else { continue };
            if arg.get_action().takes_values() {
                argv.push(format!("--{long}={value}"));
            } else if !["n", "no", "f", "false", "off", "0"].contains(&value.trim().to_ascii_lowercase().as_str()) {
                // A switch, read as clap reads its variable: anything but a false word.
                argv.push(format!("--{long}"));
            }
        }
        let refused = |e: clap::Error| {
            let text = e.render().to_string();
            let line = text.lines().next().unwrap_or_default().trim_start_matches("error: ").to_owned();
            match flag_of
                .iter()
                .find(|(flag, _)| line.contains(&format!("'{flag} ")) || line.contains(&format!("'{flag}'")))
            {
                Some((_, name)) => Error::config(format!("{name}: {line}")),
                None => Error::config(line),
            }
        };
        // The command reads nothing else (no process environment): it parses exactly what
        // `var` gave.
        let command = command.mut_args(|a| a.env(None::<&str>));
        let matches = command.try_get_matches_from(&argv).map_err(&refused)?;
        let args = crate::cli::LambdaArgs::from_arg_matches(&matches).map_err(&refused)?;
        // The URLs are parsed as the CLI parses its flags, so a bad one gets the CLI's
        // message, with the variable's name in front.
        let named = |name: &'static str| move |e: Error| Error::config_because(name, e, "");
        let store = match Location::parse_as("--store", args.store.store.as_deref()).map_err(named("TRIPFLOW_STORE"))? {
            StorePlace::DynamoDb(table) => StoreUrl::DynamoDb(table),
            StorePlace::Embedded => {
                return Err(Error::config(
                    "TRIPFLOW_STORE is not set; set it to dynamodb://TABLE (a function has no embedded trip table)",
                ));
            }
        };
        let dead_letter = match Location::parse_as("--dead-letter", args.dead_letter.dead_letter.as_deref())
            .map_err(named("TRIPFLOW_DEAD_LETTER"))?
        {
            DeadLetterPlace::Object(place) => Some(place),
            DeadLetterPlace::Embedded => None,
        };
        let given = |id: &str| matches.value_source(id) != Some(clap::parser::ValueSource::DefaultValue);
        let out = given("out")
            .then(|| Location::parse_as::<ObjectPlace>("--out", Some(&args.kpi.out)).map_err(named("TRIPFLOW_OUT")))
            .transpose()?;
        // The lookback's bound is the date selection's, as `tripflow kpi` checks it.
        config::lookback_dates(args.window.lookback, chrono::Utc::now().date_naive())?;
        let stack = ["TRIPFLOW_STACK", "AWS_LAMBDA_FUNCTION_NAME"]
            .iter()
            .find_map(|name| var(name).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty()))
            .unwrap_or_else(|| telemetry::DEFAULT_STACK.to_owned());
        Ok(Settings {
            stack,
            live: args.live.live_kpis,
            store,
            dead_letter,
            out,
            lookback: args.window.lookback,
            queries: args.kpi.queries,
            parquet: args.kpi.parquet,
            unknown_fields: args.dead_letter.unknown_fields,
            fields: args.fields.fields.clone(),
            tuning: AwsTuning {
                write_concurrency: args.store.write_concurrency,
                scan_segments: args.store.scan_segments,
                ..AwsTuning::default()
            },
        })
    }
}

/// The ingest function: its store and dead-letter output, opened once.
pub struct IngestFunction {
    store: Arc<dyn TripStore>,
    dead_letters: Arc<dyn DeadLetterSink>,
    /// The declared fields, and what to do with undeclared ones.
    pub fields: FieldRules,
    /// Records merged between two looks at the deadline.
    pub chunk_records: usize,
    /// Time kept in hand at the deadline.
    pub deadline_margin: Duration,
    /// The `stack` dimension of its EMF lines ([`Settings::stack`]).
    pub stack: String,
    /// The live KPIs kept with each merge (`TRIPFLOW_LIVE_KPIS`).
    pub live: Option<Arc<dyn crate::store::LiveFold>>,
}

/// What one ingest invocation did: the counts of its one log line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct IngestSummary {
    /// Records handed to this invocation.
    pub records: u64,
    /// Counts of the records processed (`read` may be fewer than `records` near the
    /// deadline).
    pub counts: IngestCounts,
}

impl IngestFunction {
    /// Opens the store and the dead-letter output the settings name.
    ///
    /// # Errors
    /// When `TRIPFLOW_DEAD_LETTER` is not set, or a backend cannot be opened (a missing
    /// table, say).
    pub async fn open(settings: &Settings, aws: &AwsEnv) -> Result<Self> {
        let Some(dead_letter) = &settings.dead_letter else {
            return Err(Error::config(
                "TRIPFLOW_DEAD_LETTER is not set; set it to s3://BUCKET/PREFIX, where rejected records are kept",
            ));
        };
        let store = config::open_store(&settings.store, aws, &settings.tuning).await?;
        let (dead_letters, _) = config::open_dead_letters(&DeadLetterUrl::Object(dead_letter.clone()), aws).await?;
        let declared = config::read_fields(settings.fields.as_deref(), aws).await?;
        let live = if settings.live {
            let queries = kpi::queries::load_or_builtin(settings.queries.as_deref())?;
            let columns = kpi::table_columns(store.as_ref(), &declared).await?;
            let kpis = kpi::live::LiveKpis::compile(&queries, &declared, columns).await?;
            Some(Arc::new(kpis) as Arc<dyn crate::store::LiveFold>)
        } else {
            None
        };
        let fields = FieldRules { declared, unknown: settings.unknown_fields };
        Ok(IngestFunction { fields, stack: settings.stack.clone(), live, ..Self::new(store, dead_letters) })
    }

    /// A function over a store and a dead-letter output already opened.
    pub fn new(store: Arc<dyn TripStore>, dead_letters: Arc<dyn DeadLetterSink>) -> Self {
        IngestFunction {
            store,
            dead_letters,
            fields: FieldRules::default(),
            chunk_records: DEFAULT_CHUNK_RECORDS,
            deadline_margin: DEFAULT_DEADLINE_MARGIN,
            stack: telemetry::DEFAULT_STACK.to_owned(),
            live: None,
        }
    }

    /// Merges a Kinesis batch, chunk by chunk, until done or near `deadline`; `now`
    /// tells the time (the system clock in the binary).
    ///
    /// # Errors
    /// When a record's envelope lacks its position, or the store or the dead-letter
    /// output fails after its retries: Lambda then retries the batch (or bisects it),
    /// and the replay is harmless.
    pub async fn handle(
        &self,
        event: KinesisEvent,
        deadline: SystemTime,
        now: impl Fn() -> SystemTime,
    ) -> Result<(KinesisEventResponse, IngestSummary)> {
        let records = event.records.len() as u64;
        let mut shards: Vec<ShardId> = Vec::new();
        let mut batch = Vec::with_capacity(event.records.len());
        // The same identity as `tripflow ingest` gives the stream: one invocation's
        // records all come from one event source mapping, so one stream.
        let stream = event
            .records
            .first()
            .and_then(|r| r.event_source_arn.as_deref())
            .and_then(|arn| arn.rsplit_once(":stream/"))
            .map(|(_, name)| format!("kinesis:{name}"));
        let stream = match (stream, event.records.is_empty()) {
            (Some(stream), _) => stream,
            (None, true) => String::new(),
            (None, false) => {
                return Err(Error::stream(
                    "a Kinesis event record has no eventSourceARN \"arn:aws:kinesis:…:stream/NAME\"; \
                     is the function wired to a Kinesis event source mapping?",
                ));
            }
        };
        for (i, r) in event.records.into_iter().enumerate() {
            // eventID is "shardId-000000000000:<sequence number>".
            let shard = r.event_id.as_deref().and_then(|id| id.split_once(':')).map(|(shard, _)| shard.to_owned());
            let sequence_number = r.kinesis.sequence_number;
            let (Some(shard), false) = (shard, sequence_number.is_empty()) else {
                return Err(Error::stream(format!(
                    "Kinesis event record {i} has no eventID \"shardId-…:SEQUENCE\" or no sequenceNumber; \
                     is the function wired to a Kinesis event source mapping?"
                )));
            };
            let index = shards.iter().position(|s| *s == shard).unwrap_or_else(|| {
                shards.push(shard);
                shards.len() - 1
            });
            let record = StreamRecord {
                sequence_number: SequenceNumber(sequence_number.into()),
                partition_key: r.kinesis.partition_key.into(),
                data: r.kinesis.data.0,
                arrival: r.kinesis.approximate_arrival_timestamp.0,
            };
            batch.push(Pending { shard: index, record });
        }

        let mut response = KinesisEventResponse::default();
        let mut counts = IngestCounts::default();
        let mut longest = Duration::ZERO;
        let mut times = BatchTimes::default();
        let mut rest = batch.into_iter().peekable();
        while rest.peek().is_some() {
            let began = now();
            let left = deadline.duration_since(began).unwrap_or_default();
            if left < self.deadline_margin + longest {
                let first = rest.peek().expect("a record is left");
                response.add_failure(first.record.sequence_number.0.clone());
                break;
            }
            let chunk: Vec<Pending> = rest.by_ref().take(self.chunk_records.max(1)).collect();
            let (chunk_counts, _, chunk_times) = merge_batch(
                self.store.as_ref(),
                self.dead_letters.as_ref(),
                &stream,
                &shards,
                chunk,
                &self.fields,
                self.live.clone(),
            )
            .await?;
            counts.add(&chunk_counts);
            times.add(&chunk_times);
            longest = longest.max(now().duration_since(began).unwrap_or_default());
        }
        let summary = IngestSummary { records, counts };
        info!(
            records,
            read = counts.read,
            applied = counts.applied,
            duplicate_or_stale = counts.duplicate_or_stale,
            dead_lettered = counts.dead_lettered,
            undeclared = counts.undeclared,
            store_writes = counts.store_writes,
            stopped_at = response.batch_item_failures.first().and_then(|f| f.item_identifier.as_deref()),
            "Merged Kinesis batch."
        );
        // The same figures as `tripflow ingest --metrics-addr` serves, for CloudWatch.
        println!("{}", telemetry::emf_line(&self.stack, "ingest", &counts, &times, now()));
        Ok((response, summary))
    }
}

/// What the KPI function is asked to do.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum KpiRequest {
    /// The live files of the dates whose live state changed (`{"live": true}`, on a
    /// rate schedule).
    Live {
        /// True.
        live: bool,
    },
    /// A backfill: exactly these dates.
    Dates {
        /// `YYYY-MM-DD` dates.
        dates: Vec<String>,
    },
    /// EventBridge Scheduler's payload (the template sets it): the UTC date of
    /// `scheduled_time` and the lookback days before it.
    Scheduled {
        /// RFC 3339, e.g. `2024-05-26T23:59:00Z`.
        scheduled_time: String,
    },
    /// A scheduled EventBridge rule's event: its `time`, read as `scheduled_time`.
    Rule {
        /// RFC 3339.
        time: String,
    },
}

/// What a KPI invocation wrote; the function's response.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct KpiSummary {
    /// The dates asked for.
    pub requested: Vec<NaiveDate>,
    /// The dates marked changed that a scheduled run recomputed with them.
    pub changed: Vec<NaiveDate>,
    /// Changed dates left without completed trips, whose KPI files were removed.
    pub removed: Vec<NaiveDate>,
    /// The dates that had completed trips, each with a `kpi.json`.
    pub dates: Vec<NaiveDate>,
    /// Every file written.
    pub files: Vec<String>,
    /// Trips exported to the query engine.
    pub exported_rows: usize,
    /// The live files written (`{"live": true}`), and the dates held until settled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub live: Option<LiveSummary>,
}

/// What a live publication did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct LiveSummary {
    /// Dates whose live file was written.
    pub written: Vec<NaiveDate>,
    /// Dates whose live file was removed (no completed trip left).
    pub removed: Vec<NaiveDate>,
    /// Dates rebuilt from the table first.
    pub rebuilt: Vec<NaiveDate>,
    /// Dates held until they are settled.
    pub held: Vec<NaiveDate>,
}

/// The KPI function: its store, queries and output, opened once.
pub struct KpiFunction {
    store: Arc<dyn TripStore>,
    queries: Vec<KpiQuery>,
    out: OutputLocation,
    lookback: u32,
    formats: Formats,
    fields: Fields,
    stack: String,
    /// `TRIPFLOW_LIVE_KPIS`.
    keeps_live: bool,
    /// The live KPIs, compiled at the first `{"live": true}`.
    live: tokio::sync::OnceCell<Box<kpi::live::LiveKpis>>,
}

impl KpiFunction {
    /// Opens the store and output, and loads the queries, that the settings name.
    ///
    /// # Errors
    /// When `TRIPFLOW_OUT` is not set, a query folder cannot be read, or a backend
    /// cannot be opened.
    pub async fn open(settings: &Settings, aws: &AwsEnv) -> Result<Self> {
        let Some(out) = &settings.out else {
            return Err(Error::config("TRIPFLOW_OUT is not set; set it to s3://BUCKET/PREFIX for the KPI files"));
        };
        let queries = kpi::queries::load_or_builtin(settings.queries.as_deref())?;
        let out = config::open_output(out, aws).await?;
        let store = config::open_store(&settings.store, aws, &settings.tuning).await?;
        let fields = config::read_fields(settings.fields.as_deref(), aws).await?;
        Ok(KpiFunction {
            store,
            queries,
            out,
            lookback: settings.lookback,
            formats: Formats { parquet: settings.parquet },
            fields,
            stack: settings.stack.clone(),
            keeps_live: settings.live,
            live: tokio::sync::OnceCell::new(),
        })
    }

    /// Writes the live files of the dates whose live state changed since they were last
    /// written (building the state from the table on the first run).
    async fn publish_live(&self) -> Result<KpiSummary> {
        if !self.keeps_live {
            return Err(Error::config(
                "{\"live\": true} asks for the live KPIs, but TRIPFLOW_LIVE_KPIS is not true: set it on both \
                 functions (the template's LiveKpis parameter)",
            ));
        }
        let live = self
            .live
            .get_or_try_init(|| async {
                let columns = kpi::table_columns(self.store.as_ref(), &self.fields).await?;
                kpi::live::LiveKpis::compile(&self.queries, &self.fields, columns).await.map(Box::new)
            })
            .await?;
        if let kpi::live::Resumed::Rebuilt(why) = live.resume(self.store.as_ref()).await? {
            info!(%why, "Live KPIs: built the state from the table.");
        }
        let published = live.publish(self.store.as_ref(), &self.out, true).await?;
        info!(
            written = published.written.len(),
            removed = published.removed.len(),
            held = published.held.len(),
            "Live KPIs published."
        );
        Ok(KpiSummary {
            live: Some(LiveSummary {
                written: published.written,
                removed: published.removed,
                rebuilt: published.extremes_recomputed,
                held: published.held,
            }),
            ..KpiSummary::default()
        })
    }

    /// The dates a request covers.
    ///
    /// # Errors
    /// When a date or time does not parse.
    pub fn dates(&self, request: &KpiRequest) -> Result<Vec<NaiveDate>> {
        let scheduled = |time: &str| -> Result<Vec<NaiveDate>> {
            let at = DateTime::parse_from_rfc3339(time.trim()).map_err(|e| {
                Error::config(format!(
                    "scheduled_time {time:?} is not an RFC 3339 time ({e}), e.g. 2024-05-26T23:59:00Z"
                ))
            })?;
            config::lookback_dates(self.lookback, at.with_timezone(&Utc).date_naive())
        };
        match request {
            KpiRequest::Dates { dates } if dates.is_empty() => {
                Err(Error::config("\"dates\" is empty; list the YYYY-MM-DD dates to report"))
            }
            KpiRequest::Dates { dates } => dates.iter().map(|d| config::parse_date(d)).collect(),
            KpiRequest::Scheduled { scheduled_time: time } | KpiRequest::Rule { time } => scheduled(time),
            KpiRequest::Live { .. } => Ok(Vec::new()),
        }
    }

    /// Runs the KPI job for the request's dates.
    ///
    /// # Errors
    /// When the request is not understood, a query fails or an output cannot be written.
    pub async fn handle(&self, request: serde_json::Value) -> Result<KpiSummary> {
        let request: KpiRequest = serde_json::from_value(request.clone()).map_err(|_| {
            Error::config(format!(
                "the KPI function takes {{\"scheduled_time\": \"2024-05-26T23:59:00Z\"}}, {{\"dates\": [\"2024-05-25\"]}} \
                 or {{\"live\": true}}, not {request}"
            ))
        })?;
        if let KpiRequest::Live { live } = request {
            if !live {
                return Err(Error::config("{\"live\": false} asks for nothing; send {\"live\": true}"));
            }
            return self.publish_live().await;
        }
        // `{"dates": []}` is a smoke test after a deploy: the function starts and answers.
        if matches!(&request, KpiRequest::Dates { dates } if dates.is_empty()) {
            info!("No dates asked for; nothing to do.");
            return Ok(KpiSummary::default());
        }
        let began = std::time::Instant::now();
        let requested = self.dates(&request)?;
        // A backfill is exactly its dates; a scheduled run adds the changed ones.
        let selection = match request {
            KpiRequest::Dates { .. } | KpiRequest::Live { .. } => DateSelection::Dates(requested.clone()),
            KpiRequest::Scheduled { .. } | KpiRequest::Rule { .. } => DateSelection::Nightly(requested.clone()),
        };
        let report = kpi::run(
            self.store.as_ref(),
            &self.queries,
            &self.fields,
            &selection,
            &self.out,
            self.formats,
            &crate::observe::progress::Quiet,
        )
        .await?;
        info!(
            requested = requested.len(),
            changed = report.changed.len(),
            dates = report.dates.len(),
            files = report.files.len(),
            "KPI run done."
        );
        // For the alarm on a missed night, and the run's figures.
        let emf = telemetry::kpi_emf_line(
            &self.stack,
            &telemetry::KpiFigures {
                dates: report.dates.len(),
                trips: report.exported_rows,
                took: began.elapsed(),
                consumed: report.consumed,
                bytes_written: report.bytes_written,
                live: report.certificate.as_ref().map(|c| (c.compared.len(), c.mismatches.len())),
            },
            SystemTime::now(),
        );
        println!("{emf}");
        Ok(KpiSummary {
            requested,
            changed: report.changed,
            removed: report.removed,
            dates: report.dates,
            files: report.files,
            exported_rows: report.exported_rows,
            live: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Mutex;

    use super::*;
    use crate::ingest::deadletter::FileDeadLetters;
    use crate::store::sqlite::SqliteStore;

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k: &str| map.get(k).cloned()
    }

    #[test]
    fn an_unknown_handler_names_the_valid_ones() {
        assert_eq!(Handler::parse(Some("ingest")).unwrap(), Handler::Ingest);
        assert_eq!(Handler::parse(Some("kpi")).unwrap(), Handler::Kpi);
        for bad in [None, Some("bootstrap")] {
            let err = Handler::parse(bad).unwrap_err().to_string();
            assert!(err.contains("'ingest'") && err.contains("'kpi'"), "{err}");
        }
    }

    #[test]
    fn settings_come_from_the_cli_variables() {
        let s = Settings::from_vars(vars(&[
            ("TRIPFLOW_STORE", "dynamodb://bolt"),
            ("TRIPFLOW_OUT", "s3://bucket/prefix"),
            ("TRIPFLOW_LOOKBACK", "3"),
            ("TRIPFLOW_WRITE_CONCURRENCY", "8"),
        ]))
        .unwrap();
        assert_eq!(s.store, StoreUrl::DynamoDb("bolt".into()));
        let out = ObjectPlace::S3 { bucket: "bucket".into(), prefix: "prefix".into() };
        assert_eq!((s.out, s.dead_letter, s.lookback), (Some(out), None, 3));
        assert_eq!(s.tuning.write_concurrency, 8);
        let err = |pairs: &[(&str, &str)]| Settings::from_vars(vars(pairs)).unwrap_err().to_string();
        assert!(err(&[]).contains("TRIPFLOW_STORE"));
        assert!(err(&[("TRIPFLOW_STORE", "embedded")]).contains("dynamodb://TABLE"));
        let store = ("TRIPFLOW_STORE", "dynamodb://bolt");
        let lookback = err(&[store, ("TRIPFLOW_LOOKBACK", "40000")]);
        assert!(lookback.contains("--lookback 40000") && lookback.contains("36525"), "{lookback}");
        let negative = err(&[store, ("TRIPFLOW_LOOKBACK", "-1")]);
        assert!(negative.starts_with("TRIPFLOW_LOOKBACK: invalid value '-1' for '--lookback"), "{negative}");
        let zero = err(&[store, ("TRIPFLOW_WRITE_CONCURRENCY", "0")]);
        assert!(zero.starts_with("TRIPFLOW_WRITE_CONCURRENCY: ") && zero.contains("positive whole number"), "{zero}");
        let segments = err(&[store, ("TRIPFLOW_SCAN_SEGMENTS", "0")]);
        assert!(segments.starts_with("TRIPFLOW_SCAN_SEGMENTS: invalid value '0'"), "{segments}");
        let quiet = Settings::from_vars(vars(&[store])).unwrap();
        assert_eq!((quiet.out, quiet.lookback, quiet.parquet), (None, 1, false), "unset is unset, not a default");
        // The metrics' stack: the template's, else the function's name.
        assert_eq!(quiet.stack, telemetry::DEFAULT_STACK);
        let named = |pairs: &[(&str, &str)]| Settings::from_vars(vars(&[&[store], pairs].concat())).unwrap().stack;
        assert_eq!(named(&[("AWS_LAMBDA_FUNCTION_NAME", "a-ingest")]), "a-ingest");
        assert_eq!(named(&[("AWS_LAMBDA_FUNCTION_NAME", "a-ingest"), ("TRIPFLOW_STACK", "a")]), "a");
        for (value, parquet) in [("true", true), ("1", true), ("yes", true), ("false", false), ("0", false)] {
            assert_eq!(Settings::from_vars(vars(&[store, ("TRIPFLOW_PARQUET", value)])).unwrap().parquet, parquet);
        }
    }

    fn event(records: &[(&str, String)]) -> KinesisEvent {
        let records: Vec<serde_json::Value> = records
            .iter()
            .enumerate()
            .map(|(i, (trip, data))| {
                use base64::Engine;
                serde_json::json!({
                    "eventID": format!("shardId-000000000000:{:056}", i + 1),
                    "eventSource": "aws:kinesis",
                    "eventSourceARN": "arn:aws:kinesis:us-east-1:123456789012:stream/bolt_streams",
                    "kinesis": {
                        "approximateArrivalTimestamp": 1716643140.5,
                        "data": base64::engine::general_purpose::STANDARD.encode(data),
                        "partitionKey": trip,
                        "sequenceNumber": format!("{:056}", i + 1),
                    }
                })
            })
            .collect();
        serde_json::from_value(serde_json::json!({ "Records": records })).unwrap()
    }

    fn start(trip: &str) -> String {
        format!(
            r#"{{"trip_id":"{trip}","pickup_location_id":1,"dropoff_location_id":2,"vendor_id":1,"pickup_datetime":"2024-05-25 10:00:00"}}"#
        )
    }

    /// A clock that moves one second each time it is read.
    fn ticking(from: SystemTime) -> impl Fn() -> SystemTime {
        let t = Mutex::new(from);
        move || {
            let mut t = t.lock().unwrap();
            *t += Duration::from_secs(1);
            *t
        }
    }

    #[tokio::test]
    async fn near_the_deadline_the_first_record_not_processed_is_named() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Arc::new(SqliteStore::open(tmp.path()).unwrap());
        let dead = Arc::new(FileDeadLetters::open(&tmp.path().join("dead.ndjson")).unwrap());
        let mut f = IngestFunction::new(store.clone(), dead);
        f.chunk_records = 2;
        f.deadline_margin = Duration::from_secs(3);
        let trips: Vec<(&str, String)> = ["a", "b", "c", "d", "e", "f"].iter().map(|t| (*t, start(t))).collect();
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        // The clock reads t0+1 before chunk 1 (5 s left: it runs, taking 1 s), then t0+3
        // before chunk 2: 3 s left, less than the 3 s margin plus that 1 s, so it stops.
        let (response, summary) = f.handle(event(&trips), t0 + Duration::from_secs(6), ticking(t0)).await.unwrap();
        assert_eq!(summary.counts.read, 2);
        assert_eq!(summary.records, 6);
        let named: Vec<_> = response.batch_item_failures.iter().map(|f| f.item_identifier.clone().unwrap()).collect();
        assert_eq!(named, [format!("{:056}", 3)], "the first record of the chunk not run");
        for (trip, stored) in [("a", true), ("b", true), ("c", false), ("f", false)] {
            assert_eq!(store.get(trip).await.unwrap().is_some(), stored, "{trip}");
        }

        // With time enough, the whole batch is merged and nothing is named.
        let (response, summary) = f.handle(event(&trips), t0 + Duration::from_secs(60), ticking(t0)).await.unwrap();
        assert!(response.batch_item_failures.is_empty());
        assert_eq!((summary.counts.read, summary.counts.applied, summary.counts.duplicate_or_stale), (6, 4, 2));
    }

    #[tokio::test]
    async fn a_record_without_its_position_fails_the_invocation() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Arc::new(SqliteStore::open(tmp.path()).unwrap());
        let dead = Arc::new(FileDeadLetters::open(&tmp.path().join("dead.ndjson")).unwrap());
        let f = IngestFunction::new(store.clone(), dead);
        let mut e = event(&[("a", start("a"))]);
        e.records[0].event_id = None;
        let err = f.handle(e, SystemTime::now() + Duration::from_secs(60), SystemTime::now).await.unwrap_err();
        assert!(err.to_string().contains("eventID"), "{err}");
        let mut e = event(&[("a", start("a"))]);
        e.records[0].event_source_arn = None;
        let err = f.handle(e, SystemTime::now() + Duration::from_secs(60), SystemTime::now).await.unwrap_err();
        assert!(err.to_string().contains("eventSourceARN"), "{err}");
        assert!(store.get("a").await.unwrap().is_none(), "nothing merged");
    }

    #[tokio::test]
    async fn dead_letters_carry_the_stream_named_by_the_event_source() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Arc::new(SqliteStore::open(tmp.path()).unwrap());
        let path = tmp.path().join("dead.ndjson");
        let f = IngestFunction::new(store, Arc::new(FileDeadLetters::open(&path).unwrap()));
        let e = event(&[("a", "not json".into())]);
        f.handle(e, SystemTime::now() + Duration::from_secs(60), SystemTime::now).await.unwrap();
        let letters = FileDeadLetters::read_all(&path).unwrap();
        assert_eq!(letters.len(), 1);
        assert_eq!(letters[0].stream, "kinesis:bolt_streams", "as tripflow ingest names a Kinesis stream");
    }
}
