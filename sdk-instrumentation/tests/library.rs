//! memspan as an instrumentation library: request spans from the service's own tracer and process metrics on
//! its own meter, with no provider, exporter or global state of memspan's.

use memspan::probe::{Probe, Readings};
use memspan::{attributes, Instrumentation};
use opentelemetry::metrics::MeterProvider as _;
use opentelemetry::trace::{SpanKind, TracerProvider as _};
use opentelemetry::Value;
use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData};
use opentelemetry_sdk::metrics::{InMemoryMetricExporter, PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};

fn attr(span: &SpanData, key: &str) -> Option<Value> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.clone())
}

struct OnlyResident;

impl Probe for OnlyResident {
    fn name(&self) -> &'static str {
        "only-resident"
    }
    fn read(&self, out: &mut Readings) {
        out.heap_resident = Some(7 << 20);
    }
}

#[test]
fn requests_use_the_services_own_tracer_with_the_default_probes_and_a_cohort() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let m = Instrumentation::builder(provider.tracer("inference"))
        .cohort("canary")
        .probe(OnlyResident)
        .build();
    assert_eq!(m.cohort(), Some("canary"));
    assert_eq!(m.probe_names().last(), Some(&"only-resident"));
    assert!(m.probe_names().contains(&"cgroup"));
    let mut request = m.request("chat", "llama-3-8b");
    request.record_tokens(3, 5);
    request.finish();

    let spans = exporter.get_finished_spans().expect("spans");
    assert_eq!(spans.len(), 1);
    let s = &spans[0];
    assert_eq!(s.name, "chat llama-3-8b");
    assert_eq!(s.span_kind, SpanKind::Internal);
    assert_eq!(s.instrumentation_scope.name(), "inference");
    assert_eq!(attr(s, attributes::COHORT), Some(Value::from("canary")));
    assert_eq!(attr(s, "gen_ai.usage.output_tokens"), Some(Value::I64(5)));
    assert!(matches!(attr(s, attributes::RSS_START), Some(Value::I64(v)) if v > 0));
    assert!(matches!(attr(s, attributes::RSS_END), Some(Value::I64(v)) if v > 0));
    assert_eq!(
        attr(s, attributes::HEAP_RESIDENT),
        Some(Value::I64(7 << 20))
    );
    assert_eq!(m.readings().heap_resident, Some(7 << 20));
}

#[test]
fn process_metrics_register_on_the_services_meter() {
    let metrics = InMemoryMetricExporter::default();
    let meters = SdkMeterProvider::builder()
        .with_reader(PeriodicReader::builder(metrics.clone()).build())
        .build();
    let m = Instrumentation::builder(SdkTracerProvider::builder().build().tracer("inference"))
        .without_default_probes()
        .probe(OnlyResident)
        .build();
    m.register_metrics(&meters.meter("memspan"));
    meters.force_flush().expect("flush");
    let gauge = |name: &str| -> Option<u64> {
        metrics
            .get_finished_metrics()
            .ok()?
            .iter()
            .rev()
            .find_map(|rm| {
                rm.scope_metrics()
                    .flat_map(|sm| sm.metrics())
                    .find(|m| m.name() == name)
                    .and_then(|m| match m.data() {
                        AggregatedMetrics::U64(MetricData::Gauge(g)) => {
                            g.data_points().next().map(|p| p.value())
                        }
                        _ => None,
                    })
            })
    };
    assert!(gauge("process.memory.usage").is_some_and(|v| v > 0));
    assert_eq!(gauge(attributes::HEAP_RESIDENT), Some(7 << 20));
    assert_eq!(
        gauge("container.memory.usage"),
        None,
        "no default probes, no cgroup"
    );
    meters.shutdown().expect("shutdown");
}
