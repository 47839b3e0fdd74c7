//! Pure header edits for the forwarded request and the returned response. No I/O; every function
//! takes a `&mut HeaderMap` and is unit-tested on its own.

use std::net::IpAddr;

use crate::auth::Claims;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};

pub use crate::hop_by_hop::is_hop_by_hop;

/// `X-Request-Id`: kept when the client's is sane, generated otherwise, echoed on the response.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Removes the hop-by-hop headers and every header the `Connection` header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One pass over the message's few names notes which hop-by-hop headers it has (a bit
    // each), so only those are removed: a removal hashes its name, present or not. Most
    // messages have none, or only `Connection`.
    let mut present = 0u16;
    for name in headers.keys() {
        if let Some(i) = crate::hop_by_hop::index(name) {
            present |= 1 << i;
        }
    }
    if present == 0 {
        return;
    }
    // `Connection` is itself hop-by-hop, so a message that names other headers in it is
    // never skipped above. Its usual tokens (`keep-alive`, `close`) name nothing more to
    // remove, and then the list stays empty and unallocated.
    let mut named: Vec<HeaderName> = Vec::new();
    for token in headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
    {
        if !crate::hop_by_hop::is_connection_option(token) {
            if let Ok(name) = HeaderName::from_bytes(token.as_bytes()) {
                named.push(name);
            }
        }
    }
    for name in &named {
        headers.remove(name);
    }
    for (i, name) in crate::hop_by_hop::HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(name);
        }
    }
}

/// A client request id is kept if it is 1–128 characters of `[A-Za-z0-9._:-]`; anything else
/// (including none) gets a fresh random id, so a client cannot inject text into the logs.
pub fn request_id(headers: &HeaderMap) -> HeaderValue {
    if let Some(v) = headers.get(&X_REQUEST_ID) {
        let b = v.as_bytes();
        if !b.is_empty()
            && b.len() <= 128
            && b.iter()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b':' | b'-'))
        {
            return v.clone();
        }
    }
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let n = rand::random::<u128>();
    let mut id = [0u8; 32];
    for (i, digit) in id.iter_mut().enumerate() {
        *digit = HEX[((n >> (124 - 4 * i)) & 0xf) as usize];
    }
    // 32 hex digits are always a valid header value. Owned by a shared count from the start:
    // the id goes upstream and back to the client, and the copy of a value made from a plain
    // buffer would allocate its count then.
    HeaderValue::from_maybe_shared(Bytes::from_owner(id))
        .unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

/// What the gateway tells the upstream about the original request.
#[derive(Debug, Clone)]
pub struct Forwarded<'a> {
    pub client_ip: IpAddr,
    /// `http` or `https`.
    pub proto: &'static str,
    /// The host the client asked for (Host header or the URI authority), if any.
    pub host: Option<&'a HeaderValue>,
    /// Keep and append to the client's `X-Forwarded-*` (behind a trusted proxy only).
    pub trust_client: bool,
}

/// `Forwarded` (RFC 7239): replaced (untrusted) or appended to (trusted), like `X-Forwarded-For`.
pub static FORWARDED: HeaderName = HeaderName::from_static("forwarded");

/// Client-sent headers through which an upstream learns "facts" about the original request that
/// the gateway does not vouch for: the client's address (`X-Real-IP` and kin, read by nginx
/// modules and ASP.NET's forwarded-headers middleware), the port or path prefix it was reached
/// on, or the URL it was asked for (`X-Original-URL` and `X-Rewrite-URL`, which IIS and ASP.NET
/// honour as the request's URL, around any route check made here). Untrusted, they are removed;
/// the `X-Forwarded-For`/`-Proto`/`-Host` and `Forwarded` the gateway sets replace them.
fn is_unvouched_forwarding(name: &HeaderName) -> bool {
    let n = name.as_str();
    match n {
        "forwarded"
        | "x-real-ip"
        | "x-client-ip"
        | "true-client-ip"
        | "x-cluster-client-ip"
        | "x-rewrite-url"
        | "front-end-https" => true,
        _ => {
            n.starts_with("x-original-")
                || (n.starts_with("x-forwarded-")
                    && !matches!(
                        n,
                        "x-forwarded-for" | "x-forwarded-proto" | "x-forwarded-host"
                    ))
        }
    }
}

/// Sets `X-Forwarded-For`, `-Proto`, `-Host` and `Forwarded`. Untrusted client values are
/// replaced, not appended to, so a client cannot forge its address, and the other forwarding
/// headers it sent are removed (the private `is_unvouched_forwarding` lists them).
pub fn set_forwarded(headers: &mut HeaderMap, fwd: &Forwarded<'_>) {
    if !fwd.trust_client && headers.keys().any(is_unvouched_forwarding) {
        let present: Vec<HeaderName> = headers
            .keys()
            .filter(|n| is_unvouched_forwarding(n))
            .cloned()
            .collect();
        for name in &present {
            headers.remove(name);
        }
    }
    let mut xff = Scratch::new();
    // An untrusted client's values are replaced whole, so they are not even looked up (a
    // lookup hashes the name, and most gateways trust no client).
    if let Some(prev) = fwd
        .trust_client
        .then(|| headers.get(&X_FORWARDED_FOR))
        .flatten()
        .and_then(|v| v.to_str().ok())
    {
        if !prev.trim().is_empty() {
            xff.push(prev);
            xff.push(", ");
        }
    }
    push_ip(&mut xff, fwd.client_ip);
    if let Some(v) = xff.value() {
        headers.insert(X_FORWARDED_FOR.clone(), v);
    }
    if !(fwd.trust_client && headers.contains_key(&X_FORWARDED_PROTO)) {
        headers.insert(
            X_FORWARDED_PROTO.clone(),
            HeaderValue::from_static(fwd.proto),
        );
    }
    if !(fwd.trust_client && headers.contains_key(&X_FORWARDED_HOST)) {
        match fwd.host {
            Some(h) => {
                headers.insert(X_FORWARDED_HOST.clone(), h.clone());
            }
            None => {
                headers.remove(&X_FORWARDED_HOST);
            }
        }
    }
    set_forwarded_element(headers, fwd);
}

/// Appends this hop's element (`for=…;proto=…;host=…`) to `Forwarded`. Several client
/// `Forwarded` lines (trusted) are joined first, so the upstream sees one list in order.
fn set_forwarded_element(headers: &mut HeaderMap, fwd: &Forwarded<'_>) {
    let mut out = Scratch::new();
    // Untrusted, the client's `Forwarded` was removed with the other unvouched headers.
    let kept = fwd.trust_client.then(|| headers.get_all(&FORWARDED));
    for prev in kept.into_iter().flatten() {
        if let Ok(prev) = prev.to_str() {
            let prev = prev.trim();
            if !prev.is_empty() {
                out.push(prev);
                out.push(", ");
            }
        }
    }
    // RFC 7239 §6: an IPv6 address is quoted and bracketed; IPv4 is a plain token.
    out.push("for=");
    match fwd.client_ip {
        IpAddr::V4(_) => push_ip(&mut out, fwd.client_ip),
        IpAddr::V6(_) => {
            out.push("\"[");
            push_ip(&mut out, fwd.client_ip);
            out.push("]\"");
        }
    }
    out.push(";proto=");
    out.push(fwd.proto);
    // A host is quoted (a port's `:` is not a token character); one with characters a host
    // cannot hold is left out rather than escaped.
    if let Some(host) = fwd.host {
        let b = host.as_bytes();
        if !b.is_empty()
            && b.iter().all(|c| {
                c.is_ascii_alphanumeric() || matches!(c, b'.' | b'-' | b'_' | b':' | b'[' | b']')
            })
        {
            out.push(";host=\"");
            out.push(host.to_str().unwrap_or_default());
            out.push("\"");
        }
    }
    if let Some(v) = out.value() {
        headers.insert(FORWARDED.clone(), v);
    }
}

/// A header value put together on the stack, then moved into its `HeaderValue`: one
/// allocation, the value's own. A `String` turned into a value costs two (its own, and the
/// bytes' shared header when its capacity is not its length). A value longer than the room
/// here (a trusted chain of proxies) goes on to the heap.
struct Scratch {
    stack: [u8; 128],
    len: usize,
    /// The whole value once it outgrew `stack`; empty (and unallocated) until then.
    heap: Vec<u8>,
}

impl Scratch {
    fn new() -> Scratch {
        Scratch {
            stack: [0; 128],
            len: 0,
            heap: Vec::new(),
        }
    }

    fn push(&mut self, s: &str) {
        if self.heap.is_empty() {
            let end = self.len + s.len();
            if let Some(room) = self.stack.get_mut(self.len..end) {
                room.copy_from_slice(s.as_bytes());
                self.len = end;
                return;
            }
            // Not empty from here on: what was on the stack and `s` overflowed it.
            self.heap.reserve(end * 2);
            self.heap.extend_from_slice(&self.stack[..self.len]);
        }
        self.heap.extend_from_slice(s.as_bytes());
    }

    fn as_bytes(&self) -> &[u8] {
        if self.heap.is_empty() {
            &self.stack[..self.len]
        } else {
            &self.heap
        }
    }

    /// The value; none if a client's earlier value held bytes a header cannot. The value
    /// owns this scratch, behind a shared count from the start: a session request's head is
    /// copied for a replay, and the copy of a value made from a plain buffer would allocate
    /// its count then.
    fn value(self) -> Option<HeaderValue> {
        HeaderValue::from_maybe_shared(Bytes::from_owner(self)).ok()
    }
}

impl AsRef<[u8]> for Scratch {
    fn as_ref(&self) -> &[u8] {
        self.as_bytes()
    }
}

/// Appends `ip` as text; IPv4 by hand, since the formatting machinery costs more than the
/// rest of the header edits of a request.
fn push_ip(out: &mut Scratch, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            let mut text = [0u8; 15];
            let mut n = 0;
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    text[n] = b'.';
                    n += 1;
                }
                if octet >= 100 {
                    text[n] = b'0' + octet / 100;
                    n += 1;
                }
                if octet >= 10 {
                    text[n] = b'0' + octet / 10 % 10;
                    n += 1;
                }
                text[n] = b'0' + octet % 10;
                n += 1;
            }
            // Digits and dots only.
            out.push(std::str::from_utf8(&text[..n]).unwrap_or_default());
        }
        IpAddr::V6(v6) => out.push(&v6.to_string()),
    }
}

/// Removes every client-sent header that the route sets from claims, then sets those whose claim
/// the token has. Removal comes first and is unconditional, so nobody can spoof an identity
/// header, even when the token lacks the claim.
pub fn set_identity(
    headers: &mut HeaderMap,
    identity: &[(HeaderName, Box<str>)],
    claims: Option<&Claims>,
) {
    for (name, _) in identity {
        headers.remove(name);
    }
    let Some(claims) = claims else { return };
    for (name, claim) in identity {
        if let Some(value) = claims
            .get(claim)
            .and_then(crate::policy::claim_header_value)
        {
            headers.insert(name.clone(), value);
        }
    }
}

// === session edits: the upstream session's cookies never cross the gateway ===

/// `Tollgate-Session: new` on an answer served by a session logged in during the request.
pub static TOLLGATE_SESSION: HeaderName = HeaderName::from_static("tollgate-session");
/// `Tollgate-Login: managed` on an intercepted login call.
pub static TOLLGATE_LOGIN: HeaderName = HeaderName::from_static("tollgate-login");
static SET_COOKIE2: HeaderName = HeaderName::from_static("set-cookie2");

/// Replaces the client's `Cookie` header with exactly `jar` (none: no `Cookie` at all), so the
/// upstream sees only the session's cookies, never the client's.
pub fn replace_cookie(headers: &mut HeaderMap, jar: Option<HeaderValue>) {
    headers.remove(header::COOKIE);
    if let Some(mut v) = jar {
        v.set_sensitive(true);
        headers.insert(header::COOKIE, v);
    }
}

/// Removes the upstream's `Set-Cookie` (and the obsolete `Set-Cookie2`).
pub fn strip_set_cookies(headers: &mut HeaderMap) {
    headers.remove(header::SET_COOKIE);
    headers.remove(&SET_COOKIE2);
}

/// Appends one `Set-Cookie` line of the gateway's own (a session handle).
pub fn append_set_cookie(headers: &mut HeaderMap, line: &str) {
    if let Ok(v) = HeaderValue::from_str(line) {
        headers.append(header::SET_COOKIE, v);
    }
}

/// An absolute `Location` on the upstream's origin points at the gateway's external origin
/// (`scheme://host`) instead, so that a redirect never sends the client around the gateway.
pub fn rewrite_location(
    headers: &mut HeaderMap,
    upstream: (&http::uri::Scheme, &http::uri::Authority),
    external: &str,
) {
    let Some(loc) = headers.get(header::LOCATION).and_then(|v| v.to_str().ok()) else {
        return;
    };
    let Ok(uri) = loc.parse::<http::Uri>() else {
        return;
    };
    if uri.scheme() == Some(upstream.0) && uri.authority() == Some(upstream.1) {
        let rest = uri.path_and_query().map_or("/", |p| p.as_str());
        if let Ok(v) = HeaderValue::from_str(&format!("{external}{rest}")) {
            headers.insert(header::LOCATION, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_are_removed() {
        let mut h = map(&[
            ("connection", "keep-alive, X-Secret-Hop"),
            ("keep-alive", "timeout=5"),
            ("x-secret-hop", "1"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("proxy-authorization", "Basic x"),
            ("proxy-connection", "keep-alive"),
            ("accept", "application/json"),
        ]);
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("accept"));
        // `Connection` alone still takes the headers it names.
        let mut h = map(&[
            ("connection", "x-named"),
            ("x-named", "1"),
            ("accept", "*/*"),
        ]);
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
    }

    #[test]
    fn sane_request_ids_are_kept_others_replaced() {
        let kept = request_id(&map(&[("x-request-id", "abc-123_x.y:z")]));
        assert_eq!(kept, "abc-123_x.y:z");
        let replaced = request_id(&map(&[("x-request-id", "bad id with spaces")]));
        assert_ne!(replaced, "bad id with spaces");
        assert_eq!(replaced.len(), 32);
        let long = "a".repeat(129);
        assert_ne!(request_id(&map(&[("x-request-id", &long)])), long.as_str());
        let fresh = request_id(&HeaderMap::new());
        assert_eq!(fresh.len(), 32);
        assert!(fresh
            .as_bytes()
            .iter()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c)));
        assert_ne!(fresh, request_id(&HeaderMap::new()));
    }

    #[test]
    fn forwarded_headers_replace_untrusted_values() {
        let mut h = map(&[
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "evil"),
        ]);
        let host = HeaderValue::from_static("api.example.com");
        set_forwarded(
            &mut h,
            &Forwarded {
                client_ip: "10.0.0.1".parse().unwrap(),
                proto: "http",
                host: Some(&host),
                trust_client: false,
            },
        );
        assert_eq!(h["x-forwarded-for"], "10.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "api.example.com");
    }

    #[test]
    fn untrusted_forwarding_headers_are_removed_and_forwarded_replaced() {
        let mut h = map(&[
            ("forwarded", "for=6.6.6.6;host=evil"),
            ("x-real-ip", "6.6.6.6"),
            ("x-client-ip", "6.6.6.6"),
            ("true-client-ip", "6.6.6.6"),
            ("x-forwarded-port", "443"),
            ("x-forwarded-prefix", "/admin"),
            ("x-forwarded-server", "evil"),
            ("x-original-url", "/admin/delete"),
            ("x-original-host", "evil"),
            ("x-rewrite-url", "/admin/delete"),
            ("accept", "*/*"),
        ]);
        let host = HeaderValue::from_static("api.example.com:8443");
        set_forwarded(
            &mut h,
            &Forwarded {
                client_ip: "10.0.0.1".parse().unwrap(),
                proto: "https",
                host: Some(&host),
                trust_client: false,
            },
        );
        let mut names: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        names.sort_unstable();
        assert_eq!(
            names,
            [
                "accept",
                "forwarded",
                "x-forwarded-for",
                "x-forwarded-host",
                "x-forwarded-proto"
            ]
        );
        assert_eq!(
            h["forwarded"],
            "for=10.0.0.1;proto=https;host=\"api.example.com:8443\""
        );
    }

    #[test]
    fn trusted_forwarding_headers_are_kept_and_forwarded_appended() {
        let mut h = map(&[
            ("forwarded", "for=192.0.2.1;proto=https"),
            ("forwarded", "for=192.0.2.2"),
            ("x-real-ip", "192.0.2.1"),
            ("x-forwarded-prefix", "/api"),
            ("x-original-url", "/x"),
        ]);
        set_forwarded(
            &mut h,
            &Forwarded {
                client_ip: "::1".parse().unwrap(),
                proto: "http",
                host: Some(&HeaderValue::from_static("bad\"host")),
                trust_client: true,
            },
        );
        assert_eq!(h.get_all("forwarded").iter().count(), 1);
        assert_eq!(
            h["forwarded"],
            "for=192.0.2.1;proto=https, for=192.0.2.2, for=\"[::1]\";proto=http"
        );
        assert_eq!(h["x-real-ip"], "192.0.2.1");
        assert_eq!(h["x-forwarded-prefix"], "/api");
        assert_eq!(h["x-original-url"], "/x");
    }

    #[test]
    fn addresses_are_written_as_std_writes_them() {
        for ip in [
            "0.0.0.0",
            "10.0.0.1",
            "127.0.0.1",
            "192.168.100.255",
            "8.8.8.8",
            "::1",
            "fe80::1:2",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            let mut s = Scratch::new();
            push_ip(&mut s, ip);
            assert_eq!(s.as_bytes(), ip.to_string().as_bytes());
        }
    }

    #[test]
    fn forwarded_headers_append_when_trusted() {
        let mut h = map(&[
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-proto", "https"),
        ]);
        set_forwarded(
            &mut h,
            &Forwarded {
                client_ip: "10.0.0.1".parse().unwrap(),
                proto: "http",
                host: None,
                trust_client: true,
            },
        );
        assert_eq!(h["x-forwarded-for"], "1.2.3.4, 10.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "https");
    }

    #[test]
    fn a_trusted_chain_longer_than_the_stack_room_is_kept_whole() {
        // Values of 40 addresses: past the 128 bytes a value is put together in on the stack.
        let chain: Vec<String> = (1..=40).map(|i| format!("192.0.2.{i}")).collect();
        let xff = chain.join(", ");
        let fwd: Vec<String> = chain.iter().map(|ip| format!("for={ip}")).collect();
        let fwd = fwd.join(", ");
        let mut h = map(&[("x-forwarded-for", &xff), ("forwarded", &fwd)]);
        set_forwarded(
            &mut h,
            &Forwarded {
                client_ip: "10.0.0.1".parse().unwrap(),
                proto: "https",
                host: Some(&HeaderValue::from_static("api.example")),
                trust_client: true,
            },
        );
        assert_eq!(h["x-forwarded-for"], format!("{xff}, 10.0.0.1").as_str());
        assert_eq!(
            h["forwarded"],
            format!("{fwd}, for=10.0.0.1;proto=https;host=\"api.example\"").as_str()
        );
        // Each piece around the edge of the room: every length from 120 to 140 bytes.
        for pad in 100..=125 {
            let prev = format!("{}.1", "9".repeat(pad - 2));
            let mut s = Scratch::new();
            s.push(&prev);
            s.push(", ");
            push_ip(&mut s, "10.0.0.1".parse().unwrap());
            assert_eq!(s.as_bytes(), format!("{prev}, 10.0.0.1").as_bytes());
        }
    }

    #[test]
    fn identity_headers_are_stripped_then_set() {
        let identity: Vec<(HeaderName, Box<str>)> = vec![
            (HeaderName::from_static("x-auth-subject"), "sub".into()),
            (HeaderName::from_static("x-auth-client"), "client_id".into()),
            (HeaderName::from_static("x-auth-groups"), "groups".into()),
        ];
        let mut h = map(&[
            ("x-auth-subject", "admin"),
            ("x-auth-client", "spoof"),
            ("x-auth-client", "spoof2"),
        ]);
        let claims = json!({"sub": "alice", "groups": ["a", "b"]});
        let claims = claims.as_object().cloned().map(Claims::from);
        set_identity(&mut h, &identity, claims.as_ref());
        assert_eq!(h["x-auth-subject"], "alice");
        assert!(
            !h.contains_key("x-auth-client"),
            "claim absent: the spoofed header must be gone"
        );
        assert_eq!(h["x-auth-groups"], "a,b");
    }

    #[test]
    fn identity_headers_are_stripped_on_public_routes() {
        let identity: Vec<(HeaderName, Box<str>)> =
            vec![(HeaderName::from_static("x-auth-subject"), "sub".into())];
        let mut h = map(&[("x-auth-subject", "admin")]);
        set_identity(&mut h, &identity, None);
        assert!(h.is_empty());
    }

    #[test]
    fn claim_values_with_control_characters_are_not_set() {
        let identity: Vec<(HeaderName, Box<str>)> =
            vec![(HeaderName::from_static("x-auth-subject"), "sub".into())];
        let mut h = HeaderMap::new();
        let claims = json!({"sub": "alice\r\nX-Injected: 1"});
        let claims = claims.as_object().cloned().map(Claims::from);
        set_identity(&mut h, &identity, claims.as_ref());
        assert!(h.is_empty());
    }

    #[test]
    fn the_upstream_sees_only_the_sessions_cookie() {
        let mut h = map(&[("cookie", "mine=1"), ("cookie", "other=2")]);
        replace_cookie(
            &mut h,
            Some(HeaderValue::from_static("ASP.NET_SessionId=s")),
        );
        assert_eq!(h.get_all(header::COOKIE).iter().count(), 1);
        assert_eq!(h[header::COOKIE], "ASP.NET_SessionId=s");
        assert!(h[header::COOKIE].is_sensitive(), "never printed by Debug");
        replace_cookie(&mut h, None);
        assert!(!h.contains_key(header::COOKIE));
    }

    #[test]
    fn set_cookies_are_stripped_and_the_gateways_own_appended() {
        let mut h = map(&[("set-cookie", "a=1"), ("set-cookie2", "b=2"), ("x", "y")]);
        strip_set_cookies(&mut h);
        assert!(!h.contains_key(header::SET_COOKIE) && !h.contains_key("set-cookie2"));
        append_set_cookie(&mut h, "h=1; Path=/");
        append_set_cookie(&mut h, "bad\nline");
        assert_eq!(h.get_all(header::SET_COOKIE).iter().count(), 1);
        assert_eq!(h["x"], "y");
    }

    #[test]
    fn locations_on_the_upstream_point_at_the_gateway() {
        let scheme = http::uri::Scheme::HTTP;
        let authority: http::uri::Authority = "erp.internal:8080".parse().unwrap();
        let rewrite = |loc: &str| {
            let mut h = map(&[("location", loc)]);
            rewrite_location(&mut h, (&scheme, &authority), "https://gw.example");
            h[header::LOCATION].to_str().unwrap().to_owned()
        };
        assert_eq!(
            rewrite("http://erp.internal:8080/entity/x?a=1"),
            "https://gw.example/entity/x?a=1"
        );
        assert_eq!(rewrite("http://erp.internal:8080"), "https://gw.example/");
        assert_eq!(
            rewrite("https://erp.internal:8080/x"),
            "https://erp.internal:8080/x"
        );
        assert_eq!(rewrite("http://elsewhere/x"), "http://elsewhere/x");
        assert_eq!(rewrite("/relative"), "/relative");
    }
}
