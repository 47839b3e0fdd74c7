//! An in-process issuer: discovery and JWKS over real sockets, keys that rotate, fetch counters,
//! an outage switch, and token minting (including forged tokens).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use http::StatusCode;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tollgate::demo::keys::{self, SigningKey};

use super::http::{json as json_reply, serve};

pub struct FakeIdp {
    pub issuer: String,
    /// Keys published in the JWKS.
    published: Arc<Mutex<Vec<Arc<SigningKey>>>>,
    pub jwks_fetches: Arc<AtomicUsize>,
    pub discovery_fetches: Arc<AtomicUsize>,
    /// The `traceparent` of each key-set fetch (None: the fetch had none).
    pub jwks_traceparents: Arc<Mutex<Vec<Option<String>>>>,
    down: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeIdp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeIdp {
    /// Starts with one RS256 key, `k1`.
    pub async fn start() -> FakeIdp {
        Self::start_with(vec![
            SigningKey::rsa("k1", jsonwebtoken::Algorithm::RS256).unwrap()
        ])
        .await
    }

    pub async fn start_with(keys: Vec<SigningKey>) -> FakeIdp {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let issuer = format!("http://{}", listener.local_addr().unwrap());
        let published = Arc::new(Mutex::new(
            keys.into_iter().map(Arc::new).collect::<Vec<_>>(),
        ));
        let jwks_fetches = Arc::new(AtomicUsize::new(0));
        let discovery_fetches = Arc::new(AtomicUsize::new(0));
        let down = Arc::new(AtomicBool::new(false));
        let jwks_traceparents = Arc::new(Mutex::new(Vec::new()));
        let (p, j, d, dn, iss, tp) = (
            published.clone(),
            jwks_fetches.clone(),
            discovery_fetches.clone(),
            down.clone(),
            issuer.clone(),
            jwks_traceparents.clone(),
        );
        let task = serve(listener, move |req, _| {
            let (p, j, d, dn, iss) = (p.clone(), j.clone(), d.clone(), dn.clone(), iss.clone());
            let tp = tp.clone();
            async move {
                if dn.load(Ordering::SeqCst) {
                    return json_reply(StatusCode::SERVICE_UNAVAILABLE, &json!({"error": "down"}));
                }
                match req.uri().path() {
                    "/.well-known/openid-configuration" => {
                        d.fetch_add(1, Ordering::SeqCst);
                        json_reply(
                            StatusCode::OK,
                            &json!({"issuer": iss, "jwks_uri": format!("{iss}/jwks")}),
                        )
                    }
                    "/jwks" => {
                        j.fetch_add(1, Ordering::SeqCst);
                        tp.lock().unwrap().push(
                            req.headers()
                                .get("traceparent")
                                .map(|v| v.to_str().unwrap().to_owned()),
                        );
                        let keys = p.lock().unwrap().clone();
                        let refs: Vec<&SigningKey> = keys.iter().map(|k| &**k).collect();
                        json_reply(StatusCode::OK, &keys::jwks(&refs))
                    }
                    _ => json_reply(StatusCode::NOT_FOUND, &json!({})),
                }
            }
        });
        FakeIdp {
            issuer,
            published,
            jwks_fetches,
            discovery_fetches,
            jwks_traceparents,
            down,
            task,
        }
    }

    /// Default claims of a valid token for this issuer (aud "api", scope "api", 5 minutes).
    pub fn claims(&self) -> Value {
        let now = super::now();
        json!({
            "iss": self.issuer, "aud": "api", "sub": "alice", "client_id": "app",
            "scope": "api", "iat": now, "exp": now + 300, "jti": format!("{:x}", rand::random::<u64>()),
        })
    }

    /// Signs `claims` with the published key `kid`.
    pub fn sign(&self, kid: &str, claims: &Value) -> String {
        self.key(kid).sign(claims).unwrap()
    }

    /// A valid token with the first key and default claims changed by `patch`.
    pub fn token(&self, patch: Value) -> String {
        let mut c = self.claims();
        for (k, v) in patch.as_object().unwrap() {
            if v.is_null() {
                c.as_object_mut().unwrap().remove(k);
            } else {
                c[k] = v.clone();
            }
        }
        let kid = self.published.lock().unwrap()[0].kid.clone();
        self.sign(&kid, &c)
    }

    pub fn key(&self, kid: &str) -> Arc<SigningKey> {
        self.published
            .lock()
            .unwrap()
            .iter()
            .find(|k| k.kid == kid)
            .cloned()
            .expect("no such key")
    }

    /// Publishes `key` (first), optionally withdrawing every other key.
    pub fn rotate(&self, key: SigningKey, keep_old: bool) {
        let mut p = self.published.lock().unwrap();
        if !keep_old {
            p.clear();
        }
        p.insert(0, Arc::new(key));
    }

    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    pub fn jwks_fetches(&self) -> usize {
        self.jwks_fetches.load(Ordering::SeqCst)
    }
}
