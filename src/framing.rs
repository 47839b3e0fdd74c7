//! The checks of a request's framing and target that hyper's parsers leave to the application,
//! made before anything else looks at the request. Each is a disagreement that two parsers (the
//! gateway's and the upstream's, or a proxy's in front) could settle differently: refused, so
//! that nobody has to settle it.
//!
//! hyper itself already refuses (400, connection closed): two different `Content-Length`s, a
//! `Transfer-Encoding` whose last coding is not `chunked`, `Transfer-Encoding` on HTTP/1.0, bad
//! chunk sizes, obs-fold lines, whitespace before a colon, and control characters in a header;
//! and with both `Content-Length` and `Transfer-Encoding: chunked`, it reads the body as chunked,
//! drops the length and closes the connection after the answer (RFC 9112 §6.3). h2 refuses the
//! connection-specific headers and a `content-length` that the DATA frames contradict.

use http::header::{self, HeaderMap};
use http::request::Parts;

/// A request whose framing or target is ambiguous: answered 400, never forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    /// RFC 9112 §3.2: more than one `Host` line is a 400.
    #[error("the request has more than one Host header")]
    DuplicateHost,
    /// RFC 9112 §3.2: an HTTP/1.1 request without `Host` (and without an absolute-form target)
    /// is a 400. Routes by host could not be chosen for it.
    #[error("the HTTP/1.1 request has no Host header")]
    MissingHost,
    /// The target's authority (absolute form, or HTTP/2's `:authority`) names another host than
    /// `Host`: routes would be chosen for one and the upstream told the other.
    #[error("the request target's authority and the Host header disagree")]
    HostMismatch,
    /// A `Transfer-Encoding` other than one `chunked`: a coding the gateway does not decode
    /// (`gzip, chunked`) would reach the upstream as a body it cannot tell is encoded, and
    /// several lines are read differently by different parsers.
    #[error("the only Transfer-Encoding accepted is a single `chunked`")]
    TransferEncoding,
}

/// Checks the head of a client request: one `Host` at most, agreeing with the target's
/// authority when both are present, and `Transfer-Encoding` absent or exactly `chunked`.
pub fn check(head: &Parts) -> Result<(), FramingError> {
    check_host(head)?;
    check_transfer_encoding(&head.headers)
}

fn check_host(head: &Parts) -> Result<(), FramingError> {
    let mut hosts = head.headers.get_all(header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(FramingError::DuplicateHost);
    }
    if host.is_none() && head.uri.authority().is_none() && head.version == http::Version::HTTP_11 {
        return Err(FramingError::MissingHost);
    }
    match (head.uri.authority(), host) {
        (Some(authority), Some(host))
            if !authority
                .as_str()
                .as_bytes()
                .eq_ignore_ascii_case(host.as_bytes()) =>
        {
            Err(FramingError::HostMismatch)
        }
        _ => Ok(()),
    }
}

fn check_transfer_encoding(headers: &HeaderMap) -> Result<(), FramingError> {
    let mut lines = headers.get_all(header::TRANSFER_ENCODING).iter();
    let Some(first) = lines.next() else {
        return Ok(());
    };
    // Optional whitespace around the value is not part of it (RFC 9110 §5.5); case does not
    // matter for a coding name (§10.1.4). Anything else, a list included, is refused.
    let single_chunked = first
        .as_bytes()
        .trim_ascii()
        .eq_ignore_ascii_case(b"chunked");
    if single_chunked && lines.next().is_none() {
        Ok(())
    } else {
        Err(FramingError::TransferEncoding)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Request;

    /// A request head; the tests of other checks give their requests a Host.
    fn head(target: &str, headers: &[(&str, &[u8])]) -> Parts {
        let mut b = Request::post(target);
        for (k, v) in headers {
            b = b.header(*k, http::HeaderValue::from_bytes(v).unwrap());
        }
        b.body(()).unwrap().into_parts().0
    }

    #[test]
    fn plain_requests_pass() {
        assert_eq!(check(&head("/x", &[("host", b"gw")])), Ok(()));
        // HTTP/1.0 needs no Host.
        let mut old = head("/x", &[]);
        old.version = http::Version::HTTP_10;
        assert_eq!(check(&old), Ok(()));
        // HTTP/2: `:authority` only, or both the same (case aside).
        assert_eq!(check(&head("http://gw:8080/x", &[])), Ok(()));
        assert_eq!(
            check(&head("http://GW:8080/x", &[("host", b"gw:8080")])),
            Ok(())
        );
    }

    #[test]
    fn an_http11_request_needs_a_host() {
        assert_eq!(check(&head("/x", &[])), Err(FramingError::MissingHost));
        // The absolute form carries its own authority.
        assert_eq!(check(&head("http://gw/x", &[])), Ok(()));
    }

    #[test]
    fn hosts_must_be_one_and_agree_with_the_authority() {
        let two = head("/x", &[("host", b"gw"), ("host", b"evil")]);
        assert_eq!(check(&two), Err(FramingError::DuplicateHost));
        let same_twice = head("/x", &[("host", b"gw"), ("host", b"gw")]);
        assert_eq!(check(&same_twice), Err(FramingError::DuplicateHost));
        for (target, host) in [
            ("http://evil/x", "gw"),
            ("http://gw:81/x", "gw:80"),
            ("http://gw/x", "gw:80"),
            ("http://user@gw/x", "gw"),
        ] {
            let h = head(target, &[("host", host.as_bytes())]);
            assert_eq!(
                check(&h),
                Err(FramingError::HostMismatch),
                "{target} {host}"
            );
        }
    }

    #[test]
    fn only_one_chunked_transfer_encoding_passes() {
        for ok in [&b"chunked"[..], b"CHUNKED", b"Chunked ", b"\tchunked"] {
            let h = head("/x", &[("host", b"gw"), ("transfer-encoding", ok)]);
            assert_eq!(check(&h), Ok(()), "{:?}", String::from_utf8_lossy(ok));
        }
        for bad in [
            &b"chunked, identity"[..],
            b"identity, chunked",
            b"gzip, chunked",
            b"xchunked",
            b"chunked;q=1",
            b"",
            b"identity",
        ] {
            let h = head("/x", &[("host", b"gw"), ("transfer-encoding", bad)]);
            assert_eq!(
                check(&h),
                Err(FramingError::TransferEncoding),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let twice = head(
            "/x",
            &[
                ("host", b"gw"),
                ("transfer-encoding", b"chunked"),
                ("transfer-encoding", b"chunked"),
            ],
        );
        assert_eq!(check(&twice), Err(FramingError::TransferEncoding));
    }
}
