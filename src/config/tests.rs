//! Each validation error, by key path, and the defaults of a minimal file.

use std::time::Duration;

use super::*;
use crate::policy::RouteAuth;

const ISSUER: &str = r#"
[[issuer]]
id = "erp"
issuer = "https://erp.example.com/identity"
discovery = true
audiences = ["api"]
"#;

const UPSTREAM: &str = r#"
[[upstream]]
id = "erp"
url = "http://127.0.0.1:8081"
"#;

const ROUTE: &str = r#"
[[route]]
id = "r"
prefix = "/entity/Default/"
upstream = "erp"
scopes = ["api"]
"#;

fn ok(toml: &str) -> Config {
    from_toml_str(toml).unwrap_or_else(|e| panic!("{e}"))
}

/// The (key, message) pairs of a failing load.
fn errors(toml: &str) -> Vec<(String, String)> {
    match from_toml_str(toml) {
        Ok(_) => panic!("expected errors for:\n{toml}"),
        Err(e) => e.0.into_iter().map(|e| (e.key, e.message)).collect(),
    }
}

/// Every error of a failing load, as `tollgate check` prints them (for the section modules'
/// tests).
pub(super) fn error_text(toml: &str) -> String {
    match from_toml_str(toml) {
        Ok(_) => panic!("expected errors for:\n{toml}"),
        Err(e) => e.to_string(),
    }
}

fn assert_error(toml: &str, key: &str, fragment: &str) {
    let errs = errors(toml);
    assert!(
        errs.iter().any(|(k, m)| k == key && m.contains(fragment)),
        "expected `{key}: …{fragment}…`, got {errs:?}"
    );
}

fn base() -> String {
    format!("{ISSUER}{UPSTREAM}{ROUTE}")
}

#[test]
fn defaults() {
    let c = ok(&base());
    assert_eq!(c.server.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(c.server.admin_listen.to_string(), "127.0.0.1:9090");
    assert_eq!(&*c.server.realm, "tollgate");
    assert_eq!(c.server.token_cache_capacity, 100_000);
    assert!(!c.server.trust_forwarded_headers);
    let i = &c.issuers[0];
    assert_eq!(i.leeway, Duration::from_secs(30));
    assert_eq!(i.jwks_refresh, Duration::from_secs(600));
    assert_eq!(i.jwks_min_refresh, Duration::from_secs(30));
    assert_eq!(i.fetch_timeout, Duration::from_secs(5));
    assert!(!i.require_typ);
    assert_eq!(
        i.algorithms,
        vec![
            jsonwebtoken::Algorithm::RS256,
            jsonwebtoken::Algorithm::PS256,
            jsonwebtoken::Algorithm::ES256,
            jsonwebtoken::Algorithm::EdDSA
        ]
    );
    assert_eq!(i.validation, ValidationMode::Jwt);
    assert!(i.introspection.is_none());
    assert_eq!(
        i.keys,
        Some(KeySource::Discovery(
            url::Url::parse("https://erp.example.com/identity/.well-known/openid-configuration")
                .unwrap()
        ))
    );
    let u = &c.upstreams[0];
    assert_eq!(u.connect_timeout, Duration::from_secs(2));
    assert_eq!(u.timeout, Duration::from_secs(60));
    assert!(!u.forward_authorization);
    assert_eq!(c.log.level, "info");
    assert_eq!(c.log.format, LogFormat::Text);
}

#[test]
fn routes_are_frozen_with_prebuilt_challenges() {
    let toml = format!(
        "{ISSUER}{UPSTREAM}{ROUTE}\n[[route]]\nid = \"w\"\nprefix = \"/w/\"\nupstream = \"erp\"\nscopes = [\"api\", \"erp:write\"]\nany_scopes = [\"x\"]\n"
    );
    let c = ok(&toml);
    let w = c.routes.iter().find(|r| &*r.id == "w").unwrap();
    let RouteAuth::Bearer(req) = &w.auth else {
        panic!("bearer expected")
    };
    assert_eq!(
        req.insufficient_scope_challenge,
        "Bearer realm=\"tollgate\", error=\"insufficient_scope\", scope=\"api erp:write x\""
    );
}

#[test]
fn unknown_keys_name_their_path() {
    assert_error(
        &format!("[server]\nlisen = \"x\"\n{}", base()),
        "server.lisen",
        "unknown key",
    );
    assert_error(
        &base().replace("audiences", "audience"),
        "issuer[0].audience",
        "unknown key",
    );
    assert_error(
        &format!("{}\nsurprise = 1\n", base()),
        "route[0].surprise",
        "unknown key",
    );
    assert_error(
        &format!("[nonsense]\n{}", base()),
        "nonsense",
        "unknown key",
    );
}

#[test]
fn route_references() {
    assert_error(
        &base().replace("upstream = \"erp\"\nscopes", "upstream = \"ghost\"\nscopes"),
        "route[0].upstream",
        "upstream `ghost` is not defined",
    );
    assert_error(
        &format!("{}issuer = \"ghost\"\n", base()),
        "route[0].issuer",
        "issuer `ghost` is not defined",
    );
    assert_error(
        &base().replace("upstream = \"erp\"\nscopes", "scopes"),
        "route[0].upstream",
        "missing key",
    );
}

#[test]
fn route_shapes() {
    assert_error(
        &base().replace(
            "prefix = \"/entity/Default/\"",
            "prefix = \"/a/\"\nexact = \"/a\"",
        ),
        "route[0]",
        "not both",
    );
    assert_error(
        &base().replace("prefix = \"/entity/Default/\"\n", ""),
        "route[0]",
        "set exact or prefix",
    );
    assert_error(
        &base().replace("/entity/Default/", "/entity/../x/"),
        "route[0].prefix",
        "not a normalised path",
    );
    assert_error(
        &base().replace("/entity/Default/", "entity"),
        "route[0].prefix",
        "must start with '/'",
    );
    assert_error(
        &format!("{}methods = []\n", base()),
        "route[0].methods",
        "at least one method",
    );
    assert_error(
        &format!("{}methods = [\"G(T\"]\n", base()),
        "route[0].methods[0]",
        "not an HTTP method",
    );
    assert_error(
        &format!("{}host = \"a.example.com:443\"\n", base()),
        "route[0].host",
        "is not a host name",
    );
    assert_error(
        &format!("{}auth = \"maybe\"\n", base()),
        "route[0].auth",
        "not an auth mode",
    );
    assert_error(
        &format!("{}auth = \"none\"\n", base()),
        "route[0].scopes",
        "public route",
    );
    assert_error(
        &base().replace("scopes = [\"api\"]", "scopes = [\"a b\"]"),
        "route[0].scopes[0]",
        "not a valid scope token",
    );
    assert_error(
        &base().replace("scopes = [\"api\"]", "scopes = []"),
        "route[0].scopes",
        "at least one scope",
    );
    assert_error(
        &format!("{}[route.claims]\ntenant = []\n", base()),
        "route[0].claims.tenant",
        "at least one accepted value",
    );
    assert_error(
        &format!("{}[route.headers]\n\"Bad Header\" = \"sub\"\n", base()),
        "route[0].headers.\"Bad Header\"",
        "not a valid header name",
    );
    assert_error(
        &format!("{}[route.headers]\n\"Cookie\" = \"sub\"\n", base()),
        "route[0].headers.\"Cookie\"",
        "cannot be set from a claim",
    );
    assert_error(
        &format!("{}[route.headers]\n\"Connection\" = \"sub\"\n", base()),
        "route[0].headers.\"Connection\"",
        "cannot be set from a claim",
    );
}

#[test]
fn duplicate_and_shadowed_routes() {
    assert_error(
        &format!("{}{ROUTE}", base()),
        "route[1].id",
        "duplicate id `r`",
    );
    let shadow = format!("{}{}", base(), ROUTE.replace("id = \"r\"", "id = \"r2\""));
    assert_error(&shadow, "route[1]", "can never be chosen");
    // Disjoint methods on the same prefix are fine.
    let ok_pair = format!(
        "{ISSUER}{UPSTREAM}{}{}",
        ROUTE.replace("scopes", "methods = [\"GET\"]\nscopes"),
        ROUTE
            .replace("id = \"r\"", "id = \"w\"")
            .replace("scopes", "methods = [\"PUT\"]\nscopes")
    );
    assert_eq!(ok(&ok_pair).routes.len(), 2);
    // A route whose methods are a subset of an earlier method-less route is shadowed.
    let subset = format!(
        "{}{}",
        base(),
        ROUTE
            .replace("id = \"r\"", "id = \"g\"")
            .replace("scopes", "methods = [\"GET\"]\nscopes")
    );
    assert_error(&subset, "route[1]", "can never be chosen");
}

#[test]
fn durations_and_addresses() {
    assert_error(
        &base().replace(
            "discovery = true",
            "discovery = true\nleeway = \"5 parsecs\"",
        ),
        "issuer[0].leeway",
        "is not a duration",
    );
    assert_error(
        &base().replace(
            "discovery = true",
            "discovery = true\njwks_refresh = \"0s\"",
        ),
        "issuer[0].jwks_refresh",
        "greater than zero",
    );
    assert_error(
        &format!("{}timeout = \"soon\"\n", base().replace(ROUTE, "")),
        "upstream[0].timeout",
        "is not a duration",
    );
    assert_error(
        &format!("[server]\nlisten = \"localhost:80\"\n{}", base()),
        "server.listen",
        "IP:port",
    );
    assert_error(
        &format!(
            "[server]\nlisten = \"127.0.0.1:80\"\nadmin_listen = \"127.0.0.1:80\"\n{}",
            base()
        ),
        "server.admin_listen",
        "must differ",
    );
    assert_error(
        &format!("[server]\nshutdown_grace = \"x\"\n{}", base()),
        "server.shutdown_grace",
        "is not a duration",
    );
    assert_error(
        &format!("[server]\nrealm = \"a\\\"b\"\n{}", base()),
        "server.realm",
        "without quotes",
    );
    assert_error(
        &format!("[server]\ntoken_cache_capacity = 0\n{}", base()),
        "server.token_cache_capacity",
        "at least 1",
    );
    assert_error(
        &format!("[log]\nformat = \"xml\"\n{}", base()),
        "log.format",
        "not a log format",
    );
    assert_error(
        &format!("[log]\nlevel = \"loud=[\"\n{}", base()),
        "log.level",
        "not a level",
    );
}

#[test]
fn urls() {
    assert_error(
        &base().replace("https://erp.example.com", "http://erp.example.com"),
        "issuer[0].issuer",
        "must use https://",
    );
    // Loopback and allow_http are the exceptions.
    ok(&base().replace("https://erp.example.com", "http://127.0.0.1:9000"));
    ok(&base().replace("https://erp.example.com", "http://localhost:9000"));
    ok(&base().replace("https://erp.example.com", "http://[::1]:9000"));
    ok(&base()
        .replace("https://erp.example.com", "http://idp.internal")
        .replace("discovery = true", "discovery = true\nallow_http = true"));
    assert_error(
        &base().replace("https://erp.example.com/identity", "ftp://x"),
        "issuer[0].issuer",
        "unsupported URL scheme",
    );
    assert_error(
        &base().replace(
            "discovery = true",
            "jwks_uri = \"http://keys.example.com/jwks\"",
        ),
        "issuer[0].jwks_uri",
        "must use https://",
    );
    assert_error(
        &base().replace(
            "discovery = true",
            "discovery = true\njwks_uri = \"https://x/jwks\"",
        ),
        "issuer[0].jwks_uri",
        "not both",
    );
    assert_error(
        &base().replace("discovery = true\n", ""),
        "issuer[0].jwks_uri",
        "set jwks_uri, or discovery = true",
    );
    assert_error(
        &base().replace("http://127.0.0.1:8081", "127.0.0.1:8081"),
        "upstream[0].url",
        "",
    );
    assert_error(
        &base().replace("http://127.0.0.1:8081", "http://127.0.0.1:8081/?q=1"),
        "upstream[0].url",
        "query or fragment",
    );
}

#[test]
fn algorithms() {
    let with = |algs: &str| {
        base().replace(
            "discovery = true",
            &format!("discovery = true\nalgorithms = {algs}"),
        )
    };
    assert_error(
        &with("[\"none\"]"),
        "issuer[0].algorithms[0]",
        "`none` is never allowed",
    );
    assert_error(&with("[\"HS256\"]"), "issuer[0].algorithms[0]", "HMAC");
    assert_error(
        &with("[\"RS256\", \"XS1\"]"),
        "issuer[0].algorithms[1]",
        "unknown algorithm `XS1`",
    );
    assert_error(&with("[]"), "issuer[0].algorithms", "at least one");
    assert_eq!(
        ok(&with("[\"ES256\"]")).issuers[0].algorithms,
        vec![jsonwebtoken::Algorithm::ES256]
    );
}

#[test]
fn issuers_and_upstreams() {
    assert_error(
        &base().replace("audiences = [\"api\"]", "audiences = []"),
        "issuer[0].audiences",
        "at least one",
    );
    assert_error(
        &base().replace("audiences = [\"api\"]\n", ""),
        "issuer[0].audiences",
        "missing key",
    );
    assert_error(
        &format!("{ISSUER}{ISSUER}{UPSTREAM}{ROUTE}"),
        "issuer[1].id",
        "duplicate id `erp`",
    );
    assert_error(
        &format!(
            "{ISSUER}{}{UPSTREAM}{ROUTE}",
            ISSUER.replace("id = \"erp\"", "id = \"two\"")
        ),
        "issuer[1].issuer",
        "configured twice",
    );
    assert_error(
        &format!("{ISSUER}{UPSTREAM}{UPSTREAM}{ROUTE}"),
        "upstream[1].id",
        "duplicate id `erp`",
    );
    assert_error(
        &base().replace("id = \"erp\"\nurl", "id = \"bad id\"\nurl"),
        "upstream[0].id",
        "must be 1 to 64 characters",
    );
}

#[test]
fn all_errors_are_reported_together() {
    let toml = base()
        .replace("leeway", "x")
        .replace("upstream = \"erp\"\nscopes", "upstream = \"ghost\"\nscopes")
        .replace("discovery = true", "discovery = true\nleeway = \"bad\"");
    let errs = errors(&toml);
    assert!(errs.len() >= 2, "{errs:?}");
}

#[test]
fn a_missing_file_is_named() {
    let e = load(std::path::Path::new("/nonexistent/tollgate.toml")).unwrap_err();
    assert_eq!(
        e.to_string(),
        "/nonexistent/tollgate.toml: no such configuration file"
    );
}

fn with_session(session: &str) -> String {
    format!("{ISSUER}{UPSTREAM}[upstream.session]\n{session}\n{ROUTE}")
}

const CREDS: &str = "[upstream.session.credentials]\nname = \"api-user\"\npassword = \"secret\"\n";

#[test]
fn session_defaults_follow_the_design() {
    let c = ok(&with_session(&format!(
        "max_upstream_sessions = 2\n{CREDS}"
    )));
    let s = c.upstreams[0].session.as_ref().unwrap();
    assert_eq!(s.mode, crate::config::SessionMode::ByScope);
    assert_eq!(s.concurrent_scope, "api:concurrent_access");
    assert_eq!(s.creation, crate::config::Creation::Active);
    assert_eq!(
        (s.login_path.as_str(), s.logout_path.as_str()),
        ("/entity/auth/login", "/entity/auth/logout")
    );
    assert_eq!(
        s.marker_cookies,
        vec!["ASP.NET_SessionId".to_owned(), ".ASPXAUTH".to_owned()]
    );
    assert!(s.expired_redirect.is_match("/Frames/Login.aspx"));
    assert_eq!(
        (
            s.max_sessions_per_grant,
            s.max_inflight_per_session,
            s.max_queue_per_session
        ),
        (3, 1, 20)
    );
    assert_eq!(s.max_queue_wait, Duration::from_secs(30));
    assert_eq!(s.idle_ttl, Duration::from_secs(300));
    assert_eq!(s.max_session_age, Duration::from_secs(8 * 3600));
    assert_eq!(s.admission_wait, Duration::from_secs(5));
    assert_eq!(s.login_timeout, Duration::from_secs(30));
    assert_eq!(s.login_failure_cooldown, Duration::from_secs(900));
    assert_eq!(s.max_replay_body, 10 << 20);
    assert_eq!(s.handle_cookie, "tollgate_session");
    assert!(s.key.is_none());
    assert_eq!(s.grant_key.len(), 5);
    let creds = s.credentials.as_ref().unwrap();
    assert_eq!(creds.name, "api-user");
    assert!(
        !format!("{creds:?}").contains("secret"),
        "Debug shows no password"
    );
}

#[test]
fn session_errors_name_their_keys() {
    let p = "upstream[0].session";
    assert_error(
        &with_session(CREDS),
        &format!("{p}.max_upstream_sessions"),
        "missing key",
    );
    assert_error(
        &with_session(&format!("max_upstream_sessions = 0\n{CREDS}")),
        &format!("{p}.max_upstream_sessions"),
        "at least 1",
    );
    assert_error(
        &with_session("max_upstream_sessions = 2"),
        &format!("{p}.credentials"),
        "missing table",
    );
    assert_error(
        &with_session(&format!(
            "max_upstream_sessions = 2\nmode = \"sometimes\"\n{CREDS}"
        )),
        &format!("{p}.mode"),
        "not a session mode",
    );
    assert_error(
        &with_session(&format!(
            "max_upstream_sessions = 2\ncreation = \"magic\"\n{CREDS}"
        )),
        &format!("{p}.creation"),
        "not a creation mode",
    );
    assert_error(
        &with_session(&format!(
            "max_upstream_sessions = 2\ncreation = \"passive\"\n{CREDS}"
        )),
        &format!("{p}.credentials"),
        "no use",
    );
    assert_error(
        &with_session(&format!(
            "max_upstream_sessions = 2\nexpired_redirect = \"(\"\n{CREDS}"
        )),
        &format!("{p}.expired_redirect"),
        "not a regular expression",
    );
    assert_error(
        &with_session(&format!(
            "max_upstream_sessions = 2\nidle_ttl = \"soon\"\n{CREDS}"
        )),
        &format!("{p}.idle_ttl"),
        "not a duration",
    );
    assert_error(
        &with_session(&format!(
            "max_upstream_sessions = 2\nmax_replay_body = \"lots\"\n{CREDS}"
        )),
        &format!("{p}.max_replay_body"),
        "not a byte size",
    );
    assert_error(
        &with_session(&format!(
            "max_upstream_sessions = 2\nhandle_cookie = \".ASPXAUTH\"\n{CREDS}"
        )),
        &format!("{p}.handle_cookie"),
        "upstream cookie name",
    );
    assert_error(
        &with_session(&format!(
            "max_upstream_sessions = 2\ngrant_key = [\"claim:grant_id\", \"whatever\"]\n{CREDS}"
        )),
        &format!("{p}.grant_key[1]"),
        "not a grant key source",
    );
    assert_error(
        &with_session(&format!(
            "max_upstream_sessions = 2\nlogin_path = \"/a/../b\"\n{CREDS}"
        )),
        &format!("{p}.login_path"),
        "normalised",
    );
    assert_error(
        &with_session(&format!(
            "max_upstream_sessions = 2\nconcurrent_without_handle = \"maybe\"\n{CREDS}"
        )),
        &format!("{p}.concurrent_without_handle"),
        "reject",
    );
    assert_error(
        &with_session("max_upstream_sessions = 2\n[upstream.session.credentials]\nname = \"x\"\n"),
        &format!("{p}.credentials.password"),
        "missing key",
    );
    assert_error(
        &with_session("max_upstream_sessions = 2\n[upstream.session.credentials]\nname = \"x\"\npassword = \"a\"\npassword_file = \"/x\"\n"),
        &format!("{p}.credentials.password"),
        "not both",
    );
    assert_error(
        &with_session("max_upstream_sessions = 2\n[upstream.session.credentials]\nname = \"x\"\npassword_file = \"/nonexistent/pw\"\n"),
        &format!("{p}.credentials.password_file"),
        "cannot read",
    );
    assert_error(
        &with_session(&format!(
            "max_upstream_sessions = 2\nhandle_key_file = \"/nonexistent/key\"\n{CREDS}"
        )),
        &format!("{p}.handle_key_file"),
        "cannot read",
    );
}

#[test]
fn secret_files_are_read_with_the_newline_trimmed() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("pw"), "s3cret\n").unwrap();
    std::fs::write(dir.path().join("key"), format!("{}\n", "ab".repeat(32))).unwrap();
    std::fs::write(dir.path().join("short-key"), "abcd\n").unwrap();
    let main = dir.path().join("tollgate.toml");
    let body = |key: &str| {
        with_session(&format!(
            "max_upstream_sessions = 2\nhandle_key_file = \"{key}\"\n[upstream.session.credentials]\nname = \"x\"\npassword_file = \"pw\"\n"
        ))
    };
    std::fs::write(&main, body("key")).unwrap();
    let c = load(&main).unwrap();
    let s = c.upstreams[0].session.as_ref().unwrap();
    assert_eq!(s.credentials.as_ref().unwrap().password.expose(), "s3cret");
    assert_eq!(*s.key.as_ref().unwrap().0, [0xab; 32]);
    assert!(
        !format!("{s:?}").contains("171"),
        "Debug shows no key bytes"
    );
    std::fs::write(&main, body("short-key")).unwrap();
    let e = load(&main).unwrap_err();
    assert!(
        e.to_string()
            .contains("upstream[0].session.handle_key_file: ")
            && e.to_string().contains("64 hex characters"),
        "{e}"
    );
}

#[test]
fn the_store_is_redis_directly_or_through_sentinel() {
    let base = format!("{ISSUER}{UPSTREAM}{ROUTE}");
    let direct = ok(&format!(
        "[store]\nkind = \"redis\"\nurl = \"redis://:pw@127.0.0.1:6379/2\"\n{base}"
    ));
    let StoreConfig::Redis(r) = &direct.store else {
        panic!("not redis")
    };
    assert_eq!(r.target.redacted(), "redis://***@127.0.0.1:6379/2");
    assert_eq!(
        r.linger,
        Duration::from_millis(250),
        "places kept by default"
    );
    let none = ok(&format!(
        "[store]\nkind = \"redis\"\nurl = \"redis://h:1\"\nlinger = \"0s\"\n{base}"
    ));
    assert!(matches!(&none.store, StoreConfig::Redis(r) if r.linger.is_zero()));
    let memory = errors(&format!("[store]\nlinger = \"1s\"\n{base}"));
    assert!(
        memory
            .iter()
            .any(|(k, m)| k == "store.linger" && m.contains("kind = \"redis\"")),
        "{memory:?}"
    );
    assert!(
        !format!("{direct:?}").contains(":pw@"),
        "Debug shows the password"
    );

    let sentinel = ok(&format!(
        "[store]\nkind = \"redis\"\nurl = \"redis+sentinel://app:s%40hunter-pw@10.0.0.1:26379,10.0.0.2:26379/mymaster/3\"\n{base}"
    ));
    let StoreConfig::Redis(r) = &sentinel.store else {
        panic!("not redis")
    };
    match &r.target {
        RedisTarget::Sentinel {
            sentinels,
            master,
            node,
        } => {
            assert_eq!(sentinels, &["10.0.0.1:26379", "10.0.0.2:26379"]);
            assert_eq!(master, "mymaster");
            assert_eq!(node.db, 3);
            assert_eq!(node.username.as_deref(), Some("app"));
            assert_eq!(
                node.password.as_ref().map(Secret::expose),
                Some("s@hunter-pw")
            );
            assert!(!node.tls);
        }
        other @ RedisTarget::Url(_) => panic!("{other:?}"),
    }
    assert!(!r.target.redacted().contains("hunter-pw"));
    assert!(!format!("{sentinel:?}").contains("hunter-pw"));

    let keys = ok(&format!(
        "[store]\nkind = \"redis\"\nsentinels = [\"127.0.0.1:26379\"]\nmaster_name = \"m\"\n{base}"
    ));
    assert!(matches!(
        keys.store,
        StoreConfig::Redis(RedisConfig {
            target: RedisTarget::Sentinel { .. },
            ..
        })
    ));
}

#[test]
fn store_errors_name_the_key_and_never_the_password() {
    let base = format!("{ISSUER}{UPSTREAM}{ROUTE}");
    for (store, key, text) in [
        (
            "url = \"http://:hunter2@h:1\"",
            "store.url",
            "must start with redis://",
        ),
        (
            "url = \"redis+sentinel://:hunter2@h:1\"",
            "store.url",
            "primary's name is missing",
        ),
        (
            "url = \"redis+sentinel://:hunter2@h/m\"",
            "store.url",
            "is not host:port",
        ),
        ("sentinels = [\"h:1\"]", "store.master_name", "missing key"),
        ("master_name = \"m\"", "store.sentinels", "missing key"),
        (
            "sentinels = [\"nohost\"]\nmaster_name = \"m\"",
            "store.sentinels[0]",
            "is not host:port",
        ),
        (
            "url = \"redis://h:1\"\nsentinels = [\"h:1\"]",
            "store.url",
            "not both",
        ),
        // Not shaped like a URL at all, and a password with unescaped `/` and `#`.
        (
            "url = \"redis//:hunter2@h:1\"",
            "store.url",
            "must start with redis://",
        ),
        (
            "url = \"redis://:hun/ter#2hunter2@h:1/0\"\nsentinels = [\"h:1\"]",
            "store.url",
            "not both",
        ),
        (
            "url = \"rediss://:a/hunter2@[::1\"",
            "store.url",
            "is not a Redis URL",
        ),
        (
            "url = \"redis://:hunter2@h:1\"\nlinger = \"soon\"",
            "store.linger",
            "is not a duration",
        ),
        (
            "url = \"redis://:hunter2@h:1\"\nlease_ttl = \"3s\"\nlinger = \"1s\"",
            "store.linger",
            "shorter than a third of store.lease_ttl",
        ),
    ] {
        let errs = errors(&format!("[store]\nkind = \"redis\"\n{store}\n{base}"));
        let found = errs
            .iter()
            .find(|(k, _)| k == key)
            .unwrap_or_else(|| panic!("{store}: no error at {key}: {errs:?}"));
        assert!(found.1.contains(text), "{store}: {}", found.1);
        for (_, m) in &errs {
            assert!(!m.contains("hunter2"), "{m}");
        }
    }
}

#[test]
fn a_syntax_error_on_a_secrets_line_shows_its_place_not_the_line() {
    for line in [
        "url = \"redis://:hunter2@h:1/0",
        "url = redis://:hunter2@h:1/0",
        "password = \"hunter2",
    ] {
        let text = error_text(&format!("{}\n[store]\n{line}\n", base()));
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("line "), "the place is kept: {text}");
    }
}

#[test]
fn the_raw_sections_never_show_a_secret_in_debug() {
    let raw: file::FileConfig = toml::from_str(&format!(
        "[store]\nkind = \"redis\"\nurl = \"redis://:hunter2-url@h:1\"\n{}",
        with_introspection_and_credentials()
    ))
    .unwrap_or_else(|e| panic!("{e}"));
    let shown = format!("{raw:?}");
    assert!(shown.contains("url: Some(Secret(<redacted>))"), "{shown}");
    for secret in ["hunter2-url", "hunter2-client", "hunter2-login"] {
        assert!(!shown.contains(secret), "{secret} in {shown}");
    }
}

fn with_introspection_and_credentials() -> String {
    r#"
[[issuer]]
id = "erp"
issuer = "https://erp.example.com/identity"
validation = "introspection"
[issuer.introspection]
client_id = "gw"
client_secret = "hunter2-client"

[[upstream]]
id = "erp"
url = "http://127.0.0.1:8081"
[upstream.session]
max_upstream_sessions = 2
[upstream.session.credentials]
name = "api-user"
password = "hunter2-login"
"#
    .to_owned()
}

#[test]
fn the_examples_show_metadata_step_up_and_cors() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("config/gateway-with-routes-file.toml");
    let c = load(&path).unwrap_or_else(|e| panic!("{e}"));
    let m = c.metadata.as_ref().expect("the example has [metadata]");
    assert_eq!(m.resource().identifier(), "https://erp.example.com");
    assert!(c.challenge_head().contains("resource_metadata="));
    let route = |id: &str| c.routes.iter().find(|r| &*r.id == id).unwrap();
    let RouteAuth::Bearer(payments) = &route("payments").auth else {
        panic!("payments is a bearer route")
    };
    let step_up = payments.step_up.as_ref().expect("payments steps up");
    assert_eq!(step_up.max_age, Some(900));
    assert!(route("spa-orders").cors.is_some());
}

#[test]
fn the_admin_token_file_is_read_checked_and_never_shown() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
    write("good", "hunter2-0123456789abcdef\n");
    write("short", "hunter2\n");
    write("spaces", "hunter2 0123456789 abcdef\n");
    let main = dir.path().join("tollgate.toml");
    let load_with = |server: &str| {
        std::fs::write(&main, format!("[server]\n{server}\n{}", base())).unwrap();
        load(&main)
    };
    let c = load_with("admin_token_file = \"good\"").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        c.server.admin_token.as_ref().map(Secret::expose),
        Some("hunter2-0123456789abcdef")
    );
    assert!(!c.server.admin_metrics_auth);
    assert!(!format!("{:?}", c.server).contains("hunter2"));
    let off = load_with("").unwrap_or_else(|e| panic!("{e}"));
    assert!(off.server.admin_token.is_none());

    for (server, key, fragment) in [
        (
            "admin_token_file = \"short\"",
            "server.admin_token_file",
            "at least 16 characters",
        ),
        (
            "admin_token_file = \"spaces\"",
            "server.admin_token_file",
            "at least 16 characters",
        ),
        (
            "admin_token_file = \"missing\"",
            "server.admin_token_file",
            "cannot read",
        ),
        (
            "admin_metrics_auth = true",
            "server.admin_metrics_auth",
            "needs server.admin_token_file",
        ),
    ] {
        let e = load_with(server).expect_err(server);
        let found = e.0.iter().find(|e| e.key == key);
        assert!(
            found.is_some_and(
                |e| e.message.contains(fragment) && e.origin.ends_with("tollgate.toml")
            ),
            "{server}: {e}"
        );
        assert!(!e.to_string().contains("hunter2"), "{e}");
    }
}

#[test]
fn send_timeout_defaults_to_a_minute() {
    assert_eq!(ok(&base()).server.send_timeout, Duration::from_secs(60));
    let c = ok(&format!("[server]\nsend_timeout = \"5s\"\n{}", base()));
    assert_eq!(c.server.send_timeout, Duration::from_secs(5));
    assert_error(
        &format!("[server]\nsend_timeout = \"0s\"\n{}", base()),
        "server.send_timeout",
        "",
    );
}

#[test]
fn body_read_timeout_defaults_to_thirty_seconds() {
    assert_eq!(
        ok(&base()).server.body_read_timeout,
        Duration::from_secs(30)
    );
    let c = ok(&format!("[server]\nbody_read_timeout = \"5s\"\n{}", base()));
    assert_eq!(c.server.body_read_timeout, Duration::from_secs(5));
    assert_error(
        &format!("[server]\nbody_read_timeout = \"0s\"\n{}", base()),
        "server.body_read_timeout",
        "",
    );
}

#[test]
fn an_upstreams_idle_timeout_defaults_to_ninety_seconds_and_refuses_zero() {
    assert_eq!(
        ok(&base()).upstreams[0].idle_timeout,
        Duration::from_secs(90)
    );
    let with = |v: &str| format!("{ISSUER}{UPSTREAM}idle_timeout = \"{v}\"\n{ROUTE}");
    assert_eq!(
        ok(&with("4s")).upstreams[0].idle_timeout,
        Duration::from_secs(4)
    );
    assert_error(&with("0s"), "upstream[0].idle_timeout", "greater than zero");
    assert_error(&with("soon"), "upstream[0].idle_timeout", "soon");
}

#[test]
fn http2_limits_have_defaults_and_refuse_zero() {
    let c = ok(&base());
    let h2 = c.server.http2;
    assert_eq!(h2.max_concurrent_streams, 100);
    assert_eq!(h2.max_pending_accept_reset_streams, 20);
    assert_eq!(h2.max_local_error_reset_streams, 256);
    assert_eq!(h2.keep_alive_interval, Duration::from_secs(30));
    assert_eq!(h2.keep_alive_timeout, Duration::from_secs(20));
    let set = ok(&format!(
        "[server]\nhttp2_max_concurrent_streams = 8\nhttp2_max_pending_accept_reset_streams = 4\n\
         http2_max_local_error_reset_streams = 16\nhttp2_keep_alive_interval = \"5s\"\n\
         http2_keep_alive_timeout = \"2s\"\n{}",
        base()
    ));
    assert_eq!(set.server.http2.max_concurrent_streams, 8);
    assert_eq!(set.server.http2.max_pending_accept_reset_streams, 4);
    assert_eq!(set.server.http2.max_local_error_reset_streams, 16);
    assert_eq!(set.server.http2.keep_alive_interval, Duration::from_secs(5));
    assert_eq!(set.server.http2.keep_alive_timeout, Duration::from_secs(2));
    for key in [
        "http2_max_concurrent_streams",
        "http2_max_pending_accept_reset_streams",
        "http2_max_local_error_reset_streams",
    ] {
        assert_error(
            &format!("[server]\n{key} = 0\n{}", base()),
            &format!("server.{key}"),
            "at least 1",
        );
    }
    assert_error(
        &format!("[server]\nhttp2_keep_alive_interval = \"soon\"\n{}", base()),
        "server.http2_keep_alive_interval",
        "not a duration",
    );
    let errs = errors(&format!(
        "[server]\nhttp2_keep_alive_timeout = \"0s\"\n{}",
        base()
    ));
    assert!(
        errs.iter()
            .any(|(k, _)| k == "server.http2_keep_alive_timeout"),
        "{errs:?}"
    );
}

#[test]
fn the_access_file_needs_an_existing_folder() {
    assert_error(
        &format!(
            "[log]\naccess_file = \"/nonexistent-folder/access.log\"\n{}",
            base()
        ),
        "log.access_file",
        "does not exist",
    );
    let c = ok(&format!(
        "[log]\naccess_file = \"/tmp/tollgate-access.log\"\n{}",
        base()
    ));
    assert_eq!(
        c.log.access_file.as_deref(),
        Some(std::path::Path::new("/tmp/tollgate-access.log"))
    );
}
