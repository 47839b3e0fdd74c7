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

/// True when `name` is a hop-by-hop header. Called for every header of every message, so a
/// match on the name's text (a switch on its length, then one comparison), not a scan of
/// [`HOP_BY_HOP`].
pub fn is_hop_by_hop(name: &HeaderName) -> bool {
    is_hop_by_hop_name(name.as_str())
}

/// [`is_hop_by_hop`] for a lower-case name.
fn is_hop_by_hop_name(name: &str) -> bool {
    matches!(
        name,
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "proxy-authorization"
            | "proxy-authenticate"
    )
}

/// True when a `Connection` token needs no removal of its own: a hop-by-hop header (removed
/// anyway) or `close`, in any case. Saves parsing the common `keep-alive` into a header name.
pub fn is_connection_option(token: &str) -> bool {
    token.len() <= 19
        && (token.eq_ignore_ascii_case("close") || is_hop_by_hop_name(&token.to_ascii_lowercase()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_match_and_the_list_agree() {
        for name in &HOP_BY_HOP {
            assert!(is_hop_by_hop(name), "{name}");
            assert!(is_connection_option(&name.as_str().to_ascii_uppercase()));
        }
        for name in [
            "accept",
            "x-connection",
            "tee",
            "upgrade-insecure-requests",
            "cookie",
        ] {
            assert!(!is_hop_by_hop(&HeaderName::from_static(name)), "{name}");
            assert!(!is_connection_option(name), "{name}");
        }
        assert!(is_connection_option("Close"));
    }
}
