//! `leak`: a sustained upward trend of an instance's post-GC floor, and what kind of leak it is.
//!
//! Every minute, per instance, on the grid of [`super::grid`]:
//! 1. The minute's minimum of the memory signal (and of each heap signal) joins a per-minute history of up to
//!    `lookback` ([`Minutes`]); the floor is its running minimum over `floor_window` (at least one GC cycle),
//!    from the end of warm-up on.
//! 2. A leak is a rise that is material and sustained, judged two ways:
//!    - fast: over the last `fast_span`, the Theil-Sen floor slope is at least `fast_growth_per_hour` of the
//!      floor's own level per hour (the floor would double within the hour) and `fast_min_slope_bytes_per_s`
//!      (a slower rise cannot be told from a cache filling up in ten minutes), the newest floor is a new high
//!      above its earlier range (the `2 fast_span` before, which must be held), it still rises over the last
//!      floor window and in both halves of the stretch (a one-time step rises in one), and the rise before was
//!      not steeper (a warm-up slows down), and the minute minima do not show a step (one level shift fitting
//!      clearly better than a line, or troughs that jumped once and stayed);
//!    - sustained: over the last `min_span`, Mann-Kendall with the Hamed-Rao correction (the floor is strongly
//!      autocorrelated) at `alpha`, a slope of at least `min_growth_per_hour` of the level per hour, every third
//!      of the stretch rising at least half as fast as the whole (a creep that started or stopped within it, or
//!      a warm-up, does not), and a line fitting better than a single level shift; it opens only while the
//!      newest short-window floor is a new high (a creep that has stopped does not open one).
//!
//!    Both need a slope of at least `min_slope_bytes_per_s`. A finding opens after three positive minutes (a
//!    minute that only holds between them neither counts nor breaks the run) and holds while the floor still
//!    rises by `min_growth_per_hour`.
//! 3. Classification from the heap signals' floors over the same stretch: `heap` when allocator live bytes
//!    (memspan.heap.allocated) rise at least half as fast; else `fragmentation` when resident bytes do, or
//!    retained bytes outside Go; for Go, `released_not_returned` when the heap memory released to the kernel
//!    does (MADV_FREE pages still counted in RSS); else `off_heap` when live heap data is there and flat
//!    (native buffers, mmap, C memory); `unknown` without heap data. `goroutines` comes first for Go.
//!
//! A leak calls for a rollback or a restart, not more replicas.

pub mod config;
mod floor;
#[cfg(test)]
mod tests;

use std::collections::HashMap;

use memdrift_anomaly::{
    Anomaly, AnomalyKind, AnomalyState, Episode, Evidence, Identity, LeakClass,
};

pub use config::{LeakSection, LeakSettings};
pub use floor::{Minutes, STRIDE};

use super::alarm::{Alarm, Look, Rules};
use super::grid::{
    admit, buckets, expire, finite, highest, instance_event, level_shift_fits, observations,
    InstanceKey, LimitSource, Observation, Track, HEAPS, S,
};

/// Where allocator resident and retained bytes, goroutine stacks and the goroutine count are in
/// [`super::grid::HEAP_SIGNALS`].
const RESIDENT: usize = 1;
const RETAINED: usize = 2;
const STACKS: usize = 3;
const GOROUTINES: usize = 4;
use super::{checkpoint, CheckpointError, Detector, Findings, SectionError, Settings};
use crate::engine::{ClosedWindow, EngineConfig};
use crate::stats::{mann_kendall_sen, sen_slope, theil_sen, MannKendall, SenSlope};

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

/// Consecutive positive tests (minutes) before a finding opens.
const CONFIRM: u32 = 3;
/// The bucket grid holds this much history (the floor history is held per minute, in [`Minutes`]).
const GRID_SPAN_NS: u64 = 3600 * S;

/// A leak test's outcome.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LeakTest {
    /// Floor slope, bytes per second.
    pub slope: f64,
    pub z: f64,
    pub p_value: f64,
    /// Evidence enough to open a finding.
    pub leaking: bool,
    /// Evidence enough to keep an open finding open: the floor still rising, materially.
    pub holding: bool,
    /// Whether the fast test (a steep rise over `fast_span`) spoke, rather than the sustained one.
    pub fast: bool,
    /// The kind of leak, when leaking or holding.
    pub classification: Option<LeakClass>,
    /// Grid index of the first floor point.
    pub from: i64,
}

/// Floor points per second and per hour.
struct Scales {
    per_s: f64,
    per_hour: f64,
}

/// What one stretch of floor points says.
struct Verdict {
    /// Position in the floors of the stretch's first point.
    start: usize,
    mk: MannKendall,
    line: SenSlope,
    alarm: bool,
    hold: bool,
}

/// Newest minus oldest present point; NaN with fewer than one.
fn rise(p: &[f64]) -> f64 {
    finite(p)
        .last()
        .zip(finite(p).next())
        .map_or(f64::NAN, |(b, a)| b - a)
}

/// The line's rise per hour as a fraction of the stretch's own level (its median floor); 0 when that level is
/// not positive.
fn growth(line: &SenSlope, points: &[f64], per_hour: f64) -> f64 {
    let mut v: Vec<f64> = finite(points).collect();
    let level = if v.is_empty() {
        0.0
    } else {
        crate::stats::median_in_place(&mut v)
    };
    if level > 0.0 {
        line.slope * per_hour / level
    } else {
        0.0
    }
}

/// Whether the series' top over the last `l` minutes (`tops`: per-minute maxima) is new: above every top held
/// before it by a quarter of the floor's rise `b (l - 1)`. A leak lifts the whole series, its tops too; a load
/// that lifts only the floor, into a range the series already covered, leaves them.
fn new_top(tops: &[f64], l: usize, b: f64) -> bool {
    let start = tops.len().saturating_sub(l);
    let before = highest(&tops[..start]);
    before.is_nan() || highest(&tops[start..]) >= before + 0.25 * b * (l - 1) as f64
}

/// The fast test on the last `l` floors `r` (running minima over `w` points): a steep rise (at least
/// `fast_growth` of its level per hour) that is a new high above the floor's earlier range (the `2 l` points
/// before, which must be held), whose tops (`tops`, aligned with `r`) are new too ([`new_top`]), still rising
/// over the last floor window, not slower than the rise before it (a warm-up slows down), and not a step in the
/// minute minima `raw` over the stretch and the floor window before it: one level shift fitting clearly better
/// than a line, or troughs that jumped once and then stayed flat ([`floor::troughs_keep_rising`]). A step under
/// a GC sawtooth makes the running minimum climb the sawtooth's last cycle for a floor window, a ramp the other
/// checks take for a leak.
fn fast(
    r: &[f64],
    raw: &[f64],
    tops: &[f64],
    w: usize,
    l: usize,
    s: &LeakSettings,
    k: &Scales,
) -> Option<Verdict> {
    let n = r.len();
    // The whole earlier range is needed: a warm-up's steep start is past by then.
    if n < 3 * l || l <= w + 1 {
        return None;
    }
    let start = n - l;
    let (win, before) = (&r[start..], &r[start.saturating_sub(2 * l)..start]);
    if finite(win).count() * 10 < l * 7 || finite(before).count() * 2 < l {
        return None;
    }
    let (mk, line) = mann_kendall_sen(win, 0.95)?;
    let b = line.slope;
    let last = finite(win).last()?;
    let still = last - highest(&win[..l - w - 1]) >= 0.25 * b * (w + 1) as f64;
    let material = b * k.per_s >= s.min_slope;
    let steady = sen_slope(before).is_none_or(|t| t <= b);
    let high = last >= highest(before) + 0.5 * b * (l - 1) as f64;
    let g = growth(&line, win, k.per_hour);
    // A one-time step rises in one half of the stretch; a leak in both.
    let h = l / 2;
    let halves = [&win[..=h], &win[h..]]
        .iter()
        .all(|p| rise(p) >= 0.3 * b * h as f64);
    // A step: one level shift fits the minute minima clearly better than a line (a leak under a sawtooth is
    // fitted about as well by both), or the troughs jumped once and stayed (a leak lifts them every cycle).
    // Asked last, only when everything else says leak.
    let stepped = || {
        let recent = &raw[raw.len().saturating_sub(l + w)..];
        theil_sen(recent, 0.95).is_some_and(|line| level_shift_fits(recent, &line, 0.8))
            || !floor::troughs_keep_rising(recent, 0.5 * b)
    };
    let alarm = b * k.per_s >= s.fast_min_slope
        && g >= s.fast_growth
        && still
        && high
        && steady
        && halves
        && new_top(tops, l, b)
        && !stepped();
    let hold = material && g >= s.min_growth && still;
    Some(Verdict {
        start,
        mk,
        line,
        alarm,
        hold,
    })
}

/// The sustained test on the last `span` floors `r`: Mann-Kendall (Hamed-Rao) significant at `alpha`, a material
/// Theil-Sen slope, every third of the stretch rising at least half as fast as the whole (not a creep that began
/// or stopped within it, not a warm-up slowing down) and not a single level shift. A finding opens only while
/// the rise goes on: the newest of the short-window floors `recent.0` is a new high over the `recent.1` points
/// before it (`r`, the floor over a longer window, lags a rise's end by up to a third of the stretch); an open
/// one holds without that.
fn sustained(
    r: &[f64],
    recent: (&[f64], usize),
    span: usize,
    s: &LeakSettings,
    k: &Scales,
) -> Option<Verdict> {
    let n = r.len();
    if n < span || span < 9 {
        return None;
    }
    let start = n - span;
    let win = &r[start..];
    if finite(win).count() * 2 < span {
        return None;
    }
    let third = span / 3;
    let slopes: Vec<Option<f64>> = win.chunks(third).take(3).map(sen_slope).collect();
    // Every third must rise at half the stretch's slope, which must be material: a stretch with a third below
    // half the least material slope can neither open nor hold a finding, and the costly trend test over the
    // whole stretch is skipped (most instances, which are calm).
    let least = 0.5 * s.min_slope / k.per_s * (1.0 - 1e-9);
    if slopes.iter().any(|t| t.is_none_or(|t| t < least)) {
        return None;
    }
    let (mk, line) = mann_kendall_sen(win, 0.95)?;
    let b = line.slope;
    let thirds = slopes.iter().all(|t| t.is_some_and(|t| t >= 0.5 * b));
    // Still rising now: the newest short-window floor (it lags a rise's end by one floor window, where the
    // long one lags by up to a third of the stretch) is a new high above the stretch's floors before its
    // last `l` points.
    let (fresh, l) = recent;
    let earlier = &fresh[fresh.len().saturating_sub(span)..fresh.len().saturating_sub(l)];
    let rising = finite(fresh)
        .last()
        .is_some_and(|v| highest(earlier).is_nan() || v >= highest(earlier) + 0.25 * b * l as f64);
    let hold = mk.p_value < s.alpha
        && mk.z > 0.0
        && b * k.per_s >= s.min_slope
        && growth(&line, win, k.per_hour) >= s.min_growth
        && thirds
        && !level_shift_fits(win, &line, 1.0);
    Some(Verdict {
        start,
        mk,
        line,
        alarm: hold && rising,
        hold,
    })
}

/// The kind of a leak whose RSS floor rises along `rss`, from the floors of the heap signals (in the order of
/// [`super::grid::HEAP_SIGNALS`]) over the same points: `goroutines` when a Go process's goroutine count and
/// stack memory both rise (the count by a tenth or more over the stretch: leaked goroutines hold whatever else
/// rises); else `heap` when allocator live bytes rise at least half as fast as RSS; else `fragmentation` when
/// resident bytes do, or retained bytes of a process that is not Go; `released_not_returned` when a Go
/// process's released heap bytes do (its retained signal is what the runtime has given back: with MADV_FREE
/// those pages stay in RSS until the kernel needs them); else `off_heap` when live heap data is there and flat
/// (for Go, cgo memory); `unknown` without heap data.
fn classify(
    heap_floors: impl Iterator<Item = Vec<f64>>,
    start: usize,
    rss: &SenSlope,
) -> LeakClass {
    let mut seen = [false; HEAPS];
    let mut rising = [false; HEAPS];
    let mut goroutines_up = false;
    for (k, pts) in heap_floors.enumerate().take(HEAPS) {
        let pts = &pts[start.min(pts.len())..];
        if finite(pts).count() * 10 >= pts.len() * 7 && pts.len() >= 4 {
            seen[k] = true;
            let slope = sen_slope(pts);
            rising[k] = slope.is_some_and(|h| h >= 0.5 * rss.slope);
            if k == GOROUTINES {
                let level = finite(pts).fold(f64::INFINITY, f64::min).max(1.0);
                goroutines_up = slope.is_some_and(|h| h * pts.len() as f64 >= 0.1 * level);
            }
            if k == STACKS {
                rising[k] = slope.is_some_and(|h| h > 0.0);
            }
        }
    }
    // Only Go reports goroutines and stacks: its retained signal is released memory.
    let go = seen[STACKS] || seen[GOROUTINES];
    if goroutines_up && rising[STACKS] {
        LeakClass::Goroutines
    } else if rising[0] {
        LeakClass::Heap
    } else if rising[RETAINED] && go {
        LeakClass::ReleasedNotReturned
    } else if rising[RESIDENT] || rising[RETAINED] {
        LeakClass::Fragmentation
    } else if seen[0] {
        LeakClass::OffHeap
    } else {
        LeakClass::Unknown
    }
}

/// How leak findings open and close: after [`CONFIRM`] positive minutes, where a minute that only holds (the
/// floor still rising materially, some check of the opening test failing) between them neither counts nor
/// breaks the run: on a GC sawtooth sampled once a minute, noise in the troughs makes a leak's checks flicker.
fn rules(resolve_after: u32) -> Rules {
    Rules {
        confirm: CONFIRM,
        resolve_after,
        update_every: 1,
        hold_keeps_streak: true,
    }
}

/// What one test says to the finding's lifecycle.
fn look(r: Option<&LeakTest>) -> Look {
    match r {
        Some(r) if r.leaking => Look::Alarm,
        Some(r) if r.holding => Look::Hold,
        _ => Look::Clear,
    }
}

/// Tests one instance's floor from its grid alone (the history the grid holds): for the benchmark.
pub fn test(track: &Track, s: &LeakSettings, step_ns: u64) -> Option<LeakTest> {
    let mut m = Minutes::new(buckets(s.lookback_ns, step_ns).div_ceil(STRIDE as usize));
    m.update(track);
    test_minutes(track, &m, s, step_ns)
}

/// Tests one instance's floor history `m` (its grid `track` says when it started and how dense it is): the
/// fast test first, then the sustained one. Pure, for the simulations.
pub fn test_minutes(
    track: &Track,
    m: &Minutes,
    s: &LeakSettings,
    step_ns: u64,
) -> Option<LeakTest> {
    let stride = STRIDE as usize;
    let warm = buckets(s.grid.warmup_ns, step_ns) as i64;
    let skip = m.since((track.started + warm + 2 * STRIDE - 2).div_euclid(STRIDE));
    let floors = |series: &std::collections::VecDeque<f64>, w: usize| {
        floor::running_min(series.iter().skip(skip).copied(), w)
    };
    let k = Scales {
        per_s: 1e9 / (stride as f64 * step_ns as f64),
        per_hour: 3600e9 / (stride as f64 * step_ns as f64),
    };
    let window = buckets(s.floor_window_ns, step_ns);
    let w_fast = window.div_ceil(stride);
    let l = buckets(s.fast_span_ns, step_ns) / stride;
    let tops: Vec<f64> = m.top.iter().skip(skip).copied().collect();
    let raw: Vec<f64> = m.rss.iter().skip(skip).copied().collect();
    let short = floors(&m.rss, w_fast);
    let quick = fast(&short, &raw, &tops, w_fast, l, s, &k);
    let (v, w, is_fast) = match quick {
        Some(v) if v.alarm => (v, w_fast, true),
        quick => {
            let most = buckets(s.min_span_ns, step_ns) / 3;
            let w_slow = track.adapted_span(window, most).div_ceil(stride);
            let span = buckets(s.min_span_ns, step_ns) / stride;
            let slow = sustained(&floors(&m.rss, w_slow), (&short, l), span, s, &k);
            match (quick, slow) {
                (_, Some(v)) if v.alarm => (v, w_slow, false),
                (Some(v), _) if v.hold => (v, w_fast, true),
                (_, Some(v)) => (v, w_slow, false),
                (Some(v), None) => (v, w_fast, true),
                (None, None) => return None,
            }
        }
    };
    let classification = (v.alarm || v.hold)
        .then(|| classify(m.heap.iter().map(|h| floors(h, w)), v.start, &v.line));
    let oldest = m.last - m.rss.len() as i64 + 1;
    Some(LeakTest {
        slope: v.line.slope * k.per_s,
        z: v.mk.z,
        p_value: v.mk.p_value,
        leaking: v.alarm,
        holding: v.alarm || v.hold,
        fast: is_fast,
        classification,
        from: (oldest + (skip + v.start) as i64) * STRIDE,
    })
}

#[derive(serde::Serialize, serde::Deserialize)]
struct InstanceState {
    track: Track,
    minutes: Minutes,
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
            limit_source: t.limit_source.map(LimitSource::name),
        };
        let window = ((r.from.max(0) as u64).saturating_mul(self.step_ns), end);
        let method = if r.fast {
            "floor_new_high+theil_sen"
        } else {
            "mann_kendall_hamed_rao+theil_sen_floor"
        };
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
        let cap = buckets(GRID_SPAN_NS + self.settings.floor_window_ns, self.step_ns) + 1;
        let minutes = buckets(self.settings.lookback_ns, self.step_ns).div_ceil(STRIDE as usize);
        let signal = o.memory?.0;
        let (rules, step_ns) = (rules(self.settings.resolve_after), self.step_ns);
        let st = admit(
            &mut self.instances,
            key.clone(),
            self.settings.grid.max_instances,
            &mut self.overflow,
            || InstanceState {
                track: Track::new(signal, index, cap),
                minutes: Minutes::new(minutes),
                alarm: Alarm::default(),
                last: None,
            },
        )?;
        let due = if st.track.push(index, o, &self.settings.grid, end) {
            // A restart ends the finding, resolved with the evidence it last reported.
            st.minutes.clear();
            let open = st.alarm.reset();
            open.zip(st.last.take())
                .map(|(e, r)| ((AnomalyState::Resolved, e), r))
        } else if index.rem_euclid(STRIDE) == 0 {
            st.minutes.update(&st.track);
            let r = test_minutes(&st.track, &st.minutes, &self.settings, step_ns);
            let look = look(r.as_ref());
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
