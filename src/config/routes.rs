//! `[[route]]` tables → the frozen [`RouteTable`]: matchers compiled, references to upstreams and
//! issuers resolved, the 403 challenge of each route prebuilt, shadowed routes refused. A route's
//! step-up requirement and CORS policy are compiled by the private modules `config::step_up`
//! and `config::cors`.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderName};
use http::{HeaderValue, Method};

use super::check::{written_or, Checker};
use super::file::{self, RouteSection};
use super::{cors, step_up};
use crate::policy::{HostMatch, Matcher, PathMatch, Requirement, Route, RouteAuth, RouteTable};

/// One raw route with where it came from.
pub(crate) struct Section<'a> {
    pub(crate) raw: &'a RouteSection,
    /// `route[3]`
    pub(crate) key: String,
    /// The route file, for routes that came from `server.routes_file`.
    pub(crate) file: Option<String>,
}

impl<'a> Section<'a> {
    /// The sections of one file's `[[route]]` array, keyed `route[i]`.
    pub(crate) fn all(raw: &'a [RouteSection], file: Option<String>) -> Vec<Section<'a>> {
        raw.iter()
            .enumerate()
            .map(|(i, r)| Section {
                raw: r,
                key: format!("route[{i}]"),
                file: file.clone(),
            })
            .collect()
    }
}

/// Headers a route may not set from claims: they carry the request's framing, its routing, or
/// its credentials.
const RESERVED_IDENTITY_HEADERS: &[HeaderName] = &[
    header::HOST,
    header::AUTHORIZATION,
    header::PROXY_AUTHORIZATION,
    header::COOKIE,
    header::CONTENT_LENGTH,
    header::TRANSFER_ENCODING,
    header::CONNECTION,
    header::UPGRADE,
    header::TE,
    header::TRAILER,
];

/// What every route of one configuration is compiled against.
pub(crate) struct Context<'a> {
    /// The upstream ids routes may name.
    pub(crate) upstreams: &'a [Arc<str>],
    /// The issuer ids routes may name, with each issuer's leeway (step-up's `max_age` allows it,
    /// as the token's `exp` does).
    pub(crate) issuers: &'a [(Arc<str>, Duration)],
    /// The start of every challenge: `Bearer realm="…"`, and the metadata's URL when there is
    /// one ([`crate::metadata::challenge_head`]).
    pub(crate) challenge_head: &'a str,
    /// The body limit of routes that set none.
    pub(crate) default_max_body: u64,
}

pub(crate) fn compile(
    c: &mut Checker<'_>,
    sections: &[Section<'_>],
    ctx: &Context<'_>,
) -> RouteTable {
    let mut seen = HashSet::new();
    let mut routes: Vec<Route> = Vec::with_capacity(sections.len());
    let mut keys: Vec<(String, Option<String>)> = Vec::with_capacity(sections.len());
    for s in sections {
        c.file_override = s.file.clone();
        if let Some(route) = compile_one(c, s, &mut seen, ctx) {
            let key = &s.key;
            if let Some((j, _)) = routes
                .iter()
                .enumerate()
                .find(|(_, earlier)| route.matcher.shadowed_by(&earlier.matcher))
            {
                let (other_key, other_file) = &keys[j];
                let where_ = match other_file {
                    Some(f) if Some(f) != s.file.as_ref() => format!("{other_key} of {f}"),
                    _ => other_key.clone(),
                };
                c.error(
                    key,
                    format!(
                        "route `{}` can never be chosen: {where_} (`{}`) matches the same host, path and methods first",
                        route.id, routes[j].id
                    ),
                );
            }
            routes.push(route);
            keys.push((s.key.clone(), s.file.clone()));
        }
    }
    c.file_override = None;
    RouteTable::new(routes)
}

fn compile_one(
    c: &mut Checker<'_>,
    s: &Section<'_>,
    seen: &mut HashSet<String>,
    ctx: &Context<'_>,
) -> Option<Route> {
    let r = s.raw;
    let k = |field: &str| format!("{}.{field}", s.key);
    let errors_before = c.errors.len();
    let id = c.id(&k("id"), r.id.as_ref(), seen);

    let path = match (&r.exact, &r.prefix) {
        (Some(_), Some(_)) => {
            c.error(&s.key, "set either exact or prefix, not both");
            None
        }
        (None, None) => {
            c.error(&s.key, "missing key: set exact or prefix");
            None
        }
        (Some(e), None) => path_value(c, &k("exact"), e).map(|p| PathMatch::Exact(p.into())),
        (None, Some(p)) => path_value(c, &k("prefix"), p).map(|p| PathMatch::prefix(&p)),
    };

    let host = r.host.as_deref().and_then(|h| {
        let bare = h.strip_prefix("*.").unwrap_or(h);
        let valid = !bare.is_empty()
            && bare
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.'));
        if valid {
            Some(HostMatch::parse(h))
        } else {
            c.error(
                &k("host"),
                format!(
                    "`{h}` is not a host name (write `example.com` or `*.example.com`, no port)"
                ),
            );
            None
        }
    });

    let methods = r.methods.as_ref().map(|list| {
        if list.is_empty() {
            c.error(
                &k("methods"),
                "must list at least one method, or be left out for any method",
            );
        }
        list.iter()
            .enumerate()
            .filter_map(|(j, m)| {
                let upper = m.to_ascii_uppercase();
                match Method::from_bytes(upper.as_bytes()) {
                    Ok(method) if !upper.is_empty() => Some(method),
                    _ => {
                        c.error(
                            &format!("{}.methods[{j}]", s.key),
                            format!("`{m}` is not an HTTP method"),
                        );
                        None
                    }
                }
            })
            .collect::<Box<[Method]>>()
    });

    let upstream = match c.required(&k("upstream"), &r.upstream) {
        None => None,
        Some(u) => match ctx.upstreams.iter().position(|x| **x == **u) {
            Some(i) => Some(i),
            None => {
                c.error(
                    &k("upstream"),
                    format!(
                        "upstream `{u}` is not defined (defined: {})",
                        list(ctx.upstreams.iter())
                    ),
                );
                None
            }
        },
    };

    let identity_headers = identity_headers(c, s);
    let auth = match written_or(&r.auth, file::default_route_auth) {
        "bearer" => RouteAuth::Bearer(requirement(c, s, ctx)),
        "none" => {
            for (field, set) in [
                ("scopes", r.scopes.is_some()),
                ("any_scopes", r.any_scopes.is_some()),
                ("claims", r.claims.is_some()),
                ("headers", r.headers.is_some()),
                ("issuer", r.issuer.is_some()),
                ("acr_values", r.acr_values.is_some()),
                ("max_age", r.max_age.is_some()),
            ] {
                if set {
                    c.error(
                        &k(field),
                        "a public route (auth = \"none\") has no token to check or read",
                    );
                }
            }
            RouteAuth::Public
        }
        other => {
            c.error(
                &k("auth"),
                format!("`{other}` is not an auth mode; use \"bearer\" (default) or \"none\""),
            );
            RouteAuth::Public
        }
    };

    let cors = r
        .cors
        .as_ref()
        .map(|raw| cors::cors(c, &k("cors"), raw, methods.as_deref()));

    if c.errors.len() > errors_before {
        return None;
    }
    Some(Route {
        id,
        matcher: Matcher {
            host,
            methods,
            path: path?,
        },
        upstream: upstream?,
        auth,
        identity_headers,
        max_body: match r.max_body.as_deref() {
            None => ctx.default_max_body,
            Some(v) => c.byte_size(&k("max_body"), v, r#""10MiB""#),
        },
        websocket: r.websocket.unwrap_or_default(),
        cors: cors.map(Arc::new),
    })
}

fn list<'a>(ids: impl ExactSizeIterator<Item = &'a Arc<str>>) -> String {
    if ids.len() == 0 {
        "none".to_owned()
    } else {
        ids.map(|i| format!("`{i}`")).collect::<Vec<_>>().join(", ")
    }
}

/// A configured path must already be in normal form, so that what the operator wrote is what is
/// matched.
fn path_value(c: &mut Checker<'_>, key: &str, p: &str) -> Option<String> {
    match crate::policy::normalize(p) {
        Ok(n) if n == p => Some(p.to_owned()),
        Ok(n) => {
            c.error(key, format!("`{p}` is not a normalised path; write `{n}`"));
            None
        }
        Err(e) => {
            c.error(key, format!("`{p}`: {e}"));
            None
        }
    }
}

fn requirement(c: &mut Checker<'_>, s: &Section<'_>, ctx: &Context<'_>) -> Requirement {
    let r = s.raw;
    let k = |field: &str| format!("{}.{field}", s.key);
    let scope_list =
        |c: &mut Checker<'_>, field: &str, v: &Option<Vec<String>>| -> Box<[Box<str>]> {
            let Some(v) = v else { return Box::new([]) };
            if v.is_empty() {
                c.error(&k(field), "must list at least one scope, or be left out");
            }
            for (j, scope) in v.iter().enumerate() {
                // RFC 6749 §3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E )
                if scope.is_empty()
                    || !scope.bytes().all(|b| {
                        b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b)
                    })
                {
                    c.error(
                        &format!("{}.{field}[{j}]", s.key),
                        format!("`{scope}` is not a valid scope token"),
                    );
                }
            }
            v.iter().map(|s| Box::from(s.as_str())).collect()
        };
    let all_scopes = scope_list(c, "scopes", &r.scopes);
    let any_scopes = scope_list(c, "any_scopes", &r.any_scopes);

    let claims = r
        .claims
        .as_ref()
        .map(|m| {
            m.iter()
                .map(|(claim, values)| {
                    if values.is_empty() {
                        c.error(
                            &format!("{}.claims.{claim}", s.key),
                            "must list at least one accepted value",
                        );
                    }
                    (
                        Box::from(claim.as_str()),
                        values.iter().map(|v| Box::from(v.as_str())).collect(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();

    let issuer =
        r.issuer
            .as_ref()
            .and_then(|i| match ctx.issuers.iter().find(|(x, _)| **x == **i) {
                Some((id, _)) => Some(id.clone()),
                None => {
                    c.error(
                        &k("issuer"),
                        format!(
                            "issuer `{i}` is not defined (defined: {})",
                            list(ctx.issuers.iter().map(|(id, _)| id))
                        ),
                    );
                    None
                }
            });

    // RFC 6750 §3: the scope attribute lists the scopes the resource needs, in config order.
    let required: Vec<&str> = all_scopes
        .iter()
        .chain(any_scopes.iter())
        .map(|s| &**s)
        .collect();
    let head = ctx.challenge_head;
    let mut challenge = format!("{head}, error=\"insufficient_scope\"");
    if !required.is_empty() {
        challenge.push_str(&format!(", scope=\"{}\"", required.join(" ")));
    }
    let insufficient_scope_challenge = HeaderValue::from_str(&challenge).unwrap_or_else(|_| {
        // Scopes and realm were validated as printable ASCII without quotes above.
        HeaderValue::from_static("Bearer error=\"insufficient_scope\"")
    });

    let step_up = step_up::step_up(c, s, ctx, issuer.as_ref());
    Requirement {
        issuer,
        all_scopes,
        any_scopes,
        claims,
        insufficient_scope_challenge,
        step_up,
    }
}

fn identity_headers(c: &mut Checker<'_>, s: &Section<'_>) -> Box<[(HeaderName, Box<str>)]> {
    let Some(map) = &s.raw.headers else {
        return Box::new([]);
    };
    map.iter()
        .filter_map(|(name, claim)| {
            let key = format!("{}.headers.\"{name}\"", s.key);
            let header = match HeaderName::from_bytes(name.as_bytes()) {
                Ok(h) => h,
                Err(_) => {
                    c.error(&key, format!("`{name}` is not a valid header name"));
                    return None;
                }
            };
            if RESERVED_IDENTITY_HEADERS.contains(&header)
                || crate::hop_by_hop::is_hop_by_hop(&header)
            {
                c.error(&key, format!("`{name}` cannot be set from a claim"));
                return None;
            }
            if claim.is_empty() {
                c.error(&key, "must name a claim");
                return None;
            }
            Some((header, Box::from(claim.as_str())))
        })
        .collect()
}
