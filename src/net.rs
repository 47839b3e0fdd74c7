//! Small facts about network addresses that several layers need: whether a URL points at this
//! machine (plain `http://` is tolerated there), how to show a URL or an error text without
//! the credentials it may carry, and whether a client error means the server closed the
//! connection without answering (a request that may be sent again).

use std::fmt::Display;
use std::net::IpAddr;

use url::{Host, Url};

/// True for `localhost`, `127.0.0.0/8` and `::1`.
pub fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        None => false,
    }
}

/// An error's text without anything that could be a credential: client libraries (the redis
/// crate among them) may repeat a URL in their messages.
pub fn redact_error(e: &dyn Display) -> String {
    redact_urls(&e.to_string())
}

/// Replaces the user-info of every `scheme://user:password@` in `text` with `***`.
///
/// The user-info runs to the last `@` before the URL ends (whitespace, a quote or an angle
/// bracket), not to the first `/`: a password written with an unescaped `/`, `?` or `#` is
/// still hidden, at the price of hiding a path that holds an `@` too.
pub fn redact_urls(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        let end = tail
            .find(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '`' | '<' | '>'))
            .unwrap_or(tail.len());
        match tail[..end].rfind('@') {
            Some(at) => {
                out.push_str("***");
                out.push_str(&tail[at..end]);
            }
            None => out.push_str(&tail[..end]),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

/// A configured URL as it may be shown in an error: [`redact_urls`], and for a value that is not
/// even shaped like a URL (`redis//:pw@host`), everything up to its last `@` hidden too.
pub fn redact_url_value(value: &str) -> String {
    if value.contains("://") {
        return redact_urls(value);
    }
    match value.rfind('@') {
        Some(at) => format!("***{}", &value[at..]),
        None => value.to_owned(),
    }
}

/// The connection ended before any answer came: the server closed it (or reset it) as the
/// request went out, as a keep-alive timer running out does. Not a refused connection, a
/// timeout, or an answer that broke off. Reads the whole source chain, so that it sees hyper's
/// error inside a client library's.
pub fn closed_unanswered(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(e);
    while let Some(e) = next {
        if let Some(h) = e.downcast_ref::<hyper::Error>() {
            if h.is_incomplete_message() || h.is_canceled() {
                return true;
            }
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::ConnectionAborted
                    | std::io::ErrorKind::BrokenPipe
            );
        }
        next = e.source();
    }
    false
}

/// A copy of `req`'s head (method, URI, version, headers) carrying `body`, to send again after
/// [`closed_unanswered`]. The extensions stay with the original.
pub fn copy_request<B, C>(req: &http::Request<B>, body: C) -> http::Request<C> {
    let mut copy = http::Request::new(body);
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.version_mut() = req.version();
    *copy.headers_mut() = req.headers().clone();
    copy
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An error wrapping another, as client libraries wrap hyper's and the socket's.
    #[derive(Debug)]
    struct Wrapped(std::io::Error);

    impl std::fmt::Display for Wrapped {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("client error")
        }
    }

    impl std::error::Error for Wrapped {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    /// A reset or broken connection, however deep in the chain, may be sent again; a refused
    /// connection, a timeout or another failure is not this case.
    #[test]
    fn only_a_connection_closed_under_the_request_counts_as_closed_unanswered() {
        use std::io::{Error, ErrorKind};
        for kind in [
            ErrorKind::ConnectionReset,
            ErrorKind::ConnectionAborted,
            ErrorKind::BrokenPipe,
        ] {
            assert!(closed_unanswered(&Error::from(kind)), "{kind:?}");
            assert!(closed_unanswered(&Wrapped(Error::from(kind))), "{kind:?}");
        }
        for kind in [
            ErrorKind::ConnectionRefused,
            ErrorKind::TimedOut,
            ErrorKind::InvalidData,
        ] {
            assert!(!closed_unanswered(&Error::from(kind)), "{kind:?}");
            assert!(!closed_unanswered(&Wrapped(Error::from(kind))), "{kind:?}");
        }
        assert!(!closed_unanswered(&std::fmt::Error));
    }

    #[test]
    fn credentials_in_urls_are_redacted() {
        assert_eq!(
            redact_urls("cannot reach redis://:s3cret@10.0.0.1:6379/0 now"),
            "cannot reach redis://***@10.0.0.1:6379/0 now"
        );
        assert_eq!(
            redact_urls("rediss://user:p@ss@host:6380"),
            "rediss://***@host:6380"
        );
        assert_eq!(redact_urls("redis://host:6379"), "redis://host:6379");
        assert_eq!(redact_urls("no url here"), "no url here");
        // A password with characters a URL should have escaped.
        assert_eq!(
            redact_urls("`redis://:pa/ss?w#d@host:6379/0` is not a Redis URL"),
            "`redis://***@host:6379/0` is not a Redis URL"
        );
        assert_eq!(
            redact_urls("url = \"redis://u:p/w@h\""),
            "url = \"redis://***@h\""
        );
    }

    #[test]
    fn values_not_shaped_like_urls_are_redacted_too() {
        assert_eq!(redact_url_value("redis//:pw@host:1"), "***@host:1");
        assert_eq!(redact_url_value("redis://:pw@host:1"), "redis://***@host:1");
        assert_eq!(redact_url_value("localhost:6379"), "localhost:6379");
    }

    #[test]
    fn loopback_hosts() {
        for (url, loopback) in [
            ("http://localhost:8080/x", true),
            ("http://LOCALHOST/", true),
            ("http://127.0.0.1/", true),
            ("http://127.9.9.9/", true),
            ("http://[::1]:1/", true),
            ("http://10.0.0.1/", false),
            ("http://localhost.example.com/", false),
        ] {
            assert_eq!(is_loopback(&Url::parse(url).unwrap()), loopback, "{url}");
        }
    }
}
