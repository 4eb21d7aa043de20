//! The fuzz corpus, kept in `tests/fuzz/<target>/` (seeds, the minimised corpus of the
//! campaigns in the README, and any input that once crashed a target), replayed through
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
