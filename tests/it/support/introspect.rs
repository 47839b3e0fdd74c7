//! An in-process RFC 7662 introspection server: answers from a table of tokens, counts calls,
//! checks tollgate's client authentication on the wire (Basic header; form fields; the client
//! assertion's signature, iss, sub, aud, exp and jti), and can be switched to slow, an error
//! status, or malformed JSON. It also serves a discovery document naming its endpoint.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::{BodyExt, Full};
use jsonwebtoken::{DecodingKey, Validation};
use serde_json::{json, Value};
use tokio::net::TcpListener;

use super::http::{json as json_reply, serve};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Normal,
    /// Answer after this many milliseconds.
    Slow(u64),
    /// Answer with this status and a JSON error body.
    Status(u16),
    /// Answer 200 with a body that is not the RFC's JSON.
    Malformed,
}

#[derive(Debug, Clone)]
pub enum ExpectAuth {
    Basic { id: String, secret: String },
    Post { id: String, secret: String },
    Jwt { id: String, jwk: Value },
}

#[derive(Default)]
struct State {
    tokens: HashMap<String, Value>,
    jtis: HashSet<String>,
    /// Why the last authentication check failed, if it did.
    auth_errors: Vec<String>,
    /// The `traceparent` of each call.
    traceparents: Vec<Option<String>>,
}

pub struct FakeIntrospection {
    /// The issuer URL (also the base URL): discovery lives under it.
    pub issuer: String,
    pub endpoint: String,
    calls: Arc<AtomicUsize>,
    mode: Arc<Mutex<Mode>>,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeIntrospection {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeIntrospection {
    pub async fn start(expect: ExpectAuth) -> FakeIntrospection {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let issuer = format!("http://{}", listener.local_addr().unwrap());
        let endpoint = format!("{issuer}/introspect");
        let calls = Arc::new(AtomicUsize::new(0));
        let mode = Arc::new(Mutex::new(Mode::Normal));
        let state = Arc::new(Mutex::new(State::default()));
        let (c, m, st, iss, ep) = (
            calls.clone(),
            mode.clone(),
            state.clone(),
            issuer.clone(),
            endpoint.clone(),
        );
        let expect = Arc::new(expect);
        let task = serve(listener, move |req, _| {
            let (c, m, st, iss, ep, expect) = (
                c.clone(),
                m.clone(),
                st.clone(),
                iss.clone(),
                ep.clone(),
                expect.clone(),
            );
            async move {
                if req.uri().path() == "/.well-known/openid-configuration" {
                    return json_reply(
                        StatusCode::OK,
                        &json!({"issuer": iss, "introspection_endpoint": ep}),
                    );
                }
                if req.uri().path() != "/introspect" || req.method() != http::Method::POST {
                    return json_reply(StatusCode::NOT_FOUND, &json!({}));
                }
                c.fetch_add(1, Ordering::SeqCst);
                let headers = req.headers().clone();
                st.lock().unwrap().traceparents.push(
                    headers
                        .get("traceparent")
                        .map(|v| v.to_str().unwrap().to_owned()),
                );
                let body = req.into_body().collect().await.unwrap().to_bytes();
                let form: HashMap<String, String> =
                    url::form_urlencoded::parse(&body).into_owned().collect();
                let mode = *m.lock().unwrap();
                match mode {
                    Mode::Normal => {}
                    Mode::Slow(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
                    Mode::Status(code) => {
                        return json_reply(
                            StatusCode::from_u16(code).unwrap(),
                            &json!({"error": "server_error"}),
                        );
                    }
                    Mode::Malformed => {
                        return Response::builder()
                            .status(200)
                            .body(Full::new(Bytes::from_static(b"<html>oops</html>")))
                            .unwrap();
                    }
                }
                let content_type_ok = headers
                    .get("content-type")
                    .is_some_and(|v| v == "application/x-www-form-urlencoded");
                let accept_ok = headers
                    .get("accept")
                    .is_some_and(|v| v == "application/json");
                let hint_ok =
                    form.get("token_type_hint").map(String::as_str) == Some("access_token");
                let auth = check_auth(&expect, &headers, &form, &ep, &st);
                if !(content_type_ok && accept_ok && hint_ok) || auth.is_err() {
                    let why = auth
                        .err()
                        .unwrap_or_else(|| "content-type, accept or token_type_hint".to_owned());
                    st.lock().unwrap().auth_errors.push(why);
                    return json_reply(
                        StatusCode::UNAUTHORIZED,
                        &json!({"error": "invalid_client"}),
                    );
                }
                let token = form.get("token").cloned().unwrap_or_default();
                let answer = st
                    .lock()
                    .unwrap()
                    .tokens
                    .get(&token)
                    .cloned()
                    .unwrap_or_else(|| json!({"active": false}));
                json_reply(StatusCode::OK, &answer)
            }
        });
        FakeIntrospection {
            issuer,
            endpoint,
            calls,
            mode,
            state,
            task,
        }
    }

    /// Registers an opaque token with its RFC 7662 answer.
    pub fn register(&self, token: &str, answer: Value) {
        self.state
            .lock()
            .unwrap()
            .tokens
            .insert(token.to_owned(), answer);
    }

    /// Registers a fresh opaque token that is active with the given members (plus defaults:
    /// scope "api", sub "alice", client_id "app", iss, aud "api", exp in 5 minutes).
    pub fn active(&self, members: Value) -> String {
        let token = format!("opaque-{:032x}", rand::random::<u128>());
        let mut answer = json!({
            "active": true, "scope": "api", "sub": "alice", "client_id": "app",
            "iss": self.issuer, "aud": "api", "exp": super::now() + 300, "token_type": "Bearer",
        });
        for (k, v) in members.as_object().unwrap() {
            if v.is_null() {
                answer.as_object_mut().unwrap().remove(k);
            } else {
                answer[k] = v.clone();
            }
        }
        self.register(&token, answer);
        token
    }

    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    pub fn set_mode(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }

    /// The `traceparent` header of each call so far.
    pub fn traceparents(&self) -> Vec<Option<String>> {
        self.state.lock().unwrap().traceparents.clone()
    }

    pub fn auth_errors(&self) -> Vec<String> {
        self.state.lock().unwrap().auth_errors.clone()
    }

    pub fn jtis(&self) -> usize {
        self.state.lock().unwrap().jtis.len()
    }
}

fn check_auth(
    expect: &ExpectAuth,
    headers: &http::HeaderMap,
    form: &HashMap<String, String>,
    endpoint: &str,
    state: &Mutex<State>,
) -> Result<(), String> {
    match expect {
        ExpectAuth::Basic { id, secret } => {
            let h = headers
                .get("authorization")
                .ok_or("no Authorization")?
                .to_str()
                .map_err(|e| e.to_string())?;
            let b64 = h.strip_prefix("Basic ").ok_or("not Basic")?;
            let decoded = String::from_utf8(STANDARD.decode(b64).map_err(|e| e.to_string())?)
                .map_err(|e| e.to_string())?;
            let enc =
                |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
            if decoded != format!("{}:{}", enc(id), enc(secret)) {
                return Err(format!("wrong Basic credentials {decoded:?}"));
            }
            if form.contains_key("client_secret") {
                return Err("secret also in the form".to_owned());
            }
            Ok(())
        }
        ExpectAuth::Post { id, secret } => {
            if headers.contains_key("authorization") {
                return Err("unexpected Authorization header".to_owned());
            }
            if form.get("client_id") != Some(id) || form.get("client_secret") != Some(secret) {
                return Err("wrong client_id/client_secret form fields".to_owned());
            }
            Ok(())
        }
        ExpectAuth::Jwt { id, jwk } => {
            if form.get("client_assertion_type").map(String::as_str)
                != Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
            {
                return Err("wrong client_assertion_type".to_owned());
            }
            let assertion = form.get("client_assertion").ok_or("no client_assertion")?;
            let header = jsonwebtoken::decode_header(assertion).map_err(|e| e.to_string())?;
            let key = DecodingKey::from_jwk(&serde_json::from_value(jwk.clone()).unwrap())
                .map_err(|e| e.to_string())?;
            let mut v = Validation::new(header.alg);
            v.set_audience(&[endpoint]);
            v.set_issuer(&[id.as_str()]);
            v.sub = Some(id.clone());
            v.leeway = 0;
            v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
            let data = jsonwebtoken::decode::<Value>(assertion, &key, &v)
                .map_err(|e| format!("assertion: {e}"))?;
            let c = data.claims;
            let (exp, iat) = (
                c["exp"].as_u64().ok_or("no exp")?,
                c["iat"].as_u64().ok_or("no iat")?,
            );
            if exp > iat + 300 {
                return Err("assertion lives too long".to_owned());
            }
            let jti = c["jti"].as_str().ok_or("no jti")?.to_owned();
            if !state.lock().unwrap().jtis.insert(jti) {
                return Err("jti replayed".to_owned());
            }
            Ok(())
        }
    }
}
