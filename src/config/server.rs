//! `[server]` and `[server.tls]` → [`ServerConfig`]: the listeners, the challenge realm, the
//! connection limits and timeouts, and the TLS files (which must exist; the server reads them).

use std::path::Path;

use super::check::{written_or, Checker};
use super::file::{self, ServerSection, TlsSection};
use super::{Http2Limits, Scheduler, Secret, ServerConfig, TlsConfig};

/// The most threads `server.threads` may ask for: more is a typo, not a machine.
const MAX_THREADS: u32 = 1024;

pub(crate) fn server(c: &mut Checker<'_>, raw: &ServerSection, base: &Path) -> ServerConfig {
    let listen = c.socket_addr(
        "server.listen",
        written_or(&raw.listen, file::default_listen),
    );
    let admin_listen = c.socket_addr(
        "server.admin_listen",
        written_or(&raw.admin_listen, file::default_admin_listen),
    );
    if listen == admin_listen && listen.port() != 0 {
        c.error("server.admin_listen", "must differ from server.listen");
    }
    if let Some(n) = raw.threads {
        if !(1..=MAX_THREADS).contains(&n) {
            c.error(
                "server.threads",
                format!("must be between 1 and {MAX_THREADS} (got {n})"),
            );
        }
    }
    let scheduler = match written_or(&raw.scheduler, file::default_scheduler) {
        "per-core" => Scheduler::PerCore,
        "work-stealing" => Scheduler::WorkStealing,
        other => {
            c.error(
                "server.scheduler",
                format!("`{other}` is not a scheduler; use \"per-core\" or \"work-stealing\""),
            );
            Scheduler::PerCore
        }
    };
    let realm = written_or(&raw.realm, file::default_realm);
    if realm.is_empty()
        || !realm
            .bytes()
            .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
    {
        c.error(
            "server.realm",
            "must be non-empty printable ASCII without quotes or backslashes",
        );
    }
    let token_cache_capacity = c.positive(
        "server.token_cache_capacity",
        raw.token_cache_capacity
            .unwrap_or_else(file::default_token_cache_capacity),
    );
    let sizes = r#""10MiB", "64KiB", "4096""#;
    let (admin_token, admin_metrics_auth) = admin_access(c, raw, base);
    ServerConfig {
        listen,
        admin_listen,
        threads: raw.threads,
        scheduler,
        realm: realm.into(),
        token_cache_capacity,
        trust_forwarded_headers: raw.trust_forwarded_headers.unwrap_or_default(),
        shutdown_grace: c
            .duration(
                "server.shutdown_grace",
                written_or(&raw.shutdown_grace, file::default_shutdown_grace),
            )
            .unwrap_or_default(),
        tls: raw.tls.as_ref().and_then(|t| tls(c, t, base)),
        http2_cleartext: raw.http2_cleartext.unwrap_or_default(),
        max_header_bytes: c.byte_size(
            "server.max_header_bytes",
            written_or(&raw.max_header_bytes, file::default_max_header_bytes),
            sizes,
        ) as usize,
        header_read_timeout: c.positive_duration(
            "server.header_read_timeout",
            written_or(&raw.header_read_timeout, file::default_header_read_timeout),
        ),
        idle_timeout: c.positive_duration(
            "server.idle_timeout",
            written_or(&raw.idle_timeout, file::default_idle_timeout),
        ),
        max_connections: c.positive(
            "server.max_connections",
            raw.max_connections
                .unwrap_or_else(file::default_max_connections),
        ),
        max_body: c.byte_size(
            "server.max_body",
            written_or(&raw.max_body, file::default_max_body),
            sizes,
        ),
        watch_config: raw.watch_config.unwrap_or_else(file::default_watch_config),
        body_read_timeout: c.positive_duration(
            "server.body_read_timeout",
            written_or(&raw.body_read_timeout, file::default_body_read_timeout),
        ),
        send_timeout: c.positive_duration(
            "server.send_timeout",
            written_or(&raw.send_timeout, file::default_send_timeout),
        ),
        admin_token,
        admin_metrics_auth,
        http2: http2(c, raw),
    }
}

/// The `http2_*` keys: every count at least 1 (none of them may be turned off: each bounds
/// what one client can make the gateway do), every duration positive.
fn http2(c: &mut Checker<'_>, raw: &ServerSection) -> Http2Limits {
    Http2Limits {
        max_concurrent_streams: c.positive(
            "server.http2_max_concurrent_streams",
            raw.http2_max_concurrent_streams
                .unwrap_or_else(file::default_http2_max_concurrent_streams),
        ),
        max_pending_accept_reset_streams: c.positive(
            "server.http2_max_pending_accept_reset_streams",
            raw.http2_max_pending_accept_reset_streams
                .unwrap_or_else(file::default_http2_max_pending_accept_reset_streams),
        ),
        max_local_error_reset_streams: c.positive(
            "server.http2_max_local_error_reset_streams",
            raw.http2_max_local_error_reset_streams
                .unwrap_or_else(file::default_http2_max_local_error_reset_streams),
        ),
        keep_alive_interval: c.positive_duration(
            "server.http2_keep_alive_interval",
            written_or(
                &raw.http2_keep_alive_interval,
                file::default_http2_keep_alive_interval,
            ),
        ),
        keep_alive_timeout: c.positive_duration(
            "server.http2_keep_alive_timeout",
            written_or(
                &raw.http2_keep_alive_timeout,
                file::default_http2_keep_alive_timeout,
            ),
        ),
    }
}

/// The shortest admin token accepted: a token a person could type is one an attacker can guess.
const MIN_ADMIN_TOKEN: usize = 16;

/// `server.admin_token_file` (its content, newline trimmed, at least [`MIN_ADMIN_TOKEN`]
/// characters, never shown) and `server.admin_metrics_auth`, which needs it.
fn admin_access(c: &mut Checker<'_>, raw: &ServerSection, base: &Path) -> (Option<Secret>, bool) {
    let token = raw.admin_token_file.as_ref().and_then(|f| {
        let key = "server.admin_token_file";
        let text = c.file_text(key, &base.join(f))?;
        // A bearer token (RFC 6750 b64token), or no client could send it.
        if text.len() < MIN_ADMIN_TOKEN || !crate::auth::bearer::is_b64token(text.as_bytes()) {
            c.error(
                key,
                format!("the token must be at least {MIN_ADMIN_TOKEN} characters of A-Z a-z 0-9 - . _ ~ + / (then any = padding), such as the output of `openssl rand -hex 32`"),
            );
            return None;
        }
        Some(Secret::new(text))
    });
    let metrics_auth = raw.admin_metrics_auth.unwrap_or_default();
    if metrics_auth && raw.admin_token_file.is_none() {
        c.error(
            "server.admin_metrics_auth",
            "needs server.admin_token_file: there is no token to ask for",
        );
    }
    (token, metrics_auth)
}

fn tls(c: &mut Checker<'_>, t: &TlsSection, base: &Path) -> Option<TlsConfig> {
    let cert = c.required("server.tls.cert_file", &t.cert_file).cloned();
    let key = c.required("server.tls.key_file", &t.key_file).cloned();
    let cert = cert.and_then(|f| c.existing_file("server.tls.cert_file", &f, base));
    let key = key.and_then(|f| c.existing_file("server.tls.key_file", &f, base));
    let ca = match &t.client_ca_file {
        Some(f) => Some(c.existing_file("server.tls.client_ca_file", f, base)?),
        None => None,
    };
    Some(TlsConfig {
        cert_file: cert?,
        key_file: key?,
        client_ca_file: ca,
    })
}
