//! Live metrics of ingest, through the `metrics` facade.
//!
//! Ingest records its figures here once per batch, never per record. Nothing is kept
//! unless a recorder is installed: `tripflow ingest --metrics-addr` installs the
//! Prometheus exporter ([`serve`]), which serves them as text at `/metrics`. The Lambda
//! ingest function has no server to scrape, so it writes the same figures as one
//! CloudWatch Embedded Metric Format log line per batch ([`emf_line`]).

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};

use super::IngestCounts;
use super::units;
use crate::{Error, Result};

/// Records read from the stream.
pub const READ: &str = "tripflow_ingest_records_read_total";
/// Records whose group was stored.
pub const APPLIED: &str = "tripflow_ingest_records_applied_total";
/// Records already stored, or older than what is.
pub const DUPLICATE_OR_STALE: &str = "tripflow_ingest_records_duplicate_or_stale_total";
/// Records sent to the dead-letter output.
pub const DEAD_LETTERED: &str = "tripflow_ingest_records_dead_lettered_total";
/// Records that carried fields no declared field names.
pub const UNDECLARED: &str = "tripflow_ingest_records_with_undeclared_fields_total";
/// Write requests sent to the trip store.
pub const STORE_WRITES: &str = "tripflow_ingest_store_writes_total";
/// Bytes of record data read from the stream.
pub const STREAM_BYTES: &str = "tripflow_ingest_stream_bytes_total";
/// DynamoDB write capacity units consumed by this process so far (a gauge, as units
/// come in halves).
pub const WRITE_UNITS: &str = "tripflow_dynamodb_write_capacity_units";
/// DynamoDB read capacity units consumed by this process so far.
pub const READ_UNITS: &str = "tripflow_dynamodb_read_capacity_units";
/// Micro-batches flushed.
pub const BATCHES: &str = "tripflow_ingest_batches_total";
/// Seconds per batch, by `phase`: `decode_validate` or `merge`.
pub const BATCH_SECONDS: &str = "tripflow_ingest_batch_seconds";
/// Per `shard`: time between the last record read and the newest one in the shard.
pub const MILLIS_BEHIND: &str = "tripflow_ingest_shard_millis_behind_latest";
/// Per `shard`: records in the shard not yet read (the embedded stream; counted up to
/// the stream's cap, 100,000).
pub const RECORDS_BEHIND: &str = "tripflow_ingest_shard_records_behind";
/// Unix time of the last checkpoint written.
pub const LAST_CHECKPOINT: &str = "tripflow_ingest_last_checkpoint_timestamp_seconds";
/// 1, labelled with the build's `version`.
pub const BUILD_INFO: &str = "tripflow_build_info";

/// How long one batch spent in each phase.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchTimes {
    /// Decoding into Arrow, validating the columns and coalescing each trip's events.
    pub decode_validate: Duration,
    /// The conditional merge into the store and the dead letters.
    pub merge: Duration,
}

impl BatchTimes {
    /// Adds another batch's times to these.
    pub fn add(&mut self, o: &BatchTimes) {
        self.decode_validate += o.decode_validate;
        self.merge += o.merge;
    }
}

/// Records one batch's counts and times.
pub fn batch(counts: &IngestCounts, times: &BatchTimes) {
    counter!(READ).increment(counts.read);
    counter!(APPLIED).increment(counts.applied);
    counter!(DUPLICATE_OR_STALE).increment(counts.duplicate_or_stale);
    counter!(DEAD_LETTERED).increment(counts.dead_lettered);
    counter!(UNDECLARED).increment(counts.undeclared);
    counter!(STORE_WRITES).increment(counts.store_writes);
    counter!(BATCHES).increment(counts.batches);
    counter!(STREAM_BYTES).increment(counts.stream_bytes);
    gauge!(WRITE_UNITS, "computed" => counts.capacity_computed.to_string()).increment(units(counts.write_milliunits));
    gauge!(READ_UNITS, "computed" => counts.capacity_computed.to_string()).increment(units(counts.read_milliunits));
    histogram!(BATCH_SECONDS, "phase" => "decode_validate").record(times.decode_validate.as_secs_f64());
    histogram!(BATCH_SECONDS, "phase" => "merge").record(times.merge.as_secs_f64());
}

/// Records how far behind `shard` is, as far as the stream can tell.
pub fn shard_lag(shard: &str, millis: Option<u64>, records: Option<u64>) {
    if let Some(ms) = millis {
        gauge!(MILLIS_BEHIND, "shard" => shard.to_owned()).set(ms as f64);
    }
    if let Some(n) = records {
        gauge!(RECORDS_BEHIND, "shard" => shard.to_owned()).set(n as f64);
    }
}

/// Live files written (`--live-kpis`).
pub const LIVE_FILES: &str = "tripflow_live_files_written_total";
/// Dates recomputed from the table because a minimum or maximum was retracted.
pub const LIVE_EXTREMES: &str = "tripflow_live_extremes_recomputed_total";
/// When the live files were last published, in seconds since the epoch.
pub const LIVE_PUBLISHED: &str = "tripflow_live_last_published_timestamp_seconds";

/// Records a publication of the live KPIs: files written, and dates recomputed first.
pub fn live_published(files: usize, extremes_recomputed: usize) {
    counter!(LIVE_FILES).increment(files as u64);
    counter!(LIVE_EXTREMES).increment(extremes_recomputed as u64);
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    gauge!(LIVE_PUBLISHED).set(now.as_secs_f64());
}

/// Records that checkpoints were just written.
pub fn checkpointed() {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    gauge!(LAST_CHECKPOINT).set(now.as_secs_f64());
}

/// Serves every metric as Prometheus text at `http://ADDR/metrics`, from now until the
/// process ends. Call it once, inside the Tokio runtime.
///
/// # Errors
/// When the address cannot be bound, or a recorder is already installed.
pub fn serve(addr: SocketAddr) -> Result<()> {
    let buckets = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];
    PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_buckets_for_metric(Matcher::Full(BATCH_SECONDS.to_owned()), &buckets)
        .and_then(|b| b.install())
        .map_err(|e| {
            let context = format!("--metrics-addr {addr}: cannot serve metrics");
            Error::config_because(context, e, "choose a free address and port")
        })?;
    describe_counter!(READ, "Records read from the stream.");
    describe_counter!(APPLIED, "Records whose group was stored (absent before, or older).");
    describe_counter!(DUPLICATE_OR_STALE, "Records whose version was already stored, or older than the stored one.");
    describe_counter!(DEAD_LETTERED, "Records rejected to the dead-letter output.");
    describe_counter!(UNDECLARED, "Records that carried fields no declared field names (see `tripflow fields`).");
    describe_counter!(STORE_WRITES, "Write requests sent to the trip store.");
    describe_counter!(BATCHES, "Micro-batches flushed.");
    describe_counter!(STREAM_BYTES, metrics::Unit::Bytes, "Bytes of record data read from the stream.");
    describe_gauge!(WRITE_UNITS, "DynamoDB write capacity units consumed so far (computed=true: from item sizes).");
    describe_gauge!(READ_UNITS, "DynamoDB read capacity units consumed so far (computed=true: from item sizes).");
    describe_histogram!(BATCH_SECONDS, metrics::Unit::Seconds, "Seconds per micro-batch, by phase.");
    describe_gauge!(MILLIS_BEHIND, "Milliseconds between the last record read and the newest in the shard.");
    describe_gauge!(RECORDS_BEHIND, "Records in the shard not yet read (embedded stream; capped at 100000).");
    describe_gauge!(LAST_CHECKPOINT, metrics::Unit::Seconds, "Unix time of the last checkpoint written.");
    describe_gauge!(BUILD_INFO, "1, labelled with the tripflow version.");
    gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    Ok(())
}

/// How CloudWatch should read a figure of an EMF line.
#[derive(Clone, Copy)]
enum Unit {
    Count,
    Seconds,
    Bytes,
}

/// The `stack` dimension of a process that was not told its stack.
pub const DEFAULT_STACK: &str = "tripflow";

/// One CloudWatch Embedded Metric Format log line: each figure as a metric in the
/// `tripflow` namespace, by `stack` and `function` (one series per stack, so that two
/// stacks in one account never answer for each other's alarms). CloudWatch Logs turns
/// the line into metrics with no API call from the process.
fn emf(
    stack: &str,
    function: &str,
    figures: &[(&str, Unit, serde_json::Value)],
    properties: &[(&str, serde_json::Value)],
    at: SystemTime,
) -> String {
    let millis = at.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis();
    let metrics: Vec<serde_json::Value> = figures
        .iter()
        .map(|(name, unit, _)| {
            let unit = match unit {
                Unit::Count => "Count",
                Unit::Seconds => "Seconds",
                Unit::Bytes => "Bytes",
            };
            serde_json::json!({ "Name": name, "Unit": unit })
        })
        .collect();
    let mut line = serde_json::json!({
        "_aws": {
            "Timestamp": millis,
            "CloudWatchMetrics": [{ "Namespace": "tripflow", "Dimensions": [["stack", "function"]], "Metrics": metrics }],
        },
        "stack": stack,
        "function": function,
    });
    for (name, _, value) in figures {
        line[*name] = value.clone();
    }
    for (name, value) in properties {
        line[*name] = value.clone();
    }
    line.to_string()
}

/// The EMF line of an ingest batch: the counts and the phases' seconds.
pub fn emf_line(stack: &str, function: &str, counts: &IngestCounts, times: &BatchTimes, at: SystemTime) -> String {
    use serde_json::json;
    let figures = [
        ("read", Unit::Count, json!(counts.read)),
        ("applied", Unit::Count, json!(counts.applied)),
        ("duplicate_or_stale", Unit::Count, json!(counts.duplicate_or_stale)),
        ("dead_lettered", Unit::Count, json!(counts.dead_lettered)),
        ("undeclared", Unit::Count, json!(counts.undeclared)),
        ("store_writes", Unit::Count, json!(counts.store_writes)),
        ("stream_bytes", Unit::Bytes, json!(counts.stream_bytes)),
        ("write_capacity_units", Unit::Count, json!(units(counts.write_milliunits))),
        ("read_capacity_units", Unit::Count, json!(units(counts.read_milliunits))),
        ("decode_validate_seconds", Unit::Seconds, json!(times.decode_validate.as_secs_f64())),
        ("merge_seconds", Unit::Seconds, json!(times.merge.as_secs_f64())),
    ];
    // Whether the capacity units were computed (the service reported none): a property,
    // not a metric.
    emf(stack, function, &figures, &[("capacity_computed", json!(counts.capacity_computed))], at)
}

/// What a KPI run did, for its EMF line.
#[derive(Debug, Clone, Copy, Default)]
pub struct KpiFigures {
    /// Dates written.
    pub dates: usize,
    /// Trips exported.
    pub trips: usize,
    /// The run's time.
    pub took: Duration,
    /// DynamoDB capacity consumed.
    pub consumed: crate::store::Consumed,
    /// Bytes of the files written.
    pub bytes_written: u64,
    /// With live KPIs: the dates the certificate compared, and its mismatches.
    pub live: Option<(usize, usize)>,
}

/// The EMF line of a KPI run that wrote its files and the report: `KpiRunSucceeded` (1;
/// the template's alarm fires when no run succeeded in 25 hours), and the run's dates,
/// trips and seconds.
pub fn kpi_emf_line(stack: &str, run: &KpiFigures, at: SystemTime) -> String {
    use serde_json::json;
    let figures = [
        ("KpiRunSucceeded", Unit::Count, json!(1)),
        ("dates", Unit::Count, json!(run.dates)),
        ("trips", Unit::Count, json!(run.trips)),
        ("seconds", Unit::Seconds, json!(run.took.as_secs_f64())),
        ("read_capacity_units", Unit::Count, json!(units(run.consumed.read_milliunits))),
        ("write_capacity_units", Unit::Count, json!(units(run.consumed.write_milliunits))),
        ("bytes_written", Unit::Bytes, json!(run.bytes_written)),
    ];
    // The certificate's figures, when the table keeps live KPIs (the template's alarm
    // fires on any mismatch).
    let live = run.live.map(|(compared, mismatches)| {
        [("LiveDatesCompared", Unit::Count, json!(compared)), ("LiveMismatches", Unit::Count, json!(mismatches))]
    });
    let figures: Vec<_> = figures.into_iter().chain(live.into_iter().flatten()).collect();
    emf(stack, "kpi", &figures, &[("capacity_computed", json!(run.consumed.computed))], at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_emf_line_names_every_figure_it_carries() {
        let counts = IngestCounts {
            read: 5,
            applied: 3,
            duplicate_or_stale: 1,
            dead_lettered: 1,
            batches: 1,
            store_writes: 2,
            undeclared: 1,
            stream_bytes: 640,
            write_milliunits: 2500,
            read_milliunits: 500,
            capacity_computed: true,
        };
        let times = BatchTimes { decode_validate: Duration::from_millis(2), merge: Duration::from_millis(30) };
        let line = emf_line("prod", "ingest", &counts, &times, UNIX_EPOCH + Duration::from_secs(1_700_000_000));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["_aws"]["Timestamp"], 1_700_000_000_000u64);
        let names: Vec<&str> = v["_aws"]["CloudWatchMetrics"][0]["Metrics"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["Name"].as_str().unwrap())
            .collect();
        for name in &names {
            assert!(v[name].is_number(), "{name} is declared but not given");
        }
        assert_eq!((v["read"].as_u64(), v["dead_lettered"].as_u64()), (Some(5), Some(1)));
        assert_eq!(v["merge_seconds"].as_f64(), Some(0.03));
        // Capacity in units, and whether they were computed.
        assert_eq!((v["write_capacity_units"].as_f64(), v["read_capacity_units"].as_f64()), (Some(2.5), Some(0.5)));
        assert_eq!((v["stream_bytes"].as_u64(), v["capacity_computed"].as_bool()), (Some(640), Some(true)));
        assert!(!line.contains('\n'), "one line");
        assert_eq!(v["_aws"]["CloudWatchMetrics"][0]["Dimensions"], serde_json::json!([["stack", "function"]]));
        assert_eq!((v["stack"].as_str(), v["function"].as_str()), (Some("prod"), Some("ingest")));

        let kpi: serde_json::Value = serde_json::from_str(&kpi_emf_line(
            "prod",
            &KpiFigures { dates: 3, trips: 1200, took: Duration::from_millis(1500), ..KpiFigures::default() },
            UNIX_EPOCH,
        ))
        .unwrap();
        let metrics = kpi["_aws"]["CloudWatchMetrics"][0]["Metrics"].as_array().unwrap();
        for m in metrics {
            assert!(kpi[m["Name"].as_str().unwrap()].is_number(), "{m} is declared but not given");
        }
        assert_eq!((kpi["KpiRunSucceeded"].as_u64(), kpi["trips"].as_u64()), (Some(1), Some(1200)));
        assert_eq!(kpi["seconds"].as_f64(), Some(1.5));
    }
}
