//! OTLP/HTTP: POST /v1/traces, /v1/metrics, /v1/logs with protobuf or JSON bodies, gzip or not, fixed-length
//! or chunked. Answers follow the OTLP/HTTP rules: 200 with the export response (partial success inside) in
//! the request's encoding; 400 with a google.rpc.Status body for a body that cannot be read; 413 over the size
//! limit or when decoding the body would take more than the whole decode budget; 415 for an unknown content type
//! or encoding; 503 with Retry-After when memdrift is busy (its queue full, or the decode budget taken by the
//! requests in flight).

use std::io::Read;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceResponse;
use prost::Message;

use super::budget::{self, BodyError, BudgetedBody, Refusal, Reservation, Undecoded};
use super::json::{self, JsonDocument, ReadError};
use super::{Ingest, RpcStatus};
use crate::extract::model::{MetricsRequest, TraceRequest};
use crate::receivers::listener::{serve_http, GuardedListener};
use crate::receivers::security::{guard_router, Security};

const PROTOBUF: &str = "application/x-protobuf";
const JSON: &str = "application/json";

#[derive(Clone)]
struct HttpState {
    ingest: Arc<Ingest>,
    max_request_bytes: usize,
    /// A body must have arrived whole within this.
    request_timeout: std::time::Duration,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Encoding {
    Protobuf,
    Json,
}

/// An error answer: status, a message for the sender, and the reason label for self-telemetry.
struct Failure {
    status: StatusCode,
    message: String,
    reason: &'static str,
}

impl Failure {
    fn new(status: StatusCode, reason: &'static str, message: impl Into<String>) -> Failure {
        Failure {
            status,
            message: message.into(),
            reason,
        }
    }
}

pub fn router(
    ingest: Arc<Ingest>,
    max_request_bytes: usize,
    request_timeout: std::time::Duration,
) -> Router {
    Router::new()
        .route("/v1/traces", post(traces))
        .route("/v1/metrics", post(metrics))
        .route("/v1/logs", post(logs))
        .with_state(HttpState {
            ingest,
            max_request_bytes,
            request_timeout,
        })
}

/// Serves OTLP/HTTP on `listener` until `shutdown` resolves, with the TLS and token `security` asks for.
pub async fn serve(
    listener: GuardedListener,
    ingest: Arc<Ingest>,
    max_request_bytes: usize,
    security: Security,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let timeout = listener.limits().request_timeout;
    let refused =
        (ingest.telemetry.failed_requests).with_label_values(&["http", "unauthenticated"]);
    let router = guard_router(
        router(ingest, max_request_bytes, timeout),
        &security,
        refused,
    );
    serve_http(listener, router, security.tls, shutdown).await
}

fn content_type(headers: &HeaderMap) -> Result<Encoding, Failure> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match mime.as_str() {
        PROTOBUF => Ok(Encoding::Protobuf),
        JSON => Ok(Encoding::Json),
        _ => Err(Failure::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!("Content-Type {ct:?} is not supported; send {PROTOBUF} or {JSON}"),
        )),
    }
}

/// Reads the whole body (fixed length or chunked) within the limit, and gunzips it within the same limit.
async fn read_body(state: &HttpState, headers: &HeaderMap, body: Body) -> Result<Bytes, Failure> {
    let limit = state.max_request_bytes;
    let too_large = || {
        Failure::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("request body exceeds max_request_bytes ({limit} bytes); send smaller batches"),
        )
    };
    let body = BudgetedBody::new(body, state.ingest.budget.clone());
    let read = tokio::time::timeout(state.request_timeout, Limited::new(body, limit).collect());
    let Ok(read) = read.await else {
        return Err(Failure::new(
            StatusCode::REQUEST_TIMEOUT,
            "timeout",
            format!(
                "the request body did not arrive within request_timeout ({:?})",
                state.request_timeout
            ),
        ));
    };
    let raw = match read {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => return Err(too_large()),
        Err(e) => match e.downcast::<BodyError>() {
            Ok(refusal) => match *refusal {
                BodyError::Refused(r) => return Err(refused(r)),
                BodyError::Inner(e) => {
                    return Err(Failure::new(
                        StatusCode::BAD_REQUEST,
                        "body_read",
                        format!("could not read the request body: {e}"),
                    ))
                }
            },
            Err(e) => {
                return Err(Failure::new(
                    StatusCode::BAD_REQUEST,
                    "body_read",
                    format!("could not read the request body: {e}"),
                ))
            }
        },
    };
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("identity")
        .trim()
        .to_ascii_lowercase();
    match encoding.as_str() {
        "identity" | "" => Ok(raw),
        "gzip" => {
            let mut out = Vec::new();
            // Every member of a multi-member gzip body (RFC 1952 2.2), not only the first.
            let mut decoder = flate2::read::MultiGzDecoder::new(&raw[..]).take(limit as u64 + 1);
            decoder.read_to_end(&mut out).map_err(|e| {
                Failure::new(
                    StatusCode::BAD_REQUEST,
                    "malformed",
                    format!("Content-Encoding is gzip but the body is not valid gzip: {e}"),
                )
            })?;
            if out.len() > limit {
                return Err(too_large());
            }
            Ok(out.into())
        }
        other => Err(Failure::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_encoding",
            format!("Content-Encoding {other:?} is not supported; use gzip or none"),
        )),
    }
}

fn malformed(what: &str, e: impl std::fmt::Display) -> Failure {
    Failure::new(
        StatusCode::BAD_REQUEST,
        "malformed",
        format!("the body is not a valid {what}: {e}"),
    )
}

fn busy() -> Failure {
    Failure::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "busy",
        "memdrift's queue is full; retry with backoff",
    )
}

/// Answers in the request's encoding.
fn reply<M: Message + serde::Serialize>(
    encoding: Encoding,
    status: StatusCode,
    msg: &M,
) -> Response {
    let (ct, body) = match encoding {
        Encoding::Protobuf => (PROTOBUF, msg.encode_to_vec()),
        Encoding::Json => (
            JSON,
            serde_json::to_vec(msg).unwrap_or_else(|_| b"{}".to_vec()),
        ),
    };
    (
        status,
        [(header::CONTENT_TYPE, HeaderValue::from_static(ct))],
        body,
    )
        .into_response()
}

fn fail(state: &HttpState, encoding: Encoding, f: Failure) -> Response {
    state.ingest.failed("http", f.reason);
    let code = match f.status {
        StatusCode::SERVICE_UNAVAILABLE => 14, // UNAVAILABLE
        StatusCode::PAYLOAD_TOO_LARGE => 8,    // RESOURCE_EXHAUSTED
        _ => 3,                                // INVALID_ARGUMENT
    };
    let mut resp = reply(
        encoding,
        f.status,
        &RpcStatus {
            code,
            message: f.message,
        },
    );
    if f.status == StatusCode::SERVICE_UNAVAILABLE {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    resp
}

fn refused(r: Refusal) -> Failure {
    match r {
        Refusal::TooLarge { .. } => {
            Failure::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", r.message())
        }
        Refusal::Busy { .. } => Failure::new(StatusCode::SERVICE_UNAVAILABLE, "busy", r.message()),
        Refusal::OverMemory { .. } => {
            Failure::new(StatusCode::SERVICE_UNAVAILABLE, "memory_limit", r.message())
        }
    }
}

/// Reserves the body from the decode budget (decoding then charges what it builds as it goes).
fn admit(state: &HttpState, bytes: &[u8]) -> Result<Reservation, Failure> {
    (state.ingest.budget).reserve(bytes.len()).map_err(refused)
}

/// Reads a body and reserves it from the decode budget. The reservation is held until the request has been
/// handled.
async fn receive(
    state: &HttpState,
    headers: &HeaderMap,
    body: Body,
) -> Result<(Encoding, Bytes, Reservation), (Encoding, Failure)> {
    let encoding = content_type(headers).map_err(|f| (Encoding::Protobuf, f))?;
    let bytes = read_body(state, headers, body)
        .await
        .map_err(|f| (encoding, f))?;
    let reservation = admit(state, &bytes).map_err(|f| (encoding, f))?;
    Ok((encoding, bytes, reservation))
}

const TRACES: &str = "OTLP ExportTraceServiceRequest";
const METRICS: &str = "OTLP ExportMetricsServiceRequest";

/// The answer to a protobuf body that was not decoded.
fn undecoded(what: &str, u: Undecoded) -> Failure {
    match u {
        Undecoded::Malformed(e) => malformed(what, e),
        Undecoded::Refused(r) => refused(r),
        Undecoded::Busy => busy(),
    }
}

/// The answer to a JSON body that was not read.
fn unread(what: &str, e: ReadError, refusal: Option<Refusal>) -> Failure {
    match (e, refusal) {
        (ReadError::Malformed(e), _) => malformed(what, e),
        (ReadError::OverBudget, Some(r)) => refused(r),
        (ReadError::OverBudget, None) => busy(),
    }
}

async fn traces(State(state): State<HttpState>, headers: HeaderMap, body: Body) -> Response {
    let (encoding, bytes, mut reservation) = match receive(&state, &headers, body).await {
        Ok(ok) => ok,
        Err((enc, f)) => return fail(&state, enc, f),
    };
    let ingest = &state.ingest;
    // Decoded in place (protobuf, charging the budget as it goes) or through the lenient JSON reader, then
    // extracted and queued.
    let pending = match encoding {
        Encoding::Protobuf => reservation
            .decode(&ingest.budget, |charge| {
                TraceRequest::decode_within(&bytes, &ingest.extract, charge)
            })
            .map_err(|u| undecoded(TRACES, u))
            .map(|req| ingest.traces(&req)),
        Encoding::Json => {
            let (doc, refusal) = reservation.charged(&ingest.budget, |charge| {
                JsonDocument::parse_within(&bytes, &ingest.extract, charge)
            });
            doc.map_err(|e| unread(TRACES, e, refusal))
                .map(|doc| ingest.traces(&doc.traces()))
        }
    };
    // The body and its share of the decode budget go as soon as its samples are queued.
    drop((bytes, reservation));
    match pending {
        Ok(Ok(p)) => reply(encoding, StatusCode::OK, &p.traces().await),
        Ok(Err(_)) => fail(&state, encoding, busy()),
        Err(f) => fail(&state, encoding, f),
    }
}

async fn metrics(State(state): State<HttpState>, headers: HeaderMap, body: Body) -> Response {
    let (encoding, bytes, mut reservation) = match receive(&state, &headers, body).await {
        Ok(ok) => ok,
        Err((enc, f)) => return fail(&state, enc, f),
    };
    let ingest = &state.ingest;
    let pending = match encoding {
        Encoding::Protobuf => reservation
            .decode(&ingest.budget, |charge| {
                MetricsRequest::decode_within(&bytes, &ingest.extract, charge)
            })
            .map_err(|u| undecoded(METRICS, u))
            .map(|req| ingest.metrics(&req)),
        Encoding::Json => {
            let (doc, refusal) = reservation.charged(&ingest.budget, |charge| {
                JsonDocument::parse_within(&bytes, &ingest.extract, charge)
            });
            doc.map_err(|e| unread(METRICS, e, refusal))
                .map(|doc| ingest.metrics(&doc.metrics()))
        }
    };
    drop((bytes, reservation));
    match pending {
        Ok(Ok(p)) => reply(encoding, StatusCode::OK, &p.metrics().await),
        Ok(Err(_)) => fail(&state, encoding, busy()),
        Err(f) => fail(&state, encoding, f),
    }
}

async fn logs(State(state): State<HttpState>, headers: HeaderMap, body: Body) -> Response {
    // The log body is only counted; JSON logs are validated as JSON but not modelled.
    let encoding = match content_type(&headers) {
        Ok(e) => e,
        Err(f) => return fail(&state, Encoding::Protobuf, f),
    };
    let bytes = match read_body(&state, &headers, body).await {
        Ok(b) => b,
        Err(f) => return fail(&state, encoding, f),
    };
    let mut reservation = match state.ingest.budget.reserve(bytes.len()) {
        Ok(r) => r,
        Err(r) => return fail(&state, encoding, refused(r)),
    };
    let records = match encoding {
        Encoding::Protobuf => budget::weigh(&bytes, &budget::LOG_RECORDS)
            .map_err(|e| malformed("OTLP ExportLogsServiceRequest", e)),
        Encoding::Json => {
            let (records, refusal) = reservation.charged(&state.ingest.budget, |charge| {
                json::count_log_records(&bytes, charge)
            });
            records.map_err(|e| unread("OTLP ExportLogsServiceRequest", e, refusal))
        }
    };
    match records {
        Ok(records) => {
            state.ingest.logs(records as u64);
            reply(
                encoding,
                StatusCode::OK,
                &ExportLogsServiceResponse {
                    partial_success: None,
                },
            )
        }
        Err(f) => fail(&state, encoding, f),
    }
}
