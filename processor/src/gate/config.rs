//! The gate's settings: `extensions.gate` of the pipeline file (its section, `GateSection`, is read in
//! `config/`), with the defaults filled in and the values checked.

use crate::detect::spread_drift::SpreadDriftSettings;
use crate::engine::EngineConfig;
use crate::signal::Signal;

const S: u64 = 1_000_000_000;

/// The rule and the bounds in force.
#[derive(Clone, Debug, PartialEq)]
pub struct GateSettings {
    /// Signals compared: the spread detector's.
    pub signals: Vec<Signal>,
    pub tolerance: f64,
    pub confidence: f64,
    pub min_duration_ns: u64,
    pub min_samples: u64,
    /// A canary instance forecast to reach its limit sooner than this (seconds) cannot pass.
    pub min_time_to_limit_s: f64,
    pub history_ns: u64,
    pub max_services: usize,
    /// The engine's window and idle timeout (event time).
    pub window_ns: u64,
    pub idle_timeout_ns: u64,
}

impl GateSettings {
    /// The defaults for a pipeline's engine and spread detector (`None`: the detector's defaults).
    pub fn defaults(engine: &EngineConfig, spread: Option<&SpreadDriftSettings>) -> GateSettings {
        let d = SpreadDriftSettings::default();
        let spread = spread.unwrap_or(&d);
        GateSettings {
            signals: spread.signals.clone(),
            tolerance: spread.min_ratio,
            confidence: 0.95,
            min_duration_ns: 600 * S,
            min_samples: 200,
            min_time_to_limit_s: 3600.0,
            history_ns: 2 * 3600 * S,
            max_services: 10_000,
            window_ns: engine.window_ns,
            idle_timeout_ns: engine.idle_timeout_ns,
        }
    }

    /// Checks the values; an error names the key (under `extensions.gate`) and what is allowed.
    pub fn checked(self) -> Result<GateSettings, (&'static str, String)> {
        let t = self.tolerance;
        if !(t > 1.0 && t.is_finite()) {
            return Err((
                "tolerance",
                format!("extensions.gate.tolerance must be a ratio above 1 (e.g. 1.25), got {t}"),
            ));
        }
        let c = self.confidence;
        if !(0.5..1.0).contains(&c) {
            return Err((
                "confidence",
                format!("extensions.gate.confidence must be in [0.5, 1) (e.g. 0.95), got {c}"),
            ));
        }
        if self.history_ns < self.window_ns {
            return Err((
                "history",
                "extensions.gate.history must be at least one window (processors.windows.size)"
                    .into(),
            ));
        }
        if self.max_services == 0 {
            return Err((
                "max_services",
                "extensions.gate.max_services must be at least 1".into(),
            ));
        }
        Ok(self)
    }
}
