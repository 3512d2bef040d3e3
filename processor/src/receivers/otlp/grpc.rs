//! OTLP/gRPC: the generated tonic services for traces, metrics and logs, with gzip both ways.

use std::net::SocketAddr;
use std::sync::Arc;

use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::{
    LogsService, LogsServiceServer,
};
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use tonic::codec::CompressionEncoding;
use tonic::{Request, Response, Status};

use super::{Busy, Ingest};

#[derive(Clone)]
pub struct OtlpGrpc {
    ingest: Arc<Ingest>,
}

fn busy(ingest: &Ingest, _: Busy) -> Status {
    ingest.failed("grpc", "busy");
    Status::unavailable("memdrift's queue is full; retry with backoff")
}

#[tonic::async_trait]
impl TraceService for OtlpGrpc {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let req = request.into_inner();
        self.ingest
            .traces(&req.resource_spans)
            .map(Response::new)
            .map_err(|b| busy(&self.ingest, b))
    }
}

#[tonic::async_trait]
impl MetricsService for OtlpGrpc {
    async fn export(
        &self,
        request: Request<ExportMetricsServiceRequest>,
    ) -> Result<Response<ExportMetricsServiceResponse>, Status> {
        let req = request.into_inner();
        self.ingest
            .metrics(&req.resource_metrics)
            .map(Response::new)
            .map_err(|b| busy(&self.ingest, b))
    }
}

/// Logs carry no memory samples; they are accepted (a Collector may send every signal) and counted.
#[tonic::async_trait]
impl LogsService for OtlpGrpc {
    async fn export(
        &self,
        request: Request<ExportLogsServiceRequest>,
    ) -> Result<Response<ExportLogsServiceResponse>, Status> {
        self.ingest.logs(&request.into_inner());
        Ok(Response::new(ExportLogsServiceResponse {
            partial_success: None,
        }))
    }
}

/// Rewrites two of tonic's request-decoding answers into the ones the OTLP specification means:
/// - an over-size message gets OUT_OF_RANGE from tonic, which OTLP makes *retryable*, so a client would resend
///   the same too-large batch forever; OTLP's answer is RESOURCE_EXHAUSTED without RetryInfo (not retried);
/// - a body that is not a valid message (bad protobuf, bad compression) gets INTERNAL from tonic; it is the
///   sender's fault, INVALID_ARGUMENT.
///
/// memdrift's handlers never return OUT_OF_RANGE or INTERNAL themselves, so only tonic's answers are touched.
fn otlp_status_codes<B>(mut resp: http::Response<B>) -> http::Response<B> {
    let rewrite = match resp.headers().get("grpc-status").map(|v| v.as_bytes()) {
        Some(b"11") => Some(http::HeaderValue::from_static("8")),
        Some(b"13") => Some(http::HeaderValue::from_static("3")),
        _ => None,
    };
    if let Some(code) = rewrite {
        resp.headers_mut().insert("grpc-status", code);
    }
    resp
}

/// Serves OTLP/gRPC on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    ingest: Arc<Ingest>,
    max_request_bytes: usize,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let svc = OtlpGrpc { ingest };
    let traces = TraceServiceServer::new(svc.clone())
        .accept_compressed(CompressionEncoding::Gzip)
        .send_compressed(CompressionEncoding::Gzip)
        .max_decoding_message_size(max_request_bytes);
    let metrics = MetricsServiceServer::new(svc.clone())
        .accept_compressed(CompressionEncoding::Gzip)
        .send_compressed(CompressionEncoding::Gzip)
        .max_decoding_message_size(max_request_bytes);
    let logs = LogsServiceServer::new(svc)
        .accept_compressed(CompressionEncoding::Gzip)
        .max_decoding_message_size(max_request_bytes);
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    tonic::transport::Server::builder()
        .layer(tower::util::MapResponseLayer::new(otlp_status_codes))
        .add_service(traces)
        .add_service(metrics)
        .add_service(logs)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
}

/// The address a listener is bound to, for logs.
pub fn local_addr(listener: &tokio::net::TcpListener) -> Option<SocketAddr> {
    listener.local_addr().ok()
}
