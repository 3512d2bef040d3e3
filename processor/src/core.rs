//! The pure heart shared by `run` and `replay`: samples in; closed windows and anomaly events out.

use memdrift_anomaly::Anomaly;

use crate::detect::{Detector, Findings, Gauge};
use crate::engine::{ClosedWindow, Engine, EngineConfig};
use crate::extract::DropReason;
use crate::sample::MemorySample;
use crate::signal::Signal;

/// What one step of the core produced.
#[derive(Debug, Default)]
pub struct Output {
    pub windows: Vec<ClosedWindow>,
    pub anomalies: Vec<Anomaly>,
    /// Derived gauges after the last window of this step (`None` when no window closed).
    pub gauges: Option<Vec<Gauge>>,
    /// Values the engine dropped (late, key overflow).
    pub dropped: Vec<(DropReason, Signal)>,
}

pub struct Core {
    engine: Engine,
    detectors: Vec<Box<dyn Detector>>,
}

impl Core {
    pub fn new(engine: EngineConfig, detectors: Vec<Box<dyn Detector>>) -> Core {
        Core {
            engine: Engine::new(engine),
            detectors,
        }
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    pub fn detectors(&self) -> &[Box<dyn Detector>] {
        &self.detectors
    }

    /// Adds samples and closes the windows their event time allows.
    pub fn ingest(&mut self, samples: &[MemorySample]) -> Output {
        let dropped = self.engine.ingest(samples);
        let windows = self.engine.advance();
        let mut out = self.detect(windows);
        out.dropped = dropped;
        out
    }

    /// The service's timer: closes the windows of sources that have gone quiet, up to `watermark` (event-time
    /// ns, the wall clock less a delay).
    pub fn tick(&mut self, watermark: u64) -> Output {
        let windows = self.engine.tick(watermark);
        self.detect(windows)
    }

    /// Closes every window that holds data: the end of a replay.
    pub fn finish(&mut self) -> Output {
        let windows = self.engine.finish();
        self.detect(windows)
    }

    fn detect(&mut self, windows: Vec<ClosedWindow>) -> Output {
        let mut anomalies = Vec::new();
        let mut gauges = None;
        for w in &windows {
            let mut findings = Findings::default();
            for d in &mut self.detectors {
                d.on_window(w, &mut findings);
            }
            anomalies.append(&mut findings.anomalies);
            gauges = Some(findings.gauges);
        }
        Output {
            windows,
            anomalies,
            gauges,
            dropped: Vec::new(),
        }
    }
}
