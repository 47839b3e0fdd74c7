//! `[[upstream]]` tables → [`UpstreamConfig`]: where each upstream is, its timeouts and TLS files,
//! and (through [`super::session`]) its session layer.

use std::collections::HashSet;
use std::path::Path;

use url::Url;

use super::check::{written_or, Checker};
use super::file::{self, UpstreamSection};
use super::UpstreamConfig;

pub(crate) fn upstreams(
    c: &mut Checker<'_>,
    raw: &[UpstreamSection],
    base: &Path,
) -> Vec<UpstreamConfig> {
    let mut seen = HashSet::new();
    raw.iter()
        .enumerate()
        .map(|(i, r)| upstream(c, i, r, base, &mut seen))
        .collect()
}

fn upstream(
    c: &mut Checker<'_>,
    i: usize,
    r: &UpstreamSection,
    base: &Path,
    seen: &mut HashSet<String>,
) -> UpstreamConfig {
    let k = |field: &str| format!("upstream[{i}].{field}");
    let id = c.id(&k("id"), r.id.as_ref(), seen);
    let url = c
        .required(&k("url"), &r.url)
        .and_then(|u| match Url::parse(u) {
            Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => {
                if url.query().is_some() || url.fragment().is_some() {
                    c.error(&k("url"), "must not have a query or fragment");
                }
                Some(url)
            }
            Ok(_) => {
                c.error(
                    &k("url"),
                    format!("`{u}` must be an http:// or https:// URL with a host"),
                );
                None
            }
            Err(e) => {
                c.error(&k("url"), format!("`{u}` is not a URL ({e})"));
                None
            }
        });
    let connect_timeout = c.duration(
        &k("connect_timeout"),
        written_or(&r.connect_timeout, file::default_connect_timeout),
    );
    let timeout = c.duration(
        &k("timeout"),
        written_or(&r.timeout, file::default_upstream_timeout),
    );
    c.nonzero(&k("connect_timeout"), connect_timeout);
    c.nonzero(&k("timeout"), timeout);
    let body_read_timeout = c.positive_duration(
        &k("body_read_timeout"),
        written_or(
            &r.body_read_timeout,
            file::default_upstream_body_read_timeout,
        ),
    );
    let idle_timeout = c.positive_duration(
        &k("idle_timeout"),
        written_or(&r.idle_timeout, file::default_upstream_idle_timeout),
    );
    let file = |c: &mut Checker<'_>, field: &str, value: &Option<String>| {
        value
            .as_deref()
            .and_then(|f| c.existing_file(&k(field), f, base))
    };
    UpstreamConfig {
        id,
        url: url.unwrap_or_else(placeholder_url),
        connect_timeout: connect_timeout.unwrap_or_default(),
        timeout: timeout.unwrap_or_default(),
        body_read_timeout,
        idle_timeout,
        forward_authorization: r.forward_authorization.unwrap_or_default(),
        preserve_host: r.preserve_host.unwrap_or_default(),
        ca_file: file(c, "ca_file", &r.ca_file),
        client_cert_file: file(c, "client_cert_file", &r.client_cert_file),
        client_key_file: file(c, "client_key_file", &r.client_key_file),
        http2: r.http2.unwrap_or_default(),
        max_concurrency: r
            .max_concurrency
            .map(|n| c.positive(&k("max_concurrency"), n)),
        session: r
            .session
            .as_ref()
            .and_then(|sess| super::session::session(c, &k("session"), sess, base)),
    }
}

/// Stands in for a URL that failed validation; the recorded error stops the load before use.
#[allow(clippy::expect_used)] // a constant that parses
fn placeholder_url() -> Url {
    Url::parse("http://invalid.invalid/").expect("a constant URL parses")
}
