//! Connections kept open between requests, seen from outside: to an HTTP/1.1 upstream, and to
//! identity providers. A server whose keep-alive is shorter than the gateway's closes a kept
//! connection just as a request is sent on it.
//!
//! - To the upstream, an idempotent request without a body is then sent again on a new
//!   connection (`tollgate_upstream_retries_total`), and so is a session's logout (a `POST`,
//!   but one that ends the session once however often it is sent; lost, it would leave an
//!   upstream session whose seat the gateway no longer counts). A session's login, which must
//!   not be sent twice, opens a new connection after a quiet spell instead. Any other request
//!   gets 502, and the upstream's `idle_timeout` is how an operator keeps the pool below the
//!   upstream's keep-alive.
//! - To an identity provider, a document fetch or an introspection call (a query either way) is
//!   sent again; to a trace collector, a batch of spans (by the OTLP exporter itself).
//!
//! The servers here are raw TCP, so that they can behave as a web server's keep-alive timer does
//! at its worst: a request that arrives on a connection idle past the timer meets a close, not
//! an answer.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

use crate::connections::start;
use crate::support::legacy::{Env, Setup, Store};
use crate::support::otlp::Receiver;
use crate::support::{eventually, get, metrics, request, send, FakeIdp, RecordingUpstream};

/// The fake upstream's keep-alive timeout.
const KEEP_ALIVE: Duration = Duration::from_millis(400);

/// A server that answers `200 ok` and keeps each connection for [`KEEP_ALIVE`]; a request that
/// comes on a connection idle for longer finds it closed under it, unanswered.
struct ShortKeepAlive {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    /// Requests that met a connection the upstream was closing.
    dropped: Arc<AtomicUsize>,
}

impl ShortKeepAlive {
    async fn start() -> ShortKeepAlive {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let dropped = Arc::new(AtomicUsize::new(0));
        let (counted, closed) = (connections.clone(), dropped.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut sock, _)) = listener.accept().await else {
                    return;
                };
                counted.fetch_add(1, Ordering::SeqCst);
                let closed = closed.clone();
                tokio::spawn(async move {
                    // None until the first answer: a new connection's first request is
                    // always answered, however slow the machine.
                    let mut idle_since: Option<Instant> = None;
                    let mut buf = Vec::new();
                    loop {
                        let mut chunk = [0u8; 4096];
                        match sock.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                            continue;
                        };
                        let length = String::from_utf8_lossy(&buf[..end])
                            .to_ascii_lowercase()
                            .lines()
                            .find_map(|l| Some(l.strip_prefix("content-length:")?.trim().parse()))
                            .map_or(0, |n| n.unwrap_or(0));
                        if buf.len() < end + 4 + length {
                            continue;
                        }
                        buf.drain(..end + 4 + length);
                        if idle_since.is_some_and(|t| t.elapsed() >= KEEP_ALIVE) {
                            closed.fetch_add(1, Ordering::SeqCst);
                            return;
                        }
                        let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                        if sock.write_all(answer).await.is_err() {
                            return;
                        }
                        idle_since = Some(Instant::now());
                    }
                });
            }
        });
        ShortKeepAlive {
            addr,
            connections,
            dropped,
        }
    }
}

/// What the gateway did with the second of two requests, a pause past the upstream's
/// keep-alive apart.
struct AfterPause {
    status: u16,
    /// `tollgate_upstream_connections_opened_total`.
    opened: f64,
    /// `tollgate_upstream_retries_total`.
    retries: f64,
    up: ShortKeepAlive,
}

/// A `GET`, a pause past the upstream's keep-alive, then `method`.
async fn request_after_a_pause(upstream_extra: &str, method: &str) -> AfterPause {
    let up = ShortKeepAlive::start().await;
    let app = start("", &format!("http://{}", up.addr), upstream_extra, "").await;
    let url = format!("http://{}/public/x", app.proxy_addr);
    assert_eq!(send("GET", &url, &[]).await.status, 200);
    tokio::time::sleep(KEEP_ALIVE + Duration::from_millis(200)).await;
    let status = send(method, &url, &[]).await.status.as_u16();
    let m = metrics::scrape(&format!("http://{}", app.admin_addr)).await;
    let value = |sample: &str| {
        m.value(sample)
            .unwrap_or_else(|| panic!("no `{sample}` in {m:?}"))
    };
    let opened = value(r#"tollgate_upstream_connections_opened_total{upstream="up"}"#);
    let retries = value(r#"tollgate_upstream_retries_total{upstream="up"}"#);
    app.shutdown().await;
    AfterPause {
        status,
        opened,
        retries,
        up,
    }
}

#[tokio::test]
async fn an_idle_timeout_below_the_upstreams_keep_alive_never_sends_on_a_closing_connection() {
    let r = request_after_a_pause(r#"idle_timeout = "150ms""#, "POST").await;
    assert_eq!(
        r.status, 200,
        "the second request went on a fresh connection"
    );
    assert_eq!(r.opened, 2.0, "tollgate_upstream_connections_opened_total");
    assert_eq!(r.retries, 0.0, "tollgate_upstream_retries_total");
    assert_eq!(r.up.connections.load(Ordering::SeqCst), 2);
    assert_eq!(r.up.dropped.load(Ordering::SeqCst), 0);
}

/// Why the key exists: with the default (90 s), the kept connection is reused after the
/// upstream's keep-alive ran out, and a `POST`, which a proxy never sends twice (RFC 9110,
/// 9.2.2), gets 502.
#[tokio::test]
async fn without_it_a_post_on_a_connection_the_upstream_closes_gets_502() {
    let r = request_after_a_pause("", "POST").await;
    assert_eq!(r.status, 502);
    assert_eq!(r.opened, 1.0, "tollgate_upstream_connections_opened_total");
    assert_eq!(r.retries, 0.0, "tollgate_upstream_retries_total");
    assert_eq!(r.up.dropped.load(Ordering::SeqCst), 1);
}

/// An idempotent request without a body that meets the same close is sent again, once, on a
/// new connection, and the client sees only the answer.
#[tokio::test]
async fn a_get_on_a_connection_the_upstream_closes_is_sent_again_on_a_new_one() {
    for method in ["GET", "HEAD", "DELETE"] {
        let r = request_after_a_pause("", method).await;
        assert_eq!(r.status, 200, "{method}");
        assert_eq!(
            r.opened, 2.0,
            "{method}: tollgate_upstream_connections_opened_total"
        );
        assert_eq!(r.retries, 1.0, "{method}: tollgate_upstream_retries_total");
        assert_eq!(r.up.dropped.load(Ordering::SeqCst), 1, "{method}");
        assert_eq!(r.up.connections.load(Ordering::SeqCst), 2, "{method}");
    }
}

/// The identity-provider client (key sets, discovery, introspection) meets the same close from
/// a provider with a short keep-alive (Node.js servers such as oidc-provider keep one for 5 s):
/// each call is a query, sent again on a new connection, and the gateway sees no outage.
#[tokio::test]
async fn a_call_to_an_identity_provider_that_closes_a_kept_connection_is_sent_again() {
    let up = ShortKeepAlive::start().await;
    let url = url::Url::parse(&format!("http://{}/jwks", up.addr)).unwrap();
    let client = tollgate::auth::fetch::IdpClient::new();
    let bound = Duration::from_secs(10);
    let pause = KEEP_ALIVE + Duration::from_millis(200);
    client.get("jwks fetch", &url, bound).await.unwrap();
    tokio::time::sleep(pause).await;
    let fetched = client.get("jwks fetch", &url, bound).await.unwrap();
    assert_eq!(fetched.body, "ok");
    tokio::time::sleep(pause).await;
    let form = "token=x".to_owned();
    let introspected = client
        .post_form("introspection", &url, form, None, bound)
        .await
        .unwrap();
    assert_eq!(introspected.body, "ok");
    assert_eq!(
        up.dropped.load(Ordering::SeqCst),
        2,
        "two calls met a close"
    );
    assert_eq!(
        up.connections.load(Ordering::SeqCst),
        3,
        "a new one after each"
    );
}

/// A TCP relay in front of a server, cutting connections as [`ShortKeepAlive`] does: bytes from
/// the client on a connection whose last answer went out [`KEEP_ALIVE`] or more ago close it,
/// unforwarded. Puts a keep-alive timer in front of the fake legacy API.
struct Cutter {
    addr: SocketAddr,
    /// Requests that met a connection the relay was closing.
    dropped: Arc<AtomicUsize>,
}

impl Cutter {
    async fn start(target: SocketAddr) -> Cutter {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let dropped = Arc::new(AtomicUsize::new(0));
        let cut = dropped.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(target).await else {
                    return;
                };
                let cut = cut.clone();
                tokio::spawn(async move {
                    let (mut client_in, mut client_out) = client.into_split();
                    let (mut server_in, mut server_out) = server.into_split();
                    let answered = Arc::new(std::sync::Mutex::new(None::<Instant>));
                    let stamp = answered.clone();
                    let answers = tokio::spawn(async move {
                        let mut chunk = [0u8; 8192];
                        while let Ok(n @ 1..) = server_in.read(&mut chunk).await {
                            if client_out.write_all(&chunk[..n]).await.is_err() {
                                return;
                            }
                            *stamp.lock().unwrap() = Some(Instant::now());
                        }
                    });
                    let mut chunk = [0u8; 8192];
                    while let Ok(n @ 1..) = client_in.read(&mut chunk).await {
                        let last = *answered.lock().unwrap();
                        if last.is_some_and(|t| t.elapsed() >= KEEP_ALIVE) {
                            cut.fetch_add(1, Ordering::SeqCst);
                            break;
                        }
                        if server_out.write_all(&chunk[..n]).await.is_err() {
                            break;
                        }
                    }
                    // Both directions end: the client's connection closes under it.
                    answers.abort();
                });
            }
        });
        Cutter { addr, dropped }
    }
}

/// The gateway in front of the fake legacy API, with a [`Cutter`] between them.
async fn behind_a_keep_alive_timer() -> (Env, Cutter) {
    let idp = FakeIdp::start().await;
    let fake = tollgate::demo::legacy::FakeLegacy::new(Default::default());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = listener.local_addr().unwrap();
    let task = fake.spawn(listener);
    let cutter = Cutter::start(target).await;
    let e = Setup::new(Store::Memory)
        .start_on(idp, fake, format!("http://{}", cutter.addr), task)
        .await;
    (e, cutter)
}

/// A login after a quiet spell never goes out on a kept connection the upstream may be closing
/// (a new connection carries it): a login that met that close would fail, hold every grant's
/// logins back for a second or more, and could not be sent again (a second login could open a
/// second upstream session).
#[tokio::test]
async fn a_session_login_after_a_quiet_spell_goes_out_on_a_new_connection() {
    let (e, cutter) = behind_a_keep_alive_timer().await;
    assert_eq!(e.echo(&e.token("grant-a", false)).await.status, 200);
    tokio::time::sleep(KEEP_ALIVE + Duration::from_millis(200)).await;
    let r = e.echo(&e.token("grant-b", false)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let c = e.counters();
    assert_eq!((c.logins_ok, c.seats_in_use), (2, 2), "{c:?}");
    // The login did not meet the close. (The request after it may have: its connection can
    // come back to the pool a moment after the login's answer, and then the request takes an
    // older one, the upstream closes it under it, and it is sent again, as a GET may be.)
    let m = e.gw.metrics().await;
    assert_eq!(
        m.value(r#"tollgate_upstream_logins_total{result="error",upstream="erp"}"#)
            .unwrap_or(0.0),
        0.0,
        "{m:?}"
    );
    assert!(
        cutter.dropped.load(Ordering::SeqCst) <= 1,
        "only the GET after the login can have met the close"
    );
    e.assert_no_leaks();
    e.gw.shutdown().await;
}

/// A session's logout goes out when its grant is logged out or the gateway stops, typically
/// after a quiet spell: on a kept connection the upstream may close just then. The logout is
/// sent again at once, so the upstream session ends and its seat is not left taken behind the
/// gateway's back; at shutdown, which has no time to try again later, this is the only chance.
#[tokio::test]
async fn a_session_logout_that_meets_the_upstreams_keep_alive_close_is_sent_again() {
    let (e, cutter) = behind_a_keep_alive_timer().await;
    let pause = KEEP_ALIVE + Duration::from_millis(200);
    for grant in ["grant-a", "grant-b"] {
        assert_eq!(e.echo(&e.token(grant, false)).await.status, 200);
    }
    assert_eq!(e.counters().seats_in_use, 2);

    // One grant logged out from the admin port.
    tokio::time::sleep(pause).await;
    let list = get(&format!("{}/sessions", e.gw.admin), &[]).await;
    let grant = list.json()["sessions"][0]["grant"]
        .as_str()
        .unwrap_or_else(|| panic!("no session in {}", list.text()))
        .to_owned();
    let del = request(
        http::Request::delete(format!("{}/sessions/{grant}", e.gw.admin))
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(del.status, 200, "{}", del.text());
    assert_eq!(
        cutter.dropped.load(Ordering::SeqCst),
        1,
        "the logout met the close"
    );
    let c = e.counters();
    assert_eq!((c.logouts, c.seats_in_use), (1, 1), "{c:?}");
    let m = e.gw.metrics().await;
    let sample = |s: &str| m.value(s).unwrap_or(0.0);
    assert_eq!(
        sample(r#"tollgate_upstream_retries_total{upstream="erp"}"#),
        1.0
    );
    assert_eq!(
        sample(r#"tollgate_upstream_logouts_total{result="failed",upstream="erp"}"#),
        0.0,
        "{m:?}"
    );

    e.assert_no_leaks();

    // The other at shutdown.
    tokio::time::sleep(pause).await;
    let fake = e.fake.clone();
    e.gw.shutdown().await;
    assert_eq!(
        cutter.dropped.load(Ordering::SeqCst),
        2,
        "the logout met the close"
    );
    let c = fake.counters();
    assert_eq!((c.logouts, c.seats_in_use), (2, 0), "{c:?}");
}

/// The trace exporter sends a batch every few seconds, each on a kept connection idle since the
/// last: a collector with a short keep-alive closes it under the next batch, which is sent again
/// rather than lost. (The OTLP exporter's own retry does it; this pins that it still does.)
#[tokio::test]
async fn a_span_batch_that_meets_the_collectors_keep_alive_close_is_sent_again() {
    let receiver = Receiver::start().await;
    let collector: SocketAddr = receiver.url.trim_start_matches("http://").parse().unwrap();
    let cutter = Cutter::start(collector).await;
    let upstream = RecordingUpstream::start().await;
    let telemetry = format!(
        "[telemetry]\notlp_endpoint = \"http://{}\"\nsample_ratio = 1.0\n",
        cutter.addr
    );
    let app = start("", &upstream.url(), "", &telemetry).await;
    let url = format!("http://{}/public/x", app.proxy_addr);
    assert_eq!(send("GET", &url, &[]).await.status, 200);
    let first = eventually(
        "the first request's spans reach the collector",
        Duration::from_secs(15),
        || std::future::ready(receiver.spans().len()),
        |n| *n > 0,
    )
    .await;
    assert_eq!(send("GET", &url, &[]).await.status, 200);
    tokio::time::sleep(KEEP_ALIVE + Duration::from_millis(200)).await;
    // The second batch goes at the next tick or at shutdown, either way on the kept connection,
    // idle longer than the collector keeps it.
    app.shutdown().await;
    assert!(
        receiver.spans().len() > first,
        "the second request's spans were lost: {:?}",
        receiver.spans()
    );
    assert_eq!(
        cutter.dropped.load(Ordering::SeqCst),
        1,
        "the batch met the close"
    );
}
