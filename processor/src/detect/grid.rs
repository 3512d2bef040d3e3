//! The per-instance grid both `growth` and `leak` work on: one bucket per engine step (the newest pane of each
//! closed window: max, min), gaps kept as gaps (`NaN`), in a bounded ring; restarts detected on the way in. Also
//! the settings both share (`GridSettings`) and the helpers that read them.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use memdrift_anomaly::{Anomaly, AnomalyState, Episode, Evidence};

use crate::duration::Duration;
use crate::engine::{ClosedWindow, Scope};
use crate::sample::Exemplar;
use crate::signal::Signal;

/// One second in nanoseconds.
pub const S: u64 = 1_000_000_000;

/// What both detectors need to keep a per-instance grid.
#[derive(Clone, Debug, PartialEq)]
pub struct GridSettings {
    pub signals: Vec<Signal>,
    pub warmup_ns: u64,
    pub restart_drop: f64,
    pub idle_timeout_ns: u64,
    pub max_instances: usize,
}

impl Default for GridSettings {
    fn default() -> Self {
        GridSettings {
            signals: vec![
                Signal::ContainerWorkingSet,
                Signal::ProcessMemoryUsage,
                Signal::RssEnd,
                Signal::ContainerUsage,
            ],
            warmup_ns: 300 * S,
            restart_drop: 0.3,
            idle_timeout_ns: 600 * S,
            max_instances: 10_000,
        }
    }
}

/// Whole buckets (engine steps) in `ns`, at least one.
pub fn buckets(ns: u64, step_ns: u64) -> usize {
    (ns / step_ns.max(1)).max(1) as usize
}

/// `n` steps as a duration a person reads, e.g. "2m".
pub fn steps(n: u64, step_ns: u64) -> String {
    humantime::format_duration(std::time::Duration::from_nanos(n.saturating_mul(step_ns)))
        .to_string()
}

pub type SettingsError = (&'static str, String);

fn signals(kind: &str, names: &Option<Vec<String>>) -> Result<Vec<Signal>, SettingsError> {
    match names {
        None => Ok(GridSettings::default().signals),
        Some(names) if names.is_empty() => Err((
            "signals",
            format!("processors.{kind}.signals must name at least one signal"),
        )),
        Some(names) => names
            .iter()
            .map(|n| {
                Signal::from_name(n).ok_or_else(|| {
                    (
                        "signals",
                        format!("processors.{kind}.signals: unknown signal `{n}`"),
                    )
                })
            })
            .collect(),
    }
}

pub fn fraction(kind: &str, key: &'static str, v: f64) -> Result<f64, SettingsError> {
    if v > 0.0 && v < 1.0 {
        Ok(v)
    } else {
        Err((
            key,
            format!("processors.{kind}.{key} must be in (0, 1), got {v}"),
        ))
    }
}

pub fn grid(
    kind: &str,
    names: &Option<Vec<String>>,
    warmup: Option<Duration>,
    restart_drop: Option<f64>,
    idle: Option<Duration>,
    max_instances: Option<usize>,
) -> Result<GridSettings, SettingsError> {
    let d = GridSettings::default();
    Ok(GridSettings {
        signals: signals(kind, names)?,
        warmup_ns: warmup.map_or(d.warmup_ns, |x| x.as_nanos()),
        restart_drop: fraction(kind, "restart_drop", restart_drop.unwrap_or(d.restart_drop))?,
        idle_timeout_ns: idle.map_or(d.idle_timeout_ns, |x| x.as_nanos()),
        max_instances: max_instances.unwrap_or(d.max_instances).max(1),
    })
}

/// The heap and Go runtime signals used to classify a leak, in the order of [`Track::heap`].
pub const HEAP_SIGNALS: [Signal; HEAPS] = [
    Signal::HeapAllocated,
    Signal::HeapResident,
    Signal::HeapRetained,
    Signal::GoStack,
    Signal::Goroutines,
];

/// How many [`HEAP_SIGNALS`] there are.
pub const HEAPS: usize = 5;

/// (service, instance): whom a grid belongs to.
pub type InstanceKey = (Arc<str>, Arc<str>);

/// What one closed window says about one instance.
#[derive(Clone, Debug, Default)]
pub struct Observation {
    /// The memory signal and its newest pane (max, min), `None` when that step had no sample.
    pub memory: Option<(Signal, Option<(f64, f64)>)>,
    /// Bucket minima of the heap signals (the post-GC floor is what matters for them).
    pub heap: [Option<f64>; HEAPS],
    /// The container's memory limit (`memspan.limit`, a k8s limit metric).
    pub limit: Option<f64>,
    /// A Go process's own limit, GOMEMLIMIT (`go.memory.limit`): the limit when no container limit is known.
    pub go_limit: Option<f64>,
    /// Index in the window's summaries of the memory signal's summary: its exemplars are the requests at the
    /// instance's highest memory in the window, which an event links to.
    pub summary: Option<usize>,
}

impl Observation {
    /// The requests at the instance's highest memory in `window`, the window this observation was read from.
    pub fn exemplars<'w>(&self, window: &'w ClosedWindow) -> &'w [Exemplar] {
        self.summary
            .and_then(|i| window.summaries.get(i))
            .map_or(&[], |s| &s.exemplars)
    }
}

/// The limits an observation carries: the container's and a Go process's GOMEMLIMIT.
const LIMITS: [Signal; 2] = [Signal::Limit, Signal::GoMemoryLimit];

/// The instance series [`observations`] reads for the memory signals in `signals`: those, the heap signals and
/// the limits.
pub fn observed_signals(signals: &[Signal]) -> Vec<Signal> {
    let mut out = signals.to_vec();
    out.extend(HEAP_SIGNALS);
    out.extend(LIMITS);
    out
}

/// Per (service, instance) observations of one window, for the memory signals in `signals` (first present in the
/// list wins) and the heap and limit signals.
pub fn observations(
    window: &ClosedWindow,
    signals: &[Signal],
) -> BTreeMap<InstanceKey, Observation> {
    let mut map: BTreeMap<InstanceKey, Observation> = BTreeMap::new();
    for (i, s) in window.summaries.iter().enumerate() {
        let Scope::Instance(id) = &s.key.group.scope else {
            continue;
        };
        let sig = s.key.signal;
        let pane = s.newest_pane.map(|p| (p.max, p.min));
        let heap_i = HEAP_SIGNALS.iter().position(|h| *h == sig);
        let rank = signals.iter().position(|x| *x == sig);
        if heap_i.is_none() && rank.is_none() && !LIMITS.contains(&sig) {
            continue;
        }
        let o = map
            .entry((s.key.group.service.clone(), id.clone()))
            .or_default();
        let newest = s.newest_pane.map_or(Some(s.max), |p| Some(p.last));
        if sig == Signal::Limit {
            o.limit = newest;
        }
        if sig == Signal::GoMemoryLimit {
            o.go_limit = newest;
        }
        if let Some(i) = heap_i {
            o.heap[i] = pane.map(|(_, min)| min);
        }
        if let Some(r) = rank {
            let better = match o.memory {
                None => true,
                Some((cur, _)) => signals.iter().position(|x| *x == cur).is_none_or(|c| r < c),
            };
            if better {
                o.memory = Some((sig, pane));
                o.summary = Some(i);
            }
        }
    }
    map
}

/// An event about one instance's finding, detected at `end` on evidence over `window`.
pub fn instance_event(
    (state, episode): (AnomalyState, Episode),
    key: &InstanceKey,
    t: &Track,
    window: (u64, u64),
    method: &'static str,
    evidence: Evidence,
) -> Anomaly {
    Anomaly {
        state,
        episode,
        service: key.0.to_string(),
        instance: Some(key.1.to_string()),
        signal: t.signal.name().to_string(),
        detected_unix_nano: window.1,
        window: Some(window),
        method,
        evidence,
        exemplars: Vec::new(),
    }
}

/// The present points of `p` (gaps, NaN, left out).
pub fn finite(p: &[f64]) -> impl Iterator<Item = f64> + '_ {
    p.iter().copied().filter(|v| v.is_finite())
}

/// The highest present point of `p`; NaN when all are gaps.
pub fn highest(p: &[f64]) -> f64 {
    finite(p).fold(f64::NAN, f64::max)
}

/// Whether one level shift (two medians) fits `points` (NaN for gaps) better than `line`, by the sum of
/// absolute residuals: the shift's at most `share` of the line's. A one-time step (or a lone spike's plateau)
/// is not a trend.
pub fn level_shift_fits(points: &[f64], line: &crate::stats::SenSlope, share: f64) -> bool {
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
    let mut spread = |seg: &[f64]| {
        scratch.clear();
        scratch.extend_from_slice(seg);
        let m = crate::stats::median_in_place(&mut scratch);
        seg.iter().map(|v| (v - m).abs()).sum::<f64>()
    };
    (3..n - 2).any(|k| spread(&y[..k]) + spread(&y[k..]) < share * linear)
}

/// Removes the instances whose grid (`track`) has seen nothing for `idle_ns` of event time before `end`, and
/// returns them in key order, so that the resolutions they bring come out in the same order on every replay.
pub fn expire<S>(
    instances: &mut HashMap<InstanceKey, S>,
    track: impl Fn(&S) -> &Track,
    idle_ns: u64,
    end: u64,
) -> Vec<(InstanceKey, S)> {
    let mut gone: Vec<_> = instances
        .extract_if(|_, s| track(s).last_seen_ns.saturating_add(idle_ns) < end)
        .collect();
    gone.sort_by(|a, b| a.0.cmp(&b.0));
    gone
}

/// The state of one instance, admitted only while fewer than `max` are live; a refusal is counted in
/// `overflow`. Shared by `growth` and `leak`, which keep the same per-instance cap.
pub fn admit<'a, S>(
    instances: &'a mut HashMap<InstanceKey, S>,
    key: InstanceKey,
    max: usize,
    overflow: &mut u64,
    make: impl FnOnce() -> S,
) -> Option<&'a mut S> {
    let full = instances.len() >= max;
    match instances.entry(key) {
        Entry::Occupied(e) => Some(e.into_mut()),
        Entry::Vacant(_) if full => {
            *overflow += 1;
            None
        }
        Entry::Vacant(e) => Some(e.insert(make())),
    }
}

/// One instance's recent history on the grid.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct Track {
    /// The memory signal this instance is watched on (the first one seen).
    pub signal: Signal,
    /// Grid index (window end / step) of the newest bucket.
    pub last: i64,
    /// Grid index of the first bucket after the latest (re)start.
    pub started: i64,
    /// Bucket maxima and minima of the memory signal, oldest first; the back is `last`.
    pub max: VecDeque<f64>,
    pub min: VecDeque<f64>,
    /// Bucket minima of the heap signals, aligned with `min`.
    pub heap: [VecDeque<f64>; HEAPS],
    /// The memory limit forecasts aim at, and where it came from.
    pub limit: Option<f64>,
    pub limit_source: Option<LimitSource>,
    pub last_seen_ns: u64,
    cap: usize,
}

/// Where an instance's memory limit was read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum LimitSource {
    /// The container's limit (`memspan.limit`, `k8s.container.memory.limit.current`): the OOM kill comes there.
    Container,
    /// A Go process's GOMEMLIMIT (`go.memory.limit`), used when no container limit is known: past it the
    /// collector runs ever more often.
    GoMemoryLimit,
}

impl LimitSource {
    /// The name events carry in `limit_source`.
    pub fn name(self) -> &'static str {
        match self {
            LimitSource::Container => "container",
            LimitSource::GoMemoryLimit => "go.memory.limit",
        }
    }
}

/// Buckets looked back over to find the recent floor that a restart drops below.
const RESTART_LOOKBACK: usize = 30;

impl Track {
    pub fn new(signal: Signal, index: i64, cap: usize) -> Track {
        Track {
            signal,
            last: index - 1,
            started: index,
            max: VecDeque::with_capacity(cap),
            min: VecDeque::with_capacity(cap),
            heap: Default::default(),
            limit: None,
            limit_source: None,
            last_seen_ns: 0,
            cap: cap.max(2),
        }
    }

    fn clear(&mut self, index: i64) {
        self.max.clear();
        self.min.clear();
        for h in &mut self.heap {
            h.clear();
        }
        self.started = index;
    }

    fn push_raw(&mut self, max: f64, min: f64, heap: [f64; HEAPS]) {
        if self.max.len() == self.cap {
            self.max.pop_front();
            self.min.pop_front();
            for h in &mut self.heap {
                h.pop_front();
            }
        }
        self.max.push_back(max);
        self.min.push_back(min);
        for (h, v) in self.heap.iter_mut().zip(heap) {
            h.push_back(v);
        }
    }

    /// The lowest bucket minimum of the last few minutes, if there are enough buckets to tell.
    fn recent_floor(&self) -> Option<f64> {
        let mut n = 0;
        let mut lo = f64::INFINITY;
        for v in self.min.iter().rev().take(RESTART_LOOKBACK) {
            if v.is_finite() {
                n += 1;
                lo = lo.min(*v);
            }
        }
        (n >= 3).then_some(lo)
    }

    /// Adds the bucket at grid `index`; returns true when it shows a restart (the history is then reset and
    /// warm-up starts again). A bucket at or before the newest is ignored.
    pub fn push(&mut self, index: i64, o: &Observation, settings: &GridSettings, now: u64) -> bool {
        if index <= self.last {
            return false;
        }
        self.last_seen_ns = now;
        // The container's limit wins: the OOM kill comes there, whatever GOMEMLIMIT says.
        if let Some(l) = o.limit.filter(|l| *l > 0.0) {
            self.limit = Some(l);
            self.limit_source = Some(LimitSource::Container);
        } else if let Some(l) = o.go_limit.filter(|l| *l > 0.0) {
            if self.limit_source != Some(LimitSource::Container) {
                self.limit = Some(l);
                self.limit_source = Some(LimitSource::GoMemoryLimit);
            }
        }
        let gap = (index - self.last - 1) as usize;
        let mut restarted = false;
        if gap >= self.cap {
            // Silent for longer than the ring: whatever comes now starts afresh.
            restarted = !self.max.is_empty();
            self.clear(index);
        } else {
            for _ in 0..gap {
                self.push_raw(f64::NAN, f64::NAN, [f64::NAN; HEAPS]);
            }
        }
        self.last = index;
        let (max, min) = match o.memory {
            Some((sig, Some(p))) if sig == self.signal => p,
            _ => (f64::NAN, f64::NAN),
        };
        if min.is_finite() {
            if let Some(floor) = self.recent_floor() {
                if min < (1.0 - settings.restart_drop) * floor {
                    self.clear(index);
                    restarted = true;
                }
            }
        }
        let heap = o.heap.map(|h| h.unwrap_or(f64::NAN));
        self.push_raw(max, min, heap);
        restarted
    }

    /// A running extreme over `span` buckets needs enough samples in it to find a sparse series' peaks and
    /// troughs: the span widened to hold about 15 samples at the density seen in the current run (a 60 s metric
    /// on a 10 s grid gets 15 minutes), at most `most`.
    pub fn adapted_span(&self, span: usize, most: usize) -> usize {
        let run = self.pos(self.started).unwrap_or(0);
        let held = self.max.len() - run;
        let present = self.max.range(run..).filter(|v| v.is_finite()).count();
        if present == 0 {
            return span;
        }
        let needed = (15 * held).div_ceil(present);
        span.max(needed.min(most))
    }

    /// The grid index of the `k`-th bucket held (0 = oldest).
    pub fn index_of(&self, k: usize) -> i64 {
        self.last - (self.max.len() - 1 - k) as i64
    }

    /// Position in the ring of grid index `i`, if held.
    pub fn pos(&self, i: i64) -> Option<usize> {
        let first = self.index_of(0);
        (i >= first && i <= self.last).then(|| (i - first) as usize)
    }

    /// Extreme (max when `upper`, else min) of `series` over the `span` buckets ending at grid index `i`, within
    /// the current run (not before `started`). NaN when all are gaps.
    pub fn extreme(&self, series: &VecDeque<f64>, i: i64, span: usize, upper: bool) -> f64 {
        let Some(end) = self.pos(i) else {
            return f64::NAN;
        };
        let start_i = (i - span as i64 + 1).max(self.started);
        let start = self.pos(start_i).unwrap_or(0);
        let mut acc = f64::NAN;
        for v in series.range(start..=end) {
            if v.is_finite() {
                acc = if acc.is_nan() {
                    *v
                } else if upper {
                    acc.max(*v)
                } else {
                    acc.min(*v)
                };
            }
        }
        acc
    }
}
