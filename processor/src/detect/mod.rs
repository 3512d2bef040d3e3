//! Detectors: pure functions of closed windows. No clocks, sockets or files: closed windows in, anomaly events
//! out, which keeps `replay` deterministic and the tests fast.
//!
//! The engine hands every detector each closed window in event-time order. A detector keeps whatever state it
//! needs between windows, bounded per key, and forgets keys it has not seen for a while (it can tell from the
//! window end times, which are event time).

use memdrift_exporter::Anomaly;

use crate::engine::ClosedWindow;

pub trait Detector: Send {
    /// The detector's name in the pipeline file and in logs.
    fn name(&self) -> &'static str;

    /// Looks at one closed window and appends any anomaly events (open, update, resolved) to `out`.
    fn on_window(&mut self, window: &ClosedWindow, out: &mut Vec<Anomaly>);

    /// How many keys the detector holds state for, so tests and self-telemetry can show it stays bounded.
    fn live_keys(&self) -> usize;
}
