//! `[upstream.session]` → [`SessionConfig`]: the rules of the session layer for one upstream
//! (see shared design §6 and the README's "Upstream sessions"). Secrets and the HMAC key are read
//! from their files here, once.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::file::{CredentialsSection, SessionSection};
use super::issuer::trim_newline;
use super::validate::Checker;
use super::Secret;

/// How a grant's token selects single or concurrent sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionMode {
    /// Tokens with `concurrent_scope` get concurrent mode, others single (Acumatica's rule).
    ByScope,
    Single,
    Concurrent,
}

/// Who creates upstream sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Creation {
    /// tollgate logs in with the configured credentials.
    Active,
    /// The client's own login call is forwarded and its cookies captured.
    Passive,
}

/// One source of the grant key, tried in order (design §5.5, §6.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GrantSource {
    /// `claim:NAME`: a claim (or introspection member) naming the grant.
    Claim(String),
    /// `sid+client_id`.
    SidClientId,
    /// `client_credentials`: tokens without a resource owner (no `sub`, or `sub` = `client_id`).
    ClientCredentials,
    /// `subject`: `client_id` + `sub` (merges a user's grants in one client).
    Subject,
    /// `token`: `jti`, else the token's digest: one session per access token.
    Token,
    /// `reject`: no grant identifier → 401.
    Reject,
}

/// What to do with a concurrent-mode request without a handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WithoutHandle {
    New,
    Reject,
}

/// The HMAC key of handles and grant keys. `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct HandleKey(pub Arc<[u8; 32]>);

impl std::fmt::Debug for HandleKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HandleKey(<redacted>)")
    }
}

/// The active-login body.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub name: String,
    pub password: Secret,
    pub tenant: Option<String>,
    pub branch: Option<String>,
    pub locale: Option<String>,
}

/// `[upstream.session]`, validated.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    pub mode: SessionMode,
    pub concurrent_scope: String,
    pub creation: Creation,
    pub login_path: String,
    pub logout_path: String,
    pub marker_cookies: Vec<String>,
    pub expired_redirect: regex::Regex,
    pub max_upstream_sessions: u32,
    pub max_sessions_per_grant: u32,
    pub max_inflight_per_session: u32,
    pub max_queue_per_session: u32,
    pub max_queue_wait: Duration,
    pub idle_ttl: Duration,
    pub max_session_age: Duration,
    pub admission_wait: Duration,
    pub login_timeout: Duration,
    pub logout_timeout: Duration,
    pub login_failure_cooldown: Duration,
    pub relogin_min_interval: Duration,
    pub min_idle_before_evict: Duration,
    pub op_ttl: Duration,
    pub max_replay_body: u64,
    pub max_jar_cookies: usize,
    pub max_jar_bytes: usize,
    pub handle_cookie: String,
    /// 32 bytes of HMAC key material; `None`: random per process.
    pub key: Option<HandleKey>,
    pub without_handle: WithoutHandle,
    pub passive_login_name_claim: Option<String>,
    pub grant_key: Vec<GrantSource>,
    /// Upstream error answers lose the upstream's exception details (`error_bodies`).
    pub sanitize_errors: bool,
    /// Required with `creation = "active"`.
    pub credentials: Option<Credentials>,
}

/// Parses a byte size: a number with an optional unit `B`, `KiB`, `MiB`, `GiB`, `KB`, `MB`, `GB`.
pub fn parse_bytes(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        _ => return None,
    };
    n.checked_mul(mult)
}

pub(crate) fn session(
    c: &mut Checker<'_>,
    prefix: &str,
    s: &SessionSection,
    base: &Path,
) -> Option<SessionConfig> {
    let k = |field: &str| format!("{prefix}.{field}");
    let errors_before = c.errors.len();

    let mode = match s.mode.as_deref() {
        None | Some("by_scope") => SessionMode::ByScope,
        Some("single") => SessionMode::Single,
        Some("concurrent") => SessionMode::Concurrent,
        Some(other) => {
            c.error(&k("mode"), format!("`{other}` is not a session mode; use \"by_scope\", \"single\" or \"concurrent\""));
            SessionMode::ByScope
        }
    };
    let creation = match s.creation.as_deref() {
        None | Some("active") => Creation::Active,
        Some("passive") => Creation::Passive,
        Some(other) => {
            c.error(
                &k("creation"),
                format!("`{other}` is not a creation mode; use \"active\" or \"passive\""),
            );
            Creation::Active
        }
    };
    let path = |c: &mut Checker<'_>, field: &str, v: &Option<String>, default: &str| -> String {
        let p = v.clone().unwrap_or_else(|| default.to_owned());
        match crate::policy::normalize(&p) {
            Ok(n) if n == p => p,
            _ => {
                c.error(
                    &k(field),
                    format!("`{p}` must be a normalised absolute path"),
                );
                p
            }
        }
    };
    let login_path = path(c, "login_path", &s.login_path, "/entity/auth/login");
    let logout_path = path(c, "logout_path", &s.logout_path, "/entity/auth/logout");
    if login_path == logout_path {
        c.error(&k("logout_path"), "must differ from login_path");
    }
    let marker_cookies = s
        .marker_cookies
        .clone()
        .unwrap_or_else(|| vec!["ASP.NET_SessionId".to_owned(), ".ASPXAUTH".to_owned()]);
    if marker_cookies.is_empty() {
        c.error(
            &k("marker_cookies"),
            "must name at least one cookie that proves a login succeeded",
        );
    }
    let expired_redirect = {
        let p = s
            .expired_redirect
            .as_deref()
            .unwrap_or(r"(?i)/frames/login\.aspx");
        match regex::Regex::new(p) {
            Ok(r) => Some(r),
            Err(e) => {
                c.error(
                    &k("expired_redirect"),
                    format!("not a regular expression: {e}"),
                );
                None
            }
        }
    };

    let max_upstream_sessions = match s.max_upstream_sessions {
        Some(0) => {
            c.error(&k("max_upstream_sessions"), "must be at least 1");
            1
        }
        Some(n) => n,
        None => {
            c.error(
                &k("max_upstream_sessions"),
                "missing key: set it from the licence's API user limit (e.g. 2 for a trial)",
            );
            1
        }
    };
    let positive = |c: &mut Checker<'_>, field: &str, v: Option<u32>, default: u32| -> u32 {
        let n = v.unwrap_or(default);
        if n == 0 {
            c.error(&k(field), "must be at least 1");
        }
        n
    };
    let max_sessions_per_grant = positive(c, "max_sessions_per_grant", s.max_sessions_per_grant, 3);
    let max_inflight_per_session =
        positive(c, "max_inflight_per_session", s.max_inflight_per_session, 1);
    let max_queue_per_session = s.max_queue_per_session.unwrap_or(20);
    let max_jar_cookies = positive(c, "max_jar_cookies", s.max_jar_cookies, 50) as usize;

    let d = |c: &mut Checker<'_>, field: &str, v: &Option<String>, secs: u64| {
        c.duration(&k(field), v.as_deref(), Duration::from_secs(secs))
    };
    let max_queue_wait = d(c, "max_queue_wait", &s.max_queue_wait, 30);
    let idle_ttl = d(c, "idle_ttl", &s.idle_ttl, 300);
    let max_session_age = d(c, "max_session_age", &s.max_session_age, 8 * 3600);
    let admission_wait = d(c, "admission_wait", &s.admission_wait, 5);
    let login_timeout = d(c, "login_timeout", &s.login_timeout, 30);
    let logout_timeout = d(c, "logout_timeout", &s.logout_timeout, 5);
    let login_failure_cooldown = d(
        c,
        "login_failure_cooldown",
        &s.login_failure_cooldown,
        15 * 60,
    );
    let relogin_min_interval = d(c, "relogin_min_interval", &s.relogin_min_interval, 10);
    let min_idle_before_evict = d(c, "min_idle_before_evict", &s.min_idle_before_evict, 2);
    let op_ttl = d(c, "op_ttl", &s.op_ttl, 600);
    for (field, v) in [
        ("idle_ttl", idle_ttl),
        ("login_timeout", login_timeout),
        ("logout_timeout", logout_timeout),
        ("max_session_age", max_session_age),
    ] {
        if v.is_zero() {
            c.error(&k(field), "must be greater than zero");
        }
    }
    if idle_ttl >= Duration::from_secs(600) {
        // The upstream closes idle sessions after 10 minutes by itself; a longer idle_ttl would
        // keep mapping grants to sessions that are already gone.
        tracing::warn!(key = %k("idle_ttl"), "idle_ttl should stay below the upstream's own 10-minute idle close");
    }
    let bytes = |c: &mut Checker<'_>, field: &str, v: &Option<String>, default: u64| -> u64 {
        match v {
            None => default,
            Some(text) => parse_bytes(text).unwrap_or_else(|| {
                c.error(
                    &k(field),
                    format!(
                        "`{text}` is not a byte size (for example \"10MiB\", \"8KiB\", \"4096\")"
                    ),
                );
                default
            }),
        }
    };
    let max_replay_body = bytes(c, "max_replay_body", &s.max_replay_body, 10 << 20);
    let max_jar_bytes = bytes(c, "max_jar_bytes", &s.max_jar_bytes, 8 << 10) as usize;

    let handle_cookie = s
        .handle_cookie
        .clone()
        .unwrap_or_else(|| "tollgate_session".to_owned());
    if handle_cookie.is_empty()
        || !handle_cookie
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
    {
        c.error(
            &k("handle_cookie"),
            format!("`{handle_cookie}` is not a usable cookie name"),
        );
    }
    if marker_cookies
        .iter()
        .any(|m| m.eq_ignore_ascii_case(&handle_cookie))
    {
        c.error(
            &k("handle_cookie"),
            "must not equal an upstream cookie name",
        );
    }
    let key = s
        .handle_key_file
        .as_deref()
        .and_then(|f| handle_key(c, &k("handle_key_file"), &base.join(f)));

    let without_handle = match s.concurrent_without_handle.as_deref() {
        None | Some("new") => WithoutHandle::New,
        Some("reject") => WithoutHandle::Reject,
        Some(other) => {
            c.error(
                &k("concurrent_without_handle"),
                format!("`{other}`: use \"new\" or \"reject\""),
            );
            WithoutHandle::New
        }
    };
    let grant_key = match &s.grant_key {
        None => vec![
            GrantSource::Claim("grant_id".to_owned()),
            GrantSource::Claim("origin_jti".to_owned()),
            GrantSource::SidClientId,
            GrantSource::ClientCredentials,
            GrantSource::Subject,
        ],
        Some(list) if list.is_empty() => {
            c.error(&k("grant_key"), "must list at least one source");
            Vec::new()
        }
        Some(list) => list
            .iter()
            .enumerate()
            .filter_map(|(i, src)| grant_source(c, &format!("{prefix}.grant_key[{i}]"), src))
            .collect(),
    };

    let sanitize_errors = match s.error_bodies.as_deref() {
        None | Some("sanitize") => true,
        Some("pass") => false,
        Some(other) => {
            c.error(
                &k("error_bodies"),
                format!("`{other}`: use \"sanitize\" or \"pass\""),
            );
            true
        }
    };
    let credentials = match (creation, &s.credentials) {
        (Creation::Active, Some(cr)) => credentials(c, &k("credentials"), cr, base),
        (Creation::Active, None) => {
            c.error(
                &k("credentials"),
                "missing table: creation = \"active\" logs in with [upstream.session.credentials]",
            );
            None
        }
        (Creation::Passive, Some(_)) => {
            c.error(
                &k("credentials"),
                "has no use with creation = \"passive\" (the client logs in itself)",
            );
            None
        }
        (Creation::Passive, None) => None,
    };

    if c.errors.len() > errors_before {
        return None;
    }
    Some(SessionConfig {
        mode,
        concurrent_scope: s
            .concurrent_scope
            .clone()
            .unwrap_or_else(|| "api:concurrent_access".to_owned()),
        creation,
        login_path,
        logout_path,
        marker_cookies,
        expired_redirect: expired_redirect?,
        max_upstream_sessions,
        max_sessions_per_grant,
        max_inflight_per_session,
        max_queue_per_session,
        max_queue_wait,
        idle_ttl,
        max_session_age,
        admission_wait,
        login_timeout,
        logout_timeout,
        login_failure_cooldown,
        relogin_min_interval,
        min_idle_before_evict,
        op_ttl,
        max_replay_body,
        max_jar_cookies,
        max_jar_bytes,
        handle_cookie,
        key,
        without_handle,
        passive_login_name_claim: s.passive_login_name_claim.clone(),
        grant_key,
        sanitize_errors,
        credentials,
    })
}

fn grant_source(c: &mut Checker<'_>, key: &str, s: &str) -> Option<GrantSource> {
    Some(match s {
        "sid+client_id" => GrantSource::SidClientId,
        "client_credentials" | "client_credentials:client_id" => GrantSource::ClientCredentials,
        "subject" => GrantSource::Subject,
        "token" => GrantSource::Token,
        "reject" => GrantSource::Reject,
        other => match other.strip_prefix("claim:") {
            Some(name) if !name.is_empty() => GrantSource::Claim(name.to_owned()),
            _ => {
                c.error(key, format!("`{other}` is not a grant key source; use claim:NAME, sid+client_id, client_credentials, subject, token or reject"));
                return None;
            }
        },
    })
}

/// `handle_key_file`: at least 32 bytes of key as hex (64 hex characters), newline trimmed.
fn handle_key(c: &mut Checker<'_>, key: &str, path: &Path) -> Option<HandleKey> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => trim_newline(t),
        Err(e) => {
            c.error(key, format!("cannot read {}: {e}", path.display()));
            return None;
        }
    };
    let bytes: Option<Vec<u8>> = (0..text.len())
        .step_by(2)
        .map(|i| {
            text.get(i..i + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        })
        .collect();
    match bytes {
        Some(b) if text.len() % 2 == 0 && b.len() >= 32 => {
            // Longer keys are folded into 32 bytes with SHA-256.
            let k: [u8; 32] = if b.len() == 32 {
                let mut a = [0u8; 32];
                a.copy_from_slice(&b);
                a
            } else {
                use sha2::Digest as _;
                sha2::Sha256::digest(&b).into()
            };
            Some(HandleKey(Arc::new(k)))
        }
        _ => {
            c.error(
                key,
                format!(
                    "{} must hold at least 32 bytes of key as hex (64 hex characters)",
                    path.display()
                ),
            );
            None
        }
    }
}

fn credentials(
    c: &mut Checker<'_>,
    prefix: &str,
    s: &CredentialsSection,
    base: &Path,
) -> Option<Credentials> {
    let errors_before = c.errors.len();
    let mut field = |name: &str,
                     inline: &Option<String>,
                     file: &Option<String>,
                     required: bool|
     -> Option<String> {
        let key = format!("{prefix}.{name}");
        match (inline, file) {
            (Some(_), Some(_)) => {
                c.error(&key, format!("set either {name} or {name}_file, not both"));
                None
            }
            (Some(v), None) => Some(v.clone()),
            (None, Some(f)) => {
                let path = base.join(f);
                match std::fs::read_to_string(&path) {
                    Ok(t) => Some(trim_newline(t)),
                    Err(e) => {
                        c.error(
                            &format!("{key}_file"),
                            format!("cannot read {}: {e}", path.display()),
                        );
                        None
                    }
                }
            }
            (None, None) => {
                if required {
                    c.error(&key, format!("missing key: set {name} or {name}_file"));
                }
                None
            }
        }
    };
    let name = field("name", &s.name, &s.name_file, true);
    let password = field("password", &s.password, &s.password_file, true);
    let tenant = field("tenant", &s.tenant, &s.tenant_file, false);
    let branch = field("branch", &s.branch, &s.branch_file, false);
    let locale = field("locale", &s.locale, &s.locale_file, false);
    if c.errors.len() > errors_before {
        return None;
    }
    Some(Credentials {
        name: name?,
        password: Secret::new(password?),
        tenant,
        branch,
        locale,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_sizes() {
        assert_eq!(parse_bytes("10MiB"), Some(10 << 20));
        assert_eq!(parse_bytes("8KiB"), Some(8192));
        assert_eq!(parse_bytes("4096"), Some(4096));
        assert_eq!(parse_bytes("1 GB"), Some(1_000_000_000));
        assert_eq!(parse_bytes("lots"), None);
        assert_eq!(parse_bytes("5 parsecs"), None);
    }
}
