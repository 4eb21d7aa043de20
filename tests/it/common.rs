//! Helpers shared by the integration tests.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use tripflow::config::Home;
use tripflow::ingest::{Ingest, IngestCounts, IngestOptions};
use tripflow::kpi::{self, DateSelection, OutputLocation};
use tripflow::stream::embedded::EmbeddedStream;
use tripflow::stream::{PutRecord, StreamSink};

/// The repository's `data/` folder.
pub fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("data")
}

/// The repository's `queries/` folder.
pub fn queries_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("queries")
}

/// Ingests everything in `home`'s stream.
pub async fn ingest(home: &Home, opts: &IngestOptions) -> tripflow::Result<IngestCounts> {
    let stream = home.stream(None)?;
    let store = home.store()?;
    let store = &*store;
    let dead = home.dead_letters()?;
    Ingest { source: &stream, checkpoints: &stream, store, dead_letters: &dead }.run(opts).await
}

/// Puts `dir`'s `trip_start.csv` and `trip_end.csv` on `stream`, as `tripflow produce`
/// does.
pub async fn produce_dir(stream: &dyn StreamSink, dir: &Path) -> tripflow::produce::ProduceReport {
    let (start, end) = (dir.join("trip_start.csv"), dir.join("trip_end.csv"));
    tripflow::produce::produce_csv(stream, &start, &end, &tripflow::observe::progress::Quiet).await.unwrap()
}

/// Runs the KPI job (JSON and Parquet) over `home` for all dates into `out`, returning
/// each file's bytes by its path under `out`.
pub async fn kpi_files(home: &Home, out: &Path) -> BTreeMap<String, Vec<u8>> {
    let queries = kpi::queries::load(&queries_dir()).unwrap();
    let location = OutputLocation::parse(out.to_str().unwrap(), None).unwrap();
    let formats = kpi::Formats { parquet: true };
    kpi::run(
        &*home.store().unwrap(),
        &queries,
        &tripflow::model::declared::Fields::default(),
        &DateSelection::All,
        &location,
        formats,
        &tripflow::observe::progress::Quiet,
    )
    .await
    .unwrap();
    read_tree(out)
}

/// Every file under `dir`, by relative path.
pub fn read_tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut files = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(dir).unwrap().to_string_lossy().into_owned();
                files.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    files
}

/// Puts raw records on the embedded stream of `home`, keyed by index.
pub async fn put_raw(stream: &EmbeddedStream, records: &[Vec<u8>]) {
    let puts: Vec<PutRecord> = records
        .iter()
        .enumerate()
        .map(|(i, data)| PutRecord { partition_key: format!("k{i}").into(), data: data.clone() })
        .collect();
    let refused = stream.put_records(&puts).await.unwrap();
    assert!(refused.is_empty(), "{refused:?}");
}

/// A valid start event.
pub fn start_event(trip: &str, pickup: &str) -> String {
    format!(
        r#"{{"event_type":"trip_start","trip_id":"{trip}","pickup_location_id":93,"dropoff_location_id":"94","vendor_id":1,"pickup_datetime":"{pickup}","estimated_dropoff_datetime":"2024-05-25 14:03:00","estimated_fare_amount":34.18595283806629}}"#
    )
}

/// A valid end event.
pub fn end_event(trip: &str, dropoff: &str, fare: &str) -> String {
    format!(
        r#"{{"event_type":"trip_end","trip_id":"{trip}","dropoff_datetime":"{dropoff}","rate_code":5.0,"passenger_count":"","trip_distance":0.1,"fare_amount":{fare},"tip_amount":0.0,"payment_type":3.0,"trip_type":2.0}}"#
    )
}

/// Copies the files of one folder into another (created if missing).
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, to.join(p.file_name().unwrap())).unwrap();
    }
}
