//! `spread_drift`: is a canary's memory more erratic than its baseline's? And has a cohort's spread changed?
//!
//! Per (service, signal), each canary cohort is compared with the baseline cohort in **looks**:
//!
//! 1. **Look.** Non-overlapping windows are pooled until both cohorts have `min_samples` values (one window for
//!    dense traffic, several for a cohort with a few requests a minute; at most [`MAX_LOOK_WINDOWS`]), so
//!    sparse cohorts are compared too and every look's estimates are independent of the last. Per-request
//!    signals are compared as they are; process-level signals (RSS, heap) as successive differences within each
//!    instance ([`LookValues`]), with the lag-1 autocorrelation of the deviations corrected for by the variance
//!    inflation factor.
//! 2. **Test and effect.** Each look gives Brown-Forsythe (median-centred Levene), the sd ratio with Bonett's
//!    kurtosis-robust interval, the MAD ratio, and ln of the ratio of mean absolute deviations from the median
//!    with its standard error: a scale ratio that stays well-behaved on Student-t(3), lognormal and spiky data,
//!    and that a change of mean (each cohort is centred on its own median) does not move.
//! 3. **Repeated looks.** The canary's log dispersion feeds a sequential change test per pair ([`MsprtChange`]:
//!    the Shiryaev-Roberts sum of mixture likelihood ratios begun at each recent look), so a change after a long
//!    equal stretch is not diluted by it. What it is compared with is the baseline's level over its last
//!    [`REFERENCE_LOOKS`] looks (weighted by values, its variance added to each term's): the baseline, which
//!    does not change, is then known far better than from the one look beside the canary's, and each
//!    comparison's variance nearly halves when the cohorts are of a size. The mixture is one-sided when `direction` is `wider` or
//!    `narrower`. Its p-value, H / R with H the pair's looks in an hour, falls to alpha within an hour of equal
//!    spreads with probability at most alpha, however often it is read. Benjamini-Hochberg over the current
//!    p-values of all live pairs (kept across windows) controls the false discovery rate across services and
//!    signals.
//! 4. **Decision.** A pair alarms when its p-value is a BH discovery *and* the ratio passes `min_ratio` in the
//!    configured direction both in the look and since the change began (the estimate of the start with the
//!    most evidence); it updates at each look while that holds, and resolves after `resolve_after` looks without
//!    it.
//!
//! Within each cohort a CUSUM watches the spread over time ([`change`]).

mod baseline;
mod change;
pub mod config;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

use memdrift_anomaly::{
    Anomaly, AnomalyKind, AnomalyState, Cohorts, Episode, Evidence, Identity,
    Interval as EventInterval,
};

pub use baseline::{choose_baseline, CohortInfo};
pub use config::{Direction, SpreadDriftSection, SpreadDriftSettings};

use super::alarm::{Alarm, Look, Rules};
use super::{checkpoint, CheckpointError, Detector, Findings, Gauge, SectionError, Settings};
use crate::engine::{ClosedWindow, EngineConfig, Scope, WindowSummary};
use crate::sample::Exemplar;
use crate::signal::Signal;
use crate::stats::{
    benjamini_hochberg_cutoff, bonett_sd_ratio_from, brown_forsythe_from, cusum_threshold,
    lag_autocorrelations, median_in_place, variance_inflation, Interval, MsprtChange,
    SpreadSummary,
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

/// The mixing scale of the sequential test on ln(dispersion ratio): tuned to ratios of 1.6-2.5, where a change
/// must be found within minutes (a smaller scale would favour ratios near 1.25 and find large ones later).
const MIXTURE_TAU: f64 = 0.5;
/// Looks at which a change may have begun that the sequential test keeps (besides the first): evidence builds
/// from any of the last this many looks.
const RECENT_STARTS: usize = 20;
/// Cohorts tracked per (service, signal); more are ignored (a service rarely runs more than a few at once).
const MAX_COHORTS: usize = 16;
/// Fewest values in a window for the CUSUM of a cohort's spread over time (its variance floor assumes a MAD of
/// at least this many).
const CHANGE_MIN_SAMPLES: usize = 20;
/// Looks of the baseline whose log dispersions make the reference a canary's looks are compared with: the
/// baseline's level is then known about this many times more precisely than from one look, which nearly halves
/// the variance of each comparison (and the looks a change needs to show) when the cohorts are the same size.
const REFERENCE_LOOKS: usize = 10;
/// Windows a look may pool while waiting for `min_samples` in both cohorts; a look still short after this many
/// is dropped and begun again, so that what a look compares is never older than this.
const MAX_LOOK_WINDOWS: u32 = 10;

#[derive(serde::Serialize, serde::Deserialize)]
struct PairState {
    /// The canary's log dispersion, look by look, against the baseline's reference level.
    evidence: MsprtChange,
    /// The baseline's log dispersion, its variance and its effective number of values in its last
    /// [`REFERENCE_LOOKS`] looks, oldest first.
    reference: VecDeque<(f64, f64, f64)>,
    /// The latest ln Shiryaev-Roberts statistic and effect since the change began (as a ratio).
    log_sr: f64,
    since_change: f64,
    /// Windows the last look pooled: the pair looks this much less often than once a window.
    windows_per_look: u32,
    /// The latest sequential p-value, what Benjamini-Hochberg reads across all live pairs.
    p_value: f64,
    /// The look being gathered: (canary, baseline) values and the windows pooled so far.
    look: (LookValues, LookValues),
    look_windows: u32,
    alarm: Alarm,
    last_seen: u64,
}

/// The sequential test of a pair: one-sided when only one direction of change is wanted.
fn sequential_test(direction: Direction) -> MsprtChange {
    let test = MsprtChange::new(MIXTURE_TAU, RECENT_STARTS);
    match direction {
        Direction::Wider => test.one_sided(1.0),
        Direction::Narrower => test.one_sided(-1.0),
        Direction::Both => test,
    }
}

impl PairState {
    fn new(end: u64, direction: Direction) -> PairState {
        PairState {
            evidence: sequential_test(direction),
            windows_per_look: 1,
            reference: VecDeque::with_capacity(REFERENCE_LOOKS),
            log_sr: 0.0,
            since_change: 1.0,
            p_value: 1.0,
            look: Default::default(),
            look_windows: 0,
            alarm: Alarm::default(),
            last_seen: end,
        }
    }

    /// The baseline's reference level: the mean of its recent looks' log dispersions weighted by their values,
    /// and that mean's variance. (Not by their estimated precision: on skewed data a look's estimated variance
    /// grows with its dispersion, and precision weights would pull the reference low.)
    fn reference_level(&self) -> (f64, f64) {
        let (w, s, v) = self
            .reference
            .iter()
            .fold((0.0, 0.0, 0.0), |(w, s, v), &(l, var, n)| {
                (w + n, s + n * l, v + n * n * var)
            });
        if w > 0.0 {
            (s / w, v / (w * w))
        } else {
            (0.0, 0.0)
        }
    }

    /// Feeds one look's comparison: the canary's level to the sequential test, the baseline's to the reference.
    /// Returns the look's log ratio against the reference and its standard error.
    fn feed(&mut self, r: &PairResult, per_hour: f64) -> (f64, f64) {
        let ((lc, vc, nc), base) = r.log_dispersion;
        if base.0.is_finite() && base.1.is_finite() && base.1 > 0.0 && base.2 > 0.0 {
            if self.reference.len() == REFERENCE_LOOKS {
                self.reference.pop_front();
            }
            self.reference.push_back(base);
        }
        let reference = self.reference_level();
        self.evidence.update_weighted(lc, vc, nc);
        self.log_sr = self.evidence.log_sr_against(reference);
        self.since_change = self
            .evidence
            .estimate_against(reference)
            .map_or(1.0, f64::exp);
        // H / R with H the looks in an hour (Doob's bound is per look made, not per window).
        let looks = (per_hour / f64::from(self.windows_per_look.max(1))).max(1.0);
        self.p_value = (looks.ln() - self.log_sr).exp().min(1.0);
        (lc - reference.0, (vc + reference.1).sqrt())
    }

    /// Adds one window of both cohorts to the look; the look's two cohorts once both have `min_samples`.
    fn gather(
        &mut self,
        canary: &LookValues,
        baseline: &LookValues,
        min_samples: usize,
    ) -> Option<(CohortSpread, CohortSpread)> {
        self.look.0.append(canary);
        self.look.1.append(baseline);
        self.look_windows += 1;
        let ready =
            self.look.0.values.len() >= min_samples && self.look.1.values.len() >= min_samples;
        let spreads = ready
            .then(|| Some((self.look.0.spread()?, self.look.1.spread()?)))
            .flatten();
        if spreads.is_some() {
            self.windows_per_look = self.look_windows;
        }
        if ready || self.look_windows >= MAX_LOOK_WINDOWS {
            self.look.0.clear();
            self.look.1.clear();
            self.look_windows = 0;
        }
        spreads
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct CohortState {
    first_seen: u64,
    last_seen: u64,
    change: SpreadChange,
    change_alarm: Alarm,
}

#[derive(Default, serde::Serialize, serde::Deserialize)]
struct SeriesState {
    cohorts: BTreeMap<Arc<str>, CohortState>,
    /// Keyed by (baseline, canary).
    pairs: BTreeMap<(Arc<str>, Arc<str>), PairState>,
    last_seen: u64,
}

/// One canary-baseline look.
struct Comparison {
    service: Arc<str>,
    signal: Signal,
    baseline: Arc<str>,
    canary: Arc<str>,
    result: PairResult,
    counts: (u64, u64),
    exemplars: Vec<Exemplar>,
}

/// A cohort's label and its summary in the window at hand.
type CohortWindow<'a> = (Arc<str>, &'a WindowSummary);

pub struct SpreadDrift {
    settings: SpreadDriftSettings,
    cusum_h: f64,
    /// Looks (window lengths) in an hour: the sequential p-value is per hour of looks.
    looks_per_hour: f64,
    series: HashMap<(Arc<str>, Signal), SeriesState>,
}

impl SpreadDrift {
    pub fn new(settings: SpreadDriftSettings, window_ns: u64) -> SpreadDrift {
        let arl_windows = (settings.change_arl_ns / window_ns.max(1)).max(10) as f64;
        SpreadDrift {
            cusum_h: cusum_threshold(change::K, arl_windows),
            looks_per_hour: (3_600_000_000_000 / window_ns.max(1)).max(1) as f64,
            settings,
            series: HashMap::new(),
        }
    }

    /// Whether a ratio passes `min_ratio` in the configured direction.
    fn passes(&self, ratio: f64) -> bool {
        let r = self.settings.min_ratio;
        match self.settings.direction {
            Direction::Wider => ratio >= r,
            Direction::Narrower => ratio <= 1.0 / r,
            Direction::Both => ratio >= r || ratio <= 1.0 / r,
        }
    }
}

/// What one cohort contributes to a look: the values compared and the autocorrelation of their deviations.
///
/// Per-request signals (bytes allocated by a request, RSS delta) are compared as they are. Process-level signals
/// (RSS, heap) are levels that wander slowly (AR(1) with phi near 1 from one request to the next) and differ from
/// process to process for reasons unrelated to the release (uptime, caches); a leak or a GC sawtooth moves them
/// within a window. They are compared as successive differences within each instance (the RSS delta between
/// requests): what differs between releases is how erratic each process is from request to request, and the
/// differences of a near-unit-root series are nearly independent, while a trend (a leak, the rise of a
/// sawtooth) becomes a constant that centring each instance's differences on their own median removes.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct LookValues {
    pub values: Vec<f64>,
    /// Lag-1 and lag-2 autocorrelations of the deviations, each summed weighted by the values behind it, and
    /// the number of those values (process-level signals only).
    rho: (f64, f64, usize),
}

impl LookValues {
    /// One window's values of a cohort: `values` in time order within each instance, `tags` naming each value's
    /// instance.
    pub fn from_window(values: &[f64], tags: &[u32], per_request: bool) -> LookValues {
        if per_request {
            return LookValues {
                values: values.to_vec(),
                rho: (0.0, 0.0, 0),
            };
        }
        // A cohort has a handful of instances: one pass over the values per instance, in the order the
        // instances first appear, with buffers reused from one instance to the next.
        let mut out = LookValues {
            values: Vec::with_capacity(values.len()),
            rho: (0.0, 0.0, 0),
        };
        let n = values.len().min(tags.len());
        let mut seen: Vec<u32> = Vec::new();
        let mut diffs = Vec::with_capacity(n);
        let mut scratch = Vec::with_capacity(n);
        for (k, tag) in tags[..n].iter().enumerate() {
            if seen.contains(tag) {
                continue;
            }
            seen.push(*tag);
            diffs.clear();
            let mut seq = values[k..n]
                .iter()
                .zip(&tags[k..n])
                .filter(|(_, t)| *t == tag)
                .map(|(v, _)| *v);
            let Some(mut prev) = seq.next() else {
                continue;
            };
            for v in seq {
                diffs.push(v - prev);
                prev = v;
            }
            if diffs.len() < 2 {
                continue;
            }
            scratch.clear();
            scratch.extend_from_slice(&diffs);
            let median = median_in_place(&mut scratch);
            scratch.clear();
            scratch.extend(diffs.iter().map(|v| (v - median).abs()));
            if let Some((a, b, len)) = lag_autocorrelations(&scratch) {
                out.rho.0 += a * len as f64;
                out.rho.1 += b * len as f64;
                out.rho.2 += len;
            }
            // Each instance's own median: a leak's or a sawtooth's rise differs from process to process.
            out.values.extend(diffs.iter().map(|v| v - median));
        }
        out
    }

    fn append(&mut self, other: &LookValues) {
        self.values.extend_from_slice(&other.values);
        self.rho.0 += other.rho.0;
        self.rho.1 += other.rho.1;
        self.rho.2 += other.rho.2;
    }

    fn clear(&mut self) {
        self.values.clear();
        self.rho = (0.0, 0.0, 0);
    }

    /// The spread summary of these values.
    pub fn spread(&self) -> Option<CohortSpread> {
        let (r1, r2, n) = self.rho;
        Some(CohortSpread {
            summary: SpreadSummary::new(&self.values)?,
            rho: (n > 0).then(|| (r1 / n as f64, r2 / n as f64, n)),
        })
    }
}

/// A cohort's spread in a look.
#[derive(Clone, Debug)]
pub struct CohortSpread {
    pub summary: SpreadSummary,
    /// Pooled over instances: (lag-1, lag-2 autocorrelation, values they were estimated from).
    pub rho: Option<(f64, f64, usize)>,
}

impl CohortSpread {
    /// `values` in time order within each instance, `tags` naming each value's instance; see [`LookValues`].
    pub fn from_values(values: &[f64], tags: &[u32], per_request: bool) -> Option<CohortSpread> {
        LookValues::from_window(values, tags, per_request).spread()
    }
}

/// One look's comparison of a canary with its baseline.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PairResult {
    /// Brown-Forsythe statistic, corrected for autocorrelation.
    pub statistic: f64,
    pub p_value: f64,
    pub sd_ratio: Interval,
    /// ln of the ratio of mean absolute deviations from the median (canary / baseline): what the sequential
    /// test accumulates. It is the sd ratio's log for a change of scale, with a finite variance on heavy tails.
    pub log_ratio: f64,
    /// Its standard error (delta method, inflated for autocorrelation).
    pub se_log_ratio: f64,
    /// ln of each cohort's mean absolute deviation from its median, its variance (inflated for autocorrelation)
    /// and the effective number of values behind it: (canary, baseline).
    pub log_dispersion: ((f64, f64, f64), (f64, f64, f64)),
    pub mad_ratio: f64,
    /// The pooled lag-1 autocorrelation corrected for, if any.
    pub rho: Option<f64>,
}

/// The autocorrelation the two cohorts of a look share (pooled over both, weighted by the values behind each
/// estimate): its lag-1 coefficient and the variance inflation it calls for (1 without one).
pub fn shared_autocorrelation(
    canary: &CohortSpread,
    baseline: &CohortSpread,
) -> (Option<f64>, f64) {
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
    (pooled.map(|(r1, _, _)| r1), inflation)
}

/// Compares a canary's spread with its baseline's in one look.
pub fn compare(canary: &CohortSpread, baseline: &CohortSpread) -> Option<PairResult> {
    let (rho, inflation) = shared_autocorrelation(canary, baseline);
    let (c, b) = (&canary.summary, &baseline.summary);
    let test = brown_forsythe_from(&[c.clone(), b.clone()], inflation)?;
    let n_eff = (c.n as f64 / inflation, b.n as f64 / inflation);
    let (sd_ratio, _) = bonett_sd_ratio_from(c, b, n_eff, 0.95)?;
    let ((lc, vc), (lb, vb)) = (c.log_mean_abs_dev()?, b.log_mean_abs_dev()?);
    Some(PairResult {
        statistic: test.statistic,
        p_value: test.p_value,
        sd_ratio,
        log_ratio: lc - lb,
        se_log_ratio: ((vc + vb) * inflation).sqrt(),
        log_dispersion: ((lc, vc * inflation, n_eff.0), (lb, vb * inflation, n_eff.1)),
        mad_ratio: if b.mad > 0.0 { c.mad / b.mad } else { f64::NAN },
        rho,
    })
}

/// The cohorts of one (service, signal) in a window, with the values each adds to a look.
struct Group<'a> {
    service: Arc<str>,
    signal: Signal,
    cohorts: Vec<&'a CohortWindow<'a>>,
    values: Vec<LookValues>,
}

impl SpreadDrift {
    fn rules(&self) -> Rules {
        Rules {
            confirm: 1,
            resolve_after: self.settings.resolve_after,
            update_every: 1,
            hold_keeps_streak: false,
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

    /// Registers the group's cohorts (up to [`MAX_COHORTS`]) and takes the values each adds to a look.
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
        let usable: Vec<&CohortWindow<'_>> = cohorts
            .iter()
            .filter(|(label, _)| state.cohorts.contains_key(label))
            .collect();
        let values = usable
            .iter()
            .map(|(_, s)| {
                LookValues::from_window(&s.values, &s.instance_tags, signal.is_per_request())
            })
            .collect();
        Group {
            service,
            signal,
            cohorts: usable,
            values,
        }
    }

    /// Each cohort's spread against its own past (CUSUM), one look per non-overlapping window with at least
    /// [`CHANGE_MIN_SAMPLES`] (and `min_samples`) values.
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
        let min_samples = self.settings.min_samples.max(CHANGE_MIN_SAMPLES);
        for ((label, s), values) in g.cohorts.iter().zip(&g.values) {
            let spread = (values.values.len() >= min_samples)
                .then(|| values.spread())
                .flatten();
            let (Some(spread), Some(c)) = (spread, state.cohorts.get_mut(label)) else {
                continue;
            };
            let Some(reading) = c.change.update(spread.summary.mad, spread.summary.n, h) else {
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

    /// Adds the window to each canary-baseline pair's look; a look with `min_samples` in both cohorts is compared
    /// and feeds the pair's sequential test.
    fn feed_pairs(&mut self, g: &Group<'_>, end: u64, into: &mut Vec<Comparison>) {
        let (min_samples, per_hour) = (self.settings.min_samples, self.looks_per_hour);
        let direction = self.settings.direction;
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
        let baseline = g.cohorts[b].0.clone();
        for (i, (label, s)) in g.cohorts.iter().enumerate().filter(|(i, _)| *i != b) {
            let p = state
                .pairs
                .entry((baseline.clone(), label.clone()))
                .or_insert_with(|| PairState::new(end, direction));
            p.last_seen = end;
            let Some(mut result) = p
                .gather(&g.values[i], &g.values[b], min_samples)
                .and_then(|(c, base)| compare(&c, &base))
            else {
                continue;
            };
            (result.log_ratio, result.se_log_ratio) = p.feed(&result, per_hour);
            into.push(Comparison {
                service: g.service.clone(),
                signal: g.signal,
                baseline: baseline.clone(),
                canary: label.clone(),
                result,
                counts: (g.cohorts[b].1.count, s.count),
                exemplars: s.exemplars.clone(),
            });
        }
    }

    /// Decisions for the pairs that looked: Benjamini-Hochberg across the sequential p-values of every live pair
    /// (whether or not it looked now: with few samples, pairs look at different times), and the practical
    /// effect, in the look and since the change began.
    fn decide(&mut self, comparisons: &[Comparison], window: &ClosedWindow, out: &mut Findings) {
        let live: Vec<f64> = self
            .series
            .values()
            .flat_map(|s| s.pairs.values().map(|p| p.p_value))
            .collect();
        let cutoff = benjamini_hochberg_cutoff(&live, self.settings.alpha);
        let (rules, direction) = (self.rules(), self.settings.direction);
        for c in comparisons {
            let Some(p) = self.pair(c) else { continue };
            let since_change = p.since_change;
            let evidence = cutoff.is_some_and(|t| p.p_value <= t)
                && self.passes(c.result.log_ratio.exp())
                && self.passes(since_change);
            let p_value = p.p_value;
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
                p.evidence = sequential_test(direction);
                (p.p_value, p.log_sr, p.since_change) = (1.0, 0.0, 1.0);
            }
            out.anomalies.push(c.event(due, p_value, window));
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
            let log_sr = self.pair(c).map_or(0.0, |p| p.log_sr.max(0.0));
            for (name, help, value) in [
                (
                    "memdrift_spread_sd_ratio",
                    "Canary sd / baseline sd over the last look.",
                    c.result.sd_ratio.value,
                ),
                (
                    "memdrift_spread_p_value",
                    "Brown-Forsythe p-value of the last look.",
                    c.result.p_value,
                ),
                (
                    "memdrift_spread_sequential_log_lr",
                    "Log evidence of the sequential spread test (Shiryaev-Roberts sum of mixture likelihood ratios).",
                    log_sr,
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
        let r = &self.result;
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
                statistic: r.statistic,
                p_value,
                window_p_value: r.p_value,
                autocorrelation: r.rho,
                sd_ratio: EventInterval {
                    value: r.sd_ratio.value,
                    low: r.sd_ratio.low,
                    high: r.sd_ratio.high,
                },
                mad_ratio: r.mad_ratio.is_finite().then_some(r.mad_ratio),
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

    /// Cohorts only.
    fn instance_signals(&self) -> Vec<Signal> {
        Vec::new()
    }

    fn live_keys(&self) -> usize {
        self.series
            .values()
            .map(|s| s.cohorts.len() + s.pairs.len())
            .sum()
    }

    fn save(&self, out: &mut dyn std::io::Write) -> Result<(), CheckpointError> {
        checkpoint::encode(self.name(), &self.series, out)
    }

    fn restore(&mut self, state: &[u8]) -> Result<(), CheckpointError> {
        self.series = checkpoint::decode(self.name(), state)?;
        Ok(())
    }

    fn on_window(&mut self, window: &ClosedWindow, out: &mut Findings) {
        let end = window.end_unix_nano;
        let window_ns = end - window.start_unix_nano;
        // Looks use non-overlapping windows only, so that their estimates are independent.
        if window_ns > 0 && end.is_multiple_of(window_ns) {
            let mut comparisons = Vec::new();
            for (key, cohorts) in self.groups(window) {
                let group = self.usable(key, &cohorts, end);
                if self.settings.change_over_time {
                    self.watch_changes(&group, window, out);
                }
                self.feed_pairs(&group, end, &mut comparisons);
            }
            if !comparisons.is_empty() {
                self.decide(&comparisons, window, out);
            }
            self.gauges(&comparisons, out);
        }
        self.expire(end);
    }
}

#[cfg(test)]
pub(crate) mod tests;
