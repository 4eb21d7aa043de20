//! The `tripflow` binary as a user meets it: the no-flag run, and one clear line with a
//! non-zero exit for each kind of bad input.

use std::path::Path;
use std::process::{Command, Output};

use tripflow::stream::embedded::EmbeddedStream;
use tripflow::stream::{Checkpoint, CheckpointStore, StartPosition, StreamSource};

use crate::common::{copy_dir, data_dir, queries_dir, read_tree};

fn tripflow(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tripflow")).current_dir(dir).args(args).output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Asserts a failure with one `error:` line that contains every piece of `expect`.
fn assert_one_line_error(out: &Output, code: i32, expect: &[&str]) {
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "stderr: {stderr}");
    assert!(!stderr.contains("panicked") && !stderr.contains("backtrace"), "{stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    for piece in expect {
        assert!(errors[0].contains(piece), "{piece:?} not in {stderr}");
    }
}

#[test]
fn run_with_no_flags_works_from_the_repository_layout() {
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(&data_dir(), &tmp.path().join("data"));
    copy_dir(&queries_dir(), &tmp.path().join("queries"));
    let out = tripflow(tmp.path(), &["run", "--report", "report.json"]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    assert!(stdout.contains("| trip_date") && stdout.contains("total_fare"), "{stdout}");
    assert!(stdout.contains("read 10000 = applied 10000 + duplicate_or_stale 0 + dead_lettered 0"), "{stdout}");
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(tmp.path().join("report.json")).unwrap()).unwrap();
    for key in ["read", "applied", "duplicate_or_stale", "dead_lettered", "elapsed_s"] {
        assert!(report.get(key).is_some(), "report lacks {key}: {report}");
    }
    // What the run cost: no DynamoDB capacity on the embedded table; the bytes it read
    // from the stream and wrote as KPI files.
    for key in ["write_capacity_units", "read_capacity_units", "kpi_read_capacity_units", "kpi_write_capacity_units"] {
        assert_eq!(report[key].as_f64(), Some(0.0), "{key}: {report}");
    }
    assert!(report["stream_bytes"].as_u64().unwrap() > 1_000_000, "{report}");
    let written: u64 = read_tree(&tmp.path().join("tripflow-out")).values().map(|b| b.len() as u64).sum();
    assert_eq!(report["kpi_bytes_written"].as_u64(), Some(written), "{report}");
    assert!(tmp.path().join("tripflow-out/kpi_output").is_dir());
    assert!(tmp.path().join("tripflow-data/stream/shard-000000000000").is_dir());

    // Running again replays nothing: the stream is read from its checkpoints, and the
    // second produce's copies are duplicates.
    let again = tripflow(tmp.path(), &["run"]);
    assert!(
        text(&again.stdout).contains("read 10000 = applied 0 + duplicate_or_stale 10000"),
        "{}",
        text(&again.stdout)
    );
}

#[test]
fn a_missing_input_file_is_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tripflow(tmp.path(), &["run", "--start", "nope.csv"]);
    assert_one_line_error(&out, 2, &["nope.csv", "does not exist", "--start"]);
}

#[test]
fn an_unreadable_csv_header_is_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("s.csv"), "id;pickup\n1;2\n").unwrap();
    std::fs::write(tmp.path().join("e.csv"), "x\n").unwrap();
    let out = tripflow(tmp.path(), &["produce", "--start", "s.csv", "--end", "e.csv"]);
    assert_one_line_error(&out, 2, &["s.csv", "unreadable CSV header", "trip_id"]);
}

#[test]
fn an_unwritable_output_is_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("taken"), "a file").unwrap();
    let out = tripflow(tmp.path(), &["kpi", "--out", "taken", "--queries"]);
    assert_eq!(out.status.code(), Some(2), "a flag without its value is a usage error");
    let q = queries_dir();
    let out = tripflow(tmp.path(), &["kpi", "--out", "taken/sub", "--queries", q.to_str().unwrap()]);
    assert_one_line_error(&out, 1, &["cannot create output directory", "--out"]);
}

/// Bytes of the stream's segment files under `home`.
fn stream_bytes(home: &Path) -> u64 {
    let Ok(shards) = std::fs::read_dir(home.join("stream")) else { return 0 };
    let files = shards.flatten().filter(|s| s.path().is_dir()).flat_map(|s| std::fs::read_dir(s.path()).unwrap());
    files
        .flatten()
        .filter(|f| f.path().extension().is_some_and(|e| e == "log"))
        .map(|f| f.metadata().unwrap().len())
        .sum()
}

#[test]
fn produce_sorts_small_files_in_memory_and_a_spill_with_nowhere_to_go_is_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    let generated = tripflow(tmp.path(), &["gen", "--trips", "100000", "--seed", "5", "--out", "input"]);
    assert!(generated.status.success(), "{}", text(&generated.stderr));
    let data = data_dir();
    let (start, end) = (data.join("trip_start.csv"), data.join("trip_end.csv"));
    let produce = |home: &str, start: &Path, end: &Path| {
        Command::new(env!("CARGO_BIN_EXE_tripflow"))
            .current_dir(tmp.path())
            .env("TMPDIR", tmp.path().join("no-such-folder"))
            .args(["produce", "-q", "--home", home, "--start"])
            .arg(start)
            .arg("--end")
            .arg(end)
            .output()
            .unwrap()
    };
    // The sample's 10,000 rows fit in one run of the sort: no temporary file is needed.
    let small = produce("small", &start, &end);
    assert!(small.status.success(), "{}", text(&small.stderr));
    assert!(stream_bytes(&tmp.path().join("small")) > 0);
    // 200,000 rows take several runs, which cannot be spilled: one line, nothing sent.
    let input = tmp.path().join("input");
    let big = produce("big", &input.join("trip_start.csv"), &input.join("trip_end.csv"));
    assert_one_line_error(&big, 1, &["cannot sort rows through a temporary file", "no-such-folder", "set TMPDIR"]);
    assert_eq!(stream_bytes(&tmp.path().join("big")), 0, "no record was put");
}

#[test]
fn bad_flags_are_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    assert_one_line_error(&tripflow(tmp.path(), &["run", "--batch-rows", "0"]), 2, &["--batch-rows"]);
    assert_one_line_error(&tripflow(tmp.path(), &["kpi", "--date", "25-05-2024"]), 2, &["YYYY-MM-DD"]);
    assert_one_line_error(&tripflow(tmp.path(), &["ingest", "--initial-position", "soon"]), 2, &["trim-horizon"]);
    assert_one_line_error(&tripflow(tmp.path(), &["frobnicate"]), 2, &["frobnicate"]);
    assert_one_line_error(&tripflow(tmp.path(), &["sql", "--formt", "csv"]), 2, &["--formt"]);
    assert_one_line_error(&tripflow(tmp.path(), &["sql", "--file", "nope.sql"]), 2, &["nope.sql", "--file"]);
    assert_one_line_error(&tripflow(tmp.path(), &["ingest", "--batch-bytes", "0"]), 2, &["--batch-bytes", "64MiB"]);
    assert_one_line_error(&tripflow(tmp.path(), &["kpi", "--lookback", "4000000000"]), 2, &["--lookback"]);
    assert_one_line_error(&tripflow(tmp.path(), &["schedule", "--cron", "at noon"]), 2, &["cron"]);
    // Checked before any work: no home is made for a run whose --stream is wrong.
    assert_one_line_error(&tripflow(tmp.path(), &["run", "--stream", "gs://bolt"]), 2, &["--stream", "gs://bolt"]);
    assert!(!tmp.path().join("tripflow-data").exists() && !tmp.path().join("tripflow-out").exists());
}

#[test]
fn a_broken_query_stops_run_before_produce_and_ingest() {
    let tmp = tempfile::tempdir().unwrap();
    crate::common::copy_dir(&queries_dir(), &tmp.path().join("q"));
    std::fs::write(tmp.path().join("q/broken.sql"), "SELECT trip_date,\nFROM trips GROUP BY AS x\n").unwrap();
    let data = crate::common::data_dir();
    let (start, end) = (data.join("trip_start.csv"), data.join("trip_end.csv"));
    let out = tripflow(
        tmp.path(),
        &["run", "--home", "h", "--queries", "q", "--start", start.to_str().unwrap(), "--end", end.to_str().unwrap()],
    );
    assert_one_line_error(&out, 1, &["query", "broken.sql"]);
    assert!(!tmp.path().join("h/stream").exists(), "nothing was produced");
    // The trip table was opened (its ledger names the columns the queries may read),
    // and holds nothing.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let store = tripflow::store::lsm::LsmStore::open(&tmp.path().join("h")).unwrap();
    let rows: usize = rt
        .block_on(tripflow::store::TripStore::export(&store, None, &tripflow::store::Projection::all()))
        .unwrap()
        .iter()
        .map(|b| b.num_rows())
        .sum();
    assert_eq!(rows, 0, "nothing was ingested");
}

#[test]
fn a_query_file_runs_as_it_stands_comments_and_all() {
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(&data_dir(), &tmp.path().join("data"));
    copy_dir(&queries_dir(), &tmp.path().join("queries"));
    assert!(tripflow(tmp.path(), &["run", "--parquet"]).status.success());
    let daily = std::fs::read_to_string(tmp.path().join("queries/daily_kpis.sql")).unwrap();
    assert!(daily.starts_with("--"), "the file begins with a comment");
    for args in
        [&["sql", "--file", "queries/daily_kpis.sql", "--format", "csv"][..], &["sql", "--format", "csv", "--", &daily]]
    {
        let out = tripflow(tmp.path(), args);
        let stdout = text(&out.stdout);
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert!(stdout.starts_with("trip_date,total_trips,"), "{stdout}");
        assert_eq!(stdout.lines().count(), 5, "a header and 4 dates: {stdout}");
    }
}

#[test]
fn produce_reports_bad_rows_and_oversized_records_and_sends_the_rest() {
    let tmp = tempfile::tempdir().unwrap();
    let big = format!(r#"{{"trip_id":"big","pad":"{}"}}"#, "x".repeat(1024 * 1024));
    let good = crate::common::end_event("t1", "2024-05-25 14:05:00", "3.5");
    std::fs::write(tmp.path().join("in.ndjson"), format!("{good}\n{big}\nnot json\n")).unwrap();
    let out = tripflow(tmp.path(), &["produce", "--ndjson", "in.ndjson"]);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("in.ndjson:2: record of") && stderr.contains("over the 1 MiB limit; not sent"), "{stderr}");
    assert!(text(&out.stdout).contains("sent 2 records; 1 not sent"));

    std::fs::write(
        tmp.path().join("s.csv"),
        "trip_id,pickup_location_id,dropoff_location_id,vendor_id,pickup_datetime,estimated_dropoff_datetime,estimated_fare_amount\n\
         a,1,2,1,2024-05-25 13:00:00,,\nb,1,2\n",
    )
    .unwrap();
    std::fs::write(tmp.path().join("e.csv"), "dropoff_datetime,fare_amount,trip_id\n2024-05-25 14:00:00,9.5,a\n")
        .unwrap();
    let out = tripflow(tmp.path(), &["produce", "--start", "s.csv", "--end", "e.csv"]);
    assert!(out.status.success());
    assert!(text(&out.stderr).contains("s.csv:3: expected 7 fields, found 3; not sent"), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("sent 2 records; 1 not sent"), "{}", text(&out.stdout));

    // 2 records from the NDJSON file, 2 from the CSV files. The "not json" line went through and is dead-lettered at ingest; the rest merge.
    let out = tripflow(tmp.path(), &["ingest"]);
    assert!(
        text(&out.stdout).contains("read 4 = applied 3 + duplicate_or_stale 0 + dead_lettered 1"),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn ingest_follows_a_producer_in_another_process_and_stops_cleanly_on_sigterm() {
    let tmp = tempfile::tempdir().unwrap();
    let follower = Command::new(env!("CARGO_BIN_EXE_tripflow"))
        .current_dir(tmp.path())
        .args(["ingest", "--follow", "--batch-rows", "500", "--batch-linger-ms", "20"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let start = data_dir().join("trip_start.csv");
    let end = data_dir().join("trip_end.csv");
    let produced =
        tripflow(tmp.path(), &["produce", "--start", start.to_str().unwrap(), "--end", end.to_str().unwrap()]);
    assert!(produced.status.success(), "{}", text(&produced.stderr));

    // Wait until the follower has checkpointed the last record of every shard (so every
    // trip is merged), then ask it to stop. The trip table is the follower's alone while
    // it runs; the stream file is shared.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let stream = EmbeddedStream::open(&tmp.path().join("tripflow-data"), None).unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let shards_behind = || {
        runtime.block_on(async {
            let mut behind = 0;
            for shard in stream.shards().await.unwrap() {
                let Some(Checkpoint::At(done)) =
                    stream.get(tripflow::ingest::DEFAULT_CONSUMER, &shard.id).await.unwrap()
                else {
                    behind += 1;
                    continue;
                };
                let it = stream.iterator(&shard.id, &StartPosition::AfterSequenceNumber(done)).await.unwrap();
                behind += usize::from(stream.records_behind(&it).await.unwrap() != Some(0));
            }
            behind
        })
    };
    loop {
        let behind = shards_behind();
        if behind == 0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the follower is {behind} shards behind after 60 s");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // A second process gets one line saying whose the table is, and changes nothing.
    let beside = tripflow(tmp.path(), &["kpi", "--all"]);
    assert_one_line_error(&beside, 1, &["store:", "open in another tripflow process"]);
    let killed = Command::new("kill").args(["-TERM", &follower.id().to_string()]).status().unwrap();
    assert!(killed.success());
    let out = follower.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let trips = std::fs::read_to_string(&start).unwrap().lines().count() - 1;
    let expected = format!("read {n} = applied {n} + duplicate_or_stale 0 + dead_lettered 0", n = 2 * trips);
    assert!(text(&out.stdout).contains(&expected), "{}", text(&out.stdout));

    // The table is free again, and holds every trip, completed.
    let kpi = tripflow(tmp.path(), &["kpi", "--all"]);
    assert!(kpi.status.success(), "{}", text(&kpi.stderr));
    let reported: usize =
        text(&kpi.stdout).lines().filter_map(|l| l.split('|').nth(2)?.trim().parse::<usize>().ok()).sum();
    assert_eq!(reported, trips, "{}", text(&kpi.stdout));
}

/// Runs `tripflow args` inside a pseudo-terminal (util-linux `script`), so that stdout
/// and stderr are a terminal, and returns everything the terminal received.
fn on_a_terminal(dir: &Path, args: &[&str]) -> String {
    let line =
        std::iter::once(env!("CARGO_BIN_EXE_tripflow")).chain(args.iter().copied()).collect::<Vec<_>>().join(" ");
    let out = Command::new("script")
        .args(["--quiet", "--return", "--command", &line, "/dev/null"])
        .current_dir(dir)
        .env("TERM", "xterm-256color")
        .output()
        .expect("util-linux `script` runs the command in a pseudo-terminal");
    let seen = text(&out.stdout);
    assert!(out.status.success(), "{seen}{}", text(&out.stderr));
    seen
}

#[test]
fn a_run_on_a_terminal_shows_progress_and_a_piped_or_quiet_run_does_not() {
    let tmp = tempfile::tempdir().unwrap();
    let generated = tripflow(tmp.path(), &["gen", "--trips", "20000", "--seed", "3", "--out", "input"]);
    assert!(generated.status.success(), "{}", text(&generated.stderr));
    let run = |home: &str| {
        ["run", "--home", home, "--out", "out", "--start", "input/trip_start.csv", "--end", "input/trip_end.csv"]
            .map(str::to_owned)
    };

    let seen = on_a_terminal(tmp.path(), &run("a").iter().map(String::as_str).collect::<Vec<_>>());
    // The bars: cursor movements and line clears, the produce bar and the ingest line.
    assert!(seen.contains("\u{1b}["), "no control codes on a terminal: {seen:?}");
    assert!(seen.contains("produce") && seen.contains("/40,000 events"), "{seen:?}");
    assert!(seen.contains("ingest ") && seen.contains(" read: "), "{seen:?}");
    // Cleared before the results, which are printed as without bars.
    assert!(seen.contains("read 40000 = applied 40000 + duplicate_or_stale 0 + dead_lettered 0"), "{seen:?}");

    let piped = tripflow(tmp.path(), &run("b").iter().map(String::as_str).collect::<Vec<_>>());
    assert!(piped.status.success(), "{}", text(&piped.stderr));
    for (name, bytes) in [("stdout", &piped.stdout), ("stderr", &piped.stderr)] {
        let t = text(bytes);
        assert!(!t.contains('\u{1b}') && !t.contains('\r'), "control codes on a piped {name}: {t:?}");
    }
    assert!(text(&piped.stderr).is_empty(), "a piped run logs nothing at the default level");

    let mut quiet = run("c").to_vec();
    quiet.push("--quiet".into());
    let seen = on_a_terminal(tmp.path(), &quiet.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(!seen.contains('\u{1b}'), "--quiet drew bars: {seen:?}");
    assert!(seen.contains("read 40000 = applied 40000"), "{seen:?}");
}

/// `GET /metrics` from a Prometheus endpoint, as text (HTTP/1.0: the body is plain).
fn scrape(port: u16) -> Option<String> {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    conn.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut response = String::new();
    conn.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    let ok = head.split(' ').nth(1) == Some("200");
    ok.then(|| body.to_owned())
}

/// The value of the sample `name` (with its labels, if any) in Prometheus text.
fn sample(metrics: &str, name: &str) -> Option<f64> {
    metrics.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[test]
fn ingest_serves_live_metrics_that_equal_its_run_report() {
    let tmp = tempfile::tempdir().unwrap();
    let (start, end) = (data_dir().join("trip_start.csv"), data_dir().join("trip_end.csv"));
    let (start, end) = (start.to_str().unwrap(), end.to_str().unwrap());
    // Every event twice, and three bad records: all three outcomes are counted.
    for _ in 0..2 {
        let produced = tripflow(tmp.path(), &["produce", "--start", start, "--end", end]);
        assert!(produced.status.success(), "{}", text(&produced.stderr));
    }
    let bad = "{\"event_type\":\"trip_start\"}\nnot json\n{\"event_type\":\"trip_end\",\"trip_id\":\"x\"}\n";
    std::fs::write(tmp.path().join("bad.ndjson"), bad).unwrap();
    assert!(tripflow(tmp.path(), &["produce", "--ndjson", "bad.ndjson"]).status.success());
    let expected = 2 * 10_000 + 3;

    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr = format!("127.0.0.1:{port}");
    let follower = Command::new(env!("CARGO_BIN_EXE_tripflow"))
        .current_dir(tmp.path())
        .args(["ingest", "--follow", "--batch-rows", "1000", "--report", "report.json", "--metrics-addr", &addr])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Scraped while ingest runs, until it has read everything.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut scrapes = 0;
    let last = loop {
        if let Some(m) = scrape(port) {
            scrapes += 1;
            if sample(&m, "tripflow_ingest_records_read_total") == Some(f64::from(expected))
                && sample(&m, "tripflow_ingest_last_checkpoint_timestamp_seconds").is_some()
            {
                break m;
            }
        }
        assert!(std::time::Instant::now() < deadline, "ingest did not report {expected} records read in 60 s");
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(scrapes >= 1);
    // Stopped once caught up: the checkpoint after the last batch is written by then.
    std::thread::sleep(std::time::Duration::from_millis(300));
    let last = scrape(port).unwrap_or(last);
    assert!(Command::new("kill").args(["-TERM", &follower.id().to_string()]).status().unwrap().success());
    let out = follower.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));

    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(tmp.path().join("report.json")).unwrap()).unwrap();
    assert_eq!(report["read"], expected);
    assert_eq!((report["applied"].as_u64(), report["dead_lettered"].as_u64()), (Some(10_000), Some(3)));
    for (metric, field) in [
        ("tripflow_ingest_records_read_total", "read"),
        ("tripflow_ingest_records_applied_total", "applied"),
        ("tripflow_ingest_records_duplicate_or_stale_total", "duplicate_or_stale"),
        ("tripflow_ingest_records_dead_lettered_total", "dead_lettered"),
        ("tripflow_ingest_store_writes_total", "store_writes"),
        ("tripflow_ingest_batches_total", "batches"),
        ("tripflow_ingest_stream_bytes_total", "stream_bytes"),
        // The embedded table consumes no DynamoDB capacity, and says so.
        ("tripflow_dynamodb_write_capacity_units{computed=\"false\"}", "write_capacity_units"),
        ("tripflow_dynamodb_read_capacity_units{computed=\"false\"}", "read_capacity_units"),
    ] {
        assert_eq!(sample(&last, metric), report[field].as_f64(), "{metric} against the report's {field}:\n{last}");
    }
    assert!(report["stream_bytes"].as_u64().unwrap() > 100 * expected as u64, "{report}");
    // One observation per batch and phase; every shard caught up; the build.
    let batches = report["batches"].as_f64().unwrap();
    for phase in ["decode_validate", "merge"] {
        let count = format!("tripflow_ingest_batch_seconds_count{{phase=\"{phase}\"}}");
        assert_eq!(sample(&last, &count), Some(batches), "{last}");
        assert!(last.contains(&format!("tripflow_ingest_batch_seconds_bucket{{phase=\"{phase}\",le=\"0.1\"}}")));
    }
    for shard in 0..4 {
        for gauge in ["tripflow_ingest_shard_records_behind", "tripflow_ingest_shard_millis_behind_latest"] {
            let name = format!("{gauge}{{shard=\"shardId-{shard:012}\"}}");
            assert_eq!(sample(&last, &name), Some(0.0), "{name}:\n{last}");
        }
    }
    let checkpoint = sample(&last, "tripflow_ingest_last_checkpoint_timestamp_seconds").unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    assert!((now - 120.0..=now).contains(&checkpoint), "{checkpoint}");
    let build = format!("tripflow_build_info{{version=\"{}\"}}", env!("CARGO_PKG_VERSION"));
    assert_eq!(sample(&last, &build), Some(1.0), "{last}");
}

#[test]
fn a_metrics_address_in_use_is_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = tripflow(tmp.path(), &["ingest", "--metrics-addr", &addr]);
    assert_one_line_error(&out, 2, &["--metrics-addr", &addr, "choose a free address"]);
    let out = tripflow(tmp.path(), &["ingest", "--metrics-addr", "localhost"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("--metrics-addr"), "{}", text(&out.stderr));
}

#[test]
fn logs_are_coloured_on_a_terminal_and_plain_in_a_file() {
    let tmp = tempfile::tempdir().unwrap();
    let generated = tripflow(tmp.path(), &["gen", "--trips", "200", "--seed", "3", "--out", "input"]);
    assert!(generated.status.success(), "{}", text(&generated.stderr));
    let run = |home: &'static str| {
        ["run", "-v", "--home", home, "--out", "out", "--start", "input/trip_start.csv", "--end", "input/trip_end.csv"]
    };

    // `-v` turns the bars off: what colours a terminal gets come from the log lines.
    let seen = on_a_terminal(tmp.path(), &run("a"));
    assert!(seen.contains("INFO") && seen.contains("\u{1b}["), "no coloured log lines on a terminal: {seen:?}");

    // `tripflow run -v 2>log`.
    let log = tmp.path().join("log");
    let out = Command::new(env!("CARGO_BIN_EXE_tripflow"))
        .current_dir(tmp.path())
        .args(run("b"))
        .stderr(std::fs::File::create(&log).unwrap())
        .output()
        .unwrap();
    assert!(out.status.success());
    let written = std::fs::read_to_string(&log).unwrap();
    assert!(written.contains(" INFO "), "no log lines in the file: {written:?}");
    assert!(!written.contains('\u{1b}'), "control codes in a log file: {written:?}");
}
