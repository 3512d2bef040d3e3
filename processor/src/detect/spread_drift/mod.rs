//! `spread_drift`: is a canary's memory more erratic than its baseline's? And has a cohort's spread changed?
//!
//! Per (service, signal) and closed window, each canary cohort is compared with the baseline cohort:
//!
//! 1. **Test.** Brown-Forsythe (median-centred Levene), which holds its false-alarm rate on heavy-tailed and
//!    skewed data. For process-level signals (RSS, heap: strongly autocorrelated from one request to the next
//!    on a process) the lag-1 autocorrelation of the test's deviations is estimated per instance and the test
//!    is corrected by the variance inflation factor (effective sample size). Per-request signals are tested
//!    directly.
//! 2. **Effect.** The sd ratio with Bonett's kurtosis-robust interval, and the MAD ratio.
//! 3. **Repeated looks.** Every window length (non-overlapping windows, so the estimates are independent), the
//!    window's ln(sd ratio) and its standard error feed a mixture SPRT per pair, whose always-valid p-value may
//!    be read at every evaluation; Benjamini-Hochberg across all pairs evaluated together controls the false
//!    discovery rate across services and signals.
//! 4. **Decision.** A pair opens when its sequential p-value is a BH discovery *and* the window's sd ratio
//!    passes `min_ratio` in the configured direction with its interval excluding 1; it updates at each
//!    evaluation while that holds, and resolves after `resolve_after` evaluations without it.
//!
//! Within each cohort a CUSUM watches the spread over time ([`change`]).

mod baseline;
mod change;
pub mod config;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use memdrift_exporter::anomaly::{rfc3339, Cohorts, Interval as EventInterval};
use memdrift_exporter::{Anomaly, AnomalyKind, AnomalyState};

pub use baseline::{choose_baseline, CohortInfo};
pub use config::{Direction, SpreadDriftSection, SpreadDriftSettings};

use super::{set_exemplars, Detector, Findings, Gauge};
use crate::engine::{ClosedWindow, Scope, WindowSummary};
use crate::sample::Exemplar;
use crate::signal::Signal;
use crate::stats::{
    benjamini_hochberg, bonett_sd_ratio_from, brown_forsythe_from, cusum_threshold,
    lag_autocorrelations, median_in_place, variance_inflation, Interval, Msprt, SpreadSummary,
};
use change::SpreadChange;

/// The mSPRT mixing scale on ln(sd ratio): tuned to ratios around 1.35, the middle of what matters.
const MSPRT_TAU: f64 = 0.3;
/// Cohorts tracked per (service, signal); more are ignored (a service rarely runs more than a few at once).
const MAX_COHORTS: usize = 16;

struct PairState {
    msprt: Msprt,
    open: bool,
    clean: u32,
    last_seen: u64,
}

struct CohortState {
    first_seen: u64,
    last_seen: u64,
    change: SpreadChange,
    change_open: bool,
    change_clean: u32,
}

#[derive(Default)]
struct SeriesState {
    cohorts: BTreeMap<Arc<str>, CohortState>,
    /// Keyed by (baseline, canary).
    pairs: BTreeMap<(Arc<str>, Arc<str>), PairState>,
    last_seen: u64,
}

/// One canary-baseline comparison in one window.
struct Comparison {
    service: Arc<str>,
    signal: Signal,
    baseline: Arc<str>,
    canary: Arc<str>,
    test_statistic: f64,
    window_p: f64,
    sd_ratio: Interval,
    mad_ratio: f64,
    rho: Option<f64>,
    counts: (u64, u64),
    exemplars: Vec<Exemplar>,
}

/// A cohort's label and its summary in the window at hand.
type CohortWindow<'a> = (Arc<str>, &'a WindowSummary);

pub struct SpreadDrift {
    settings: SpreadDriftSettings,
    cusum_h: f64,
    series: HashMap<(Arc<str>, Signal), SeriesState>,
}

impl SpreadDrift {
    pub fn new(settings: SpreadDriftSettings, window_ns: u64) -> SpreadDrift {
        let arl_windows = (settings.change_arl_ns / window_ns.max(1)).max(10) as f64;
        SpreadDrift {
            cusum_h: cusum_threshold(change::K, arl_windows),
            settings,
            series: HashMap::new(),
        }
    }

    fn passes(&self, ratio: &Interval) -> bool {
        let r = self.settings.min_ratio;
        let wider = ratio.value >= r && ratio.low > 1.0;
        let narrower = ratio.value <= 1.0 / r && ratio.high < 1.0;
        match self.settings.direction {
            Direction::Wider => wider,
            Direction::Narrower => narrower,
            Direction::Both => wider || narrower,
        }
    }
}

/// What one cohort's window contributes to comparisons: its spread summary and, for process-level signals, the
/// autocorrelation of the test's deviations within each instance.
///
/// Process-level signals (RSS, heap) are centred on each instance's own median first: their level differs from
/// process to process for reasons unrelated to the release (uptime, caches), and with a handful of instances
/// per cohort those differences would dominate the spread. What is compared is how erratic each process is from
/// request to request. Per-request signals are compared as they are.
#[derive(Clone, Debug)]
pub struct CohortSpread {
    pub summary: SpreadSummary,
    /// Pooled over instances: (lag-1, lag-2 autocorrelation, values they were estimated from).
    pub rho: Option<(f64, f64, usize)>,
}

impl CohortSpread {
    /// `values` in time order within each instance, `tags` naming each value's instance.
    pub fn from_values(values: &[f64], tags: &[u32], per_request: bool) -> Option<CohortSpread> {
        if per_request {
            return Some(CohortSpread {
                summary: SpreadSummary::new(values)?,
                rho: None,
            });
        }
        // A cohort has a handful of instances: a linear scan beats a map.
        let mut by_instance: Vec<(u32, Vec<f64>)> = Vec::new();
        for (v, tag) in values.iter().zip(tags) {
            match by_instance.iter_mut().find(|(t, _)| t == tag) {
                Some((_, seq)) => seq.push(*v),
                None => by_instance.push((*tag, vec![*v])),
            }
        }
        let mut centred = Vec::with_capacity(values.len());
        let mut scratch = Vec::new();
        let (mut r1, mut r2, mut n) = (0.0, 0.0, 0usize);
        for (_, seq) in by_instance.iter().filter(|(_, s)| s.len() >= 3) {
            scratch.clear();
            scratch.extend_from_slice(seq);
            let median = median_in_place(&mut scratch);
            let z: Vec<f64> = seq.iter().map(|v| (v - median).abs()).collect();
            if let Some((a, b, len)) = lag_autocorrelations(&z) {
                r1 += a * len as f64;
                r2 += b * len as f64;
                n += len;
            }
            centred.extend(seq.iter().map(|v| v - median));
        }
        Some(CohortSpread {
            summary: SpreadSummary::new(&centred)?,
            rho: (n > 0).then(|| (r1 / n as f64, r2 / n as f64, n)),
        })
    }

    fn of(s: &WindowSummary) -> Option<CohortSpread> {
        CohortSpread::from_values(&s.values, &s.instance_tags, s.key.signal.is_per_request())
    }
}

/// One window's comparison of a canary with its baseline.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PairResult {
    /// Brown-Forsythe statistic, corrected for autocorrelation.
    pub statistic: f64,
    pub p_value: f64,
    pub sd_ratio: Interval,
    /// Standard error of ln(sd ratio), for the sequential test.
    pub se_log_ratio: f64,
    pub mad_ratio: f64,
    /// The pooled lag-1 autocorrelation corrected for, if any.
    pub rho: Option<f64>,
}

/// Compares a canary's spread with its baseline's in one window.
pub fn compare(canary: &CohortSpread, baseline: &CohortSpread) -> Option<PairResult> {
    // Pool the two cohorts' estimates, weighted by the values behind them.
    let pooled = match (canary.rho, baseline.rho) {
        (Some((a1, a2, n)), Some((b1, b2, m))) => {
            let w = (n + m) as f64;
            Some((
                (a1 * n as f64 + b1 * m as f64) / w,
                (a2 * n as f64 + b2 * m as f64) / w,
                n + m,
            ))
        }
        (one, None) | (None, one) => one,
    };
    let inflation = pooled.map_or(1.0, |(r1, r2, n)| variance_inflation(r1, r2, n));
    let rho = pooled.map(|(r1, _, _)| r1);
    let (c, b) = (&canary.summary, &baseline.summary);
    let test = brown_forsythe_from(&[c.clone(), b.clone()], inflation)?;
    let n_eff = (c.n as f64 / inflation, b.n as f64 / inflation);
    let (sd_ratio, se_log_ratio) = bonett_sd_ratio_from(c, b, n_eff, 0.95)?;
    Some(PairResult {
        statistic: test.statistic,
        p_value: test.p_value,
        sd_ratio,
        se_log_ratio,
        mad_ratio: if b.mad > 0.0 { c.mad / b.mad } else { f64::NAN },
        rho,
    })
}

impl Detector for SpreadDrift {
    fn name(&self) -> &'static str {
        "spread_drift"
    }

    fn live_keys(&self) -> usize {
        self.series
            .values()
            .map(|s| s.cohorts.len() + s.pairs.len())
            .sum()
    }

    fn on_window(&mut self, window: &ClosedWindow, out: &mut Findings) {
        let end = window.end_unix_nano;
        let window_ns = end - window.start_unix_nano;
        // Sequential evidence and decisions use non-overlapping windows only, so their estimates are independent.
        let evaluate = window_ns > 0 && end.is_multiple_of(window_ns);

        // Cohort summaries of the configured signals, grouped by (service, signal).
        let mut groups: BTreeMap<(Arc<str>, Signal), Vec<CohortWindow<'_>>> = BTreeMap::new();
        for s in &window.summaries {
            let Scope::Cohort(Some(cohort)) = &s.key.group.scope else {
                continue;
            };
            if !self.settings.signals.contains(&s.key.signal) {
                continue;
            }
            groups
                .entry((s.key.group.service.clone(), s.key.signal))
                .or_default()
                .push((cohort.clone(), s));
        }

        let mut comparisons = Vec::new();
        for ((service, signal), cohorts) in groups {
            let state = self.series.entry((service.clone(), signal)).or_default();
            state.last_seen = end;
            for (label, _) in &cohorts {
                if !state.cohorts.contains_key(label) && state.cohorts.len() >= MAX_COHORTS {
                    continue;
                }
                let c = state
                    .cohorts
                    .entry(label.clone())
                    .or_insert_with(|| CohortState {
                        first_seen: end,
                        last_seen: end,
                        change: SpreadChange::new(),
                        change_open: false,
                        change_clean: 0,
                    });
                c.last_seen = end;
            }
            let usable: Vec<&CohortWindow<'_>> = cohorts
                .iter()
                .filter(|(label, s)| {
                    state.cohorts.contains_key(label) && s.values.len() >= self.settings.min_samples
                })
                .collect();
            let spreads: Vec<Option<CohortSpread>> =
                usable.iter().map(|(_, s)| CohortSpread::of(s)).collect();

            if self.settings.change_over_time && evaluate {
                for ((label, s), spread) in usable.iter().zip(&spreads) {
                    let (Some(spread), Some(c)) = (spread, state.cohorts.get_mut(label)) else {
                        continue;
                    };
                    let Some(reading) =
                        c.change
                            .update(spread.summary.mad, s.values.len(), self.cusum_h)
                    else {
                        continue;
                    };
                    let r = self.settings.min_ratio;
                    let up = reading.up > self.cusum_h && reading.ratio >= r;
                    let down = reading.down > self.cusum_h && reading.ratio <= 1.0 / r;
                    let alarm = match self.settings.direction {
                        Direction::Wider => up,
                        Direction::Narrower => down,
                        Direction::Both => up || down,
                    };
                    let state_now = match (c.change_open, alarm) {
                        (false, true) => Some(AnomalyState::Open),
                        (true, true) => Some(AnomalyState::Update),
                        (true, false) => {
                            c.change_clean += 1;
                            (c.change_clean >= self.settings.resolve_after)
                                .then_some(AnomalyState::Resolved)
                        }
                        (false, false) => None,
                    };
                    if alarm {
                        c.change_clean = 0;
                    }
                    if let Some(st) = state_now {
                        c.change_open = st != AnomalyState::Resolved;
                        if st == AnomalyState::Resolved {
                            c.change_clean = 0;
                        }
                        let mut a = Anomaly::new(
                            AnomalyKind::SpreadDrift,
                            st,
                            &service,
                            signal.name(),
                            end,
                        );
                        a.method = Some("cusum".into());
                        a.window_start = Some(rfc3339(window.start_unix_nano));
                        a.window_end = Some(rfc3339(end));
                        a.statistic = Some(reading.up.max(reading.down));
                        a.mad_ratio = Some(reading.ratio);
                        a.cohorts = Some(Cohorts {
                            baseline: format!("{label} (before)"),
                            canary: label.to_string(),
                            baseline_samples: 0,
                            canary_samples: s.count,
                        });
                        set_exemplars(&mut a, &s.exemplars);
                        out.anomalies.push(a);
                    }
                }
            }

            let infos: Vec<CohortInfo<'_>> = usable
                .iter()
                .map(|(label, s)| CohortInfo {
                    label,
                    first_seen: state.cohorts.get(label).map_or(end, |c| c.first_seen),
                    instances: s
                        .instance_tags
                        .iter()
                        .collect::<std::collections::BTreeSet<_>>()
                        .len(),
                })
                .collect();
            let Some(b) = choose_baseline(&infos, self.settings.baseline.as_deref()) else {
                continue;
            };
            let Some(base) = &spreads[b] else { continue };
            for (i, (label, s)) in usable.iter().enumerate() {
                if i == b {
                    continue;
                }
                let Some(spread) = &spreads[i] else { continue };
                let Some(r) = compare(spread, base) else {
                    continue;
                };
                let baseline = usable[b].0.clone();
                let p = state
                    .pairs
                    .entry((baseline.clone(), (*label).clone()))
                    .or_insert_with(|| PairState {
                        msprt: Msprt::new(MSPRT_TAU),
                        open: false,
                        clean: 0,
                        last_seen: end,
                    });
                p.last_seen = end;
                if evaluate {
                    p.msprt.update(r.sd_ratio.value.ln(), r.se_log_ratio);
                }
                comparisons.push(Comparison {
                    service: service.clone(),
                    signal,
                    baseline,
                    canary: (*label).clone(),
                    test_statistic: r.statistic,
                    window_p: r.p_value,
                    sd_ratio: r.sd_ratio,
                    mad_ratio: r.mad_ratio,
                    rho: r.rho,
                    counts: (usable[b].1.count, s.count),
                    exemplars: s.exemplars.clone(),
                });
            }
        }

        // Decisions: BH across every pair evaluated in this window, on the always-valid p-values.
        if evaluate && !comparisons.is_empty() {
            let p_seq: Vec<f64> = comparisons
                .iter()
                .map(|c| self.pair(c).map_or(1.0, |p| p.msprt.p_value()))
                .collect();
            let discoveries = benjamini_hochberg(&p_seq, self.settings.alpha);
            for (i, c) in comparisons.iter().enumerate() {
                let evidence = discoveries[i] && self.passes(&c.sd_ratio);
                let resolve_after = self.settings.resolve_after;
                let Some(p) = self.pair_mut(c) else { continue };
                let state = match (p.open, evidence) {
                    (false, true) => Some(AnomalyState::Open),
                    (true, true) => Some(AnomalyState::Update),
                    (true, false) => {
                        p.clean += 1;
                        (p.clean >= resolve_after).then_some(AnomalyState::Resolved)
                    }
                    (false, false) => None,
                };
                if evidence {
                    p.clean = 0;
                }
                let Some(st) = state else { continue };
                p.open = st != AnomalyState::Resolved;
                if st == AnomalyState::Resolved {
                    // Evidence starts afresh: what was found is closed.
                    p.msprt = Msprt::new(MSPRT_TAU);
                    p.clean = 0;
                }
                let mut a = Anomaly::new(
                    AnomalyKind::SpreadDrift,
                    st,
                    &c.service,
                    c.signal.name(),
                    end,
                );
                a.method = Some("brown_forsythe+msprt".into());
                a.window_start = Some(rfc3339(window.start_unix_nano));
                a.window_end = Some(rfc3339(end));
                a.statistic = Some(c.test_statistic);
                a.p_value = Some(p_seq[i]);
                a.window_p_value = Some(c.window_p);
                a.autocorrelation = c.rho;
                a.sd_ratio = Some(EventInterval {
                    value: c.sd_ratio.value,
                    low: c.sd_ratio.low,
                    high: c.sd_ratio.high,
                });
                a.mad_ratio = c.mad_ratio.is_finite().then_some(c.mad_ratio);
                a.cohorts = Some(Cohorts {
                    baseline: c.baseline.to_string(),
                    canary: c.canary.to_string(),
                    baseline_samples: c.counts.0,
                    canary_samples: c.counts.1,
                });
                set_exemplars(&mut a, &c.exemplars);
                out.anomalies.push(a);
            }
        }

        for c in &comparisons {
            let labels = vec![
                ("service", c.service.to_string()),
                ("signal", c.signal.name().to_string()),
                ("baseline", c.baseline.to_string()),
                ("canary", c.canary.to_string()),
            ];
            let log_lr = self.pair(c).map_or(0.0, |p| p.msprt.log_lr());
            for (name, help, value) in [
                (
                    "memdrift_spread_sd_ratio",
                    "Canary sd / baseline sd over the last window.",
                    c.sd_ratio.value,
                ),
                (
                    "memdrift_spread_p_value",
                    "Brown-Forsythe p-value of the last window.",
                    c.window_p,
                ),
                (
                    "memdrift_spread_sequential_log_lr",
                    "Log mixture likelihood ratio of the sequential spread test.",
                    log_lr,
                ),
            ] {
                out.gauges.push(Gauge {
                    name,
                    help,
                    labels: labels.clone(),
                    value,
                });
            }
        }

        // Forget what has been idle.
        let horizon = end.saturating_sub(self.settings.idle_timeout_ns);
        self.series.retain(|_, s| {
            s.cohorts.retain(|_, c| c.last_seen >= horizon);
            s.pairs.retain(|_, p| p.last_seen >= horizon);
            s.last_seen >= horizon
        });
    }
}

impl SpreadDrift {
    fn pair(&self, c: &Comparison) -> Option<&PairState> {
        self.series
            .get(&(c.service.clone(), c.signal))?
            .pairs
            .get(&(c.baseline.clone(), c.canary.clone()))
    }

    fn pair_mut(&mut self, c: &Comparison) -> Option<&mut PairState> {
        self.series
            .get_mut(&(c.service.clone(), c.signal))?
            .pairs
            .get_mut(&(c.baseline.clone(), c.canary.clone()))
    }
}

#[cfg(test)]
mod tests;
