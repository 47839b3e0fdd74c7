//! The OTLP/HTTP span exporter, sending through tollgate's own pooled hyper client (rustls and
//! the system roots, as for the IdP): no second HTTP stack in the binary.
//!
//! The SDK's batch processor exports from its own thread and drives the export future with a
//! plain executor, where no Tokio reactor is current. The client therefore runs each exchange as
//! a task on the runtime it was built in and awaits the task's handle, which any executor can do.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use opentelemetry_http::{HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::{Protocol, SpanExporter, WithExportConfig as _, WithHttpConfig as _};

use super::Settings;

/// The HTTP client spans are exported with.
pub type Client = hyper_util::client::legacy::Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// The largest collector answer read (OTLP answers are a few bytes, or a short status).
const MAX_ANSWER_BYTES: usize = 64 * 1024;

pub(super) fn exporter(cfg: &Settings, client: Client) -> Result<SpanExporter, String> {
    let runtime = tokio::runtime::Handle::try_current()
        .map_err(|_| "the trace exporter needs the Tokio runtime".to_owned())?;
    let client = Collector {
        client,
        runtime,
        timeout: cfg.timeout,
    };
    SpanExporter::builder()
        .with_http()
        .with_http_client(client)
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(cfg.traces_url.as_str())
        .with_timeout(cfg.timeout)
        .build()
        .map_err(|e| format!("telemetry: the OTLP exporter: {e}"))
}

/// The collector's HTTP client.
struct Collector {
    client: Client,
    runtime: tokio::runtime::Handle,
    timeout: Duration,
}

impl fmt::Debug for Collector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Collector").finish_non_exhaustive()
    }
}

#[async_trait]
impl HttpClient for Collector {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let client = self.client.clone();
        let timeout = self.timeout;
        let (head, body) = request.into_parts();
        let request = Request::from_parts(head, Full::new(body));
        let exchange = async move {
            let resp = client.request(request).await?;
            let (head, body) = resp.into_parts();
            let body = Limited::new(body, MAX_ANSWER_BYTES)
                .collect()
                .await?
                .to_bytes();
            Ok::<_, HttpError>(Response::from_parts(head, body))
        };
        let task = self
            .runtime
            .spawn(async move { tokio::time::timeout(timeout, exchange).await });
        match task.await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => Err(format!("the collector did not answer within {timeout:?}").into()),
            Err(e) => Err(e.into()),
        }
    }
}
