//! Fuzz target `introspection`: see `tollgate::fuzzing::introspection`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tollgate::fuzzing::introspection(data));
