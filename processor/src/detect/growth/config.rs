//! The `growth` and `leak` processors' sections of the pipeline file, and their settings with defaults filled in.

use serde::Deserialize;

use crate::config::Duration;
use crate::signal::Signal;

const S: u64 = 1_000_000_000;
/// The recent fit needs this many buckets (2m on the default 10 s grid).
const MIN_RECENT_STEPS: u64 = 12;
/// The leak test needs this much floor history, in buckets (10m on the default 10 s grid).
const MIN_SPAN_STEPS: u64 = 60;

/// `n` steps as a duration a person reads, e.g. "2m".
fn steps(n: u64, step_ns: u64) -> String {
    humantime::format_duration(std::time::Duration::from_nanos(n.saturating_mul(step_ns)))
        .to_string()
}

/// `processors.growth` in the pipeline file.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrowthSection {
    /// Memory signals watched per instance, first present wins. Default: container.memory.working_set,
    /// process.memory.usage, memspan.rss.end, container.memory.usage.
    pub signals: Option<Vec<String>>,
    /// A limit in bytes for instances that report none (memspan.limit or the container limit metric).
    pub limit_bytes: Option<f64>,
    /// Warn when the limit may be reached within this much time (plus the pipeline's own lag). Default 15m.
    pub horizon: Option<Duration>,
    /// Nothing is forecast for this long after an instance starts or restarts. Default 5m.
    pub warmup: Option<Duration>,
    /// The longest stretch of history the trend is fitted on. Default 30m.
    pub lookback: Option<Duration>,
    /// The recent stretch checked against the long trend (a one-time step settles after this). Default 10m.
    pub recent: Option<Duration>,
    /// The peak envelope is the running maximum over this span: at least one GC cycle. Default 5m.
    pub envelope: Option<Duration>,
    /// Headroom (limit minus envelope) must be below this fraction of the limit to warn. Default 0.5.
    pub max_headroom: Option<f64>,
    /// Confidence level of the slope interval. Default 0.9.
    pub level: Option<f64>,
    /// A drop below (1 - this) times the recent floor is a restart. Default 0.3.
    pub restart_drop: Option<f64>,
    /// Evaluations with a fresh sample (one per step at most) that neither warn nor hold before an open
    /// finding resolves: on sparse input a clean minute counts once, not once per step. Default 30.
    pub resolve_after: Option<u32>,
    /// Instances not seen for this long (event time) are forgotten. Default 10m.
    pub idle_timeout: Option<Duration>,
    /// Most instances tracked; more are ignored. Default 10000.
    pub max_instances: Option<usize>,
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

/// What both detectors need to keep a per-instance grid.
#[derive(Clone, Debug, PartialEq)]
pub struct GridSettings {
    pub signals: Vec<Signal>,
    pub warmup_ns: u64,
    pub restart_drop: f64,
    pub idle_timeout_ns: u64,
    pub max_instances: usize,
}

impl Default for GridSettings {
    fn default() -> Self {
        GridSettings {
            signals: vec![
                Signal::ContainerWorkingSet,
                Signal::ProcessMemoryUsage,
                Signal::RssEnd,
                Signal::ContainerUsage,
            ],
            warmup_ns: 300 * S,
            restart_drop: 0.3,
            idle_timeout_ns: 600 * S,
            max_instances: 10_000,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct GrowthSettings {
    pub grid: GridSettings,
    pub limit_bytes: Option<f64>,
    pub horizon_ns: u64,
    pub lookback_ns: u64,
    pub recent_ns: u64,
    pub envelope_ns: u64,
    pub max_headroom: f64,
    pub level: f64,
    pub resolve_after: u32,
}

impl Default for GrowthSettings {
    fn default() -> Self {
        GrowthSettings {
            grid: GridSettings::default(),
            limit_bytes: None,
            horizon_ns: 900 * S,
            lookback_ns: 1800 * S,
            recent_ns: 600 * S,
            envelope_ns: 300 * S,
            max_headroom: 0.5,
            level: 0.9,
            resolve_after: 30,
        }
    }
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

type SettingsError = (&'static str, String);

fn signals(kind: &str, names: &Option<Vec<String>>) -> Result<Vec<Signal>, SettingsError> {
    match names {
        None => Ok(GridSettings::default().signals),
        Some(names) if names.is_empty() => Err((
            "signals",
            format!("processors.{kind}.signals must name at least one signal"),
        )),
        Some(names) => names
            .iter()
            .map(|n| {
                Signal::from_name(n).ok_or_else(|| {
                    (
                        "signals",
                        format!("processors.{kind}.signals: unknown signal `{n}`"),
                    )
                })
            })
            .collect(),
    }
}

fn fraction(kind: &str, key: &'static str, v: f64) -> Result<f64, SettingsError> {
    if v > 0.0 && v < 1.0 {
        Ok(v)
    } else {
        Err((
            key,
            format!("processors.{kind}.{key} must be in (0, 1), got {v}"),
        ))
    }
}

fn grid(
    kind: &str,
    names: &Option<Vec<String>>,
    warmup: Option<Duration>,
    restart_drop: Option<f64>,
    idle: Option<Duration>,
    max_instances: Option<usize>,
) -> Result<GridSettings, SettingsError> {
    let d = GridSettings::default();
    Ok(GridSettings {
        signals: signals(kind, names)?,
        warmup_ns: warmup.map_or(d.warmup_ns, |x| x.as_nanos()),
        restart_drop: fraction(kind, "restart_drop", restart_drop.unwrap_or(d.restart_drop))?,
        idle_timeout_ns: idle.map_or(d.idle_timeout_ns, |x| x.as_nanos()),
        max_instances: max_instances.unwrap_or(d.max_instances).max(1),
    })
}

impl GrowthSettings {
    /// Fills defaults; an error names the key and says what is allowed. The shortest stretches are counted in
    /// grid buckets (engine steps): a trend needs points, whatever the time scale.
    pub fn from_section(s: &GrowthSection, step_ns: u64) -> Result<GrowthSettings, SettingsError> {
        let d = GrowthSettings::default();
        let k = "growth";
        let g = grid(
            k,
            &s.signals,
            s.warmup,
            s.restart_drop,
            s.idle_timeout,
            s.max_instances,
        )?;
        if let Some(l) = s.limit_bytes {
            if !(l > 0.0 && l.is_finite()) {
                return Err((
                    "limit_bytes",
                    format!("processors.growth.limit_bytes must be positive, got {l}"),
                ));
            }
        }
        let lookback_ns = s.lookback.map_or(d.lookback_ns, |x| x.as_nanos());
        let recent_ns = s.recent.map_or(d.recent_ns, |x| x.as_nanos());
        if recent_ns < MIN_RECENT_STEPS * step_ns || recent_ns > lookback_ns {
            return Err((
                "recent",
                format!(
                    "processors.growth.recent must be at least {MIN_RECENT_STEPS} steps ({}) and at most the lookback",
                    steps(MIN_RECENT_STEPS, step_ns)
                ),
            ));
        }
        Ok(GrowthSettings {
            grid: g,
            limit_bytes: s.limit_bytes,
            horizon_ns: s.horizon.map_or(d.horizon_ns, |x| x.as_nanos()),
            lookback_ns,
            recent_ns,
            envelope_ns: s.envelope.map_or(d.envelope_ns, |x| x.as_nanos()),
            max_headroom: fraction(k, "max_headroom", s.max_headroom.unwrap_or(d.max_headroom))?,
            level: fraction(k, "level", s.level.unwrap_or(d.level))?,
            resolve_after: s.resolve_after.unwrap_or(d.resolve_after).max(1),
        })
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
