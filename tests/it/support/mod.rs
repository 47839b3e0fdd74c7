//! Test support: real sockets on 127.0.0.1 port 0, an in-process issuer and a recording
//! upstream, and the gateway started in-process on listeners the test bound itself.

/// `both_stores!(test_a, test_b)`: each `async fn test_a(store: Store)` of the calling module
/// becomes two tests, `memory::test_a` and `redis::test_a` (the module must import `Store`).
macro_rules! both_stores {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $( #[tokio::test] async fn $name() { super::$name(super::Store::Memory).await } )*
        }
        mod redis {
            $( #[tokio::test] async fn $name() { super::$name(super::Store::Redis).await } )*
        }
    };
}

pub mod certs;
pub mod gateway;
pub mod http;
pub mod idp;
pub mod introspect;
pub mod legacy;
pub mod metrics;
pub mod otlp;
pub mod process;
pub mod raw;
pub mod redis;
pub mod upstream;

pub use gateway::TestGateway;
pub use http::{get, request, send};
pub use idp::FakeIdp;
pub use upstream::RecordingUpstream;

use std::fmt::Debug;
use std::future::Future;
use std::time::Duration;

/// How often [`eventually`] looks again.
const POLL: Duration = Duration::from_millis(20);

/// Waits for something to have happened: runs `probe` every 20 ms until `done` holds for what
/// it returned, and returns that value. After `within`, panics naming `what` did not happen and
/// the last value seen. Tests wait this way, on a signal, never with a fixed sleep.
///
/// A synchronous probe is written `|| std::future::ready(fake.counters())`.
pub async fn eventually<T, F, Fut>(
    what: &str,
    within: Duration,
    mut probe: F,
    mut done: impl FnMut(&T) -> bool,
) -> T
where
    T: Debug,
    F: FnMut() -> Fut,
    Fut: Future<Output = T>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let value = probe().await;
        if done(&value) {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not so after {within:?}; last seen: {value:#?}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// Seconds since the Unix epoch.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// SHA-256 of `bytes`, hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The status of a GET to `url`, or `None` when it could not be sent (nothing listening).
pub async fn try_get(url: &str) -> Option<u16> {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    let resp = tokio::time::timeout(Duration::from_secs(5), client.get(url.parse().ok()?))
        .await
        .ok()?
        .ok()?;
    Some(resp.status().as_u16())
}

/// A GET with headers whose failure to get an answer (the server died) is `None`.
pub async fn try_request(url: &str, headers: &[(&str, &str)]) -> Option<http::Reply> {
    let mut b = ::http::Request::get(url);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    let resp = client
        .request(
            b.body(http_body_util::Full::new(bytes::Bytes::new()))
                .ok()?,
        )
        .await
        .ok()?;
    let (parts, body) = resp.into_parts();
    let body = http_body_util::BodyExt::collect(body)
        .await
        .ok()?
        .to_bytes();
    Some(http::Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    })
}
