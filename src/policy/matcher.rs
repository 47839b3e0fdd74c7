//! Pure route matching: path normalisation, host, method and path predicates, and the
//! specificity order that picks the best of several matching routes.
//!
//! Normalisation runs once per request, before any route is looked at, so that every route sees
//! the same canonical path and the upstream receives exactly the path that was authorised:
//! unreserved characters are percent-decoded (`%7E` → `~`, `%2E` → `.`), other escapes are kept with
//! upper-case hex, empty segments (`//`) are collapsed, and dot segments are removed (RFC 3986
//! §5.2.4), so `/entity/Default/../../admin` becomes `/admin` before it is matched. Backslashes
//! (raw or `%5C`) and encoded NUL are refused outright: IIS, the reference upstream, treats `\` as
//! a path separator and would otherwise see a path the gateway never authorised.

use std::borrow::Cow;

use http::Method;

/// Why a request path cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the request path must start with '/'")]
    NotAbsolute,
    #[error("backslashes and encoded NUL are not allowed in the request path")]
    ForbiddenCharacter,
    /// A `%` not followed by two hex digits. Refused rather than copied: decoding around it
    /// could assemble a new escape (`%2%65` → `%2e`) that the upstream would decode again.
    #[error("the request path has a malformed percent-encoding")]
    BadEscape,
}

/// Returns the canonical form of `path` (see the module docs). Borrows when nothing changes.
///
/// ```
/// use tollgate::policy::normalize;
///
/// assert_eq!(normalize("/entity/Default/../../admin").unwrap(), "/admin");
/// assert_eq!(normalize("/entity//Default/%2e%2e/x").unwrap(), "/entity/x");
/// assert_eq!(normalize("/%7Euser/a%2fb").unwrap(), "/~user/a%2Fb");
/// assert!(normalize("/a\\..\\b").is_err());
/// ```
pub fn normalize(path: &str) -> Result<Cow<'_, str>, PathError> {
    if path == "*" {
        // OPTIONS * (asterisk-form) has no path to match; treat it as the root.
        return Ok(Cow::Borrowed("/"));
    }
    if !path.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    if is_canonical(path)? {
        return Ok(Cow::Borrowed(path));
    }

    let decoded = decode_unreserved(path)?;
    let trailing_slash = decoded.ends_with('/');
    let mut out: Vec<&str> = Vec::new();
    for seg in decoded.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    let mut result = String::with_capacity(decoded.len());
    for seg in &out {
        result.push('/');
        result.push_str(seg);
    }
    let ends_in_dot = decoded.ends_with("/.") || decoded.ends_with("/..");
    if result.is_empty() || ((trailing_slash || ends_in_dot) && !out.is_empty()) {
        result.push('/');
    }
    Ok(Cow::Owned(result))
}

/// The check for the common case, in one pass over the bytes (it runs on every request): no
/// escapes, no empty or dot segments. A backslash anywhere is refused.
fn is_canonical(path: &str) -> Result<bool, PathError> {
    let bytes = path.as_bytes();
    let mut canonical = true;
    // Where the current segment began (after its `/`); the leading `/` ends an empty segment,
    // which is no `//`.
    let mut segment = 0;
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'\\' => return Err(PathError::ForbiddenCharacter),
            b'%' => canonical = false,
            b'/' => {
                if i > 0 && matches!(&bytes[segment..i], b"" | b"." | b"..") {
                    canonical = false;
                }
                segment = i + 1;
            }
            _ => {}
        }
    }
    // The last segment may be empty (a trailing `/`), but not a dot segment.
    Ok(canonical && !matches!(&bytes[segment..], b"." | b".."))
}

fn decode_unreserved(path: &str) -> Result<String, PathError> {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let (Some(h), Some(l)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            ) else {
                return Err(PathError::BadEscape);
            };
            let b = h << 4 | l;
            if b == b'\\' || b == 0 {
                return Err(PathError::ForbiddenCharacter);
            }
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
                out.push(char::from(b));
            } else {
                out.push('%');
                out.push(char::from(bytes[i + 1].to_ascii_uppercase()));
                out.push(char::from(bytes[i + 2].to_ascii_uppercase()));
            }
            i += 3;
            continue;
        }
        // Paths from hyper are ASCII; copy any other byte through unchanged.
        let ch_len = utf8_len(bytes[i]);
        out.push_str(path.get(i..i + ch_len).unwrap_or(""));
        i += ch_len.max(1);
    }
    Ok(out)
}

fn utf8_len(first: u8) -> usize {
    match first {
        0x00..=0x7f => 1,
        0xc0..=0xdf => 2,
        0xe0..=0xef => 3,
        _ => 4,
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// How a route's path is matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathMatch {
    /// The whole (normalised) path.
    Exact(Box<str>),
    /// Whole leading segments: `/entity/Default/` matches `/entity/Default` and
    /// `/entity/Default/x`, never `/entity/DefaultX`. Stored without its trailing slash; the root
    /// prefix is stored as the empty string and matches everything.
    Prefix(Box<str>),
}

impl PathMatch {
    /// Builds a prefix matcher from the configured value (with or without trailing slash).
    pub fn prefix(p: &str) -> Self {
        PathMatch::Prefix(p.trim_end_matches('/').into())
    }

    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathMatch::Exact(e) => path == &**e,
            PathMatch::Prefix(p) => {
                path.starts_with(&**p) && matches!(path.as_bytes().get(p.len()), None | Some(b'/'))
            }
        }
    }
}

/// Which hosts a route serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostMatch {
    /// Lower-case host name without port.
    Exact(Box<str>),
    /// `*.example.com`: stored as `.example.com`; matches any name ending in it.
    Suffix(Box<str>),
}

impl HostMatch {
    pub fn parse(pattern: &str) -> Self {
        let p = pattern.to_ascii_lowercase();
        match p.strip_prefix('*') {
            Some(rest) => HostMatch::Suffix(rest.into()),
            None => HostMatch::Exact(p.into()),
        }
    }

    /// `host` is the request's host, lower-cased and without port.
    pub fn matches(&self, host: &str) -> bool {
        match self {
            HostMatch::Exact(h) => host == &**h,
            HostMatch::Suffix(s) => host.len() > s.len() && host.ends_with(&**s),
        }
    }
}

/// The request host without port, lower-cased (borrowed when already lower-case).
pub fn host_of(authority: &str) -> Cow<'_, str> {
    let host = if let Some(rest) = authority.strip_prefix('[') {
        // IPv6 literal: keep the brackets' content.
        rest.split(']').next().unwrap_or(rest)
    } else {
        authority.rsplit_once(':').map_or(authority, |(h, _)| h)
    };
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    }
}

/// The predicates of one route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Matcher {
    pub host: Option<HostMatch>,
    /// `None`: any method.
    pub methods: Option<Box<[Method]>>,
    pub path: PathMatch,
}

impl Matcher {
    pub fn matches(&self, host: Option<&str>, method: &Method, path: &str) -> bool {
        if let Some(ms) = &self.methods {
            if !ms.contains(method) {
                return false;
            }
        }
        self.matches_place(host, path)
    }

    /// Host and path alone, whatever the method.
    pub fn matches_place(&self, host: Option<&str>, path: &str) -> bool {
        if let Some(h) = &self.host {
            match host {
                Some(host) if h.matches(host) => {}
                _ => return false,
            }
        }
        self.path.matches(path)
    }

    /// Sort key: smaller is more specific. Host-bound routes before host-agnostic ones, exact
    /// paths before prefixes, longer prefixes before shorter; a stable sort keeps file order for
    /// ties.
    pub fn specificity(&self) -> (u8, u8, std::cmp::Reverse<usize>) {
        let host = match &self.host {
            Some(HostMatch::Exact(_)) => 0,
            Some(HostMatch::Suffix(_)) => 1,
            None => 2,
        };
        match &self.path {
            PathMatch::Exact(p) => (0, host, std::cmp::Reverse(p.len())),
            PathMatch::Prefix(p) => (1, host, std::cmp::Reverse(p.len())),
        }
    }

    /// True when every request this matcher accepts is also accepted by `earlier`, so that a
    /// route placed after `earlier` with the same specificity could never be chosen.
    pub fn shadowed_by(&self, earlier: &Matcher) -> bool {
        if self.host != earlier.host || self.path != earlier.path {
            return false;
        }
        match (&self.methods, &earlier.methods) {
            (_, None) => true,
            (None, Some(_)) => false,
            (Some(mine), Some(theirs)) => mine.iter().all(|m| theirs.contains(m)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn n(p: &str) -> String {
        normalize(p).unwrap().into_owned()
    }

    #[test]
    fn canonical_paths_are_borrowed() {
        assert!(matches!(
            normalize("/entity/Default/24.200.001/Customer").unwrap(),
            Cow::Borrowed(_)
        ));
        assert!(matches!(normalize("/").unwrap(), Cow::Borrowed(_)));
    }

    #[test]
    fn dot_segments_are_removed() {
        assert_eq!(n("/entity/Default/../../admin"), "/admin");
        assert_eq!(n("/a/./b/../c"), "/a/c");
        assert_eq!(n("/../../.."), "/");
        assert_eq!(n("/a/b/.."), "/a/");
        assert_eq!(n("/a/b/."), "/a/b/");
    }

    #[test]
    fn encoded_dots_are_decoded_then_removed() {
        assert_eq!(n("/entity/Default/%2e%2e/%2E%2E/admin"), "/admin");
        assert_eq!(n("/entity/Default/.%2e/x"), "/entity/x");
    }

    #[test]
    fn double_slashes_collapse() {
        assert_eq!(n("//entity///Default//x"), "/entity/Default/x");
        assert_eq!(n("/a//"), "/a/");
    }

    #[test]
    fn unreserved_escapes_decode_and_others_are_uppercased() {
        assert_eq!(n("/%7Euser/%41b"), "/~user/Ab");
        assert_eq!(n("/a%2fb"), "/a%2Fb");
        assert_eq!(n("/a%2a"), "/a%2A");
        assert_eq!(normalize("/bad%zzescape"), Err(PathError::BadEscape));
        assert_eq!(normalize("/trailing%"), Err(PathError::BadEscape));
        assert_eq!(normalize("/trailing%4"), Err(PathError::BadEscape));
        // No new escape can be assembled from a broken one and a decoded one.
        assert_eq!(
            normalize("/public/%2%65%2%65/entity"),
            Err(PathError::BadEscape)
        );
        assert_eq!(normalize("/%a%30"), Err(PathError::BadEscape));
    }

    #[test]
    fn backslashes_and_nul_are_refused() {
        assert_eq!(normalize("/a\\..\\b"), Err(PathError::ForbiddenCharacter));
        assert_eq!(normalize("/a/%5c../b"), Err(PathError::ForbiddenCharacter));
        assert_eq!(normalize("/a/%00"), Err(PathError::ForbiddenCharacter));
        assert_eq!(normalize("relative"), Err(PathError::NotAbsolute));
    }

    #[test]
    fn prefix_is_segment_aware() {
        let p = PathMatch::prefix("/entity/Default/");
        assert!(p.matches("/entity/Default"));
        assert!(p.matches("/entity/Default/"));
        assert!(p.matches("/entity/Default/24.200.001/Customer"));
        assert!(!p.matches("/entity/DefaultX"));
        assert!(!p.matches("/entity/DefaultX/y"));
        assert!(!p.matches("/entity"));
        let api = PathMatch::prefix("/api");
        assert!(api.matches("/api"));
        assert!(!api.matches("/apix"));
        let root = PathMatch::prefix("/");
        assert!(root.matches("/"));
        assert!(root.matches("/anything/at/all"));
    }

    #[test]
    fn exact_matches_only_itself() {
        let e = PathMatch::Exact("/health".into());
        assert!(e.matches("/health"));
        assert!(!e.matches("/health/"));
        assert!(!e.matches("/healthz"));
    }

    #[test]
    fn hosts() {
        assert_eq!(host_of("Example.COM:8080"), "example.com");
        assert_eq!(host_of("example.com"), "example.com");
        assert_eq!(host_of("[::1]:80"), "::1");
        let exact = HostMatch::parse("API.example.com");
        assert!(exact.matches("api.example.com"));
        assert!(!exact.matches("x.api.example.com"));
        let wild = HostMatch::parse("*.example.com");
        assert!(wild.matches("a.example.com"));
        assert!(!wild.matches("example.com"));
        assert!(!wild.matches("badexample.com"));
    }

    #[test]
    fn specificity_orders_exact_then_longer_prefix() {
        let m = |path: PathMatch| Matcher {
            host: None,
            methods: None,
            path,
        };
        let exact = m(PathMatch::Exact("/a".into()));
        let long = m(PathMatch::prefix("/a/b"));
        let short = m(PathMatch::prefix("/a"));
        assert!(exact.specificity() < long.specificity());
        assert!(long.specificity() < short.specificity());
    }

    #[test]
    fn shadowing() {
        let get = Matcher {
            host: None,
            methods: Some(vec![Method::GET].into()),
            path: PathMatch::prefix("/a"),
        };
        let put = Matcher {
            host: None,
            methods: Some(vec![Method::PUT].into()),
            path: PathMatch::prefix("/a"),
        };
        let any = Matcher {
            host: None,
            methods: None,
            path: PathMatch::prefix("/a"),
        };
        assert!(!put.shadowed_by(&get));
        assert!(get.shadowed_by(&any));
        assert!(!any.shadowed_by(&get));
    }

    proptest! {
        #[test]
        fn normalize_never_panics_and_is_idempotent(p in "/[a-zA-Z0-9%./_~-]{0,40}") {
            if let Ok(once) = normalize(&p) {
                let twice = normalize(&once).unwrap().into_owned();
                prop_assert_eq!(once.as_ref(), twice.as_str());
                prop_assert!(!once.split('/').any(|s| s == ".." || s == "."));
            }
        }

        /// The one-pass check says what its definition says: refused with a backslash; else
        /// canonical when there is no `%`, no `//` and no `.` or `..` segment.
        #[test]
        fn the_fast_check_agrees_with_its_definition(p in "/[a./%\\\\]{0,12}") {
            let expected = if p.contains('\\') {
                Err(PathError::ForbiddenCharacter)
            } else {
                Ok(!p.contains('%')
                    && !p.contains("//")
                    && !p.split('/').any(|s| s == "." || s == ".."))
            };
            prop_assert_eq!(is_canonical(&p), expected);
        }

        #[test]
        fn a_prefix_never_matches_across_a_segment(seg in "[a-z]{1,8}", extra in "[a-z]{1,8}") {
            let prefix = PathMatch::prefix(&format!("/{seg}"));
            let path = format!("/{seg}{extra}");
            prop_assert!(!prefix.matches(&path));
        }
    }
}
