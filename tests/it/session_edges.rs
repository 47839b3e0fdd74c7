//! The session layer under every path a client can take, not only the ones the happy-path tests
//! walk: every spelling of the login and logout calls, HTTP/2 bodies, a wrong service password
//! met by many grants at once, seats and upstream sessions around logins that race with
//! hang-ups, logouts and reloads, and an upstream as unfriendly as the real one. Each test
//! ends with the fake's leak detectors, and most with "no orphan either way": the fake's live
//! sessions equal the gateway's records holding a seat.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use tollgate::demo::legacy::{FakeLegacy, LegacyOptions, LimitShape};

use crate::support::certs::{client_config, tls_connect, tls_table, Ca, Files};
use crate::support::http::Reply;
use crate::support::legacy::{
    assert_clean, env, requests_in_flight, session_of, Env, Setup, Store, ECHO,
};
use crate::support::{
    eventually, get, request, sha256_hex, FakeIdp, RecordingUpstream, TestGateway,
};

const SETTLE: Duration = Duration::from_secs(8);

/// Spellings an ASP.NET upstream routes to its login action.
const LOGIN_SPELLINGS: [&str; 8] = [
    "/entity/auth/login/",
    "/entity/Auth/Login",
    "/entity/AUTH/LOGIN/",
    "/entity/auth/login;jsessionid=0",
    "/entity//auth/login",
    "/entity/auth/log%69n",
    "/entity/auth/login%2F",
    "/entity/auth/login.",
];

/// Spellings it routes to its logout action.
const LOGOUT_SPELLINGS: [&str; 6] = [
    "/entity/auth/logout/",
    "/entity/Auth/LogOut",
    "/entity/AUTH/LOGOUT/",
    "/entity/auth/logout;x=1",
    "/entity/auth/%6Cogout",
    "/entity/auth/logout%2F",
];

const GOOD_LOGIN: &[u8] = br#"{"name":"admin","password":"123","tenant":"MyStore"}"#;

async fn slow(e: &Env, token: &str, ms: u64) -> tokio::task::JoinHandle<Reply> {
    let url =
        e.gw.url(&format!("/entity/Default/24.200.001/Slow?ms={ms}"));
    let auth = format!("Bearer {token}");
    tokio::spawn(async move { get(&url, &[("authorization", &auth)]).await })
}

// === 1. The login and logout calls, however they are spelled ===

async fn login_spellings_are_answered_by_the_gateway_in_active_mode(store: Store) {
    let e = env(store, "").await;
    let t = e.token("g", false);
    for p in LOGIN_SPELLINGS {
        let r = e
            .send(
                "POST",
                p,
                &t,
                None,
                br#"{"name":"admin","password":"wrong"}"#,
            )
            .await;
        assert_eq!(r.status, 204, "{p}: {}", r.text());
        assert_eq!(r.header("tollgate-login"), Some("managed"), "{p}");
    }
    let c = e.counters();
    assert_eq!(
        (c.logins_ok, c.logins_bad_credentials, c.seats_in_use),
        (0, 0, 0),
        "a client's own login reached the upstream: {c:?}"
    );
    e.assert_no_leaks();
    e.gw.shutdown().await;
}

async fn logout_spellings_end_the_session_through_the_gateway(store: Store) {
    let e = env(store, "").await;
    let t = e.token("g", false);
    for p in LOGOUT_SPELLINGS {
        session_of(&e.echo(&t).await);
        let before = e.counters();
        let r = e.send("POST", p, &t, None, b"").await;
        assert_eq!(r.status, 204, "{p}: {}", r.text());
        let after = e.counters();
        assert_eq!(
            (after.logouts - before.logouts, after.seats_in_use),
            (1, 0),
            "{p}: {after:?}"
        );
        // The gateway knows: the next request gets a new session at once, never the dead
        // cookies (which would cost a 401 and a replay).
        let next = e.echo(&t).await;
        assert_eq!(next.header("tollgate-session"), Some("new"), "{p}");
        assert_eq!(
            e.counters().requests_unauthenticated,
            before.requests_unauthenticated,
            "{p}: the session was ended behind the gateway's back"
        );
    }
    e.assert_no_leaks();
    e.gw.shutdown().await;
}

async fn login_and_logout_spellings_are_captured_in_passive_mode(store: Store) {
    let e = Setup::new(store).passive().start().await;
    let t = e.token("g", false);
    for (i, p) in LOGIN_SPELLINGS.iter().enumerate() {
        let login = e.send("POST", p, &t, None, GOOD_LOGIN).await;
        assert_eq!(login.status, 204, "{p}: {}", login.text());
        assert_eq!(login.header("set-cookie"), None, "{p}");
        // The captured session serves the grant.
        let s = session_of(&e.echo(&t).await);
        assert_eq!(session_of(&e.echo(&t).await), s, "{p}");
        let out = LOGOUT_SPELLINGS[i % LOGOUT_SPELLINGS.len()];
        assert_eq!(e.send("POST", out, &t, None, b"").await.status, 204);
        let c = e.counters();
        assert_eq!(
            (c.logins_ok, c.logouts, c.seats_in_use),
            (i as u64 + 1, i as u64 + 1, 0),
            "{p} then {out}: {c:?}"
        );
    }
    e.settles(SETTLE).await;
    e.assert_no_leaks();
    e.gw.shutdown().await;
}

async fn login_calls_on_a_public_route_are_never_forwarded(store: Store) {
    // A catch-all public route on the session upstream: routes match case-sensitively, so
    // `/ENTITY/...` lands here, but the upstream would route it to its login all the same.
    let public =
        "\n[[route]]\nid = \"pages\"\nprefix = \"/\"\nupstream = \"erp\"\nauth = \"none\"\n";
    for passive in [false, true] {
        let setup = Setup::new(store).extra(public);
        let e = if passive { setup.passive() } else { setup }.start().await;
        let login = request(
            Request::post(e.gw.url("/ENTITY/AUTH/LOGIN"))
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from_static(GOOD_LOGIN)))
                .unwrap(),
        )
        .await;
        assert_clean(&login);
        if passive {
            // Without a bearer there is no grant to capture the session into.
            assert_eq!(login.status, 401, "{}", login.text());
        } else {
            assert_eq!(login.status, 204, "{}", login.text());
            assert_eq!(login.header("tollgate-login"), Some("managed"));
        }
        let logout = request(
            Request::post(e.gw.url("/ENTITY/AUTH/LOGOUT/"))
                .header("content-length", "0")
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await;
        assert_eq!(logout.status, 204, "{}", logout.text());
        let c = e.counters();
        assert_eq!(
            (
                c.logins_ok,
                c.logins_bad_credentials,
                c.logouts,
                c.seats_in_use
            ),
            (0, 0, 0, 0),
            "passive = {passive}: {c:?}"
        );
        e.assert_no_leaks();
        e.gw.shutdown().await;
    }
}

// === 2. HTTP/2 request bodies ===

/// A request body of unknown length: no size hint, so HTTP/2 sends it without
/// `content-length`.
struct Chunks(VecDeque<Bytes>);

impl http_body::Body for Chunks {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        std::task::Poll::Ready(self.0.pop_front().map(|b| Ok(http_body::Frame::data(b))))
    }
}

type H2Body = http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>;

fn big_body() -> Vec<u8> {
    (0..256 * 1024u32)
        .map(|i| u8::try_from(i.wrapping_mul(31) % 251).unwrap())
        .collect()
}

/// A PUT over an HTTP/2 connection; `streamed` sends the body in 16 KiB chunks without a length.
async fn h2_put(
    sender: &mut hyper::client::conn::http2::SendRequest<H2Body>,
    url: &str,
    token: &str,
    body: &[u8],
    streamed: bool,
) -> (u16, Value) {
    let mut b = Request::put(url).header("authorization", format!("Bearer {token}"));
    let body: H2Body = if streamed {
        Chunks(body.chunks(16 * 1024).map(Bytes::copy_from_slice).collect()).boxed()
    } else {
        b = b.header("content-length", body.len());
        Full::new(Bytes::copy_from_slice(body)).boxed()
    };
    let resp = sender.send_request(b.body(body).unwrap()).await.unwrap();
    assert_eq!(resp.version(), http::Version::HTTP_2);
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| json!({"raw": String::from_utf8_lossy(&bytes)})),
    )
}

/// Every kind of body reaches the session upstream (the fake) and a plain upstream byte for
/// byte over `sender`.
async fn bodies_arrive_whole(
    sender: &mut hyper::client::conn::http2::SendRequest<H2Body>,
    base: &str,
    e: &Env,
    plain: &RecordingUpstream,
) {
    let t = e.token("h2", false);
    let big = big_body();
    let small = br#"{"CustomerID":{"value":"C000042"},"CustomerName":{"value":"Acme"}}"#.to_vec();
    for (what, body, streamed) in [
        ("a streamed 256 KiB PUT", &big, true),
        ("a 256 KiB PUT with a length", &big, false),
        ("a small JSON PUT", &small, false),
        ("a small streamed JSON PUT", &small, true),
    ] {
        let (status, answer) = h2_put(
            sender,
            &format!("{base}/entity/Default/24.200.001/Customer"),
            &t,
            body,
            streamed,
        )
        .await;
        assert_eq!(status, 200, "{what}: {answer}");
        assert_eq!(answer["body_bytes"], body.len(), "{what}: {answer}");
        assert_eq!(answer["body_sha256"], sha256_hex(body), "{what}");
        let (status, answer) =
            h2_put(sender, &format!("{base}/plain/upload"), &t, body, streamed).await;
        assert_eq!(status, 200, "{what} (no session): {answer}");
        let last = plain.requests.lock().unwrap().last().cloned().unwrap();
        assert_eq!(
            (last.body_len, last.body_sha256),
            (body.len(), sha256_hex(body)),
            "{what} (no session)"
        );
    }
}

/// A route to a plain upstream beside the session routes.
fn plain_route(plain: &RecordingUpstream) -> String {
    format!(
        "\n[[upstream]]\nid = \"plain\"\nurl = \"{}\"\n\n[[route]]\nid = \"plain\"\nprefix = \"/plain/\"\nupstream = \"plain\"\nscopes = [\"api\"]\n",
        plain.url()
    )
}

async fn http2_bodies_reach_the_upstream_over_h2c(store: Store) {
    let plain = RecordingUpstream::start().await;
    let e = Setup::new(store)
        .server("http2_cleartext = true")
        .extra(&plain_route(&plain))
        .start()
        .await;
    let addr = e.gw.base.trim_start_matches("http://").to_owned();
    let tcp = TcpStream::connect(&addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    bodies_arrive_whole(&mut sender, &e.gw.base, &e, &plain).await;
    e.assert_no_leaks();
    e.gw.shutdown().await;
}

async fn http2_bodies_reach_the_upstream_over_tls_with_alpn(store: Store) {
    let plain = RecordingUpstream::start().await;
    let ca = Ca::new("tollgate test CA");
    let files = Files::new();
    let (cert, key) = files.leaf("server", &ca.server());
    let e = Setup::new(store)
        .extra(&(plain_route(&plain) + "\n" + &tls_table(&cert, &key, None)))
        .start()
        .await;
    let addr: std::net::SocketAddr = e.gw.base.trim_start_matches("http://").parse().unwrap();
    let tls = tls_connect(addr, client_config(&ca.pem(), None, &[b"h2"]))
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    let base = format!("https://127.0.0.1:{}", addr.port());
    bodies_arrive_whole(&mut sender, &base, &e, &plain).await;
    e.assert_no_leaks();
    e.gw.shutdown().await;
}

// === 3. A wrong service password ===

async fn eight_new_grants_with_a_wrong_password_make_one_attempt(store: Store) {
    let e = Setup::new(store).password("wrong-password").start().await;
    let mut tasks = Vec::new();
    for i in 0..8 {
        let url = e.gw.url(ECHO);
        let auth = format!("Bearer {}", e.token(&format!("g{i}"), false));
        tasks.push(tokio::spawn(async move {
            get(&url, &[("authorization", &auth)]).await
        }));
    }
    for t in tasks {
        let r = t.await.unwrap();
        assert_clean(&r);
        assert_eq!(r.status, 502, "{}", r.text());
        assert_eq!(r.json()["error"], "upstream_login_failed");
        let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
        assert!(retry > 800, "the cooldown is announced: {retry}");
    }
    let c = e.counters();
    assert_eq!(
        (c.logins_bad_credentials, c.logins_locked),
        (1, 0),
        "one attempt for eight grants: {c:?}"
    );
    assert_eq!(e.fake.state()["locked_users"], json!([]));
    assert!(
        e.records().await.is_empty(),
        "no record of a failed login stays"
    );
    e.settles(SETTLE).await;
    e.assert_no_leaks();
    e.gw.shutdown().await;
}

#[tokio::test]
async fn a_wrong_password_is_tried_once_by_the_whole_fleet() {
    let e = Setup::new(Store::Redis)
        .password("wrong-password")
        .start()
        .await;
    let second = TestGateway::start(&e.config, true).await;
    let mut tasks = Vec::new();
    for i in 0..8 {
        let url = if i % 2 == 0 {
            e.gw.url(ECHO)
        } else {
            second.url(ECHO)
        };
        let auth = format!("Bearer {}", e.token(&format!("g{i}"), false));
        tasks.push(tokio::spawn(async move {
            get(&url, &[("authorization", &auth)]).await
        }));
    }
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(r.status, 502, "{}", r.text());
        assert_eq!(r.json()["error"], "upstream_login_failed");
        assert!(r.header("retry-after").is_some());
    }
    // A replica that has not tried yet learns the cooldown from the store.
    let third = TestGateway::start(&e.config, true).await;
    let r = get(
        &third.url(ECHO),
        &[(
            "authorization",
            &format!("Bearer {}", e.token("late", false)),
        )],
    )
    .await;
    assert_eq!(r.json()["error"], "upstream_login_failed");
    let c = e.counters();
    assert_eq!(
        (c.logins_bad_credentials, c.logins_locked),
        (1, 0),
        "one attempt for the fleet: {c:?}"
    );
    e.assert_no_leaks();
    for g in [second, third] {
        g.shutdown().await;
    }
    e.gw.shutdown().await;
}

async fn a_locked_account_opens_the_cooldown_like_a_wrong_password(store: Store) {
    let e = env(store, "").await;
    // Somebody else locked the service account (three wrong passwords at the upstream).
    for _ in 0..3 {
        let r = request(
            Request::post(format!("{}/entity/auth/login", e.legacy))
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from_static(
                    br#"{"name":"admin","password":"nope!"}"#,
                )))
                .unwrap(),
        )
        .await;
        assert_eq!(r.status, 500);
    }
    let t = e.token("g", false);
    for _ in 0..3 {
        let r = e.echo(&t).await;
        assert_eq!(r.status, 502, "{}", r.text());
        assert_eq!(r.json()["error"], "upstream_login_failed");
        assert!(r.header("retry-after").is_some());
    }
    let c = e.counters();
    assert_eq!(
        c.logins_locked, 1,
        "the lockout answer is never retried: {c:?}"
    );
    let m = e.metrics().await;
    assert_eq!(
        m.count(r#"tollgate_upstream_logins_total{result="bad_credentials",upstream="erp"}"#),
        1
    );
    assert_eq!(
        m.count(r#"tollgate_upstream_login_circuit_open{upstream="erp"}"#),
        1
    );
    e.gw.shutdown().await;
}

#[tokio::test]
async fn a_login_error_longer_than_the_read_limit_is_still_classified() {
    // An upstream whose login answer puts a 200 KiB stack trace after its message.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let attempts = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = attempts.clone();
    let task = crate::support::http::serve(listener, move |_req, _| {
        let seen = seen.clone();
        async move {
            seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            crate::support::http::json(
                http::StatusCode::INTERNAL_SERVER_ERROR,
                &json!({
                    "message": "An error has occurred.",
                    "exceptionMessage": "Error: Invalid credentials. Please try again.",
                    "exceptionType": "PX.Data.PXException",
                    "stackTrace": "   at PX.Data.Login()\r\n".repeat(9000),
                }),
            )
        }
    });
    let idp = FakeIdp::start().await;
    let fake = FakeLegacy::new(LegacyOptions::default());
    let e = Setup::new(Store::Memory)
        .start_on(idp, fake, url, task)
        .await;
    let t = e.token("g", false);
    for _ in 0..2 {
        let r = e.echo(&t).await;
        assert_eq!(r.status, 502, "{}", r.text());
        assert_eq!(r.json()["error"], "upstream_login_failed", "{}", r.text());
    }
    assert_eq!(attempts.load(std::sync::atomic::Ordering::SeqCst), 1);
    e.gw.shutdown().await;
}

// === 4. Seats and upstream sessions around logins ===

async fn a_hang_up_while_the_login_waits_for_a_seat_leaks_no_seat(store: Store) {
    let e = env(
        store,
        "max_upstream_sessions = 1\nidle_ttl = \"400ms\"\nadmission_wait = \"4s\"",
    )
    .await;
    let (a, b) = (e.token("a", false), e.token("b", false));
    session_of(&e.echo(&a).await);
    let busy = slow(&e, &a, 1200).await;
    requests_in_flight(&e.fake, 1).await;
    // `b` needs the only seat; its client gives up while the login waits for it.
    assert!(tokio::time::timeout(Duration::from_millis(150), e.echo(&b))
        .await
        .is_err());
    assert_eq!(busy.await.unwrap().status, 200);
    // Everything goes idle and is logged out; the seat count comes back to what is real.
    eventually(
        "everything is logged out: no seat in use upstream",
        SETTLE,
        || std::future::ready(e.counters()),
        |c| c.seats_in_use == 0,
    )
    .await;
    // No seat counted that no session holds.
    e.settles(SETTLE).await;
    assert_eq!(
        e.metrics()
            .await
            .count(r#"tollgate_upstream_seats_in_use{upstream="erp"}"#),
        0
    );
    // And the seat is usable.
    session_of(&e.echo(&e.token("c", false)).await);
    e.assert_no_leaks();
    e.gw.shutdown().await;
}

fn slow_logins() -> LegacyOptions {
    LegacyOptions {
        login_delay: Duration::from_millis(800),
        ..LegacyOptions::default()
    }
}

async fn delete_grant(e: &Env, grant: &str) -> Reply {
    request(
        Request::delete(format!("{}/sessions/{grant}", e.gw.admin))
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await
}

async fn a_login_that_ends_after_its_session_was_removed_is_logged_out(store: Store) {
    let e = Setup::new(store).opts(slow_logins()).start().await;
    let t = e.token("g", false);
    // The client hangs up during the slow login, and an admin logs the grant out meanwhile.
    assert!(tokio::time::timeout(Duration::from_millis(200), e.echo(&t))
        .await
        .is_err());
    let grant = e.records().await[0]["grant"].as_str().unwrap().to_owned();
    assert_eq!(delete_grant(&e, &grant).await.status, 200);
    // The login still finishes upstream; its session belongs to nobody and is logged out.
    eventually(
        "the orphaned session is logged out",
        SETTLE,
        || std::future::ready(e.counters()),
        |c| c.logouts == 1,
    )
    .await;
    e.settles(SETTLE).await;
    let c = e.counters();
    assert_eq!((c.logins_ok, c.logouts, c.seats_in_use), (1, 1, 0), "{c:?}");
    assert!(e.records().await.is_empty());
    e.assert_no_leaks();
    e.gw.shutdown().await;
}

async fn a_hang_up_during_a_slow_login_keeps_the_session(store: Store) {
    let e = Setup::new(store).opts(slow_logins()).start().await;
    let t = e.token("g", false);
    assert!(tokio::time::timeout(Duration::from_millis(200), e.echo(&t))
        .await
        .is_err());
    // The login finishes in its own task and its session serves the grant's next request.
    eventually(
        "the login finishes upstream",
        SETTLE,
        || std::future::ready(e.counters()),
        |c| c.logins_ok == 1,
    )
    .await;
    e.settles(SETTLE).await;
    let next = e.echo(&t).await;
    assert_eq!(next.status, 200);
    assert_eq!(e.counters().logins_ok, 1);
    e.assert_no_leaks();
    e.gw.shutdown().await;
}

async fn an_admin_logout_during_a_login_waits_for_it(store: Store) {
    let e = Setup::new(store).opts(slow_logins()).start().await;
    let t = e.token("g", false);
    let url = e.gw.url(ECHO);
    let auth = format!("Bearer {t}");
    let waiting = tokio::spawn(async move { get(&url, &[("authorization", &auth)]).await });
    let gw = e.gw.admin.clone();
    // A record exists once the request reached the session layer (its login now runs).
    let records = eventually(
        "the request has a session record",
        Duration::from_secs(5),
        || e.records(),
        |r| !r.is_empty(),
    )
    .await;
    let grant = records[0]["grant"].as_str().unwrap().to_owned();
    let del = request(
        Request::delete(format!("{gw}/sessions/{grant}"))
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(del.status, 200, "{}", del.text());
    assert_eq!(
        waiting.await.unwrap().status,
        200,
        "the request was served first"
    );
    e.settles(SETTLE).await;
    let c = e.counters();
    assert_eq!((c.logins_ok, c.logouts, c.seats_in_use), (1, 1, 0), "{c:?}");
    e.assert_no_leaks();
    e.gw.shutdown().await;
}

async fn a_failed_first_login_leaves_no_record_to_count_against_the_grant(store: Store) {
    let e = env(store, "max_sessions_per_grant = 2").await;
    let t = e.token("c", true);
    e.fake.configure_with(|o| o.unavailable = true);
    for _ in 0..2 {
        let r = e.echo(&t).await;
        assert_eq!(r.status, 502, "{}", r.text());
        assert_eq!(r.json()["error"], "upstream_login_error");
    }
    assert!(e.records().await.is_empty(), "failed logins left records");
    e.fake.configure_with(|o| o.unavailable = false);
    // Once the login back-off has passed, the grant gets a session: its failures did not use
    // up its cap of two.
    eventually(
        "the grant is served once the login back-off has passed",
        SETTLE,
        || async {
            let r = e.echo(&t).await;
            if r.status != 200 {
                assert_eq!(r.json()["error"], "upstream_login_error", "{}", r.text());
            }
            r
        },
        |r| r.status == 200,
    )
    .await;
    e.assert_no_leaks();
    e.gw.shutdown().await;
}

async fn the_eviction_an_api_login_limit_allows_frees_a_real_seat(store: Store) {
    let e = env(
        store,
        "max_upstream_sessions = 3\nmin_idle_before_evict = \"0s\"",
    )
    .await;
    // `f` fails its login first (the upstream is down), then `a` gets a session.
    e.fake.configure_with(|o| o.unavailable = true);
    assert_eq!(e.echo(&e.token("f", false)).await.status, 502);
    e.fake.configure_with(|o| o.unavailable = false);
    let a = e.token("a", false);
    eventually(
        "`a` is served once the login back-off has passed",
        SETTLE,
        || e.echo(&a),
        |r| r.status == 200,
    )
    .await;
    // The upstream is full (another integration holds a seat): `b` meets "API Login Limit",
    // and its one eviction must log out `a`, the only session that holds a seat.
    e.fake.reserve_seats(1);
    let b = e.echo(&e.token("b", false)).await;
    assert_eq!(b.status, 200, "{}", b.text());
    let c = e.counters();
    assert_eq!((c.logins_rejected_limit, c.logouts), (1, 1), "{c:?}");
    e.assert_no_leaks();
    e.gw.shutdown().await;
}

async fn passive_capture_takes_its_seat_before_the_login_is_forwarded(store: Store) {
    let e = Setup::new(store)
        .passive()
        .session("max_upstream_sessions = 1\nadmission_wait = \"300ms\"")
        .start()
        .await;
    let (a, b) = (e.token("a", false), e.token("b", false));
    assert_eq!(
        e.send("POST", "/entity/auth/login", &a, None, GOOD_LOGIN)
            .await
            .status,
        204
    );
    let busy = slow(&e, &a, 1200).await;
    requests_in_flight(&e.fake, 1).await;
    // No seat for `b`: its login is refused before it reaches the upstream.
    let r = e
        .send("POST", "/entity/auth/login", &b, None, GOOD_LOGIN)
        .await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.json()["error"], "upstream_capacity_exhausted");
    assert_eq!(busy.await.unwrap().status, 200);
    let c = e.counters();
    assert_eq!((c.logins_ok, c.peak_seats), (1, 1), "{c:?}");
    e.settles(SETTLE).await;
    e.assert_no_leaks();
    e.gw.shutdown().await;
}

/// The configuration with the upstream's session profile changed (its login's locale), so a
/// reload retires its pool and its sessions.
fn changed(config: &str) -> tollgate::Config {
    let text = config.replacen("branch = \"HQ\"", "branch = \"HQ\"\nlocale = \"en-GB\"", 1);
    assert_ne!(text, config);
    tollgate::config::from_toml_str(&text).unwrap()
}

/// The configuration with only a limit of the upstream changed (its timeout): same profile.
fn retuned(config: &str) -> tollgate::Config {
    let text = config.replacen("timeout = \"10s\"", "timeout = \"11s\"", 1);
    assert_ne!(text, config);
    tollgate::config::from_toml_str(&text).unwrap()
}

async fn a_reload_that_keeps_the_profile_keeps_the_sessions(store: Store) {
    let e = env(store, "").await;
    let (a, b) = (e.token("a", false), e.token("b", false));
    let (sa, sb) = (session_of(&e.echo(&a).await), session_of(&e.echo(&b).await));
    let busy = slow(&e, &a, 500).await;
    requests_in_flight(&e.fake, 1).await;
    let app = e.gw.app.as_ref().unwrap();
    app.gateway.apply(&retuned(&e.config)).await.unwrap();
    assert_eq!(session_of(&busy.await.unwrap()), sa);
    // The new pool serves the same sessions: no logout, no login.
    let (ra, rb) = (e.echo(&a).await, e.echo(&b).await);
    assert_eq!((session_of(&ra), session_of(&rb)), (sa, sb));
    assert_eq!(ra.header("tollgate-session"), None);
    let c = e.counters();
    assert_eq!((c.logins_ok, c.logouts), (2, 0), "{c:?}");
    e.assert_no_leaks();
    e.gw.shutdown().await;
}

async fn a_reload_logs_a_retired_upstreams_session_out_only_after_its_request(store: Store) {
    let e = env(store, "").await;
    let a = e.token("a", false);
    let first = session_of(&e.echo(&a).await);
    let busy = slow(&e, &a, 1000).await;
    requests_in_flight(&e.fake, 1).await;
    let app = e.gw.app.as_ref().unwrap();
    app.gateway.apply(&changed(&e.config)).await.unwrap();
    // The request in flight finishes on its session, undisturbed...
    let r = busy.await.unwrap();
    assert_eq!(session_of(&r), first);
    assert_eq!(r.header("tollgate-session"), None, "{r:?}");
    // ...and only then is the session logged out.
    eventually(
        "the retired session is logged out",
        SETTLE,
        || std::future::ready(e.counters()),
        |c| c.logouts >= 1,
    )
    .await;
    assert_eq!(e.counters().ended_mid_request, 0);
    e.assert_no_leaks();
    e.gw.shutdown().await;
}

#[tokio::test]
async fn a_reload_never_doubles_the_seat_cap() {
    let e = env(Store::Memory, "max_upstream_sessions = 1").await;
    let a = e.token("a", false);
    session_of(&e.echo(&a).await);
    let busy = slow(&e, &a, 1000).await;
    requests_in_flight(&e.fake, 1).await;
    let app = e.gw.app.as_ref().unwrap();
    app.gateway.apply(&changed(&e.config)).await.unwrap();
    // The new pool's first login waits for the old pool's seat.
    let b = e.echo(&e.token("b", false)).await;
    assert_eq!(b.status, 200, "{}", b.text());
    assert_eq!(busy.await.unwrap().status, 200);
    let c = e.counters();
    assert_eq!(c.peak_seats, 1, "the cap held across the reload: {c:?}");
    e.assert_no_leaks();
    e.gw.shutdown().await;
}

async fn after_giving_up_the_grant_logs_in_no_more_for_a_while(store: Store) {
    let e = env(store, "").await;
    let t = e.token("g", false);
    session_of(&e.echo(&t).await);
    // Every session now ends at once upstream.
    e.fake.set_idle_timeout(Duration::ZERO);
    e.fake.advance_clock(Duration::from_secs(1));
    let r = e.echo(&t).await;
    assert_eq!(r.json()["error"], "upstream_auth_failed");
    let before = e.counters();
    for _ in 0..3 {
        let r = e.echo(&t).await;
        assert_eq!(r.status, 502, "{}", r.text());
        assert_eq!(r.json()["error"], "upstream_auth_failed");
    }
    assert_eq!(
        e.counters().logins_ok,
        before.logins_ok,
        "a grant that gave up logged in again within relogin_min_interval"
    );
    e.assert_no_leaks();
    e.gw.shutdown().await;
}

// === 5. An upstream as unfriendly as the real one ===

async fn the_jar_follows_renewed_and_deleted_auth_cookies(store: Store) {
    let e = Setup::new(store)
        .opts(LegacyOptions {
            renew_auth_every: 2,
            ..LegacyOptions::default()
        })
        .start()
        .await;
    let t = e.token("g", false);
    let s = session_of(&e.echo(&t).await);
    for _ in 0..9 {
        assert_eq!(session_of(&e.echo(&t).await), s);
    }
    let c = e.counters();
    assert!(c.auth_renewed >= 4, "{c:?}");
    assert_eq!((c.stale_auth_cookie, c.logins_ok), (0, 1), "{c:?}");
    // The upstream signs the session out by itself in a data answer.
    assert!(e.fake.sign_out_on_next_answer(s.as_u64().unwrap()));
    assert_eq!(session_of(&e.echo(&t).await), s);
    let before = e.counters();
    let next = e.echo(&t).await;
    assert_eq!(next.header("tollgate-session"), Some("new"));
    assert_ne!(session_of(&next), s);
    let after = e.counters();
    assert_eq!(
        after.requests_unauthenticated, before.requests_unauthenticated,
        "the deleted cookie was sent again"
    );
    e.settles(SETTLE).await;
    e.assert_no_leaks();
    e.gw.shutdown().await;
}

async fn a_login_limit_redirect_is_seat_exhaustion(store: Store) {
    let e = Setup::new(store)
        .opts(LegacyOptions {
            login_limit_shape: LimitShape::Redirect,
            ..LegacyOptions::default()
        })
        .session("max_upstream_sessions = 3\nmin_idle_before_evict = \"0s\"")
        .start()
        .await;
    session_of(&e.echo(&e.token("a", false)).await);
    e.fake.reserve_seats(1);
    let b = e.echo(&e.token("b", false)).await;
    assert_eq!(b.status, 200, "{}", b.text());
    e.fake.reserve_seats(2);
    let r = e.echo(&e.token("c", false)).await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.json()["error"], "upstream_seats_exhausted");
    let c = e.counters();
    assert_eq!((c.logins_rejected_limit, c.logouts), (3, 2), "{c:?}");
    e.assert_no_leaks();
    e.gw.shutdown().await;
}

async fn a_request_rate_limit_passes_through_without_a_relogin(store: Store) {
    let e = Setup::new(store)
        .opts(LegacyOptions {
            max_requests_per_minute: 3,
            ..LegacyOptions::default()
        })
        .start()
        .await;
    let t = e.token("g", false);
    for _ in 0..3 {
        session_of(&e.echo(&t).await);
    }
    let r = e.echo(&t).await;
    assert_eq!(r.status, 429, "{}", r.text());
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    let c = e.counters();
    assert_eq!(
        (c.logins_ok, c.logouts, c.requests_throttled),
        (1, 0, 1),
        "{c:?}"
    );
    assert_eq!(
        e.metrics()
            .await
            .count(r#"tollgate_upstream_relogins_total{upstream="erp"}"#),
        0
    );
    e.assert_no_leaks();
    e.gw.shutdown().await;
}

async fn a_session_ended_mid_request_is_logged_in_again_and_the_request_replayed(store: Store) {
    let e = env(store, "").await;
    let t = e.token("g", false);
    let first = session_of(&e.echo(&t).await);
    let busy = slow(&e, &t, 500).await;
    requests_in_flight(&e.fake, 1).await;
    e.fake.expire(None);
    let r = busy.await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("tollgate-session"), Some("new"));
    assert_ne!(r.json()["session"], first);
    let c = e.counters();
    assert_eq!((c.ended_mid_request, c.logins_ok), (1, 2), "{c:?}");
    e.assert_no_leaks();
    e.gw.shutdown().await;
}

async fn upstream_errors_keep_their_status_but_not_their_details(store: Store) {
    let e = env(store, "").await;
    let t = e.token("g", false);
    // A generic data call the fake answers 404 (an unknown LongOp) and 500 (an operation
    // conflict): statuses pass, exception members never.
    let lost = e
        .send(
            "GET",
            "/entity/Default/24.200.001/LongOp/Status/999",
            &t,
            None,
            b"",
        )
        .await;
    assert_eq!(lost.status, 404, "{}", lost.text());
    let started = e
        .send(
            "POST",
            "/entity/Default/24.200.001/LongOp/Start",
            &t,
            None,
            b"{}",
        )
        .await;
    assert_eq!(started.status, 202);
    let conflict = e
        .send(
            "POST",
            "/entity/Default/24.200.001/LongOp/Start",
            &t,
            None,
            b"{}",
        )
        .await;
    assert_eq!(conflict.status, 500);
    assert_eq!(conflict.json()["error"], "upstream_error");
    e.assert_no_leaks();
    e.gw.shutdown().await;
}

#[tokio::test]
async fn no_upstream_error_detail_reaches_a_response_or_a_log() {
    use crate::support::process::{child_config, Process};
    let idp = FakeIdp::start().await;
    let fake = FakeLegacy::new(LegacyOptions::default());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let legacy = format!("http://{}", listener.local_addr().unwrap());
    let _task = fake.spawn(listener);
    let cfg = |password: &str, creation: &str| {
        child_config(
            &format!(
                r#"
[[issuer]]
id = "erp"
issuer = "{iss}"
jwks_uri = "{iss}/jwks"
audiences = ["api"]

[[upstream]]
id = "erp"
url = "{legacy}"

[upstream.session]
max_upstream_sessions = 2
{creation}

[[route]]
id = "erp"
prefix = "/entity/"
upstream = "erp"
scopes = ["api"]
"#,
                iss = idp.issuer,
                creation = if creation == "passive" {
                    "creation = \"passive\"".to_owned()
                } else {
                    format!("[upstream.session.credentials]\nname = \"admin\"\npassword = \"{password}\"\ntenant = \"MyStore\"")
                },
            ),
            "trace",
        )
    };
    let t = idp.token(json!({"grant_id": "g"}));
    let auth = format!("Bearer {t}");
    let mut logs = Vec::new();
    // Active mode with a wrong password, then an operation conflict with a good one.
    for password in ["wrong-password", "123"] {
        let gw = Process::start(&cfg(password, "active")).await;
        gw.ready().await;
        let r = get(&gw.url(ECHO), &[("authorization", &auth)]).await;
        assert_clean(&r);
        for _ in 0..2 {
            let r = crate::support::request(
                Request::post(gw.url("/entity/Default/24.200.001/LongOp/Start"))
                    .header("authorization", &auth)
                    .body(Full::new(Bytes::from_static(b"{}")))
                    .unwrap(),
            )
            .await;
            assert_clean(&r);
        }
        logs.extend(gw.logs());
    }
    // Passive mode: the client's own failed login.
    let gw = Process::start(&cfg("", "passive")).await;
    gw.ready().await;
    let r = crate::support::request(
        Request::post(gw.url("/entity/auth/login"))
            .header("authorization", &auth)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(
                br#"{"name":"admin","password":"wrong"}"#,
            )))
            .unwrap(),
    )
    .await;
    assert_clean(&r);
    assert_eq!(r.status, 500);
    assert_eq!(r.json()["error"], "upstream_login_failed");
    logs.extend(gw.logs());
    assert!(logs.len() > 20, "the logs were captured");
    for line in &logs {
        for leak in [
            "exceptionMessage",
            "exceptionType",
            "stackTrace",
            "PX.Data",
            "Invalid credentials",
            "wrong-password",
        ] {
            assert!(!line.contains(leak), "{leak} in a log line: {line}");
        }
    }
    assert_eq!(fake.counters().logins_locked, 0);
}

both_stores!(
    login_spellings_are_answered_by_the_gateway_in_active_mode,
    logout_spellings_end_the_session_through_the_gateway,
    login_and_logout_spellings_are_captured_in_passive_mode,
    login_calls_on_a_public_route_are_never_forwarded,
    http2_bodies_reach_the_upstream_over_h2c,
    http2_bodies_reach_the_upstream_over_tls_with_alpn,
    eight_new_grants_with_a_wrong_password_make_one_attempt,
    a_locked_account_opens_the_cooldown_like_a_wrong_password,
    a_hang_up_while_the_login_waits_for_a_seat_leaks_no_seat,
    a_login_that_ends_after_its_session_was_removed_is_logged_out,
    a_hang_up_during_a_slow_login_keeps_the_session,
    an_admin_logout_during_a_login_waits_for_it,
    a_failed_first_login_leaves_no_record_to_count_against_the_grant,
    the_eviction_an_api_login_limit_allows_frees_a_real_seat,
    passive_capture_takes_its_seat_before_the_login_is_forwarded,
    a_reload_logs_a_retired_upstreams_session_out_only_after_its_request,
    a_reload_that_keeps_the_profile_keeps_the_sessions,
    after_giving_up_the_grant_logs_in_no_more_for_a_while,
    the_jar_follows_renewed_and_deleted_auth_cookies,
    a_login_limit_redirect_is_seat_exhaustion,
    a_request_rate_limit_passes_through_without_a_relogin,
    a_session_ended_mid_request_is_logged_in_again_and_the_request_replayed,
    upstream_errors_keep_their_status_but_not_their_details,
);
