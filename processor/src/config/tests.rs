use super::*;
use crate::detect::growth::GrowthSettings;
use crate::detect::leak::LeakSettings;

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
fn source_idle_defaults_within_idle_timeout_and_is_checked() {
    let short = GOOD.replace("    step: 5s", "    step: 5s\n    idle_timeout: 2m");
    let p = Pipeline::parse("t.yaml", &short).expect("valid");
    assert_eq!(p.engine.source_idle_ns, 120_000_000_000);
    let set = GOOD.replace("    step: 5s", "    step: 5s\n    source_idle: 90s");
    let p = Pipeline::parse("t.yaml", &set).expect("valid");
    assert_eq!(p.engine.source_idle_ns, 90_000_000_000);
    let bad = GOOD.replace("    step: 5s", "    step: 5s\n    source_idle: 1s");
    let e = Pipeline::parse("t.yaml", &bad).expect_err("rejected");
    assert_eq!(e.line, Some(10), "{e}");
    assert!(
        e.message
            .contains("source_idle (1s) must be between a step (5s)"),
        "{e}"
    );
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
    let g = p.settings::<GrowthSettings>().expect("growth enabled");
    assert_eq!(g.horizon_ns, 900_000_000_000);
    assert_eq!(g.lookback_ns, 1_800_000_000_000);
    let l = p.settings::<LeakSettings>().expect("leak enabled");
    assert_eq!(l.min_slope, 50_000.0);
    let names: Vec<_> = Pipeline::default_pipeline()
        .unwrap()
        .build_detectors()
        .iter()
        .map(|d| d.name())
        .collect();
    assert_eq!(names, ["spread_drift", "growth", "leak", "gc_goal"]);

    let text = GOOD
        .replace(
            "    step: 5s\n",
            "    step: 5s\n  growth:\n    horizon: 20m\n    limit_bytes: 4294967296\n  leak:\n    alpha: 0.05\n",
        )
        .replace("processors: [windows]", "processors: [windows, growth, leak]");
    let p = Pipeline::parse("t.yaml", &text).expect("valid");
    let g = p.settings::<GrowthSettings>().expect("growth");
    assert_eq!(g.horizon_ns, 1_200_000_000_000);
    assert_eq!(g.limit_bytes, Some(4294967296.0));
    assert_eq!(p.settings::<LeakSettings>().expect("leak").alpha, 0.05);
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

fn env_of(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let vars: Vec<(String, String)> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |name| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
}

fn default_with(vars: &[(&str, &str)]) -> Result<Pipeline, ConfigError> {
    Pipeline::parse_with_env("default.yaml", DEFAULT_PIPELINE, &env_of(vars))
}

#[test]
fn default_pipeline_exports_otlp_only_when_the_endpoint_variable_is_set() {
    use memdrift_exporter::otlp::{Compression, Protocol};
    let p = default_with(&[]).expect("valid");
    assert!(p.file.exporter_enabled("otlp"));
    assert!(p.otlp.is_none(), "no endpoint, no exporter");

    let p = default_with(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
        (
            "OTEL_EXPORTER_OTLP_HEADERS",
            "Authorization=Bearer%20t0k,x-tenant=a",
        ),
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
        (
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "https://traces.example/v9/spans",
        ),
        ("OTEL_EXPORTER_OTLP_METRICS_HEADERS", "x-tenant=b"),
        ("OTEL_METRIC_EXPORT_INTERVAL", "15000"),
        ("OTEL_SERVICE_NAME", "memdrift-eu"),
    ])
    .expect("valid");
    let o = p.otlp.expect("enabled");
    let logs = o.logs.expect("logs");
    assert_eq!(logs.protocol, Protocol::HttpProtobuf);
    assert_eq!(logs.url, "http://collector:4318/v1/logs");
    assert_eq!(logs.compression, Compression::Gzip);
    assert_eq!(logs.timeout, std::time::Duration::from_millis(2500));
    assert_eq!(
        logs.headers.0,
        vec![
            ("authorization".to_string(), "Bearer t0k".to_string()),
            ("x-tenant".to_string(), "a".to_string())
        ]
    );
    assert_eq!(
        o.traces.expect("traces").url,
        "https://traces.example/v9/spans"
    );
    let metrics = o.metrics.expect("metrics");
    assert_eq!(metrics.url, "http://collector:4318/v1/metrics");
    assert!(metrics.headers.0.contains(&("x-tenant".into(), "b".into())));
    assert_eq!(o.metrics_interval, std::time::Duration::from_secs(15));
    assert!(o
        .resource
        .contains(&("service.name".into(), "memdrift-eu".into())));
    assert_eq!(o.queue.directory, None);

    let p = default_with(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4317"),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ("OTEL_EXPORTER_OTLP_INSECURE", "true"),
        ("OTEL_EXPORTER_OTLP_COMPRESSION", "none"),
        ("MEMDRIFT_OTLP_QUEUE_DIR", "/var/lib/memdrift/queue"),
    ])
    .expect("valid");
    let o = p.otlp.expect("enabled");
    let traces = o.traces.expect("traces");
    assert_eq!(traces.protocol, Protocol::Grpc);
    assert_eq!(traces.url, "http://collector:4317");
    assert_eq!(traces.compression, Compression::None);
    assert_eq!(
        o.queue.directory.as_deref(),
        Some(Path::new("/var/lib/memdrift/queue"))
    );
}

#[test]
fn bad_otlp_variables_name_the_variable_and_the_section() {
    let e = default_with(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "10s"),
    ])
    .expect_err("rejected");
    assert!(
        e.message.contains("OTEL_EXPORTER_OTLP_TIMEOUT=\"10s\""),
        "{e}"
    );
    // The exporter's `otlp:`, not the receiver's, which comes first.
    let exporter_line = DEFAULT_PIPELINE
        .lines()
        .enumerate()
        .filter(|(_, l)| *l == "  otlp:")
        .map(|(i, _)| i + 1)
        .nth(1);
    assert!(exporter_line.is_some());
    assert_eq!(e.line, exporter_line, "{e}");
    assert!(e.hint.is_some(), "{e}");

    let e =
        default_with(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "ftp://collector")]).expect_err("rejected");
    assert!(e.message.contains("scheme"), "{e}");
}

const WITH_OTLP: &str = r#"receivers:
  otlp:
    protocols:
      grpc:
        endpoint: 127.0.0.1:4317
exporters:
  otlp:
    endpoint: collector:4317
    protocol: grpc
    headers:
      X-Api-Key: k1
    compression: none
    timeout: 3s
    tls:
      ca_file: /etc/ca.pem
    retry:
      initial_interval: 100ms
      max_interval: 1s
      max_elapsed_time: 20s
    queue:
      size: 10
      directory: /tmp/q
      max_disk_bytes: 1048576
    metrics_interval: 2s
    shutdown_timeout: 1s
service:
  pipelines:
    memory:
      receivers: [otlp]
      exporters: [otlp]
"#;

#[test]
fn otlp_section_settings_reach_the_exporter() {
    use std::time::Duration as D;
    let p = Pipeline::parse_with_env("t.yaml", WITH_OTLP, &env_of(&[])).expect("valid");
    let o = p.otlp.expect("enabled");
    let logs = o.logs.as_ref().expect("logs");
    assert_eq!(logs.url, "https://collector:4317", "TLS unless insecure");
    assert_eq!(logs.headers.0, vec![("x-api-key".into(), "k1".into())]);
    assert_eq!(logs.timeout, D::from_secs(3));
    assert_eq!(logs.ca_file.as_deref(), Some(Path::new("/etc/ca.pem")));
    assert_eq!(o.retry.initial_interval, D::from_millis(100));
    assert_eq!(o.retry.max_interval, D::from_secs(1));
    assert_eq!(o.retry.max_elapsed_time, D::from_secs(20));
    assert_eq!(o.queue.size, 10);
    assert_eq!(o.queue.max_disk_bytes, 1 << 20);
    assert_eq!(o.metrics_interval, D::from_secs(2));
    assert_eq!(o.shutdown_timeout, D::from_secs(1));
    let forever = WITH_OTLP.replace("max_elapsed_time: 20s", "max_elapsed_time: 0s");
    let p = Pipeline::parse_with_env("t.yaml", &forever, &env_of(&[])).expect("valid");
    assert_eq!(p.otlp.expect("enabled").retry.max_elapsed_time, D::ZERO);
    // A signal's own variable beats the file; the shared one does not.
    let p = Pipeline::parse_with_env(
        "t.yaml",
        WITH_OTLP,
        &env_of(&[
            ("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT", "http://logs:4317"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://ignored:4317"),
        ]),
    )
    .expect("valid");
    let o = p.otlp.expect("enabled");
    assert_eq!(o.logs.expect("logs").url, "http://logs:4317");
    assert_eq!(o.traces.expect("traces").url, "https://collector:4317");
}

#[test]
fn otlp_section_errors_name_the_line_and_the_fix() {
    let bad = WITH_OTLP.replace("    retry:", "    retyr:");
    let e = Pipeline::parse_with_env("t.yaml", &bad, &env_of(&[])).expect_err("rejected");
    assert_eq!(e.line, Some(16), "{e}");
    assert_eq!(e.hint.as_deref(), Some("did you mean `retry`?"), "{e}");

    let bad = WITH_OTLP.replace("protocol: grpc", "protocol: http");
    let e = Pipeline::parse_with_env("t.yaml", &bad, &env_of(&[])).expect_err("rejected");
    assert_eq!(e.line, Some(9), "{e}");
    assert_eq!(
        e.hint.as_deref(),
        Some("did you mean `http/protobuf`?"),
        "{e}"
    );

    let bad = WITH_OTLP.replace("endpoint: collector:4317", "endpoint: ftp://collector");
    let e = Pipeline::parse_with_env("t.yaml", &bad, &env_of(&[])).expect_err("rejected");
    assert_eq!(
        e.line,
        Some(8),
        "the exporter's endpoint, not the receiver's: {e}"
    );
    assert!(e.hint.as_deref().unwrap_or("").contains("host:port"), "{e}");

    let bad = WITH_OTLP.replace("size: 10", "size: 0");
    let e = Pipeline::parse_with_env("t.yaml", &bad, &env_of(&[])).expect_err("rejected");
    assert_eq!(e.line, Some(21), "{e}");

    let bad = WITH_OTLP.replace("X-Api-Key: k1", "\"X Api\": k1");
    let e = Pipeline::parse_with_env("t.yaml", &bad, &env_of(&[])).expect_err("rejected");
    assert!(e.message.contains("header name"), "{e}");
}

#[test]
fn an_error_in_a_later_section_is_placed_at_its_own_key() {
    // `alpha` and `lookback` are in both detector sections; the error is about leak's.
    let text = GOOD
        .replace(
            "    step: 5s\n",
            "    step: 5s\n  spread_drift:\n    alpha: 0.01\n  growth:\n    lookback: 30m\n  leak: { lookback: 60m, alpha: 2 }\n",
        )
        .replace(
            "processors: [windows]",
            "processors: [windows, spread_drift, growth, leak]",
        );
    let e = Pipeline::parse("t.yaml", &text).expect_err("rejected");
    assert!(e.message.contains("processors.leak.alpha"), "{e}");
    let leak = text.lines().position(|l| l.starts_with("  leak:"));
    assert_eq!(e.line, leak.map(|i| i + 1), "{e}");
    let column = text
        .lines()
        .find(|l| l.starts_with("  leak:"))
        .and_then(|l| l.find("alpha"));
    assert_eq!(e.column, column.map(|c| c + 1), "{e}");

    // Block style.
    let text = GOOD
        .replace(
            "    step: 5s\n",
            "    step: 5s\n  spread_drift:\n    alpha: 0.01\n  leak:\n    lookback: 60m\n    alpha: 0.7\n",
        )
        .replace("processors: [windows]", "processors: [windows, spread_drift, leak]");
    let e = Pipeline::parse("t.yaml", &text).expect_err("rejected");
    assert!(e.message.contains("processors.leak.alpha"), "{e}");
    assert_eq!((e.line, e.column), (Some(14), Some(5)), "{e}");

    let text = GOOD
        .replace(
            "    step: 5s\n",
            "    step: 5s\n  extract:\n    cohort_attributes: []\n",
        )
        .replace("processors: [windows]", "processors: [windows, extract]");
    let e = Pipeline::parse("t.yaml", &text).expect_err("rejected");
    assert_eq!((e.line, e.column), (Some(11), Some(5)), "{e}");

    // A key left to its default: the error is placed at its section.
    let text = GOOD
        .replace("    size: 30s\n", "")
        .replace("step: 5s", "step: 7s");
    let e = Pipeline::parse("t.yaml", &text).expect_err("rejected");
    assert!(e.message.contains("whole number of steps"), "{e}");
    assert_eq!((e.line, e.column), (Some(7), Some(3)), "{e}");

    // A component a pipeline names: placed at the item in the pipeline's list.
    let text = GOOD.replace("exporters: [jsonl]", "exporters: [jsonl, otlp]");
    let e = Pipeline::parse("t.yaml", &text).expect_err("rejected");
    assert!(e.message.contains("does not configure it"), "{e}");
    let column = text.lines().nth(17).and_then(|l| l.find("otlp"));
    assert_eq!((e.line, e.column), (Some(18), column.map(|c| c + 1)), "{e}");
}

#[test]
fn every_detector_in_the_table_is_configured_by_its_own_section() {
    // The table is all the pipeline loader knows of detectors: each row's name is a section, takes `{}` (all
    // defaults), may be listed in a pipeline, and builds a detector of that name.
    for d in crate::detect::DETECTORS {
        let text = GOOD
            .replace(
                "    step: 5s\n",
                &format!("    step: 5s\n  {}: {{}}\n", d.name),
            )
            .replace(
                "processors: [windows]",
                &format!("processors: [windows, {}]", d.name),
            );
        let p = Pipeline::parse("t.yaml", &text).unwrap_or_else(|e| panic!("{}: {e}", d.name));
        let names: Vec<_> = p.build_detectors().iter().map(|x| x.name()).collect();
        assert_eq!(names, [d.name]);
    }
}

#[test]
fn unknown_empty_and_repeated_processor_sections() {
    let with = |section: &str, listed: &str| {
        GOOD.replace("    step: 5s\n", &format!("    step: 5s\n{section}"))
            .replace("processors: [windows]", &format!("processors: [{listed}]"))
    };
    let e = Pipeline::parse("t.yaml", &with("  groth: {}\n", "windows")).expect_err("rejected");
    assert!(e.message.contains("unknown field `groth`"), "{e}");
    assert_eq!(e.hint.as_deref(), Some("did you mean `growth`?"), "{e}");
    assert_eq!(e.line, Some(10), "{e}");
    // An empty section configures nothing: listing it is an error that says so.
    let e = Pipeline::parse("t.yaml", &with("  leak:\n", "windows, leak")).expect_err("rejected");
    assert!(e.message.contains("does not configure it"), "{e}");
    let e = Pipeline::parse("t.yaml", &with("  leak: {}\n  leak: {}\n", "windows, leak"))
        .expect_err("rejected");
    assert!(e.message.contains("duplicate"), "{e}");
}
