//! Delivery (docs/design.md §4): a crash between merge and checkpoint replays harmlessly, and
//! killing the `tripflow ingest` process at any moment and running it again gives
//! byte-identical KPI files. A killed ingest leaves every date it changed marked
//! (docs/design.md §5): the marks are in the trips' own write.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use chrono::NaiveDate;
use tripflow::store::Projection;

use tripflow::config::Home;
use tripflow::ingest::IngestOptions;

use crate::common::{ingest, kpi_files};

async fn produce_generated(home: &Home, dir: &std::path::Path, trips: u64) -> u64 {
    tripflow::produce::synthetic::generate(trips, 7, dir).unwrap();
    let stream = home.stream(Some(3)).unwrap();
    let report = crate::common::produce_dir(&stream, dir).await;
    report.sent
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_merge_before_checkpoint_replays_harmlessly() {
    let tmp = tempfile::tempdir().unwrap();
    let clean = Home::new(tmp.path().join("clean")).unwrap();
    let crashed = Home::new(tmp.path().join("crashed")).unwrap();
    let total = produce_generated(&clean, &tmp.path().join("gen"), 300).await;
    produce_generated(&crashed, &tmp.path().join("gen"), 300).await;

    let opts = IngestOptions { batch_rows: 50, ..Default::default() };
    let clean_counts = ingest(&clean, &opts).await.unwrap();
    assert_eq!(clean_counts.read, total);

    let crashing = IngestOptions { crash_after_batches: Some(3), ..opts.clone() };
    let err = ingest(&crashed, &crashing).await.unwrap_err();
    let cause = std::error::Error::source(&err).and_then(|s| s.downcast_ref::<tripflow::ingest::InjectedCrash>());
    assert!(cause.is_some(), "{err}");
    // Two batches were checkpointed; the third was merged but not checkpointed.
    let resumed = ingest(&crashed, &opts).await.unwrap();
    assert!(resumed.balanced(), "{resumed:?}");
    assert_eq!(resumed.read, total - 100, "replays from the last checkpoint");
    assert_eq!(resumed.duplicate_or_stale, 50, "the replayed batch changes nothing");
    assert_eq!(resumed.applied + 150, clean_counts.applied);

    let a = kpi_files(&clean, &tmp.path().join("out-clean")).await;
    let b = kpi_files(&crashed, &tmp.path().join("out-crashed")).await;
    assert!(!a.is_empty());
    assert_eq!(a, b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_any_moment_then_rerun_gives_identical_kpis() {
    let tmp = tempfile::tempdir().unwrap();
    let clean = Home::new(tmp.path().join("clean")).unwrap();
    let killed = Home::new(tmp.path().join("killed")).unwrap();
    produce_generated(&clean, &tmp.path().join("gen"), 3000).await;
    produce_generated(&killed, &tmp.path().join("gen"), 3000).await;
    ingest(&clean, &IngestOptions::default()).await.unwrap();

    let binary = env!("CARGO_BIN_EXE_tripflow");
    let spawn = || {
        Command::new(binary)
            .args(["ingest", "--batch-rows", "97", "--home"])
            .arg(killed.dir())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut kills = 0;
    for delay_ms in [40u64, 90, 150, 230, 320, 500] {
        let mut child = spawn();
        std::thread::sleep(Duration::from_millis(delay_ms));
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap(); // SIGKILL
            kills += 1;
        }
        child.wait().unwrap();
    }
    assert!(kills > 0, "ingest finished before any kill; the test proves nothing");
    let status = spawn().wait().unwrap();
    assert!(status.success());

    let a = kpi_files(&clean, &tmp.path().join("out-clean")).await;
    let b = kpi_files(&killed, &tmp.path().join("out-killed")).await;
    assert!(!a.is_empty());
    assert_eq!(a, b);
}

/// The `trip_date`s of the stored trips, and the dates marked changed, in `home`.
async fn stored_and_marked(home: &Home) -> (BTreeSet<NaiveDate>, BTreeSet<NaiveDate>) {
    use arrow::array::{Array, Date32Array};
    let store = home.store().unwrap();
    let mut stored = BTreeSet::new();
    for batch in store.export(None, &Projection::all()).await.unwrap() {
        let dates = batch.column_by_name("trip_date").unwrap();
        let dates = dates.as_any().downcast_ref::<Date32Array>().unwrap();
        stored
            .extend(dates.iter().flatten().map(|d| arrow::temporal_conversions::date32_to_datetime(d).unwrap().date()));
    }
    let marked = store.changed_dates().await.unwrap().into_iter().map(|m| m.date).collect();
    (stored, marked)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_ingest_leaves_every_stored_date_marked() {
    let tmp = tempfile::tempdir().unwrap();
    let home = Home::new(tmp.path().join("home")).unwrap();
    produce_generated(&home, &tmp.path().join("gen"), 3000).await;
    let binary = env!("CARGO_BIN_EXE_tripflow");
    let mut checked = 0;
    for delay_ms in [60u64, 120, 200, 300] {
        let mut child = Command::new(binary)
            .args(["ingest", "--batch-rows", "97", "--home"])
            .arg(home.dir())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        let killed = child.try_wait().unwrap().is_none();
        if killed {
            child.kill().unwrap(); // SIGKILL
        }
        child.wait().unwrap();
        let (stored, marked) = stored_and_marked(&home).await;
        let unmarked: Vec<_> = stored.difference(&marked).collect();
        assert!(unmarked.is_empty(), "after a kill at {delay_ms} ms, stored trips on unmarked dates {unmarked:?}");
        if killed && !stored.is_empty() {
            checked += 1;
        }
    }
    assert!(checked > 0, "no kill came after a trip was stored; the test proves nothing");
}
