//! Route choice and authorisation, without sockets.

use std::sync::Arc;

use http::{HeaderValue, Method};
use serde_json::json;

use super::*;
use crate::auth::Principal;

fn route(id: &str, path: PathMatch, methods: Option<&[Method]>, host: Option<&str>) -> Route {
    Route {
        id: id.into(),
        matcher: Matcher {
            host: host.map(HostMatch::parse),
            methods: methods.map(|m| m.to_vec().into()),
            path,
        },
        upstream: 0,
        auth: RouteAuth::Public,
        identity_headers: Box::new([]),
        max_body: 1 << 20,
        websocket: false,
        cors: None,
    }
}

fn table() -> RouteTable {
    RouteTable::new(vec![
        route("short", PathMatch::prefix("/a/"), None, None),
        route("long", PathMatch::prefix("/a/b/"), None, None),
        route("exact", PathMatch::Exact("/a/b/c".into()), None, None),
        route("read", PathMatch::prefix("/m/"), Some(&[Method::GET]), None),
        route(
            "write",
            PathMatch::prefix("/m/"),
            Some(&[Method::PUT]),
            None,
        ),
        route(
            "first",
            PathMatch::prefix("/t/"),
            Some(&[Method::GET]),
            None,
        ),
        route(
            "second",
            PathMatch::prefix("/t/"),
            Some(&[Method::GET, Method::POST]),
            None,
        ),
        route(
            "hosted",
            PathMatch::prefix("/a/"),
            None,
            Some("api.example.com"),
        ),
    ])
}

fn find<'a>(t: &'a RouteTable, method: Method, path: &str, host: Option<&str>) -> Option<&'a str> {
    t.find(host, &method, path).map(|r| &*r.id)
}

#[test]
fn exact_beats_prefix_and_longer_prefix_beats_shorter() {
    let t = table();
    assert_eq!(find(&t, Method::GET, "/a/b/c", None), Some("exact"));
    assert_eq!(find(&t, Method::GET, "/a/b/c/d", None), Some("long"));
    assert_eq!(find(&t, Method::GET, "/a/b", None), Some("long"));
    assert_eq!(find(&t, Method::GET, "/a/x", None), Some("short"));
    assert_eq!(find(&t, Method::GET, "/ab", None), None);
}

#[test]
fn method_selects_and_an_unserved_method_finds_nothing() {
    let t = table();
    assert_eq!(find(&t, Method::GET, "/m/x", None), Some("read"));
    assert_eq!(find(&t, Method::PUT, "/m/x", None), Some("write"));
    assert_eq!(find(&t, Method::DELETE, "/m/x", None), None);
}

#[test]
fn ties_go_to_the_first_in_the_file() {
    let t = table();
    assert_eq!(find(&t, Method::GET, "/t/x", None), Some("first"));
    assert_eq!(find(&t, Method::POST, "/t/x", None), Some("second"));
}

#[test]
fn host_bound_routes_win_for_their_host() {
    let t = table();
    assert_eq!(
        find(&t, Method::GET, "/a/x", Some("api.example.com")),
        Some("hosted")
    );
    assert_eq!(
        find(&t, Method::GET, "/a/x", Some("other.example.com")),
        Some("short")
    );
    assert_eq!(find(&t, Method::GET, "/a/x", None), Some("short"));
}

fn principal(claims: serde_json::Value) -> Principal {
    Principal::new("erp".into(), claims.as_object().unwrap().clone(), u64::MAX)
}

fn requirement(
    all: &[&str],
    any: &[&str],
    claims: &[(&str, &[&str])],
    issuer: Option<&str>,
) -> Requirement {
    Requirement {
        issuer: issuer.map(Arc::from),
        all_scopes: all.iter().map(|s| Box::from(*s)).collect(),
        any_scopes: any.iter().map(|s| Box::from(*s)).collect(),
        claims: claims
            .iter()
            .map(|(c, v)| (Box::from(*c), v.iter().map(|s| Box::from(*s)).collect()))
            .collect(),
        insufficient_scope_challenge: HeaderValue::from_static("Bearer"),
        step_up: None,
    }
}

#[test]
fn all_scopes_are_required() {
    let r = route("r", PathMatch::prefix("/"), None, None);
    let req = requirement(&["api", "erp:write"], &[], &[], None);
    assert!(authorize(&r, &req, principal(json!({"scope": "erp:write api"}))).is_ok());
    assert_eq!(
        authorize(&r, &req, principal(json!({"scope": "api"}))).unwrap_err(),
        Denied::InsufficientScope
    );
}

#[test]
fn any_scopes_need_one() {
    let r = route("r", PathMatch::prefix("/"), None, None);
    let req = requirement(&[], &["reports", "admin"], &[], None);
    assert!(authorize(&r, &req, principal(json!({"scp": ["admin"]}))).is_ok());
    assert_eq!(
        authorize(&r, &req, principal(json!({"scope": "api"}))).unwrap_err(),
        Denied::InsufficientScope
    );
}

#[test]
fn claims_must_match_one_value() {
    let r = route("r", PathMatch::prefix("/"), None, None);
    let req = requirement(
        &[],
        &[],
        &[
            ("tenant", &["MyStore", "Other"]),
            ("level", &["3"]),
            ("admin", &["true"]),
        ],
        None,
    );
    let ok = principal(json!({"tenant": "MyStore", "level": 3, "admin": true}));
    assert!(authorize(&r, &req, ok).is_ok());
    let arr = principal(json!({"tenant": ["x", "Other"], "level": 3, "admin": true}));
    assert!(authorize(&r, &req, arr).is_ok());
    for bad in [
        json!({"tenant": "mystore", "level": 3, "admin": true}),
        json!({"level": 3, "admin": true}),
        json!({"tenant": {"name": "MyStore"}, "level": 3, "admin": true}),
        json!({"tenant": "MyStore", "level": "4", "admin": true}),
    ] {
        assert_eq!(
            authorize(&r, &req, principal(bad)).unwrap_err(),
            Denied::ClaimMismatch
        );
    }
}

#[test]
fn a_pinned_issuer_refuses_others() {
    let r = route("r", PathMatch::prefix("/"), None, None);
    let req = requirement(&[], &[], &[], Some("partner"));
    assert_eq!(
        authorize(&r, &req, principal(json!({}))).unwrap_err(),
        Denied::WrongIssuer
    );
}

#[test]
fn a_permit_names_the_route() {
    let r = route("orders", PathMatch::prefix("/"), None, None);
    let permit = authorize(
        &r,
        &requirement(&[], &[], &[], None),
        principal(json!({"sub": "alice"})),
    )
    .unwrap();
    assert_eq!(&*permit.route, "orders");
    assert_eq!(permit.principal.subject(), Some("alice"));
}

#[test]
fn claim_header_values() {
    assert_eq!(claim_header_value(&json!("alice")).unwrap(), "alice");
    assert_eq!(claim_header_value(&json!(42)).unwrap(), "42");
    assert_eq!(claim_header_value(&json!(["a", 1])).unwrap(), "a,1");
    assert!(claim_header_value(&json!({"a": 1})).is_none());
    assert!(claim_header_value(&json!("line\nbreak")).is_none());
    // Nothing that could end the header line or start another is ever a value.
    for bad in ["a\r\nX-Evil: 1", "a\rb", "a\0", "a\u{7f}", "a\u{1b}[31m"] {
        assert!(claim_header_value(&json!(bad)).is_none(), "{bad:?}");
        assert!(claim_header_value(&json!(["ok", bad])).is_none(), "{bad:?}");
    }
    assert_eq!(claim_header_value(&json!("a\tb")).unwrap(), "a\tb");
}

#[test]
fn scopes_and_claims_are_checked_before_step_up_and_each_refusal_has_its_challenge() {
    let r = route("r", PathMatch::prefix("/"), None, None);
    let mut req = requirement(&["api"], &[], &[("tenant", &["MyStore"])], None);
    req.step_up = Some(Box::new(StepUp {
        acr_values: Box::new(["phr".into()]),
        max_age: Some(900),
        leeway: Box::new([("erp".into(), 0)]),
        acr_challenge: HeaderValue::from_static("acr"),
        max_age_challenge: HeaderValue::from_static("max_age"),
    }));
    let now = crate::clock::unix_secs();
    let deny = |claims| authorize(&r, &req, principal(claims)).unwrap_err();
    // Fails scope and step-up alike: the scope refusal wins.
    assert_eq!(deny(json!({"scope": "other"})), Denied::InsufficientScope);
    assert_eq!(deny(json!({"scope": "api"})), Denied::ClaimMismatch);
    let stepped = json!({"scope": "api", "tenant": "MyStore"});
    assert_eq!(deny(stepped.clone()), Denied::AcrNotAccepted);
    let mut old = stepped;
    old["acr"] = json!("phr");
    old["auth_time"] = json!(now - 3600);
    assert_eq!(deny(old.clone()), Denied::AuthenticationTooOld);
    old["auth_time"] = json!(now - 60);
    assert!(authorize(&r, &req, principal(old)).is_ok());

    assert_eq!(req.challenge(Denied::AcrNotAccepted), "acr");
    assert_eq!(req.challenge(Denied::AuthenticationTooOld), "max_age");
    assert_eq!(req.challenge(Denied::InsufficientScope), "Bearer");
    assert_eq!(req.challenge(Denied::ClaimMismatch), "Bearer");
}

#[test]
fn a_preflight_belongs_to_the_cors_route_of_its_announced_method() {
    let cors = Arc::new(Cors {
        origins: cors::Origins::Any,
        methods: Some(Box::new([Method::GET])),
        allow_methods: None,
        headers: Box::new([]),
        allow_headers: None,
        expose_headers: HeaderValue::from_static("WWW-Authenticate"),
        max_age: None,
        credentials: false,
    });
    let mut read = route(
        "read",
        PathMatch::prefix("/app/"),
        Some(&[Method::GET]),
        None,
    );
    read.cors = Some(cors);
    let write = route(
        "write",
        PathMatch::prefix("/app/"),
        Some(&[Method::PUT]),
        None,
    );
    let t = RouteTable::new(vec![read, write]);
    let id = |m: Method, p: &str| t.find_preflight(None, &m, p).map(|r| &*r.id);
    assert_eq!(id(Method::GET, "/app/x"), Some("read"));
    // PUT is the write route's, which does not speak CORS: an ordinary OPTIONS request.
    assert_eq!(id(Method::PUT, "/app/x"), None);
    // No route takes DELETE here: the CORS route refuses it.
    assert_eq!(id(Method::DELETE, "/app/x"), Some("read"));
    assert_eq!(id(Method::DELETE, "/other"), None);
}
