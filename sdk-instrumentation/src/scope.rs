//! Allocation attribution: which request the current thread is working for.
//!
//! The counting allocator cannot look at tokio's task-locals or any structure that allocates, so the "current
//! request" is one raw pointer in a const-initialised thread-local `Cell`: no lazy initialisation, no TLS
//! destructor, readable from inside `alloc` at any point of a thread's life. Every poll of a wrapped future (and
//! every entered sync scope) sets it and restores the previous value on the way out, including on unwind, so a
//! pointer is only ever visible while the `Arc` that owns the counters is held by the code that set it.
//!
//! The same entry makes the request's OpenTelemetry context (its span) current, so spans the service starts
//! while working for the request are its children. That context lives in OpenTelemetry's own thread-local stack
//! and is only attached here, never read by the allocator.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::ptr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::Poll;

use opentelemetry::{Context, ContextGuard};

/// One request's running totals, and its OpenTelemetry context. Relaxed atomics: the totals are read once, after
/// the request's work is done, and a child task still running then is allowed to be counted or not.
#[derive(Debug)]
pub(crate) struct ScopeState {
    pub(crate) allocated: AtomicU64,
    pub(crate) freed: AtomicU64,
    otel: Context,
}

thread_local! {
    static CURRENT: Cell<*const ScopeState> = const { Cell::new(ptr::null()) };
}

/// The scope the current thread is attributing to, or null. Never allocates, never panics.
#[inline(always)]
pub(crate) fn current_scope() -> *const ScopeState {
    CURRENT.try_with(Cell::get).unwrap_or(ptr::null())
}

/// Sets the thread's scope and returns the previous one. The caller must keep `state` alive until it has put
/// the previous value back (see [`Restore`]).
#[inline(always)]
fn swap_current(state: *const ScopeState) -> *const ScopeState {
    CURRENT
        .try_with(|c| c.replace(state))
        .unwrap_or(ptr::null())
}

/// Puts the previous scope back when dropped, so a panicking poll cannot leave a dangling pointer behind.
#[must_use]
pub(crate) struct Restore(*const ScopeState);

impl Drop for Restore {
    #[inline(always)]
    fn drop(&mut self) {
        swap_current(self.0);
    }
}

#[inline(always)]
fn enter_raw(state: &Arc<ScopeState>) -> Restore {
    Restore(swap_current(Arc::as_ptr(state)))
}

/// A scope and an OpenTelemetry context entered on this thread. Dropping it restores the previous scope, then
/// detaches the context (the reverse of entering: the context is attached first, so that OpenTelemetry's
/// thread-local stack, allocated on a thread's first attach, is not counted as the request's).
pub(crate) struct Entered {
    _scope: Restore,
    _otel: ContextGuard,
}

/// A handle to one request's allocation counters and span: what a child task, a blocking closure or a
/// thread-pool job carries so that its allocations count toward the request that caused them, and the spans it
/// starts are children of the request's.
#[derive(Clone, Debug)]
pub struct Scope {
    state: Arc<ScopeState>,
}

impl Scope {
    /// A scope whose entries make `otel` (the request's context, with its span) current.
    pub(crate) fn new(otel: Context) -> Scope {
        Scope {
            state: Arc::new(ScopeState {
                allocated: AtomicU64::new(0),
                freed: AtomicU64::new(0),
                otel,
            }),
        }
    }

    /// The scope of the request being polled or run on this thread, if any. This is how [`crate::spawn`] and
    /// [`crate::spawn_blocking`] pick up the attribution without the caller passing it along.
    pub fn current() -> Option<Scope> {
        let p = current_scope();
        if p.is_null() {
            return None;
        }
        // SAFETY: a non-null pointer in CURRENT was produced by `Arc::as_ptr` on an `Arc<ScopeState>` that the
        // code which set it (an `Entered` or a `Restore` on this very thread's stack, next to the `Scope` it was
        // made from) keeps alive until it restores the previous value; we are running inside that window, so the
        // allocation is live and taking one more strong reference is sound.
        let state = unsafe {
            Arc::increment_strong_count(p);
            Arc::from_raw(p)
        };
        Some(Scope { state })
    }

    /// The request's OpenTelemetry context (its span current): what [`Scope::wrap`], [`Scope::bind`] and
    /// [`Scope::enter`] attach, and what to hand to an executor they do not cover.
    pub fn context(&self) -> &Context {
        &self.state.otel
    }

    /// Attributes every poll of `fut` (on whatever thread polls it) to this scope, with the request's span as
    /// the current OpenTelemetry context during each poll.
    pub fn wrap<F: Future>(self, fut: F) -> Scoped<F> {
        let otel = self.state.otel.clone();
        self.wrap_in(otel, fut)
    }

    /// [`Scope::wrap`] with another context current during each poll (the spawner's, for [`crate::spawn`]).
    pub(crate) fn wrap_in<F: Future>(self, otel: Context, fut: F) -> Scoped<F> {
        Scoped {
            scope: self,
            otel,
            fut,
        }
    }

    /// Attributes the closure's run (on whatever thread runs it) to this scope, with the request's span as the
    /// current OpenTelemetry context: for `std::thread::spawn`, rayon and other pools that take a `FnOnce`.
    pub fn bind<R, F: FnOnce() -> R>(self, f: F) -> impl FnOnce() -> R {
        let otel = self.state.otel.clone();
        self.bind_in(otel, f)
    }

    /// [`Scope::bind`] with another context current during the run.
    pub(crate) fn bind_in<R, F: FnOnce() -> R>(self, otel: Context, f: F) -> impl FnOnce() -> R {
        move || {
            let _in = self.enter_in(&otel);
            f()
        }
    }

    /// Attributes the current thread to this scope, with the request's span as the current OpenTelemetry context,
    /// until the guard drops (synchronous request handlers).
    pub fn enter(&self) -> ScopeGuard<'_> {
        ScopeGuard {
            _entered: self.enter_in(&self.state.otel),
            _scope: std::marker::PhantomData,
        }
    }

    /// Enters this scope with `otel` current, until the returned value drops (on this thread).
    #[inline]
    pub(crate) fn enter_in(&self, otel: &Context) -> Entered {
        let otel = otel.clone().attach();
        Entered {
            _scope: enter_raw(&self.state),
            _otel: otel,
        }
    }

    /// Enters this scope without touching the OpenTelemetry context: for drop glue, which may run while the
    /// thread's locals are being torn down, where OpenTelemetry's context stack can no longer be reached.
    #[inline]
    pub(crate) fn enter_allocation_only(&self) -> Restore {
        enter_raw(&self.state)
    }

    /// Bytes allocated so far by code running in this scope. Zero unless the counting allocator is installed.
    pub fn allocated(&self) -> u64 {
        self.state.allocated.load(Ordering::Relaxed)
    }

    /// Bytes freed so far by code running in this scope. Zero unless the counting allocator is installed.
    pub fn freed(&self) -> u64 {
        self.state.freed.load(Ordering::Relaxed)
    }
}

/// Returned by [`Scope::enter`]; the previous scope and OpenTelemetry context are back when it drops. Not
/// `Send`: it must drop on the thread that entered.
pub struct ScopeGuard<'a> {
    _entered: Entered,
    _scope: std::marker::PhantomData<&'a Scope>,
}

pin_project_lite::pin_project! {
    /// A future whose polls are attributed to a [`Scope`], with the request's span current; see [`Scope::wrap`].
    pub struct Scoped<F> {
        scope: Scope,
        otel: Context,
        #[pin]
        fut: F,
    }
}

impl<F: Future> Future for Scoped<F> {
    type Output = F::Output;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let _in = this.scope.enter_in(this.otel);
        this.fut.poll(cx)
    }
}

/// `tokio::spawn`, carrying the current request's attribution (if any) into the child task, with the spawner's
/// current OpenTelemetry context (the request's span, or a span the service started inside the request) current
/// during each of the child's polls.
#[cfg(feature = "tokio")]
pub fn spawn<F>(fut: F) -> tokio::task::JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    match Scope::current() {
        Some(scope) => tokio::spawn(scope.wrap_in(Context::current(), fut)),
        None => tokio::spawn(fut),
    }
}

/// `tokio::task::spawn_blocking`, carrying the current request's attribution (if any) and the spawner's current
/// OpenTelemetry context into the closure.
#[cfg(feature = "tokio")]
pub fn spawn_blocking<F, R>(f: F) -> tokio::task::JoinHandle<R>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    match Scope::current() {
        Some(scope) => tokio::task::spawn_blocking(scope.bind_in(Context::current(), f)),
        None => tokio::task::spawn_blocking(f),
    }
}
