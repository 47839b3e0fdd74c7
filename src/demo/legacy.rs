//! The demo legacy API: a stand-in for the resource server behind the gateway. It answers JSON
//! that shows what the gateway forwarded (method, path, the identity headers, whether an
//! Authorization header reached it), so the demo's curl commands make the gateway's work visible.

use std::net::SocketAddr;
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::json;
use tokio::net::TcpListener;

use super::issuer::json_response;
use crate::Body;

/// Serves the demo API on `listener` until the task is dropped.
pub fn spawn(listener: TcpListener) -> tokio::task::JoinHandle<()> {
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        let _keep = tx;
        crate::server::serve(
            listener,
            rx,
            Duration::from_secs(1),
            |req, _: SocketAddr| async move { handle(&req) },
        )
        .await;
    })
}

fn handle(req: &Request<Incoming>) -> Response<Body> {
    let path = req.uri().path();
    if path == "/health" {
        return json_response(StatusCode::OK, &json!({"status": "ok"}));
    }
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
    let entity = path.rsplit('/').next().unwrap_or("");
    let body = json!({
        "served_by": "demo legacy API",
        "method": req.method().as_str(),
        "path": path,
        "entity": entity,
        "x_auth_subject": header("x-auth-subject"),
        "x_auth_client": header("x-auth-client"),
        "x_request_id": header("x-request-id"),
        "authorization_forwarded": req.headers().contains_key(http::header::AUTHORIZATION),
        "records": if req.method() == Method::GET {
            json!([{"id": "C000001", "name": "Demo Customer One"}, {"id": "C000002", "name": "Demo Customer Two"}])
        } else {
            json!([])
        },
    });
    json_response(StatusCode::OK, &body)
}
