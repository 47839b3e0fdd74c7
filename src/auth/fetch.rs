//! The one HTTP client tollgate uses to talk to identity providers (discovery and JWKS; later
//! introspection). Built once at start-up, pooled, with rustls and the system's root certificates.
//!
//! Every call has a timeout and a body-size cap, so a slow or hostile IdP can neither hang a
//! refresh nor make the gateway buffer without bound. Error messages name the URL and the kind of
//! failure, never a response body.

use std::time::Duration;

use bytes::Bytes;
use http::header::HeaderValue;
use http::{header, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use url::Url;

/// Largest discovery or JWKS document accepted.
pub const MAX_DOCUMENT_BYTES: usize = 1024 * 1024;

/// Why a fetch failed. Each names the call (`GET` of a document, `POST` of an introspection
/// form) and its URL.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{method} {url}: timed out after {timeout:?}")]
    Timeout {
        method: Method,
        url: String,
        timeout: Duration,
    },
    #[error("{method} {url}: {reason}")]
    Connect {
        method: Method,
        url: String,
        reason: String,
    },
    #[error("{method} {url}: answered HTTP {status}")]
    Status {
        method: Method,
        url: String,
        status: StatusCode,
    },
    #[error(
        "{method} {url}: the document is larger than {MAX_DOCUMENT_BYTES} bytes or the body failed"
    )]
    Body { method: Method, url: String },
    #[error("{method} {url}: not the expected JSON document ({reason})")]
    Json {
        method: Method,
        url: String,
        reason: String,
    },
}

/// A fetched document and the freshness its server declared.
#[derive(Debug)]
pub struct Fetched {
    pub body: Bytes,
    /// `Cache-Control: max-age`, when present.
    pub max_age: Option<Duration>,
}

/// The pooled IdP client.
#[derive(Clone, Debug)]
pub struct IdpClient {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl IdpClient {
    pub fn new() -> Self {
        IdpClient {
            client: pooled_https_client(),
        }
    }

    /// The underlying pooled client (a handle on the same pool), for the trace exporter.
    pub(crate) fn http(&self) -> Client<HttpsConnector<HttpConnector>, Full<Bytes>> {
        self.client.clone()
    }

    /// GETs `url` expecting a 200 JSON document, within `timeout` for the whole exchange.
    /// `call` names the exchange's span in the request's trace (`jwks fetch`).
    pub async fn get(
        &self,
        call: &'static str,
        url: &Url,
        timeout: Duration,
    ) -> Result<Fetched, FetchError> {
        let req = Request::get(url.as_str()).body(Full::new(Bytes::new()));
        self.exchange(call, Method::GET, url, req, timeout).await
    }

    /// POSTs an `application/x-www-form-urlencoded` body, with an optional `Authorization`
    /// header, expecting a 200 JSON document.
    pub async fn post_form(
        &self,
        call: &'static str,
        url: &Url,
        form: String,
        authorization: Option<HeaderValue>,
        timeout: Duration,
    ) -> Result<Fetched, FetchError> {
        let mut b = Request::post(url.as_str())
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
        if let Some(a) = authorization {
            b = b.header(header::AUTHORIZATION, a);
        }
        let req = b.body(Full::new(Bytes::from(form)));
        self.exchange(call, Method::POST, url, req, timeout).await
    }

    async fn exchange(
        &self,
        call: &'static str,
        method: Method,
        url: &Url,
        req: Result<Request<Full<Bytes>>, http::Error>,
        timeout: Duration,
    ) -> Result<Fetched, FetchError> {
        let url_s = url.as_str().to_owned();
        let mut req = req.map_err(|e| FetchError::Connect {
            method: method.clone(),
            url: url_s.clone(),
            reason: e.to_string(),
        })?;
        // A fetch made for a request (a key set for an unknown kid, an introspection call) is a
        // span of its trace, and tells the IdP so.
        let step = crate::telemetry::call(call, req.method(), url);
        step.inject(req.headers_mut());
        let fetched = self.fetch(url_s, req, timeout).await;
        match &fetched {
            Ok(_) => step.status(200),
            Err(FetchError::Status { status, .. }) => step.status(status.as_u16()),
            Err(FetchError::Timeout { .. }) => step.fail("timeout"),
            Err(FetchError::Connect { .. }) => step.fail("connect"),
            Err(FetchError::Body { .. }) | Err(FetchError::Json { .. }) => step.fail("body"),
        }
        fetched
    }

    async fn fetch(
        &self,
        url_s: String,
        mut req: Request<Full<Bytes>>,
        timeout: Duration,
    ) -> Result<Fetched, FetchError> {
        let method = req.method().clone();
        let h = req.headers_mut();
        h.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        h.insert(
            header::USER_AGENT,
            HeaderValue::from_static(concat!("tollgate/", env!("CARGO_PKG_VERSION"))),
        );
        let exchange = async {
            // A kept connection the provider closes as the request goes out (its keep-alive ran
            // out: oidc-provider and other Node.js servers keep one for 5 s) gets no answer.
            // Both calls here are queries (a document, or RFC 7662's introspection, which
            // changes nothing), so the copy is sent once more, on another connection. A
            // `private_key_jwt` assertion goes again as it was: a provider that closes a kept
            // connection under a request has not read it, and one that read it and then broke
            // the connection refuses the repeated `jti`, a failed call like the first.
            let copy = crate::net::copy_request(&req, req.body().clone());
            let sent = match self.client.request(req).await {
                Err(e) if crate::net::closed_unanswered(&e) => self.client.request(copy).await,
                sent => sent,
            };
            let resp = sent.map_err(|e| FetchError::Connect {
                method: method.clone(),
                url: url_s.clone(),
                reason: describe_client_error(&e),
            })?;
            if resp.status() != StatusCode::OK {
                return Err(FetchError::Status {
                    method: method.clone(),
                    url: url_s.clone(),
                    status: resp.status(),
                });
            }
            let max_age = resp
                .headers()
                .get(header::CACHE_CONTROL)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_max_age);
            let body = Limited::new(resp.into_body(), MAX_DOCUMENT_BYTES)
                .collect()
                .await
                .map_err(|_| FetchError::Body {
                    method: method.clone(),
                    url: url_s.clone(),
                })?
                .to_bytes();
            Ok(Fetched { body, max_age })
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(FetchError::Timeout {
                method,
                url: url_s,
                timeout,
            }),
        }
    }
}

impl Default for IdpClient {
    fn default() -> Self {
        Self::new()
    }
}

/// A pooled HTTP/1.1 and HTTP/2 client with rustls and the system's root certificates (none
/// found: https:// fails to verify, and the log says so once).
fn pooled_https_client() -> Client<HttpsConnector<HttpConnector>, Full<Bytes>> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(Duration::from_secs(5)));
    http.set_nodelay(true);
    let builder = hyper_rustls::HttpsConnectorBuilder::new();
    let https = match builder.with_native_roots() {
        Ok(b) => b
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http),
        Err(e) => {
            tracing::warn!(error = %e, "no system root certificates found; https:// identity providers will fail to verify");
            let roots = rustls::RootCertStore::empty();
            let tls = rustls::ClientConfig::builder()
                .with_root_certificates(roots)
                .with_no_client_auth();
            hyper_rustls::HttpsConnectorBuilder::new()
                .with_tls_config(tls)
                .https_or_http()
                .enable_http1()
                .enable_http2()
                .wrap_connector(http)
        }
    };
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .build(https)
}

/// A short, body-free description of a client error (connection refused, TLS failure, …).
fn describe_client_error(e: &hyper_util::client::legacy::Error) -> String {
    use std::error::Error as _;
    let mut msg = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    msg
}

/// `max-age=N` from a Cache-Control value (`no-store`/`no-cache` count as zero).
pub fn parse_max_age(v: &str) -> Option<Duration> {
    let mut age = None;
    for directive in v.split(',') {
        let d = directive.trim();
        if d.eq_ignore_ascii_case("no-store") || d.eq_ignore_ascii_case("no-cache") {
            return Some(Duration::ZERO);
        }
        if let Some((k, val)) = d.split_once('=') {
            if k.trim().eq_ignore_ascii_case("max-age") {
                age = val
                    .trim()
                    .trim_matches('"')
                    .parse::<u64>()
                    .ok()
                    .map(Duration::from_secs);
            }
        }
    }
    age
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An error names the call as it was made: an introspection call is a `POST`.
    #[tokio::test]
    async fn an_error_names_the_method_and_the_url() {
        let refused = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let url = Url::parse(&format!("http://{refused}/introspect")).unwrap();
        let client = IdpClient::new();
        let bound = Duration::from_secs(5);
        let form = "token=x".to_owned();
        let e = client
            .post_form("introspection", &url, form, None, bound)
            .await
            .unwrap_err();
        assert!(e.to_string().starts_with(&format!("POST {url}: ")), "{e}");
        let e = client.get("jwks fetch", &url, bound).await.unwrap_err();
        assert!(e.to_string().starts_with(&format!("GET {url}: ")), "{e}");
    }

    #[test]
    fn max_age() {
        assert_eq!(
            parse_max_age("public, max-age=300"),
            Some(Duration::from_secs(300))
        );
        assert_eq!(
            parse_max_age("max-age=\"60\""),
            Some(Duration::from_secs(60))
        );
        assert_eq!(parse_max_age("no-store"), Some(Duration::ZERO));
        assert_eq!(parse_max_age("public"), None);
        assert_eq!(parse_max_age("max-age=abc"), None);
    }
}
