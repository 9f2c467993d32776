//! cargo-fuzz entry for `pgdecomp::fuzzing::config` (the body lives in the library).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| pgdecomp::fuzzing::config(data));
