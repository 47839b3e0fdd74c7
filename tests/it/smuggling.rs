//! Request smuggling and header abuse, over raw sockets: every ambiguous request is refused (400,
//! the connection closed) or normalised into exactly one well-framed upstream request, and what
//! follows a request on its connection is judged (route, auth) on its own.

use std::net::SocketAddr;

use serde_json::json;

use crate::support::gateway::config;
use crate::support::raw::{self, Http2};
use crate::support::{get, FakeIdp, RecordingUpstream, TestGateway};

struct Rig {
    idp: FakeIdp,
    up: RecordingUpstream,
    gw: TestGateway,
}

impl Rig {
    async fn start() -> Rig {
        let idp = FakeIdp::start().await;
        let up = RecordingUpstream::start().await;
        let toml = config(&idp.issuer, &up.url(), "")
            .replace("[server]\n", "[server]\nhttp2_cleartext = true\n");
        let gw = TestGateway::start(&toml, true).await;
        Rig { idp, up, gw }
    }

    fn addr(&self) -> SocketAddr {
        self.gw.app.as_ref().unwrap().proxy_addr
    }

    /// Upstream requests to `path` whose body arrived whole.
    fn complete_to(&self, path: &str) -> usize {
        self.up
            .requests
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.uri.starts_with(path) && r.body_complete)
            .count()
    }
}

const CHUNKED_HELLO: &str = "5\r\nhello\r\n0\r\n\r\n";

#[tokio::test]
async fn ambiguous_http1_requests_get_400_close_and_reach_nothing() {
    let rig = Rig::start().await;
    let post = "POST /public/s HTTP/1.1\r\nHost: gw.test\r\n";
    let cases: Vec<(&str, String)> = vec![
        (
            "two different Content-Length values",
            format!("{post}Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"),
        ),
        (
            "a signed Content-Length",
            format!("{post}Content-Length: +5\r\n\r\nhello"),
        ),
        (
            "Transfer-Encoding: chunked, identity",
            format!("{post}Transfer-Encoding: chunked, identity\r\n\r\n{CHUNKED_HELLO}"),
        ),
        (
            "Transfer-Encoding: identity, chunked",
            format!("{post}Transfer-Encoding: identity, chunked\r\n\r\n{CHUNKED_HELLO}"),
        ),
        (
            "Transfer-Encoding: gzip, chunked",
            format!("{post}Transfer-Encoding: gzip, chunked\r\n\r\n{CHUNKED_HELLO}"),
        ),
        (
            "Transfer-Encoding: xchunked",
            format!("{post}Transfer-Encoding: xchunked\r\n\r\n{CHUNKED_HELLO}"),
        ),
        (
            "two Transfer-Encoding lines",
            format!(
                "{post}Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n{CHUNKED_HELLO}"
            ),
        ),
        (
            "Transfer-Encoding on HTTP/1.0",
            format!(
                "POST /public/s HTTP/1.0\r\nHost: gw.test\r\nTransfer-Encoding: chunked\r\n\r\n{CHUNKED_HELLO}"
            ),
        ),
        (
            "an obs-fold continuation line",
            format!("{post}X-Folded: one\r\n two\r\nContent-Length: 0\r\n\r\n"),
        ),
        (
            "an obs-fold continuation of Transfer-Encoding",
            format!("{post}Transfer-Encoding:\r\n chunked\r\n\r\n{CHUNKED_HELLO}"),
        ),
        (
            "a space before the colon",
            format!("{post}Content-Length : 5\r\n\r\nhello"),
        ),
        (
            "a NUL in a header value",
            format!("{post}X-Nul: a\0b\r\nContent-Length: 0\r\n\r\n"),
        ),
        (
            "a bare CR in a header value",
            format!("{post}X-Cr: a\rb\r\nContent-Length: 0\r\n\r\n"),
        ),
        (
            "an absolute-form target whose authority is not Host",
            "GET http://evil.test/public/s HTTP/1.1\r\nHost: gw.test\r\n\r\n".to_owned(),
        ),
        (
            "two Host headers",
            "GET /public/s HTTP/1.1\r\nHost: gw.test\r\nHost: evil.test\r\n\r\n".to_owned(),
        ),
        (
            "two Host headers, same value",
            "GET /public/s HTTP/1.1\r\nHost: gw.test\r\nHost: gw.test\r\n\r\n".to_owned(),
        ),
        (
            "an HTTP/1.1 request without Host",
            "GET /public/s HTTP/1.1\r\nAccept: */*\r\n\r\n".to_owned(),
        ),
    ];
    for (what, bytes) in &cases {
        let (answer, mut conn) = raw::once(rig.addr(), bytes.as_bytes()).await;
        let answer = answer.unwrap_or_else(|| panic!("{what}: closed without an answer"));
        assert_eq!(answer.status, 400, "{what}: {answer:?}");
        assert!(conn.closes().await, "{what}: the connection must be closed");
    }
    assert_eq!(rig.up.count(), 0, "nothing reaches the upstream");
    assert_eq!(rig.up.in_flight(), 0, "nothing reaches the upstream");
}

#[tokio::test]
async fn an_absolute_form_target_that_agrees_with_host_is_served() {
    let rig = Rig::start().await;
    let req = "GET http://gw.test/public/s HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n\r\n";
    let (answer, _) = raw::once(rig.addr(), req.as_bytes()).await;
    assert_eq!(answer.unwrap().status, 200);
    assert_eq!(rig.up.count(), 1);
    assert_eq!(rig.up.last().uri, "/public/s");
}

/// `Content-Length` with `Transfer-Encoding: chunked`: hyper reads the chunked body (RFC 9112
/// §6.3), drops the length and closes after the answer, so the bytes after the chunked body
/// (which the length would have made part of the body, or a request) go nowhere.
#[tokio::test]
async fn content_length_with_chunked_is_read_as_chunked_and_the_connection_closed() {
    let rig = Rig::start().await;
    for headers in [
        "Content-Length: 4\r\nTransfer-Encoding: chunked\r\n",
        "Transfer-Encoding: chunked\r\nContent-Length: 60\r\n",
    ] {
        let before = rig.up.count();
        let req = format!(
            "POST /public/s HTTP/1.1\r\nHost: gw.test\r\n{headers}\r\n{CHUNKED_HELLO}\
             GET /public/smuggled HTTP/1.1\r\nHost: gw.test\r\n\r\n"
        );
        let (answer, mut conn) = raw::once(rig.addr(), req.as_bytes()).await;
        let answer = answer.expect("an answer");
        assert_eq!(answer.status, 200, "{headers:?}");
        assert_eq!(answer.header("connection"), Some("close"));
        assert!(conn.closes().await, "{headers:?}: no second answer");
        assert_eq!(
            rig.up.count(),
            before + 1,
            "{headers:?}: one upstream request"
        );
        let seen = rig.up.last();
        assert_eq!(seen.uri, "/public/s");
        assert!(seen.body_complete);
        assert_eq!(&seen.body[..], b"hello");
        assert!(
            !(seen.headers.contains_key("content-length")
                && seen.headers.contains_key("transfer-encoding")),
            "one framing upstream: {:?}",
            seen.headers
        );
        assert_ne!(
            seen.headers.get("content-length").map(|v| v.as_bytes()),
            Some(&b"4"[..])
        );
    }
    assert_eq!(rig.complete_to("/public/smuggled"), 0);
}

/// Spellings of `chunked` that hyper and the gateway both read as `chunked`: the upstream gets
/// the decoded body, once, framed by the gateway's own client.
#[tokio::test]
async fn chunked_spellings_and_chunk_extensions_are_normalised() {
    let rig = Rig::start().await;
    for (te, body) in [
        ("CHUNKED", CHUNKED_HELLO),
        ("chunked ", CHUNKED_HELLO),
        ("chunked\t", CHUNKED_HELLO),
        ("chunked", "5;ext=1;q=\"x\"\r\nhello\r\n0;last\r\n\r\n"),
        (
            "chunked",
            "2\r\nhe\r\n3\r\nllo\r\n0\r\nX-Trailer: t\r\n\r\n",
        ),
    ] {
        let before = rig.up.count();
        let req = format!(
            "POST /public/s HTTP/1.1\r\nHost: gw.test\r\nTransfer-Encoding: {te}\r\n\r\n{body}"
        );
        let (answer, _conn) = raw::once(rig.addr(), req.as_bytes()).await;
        let answer = answer.unwrap_or_else(|| panic!("{te:?} {body:?}: no answer"));
        assert_eq!(answer.status, 200, "{te:?} {body:?}");
        assert_eq!(rig.up.count(), before + 1, "{te:?} {body:?}");
        let seen = rig.up.last();
        assert!(seen.body_complete);
        assert_eq!(&seen.body[..], b"hello", "{te:?} {body:?}");
        assert!(!seen.headers.contains_key("x-trailer"));
    }
}

/// A chunked body that breaks off: its head was well formed, so it may have been forwarded
/// already, but the upstream never gets a whole request, and nothing after the break is read.
#[tokio::test]
async fn bad_chunks_never_make_a_whole_upstream_request() {
    let rig = Rig::start().await;
    let long_ext = format!("5;{}\r\nhello\r\n0\r\n\r\n", "e".repeat(64 << 10));
    let cases = [
        (
            "a chunk size that is not hex",
            "zz\r\nhello\r\n0\r\n\r\n".to_owned(),
        ),
        (
            "a negative chunk size",
            "-5\r\nhello\r\n0\r\n\r\n".to_owned(),
        ),
        (
            "a chunk size that overflows",
            "fffffffffffffffff\r\nhello\r\n0\r\n\r\n".to_owned(),
        ),
        (
            "a chunk longer than its size",
            "3\r\nhello\r\n0\r\n\r\n".to_owned(),
        ),
        ("an oversized chunk extension", long_ext),
        (
            "a bare LF after the chunk size",
            "5\nhello\r\n0\r\n\r\n".to_owned(),
        ),
    ];
    for (what, body) in &cases {
        let req = format!(
            "POST /public/bad HTTP/1.1\r\nHost: gw.test\r\nTransfer-Encoding: chunked\r\n\r\n{body}\
             GET /public/smuggled HTTP/1.1\r\nHost: gw.test\r\n\r\n"
        );
        let (answer, mut conn) = raw::once(rig.addr(), req.as_bytes()).await;
        if let Some(a) = &answer {
            assert!(
                a.status == 400 || a.status == 413 || a.status >= 500,
                "{what}: {a:?}"
            );
        }
        assert!(conn.closes().await, "{what}: the connection must end");
    }
    assert_eq!(
        rig.complete_to("/public/bad"),
        0,
        "no whole request upstream"
    );
    assert_eq!(rig.complete_to("/public/smuggled"), 0);
}

/// A request inside another's body is body, and a request pipelined after it is routed and
/// authorised on its own.
#[tokio::test]
async fn pipelined_requests_are_each_routed_and_authorised() {
    let rig = Rig::start().await;
    let inner = "GET /entity/Default/secret HTTP/1.1\r\nHost: gw.test\r\n\r\n";
    let req = format!(
        "POST /public/s HTTP/1.1\r\nHost: gw.test\r\nContent-Length: {}\r\n\r\n{inner}\
         GET /entity/Default/secret HTTP/1.1\r\nHost: gw.test\r\n\r\n\
         GET /nowhere HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n\r\n",
        inner.len()
    );
    let mut conn = raw::Http1::connect(rig.addr()).await;
    conn.send(req.as_bytes()).await;
    let first = conn.answer().await.expect("first answer");
    assert_eq!(first.status, 200);
    let second = conn.answer().await.expect("second answer");
    assert_eq!(second.status, 401, "{second:?}");
    assert!(second.header("www-authenticate").is_some());
    let third = conn.answer().await.expect("third answer");
    assert_eq!(third.status, 404);
    assert!(conn.closes().await);
    assert_eq!(rig.up.count(), 1, "only the public request is forwarded");
    let seen = rig.up.last();
    assert_eq!(seen.uri, "/public/s");
    assert_eq!(
        &seen.body[..],
        inner.as_bytes(),
        "the inner request is body"
    );
}

/// A claim holding CR LF never splits an identity header: the header is left out
/// (docs/configuration.md, `[route.headers]`), the request still goes through, and nothing else
/// is injected.
#[tokio::test]
async fn a_claim_with_crlf_never_splits_an_identity_header() {
    let rig = Rig::start().await;
    for sub in [
        "alice\r\nX-Evil: 1",
        "alice\nX-Evil: 1",
        "alice\0",
        "alice\u{7f}",
    ] {
        let token = rig
            .idp
            .token(json!({"scope": "reports", "tenant": "MyStore", "sub": sub}));
        let r = get(
            &rig.gw.url("/reports/q"),
            &[("authorization", &format!("Bearer {token}"))],
        )
        .await;
        assert_eq!(r.status, 200, "{sub:?}: {}", r.text());
        let seen = rig.up.last();
        assert!(!seen.headers.contains_key("x-auth-subject"), "{sub:?}");
        assert!(!seen.headers.contains_key("x-evil"), "{sub:?}");
        assert_eq!(seen.headers["x-auth-client"], "app");
    }
}

// === HTTP/2 ===

/// A POST's HEADERS on `stream` with `extra` fields, END_HEADERS only (a body follows).
fn post_headers(stream: u32, path: &str, extra: &[(&str, &str)], end_stream: bool) -> Vec<u8> {
    let mut fields = vec![
        (":method", "POST"),
        (":scheme", "http"),
        (":authority", "gw.test"),
        (":path", path),
    ];
    fields.extend_from_slice(extra);
    let flags = raw::END_HEADERS | if end_stream { raw::END_STREAM } else { 0 };
    raw::frame(raw::HEADERS, flags, stream, &raw::header_block(&fields))
}

#[tokio::test]
async fn h2_content_length_that_the_data_contradicts_is_a_stream_error() {
    let rig = Rig::start().await;
    let mut c = Http2::handshake(rig.addr(), &[]).await;
    // More DATA than declared, then less.
    let mut bytes = post_headers(1, "/public/cl-over", &[("content-length", "3")], false);
    bytes.extend(raw::frame(raw::DATA, raw::END_STREAM, 1, b"hello"));
    bytes.extend(post_headers(
        3,
        "/public/cl-under",
        &[("content-length", "10")],
        false,
    ));
    bytes.extend(raw::frame(raw::DATA, raw::END_STREAM, 3, b"hello"));
    assert!(c.send(&bytes).await);
    for stream in [1, 3] {
        let rst = c
            .read
            .until(|f| f.stream == stream && matches!(f.kind, raw::RST_STREAM | raw::HEADERS))
            .await
            .expect("an answer on the stream");
        assert_eq!(rst.kind, raw::RST_STREAM, "stream {stream}: {rst:?}");
        assert_eq!(rst.error_code(), raw::PROTOCOL_ERROR);
    }
    // The connection goes on: a well-formed request on it is served.
    assert!(c.send(&raw::get(5, "/public/after")).await);
    let ok = c.read.until(|f| f.stream == 5).await.expect("stream 5");
    assert_eq!(ok.kind, raw::HEADERS, "{ok:?}");
    assert_eq!(
        rig.complete_to("/public/cl-"),
        0,
        "no whole request upstream"
    );
}

#[tokio::test]
async fn h2_connection_specific_headers_are_a_stream_error() {
    let rig = Rig::start().await;
    let mut c = Http2::handshake(rig.addr(), &[]).await;
    let cases: [(&str, &str); 5] = [
        ("connection", "keep-alive"),
        ("transfer-encoding", "chunked"),
        ("te", "gzip"),
        ("keep-alive", "timeout=5"),
        ("upgrade", "websocket"),
    ];
    for (i, (name, value)) in cases.iter().enumerate() {
        let stream = 1 + 2 * u32::try_from(i).unwrap();
        assert!(
            c.send(&post_headers(
                stream,
                "/public/conn",
                &[(name, value)],
                true
            ))
            .await
        );
        let f = c
            .read
            .until(|f| f.stream == stream)
            .await
            .unwrap_or_else(|| panic!("{name}: the connection ended"));
        assert_eq!(f.kind, raw::RST_STREAM, "{name}: {f:?}");
        assert_eq!(f.error_code(), raw::PROTOCOL_ERROR, "{name}");
    }
    // `te: trailers` is the one `te` allowed.
    assert!(
        c.send(&post_headers(11, "/public/te", &[("te", "trailers")], true))
            .await
    );
    let f = c.read.until(|f| f.stream == 11).await.expect("stream 11");
    assert_eq!(f.kind, raw::HEADERS, "{f:?}");
    assert_eq!(rig.up.count(), 1, "only the te: trailers request");
    assert_eq!(rig.up.last().uri, "/public/te");
}

#[tokio::test]
async fn h2_authority_and_host_must_agree() {
    let rig = Rig::start().await;
    let mut c = Http2::handshake(rig.addr(), &[]).await;
    assert!(
        c.send(&post_headers(
            1,
            "/public/h",
            &[("host", "evil.test")],
            true
        ))
        .await
    );
    let f = c.read.until(|f| f.stream == 1).await.expect("stream 1");
    // The answer's HPACK is not decoded here: a 400 is JSON with the framing error's text.
    assert_eq!(f.kind, raw::HEADERS, "{f:?}");
    let body = c
        .read
        .until(|f| f.stream == 1 && f.kind == raw::DATA)
        .await
        .expect("a body");
    let text = String::from_utf8_lossy(&body.payload);
    assert!(text.contains("invalid_request"), "{text}");
    assert!(text.contains("Host"), "{text}");
    assert_eq!(rig.up.count(), 0);
}
