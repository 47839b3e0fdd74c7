//! Every response the gateway writes itself, in one place.
//!
//! Each step's error type converts into [`GatewayError`]. [`GatewayError::class`] is the one
//! table: for every error it gives the status, the `error` code, the [`Fault`] (which drives the
//! log level), the auth [`Decision`] the metrics record, the `WWW-Authenticate` challenge (RFC
//! 6750 §3), the `Retry-After` and the description. The response, the log line and the metric
//! decision are all derived from that one [`Class`], and its match is exhaustive, so a new error
//! cannot ship without its answer.
//!
//! Bodies are `{"error": "...", "error_description": "..."}` with `Cache-Control: no-store`.
//! Descriptions are the errors' fixed texts: never a token, a secret or an upstream body.

use std::borrow::Cow;
use std::collections::HashMap;

use http::header::{self, HeaderValue};
use http::{Response, StatusCode};

use crate::auth::{AuthError, BearerError, InvalidToken};
use crate::metadata::MethodNotAllowed;
use crate::metrics::Decision;
use crate::policy::cors::CorsRefused;
use crate::policy::{Denied, PathError};
use crate::proxy::{self, ProxyError};
use crate::session::{RefusedLogin, SessionError};
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
    #[error("ambiguous request framing: {0}")]
    Framing(#[from] crate::framing::FramingError),
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
    #[error(transparent)]
    BodyTimeout(#[from] crate::limits::BodyTimeout),
    #[error("CORS preflight refused: {0}")]
    Cors(#[from] CorsRefused),
    #[error(transparent)]
    Metadata(#[from] MethodNotAllowed),
}

/// Which `WWW-Authenticate` challenge an error answer carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    None,
    /// `Bearer realm="…"`: no credentials were sent (RFC 6750 §3.1).
    Bare,
    /// `error="invalid_request"` with the error's description.
    InvalidRequest,
    /// `error="invalid_token"` with the error's description.
    InvalidToken,
    /// A challenge prebuilt with the route (`insufficient_scope` and the route's scopes, or
    /// `insufficient_user_authentication` and its step-up requirement).
    Prebuilt(HeaderValue),
}

/// The `Retry-After` of an error answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RetryAfter {
    Seconds(u64),
    /// The upstream's own value, passed on as it came (seconds or an HTTP date).
    Upstream(HeaderValue),
}

/// How one error leaves the gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Class {
    pub status: StatusCode,
    /// The `error` member of the body.
    pub code: &'static str,
    pub fault: Fault,
    /// The auth decision the request metrics record, for authentication and policy outcomes.
    pub decision: Option<Decision>,
    pub challenge: Challenge,
    pub retry_after: Option<RetryAfter>,
    /// The `Allow` of a 405.
    pub allow: Option<&'static str>,
    /// The `error_description`: fixed text, never anything the client or the upstream sent.
    pub description: Cow<'static, str>,
}

impl Class {
    fn new(status: StatusCode, code: &'static str, fault: Fault) -> Self {
        Class {
            status,
            code,
            fault,
            decision: None,
            challenge: Challenge::None,
            retry_after: None,
            allow: None,
            description: Cow::Borrowed(""),
        }
    }

    /// The description, where it is not the error's own text.
    fn says(mut self, text: impl Into<Cow<'static, str>>) -> Self {
        self.description = text.into();
        self
    }

    fn decision(mut self, d: Decision) -> Self {
        self.decision = Some(d);
        self
    }

    fn challenge(mut self, c: Challenge) -> Self {
        self.challenge = c;
        self
    }

    fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(RetryAfter::Seconds(secs));
        self
    }

    fn allow(mut self, methods: &'static str) -> Self {
        self.allow = Some(methods);
        self
    }
}

impl GatewayError {
    /// The one table: every error's status, code, fault, decision, challenge, retry-after and
    /// description.
    pub fn class(&self) -> Class {
        let mut class = self.row();
        if class.description.is_empty() {
            class.description = Cow::Owned(self.to_string());
        }
        class
    }

    fn row(&self) -> Class {
        use Fault::{Auth, Client, Idp, Internal, Upstream};
        use StatusCode as S;
        match self {
            GatewayError::Path(e) => {
                Class::new(S::BAD_REQUEST, "invalid_request", Client).says(e.to_string())
            }
            GatewayError::NoRoute => Class::new(S::NOT_FOUND, "not_found", Client),
            GatewayError::Framing(e) => {
                Class::new(S::BAD_REQUEST, "invalid_request", Client).says(e.to_string())
            }
            GatewayError::TooLarge(_) => {
                Class::new(S::PAYLOAD_TOO_LARGE, "payload_too_large", Client)
            }
            GatewayError::BodyTimeout(_) => {
                Class::new(S::REQUEST_TIMEOUT, "request_timeout", Client)
                    .says("the request body stalled for longer than the server allows")
            }
            GatewayError::Auth(AuthError::Bearer(BearerError::Missing)) => {
                Class::new(S::UNAUTHORIZED, "invalid_token", Auth)
                    .decision(Decision::MissingToken)
                    .challenge(Challenge::Bare)
                    .says("a bearer token is required")
            }
            GatewayError::Auth(AuthError::Bearer(
                BearerError::Duplicate
                | BearerError::Empty
                | BearerError::BadCharacters
                | BearerError::TooLarge,
            )) => Class::new(S::BAD_REQUEST, "invalid_request", Auth)
                .decision(Decision::InvalidRequest)
                .challenge(Challenge::InvalidRequest),
            GatewayError::Auth(AuthError::InvalidToken(_)) => {
                Class::new(S::UNAUTHORIZED, "invalid_token", Auth)
                    .decision(Decision::InvalidToken)
                    .challenge(Challenge::InvalidToken)
            }
            GatewayError::Denied {
                reason: reason @ Denied::WrongIssuer,
                ..
            } => Class::new(S::UNAUTHORIZED, "invalid_token", Auth)
                .decision(Decision::InvalidToken)
                .challenge(Challenge::InvalidToken)
                .says(reason.to_string()),
            GatewayError::Auth(AuthError::IdpUnavailable { retry_after, .. }) => {
                Class::new(S::SERVICE_UNAVAILABLE, "temporarily_unavailable", Idp)
                    .decision(Decision::IdpUnavailable)
                    .retry_after(*retry_after)
                    .says("the identity provider cannot validate the token right now; retry later")
            }
            GatewayError::Denied {
                reason: reason @ (Denied::InsufficientScope | Denied::ClaimMismatch),
                challenge,
                ..
            } => Class::new(S::FORBIDDEN, "insufficient_scope", Auth)
                .decision(Decision::InsufficientScope)
                .challenge(Challenge::Prebuilt(challenge.clone()))
                .says(reason.to_string()),
            // RFC 9470 §3: a 401, so that the client authenticates the user again.
            GatewayError::Denied {
                reason: reason @ (Denied::AcrNotAccepted | Denied::AuthenticationTooOld),
                challenge,
                ..
            } => Class::new(S::UNAUTHORIZED, "insufficient_user_authentication", Auth)
                .decision(Decision::InsufficientUserAuthentication)
                .challenge(Challenge::Prebuilt(challenge.clone()))
                .says(reason.to_string()),
            GatewayError::Cors(e) => {
                Class::new(S::FORBIDDEN, "cors_preflight_refused", Client).says(e.to_string())
            }
            GatewayError::Metadata(e) => {
                Class::new(S::METHOD_NOT_ALLOWED, "method_not_allowed", Client)
                    .allow(MethodNotAllowed::ALLOW)
                    .says(e.to_string())
            }
            GatewayError::Proxy(ProxyError::Unreachable { .. }) => {
                Class::new(S::BAD_GATEWAY, "upstream_unreachable", Upstream)
                    .says("the upstream could not be reached")
            }
            GatewayError::Proxy(ProxyError::Timeout { .. }) => {
                Class::new(S::GATEWAY_TIMEOUT, "upstream_timeout", Upstream)
                    .says("the upstream did not answer in time")
            }
            GatewayError::Proxy(ProxyError::Overloaded { .. }) => {
                Class::new(S::SERVICE_UNAVAILABLE, "upstream_overloaded", Upstream)
                    .retry_after(1)
                    .says(
                        "the upstream has its maximum number of requests in flight; retry shortly",
                    )
            }
            GatewayError::Proxy(ProxyError::UpstreamRequest(_)) => {
                Class::new(S::INTERNAL_SERVER_ERROR, "internal_error", Internal)
                    .says("the gateway could not build the upstream request")
            }
            GatewayError::Session(e) => session_class(e),
        }
    }

    /// Where the failure came from (the log level).
    pub fn fault(&self) -> Fault {
        self.class().fault
    }

    /// The auth decision this error records, if it is an authentication or policy outcome.
    pub fn decision(&self) -> Option<Decision> {
        self.class().decision
    }

    /// The response for this error.
    pub fn into_response(self, challenges: &Challenges) -> Response<Body> {
        self.class().into_response(challenges)
    }
}

impl Class {
    /// The answer of this class: status, JSON body, challenge and `Retry-After`.
    pub fn into_response(self, challenges: &Challenges) -> Response<Body> {
        let description = &self.description;
        let challenge = match &self.challenge {
            Challenge::None => None,
            Challenge::Bare => Some(challenges.bare.clone()),
            Challenge::InvalidRequest => Some(challenges.get("invalid_request", description)),
            Challenge::InvalidToken => Some(challenges.get("invalid_token", description)),
            Challenge::Prebuilt(v) => Some(v.clone()),
        };
        let mut resp = reply(self.status, self.code, description);
        let h = resp.headers_mut();
        if let Some(c) = challenge {
            h.insert(header::WWW_AUTHENTICATE, c);
        }
        match self.retry_after {
            Some(RetryAfter::Seconds(secs)) => {
                h.insert(header::RETRY_AFTER, HeaderValue::from(secs));
            }
            Some(RetryAfter::Upstream(v)) => {
                h.insert(header::RETRY_AFTER, v);
            }
            None => {}
        }
        if let Some(methods) = self.allow {
            h.insert(header::ALLOW, HeaderValue::from_static(methods));
        }
        resp
    }
}

/// The session layer's rows of the table (design §6.10).
fn session_class(e: &SessionError) -> Class {
    use Fault::{Auth, Client, Internal, Upstream};
    use StatusCode as S;
    match e {
        SessionError::GrantRequired => Class::new(S::UNAUTHORIZED, "invalid_token", Auth)
            .decision(Decision::MissingToken)
            .challenge(Challenge::Bare),
        SessionError::BodyRead => Class::new(S::BAD_REQUEST, "invalid_request", Client),
        SessionError::NoGrant => Class::new(S::UNAUTHORIZED, "invalid_token", Auth)
            .decision(Decision::InvalidToken)
            .challenge(Challenge::InvalidToken),
        SessionError::InvalidHandle => Class::new(S::BAD_REQUEST, "invalid_session_handle", Client),
        SessionError::HandleRequired => {
            Class::new(S::BAD_REQUEST, "session_handle_required", Client)
        }
        SessionError::GrantBusy => {
            Class::new(S::TOO_MANY_REQUESTS, "grant_busy", Client).retry_after(1)
        }
        SessionError::GrantSessionLimit { retry_after } => {
            Class::new(S::TOO_MANY_REQUESTS, "grant_session_limit", Client)
                .retry_after(*retry_after)
        }
        SessionError::CapacityExhausted => Class::new(
            S::SERVICE_UNAVAILABLE,
            "upstream_capacity_exhausted",
            Upstream,
        )
        .retry_after(5),
        SessionError::SeatsExhausted => {
            Class::new(S::SERVICE_UNAVAILABLE, "upstream_seats_exhausted", Upstream).retry_after(30)
        }
        SessionError::Throttled { retry_after } => {
            Class::new(S::SERVICE_UNAVAILABLE, "upstream_throttled", Upstream)
                .retry_after(*retry_after)
        }
        SessionError::SessionExpired => {
            Class::new(S::SERVICE_UNAVAILABLE, "upstream_session_expired", Upstream).retry_after(0)
        }
        SessionError::SignedOut => Class::new(S::UNAUTHORIZED, "upstream_session_expired", Client),
        SessionError::LoginFailed { retry_after } => {
            Class::new(S::BAD_GATEWAY, "upstream_login_failed", Upstream).retry_after(*retry_after)
        }
        SessionError::LoginError => Class::new(S::BAD_GATEWAY, "upstream_login_error", Upstream),
        SessionError::AuthFailed => Class::new(S::BAD_GATEWAY, "upstream_auth_failed", Upstream),
        SessionError::LoginIdentityMismatch => {
            Class::new(S::FORBIDDEN, "login_identity_mismatch", Client)
        }
        SessionError::LoginRefused {
            status,
            refused,
            retry_after,
        } => {
            let code = match refused {
                RefusedLogin::SeatLimit => "upstream_seats_exhausted",
                RefusedLogin::BadCredentials => "upstream_login_failed",
                RefusedLogin::Throttled => "upstream_throttled",
                RefusedLogin::Error => "upstream_login_error",
            };
            let mut class = Class::new(*status, code, Client);
            class.retry_after = retry_after.clone().map(RetryAfter::Upstream);
            class
        }
        SessionError::Store(_) | SessionError::Gone => Class::new(
            S::SERVICE_UNAVAILABLE,
            "session_store_unavailable",
            Internal,
        )
        .retry_after(5),
    }
}

/// The `WWW-Authenticate` values of one configuration, built once: the bare challenge and an
/// `invalid_token` or `invalid_request` challenge for every fixed description, so that a refusal
/// costs a lookup, not a formatting. Each starts with the configuration's challenge head: the
/// realm, and the RFC 9728 `resource_metadata` when the resource publishes metadata.
#[derive(Debug, Clone)]
pub struct Challenges {
    head: std::sync::Arc<str>,
    bare: HeaderValue,
    invalid_token: HashMap<String, HeaderValue>,
    invalid_request: HashMap<String, HeaderValue>,
}

impl Challenges {
    /// The challenges of `realm`, without metadata.
    pub fn new(realm: &str) -> Self {
        Self::with_head(&crate::metadata::challenge_head(realm, None))
    }

    /// The challenges starting with `head` ([`crate::config::Config::challenge_head`]).
    pub fn with_head(head: &str) -> Self {
        let mut c = Challenges {
            head: head.into(),
            bare: HeaderValue::from_str(head)
                .unwrap_or_else(|_| HeaderValue::from_static("Bearer")),
            invalid_token: HashMap::new(),
            invalid_request: HashMap::new(),
        };
        let invalid_token = InvalidToken::ALL.iter().map(ToString::to_string).chain([
            Denied::WrongIssuer.to_string(),
            SessionError::NoGrant.to_string(),
        ]);
        for desc in invalid_token {
            let v = c.format("invalid_token", &desc);
            c.invalid_token.insert(desc, v);
        }
        for e in BearerError::MALFORMED {
            let desc = e.to_string();
            let v = c.format("invalid_request", &desc);
            c.invalid_request.insert(desc, v);
        }
        c
    }

    /// The `invalid_token` or `invalid_request` challenge with `description`: prebuilt for
    /// every fixed description (formatted here only for one this table does not list).
    fn get(&self, code: &'static str, description: &str) -> HeaderValue {
        let built = if code == "invalid_token" {
            &self.invalid_token
        } else {
            &self.invalid_request
        };
        built
            .get(description)
            .cloned()
            .unwrap_or_else(|| self.format(code, description))
    }

    fn format(&self, code: &str, description: &str) -> HeaderValue {
        let head = &self.head;
        HeaderValue::from_str(&format!(
            "{head}, error=\"{code}\", error_description=\"{description}\""
        ))
        .unwrap_or_else(|_| self.bare.clone())
    }
}

/// A gateway-made JSON response: `{"error", "error_description"}`, not cacheable.
pub fn reply(status: StatusCode, error: &str, description: &str) -> Response<Body> {
    let body = serde_json::json!({ "error": error, "error_description": description });
    let mut resp = Response::new(proxy::full(body.to_string()));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

#[cfg(test)]
mod tests;
