//! `install_global` makes memspan's providers the global ones; its own binary, as it sets process-wide state.

use memspan::Builder;
use opentelemetry::trace::{Tracer as _, TracerProvider as _};
use opentelemetry_sdk::metrics::InMemoryMetricExporter;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SimpleSpanProcessor};

#[test]
fn spans_from_the_global_tracer_share_the_pipeline() {
    let exporter = InMemorySpanExporter::default();
    let m = Builder::from_env()
        .span_processor(SimpleSpanProcessor::new(exporter.clone()))
        .metric_exporter(InMemoryMetricExporter::default())
        .install_global()
        .expect("install");
    let tracer = opentelemetry::global::tracer_provider().tracer("library");
    tracer.in_span("tokenize", |_| {});
    m.request("chat", "m").finish();
    let names: Vec<String> = exporter
        .get_finished_spans()
        .expect("spans")
        .into_iter()
        .map(|s| s.name.to_string())
        .collect();
    assert_eq!(names, vec!["tokenize".to_string(), "chat m".to_string()]);
    m.shutdown().expect("shutdown");
}
