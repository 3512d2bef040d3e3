//! The rule: `fail` on evidence of trouble, `pass` on evidence of *no* material difference, `continue` otherwise.
//!
//! - **fail**: a `spread_drift` finding is open for the canary cohort (on any signal), or a `growth` or `leak`
//!   finding is open on an instance that sends to the canary cohort. Those findings carry their own error
//!   control (the spread test's alpha with Benjamini-Hochberg, the growth forecast's hysteresis).
//! - **pass**: an equivalence rule. For every configured signal with looks of both cohorts since the canary
//!   started, the upper bound of a confidence sequence for the ratio of spreads (canary / baseline) is below
//!   `tolerance`; both cohorts have `min_samples` values compared; the canary has run `min_duration`; no
//!   finding is open on it; and no canary instance is forecast to reach its memory limit within
//!   `min_time_to_limit` (a slow climb the growth warning does not yet call imminent still blocks a pass).
//! - **continue**: neither yet; the reasons say what is missing.
//!
//! The ratio is that of the cohorts' mean absolute deviations from their medians, as the spread detector
//! measures it: the sd ratio for a change of scale, with a finite variance on heavy tails. Each look (one
//! non-overlapping window in which both cohorts have values) gives ln of the ratio and its variance
//! (as [`spread_drift::compare`] weighs it: the delta method, inflated for the autocorrelation of process-level
//! signals);
//! looks are combined weighted by their inverse variances. The bound is time-uniform (a normal-mixture
//! boundary, [`cs_radius`]): however often a controller polls, the chance that a canary truly wider than the
//! tolerance is ever passed stays below `1 - confidence`. The simulations in `tests.rs` measure it.

use memdrift_anomaly::{Evidence, Interval};

use super::board::{instance_in, Board, CohortState, Forecast, OpenFinding};
use super::config::GateSettings;
use crate::detect::spread_drift;
use crate::signal::Signal;

/// Prior precision of the normal mixture behind [`cs_radius`], in units of information (inverse variance of
/// ln ratio): the boundary is tightest near a few times this, where a ratio of 1 is told from 1.25 (about 200).
const MIXTURE_PRECISION: f64 = 50.0;

/// One question: may `canary` of `service` proceed, against `baseline`?
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Query {
    pub service: String,
    pub baseline: String,
    pub canary: String,
    /// Compare only data from this event time on (ns); default: the start a controller recorded, else the
    /// canary cohort's first data.
    pub since: Option<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    Continue,
    Pass,
    Fail,
}

impl Decision {
    pub fn name(self) -> &'static str {
        match self {
            Decision::Continue => "continue",
            Decision::Pass => "pass",
            Decision::Fail => "fail",
        }
    }
}

/// The spread comparison of one signal since the canary started.
#[derive(Clone, Debug, PartialEq)]
pub struct SignalSpread {
    pub signal: Signal,
    /// Looks combined (non-overlapping windows with values of both cohorts).
    pub looks: u32,
    pub canary_samples: u64,
    pub baseline_samples: u64,
    /// Ratio of spreads (canary / baseline) with its time-uniform interval at the gate's confidence; `None`
    /// before the first look.
    pub ratio: Option<Interval>,
    /// The upper bound is below the tolerance.
    pub equivalent: bool,
    /// The open spread finding on this signal, if any: its sd ratio and sequential p-value.
    pub finding: Option<(Interval, f64)>,
    /// The end of the newest look combined (event-time ns).
    pub until: Option<u64>,
}

/// An open `leak` finding on a canary instance.
#[derive(Clone, Debug, PartialEq)]
pub struct CanaryLeak {
    pub instance: String,
    pub signal: String,
    pub classification: &'static str,
    pub growth_bytes_per_s: f64,
    pub p_value: f64,
}

/// A canary instance's forecast of its time to the memory limit.
#[derive(Clone, Debug, PartialEq)]
pub struct CanaryForecast {
    pub instance: String,
    pub time_to_limit_s: f64,
    /// The interval of the open `growth` finding, when one is open.
    pub interval: Option<Interval>,
    /// A `growth` finding (limit within the horizon) is open on it.
    pub warning: bool,
}

/// The answer, with everything it rests on.
#[derive(Clone, Debug, PartialEq)]
pub struct Verdict {
    pub decision: Decision,
    pub reasons: Vec<String>,
    pub query: Query,
    pub tolerance: f64,
    pub confidence: f64,
    pub spread: Vec<SignalSpread>,
    pub forecast: Vec<CanaryForecast>,
    pub leak: Vec<CanaryLeak>,
    /// Values compared, the signal with the most: (baseline, canary).
    pub samples: (u64, u64),
    /// Event time (ns): the comparison's start, the end of the newest look used, and the board's newest data.
    pub since: Option<u64>,
    pub until: Option<u64>,
    pub now: u64,
    /// The rule for a rollback: a confident failure (a finding, not a trend of looks).
    pub rollback: bool,
    /// Canary instances without a forecast yet, where the service's other instances have one.
    pub unforecast: usize,
}

/// The radius, on the log scale, of a time-uniform confidence sequence for a weighted mean whose information
/// (the sum of the weights, each an inverse variance) is `info`: the normal-mixture boundary (Robbins 1970;
/// Howard, Ramdas, McAuliffe and Sekhon 2021, eq. 14). With S the weighted sum of deviations from the truth,
/// P(S >= sqrt((V + rho) (ln((V + rho) / rho) + 2 ln(1 / alpha))) for some V) <= alpha.
pub fn cs_radius(info: f64, alpha: f64) -> f64 {
    if info <= 0.0 || !info.is_finite() {
        return f64::INFINITY;
    }
    let rho = MIXTURE_PRECISION;
    ((info + rho) * (((info + rho) / rho).ln() + 2.0 * (1.0 / alpha).ln())).sqrt() / info
}

impl Board {
    /// The verdict for one pair of cohorts.
    pub fn verdict(&self, query: &Query) -> Verdict {
        decide(self, query)
    }
}

fn decide(board: &Board, q: &Query) -> Verdict {
    let s = &board.settings;
    let mut v = Verdict {
        decision: Decision::Continue,
        reasons: Vec::new(),
        query: q.clone(),
        tolerance: s.tolerance,
        confidence: s.confidence,
        spread: Vec::new(),
        forecast: Vec::new(),
        leak: Vec::new(),
        samples: (0, 0),
        since: None,
        until: None,
        now: board.newest,
        rollback: false,
        unforecast: 0,
    };
    let service = board.services.get(q.service.as_str());
    let cohort = |name: &str| service.and_then(|st| st.cohorts.get(name));
    let (baseline, canary) = (cohort(&q.baseline), cohort(&q.canary));
    let open: Vec<&OpenFinding> = (board.findings.values())
        .filter(|f| f.service == q.service)
        .collect();
    fail_reasons(&mut v, &open, canary, service.map(|st| &st.forecasts));
    let (canary, baseline) = match (canary, baseline) {
        (Some(c), Some(b)) => (c, b),
        (c, _) => {
            let (role, name) = match c {
                None => ("canary", &q.canary),
                Some(_) => ("baseline", &q.baseline),
            };
            v.reasons.push(format!(
                "no data yet from {role} cohort {name:?} of service {:?}{}",
                q.service,
                known_cohorts(board, &q.service)
            ));
            return finish(v);
        }
    };
    let recorded = board.starts.get(&(q.service.clone(), q.canary.clone()));
    let start = (q.since.or(recorded.map(|(at, _)| *at))).unwrap_or(canary.first_seen);
    v.since = Some(start);
    for &signal in &s.signals {
        if let Some(spread) = compare_since(baseline, canary, signal, start, s) {
            v.samples.0 = v.samples.0.max(spread.baseline_samples);
            v.samples.1 = v.samples.1.max(spread.canary_samples);
            v.spread.push(spread);
        }
    }
    attach_spread_findings(&mut v, &open);
    v.until = v.spread.iter().filter_map(|x| x.until).max();
    pass_reasons(&mut v, start.max(canary.first_seen), canary.last_seen, s);
    finish(v)
}

/// Open spread findings on the canary, beside the signal's spread (a signal without looks of its own gets a row).
fn attach_spread_findings(v: &mut Verdict, open: &[&OpenFinding]) {
    for f in open {
        if f.canary() != Some(v.query.canary.as_str()) {
            continue;
        }
        if let Evidence::Spread {
            sd_ratio, p_value, ..
        } = &f.evidence
        {
            match v.spread.iter_mut().find(|x| x.signal.name() == f.signal) {
                Some(x) => x.finding = Some((*sd_ratio, *p_value)),
                None => {
                    if let Some(signal) = Signal::from_name(&f.signal) {
                        v.spread.push(SignalSpread {
                            signal,
                            looks: 0,
                            canary_samples: 0,
                            baseline_samples: 0,
                            ratio: None,
                            equivalent: false,
                            finding: Some((*sd_ratio, *p_value)),
                            until: None,
                        });
                    }
                }
            }
        }
    }
}

/// `fail` reasons: open findings on the canary cohort or its instances; the canary instances' forecasts.
fn fail_reasons(
    v: &mut Verdict,
    open: &[&OpenFinding],
    canary: Option<&CohortState>,
    forecasts: Option<&std::collections::HashMap<String, Forecast>>,
) {
    let mut findings: Vec<&&OpenFinding> = open.iter().collect();
    findings.sort_by(|a, b| (&a.signal, &a.instance).cmp(&(&b.signal, &b.instance)));
    for f in findings {
        let on_canary = match (&f.instance, canary) {
            (Some(instance), Some(c)) => instance_in(c, instance),
            _ => false,
        };
        add_finding(v, f, on_canary);
    }
    if let (Some(c), Some(forecasts)) = (canary, forecasts) {
        add_quiet_forecasts(v, c, forecasts);
    }
    if !v.reasons.is_empty() {
        v.decision = Decision::Fail;
    }
}

/// One open finding's reason, when it speaks against the canary: a spread finding naming it, or a growth or leak
/// finding on one of its instances (`on_canary`).
fn add_finding(v: &mut Verdict, f: &OpenFinding, on_canary: bool) {
    match &f.evidence {
        Evidence::Spread {
            sd_ratio,
            p_value,
            cohorts,
            ..
        } if cohorts.canary == v.query.canary => {
            v.reasons.push(format!(
                "spread: canary {:?} is wider than {:?} on {}: sd ratio {:.2} [{:.2}, {:.2}], p = {:.2e}",
                v.query.canary, cohorts.baseline, f.signal, sd_ratio.value, sd_ratio.low, sd_ratio.high, p_value
            ));
            v.rollback = true;
        }
        Evidence::Growth {
            time_to_limit_s, ..
        } if on_canary => {
            let instance = f.instance.clone().unwrap_or_default();
            let text = match time_to_limit_s {
                Some(t) => format!(
                    "forecast: canary instance {instance} reaches its memory limit in {:.0} s [{:.0}, {:.0}] ({})",
                    t.value, t.low, t.high, f.signal
                ),
                None => format!("forecast: canary instance {instance} is heading to its memory limit ({})", f.signal),
            };
            v.reasons.push(text);
            v.rollback = true;
            v.forecast.push(CanaryForecast {
                instance,
                time_to_limit_s: time_to_limit_s.map_or(f64::NAN, |t| t.value),
                interval: *time_to_limit_s,
                warning: true,
            });
        }
        Evidence::Leak {
            p_value,
            growth_bytes_per_s,
            ..
        } if on_canary => {
            let instance = f.instance.clone().unwrap_or_default();
            let class = f.leak_class().map_or("unknown", |c| c.name());
            v.reasons.push(format!(
                "leak: canary instance {instance} leaks {:.0} B/s ({class}, {}), p = {:.2e}",
                growth_bytes_per_s, f.signal, p_value
            ));
            v.rollback = true;
            v.leak.push(CanaryLeak {
                instance,
                signal: f.signal.clone(),
                classification: class,
                growth_bytes_per_s: *growth_bytes_per_s,
                p_value: *p_value,
            });
        }
        _ => {}
    }
}

/// The forecasts of the canary's instances that no warning named, and how many of its instances are not forecast
/// yet where the service's are.
fn add_quiet_forecasts(
    v: &mut Verdict,
    c: &CohortState,
    forecasts: &std::collections::HashMap<String, Forecast>,
) {
    let mut quiet: Vec<CanaryForecast> = (forecasts.iter())
        .filter(|(instance, _)| instance_in(c, instance))
        .filter(|(instance, _)| !v.forecast.iter().any(|x| &&x.instance == instance))
        .map(|(instance, f)| CanaryForecast {
            instance: instance.clone(),
            time_to_limit_s: f.seconds,
            interval: None,
            warning: false,
        })
        .collect();
    quiet.sort_by(|a, b| a.instance.cmp(&b.instance));
    v.forecast.extend(quiet);
    // Where the service's instances are forecast (their limit is known), a canary instance not forecast yet is
    // one the growth detector has not seen long enough to vouch for.
    if !forecasts.is_empty() {
        v.unforecast = c.instances.len().saturating_sub(v.forecast.len());
    }
}

/// Combines the looks of both cohorts at `signal` since `start` into the ratio's estimate and interval.
fn compare_since(
    baseline: &CohortState,
    canary: &CohortState,
    signal: Signal,
    start: u64,
    s: &GateSettings,
) -> Option<SignalSpread> {
    let (b, c) = (baseline.looks.get(&signal)?, canary.looks.get(&signal)?);
    let (mut info, mut weighted, mut looks) = (0.0, 0.0, 0u32);
    let (mut nb, mut nc, mut until) = (0u64, 0u64, None);
    for look in c {
        if look.end.saturating_sub(s.window_ns) < start {
            continue;
        }
        let Ok(k) = b.binary_search_by_key(&look.end, |l| l.end) else {
            continue;
        };
        let (c, base) = (&look.spread, &b[k].spread);
        let (Some((lc, vc)), Some((lb, vb))) = (
            c.summary.log_mean_abs_dev(),
            base.summary.log_mean_abs_dev(),
        ) else {
            continue;
        };
        // As the spread detector weighs a look: autocorrelation within instances inflates the variances.
        let (_, inflation) = spread_drift::shared_autocorrelation(c, base);
        let (vc, vb) = (vc * inflation, vb * inflation);
        // ln of a mean absolute deviation is low by about half its variance; the cohorts' sizes differ.
        let d = (lc + vc / 2.0) - (lb + vb / 2.0);
        let var = vc + vb;
        if !(d.is_finite() && var.is_finite() && var > 0.0) {
            continue;
        }
        info += 1.0 / var;
        weighted += d / var;
        looks += 1;
        nc += look.spread.summary.n as u64;
        nb += b[k].spread.summary.n as u64;
        until = until.max(Some(look.end));
    }
    let ratio = (looks > 0).then(|| {
        let mean = weighted / info;
        let r = cs_radius(info, 1.0 - s.confidence);
        Interval {
            value: mean.exp(),
            low: (mean - r).exp(),
            high: (mean + r).exp(),
        }
    });
    Some(SignalSpread {
        signal,
        looks,
        canary_samples: nc,
        baseline_samples: nb,
        equivalent: ratio.is_some_and(|r| r.high < s.tolerance),
        ratio,
        finding: None,
        until,
    })
}

/// `pass` when nothing failed and every condition of the equivalence rule holds; otherwise the reasons why not.
fn pass_reasons(v: &mut Verdict, started: u64, newest: u64, s: &GateSettings) {
    if v.decision == Decision::Fail {
        return;
    }
    let mut missing = Vec::new();
    let ran = newest.saturating_sub(started);
    if ran < s.min_duration_ns {
        missing.push(format!(
            "canary has run {:.0} s of the {:.0} s required",
            ran as f64 / 1e9,
            s.min_duration_ns as f64 / 1e9
        ));
    }
    let compared: Vec<&SignalSpread> = v.spread.iter().filter(|x| x.ratio.is_some()).collect();
    if compared.is_empty() {
        missing.push(format!(
            "no window yet with values of both cohorts on {}",
            names(&s.signals)
        ));
    }
    let (nb, nc) = v.samples;
    if nb < s.min_samples || nc < s.min_samples {
        missing.push(format!(
            "{nc} canary and {nb} baseline values compared, {} each required",
            s.min_samples
        ));
    }
    for f in &v.forecast {
        if f.time_to_limit_s < s.min_time_to_limit_s {
            missing.push(format!(
                "canary instance {} is forecast to reach its memory limit in {:.0} s, under the {:.0} s a pass needs",
                f.instance, f.time_to_limit_s, s.min_time_to_limit_s
            ));
        }
    }
    if v.unforecast > 0 {
        missing.push(format!(
            "{} canary instance(s) not yet forecast by growth (it needs about 15 minutes of an instance's data)",
            v.unforecast
        ));
    }
    for x in &compared {
        if let (Some(r), false) = (x.ratio, x.equivalent) {
            missing.push(format!(
                "{}: spread ratio {:.2}, upper bound {:.2} not yet below {:.2}",
                x.signal, r.value, r.high, s.tolerance
            ));
        }
    }
    if missing.is_empty() {
        v.decision = Decision::Pass;
        v.reasons = compared
            .iter()
            .filter_map(|x| x.ratio.map(|r| (x, r)))
            .map(|(x, r)| {
                format!(
                    "{}: spread ratio {:.2} [{:.2}, {:.2}], upper bound below {:.2} ({} looks)",
                    x.signal, r.value, r.low, r.high, s.tolerance, x.looks
                )
            })
            .collect();
    } else {
        v.reasons = missing;
    }
}

fn finish(mut v: Verdict) -> Verdict {
    v.reasons.dedup();
    v
}

fn names(signals: &[Signal]) -> String {
    signals
        .iter()
        .map(|s| s.name())
        .collect::<Vec<_>>()
        .join(", ")
}

fn known_cohorts(board: &Board, service: &str) -> String {
    match board.services.get(service) {
        None => String::new(),
        Some(s) => {
            let seen: Vec<&str> = s.cohorts.keys().map(|c| c.as_ref()).collect();
            format!(" (cohorts seen: {})", seen.join(", "))
        }
    }
}
