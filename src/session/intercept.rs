//! Which requests are the upstream's login or logout call (design §6.6.5).
//!
//! The reference upstream is an ASP.NET application behind IIS: it routes paths
//! case-insensitively, ignores a trailing slash, and percent-decodes the path before routing.
//! A gateway that compared paths byte for byte would forward `/entity/Auth/Login/` with the
//! client's own credentials, and the upstream would log it in (or count the wrong password
//! towards the account's lockout). So a request path is the login or logout call when, segment
//! by segment, it equals the configured path once both are read the way the upstream reads
//! them:
//!
//! - percent escapes decoded (`%4C`, `%2F`);
//! - empty segments dropped (a trailing or doubled `/`);
//! - `;`-parameters cut off each segment (`login;x=1`);
//! - trailing dots and spaces cut off each segment (Windows drops them from path names);
//! - letters compared without case, the way .NET's ordinal-ignore-case compare does it (so
//!   `logın` with a dotless i matches too).
//!
//! The rule errs towards interception: a variant the upstream would answer with 404 is
//! intercepted all the same, which costs nothing; one it would route to its login must never
//! slip through.

use std::borrow::Cow;

/// True when `path` (already normalised by the gateway) names the same action as `configured`:
/// the rule in its plainest form, one path at a time. The gateway asks [`Actions::classify`],
/// which the tests hold to this.
#[cfg(test)]
fn is_action(path: &str, configured: &str) -> bool {
    let decoded = percent_decode(path);
    let mut a = segments(&decoded);
    let mut b = segments(configured);
    loop {
        match (a.next(), b.next()) {
            (None, None) => return true,
            (Some(x), Some(y)) if same_text(x, y) => {}
            _ => return false,
        }
    }
}

/// The upstream's login and logout paths, cut into segments once (when the pool is built), so
/// that telling whether a request is either call reads only the request's path: this runs on
/// every request of a session route.
#[derive(Debug, Clone)]
pub struct Actions {
    login: Box<[Box<str>]>,
    logout: Box<[Box<str>]>,
}

impl Actions {
    pub fn new(login: &str, logout: &str) -> Actions {
        let cut = |p: &str| segments(p).map(Box::from).collect();
        Actions {
            login: cut(login),
            logout: cut(logout),
        }
    }

    /// Whether `path` is the login call, and whether it is the logout call (never both: a
    /// path that is both is the login). It answers as `is_action` (the tests' plain form of
    /// the rule) does for each, with the request path decoded and cut into segments once for
    /// the two.
    pub fn classify(&self, path: &str) -> (bool, bool) {
        let decoded = percent_decode(path);
        let (mut is_login, mut is_logout) = (true, true);
        let mut depth = 0;
        for seg in segments(&decoded) {
            // A configured path found to differ is not read further.
            is_login = is_login && self.login.get(depth).is_some_and(|x| same_text(seg, x));
            is_logout = is_logout && self.logout.get(depth).is_some_and(|y| same_text(seg, y));
            if !is_login && !is_logout {
                return (false, false);
            }
            depth += 1;
        }
        let is_login = is_login && depth == self.login.len();
        let is_logout = !is_login && is_logout && depth == self.logout.len();
        (is_login, is_logout)
    }
}

/// The path's segments as the upstream routes them: cut at each `/`, without the `;`-parameters
/// and the trailing dots and spaces, and the empty ones left out. One pass over the bytes:
/// every separator here is ASCII, so each cut falls between characters. (This runs on every
/// request of a session route; a search for each separator in turn cost twice as much.)
fn segments(path: &str) -> impl Iterator<Item = &str> {
    let bytes = path.as_bytes();
    let mut i = 0;
    std::iter::from_fn(move || {
        while i < bytes.len() {
            let start = i;
            // The end of the segment's text: after its last byte that is kept.
            let mut kept = start;
            let mut parameters = false;
            while let Some(&b) = bytes.get(i).filter(|&&b| b != b'/') {
                match b {
                    b';' => parameters = true,
                    b'.' | b' ' => {}
                    // A byte after which the text ends is the last of its character: what
                    // follows it here is ASCII, or the end.
                    _ if !parameters => kept = i + 1,
                    _ => {}
                }
                i += 1;
            }
            i += 1;
            if kept > start {
                return path.get(start..kept);
            }
        }
        None
    })
}

/// Case-insensitive equality by simple upper-case mapping of each character. Two ASCII
/// segments (nearly every path) are compared bytewise: their mapping is the ASCII one, and the
/// Unicode tables cost more than the rest of the check on every request of a session route.
fn same_text(a: &str, b: &str) -> bool {
    if a.is_ascii() && b.is_ascii() {
        return a.eq_ignore_ascii_case(b);
    }
    a.chars().map(fold).eq(b.chars().map(fold))
}

fn fold(c: char) -> char {
    let mut up = c.to_uppercase();
    match (up.next(), up.next()) {
        (Some(u), None) => u,
        _ => c,
    }
}

/// Decodes every `%XX` escape (invalid UTF-8 is replaced, which never matches a configured
/// path); other bytes are kept.
fn percent_decode(path: &str) -> Cow<'_, str> {
    if !path.as_bytes().contains(&b'%') {
        return Cow::Borrowed(path);
    }
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = |b: u8| (b as char).to_digit(16);
            if let (Some(h), Some(l)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            ) {
                out.push(u8::try_from(h * 16 + l).unwrap_or(b'?'));
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOGIN: &str = "/entity/auth/login";

    #[test]
    fn every_spelling_the_upstream_routes_is_the_action() {
        for p in [
            "/entity/auth/login",
            "/entity/auth/login/",
            "/entity/Auth/Login",
            "/ENTITY/AUTH/LOGIN/",
            "/entity//auth/login",
            "/entity/auth/login;jsessionid=1",
            "/entity/auth;x/login",
            "/entity/auth/login.",
            "/entity/auth/login%20",
            "/entity/auth/log%69n",
            "/entity/auth/login%2F",
            "/entity/auth/log\u{131}n",
        ] {
            assert!(is_action(p, LOGIN), "{p}");
        }
    }

    #[test]
    fn other_paths_are_not() {
        for p in [
            "/entity/auth/logins",
            "/entity/auth/logout",
            "/entity/auth",
            "/entity/auth/login/extra",
            "/entity/login",
            "/",
            "/entity/auth/log%in",
        ] {
            assert!(!is_action(p, LOGIN), "{p}");
        }
    }

    /// The one-pass check of both paths answers as two [`is_action`] checks do, for every
    /// spelling above and the login and logout paths' prefixes and extensions.
    #[test]
    fn classify_answers_as_is_action_does() {
        const LOGOUT: &str = "/entity/auth/logout";
        let actions = Actions::new(LOGIN, LOGOUT);
        let paths = [
            "/entity/auth/login",
            "/ENTITY/auth/LogOut/",
            "/entity/auth/logout;x=1",
            "/entity/auth/log%6Fut",
            "/entity//auth/logout.",
            "/entity/auth/logouts",
            "/entity/auth/login/logout",
            "/entity/auth",
            "/entity",
            "/",
            "",
            "/entity/Default/24.200.001/Echo",
            "/entity/auth/log\u{131}n",
        ];
        for p in paths {
            let expected = (
                is_action(p, LOGIN),
                !is_action(p, LOGIN) && is_action(p, LOGOUT),
            );
            assert_eq!(actions.classify(p), expected, "{p}");
        }
        // The same path for both is the login.
        assert_eq!(Actions::new(LOGIN, LOGIN).classify(LOGIN), (true, false));
        // A configured path of a different depth.
        assert_eq!(
            Actions::new("/api/signin", "/SignOut/").classify("/signout"),
            (false, true)
        );
    }

    #[test]
    fn the_configured_path_is_read_the_same_way() {
        assert!(is_action("/api/SignIn", "/API/signin/"));
        assert!(!is_action("/api/signin", "/api/signout"));
    }

    proptest::proptest! {
        #[test]
        fn case_and_trailing_slashes_never_matter(upper in proptest::collection::vec(proptest::bool::ANY, 18), slashes in 0usize..3) {
            let spelled: String = LOGIN
                .chars()
                .zip(upper.iter().cycle())
                .map(|(c, up)| if *up { c.to_ascii_uppercase() } else { c })
                .collect();
            let p = format!("{spelled}{}", "/".repeat(slashes));
            proptest::prop_assert!(is_action(&p, LOGIN));
        }

        /// The one-pass cut gives the segments of the plain reading: split at `/`, cut at the
        /// first `;`, trailing dots and spaces trimmed, empty segments dropped.
        #[test]
        fn segments_are_the_plain_reading(p in "[/;. a-zA-Z\u{e9}\u{131}%]{0,24}") {
            let plain: Vec<&str> = p
                .split('/')
                .map(|seg| seg.split(';').next().unwrap_or(""))
                .map(|seg| seg.trim_end_matches(['.', ' ']))
                .filter(|seg| !seg.is_empty())
                .collect();
            proptest::prop_assert_eq!(segments(&p).collect::<Vec<_>>(), plain);
        }

        #[test]
        fn never_panics(p in "\\PC*") {
            let _ = is_action(&p, LOGIN);
        }

        #[test]
        fn classify_is_two_is_action_checks(
            parts in proptest::collection::vec((0usize..12, 0usize..3), 0..6),
            trailing in 0usize..3,
        ) {
            // Spellings near both paths, so that many of them are one or the other.
            const SEGMENTS: [&str; 12] = [
                "entity", "ENTITY", "auth", "Auth", "login", "logout", "LogOut", "log%6Fut",
                "login.", "logout;x=1", "x", "",
            ];
            const SEPARATORS: [&str; 3] = ["/", "//", "%2F"];
            let mut p: String = parts
                .iter()
                .map(|(seg, sep)| format!("{}{}", SEPARATORS[*sep], SEGMENTS[*seg]))
                .collect();
            p.push_str(&"/".repeat(trailing));
            let logout = "/entity/auth/logout";
            let expected = (
                is_action(&p, LOGIN),
                !is_action(&p, LOGIN) && is_action(&p, logout),
            );
            proptest::prop_assert_eq!(Actions::new(LOGIN, logout).classify(&p), expected);
        }
    }
}
