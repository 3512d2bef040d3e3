//! jemalloc statistics. Reading them needs an `epoch` advance, which takes a global lock inside jemalloc and
//! costs microseconds, so a background thread advances it every interval and caches the figures; requests read
//! the cache.

use std::sync::{Arc, Weak};
use std::time::Duration;

use tikv_jemalloc_ctl::{epoch, stats};

use super::{CachedValue, Probe, Readings};

#[derive(Debug)]
struct Cache {
    allocated: CachedValue,
    resident: CachedValue,
    retained: CachedValue,
}

/// jemalloc's `stats.allocated`, `stats.resident`, `stats.retained`, sampled in the background. Only meaningful
/// when jemalloc is the global allocator (directly or under `CountingAllocator::new`).
#[derive(Debug, Clone)]
pub struct JemallocProbe {
    cache: Arc<Cache>,
}

const INTERVAL: Duration = Duration::from_secs(1);

impl JemallocProbe {
    /// Samples every second.
    pub fn start_default() -> JemallocProbe {
        JemallocProbe::start(INTERVAL)
    }

    /// Samples every `interval`, on a thread that ends once the probe is gone.
    pub fn start(interval: Duration) -> JemallocProbe {
        let cache = Arc::new(Cache {
            allocated: CachedValue::absent(),
            resident: CachedValue::absent(),
            retained: CachedValue::absent(),
        });
        sample(&cache);
        let weak = Arc::downgrade(&cache);
        let spawned = std::thread::Builder::new()
            .name("memspan-jemalloc".into())
            .spawn(move || sampler(weak, interval));
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "memspan: cannot start the jemalloc sampler; heap figures stay as read at start");
        }
        JemallocProbe { cache }
    }
}

fn sample(cache: &Cache) {
    if epoch::advance().is_err() {
        return;
    }
    cache
        .allocated
        .set(stats::allocated::read().ok().map(|v| v as u64));
    cache
        .resident
        .set(stats::resident::read().ok().map(|v| v as u64));
    cache
        .retained
        .set(stats::retained::read().ok().map(|v| v as u64));
}

fn sampler(weak: Weak<Cache>, interval: Duration) {
    loop {
        std::thread::sleep(interval);
        match weak.upgrade() {
            Some(cache) => sample(&cache),
            None => return,
        }
    }
}

impl Probe for JemallocProbe {
    fn name(&self) -> &'static str {
        "jemalloc"
    }
    fn read(&self, out: &mut Readings) {
        if let Some(v) = self.cache.allocated.get() {
            out.heap_allocated = Some(v);
        }
        if let Some(v) = self.cache.resident.get() {
            out.heap_resident = Some(v);
        }
        if let Some(v) = self.cache.retained.get() {
            out.heap_retained = Some(v);
        }
    }
}
