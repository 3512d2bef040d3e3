//! The pure heart shared by `run` and `replay`: samples in; closed windows and anomaly events out.

use std::collections::BTreeMap;
use std::io::{Cursor, Seek, Write};

use memdrift_anomaly::Anomaly;

use crate::checkpoint::{self, CheckpointError, Snapshot, SnapshotWriter, SETTINGS};
use crate::detect::{Detector, Findings, Gauge};
use crate::engine::{ClosedWindow, Engine, EngineConfig, EngineState};
use crate::extract::DropReason;
use crate::gate::SharedBoard;
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
    /// Samples none of whose values the engine kept, and their values.
    pub rejected_samples: u64,
    pub rejected_sample_values: u64,
}

pub struct Core {
    engine: Engine,
    detectors: Vec<Box<dyn Detector>>,
    /// The latest value of every derived gauge (by name and labels) and the window end that set it: windows
    /// close per source, so one window carries only some series' gauges.
    gauges: BTreeMap<GaugeKey, (Gauge, u64)>,
    /// The rollout gate's board, fed every window and its findings (shared with the gate's HTTP handlers).
    gate: Option<SharedBoard>,
}

/// The engine's section of a checkpoint.
const ENGINE: &str = "engine";

/// A gauge's name and labels.
type GaugeKey = (&'static str, Vec<(&'static str, String)>);

impl Core {
    /// An instance keeps series of the signals its detectors read ([`Detector::instance_signals`]) only.
    pub fn new(mut engine: EngineConfig, detectors: Vec<Box<dyn Detector>>) -> Core {
        engine.instance_signals = [false; Signal::COUNT];
        for signal in detectors.iter().flat_map(|d| d.instance_signals()) {
            engine.instance_signals[signal as usize] = true;
        }
        Core {
            engine: Engine::new(engine),
            detectors,
            gauges: BTreeMap::new(),
            gate: None,
        }
    }

    /// Feeds `board` every closed window and what the detectors found in it.
    pub fn with_gate(mut self, board: SharedBoard) -> Core {
        self.gate = Some(board);
        self
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    pub fn detectors(&self) -> &[Box<dyn Detector>] {
        &self.detectors
    }

    /// Writes the state of the engine and every detector as a checkpoint; `settings` names the settings it was
    /// built under (`checkpoint::store::settings`).
    pub fn save<W: Write + Seek>(
        &self,
        settings: &str,
        out: &mut SnapshotWriter<W>,
    ) -> Result<(), CheckpointError> {
        out.raw(SETTINGS, settings.as_bytes())?;
        out.section(ENGINE, &|w| {
            checkpoint::encode(ENGINE, &self.engine.state(), w)
        })?;
        for d in &self.detectors {
            out.section(d.name(), &|w| d.save(w))?;
        }
        Ok(())
    }

    /// [`Core::save`] into memory: the checkpoint file's bytes.
    pub fn save_to_bytes(&self, settings: &str) -> Result<Vec<u8>, CheckpointError> {
        let io = |e: std::io::Error| CheckpointError::Encode {
            section: "checkpoint".into(),
            message: e.to_string(),
        };
        let mut w = SnapshotWriter::new(Cursor::new(Vec::new())).map_err(io)?;
        self.save(settings, &mut w)?;
        Ok(w.finish().map_err(io)?.0.into_inner())
    }

    /// Carries on from a checkpoint saved under the same `settings`. All or nothing: on an error the core is
    /// as it was.
    pub fn restore(&mut self, snapshot: &Snapshot, settings: &str) -> Result<(), CheckpointError> {
        snapshot.check_settings(settings)?;
        let engine: EngineState = checkpoint::decode(ENGINE, snapshot.section(ENGINE)?)?;
        let before = (self.detectors.iter())
            .map(|d| {
                let mut state = Vec::new();
                d.save(&mut state).map(|()| state)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let restored = self
            .detectors
            .iter_mut()
            .try_for_each(|d| d.restore(snapshot.section(d.name())?));
        if let Err(e) = restored {
            for (d, state) in self.detectors.iter_mut().zip(&before) {
                d.restore(state)?;
            }
            return Err(e);
        }
        self.engine = Engine::restore(self.engine.config().clone(), engine);
        Ok(())
    }

    /// Adds samples and closes the windows their event time allows.
    pub fn ingest(&mut self, samples: &[MemorySample]) -> Output {
        let before = self.engine.stats().clone();
        let dropped = self.engine.ingest(samples);
        let after = self.engine.stats();
        let rejected = (
            after.rejected_samples - before.rejected_samples,
            after.rejected_sample_values - before.rejected_sample_values,
        );
        let windows = self.engine.advance();
        let mut out = self.detect(windows);
        out.dropped = dropped;
        (out.rejected_samples, out.rejected_sample_values) = rejected;
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
        let mut newest = None;
        for w in &windows {
            let mut findings = Findings::default();
            for d in &mut self.detectors {
                d.on_window(w, &mut findings);
            }
            if let Some(board) = &self.gate {
                board.lock().observe(w, &findings);
            }
            anomalies.append(&mut findings.anomalies);
            for g in findings.gauges {
                self.gauges
                    .insert((g.name, g.labels.clone()), (g, w.end_unix_nano));
            }
            newest = newest.max(Some(w.end_unix_nano));
        }
        // A gauge no window has set for the idle timeout is gone with its series.
        let gauges = newest.map(|end| {
            let horizon = end.saturating_sub(self.engine.config().idle_timeout_ns);
            self.gauges.retain(|_, (_, set)| *set >= horizon);
            self.gauges.values().map(|(g, _)| g.clone()).collect()
        });
        Output {
            windows,
            anomalies,
            gauges,
            ..Output::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A detector that reads the instance series of `signals` and says nothing.
    struct Reads(Vec<Signal>);

    impl Detector for Reads {
        fn name(&self) -> &'static str {
            "reads"
        }
        fn on_window(&mut self, _: &ClosedWindow, _: &mut Findings) {}
        fn live_keys(&self) -> usize {
            0
        }
        fn instance_signals(&self) -> Vec<Signal> {
            self.0.clone()
        }
        fn save(&self, _: &mut dyn std::io::Write) -> Result<(), CheckpointError> {
            Ok(())
        }
        fn restore(&mut self, _: &[u8]) -> Result<(), CheckpointError> {
            Ok(())
        }
    }

    #[test]
    fn instances_keep_the_signals_some_detector_reads() {
        let detectors: Vec<Box<dyn Detector>> = vec![
            Box::new(Reads(vec![Signal::RssEnd, Signal::Limit])),
            Box::new(Reads(vec![Signal::HeapAllocated, Signal::RssEnd])),
            Box::new(Reads(Vec::new())),
        ];
        let core = Core::new(EngineConfig::default(), detectors);
        let kept: Vec<Signal> = (Signal::ALL.into_iter())
            .filter(|s| core.engine().config().instance_signals[*s as usize])
            .collect();
        assert_eq!(
            kept,
            vec![Signal::RssEnd, Signal::HeapAllocated, Signal::Limit]
        );
    }
}
