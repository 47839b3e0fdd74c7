//! Fuzz target `route_choice`: see `tollgate::fuzzing::route_choice`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tollgate::fuzzing::route_choice(data));
