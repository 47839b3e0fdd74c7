//! Connection handling on the proxy listener: the request-head limit (431), the head read
//! timeout, the idle timeout of keep-alive connections, the connection cap (a waiting client is
//! served once a place frees up, never dropped), and h2c only when `http2_cleartext` is on.
//!
//! Timeouts are set short here; the assertions only say that a connection closes within a
//! generous bound, never how fast the gateway is.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode, Version};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use crate::support::RecordingUpstream;
use tollgate::{App, Listeners};

/// Long enough for anything that should happen to have happened on a loaded 2-core machine.
const BOUND: Duration = Duration::from_secs(10);

/// A gateway with one public route (`/public/`) to `upstream`; `server` and `upstream_extra`
/// are extra keys of `[server]` and `[[upstream]]`, `tail` more tables (such as `[server.tls]`).
pub(crate) async fn start(server: &str, upstream: &str, upstream_extra: &str, tail: &str) -> App {
    start_on(
        Listeners::ephemeral().await.unwrap(),
        server,
        upstream,
        upstream_extra,
        tail,
    )
}

/// [`start`] on `listeners`.
pub(crate) fn start_on(
    listeners: Listeners,
    server: &str,
    upstream: &str,
    upstream_extra: &str,
    tail: &str,
) -> App {
    let toml = format!(
        r#"
[server]
realm = "tollgate"
{server}

[[upstream]]
id = "up"
url = "{upstream}"
connect_timeout = "1s"
timeout = "5s"
{upstream_extra}

[[route]]
id = "public"
prefix = "/public/"
upstream = "up"
auth = "none"

{tail}
"#
    );
    let config = tollgate::config::from_toml_str(&toml).unwrap_or_else(|e| panic!("config: {e}"));
    App::start(&config, listeners).unwrap()
}

/// A response read whole.
#[derive(Debug)]
pub(crate) struct Answer {
    pub status: StatusCode,
    pub version: Version,
    pub body: Bytes,
}

impl Answer {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// An HTTP/1.1 client connection on `io`; the task ends when the server closes the connection.
pub(crate) async fn h1<I>(
    io: I,
) -> (
    hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    JoinHandle<Result<(), hyper::Error>>,
)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .unwrap();
    (sender, tokio::spawn(conn))
}

/// An HTTP/2 client connection on `io` (prior knowledge, or after ALPN `h2`).
pub(crate) async fn h2<I>(
    io: I,
) -> Result<
    (
        hyper::client::conn::http2::SendRequest<Empty<Bytes>>,
        JoinHandle<Result<(), hyper::Error>>,
    ),
    hyper::Error,
>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io)).await?;
    Ok((sender, tokio::spawn(conn)))
}

/// `GET path` on an HTTP/1.1 connection.
pub(crate) async fn get1(
    sender: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    path: &str,
) -> Result<Answer, hyper::Error> {
    sender.ready().await?;
    let req = Request::get(path)
        .header("host", "gateway.test")
        .body(Empty::new())
        .unwrap();
    read(sender.send_request(req).await?).await
}

/// `GET path` on an HTTP/2 connection.
pub(crate) async fn get2(
    sender: &mut hyper::client::conn::http2::SendRequest<Empty<Bytes>>,
    path: &str,
) -> Result<Answer, hyper::Error> {
    get2_with(sender, path, &[]).await
}

/// `GET path` on an HTTP/2 connection with extra headers.
pub(crate) async fn get2_with(
    sender: &mut hyper::client::conn::http2::SendRequest<Empty<Bytes>>,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Answer, hyper::Error> {
    sender.ready().await?;
    let mut req = Request::get(format!("https://gateway.test{path}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    read(sender.send_request(req.body(Empty::new()).unwrap()).await?).await
}

async fn read(resp: http::Response<hyper::body::Incoming>) -> Result<Answer, hyper::Error> {
    let (parts, body) = resp.into_parts();
    Ok(Answer {
        status: parts.status,
        version: parts.version,
        body: body.collect().await?.to_bytes(),
    })
}

/// Reads until the peer closes the connection (EOF or reset) and returns what came; panics if
/// it is still open after `bound`.
async fn read_until_closed(stream: &mut TcpStream, bound: Duration) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + bound;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return got,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => panic!(
                "the connection is still open after {bound:?}; received: {:?}",
                String::from_utf8_lossy(&got)
            ),
        }
    }
}

/// The status line of what a raw connection received.
fn status_line(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned()
}

pub(crate) async fn connect(addr: SocketAddr) -> TcpStream {
    TcpStream::connect(addr).await.unwrap()
}

#[tokio::test]
async fn a_request_head_over_max_header_bytes_gets_431() {
    let upstream = RecordingUpstream::start().await;
    let app = start(r#"max_header_bytes = "16KiB""#, &upstream.url(), "", "").await;

    // Well under the limit: served.
    let mut s = connect(app.proxy_addr).await;
    let head = format!(
        "GET /public/small HTTP/1.1\r\nHost: gateway.test\r\nX-Pad: {}\r\nConnection: close\r\n\r\n",
        "a".repeat(8_000)
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let got = read_until_closed(&mut s, BOUND).await;
    assert_eq!(status_line(&got), "HTTP/1.1 200 OK");

    // Over it: 431 from the gateway, nothing upstream.
    let mut s = connect(app.proxy_addr).await;
    let head = format!(
        "GET /public/big HTTP/1.1\r\nHost: gateway.test\r\nX-Pad: {}\r\n\r\n",
        "a".repeat(20_000)
    );
    // The gateway may answer and close before it has read everything: ignore write errors.
    let _ = s.write_all(head.as_bytes()).await;
    let got = read_until_closed(&mut s, BOUND).await;
    assert_eq!(
        status_line(&got),
        "HTTP/1.1 431 Request Header Fields Too Large"
    );
    assert_eq!(upstream.count(), 1, "only the small request went upstream");
    app.shutdown().await;
}

#[tokio::test]
async fn an_http2_header_list_over_max_header_bytes_gets_431() {
    let upstream = RecordingUpstream::start().await;
    // Above hyper's default (16 KiB), so that both answers below depend on the setting.
    let app = start(
        "max_header_bytes = \"32KiB\"\nhttp2_cleartext = true",
        &upstream.url(),
        "",
        "",
    )
    .await;
    let (mut sender, _conn) = h2(connect(app.proxy_addr).await).await.unwrap();
    let pad = "a".repeat(20_000);
    let ok = get2_with(&mut sender, "/public/small", &[("x-pad", &pad)])
        .await
        .unwrap();
    assert_eq!(ok.status, 200);
    let pad = "a".repeat(40_000);
    let big = get2_with(&mut sender, "/public/big", &[("x-pad", &pad)])
        .await
        .unwrap();
    assert_eq!(big.status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    assert_eq!(upstream.count(), 1);
    app.shutdown().await;
}

#[tokio::test]
async fn a_slow_request_head_is_cut_off_after_header_read_timeout() {
    let upstream = RecordingUpstream::start().await;
    let app = start(
        "header_read_timeout = \"300ms\"\nidle_timeout = \"60s\"",
        &upstream.url(),
        "",
        "",
    )
    .await;

    // Half a head, then nothing: the gateway closes the connection without an answer.
    let mut s = connect(app.proxy_addr).await;
    s.write_all(b"GET /public/slow HTTP/1.1\r\nHost: gateway.test\r\n")
        .await
        .unwrap();
    let got = read_until_closed(&mut s, BOUND).await;
    assert!(
        got.is_empty() || status_line(&got).starts_with("HTTP/1.1 408"),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
    assert_eq!(upstream.count(), 0);

    // The head timer runs from a head's first byte: a keep-alive connection that waits longer
    // than header_read_timeout between requests is still served (idle_timeout governs it).
    let (mut sender, conn) = h1(connect(app.proxy_addr).await).await;
    assert_eq!(get1(&mut sender, "/public/a").await.unwrap().status, 200);
    tokio::time::sleep(Duration::from_millis(900)).await; // the pause under test, not a wait
    assert!(
        !conn.is_finished(),
        "closed while idle for less than idle_timeout"
    );
    assert_eq!(get1(&mut sender, "/public/b").await.unwrap().status, 200);
    app.shutdown().await;
}

/// Reads one answer off a raw connection (its head, then a `Content-Length` body) and returns
/// its status line.
async fn read_answer(stream: &mut TcpStream) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse().unwrap());
            if got.len() >= end + 4 + length {
                return status_line(&got);
            }
        }
        let n = tokio::time::timeout(BOUND, stream.read(&mut buf))
            .await
            .expect("an answer within the bound")
            .unwrap();
        assert!(
            n > 0,
            "closed mid-answer: {:?}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
    }
}

/// Each head on a kept connection gets its own deadline from its own first byte, whether it
/// arrives whole or in pieces: a head completed in pieces is served, a later one is not held to
/// an earlier one's deadline, and one left half-sent is still cut off.
#[tokio::test]
async fn every_head_on_a_kept_connection_is_timed_from_its_own_first_byte() {
    let upstream = RecordingUpstream::start().await;
    let app = start(
        "header_read_timeout = \"1s\"\nidle_timeout = \"60s\"",
        &upstream.url(),
        "",
        "",
    )
    .await;
    let mut s = connect(app.proxy_addr).await;
    let pause = |ms| tokio::time::sleep(Duration::from_millis(ms)); // the pauses under test
    s.write_all(b"GET /public/a HTTP/1.1\r\nHost: gateway.test\r\n")
        .await
        .unwrap();
    pause(300).await;
    s.write_all(b"\r\n").await.unwrap();
    assert_eq!(read_answer(&mut s).await, "HTTP/1.1 200 OK");

    // 0.3 + 0.5 + 0.6 s after the first head's first byte: past its deadline, not this one's.
    pause(500).await;
    s.write_all(b"GET /public/b HTTP/1.1\r\nHost: gateway.test\r\n")
        .await
        .unwrap();
    pause(600).await;
    s.write_all(b"\r\n").await.unwrap();
    assert_eq!(read_answer(&mut s).await, "HTTP/1.1 200 OK");

    s.write_all(b"GET /public/c HTTP/1.1\r\n").await.unwrap();
    let got = read_until_closed(&mut s, BOUND).await;
    assert!(
        got.is_empty() || status_line(&got).starts_with("HTTP/1.1 408"),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
    assert_eq!(upstream.count(), 2);
    app.shutdown().await;
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_idle_timeout() {
    let upstream = RecordingUpstream::start().await;
    let app = start(
        "idle_timeout = \"300ms\"\nhttp2_cleartext = true",
        &upstream.url(),
        "",
        "",
    )
    .await;

    // HTTP/1.1: served, then closed once idle.
    let (mut sender, conn) = h1(connect(app.proxy_addr).await).await;
    let a = get1(&mut sender, "/public/one").await.unwrap();
    assert_eq!(a.status, 200);
    let ended = tokio::time::timeout(BOUND, conn).await;
    assert!(ended.is_ok(), "the idle HTTP/1.1 connection is still open");

    // A request that takes longer than idle_timeout is not idle: it is answered.
    let (mut sender, _conn) = h1(connect(app.proxy_addr).await).await;
    let slow = get1(&mut sender, "/public/slow?ms=800").await.unwrap();
    assert_eq!(slow.status, 200);

    // HTTP/2 (prior knowledge): GOAWAY once idle, and the connection ends.
    let (mut sender, conn) = h2(connect(app.proxy_addr).await).await.unwrap();
    assert_eq!(get2(&mut sender, "/public/two").await.unwrap().status, 200);
    let ended = tokio::time::timeout(BOUND, conn).await;
    assert!(ended.is_ok(), "the idle HTTP/2 connection is still open");
    app.shutdown().await;
}

#[tokio::test]
async fn beyond_max_connections_a_client_waits_until_a_place_frees() {
    let upstream = RecordingUpstream::start().await;
    let app = start("max_connections = 2", &upstream.url(), "", "").await;

    let (mut a, a_conn) = h1(connect(app.proxy_addr).await).await;
    let (mut b, _b_conn) = h1(connect(app.proxy_addr).await).await;
    assert_eq!(get1(&mut a, "/public/a").await.unwrap().status, 200);
    assert_eq!(get1(&mut b, "/public/b").await.unwrap().status, 200);

    // A third client connects (the listen backlog takes it) but is not served while two
    // connections are open...
    let (mut c, _c_conn) = h1(connect(app.proxy_addr).await).await;
    // (The task hands the client back, so the connection stays open for the count below.)
    let third = tokio::spawn(async move { (get1(&mut c, "/public/c").await, c) });
    tokio::time::sleep(Duration::from_millis(500)).await; // the wait under test
    assert!(!third.is_finished(), "a third connection was served");
    assert_eq!(upstream.count(), 2);

    // ...and is served, not dropped, as soon as one of them closes.
    drop(a);
    a_conn.abort();
    let (answer, _c) = tokio::time::timeout(BOUND, third)
        .await
        .expect("the waiting client was not served after a place freed")
        .unwrap();
    assert_eq!(answer.unwrap().status, 200);
    assert_eq!(upstream.count(), 3);
    // The third connection waited for a place; two are open now (b and c).
    let m = crate::support::metrics::scrape(&format!("http://{}", app.admin_addr)).await;
    assert_eq!(
        m.value(r#"tollgate_connections_waiting_total{listener="proxy"}"#),
        Some(1.0),
        "{m:?}"
    );
    assert_eq!(
        m.value(r#"tollgate_connections_open{listener="proxy"}"#),
        Some(2.0),
        "{m:?}"
    );
    app.shutdown().await;
}

#[tokio::test]
async fn h2c_prior_knowledge_is_accepted_only_with_http2_cleartext() {
    let upstream = RecordingUpstream::start().await;

    // By default cleartext is HTTP/1.1 only: the h2 preface is not an HTTP/1.1 request.
    let app = start("", &upstream.url(), "", "").await;
    let refused = match h2(connect(app.proxy_addr).await).await {
        Err(_) => true,
        Ok((mut sender, _conn)) => get2(&mut sender, "/public/h2c").await.is_err(),
    };
    assert!(refused, "h2c was served without http2_cleartext");
    assert_eq!(upstream.count(), 0);
    // HTTP/1.1 is served as usual.
    let (mut sender, _conn) = h1(connect(app.proxy_addr).await).await;
    let a = get1(&mut sender, "/public/h1").await.unwrap();
    assert_eq!((a.status, a.version), (StatusCode::OK, Version::HTTP_11));
    app.shutdown().await;

    // With http2_cleartext, prior knowledge works, and HTTP/1.1 still does.
    let app = start("http2_cleartext = true", &upstream.url(), "", "").await;
    let (mut sender, _conn) = h2(connect(app.proxy_addr).await).await.unwrap();
    let a = get2(&mut sender, "/public/h2c").await.unwrap();
    assert_eq!((a.status, a.version), (StatusCode::OK, Version::HTTP_2));
    let (mut sender, _conn) = h1(connect(app.proxy_addr).await).await;
    let a = get1(&mut sender, "/public/h1").await.unwrap();
    assert_eq!((a.status, a.version), (StatusCode::OK, Version::HTTP_11));
    app.shutdown().await;
}
