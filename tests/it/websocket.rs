//! WebSocket pass-through: the upgrade request is authorised like any other; with a valid token
//! the two connections are joined after the upstream's 101 and bytes flow both ways.

use std::convert::Infallible;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::gateway::config;
use crate::support::{FakeIdp, TestGateway};

/// An upstream that answers the WebSocket handshake (RFC 6455 §4.2.2) and then echoes bytes.
async fn echo_upstream() -> (String, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let svc = service_fn(|mut req: Request<hyper::body::Incoming>| async move {
                    let upgrade = req
                        .headers()
                        .get("upgrade")
                        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
                    let key = req
                        .headers()
                        .get("sec-websocket-key")
                        .cloned()
                        .filter(|_| upgrade);
                    let Some(key) = key else {
                        return Ok::<_, Infallible>(
                            Response::builder()
                                .status(400)
                                .body(Full::new(Bytes::new()))
                                .unwrap(),
                        );
                    };
                    let mut input = key.as_bytes().to_vec();
                    input.extend_from_slice(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
                    let digest = aws_lc_rs::digest::digest(
                        &aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY,
                        &input,
                    );
                    let accept = STANDARD.encode(digest.as_ref());
                    let on = hyper::upgrade::on(&mut req);
                    tokio::spawn(async move {
                        if let Ok(upgraded) = on.await {
                            let mut io = TokioIo::new(upgraded);
                            let mut buf = [0u8; 1024];
                            while let Ok(n) = io.read(&mut buf).await {
                                if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                                    break;
                                }
                            }
                        }
                    });
                    Ok(Response::builder()
                        .status(StatusCode::SWITCHING_PROTOCOLS)
                        .header("connection", "upgrade")
                        .header("upgrade", "websocket")
                        .header("sec-websocket-accept", accept)
                        .body(Full::new(Bytes::new()))
                        .unwrap())
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .with_upgrades()
                    .await;
            });
        }
    });
    (url, task)
}

/// Sends an upgrade request on a raw connection; returns the response head and the stream.
async fn handshake(base: &str, token: Option<&str>) -> (String, TcpStream) {
    let mut s = TcpStream::connect(base.trim_start_matches("http://"))
        .await
        .unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let req = format!(
        "GET /ws/echo HTTP/1.1\r\nHost: gateway\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{auth}\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut byte).await.unwrap() == 0 {
            break;
        }
        head.push(byte[0]);
    }
    (String::from_utf8_lossy(&head).into_owned(), s)
}

#[tokio::test]
async fn websocket_upgrades_pass_through_with_a_valid_token_only() {
    let idp = FakeIdp::start().await;
    let (upstream, _task) = echo_upstream().await;
    let extra = "\n[[route]]\nid = \"ws\"\nprefix = \"/ws/\"\nupstream = \"erp\"\nscopes = [\"api\"]\nwebsocket = true\n";
    let gw = TestGateway::start(&config(&idp.issuer, &upstream, extra), true).await;

    let (head, mut s) = handshake(&gw.base, Some(&idp.token(json!({})))).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
        "{head}"
    );
    s.write_all(b"hello through the gateway").await.unwrap();
    let mut buf = [0u8; 25];
    s.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"hello through the gateway");

    // Without a token: 401, no upgrade.
    let (head, _) = handshake(&gw.base, None).await;
    assert!(head.starts_with("HTTP/1.1 401"), "{head}");
    gw.shutdown().await;
}

#[tokio::test]
async fn routes_without_websocket_do_not_upgrade() {
    let idp = FakeIdp::start().await;
    let (upstream, _task) = echo_upstream().await;
    let extra =
        "\n[[route]]\nid = \"ws\"\nprefix = \"/ws/\"\nupstream = \"erp\"\nscopes = [\"api\"]\n";
    let gw = TestGateway::start(&config(&idp.issuer, &upstream, extra), true).await;
    let (head, _) = handshake(&gw.base, Some(&idp.token(json!({})))).await;
    // The Upgrade header is hop-by-hop: stripped, the upstream sees a plain GET and refuses it.
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
    gw.shutdown().await;
}
