//! Configuration: parse, then validate, then freeze.
//!
//! 1. **Parse**: figment layers the TOML file and `TOLLGATE__`-prefixed environment variables
//!    (`TOLLGATE__SERVER__LISTEN=0.0.0.0:8080`; the double underscore keeps Kubernetes
//!    service-link variables such as `TOLLGATE_PORT` out) into the raw structs of [`file`](mod@file), which
//!    deny unknown keys and declare every default.
//! 2. **Validate** (`validate`): every string becomes a typed value (durations, URLs, socket
//!    addresses, algorithms, header names, compiled route matchers), one module per section:
//!
//!    | module       | section                                  | builds                          |
//!    |--------------|------------------------------------------|---------------------------------|
//!    | `server`     | `[server]`, `[server.tls]`               | [`ServerConfig`], [`TlsConfig`] |
//!    | `log`        | `[log]`                                  | [`LogConfig`]                   |
//!    | `issuer`     | `[[issuer]]`, `[issuer.introspection]`   | auth's [`IssuerConfig`]         |
//!    | `upstream`   | `[[upstream]]`                           | [`UpstreamConfig`]              |
//!    | [`session`]  | `[upstream.session]` and its credentials | [`SessionConfig`]               |
//!    | [`routes`]   | `[[route]]`, the route file              | policy's [`RouteTable`]         |
//!    | `store`      | `[store]`                                | [`StoreConfig`]                 |
//!    | `metadata`   | `[metadata]`                             | the RFC 9728 [`ResourceMetadata`] |
//!    | `telemetry`  | `[telemetry]` and the `OTEL_*` variables | [`TelemetryConfig`]             |
//!
//!    Each problem becomes a [`ConfigError`] that names the file, the key path and what is wrong;
//!    the shared `check` machinery collects them, and all of them are reported at once.
//! 3. **Freeze**: the result is a [`Config`] of runtime types that the gateway never mutates.
//!    Routes are one immutable [`RouteTable`] value behind an `Arc`, so a reload swaps it whole.
//!
//! Configuration builds the runtime values of auth (issuer settings) and policy (the route
//! table); neither of those imports configuration.

mod check;
mod cors;
mod entries;
pub mod file;
mod issuer;
mod log;
mod metadata;
pub mod routes;
mod server;
pub mod session;
mod step_up;
mod store;
mod telemetry;
mod upstream;
mod validate;

pub use crate::auth::settings::{
    ClientAuth, IntrospectionConfig, IssuerConfig, KeySource, ValidationMode,
};
pub use crate::runtime::Scheduler;
pub use crate::secret::Secret;
pub use session::{Creation, Credentials, GrantSource, SessionConfig, SessionMode, WithoutHandle};

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use figment::providers::{Env, Format, Toml};
use figment::Figment;
use url::Url;

use crate::metadata::ResourceMetadata;
use crate::policy::RouteTable;

/// The environment prefix of overrides: `TOLLGATE__SECTION__KEY`.
pub const ENV_PREFIX: &str = "TOLLGATE__";

/// The validated, frozen configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file this configuration was read from, if any.
    pub source: Option<PathBuf>,
    pub server: ServerConfig,
    pub log: LogConfig,
    pub issuers: Vec<IssuerConfig>,
    pub upstreams: Vec<UpstreamConfig>,
    pub routes: Arc<RouteTable>,
    pub store: StoreConfig,
    /// `[metadata]`: the RFC 9728 document, when the resource publishes one.
    pub metadata: Option<Arc<ResourceMetadata>>,
    /// `[telemetry]`: OpenTelemetry traces; `None` when off.
    pub telemetry: Option<TelemetryConfig>,
}

/// Where the session table lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreConfig {
    /// In this process (one replica).
    Memory,
    /// In Redis, shared by every replica.
    Redis(RedisConfig),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisConfig {
    pub target: RedisTarget,
    pub key_prefix: String,
    pub timeout: Duration,
    pub lease_ttl: Duration,
    pub share_introspection: bool,
    /// How long an in-flight place is kept for this replica's next request on its session.
    pub linger: Duration,
}

/// Where Redis is: one address, or the primary that Redis Sentinel names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisTarget {
    /// `redis://`, `rediss://` or `unix://` (it may carry a password: a secret).
    Url(Secret),
    Sentinel {
        /// `host:port` of each sentinel.
        sentinels: Vec<String>,
        /// The monitored primary's name.
        master: String,
        node: NodeAuth,
    },
}

/// How to talk to the data nodes that Sentinel names.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NodeAuth {
    pub db: i64,
    pub username: Option<String>,
    pub password: Option<Secret>,
    pub tls: bool,
}

impl RedisTarget {
    /// The address for logs and errors, any password replaced by `***`.
    pub fn redacted(&self) -> String {
        match self {
            RedisTarget::Url(u) => crate::net::redact_urls(u.expose()),
            RedisTarget::Sentinel {
                sentinels,
                master,
                node,
            } => format!(
                "sentinel {} (primary {master}, db {}{})",
                sentinels.join(","),
                node.db,
                if node.password.is_some() {
                    ", password ***"
                } else {
                    ""
                }
            ),
        }
    }
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    /// `server.threads`; unset, `TOKIO_WORKER_THREADS` or the usable CPUs decide
    /// ([`crate::runtime::threads`]).
    pub threads: Option<u32>,
    pub scheduler: Scheduler,
    pub realm: Arc<str>,
    pub token_cache_capacity: u64,
    pub trust_forwarded_headers: bool,
    pub shutdown_grace: Duration,
    pub tls: Option<TlsConfig>,
    pub http2_cleartext: bool,
    pub max_header_bytes: usize,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: u32,
    /// The body limit of routes that set none.
    pub max_body: u64,
    pub watch_config: bool,
    /// The longest gap between two reads of a request body.
    pub body_read_timeout: Duration,
    /// The longest a connection may stay unwritable (a client that reads nothing).
    pub send_timeout: Duration,
    /// The admin port's bearer token (`admin_token_file`'s content).
    pub admin_token: Option<Secret>,
    /// `/metrics` asks for the admin token too.
    pub admin_metrics_auth: bool,
    pub http2: Http2Limits,
}

/// The HTTP/2 limits of the proxy listener (`[server] http2_*`); the header list size is
/// `max_header_bytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Http2Limits {
    pub max_concurrent_streams: u32,
    pub max_pending_accept_reset_streams: u32,
    pub max_local_error_reset_streams: u32,
    pub keep_alive_interval: Duration,
    pub keep_alive_timeout: Duration,
}

/// `[server.tls]`, with paths resolved against the configuration file's folder. The files are
/// read (and re-read on reload) by the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub client_ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    /// A `tracing` filter directive (a level such as `info`, or `tollgate=debug,info`).
    pub level: String,
    pub format: LogFormat,
    /// The access log's own file (resolved against the configuration file's folder).
    pub access_file: Option<PathBuf>,
    /// How the access log shows the token's subject.
    pub subject: SubjectLog,
    /// `log.subject_key_file`: the key of the subject digests (else a random key per process).
    pub subject_key: Option<session::HandleKey>,
}

/// `log.subject`: how the access log shows a token's `sub`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubjectLog {
    /// A keyed digest: the same subject gives the same value for the life of the process, and
    /// the value cannot be turned back into the subject.
    Hashed,
    /// The raw `sub`.
    Plain,
    /// Not logged.
    Omitted,
}

/// `[telemetry]`, with the `OTEL_*` environment applied: where spans go, when tracing is on.
pub use crate::telemetry::Settings as TelemetryConfig;

#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    pub id: Arc<str>,
    pub url: Url,
    pub connect_timeout: Duration,
    pub timeout: Duration,
    /// The longest gap between two reads of the response body.
    pub body_read_timeout: Duration,
    /// How long an idle connection is kept for reuse.
    pub idle_timeout: Duration,
    pub forward_authorization: bool,
    pub preserve_host: bool,
    pub ca_file: Option<PathBuf>,
    pub client_cert_file: Option<PathBuf>,
    pub client_key_file: Option<PathBuf>,
    pub http2: bool,
    pub max_concurrency: Option<u32>,
    /// The session layer, when the upstream authenticates with session cookies.
    pub session: Option<SessionConfig>,
}

impl Config {
    /// The start of every `WWW-Authenticate` challenge: the realm, and the metadata document's
    /// URL when there is one.
    pub fn challenge_head(&self) -> String {
        crate::metadata::challenge_head(
            &self.server.realm,
            self.metadata.as_ref().map(|m| m.resource()),
        )
    }

    /// A one-line summary for `tollgate check` and the start-up log.
    pub fn summary(&self) -> String {
        let plural = |n: usize, word: &str| format!("{n} {word}{}", if n == 1 { "" } else { "s" });
        let traces = match &self.telemetry {
            Some(t) => format!(
                "; traces to {} (sampled {})",
                crate::net::redact_url_value(t.traces_url.as_str()),
                t.sample_ratio
            ),
            None => String::new(),
        };
        format!(
            "{}, {}, {}; proxy on {}, admin on {}{traces}",
            plural(self.routes.len(), "route"),
            plural(self.issuers.len(), "issuer"),
            plural(self.upstreams.len(), "upstream"),
            self.server.listen,
            self.server.admin_listen,
        )
    }
}

// === errors ===

/// One problem in the configuration: where (file and key path) and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file (or "environment") the offending value came from.
    pub origin: String,
    /// The key path, such as `route[2].upstream`; empty for whole-file problems.
    pub key: String,
    pub message: String,
}

impl ConfigError {
    /// The message is stored redacted, so neither `Display` nor `Debug` can show a secret: URL
    /// user-info is replaced by `***`, and the source excerpt of a TOML syntax error (the
    /// offending line, which may hold a password) is dropped, keeping its line and column.
    pub(crate) fn new(origin: String, key: String, message: &str) -> ConfigError {
        let message = message
            .lines()
            .filter(|l| !is_source_excerpt(l))
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join(": ");
        ConfigError {
            origin,
            key,
            message: crate::net::redact_urls(&message),
        }
    }
}

/// A line of a TOML parser's source excerpt: `  |`, `3 | password = "…`, `  |     ^`.
fn is_source_excerpt(line: &str) -> bool {
    let t = line.trim_start_matches(|c: char| c.is_ascii_digit() || c == ' ');
    t.starts_with('|')
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}: {}", self.origin, self.message)
        } else {
            write!(f, "{}: {}: {}", self.origin, self.key, self.message)
        }
    }
}

/// Every problem found in one load, reported together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl ConfigErrors {
    fn one(origin: impl Into<String>, key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigErrors(vec![ConfigError::new(
            origin.into(),
            key.into(),
            &message.into(),
        )])
    }
}

// === loading ===

/// Reads `path` with environment overrides, then validates and freezes it.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let (figment, route_overrides) = layered(path)?;
    from_figment_with(&figment, Some(path), &route_overrides)
}

/// The file at `path` with the `TOLLGATE__` environment overrides on top, and the route
/// overrides left for its route file (their ids are not in the file itself).
fn layered(path: &Path) -> Result<(Figment, Vec<entries::Override>), ConfigErrors> {
    if !path.is_file() {
        return Err(ConfigErrors::one(
            path.display().to_string(),
            "",
            "no such configuration file",
        ));
    }
    let figment = Figment::new().merge(Toml::file_exact(path)).merge(
        Env::prefixed(ENV_PREFIX)
            .filter(|k| !entries::is_entry_override(k.as_str()))
            .split("__"),
    );
    let routes_elsewhere = figment
        .extract_inner::<String>("server.routes_file")
        .is_ok();
    entries::apply(
        figment,
        &entries::overrides(std::env::vars()),
        routes_elsewhere,
    )
}

/// Validates an already layered figment. `source` is the main file, used to name the origin of
/// errors and to resolve `server.routes_file`; tests pass `None` and inline TOML.
pub fn from_figment(figment: &Figment, source: Option<&Path>) -> Result<Config, ConfigErrors> {
    from_figment_with(figment, source, &[])
}

/// [`from_figment`], with environment overrides of routes that live in the route file.
fn from_figment_with(
    figment: &Figment,
    source: Option<&Path>,
    route_overrides: &[entries::Override],
) -> Result<Config, ConfigErrors> {
    let origin = Origin::new(figment, source);
    let raw: file::FileConfig = figment.extract().map_err(|e| origin.figment_errors(e))?;

    let routes_file = match raw.server.routes_file.as_deref() {
        None => None,
        Some(rel) => {
            let base = source
                .and_then(Path::parent)
                .map(Path::to_path_buf)
                .unwrap_or_default();
            let path = base.join(rel);
            if !path.is_file() {
                return Err(ConfigErrors::one(
                    origin.of("server.routes_file"),
                    "server.routes_file",
                    format!("no such file: {}", path.display()),
                ));
            }
            let (fig, _) = entries::apply(
                Figment::new().merge(Toml::file_exact(&path)),
                route_overrides,
                false,
            )?;
            let routes_origin = Origin::new(&fig, Some(&path));
            let parsed: file::RoutesFile =
                fig.extract().map_err(|e| routes_origin.figment_errors(e))?;
            Some((path, parsed))
        }
    };

    validate::build(raw, routes_file, &origin, source)
}

/// The configuration `load` would read, as TOML: the file with the `TOLLGATE__` environment
/// overrides applied, and the route file's routes when `server.routes_file` names one. Secrets
/// (`password`, `client_secret`, `store.url`) are `***`, and so is the user-info of any URL.
/// Keys left out are left out here too: their defaults are in docs/configuration.md.
pub fn effective_toml(path: &Path) -> Result<String, ConfigErrors> {
    let (figment, route_overrides) = layered(path)?;
    let origin = Origin::new(&figment, Some(path));
    let mut raw: file::FileConfig = figment.extract().map_err(|e| origin.figment_errors(e))?;
    if let Some(rel) = raw.server.routes_file.clone() {
        let routes = path.parent().unwrap_or(Path::new(".")).join(rel);
        let (fig, _) = entries::apply(
            Figment::new().merge(Toml::file_exact(&routes)),
            &route_overrides,
            false,
        )?;
        let routes_origin = Origin::new(&fig, Some(&routes));
        let parsed: file::RoutesFile =
            fig.extract().map_err(|e| routes_origin.figment_errors(e))?;
        raw.route.extend(parsed.route);
    }
    let text = toml::to_string(&raw).map_err(|e| {
        ConfigErrors::one(path.display().to_string(), "", format!("cannot print: {e}"))
    })?;
    Ok(crate::net::redact_urls(&text))
}

/// True when `path` holds only `[[route]]` tables: a route file meant for `server.routes_file`.
pub fn is_routes_file(path: &Path) -> bool {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|text| text.parse::<toml::Table>().ok())
        .is_some_and(|t| !t.is_empty() && t.keys().all(|k| k == "route"))
}

/// Validates a route file on its own: everything but its references to upstreams and issuers,
/// which only the configuration naming it in `server.routes_file` can resolve. Returns the number
/// of routes.
pub fn check_routes_file(path: &Path) -> Result<usize, ConfigErrors> {
    check_routes(&Figment::new().merge(Toml::file_exact(path)), Some(path))
}

/// [`check_routes_file`] of route-file text (the fuzz targets).
pub fn check_routes_str(toml: &str) -> Result<usize, ConfigErrors> {
    check_routes(&Figment::new().merge(Toml::string(toml)), None)
}

fn check_routes(figment: &Figment, source: Option<&Path>) -> Result<usize, ConfigErrors> {
    let origin = Origin::new(figment, source);
    let parsed: file::RoutesFile = figment.extract().map_err(|e| origin.figment_errors(e))?;
    validate::build_routes_only(&parsed, &origin)
}

/// Parses a TOML string without environment overrides (tests, `tollgate demo`).
pub fn from_toml_str(toml: &str) -> Result<Config, ConfigErrors> {
    from_figment(&Figment::new().merge(Toml::string(toml)), None)
}

/// `tollgate schema`: the JSON Schema (draft 2020-12) of the configuration file, or with
/// `routes` of a route file (`server.routes_file`). Derived from the raw structs, so it accepts
/// exactly the keys the parser accepts; values that need checking (durations, URLs) are strings
/// here and are checked by `tollgate check`.
pub fn schema(routes: bool) -> String {
    let mut schema = if routes {
        schemars::schema_for!(file::RoutesFile)
    } else {
        schemars::schema_for!(file::FileConfig)
    };
    let title = if routes {
        "tollgate route file"
    } else {
        "tollgate configuration"
    };
    schema.insert("title".to_owned(), title.into());
    let defaults: std::collections::HashMap<&str, serde_json::Value> =
        file::defaults().into_iter().collect();
    let mut value = schema.to_value();
    for_editors(&mut value, &defaults);
    serde_json::to_string_pretty(&value).unwrap_or_default()
}

/// The derived schema as an editor wants it: TOML has no null, so `Option` is just the type;
/// the descriptions name default values, not the functions that hold them; rustdoc's link
/// brackets go. The serde `default`s of whole sections (objects of nulls) are left out.
fn for_editors(
    v: &mut serde_json::Value,
    defaults: &std::collections::HashMap<&str, serde_json::Value>,
) {
    use serde_json::Value;
    match v {
        Value::Object(map) => {
            map.remove("default");
            if let Some(Value::Array(types)) = map.get("type") {
                let kept: Vec<Value> = types.iter().filter(|t| *t != "null").cloned().collect();
                if kept.len() == 1 {
                    map.insert("type".to_owned(), kept[0].clone());
                }
            }
            if let Some(Value::Array(any)) = map.get("anyOf") {
                let kept: Vec<Value> = any
                    .iter()
                    .filter(|a| a.get("type") != Some(&Value::from("null")))
                    .cloned()
                    .collect();
                if kept.len() == 1 {
                    map.remove("anyOf");
                    if let Value::Object(only) = &kept[0] {
                        for (k, x) in only {
                            map.insert(k.clone(), x.clone());
                        }
                    }
                }
            }
            if let Some(Value::String(d)) = map.get_mut("description") {
                *d = describe(d, defaults);
            }
            for x in map.values_mut() {
                for_editors(x, defaults);
            }
        }
        Value::Array(items) => {
            for x in items {
                for_editors(x, defaults);
            }
        }
        _ => {}
    }
}

/// A doc comment for an editor: "[`default_log_level`]" becomes `"info"`, other rustdoc links
/// lose their brackets, and line breaks inside a paragraph become spaces.
fn describe(doc: &str, defaults: &std::collections::HashMap<&str, serde_json::Value>) -> String {
    let mut out = String::with_capacity(doc.len());
    let mut rest = doc;
    while let Some(i) = rest.find("[`") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        let Some(j) = after.find("`]") else {
            out.push_str(&rest[i..]);
            rest = "";
            break;
        };
        let name = &after[..j];
        match defaults.get(name) {
            Some(value) => out.push_str(&format!("`{value}`")),
            None => out.push_str(&format!("`{name}`")),
        }
        rest = &after[j + 2..];
    }
    out.push_str(rest);
    out.replace("\n\n", "\u{2029}")
        .replace('\n', " ")
        .replace('\u{2029}', "\n\n")
}

/// Names where a key's value came from, so that errors point at the right file.
pub(crate) struct Origin<'a> {
    figment: &'a Figment,
    default: String,
}

impl<'a> Origin<'a> {
    pub(crate) fn new(figment: &'a Figment, source: Option<&Path>) -> Self {
        let default = source
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "configuration".to_owned());
        Origin { figment, default }
    }

    /// The origin of the value at a dotted figment path (`server.listen`).
    pub(crate) fn of(&self, dotted: &str) -> String {
        match self.figment.find_metadata(dotted) {
            Some(md) => describe_metadata(md).unwrap_or_else(|| self.default.clone()),
            None => self.default.clone(),
        }
    }

    fn figment_errors(&self, err: figment::Error) -> ConfigErrors {
        ConfigErrors(
            err.into_iter()
                .map(|e| {
                    let mut path = e.path.clone();
                    let message = match &e.kind {
                        figment::error::Kind::UnknownField(field, _) => {
                            if path.last() != Some(field) {
                                path.push(field.clone());
                            }
                            "unknown key".to_owned()
                        }
                        figment::error::Kind::MissingField(field) => {
                            if path.last().map(String::as_str) != Some(field.as_ref()) {
                                path.push(field.to_string());
                            }
                            "missing key".to_owned()
                        }
                        other => other.to_string(),
                    };
                    let origin = e
                        .metadata
                        .as_ref()
                        .and_then(describe_metadata)
                        .unwrap_or_else(|| self.default.clone());
                    ConfigError::new(origin, key_path(&path), &message)
                })
                .collect(),
        )
    }
}

fn describe_metadata(md: &figment::Metadata) -> Option<String> {
    match &md.source {
        Some(figment::Source::File(p)) => Some(p.display().to_string()),
        Some(_) | None if md.name.contains("environment") => {
            Some(format!("environment ({ENV_PREFIX}*)"))
        }
        _ => None,
    }
}

/// `["route", "2", "upstream"]` → `route[2].upstream`.
fn key_path(parts: &[String]) -> String {
    let mut out = String::new();
    for p in parts {
        if p.chars().all(|c| c.is_ascii_digit()) && !out.is_empty() {
            out.push('[');
            out.push_str(p);
            out.push(']');
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(p);
        }
    }
    out
}

#[cfg(test)]
mod tests;
