//! `growth`: will this instance run out of memory, and when? And (`leak`, in [`leak`]) is its post-GC floor
//! rising, and what kind of leak is it?
//!
//! Both work per (service, instance) on a regular grid ([`grid`]): one bucket per engine step (max and min of the
//! memory signal), gaps kept as gaps, in a bounded ring.
//!
//! `growth` forecasts the **peak envelope**, not the mean: a process dies at the top of its GC sawtooth. Every
//! step:
//! 1. The envelope is the running maximum over `envelope` (at least one GC cycle), read every 3 buckets from the
//!    end of warm-up over at most `lookback`.
//! 2. Theil-Sen slopes with Sen's interval are fitted on the whole stretch and on the `recent` part. The long fit
//!    is used when the recent interval agrees with it; otherwise the recent one: a one-time step then flat
//!    stops counting once it has left the recent stretch, and a new, steeper trend is not averaged away.
//! 3. Time to the limit = headroom / slope, with its interval from the slope's interval. A warning opens when
//!    the lower bound of that time is within `horizon` plus the pipeline's own lag (allowed lateness and a step,
//!    plus half the envelope span: the running maximum trails the rising peaks by up to a GC cycle), the slope's
//!    lower bound is
//!    positive (a flat series is never extrapolated) and the headroom is below `max_headroom` of the limit.
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
    admit, buckets, expire, instance_event, observations, InstanceKey, Observation, Track,
};
use super::{Detector, Findings, Gauge, SectionError, Settings};
use crate::engine::{ClosedWindow, EngineConfig};
use crate::stats::{median_in_place, normal_quantile, theil_sen, SenSlope};

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
#[derive(Clone, Copy, Debug, PartialEq)]
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

/// Forecasts one instance from its track: pure, so the simulations and the benchmark call it directly.
pub fn forecast(track: &Track, s: &GrowthSettings, step_ns: u64, lag_ns: u64) -> Option<Forecast> {
    let warm = buckets(s.grid.warmup_ns, step_ns) as i64;
    let look = buckets(s.lookback_ns, step_ns) as i64;
    let env = track.adapted_span(buckets(s.envelope_ns, step_ns), look as usize / 3);
    let recent = buckets(s.recent_ns, step_ns) / STRIDE;
    let from = (track.started + warm).max(track.last - look + 1);
    // At least half the recent stretch past warm-up before anything is said.
    if track.last - from + 1 < (recent * STRIDE / 2) as i64 {
        return None;
    }
    let mut points = Vec::with_capacity(look as usize / STRIDE + 1);
    let mut i = track.last;
    while i >= from {
        points.push(track.extreme(&track.max, i, env, true));
        i -= STRIDE as i64;
    }
    points.reverse();
    let first = track.last - (points.len() as i64 - 1) * STRIDE as i64;
    let present = points.iter().filter(|v| v.is_finite()).count();
    if present < 8 {
        return None;
    }
    let per_s = 1e9 / (STRIDE as f64 * step_ns as f64);
    let long = theil_sen(&points, s.level)?;
    let tail = &points[points.len().saturating_sub(recent)..];
    let short =
        theil_sen(tail, s.level).filter(|_| tail.iter().filter(|v| v.is_finite()).count() >= 6);
    let widest_high = short.map_or(long.high, |r| r.high.max(long.high)) * per_s;
    let fit: SenSlope = match short {
        Some(r) => {
            if r.low <= long.slope && long.slope <= r.high {
                // The recent stretch agrees: the long fit, with the higher of the two upper bounds (the long
                // fit's interval is narrow for its strongly autocorrelated points; the recent one is not).
                SenSlope {
                    high: long.high.max(r.high),
                    ..long
                }
            } else {
                r
            }
        }
        _ => long,
    };
    let now_pos = (points.len() - 1) as f64;
    let observed = points.iter().rev().find(|v| v.is_finite()).copied()?;
    let fitted = long.intercept + long.slope * now_pos;
    // The next peak may sit above the trend by the envelope's own scatter around it (GC cycles differ): the
    // headroom is measured from the envelope plus z times that scatter (a robust sd of the residuals).
    let mut resid: Vec<f64> = points
        .iter()
        .enumerate()
        .filter(|(_, v)| v.is_finite())
        .map(|(k, v)| v - long.intercept - long.slope * k as f64)
        .collect();
    let centre = median_in_place(&mut resid);
    for r in &mut resid {
        *r = (*r - centre).abs();
    }
    let scatter = 1.4826 * median_in_place(&mut resid);
    let envelope = observed.max(if fit.slope == long.slope {
        fitted
    } else {
        observed
    }) + normal_quantile(s.level) * scatter;
    let limit = track.limit.or(s.limit_bytes);
    let (slope, slope_low, slope_high) = (fit.slope * per_s, fit.low * per_s, fit.high * per_s);
    let ttl = limit.map(|l| {
        let h = l - envelope;
        (ttl(h, slope), ttl(h, slope_high), ttl(h, slope_low))
    });
    let horizon = (s.horizon_ns + lag_ns + s.envelope_ns / 2) as f64 / 1e9;
    let (warn, hold) = match (limit, ttl) {
        (Some(l), Some((_, low, _))) => {
            let headroom = l - envelope < s.max_headroom * l;
            (
                slope_low > 0.0 && headroom && low < horizon,
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
