//! Failing parts around a session upstream: an upstream that breaks off or stalls mid-answer,
//! and clients that hang up mid-answer or while queued. Each ends with the status
//! docs/responses.md names, and with no seat or lease leaked: the grant's next request is served
//! at once on the same session, and the fake's leak detectors stay at zero.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};

use crate::support::legacy::{session_of, Env, Setup, Store};
use crate::support::{eventually, request};

const STREAM: &str = "/entity/Default/24.200.001/Stream";
const COUNTER: &str = "/entity/Default/24.200.001/Counter";
const SETTLE: Duration = Duration::from_secs(10);

/// A GET whose head is returned with the body still to read.
async fn open(e: &Env, path: &str, token: &str) -> http::Response<hyper::body::Incoming> {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Empty<Bytes>>();
    let req = http::Request::get(e.gw.url(path))
        .header("authorization", format!("Bearer {token}"))
        .body(Empty::new())
        .unwrap();
    tokio::time::timeout(SETTLE, client.request(req))
        .await
        .expect("a head in time")
        .expect("a head")
}

/// The fake has no request in flight on any session.
async fn upstream_idle(e: &Env) {
    eventually(
        "the upstream has no request in flight",
        SETTLE,
        || std::future::ready(e.fake.state()["sessions"].clone()),
        |list| {
            list.as_array()
                .unwrap()
                .iter()
                .all(|s| s["in_flight"].as_u64() == Some(0))
        },
    )
    .await;
}

/// The grant's next request is served on the same session, without a new login, and nothing
/// leaked.
async fn the_session_is_free_again(e: &Env, token: &str, session: &serde_json::Value) {
    upstream_idle(e).await;
    let next = e.echo(token).await;
    assert_eq!(next.status, 200, "{}", next.text());
    assert_eq!(&session_of(&next), session, "the session was replaced");
    assert_eq!(e.counters().logins_ok, 1);
    e.settles(SETTLE).await;
    e.assert_no_leaks();
}

async fn an_upstream_that_breaks_off_mid_answer_cuts_the_answer_and_frees_the_session(
    store: Store,
) {
    let e = Setup::new(store).start().await;
    let token = e.token("g1", false);
    let session = session_of(&e.echo(&token).await);
    let resp = open(&e, &format!("{STREAM}?bytes=65536&fault=reset"), &token).await;
    // The head was relayed before the upstream broke off: the upstream's status, then a body
    // that ends early (the client sees an error, never a short body passed off as whole).
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-length"], "65536");
    let body = tokio::time::timeout(SETTLE, resp.into_body().collect())
        .await
        .expect("the cut in time");
    assert!(body.is_err(), "a broken-off answer arrived whole");
    the_session_is_free_again(&e, &token, &session).await;
    e.gw.shutdown().await;
}

async fn an_upstream_that_stalls_after_its_head_is_cut_off_at_body_read_timeout(store: Store) {
    let e = Setup::new(store)
        .upstream("body_read_timeout = \"1s\"")
        .start()
        .await;
    let token = e.token("g1", false);
    let session = session_of(&e.echo(&token).await);
    let resp = open(&e, &format!("{STREAM}?bytes=65536&fault=stall"), &token).await;
    assert_eq!(resp.status(), 200);
    let body = tokio::time::timeout(SETTLE, resp.into_body().collect())
        .await
        .expect("cut off at body_read_timeout, not left hanging");
    assert!(body.is_err(), "a stalled answer arrived whole");
    the_session_is_free_again(&e, &token, &session).await;
    e.gw.shutdown().await;
}

async fn a_client_that_hangs_up_mid_answer_frees_the_session(store: Store) {
    // The upstream stalls and its body_read_timeout is long: only the hang-up can end it.
    let e = Setup::new(store)
        .upstream("body_read_timeout = \"1h\"")
        .start()
        .await;
    let token = e.token("g1", false);
    let session = session_of(&e.echo(&token).await);
    let resp = open(&e, &format!("{STREAM}?bytes=1048576&fault=stall"), &token).await;
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let first = body.frame().await.expect("a first frame").expect("data");
    assert!(first.data_ref().is_some_and(|d| !d.is_empty()));
    drop(body); // the client hangs up mid-answer
    the_session_is_free_again(&e, &token, &session).await;
    e.gw.shutdown().await;
}

async fn a_client_that_stops_reading_is_dropped_at_send_timeout_and_frees_the_session(
    store: Store,
) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    let e = Setup::new(store)
        .server("send_timeout = \"1s\"")
        .upstream("body_read_timeout = \"1h\"")
        .start()
        .await;
    let token = e.token("g1", false);
    let session = session_of(&e.echo(&token).await);
    // 16 MiB: more than the socket buffers on both sides hold, so the gateway's writes stall.
    let bytes = 16 << 20;
    let addr: std::net::SocketAddr = e.gw.base.trim_start_matches("http://").parse().unwrap();
    let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
    client
        .write_all(
            format!(
                "GET {STREAM}?bytes={bytes} HTTP/1.1\r\nHost: gw.test\r\n\
                 Authorization: Bearer {token}\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    // The client reads nothing; the grant's next request is served once the gateway gave up on
    // it (on the same session: the stalled answer's lease was given back).
    the_session_is_free_again(&e, &token, &session).await;
    // What the client could still read ends before the whole answer: the connection was dropped.
    let mut got = Vec::new();
    let read = tokio::time::timeout(SETTLE, client.read_to_end(&mut got)).await;
    assert!(read.is_ok(), "the connection is still open");
    assert!(
        got.len() < bytes,
        "the whole answer arrived ({} bytes)",
        got.len()
    );
    e.gw.shutdown().await;
}

async fn a_client_that_hangs_up_while_queued_leaves_the_queue_and_is_never_forwarded(store: Store) {
    let e = Setup::new(store)
        .session("admission_wait = \"20s\"")
        .start()
        .await;
    let token = e.token("g1", false);
    let session = session_of(&e.echo(&token).await);
    // The grant's one session is busy for a while.
    let busy = {
        let url = e.gw.url("/entity/Default/24.200.001/Slow?ms=1500");
        let auth = format!("Bearer {token}");
        tokio::spawn(async move { crate::support::get(&url, &[("authorization", &auth)]).await })
    };
    crate::support::legacy::requests_in_flight(&e.fake, 1).await;
    // A counter increment queues behind it; its client gives up while it waits.
    let queued = {
        let url = e.gw.url(COUNTER);
        let auth = format!("Bearer {token}");
        tokio::spawn(
            async move { crate::support::send("PUT", &url, &[("authorization", &auth)]).await },
        )
    };
    let depth = |e: &Env| {
        let e = e.gw.admin.clone();
        async move {
            crate::support::metrics::scrape(&e)
                .await
                .count(r#"tollgate_upstream_session_queue_depth{upstream="erp"}"#)
        }
    };
    eventually("the increment is queued", SETTLE, || depth(&e), |d| *d == 1).await;
    queued.abort();
    eventually(
        "the hung-up request leaves the queue",
        SETTLE,
        || depth(&e),
        |d| *d == 0,
    )
    .await;
    assert_eq!(busy.await.unwrap().status, 200);
    // The increment never reached the upstream.
    let counter = request(
        http::Request::get(e.gw.url(COUNTER))
            .header("authorization", format!("Bearer {token}"))
            .body(http_body_util::Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(counter.status, 200, "{}", counter.text());
    assert_eq!(counter.json()["counter"], 0, "{}", counter.text());
    the_session_is_free_again(&e, &token, &session).await;
    e.gw.shutdown().await;
}

both_stores!(
    an_upstream_that_breaks_off_mid_answer_cuts_the_answer_and_frees_the_session,
    an_upstream_that_stalls_after_its_head_is_cut_off_at_body_read_timeout,
    a_client_that_hangs_up_mid_answer_frees_the_session,
    a_client_that_stops_reading_is_dropped_at_send_timeout_and_frees_the_session,
    a_client_that_hangs_up_while_queued_leaves_the_queue_and_is_never_forwarded,
);
