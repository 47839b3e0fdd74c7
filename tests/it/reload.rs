//! Operating a running gateway: reloads (file change, SIGHUP) under load, a bad file that changes
//! nothing, body limits, and SIGTERM draining an in-flight request.

use std::io::BufRead;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use serde_json::json;
use tollgate::{App, Listeners};

use crate::support::gateway::config;
use crate::support::{get, request, FakeIdp, RecordingUpstream};

fn metric(m: &str, line: &str) -> u64 {
    m.lines()
        .find(|l| l.starts_with(line))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

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
    let app = App::start(&cfg, Listeners::ephemeral().await.unwrap()).unwrap();
    let gw = app.gateway.clone();
    assert!(crate::support::eventually(Duration::from_secs(10), || gw.is_ready()).await);
    let watcher = tollgate::reload::spawn(
        path.clone(),
        app.gateway.clone(),
        cfg,
        None,
        Duration::from_millis(50),
    );
    let base_url = format!("http://{}", app.proxy_addr);
    let admin = format!("http://{}", app.admin_addr);
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
    let mut live = false;
    for _ in 0..200 {
        if get(&format!("{base_url}/added/x"), &[]).await.status == 200 {
            live = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(live, "the reloaded route never went live");
    let m = get(&format!("{admin}/metrics"), &[]).await.text();
    assert_eq!(
        metric(&m, r#"tollgate_config_reloads_total{result="success"}"#),
        1
    );
    assert!(metric(&m, "tollgate_config_last_reload_success_timestamp_seconds") > 1_700_000_000);

    // A bad file: the running configuration stays, the failure is counted.
    std::fs::write(&path, format!("{base}{EXTRA_ROUTE}\n[[route]]\nid = \"broken\"\nprefix = \"/b/\"\nupstream = \"nowhere\"\n")).unwrap();
    let mut failed = false;
    for _ in 0..200 {
        let m = get(&format!("{admin}/metrics"), &[]).await.text();
        if metric(&m, r#"tollgate_config_reloads_total{result="failure"}"#) == 1 {
            failed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(failed, "the bad file was not reported");
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
    app.shutdown().await;
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
    let app = App::start(&cfg, Listeners::ephemeral().await.unwrap()).unwrap();
    let gw = app.gateway.clone();
    assert!(crate::support::eventually(Duration::from_secs(10), || gw.is_ready()).await);
    let url = format!("http://{}/partner/x", app.proxy_addr);
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
    app.shutdown().await;
}

#[tokio::test]
async fn body_limits_answer_413_before_anything_is_forwarded() {
    let idp = FakeIdp::start().await;
    let upstream = RecordingUpstream::start().await;
    let extra = "\n[[route]]\nid = \"small\"\nprefix = \"/small/\"\nupstream = \"erp\"\nauth = \"none\"\nmax_body = \"1KiB\"\n";
    let gw = crate::support::TestGateway::start(&config(&idp.issuer, &upstream.url(), extra), true)
        .await;
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
    struct Chunked(Option<Bytes>);
    impl http_body::Body for Chunked {
        type Data = Bytes;
        type Error = std::convert::Infallible;
        fn poll_frame(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
            std::task::Poll::Ready(self.0.take().map(|b| Ok(http_body::Frame::data(b))))
        }
    }
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http();
    let req = Request::post(gw.url("/small/x"))
        .body(Chunked(Some(Bytes::from(vec![b'b'; 4096]))))
        .unwrap();
    let resp = client.request(req).await.unwrap();
    assert_eq!(resp.status(), 413);
    // The server-wide default applies to routes without their own limit.
    let gw2 = crate::support::TestGateway::start(
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

/// The real binary on a config file; returns it and its proxy and admin base URLs.
fn spawn_binary(path: &std::path::Path) -> (Child, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["run", "--config"])
        .arg(path)
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let (proxy, admin) = loop {
        let line = lines.next().expect("tollgate ended").unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap_or(json!({}));
        if let (Some(p), Some(a)) = (v["proxy_addr"].as_str(), v["admin_addr"].as_str()) {
            break (p.to_owned(), a.to_owned());
        }
    };
    std::thread::spawn(move || for _ in lines {});
    (child, format!("http://{proxy}"), format!("http://{admin}"))
}

fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig} failed");
}

fn binary_config(issuer: &str, upstream: &str, extra: &str) -> String {
    config(issuer, upstream, extra).replace(
        "[server]\n",
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\nwatch_config = false\nshutdown_grace = \"10s\"\n",
    ) + "\n[log]\nformat = \"json\"\n"
}

#[tokio::test]
async fn sighup_reloads_the_configuration() {
    let idp = FakeIdp::start().await;
    let upstream = RecordingUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tollgate.toml");
    let base = binary_config(&idp.issuer, &upstream.url(), "");
    std::fs::write(&path, &base).unwrap();
    let (mut child, proxy, _) = spawn_binary(&path);
    assert_eq!(get(&format!("{proxy}/added/x"), &[]).await.status, 404);
    // The file changes, but watching is off: nothing happens until SIGHUP.
    std::fs::write(&path, format!("{base}{EXTRA_ROUTE}")).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(get(&format!("{proxy}/added/x"), &[]).await.status, 404);
    signal(&child, "-HUP");
    let mut status = 404;
    for _ in 0..200 {
        status = get(&format!("{proxy}/added/x"), &[]).await.status.as_u16();
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(status, 200, "SIGHUP did not reload");
    signal(&child, "-TERM");
    assert!(child.wait().unwrap().success());
}

#[tokio::test]
async fn sigterm_lets_an_in_flight_request_finish_and_refuses_new_connections() {
    let idp = FakeIdp::start().await;
    let upstream = RecordingUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tollgate.toml");
    std::fs::write(&path, binary_config(&idp.issuer, &upstream.url(), "")).unwrap();
    let (mut child, proxy, admin) = spawn_binary(&path);
    let slow_url = format!("{proxy}/public/slow?ms=1500");
    let slow = tokio::spawn(async move { get(&slow_url, &[]).await });
    // Let the slow request reach the gateway, then ask it to stop.
    tokio::time::sleep(Duration::from_millis(300)).await;
    signal(&child, "-TERM");
    tokio::time::sleep(Duration::from_millis(200)).await;
    // New connections are refused while the slow request drains.
    let refused = tokio::net::TcpStream::connect(proxy.trim_start_matches("http://"))
        .await
        .is_err();
    assert!(refused, "a new connection was accepted after SIGTERM");
    // Readiness turns 503 as soon as draining starts (the admin listener still answers).
    assert_eq!(get(&format!("{admin}/readyz"), &[]).await.status, 503);
    let r = slow.await.unwrap();
    assert_eq!(r.status, 200, "the in-flight request did not complete");
    assert!(
        child.wait().unwrap().success(),
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
    let gw = crate::support::TestGateway::start(&cfg, true).await;
    // One slow request holds the only place.
    let slow_url = gw.url("/public/slow?ms=800");
    let slow = tokio::spawn(async move { get(&slow_url, &[]).await.status });
    // The upstream records a request only after answering it: give the slow one time to be
    // in flight (it lasts 800 ms).
    tokio::time::sleep(Duration::from_millis(200)).await;
    let r = get(&gw.url("/public/other"), &[]).await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.json()["error"], "upstream_overloaded");
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(slow.await.unwrap(), 200);
    // The place is free again.
    assert_eq!(get(&gw.url("/public/other"), &[]).await.status, 200);
    gw.shutdown().await;
}
