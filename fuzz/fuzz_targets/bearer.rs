//! Fuzz target `bearer`: see `tollgate::fuzzing::bearer`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tollgate::fuzzing::bearer(data));
