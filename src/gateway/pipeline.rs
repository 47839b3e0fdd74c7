//! The request pipeline: [`Gateway::handle`] and its steps, in the order of the module chart.
//! Each step is a plain function with typed input and output; the pipeline is generic over the
//! request body, so that it runs without sockets in the unit tests.

use std::borrow::Cow;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::{Either, FutureExt as _};
use http::header::{self, HeaderMap, HeaderValue};
use http::request::Parts;
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::BodyExt as _;

use super::access;
use super::wiring::Snapshot;
use super::{Conn, Gateway};
use crate::auth::{bearer, AuthError, Principal};
use crate::error::{Fault, GatewayError};
use crate::limits::{self, BodyTimeout, Broken, Capped, Fault as BodyFault, TooLarge};
use crate::metrics::{Decision, RouteSeries, UpstreamSeries};
use crate::policy::{self, matcher, Permit, Requirement, Route, RouteAuth, RouteTable};
use crate::proxy::{self, headers, ProxyError, Upstream, UpstreamBody};
use crate::session::{self, sanitize, Lease, Leased, Settled};
use crate::telemetry::{self, Kind, RequestTrace, Telemetry};
use crate::upgrade::{self, Upgrade};
use crate::{Body, BoxError};

/// What a request's upstream session came to, for the access log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SessionOutcome {
    /// An existing session served it.
    Reused,
    /// A session logged in for it.
    New,
    /// The upstream had ended the session: logged in again and the request replayed.
    Relogin,
}

impl SessionOutcome {
    fn as_str(self) -> &'static str {
        match self {
            SessionOutcome::Reused => "reused",
            SessionOutcome::New => "new",
            SessionOutcome::Relogin => "relogin",
        }
    }
}

/// What the epilogue needs to know about one request, filled in as the steps run.
#[derive(Debug, Default)]
struct Record {
    route: Option<Arc<str>>,
    /// The route's metric series (none before a route is found).
    series: Option<Arc<RouteSeries>>,
    decision: Option<Decision>,
    upstream_status: Option<u16>,
    /// The upstream's time over every attempt, for the gateway's own share.
    upstream_secs: f64,
    /// The upstream the route sends to.
    upstream: Option<Arc<str>>,
    /// The issuer that vouched for the token.
    issuer: Option<Arc<str>>,
    /// The token's client id.
    client_id: Option<String>,
    /// The token's subject as `log.subject` shows it; only made when the access log is on.
    subject: Option<String>,
    /// The access log is on: its line's fields are gathered.
    logging: bool,
    /// The configuration trusts client-sent forwarding headers (for the access log).
    trust_forwarded: bool,
    /// Session upstreams: what became of the request's session, and how long the lease took
    /// (the queue, and a login when one was needed).
    session: Option<SessionOutcome>,
    lease_ms: Option<f64>,
    /// Why the token was refused (the `reason` of `tollgate_auth_failures_total`).
    refused_because: Option<&'static str>,
    /// The gateway answered itself (an error, or the session layer's own answer): a request
    /// body it did not read makes the connection unusable for another request.
    answered: bool,
    /// Set when the streamed request body went over `max_body`.
    body: Option<Arc<Broken>>,
    /// The CORS headers every answer of a route with `[route.cors]` gets, refusals included.
    cors: Option<policy::cors::Reply>,
    /// The request's trace id, when tracing is on.
    trace_id: Option<String>,
    /// The request's framing was ambiguous: whoever sent it (or a proxy in front) may disagree
    /// with the gateway on where the next request starts, so the connection is not reused.
    ambiguous: bool,
}

impl Gateway {
    /// Handles one request end to end. Never fails: every error becomes its response here, and
    /// every outcome is recorded once.
    ///
    /// Takes the gateway (a shared pointer) by value, so that the server boxes this future
    /// itself: a future that held a clone and awaited `handle` would be this one and more,
    /// copied whole into its own state on its first poll, on every request.
    pub async fn handle<B>(self, req: Request<B>, conn: Conn) -> Response<Body>
    where
        B: http_body::Body<Data = Bytes> + Send + Sync + Unpin + 'static,
        B::Error: Into<BoxError>,
    {
        let start = Instant::now();
        let _in_flight = self.wiring.metrics().request_begun();
        let method = req.method().clone();
        let request_id = headers::request_id(req.headers());
        // What the access-log line says of the request, taken before the pipeline owns it
        // (header values are shared, not copied).
        let seen = tracing::enabled!(target: "tollgate::access", tracing::Level::INFO)
            .then(|| access::Seen::of(&req, conn.remote));
        let http1 = req.version() < Version::HTTP_2;
        let unread_body = http1 && has_body(req.headers());
        let mut rec = Record {
            logging: seen.is_some(),
            ..Record::default()
        };
        let snapshot = self.wiring.current();
        let trace = begin_trace(
            self.wiring.telemetry(),
            &req,
            conn,
            snapshot.trust_forwarded,
        );

        let processed =
            trace.scope(self.process(req, conn, &snapshot, &request_id, &mut rec, &trace));
        let mut resp = match processed.await {
            Ok(resp) => resp,
            Err(e) => self.refuse(e, &mut rec, &request_id, &snapshot),
        };
        if (unread_body && rec.answered) || (http1 && rec.ambiguous) {
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if let Some(cors) = &rec.cors {
            cors.finish(resp.headers_mut());
        }
        resp.headers_mut()
            .insert(headers::X_REQUEST_ID.clone(), request_id.clone());
        if rec.session == Some(SessionOutcome::Reused)
            && resp.headers().contains_key(&headers::TOLLGATE_SESSION)
        {
            rec.session = Some(SessionOutcome::New);
        }
        if rec.logging {
            rec.trace_id = trace.trace_id();
        }
        trace.finish(
            resp.status().as_u16(),
            rec.decision.map(Decision::as_str),
            rec.refused_because,
        );
        self.record(&rec, &method, &resp, start);
        match seen {
            Some(seen) => {
                let line = access_line(rec, seen, method, request_id, &resp, start);
                resp.map(|body| access::Logged::wrap(body, line))
            }
            None => resp,
        }
    }

    /// The pipeline proper: its table of contents.
    async fn process<B>(
        &self,
        req: Request<B>,
        conn: Conn,
        snapshot: &Snapshot,
        request_id: &HeaderValue,
        rec: &mut Record,
        trace: &RequestTrace,
    ) -> Result<Response<Body>, GatewayError>
    where
        B: http_body::Body<Data = Bytes> + Send + Sync + Unpin + 'static,
        B::Error: Into<BoxError>,
    {
        rec.trust_forwarded = snapshot.trust_forwarded;
        let (head, body) = req.into_parts();
        if let Err(e) = crate::framing::check(&head) {
            rec.ambiguous = true;
            return Err(e.into());
        }
        let path = normalize(&head)?;
        if let Some(answer) = metadata(snapshot, &head, &path) {
            rec.answered = true;
            return answer;
        }
        let route = find(snapshot, &head, &path)?;
        trace.route(&route.id);
        rec.route = Some(route.id.clone());
        rec.series = snapshot.series_of(route);
        if let Some(preflight) = cors(route, &head, rec)? {
            return Ok(preflight);
        }
        let (permit, token) = match &route.auth {
            RouteAuth::Public => (None, None),
            RouteAuth::Bearer(requirement) => {
                let token = extract(&head)?;
                let principal = verify(snapshot, token, requirement, trace).await?;
                let metrics = self.wiring.metrics();
                (
                    Some(authorize(route, requirement, principal, metrics)?),
                    Some(token),
                )
            }
        };
        rec.decision = Some(match permit {
            None => Decision::Public,
            Some(_) => Decision::Allowed,
        });
        if let Some(p) = &permit {
            rec.issuer = Some(p.principal.issuer.clone());
            if rec.logging {
                rec.client_id = p.principal.client_id().map(str::to_owned);
                rec.subject = p.principal.logged_subject(&snapshot.subject_logging);
            }
        }
        rec.upstream = Some(snapshot.upstreams[route.upstream].id.clone());
        let mut body = limit(&head, body, route, snapshot.body_read_timeout, rec)?;
        // Only a session upstream's requests take the step (and are timed): the others neither
        // read the clock for it nor move its outcome, a lease's size, through this future.
        let mut lease = match &snapshot.pools[route.upstream] {
            None => None,
            Some(pool) => {
                // The grant key may be named after the token's text ("" on public routes).
                let token = match token {
                    Some(t) => t.as_str().map_err(AuthError::from)?,
                    None => "",
                };
                let asked = Instant::now();
                let waited = trace.step("session lease", Kind::Internal);
                let leased = lease(pool, permit.as_ref(), token, &head, &path, &mut body).await;
                drop(waited);
                match leased? {
                    Leased::Answered(resp) => {
                        rec.answered = true;
                        return Ok(resp);
                    }
                    Leased::None => None,
                    Leased::Session(lease) => {
                        rec.session = Some(SessionOutcome::Reused);
                        rec.lease_ms = Some(asked.elapsed().as_secs_f64() * 1000.0);
                        // Boxed: a lease is a few hundred bytes, and without one (most
                        // requests) this future and the steps below move a null pointer.
                        Some(Box::new(lease))
                    }
                }
            }
        };
        let forwarded = self
            .forward(
                snapshot,
                route,
                permit.as_ref(),
                head,
                &path,
                body,
                &mut lease,
                conn,
                request_id,
                rec,
                trace,
            )
            .await;
        if let (Err(_), Some(lease)) = (&forwarded, lease) {
            // A failed request gives its session back before the client hears of it.
            lease.release().await;
        }
        forwarded
    }

    /// The second half of the pipeline, once the request may go upstream: prepare, send and
    /// settle (again, after a re-login), finish.
    #[allow(clippy::too_many_arguments)]
    async fn forward(
        &self,
        snapshot: &Snapshot,
        route: &Route,
        permit: Option<&Permit>,
        mut head: Parts,
        path: &str,
        body: Body,
        lease: &mut Option<Box<Lease>>,
        conn: Conn,
        request_id: &HeaderValue,
        rec: &mut Record,
        trace: &RequestTrace,
    ) -> Result<Response<Body>, GatewayError> {
        let upstream = &snapshot.upstreams[route.upstream];
        let upgrade = Upgrade::take(&mut head, route.websocket && lease.is_none());
        let origin = lease.as_ref().and_then(|_| External::of(&head, conn));
        let ctx = proxy::Context {
            remote: conn.remote,
            proto: if conn.tls { "https" } else { "http" },
            trust_forwarded: snapshot.trust_forwarded,
            request_id,
            claims: permit.map(|p| &p.principal.claims),
        };
        let head = prepare(
            head,
            path,
            route,
            upstream,
            &ctx,
            lease.as_deref(),
            upgrade.as_ref(),
        )?;
        let mut attempts = Attempts::new(head, body, lease.is_some());
        let resp = loop {
            let req = attempts.next(lease.as_deref(), path);
            let series = &snapshot.upstream_series[route.upstream];
            let resp = send(upstream, series, req, lease.as_deref(), rec, trace).await?;
            rec.upstream_status = Some(resp.status().as_u16());
            match settle(lease.as_deref_mut(), resp).await {
                Settled::Keep(resp) => break resp,
                Settled::Replay => {
                    rec.session = Some(SessionOutcome::Relogin);
                    continue;
                }
                Settled::Fail(e) => return Err(e.into()),
            }
        };
        match finish(resp, lease.take(), upstream, origin.as_ref(), upgrade)? {
            Finished::Answer(resp) => Ok(resp),
            Finished::Sanitize(answer) => Ok(answer.await),
        }
    }

    /// The error's answer, from the one table (with the challenges of the request's own
    /// snapshot); its decision and log line too.
    fn refuse(
        &self,
        e: GatewayError,
        rec: &mut Record,
        request_id: &HeaderValue,
        snapshot: &Snapshot,
    ) -> Response<Body> {
        rec.answered = true;
        // A streamed body cut off at its limit ends in 413, and one the client stalled in 408,
        // whatever the upstream call made of the cut-off body.
        let e = match rec.body.as_ref().and_then(|b| b.fault()) {
            Some(BodyFault::TooLarge) => GatewayError::TooLarge(TooLarge),
            Some(BodyFault::Timeout) => GatewayError::BodyTimeout(BodyTimeout),
            None => e,
        };
        rec.refused_because = match &e {
            GatewayError::Auth(a) => a.failure_reason(),
            GatewayError::Denied {
                reason: crate::policy::Denied::WrongIssuer,
                ..
            } => Some("issuer"),
            _ => None,
        };
        let class = e.class();
        if rec.decision.is_none() {
            rec.decision = class.decision;
        }
        log_error(&e, class.fault, request_id);
        class.into_response(&snapshot.challenges)
    }

    /// `record`, the epilogue: the metrics, for every outcome (the access-log line follows the
    /// answer's body, see [`access`]).
    fn record(&self, rec: &Record, method: &Method, resp: &Response<Body>, start: Instant) {
        let elapsed = start.elapsed();
        let route = rec.route.as_deref().unwrap_or("none");
        let status = resp.status().as_u16();
        self.wiring
            .metrics()
            .observe_overhead(elapsed.as_secs_f64() - rec.upstream_secs);
        match &rec.series {
            Some(series) => series.record(method, status, rec.decision, elapsed.as_secs_f64()),
            None => self.wiring.metrics().record_request(
                route,
                method,
                status,
                rec.decision,
                elapsed.as_secs_f64(),
            ),
        }
    }
}

/// The access-log line of a request, from what the pipeline gathered; written when the answer
/// ends.
fn access_line(
    rec: Record,
    seen: access::Seen,
    method: Method,
    request_id: HeaderValue,
    resp: &Response<Body>,
    start: Instant,
) -> access::Line {
    access::Line {
        start,
        request_id,
        trace_id: rec.trace_id,
        seen,
        trust_forwarded: rec.trust_forwarded,
        method,
        status: resp.status().as_u16(),
        route: rec.route,
        decision: rec.decision.map_or("-", Decision::as_str),
        token_refused: rec.refused_because,
        issuer: rec.issuer,
        client_id: rec.client_id,
        subject: rec.subject,
        upstream: rec.upstream,
        upstream_ms: rec.upstream_status.map(|_| rec.upstream_secs * 1000.0),
        upstream_status: rec.upstream_status,
        session: rec.session.map(SessionOutcome::as_str),
        lease_ms: rec.lease_ms,
        body_in: rec.body,
        head_ms: start.elapsed().as_secs_f64() * 1000.0,
    }
}

/// `normalize`: the path as the routes (and the upstream) see it.
fn normalize(head: &Parts) -> Result<RequestPath, GatewayError> {
    let raw = head.uri.path();
    Ok(match policy::normalize(raw)? {
        Cow::Borrowed(p) if p == raw => match head.uri.path_and_query() {
            Some(pq) => RequestPath::AsSent(pq.clone()),
            None => RequestPath::Normalized(p.to_owned()),
        },
        p => RequestPath::Normalized(p.into_owned()),
    })
}

/// The request's normalised path. Most paths need no change: then it is the request's own
/// (shared with its URI, not copied).
enum RequestPath {
    AsSent(http::uri::PathAndQuery),
    Normalized(String),
}

impl std::ops::Deref for RequestPath {
    type Target = str;

    fn deref(&self) -> &str {
        match self {
            RequestPath::AsSent(pq) => pq.path(),
            RequestPath::Normalized(p) => p,
        }
    }
}

/// `metadata`: the RFC 9728 document, when the resource publishes one and this is its path;
/// never forwarded, whatever route the path would match.
fn metadata(
    snapshot: &Snapshot,
    head: &Parts,
    path: &str,
) -> Option<Result<Response<Body>, GatewayError>> {
    let answer = snapshot
        .metadata
        .as_ref()?
        .serve(&head.method, path, &head.headers)?;
    Some(
        answer
            .map(|r| r.map(proxy::full))
            .map_err(GatewayError::from),
    )
}

/// `find`: the route for the request's host, method and path; none is a 404 (deny by default).
/// A CORS preflight belongs to the route with a CORS policy that the request it announces would
/// use ([`policy::RouteTable::find_preflight`]); otherwise it is an `OPTIONS` request like any
/// other.
fn find<'s>(snapshot: &'s Snapshot, head: &Parts, path: &str) -> Result<&'s Route, GatewayError> {
    choose(&snapshot.routes, head, path).ok_or(GatewayError::NoRoute)
}

/// The route of `find` in `routes` for a request whose normalised path is `path`.
pub(crate) fn choose<'r>(routes: &'r RouteTable, head: &Parts, path: &str) -> Option<&'r Route> {
    let host = request_host(head);
    let announced = policy::cors::Preflight::of(head)
        .and_then(|p| routes.find_preflight(host.as_deref(), p.method(), path));
    announced.or_else(|| routes.find(host.as_deref(), &head.method, path))
}

/// `cors`: on a route with `[route.cors]`, a preflight is answered here, without a token and
/// without reaching the upstream (204, or 403); any other request's answer, whatever it turns out
/// to be, will carry the route's CORS headers.
fn cors(
    route: &Route,
    head: &Parts,
    rec: &mut Record,
) -> Result<Option<Response<Body>>, GatewayError> {
    let Some(policy) = &route.cors else {
        return Ok(None);
    };
    let Some(preflight) = policy::cors::Preflight::of(head) else {
        rec.cors = Some(policy.reply(&head.headers));
        return Ok(None);
    };
    let allowed = policy.preflight(&preflight)?;
    rec.answered = true;
    let mut resp = Response::new(proxy::full(Bytes::new()));
    *resp.status_mut() = StatusCode::NO_CONTENT;
    *resp.headers_mut() = allowed;
    Ok(Some(resp))
}

/// `extract`: the bearer token of the `Authorization` header.
fn extract(head: &Parts) -> Result<bearer::Token<'_>, GatewayError> {
    bearer::extract(&head.headers).map_err(|e| AuthError::from(e).into())
}

/// `verify`: the token's principal, from the cache or the route's issuer.
async fn verify(
    snapshot: &Snapshot,
    token: bearer::Token<'_>,
    requirement: &Requirement,
    trace: &RequestTrace,
) -> Result<Principal, GatewayError> {
    let step = trace.step("verify token", Kind::Internal);
    let mut cached = false;
    let verified = snapshot
        .verifier
        .verify_noting(token, requirement.issuer.as_ref(), &mut cached)
        .await;
    if step.is_recording() {
        step.note("tollgate.token.cache", if cached { "hit" } else { "miss" });
        match &verified {
            Ok(p) => step.note("tollgate.issuer", p.issuer.to_string()),
            Err(e) => step.fail(e.failure_reason().unwrap_or("unavailable")),
        }
    }
    Ok(verified?)
}

/// The server span of a request (nothing when tracing is off).
fn begin_trace<B>(
    telemetry: &Telemetry,
    req: &Request<B>,
    conn: Conn,
    trust: bool,
) -> RequestTrace {
    if !telemetry.is_on() {
        return RequestTrace::none();
    }
    let h = req.headers();
    fn text(v: Option<&HeaderValue>) -> Option<&str> {
        v.and_then(|v| v.to_str().ok())
    }
    let host = req
        .uri()
        .authority()
        .map(http::uri::Authority::as_str)
        .or_else(|| text(h.get(header::HOST)));
    telemetry.begin(
        &telemetry::Request {
            method: req.method(),
            path: req.uri().path(),
            host,
            user_agent: text(h.get(header::USER_AGENT)),
            version: req.version(),
            client: conn.remote,
            tls: conn.tls,
            headers: h,
        },
        trust,
    )
}

/// `authorize`: the route's issuer, scopes, claims and step-up requirement against the principal.
fn authorize(
    route: &Route,
    requirement: &Requirement,
    principal: Principal,
    metrics: &crate::metrics::Metrics,
) -> Result<Permit, GatewayError> {
    let issuer = principal.issuer.clone();
    policy::authorize(route, requirement, principal).map_err(|reason| {
        // A token of another issuer than the route's is refused as invalid (401): counted with
        // the tokens the verifier refused.
        if reason == crate::policy::Denied::WrongIssuer {
            metrics.auth_failure(&issuer, "issuer");
        }
        GatewayError::Denied {
            reason,
            challenge: requirement.challenge(reason),
            route: route.id.clone(),
        }
    })
}

/// `limit`: a declared length over the route's `max_body` is refused before anything is
/// forwarded; a body of unknown length is cut off at the limit while it streams.
fn limit<B>(
    head: &Parts,
    body: B,
    route: &Route,
    read_gap: Duration,
    rec: &mut Record,
) -> Result<Body, GatewayError>
where
    B: http_body::Body<Data = Bytes> + Send + Sync + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    limits::check_declared(&head.headers, route.max_body)?;
    if body.is_end_stream() {
        // No body, as in most requests: nothing to cap or time, and an empty body allocates
        // nothing.
        return Ok(proxy::empty());
    }
    let (body, broken) = Capped::new(body, route.max_body, read_gap);
    rec.body = Some(broken);
    Ok(body.boxed())
}

/// `lease`: the session layer's first step, on session upstreams. `token` is the request's
/// bearer token ("" on public routes), for grant keys named after it.
async fn lease(
    pool: &Arc<session::Pool>,
    permit: Option<&Permit>,
    token: &str,
    head: &Parts,
    path: &str,
    body: &mut Body,
) -> Result<Leased, GatewayError> {
    // Only the boxed future is kept across the wait: what a step gives at once would otherwise
    // be part of every request's future, as large as a lease.
    let waits = match session::lease(pool, permit, token, head, path, body) {
        session::Step::Now(leased) => return Ok(leased?),
        session::Step::Later(waits) => waits,
    };
    Ok(waits.await?)
}

/// `prepare`: the upstream request's head: the normalised path (what was authorised, or the
/// lease's own), the header edits of [`headers`], and the upgrade headers put back.
fn prepare(
    head: Parts,
    path: &str,
    route: &Route,
    upstream: &Upstream,
    ctx: &proxy::Context<'_>,
    lease: Option<&Lease>,
    upgrade: Option<&Upgrade>,
) -> Result<Parts, GatewayError> {
    let path = lease.and_then(Lease::upstream_path).unwrap_or(path);
    let mut head = proxy::prepare_parts(head, path, route, upstream, ctx)?;
    if let Some(u) = upgrade {
        u.restore(&mut head.headers);
    }
    Ok(head)
}

/// The requests of one exchange: the prepared head (copied when a replay may follow) with the
/// lease's jar as its `Cookie`, and the body (the kept copy on a replay).
struct Attempts {
    head: Parts,
    body: Option<Body>,
    /// A session lease may replay the request after a re-login: the head is copied each time.
    copies: bool,
}

impl Attempts {
    fn new(head: Parts, body: Body, copies: bool) -> Self {
        Attempts {
            head,
            body: Some(body),
            copies,
        }
    }

    fn next(&mut self, lease: Option<&Lease>, path: &str) -> Request<Body> {
        let body = match (self.body.take(), lease) {
            (Some(b), _) => b,
            (None, Some(l)) => l.replay_body(),
            (None, None) => proxy::empty(),
        };
        // The jar's `Cookie` goes into the kept head, which has room for it (`prepare_parts`
        // made it), before the copy: a copy is sized to what it holds, and growing it by one
        // header would cost a reallocation of every header.
        if let Some(l) = lease {
            headers::replace_cookie(&mut self.head.headers, l.cookie(path));
        }
        let head = if self.copies {
            copy_head(&self.head)
        } else {
            std::mem::replace(&mut self.head, Request::new(()).into_parts().0)
        };
        Request::from_parts(head, body)
    }
}

fn copy_head(p: &Parts) -> Parts {
    let mut r = Request::new(());
    *r.method_mut() = p.method.clone();
    *r.uri_mut() = p.uri.clone();
    *r.version_mut() = p.version;
    *r.headers_mut() = p.headers.clone();
    r.into_parts().0
}

/// `send`: the request to the upstream, stopped if a shared store loses the lease while it
/// runs (never two requests on one session). The upstream latency is recorded here, once
/// per attempt, whatever the outcome.
///
/// Not an `async fn`, and no `async` block on the common path: either would keep what it
/// awaits twice in its future (as it captured it, and as it awaits it), and this future is
/// part of every request's. The race against a lost lease (leases in a shared store only)
/// is boxed, so that its larger future is not.
fn send<'a>(
    upstream: &'a Upstream,
    series: &'a UpstreamSeries,
    mut req: Request<Body>,
    lease: Option<&'a Lease>,
    rec: &'a mut Record,
    trace: &'a RequestTrace,
) -> impl std::future::Future<Output = Result<Response<UpstreamBody>, GatewayError>> + 'a {
    let step = trace.upstream_call(req.method(), req.uri());
    if step.is_recording() {
        step.note("tollgate.upstream", upstream.id.to_string());
    }
    step.inject(req.headers_mut());
    let sent = Instant::now();
    let mut record = move |resp: Result<Response<UpstreamBody>, GatewayError>| {
        let secs = sent.elapsed().as_secs_f64();
        rec.upstream_secs += secs;
        let status = resp.as_ref().ok().map(|r| r.status().as_u16());
        match (&resp, status) {
            (_, Some(s)) => step.status(s),
            (Err(e), None) => step.fail(&e.class().description),
            (Ok(_), None) => {}
        }
        series.observe(secs, status);
        resp
    };
    match lease.and_then(Lease::lost) {
        None => Either::Left(
            upstream
                .send(req)
                .map(move |r| record(r.map_err(GatewayError::from))),
        ),
        Some(mut lost) => Either::Right(Box::pin(async move {
            let resp = tokio::select! {
                r = upstream.send(req) => r.map_err(GatewayError::from),
                _ = lost.wait_for(|l| *l) => Err(session::SessionError::Store(
                    "the session's lease was lost in the store".to_owned(),
                )
                .into()),
            };
            record(resp)
        })),
    }
}

/// `settle`: the session layer's second step (upstreams without sessions keep every answer).
async fn settle(lease: Option<&mut Lease>, resp: Response<UpstreamBody>) -> Settled {
    let Some(lease) = lease else {
        return Settled::Keep(resp);
    };
    // As in `lease`: only the boxed future is kept across the wait.
    let waits = match session::settle(lease, resp) {
        session::Step::Now(settled) => return settled,
        session::Step::Later(waits) => waits,
    };
    waits.await
}

/// `finish`: the answer for the client: hop-by-hop headers removed; through the session layer,
/// no upstream cookie, `Location` on the gateway, the session headers, error details withheld,
/// and the lease held until the body is sent; a `101` joins the two upgraded connections.
///
/// Not an `async fn`: only a session's error answer has to be waited for (read, then
/// sanitised), and that is the boxed future it returns. Awaited inline, its state would be
/// part of every request's future.
fn finish(
    resp: Response<UpstreamBody>,
    lease: Option<Box<Lease>>,
    upstream: &Upstream,
    origin: Option<&External>,
    upgrade: Option<Upgrade>,
) -> Result<Finished, GatewayError> {
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        return switch(resp, upstream, upgrade).map(Finished::Answer);
    }
    let (mut parts, body) = resp.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers);
    let body: Body = limits::Paced::new(body, upstream.body_read_timeout).boxed();
    let Some(lease) = lease else {
        return Ok(Finished::Answer(Response::from_parts(parts, body)));
    };
    let edits = lease.edits(parts.status);
    let h = &mut parts.headers;
    headers::strip_set_cookies(h);
    if edits.rewrite_location && h.contains_key(header::LOCATION) {
        if let Some(origin) = origin.and_then(External::origin) {
            headers::rewrite_location(h, upstream.origin(), &origin);
        }
    }
    if edits.new_session {
        h.insert(
            headers::TOLLGATE_SESSION.clone(),
            HeaderValue::from_static("new"),
        );
    }
    if let Some(line) = &edits.set_cookie {
        headers::append_set_cookie(h, line);
    }
    if !edits.sanitize {
        return Ok(Finished::Answer(Response::from_parts(
            parts,
            lease.hold_until_sent(body),
        )));
    }
    // Error answers are small: read here (the session is held meanwhile).
    Ok(Finished::Sanitize(Box::pin(async move {
        let body = proxy::full(sanitize::error_body(parts.status, &mut parts.headers, body).await);
        Response::from_parts(parts, lease.hold_until_sent(body))
    })))
}

/// What [`finish`] leaves: the answer, or a session's error answer still to be read and
/// sanitised.
enum Finished {
    Answer(Response<Body>),
    Sanitize(std::pin::Pin<Box<dyn std::future::Future<Output = Response<Body>> + Send>>),
}

/// A `101 Switching Protocols`: relayed only for the upgrade the client asked for, by joining
/// the two connections; one the gateway did not ask for cannot be relayed.
fn switch(
    mut resp: Response<UpstreamBody>,
    upstream: &Upstream,
    upgrade: Option<Upgrade>,
) -> Result<Response<Body>, GatewayError> {
    let Some(client) = upgrade.and_then(Upgrade::into_client) else {
        return Err(ProxyError::Unreachable {
            upstream: upstream.id.to_string(),
            reason: "answered 101 to a request that was not an upgrade".to_owned(),
        }
        .into());
    };
    let protocol = resp.headers().get(header::UPGRADE).cloned();
    upgrade::join(client, hyper::upgrade::on(&mut resp));
    let (mut parts, body) = resp.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers);
    if let Some(p) = protocol {
        upgrade::restore(&mut parts.headers, &p);
    }
    Ok(Response::from_parts(
        parts,
        body.map_err(BoxError::from).boxed(),
    ))
}

/// Client and auth faults are routine (DEBUG); IdP, upstream and internal ones need an operator.
fn log_error(e: &GatewayError, fault: Fault, request_id: &HeaderValue) {
    let id = request_id.to_str().unwrap_or("-");
    match fault {
        Fault::Client | Fault::Auth => {
            tracing::debug!(request_id = id, error = %e, "request refused")
        }
        Fault::Idp | Fault::Upstream => {
            tracing::warn!(request_id = id, error = %e, "request failed")
        }
        Fault::Internal => tracing::error!(request_id = id, error = %e, "request failed"),
    }
}

/// The host the request is for: the URI authority (HTTP/2, absolute-form) or the Host header,
/// lower-cased and without port.
fn request_host(head: &Parts) -> Option<Cow<'_, str>> {
    let raw = match head.uri.authority() {
        Some(a) => a.as_str(),
        None => head.headers.get(header::HOST)?.to_str().ok()?,
    };
    Some(matcher::host_of(raw))
}

/// The client's view of the gateway, for `Location` rewriting: kept as its parts, and made
/// into text only for an answer with a `Location` (most have none).
struct External {
    scheme: &'static str,
    host: HeaderValue,
}

impl External {
    fn of(head: &Parts, conn: Conn) -> Option<External> {
        Some(External {
            scheme: if conn.tls { "https" } else { "http" },
            host: head.headers.get(header::HOST)?.clone(),
        })
    }

    /// `scheme://host`.
    fn origin(&self) -> Option<String> {
        Some(format!("{}://{}", self.scheme, self.host.to_str().ok()?))
    }
}

fn has_body(h: &HeaderMap) -> bool {
    h.contains_key(header::TRANSFER_ENCODING)
        || h.get(header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_external_origin_is_the_clients_scheme_and_host() {
        let head = |host: Option<&str>| {
            let mut b = Request::get("/entity/x");
            if let Some(h) = host {
                b = b.header(header::HOST, h);
            }
            b.body(()).unwrap().into_parts().0
        };
        let conn = |tls| Conn {
            remote: "127.0.0.1:4000".parse().unwrap(),
            tls,
        };
        let origin = |h, tls| External::of(&head(h), conn(tls)).and_then(|e| e.origin());
        assert_eq!(
            origin(Some("gw.example:8443"), true).as_deref(),
            Some("https://gw.example:8443")
        );
        assert_eq!(
            origin(Some("gw.example"), false).as_deref(),
            Some("http://gw.example")
        );
        assert_eq!(origin(None, true), None, "no Host: no rewrite");
        let mut bad = head(None);
        bad.headers
            .insert(header::HOST, HeaderValue::from_bytes(b"gw\xff").unwrap());
        assert!(
            External::of(&bad, conn(false))
                .and_then(|e| e.origin())
                .is_none(),
            "a Host that is not text: no rewrite"
        );
    }
}
