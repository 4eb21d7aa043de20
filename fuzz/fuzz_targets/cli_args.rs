//! Any argument list (NUL-separated) parses and is checked without a panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tripflow::fuzzing::cli_args(data));
