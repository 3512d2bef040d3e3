//! The per-request guard: one span per inference request with the MemorySpan attributes.

use std::future::Future;
use std::sync::Arc;

use opentelemetry::trace::{Span as _, SpanKind, Tracer as _};
use opentelemetry::KeyValue;

use crate::attributes;
use crate::probe::Readings;
use crate::scope::{Instrumented, Scope};
use crate::setup::Inner;

/// `gen_ai.operation.name` (semantic conventions).
pub const GEN_AI_OPERATION_NAME: &str = "gen_ai.operation.name";
/// `gen_ai.request.model` (semantic conventions).
pub const GEN_AI_REQUEST_MODEL: &str = "gen_ai.request.model";
/// `gen_ai.usage.input_tokens` (semantic conventions).
pub const GEN_AI_USAGE_INPUT_TOKENS: &str = "gen_ai.usage.input_tokens";
/// `gen_ai.usage.output_tokens` (semantic conventions).
pub const GEN_AI_USAGE_OUTPUT_TOKENS: &str = "gen_ai.usage.output_tokens";

/// One inference request in flight. The span starts when the guard is made (with the "before" readings) and
/// ends, with the "after" readings, on [`RequestGuard::finish`] or when the guard is dropped, so an early return
/// or a cancelled future still reports.
pub struct RequestGuard {
    inner: Arc<Inner>,
    span: opentelemetry_sdk::trace::Span,
    pub(crate) scope: Scope,
}

/// Byte counts are `u64` in the probes and `i64` in OTLP; nothing real reaches 2^63 bytes, and a value that did
/// would be dropped by the processor as absurd rather than wrapped to a negative number here.
fn bytes(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl RequestGuard {
    pub(crate) fn start(inner: &Arc<Inner>, operation: &str, model: &str) -> RequestGuard {
        let mut before = Readings::default();
        for p in inner.probes.iter() {
            p.read_start(&mut before);
        }
        let mut attrs = Vec::with_capacity(4);
        attrs.push(KeyValue::new(GEN_AI_OPERATION_NAME, operation.to_string()));
        attrs.push(KeyValue::new(GEN_AI_REQUEST_MODEL, model.to_string()));
        if let Some(cohort) = &inner.cohort {
            attrs.push(KeyValue::new(attributes::COHORT, cohort.clone()));
        }
        if let Some(rss) = before.rss {
            attrs.push(KeyValue::new(attributes::RSS_START, bytes(rss)));
        }
        // INTERNAL: the GenAI conventions use CLIENT for a call to a remote model and INTERNAL when the model runs
        // in the instrumented process, which is what an inference service does; the service's HTTP/gRPC server
        // span (if any) is the SERVER span and the parent of this one.
        let span = inner
            .tracer
            .span_builder(format!("{operation} {model}"))
            .with_kind(SpanKind::Internal)
            .with_attributes(attrs)
            .start(&inner.tracer);
        RequestGuard {
            inner: Arc::clone(inner),
            span,
            scope: Scope::new(),
        }
    }

    /// Adds any attribute to the request's span.
    pub fn set_attribute(&mut self, kv: KeyValue) {
        self.span.set_attribute(kv);
    }

    /// Token usage, as `gen_ai.usage.input_tokens` / `gen_ai.usage.output_tokens`.
    pub fn record_tokens(&mut self, input: u64, output: u64) {
        self.span.set_attributes([
            KeyValue::new(GEN_AI_USAGE_INPUT_TOKENS, bytes(input)),
            KeyValue::new(GEN_AI_USAGE_OUTPUT_TOKENS, bytes(output)),
        ]);
    }

    /// The request's allocation scope, to hand to work the request fans out to.
    pub fn scope(&self) -> Scope {
        self.scope.clone()
    }

    /// The span's context, for links or for parenting spans the service creates itself.
    pub fn span_context(&self) -> &opentelemetry::trace::SpanContext {
        self.span.span_context()
    }

    /// Attributes every poll of `fut` to this request and finishes the guard when `fut` completes or is dropped.
    ///
    /// To record what the future returns (token counts, say) before the span ends, keep the guard and attribute
    /// the future through its scope instead:
    ///
    /// ```no_run
    /// # async fn generate() -> (String, u64, u64) { (String::new(), 0, 0) }
    /// # async fn serve(memspan: memspan::Memspan) {
    /// let mut request = memspan.request("chat", "llama-3-8b");
    /// let (answer, input, output) = request.scope().wrap(generate()).await;
    /// request.record_tokens(input, output);
    /// request.finish();
    /// # drop(answer); }
    /// ```
    pub fn instrument<F: Future>(self, fut: F) -> Instrumented<F> {
        Instrumented::new(self, fut)
    }

    /// Ends the request: reads the "after" probes and ends the span.
    pub fn finish(self) {
        drop(self);
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let mut after = Readings::default();
        for p in self.inner.probes.iter() {
            p.read(&mut after);
        }
        let mut attrs: [Option<KeyValue>; 8] = Default::default();
        let fields = [
            (attributes::RSS_END, after.rss),
            (attributes::HEAP_ALLOCATED, after.heap_allocated),
            (attributes::HEAP_RESIDENT, after.heap_resident),
            (attributes::HEAP_RETAINED, after.heap_retained),
            (attributes::LIMIT, after.limit),
            (attributes::GPU_USED, after.gpu_used),
            (
                attributes::REQUEST_ALLOCATED,
                request_allocated(&self.scope),
            ),
            (attributes::REQUEST_FREED, request_freed(&self.scope)),
        ];
        for (slot, (key, value)) in attrs.iter_mut().zip(fields) {
            *slot = value.map(|v| KeyValue::new(key, bytes(v)));
        }
        self.span.set_attributes(attrs.into_iter().flatten());
        self.span.end();
    }
}

/// The scope's totals exist only where the counting allocator is the global allocator; elsewhere they are left
/// out (a zero would read as "this request allocated nothing").
#[cfg(feature = "counting-allocator")]
fn request_allocated(scope: &Scope) -> Option<u64> {
    crate::alloc::counting_allocator_installed().then(|| scope.allocated())
}

#[cfg(feature = "counting-allocator")]
fn request_freed(scope: &Scope) -> Option<u64> {
    crate::alloc::counting_allocator_installed().then(|| scope.freed())
}

#[cfg(not(feature = "counting-allocator"))]
fn request_allocated(_: &Scope) -> Option<u64> {
    None
}

#[cfg(not(feature = "counting-allocator"))]
fn request_freed(_: &Scope) -> Option<u64> {
    None
}
