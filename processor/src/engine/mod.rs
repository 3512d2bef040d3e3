//! The event-time engine: per-key state, sliding windows closed by a watermark, bounded memory.
//!
//! Time is the samples' own (span end, point time), never the wall clock: the same input gives the same windows,
//! which is what makes `replay` deterministic. Windows of length `window` slide by `step` and end on multiples
//! of `step`; a key keeps one *pane* per step of its recent past, so a closed window is the union of
//! `window / step` panes. The watermark is the largest event time seen minus the allowed lateness (a service
//! may also push it forward with [`Engine::advance_to`] when traffic stops); a window closes when the watermark
//! passes its end, and a sample whose earliest window has already closed is late: counted and dropped.
//!
//! Bounds: at most `max_keys` live (group, signal) series, new ones beyond the cap counted as overflow; a pane
//! keeps exact moments but at most `max_samples_per_pane` values (a uniform reservoir) for the order statistics;
//! a group not seen for `idle_timeout` of event time is forgotten.

mod summary;

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

pub use summary::{quantile_sorted, robust_summary, Moments};

use crate::extract::DropReason;
use crate::sample::{Exemplar, MemorySample};
use crate::signal::{Signal, SignalValues};

/// Engine settings, in nanoseconds of event time. Built from the pipeline's `windows` processor.
#[derive(Clone, Debug, PartialEq)]
pub struct EngineConfig {
    pub window_ns: u64,
    pub step_ns: u64,
    pub allowed_lateness_ns: u64,
    pub idle_timeout_ns: u64,
    pub max_keys: usize,
    pub max_samples_per_pane: usize,
    /// Trace ids kept per pane and reported per window: those of the largest values.
    pub exemplars: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        const S: u64 = 1_000_000_000;
        EngineConfig {
            window_ns: 60 * S,
            step_ns: 10 * S,
            allowed_lateness_ns: 5 * S,
            idle_timeout_ns: 600 * S,
            max_keys: 100_000,
            max_samples_per_pane: 2048,
            exemplars: 5,
        }
    }
}

impl EngineConfig {
    fn panes_per_window(&self) -> i64 {
        (self.window_ns / self.step_ns) as i64
    }
}

/// What a series is grouped by besides service and signal.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    /// An A/B cohort; `None` when the samples carried no cohort label.
    Cohort(Option<Arc<str>>),
    /// One instance (process or pod) of the service.
    Instance(Arc<str>),
}

impl Scope {
    pub fn kind(&self) -> &'static str {
        match self {
            Scope::Cohort(_) => "cohort",
            Scope::Instance(_) => "instance",
        }
    }
}

/// (service, cohort) or (service, instance): the samples of one group share a key per signal.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GroupKey {
    pub service: Arc<str>,
    pub scope: Scope,
}

/// One series: a group and a signal.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SeriesKey {
    pub group: GroupKey,
    pub signal: Signal,
}

/// The newest pane of a window (its last `step`), for detectors that work on a regular grid.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PaneSummary {
    pub count: u64,
    pub min: f64,
    pub max: f64,
    /// The value with the latest event time.
    pub last: f64,
}

/// The summary of one series over one closed window.
#[derive(Clone, Debug, PartialEq)]
pub struct WindowSummary {
    pub key: SeriesKey,
    pub count: u64,
    pub mean: f64,
    pub sd: f64,
    pub median: f64,
    /// Raw median absolute deviation from the median.
    pub mad: f64,
    pub p95: f64,
    pub min: f64,
    pub max: f64,
    /// The values behind the order statistics (all of them, or a uniform sample when a pane overflowed its
    /// reservoir), for detectors that test distributions; in arrival order within each step.
    pub values: Vec<f64>,
    /// For each value, a hash of the instance that sent it: a cohort's values split by process, in time order.
    pub instance_tags: Vec<u32>,
    /// The requests behind the largest values, largest first.
    pub exemplars: Vec<Exemplar>,
    /// The last step of the window; `None` when that step had no sample.
    pub newest_pane: Option<PaneSummary>,
}

/// Every series with data in one window, ordered by key.
#[derive(Clone, Debug, PartialEq)]
pub struct ClosedWindow {
    pub start_unix_nano: u64,
    pub end_unix_nano: u64,
    pub summaries: Vec<WindowSummary>,
}

/// Counters the engine keeps; the service exports them as self-telemetry.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EngineStats {
    pub late_values: u64,
    pub overflow_values: u64,
    pub expired_groups: u64,
    pub windows_closed: u64,
}

struct Pane {
    index: i64,
    moments: Moments,
    min: f64,
    max: f64,
    last: (u64, f64),
    reservoir: Vec<f64>,
    /// The instance of each reservoir value (a hash of its id), so detectors can split a cohort by process.
    tags: Vec<u32>,
    /// (value, request), largest first, at most `exemplars` long.
    exemplars: Vec<(f64, Exemplar)>,
}

impl Pane {
    fn new(index: i64) -> Pane {
        Pane {
            index,
            moments: Moments::default(),
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            last: (0, f64::NAN),
            reservoir: Vec::new(),
            tags: Vec::new(),
            exemplars: Vec::new(),
        }
    }

    fn push(
        &mut self,
        t: u64,
        v: f64,
        tag: u32,
        trace: Option<Exemplar>,
        cfg: &EngineConfig,
        rng: &mut u64,
    ) {
        self.moments.push(v);
        self.min = self.min.min(v);
        self.max = self.max.max(v);
        if t >= self.last.0 {
            self.last = (t, v);
        }
        if self.reservoir.len() < cfg.max_samples_per_pane {
            self.reservoir.push(v);
            self.tags.push(tag);
        } else {
            // Algorithm R: keep each of the n values seen with probability cap / n.
            let j = (next_random(rng) % self.moments.n) as usize;
            if j < self.reservoir.len() {
                self.reservoir[j] = v;
                self.tags[j] = tag;
            }
        }
        if let Some(id) = trace {
            let pos = self.exemplars.partition_point(|(x, _)| *x >= v);
            if pos < cfg.exemplars {
                self.exemplars.insert(pos, (v, id));
                self.exemplars.truncate(cfg.exemplars);
            }
        }
    }
}

/// xorshift64*: a tiny deterministic generator, so reservoir sampling replays identically.
fn next_random(state: &mut u64) -> u64 {
    let mut x = *state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *state = x;
    x.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

struct Series {
    panes: VecDeque<Pane>,
    rng: u64,
}

struct Group {
    series: [Option<Series>; Signal::COUNT],
    last_seen: u64,
}

/// The engine. Pure: samples in, closed windows out.
pub struct Engine {
    config: EngineConfig,
    groups: HashMap<GroupKey, Group>,
    live_series: usize,
    live_by_kind: [usize; 2],
    /// How many live panes exist per pane index, to skip stretches of event time with no data.
    pane_census: BTreeMap<i64, usize>,
    max_event_time: u64,
    watermark: u64,
    /// The end of the next window to close, once any sample has arrived.
    next_end: Option<u64>,
    last_closed_end: u64,
    stats: EngineStats,
}

impl Engine {
    pub fn new(config: EngineConfig) -> Engine {
        assert!(
            config.step_ns > 0 && config.window_ns.is_multiple_of(config.step_ns),
            "window must be a whole number of steps (checked when the pipeline is loaded)"
        );
        Engine {
            config,
            groups: HashMap::new(),
            live_series: 0,
            live_by_kind: [0; 2],
            pane_census: BTreeMap::new(),
            max_event_time: 0,
            watermark: 0,
            next_end: None,
            last_closed_end: 0,
            stats: EngineStats::default(),
        }
    }

    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    pub fn stats(&self) -> &EngineStats {
        &self.stats
    }

    /// Live series, in all.
    pub fn live_keys(&self) -> usize {
        self.live_series
    }

    /// Live series per scope kind: ("cohort", n), ("instance", n).
    pub fn live_keys_by_kind(&self) -> [(&'static str, usize); 2] {
        [
            ("cohort", self.live_by_kind[0]),
            ("instance", self.live_by_kind[1]),
        ]
    }

    pub fn watermark(&self) -> u64 {
        self.watermark
    }

    /// Adds samples to their series; returns values dropped, by reason (late, key overflow).
    pub fn ingest(&mut self, samples: &[MemorySample]) -> Vec<(DropReason, Signal)> {
        let mut dropped = Vec::new();
        for s in samples {
            let pane = (s.time_unix_nano / self.config.step_ns) as i64;
            let earliest_end = (pane as u64 + 1) * self.config.step_ns;
            if earliest_end <= self.last_closed_end {
                self.stats.late_values += s.values.len() as u64;
                dropped.extend(s.values.iter().map(|(sig, _)| (DropReason::Late, sig)));
                continue;
            }
            self.max_event_time = self.max_event_time.max(s.time_unix_nano);
            let next_end = self.next_end.get_or_insert(earliest_end);
            *next_end = (*next_end)
                .min(earliest_end)
                .max(self.last_closed_end + self.config.step_ns);
            for scope in [
                Scope::Cohort(s.cohort.clone()),
                Scope::Instance(s.instance.clone()),
            ] {
                let key = GroupKey {
                    service: s.service.clone(),
                    scope,
                };
                self.add(key, pane, s, &s.values, &mut dropped);
            }
        }
        dropped
    }

    fn add(
        &mut self,
        key: GroupKey,
        pane: i64,
        sample: &MemorySample,
        values: &SignalValues,
        dropped: &mut Vec<(DropReason, Signal)>,
    ) {
        let kind = matches!(key.scope, Scope::Instance(_)) as usize;
        let cfg = &self.config;
        let group = match self.groups.entry(key) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => {
                if self.live_series >= cfg.max_keys {
                    self.stats.overflow_values += values.len() as u64;
                    dropped.extend(values.iter().map(|(sig, _)| (DropReason::KeyOverflow, sig)));
                    return;
                }
                e.insert(Group {
                    series: Default::default(),
                    last_seen: 0,
                })
            }
        };
        group.last_seen = group.last_seen.max(sample.time_unix_nano);
        let tag = instance_tag(&sample.instance);
        for (signal, v) in values.iter() {
            let slot = &mut group.series[signal as usize];
            if slot.is_none() {
                if self.live_series >= cfg.max_keys {
                    self.stats.overflow_values += 1;
                    dropped.push((DropReason::KeyOverflow, signal));
                    continue;
                }
                self.live_series += 1;
                self.live_by_kind[kind] += 1;
                *slot = Some(Series {
                    panes: VecDeque::new(),
                    rng: 0x9e37_79b9_7f4a_7c15 ^ (signal as u64 + 1),
                });
            }
            let Some(series) = slot.as_mut() else {
                continue;
            };
            let idx = match series.panes.binary_search_by_key(&pane, |p| p.index) {
                Ok(i) => i,
                Err(i) => {
                    series.panes.insert(i, Pane::new(pane));
                    *self.pane_census.entry(pane).or_default() += 1;
                    i
                }
            };
            series.panes[idx].push(
                sample.time_unix_nano,
                v,
                tag,
                sample.trace_id.map(|trace_id| Exemplar {
                    trace_id,
                    span_id: sample.span_id,
                }),
                cfg,
                &mut series.rng,
            );
        }
    }

    /// Closes the windows the samples' own watermark allows.
    pub fn advance(&mut self) -> Vec<ClosedWindow> {
        let wm = self
            .max_event_time
            .saturating_sub(self.config.allowed_lateness_ns);
        self.advance_to(wm)
    }

    /// Moves the watermark to at least `watermark` (event-time nanoseconds) and closes the windows it passes.
    /// A service calls this from a timer when traffic stops, so that the last windows still close.
    pub fn advance_to(&mut self, watermark: u64) -> Vec<ClosedWindow> {
        self.watermark = self.watermark.max(watermark);
        let mut closed = Vec::new();
        while let Some(end) = self.next_end {
            if end > self.watermark {
                break;
            }
            closed.push(self.close(end));
            self.last_closed_end = end;
            self.evict_before(end);
            self.next_end = self.next_end_with_data(end + self.config.step_ns);
        }
        self.expire_idle();
        closed
    }

    /// Closes every window that holds data, whatever the watermark: the end of a replay.
    pub fn finish(&mut self) -> Vec<ClosedWindow> {
        let wm = self.max_event_time + self.config.window_ns + self.config.step_ns;
        let mut closed = self.advance_to(wm);
        closed.retain(|w| !w.summaries.is_empty());
        closed
    }

    /// The first window end at or after `from` whose window holds a pane, if any pane is live.
    fn next_end_with_data(&self, from: u64) -> Option<u64> {
        let step = self.config.step_ns;
        let first_pane_of_window = (from / step) as i64 - self.config.panes_per_window();
        let (&p, _) = self.pane_census.range(first_pane_of_window..).next()?;
        Some(from.max((p as u64 + 1) * step))
    }

    fn evict_before(&mut self, end: u64) {
        // The next window ends at end + step and starts at end + step - window.
        let first_needed = ((end + self.config.step_ns) / self.config.step_ns) as i64
            - self.config.panes_per_window();
        for group in self.groups.values_mut() {
            for series in group.series.iter_mut().flatten() {
                while series.panes.front().is_some_and(|p| p.index < first_needed) {
                    if let Some(p) = series.panes.pop_front() {
                        census_remove(&mut self.pane_census, p.index);
                    }
                }
            }
        }
    }

    fn expire_idle(&mut self) {
        let horizon = self.watermark.saturating_sub(self.config.idle_timeout_ns);
        if horizon == 0 {
            return;
        }
        let census = &mut self.pane_census;
        let mut expired = 0;
        let mut freed = [0usize; 2];
        self.groups.retain(|key, group| {
            if group.last_seen >= horizon {
                return true;
            }
            let kind = matches!(key.scope, Scope::Instance(_)) as usize;
            for series in group.series.iter().flatten() {
                freed[kind] += 1;
                for p in &series.panes {
                    census_remove(census, p.index);
                }
            }
            expired += 1;
            false
        });
        self.stats.expired_groups += expired;
        self.live_by_kind[0] -= freed[0];
        self.live_by_kind[1] -= freed[1];
        self.live_series -= freed[0] + freed[1];
    }

    fn close(&mut self, end: u64) -> ClosedWindow {
        let step = self.config.step_ns;
        let last_pane = (end / step) as i64 - 1;
        let first_pane = last_pane + 1 - self.config.panes_per_window();
        let start = end.saturating_sub(self.config.window_ns);
        let mut summaries = Vec::new();
        for (gkey, group) in &self.groups {
            for signal in Signal::ALL {
                let Some(series) = &group.series[signal as usize] else {
                    continue;
                };
                let panes: Vec<&Pane> = series
                    .panes
                    .iter()
                    .filter(|p| p.index >= first_pane && p.index <= last_pane)
                    .collect();
                if panes.is_empty() {
                    continue;
                }
                summaries.push(summarize(
                    SeriesKey {
                        group: gkey.clone(),
                        signal,
                    },
                    &panes,
                    last_pane,
                    self.config.exemplars,
                ));
            }
        }
        self.stats.windows_closed += 1;
        summaries.sort_by(|a, b| a.key.cmp(&b.key));
        ClosedWindow {
            start_unix_nano: start,
            end_unix_nano: end,
            summaries,
        }
    }
}

/// FNV-1a over the instance id: a stable 32-bit tag (collisions only merge two processes' statistics).
pub fn instance_tag(instance: &str) -> u32 {
    instance.bytes().fold(0x811c_9dc5u32, |h, b| {
        (h ^ b as u32).wrapping_mul(0x0100_0193)
    })
}

fn census_remove(census: &mut BTreeMap<i64, usize>, index: i64) {
    if let Some(n) = census.get_mut(&index) {
        *n -= 1;
        if *n == 0 {
            census.remove(&index);
        }
    }
}

fn summarize(key: SeriesKey, panes: &[&Pane], last_pane: i64, exemplars: usize) -> WindowSummary {
    let mut moments = Moments::default();
    let mut min = f64::INFINITY;
    let mut max = f64::NEG_INFINITY;
    let mut values = Vec::with_capacity(panes.iter().map(|p| p.reservoir.len()).sum());
    let mut instance_tags = Vec::with_capacity(values.capacity());
    let mut ex: Vec<(f64, Exemplar)> = Vec::new();
    for p in panes {
        moments.merge(&p.moments);
        min = min.min(p.min);
        max = max.max(p.max);
        values.extend_from_slice(&p.reservoir);
        instance_tags.extend_from_slice(&p.tags);
        ex.extend_from_slice(&p.exemplars);
    }
    ex.sort_by(|a, b| b.0.total_cmp(&a.0));
    ex.truncate(exemplars);
    let mut sorted = values.clone();
    let (median, mad, p95) = robust_summary(&mut sorted);
    let newest_pane = panes
        .iter()
        .find(|p| p.index == last_pane)
        .map(|p| PaneSummary {
            count: p.moments.n,
            min: p.min,
            max: p.max,
            last: p.last.1,
        });
    WindowSummary {
        key,
        count: moments.n,
        mean: moments.mean,
        sd: moments.sd(),
        median,
        mad,
        p95,
        min,
        max,
        values,
        instance_tags,
        exemplars: ex.into_iter().map(|(_, id)| id).collect(),
        newest_pane,
    }
}

#[cfg(test)]
mod tests;
