//! Per-request allocation attribution with the counting allocator installed, on a multi-thread runtime where the
//! request's future migrates between workers.
//!
//! Tolerance: the future under test allocates exactly N bytes of payload; the runtime itself may allocate a
//! little while polling it (task bookkeeping, a timer entry), so the reported total must be at least N and at
//! most N + 1% (and the same for frees). An unwrapped child must add less than its own allocation.

use std::collections::HashSet;
use std::hint::black_box;
use std::sync::{Arc, Mutex};
use std::thread::ThreadId;
use std::time::Duration;

use memspan::{Instrumentation, Scope};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry::Value;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};

#[global_allocator]
static ALLOC: memspan::CountingAllocator = memspan::CountingAllocator::system();

const STEPS: usize = 64;
const CHUNK: usize = 64 * 1024;
const N: u64 = (STEPS * CHUNK) as u64;
const CHILD: usize = 1 << 20;

fn memspan_in_memory() -> (Instrumentation, InMemorySpanExporter) {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let m = Instrumentation::builder(provider.tracer("memspan"))
        .without_default_probes()
        .build();
    (m, exporter)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("runtime")
}

fn within_tolerance(reported: u64, expected: u64) -> bool {
    reported >= expected && reported <= expected + expected / 100
}

fn assert_reports_n(scope: &Scope) {
    let (allocated, freed) = (scope.allocated(), scope.freed());
    assert!(
        within_tolerance(allocated, N),
        "allocated {allocated} for N = {N}"
    );
    assert!(within_tolerance(freed, N), "freed {freed} for N = {N}");
}

fn note_thread(threads: &Mutex<HashSet<ThreadId>>) {
    if let Ok(mut t) = threads.lock() {
        t.insert(std::thread::current().id());
    }
}

/// Returns Pending once (waking itself), then Ready: the task goes to the back of its worker's run queue.
struct YieldOnce(bool);

impl std::future::Future for YieldOnce {
    type Output = ();
    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        if self.0 {
            return std::task::Poll::Ready(());
        }
        self.0 = true;
        cx.waker().wake_by_ref();
        std::task::Poll::Pending
    }
}

/// Allocates N bytes in STEPS chunks with an await between chunks. Before each await it spawns a task that
/// blocks its worker for 2 ms; the spawned task runs next on this worker (tokio's LIFO slot), while this task
/// waits in the worker's run queue, where an idle worker steals it: the next chunk is allocated on another thread.
async fn allocate_across_awaits(threads: Arc<Mutex<HashSet<ThreadId>>>) -> usize {
    let mut kept: Vec<Vec<u8>> = Vec::with_capacity(STEPS);
    for _ in 0..STEPS {
        note_thread(&threads);
        kept.push(black_box(vec![1u8; CHUNK]));
        drop(tokio::spawn(async {
            std::thread::sleep(Duration::from_millis(2))
        }));
        YieldOnce(false).await;
    }
    kept.iter().map(Vec::len).sum()
}

/// Yields STEPS times, allocating a chunk before each yield.
struct ChunkedAllocation {
    kept: Vec<Vec<u8>>,
    threads: Arc<Mutex<HashSet<ThreadId>>>,
}

impl std::future::Future for ChunkedAllocation {
    type Output = usize;
    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<usize> {
        note_thread(&self.threads);
        if self.kept.len() == STEPS {
            return std::task::Poll::Ready(self.kept.iter().map(Vec::len).sum());
        }
        self.kept.push(black_box(vec![1u8; CHUNK]));
        cx.waker().wake_by_ref();
        std::task::Poll::Pending
    }
}

/// The same N bytes, every poll on a new OS thread (no runtime involved): the attribution follows the future,
/// not the thread.
#[test]
fn polls_on_a_new_thread_each_time_report_n() {
    let (m, _exporter) = memspan_in_memory();
    let threads = Arc::new(Mutex::new(HashSet::with_capacity(STEPS + 1)));
    let guard = m.request("chat", "test-model");
    let scope = guard.scope();
    let fut = guard.instrument(ChunkedAllocation {
        kept: Vec::with_capacity(STEPS),
        threads: Arc::clone(&threads),
    });
    let mut fut: std::pin::Pin<Box<dyn std::future::Future<Output = usize> + Send>> = Box::pin(fut);
    let mut result = None;
    for _ in 0..=STEPS {
        let (f, r) = std::thread::spawn(move || {
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            let r = fut.as_mut().poll(&mut cx);
            (fut, r)
        })
        .join()
        .expect("poll thread");
        fut = f;
        if let std::task::Poll::Ready(v) = r {
            result = Some(v);
            break;
        }
    }
    assert_eq!(result, Some(STEPS * CHUNK));
    let seen = threads.lock().map(|t| t.len()).unwrap_or(0);
    assert_eq!(seen, STEPS + 1, "one thread per poll");
    assert_reports_n(&scope);
}

#[test]
fn a_future_allocating_n_bytes_across_migrations_reports_n() {
    let rt = runtime();
    let (m, exporter) = memspan_in_memory();
    let threads = Arc::new(Mutex::new(HashSet::with_capacity(16)));
    let guard = m.request("chat", "test-model");
    let scope = guard.scope();
    let fut = guard.instrument(allocate_across_awaits(Arc::clone(&threads)));
    let total = rt.block_on(async move { tokio::spawn(fut).await.expect("join") });
    assert_eq!(total as u64, N);

    let seen = threads.lock().map(|t| t.len()).unwrap_or(0);
    assert!(
        seen >= 2,
        "the future ran on {seen} worker thread(s); the test needs a migration"
    );
    // Beyond N: the list of kept vectors (STEPS * 24 bytes) and the blocker tasks spawned from the request
    // (about 150 bytes each), well inside the 1% tolerance.
    assert_reports_n(&scope);

    let spans = exporter.get_finished_spans().expect("spans");
    assert_eq!(spans.len(), 1);
    let attr = |k: &str| {
        spans[0]
            .attributes
            .iter()
            .find(|kv| kv.key.as_str() == k)
            .map(|kv| kv.value.clone())
    };
    assert_eq!(
        attr(memspan::attributes::REQUEST_ALLOCATED),
        Some(Value::I64(scope.allocated() as i64))
    );
    assert_eq!(
        attr(memspan::attributes::REQUEST_FREED),
        Some(Value::I64(scope.freed() as i64))
    );
}

#[cfg(feature = "tokio")]
#[test]
fn wrapped_children_are_attributed_and_unwrapped_ones_are_not() {
    let rt = runtime();
    let (m, _exporter) = memspan_in_memory();

    let attributed =
        |fan_out: fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>| {
            let guard = m.request("chat", "test-model");
            let scope = guard.scope();
            rt.block_on(guard.instrument(fan_out()));
            scope.allocated()
        };

    let wrapped_task = attributed(|| {
        Box::pin(async {
            memspan::spawn(async { black_box(vec![1u8; CHILD]).len() })
                .await
                .expect("join");
        })
    });
    let wrapped_blocking = attributed(|| {
        Box::pin(async {
            memspan::spawn_blocking(|| black_box(vec![1u8; CHILD]).len())
                .await
                .expect("join");
        })
    });
    let plain_task = attributed(|| {
        Box::pin(async {
            tokio::spawn(async { black_box(vec![1u8; CHILD]).len() })
                .await
                .expect("join");
        })
    });
    let plain_blocking = attributed(|| {
        Box::pin(async {
            tokio::task::spawn_blocking(|| black_box(vec![1u8; CHILD]).len())
                .await
                .expect("join");
        })
    });
    let child = CHILD as u64;
    assert!(wrapped_task >= child, "wrapped spawn: {wrapped_task}");
    assert!(
        wrapped_blocking >= child,
        "wrapped spawn_blocking: {wrapped_blocking}"
    );
    assert!(
        plain_task < child / 10,
        "unwrapped spawn leaked into the request: {plain_task}"
    );
    assert!(
        plain_blocking < child / 10,
        "unwrapped spawn_blocking leaked into the request: {plain_blocking}"
    );
    // Everything around the child (the task, its join handle) costs far less than the child's own allocation.
    assert!(wrapped_task < child + child / 10);
}

#[test]
fn bound_closures_and_entered_scopes_attribute_threads() {
    let (m, _exporter) = memspan_in_memory();
    let guard = m.request("embed", "test-model");
    let scope = guard.scope();
    std::thread::spawn(scope.clone().bind(|| black_box(vec![1u8; CHILD]).len()))
        .join()
        .expect("thread");
    assert!(
        within_tolerance(scope.allocated(), CHILD as u64),
        "bound: {}",
        scope.allocated()
    );
    std::thread::spawn(|| black_box(vec![1u8; CHILD]).len())
        .join()
        .expect("thread");
    assert!(
        within_tolerance(scope.allocated(), CHILD as u64),
        "an unbound thread was counted"
    );

    let before = scope.allocated();
    {
        let _in = scope.enter();
        assert!(Scope::current().is_some());
        black_box(vec![1u8; CHILD]);
    }
    assert!(
        Scope::current().is_none(),
        "the previous (empty) scope is restored"
    );
    assert!(scope.allocated() - before >= CHILD as u64);
    assert!(scope.freed() >= CHILD as u64);
    guard.finish();
}

#[test]
fn a_panicking_poll_restores_the_previous_scope() {
    let (m, _exporter) = memspan_in_memory();
    let outer = m.request("chat", "outer").scope();
    let _in = outer.enter();
    let inner = m.request("chat", "inner").scope();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let fut = inner.clone().wrap(async { panic!("inference failed") });
        futures_poll_once(fut);
    }));
    assert!(result.is_err());
    let now = Scope::current().expect("outer scope still entered");
    let before = outer.allocated();
    black_box(vec![1u8; 4096]);
    assert!(outer.allocated() >= before + 4096);
    assert_eq!(
        now.allocated(),
        outer.allocated(),
        "Scope::current is the outer scope again"
    );
}

fn futures_poll_once<F: std::future::Future>(fut: F) {
    let mut fut = std::pin::pin!(fut);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    let _ = fut.as_mut().poll(&mut cx);
}
