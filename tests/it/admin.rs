//! The admin port's token (`server.admin_token_file`): the real binary, its protected and open
//! endpoints, a rotated token taken on SIGHUP, and the warning for an open port beyond loopback.

use std::path::Path;

use http::Request;
use http_body_util::Full;

use crate::support::gateway::config;
use crate::support::process::{child_config, Process};
use crate::support::{eventually, get, request, FakeIdp, RecordingUpstream};

const TOKEN: &str = "admin-token-0123456789abcdef";
const ROTATED: &str = "rotated-token-fedcba9876543210";

/// The real binary with an admin token file holding [`TOKEN`], and `extra` `[server]` keys. The
/// issuer, upstream and token file live as long as the returned values.
async fn start(extra: &str) -> (Process, std::path::PathBuf, Kept) {
    let idp = FakeIdp::start().await;
    let upstream = RecordingUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("admin-token");
    write_token(&token_file, TOKEN);
    let keys = format!("admin_token_file = \"{}\"\n{extra}", token_file.display());
    let cfg = child_config(&config(&idp.issuer, &upstream.url(), ""), "info").replacen(
        "[server]\n",
        &format!("[server]\n{keys}\n"),
        1,
    );
    let p = Process::start(&cfg).await;
    (p, token_file, (idp, upstream, dir))
}

/// What must outlive the process under test.
type Kept = (FakeIdp, RecordingUpstream, tempfile::TempDir);

async fn status(method: &str, url: &str, auth: &[&str]) -> u16 {
    let mut req = Request::builder().method(method).uri(url);
    for a in auth {
        req = req.header("authorization", *a);
    }
    request(req.body(Full::new(bytes::Bytes::new())).unwrap())
        .await
        .status
        .as_u16()
}

fn write_token(path: &Path, token: &str) {
    std::fs::write(path, format!("{token}\n")).unwrap();
}

#[tokio::test]
async fn with_a_token_file_the_session_endpoints_ask_for_the_token() {
    let (p, token_file, _keep) = start("").await;
    let admin = &p.admin;
    let right = format!("Bearer {TOKEN}");

    // Open: the probes and (by default) the scrape.
    assert_eq!(status("GET", &format!("{admin}/healthz"), &[]).await, 200);
    p.ready().await;
    assert_eq!(status("GET", &format!("{admin}/metrics"), &[]).await, 200);

    // Protected: the session table, the logout, and any other path.
    let sessions = format!("{admin}/sessions");
    let logout = format!("{admin}/sessions/some-grant");
    for (method, url) in [
        ("GET", sessions.as_str()),
        ("DELETE", logout.as_str()),
        ("GET", &format!("{admin}/no-such-page")),
    ] {
        assert_eq!(status(method, url, &[]).await, 401, "{method} {url}");
        for wrong in [
            "Bearer admin-token-0123456789abcdeX",
            "Bearer admin-token",
            "Basic YWRtaW46YWRtaW4=",
            "bearer",
        ] {
            assert_eq!(status(method, url, &[wrong]).await, 401, "{wrong}");
        }
        // The right token twice is still two Authorization headers: refused.
        assert_eq!(
            status(method, url, &[&right, &right]).await,
            401,
            "duplicate"
        );
    }
    let r = get(&sessions, &[]).await;
    assert_eq!(
        r.header("www-authenticate"),
        Some("Bearer realm=\"tollgate-admin\"")
    );
    assert!(!r.text().contains(TOKEN));
    assert_eq!(status("GET", &sessions, &[&right]).await, 200);
    assert_eq!(
        status("GET", &sessions, &[&format!("bearer   {TOKEN}")]).await,
        200,
        "the scheme is case-insensitive (RFC 6750)"
    );
    assert_eq!(
        status("DELETE", &logout, &[&right]).await,
        404,
        "no such grant"
    );

    // A rotated token file is read on SIGHUP: the old token stops working.
    write_token(&token_file, ROTATED);
    p.signal("HUP");
    eventually(
        "the rotated admin token is in force",
        std::time::Duration::from_secs(10),
        || {
            let (sessions, right) = (sessions.clone(), right.clone());
            async move { status("GET", &sessions, &[&right]).await }
        },
        |s| *s == 401,
    )
    .await;
    assert_eq!(
        status("GET", &sessions, &[&format!("Bearer {ROTATED}")]).await,
        200
    );
    assert!(
        !p.logs().join("\n").contains(TOKEN) && !p.logs().join("\n").contains(ROTATED),
        "a token reached the log"
    );
}

#[tokio::test]
async fn admin_metrics_auth_closes_the_scrape_too() {
    let (p, _, _keep) = start("admin_metrics_auth = true").await;
    let metrics = format!("{}/metrics", p.admin);
    assert_eq!(status("GET", &metrics, &[]).await, 401);
    assert_eq!(
        status("GET", &metrics, &[&format!("Bearer {TOKEN}")]).await,
        200
    );
    assert_eq!(
        status("GET", &format!("{}/healthz", p.admin), &[]).await,
        200
    );
}

#[tokio::test]
async fn an_open_admin_port_beyond_loopback_is_warned_about() {
    let idp = FakeIdp::start().await;
    let upstream = RecordingUpstream::start().await;
    let cfg = format!(
        "[log]\nlevel = \"info\"\nformat = \"json\"\n{}",
        config(&idp.issuer, &upstream.url(), "").replacen(
            "[server]\n",
            "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"0.0.0.0:0\"\n",
            1
        )
    );
    let p = Process::start(&cfg).await;
    p.wait_for_log("without server.admin_token_file", 1).await;

    // On loopback, or with a token, no such warning.
    let quiet = Process::start(&child_config(
        &config(&idp.issuer, &upstream.url(), ""),
        "info",
    ))
    .await;
    quiet.ready().await;
    assert!(!quiet
        .logs()
        .join("\n")
        .contains("without server.admin_token_file"));
}
