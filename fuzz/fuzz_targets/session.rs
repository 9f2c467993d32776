//! cargo-fuzz entry for `pgdecomp::fuzzing::session` (the body lives in the library).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| pgdecomp::fuzzing::session(data));
