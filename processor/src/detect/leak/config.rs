//! The `leak` processor's section of the pipeline file, and its settings with defaults filled in.

use serde::Deserialize;

use crate::detect::grid::{grid, steps, GridSettings, SettingsError, S};
use crate::duration::Duration;

/// The leak test needs this much floor history, in buckets (10m on the default 10 s grid).
const MIN_SPAN_STEPS: u64 = 60;

/// A fast rise is judged on at least this many buckets (8 floor points).
const MIN_FAST_STEPS: u64 = 48;

/// `value`, or the default, when positive and finite; else an error naming `key`.
fn positive(key: &'static str, value: Option<f64>, default: f64) -> Result<f64, SettingsError> {
    let v = value.unwrap_or(default);
    if v > 0.0 && v.is_finite() {
        Ok(v)
    } else {
        Err((
            key,
            format!("processors.leak.{key} must be positive, got {v}"),
        ))
    }
}

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
    /// Smallest floor rise worth a finding, as a fraction of the floor's own level per hour. Default 0.1.
    pub min_growth_per_hour: Option<f64>,
    /// A floor rising by at least this fraction of its own level per hour (1.0: it would double within the hour)
    /// is a leak as soon as `fast_span` shows it; slower rises must last `min_span`. Default 1.0.
    pub fast_growth_per_hour: Option<f64>,
    /// Smallest floor slope the fast test names, bytes per second: in ten minutes a slower rise cannot be told
    /// from a cache filling up or a creep that will stop, so it must last `min_span`. Default 500000 (1.8 GB an
    /// hour).
    pub fast_min_slope_bytes_per_s: Option<f64>,
    /// The stretch a fast rise is judged on (beside as much history before it, for the floor's earlier range).
    /// Default 10m.
    pub fast_span: Option<Duration>,
    /// Floor history held per instance (one point a minute). Default 2h.
    pub lookback: Option<Duration>,
    /// How long a slower rise must have lasted, without slowing, to be a leak: longer than a cache filling up
    /// or a warm-up. Default 90m.
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
    pub min_growth: f64,
    pub fast_growth: f64,
    pub fast_min_slope: f64,
    pub fast_span_ns: u64,
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
            min_growth: 0.1,
            fast_growth: 1.0,
            fast_min_slope: 500_000.0,
            fast_span_ns: 600 * S,
            lookback_ns: 7200 * S,
            min_span_ns: 5400 * S,
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
        let min_slope = positive(
            "min_slope_bytes_per_s",
            s.min_slope_bytes_per_s,
            d.min_slope,
        )?;
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
        let min_growth = positive("min_growth_per_hour", s.min_growth_per_hour, d.min_growth)?;
        let fast_growth = positive(
            "fast_growth_per_hour",
            s.fast_growth_per_hour,
            d.fast_growth,
        )?;
        let fast_min_slope = positive(
            "fast_min_slope_bytes_per_s",
            s.fast_min_slope_bytes_per_s,
            d.fast_min_slope,
        )?;
        let fast_span_ns = s.fast_span.map_or(d.fast_span_ns, |x| x.as_nanos());
        if fast_span_ns < MIN_FAST_STEPS * step_ns || fast_span_ns > min_span_ns {
            return Err((
                "fast_span",
                format!(
                    "processors.leak.fast_span must be at least {MIN_FAST_STEPS} steps ({}) and at most min_span",
                    steps(MIN_FAST_STEPS, step_ns)
                ),
            ));
        }
        Ok(LeakSettings {
            grid: g,
            alpha,
            min_slope,
            min_growth,
            fast_growth,
            fast_min_slope,
            fast_span_ns,
            lookback_ns,
            min_span_ns,
            floor_window_ns: s.floor_window.map_or(d.floor_window_ns, |x| x.as_nanos()),
            resolve_after: s.resolve_after.unwrap_or(d.resolve_after).max(1),
        })
    }
}
