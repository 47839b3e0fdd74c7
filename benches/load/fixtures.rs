//! What the scenarios run against, all in this process or started by it on 127.0.0.1: the JWKS
//! server, the introspection server, the minimal upstream, the OTLP sink, the fake legacy API,
//! the bench's own redis-server, the gateways; the tokens they accept; the plain HTTP the main
//! thread speaks to them (logins to the fake, the gateways' `/metrics`, the fake's counters); and
//! this process's CPU time.
//!
//! The HTTP servers are served by the gateway's own accept loop ([`tollgate::serve`]) rather
//! than one of the bench's, so that the bench has no server code of its own to keep up.

use std::fmt::Write as _;
use std::future::Future;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use prost::Message as _;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tollgate::demo::keys::SigningKey;
use tollgate::demo::legacy::{self, Counters, FakeLegacy, LegacyOptions};
use tollgate::{App, Body, Listeners};

/// The path requested on the protected route (and directly on the upstream).
pub(crate) const API_PATH: &str = "/api/orders/24.200.001";
/// The path requested on the public route.
pub(crate) const PUBLIC_PATH: &str = "/public/orders/24.200.001";
/// The upstream's answer to everything: 100 bytes of JSON.
pub(crate) const UPSTREAM_BODY: &str = r#"{"order":"24.200.001","customer":"C-1042","status":"open","total":"1234.56","currency":"EUR","n":3}"#;
/// The introspection client's credentials (`client_secret_basic`); URL-safe, so the Basic header
/// is `base64(id:secret)` as is.
pub(crate) const INTROSPECTION_CLIENT_ID: &str = "tollgate-bench";
pub(crate) const INTROSPECTION_SECRET: &str = "bench-secret-0001";
/// The fake legacy API's data endpoint the legacy scenarios request.
pub(crate) const LEGACY_PATH: &str = "/entity/Default/24.200.001/Echo";
/// What its answer contains (for the preflight).
pub(crate) const LEGACY_BODY: &str = r#""user":"admin""#;
/// The active login body (the fake's default user).
const LEGACY_LOGIN: &str = r#"{"name":"admin","password":"123","tenant":"MyStore","branch":"HQ"}"#;
/// The fake's seat limit.
pub(crate) const LEGACY_SEATS: u32 = 300;
/// The Redis persistence the bench runs redis-server with (an append-only file fsynced once a
/// second), as its arguments; the report quotes them.
pub(crate) const REDIS_PERSISTENCE: [&str; 6] = [
    "--save",
    "",
    "--appendonly",
    "yes",
    "--appendfsync",
    "everysec",
];

// === the HTTP servers ===

/// Serves `listener` with the gateway's accept loop until the runtime ends, answering every
/// request with `handler`.
fn spawn<F, Fut>(listener: TcpListener, handler: F)
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    // `serve` stops when its shutdown sender goes away: the task keeps it for as long as it runs.
    let (keep, shutdown) = watch::channel(false);
    tokio::spawn(async move {
        let _keep = keep;
        let handler = move |req, _remote| handler(req);
        tollgate::serve(listener, shutdown, Duration::from_secs(1), handler).await;
    });
}

/// A JSON answer.
fn json(status: StatusCode, body: Bytes) -> Response<Body> {
    let mut resp = Response::new(tollgate::proxy::full(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// Binds a fresh 127.0.0.1 port.
async fn bind() -> anyhow::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    Ok((listener, addr))
}

/// The JWKS server: `jwks` at `GET /jwks`. Returns its address.
pub(crate) async fn jwks_server(jwks: Bytes) -> anyhow::Result<SocketAddr> {
    let (listener, addr) = bind().await?;
    spawn(listener, move |req| {
        let resp = match req.uri().path() {
            "/jwks" => json(StatusCode::OK, jwks.clone()),
            _ => json(StatusCode::NOT_FOUND, Bytes::from_static(b"{}")),
        };
        std::future::ready(resp)
    });
    Ok(addr)
}

/// The upstream: 200 with `UPSTREAM_BODY` to everything. Returns its address.
pub(crate) async fn upstream() -> anyhow::Result<SocketAddr> {
    let (listener, addr) = bind().await?;
    spawn(listener, |_| {
        let body = Bytes::from_static(UPSTREAM_BODY.as_bytes());
        std::future::ready(json(StatusCode::OK, body))
    });
    Ok(addr)
}

/// A minimal RFC 7662 introspection endpoint at `POST /introspect`: it counts every call in
/// `calls`, wants `client_secret_basic` with the bench's credentials (else 401
/// `invalid_client`), and answers `active: true` (scope and aud `api`, `iss` its own base URL,
/// one hour left) for every form `token` starting with `opaque-`, `active: false` for anything
/// else. Returns its base URL, the introspection issuer.
pub(crate) async fn introspection_server(calls: Arc<AtomicU64>) -> anyhow::Result<String> {
    let (listener, addr) = bind().await?;
    let issuer = Arc::new(format!("http://{addr}"));
    let expected = Arc::new(format!(
        "Basic {}",
        STANDARD.encode(format!("{INTROSPECTION_CLIENT_ID}:{INTROSPECTION_SECRET}"))
    ));
    let url = issuer.to_string();
    spawn(listener, move |req| {
        let (expected, issuer, calls) = (expected.clone(), issuer.clone(), calls.clone());
        async move {
            let (status, answer) = introspect(req, &expected, &issuer, &calls).await;
            json(status, Bytes::from(answer.to_string()))
        }
    });
    Ok(url)
}

/// One introspection request: the status and the JSON answer.
async fn introspect(
    req: Request<Incoming>,
    expected_auth: &str,
    issuer: &str,
    calls: &AtomicU64,
) -> (StatusCode, serde_json::Value) {
    if req.method() != http::Method::POST || req.uri().path() != "/introspect" {
        return (StatusCode::NOT_FOUND, json!({}));
    }
    calls.fetch_add(1, Ordering::Relaxed);
    let authorized = req
        .headers()
        .get(header::AUTHORIZATION)
        .is_some_and(|v| v.as_bytes() == expected_auth.as_bytes());
    let Ok(body) = req.into_body().collect().await else {
        return (StatusCode::BAD_REQUEST, json!({"error": "invalid_request"}));
    };
    if !authorized {
        return (StatusCode::UNAUTHORIZED, json!({"error": "invalid_client"}));
    }
    let body = body.to_bytes();
    let token = url::form_urlencoded::parse(&body)
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default();
    if !token.starts_with("opaque-") {
        return (StatusCode::OK, json!({"active": false}));
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    (
        StatusCode::OK,
        json!({
            "active": true, "scope": "api", "aud": "api", "iss": issuer, "sub": "bench-user",
            "client_id": "bench", "token_type": "Bearer", "iat": now, "exp": now + 3600,
        }),
    )
}

/// What an OTLP sink has received: export requests, their body bytes, the spans in them, and the
/// requests it refused (not `POST /v1/traces`, or a body that is not an export request).
#[derive(Default)]
pub(crate) struct Exports {
    requests: AtomicU64,
    bytes: AtomicU64,
    spans: AtomicU64,
    refused: AtomicU64,
}

/// [`Exports`] read at one moment; the difference of two readings is what came in between.
#[derive(Clone, Copy, Default)]
pub(crate) struct ExportCount {
    pub(crate) requests: u64,
    pub(crate) bytes: u64,
    pub(crate) spans: u64,
    pub(crate) refused: u64,
}

impl Exports {
    pub(crate) fn count(&self) -> ExportCount {
        ExportCount {
            requests: self.requests.load(Ordering::SeqCst),
            bytes: self.bytes.load(Ordering::SeqCst),
            spans: self.spans.load(Ordering::SeqCst),
            refused: self.refused.load(Ordering::SeqCst),
        }
    }
}

impl std::ops::Sub for ExportCount {
    type Output = ExportCount;
    fn sub(self, before: ExportCount) -> ExportCount {
        ExportCount {
            requests: self.requests - before.requests,
            bytes: self.bytes - before.bytes,
            spans: self.spans - before.spans,
            refused: self.refused - before.refused,
        }
    }
}

/// An OTLP/HTTP trace sink: `POST /v1/traces` answered 200 with `content-type:
/// application/x-protobuf` and an empty body (an empty `ExportTraceServiceResponse`: all
/// accepted), counted in `exports`; anything else 404, and a body that does not parse 400, both
/// counted as refused. Returns its base URL, the gateway's `otlp_endpoint`.
pub(crate) async fn otlp_sink(exports: Arc<Exports>) -> anyhow::Result<String> {
    let (listener, addr) = bind().await?;
    spawn(listener, move |req: Request<Incoming>| {
        let exports = exports.clone();
        async move {
            let status = receive_export(req, &exports).await;
            if status != StatusCode::OK {
                exports.refused.fetch_add(1, Ordering::Relaxed);
            }
            let mut resp = Response::new(tollgate::proxy::full(Bytes::new()));
            *resp.status_mut() = status;
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/x-protobuf"),
            );
            resp
        }
    });
    Ok(format!("http://{addr}"))
}

/// One request to the OTLP sink: counted when it is an export; the answer's status.
async fn receive_export(req: Request<Incoming>, exports: &Exports) -> StatusCode {
    if req.method() != http::Method::POST || req.uri().path() != "/v1/traces" {
        return StatusCode::NOT_FOUND;
    }
    let Ok(body) = req.into_body().collect().await else {
        return StatusCode::BAD_REQUEST;
    };
    let body = body.to_bytes();
    let Ok(export) = otlp::ExportTraceServiceRequest::decode(&body[..]) else {
        return StatusCode::BAD_REQUEST;
    };
    let spans: usize = export
        .resource_spans
        .iter()
        .flat_map(|r| &r.scope_spans)
        .map(|s| s.spans.len())
        .sum();
    exports.requests.fetch_add(1, Ordering::Relaxed);
    exports
        .bytes
        .fetch_add(body.len() as u64, Ordering::Relaxed);
    exports.spans.fetch_add(spans as u64, Ordering::Relaxed);
    StatusCode::OK
}

/// Just enough of OTLP's messages to count the spans of an export request: the repeated fields
/// that lead to the spans, with the field numbers of `opentelemetry/proto/collector/trace/v1`
/// and `opentelemetry/proto/trace/v1` (as in `opentelemetry-proto`'s generated types). prost
/// skips every other field as unknown, and a span has no field here, so the sink pays a length
/// prefix per span instead of decoding its ids, names and attributes: its CPU time counts in the
/// bench process's, which the tracing scenarios report.
mod otlp {
    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct ExportTraceServiceRequest {
        #[prost(message, repeated, tag = "1")]
        pub(super) resource_spans: Vec<ResourceSpans>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct ResourceSpans {
        #[prost(message, repeated, tag = "2")]
        pub(super) scope_spans: Vec<ScopeSpans>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct ScopeSpans {
        #[prost(message, repeated, tag = "2")]
        pub(super) spans: Vec<Span>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct Span {}
}

/// A fake legacy API as every legacy scenario has it: `LEGACY_SEATS` seats and no `.ASPXAUTH`
/// renewals, because wrk replays fixed cookies and cannot follow renewed ones (the same in every
/// legacy scenario, so that they stay comparable).
pub(crate) fn fake_legacy() -> FakeLegacy {
    FakeLegacy::new(LegacyOptions {
        max_api_users: LEGACY_SEATS,
        renew_auth_every: 0,
        ..LegacyOptions::default()
    })
}

/// Serves `fake` on a fresh port until the returned task is aborted. Returns its address.
pub(crate) async fn serve_legacy(
    fake: &FakeLegacy,
) -> anyhow::Result<(SocketAddr, JoinHandle<()>)> {
    let (listener, addr) = bind().await?;
    Ok((addr, fake.spawn(listener)))
}

// === the gateways ===

/// Starts a gateway on ephemeral loopback listeners and waits (up to 10 s) until it is ready (has
/// keys, knows its introspection endpoint).
pub(crate) async fn start_gateway(toml: &str) -> anyhow::Result<App> {
    let config =
        tollgate::config::from_toml_str(toml).map_err(|e| anyhow::anyhow!("configuration: {e}"))?;
    let app = App::start(&config, Listeners::ephemeral().await?)?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !app.gateway.is_ready() {
        if tokio::time::Instant::now() > deadline {
            bail!("the gateway was not ready (JWKS, introspection endpoint) within 10 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(app)
}

/// Shuts `apps` down one after the other. A session gateway logs out its sessions at shutdown
/// (within 10 s), hence the bound.
pub(crate) async fn shutdown(apps: impl IntoIterator<Item = App>) {
    for app in apps {
        let _ = tokio::time::timeout(Duration::from_secs(12), app.shutdown()).await;
    }
}

/// The gateway's admin `/metrics` text.
fn metrics(admin: SocketAddr) -> anyhow::Result<String> {
    let (status, body) = http_get(admin, "/metrics", None, None)?;
    if status != 200 {
        bail!("GET {admin}/metrics: {status}");
    }
    Ok(body)
}

/// The sum of the gateway's `tollgate_store_errors_total` (every `op`) from its admin `/metrics`.
pub(crate) fn store_error_count(admin: SocketAddr) -> anyhow::Result<u64> {
    Ok(metrics(admin)?
        .lines()
        .filter(|l| l.starts_with("tollgate_store_errors_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64)
}

/// The gateway's token-cache counters (hits, misses) of `cache` (`jwt` or `introspection`) from
/// its admin `/metrics`.
pub(crate) fn cache_counters(admin: SocketAddr, cache: &str) -> anyhow::Result<(u64, u64)> {
    let label = format!(r#"cache="{cache}""#);
    let body = metrics(admin)?;
    let (mut hits, mut misses) = (0, 0);
    for line in body.lines() {
        if !line.starts_with("tollgate_token_cache_requests_total{") || !line.contains(&label) {
            continue;
        }
        let value = line
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0) as u64;
        if line.contains(r#"result="hit""#) {
            hits += value;
        } else if line.contains(r#"result="miss""#) {
            misses += value;
        }
    }
    Ok((hits, misses))
}

// === the tokens ===

/// Signs `count` distinct valid tokens (scope `api`, one hour), on every core; with `grants`,
/// each with its own `grant_id` claim.
pub(crate) fn mint(
    key: &SigningKey,
    issuer: &str,
    count: usize,
    tag: &str,
    grants: bool,
) -> anyhow::Result<Vec<String>> {
    mint_lasting(key, issuer, count, tag, grants, 3600)
}

/// [`mint`] with tokens valid for `ttl` seconds.
pub(crate) fn mint_lasting(
    key: &SigningKey,
    issuer: &str,
    count: usize,
    tag: &str,
    grants: bool,
    ttl: u64,
) -> anyhow::Result<Vec<String>> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let sign = |i: usize| {
        let mut claims = json!({
            "iss": issuer, "aud": "api", "sub": format!("user-{i}"), "client_id": "bench",
            "scope": "api", "iat": now, "exp": now + ttl, "jti": format!("{tag}-{i}"),
        });
        if grants {
            claims["grant_id"] = json!(format!("{tag}-grant-{i}"));
        }
        key.sign(&claims).map_err(anyhow::Error::msg)
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = count.div_ceil(cores).max(1);
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..count)
            .step_by(chunk)
            .map(|start| {
                let end = (start + chunk).min(count);
                scope.spawn(move || (start..end).map(sign).collect::<anyhow::Result<Vec<_>>>())
            })
            .collect();
        let mut all = Vec::with_capacity(count);
        for h in handles {
            all.extend(h.join().expect("signing thread panicked")?);
        }
        Ok(all)
    })
}

/// `count` distinct opaque tokens, `opaque-<32 hex digits>` (random, then the index).
pub(crate) fn opaque_tokens(count: usize) -> Vec<String> {
    (0..count)
        .map(|i| format!("opaque-{:016x}{i:016x}", rand::random::<u64>()))
        .collect()
}

// === plain HTTP from the main thread ===

/// One request with `Connection: close` (and a `Content-Length` when there is a body); returns
/// the status code, the response head and the body.
fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> anyhow::Result<(u16, String, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        let _ = write!(req, "{name}: {value}\r\n");
    }
    if let Some(b) = body {
        let _ = write!(req, "Content-Length: {}\r\n\r\n{b}", b.len());
    } else {
        req.push_str("\r\n");
    }
    stream.write_all(req.as_bytes())?;
    let mut resp = String::new();
    stream.read_to_string(&mut resp)?;
    let status = resp
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .with_context(|| format!("not an HTTP response: {resp:?}"))?;
    let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
    Ok((status, head.to_owned(), body.to_owned()))
}

/// One `GET`, with a bearer token and a `Cookie` if given; returns the status code and the body.
pub(crate) fn http_get(
    addr: SocketAddr,
    path: &str,
    token: Option<&str>,
    cookie: Option<&str>,
) -> anyhow::Result<(u16, String)> {
    let bearer = token.map(|t| format!("Bearer {t}"));
    let mut headers = Vec::new();
    if let Some(b) = &bearer {
        headers.push(("Authorization", b.as_str()));
    }
    if let Some(c) = cookie {
        headers.push(("Cookie", c));
    }
    let (status, _, body) = http_request(addr, "GET", path, &headers, None)?;
    Ok((status, body))
}

/// Logs in to the fake legacy API; returns the `Cookie` header value of the new session
/// (`ASP.NET_SessionId` and `.ASPXAUTH` from the `Set-Cookie`s).
pub(crate) fn legacy_login(addr: SocketAddr) -> anyhow::Result<String> {
    let (status, head, body) = http_request(
        addr,
        "POST",
        "/entity/auth/login",
        &[("Content-Type", "application/json")],
        Some(LEGACY_LOGIN),
    )?;
    if status != 204 {
        bail!("login: expected 204, got {status}: {body}");
    }
    let cookie = |name: &str| {
        head.lines()
            .filter_map(|l| l.split_once(':'))
            .filter(|(h, _)| h.trim().eq_ignore_ascii_case("set-cookie"))
            .find_map(|(_, v)| {
                let (n, value) = v.trim().split(';').next()?.split_once('=')?;
                (n.trim() == name).then(|| value.trim().to_owned())
            })
            .with_context(|| format!("login: no {name} cookie in {head}"))
    };
    Ok(format!(
        "{}={}; {}={}",
        legacy::SESSION_COOKIE,
        cookie(legacy::SESSION_COOKIE)?,
        legacy::AUTH_COOKIE,
        cookie(legacy::AUTH_COOKIE)?
    ))
}

/// Logs the session of `cookie` out of the fake legacy API (`Content-Length: 0`).
pub(crate) fn legacy_logout(addr: SocketAddr, cookie: &str) -> anyhow::Result<()> {
    let (status, _, body) = http_request(
        addr,
        "POST",
        "/entity/auth/logout",
        &[("Cookie", cookie)],
        Some(""),
    )?;
    if status != 204 {
        bail!("logout: expected 204, got {status}: {body}");
    }
    Ok(())
}

// === the fake's counters ===

/// The role of a scenario against the fake legacy API.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Legacy {
    Direct,
    NoSession,
    /// Through the session layer: the pre-made sessions are logged out first.
    Sessions,
    /// Through the session layer in front of a fake of its own (the session-store scenarios).
    Store,
}

impl Legacy {
    /// Whether tollgate's session layer holds the fake's sessions (the checked scenarios).
    pub(crate) fn through_sessions(self) -> bool {
        matches!(self, Legacy::Sessions | Legacy::Store)
    }
}

/// The fake's counters over one legacy scenario (from its preflight to the end of its
/// measurement).
pub(crate) struct LegacyStats {
    pub(crate) role: Legacy,
    pub(crate) logins: u64,
    /// Logins during the measurement only.
    pub(crate) logins_measured: u64,
    pub(crate) mixed_session_cookies: u64,
    pub(crate) foreign_cookie: u64,
    pub(crate) authorization_header_seen: u64,
    /// `Sessions`: the highest `max_in_flight` of tollgate's own sessions; `Store`: that or the
    /// fake's `max_concurrency_per_session`, whichever is higher (every session of its fake is
    /// tollgate's); otherwise the fake's `max_concurrency_per_session` so far (cumulative).
    pub(crate) max_concurrency: u64,
    /// `Store`: the fake's live sessions after the gateways' shutdown.
    pub(crate) seats_after_shutdown: Option<u64>,
    /// Through the session layer: the logins expected (one per grant the scenario uses).
    pub(crate) expected_logins: u64,
}

impl LegacyStats {
    pub(crate) fn leaks(&self) -> u64 {
        self.mixed_session_cookies + self.foreign_cookie + self.authorization_header_seen
    }
}

/// The fake's counters over one legacy scenario: `before` is from before its preflight.
pub(crate) fn legacy_stats(
    fake: &FakeLegacy,
    role: Legacy,
    before: &Counters,
    logins_measured: u64,
    expected_logins: u64,
) -> LegacyStats {
    let now = fake.counters();
    // Every live session is tollgate's (the pre-made ones were logged out, or never existed).
    let live = || {
        fake.state()["sessions"]
            .as_array()
            .map(|all| {
                all.iter()
                    .filter_map(|s| s["max_in_flight"].as_u64())
                    .max()
                    .unwrap_or(0)
            })
            .unwrap_or(0)
    };
    let max_concurrency = match role {
        Legacy::Sessions => live(),
        // Every session this fake ever had was tollgate's.
        Legacy::Store => live().max(now.max_concurrency_per_session),
        Legacy::Direct | Legacy::NoSession => now.max_concurrency_per_session,
    };
    LegacyStats {
        role,
        logins: now.logins_ok - before.logins_ok,
        logins_measured,
        expected_logins,
        mixed_session_cookies: now.mixed_session_cookies - before.mixed_session_cookies,
        foreign_cookie: now.foreign_cookie - before.foreign_cookie,
        authorization_header_seen: now.authorization_header_seen - before.authorization_header_seen,
        max_concurrency,
        seats_after_shutdown: None,
    }
}

// === this process's CPU time ===

/// The CPU time this process has used so far (user + system, summed by the kernel over all its
/// threads: the gateways, the in-process servers, the trace exporters' threads; not wrk or
/// redis-server, which are processes of their own), in seconds; `None` without `/proc`.
pub(crate) fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: count from the last `)`.
    let fields: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
    // fields[0] is field 3 (state); utime and stime are fields 14 and 15, in clock ticks.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / clock_ticks() as f64)
}

/// Clock ticks per second (`getconf CLK_TCK`; 100 on Linux when it cannot be asked).
fn clock_ticks() -> u64 {
    static TICKS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .stdin(Stdio::null())
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100)
    })
}

// === the bench's redis-server ===

/// A redis-server of the bench's own on a free 127.0.0.1 port, with an append-only file
/// (`REDIS_PERSISTENCE`) in `dir`; killed on drop.
pub(crate) struct RedisServer {
    pub(crate) port: u16,
    child: Child,
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl RedisServer {
    pub(crate) fn start(dir: &Path) -> anyhow::Result<RedisServer> {
        std::fs::create_dir_all(dir)?;
        // redis-server cannot take port 0 and report it: find a free port, then start on it
        // (again if another process took it in between).
        for _ in 0..20 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .port();
            let child = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(REDIS_PERSISTENCE)
                .arg("--dir")
                .arg(dir)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("redis-server is not installed (apt-get install redis-server)")?;
            let mut server = RedisServer { port, child };
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if server.ping() {
                    return Ok(server);
                }
                if server.child.try_wait()?.is_some() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        bail!("could not start redis-server on a free port")
    }

    fn ping(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
        let mut buf = [0u8; 7];
        s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
    }

    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// The server's processed-command count and CPU seconds (user + system) so far.
    pub(crate) fn commands(&self) -> anyhow::Result<(u64, f64)> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port))?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        s.write_all(b"INFO everything\r\n")?;
        let mut text = String::new();
        let mut buf = vec![0u8; 64 * 1024];
        // Read until the reply's last section is in (the bulk string is a few KiB).
        while !text.contains("# Keyspace") {
            let n = s.read(&mut buf)?;
            if n == 0 {
                break;
            }
            text.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .map(str::trim)
                .map(str::to_owned)
        };
        let commands = field("total_commands_processed:")
            .and_then(|v| v.parse().ok())
            .context("INFO without total_commands_processed")?;
        let cpu = |name: &str| {
            field(name)
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        Ok((commands, cpu("used_cpu_user:") + cpu("used_cpu_sys:")))
    }
}

/// `redis-server --version`'s `v=…`; fails at once when redis-server is not installed.
pub(crate) fn redis_version() -> anyhow::Result<String> {
    let out = Command::new("redis-server")
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .context("redis-server is not installed (apt-get install redis-server)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .split_whitespace()
        .find_map(|w| w.strip_prefix("v="))
        .unwrap_or("unknown")
        .to_owned())
}
