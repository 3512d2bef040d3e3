//! Detectors: pure functions of closed windows. No clocks, sockets or files: closed windows in, anomaly events
//! and derived gauges out, which keeps `replay` deterministic and the tests fast.
//!
//! The engine hands every detector each closed window in event-time order. A detector keeps whatever state it
//! needs between windows, bounded per key, and forgets keys it has not seen for a while (it can tell from the
//! window end times, which are event time).

pub mod growth;
pub mod spread_drift;

use memdrift_exporter::Anomaly;

use crate::engine::ClosedWindow;
use crate::sample::Exemplar;

/// One value of a derived metric, e.g. the sd ratio of a canary against its baseline.
#[derive(Clone, Debug, PartialEq)]
pub struct Gauge {
    /// The Prometheus name (`memdrift_*`).
    pub name: &'static str,
    pub help: &'static str,
    /// Label names and values; a given name always comes with the same label names.
    pub labels: Vec<(&'static str, String)>,
    pub value: f64,
}

/// What detectors produce for one window.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Findings {
    pub anomalies: Vec<Anomaly>,
    /// The current value of every derived gauge the detector keeps; a gauge absent here is gone.
    pub gauges: Vec<Gauge>,
}

pub trait Detector: Send {
    /// The detector's name in the pipeline file and in logs.
    fn name(&self) -> &'static str;

    /// Looks at one closed window and appends anomaly events (open, update, resolved) and gauges to `out`.
    fn on_window(&mut self, window: &ClosedWindow, out: &mut Findings);

    /// How many keys the detector holds state for, so tests and self-telemetry can show it stays bounded.
    fn live_keys(&self) -> usize;
}

/// Puts a window's exemplars on an event: the trace ids, and the span ids in the same order ("" where unknown;
/// left out when none is known), so the OTLP span of the event links to the requests' own spans.
pub fn set_exemplars(a: &mut Anomaly, exemplars: &[Exemplar]) {
    a.exemplar_trace_ids = exemplars.iter().map(|e| hex::encode(e.trace_id)).collect();
    a.exemplar_span_ids = if exemplars.iter().any(|e| e.span_id.is_some()) {
        exemplars
            .iter()
            .map(|e| e.span_id.map(hex::encode).unwrap_or_default())
            .collect()
    } else {
        Vec::new()
    };
}
