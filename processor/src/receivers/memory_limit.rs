//! The memory limiter, in the Collector's sense: memdrift watches its own resident memory and, above a soft
//! limit, refuses new data with the retryable answers (HTTP 503 + Retry-After, gRPC UNAVAILABLE), so senders back
//! off and retry instead of memdrift being OOM-killed with what it had accepted. Nothing accepted is dropped by
//! it; below the limit again (with a little hysteresis), data is taken as before.
//!
//! The hard limit is `limit_mib`, or `limit_percentage` of the container's memory limit (cgroup v2
//! `memory.max`, or v1 `memory.limit_in_bytes`); the soft limit is the hard limit less `spike_limit_percentage`
//! of it. Without a configured or container limit the limiter is off.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How often resident memory is read.
const CHECK_INTERVAL: Duration = Duration::from_millis(250);
/// Data is taken again once memory is this fraction of the soft limit.
const RESUME_FRACTION: f64 = 0.95;

/// Settings, as `receivers.otlp.memory_limiter`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MemoryLimits {
    pub limit_mib: Option<u64>,
    /// Of the container limit, when `limit_mib` is not set. Default 80.
    pub limit_percentage: u8,
    /// Of the hard limit: the soft limit is the hard limit less this. Default 20.
    pub spike_limit_percentage: u8,
}

impl Default for MemoryLimits {
    fn default() -> Self {
        MemoryLimits {
            limit_mib: None,
            limit_percentage: 80,
            spike_limit_percentage: 20,
        }
    }
}

/// The limiter's state, shared by the receivers (which ask [`MemoryLimiter::over`]) and its sampling task.
#[derive(Debug)]
pub struct MemoryLimiter {
    /// The soft limit, in bytes.
    pub soft_bytes: u64,
    pub hard_bytes: u64,
    rss: AtomicU64,
    over: AtomicBool,
}

impl MemoryLimiter {
    /// The limiter for `limits` and the container limit `container` (bytes); `None` when there is no limit.
    pub fn new(limits: MemoryLimits, container: Option<u64>) -> Option<MemoryLimiter> {
        let hard = match limits.limit_mib {
            Some(mib) => mib.saturating_mul(1 << 20),
            None => container? / 100 * u64::from(limits.limit_percentage.min(100)),
        };
        let spike = hard / 100 * u64::from(limits.spike_limit_percentage.min(100));
        Some(MemoryLimiter {
            soft_bytes: hard - spike,
            hard_bytes: hard,
            rss: AtomicU64::new(0),
            over: AtomicBool::new(false),
        })
    }

    /// Above the soft limit at the last reading: new data is refused.
    pub fn over(&self) -> bool {
        self.over.load(Ordering::Acquire)
    }

    /// Resident memory at the last reading.
    pub fn rss(&self) -> u64 {
        self.rss.load(Ordering::Acquire)
    }

    /// Takes a reading of resident memory.
    pub fn observe(&self, rss: u64) {
        self.rss.store(rss, Ordering::Release);
        let was = self.over();
        let now = if was {
            (rss as f64) >= self.soft_bytes as f64 * RESUME_FRACTION
        } else {
            rss >= self.soft_bytes
        };
        if now != was {
            self.over.store(now, Ordering::Release);
            if now {
                tracing::warn!(
                    rss_mib = rss >> 20,
                    soft_limit_mib = self.soft_bytes >> 20,
                    "memory above the limiter's soft limit: refusing new data (senders retry) until it falls"
                );
            } else {
                tracing::info!(
                    rss_mib = rss >> 20,
                    "memory below the soft limit again: taking data"
                );
            }
        }
    }

    /// Reads resident memory until the limiter is dropped by everyone else.
    pub async fn run(self: Arc<Self>) {
        let mut tick = tokio::time::interval(CHECK_INTERVAL);
        while Arc::strong_count(&self) > 1 {
            tick.tick().await;
            if let Some(rss) = resident_bytes() {
                self.observe(rss);
            }
        }
    }
}

/// This process's resident memory (Linux `/proc/self/statm`).
pub fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages.saturating_mul(4096))
}

/// The container's memory limit: cgroup v2, then v1; "max" and the v1 "unlimited" value read as none.
pub fn container_limit() -> Option<u64> {
    [
        "/sys/fs/cgroup/memory.max",
        "/sys/fs/cgroup/memory/memory.limit_in_bytes",
    ]
    .iter()
    .find_map(|path| std::fs::read_to_string(path).ok())
    .and_then(|text| text.trim().parse::<u64>().ok())
    .filter(|&bytes| bytes < 1 << 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_come_from_the_setting_or_the_container() {
        let d = MemoryLimits::default();
        assert!(
            MemoryLimiter::new(d, None).is_none(),
            "no limit, no limiter"
        );
        let l = MemoryLimiter::new(d, Some(1000 << 20)).expect("a container limit");
        assert_eq!(l.hard_bytes, 800 << 20);
        assert_eq!(l.soft_bytes, 640 << 20);
        let set = MemoryLimits {
            limit_mib: Some(100),
            ..d
        };
        let l = MemoryLimiter::new(set, Some(1000 << 20)).expect("set");
        assert_eq!(l.hard_bytes, 100 << 20);
    }

    #[test]
    fn refuses_above_the_soft_limit_and_takes_again_below_it_with_hysteresis() {
        let l = MemoryLimiter::new(
            MemoryLimits {
                limit_mib: Some(100),
                ..MemoryLimits::default()
            },
            None,
        )
        .expect("limiter");
        l.observe(70 << 20);
        assert!(!l.over());
        l.observe(81 << 20);
        assert!(l.over());
        // Just under the soft limit (80 MiB) is not enough to resume...
        l.observe(79 << 20);
        assert!(l.over());
        // ...under 95 % of it is.
        l.observe(75 << 20);
        assert!(!l.over());
    }
}
