//! OTLP/gRPC: the trace and metrics Export calls decoded straight into extraction's model, logs through the
//! generated service; gzip both ways.
//!
//! The trace and metrics services are written here rather than taken from opentelemetry-proto's generated
//! servers because those decode into the full generated types, which costs most of the intake budget (see
//! `extract::model`). Both use tonic's own `Grpc` machinery with a prost codec over the model, so framing,
//! compression and size limits behave exactly as in a generated server.

use std::convert::Infallible;
use std::future::{ready, Ready};
use std::marker::PhantomData;
use std::sync::Arc;
use std::task::{Context, Poll};

use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::{
    LogsService, LogsServiceServer,
};
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceResponse;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use tonic::body::Body;
use tonic::codec::{CompressionEncoding, EnabledCompressionEncodings};
use tonic::server::{Grpc, NamedService, UnaryService};
use tonic::{Request, Response, Status};

use super::{Busy, Ingest};
use crate::extract::model::{MetricsRequest, TraceRequest};

/// One OTLP Export call: its service name, the model it decodes into, and what to do with a request.
pub trait ExportCall: Send + Sync + 'static {
    const SERVICE: &'static str;
    const PATH: &'static str;
    type Request: prost::Message + Default + Send + 'static;
    type Response: prost::Message + Send + 'static;
    fn handle(ingest: &Ingest, request: Self::Request) -> Result<Self::Response, Busy>;
}

pub struct Traces;
pub struct Metrics;

impl ExportCall for Traces {
    const SERVICE: &'static str = "opentelemetry.proto.collector.trace.v1.TraceService";
    const PATH: &'static str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";
    type Request = TraceRequest;
    type Response = ExportTraceServiceResponse;
    fn handle(ingest: &Ingest, request: TraceRequest) -> Result<Self::Response, Busy> {
        ingest.traces(&request.resource_spans)
    }
}

impl ExportCall for Metrics {
    const SERVICE: &'static str = "opentelemetry.proto.collector.metrics.v1.MetricsService";
    const PATH: &'static str = "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export";
    type Request = MetricsRequest;
    type Response = ExportMetricsServiceResponse;
    fn handle(ingest: &Ingest, request: MetricsRequest) -> Result<Self::Response, Busy> {
        ingest.metrics(&request.resource_metrics)
    }
}

/// A gRPC service serving one Export call.
pub struct ExportServer<C> {
    ingest: Arc<Ingest>,
    max_request_bytes: usize,
    call: PhantomData<fn() -> C>,
}

impl<C> Clone for ExportServer<C> {
    fn clone(&self) -> Self {
        ExportServer {
            ingest: Arc::clone(&self.ingest),
            max_request_bytes: self.max_request_bytes,
            call: PhantomData,
        }
    }
}

impl<C: ExportCall> NamedService for ExportServer<C> {
    const NAME: &'static str = C::SERVICE;
}

struct Handler<C>(Arc<Ingest>, PhantomData<fn() -> C>);

impl<C: ExportCall> UnaryService<C::Request> for Handler<C> {
    type Response = C::Response;
    type Future = Ready<Result<Response<C::Response>, Status>>;
    fn call(&mut self, request: Request<C::Request>) -> Self::Future {
        ready(
            C::handle(&self.0, request.into_inner())
                .map(Response::new)
                .map_err(|Busy| {
                    self.0.failed("grpc", "busy");
                    Status::unavailable("memdrift's queue is full; retry with backoff")
                }),
        )
    }
}

impl<C: ExportCall> tower::Service<http::Request<Body>> for ExportServer<C> {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Infallible>> + Send>,
    >;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        if req.uri().path() != C::PATH {
            return Box::pin(async { Ok(Status::unimplemented("unknown method").into_http()) });
        }
        let mut gzip = EnabledCompressionEncodings::default();
        gzip.enable(CompressionEncoding::Gzip);
        let handler = Handler::<C>(Arc::clone(&self.ingest), PhantomData);
        let max = self.max_request_bytes;
        Box::pin(async move {
            let mut grpc = Grpc::new(tonic_prost::ProstCodec::<C::Response, C::Request>::default())
                .apply_compression_config(gzip, gzip)
                .apply_max_message_size_config(Some(max), None);
            Ok(grpc.unary(handler, req).await)
        })
    }
}

impl<C> ExportServer<C> {
    pub fn new(ingest: Arc<Ingest>, max_request_bytes: usize) -> Self {
        ExportServer {
            ingest,
            max_request_bytes,
            call: PhantomData,
        }
    }
}

/// Logs carry no memory samples; they are accepted (a Collector may send every signal) and counted.
struct Logs(Arc<Ingest>);

#[tonic::async_trait]
impl LogsService for Logs {
    async fn export(
        &self,
        request: Request<ExportLogsServiceRequest>,
    ) -> Result<Response<ExportLogsServiceResponse>, Status> {
        self.0.logs(&request.into_inner());
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
    let logs = LogsServiceServer::new(Logs(Arc::clone(&ingest)))
        .accept_compressed(CompressionEncoding::Gzip)
        .max_decoding_message_size(max_request_bytes);
    // Small exports must not wait for the peer's delayed ACK (about 40 ms a request with Nagle on).
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    tonic::transport::Server::builder()
        .layer(tower::util::MapResponseLayer::new(otlp_status_codes))
        .add_service(ExportServer::<Traces>::new(
            Arc::clone(&ingest),
            max_request_bytes,
        ))
        .add_service(ExportServer::<Metrics>::new(ingest, max_request_bytes))
        .add_service(logs)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
}
