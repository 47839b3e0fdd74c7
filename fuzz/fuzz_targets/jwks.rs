//! Fuzz target `jwks`: see `tollgate::fuzzing::jwks`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tollgate::fuzzing::jwks(data));
