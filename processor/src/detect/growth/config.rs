//! The `growth` processor's section of the pipeline file, and its settings with defaults filled in.

use serde::Deserialize;

use crate::detect::grid::{fraction, grid, steps, GridSettings, SettingsError, S};
use crate::duration::Duration;

/// The recent fit needs this many buckets (2m on the default 10 s grid).
const MIN_RECENT_STEPS: u64 = 12;

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
