//! The counting global allocator: per-request allocated/freed bytes and process-wide live bytes.
//!
//! Every allocation pays one thread-local read, at most one relaxed add on the request's counters, and one
//! relaxed add on a live-bytes shard. The shards are per-thread slots picked round-robin when a thread first
//! allocates: one shared atomic would bounce its cache line between every core that allocates (measured in
//! BENCHMARKS.md), and the live total is only summed when a probe or the metrics reader asks for it.
//! Nothing here allocates, so it is safe to call from inside `alloc`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};

use crate::scope::current_scope;

const SHARDS: usize = 32;

#[repr(align(128))]
struct Shard(AtomicI64);

#[allow(clippy::declare_interior_mutable_const)] // only used to build the array below
const SHARD_INIT: Shard = Shard(AtomicI64::new(0));
static LIVE: [Shard; SHARDS] = [SHARD_INIT; SHARDS];
static NEXT_SHARD: AtomicUsize = AtomicUsize::new(0);
static INSTALLED: AtomicBool = AtomicBool::new(false);

thread_local! {
    /// This thread's shard index plus one; zero until the thread's first allocation.
    static SHARD: Cell<usize> = const { Cell::new(0) };
}

#[inline(always)]
fn shard() -> &'static AtomicI64 {
    let idx = SHARD
        .try_with(|s| {
            let v = s.get();
            if v != 0 {
                return v - 1;
            }
            let i = NEXT_SHARD.fetch_add(1, Ordering::Relaxed) % SHARDS;
            s.set(i + 1);
            i
        })
        .unwrap_or(0);
    &LIVE[idx].0
}

#[inline(always)]
fn on_alloc(size: usize) {
    if !INSTALLED.load(Ordering::Relaxed) {
        INSTALLED.store(true, Ordering::Relaxed);
    }
    shard().fetch_add(size as i64, Ordering::Relaxed);
    let c = current_scope();
    if !c.is_null() {
        // SAFETY: see `scope::current_scope`: a non-null pointer is kept alive by whoever set it on this thread.
        unsafe { &*c }
            .allocated
            .fetch_add(size as u64, Ordering::Relaxed);
    }
}

#[inline(always)]
fn on_free(size: usize) {
    shard().fetch_sub(size as i64, Ordering::Relaxed);
    let c = current_scope();
    if !c.is_null() {
        // SAFETY: as in `on_alloc`.
        unsafe { &*c }
            .freed
            .fetch_add(size as u64, Ordering::Relaxed);
    }
}

/// Whether a [`CountingAllocator`] is the global allocator of this process (it has served an allocation).
pub fn counting_allocator_installed() -> bool {
    INSTALLED.load(Ordering::Relaxed)
}

/// Live heap bytes counted by the [`CountingAllocator`], or `None` when it is not installed.
pub fn live_bytes() -> Option<u64> {
    if !counting_allocator_installed() {
        return None;
    }
    let sum: i64 = LIVE.iter().map(|s| s.0.load(Ordering::Relaxed)).sum();
    // A thread may free what another allocated between two shard reads; never report a negative live size.
    Some(sum.max(0) as u64)
}

/// A global allocator that counts bytes per request scope and live bytes for the process, delegating the
/// allocation itself to `A` (the system allocator by default, or jemalloc).
///
/// ```ignore
/// #[global_allocator]
/// static ALLOC: memspan::CountingAllocator = memspan::CountingAllocator::system();
/// ```
#[derive(Debug, Default)]
pub struct CountingAllocator<A = System> {
    inner: A,
}

impl CountingAllocator<System> {
    /// Counting over the system allocator.
    pub const fn system() -> Self {
        CountingAllocator { inner: System }
    }
}

impl<A> CountingAllocator<A> {
    /// Counting over any allocator, e.g. `tikv_jemallocator::Jemalloc`.
    pub const fn new(inner: A) -> Self {
        CountingAllocator { inner }
    }
}

// SAFETY: every method forwards to the inner allocator with the caller's arguments unchanged; the bookkeeping
// never allocates and never touches the returned memory.
unsafe impl<A: GlobalAlloc> GlobalAlloc for CountingAllocator<A> {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = self.inner.alloc(layout);
        if !p.is_null() {
            on_alloc(layout.size());
        }
        p
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = self.inner.alloc_zeroed(layout);
        if !p.is_null() {
            on_alloc(layout.size());
        }
        p
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        self.inner.dealloc(ptr, layout);
        on_free(layout.size());
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = self.inner.realloc(ptr, layout, new_size);
        if !p.is_null() {
            // A move to a new size is a free of the old block and an allocation of the new one, which keeps
            // allocated - freed equal to the request's net growth.
            on_free(layout.size());
            on_alloc(new_size);
        }
        p
    }
}
