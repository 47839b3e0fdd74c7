//! OpenTelemetry traces: one server span per request, a child span per step that waits on
//! something (token verification, an IdP call, the session lease, an upstream login, the
//! upstream request), and W3C trace context (`traceparent`, `tracestate`) on every call tollgate
//! makes for the request.
//!
//! ```text
//!  GET orders                      server   the request, from its head to the answer's head
//!  ├─ verify token                 internal tollgate.token.cache = hit | miss
//!  ├─ introspection                client   POST to the issuer's endpoint   ─┐ traceparent
//!  ├─ jwks fetch / discovery fetch client   a key set fetched for this token ┤ sent with
//!  ├─ session lease                internal the wait for the grant's session  │ each call
//!  ├─ upstream login               client   the login that wait needed       ─┤
//!  └─ upstream request             client   each attempt (a replay is a second one)
//! ```
//!
//! The server span's parent is the client's `traceparent` only when
//! `server.trust_forwarded_headers` is on; otherwise a new trace starts and the client's span is
//! kept as a link, so that an untrusted caller can neither choose the trace id nor force
//! sampling. Sampling is parent-based with `telemetry.sample_ratio` for new traces. A request
//! that is not sampled still gets ids (its access-log line has a `trace_id`, and the upstream a
//! `traceparent` with the sampled flag off); nothing of it is recorded.
//!
//! With tracing off ([`Telemetry::off`]) no span, id or context exists: the pipeline checks one
//! `Option`. The request's context travels to the IdP and login calls as the task's current
//! OpenTelemetry [`Context`] ([`RequestTrace::scope`]); with tracing off there is none, and
//! [`call`] costs a thread-local read.

mod export;

use std::net::SocketAddr;
use std::sync::Arc;

use futures_util::future::Either;
use http::header::{HeaderMap, HeaderName};
use http::{Method, Version};
use opentelemetry::propagation::TextMapPropagator as _;
use opentelemetry::trace::{
    FutureExt as _, Link, Span as _, SpanKind, Status, TraceContextExt as _, Tracer as _,
    TracerProvider as _, WithContext,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_http::{HeaderExtractor, HeaderInjector};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{BatchSpanProcessor, Sampler, SdkTracer, SdkTracerProvider};
use opentelemetry_sdk::Resource;

pub use export::Client;
pub use opentelemetry::trace::SpanKind as Kind;

/// Where spans go, when tracing is on (`[telemetry]` with the `OTEL_*` environment applied).
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// The full OTLP/HTTP traces URL (`…/v1/traces`).
    pub traces_url: url::Url,
    pub service_name: String,
    /// The share of root traces recorded (parent-based sampling).
    pub sample_ratio: f64,
    /// The longest wait for the collector, per export.
    pub timeout: std::time::Duration,
}

/// W3C trace context's second header (the propagator writes it even when empty).
static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// Tracing for the life of the process: off, or a tracer whose spans are batched to the
/// collector.
#[derive(Clone, Default)]
pub struct Telemetry {
    on: Option<Arc<Tracing>>,
}

/// The tracer, and the provider that owns the export pipeline (flushed at shutdown).
struct Tracing {
    tracer: SdkTracer,
    provider: SdkTracerProvider,
    propagator: TraceContextPropagator,
}

/// Carried in a request's [`Context`], so that the calls made for it (deep in auth and session
/// code) can open their spans without being handed the tracer.
#[derive(Clone)]
struct Carrier(Arc<Tracing>);

impl Telemetry {
    /// Tracing off: nothing is made or exported.
    pub fn off() -> Self {
        Telemetry { on: None }
    }

    /// Tracing as configured (off for `None`), exporting with `client` (the gateway's pooled
    /// HTTPS client). Must run inside a Tokio runtime: the exporter sends through it.
    pub fn new(cfg: Option<&Settings>, client: Client) -> Result<Self, String> {
        let Some(cfg) = cfg else {
            return Ok(Self::off());
        };
        let exporter = export::exporter(cfg, client)?;
        let ratio = Sampler::TraceIdRatioBased(cfg.sample_ratio);
        let provider = SdkTracerProvider::builder()
            .with_sampler(Sampler::ParentBased(Box::new(ratio)))
            .with_resource(
                Resource::builder()
                    .with_service_name(cfg.service_name.clone())
                    .with_attribute(KeyValue::new("service.version", crate::VERSION))
                    .build(),
            )
            .with_span_processor(BatchSpanProcessor::builder(exporter).build())
            .build();
        let tracer = provider.tracer("tollgate");
        Ok(Telemetry {
            on: Some(Arc::new(Tracing {
                tracer,
                provider,
                propagator: TraceContextPropagator::new(),
            })),
        })
    }

    pub fn is_on(&self) -> bool {
        self.on.is_some()
    }

    /// Sends what is still batched, and stops the exporter. Blocks (at most the export
    /// timeout): call it off the runtime's worker threads.
    pub fn shutdown(&self) {
        if let Some(t) = &self.on {
            if let Err(e) = t.provider.shutdown() {
                tracing::warn!(error = %e, "the last spans could not be exported");
            }
        }
    }

    /// Opens a request's server span. `trust` is `server.trust_forwarded_headers`: only then is
    /// the client's `traceparent` the parent; otherwise it becomes a link.
    pub fn begin(&self, request: &Request<'_>, trust: bool) -> RequestTrace {
        let Some(t) = &self.on else {
            return RequestTrace::none();
        };
        let remote = t.propagator.extract(&HeaderExtractor(request.headers));
        let remote = remote.span().span_context().clone();
        let (parent, links) = match (remote.is_valid(), trust) {
            (true, true) => (Context::new().with_remote_span_context(remote), Vec::new()),
            (true, false) => (Context::new(), vec![Link::with_context(remote)]),
            (false, _) => (Context::new(), Vec::new()),
        };
        let mut span = t
            .tracer
            .span_builder(method_name(request.method))
            .with_kind(SpanKind::Server)
            .with_links(links)
            .start_with_context(&t.tracer, &parent);
        // The sampler reads no attribute: a span that is not recorded is spared making them.
        if span.is_recording() {
            let mut attributes = vec![
                KeyValue::new("http.request.method", method_name(request.method)),
                KeyValue::new("url.path", request.path.to_owned()),
                KeyValue::new("url.scheme", if request.tls { "https" } else { "http" }),
                KeyValue::new("client.address", request.client.ip().to_string()),
                KeyValue::new("network.protocol.version", protocol(request.version)),
            ];
            if let Some(host) = request.host {
                attributes.push(KeyValue::new("server.address", host.to_owned()));
            }
            if let Some(ua) = request.user_agent {
                attributes.push(KeyValue::new("user_agent.original", ua.to_owned()));
            }
            span.set_attributes(attributes);
        }
        let cx = parent.with_span(span).with_value(Carrier(t.clone()));
        RequestTrace {
            cx: Some(cx),
            method: request.method.clone(),
        }
    }
}

/// What the server span is made from: the request as it arrived.
pub struct Request<'a> {
    pub method: &'a Method,
    /// The path, without the query (a query may hold secrets).
    pub path: &'a str,
    pub host: Option<&'a str>,
    pub user_agent: Option<&'a str>,
    pub version: Version,
    pub client: SocketAddr,
    pub tls: bool,
    pub headers: &'a HeaderMap,
}

/// A method's name, without an allocation for the standard ones.
fn method_name(m: &Method) -> std::borrow::Cow<'static, str> {
    const STANDARD: [&str; 9] = [
        "GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "CONNECT", "TRACE",
    ];
    match STANDARD.iter().find(|s| **s == m.as_str()) {
        Some(s) => std::borrow::Cow::Borrowed(s),
        None => std::borrow::Cow::Owned(m.as_str().to_owned()),
    }
}

fn protocol(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "0.9",
        Version::HTTP_10 => "1.0",
        Version::HTTP_2 => "2",
        Version::HTTP_3 => "3",
        _ => "1.1",
    }
}

/// One request's trace: its server span's context, or nothing when tracing is off.
pub struct RequestTrace {
    cx: Option<Context>,
    /// The request's method, for the server span's name once the route is known.
    method: Method,
}

impl RequestTrace {
    /// No trace (tracing off).
    pub fn none() -> Self {
        RequestTrace {
            cx: None,
            method: Method::GET,
        }
    }

    /// The trace id as 32 lower-case hex digits, for the access log.
    pub fn trace_id(&self) -> Option<String> {
        let cx = self.cx.as_ref()?;
        Some(cx.span().span_context().trace_id().to_string())
    }

    /// Runs `fut` with this request's context as the current one, so that the calls it makes
    /// ([`call`]) are children of the server span and carry its `traceparent`.
    ///
    /// Not an `async fn`: one would hold `fut` twice, once as its argument and once as what it
    /// awaits, and the pipeline's future is the largest there is.
    pub fn scope<F: std::future::Future>(&self, fut: F) -> Either<WithContext<F>, F> {
        match &self.cx {
            Some(cx) => Either::Left(fut.with_context(cx.clone())),
            None => Either::Right(fut),
        }
    }

    /// A child span of the server span, ended when the returned [`Step`] is dropped.
    pub fn step(&self, name: &'static str, kind: SpanKind) -> Step {
        self.cx
            .as_ref()
            .and_then(|cx| child(cx, name, kind))
            .unwrap_or_else(Step::none)
    }

    /// The span of one upstream request (a child of the server span, like the others).
    pub fn upstream_call(&self, method: &Method, uri: &http::Uri) -> Step {
        match &self.cx {
            None => Step::none(),
            Some(cx) => client_step(cx, "upstream request", method, || describe_uri(uri)),
        }
    }

    /// Names the server span after the route, and notes its id.
    pub fn route(&self, id: &str) {
        if let Some(cx) = &self.cx {
            let span = cx.span();
            if span.is_recording() {
                span.update_name(format!("{} {id}", self.method.as_str()));
                span.set_attribute(KeyValue::new("tollgate.route", id.to_owned()));
            }
        }
    }

    /// Ends the server span with the answer's status (5xx marks it as an error, per the HTTP
    /// conventions for servers) and what the gateway decided.
    pub fn finish(
        self,
        status: u16,
        decision: Option<&'static str>,
        refused: Option<&'static str>,
    ) {
        let Some(cx) = self.cx else {
            return;
        };
        let span = cx.span();
        if span.is_recording() {
            span.set_attribute(KeyValue::new(
                "http.response.status_code",
                i64::from(status),
            ));
            if let Some(d) = decision {
                span.set_attribute(KeyValue::new("tollgate.decision", d));
            }
            if let Some(r) = refused {
                span.set_attribute(KeyValue::new("tollgate.token.refused", r));
            }
            if status >= 500 {
                span.set_attribute(KeyValue::new("error.type", status.to_string()));
                span.set_status(Status::error(""));
            }
        }
        span.end();
    }
}

/// A child of the span in `parent`, in a context that carries on the tracer.
///
/// A request that is not sampled makes no child span: its steps share the server span's
/// context (what they propagate is the request's trace id with the sampled flag off, all that
/// an unsampled trace needs), which spares each step a span, its ids and its context.
fn child(parent: &Context, name: &'static str, kind: SpanKind) -> Option<Step> {
    let Carrier(t) = parent.get::<Carrier>()?;
    if !parent.span().is_recording() {
        return Some(Step {
            cx: Some(parent.clone()),
            owned: false,
        });
    }
    let span = t
        .tracer
        .span_builder(name)
        .with_kind(kind)
        .start_with_context(&t.tracer, parent);
    Some(Step {
        cx: Some(parent.with_span(span)),
        owned: true,
    })
}

/// A step's span: attributes are set while it runs; it ends when dropped.
pub struct Step {
    cx: Option<Context>,
    /// The span is the step's own (it ends with the step); else the request's, borrowed.
    owned: bool,
}

impl Step {
    fn none() -> Step {
        Step {
            cx: None,
            owned: false,
        }
    }

    /// True when the step has a span (tracing is on): it has a context to propagate.
    pub fn is_on(&self) -> bool {
        self.cx.is_some()
    }

    /// True when the step's span is recorded (sampled), so that attributes worth computing are.
    pub fn is_recording(&self) -> bool {
        self.cx.as_ref().is_some_and(|cx| cx.span().is_recording())
    }

    /// Sets an attribute (when the span is recorded).
    pub fn note(&self, key: &'static str, value: impl Into<opentelemetry::Value>) {
        if let Some(cx) = &self.cx {
            let span = cx.span();
            if span.is_recording() {
                span.set_attribute(KeyValue::new(key, value));
            }
        }
    }

    /// The status code of the answer this step got (a client span).
    pub fn status(&self, status: u16) {
        self.note("http.response.status_code", i64::from(status));
        if status >= 400 {
            self.fail(&status.to_string());
        }
    }

    /// Marks the step as failed, with a short reason (never a body or a secret).
    pub fn fail(&self, reason: &str) {
        if let Some(cx) = &self.cx {
            let span = cx.span();
            if span.is_recording() {
                span.set_attribute(KeyValue::new("error.type", reason.to_owned()));
                span.set_status(Status::error(reason.to_owned()));
            }
        }
    }

    /// Writes this step's `traceparent` (and `tracestate`) into an outgoing request's headers,
    /// replacing any the client sent.
    pub fn inject(&self, headers: &mut HeaderMap) {
        let Some(cx) = &self.cx else {
            return;
        };
        if let Some(Carrier(t)) = cx.get::<Carrier>() {
            headers.remove(&TRACESTATE);
            t.propagator
                .inject_context(cx, &mut HeaderInjector(headers));
            // The propagator writes `tracestate` even when it is empty.
            if headers.get(&TRACESTATE).is_some_and(|v| v.is_empty()) {
                headers.remove(&TRACESTATE);
            }
        }
    }
}

impl Drop for Step {
    fn drop(&mut self) {
        if let (Some(cx), true) = (&self.cx, self.owned) {
            cx.span().end();
        }
    }
}

/// A client span for a call made on behalf of the current request ([`RequestTrace::scope`]),
/// described by its method and URL (its query left out); with no current request, a step that
/// does nothing.
pub fn call(name: &'static str, method: &Method, url: &url::Url) -> Step {
    Context::map_current(|cx| {
        client_step(cx, name, method, || {
            (
                without_query(url),
                url.host_str().map(str::to_owned),
                url.port_or_known_default(),
            )
        })
    })
}

/// [`call`] for a call to an upstream, whose URI is already an `http::Uri`.
pub fn call_to(name: &'static str, method: &Method, uri: &http::Uri) -> Step {
    Context::map_current(|cx| client_step(cx, name, method, || describe_uri(uri)))
}

/// `url.full` (without the query), `server.address` and `server.port` of an upstream URI.
fn describe_uri(uri: &http::Uri) -> (String, Option<String>, Option<u16>) {
    let authority = uri.authority();
    let full = format!(
        "{}://{}{}",
        uri.scheme_str().unwrap_or("http"),
        authority.map_or("", http::uri::Authority::as_str),
        uri.path()
    );
    let host = authority.map(|a| a.host().to_owned());
    let port = authority.and_then(http::uri::Authority::port_u16);
    (full, host, port)
}

/// A client span under `parent` (nothing when `parent` carries no request's trace), with the
/// HTTP client attributes `describe` gives when the span is recorded.
fn client_step(
    parent: &Context,
    name: &'static str,
    method: &Method,
    describe: impl FnOnce() -> (String, Option<String>, Option<u16>),
) -> Step {
    let step = child(parent, name, SpanKind::Client).unwrap_or_else(Step::none);
    if step.is_recording() {
        let (full, host, port) = describe();
        step.note("http.request.method", method.as_str().to_owned());
        step.note("url.full", full);
        if let Some(host) = host {
            step.note("server.address", host);
        }
        if let Some(port) = port {
            step.note("server.port", i64::from(port));
        }
    }
    step
}

/// `scheme://host:port/path` of a URL: no credentials, no query, no fragment.
pub fn without_query(url: &url::Url) -> String {
    let mut u = url.clone();
    u.set_query(None);
    u.set_fragment(None);
    let _ = u.set_username("");
    let _ = u.set_password(None);
    u.to_string()
}

/// Wraps a future that is spawned on behalf of the current request (a login that must finish
/// even if its request goes away) so that it keeps the request's context.
pub fn carry<F: std::future::Future>(fut: F) -> opentelemetry::trace::WithContext<F> {
    fut.with_context(Context::current())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_query_drops_credentials_query_and_fragment() {
        let u = url::Url::parse("https://u:p@idp.example:8443/token?x=1#f").unwrap();
        assert_eq!(without_query(&u), "https://idp.example:8443/token");
    }

    #[test]
    fn off_makes_nothing() {
        let t = Telemetry::off();
        let headers = HeaderMap::new();
        let trace = t.begin(
            &Request {
                method: &Method::GET,
                path: "/",
                host: None,
                user_agent: None,
                version: Version::HTTP_11,
                client: "127.0.0.1:1".parse().unwrap(),
                tls: false,
                headers: &headers,
            },
            true,
        );
        assert!(trace.trace_id().is_none());
        let mut h = HeaderMap::new();
        trace
            .step("verify token", SpanKind::Internal)
            .inject(&mut h);
        assert!(h.is_empty());
        // No current request: a call makes no span and injects nothing.
        let u = url::Url::parse("http://idp/jwks").unwrap();
        call("jwks fetch", &Method::GET, &u).inject(&mut h);
        assert!(h.is_empty());
    }
}
