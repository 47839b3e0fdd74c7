//! CORS for browser clients, per route (`[route.cors]`).
//!
//! On a route with a CORS policy the gateway speaks CORS itself, knowing the route's token policy:
//!
//! - a preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`) is answered here,
//!   without a token and without reaching the upstream: 204 with the `Access-Control-Allow-*`
//!   headers when the origin, the method and every requested header are allowed, else a refusal
//!   ([`CorsRefused`], a 403 without any of them);
//! - every other answer on the route, the gateway's own refusals included, gets the CORS headers
//!   of its allowed origin ([`Reply::finish`]), so that a browser application can read a 401's
//!   challenge or a 503's `Retry-After`; whatever CORS headers the upstream sent are dropped.
//!
//! CORS is what a browser enforces, not access control: a request from an origin that is not
//! allowed is still served (a non-browser client sends what it likes); it only gets no CORS
//! headers, so a browser keeps the answer from the page.
//!
//! Everything but the echoed origin is prebuilt when the route is compiled.

use std::sync::Arc;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use http::Method;

/// Response headers a bearer route's browser client needs to read its errors: the challenge of
/// a 401 or 403 (scopes, step-up, where the metadata is) and when to retry a 429 or 503. Neither
/// is CORS-safelisted, so they are always exposed, beside the configured ones.
pub const ALWAYS_EXPOSED: [&str; 2] = ["WWW-Authenticate", "Retry-After"];

/// Which origins may read the route's answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origins {
    /// `"*"`: any origin (never with credentials).
    Any,
    /// Serialised origins (`https://app.example.com`), compared exactly as browsers send them.
    Listed(Box<[Box<str>]>),
}

/// One route's compiled CORS policy.
#[derive(Debug, Clone)]
pub struct Cors {
    pub origins: Origins,
    /// The methods a preflight may announce; `None`: any method (the route takes any).
    pub methods: Option<Box<[Method]>>,
    /// `Access-Control-Allow-Methods` when `methods` is set.
    pub allow_methods: Option<HeaderValue>,
    /// The request headers a preflight may announce (lower case, as `HeaderName`s are).
    pub headers: Box<[HeaderName]>,
    /// `Access-Control-Allow-Headers`, when any are allowed.
    pub allow_headers: Option<HeaderValue>,
    /// `Access-Control-Expose-Headers`: the configured names and [`ALWAYS_EXPOSED`].
    pub expose_headers: HeaderValue,
    /// `Access-Control-Max-Age`, when configured.
    pub max_age: Option<HeaderValue>,
    /// `Access-Control-Allow-Credentials: true`.
    pub credentials: bool,
}

/// Why a preflight was refused: its description says which part was not allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CorsRefused {
    #[error("the origin may not call this route from a browser")]
    Origin,
    #[error("the method is not allowed from a browser on this route")]
    Method,
    #[error("a requested header is not allowed from a browser on this route")]
    Header,
}

/// What a preflight announces.
#[derive(Debug)]
pub struct Preflight<'a> {
    origin: &'a HeaderValue,
    method: Method,
    headers: Option<&'a HeaderValue>,
}

impl<'a> Preflight<'a> {
    /// The request as a preflight: `OPTIONS` with `Origin` and a valid
    /// `Access-Control-Request-Method`. Anything else is an ordinary request.
    pub fn of(head: &'a Parts) -> Option<Preflight<'a>> {
        if head.method != Method::OPTIONS {
            return None;
        }
        let origin = head.headers.get(header::ORIGIN)?;
        let method = head.headers.get(header::ACCESS_CONTROL_REQUEST_METHOD)?;
        Some(Preflight {
            origin,
            method: Method::from_bytes(method.as_bytes()).ok()?,
            headers: head.headers.get(header::ACCESS_CONTROL_REQUEST_HEADERS),
        })
    }

    /// The method of the request the preflight announces: its route is the one that answers.
    pub fn method(&self) -> &Method {
        &self.method
    }
}

/// The CORS headers one answer gets: the route's policy, and the request's origin when the
/// policy allows it.
#[derive(Debug, Clone)]
pub struct Reply {
    cors: Arc<Cors>,
    origin: Option<HeaderValue>,
}

// === impl Cors ===

impl Cors {
    fn allows_origin(&self, origin: &HeaderValue) -> bool {
        match &self.origins {
            Origins::Any => true,
            Origins::Listed(list) => list.iter().any(|o| o.as_bytes() == origin.as_bytes()),
        }
    }

    /// `Access-Control-Allow-Origin`: `*` for any origin, else the request's own.
    fn allow_origin(&self, origin: &HeaderValue) -> HeaderValue {
        match self.origins {
            Origins::Any => HeaderValue::from_static("*"),
            Origins::Listed(_) => origin.clone(),
        }
    }

    /// The answer headers of an allowed preflight, or why it is refused.
    pub fn preflight(&self, p: &Preflight<'_>) -> Result<HeaderMap, CorsRefused> {
        if !self.allows_origin(p.origin) {
            return Err(CorsRefused::Origin);
        }
        if let Some(methods) = &self.methods {
            if !methods.contains(&p.method) {
                return Err(CorsRefused::Method);
            }
        }
        // Access-Control-Request-Headers: a comma-separated list of names, lower case from
        // browsers; names compare without case.
        let all_allowed = match p.headers.map(HeaderValue::to_str) {
            None => true,
            Some(Err(_)) => false,
            Some(Ok(names)) => names
                .split(',')
                .map(str::trim)
                .filter(|n| !n.is_empty())
                .all(|n| {
                    self.headers
                        .iter()
                        .any(|h| h.as_str().eq_ignore_ascii_case(n))
                }),
        };
        if !all_allowed {
            return Err(CorsRefused::Header);
        }
        let mut h = HeaderMap::new();
        h.insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            self.allow_origin(p.origin),
        );
        let methods = match &self.allow_methods {
            Some(v) => v.clone(),
            // The route takes any method: the announced one is allowed.
            None => HeaderValue::from_str(p.method.as_str())
                .unwrap_or_else(|_| HeaderValue::from_static("GET")),
        };
        h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, methods);
        if let Some(v) = &self.allow_headers {
            h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, v.clone());
        }
        if let Some(v) = &self.max_age {
            h.insert(header::ACCESS_CONTROL_MAX_AGE, v.clone());
        }
        if self.credentials {
            h.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        h.insert(header::VARY, HeaderValue::from_static("Origin"));
        Ok(h)
    }

    /// The CORS headers of an actual request's answers (`head` is the request's).
    pub fn reply(self: &Arc<Self>, head: &HeaderMap) -> Reply {
        Reply {
            cors: self.clone(),
            origin: head
                .get(header::ORIGIN)
                .filter(|o| self.allows_origin(o))
                .cloned(),
        }
    }
}

// === impl Reply ===

impl Reply {
    /// Sets the answer's CORS headers: any `Access-Control-*` header already there (the
    /// upstream's) goes, `Origin` joins `Vary`, and an allowed origin gets
    /// `Access-Control-Allow-Origin`, `-Expose-Headers` and, when configured, `-Allow-Credentials`.
    pub fn finish(&self, h: &mut HeaderMap) {
        let upstreams: Vec<HeaderName> = h
            .keys()
            .filter(|n| n.as_str().starts_with("access-control-"))
            .cloned()
            .collect();
        for name in upstreams {
            h.remove(name);
        }
        vary_origin(h);
        let Some(origin) = &self.origin else { return };
        let cors = &self.cors;
        h.insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            cors.allow_origin(origin),
        );
        h.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            cors.expose_headers.clone(),
        );
        if cors.credentials {
            h.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
    }
}

/// Adds `Origin` to `Vary`, keeping what the upstream listed (`Vary: *` already covers it).
fn vary_origin(h: &mut HeaderMap) {
    let listed = h.get_all(header::VARY).iter().any(|v| {
        v.to_str().is_ok_and(|t| {
            t.split(',')
                .map(str::trim)
                .any(|n| n == "*" || n.eq_ignore_ascii_case("origin"))
        })
    });
    if !listed {
        h.append(header::VARY, HeaderValue::from_static("Origin"));
    }
}

#[cfg(test)]
mod tests;
