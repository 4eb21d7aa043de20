//! The datetime reader against Arrow's cast kernel, and the stored form's round trip.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        tripflow::fuzzing::datetime(text);
    }
});
