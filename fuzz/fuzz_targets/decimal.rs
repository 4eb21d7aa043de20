//! The decimal readers (plain and exponent forms) against Arrow's cast kernel, and the
//! canonical text's round trip.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        tripflow::fuzzing::decimal(text);
    }
});
