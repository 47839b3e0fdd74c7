//! The real binary, at trace level in JSON: every error case of the response table is sent, and
//! the captured logs must hold an access-log line for each request and never the token.

use serde_json::json;

use crate::support::gateway::config;
use crate::support::introspect::{ExpectAuth, FakeIntrospection, Mode};
use crate::support::process::{child_config, Process};
use crate::support::{get, FakeIdp, RecordingUpstream};

const CLIENT_SECRET: &str = "introspection-client-secret-value";

/// What marks an access-log line.
const ACCESS: &str = "\"target\":\"tollgate::access\"";

#[tokio::test]
async fn no_token_reaches_the_logs_at_any_level() {
    let idp = FakeIdp::start().await;
    let upstream = RecordingUpstream::start().await;
    let introspection = FakeIntrospection::start(ExpectAuth::Basic {
        id: "tollgate".into(),
        secret: CLIENT_SECRET.into(),
    })
    .await;
    // A second issuer validates opaque tokens by introspection (breaker off, so every outage
    // request reaches the failing endpoint).
    let opaque_issuer = format!(
        "\n[[issuer]]\nid = \"opaque\"\nissuer = \"{}\"\naudiences = [\"api\"]\nvalidation = \"introspection\"\n[issuer.introspection]\nendpoint = \"{}\"\nclient_id = \"tollgate\"\nclient_secret = \"{CLIENT_SECRET}\"\nbreaker_failures = 1000\n",
        introspection.issuer, introspection.endpoint
    );
    let cfg = child_config(
        &config(&idp.issuer, &upstream.url(), &opaque_issuer),
        "trace",
    );
    let mut p = Process::start(&cfg).await;
    let base = p.proxy.clone();

    let valid = idp.token(json!({"scope": "api"}));
    let expired = idp.token(json!({"exp": crate::support::now() - 3600}));
    let wrong_aud = idp.token(json!({"aud": "nope"}));
    let tampered = format!("{}x", &valid[..valid.len() - 1]);
    let secrets = [
        valid.clone(),
        expired.clone(),
        wrong_aud.clone(),
        tampered.clone(),
    ];
    let url = format!("{base}/entity/Default/x");
    let mut sent = 0;
    for token in &secrets {
        get(&url, &[("authorization", &format!("Bearer {token}"))]).await;
        sent += 1;
    }
    // The keys are loaded (ready) before the table, so that its verification paths run.
    p.ready().await;
    for token in &secrets {
        get(&url, &[("authorization", &format!("Bearer {token}"))]).await;
        get(
            &url,
            &[
                ("authorization", &format!("bearer {token}")),
                ("x-request-id", "log-test"),
            ],
        )
        .await;
        get(
            &url,
            &[
                ("authorization", &format!("Bearer {token}")),
                ("authorization", "Bearer other-token-value"),
            ],
        )
        .await;
        let put = http::Request::put(&url)
            .header("authorization", format!("Bearer {token}"))
            .body(http_body_util::Full::new(bytes::Bytes::from_static(b"{}")))
            .unwrap();
        crate::support::request(put).await;
        sent += 4;
    }
    // Opaque tokens: active, inactive, and during an introspection outage.
    let active = introspection.active(json!({}));
    let inactive = "opaque-inactive-token-0123456789abcdef".to_owned();
    for token in [&active, &inactive] {
        get(&url, &[("authorization", &format!("Bearer {token}"))]).await;
        sent += 1;
    }
    introspection.set_mode(Mode::Status(500));
    let during_outage = introspection.active(json!({}));
    get(
        &url,
        &[("authorization", &format!("Bearer {during_outage}"))],
    )
    .await;
    introspection.set_mode(Mode::Malformed);
    get(
        &url,
        &[("authorization", &format!("Bearer {during_outage}"))],
    )
    .await;
    sent += 2;
    assert!(
        introspection.auth_errors().is_empty(),
        "{:?}",
        introspection.auth_errors()
    );
    assert_eq!(introspection.calls(), 4);
    let secrets: Vec<String> = secrets
        .into_iter()
        .chain([active, inactive, during_outage])
        .collect();

    get(
        &format!("{base}/entity/Default/x?access_token={valid}"),
        &[],
    )
    .await;
    get(
        &format!("{base}/entity/Default/x"),
        &[("authorization", &format!("Basic {valid}"))],
    )
    .await;
    sent += 2;

    // Every request has its access-log line; then the process ends and its log is complete.
    p.wait_for_log(ACCESS, sent).await;
    p.kill();
    let lines = p.logs();
    let all = lines.join("\n");
    let access = lines.iter().filter(|l| l.contains(ACCESS)).count();
    assert!(
        access >= sent,
        "expected {sent} access-log lines, got {access}:\n{all}"
    );
    assert!(
        all.contains("\"level\":\"TRACE\"") || all.contains("\"level\":\"DEBUG\""),
        "not logging at trace/debug"
    );
    // A refused token's line says why.
    let reasons: Vec<String> = lines
        .iter()
        .filter(|l| l.contains(ACCESS))
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["token_refused"].as_str().map(str::to_owned))
        .collect();
    for want in [
        "expired",
        "audience",
        "malformed",
        "inactive",
        "introspection_error",
    ] {
        assert!(
            reasons.iter().any(|r| r == want),
            "{want} not in {reasons:?}"
        );
    }
    // An allowed request's line says who asked for what, and who answered.
    let allowed: serde_json::Value = lines
        .iter()
        .filter(|l| l.contains(ACCESS) && l.contains("\"decision\":\"allowed\""))
        .find_map(|l| serde_json::from_str(l).ok())
        .expect("an access line of an allowed request");
    for (field, want) in [
        ("client", json!("127.0.0.1")),
        ("path", json!("/entity/Default/x")),
        ("protocol", json!("HTTP/1.1")),
        ("upstream", json!("erp")),
        ("issuer", json!("erp")),
    ] {
        assert_eq!(allowed[field], want, "{field} in {allowed}");
    }
    for field in ["host", "user_agent", "upstream_ms"] {
        assert!(!allowed[field].is_null(), "{field} missing from {allowed}");
    }
    for token in &secrets {
        // Any 24-character piece of the signature (or of an opaque token) would identify it.
        let sig = token.rsplit('.').next().unwrap();
        assert!(!all.contains(token.as_str()), "a token appears in the logs");
        assert!(
            !all.contains(&sig[sig.len() - 24..]),
            "a token's signature appears in the logs"
        );
    }
    assert!(!all.contains("other-token-value"));
    assert!(
        !all.contains(CLIENT_SECRET),
        "the introspection client secret appears in the logs"
    );
    assert!(
        all.contains("introspection failed"),
        "the outage was not logged at all:\n{all}"
    );
}

/// Every secret the configuration can hold, through files and a Redis URL: the real binary at
/// trace level, a working store, then a store that goes away and one that refuses the password,
/// and `tollgate check` on a broken file. None of them may show up in a log line or an error.
#[tokio::test]
async fn no_configured_secret_reaches_the_logs_or_the_errors() {
    use tollgate::demo::legacy::{FakeLegacy, LegacyOptions, LegacyUser};

    const STORE_PW: &str = "store-password-8f3c1a";
    const LOGIN_PW: &str = "login-password-2b9d7e";
    const ADMIN_TOKEN: &str = "admin-token-5e0f4c9a1d";
    let handle_key = "7c".repeat(32);
    let subject_key = "5d".repeat(32);
    let idp = FakeIdp::start().await;
    let mut redis = crate::support::redis::RedisServer::start_with(&[
        "--user",
        "tollgate",
        "on",
        &format!(">{STORE_PW}"),
        "~*",
        "&*",
        "+@all",
    ]);
    let fake = FakeLegacy::new(LegacyOptions {
        users: vec![LegacyUser::new("admin", LOGIN_PW, &["MyStore"], &["HQ"])],
        ..LegacyOptions::default()
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let legacy = format!("http://{}", listener.local_addr().unwrap());
    let _fake_task = fake.spawn(listener);

    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, format!("{text}\n")).unwrap();
        path.display().to_string()
    };
    let (password_file, key_file, admin_file, secret_file, subject_key_file) = (
        file("erp-password", LOGIN_PW),
        file("handle.key", &handle_key),
        file("admin-token", ADMIN_TOKEN),
        file("client-secret", CLIENT_SECRET),
        file("subject.key", &subject_key),
    );
    let config_with = |store_url: &str| {
        format!(
            r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
admin_token_file = "{admin_file}"

[log]
level = "trace"
format = "json"
subject_key_file = "{subject_key_file}"

[store]
kind = "redis"
url = "{store_url}"
timeout = "500ms"

[[issuer]]
id = "erp"
issuer = "{issuer}"
jwks_uri = "{issuer}/jwks"
audiences = ["api"]
algorithms = ["RS256"]

[[issuer]]
id = "opaque"
issuer = "https://opaque.example"
audiences = ["api"]
validation = "introspection"
[issuer.introspection]
endpoint = "http://127.0.0.1:9/introspect"
client_id = "tollgate"
client_secret_file = "{secret_file}"

[[upstream]]
id = "erp"
url = "{legacy}"
timeout = "5s"
[upstream.session]
max_upstream_sessions = 2
handle_key_file = "{key_file}"
[upstream.session.credentials]
name = "admin"
password_file = "{password_file}"
tenant = "MyStore"

[[route]]
id = "erp"
prefix = "/entity/"
upstream = "erp"
scopes = ["api"]
"#,
            issuer = idp.issuer
        )
    };
    let port = redis
        .url()
        .trim_start_matches("redis://127.0.0.1:")
        .trim_end_matches("/0")
        .to_owned();
    let good_url = format!("redis://tollgate:{STORE_PW}@127.0.0.1:{port}/0");
    let mut p = Process::start(&config_with(&good_url)).await;
    p.ready().await;
    let echo = p.url("/entity/Default/24.200.001/Echo");
    for grant in ["g1", "g2", "g1"] {
        let token = idp.token(json!({"grant_id": grant, "scope": "api"}));
        let r = get(&echo, &[("authorization", &format!("Bearer {token}"))]).await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    // The access log says what became of each request's session.
    let outcomes: Vec<String> = p
        .wait_for_log(ACCESS, 3)
        .await
        .iter()
        .filter(|l| l.contains(ACCESS))
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| !v["lease_ms"].is_null())
        .map(|v| v["session"].as_str().unwrap_or("?").to_owned())
        .collect();
    assert_eq!(outcomes, ["new", "new", "reused"], "{outcomes:?}");
    let sessions = get(
        &format!("{}/sessions", p.admin),
        &[("authorization", &format!("Bearer {ADMIN_TOKEN}"))],
    )
    .await;
    assert_eq!(sessions.status, 200);
    // The store goes away: requests fail (503), and the store errors are logged.
    redis.stop();
    let token = idp.token(json!({"grant_id": "g3", "scope": "api"}));
    let r = get(&echo, &[("authorization", &format!("Bearer {token}"))]).await;
    assert_eq!(r.status, 503, "{}", r.text());
    p.wait_for_log("store", 1).await;
    p.kill();
    let mut logs = p.logs();

    // A store that refuses the password.
    redis.restart();
    let wrong_url = format!("redis://tollgate:wrong-{STORE_PW}@127.0.0.1:{port}/0");
    let mut p = Process::start(&config_with(&wrong_url)).await;
    let token = idp.token(json!({"grant_id": "g4", "scope": "api"}));
    let r = get(
        &p.url("/entity/Default/24.200.001/Echo"),
        &[("authorization", &format!("Bearer {token}"))],
    )
    .await;
    assert_eq!(r.status, 503, "{}", r.text());
    p.kill();
    logs.extend(p.logs());

    // `tollgate check` on a file with a syntax error on the URL's line, and with a bad URL.
    let broken = dir.path().join("broken.toml");
    for store_url in [
        format!("redis//tollgate:{STORE_PW}@127.0.0.1:{port}/0\""),
        format!("{good_url}\"\nurl = \"{good_url}"),
    ] {
        std::fs::write(&broken, config_with(&store_url)).unwrap();
        let out =
            crate::support::process::run(&["check", "--config", broken.to_str().unwrap()], &[]);
        assert!(!out.status.success());
        logs.push(String::from_utf8_lossy(&out.stdout).into_owned());
        logs.push(String::from_utf8_lossy(&out.stderr).into_owned());
    }

    let all = logs.join("\n");
    assert!(all.contains("\"level\":\"TRACE\"") || all.contains("\"level\":\"DEBUG\""));
    for (what, secret) in [
        ("the store password", STORE_PW),
        ("the upstream login password", LOGIN_PW),
        ("the handle key", handle_key.as_str()),
        ("the subject key", subject_key.as_str()),
        ("the admin token", ADMIN_TOKEN),
        ("the introspection client secret", CLIENT_SECRET),
    ] {
        assert!(
            !all.contains(secret),
            "{what} appears in the logs or errors:\n{all}"
        );
    }
}

/// Behind a trusted proxy the access log names the original client too; otherwise it does not
/// repeat what a client claims.
#[tokio::test]
async fn the_access_log_names_the_forwarded_client_only_when_trusted() {
    let idp = FakeIdp::start().await;
    let upstream = RecordingUpstream::start().await;
    for (trust, want) in [(true, "203.0.113.9"), (false, "-")] {
        let cfg = child_config(&config(&idp.issuer, &upstream.url(), ""), "info").replacen(
            "[server]\n",
            &format!("[server]\ntrust_forwarded_headers = {trust}\n"),
            1,
        );
        let mut p = Process::start(&cfg).await;
        let r = get(
            &p.url("/public/x"),
            &[("x-forwarded-for", "203.0.113.9, 10.0.0.1")],
        )
        .await;
        assert_eq!(r.status, 200);
        let line = p
            .wait_for_log(ACCESS, 1)
            .await
            .into_iter()
            .find(|l| l.contains(ACCESS))
            .unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["forwarded_for"], want, "trust {trust}: {line}");
        assert_eq!(v["client"], "127.0.0.1");
        p.kill();
    }
}

/// `log.access_file`: access lines go to their own file (and not to standard error); after a
/// rotation (the file renamed) SIGUSR1 makes the gateway write to a fresh file.
#[tokio::test]
async fn the_access_log_file_is_reopened_on_sigusr1() {
    let idp = FakeIdp::start().await;
    let upstream = RecordingUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("access.log");
    let cfg = child_config(&config(&idp.issuer, &upstream.url(), ""), "info").replacen(
        "[log]\n",
        &format!("[log]\naccess_file = \"{}\"\n", file.display()),
        1,
    );
    let mut p = Process::start(&cfg).await;
    let lines_in = |path: &std::path::Path| {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(ACCESS))
            .count()
    };
    assert_eq!(get(&p.url("/public/a"), &[]).await.status, 200);
    crate::support::eventually(
        "the access line is in the file",
        std::time::Duration::from_secs(10),
        || std::future::ready(lines_in(&file)),
        |n| *n == 1,
    )
    .await;
    assert!(
        !p.logs().iter().any(|l| l.contains(ACCESS)),
        "access lines also went to standard error"
    );
    // logrotate: rename, then SIGUSR1.
    let rotated = dir.path().join("access.log.1");
    std::fs::rename(&file, &rotated).unwrap();
    p.signal("USR1");
    p.wait_for_log("access log file reopened", 1).await;
    assert_eq!(get(&p.url("/public/b"), &[]).await.status, 200);
    crate::support::eventually(
        "the next access line is in the fresh file",
        std::time::Duration::from_secs(10),
        || std::future::ready(lines_in(&file)),
        |n| *n == 1,
    )
    .await;
    assert_eq!(lines_in(&rotated), 1, "the rotated file was written to");
    p.kill();
}

/// The access line of a request says what went each way and who asked: bytes in and out,
/// whether the answer was sent whole, the client id and the subject as `log.subject` shows it
/// (a keyed tag by default, never the raw `sub` unless asked for).
#[tokio::test]
async fn the_access_log_counts_bytes_and_names_the_client_and_a_hashed_subject() {
    let idp = FakeIdp::start().await;
    let upstream = RecordingUpstream::start().await;
    let token = idp.token(json!({"scope": "api erp:write", "sub": "alice@example.com"}));
    let mut tags = Vec::new();
    for (mode, want) in [
        ("hashed", None),
        ("plain", Some("alice@example.com")),
        ("none", Some("-")),
    ] {
        let cfg = child_config(&config(&idp.issuer, &upstream.url(), ""), "info").replacen(
            "[log]\n",
            &format!("[log]\nsubject = \"{mode}\"\n"),
            1,
        );
        let (r, line, v) = post_and_read_the_access_line(&cfg, &token).await;
        assert_eq!(v["bytes_in"], 1000, "{line}");
        assert_eq!(v["bytes_out"], r.body.len() as u64, "{line}");
        assert_eq!(v["complete"], true, "{line}");
        assert_eq!(v["client_id"], "app", "{line}");
        assert_eq!(v["trace_id"], "-", "no tracing configured: {line}");
        assert!(v["duration_ms"].as_f64().unwrap() >= v["head_ms"].as_f64().unwrap());
        match want {
            Some(w) => assert_eq!(v["subject"], w, "{mode}: {line}"),
            None => {
                let tag = v["subject"].as_str().unwrap().to_owned();
                assert!(
                    tag.len() == 16 && tag.bytes().all(|b| b.is_ascii_hexdigit()),
                    "{line}"
                );
                assert!(!line.contains("alice"), "the raw subject is logged: {line}");
                tags.push(tag);
            }
        }
    }
    // With a shared `subject_key_file`, two gateways tag one subject alike.
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("subject.key");
    std::fs::write(&key, format!("{}\n", "ab".repeat(32))).unwrap();
    let mut shared = Vec::new();
    for _ in 0..2 {
        let cfg = child_config(&config(&idp.issuer, &upstream.url(), ""), "info").replacen(
            "[log]\n",
            &format!("[log]\nsubject_key_file = \"{}\"\n", key.display()),
            1,
        );
        let (_, _, v) = post_and_read_the_access_line(&cfg, &token).await;
        shared.push(v["subject"].as_str().unwrap().to_owned());
    }
    assert_eq!(shared[0], shared[1]);
    assert_ne!(
        shared[0], tags[0],
        "a random per-process key unless a key file is set"
    );
}

/// Starts the binary with `cfg`, POSTs 1,000 bytes with `token`, and returns the answer and its
/// access-log line (raw and parsed).
async fn post_and_read_the_access_line(
    cfg: &str,
    token: &str,
) -> (crate::support::http::Reply, String, serde_json::Value) {
    let mut p = Process::start(cfg).await;
    p.ready().await;
    let req = http::Request::post(p.url("/entity/Default/x"))
        .header("authorization", format!("Bearer {token}"))
        .body(http_body_util::Full::new(bytes::Bytes::from(vec![
            b'x';
            1000
        ])))
        .unwrap();
    let r = crate::support::http::request(req).await;
    assert_eq!(r.status, 200);
    let line = p
        .wait_for_log(ACCESS, 1)
        .await
        .into_iter()
        .find(|l| l.contains(ACCESS))
        .unwrap();
    p.kill();
    let v = serde_json::from_str(&line).unwrap();
    (r, line, v)
}
