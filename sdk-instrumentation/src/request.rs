//! The per-request guard: one span per inference request with the MemorySpan attributes, current while the
//! request's work runs.

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;

use opentelemetry::trace::{SpanBuilder, SpanContext, SpanKind, TraceContextExt as _};
use opentelemetry::{Context, KeyValue};

use crate::attributes;
use crate::instrumentation::Instrumentation;
use crate::probe::Readings;
use crate::scope::Scope;

/// `gen_ai.operation.name` (semantic conventions).
pub const GEN_AI_OPERATION_NAME: &str = "gen_ai.operation.name";
/// `gen_ai.request.model` (semantic conventions).
pub const GEN_AI_REQUEST_MODEL: &str = "gen_ai.request.model";
/// `gen_ai.usage.input_tokens` (semantic conventions).
pub const GEN_AI_USAGE_INPUT_TOKENS: &str = "gen_ai.usage.input_tokens";
/// `gen_ai.usage.output_tokens` (semantic conventions).
pub const GEN_AI_USAGE_OUTPUT_TOKENS: &str = "gen_ai.usage.output_tokens";

impl Instrumentation {
    /// Starts a request: span "{operation} {model}" with the `gen_ai.*` attributes, the cohort and the "before"
    /// readings. The span's parent is the current OpenTelemetry context.
    pub fn request(&self, operation: &str, model: &str) -> RequestGuard {
        RequestGuard::start(self, operation, model)
    }
}

/// One inference request in flight. The span starts when the guard is made (with the "before" readings) and
/// ends, with the "after" readings, on [`RequestGuard::finish`] or when the guard is dropped, so an early return
/// or a cancelled future still reports. While the request's work runs ([`RequestGuard::instrument`], or the
/// scope's [`Scope::wrap`], [`Scope::enter`], [`Scope::bind`]), the span is the current OpenTelemetry context, so
/// spans the service starts there are its children.
pub struct RequestGuard {
    instrumentation: Instrumentation,
    /// Holds the request's context (with its span) as well as its counters.
    scope: Scope,
    span_context: SpanContext,
}

/// Byte counts are `u64` in the probes and `i64` in OTLP; nothing real reaches 2^63 bytes, and a value that did
/// would be dropped by the processor as absurd rather than wrapped to a negative number here.
fn bytes(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl RequestGuard {
    fn start(instrumentation: &Instrumentation, operation: &str, model: &str) -> RequestGuard {
        let mut before = Readings::default();
        for p in instrumentation.probes() {
            p.read_start(&mut before);
        }
        let mut attrs = Vec::with_capacity(4);
        attrs.push(KeyValue::new(GEN_AI_OPERATION_NAME, operation.to_string()));
        attrs.push(KeyValue::new(GEN_AI_REQUEST_MODEL, model.to_string()));
        if let Some(cohort) = instrumentation.cohort_value() {
            attrs.push(KeyValue::new(attributes::COHORT, cohort.clone()));
        }
        if let Some(rss) = before.rss {
            attrs.push(KeyValue::new(attributes::RSS_START, bytes(rss)));
        }
        // INTERNAL: the GenAI conventions use CLIENT for a call to a remote model and INTERNAL when the model runs
        // in the instrumented process, which is what an inference service does; the service's HTTP/gRPC server
        // span (if any) is the SERVER span and the parent of this one.
        let builder = SpanBuilder::from_name(format!("{operation} {model}"))
            .with_kind(SpanKind::Internal)
            .with_attributes(attrs);
        let otel = Context::map_current(|parent| instrumentation.start_span(builder, parent));
        RequestGuard {
            instrumentation: instrumentation.clone(),
            span_context: otel.span().span_context().clone(),
            scope: Scope::new(otel),
        }
    }

    /// Adds any attribute to the request's span.
    pub fn set_attribute(&mut self, kv: KeyValue) {
        self.scope.context().span().set_attribute(kv);
    }

    /// Token usage, as `gen_ai.usage.input_tokens` / `gen_ai.usage.output_tokens`.
    pub fn record_tokens(&mut self, input: u64, output: u64) {
        self.scope.context().span().set_attributes([
            KeyValue::new(GEN_AI_USAGE_INPUT_TOKENS, bytes(input)),
            KeyValue::new(GEN_AI_USAGE_OUTPUT_TOKENS, bytes(output)),
        ]);
    }

    /// The request's allocation scope, to hand to work the request fans out to.
    pub fn scope(&self) -> Scope {
        self.scope.clone()
    }

    /// The span's context, for links or for parenting spans the service creates itself.
    pub fn span_context(&self) -> &SpanContext {
        &self.span_context
    }

    /// The OpenTelemetry context with the request's span, for parenting spans explicitly or for handing to work
    /// memspan does not wrap (`fut.with_context(request.context().clone())`).
    pub fn context(&self) -> &Context {
        self.scope.context()
    }

    /// Attributes every poll of `fut` to this request, with its span as the current OpenTelemetry context during
    /// each poll, and finishes the guard when `fut` completes or is dropped.
    ///
    /// To record what the future returns (token counts, say) before the span ends, keep the guard and attribute
    /// the future through its scope instead:
    ///
    /// ```no_run
    /// # async fn generate() -> (String, u64, u64) { (String::new(), 0, 0) }
    /// # async fn serve(memspan: memspan::Instrumentation) {
    /// let mut request = memspan.request("chat", "llama-3-8b");
    /// let (answer, input, output) = request.scope().wrap(generate()).await;
    /// request.record_tokens(input, output);
    /// request.finish();
    /// # drop(answer); }
    /// ```
    pub fn instrument<F: Future>(self, fut: F) -> Instrumented<F> {
        Instrumented {
            scope: self.scope.clone(),
            fut: Some(fut),
            guard: Some(self),
        }
    }

    /// Ends the request: reads the "after" probes and ends the span.
    pub fn finish(self) {
        drop(self);
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let mut after = Readings::default();
        for p in self.instrumentation.probes() {
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
        let span = self.scope.context().span();
        span.set_attributes(attrs.into_iter().flatten());
        span.end();
    }
}

pin_project_lite::pin_project! {
    /// A future attributed to a request, with the request's span current during each poll, whose guard finishes
    /// when the future completes or is dropped; see [`RequestGuard::instrument`].
    pub struct Instrumented<F> {
        scope: Scope,
        #[pin]
        fut: Option<F>,
        guard: Option<RequestGuard>,
    }

    impl<F> PinnedDrop for Instrumented<F> {
        fn drop(this: Pin<&mut Self>) {
            let mut this = this.project();
            // Dropping an unfinished future frees its buffers: that belongs to the request too. (Its allocation
            // scope only: drop glue can run while the thread's locals are torn down, where OpenTelemetry's
            // context stack is gone.)
            if this.fut.as_mut().as_pin_mut().is_some() {
                let _restore = this.scope.enter_allocation_only();
                this.fut.set(None);
            }
            if let Some(guard) = this.guard.take() {
                guard.finish();
            }
        }
    }
}

impl<F: Future> Future for Instrumented<F> {
    type Output = F::Output;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<F::Output> {
        let mut this = self.project();
        let scope: &Scope = this.scope;
        let entered = scope.enter_in(scope.context());
        let Some(fut) = this.fut.as_mut().as_pin_mut() else {
            panic!("memspan::Instrumented polled after completion");
        };
        let out = fut.poll(cx);
        if out.is_ready() {
            // The future's own state (and what it still owns) is freed inside the scope, then the totals are read.
            this.fut.set(None);
            drop(entered);
            if let Some(guard) = this.guard.take() {
                guard.finish();
            }
        }
        out
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_cross_threads() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<Instrumentation>();
        send_sync::<RequestGuard>();
        send_sync::<Scope>();
        send_sync::<Instrumented<std::future::Ready<()>>>();
    }
}
