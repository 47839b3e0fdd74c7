//! Turns the raw structs into the frozen [`Config`], collecting every problem with its key path.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use url::Url;

use super::file::{self, FileConfig};
use super::{
    routes, Config, ConfigError, ConfigErrors, LogConfig, LogFormat, NodeAuth, Origin, RedisConfig,
    RedisTarget, Secret, ServerConfig, StoreConfig, TlsConfig, UpstreamConfig,
};

/// Collects errors while typed values are built.
pub(crate) struct Checker<'a> {
    pub(crate) origin: &'a Origin<'a>,
    /// Overrides the origin for keys of a separate file (the route file).
    pub(crate) file_override: Option<String>,
    pub(crate) errors: Vec<ConfigError>,
}

impl<'a> Checker<'a> {
    /// Records an error at `key` (`route[2].upstream`).
    pub(crate) fn error(&mut self, key: &str, message: impl Into<String>) {
        let origin = match &self.file_override {
            Some(f) => f.clone(),
            None => self.origin.of(&dotted(key)),
        };
        self.errors.push(ConfigError {
            origin,
            key: key.to_owned(),
            message: message.into(),
        });
    }

    pub(crate) fn required<'v, T>(&mut self, key: &str, value: &'v Option<T>) -> Option<&'v T> {
        if value.is_none() {
            self.error(key, "missing key");
        }
        value.as_ref()
    }

    pub(crate) fn duration(
        &mut self,
        key: &str,
        value: Option<&str>,
        default: Duration,
    ) -> Duration {
        match value {
            None => default,
            Some(s) => match humantime::parse_duration(s.trim()) {
                Ok(d) => d,
                Err(e) => {
                    self.error(
                        key,
                        format!("`{s}` is not a duration ({e}); write it like \"30s\", \"10m\" or \"1h 30m\""),
                    );
                    default
                }
            },
        }
    }

    fn socket_addr(&mut self, key: &str, value: Option<&str>, default: &str) -> SocketAddr {
        let s = value.unwrap_or(default);
        match s.parse::<SocketAddr>() {
            Ok(a) => a,
            Err(_) => {
                self.error(
                    key,
                    format!("`{s}` is not an IP:port address (for example \"127.0.0.1:8080\" or \"[::]:8080\")"),
                );
                // An unusable placeholder; the error above stops the load.
                SocketAddr::from(([127, 0, 0, 1], 0))
            }
        }
    }

    /// An `http(s)` URL; plain http only for loopback hosts or when `allow_http` is set.
    pub(crate) fn idp_url(&mut self, key: &str, value: &str, allow_http: bool) -> Option<Url> {
        let url = match Url::parse(value) {
            Ok(u) => u,
            Err(e) => {
                self.error(key, format!("`{value}` is not a URL ({e})"));
                return None;
            }
        };
        match url.scheme() {
            "https" => Some(url),
            "http" if allow_http || crate::net::is_loopback(&url) => Some(url),
            "http" => {
                self.error(
                    key,
                    format!("`{value}` must use https:// (plain http is allowed only for loopback hosts or with allow_http = true)"),
                );
                None
            }
            other => {
                self.error(
                    key,
                    format!("unsupported URL scheme `{other}`; use https://"),
                );
                None
            }
        }
    }
}

/// `route[2].upstream` → `route.2.upstream`, the form figment looks values up by.
fn dotted(key: &str) -> String {
    key.replace('[', ".").replace(']', "")
}

pub(super) fn build(
    raw: FileConfig,
    routes_file: Option<(PathBuf, file::RoutesFile)>,
    origin: &Origin<'_>,
    source: Option<&Path>,
) -> Result<Config, ConfigErrors> {
    let mut c = Checker {
        origin,
        file_override: None,
        errors: Vec::new(),
    };

    let base_dir = source
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let server = server(&mut c, &raw.server, &base_dir);
    let log = log(&mut c, &raw.log);
    let issuers = super::issuer::issuers(&mut c, &raw.issuer, &base_dir);
    let upstreams = upstreams(&mut c, &raw.upstream, &base_dir);

    let issuer_ids: Vec<Arc<str>> = issuers.iter().map(|i| i.id.clone()).collect();
    let upstream_ids: Vec<Arc<str>> = upstreams.iter().map(|u| u.id.clone()).collect();
    let mut sections = routes::Section::all(&raw.route, None);
    if let Some((path, parsed)) = &routes_file {
        sections.extend(routes::Section::all(
            &parsed.route,
            Some(path.display().to_string()),
        ));
    }
    let table = routes::compile(
        &mut c,
        &sections,
        &upstream_ids,
        &issuer_ids,
        &server.realm,
        server.max_body,
    );

    let store = store(&mut c, &raw.store, &upstreams);
    if c.errors.is_empty() {
        Ok(Config {
            source: source.map(Path::to_path_buf),
            server,
            log,
            issuers,
            upstreams,
            routes: Arc::new(table),
            store,
        })
    } else {
        Err(ConfigErrors(c.errors))
    }
}

/// A route file checked alone: references resolve to whatever the file names.
pub(super) fn build_routes_only(
    parsed: &file::RoutesFile,
    origin: &Origin<'_>,
) -> Result<usize, ConfigErrors> {
    let mut c = Checker {
        origin,
        file_override: None,
        errors: Vec::new(),
    };
    let named = |f: fn(&file::RouteSection) -> Option<&String>| -> Vec<Arc<str>> {
        parsed
            .route
            .iter()
            .filter_map(f)
            .map(|s| Arc::from(s.as_str()))
            .collect()
    };
    let upstreams = named(|r| r.upstream.as_ref());
    let issuers = named(|r| r.issuer.as_ref());
    let sections = routes::Section::all(&parsed.route, None);
    let table = routes::compile(
        &mut c,
        &sections,
        &upstreams,
        &issuers,
        "tollgate",
        10 << 20,
    );
    if c.errors.is_empty() {
        Ok(table.len())
    } else {
        Err(ConfigErrors(c.errors))
    }
}

fn store(
    c: &mut Checker<'_>,
    raw: &file::StoreSection,
    upstreams: &[UpstreamConfig],
) -> StoreConfig {
    match raw.kind.as_deref() {
        None | Some("memory") => {
            for field in [
                "url",
                "sentinels",
                "master_name",
                "key_prefix",
                "timeout",
                "lease_ttl",
                "share_introspection",
            ] {
                let set = match field {
                    "url" => raw.url.is_some(),
                    "sentinels" => raw.sentinels.is_some(),
                    "master_name" => raw.master_name.is_some(),
                    "key_prefix" => raw.key_prefix.is_some(),
                    "timeout" => raw.timeout.is_some(),
                    "lease_ttl" => raw.lease_ttl.is_some(),
                    _ => raw.share_introspection.is_some(),
                };
                if set {
                    c.error(
                        &format!("store.{field}"),
                        "has no use with kind = \"memory\"; set kind = \"redis\"",
                    );
                }
            }
            StoreConfig::Memory
        }
        Some("redis") => {
            let target = redis_target(c, raw);
            for (i, u) in upstreams.iter().enumerate() {
                if u.session.as_ref().is_some_and(|s| s.key.is_none()) {
                    c.error(
                        &format!("upstream[{i}].session.handle_key_file"),
                        "missing key: with a shared store every replica must use the same key (otherwise grant keys and handles differ between replicas)",
                    );
                }
            }
            let timeout = c.duration(
                "store.timeout",
                raw.timeout.as_deref(),
                Duration::from_millis(500),
            );
            let lease_ttl = c.duration(
                "store.lease_ttl",
                raw.lease_ttl.as_deref(),
                Duration::from_secs(30),
            );
            if lease_ttl < Duration::from_secs(1) {
                c.error("store.lease_ttl", "must be at least 1s");
            }
            if timeout.is_zero() {
                c.error("store.timeout", "must be greater than zero");
            }
            StoreConfig::Redis(RedisConfig {
                target,
                key_prefix: raw
                    .key_prefix
                    .clone()
                    .unwrap_or_else(|| "tollgate:".to_owned()),
                timeout,
                lease_ttl,
                share_introspection: raw.share_introspection.unwrap_or(true),
            })
        }
        Some(other) => {
            c.error(
                "store.kind",
                format!("`{other}` is not a store kind; use \"memory\" or \"redis\""),
            );
            StoreConfig::Memory
        }
    }
}

/// `store.url` (a Redis URL, or a Sentinel URL), or `store.sentinels` with `store.master_name`.
/// Errors never repeat a password.
fn redis_target(c: &mut Checker<'_>, raw: &file::StoreSection) -> RedisTarget {
    let none = || RedisTarget::Url(Secret::new(String::new()));
    match (&raw.url, &raw.sentinels, &raw.master_name) {
        (Some(_), Some(_), _) | (Some(_), _, Some(_)) => {
            c.error(
                "store.url",
                "set either url or sentinels with master_name, not both",
            );
            none()
        }
        (Some(u), None, None) => {
            let shown = crate::net::redact_urls(u);
            if let Some(rest) = u
                .strip_prefix("redis+sentinel://")
                .map(|r| (r, false))
                .or_else(|| u.strip_prefix("rediss+sentinel://").map(|r| (r, true)))
            {
                return match parse_sentinel_url(rest.0, rest.1) {
                    Ok(t) => t,
                    Err(why) => {
                        c.error("store.url", format!("`{shown}`: {why}"));
                        none()
                    }
                };
            }
            let known = ["redis://", "rediss://", "redis+unix://", "unix://"];
            if !known.iter().any(|k| u.starts_with(k)) {
                c.error(
                    "store.url",
                    format!("`{shown}` must start with redis://, rediss:// or redis+sentinel://"),
                );
                return none();
            }
            if redis::Client::open(u.as_str()).is_err() {
                c.error("store.url", format!("`{shown}` is not a Redis URL"));
            }
            RedisTarget::Url(Secret::new(u.clone()))
        }
        (None, Some(list), Some(master)) => {
            if list.is_empty() {
                c.error("store.sentinels", "must list at least one host:port");
            }
            for (i, s) in list.iter().enumerate() {
                if !valid_host_port(s) {
                    c.error(
                        &format!("store.sentinels[{i}]"),
                        format!("`{s}` is not host:port"),
                    );
                }
            }
            if master.is_empty() {
                c.error("store.master_name", "must not be empty");
            }
            RedisTarget::Sentinel {
                sentinels: list.clone(),
                master: master.clone(),
                node: NodeAuth::default(),
            }
        }
        (None, Some(_), None) => {
            c.error(
                "store.master_name",
                "missing key: sentinels needs the name of the primary they monitor",
            );
            none()
        }
        (None, None, Some(_)) => {
            c.error(
                "store.sentinels",
                "missing key: master_name needs the sentinels (host:port) that monitor it",
            );
            none()
        }
        (None, None, None) => {
            c.error(
                "store.url",
                "missing key: kind = \"redis\" needs url (or sentinels and master_name)",
            );
            none()
        }
    }
}

fn valid_host_port(s: &str) -> bool {
    s.rsplit_once(':')
        .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0))
}

/// `[[user]:password@]host:port[,host:port…]/master_name[/db]` (after the scheme).
fn parse_sentinel_url(rest: &str, tls: bool) -> Result<RedisTarget, String> {
    let (auth, rest) = match rest.rsplit_once('@') {
        Some((a, r)) => (Some(a), r),
        None => (None, rest),
    };
    let (hosts, path) = rest
        .split_once('/')
        .ok_or("the primary's name is missing after the hosts (…/master_name)")?;
    let sentinels: Vec<String> = hosts.split(',').map(str::to_owned).collect();
    if let Some(bad) = sentinels.iter().find(|s| !valid_host_port(s)) {
        return Err(format!("`{bad}` is not host:port"));
    }
    let mut parts = path.split('/');
    let master = parts.next().unwrap_or_default().to_owned();
    if master.is_empty() {
        return Err("the primary's name is missing after the hosts (…/master_name)".to_owned());
    }
    let db = match parts.next() {
        None | Some("") => 0,
        Some(d) => d
            .parse()
            .map_err(|_| format!("`{d}` is not a database number"))?,
    };
    let decode = |v: &str| {
        url::form_urlencoded::parse(format!("v={v}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default()
    };
    let (username, password) = match auth {
        None => (None, None),
        Some(a) => match a.split_once(':') {
            Some((u, p)) => (
                (!u.is_empty()).then(|| decode(u)),
                Some(Secret::new(decode(p))),
            ),
            None => (Some(decode(a)), None),
        },
    };
    Ok(RedisTarget::Sentinel {
        sentinels,
        master,
        node: NodeAuth {
            db,
            username,
            password,
            tls,
        },
    })
}

fn server(c: &mut Checker<'_>, raw: &file::ServerSection, base: &Path) -> ServerConfig {
    let listen = c.socket_addr("server.listen", raw.listen.as_deref(), "127.0.0.1:8080");
    let admin_listen = c.socket_addr(
        "server.admin_listen",
        raw.admin_listen.as_deref(),
        "127.0.0.1:9090",
    );
    if listen == admin_listen && listen.port() != 0 {
        c.error("server.admin_listen", "must differ from server.listen");
    }
    let realm = raw.realm.clone().unwrap_or_else(|| "tollgate".to_owned());
    if realm.is_empty()
        || !realm
            .bytes()
            .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
    {
        c.error(
            "server.realm",
            "must be non-empty printable ASCII without quotes or backslashes",
        );
    }
    let token_cache_capacity = raw.token_cache_capacity.unwrap_or(100_000);
    if token_cache_capacity == 0 {
        c.error("server.token_cache_capacity", "must be at least 1");
    }
    ServerConfig {
        listen,
        admin_listen,
        realm: realm.into(),
        token_cache_capacity,
        trust_forwarded_headers: raw.trust_forwarded_headers.unwrap_or(false),
        shutdown_grace: c.duration(
            "server.shutdown_grace",
            raw.shutdown_grace.as_deref(),
            Duration::from_secs(30),
        ),
        tls: raw.tls.as_ref().and_then(|t| tls(c, t, base)),
        http2_cleartext: raw.http2_cleartext.unwrap_or(false),
        max_header_bytes: byte_size(
            c,
            "server.max_header_bytes",
            raw.max_header_bytes.as_deref(),
            64 << 10,
        ) as usize,
        header_read_timeout: positive_duration(
            c,
            "server.header_read_timeout",
            raw.header_read_timeout.as_deref(),
            Duration::from_secs(30),
        ),
        idle_timeout: positive_duration(
            c,
            "server.idle_timeout",
            raw.idle_timeout.as_deref(),
            Duration::from_secs(60),
        ),
        max_connections: match raw.max_connections {
            Some(0) => {
                c.error("server.max_connections", "must be at least 1");
                1
            }
            Some(n) => n,
            None => 10_000,
        },
        max_body: byte_size(c, "server.max_body", raw.max_body.as_deref(), 10 << 20),
        watch_config: raw.watch_config.unwrap_or(true),
    }
}

/// A byte size (`"10MiB"`, `"64KiB"`, `"4096"`), or `default`.
pub(crate) fn byte_size(c: &mut Checker<'_>, key: &str, value: Option<&str>, default: u64) -> u64 {
    match value {
        None => default,
        Some(v) => super::session::parse_bytes(v).unwrap_or_else(|| {
            c.error(
                key,
                format!("`{v}` is not a byte size (for example \"10MiB\", \"64KiB\", \"4096\")"),
            );
            default
        }),
    }
}

fn positive_duration(
    c: &mut Checker<'_>,
    key: &str,
    value: Option<&str>,
    default: Duration,
) -> Duration {
    let d = c.duration(key, value, default);
    if d.is_zero() {
        c.error(key, "must be greater than zero");
    }
    d
}

/// A file named by the configuration, relative to its folder; it must exist.
pub(crate) fn existing_file(
    c: &mut Checker<'_>,
    key: &str,
    value: &str,
    base: &Path,
) -> Option<PathBuf> {
    let path = base.join(value);
    if path.is_file() {
        Some(path)
    } else {
        c.error(key, format!("no such file: {}", path.display()));
        None
    }
}

fn tls(c: &mut Checker<'_>, t: &file::TlsSection, base: &Path) -> Option<TlsConfig> {
    let cert = c.required("server.tls.cert_file", &t.cert_file).cloned();
    let key = c.required("server.tls.key_file", &t.key_file).cloned();
    let cert = cert.and_then(|f| existing_file(c, "server.tls.cert_file", &f, base));
    let key = key.and_then(|f| existing_file(c, "server.tls.key_file", &f, base));
    let ca = match &t.client_ca_file {
        Some(f) => Some(existing_file(c, "server.tls.client_ca_file", f, base)?),
        None => None,
    };
    Some(TlsConfig {
        cert_file: cert?,
        key_file: key?,
        client_ca_file: ca,
    })
}

fn log(c: &mut Checker<'_>, raw: &file::LogSection) -> LogConfig {
    let level = raw.level.clone().unwrap_or_else(|| "info".to_owned());
    if tracing_subscriber::EnvFilter::builder()
        .parse(&level)
        .is_err()
    {
        c.error(
            "log.level",
            format!(
                "`{level}` is not a level (error, warn, info, debug, trace) or filter directive"
            ),
        );
    }
    let format = match raw.format.as_deref() {
        None | Some("text") => LogFormat::Text,
        Some("json") => LogFormat::Json,
        Some(other) => {
            c.error(
                "log.format",
                format!("`{other}` is not a log format; use \"text\" or \"json\""),
            );
            LogFormat::Text
        }
    };
    LogConfig { level, format }
}

/// A configuration id: the label value of metrics and the name routes refer to.
pub(crate) fn check_id(
    c: &mut Checker<'_>,
    key: &str,
    id: Option<&String>,
    seen: &mut HashSet<String>,
) -> Arc<str> {
    let Some(id) = id else {
        c.error(key, "missing key");
        return Arc::from("");
    };
    if id.is_empty()
        || id.len() > 64
        || !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
    {
        c.error(
            key,
            format!("`{id}` must be 1 to 64 characters of letters, digits, '-', '_', '.' or ':'"),
        );
    } else if !seen.insert(id.clone()) {
        c.error(key, format!("duplicate id `{id}`"));
    }
    Arc::from(id.as_str())
}

/// Stands in for a URL that failed validation; the recorded error stops the load before use.
#[allow(clippy::expect_used)] // a constant that parses
fn placeholder_url() -> Url {
    Url::parse("http://invalid.invalid/").expect("a constant URL parses")
}

fn upstreams(
    c: &mut Checker<'_>,
    raw: &[file::UpstreamSection],
    base: &Path,
) -> Vec<UpstreamConfig> {
    let mut seen = HashSet::new();
    raw.iter()
        .enumerate()
        .map(|(i, r)| {
            let k = |field: &str| format!("upstream[{i}].{field}");
            let id = check_id(c, &k("id"), r.id.as_ref(), &mut seen);
            let url = c
                .required(&k("url"), &r.url)
                .and_then(|u| match Url::parse(u) {
                    Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => {
                        if url.query().is_some() || url.fragment().is_some() {
                            c.error(&k("url"), "must not have a query or fragment");
                        }
                        Some(url)
                    }
                    Ok(_) => {
                        c.error(
                            &k("url"),
                            format!("`{u}` must be an http:// or https:// URL with a host"),
                        );
                        None
                    }
                    Err(e) => {
                        c.error(&k("url"), format!("`{u}` is not a URL ({e})"));
                        None
                    }
                });
            let connect_timeout = c.duration(
                &k("connect_timeout"),
                r.connect_timeout.as_deref(),
                Duration::from_secs(2),
            );
            let timeout = c.duration(&k("timeout"), r.timeout.as_deref(), Duration::from_secs(60));
            for (field, d) in [("connect_timeout", connect_timeout), ("timeout", timeout)] {
                if d.is_zero() {
                    c.error(&k(field), "must be greater than zero");
                }
            }
            UpstreamConfig {
                id,
                url: url.unwrap_or_else(placeholder_url),
                connect_timeout,
                timeout,
                forward_authorization: r.forward_authorization.unwrap_or(false),
                preserve_host: r.preserve_host.unwrap_or(false),
                ca_file: r
                    .ca_file
                    .as_deref()
                    .and_then(|f| existing_file(c, &k("ca_file"), f, base)),
                client_cert_file: r
                    .client_cert_file
                    .as_deref()
                    .and_then(|f| existing_file(c, &k("client_cert_file"), f, base)),
                client_key_file: r
                    .client_key_file
                    .as_deref()
                    .and_then(|f| existing_file(c, &k("client_key_file"), f, base)),
                http2: r.http2.unwrap_or(false),
                max_concurrency: match r.max_concurrency {
                    Some(0) => {
                        c.error(&k("max_concurrency"), "must be at least 1");
                        None
                    }
                    other => other,
                },
                session: r
                    .session
                    .as_ref()
                    .and_then(|sess| super::session::session(c, &k("session"), sess, base)),
            }
        })
        .collect()
}
