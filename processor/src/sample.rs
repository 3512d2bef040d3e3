//! The unit everything downstream of the receivers works on.

use std::sync::Arc;

use crate::signal::SignalValues;

/// A 16-byte W3C trace id, kept so that anomalies can point at the requests behind them.
pub type TraceId = [u8; 16];
/// An 8-byte span id: with the trace id, what an OTLP span link needs to name one request's span.
pub type SpanId = [u8; 8];

/// A request an anomaly points at: its trace, and its span when the sender gave a valid one.
pub use memdrift_anomaly::Exemplar;

/// The latest event time memdrift accepts: 2262-04-11, the last instant an OTLP/JSON signed int64 of nanoseconds
/// can say. Later times are dropped at extraction as `future_timestamp`, so every window and pane computation
/// on event time (a window and a step past the newest sample) stays far inside `u64` and `i64`.
pub const LATEST_EVENT_TIME: u64 = i64::MAX as u64;

/// What one span (one request) or one metric point said about memory.
#[derive(Clone, Debug, PartialEq)]
pub struct MemorySample {
    pub service: Arc<str>,
    /// `service.instance.id`, else `host.name`, else `k8s.pod.name`, else "unknown".
    pub instance: Arc<str>,
    /// The A/B cohort label, when the span or its resource carried one.
    pub cohort: Option<Arc<str>>,
    /// Event time: the span's end, or the metric point's time.
    pub time_unix_nano: u64,
    pub trace_id: Option<TraceId>,
    /// The span's id (metric points have none).
    pub span_id: Option<SpanId>,
    pub values: SignalValues,
}
