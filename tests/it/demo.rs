//! `tollgate demo` as a user runs it: the real binary on free ports, then the printed story:
//! a token from the demo issuer, a 200 through the gateway, a 401 without a token, a 403 for a
//! write with a read-only token.

use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;

use crate::support::metrics::scrape;
use crate::support::process::Process;
use crate::support::{eventually, get, request};

#[tokio::test]
async fn the_demo_tells_its_story() {
    story(&[]).await;
}

#[tokio::test]
async fn the_demo_tells_its_story_on_one_thread_and_stops_cleanly() {
    // One thread runs the single-threaded scheduler: nothing may wait on the thread it runs on.
    let (mut demo, entity, token) = story(&[("TOKIO_WORKER_THREADS", "1")]).await;
    let log = demo.wait_for_log("tollgate listening", 1).await;
    let listening = log.iter().find(|l| l.contains("tollgate listening"));
    assert!(
        listening.is_some_and(|l| l.contains("threads=1 scheduler=\"single-threaded\"")),
        "the start line tells the scheduler: {listening:?}"
    );
    let auth = format!("Bearer {token}");
    // At once: 16 requests of the grant (within its session's queue of 20, served one after
    // the other upstream) and 32 without a token.
    let mut answers = tokio::task::JoinSet::new();
    for n in 0..48 {
        let (entity, auth) = (entity.clone(), auth.clone());
        answers.spawn(async move {
            let headers: &[(&str, &str)] = if n < 16 {
                &[("authorization", &auth)]
            } else {
                &[]
            };
            (n < 16, get(&entity, headers).await)
        });
    }
    while let Some(a) = answers.join_next().await {
        let (authorized, a) = a.unwrap();
        assert_eq!(a.status, if authorized { 200 } else { 401 }, "{}", a.text());
    }
    demo.signal("TERM");
    let status = demo.wait(Duration::from_secs(20)).await;
    assert!(status.success(), "{status:?}: {:?}", demo.logs());
}

/// Runs the demo with `env` and follows its printed story; returns the demo, the entity URL
/// and a valid token.
async fn story(env: &[(&str, &str)]) -> (Process, String, String) {
    let demo = Process::spawn(
        &[
            "demo",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--issuer-listen",
            "127.0.0.1:0",
            "--legacy-listen",
            "127.0.0.1:0",
        ],
        env,
    );
    let text = eventually(
        "the demo prints its story, down to \"Press Ctrl-C\"",
        Duration::from_secs(30),
        || std::future::ready(demo.stdout().join("\n")),
        |text| text.contains("Press Ctrl-C"),
    )
    .await;
    let field = |name: &str| -> String {
        text.lines()
            .find(|l| l.trim_start().starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
            .to_owned()
    };
    let gateway = field("gateway");
    let issuer = field("issuer");
    let admin = field("admin");
    assert!(
        text.contains("curl -i -H \"Authorization: Bearer $TOKEN\""),
        "{text}"
    );

    // 1. A token, as the printed curl gets it.
    let form = "grant_type=password&username=reader&password=reader&client_id=demo-client";
    let r = request(
        Request::post(format!("{issuer}/token"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(Full::new(Bytes::from(form)))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let token = r.json()["access_token"].as_str().unwrap().to_owned();
    let refresh = r.json()["refresh_token"].as_str().unwrap().to_owned();
    let entity = format!("{gateway}/entity/Default/24.200.001/Customer");

    // 2. Through the gateway.
    let ok = get(&entity, &[("authorization", &format!("Bearer {token}"))]).await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(
        ok.header("tollgate-session"),
        Some("new"),
        "the first call logs in upstream"
    );
    let session = ok.json()["session"].clone();
    assert!(session.is_number(), "{}", ok.text());
    assert_eq!(
        ok.header("set-cookie"),
        None,
        "no upstream cookie reaches the client"
    );
    let echo = get(
        &format!("{gateway}/entity/Default/24.200.001/Echo"),
        &[("authorization", &format!("Bearer {token}"))],
    )
    .await;
    assert_eq!(echo.status, 200);
    assert_eq!(
        echo.json()["session"],
        session,
        "the grant keeps its upstream session"
    );
    assert_eq!(echo.header("tollgate-session"), None);

    // 3. Without a token.
    let no = get(&entity, &[]).await;
    assert_eq!(no.status, 401);
    assert_eq!(
        no.header("www-authenticate"),
        Some("Bearer realm=\"tollgate\"")
    );

    // 4. A write with the read-only token.
    let put = request(
        Request::put(&entity)
            .header("authorization", format!("Bearer {token}"))
            .body(Full::new(Bytes::from_static(b"{}")))
            .unwrap(),
    )
    .await;
    assert_eq!(put.status, 403);
    assert_eq!(
        put.header("www-authenticate"),
        Some("Bearer realm=\"tollgate\", error=\"insufficient_scope\", scope=\"api erp:write\"")
    );

    // The refresh_token grant issues a new access token that works too.
    let form = format!("grant_type=refresh_token&refresh_token={refresh}");
    let r = request(
        Request::post(format!("{issuer}/token"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(Full::new(Bytes::from(form)))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let refreshed = r.json()["access_token"].as_str().unwrap().to_owned();
    assert_ne!(refreshed, token);
    let after = get(
        &entity,
        &[("authorization", &format!("Bearer {refreshed}"))],
    )
    .await;
    assert_eq!(after.status, 200);
    assert_eq!(
        after.json()["session"],
        session,
        "a refreshed token keeps the grant's session"
    );
    let sessions = get(&format!("{admin}/sessions"), &[]).await;
    assert_eq!(
        sessions.json()["sessions"].as_array().unwrap().len(),
        1,
        "{}",
        sessions.text()
    );

    // The metrics show it all.
    let m = scrape(&admin).await;
    assert_eq!(
        m.value(
            r#"tollgate_auth_decisions_total{decision="insufficient_scope",route="erp-write"}"#
        ),
        Some(1.0),
        "{m:?}"
    );
    (demo, entity, refreshed)
}
