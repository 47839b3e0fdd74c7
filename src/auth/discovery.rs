//! OpenID Connect Discovery / RFC 8414 metadata: where an issuer keeps its key set and its
//! introspection endpoint. The document must name the configured issuer exactly (OIDC Discovery
//! §4.3), and every URL it gives must pass the same https-or-loopback rule as configured URLs.

use std::time::Duration;

use serde::Deserialize;
use url::Url;

use super::fetch::{FetchError, IdpClient};

/// The parts of the metadata tollgate uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metadata {
    pub jwks_uri: Option<Url>,
    pub introspection_endpoint: Option<Url>,
}

#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error("discovery document of {url}: {reason}")]
    Invalid { url: String, reason: String },
}

/// Fetches and checks the metadata at `url` for `issuer`.
pub async fn fetch(
    client: &IdpClient,
    url: &Url,
    issuer: &str,
    allow_http: bool,
    timeout: Duration,
) -> Result<Metadata, DiscoveryError> {
    let doc = client.get("discovery fetch", url, timeout).await?;
    parse(&doc.body, url, issuer, allow_http)
}

/// Checks a metadata document (pure, for tests).
pub fn parse(
    body: &[u8],
    url: &Url,
    issuer: &str,
    allow_http: bool,
) -> Result<Metadata, DiscoveryError> {
    #[derive(Deserialize)]
    struct Raw {
        issuer: Option<String>,
        jwks_uri: Option<String>,
        introspection_endpoint: Option<String>,
    }
    let err = |reason: String| DiscoveryError::Invalid {
        url: url.to_string(),
        reason,
    };
    let raw: Raw =
        serde_json::from_slice(body).map_err(|e| err(format!("not JSON metadata: {e}")))?;
    if raw.issuer.as_deref() != Some(issuer) {
        return Err(err(format!(
            "its issuer {:?} is not the configured issuer {issuer:?}",
            raw.issuer.unwrap_or_default()
        )));
    }
    let check = |name: &str, v: Option<String>| -> Result<Option<Url>, DiscoveryError> {
        let Some(v) = v else { return Ok(None) };
        let u = Url::parse(&v).map_err(|e| err(format!("{name} is not a URL: {e}")))?;
        let secure = u.scheme() == "https"
            || (u.scheme() == "http" && (allow_http || crate::net::is_loopback(&u)));
        if !secure {
            return Err(err(format!(
                "{name} {u} must be https:// (or loopback, or allow_http = true)"
            )));
        }
        Ok(Some(u))
    };
    Ok(Metadata {
        jwks_uri: check("jwks_uri", raw.jwks_uri)?,
        introspection_endpoint: check("introspection_endpoint", raw.introspection_endpoint)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url() -> Url {
        Url::parse("https://idp.example.com/.well-known/openid-configuration").unwrap()
    }

    #[test]
    fn reads_both_endpoints() {
        let body = br#"{"issuer":"https://idp.example.com","jwks_uri":"https://idp.example.com/jwks","introspection_endpoint":"https://idp.example.com/introspect"}"#;
        let md = parse(body, &url(), "https://idp.example.com", false).unwrap();
        assert_eq!(
            md.jwks_uri.unwrap().as_str(),
            "https://idp.example.com/jwks"
        );
        assert_eq!(
            md.introspection_endpoint.unwrap().as_str(),
            "https://idp.example.com/introspect"
        );
    }

    #[test]
    fn another_issuer_is_refused() {
        let body =
            br#"{"issuer":"https://evil.example.com","jwks_uri":"https://idp.example.com/jwks"}"#;
        assert!(parse(body, &url(), "https://idp.example.com", false).is_err());
    }

    #[test]
    fn plain_http_endpoints_are_refused_off_loopback() {
        let body =
            br#"{"issuer":"https://idp.example.com","jwks_uri":"http://idp.example.com/jwks"}"#;
        assert!(parse(body, &url(), "https://idp.example.com", false).is_err());
        assert!(parse(body, &url(), "https://idp.example.com", true).is_ok());
        let local = br#"{"issuer":"https://idp.example.com","jwks_uri":"http://127.0.0.1:9/jwks"}"#;
        assert!(parse(local, &url(), "https://idp.example.com", false).is_ok());
    }
}
