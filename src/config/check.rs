//! The machinery every section's validation shares. A [`Checker`] collects each problem with its
//! key path, so that one load reports all of them; its methods turn the strings of the raw file
//! into typed values (durations, byte sizes, addresses, IdP URLs, files, ids) and record an error
//! when one does not fit.
//!
//! A value that fails comes back as a placeholder (zero, `None`, an unusable address): the
//! recorded error stops the load before anything uses it.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use url::Url;

use super::{ConfigError, ConfigErrors, Origin};

/// Collects errors while typed values are built.
pub(crate) struct Checker<'a> {
    pub(crate) origin: &'a Origin<'a>,
    /// Overrides the origin for keys of a separate file (the route file).
    pub(crate) file_override: Option<String>,
    pub(crate) errors: Vec<ConfigError>,
}

// === impl Checker ===

impl<'a> Checker<'a> {
    pub(crate) fn new(origin: &'a Origin<'a>) -> Self {
        Checker {
            origin,
            file_override: None,
            errors: Vec::new(),
        }
    }

    /// `value` when nothing was wrong, else every recorded problem.
    pub(crate) fn finish<T>(self, value: T) -> Result<T, ConfigErrors> {
        if self.errors.is_empty() {
            Ok(value)
        } else {
            Err(ConfigErrors(self.errors))
        }
    }

    /// Records an error at `key` (`route[2].upstream`).
    pub(crate) fn error(&mut self, key: &str, message: impl Into<String>) {
        let origin = match &self.file_override {
            Some(f) => f.clone(),
            None => self.origin.of(&dotted(key)),
        };
        self.errors
            .push(ConfigError::new(origin, key.to_owned(), &message.into()));
    }

    pub(crate) fn required<'v, T>(&mut self, key: &str, value: &'v Option<T>) -> Option<&'v T> {
        if value.is_none() {
            self.error(key, "missing key");
        }
        value.as_ref()
    }

    /// A humantime duration (`"30s"`, `"1h 30m"`); `None` once the error is recorded.
    pub(crate) fn duration(&mut self, key: &str, value: &str) -> Option<Duration> {
        match humantime::parse_duration(value.trim()) {
            Ok(d) => Some(d),
            Err(e) => {
                self.error(
                    key,
                    format!("`{value}` is not a duration ({e}); write it like \"30s\", \"10m\" or \"1h 30m\""),
                );
                None
            }
        }
    }

    /// Records that a duration which parsed is zero where it must not be.
    pub(crate) fn nonzero(&mut self, key: &str, value: Option<Duration>) {
        if value.is_some_and(|d| d.is_zero()) {
            self.error(key, "must be greater than zero");
        }
    }

    /// A duration that must be greater than zero.
    pub(crate) fn positive_duration(&mut self, key: &str, value: &str) -> Duration {
        let d = self.duration(key, value);
        self.nonzero(key, d);
        d.unwrap_or_default()
    }

    /// A count that must be at least 1.
    pub(crate) fn positive<N: Copy + Into<u64>>(&mut self, key: &str, n: N) -> N {
        if n.into() == 0 {
            self.error(key, "must be at least 1");
        }
        n
    }

    /// A byte size (`"10MiB"`, `"64KiB"`, `"4096"`). `examples` completes the error message with
    /// sizes that suit the key.
    pub(crate) fn byte_size(&mut self, key: &str, value: &str, examples: &str) -> u64 {
        parse_bytes(value).unwrap_or_else(|| {
            self.error(
                key,
                format!("`{value}` is not a byte size (for example {examples})"),
            );
            0
        })
    }

    pub(crate) fn socket_addr(&mut self, key: &str, value: &str) -> SocketAddr {
        match value.parse::<SocketAddr>() {
            Ok(a) => a,
            Err(_) => {
                self.error(
                    key,
                    format!("`{value}` is not an IP:port address (for example \"127.0.0.1:8080\" or \"[::]:8080\")"),
                );
                SocketAddr::from(([127, 0, 0, 1], 0))
            }
        }
    }

    /// An `http(s)` URL; plain http only for loopback hosts or when `allow_http` is set.
    pub(crate) fn idp_url(&mut self, key: &str, value: &str, allow_http: bool) -> Option<Url> {
        self.https_url(key, value, allow_http, " or with allow_http = true")
    }

    /// An absolute `https` URL; plain http only for loopback hosts or when `allow_http` is set
    /// (`how_else` tells how, in the error, when there is a way).
    pub(crate) fn https_url(
        &mut self,
        key: &str,
        value: &str,
        allow_http: bool,
        how_else: &str,
    ) -> Option<Url> {
        let url = match Url::parse(value) {
            Ok(u) => u,
            Err(e) => {
                self.error(key, format!("`{value}` is not a URL ({e})"));
                return None;
            }
        };
        match url.scheme() {
            "https" => Some(url),
            "http" if allow_http || crate::net::is_loopback(&url) => Some(url),
            "http" => {
                self.error(
                    key,
                    format!("`{value}` must use https:// (plain http is allowed only for loopback hosts{how_else})"),
                );
                None
            }
            other => {
                self.error(
                    key,
                    format!("unsupported URL scheme `{other}`; use https://"),
                );
                None
            }
        }
    }

    /// A duration (humantime) in whole seconds, as HTTP and the challenges carry it.
    pub(crate) fn whole_seconds(&mut self, key: &str, value: &str) -> Option<u64> {
        let d = self.duration(key, value)?;
        if d.subsec_nanos() != 0 {
            self.error(
                key,
                format!("`{value}` must be whole seconds (it is sent as a number of seconds)"),
            );
            return None;
        }
        Some(d.as_secs())
    }

    /// A file named by the configuration, relative to its folder; it must exist.
    pub(crate) fn existing_file(&mut self, key: &str, value: &str, base: &Path) -> Option<PathBuf> {
        let path = base.join(value);
        if path.is_file() {
            Some(path)
        } else {
            self.error(key, format!("no such file: {}", path.display()));
            None
        }
    }

    /// The text of a secret or key file, without the trailing newline that editors and `echo`
    /// add.
    pub(crate) fn file_text(&mut self, key: &str, path: &Path) -> Option<String> {
        match std::fs::read_to_string(path) {
            Ok(text) => Some(trim_newline(text)),
            Err(e) => {
                self.error(key, format!("cannot read {}: {e}", path.display()));
                None
            }
        }
    }

    /// A list key (or its default list when it was left out), each item parsed by `item` with
    /// its own key (`issuer[0].algorithms[1]`). A written list that is empty is the error
    /// `if_empty`.
    pub(crate) fn list<T>(
        &mut self,
        key: &str,
        value: &Option<Vec<String>>,
        default: fn() -> &'static [&'static str],
        if_empty: &str,
        item: impl Fn(&mut Self, &str, &str) -> Option<T>,
    ) -> Vec<T> {
        let list = written_list_or(value, default);
        if list.is_empty() {
            self.error(key, if_empty);
        }
        list.iter()
            .enumerate()
            .filter_map(|(i, v)| item(self, &format!("{key}[{i}]"), v))
            .collect()
    }

    /// A configuration id: the label value of metrics and the name routes refer to.
    pub(crate) fn id(
        &mut self,
        key: &str,
        id: Option<&String>,
        seen: &mut HashSet<String>,
    ) -> Arc<str> {
        let Some(id) = id else {
            self.error(key, "missing key");
            return Arc::from("");
        };
        if id.is_empty()
            || id.len() > 64
            || !id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
        {
            self.error(
                key,
                format!(
                    "`{id}` must be 1 to 64 characters of letters, digits, '-', '_', '.' or ':'"
                ),
            );
        } else if !seen.insert(id.clone()) {
            self.error(key, format!("duplicate id `{id}`"));
        }
        Arc::from(id.as_str())
    }
}

/// The value written for a key, or the key's default (a `file::default_*` function) when it was
/// left out.
pub(crate) fn written_or(value: &Option<String>, default: fn() -> &'static str) -> &str {
    value.as_deref().unwrap_or(default())
}

/// The list written for a key, or the key's default list when it was left out.
fn written_list_or(
    value: &Option<Vec<String>>,
    default: fn() -> &'static [&'static str],
) -> Vec<&str> {
    match value {
        Some(list) => list.iter().map(String::as_str).collect(),
        None => default().to_vec(),
    }
}

/// `route[2].upstream` → `route.2.upstream`, the form figment looks values up by.
fn dotted(key: &str) -> String {
    key.replace('[', ".").replace(']', "")
}

/// Removes one trailing `\n` (or `\r\n`).
fn trim_newline(mut s: String) -> String {
    if s.ends_with('\n') {
        s.pop();
        if s.ends_with('\r') {
            s.pop();
        }
    }
    s
}

/// Parses a byte size: a number with an optional unit `B`, `KiB`, `MiB`, `GiB`, `KB`, `MB`, `GB`.
pub(crate) fn parse_bytes(s: &str) -> Option<u64> {
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

    #[test]
    fn one_trailing_newline_is_trimmed() {
        assert_eq!(trim_newline("s3cret\n".to_owned()), "s3cret");
        assert_eq!(trim_newline("s3cret\r\n".to_owned()), "s3cret");
        assert_eq!(trim_newline("s3cret\n\n".to_owned()), "s3cret\n");
        assert_eq!(trim_newline("s3cret".to_owned()), "s3cret");
    }
}
