//! The fuzz corpus, kept in `tests/fuzz/<target>/` (the seeds, what the campaigns in
//! the README added, and any input that ever crashed a target), replayed through
//! the targets' bodies (`tripflow::fuzzing`) on the stable toolchain: an input that found
//! a bug stays a regression test.

use std::path::Path;

fn replay(target: &str, body: impl Fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz").join(target);
    let mut inputs = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| body(&data)));
        assert!(outcome.is_ok(), "{} fails {}", path.display(), target);
        inputs += 1;
    }
    assert!(inputs > 0, "no corpus in {}", dir.display());
}

fn text(f: fn(&str)) -> impl Fn(&[u8]) {
    move |data| {
        if let Ok(t) = std::str::from_utf8(data) {
            f(t);
        }
    }
}

#[test]
fn decode_validate_corpus() {
    replay("decode_validate", tripflow::fuzzing::decode_validate);
}

#[test]
fn datetime_corpus() {
    replay("datetime", text(tripflow::fuzzing::datetime));
}

#[test]
fn decimal_corpus() {
    replay("decimal", text(tripflow::fuzzing::decimal));
}

#[test]
fn cli_args_corpus() {
    replay("cli_args", tripflow::fuzzing::cli_args);
}

/// Until the campaigns run long (README, Fuzzing), a property on the stable toolchain:
/// argument lists drawn from every command and flag with edge values go through the
/// CLI target's body without a panic, and what the checks refuse exits with 2.
#[test]
fn argument_lists_from_every_flag_and_edge_value_never_panic() {
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};
    let commands = ["run", "produce", "ingest", "kpi", "schedule", "sql", "setup", "gen", "nope", ""];
    let flags = [
        "--stream",
        "--store",
        "--dead-letter",
        "--out",
        "--queries",
        "--home",
        "--start",
        "--end",
        "--ndjson",
        "--shards",
        "--date-index-shards",
        "--batch-rows",
        "--batch-bytes",
        "--batch-linger-ms",
        "--report",
        "--date",
        "--from",
        "--to",
        "--all",
        "--lookback",
        "--cron",
        "--initial-position",
        "--consumer",
        "--follow",
        "--parquet",
        "--snapshots",
        "--format",
        "--file",
        "--trips",
        "--seed",
        "--write-concurrency",
        "--scan-segments",
        "--checkpoint-table",
        "--kinesis-read-interval-ms",
        "-v",
        "--help",
        "--version",
        "--",
    ];
    let values = prop_oneof![
        Just(String::new()),
        Just("0".to_owned()),
        Just("-1".to_owned()),
        Just("4000000000".to_owned()),
        Just("18446744073709551616".to_owned()),
        Just("99999999999999999999GiB".to_owned()),
        Just("1e3".to_owned()),
        Just("kinesis://".to_owned()),
        Just("dynamodb://a b".to_owned()),
        Just("s3://".to_owned()),
        Just("s3://b/../..".to_owned()),
        Just("gs://x".to_owned()),
        Just("file://".to_owned()),
        Just("0000-01-01".to_owned()),
        Just("9999-12-31".to_owned()),
        Just("2024-02-30".to_owned()),
        Just("* * * * * * *".to_owned()),
        Just("60 24 32 13 8".to_owned()),
        Just("latest".to_owned()),
        Just("+262143-01-01T00:00:00Z".to_owned()),
        "\\PC{0,12}",
    ];
    let pair = (prop::sample::select(flags.to_vec()), values);
    let args = (prop::sample::select(commands.to_vec()), prop::collection::vec(pair, 0..6));
    let mut runner = TestRunner::new(Config { cases: 2048, failure_persistence: None, ..Config::default() });
    runner
        .run(&args, |(command, pairs)| {
            let mut argv = vec![command.to_owned()];
            for (flag, value) in pairs {
                argv.push(flag.to_owned());
                argv.push(value);
            }
            tripflow::fuzzing::cli_args(argv.join("\0").as_bytes());
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{e}"));
}
