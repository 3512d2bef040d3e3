//! The `leak` processor's section of the pipeline file, and its settings with defaults filled in.

use serde::Deserialize;

use crate::detect::grid::{grid, steps, GridSettings, SettingsError, S};
use crate::duration::Duration;

/// The leak test needs this much floor history, in buckets (10m on the default 10 s grid).
const MIN_SPAN_STEPS: u64 = 60;

/// `processors.leak` in the pipeline file.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeakSection {
    /// Memory signals watched per instance, first present wins (same default as `growth`).
    pub signals: Option<Vec<String>>,
    /// Level of the Mann-Kendall test. Default 0.01.
    pub alpha: Option<f64>,
    /// Smallest floor slope worth a finding, bytes per second. Default 50000 (about 4 GB a day).
    pub min_slope_bytes_per_s: Option<f64>,
    /// Longest stretch of floor history tested. Default 60m.
    pub lookback: Option<Duration>,
    /// Shortest stretch of floor history tested. Default 20m.
    pub min_span: Option<Duration>,
    /// The post-GC floor is the running minimum over this span: at least one GC cycle. Default 5m.
    pub floor_window: Option<Duration>,
    /// Nothing is tested for this long after an instance starts or restarts. Default 5m.
    pub warmup: Option<Duration>,
    /// A drop below (1 - this) times the recent floor is a restart. Default 0.3.
    pub restart_drop: Option<f64>,
    /// Evaluations (one per minute) without a finding before an open one resolves. Default 3.
    pub resolve_after: Option<u32>,
    /// Instances not seen for this long (event time) are forgotten. Default 10m.
    pub idle_timeout: Option<Duration>,
    /// Most instances tracked; more are ignored. Default 10000.
    pub max_instances: Option<usize>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct LeakSettings {
    pub grid: GridSettings,
    pub alpha: f64,
    pub min_slope: f64,
    pub lookback_ns: u64,
    pub min_span_ns: u64,
    pub floor_window_ns: u64,
    pub resolve_after: u32,
}

impl Default for LeakSettings {
    fn default() -> Self {
        LeakSettings {
            grid: GridSettings::default(),
            alpha: 0.01,
            min_slope: 50_000.0,
            lookback_ns: 3600 * S,
            min_span_ns: 1200 * S,
            floor_window_ns: 300 * S,
            resolve_after: 3,
        }
    }
}

impl LeakSettings {
    /// Fills defaults; an error names the key and says what is allowed (shortest stretches in engine steps, as
    /// for growth).
    pub fn from_section(s: &LeakSection, step_ns: u64) -> Result<LeakSettings, SettingsError> {
        let d = LeakSettings::default();
        let k = "leak";
        let g = grid(
            k,
            &s.signals,
            s.warmup,
            s.restart_drop,
            s.idle_timeout,
            s.max_instances,
        )?;
        let alpha = s.alpha.unwrap_or(d.alpha);
        if !(alpha > 0.0 && alpha < 0.5) {
            return Err((
                "alpha",
                format!("processors.leak.alpha must be in (0, 0.5), got {alpha}"),
            ));
        }
        let min_slope = s.min_slope_bytes_per_s.unwrap_or(d.min_slope);
        if !(min_slope > 0.0 && min_slope.is_finite()) {
            return Err((
                "min_slope_bytes_per_s",
                format!("processors.leak.min_slope_bytes_per_s must be positive, got {min_slope}"),
            ));
        }
        let lookback_ns = s.lookback.map_or(d.lookback_ns, |x| x.as_nanos());
        let min_span_ns = s.min_span.map_or(d.min_span_ns, |x| x.as_nanos());
        if min_span_ns < MIN_SPAN_STEPS * step_ns || min_span_ns > lookback_ns {
            return Err((
                "min_span",
                format!(
                    "processors.leak.min_span must be at least {MIN_SPAN_STEPS} steps ({}) and at most the lookback",
                    steps(MIN_SPAN_STEPS, step_ns)
                ),
            ));
        }
        Ok(LeakSettings {
            grid: g,
            alpha,
            min_slope,
            lookback_ns,
            min_span_ns,
            floor_window_ns: s.floor_window.map_or(d.floor_window_ns, |x| x.as_nanos()),
            resolve_after: s.resolve_after.unwrap_or(d.resolve_after).max(1),
        })
    }
}
