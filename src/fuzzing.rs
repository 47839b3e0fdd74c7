//! The entry points of the fuzz targets in `fuzz/` (cargo-fuzz): one function per parser that
//! takes bytes from outside, each driving the gateway's own code on them and dropping the result.
//! Not a stable API: it exists so that the targets need no crate internals made public.
//!
//! | function | what the bytes are | the code it drives |
//! |---|---|---|
//! | [`bearer`] | `Authorization` header values, one a line | `auth::bearer::extract` |
//! | [`jwt_parts`] | a compact JWS, or a claims object | `auth::jwt::peek`, the registered-claim checks |
//! | [`JwtVerify::verify`] | a bearer token | `auth::Verifier::verify` over a fixed key set |
//! | [`route_choice`] | a request head (request line, header lines) | path normalisation, the pipeline's route choice over `config/routes.toml` |
//! | [`config`] | a configuration or route file | `config::from_toml_str`, `config::check_routes_str` |
//! | [`set_cookie`] | `Set-Cookie` header values, one a line | the session jar's absorb, its `Cookie` header and its store text |
//! | [`introspection`] | an introspection answer body | the answer's reading and interpretation |
//! | [`handle_cookie`] | `Cookie` header values, one a line | the handle cookie's lookup and MAC check |
//! | [`jwks`] | a JWKS document | `auth::jwks::KeySet::parse`, key lookup, signature checks |
//! | [`discovery`] | an OpenID Connect discovery document | `auth::discovery::parse` |
//!
//! Besides "no panic, no hang", a few targets check round trips that must hold (a jar read back
//! from its store text is the same jar; a handle the gateway issued verifies).

use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use aws_lc_rs::hmac;
use http::header::{AUTHORIZATION, COOKIE, SET_COOKIE};
use http::{HeaderMap, HeaderName, HeaderValue, Request};
use jsonwebtoken::Algorithm;
use url::Url;

use crate::auth::jwks::{KeySet, Lookup};
use crate::auth::members::Members;
use crate::auth::{bearer, discovery as disco, introspect, jwt, Verifier};
use crate::config::{self as cfg, file};
use crate::policy::{self, RouteTable};
use crate::session::{grant::GrantKey, handle, jar::Jar, pool};

/// The issuer of [`jwt_parts`], [`JwtVerify`], [`introspection`] and [`discovery`].
pub const ISSUER: &str = "https://idp.example.com";
/// The audience those accept.
pub const AUDIENCE: &str = "api";
/// The clock of the claim checks: 2030-01-01, so that fixed seeds neither expire nor start.
const NOW: u64 = 1_893_456_000;
/// The route file of [`route_choice`] and the configuration that names it.
const ROUTES_CONFIG: &str = "config/gateway-with-routes-file.toml";

/// The non-empty lines of the input (a line per header value), with any `\r` before the `\n`.
fn lines(data: &[u8]) -> impl Iterator<Item = &[u8]> {
    data.split(|b| *b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .filter(|l| !l.is_empty())
}

/// A header map with one `name` value per line of `data` (lines that are no header value are
/// dropped, as hyper would never deliver them).
fn headers(name: HeaderName, data: &[u8]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for line in lines(data) {
        if let Ok(v) = HeaderValue::from_bytes(line) {
            h.append(name.clone(), v);
        }
    }
    h
}

/// `Authorization` header values, one a line → the bearer token.
pub fn bearer(data: &[u8]) {
    let h = headers(AUTHORIZATION, data);
    let _ = bearer::extract(&h);
}

/// A compact JWS → its header, `iss` and claims, then the registered-claim checks; input that
/// is a JSON object goes to the claim checks directly.
pub fn jwt_parts(data: &[u8]) {
    let audiences = [AUDIENCE.to_owned()];
    let check = |claims: &Members<'_>| {
        let _ = jwt::check_claims(claims, (ISSUER, &audiences, 30), NOW);
    };
    if let Ok(token) = std::str::from_utf8(data) {
        let mut payload = Vec::new();
        if let Ok(u) = jwt::peek(token, &mut payload) {
            check(&u.claims);
        }
    }
    if let Some(claims) = Members::parse(data) {
        check(&claims);
    }
}

/// The verify path of the gateway over a fixed key set: a verifier built from a configuration
/// with one JWT issuer ([`ISSUER`], audience [`AUDIENCE`]) whose key set is loaded from a JWKS
/// document instead of fetched. No token ever causes a fetch: the key set counts as just fetched
/// and the issuer's `jwks_min_refresh` is an hour.
pub struct JwtVerify {
    runtime: tokio::runtime::Runtime,
    verifier: Verifier,
}

impl JwtVerify {
    /// The configuration of the verifier (also the route that makes scopes and claims kept).
    const CONFIG: &'static str = r#"
[[issuer]]
id = "fuzz"
issuer = "https://idp.example.com"
jwks_uri = "https://idp.example.com/jwks"
audiences = ["api"]
algorithms = ["RS256", "PS256", "ES256", "ES384", "EdDSA"]
jwks_refresh = "24h"
jwks_min_refresh = "1h"

[[upstream]]
id = "erp"
url = "http://127.0.0.1:9"

[[route]]
id = "r"
prefix = "/"
upstream = "erp"
scopes = ["api"]
claims = { tenant = ["MyStore"] }
"#;

    /// A verifier whose issuer holds the keys of `jwks` (a JWKS document).
    pub fn new(jwks: &[u8]) -> Result<Self, String> {
        let config = cfg::from_toml_str(Self::CONFIG).map_err(|e| e.to_string())?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        let metrics = crate::metrics::Metrics::new().map_err(|e| e.to_string())?;
        let verifier = runtime.block_on(async {
            let verifier = Verifier::new(
                &config.issuers,
                (
                    config.server.token_cache_capacity,
                    crate::gateway::wiring::kept(&config),
                ),
                &crate::auth::fetch::IdpClient::new(),
                &metrics,
                None,
            );
            let keys = verifier.jwks("fuzz").ok_or("the issuer has no key set")?;
            keys.preload(jwks).await.map_err(|e| e.to_string())?;
            Ok::<_, String>(verifier)
        })?;
        Ok(JwtVerify { runtime, verifier })
    }

    /// The token of `Authorization: Bearer <data>`, verified as the gateway verifies it.
    pub fn verify(&self, data: &[u8]) {
        let mut value = b"Bearer ".to_vec();
        value.extend_from_slice(data);
        let h = headers(AUTHORIZATION, &value);
        let Ok(token) = bearer::extract(&h) else {
            return;
        };
        let _ = self.runtime.block_on(self.verifier.verify(token, None));
    }
}

/// The route table of [`route_choice`]: `config/routes.toml` through the configuration that
/// names it, loaded as the gateway loads it.
fn routes() -> &'static RouteTable {
    static ROUTES: OnceLock<Arc<RouteTable>> = OnceLock::new();
    ROUTES.get_or_init(|| {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(ROUTES_CONFIG);
        match cfg::load(&path) {
            Ok(c) => c.routes,
            Err(e) => panic!("the route choice target's configuration does not load: {e}"),
        }
    })
}

/// A request head (`METHOD target` then `Name: value` lines, as HTTP/1.1 sends it) → the
/// normalised path and the route the gateway would choose for it.
pub fn route_choice(data: &[u8]) {
    let mut it = lines(data);
    let Some((method, target)) = it.next().and_then(|l| {
        let at = l.iter().position(|b| *b == b' ')?;
        Some((&l[..at], &l[at + 1..]))
    }) else {
        return;
    };
    let mut req = Request::builder().method(method).uri(target);
    for line in it {
        if let Some(at) = line.iter().position(|b| *b == b':') {
            let value = line[at + 1..].trim_ascii();
            req = req.header(&line[..at], value);
        }
    }
    let Ok(req) = req.body(()) else {
        return;
    };
    let (head, ()) = req.into_parts();
    if let Ok(path) = policy::normalize(head.uri.path()) {
        let _ = crate::gateway::pipeline::choose(routes(), &head, &path);
    }
}

/// A configuration file, or a route file → validated as `tollgate check` validates them.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = cfg::from_toml_str(text);
    let _ = cfg::check_routes_str(text);
}

/// `Set-Cookie` header values of an upstream answer, one a line → a session jar absorbs them
/// (the default jar limits), then the jar's `Cookie` header and its store text, which must read
/// back as the same jar.
pub fn set_cookie(data: &[u8]) {
    let h = headers(SET_COOKIE, data);
    let lines = pool::set_cookies(&h);
    let mut jar = Jar::default();
    let max_cookies = file::default_max_jar_cookies() as usize;
    // The default `max_jar_bytes`, 8 KiB.
    let max_bytes = 8 * 1024;
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(NOW);
    jar.apply_all(
        lines.iter().map(String::as_str),
        now,
        max_cookies,
        max_bytes,
    );
    let _ = jar.cookie_header("/entity/Default/24.200.001/SalesOrder");
    let _ = jar.cookie_header("/");
    assert_eq!(
        Jar::from_text(&jar.to_text()),
        jar,
        "the jar's store text reads back as another jar"
    );
}

/// An introspection answer body → its members and the outcome for the issuer.
pub fn introspection(data: &[u8]) {
    if let Ok(members) = introspect::read_answer(data) {
        let _ = introspect::interpret(
            members,
            &Arc::from("fuzz"),
            ISSUER,
            &[AUDIENCE.to_owned()],
            30,
            NOW,
        );
    }
}

/// `Cookie` header values, one a line → the handle cookie's value and its check against a fixed
/// key and grant; and a handle the gateway issues for a nonce of the input must verify.
pub fn handle_cookie(data: &[u8]) {
    let key = hmac::Key::new(hmac::HMAC_SHA256, &[7u8; 32]);
    let grant = GrantKey("fuzz-grant".into());
    let h = headers(COOKIE, data);
    if let Some(value) = pool::cookie_value(&h, file::default_handle_cookie()) {
        let _ = handle::verify(&key, &grant, &value);
    }
    if let Some(nonce) = data.get(..16).and_then(|n| <[u8; 16]>::try_from(n).ok()) {
        let value = handle::encode(&key, &grant, &nonce);
        assert_eq!(handle::verify(&key, &grant, &value), Some(nonce));
    }
}

/// A JWKS document → its key set, each algorithm's lookup, and a signature check with every key.
pub fn jwks(data: &[u8]) {
    let Ok((set, _skipped)) = KeySet::parse(data, 1) else {
        return;
    };
    const ALGORITHMS: [Algorithm; 8] = [
        Algorithm::RS256,
        Algorithm::RS512,
        Algorithm::PS256,
        Algorithm::PS384,
        Algorithm::ES256,
        Algorithm::ES384,
        Algorithm::EdDSA,
        Algorithm::HS256,
    ];
    for alg in ALGORITHMS {
        if let Lookup::Found(key) = set.find(None, alg) {
            let _ = key.public.verify(alg, b"header.payload", &[0u8; 64]);
        }
        for key in &set.keys {
            let _ = set.find(key.kid.as_deref(), alg);
            let _ = key.public.verify(alg, b"header.payload", &[1u8; 256]);
        }
    }
}

/// An OpenID Connect discovery document → the metadata tollgate takes from it, with and
/// without `allow_http`.
pub fn discovery(data: &[u8]) {
    let Ok(url) = Url::parse("https://idp.example.com/.well-known/openid-configuration") else {
        return;
    };
    let _ = disco::parse(data, &url, ISSUER, false);
    let _ = disco::parse(data, &url, ISSUER, true);
}
