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

    pub fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        }
        match req.uri().path() {
            "/metrics" => {
                self.gateway.sample_gauges();
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
