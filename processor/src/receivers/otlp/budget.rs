//! A budget of memory for all requests in flight together, and what a request is charged against it.
//!
//! Protobuf lets a small body decode into a large value: an empty span is 2 bytes on the wire and tens of bytes
//! in memory, so 16 MiB of them would take hundreds of MB. A request holds its body's bytes from the receiver's
//! [`DecodeBudget`] as they arrive ([`BudgetedBody`]); decoding then asks the budget for every allocation of the
//! request's arenas before it is made ([`crate::extract::model::Budget`], answered through
//! [`Reservation::decode`]), so no walk of the body is needed beforehand and what is held is what decoding
//! actually builds:
//! - a request that needs more than the whole budget can never be taken: refused for good (HTTP 413, gRPC
//!   RESOURCE_EXHAUSTED without RetryInfo, as for an over-size body);
//! - one that does not fit beside the requests in flight is refused for now (HTTP 503 + Retry-After, gRPC
//!   UNAVAILABLE): the sender backs off and retries, nothing it sent is lost.
//!
//! [`weigh`] walks a body's wire format once without allocating and adds up a size per message of a [`Shape`]:
//! with [`LOG_RECORDS`] it counts log records, which memdrift counts and never decodes.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::extract::model::DecodeError;
pub use crate::extract::wire::WireError;
use crate::extract::wire::{skip, take, varint};
use crate::receivers::memory_limit::MemoryLimiter;

/// A message on the wire: what it counts for, and the fields holding messages to follow (field number, their
/// shape). Fields not named are skipped, as prost skips them.
pub struct Shape {
    pub size: usize,
    pub children: &'static [(u32, &'static Shape)],
}

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
    /// Holds `more` bytes besides, if they fit the budget; refused for good when this reservation would then
    /// be larger than the whole budget.
    pub fn grow(&mut self, more: usize, budget: &DecodeBudget) -> Result<(), Refusal> {
        let need = self.bytes.saturating_add(more);
        if need > budget.total {
            return Err(Refusal::TooLarge {
                need,
                budget: budget.total,
            });
        }
        let held = budget.reserve(more)?;
        self.bytes += held.bytes;
        std::mem::forget(held);
        Ok(())
    }

    /// Runs `decode` (e.g. [`crate::extract::model::TraceRequest::decode_within`]) with every allocation it
    /// asks for charged to this reservation: its value, or why there is none.
    pub fn decode<T>(
        &mut self,
        budget: &DecodeBudget,
        decode: impl FnOnce(crate::extract::model::Budget<'_>) -> Result<T, DecodeError>,
    ) -> Result<T, Undecoded> {
        let (result, refused) = self.charged(budget, decode);
        result.map_err(|e| match (e, refused) {
            (DecodeError::Malformed(e), _) => Undecoded::Malformed(e),
            (DecodeError::OverBudget, Some(r)) => Undecoded::Refused(r),
            (DecodeError::OverBudget, None) => Undecoded::Busy,
        })
    }

    /// Runs `read` with every allocation it asks for charged to this reservation; returns what it returned and
    /// the first refusal of the budget, if one came.
    pub fn charged<T>(
        &mut self,
        budget: &DecodeBudget,
        read: impl FnOnce(crate::extract::model::Budget<'_>) -> T,
    ) -> (T, Option<Refusal>) {
        let mut refused = None;
        let result = read(&mut self.charge(budget, &mut refused));
        (result, refused)
    }

    /// A decode budget for [`crate::extract::model`]: grows this reservation by each allocation asked for,
    /// and keeps the first refusal in `refused`.
    fn charge<'r>(
        &'r mut self,
        budget: &'r DecodeBudget,
        refused: &'r mut Option<Refusal>,
    ) -> impl FnMut(usize) -> bool + 'r {
        move |more| match self.grow(more, budget) {
            Ok(()) => true,
            Err(r) => {
                refused.get_or_insert(r);
                false
            }
        }
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

/// Why a body held by a [`Reservation`] did not decode.
#[derive(Debug)]
pub enum Undecoded {
    /// Not valid protobuf: what is wrong, and where.
    Malformed(WireError),
    /// It needed more of the decode budget than it could have: for good or for now.
    Refused(Refusal),
    /// Over the budget with no refusal recorded: retry later.
    Busy,
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
    fn decoding_is_charged_what_it_builds_and_refused_past_the_budget() {
        use crate::extract::model::{AllKeys, DecodeError, TraceRequest};
        let body = empty_spans(1000);
        assert!(body.len() < 2100, "{} bytes on the wire", body.len());
        let budget = DecodeBudget::new(1 << 20);
        let mut held = budget.reserve(body.len()).expect("fits");
        let mut refused = None;
        let decoded =
            TraceRequest::decode_within(&body, &AllKeys, &mut held.charge(&budget, &mut refused))
                .expect("valid and within the budget");
        // Charged at least what the arenas hold, and under twice that (they grow by doubling).
        let spans = 1000 * std::mem::size_of::<crate::extract::model::Span>();
        let charged = held.bytes() - body.len();
        assert!(
            decoded.heap_bytes() <= charged,
            "{} > {charged}",
            decoded.heap_bytes()
        );
        assert!(
            charged >= spans && charged <= 2 * decoded.heap_bytes(),
            "{charged}"
        );
        assert_eq!(budget.in_use(), held.bytes());
        drop((decoded, held));
        assert_eq!(budget.in_use(), 0);

        // A budget too small for the whole request: refused for good, not for now, and nothing stays held.
        let small = DecodeBudget::new(body.len() + spans / 4);
        let mut held = small.reserve(body.len()).expect("the body fits");
        let mut refused = None;
        let e =
            TraceRequest::decode_within(&body, &AllKeys, &mut held.charge(&small, &mut refused));
        assert_eq!(e.err(), Some(DecodeError::OverBudget));
        assert!(
            matches!(refused, Some(Refusal::TooLarge { .. })),
            "{refused:?}"
        );
        drop(held);
        assert_eq!(small.in_use(), 0);

        // Room taken by others: refused for now.
        let shared = DecodeBudget::new(4 * spans);
        let _other = shared.reserve(3 * spans).expect("fits");
        let mut held = shared.reserve(body.len()).expect("fits");
        let mut refused = None;
        let e =
            TraceRequest::decode_within(&body, &AllKeys, &mut held.charge(&shared, &mut refused));
        assert_eq!(e.err(), Some(DecodeError::OverBudget));
        assert!(matches!(refused, Some(Refusal::Busy { .. })), "{refused:?}");
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
            let _ = weigh(&body[..cut], &LOG_RECORDS);
        }
        assert!(weigh(&[0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f], &LOG_RECORDS).is_err());
        assert!(weigh(&[0x0b], &LOG_RECORDS).is_err(), "a group never ended");
        // A group in an unknown field is skipped, as prost skips it.
        assert_eq!(weigh(&[0x2b, 0x08, 0x01, 0x2c], &LOG_RECORDS), Ok(0));
        assert!(weigh(&[0xff; 11], &LOG_RECORDS).is_err(), "11-byte varint");
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
        // 1,200 bytes can never fit a budget of 1,000: refused for good.
        assert!(matches!(
            body.frame().await,
            Some(Err(BodyError::Refused(Refusal::TooLarge { .. })))
        ));
        drop(body);
        assert_eq!(budget.in_use(), 0);
        // Beside another request's 800 bytes, a body of 400 is refused for now.
        let other = budget.reserve(800).expect("fits");
        let chunks: Vec<Result<http_body::Frame<Bytes>, std::convert::Infallible>> =
            vec![Ok(http_body::Frame::data(Bytes::from(vec![0u8; 400])))];
        let mut body = Box::pin(BudgetedBody::new(
            http_body_util::StreamBody::new(futures_util::stream::iter(chunks)),
            budget.clone(),
        ));
        assert!(matches!(
            body.frame().await,
            Some(Err(BodyError::Refused(Refusal::Busy { .. })))
        ));
        drop((body, other));
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
