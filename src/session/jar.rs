//! The cookie jar of one upstream session (design §6.6): what the upstream set, replayed on every
//! request of that session and nothing else. Pure functions over text; no I/O.
//!
//! `Set-Cookie` replaces a cookie of the same name and path, and deletes it on `Max-Age<=0`, an
//! `Expires` in the past, or an empty value. The jar is capped (cookies and bytes); overflow is
//! dropped and reported. Values are secrets: `Debug` shows names only, and logs use
//! [`Jar::correlation`], a short hash of the session cookie.

use std::sync::Arc;
use std::time::SystemTime;

use sha2::{Digest, Sha256};

/// One cookie. Every request of a session route copies its session's jar, so its parts are
/// shared rather than copied: a copy of a jar costs one allocation (its list), not one per
/// cookie. A new value replaces the old one; values change far less often than jars are copied.
#[derive(Clone, PartialEq, Eq)]
struct Cookie {
    name: Arc<str>,
    path: Arc<str>,
    value: Arc<str>,
}

/// The cookies of one upstream session.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Jar {
    cookies: Vec<Cookie>,
}

impl std::fmt::Debug for Jar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.cookies.iter().map(|c| &c.name))
            .finish()
    }
}

/// What applying a response's `Set-Cookie` headers did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    pub set: usize,
    pub deleted: usize,
    /// Cookies dropped because the jar was full.
    pub overflow: usize,
}

impl Jar {
    pub fn is_empty(&self) -> bool {
        self.cookies.is_empty()
    }

    pub fn len(&self) -> usize {
        self.cookies.len()
    }

    /// True when the jar holds a non-empty cookie of this name.
    pub fn has(&self, name: &str) -> bool {
        self.cookies
            .iter()
            .any(|c| *c.name == *name && !c.value.is_empty())
    }

    /// The names held, for logs.
    pub fn names(&self) -> Vec<&str> {
        self.cookies.iter().map(|c| &*c.name).collect()
    }

    /// A short, non-reversible tag of a cookie's value (the design's "short hash of
    /// ASP.NET_SessionId"), to correlate logs with the upstream's without revealing the value.
    pub fn correlation(&self, name: &str) -> Option<String> {
        let c = self.cookies.iter().find(|c| *c.name == *name)?;
        let d = Sha256::digest(c.value.as_bytes());
        Some(d.iter().take(4).map(|b| format!("{b:02x}")).collect())
    }

    fn bytes(&self) -> usize {
        self.cookies
            .iter()
            .map(|c| c.name.len() + c.value.len() + 2)
            .sum()
    }

    /// Applies one `Set-Cookie` header value.
    pub fn apply(
        &mut self,
        set_cookie: &str,
        now: SystemTime,
        max_cookies: usize,
        max_bytes: usize,
    ) -> Applied {
        let mut applied = Applied::default();
        let Some(parsed) = parse_set_cookie(set_cookie, now) else {
            return applied;
        };
        let existing = self
            .cookies
            .iter()
            .position(|c| *c.name == *parsed.name && *c.path == *parsed.path);
        if parsed.delete {
            if let Some(i) = existing {
                self.cookies.remove(i);
                applied.deleted = 1;
            }
            return applied;
        }
        match existing {
            // The same value again is no change: nothing to write back.
            Some(i) if *self.cookies[i].value == *parsed.value => {}
            Some(i) => {
                let grows = parsed
                    .value
                    .len()
                    .saturating_sub(self.cookies[i].value.len());
                if self.bytes() + grows > max_bytes {
                    applied.overflow = 1;
                } else {
                    self.cookies[i].value = Arc::from(parsed.value);
                    applied.set = 1;
                }
            }
            None => {
                let size = parsed.name.len() + parsed.value.len() + 2;
                if self.cookies.len() >= max_cookies || self.bytes() + size > max_bytes {
                    applied.overflow = 1;
                } else {
                    self.cookies.push(Cookie {
                        name: Arc::from(parsed.name),
                        path: Arc::from(parsed.path),
                        value: Arc::from(parsed.value),
                    });
                    applied.set = 1;
                }
            }
        }
        applied
    }

    /// Applies every `Set-Cookie` of a response.
    pub fn apply_all<'a>(
        &mut self,
        headers: impl Iterator<Item = &'a str>,
        now: SystemTime,
        max_cookies: usize,
        max_bytes: usize,
    ) -> Applied {
        headers.fold(Applied::default(), |acc, h| {
            let a = self.apply(h, now, max_cookies, max_bytes);
            Applied {
                set: acc.set + a.set,
                deleted: acc.deleted + a.deleted,
                overflow: acc.overflow + a.overflow,
            }
        })
    }

    /// The jar as text for a shared store: one `name\tpath\tvalue` line per cookie (cookie
    /// names, paths and values never hold tabs or newlines).
    pub fn to_text(&self) -> String {
        self.cookies
            .iter()
            .map(|c| format!("{}\t{}\t{}", c.name, c.path, c.value))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The jar of [`Jar::to_text`]; malformed lines are skipped.
    pub fn from_text(text: &str) -> Jar {
        let cookies = text
            .lines()
            .filter_map(|l| {
                let mut parts = l.splitn(3, '\t');
                Some(Cookie {
                    name: Arc::from(parts.next()?),
                    path: Arc::from(parts.next()?),
                    value: Arc::from(parts.next()?),
                })
            })
            .filter(|c| !c.name.is_empty())
            .collect();
        Jar { cookies }
    }

    /// The `Cookie` header for a request to `path`: every cookie whose path is a prefix of it
    /// (RFC 6265 §5.1.4), longer paths first.
    pub fn cookie_header(&self, path: &str) -> Option<String> {
        let matching = || self.cookies.iter().filter(|c| path_matches(&c.path, path));
        // One pass for the size, and whether the jar's order is the header's already (paths
        // never longer than the one before: so it is when every path is "/"); then the header
        // is written straight from the jar. This runs on every request of a session route.
        let (mut len, mut count, mut ordered, mut previous) = (0, 0, true, usize::MAX);
        for c in matching() {
            len += c.name.len() + c.value.len() + 3;
            count += 1;
            ordered &= c.path.len() <= previous;
            previous = c.path.len();
        }
        if count == 0 {
            return None;
        }
        // Exactly the header's length (no "; " before the first cookie): a `Bytes` made from a
        // `String` with spare room allocates again for its count.
        let mut header = String::with_capacity(len - 2);
        let write = |c: &Cookie| {
            if !header.is_empty() {
                header.push_str("; ");
            }
            header.push_str(&c.name);
            header.push('=');
            header.push_str(&c.value);
        };
        if ordered {
            matching().for_each(write);
        } else {
            // Longer paths first; a stable sort keeps the jar's order among equal lengths.
            let mut sorted: Vec<&Cookie> = matching().collect();
            sorted.sort_by_key(|c| std::cmp::Reverse(c.path.len()));
            sorted.into_iter().for_each(write);
        }
        Some(header)
    }
}

fn path_matches(cookie_path: &str, request_path: &str) -> bool {
    if cookie_path == "/" || cookie_path == request_path {
        return true;
    }
    request_path.starts_with(cookie_path)
        && (cookie_path.ends_with('/')
            || request_path.as_bytes().get(cookie_path.len()) == Some(&b'/'))
}

struct Parsed<'a> {
    name: &'a str,
    value: &'a str,
    path: &'a str,
    delete: bool,
}

/// Parses a `Set-Cookie` value leniently (RFC 6265 §5.2). `None` for a line without `name=`,
/// and for a name or path with a control character (a tab among them): the jar's store text
/// separates name, path and value with tabs, so such a cookie would read back as another.
fn parse_set_cookie(line: &str, now: SystemTime) -> Option<Parsed<'_>> {
    let (first, mut attrs) = match cut(line, b';') {
        Some((first, rest)) => (first, Some(rest)),
        None => (line, None),
    };
    let (name, value) = cut(first, b'=')?;
    let name = trim(name);
    if name.is_empty() || name.bytes().any(|b| b.is_ascii_control()) {
        return None;
    }
    let value = unquote(trim(value));
    let mut path = "/";
    let mut delete = value.is_empty();
    while let Some(rest) = attrs {
        let attr = match cut(rest, b';') {
            Some((attr, next)) => {
                attrs = Some(next);
                attr
            }
            None => {
                attrs = None;
                rest
            }
        };
        let (k, v) = cut(attr, b'=').unwrap_or((attr, ""));
        let (k, v) = (trim(k), trim(v));
        if k.eq_ignore_ascii_case("path") && v.starts_with('/') {
            path = v;
        } else if k.eq_ignore_ascii_case("max-age") {
            if v.parse::<i64>().is_ok_and(|n| n <= 0) {
                delete = true;
            }
        } else if k.eq_ignore_ascii_case("expires") {
            if let Some(t) = parse_http_date(v) {
                if t <= now {
                    delete = true;
                }
            }
        }
    }
    if path.bytes().any(|b| b.is_ascii_control()) {
        return None;
    }
    Some(Parsed {
        name,
        value,
        path,
        delete,
    })
}

/// `str::trim`, without its Unicode scan when both ends are visible ASCII (nearly every part
/// of a `Set-Cookie`): such a character is never white space, so there is nothing to trim.
fn trim(s: &str) -> &str {
    match (s.as_bytes().first(), s.as_bytes().last()) {
        (Some(a), Some(b)) if a.is_ascii_graphic() && b.is_ascii_graphic() => s,
        _ => s.trim(),
    }
}

/// `s` split around its first `sep`, an ASCII byte, so that both sides are whole characters.
/// A vectorised byte search: `str`'s character searchers, and a plain byte loop after them,
/// each cost more than the rest of a cookie's parse, and this runs on every answer of a
/// session route.
fn cut(s: &str, sep: u8) -> Option<(&str, &str)> {
    let i = memchr::memchr(sep, s.as_bytes())?;
    Some((&s[..i], &s[i + 1..]))
}

/// `s` without the double quotes around it (all of them, as `trim_matches('"')`).
fn unquote(s: &str) -> &str {
    let b = s.as_bytes();
    let start = b.iter().position(|&c| c != b'"').unwrap_or(b.len());
    let end = b.iter().rposition(|&c| c != b'"').map_or(start, |i| i + 1);
    &s[start..end]
}

/// Parses the cookie date forms seen in the wild: `Thu, 01 Jan 1970 00:00:00 GMT` and the
/// dashed `Thu, 01-Jan-1970 00:00:00 GMT` ASP.NET sends.
fn parse_http_date(v: &str) -> Option<SystemTime> {
    let normalised = v.replace('-', " ");
    httpdate(&normalised)
}

fn httpdate(s: &str) -> Option<SystemTime> {
    // "Thu, 01 Jan 1970 00:00:00 GMT"
    let s = s.split_once(',').map_or(s, |(_, rest)| rest).trim();
    let mut it = s.split_whitespace();
    let day: u64 = it.next()?.parse().ok()?;
    let month = match it.next()? {
        "Jan" => 1,
        "Feb" => 2,
        "Mar" => 3,
        "Apr" => 4,
        "May" => 5,
        "Jun" => 6,
        "Jul" => 7,
        "Aug" => 8,
        "Sep" => 9,
        "Oct" => 10,
        "Nov" => 11,
        "Dec" => 12,
        _ => return None,
    };
    let mut year: u64 = it.next()?.parse().ok()?;
    if year < 100 {
        year += if year < 70 { 2000 } else { 1900 };
    }
    let mut hms = it.next()?.split(':');
    let (h, m, sec): (u64, u64, u64) = (
        hms.next()?.parse().ok()?,
        hms.next()?.parse().ok()?,
        hms.next()?.parse().ok()?,
    );
    // RFC 6265 §5.1.1: a time of day out of range is no date; so is one past what the clock
    // holds (the attribute is then ignored, as a date that will never come).
    if h > 23 || m > 59 || sec > 59 {
        return None;
    }
    let days = days_from_civil(year, month, day)?;
    let secs = days
        .checked_mul(86_400)?
        .checked_add(h * 3600 + m * 60 + sec)?;
    SystemTime::UNIX_EPOCH.checked_add(std::time::Duration::from_secs(secs))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: u64, m: u64, d: u64) -> Option<u64> {
    if y < 1970 || !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return None;
    }
    let (y, m) = if m <= 2 { (y - 1, m + 9) } else { (y, m - 3) };
    let era = y / 400;
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era.checked_mul(146_097)?
        .checked_add(doe)?
        .checked_sub(719_468)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
    }

    fn jar(lines: &[&str]) -> Jar {
        let mut j = Jar::default();
        j.apply_all(lines.iter().copied(), now(), 50, 8192);
        j
    }

    #[test]
    fn trim_is_str_trim() {
        for s in [
            "",
            " ",
            "a",
            " a ",
            "\ta\t",
            "a b",
            "\u{a0}a",
            "a\u{3000}",
            "\u{a0}",
            "é",
            " é ",
            "\u{2028}x\u{85}",
            "x\u{200b}",
        ] {
            assert_eq!(trim(s), s.trim(), "{s:?}");
        }
    }

    proptest::proptest! {
        #[test]
        fn trim_is_str_trim_for_any_text(s in "\\PC{0,8}|[ \\t\\u{a0}\\u{3000}a-z]{0,8}") {
            proptest::prop_assert_eq!(trim(&s), s.trim());
        }
    }

    #[test]
    fn the_cookie_header_puts_longer_paths_first_and_keeps_the_jar_order_otherwise() {
        // Written straight from the jar: its order is the header's.
        let j = jar(&[
            "c=3; path=/entity/Default",
            "b=2; path=/entity",
            "a=1; path=/",
        ]);
        assert_eq!(
            j.cookie_header("/entity/Default/x").unwrap(),
            "c=3; b=2; a=1"
        );
        // Sorted: a longer path after a shorter one in the jar.
        let j = jar(&[
            "a=1; path=/",
            "c=3; path=/entity/Default",
            "z=0; path=/",
            "b=2; path=/entity",
        ]);
        assert_eq!(
            j.cookie_header("/entity/Default/x").unwrap(),
            "c=3; b=2; a=1; z=0"
        );
        assert_eq!(j.cookie_header("/entity/y").unwrap(), "b=2; a=1; z=0");
        assert_eq!(j.cookie_header("/other").unwrap(), "a=1; z=0");
        assert_eq!(jar(&["c=3; path=/entity"]).cookie_header("/other"), None);
    }

    #[test]
    fn the_cookie_header_is_allocated_at_its_exact_length() {
        // The header becomes a `Bytes`, which takes a `String` without copying or allocating
        // only when it has no spare room.
        let j = jar(&[
            "a=1",
            "bb=22; path=/entity",
            "ccc=333; path=/entity/Default",
        ]);
        for path in ["/", "/entity/x", "/entity/Default/x"] {
            let h = j.cookie_header(path).unwrap();
            assert_eq!(h.capacity(), h.len(), "{path}: {h}");
        }
    }

    #[test]
    fn names_values_and_attributes_are_cut_where_rfc_6265_cuts_them() {
        let j = jar(&[
            // The first `=` ends the name; the value may hold more.
            "Locale=Culture=en-US&TimeZone=GMTM0800A; path=/",
            // Quotes around a value go, spaces around parts go, attributes without `=` and a
            // trailing `;` are fine, attribute names are case-insensitive.
            " q = \"quoted\" ; Secure; HttpOnly; PATH = /entity ;",
            // Text beyond ASCII is kept as it is.
            "u=caf\u{e9}; path=/",
        ]);
        assert_eq!(j.names(), ["Locale", "q", "u"]);
        assert_eq!(
            j.cookie_header("/entity/x").unwrap(),
            "q=quoted; Locale=Culture=en-US&TimeZone=GMTM0800A; u=caf\u{e9}"
        );
        assert_eq!(
            j.cookie_header("/other").unwrap(),
            "Locale=Culture=en-US&TimeZone=GMTM0800A; u=caf\u{e9}"
        );
        // Only quotes is no value: a deletion, of nothing here.
        let mut j = jar(&["q=1"]);
        j.apply("q=\"\"", now(), 50, 8192);
        assert!(!j.has("q"));
        // No `=` in the first part: not a cookie.
        assert!(jar(&["novalue; path=/", "=x; path=/"]).names().is_empty());
    }

    #[test]
    fn a_tab_in_a_name_or_path_is_refused_so_the_store_text_reads_back() {
        // Found by the `set_cookie` fuzz target: the tab split the store text's fields.
        let j = jar(&[
            "a\tASP.NET_SessionId=a%c124def; path=/; HttpOnly",
            "b=1; path=/x\ty",
            "c=tab\tinside",
        ]);
        assert_eq!(j.names(), ["c"]);
        assert_eq!(Jar::from_text(&j.to_text()), j);
    }

    #[test]
    fn far_future_and_oversized_dates_do_not_overflow() {
        // Times past what `SystemTime` holds, and fields whose seconds overflow a u64.
        for date in [
            "Thu, 01 Jan 99999999999 00:00:00 GMT",
            "Thu, 01 Jan 18446744073709551615 00:00:00 GMT",
            "Thu, 01 Jan 2030 18446744073709551615:00:00 GMT",
            "Thu, 01 Jan 2030 00:18446744073709551615:00 GMT",
            "Thu, 01 Jan 2030 00:00:18446744073709551615 GMT",
        ] {
            assert!(parse_http_date(date).is_none_or(|t| t > now()), "{date}");
            let j = jar(&[&format!("a=1; expires={date}")]);
            assert!(j.has("a"), "{date}");
        }
    }

    #[test]
    fn the_acumatica_login_cookies() {
        let j = jar(&[
            "ASP.NET_SessionId=abcdefghijklmnopqrstuvwx; path=/; HttpOnly; SameSite=Lax",
            ".ASPXAUTH=0A1B2C; path=/; HttpOnly",
            "UserBranch=1; path=/",
            "Locale=Culture=en-US&TimeZone=GMTM0800A; path=/",
            "requestid=0123456789abcdef0123456789abcdef; path=/",
            "requeststat=+st:1+sc:~/entity/auth/login+start:1+tg:; path=/",
        ]);
        assert_eq!(j.len(), 6);
        assert!(j.has("ASP.NET_SessionId") && j.has(".ASPXAUTH"));
        let h = j
            .cookie_header("/entity/Default/24.200.001/Customer")
            .unwrap();
        assert!(h.contains("ASP.NET_SessionId=abcdefghijklmnopqrstuvwx"));
        assert!(h.contains("Locale=Culture=en-US&TimeZone=GMTM0800A"));
        assert!(
            !format!("{j:?}").contains("abcdefghijkl"),
            "Debug shows names only"
        );
    }

    #[test]
    fn replace_by_name_and_path() {
        let mut j = jar(&["requestid=one; path=/"]);
        j.apply("requestid=two; path=/", now(), 50, 8192);
        assert_eq!(j.len(), 1);
        assert_eq!(j.cookie_header("/").unwrap(), "requestid=two");
        j.apply("requestid=three; path=/entity", now(), 50, 8192);
        assert_eq!(j.len(), 2);
        assert_eq!(j.cookie_header("/other").unwrap(), "requestid=two");
        assert_eq!(
            j.cookie_header("/entity/x").unwrap(),
            "requestid=three; requestid=two"
        );
    }

    #[test]
    fn the_same_value_again_is_no_change_and_a_new_one_is() {
        let mut j = jar(&["UserBranch=16; path=/", "requestid=one; path=/"]);
        let before = j.clone();
        // Attributes aside, the same value: nothing to write back to the store.
        let again = j.apply("UserBranch=16; path=/; HttpOnly", now(), 50, 8192);
        assert_eq!(again, Applied::default());
        assert_eq!(j, before);
        let changed = j.apply("requestid=two; path=/", now(), 50, 8192);
        assert_eq!(changed.set, 1);
        assert_eq!(
            j.cookie_header("/").unwrap(),
            "UserBranch=16; requestid=two"
        );
        // The copy taken before is untouched by the change.
        assert_eq!(
            before.cookie_header("/").unwrap(),
            "UserBranch=16; requestid=one"
        );
    }

    #[test]
    fn deletions() {
        let mut j = jar(&[".ASPXAUTH=x; path=/", "a=1", "b=2", "c=3"]);
        let a = j.apply(
            ".ASPXAUTH=; expires=Thu, 01-Jan-1970 00:00:00 GMT; path=/",
            now(),
            50,
            8192,
        );
        assert_eq!(a.deleted, 1);
        assert!(!j.has(".ASPXAUTH"));
        j.apply("a=1; Max-Age=0", now(), 50, 8192);
        j.apply("b=", now(), 50, 8192);
        j.apply(
            "c=3; Expires=Wed, 21 Oct 2015 07:28:00 GMT",
            now(),
            50,
            8192,
        );
        assert!(j.is_empty(), "{j:?}");
        // A future Expires keeps the cookie.
        j.apply(
            "d=4; Expires=Wed, 21 Oct 2099 07:28:00 GMT",
            now(),
            50,
            8192,
        );
        assert!(j.has("d"));
    }

    #[test]
    fn caps_drop_overflow() {
        let mut j = Jar::default();
        let a = j.apply_all(["a=1", "b=2", "c=3"].into_iter(), now(), 2, 8192);
        assert_eq!((a.set, a.overflow), (2, 1));
        let mut j = Jar::default();
        let big = format!("big={}", "x".repeat(100));
        let a = j.apply(&big, now(), 50, 64);
        assert_eq!(a.overflow, 1);
        assert!(j.is_empty());
    }

    #[test]
    fn text_round_trip() {
        let j = jar(&[
            "ASP.NET_SessionId=abc; path=/",
            "Locale=Culture=en-US&TimeZone=X; path=/entity",
        ]);
        let back = Jar::from_text(&j.to_text());
        assert_eq!(back, j);
        assert!(Jar::from_text("").is_empty());
        assert!(Jar::from_text("broken").is_empty());
    }

    #[test]
    fn garbage_is_ignored() {
        let j = jar(&["", "novalue", "=x", ";;;"]);
        assert!(j.is_empty());
    }

    #[test]
    fn correlation_is_short_and_not_the_value() {
        let j = jar(&["ASP.NET_SessionId=secretvalue"]);
        let c = j.correlation("ASP.NET_SessionId").unwrap();
        assert_eq!(c.len(), 8);
        assert!(!c.contains("secret"));
    }

    #[test]
    fn dates() {
        assert_eq!(
            httpdate("Thu, 01 Jan 1970 00:00:00 GMT"),
            Some(SystemTime::UNIX_EPOCH)
        );
        assert_eq!(
            parse_http_date("Wed, 21-Oct-2015 07:28:00 GMT"),
            Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_445_412_480))
        );
        assert_eq!(httpdate("nonsense"), None);
    }
}
