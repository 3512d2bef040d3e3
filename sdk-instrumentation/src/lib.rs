//! memspan: per-request memory on OpenTelemetry spans for inference services.
//!
//! A service adds a few lines and every inference request becomes a span named "{operation} {model}" with the
//! `gen_ai.*` attributes, its cohort and the MemorySpan attributes (RSS before and after, allocator figures, the
//! cgroup limit, bytes the request itself allocated and freed), exported over OTLP with the process memory
//! metrics. The `memdrift` processor reads exactly these names.
//!
//! ```no_run
//! // With the `counting-allocator` feature, per-request allocated/freed bytes need the counting allocator:
//! // #[global_allocator]
//! // static ALLOC: memspan::CountingAllocator = memspan::CountingAllocator::system();
//!
//! # async fn generate(prompt: &str) -> (String, u64) { (prompt.to_string(), 1) }
//! # #[cfg(feature = "otlp")]
//! # async fn serve(prompt: String) -> Result<(), Box<dyn std::error::Error>> {
//! let memspan = memspan::init()?; // OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_SERVICE_NAME, MEMSPAN_COHORT, ...
//! let mut request = memspan.request("chat", "llama-3-8b");
//! request.record_tokens(prompt.len() as u64, 0);
//! let (answer, _tokens) = request.instrument(generate(&prompt)).await; // every poll attributed, span ended
//! println!("{answer}");
//! memspan.shutdown()?; // at exit: flush, bounded in time
//! # Ok(()) }
//! ```
//!
//! While the request's future is polled, the request span is the current OpenTelemetry context, so spans the
//! service starts inside it are its children. Work a request fans out to keeps its attribution (and that context)
//! with [`spawn`] / [`spawn_blocking`] (tokio), or [`Scope::wrap`] / [`Scope::bind`] for other executors and
//! thread pools.
//!
//! `memspan::init` and `Builder` (feature `otlp`, on by default) set up the providers and OTLP export. A service that
//! already has its OpenTelemetry pipeline skips them and builds an [`Instrumentation`] over its own tracer:
//!
//! ```no_run
//! # fn service_tracer() -> opentelemetry::global::BoxedTracer { opentelemetry::global::tracer("svc") }
//! # async fn generate() {}
//! # async fn serve() {
//! let memspan = memspan::Instrumentation::builder(service_tracer()).cohort("canary").build();
//! memspan.request("chat", "llama-3-8b").instrument(generate()).await;
//! # }
//! ```
//!
//! See the crate README for the design and its costs.

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

#[cfg(feature = "counting-allocator")]
mod alloc;
mod instrumentation;
mod metrics;
pub mod probe;
mod request;
mod scope;
#[cfg(feature = "otlp")]
mod setup;

#[cfg(feature = "counting-allocator")]
pub use alloc::{counting_allocator_installed, live_bytes, CountingAllocator};
pub use instrumentation::{Instrumentation, InstrumentationBuilder};
pub use probe::{Probe, Readings};
pub use request::{
    Instrumented, RequestGuard, GEN_AI_OPERATION_NAME, GEN_AI_REQUEST_MODEL,
    GEN_AI_USAGE_INPUT_TOKENS, GEN_AI_USAGE_OUTPUT_TOKENS,
};
#[cfg(feature = "tokio")]
pub use scope::{spawn, spawn_blocking};
pub use scope::{Scope, ScopeGuard, Scoped};
#[cfg(feature = "otlp")]
pub use setup::{
    init, Builder, InitError, Memspan, Protocol, ShutdownError, ERROR_LOG_INTERVAL,
    OTEL_INTERNAL_LOGS_OFF, SHUTDOWN_BOUND,
};
/// jemalloc, to install directly or under `CountingAllocator::new` (feature `counting-allocator`).
#[cfg(feature = "jemalloc")]
pub use tikv_jemallocator::Jemalloc;
