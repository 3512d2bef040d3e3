//! The `spread_drift` processor's section of the pipeline file, and its settings with defaults filled in.

use serde::Deserialize;

use crate::duration::Duration;
use crate::signal::Signal;

/// Which way a spread change must go to matter.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// The canary is more erratic than the baseline (the default: a narrower canary is rarely trouble).
    #[default]
    Wider,
    Narrower,
    Both,
}

/// `processors.spread_drift` in the pipeline file.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpreadDriftSection {
    /// Signals compared. Default: memspan.request.allocated, memspan.rss.delta, memspan.rss.end,
    /// memspan.heap.allocated.
    pub signals: Option<Vec<String>>,
    /// The baseline cohort's label, when guessing is not wanted (see the README for the guess).
    pub baseline: Option<String>,
    /// Level of the sequential test per hour of looks (a pair's p-value falls this low within an hour of equal
    /// spreads with at most this probability), and of Benjamini-Hochberg across all live pairs. Default 0.01.
    pub alpha: Option<f64>,
    /// Smallest sd ratio (canary / baseline) worth an alert. Default 1.25.
    pub min_ratio: Option<f64>,
    /// wider (default), narrower or both.
    pub direction: Option<Direction>,
    /// Fewest samples per cohort in a look: non-overlapping windows are pooled until both cohorts have this many
    /// (at most 10 windows; a look still short then is begun again). Default 12.
    pub min_samples: Option<usize>,
    /// Looks without evidence before an open finding resolves. Default 3.
    pub resolve_after: Option<u32>,
    /// Watch each cohort's spread over time too (CUSUM). Default true.
    pub change_over_time: Option<bool>,
    /// The CUSUM's in-control average run length: on average one false alarm per key per this long. Default 30d.
    pub change_arl: Option<Duration>,
    /// Keys not seen for this long (event time) are forgotten. Default 10m.
    pub idle_timeout: Option<Duration>,
}

/// Settings in force.
#[derive(Clone, Debug, PartialEq)]
pub struct SpreadDriftSettings {
    pub signals: Vec<Signal>,
    pub baseline: Option<String>,
    pub alpha: f64,
    pub min_ratio: f64,
    pub direction: Direction,
    pub min_samples: usize,
    pub resolve_after: u32,
    pub change_over_time: bool,
    pub change_arl_ns: u64,
    pub idle_timeout_ns: u64,
}

impl Default for SpreadDriftSettings {
    fn default() -> Self {
        SpreadDriftSettings {
            signals: vec![
                Signal::RequestAllocated,
                Signal::RssDelta,
                Signal::RssEnd,
                Signal::HeapAllocated,
            ],
            baseline: None,
            alpha: 0.01,
            min_ratio: 1.25,
            direction: Direction::Wider,
            min_samples: 12,
            resolve_after: 3,
            change_over_time: true,
            change_arl_ns: 30 * 24 * 3600 * 1_000_000_000,
            idle_timeout_ns: 600 * 1_000_000_000,
        }
    }
}

impl SpreadDriftSettings {
    /// Fills defaults; an error names the key and says what is allowed.
    pub fn from_section(
        s: &SpreadDriftSection,
    ) -> Result<SpreadDriftSettings, (&'static str, String)> {
        let d = SpreadDriftSettings::default();
        let signals = match &s.signals {
            None => d.signals,
            Some(names) => names
                .iter()
                .map(|n| {
                    Signal::from_name(n).ok_or_else(|| {
                        (
                            "signals",
                            format!("processors.spread_drift.signals: unknown signal `{n}`"),
                        )
                    })
                })
                .collect::<Result<Vec<_>, _>>()?,
        };
        let alpha = s.alpha.unwrap_or(d.alpha);
        if !(alpha > 0.0 && alpha < 0.5) {
            return Err((
                "alpha",
                format!("processors.spread_drift.alpha must be in (0, 0.5), got {alpha}"),
            ));
        }
        let min_ratio = s.min_ratio.unwrap_or(d.min_ratio);
        if !(min_ratio >= 1.0 && min_ratio.is_finite()) {
            return Err((
                "min_ratio",
                format!("processors.spread_drift.min_ratio must be at least 1, got {min_ratio}"),
            ));
        }
        let min_samples = s.min_samples.unwrap_or(d.min_samples);
        if min_samples < 8 {
            return Err((
                "min_samples",
                "processors.spread_drift.min_samples must be at least 8".into(),
            ));
        }
        Ok(SpreadDriftSettings {
            signals,
            baseline: s.baseline.clone(),
            alpha,
            min_ratio,
            direction: s.direction.unwrap_or_default(),
            min_samples,
            resolve_after: s.resolve_after.unwrap_or(d.resolve_after).max(1),
            change_over_time: s.change_over_time.unwrap_or(d.change_over_time),
            change_arl_ns: s.change_arl.map_or(d.change_arl_ns, |x| x.as_nanos()),
            idle_timeout_ns: s.idle_timeout.map_or(d.idle_timeout_ns, |x| x.as_nanos()),
        })
    }
}
