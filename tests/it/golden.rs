//! A golden test per file in `queries/`: its results on a fixed dataset (300 generated
//! trips, seed 11, plus a few late, duplicate and incomplete events), as NDJSON, must
//! equal `tests/golden/<stem>.ndjson`. A new query file needs its golden file:
//! `TRIPFLOW_BLESS=1 cargo test golden` writes them; review the diff before committing.

use std::path::Path;

use tripflow::config::Home;
use tripflow::ingest::IngestOptions;
use tripflow::kpi::{self, DateSelection};
use tripflow::sql::{Format, render};

use crate::common::{end_event, ingest, put_raw, queries_dir, start_event};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_query_matches_its_golden_output() {
    let tmp = tempfile::tempdir().unwrap();
    tripflow::synthetic::generate(300, 11, tmp.path()).unwrap();
    let home = Home::new(tmp.path().join("home")).unwrap();
    let stream = home.stream(Some(2)).unwrap();
    tripflow::produce::produce_csv(&stream, &tmp.path().join("trip_start.csv"), &tmp.path().join("trip_end.csv"))
        .await
        .unwrap();
    // An end without a start (not completed), a later correction of a fare, a duplicate.
    let extra = [
        end_event("no-start", "2024-05-25 10:00:00", "99.99"),
        start_event("late", "2024-05-25 09:00:00"),
        end_event("late", "2024-05-25 09:30:00", "10.005"),
        end_event("late", "2024-05-25 09:31:00", "12.345"),
        end_event("late", "2024-05-25 09:31:00", "12.345"),
    ];
    put_raw(&stream, &extra.map(String::into_bytes)).await;
    ingest(&home, &IngestOptions { batch_rows: 97, ..Default::default() }).await.unwrap();

    let queries = kpi::queries::load(&queries_dir()).unwrap();
    let (results, _) =
        kpi::run_queries(&home.store().unwrap(), &queries, &DateSelection::All, kpi::ExportColumns::Queried)
            .await
            .unwrap();
    let golden_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let bless = std::env::var_os("TRIPFLOW_BLESS").is_some();
    for r in results {
        let actual = render(&r.batches, Format::Ndjson).unwrap();
        let path = golden_dir.join(format!("{}.ndjson", r.query.stem));
        if bless {
            std::fs::write(&path, &actual).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&path).unwrap_or_else(|_| {
            panic!("no golden output {}; write it with TRIPFLOW_BLESS=1 and review it", path.display())
        });
        assert_eq!(actual, expected, "{} differs from {}", r.query.path.display(), path.display());
    }
}
