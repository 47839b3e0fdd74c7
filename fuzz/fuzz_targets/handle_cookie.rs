//! Fuzz target `handle_cookie`: see `tollgate::fuzzing::handle_cookie`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tollgate::fuzzing::handle_cookie(data));
