//! `memdrift replay` on a file in the Collector's `file` exporter format: exact sample and rejection counts,
//! cohorts resolved in the documented order, deterministic output. See fixtures/README.md for the file.

use std::collections::HashMap;

use memdrift::config::Pipeline;
use memdrift::extract::{DropReason, RefuseReason};
use memdrift::replay::{replay, ReplayOptions};
use memdrift::signal::Signal;
use memdrift_e2e::repo_root;

fn run(dir: &std::path::Path) -> memdrift::replay::ReplaySummary {
    let opts = ReplayOptions {
        inputs: vec![repo_root().join("tests/fixtures/collector-file.jsonl")],
        output: dir.join("anomalies.jsonl"),
        summaries: Some(dir.join("summaries.jsonl")),
        progress: false,
    };
    replay(
        &Pipeline::default_pipeline().expect("default pipeline"),
        &opts,
    )
    .expect("replay runs")
}

fn tempdir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("memdrift-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

#[test]
fn exact_counts_for_every_kind_of_input() {
    let dir = tempdir("fixture");
    let s = run(&dir);
    assert_eq!((s.lines, s.broken_lines), (5, 2), "{s}");
    assert!(
        s.broken_examples[0].contains("collector-file.jsonl:2: unexpected EOF"),
        "{:?}",
        s.broken_examples
    );
    assert!(
        s.broken_examples[1].contains("collector-file.jsonl:4:"),
        "{:?}",
        s.broken_examples
    );

    let e = &s.extract;
    assert_eq!((e.spans, e.spans_accepted), (7, 4), "{s}");
    let refused: HashMap<RefuseReason, u64> = [
        (RefuseReason::InvalidValues, 1),
        (RefuseReason::NoMemoryAttributes, 1),
        (RefuseReason::NoTimestamp, 1),
    ]
    .into();
    assert_eq!(e.refused, refused);
    let dropped: HashMap<DropReason, u64> = [
        (DropReason::NotFinite, 2),
        (DropReason::Negative, 1),
        (DropReason::String, 2),
        (DropReason::Fractional, 1),
        (DropReason::TooLarge, 1),
        (DropReason::WrongType, 1),
    ]
    .into();
    assert_eq!(e.dropped_values, dropped);
    assert_eq!((e.metric_points, e.metric_points_accepted), (4, 3));
    assert_eq!(s.samples, 7);
    let by_signal: HashMap<Signal, u64> = [
        (Signal::RssStart, 1),
        (Signal::RssEnd, 3),
        (Signal::RssDelta, 1),
        (Signal::HeapAllocated, 1),
        (Signal::RequestAllocated, 1),
        (Signal::Limit, 2),
        (Signal::ProcessMemoryUsage, 2),
    ]
    .into();
    assert_eq!(e.samples_by_signal(), by_signal);
    assert_eq!((s.late_values, s.overflow_values), (0, 0));
    // No detector is enabled by the default pipeline yet: no anomaly, an empty (but written) output.
    assert_eq!(s.anomalies.values().sum::<u64>(), 0);
    assert_eq!(
        std::fs::read_to_string(dir.join("anomalies.jsonl")).expect("output"),
        ""
    );

    // The closing summary names every count.
    let text = s.to_string();
    for needle in [
        "5 lines (2 broken)",
        "7 read, 4 gave samples",
        "not_finite=2",
        "string=2",
        "spread_drift=0",
    ] {
        assert!(text.contains(needle), "{needle:?} missing from:\n{text}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn cohorts_and_instances_follow_the_documented_order() {
    let dir = tempdir("cohorts");
    run(&dir);
    let text = std::fs::read_to_string(dir.join("summaries.jsonl")).expect("summaries");
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    let find = |service: &str, key: &str, value: &str, signal: &str| {
        lines
            .iter()
            .filter(|l| l["service"] == service && l[key] == value && l["signal"] == signal)
            .map(|l| {
                (
                    l["count"].as_u64().unwrap_or(0),
                    l["mean"].as_f64().unwrap_or(f64::NAN),
                )
            })
            .max_by_key(|(c, _)| *c)
    };
    // Span-level memspan.cohort beats the resource's service.version.
    assert_eq!(
        find("checkout-llm", "cohort", "canary", "memspan.rss.end"),
        Some((1, 520_000_000.0))
    );
    assert_eq!(
        find("checkout-llm", "cohort", "1.4.2", "memspan.rss.end"),
        Some((1, 510_000_000.0))
    );
    assert_eq!(
        find("checkout-llm", "cohort", "1.4.2", "memspan.rss.delta"),
        Some((1, 10_000_000.0))
    );
    // Metric points take the resource's version as cohort and its instance id.
    assert_eq!(
        find("checkout-llm", "instance", "pod-b", "process.memory.usage"),
        Some((2, 705_000_000.0))
    );
    assert_eq!(
        find("checkout-llm", "cohort", "1.5.0", "memspan.limit"),
        Some((1, 4_294_967_296.0))
    );
    // feature_flag.result.variant on the resource; host.name stands in for a missing service.instance.id.
    assert_eq!(
        find("embed-llm", "cohort", "treatment", "memspan.rss.end"),
        Some((1, 300_000_000.0))
    );
    assert_eq!(
        find("embed-llm", "instance", "node-7", "memspan.rss.end"),
        Some((1, 300_000_000.0))
    );
}

#[test]
fn replay_is_deterministic() {
    let (a, b) = (tempdir("det-a"), tempdir("det-b"));
    run(&a);
    run(&b);
    for f in ["anomalies.jsonl", "summaries.jsonl"] {
        let x = std::fs::read(a.join(f)).expect("a");
        let y = std::fs::read(b.join(f)).expect("b");
        assert_eq!(x, y, "{f} differs between two replays");
    }
    let _ = std::fs::remove_dir_all(&a);
    let _ = std::fs::remove_dir_all(&b);
}
