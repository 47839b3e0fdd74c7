//! The configuration as written: raw serde structs that mirror the TOML keys one to one.
//!
//! Every struct denies unknown keys, so a typo is an error that names the key instead of a silently
//! ignored setting. Values that need checking (durations, URLs, addresses, algorithms) stay strings
//! here; `config::validate` turns them into typed values and names the key path when one is wrong.

use std::collections::BTreeMap;

use serde::Deserialize;

/// The main configuration file.
#[derive(Debug, Default, Deserialize)]
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
}

/// `[store]`: where the session table (and shared introspection results) live.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSection {
    /// `memory` (default, one replica) or `redis`.
    pub kind: Option<String>,
    /// `redis://host:port/db`, `rediss://…` (TLS), or through Sentinel
    /// `redis+sentinel://[[user]:password@]host:port[,host:port…]/master_name[/db]`.
    pub url: Option<String>,
    /// Instead of a Sentinel URL: the sentinels (`host:port`) and the primary's name.
    pub sentinels: Option<Vec<String>>,
    pub master_name: Option<String>,
    /// By default `tollgate:`.
    pub key_prefix: Option<String>,
    /// Timeout of one store operation. By default `500ms`.
    pub timeout: Option<String>,
    /// How long a crashed replica's leases and login locks live. By default `30s`.
    pub lease_ttl: Option<String>,
    /// Share positive introspection results between replicas. By default true.
    pub share_introspection: Option<bool>,
}

/// The separate route file named by `server.routes_file`: only `[[route]]` tables.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoutesFile {
    #[serde(default)]
    pub route: Vec<RouteSection>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSection {
    /// Proxy listener, `IP:port`. By default `127.0.0.1:8080`.
    pub listen: Option<String>,
    /// Admin listener (`/metrics`, `/healthz`, `/readyz`), `IP:port`. By default `127.0.0.1:9090`.
    pub admin_listen: Option<String>,
    /// The `realm` of every `WWW-Authenticate` challenge. By default `tollgate`.
    pub realm: Option<String>,
    /// A file of `[[route]]` tables, relative to the configuration file.
    pub routes_file: Option<String>,
    /// Capacity (entries) of the verified-token cache. By default 100000.
    pub token_cache_capacity: Option<u64>,
    /// Keep client-sent `X-Forwarded-*` headers and append to them (only behind a trusted proxy).
    /// By default false: the gateway replaces them.
    pub trust_forwarded_headers: Option<bool>,
    /// How long in-flight requests may take to finish on shutdown (humantime). By default `30s`.
    pub shutdown_grace: Option<String>,
    /// Serve TLS on the proxy listener.
    pub tls: Option<TlsSection>,
    /// Accept HTTP/2 without TLS (h2c, prior knowledge). By default false.
    pub http2_cleartext: Option<bool>,
    /// Largest request head (request line and headers); larger heads get 431. By default `64KiB`.
    pub max_header_bytes: Option<String>,
    /// Time a client has to send its request head (humantime). By default `30s`.
    pub header_read_timeout: Option<String>,
    /// Keep-alive connections idle this long are closed (humantime). By default `60s`.
    pub idle_timeout: Option<String>,
    /// Most client connections open at once on the proxy listener. By default 10000.
    pub max_connections: Option<u32>,
    /// Largest request body (a byte size) on routes that set none. By default `10MiB`.
    pub max_body: Option<String>,
    /// Watch the configuration (and route) file and reload when it changes. By default true.
    pub watch_config: Option<bool>,
}

/// `[server.tls]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    /// PEM certificate chain.
    pub cert_file: Option<String>,
    /// PEM private key (RSA, ECDSA or Ed25519; PKCS#8, PKCS#1 or SEC1).
    pub key_file: Option<String>,
    /// PEM CA certificates: when set, clients must present a certificate signed by one (mTLS).
    pub client_ca_file: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSection {
    /// `error`, `warn`, `info`, `debug` or `trace`; `RUST_LOG` overrides it. By default `info`.
    pub level: Option<String>,
    /// `text` or `json`. By default `text`.
    pub format: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerSection {
    pub id: Option<String>,
    /// Exact value of the tokens' `iss` claim.
    pub issuer: Option<String>,
    /// Find `jwks_uri` through `{issuer}/.well-known/openid-configuration`.
    pub discovery: Option<bool>,
    pub jwks_uri: Option<String>,
    /// A token's `aud` must contain one of these.
    pub audiences: Option<Vec<String>>,
    /// Allowed signature algorithms. By default RS256, PS256, ES256, EdDSA.
    pub algorithms: Option<Vec<String>>,
    /// Clock skew allowed on `exp`, `nbf` and `iat` (humantime). By default `30s`.
    pub leeway: Option<String>,
    /// Background JWKS refresh interval (humantime). By default `10m`.
    pub jwks_refresh: Option<String>,
    /// Minimum time between two fetches caused by unknown `kid`s (humantime). By default `30s`.
    pub jwks_min_refresh: Option<String>,
    /// Only accept JWT access tokens with `typ` `at+jwt` (RFC 9068). By default false.
    pub require_typ: Option<bool>,
    /// Allow plain `http://` issuer, discovery and JWKS URLs on non-loopback hosts.
    pub allow_http: Option<bool>,
    /// Timeout of one discovery or JWKS fetch (humantime). By default `5s`.
    pub fetch_timeout: Option<String>,
    /// `jwt`, `introspection` or `auto`. By default `jwt`, or `auto` when `[issuer.introspection]`
    /// is present.
    pub validation: Option<String>,
    pub introspection: Option<IntrospectionSection>,
}

/// `[issuer.introspection]`: RFC 7662 token introspection.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntrospectionSection {
    /// By default the discovery document's `introspection_endpoint`.
    pub endpoint: Option<String>,
    pub client_id: Option<String>,
    pub client_secret: Option<String>,
    /// A file holding the client secret (a trailing newline is trimmed).
    pub client_secret_file: Option<String>,
    /// An environment variable holding the client secret.
    pub client_secret_env: Option<String>,
    /// `client_secret_basic` (default), `client_secret_post` or `private_key_jwt`.
    pub auth_method: Option<String>,
    /// PEM private key (RSA or EC P-256) for `private_key_jwt`.
    pub private_key_file: Option<String>,
    /// `kid` header of the client assertion.
    pub private_key_kid: Option<String>,
    /// By default `2s`.
    pub timeout: Option<String>,
    /// By default `5m`.
    pub cache_max_ttl: Option<String>,
    /// By default `30s`.
    pub negative_ttl: Option<String>,
    /// By default `0s` (off).
    pub serve_stale: Option<String>,
    /// Entries kept in the introspection cache. By default 100000.
    pub cache_capacity: Option<u64>,
    /// Consecutive failures that open the breaker. By default 5.
    pub breaker_failures: Option<u32>,
    /// How long an open breaker fails requests fast. By default `30s`.
    pub breaker_cooldown: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamSection {
    pub id: Option<String>,
    pub url: Option<String>,
    /// By default `2s`.
    pub connect_timeout: Option<String>,
    /// Time allowed until the upstream's response headers (humantime). By default `60s`.
    pub timeout: Option<String>,
    /// Send the client's `Authorization` header upstream. By default false.
    pub forward_authorization: Option<bool>,
    /// Send the client's `Host` header upstream instead of the upstream URL's authority.
    pub preserve_host: Option<bool>,
    /// PEM CA certificates trusted for an `https://` upstream instead of the system roots.
    pub ca_file: Option<String>,
    /// PEM client certificate (and `client_key_file`) presented to an `https://` upstream.
    pub client_cert_file: Option<String>,
    pub client_key_file: Option<String>,
    /// Speak HTTP/2 to the upstream (ALPN for https, prior knowledge for http). By default false.
    pub http2: Option<bool>,
    /// Most requests in flight to this upstream; beyond it requests get 503 at once.
    pub max_concurrency: Option<u32>,
    /// Upstream sessions: map each grant to the legacy API's session cookies.
    pub session: Option<SessionSection>,
}

/// `[upstream.session]`: see the README's "Upstream sessions".
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionSection {
    /// `by_scope` (default), `single` or `concurrent`.
    pub mode: Option<String>,
    /// By default `api:concurrent_access`.
    pub concurrent_scope: Option<String>,
    /// `active` (default) or `passive`.
    pub creation: Option<String>,
    pub login_path: Option<String>,
    pub logout_path: Option<String>,
    pub marker_cookies: Option<Vec<String>>,
    pub expired_redirect: Option<String>,
    /// The licence's seat cap; required.
    pub max_upstream_sessions: Option<u32>,
    pub max_sessions_per_grant: Option<u32>,
    pub max_inflight_per_session: Option<u32>,
    pub max_queue_per_session: Option<u32>,
    pub max_queue_wait: Option<String>,
    pub idle_ttl: Option<String>,
    pub max_session_age: Option<String>,
    pub admission_wait: Option<String>,
    pub login_timeout: Option<String>,
    pub logout_timeout: Option<String>,
    pub login_failure_cooldown: Option<String>,
    pub relogin_min_interval: Option<String>,
    pub min_idle_before_evict: Option<String>,
    pub op_ttl: Option<String>,
    /// A byte size such as "10MiB".
    pub max_replay_body: Option<String>,
    pub max_jar_cookies: Option<u32>,
    pub max_jar_bytes: Option<String>,
    pub handle_cookie: Option<String>,
    pub handle_key_file: Option<String>,
    /// `new` (default) or `reject`.
    pub concurrent_without_handle: Option<String>,
    pub passive_login_name_claim: Option<String>,
    pub grant_key: Option<Vec<String>>,
    /// `sanitize` (default): upstream error answers never reach the client with the
    /// upstream's exception details; `pass`: they pass unchanged.
    pub error_bodies: Option<String>,
    pub credentials: Option<CredentialsSection>,
}

/// `[upstream.session.credentials]`: the active login body.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialsSection {
    pub name: Option<String>,
    pub name_file: Option<String>,
    pub password: Option<String>,
    pub password_file: Option<String>,
    pub tenant: Option<String>,
    pub tenant_file: Option<String>,
    pub branch: Option<String>,
    pub branch_file: Option<String>,
    pub locale: Option<String>,
    pub locale_file: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
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
    /// `bearer` (default) or `none` (public route).
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
    /// Largest request body on this route (a byte size such as "10MiB"); larger get 413.
    pub max_body: Option<String>,
    /// Pass WebSocket (and other `Upgrade`) requests through. By default false.
    pub websocket: Option<bool>,
}
