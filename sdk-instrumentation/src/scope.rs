//! Allocation attribution: which request the current thread is working for.
//!
//! The counting allocator cannot look at tokio's task-locals or any structure that allocates, so the "current
//! request" is one raw pointer in a const-initialised thread-local `Cell`: no lazy initialisation, no TLS
//! destructor, readable from inside `alloc` at any point of a thread's life. Every poll of a wrapped future (and
//! every entered sync scope) sets it and restores the previous value on the way out, including on unwind, so a
//! pointer is only ever visible while the `Arc` that owns the counters is held by the code that set it.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::ptr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

/// One request's running totals. Relaxed atomics: the totals are read once, after the request's work is done,
/// and a child task still running then is allowed to be counted or not.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) allocated: AtomicU64,
    pub(crate) freed: AtomicU64,
}

thread_local! {
    static CURRENT: Cell<*const Counters> = const { Cell::new(ptr::null()) };
}

/// The counters the current thread is attributing to, or null. Never allocates, never panics.
#[inline(always)]
pub(crate) fn current_counters() -> *const Counters {
    CURRENT.try_with(Cell::get).unwrap_or(ptr::null())
}

/// Sets the thread's scope and returns the previous one. The caller must keep `counters` alive until it has put
/// the previous value back (see [`Restore`]).
#[inline(always)]
fn swap_current(counters: *const Counters) -> *const Counters {
    CURRENT
        .try_with(|c| c.replace(counters))
        .unwrap_or(ptr::null())
}

/// Puts the previous scope back when dropped, so a panicking poll cannot leave a dangling pointer behind.
struct Restore(*const Counters);

impl Drop for Restore {
    #[inline(always)]
    fn drop(&mut self) {
        swap_current(self.0);
    }
}

#[inline(always)]
fn enter_raw(counters: &Arc<Counters>) -> Restore {
    Restore(swap_current(Arc::as_ptr(counters)))
}

/// A handle to one request's allocation counters: what a child task, a blocking closure or a thread-pool job
/// carries so that its allocations count toward the request that caused them.
#[derive(Clone, Debug)]
pub struct Scope {
    pub(crate) counters: Arc<Counters>,
}

impl Scope {
    pub(crate) fn new() -> Scope {
        Scope {
            counters: Arc::new(Counters::default()),
        }
    }

    /// The scope of the request being polled or run on this thread, if any. This is how [`crate::spawn`] and
    /// [`crate::spawn_blocking`] pick up the attribution without the caller passing it along.
    pub fn current() -> Option<Scope> {
        let p = current_counters();
        if p.is_null() {
            return None;
        }
        // SAFETY: a non-null pointer in CURRENT was produced by `Arc::as_ptr` on an `Arc<Counters>` that the
        // code which set it (a `Scoped`, `Instrumented` or `ScopeGuard` on this very thread's stack) keeps alive
        // until it restores the previous value; we are running inside that window, so the allocation is live
        // and taking one more strong reference is sound.
        let counters = unsafe {
            Arc::increment_strong_count(p);
            Arc::from_raw(p)
        };
        Some(Scope { counters })
    }

    /// Attributes every poll of `fut` (on whatever thread polls it) to this scope.
    pub fn wrap<F: Future>(self, fut: F) -> Scoped<F> {
        Scoped { scope: self, fut }
    }

    /// Attributes the closure's run (on whatever thread runs it) to this scope: for `std::thread::spawn`,
    /// rayon and other pools that take a `FnOnce`.
    pub fn bind<R, F: FnOnce() -> R>(self, f: F) -> impl FnOnce() -> R {
        move || {
            let _restore = enter_raw(&self.counters);
            f()
        }
    }

    /// Attributes the current thread to this scope until the guard drops (synchronous request handlers).
    pub fn enter(&self) -> ScopeGuard<'_> {
        ScopeGuard {
            _restore: enter_raw(&self.counters),
            _scope: std::marker::PhantomData,
        }
    }

    /// Bytes allocated so far by code running in this scope. Zero unless the counting allocator is installed.
    pub fn allocated(&self) -> u64 {
        self.counters.allocated.load(Ordering::Relaxed)
    }

    /// Bytes freed so far by code running in this scope. Zero unless the counting allocator is installed.
    pub fn freed(&self) -> u64 {
        self.counters.freed.load(Ordering::Relaxed)
    }
}

/// Returned by [`Scope::enter`]; the previous scope is back when it drops. Not `Send`: it must drop on the
/// thread that entered.
pub struct ScopeGuard<'a> {
    _restore: Restore,
    _scope: std::marker::PhantomData<&'a Scope>,
}

pin_project_lite::pin_project! {
    /// A future whose polls are attributed to a [`Scope`]; see [`Scope::wrap`].
    pub struct Scoped<F> {
        scope: Scope,
        #[pin]
        fut: F,
    }
}

impl<F: Future> Future for Scoped<F> {
    type Output = F::Output;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let _restore = enter_raw(&this.scope.counters);
        this.fut.poll(cx)
    }
}

pin_project_lite::pin_project! {
    /// A future attributed to a request whose guard finishes when the future completes or is dropped; see
    /// [`crate::RequestGuard::instrument`].
    pub struct Instrumented<F> {
        counters: Arc<Counters>,
        #[pin]
        fut: Option<F>,
        guard: Option<crate::RequestGuard>,
    }

    impl<F> PinnedDrop for Instrumented<F> {
        fn drop(this: Pin<&mut Self>) {
            let mut this = this.project();
            // Dropping an unfinished future frees its buffers: that belongs to the request too.
            if this.fut.as_mut().as_pin_mut().is_some() {
                let _restore = enter_raw(this.counters);
                this.fut.set(None);
            }
            if let Some(guard) = this.guard.take() {
                guard.finish();
            }
        }
    }
}

impl<F> Instrumented<F> {
    pub(crate) fn new(guard: crate::RequestGuard, fut: F) -> Instrumented<F> {
        Instrumented {
            counters: Arc::clone(&guard.scope.counters),
            fut: Some(fut),
            guard: Some(guard),
        }
    }
}

impl<F: Future> Future for Instrumented<F> {
    type Output = F::Output;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let mut this = self.project();
        let restore = enter_raw(this.counters);
        let Some(fut) = this.fut.as_mut().as_pin_mut() else {
            panic!("memspan::Instrumented polled after completion");
        };
        let out = fut.poll(cx);
        if out.is_ready() {
            // The future's own state (and what it still owns) is freed inside the scope, then the totals are read.
            this.fut.set(None);
            drop(restore);
            if let Some(guard) = this.guard.take() {
                guard.finish();
            }
        }
        out
    }
}

/// `tokio::spawn`, carrying the current request's attribution (if any) into the child task.
#[cfg(feature = "tokio")]
pub fn spawn<F>(fut: F) -> tokio::task::JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    match Scope::current() {
        Some(scope) => tokio::spawn(scope.wrap(fut)),
        None => tokio::spawn(fut),
    }
}

/// `tokio::task::spawn_blocking`, carrying the current request's attribution (if any) into the closure.
#[cfg(feature = "tokio")]
pub fn spawn_blocking<F, R>(f: F) -> tokio::task::JoinHandle<R>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    match Scope::current() {
        Some(scope) => tokio::task::spawn_blocking(scope.bind(f)),
        None => tokio::task::spawn_blocking(f),
    }
}
