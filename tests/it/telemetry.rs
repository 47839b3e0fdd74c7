//! OpenTelemetry: the spans a request makes, as an OTLP/HTTP collector receives them (decoded
//! from the exported protobuf), and the `traceparent` each call carries: to the upstream, the
//! identity provider (key set, introspection) and the legacy API's login.

use serde_json::json;

use crate::support::gateway::config;
use crate::support::introspect::{ExpectAuth, FakeIntrospection};
use crate::support::legacy::{Setup, Store, ECHO};
use crate::support::otlp::{Receiver, Span};
use crate::support::{get, FakeIdp, RecordingUpstream, TestGateway};

/// The client's trace context in the tests: trace `0af7…`, span `b7ad…`, sampled.
const CLIENT_TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
const CLIENT_SPAN: &str = "b7ad6b7169203331";

fn client_traceparent() -> String {
    format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01")
}

fn telemetry(receiver: &Receiver, ratio: f64) -> String {
    format!(
        "[telemetry]\notlp_endpoint = \"{}\"\nservice_name = \"tollgate-test\"\nsample_ratio = {ratio}\n",
        receiver.url
    )
}

/// A gateway in front of a fake issuer and a recording upstream, exporting to a fresh receiver
/// at `ratio`; `edit` changes the configuration text first.
async fn start(
    ratio: f64,
    edit: impl Fn(String) -> String,
) -> (Receiver, FakeIdp, RecordingUpstream, TestGateway) {
    let receiver = Receiver::start().await;
    let idp = FakeIdp::start().await;
    let upstream = RecordingUpstream::start().await;
    let toml = edit(config(
        &idp.issuer,
        &upstream.url(),
        &telemetry(&receiver, ratio),
    ));
    let gw = TestGateway::start(&toml, true).await;
    (receiver, idp, upstream, gw)
}

fn named<'a>(spans: &'a [Span], name: &str) -> Vec<&'a Span> {
    spans.iter().filter(|s| s.name == name).collect()
}

fn one<'a>(spans: &'a [Span], name: &str) -> &'a Span {
    let found = named(spans, name);
    assert_eq!(found.len(), 1, "one `{name}` span expected: {spans:#?}");
    found[0]
}

/// `traceparent` → (trace id, parent span id, flags).
fn parse(traceparent: &str) -> (String, String, String) {
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(parts.len(), 4, "{traceparent}");
    assert_eq!(parts[0], "00");
    (
        parts[1].to_owned(),
        parts[2].to_owned(),
        parts[3].to_owned(),
    )
}

/// The `traceparent` a call carried names `span` (and its trace) as the caller.
fn assert_sent_by(traceparent: Option<&str>, span: &Span) {
    let (trace, parent, _) = parse(traceparent.expect("the call carried a traceparent"));
    assert_eq!(
        (trace, parent),
        (span.trace_id.clone(), span.span_id.clone())
    );
}

/// With `trust_forwarded_headers`, the client's trace is continued: the server span is a child
/// of the client's span, verification and the upstream request are children of the server span,
/// and the upstream receives the upstream request span's context.
#[tokio::test]
async fn a_trusted_callers_trace_is_continued_to_the_upstream() {
    let (receiver, idp, upstream, gw) = start(1.0, |t| {
        t.replace("[server]\n", "[server]\ntrust_forwarded_headers = true\n")
    })
    .await;
    let auth = format!("Bearer {}", idp.token(json!({})));
    let tp = client_traceparent();
    let headers = [
        ("authorization", auth.as_str()),
        ("traceparent", tp.as_str()),
        ("tracestate", "vendor=opaque"),
    ];
    assert_eq!(
        get(&gw.url("/entity/Default/x?secret=q"), &headers)
            .await
            .status,
        200
    );
    assert_eq!(
        get(&gw.url("/entity/Default/y"), &headers).await.status,
        200
    );
    gw.shutdown().await;

    let spans = receiver.spans();
    assert!(
        receiver
            .content_types
            .lock()
            .unwrap()
            .iter()
            .all(|c| c == "application/x-protobuf"),
        "OTLP/HTTP with protobuf"
    );
    let servers: Vec<&Span> = spans.iter().filter(|s| s.kind == 2).collect();
    assert_eq!(servers.len(), 2, "one server span per request: {spans:#?}");
    for server in &servers {
        assert_eq!(server.service, "tollgate-test");
        assert_eq!(server.name, "GET erp-read");
        assert_eq!(server.trace_id, CLIENT_TRACE);
        assert_eq!(server.parent_id, CLIENT_SPAN);
        assert_eq!(server.attr("http.request.method"), Some("GET"));
        assert_eq!(server.attr("http.response.status_code"), Some("200"));
        assert_eq!(server.attr("tollgate.route"), Some("erp-read"));
        assert_eq!(server.attr("client.address"), Some("127.0.0.1"));
        // The query never leaves the gateway in a span.
        assert!(server
            .attr("url.path")
            .unwrap()
            .starts_with("/entity/Default/"));
        assert!(spans.iter().all(|s| s
            .attributes
            .iter()
            .all(|(_, v)| !v.contains("secret=q") && !v.contains(&auth[7..]))));
    }
    let children = |server: &Span| -> Vec<Span> {
        spans
            .iter()
            .filter(|s| s.parent_id == server.span_id)
            .cloned()
            .collect()
    };
    let first = children(
        servers
            .iter()
            .find(|s| s.attr("url.path") == Some("/entity/Default/x"))
            .unwrap(),
    );
    let verify = one(&first, "verify token");
    assert_eq!(verify.attr("tollgate.token.cache"), Some("miss"));
    assert_eq!(verify.attr("tollgate.issuer"), Some("erp"));
    let up = one(&first, "upstream request");
    assert_eq!(up.kind, 3, "a client span");
    assert_eq!(up.attr("http.response.status_code"), Some("200"));
    assert_eq!(up.attr("tollgate.upstream"), Some("erp"));
    let second = children(
        servers
            .iter()
            .find(|s| s.attr("url.path") == Some("/entity/Default/y"))
            .unwrap(),
    );
    assert_eq!(
        one(&second, "verify token").attr("tollgate.token.cache"),
        Some("hit")
    );

    // The upstream got the upstream request span's context, not the client's.
    let recorded = upstream.requests.lock().unwrap().clone();
    assert_eq!(recorded.len(), 2);
    let sent = recorded[0]
        .headers
        .get("traceparent")
        .unwrap()
        .to_str()
        .unwrap();
    let (trace, parent, flags) = parse(sent);
    assert_eq!(trace, CLIENT_TRACE);
    assert_eq!(flags, "01");
    assert!(
        named(&spans, "upstream request")
            .iter()
            .any(|s| s.span_id == parent),
        "the upstream's parent is an upstream request span"
    );
    assert_eq!(
        recorded[0].headers.get("tracestate").unwrap(),
        "vendor=opaque",
        "a trusted caller's tracestate is carried on"
    );
}

/// Without `trust_forwarded_headers`, the client's trace is not continued: a new trace starts,
/// linked to the client's span, and the upstream never sees the client's ids.
#[tokio::test]
async fn an_untrusted_callers_trace_is_linked_not_continued() {
    let (receiver, _idp, upstream, gw) = start(1.0, |t| t).await;
    let tp = client_traceparent();
    let r = get(
        &gw.url("/public/x"),
        &[("traceparent", tp.as_str()), ("tracestate", "evil=1")],
    )
    .await;
    assert_eq!(r.status, 200);
    gw.shutdown().await;

    let spans = receiver.spans();
    let server = one(&spans, "GET public");
    assert_ne!(server.trace_id, CLIENT_TRACE);
    assert_eq!(server.parent_id, "", "a root span");
    assert_eq!(
        server.links,
        vec![(CLIENT_TRACE.to_owned(), CLIENT_SPAN.to_owned())]
    );
    let recorded = upstream.requests.lock().unwrap().clone();
    let sent = recorded[0]
        .headers
        .get("traceparent")
        .unwrap()
        .to_str()
        .unwrap();
    assert_eq!(parse(sent).0, server.trace_id);
    assert!(recorded[0].headers.get("tracestate").is_none());
}

/// A refused token still makes its server span, with the reason; no upstream span.
#[tokio::test]
async fn a_refusal_is_a_span_with_its_reason() {
    let (receiver, idp, _upstream, gw) = start(1.0, |t| t).await;
    let expired = idp.token(json!({"exp": 1_000_000}));
    let auth = format!("Bearer {expired}");
    assert_eq!(
        get(&gw.url("/entity/Default/x"), &[("authorization", &auth)])
            .await
            .status,
        401
    );
    gw.shutdown().await;
    let spans = receiver.spans();
    let server = one(&spans, "GET erp-read");
    assert_eq!(server.attr("http.response.status_code"), Some("401"));
    assert_eq!(server.attr("tollgate.token.refused"), Some("expired"));
    assert_eq!(
        one(&spans, "verify token").attr("error.type"),
        Some("expired")
    );
    assert!(named(&spans, "upstream request").is_empty());
}

/// A key set fetched for a request's unknown `kid` is a span of its trace, and the IdP gets
/// its context.
#[tokio::test]
async fn a_key_fetch_for_a_request_carries_its_trace() {
    let (receiver, idp, _upstream, gw) = start(1.0, |t| {
        t.replace("jwks_min_refresh = \"30s\"", "jwks_min_refresh = \"0s\"")
    })
    .await;
    let fetched_at_start = idp.jwks_traceparents.lock().unwrap().len();
    idp.rotate(
        tollgate::demo::keys::SigningKey::rsa("k2", jsonwebtoken::Algorithm::RS256).unwrap(),
        true,
    );
    let auth = format!("Bearer {}", idp.sign("k2", &idp.claims()));
    assert_eq!(
        get(&gw.url("/entity/Default/x"), &[("authorization", &auth)])
            .await
            .status,
        200
    );
    gw.shutdown().await;
    let spans = receiver.spans();
    let server = one(&spans, "GET erp-read");
    let fetch = one(&spans, "jwks fetch");
    assert_eq!(
        (fetch.parent_id.as_str(), fetch.kind),
        (server.span_id.as_str(), 3)
    );
    assert_eq!(fetch.attr("http.response.status_code"), Some("200"));
    let sent = idp.jwks_traceparents.lock().unwrap()[fetched_at_start..].to_vec();
    assert_sent_by(sent[0].as_deref(), fetch);
}

/// An introspection call is a client span of the request's trace, and the endpoint gets its
/// context.
#[tokio::test]
async fn an_introspection_call_carries_the_trace() {
    let receiver = Receiver::start().await;
    let x = FakeIntrospection::start(ExpectAuth::Basic {
        id: "gw".into(),
        secret: "s3cret".into(),
    })
    .await;
    let upstream = RecordingUpstream::start().await;
    let toml = format!(
        r#"
[[issuer]]
id = "opaque"
issuer = "{iss}"
audiences = ["api"]
validation = "introspection"
[issuer.introspection]
endpoint = "{ep}"
client_id = "gw"
client_secret = "s3cret"

[[upstream]]
id = "erp"
url = "{up}"

[[route]]
id = "read"
prefix = "/"
upstream = "erp"
scopes = ["api"]
{t}"#,
        iss = x.issuer,
        ep = x.endpoint,
        up = upstream.url(),
        t = telemetry(&receiver, 1.0)
    );
    let gw = TestGateway::start(&toml, true).await;
    let token = x.active(json!({"scope": "api", "sub": "u1", "aud": "api"}));
    let auth = format!("Bearer {token}");
    assert_eq!(
        get(&gw.url("/x"), &[("authorization", &auth)]).await.status,
        200
    );
    gw.shutdown().await;
    let spans = receiver.spans();
    let server = one(&spans, "GET read");
    let call = one(&spans, "introspection");
    assert_eq!(call.parent_id, server.span_id);
    assert_eq!(call.attr("http.request.method"), Some("POST"));
    assert_eq!(call.attr("url.full"), Some(x.endpoint.as_str()));
    assert_eq!(
        one(&spans, "verify token").attr("tollgate.token.cache"),
        Some("miss")
    );
    let sent = x.traceparents();
    assert_sent_by(sent[0].as_deref(), call);
}

/// A session route: the lease wait and the login it needed are spans of the request, and the
/// legacy API's login request carries the trace.
#[tokio::test]
async fn the_session_lease_and_login_are_spans_of_the_request() {
    let receiver = Receiver::start().await;
    let env = Setup::new(Store::Memory)
        .extra(&telemetry(&receiver, 1.0))
        .start()
        .await;
    let token = env.token("g1", false);
    assert_eq!(env.echo(&token).await.status, 200);
    let logins = env.fake.login_traceparents();
    env.gw.shutdown().await;
    let spans = receiver.spans();
    let server = spans
        .iter()
        .find(|s| s.kind == 2 && s.attr("url.path") == Some(ECHO))
        .expect("the request's server span");
    let lease = one(&spans, "session lease");
    assert_eq!(lease.parent_id, server.span_id);
    let login = one(&spans, "upstream login");
    assert_eq!(
        (login.parent_id.as_str(), login.trace_id.as_str()),
        (server.span_id.as_str(), server.trace_id.as_str())
    );
    assert_eq!(login.attr("http.response.status_code"), Some("204"));
    let up = one(&spans, "upstream request");
    assert_eq!(up.parent_id, server.span_id);
    assert_eq!(logins.len(), 1);
    assert_sent_by(logins[0].as_deref(), login);
    // No span holds a credential or a cookie value.
    for s in &spans {
        for (k, v) in &s.attributes {
            assert!(!v.contains("123") || k == "server.port", "{k}={v}");
            assert!(!v.contains(".ASPXAUTH"), "{k}={v}");
        }
    }
}

/// At `sample_ratio = 0` nothing is exported, yet the request has a trace id and the upstream a
/// `traceparent` whose sampled flag is off.
#[tokio::test]
async fn sampling_at_zero_exports_nothing_but_still_propagates() {
    let (receiver, _idp, upstream, gw) = start(0.0, |t| t).await;
    for _ in 0..5 {
        assert_eq!(get(&gw.url("/public/x"), &[]).await.status, 200);
    }
    gw.shutdown().await;
    assert!(receiver.spans().is_empty(), "{:#?}", receiver.spans());
    let recorded = upstream.requests.lock().unwrap().clone();
    let sent = recorded[0]
        .headers
        .get("traceparent")
        .unwrap()
        .to_str()
        .unwrap();
    let (trace, _, flags) = parse(sent);
    assert_eq!(flags, "00");
    assert_ne!(trace, "0".repeat(32));
}

/// Without `[telemetry]`, nothing is traced: the client's `traceparent` passes through to the
/// upstream unchanged, as any other end-to-end header.
#[tokio::test]
async fn without_telemetry_traceparent_passes_through() {
    let receiver = Receiver::start().await;
    let idp = FakeIdp::start().await;
    let upstream = RecordingUpstream::start().await;
    let gw = TestGateway::start(&config(&idp.issuer, &upstream.url(), ""), true).await;
    assert!(!gw.app.as_ref().unwrap().gateway.telemetry().is_on());
    let tp = client_traceparent();
    assert_eq!(
        get(&gw.url("/public/x"), &[("traceparent", tp.as_str())])
            .await
            .status,
        200
    );
    gw.shutdown().await;
    let recorded = upstream.requests.lock().unwrap().clone();
    assert_eq!(recorded[0].headers.get("traceparent").unwrap(), tp.as_str());
    assert!(receiver.spans().is_empty());
}

/// A collector that is down costs the requests nothing: they are answered, and the gateway
/// stops within its bounds.
#[tokio::test]
async fn a_collector_that_is_down_does_not_hold_requests() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", dead.local_addr().unwrap());
    drop(dead);
    let idp = FakeIdp::start().await;
    let upstream = RecordingUpstream::start().await;
    let toml = config(
        &idp.issuer,
        &upstream.url(),
        &format!("[telemetry]\notlp_endpoint = \"{url}\"\ntimeout = \"1s\"\n"),
    );
    let gw = TestGateway::start(&toml, true).await;
    for _ in 0..20 {
        assert_eq!(get(&gw.url("/public/x"), &[]).await.status, 200);
    }
    tokio::time::timeout(std::time::Duration::from_secs(20), gw.shutdown())
        .await
        .expect("the gateway stops although the collector is down");
}
