//! A golden test per file in `queries/`, on a fixed dataset: 300 generated trips (seed
//! 11), a few late, duplicate and incomplete events, and a day of extreme fares (the
//! largest `DECIMAL(38, 18)` holds, its negative, the smallest step, an exponent form).
//!
//! Each query's results, as NDJSON, are checked twice:
//! - against its snapshot `tests/golden/<stem>.snap`, kept by `insta`. A changed query
//!   fails until its snapshot is reviewed: `cargo insta review`, or
//!   `INSTA_UPDATE=always cargo test golden` and a look at the diff;
//! - against `tests/golden/independent.py`, which computes the same KPIs from the same
//!   input files with Python's `decimal` and no tripflow code.
//!
//! A snapshot whose query was deleted fails too.

use std::path::Path;
use std::process::Command;

use tripflow::config::Home;
use tripflow::ingest::IngestOptions;
use tripflow::kpi::sql::{Format, render};
use tripflow::kpi::{self, DateSelection};

use crate::common::{end_event, ingest, put_raw, queries_dir, start_event};

fn golden_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

/// The largest fare validation accepts: what `DECIMAL(38, 18)` holds.
const MAX_FARE: &str = "99999999999999999999.999999999999999999";

/// Events after the generated CSV files: an end without a start (not completed), a
/// later correction of a fare, a duplicate; then a day whose sums and averages overflow
/// `DECIMAL(38, 18)` unless the queries widen them.
fn extra_events() -> Vec<String> {
    let min_fare = format!("-{MAX_FARE}");
    let mut events = vec![
        end_event("no-start", "2024-05-25 10:00:00", "99.99"),
        start_event("late", "2024-05-25 09:00:00"),
        end_event("late", "2024-05-25 09:30:00", "10.005"),
        end_event("late", "2024-05-25 09:31:00", "12.345"),
        end_event("late", "2024-05-25 09:31:00", "12.345"),
    ];
    for (trip, fare) in [
        ("max-1", MAX_FARE),
        ("max-2", MAX_FARE),
        ("max-3", MAX_FARE),
        ("neg", min_fare.as_str()),
        ("tiny", "0.000000000000000001"),
        ("exp", "1E+19"),
        ("half", "0.005"),
    ] {
        events.push(start_event(trip, "2024-06-01 08:00:00"));
        events.push(end_event(trip, "2024-06-01 08:30:00", fare));
    }
    events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_query_matches_its_snapshot_and_an_independent_computation() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("input");
    tripflow::produce::synthetic::generate(300, 11, &input).unwrap();
    let extra = extra_events();
    std::fs::write(input.join("extra.ndjson"), extra.iter().map(|e| format!("{e}\n")).collect::<String>()).unwrap();

    let home = Home::new(tmp.path().join("home")).unwrap();
    let stream = home.stream(Some(2)).unwrap();
    crate::common::produce_dir(&stream, &input).await;
    put_raw(&stream, &extra.into_iter().map(String::into_bytes).collect::<Vec<_>>()).await;
    let counts = ingest(&home, &IngestOptions { batch_rows: 97, ..Default::default() }).await.unwrap();
    assert_eq!(counts.dead_lettered, 0, "every golden input is valid");

    let queries = kpi::queries::load(&queries_dir()).unwrap();
    let (results, _) = kpi::run_queries(
        &*home.store().unwrap(),
        &queries,
        &tripflow::model::declared::Fields::default(),
        &DateSelection::All,
        kpi::ExportColumns::Queried,
        &tripflow::observe::progress::Quiet,
    )
    .await
    .unwrap();

    let python = tmp.path().join("python");
    std::fs::create_dir(&python).unwrap();
    let out = Command::new("python3")
        .arg(golden_dir().join("independent.py"))
        .args([&input, &python])
        .output()
        .expect("python3 runs tests/golden/independent.py; install Python 3");
    assert!(out.status.success(), "independent.py failed: {}", String::from_utf8_lossy(&out.stderr));

    assert_eq!(results.len(), 3, "independent.py computes the three shipped queries; teach it a new one");
    for r in results {
        let stem = &r.query.stem;
        let actual = render(&r.batches, Format::Ndjson).unwrap();
        let second = std::fs::read_to_string(python.join(format!("{stem}.ndjson")))
            .unwrap_or_else(|_| panic!("independent.py wrote no {stem}.ndjson"));
        assert_eq!(actual, second, "{} differs from Python's decimal computation", r.query.path.display());

        let mut settings = insta::Settings::clone_current();
        settings.set_snapshot_path(golden_dir());
        settings.set_prepend_module_to_snapshot(false);
        settings.set_omit_expression(true);
        settings.set_description(format!("queries/{stem}.sql: results as NDJSON (see tests/it/golden.rs)"));
        settings.bind(|| insta::assert_snapshot!(stem.as_str(), actual));
    }
}

#[test]
fn every_snapshot_belongs_to_a_query() {
    let mut leftovers = Vec::new();
    for entry in std::fs::read_dir(golden_dir()).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let Some(stem) = name.strip_suffix(".snap") else {
            assert!(name == "independent.py" || name.ends_with(".snap.new"), "unexpected file in tests/golden: {name}");
            continue;
        };
        if !queries_dir().join(format!("{stem}.sql")).is_file() {
            leftovers.push(name);
        }
    }
    assert!(leftovers.is_empty(), "snapshots of deleted queries: {leftovers:?}; delete them from tests/golden");
}
