//! `memdrift replay` on A/B scenarios written by the project's generator (tests/src/scenario.rs) in the
//! Collector's `file` format, with the embedded default pipeline: exactly the expected spread-drift events.

use memdrift::config::Pipeline;
use memdrift::replay::{replay, ReplayOptions};
use memdrift_e2e::scenario::{Cohort, Scenario, Service, SpreadChange};
use memdrift_exporter::anomaly::parse_rfc3339;
use memdrift_exporter::{AnomalyRecord as Anomaly, AnomalyState};

const T0: u64 = 1_800_000_000_000_000_000;

fn cohort(version: &'static str, change: Option<SpreadChange>) -> Cohort {
    Cohort {
        version,
        instances: 2,
        per_minute: 120,
        mean_bytes: 8e6,
        sd_bytes: 1e6,
        change,
    }
}

fn replay_scenario(name: &str, scenario: &Scenario) -> Vec<Anomaly> {
    let dir = std::env::temp_dir().join(format!("memdrift-scenario-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let input = dir.join("traces.jsonl");
    let spans = scenario.write(&input).expect("scenario written");
    let opts = ReplayOptions {
        inputs: vec![input],
        output: dir.join("anomalies.jsonl"),
        summaries: None,
        progress: false,
    };
    let summary = replay(&Pipeline::default_pipeline().expect("default"), &opts).expect("replay");
    assert_eq!(summary.extract.spans, spans);
    assert_eq!(summary.broken_lines, 0);
    let text = std::fs::read_to_string(dir.join("anomalies.jsonl")).expect("output");
    let _ = std::fs::remove_dir_all(&dir);
    text.lines()
        .map(|l| serde_json::from_str(l).expect("an anomaly event"))
        .collect()
}

fn minute(a: &Anomaly) -> f64 {
    (parse_rfc3339(&a.detected_at).expect("time") - T0) as f64 / 60e9
}

#[test]
fn a_canary_that_turns_erratic_opens_updates_and_resolves() {
    // checkout-llm 1.5.0's allocations get 2.5x more spread from minute 10 to 30; embed-llm runs the same two
    // versions unchanged. Expected: on checkout-llm / memspan.request.allocated only, one open within 3 minutes
    // of the onset, updates while it lasts, one resolved within 6 minutes of its end; nothing else at all.
    let scenario = Scenario {
        services: vec![
            Service {
                name: "checkout-llm",
                cohorts: vec![
                    cohort("1.4.2", None),
                    cohort(
                        "1.5.0",
                        Some(SpreadChange {
                            from_minute: 10.0,
                            until_minute: 30.0,
                            ratio: 2.5,
                        }),
                    ),
                ],
            },
            Service {
                name: "embed-llm",
                cohorts: vec![cohort("2.0.1", None), cohort("2.1.0", None)],
            },
        ],
        minutes: 45,
        seed: 42,
        start_unix_nano: T0,
    };
    let events = replay_scenario("erratic", &scenario);
    assert!(
        events
            .iter()
            .all(|a| a.service == "checkout-llm" && a.signal == "memspan.request.allocated"),
        "{events:#?}"
    );
    let ab: Vec<&Anomaly> = events
        .iter()
        .filter(|a| a.method.as_deref() == Some("brown_forsythe+msprt"))
        .collect();
    let states: Vec<AnomalyState> = ab.iter().map(|a| a.state).collect();
    assert_eq!(states.first(), Some(&AnomalyState::Open), "{states:?}");
    assert_eq!(states.last(), Some(&AnomalyState::Resolved), "{states:?}");
    assert_eq!(
        states
            .iter()
            .filter(|s| **s != AnomalyState::Update)
            .count(),
        2,
        "{states:?}"
    );
    assert!(states.len() >= 10, "updates while it lasts: {states:?}");
    let (open, resolved) = (minute(ab[0]), minute(ab[ab.len() - 1]));
    assert!((10.0..=13.0).contains(&open), "opened at minute {open:.1}");
    assert!(
        (30.0..=36.0).contains(&resolved),
        "resolved at minute {resolved:.1}"
    );
    let cohorts = ab[0].cohorts.as_ref().expect("cohorts");
    assert_eq!(
        (cohorts.baseline.as_str(), cohorts.canary.as_str()),
        ("1.4.2", "1.5.0")
    );
    let ratio = ab[0].sd_ratio.expect("ratio");
    assert!(ratio.value > 1.8 && ratio.low > 1.0, "{ratio:?}");
    assert!(ab[0].p_value.is_some_and(|p| p <= 0.01));
    assert_eq!(ab[0].exemplar_trace_ids.len(), 5);
    // Every event of the within-cohort watch is about the same drifting canary.
    assert!(events
        .iter()
        .filter(|a| a.method.as_deref() == Some("cusum"))
        .all(|a| a.cohorts.as_ref().is_some_and(|c| c.canary == "1.5.0")));
}

#[test]
fn equal_spreads_and_a_mean_shift_raise_nothing() {
    // Two services for an hour: one with equal cohorts, one whose canary allocates 3x more per request with
    // the same spread. Expected: no event.
    let shifted = Cohort {
        mean_bytes: 24e6,
        ..cohort("1.5.0", None)
    };
    let scenario = Scenario {
        services: vec![
            Service {
                name: "equal",
                cohorts: vec![cohort("1.4.2", None), cohort("1.5.0", None)],
            },
            Service {
                name: "shifted",
                cohorts: vec![cohort("1.4.2", None), shifted],
            },
        ],
        minutes: 60,
        seed: 7,
        start_unix_nano: T0,
    };
    let events = replay_scenario("quiet", &scenario);
    assert!(events.is_empty(), "{events:#?}");
}
