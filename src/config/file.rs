//! The configuration as written: raw serde structs that mirror the TOML keys one to one.
//!
//! Every struct denies unknown keys, so a typo is an error that names the key instead of a silently
//! ignored setting. Values that need checking (durations, URLs, addresses, algorithms) stay strings
//! here; the section modules of `config` turn them into typed values and name the key path when one
//! is wrong.
//!
//! Every default is declared here, once: the `default_*` function after each struct, named after
//! its key, and the key's doc says so. The keys themselves stay `Option`s, so that what was
//! written is kept apart from what was left out: several keys are errors in some modes even when
//! set to their default value (`[store] timeout` with `kind = "memory"`), and a section written as
//! something other than a table fails exactly as it always did. Validation applies the default
//! where the key was left out.
//!
//! Durations are humantime strings (`"30s"`, `"10m"`, `"1h 30m"`); byte sizes are a number with an
//! optional unit (`"4096"`, `"64KiB"`, `"10MiB"`).

use std::collections::BTreeMap;

use crate::secret::Secret;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The main configuration file.
#[derive(Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default)]
    pub server: ServerSection,
    #[serde(default)]
    pub log: LogSection,
    #[serde(default)]
    pub issuer: Vec<IssuerSection>,
    #[serde(default)]
    pub upstream: Vec<UpstreamSection>,
    #[serde(default)]
    pub route: Vec<RouteSection>,
    #[serde(default)]
    pub store: StoreSection,
    /// RFC 9728 protected resource metadata; absent: no document, challenges without
    /// `resource_metadata`.
    pub metadata: Option<MetadataSection>,
    /// OpenTelemetry traces; absent (and no `OTEL_EXPORTER_OTLP_*ENDPOINT` in the environment):
    /// no span is made and nothing is exported.
    #[serde(default)]
    pub telemetry: TelemetrySection,
}

/// The separate route file named by `server.routes_file`: only `[[route]]` tables.
#[derive(Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RoutesFile {
    #[serde(default)]
    pub route: Vec<RouteSection>,
}

// === [store] ===

/// `[store]`: where the session table (and shared introspection results) live.
#[derive(Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StoreSection {
    /// `memory` (one replica) or `redis`. By default [`default_store_kind`].
    pub kind: Option<String>,
    /// `redis://host:port/db`, `rediss://…` (TLS), or through Sentinel
    /// `redis+sentinel://[[user]:password@]host:port[,host:port…]/master_name[/db]`.
    pub url: Option<Secret>,
    /// Instead of a Sentinel URL: the sentinels (`host:port`) and the primary's name.
    pub sentinels: Option<Vec<String>>,
    pub master_name: Option<String>,
    /// The prefix of every Redis key. By default [`default_key_prefix`].
    pub key_prefix: Option<String>,
    /// Timeout of one store operation (humantime). By default [`default_store_timeout`].
    pub timeout: Option<String>,
    /// How long a crashed replica's leases and login locks live (humantime). By default
    /// [`default_lease_ttl`].
    pub lease_ttl: Option<String>,
    /// Share positive introspection results between replicas. By default
    /// [`default_share_introspection`].
    pub share_introspection: Option<bool>,
    /// How long a replica keeps a session's in-flight place after its request ended, for its
    /// own next request on that session (no store round trip); a request queued behind it, on
    /// any replica, gets it back at once. `0s` gives every place back at once (humantime). By
    /// default [`default_linger`].
    pub linger: Option<String>,
}

/// `memory`.
pub fn default_store_kind() -> &'static str {
    "memory"
}

/// `tollgate:`.
pub fn default_key_prefix() -> &'static str {
    "tollgate:"
}

/// `500ms`.
pub fn default_store_timeout() -> &'static str {
    "500ms"
}

/// `30s`.
pub fn default_lease_ttl() -> &'static str {
    "30s"
}

/// True.
pub fn default_share_introspection() -> bool {
    true
}

/// `250ms`.
pub fn default_linger() -> &'static str {
    "250ms"
}

// === [metadata] ===

/// `[metadata]`: the protected resource metadata document (RFC 9728).
#[derive(Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MetadataSection {
    /// The resource identifier: an absolute https URL (plain http for loopback hosts); required.
    pub resource: Option<String>,
    /// A page for people about the resource: `resource_documentation`.
    pub documentation: Option<String>,
    /// The resource's name for people: `resource_name`.
    pub resource_name: Option<String>,
}

// === [server] ===

#[derive(Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ServerSection {
    /// Proxy listener, `IP:port`. By default [`default_listen`].
    pub listen: Option<String>,
    /// Admin listener (`/metrics`, `/healthz`, `/readyz`), `IP:port`. By default
    /// [`default_admin_listen`].
    pub admin_listen: Option<String>,
    /// Threads serving the proxy listener (a count, 1 to 1024). By default
    /// `TOKIO_WORKER_THREADS` when that is set, else one per CPU the process may use.
    pub threads: Option<u32>,
    /// How several threads share the proxy listener's connections: `"per-core"` (each thread
    /// a runtime and listening socket of its own) or `"work-stealing"` (one runtime, idle
    /// threads take work from busy ones). By default [`default_scheduler`].
    pub scheduler: Option<String>,
    /// The `realm` of every `WWW-Authenticate` challenge. By default [`default_realm`].
    pub realm: Option<String>,
    /// A file of `[[route]]` tables, relative to the configuration file.
    pub routes_file: Option<String>,
    /// Capacity (entries) of the verified-token cache. By default
    /// [`default_token_cache_capacity`].
    pub token_cache_capacity: Option<u64>,
    /// Keep client-sent `X-Forwarded-*` headers and append to them (only behind a trusted proxy).
    /// By default false: the gateway replaces them.
    pub trust_forwarded_headers: Option<bool>,
    /// How long in-flight requests may take to finish on shutdown (humantime). By default
    /// [`default_shutdown_grace`].
    pub shutdown_grace: Option<String>,
    /// Serve TLS on the proxy listener.
    pub tls: Option<TlsSection>,
    /// Accept HTTP/2 without TLS (h2c, prior knowledge). By default false.
    pub http2_cleartext: Option<bool>,
    /// Largest request head (request line and headers; a byte size); larger heads get 431. By
    /// default [`default_max_header_bytes`].
    pub max_header_bytes: Option<String>,
    /// Time a client has to send its request head (humantime). By default
    /// [`default_header_read_timeout`].
    pub header_read_timeout: Option<String>,
    /// Keep-alive connections idle this long are closed (humantime). By default
    /// [`default_idle_timeout`].
    pub idle_timeout: Option<String>,
    /// Most client connections open at once on the proxy listener (a count). By default
    /// [`default_max_connections`].
    pub max_connections: Option<u32>,
    /// Largest request body (a byte size) on routes that set none. By default
    /// [`default_max_body`].
    pub max_body: Option<String>,
    /// Watch the configuration (and route) file and reload when it changes. By default
    /// [`default_watch_config`].
    pub watch_config: Option<bool>,
    /// The longest gap between two reads of a request body (humantime). By default
    /// [`default_body_read_timeout`].
    pub body_read_timeout: Option<String>,
    /// The longest a client may leave the gateway unable to write to it (humantime). By default
    /// [`default_send_timeout`].
    pub send_timeout: Option<String>,
    /// A file holding the admin port's bearer token (a trailing newline is trimmed). Unset, the
    /// admin port asks for no token.
    pub admin_token_file: Option<String>,
    /// `/metrics` asks for the admin token too. By default `false`.
    pub admin_metrics_auth: Option<bool>,
    /// HTTP/2: streams one connection may have open at once (`SETTINGS_MAX_CONCURRENT_STREAMS`);
    /// more are refused. By default [`default_http2_max_concurrent_streams`].
    pub http2_max_concurrent_streams: Option<u32>,
    /// HTTP/2: streams the client may reset before the gateway has taken them up, before the
    /// connection is closed (rapid reset). By default
    /// [`default_http2_max_pending_accept_reset_streams`].
    pub http2_max_pending_accept_reset_streams: Option<u32>,
    /// HTTP/2: streams the gateway may reset for the client's protocol errors, before the
    /// connection is closed. By default [`default_http2_max_local_error_reset_streams`].
    pub http2_max_local_error_reset_streams: Option<u32>,
    /// HTTP/2: how often the gateway pings a connection (humantime). By default
    /// [`default_http2_keep_alive_interval`].
    pub http2_keep_alive_interval: Option<String>,
    /// HTTP/2: how long a ping may go unanswered before the connection is closed (humantime).
    /// By default [`default_http2_keep_alive_timeout`].
    pub http2_keep_alive_timeout: Option<String>,
}

/// `30s`.
pub fn default_body_read_timeout() -> &'static str {
    "30s"
}

/// `60s`.
pub fn default_send_timeout() -> &'static str {
    "60s"
}

/// `127.0.0.1:8080`.
pub fn default_listen() -> &'static str {
    "127.0.0.1:8080"
}

/// `127.0.0.1:9090`.
pub fn default_admin_listen() -> &'static str {
    "127.0.0.1:9090"
}

/// `per-core`.
pub fn default_scheduler() -> &'static str {
    "per-core"
}

/// `tollgate`.
pub fn default_realm() -> &'static str {
    "tollgate"
}

/// 100000 entries.
pub fn default_token_cache_capacity() -> u64 {
    100_000
}

/// `30s`.
pub fn default_shutdown_grace() -> &'static str {
    "30s"
}

/// `64KiB`.
pub fn default_max_header_bytes() -> &'static str {
    "64KiB"
}

/// `30s`.
pub fn default_header_read_timeout() -> &'static str {
    "30s"
}

/// `60s`.
pub fn default_idle_timeout() -> &'static str {
    "60s"
}

/// 10000 connections.
pub fn default_max_connections() -> u32 {
    10_000
}

/// `10MiB`.
pub fn default_max_body() -> &'static str {
    "10MiB"
}

/// True.
pub fn default_watch_config() -> bool {
    true
}

/// 100 streams.
pub fn default_http2_max_concurrent_streams() -> u32 {
    100
}

/// 20 streams (h2's own default, stated here so that it cannot change under us).
pub fn default_http2_max_pending_accept_reset_streams() -> u32 {
    20
}

/// 256 streams.
pub fn default_http2_max_local_error_reset_streams() -> u32 {
    256
}

/// `30s`.
pub fn default_http2_keep_alive_interval() -> &'static str {
    "30s"
}

/// `20s`.
pub fn default_http2_keep_alive_timeout() -> &'static str {
    "20s"
}

/// `[server.tls]`
#[derive(Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    /// PEM certificate chain.
    pub cert_file: Option<String>,
    /// PEM private key (RSA, ECDSA or Ed25519; PKCS#8, PKCS#1 or SEC1).
    pub key_file: Option<String>,
    /// PEM CA certificates: when set, clients must present a certificate signed by one (mTLS).
    pub client_ca_file: Option<String>,
}

// === [log] ===

#[derive(Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LogSection {
    /// `error`, `warn`, `info`, `debug` or `trace` (or a filter directive); `RUST_LOG` overrides
    /// it. By default [`default_log_level`].
    pub level: Option<String>,
    /// `text` or `json`. By default [`default_log_format`].
    pub format: Option<String>,
    /// A file for the access log (one line per request, in `format`), reopened on SIGUSR1 for
    /// log rotation. Unset, access lines go to standard error with the rest.
    pub access_file: Option<String>,
    /// How the access log shows the token's subject: `hashed` (a keyed digest, stable for the
    /// life of the process), `plain` (the raw `sub`) or `none`. By default
    /// [`default_log_subject`].
    pub subject: Option<String>,
    /// With `subject = "hashed"`: the key of the subject digests, 64 hex characters (share it
    /// across the fleet so that one subject has one tag everywhere). Unset: a random key per
    /// process.
    pub subject_key_file: Option<String>,
}

/// `hashed`: the raw subject is personal data, kept out of logs unless asked for.
pub fn default_log_subject() -> &'static str {
    "hashed"
}

// === [telemetry] ===

/// `[telemetry]`: OpenTelemetry traces exported over OTLP/HTTP (protobuf). Keys left out fall
/// back to the standard `OTEL_*` environment variables, then to the defaults here.
#[derive(Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TelemetrySection {
    /// The collector's base URL (`http://127.0.0.1:4318`); spans go to `{otlp_endpoint}/v1/traces`.
    /// Unset: `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, then `OTEL_EXPORTER_OTLP_ENDPOINT`; none of
    /// them set: tracing is off.
    pub otlp_endpoint: Option<String>,
    /// The `service.name` resource attribute. Unset: `OTEL_SERVICE_NAME`, else
    /// [`default_service_name`].
    pub service_name: Option<String>,
    /// The share of new traces that are recorded, 0 to 1 (parent-based: a trusted caller's
    /// decision is kept). Unset: `OTEL_TRACES_SAMPLER`/`OTEL_TRACES_SAMPLER_ARG`, else 1.
    pub sample_ratio: Option<f64>,
    /// The longest wait for the collector, per export (humantime). By default
    /// [`default_telemetry_timeout`].
    pub timeout: Option<String>,
}

/// `tollgate`.
pub fn default_service_name() -> &'static str {
    "tollgate"
}

/// `10s`.
pub fn default_telemetry_timeout() -> &'static str {
    "10s"
}

/// `info`.
pub fn default_log_level() -> &'static str {
    "info"
}

/// `text`.
pub fn default_log_format() -> &'static str {
    "text"
}

// === [[issuer]] ===

#[derive(Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IssuerSection {
    pub id: Option<String>,
    /// Exact value of the tokens' `iss` claim.
    pub issuer: Option<String>,
    /// Find `jwks_uri` through `{issuer}/.well-known/openid-configuration`. By default false.
    pub discovery: Option<bool>,
    pub jwks_uri: Option<String>,
    /// A token's `aud` must contain one of these.
    pub audiences: Option<Vec<String>>,
    /// Allowed signature algorithms. By default [`default_algorithms`].
    pub algorithms: Option<Vec<String>>,
    /// Clock skew allowed on `exp`, `nbf` and `iat` (humantime). By default [`default_leeway`].
    pub leeway: Option<String>,
    /// Background JWKS refresh interval (humantime). By default [`default_jwks_refresh`].
    pub jwks_refresh: Option<String>,
    /// Minimum time between two fetches caused by unknown `kid`s (humantime). By default
    /// [`default_jwks_min_refresh`].
    pub jwks_min_refresh: Option<String>,
    /// Only accept JWT access tokens with `typ` `at+jwt` (RFC 9068). By default false.
    pub require_typ: Option<bool>,
    /// Allow plain `http://` issuer, discovery and JWKS URLs on non-loopback hosts. By default
    /// false.
    pub allow_http: Option<bool>,
    /// Timeout of one discovery or JWKS fetch (humantime). By default [`default_fetch_timeout`].
    pub fetch_timeout: Option<String>,
    /// `jwt`, `introspection` or `auto`. By default `jwt`, or `auto` when `[issuer.introspection]`
    /// is present.
    pub validation: Option<String>,
    pub introspection: Option<IntrospectionSection>,
}

/// RS256, PS256, ES256 and EdDSA.
pub fn default_algorithms() -> &'static [&'static str] {
    &["RS256", "PS256", "ES256", "EdDSA"]
}

/// `30s`.
pub fn default_leeway() -> &'static str {
    "30s"
}

/// `10m`.
pub fn default_jwks_refresh() -> &'static str {
    "10m"
}

/// `30s`.
pub fn default_jwks_min_refresh() -> &'static str {
    "30s"
}

/// `5s`.
pub fn default_fetch_timeout() -> &'static str {
    "5s"
}

/// `[issuer.introspection]`: RFC 7662 token introspection.
#[derive(Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IntrospectionSection {
    /// By default the discovery document's `introspection_endpoint`.
    pub endpoint: Option<String>,
    pub client_id: Option<String>,
    pub client_secret: Option<Secret>,
    /// A file holding the client secret (a trailing newline is trimmed).
    pub client_secret_file: Option<String>,
    /// An environment variable holding the client secret.
    pub client_secret_env: Option<String>,
    /// `client_secret_basic`, `client_secret_post` or `private_key_jwt`. By default
    /// [`default_auth_method`].
    pub auth_method: Option<String>,
    /// PEM private key (RSA or EC P-256) for `private_key_jwt`.
    pub private_key_file: Option<String>,
    /// `kid` header of the client assertion.
    pub private_key_kid: Option<String>,
    /// Timeout of one introspection call (humantime). By default
    /// [`default_introspection_timeout`].
    pub timeout: Option<String>,
    /// Longest time a positive answer is cached (humantime; never past the token's `exp`). By
    /// default [`default_cache_max_ttl`].
    pub cache_max_ttl: Option<String>,
    /// How long an `active: false` answer is cached (humantime). By default
    /// [`default_negative_ttl`].
    pub negative_ttl: Option<String>,
    /// How long past its freshness a positive answer may serve while calls fail (humantime). By
    /// default [`default_serve_stale`] (off).
    pub serve_stale: Option<String>,
    /// Entries kept in the introspection cache. By default
    /// [`default_introspection_cache_capacity`].
    pub cache_capacity: Option<u64>,
    /// Consecutive failures (a count) that open the breaker. By default
    /// [`default_breaker_failures`].
    pub breaker_failures: Option<u32>,
    /// How long an open breaker fails requests fast (humantime). By default
    /// [`default_breaker_cooldown`].
    pub breaker_cooldown: Option<String>,
}

/// `client_secret_basic`.
pub fn default_auth_method() -> &'static str {
    "client_secret_basic"
}

/// `2s`.
pub fn default_introspection_timeout() -> &'static str {
    "2s"
}

/// `5m`.
pub fn default_cache_max_ttl() -> &'static str {
    "5m"
}

/// `30s`.
pub fn default_negative_ttl() -> &'static str {
    "30s"
}

/// `0s`.
pub fn default_serve_stale() -> &'static str {
    "0s"
}

/// 100000 entries.
pub fn default_introspection_cache_capacity() -> u64 {
    100_000
}

/// 5 failures.
pub fn default_breaker_failures() -> u32 {
    5
}

/// `30s`.
pub fn default_breaker_cooldown() -> &'static str {
    "30s"
}

// === [[upstream]] ===

#[derive(Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpstreamSection {
    pub id: Option<String>,
    pub url: Option<String>,
    /// Time allowed to open a connection (humantime). By default [`default_connect_timeout`].
    pub connect_timeout: Option<String>,
    /// Time allowed until the upstream's response headers (humantime). By default
    /// [`default_upstream_timeout`].
    pub timeout: Option<String>,
    /// The longest gap between two reads of the upstream's response body (humantime). By
    /// default [`default_upstream_body_read_timeout`].
    pub body_read_timeout: Option<String>,
    /// How long an idle connection to the upstream is kept for the next request (humantime);
    /// set it below the upstream's own keep-alive timeout. By default
    /// [`default_upstream_idle_timeout`].
    pub idle_timeout: Option<String>,
    /// Send the client's `Authorization` header upstream. By default false.
    pub forward_authorization: Option<bool>,
    /// Send the client's `Host` header upstream instead of the upstream URL's authority. By
    /// default false.
    pub preserve_host: Option<bool>,
    /// PEM CA certificates trusted for an `https://` upstream instead of the system roots.
    pub ca_file: Option<String>,
    /// PEM client certificate (and `client_key_file`) presented to an `https://` upstream.
    pub client_cert_file: Option<String>,
    pub client_key_file: Option<String>,
    /// Speak HTTP/2 to the upstream (ALPN for https, prior knowledge for http). By default false.
    pub http2: Option<bool>,
    /// Most requests in flight to this upstream; beyond it requests get 503 at once. By default
    /// no limit.
    pub max_concurrency: Option<u32>,
    /// Upstream sessions: map each grant to the legacy API's session cookies.
    pub session: Option<SessionSection>,
}

/// `2s`.
pub fn default_connect_timeout() -> &'static str {
    "2s"
}

/// `60s`.
pub fn default_upstream_timeout() -> &'static str {
    "60s"
}

/// `60s`.
pub fn default_upstream_body_read_timeout() -> &'static str {
    "60s"
}

/// `90s`: a shorter keep-alive than most web servers' own (IIS 120 s), so that the upstream
/// seldom closes a connection just as a request is sent on it.
pub fn default_upstream_idle_timeout() -> &'static str {
    "90s"
}

/// `[upstream.session]`: see docs/sessions.md, "Upstream sessions".
#[derive(Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SessionSection {
    /// `by_scope`, `single` or `concurrent`. By default [`default_session_mode`].
    pub mode: Option<String>,
    /// The scope that selects concurrent sessions in `by_scope` mode. By default
    /// [`default_concurrent_scope`].
    pub concurrent_scope: Option<String>,
    /// `active` or `passive`. By default [`default_creation`].
    pub creation: Option<String>,
    /// The upstream's login path (normalised, absolute). By default [`default_login_path`].
    pub login_path: Option<String>,
    /// The upstream's logout path (normalised, absolute). By default [`default_logout_path`].
    pub logout_path: Option<String>,
    /// The cookies that prove a login succeeded. By default [`default_marker_cookies`].
    pub marker_cookies: Option<Vec<String>>,
    /// A regular expression over a redirect's `Location` that means the session expired. By
    /// default [`default_expired_redirect`].
    pub expired_redirect: Option<String>,
    /// The licence's seat cap (a count); required.
    pub max_upstream_sessions: Option<u32>,
    /// Sessions one grant may hold in concurrent mode (a count). By default
    /// [`default_max_sessions_per_grant`].
    pub max_sessions_per_grant: Option<u32>,
    /// Requests in flight on one session (a count). By default
    /// [`default_max_inflight_per_session`].
    pub max_inflight_per_session: Option<u32>,
    /// Requests waiting (FIFO) for their session (a count). By default
    /// [`default_max_queue_per_session`].
    pub max_queue_per_session: Option<u32>,
    /// Login calls with the service credentials running at once, fleet-wide (a count). By
    /// default [`default_max_parallel_logins`].
    pub max_parallel_logins: Option<u32>,
    /// How long a request may wait for its session (humantime). By default
    /// [`default_max_queue_wait`].
    pub max_queue_wait: Option<String>,
    /// An unused session is logged out after this (humantime). By default [`default_idle_ttl`].
    pub idle_ttl: Option<String>,
    /// An older session is retired at its next idle moment (humantime). By default
    /// [`default_max_session_age`].
    pub max_session_age: Option<String>,
    /// How long a new session may wait for a seat (humantime). By default
    /// [`default_admission_wait`].
    pub admission_wait: Option<String>,
    /// Time allowed for one login call (humantime). By default [`default_login_timeout`].
    pub login_timeout: Option<String>,
    /// Time allowed for one logout call (humantime). By default [`default_logout_timeout`].
    pub logout_timeout: Option<String>,
    /// After the upstream refuses the credentials, no login is tried for this long (humantime).
    /// By default [`default_login_failure_cooldown`].
    pub login_failure_cooldown: Option<String>,
    /// After a replay that is still unauthenticated, no re-login for that grant for this long
    /// (humantime). By default [`default_relogin_min_interval`].
    pub relogin_min_interval: Option<String>,
    /// A session must have been idle this long to be evicted for another (humantime). By default
    /// [`default_min_idle_before_evict`].
    pub min_idle_before_evict: Option<String>,
    /// A session that answered `202 Accepted` within this time is not evicted (humantime). By
    /// default [`default_op_ttl`].
    pub op_ttl: Option<String>,
    /// Request bodies known to fit this size are buffered for a replay after a re-login (a byte
    /// size such as "10MiB"). By default [`default_max_replay_body`].
    pub max_replay_body: Option<String>,
    /// Cookies kept in one session's jar (a count). By default [`default_max_jar_cookies`].
    pub max_jar_cookies: Option<u32>,
    /// Size of one session's cookie jar (a byte size). By default [`default_max_jar_bytes`].
    pub max_jar_bytes: Option<String>,
    /// The cookie that carries a concurrent session's handle. By default
    /// [`default_handle_cookie`].
    pub handle_cookie: Option<String>,
    /// A file with at least 32 bytes of key as hex (64 hex characters). By default a random key
    /// per process.
    pub handle_key_file: Option<String>,
    /// `new` or `reject`. By default [`default_concurrent_without_handle`].
    pub concurrent_without_handle: Option<String>,
    /// Passive mode: the login body's `name` must equal this token claim.
    pub passive_login_name_claim: Option<String>,
    /// Where the grant key comes from, tried in order. By default [`default_grant_key`].
    pub grant_key: Option<Vec<String>>,
    /// `sanitize`: upstream error answers never reach the client with the upstream's exception
    /// details; `pass`: they pass unchanged. By default [`default_error_bodies`].
    pub error_bodies: Option<String>,
    pub credentials: Option<CredentialsSection>,
}

/// `by_scope`.
pub fn default_session_mode() -> &'static str {
    "by_scope"
}

/// `api:concurrent_access`.
pub fn default_concurrent_scope() -> &'static str {
    "api:concurrent_access"
}

/// `active`.
pub fn default_creation() -> &'static str {
    "active"
}

/// `/entity/auth/login`.
pub fn default_login_path() -> &'static str {
    "/entity/auth/login"
}

/// `/entity/auth/logout`.
pub fn default_logout_path() -> &'static str {
    "/entity/auth/logout"
}

/// `ASP.NET_SessionId` and `.ASPXAUTH`.
pub fn default_marker_cookies() -> &'static [&'static str] {
    &["ASP.NET_SessionId", ".ASPXAUTH"]
}

/// `(?i)/frames/login\.aspx`.
pub fn default_expired_redirect() -> &'static str {
    r"(?i)/frames/login\.aspx"
}

/// 3 sessions.
pub fn default_max_sessions_per_grant() -> u32 {
    3
}

/// 1 request.
pub fn default_max_inflight_per_session() -> u32 {
    1
}

/// 20 requests.
pub fn default_max_queue_per_session() -> u32 {
    20
}

/// 2 logins: below the reference upstream's lockout threshold (three refused logins), so that a
/// password changed upstream costs at most two refused logins before the cooldown stops the rest.
pub fn default_max_parallel_logins() -> u32 {
    2
}

/// `30s`.
pub fn default_max_queue_wait() -> &'static str {
    "30s"
}

/// `300s`.
pub fn default_idle_ttl() -> &'static str {
    "300s"
}

/// `8h`.
pub fn default_max_session_age() -> &'static str {
    "8h"
}

/// `5s`.
pub fn default_admission_wait() -> &'static str {
    "5s"
}

/// `30s`.
pub fn default_login_timeout() -> &'static str {
    "30s"
}

/// `5s`.
pub fn default_logout_timeout() -> &'static str {
    "5s"
}

/// `15m`.
pub fn default_login_failure_cooldown() -> &'static str {
    "15m"
}

/// `10s`.
pub fn default_relogin_min_interval() -> &'static str {
    "10s"
}

/// `2s`.
pub fn default_min_idle_before_evict() -> &'static str {
    "2s"
}

/// `10m`.
pub fn default_op_ttl() -> &'static str {
    "10m"
}

/// `10MiB`.
pub fn default_max_replay_body() -> &'static str {
    "10MiB"
}

/// 50 cookies.
pub fn default_max_jar_cookies() -> u32 {
    50
}

/// `8KiB`.
pub fn default_max_jar_bytes() -> &'static str {
    "8KiB"
}

/// `tollgate_session`.
pub fn default_handle_cookie() -> &'static str {
    "tollgate_session"
}

/// `new`.
pub fn default_concurrent_without_handle() -> &'static str {
    "new"
}

/// `claim:grant_id`, `claim:origin_jti`, `sid+client_id`, `client_credentials`, `subject`.
pub fn default_grant_key() -> &'static [&'static str] {
    &[
        "claim:grant_id",
        "claim:origin_jti",
        "sid+client_id",
        "client_credentials",
        "subject",
    ]
}

/// `sanitize`.
pub fn default_error_bodies() -> &'static str {
    "sanitize"
}

/// `[upstream.session.credentials]`: the active login body.
#[derive(Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CredentialsSection {
    pub name: Option<String>,
    pub name_file: Option<String>,
    pub password: Option<Secret>,
    pub password_file: Option<String>,
    pub tenant: Option<String>,
    pub tenant_file: Option<String>,
    pub branch: Option<String>,
    pub branch_file: Option<String>,
    pub locale: Option<String>,
    pub locale_file: Option<String>,
}

// === [[route]] ===

#[derive(Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteSection {
    pub id: Option<String>,
    /// Match only requests for this host (`example.com` or `*.example.com`; port ignored).
    pub host: Option<String>,
    pub exact: Option<String>,
    pub prefix: Option<String>,
    /// Allowed methods; by default any.
    pub methods: Option<Vec<String>>,
    pub upstream: Option<String>,
    /// `bearer` or `none` (public route). By default [`default_route_auth`].
    pub auth: Option<String>,
    /// Only tokens of this issuer id are accepted on the route.
    pub issuer: Option<String>,
    /// All of these scopes are required.
    pub scopes: Option<Vec<String>>,
    /// At least one of these scopes is required.
    pub any_scopes: Option<Vec<String>>,
    /// Each claim must equal one of the listed values.
    pub claims: Option<BTreeMap<String, Vec<String>>>,
    /// Upstream request headers set from token claims: header name = claim name.
    pub headers: Option<BTreeMap<String, String>>,
    /// Largest request body on this route (a byte size such as "10MiB"); larger get 413. By
    /// default `server.max_body`.
    pub max_body: Option<String>,
    /// Pass WebSocket (and other `Upgrade`) requests through. By default false.
    pub websocket: Option<bool>,
    /// RFC 9470: the token's `acr` must be one of these.
    pub acr_values: Option<Vec<String>>,
    /// RFC 9470: the user must have authenticated at most this long ago (humantime, whole
    /// seconds), by the token's `auth_time`.
    pub max_age: Option<String>,
    /// CORS for browser clients.
    pub cors: Option<CorsSection>,
}

/// `bearer`.
pub fn default_route_auth() -> &'static str {
    "bearer"
}

/// `[route.cors]`: the route answers browsers' preflights and sets CORS headers on its answers.
#[derive(Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CorsSection {
    /// Serialised origins (`https://app.example.com`), or `"*"` alone (not with credentials);
    /// required.
    pub allowed_origins: Option<Vec<String>>,
    /// Methods a browser may use. By default the route's `methods` (any, when it has none).
    pub allowed_methods: Option<Vec<String>>,
    /// Request headers a browser may send. By default [`default_cors_allowed_headers`].
    pub allowed_headers: Option<Vec<String>>,
    /// Response headers a browser application may read, beside `WWW-Authenticate` and
    /// `Retry-After` (always exposed). By default none.
    pub expose_headers: Option<Vec<String>>,
    /// How long a browser may cache a preflight answer (humantime, whole seconds). By default
    /// not said (the browser's own default).
    pub max_age: Option<String>,
    /// Allow credentialed requests (cookies, client certificates). By default false.
    pub allow_credentials: Option<bool>,
}

/// `Authorization` and `Content-Type`: what a browser client of a bearer JSON API sends.
pub fn default_cors_allowed_headers() -> &'static [&'static str] {
    &["Authorization", "Content-Type"]
}

/// Every default above by its function's name, for `tollgate schema` (which shows the values
/// where the docs name the functions).
pub fn defaults() -> Vec<(&'static str, serde_json::Value)> {
    use serde_json::json;
    vec![
        ("default_store_kind", json!(default_store_kind())),
        ("default_key_prefix", json!(default_key_prefix())),
        ("default_store_timeout", json!(default_store_timeout())),
        ("default_lease_ttl", json!(default_lease_ttl())),
        (
            "default_share_introspection",
            json!(default_share_introspection()),
        ),
        ("default_linger", json!(default_linger())),
        (
            "default_body_read_timeout",
            json!(default_body_read_timeout()),
        ),
        ("default_send_timeout", json!(default_send_timeout())),
        ("default_listen", json!(default_listen())),
        ("default_admin_listen", json!(default_admin_listen())),
        ("default_scheduler", json!(default_scheduler())),
        ("default_realm", json!(default_realm())),
        (
            "default_token_cache_capacity",
            json!(default_token_cache_capacity()),
        ),
        ("default_shutdown_grace", json!(default_shutdown_grace())),
        (
            "default_max_header_bytes",
            json!(default_max_header_bytes()),
        ),
        (
            "default_header_read_timeout",
            json!(default_header_read_timeout()),
        ),
        ("default_idle_timeout", json!(default_idle_timeout())),
        ("default_max_connections", json!(default_max_connections())),
        ("default_max_body", json!(default_max_body())),
        ("default_watch_config", json!(default_watch_config())),
        (
            "default_http2_max_concurrent_streams",
            json!(default_http2_max_concurrent_streams()),
        ),
        (
            "default_http2_max_pending_accept_reset_streams",
            json!(default_http2_max_pending_accept_reset_streams()),
        ),
        (
            "default_http2_max_local_error_reset_streams",
            json!(default_http2_max_local_error_reset_streams()),
        ),
        (
            "default_http2_keep_alive_interval",
            json!(default_http2_keep_alive_interval()),
        ),
        (
            "default_http2_keep_alive_timeout",
            json!(default_http2_keep_alive_timeout()),
        ),
        ("default_log_subject", json!(default_log_subject())),
        ("default_service_name", json!(default_service_name())),
        (
            "default_telemetry_timeout",
            json!(default_telemetry_timeout()),
        ),
        ("default_log_level", json!(default_log_level())),
        ("default_log_format", json!(default_log_format())),
        ("default_algorithms", json!(default_algorithms())),
        ("default_leeway", json!(default_leeway())),
        ("default_jwks_refresh", json!(default_jwks_refresh())),
        (
            "default_jwks_min_refresh",
            json!(default_jwks_min_refresh()),
        ),
        ("default_fetch_timeout", json!(default_fetch_timeout())),
        ("default_auth_method", json!(default_auth_method())),
        (
            "default_introspection_timeout",
            json!(default_introspection_timeout()),
        ),
        ("default_cache_max_ttl", json!(default_cache_max_ttl())),
        ("default_negative_ttl", json!(default_negative_ttl())),
        ("default_serve_stale", json!(default_serve_stale())),
        (
            "default_introspection_cache_capacity",
            json!(default_introspection_cache_capacity()),
        ),
        (
            "default_breaker_failures",
            json!(default_breaker_failures()),
        ),
        (
            "default_breaker_cooldown",
            json!(default_breaker_cooldown()),
        ),
        ("default_connect_timeout", json!(default_connect_timeout())),
        (
            "default_upstream_timeout",
            json!(default_upstream_timeout()),
        ),
        (
            "default_upstream_body_read_timeout",
            json!(default_upstream_body_read_timeout()),
        ),
        (
            "default_upstream_idle_timeout",
            json!(default_upstream_idle_timeout()),
        ),
        ("default_session_mode", json!(default_session_mode())),
        (
            "default_concurrent_scope",
            json!(default_concurrent_scope()),
        ),
        ("default_creation", json!(default_creation())),
        ("default_login_path", json!(default_login_path())),
        ("default_logout_path", json!(default_logout_path())),
        ("default_marker_cookies", json!(default_marker_cookies())),
        (
            "default_expired_redirect",
            json!(default_expired_redirect()),
        ),
        (
            "default_max_sessions_per_grant",
            json!(default_max_sessions_per_grant()),
        ),
        (
            "default_max_inflight_per_session",
            json!(default_max_inflight_per_session()),
        ),
        (
            "default_max_queue_per_session",
            json!(default_max_queue_per_session()),
        ),
        (
            "default_max_parallel_logins",
            json!(default_max_parallel_logins()),
        ),
        ("default_max_queue_wait", json!(default_max_queue_wait())),
        ("default_idle_ttl", json!(default_idle_ttl())),
        ("default_max_session_age", json!(default_max_session_age())),
        ("default_admission_wait", json!(default_admission_wait())),
        ("default_login_timeout", json!(default_login_timeout())),
        ("default_logout_timeout", json!(default_logout_timeout())),
        (
            "default_login_failure_cooldown",
            json!(default_login_failure_cooldown()),
        ),
        (
            "default_relogin_min_interval",
            json!(default_relogin_min_interval()),
        ),
        (
            "default_min_idle_before_evict",
            json!(default_min_idle_before_evict()),
        ),
        ("default_op_ttl", json!(default_op_ttl())),
        ("default_max_replay_body", json!(default_max_replay_body())),
        ("default_max_jar_cookies", json!(default_max_jar_cookies())),
        ("default_max_jar_bytes", json!(default_max_jar_bytes())),
        ("default_handle_cookie", json!(default_handle_cookie())),
        (
            "default_concurrent_without_handle",
            json!(default_concurrent_without_handle()),
        ),
        ("default_grant_key", json!(default_grant_key())),
        ("default_error_bodies", json!(default_error_bodies())),
        ("default_route_auth", json!(default_route_auth())),
        (
            "default_cors_allowed_headers",
            json!(default_cors_allowed_headers()),
        ),
    ]
}
