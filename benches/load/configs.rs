//! The gateway configurations of the scenarios, as TOML: the JWT gateway (public and protected
//! route), with or without `[telemetry]`, the introspection gateway, and the gateway in front of
//! the fake legacy API without and with the session layer (memory or Redis store). Written out in full so that each scenario's
//! setup can be read in one place.

use std::path::PathBuf;

use crate::fixtures::{INTROSPECTION_CLIENT_ID, INTROSPECTION_SECRET};

/// `[store] kind = "redis"` for one scenario.
pub(crate) struct RedisStore {
    pub(crate) url: String,
    /// Its own per scenario, so that no scenario finds another's sessions.
    pub(crate) key_prefix: String,
    pub(crate) handle_key_file: PathBuf,
    /// `[store] linger` when set (`LOAD_STORE_LINGER`); else the default.
    pub(crate) linger: Option<String>,
}

/// The JWT gateway's configuration: one issuer (the in-process JWKS server) accepting
/// `algorithm` (a JOSE name such as `RS256`) only, one upstream, a public route and a protected
/// one; `token_cache_capacity` when given (`None`: the default).
pub(crate) fn jwt(
    issuer: &str,
    upstream: &str,
    algorithm: &str,
    cache_capacity: Option<u64>,
) -> String {
    let cache = cache_capacity
        .map(|n| format!("token_cache_capacity = {n}"))
        .unwrap_or_default();
    format!(
        r#"
[server]
realm = "tollgate"
{cache}

[log]
level = "error"

[[issuer]]
id = "bench"
issuer = "{issuer}"
jwks_uri = "{issuer}/jwks"
audiences = ["api"]
algorithms = ["{algorithm}"]

[[upstream]]
id = "backend"
url = "{upstream}"

[[route]]
id = "public"
prefix = "/public/"
upstream = "backend"
auth = "none"

[[route]]
id = "api"
prefix = "/api/"
methods = ["GET", "HEAD"]
upstream = "backend"
scopes = ["api"]
"#
    )
}

/// `config` with `[telemetry]` added: spans exported over OTLP/HTTP (protobuf) to
/// `{endpoint}/v1/traces`, new traces sampled at `sample_ratio`; the default `timeout`.
pub(crate) fn traced(config: &str, endpoint: &str, sample_ratio: f64) -> String {
    format!(
        r#"{config}
[telemetry]
otlp_endpoint = "{endpoint}"
service_name = "tollgate-bench"
sample_ratio = {sample_ratio:?}
"#
    )
}

/// The introspection gateway's configuration: one issuer validated by introspection only
/// (`client_secret_basic`), one upstream, the protected route; `cache_capacity` for
/// `[issuer.introspection]` (`None`: the default).
pub(crate) fn introspection(issuer: &str, upstream: &str, cache_capacity: Option<u64>) -> String {
    let cache = cache_capacity
        .map(|n| format!("cache_capacity = {n}"))
        .unwrap_or_default();
    format!(
        r#"
[server]
realm = "tollgate"

[log]
level = "error"

[[issuer]]
id = "opaque"
issuer = "{issuer}"
audiences = ["api"]
validation = "introspection"

[issuer.introspection]
endpoint = "{issuer}/introspect"
client_id = "{INTROSPECTION_CLIENT_ID}"
client_secret = "{INTROSPECTION_SECRET}"
auth_method = "client_secret_basic"
{cache}

[[upstream]]
id = "backend"
url = "{upstream}"

[[route]]
id = "api"
prefix = "/api/"
methods = ["GET", "HEAD"]
upstream = "backend"
scopes = ["api"]
"#
    )
}

/// The legacy gateways' configuration: the bench issuer, the fake legacy API as upstream, one
/// bearer route to it; with `sessions`, `[upstream.session]` in single mode (active logins with
/// the fake's default user, the default `grant_key`: the tokens' `grant_id` claim); with `store`,
/// `[store] kind = "redis"` (default `timeout` and `lease_ttl`) and the `handle_key_file` it needs.
pub(crate) fn legacy(
    issuer: &str,
    legacy: &str,
    sessions: bool,
    store: Option<&RedisStore>,
) -> String {
    let (store, key_file) = match store {
        Some(s) => (
            format!(
                "\n[store]\nkind = \"redis\"\nurl = \"{}\"\nkey_prefix = \"{}\"\n{}",
                s.url,
                s.key_prefix,
                s.linger
                    .as_ref()
                    .map(|l| format!("linger = \"{l}\"\n"))
                    .unwrap_or_default()
            ),
            format!("handle_key_file = \"{}\"\n", s.handle_key_file.display()),
        ),
        None => (String::new(), String::new()),
    };
    let session = if sessions {
        format!(
            r#"
[upstream.session]
mode = "single"
max_upstream_sessions = 200
idle_ttl = "300s"
# At least wrk's connections: the queued rows put them all on a few grants.
max_queue_per_session = 64
{key_file}
[upstream.session.credentials]
name = "admin"
password = "123"
tenant = "MyStore"
branch = "HQ"
"#
        )
    } else {
        String::new()
    };
    format!(
        r#"
[server]
realm = "tollgate"

[log]
level = "error"
{store}
[[issuer]]
id = "bench"
issuer = "{issuer}"
jwks_uri = "{issuer}/jwks"
audiences = ["api"]
algorithms = ["RS256"]

[[upstream]]
id = "legacy"
url = "{legacy}"
{session}
[[route]]
id = "legacy"
prefix = "/entity/Default/"
methods = ["GET", "HEAD"]
upstream = "legacy"
scopes = ["api"]
"#
    )
}
