//! `[store]` → [`StoreConfig`]: the session table in this process, or in Redis (one address, a
//! Sentinel URL, or sentinels with the primary's name). Errors never repeat a password.

use std::time::Duration;

use super::check::{written_or, Checker};
use super::file::{self, StoreSection};
use super::{NodeAuth, RedisConfig, RedisTarget, Secret, StoreConfig, UpstreamConfig};

pub(crate) fn store(
    c: &mut Checker<'_>,
    raw: &StoreSection,
    upstreams: &[UpstreamConfig],
) -> StoreConfig {
    match written_or(&raw.kind, file::default_store_kind) {
        "memory" => {
            let redis_only = [
                ("url", raw.url.is_some()),
                ("sentinels", raw.sentinels.is_some()),
                ("master_name", raw.master_name.is_some()),
                ("key_prefix", raw.key_prefix.is_some()),
                ("timeout", raw.timeout.is_some()),
                ("lease_ttl", raw.lease_ttl.is_some()),
                ("share_introspection", raw.share_introspection.is_some()),
                ("linger", raw.linger.is_some()),
            ];
            for (field, set) in redis_only {
                if set {
                    c.error(
                        &format!("store.{field}"),
                        "has no use with kind = \"memory\"; set kind = \"redis\"",
                    );
                }
            }
            StoreConfig::Memory
        }
        "redis" => StoreConfig::Redis(redis(c, raw, upstreams)),
        other => {
            c.error(
                "store.kind",
                format!("`{other}` is not a store kind; use \"memory\" or \"redis\""),
            );
            StoreConfig::Memory
        }
    }
}

fn redis(c: &mut Checker<'_>, raw: &StoreSection, upstreams: &[UpstreamConfig]) -> RedisConfig {
    let target = redis_target(c, raw);
    for (i, u) in upstreams.iter().enumerate() {
        if u.session.as_ref().is_some_and(|s| s.key.is_none()) {
            c.error(
                &format!("upstream[{i}].session.handle_key_file"),
                "missing key: with a shared store every replica must use the same key (otherwise grant keys and handles differ between replicas)",
            );
        }
    }
    let timeout = c.duration(
        "store.timeout",
        written_or(&raw.timeout, file::default_store_timeout),
    );
    let lease_ttl = c.duration(
        "store.lease_ttl",
        written_or(&raw.lease_ttl, file::default_lease_ttl),
    );
    if lease_ttl.is_some_and(|d| d < Duration::from_secs(1)) {
        c.error("store.lease_ttl", "must be at least 1s");
    }
    c.nonzero("store.timeout", timeout);
    let linger = c.duration(
        "store.linger",
        written_or(&raw.linger, file::default_linger),
    );
    if let (Some(l), Some(t)) = (linger, lease_ttl) {
        // A kept place is renewed (or goes back) a third of `lease_ttl` after it was granted:
        // a linger as long would outlast that.
        if l >= t / 3 {
            c.error(
                "store.linger",
                "must be shorter than a third of store.lease_ttl",
            );
        }
    }
    RedisConfig {
        target,
        key_prefix: written_or(&raw.key_prefix, file::default_key_prefix).to_owned(),
        timeout: timeout.unwrap_or_default(),
        lease_ttl: lease_ttl.unwrap_or_default(),
        share_introspection: raw
            .share_introspection
            .unwrap_or_else(file::default_share_introspection),
        linger: linger.unwrap_or_default(),
    }
}

/// `store.url` (a Redis URL, or a Sentinel URL), or `store.sentinels` with `store.master_name`.
fn redis_target(c: &mut Checker<'_>, raw: &StoreSection) -> RedisTarget {
    let none = || RedisTarget::Url(Secret::new(String::new()));
    match (&raw.url, &raw.sentinels, &raw.master_name) {
        (Some(_), Some(_), _) | (Some(_), _, Some(_)) => {
            c.error(
                "store.url",
                "set either url or sentinels with master_name, not both",
            );
            none()
        }
        (Some(u), None, None) => {
            let u = u.expose();
            let shown = crate::net::redact_url_value(u);
            if let Some(rest) = u
                .strip_prefix("redis+sentinel://")
                .map(|r| (r, false))
                .or_else(|| u.strip_prefix("rediss+sentinel://").map(|r| (r, true)))
            {
                return match parse_sentinel_url(rest.0, rest.1) {
                    Ok(t) => t,
                    Err(why) => {
                        c.error("store.url", format!("`{shown}`: {why}"));
                        none()
                    }
                };
            }
            let known = ["redis://", "rediss://", "redis+unix://", "unix://"];
            if !known.iter().any(|k| u.starts_with(k)) {
                c.error(
                    "store.url",
                    format!("`{shown}` must start with redis://, rediss:// or redis+sentinel://"),
                );
                return none();
            }
            if redis::Client::open(u).is_err() {
                c.error("store.url", format!("`{shown}` is not a Redis URL"));
            }
            RedisTarget::Url(Secret::new(u.to_owned()))
        }
        (None, Some(list), Some(master)) => {
            if list.is_empty() {
                c.error("store.sentinels", "must list at least one host:port");
            }
            for (i, s) in list.iter().enumerate() {
                if !valid_host_port(s) {
                    c.error(
                        &format!("store.sentinels[{i}]"),
                        format!("`{s}` is not host:port"),
                    );
                }
            }
            if master.is_empty() {
                c.error("store.master_name", "must not be empty");
            }
            RedisTarget::Sentinel {
                sentinels: list.clone(),
                master: master.clone(),
                node: NodeAuth::default(),
            }
        }
        (None, Some(_), None) => {
            c.error(
                "store.master_name",
                "missing key: sentinels needs the name of the primary they monitor",
            );
            none()
        }
        (None, None, Some(_)) => {
            c.error(
                "store.sentinels",
                "missing key: master_name needs the sentinels (host:port) that monitor it",
            );
            none()
        }
        (None, None, None) => {
            c.error(
                "store.url",
                "missing key: kind = \"redis\" needs url (or sentinels and master_name)",
            );
            none()
        }
    }
}

fn valid_host_port(s: &str) -> bool {
    s.rsplit_once(':')
        .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0))
}

/// `[[user]:password@]host:port[,host:port…]/master_name[/db]` (after the scheme).
fn parse_sentinel_url(rest: &str, tls: bool) -> Result<RedisTarget, String> {
    let (auth, rest) = match rest.rsplit_once('@') {
        Some((a, r)) => (Some(a), r),
        None => (None, rest),
    };
    let (hosts, path) = rest
        .split_once('/')
        .ok_or("the primary's name is missing after the hosts (…/master_name)")?;
    let sentinels: Vec<String> = hosts.split(',').map(str::to_owned).collect();
    if let Some(bad) = sentinels.iter().find(|s| !valid_host_port(s)) {
        return Err(format!("`{bad}` is not host:port"));
    }
    let mut parts = path.split('/');
    let master = parts.next().unwrap_or_default().to_owned();
    if master.is_empty() {
        return Err("the primary's name is missing after the hosts (…/master_name)".to_owned());
    }
    let db = match parts.next() {
        None | Some("") => 0,
        Some(d) => d
            .parse()
            .map_err(|_| format!("`{d}` is not a database number"))?,
    };
    let decode = |v: &str| {
        url::form_urlencoded::parse(format!("v={v}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default()
    };
    let (username, password) = match auth {
        None => (None, None),
        Some(a) => match a.split_once(':') {
            Some((u, p)) => (
                (!u.is_empty()).then(|| decode(u)),
                Some(Secret::new(decode(p))),
            ),
            None => (Some(decode(a)), None),
        },
    };
    Ok(RedisTarget::Sentinel {
        sentinels,
        master,
        node: NodeAuth {
            db,
            username,
            password,
            tls,
        },
    })
}
