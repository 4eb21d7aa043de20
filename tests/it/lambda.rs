//! The real `tripflow-lambda` binary against a Lambda Runtime API served here, with
//! DynamoDB and S3 on the emulator: `data/` fed as Kinesis events (some batches twice),
//! then the KPI function, whose files must be byte-identical to `tripflow run`'s; and the
//! failures: a malformed envelope, records that fail validation, the deadline, an
//! unknown `_HANDLER`.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::convert::Infallible;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use base64::Engine;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tripflow::config::{AwsEnv, AwsTuning, DeadLetterUrl, Home, StoreUrl, StreamUrl};
use tripflow::ingest::IngestOptions;
use tripflow::kpi::{Formats, OutputLocation};
use tripflow::pipeline::{self, RunSettings};
use tripflow::store::TripStore;
use tripflow::store::dynamodb::DynamoStore;
use tripflow::stream::{StartPosition, StreamSource};

use crate::common::{data_dir, read_tree, start_event};
use crate::moto::{self, unique};
use crate::on_aws::s3_tree;

/// How long any one wait for the binary may take before the test fails.
const WAIT: Duration = Duration::from_secs(120);

/// What the function answered to one invocation.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// `POST /runtime/invocation/{id}/response`, with its body.
    Response(Value),
    /// `POST /runtime/invocation/{id}/error`, with its body.
    Error(Value),
}

#[derive(Default)]
struct State {
    queue: VecDeque<(String, Vec<u8>, u64)>,
    outcomes: HashMap<String, Outcome>,
    init_error: Option<Value>,
    next_id: u64,
}

/// The Lambda Runtime API (`/2018-06-01/runtime/…`), as the Lambda service serves it
/// to a custom runtime: `invocation/next` blocks until an event is queued.
pub struct RuntimeApi {
    addr: String,
    state: Mutex<State>,
    changed: tokio::sync::Notify,
}

impl RuntimeApi {
    pub async fn start() -> Arc<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let api = Arc::new(RuntimeApi {
            addr: listener.local_addr().unwrap().to_string(),
            state: Mutex::default(),
            changed: tokio::sync::Notify::new(),
        });
        let served = api.clone();
        tokio::spawn(async move {
            loop {
                let Ok((conn, _)) = listener.accept().await else { return };
                let api = served.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| answer(api.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(conn), service)
                        .await;
                });
            }
        });
        api
    }

    /// Queues an event with the deadline `deadline` and waits for the function's answer.
    async fn invoke(&self, event: &Value, deadline: SystemTime) -> Outcome {
        let id = {
            let mut state = self.state.lock().unwrap();
            state.next_id += 1;
            let id = format!("request-{}", state.next_id);
            let ms = deadline.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_millis() as u64;
            state.queue.push_back((id.clone(), serde_json::to_vec(event).unwrap(), ms));
            id
        };
        self.changed.notify_waiters();
        self.wait(|s| s.outcomes.remove(&id)).await
    }

    /// Invokes with a minute to go.
    pub async fn invoke_now(&self, event: &Value) -> Outcome {
        self.invoke(event, SystemTime::now() + Duration::from_secs(60)).await
    }

    async fn wait<T>(&self, mut found: impl FnMut(&mut State) -> Option<T>) -> T {
        let waited = tokio::time::timeout(WAIT, async {
            loop {
                let changed = self.changed.notified();
                if let Some(t) = found(&mut self.state.lock().unwrap()) {
                    return t;
                }
                changed.await;
            }
        });
        waited.await.expect("the function did not answer within two minutes")
    }
}

fn reply(status: StatusCode) -> Response<Full<Bytes>> {
    Response::builder().status(status).body(Full::new(Bytes::new())).unwrap()
}

async fn answer(api: Arc<RuntimeApi>, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let (method, path) = (req.method().clone(), req.uri().path().to_owned());
    let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let parts: Vec<&str> = path.strip_prefix("/2018-06-01/runtime/").unwrap_or("").split('/').collect();
    let json = || {
        serde_json::from_slice::<Value>(&body).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into()))
    };
    match (method, parts.as_slice()) {
        (Method::GET, ["invocation", "next"]) => loop {
            let changed = api.changed.notified();
            let next = api.state.lock().unwrap().queue.pop_front();
            if let Some((id, event, deadline_ms)) = next {
                let response = Response::builder()
                    .header("Lambda-Runtime-Aws-Request-Id", id)
                    .header("Lambda-Runtime-Deadline-Ms", deadline_ms.to_string())
                    .header(
                        "Lambda-Runtime-Invoked-Function-Arn",
                        "arn:aws:lambda:us-east-1:123456789012:function:tripflow",
                    )
                    .header("Lambda-Runtime-Trace-Id", "Root=1-5759e988-bd862e3fe1be46a994272793;Sampled=1")
                    .body(Full::new(Bytes::from(event)))
                    .unwrap();
                return Ok(response);
            }
            changed.await;
        },
        (Method::POST, ["invocation", id, kind @ ("response" | "error")]) => {
            let outcome = if *kind == "response" { Outcome::Response(json()) } else { Outcome::Error(json()) };
            api.state.lock().unwrap().outcomes.insert((*id).to_owned(), outcome);
            api.changed.notify_waiters();
            Ok(reply(StatusCode::ACCEPTED))
        }
        (Method::POST, ["init", "error"]) => {
            api.state.lock().unwrap().init_error = Some(json());
            api.changed.notify_waiters();
            Ok(reply(StatusCode::ACCEPTED))
        }
        _ => Ok(reply(StatusCode::NOT_FOUND)),
    }
}

/// The `tripflow-lambda` binary, serving `api`, killed when dropped.
pub struct Function {
    child: tokio::process::Child,
    log: tempfile::NamedTempFile,
}

impl Function {
    pub fn start(api: &RuntimeApi, handler: &str, vars: &[(&str, String)]) -> Self {
        let log = tempfile::NamedTempFile::new().unwrap();
        // stdout (the function's log, as Lambda captures it) and stderr, in one file.
        let append = || std::fs::OpenOptions::new().append(true).open(log.path()).unwrap();
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_tripflow-lambda"));
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("AWS_LAMBDA_RUNTIME_API", &api.addr)
            .env("AWS_LAMBDA_FUNCTION_NAME", format!("tripflow-{handler}"))
            .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "1024")
            .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
            .env("_HANDLER", handler)
            .env("RUST_LOG", "info")
            .envs(moto::cli_env(&moto::endpoint()))
            .envs(vars.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(append())
            .stderr(append())
            .kill_on_drop(true);
        Function { child: cmd.spawn().unwrap(), log }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }
}

/// `data/` as `tripflow produce` puts it on a 2-shard stream, read back per shard:
/// (shard, partition key, bytes) in stream order.
pub async fn produced_records(tmp: &Path) -> Vec<(String, String, Vec<u8>)> {
    let home = Home::new(tmp.join("produce-home")).unwrap();
    let stream = home.stream(Some(2)).unwrap();
    let report = crate::common::produce_dir(&stream, &data_dir()).await;
    assert!(report.not_sent.is_empty());
    let records = records_of(&stream).await;
    assert_eq!(records.len() as u64, report.sent);
    records
}

/// Every record of `stream`, per shard: (shard, partition key, bytes) in stream order.
pub async fn records_of(stream: &dyn StreamSource) -> Vec<(String, String, Vec<u8>)> {
    let mut records = Vec::new();
    for shard in stream.shards().await.unwrap() {
        let mut it = stream.iterator(&shard.id, &StartPosition::TrimHorizon).await.unwrap();
        loop {
            let read = stream.read(&it, 10_000, usize::MAX).await.unwrap();
            records.extend(read.records.into_iter().map(|r| (shard.id.clone(), r.partition_key.into(), r.data)));
            it = read.next;
            if read.caught_up {
                break;
            }
        }
    }
    records
}

/// A Kinesis event of `records`, numbered from `first` within their shard: base64 data,
/// 56-digit sequence numbers and `eventID`s as Kinesis writes them.
pub fn kinesis_event(records: &[(String, String, Vec<u8>)], first: u64) -> (Value, Vec<String>) {
    kinesis_event_from(records, first, "arn:aws:kinesis:us-east-1:123456789012:stream/bolt_streams")
}

/// [`kinesis_event`] from the stream `stream_arn`.
pub fn kinesis_event_from(records: &[(String, String, Vec<u8>)], first: u64, stream_arn: &str) -> (Value, Vec<String>) {
    let mut sequence_numbers = Vec::new();
    let records: Vec<Value> = records
        .iter()
        .enumerate()
        .map(|(i, (shard, key, data))| {
            let shard_no: u64 = shard.rsplit('-').next().unwrap().parse().unwrap();
            let seq = format!("4959{shard_no:04}{:048}", first + i as u64);
            sequence_numbers.push(seq.clone());
            json!({
                "kinesis": {
                    "kinesisSchemaVersion": "1.0",
                    "partitionKey": key,
                    "sequenceNumber": seq,
                    "data": base64::engine::general_purpose::STANDARD.encode(data),
                    "approximateArrivalTimestamp": 1716643140.123
                },
                "eventSource": "aws:kinesis",
                "eventVersion": "1.0",
                "eventID": format!("{shard}:{seq}"),
                "eventName": "aws:kinesis:record",
                "invokeIdentityArn": "arn:aws:iam::123456789012:role/tripflow-ingest",
                "awsRegion": "us-east-1",
                "eventSourceARN": stream_arn
            })
        })
        .collect();
    (json!({ "Records": records }), sequence_numbers)
}

pub fn failures(outcome: &Outcome) -> Vec<String> {
    let Outcome::Response(body) = outcome else { panic!("the invocation failed: {outcome:?}") };
    body["batchItemFailures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["itemIdentifier"].as_str().unwrap().to_owned())
        .collect()
}

/// `tripflow run` on `data/` with the embedded backends and the built-in queries.
pub async fn cli_run(tmp: &Path) -> BTreeMap<String, Vec<u8>> {
    let out = tmp.join("cli-out");
    let home = Home::new(tmp.join("cli-home")).unwrap();
    let settings = RunSettings {
        start: data_dir().join("trip_start.csv"),
        end: data_dir().join("trip_end.csv"),
        stream: StreamUrl::Embedded(home.clone()),
        store: StoreUrl::Embedded(home.clone()),
        dead_letter: DeadLetterUrl::Embedded(home),
        tuning: AwsTuning::default(),
        shards: None,
        out: OutputLocation::parse(out.to_str().unwrap(), None).unwrap(),
        queries: None,
        ingest: IngestOptions::default(),
        formats: Formats::default(),
    };
    pipeline::run(&settings, &AwsEnv::default()).await.unwrap();
    read_tree(&out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kinesis_batches_through_the_lambda_binary_give_the_cli_s_kpi_files() {
    let aws = moto::aws();
    let table = unique("bolt");
    let bucket = unique("lambda").to_lowercase();
    assert!(DynamoStore::new(&aws, &table).create_if_missing().await.unwrap());
    assert!(aws.create_bucket_if_missing(&bucket).await.unwrap());
    let tmp = tempfile::tempdir().unwrap();
    let expected = cli_run(tmp.path()).await;
    let records = produced_records(tmp.path()).await;

    let api = RuntimeApi::start().await;
    let ingest = Function::start(
        &api,
        "ingest",
        &[
            ("TRIPFLOW_STORE", format!("dynamodb://{table}")),
            ("TRIPFLOW_DEAD_LETTER", format!("s3://{bucket}/tripflow")),
            // As the template sets it: each batch's change goes into the live state.
            ("TRIPFLOW_LIVE_KPIS", "true".into()),
        ],
    );

    // A malformed envelope fails the invocation (Lambda retries it), and the function
    // serves the next one.
    let outcome = api.invoke_now(&json!({ "Records": [{ "kinesis": { "data": "!not base64!" } }] })).await;
    let Outcome::Error(error) = outcome else {
        panic!("a malformed envelope was accepted: {outcome:?}\n{}", ingest.log())
    };
    assert!(error["errorType"].as_str().unwrap().contains("DeserializeError"), "{error}");
    assert!(error["errorMessage"].as_str().unwrap().contains("Records[0].kinesis.data"), "{error}");

    // The deadline already within the margin: nothing is merged, and the first record
    // is named, so Lambda resumes from it.
    let (head, head_seqs) = kinesis_event(&records[..50], 1);
    let outcome = api.invoke(&head, SystemTime::now() + Duration::from_secs(1)).await;
    assert_eq!(failures(&outcome), [head_seqs[0].clone()], "{}", ingest.log());
    let store = DynamoStore::new(&aws, &table);
    let (_, key, _) = &records[0];
    assert!(store.get(key).await.unwrap().is_none(), "nothing is merged past the deadline");

    // The whole stream in batches of 300 per shard, every fourth batch delivered twice.
    let mut batches = 0usize;
    for shard in ["shardId-000000000000", "shardId-000000000001"] {
        let of_shard: Vec<_> = records.iter().filter(|(s, _, _)| s == shard).cloned().collect();
        for (n, chunk) in of_shard.chunks(300).enumerate() {
            let (event, _) = kinesis_event(chunk, 1 + 300 * n as u64);
            for _ in 0..if batches.is_multiple_of(4) { 2 } else { 1 } {
                let outcome = api.invoke_now(&event).await;
                assert!(failures(&outcome).is_empty(), "{outcome:?}\n{}", ingest.log());
            }
            batches += 1;
        }
    }
    assert!(batches >= 30, "data/ makes {batches} batches");

    // Records that fail validation are dead-lettered in S3; the batch succeeds.
    let bad = [
        ("shardId-000000000000".to_owned(), "bad-1".to_owned(), b"not json".to_vec()),
        (
            "shardId-000000000000".to_owned(),
            "p1".to_owned(),
            start_event("p1", "0000-01-01T00:30:00+01:00").into_bytes(),
        ),
    ];
    let (event, bad_seqs) = kinesis_event(&bad, 1_000_000);
    assert!(failures(&api.invoke_now(&event).await).is_empty());
    let letters = s3_tree(&aws, &bucket, "tripflow/dead_letters").await;
    assert_eq!(letters.len(), 2, "{:?}", letters.keys());
    for seq in &bad_seqs {
        let line: Value =
            serde_json::from_slice(&letters[&format!("kinesis:bolt_streams/shardId-000000000000/{seq}.json")]).unwrap();
        assert_eq!(line["stream"], "kinesis:bolt_streams", "{line}");
        assert!(!line["reasons"].as_array().unwrap().is_empty(), "{line}");
    }
    let log = ingest.log();
    assert!(log.contains("Merged Kinesis batch.") && log.contains("dead_lettered=2"), "one line per batch:\n{log}");
    assert_eq!(log.matches("Merged Kinesis batch.").count(), batches + batches.div_ceil(4) + 2, "{log}");
    // And one CloudWatch Embedded Metric Format line per batch, with the same figures.
    let emf: Vec<Value> =
        log.lines().filter(|l| l.starts_with("{\"_aws\"")).map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(emf.len(), batches + batches.div_ceil(4) + 2, "{log}");
    let last = emf.last().unwrap();
    assert_eq!(
        (last["function"].as_str(), last["read"].as_u64(), last["dead_lettered"].as_u64()),
        (Some("ingest"), Some(2), Some(2))
    );
    assert_eq!(last["_aws"]["CloudWatchMetrics"][0]["Namespace"], "tripflow");
    let read: u64 = emf.iter().map(|l| l["read"].as_u64().unwrap()).sum();
    assert_eq!(
        read,
        emf.iter()
            .map(|l| l["applied"].as_u64().unwrap()
                + l["duplicate_or_stale"].as_u64().unwrap()
                + l["dead_lettered"].as_u64().unwrap())
            .sum::<u64>()
    );
    drop(ingest);

    // The KPI function, for every date the CLI reported, writes the same bytes.
    let dates: Vec<String> = expected
        .keys()
        .filter_map(|k| k.strip_prefix("kpi_output/date=")?.strip_suffix("/kpi.json").map(str::to_owned))
        .collect();
    assert!(dates.len() >= 3, "{:?}", expected.keys());
    // A Runtime API of its own, as each Lambda function has: the ingest function's last
    // `invocation/next` may still be pending on the old one, and would take the event.
    let api = RuntimeApi::start().await;
    let kpi = Function::start(
        &api,
        "kpi",
        &[
            ("TRIPFLOW_STORE", format!("dynamodb://{table}")),
            ("TRIPFLOW_OUT", format!("s3://{bucket}/tripflow")),
            ("TRIPFLOW_LOOKBACK", "1".into()),
            ("TRIPFLOW_LIVE_KPIS", "true".into()),
            // What Lambda sets under the template's LoggingConfig LogFormat JSON.
            ("AWS_LAMBDA_LOG_FORMAT", "JSON".into()),
        ],
    );
    let expected_kpis: BTreeMap<&String, &Vec<u8>> =
        expected.iter().filter(|(k, _)| k.starts_with("kpi_output/")).collect();

    // The live schedule's payload: the live files of every date the batches changed,
    // each the nightly file's bytes plus its stream position, though every fourth batch
    // came twice.
    let outcome = api.invoke_now(&json!({ "live": true })).await;
    let Outcome::Response(summary) = &outcome else { panic!("{outcome:?}\n{}", kpi.log()) };
    assert_eq!(summary["live"]["written"].as_array().unwrap().len(), dates.len(), "{summary}");
    assert_eq!(summary["live"]["held"], json!([]), "{summary}");
    let live = s3_tree(&aws, &bucket, "tripflow/kpi_output/live").await;
    for date in &dates {
        let text = String::from_utf8(live[&format!("date={date}/kpi.json")].clone()).unwrap();
        assert!(text.contains("\"live_position\": {\"stream\":\"kinesis:bolt_streams\""), "{text}");
        let nightly = expected_kpis[&format!("kpi_output/date={date}/kpi.json")];
        assert_eq!(tripflow::kpi::live::nightly_text(&text), String::from_utf8_lossy(nightly), "{date}");
    }
    // Nothing changed since: the next publication writes nothing.
    let outcome = api.invoke_now(&json!({ "live": true })).await;
    let Outcome::Response(summary) = &outcome else { panic!("{outcome:?}\n{}", kpi.log()) };
    assert_eq!(summary["live"]["written"], json!([]), "{summary}");

    let outcome = api.invoke_now(&json!({ "dates": dates })).await;
    let Outcome::Response(summary) = &outcome else { panic!("{outcome:?}\n{}", kpi.log()) };
    assert_eq!(summary["dates"].as_array().unwrap().len(), dates.len(), "{summary}");
    let mut written = s3_tree(&aws, &bucket, "tripflow/kpi_output").await;
    // The run certified the live files: every date equal.
    let certificate: Value = serde_json::from_slice(&written.remove("live/certificate.json").unwrap()).unwrap();
    assert_eq!(certificate["compared"].as_array().unwrap().len(), dates.len(), "{certificate}");
    assert_eq!((&certificate["equal"], &certificate["mismatches"]), (&certificate["compared"], &json!([])));
    written.retain(|k, _| !k.starts_with("live/"));
    assert_eq!(written.len(), expected_kpis.len(), "{:?}", written.keys());
    for (path, bytes) in expected_kpis {
        let got = &written[path.strip_prefix("kpi_output/").unwrap()];
        assert!(got == bytes, "{path} differs from the CLI's");
    }

    // The nightly schedule's payload: that UTC date and the lookback day before it.
    let last = dates.last().unwrap();
    let outcome = api.invoke_now(&json!({ "scheduled_time": format!("{last}T23:59:00Z") })).await;
    let Outcome::Response(summary) = &outcome else { panic!("{outcome:?}\n{}", kpi.log()) };
    assert_eq!(summary["requested"], json!([dates[dates.len() - 2], last]), "{summary}");

    // The smoke invoke after a deploy: no dates, an answer, nothing run.
    let outcome = api.invoke_now(&json!({ "dates": [] })).await;
    let Outcome::Response(summary) = &outcome else { panic!("{outcome:?}\n{}", kpi.log()) };
    assert_eq!((&summary["requested"], &summary["files"]), (&json!([]), &json!([])), "{summary}");

    // Every log line is JSON, and a run's lines carry its request id. Each run that wrote
    // its files logs one EMF line with KpiRunSucceeded (the smoke invoke does not).
    let log = kpi.log();
    let lines: Vec<Value> =
        log.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}"))).collect();
    let done: Vec<&Value> = lines.iter().filter(|l| l["message"] == "KPI run done.").collect();
    assert_eq!(done.len(), 2, "{log}");
    assert!(done.iter().all(|l| l["span"]["requestId"].as_str().is_some_and(|id| id.starts_with("request-"))), "{log}");
    let runs: Vec<&Value> = lines.iter().filter(|l| l["_aws"].is_object()).collect();
    assert_eq!(runs.len(), 2, "{log}");
    assert!(runs.iter().all(|r| r["KpiRunSucceeded"] == 1 && r["function"] == "kpi"), "{log}");
    assert_eq!(runs[0]["dates"].as_u64(), Some(dates.len() as u64), "{log}");
    // The certificate's figures, for the template's alarm on any mismatch.
    assert_eq!(
        (runs[0]["LiveDatesCompared"].as_u64(), runs[0]["LiveMismatches"].as_u64()),
        (Some(dates.len() as u64), Some(0))
    );
    let metrics = runs[0]["_aws"]["CloudWatchMetrics"][0]["Metrics"].as_array().unwrap();
    assert!(metrics.iter().any(|m| m["Name"] == "LiveMismatches"), "{log}");
    assert!(runs[0]["trips"].as_u64().unwrap() > 0 && runs[0]["seconds"].as_f64().unwrap() > 0.0, "{log}");

    let outcome = api.invoke_now(&json!({ "date": "2024-05-25" })).await;
    let Outcome::Error(error) = outcome else { panic!("an unknown request was accepted: {outcome:?}") };
    assert_eq!(error["errorType"], "tripflow.config");
    assert!(error["errorMessage"].as_str().unwrap().contains("scheduled_time"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_handler_fails_at_init_naming_the_valid_ones() {
    let api = RuntimeApi::start().await;
    let mut function = Function::start(&api, "bootstrap", &[("TRIPFLOW_STORE", "dynamodb://bolt".into())]);
    let error = api.wait(|s| s.init_error.clone()).await;
    assert_eq!(error["errorType"], "tripflow.config");
    let message = error["errorMessage"].as_str().unwrap();
    assert!(
        message.contains("'ingest'") && message.contains("'kpi'") && message.contains("\"bootstrap\""),
        "{message}"
    );
    let status = tokio::time::timeout(WAIT, function.child.wait()).await.unwrap().unwrap();
    assert!(!status.success(), "{}", function.log());
}

/// The functions read their settings with the command line's own definitions: each value
/// `tripflow kpi` or `tripflow ingest` refuses, the function refuses at init, with the CLI's message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_functions_refuse_what_the_cli_refuses_with_the_same_message() {
    let tmp = tempfile::tempdir().unwrap();
    let queries = tmp.path().join("no-queries-here");
    std::fs::create_dir_all(&queries).unwrap();
    let queries = queries.to_str().unwrap();
    // Each variable both read, a bad value, and the command that reads it. (TRIPFLOW_PARQUET
    // has no bad value: both read any word but a false one as true.)
    let cases = [
        ("TRIPFLOW_WRITE_CONCURRENCY", "0", "kpi"),
        ("TRIPFLOW_WRITE_CONCURRENCY", "many", "kpi"),
        ("TRIPFLOW_SCAN_SEGMENTS", "0", "kpi"),
        ("TRIPFLOW_SCAN_SEGMENTS", "2000000", "kpi"),
        ("TRIPFLOW_LOOKBACK", "-1", "kpi"),
        ("TRIPFLOW_LOOKBACK", "40000", "kpi"),
        ("TRIPFLOW_STORE", "postgres://db", "kpi"),
        ("TRIPFLOW_STORE", "dynamodb://a/b", "kpi"),
        ("TRIPFLOW_OUT", "gs://bucket/kpis", "kpi"),
        ("TRIPFLOW_OUT", "s3://Not_A_Bucket/x", "kpi"),
        ("TRIPFLOW_DEAD_LETTER", "kinesis://rejects", "ingest"),
        ("TRIPFLOW_DEAD_LETTER", "s3://x", "ingest"),
        ("TRIPFLOW_QUERIES", queries, "kpi"),
    ];
    for (name, value, command) in cases {
        let cli = std::process::Command::new(env!("CARGO_BIN_EXE_tripflow"))
            .arg(command)
            .env("TRIPFLOW_HOME", tmp.path().join("home"))
            .env("TRIPFLOW_OUT", tmp.path().join("out"))
            .env(name, value)
            .output()
            .unwrap();
        assert!(!cli.status.success(), "the CLI took {name}={value}");
        let stderr = String::from_utf8_lossy(&cli.stderr).into_owned();
        let said = stderr.lines().next().unwrap_or_default().trim_start_matches("error: ").to_owned();
        assert!(!said.is_empty(), "{stderr}");

        let api = RuntimeApi::start().await;
        let handler = if command == "ingest" { "ingest" } else { "kpi" };
        let mut vars = vec![
            ("TRIPFLOW_STORE", "dynamodb://bolt".to_owned()),
            ("TRIPFLOW_OUT", "s3://bucket/tripflow".into()),
            ("TRIPFLOW_DEAD_LETTER", "s3://bucket/dead".into()),
        ];
        vars.retain(|(n, _)| *n != name);
        vars.push((name, value.into()));
        let function = Function::start(&api, handler, &vars);
        let error = api.wait(|s| s.init_error.clone()).await;
        let message = error["errorMessage"].as_str().unwrap_or_default();
        assert!(
            message.contains(&said),
            "{name}={value}: the CLI said {said:?}, the function {message:?}\n{}",
            function.log()
        );
        let stage = if name == "TRIPFLOW_QUERIES" { "tripflow.input" } else { "tripflow.config" };
        assert_eq!(error["errorType"], stage, "{error}");
    }
}

/// The ingest function keeps undeclared fields with their group and counts them in the
/// ledger once per record, through a redelivered batch; under
/// `TRIPFLOW_UNKNOWN_FIELDS=reject` it dead-letters them instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ingest_function_keeps_undeclared_fields_and_their_ledger() {
    let aws = moto::aws();
    let bucket = unique("fields").to_lowercase();
    assert!(aws.create_bucket_if_missing(&bucket).await.unwrap());
    let end = |trip: &str, extra: &str| {
        format!(
            r#"{{"event_type":"trip_end","trip_id":"{trip}","dropoff_datetime":"2024-05-25 14:05:00","fare_amount":40.5{extra}}}"#
        )
        .into_bytes()
    };
    let shard = "shardId-000000000000".to_owned();
    let records = vec![
        (shard.clone(), "a".to_owned(), end("a", r#","surge_multiplier":1.25"#)),
        (shard.clone(), "b".to_owned(), end("b", "")),
        (shard.clone(), "c".to_owned(), end("c", r#","surge_multiplier":"x","app":{"v":2}"#)),
    ];
    let (event, _) = kinesis_event(&records, 1);

    for policy in ["keep", "reject"] {
        let table = unique("bolt");
        assert!(DynamoStore::new(&aws, &table).create_if_missing().await.unwrap());
        let api = RuntimeApi::start().await;
        let ingest = Function::start(
            &api,
            "ingest",
            &[
                ("TRIPFLOW_STORE", format!("dynamodb://{table}")),
                ("TRIPFLOW_DEAD_LETTER", format!("s3://{bucket}/{policy}")),
                ("TRIPFLOW_UNKNOWN_FIELDS", policy.into()),
            ],
        );
        for _ in 0..2 {
            let outcome = api.invoke_now(&event).await;
            assert!(failures(&outcome).is_empty(), "{outcome:?}\n{}", ingest.log());
        }
        let store = DynamoStore::new(&aws, &table);
        let seen = store.seen_fields().await.unwrap();
        let counted: Vec<(String, u64)> = seen.iter().map(|f| (f.name.clone(), f.events)).collect();
        assert_eq!(counted, [("app".to_owned(), 1), ("surge_multiplier".to_owned(), 2)], "{policy}: once a record");
        assert!(seen[1].conflict());
        let letters = s3_tree(&aws, &bucket, &format!("{policy}/dead_letters")).await;
        let c = store.get("c").await.unwrap();
        if policy == "keep" {
            assert!(letters.is_empty());
            let kept = c.unwrap().end.unwrap();
            assert_eq!(kept.extras().as_json(), Some(r#"{"app":{"v":2},"surge_multiplier":"x"}"#));
            assert!(ingest.log().contains("Undeclared field seen for the first time"), "{}", ingest.log());
        } else {
            assert_eq!(letters.len(), 2, "{:?}", letters.keys());
            assert!(c.is_none() && store.get("b").await.unwrap().is_some());
        }
    }
}

/// The functions read a fields file from S3 (`TRIPFLOW_FIELDS`): the KPI function reads
/// the kept values of a field declared after they were ingested into its typed column,
/// and the ingest function checks the field in the records that follow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_functions_read_a_fields_file_from_s3() {
    let aws = moto::aws();
    let table = unique("bolt");
    let bucket = unique("declared").to_lowercase();
    assert!(DynamoStore::new(&aws, &table).create_if_missing().await.unwrap());
    assert!(aws.create_bucket_if_missing(&bucket).await.unwrap());
    let end = |trip: &str, surge: &str| {
        format!(
            r#"{{"event_type":"trip_end","trip_id":"{trip}","dropoff_datetime":"2024-05-25 14:05:00","fare_amount":40.5,"surge_multiplier":{surge}}}"#
        )
        .into_bytes()
    };
    let start = |trip: &str| start_event(trip, "2024-05-25 13:19:00").into_bytes();
    let shard = "shardId-000000000000".to_owned();
    let record = |key: &str, data: Vec<u8>| (shard.clone(), key.to_owned(), data);
    let vars = |fields: bool| {
        let mut v = vec![
            ("TRIPFLOW_STORE", format!("dynamodb://{table}")),
            ("TRIPFLOW_DEAD_LETTER", format!("s3://{bucket}/tripflow")),
            ("TRIPFLOW_OUT", format!("s3://{bucket}/tripflow")),
        ];
        if fields {
            v.push(("TRIPFLOW_FIELDS", format!("s3://{bucket}/config/fields.toml")));
        }
        v
    };

    // Ingested before the field is declared: kept as sent.
    let api = RuntimeApi::start().await;
    let ingest = Function::start(&api, "ingest", &vars(false));
    let (event, _) = kinesis_event(
        &[
            record("a", start("a")),
            record("a", end("a", "1.25")),
            record("b", start("b")),
            record("b", end("b", r#""2.5""#)),
        ],
        1,
    );
    assert!(failures(&api.invoke_now(&event).await).is_empty(), "{}", ingest.log());
    drop(ingest);

    // The field declared, in S3; a query over it, typed.
    let fields = "[[field]]\nname = \"surge_multiplier\"\ngroup = \"end\"\ntype = \"decimal\"\n";
    let s3 = aws.s3_client();
    s3.put_object()
        .bucket(&bucket)
        .key("config/fields.toml")
        .body(fields.as_bytes().to_vec().into())
        .send()
        .await
        .unwrap();
    let queries = tempfile::tempdir().unwrap();
    std::fs::write(
        queries.path().join("daily_kpis.sql"),
        "SELECT trip_date, sum(surge_multiplier) * 2 AS doubled FROM trips GROUP BY trip_date",
    )
    .unwrap();
    let api = RuntimeApi::start().await;
    let mut kpi_vars = vars(true);
    kpi_vars.push(("TRIPFLOW_QUERIES", queries.path().display().to_string()));
    let kpi = Function::start(&api, "kpi", &kpi_vars);
    let outcome = api.invoke_now(&json!({ "dates": ["2024-05-25"] })).await;
    assert!(matches!(outcome, Outcome::Response(_)), "{outcome:?}\n{}", kpi.log());
    let written = s3_tree(&aws, &bucket, "tripflow/kpi_output").await;
    let day: Value = serde_json::from_slice(&written["date=2024-05-25/kpi.json"]).unwrap();
    assert_eq!(day["doubled"].to_string().trim_matches('"').trim_end_matches('0'), "7.5", "{day}");
    drop(kpi);

    // Ingested after: checked as a decimal.
    let api = RuntimeApi::start().await;
    let ingest = Function::start(&api, "ingest", &vars(true));
    let (event, seqs) = kinesis_event(&[record("c", end("c", r#""high""#))], 100);
    assert!(failures(&api.invoke_now(&event).await).is_empty(), "{}", ingest.log());
    let letters = s3_tree(&aws, &bucket, "tripflow/dead_letters").await;
    let letter: Value =
        serde_json::from_slice(&letters[&format!("kinesis:bolt_streams/{shard}/{}.json", seqs[0])]).unwrap();
    assert!(letter["reasons"].to_string().contains("surge_multiplier: not a finite decimal"), "{letter}");
}
