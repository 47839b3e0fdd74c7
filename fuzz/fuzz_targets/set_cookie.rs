//! Fuzz target `set_cookie`: see `tollgate::fuzzing::set_cookie`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tollgate::fuzzing::set_cookie(data));
