//! The GC-goal finding on synthetic windows: when it opens, with what evidence, when it resolves, and the bounds.

use std::sync::Arc;

use super::*;
use crate::engine::{GroupKey, PaneSummary, SeriesKey, WindowSummary};

const S: u64 = 1_000_000_000;
const MIB: f64 = 1_048_576.0;
const T0: u64 = 1_800_000_000 * S;

fn summary(instance: &str, signal: Signal, last: f64) -> WindowSummary {
    WindowSummary {
        key: SeriesKey {
            group: GroupKey {
                service: Arc::from("llm-go"),
                scope: Scope::Instance(Arc::from(instance)),
            },
            signal,
        },
        count: 1,
        mean: last,
        sd: 0.0,
        median: last,
        mad: 0.0,
        p95: last,
        min: last,
        max: last,
        values: vec![last],
        instance_tags: vec![0],
        exemplars: Vec::new(),
        newest_pane: Some(PaneSummary {
            count: 1,
            min: last,
            max: last,
            last,
        }),
    }
}

/// One window per 10 s step: (instance, goal, container limit, GOMEMLIMIT) readings.
fn window(step: u64, readings: &[(&str, f64, Option<f64>, Option<f64>)]) -> ClosedWindow {
    let mut summaries = Vec::new();
    for (instance, goal, limit, go_limit) in readings {
        summaries.push(summary(instance, Signal::GcGoal, *goal));
        summaries.push(summary(instance, Signal::HeapAllocated, goal / 2.0));
        if let Some(l) = limit {
            summaries.push(summary(instance, Signal::Limit, *l));
        }
        if let Some(l) = go_limit {
            summaries.push(summary(instance, Signal::GoMemoryLimit, *l));
        }
    }
    let end = T0 + step * 10 * S;
    ClosedWindow {
        start_unix_nano: end - 60 * S,
        end_unix_nano: end,
        summaries,
    }
}

fn detector() -> Box<dyn Detector> {
    GcGoalSettings::default().build(&EngineConfig::default())
}

fn run(d: &mut dyn Detector, windows: &[ClosedWindow]) -> Vec<Anomaly> {
    let mut out = Findings::default();
    for w in windows {
        d.on_window(w, &mut out);
    }
    out.anomalies
}

#[test]
fn a_goal_above_the_container_limit_opens_after_three_readings_and_resolves() {
    let mut d = detector();
    // GOMEMLIMIT unset, 1 GiB container: live heap 600 MiB, so the next GC is due at 1.2 GiB.
    let above: Vec<ClosedWindow> = (1..=5)
        .map(|k| {
            window(
                k,
                &[
                    ("pod-1", 1200.0 * MIB, Some(1024.0 * MIB), None),
                    ("pod-2", 700.0 * MIB, Some(1024.0 * MIB), None),
                ],
            )
        })
        .collect();
    let events = run(d.as_mut(), &above);
    assert_eq!(events.len(), 1, "{events:?}");
    let e = &events[0];
    assert_eq!(
        (e.state, e.kind()),
        (AnomalyState::Open, AnomalyKind::GcGoal)
    );
    assert_eq!(e.instance.as_deref(), Some("pod-1"));
    assert_eq!(
        e.detected_unix_nano,
        T0 + 30 * S,
        "the third reading above opens it"
    );
    match &e.evidence {
        Evidence::GcGoal {
            goal_bytes,
            limit_bytes,
            limit_source,
            go_memory_limit_bytes,
            heap_bytes,
        } => {
            assert_eq!((*goal_bytes, *limit_bytes), (1200.0 * MIB, 1024.0 * MIB));
            assert_eq!(*limit_source, "container");
            assert_eq!(*go_memory_limit_bytes, None);
            assert_eq!(*heap_bytes, Some(600.0 * MIB));
        }
        other => panic!("{other:?}"),
    }
    // GOMEMLIMIT set under the container limit: the goal comes down; six readings below resolve it.
    let below: Vec<ClosedWindow> = (6..=11)
        .map(|k| {
            window(
                k,
                &[("pod-1", 900.0 * MIB, Some(1024.0 * MIB), Some(900.0 * MIB))],
            )
        })
        .collect();
    let events = run(d.as_mut(), &below);
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].state, AnomalyState::Resolved);
    assert_eq!(events[0].episode, e.episode);
}

#[test]
fn without_a_container_limit_gomemlimit_is_the_limit_and_without_either_nothing_is_judged() {
    let mut d = detector();
    let windows: Vec<ClosedWindow> = (1..=4)
        .map(|k| {
            window(
                k,
                &[
                    ("a", 600.0 * MIB, None, Some(512.0 * MIB)),
                    ("b", 9e12, None, None),
                ],
            )
        })
        .collect();
    let events = run(d.as_mut(), &windows);
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].instance.as_deref(), Some("a"));
    assert!(matches!(
        events[0].evidence,
        Evidence::GcGoal {
            limit_source: "go.memory.limit",
            ..
        }
    ));
}

#[test]
fn a_goal_that_touches_the_limit_once_or_twice_is_not_a_finding() {
    let mut d = detector();
    let goals = [1100.0, 1100.0, 900.0, 1100.0, 900.0, 1100.0, 1100.0, 800.0];
    let windows: Vec<ClosedWindow> = (goals.iter().enumerate())
        .map(|(k, g)| {
            window(
                k as u64 + 1,
                &[("pod-1", g * MIB, Some(1024.0 * MIB), None)],
            )
        })
        .collect();
    assert!(run(d.as_mut(), &windows).is_empty());
}

#[test]
fn instances_are_bounded_and_a_silent_one_resolves_and_is_forgotten() {
    let settings = GcGoalSettings {
        max_instances: 10,
        ..GcGoalSettings::default()
    };
    let mut d = settings.build(&EngineConfig::default());
    let many: Vec<(String, f64, Option<f64>, Option<f64>)> = (0..50)
        .map(|i| (format!("pod-{i}"), 2e9, Some(1e9), None))
        .collect();
    let refs: Vec<(&str, f64, Option<f64>, Option<f64>)> = many
        .iter()
        .map(|(i, g, l, gl)| (i.as_str(), *g, *l, *gl))
        .collect();
    let windows: Vec<ClosedWindow> = (1..=3).map(|k| window(k, &refs)).collect();
    let opened = run(d.as_mut(), &windows);
    assert_eq!(d.live_keys(), 10);
    assert_eq!(opened.len(), 10);
    // Silence past the idle timeout (10 minutes): each open finding resolves, and nothing is kept.
    let resolved = run(d.as_mut(), &[window(3 + 61, &[])]);
    assert_eq!(resolved.len(), 10);
    assert!(resolved.iter().all(|a| a.state == AnomalyState::Resolved));
    assert_eq!(d.live_keys(), 0);
    // The state survives a checkpoint: saved, restored into a fresh detector, it carries on the same.
    let mut a = detector();
    run(a.as_mut(), &windows[..2]);
    let mut state = Vec::new();
    a.save(&mut state).expect("saves");
    let mut b = detector();
    b.restore(&state).expect("restores");
    assert_eq!(
        run(a.as_mut(), &windows[2..]),
        run(b.as_mut(), &windows[2..])
    );
}
