//! The request span is the current OpenTelemetry context while the request's work runs: spans the service starts
//! inside `instrument`, `Scope::wrap`, `Scope::enter`, `Scope::bind` and `memspan::spawn` are its children, with
//! the service's own tracer or the global one, across awaits and worker threads; and the context is back to what
//! it was after every poll. No exporter of memspan's: the service's own provider, as a library user has it.
//!
//! The tests share one provider (installed as the global one, once) and tell their spans apart by trace id.

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Poll, Waker};
use std::thread::ThreadId;
use std::time::Duration;

use memspan::Instrumentation;
use opentelemetry::trace::{
    FutureExt as _, Span as _, SpanContext, SpanId, TraceContextExt as _, TraceId, Tracer as _,
    TracerProvider as _,
};
use opentelemetry::{global, Context};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracer, SdkTracerProvider, SpanData};

struct Pipeline {
    exporter: InMemorySpanExporter,
    provider: SdkTracerProvider,
}

fn pipeline() -> &'static Pipeline {
    static PIPELINE: OnceLock<Pipeline> = OnceLock::new();
    PIPELINE.get_or_init(|| {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        global::set_tracer_provider(provider.clone());
        Pipeline { exporter, provider }
    })
}

/// The service's own tracer.
fn tracer() -> SdkTracer {
    pipeline().provider.tracer("service")
}

fn instrumentation() -> Instrumentation {
    Instrumentation::builder(pipeline().provider.tracer("memspan"))
        .without_default_probes()
        .build()
}

fn finished() -> Vec<SpanData> {
    pipeline().exporter.get_finished_spans().expect("spans")
}

/// The finished span of `trace` called `name`.
fn span(trace: TraceId, name: &str) -> SpanData {
    finished()
        .into_iter()
        .find(|s| s.span_context.trace_id() == trace && s.name == name)
        .unwrap_or_else(|| panic!("no span {name:?} in trace {trace}"))
}

fn assert_children_of(request: &SpanContext, names: &[&str]) {
    for name in names {
        let s = span(request.trace_id(), name);
        assert_eq!(
            s.parent_span_id,
            request.span_id(),
            "{name}: parent is not the request span"
        );
    }
}

fn current_span_id() -> SpanId {
    Context::map_current(|cx| cx.span().span_context().span_id())
}

/// Returns Pending once (waking itself), then Ready: the task goes to the back of its worker's run queue.
struct YieldOnce(bool);

impl Future for YieldOnce {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<()> {
        if self.0 {
            return Poll::Ready(());
        }
        self.0 = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

fn multi_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("runtime")
}

fn note_thread(threads: &Mutex<HashSet<ThreadId>>) {
    if let Ok(mut t) = threads.lock() {
        t.insert(std::thread::current().id());
    }
}

#[test]
fn spans_started_inside_an_instrumented_future_are_children_of_the_request_span() {
    let rt = multi_thread();
    let m = instrumentation();
    let request = m.request("chat", "ctx-instrument");
    let req = request.span_context().clone();
    let threads = Arc::new(Mutex::new(HashSet::new()));
    let seen = Arc::clone(&threads);
    let fut = request.instrument(async move {
        let global = global::tracer("service-global");
        tracer().start("same-before").end();
        global.start("global-before").end();
        // Each await yields; a task blocking the worker meanwhile lets another worker steal this one, so the
        // spans after the awaits are usually started on another thread than those before.
        for _ in 0..8 {
            note_thread(&seen);
            drop(tokio::spawn(async {
                std::thread::sleep(Duration::from_millis(2))
            }));
            YieldOnce(false).await;
        }
        note_thread(&seen);
        tracer().start("same-after").end();
        global.start("global-after").end();
        // A plain task is not the request's work: its span must not find the request span current.
        tokio::spawn(async { tracer().start("ctx-unrelated").end() })
            .await
            .expect("join");
        // A span the service makes current itself, across an await, parents its own children.
        let stage = Context::current_with_span(tracer().start("stage"));
        async {
            YieldOnce(false).await;
            tracer().start("in-stage").end();
        }
        .with_context(stage.clone())
        .await;
        stage.span().end();
        tracer().start("after-stage").end();
    });
    rt.block_on(async { tokio::spawn(fut).await.expect("join") });

    assert_children_of(
        &req,
        &[
            "same-before",
            "global-before",
            "same-after",
            "global-after",
            "stage",
            "after-stage",
        ],
    );
    let stage = span(req.trace_id(), "stage");
    assert_eq!(
        span(req.trace_id(), "in-stage").parent_span_id,
        stage.span_context.span_id()
    );
    let request_span = span(req.trace_id(), "chat ctx-instrument");
    assert_eq!(request_span.parent_span_id, SpanId::INVALID, "a root span");
    let unrelated: Vec<SpanData> = finished()
        .into_iter()
        .filter(|s| s.name == "ctx-unrelated")
        .collect();
    assert_eq!(unrelated.len(), 1);
    assert_ne!(unrelated[0].span_context.trace_id(), req.trace_id());
    assert_eq!(unrelated[0].parent_span_id, SpanId::INVALID);
    assert!(!Context::current().has_active_span());
    let polled_on = threads.lock().map(|t| t.len()).unwrap_or(0);
    assert!(polled_on >= 1);
}

/// Records the current span at each poll; Pending once, then Ready.
struct RecordCurrent {
    seen: Arc<Mutex<Vec<SpanId>>>,
}

impl Future for RecordCurrent {
    type Output = ();
    fn poll(self: Pin<&mut Self>, _: &mut std::task::Context<'_>) -> Poll<()> {
        let mut seen = self.seen.lock().expect("lock");
        seen.push(current_span_id());
        if seen.len() == 1 {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    }
}

#[test]
fn the_request_span_is_current_during_each_poll_and_only_then() {
    let m = instrumentation();
    let outer = Context::current_with_span(tracer().start("outer"));
    let outer_id = outer.span().span_context().span_id();
    let _outer = outer.clone().attach();
    // The request span's parent is the context current when the request starts.
    let request = m.request("chat", "ctx-polls");
    let req = request.span_context().clone();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut fut = Box::pin(request.instrument(RecordCurrent {
        seen: Arc::clone(&seen),
    }));
    let mut cx = std::task::Context::from_waker(Waker::noop());
    assert!(fut.as_mut().poll(&mut cx).is_pending());
    assert_eq!(current_span_id(), outer_id, "restored after a pending poll");
    assert!(fut.as_mut().poll(&mut cx).is_ready());
    assert_eq!(current_span_id(), outer_id, "restored after the last poll");
    assert_eq!(
        *seen.lock().expect("lock"),
        vec![req.span_id(), req.span_id()]
    );
    drop(fut);
    outer.span().end();
    assert_eq!(
        span(req.trace_id(), "chat ctx-polls").parent_span_id,
        outer_id
    );
}

#[test]
fn scope_wrap_enter_and_bind_make_the_request_span_current() {
    let m = instrumentation();
    let request = m.request("chat", "ctx-scope");
    let req = request.span_context().clone();
    let scope = request.scope();
    {
        let _in = scope.enter();
        tracer().start("entered").end();
    }
    assert!(!Context::current().has_active_span(), "enter is undone");
    std::thread::spawn(scope.clone().bind(|| tracer().start("bound").end()))
        .join()
        .expect("thread");
    multi_thread().block_on(async {
        tokio::spawn(scope.clone().wrap(async {
            YieldOnce(false).await;
            global::tracer("service-global").start("wrapped").end();
        }))
        .await
        .expect("join")
    });
    assert_eq!(scope.context().span().span_context(), &req);
    request.finish();
    assert_children_of(&req, &["entered", "bound", "wrapped"]);
}

#[test]
fn requests_from_the_global_tracer_parent_the_same_way() {
    pipeline(); // `global::tracer` binds to the provider installed when it is called
    let m = Instrumentation::builder(global::tracer("memspan"))
        .without_default_probes()
        .build();
    let request = m.request("embed", "ctx-global");
    let req = request.span_context().clone();
    assert!(req.is_valid());
    multi_thread().block_on(request.instrument(async {
        tokio::task::yield_now().await;
        tracer().start("child").end();
    }));
    assert_children_of(&req, &["child"]);
}

#[cfg(feature = "tokio")]
#[test]
fn memspan_spawn_carries_the_spawners_current_context() {
    let m = instrumentation();
    let request = m.request("chat", "ctx-spawn");
    let req = request.span_context().clone();
    multi_thread().block_on(request.instrument(async {
        memspan::spawn(async { tracer().start("spawned").end() })
            .await
            .expect("join");
        memspan::spawn_blocking(|| tracer().start("spawned-blocking").end())
            .await
            .expect("join");
        let stage = Context::current_with_span(tracer().start("stage"));
        async {
            memspan::spawn(async { tracer().start("spawned-in-stage").end() })
                .await
                .expect("join");
        }
        .with_context(stage.clone())
        .await;
        stage.span().end();
    }));
    assert_children_of(&req, &["spawned", "spawned-blocking", "stage"]);
    let stage = span(req.trace_id(), "stage");
    assert_eq!(
        span(req.trace_id(), "spawned-in-stage").parent_span_id,
        stage.span_context.span_id()
    );
}
