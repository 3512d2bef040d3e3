//! Memory probes: one small trait, and the built-in sources (RSS, cgroup limit, allocator, GPU).
//!
//! A probe fills only what it can measure. A field left `None` leaves its span attribute out, so a dashboard
//! never mistakes "cannot know" for zero bytes.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub mod cgroup;
#[cfg(feature = "jemalloc")]
mod jemalloc;
#[cfg(feature = "nvml")]
mod nvml;

pub use cgroup::CgroupProbe;
#[cfg(feature = "jemalloc")]
pub use jemalloc::JemallocProbe;
#[cfg(feature = "nvml")]
pub use nvml::NvmlProbe;

/// What the probes measured at one instant. Bytes; `None` when no probe could measure it.
#[derive(Default, Clone, Copy, Debug, PartialEq, Eq)]
pub struct Readings {
    /// Process resident set size.
    pub rss: Option<u64>,
    /// Allocator live bytes.
    pub heap_allocated: Option<u64>,
    /// Allocator resident bytes.
    pub heap_resident: Option<u64>,
    /// Allocator retained (mapped, returned to the allocator, not to the OS) bytes.
    pub heap_retained: Option<u64>,
    /// The effective memory limit (cgroup); `None` when unlimited or unknown.
    pub limit: Option<u64>,
    /// Device memory used by this process.
    pub gpu_used: Option<u64>,
}

/// A source of memory readings. `read` runs on the request path at every request end, so it must be cheap: a
/// probe whose source is slow (NVML, jemalloc's epoch, cgroup files) samples in the background and serves a
/// cached value here.
pub trait Probe: Send + Sync + 'static {
    /// A short name for logs.
    fn name(&self) -> &'static str;
    /// Fills what this probe can measure at request end; never writes zero for "unknown".
    fn read(&self, out: &mut Readings);
    /// Fills what this probe measures at request start (only `rss` is used: `memspan.rss.start`). Most probes
    /// describe the process at the end of the request only, so the default does nothing.
    fn read_start(&self, out: &mut Readings) {
        let _ = out;
    }
}

/// A shared probe is a probe: the service keeps a handle on its own source (to feed it, or to read it for
/// something else) while memspan reads it per request.
impl<P: Probe> Probe for std::sync::Arc<P> {
    fn name(&self) -> &'static str {
        (**self).name()
    }
    fn read(&self, out: &mut Readings) {
        (**self).read(out)
    }
    fn read_start(&self, out: &mut Readings) {
        (**self).read_start(out)
    }
}

/// Resident set size from `/proc/self/statm`, through a descriptor kept open so a reading is one `pread`.
///
/// One `pread` of statm costs about 1.4 us (BENCHMARKS.md), and a request needs two readings; that alone would
/// be twice the per-request budget. So the probe shares its latest reading between requests: a reading at most
/// `max_age` old (default [`RssProbe::DEFAULT_MAX_AGE`], 1 ms) is reused, and when it is older, one request
/// (elected by a compare-and-swap) reads statm again while the others keep the previous value. Under load the
/// cost per request is a clock read and two atomic loads; at low request rates every request reads statm, which
/// costs nothing that matters when the process is idle. `memspan.rss.start` / `.end` are therefore the RSS as
/// of at most `max_age` before the request's start / end.
#[derive(Debug)]
pub struct RssProbe {
    statm: File,
    page_size: u64,
    max_age_ns: u64,
    anchor: Instant,
    /// Nanoseconds since `anchor` of the latest reading; `u64::MAX` before the first.
    read_at: AtomicU64,
    /// The latest reading, in bytes; `u64::MAX` when it failed.
    last: AtomicU64,
}

/// Both statm sizes, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Statm {
    /// Total program size (virtual memory).
    pub virtual_bytes: u64,
    /// Resident set size.
    pub resident_bytes: u64,
}

impl RssProbe {
    /// `None` where `/proc/self/statm` cannot be opened (not Linux, no procfs).
    pub fn new() -> Option<RssProbe> {
        let statm = File::open("/proc/self/statm").ok()?;
        // SAFETY: sysconf has no memory-safety preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        let page_size = u64::try_from(page).ok().filter(|p| *p > 0)?;
        let probe = RssProbe {
            statm,
            page_size,
            max_age_ns: RssProbe::DEFAULT_MAX_AGE.as_nanos() as u64,
            anchor: Instant::now(),
            read_at: AtomicU64::new(u64::MAX),
            last: AtomicU64::new(u64::MAX),
        };
        probe.statm()?;
        Some(probe)
    }

    /// How long a shared reading is reused; see the type's documentation.
    pub const DEFAULT_MAX_AGE: Duration = Duration::from_millis(1);

    /// Reuses a reading for at most `max_age`; zero reads statm on every request.
    pub fn with_max_age(mut self, max_age: Duration) -> RssProbe {
        self.max_age_ns = u64::try_from(max_age.as_nanos()).unwrap_or(u64::MAX);
        self
    }

    /// The RSS as of at most `max_age` ago, reading statm when the shared reading is older.
    pub fn rss_shared(&self) -> Option<u64> {
        let now = u64::try_from(self.anchor.elapsed().as_nanos()).unwrap_or(u64::MAX - 1);
        let at = self.read_at.load(Ordering::Acquire);
        let fresh = at != u64::MAX && now.saturating_sub(at) < self.max_age_ns;
        if !fresh
            && self
                .read_at
                .compare_exchange(at, now, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            let v = self.rss();
            self.last.store(v.unwrap_or(u64::MAX), Ordering::Release);
            return v;
        }
        match self.last.load(Ordering::Acquire) {
            // Another thread won the election for the very first reading and has not stored it yet.
            u64::MAX => self.rss(),
            v => Some(v),
        }
    }

    /// One reading of statm; no allocation.
    pub fn statm(&self) -> Option<Statm> {
        let mut buf = [0u8; 128];
        let n = self.statm.read_at(&mut buf, 0).ok()?;
        let (size, resident) = parse_statm(buf.get(..n)?)?;
        Some(Statm {
            virtual_bytes: size.checked_mul(self.page_size)?,
            resident_bytes: resident.checked_mul(self.page_size)?,
        })
    }

    /// Resident set size in bytes.
    pub fn rss(&self) -> Option<u64> {
        self.statm().map(|s| s.resident_bytes)
    }
}

/// The first two fields of statm (size and resident, in pages).
pub(crate) fn parse_statm(buf: &[u8]) -> Option<(u64, u64)> {
    let mut fields = buf.split(|b| *b == b' ');
    let size = parse_u64(fields.next()?)?;
    let resident = parse_u64(fields.next()?)?;
    Some((size, resident))
}

fn parse_u64(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |acc, d| {
        if d.is_ascii_digit() {
            acc.checked_mul(10)?.checked_add(u64::from(d - b'0'))
        } else {
            None
        }
    })
}

impl Probe for RssProbe {
    fn name(&self) -> &'static str {
        "rss"
    }
    fn read(&self, out: &mut Readings) {
        if let Some(rss) = self.rss_shared() {
            out.rss = Some(rss);
        }
    }
    fn read_start(&self, out: &mut Readings) {
        self.read(out);
    }
}

/// Live heap bytes from the [`crate::CountingAllocator`]; reads nothing when it is not the global allocator.
#[cfg(feature = "counting-allocator")]
#[derive(Debug, Default, Clone, Copy)]
pub struct CountingAllocatorProbe;

#[cfg(feature = "counting-allocator")]
impl Probe for CountingAllocatorProbe {
    fn name(&self) -> &'static str {
        "counting-allocator"
    }
    fn read(&self, out: &mut Readings) {
        if let Some(live) = crate::alloc::live_bytes() {
            out.heap_allocated = Some(live);
        }
    }
}

/// A `u64` cache where `u64::MAX` stands for "absent", so background samplers can publish optional readings
/// with one relaxed store and the request path can read them with one load.
#[derive(Debug)]
pub(crate) struct CachedValue(AtomicU64);

impl CachedValue {
    pub(crate) const fn absent() -> CachedValue {
        CachedValue(AtomicU64::new(u64::MAX))
    }
    pub(crate) fn set(&self, v: Option<u64>) {
        self.0.store(
            v.filter(|v| *v != u64::MAX).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }
    pub(crate) fn get(&self) -> Option<u64> {
        let v = self.0.load(Ordering::Relaxed);
        (v != u64::MAX).then_some(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statm_fields_parse_and_reject_garbage() {
        assert_eq!(parse_statm(b"765 418 390 5 0 123 0\n"), Some((765, 418)));
        assert_eq!(parse_statm(b"765"), None);
        assert_eq!(parse_statm(b"7a5 418 0"), None);
        assert_eq!(parse_statm(b""), None);
        assert_eq!(parse_statm(b"99999999999999999999999 1 0"), None);
    }

    #[test]
    fn cached_value_round_trips_absent_and_present() {
        let c = CachedValue::absent();
        assert_eq!(c.get(), None);
        c.set(Some(0));
        assert_eq!(c.get(), Some(0));
        c.set(Some(42));
        assert_eq!(c.get(), Some(42));
        c.set(None);
        assert_eq!(c.get(), None);
    }
}
