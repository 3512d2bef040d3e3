//! The unit everything downstream of the receivers works on.

use std::sync::Arc;

use crate::signal::SignalValues;

/// A 16-byte W3C trace id, kept so that anomalies can point at the requests behind them.
pub type TraceId = [u8; 16];

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
    pub values: SignalValues,
}
