//! Interop with a real third-party issuer: the npm package `oauth2-mock-server` (installed by the
//! test command with `npm ci` in tests/interop) issues an RS256 access token; tollgate finds its
//! keys through discovery, accepts the token, and refuses its tampered twin. And with a real
//! client library: `oauth4webapi` reads tollgate's challenges, follows `resource_metadata` to the
//! RFC 9728 document and from it finds the authorization server.

use std::io::BufRead;
use std::path::Path;
use std::process::{Command, Stdio};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;

use tokio::net::TcpListener;

use crate::step_up::PAYMENTS;
use crate::support::gateway::config;
use crate::support::{get, RecordingUpstream, TestGateway};

/// Starts the mock issuer of tests/interop; returns it (stopped when its stdin closes) and its
/// line of JSON.
fn mock_issuer(dir: &Path) -> (std::process::Child, serde_json::Value) {
    assert!(
        dir.join("node_modules/oauth2-mock-server").is_dir(),
        "oauth2-mock-server is not installed: run `npm ci --prefix tests/interop` (the test command does)"
    );
    let mut child = Command::new("node")
        .arg("mock-issuer.mjs")
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("node not found");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let info =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("mock issuer said {line:?}: {e}"));
    (child, info)
}

#[tokio::test]
async fn a_real_issuers_token_is_accepted_and_its_tampered_twin_refused() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop");
    let (mut child, info) = mock_issuer(&dir);
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
    let (mut child, info) = mock_issuer(&dir);
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

#[tokio::test]
async fn a_real_client_library_follows_resource_metadata_to_the_authorization_server() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop");
    assert!(
        dir.join("node_modules/oauth4webapi").is_dir(),
        "oauth4webapi is not installed: run `npm ci --prefix tests/interop` (the test command does)"
    );
    let (mut issuer_process, info) = mock_issuer(&dir);
    let issuer = info["issuer"].as_str().unwrap();

    // The resource identifier names the gateway itself, with a path (RFC 9728 §3.1): the
    // listener is bound first so that the configuration can say where it is.
    let listeners = tollgate::Listeners {
        proxy: TcpListener::bind("127.0.0.1:0").await.unwrap(),
        per_core: Vec::new(),
        admin: TcpListener::bind("127.0.0.1:0").await.unwrap(),
    };
    let base = format!("http://{}", listeners.proxy.local_addr().unwrap());
    let upstream = RecordingUpstream::start().await;
    let extra = format!(
        r#"
{PAYMENTS}
[metadata]
resource = "{base}/entity"
resource_name = "ERP API"
"#
    );
    let cfg = config(issuer, &upstream.url(), &extra)
        .replace(&format!("jwks_uri = \"{issuer}/jwks\""), "discovery = true");
    let cfg = tollgate::config::from_toml_str(&cfg).unwrap_or_else(|e| panic!("{e}"));
    let gw = TestGateway::start_on(&cfg, listeners, true).await;

    // Run asynchronously: the gateway answers the client on this test's runtime.
    let out = tokio::process::Command::new("node")
        .arg("resource-client.mjs")
        .arg(format!("{base}/entity/Default/24.200.001/Customer"))
        .arg(format!("{base}/entity/Default/24.200.001/Payment/P-1"))
        .current_dir(&dir)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .expect("node not found");
    assert!(
        out.status.success(),
        "resource-client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));

    // The library parsed the 401's challenge and found the document's URL in it.
    let metadata_url = format!("{base}/.well-known/oauth-protected-resource/entity");
    assert_eq!(report["challenge"]["status"], 401);
    assert_eq!(report["challenge"]["parameters"]["realm"], "tollgate");
    assert_eq!(report["challenge"]["parameters"]["error"], "invalid_token");
    assert_eq!(
        report["challenge"]["parameters"]["resource_metadata"],
        metadata_url
    );
    assert_eq!(report["metadata_url"], metadata_url);
    // The document passed the library's validation, and names the issuer...
    assert_eq!(report["metadata"]["resource"], format!("{base}/entity"));
    assert_eq!(report["metadata"]["resource_name"], "ERP API");
    assert_eq!(
        report["metadata"]["authorization_servers"],
        serde_json::json!([issuer])
    );
    assert_eq!(
        report["metadata"]["bearer_methods_supported"],
        serde_json::json!(["header"])
    );
    // ...which the library discovered, got a token from, and tollgate accepted.
    assert_eq!(report["authorization_server"]["issuer"], issuer);
    assert_eq!(
        report["authorization_server"]["token_endpoint"],
        format!("{issuer}/token")
    );
    assert_eq!(report["scope"], "api");
    assert_eq!(report["status_with_token"], 200);
    assert_eq!(upstream.count(), 1);
    // The RFC 9470 challenge, as the library reads it: the token has no acr.
    let step_up = &report["step_up"];
    assert_eq!(step_up["status"], 401);
    assert_eq!(
        step_up["parameters"]["error"],
        "insufficient_user_authentication"
    );
    assert_eq!(step_up["parameters"]["acr_values"], "urn:example:mfa phr");
    assert_eq!(step_up["parameters"]["max_age"], "900");
    assert_eq!(step_up["parameters"]["resource_metadata"], metadata_url);
    assert_eq!(upstream.count(), 1);

    gw.shutdown().await;
    drop(issuer_process.stdin.take());
    let _ = issuer_process.wait();
}
