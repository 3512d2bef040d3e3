//! OTLP/gRPC: the Export calls of traces, metrics and logs, each weighed against the decode budget before it
//! is decoded ([`super::budget`]); traces and metrics decoded straight into extraction's model, logs only
//! counted; gzip both ways.
//!
//! The services are written here rather than taken from opentelemetry-proto's generated servers because those
//! decode into the full generated types, which costs most of the intake budget (see `extract::model`) and lets
//! a small body of empty messages take hundreds of MB. They use tonic's own `Grpc` machinery with a codec of
//! their own, so framing, compression and size limits behave exactly as in a generated server.

use std::convert::Infallible;
use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use futures_util::future::BoxFuture;
use http_body_util::BodyExt;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceResponse;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceResponse;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use tonic::body::Body;
use tonic::codec::{Codec, CompressionEncoding, DecodeBuf, Decoder, EnabledCompressionEncodings};
use tonic::server::{Grpc, NamedService, UnaryService};
use tonic::{Request, Response, Status};
use tonic_prost::ProstEncoder;

use super::budget::{self, BodyError, BudgetedBody, Refusal, Reservation, Undecoded};
use super::{Busy, Ingest, Pending};
use crate::extract::model::{MetricsRequest, TraceRequest};
use crate::receivers::listener::{GuardedListener, HTTP2_WINDOW};
use crate::receivers::security::{require_grpc, Security};
use crate::telemetry::Telemetry;

/// One OTLP Export call: its service name, how a request is decoded, and what to do with it.
pub trait ExportCall: Send + Sync + 'static {
    const SERVICE: &'static str;
    const PATH: &'static str;
    type Request: Send + 'static;
    type Response: prost::Message + Send + 'static;
    /// What the handler gets of the body (which holds its bytes from the decode budget).
    fn decode(body: Bytes) -> Result<Self::Request, String>;
    /// Decodes, extracts and queues the request's samples (synchronously, so the body can be dropped at once),
    /// charging what decoding builds to `held`.
    fn handle(
        ingest: &Ingest,
        request: Self::Request,
        held: &mut Reservation,
    ) -> Result<Option<Pending>, Unhandled>;
    /// The answer, once the engine has said what it kept.
    fn answer(pending: Option<Pending>) -> impl Future<Output = Self::Response> + Send;
}

pub struct Traces;
pub struct Metrics;
pub struct Logs;

/// Why a request's samples were not queued.
pub enum Unhandled {
    Busy,
    /// Not a valid OTLP request: what is wrong with it.
    Malformed(String),
    /// Decoding it needed more of the decode budget than it could have.
    Refused(Refusal),
}

impl From<Undecoded> for Unhandled {
    fn from(u: Undecoded) -> Unhandled {
        match u {
            Undecoded::Malformed(e) => Unhandled::Malformed(e.to_string()),
            Undecoded::Refused(r) => Unhandled::Refused(r),
            Undecoded::Busy => Unhandled::Busy,
        }
    }
}

impl From<Busy> for Unhandled {
    fn from(_: Busy) -> Unhandled {
        Unhandled::Busy
    }
}

impl ExportCall for Traces {
    const SERVICE: &'static str = "opentelemetry.proto.collector.trace.v1.TraceService";
    const PATH: &'static str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";
    /// The body: decoded in place where it is handled ([`TraceRequest`] borrows from it).
    type Request = Bytes;
    type Response = ExportTraceServiceResponse;
    fn decode(body: Bytes) -> Result<Bytes, String> {
        Ok(body)
    }
    fn handle(
        ingest: &Ingest,
        body: Bytes,
        held: &mut Reservation,
    ) -> Result<Option<Pending>, Unhandled> {
        let request = held.decode(&ingest.budget, |charge| {
            TraceRequest::decode_within(&body, &ingest.extract, charge)
        })?;
        Ok(Some(ingest.traces(&request)?))
    }
    async fn answer(pending: Option<Pending>) -> Self::Response {
        match pending {
            Some(p) => p.traces().await,
            None => Self::Response::default(),
        }
    }
}

impl ExportCall for Metrics {
    const SERVICE: &'static str = "opentelemetry.proto.collector.metrics.v1.MetricsService";
    const PATH: &'static str = "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export";
    /// The body, as for traces.
    type Request = Bytes;
    type Response = ExportMetricsServiceResponse;
    fn decode(body: Bytes) -> Result<Bytes, String> {
        Ok(body)
    }
    fn handle(
        ingest: &Ingest,
        body: Bytes,
        held: &mut Reservation,
    ) -> Result<Option<Pending>, Unhandled> {
        let request = held.decode(&ingest.budget, |charge| {
            MetricsRequest::decode_within(&body, &ingest.extract, charge)
        })?;
        Ok(Some(ingest.metrics(&request)?))
    }
    async fn answer(pending: Option<Pending>) -> Self::Response {
        match pending {
            Some(p) => p.metrics().await,
            None => Self::Response::default(),
        }
    }
}

/// Logs carry no memory samples; they are accepted (a Collector may send every signal) and counted, never
/// decoded.
impl ExportCall for Logs {
    const SERVICE: &'static str = "opentelemetry.proto.collector.logs.v1.LogsService";
    const PATH: &'static str = "/opentelemetry.proto.collector.logs.v1.LogsService/Export";
    /// The number of log records.
    type Request = usize;
    type Response = ExportLogsServiceResponse;
    fn decode(body: Bytes) -> Result<usize, String> {
        budget::weigh(&body, &budget::LOG_RECORDS).map_err(|e| e.to_string())
    }
    fn handle(
        ingest: &Ingest,
        records: usize,
        _: &mut Reservation,
    ) -> Result<Option<Pending>, Unhandled> {
        ingest.logs(records as u64);
        Ok(None)
    }
    async fn answer(_: Option<Pending>) -> Self::Response {
        ExportLogsServiceResponse {
            partial_success: None,
        }
    }
}

/// A request and the memory it holds from the decode budget until handled.
pub struct Budgeted<T> {
    message: T,
    reservation: Reservation,
}

/// The status a refusal of the decode budget answers with: for good when the request can never fit.
fn refusal_status(r: Refusal) -> Status {
    match r {
        Refusal::TooLarge { .. } => Status::resource_exhausted(r.message()),
        Refusal::Busy { .. } | Refusal::OverMemory { .. } => Status::unavailable(r.message()),
    }
}

/// tonic's prost codec, with the body's bytes held from the decode budget before the request is handled.
struct BudgetCodec<C> {
    ingest: Arc<Ingest>,
    call: PhantomData<fn() -> C>,
}

impl<C: ExportCall> Codec for BudgetCodec<C> {
    type Encode = C::Response;
    type Decode = Budgeted<C::Request>;
    type Encoder = ProstEncoder<C::Response>;
    type Decoder = BudgetCodec<C>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::default()
    }

    fn decoder(&mut self) -> Self::Decoder {
        BudgetCodec {
            ingest: Arc::clone(&self.ingest),
            call: PhantomData,
        }
    }
}

impl<C: ExportCall> Decoder for BudgetCodec<C> {
    type Item = Budgeted<C::Request>;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, Status> {
        // The message is one contiguous buffer here: this takes it without copying.
        let body = buf.copy_to_bytes(buf.remaining());
        let reservation = (self.ingest.budget.reserve(body.len())).map_err(refusal_status)?;
        let message = C::decode(body).map_err(|e| {
            Status::invalid_argument(format!("the body is not a valid OTLP request: {e}"))
        })?;
        Ok(Some(Budgeted {
            message,
            reservation,
        }))
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

impl<C: ExportCall> UnaryService<Budgeted<C::Request>> for Handler<C> {
    type Response = C::Response;
    type Future = BoxFuture<'static, Result<Response<C::Response>, Status>>;
    fn call(&mut self, request: Request<Budgeted<C::Request>>) -> Self::Future {
        // The body and its share of the decode budget go as soon as its samples are queued.
        let Budgeted {
            message,
            mut reservation,
        } = request.into_inner();
        let pending = C::handle(&self.0, message, &mut reservation);
        drop(reservation);
        Box::pin(async move {
            match pending {
                Ok(p) => Ok(Response::new(C::answer(p).await)),
                Err(Unhandled::Busy) => Err(Status::unavailable(
                    "memdrift's queue is full; retry with backoff",
                )),
                Err(Unhandled::Malformed(e)) => Err(Status::invalid_argument(format!(
                    "the body is not a valid OTLP request: {e}"
                ))),
                Err(Unhandled::Refused(r)) => Err(refusal_status(r)),
            }
        })
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
        let codec = BudgetCodec::<C> {
            ingest: Arc::clone(&self.ingest),
            call: PhantomData,
        };
        let max = self.max_request_bytes;
        // The message's bytes are held from the decode budget as they arrive (see `budget`).
        let budget = self.ingest.budget.clone();
        let req = req.map(|body| {
            Body::new(BudgetedBody::new(body, budget).map_err(|e| match e {
                BodyError::Refused(r) => refusal_status(r),
                BodyError::Inner(e) => Status::from_error(e),
            }))
        });
        Box::pin(async move {
            let mut grpc = Grpc::new(codec)
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

/// Rewrites two of tonic's request-decoding answers into the ones the OTLP specification means, and counts every
/// failed call in `memdrift_receiver_failed_requests_total{transport="grpc"}` by its final code:
/// - an over-size message gets OUT_OF_RANGE from tonic, which OTLP makes *retryable*, so a client would resend
///   the same too-large batch forever; OTLP's answer is RESOURCE_EXHAUSTED without RetryInfo (not retried);
/// - a body that is not a valid message (bad protobuf, bad compression) gets INTERNAL from tonic; it is the
///   sender's fault, INVALID_ARGUMENT.
///
/// memdrift's handlers never return OUT_OF_RANGE or INTERNAL themselves, so only tonic's answers are touched.
/// Unary failures are trailers-only responses: the status is in the headers.
fn otlp_status_codes<B>(telemetry: &Telemetry, mut resp: http::Response<B>) -> http::Response<B> {
    let status = resp.headers().get("grpc-status").map(|v| v.as_bytes());
    let (rewrite, reason) = match status {
        None | Some(b"0") => (None, None),
        Some(b"11") => (Some(http::HeaderValue::from_static("8")), Some("too_large")),
        Some(b"13") => (Some(http::HeaderValue::from_static("3")), Some("malformed")),
        Some(b"8") => (None, Some("too_large")),
        Some(b"3") => (None, Some("malformed")),
        Some(b"14") => (None, Some("busy")),
        Some(b"12") => (None, Some("unimplemented")),
        Some(b"16") => (None, Some("unauthenticated")),
        Some(_) => (None, Some("other")),
    };
    if let Some(code) = rewrite {
        resp.headers_mut().insert("grpc-status", code);
    }
    if let Some(reason) = reason {
        telemetry
            .failed_requests
            .with_label_values(&["grpc", reason])
            .inc();
    }
    resp
}

/// Serves OTLP/gRPC on `listener` until `shutdown` resolves. A call must be done within the listener's
/// `request_timeout`.
pub async fn serve(
    listener: GuardedListener,
    ingest: Arc<Ingest>,
    max_request_bytes: usize,
    security: Security,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let limits = listener.limits();
    let incoming = futures_util::stream::unfold(listener, |l| async move {
        let conn = l.accept().await;
        Some((Ok::<_, std::io::Error>(conn), l))
    });
    let telemetry = ingest.telemetry.clone();
    let mut server = tonic::transport::Server::builder();
    if let Some(tls) = security.grpc_tls {
        server = server.tls_config(tls)?;
    }
    let auth = tonic::service::InterceptorLayer::new(require_grpc(security.token));
    server
        .timeout(limits.request_timeout)
        .max_concurrent_streams(Some(64))
        .initial_stream_window_size(Some(HTTP2_WINDOW))
        .initial_connection_window_size(Some(HTTP2_WINDOW))
        .max_frame_size(Some(HTTP2_WINDOW))
        .layer(tower::util::MapResponseLayer::new(move |resp| {
            otlp_status_codes(&telemetry, resp)
        }))
        .layer(auth)
        .add_service(ExportServer::<Traces>::new(
            Arc::clone(&ingest),
            max_request_bytes,
        ))
        .add_service(ExportServer::<Metrics>::new(
            Arc::clone(&ingest),
            max_request_bytes,
        ))
        .add_service(ExportServer::<Logs>::new(ingest, max_request_bytes))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
}
