//! Every metric tollgate exposes: the names (one constant each, so dashboards, alert rules and
//! docs/metrics.md can be checked against this file), the registry, and typed handles.
//!
//! Labels are bounded by construction: route ids and issuer / upstream ids come from the
//! configuration, decisions and results from small enums, methods from a fixed list. Nothing taken
//! from request data (a path, a subject, a token) ever becomes a label value.

use std::sync::{OnceLock, RwLock};

use http::Method;
use prometheus::{
    Encoder, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

pub const REQUESTS_TOTAL: &str = "tollgate_requests_total";
pub const REQUEST_DURATION_SECONDS: &str = "tollgate_request_duration_seconds";
pub const UPSTREAM_DURATION_SECONDS: &str = "tollgate_upstream_duration_seconds";
pub const AUTH_DECISIONS_TOTAL: &str = "tollgate_auth_decisions_total";
pub const TOKEN_CACHE_REQUESTS_TOTAL: &str = "tollgate_token_cache_requests_total";
pub const TOKEN_CACHE_ENTRIES: &str = "tollgate_token_cache_entries";
pub const JWKS_REFRESH_TOTAL: &str = "tollgate_jwks_refresh_total";
pub const JWKS_KEYS: &str = "tollgate_jwks_keys";
pub const JWKS_LAST_SUCCESS_TIMESTAMP_SECONDS: &str =
    "tollgate_jwks_last_success_timestamp_seconds";
pub const INTROSPECTION_REQUESTS_TOTAL: &str = "tollgate_introspection_requests_total";
pub const INTROSPECTION_DURATION_SECONDS: &str = "tollgate_introspection_duration_seconds";
pub const INTROSPECTION_BREAKER_OPEN: &str = "tollgate_introspection_breaker_open";
pub const UPSTREAM_SESSIONS: &str = "tollgate_upstream_sessions";
pub const UPSTREAM_SEATS_IN_USE: &str = "tollgate_upstream_seats_in_use";
pub const UPSTREAM_LOGINS_TOTAL: &str = "tollgate_upstream_logins_total";
pub const UPSTREAM_LOGOUTS_TOTAL: &str = "tollgate_upstream_logouts_total";
pub const UPSTREAM_EVICTIONS_TOTAL: &str = "tollgate_upstream_evictions_total";
pub const UPSTREAM_RELOGINS_TOTAL: &str = "tollgate_upstream_relogins_total";
pub const UPSTREAM_SESSION_QUEUE_DEPTH: &str = "tollgate_upstream_session_queue_depth";
pub const UPSTREAM_ADMISSION_WAIT_SECONDS: &str = "tollgate_upstream_admission_wait_seconds";
pub const UPSTREAM_LOGIN_CIRCUIT_OPEN: &str = "tollgate_upstream_login_circuit_open";
pub const STORE_ERRORS_TOTAL: &str = "tollgate_store_errors_total";
pub const STORE_OPERATION_DURATION_SECONDS: &str = "tollgate_store_operation_duration_seconds";
pub const STORE_RESETS_TOTAL: &str = "tollgate_store_resets_total";
pub const FLEET_MEMBERS: &str = "tollgate_fleet_members";
pub const FLEET_REPORTER: &str = "tollgate_fleet_reporter";
pub const CONFIG_RELOADS_TOTAL: &str = "tollgate_config_reloads_total";
pub const CONFIG_LAST_RELOAD_SUCCESS_TIMESTAMP_SECONDS: &str =
    "tollgate_config_last_reload_success_timestamp_seconds";
pub const BUILD_INFO: &str = "tollgate_build_info";
pub const REQUESTS_IN_FLIGHT: &str = "tollgate_requests_in_flight";
pub const AUTH_FAILURES_TOTAL: &str = "tollgate_auth_failures_total";
pub const TLS_CERTIFICATE_EXPIRY_TIMESTAMP_SECONDS: &str =
    "tollgate_tls_certificate_expiry_timestamp_seconds";

/// The `reason` values of `tollgate_auth_failures_total`: a fixed set, so the label stays bounded.
pub const AUTH_FAILURE_REASONS: [&str; 12] = [
    "malformed",
    "signature",
    "expired",
    "not_yet_valid",
    "issuer",
    "audience",
    "algorithm",
    "key_unknown",
    "typ",
    "revoked",
    "inactive",
    "introspection_error",
];
pub const CONNECTIONS_OPEN: &str = "tollgate_connections_open";
pub const CONNECTIONS_WAITING_TOTAL: &str = "tollgate_connections_waiting_total";
pub const UPSTREAM_RESPONSES_TOTAL: &str = "tollgate_upstream_responses_total";
pub const UPSTREAM_CONNECTIONS_OPENED_TOTAL: &str = "tollgate_upstream_connections_opened_total";
pub const UPSTREAM_CONNECTIONS_IDLE: &str = "tollgate_upstream_connections_idle";
pub const UPSTREAM_RETRIES_TOTAL: &str = "tollgate_upstream_retries_total";
pub const GATEWAY_OVERHEAD_SECONDS: &str = "tollgate_gateway_overhead_seconds";
pub const JWKS_FETCH_DURATION_SECONDS: &str = "tollgate_jwks_fetch_duration_seconds";

/// The gateway's own time: from 50 µs (a cached token and a header edit) to a second (a JWKS
/// fetch, a login or a queue in the path).
const OVERHEAD_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

/// Latency buckets in seconds: fine below 10 ms where the gateway's own cost lives, coarse above.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

/// The outcome of the authentication and authorisation steps for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allowed,
    Public,
    MissingToken,
    InvalidRequest,
    InvalidToken,
    InsufficientScope,
    /// RFC 9470: the token's authentication falls short of the route's step-up requirement.
    InsufficientUserAuthentication,
    IdpUnavailable,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Allowed => "allowed",
            Decision::Public => "public",
            Decision::MissingToken => "missing_token",
            Decision::InvalidRequest => "invalid_request",
            Decision::InvalidToken => "invalid_token",
            Decision::InsufficientScope => "insufficient_scope",
            Decision::InsufficientUserAuthentication => "insufficient_user_authentication",
            Decision::IdpUnavailable => "idp_unavailable",
        }
    }
}

impl Decision {
    const COUNT: usize = Decision::IdpUnavailable as usize + 1;

    fn index(self) -> usize {
        self as usize
    }
}

/// One route's per-request series, for [`RouteSeries::record`]: each label lookup is made once
/// and its handle kept, instead of hashing the route, method and status labels on every
/// request. One per route per configuration (a reload builds new ones).
pub struct RouteSeries {
    route: Box<str>,
    requests: IntCounterVec,
    request_duration: HistogramVec,
    auth_decisions: IntCounterVec,
    duration: OnceLock<Histogram>,
    decisions: [OnceLock<IntCounter>; Decision::COUNT],
    /// (method label, status) pairs seen on this route: few, so a short list.
    by_method_status: RwLock<Vec<(&'static str, u16, IntCounter)>>,
}

/// One upstream's per-attempt series, for [`UpstreamSeries::observe`]: like [`RouteSeries`],
/// each label lookup is made once (when first used, so that the exposition only shows classes
/// that happened) and its handle kept. One per upstream per configuration.
pub struct UpstreamSeries {
    upstream: Box<str>,
    upstream_duration: HistogramVec,
    upstream_responses: IntCounterVec,
    duration: OnceLock<Histogram>,
    /// `1xx` … `5xx`, then `error` (no answer).
    classes: [OnceLock<IntCounter>; 6],
}

impl UpstreamSeries {
    const CLASSES: [&'static str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "error"];

    /// One upstream attempt: its time, and its answer's class (`None`: no answer at all).
    pub fn observe(&self, elapsed_secs: f64, status: Option<u16>) {
        self.duration
            .get_or_init(|| self.upstream_duration.with_label_values(&[&*self.upstream]))
            .observe(elapsed_secs);
        let class = match status {
            Some(100..=199) => 0,
            Some(200..=299) => 1,
            Some(300..=399) => 2,
            Some(400..=499) => 3,
            Some(_) => 4,
            None => 5,
        };
        self.classes[class]
            .get_or_init(|| {
                self.upstream_responses
                    .with_label_values(&[&*self.upstream, Self::CLASSES[class]])
            })
            .inc();
    }
}

impl std::fmt::Debug for RouteSeries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteSeries")
            .field("route", &self.route)
            .finish_non_exhaustive()
    }
}

impl RouteSeries {
    /// One answered request on this route: the same series as [`Metrics::record_request`].
    pub fn record(&self, method: &Method, status: u16, decision: Option<Decision>, secs: f64) {
        let method = method_label(method);
        self.count_request(method, status);
        self.duration
            .get_or_init(|| self.request_duration.with_label_values(&[&*self.route]))
            .observe(secs);
        if let Some(d) = decision {
            self.decisions[d.index()]
                .get_or_init(|| {
                    self.auth_decisions
                        .with_label_values(&[&*self.route, d.as_str()])
                })
                .inc();
        }
    }

    /// Counts one request: under the read lock when the pair was seen before (no clone of
    /// the counter), else after resolving it once.
    fn count_request(&self, method: &'static str, status: u16) {
        let seen = |list: &[(&'static str, u16, IntCounter)]| {
            list.iter()
                .find(|(m, s, _)| *m == method && *s == status)
                .map(|(_, _, c)| c.inc())
                .is_some()
        };
        if self.by_method_status.read().is_ok_and(|l| seen(&l)) {
            return;
        }
        let mut buf = itoa_buf();
        let counter =
            self.requests
                .with_label_values(&[&*self.route, method, fmt_status(&mut buf, status)]);
        counter.inc();
        if let Ok(mut list) = self.by_method_status.write() {
            if !list.iter().any(|(m, s, _)| *m == method && *s == status) {
                list.push((method, status, counter));
            }
        }
    }
}

/// Result label of a cache lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheResult {
    Hit,
    Miss,
    /// A cached "inactive" answer (introspection).
    NegativeHit,
    /// An expired positive answer served while the introspection endpoint is failing.
    StaleHit,
}

impl CacheResult {
    const COUNT: usize = 4;

    fn as_str(self) -> &'static str {
        match self {
            CacheResult::Hit => "hit",
            CacheResult::Miss => "miss",
            CacheResult::NegativeHit => "negative_hit",
            CacheResult::StaleHit => "stale_hit",
        }
    }
}

/// Result label of one introspection call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IntrospectionResult {
    Active,
    Inactive,
    Error,
}

impl IntrospectionResult {
    fn as_str(self) -> &'static str {
        match self {
            IntrospectionResult::Active => "active",
            IntrospectionResult::Inactive => "inactive",
            IntrospectionResult::Error => "error",
        }
    }
}

/// Counts a request out of `tollgate_requests_in_flight` when dropped (a borrow: no handle is
/// cloned per request).
pub struct InFlightGuard<'a>(&'a prometheus::IntGauge);

impl Drop for InFlightGuard<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// One listener's connection series, resolved once.
#[derive(Clone)]
pub struct ListenerMetrics {
    open: prometheus::IntGauge,
    waiting: prometheus::IntCounter,
}

impl ListenerMetrics {
    /// A connection was accepted (after a wait for a place when `waited`); the guard counts it
    /// out of `tollgate_connections_open` when the connection ends.
    pub fn accepted(&self, waited: bool) -> OpenGuard {
        if waited {
            self.waiting.inc();
        }
        self.open.inc();
        OpenGuard(self.open.clone())
    }
}

/// Counts a connection out of `tollgate_connections_open` when dropped.
pub struct OpenGuard(prometheus::IntGauge);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The metric families, registered once in their own registry.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    request_duration: HistogramVec,
    upstream_duration: HistogramVec,
    auth_decisions: IntCounterVec,
    token_cache: IntCounterVec,
    token_cache_entries: IntGaugeVec,
    jwks_refresh: IntCounterVec,
    jwks_keys: IntGaugeVec,
    jwks_last_success: GaugeVec,
    introspection_requests: IntCounterVec,
    introspection_duration: HistogramVec,
    introspection_breaker: IntGaugeVec,
    upstream_sessions: IntGaugeVec,
    upstream_seats: IntGaugeVec,
    upstream_logins: IntCounterVec,
    upstream_logouts: IntCounterVec,
    upstream_evictions: IntCounterVec,
    upstream_relogins: IntCounterVec,
    upstream_connections_opened: IntCounterVec,
    upstream_connections_idle: IntGaugeVec,
    upstream_retries: IntCounterVec,
    upstream_queue: IntGaugeVec,
    upstream_admission: HistogramVec,
    upstream_circuit: IntGaugeVec,
    store_errors: IntCounterVec,
    store_duration: HistogramVec,
    store_resets: IntCounterVec,
    fleet_members: prometheus::IntGauge,
    fleet_reporter: prometheus::IntGauge,
    config_reloads: IntCounterVec,
    config_last_success: prometheus::Gauge,
    requests_in_flight: prometheus::IntGauge,
    auth_failures: IntCounterVec,
    tls_expiry: IntGaugeVec,
    connections_open: IntGaugeVec,
    connections_waiting: IntCounterVec,
    upstream_responses: IntCounterVec,
    overhead: prometheus::Histogram,
    jwks_fetch_duration: HistogramVec,
    /// `token_cache`'s series of the two caches, resolved at their first use: a cache lookup
    /// is counted on every request with a token, so it takes no label lookup after that.
    token_cache_series: std::sync::Arc<[[OnceLock<IntCounter>; CacheResult::COUNT]; 2]>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Metrics {
    /// Builds and registers every family. Fails only on a programming error (a bad name or a
    /// family registered twice), which the unit test below catches.
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let counter =
            |name: &str, help: &str, labels: &[&str]| -> Result<IntCounterVec, prometheus::Error> {
                let c = IntCounterVec::new(Opts::new(name, help), labels)?;
                registry.register(Box::new(c.clone()))?;
                Ok(c)
            };
        let histogram =
            |name: &str, help: &str, labels: &[&str]| -> Result<HistogramVec, prometheus::Error> {
                let h = HistogramVec::new(
                    HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()),
                    labels,
                )?;
                registry.register(Box::new(h.clone()))?;
                Ok(h)
            };
        let int_gauge =
            |name: &str, help: &str, labels: &[&str]| -> Result<IntGaugeVec, prometheus::Error> {
                let g = IntGaugeVec::new(Opts::new(name, help), labels)?;
                registry.register(Box::new(g.clone()))?;
                Ok(g)
            };

        let metrics = Metrics {
            requests: counter(
                REQUESTS_TOTAL,
                "Requests answered, by route id (or none), method and status.",
                &["route", "method", "status"],
            )?,
            request_duration: histogram(
                REQUEST_DURATION_SECONDS,
                "Time from request received to response headers sent, by route.",
                &["route"],
            )?,
            upstream_duration: histogram(
                UPSTREAM_DURATION_SECONDS,
                "Time the upstream took to answer with response headers, by upstream.",
                &["upstream"],
            )?,
            auth_decisions: counter(
                AUTH_DECISIONS_TOTAL,
                "Authentication and authorisation decisions, by route and decision.",
                &["route", "decision"],
            )?,
            token_cache: counter(
                TOKEN_CACHE_REQUESTS_TOTAL,
                "Verified-token cache lookups, by cache and result.",
                &["cache", "result"],
            )?,
            token_cache_entries: int_gauge(
                TOKEN_CACHE_ENTRIES,
                "Entries held by a token cache (approximate).",
                &["cache"],
            )?,
            jwks_refresh: counter(
                JWKS_REFRESH_TOTAL,
                "JWKS fetches, by issuer and result (success or failure).",
                &["issuer", "result"],
            )?,
            jwks_keys: int_gauge(
                JWKS_KEYS,
                "Usable keys in the issuer's current key set.",
                &["issuer"],
            )?,
            jwks_last_success: {
                let g = GaugeVec::new(
                    Opts::new(
                        JWKS_LAST_SUCCESS_TIMESTAMP_SECONDS,
                        "Unix time of the issuer's last successful JWKS fetch.",
                    ),
                    &["issuer"],
                )?;
                registry.register(Box::new(g.clone()))?;
                g
            },
            introspection_requests: counter(
                INTROSPECTION_REQUESTS_TOTAL,
                "RFC 7662 introspection calls, by issuer and result (active, inactive, error).",
                &["issuer", "result"],
            )?,
            introspection_duration: histogram(
                INTROSPECTION_DURATION_SECONDS,
                "Duration of introspection calls, by issuer.",
                &["issuer"],
            )?,
            introspection_breaker: int_gauge(
                INTROSPECTION_BREAKER_OPEN,
                "1 while the issuer's introspection breaker is open (calls fail fast), else 0.",
                &["issuer"],
            )?,
            upstream_sessions: int_gauge(
                UPSTREAM_SESSIONS,
                "Upstream sessions held, by upstream and state (active, logging_in, needs_login). In a fleet, published by the reporter replica only (fleet-wide values).",
                &["upstream", "state"],
            )?,
            upstream_seats: int_gauge(
                UPSTREAM_SEATS_IN_USE,
                "Seats of the upstream's licence held by tollgate (from login start to logout end). In a fleet, published by the reporter replica only (fleet-wide values).",
                &["upstream"],
            )?,
            upstream_logins: counter(
                UPSTREAM_LOGINS_TOTAL,
                "Upstream logins, by upstream and result (ok, login_limit, bad_credentials, throttled, error, captured).",
                &["upstream", "result"],
            )?,
            upstream_logouts: counter(
                UPSTREAM_LOGOUTS_TOTAL,
                "Upstream logouts, by upstream and result (ok, failed).",
                &["upstream", "result"],
            )?,
            upstream_evictions: counter(
                UPSTREAM_EVICTIONS_TOTAL,
                "Upstream sessions retired, by upstream and reason (lru, idle, max_age, expired, logout, shutdown).",
                &["upstream", "reason"],
            )?,
            upstream_relogins: counter(
                UPSTREAM_RELOGINS_TOTAL,
                "Re-logins after the upstream ended a session, by upstream.",
                &["upstream"],
            )?,
            upstream_connections_opened: counter(
                UPSTREAM_CONNECTIONS_OPENED_TOTAL,
                "Connections opened to an HTTP/1.1 upstream (TCP, and TLS where the url is https), by upstream. Each carries many requests: a count that grows with the requests means connections are not being reused.",
                &["upstream"],
            )?,
            upstream_connections_idle: int_gauge(
                UPSTREAM_CONNECTIONS_IDLE,
                "Open connections to an HTTP/1.1 upstream waiting for their next request, by upstream (sampled at scrape).",
                &["upstream"],
            )?,
            upstream_retries: counter(
                UPSTREAM_RETRIES_TOTAL,
                "Requests sent to an HTTP/1.1 upstream a second time, on another connection, because the kept connection they went out on closed without an answer, by upstream. Only a request none of which was sent, or an idempotent one without a body (or a session logout) on a connection idle for 250 ms or more, is sent again. A count that grows with quiet spells means the upstream's keep-alive is shorter than the upstream's idle_timeout.",
                &["upstream"],
            )?,
            upstream_queue: int_gauge(
                UPSTREAM_SESSION_QUEUE_DEPTH,
                "Requests waiting for their upstream session, by upstream.",
                &["upstream"],
            )?,
            upstream_admission: histogram(
                UPSTREAM_ADMISSION_WAIT_SECONDS,
                "Time a new upstream session waited for a seat, by upstream.",
                &["upstream"],
            )?,
            upstream_circuit: int_gauge(
                UPSTREAM_LOGIN_CIRCUIT_OPEN,
                "1 while logins are suspended after the upstream refused the credentials, by upstream.",
                &["upstream"],
            )?,
            store_errors: counter(
                STORE_ERRORS_TOTAL,
                "Failed operations of the shared session store (Redis), by operation.",
                &["op"],
            )?,
            store_duration: histogram(
                STORE_OPERATION_DURATION_SECONDS,
                "Duration of shared session store (Redis) operations, by operation.",
                &["op"],
            )?,
            store_resets: counter(
                STORE_RESETS_TOTAL,
                "Times the shared store was found to have lost its state (restarted empty, failed over to a stale replica, flushed), by upstream.",
                &["upstream"],
            )?,
            fleet_members: {
                let g = prometheus::IntGauge::with_opts(Opts::new(
                    FLEET_MEMBERS,
                    "Live replicas in the fleet (heartbeats in the shared store), as this replica last saw them.",
                ))?;
                registry.register(Box::new(g.clone()))?;
                g
            },
            fleet_reporter: {
                let g = prometheus::IntGauge::with_opts(Opts::new(
                    FLEET_REPORTER,
                    "1 on the one replica that publishes the fleet-wide session gauges, else 0.",
                ))?;
                registry.register(Box::new(g.clone()))?;
                g
            },
            config_reloads: counter(
                CONFIG_RELOADS_TOTAL,
                "Configuration reloads (SIGHUP or file change), by result (success, failure).",
                &["result"],
            )?,
            config_last_success: {
                let g = prometheus::Gauge::with_opts(Opts::new(
                    CONFIG_LAST_RELOAD_SUCCESS_TIMESTAMP_SECONDS,
                    "Unix time the running configuration was loaded (at start or by the last good reload).",
                ))?;
                registry.register(Box::new(g.clone()))?;
                g
            },
            requests_in_flight: {
                let g = prometheus::IntGauge::with_opts(Opts::new(
                    REQUESTS_IN_FLIGHT,
                    "Requests the proxy listener is handling now (until their response headers).",
                ))?;
                registry.register(Box::new(g.clone()))?;
                g
            },
            tls_expiry: int_gauge(
                TLS_CERTIFICATE_EXPIRY_TIMESTAMP_SECONDS,
                "Unix time the certificate in use expires (its notAfter), by certificate (server: [server.tls]).",
                &["certificate"],
            )?,
            auth_failures: counter(
                AUTH_FAILURES_TOTAL,
                "Tokens refused, by issuer id (unknown: no configured issuer) and reason (malformed, signature, expired, not_yet_valid, issuer, audience, algorithm, key_unknown, typ, revoked, inactive, introspection_error).",
                &["issuer", "reason"],
            )?,
            connections_open: int_gauge(
                CONNECTIONS_OPEN,
                "Client connections open, by listener (proxy, admin); the proxy's is bounded by server.max_connections.",
                &["listener"],
            )?,
            connections_waiting: counter(
                CONNECTIONS_WAITING_TOTAL,
                "Connections accepted after the listener had to wait for a place (max_connections reached), by listener.",
                &["listener"],
            )?,
            upstream_responses: counter(
                UPSTREAM_RESPONSES_TOTAL,
                "Upstream answers, by upstream and class (1xx to 5xx; error: no answer, a failed connection or a timeout).",
                &["upstream", "class"],
            )?,
            overhead: {
                let h = prometheus::Histogram::with_opts(
                    HistogramOpts::new(
                        GATEWAY_OVERHEAD_SECONDS,
                        "Time a request spent in the gateway itself: until its response headers, minus the upstream's time.",
                    )
                    .buckets(OVERHEAD_BUCKETS.to_vec()),
                )?;
                registry.register(Box::new(h.clone()))?;
                h
            },
            jwks_fetch_duration: histogram(
                JWKS_FETCH_DURATION_SECONDS,
                "Duration of JWKS (and discovery) fetches, by issuer, whatever their result.",
                &["issuer"],
            )?,
            registry,
            token_cache_series: std::sync::Arc::default(),
        };

        let build = IntGaugeVec::new(
            Opts::new(BUILD_INFO, "Build information; the value is always 1."),
            &["version", "rustc", "commit"],
        )?;
        build
            .with_label_values(&[crate::VERSION, crate::RUSTC, crate::COMMIT])
            .set(1);
        metrics.registry.register(Box::new(build))?;
        #[cfg(target_os = "linux")]
        metrics.registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        Ok(metrics)
    }

    /// One answered request: the single place where per-request series are updated.
    pub fn record_request(
        &self,
        route: &str,
        method: &Method,
        status: u16,
        decision: Option<Decision>,
        elapsed_secs: f64,
    ) {
        let mut buf = itoa_buf();
        let status = fmt_status(&mut buf, status);
        self.requests
            .with_label_values(&[route, method_label(method), status])
            .inc();
        self.request_duration
            .with_label_values(&[route])
            .observe(elapsed_secs);
        if let Some(decision) = decision {
            self.auth_decisions
                .with_label_values(&[route, decision.as_str()])
                .inc();
        }
    }

    /// The per-request series of `route`, resolved as they are first used (so a route that
    /// never saw a request still exposes nothing, as with [`Metrics::record_request`]).
    pub fn route_series(&self, route: &str) -> RouteSeries {
        RouteSeries {
            route: route.into(),
            requests: self.requests.clone(),
            request_duration: self.request_duration.clone(),
            auth_decisions: self.auth_decisions.clone(),
            duration: OnceLock::new(),
            decisions: Default::default(),
            by_method_status: RwLock::new(Vec::new()),
        }
    }

    /// One upstream's per-attempt series, resolved once per configuration (see
    /// [`UpstreamSeries`]).
    pub fn upstream_series(&self, upstream: &str) -> UpstreamSeries {
        UpstreamSeries {
            upstream: upstream.into(),
            upstream_duration: self.upstream_duration.clone(),
            upstream_responses: self.upstream_responses.clone(),
            duration: OnceLock::new(),
            classes: Default::default(),
        }
    }

    /// A token refused: `reason` is one of [`AuthError::failure_reason`]'s.
    ///
    /// [`AuthError::failure_reason`]: crate::auth::AuthError::failure_reason
    pub fn auth_failure(&self, issuer: &str, reason: &'static str) {
        self.auth_failures
            .with_label_values(&[issuer, reason])
            .inc();
    }

    /// The notAfter (Unix seconds) of the certificate in use as `certificate`.
    pub fn tls_certificate_expiry(&self, certificate: &str, not_after: i64) {
        self.tls_expiry
            .with_label_values(&[certificate])
            .set(not_after);
    }

    /// A request entered the pipeline; the guard counts it out when dropped.
    pub fn request_begun(&self) -> InFlightGuard<'_> {
        self.requests_in_flight.inc();
        InFlightGuard(&self.requests_in_flight)
    }

    /// The gateway's own share of a request's time.
    pub fn observe_overhead(&self, secs: f64) {
        self.overhead.observe(secs.max(0.0));
    }

    /// The connection gauges of one listener (`proxy` or `admin`).
    pub fn listener(&self, listener: &'static str) -> ListenerMetrics {
        ListenerMetrics {
            open: self.connections_open.with_label_values(&[listener]),
            waiting: self.connections_waiting.with_label_values(&[listener]),
        }
    }

    /// One JWKS or discovery fetch of `issuer`, whatever its outcome.
    pub fn observe_jwks_fetch(&self, issuer: &str, secs: f64) {
        self.jwks_fetch_duration
            .with_label_values(&[issuer])
            .observe(secs);
    }

    pub fn token_cache(&self, cache: &str, result: CacheResult) {
        let which = match cache {
            "jwt" => 0,
            "introspection" => 1,
            _ => {
                self.token_cache
                    .with_label_values(&[cache, result.as_str()])
                    .inc();
                return;
            }
        };
        self.token_cache_series[which][result as usize]
            .get_or_init(|| {
                self.token_cache
                    .with_label_values(&[cache, result.as_str()])
            })
            .inc();
    }

    pub fn token_cache_entries(&self, cache: &str, entries: u64) {
        self.token_cache_entries
            .with_label_values(&[cache])
            .set(i64::try_from(entries).unwrap_or(i64::MAX));
    }

    pub fn jwks_refreshed(&self, issuer: &str, keys: usize, unix_time: f64) {
        self.jwks_refresh
            .with_label_values(&[issuer, "success"])
            .inc();
        self.jwks_keys
            .with_label_values(&[issuer])
            .set(i64::try_from(keys).unwrap_or(i64::MAX));
        self.jwks_last_success
            .with_label_values(&[issuer])
            .set(unix_time);
    }

    pub fn jwks_failed(&self, issuer: &str) {
        self.jwks_refresh
            .with_label_values(&[issuer, "failure"])
            .inc();
    }

    /// Makes the issuer's series exist (at zero) before the first fetch, so that dashboards and
    /// alerts see the issuer from the start.
    pub fn declare_issuer(&self, issuer: &str) {
        for result in ["success", "failure"] {
            self.jwks_refresh.with_label_values(&[issuer, result]);
        }
        self.jwks_keys.with_label_values(&[issuer]);
        self.declare_auth_failures(issuer);
    }

    /// Makes the issuer's refused-token series exist (at zero), one per reason.
    fn declare_auth_failures(&self, issuer: &str) {
        for reason in AUTH_FAILURE_REASONS {
            self.auth_failures.with_label_values(&[issuer, reason]);
        }
    }

    /// Makes an introspection issuer's series exist (at zero) from the start.
    pub fn declare_introspection(&self, issuer: &str) {
        self.declare_auth_failures(issuer);
        for result in ["active", "inactive", "error"] {
            self.introspection_requests
                .with_label_values(&[issuer, result]);
        }
        self.introspection_breaker
            .with_label_values(&[issuer])
            .set(0);
        for result in ["hit", "miss", "negative_hit", "stale_hit"] {
            self.token_cache
                .with_label_values(&["introspection", result]);
        }
    }

    pub fn introspection_call(&self, issuer: &str, result: IntrospectionResult, elapsed_secs: f64) {
        self.introspection_requests
            .with_label_values(&[issuer, result.as_str()])
            .inc();
        self.introspection_duration
            .with_label_values(&[issuer])
            .observe(elapsed_secs);
    }

    pub fn introspection_breaker(&self, issuer: &str, open: bool) {
        self.introspection_breaker
            .with_label_values(&[issuer])
            .set(i64::from(open));
    }

    /// Makes an upstream's session series exist (at zero) from the start.
    pub fn declare_upstream_sessions(&self, upstream: &str) {
        for state in ["active", "logging_in", "needs_login"] {
            self.upstream_sessions
                .with_label_values(&[upstream, state])
                .set(0);
        }
        self.upstream_seats.with_label_values(&[upstream]).set(0);
        self.upstream_queue.with_label_values(&[upstream]).set(0);
        self.upstream_circuit.with_label_values(&[upstream]).set(0);
        self.upstream_relogins.with_label_values(&[upstream]);
        self.store_resets.with_label_values(&[upstream]);
        for result in ["ok", "login_limit", "bad_credentials", "throttled", "error"] {
            self.upstream_logins.with_label_values(&[upstream, result]);
        }
        for result in ["ok", "failed"] {
            self.upstream_logouts.with_label_values(&[upstream, result]);
        }
    }

    pub fn upstream_sessions(&self, upstream: &str, state: &str, n: usize) {
        self.upstream_sessions
            .with_label_values(&[upstream, state])
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    pub fn upstream_seats(&self, upstream: &str, n: u32) {
        self.upstream_seats
            .with_label_values(&[upstream])
            .set(i64::from(n));
    }

    pub fn upstream_login(&self, upstream: &str, result: &str) {
        self.upstream_logins
            .with_label_values(&[upstream, result])
            .inc();
    }

    pub fn upstream_logout(&self, upstream: &str, result: &str) {
        self.upstream_logouts
            .with_label_values(&[upstream, result])
            .inc();
    }

    pub fn upstream_eviction(&self, upstream: &str, reason: &str) {
        self.upstream_evictions
            .with_label_values(&[upstream, reason])
            .inc();
    }

    pub fn upstream_relogin(&self, upstream: &str) {
        self.upstream_relogins.with_label_values(&[upstream]).inc();
    }

    /// The opened-connections counter of an HTTP/1.1 `upstream`, resolved once (by its pool),
    /// so the series shows 0 before the first connection.
    pub fn upstream_connections_opened(&self, upstream: &str) -> IntCounter {
        self.upstream_connections_opened
            .with_label_values(&[upstream])
    }

    /// The retries counter of an HTTP/1.1 `upstream`, resolved once (by its pool), so the
    /// series shows 0 before the first retry.
    pub fn upstream_retries(&self, upstream: &str) -> IntCounter {
        self.upstream_retries.with_label_values(&[upstream])
    }

    /// The idle connections of an HTTP/1.1 `upstream`'s pool (sampled at scrape).
    pub fn upstream_connections_idle(&self, upstream: &str, n: usize) {
        self.upstream_connections_idle
            .with_label_values(&[upstream])
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// The queued-requests gauge of `upstream`, resolved once: a session pool sets it twice a
    /// request, where a lookup by label would hash the name each time. The series is never
    /// withdrawn, so a resolved gauge stays the exported one.
    pub fn upstream_queue_gauge(&self, upstream: &str) -> prometheus::IntGauge {
        self.upstream_queue.with_label_values(&[upstream])
    }

    pub fn upstream_admission_wait(&self, upstream: &str, secs: f64) {
        self.upstream_admission
            .with_label_values(&[upstream])
            .observe(secs);
    }

    pub fn upstream_login_circuit(&self, upstream: &str, open: bool) {
        self.upstream_circuit
            .with_label_values(&[upstream])
            .set(i64::from(open));
    }

    /// A reload attempt; a success also sets the last-success time (start-up counts as one).
    pub fn config_loaded(&self, result: &str, unix_time: f64) {
        if result != "startup" {
            self.config_reloads.with_label_values(&[result]).inc();
        } else {
            for r in ["success", "failure"] {
                self.config_reloads.with_label_values(&[r]);
            }
        }
        if result != "failure" {
            self.config_last_success.set(unix_time);
        }
    }

    pub fn store_error(&self, op: &str) {
        self.store_errors.with_label_values(&[op]).inc();
    }

    pub fn store_operation(&self, op: &str, secs: f64) {
        self.store_duration.with_label_values(&[op]).observe(secs);
    }

    pub fn store_reset(&self, upstream: &str) {
        self.store_resets.with_label_values(&[upstream]).inc();
    }

    pub fn fleet_members(&self, n: u64) {
        self.fleet_members.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    pub fn fleet_reporter(&self, reporter: bool) {
        self.fleet_reporter.set(i64::from(reporter));
    }

    /// Withdraws an upstream's fleet-wide gauges (sessions by state, seats) from this replica:
    /// in a fleet only the reporter publishes them, so that a sum over replicas is right.
    pub fn withdraw_fleet_gauges(&self, upstream: &str) {
        for state in ["active", "logging_in", "needs_login"] {
            let _ = self
                .upstream_sessions
                .remove_label_values(&[upstream, state]);
        }
        let _ = self.upstream_seats.remove_label_values(&[upstream]);
    }

    /// The Prometheus text exposition of every family.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 * 1024);
        // Encoding into a Vec cannot fail for the text format except on a malformed family,
        // which registration already rejected.
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::error!(error = %e, "metrics encoding failed");
        }
        out
    }
}

/// The method label: the standard methods by name, anything else as `OTHER` so that a client
/// cannot create series at will.
pub fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "OTHER",
    }
}

fn itoa_buf() -> [u8; 3] {
    [b'0'; 3]
}

/// Formats a status code without allocating (statuses are always three digits).
fn fmt_status(buf: &mut [u8; 3], status: u16) -> &str {
    let status = status.min(999);
    buf[0] = b'0' + (status / 100) as u8;
    buf[1] = b'0' + (status / 10 % 10) as u8;
    buf[2] = b'0' + (status % 10) as u8;
    std::str::from_utf8(buf).unwrap_or("000")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The exposition's lines of the per-request families.
    fn request_lines(m: &Metrics) -> Vec<String> {
        String::from_utf8(m.render())
            .unwrap()
            .lines()
            .filter(|l| {
                [
                    REQUESTS_TOTAL,
                    REQUEST_DURATION_SECONDS,
                    AUTH_DECISIONS_TOTAL,
                ]
                .iter()
                .any(|f| l.starts_with(f))
            })
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn token_cache_series_count_under_their_labels_and_appear_only_once_used() {
        let m = Metrics::new().unwrap();
        let results = [
            CacheResult::Hit,
            CacheResult::Miss,
            CacheResult::NegativeHit,
            CacheResult::StaleHit,
        ];
        assert!(results.iter().all(|r| (*r as usize) < CacheResult::COUNT));
        let lines = |m: &Metrics| -> Vec<String> {
            String::from_utf8(m.render())
                .unwrap()
                .lines()
                .filter(|l| l.starts_with(TOKEN_CACHE_REQUESTS_TOTAL))
                .map(str::to_owned)
                .collect()
        };
        assert!(lines(&m).is_empty(), "no series before a lookup");
        for (n, r) in results.iter().enumerate() {
            for _ in 0..=n {
                m.token_cache("jwt", *r);
                m.token_cache("introspection", *r);
            }
        }
        m.token_cache("other", CacheResult::Hit);
        let got = lines(&m);
        for (n, r) in results.iter().enumerate() {
            for cache in ["jwt", "introspection"] {
                let want = format!(
                    "{TOKEN_CACHE_REQUESTS_TOTAL}{{cache=\"{cache}\",result=\"{}\"}} {}",
                    r.as_str(),
                    n + 1
                );
                assert!(got.contains(&want), "{want} in {got:?}");
            }
        }
        assert_eq!(got.len(), 9, "{got:?}");
    }

    #[test]
    fn route_series_expose_what_record_request_does() {
        let (by_labels, by_series) = (Metrics::new().unwrap(), Metrics::new().unwrap());
        let series = by_series.route_series("r1");
        assert!(
            request_lines(&by_series).is_empty(),
            "nothing before a request"
        );
        let calls = [
            (Method::GET, 200, Some(Decision::Allowed)),
            (Method::GET, 200, Some(Decision::Allowed)),
            (Method::POST, 403, Some(Decision::InsufficientScope)),
            (Method::from_bytes(b"PROPFIND").unwrap(), 404, None),
            (
                Method::GET,
                401,
                Some(Decision::InsufficientUserAuthentication),
            ),
        ];
        for (method, status, decision) in &calls {
            by_labels.record_request("r1", method, *status, *decision, 0.002);
            series.record(method, *status, *decision, 0.002);
        }
        let lines = request_lines(&by_series);
        assert_eq!(lines, request_lines(&by_labels));
        assert!(lines
            .iter()
            .any(|l| l == r#"tollgate_requests_total{method="GET",route="r1",status="200"} 2"#));
    }

    #[test]
    fn families_register_and_render_with_their_names() {
        let m = Metrics::new().expect("metrics");
        m.record_request("r1", &Method::GET, 200, Some(Decision::Allowed), 0.01);
        m.token_cache("jwt", CacheResult::Hit);
        m.declare_issuer("erp");
        let erp = m.upstream_series("erp");
        erp.observe(0.01, Some(204));
        erp.observe(0.01, None);
        m.observe_overhead(0.0002);
        m.observe_jwks_fetch("erp", 0.05);
        let proxy = m.listener("proxy");
        let open = proxy.accepted(true);
        {
            let _begun = m.request_begun();
            let text = String::from_utf8(m.render()).unwrap();
            assert!(text.contains("tollgate_requests_in_flight 1"), "{text}");
            assert!(text.contains(r#"tollgate_connections_open{listener="proxy"} 1"#));
        }
        drop(open);
        let text = String::from_utf8(m.render()).unwrap();
        assert!(text.contains("tollgate_requests_in_flight 0"));
        assert!(text.contains(r#"tollgate_connections_open{listener="proxy"} 0"#));
        assert!(text.contains(r#"tollgate_connections_waiting_total{listener="proxy"} 1"#));
        assert!(text.contains(r#"tollgate_upstream_responses_total{class="2xx",upstream="erp"} 1"#));
        assert!(
            text.contains(r#"tollgate_upstream_responses_total{class="error",upstream="erp"} 1"#)
        );
        for name in [
            REQUESTS_TOTAL,
            REQUEST_DURATION_SECONDS,
            AUTH_DECISIONS_TOTAL,
            TOKEN_CACHE_REQUESTS_TOTAL,
            JWKS_REFRESH_TOTAL,
            JWKS_KEYS,
            GATEWAY_OVERHEAD_SECONDS,
            JWKS_FETCH_DURATION_SECONDS,
            BUILD_INFO,
        ] {
            assert!(text.contains(name), "{name} missing from:\n{text}");
        }
        assert!(text.contains(r#"tollgate_requests_total{method="GET",route="r1",status="200"} 1"#));
        assert!(text.contains(r#"tollgate_auth_decisions_total{decision="allowed",route="r1"} 1"#));
    }

    #[test]
    fn unknown_methods_share_one_label() {
        let m = Method::from_bytes(b"PROPFIND").unwrap();
        assert_eq!(method_label(&m), "OTHER");
        assert_eq!(method_label(&Method::PATCH), "PATCH");
    }

    #[test]
    fn status_formatting() {
        let mut b = itoa_buf();
        assert_eq!(fmt_status(&mut b, 404), "404");
        let mut b = itoa_buf();
        assert_eq!(fmt_status(&mut b, 200), "200");
    }
}
