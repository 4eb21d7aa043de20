//! Live KPIs (docs/design.md §7): the live files equal, byte for byte, a batch
//! recomputation at the same stream position, whatever the order, duplication, late
//! ends, retracted extremes and crashes; and the nightly run certifies them.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use tripflow::config::Home;
use tripflow::ingest::{IngestOptions, LiveOptions};
use tripflow::kpi::live::{Keeping, LiveKpis};
use tripflow::kpi::{self, OutputLocation};
use tripflow::model::declared::Fields;

use crate::common::{data_dir, ingest, kpi_files, produce_dir, put_raw, queries_dir, read_tree};

/// Live options over `home`'s table with the shipped queries, publishing after every
/// batch into `out`.
pub async fn live_options(home: &Home, out: &Path) -> LiveOptions {
    live_options_on(&*home.store().unwrap(), out).await
}

/// Asserts that every live file under `live_out`, without its position, is the
/// nightly file of its date under `nightly`, and that each nightly date has one.
/// Returns the dates compared.
pub fn assert_live_equals_nightly(live_out: &Path, nightly: &std::collections::BTreeMap<String, Vec<u8>>) -> usize {
    let folder = live_out.join("kpi_output/live");
    let live = if folder.exists() { read_tree(&folder) } else { Default::default() };
    let mut compared = 0;
    for (path, bytes) in nightly {
        let Some(date) = path.strip_prefix("kpi_output/date=").and_then(|p| p.strip_suffix("/kpi.json")) else {
            continue;
        };
        let live_file = live.get(&format!("date={date}/kpi.json"));
        let live_file = live_file.unwrap_or_else(|| panic!("no live file for {date}; live: {:?}", live.keys()));
        let text = String::from_utf8(live_file.clone()).unwrap();
        assert!(text.contains("\"live_position\": {\"stream\":"), "{text}");
        assert_eq!(tripflow::kpi::live::nightly_text(&text), String::from_utf8_lossy(bytes), "{date}");
        compared += 1;
    }
    let live_dates = live.keys().filter(|k| k.starts_with("date=")).count();
    assert_eq!(live_dates, compared, "a live file for a date the nightly run has none of: {:?}", live.keys());
    compared
}

#[tokio::test]
async fn the_shipped_queries_are_maintained_and_others_recomputed() {
    let queries = kpi::queries::load(&queries_dir()).unwrap();
    let live = LiveKpis::compile(&queries, &Fields::default(), Arc::from([])).await.unwrap();
    let keeping: Vec<_> = live.explain().map(|(q, k)| (q.stem.clone(), k.clone())).collect();
    assert_eq!(keeping.len(), 3);
    assert!(keeping.iter().all(|(_, k)| *k == Keeping::Maintained), "{keeping:?}");

    let cases = [
        ("SELECT trip_date, COUNT(*) AS n FROM trips GROUP BY trip_date", "no ORDER BY"),
        ("SELECT trip_date, COUNT(*) AS n FROM trips GROUP BY trip_date ORDER BY trip_date LIMIT 3", "LIMIT"),
        (
            "SELECT vendor_id, COUNT(*) AS n FROM trips GROUP BY vendor_id ORDER BY vendor_id",
            "not grouped by trip_date",
        ),
        (
            "SELECT trip_date, SUM(CAST(trip_distance AS DOUBLE)) AS d FROM trips GROUP BY trip_date ORDER BY trip_date",
            "Float64",
        ),
        (
            "SELECT trip_date, COUNT(DISTINCT vendor_id) AS v FROM trips GROUP BY trip_date ORDER BY trip_date",
            "DISTINCT",
        ),
        (
            "SELECT trip_date, COUNT(*) AS n FROM trips GROUP BY trip_date HAVING COUNT(*) > 1 ORDER BY trip_date",
            "Filter",
        ),
        ("SELECT trip_date, MEDIAN(fare_amount) AS m FROM trips GROUP BY trip_date ORDER BY trip_date", "median"),
        ("SELECT trip_date, COUNT(*) AS n FROM trips WHERE random() < 2 GROUP BY trip_date ORDER BY 1", "volatile"),
    ];
    for (sql, why) in cases {
        let q = kpi::KpiQuery::parse(Path::new("q.sql"), sql.into());
        let live = LiveKpis::compile(&[q], &Fields::default(), Arc::from([])).await.unwrap();
        let (_, keeping) = live.explain().next().unwrap();
        match keeping {
            Keeping::Recomputed { why: said } => assert!(said.contains(why), "{sql}: {said}"),
            Keeping::Maintained => panic!("{sql} is maintained"),
        }
    }
    // Aliases, filters on any column, CASE, COALESCE inside: still maintained.
    let sql = "SELECT t.trip_date, CASE WHEN t.vendor_id = 1 THEN 'a' ELSE 'b' END AS v, \
               MAX(t.tip_amount) AS top, MIN(t.pickup_datetime) AS first, AVG(COALESCE(t.passenger_count, 0)) AS p \
               FROM trips AS t WHERE t.fare_amount > 10 GROUP BY t.trip_date, 2 ORDER BY 1, 2";
    let q = kpi::KpiQuery::parse(Path::new("q.sql"), sql.into());
    let live = LiveKpis::compile(&[q], &Fields::default(), Arc::from([])).await.unwrap();
    assert_eq!(live.explain().next().unwrap().1, &Keeping::Maintained);
}

#[tokio::test]
async fn live_files_of_the_sample_equal_the_nightly_run_which_certifies_them() {
    let tmp = tempfile::tempdir().unwrap();
    let home = Home::new(tmp.path().join("home")).unwrap();
    produce_dir(&home.stream(Some(2)).unwrap(), &data_dir()).await;
    let live_out = tmp.path().join("live");
    let live = live_options(&home, &live_out).await;
    let opts = IngestOptions { batch_rows: 700, live: Some(live), ..Default::default() };
    let counts = ingest(&home, &opts).await.unwrap();
    assert!(counts.batches > 10, "{counts:?}");
    let nightly_out = tmp.path().join("nightly");
    let nightly = kpi_files(&home, &nightly_out).await;
    let compared = assert_live_equals_nightly(&live_out, &nightly);
    assert!(compared >= 2, "{compared}");

    let certificate: serde_json::Value = serde_json::from_slice(&nightly["kpi_output/live/certificate.json"]).unwrap();
    assert_eq!(certificate["compared"].as_array().unwrap().len(), compared, "{certificate}");
    assert_eq!(certificate["equal"], certificate["compared"], "{certificate}");
    assert_eq!(certificate["mismatches"], serde_json::json!([]));
    assert_eq!(certificate["queries"], serde_json::json!(["daily_kpis", "fares_by_payment_type", "trips_by_hour"]));

    // A restart resumes the stored state, without a recount; after a merge made without
    // the live fold, it is rebuilt from the table instead, and says why.
    let store = home.store().unwrap();
    let resumed = live_options(&home, &live_out).await.kpis.resume(&*store).await.unwrap();
    assert_eq!(resumed, tripflow::kpi::live::Resumed::Resumed);
    put_raw(&home.stream(None).unwrap(), &[crate::common::start_event("late-1", "2024-05-25 10:00:00").into_bytes()])
        .await;
    ingest(&home, &IngestOptions::default()).await.unwrap();
    let rebuilt = live_options(&home, &live_out).await.kpis.resume(&*store).await.unwrap();
    assert!(
        matches!(&rebuilt, tripflow::kpi::live::Resumed::Rebuilt(why) if why.contains("without --live-kpis")),
        "{rebuilt:?}"
    );
}

// ---- Random interleavings ----

/// A trip's events: zero to two starts (pickup hour by version), zero to three ends
/// whose version moves the trip between two days and sets its fare, tip and payment.
fn trip_events(trip: usize) -> impl Strategy<Value = Vec<String>> {
    (proptest::collection::vec(0u32..4, 0..=2), proptest::collection::vec(0u32..6, 0..=3)).prop_map(
        move |(starts, ends)| {
            let id = format!("trip-{trip}");
            let mut events: Vec<String> = starts
                .iter()
                .map(|m| {
                    format!(
                        r#"{{"event_type":"trip_start","trip_id":"{id}","pickup_location_id":93,"dropoff_location_id":94,"vendor_id":1,"pickup_datetime":"2024-05-25 1{m}:10:00"}}"#
                    )
                })
                .collect();
            // The values depend on the version only, so equal versions are true duplicates.
            // An even version ends on the 25th, an odd one on the 26th (a late end moves
            // the trip); fares repeat across trips, so extremes tie and are retracted.
            events.extend(ends.iter().map(|m| {
                let day = 25 + m % 2;
                let fare = ["7.50", "12.00", "7.50", "31.25", "12.00", "99.99"][*m as usize];
                let tip = if m % 3 == 0 { "null".to_owned() } else { format!("{m}.5") };
                format!(
                    r#"{{"event_type":"trip_end","trip_id":"{id}","dropoff_datetime":"2024-05-{day} {}:00:00","fare_amount":{fare},"tip_amount":{tip},"payment_type":{}}}"#,
                    18 + m,
                    m % 3 + 1
                )
            }));
            events
        },
    )
}

/// Events of up to eight trips, shuffled, with duplicates; a batch size; and the batch
/// after which the first run crashes (0: none).
fn scenario() -> impl Strategy<Value = (Vec<String>, usize, u64)> {
    (1usize..9)
        .prop_flat_map(|n| (0..n).map(trip_events).collect::<Vec<_>>())
        .prop_map(|trips| trips.concat())
        .prop_filter("some events", |e| !e.is_empty())
        .prop_flat_map(|events| {
            let len = events.len();
            (Just(events).prop_shuffle(), proptest::collection::vec(0..len, 0..len / 2 + 1), 1usize..6, 0u64..4)
        })
        .prop_map(|(events, dups, batch, crash)| {
            let mut with_dups = events.clone();
            for i in dups {
                with_dups.insert(i.min(with_dups.len()), events[i].clone());
            }
            (with_dups, batch, crash)
        })
}

/// Puts `events` on a new home's stream and ingests them with live KPIs, in batches of
/// `batch_rows`, crashing once after `crash` batches (0: never) and resuming; then
/// checks the live files against a nightly run over the same table.
async fn live_equals_batch(events: &[String], batch_rows: usize, crash: u64) {
    let tmp = tempfile::tempdir().unwrap();
    let home = Home::new(tmp.path().join("home")).unwrap();
    let records: Vec<Vec<u8>> = events.iter().map(|e| e.clone().into_bytes()).collect();
    put_raw(&home.stream(Some(2)).unwrap(), &records).await;
    let live_out = tmp.path().join("live");
    if crash > 0 {
        let live = live_options(&home, &live_out).await;
        let opts =
            IngestOptions { batch_rows, live: Some(live), crash_after_batches: Some(crash), ..Default::default() };
        // Fewer batches than the crash point: the run ends without one.
        let _ = ingest(&home, &opts).await;
    }
    // A new process: the live state is resumed from the table.
    let live = live_options(&home, &live_out).await;
    let counts = ingest(&home, &IngestOptions { batch_rows, live: Some(live), ..Default::default() }).await.unwrap();
    assert_eq!(counts.dead_lettered, 0, "{counts:?}");
    let nightly = kpi_files(&home, &tmp.path().join("nightly")).await;
    assert_live_equals_nightly(&live_out, &nightly);
    let certificate: serde_json::Value = serde_json::from_slice(&nightly["kpi_output/live/certificate.json"]).unwrap();
    assert_eq!(certificate["mismatches"], serde_json::json!([]), "{certificate}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]
    #[test]
    fn live_files_equal_a_batch_recomputation_under_any_interleaving((events, batch_rows, crash) in scenario()) {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(live_equals_batch(&events, batch_rows, crash));
    }
}

// ---- On DynamoDB (moto) ----

/// Live options over `store`'s table with the shipped queries, publishing after every
/// batch into `out`.
async fn live_options_on(store: &dyn tripflow::store::TripStore, out: &Path) -> LiveOptions {
    let queries = kpi::queries::load(&queries_dir()).unwrap();
    let kept = kpi::table_columns(store, &Fields::default()).await.unwrap();
    let kpis = LiveKpis::compile(&queries, &Fields::default(), kept).await.unwrap();
    LiveOptions {
        kpis: Arc::new(kpis),
        out: OutputLocation::parse(out.to_str().unwrap(), None).unwrap(),
        every: Duration::ZERO,
        recompute_every: Duration::ZERO,
    }
}

/// The nightly run (JSON) of every date of `store`, with the shipped queries, into `out`:
/// each file's bytes by its path under `out`.
async fn nightly_of(store: &dyn tripflow::store::TripStore, out: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    nightly_of_with(store, &kpi::queries::load(&queries_dir()).unwrap(), out).await
}

/// [`nightly_of`] with `queries`.
async fn nightly_of_with(
    store: &dyn tripflow::store::TripStore,
    queries: &[kpi::KpiQuery],
    out: &Path,
) -> std::collections::BTreeMap<String, Vec<u8>> {
    let location = OutputLocation::parse(out.to_str().unwrap(), None).unwrap();
    let (fields, all) = (Fields::default(), kpi::DateSelection::All);
    let quiet = tripflow::observe::progress::Quiet;
    kpi::run(store, queries, &fields, &all, &location, kpi::Formats::default(), &quiet).await.unwrap();
    read_tree(out)
}

/// [`live_equals_batch`] with the trip table and the live state on DynamoDB (two write
/// shards): the first run fails after `crash` merges (0: never) between the live items
/// and the trips, and the replay reads batches of `replay_rows`, cut elsewhere.
async fn live_on_dynamodb_equals_batch(events: &[String], batch_rows: usize, crash: u64, replay_rows: usize) {
    use tripflow::store::dynamodb::DynamoStore;
    let aws = crate::moto::aws();
    let table = crate::moto::unique("live");
    let open = || DynamoStore::new(&aws, &table).with_date_shards(2).with_mark_grace(Duration::ZERO);
    assert!(open().create_if_missing().await.unwrap());
    let tmp = tempfile::tempdir().unwrap();
    let home = Home::new(tmp.path().join("home")).unwrap();
    // Keyed by trip, as docs/design.md §1 has it: a trip's events come through one shard,
    // in order, which the live items' positions rely on.
    let keyed: Vec<(String, String)> = events
        .iter()
        .map(|e| {
            let v: serde_json::Value = serde_json::from_str(e).unwrap();
            (v["trip_id"].as_str().unwrap().to_owned(), e.clone())
        })
        .collect();
    put_keyed(&home.stream(Some(2)).unwrap(), &keyed).await;
    let stream = home.stream(None).unwrap();
    let dead = home.dead_letters().unwrap();
    let live_out = tmp.path().join("live");
    let run = |store: DynamoStore, rows: usize| {
        let (stream, dead, live_out) = (&stream, &dead, &live_out);
        async move {
            let live = live_options_on(&store, live_out).await;
            let opts = IngestOptions { batch_rows: rows, live: Some(live), ..Default::default() };
            let ingest =
                tripflow::ingest::Ingest { source: stream, checkpoints: stream, store: &store, dead_letters: dead };
            ingest.run(&opts).await
        }
    };
    if crash > 0 {
        // Fewer merges than the failure point: the run ends without one.
        let _ = run(open().with_failure_before_trips(crash), batch_rows).await;
    }
    let counts = run(open(), replay_rows).await.unwrap();
    assert_eq!(counts.dead_lettered, 0, "{counts:?}");

    let store = open();
    let nightly = nightly_of(&store, &tmp.path().join("nightly")).await;
    assert_live_equals_nightly(&live_out, &nightly);
    if let Some(certificate) = nightly.get("kpi_output/live/certificate.json") {
        let certificate: serde_json::Value = serde_json::from_slice(certificate).unwrap();
        assert_eq!(certificate["mismatches"], serde_json::json!([]), "{certificate}");
        assert_eq!(certificate["equal"], certificate["compared"], "{certificate}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(16))]
    #[test]
    fn live_on_dynamodb_moto_equals_a_batch_recomputation_under_any_interleaving(
        (events, batch_rows, crash) in scenario(),
        replay_rows in 1usize..6,
    ) {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(live_on_dynamodb_equals_batch(&events, batch_rows, crash, replay_rows));
    }
}

// ---- End to end ----

/// The events of wave `k` (0, 1, 2) of the end-to-end test: trips start and end over
/// two days; then late ends move some to the other day and change their fares (the
/// cheapest among them), with duplicates; then starts complete the trips that only had
/// an end, and new trips come.
fn wave(k: usize) -> Vec<(String, String)> {
    let start = |t: usize| {
        let id = format!("t{t}");
        let e = format!(
            r#"{{"event_type":"trip_start","trip_id":"{id}","pickup_location_id":1,"dropoff_location_id":2,"vendor_id":1,"pickup_datetime":"2024-05-25 0{}:05:00"}}"#,
            t % 10
        );
        (id, e)
    };
    let end = |t: usize, version: usize| {
        let id = format!("t{t}");
        let day = 25 + (t + version) % 2;
        let fare = format!("{}.{:02}", 5 + (t * 7 + version * 13) % 40, (t * 11) % 100);
        let e = format!(
            r#"{{"event_type":"trip_end","trip_id":"{id}","dropoff_datetime":"2024-05-{day} 1{version}:30:00","fare_amount":{fare},"tip_amount":{}.25,"payment_type":{}}}"#,
            t % 4,
            t % 3 + 1
        );
        (id, e)
    };
    match k {
        0 => (0..60).flat_map(|t| [start(t), end(t, 0)]).collect(),
        1 => (0..60).step_by(3).flat_map(|t| [end(t, 1), end(t, 1)]).chain((60..80).map(|t| end(t, 0))).collect(),
        _ => (60..80).map(start).chain((80..90).flat_map(|t| [start(t), end(t, 2)])).collect(),
    }
}

/// Puts `events` (partition key, data) on `stream`.
async fn put_keyed(stream: &tripflow::stream::embedded::EmbeddedStream, events: &[(String, String)]) {
    use tripflow::stream::{PutRecord, StreamSink};
    let puts: Vec<PutRecord> = events
        .iter()
        .map(|(k, e)| PutRecord { partition_key: k.as_str().into(), data: e.clone().into_bytes() })
        .collect();
    assert!(stream.put_records(&puts).await.unwrap().is_empty());
}

/// The nightly files of the waves up to `k`, computed in a home of their own.
async fn batch_of_waves(k: usize) -> std::collections::BTreeMap<String, Vec<u8>> {
    let tmp = tempfile::tempdir().unwrap();
    let home = Home::new(tmp.path().join("home")).unwrap();
    let stream = home.stream(Some(2)).unwrap();
    for w in 0..=k {
        put_keyed(&stream, &wave(w)).await;
    }
    ingest(&home, &IngestOptions::default()).await.unwrap();
    kpi_files(&home, &tmp.path().join("out")).await
}

/// True when every live file under `live_out` equals `nightly`'s file of its date,
/// without its position, and each nightly date has one.
fn live_matches(live_out: &Path, nightly: &std::collections::BTreeMap<String, Vec<u8>>) -> bool {
    std::panic::catch_unwind(|| assert_live_equals_nightly(live_out, nightly)).is_ok()
}

#[test]
fn ingest_follow_live_kpis_publishes_each_wave_within_its_interval() {
    use std::process::{Command, Stdio};
    let tmp = tempfile::tempdir().unwrap();
    let home_dir = tmp.path().join("tripflow-data");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let stream = tripflow::stream::embedded::EmbeddedStream::open(&home_dir, Some(2)).unwrap();
    let every = Duration::from_secs(2);
    let follower = Command::new(env!("CARGO_BIN_EXE_tripflow"))
        .current_dir(tmp.path())
        .args(["ingest", "--follow", "--live-kpis", "--live-every", "2s", "--batch-linger-ms", "20", "--out", "out"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let live_out = tmp.path().join("out");
    for k in 0..3 {
        let expected = runtime.block_on(batch_of_waves(k));
        runtime.block_on(put_keyed(&stream, &wave(k)));
        let put = std::time::Instant::now();
        let deadline = put + every + Duration::from_secs(5);
        // Quiet the panics of the comparisons that are expected to fail while waiting.
        let hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        let mut matched = false;
        while std::time::Instant::now() < deadline {
            if live_matches(&live_out, &expected) {
                matched = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        std::panic::set_hook(hook);
        assert!(matched, "wave {k}: the live files did not equal the batch within {every:?} + 5 s");
        eprintln!("wave {k}: live files equal the batch {:?} after the last put", put.elapsed());
    }
    let killed = Command::new("kill").args(["-TERM", &follower.id().to_string()]).status().unwrap();
    assert!(killed.success());
    let out = follower.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("live KPIs:"), "{}", String::from_utf8_lossy(&out.stdout));

    // Each file is exact as of the position the follower checkpointed last.
    let live = read_tree(&live_out.join("kpi_output/live"));
    let checkpoints = runtime.block_on(async {
        use tripflow::stream::{Checkpoint, CheckpointStore, StreamSource};
        let mut shards = serde_json::Map::new();
        for shard in stream.shards().await.unwrap() {
            if let Some(Checkpoint::At(seq)) = stream.get(tripflow::ingest::DEFAULT_CONSUMER, &shard.id).await.unwrap()
            {
                shards.insert(shard.id.to_string(), seq.0.to_string().into());
            }
        }
        serde_json::Value::Object(shards)
    });
    let newest = live
        .values()
        .filter_map(|b| serde_json::from_slice::<serde_json::Value>(b).ok())
        .map(|v| v["live_position"]["shards"].clone())
        .find(|s| *s == checkpoints);
    assert!(newest.is_some(), "no live file at the checkpoints {checkpoints}");

    // The nightly run over the follower's table certifies the live figures.
    let kpi = Command::new(env!("CARGO_BIN_EXE_tripflow"))
        .current_dir(tmp.path())
        .args(["kpi", "--all", "--out", "out"])
        .output()
        .unwrap();
    assert!(kpi.status.success(), "{}", String::from_utf8_lossy(&kpi.stderr));
    let stdout = String::from_utf8_lossy(&kpi.stdout);
    assert!(stdout.contains("live KPIs: equal to this run on 2 of 2 date(s)"), "{stdout}");
}

#[test]
fn explain_live_says_how_each_query_is_kept_and_a_bad_interval_is_one_line() {
    use std::process::Command;
    let tmp = tempfile::tempdir().unwrap();
    let queries = tmp.path().join("queries");
    crate::common::copy_dir(&queries_dir(), &queries);
    std::fs::write(
        queries.join("top_fares.sql"),
        "SELECT trip_date, fare_amount FROM trips WHERE trip_completed ORDER BY fare_amount DESC LIMIT 5\n",
    )
    .unwrap();
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_tripflow")).current_dir(tmp.path()).args(args).output().unwrap()
    };
    let out = run(&["kpi", "--explain-live", "--queries", queries.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("daily_kpis: maintained from each merge's rows, before and after"), "{stdout}");
    assert!(stdout.contains("trips_by_hour: maintained"), "{stdout}");
    assert!(stdout.contains("top_fares: recomputed for its changed dates: it has a LIMIT"), "{stdout}");
    // Nothing was run: no output folder, no table.
    assert!(!tmp.path().join("tripflow-out").exists());

    let out = run(&["ingest", "--live-kpis", "--live-every", "5 parsecs"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(
        errors[0].contains("--live-every \"5 parsecs\" is not a duration") && errors[0].contains("5s, 1m"),
        "{stderr}"
    );

    // A table that keeps no live state says so before any work.
    let old = tmp.path().join("old-home");
    std::fs::create_dir_all(&old).unwrap();
    std::fs::write(old.join("trips.sqlite"), b"").unwrap();
    let out = run(&["ingest", "--live-kpis", "--home", old.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(errors[0].contains("keeps no live KPIs"), "{stderr}");
}

#[tokio::test]
async fn a_query_that_is_not_maintained_is_recomputed_into_the_live_files() {
    let tmp = tempfile::tempdir().unwrap();
    let home = Home::new(tmp.path().join("home")).unwrap();
    produce_dir(&home.stream(Some(2)).unwrap(), &data_dir()).await;
    let folder = tmp.path().join("queries");
    crate::common::copy_dir(&queries_dir(), &folder);
    // A HAVING keeps it from being maintained; it is recomputed for the changed dates.
    std::fs::write(
        folder.join("busy_vendors.sql"),
        "SELECT trip_date, vendor_id, COUNT(*) AS trips FROM trips WHERE trip_completed \
         GROUP BY trip_date, vendor_id HAVING COUNT(*) > 10 ORDER BY trip_date, vendor_id\n",
    )
    .unwrap();
    let queries = kpi::queries::load(&folder).unwrap();
    let kpis = LiveKpis::compile(&queries, &Fields::default(), Arc::from([])).await.unwrap();
    let kept: Vec<bool> = kpis.explain().map(|(_, k)| *k == Keeping::Maintained).collect();
    assert_eq!(kept, [false, true, true, true], "busy_vendors sorts first");
    let live_out = tmp.path().join("live");
    let live = LiveOptions {
        kpis: Arc::new(kpis),
        out: OutputLocation::parse(live_out.to_str().unwrap(), None).unwrap(),
        every: Duration::ZERO,
        recompute_every: Duration::ZERO,
    };
    ingest(&home, &IngestOptions { batch_rows: 2000, live: Some(live), ..Default::default() }).await.unwrap();
    let nightly_out = tmp.path().join("nightly");
    let nightly = nightly_of_with(&*home.store().unwrap(), &queries, &nightly_out).await;
    assert_live_equals_nightly(&live_out, &nightly);
    let any = read_tree(&live_out.join("kpi_output/live"));
    let text = String::from_utf8_lossy(any.values().next().unwrap()).into_owned();
    assert!(text.contains("\"busy_vendors\": [") && text.contains("\"live_recomputed_position\""), "{text}");
}

/// The live state's cost on DynamoDB (moto), from counted requests: `data/` in batches of
/// 500 over 4 write shards. Per batch, at most the dates it touches times the shards.
#[tokio::test]
async fn live_state_on_dynamodb_moto_writes_at_most_dates_times_shards_per_batch() {
    use tripflow::store::TripStore;
    use tripflow::store::dynamodb::DynamoStore;
    let aws = crate::moto::aws();
    let table = crate::moto::unique("livecost");
    let store = DynamoStore::new(&aws, &table).with_date_shards(4);
    assert!(store.create_if_missing().await.unwrap());
    let tmp = tempfile::tempdir().unwrap();
    let home = Home::new(tmp.path().join("home")).unwrap();
    produce_dir(&home.stream(Some(2)).unwrap(), &data_dir()).await;
    let stream = home.stream(None).unwrap();
    let dead = home.dead_letters().unwrap();
    let live = live_options_on(&store, &tmp.path().join("live")).await;
    let opts = IngestOptions { batch_rows: 500, live: Some(live), ..Default::default() };
    let ingest = tripflow::ingest::Ingest { source: &stream, checkpoints: &stream, store: &store, dead_letters: &dead };
    let counts = ingest.run(&opts).await.unwrap();
    let live_writes = store.live_writes();
    // The dates each batch's trips can count in: at most every date of the data.
    let dates = store.live_dates().await.unwrap();
    let bound = counts.batches * dates.len() as u64 * 4;
    assert!(live_writes > 0 && live_writes <= bound, "{live_writes} live writes, bound {bound}: {counts:?}");
    let biggest = dates.iter().flat_map(|d| &d.shards).map(|s| s.state.len()).max().unwrap();
    eprintln!(
        "live cost: {} records, {} batches, {} trip writes, {} live item writes ({:.2} a batch), {} dates, largest state {} bytes",
        counts.read,
        counts.batches,
        counts.store_writes,
        live_writes,
        live_writes as f64 / counts.batches as f64,
        dates.len(),
        biggest
    );
}
