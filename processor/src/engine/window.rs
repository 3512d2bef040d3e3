//! What the engine hands the detectors: per-series summaries of closed windows, keyed by group and signal.

use std::sync::Arc;

use crate::sample::Exemplar;
use crate::signal::Signal;

/// What a series is grouped by besides service and signal.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    /// An A/B cohort; `None` when the samples carried no cohort label.
    Cohort(Option<Arc<str>>),
    /// One instance (process or pod) of the service.
    Instance(Arc<str>),
}

impl Scope {
    pub fn kind(&self) -> &'static str {
        match self {
            Scope::Cohort(_) => "cohort",
            Scope::Instance(_) => "instance",
        }
    }
}

/// (service, cohort) or (service, instance): the samples of one group share a key per signal.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GroupKey {
    pub service: Arc<str>,
    pub scope: Scope,
}

/// One series: a group and a signal.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SeriesKey {
    pub group: GroupKey,
    pub signal: Signal,
}

/// The newest pane of a window (its last `step`), for detectors that work on a regular grid.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PaneSummary {
    pub count: u64,
    pub min: f64,
    pub max: f64,
    /// The value with the latest event time.
    pub last: f64,
}

/// The summary of one series over one closed window.
#[derive(Clone, Debug, PartialEq)]
pub struct WindowSummary {
    pub key: SeriesKey,
    pub count: u64,
    pub mean: f64,
    pub sd: f64,
    pub median: f64,
    /// Raw median absolute deviation from the median.
    pub mad: f64,
    pub p95: f64,
    pub min: f64,
    pub max: f64,
    /// The values behind the order statistics (all of them, or a uniform sample when a pane overflowed its
    /// reservoir), for detectors that test distributions; in arrival order within each step.
    pub values: Vec<f64>,
    /// For each value, a hash of the instance that sent it: a cohort's values split by process, in time order.
    pub instance_tags: Vec<u32>,
    /// The requests behind the largest values, largest first.
    pub exemplars: Vec<Exemplar>,
    /// The last step of the window; `None` when that step had no sample.
    pub newest_pane: Option<PaneSummary>,
}

/// Every series with data in one window, ordered by key.
#[derive(Clone, Debug, PartialEq)]
pub struct ClosedWindow {
    pub start_unix_nano: u64,
    pub end_unix_nano: u64,
    pub summaries: Vec<WindowSummary>,
}
