//! The AWS backends on the emulator: the whole pipeline byte-identical to the embedded
//! run, the same under injected faults, DynamoDB writes per trip, and the CLI's `setup`
//! and AWS URLs as a user runs them.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use futures::TryStreamExt;
use object_store::ObjectStoreExt;
use tripflow::backend::aws::Aws;
use tripflow::backend::location::ObjectPlace;
use tripflow::config::{AwsEnv, AwsTuning, DeadLetterUrl, Home, StoreUrl, StreamUrl};
use tripflow::ingest::{Ingest, IngestOptions};
use tripflow::kpi::{Formats, OutputLocation};
use tripflow::pipeline::{self, RunReport, RunSettings};
use tripflow::store::TripStore;
use tripflow::store::dynamodb::DynamoStore;
use tripflow::stream::checkpoints_dynamodb::DynamoCheckpoints;
use tripflow::stream::kinesis::KinesisStream;

use crate::common::{end_event, put_raw, queries_dir, read_tree, start_event};
use crate::moto::{self, FaultProxy, unique};

/// Names of one test's AWS resources.
struct Resources {
    stream: String,
    table: String,
    checkpoints: String,
    bucket: String,
}

impl Resources {
    async fn create(aws: &Aws, shards: u32) -> Self {
        let r = Resources {
            stream: unique("trips"),
            table: unique("bolt"),
            checkpoints: unique("checkpoints"),
            bucket: unique("kpis").to_lowercase(),
        };
        assert!(KinesisStream::new(aws, &r.stream).create_if_missing(shards).await.unwrap());
        assert!(DynamoCheckpoints::create_if_missing(aws, &r.checkpoints).await.unwrap());
        assert!(DynamoStore::new(aws, &r.table).create_if_missing().await.unwrap());
        assert!(aws.create_bucket_if_missing(&r.bucket).await.unwrap());
        r
    }
}

/// A small synthetic input pair.
fn input(dir: &Path, trips: u64) -> (std::path::PathBuf, std::path::PathBuf) {
    tripflow::produce::synthetic::generate(trips, 7, dir).unwrap();
    (dir.join("trip_start.csv"), dir.join("trip_end.csv"))
}

fn settings(start: &Path, end: &Path, home: &Path, out: OutputLocation) -> RunSettings {
    let home = Home::new(home).unwrap();
    RunSettings {
        start: start.into(),
        end: end.into(),
        stream: StreamUrl::Embedded(home.clone()),
        store: StoreUrl::Embedded(home.clone()),
        dead_letter: DeadLetterUrl::Embedded(home),
        tuning: AwsTuning::default(),
        shards: None,
        out,
        queries: Some(queries_dir()),
        ingest: IngestOptions { batch_rows: 500, linger: Duration::from_millis(20), ..Default::default() },
        formats: Formats { parquet: true },
    }
}

/// The embedded run's output files, by path.
async fn embedded_run(start: &Path, end: &Path, tmp: &Path) -> (RunReport, BTreeMap<String, Vec<u8>>) {
    let out = tmp.join("embedded-out");
    let location = OutputLocation::parse(out.to_str().unwrap(), None).unwrap();
    let (report, _) =
        pipeline::run(&settings(start, end, &tmp.join("embedded-home"), location), &AwsEnv::default()).await.unwrap();
    (report, read_tree(&out))
}

/// The run on Kinesis, DynamoDB and S3 through `aws`, and its output files, by path.
async fn aws_run(
    aws: &Aws,
    r: &Resources,
    start: &Path,
    end: &Path,
    tmp: &Path,
) -> (RunReport, BTreeMap<String, Vec<u8>>) {
    let out = format!("s3://{}/nightly", r.bucket);
    let mut s = settings(start, end, &tmp.join("aws-home"), OutputLocation::parse(&out, Some(aws)).unwrap());
    s.stream = StreamUrl::Kinesis(r.stream.clone());
    s.store = StoreUrl::DynamoDb(r.table.clone());
    s.dead_letter = DeadLetterUrl::Object(ObjectPlace::S3 { bucket: r.bucket.clone(), prefix: "dead".into() });
    s.tuning =
        AwsTuning { checkpoint_table: r.checkpoints.clone(), read_interval: Duration::ZERO, ..Default::default() };
    let (report, _) = pipeline::run(&s, &AwsEnv::fixed(aws.clone())).await.unwrap();
    (report, s3_tree(&moto::aws(), &r.bucket, "nightly").await)
}

/// Every object under `prefix` of `bucket`, by path below the prefix.
pub(crate) async fn s3_tree(aws: &Aws, bucket: &str, prefix: &str) -> BTreeMap<String, Vec<u8>> {
    let store = aws.s3(bucket).unwrap();
    let prefix = object_store::path::Path::from(prefix);
    let metas: Vec<_> = store.list(Some(&prefix)).try_collect().await.unwrap();
    let mut files = BTreeMap::new();
    for m in metas {
        let bytes = store.get(&m.location).await.unwrap().bytes().await.unwrap();
        let rel = m.location.as_ref().strip_prefix(&format!("{prefix}/")).unwrap().to_owned();
        files.insert(rel, bytes.to_vec());
    }
    files
}

fn assert_same_files(aws: &BTreeMap<String, Vec<u8>>, embedded: &BTreeMap<String, Vec<u8>>) {
    assert!(embedded.keys().any(|k| k.ends_with("kpi.json")) && embedded.keys().any(|k| k.starts_with("snapshots/")));
    assert_eq!(aws.keys().collect::<Vec<_>>(), embedded.keys().collect::<Vec<_>>());
    for (path, bytes) in embedded {
        assert!(aws[path] == *bytes, "{path} differs between the AWS and the embedded run");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aws_run_matches_the_embedded_run_byte_for_byte() {
    let aws = moto::aws();
    let r = Resources::create(&aws, 2).await;
    let tmp = tempfile::tempdir().unwrap();
    let (start, end) = input(&tmp.path().join("in"), 600);

    let (embedded_report, embedded_files) = embedded_run(&start, &end, tmp.path()).await;
    let (report, files) = aws_run(&aws, &r, &start, &end, tmp.path()).await;
    assert_same_files(&files, &embedded_files);
    assert!(report.ingest.balanced(), "{:?}", report.ingest);
    assert_eq!(report.ingest.read, embedded_report.ingest.read);
    assert_eq!(report.ingest.applied, 1200);
    assert!(
        report.ingest.store_writes <= 2 * 600,
        "at most two DynamoDB writes per trip: {}",
        report.ingest.store_writes
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_fifth_of_requests_faulted_the_run_gives_the_same_kpis() {
    let aws = moto::aws();
    let r = Resources::create(&aws, 2).await;
    let proxy = FaultProxy::start(&moto::endpoint(), 0.2, 42).await;
    let faulty = Aws::for_endpoint(&proxy.url);
    let tmp = tempfile::tempdir().unwrap();
    let (start, end) = input(&tmp.path().join("in"), 300);

    let (_, embedded_files) = embedded_run(&start, &end, tmp.path()).await;
    let (report, files) = aws_run(&faulty, &r, &start, &end, tmp.path()).await;
    assert_same_files(&files, &embedded_files);
    assert!(report.ingest.balanced(), "{:?}", report.ingest);
    // A PutRecords whose answer was lost is sent again: its records are read twice, and
    // the copies count as duplicates.
    assert!(report.ingest.read >= 600 && report.ingest.applied <= 600, "{:?}", report.ingest);
    let c = &proxy.counts;
    let load = |n: &std::sync::atomic::AtomicU64| n.load(std::sync::atomic::Ordering::Relaxed);
    let requests = load(&c.requests);
    assert!(proxy.faulted() * 10 >= requests, "about a fifth faulted: {} of {requests}", proxy.faulted());
    for (kind, n) in [
        ("throttled", &c.throttled),
        ("500", &c.errors),
        ("slow", &c.slowed),
        ("dropped", &c.dropped_before),
        ("lost answer", &c.dropped_after),
    ] {
        assert!(load(n) > 0, "no {kind} fault was injected in {requests} requests");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamodb_writes_per_trip_are_one_in_one_batch_and_two_across_batches() {
    let aws = moto::aws();
    let table = unique("writes");
    let store = DynamoStore::new(&aws, &table);
    store.create_if_missing().await.unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let home = Home::new(tmp.path()).unwrap();
    let stream = home.stream(Some(1)).unwrap();
    let dead = home.dead_letters().unwrap();
    let opts = IngestOptions { batch_rows: 10_000, ..Default::default() };
    let ingest = || Ingest { source: &stream, checkpoints: &stream, store: &store, dead_letters: &dead };

    let starts: Vec<Vec<u8>> =
        (0..40).map(|i| start_event(&format!("sep-{i}"), "2024-05-25 10:00:00").into_bytes()).collect();
    let ends: Vec<Vec<u8>> =
        (0..40).map(|i| end_event(&format!("sep-{i}"), "2024-05-25 10:30:00", "12.5").into_bytes()).collect();
    put_raw(&stream, &starts).await;
    let first = ingest().run(&opts).await.unwrap();
    put_raw(&stream, &ends).await;
    let second = ingest().run(&opts).await.unwrap();
    let separate = (first.store_writes + second.store_writes) as f64 / 40.0;
    assert_eq!(separate, 2.0, "starts and ends in separate batches");

    let both: Vec<Vec<u8>> = (0..40)
        .flat_map(|i| {
            let id = format!("same-{i}");
            [
                start_event(&id, "2024-05-25 11:00:00").into_bytes(),
                end_event(&id, "2024-05-25 11:20:00", "9").into_bytes(),
            ]
        })
        .collect();
    put_raw(&stream, &both).await;
    let shared = ingest().run(&opts).await.unwrap();
    assert_eq!(shared.store_writes as f64 / 40.0, 1.0, "a trip's events in one batch");

    // An end that arrives before its start costs one more write (the wrong guess), and
    // the trip still completes.
    put_raw(&stream, &[end_event("late-start", "2024-05-25 12:30:00", "7").into_bytes()]).await;
    let end_first = ingest().run(&opts).await.unwrap();
    assert_eq!(end_first.store_writes, 2);
    put_raw(&stream, &[start_event("late-start", "2024-05-25 12:00:00").into_bytes()]).await;
    ingest().run(&opts).await.unwrap();
    let item = store.get("late-start").await.unwrap().unwrap();
    assert!(item.trip_completed());
    assert_eq!(item.last_updated(), "2024-05-25T12:30:00.000000Z");
    for i in 0..40 {
        assert!(store.get(&format!("sep-{i}")).await.unwrap().unwrap().trip_completed());
    }
}

/// The date index write-sharded 16 ways: a KPI run reads each day with 16 Queries (seen
/// on the wire), and writes the same bytes as over a one-shard index, and as the
/// embedded run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sharded_date_index_gives_byte_identical_kpis_with_one_query_per_shard() {
    use tripflow::kpi::DateSelection;
    use tripflow::store::dynamodb::DateIndex;

    let tmp = tempfile::tempdir().unwrap();
    let (start, end) = input(tmp.path(), 600);
    let (_, embedded) = embedded_run(&start, &end, tmp.path()).await;
    let dates: Vec<chrono::NaiveDate> = embedded
        .keys()
        .filter_map(|k| k.strip_prefix("kpi_output/date=")?.strip_suffix("/kpi.json"))
        .map(|d| d.parse().unwrap())
        .collect();
    assert!(dates.len() >= 3, "{dates:?}");
    let queries = tripflow::kpi::queries::load(&queries_dir()).unwrap();
    let proxy = FaultProxy::start(&moto::endpoint(), 0.0, 0).await;
    let aws = Aws::for_endpoint(&proxy.url);
    let mut outputs = Vec::new();
    for shards in [1, 16] {
        let store = DynamoStore::new(&aws, &unique("sharded")).with_date_shards(shards);
        assert!(store.create_if_missing().await.unwrap());
        assert_eq!(store.date_index().await.unwrap(), DateIndex::Sharded(shards));
        let home = Home::new(tmp.path().join(format!("home-{shards}"))).unwrap();
        let stream = home.stream(Some(2)).unwrap();
        crate::common::produce_dir(&stream, tmp.path()).await;
        let dead = home.dead_letters().unwrap();
        let ingest = Ingest { source: &stream, checkpoints: &stream, store: &store, dead_letters: &dead };
        let counts = ingest.run(&IngestOptions::default()).await.unwrap();
        assert!(counts.balanced() && counts.read > 0, "{counts:?}");

        let out = tmp.path().join(format!("out-{shards}"));
        let location = OutputLocation::parse(out.to_str().unwrap(), None).unwrap();
        let before = proxy.counts.queries.load(std::sync::atomic::Ordering::Relaxed);
        let selection = DateSelection::Dates(dates.clone());
        let formats = Formats { parquet: true };
        tripflow::kpi::run(
            &store,
            &queries,
            &tripflow::model::declared::Fields::default(),
            &selection,
            &location,
            formats,
            &tripflow::observe::progress::Quiet,
        )
        .await
        .unwrap();
        let sent = proxy.counts.queries.load(std::sync::atomic::Ordering::Relaxed) - before;
        assert_eq!(sent, dates.len() as u64 * u64::from(shards), "one Query per date and shard");
        outputs.push(read_tree(&out));
    }
    assert!(outputs[0] == outputs[1], "1 and 16 shards give different files");
    for (path, bytes) in embedded.iter().filter(|(k, _)| k.ends_with("/kpi.json")) {
        assert!(outputs[1].get(path) == Some(bytes), "{path} differs from the embedded run's");
    }
}

fn tripflow(dir: &Path, env: &[(&str, String)], args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_tripflow"))
        .current_dir(dir)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn setup_then_run_with_aws_urls_from_the_command_line() {
    let env = moto::cli_env(&moto::require());
    let tmp = tempfile::tempdir().unwrap();
    input(&tmp.path().join("data"), 200);
    crate::common::copy_dir(&queries_dir(), &tmp.path().join("queries"));
    let (stream, table, checkpoints) = (unique("cli-trips"), unique("cli-bolt"), unique("cli-checkpoints"));
    let bucket = unique("cli-kpis").to_lowercase();
    let urls = [
        format!("--stream=kinesis://{stream}"),
        format!("--store=dynamodb://{table}"),
        format!("--out=s3://{bucket}/"),
        format!("--checkpoint-table={checkpoints}"),
    ];
    let urls: Vec<&str> = urls.iter().map(String::as_str).collect();

    let missing = tripflow(tmp.path(), &env, &[&["ingest"], &urls[..2], &urls[3..]].concat());
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert_eq!(missing.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("does not exist") && stderr.contains("tripflow setup"), "{stderr}");

    let first = tripflow(tmp.path(), &env, &[&["setup", "--shards", "2"], &urls[..]].concat());
    let text = String::from_utf8_lossy(&first.stdout);
    assert!(first.status.success(), "{text}{}", String::from_utf8_lossy(&first.stderr));
    assert_eq!(text.matches("created").count(), 4, "{text}");
    let again = tripflow(tmp.path(), &env, &[&["setup", "--shards", "2"], &urls[..]].concat());
    assert_eq!(String::from_utf8_lossy(&again.stdout).matches("exists").count(), 4, "setup is idempotent");

    let run = tripflow(tmp.path(), &env, &[&["run", "--kinesis-read-interval-ms", "0"], &urls[..]].concat());
    let text = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "{text}{}", String::from_utf8_lossy(&run.stderr));
    assert!(text.contains("read 400 = applied 400 + duplicate_or_stale 0 + dead_lettered 0"), "{text}");
    assert!(text.contains(&format!("s3://{bucket}/kpi_output")), "{text}");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let files = rt.block_on(s3_tree(&moto::aws(), &bucket, "kpi_output"));
    assert!(files.keys().any(|k| k.ends_with("/kpi.json")), "{:?}", files.keys());
    let report = String::from_utf8_lossy(&files["report.html"]);
    assert!(report.contains("<svg") && report.contains("<table id=\"daily\">"), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_go_to_s3_one_object_per_record() {
    let aws = moto::aws();
    let r = Resources::create(&aws, 1).await;
    let tmp = tempfile::tempdir().unwrap();
    let home = Home::new(tmp.path()).unwrap();
    let stream = home.stream(Some(1)).unwrap();
    put_raw(&stream, &[b"not json".to_vec(), start_event("ok", "2024-05-25 10:00:00").into_bytes()]).await;
    let env = AwsEnv::fixed(aws.clone());
    let url = format!("s3://{}/rejects", r.bucket);
    let place = DeadLetterUrl::parse(Some(&url), &home).unwrap();
    let (dead, display) = tripflow::config::open_dead_letters(&place, &env).await.unwrap();
    let store = DynamoStore::new(&aws, &r.table);
    let ingest = Ingest { source: &stream, checkpoints: &stream, store: &store, dead_letters: dead.as_ref() };
    let counts = ingest.run(&IngestOptions::default()).await.unwrap();
    assert_eq!((counts.applied, counts.dead_lettered), (1, 1));
    assert!(display.starts_with(&url));
    let files = s3_tree(&aws, &r.bucket, "rejects").await;
    assert_eq!(files.len(), 1, "{:?}", files.keys());
    let line: serde_json::Value = serde_json::from_slice(files.values().next().unwrap()).unwrap();
    assert_eq!(line["raw"], "not json");
    assert!(!line["reasons"].as_array().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_over_snapshots_on_s3_prunes_by_date_and_is_read_only() {
    let aws = moto::aws();
    let bucket = unique("sql").to_lowercase();
    aws.create_bucket_if_missing(&bucket).await.unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let (start, end) = input(&tmp.path().join("in"), 300);
    let root = format!("s3://{bucket}/nightly");
    let location = OutputLocation::parse(&root, Some(&aws)).unwrap();
    let (_, kpi) =
        pipeline::run(&settings(&start, &end, &tmp.path().join("home"), location), &AwsEnv::default()).await.unwrap();

    let session = tripflow::kpi::sql::SqlSession::open(&root, Some(&aws)).await.unwrap();
    assert_eq!(session.tables(), ["trips", "kpis"]);
    let day = kpi.dates[1];
    let count = |batches: &[arrow::array::RecordBatch]| {
        let col = arrow::compute::cast(batches[0].column(0), &arrow::datatypes::DataType::Int64).unwrap();
        arrow::array::AsArray::as_primitive::<arrow::datatypes::Int64Type>(&col).value(0)
    };
    let sql = format!("SELECT count(*) FROM trips WHERE trip_completed AND trip_date = DATE '{day}'");
    let trips = count(&session.query(&sql).await.unwrap());
    let from_kpis = session.query(&format!("SELECT total_trips FROM kpis WHERE date = DATE '{day}'")).await.unwrap();
    assert_eq!(count(&from_kpis), trips);

    // Pruning: spoil every other date's snapshot object; a query on `day` never reads them.
    let store = aws.s3(&bucket).unwrap();
    for other in kpi.dates.iter().filter(|d| **d != day) {
        let path = object_store::path::Path::from(format!("nightly/snapshots/trip_date={other}/trips.parquet"));
        store.put(&path, b"not parquet".to_vec().into()).await.unwrap();
    }
    let session = tripflow::kpi::sql::SqlSession::open(&root, Some(&aws)).await.unwrap();
    assert_eq!(count(&session.query(&sql).await.unwrap()), trips);
    assert!(session.query("SELECT count(*) FROM trips").await.is_err(), "unfiltered, it reads the spoiled objects");
    let err = session.query("DROP TABLE trips").await.unwrap_err().to_string();
    assert!(err.contains("read-only"), "{err}");
}

/// The units on a `DynamoDB capacity:` line of the CLI's output: (first, second,
/// computed), in the order the line gives them.
fn capacity_line(text: &str, after: &str) -> (f64, f64, bool) {
    let rest = &text[text.find(after).unwrap_or_else(|| panic!("no {after:?} in:\n{text}"))..];
    let line = rest
        .lines()
        .find(|l| l.starts_with("DynamoDB capacity: "))
        .unwrap_or_else(|| panic!("no capacity line after {after:?} in:\n{text}"));
    let numbers: Vec<f64> = line.split([' ', ',', ';']).filter_map(|w| w.parse().ok()).collect();
    (numbers[0], numbers[1], line.contains("(computed from item sizes"))
}

#[test]
fn ingest_and_kpi_report_dynamodb_capacity_and_compute_it_when_none_is_reported() {
    let tmp = tempfile::tempdir().unwrap();
    input(&tmp.path().join("data"), 300);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let proxy = rt.block_on(FaultProxy::without_capacity(&moto::require()));
    for (dir, dynamodb, computed) in [("reported", moto::endpoint(), false), ("computed", proxy.url.clone(), true)] {
        let table = unique("capacity");
        assert!(rt.block_on(DynamoStore::new(&moto::aws(), &table).create_if_missing()).unwrap());
        let env = [moto::cli_env(&moto::endpoint()), vec![("AWS_ENDPOINT_URL_DYNAMODB", dynamodb)]].concat();
        std::fs::create_dir_all(tmp.path().join(dir)).unwrap();
        std::fs::rename(tmp.path().join("data"), tmp.path().join(dir).join("data")).unwrap();
        let run = tripflow(&tmp.path().join(dir), &env, &["run", &format!("--store=dynamodb://{table}")]);
        let text = String::from_utf8_lossy(&run.stdout).into_owned();
        assert!(run.status.success(), "{text}{}", String::from_utf8_lossy(&run.stderr));
        std::fs::rename(tmp.path().join(dir).join("data"), tmp.path().join("data")).unwrap();
        assert!(text.contains("read 600 = applied 600"), "{text}");
        // Ingest. Computed: at least a unit per write of a trip's item and one for its
        // date index's (300 trips). Reported: moto's own figures (0.5 a write).
        let (write, read, labelled) = capacity_line(&text, "read 600");
        assert_eq!(labelled, computed, "{text}");
        let least = if computed { 600.0 } else { 1.0 };
        assert!((least..=3000.0).contains(&write), "{write} write units for 600 groups:\n{text}");
        assert!(read >= 0.0, "{text}");
        // The KPI job reads the marks and the days' trips (it clears no mark this young:
        // no write).
        let (read, write, labelled) = capacity_line(&text, "report: ");
        assert_eq!(labelled, computed, "{text}");
        assert!(read > 0.0 && write == 0.0, "{read} read and {write} write units for the KPI job:\n{text}");
    }
    assert!(
        proxy.counts.requests.load(std::sync::atomic::Ordering::Relaxed) > 0,
        "the computed run went through the proxy"
    );
}
