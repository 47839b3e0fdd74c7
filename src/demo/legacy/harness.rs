//! The unit tests' harness: a fake served on a loopback port and a client that talks to it as
//! a gateway would, shared by the tests of every part of the fake.

use std::net::SocketAddr;

use bytes::Bytes;
use http::header::{self, HeaderMap};
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use super::{FakeLegacy, LegacyOptions};

pub(super) struct Reply {
    pub(super) status: u16,
    pub(super) headers: HeaderMap,
    pub(super) body: String,
}

impl Reply {
    pub(super) fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }

    pub(super) fn set_cookies(&self) -> Vec<String> {
        self.headers
            .get_all(header::SET_COOKIE)
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect()
    }

    /// A `Cookie` header built from the `Set-Cookie`s (name=value of each).
    pub(super) fn jar(&self) -> String {
        self.set_cookies()
            .iter()
            .map(|c| c.split(';').next().unwrap().to_owned())
            .collect::<Vec<_>>()
            .join("; ")
    }

    pub(super) fn exception(&self) -> String {
        self.json()["exceptionMessage"]
            .as_str()
            .unwrap_or("")
            .to_owned()
    }
}

pub(super) struct Running {
    pub(super) fake: FakeLegacy,
    addr: SocketAddr,
    base: String,
    client: Client<HttpConnector, Full<Bytes>>,
    task: JoinHandle<()>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub(super) async fn start(opts: LegacyOptions) -> Running {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let fake = FakeLegacy::new(opts);
    let task = fake.spawn(listener);
    Running {
        fake,
        addr,
        base: format!("http://{addr}"),
        client: Client::builder(TokioExecutor::new()).build_http(),
        task,
    }
}

pub(super) const ECHO: &str = "/entity/Default/24.200.001/Echo";

impl Running {
    pub(super) async fn call(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Reply {
        let mut b = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base));
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        // hyper's client sends no Content-Length for an empty body; IIS wants one on a POST.
        if method == "POST"
            && !headers
                .iter()
                .any(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        {
            b = b.header("content-length", body.len());
        }
        let resp = self
            .client
            .request(b.body(Full::new(Bytes::from(body.to_owned()))).unwrap())
            .await
            .unwrap();
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        Reply {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        }
    }

    pub(super) async fn login_as(&self, name: &str, password: &str, tenant: Option<&str>) -> Reply {
        let mut body = json!({"name": name, "password": password});
        if let Some(t) = tenant {
            body["tenant"] = json!(t);
        }
        self.call(
            "POST",
            "/entity/auth/login",
            &[("content-type", "application/json")],
            &body.to_string(),
        )
        .await
    }

    /// Logs in as admin; returns the jar as a `Cookie` header.
    pub(super) async fn login(&self) -> String {
        let r = self.login_as("admin", "123", Some("MyStore")).await;
        assert_eq!(r.status, 204, "{}", r.body);
        r.jar()
    }

    pub(super) async fn echo(&self, cookie: &str) -> Reply {
        self.call("GET", ECHO, &[("cookie", cookie)], "").await
    }

    pub(super) async fn logout(&self, cookie: &str) -> Reply {
        self.call(
            "POST",
            "/entity/auth/logout",
            &[("cookie", cookie), ("content-length", "0")],
            "",
        )
        .await
    }

    /// Sends `request` as written on a fresh connection; returns the raw answer.
    pub(super) async fn raw(&self, request: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(self.addr).await.unwrap();
        s.write_all(request.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.unwrap();
        String::from_utf8_lossy(&buf).into_owned()
    }
}

pub(super) fn cookie_value<'a>(jar: &'a str, name: &str) -> &'a str {
    jar.split("; ")
        .find_map(|c| c.strip_prefix(name).and_then(|r| r.strip_prefix('=')))
        .unwrap()
}
