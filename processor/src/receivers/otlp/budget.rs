//! What a request costs in memory once decoded, known before decoding it, and a budget for all requests in
//! flight together.
//!
//! Protobuf lets a small body decode into a large value: an empty span is 2 bytes on the wire and about a
//! hundred in memory, so 16 MiB of them would take about 800 MB. Before a body is decoded, [`weigh`] walks its
//! wire format once (no allocation) and adds up the in-memory size of every message that decoding would build,
//! following only the fields extraction's model keeps ([`crate::extract::model`]). A request then reserves that
//! much, plus its body, from the receiver's [`DecodeBudget`]:
//! - a request that weighs more than the whole budget can never be taken: refused for good (HTTP 413, gRPC
//!   RESOURCE_EXHAUSTED without RetryInfo, as for an over-size body);
//! - one that does not fit beside the requests in flight is refused for now (HTTP 503 + Retry-After, gRPC
//!   UNAVAILABLE): the sender backs off and retries, nothing it sent is lost.
//!
//! The same walk counts log records, which memdrift counts and never decodes.

use std::mem::size_of;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::extract::model as m;
use crate::receivers::memory_limit::MemoryLimiter;

/// A message on the wire: its in-memory size once decoded, and the fields holding messages that decoding builds
/// (field number, their shape). Fields not named are skipped, as prost skips them.
pub struct Shape {
    pub size: usize,
    pub children: &'static [(u32, &'static Shape)],
}

static KEY_VALUE: Shape = Shape {
    size: size_of::<m::KeyValue>(),
    children: &[],
};
/// `Resource` is held inline by its parent; its attributes are not.
static RESOURCE: Shape = Shape {
    size: 0,
    children: &[(1, &KEY_VALUE)],
};
static SPAN: Shape = Shape {
    size: size_of::<m::Span>(),
    children: &[(9, &KEY_VALUE)],
};
static SCOPE_SPANS: Shape = Shape {
    size: size_of::<m::ScopeSpans>(),
    children: &[(2, &SPAN)],
};
static RESOURCE_SPANS: Shape = Shape {
    size: size_of::<m::ResourceSpans>(),
    children: &[(1, &RESOURCE), (2, &SCOPE_SPANS)],
};
/// `ExportTraceServiceRequest` as extraction decodes it.
pub static TRACES: Shape = Shape {
    size: size_of::<m::TraceRequest>(),
    children: &[(1, &RESOURCE_SPANS)],
};

static POINT: Shape = Shape {
    size: size_of::<m::NumberDataPoint>(),
    children: &[(7, &KEY_VALUE)],
};
/// `Gauge` and `Sum`, held inline by the metric.
static POINTS: Shape = Shape {
    size: 0,
    children: &[(1, &POINT)],
};
static METRIC: Shape = Shape {
    size: size_of::<m::Metric>(),
    children: &[(5, &POINTS), (7, &POINTS)],
};
static SCOPE_METRICS: Shape = Shape {
    size: size_of::<m::ScopeMetrics>(),
    children: &[(2, &METRIC)],
};
static RESOURCE_METRICS: Shape = Shape {
    size: size_of::<m::ResourceMetrics>(),
    children: &[(1, &RESOURCE), (2, &SCOPE_METRICS)],
};
/// `ExportMetricsServiceRequest` as extraction decodes it.
pub static METRICS: Shape = Shape {
    size: size_of::<m::MetricsRequest>(),
    children: &[(1, &RESOURCE_METRICS)],
};

static LOG_RECORD: Shape = Shape {
    size: 1,
    children: &[],
};
static SCOPE_LOGS: Shape = Shape {
    size: 0,
    children: &[(2, &LOG_RECORD)],
};
static RESOURCE_LOGS: Shape = Shape {
    size: 0,
    children: &[(2, &SCOPE_LOGS)],
};
/// `ExportLogsServiceRequest` weighed as one per log record: [`weigh`] with it counts the records.
pub static LOG_RECORDS: Shape = Shape {
    size: 0,
    children: &[(1, &RESOURCE_LOGS)],
};

/// A body that is not valid protobuf wire format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireError(pub &'static str);

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

fn varint(buf: &mut &[u8]) -> Result<u64, WireError> {
    let mut value = 0u64;
    for shift in (0..70).step_by(7) {
        let (&byte, rest) = buf.split_first().ok_or(WireError("truncated varint"))?;
        *buf = rest;
        if shift == 63 && byte > 1 {
            return Err(WireError("varint over 64 bits"));
        }
        value |= u64::from(byte & 0x7f) << shift;
        if byte < 0x80 {
            return Ok(value);
        }
    }
    Err(WireError("varint over 10 bytes"))
}

fn take<'a>(buf: &mut &'a [u8], n: u64) -> Result<&'a [u8], WireError> {
    let n = usize::try_from(n).map_err(|_| WireError("length past the buffer"))?;
    if n > buf.len() {
        return Err(WireError("length past the buffer"));
    }
    let (head, rest) = buf.split_at(n);
    *buf = rest;
    Ok(head)
}

/// Nesting of groups prost follows before it gives up (its recursion limit).
const MAX_GROUP_DEPTH: u32 = 100;

/// The in-memory size of `body` decoded as `shape` (the top message's own size included). One pass, no
/// allocation; recursion only as deep as the shape. It accepts every body prost decodes (unknown fields of any
/// wire type, groups included, are skipped as prost skips them), so the budget never refuses valid input as
/// malformed.
pub fn weigh(body: &[u8], shape: &Shape) -> Result<usize, WireError> {
    let mut total = shape.size;
    let mut buf = body;
    while !buf.is_empty() {
        let key = varint(&mut buf)?;
        let (field, wire) = (key >> 3, key & 7);
        if wire == 2 {
            let len = varint(&mut buf)?;
            let payload = take(&mut buf, len)?;
            if let Some((_, child)) = (shape.children.iter()).find(|(f, _)| u64::from(*f) == field)
            {
                total = total.saturating_add(weigh(payload, child)?);
            }
        } else {
            skip(&mut buf, wire, field, 0)?;
        }
    }
    Ok(total)
}

/// Skips one field that is not length-delimited (a group with everything in it).
fn skip(buf: &mut &[u8], wire: u64, field: u64, depth: u32) -> Result<(), WireError> {
    match wire {
        0 => varint(buf).map(|_| ()),
        1 => take(buf, 8).map(|_| ()),
        5 => take(buf, 4).map(|_| ()),
        2 => {
            let len = varint(buf)?;
            take(buf, len).map(|_| ())
        }
        3 if depth < MAX_GROUP_DEPTH => loop {
            let key = varint(buf)?;
            match (key >> 3, key & 7) {
                (inner, 4) if inner == field => return Ok(()),
                (_, 4) => return Err(WireError("a group ends with another group's tag")),
                (inner, w) => skip(buf, w, inner, depth + 1)?,
            }
        },
        3 => Err(WireError("groups nested too deep")),
        4 => Err(WireError("a group ends that never began")),
        _ => Err(WireError("unknown wire type")),
    }
}

/// Why a request could not reserve memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Bigger than the whole budget: it can never be taken.
    TooLarge { need: usize, budget: usize },
    /// Does not fit beside the requests in flight: retry later.
    Busy { need: usize, budget: usize },
    /// memdrift's resident memory is above the memory limiter's soft limit: retry later.
    OverMemory { rss: u64, soft_limit: u64 },
}

impl Refusal {
    pub fn message(&self) -> String {
        match *self {
            Refusal::TooLarge { need, budget } => format!(
                "the request would take {need} bytes once decoded, over receivers.otlp.decode_budget ({budget}); \
                 send smaller batches"
            ),
            Refusal::OverMemory { rss, soft_limit } => format!(
                "memdrift's memory ({} MiB) is above its soft limit ({} MiB, receivers.otlp.memory_limiter); \
                 retry with backoff",
                rss >> 20,
                soft_limit >> 20
            ),
            Refusal::Busy { need, budget } => format!(
                "memdrift is decoding other requests and {need} more bytes would pass receivers.otlp.decode_budget \
                 ({budget}); retry with backoff"
            ),
        }
    }
}

/// Memory for requests being decoded and extracted, shared by every receiver and connection.
#[derive(Clone, Debug)]
pub struct DecodeBudget {
    total: usize,
    in_use: Arc<AtomicUsize>,
    /// Refuses everything while memdrift is above its soft memory limit.
    limiter: Option<Arc<MemoryLimiter>>,
}

/// Bytes held from a [`DecodeBudget`] until dropped.
#[derive(Debug)]
pub struct Reservation {
    bytes: usize,
    in_use: Arc<AtomicUsize>,
}

impl Reservation {
    /// Holds `more` bytes besides, if they fit the budget.
    pub fn grow(&mut self, more: usize, budget: &DecodeBudget) -> Result<(), Refusal> {
        let held = budget.reserve(more)?;
        self.bytes += held.bytes;
        std::mem::forget(held);
        Ok(())
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.in_use.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

impl DecodeBudget {
    pub fn new(total: usize) -> DecodeBudget {
        DecodeBudget {
            total,
            in_use: Arc::new(AtomicUsize::new(0)),
            limiter: None,
        }
    }

    /// The same budget, refusing everything while `limiter` is over its soft limit.
    pub fn with_limiter(mut self, limiter: Option<Arc<MemoryLimiter>>) -> DecodeBudget {
        self.limiter = limiter;
        self
    }

    pub fn total(&self) -> usize {
        self.total
    }

    /// Bytes reserved now.
    pub fn in_use(&self) -> usize {
        self.in_use.load(Ordering::Acquire)
    }

    /// Reserves `need` bytes, or says why not.
    pub fn reserve(&self, need: usize) -> Result<Reservation, Refusal> {
        if let Some(limiter) = self.limiter.as_ref().filter(|l| l.over()) {
            return Err(Refusal::OverMemory {
                rss: limiter.rss(),
                soft_limit: limiter.soft_bytes,
            });
        }
        let budget = self.total;
        if need > budget {
            return Err(Refusal::TooLarge { need, budget });
        }
        self.in_use
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(need).filter(|n| *n <= budget)
            })
            .map_err(|_| Refusal::Busy { need, budget })?;
        Ok(Reservation {
            bytes: need,
            in_use: Arc::clone(&self.in_use),
        })
    }

    /// Weighs `body` as `shape` and reserves its decoded size plus the body itself.
    pub fn admit(&self, body: &[u8], shape: &Shape) -> Result<Reservation, Admission> {
        let decoded = weigh(body, shape).map_err(Admission::Malformed)?;
        self.reserve(decoded.saturating_add(body.len()))
            .map_err(Admission::Refused)
    }
}

/// A request body that holds its bytes from the decode budget as they arrive, so that bodies still being
/// read are budgeted too (many slow 15 MiB uploads at once cannot take the memory the budget protects). A frame
/// that does not fit ends the body with [`BodyError::Refused`].
pub struct BudgetedBody<B> {
    inner: B,
    budget: DecodeBudget,
    held: Reservation,
}

impl<B> BudgetedBody<B> {
    pub fn new(inner: B, budget: DecodeBudget) -> BudgetedBody<B> {
        let held = Reservation {
            bytes: 0,
            in_use: Arc::clone(&budget.in_use),
        };
        BudgetedBody {
            inner,
            budget,
            held,
        }
    }
}

/// Why a [`BudgetedBody`] ended early.
#[derive(Debug)]
pub enum BodyError {
    Refused(Refusal),
    Inner(Box<dyn std::error::Error + Send + Sync>),
}

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BodyError::Refused(r) => f.write_str(&r.message()),
            BodyError::Inner(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for BodyError {}

impl<B> http_body::Body for BudgetedBody<B>
where
    B: http_body::Body<Data = bytes::Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = bytes::Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, BodyError>>> {
        use std::task::Poll;
        let this = &mut *self;
        match std::pin::Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let len = frame.data_ref().map_or(0, |d| d.len());
                match this.held.grow(len, &this.budget) {
                    Ok(()) => Poll::Ready(Some(Ok(frame))),
                    Err(r) => Poll::Ready(Some(Err(BodyError::Refused(r)))),
                }
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(BodyError::Inner(e.into())))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Why [`DecodeBudget::admit`] did not admit a body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    Malformed(WireError),
    Refused(Refusal),
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::logs::v1 as pl;
    use opentelemetry_proto::tonic::trace::v1 as pt;
    use prost::Message;

    /// `n` empty spans under one resource and scope: 2 bytes each on the wire.
    fn empty_spans(n: usize) -> Vec<u8> {
        ExportTraceServiceRequest {
            resource_spans: vec![pt::ResourceSpans {
                scope_spans: vec![pt::ScopeSpans {
                    spans: vec![pt::Span::default(); n],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
        .encode_to_vec()
    }

    #[test]
    fn empty_spans_weigh_what_decoding_them_builds() {
        let body = empty_spans(1000);
        assert!(body.len() < 2100, "{} bytes on the wire", body.len());
        let w = weigh(&body, &TRACES).expect("valid");
        let spans = 1000 * size_of::<m::Span>();
        assert!(w >= spans && w < spans + 1000, "{w}");
        // 16 MiB of them would be hundreds of MB decoded: more than the default budget on its own.
        let per_span = size_of::<m::Span>() / 2;
        assert!(per_span * (16 << 20) > 256 << 20);
    }

    #[test]
    fn log_records_are_counted_without_decoding() {
        let request = ExportLogsServiceRequest {
            resource_logs: vec![
                pl::ResourceLogs {
                    scope_logs: vec![
                        pl::ScopeLogs {
                            log_records: vec![pl::LogRecord::default(); 3],
                            ..Default::default()
                        },
                        pl::ScopeLogs {
                            log_records: vec![
                                pl::LogRecord {
                                    severity_text: "INFO".into(),
                                    ..Default::default()
                                };
                                4
                            ],
                            ..Default::default()
                        },
                    ],
                    ..Default::default()
                };
                2
            ],
        };
        let n = weigh(&request.encode_to_vec(), &LOG_RECORDS).expect("valid");
        assert_eq!(n, 14);
    }

    #[test]
    fn broken_wire_is_an_error_not_a_panic() {
        let body = empty_spans(10);
        for cut in 1..body.len() {
            // Every prefix either weighs or is refused; none panics.
            let _ = weigh(&body[..cut], &TRACES);
        }
        assert!(weigh(&[0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f], &TRACES).is_err());
        assert!(weigh(&[0x0b], &TRACES).is_err(), "a group never ended");
        // A group in an unknown field is skipped, as prost skips it.
        assert_eq!(
            weigh(&[0x2b, 0x08, 0x01, 0x2c], &TRACES),
            Ok(size_of::<m::TraceRequest>())
        );
        assert!(weigh(&[0xff; 11], &TRACES).is_err(), "11-byte varint");
    }

    #[tokio::test]
    async fn a_body_holds_its_bytes_as_they_arrive_and_is_refused_past_the_budget() {
        use http_body_util::BodyExt;
        let budget = DecodeBudget::new(1000);
        let chunks: Vec<Result<http_body::Frame<Bytes>, std::convert::Infallible>> = (0..3)
            .map(|_| Ok(http_body::Frame::data(Bytes::from(vec![0u8; 400]))))
            .collect();
        let body = BudgetedBody::new(
            http_body_util::StreamBody::new(futures_util::stream::iter(chunks)),
            budget.clone(),
        );
        let mut body = Box::pin(body);
        assert!(body.frame().await.is_some_and(|f| f.is_ok()));
        assert!(body.frame().await.is_some_and(|f| f.is_ok()));
        assert_eq!(budget.in_use(), 800);
        assert!(matches!(
            body.frame().await,
            Some(Err(BodyError::Refused(Refusal::Busy { .. })))
        ));
        drop(body);
        assert_eq!(budget.in_use(), 0);
    }

    #[test]
    fn the_budget_admits_until_full_and_frees_on_drop() {
        let budget = DecodeBudget::new(100);
        let a = budget.reserve(60).expect("fits");
        assert!(matches!(budget.reserve(50), Err(Refusal::Busy { .. })));
        assert!(matches!(budget.reserve(101), Err(Refusal::TooLarge { .. })));
        let b = budget.reserve(40).expect("fits exactly");
        assert_eq!(budget.in_use(), 100);
        drop(a);
        drop(b);
        assert_eq!(budget.in_use(), 0);
        assert!(budget.reserve(100).is_ok());
    }
}
