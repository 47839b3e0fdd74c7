//! Every response the gateway writes itself, in one place.
//!
//! Each step's error type converts into [`GatewayError`]; [`GatewayError::into_response`] maps it to
//! status, `WWW-Authenticate` (RFC 6750 §3), `Retry-After`, and the JSON body
//! `{"error": "...", "error_description": "..."}` with `Cache-Control: no-store`. The match is
//! exhaustive, so a new error variant cannot ship without its response. Descriptions are fixed
//! text: never a token, a secret or an upstream body.

use http::header::{self, HeaderValue};
use http::{Response, StatusCode};

use crate::auth::{AuthError, BearerError};
use crate::metrics::Decision;
use crate::policy::{Denied, PathError};
use crate::proxy::{self, ProxyError};
use crate::session::SessionError;
use crate::Body;

/// Where a failure came from: drives the log level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The client sent something unusable.
    Client,
    /// The client's credentials were missing, invalid or insufficient.
    Auth,
    /// The identity provider is unavailable.
    Idp,
    /// The upstream failed.
    Upstream,
    /// A bug or an impossible state.
    Internal,
}

/// Every error the request pipeline can end with.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("invalid request path: {0}")]
    Path(#[from] PathError),
    #[error("no route matches the request")]
    NoRoute,
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error("route {route} denied the token: {reason}")]
    Denied {
        reason: Denied,
        /// The route's prebuilt 403 challenge.
        challenge: HeaderValue,
        route: std::sync::Arc<str>,
    },
    #[error(transparent)]
    Proxy(#[from] ProxyError),
    #[error(transparent)]
    Session(#[from] SessionError),
    #[error(transparent)]
    TooLarge(#[from] crate::limits::TooLarge),
    /// The client's request body could not be read to its end (the client went away, or its
    /// framing was broken).
    #[error("the request body could not be read")]
    BodyRead,
}

impl GatewayError {
    pub fn fault(&self) -> Fault {
        match self {
            GatewayError::Path(_)
            | GatewayError::NoRoute
            | GatewayError::TooLarge(_)
            | GatewayError::BodyRead => Fault::Client,
            GatewayError::Auth(AuthError::IdpUnavailable { .. }) => Fault::Idp,
            GatewayError::Auth(AuthError::Bearer(_) | AuthError::InvalidToken(_)) => Fault::Auth,
            GatewayError::Denied { .. } => Fault::Auth,
            GatewayError::Proxy(ProxyError::BadRequest(_)) => Fault::Internal,
            GatewayError::Proxy(
                ProxyError::Unreachable { .. }
                | ProxyError::Timeout { .. }
                | ProxyError::Overloaded { .. },
            ) => Fault::Upstream,
            GatewayError::Session(e) => match e {
                SessionError::NoGrant => Fault::Auth,
                SessionError::InvalidHandle
                | SessionError::HandleRequired
                | SessionError::GrantBusy
                | SessionError::GrantSessionLimit { .. }
                | SessionError::LoginIdentityMismatch => Fault::Client,
                SessionError::CapacityExhausted
                | SessionError::SeatsExhausted
                | SessionError::Throttled { .. }
                | SessionError::SessionExpired
                | SessionError::LoginFailed { .. }
                | SessionError::LoginError
                | SessionError::AuthFailed => Fault::Upstream,
                SessionError::Store(_) | SessionError::Gone => Fault::Internal,
            },
        }
    }

    /// The auth decision this error records, if it is an authentication or policy outcome.
    pub fn decision(&self) -> Option<Decision> {
        match self {
            GatewayError::Path(_)
            | GatewayError::NoRoute
            | GatewayError::Proxy(_)
            | GatewayError::TooLarge(_)
            | GatewayError::BodyRead => None,
            GatewayError::Session(SessionError::NoGrant) => Some(Decision::InvalidToken),
            GatewayError::Session(_) => None,
            GatewayError::Auth(AuthError::Bearer(BearerError::Missing)) => {
                Some(Decision::MissingToken)
            }
            GatewayError::Auth(AuthError::Bearer(
                BearerError::Duplicate
                | BearerError::Empty
                | BearerError::BadCharacters
                | BearerError::TooLarge,
            )) => Some(Decision::InvalidRequest),
            GatewayError::Auth(AuthError::InvalidToken(_)) => Some(Decision::InvalidToken),
            GatewayError::Auth(AuthError::IdpUnavailable { .. }) => Some(Decision::IdpUnavailable),
            GatewayError::Denied {
                reason: Denied::WrongIssuer,
                ..
            } => Some(Decision::InvalidToken),
            GatewayError::Denied {
                reason: Denied::InsufficientScope | Denied::ClaimMismatch,
                ..
            } => Some(Decision::InsufficientScope),
        }
    }

    /// The response for this error. `realm` is the configured realm; `missing` is its prebuilt
    /// bare challenge.
    pub fn into_response(self, realm: &str, missing: &HeaderValue) -> Response<Body> {
        let bearer = |code: &str, desc: &str| {
            HeaderValue::from_str(&format!(
                "Bearer realm=\"{realm}\", error=\"{code}\", error_description=\"{desc}\""
            ))
            .ok()
        };
        match self {
            GatewayError::Path(e) => reply(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                &e.to_string(),
                None,
                None,
            ),
            GatewayError::NoRoute => reply(
                StatusCode::NOT_FOUND,
                "not_found",
                "no route matches the request",
                None,
                None,
            ),
            GatewayError::Auth(AuthError::Bearer(BearerError::Missing)) => reply(
                StatusCode::UNAUTHORIZED,
                "invalid_token",
                "a bearer token is required",
                Some(missing.clone()),
                None,
            ),
            GatewayError::Auth(AuthError::Bearer(
                e @ (BearerError::Duplicate
                | BearerError::Empty
                | BearerError::BadCharacters
                | BearerError::TooLarge),
            )) => {
                let desc = e.to_string();
                reply(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    &desc,
                    bearer("invalid_request", &desc),
                    None,
                )
            }
            GatewayError::Auth(AuthError::InvalidToken(e)) => {
                let desc = e.to_string();
                reply(
                    StatusCode::UNAUTHORIZED,
                    "invalid_token",
                    &desc,
                    bearer("invalid_token", &desc),
                    None,
                )
            }
            GatewayError::Auth(AuthError::IdpUnavailable { retry_after, .. }) => reply(
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                "the identity provider cannot validate the token right now; retry later",
                None,
                Some(retry_after),
            ),
            GatewayError::Denied {
                reason: Denied::WrongIssuer,
                ..
            } => {
                let desc = Denied::WrongIssuer.to_string();
                reply(
                    StatusCode::UNAUTHORIZED,
                    "invalid_token",
                    &desc,
                    bearer("invalid_token", &desc),
                    None,
                )
            }
            GatewayError::Denied {
                reason: reason @ (Denied::InsufficientScope | Denied::ClaimMismatch),
                challenge,
                ..
            } => reply(
                StatusCode::FORBIDDEN,
                "insufficient_scope",
                &reason.to_string(),
                Some(challenge),
                None,
            ),
            GatewayError::Proxy(ProxyError::Unreachable { .. }) => reply(
                StatusCode::BAD_GATEWAY,
                "upstream_unreachable",
                "the upstream could not be reached",
                None,
                None,
            ),
            GatewayError::Proxy(ProxyError::Timeout { .. }) => reply(
                StatusCode::GATEWAY_TIMEOUT,
                "upstream_timeout",
                "the upstream did not answer in time",
                None,
                None,
            ),
            GatewayError::Session(e) => session_reply(e, &bearer),
            GatewayError::BodyRead => reply(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "the request body could not be read",
                None,
                None,
            ),
            GatewayError::TooLarge(e) => reply(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                &e.to_string(),
                None,
                None,
            ),
            GatewayError::Proxy(ProxyError::Overloaded { .. }) => reply(
                StatusCode::SERVICE_UNAVAILABLE,
                "upstream_overloaded",
                "the upstream has its maximum number of requests in flight; retry shortly",
                None,
                Some(1),
            ),
            GatewayError::Proxy(ProxyError::BadRequest(_)) => reply(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal_error",
                "the gateway could not build the upstream request",
                None,
                None,
            ),
        }
    }
}

/// The session layer's error table (design §6.10).
fn session_reply(
    e: SessionError,
    bearer: &dyn Fn(&str, &str) -> Option<HeaderValue>,
) -> Response<Body> {
    let desc = e.to_string();
    let (status, code, retry_after) = match e {
        SessionError::NoGrant => {
            return reply(
                StatusCode::UNAUTHORIZED,
                "invalid_token",
                &desc,
                bearer("invalid_token", &desc),
                None,
            )
        }
        SessionError::InvalidHandle => (StatusCode::BAD_REQUEST, "invalid_session_handle", None),
        SessionError::HandleRequired => (StatusCode::BAD_REQUEST, "session_handle_required", None),
        SessionError::GrantBusy => (StatusCode::TOO_MANY_REQUESTS, "grant_busy", Some(1)),
        SessionError::GrantSessionLimit { retry_after } => (
            StatusCode::TOO_MANY_REQUESTS,
            "grant_session_limit",
            Some(retry_after),
        ),
        SessionError::CapacityExhausted => (
            StatusCode::SERVICE_UNAVAILABLE,
            "upstream_capacity_exhausted",
            Some(5),
        ),
        SessionError::SeatsExhausted => (
            StatusCode::SERVICE_UNAVAILABLE,
            "upstream_seats_exhausted",
            Some(30),
        ),
        SessionError::Throttled { retry_after } => (
            StatusCode::SERVICE_UNAVAILABLE,
            "upstream_throttled",
            Some(retry_after),
        ),
        SessionError::SessionExpired => (
            StatusCode::SERVICE_UNAVAILABLE,
            "upstream_session_expired",
            Some(0),
        ),
        SessionError::LoginFailed { retry_after } => (
            StatusCode::BAD_GATEWAY,
            "upstream_login_failed",
            Some(retry_after),
        ),
        SessionError::LoginError => (StatusCode::BAD_GATEWAY, "upstream_login_error", None),
        SessionError::AuthFailed => (StatusCode::BAD_GATEWAY, "upstream_auth_failed", None),
        SessionError::LoginIdentityMismatch => {
            (StatusCode::FORBIDDEN, "login_identity_mismatch", None)
        }
        SessionError::Store(_) | SessionError::Gone => (
            StatusCode::SERVICE_UNAVAILABLE,
            "session_store_unavailable",
            Some(5),
        ),
    };
    reply(status, code, &desc, None, retry_after)
}

/// A gateway-made JSON response.
pub fn reply(
    status: StatusCode,
    error: &str,
    description: &str,
    challenge: Option<HeaderValue>,
    retry_after: Option<u64>,
) -> Response<Body> {
    let body = serde_json::json!({ "error": error, "error_description": description });
    let mut resp = Response::new(proxy::full(body.to_string()));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Some(c) = challenge {
        h.insert(header::WWW_AUTHENTICATE, c);
    }
    if let Some(secs) = retry_after {
        h.insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::InvalidToken;

    fn missing() -> HeaderValue {
        HeaderValue::from_static("Bearer realm=\"tollgate\"")
    }

    fn respond(e: GatewayError) -> Response<Body> {
        e.into_response("tollgate", &missing())
    }

    #[test]
    fn missing_token_has_a_bare_challenge() {
        let r = respond(AuthError::Bearer(BearerError::Missing).into());
        assert_eq!(r.status(), 401);
        assert_eq!(
            r.headers()[header::WWW_AUTHENTICATE],
            "Bearer realm=\"tollgate\""
        );
        assert_eq!(r.headers()[header::CACHE_CONTROL], "no-store");
    }

    #[test]
    fn malformed_header_is_invalid_request() {
        let r = respond(AuthError::Bearer(BearerError::Duplicate).into());
        assert_eq!(r.status(), 400);
        assert_eq!(
            r.headers()[header::WWW_AUTHENTICATE],
            "Bearer realm=\"tollgate\", error=\"invalid_request\", error_description=\"more than one Authorization header\""
        );
    }

    #[test]
    fn invalid_token() {
        let r = respond(AuthError::InvalidToken(InvalidToken::Expired).into());
        assert_eq!(r.status(), 401);
        assert_eq!(
            r.headers()[header::WWW_AUTHENTICATE],
            "Bearer realm=\"tollgate\", error=\"invalid_token\", error_description=\"the token has expired\""
        );
    }

    #[test]
    fn idp_down_is_503_with_retry_after_and_no_challenge() {
        let r = respond(
            AuthError::IdpUnavailable {
                issuer: "erp".into(),
                retry_after: 5,
            }
            .into(),
        );
        assert_eq!(r.status(), 503);
        assert!(r.headers().get(header::WWW_AUTHENTICATE).is_none());
        assert_eq!(r.headers()[header::RETRY_AFTER], "5");
    }

    #[test]
    fn insufficient_scope_uses_the_routes_challenge() {
        let challenge = HeaderValue::from_static(
            "Bearer realm=\"tollgate\", error=\"insufficient_scope\", scope=\"api erp:write\"",
        );
        let r = respond(GatewayError::Denied {
            reason: Denied::InsufficientScope,
            challenge: challenge.clone(),
            route: "w".into(),
        });
        assert_eq!(r.status(), 403);
        assert_eq!(r.headers()[header::WWW_AUTHENTICATE], challenge);
    }

    #[test]
    fn upstream_failures() {
        let r = respond(
            ProxyError::Unreachable {
                upstream: "u".into(),
                reason: "refused".into(),
            }
            .into(),
        );
        assert_eq!(r.status(), 502);
        assert!(r.headers().get(header::WWW_AUTHENTICATE).is_none());
        let r = respond(
            ProxyError::Timeout {
                upstream: "u".into(),
                timeout: std::time::Duration::from_secs(1),
            }
            .into(),
        );
        assert_eq!(r.status(), 504);
        assert_eq!(respond(GatewayError::NoRoute).status(), 404);
    }
}
