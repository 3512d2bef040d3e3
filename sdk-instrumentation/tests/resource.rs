//! The resource from the standard variables; its own test binary because it sets process environment.

use memspan::Builder;
use opentelemetry::{Key, Value};
use opentelemetry_sdk::metrics::InMemoryMetricExporter;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SimpleSpanProcessor};

#[test]
fn resource_and_cohort_come_from_the_environment_and_explicit_calls_win() {
    // SAFETY (edition 2021: safe fn): this binary has one test, so no other thread reads the environment.
    std::env::set_var("OTEL_SERVICE_NAME", "from-env");
    std::env::set_var(
        "OTEL_RESOURCE_ATTRIBUTES",
        "deployment.environment.name=staging,team=ml",
    );
    std::env::set_var("MEMSPAN_COHORT", "baseline");
    let spans = InMemorySpanExporter::default();
    let metrics = InMemoryMetricExporter::default();
    let m = Builder::from_env()
        .service_version("1.4.2")
        .span_processor(SimpleSpanProcessor::new(spans.clone()))
        .metric_exporter(metrics.clone())
        .build()
        .expect("build");
    m.request("chat", "m").finish();
    m.force_flush().expect("flush");
    let batches = metrics.get_finished_metrics().expect("metrics");
    let resource = batches.last().expect("one collection").resource();
    let get = |k: &'static str| resource.get(&Key::from_static_str(k));
    assert_eq!(get("service.name"), Some(Value::from("from-env")));
    assert_eq!(get("service.version"), Some(Value::from("1.4.2")));
    assert_eq!(
        get("deployment.environment.name"),
        Some(Value::from("staging"))
    );
    assert_eq!(get("team"), Some(Value::from("ml")));
    assert!(matches!(get("service.instance.id"), Some(Value::String(s)) if s.as_str().len() == 36));
    // The cohort is on the resource too, so the process metrics are filed under it.
    assert_eq!(get("memspan.cohort"), Some(Value::from("baseline")));
    let span = spans
        .get_finished_spans()
        .expect("spans")
        .pop()
        .expect("span");
    let cohort = span
        .attributes
        .iter()
        .find(|kv| kv.key.as_str() == "memspan.cohort");
    assert_eq!(
        cohort.map(|kv| kv.value.clone()),
        Some(Value::from("baseline"))
    );

    let explicit = Builder::from_env()
        .service_name("explicit")
        .cohort("canary")
        .instance_id("pod-7")
        .span_processor(SimpleSpanProcessor::new(InMemorySpanExporter::default()))
        .metric_exporter(metrics.clone())
        .build()
        .expect("build");
    metrics.reset();
    explicit.force_flush().expect("flush");
    let batches = metrics.get_finished_metrics().expect("metrics");
    let resource = batches.last().expect("one collection").resource();
    assert_eq!(
        resource.get(&Key::from_static_str("service.name")),
        Some(Value::from("explicit"))
    );
    assert_eq!(
        resource.get(&Key::from_static_str("service.instance.id")),
        Some(Value::from("pod-7"))
    );
    assert_eq!(
        resource.get(&Key::from_static_str("memspan.cohort")),
        Some(Value::from("canary"))
    );
}
