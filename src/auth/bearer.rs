//! `Authorization: Bearer <token>` (RFC 6750 §2.1) → the token, borrowed from the header.
//!
//! Only the Authorization header is a token source: query-string and form tokens (§2.2, §2.3)
//! leak into logs and caches and are not accepted.

use http::header::AUTHORIZATION;
use http::HeaderMap;

/// The largest token accepted: real access tokens are far smaller, and a cap keeps hashing and
/// parsing bounded.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// Why no token could be taken from the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BearerError {
    /// No Authorization header, or another scheme (Basic, …): answered with a bare challenge.
    #[error("no bearer token")]
    Missing,
    #[error("more than one Authorization header")]
    Duplicate,
    #[error("the bearer token is empty")]
    Empty,
    #[error("the bearer token has characters outside RFC 6750's b64token")]
    BadCharacters,
    #[error("the bearer token is larger than 16 KiB")]
    TooLarge,
}

impl BearerError {
    /// The variants that mean a malformed `Authorization` header (400 `invalid_request`).
    pub const MALFORMED: [BearerError; 4] = [
        BearerError::Duplicate,
        BearerError::Empty,
        BearerError::BadCharacters,
        BearerError::TooLarge,
    ];
}

/// A bearer token: a b64token of at most [`MAX_TOKEN_BYTES`], so ASCII. `Debug` never prints
/// it.
///
/// Kept as the header's bytes: what most requests do with a token (hash it for the cache key,
/// tell a JWT from an opaque token) needs no text, and making it text checks every byte again.
#[derive(Clone, Copy)]
pub struct Token<'a>(&'a [u8]);

impl<'a> Token<'a> {
    pub fn as_bytes(&self) -> &'a [u8] {
        self.0
    }

    /// The token as text, for the paths that need it (parsing a JWT, an introspection call).
    /// [`extract`] admits ASCII only, so this fails only for a token made some other way; the
    /// error is the one `extract` gives such bytes.
    pub fn as_str(&self) -> Result<&'a str, BearerError> {
        std::str::from_utf8(self.0).map_err(|_| BearerError::BadCharacters)
    }
}

impl std::fmt::Debug for Token<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// Extracts the bearer token: the scheme is case-insensitive, separated from the token by one or
/// more spaces; the token must be a non-empty b64token of at most [`MAX_TOKEN_BYTES`].
///
/// ```
/// use http::{header::AUTHORIZATION, HeaderMap, HeaderValue};
/// use tollgate::auth::{bearer, BearerError};
///
/// let mut h = HeaderMap::new();
/// assert_eq!(bearer::extract(&h).unwrap_err(), BearerError::Missing);
/// h.insert(AUTHORIZATION, HeaderValue::from_static("bearer eyJ.abc.def"));
/// assert_eq!(bearer::extract(&h).unwrap().as_str(), Ok("eyJ.abc.def"));
/// h.insert(AUTHORIZATION, HeaderValue::from_static("Basic dXNlcg=="));
/// assert_eq!(bearer::extract(&h).unwrap_err(), BearerError::Missing);
/// ```
pub fn extract(headers: &HeaderMap) -> Result<Token<'_>, BearerError> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Err(BearerError::Missing);
    };
    if values.next().is_some() {
        return Err(BearerError::Duplicate);
    }
    let bytes = value.as_bytes();
    const SCHEME: &[u8] = b"bearer";
    if bytes.len() < SCHEME.len() || !bytes[..SCHEME.len()].eq_ignore_ascii_case(SCHEME) {
        return Err(BearerError::Missing);
    }
    let rest = &bytes[SCHEME.len()..];
    match rest.first() {
        // "Bearer" alone: the scheme with no credentials.
        None => return Err(BearerError::Empty),
        Some(b' ') => {}
        // "BearerX…" is some other scheme.
        Some(_) => return Err(BearerError::Missing),
    }
    let token = trim_spaces(rest);
    if token.is_empty() {
        return Err(BearerError::Empty);
    }
    if token.len() > MAX_TOKEN_BYTES {
        return Err(BearerError::TooLarge);
    }
    if !is_b64token(token) {
        return Err(BearerError::BadCharacters);
    }
    Ok(Token(token))
}

fn trim_spaces(mut b: &[u8]) -> &[u8] {
    while let [b' ', rest @ ..] = b {
        b = rest;
    }
    while let [rest @ .., b' '] = b {
        b = rest;
    }
    b
}

/// `b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="`
pub(crate) fn is_b64token(t: &[u8]) -> bool {
    let body_end = t.iter().rposition(|&b| b != b'=').map_or(0, |i| i + 1);
    // Tokens run to a kilobyte and every request checks one. Each byte's test is a few
    // comparisons without a branch, and-ed over a chunk of 32: the compiler checks a chunk's
    // bytes side by side in vector registers (a table lookup per byte cannot be vectorised, and
    // cost three times the instructions). The last, shorter chunk is padded to a whole one.
    if body_end == 0 {
        return false;
    }
    let chunks = t[..body_end].chunks_exact(32);
    let rest = chunks.remainder();
    let mut last = [b'a'; 32];
    last[..rest.len()].copy_from_slice(rest);
    chunks.into_iter().all(in_b64token_chunk) && in_b64token_chunk(&last)
}

#[inline(always)]
fn in_b64token_chunk(chunk: &[u8]) -> bool {
    chunk.iter().fold(true, |ok, &b| ok & in_b64token(b))
}

/// A byte of a `b64token` body: `-./` and the digits are one run (0x2D to 0x39); setting bit
/// 0x20 maps the upper-case letters onto the lower-case ones and nothing else onto them.
#[inline(always)]
fn in_b64token(b: u8) -> bool {
    (b.wrapping_sub(b'-') <= b'9' - b'-')
        | ((b | 0x20).wrapping_sub(b'a') <= b'z' - b'a')
        | (b == b'+')
        | (b == b'_')
        | (b == b'~')
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use proptest::prelude::*;

    fn with(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(AUTHORIZATION, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn ex(values: &[&str]) -> Result<String, BearerError> {
        let h = with(values);
        extract(&h).and_then(|t| t.as_str().map(str::to_owned))
    }

    #[test]
    fn plain_bearer() {
        assert_eq!(ex(&["Bearer abc.def.ghi"]), Ok("abc.def.ghi".to_owned()));
    }

    #[test]
    fn scheme_is_case_insensitive() {
        assert_eq!(ex(&["bearer t"]), Ok("t".to_owned()));
        assert_eq!(ex(&["BEARER t"]), Ok("t".to_owned()));
        assert_eq!(ex(&["BeArEr t"]), Ok("t".to_owned()));
    }

    #[test]
    fn extra_spaces_are_tolerated() {
        assert_eq!(ex(&["Bearer    tok  "]), Ok("tok".to_owned()));
    }

    #[test]
    fn missing_and_other_schemes() {
        assert_eq!(ex(&[]), Err(BearerError::Missing));
        assert_eq!(ex(&["Basic dXNlcjpwYXNz"]), Err(BearerError::Missing));
        assert_eq!(ex(&["Bearerabc"]), Err(BearerError::Missing));
        assert_eq!(ex(&["Bear x"]), Err(BearerError::Missing));
    }

    #[test]
    fn empty_token() {
        assert_eq!(ex(&["Bearer"]), Err(BearerError::Empty));
        assert_eq!(ex(&["Bearer "]), Err(BearerError::Empty));
        assert_eq!(ex(&["Bearer    "]), Err(BearerError::Empty));
    }

    #[test]
    fn two_headers() {
        assert_eq!(ex(&["Bearer a", "Bearer b"]), Err(BearerError::Duplicate));
    }

    #[test]
    fn characters_outside_b64token() {
        assert_eq!(ex(&["Bearer a b"]), Err(BearerError::BadCharacters));
        assert_eq!(ex(&["Bearer a,b"]), Err(BearerError::BadCharacters));
        assert_eq!(ex(&["Bearer a\"b"]), Err(BearerError::BadCharacters));
        assert_eq!(ex(&["Bearer ==="]), Err(BearerError::BadCharacters));
        assert_eq!(ex(&["Bearer a=b"]), Err(BearerError::BadCharacters));
        assert_eq!(ex(&["Bearer ab+/~-._=="]), Ok("ab+/~-._==".to_owned()));
    }

    #[test]
    fn size_limit() {
        let ok = format!("Bearer {}", "a".repeat(MAX_TOKEN_BYTES));
        assert!(ex(&[&ok]).is_ok());
        let big = format!("Bearer {}", "a".repeat(MAX_TOKEN_BYTES + 1));
        assert_eq!(ex(&[&big]), Err(BearerError::TooLarge));
    }

    #[test]
    fn debug_redacts() {
        let h = with(&["Bearer secret-token"]);
        let t = extract(&h).unwrap();
        assert!(!format!("{t:?}").contains("secret"));
    }

    /// RFC 6750's b64token body characters, as the grammar spells them: what the fast checks
    /// are held to.
    fn grammar(b: u8) -> bool {
        b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/')
    }

    #[test]
    fn each_byte_is_judged_by_the_grammar() {
        for b in 0..=255u8 {
            assert_eq!(in_b64token(b), grammar(b), "byte {b}");
        }
        assert!(!is_b64token(b"abc def") && !is_b64token(b"===") && is_b64token(b"a.b-c=="));
    }

    proptest! {
        #[test]
        fn extract_never_panics(v in proptest::collection::vec(any::<u8>(), 0..64)) {
            if let Ok(value) = HeaderValue::from_bytes(&v) {
                let mut h = HeaderMap::new();
                h.insert(AUTHORIZATION, value);
                let _ = extract(&h);
            }
        }

        /// Tokens longer than a chunk, with a byte outside the grammar anywhere (or none).
        #[test]
        fn long_tokens_are_judged_byte_by_byte(
            t in "[A-Za-z0-9._~+/-]{1,100}",
            bad in proptest::option::of((any::<u8>(), any::<proptest::sample::Index>())),
        ) {
            let mut t = t.into_bytes();
            if let Some((b, at)) = bad {
                let i = at.index(t.len());
                t[i] = b;
            }
            let body = t.iter().rposition(|&b| b != b'=').map_or(0, |i| i + 1);
            prop_assert_eq!(is_b64token(&t), body > 0 && t[..body].iter().all(|&b| grammar(b)));
        }

        #[test]
        fn accepted_tokens_are_b64token(t in "[A-Za-z0-9._~+/-]{1,40}={0,2}") {
            let value = format!("Bearer {t}");
            let got = ex(&[&value]);
            prop_assert_eq!(got, Ok(t));
        }
    }
}
