//! The memory signals memdrift understands, and the MemorySpan attribute names (the contract in DESIGN.md).
//!
//! A signal is one measured quantity. Span attributes map onto signals one to one; OTLP metrics map onto them
//! through the pipeline's metric table, so a Go service's `go.memory.used` gauge can feed the same heap signal as
//! an SDK's `memspan.heap.allocated` attribute.

/// Span attribute names of the MemorySpan convention. All integers, in bytes.
pub mod attr {
    pub const RSS_START: &str = "memspan.rss.start";
    pub const RSS_END: &str = "memspan.rss.end";
    pub const HEAP_ALLOCATED: &str = "memspan.heap.allocated";
    pub const HEAP_RESIDENT: &str = "memspan.heap.resident";
    pub const HEAP_RETAINED: &str = "memspan.heap.retained";
    pub const REQUEST_ALLOCATED: &str = "memspan.request.allocated";
    pub const REQUEST_FREED: &str = "memspan.request.freed";
    pub const LIMIT: &str = "memspan.limit";
    pub const GPU_USED: &str = "memspan.gpu.used";
    pub const COHORT: &str = "memspan.cohort";
}

/// One memory quantity. The discriminant indexes [`SignalValues`].
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub enum Signal {
    RssStart,
    RssEnd,
    /// `rss.end - rss.start` of one request: derived, and the only signal that may be negative.
    RssDelta,
    HeapAllocated,
    HeapResident,
    HeapRetained,
    RequestAllocated,
    RequestFreed,
    Limit,
    GpuUsed,
    ProcessMemoryUsage,
    ContainerWorkingSet,
    ContainerUsage,
    /// Go: goroutine stacks (`go.memory.used` with `go.memory.type` = `stack`).
    GoStack,
    /// Go: live goroutines (`go.goroutine.count`); a count, not bytes.
    Goroutines,
    /// Go: the heap size the next collection is due at (`go.memory.gc.goal`).
    GcGoal,
    /// Go: the runtime's soft memory limit, GOMEMLIMIT (`go.memory.limit`); absent when unset.
    GoMemoryLimit,
}

impl Signal {
    pub const COUNT: usize = 17;
    pub const ALL: [Signal; Signal::COUNT] = [
        Signal::RssStart,
        Signal::RssEnd,
        Signal::RssDelta,
        Signal::HeapAllocated,
        Signal::HeapResident,
        Signal::HeapRetained,
        Signal::RequestAllocated,
        Signal::RequestFreed,
        Signal::Limit,
        Signal::GpuUsed,
        Signal::ProcessMemoryUsage,
        Signal::ContainerWorkingSet,
        Signal::ContainerUsage,
        Signal::GoStack,
        Signal::Goroutines,
        Signal::GcGoal,
        Signal::GoMemoryLimit,
    ];

    /// The name used in events, metrics labels and pipeline files.
    pub fn name(self) -> &'static str {
        match self {
            Signal::RssStart => attr::RSS_START,
            Signal::RssEnd => attr::RSS_END,
            Signal::RssDelta => "memspan.rss.delta",
            Signal::HeapAllocated => attr::HEAP_ALLOCATED,
            Signal::HeapResident => attr::HEAP_RESIDENT,
            Signal::HeapRetained => attr::HEAP_RETAINED,
            Signal::RequestAllocated => attr::REQUEST_ALLOCATED,
            Signal::RequestFreed => attr::REQUEST_FREED,
            Signal::Limit => attr::LIMIT,
            Signal::GpuUsed => attr::GPU_USED,
            Signal::ProcessMemoryUsage => "process.memory.usage",
            Signal::ContainerWorkingSet => "container.memory.working_set",
            Signal::ContainerUsage => "container.memory.usage",
            Signal::GoStack => "go.memory.used.stack",
            Signal::Goroutines => "go.goroutine.count",
            Signal::GcGoal => "go.memory.gc.goal",
            Signal::GoMemoryLimit => "go.memory.limit",
        }
    }

    pub fn from_name(name: &str) -> Option<Signal> {
        Signal::ALL.into_iter().find(|s| s.name() == name)
    }

    /// The signal a span attribute carries, if it is one of ours. Derived signals have no attribute. Takes the
    /// key as bytes, as it comes off the wire.
    pub fn from_span_attribute(key: &[u8]) -> Option<Signal> {
        if !key.starts_with(b"memspan.") {
            return None;
        }
        // Every memspan.* signal is an attribute but the derived delta.
        Signal::ALL
            .into_iter()
            .find(|s| *s != Signal::RssDelta && s.name().as_bytes() == key)
    }

    /// Per-request quantities are independent across requests; process-level levels are autocorrelated.
    /// Detectors choose their statistics by this.
    pub fn is_per_request(self) -> bool {
        matches!(
            self,
            Signal::RssDelta | Signal::RequestAllocated | Signal::RequestFreed
        )
    }
}

impl std::fmt::Display for Signal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

// SignalValues keeps presence in a u32.
const _: () = assert!(Signal::COUNT <= 32);

/// The values one span or metric point carried, at most one per signal. Fixed size, no allocation.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct SignalValues {
    present: u32,
    values: [f64; Signal::COUNT],
}

impl SignalValues {
    pub fn set(&mut self, signal: Signal, value: f64) {
        self.present |= 1 << signal as u32;
        self.values[signal as usize] = value;
    }

    pub fn get(&self, signal: Signal) -> Option<f64> {
        (self.present & (1 << signal as u32) != 0).then(|| self.values[signal as usize])
    }

    pub fn is_empty(&self) -> bool {
        self.present == 0
    }

    pub fn len(&self) -> usize {
        self.present.count_ones() as usize
    }

    pub fn iter(&self) -> impl Iterator<Item = (Signal, f64)> + '_ {
        Signal::ALL
            .into_iter()
            .filter_map(move |s| self.get(s).map(|v| (s, v)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_are_distinct() {
        let mut names: Vec<_> = Signal::ALL.iter().map(|s| s.name()).collect();
        for s in Signal::ALL {
            assert_eq!(Signal::from_name(s.name()), Some(s));
        }
        names.sort();
        names.dedup();
        assert_eq!(names.len(), Signal::COUNT);
        assert_eq!(Signal::ALL.len(), Signal::COUNT);
    }

    #[test]
    fn values_keep_presence_apart_from_zero() {
        let mut v = SignalValues::default();
        assert!(v.is_empty());
        v.set(Signal::RssEnd, 0.0);
        assert_eq!(v.get(Signal::RssEnd), Some(0.0));
        assert_eq!(v.get(Signal::RssStart), None);
        assert_eq!(v.iter().collect::<Vec<_>>(), vec![(Signal::RssEnd, 0.0)]);
    }
}
