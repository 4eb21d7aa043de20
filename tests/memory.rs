//! Bounded memory under hostile input: a stream of records of the maximum size, 1 MiB
//! each, is ingested by the `tripflow` binary, and the kernel's own account of the
//! process's peak resident size (`wait4`'s `ru_maxrss`) shows what the byte bound of a
//! micro-batch (`--batch-bytes`) holds it to, against a run whose bound is out of reach.
//!
//! This is a test binary of its own, so it runs alone, after the others: Rust spawns a
//! child with `posix_spawn` (the child shares the parent's memory until it calls exec),
//! and Linux keeps the parent's resident high-water mark in the child's `ru_maxrss`
//! across the exec. Inside the big `it` binary the measure read 209-249 MiB, which was
//! the test process's own size, not tripflow's.

use std::process::Command;

use tripflow::config::Home;
use tripflow::model::event::MAX_RECORD_BYTES;

use tripflow::stream::{PutRecord, StreamSink};

/// Puts `records` on the embedded stream, with keys `k0`, `k1`, ….
async fn put_raw(stream: &tripflow::stream::embedded::EmbeddedStream, records: &[Vec<u8>]) {
    let puts: Vec<PutRecord> = records
        .iter()
        .enumerate()
        .map(|(i, data)| PutRecord { partition_key: format!("k{i}").into(), data: data.clone() })
        .collect();
    let refused = stream.put_records(&puts).await.unwrap();
    assert!(refused.is_empty(), "{refused:?}");
}

/// Runs `cmd` to its end; returns its exit code and its peak resident size in MiB.
#[expect(clippy::zombie_processes, reason = "the child is reaped by wait4, which also reports its rusage")]
fn exit_and_peak_rss_mib(cmd: &mut Command) -> (i32, u64) {
    let child = cmd.spawn().unwrap();
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: rusage is plain data, zero is a valid value of every field, and wait4 only
    // writes into the two pointers it is given, which outlive the call.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let waited = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(waited, pid, "wait4: {}", std::io::Error::last_os_error());
    assert!(libc::WIFEXITED(status), "tripflow ingest did not exit normally: status {status}");
    // Linux reports ru_maxrss in KiB.
    (libc::WEXITSTATUS(status), usage.ru_maxrss as u64 / 1024)
}

/// A record of the maximum size (`MAX_RECORD_BYTES` with its partition key, as Kinesis
/// counts it): a valid start event padded by a field the decoder ignores, or (`bad`)
/// one whose `trip_id` is far over its limit.
fn max_size_record(i: usize, bad: bool) -> Vec<u8> {
    let head = if bad {
        r#"{"event_type":"trip_start","pickup_location_id":1,"dropoff_location_id":2,"vendor_id":1,"pickup_datetime":"2024-05-25 10:00:00","trip_id":""#.to_owned()
    } else {
        format!(
            r#"{{"event_type":"trip_start","trip_id":"big-{i}","pickup_location_id":1,"dropoff_location_id":2,"vendor_id":1,"pickup_datetime":"2024-05-25 10:00:00","pad":""#
        )
    };
    let tail = r#""}"#;
    let mut record = head.into_bytes();
    // put_raw's keys are "k" and up to three digits.
    let size = MAX_RECORD_BYTES - 4;
    record.resize(size - tail.len(), b'x');
    record.extend_from_slice(tail.as_bytes());
    assert_eq!(record.len(), size);
    record
}

#[derive(serde::Deserialize)]
struct Report {
    read: u64,
    applied: u64,
    dead_lettered: u64,
    batches: u64,
}

fn ingest(home: &std::path::Path, consumer: &str, batch_bytes: &str) -> (Report, u64) {
    let report = home.join(format!("{consumer}.json"));
    let (code, peak) = exit_and_peak_rss_mib(
        Command::new(env!("CARGO_BIN_EXE_tripflow"))
            .args(["ingest", "--home", home.to_str().unwrap(), "--consumer", consumer, "--batch-bytes", batch_bytes])
            .arg("--report")
            .arg(&report)
            .stdout(std::process::Stdio::null()),
    );
    assert_eq!(code, 0, "tripflow ingest --batch-bytes {batch_bytes} failed");
    (serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap(), peak)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_of_maximum_size_records_is_ingested_in_bounded_memory() {
    const RECORDS: usize = 192;
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let stream = Home::new(home.clone()).unwrap().stream(Some(2)).unwrap();
    for chunk in (0..RECORDS).collect::<Vec<_>>().chunks(16) {
        let records: Vec<Vec<u8>> = chunk.iter().map(|&i| max_size_record(i, i % 2 == 1)).collect();
        put_raw(&stream, &records).await;
    }
    drop(stream);

    // 192 MiB of records under an 8 MiB bound...
    let (bounded, bounded_peak) = ingest(&home, "bounded", "8MiB");
    assert_eq!((bounded.read, bounded.applied, bounded.dead_lettered), (192, 96, 96));
    // A batch takes records until their bytes reach the bound: 9 of these at most.
    let per_batch = (8usize << 20).div_ceil(MAX_RECORD_BYTES - 4) as u64;
    assert!(bounded.batches >= RECORDS as u64 / per_batch, "{} batches of {per_batch} at most", bounded.batches);
    // ...and again, by a second consumer whose bound is never reached: one batch.
    let (unbounded, unbounded_peak) = ingest(&home, "unbounded", "1GiB");
    assert_eq!((unbounded.read, unbounded.batches), (192, 1));
    eprintln!("peak RSS: {bounded_peak} MiB under --batch-bytes 8MiB, {unbounded_peak} MiB under 1GiB");
    assert!(
        unbounded_peak > RECORDS as u64,
        "one batch of every record must hold them all at once ({unbounded_peak} MiB): the measure measures"
    );
    // The rest of the bounded peak is the process itself, the page caches and the
    // allocator's per-thread arenas (measured: 100 MiB, against 414-416 MiB without the
    // bound).
    assert!(
        bounded_peak < 200 && bounded_peak * 2 < unbounded_peak,
        "an 8 MiB bound held {bounded_peak} MiB at its peak, against {unbounded_peak} MiB without it"
    );
}
