//! A fast subset of the evaluation harness (EVALUATION.md): seeds 0-2 of every scenario family through the
//! embedded default pipeline, and a three-hour slice of the real GPU-memory trace.
//!
//! The plain tests assert what main achieves today, as ratchets: false alarms and late values at most what was
//! measured, findings at least what was measured. Better detection may tighten them; a regression fails them.
//! The `#[ignore]`d tests are the targets, over 20 seeds (or the whole trace), named for what they demand; the
//! detection work un-ignores them as it meets them. Run them in release mode:
//! `cargo test --release -p memdrift-e2e --test eval_scorecard -- --ignored`.

use std::ops::Range;
use std::path::{Path, PathBuf};

use memdrift::config::Pipeline;
use memdrift_e2e::eval::families::{self, FAMILIES};
use memdrift_e2e::eval::real::{self, Layout, RealReport};
use memdrift_e2e::eval::score::Tally;
use memdrift_e2e::eval::scorecard::{run_family, FamilyScore};
use memdrift_e2e::eval::{Kind, GIB};

const QUICK: Range<u64> = 0..3;
const FULL: Range<u64> = 0..20;

fn run(name: &str, seeds: Range<u64>) -> FamilyScore {
    let family = families::find(name).expect("a family of that name");
    let pipeline = Pipeline::default_pipeline().expect("the default pipeline");
    // Tests run at once in one process, some on the same family: the seeds tell their directories apart.
    let dir = std::env::temp_dir().join(format!(
        "memdrift-eval-test-{name}-{}-{}-{}",
        seeds.start,
        seeds.end,
        std::process::id()
    ));
    let score = run_family(family, seeds, &pipeline, &dir, false, &mut |_| {}).expect("runs");
    let _ = std::fs::remove_dir_all(&dir);
    score
}

fn required(f: &FamilyScore, kind: Kind) -> Tally {
    f.required(&f.memdrift, kind)
}

/// The family's examples (false alarms, misses, late findings), for a failure message.
fn why(f: &FamilyScore) -> String {
    format!("{}:\n  {}", f.family, f.memdrift.examples.join("\n  "))
}

/// What main measured on seeds 0-2: false alarms and late values at most these.
fn at_most(f: &FamilyScore, false_alarms: u64, late_values: u64) {
    assert!(
        f.memdrift.false_alarms <= false_alarms,
        "{} false alarms, main had {false_alarms}: {}",
        f.memdrift.false_alarms,
        why(f)
    );
    assert!(
        f.late_values <= late_values,
        "{}: {} values late, main had {late_values}",
        f.family,
        f.late_values
    );
}

#[test]
fn calm_families_stay_within_main_false_alarms() {
    for (name, false_alarms, late) in [
        ("calm-noise", 0, 0),
        ("calm-shapes-spans", 0, 0),
        ("calm-collector", 0, 0),
        ("ab-calm", 0, 0),
    ] {
        at_most(&run(name, QUICK), false_alarms, late);
    }
}

#[test]
fn calm_metric_shapes_stay_within_main_false_alarms() {
    at_most(&run("calm-shapes", QUICK), 0, 0);
}

#[test]
fn leaks_are_forecast_15_minutes_before_the_crossing_and_found() {
    for (name, false_alarms, late, growth) in [
        ("leak-spans", 0, 0, 13),
        ("leak-metrics", 0, 0, 10),
        ("leak-collector", 0, 0, 11),
    ] {
        let f = run(name, QUICK);
        at_most(&f, false_alarms, late);
        let g = required(&f, Kind::Growth);
        assert_eq!(g.expected, growth, "{}", why(&f));
        assert_eq!(g.timely, g.expected, "{g:?}: {}", why(&f));
        // Every leak of at least 1 MB/s is named within 15 minutes; spans tell its class.
        let l = required(&f, Kind::Leak);
        assert!(
            l.expected > 0 && l.missed == 0 && l.timely == l.expected,
            "{l:?}: {}",
            why(&f)
        );
        assert_eq!(l.wrong_class, 0, "{}", why(&f));
        // Warned earlier than predict_linear, which sees the same points.
        let p = f.required(&f.predict_linear, Kind::Growth);
        assert!(g.timely > p.timely, "memdrift {g:?}, predict_linear {p:?}");
    }
}

#[test]
fn dense_spread_changes_are_found() {
    for (name, false_alarms, late, timely) in [("ab-dense", 0, 0, 6), ("ab-collector", 0, 10758, 7)]
    {
        let f = run(name, QUICK);
        at_most(&f, false_alarms, late);
        let s = required(&f, Kind::SpreadDrift);
        assert!(s.expected > 0 && s.missed == 0, "{s:?}: {}", why(&f));
        assert!(s.timely >= timely, "{s:?}: {}", why(&f));
    }
}

#[test]
fn sparse_services_stay_within_main_false_alarms() {
    let f = run("ab-sparse", 0..2);
    at_most(&f, 0, 0);
    // Sparse cohorts are compared (looks pool windows, the baseline's level from its last 10 looks): every
    // change is found, one of these four in time (32 of 43 over 20 seeds).
    let s = required(&f, Kind::SpreadDrift);
    assert!(s.expected > 0 && s.missed == 0, "{s:?}: {}", why(&f));
    assert!(s.timely >= 1, "{s:?}: {}", why(&f));
}

// Over 20 seeds: the targets met, and those not yet met (ignored).

fn full(names: &[&str]) -> Vec<FamilyScore> {
    names.iter().map(|n| run(n, FULL)).collect()
}

/// Measured: 0 in 5,590 calm instance-hours.
#[test]
fn calm_families_raise_no_false_alarm_over_20_seeds() {
    let calm: Vec<&str> = FAMILIES.iter().filter(|f| f.calm).map(|f| f.name).collect();
    for f in full(&calm) {
        assert_eq!(f.memdrift.false_alarms, 0, "{}", why(&f));
    }
}

#[test]
#[ignore = "target: one leak finding on a 0.16 MB/s leak just after it crossed its limit (leak-collector)"]
fn trouble_families_raise_no_false_alarm_over_20_seeds() {
    let trouble: Vec<&str> = FAMILIES
        .iter()
        .filter(|f| !f.calm)
        .map(|f| f.name)
        .collect();
    for f in full(&trouble) {
        assert_eq!(f.memdrift.false_alarms, 0, "{}", why(&f));
    }
}

#[test]
#[ignore = "target: span exports retried 5-30 s late lose 1.4% of values (ab-collector); 10 values of pods first heard from mid-run miss a cohort window (calm-collector)"]
fn collector_order_drops_no_values_as_late_over_20_seeds() {
    for f in full(&["calm-collector", "leak-collector", "ab-collector"]) {
        assert_eq!(f.late_values, 0, "{}", f.family);
    }
}

#[test]
#[ignore = "target: two of 93 leaks are named 1.6 and 2.6 minutes after the 15 (a sawtooth sampled once a minute hides their troughs' rise)"]
fn leaks_of_1_mb_per_s_are_found_within_15_minutes_with_their_class_over_20_seeds() {
    for f in full(&["leak-spans", "leak-metrics", "leak-collector"]) {
        let l = required(&f, Kind::Leak);
        assert_eq!(
            (l.timely, l.wrong_class),
            (l.expected, 0),
            "{l:?}: {}",
            why(&f)
        );
    }
}

#[test]
#[ignore = "target: one crossing on minute metrics (38 minutes after onset) is warned 13.7 minutes ahead"]
fn every_crossing_is_warned_15_minutes_ahead_over_20_seeds() {
    for f in full(&["leak-spans", "leak-metrics", "leak-collector"]) {
        let g = required(&f, Kind::Growth);
        assert_eq!(g.timely, g.expected, "{g:?}: {}", why(&f));
    }
}

/// Measured: 85 of 85 in time, median 1.5-1.6 minutes.
#[test]
fn dense_spread_changes_are_found_within_3_and_10_minutes_over_20_seeds() {
    for f in full(&["ab-dense", "ab-collector"]) {
        let s = required(&f, Kind::SpreadDrift);
        assert_eq!(s.timely, s.expected, "{s:?}: {}", why(&f));
    }
}

#[test]
#[ignore = "target: 11 of 43 sparse spread changes are found after 10 minutes (32 in time, median 7.3 minutes)"]
fn sparse_spread_changes_are_found_within_10_minutes_over_20_seeds() {
    let f = run("ab-sparse", FULL);
    let s = required(&f, Kind::SpreadDrift);
    assert_eq!(s.timely, s.expected, "{s:?}: {}", why(&f));
}

// The real trace (../shared/data/genai-gpu-memory), skipped where it is absent.

fn trace() -> Option<PathBuf> {
    let path = real::default_input();
    if path.exists() {
        Some(path)
    } else {
        eprintln!(
            "skipping: {} is absent (the GPU-memory trace lives in ../shared/data/genai-gpu-memory beside the \
             repository)",
            path.display()
        );
        None
    }
}

fn replay_trace(rows: &[real::Row], layout: Layout, limit: Option<f64>, tag: &str) -> RealReport {
    let pipeline = Pipeline::default_pipeline().expect("the default pipeline");
    let dir = std::env::temp_dir().join(format!("memdrift-eval-real-{tag}-{}", std::process::id()));
    let report = real::replay_rows(rows, layout, limit, &pipeline, &dir).expect("replays");
    let _ = std::fs::remove_dir_all(&dir);
    report
}

fn rows(path: &Path) -> Vec<real::Row> {
    let (rows, bad) = real::parse_csv(&real::read_csv(path).expect("the trace reads"));
    assert_eq!((rows.len(), bad), (161_413, 0));
    rows
}

#[test]
fn three_hours_of_the_real_trace_replay_in_collector_order() {
    let Some(path) = trace() else {
        return;
    };
    let rows = rows(&path);
    let first = rows.iter().map(|r| r.t_s).fold(f64::INFINITY, f64::min);
    let slice: Vec<real::Row> = rows
        .into_iter()
        .filter(|r| r.t_s < first + 3.0 * 3600.0)
        .collect();
    let collector = replay_trace(&slice, Layout::Collector { group: 8 }, None, "collector");
    assert_eq!(collector.converted.points, slice.len() as u64);
    assert_eq!(collector.values, slice.len() as u64);
    assert_eq!(collector.broken_lines, 0);
    // Each pod's windows close on its own progress: none of its points is late, though the lines interleave
    // two scrapes of a group of pods at a time.
    assert_eq!(collector.late_values, 0, "{}", collector.markdown());
    let in_order = replay_trace(&slice, Layout::InOrder, Some(48.0 * GIB), "in-order");
    assert_eq!(in_order.late_values, 0);
    assert_eq!(in_order.values, 2 * slice.len() as u64);
}

#[test]
fn the_real_trace_in_collector_order_loses_no_value_and_raises_at_most_1_finding_per_100_pod_hours()
{
    let Some(path) = trace() else {
        return;
    };
    let r = replay_trace(&rows(&path), Layout::Collector { group: 8 }, None, "full");
    assert_eq!(r.late_values, 0, "{}", r.markdown());
    // A pod first heard from after the others have moved on misses its first cohort window, nothing else.
    assert!(r.late_for_cohort_values <= 2, "{}", r.markdown());
    // Measured: no finding in 2,556 pod-hours (9 before the step checks of the fast leak test: model loads).
    assert!(r.per_pod_hour() <= 0.01, "{}", r.markdown());
}
