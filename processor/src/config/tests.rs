use super::*;

const GOOD: &str = "receivers:\n  otlp:\n    protocols:\n      grpc:\n        endpoint: 127.0.0.1:4317\n\
processors:\n  windows:\n    size: 30s\n    step: 5s\n\
exporters:\n  jsonl:\n    path: stdout\n\
service:\n  pipelines:\n    memory:\n      receivers: [otlp]\n      processors: [windows]\n      exporters: [jsonl]\n";

#[test]
fn embedded_default_loads() {
    let p = Pipeline::default_pipeline().expect("the embedded default is valid");
    assert!(p.file.receiver_enabled("otlp"));
    assert!(p.file.exporter_enabled("prometheus"));
    assert_eq!(p.engine, EngineConfig::default());
    assert_eq!(
        p.extract.cohort_attributes,
        ExtractConfig::default().cohort_attributes
    );
}

#[test]
fn every_shipped_pipeline_loads() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../pipelines");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).expect("pipelines/ exists") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "yaml") {
            Pipeline::load(&path).unwrap_or_else(|e| panic!("{e}"));
            n += 1;
        }
    }
    assert!(n >= 1);
}

#[test]
fn settings_reach_the_engine() {
    let p = Pipeline::parse("t.yaml", GOOD).expect("valid");
    assert_eq!(p.engine.window_ns, 30_000_000_000);
    assert_eq!(p.engine.step_ns, 5_000_000_000);
}

#[test]
fn unknown_key_names_line_and_suggests_the_fix() {
    let bad = GOOD.replace("    step: 5s", "    stpe: 5s");
    let e = Pipeline::parse("t.yaml", &bad).expect_err("rejected");
    assert_eq!(e.line, Some(9), "{e}");
    assert!(e.message.contains("unknown field `stpe`"), "{e}");
    assert_eq!(e.hint.as_deref(), Some("did you mean `step`?"), "{e}");
    assert!(e.to_string().starts_with("t.yaml:9:"), "{e}");
}

#[test]
fn wrong_type_names_line() {
    let bad = GOOD.replace("size: 30s", "size: [30]");
    let e = Pipeline::parse("t.yaml", &bad).expect_err("rejected");
    assert_eq!(e.line, Some(8), "{e}");
    let bad = GOOD.replace("size: 30s", "size: thirty");
    let e = Pipeline::parse("t.yaml", &bad).expect_err("rejected");
    assert!(e.message.contains("invalid duration"), "{e}");
    assert!(e.hint.as_deref().unwrap_or("").contains("10s"), "{e}");
}

#[test]
fn semantic_errors_name_line() {
    let bad = GOOD.replace("size: 30s", "size: 33s");
    let e = Pipeline::parse("t.yaml", &bad).expect_err("rejected");
    assert_eq!(e.line, Some(8), "{e}");
    assert!(e.message.contains("whole number of steps"), "{e}");

    let bad = GOOD.replace("exporters: [jsonl]", "exporters: [jsnl]");
    let e = Pipeline::parse("t.yaml", &bad).expect_err("rejected");
    assert_eq!(e.line, Some(18), "{e}");
    assert_eq!(e.hint.as_deref(), Some("did you mean `jsonl`?"), "{e}");

    let bad = GOOD.replace("processors: [windows]", "processors: [windows, extract]");
    let e = Pipeline::parse("t.yaml", &bad).expect_err("rejected");
    assert!(e.message.contains("does not configure it"), "{e}");
}

#[test]
fn env_substitution_applies_before_parsing() {
    let text = GOOD.replace(
        "127.0.0.1:4317",
        "${env:MEMDRIFT_TEST_UNSET_VAR_X:-127.0.0.1:5555}",
    );
    let p = Pipeline::parse("t.yaml", &text).expect("valid");
    let grpc = p
        .file
        .receivers
        .otlp
        .and_then(|o| o.protocols.grpc)
        .expect("grpc");
    assert_eq!(grpc.endpoint, "127.0.0.1:5555");
}

#[test]
fn unknown_signal_in_metric_table_is_rejected() {
    let text = GOOD
        .replace(
            "processors:\n",
            "processors:\n  extract:\n    metrics:\n      go.memory.used: memspan.heap.alocated\n",
        )
        .replace("processors: [windows]", "processors: [extract, windows]");
    let e = Pipeline::parse("t.yaml", &text).expect_err("rejected");
    assert_eq!(
        e.hint.as_deref(),
        Some("did you mean `memspan.heap.allocated`?"),
        "{e}"
    );
    assert_eq!(e.line, Some(9), "{e}");
}

#[test]
fn growth_and_leak_are_enabled_by_default_and_take_their_settings() {
    let p = Pipeline::default_pipeline().expect("valid");
    let g = p.growth.expect("growth enabled");
    assert_eq!(g.horizon_ns, 900_000_000_000);
    assert_eq!(g.lookback_ns, 1_800_000_000_000);
    let l = p.leak.expect("leak enabled");
    assert_eq!(l.min_slope, 50_000.0);
    let names: Vec<_> = crate::topology::build_detectors(&Pipeline::default_pipeline().unwrap())
        .iter()
        .map(|d| d.name())
        .collect();
    assert_eq!(names, ["spread_drift", "growth", "leak"]);

    let text = GOOD
        .replace(
            "    step: 5s\n",
            "    step: 5s\n  growth:\n    horizon: 20m\n    limit_bytes: 4294967296\n  leak:\n    alpha: 0.05\n",
        )
        .replace("processors: [windows]", "processors: [windows, growth, leak]");
    let p = Pipeline::parse("t.yaml", &text).expect("valid");
    let g = p.growth.expect("growth");
    assert_eq!(g.horizon_ns, 1_200_000_000_000);
    assert_eq!(g.limit_bytes, Some(4294967296.0));
    assert_eq!(p.leak.expect("leak").alpha, 0.05);
}

#[test]
fn growth_and_leak_errors_name_the_line() {
    let text = GOOD
        .replace(
            "    step: 5s\n",
            "    step: 5s\n  growth:\n    max_headroom: 2\n",
        )
        .replace("processors: [windows]", "processors: [windows, growth]");
    let e = Pipeline::parse("t.yaml", &text).expect_err("rejected");
    assert_eq!(e.line, Some(11), "{e}");
    assert!(e.message.contains("max_headroom must be in (0, 1)"), "{e}");
    let text = GOOD
        .replace(
            "    step: 5s\n",
            "    step: 5s\n  leak:\n    signals: [memspan.rss.ned]\n",
        )
        .replace("processors: [windows]", "processors: [windows, leak]");
    let e = Pipeline::parse("t.yaml", &text).expect_err("rejected");
    assert!(
        e.message.contains("unknown signal `memspan.rss.ned`"),
        "{e}"
    );
    let text = GOOD
        .replace("    step: 5s\n", "    step: 5s\n  leak:\n    alpah: 0.01\n")
        .replace("processors: [windows]", "processors: [windows, leak]");
    let e = Pipeline::parse("t.yaml", &text).expect_err("rejected");
    assert!(e.message.contains("unknown field `alpah`"), "{e}");
}
