//! Route choice and authorisation: which route a request hit, and whether its principal may use it.
//!
//! [`RouteTable::find`] is a pure function over the frozen table (sorted by specificity at load, so
//! the first match is the best one); [`authorize`] turns a verified principal into a [`Permit`] or a
//! [`Denied`] that the error module maps to a 403 (or 401 for a token of the wrong issuer, or one
//! whose authentication falls short of the route's [`step_up`] requirement). A route's browser
//! policy is its [`cors`].

pub mod cors;
pub mod matcher;
pub mod step_up;

use std::sync::Arc;

use http::{HeaderName, HeaderValue, Method};
use serde_json::Value;

use crate::auth::Principal;
pub use cors::Cors;
pub use matcher::{normalize, HostMatch, Matcher, PathError, PathMatch};
pub use step_up::StepUp;

/// One configured route, compiled.
#[derive(Debug, Clone)]
pub struct Route {
    /// The configured id: the `route` label of every metric and the access log.
    pub id: Arc<str>,
    pub matcher: Matcher,
    /// Index into the configured upstreams.
    pub upstream: usize,
    pub auth: RouteAuth,
    /// Upstream request headers set from claims (header, claim name). Client-sent headers with
    /// these names are always removed first.
    pub identity_headers: Box<[(HeaderName, Box<str>)]>,
    /// The largest request body accepted (bytes); larger get 413.
    pub max_body: u64,
    /// WebSocket (and other `Upgrade`) requests pass through.
    pub websocket: bool,
    /// `[route.cors]`: preflights answered by the gateway, and CORS headers on every answer.
    pub cors: Option<Arc<Cors>>,
}

/// Whether and how a route is protected. Public routes are a variant, not a flag checked in
/// several places.
#[derive(Debug, Clone)]
pub enum RouteAuth {
    /// `auth = "none"`: no token is needed or looked at.
    Public,
    Bearer(Requirement),
}

/// What a token must carry to use a bearer route.
#[derive(Debug, Clone)]
pub struct Requirement {
    /// Only tokens of this issuer id.
    pub issuer: Option<Arc<str>>,
    /// Every one of these scopes.
    pub all_scopes: Box<[Box<str>]>,
    /// At least one of these scopes (when not empty).
    pub any_scopes: Box<[Box<str>]>,
    /// Each claim must equal one of its values.
    pub claims: Box<[ClaimRule]>,
    /// The prebuilt `WWW-Authenticate` value of this route's 403.
    pub insufficient_scope_challenge: HeaderValue,
    /// RFC 9470: how, and how recently, the user must have authenticated.
    pub step_up: Option<Box<StepUp>>,
}

impl Requirement {
    /// The prebuilt challenge of a refusal for `reason`.
    pub fn challenge(&self, reason: Denied) -> HeaderValue {
        match (reason, &self.step_up) {
            (Denied::AcrNotAccepted, Some(s)) => s.acr_challenge.clone(),
            (Denied::AuthenticationTooOld, Some(s)) => s.max_age_challenge.clone(),
            _ => self.insufficient_scope_challenge.clone(),
        }
    }
}

/// A claim name and the values it may have.
pub type ClaimRule = (Box<str>, Box<[Box<str>]>);

/// The frozen route table. Routes are kept sorted by specificity (stable, so ties keep file order).
#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    routes: Box<[Route]>,
}

impl RouteTable {
    /// Builds a table from routes in file order.
    pub fn new(mut routes: Vec<Route>) -> Self {
        routes.sort_by_key(|r| r.matcher.specificity());
        RouteTable {
            routes: routes.into(),
        }
    }

    /// The best route for a request, or `None` (answered 404). `host` is lower-case without port;
    /// `path` is already normalised.
    pub fn find(&self, host: Option<&str>, method: &Method, path: &str) -> Option<&Route> {
        self.routes
            .iter()
            .find(|r| r.matcher.matches(host, method, path))
    }

    /// The route a CORS preflight for `announced` belongs to: the route of the request it
    /// announces, when that route has a CORS policy; when no route takes that method here, the
    /// best route with a CORS policy for the host and path (it refuses the method). `None`: the
    /// preflight is an ordinary `OPTIONS` request.
    pub fn find_preflight(
        &self,
        host: Option<&str>,
        announced: &Method,
        path: &str,
    ) -> Option<&Route> {
        match self.find(host, announced, path) {
            Some(r) => r.cors.as_ref().map(|_| r),
            None => self
                .routes
                .iter()
                .filter(|r| r.cors.is_some())
                .find(|r| r.matcher.matches_place(host, path)),
        }
    }

    pub fn len(&self) -> usize {
        self.routes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Route> {
        self.routes.iter()
    }
}

/// Why a verified token may not use a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    #[error("the token lacks a scope the route requires")]
    InsufficientScope,
    #[error("a claim of the token does not have a value the route accepts")]
    ClaimMismatch,
    #[error("the token was not issued by the issuer this route accepts")]
    WrongIssuer,
    #[error("the token's authentication context (acr) is missing or not one this route accepts")]
    AcrNotAccepted,
    #[error(
        "the token's authentication time (auth_time) is missing or older than this route allows"
    )]
    AuthenticationTooOld,
}

/// The decision that a principal may use a route: later steps take it as their argument.
#[derive(Debug, Clone)]
pub struct Permit {
    pub route: Arc<str>,
    pub principal: Principal,
}

/// Checks the route's requirement against a verified principal: issuer, scopes, claims, then
/// the user's authentication (step-up, against the clock).
pub fn authorize(route: &Route, req: &Requirement, principal: Principal) -> Result<Permit, Denied> {
    if let Some(issuer) = &req.issuer {
        if *issuer != principal.issuer {
            return Err(Denied::WrongIssuer);
        }
    }
    if !req.all_scopes.iter().all(|s| principal.scopes.contains(s)) {
        return Err(Denied::InsufficientScope);
    }
    if !req.any_scopes.is_empty() && !req.any_scopes.iter().any(|s| principal.scopes.contains(s)) {
        return Err(Denied::InsufficientScope);
    }
    for (claim, accepted) in req.claims.iter() {
        let ok = principal
            .claims
            .get(claim)
            .is_some_and(|v| claim_matches(v, accepted));
        if !ok {
            return Err(Denied::ClaimMismatch);
        }
    }
    if let Some(s) = &req.step_up {
        step_up::check(s, &principal, crate::clock::unix_secs())?;
    }
    Ok(Permit {
        route: route.id.clone(),
        principal,
    })
}

/// A string claim equals one of the values; a number or boolean compares by its JSON text; an
/// array matches when any of its elements does. Objects and null never match.
fn claim_matches(value: &Value, accepted: &[Box<str>]) -> bool {
    match value {
        Value::String(s) => accepted.iter().any(|a| **a == **s),
        Value::Number(_) | Value::Bool(_) => {
            let text = value.to_string();
            accepted.iter().any(|a| **a == *text)
        }
        Value::Array(items) => items
            .iter()
            .any(|v| !v.is_array() && claim_matches(v, accepted)),
        Value::Null | Value::Object(_) => false,
    }
}

/// The text of a claim as an identity header value: strings as they are, numbers and booleans as
/// JSON, arrays of those joined with commas. `None` for objects, null, or text that is not a
/// valid header value.
pub fn claim_header_value(value: &Value) -> Option<HeaderValue> {
    let text = match value {
        Value::String(s) => s.clone(),
        Value::Number(_) | Value::Bool(_) => value.to_string(),
        Value::Array(items) => {
            let parts: Option<Vec<String>> = items
                .iter()
                .map(|v| match v {
                    Value::String(s) => Some(s.clone()),
                    Value::Number(_) | Value::Bool(_) => Some(v.to_string()),
                    Value::Null | Value::Array(_) | Value::Object(_) => None,
                })
                .collect();
            parts?.join(",")
        }
        Value::Null | Value::Object(_) => return None,
    };
    HeaderValue::from_str(&text).ok()
}

#[cfg(test)]
mod tests;
