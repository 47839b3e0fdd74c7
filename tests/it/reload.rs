//! Operating a running gateway: reloads (file change, SIGHUP) under load, a bad file that changes
//! nothing, body limits, and SIGTERM draining an in-flight request.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use serde_json::json;

use crate::support::gateway::config;
use crate::support::http::chunked;
use crate::support::metrics::scrape;
use crate::support::process::{child_config, Process};
use crate::support::{eventually, get, request, FakeIdp, RecordingUpstream, TestGateway};

const EXTRA_ROUTE: &str =
    "\n[[route]]\nid = \"added\"\nprefix = \"/added/\"\nupstream = \"erp\"\nauth = \"none\"\n";

#[tokio::test]
async fn reloads_under_load_lose_no_request_and_a_bad_file_changes_nothing() {
    let idp = FakeIdp::start().await;
    let upstream = RecordingUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tollgate.toml");
    let base = config(&idp.issuer, &upstream.url(), "");
    std::fs::write(&path, &base).unwrap();
    let cfg = tollgate::config::load(&path).unwrap();
    let gw = TestGateway::start_config(&cfg, true).await;
    let app = gw.app.as_ref().unwrap();
    let watcher = tollgate::reload::spawn(
        path.clone(),
        app.gateway.clone(),
        cfg,
        None,
        Duration::from_millis(50),
    );
    let (base_url, admin) = (gw.base.clone(), gw.admin.clone());
    let token = idp.token(json!({}));

    // Load: a steady stream of authenticated requests while the file changes twice.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (url, auth, stop) = (
            format!("{base_url}/entity/Default/x"),
            format!("Bearer {token}"),
            stop.clone(),
        );
        load.push(tokio::spawn(async move {
            let (mut ok, mut failed) = (0u32, 0u32);
            while !stop.load(std::sync::atomic::Ordering::SeqCst) && ok + failed < 2000 {
                if get(&url, &[("authorization", &auth)]).await.status == 200 {
                    ok += 1;
                } else {
                    failed += 1;
                }
            }
            (ok, failed)
        }));
    }

    // A good file: a new route goes live.
    std::fs::write(&path, format!("{base}{EXTRA_ROUTE}")).unwrap();
    eventually(
        "the reloaded route goes live",
        Duration::from_secs(5),
        || async { get(&format!("{base_url}/added/x"), &[]).await.status },
        |status| *status == 200,
    )
    .await;
    let m = scrape(&admin).await;
    assert_eq!(m.count(RELOADED), 1);
    assert!(
        m.value("tollgate_config_last_reload_success_timestamp_seconds")
            .is_some_and(|t| t > 1_700_000_000.0),
        "{m:?}"
    );

    // A bad file: the running configuration stays, the failure is counted.
    std::fs::write(&path, format!("{base}{EXTRA_ROUTE}\n[[route]]\nid = \"broken\"\nprefix = \"/b/\"\nupstream = \"nowhere\"\n")).unwrap();
    eventually(
        "the bad file is reported (reload failures counted)",
        Duration::from_secs(5),
        || async {
            scrape(&admin)
                .await
                .count(r#"tollgate_config_reloads_total{result="failure"}"#)
        },
        |failures| *failures == 1,
    )
    .await;
    assert_eq!(
        get(&format!("{base_url}/added/x"), &[]).await.status,
        200,
        "the bad file changed the running routes"
    );

    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (mut ok, mut bad) = (0, 0);
    for l in load {
        let (o, f) = l.await.unwrap();
        ok += o;
        bad += f;
    }
    assert!(ok > 0);
    assert_eq!(bad, 0, "requests failed during the reloads");
    watcher.abort();
    gw.shutdown().await;
}

#[tokio::test]
async fn a_reload_adds_an_issuer_whose_keys_load_before_its_routes_go_live() {
    let idp = FakeIdp::start().await;
    let second = FakeIdp::start().await;
    let upstream = RecordingUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tollgate.toml");
    let base = config(&idp.issuer, &upstream.url(), "");
    std::fs::write(&path, &base).unwrap();
    let cfg = tollgate::config::load(&path).unwrap();
    let gw = TestGateway::start_config(&cfg, true).await;
    let app = gw.app.as_ref().unwrap();
    let url = gw.url("/partner/x");
    let token = second.token(json!({}));
    assert_eq!(
        get(&url, &[("authorization", &format!("Bearer {token}"))])
            .await
            .status,
        404
    );
    std::fs::write(
        &path,
        format!(
            "{base}\n[[issuer]]\nid = \"partner\"\nissuer = \"{iss}\"\njwks_uri = \"{iss}/jwks\"\naudiences = [\"api\"]\n\n[[route]]\nid = \"partner\"\nprefix = \"/partner/\"\nupstream = \"erp\"\nissuer = \"partner\"\n",
            iss = second.issuer
        ),
    )
    .unwrap();
    tollgate::reload::reload(&path, &app.gateway, &cfg, None)
        .await
        .unwrap();
    // The very first request after the swap succeeds: the keys were fetched before it.
    assert_eq!(
        get(&url, &[("authorization", &format!("Bearer {token}"))])
            .await
            .status,
        200
    );
    assert_eq!(second.jwks_fetches(), 1);
    gw.shutdown().await;
}

#[tokio::test]
async fn body_limits_answer_413_before_anything_is_forwarded() {
    let idp = FakeIdp::start().await;
    let upstream = RecordingUpstream::start().await;
    let extra = "\n[[route]]\nid = \"small\"\nprefix = \"/small/\"\nupstream = \"erp\"\nauth = \"none\"\nmax_body = \"1KiB\"\n";
    let gw = TestGateway::start(&config(&idp.issuer, &upstream.url(), extra), true).await;
    let send = |body: Bytes| {
        Request::post(gw.url("/small/x"))
            .body(Full::new(body))
            .unwrap()
    };
    assert_eq!(
        request(send(Bytes::from(vec![b'a'; 1024]))).await.status,
        200
    );
    let r = request(send(Bytes::from(vec![b'a'; 1025]))).await;
    assert_eq!(r.status, 413);
    assert_eq!(r.json()["error"], "payload_too_large");
    assert_eq!(
        upstream.count(),
        1,
        "the oversized body reached the upstream"
    );
    // Without a declared length the limit holds while the body streams.
    let r = request(
        Request::post(gw.url("/small/x"))
            .body(chunked(vec![b'b'; 4096]))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 413);
    // The server-wide default applies to routes without their own limit.
    let gw2 = TestGateway::start(
        &config(&idp.issuer, &upstream.url(), "")
            .replace("[server]\n", "[server]\nmax_body = \"2KiB\"\n"),
        true,
    )
    .await;
    let r = request(
        Request::put(gw2.url("/public/x"))
            .body(Full::new(Bytes::from(vec![b'c'; 3000])))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 413);
    gw.shutdown().await;
    gw2.shutdown().await;
}

/// The configuration of a child process: `extra` lines in `[server]`, a 10 s shutdown grace.
fn binary_config(issuer: &str, upstream: &str, server: &str) -> String {
    child_config(
        &config(issuer, upstream, "").replace(
            "[server]\n",
            &format!("[server]\nshutdown_grace = \"10s\"\n{server}\n"),
        ),
        "info",
    )
}

const RELOADED: &str = r#"tollgate_config_reloads_total{result="success"}"#;

/// A route file: the route `/file/`, and `/added-1/` to `/added-{added}/`.
fn write_routes(path: &Path, added: usize) {
    let mut text =
        "[[route]]\nid = \"file\"\nprefix = \"/file/\"\nupstream = \"erp\"\nauth = \"none\"\n"
            .to_owned();
    for n in 1..=added {
        text.push_str(&format!(
            "\n[[route]]\nid = \"added-{n}\"\nprefix = \"/added-{n}/\"\nupstream = \"erp\"\nauth = \"none\"\n"
        ));
    }
    replace_file(path, &text);
}

/// Writes `text` aside and renames it over `path`: a watcher never sees half a file.
fn replace_file(path: &Path, text: &str) {
    let aside = path.with_extension("new");
    std::fs::write(&aside, text).unwrap();
    std::fs::rename(&aside, path).unwrap();
}

async fn status(p: &Process, path: &str) -> u16 {
    get(&p.url(path), &[]).await.status.as_u16()
}

/// Waits until `p` has reloaded `n` times (`what` it reloaded, for the message).
async fn reloaded(p: &Process, n: u64, what: &str) {
    eventually(
        &format!("the watching process reloads {what} (its reload count is {n})"),
        Duration::from_secs(10),
        || async { p.metrics().await.count(RELOADED) },
        |count| *count == n,
    )
    .await;
}

#[tokio::test]
async fn with_watching_off_a_changed_route_file_waits_for_sighup() {
    let idp = FakeIdp::start().await;
    let upstream = RecordingUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let routes = dir.path().join("routes.toml");
    write_routes(&routes, 0);
    // Two processes on the same route file: one watches it (the default), one does not.
    let file = format!("routes_file = \"{}\"", routes.display());
    let watching = Process::start(&binary_config(
        &idp.issuer,
        &upstream.url(),
        &format!("{file}\nwatch_config = true"),
    ))
    .await;
    let mut still = Process::start(&binary_config(
        &idp.issuer,
        &upstream.url(),
        &format!("{file}\nwatch_config = false"),
    ))
    .await;
    for p in [&watching, &still] {
        p.ready().await;
        assert_eq!(status(p, "/file/x").await, 200);
        assert_eq!(status(p, "/added-1/x").await, 404);
    }

    // The route file changes: the watching process reloads it.
    write_routes(&routes, 1);
    reloaded(&watching, 1, "the changed route file").await;
    assert_eq!(status(&watching, "/added-1/x").await, 200);
    // Then only its own configuration file changes, twice. A change is applied once its file
    // has been stable for one poll interval (1 s), so each reload comes at least one interval
    // after the change that caused it: these two reloads are a clock. By the second, at least
    // three intervals have passed since the route file changed, and it has not changed since;
    // a process that watched despite `watch_config = false` would have applied that change
    // after at most two (one to notice it, one to see it settle).
    let own = watching.config_file();
    let text = std::fs::read_to_string(&own).unwrap();
    for n in 2..=3 {
        replace_file(&own, &format!("{text}\n{}", "# changed\n".repeat(n)));
        reloaded(&watching, n as u64, "its own changed configuration").await;
    }
    // The other one has not reloaded: its count is 0 and its old routes are the ones served.
    assert_eq!(
        still.metrics().await.count(RELOADED),
        0,
        "the process with watch_config = false reloaded"
    );
    assert_eq!(status(&still, "/file/x").await, 200);
    assert_eq!(
        status(&still, "/added-1/x").await,
        404,
        "the route file change was applied with watch_config = false"
    );

    // SIGHUP reloads it.
    still.signal("HUP");
    eventually(
        "SIGHUP reloads the configuration (the new route answers)",
        Duration::from_secs(10),
        || status(&still, "/added-1/x"),
        |s| *s == 200,
    )
    .await;
    // The new routes go live before the reload is counted: wait for the count too.
    eventually(
        "the SIGHUP reload is counted once",
        Duration::from_secs(10),
        || async { still.metrics().await.count(RELOADED) },
        |n| *n == 1,
    )
    .await;
    still.signal("TERM");
    assert!(still.wait(Duration::from_secs(20)).await.success());
}

#[tokio::test]
async fn sigterm_lets_an_in_flight_request_finish_and_refuses_new_connections() {
    let idp = FakeIdp::start().await;
    let upstream = RecordingUpstream::start().await;
    let mut p = Process::start(&binary_config(
        &idp.issuer,
        &upstream.url(),
        "watch_config = false",
    ))
    .await;
    let slow_url = p.url("/public/slow?ms=1500");
    let slow = tokio::spawn(async move { get(&slow_url, &[]).await });
    // Once the slow request has reached the upstream, the gateway is asked to stop.
    upstream.reaches_in_flight(1).await;
    p.signal("TERM");
    // Readiness turns 503 as soon as draining starts (the admin listener still answers).
    let readyz = format!("{}/readyz", p.admin);
    eventually(
        "draining starts (/readyz answers 503)",
        Duration::from_secs(5),
        || async { get(&readyz, &[]).await.status },
        |s| *s == 503,
    )
    .await;
    // New connections are refused while the slow request drains.
    let proxy = p.proxy.trim_start_matches("http://").to_owned();
    eventually(
        "a new connection is refused after SIGTERM",
        Duration::from_secs(5),
        || async { tokio::net::TcpStream::connect(&proxy).await.is_err() },
        |refused| *refused,
    )
    .await;
    assert_eq!(
        upstream.in_flight(),
        1,
        "the slow request was no longer in flight when connections were refused"
    );
    assert_eq!(get(&readyz, &[]).await.status, 503);
    let r = slow.await.unwrap();
    assert_eq!(r.status, 200, "the in-flight request did not complete");
    assert!(
        p.wait(Duration::from_secs(20)).await.success(),
        "tollgate did not exit cleanly"
    );
}

#[tokio::test]
async fn a_saturated_upstream_sheds_load_with_503() {
    let idp = FakeIdp::start().await;
    let upstream = RecordingUpstream::start().await;
    let cfg = config(&idp.issuer, &upstream.url(), "").replace(
        "timeout = \"2s\"\n\n[[route]]",
        "timeout = \"2s\"\nmax_concurrency = 1\n\n[[route]]",
    );
    assert!(cfg.contains("max_concurrency = 1"));
    let gw = TestGateway::start(&cfg, true).await;
    // One slow request holds the only place.
    let slow_url = gw.url("/public/slow?ms=800");
    let slow = tokio::spawn(async move { get(&slow_url, &[]).await.status });
    upstream.reaches_in_flight(1).await;
    let r = get(&gw.url("/public/other"), &[]).await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.json()["error"], "upstream_overloaded");
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(slow.await.unwrap(), 200);
    // The place is free again.
    assert_eq!(get(&gw.url("/public/other"), &[]).await.status, 200);
    gw.shutdown().await;
}
