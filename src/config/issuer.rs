//! `[[issuer]]` tables → auth's [`IssuerConfig`]: how tokens of each issuer are validated (local JWT,
//! RFC 7662 introspection, or `auto`), where keys and the introspection endpoint come from, and the
//! introspection client's credentials (read from files or the environment here, once).

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

use jsonwebtoken::{Algorithm, EncodingKey};
use url::Url;

use super::check::{written_or, Checker};
use super::file::{self, IntrospectionSection, IssuerSection};
use crate::auth::settings::{
    ClientAuth, IntrospectionConfig, IssuerConfig, KeySource, ValidationMode,
};
use crate::secret::Secret;

pub(crate) fn issuers(
    c: &mut Checker<'_>,
    raw: &[IssuerSection],
    base: &Path,
) -> Vec<IssuerConfig> {
    let mut seen_ids = HashSet::new();
    let mut seen_iss = HashSet::new();
    raw.iter()
        .enumerate()
        .map(|(i, r)| issuer(c, i, r, base, &mut seen_ids, &mut seen_iss))
        .collect()
}

fn issuer(
    c: &mut Checker<'_>,
    i: usize,
    r: &IssuerSection,
    base: &Path,
    seen_ids: &mut HashSet<String>,
    seen_iss: &mut HashSet<String>,
) -> IssuerConfig {
    let k = |field: &str| format!("issuer[{i}].{field}");
    let id = c.id(&k("id"), r.id.as_ref(), seen_ids);
    let allow_http = r.allow_http.unwrap_or_default();
    let issuer = c
        .required(&k("issuer"), &r.issuer)
        .cloned()
        .unwrap_or_default();
    let issuer_url = if issuer.is_empty() {
        None
    } else {
        if !seen_iss.insert(issuer.clone()) {
            c.error(&k("issuer"), format!("`{issuer}` is configured twice"));
        }
        c.idp_url(&k("issuer"), &issuer, allow_http)
    };

    let validation = match r.validation.as_deref() {
        None if r.introspection.is_some() => ValidationMode::Auto,
        None | Some("jwt") => ValidationMode::Jwt,
        Some("introspection") => ValidationMode::Introspection,
        Some("auto") => ValidationMode::Auto,
        Some(other) => {
            c.error(&k("validation"), format!("`{other}` is not a validation mode; use \"jwt\", \"introspection\" or \"auto\""));
            ValidationMode::Jwt
        }
    };
    let uses_jwt = validation != ValidationMode::Introspection;

    let discovery = match (r.discovery.unwrap_or_default(), issuer_url) {
        (true, Some(u)) => {
            let base = u.as_str().trim_end_matches('/').to_owned();
            // The issuer URL was valid, so appending a path keeps it valid.
            Some(Url::parse(&format!("{base}/.well-known/openid-configuration")).unwrap_or(u))
        }
        _ => None,
    };
    let keys = match (
        r.discovery.unwrap_or_default(),
        r.jwks_uri.as_deref(),
        uses_jwt,
    ) {
        (true, Some(_), _) => {
            c.error(
                &k("jwks_uri"),
                "set either discovery = true or jwks_uri, not both",
            );
            None
        }
        (_, Some(_), false) => {
            c.error(
                &k("jwks_uri"),
                "has no use with validation = \"introspection\"",
            );
            None
        }
        (true, None, true) => discovery.clone().map(KeySource::Discovery),
        (false, Some(uri), true) => c
            .idp_url(&k("jwks_uri"), uri, allow_http)
            .map(KeySource::Jwks),
        (false, None, true) => {
            c.error(
                &k("jwks_uri"),
                "missing key: set jwks_uri, or discovery = true",
            );
            None
        }
        (_, None, false) => None,
    };

    let audiences = match &r.audiences {
        Some(a) if !a.is_empty() && a.iter().all(|s| !s.is_empty()) => a.clone(),
        Some(_) => {
            c.error(&k("audiences"), "must list at least one non-empty audience");
            Vec::new()
        }
        None => {
            c.error(
                &k("audiences"),
                "missing key: list the audiences a token's aud must contain (RFC 9068)",
            );
            Vec::new()
        }
    };
    let algorithms = c.list(
        &k("algorithms"),
        &r.algorithms,
        file::default_algorithms,
        "must list at least one algorithm",
        algorithm,
    );
    let jwks_min_refresh = c
        .duration(
            &k("jwks_min_refresh"),
            written_or(&r.jwks_min_refresh, file::default_jwks_min_refresh),
        )
        .unwrap_or_default();
    let jwks_refresh = c.positive_duration(
        &k("jwks_refresh"),
        written_or(&r.jwks_refresh, file::default_jwks_refresh),
    );
    let fetch_timeout = c.positive_duration(
        &k("fetch_timeout"),
        written_or(&r.fetch_timeout, file::default_fetch_timeout),
    );

    let introspection = match (&r.introspection, validation) {
        (None, ValidationMode::Jwt) => None,
        (None, ValidationMode::Introspection | ValidationMode::Auto) => {
            c.error(
                &k("introspection"),
                "missing table: validation by introspection needs [issuer.introspection]",
            );
            None
        }
        (Some(_), ValidationMode::Jwt) => {
            c.error(&k("validation"), "is \"jwt\", so [issuer.introspection] would never be used; set validation = \"auto\" or \"introspection\"");
            None
        }
        (Some(s), ValidationMode::Introspection | ValidationMode::Auto) => introspection(
            c,
            &format!("issuer[{i}].introspection"),
            s,
            discovery.is_some(),
            allow_http,
            base,
        ),
    };

    IssuerConfig {
        id,
        issuer,
        discovery,
        keys,
        validation,
        introspection,
        audiences,
        algorithms,
        leeway: c
            .duration(&k("leeway"), written_or(&r.leeway, file::default_leeway))
            .unwrap_or_default(),
        jwks_refresh,
        jwks_min_refresh,
        require_typ: r.require_typ.unwrap_or_default(),
        allow_http,
        fetch_timeout,
    }
}

fn introspection(
    c: &mut Checker<'_>,
    prefix: &str,
    s: &IntrospectionSection,
    has_discovery: bool,
    allow_http: bool,
    base: &Path,
) -> Option<IntrospectionConfig> {
    let k = |field: &str| format!("{prefix}.{field}");
    let errors_before = c.errors.len();
    let endpoint = match &s.endpoint {
        Some(e) => c.idp_url(&k("endpoint"), e, allow_http),
        None if has_discovery => None,
        None => {
            c.error(
                &k("endpoint"),
                "missing key: set endpoint, or discovery = true on the issuer",
            );
            None
        }
    };
    let client_id = c
        .required(&k("client_id"), &s.client_id)
        .cloned()
        .unwrap_or_default();
    let method = written_or(&s.auth_method, file::default_auth_method);
    let auth = match method {
        "client_secret_basic" | "client_secret_post" => {
            if s.private_key_file.is_some() {
                c.error(
                    &k("private_key_file"),
                    format!("has no use with auth_method = \"{method}\""),
                );
            }
            secret(c, prefix, s, base).map(|secret| {
                if method == "client_secret_basic" {
                    ClientAuth::Basic(secret)
                } else {
                    ClientAuth::Post(secret)
                }
            })
        }
        "private_key_jwt" => {
            if s.client_secret.is_some()
                || s.client_secret_file.is_some()
                || s.client_secret_env.is_some()
            {
                c.error(
                    &k("auth_method"),
                    "private_key_jwt uses private_key_file, not a client secret",
                );
            }
            private_key(
                c,
                &k("private_key_file"),
                s.private_key_file.as_deref(),
                base,
            )
            .map(|(key, alg)| ClientAuth::PrivateKeyJwt {
                key: Arc::new(key),
                alg,
                kid: s.private_key_kid.clone(),
            })
        }
        other => {
            c.error(&k("auth_method"), format!("`{other}` is not supported; use client_secret_basic, client_secret_post or private_key_jwt"));
            None
        }
    };
    let mut d =
        |field: &str, v: &Option<String>, default| c.duration(&k(field), written_or(v, default));
    let timeout = d("timeout", &s.timeout, file::default_introspection_timeout);
    let cache_max_ttl = d(
        "cache_max_ttl",
        &s.cache_max_ttl,
        file::default_cache_max_ttl,
    );
    let negative_ttl = d("negative_ttl", &s.negative_ttl, file::default_negative_ttl);
    let serve_stale = d("serve_stale", &s.serve_stale, file::default_serve_stale);
    let breaker_cooldown = d(
        "breaker_cooldown",
        &s.breaker_cooldown,
        file::default_breaker_cooldown,
    );
    c.nonzero(&k("timeout"), timeout);
    let breaker_failures = c.positive(
        &k("breaker_failures"),
        s.breaker_failures
            .unwrap_or_else(file::default_breaker_failures),
    );
    let cache_capacity = c.positive(
        &k("cache_capacity"),
        s.cache_capacity
            .unwrap_or_else(file::default_introspection_cache_capacity),
    );
    if c.errors.len() > errors_before {
        return None;
    }
    Some(IntrospectionConfig {
        endpoint,
        client_id,
        auth: auth?,
        timeout: timeout?,
        cache_max_ttl: cache_max_ttl?,
        negative_ttl: negative_ttl?,
        serve_stale: serve_stale?,
        cache_capacity,
        breaker_failures,
        breaker_cooldown: breaker_cooldown?,
    })
}

/// The client secret from exactly one of `client_secret`, `client_secret_file` (trailing newline
/// trimmed) or `client_secret_env`.
fn secret(
    c: &mut Checker<'_>,
    prefix: &str,
    s: &IntrospectionSection,
    base: &Path,
) -> Option<Secret> {
    let k = |field: &str| format!("{prefix}.{field}");
    let given = [
        s.client_secret.is_some(),
        s.client_secret_file.is_some(),
        s.client_secret_env.is_some(),
    ];
    match given.iter().filter(|g| **g).count() {
        0 => {
            c.error(
                &k("client_secret"),
                "missing key: set client_secret, client_secret_file or client_secret_env",
            );
            return None;
        }
        1 => {}
        _ => {
            c.error(
                &k("client_secret"),
                "set only one of client_secret, client_secret_file and client_secret_env",
            );
            return None;
        }
    }
    let value = if let Some(v) = &s.client_secret {
        v.expose().to_owned()
    } else if let Some(f) = &s.client_secret_file {
        c.file_text(&k("client_secret_file"), &base.join(f))?
    } else {
        let name = s.client_secret_env.as_deref().unwrap_or_default();
        match std::env::var(name) {
            Ok(v) => v,
            Err(_) => {
                c.error(
                    &k("client_secret_env"),
                    format!("environment variable `{name}` is not set"),
                );
                return None;
            }
        }
    };
    if value.is_empty() {
        c.error(&k("client_secret"), "the client secret is empty");
        return None;
    }
    Some(Secret::new(value))
}

/// A PEM private key for client assertions: RSA (RS256) or EC P-256 (ES256).
fn private_key(
    c: &mut Checker<'_>,
    key: &str,
    file: Option<&str>,
    base: &Path,
) -> Option<(EncodingKey, Algorithm)> {
    let Some(file) = file else {
        c.error(key, "missing key: private_key_jwt needs private_key_file");
        return None;
    };
    let path = base.join(file);
    let pem = match std::fs::read(&path) {
        Ok(p) => p,
        Err(e) => {
            c.error(key, format!("cannot read {}: {e}", path.display()));
            return None;
        }
    };
    if let Ok(k) = EncodingKey::from_rsa_pem(&pem) {
        return Some((k, Algorithm::RS256));
    }
    if let Ok(k) = EncodingKey::from_ec_pem(&pem) {
        return Some((k, Algorithm::ES256));
    }
    c.error(
        key,
        format!(
            "{} is not a PEM RSA or EC P-256 private key",
            path.display()
        ),
    );
    None
}

pub(crate) fn algorithm(c: &mut Checker<'_>, key: &str, name: &str) -> Option<Algorithm> {
    if name.eq_ignore_ascii_case("none") {
        c.error(
            key,
            "`none` is never allowed: unsigned tokens would be accepted",
        );
        return None;
    }
    match name.parse::<Algorithm>() {
        Ok(Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) => {
            c.error(
                key,
                format!("`{name}` is refused: HMAC algorithms need a shared secret, and tollgate verifies with the issuer's public keys"),
            );
            None
        }
        Ok(alg) => Some(alg),
        Err(_) => {
            c.error(key, format!("unknown algorithm `{name}`; use RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384 or EdDSA"));
            None
        }
    }
}
