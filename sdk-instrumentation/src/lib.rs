//! memspan: per-request memory on OpenTelemetry spans for inference services.
//!
//! This crate will wrap each inference request and record the MemorySpan attributes below on its span. Today it
//! holds the attribute names, the contract shared with the `memdrift` processor (DESIGN.md); the guard, the
//! probes and the OTLP setup are tracked in their own issue.

/// MemorySpan span attribute names. Integers, in bytes; each optional, and a probe that cannot measure leaves
/// its attribute out rather than writing zero.
pub mod attributes {
    /// Process resident set size at request start.
    pub const RSS_START: &str = "memspan.rss.start";
    /// Process resident set size at request end.
    pub const RSS_END: &str = "memspan.rss.end";
    /// Allocator live bytes at request end (jemalloc `stats.allocated`, or a counting allocator).
    pub const HEAP_ALLOCATED: &str = "memspan.heap.allocated";
    /// Allocator resident bytes at request end (`stats.resident`).
    pub const HEAP_RESIDENT: &str = "memspan.heap.resident";
    /// Allocator retained (mapped but returned) bytes at request end.
    pub const HEAP_RETAINED: &str = "memspan.heap.retained";
    /// Bytes allocated by this request's own code.
    pub const REQUEST_ALLOCATED: &str = "memspan.request.allocated";
    /// Bytes freed by this request's own code.
    pub const REQUEST_FREED: &str = "memspan.request.freed";
    /// The container / cgroup memory limit; absent when unlimited.
    pub const LIMIT: &str = "memspan.limit";
    /// Device memory used by the process, where a GPU is present.
    pub const GPU_USED: &str = "memspan.gpu.used";
    /// The A/B cohort label.
    pub const COHORT: &str = "memspan.cohort";

    /// Every byte-valued attribute.
    pub const ALL_BYTES: [&str; 9] = [
        RSS_START,
        RSS_END,
        HEAP_ALLOCATED,
        HEAP_RESIDENT,
        HEAP_RETAINED,
        REQUEST_ALLOCATED,
        REQUEST_FREED,
        LIMIT,
        GPU_USED,
    ];
}
