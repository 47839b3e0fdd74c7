//! Interop with a real third-party issuer: the npm package `oauth2-mock-server` (installed by the
//! test command with `npm ci` in tests/interop) issues an RS256 access token; tollgate finds its
//! keys through discovery, accepts the token, and refuses its tampered twin.

use std::io::BufRead;
use std::path::Path;
use std::process::{Command, Stdio};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;

use crate::support::gateway::config;
use crate::support::{get, RecordingUpstream, TestGateway};

#[tokio::test]
async fn a_real_issuers_token_is_accepted_and_its_tampered_twin_refused() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop");
    assert!(
        dir.join("node_modules/oauth2-mock-server").is_dir(),
        "oauth2-mock-server is not installed: run `npm ci --prefix tests/interop` (the test command does)"
    );
    let mut child = Command::new("node")
        .arg("mock-issuer.mjs")
        .current_dir(&dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("node not found");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let info: serde_json::Value =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("mock issuer said {line:?}: {e}"));
    let issuer = info["issuer"].as_str().unwrap();
    let token = info["token"].as_str().unwrap().to_owned();

    let upstream = RecordingUpstream::start().await;
    let cfg = config(issuer, &upstream.url(), "")
        .replace(&format!("jwks_uri = \"{issuer}/jwks\""), "discovery = true");
    let gw = TestGateway::start(&cfg, true).await;
    let url = gw.url("/entity/Default/24.200.001/Customer");

    let ok = get(&url, &[("authorization", &format!("Bearer {token}"))]).await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(upstream.count(), 1);

    // The tampered twin: the same header and signature, a payload granting more scope.
    let parts: Vec<&str> = token.split('.').collect();
    let mut claims: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    claims["scope"] = "api erp:write".into();
    let twin = format!(
        "{}.{}.{}",
        parts[0],
        URL_SAFE_NO_PAD.encode(claims.to_string()),
        parts[2]
    );
    let refused = get(&url, &[("authorization", &format!("Bearer {twin}"))]).await;
    assert_eq!(refused.status, 401);
    assert_eq!(
        refused.header("www-authenticate"),
        Some("Bearer realm=\"tollgate\", error=\"invalid_token\", error_description=\"the token's signature is invalid\"")
    );
    assert_eq!(upstream.count(), 1);

    gw.shutdown().await;
    drop(child.stdin.take());
    let _ = child.wait();
}

#[tokio::test]
async fn the_real_issuers_introspection_endpoint_validates_opaque_tokens() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop");
    assert!(
        dir.join("node_modules/oauth2-mock-server").is_dir(),
        "run `npm ci --prefix tests/interop`"
    );
    let mut child = Command::new("node")
        .arg("mock-issuer.mjs")
        .current_dir(&dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("node not found");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let info: serde_json::Value =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("mock issuer said {line:?}: {e}"));
    let issuer = info["issuer"].as_str().unwrap();
    let jwt = info["token"].as_str().unwrap().to_owned();
    let opaque = info["opaque_token"]
        .as_str()
        .expect("the harness prints an opaque token")
        .to_owned();

    // `auto`: the issuer's JWTs locally, everything else at its introspection endpoint, both
    // found through its discovery document; client_secret_basic as the server requires.
    let upstream = RecordingUpstream::start().await;
    let cfg = config(issuer, &upstream.url(), "")
        .replace(&format!("jwks_uri = \"{issuer}/jwks\""), "discovery = true\nvalidation = \"auto\"")
        .replacen(
            "\n[[upstream]]",
            "\n[issuer.introspection]\nclient_id = \"interop-client\"\nclient_secret = \"x\"\n\n[[upstream]]",
            1,
        );
    let gw = TestGateway::start(&cfg, true).await;
    let url = gw.url("/entity/Default/24.200.001/Customer");
    let bearer = |t: &str| format!("Bearer {t}");

    let r = get(&url, &[("authorization", &bearer(&opaque))]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        get(&url, &[("authorization", &bearer(&jwt))]).await.status,
        200
    );
    let r = get(
        &url,
        &[("authorization", &bearer("0123456789abcdef-not-issued"))],
    )
    .await;
    assert_eq!(r.status, 401);
    assert!(r
        .header("www-authenticate")
        .unwrap()
        .contains("the token is not active"));
    let m = gw.metrics().await;
    for result in ["active", "inactive"] {
        assert_eq!(
            m.value(&format!(
                r#"tollgate_introspection_requests_total{{issuer="erp",result="{result}"}}"#
            )),
            Some(1.0),
            "{m:?}"
        );
    }
    assert_eq!(upstream.count(), 2);

    gw.shutdown().await;
    drop(child.stdin.take());
    let _ = child.wait();
}
