//! RFC 9728 OAuth 2.0 Protected Resource Metadata: the document that tells a client which
//! authorization servers issue tokens for this resource, which scopes it knows and how a token is
//! presented, and the `resource_metadata` parameter that points every challenge at it (§5.1).
//!
//! Everything is built once per configuration: the document's bytes, the paths it is served at
//! and the absolute URL the challenges name. Serving it costs a path comparison.
//!
//! This module imports nothing of the crate. Configuration validates the `[metadata]` table and
//! builds a [`Resource`] and its [`ResourceMetadata`]; the gateway answers with
//! [`ResourceMetadata::serve`] before route choice; the error table starts every challenge with
//! [`challenge_head`].

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Response, StatusCode};
use serde::Serialize;
use url::Url;

/// The well-known path suffix of RFC 9728 §3.
pub const WELL_KNOWN: &str = "/.well-known/oauth-protected-resource";

/// The methods the document answers, for `Allow`.
const ALLOW: &str = "GET, HEAD, OPTIONS";

/// A resource identifier and where its metadata lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resource {
    /// The identifier as configured: the document's `resource`, which clients compare.
    identifier: Box<str>,
    /// The document's path on this gateway: [`WELL_KNOWN`], then the identifier's path (§3.1).
    path: Box<str>,
    /// The document's absolute URL, built from the identifier and never from a request's `Host`,
    /// so that a client cannot be sent elsewhere by a forged header.
    url: Box<str>,
}

impl Resource {
    /// `url` is `identifier` parsed: configuration has checked that it is an absolute http(s) URL
    /// with a host, a path in normal form, and no query, fragment or user-info.
    pub fn new(identifier: &str, url: &Url) -> Self {
        // §3.1: the suffix goes between the host and the path; a lone "/" is no path.
        let path = match url.path() {
            "/" | "" => WELL_KNOWN.to_owned(),
            p => format!("{WELL_KNOWN}{p}"),
        };
        let origin = url.origin().ascii_serialization();
        Resource {
            identifier: identifier.into(),
            url: format!("{origin}{path}").into(),
            path: path.into(),
        }
    }

    /// The resource identifier, as configured.
    pub fn identifier(&self) -> &str {
        &self.identifier
    }

    /// The absolute URL of the metadata document (the challenges' `resource_metadata`).
    pub fn metadata_url(&self) -> &str {
        &self.url
    }

    /// The path the document is served at, per §3.1.
    pub fn metadata_path(&self) -> &str {
        &self.path
    }
}

/// The start of every `WWW-Authenticate` challenge: `Bearer realm="…"`, followed, when the
/// resource publishes metadata, by `resource_metadata="…"` (RFC 9728 §5.1). The realm and the
/// URL hold no quote or backslash (configuration checks the realm; a URL's serialisation
/// escapes them).
pub fn challenge_head(realm: &str, resource: Option<&Resource>) -> String {
    match resource {
        None => format!("Bearer realm=\"{realm}\""),
        Some(r) => format!(
            "Bearer realm=\"{realm}\", resource_metadata=\"{}\"",
            r.metadata_url()
        ),
    }
}

/// The optional members of the document, as configuration gathered them.
#[derive(Debug, Default)]
pub struct Members<'a> {
    /// The `issuer` of every configured issuer, in configuration order.
    pub authorization_servers: Vec<&'a str>,
    /// Every scope a route requires, in any order, repeats allowed.
    pub scopes: Vec<&'a str>,
    /// `resource_documentation`.
    pub documentation: Option<&'a str>,
    /// `resource_name`.
    pub name: Option<&'a str>,
}

/// The document of RFC 9728 §2. A member with no value is left out, as §3.2 requires.
#[derive(Serialize)]
struct Document<'a> {
    resource: &'a str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    authorization_servers: Vec<&'a str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    scopes_supported: Vec<&'a str>,
    bearer_methods_supported: [&'static str; 1],
    #[serde(skip_serializing_if = "Option::is_none")]
    resource_documentation: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    resource_name: Option<&'a str>,
}

/// The metadata of the protected resource: its identifier and the document, serialised once.
#[derive(Debug, Clone)]
pub struct ResourceMetadata {
    resource: Resource,
    document: Bytes,
}

/// A request for the document with a method it does not answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the protected resource metadata answers only GET, HEAD and OPTIONS")]
pub struct MethodNotAllowed;

impl MethodNotAllowed {
    /// The `Allow` value of the answer.
    pub const ALLOW: &'static str = ALLOW;
}

impl ResourceMetadata {
    pub fn new(resource: Resource, members: Members<'_>) -> Self {
        let mut authorization_servers: Vec<&str> = Vec::new();
        for s in members.authorization_servers {
            if !authorization_servers.contains(&s) {
                authorization_servers.push(s);
            }
        }
        let mut scopes_supported = members.scopes;
        scopes_supported.sort_unstable();
        scopes_supported.dedup();
        let document = Document {
            resource: resource.identifier(),
            authorization_servers,
            scopes_supported,
            bearer_methods_supported: ["header"],
            resource_documentation: members.documentation,
            resource_name: members.name,
        };
        // Serialising strings and arrays of strings cannot fail.
        let document = serde_json::to_vec(&document).unwrap_or_default().into();
        ResourceMetadata { resource, document }
    }

    pub fn resource(&self) -> &Resource {
        &self.resource
    }

    /// The document's JSON.
    pub fn document(&self) -> &Bytes {
        &self.document
    }

    /// The answer to a request for `path` (normalised), or `None` when the path is not the
    /// document's. The document lives at its §3.1 path and, for a resource with a path, also at
    /// the bare well-known path, for clients that look only there.
    ///
    /// The document is public and carries no credentials, so any origin may read it: a browser
    /// client discovers the authorization server the same way as any other.
    pub fn serve(
        &self,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
    ) -> Option<Result<Response<Bytes>, MethodNotAllowed>> {
        if path != self.resource.metadata_path() && path != WELL_KNOWN {
            return None;
        }
        let answer = match *method {
            Method::GET | Method::HEAD => {
                let mut resp = Response::new(self.document.clone());
                let h = resp.headers_mut();
                h.insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                h.insert(
                    header::CACHE_CONTROL,
                    HeaderValue::from_static("max-age=300"),
                );
                h.insert(
                    header::ACCESS_CONTROL_ALLOW_ORIGIN,
                    HeaderValue::from_static("*"),
                );
                Ok(resp)
            }
            Method::OPTIONS => Ok(preflight(headers)),
            _ => Err(MethodNotAllowed),
        };
        Some(answer)
    }
}

/// `OPTIONS` on the document: its methods, and a CORS preflight answer for any origin.
fn preflight(headers: &HeaderMap) -> Response<Bytes> {
    let mut resp = Response::new(Bytes::new());
    *resp.status_mut() = StatusCode::NO_CONTENT;
    let h = resp.headers_mut();
    h.insert(header::ALLOW, HeaderValue::from_static(ALLOW));
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, HEAD"),
    );
    // Whatever headers a client adds to its fetch of a public document may be sent.
    if let Some(asked) = headers.get(header::ACCESS_CONTROL_REQUEST_HEADERS) {
        h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, asked.clone());
    }
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("86400"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn resource(id: &str) -> Resource {
        Resource::new(id, &Url::parse(id).unwrap())
    }

    fn doc(m: &ResourceMetadata) -> Value {
        serde_json::from_slice(m.document()).unwrap()
    }

    #[test]
    fn the_well_known_url_of_rfc_9728_section_3_1() {
        // §3.1's examples: a host alone, and a host with a path.
        let r = resource("https://resource.example.com");
        assert_eq!(
            r.metadata_url(),
            "https://resource.example.com/.well-known/oauth-protected-resource"
        );
        assert_eq!(r.metadata_path(), WELL_KNOWN);
        let r = resource("https://resource.example.com/resource1");
        assert_eq!(
            r.metadata_url(),
            "https://resource.example.com/.well-known/oauth-protected-resource/resource1"
        );
        assert_eq!(
            r.metadata_path(),
            "/.well-known/oauth-protected-resource/resource1"
        );
        // A trailing slash after the host is no path; a port stays, the default one does not.
        assert_eq!(
            resource("https://erp.example.com/").metadata_path(),
            WELL_KNOWN
        );
        assert_eq!(
            resource("https://erp.example.com:8443/entity").metadata_url(),
            "https://erp.example.com:8443/.well-known/oauth-protected-resource/entity"
        );
        assert_eq!(
            resource("https://erp.example.com:443").metadata_url(),
            "https://erp.example.com/.well-known/oauth-protected-resource"
        );
    }

    #[test]
    fn the_document_of_rfc_9728_section_3_2() {
        // §3.2's example response, built from the members it shows.
        let m = ResourceMetadata::new(
            resource("https://resource.example.com"),
            Members {
                authorization_servers: vec!["https://as1.example.com", "https://as2.example.net"],
                scopes: vec!["profile", "email"],
                documentation: Some("https://resource.example.com/resource_documentation.html"),
                name: None,
            },
        );
        assert_eq!(
            doc(&m),
            json!({
                "resource": "https://resource.example.com",
                "authorization_servers": ["https://as1.example.com", "https://as2.example.net"],
                "bearer_methods_supported": ["header"],
                "scopes_supported": ["email", "profile"],
                "resource_documentation": "https://resource.example.com/resource_documentation.html"
            })
        );
    }

    #[test]
    fn scopes_are_a_sorted_union_and_empty_members_are_left_out() {
        let m = ResourceMetadata::new(
            resource("https://erp.example.com"),
            Members {
                authorization_servers: vec!["https://a", "https://b", "https://a"],
                scopes: vec!["erp:write", "api", "api", "reports"],
                documentation: None,
                name: Some("ERP API"),
            },
        );
        assert_eq!(
            doc(&m),
            json!({
                "resource": "https://erp.example.com",
                "authorization_servers": ["https://a", "https://b"],
                "scopes_supported": ["api", "erp:write", "reports"],
                "bearer_methods_supported": ["header"],
                "resource_name": "ERP API"
            })
        );
        let bare = ResourceMetadata::new(resource("https://erp.example.com"), Members::default());
        assert_eq!(
            doc(&bare),
            json!({"resource": "https://erp.example.com", "bearer_methods_supported": ["header"]})
        );
    }

    #[test]
    fn served_at_its_path_and_the_bare_well_known_path_only() {
        let m = ResourceMetadata::new(
            resource("https://erp.example.com/entity"),
            Members::default(),
        );
        let h = HeaderMap::new();
        let get = |p: &str| m.serve(&Method::GET, p, &h);
        let ok = get("/.well-known/oauth-protected-resource/entity")
            .unwrap()
            .unwrap();
        assert_eq!(ok.status(), StatusCode::OK);
        assert_eq!(ok.headers()[header::CACHE_CONTROL], "max-age=300");
        assert_eq!(ok.headers()[header::CONTENT_TYPE], "application/json");
        assert_eq!(ok.body(), m.document());
        assert!(get(WELL_KNOWN).is_some());
        assert!(get("/.well-known/oauth-protected-resource/other").is_none());
        assert!(get("/entity").is_none());
        assert_eq!(
            m.serve(&Method::POST, WELL_KNOWN, &h).unwrap().unwrap_err(),
            MethodNotAllowed
        );
    }

    #[test]
    fn options_answers_any_origin_without_credentials() {
        let m = ResourceMetadata::new(resource("https://erp.example.com"), Members::default());
        let mut h = HeaderMap::new();
        h.insert(
            header::ACCESS_CONTROL_REQUEST_HEADERS,
            HeaderValue::from_static("mcp-protocol-version"),
        );
        let r = m.serve(&Method::OPTIONS, WELL_KNOWN, &h).unwrap().unwrap();
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
        assert_eq!(r.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*");
        assert_eq!(
            r.headers()[header::ACCESS_CONTROL_ALLOW_HEADERS],
            "mcp-protocol-version"
        );
        assert!(!r
            .headers()
            .contains_key(header::ACCESS_CONTROL_ALLOW_CREDENTIALS));
    }

    #[test]
    fn the_challenge_names_the_document_after_the_realm() {
        assert_eq!(
            challenge_head("tollgate", None),
            "Bearer realm=\"tollgate\""
        );
        assert_eq!(
            challenge_head("tollgate", Some(&resource("https://erp.example.com"))),
            "Bearer realm=\"tollgate\", resource_metadata=\"https://erp.example.com/.well-known/oauth-protected-resource\""
        );
    }
}
