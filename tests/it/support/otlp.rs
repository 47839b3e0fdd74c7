//! An OTLP/HTTP trace receiver: accepts `POST /v1/traces` with protobuf bodies, decodes them with
//! the OpenTelemetry protocol's own message types, and keeps every span (with its service name).

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::{BodyExt, Full};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use prost::Message as _;
use tokio::net::TcpListener;

use super::http::serve;

/// One received span, flattened.
#[derive(Debug, Clone)]
pub struct Span {
    pub service: String,
    pub name: String,
    /// 32 hex digits.
    pub trace_id: String,
    /// 16 hex digits.
    pub span_id: String,
    /// 16 hex digits, empty for a root span.
    pub parent_id: String,
    /// `SpanKind` as the protocol numbers it (1 internal, 2 server, 3 client).
    pub kind: i32,
    pub attributes: Vec<(String, String)>,
    /// The trace ids of the span's links.
    pub links: Vec<(String, String)>,
}

impl Span {
    pub fn attr(&self, key: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

pub struct Receiver {
    pub url: String,
    spans: Arc<Mutex<Vec<Span>>>,
    /// Content types of the export requests.
    pub content_types: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn text(v: Option<&opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    match v.and_then(|v| v.value.as_ref()) {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        _ => String::new(),
    }
}

impl Receiver {
    pub async fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let spans = Arc::new(Mutex::new(Vec::new()));
        let content_types = Arc::new(Mutex::new(Vec::new()));
        let (s, c) = (spans.clone(), content_types.clone());
        let task = serve(listener, move |req, _| {
            let (s, c) = (s.clone(), c.clone());
            async move {
                let ok = req.uri().path() == "/v1/traces" && req.method() == http::Method::POST;
                let ct = req
                    .headers()
                    .get(http::header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_owned();
                let body = req.into_body().collect().await.unwrap().to_bytes();
                let Ok(export) = ExportTraceServiceRequest::decode(body) else {
                    return Response::builder()
                        .status(StatusCode::BAD_REQUEST)
                        .body(Full::new(Bytes::new()))
                        .unwrap();
                };
                if !ok {
                    return Response::builder()
                        .status(StatusCode::NOT_FOUND)
                        .body(Full::new(Bytes::new()))
                        .unwrap();
                }
                c.lock().unwrap().push(ct);
                let mut out = s.lock().unwrap();
                for rs in export.resource_spans {
                    let service = rs
                        .resource
                        .as_ref()
                        .and_then(|r| r.attributes.iter().find(|a| a.key == "service.name"))
                        .map(|a| text(a.value.as_ref()))
                        .unwrap_or_default();
                    for ss in rs.scope_spans {
                        for sp in ss.spans {
                            out.push(Span {
                                service: service.clone(),
                                name: sp.name.clone(),
                                trace_id: hex(&sp.trace_id),
                                span_id: hex(&sp.span_id),
                                parent_id: hex(&sp.parent_span_id),
                                kind: sp.kind,
                                attributes: sp
                                    .attributes
                                    .iter()
                                    .map(|a| (a.key.clone(), text(a.value.as_ref())))
                                    .collect(),
                                links: sp
                                    .links
                                    .iter()
                                    .map(|l| (hex(&l.trace_id), hex(&l.span_id)))
                                    .collect(),
                            });
                        }
                    }
                }
                let answer = ExportTraceServiceResponse::default().encode_to_vec();
                Response::builder()
                    .header(http::header::CONTENT_TYPE, "application/x-protobuf")
                    .body(Full::new(Bytes::from(answer)))
                    .unwrap()
            }
        });
        Receiver {
            url,
            spans,
            content_types,
            task,
        }
    }

    pub fn spans(&self) -> Vec<Span> {
        self.spans.lock().unwrap().clone()
    }
}
