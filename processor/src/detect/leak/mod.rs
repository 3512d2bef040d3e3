//! `leak`: a sustained upward trend of an instance's post-GC floor, and what kind of leak it is.
//!
//! Every minute, per instance, on the grid of [`super::grid`]:
//! 1. The floor is the running minimum of bucket minima over `floor_window` (at least one GC cycle), read once a
//!    minute from the end of warm-up over at most `lookback` (at least `min_span` is needed).
//! 2. Mann-Kendall on the floor with the Hamed-Rao correction (the running minimum is strongly autocorrelated),
//!    and the Theil-Sen floor slope. A finding needs p < `alpha`, a slope of at least `min_slope_bytes_per_s`,
//!    and the trend in both halves of the most recent `min_span` (each half's slope at least half the minimum):
//!    a one-time step is flat on one side of it, a leak rises on both), and a line must fit the stretch better
//!    than a single level shift.
//!    A finding opens after three consecutive positive tests (minutes).
//! 3. Classification from the heap signals' floors, tested the same way: `heap` when allocator live bytes
//!    (memspan.heap.allocated) rise; else `fragmentation` when resident or retained bytes rise; else `off_heap`
//!    when live heap data is there and flat (native buffers, mmap, C memory); `unknown` without heap data.
//!
//! A leak calls for a rollback or a restart, not more replicas.

pub mod config;

use std::collections::HashMap;

use memdrift_anomaly::{
    Anomaly, AnomalyKind, AnomalyState, Episode, Evidence, Identity, LeakClass,
};

pub use config::{LeakSection, LeakSettings};

use super::alarm::{Alarm, Look, Rules};
use super::grid::{
    admit, buckets, expire, instance_event, observations, InstanceKey, Observation, Track,
};
use super::{Detector, Findings, SectionError, Settings};
use crate::engine::{ClosedWindow, EngineConfig};
use crate::stats::{mann_kendall_sen, mann_kendall_slope, theil_sen};

impl Settings for LeakSettings {
    const NAME: &'static str = "leak";
    type Section = LeakSection;

    fn check(s: &LeakSection, engine: &EngineConfig) -> Result<Self, SectionError> {
        Ok(LeakSettings::from_section(s, engine.step_ns)?)
    }

    fn build(&self, engine: &EngineConfig) -> Box<dyn Detector> {
        Box::new(Leak::new(self.clone(), engine.step_ns))
    }
}

/// The floor is read every this many buckets (a minute at the default 10 s step).
const FLOOR_STRIDE: usize = 6;
/// Consecutive positive tests (minutes) before a finding opens.
const CONFIRM: u32 = 3;

/// A leak test's outcome.
#[derive(Clone, Debug, PartialEq)]
pub struct LeakTest {
    /// Floor slope, bytes per second.
    pub slope: f64,
    pub z: f64,
    pub p_value: f64,
    pub leaking: bool,
    /// The kind of leak, when leaking.
    pub classification: Option<LeakClass>,
    /// Grid index of the first floor point.
    pub from: i64,
}

struct Trend {
    slope: f64,
    z: f64,
    p: f64,
    /// Slopes of the two halves of the recent stretch (NaN when not asked for).
    halves: (f64, f64),
    /// Sen's line, when asked for.
    line: Option<crate::stats::SenSlope>,
}

/// Whether one level shift (two medians) fits `points` better (sum of absolute residuals) than the Theil-Sen
/// line: a one-time step, not a trend.
fn looks_like_step(points: &[f64], line: &crate::stats::SenSlope) -> bool {
    let (x, y): (Vec<f64>, Vec<f64>) = points
        .iter()
        .enumerate()
        .filter(|(_, v)| v.is_finite())
        .map(|(i, v)| (i as f64, *v))
        .unzip();
    let n = y.len();
    if n < 8 {
        return false;
    }
    let linear: f64 = x
        .iter()
        .zip(&y)
        .map(|(t, v)| (v - line.intercept - line.slope * t).abs())
        .sum();
    let mut scratch = Vec::with_capacity(n);
    let mut l1 = |seg: &[f64]| {
        scratch.clear();
        scratch.extend_from_slice(seg);
        let m = crate::stats::median_in_place(&mut scratch);
        seg.iter().map(|v| (v - m).abs()).sum::<f64>()
    };
    (3..n - 2).any(|k| l1(&y[..k]) + l1(&y[k..]) < linear)
}

/// Mann-Kendall (Hamed-Rao) and the Theil-Sen slope on `points`; with `full` (the RSS floor), also Sen's line
/// (for the level-shift check) and the slopes of the two halves of the most recent `recent` points
/// (persistence). The heap floors need neither.
fn trend(points: &[f64], per_s: f64, recent: usize, full: bool) -> Option<Trend> {
    let (mk, slope, line) = if full {
        let (mk, ts) = mann_kendall_sen(points, 0.95)?;
        (mk, ts.slope, Some(ts))
    } else {
        let (mk, slope) = mann_kendall_slope(points)?;
        (mk, slope, None)
    };
    let (a, b) = if full {
        let tail = &points[points.len().saturating_sub(recent)..];
        let h = tail.len() / 2;
        let half = |p: &[f64]| theil_sen(p, 0.95).map_or(f64::NAN, |s| s.slope * per_s);
        (half(&tail[..h]), half(&tail[h..]))
    } else {
        (f64::NAN, f64::NAN)
    };
    Some(Trend {
        slope: slope * per_s,
        z: mk.z,
        p: mk.p_value,
        halves: (a, b),
        line,
    })
}

/// The kind of a leak whose RSS floor trend is `rss`, from the floors of the heap signals (in the order of
/// [`super::grid::HEAP_SIGNALS`]) past their first `skip` points, the stretch `rss` was fitted on: `heap` when allocator live bytes rise with a fair share of
/// the growth; else `fragmentation` when resident or retained bytes do; else `off_heap` when live heap data is
/// there and flat; `unknown` without heap data.
fn classify(
    heap_floors: impl Iterator<Item = Vec<f64>>,
    skip: usize,
    rss: &Trend,
    alpha: f64,
    per_s: f64,
    recent: usize,
) -> LeakClass {
    let mut seen = [false; 3];
    let mut rising = [false; 3];
    for (k, pts) in heap_floors.enumerate().take(3) {
        let pts = &pts[skip.min(pts.len())..];
        if pts.iter().filter(|v| v.is_finite()).count() >= 10 {
            seen[k] = true;
            if let Some(h) = trend(pts, per_s, recent, false) {
                // Rising, and carrying a fair share of the RSS floor's growth.
                rising[k] = h.p < alpha && h.z > 0.0 && h.slope >= 0.25 * rss.slope.max(0.0);
            }
        }
    }
    if rising[0] {
        LeakClass::Heap
    } else if rising[1] || rising[2] {
        LeakClass::Fragmentation
    } else if seen[0] {
        LeakClass::OffHeap
    } else {
        LeakClass::Unknown
    }
}

/// Tests one instance's floor: pure, for the simulations and the benchmark.
pub fn test(track: &Track, s: &LeakSettings, step_ns: u64) -> Option<LeakTest> {
    let warm = buckets(s.grid.warmup_ns, step_ns) as i64;
    let look = buckets(s.lookback_ns, step_ns) as i64;
    let min_span = buckets(s.min_span_ns, step_ns) as i64;
    let win = track.adapted_span(buckets(s.floor_window_ns, step_ns), look as usize / 3);
    let from = (track.started + warm).max(track.last - look + 1);
    if track.last - from + 1 < min_span {
        return None;
    }
    let floor_of = |series| {
        let mut points = Vec::new();
        let mut i = track.last;
        while i >= from {
            points.push(track.extreme(series, i, win, false));
            i -= FLOOR_STRIDE as i64;
        }
        points.reverse();
        points
    };
    let per_s = 1e9 / (FLOOR_STRIDE as f64 * step_ns as f64);
    let rss = floor_of(&track.min);
    let first = track.last - (rss.len() as i64 - 1) * FLOOR_STRIDE as i64;
    if rss.iter().filter(|v| v.is_finite()).count() < 10 {
        return None;
    }
    let recent = min_span as usize / FLOOR_STRIDE;
    // The level-shift check, the dearest, last.
    let rising = |t: &Trend, points: &[f64]| {
        t.p < s.alpha
            && t.z > 0.0
            && t.slope >= s.min_slope
            && t.halves.0 >= s.min_slope / 2.0
            && t.halves.1 >= s.min_slope / 2.0
            && t.line.is_some_and(|l| !looks_like_step(points, &l))
    };
    // The whole lookback, or only its most recent `min_span`: a leak that began after a long flat stretch is
    // a change of regime, which the whole-lookback test reads as autocorrelation and discounts.
    let full = trend(&rss, per_s, recent, true)?;
    let (t, skip, leaking) = if rising(&full, &rss) {
        (full, 0, true)
    } else {
        let skip = rss.len().saturating_sub(recent);
        match trend(&rss[skip..], per_s, recent, true) {
            Some(r) if rising(&r, &rss[skip..]) => (r, skip, true),
            _ => (full, 0, false),
        }
    };
    let first = first + (skip * FLOOR_STRIDE) as i64;
    // Classified only when leaking: what is reported with the finding.
    let classification = leaking.then(|| {
        let heap_floors = track.heap.iter().map(&floor_of);
        classify(heap_floors, skip, &t, s.alpha, per_s, recent)
    });
    Some(LeakTest {
        slope: t.slope,
        z: t.z,
        p_value: t.p,
        leaking,
        classification,
        from: first,
    })
}

struct InstanceState {
    track: Track,
    alarm: Alarm,
    /// The latest test while closed; the evidence last reported while open.
    last: Option<LeakTest>,
}

pub struct Leak {
    settings: LeakSettings,
    step_ns: u64,
    instances: HashMap<InstanceKey, InstanceState>,
    /// Instances ignored because the cap was reached.
    pub overflow: u64,
}

impl Leak {
    pub fn new(settings: LeakSettings, step_ns: u64) -> Leak {
        Leak {
            settings,
            step_ns,
            instances: HashMap::new(),
            overflow: 0,
        }
    }

    /// The grid of each instance held.
    pub fn tracks(&self) -> impl Iterator<Item = &Track> {
        self.instances.values().map(|s| &s.track)
    }

    fn rules(&self) -> Rules {
        Rules {
            // One noisy minute is not a leak.
            confirm: CONFIRM,
            resolve_after: self.settings.resolve_after,
            update_every: 1,
        }
    }

    fn event(
        &self,
        due: (AnomalyState, Episode),
        key: &InstanceKey,
        t: &Track,
        r: &LeakTest,
        end: u64,
    ) -> Anomaly {
        let evidence = Evidence::Leak {
            statistic: r.z,
            p_value: r.p_value,
            growth_bytes_per_s: r.slope,
            classification: r.classification.unwrap_or(LeakClass::Unknown),
            limit_bytes: t.limit,
        };
        let window = ((r.from.max(0) as u64).saturating_mul(self.step_ns), end);
        let method = "mann_kendall_hamed_rao+theil_sen_floor";
        instance_event(due, key, t, window, method, evidence)
    }

    /// One instance's step: push the observation and, once a floor stride, test and take one look.
    fn step(
        &mut self,
        key: &InstanceKey,
        o: &Observation,
        index: i64,
        end: u64,
    ) -> Option<Anomaly> {
        let cap = buckets(
            self.settings.lookback_ns + self.settings.floor_window_ns,
            self.step_ns,
        ) + 1;
        let signal = o.memory?.0;
        let (rules, step_ns) = (self.rules(), self.step_ns);
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
        let due = if st.track.push(index, o, &self.settings.grid, end) {
            // A restart ends the finding, resolved with the evidence it last reported.
            let open = st.alarm.reset();
            open.zip(st.last.take())
                .map(|(e, r)| ((AnomalyState::Resolved, e), r))
        } else if index.rem_euclid(FLOOR_STRIDE as i64) == 0 {
            let r = test(&st.track, &self.settings, step_ns);
            let look = if r.as_ref().is_some_and(|r| r.leaking) {
                Look::Alarm
            } else {
                Look::Clear
            };
            let identity = Identity {
                kind: AnomalyKind::Leak,
                service: &key.0,
                instance: Some(&key.1),
                signal: st.track.signal.name(),
                cohort: None,
            };
            let onset = r
                .as_ref()
                .map(|r| (r.from.max(0) as u64).saturating_mul(step_ns));
            let was_open = st.alarm.is_open();
            let due = st.alarm.look(look, &rules, || {
                Episode::new(identity, onset.unwrap_or(end), end)
            });
            match due {
                // Resolved with the evidence and class of the finding's last update.
                Some(due @ (AnomalyState::Resolved, _)) => st.last.clone().map(|r| (due, r)),
                Some(due) => {
                    st.last = r.clone();
                    r.map(|r| (due, r))
                }
                None if !was_open => {
                    st.last = r;
                    None
                }
                None => None,
            }
        } else {
            None
        };
        let (due, r) = due?;
        Some(self.event(due, key, &self.instances[key].track, &r, end))
    }
}

impl Detector for Leak {
    fn name(&self) -> &'static str {
        "leak"
    }

    fn live_keys(&self) -> usize {
        self.instances.len()
    }

    fn on_window(&mut self, window: &ClosedWindow, out: &mut Findings) {
        let end = window.end_unix_nano;
        let index = (end / self.step_ns.max(1)) as i64;
        for (key, o) in observations(window, &self.settings.grid.signals) {
            if let Some(mut a) = self.step(&key, &o, index, end) {
                a.exemplars = o.exemplars(window).to_vec();
                out.anomalies.push(a);
            }
        }
        let idle = self.settings.grid.idle_timeout_ns;
        for (k, mut st) in expire(&mut self.instances, |s| &s.track, idle, end) {
            if let (Some(episode), Some(r)) = (st.alarm.reset(), &st.last) {
                out.anomalies.push(self.event(
                    (AnomalyState::Resolved, episode),
                    &k,
                    &st.track,
                    r,
                    end,
                ));
            }
        }
    }
}
