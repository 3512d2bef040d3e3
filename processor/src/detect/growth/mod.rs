//! `growth`: will this instance run out of memory, and when? And (`leak`, in [`leak`]) is its post-GC floor
//! rising, and what kind of leak is it?
//!
//! Both work per (service, instance) on a regular grid ([`grid`]): one bucket per engine step (max and min of the
//! memory signal), gaps kept as gaps, in a bounded ring.
//!
//! `growth` forecasts the **peak envelope**, not the mean: a process dies at the top of its GC sawtooth. Every
//! step:
//! 1. The envelope is a high order statistic of the bucket maxima over `envelope` (at least one GC cycle;
//!    widened for sparse input): the 3rd largest of a 10 s grid's 30, the 2nd of a minute metric's 10, so one or
//!    two tail samples (Student-t noise, a rare spike) never lift it. It is read every 3 buckets over at most
//!    `lookback`, from windows that lie wholly past warm-up, once half the lookback is there.
//! 2. Theil-Sen slopes with Sen's interval are fitted on the whole stretch and on the `recent` part (at least
//!    two windows). The long fit is used when the recent interval agrees with it; otherwise the recent one: a
//!    one-time step then flat stops counting once it has left the recent stretch, and a new, steeper trend is
//!    not averaged away. Where the last half of that stretch rises significantly slower (a ramp settling on a
//!    plateau), its rate is the one extrapolated.
//! 3. The peak to expect is the envelope now, plus what its order statistic misses of the peaks (from the
//!    spread of each window, as for samples at random phases of a cycle) and z times its scatter around the
//!    trend. Time to the limit = headroom / slope, with its interval from the slope's interval. A warning opens
//!    when the **point** forecast is within `horizon` plus the pipeline's own lag (allowed lateness and a step,
//!    plus half a window: the envelope trails the rising peaks), the slope's lower bound is positive (a flat
//!    series is never extrapolated), the headroom is below `max_headroom` of the limit, the stretch does not
//!    look like one level shift (a one-time step), the envelope is not settling below the limit
//!    (`settles_below`: a start-up ramp or a cache warming slows as it nears its plateau), and it stands clear
//!    above everything it reached before the recent stretch (`new_high`: autocorrelated noise wanders within a
//!    range; a rise towards the limit leaves it). A wide interval, from noisy or short data, makes the warning
//!    wait; it never makes it fire.
//! 4. An open warning holds while the widest upper bound of the two fits puts the limit within twice that
//!    horizon, and resolves only after `resolve_after` evaluations with a fresh sample have failed to hold it:
//!    on minute metrics the envelope is a staircase whose slope swings from point to point, and a clean minute
//!    is one piece of evidence, not six.
//!
//! Nothing is forecast during `warmup` after a start or a restart (a drop well below the recent floor, or a
//! silence longer than the ring); a restart resolves an open warning.

pub mod config;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::Arc;

use memdrift_anomaly::{
    Anomaly, AnomalyKind, AnomalyState, Episode, Evidence, Identity, Interval as EventInterval,
};

pub use config::{GrowthSection, GrowthSettings};

use super::alarm::{Alarm, Look, Rules};
use super::grid::{
    admit, buckets, expire, highest, instance_event, level_shift_fits, observations, InstanceKey,
    LimitSource, Observation, Track,
};
use super::{checkpoint, CheckpointError, Detector, Findings, Gauge, SectionError, Settings};
use crate::engine::{ClosedWindow, EngineConfig};
use crate::stats::{median_in_place, normal_quantile, sen_slope, theil_sen, SenSlope};

impl Settings for GrowthSettings {
    const NAME: &'static str = "growth";
    type Section = GrowthSection;

    fn check(s: &GrowthSection, engine: &EngineConfig) -> Result<Self, SectionError> {
        Ok(GrowthSettings::from_section(s, engine.step_ns)?)
    }

    fn build(&self, engine: &EngineConfig) -> Box<dyn Detector> {
        // The pipeline runs behind event time by the allowed lateness and up to a step.
        let lag = engine.allowed_lateness_ns + engine.step_ns;
        Box::new(Growth::new(self.clone(), engine.step_ns, lag))
    }
}

/// The envelope is read every this many buckets.
pub const STRIDE: usize = 3;
/// Times to the limit are capped here (30 days) so events and gauges stay finite.
pub const MAX_TTL_S: f64 = 30.0 * 86_400.0;

/// The outcome of one forecast.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Forecast {
    /// Slope of the envelope, bytes per second, with its interval.
    pub slope: f64,
    pub slope_low: f64,
    pub slope_high: f64,
    /// The envelope now plus its scatter around the trend (the peak to expect), bytes.
    pub envelope: f64,
    pub limit: Option<f64>,
    /// Seconds to the limit: estimate, low (from the slope's upper bound), high.
    pub ttl: Option<(f64, f64, f64)>,
    /// Whether this forecast warns.
    pub warn: bool,
    /// Whether it keeps an open warning open.
    pub hold: bool,
    /// Grid index of the first envelope point fitted.
    pub from: i64,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct InstanceState {
    track: Track,
    alarm: Alarm,
    last: Option<Forecast>,
}

pub struct Growth {
    settings: GrowthSettings,
    step_ns: u64,
    lag_ns: u64,
    instances: HashMap<(Arc<str>, Arc<str>), InstanceState>,
    /// Instances ignored because the cap was reached.
    pub overflow: u64,
}

fn ttl(headroom: f64, slope: f64) -> f64 {
    if headroom <= 0.0 {
        0.0
    } else if slope <= 0.0 {
        MAX_TTL_S
    } else {
        (headroom / slope).min(MAX_TTL_S)
    }
}

/// The envelope read from a track, every [`STRIDE`] buckets over the lookback.
struct Envelope {
    /// The robust envelope: per window, the [`robust_rank`]-th largest bucket maximum (NaN without data).
    points: Vec<f64>,
    /// How far the peaks (a GC cycle's top) sit above the robust envelope, the median over the windows of
    /// what [`window_high`] finds: a lone spike does not lift it.
    gap: f64,
    /// Grid index of the first point.
    first: i64,
    /// Buckets per window (widened for sparse input, see [`Track::adapted_span`]).
    span: usize,
}

/// Which order statistic of a window's `present` bucket maxima is its envelope: the maximum under 10, the 2nd
/// largest under 20, else the 3rd (a 10 s grid's 5 minutes hold 30). One or two samples far out in a tail
/// (Student-t, a rare spike) then never lift it; a GC cycle's top, seen in several buckets or cycles per window,
/// still does.
pub fn robust_rank(present: usize) -> usize {
    (1 + present / 10).min(3)
}

/// The robust envelope of the `span` buckets of `track.max` ending at grid index `i` (within the current run),
/// and how far the peak may sit above it: for `n` samples at random phases of a cycle between a floor and a
/// peak, the k-th largest falls short of the peak by k/(n+1) of the range, and the k-th smallest is as far
/// above the floor, so the shortfall is k (high - low) / (n + 1 - 2k). Sparse samples (a minute metric)
/// rarely catch a GC cycle's top: this is what they miss. NaN when all are gaps.
fn window_high(track: &Track, i: i64, span: usize) -> (f64, f64) {
    let Some(end) = track.pos(i) else {
        return (f64::NAN, f64::NAN);
    };
    let start = track
        .pos((i - span as i64 + 1).max(track.started))
        .unwrap_or(0);
    let (n, top, bottom) = extremes(track.max.range(start..=end).copied());
    if n == 0 {
        return (f64::NAN, f64::NAN);
    }
    let k = robust_rank(n).min(n);
    let (high, low) = (top[k - 1], bottom[k - 1]);
    let room = (n + 1).saturating_sub(2 * k).max(1);
    (high, k as f64 * (high - low) / room as f64)
}

/// In one pass over `values`: how many are finite, and the three largest (descending) and three smallest
/// (ascending) of those, ties counted: a descending sort's first three and last three. [`robust_rank`] never
/// asks for more than the 3rd.
fn extremes(values: impl Iterator<Item = f64>) -> (usize, [f64; 3], [f64; 3]) {
    let mut top = [f64::NEG_INFINITY; 3];
    let mut bottom = [f64::INFINITY; 3];
    let mut n = 0;
    for v in values.filter(|v| v.is_finite()) {
        n += 1;
        if v > top[2] {
            let mut j = 2;
            while j > 0 && top[j - 1] < v {
                top[j] = top[j - 1];
                j -= 1;
            }
            top[j] = v;
        }
        if v < bottom[2] {
            let mut j = 2;
            while j > 0 && bottom[j - 1] > v {
                bottom[j] = bottom[j - 1];
                j -= 1;
            }
            bottom[j] = v;
        }
    }
    (n, top, bottom)
}

/// Reads the envelope, or `None` before the run holds half the lookback (and at least `recent`) of windows
/// that lie wholly within it, past warm-up: right after a start a window still filling finds fewer GC peaks
/// than a full one (a rise that is not there), and a start-up ramp is still climbing.
fn envelope(track: &Track, s: &GrowthSettings, step_ns: u64) -> Option<Envelope> {
    let warm = buckets(s.grid.warmup_ns, step_ns) as i64;
    let look = buckets(s.lookback_ns, step_ns) as i64;
    let span = track.adapted_span(buckets(s.envelope_ns, step_ns), look as usize / 3);
    let from = (track.started + warm.max(span as i64 - 1)).max(track.last - look + 1);
    // The long fit must reach further back than the recent one to tell a trend from a ramp settling.
    let needed = buckets(s.recent_ns, step_ns).max(look as usize / 2) as i64;
    if track.last - from + 1 < needed {
        return None;
    }
    let mut points = Vec::with_capacity(look as usize / STRIDE + 1);
    let mut gaps = Vec::with_capacity(points.capacity());
    let mut i = track.last;
    while i >= from {
        let (robust, short) = window_high(track, i, span);
        points.push(robust);
        if robust.is_finite() {
            gaps.push(short);
        }
        i -= STRIDE as i64;
    }
    points.reverse();
    let first = track.last - (points.len() as i64 - 1) * STRIDE as i64;
    let gap = if gaps.is_empty() {
        0.0
    } else {
        median_in_place(&mut gaps)
    };
    Some(Envelope {
        points,
        gap,
        first,
        span,
    })
}

/// A level shift must leave at most this share of the line's absolute residuals to count as a step (see
/// [`level_shift_fits`]): a leak seen through the staircase of a sparse envelope (a minute metric's new highs)
/// may climb in few stairs, which one shift fits about as well as a line; a step large enough to forecast a
/// crossing stands far above the noise on either side of it.
pub const STEP_FIT: f64 = 0.5;

/// The rate to forecast with: the fit's slope, moved into the interval of the slope over the last half of its
/// stretch where it lies outside: a ramp settling on a plateau (a start-up, a cache warming) is extrapolated
/// at the pace it has now, not the one it had, and so is a leak that began within the stretch (the fit
/// averages in the flat part before it). A noisy leak's last half has a wide interval that holds the fit's
/// slope, which then stands.
fn latest_rate(stretch: &[f64], fit: SenSlope, level: f64) -> f64 {
    let half = &stretch[stretch.len() / 2..];
    match theil_sen(half, level) {
        Some(h) if half.iter().filter(|v| v.is_finite()).count() >= 6 => {
            fit.slope.min(h.high).max(h.low)
        }
        _ => fit.slope,
    }
}

/// Whether the envelope is settling below the limit: the last half of its points (the whole lookback) rises
/// clearly slower than the first (by a fifth or more), and a rise that keeps slowing at that pace (an exponential approach, as a
/// start-up or a cache warming settles on its plateau) adds less than the headroom: the rate of the last half
/// times the time constant the two rates give. A leak's halves rise at one pace, up to noise, which makes the
/// time constant long and the rise to come unbounded in effect.
fn settles_below(points: &[f64], peak: f64, limit: f64, per_s: f64) -> bool {
    let half = points.len() / 2;
    let (Some(first), Some(last)) = (sen_slope(&points[..half]), sen_slope(&points[half..])) else {
        return false;
    };
    if !(first > 0.0 && last > 0.0 && last < 0.8 * first) {
        return false;
    }
    // Seconds between the halves' centres, and the time constant of a rate falling from `first` to `last`.
    let tau = half as f64 / per_s / (first / last).ln();
    peak + last * per_s * tau < limit
}

/// How far above everything before the recent stretch the envelope must stand to warn, in robust sds of its
/// scatter around the long trend ([`new_high`]).
pub const NEW_HIGH_MARGIN: f64 = 1.5;

/// Whether the envelope now (`now`) stands clear above every point before the recent stretch (the last
/// `recent` points), by [`NEW_HIGH_MARGIN`] times `scatter`; true when nothing before it is held. Strongly
/// autocorrelated noise (AR(1) at 0.93-0.97 per 10 s sample) wanders up and down within a range, and its upswing
/// read over the recent stretch alone looks like a leak; a rise towards the limit leaves that range. Measured
/// (EVALUATION.md): a margin of 1 takes off the same calm warnings as 1.5, and one of 2 makes a slow leak's
/// warning late.
fn new_high(points: &[f64], recent: usize, now: f64, scatter: f64) -> bool {
    let top = highest(&points[..points.len().saturating_sub(recent)]);
    top.is_nan() || now > top + NEW_HIGH_MARGIN * scatter
}

/// The robust sd of the points' residuals around `line`: how far a peak may sit above the trend.
fn scatter(points: &[f64], line: &SenSlope) -> f64 {
    let mut resid: Vec<f64> = points
        .iter()
        .enumerate()
        .filter(|(_, v)| v.is_finite())
        .map(|(k, v)| v - line.intercept - line.slope * k as f64)
        .collect();
    let centre = median_in_place(&mut resid);
    for r in &mut resid {
        *r = (*r - centre).abs();
    }
    1.4826 * median_in_place(&mut resid)
}

/// The long fit when the recent stretch agrees with it (with the higher of the two upper bounds: the long
/// fit's interval is narrow for its strongly autocorrelated points; the recent one is not); otherwise the
/// recent one: a one-time step then flat stops counting once it has left the recent stretch, and a new,
/// steeper trend is not averaged away.
fn choose(long: SenSlope, short: Option<SenSlope>) -> SenSlope {
    match short {
        Some(r) if r.low <= long.slope && long.slope <= r.high => SenSlope {
            high: long.high.max(r.high),
            ..long
        },
        Some(r) => r,
        None => long,
    }
}

/// Forecasts one instance from its track: pure, so the simulations and the benchmark call it directly.
pub fn forecast(track: &Track, s: &GrowthSettings, step_ns: u64, lag_ns: u64) -> Option<Forecast> {
    let Envelope {
        points,
        gap,
        first,
        span,
    } = envelope(track, s, step_ns)?;
    if points.iter().filter(|v| v.is_finite()).count() < 8 {
        return None;
    }
    // The recent stretch spans at least two windows: over a sparse envelope's staircase a shorter one is
    // often a single stair, flat.
    let recent = buckets(s.recent_ns, step_ns).max(2 * span) / STRIDE;
    let per_s = 1e9 / (STRIDE as f64 * step_ns as f64);
    let long = theil_sen(&points, s.level)?;
    let tail = &points[points.len().saturating_sub(recent)..];
    let short =
        theil_sen(tail, s.level).filter(|_| tail.iter().filter(|v| v.is_finite()).count() >= 6);
    let widest_high = short.map_or(long.high, |r| r.high.max(long.high)) * per_s;
    let fit = choose(long, short);
    let now_pos = (points.len() - 1) as f64;
    let observed = points.iter().rev().find(|v| v.is_finite()).copied()?;
    let fitted = long.intercept + long.slope * now_pos;
    // The peak to expect: the robust envelope now (or the long trend's value, when that is the fit), the gap
    // the peaks keep above it, and z times its scatter around the trend (GC cycles differ).
    let base = observed.max(if fit.slope == long.slope {
        fitted
    } else {
        observed
    });
    let spread = scatter(&points, &long);
    let envelope = base + gap + normal_quantile(s.level) * spread;
    let limit = track.limit.or(s.limit_bytes);
    // The stretch the fit stands on (which must not look like one step).
    let stretch = if fit.slope == long.slope {
        &points[..]
    } else {
        tail
    };
    let point = latest_rate(stretch, fit, s.level) * per_s;
    // The latest rate may lie outside the fit's interval (a rise that steepened within the stretch): the
    // interval then widens to hold it, so the forecast lies within its own bounds.
    let (slope, slope_low, slope_high) = (
        point,
        (fit.low * per_s).min(point),
        (fit.high * per_s).max(point),
    );
    let ttl = limit.map(|l| {
        let h = l - envelope;
        (ttl(h, slope), ttl(h, slope_high), ttl(h, slope_low))
    });
    // The pipeline's lag, and half a window: the envelope trails the rising peaks.
    let horizon = (s.horizon_ns + lag_ns) as f64 / 1e9 + (span as u64 * step_ns / 2) as f64 / 1e9;
    let (warn, hold) = match (limit, ttl) {
        (Some(l), Some((point, _, _))) => {
            let headroom = l - envelope < s.max_headroom * l;
            (
                // On the point forecast: a wide interval (noisy or short data) makes the warning wait.
                slope_low > 0.0
                    && headroom
                    && point < horizon
                    && new_high(&points, recent, observed, spread)
                    && !level_shift_fits(stretch, &fit, STEP_FIT)
                    && !settles_below(&points, envelope, l, per_s),
                // Hysteresis: an open warning holds while the most pessimistic upper bound (long or recent
                // fit) puts the limit within twice the horizon, so a slow leak near the threshold, or one seen
                // through sparse points whose recent slope swings to zero, does not flap.
                headroom && self::ttl(l - envelope, widest_high) < 2.0 * horizon,
            )
        }
        _ => (false, false),
    };
    Some(Forecast {
        slope,
        slope_low,
        slope_high,
        envelope,
        limit,
        ttl,
        warn,
        hold,
        from: first,
    })
}

impl Growth {
    /// `step_ns` is the engine's step (the grid's resolution); `lag_ns` is how far the pipeline runs behind event
    /// time (allowed lateness plus a step), added to the horizon.
    pub fn new(settings: GrowthSettings, step_ns: u64, lag_ns: u64) -> Growth {
        Growth {
            settings,
            step_ns,
            lag_ns,
            instances: HashMap::new(),
            overflow: 0,
        }
    }

    /// The grid of each instance held.
    pub fn tracks(&self) -> impl Iterator<Item = &Track> {
        self.instances.values().map(|s| &s.track)
    }

    fn capacity(&self) -> usize {
        buckets(
            self.settings.lookback_ns + self.settings.envelope_ns,
            self.step_ns,
        ) + 1
    }

    fn rules(&self) -> Rules {
        Rules {
            confirm: 1,
            resolve_after: self.settings.resolve_after,
            // An update a minute at the default step.
            update_every: 6,
            hold_keeps_streak: false,
        }
    }

    fn event(
        &self,
        due: (AnomalyState, Episode),
        key: &InstanceKey,
        t: &Track,
        f: &Forecast,
        end: u64,
    ) -> Anomaly {
        let evidence = Evidence::Growth {
            envelope_bytes: f.envelope,
            growth_bytes_per_s: f.slope,
            limit_bytes: f.limit,
            limit_source: f
                .limit
                .map(|_| t.limit_source.map_or("configured", LimitSource::name)),
            time_to_limit_s: f
                .ttl
                .map(|(value, low, high)| EventInterval { value, low, high }),
        };
        let window = (self.onset(f), end);
        instance_event(due, key, t, window, "theil_sen_envelope", evidence)
    }

    /// Start of the stretch a forecast was fitted on.
    fn onset(&self, f: &Forecast) -> u64 {
        (f.from.max(0) as u64).saturating_mul(self.step_ns)
    }

    /// One instance's step: push the observation, forecast, and take one look; returns the event due.
    fn step(
        &mut self,
        key: &InstanceKey,
        o: &Observation,
        index: i64,
        end: u64,
        out: &mut Findings,
    ) -> Option<Anomaly> {
        let cap = self.capacity();
        let signal = o.memory?.0;
        let st = admit(
            &mut self.instances,
            key.clone(),
            self.settings.grid.max_instances,
            &mut self.overflow,
            || InstanceState {
                track: Track::new(signal, index, cap),
                alarm: Alarm::default(),
                last: None,
            },
        )?;
        if st.track.push(index, o, &self.settings.grid, end) {
            // A restart ends the warning: what it warned of has happened or been undone.
            let open = st.alarm.reset();
            if let (Some(episode), Some(f)) = (open, st.last.take()) {
                let st = &self.instances[key];
                let a = self.event((AnomalyState::Resolved, episode), key, &st.track, &f, end);
                out.anomalies.push(a);
            }
        }
        let (rules, step_ns, lag_ns) = (self.rules(), self.step_ns, self.lag_ns);
        let st = self.instances.get_mut(key)?;
        let f = forecast(&st.track, &self.settings, step_ns, lag_ns);
        let look = match f {
            Some(f) if f.warn => Look::Alarm,
            Some(f) if f.hold => Look::Hold,
            // Only an evaluation with a fresh sample is evidence that the danger has passed: on minute metrics a
            // warning needs as many clean minutes as dense input needs clean steps.
            _ if st.track.max.back().is_some_and(|v| v.is_finite()) => Look::Clear,
            _ => Look::Stale,
        };
        let onset = f.map(|f| (f.from.max(0) as u64).saturating_mul(step_ns));
        let identity = Identity {
            kind: AnomalyKind::Growth,
            service: &key.0,
            instance: Some(&key.1),
            signal: st.track.signal.name(),
            cohort: None,
        };
        let due = st.alarm.look(look, &rules, || {
            Episode::new(identity, onset.unwrap_or(end), end)
        });
        let shown = match due {
            Some((AnomalyState::Resolved, _)) => f.or(st.last),
            _ => f,
        };
        if f.is_some() {
            st.last = f;
        }
        let (due, shown) = (due?, shown?);
        Some(self.event(due, key, &self.instances[key].track, &shown, end))
    }

    /// Every live instance's latest forecast, in key order, until it expires or restarts.
    fn gauges(&self, out: &mut Findings) {
        let mut keys: Vec<_> = self.instances.keys().cloned().collect();
        keys.sort();
        for k in keys {
            let Some(f) = self.instances[&k].last else {
                continue;
            };
            let labels = vec![("service", k.0.to_string()), ("instance", k.1.to_string())];
            out.gauges.push(Gauge {
                name: "memdrift_growth_bytes_per_second",
                help: "Growth of an instance's peak memory envelope (Theil-Sen), bytes per second",
                labels: labels.clone(),
                value: f.slope,
            });
            if let Some((v, _, _)) = f.ttl {
                out.gauges.push(Gauge {
                    name: "memdrift_time_to_limit_seconds",
                    help: "Forecast seconds until an instance's peak memory reaches its limit (capped at 30 days)",
                    labels,
                    value: v,
                });
            }
        }
    }
}

impl Detector for Growth {
    fn name(&self) -> &'static str {
        "growth"
    }

    fn live_keys(&self) -> usize {
        self.instances.len()
    }

    fn instance_signals(&self) -> Vec<crate::signal::Signal> {
        super::grid::observed_signals(&self.settings.grid.signals)
    }

    fn save(&self, out: &mut dyn std::io::Write) -> Result<(), CheckpointError> {
        checkpoint::encode(self.name(), &(&self.instances, self.overflow), out)
    }

    fn restore(&mut self, state: &[u8]) -> Result<(), CheckpointError> {
        (self.instances, self.overflow) = checkpoint::decode(self.name(), state)?;
        Ok(())
    }

    fn on_window(&mut self, window: &ClosedWindow, out: &mut Findings) {
        let end = window.end_unix_nano;
        let index = (end / self.step_ns.max(1)) as i64;
        for (key, o) in observations(window, &self.settings.grid.signals) {
            if let Some(mut a) = self.step(&key, &o, index, end, out) {
                a.exemplars = o.exemplars(window).to_vec();
                out.anomalies.push(a);
            }
        }
        // Forget instances gone quiet; an open warning resolves with them.
        let idle = self.settings.grid.idle_timeout_ns;
        for (k, mut st) in expire(&mut self.instances, |s| &s.track, idle, end) {
            if let (Some(episode), Some(f)) = (st.alarm.reset(), st.last) {
                out.anomalies.push(self.event(
                    (AnomalyState::Resolved, episode),
                    &k,
                    &st.track,
                    &f,
                    end,
                ));
            }
        }
        self.gauges(out);
    }
}
