//! The request-path core: the tracer that starts request spans, the probes read at each request's start and
//! end, and the cohort label. It knows nothing of providers or exporters: the `otlp` setup builds one over its
//! own pipeline, and a service that already has an OpenTelemetry pipeline builds one over its own tracer.

use std::any::Any;
use std::sync::Arc;

use opentelemetry::metrics::Meter;
use opentelemetry::trace::{SpanBuilder, TraceContextExt as _, Tracer};
use opentelemetry::{Context, StringValue};

use crate::probe::cgroup::CgroupProbe;
use crate::probe::{Probe, Readings, RssProbe};

/// Starts a span with the given parent and returns the parent's context with that span in it. Object safe, so
/// [`Instrumentation`] takes any [`Tracer`] without naming its span type, and the span is boxed once (by the
/// context), not twice.
pub(crate) trait StartSpan: Send + Sync {
    fn start(&self, builder: SpanBuilder, parent: &Context) -> Context;
}

impl<T> StartSpan for T
where
    T: Tracer + Send + Sync + 'static,
    T::Span: Send + Sync + 'static,
{
    fn start(&self, builder: SpanBuilder, parent: &Context) -> Context {
        parent.with_span(self.build_with_context(builder, parent))
    }
}

struct Core {
    tracer: Box<dyn StartSpan>,
    cohort: Option<StringValue>,
    probes: Arc<[Box<dyn Probe>]>,
    /// The default cgroup probe, kept for `container.memory.usage`.
    cgroup: Option<CgroupProbe>,
    /// Whatever must outlive every request (the `otlp` setup's providers and export runtime).
    _owner: Option<Arc<dyn Any + Send + Sync>>,
}

/// What request guards are made from: a tracer, the memory probes and the cohort. Cheap to clone.
///
/// With the `otlp` feature, `memspan::Memspan` holds one over its own providers. A service that already has its
/// OpenTelemetry pipeline uses its own tracer instead, and memspan installs nothing:
///
/// ```no_run
/// # fn tracer() -> opentelemetry::global::BoxedTracer { opentelemetry::global::tracer("svc") }
/// # async fn generate() -> u64 { 0 }
/// # async fn serve() {
/// let memspan = memspan::Instrumentation::builder(tracer()).cohort("canary").build();
/// let request = memspan.request("chat", "llama-3-8b");
/// let tokens = request.instrument(generate()).await; // the request span is current inside `generate`
/// # drop(tokens); }
/// ```
#[derive(Clone)]
pub struct Instrumentation {
    core: Arc<Core>,
}

impl std::fmt::Debug for Instrumentation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Instrumentation")
            .field("cohort", &self.cohort())
            .field("probes", &self.probe_names())
            .finish_non_exhaustive()
    }
}

impl Instrumentation {
    /// Request spans from `tracer`, with the default probes and no cohort.
    pub fn new<T>(tracer: T) -> Instrumentation
    where
        T: Tracer + Send + Sync + 'static,
        T::Span: Send + Sync + 'static,
    {
        Instrumentation::builder(tracer).build()
    }

    /// Request spans from `tracer`; the cohort and the probes are set on the builder.
    pub fn builder<T>(tracer: T) -> InstrumentationBuilder
    where
        T: Tracer + Send + Sync + 'static,
        T::Span: Send + Sync + 'static,
    {
        InstrumentationBuilder {
            tracer: Box::new(tracer),
            cohort: None,
            probes: Vec::new(),
            default_probes: true,
            owner: None,
        }
    }

    /// Reads every probe now (what a request ending now would record).
    pub fn readings(&self) -> Readings {
        let mut r = Readings::default();
        for p in self.probes() {
            p.read(&mut r);
        }
        r
    }

    /// The cohort label on every request span, if any.
    pub fn cohort(&self) -> Option<&str> {
        self.core.cohort.as_ref().map(|c| c.as_str())
    }

    /// The probes' names, in the order they are read.
    pub fn probe_names(&self) -> Vec<&'static str> {
        self.probes().iter().map(|p| p.name()).collect()
    }

    /// Registers the process memory metrics on `meter` (observable gauges, read when its reader collects; see
    /// the crate README for the names). Once per meter provider: a second call registers the gauges twice.
    pub fn register_metrics(&self, meter: &Meter) {
        crate::metrics::register(
            meter,
            &self.core.probes,
            self.core.cgroup.clone(),
            RssProbe::new(),
        );
    }

    pub(crate) fn start_span(&self, builder: SpanBuilder, parent: &Context) -> Context {
        self.core.tracer.start(builder, parent)
    }

    pub(crate) fn cohort_value(&self) -> Option<&StringValue> {
        self.core.cohort.as_ref()
    }

    pub(crate) fn probes(&self) -> &[Box<dyn Probe>] {
        &self.core.probes
    }
}

/// Configuration of an [`Instrumentation`]; see [`Instrumentation::builder`].
pub struct InstrumentationBuilder {
    tracer: Box<dyn StartSpan>,
    cohort: Option<String>,
    probes: Vec<Box<dyn Probe>>,
    default_probes: bool,
    owner: Option<Arc<dyn Any + Send + Sync>>,
}

impl std::fmt::Debug for InstrumentationBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InstrumentationBuilder")
            .field("cohort", &self.cohort)
            .field(
                "probes",
                &self.probes.iter().map(|p| p.name()).collect::<Vec<_>>(),
            )
            .field("default_probes", &self.default_probes)
            .finish_non_exhaustive()
    }
}

impl InstrumentationBuilder {
    /// `memspan.cohort` on every request span. (The `otlp` setup also puts it on the resource, so its process
    /// metrics land in the same cohort; with your own pipeline, put it on your resource too.)
    pub fn cohort(mut self, cohort: impl Into<String>) -> Self {
        self.cohort = Some(cohort.into());
        self
    }

    /// Adds a probe, read after the default ones (so it can override their fields).
    pub fn probe(mut self, p: impl Probe) -> Self {
        self.probes.push(Box::new(p));
        self
    }

    /// Starts from no probes: only those added with [`InstrumentationBuilder::probe`] are read.
    pub fn without_default_probes(mut self) -> Self {
        self.default_probes = false;
        self
    }

    #[cfg(feature = "otlp")]
    pub(crate) fn boxed_probes(mut self, probes: Vec<Box<dyn Probe>>) -> Self {
        self.probes.extend(probes);
        self
    }

    /// Keeps `owner` alive for as long as this instrumentation or any request made from it.
    #[cfg(feature = "otlp")]
    pub(crate) fn owner(mut self, owner: Arc<dyn Any + Send + Sync>) -> Self {
        self.owner = Some(owner);
        self
    }

    /// Starts the default probes' background samplers, if any.
    pub fn build(self) -> Instrumentation {
        let (mut probes, cgroup) = if self.default_probes {
            let cgroup = CgroupProbe::start_default();
            (default_probes(&cgroup), Some(cgroup))
        } else {
            (Vec::new(), None)
        };
        probes.extend(self.probes);
        Instrumentation {
            core: Arc::new(Core {
                tracer: self.tracer,
                cohort: self.cohort.map(|c| StringValue::from(Arc::<str>::from(c))),
                probes: probes.into(),
                cgroup,
                _owner: self.owner,
            }),
        }
    }
}

/// The default probes, in order: RSS, cgroup, then the allocator and GPU probes the enabled features provide.
/// Each one that cannot work on this machine is simply not in the list.
fn default_probes(cgroup: &CgroupProbe) -> Vec<Box<dyn Probe>> {
    let mut probes: Vec<Box<dyn Probe>> = Vec::new();
    if let Some(rss) = RssProbe::new() {
        probes.push(Box::new(rss));
    }
    probes.push(Box::new(cgroup.clone()));
    #[cfg(feature = "counting-allocator")]
    probes.push(Box::new(crate::probe::CountingAllocatorProbe));
    #[cfg(feature = "jemalloc")]
    probes.push(Box::new(crate::probe::JemallocProbe::start_default()));
    #[cfg(feature = "nvml")]
    probes.push(Box::new(crate::probe::NvmlProbe::start_default()));
    probes
}
