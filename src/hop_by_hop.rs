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
    index(name).is_some()
}

/// Where `name` is in [`HOP_BY_HOP`], if it is a hop-by-hop header.
pub fn index(name: &HeaderName) -> Option<usize> {
    index_of(name.as_str())
}

/// [`index`] for a lower-case name.
fn index_of(name: &str) -> Option<usize> {
    Some(match name {
        "connection" => 0,
        "keep-alive" => 1,
        "proxy-connection" => 2,
        "te" => 3,
        "trailer" => 4,
        "transfer-encoding" => 5,
        "upgrade" => 6,
        "proxy-authorization" => 7,
        "proxy-authenticate" => 8,
        _ => return None,
    })
}

/// True when a `Connection` token needs no removal of its own: a hop-by-hop header (removed
/// anyway) or `close`, in any case. Saves parsing the common `keep-alive` into a header name.
pub fn is_connection_option(token: &str) -> bool {
    // Lower-cased on the stack: the longest hop-by-hop name has 19 bytes, and this runs for
    // nearly every message (`Connection: keep-alive`), so it allocates nothing.
    let mut lower = [0u8; 19];
    let Some(buf) = lower.get_mut(..token.len()) else {
        return false;
    };
    buf.copy_from_slice(token.as_bytes());
    buf.make_ascii_lowercase();
    // A token's bytes lower-cased are still UTF-8 (only ASCII letters change).
    std::str::from_utf8(buf).is_ok_and(|t| t == "close" || index_of(t).is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_match_and_the_list_agree() {
        for (i, name) in HOP_BY_HOP.iter().enumerate() {
            assert_eq!(index(name), Some(i), "{name}");
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
        assert!(is_connection_option("Keep-Alive"));
        assert!(is_connection_option("PROXY-AUTHORIZATION"));
        // Longer than any hop-by-hop name, and not ASCII: neither is an option.
        assert!(!is_connection_option("proxy-authorization-x"));
        assert!(!is_connection_option("clöse"));
        assert!(!is_connection_option(""));
    }
}
