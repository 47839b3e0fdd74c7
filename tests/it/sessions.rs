//! Upstream sessions end to end (shared design §6 and §7.8): the real gateway in front of the
//! fake legacy API, which mimics Acumatica's logins, seats, lockout, expiry and per-session
//! locking and counts every leak. Every test ends by checking the fake's leak detectors.

use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use serde_json::json;

use crate::support::http::chunked;
use crate::support::legacy::{env, handle_of, requests_in_flight, session_of, Setup, Store};
use crate::support::{eventually, request};

async fn single_mode_serialises_a_grants_requests_on_one_session(store: Store) {
    let e = env(store, "").await;
    let token = e.token("g1", false);
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let url = e.gw.url("/entity/Default/24.200.001/Slow?ms=30");
        let auth = format!("Bearer {token}");
        tasks.push(tokio::spawn(async move {
            crate::support::get(&url, &[("authorization", &auth)]).await
        }));
    }
    let mut sessions = Vec::new();
    for t in tasks {
        let r = t.await.unwrap();
        sessions.push(session_of(&r));
    }
    sessions.dedup();
    assert_eq!(sessions.len(), 1, "one upstream session serves the grant");
    let c = e.counters();
    assert_eq!(
        c.max_concurrency_per_session, 1,
        "requests of one session overlapped upstream: {c:?}"
    );
    assert_eq!(c.logins_ok, 1, "exactly one login (single-flight)");
    e.assert_no_leaks();
    e.gw.shutdown().await;
}

async fn a_refreshed_token_keeps_the_session_and_grants_never_share(store: Store) {
    let e = env(store, "").await;
    let first = e.echo(&e.token("g1", false)).await;
    assert_eq!(first.header("tollgate-session"), Some("new"));
    let s1 = session_of(&first);
    // A new access token of the same grant (another jti, same grant_id).
    let refreshed = e.echo(&e.token("g1", false)).await;
    assert_eq!(session_of(&refreshed), s1);
    assert_eq!(refreshed.header("tollgate-session"), None);
    let other = e.echo(&e.token("g2", false)).await;
    assert_ne!(session_of(&other), s1, "two grants never share a session");
    assert_eq!(e.counters().logins_ok, 2);
    e.assert_no_leaks();
    e.gw.shutdown().await;
}

async fn concurrent_mode_keeps_state_per_handle_and_refuses_another_grants_handle(store: Store) {
    let e = env(store, "max_sessions_per_grant = 3").await;
    let t = e.token("c1", true);
    let counter = "/entity/Default/24.200.001/Counter";
    let a1 = e.send("PUT", counter, &t, None, b"{}").await;
    assert_eq!(a1.status, 200, "{}", a1.text());
    let handle_a = handle_of(&a1);
    assert_eq!(a1.json()["counter"], 1);
    let a2 = e.send("PUT", counter, &t, Some(&handle_a), b"{}").await;
    assert_eq!(
        a2.json()["counter"],
        2,
        "the handle's session kept its state"
    );
    assert_eq!(a2.header("set-cookie"), None);
    // No handle: a new session with its own state.
    let b1 = e.send("PUT", counter, &t, None, b"{}").await;
    let handle_b = handle_of(&b1);
    assert_ne!(handle_a, handle_b);
    assert_eq!(b1.json()["counter"], 1);
    assert_ne!(b1.json()["session"], a1.json()["session"]);
    let a3 = e.send("PUT", counter, &t, Some(&handle_a), b"{}").await;
    assert_eq!(a3.json()["counter"], 3);

    // Another grant's token with this handle: 400, nothing reaches the upstream.
    let before = (
        e.counters(),
        e.fake.state()["sessions"].as_array().unwrap().len(),
    );
    let thief = e.token("c2", true);
    let r = e.send("PUT", counter, &thief, Some(&handle_a), b"{}").await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"], "invalid_session_handle");
    // A forged handle too.
    let r = e
        .send(
            "GET",
            counter,
            &t,
            Some("tollgate_session=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"),
            b"",
        )
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(
        e.counters(),
        before.0,
        "the refused requests reached the upstream"
    );
    assert_eq!(
        e.fake.state()["sessions"].as_array().unwrap().len(),
        before.1
    );
    e.assert_no_leaks();
    e.gw.shutdown().await;
}

async fn the_per_grant_cap_answers_429_grant_session_limit(store: Store) {
    let e = env(
        store,
        "max_sessions_per_grant = 2\nmax_upstream_sessions = 2",
    )
    .await;
    let t = e.token("c1", true);
    for _ in 0..2 {
        assert_eq!(e.echo(&t).await.status, 200);
    }
    let r = e.echo(&t).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.json()["error"], "grant_session_limit");
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=300).contains(&retry), "{retry}");
    assert_eq!(
        e.counters().logins_ok,
        2,
        "the request was not put on another handle's session"
    );
    e.assert_no_leaks();
    e.gw.shutdown().await;
}

async fn the_seat_cap_evicts_the_lru_idle_session_or_answers_503(store: Store) {
    let e = env(
        store,
        "admission_wait = \"300ms\"\nmin_idle_before_evict = \"0s\"",
    )
    .await;
    let (a, b, c) = (
        e.token("a", false),
        e.token("b", false),
        e.token("c", false),
    );
    let sa = session_of(&e.echo(&a).await);
    session_of(&e.echo(&b).await);
    // Both seats taken; `a` is the least recently used: it is logged out for `c`.
    let rc = e.echo(&c).await;
    assert_eq!(rc.status, 200, "{}", rc.text());
    let counters = e.counters();
    assert_eq!(
        counters.logouts, 1,
        "the evicted session was logged out: {counters:?}"
    );
    assert_eq!(counters.logouts_411, 0);
    assert!(counters.peak_seats <= 2, "{counters:?}");
    // `a` comes back on a fresh session.
    let again = e.echo(&a).await;
    assert_eq!(again.header("tollgate-session"), Some("new"));
    assert_ne!(session_of(&again), sa);

    // Nothing evictable (both sessions busy): 503 after admission_wait.
    let slow = |t: String| {
        let url = e.gw.url("/entity/Default/24.200.001/Slow?ms=1500");
        tokio::spawn(async move {
            crate::support::get(&url, &[("authorization", &format!("Bearer {t}"))]).await
        })
    };
    let busy = [slow(a.clone()), slow(c.clone())];
    requests_in_flight(&e.fake, 2).await;
    let r = e.echo(&e.token("d", false)).await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.json()["error"], "upstream_capacity_exhausted");
    assert_eq!(r.header("retry-after"), Some("5"));
    for t in busy {
        assert_eq!(t.await.unwrap().status, 200);
    }
    let m = e.metrics().await;
    assert_eq!(
        m.count(r#"tollgate_upstream_evictions_total{reason="lru",upstream="erp"}"#),
        2
    );
    assert!(e.counters().peak_seats <= 2);
    e.assert_no_leaks();
    e.gw.shutdown().await;
}

async fn api_login_limit_gives_one_eviction_and_one_retry_under_500_and_429(store: Store) {
    for status in [500u16, 429] {
        // The gateway's own cap (3) is above the upstream's (2): seats held elsewhere show up
        // only as "API Login Limit".
        let e = env(
            store,
            "max_upstream_sessions = 3\nmin_idle_before_evict = \"0s\"",
        )
        .await;
        e.fake.set_login_limit_status(status);
        let a = e.token("a", false);
        session_of(&e.echo(&a).await);
        e.fake.reserve_seats(1);
        // The upstream is full: one eviction (a, idle) and one retry, which succeeds.
        let b = e.echo(&e.token("b", false)).await;
        assert_eq!(b.status, 200, "{status}: {}", b.text());
        let c = e.counters();
        assert_eq!(
            (c.logins_rejected_limit, c.logouts, c.logins_ok),
            (1, 1, 2),
            "{status}: {c:?}"
        );
        // Other integrations now hold every seat: the one eviction the rule allows logs `b` out
        // (idle), the one retry still meets the limit, and the answer is 503 without a loop.
        e.fake.reserve_seats(2);
        let before = e.counters();
        let r = e.echo(&e.token("c", false)).await;
        assert_eq!(r.status, 503, "{status}: {}", r.text());
        assert_eq!(r.json()["error"], "upstream_seats_exhausted");
        assert_eq!(r.header("retry-after"), Some("30"));
        let after = e.counters();
        assert_eq!(
            (
                after.logins_rejected_limit - before.logins_rejected_limit,
                after.logouts - before.logouts,
                after.seats_in_use,
            ),
            (2, 1, 0),
            "one attempt, one eviction (b), one retry: {after:?}"
        );
        assert!(e.records().await.is_empty(), "c's failed record is gone");
        e.assert_no_leaks();
        e.gw.shutdown().await;
    }
}

async fn a_wrong_password_is_tried_once_and_opens_the_cooldown(store: Store) {
    let e = Setup::new(store).password("wrong-password").start().await;
    let t = e.token("g", false);
    for _ in 0..4 {
        let r = e.echo(&t).await;
        assert_eq!(r.status, 502);
        assert_eq!(r.json()["error"], "upstream_login_failed");
        let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
        assert!(retry > 800, "the cooldown (15 min) is announced: {retry}");
        assert!(
            !r.text().contains("Invalid credentials"),
            "the upstream's error body was passed on"
        );
    }
    let c = e.counters();
    assert_eq!(
        c.logins_bad_credentials, 1,
        "a credential failure is never retried: {c:?}"
    );
    assert_eq!(c.logins_locked, 0);
    let m = e.metrics().await;
    assert_eq!(
        m.count(r#"tollgate_upstream_logins_total{result="bad_credentials",upstream="erp"}"#),
        1
    );
    assert_eq!(
        m.count(r#"tollgate_upstream_login_circuit_open{upstream="erp"}"#),
        1
    );
    e.assert_no_leaks();
    e.gw.shutdown().await;
}

async fn an_expired_session_is_logged_in_again_once_and_the_request_replayed_once(store: Store) {
    let e = env(store, "").await;
    let t = e.token("g", false);
    let counter = "/entity/Default/24.200.001/Counter";
    assert_eq!(
        e.send("PUT", counter, &t, None, b"{}").await.json()["counter"],
        1
    );
    e.fake.expire(None);
    let before = e.counters();
    let r = e.send("PUT", counter, &t, None, b"{\"replay\":true}").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("tollgate-session"), Some("new"));
    assert_eq!(r.json()["counter"], 1, "served by the new session");
    let c = e.counters();
    assert_eq!(c.logins_ok - before.logins_ok, 1, "exactly one re-login");
    assert_eq!(
        c.requests_unauthenticated - before.requests_unauthenticated,
        1,
        "exactly one replay"
    );
    assert_eq!(
        c.logouts, before.logouts,
        "no logout for a session the upstream already ended"
    );
    let m = e.metrics().await;
    assert_eq!(
        m.count(r#"tollgate_upstream_relogins_total{upstream="erp"}"#),
        1
    );

    // A streamed body cannot be replayed: 503 upstream_session_expired, Retry-After: 0.
    e.fake.expire(None);
    let resp = request(
        Request::put(e.gw.url(counter))
            .header("authorization", format!("Bearer {t}"))
            .body(chunked(&b"{\"x\":1}"[..]))
            .unwrap(),
    )
    .await;
    assert_eq!(resp.status, 503);
    assert_eq!(resp.header("retry-after"), Some("0"));
    // The next request finds a fresh session.
    assert_eq!(e.echo(&t).await.status, 200);
    e.assert_no_leaks();
    e.gw.shutdown().await;
}

async fn a_replay_that_is_still_unauthenticated_is_502_and_never_loops(store: Store) {
    let e = env(store, "").await;
    let t = e.token("g", false);
    session_of(&e.echo(&t).await);
    // Every session now ends at once upstream.
    e.fake.set_idle_timeout(Duration::ZERO);
    e.fake.advance_clock(Duration::from_secs(1));
    let before = e.counters();
    let r = e.echo(&t).await;
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(r.json()["error"], "upstream_auth_failed");
    let c = e.counters();
    assert_eq!(
        c.logins_ok - before.logins_ok,
        1,
        "one re-login, no loop: {c:?}"
    );
    e.assert_no_leaks();
    e.gw.shutdown().await;
}

async fn idle_sessions_are_logged_out_and_seats_return_to_zero(store: Store) {
    let e = env(store, "idle_ttl = \"300ms\"").await;
    session_of(&e.echo(&e.token("a", false)).await);
    session_of(&e.echo(&e.token("b", false)).await);
    assert_eq!(e.counters().seats_in_use, 2);
    eventually(
        "the idle sessions are logged out: no seat in use upstream",
        Duration::from_secs(5),
        || std::future::ready(e.counters()),
        |c| c.seats_in_use == 0,
    )
    .await;
    let c = e.counters();
    assert_eq!(c.logouts, 2);
    assert_eq!(c.logouts_411, 0, "logout carried Content-Length: 0");
    let m = e.metrics().await;
    assert_eq!(
        m.count(r#"tollgate_upstream_seats_in_use{upstream="erp"}"#),
        0
    );
    assert_eq!(
        m.count(r#"tollgate_upstream_evictions_total{reason="idle",upstream="erp"}"#),
        2
    );
    e.assert_no_leaks();
    e.gw.shutdown().await;
}

async fn client_cookies_never_reach_the_upstream(store: Store) {
    let e = env(store, "").await;
    let t = e.token("g", false);
    let s = session_of(&e.echo(&t).await);
    let r = e
        .send(
            "GET",
            "/entity/Default/24.200.001/Echo",
            &t,
            Some(".ASPXAUTH=forged; ASP.NET_SessionId=abcdefghijklmnopqrstuvwx; tracking=1"),
            b"",
        )
        .await;
    assert_eq!(session_of(&r), s, "served by the grant's own session");
    // A public route on the session upstream: no session, no cookie either way.
    let r = crate::support::get(&e.gw.url("/health"), &[("cookie", ".ASPXAUTH=forged")]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("set-cookie"), None);
    e.assert_no_leaks();
    e.gw.shutdown().await;
}

async fn login_and_logout_calls_are_intercepted(store: Store) {
    let e = env(store, "").await;
    let t = e.token("g", false);
    // Active mode: the client's login is answered by the gateway, never forwarded.
    let r = e
        .send(
            "POST",
            "/entity/auth/login",
            &t,
            None,
            br#"{"name":"x","password":"y"}"#,
        )
        .await;
    assert_eq!(r.status, 204);
    assert_eq!(r.header("tollgate-login"), Some("managed"));
    assert_eq!(
        e.counters().logins_ok + e.counters().logins_bad_credentials,
        0
    );
    session_of(&e.echo(&t).await);
    assert_eq!(e.counters().seats_in_use, 1);
    // The client's logout logs the grant's session out (Content-Length: 0 upstream), idempotent.
    for _ in 0..2 {
        let r = e.send("POST", "/entity/auth/logout", &t, None, b"").await;
        assert_eq!(r.status, 204);
    }
    let c = e.counters();
    assert_eq!((c.logouts, c.seats_in_use), (1, 0), "{c:?}");
    e.assert_no_leaks();
    e.gw.shutdown().await;
}

async fn concurrent_logout_with_a_handle_clears_it(store: Store) {
    let e = env(store, "").await;
    let t = e.token("c", true);
    let h = handle_of(&e.echo(&t).await);
    let r = e
        .send("POST", "/entity/auth/logout", &t, Some(&h), b"")
        .await;
    assert_eq!(r.status, 204);
    let cleared = r.header("set-cookie").unwrap();
    assert!(
        cleared.starts_with("tollgate_session=;") && cleared.contains("Max-Age=0"),
        "{cleared}"
    );
    assert_eq!(e.counters().seats_in_use, 0);
    // The same handle later: a new session under the same handle value.
    let again = e.echo_with(&t, &h).await;
    assert_eq!(again.header("tollgate-session"), Some("new"));
    assert_eq!(again.header("set-cookie"), None, "the handle value is kept");
    e.assert_no_leaks();
    e.gw.shutdown().await;
}

async fn passive_capture_stores_the_clients_login_cookies(store: Store) {
    let e = Setup::new(store).passive().start().await;
    let t = e.token("g", false);
    let login = e
        .send(
            "POST",
            "/entity/auth/login",
            &t,
            None,
            br#"{"name":"admin","password":"123","tenant":"MyStore"}"#,
        )
        .await;
    assert_eq!(login.status, 204);
    assert_eq!(
        login.header("set-cookie"),
        None,
        "the captured cookies are stripped"
    );
    let s = session_of(&e.echo(&t).await);
    assert_eq!(session_of(&e.echo(&t).await), s);
    assert_eq!(e.counters().logins_ok, 1, "the client's own login");
    // The upstream ends the session: no re-login in passive mode, the client is told to sign in.
    e.fake.expire(None);
    let r = e.echo(&t).await;
    assert_eq!(r.status, 401);
    assert_eq!(e.counters().logins_ok, 1);
    e.assert_no_leaks();
    e.gw.shutdown().await;
}

async fn long_running_operations_stay_on_their_session(store: Store) {
    // Concurrent mode, where a grant has several sessions: the handle must pin the polling to
    // the session that started the operation (another session does not know it).
    let e = env(store, "max_sessions_per_grant = 2").await;
    let t = e.token("g", true);
    let start = e
        .send(
            "POST",
            "/entity/Default/24.200.001/LongOp/Start",
            &t,
            None,
            b"{}",
        )
        .await;
    assert_eq!(start.status, 202, "{}", start.text());
    let a = handle_of(&start);
    let location = start.header("location").unwrap().to_owned();
    let other = e.echo(&t).await;
    let b = handle_of(&other);
    assert_ne!(a, b);
    // The grant's other session does not know the operation.
    let elsewhere = e.send("GET", &location, &t, Some(&b), b"").await;
    assert_eq!(elsewhere.status, 404, "{}", elsewhere.text());
    // While it runs, another operation on its session fails upstream: the status passes, the
    // upstream's exception details do not.
    let busy = e
        .send(
            "POST",
            "/entity/Default/24.200.001/LongOp/Start",
            &t,
            Some(&a),
            b"{}",
        )
        .await;
    assert_eq!(busy.status, 500, "{}", busy.text());
    assert_eq!(busy.json()["error"], "upstream_error");
    let done = eventually(
        "the operation ends (its status is no longer 202)",
        Duration::from_secs(5),
        || async { e.send("GET", &location, &t, Some(&a), b"").await.status },
        |status| *status != 202,
    )
    .await;
    assert_eq!(done, 204, "the handle's session finished its operation");
    assert_eq!(e.counters().logins_ok, 2);
    e.assert_no_leaks();
    e.gw.shutdown().await;
}

async fn admin_lists_sessions_without_cookies_and_logs_a_grant_out(store: Store) {
    let e = env(store, "").await;
    let t = e.token("g", false);
    session_of(&e.echo(&t).await);
    let list = crate::support::get(&format!("{}/sessions", e.gw.admin), &[]).await;
    assert_eq!(list.status, 200);
    let sessions = list.json()["sessions"].as_array().unwrap().clone();
    assert_eq!(sessions.len(), 1);
    let s = &sessions[0];
    for key in [
        "grant",
        "upstream",
        "mode",
        "age_seconds",
        "idle_seconds",
        "in_flight",
        "queued",
        "state",
    ] {
        assert!(s.get(key).is_some(), "{key} missing in {s}");
    }
    assert_eq!(s["upstream"], "erp");
    assert_eq!(s["mode"], "single");
    assert_eq!(s["state"], "active");
    let text = list.text();
    assert!(
        !text.contains("ASP.NET") && !text.contains("ASPXAUTH"),
        "{text}"
    );
    let grant = s["grant"].as_str().unwrap().to_owned();
    let del = request(
        Request::delete(format!("{}/sessions/{grant}", e.gw.admin))
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(del.status, 200, "{}", del.text());
    assert_eq!(e.counters().seats_in_use, 0);
    assert_eq!(e.counters().logouts, 1);
    let del = request(
        Request::delete(format!("{}/sessions/{grant}", e.gw.admin))
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(del.status, 404);
    e.assert_no_leaks();
    e.gw.shutdown().await;
}

async fn shutdown_logs_every_session_out(store: Store) {
    let e = env(store, "").await;
    session_of(&e.echo(&e.token("a", false)).await);
    session_of(&e.echo(&e.token("b", true)).await);
    assert_eq!(e.counters().seats_in_use, 2);
    let fake = e.fake.clone();
    e.gw.shutdown().await;
    let c = fake.counters();
    assert_eq!((c.seats_in_use, c.logouts), (0, 2), "{c:?}");
    assert_eq!(c.logouts_411, 0);
}

async fn queue_bounds_answer_429_grant_busy(store: Store) {
    let e = env(store, "max_queue_per_session = 1\nmax_queue_wait = \"5s\"").await;
    let t = e.token("g", false);
    session_of(&e.echo(&t).await);
    let slow = || {
        let url = e.gw.url("/entity/Default/24.200.001/Slow?ms=800");
        let auth = format!("Bearer {t}");
        tokio::spawn(async move { crate::support::get(&url, &[("authorization", &auth)]).await })
    };
    let first = slow();
    requests_in_flight(&e.fake, 1).await;
    let second = slow();
    eventually(
        "the second request is queued (the session records' queued counts)",
        Duration::from_secs(5),
        || async {
            e.records()
                .await
                .iter()
                .map(|r| r["queued"].as_u64().unwrap())
                .sum::<u64>()
        },
        |queued| *queued == 1,
    )
    .await;
    // One in flight, one queued: the third is refused at once.
    let r = e.echo(&t).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.json()["error"], "grant_busy");
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(first.await.unwrap().status, 200);
    assert_eq!(second.await.unwrap().status, 200);
    assert_eq!(e.counters().max_concurrency_per_session, 1);
    e.assert_no_leaks();
    e.gw.shutdown().await;
}

async fn session_metrics_are_exposed_and_parse(store: Store) {
    let e = env(store, "").await;
    session_of(&e.echo(&e.token("g", false)).await);
    let m = e.metrics().await;
    crate::metrics::promtool_check(m.text());
    for (sample, value) in [
        (
            r#"tollgate_upstream_sessions{state="active",upstream="erp"}"#,
            1.0,
        ),
        (r#"tollgate_upstream_seats_in_use{upstream="erp"}"#, 1.0),
        (
            r#"tollgate_upstream_logins_total{result="ok",upstream="erp"}"#,
            1.0,
        ),
        (
            r#"tollgate_upstream_logouts_total{result="ok",upstream="erp"}"#,
            0.0,
        ),
        (r#"tollgate_upstream_relogins_total{upstream="erp"}"#, 0.0),
        (
            r#"tollgate_upstream_session_queue_depth{upstream="erp"}"#,
            0.0,
        ),
        (
            r#"tollgate_upstream_admission_wait_seconds_count{upstream="erp"}"#,
            1.0,
        ),
    ] {
        assert_eq!(m.value(sample), Some(value), "`{sample}` in:\n{m:?}");
    }
    e.assert_no_leaks();
    e.gw.shutdown().await;
}

async fn token_keyed_sessions_end_with_their_token(store: Store) {
    let e = env(store, "grant_key = [\"token\"]\nidle_ttl = \"300s\"").await;
    let now = crate::support::now();
    let short = e.idp.token(json!({"exp": now + 1}));
    let other = e.idp.token(json!({"exp": now + 300}));
    let s1 = session_of(&e.echo(&short).await);
    let s2 = session_of(&e.echo(&other).await);
    assert_ne!(s1, s2, "one session per access token");
    // The short token expires: its session is logged out without waiting for idle_ttl.
    eventually(
        "the short token's session is logged out",
        Duration::from_secs(6),
        || std::future::ready(e.counters()),
        |c| c.logouts == 1,
    )
    .await;
    assert_eq!(e.counters().seats_in_use, 1);
    let m = e.metrics().await;
    assert_eq!(
        m.count(r#"tollgate_upstream_evictions_total{reason="token_expired",upstream="erp"}"#),
        1
    );
    e.assert_no_leaks();
    e.gw.shutdown().await;
}

both_stores!(
    single_mode_serialises_a_grants_requests_on_one_session,
    a_refreshed_token_keeps_the_session_and_grants_never_share,
    concurrent_mode_keeps_state_per_handle_and_refuses_another_grants_handle,
    the_per_grant_cap_answers_429_grant_session_limit,
    the_seat_cap_evicts_the_lru_idle_session_or_answers_503,
    api_login_limit_gives_one_eviction_and_one_retry_under_500_and_429,
    a_wrong_password_is_tried_once_and_opens_the_cooldown,
    an_expired_session_is_logged_in_again_once_and_the_request_replayed_once,
    a_replay_that_is_still_unauthenticated_is_502_and_never_loops,
    idle_sessions_are_logged_out_and_seats_return_to_zero,
    client_cookies_never_reach_the_upstream,
    login_and_logout_calls_are_intercepted,
    concurrent_logout_with_a_handle_clears_it,
    passive_capture_stores_the_clients_login_cookies,
    long_running_operations_stay_on_their_session,
    admin_lists_sessions_without_cookies_and_logs_a_grant_out,
    shutdown_logs_every_session_out,
    queue_bounds_answer_429_grant_busy,
    session_metrics_are_exposed_and_parse,
    token_keyed_sessions_end_with_their_token,
);
