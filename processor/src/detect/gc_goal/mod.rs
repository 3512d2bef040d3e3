//! `gc_goal`: a Go process whose next garbage collection is due above its memory limit.
//!
//! Go collects when the heap reaches its goal, by default twice the live heap after the last collection
//! (GOGC=100). Without GOMEMLIMIT, or with GOMEMLIMIT above the container's limit, nothing keeps that goal under
//! the limit: a heap of 600 MiB live in a 1 GiB container is allowed to grow to 1.2 GiB before the collector
//! runs, and the kernel kills the process first. No RSS trend shows it beforehand: memory is flat until the
//! burst. The runtime reports the goal (`go.memory.gc.goal`), so the finding is read off it directly, per
//! instance: the goal at or above `min_ratio` times the limit for `confirm` fresh readings in a row.
//!
//! The limit is the container's (the cgroup's, from `memspan.limit` or the Kubernetes limit metric), else the
//! runtime's own (`go.memory.limit`, GOMEMLIMIT) when that is set and there is no container limit. An instance
//! whose goal has no limit to compare with is not judged.

pub mod config;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::Arc;

use memdrift_anomaly::{Anomaly, AnomalyKind, AnomalyState, Episode, Evidence, Identity};

pub use config::{GcGoalSection, GcGoalSettings};

use super::alarm::{Alarm, Look, Rules};
use super::grid::LimitSource;
use super::{checkpoint, CheckpointError, Detector, Findings, SectionError, Settings};
use crate::engine::{ClosedWindow, EngineConfig, Scope};
use crate::signal::Signal;

impl Settings for GcGoalSettings {
    const NAME: &'static str = "gc_goal";
    type Section = GcGoalSection;

    fn check(s: &GcGoalSection, _engine: &EngineConfig) -> Result<Self, SectionError> {
        Ok(GcGoalSettings::from_section(s)?)
    }

    fn build(&self, engine: &EngineConfig) -> Box<dyn Detector> {
        Box::new(GcGoal {
            settings: self.clone(),
            idle_timeout_ns: engine.idle_timeout_ns,
            instances: HashMap::new(),
            overflow: 0,
        })
    }
}

/// The latest readings of one instance, each with the window end it came in.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
struct Readings {
    goal: Option<(f64, u64)>,
    container_limit: Option<(f64, u64)>,
    go_limit: Option<(f64, u64)>,
    heap: Option<(f64, u64)>,
    alarm: Alarm,
    last_seen: u64,
}

/// What one look compares: the goal, the limit and where it comes from.
struct Comparison {
    goal: f64,
    limit: f64,
    source: &'static str,
}

impl Readings {
    /// The goal against the limit in force, when both are known.
    fn comparison(&self) -> Option<Comparison> {
        let (goal, _) = self.goal?;
        let (limit, source) = match (self.container_limit, self.go_limit) {
            (Some((l, _)), _) => (l, LimitSource::Container.name()),
            (None, Some((l, _))) => (l, LimitSource::GoMemoryLimit.name()),
            (None, None) => return None,
        };
        Some(Comparison {
            goal,
            limit,
            source,
        })
    }
}

type InstanceKey = (Arc<str>, Arc<str>);

pub struct GcGoal {
    settings: GcGoalSettings,
    idle_timeout_ns: u64,
    instances: HashMap<InstanceKey, Readings>,
    /// Instances refused at `max_instances`.
    overflow: u64,
}

/// The instance series `read` takes, in the order of its slots: the goal (the one that makes an instance
/// watched), the container limit, GOMEMLIMIT, the live heap.
const READS: [Signal; 4] = [
    Signal::GcGoal,
    Signal::Limit,
    Signal::GoMemoryLimit,
    Signal::HeapAllocated,
];

impl GcGoal {
    fn rules(&self) -> Rules {
        Rules {
            confirm: self.settings.confirm,
            resolve_after: self.settings.resolve_after,
            update_every: self.settings.resolve_after,
            hold_keeps_streak: false,
        }
    }

    /// Takes this window's newest readings; returns the instances with a fresh goal.
    fn read(&mut self, window: &ClosedWindow) -> Vec<InstanceKey> {
        let end = window.end_unix_nano;
        let mut fresh = Vec::new();
        for s in &window.summaries {
            let Scope::Instance(instance) = &s.key.group.scope else {
                continue;
            };
            let Some(slot) = READS.iter().position(|x| *x == s.key.signal) else {
                continue;
            };
            let Some(pane) = s.newest_pane else {
                continue;
            };
            let key = (s.key.group.service.clone(), instance.clone());
            if !self.instances.contains_key(&key) {
                // Only an instance that reports a goal is watched.
                if slot != 0 || self.instances.len() >= self.settings.max_instances {
                    self.overflow += u64::from(slot == 0);
                    continue;
                }
                self.instances.insert(key.clone(), Readings::default());
            }
            let Some(r) = self.instances.get_mut(&key) else {
                continue;
            };
            r.last_seen = end;
            let reading = Some((pane.last, end));
            match slot {
                0 => {
                    r.goal = reading;
                    fresh.push(key);
                }
                1 => r.container_limit = reading,
                2 => r.go_limit = reading,
                _ => r.heap = reading,
            }
        }
        fresh
    }
}

impl Detector for GcGoal {
    fn name(&self) -> &'static str {
        "gc_goal"
    }

    fn live_keys(&self) -> usize {
        self.instances.len()
    }

    fn instance_signals(&self) -> Vec<Signal> {
        READS.to_vec()
    }

    fn save(&self, out: &mut dyn std::io::Write) -> Result<(), CheckpointError> {
        let mut state: Vec<(&InstanceKey, &Readings)> = self.instances.iter().collect();
        state.sort_by(|a, b| a.0.cmp(b.0));
        checkpoint::encode(self.name(), &(state, self.overflow), out)
    }

    fn restore(&mut self, state: &[u8]) -> Result<(), CheckpointError> {
        let (instances, overflow): (Vec<(InstanceKey, Readings)>, u64) =
            checkpoint::decode(self.name(), state)?;
        self.instances = instances.into_iter().collect();
        self.overflow = overflow;
        Ok(())
    }

    fn on_window(&mut self, window: &ClosedWindow, out: &mut Findings) {
        let end = window.end_unix_nano;
        let rules = self.rules();
        let min_ratio = self.settings.min_ratio;
        let mut fresh = self.read(window);
        fresh.sort();
        fresh.dedup();
        for key in fresh {
            let Some(r) = self.instances.get_mut(&key) else {
                continue;
            };
            let c = r.comparison();
            let look = match &c {
                Some(c) if c.goal >= min_ratio * c.limit => Look::Alarm,
                Some(_) => Look::Clear,
                None => Look::Stale,
            };
            let open = || {
                let id = Identity {
                    kind: AnomalyKind::GcGoal,
                    service: &key.0,
                    instance: Some(&key.1),
                    signal: Signal::GcGoal.name(),
                    cohort: None,
                };
                Episode::new(id, end, end)
            };
            let Some((state, episode)) = r.alarm.look(look, &rules, open) else {
                continue;
            };
            // An event is due only on a look that compared (Alarm or Clear).
            if let Some(c) = c {
                out.anomalies.push(event(
                    state,
                    episode,
                    &key,
                    r,
                    &c,
                    (window.start_unix_nano, end),
                ));
            }
        }
        // Instances silent for the idle timeout are forgotten; an open finding of one resolves with it.
        let idle = end.saturating_sub(self.idle_timeout_ns);
        let mut gone: Vec<InstanceKey> = (self.instances.iter())
            .filter(|(_, r)| r.last_seen < idle)
            .map(|(k, _)| k.clone())
            .collect();
        gone.sort();
        for key in gone {
            let Some(mut r) = self.instances.remove(&key) else {
                continue;
            };
            if let (Some(episode), Some(c)) = (r.alarm.reset(), r.comparison()) {
                let window = (window.start_unix_nano, end);
                out.anomalies
                    .push(event(AnomalyState::Resolved, episode, &key, &r, &c, window));
            }
        }
    }
}

/// One event of an instance's finding, with the readings behind it.
fn event(
    state: AnomalyState,
    episode: Episode,
    key: &InstanceKey,
    r: &Readings,
    c: &Comparison,
    window: (u64, u64),
) -> Anomaly {
    Anomaly {
        state,
        episode,
        service: key.0.to_string(),
        instance: Some(key.1.to_string()),
        signal: Signal::GcGoal.name().to_string(),
        detected_unix_nano: window.1,
        window: Some(window),
        method: "gc_goal_above_limit",
        evidence: Evidence::GcGoal {
            goal_bytes: c.goal,
            limit_bytes: c.limit,
            limit_source: c.source,
            go_memory_limit_bytes: r.go_limit.map(|(l, _)| l),
            heap_bytes: r.heap.map(|(h, _)| h),
        },
        exemplars: Vec::new(),
    }
}
