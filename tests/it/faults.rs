//! Sustained DynamoDB faults: a proxy in front of the emulator throttles, answers 5xx,
//! leaves half of a batch write unprocessed and drops answers after the write took
//! effect, on at least a fifth of DynamoDB's requests. The ingest function, delivered
//! `data/` by an event source mapping that behaves as AWS's does, and the CLI's `ingest`
//! and `kpi` must keep going (the retry budget, docs/aws.md#retries): few failed
//! invocations, nothing lost, the table and the KPI files exact, and `applied` exact
//! although answers were lost.
//!
//! The retry policy compared in docs/aws.md was measured with these tests: set
//! `AWS_RETRY_MODE=standard` (or `adaptive`) around `cargo test faults` and it is handed
//! to the function and the CLI, which then use the SDK's own retry partition.

use std::collections::{BTreeMap, VecDeque};
use std::path::Path;
use std::process::Command;

use arrow::array::RecordBatch;
use serde_json::{Value, json};
use tripflow::store::dynamodb::DynamoStore;
use tripflow::store::{Projection, TripStore};

use crate::common::{copy_dir, data_dir, read_tree};
use crate::lambda::{Function, Outcome, RuntimeApi, kinesis_event, produced_records};
use crate::moto::{self, FaultProxy, unique};

/// Share of DynamoDB requests the proxy faults. A fifth of its faults is a slow answer,
/// which fails nothing, so about a quarter of the requests fail or half-succeed.
const FAULT_RATE: f64 = 0.3;
/// The event source mapping's BatchSize: small, for many invocations.
const BATCH_SIZE: usize = 100;
/// The template's default MaximumRetryAttempts.
const MAX_RETRY_ATTEMPTS: u32 = 10;

/// What an event source mapping did with one shard.
#[derive(Debug, Default)]
struct Delivery {
    invocations: u64,
    /// Invocations that returned an error: Lambda bisected their batch.
    errors: u64,
    /// Invocations that named a batch item failure: Lambda retried from it.
    partial: u64,
    /// Records handed to the function again.
    redelivered: u64,
    /// Records past MaximumRetryAttempts: the on-failure destination's, lost to the table.
    lost: u64,
}

/// The environment a process gets from the test's `AWS_RETRY_MODE`, if set.
fn retry_mode() -> Vec<(&'static str, String)> {
    std::env::var("AWS_RETRY_MODE").into_iter().map(|m| ("AWS_RETRY_MODE", m)).collect()
}

/// A function's environment: the table, `output` (its variable, and the bucket under
/// which `tripflow/` goes), DynamoDB through `proxy`, and the test's retry mode.
fn function_env(table: &str, output: (&'static str, &str), proxy: &FaultProxy) -> Vec<(&'static str, String)> {
    let mut vars = vec![
        ("TRIPFLOW_STORE", format!("dynamodb://{table}")),
        (output.0, format!("s3://{}/tripflow", output.1)),
        ("AWS_ENDPOINT_URL_DYNAMODB", proxy.url.clone()),
    ];
    vars.extend(retry_mode());
    vars
}

/// Delivers one shard's records as Lambda's Kinesis event source mapping does with
/// ReportBatchItemFailures and BisectBatchOnFunctionError: batches in order; after a
/// batch item failure, the batch again from that record; after a function error, each
/// half of the batch in turn; a record past MaximumRetryAttempts is given up.
async fn deliver(api: &RuntimeApi, records: &[(String, String, Vec<u8>)]) -> Delivery {
    let mut d = Delivery::default();
    for batch_start in (0..records.len()).step_by(BATCH_SIZE) {
        let mut queue = VecDeque::from([(batch_start, (batch_start + BATCH_SIZE).min(records.len()), 0u32)]);
        while let Some((from, to, tries)) = queue.pop_front() {
            if tries > 0 {
                d.redelivered += (to - from) as u64;
            }
            let (event, seqs) = kinesis_event(&records[from..to], 1 + from as u64);
            d.invocations += 1;
            match api.invoke_now(&event).await {
                Outcome::Response(body) => {
                    let failed = body["batchItemFailures"].as_array().cloned().unwrap_or_default();
                    let Some(first) = failed.first() else { continue };
                    d.partial += 1;
                    let id = first["itemIdentifier"].as_str().unwrap();
                    let at = from + seqs.iter().position(|s| s == id).expect("a failure names a record of the batch");
                    if tries >= MAX_RETRY_ATTEMPTS {
                        d.lost += (to - at) as u64;
                    } else {
                        queue.push_front((at, to, tries + 1));
                    }
                }
                Outcome::Error(_) => {
                    d.errors += 1;
                    if tries >= MAX_RETRY_ATTEMPTS {
                        d.lost += (to - from) as u64;
                    } else if to - from > 1 {
                        let mid = from + (to - from) / 2;
                        queue.push_front((mid, to, tries + 1));
                        queue.push_front((from, mid, tries + 1));
                    } else {
                        queue.push_front((from, to, tries + 1));
                    }
                }
            }
        }
    }
    d
}

/// The table's rows, every column, sorted by trip: one text to compare.
async fn table_text(store: &dyn TripStore) -> String {
    let batches = store.export(None, &Projection::all()).await.unwrap();
    let schema = batches[0].schema();
    let all = arrow::compute::concat_batches(&schema, &batches).unwrap();
    let order = arrow::compute::sort_to_indices(all.column(0), None, None).unwrap();
    let columns = all.columns().iter().map(|c| arrow::compute::take(c, &order, None).unwrap()).collect();
    let sorted = RecordBatch::try_new(schema, columns).unwrap();
    assert!(sorted.num_rows() > 1000, "data/ has thousands of trips: {}", sorted.num_rows());
    arrow::util::pretty::pretty_format_batches(&[sorted]).unwrap().to_string()
}

fn tripflow(dir: &Path, env: &[(&str, String)], args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_tripflow"))
        .current_dir(dir)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .args(args)
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "tripflow {args:?} failed:\n{text}");
    text
}

/// `data/` with no AWS at all: the counts line of `tripflow run`, its KPI files and its
/// table, as a clean run gives them.
async fn clean_run(tmp: &Path) -> (String, BTreeMap<String, Vec<u8>>, String) {
    let dir = tmp.join("clean");
    copy_dir(&data_dir(), &dir.join("data"));
    let text = tripflow(&dir, &[], &["run", "-q", "--out", "out"]);
    let home = tripflow::config::Home::new(dir.join("tripflow-data")).unwrap();
    let store = tripflow::config::open_store(
        &tripflow::config::StoreUrl::Embedded(home),
        &tripflow::config::AwsEnv::default(),
        &Default::default(),
    )
    .await
    .unwrap();
    (counts_line(&text), read_tree(&dir.join("out")), table_text(store.as_ref()).await)
}

/// The `read … = applied … + …` line of a run's output.
fn counts_line(text: &str) -> String {
    let line = text.lines().find(|l| l.contains(" = applied ")).unwrap_or_else(|| panic!("no counts in:\n{text}"));
    let line = &line[line.find("read ").unwrap()..];
    line.split("  (").next().unwrap().trim().to_owned()
}

/// The proxy's figures, and the assertion that it faulted at least a fifth of DynamoDB's
/// requests with every kind of fault.
fn assert_faulted(proxy: &FaultProxy) -> String {
    use std::sync::atomic::Ordering::Relaxed;
    let c = &proxy.counts;
    let requests = c.requests.load(Relaxed);
    let dynamodb = requests; // the other services do not go through this proxy
    let failed = proxy.failed();
    let figures = format!(
        "{failed} of {dynamodb} DynamoDB requests faulted ({:.1}%): {} throttled, {} 5xx, {} of {} batches half unprocessed, \
         {} dropped, {} answers lost after the write, and {} slowed",
        100.0 * failed as f64 / dynamodb as f64,
        c.throttled.load(Relaxed),
        c.errors.load(Relaxed),
        c.unprocessed.load(Relaxed),
        c.batch_writes.load(Relaxed),
        c.dropped_before.load(Relaxed),
        c.dropped_after.load(Relaxed),
        c.slowed.load(Relaxed),
    );
    assert!(failed * 5 >= dynamodb, "fewer than a fifth faulted: {figures}");
    for n in [&c.throttled, &c.errors, &c.unprocessed, &c.dropped_before, &c.dropped_after] {
        assert!(n.load(Relaxed) > 0, "a kind of fault was never injected: {figures}");
    }
    figures
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ingest_function_under_dynamodb_faults_fails_few_invocations_and_loses_nothing() {
    let aws = moto::aws();
    let (table, bucket) = (unique("faults"), unique("faults").to_lowercase());
    assert!(DynamoStore::new(&aws, &table).create_if_missing().await.unwrap());
    assert!(aws.create_bucket_if_missing(&bucket).await.unwrap());
    let tmp = tempfile::tempdir().unwrap();
    let (clean_counts, clean_files, clean_table) = clean_run(tmp.path()).await;
    let records = produced_records(tmp.path()).await;
    let proxy = FaultProxy::dynamodb(&moto::endpoint(), FAULT_RATE, 39).await;

    // Two function instances, one shard each, as Lambda runs one per shard: DynamoDB
    // through the proxy, S3 (the dead letters) straight to the emulator.
    let api = RuntimeApi::start().await;
    let vars = function_env(&table, ("TRIPFLOW_DEAD_LETTER", &bucket), &proxy);
    let functions = [Function::start(&api, "ingest", &vars), Function::start(&api, "ingest", &vars)];
    let began = std::time::Instant::now();
    let shards = ["shardId-000000000000", "shardId-000000000001"].map(|shard| {
        let of_shard: Vec<_> = records.iter().filter(|(s, _, _)| s == shard).cloned().collect();
        let api = api.clone();
        tokio::spawn(async move { deliver(&api, &of_shard).await })
    });
    let mut d = Delivery::default();
    for shard in shards {
        let s = shard.await.unwrap();
        d.invocations += s.invocations;
        d.errors += s.errors;
        d.partial += s.partial;
        d.redelivered += s.redelivered;
        d.lost += s.lost;
    }
    let took = began.elapsed();
    let figures = assert_faulted(&proxy);
    eprintln!("faults: {figures}; {d:?} in {:.1} s", took.as_secs_f64());
    let failed = d.errors + d.partial;
    assert!(failed * 20 <= d.invocations, "more than 5% of invocations failed: {d:?}; {figures}");
    assert_eq!(d.lost, 0, "records went to the on-failure destination: {d:?}");

    // Every EMF line together balances, and, when no invocation failed, is a clean run's.
    let log: String = functions.iter().map(Function::log).collect();
    assert!(!log.contains("not enough retry quota"), "a call ran out of retries: {log}");
    let emf: Vec<Value> =
        log.lines().filter(|l| l.starts_with("{\"_aws\"")).map(|l| serde_json::from_str(l).unwrap()).collect();
    let sum = |k: &str| emf.iter().map(|l| l[k].as_u64().unwrap()).sum::<u64>();
    let counts = format!(
        "read {} = applied {} + duplicate_or_stale {} + dead_lettered {}",
        sum("read"),
        sum("applied"),
        sum("duplicate_or_stale"),
        sum("dead_lettered")
    );
    if failed == 0 {
        assert_eq!(counts, clean_counts, "{d:?}");
    } else {
        assert!(sum("read") >= records.len() as u64, "{counts} after {d:?}");
    }

    let store = DynamoStore::new(&aws, &table);
    assert!(table_text(&store).await == clean_table, "the table differs from a clean run's");

    // The KPI function, through the same faults, writes the clean run's files.
    let dates: Vec<String> = clean_files
        .keys()
        .filter_map(|k| k.strip_prefix("kpi_output/date=")?.strip_suffix("/kpi.json").map(str::to_owned))
        .collect();
    let api = RuntimeApi::start().await;
    let kpi = Function::start(&api, "kpi", &function_env(&table, ("TRIPFLOW_OUT", &bucket), &proxy));
    let outcome = api.invoke_now(&json!({ "dates": dates })).await;
    assert!(matches!(outcome, Outcome::Response(_)), "{outcome:?}\n{}", kpi.log());
    let written = crate::on_aws::s3_tree(&aws, &bucket, "tripflow/kpi_output").await;
    let expected: Vec<(&String, &Vec<u8>)> = clean_files.iter().filter(|(k, _)| k.starts_with("kpi_output/")).collect();
    assert_eq!(written.len(), expected.len(), "{:?}", written.keys());
    for (path, bytes) in expected {
        assert!(written[path.strip_prefix("kpi_output/").unwrap()] == *bytes, "{path} differs from a clean run's");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_ingest_and_kpi_under_dynamodb_faults_give_a_clean_run_s_counts_table_and_kpis() {
    let aws = moto::aws();
    let table = unique("cli-faults");
    assert!(DynamoStore::new(&aws, &table).create_if_missing().await.unwrap());
    let tmp = tempfile::tempdir().unwrap();
    let (clean_counts, clean_files, clean_table) = clean_run(tmp.path()).await;
    let proxy = FaultProxy::dynamodb(&moto::endpoint(), FAULT_RATE, 40).await;

    let dir = tmp.path().join("faulted");
    copy_dir(&data_dir(), &dir.join("data"));
    let env = [moto::cli_env(&moto::endpoint()), vec![("AWS_ENDPOINT_URL_DYNAMODB", proxy.url.clone())], retry_mode()]
        .concat();
    let store = format!("--store=dynamodb://{table}");
    tripflow(&dir, &env, &["produce", "-q"]);
    // Small batches, for many marks of several dates (each comes back half unprocessed).
    let ingested = tripflow(&dir, &env, &["ingest", "-q", &store, "--batch-rows", "200"]);
    assert_eq!(counts_line(&ingested), clean_counts, "{ingested}");
    tripflow(&dir, &env, &["kpi", "-q", &store, "--out", "out"]);
    let figures = assert_faulted(&proxy);
    eprintln!("faults: {figures}");

    let written = read_tree(&dir.join("out"));
    assert_eq!(written.keys().collect::<Vec<_>>(), clean_files.keys().collect::<Vec<_>>());
    for (path, bytes) in &clean_files {
        assert!(written[path] == *bytes, "{path} differs from a clean run's");
    }
    assert!(table_text(&DynamoStore::new(&aws, &table)).await == clean_table, "the table differs from a clean run's");
}
