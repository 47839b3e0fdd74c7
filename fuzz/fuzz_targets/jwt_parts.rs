//! Fuzz target `jwt_parts`: see `tollgate::fuzzing::jwt_parts`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tollgate::fuzzing::jwt_parts(data));
