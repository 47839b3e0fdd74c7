//! Fuzz target `discovery`: see `tollgate::fuzzing::discovery`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tollgate::fuzzing::discovery(data));
