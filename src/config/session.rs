//! `[upstream.session]` → [`SessionConfig`]: the rules of the session layer for one upstream
//! (see shared design §6 and docs/sessions.md, "Upstream sessions"). Secrets and the HMAC key
//! are read from their files here, once.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::check::{written_or, Checker};
use super::file::{self, CredentialsSection, SessionSection};
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
    /// Login calls with the service credentials at once, fleet-wide.
    pub max_parallel_logins: u32,
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

pub(crate) fn session(
    c: &mut Checker<'_>,
    prefix: &str,
    s: &SessionSection,
    base: &Path,
) -> Option<SessionConfig> {
    let k = |field: &str| format!("{prefix}.{field}");
    let errors_before = c.errors.len();

    let mode = match written_or(&s.mode, file::default_session_mode) {
        "by_scope" => SessionMode::ByScope,
        "single" => SessionMode::Single,
        "concurrent" => SessionMode::Concurrent,
        other => {
            c.error(&k("mode"), format!("`{other}` is not a session mode; use \"by_scope\", \"single\" or \"concurrent\""));
            SessionMode::ByScope
        }
    };
    let creation = match written_or(&s.creation, file::default_creation) {
        "active" => Creation::Active,
        "passive" => Creation::Passive,
        other => {
            c.error(
                &k("creation"),
                format!("`{other}` is not a creation mode; use \"active\" or \"passive\""),
            );
            Creation::Active
        }
    };
    let path = |c: &mut Checker<'_>, field: &str, v: &Option<String>, default| -> String {
        let p = written_or(v, default);
        if !crate::policy::normalize(p).is_ok_and(|n| n == p) {
            c.error(
                &k(field),
                format!("`{p}` must be a normalised absolute path"),
            );
        }
        p.to_owned()
    };
    let login_path = path(c, "login_path", &s.login_path, file::default_login_path);
    let logout_path = path(c, "logout_path", &s.logout_path, file::default_logout_path);
    if login_path == logout_path {
        c.error(&k("logout_path"), "must differ from login_path");
    }
    let marker_cookies = c.list(
        &k("marker_cookies"),
        &s.marker_cookies,
        file::default_marker_cookies,
        "must name at least one cookie that proves a login succeeded",
        |_, _, name| Some(name.to_owned()),
    );
    let expired_redirect = match regex::Regex::new(written_or(
        &s.expired_redirect,
        file::default_expired_redirect,
    )) {
        Ok(r) => Some(r),
        Err(e) => {
            c.error(
                &k("expired_redirect"),
                format!("not a regular expression: {e}"),
            );
            None
        }
    };

    let max_upstream_sessions = match s.max_upstream_sessions {
        Some(n) => c.positive(&k("max_upstream_sessions"), n),
        None => {
            c.error(
                &k("max_upstream_sessions"),
                "missing key: set it from the licence's API user limit (e.g. 2 for a trial)",
            );
            1
        }
    };
    let mut count = |field: &str, v: Option<u32>, default: fn() -> u32| {
        c.positive(&k(field), v.unwrap_or_else(default))
    };
    let max_sessions_per_grant = count(
        "max_sessions_per_grant",
        s.max_sessions_per_grant,
        file::default_max_sessions_per_grant,
    );
    let max_inflight_per_session = count(
        "max_inflight_per_session",
        s.max_inflight_per_session,
        file::default_max_inflight_per_session,
    );
    let max_parallel_logins = count(
        "max_parallel_logins",
        s.max_parallel_logins,
        file::default_max_parallel_logins,
    );
    let max_jar_cookies = count(
        "max_jar_cookies",
        s.max_jar_cookies,
        file::default_max_jar_cookies,
    ) as usize;

    let mut d =
        |field: &str, v: &Option<String>, default| c.duration(&k(field), written_or(v, default));
    let max_queue_wait = d(
        "max_queue_wait",
        &s.max_queue_wait,
        file::default_max_queue_wait,
    );
    let idle_ttl = d("idle_ttl", &s.idle_ttl, file::default_idle_ttl);
    let max_session_age = d(
        "max_session_age",
        &s.max_session_age,
        file::default_max_session_age,
    );
    let admission_wait = d(
        "admission_wait",
        &s.admission_wait,
        file::default_admission_wait,
    );
    let login_timeout = d(
        "login_timeout",
        &s.login_timeout,
        file::default_login_timeout,
    );
    let logout_timeout = d(
        "logout_timeout",
        &s.logout_timeout,
        file::default_logout_timeout,
    );
    let login_failure_cooldown = d(
        "login_failure_cooldown",
        &s.login_failure_cooldown,
        file::default_login_failure_cooldown,
    );
    let relogin_min_interval = d(
        "relogin_min_interval",
        &s.relogin_min_interval,
        file::default_relogin_min_interval,
    );
    let min_idle_before_evict = d(
        "min_idle_before_evict",
        &s.min_idle_before_evict,
        file::default_min_idle_before_evict,
    );
    let op_ttl = d("op_ttl", &s.op_ttl, file::default_op_ttl);
    for (field, v) in [
        ("idle_ttl", idle_ttl),
        ("login_timeout", login_timeout),
        ("logout_timeout", logout_timeout),
        ("max_session_age", max_session_age),
    ] {
        c.nonzero(&k(field), v);
    }
    if idle_ttl.is_some_and(|d| d >= Duration::from_secs(600)) {
        // The upstream closes idle sessions after 10 minutes by itself; a longer idle_ttl would
        // keep mapping grants to sessions that are already gone.
        tracing::warn!(key = %k("idle_ttl"), "idle_ttl should stay below the upstream's own 10-minute idle close");
    }
    let sizes = r#""10MiB", "8KiB", "4096""#;
    let max_replay_body = c.byte_size(
        &k("max_replay_body"),
        written_or(&s.max_replay_body, file::default_max_replay_body),
        sizes,
    );
    let max_jar_bytes = c.byte_size(
        &k("max_jar_bytes"),
        written_or(&s.max_jar_bytes, file::default_max_jar_bytes),
        sizes,
    ) as usize;

    let handle_cookie = written_or(&s.handle_cookie, file::default_handle_cookie).to_owned();
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

    let without_handle = match written_or(
        &s.concurrent_without_handle,
        file::default_concurrent_without_handle,
    ) {
        "new" => WithoutHandle::New,
        "reject" => WithoutHandle::Reject,
        other => {
            c.error(
                &k("concurrent_without_handle"),
                format!("`{other}`: use \"new\" or \"reject\""),
            );
            WithoutHandle::New
        }
    };
    let grant_key = c.list(
        &k("grant_key"),
        &s.grant_key,
        file::default_grant_key,
        "must list at least one source",
        grant_source,
    );

    let sanitize_errors = match written_or(&s.error_bodies, file::default_error_bodies) {
        "sanitize" => true,
        "pass" => false,
        other => {
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
        concurrent_scope: written_or(&s.concurrent_scope, file::default_concurrent_scope)
            .to_owned(),
        creation,
        login_path,
        logout_path,
        marker_cookies,
        expired_redirect: expired_redirect?,
        max_upstream_sessions,
        max_sessions_per_grant,
        max_inflight_per_session,
        max_parallel_logins,
        max_queue_per_session: s
            .max_queue_per_session
            .unwrap_or_else(file::default_max_queue_per_session),
        max_queue_wait: max_queue_wait?,
        idle_ttl: idle_ttl?,
        max_session_age: max_session_age?,
        admission_wait: admission_wait?,
        login_timeout: login_timeout?,
        logout_timeout: logout_timeout?,
        login_failure_cooldown: login_failure_cooldown?,
        relogin_min_interval: relogin_min_interval?,
        min_idle_before_evict: min_idle_before_evict?,
        op_ttl: op_ttl?,
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

/// `handle_key_file` (and `log.subject_key_file`): at least 32 bytes of key as hex (64 hex
/// characters), newline trimmed.
pub(super) fn handle_key(c: &mut Checker<'_>, key: &str, path: &Path) -> Option<HandleKey> {
    let text = c.file_text(key, path)?;
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
            (None, Some(f)) => c.file_text(&format!("{key}_file"), &base.join(f)),
            (None, None) => {
                if required {
                    c.error(&key, format!("missing key: set {name} or {name}_file"));
                }
                None
            }
        }
    };
    let name = field("name", &s.name, &s.name_file, true);
    let inline_password = s.password.as_ref().map(|p| p.expose().to_owned());
    let password = field("password", &inline_password, &s.password_file, true);
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
