//! `tripflow run` over `data/`, checked against an independent computation of the KPIs
//! from the CSV files with plain string handling and exact integer arithmetic.

use std::collections::{BTreeMap, HashMap};

use serde_json::value::RawValue;
use tripflow::config::Home;
use tripflow::ingest::IngestOptions;
use tripflow::kpi::OutputLocation;
use tripflow::pipeline::{self, RunSettings};

use crate::common::{data_dir, queries_dir, read_tree};

const SCALE: i128 = 1_000_000_000_000_000_000; // 10^18

/// A decimal string as an integer count of 10^-18.
fn fixed(s: &str) -> i128 {
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    let neg = int.starts_with('-');
    let int: i128 = int.trim_start_matches('-').parse().unwrap();
    let frac: i128 = format!("{frac:0<18}")[..18].parse().unwrap();
    let v = int * SCALE + frac;
    if neg { -v } else { v }
}

/// `num / den` rounded half away from zero to cents, as text (positive values).
fn cents(num: i128, den: i128) -> String {
    let scaled = num * 100;
    let (q, r) = (scaled / den, scaled % den);
    let c = if 2 * r >= den { q + 1 } else { q };
    format!("{}.{:02}", c / 100, c % 100)
}

#[derive(Default, Debug)]
struct Day {
    trips: i128,
    sum: i128,
    min: Option<i128>,
    max: Option<i128>,
}

fn expected_kpis(start_csv: &str, end_csv: &str) -> BTreeMap<String, Day> {
    let started: std::collections::HashSet<&str> =
        start_csv.lines().skip(1).filter_map(|l| l.split(',').next()).collect();
    let mut days: BTreeMap<String, Day> = BTreeMap::new();
    for line in end_csv.lines().skip(1) {
        let cells: Vec<&str> = line.split(',').collect();
        let (dropoff, fare, trip) = (cells[0], cells[4], cells[8]);
        if !started.contains(trip) {
            continue;
        }
        let fare = fixed(fare);
        let day = days.entry(dropoff[..10].to_owned()).or_default();
        day.trips += 1;
        day.sum += fare;
        day.min = Some(day.min.map_or(fare, |m| m.min(fare)));
        day.max = Some(day.max.map_or(fare, |m| m.max(fare)));
    }
    days
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_over_data_matches_an_independent_computation() {
    let start = data_dir().join("trip_start.csv");
    let end = data_dir().join("trip_end.csv");
    let tmp = tempfile::tempdir().unwrap();
    let home = Home::new(tmp.path().join("home")).unwrap();
    let settings = RunSettings {
        start: start.clone(),
        end: end.clone(),
        stream: tripflow::config::StreamUrl::Embedded(home.clone()),
        store: tripflow::config::StoreUrl::Embedded(home.clone()),
        dead_letter: tripflow::config::DeadLetterUrl::Embedded(home.clone()),
        tuning: Default::default(),
        shards: Some(4),
        out: OutputLocation::parse(tmp.path().join("out").to_str().unwrap(), None).unwrap(),
        queries: Some(queries_dir()),
        ingest: IngestOptions { batch_rows: 1000, ..Default::default() },
        formats: Default::default(),
    };
    let (report, _) = pipeline::run(&settings, &Default::default()).await.unwrap();

    let start_csv = std::fs::read_to_string(&start).unwrap();
    let end_csv = std::fs::read_to_string(&end).unwrap();
    let events = (start_csv.lines().count() + end_csv.lines().count() - 2) as u64;
    assert_eq!(report.produced, events);
    assert_eq!(report.ingest.read, events);
    assert_eq!(report.ingest.applied, events, "generated data is all valid and distinct");
    assert_eq!(report.ingest.dead_lettered, 0);
    assert!(report.ingest.balanced());

    let expected = expected_kpis(&start_csv, &end_csv);
    assert!(expected.len() >= 3, "data/ spans several days");
    let files = read_tree(&tmp.path().join("out"));
    let mut seen = 0;
    for (date, day) in &expected {
        let file = &files[&format!("kpi_output/date={date}/kpi.json")];
        let kpi: HashMap<String, Box<RawValue>> = serde_json::from_slice(file).unwrap();
        let field = |k: &str| kpi[k].get().to_owned();
        assert_eq!(field("trip_date"), format!("\"{date}\""));
        assert_eq!(field("total_trips"), day.trips.to_string(), "{date}");
        assert_eq!(field("total_fare"), cents(day.sum, SCALE), "{date}");
        assert_eq!(field("min_fare"), cents(day.min.unwrap(), SCALE), "{date}");
        assert_eq!(field("max_fare"), cents(day.max.unwrap(), SCALE), "{date}");
        assert_eq!(field("avg_fare"), cents(day.sum, SCALE * day.trips), "{date}");
        seen += 1;
    }
    let kpi_files = files.keys().filter(|k| k.ends_with("/kpi.json")).count();
    assert_eq!(kpi_files, seen, "one kpi.json per date with completed trips, no more");
    assert_eq!(report.kpi_dates.len(), seen);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn further_queries_nest_under_their_stem_and_summaries_get_their_own_file() {
    let tmp = tempfile::tempdir().unwrap();
    let queries = tmp.path().join("queries");
    std::fs::create_dir(&queries).unwrap();
    std::fs::copy(queries_dir().join("daily_kpis.sql"), queries.join("daily_kpis.sql")).unwrap();
    std::fs::write(
        queries.join("vendors.sql"),
        "SELECT trip_date, vendor_id, COUNT(*) AS trips FROM trips WHERE trip_completed GROUP BY 1, 2 ORDER BY 1, 2",
    )
    .unwrap();
    std::fs::write(queries.join("totals.sql"), "SELECT COUNT(*) AS trips FROM trips").unwrap();
    let home = Home::new(tmp.path().join("home")).unwrap();
    let stream = home.stream(Some(1)).unwrap();
    crate::common::produce_dir(&stream, &data_dir()).await;
    crate::common::ingest(&home, &IngestOptions::default()).await.unwrap();
    let out = OutputLocation::parse(tmp.path().join("out").to_str().unwrap(), None).unwrap();
    let loaded = tripflow::kpi::queries::load(&queries).unwrap();
    let all = tripflow::kpi::DateSelection::All;
    let report = tripflow::kpi::run(
        &*home.store().unwrap(),
        &loaded,
        &tripflow::model::declared::Fields::default(),
        &all,
        &out,
        Default::default(),
        &tripflow::observe::progress::Quiet,
    )
    .await
    .unwrap();

    let date = report.dates[0];
    let path = tmp.path().join(format!("out/kpi_output/date={date}/kpi.json"));
    let kpi: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    let vendors = kpi["vendors"].as_array().unwrap();
    let per_vendor: u64 = vendors.iter().map(|v| v["trips"].as_u64().unwrap()).sum();
    assert_eq!(per_vendor, kpi["total_trips"].as_u64().unwrap());
    assert!(vendors.iter().all(|v| v.get("trip_date").is_none() && v["vendor_id"].is_u64()));

    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(tmp.path().join("out/kpi_output/summary/totals.json")).unwrap()).unwrap();
    assert_eq!(summary[0]["trips"].as_u64().unwrap() as usize, report.exported_rows);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kpi_files_are_byte_identical_whatever_batches_shards_and_order_built_the_table() {
    let tmp = tempfile::tempdir().unwrap();
    let (start, end) = (data_dir().join("trip_start.csv"), data_dir().join("trip_end.csv"));

    // A: one shard, big batches, events in time order.
    let a = Home::new(tmp.path().join("a")).unwrap();
    tripflow::produce::produce_csv(&a.stream(Some(1)).unwrap(), &start, &end, &tripflow::observe::progress::Quiet)
        .await
        .unwrap();
    crate::common::ingest(&a, &IngestOptions { batch_rows: 20_000, ..Default::default() }).await.unwrap();

    // B: five shards, tiny batches, events reversed, every tenth one twice, keys that
    // scatter a trip's events over shards.
    let b = Home::new(tmp.path().join("b")).unwrap();
    let mut not_sent = Vec::new();
    let mut events =
        tripflow::produce::read_events(&start, tripflow::model::event::EventKind::Start, &mut not_sent).unwrap();
    events.extend(tripflow::produce::read_events(&end, tripflow::model::event::EventKind::End, &mut not_sent).unwrap());
    events.reverse();
    let mut records: Vec<Vec<u8>> = Vec::new();
    for (i, e) in events.iter().enumerate() {
        records.push(e.record.data.clone());
        if i % 10 == 0 {
            records.push(e.record.data.clone());
        }
    }
    crate::common::put_raw(&b.stream(Some(5)).unwrap(), &records).await;
    let counts = crate::common::ingest(&b, &IngestOptions { batch_rows: 7, ..Default::default() }).await.unwrap();
    assert!(counts.duplicate_or_stale >= (events.len() / 10) as u64);

    let files_a = crate::common::kpi_files(&a, &tmp.path().join("out-a")).await;
    let files_b = crate::common::kpi_files(&b, &tmp.path().join("out-b")).await;
    assert!(files_a.keys().any(|k| k.ends_with("kpi.parquet")) && files_a.keys().any(|k| k.starts_with("snapshots/")));
    assert_eq!(files_a.keys().collect::<Vec<_>>(), files_b.keys().collect::<Vec<_>>());
    for (name, bytes) in &files_a {
        assert!(bytes == &files_b[name], "{name} differs");
    }
}

/// Ingest beside a producer, as `tripflow run` drives it: every record put is read, and
/// while the producer runs only full batches go, however short the linger.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_beside_a_producer_reads_everything_in_full_batches() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    let tmp = tempfile::tempdir().unwrap();
    let home = Home::new(tmp.path()).unwrap();
    let stream = home.stream(Some(2)).unwrap();
    let drain = Arc::new(AtomicBool::new(false));
    let producer = {
        let drain = drain.clone();
        tokio::spawn(async move {
            for chunk in 0..10 {
                let records: Vec<Vec<u8>> = (0..100)
                    .map(|i| crate::common::start_event(&format!("t{chunk}-{i}"), "2024-05-25 13:19:00").into_bytes())
                    .collect();
                crate::common::put_raw(&stream, &records).await;
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
            drain.store(true, Ordering::Release);
        })
    };
    let options = IngestOptions {
        follow: true,
        drain: Some(drain),
        batch_rows: 300,
        linger: Duration::from_millis(1),
        poll_interval: Duration::from_millis(5),
        ..Default::default()
    };
    let counts = crate::common::ingest(&home, &options).await.unwrap();
    producer.await.unwrap();
    assert_eq!(counts.read, 1000, "{counts:?}");
    assert_eq!(counts.applied, 1000, "{counts:?}");
    assert_eq!(counts.batches, 4, "300, 300, 300 and the last 100: {counts:?}");
}
