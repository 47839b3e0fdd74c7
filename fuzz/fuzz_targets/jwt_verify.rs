//! Fuzz target `jwt_verify`: the gateway's verify path over the fixed key set of
//! `fuzz/keys/jwks.json` (RSA, P-256 and Ed25519 keys; the seeds are tokens they signed).
#![no_main]

use std::sync::OnceLock;

use tollgate::fuzzing::JwtVerify;

static VERIFY: OnceLock<JwtVerify> = OnceLock::new();

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let verify = VERIFY.get_or_init(|| match JwtVerify::new(include_bytes!("../keys/jwks.json")) {
        Ok(v) => v,
        Err(e) => panic!("the fixed key set does not load: {e}"),
    });
    verify.verify(data);
});
