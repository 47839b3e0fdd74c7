use super::*;
use http::Request;

fn cors(origins: Origins, credentials: bool) -> Arc<Cors> {
    Arc::new(Cors {
        origins,
        methods: Some(Box::new([Method::GET, Method::PUT])),
        allow_methods: Some(HeaderValue::from_static("GET, PUT")),
        headers: Box::new([header::CONTENT_TYPE, header::AUTHORIZATION]),
        allow_headers: Some(HeaderValue::from_static("Content-Type, Authorization")),
        expose_headers: HeaderValue::from_static("X-Request-Id, WWW-Authenticate, Retry-After"),
        max_age: Some(HeaderValue::from_static("600")),
        credentials,
    })
}

fn app() -> Origins {
    Origins::Listed(Box::new(["https://app.example.com".into()]))
}

fn head(method: Method, headers: &[(&str, &str)]) -> Parts {
    let mut b = Request::builder().method(method).uri("/entity/x");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(()).unwrap().into_parts().0
}

fn preflight_of(headers: &[(&str, &str)]) -> Parts {
    head(Method::OPTIONS, headers)
}

#[test]
fn a_preflight_is_options_with_origin_and_a_requested_method() {
    let full = preflight_of(&[
        ("origin", "https://app.example.com"),
        ("access-control-request-method", "PUT"),
    ]);
    assert_eq!(Preflight::of(&full).unwrap().method(), Method::PUT);
    for not in [
        preflight_of(&[("origin", "https://app.example.com")]),
        preflight_of(&[("access-control-request-method", "PUT")]),
        head(
            Method::GET,
            &[
                ("origin", "https://app.example.com"),
                ("access-control-request-method", "PUT"),
            ],
        ),
        preflight_of(&[
            ("origin", "https://app.example.com"),
            ("access-control-request-method", "P U T"),
        ]),
    ] {
        assert!(Preflight::of(&not).is_none(), "{not:?}");
    }
}

#[test]
fn an_allowed_preflight_gets_every_allow_header_and_vary() {
    let c = cors(app(), true);
    let h = preflight_of(&[
        ("origin", "https://app.example.com"),
        ("access-control-request-method", "PUT"),
        (
            "access-control-request-headers",
            "content-type,authorization",
        ),
    ]);
    let got = c.preflight(&Preflight::of(&h).unwrap()).unwrap();
    assert_eq!(
        got[header::ACCESS_CONTROL_ALLOW_ORIGIN],
        "https://app.example.com"
    );
    assert_eq!(got[header::ACCESS_CONTROL_ALLOW_METHODS], "GET, PUT");
    assert_eq!(
        got[header::ACCESS_CONTROL_ALLOW_HEADERS],
        "Content-Type, Authorization"
    );
    assert_eq!(got[header::ACCESS_CONTROL_MAX_AGE], "600");
    assert_eq!(got[header::ACCESS_CONTROL_ALLOW_CREDENTIALS], "true");
    assert_eq!(got[header::VARY], "Origin");
    assert!(!got.contains_key(header::ACCESS_CONTROL_EXPOSE_HEADERS));
}

#[test]
fn a_preflight_is_refused_for_another_origin_method_or_header() {
    let c = cors(app(), false);
    let ask = |origin: &str, method: &str, headers: &str| {
        let mut hs = vec![
            ("origin", origin),
            ("access-control-request-method", method),
        ];
        if !headers.is_empty() {
            hs.push(("access-control-request-headers", headers));
        }
        let h = preflight_of(&hs);
        c.preflight(&Preflight::of(&h).unwrap()).map(|_| ())
    };
    let app = "https://app.example.com";
    assert_eq!(ask(app, "GET", ""), Ok(()));
    assert_eq!(ask(app, "GET", "Authorization , CONTENT-TYPE"), Ok(()));
    assert_eq!(
        ask("https://evil.example.com", "GET", ""),
        Err(CorsRefused::Origin)
    );
    // Origins compare exactly, as browsers serialise them.
    for near in [
        "https://app.example.com:443",
        "http://app.example.com",
        "https://app.example.com.evil.net",
        "null",
    ] {
        assert_eq!(ask(near, "GET", ""), Err(CorsRefused::Origin), "{near}");
    }
    assert_eq!(ask(app, "DELETE", ""), Err(CorsRefused::Method));
    assert_eq!(ask(app, "get", ""), Err(CorsRefused::Method));
    assert_eq!(
        ask(app, "PUT", "authorization, x-debug"),
        Err(CorsRefused::Header)
    );
}

#[test]
fn any_origin_answers_star_and_a_route_of_any_method_echoes_the_method() {
    let mut c = (*cors(Origins::Any, false)).clone();
    c.methods = None;
    c.allow_methods = None;
    let h = preflight_of(&[
        ("origin", "https://anyone.example.org"),
        ("access-control-request-method", "PATCH"),
    ]);
    let got = c.preflight(&Preflight::of(&h).unwrap()).unwrap();
    assert_eq!(got[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*");
    assert_eq!(got[header::ACCESS_CONTROL_ALLOW_METHODS], "PATCH");
    assert!(!got.contains_key(header::ACCESS_CONTROL_ALLOW_CREDENTIALS));
}

#[test]
fn an_answer_to_an_allowed_origin_gets_its_headers_and_loses_the_upstreams() {
    let c = cors(app(), true);
    let req = head(Method::GET, &[("origin", "https://app.example.com")]);
    let mut h = HeaderMap::new();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("DELETE"),
    );
    h.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static("X-Secret"),
    );
    h.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    c.reply(&req.headers).finish(&mut h);
    assert_eq!(
        h[header::ACCESS_CONTROL_ALLOW_ORIGIN],
        "https://app.example.com"
    );
    assert_eq!(
        h[header::ACCESS_CONTROL_EXPOSE_HEADERS],
        "X-Request-Id, WWW-Authenticate, Retry-After"
    );
    assert_eq!(h[header::ACCESS_CONTROL_ALLOW_CREDENTIALS], "true");
    assert!(!h.contains_key(header::ACCESS_CONTROL_ALLOW_METHODS));
    let vary: Vec<_> = h.get_all(header::VARY).iter().collect();
    assert_eq!(vary, ["Accept-Encoding", "Origin"]);
}

#[test]
fn an_answer_to_another_origin_or_none_gets_no_allow_header() {
    let c = cors(app(), false);
    for req in [
        head(Method::GET, &[("origin", "https://evil.example.com")]),
        head(Method::GET, &[]),
    ] {
        let mut h = HeaderMap::new();
        h.insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            HeaderValue::from_static("*"),
        );
        h.insert(header::VARY, HeaderValue::from_static("origin, accept"));
        c.reply(&req.headers).finish(&mut h);
        assert!(
            !h.keys().any(|n| n.as_str().starts_with("access-control-")),
            "{h:?}"
        );
        assert_eq!(
            h.get_all(header::VARY).iter().count(),
            1,
            "Origin is listed once"
        );
    }
}
