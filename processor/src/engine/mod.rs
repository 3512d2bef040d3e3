//! The event-time engine: per-key state, sliding windows closed by each source's own progress, bounded memory.
//!
//! Time is the samples' own (span end, point time), never the wall clock: the same input gives the same windows,
//! which is what makes `replay` deterministic. Windows of length `window` slide by `step` and end on multiples
//! of `step`; a key keeps one *pane* per step of its recent past, so a closed window is the union of
//! `window / step` panes.
//!
//! **Progress is per source**, as stream processors keep per-partition watermarks: a source is one instance of
//! a service. An instance's windows (the series the per-instance detectors read) close once its own newest
//! event time, less `allowed_lateness`, has passed them; a service's cohort windows close once every *active*
//! instance of the service has passed them, an instance more than `source_idle` behind the service's newest
//! sample being left out (idle). So a source that is ahead never makes another late: a Collector's file whose
//! lines each carry some pods over two scrapes loses nothing. A service's first two windows of event time (or
//! `source_idle`, if shorter) are for finding its sources (its cohort windows close once they have passed). A sample whose earliest window has closed for its
//! instance is late (counted, dropped); one that only its cohort's windows have passed is kept for the instance
//! and counted as late for the cohort. When traffic stops, the service's timer ([`Engine::tick`]) closes the
//! windows of the sources that have gone quiet.
//!
//! Bounds: at most `max_keys` live (group, signal) series, new ones beyond the cap counted as overflow; a pane
//! keeps exact moments, extremes and last value but at most `max_samples_per_pane` values for a cohort
//! (`instance_samples_per_pane` for an instance, whose detectors read extremes) in a uniform reservoir for the
//! order statistics;
//! a group not seen for `idle_timeout` of event time is forgotten (a whole service once nothing newer than that
//! has come from it; an instance or cohort once its service's newest sample is that far ahead).

mod config;
mod group;
mod summary;
mod window;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

pub use config::EngineConfig;
pub use summary::{quantile_sorted, robust_summary, Moments};
pub use window::{ClosedWindow, GroupKey, PaneSummary, Scope, SeriesKey, WindowSummary};

use crate::extract::DropReason;
use crate::sample::{MemorySample, LATEST_EVENT_TIME};
use crate::signal::Signal;
use group::Group;

/// Counters the engine keeps; the service exports them as self-telemetry.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EngineStats {
    /// Values whose instance window had closed: dropped.
    pub late_values: u64,
    /// Values kept for their instance but too late for their cohort's window.
    pub late_for_cohort_values: u64,
    pub overflow_values: u64,
    pub expired_groups: u64,
    /// Services forgotten early, at the key cap, to make room for a newcomer (the idlest first).
    pub evicted_services: u64,
    pub windows_closed: u64,
    /// Samples none of whose values were kept (late, over the key cap), and their values: what a sender is told
    /// was rejected.
    pub rejected_samples: u64,
    pub rejected_sample_values: u64,
}

impl EngineStats {
    /// Counts `s` as rejected when the values it lost (dropped, not merely late for its cohort) are all its
    /// values: what a sender is told.
    fn reject(&mut self, s: &MemorySample, lost: usize) {
        if lost > 0 && lost == s.values.len() {
            self.rejected_samples += 1;
            self.rejected_sample_values += lost as u64;
        }
    }

    /// Drops every value of `s` for `reason`, and counts `s` as rejected.
    fn drop_sample(
        &mut self,
        s: &MemorySample,
        reason: DropReason,
        dropped: &mut Vec<(DropReason, Signal)>,
    ) {
        dropped.extend(s.values.iter().map(|(sig, _)| (reason, sig)));
        self.reject(s, s.values.len());
    }
}

/// Windows that close together: a service's cohorts, or one instance's series. `closed_end` is the end of the
/// newest window closed; a sample whose earliest window ends at or before it is late for these groups.
#[derive(Default, serde::Serialize, serde::Deserialize)]
struct Clock {
    closed_end: u64,
}

/// One source of samples: an instance of a service, with its own progress in event time.
#[derive(serde::Serialize, serde::Deserialize)]
struct Instance {
    group: Group,
    clock: Clock,
    /// The newest event time this instance has sent.
    newest: u64,
    /// Timer ticks since it last sent anything (see [`Engine::tick`]).
    quiet_ticks: u32,
}

/// The engine's maps by service, instance and cohort label, looked up for every sample: foldhash (seeded per
/// process) rather than SipHash, which cost several times as much per lookup. Their sizes are bounded by
/// `max_keys`, so a sender choosing labels to collide can slow lookups in a bounded map, not grow it.
type KeyMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

#[derive(serde::Serialize, serde::Deserialize)]
struct Service {
    cohorts: KeyMap<Option<Arc<str>>, Group>,
    clock: Clock,
    instances: KeyMap<Arc<str>, Instance>,
    /// The oldest and newest event times it has sent.
    oldest: u64,
    newest: u64,
    quiet_ticks: u32,
    /// Listed in `Engine::touched` since the last advance.
    #[serde(skip)]
    touched: bool,
}

impl Instance {
    fn new() -> Instance {
        Instance {
            group: Group::new(),
            clock: Clock::default(),
            newest: 0,
            quiet_ticks: 0,
        }
    }
}

impl Service {
    fn new() -> Service {
        Service {
            cohorts: KeyMap::default(),
            clock: Clock::default(),
            instances: KeyMap::default(),
            oldest: u64::MAX,
            newest: 0,
            quiet_ticks: 0,
            touched: false,
        }
    }
}

/// Timer ticks (steps) without data, beyond a window's worth, after which a source counts as quiet and the timer
/// may close its windows: a window and two steps (80 s by default), more than a 60 s scraper's cadence.
const QUIET_EXTRA_TICKS: u32 = 2;

/// The engine. Pure: samples in, closed windows out.
pub struct Engine {
    config: EngineConfig,
    services: KeyMap<Arc<str>, Service>,
    /// Services that received samples since the last advance: only their clocks can have moved.
    touched: Vec<Arc<str>>,
    live_series: usize,
    live_by_kind: [usize; 2],
    /// The newest event time of any sample.
    max_event_time: u64,
    /// The timer's watermark: windows of quiet sources close once it passes them.
    floor: u64,
    /// `max_event_time` when idle groups were last looked for.
    expired_at: u64,
    /// A new source was refused at the key cap since the last [`Engine::advance`]: room is made there.
    newcomer_refused: bool,
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
            services: KeyMap::default(),
            touched: Vec::new(),
            live_series: 0,
            live_by_kind: [0; 2],
            max_event_time: 0,
            floor: 0,
            expired_at: 0,
            newcomer_refused: false,
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

    /// Live sources (instances of services).
    pub fn live_sources(&self) -> usize {
        self.services.values().map(|s| s.instances.len()).sum()
    }

    /// Adds samples to their series; returns values dropped, by reason (late, late for the cohort only, key
    /// overflow).
    ///
    /// Samples come in runs from one source (a resource's spans share its service, instance and cohort): each
    /// run's service, instance and cohort are looked up once, not once per sample.
    pub fn ingest(&mut self, samples: &[MemorySample]) -> Vec<(DropReason, Signal)> {
        let mut dropped = Vec::new();
        for run in samples.chunk_by(same_source) {
            self.add_run(run, &mut dropped);
        }
        dropped
    }

    /// Adds a run of samples of one service, instance and cohort.
    fn add_run(&mut self, run: &[MemorySample], dropped: &mut Vec<(DropReason, Signal)>) {
        let Some(first) = run.first() else {
            return;
        };
        let cfg = &self.config;
        // Progress of the whole input, for expiry: a sample refused over the key cap still moves it, so that
        // idle groups go and new ones can enter.
        let newest = (run.iter().map(|s| s.time_unix_nano))
            .filter(|&t| t <= LATEST_EVENT_TIME)
            .max();
        self.max_event_time = self.max_event_time.max(newest.unwrap_or(0));
        let known = || {
            (self.services.get(&first.service))
                .is_some_and(|v| v.instances.contains_key(&first.instance))
        };
        if newest.is_none() || (self.live_series >= cfg.max_keys && !known()) {
            self.newcomer_refused |= newest.is_some();
            self.refuse(run, dropped);
            return;
        }
        let service = self
            .services
            .entry(first.service.clone())
            .or_insert_with(Service::new);
        if !service.touched {
            service.touched = true;
            self.touched.push(first.service.clone());
        }
        service.quiet_ticks = 0;
        let instance = service
            .instances
            .entry(first.instance.clone())
            .or_insert_with(Instance::new);
        instance.quiet_ticks = 0;
        let tag = instance_tag(&first.instance);
        let mut live = Live {
            series: &mut self.live_series,
            by_kind: &mut self.live_by_kind,
            max: cfg.max_keys,
        };
        // Found (or made) at the run's first sample that its cohort's windows still take.
        let mut cohort: Option<&mut Group> = None;
        for s in run {
            let before = dropped.len();
            // Extraction drops these already; the check keeps the window arithmetic below in range for any
            // caller.
            if s.time_unix_nano > LATEST_EVENT_TIME {
                self.stats
                    .drop_sample(s, DropReason::FutureTimestamp, dropped);
                continue;
            }
            let pane = (s.time_unix_nano / cfg.step_ns) as i64;
            let earliest_end = (s.time_unix_nano / cfg.step_ns + 1).saturating_mul(cfg.step_ns);
            if earliest_end <= instance.clock.closed_end {
                self.stats.late_values += s.values.len() as u64;
                self.stats.drop_sample(s, DropReason::Late, dropped);
                continue;
            }
            instance.newest = instance.newest.max(s.time_unix_nano);
            service.newest = service.newest.max(s.time_unix_nano);
            service.oldest = service.oldest.min(s.time_unix_nano);
            // Late for the cohort's windows (the service's slower clock has passed it) but not for the
            // instance's.
            let for_cohort = earliest_end > service.clock.closed_end;
            if for_cohort && cohort.is_none() {
                cohort = Some((service.cohorts.entry(s.cohort.clone())).or_insert_with(Group::new));
            }
            for (signal, v) in s.values.iter() {
                if cfg.instance_signals[signal as usize] {
                    if !live.admit(&instance.group, signal, 1) {
                        self.stats.overflow_values += 1;
                        dropped.push((DropReason::KeyOverflow, signal));
                        continue;
                    }
                    let keep = (cfg.instance_samples_per_pane, cfg.exemplars);
                    instance.group.push(pane, s, signal, v, tag, keep);
                }
                let Some(group) = cohort.as_deref_mut().filter(|_| for_cohort) else {
                    self.stats.late_for_cohort_values += 1;
                    dropped.push((DropReason::LateForCohort, signal));
                    continue;
                };
                if !live.admit(group, signal, 0) {
                    self.stats.overflow_values += 1;
                    dropped.push((DropReason::KeyOverflow, signal));
                    continue;
                }
                let keep = (cfg.max_samples_per_pane, cfg.exemplars);
                group.push(pane, s, signal, v, tag, keep);
            }
            // Late for its cohort only, a value is still kept for its instance.
            let lost = (dropped[before..].iter())
                .filter(|(r, _)| *r != DropReason::LateForCohort)
                .count();
            self.stats.reject(s, lost);
        }
    }

    /// A run refused whole: a new source's at the key cap, or one whose every event time lies past
    /// [`LATEST_EVENT_TIME`] (which makes no source).
    fn refuse(&mut self, run: &[MemorySample], dropped: &mut Vec<(DropReason, Signal)>) {
        for s in run {
            let reason = if s.time_unix_nano > LATEST_EVENT_TIME {
                DropReason::FutureTimestamp
            } else {
                self.stats.overflow_values += s.values.len() as u64;
                DropReason::KeyOverflow
            };
            self.stats.drop_sample(s, reason, dropped);
        }
    }

    /// Closes the windows that the samples' own progress allows: each instance's windows once its newest event
    /// time less the allowed lateness has passed them, each service's cohort windows once every active instance
    /// of the service has (an instance more than `source_idle` behind the service's newest is not waited for).
    pub fn advance(&mut self) -> Vec<ClosedWindow> {
        let mut out = Closing::new(&self.config);
        for name in std::mem::take(&mut self.touched) {
            if let Some(svc) = self.services.get_mut(&name) {
                svc.touched = false;
                close_service(&name, svc, &self.config, self.floor, false, &mut out);
            }
        }
        self.expire_if_due(&mut out);
        if std::mem::take(&mut self.newcomer_refused) {
            self.make_room(&mut out);
        }
        self.stats.windows_closed += out.count;
        out.into_windows()
    }

    /// At the key cap, with a new source refused: forgets the services that have sent nothing for a window, the
    /// idlest first, until a hundredth of the cap is free (their last windows are closed first, so nothing they
    /// sent is lost). A flood of short-lived junk services then cannot lock a real newcomer out for longer than
    /// one batch; services that are all still sending keep their places, and the newcomer is refused (counted as
    /// `key_overflow`).
    fn make_room(&mut self, out: &mut Closing) {
        let want = (self.config.max_keys / 100).max(1);
        let cutoff = self.max_event_time.saturating_sub(self.config.window_ns);
        let mut idle: Vec<(u64, Arc<str>)> = self
            .services
            .iter()
            .filter(|(_, svc)| svc.newest < cutoff)
            .map(|(name, svc)| (svc.newest, Arc::clone(name)))
            .collect();
        idle.sort_unstable();
        let mut freed = [0usize; 2];
        for (_, name) in idle {
            if freed[0] + freed[1] >= want {
                break;
            }
            let Some(mut svc) = self.services.remove(&name) else {
                continue;
            };
            close_service(&name, &mut svc, &self.config, u64::MAX, true, out);
            freed[0] += svc.cohorts.values().map(Group::series_count).sum::<usize>();
            freed[1] += (svc.instances.values())
                .map(|i| i.group.series_count())
                .sum::<usize>();
            self.stats.evicted_services += 1;
        }
        self.touched.retain(|name| self.services.contains_key(name));
        self.live_by_kind[0] -= freed[0];
        self.live_by_kind[1] -= freed[1];
        self.live_series -= freed[0] + freed[1];
    }

    /// The service's timer, called about once a step with the wall clock less a delay: the windows of every
    /// source that has sent nothing for a window and two ticks close up to `watermark`, so that the last windows still close
    /// when traffic stops. Sources that are still sending are left to their own progress: a source that
    /// delivers late but steadily (a scraper behind a batching Collector) never has its windows closed early.
    pub fn tick(&mut self, watermark: u64) -> Vec<ClosedWindow> {
        self.floor = self.floor.max(watermark);
        let mut out = Closing::new(&self.config);
        for (name, svc) in &mut self.services {
            svc.touched = false;
            for i in svc.instances.values_mut() {
                i.quiet_ticks = i.quiet_ticks.saturating_add(1);
            }
            svc.quiet_ticks = svc.quiet_ticks.saturating_add(1);
            close_service(name, svc, &self.config, self.floor, false, &mut out);
        }
        self.touched.clear();
        self.expire(self.floor.max(self.max_event_time), &mut out);
        self.stats.windows_closed += out.count;
        out.into_windows()
    }

    /// Closes every window that holds data, whatever the progress: the end of a replay.
    pub fn finish(&mut self) -> Vec<ClosedWindow> {
        let wm = (self.max_event_time)
            .saturating_add(self.config.window_ns)
            .saturating_add(self.config.step_ns);
        self.floor = self.floor.max(wm);
        let mut out = Closing::new(&self.config);
        for (name, svc) in &mut self.services {
            svc.touched = false;
            close_service(name, svc, &self.config, self.floor, true, &mut out);
        }
        self.touched.clear();
        self.stats.windows_closed += out.count;
        let mut closed = out.into_windows();
        closed.retain(|w| !w.summaries.is_empty());
        closed
    }

    /// What a checkpoint keeps of the engine: every service's sources, cohorts, open panes and progress. Not
    /// the settings (the pipeline gives them again), nor the counters (self-telemetry starts again at zero).
    pub fn state(&self) -> impl serde::Serialize + '_ {
        Saved {
            services: &self.services,
            max_event_time: self.max_event_time,
            floor: self.floor,
            expired_at: self.expired_at,
        }
    }

    /// An engine with `config` that carries on from [`Engine::state`] saved under the same settings.
    pub fn restore(config: EngineConfig, state: EngineState) -> Engine {
        let mut engine = Engine::new(config);
        let EngineState(saved) = state;
        for svc in saved.services.values() {
            let cohorts: usize = svc.cohorts.values().map(Group::series_count).sum();
            let instances: usize = (svc.instances.values())
                .map(|i| i.group.series_count())
                .sum();
            engine.live_by_kind[0] += cohorts;
            engine.live_by_kind[1] += instances;
            engine.live_series += cohorts + instances;
        }
        engine.services = saved.services;
        engine.max_event_time = saved.max_event_time;
        engine.floor = saved.floor;
        engine.expired_at = saved.expired_at;
        engine
    }

    /// Looks for idle groups once the newest event time has moved a step since the last look.
    fn expire_if_due(&mut self, out: &mut Closing) {
        if self.max_event_time >= self.expired_at.saturating_add(self.config.step_ns) {
            self.expire(self.max_event_time, out);
        }
    }

    /// Forgets services, instances and cohorts that have sent nothing for `idle_timeout` of event time: a
    /// service against `now`, its instances and cohorts against the service's newest sample.
    /// A service that goes has its last windows closed first (its instances that went before it were idle,
    /// and so closed, long before).
    fn expire(&mut self, now: u64, out: &mut Closing) {
        self.expired_at = now;
        let cfg = &self.config;
        let idle = cfg.idle_timeout_ns;
        let mut expired = 0;
        let mut freed = [0usize; 2];
        self.services.retain(|name, svc| {
            // A service silent for the idle timeout goes whole; in a live one, what its own newest sample has
            // left behind by that much.
            let horizon = if svc.newest.saturating_add(idle) < now {
                close_service(name, svc, cfg, u64::MAX, true, out);
                u64::MAX
            } else {
                svc.newest
            };
            svc.instances.retain(|_, i| {
                let keep = i.group.last_seen.max(i.newest).saturating_add(idle) >= horizon;
                if !keep {
                    freed[1] += i.group.series_count();
                    expired += 1;
                }
                keep
            });
            svc.cohorts.retain(|_, g| {
                let keep = g.last_seen.saturating_add(idle) >= horizon;
                if !keep {
                    freed[0] += g.series_count();
                    expired += 1;
                }
                keep
            });
            !svc.instances.is_empty() || !svc.cohorts.is_empty()
        });
        self.touched.retain(|name| self.services.contains_key(name));
        self.stats.expired_groups += expired;
        self.live_by_kind[0] -= freed[0];
        self.live_by_kind[1] -= freed[1];
        self.live_series -= freed[0] + freed[1];
    }
}

/// What a checkpoint keeps of the engine: its services borrowed when written ([`Engine::state`]), owned when
/// read back.
#[derive(serde::Serialize, serde::Deserialize)]
struct Saved<S> {
    services: S,
    max_event_time: u64,
    floor: u64,
    expired_at: u64,
}

/// [`Engine::state`] as read back: what [`Engine::restore`] takes.
#[derive(serde::Deserialize)]
#[serde(transparent)]
pub struct EngineState(Saved<KeyMap<Arc<str>, Service>>);

/// The count of live series against the cap, while one sample's values are added.
struct Live<'a> {
    series: &'a mut usize,
    by_kind: &'a mut [usize; 2],
    max: usize,
}

impl Live<'_> {
    /// Whether `group` may hold `signal`: it already does, or a new series (of scope kind `kind`) fits the cap.
    fn admit(&mut self, group: &Group, signal: Signal, kind: usize) -> bool {
        if group.has(signal) {
            return true;
        }
        if *self.series >= self.max {
            return false;
        }
        *self.series += 1;
        self.by_kind[kind] += 1;
        true
    }
}

/// Windows closed in one call, gathered by end: a window end may close for some sources now and for others later.
struct Closing {
    window_ns: u64,
    by_end: BTreeMap<u64, Vec<WindowSummary>>,
    count: u64,
}

impl Closing {
    fn new(cfg: &EngineConfig) -> Closing {
        Closing {
            window_ns: cfg.window_ns,
            by_end: BTreeMap::new(),
            count: 0,
        }
    }

    fn into_windows(self) -> Vec<ClosedWindow> {
        let window = self.window_ns;
        self.by_end
            .into_iter()
            .map(|(end, mut summaries)| {
                summaries.sort_by(|a, b| a.key.cmp(&b.key));
                ClosedWindow {
                    start_unix_nano: end.saturating_sub(window),
                    end_unix_nano: end,
                    summaries,
                }
            })
            .collect()
    }
}

/// Closes what one service's progress allows: the cohorts on the slowest active instance's watermark, each
/// instance on its own (an idle one also on the cohorts': it stopped, its last windows close as the service
/// moves on). `floor` applies to quiet sources (or to all, with `all`).
fn close_service(
    name: &Arc<str>,
    svc: &mut Service,
    cfg: &EngineConfig,
    floor: u64,
    all: bool,
    out: &mut Closing,
) {
    let lateness = cfg.allowed_lateness_ns;
    let quiet_after = (cfg.panes_per_window() as u32).saturating_add(QUIET_EXTRA_TICKS);
    let active_since = svc.newest.saturating_sub(cfg.source_idle_ns);
    let is_quiet = |ticks: u32| all || ticks >= quiet_after;
    let slowest = svc
        .instances
        .values()
        .filter(|i| !is_quiet(i.quiet_ticks) && i.newest >= active_since)
        .map(|i| i.newest)
        .min();
    let mut cohort_wm = slowest.unwrap_or(svc.newest).saturating_sub(lateness);
    // The service's first stretch of event time is for finding its sources: a source first heard from then,
    // with data older than the others' (the next line of a Collector's file), is waited for. Two windows (or
    // `source_idle`, if shorter): the cohort's values are all held meanwhile, so a longer wait would hold
    // memory in proportion to the rate.
    if svc.newest.saturating_sub(svc.oldest) < cfg.discovery_ns() {
        cohort_wm = 0;
    }
    if is_quiet(svc.quiet_ticks) || slowest.is_none() {
        cohort_wm = cohort_wm.max(floor);
    }
    for (id, inst) in &mut svc.instances {
        let mut wm = inst.newest.saturating_sub(lateness);
        if is_quiet(inst.quiet_ticks) {
            wm = wm.max(floor);
        }
        if inst.newest < active_since {
            wm = wm.max(cohort_wm);
        }
        let key = GroupKey {
            service: name.clone(),
            scope: Scope::Instance(id.clone()),
        };
        close_clock(&mut inst.clock, &mut [(key, &mut inst.group)], wm, cfg, out);
    }
    let mut groups: Vec<(GroupKey, &mut Group)> = svc
        .cohorts
        .iter_mut()
        .map(|(c, g)| {
            let scope = Scope::Cohort(c.clone());
            (
                GroupKey {
                    service: name.clone(),
                    scope,
                },
                g,
            )
        })
        .collect();
    close_clock(&mut svc.clock, &mut groups, cohort_wm, cfg, out);
}

/// Closes, in order, every window of `groups` that ends at or before `watermark` and holds a pane (stretches of
/// event time with no data are skipped, not closed one by one).
fn close_clock(
    clock: &mut Clock,
    groups: &mut [(GroupKey, &mut Group)],
    watermark: u64,
    cfg: &EngineConfig,
    out: &mut Closing,
) {
    let step = cfg.step_ns;
    let per_window = cfg.panes_per_window();
    while let Some(earliest) = groups.iter().filter_map(|(_, g)| g.earliest_pane()).min() {
        let end = clock
            .closed_end
            .saturating_add(step)
            .max((earliest as u64 + 1).saturating_mul(step));
        if end > watermark {
            break;
        }
        let last_pane = (end / step) as i64 - 1;
        let first_pane = last_pane + 1 - per_window;
        let summaries = out.by_end.entry(end).or_default();
        for (key, g) in groups.iter() {
            g.summaries(key, first_pane, last_pane, cfg.exemplars, summaries);
        }
        out.count += 1;
        clock.closed_end = end;
        for (_, g) in groups.iter_mut() {
            g.evict_before(first_pane + 1);
        }
    }
}

/// Whether two neighbouring samples come from one source: the same service, instance and cohort (the same
/// shared names, as extraction gives a resource's samples; equal names in separate allocations only split a run).
fn same_source(a: &MemorySample, b: &MemorySample) -> bool {
    Arc::ptr_eq(&a.service, &b.service)
        && Arc::ptr_eq(&a.instance, &b.instance)
        && match (&a.cohort, &b.cohort) {
            (Some(x), Some(y)) => Arc::ptr_eq(x, y),
            (None, None) => true,
            _ => false,
        }
}

/// FNV-1a over the instance id: a stable 32-bit tag (collisions only merge two processes' statistics).
pub fn instance_tag(instance: &str) -> u32 {
    instance.bytes().fold(0x811c_9dc5u32, |h, b| {
        (h ^ b as u32).wrapping_mul(0x0100_0193)
    })
}

#[cfg(test)]
mod tests;
