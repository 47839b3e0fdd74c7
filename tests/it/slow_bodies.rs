//! `server.body_read_timeout`: a client that stalls in the middle of its request body gets 408,
//! its connection (HTTP/1.1) closed or its request answered (HTTP/2), nothing whole reaches the
//! upstream, and a session lease the request held is given back at once.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::channel::Channel;

use crate::connections::start;
use crate::support::legacy::{Setup, Store, ECHO};
use crate::support::raw::Http1;
use crate::support::{eventually, RecordingUpstream};

const STALL: &str = "body_read_timeout = \"1s\"";

/// Waits until the upstream has seen `n` requests end, whole or cut off.
async fn upstream_saw(upstream: &RecordingUpstream, n: usize) {
    eventually(
        "the upstream's request ends",
        Duration::from_secs(10),
        || std::future::ready(upstream.count()),
        |c| *c >= n,
    )
    .await;
}

#[tokio::test]
async fn an_http1_body_that_stalls_gets_408_and_the_connection_closed() {
    let upstream = RecordingUpstream::start().await;
    let app = start(STALL, &upstream.url(), "", "").await;
    let mut c = Http1::connect(app.proxy_addr).await;
    c.send(b"PUT /public/upload HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 10\r\n\r\nabc")
        .await;
    let answer = c.answer().await.expect("an answer");
    assert_eq!(answer.status, 408, "{answer:?}");
    assert!(
        String::from_utf8_lossy(&answer.body).contains("request_timeout"),
        "{answer:?}"
    );
    assert!(c.closes().await, "the connection stays open after 408");
    upstream_saw(&upstream, 1).await;
    assert!(
        !upstream.last().body_complete,
        "the upstream got a whole request"
    );

    // A client that keeps sending, however slowly, is not cut off (each gap is under 1 s).
    let mut c = Http1::connect(app.proxy_addr).await;
    c.send(b"PUT /public/steady HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 4\r\n\r\n")
        .await;
    for byte in [b"a", b"b", b"c", b"d"] {
        tokio::time::sleep(Duration::from_millis(300)).await; // the client's pace, not a wait
        c.send(byte).await;
    }
    let answer = c.answer().await.expect("an answer");
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(upstream.last().body.as_ref(), b"abcd");
    app.shutdown().await;
}

#[tokio::test]
async fn an_http2_body_that_stalls_gets_408_and_the_connection_serves_on() {
    let upstream = RecordingUpstream::start().await;
    let app = start(
        &format!("{STALL}\nhttp2_cleartext = true"),
        &upstream.url(),
        "",
        "",
    )
    .await;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<Channel<Bytes>>();
    let (mut tx, body) = Channel::new(4);
    tx.send_data(Bytes::from_static(b"abc")).await.unwrap();
    let req = http::Request::put(format!("http://{}/public/upload", app.proxy_addr))
        .body(body)
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), client.request(req))
        .await
        .expect("an answer in time")
        .expect("an answer");
    assert_eq!(resp.status(), 408);
    drop(tx);
    upstream_saw(&upstream, 1).await;
    assert!(!upstream.last().body_complete);
    // The connection is still good for the next request (only the stream ended).
    let ok = crate::support::raw::h2_get(&format!("http://{}/public/next", app.proxy_addr)).await;
    assert_eq!(ok, 200);
    app.shutdown().await;
}

#[tokio::test]
async fn a_session_lease_held_by_a_stalled_body_is_given_back() {
    // One session for the grant, one request at a time on it: a lease that was not given back
    // would keep the next request of the grant queued until admission_wait (then 429/503).
    let e = Setup::new(Store::Memory)
        .server(STALL)
        .session("admission_wait = \"20s\"")
        .start()
        .await;
    let token = e.token("g1", false);
    assert_eq!(e.echo(&token).await.status, 200);

    let addr = e.gw.base.trim_start_matches("http://").parse().unwrap();
    let mut c = Http1::connect(addr).await;
    c.send(
        format!(
            "PUT {ECHO} HTTP/1.1\r\nHost: gw.test\r\nAuthorization: Bearer {token}\r\n\
             Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"a\":"
        )
        .as_bytes(),
    )
    .await;
    let answer = c.answer().await.expect("an answer");
    assert_eq!(answer.status, 408, "{answer:?}");
    assert!(c.closes().await);

    let next = e.echo(&token).await;
    assert_eq!(next.status, 200, "{}", next.text());
    assert_eq!(
        e.counters().logins_ok,
        1,
        "the session was kept, not replaced"
    );
    e.settles(Duration::from_secs(10)).await;
    e.assert_no_leaks();
    e.gw.shutdown().await;
}
