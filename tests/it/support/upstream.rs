//! A recording upstream: remembers every request it received and echoes it back as JSON.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use serde_json::json;
use tokio::net::TcpListener;

use super::http::serve;

#[derive(Debug, Clone)]
pub struct Recorded {
    /// Path and query as received.
    pub uri: String,
    pub headers: HeaderMap,
    pub body_len: usize,
    /// SHA-256 of the body, hex.
    pub body_sha256: String,
    /// The body arrived whole, properly ended (false: the gateway cut the request off).
    pub body_complete: bool,
    pub body: Bytes,
}

pub struct RecordingUpstream {
    pub addr: SocketAddr,
    pub requests: Arc<Mutex<Vec<Recorded>>>,
    /// Requests received, answered or not.
    arrived: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RecordingUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RecordingUpstream {
    /// Answers 200 with the request echoed as JSON; `/slow?ms=N` waits N ms first;
    /// responses carry `Connection: x-upstream-hop` + `X-Upstream-Hop` and `Keep-Alive` headers
    /// (hop-by-hop headers the gateway must strip); a query with `upstream_cors` adds the
    /// upstream's own CORS headers (any origin, credentials) and `Vary: Accept-Encoding`.
    pub async fn start() -> RecordingUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let arrived = Arc::new(AtomicUsize::new(0));
        let (r, a) = (requests.clone(), arrived.clone());
        let task = serve(listener, move |req, _| {
            let r = r.clone();
            a.fetch_add(1, Ordering::SeqCst);
            async move {
                let (parts, body) = req.into_parts();
                let uri = parts.uri.to_string();
                if let Some(ms) = parts
                    .uri
                    .query()
                    .and_then(|q| q.strip_prefix("ms="))
                    .and_then(|v| v.parse().ok())
                {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                }
                let collected = body.collect().await.map(|b| b.to_bytes());
                let body_complete = collected.is_ok();
                let body = collected.unwrap_or_default();
                let body_sha256 = super::sha256_hex(&body);
                r.lock().unwrap().push(Recorded {
                    uri: uri.clone(),
                    headers: parts.headers.clone(),
                    body_len: body.len(),
                    body_sha256: body_sha256.clone(),
                    body_complete,
                    body: body.clone(),
                });
                let headers: serde_json::Map<String, serde_json::Value> = parts
                    .headers
                    .iter()
                    .map(|(k, v)| (k.to_string(), json!(v.to_str().unwrap_or("<bin>"))))
                    .collect();
                let echo = json!({"method": parts.method.as_str(), "uri": uri, "headers": headers, "body_len": body.len(), "body_sha256": body_sha256});
                let mut answer = Response::builder();
                if uri.contains("upstream_cors") {
                    answer = answer
                        .header("access-control-allow-origin", "*")
                        .header("access-control-allow-credentials", "true")
                        .header("access-control-expose-headers", "X-Upstream-Secret")
                        .header("vary", "Accept-Encoding");
                }
                answer
                    .status(StatusCode::OK)
                    .header("content-type", "application/json")
                    .header("connection", "x-upstream-hop")
                    .header("x-upstream-hop", "secret-hop")
                    .header("keep-alive", "timeout=5")
                    .header("x-upstream-end", "kept")
                    .body(Full::new(Bytes::from(echo.to_string())))
                    .unwrap()
            }
        });
        RecordingUpstream {
            addr,
            requests,
            arrived,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn count(&self) -> usize {
        self.requests.lock().unwrap().len()
    }

    /// Requests received and not answered yet (a `/slow` one waiting, for instance).
    pub fn in_flight(&self) -> usize {
        self.arrived.load(Ordering::SeqCst) - self.count()
    }

    /// Waits until `n` requests are in flight here (they reached the upstream).
    pub async fn reaches_in_flight(&self, n: usize) {
        super::eventually(
            &format!("{n} request(s) reach the upstream and wait there (in flight)"),
            Duration::from_secs(5),
            || std::future::ready(self.in_flight()),
            |in_flight| *in_flight == n,
        )
        .await;
    }

    pub fn last(&self) -> Recorded {
        self.requests
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("the upstream received nothing")
    }
}
