//! The hop-by-hop headers (RFC 9110 §7.6.1, plus the de-facto `Keep-Alive` and
//! `Proxy-Connection`): they describe one connection, so they are never forwarded in either
//! direction, and a route may not set them from a claim. `proxy::headers` strips them;
//! configuration refuses them as identity headers.

use http::header::{self, HeaderName};

/// Every hop-by-hop header name, lower-case.
pub static HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHORIZATION,
    header::PROXY_AUTHENTICATE,
];

/// True when `name` is a hop-by-hop header.
pub fn is_hop_by_hop(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(name)
}
