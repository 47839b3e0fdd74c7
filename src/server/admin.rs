//! The admin listener: `/metrics` (Prometheus text format), `/healthz` (the process is alive) and
//! `/readyz` (configuration loaded and every issuer has a usable key set; 503 while draining).
//! Never served on the proxy port.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::gateway::Gateway;
use crate::{proxy, Body};

#[derive(Clone)]
pub struct Admin {
    gateway: Gateway,
    draining: Arc<AtomicBool>,
}

impl Admin {
    pub fn new(gateway: Gateway, draining: Arc<AtomicBool>) -> Self {
        Admin { gateway, draining }
    }

    pub async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        let path = req.uri().path();
        if let Some(grant) = path.strip_prefix("/sessions/") {
            if req.method() != Method::DELETE {
                return text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
            }
            return self.logout_grant(grant).await;
        }
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        }
        match path {
            "/sessions" => {
                let mut sessions = Vec::new();
                for pool in self.gateway.pools() {
                    sessions.extend(pool.describe().await);
                }
                proxy::json_response(StatusCode::OK, &serde_json::json!({ "sessions": sessions }))
            }
            "/metrics" => {
                self.gateway.sample_gauges().await;
                let mut r = Response::new(proxy::full(self.gateway.metrics().render()));
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                r
            }
            "/healthz" => text(StatusCode::OK, "ok\n"),
            "/readyz" => {
                if self.draining.load(Ordering::SeqCst) {
                    text(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
                } else if self.gateway.is_ready() {
                    text(StatusCode::OK, "ready\n")
                } else {
                    text(StatusCode::SERVICE_UNAVAILABLE, "waiting for issuer keys\n")
                }
            }
            _ => text(StatusCode::NOT_FOUND, "not found\n"),
        }
    }
}

impl Admin {
    /// `DELETE /sessions/{grant}`: logs out every session of the grant (after their in-flight
    /// and queued requests). 200 with the count, 404 when the grant holds none, 409 when its
    /// sessions stayed in use for the whole wait (nothing was logged out).
    async fn logout_grant(&self, grant: &str) -> Response<Body> {
        let key = crate::session::grant::GrantKey(grant.to_owned());
        let (mut done, mut busy) = (0, 0);
        for pool in self.gateway.pools() {
            let (d, b) = pool.logout(&key, None).await;
            done += d;
            busy += b;
        }
        // 404: the grant holds no session; 409: it does, but they stayed in use throughout.
        let status = match (done, busy) {
            (0, 0) => StatusCode::NOT_FOUND,
            (0, _) => StatusCode::CONFLICT,
            _ => StatusCode::OK,
        };
        proxy::json_response(
            status,
            &serde_json::json!({ "logged_out": done, "busy": busy }),
        )
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut r = Response::new(proxy::full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}
