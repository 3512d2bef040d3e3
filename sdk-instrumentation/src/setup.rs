//! Setup: tracer and meter providers with OTLP export, configured from the standard `OTEL_*` variables.
//!
//! Export runs on a private one-worker tokio runtime owned by [`Memspan`]. The SDK's batch span processor and
//! periodic metric reader each run on their own thread and drive every export through that runtime's handle, so
//! [`init`] works the same inside and outside the service's runtime, the gRPC (tonic) and HTTP (hyper) clients
//! always find a reactor, and a slow or absent collector costs the service's own workers nothing.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use opentelemetry::metrics::MeterProvider as _;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry::{Key, KeyValue, StringValue};
use opentelemetry_otlp::{WithExportConfig as _, WithHttpConfig as _};
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::metrics::data::ResourceMetrics;
use opentelemetry_sdk::metrics::exporter::PushMetricExporter;
use opentelemetry_sdk::metrics::{
    MeterProviderBuilder, PeriodicReader, SdkMeterProvider, Temporality,
};
use opentelemetry_sdk::trace::{
    BatchSpanProcessor, SdkTracer, SdkTracerProvider, SpanData, SpanExporter, SpanProcessor,
    TracerProviderBuilder,
};
use opentelemetry_sdk::Resource;

use crate::probe::{self, CgroupProbe, Probe, Readings, RssProbe};
use crate::request::RequestGuard;

/// The OTLP transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// OTLP/gRPC (default port 4317).
    Grpc,
    /// OTLP/HTTP with protobuf bodies (default port 4318); the OpenTelemetry default.
    HttpProtobuf,
}

impl Protocol {
    fn parse(v: &str) -> Option<Protocol> {
        match v.trim() {
            "grpc" => Some(Protocol::Grpc),
            "http/protobuf" => Some(Protocol::HttpProtobuf),
            _ => None,
        }
    }
}

/// Why setup failed. A collector that cannot be reached is not an error: export failures are logged and the
/// service runs on.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// The OTLP exporter could not be built from the configuration (a malformed endpoint, header or timeout).
    #[error("memspan: cannot build the OTLP {signal} exporter: {message}")]
    Exporter {
        /// "traces" or "metrics".
        signal: &'static str,
        /// The exporter's own message.
        message: String,
    },
    /// The export runtime's thread could not be started.
    #[error("memspan: cannot start the export runtime: {0}")]
    Runtime(#[from] std::io::Error),
}

/// Why [`Memspan::shutdown`] did not complete cleanly. Telemetry still queued may be lost; the service is fine.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShutdownError {
    /// Flushing did not finish within the bound (the collector is slow or gone).
    #[error("memspan: shutdown did not finish within {0:?}")]
    Timeout(Duration),
    /// A provider reported an error while flushing.
    #[error("memspan: shutdown failed: {0}")]
    Failed(String),
}

/// A `tracing_subscriber::EnvFilter` directive that silences the OpenTelemetry crates' own per-failure logs.
/// memspan does not enable their `internal-logs` feature, but another dependency of the service may; then every
/// failed export batch is logged by the SDK as well. Appending this to the service's filter (e.g.
/// `format!("info,{OTEL_INTERNAL_LOGS_OFF}")`) leaves memspan's own line, at most one per [`ERROR_LOG_INTERVAL`].
pub const OTEL_INTERNAL_LOGS_OFF: &str =
    "opentelemetry=off,opentelemetry_sdk=off,opentelemetry-otlp=off,opentelemetry-http=off";

/// The most [`Memspan::shutdown`] waits for the final flush.
pub const SHUTDOWN_BOUND: Duration = Duration::from_secs(5);
/// Export errors are logged at most once per this interval (with the count of those not logged).
pub const ERROR_LOG_INTERVAL: Duration = Duration::from_secs(60);
const DEFAULT_METRICS_INTERVAL: Duration = Duration::from_secs(30);

type ProcessorHook = Box<dyn FnOnce(TracerProviderBuilder) -> TracerProviderBuilder + Send>;
type ReaderHook = Box<dyn FnOnce(MeterProviderBuilder, Duration) -> MeterProviderBuilder + Send>;

/// Configuration of [`Memspan`]. Start with [`Builder::from_env`]; explicit calls override the environment.
pub struct Builder {
    service_name: Option<String>,
    service_version: Option<String>,
    instance_id: Option<String>,
    cohort: Option<String>,
    resource: Vec<KeyValue>,
    endpoint: Option<String>,
    protocol: Option<Protocol>,
    probes: Vec<Box<dyn Probe>>,
    default_probes: bool,
    metrics_interval: Duration,
    span_processor: Option<ProcessorHook>,
    metric_reader: Option<ReaderHook>,
}

impl std::fmt::Debug for Builder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Builder")
            .field("service_name", &self.service_name)
            .field("cohort", &self.cohort)
            .field("endpoint", &self.endpoint)
            .field("protocol", &self.protocol)
            .field(
                "probes",
                &self.probes.iter().map(|p| p.name()).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

fn env_nonempty(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

impl Builder {
    /// Reads `OTEL_SERVICE_NAME` and `MEMSPAN_COHORT` now; `OTEL_RESOURCE_ATTRIBUTES` when the resource is built;
    /// `OTEL_EXPORTER_OTLP_{ENDPOINT,PROTOCOL,HEADERS,TIMEOUT,COMPRESSION}` and their `_TRACES_` / `_METRICS_`
    /// variants when the exporters are built (the per-signal variable wins, as the specification says).
    pub fn from_env() -> Builder {
        Builder {
            service_name: env_nonempty("OTEL_SERVICE_NAME"),
            service_version: None,
            instance_id: None,
            cohort: env_nonempty("MEMSPAN_COHORT"),
            resource: Vec::new(),
            endpoint: None,
            protocol: None,
            probes: Vec::new(),
            default_probes: true,
            metrics_interval: DEFAULT_METRICS_INTERVAL,
            span_processor: None,
            metric_reader: None,
        }
    }

    /// `service.name`.
    pub fn service_name(mut self, name: impl Into<String>) -> Self {
        self.service_name = Some(name.into());
        self
    }

    /// `service.version`: also the cohort fallback of the processor when no `memspan.cohort` is set.
    pub fn service_version(mut self, v: impl Into<String>) -> Self {
        self.service_version = Some(v.into());
        self
    }

    /// `service.instance.id`; by default the one in `OTEL_RESOURCE_ATTRIBUTES`, else a random UUID.
    pub fn instance_id(mut self, id: impl Into<String>) -> Self {
        self.instance_id = Some(id.into());
        self
    }

    /// `memspan.cohort` on every request span and on the resource, so the process metrics land in the same
    /// cohort as the spans (overrides `MEMSPAN_COHORT`).
    pub fn cohort(mut self, cohort: impl Into<String>) -> Self {
        self.cohort = Some(cohort.into());
        self
    }

    /// Any other resource attribute (overrides the same key from `OTEL_RESOURCE_ATTRIBUTES`).
    pub fn resource_attribute(mut self, key: &str, value: impl Into<String>) -> Self {
        self.resource
            .push(KeyValue::new(key.to_string(), value.into()));
        self
    }

    /// The collector's base URL for both signals, e.g. `http://127.0.0.1:4317` (gRPC) or
    /// `http://127.0.0.1:4318` (HTTP, where `/v1/traces` and `/v1/metrics` are appended).
    pub fn endpoint(mut self, url: impl Into<String>) -> Self {
        self.endpoint = Some(url.into());
        self
    }

    /// The transport for both signals (overrides `OTEL_EXPORTER_OTLP_*PROTOCOL`).
    pub fn protocol(mut self, p: Protocol) -> Self {
        self.protocol = Some(p);
        self
    }

    /// Adds a probe, read after the default ones (so it can override their fields).
    pub fn probe(mut self, p: impl Probe) -> Self {
        self.probes.push(Box::new(p));
        self
    }

    /// Starts from no probes: only those added with [`Builder::probe`] are read.
    pub fn without_default_probes(mut self) -> Self {
        self.default_probes = false;
        self
    }

    /// How often the process metrics are exported.
    pub fn metrics_interval(mut self, d: std::time::Duration) -> Self {
        self.metrics_interval = d;
        self
    }

    /// Sends spans to this processor instead of the OTLP exporter (tests, or a custom pipeline).
    pub fn span_processor(mut self, p: impl SpanProcessor + 'static) -> Self {
        self.span_processor = Some(Box::new(move |b| b.with_span_processor(p)));
        self
    }

    /// Sends metrics to this exporter (on the same interval) instead of the OTLP one (tests, or a custom
    /// pipeline).
    pub fn metric_exporter(mut self, e: impl PushMetricExporter) -> Self {
        self.metric_reader = Some(Box::new(move |b, interval| {
            b.with_reader(PeriodicReader::builder(e).with_interval(interval).build())
        }));
        self
    }

    /// Builds the providers and probes; nothing global is touched.
    pub fn build(self) -> Result<Memspan, InitError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("memspan-export")
            .enable_all()
            .build()?;
        let handle = runtime.handle().clone();
        let export = Arc::new(ExportRuntime::new(handle.clone()));
        let errors = Arc::new(ErrorLog::new(ERROR_LOG_INTERVAL));
        let resource = self.resource();

        let mut probes: Vec<Box<dyn Probe>> = Vec::new();
        let mut cgroup = None;
        if self.default_probes {
            let cg = CgroupProbe::start_default();
            probes = probe::default_probes(&cg);
            cgroup = Some(cg);
        }
        probes.extend(self.probes);
        let probes: Arc<[Box<dyn Probe>]> = probes.into();

        let mut tp = SdkTracerProvider::builder().with_resource(resource.clone());
        tp = match self.span_processor {
            Some(hook) => hook(tp),
            None => {
                let proto = resolve_protocol(self.protocol, "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL");
                let exporter = {
                    let _enter = handle.enter();
                    span_exporter(proto, self.endpoint.as_deref())?
                };
                tp.with_span_processor(
                    BatchSpanProcessor::builder(OnRuntime::new(
                        exporter, &export, "traces", &errors,
                    ))
                    .build(),
                )
            }
        };
        let tracer_provider = tp.build();

        let mut mp = SdkMeterProvider::builder().with_resource(resource);
        let interval = self.metrics_interval;
        mp = match self.metric_reader {
            Some(hook) => hook(mp, interval),
            None => {
                let proto = resolve_protocol(self.protocol, "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL");
                let exporter = {
                    let _enter = handle.enter();
                    metric_exporter(proto, self.endpoint.as_deref())?
                };
                let reader =
                    PeriodicReader::builder(OnRuntime::new(exporter, &export, "metrics", &errors))
                        .with_interval(self.metrics_interval)
                        .build();
                mp.with_reader(reader)
            }
        };
        let meter_provider = mp.build();
        let gauges = crate::metrics::register(
            &meter_provider.meter("memspan"),
            &probes,
            cgroup,
            RssProbe::new(),
        );

        let tracer = tracer_provider.tracer("memspan");
        Ok(Memspan {
            inner: Arc::new(Inner {
                tracer,
                cohort: self.cohort.map(|c| StringValue::from(Arc::<str>::from(c))),
                probes,
                tracer_provider,
                meter_provider,
                _gauges: gauges,
                shutdown: OnceLock::new(),
                errors,
                export,
                runtime: Mutex::new(Some(runtime)),
            }),
        })
    }

    /// [`Builder::build`], then installs the providers as the global tracer and meter providers, so spans from
    /// other instrumented libraries share the pipeline.
    pub fn install_global(self) -> Result<Memspan, InitError> {
        let m = self.build()?;
        opentelemetry::global::set_tracer_provider(m.inner.tracer_provider.clone());
        opentelemetry::global::set_meter_provider(m.inner.meter_provider.clone());
        Ok(m)
    }

    fn resource(&self) -> Resource {
        // `Resource::builder` reads OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES (and so
        // deployment.environment.name) itself; explicit settings are layered on top.
        let from_env = Resource::builder().build();
        let mut b = Resource::builder();
        if let Some(name) = &self.service_name {
            b = b.with_service_name(name.clone());
        }
        let mut attrs = Vec::new();
        if let Some(v) = &self.service_version {
            attrs.push(KeyValue::new("service.version", v.clone()));
        }
        let instance_key = Key::from_static_str("service.instance.id");
        match &self.instance_id {
            Some(id) => attrs.push(KeyValue::new(instance_key, id.clone())),
            None if from_env.get(&instance_key).is_none() => {
                attrs.push(KeyValue::new(instance_key, random_uuid()))
            }
            None => {}
        }
        // The cohort on the resource too: process metrics carry no span attributes, and without it the processor
        // would file them under its fallback (service.version) while the spans sit under the cohort.
        if let Some(cohort) = &self.cohort {
            attrs.push(KeyValue::new(crate::attributes::COHORT, cohort.clone()));
        }
        attrs.extend(self.resource.iter().cloned());
        b.with_attributes(attrs).build()
    }
}

/// A version-4 UUID from the OS random source, so two replicas never share an instance id.
fn random_uuid() -> String {
    let mut b: [u8; 16] = rand::random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// Per-signal variable, then the general one, then http/protobuf (the specification's default). An unknown
/// value (including `http/json`, which this crate does not ship) is reported once and the default used.
fn resolve_protocol(explicit: Option<Protocol>, signal_var: &str) -> Protocol {
    if let Some(p) = explicit {
        return p;
    }
    for var in [signal_var, "OTEL_EXPORTER_OTLP_PROTOCOL"] {
        if let Some(v) = env_nonempty(var) {
            match Protocol::parse(&v) {
                Some(p) => return p,
                None => {
                    tracing::warn!(variable = var, value = %v, "memspan: unsupported OTLP protocol; using http/protobuf");
                    return Protocol::HttpProtobuf;
                }
            }
        }
    }
    Protocol::HttpProtobuf
}

fn http_url(base: &str, path: &str) -> String {
    format!("{}{path}", base.trim_end_matches('/'))
}

fn span_exporter(
    proto: Protocol,
    endpoint: Option<&str>,
) -> Result<opentelemetry_otlp::SpanExporter, InitError> {
    let b = opentelemetry_otlp::SpanExporter::builder();
    let built = match proto {
        Protocol::Grpc => {
            let mut b = b.with_tonic();
            if let Some(ep) = endpoint {
                b = b.with_endpoint(ep);
            }
            b.build()
        }
        Protocol::HttpProtobuf => {
            let mut b = b
                .with_http()
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary);
            if let Some(client) = http_client("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT") {
                b = b.with_http_client(client);
            }
            if let Some(ep) = endpoint {
                b = b.with_endpoint(http_url(ep, "/v1/traces"));
            }
            b.build()
        }
    };
    built.map_err(|e| InitError::Exporter {
        signal: "traces",
        message: e.to_string(),
    })
}

fn metric_exporter(
    proto: Protocol,
    endpoint: Option<&str>,
) -> Result<opentelemetry_otlp::MetricExporter, InitError> {
    let b = opentelemetry_otlp::MetricExporter::builder().with_temporality(Temporality::Cumulative);
    let built = match proto {
        Protocol::Grpc => {
            let mut b = b.with_tonic();
            if let Some(ep) = endpoint {
                b = b.with_endpoint(ep);
            }
            b.build()
        }
        Protocol::HttpProtobuf => {
            let mut b = b
                .with_http()
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary);
            if let Some(client) = http_client("OTEL_EXPORTER_OTLP_METRICS_TIMEOUT") {
                b = b.with_http_client(client);
            }
            if let Some(ep) = endpoint {
                b = b.with_endpoint(http_url(ep, "/v1/metrics"));
            }
            b.build()
        }
    };
    built.map_err(|e| InitError::Exporter {
        signal: "metrics",
        message: e.to_string(),
    })
}

/// The OTLP/HTTP client: hyper with a rustls connector (ring, the system's root certificates), for `http://`
/// and `https://` endpoints alike. `None` (the exporter's plain-HTTP hyper client is used, with a warning) only
/// where rustls cannot be set up at all. Without system root certificates, `https://` export fails at the
/// handshake and is logged like any export error; `http://` works.
fn http_client(
    signal_timeout_var: &str,
) -> Option<opentelemetry_http::hyper::HyperClient<HttpsConnector>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = match hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_native_roots(Arc::clone(&provider))
    {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!(error = %e, "memspan: no system root certificates; https OTLP endpoints will fail");
            let config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| tracing::warn!(error = %e, "memspan: rustls unavailable; OTLP/HTTP is plain HTTP only"))
                .ok()?
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth();
            hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(config)
        }
    };
    let connector = builder.https_or_http().enable_http1().build();
    Some(opentelemetry_http::hyper::HyperClient::new(
        connector,
        export_timeout(signal_timeout_var),
        None,
    ))
}

type HttpsConnector =
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>;

/// `OTEL_EXPORTER_OTLP_{signal}_TIMEOUT`, else `OTEL_EXPORTER_OTLP_TIMEOUT`, in milliseconds; 10 s by default.
fn export_timeout(signal_var: &str) -> Duration {
    [signal_var, "OTEL_EXPORTER_OTLP_TIMEOUT"]
        .into_iter()
        .find_map(|v| env_nonempty(v).and_then(|t| t.trim().parse::<u64>().ok()))
        .map_or(Duration::from_secs(10), Duration::from_millis)
}

/// Logs export failures at most once per interval, with the number it kept quiet about, so a service whose
/// collector is down gets one line a minute instead of one per batch.
#[derive(Debug)]
pub(crate) struct ErrorLog {
    interval: Duration,
    last: Mutex<Option<Instant>>,
    suppressed: AtomicU64,
    total: AtomicU64,
}

impl ErrorLog {
    pub(crate) fn new(interval: Duration) -> ErrorLog {
        ErrorLog {
            interval,
            last: Mutex::new(None),
            suppressed: AtomicU64::new(0),
            total: AtomicU64::new(0),
        }
    }

    /// Returns whether this failure was logged (for tests).
    pub(crate) fn observe(&self, signal: &str, r: &OTelSdkResult, now: Instant) -> bool {
        let Err(e) = r else { return false };
        self.total.fetch_add(1, Ordering::Relaxed);
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_some_and(|t| now.saturating_duration_since(t) < self.interval) {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        *last = Some(now);
        let suppressed = self.suppressed.swap(0, Ordering::Relaxed);
        tracing::warn!(signal, error = %e, suppressed, "memspan: OTLP export failed; telemetry is dropped while the collector is unreachable");
        true
    }
}

/// The private export runtime's handle, and a gate that lets [`Inner`]'s drop stop new exports and wait for the
/// running ones before it shuts the runtime down: an export polled on a runtime that is gone panics inside tokio.
#[derive(Debug)]
struct ExportRuntime {
    handle: tokio::runtime::Handle,
    closed: AtomicBool,
    in_flight: AtomicUsize,
}

impl ExportRuntime {
    fn new(handle: tokio::runtime::Handle) -> ExportRuntime {
        ExportRuntime {
            handle,
            closed: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
        }
    }

    /// Runs `f` with the runtime, unless it is closing. SeqCst pairs with [`ExportRuntime::close`]: either the
    /// closer sees this call in flight, or this call sees the runtime closed.
    fn run<T>(&self, f: impl FnOnce(&tokio::runtime::Handle) -> T) -> Option<T> {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        let r = (!self.closed.load(Ordering::SeqCst)).then(|| f(&self.handle));
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        r
    }

    /// Stops new calls and waits up to `wait` for the running ones; true when none is left.
    fn close(&self, wait: Duration) -> bool {
        self.closed.store(true, Ordering::SeqCst);
        let deadline = Instant::now() + wait;
        while self.in_flight.load(Ordering::SeqCst) != 0 {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        true
    }
}

fn closed() -> OTelSdkResult {
    Err(OTelSdkError::AlreadyShutdown)
}

/// Runs an exporter's futures on the private runtime. The SDK's processors call `export` from their own
/// threads (never a runtime worker), where `Handle::block_on` is allowed and gives the client its reactor.
#[derive(Debug)]
struct OnRuntime<E> {
    inner: E,
    runtime: Arc<ExportRuntime>,
    signal: &'static str,
    errors: Arc<ErrorLog>,
}

impl<E> OnRuntime<E> {
    fn new(
        inner: E,
        runtime: &Arc<ExportRuntime>,
        signal: &'static str,
        errors: &Arc<ErrorLog>,
    ) -> Self {
        OnRuntime {
            inner,
            runtime: Arc::clone(runtime),
            signal,
            errors: Arc::clone(errors),
        }
    }

    fn observe(&self, r: OTelSdkResult) -> std::future::Ready<OTelSdkResult> {
        self.errors.observe(self.signal, &r, Instant::now());
        std::future::ready(r)
    }

    fn entered(&self, f: impl FnOnce(&E) -> OTelSdkResult) -> OTelSdkResult {
        self.runtime
            .run(|h| {
                let _enter = h.enter();
                f(&self.inner)
            })
            .unwrap_or_else(closed)
    }
}

impl<E: SpanExporter> SpanExporter for OnRuntime<E> {
    fn export(
        &self,
        batch: Vec<SpanData>,
    ) -> impl std::future::Future<Output = OTelSdkResult> + Send {
        let r = self.runtime.run(|h| h.block_on(self.inner.export(batch)));
        self.observe(r.unwrap_or_else(closed))
    }
    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.entered(|e| e.shutdown_with_timeout(timeout))
    }
    fn force_flush(&self) -> OTelSdkResult {
        self.entered(|e| e.force_flush())
    }
    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

impl<E: PushMetricExporter> PushMetricExporter for OnRuntime<E> {
    fn export(
        &self,
        metrics: &ResourceMetrics,
    ) -> impl std::future::Future<Output = OTelSdkResult> + Send {
        let r = self.runtime.run(|h| h.block_on(self.inner.export(metrics)));
        self.observe(r.unwrap_or_else(closed))
    }
    fn force_flush(&self) -> OTelSdkResult {
        self.entered(|e| e.force_flush())
    }
    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.entered(|e| e.shutdown_with_timeout(timeout))
    }
    fn temporality(&self) -> Temporality {
        self.inner.temporality()
    }
}

pub(crate) struct Inner {
    pub(crate) tracer: SdkTracer,
    pub(crate) cohort: Option<StringValue>,
    pub(crate) probes: Arc<[Box<dyn Probe>]>,
    tracer_provider: SdkTracerProvider,
    meter_provider: SdkMeterProvider,
    _gauges: crate::metrics::Gauges,
    shutdown: OnceLock<Result<(), ShutdownError>>,
    errors: Arc<ErrorLog>,
    export: Arc<ExportRuntime>,
    runtime: Mutex<Option<tokio::runtime::Runtime>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The last handle is gone: flush what is queued (bounded), unless shutdown() already did.
        if self.shutdown.get().is_none() {
            let (tp, mp) = (self.tracer_provider.clone(), self.meter_provider.clone());
            let _ = bounded(move || {
                let t = tp.shutdown_with_timeout(SHUTDOWN_BOUND);
                let m = mp.shutdown_with_timeout(SHUTDOWN_BOUND);
                t.and(m)
            });
        }
        let idle = self.export.close(Duration::from_millis(200));
        let rt = self
            .runtime
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        match rt {
            // Dropping a runtime blocks until its tasks end, which panics inside another runtime, so it is shut
            // down in the background.
            Some(rt) if idle => rt.shutdown_background(),
            // An export is still stuck in the network client after the flush bound: shutting the runtime down
            // under it would panic on its thread, so the runtime (one parked thread) is left to the process exit.
            Some(rt) => std::mem::forget(rt),
            None => {}
        }
    }
}

/// The handle a service keeps: makes request guards and flushes on shutdown. Cheap to clone.
#[derive(Clone)]
pub struct Memspan {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Memspan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Memspan")
            .field("cohort", &self.inner.cohort.as_ref().map(|c| c.as_str()))
            .field(
                "probes",
                &self
                    .inner
                    .probes
                    .iter()
                    .map(|p| p.name())
                    .collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl Memspan {
    /// Starts a request: span "{operation} {model}" with the `gen_ai.*` attributes, the cohort and the "before"
    /// readings. The span's parent is the current OpenTelemetry context.
    pub fn request(&self, operation: &str, model: &str) -> RequestGuard {
        RequestGuard::start(&self.inner, operation, model)
    }

    /// Reads every probe now (what a request ending now would record).
    pub fn readings(&self) -> Readings {
        let mut r = Readings::default();
        for p in self.inner.probes.iter() {
            p.read(&mut r);
        }
        r
    }

    /// The tracer provider (for other spans of the service).
    pub fn tracer_provider(&self) -> &SdkTracerProvider {
        &self.inner.tracer_provider
    }

    /// The meter provider (for the service's own metrics).
    pub fn meter_provider(&self) -> &SdkMeterProvider {
        &self.inner.meter_provider
    }

    /// How many export calls (span batches and metric collections) have failed so far: a health signal for a
    /// service that wants to know its telemetry is not arriving, beyond the once-a-minute log line.
    pub fn export_failures(&self) -> u64 {
        self.inner.errors.total.load(Ordering::Relaxed)
    }

    /// Exports what is queued now, bounded like shutdown.
    pub fn force_flush(&self) -> Result<(), ShutdownError> {
        let inner = Arc::clone(&self.inner);
        bounded(move || {
            let t = inner.tracer_provider.force_flush();
            let m = inner.meter_provider.force_flush();
            t.and(m)
        })
    }

    /// Flushes spans and metrics and stops export. Idempotent (later calls return the first result) and bounded
    /// by [`SHUTDOWN_BOUND`] even when the collector is gone; requests made afterwards are not exported.
    pub fn shutdown(&self) -> Result<(), ShutdownError> {
        self.inner
            .shutdown
            .get_or_init(|| {
                let inner = Arc::clone(&self.inner);
                bounded(move || {
                    let t = inner.tracer_provider.shutdown_with_timeout(SHUTDOWN_BOUND);
                    let m = inner.meter_provider.shutdown_with_timeout(SHUTDOWN_BOUND);
                    t.and(m)
                })
            })
            .clone()
    }
}

/// Runs `f` on its own thread and waits at most [`SHUTDOWN_BOUND`]: the SDK's own timeouts do not cover an
/// export that is stuck inside the network client.
fn bounded(f: impl FnOnce() -> OTelSdkResult + Send + 'static) -> Result<(), ShutdownError> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("memspan-flush".into())
        .spawn(move || {
            let _ = tx.send(f());
        })
        .map_err(|e| ShutdownError::Failed(e.to_string()))?;
    match rx.recv_timeout(SHUTDOWN_BOUND) {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(ShutdownError::Failed(e.to_string())),
        Err(_) => Err(ShutdownError::Timeout(SHUTDOWN_BOUND)),
    }
}

/// `Builder::from_env().install_global()`: the few lines a service adds at start.
pub fn init() -> Result<Memspan, InitError> {
    Builder::from_env().install_global()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn export_errors_are_logged_once_per_interval() {
        let log = ErrorLog::new(Duration::from_secs(60));
        let t0 = Instant::now();
        let err: OTelSdkResult = Err(OTelSdkError::InternalFailure("connection refused".into()));
        assert!(!log.observe("traces", &Ok(()), t0));
        assert!(log.observe("traces", &err, t0));
        assert!(!log.observe("traces", &err, t0 + Duration::from_secs(1)));
        assert!(!log.observe("metrics", &err, t0 + Duration::from_secs(59)));
        assert_eq!(log.suppressed.load(Ordering::Relaxed), 2);
        assert!(log.observe("traces", &err, t0 + Duration::from_secs(61)));
        assert_eq!(log.suppressed.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn handles_cross_threads() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<Memspan>();
        send_sync::<RequestGuard>();
        send_sync::<crate::Scope>();
        send_sync::<crate::Instrumented<std::future::Ready<()>>>();
    }

    #[test]
    fn the_quiet_directive_parses_as_an_env_filter() {
        let filter =
            tracing_subscriber::EnvFilter::try_new(format!("info,{OTEL_INTERNAL_LOGS_OFF}"));
        assert!(filter.is_ok(), "{filter:?}");
    }

    #[test]
    fn random_instance_ids_are_uuid_shaped_and_distinct() {
        let a = random_uuid();
        let b = random_uuid();
        assert_ne!(a, b);
        assert_eq!(a.len(), 36);
        assert_eq!(a.as_bytes()[14], b'4');
        assert_eq!(a.matches('-').count(), 4);
    }

    #[test]
    fn http_endpoints_get_the_signal_path_once() {
        assert_eq!(
            http_url("http://c:4318", "/v1/traces"),
            "http://c:4318/v1/traces"
        );
        assert_eq!(
            http_url("http://c:4318/", "/v1/metrics"),
            "http://c:4318/v1/metrics"
        );
    }
}
