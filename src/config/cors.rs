//! `[route.cors]` → policy's [`Cors`], its header values prebuilt. Origins must be written as
//! browsers send them (`scheme://host[:port]`, lower case, no default port, no path), since they
//! are compared exactly; `"*"` stands alone and never with credentials.

use http::{HeaderName, HeaderValue, Method};

use super::check::Checker;
use super::file::{self, CorsSection};
use crate::policy::cors::{Cors, Origins, ALWAYS_EXPOSED};

/// The route's CORS policy. `key` is `route[i].cors`; `route_methods` the route's `methods`
/// (`None`: any method).
pub(crate) fn cors(
    c: &mut Checker<'_>,
    key: &str,
    raw: &CorsSection,
    route_methods: Option<&[Method]>,
) -> Cors {
    let k = |field: &str| format!("{key}.{field}");
    let credentials = raw.allow_credentials.unwrap_or_default();
    let origins = origins(c, &k("allowed_origins"), raw, credentials);

    let methods: Option<Box<[Method]>> = match &raw.allowed_methods {
        None => route_methods.map(Box::from),
        Some(list) => {
            if list.is_empty() {
                c.error(
                    &k("allowed_methods"),
                    "must list at least one method, or be left out for the route's methods",
                );
            }
            let parsed = list.iter().enumerate().filter_map(|(j, m)| {
                let key = format!("{key}.allowed_methods[{j}]");
                let upper = m.to_ascii_uppercase();
                match Method::from_bytes(upper.as_bytes()) {
                    Ok(method) if !upper.is_empty() => {
                        if route_methods.is_some_and(|r| !r.contains(&method)) {
                            c.error(&key, format!("`{m}` is not one of the route's methods"));
                        }
                        Some(method)
                    }
                    _ => {
                        c.error(&key, format!("`{m}` is not an HTTP method"));
                        None
                    }
                }
            });
            Some(parsed.collect())
        }
    };
    let allow_methods = methods.as_ref().and_then(|m| {
        let names: Vec<&str> = m.iter().map(Method::as_str).collect();
        HeaderValue::from_str(&names.join(", ")).ok()
    });

    let allowed: Vec<&str> = match &raw.allowed_headers {
        Some(list) => list.iter().map(String::as_str).collect(),
        None => file::default_cors_allowed_headers().to_vec(),
    };
    let headers = header_names(c, &k("allowed_headers"), &allowed);
    let allow_headers = (!allowed.is_empty())
        .then(|| HeaderValue::from_str(&allowed.join(", ")).ok())
        .flatten();

    let configured: Vec<&str> = raw
        .expose_headers
        .iter()
        .flatten()
        .map(String::as_str)
        .collect();
    header_names(c, &k("expose_headers"), &configured);
    let mut exposed = configured;
    for always in ALWAYS_EXPOSED {
        if !exposed.iter().any(|e| e.eq_ignore_ascii_case(always)) {
            exposed.push(always);
        }
    }
    let expose_headers = HeaderValue::from_str(&exposed.join(", "))
        .unwrap_or_else(|_| HeaderValue::from_static("WWW-Authenticate, Retry-After"));

    let max_age = raw
        .max_age
        .as_deref()
        .and_then(|v| c.whole_seconds(&k("max_age"), v))
        .map(HeaderValue::from);

    Cors {
        origins,
        methods,
        allow_methods,
        headers,
        allow_headers,
        expose_headers,
        max_age,
        credentials,
    }
}

fn origins(c: &mut Checker<'_>, key: &str, raw: &CorsSection, credentials: bool) -> Origins {
    let Some(list) = c.required(key, &raw.allowed_origins) else {
        return Origins::Listed(Box::new([]));
    };
    if list.is_empty() {
        c.error(key, "must list at least one origin");
    }
    if list.iter().any(|o| o == "*") {
        if list.len() > 1 {
            c.error(key, "`*` allows every origin: list it alone");
        }
        if credentials {
            c.error(
                key,
                "`*` cannot be used with allow_credentials = true (browsers refuse it): list the origins",
            );
        }
        return Origins::Any;
    }
    for (j, o) in list.iter().enumerate() {
        if let Err(why) = origin(o) {
            c.error(&format!("{key}[{j}]"), why);
        }
    }
    Origins::Listed(list.iter().map(|o| Box::from(o.as_str())).collect())
}

/// Checks that `value` is an origin as browsers serialise it.
fn origin(value: &str) -> Result<(), String> {
    let shape = "an origin is scheme://host[:port], for example \"https://app.example.com\"";
    let url = url::Url::parse(value).map_err(|_| format!("`{value}` is not an origin: {shape}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("`{value}` is not an http or https origin"));
    }
    let serialised = url.origin().ascii_serialization();
    if value == serialised {
        return Ok(());
    }
    if url.path() != "/"
        || url.query().is_some()
        || url.fragment().is_some()
        || !url.username().is_empty()
        || url.password().is_some()
    {
        return Err(format!("`{value}` is not an origin: {shape}, without path"));
    }
    Err(format!(
        "`{value}` is not written as browsers send it; write `{serialised}`"
    ))
}

/// Checks every name of a header list.
fn header_names(c: &mut Checker<'_>, key: &str, names: &[&str]) -> Box<[HeaderName]> {
    names
        .iter()
        .enumerate()
        .filter_map(|(j, n)| match HeaderName::from_bytes(n.as_bytes()) {
            Ok(h) => Some(h),
            Err(_) => {
                c.error(
                    &format!("{key}[{j}]"),
                    format!("`{n}` is not a header name"),
                );
                None
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::origin;
    use crate::config::from_toml_str;
    use crate::config::tests::error_text;
    use crate::policy::cors::{Cors, Origins};

    const BASE: &str = r#"
[[upstream]]
id = "erp"
url = "http://127.0.0.1:8081"

[[route]]
id = "app"
prefix = "/entity/"
methods = ["GET", "PUT", "DELETE"]
upstream = "erp"
auth = "none"
[route.cors]
"#;

    fn cors(table: &str) -> Cors {
        let c = from_toml_str(&format!("{BASE}{table}")).unwrap_or_else(|e| panic!("{e}"));
        let r = c.routes.iter().next().unwrap();
        (**r.cors.as_ref().expect("a CORS policy")).clone()
    }

    #[test]
    fn the_issues_example_and_the_defaults() {
        let c = cors(
            r#"allowed_origins = ["https://app.example.com"]
allowed_methods = ["GET", "put"]
allowed_headers = ["Content-Type", "Authorization"]
expose_headers = ["X-Request-Id"]
max_age = "10m"
allow_credentials = false
"#,
        );
        assert_eq!(
            c.origins,
            Origins::Listed(Box::new(["https://app.example.com".into()]))
        );
        assert_eq!(c.allow_methods.unwrap(), "GET, PUT");
        assert_eq!(c.allow_headers.unwrap(), "Content-Type, Authorization");
        assert_eq!(
            c.expose_headers,
            "X-Request-Id, WWW-Authenticate, Retry-After"
        );
        assert_eq!(c.max_age.unwrap(), "600");
        assert!(!c.credentials);

        let d = cors("allowed_origins = [\"*\"]\n");
        assert_eq!(d.origins, Origins::Any);
        assert_eq!(
            d.allow_methods.unwrap(),
            "GET, PUT, DELETE",
            "the route's methods"
        );
        assert_eq!(d.allow_headers.unwrap(), "Authorization, Content-Type");
        assert_eq!(d.expose_headers, "WWW-Authenticate, Retry-After");
        assert!(d.max_age.is_none());
        let any_method = from_toml_str(
            &format!("{BASE}allowed_origins = [\"*\"]\n")
                .replace("methods = [\"GET\", \"PUT\", \"DELETE\"]\n", ""),
        )
        .unwrap();
        let r = any_method.routes.iter().next().unwrap();
        assert!(r.cors.as_ref().unwrap().methods.is_none());
    }

    #[test]
    fn check_refuses_what_browsers_would() {
        for (table, says) in [
            ("allowed_origins = [\"*\"]\nallow_credentials = true\n", "route[0].cors.allowed_origins: `*` cannot be used with allow_credentials = true"),
            ("allowed_origins = [\"app.example.com\"]\n", "route[0].cors.allowed_origins[0]: `app.example.com` is not an origin"),
            ("allowed_origins = [\"https://app.example.com/\"]\n", "route[0].cors.allowed_origins[0]: `https://app.example.com/` is not written as browsers send it"),
            ("allowed_origins = [\"*\", \"https://a.example\"]\n", "list it alone"),
            ("allowed_origins = []\n", "route[0].cors.allowed_origins: must list at least one origin"),
            ("allow_credentials = true\n", "route[0].cors.allowed_origins: missing key"),
            ("allowed_origins = [\"https://a.example\"]\nallowed_methods = [\"POST\"]\n", "route[0].cors.allowed_methods[0]: `POST` is not one of the route's methods"),
            ("allowed_origins = [\"https://a.example\"]\nallowed_headers = [\"bad header\"]\n", "route[0].cors.allowed_headers[0]: `bad header` is not a header name"),
            ("allowed_origins = [\"https://a.example\"]\nexpose_headers = [\"\"]\n", "route[0].cors.expose_headers[0]"),
            ("allowed_origins = [\"https://a.example\"]\nmax_age = \"1.5s\"\n", "route[0].cors.max_age"),
            ("allowed_origins = [\"https://a.example\"]\nallow_origin = true\n", "route[0].cors.allow_origin: unknown key"),
        ] {
            let errs = error_text(&format!("{BASE}{table}"));
            assert!(errs.contains(says), "{table}: expected …{says}…, got {errs}");
        }
    }

    #[test]
    fn origins_are_written_as_browsers_send_them() {
        for ok in [
            "https://app.example.com",
            "http://localhost:3000",
            "https://app.example.com:8443",
            "http://127.0.0.1:5173",
        ] {
            assert_eq!(origin(ok), Ok(()), "{ok}");
        }
        for (bad, says) in [
            ("app.example.com", "is not an origin"),
            (
                "https://app.example.com/",
                "write `https://app.example.com`",
            ),
            ("https://App.Example.com", "write `https://app.example.com`"),
            (
                "https://app.example.com:443",
                "write `https://app.example.com`",
            ),
            ("https://app.example.com/path", "without path"),
            ("https://user@app.example.com", "without path"),
            ("ftp://app.example.com", "not an http or https origin"),
            ("null", "is not an origin"),
        ] {
            let e = origin(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }
}
