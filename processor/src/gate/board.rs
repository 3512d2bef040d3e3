//! What the gate knows: the board the core feeds window by window (see the module docs of `gate`).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use memdrift_anomaly::{Anomaly, AnomalyState, Evidence, LeakClass};

use super::config::GateSettings;
use crate::detect::spread_drift::CohortSpread;
use crate::detect::Findings;
use crate::engine::{instance_tag, ClosedWindow, Scope};
use crate::signal::Signal;

/// Cohorts kept per service; more are ignored (a service rarely runs more than a few at once).
pub const MAX_COHORTS: usize = 16;
/// Instances remembered per cohort (the most recently seen).
pub const MAX_INSTANCES: usize = 256;
/// Looks kept per (cohort, signal), whatever `history` says: four hours of one-minute windows.
pub const MAX_LOOKS: usize = 240;
/// Open findings remembered, across services.
pub const MAX_FINDINGS: usize = 10_000;
/// Canary starts remembered (told by a rollout controller).
pub const MAX_STARTS: usize = 10_000;
/// Forecasts remembered per service.
const MAX_FORECASTS: usize = 1024;

/// One look of one cohort at one signal: the spread of a non-overlapping window's values.
#[derive(Clone, Debug)]
pub(super) struct Look {
    pub(super) end: u64,
    pub(super) spread: CohortSpread,
}

/// What the board knows of one cohort of a service.
#[derive(Debug, Default)]
pub(super) struct CohortState {
    pub(super) first_seen: u64,
    pub(super) last_seen: u64,
    /// Instance tags ([`instance_tag`]) that sent to this cohort, with when they last did.
    pub(super) instances: HashMap<u32, u64>,
    pub(super) looks: BTreeMap<Signal, VecDeque<Look>>,
}

/// An instance's latest forecast of its time to the memory limit.
#[derive(Clone, Debug, PartialEq)]
pub struct Forecast {
    pub seconds: f64,
    pub at: u64,
}

#[derive(Debug, Default)]
pub(super) struct ServiceState {
    pub(super) cohorts: BTreeMap<Arc<str>, CohortState>,
    /// By instance name.
    pub(super) forecasts: HashMap<String, Forecast>,
    pub(super) last_seen: u64,
}

/// An open finding, as the gate reads it.
#[derive(Clone, Debug)]
pub struct OpenFinding {
    pub service: String,
    pub instance: Option<String>,
    pub signal: String,
    pub evidence: Evidence,
    pub opened: u64,
    pub updated: u64,
}

impl OpenFinding {
    /// The canary cohort a spread finding names.
    pub(super) fn canary(&self) -> Option<&str> {
        match &self.evidence {
            Evidence::Spread { cohorts, .. } => Some(&cohorts.canary),
            _ => None,
        }
    }

    pub fn leak_class(&self) -> Option<LeakClass> {
        match &self.evidence {
            Evidence::Leak { classification, .. } => Some(*classification),
            _ => None,
        }
    }
}

/// What the gate knows, fed by the core window by window.
#[derive(Debug)]
pub struct Board {
    pub(super) settings: GateSettings,
    pub(super) services: HashMap<Arc<str>, ServiceState>,
    pub(super) findings: HashMap<[u8; 16], OpenFinding>,
    /// Canary starts a rollout controller told of, by (service, canary cohort): event-time ns and the spec's
    /// checksum.
    pub(super) starts: HashMap<(String, String), (u64, String)>,
    /// The newest window end seen: the board's "now".
    pub(super) newest: u64,
    /// Services refused at `max_services`.
    pub overflow: u64,
}

impl Board {
    pub fn new(settings: GateSettings) -> Board {
        Board {
            settings,
            services: HashMap::new(),
            findings: HashMap::new(),
            starts: HashMap::new(),
            newest: 0,
            overflow: 0,
        }
    }

    pub fn settings(&self) -> &GateSettings {
        &self.settings
    }

    /// The newest event time seen (ns).
    pub fn now(&self) -> u64 {
        self.newest
    }

    /// Takes in one closed window and what the detectors found in it.
    pub fn observe(&mut self, window: &ClosedWindow, findings: &Findings) {
        self.newest = self.newest.max(window.end_unix_nano);
        self.take_window(window);
        for a in &findings.anomalies {
            self.take_anomaly(a);
        }
        for g in &findings.gauges {
            if g.name != "memdrift_time_to_limit_seconds" {
                continue;
            }
            let label = |name: &str| g.labels.iter().find(|(k, _)| *k == name).map(|(_, v)| v);
            let (Some(service), Some(instance)) = (label("service"), label("instance")) else {
                continue;
            };
            if let Some(state) = self.services.get_mut(service.as_str()) {
                if state.forecasts.len() < MAX_FORECASTS || state.forecasts.contains_key(instance) {
                    state.forecasts.insert(
                        instance.clone(),
                        Forecast {
                            seconds: g.value,
                            at: window.end_unix_nano,
                        },
                    );
                }
            }
        }
        self.expire();
    }

    fn take_window(&mut self, window: &ClosedWindow) {
        let end = window.end_unix_nano;
        // Windows overlap (one closes every step); only those on the grid of whole windows (ends at multiples of
        // the window size) are read for values: each value once, and every cohort's looks on the same ends, so
        // looks do not overlap and are independent of each other.
        let on_grid = end.is_multiple_of(self.settings.window_ns.max(1));
        // Cohorts per (service, signal) in this window: looks are kept only where there is a pair to compare.
        let mut cohorts_in: HashMap<(&str, Signal), usize> = HashMap::new();
        for s in window.summaries.iter().filter(|_| on_grid) {
            if let Scope::Cohort(Some(_)) = s.key.group.scope {
                *cohorts_in
                    .entry((&s.key.group.service, s.key.signal))
                    .or_default() += 1;
            }
        }
        for s in &window.summaries {
            let Scope::Cohort(Some(cohort)) = &s.key.group.scope else {
                continue;
            };
            let service = &s.key.group.service;
            if !self.services.contains_key(service) {
                if self.services.len() >= self.settings.max_services {
                    self.overflow += 1;
                    continue;
                }
                self.services
                    .insert(service.clone(), ServiceState::default());
            }
            let Some(state) = self.services.get_mut(service) else {
                continue;
            };
            state.last_seen = state.last_seen.max(end);
            if !state.cohorts.contains_key(cohort) {
                if state.cohorts.len() >= MAX_COHORTS {
                    continue;
                }
                let fresh = CohortState {
                    first_seen: window.start_unix_nano,
                    ..CohortState::default()
                };
                state.cohorts.insert(cohort.clone(), fresh);
            }
            let Some(c) = state.cohorts.get_mut(cohort) else {
                continue;
            };
            c.last_seen = c.last_seen.max(end);
            if !on_grid {
                continue;
            }
            remember_instances(&mut c.instances, &s.instance_tags, end);
            let paired = cohorts_in
                .get(&(service.as_ref(), s.key.signal))
                .is_some_and(|n| *n >= 2);
            if !paired || !self.settings.signals.contains(&s.key.signal) {
                continue;
            }
            let looks = c.looks.entry(s.key.signal).or_default();
            if looks.back().is_some_and(|l| l.end >= end) {
                continue;
            }
            let per_request = s.key.signal.is_per_request();
            if let Some(spread) =
                CohortSpread::from_values(&s.values, &s.instance_tags, per_request)
            {
                looks.push_back(Look { end, spread });
                let oldest = end.saturating_sub(self.settings.history_ns);
                while looks.len() > MAX_LOOKS || looks.front().is_some_and(|l| l.end < oldest) {
                    looks.pop_front();
                }
            }
        }
    }

    fn take_anomaly(&mut self, a: &Anomaly) {
        let id = a.episode.id;
        if a.state == AnomalyState::Resolved {
            self.findings.remove(&id);
            return;
        }
        if let Some(f) = self.findings.get_mut(&id) {
            f.evidence = a.evidence.clone();
            f.updated = a.detected_unix_nano;
            return;
        }
        if self.findings.len() >= MAX_FINDINGS {
            return;
        }
        self.findings.insert(
            id,
            OpenFinding {
                service: a.service.clone(),
                instance: a.instance.clone(),
                signal: a.signal.clone(),
                evidence: a.evidence.clone(),
                opened: a.detected_unix_nano,
                updated: a.detected_unix_nano,
            },
        );
    }

    /// Forgets services silent for `idle_timeout`, findings not refreshed for `history`, looks and instances
    /// older than `history`, and canary starts of services no longer known.
    fn expire(&mut self) {
        let now = self.newest;
        let idle = now.saturating_sub(self.settings.idle_timeout_ns);
        let old = now.saturating_sub(self.settings.history_ns);
        self.services.retain(|_, s| s.last_seen >= idle);
        for s in self.services.values_mut() {
            s.cohorts.retain(|_, c| c.last_seen >= idle);
            s.forecasts.retain(|_, f| f.at >= idle);
            for c in s.cohorts.values_mut() {
                c.instances.retain(|_, seen| *seen >= old);
            }
        }
        self.findings.retain(|_, f| f.updated >= old);
        let services = &self.services;
        self.starts
            .retain(|(service, _), (at, _)| *at >= old || services.contains_key(service.as_str()));
    }

    /// Records that the canary of `service` started at `at` (event-time ns) with this spec `checksum`: its
    /// comparison starts there, not at its pods' start. The first start told per checksum is kept (a controller
    /// repeats itself); a new checksum is a new canary. `false` when nothing changed or the board already
    /// remembers [`MAX_STARTS`] others.
    pub fn record_start(&mut self, service: &str, canary: &str, at: u64, checksum: &str) -> bool {
        let key = (service.to_string(), canary.to_string());
        match self.starts.get(&key) {
            Some((_, known)) if known == checksum => return false,
            None if self.starts.len() >= MAX_STARTS => return false,
            _ => {}
        }
        self.starts.insert(key, (at, checksum.to_string()));
        true
    }

    /// Whether any data of this cohort of the service has been seen (and not yet forgotten).
    pub fn has_cohort(&self, service: &str, cohort: &str) -> bool {
        self.services
            .get(service)
            .is_some_and(|s| s.cohorts.contains_key(cohort))
    }

    /// How much state the board holds: (services, cohorts, looks, instances, findings, starts).
    pub fn size(&self) -> BoardSize {
        let cohorts = self.services.values().flat_map(|s| s.cohorts.values());
        let mut size = BoardSize {
            services: self.services.len(),
            findings: self.findings.len(),
            starts: self.starts.len(),
            ..BoardSize::default()
        };
        for c in cohorts {
            size.cohorts += 1;
            size.instances += c.instances.len();
            size.looks += c.looks.values().map(VecDeque::len).sum::<usize>();
        }
        size.forecasts = self.services.values().map(|s| s.forecasts.len()).sum();
        size
    }
}

/// The board shared between the engine thread, which feeds it, and the gate's HTTP handlers, which read it.
#[derive(Clone, Debug)]
pub struct SharedBoard(Arc<std::sync::Mutex<Board>>);

impl SharedBoard {
    pub fn new(board: Board) -> SharedBoard {
        SharedBoard(Arc::new(std::sync::Mutex::new(board)))
    }

    /// The board, for one short read or update (a panic while it was held leaves it usable).
    pub fn lock(&self) -> std::sync::MutexGuard<'_, Board> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Counts of what a [`Board`] holds, to show it stays bounded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BoardSize {
    pub services: usize,
    pub cohorts: usize,
    pub looks: usize,
    pub instances: usize,
    pub findings: usize,
    pub starts: usize,
    pub forecasts: usize,
}

impl BoardSize {
    /// Bytes held, roughly: what the memory budget of a deployment can be set from.
    pub fn approx_bytes(&self) -> usize {
        self.services * 128
            + self.cohorts * 160
            + self.looks * std::mem::size_of::<Look>()
            + self.instances * 24
            + self.findings * 512
            + self.starts * 96
            + self.forecasts * 96
    }
}

/// Notes the instances behind a cohort's values, keeping the [`MAX_INSTANCES`] most recently seen.
fn remember_instances(known: &mut HashMap<u32, u64>, tags: &[u32], at: u64) {
    let mut last = None;
    for &tag in tags {
        if last == Some(tag) {
            continue;
        }
        last = Some(tag);
        if known.len() >= MAX_INSTANCES && !known.contains_key(&tag) {
            let stalest = known.iter().min_by_key(|(_, seen)| **seen).map(|(t, _)| *t);
            match stalest {
                Some(t) if known[&t] < at => {
                    known.remove(&t);
                }
                _ => continue,
            }
        }
        known.insert(tag, at);
    }
}

/// Whether `instance` has sent to this cohort of the service.
pub(super) fn instance_in(cohort: &CohortState, instance: &str) -> bool {
    cohort.instances.contains_key(&instance_tag(instance))
}
