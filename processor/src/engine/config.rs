//! The engine's settings, built from the pipeline's `windows` processor.

use crate::signal::Signal;

/// Engine settings, in nanoseconds of event time. Built from the pipeline's `windows` processor.
#[derive(Clone, Debug, PartialEq)]
pub struct EngineConfig {
    pub window_ns: u64,
    pub step_ns: u64,
    /// How far behind its own newest event time a source's sample may arrive and still be used.
    pub allowed_lateness_ns: u64,
    /// An instance this far behind its service's newest event time no longer holds the cohort windows back.
    pub source_idle_ns: u64,
    pub idle_timeout_ns: u64,
    pub max_keys: usize,
    /// Values a cohort series keeps per pane (a uniform reservoir beyond): what the spread comparison reads.
    pub max_samples_per_pane: usize,
    /// Values an instance series keeps per pane. The per-instance detectors read a pane's extremes and last
    /// value, which are exact whatever this is; the values only give an instance window's median, MAD and p95
    /// (replay summaries). Kept small, an instance costs the same memory at any request rate.
    pub instance_samples_per_pane: usize,
    /// Trace ids kept per pane and reported per window: those of the largest values.
    pub exemplars: usize,
    /// The signals an instance keeps a series of, by [`Signal`] index: those the per-instance detectors read
    /// (set by `Core::new` from its detectors; every signal by default). A cohort keeps every signal.
    pub instance_signals: [bool; Signal::COUNT],
}

impl Default for EngineConfig {
    fn default() -> Self {
        const S: u64 = 1_000_000_000;
        EngineConfig {
            window_ns: 60 * S,
            step_ns: 10 * S,
            allowed_lateness_ns: 5 * S,
            source_idle_ns: 300 * S,
            idle_timeout_ns: 600 * S,
            max_keys: 100_000,
            max_samples_per_pane: 512,
            instance_samples_per_pane: 64,
            exemplars: 5,
            instance_signals: [true; Signal::COUNT],
        }
    }
}

impl EngineConfig {
    pub(super) fn panes_per_window(&self) -> i64 {
        (self.window_ns / self.step_ns) as i64
    }

    /// How long a new service's cohort windows wait for its sources to be heard from: two windows, or
    /// `source_idle` if shorter.
    pub(super) fn discovery_ns(&self) -> u64 {
        self.window_ns.saturating_mul(2).min(self.source_idle_ns)
    }
}
