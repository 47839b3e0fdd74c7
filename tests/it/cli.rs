//! The command line as a user meets it: --version, --help, `check` on every file in config/ and
//! on broken files (exit 1, a message naming the file, the key path and the problem), environment
//! overrides, and `run` refusing a bad file.

use std::path::{Path, PathBuf};
use std::process::Output;

use crate::support::process::{run as tollgate, Process};

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn version_and_help() {
    let v = tollgate(&["--version"], &[]);
    assert!(v.status.success());
    assert_eq!(
        String::from_utf8_lossy(&v.stdout).trim(),
        format!("tollgate {}", env!("CARGO_PKG_VERSION"))
    );
    let h = tollgate(&["--help"], &[]);
    assert!(h.status.success());
    let help = String::from_utf8_lossy(&h.stdout);
    for sub in ["run", "check", "demo", "--config"] {
        assert!(help.contains(sub), "--help lacks {sub}:\n{help}");
    }
    let none = tollgate(&[], &[]);
    assert_eq!(none.status.code(), Some(2));
}

/// Every example in `config/` passes `tollgate check`. They are checked from a copy of the
/// folder, next to the files they name (a certificate and key made now, secrets drawn now):
/// the repository holds no key or certificate, not even a stand-in one could deploy by mistake.
#[test]
fn every_file_in_config_passes_check() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let copy = tempfile::tempdir().unwrap();
    let at = |rel: &str| {
        let p = copy.path().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        p
    };
    let leaf = crate::support::certs::Ca::new("config check").server();
    std::fs::write(at("tls/server.crt"), &leaf.cert).unwrap();
    std::fs::write(at("tls/server.key"), &leaf.key).unwrap();
    let hex: String = (0..32)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect();
    std::fs::write(at("secrets/handle.key"), format!("{hex}\n")).unwrap();
    std::fs::write(at("secrets/erp-password"), "a-password\n").unwrap();
    std::fs::write(at("secrets/admin-token"), format!("{hex}\n")).unwrap();
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("toml") {
            continue;
        }
        std::fs::copy(&path, copy.path().join(path.file_name().unwrap())).unwrap();
    }
    for entry in std::fs::read_dir(copy.path()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("toml") {
            continue;
        }
        let o = tollgate(&["check", "--config", path.to_str().unwrap()], &[]);
        assert!(o.status.success(), "{}: {}", path.display(), text(&o));
        let out = String::from_utf8_lossy(&o.stdout);
        assert_eq!(out.lines().count(), 1, "one-line summary expected: {out}");
        assert!(out.contains(": OK: "), "{out}");
        checked += 1;
    }
    assert!(checked >= 4, "only {checked} files in config/");
    // The reference file (docs/configuration.md's reference example) parses to what it says.
    let o = tollgate(
        &[
            "check",
            "--config",
            dir.join("tollgate.toml").to_str().unwrap(),
        ],
        &[],
    );
    assert!(String::from_utf8_lossy(&o.stdout).contains(
        "4 routes, 1 issuer, 1 upstream; proxy on 127.0.0.1:8080, admin on 127.0.0.1:9090"
    ));
}

fn write(dir: &Path, name: &str, body: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, body).unwrap();
    p
}

const BASE: &str = r#"
[[issuer]]
id = "erp"
issuer = "https://erp.example.com/identity"
discovery = true
audiences = ["api"]

[[upstream]]
id = "erp"
url = "http://127.0.0.1:8081"

[[route]]
id = "a"
prefix = "/a/"
upstream = "erp"
scopes = ["api"]
"#;

#[test]
fn check_names_file_key_and_problem() {
    let dir = tempfile::tempdir().unwrap();
    let cases: Vec<(&str, String, &str, &str)> = vec![
        ("unknown key", format!("[server]\nlisen = \"x\"\n{BASE}"), "server.lisen", "unknown key"),
        ("missing upstream", BASE.replace("upstream = \"erp\"\nscopes", "upstream = \"nope\"\nscopes"), "route[0].upstream", "upstream `nope` is not defined"),
        ("bad duration", BASE.replace("discovery = true", "discovery = true\nleeway = \"5 parsecs\""), "issuer[0].leeway", "is not a duration"),
        ("bad url", BASE.replace("http://127.0.0.1:8081", "not a url"), "upstream[0].url", "is not a URL"),
        ("alg none", BASE.replace("discovery = true", "discovery = true\nalgorithms = [\"none\"]"), "issuer[0].algorithms[0]", "`none` is never allowed"),
        ("unknown alg", BASE.replace("discovery = true", "discovery = true\nalgorithms = [\"RS256\", \"XS999\"]"), "issuer[0].algorithms[1]", "unknown algorithm `XS999`"),
        ("hmac alg", BASE.replace("discovery = true", "discovery = true\nalgorithms = [\"HS256\"]"), "issuer[0].algorithms[0]", "HMAC algorithms"),
        ("duplicate route ids", format!("{BASE}\n[[route]]\nid = \"a\"\nprefix = \"/b/\"\nupstream = \"erp\"\n"), "route[1].id", "duplicate id `a`"),
        ("exact and prefix", format!("{BASE}\n[[route]]\nid = \"b\"\nprefix = \"/b/\"\nexact = \"/b\"\nupstream = \"erp\"\n"), "route[1]", "set either exact or prefix, not both"),
        ("plain http issuer", BASE.replace("https://erp.example.com", "http://erp.example.com"), "issuer[0].issuer", "must use https://"),
        ("shadowed route", format!("{BASE}\n[[route]]\nid = \"b\"\nprefix = \"/a/\"\nupstream = \"erp\"\n"), "route[1]", "can never be chosen"),
        ("bad method", BASE.replace("scopes = [\"api\"]", "scopes = [\"api\"]\nmethods = [\"GET\", \"G E T\"]"), "route[0].methods[1]", "is not an HTTP method"),
        ("bad listen", format!("[server]\nlisten = \"localhost\"\n{BASE}"), "server.listen", "is not an IP:port address"),
        ("wrong type", format!("[server]\ntoken_cache_capacity = \"many\"\n{BASE}"), "server.token_cache_capacity", "invalid type"),
        ("no threads", format!("[server]\nthreads = 0\n{BASE}"), "server.threads", "must be between 1 and 1024 (got 0)"),
        ("too many threads", format!("[server]\nthreads = 100000\n{BASE}"), "server.threads", "must be between 1 and 1024 (got 100000)"),
        ("unknown scheduler", format!("[server]\nscheduler = \"fast\"\n{BASE}"), "server.scheduler", "`fast` is not a scheduler; use \"per-core\" or \"work-stealing\""),
        ("missing audiences", BASE.replace("audiences = [\"api\"]\n", ""), "issuer[0].audiences", "missing key"),
        ("plain http resource", format!("{BASE}\n[metadata]\nresource = \"http://erp.example.com\"\n"), "metadata.resource", "must use https://"),
        ("relative resource", format!("{BASE}\n[metadata]\nresource = \"/entity\"\n"), "metadata.resource", "is not a URL"),
        ("resource missing", format!("{BASE}\n[metadata]\nresource_name = \"ERP\"\n"), "metadata.resource", "missing key"),
        ("acr value with a space", BASE.replace("scopes = [\"api\"]", "scopes = [\"api\"]\nacr_values = [\"mfa phr\"]"), "route[0].acr_values[0]", "is not an acr value"),
        ("max_age not whole seconds", BASE.replace("scopes = [\"api\"]", "scopes = [\"api\"]\nmax_age = \"90.5s\""), "route[0].max_age", "must be whole seconds"),
        ("any origin with credentials", format!("{BASE}[route.cors]\nallowed_origins = [\"*\"]\nallow_credentials = true\n"), "route[0].cors.allowed_origins", "`*` cannot be used with allow_credentials = true"),
        ("origin with a path", format!("{BASE}[route.cors]\nallowed_origins = [\"https://app.example.com/spa\"]\n"), "route[0].cors.allowed_origins[0]", "is not an origin"),
        ("origin without scheme", format!("{BASE}[route.cors]\nallowed_origins = [\"app.example.com\"]\n"), "route[0].cors.allowed_origins[0]", "is not an origin"),
    ];
    for (name, body, key, message) in cases {
        let path = write(
            dir.path(),
            &format!("{}.toml", name.replace(' ', "-")),
            &body,
        );
        let o = tollgate(&["check", "--config", path.to_str().unwrap()], &[]);
        let out = text(&o);
        assert_eq!(o.status.code(), Some(1), "{name}: {out}");
        let expected_prefix = format!("{}: {key}: ", path.display());
        assert!(
            out.lines()
                .any(|l| l.starts_with(&expected_prefix) && l.contains(message)),
            "{name}: expected a line `{expected_prefix}… {message}`, got:\n{out}"
        );
    }

    // A TOML syntax error names the file and the line.
    let path = write(dir.path(), "syntax.toml", "[server\nlisten = 1");
    let o = tollgate(&["check", "--config", path.to_str().unwrap()], &[]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o).contains(&path.display().to_string()),
        "{}",
        text(&o)
    );

    // A missing file.
    let o = tollgate(&["check", "--config", "/nonexistent/tollgate.toml"], &[]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("/nonexistent/tollgate.toml: no such configuration file"));

    // Errors in a route file name the route file.
    let routes = write(
        dir.path(),
        "routes.toml",
        "[[route]]\nid = \"r\"\nprefix = \"/r/\"\nupstream = \"ghost\"\n",
    );
    let main = write(
        dir.path(),
        "main.toml",
        &format!("[server]\nroutes_file = \"routes.toml\"\n{BASE}"),
    );
    let o = tollgate(&["check", "--config", main.to_str().unwrap()], &[]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o).contains(&format!(
            "{}: route[0].upstream: upstream `ghost` is not defined",
            routes.display()
        )),
        "{}",
        text(&o)
    );

    // `run` refuses a bad file the same way, before binding anything.
    let bad = write(
        dir.path(),
        "bad-run.toml",
        &BASE.replace(
            "\"api\"]\n\n[[upstream]]",
            "\"api\"]\nleeway = \"soon\"\n\n[[upstream]]",
        ),
    );
    let o = tollgate(&["run", "--config", bad.to_str().unwrap()], &[]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("issuer[0].leeway"), "{}", text(&o));
}

/// `[telemetry]` falls back to the standard `OTEL_*` variables; a wrong one is a configuration
/// error that names it, and `OTEL_SDK_DISABLED` turns tracing off.
#[test]
fn otel_variables_configure_tracing() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "otel.toml", BASE);
    let p = path.to_str().unwrap();
    let endpoint = (
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "http://collector.example:4318",
    );
    let o = tollgate(
        &["check", "--config", p],
        &[
            endpoint,
            ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.1"),
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("traces to http://collector.example:4318/v1/traces (sampled 0.1)"),
        "{}",
        text(&o)
    );
    let o = tollgate(
        &["check", "--config", p],
        &[endpoint, ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o).contains(
            "telemetry.otlp_endpoint: OTEL_EXPORTER_OTLP_PROTOCOL `grpc` is not supported"
        ),
        "{}",
        text(&o)
    );
    let o = tollgate(
        &["check", "--config", p],
        &[endpoint, ("OTEL_SDK_DISABLED", "true")],
    );
    assert!(
        o.status.success() && !text(&o).contains("traces to"),
        "{}",
        text(&o)
    );
    // The file wins over the variables.
    let file = write(
        dir.path(),
        "file.toml",
        &format!(
            "{BASE}\n[telemetry]\notlp_endpoint = \"http://127.0.0.1:4318\"\nsample_ratio = 0.5\n"
        ),
    );
    let o = tollgate(&["check", "--config", file.to_str().unwrap()], &[endpoint]);
    assert!(
        text(&o).contains("traces to http://127.0.0.1:4318/v1/traces (sampled 0.5)"),
        "{}",
        text(&o)
    );
}

#[test]
fn environment_overrides_use_a_double_underscore_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "env.toml", BASE);
    let p = path.to_str().unwrap();
    let o = tollgate(
        &["check", "--config", p],
        &[
            ("TOLLGATE__SERVER__LISTEN", "0.0.0.0:8443"),
            ("TOLLGATE__SERVER__ADMIN_LISTEN", "127.0.0.1:9443"),
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stdout)
        .contains("proxy on 0.0.0.0:8443, admin on 127.0.0.1:9443"));
    // A single underscore (a Kubernetes service-link variable) is not an override.
    let o = tollgate(
        &["check", "--config", p],
        &[
            ("TOLLGATE_SERVER_LISTEN", "bogus"),
            ("TOLLGATE_PORT", "tcp://10.0.0.1:80"),
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    // A bad override says it came from the environment.
    let o = tollgate(
        &["check", "--config", p],
        &[("TOLLGATE__SERVER__LISTEN", "nonsense")],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o).contains(
            "environment (TOLLGATE__*): server.listen: `nonsense` is not an IP:port address"
        ),
        "{}",
        text(&o)
    );
    // `tollgate --config FILE` is `tollgate run --config FILE`.
    let bad = write(
        dir.path(),
        "bad.toml",
        &BASE.replace("audiences", "audience"),
    );
    let o = tollgate(&["--config", bad.to_str().unwrap()], &[]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o).contains("issuer[0].audience: unknown key"),
        "{}",
        text(&o)
    );
}

/// Runs `tollgate run` on `config` with `env` until `times` log lines contain `until`, then
/// stops it; returns its log.
async fn run_until(config: &Path, env: &[(&str, &str)], until: &str, times: usize) -> Vec<String> {
    let mut p = Process::spawn(&["run", "--config", config.to_str().unwrap()], env);
    p.wait_for_log(until, times).await;
    p.kill();
    p.logs()
}

#[tokio::test]
async fn rust_log_overrides_the_configured_level() {
    let dir = tempfile::tempdir().unwrap();
    // The issuer's JWKS is on a closed port, so a WARN line ("JWKS refresh failed") follows start.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let body = BASE
        .replace(
            "discovery = true",
            &format!("jwks_uri = \"http://{closed}/jwks\""),
        )
        .replace(
            "https://erp.example.com/identity",
            &format!("http://{closed}"),
        );
    let cfg = |level: &str| {
        format!("[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n[log]\nlevel = \"{level}\"\n{body}")
    };

    // Configured "error", RUST_LOG=info: the INFO start-up line appears.
    let quiet = write(dir.path(), "quiet.toml", &cfg("error"));
    let lines = run_until(&quiet, &[("RUST_LOG", "info")], "tollgate listening", 1).await;
    assert!(
        lines.iter().any(|l| l.contains("tollgate listening")),
        "{lines:?}"
    );
    // Standard error is a pipe here: plain text, no colour codes.
    assert!(
        lines.iter().all(|l| !l.contains('\u{1b}')),
        "ANSI colour codes in a log written to a pipe: {lines:?}"
    );

    // Configured "info", RUST_LOG=warn: the WARN line appears (twice: the retry comes a second
    // after start, well after the start-up line), the INFO line does not.
    let loud = write(dir.path(), "loud.toml", &cfg("info"));
    let lines = run_until(&loud, &[("RUST_LOG", "warn")], "JWKS refresh failed", 2).await;
    assert!(
        lines.iter().any(|l| l.contains("JWKS refresh failed")),
        "{lines:?}"
    );
    assert!(
        !lines.iter().any(|l| l.contains("tollgate listening")),
        "{lines:?}"
    );

    // And without RUST_LOG the configured level rules.
    let lines = run_until(&loud, &[], "tollgate listening", 1).await;
    assert!(
        lines.iter().any(|l| l.contains("tollgate listening")),
        "{lines:?}"
    );
}

#[test]
fn config_print_shows_the_effective_configuration_without_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let routes = write(
        dir.path(),
        "routes.toml",
        "[[route]]\nid = \"from-the-route-file\"\nprefix = \"/extra/\"\nupstream = \"erp\"\nauth = \"none\"\n",
    );
    let key = write(dir.path(), "handle.key", &"ab".repeat(32));
    let main = write(
        dir.path(),
        "tollgate.toml",
        &format!(
            r#"[server]
realm = "from-the-file"
routes_file = "{}"

[store]
kind = "redis"
url = "redis://app:store-secret-1@127.0.0.1:6379/0"

[[issuer]]
id = "erp"
issuer = "https://erp.example.com/identity"
jwks_uri = "https://erp.example.com/identity/jwks"
audiences = ["api"]
validation = "auto"
[issuer.introspection]
endpoint = "https://user:url-secret-2@erp.example.com/introspect"
client_id = "tollgate"
client_secret = "client-secret-3"

[[upstream]]
id = "erp"
url = "http://127.0.0.1:8081"
[upstream.session]
max_upstream_sessions = 2
handle_key_file = "{}"
[upstream.session.credentials]
name = "admin"
password = "login-secret-4"
"#,
            routes.display(),
            key.display()
        ),
    );
    let out = tollgate(
        &["config", "--print", "--config", main.to_str().unwrap()],
        &[("TOLLGATE__SERVER__REALM", "from-the-environment")],
    );
    let printed = text(&out);
    assert!(out.status.success(), "{printed}");
    for secret in [
        "store-secret-1",
        "url-secret-2",
        "client-secret-3",
        "login-secret-4",
    ] {
        assert!(!printed.contains(secret), "{secret} printed:\n{printed}");
    }
    let parsed: toml::Table = String::from_utf8_lossy(&out.stdout).parse().unwrap();
    assert_eq!(
        parsed["server"]["realm"].as_str(),
        Some("from-the-environment")
    );
    assert_eq!(parsed["store"]["url"].as_str(), Some("***"));
    assert_eq!(
        parsed["upstream"][0]["session"]["credentials"]["password"].as_str(),
        Some("***")
    );
    let routes = parsed["route"].as_array().unwrap();
    assert!(routes
        .iter()
        .any(|r| r["id"].as_str() == Some("from-the-route-file")));
    // Entries of [[issuer]], [[upstream]] and [[route]] (in the route file too) by their id.
    let overrides = [
        ("TOLLGATE__ROUTE__FROM_THE_ROUTE_FILE__PREFIX", "/moved/"),
        ("TOLLGATE__UPSTREAM__ERP__TIMEOUT", "7s"),
        ("TOLLGATE__ISSUER__erp__AUDIENCES", "[\"api\", \"reports\"]"),
    ];
    let out = tollgate(
        &["config", "--print", "--config", main.to_str().unwrap()],
        &overrides,
    );
    assert!(out.status.success(), "{}", text(&out));
    let parsed: toml::Table = String::from_utf8_lossy(&out.stdout).parse().unwrap();
    let route = parsed["route"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"].as_str() == Some("from-the-route-file"))
        .unwrap();
    assert_eq!(route["prefix"].as_str(), Some("/moved/"));
    assert_eq!(parsed["upstream"][0]["timeout"].as_str(), Some("7s"));
    assert_eq!(
        parsed["issuer"][0]["audiences"].as_array().unwrap().len(),
        2
    );
    let checked = tollgate(&["check", "--config", main.to_str().unwrap()], &overrides);
    assert!(checked.status.success(), "{}", text(&checked));
    // An id no entry has is an error naming the variable.
    let o = tollgate(
        &["check", "--config", main.to_str().unwrap()],
        &[("TOLLGATE__ROUTE__NO_SUCH_ROUTE__PREFIX", "/x/")],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o).contains(
            "TOLLGATE__ROUTE__NO_SUCH_ROUTE__PREFIX: no [[route]] has the id `NO_SUCH_ROUTE`"
        ),
        "{}",
        text(&o)
    );
    // No --print: refused, not silently nothing.
    assert!(
        !tollgate(&["config", "--config", main.to_str().unwrap()], &[])
            .status
            .success()
    );
}

#[tokio::test]
async fn check_online_reaches_the_issuers_and_says_what_failed() {
    use crate::support::introspect::{ExpectAuth, FakeIntrospection};
    use crate::support::FakeIdp;

    let idp = FakeIdp::start().await;
    let introspection = FakeIntrospection::start(ExpectAuth::Basic {
        id: "tollgate".into(),
        secret: "right-secret".into(),
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let body = |secret: &str| {
        format!(
            r#"[[issuer]]
id = "erp"
issuer = "{iss}"
jwks_uri = "{iss}/jwks"
audiences = ["api"]
algorithms = ["RS256"]

[[issuer]]
id = "opaque"
issuer = "{opaque}"
audiences = ["api"]
validation = "introspection"
[issuer.introspection]
endpoint = "{endpoint}"
client_id = "tollgate"
client_secret = "{secret}"

[[upstream]]
id = "erp"
url = "http://127.0.0.1:8081"

[[route]]
id = "r"
prefix = "/entity/"
upstream = "erp"
scopes = ["api"]
"#,
            iss = idp.issuer,
            opaque = introspection.issuer,
            endpoint = introspection.endpoint,
        )
    };
    let check = |name: &str, text: String| {
        let path = write(dir.path(), name, &text);
        tokio::task::spawn_blocking(move || {
            tollgate(
                &["check", "--online", "--config", path.to_str().unwrap()],
                &[],
            )
        })
    };
    let good = check("good.toml", body("right-secret")).await.unwrap();
    let out = String::from_utf8_lossy(&good.stdout).into_owned();
    assert!(good.status.success(), "{}", text(&good));
    assert!(
        out.contains("ok   issuer erp: JWKS: 1 usable key(s)"),
        "{out}"
    );
    assert!(out.contains("ok   issuer opaque: introspection"), "{out}");

    // A wrong client secret and a key set that cannot be fetched: both named, exit 1.
    idp.set_down(true);
    let bad = check("bad.toml", body("wrong-secret")).await.unwrap();
    let out = String::from_utf8_lossy(&bad.stdout).into_owned();
    assert_eq!(bad.status.code(), Some(1), "{}", text(&bad));
    assert!(out.contains("FAIL issuer erp: JWKS"), "{out}");
    assert!(out.contains("FAIL issuer opaque: introspection"), "{out}");
    assert!(!text(&bad).contains("wrong-secret"), "{}", text(&bad));
}

#[tokio::test]
async fn check_online_login_upstream_logs_in_and_out_once() {
    use crate::support::FakeIdp;
    use tollgate::demo::legacy::{FakeLegacy, LegacyOptions};

    let idp = FakeIdp::start().await;
    let fake = FakeLegacy::new(LegacyOptions::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let legacy = format!("http://{}", listener.local_addr().unwrap());
    let _task = fake.spawn(listener);
    let dir = tempfile::tempdir().unwrap();
    let body = |password: &str| {
        format!(
            r#"[[issuer]]
id = "erp"
issuer = "{iss}"
jwks_uri = "{iss}/jwks"
audiences = ["api"]

[[upstream]]
id = "erp"
url = "{legacy}"
[upstream.session]
max_upstream_sessions = 2
[upstream.session.credentials]
name = "admin"
password = "{password}"
tenant = "MyStore"
branch = "HQ"

[[route]]
id = "r"
prefix = "/entity/"
upstream = "erp"
scopes = ["api"]
"#,
            iss = idp.issuer,
        )
    };
    let check = |name: &str, text: String| {
        let path = write(dir.path(), name, &text);
        tokio::task::spawn_blocking(move || {
            tollgate(
                &[
                    "check",
                    "--online",
                    "--login-upstream",
                    "--config",
                    path.to_str().unwrap(),
                ],
                &[],
            )
        })
    };
    let good = check("good.toml", body("123")).await.unwrap();
    let out = String::from_utf8_lossy(&good.stdout).into_owned();
    assert!(good.status.success(), "{}", text(&good));
    assert!(
        out.contains("ok   upstream erp: login and logout: logged in and out"),
        "{out}"
    );
    assert!(
        text(&good).contains("takes a licence seat"),
        "{}",
        text(&good)
    );
    let c = fake.counters();
    assert_eq!((c.logins_ok, c.logouts, c.seats_in_use), (1, 1, 0), "{c:?}");

    let bad = check("bad.toml", body("not-the-password")).await.unwrap();
    assert_eq!(bad.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&bad.stdout)
            .contains("FAIL upstream erp: login and logout: login refused: bad_credentials"),
        "{}",
        text(&bad)
    );
    assert!(!text(&bad).contains("not-the-password"));
}

/// `tollgate schema`: a JSON Schema that every example in `config/` satisfies, and that an editor
/// can use to catch what `tollgate check` would refuse for its shape (an unknown key, a value of
/// the wrong type).
#[test]
fn the_schema_accepts_every_example_and_refuses_typos() {
    let compile = |args: &[&str]| {
        let o = tollgate(args, &[]);
        assert!(o.status.success(), "{}", text(&o));
        let schema: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(
            schema["$schema"],
            "https://json-schema.org/draft/2020-12/schema"
        );
        assert!(
            !String::from_utf8_lossy(&o.stdout).contains("default_"),
            "a default is named by its function, not its value"
        );
        jsonschema::validator_for(&schema).unwrap()
    };
    let main = compile(&["schema"]);
    let routes = compile(&["schema", "--routes"]);
    let as_json = |toml_text: &str| -> serde_json::Value { toml::from_str(toml_text).unwrap() };
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("toml") {
            continue;
        }
        let doc = as_json(&std::fs::read_to_string(&path).unwrap());
        let validator = if tollgate::config::is_routes_file(&path) {
            &routes
        } else {
            &main
        };
        let errors: Vec<String> = validator
            .iter_errors(&doc)
            .map(|e| format!("{}: {e}", e.instance_path()))
            .collect();
        assert!(errors.is_empty(), "{}: {errors:?}", path.display());
        checked += 1;
    }
    assert!(checked >= 4);
    for (bad, why) in [
        ("[server]\nlisten_addr = \"0.0.0.0:1\"\n", "an unknown key"),
        (
            "[server]\nmax_connections = \"many\"\n",
            "a string for a number",
        ),
        (
            "[[route]]\nid = \"r\"\nscopes = \"api\"\n",
            "a string for a list",
        ),
        (
            "[telemetry]\nsample_ratio = \"all\"\n",
            "a string for a ratio",
        ),
        ("[bogus]\n", "an unknown table"),
    ] {
        assert!(!main.is_valid(&as_json(bad)), "the schema accepts {why}");
    }
    assert!(!routes.is_valid(&as_json("[server]\nlisten = \"x\"\n")));
}

#[test]
fn a_wrong_worker_thread_count_is_refused_with_the_variable_named() {
    for bad in ["0", "many", "-1"] {
        let out = tollgate(
            &["run", "--config", "config/tollgate.toml"],
            &[("TOKIO_WORKER_THREADS", bad)],
        );
        assert_eq!(out.status.code(), Some(2), "{}", text(&out));
        assert!(
            text(&out).contains("TOKIO_WORKER_THREADS must be a whole number of threads"),
            "{}",
            text(&out)
        );
    }
}
