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

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use memdrift_anomaly::{
    Anomaly, AnomalyKind, AnomalyState, Cohorts, Episode, Evidence, Identity,
    Interval as EventInterval,
};

pub use baseline::{choose_baseline, CohortInfo};
pub use config::{Direction, SpreadDriftSection, SpreadDriftSettings};

use super::alarm::{Alarm, Look, Rules};
use super::{Detector, Findings, Gauge, SectionError, Settings};
use crate::engine::{ClosedWindow, EngineConfig, Scope, WindowSummary};
use crate::sample::Exemplar;
use crate::signal::Signal;
use crate::stats::{
    benjamini_hochberg, bonett_sd_ratio_from, brown_forsythe_from, cusum_threshold,
    lag_autocorrelations, median_in_place, variance_inflation, Interval, Msprt, SpreadSummary,
};
use change::{ChangeReading, SpreadChange};

impl Settings for SpreadDriftSettings {
    const NAME: &'static str = "spread_drift";
    type Section = SpreadDriftSection;

    fn check(s: &SpreadDriftSection, _engine: &EngineConfig) -> Result<Self, SectionError> {
        Ok(SpreadDriftSettings::from_section(s)?)
    }

    fn build(&self, engine: &EngineConfig) -> Box<dyn Detector> {
        Box::new(SpreadDrift::new(self.clone(), engine.window_ns))
    }
}

/// The mSPRT mixing scale on ln(sd ratio): tuned to ratios around 1.35, the middle of what matters.
const MSPRT_TAU: f64 = 0.3;
/// Cohorts tracked per (service, signal); more are ignored (a service rarely runs more than a few at once).
const MAX_COHORTS: usize = 16;

struct PairState {
    msprt: Msprt,
    alarm: Alarm,
    last_seen: u64,
}

struct CohortState {
    first_seen: u64,
    last_seen: u64,
    change: SpreadChange,
    change_alarm: Alarm,
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

/// The usable cohorts of one (service, signal) in a window, with their spreads.
struct Group<'a> {
    service: Arc<str>,
    signal: Signal,
    cohorts: Vec<&'a CohortWindow<'a>>,
    spreads: Vec<Option<CohortSpread>>,
}

impl SpreadDrift {
    fn rules(&self) -> Rules {
        Rules {
            confirm: 1,
            resolve_after: self.settings.resolve_after,
            update_every: 1,
        }
    }

    /// The configured signals' cohort summaries, grouped by (service, signal).
    fn groups<'w>(
        &self,
        window: &'w ClosedWindow,
    ) -> BTreeMap<(Arc<str>, Signal), Vec<CohortWindow<'w>>> {
        let mut groups: BTreeMap<(Arc<str>, Signal), Vec<CohortWindow<'w>>> = BTreeMap::new();
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
        groups
    }

    /// Registers the group's cohorts (up to [`MAX_COHORTS`]) and keeps those with enough samples.
    fn usable<'a>(
        &mut self,
        (service, signal): (Arc<str>, Signal),
        cohorts: &'a [CohortWindow<'a>],
        end: u64,
    ) -> Group<'a> {
        let state = self.series.entry((service.clone(), signal)).or_default();
        state.last_seen = end;
        for (label, _) in cohorts {
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
                    change_alarm: Alarm::default(),
                });
            c.last_seen = end;
        }
        let min_samples = self.settings.min_samples;
        let usable: Vec<&CohortWindow<'_>> = cohorts
            .iter()
            .filter(|(label, s)| state.cohorts.contains_key(label) && s.values.len() >= min_samples)
            .collect();
        let spreads = usable.iter().map(|(_, s)| CohortSpread::of(s)).collect();
        Group {
            service,
            signal,
            cohorts: usable,
            spreads,
        }
    }

    /// Each cohort's spread against its own past (CUSUM), one look per non-overlapping window.
    fn watch_changes(&mut self, g: &Group<'_>, window: &ClosedWindow, out: &mut Findings) {
        let (end, rules, h) = (window.end_unix_nano, self.rules(), self.cusum_h);
        let (m, direction) = (self.settings.min_ratio, self.settings.direction);
        // An alarm needs the CUSUM over its threshold and the spread past `min_ratio`, in the configured direction.
        let alarm = |r: &ChangeReading| {
            let up = r.up > h && r.ratio >= m;
            let down = r.down > h && r.ratio <= 1.0 / m;
            match direction {
                Direction::Wider => up,
                Direction::Narrower => down,
                Direction::Both => up || down,
            }
        };
        let Some(state) = self.series.get_mut(&(g.service.clone(), g.signal)) else {
            return;
        };
        for ((label, s), spread) in g.cohorts.iter().zip(&g.spreads) {
            let (Some(spread), Some(c)) = (spread, state.cohorts.get_mut(label)) else {
                continue;
            };
            let Some(reading) = c.change.update(spread.summary.mad, s.values.len(), h) else {
                continue;
            };
            let identity = Identity {
                kind: AnomalyKind::SpreadDrift,
                service: &g.service,
                instance: None,
                signal: g.signal.name(),
                cohort: Some(label),
            };
            let look = if alarm(&reading) {
                Look::Alarm
            } else {
                Look::Clear
            };
            let Some(due) = c.change_alarm.look(look, &rules, || {
                Episode::new(identity, window.start_unix_nano, end)
            }) else {
                continue;
            };
            let evidence = Evidence::SpreadChange {
                statistic: reading.up.max(reading.down),
                ratio: reading.ratio,
                cohorts: Cohorts {
                    baseline: format!("{label} (before)"),
                    canary: label.to_string(),
                    baseline_samples: 0,
                    canary_samples: s.count,
                },
            };
            out.anomalies
                .push(event(due, g, window, "cusum", evidence, &s.exemplars));
        }
    }

    /// Compares each canary of the group with the baseline, feeding each pair's sequential test.
    fn compare_pairs(
        &mut self,
        g: &Group<'_>,
        end: u64,
        evaluate: bool,
        into: &mut Vec<Comparison>,
    ) {
        let Some(state) = self.series.get_mut(&(g.service.clone(), g.signal)) else {
            return;
        };
        let infos: Vec<CohortInfo<'_>> = g
            .cohorts
            .iter()
            .map(|(label, s)| CohortInfo {
                label,
                first_seen: state.cohorts.get(label).map_or(end, |c| c.first_seen),
                instances: s.instance_tags.iter().collect::<BTreeSet<_>>().len(),
            })
            .collect();
        let Some(b) = choose_baseline(&infos, self.settings.baseline.as_deref()) else {
            return;
        };
        let Some(base) = &g.spreads[b] else { return };
        let baseline = g.cohorts[b].0.clone();
        for (i, (label, s)) in g.cohorts.iter().enumerate() {
            let Some(r) = g.spreads[i]
                .as_ref()
                .filter(|_| i != b)
                .and_then(|c| compare(c, base))
            else {
                continue;
            };
            let p = state
                .pairs
                .entry((baseline.clone(), label.clone()))
                .or_insert_with(|| PairState {
                    msprt: Msprt::new(MSPRT_TAU),
                    alarm: Alarm::default(),
                    last_seen: end,
                });
            p.last_seen = end;
            if evaluate {
                p.msprt.update(r.sd_ratio.value.ln(), r.se_log_ratio);
            }
            into.push(Comparison {
                service: g.service.clone(),
                signal: g.signal,
                baseline: baseline.clone(),
                canary: label.clone(),
                test_statistic: r.statistic,
                window_p: r.p_value,
                sd_ratio: r.sd_ratio,
                mad_ratio: r.mad_ratio,
                rho: r.rho,
                counts: (g.cohorts[b].1.count, s.count),
                exemplars: s.exemplars.clone(),
            });
        }
    }

    /// Decisions: Benjamini-Hochberg across every pair evaluated in this window, on the always-valid p-values,
    /// and the practical effect; one look per pair.
    fn decide(&mut self, comparisons: &[Comparison], window: &ClosedWindow, out: &mut Findings) {
        let p_seq: Vec<f64> = comparisons
            .iter()
            .map(|c| self.pair(c).map_or(1.0, |p| p.msprt.p_value()))
            .collect();
        let discoveries = benjamini_hochberg(&p_seq, self.settings.alpha);
        let rules = self.rules();
        for (i, c) in comparisons.iter().enumerate() {
            let evidence = discoveries[i] && self.passes(&c.sd_ratio);
            let Some(p) = self.pair_mut(c) else { continue };
            let identity = Identity {
                kind: AnomalyKind::SpreadDrift,
                service: &c.service,
                instance: None,
                signal: c.signal.name(),
                cohort: Some(&c.canary),
            };
            let look = if evidence { Look::Alarm } else { Look::Clear };
            let Some(due) = p.alarm.look(look, &rules, || {
                Episode::new(identity, window.start_unix_nano, window.end_unix_nano)
            }) else {
                continue;
            };
            if due.0 == AnomalyState::Resolved {
                // Evidence starts afresh: what was found is closed.
                p.msprt = Msprt::new(MSPRT_TAU);
            }
            out.anomalies.push(c.event(due, p_seq[i], window));
        }
    }

    /// The latest comparison of every pair as gauges.
    fn gauges(&self, comparisons: &[Comparison], out: &mut Findings) {
        for c in comparisons {
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
    }

    /// Forgets what has been idle for `idle_timeout` of event time.
    fn expire(&mut self, end: u64) {
        let horizon = end.saturating_sub(self.settings.idle_timeout_ns);
        self.series.retain(|_, s| {
            s.cohorts.retain(|_, c| c.last_seen >= horizon);
            s.pairs.retain(|_, p| p.last_seen >= horizon);
            s.last_seen >= horizon
        });
    }

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

/// A spread event of `g` in `window`.
fn event(
    (state, episode): (AnomalyState, Episode),
    g: &Group<'_>,
    window: &ClosedWindow,
    method: &'static str,
    evidence: Evidence,
    exemplars: &[Exemplar],
) -> Anomaly {
    Anomaly {
        state,
        episode,
        service: g.service.to_string(),
        instance: None,
        signal: g.signal.name().to_string(),
        detected_unix_nano: window.end_unix_nano,
        window: Some((window.start_unix_nano, window.end_unix_nano)),
        method,
        evidence,
        exemplars: exemplars.to_vec(),
    }
}

impl Comparison {
    /// This comparison as an event; `p_value` is the sequential test's.
    fn event(
        &self,
        (state, episode): (AnomalyState, Episode),
        p_value: f64,
        window: &ClosedWindow,
    ) -> Anomaly {
        Anomaly {
            state,
            episode,
            service: self.service.to_string(),
            instance: None,
            signal: self.signal.name().to_string(),
            detected_unix_nano: window.end_unix_nano,
            window: Some((window.start_unix_nano, window.end_unix_nano)),
            method: "brown_forsythe+msprt",
            evidence: Evidence::Spread {
                statistic: self.test_statistic,
                p_value,
                window_p_value: self.window_p,
                autocorrelation: self.rho,
                sd_ratio: EventInterval {
                    value: self.sd_ratio.value,
                    low: self.sd_ratio.low,
                    high: self.sd_ratio.high,
                },
                mad_ratio: self.mad_ratio.is_finite().then_some(self.mad_ratio),
                cohorts: Cohorts {
                    baseline: self.baseline.to_string(),
                    canary: self.canary.to_string(),
                    baseline_samples: self.counts.0,
                    canary_samples: self.counts.1,
                },
            },
            exemplars: self.exemplars.clone(),
        }
    }
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
        let mut comparisons = Vec::new();
        for (key, cohorts) in self.groups(window) {
            let group = self.usable(key, &cohorts, end);
            if self.settings.change_over_time && evaluate {
                self.watch_changes(&group, window, out);
            }
            self.compare_pairs(&group, end, evaluate, &mut comparisons);
        }
        if evaluate && !comparisons.is_empty() {
            self.decide(&comparisons, window, out);
        }
        self.gauges(&comparisons, out);
        self.expire(end);
    }
}

#[cfg(test)]
mod tests;
