//! What reaches the exporter: span name and attributes, cohort, absent probes, process metrics, resource; and
//! a collector that is not there.

use std::time::{Duration, Instant};

use memspan::attributes;
use memspan::probe::{Probe, Readings};
use memspan::{Builder, Memspan, Protocol, SHUTDOWN_BOUND};
use opentelemetry::trace::{Span as _, SpanKind, Tracer as _, TracerProvider as _};
use opentelemetry::{KeyValue, Value};
use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData};
use opentelemetry_sdk::metrics::InMemoryMetricExporter;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SimpleSpanProcessor, SpanData};

fn attr(span: &SpanData, key: &str) -> Option<Value> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.clone())
}

fn in_memory(b: Builder) -> (Memspan, InMemorySpanExporter) {
    let exporter = InMemorySpanExporter::default();
    let m = b
        .span_processor(SimpleSpanProcessor::new(exporter.clone()))
        .metric_exporter(InMemoryMetricExporter::default())
        .build()
        .expect("build");
    (m, exporter)
}

#[test]
fn span_carries_name_gen_ai_attributes_cohort_and_rss() {
    let (m, exporter) = in_memory(Builder::from_env().service_name("svc").cohort("canary"));
    let mut req = m.request("chat", "llama-3-8b");
    req.record_tokens(12, 34);
    req.set_attribute(KeyValue::new("app.tenant", "t1"));
    req.finish();

    let spans = exporter.get_finished_spans().expect("spans");
    assert_eq!(spans.len(), 1);
    let s = &spans[0];
    assert_eq!(s.name, "chat llama-3-8b");
    assert_eq!(s.span_kind, SpanKind::Internal);
    assert_eq!(attr(s, "gen_ai.operation.name"), Some(Value::from("chat")));
    assert_eq!(
        attr(s, "gen_ai.request.model"),
        Some(Value::from("llama-3-8b"))
    );
    assert_eq!(attr(s, "gen_ai.usage.input_tokens"), Some(Value::I64(12)));
    assert_eq!(attr(s, "gen_ai.usage.output_tokens"), Some(Value::I64(34)));
    assert_eq!(attr(s, attributes::COHORT), Some(Value::from("canary")));
    assert_eq!(attr(s, "app.tenant"), Some(Value::from("t1")));
    for key in [attributes::RSS_START, attributes::RSS_END] {
        match attr(s, key) {
            Some(Value::I64(v)) => assert!(v > 0, "{key} = {v}"),
            other => panic!("{key}: {other:?}"),
        }
    }
    // This test binary has no counting allocator: the per-request totals are left out, not zero.
    assert_eq!(attr(s, attributes::REQUEST_ALLOCATED), None);
    assert_eq!(attr(s, attributes::REQUEST_FREED), None);
    // jemalloc figures exist exactly when the feature is on; no GPU driver on the test machines.
    assert_eq!(
        attr(s, attributes::HEAP_RESIDENT).is_some(),
        cfg!(feature = "jemalloc")
    );
    assert_eq!(attr(s, attributes::GPU_USED), None);
    // The limit is present exactly when this machine's cgroup has one.
    let limit = memspan::probe::CgroupProbe::start_default().limit();
    assert_eq!(
        attr(s, attributes::LIMIT),
        limit.map(|l| Value::I64(l as i64))
    );
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
fn absent_probes_leave_their_attributes_out() {
    let (m, exporter) = in_memory(
        Builder::from_env()
            .without_default_probes()
            .probe(OnlyResident),
    );
    drop(m.request("embed", "bge-small"));
    let spans = exporter.get_finished_spans().expect("spans");
    assert_eq!(spans.len(), 1, "dropping the guard ends the span");
    let present: Vec<&str> = attributes::ALL_BYTES
        .iter()
        .copied()
        .filter(|k| attr(&spans[0], k).is_some())
        .collect();
    assert_eq!(present, vec![attributes::HEAP_RESIDENT]);
    assert_eq!(
        attr(&spans[0], attributes::HEAP_RESIDENT),
        Some(Value::I64(7 << 20))
    );
}

#[test]
fn an_instrumented_future_ends_its_span_when_it_completes_or_is_dropped() {
    let (m, exporter) = in_memory(Builder::from_env().without_default_probes());
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("rt");
    let out = rt.block_on(m.request("chat", "a").instrument(async { 41 + 1 }));
    assert_eq!(out, 42);
    assert_eq!(exporter.get_finished_spans().expect("spans").len(), 1);
    let cancelled = m
        .request("chat", "b")
        .instrument(std::future::pending::<()>());
    drop(cancelled);
    let spans = exporter.get_finished_spans().expect("spans");
    assert_eq!(spans.len(), 2);
    assert_eq!(spans[1].name, "chat b");
}

#[test]
fn spans_started_inside_an_instrumented_future_nest_under_the_request_span() {
    let (m, exporter) = in_memory(Builder::from_env().without_default_probes());
    let tracer = m.tracer_provider().tracer("service");
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("rt");
    let request = m.request("chat", "nested");
    let request_id = request.span_context().span_id();
    rt.block_on(request.instrument(async {
        tracer.start("tokenize").end();
        tokio::task::yield_now().await;
        tracer.start("decode").end();
    }));
    let spans = exporter.get_finished_spans().expect("spans");
    let parent_of = |name: &str| {
        spans
            .iter()
            .find(|s| s.name == name)
            .map(|s| s.parent_span_id)
    };
    assert_eq!(parent_of("tokenize"), Some(request_id));
    assert_eq!(parent_of("decode"), Some(request_id));
    assert_eq!(spans.len(), 3);
}

fn gauge_value(exporter: &InMemoryMetricExporter, name: &str) -> Option<u64> {
    let batches = exporter.get_finished_metrics().ok()?;
    batches.iter().rev().find_map(|rm| {
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
}

#[test]
fn process_metrics_are_exported_with_semantic_names() {
    let metrics = InMemoryMetricExporter::default();
    let m = Builder::from_env()
        .probe(OnlyResident)
        .span_processor(SimpleSpanProcessor::new(InMemorySpanExporter::default()))
        .metric_exporter(metrics.clone())
        .metrics_interval(Duration::from_secs(3600))
        .build()
        .expect("build");
    m.force_flush().expect("flush");
    let rss = gauge_value(&metrics, "process.memory.usage").expect("process.memory.usage");
    let virt = gauge_value(&metrics, "process.memory.virtual").expect("process.memory.virtual");
    assert!(rss > 0 && virt >= rss, "rss {rss}, virtual {virt}");
    assert_eq!(
        gauge_value(&metrics, attributes::HEAP_RESIDENT),
        Some(7 << 20)
    );
    assert_eq!(
        gauge_value(&metrics, attributes::GPU_USED),
        None,
        "no GPU probe, no data point"
    );
    m.shutdown().expect("shutdown");
}

/// Port 1 on loopback refuses connections; nothing listens there.
const UNREACHABLE: &str = "http://127.0.0.1:1";

fn unreachable(protocol: Protocol, metrics_interval: Duration) -> Memspan {
    Builder::from_env()
        .endpoint(UNREACHABLE)
        .protocol(protocol)
        .metrics_interval(metrics_interval)
        .build()
        .expect("an unreachable collector is not a setup error")
}

fn requests_do_not_wait_for_the_collector(protocol: Protocol) {
    let m = unreachable(protocol, Duration::from_millis(50));
    let started = Instant::now();
    for i in 0..5_000 {
        let mut r = m.request("chat", "m");
        r.record_tokens(i, i);
    }
    let spent = started.elapsed();
    // A request that waited on the network even once per batch would take far longer than this bound.
    assert!(
        spent < Duration::from_secs(5),
        "{spent:?} for 5000 requests"
    );
    std::thread::sleep(Duration::from_millis(200));
    let t = Instant::now();
    let _ = m.shutdown();
    assert!(
        t.elapsed() <= SHUTDOWN_BOUND + Duration::from_secs(1),
        "shutdown took {:?}",
        t.elapsed()
    );
    let t = Instant::now();
    assert_eq!(m.shutdown(), m.shutdown(), "idempotent");
    assert!(t.elapsed() < Duration::from_secs(1));
}

#[test]
fn unreachable_grpc_collector_neither_blocks_nor_hangs_shutdown() {
    requests_do_not_wait_for_the_collector(Protocol::Grpc);
}

#[test]
fn unreachable_http_collector_neither_blocks_nor_hangs_shutdown() {
    requests_do_not_wait_for_the_collector(Protocol::HttpProtobuf);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setup_and_drop_work_inside_a_tokio_runtime() {
    let m = Builder::from_env()
        .endpoint(UNREACHABLE)
        .protocol(Protocol::Grpc)
        .build()
        .expect("build");
    let v = m
        .request("chat", "m")
        .instrument(async {
            tokio::task::yield_now().await;
            3
        })
        .await;
    assert_eq!(v, 3);
    let _ = m.shutdown();
    drop(m); // the private export runtime must not be dropped in a blocking way here
}

#[test]
fn dropping_the_last_handle_with_a_dead_collector_panics_no_thread() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static PANICS: AtomicUsize = AtomicUsize::new(0);
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let name = std::thread::current()
            .name()
            .map(str::to_string)
            .unwrap_or_default();
        if name.starts_with("OpenTelemetry") || name.starts_with("memspan") {
            PANICS.fetch_add(1, Ordering::SeqCst);
        }
        previous(info);
    }));
    for protocol in [Protocol::Grpc, Protocol::HttpProtobuf] {
        let m = unreachable(protocol, Duration::from_millis(20));
        for _ in 0..100 {
            m.request("chat", "m").finish();
        }
        std::thread::sleep(Duration::from_millis(100));
        let t = Instant::now();
        drop(m);
        assert!(
            t.elapsed() <= SHUTDOWN_BOUND + Duration::from_secs(1),
            "drop took {:?}",
            t.elapsed()
        );
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        PANICS.load(Ordering::SeqCst),
        0,
        "an export thread panicked after the handle was dropped"
    );
}
