//! Delivery (docs/design.md §4): a crash between merge and checkpoint replays harmlessly, and
//! killing the `tripflow ingest` process at any moment and running it again gives
//! byte-identical KPI files.

use std::process::Command;
use std::time::Duration;

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
