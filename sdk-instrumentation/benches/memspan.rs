//! Costs of memspan on the request path, with the counting allocator installed as in a service that uses it.
//!
//! (a) request: a memspan guard against a plain span with the same attributes (same tracer provider, same
//!     span processor, which drops spans so export cost is left out of both); the difference is what memspan adds.
//! (b) poll: a future that yields K times, bare and wrapped; (wrapped - bare) / K is the cost per poll. Wrapped
//!     polls make the request span the current OpenTelemetry context; `otel_with_context` is that alone.
//! (c) alloc: alloc + free of 64 bytes through the counting allocator (outside and inside a scope) and through
//!     the system allocator directly.
//! (d) rss: one `pread` of /proc/self/statm, the dominant part of (a).

use std::alloc::{GlobalAlloc, Layout, System};
use std::future::Future;
use std::hint::black_box;
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use memspan::probe::RssProbe;
use memspan::{attributes, Builder, CountingAllocator, Scope};
use opentelemetry::trace::{
    FutureExt as _, Span as _, SpanKind, TraceContextExt as _, Tracer as _, TracerProvider as _,
};
use opentelemetry::KeyValue;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::metrics::InMemoryMetricExporter;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanProcessor};

#[global_allocator]
static ALLOC: CountingAllocator = CountingAllocator::system();

/// Ends spans into nothing: both sides of (a) pay the SDK's span creation, neither pays export.
#[derive(Debug)]
struct Discard;

impl SpanProcessor for Discard {
    fn on_start(&self, _: &mut opentelemetry_sdk::trace::Span, _: &opentelemetry::Context) {}
    fn on_end(&self, span: SpanData) {
        black_box(span);
    }
    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }
    fn shutdown_with_timeout(&self, _: Duration) -> OTelSdkResult {
        Ok(())
    }
}

fn request(c: &mut Criterion) {
    let m = Builder::from_env()
        .cohort("canary")
        .span_processor(Discard)
        .metric_exporter(InMemoryMetricExporter::default())
        .metrics_interval(Duration::from_secs(3600))
        .build()
        .expect("build");
    let names = m.readings();
    let provider = SdkTracerProvider::builder()
        .with_span_processor(Discard)
        .build();
    let tracer = provider.tracer("plain");
    let mut g = c.benchmark_group("request");
    g.bench_function("plain_span_same_attributes", |b| {
        b.iter(|| {
            let (op, model) = (black_box("chat"), black_box("llama-3-8b"));
            let mut span = tracer
                .span_builder(format!("{op} {model}"))
                .with_kind(SpanKind::Internal)
                .with_attributes(vec![
                    KeyValue::new("gen_ai.operation.name", op.to_string()),
                    KeyValue::new("gen_ai.request.model", model.to_string()),
                    KeyValue::new(attributes::COHORT, "canary"),
                    KeyValue::new(attributes::RSS_START, 1_i64 << 30),
                ])
                .start(&tracer);
            span.set_attributes([
                KeyValue::new(attributes::RSS_END, 1_i64 << 30),
                KeyValue::new(attributes::HEAP_ALLOCATED, 1_i64 << 29),
                KeyValue::new(attributes::REQUEST_ALLOCATED, 4096_i64),
                KeyValue::new(attributes::REQUEST_FREED, 4096_i64),
            ]);
            span.end();
        })
    });
    g.bench_function("memspan_guard", |b| {
        b.iter(|| {
            let guard = m.request(black_box("chat"), black_box("llama-3-8b"));
            guard.finish();
        })
    });
    g.finish();
    black_box(names);
    let _ = m.shutdown();
}

/// Returns Pending `left` times, waking itself each time, then Ready.
struct YieldK {
    left: u32,
}

impl Future for YieldK {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.left == 0 {
            return Poll::Ready(());
        }
        self.left = black_box(self.left - 1);
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

fn drive<F: Future>(fut: F) {
    let mut fut = std::pin::pin!(fut);
    let mut cx = Context::from_waker(Waker::noop());
    while black_box(fut.as_mut().poll(black_box(&mut cx))).is_pending() {}
}

const K: u32 = 1000;

fn poll(c: &mut Criterion) {
    let m = Builder::from_env()
        .without_default_probes()
        .span_processor(Discard)
        .metric_exporter(InMemoryMetricExporter::default())
        .metrics_interval(Duration::from_secs(3600))
        .build()
        .expect("build");
    let mut g = c.benchmark_group("poll_x1000");
    g.bench_function("bare", |b| b.iter(|| drive(YieldK { left: black_box(K) })));
    let scope = m.request("chat", "m").scope();
    g.bench_function("scoped", |b| {
        b.iter(|| drive(scope.clone().wrap(YieldK { left: black_box(K) })))
    });
    g.bench_function("instrumented", |b| {
        b.iter_batched(
            || m.request("chat", "m"),
            |guard| drive(guard.instrument(YieldK { left: black_box(K) })),
            BatchSize::SmallInput,
        )
    });
    // The OpenTelemetry idiom alone (a span made current on every poll, no allocation scope): the reference for
    // what making the request span current costs.
    let tracer = m.tracer_provider().tracer("plain");
    let cx = opentelemetry::Context::current_with_span(tracer.start("m"));
    g.bench_function("otel_with_context", |b| {
        b.iter(|| drive(YieldK { left: black_box(K) }.with_context(cx.clone())))
    });
    g.finish();
}

fn alloc(c: &mut Criterion) {
    let layout = Layout::from_size_align(64, 8).expect("layout");
    let counting = CountingAllocator::system();
    let mut g = c.benchmark_group("alloc_free_64B");
    g.bench_function("system", |b| {
        b.iter(|| unsafe {
            let p = System.alloc(black_box(layout));
            System.dealloc(black_box(p), layout);
        })
    });
    g.bench_function("counting_no_scope", |b| {
        b.iter(|| unsafe {
            let p = counting.alloc(black_box(layout));
            counting.dealloc(black_box(p), layout);
        })
    });
    let scope = memspan_scope();
    let _in = scope.enter();
    g.bench_function("counting_in_scope", |b| {
        b.iter(|| unsafe {
            let p = counting.alloc(black_box(layout));
            counting.dealloc(black_box(p), layout);
        })
    });
    g.finish();
}

fn memspan_scope() -> Scope {
    let m = Builder::from_env()
        .without_default_probes()
        .span_processor(Discard)
        .metric_exporter(InMemoryMetricExporter::default())
        .build()
        .expect("build");
    m.request("chat", "m").scope()
}

/// The design choice behind the live-bytes shards: two threads adding to one shared atomic against each adding
/// to its own cache-line-padded slot (200 000 adds per thread per iteration).
fn live_counter(c: &mut Criterion) {
    #[repr(align(128))]
    struct Padded(AtomicI64);
    const ADDS: usize = 200_000;
    let shared = AtomicI64::new(0);
    let shards = [Padded(AtomicI64::new(0)), Padded(AtomicI64::new(0))];
    let mut g = c.benchmark_group("live_counter_2_threads_x200000");
    g.bench_function("one_shared_atomic", |b| {
        b.iter(|| {
            std::thread::scope(|s| {
                for _ in 0..2 {
                    s.spawn(|| {
                        for _ in 0..ADDS {
                            shared.fetch_add(black_box(64), Ordering::Relaxed);
                        }
                    });
                }
            })
        })
    });
    g.bench_function("per_thread_shards", |b| {
        b.iter(|| {
            std::thread::scope(|s| {
                for shard in &shards {
                    s.spawn(move || {
                        for _ in 0..ADDS {
                            shard.0.fetch_add(black_box(64), Ordering::Relaxed);
                        }
                    });
                }
            })
        })
    });
    g.finish();
}

fn rss(c: &mut Criterion) {
    let probe = RssProbe::new().expect("statm");
    c.bench_function("rss_statm_pread", |b| b.iter(|| black_box(probe.rss())));
    c.bench_function("rss_shared_1ms", |b| {
        b.iter(|| black_box(probe.rss_shared()))
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = request, poll, alloc, live_counter, rss
}
criterion_main!(benches);
