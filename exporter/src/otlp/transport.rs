//! One attempt to deliver an encoded export request, over OTLP/gRPC or OTLP/HTTP (protobuf), and what came of it.
//!
//! Batches are queued as encoded requests (the on-disk queue stores exactly those bytes), so HTTP sends them as
//! they are and gRPC decodes them once more for the generated clients.

use std::fmt;
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use flate2::write::GzEncoder;
use opentelemetry_proto::tonic::collector::logs::v1::{
    logs_service_client::LogsServiceClient, ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    metrics_service_client::MetricsServiceClient, ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    trace_service_client::TraceServiceClient, ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prost::Message;
use tonic::codec::CompressionEncoding;
use tonic::metadata::{MetadataKey, MetadataMap, MetadataValue};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use super::retry::{classify_grpc, classify_http, RpcStatus, Verdict};
use super::signal::Signal;

const USER_AGENT: &str = concat!("memdrift/", env!("CARGO_PKG_VERSION"));

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Grpc,
    HttpProtobuf,
}

impl Protocol {
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Grpc => "grpc",
            Protocol::HttpProtobuf => "http/protobuf",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
}

/// Request headers (auth tokens, tenant ids). Debug output names them but hides their values, so a token never
/// reaches a log.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Headers(pub Vec<(String, String)>);

impl fmt::Debug for Headers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.0.iter().map(|(k, _)| (k, "<redacted>")))
            .finish()
    }
}

/// Where and how one signal goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub protocol: Protocol,
    /// gRPC: `http(s)://host:port`; HTTP: the full URL, e.g. `https://otlp.example.com/v1/logs`. The scheme
    /// decides TLS.
    pub url: String,
    pub headers: Headers,
    pub compression: Compression,
    /// Per attempt.
    pub timeout: Duration,
    /// A PEM file of extra trusted roots (a private CA); the system's roots are trusted too.
    pub ca_file: Option<PathBuf>,
}

/// What one attempt came to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Attempt {
    /// The backend took the request; `rejected` items were refused in a partial success.
    Accepted {
        rejected: u64,
        message: String,
    },
    Failed {
        verdict: Verdict,
        reason: String,
    },
}

fn failed(verdict: Verdict, reason: impl Into<String>) -> Attempt {
    Attempt::Failed {
        verdict,
        reason: reason.into(),
    }
}

fn partial(rejected: i64, message: String) -> Attempt {
    Attempt::Accepted {
        rejected: u64::try_from(rejected).unwrap_or(0),
        message,
    }
}

/// A client for one signal.
pub struct Client {
    signal: Signal,
    inner: Inner,
}

enum Inner {
    Http {
        client: reqwest::Client,
        url: String,
        gzip: bool,
    },
    Grpc {
        channel: Channel,
        metadata: MetadataMap,
        gzip: bool,
        timeout: Duration,
    },
}

fn read_ca(target: &Target) -> Result<Option<Vec<u8>>, String> {
    target
        .ca_file
        .as_ref()
        .map(|p| {
            std::fs::read(p).map_err(|e| format!("cannot read tls.ca_file {}: {e}", p.display()))
        })
        .transpose()
}

/// An error and its causes on one line: reqwest's and hyper's top-level messages alone ("error sending
/// request") do not say what went wrong.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        source = cause.source();
    }
    s
}

impl Client {
    /// Builds the client; a gRPC channel connects on first use. Must run inside a Tokio runtime.
    pub fn new(signal: Signal, target: &Target) -> Result<Client, String> {
        let ca = read_ca(target)?;
        let gzip = target.compression == Compression::Gzip;
        let inner = match target.protocol {
            Protocol::HttpProtobuf => {
                let mut headers = reqwest::header::HeaderMap::new();
                for (k, v) in &target.headers.0 {
                    let name = reqwest::header::HeaderName::from_bytes(k.as_bytes())
                        .map_err(|e| format!("header name {k:?}: {e}"))?;
                    let value = reqwest::header::HeaderValue::from_str(v)
                        .map_err(|e| format!("header {k:?}: {e}"))?;
                    headers.insert(name, value);
                }
                let mut builder = reqwest::Client::builder()
                    .user_agent(USER_AGENT)
                    .timeout(target.timeout)
                    .default_headers(headers);
                if let Some(pem) = ca {
                    let cert = reqwest::Certificate::from_pem(&pem)
                        .map_err(|e| format!("tls.ca_file is not a PEM certificate: {e}"))?;
                    builder = builder.add_root_certificate(cert);
                }
                Inner::Http {
                    client: builder.build().map_err(|e| chain(&e))?,
                    url: target.url.clone(),
                    gzip,
                }
            }
            Protocol::Grpc => {
                let mut endpoint = Endpoint::from_shared(target.url.clone())
                    .map_err(|e| format!("endpoint {:?}: {}", target.url, chain(&e)))?
                    .user_agent(USER_AGENT)
                    .map_err(|e| chain(&e))?
                    .timeout(target.timeout)
                    .connect_timeout(target.timeout);
                if target.url.starts_with("https://") {
                    let mut tls = ClientTlsConfig::new().with_native_roots();
                    if let Some(pem) = ca {
                        tls = tls.ca_certificate(Certificate::from_pem(pem));
                    }
                    endpoint = endpoint.tls_config(tls).map_err(|e| chain(&e))?;
                }
                let mut metadata = MetadataMap::new();
                for (k, v) in &target.headers.0 {
                    let key = MetadataKey::from_bytes(k.to_ascii_lowercase().as_bytes())
                        .map_err(|e| format!("header name {k:?}: {e}"))?;
                    let value = MetadataValue::try_from(v.as_str())
                        .map_err(|e| format!("header {k:?}: {e}"))?;
                    metadata.insert(key, value);
                }
                Inner::Grpc {
                    channel: endpoint.connect_lazy(),
                    metadata,
                    gzip,
                    timeout: target.timeout,
                }
            }
        };
        Ok(Client { signal, inner })
    }

    /// One attempt to deliver `body` (an encoded export request of this client's signal).
    pub async fn send(&self, body: Bytes) -> Attempt {
        match &self.inner {
            Inner::Http { client, url, gzip } => {
                send_http(self.signal, client, url, *gzip, body).await
            }
            Inner::Grpc {
                channel,
                metadata,
                gzip,
                timeout,
            } => {
                let call = GrpcCall {
                    channel: channel.clone(),
                    metadata: metadata.clone(),
                    gzip: *gzip,
                    timeout: *timeout,
                };
                match self.signal {
                    Signal::Logs => call.logs(body).await,
                    Signal::Traces => call.traces(body).await,
                    Signal::Metrics => call.metrics(body).await,
                }
            }
        }
    }
}

fn gzip(body: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut enc = GzEncoder::new(
        Vec::with_capacity(body.len() / 4),
        flate2::Compression::default(),
    );
    enc.write_all(body)?;
    enc.finish()
}

async fn send_http(
    signal: Signal,
    client: &reqwest::Client,
    url: &str,
    gz: bool,
    body: Bytes,
) -> Attempt {
    let mut request = client
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/x-protobuf");
    if gz {
        match gzip(&body) {
            Ok(b) => {
                request = request
                    .header(reqwest::header::CONTENT_ENCODING, "gzip")
                    .body(b);
            }
            Err(e) => return failed(Verdict::Permanent, format!("gzip failed: {e}")),
        }
    } else {
        request = request.body(body);
    }
    let response = match request.send().await {
        Ok(r) => r,
        Err(e) => return failed(Verdict::Retry { after: None }, chain(&e)),
    };
    let status = response.status();
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = response.bytes().await.unwrap_or_default();
    if status.is_success() {
        return http_partial_success(signal, &body);
    }
    let verdict = classify_http(status.as_u16(), retry_after.as_deref(), SystemTime::now());
    // The specification's error body is a google.rpc.Status; anything else is shown as text, shortened.
    let detail = RpcStatus::decode(body.as_ref())
        .ok()
        .filter(|s| !s.message.is_empty())
        .map(|s| s.message)
        .unwrap_or_else(|| String::from_utf8_lossy(&body).chars().take(200).collect());
    failed(verdict, format!("HTTP {status}: {detail}"))
}

/// A 2xx body is the signal's export response, possibly empty; one that does not decode counts as a full
/// success, since the backend did take the request.
fn http_partial_success(signal: Signal, body: &[u8]) -> Attempt {
    let none = || partial(0, String::new());
    match signal {
        Signal::Logs => ExportLogsServiceResponse::decode(body)
            .ok()
            .and_then(|r| r.partial_success)
            .map_or_else(none, |p| partial(p.rejected_log_records, p.error_message)),
        Signal::Traces => ExportTraceServiceResponse::decode(body)
            .ok()
            .and_then(|r| r.partial_success)
            .map_or_else(none, |p| partial(p.rejected_spans, p.error_message)),
        Signal::Metrics => ExportMetricsServiceResponse::decode(body)
            .ok()
            .and_then(|r| r.partial_success)
            .map_or_else(none, |p| partial(p.rejected_data_points, p.error_message)),
    }
}

struct GrpcCall {
    channel: Channel,
    metadata: MetadataMap,
    gzip: bool,
    timeout: Duration,
}

fn grpc_failure(status: &tonic::Status) -> Attempt {
    failed(
        classify_grpc(status.code(), status.details()),
        format!("gRPC {:?}: {}", status.code(), status.message()),
    )
}

/// The three signals differ only in their generated types.
macro_rules! grpc_export {
    ($name:ident, $client:ident, $request:ty, $rejected:ident) => {
        async fn $name(self, body: Bytes) -> Attempt {
            let message = match <$request>::decode(body) {
                Ok(m) => m,
                Err(e) => {
                    return failed(
                        Verdict::Permanent,
                        format!("queued batch does not decode: {e}"),
                    )
                }
            };
            let mut client = $client::new(self.channel);
            if self.gzip {
                client = client.send_compressed(CompressionEncoding::Gzip);
            }
            client = client.accept_compressed(CompressionEncoding::Gzip);
            let mut request = tonic::Request::new(message);
            *request.metadata_mut() = self.metadata;
            request.set_timeout(self.timeout);
            match client.export(request).await {
                Ok(response) => response.into_inner().partial_success.map_or_else(
                    || partial(0, String::new()),
                    |p| partial(p.$rejected, p.error_message),
                ),
                Err(status) => grpc_failure(&status),
            }
        }
    };
}

impl GrpcCall {
    grpc_export!(
        logs,
        LogsServiceClient,
        ExportLogsServiceRequest,
        rejected_log_records
    );
    grpc_export!(
        traces,
        TraceServiceClient,
        ExportTraceServiceRequest,
        rejected_spans
    );
    grpc_export!(
        metrics,
        MetricsServiceClient,
        ExportMetricsServiceRequest,
        rejected_data_points
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsPartialSuccess;

    #[test]
    fn headers_debug_hides_values() {
        let h = Headers(vec![("authorization".into(), "Bearer s3cret".into())]);
        let shown = format!("{h:?}");
        assert!(shown.contains("authorization"), "{shown}");
        assert!(!shown.contains("s3cret"), "{shown}");
    }

    #[test]
    fn http_success_bodies_report_partial_success() {
        let body = ExportLogsServiceResponse {
            partial_success: Some(ExportLogsPartialSuccess {
                rejected_log_records: 2,
                error_message: "too old".into(),
            }),
        }
        .encode_to_vec();
        assert_eq!(
            http_partial_success(Signal::Logs, &body),
            Attempt::Accepted {
                rejected: 2,
                message: "too old".into()
            }
        );
        for signal in [Signal::Logs, Signal::Traces, Signal::Metrics] {
            assert_eq!(
                http_partial_success(signal, b""),
                Attempt::Accepted {
                    rejected: 0,
                    message: String::new()
                }
            );
        }
    }
}
