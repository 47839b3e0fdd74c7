//! WebSocket (and other `Upgrade`) pass-through on routes with `websocket = true`: the upgrade
//! request is authorised like any other, forwarded with its `Connection: upgrade` and `Upgrade`
//! headers, and when the upstream answers `101 Switching Protocols` the two upgraded connections
//! are joined byte for byte until either side closes.

use http::header::{self, HeaderMap, HeaderValue};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

/// True for an HTTP/1.1 upgrade request (`Connection: upgrade` and an `Upgrade` header).
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// An upgrade the client asked for on a route that allows it, taken out of the request before
/// the hop-by-hop clean-up removes its headers.
pub struct Upgrade {
    protocol: HeaderValue,
    client: Option<OnUpgrade>,
}

impl Upgrade {
    /// The request's upgrade, when it asks for one and `allowed`.
    pub fn take(head: &mut http::request::Parts, allowed: bool) -> Option<Upgrade> {
        if !allowed || !is_upgrade(&head.headers) {
            return None;
        }
        let protocol = head.headers.get(header::UPGRADE)?.clone();
        Some(Upgrade {
            protocol,
            client: head.extensions.remove::<OnUpgrade>(),
        })
    }

    /// Puts the upgrade headers back on the prepared upstream request.
    pub fn restore(&self, headers: &mut HeaderMap) {
        restore(headers, &self.protocol);
    }

    /// The client's side of the upgrade, to join once the upstream answered 101 (`None` on a
    /// connection that cannot be upgraded).
    pub fn into_client(self) -> Option<OnUpgrade> {
        self.client
    }
}

/// Puts the upgrade headers back after the hop-by-hop headers were removed.
pub fn restore(headers: &mut HeaderMap, upgrade: &HeaderValue) {
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, upgrade.clone());
}

/// Joins the client's and the upstream's upgraded connections until one side closes.
pub fn join(client: OnUpgrade, upstream: OnUpgrade) {
    tokio::spawn(async move {
        let (client, upstream) = match (client.await, upstream.await) {
            (Ok(c), Ok(u)) => (c, u),
            (Err(e), _) | (_, Err(e)) => {
                tracing::debug!(error = %e, "upgrade failed");
                return;
            }
        };
        let (mut c, mut u) = (TokioIo::new(client), TokioIo::new(upstream));
        if let Err(e) = tokio::io::copy_bidirectional(&mut c, &mut u).await {
            tracing::debug!(error = %e, "upgraded connection ended with an error");
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_upgrade_requests() {
        let mut h = HeaderMap::new();
        assert!(!is_upgrade(&h));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert!(!is_upgrade(&h));
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, Upgrade"),
        );
        assert!(is_upgrade(&h));
    }
}
