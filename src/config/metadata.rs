//! `[metadata]` → the RFC 9728 [`ResourceMetadata`]. The resource identifier is checked first
//! (the route challenges name its document); the document is built once the issuers and the
//! routes are known: every issuer's `issuer`, and the union of the routes' scopes.

use std::sync::Arc;

use super::check::Checker;
use super::file::MetadataSection;
use crate::auth::settings::IssuerConfig;
use crate::metadata::{Members, Resource, ResourceMetadata};
use crate::policy::{RouteAuth, RouteTable};

/// The resource identifier of `[metadata]`, if the table is there: an absolute https URL (plain
/// http for loopback hosts, as for issuers) with a host, without query, fragment or user-info,
/// its path in normal form, as a route's.
pub(crate) fn resource(c: &mut Checker<'_>, raw: Option<&MetadataSection>) -> Option<Resource> {
    let raw = raw?;
    let key = "metadata.resource";
    let written = c.required(key, &raw.resource)?;
    let url = c.https_url(key, written, false, "")?;
    let before = c.errors.len();
    let mut wrong = |what: &str| {
        c.error(
            key,
            format!("`{written}`: a resource identifier has {what}"),
        );
    };
    if url.host().is_none() {
        wrong("a host");
    }
    if url.fragment().is_some() {
        wrong("no fragment (RFC 9728 §1.2)");
    }
    if url.query().is_some() {
        wrong("no query here (its metadata could not be served by path)");
    }
    if !url.username().is_empty() || url.password().is_some() {
        wrong("no user name or password");
    }
    match crate::policy::normalize(url.path()) {
        Ok(n) if n == url.path() => {}
        Ok(n) => wrong(&format!("its path in normal form (`{n}`)")),
        Err(e) => wrong(&format!("a usable path ({e})")),
    }
    // Clients compare identifiers as URLs: one written the way a URL parser prints it (lower-case
    // host, no default port, no dot segments) is the same to every client.
    let canonical = url.as_str();
    let same = canonical == written
        || (url.path() == "/" && canonical.strip_suffix('/') == Some(written.as_str()));
    if c.errors.len() == before && !same {
        c.error(
            key,
            format!("`{written}` is not written in its canonical form; write `{canonical}`"),
        );
    }
    (c.errors.len() == before).then(|| Resource::new(written, &url))
}

/// The document of `resource`, with the optional members of `[metadata]`.
pub(crate) fn document(
    c: &mut Checker<'_>,
    raw: Option<&MetadataSection>,
    resource: Option<Resource>,
    issuers: &[IssuerConfig],
    routes: &RouteTable,
) -> Option<Arc<ResourceMetadata>> {
    let raw = raw?;
    if let Some(doc) = &raw.documentation {
        let key = "metadata.documentation";
        match url::Url::parse(doc) {
            Ok(u) if matches!(u.scheme(), "https" | "http") => {}
            _ => c.error(
                key,
                format!("`{doc}` is not an absolute http(s) URL of a page about the resource"),
            ),
        }
    }
    if raw
        .resource_name
        .as_deref()
        .is_some_and(|n| n.trim().is_empty())
    {
        c.error(
            "metadata.resource_name",
            "must not be empty, or be left out",
        );
    }
    let scopes = routes
        .iter()
        .filter_map(|r| match &r.auth {
            RouteAuth::Bearer(req) => Some(req.all_scopes.iter().chain(req.any_scopes.iter())),
            RouteAuth::Public => None,
        })
        .flatten()
        .map(|s| &**s)
        .collect();
    let members = Members {
        authorization_servers: issuers.iter().map(|i| i.issuer.as_str()).collect(),
        scopes,
        documentation: raw.documentation.as_deref(),
        name: raw.resource_name.as_deref(),
    };
    Some(Arc::new(ResourceMetadata::new(resource?, members)))
}

#[cfg(test)]
mod tests {
    use crate::config::from_toml_str;
    use crate::config::tests::error_text;
    use crate::policy::RouteAuth;

    const BASE: &str = r#"
[[issuer]]
id = "erp"
issuer = "https://erp.example.com/identity"
discovery = true
audiences = ["api"]

[[issuer]]
id = "entra"
issuer = "https://login.example.net/tenant/v2.0"
discovery = true
audiences = ["api"]

[[upstream]]
id = "erp"
url = "http://127.0.0.1:8081"

[[route]]
id = "write"
prefix = "/entity/"
methods = ["PUT"]
upstream = "erp"
scopes = ["erp:write", "api"]

[[route]]
id = "reports"
prefix = "/reports/"
upstream = "erp"
any_scopes = ["reports", "admin"]

[[route]]
id = "health"
exact = "/health"
upstream = "erp"
auth = "none"
"#;

    #[test]
    fn the_document_and_every_challenge_come_from_the_table() {
        let c = from_toml_str(&format!(
            "{BASE}\n[metadata]\nresource = \"https://erp.example.com\"\nresource_name = \"ERP API\"\ndocumentation = \"https://erp.example.com/docs\"\n"
        ))
        .unwrap();
        let m = c.metadata.as_ref().unwrap();
        let doc: serde_json::Value = serde_json::from_slice(m.document()).unwrap();
        assert_eq!(
            doc,
            serde_json::json!({
                "resource": "https://erp.example.com",
                "authorization_servers": ["https://erp.example.com/identity", "https://login.example.net/tenant/v2.0"],
                "scopes_supported": ["admin", "api", "erp:write", "reports"],
                "bearer_methods_supported": ["header"],
                "resource_documentation": "https://erp.example.com/docs",
                "resource_name": "ERP API"
            })
        );
        let head = "Bearer realm=\"tollgate\", resource_metadata=\"https://erp.example.com/.well-known/oauth-protected-resource\"";
        assert_eq!(c.challenge_head(), head);
        let write = c.routes.iter().find(|r| &*r.id == "write").unwrap();
        let RouteAuth::Bearer(req) = &write.auth else {
            panic!("bearer route")
        };
        assert_eq!(
            req.insufficient_scope_challenge,
            format!("{head}, error=\"insufficient_scope\", scope=\"erp:write api\"")
        );
    }

    #[test]
    fn without_the_table_nothing_changes() {
        let c = from_toml_str(BASE).unwrap();
        assert!(c.metadata.is_none());
        assert_eq!(c.challenge_head(), "Bearer realm=\"tollgate\"");
    }

    #[test]
    fn a_path_resource_and_a_loopback_http_resource() {
        let c = from_toml_str(&format!(
            "{BASE}\n[metadata]\nresource = \"http://127.0.0.1:8080/entity\"\n"
        ))
        .unwrap();
        let r = c.metadata.as_ref().unwrap().resource();
        assert_eq!(
            r.metadata_url(),
            "http://127.0.0.1:8080/.well-known/oauth-protected-resource/entity"
        );
    }

    #[test]
    fn a_bad_table_names_the_key() {
        for (table, says) in [
            ("", "metadata.resource: missing key"),
            (
                "resource = \"http://erp.example.com\"",
                "metadata.resource: `http://erp.example.com` must use https://",
            ),
            (
                "resource = \"erp.example.com\"",
                "metadata.resource: `erp.example.com` is not a URL",
            ),
            (
                "resource = \"ftp://erp.example.com\"",
                "metadata.resource: unsupported URL scheme `ftp`",
            ),
            (
                "resource = \"https://erp.example.com/#x\"",
                "has no fragment",
            ),
            (
                "resource = \"https://erp.example.com/?tenant=a\"",
                "has no query",
            ),
            (
                "resource = \"https://u:p@erp.example.com/\"",
                "has no user name or password",
            ),
            (
                "resource = \"https://erp.example.com/a/../b\"",
                "write `https://erp.example.com/b`",
            ),
            (
                "resource = \"https://erp.example.com/a//b\"",
                "its path in normal form (`/a/b`)",
            ),
            (
                "resource = \"https://ERP.example.com:443\"",
                "write `https://erp.example.com/`",
            ),
            (
                "resource = \"https://erp.example.com\"\ndocumentation = \"docs\"",
                "metadata.documentation: `docs` is not an absolute http(s) URL",
            ),
            (
                "resource = \"https://erp.example.com\"\nresource_name = \" \"",
                "metadata.resource_name: must not be empty",
            ),
            (
                "resource = \"https://erp.example.com\"\nscopes = [\"a\"]",
                "metadata.scopes: unknown key",
            ),
        ] {
            let errs = error_text(&format!("{BASE}\n[metadata]\n{table}\n"));
            assert!(
                errs.contains(says),
                "{table}: expected …{says}…, got {errs}"
            );
        }
    }
}
