//! Records (one per line) through decode + validate, with the oracles of
//! `tripflow::fuzzing::decode_validate`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tripflow::fuzzing::decode_validate(data));
