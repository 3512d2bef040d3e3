//! Configuration: the `Builder`, read from the standard `OTEL_*` variables and explicit calls, and the assembly
//! of providers, export and instrumentation from it.

use std::sync::Arc;
use std::time::Duration;

use opentelemetry::metrics::MeterProvider as _;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry::{Key, KeyValue};
use opentelemetry_sdk::metrics::exporter::PushMetricExporter;
use opentelemetry_sdk::metrics::{MeterProviderBuilder, PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::trace::{
    BatchSpanProcessor, SdkTracerProvider, SpanProcessor, TracerProviderBuilder,
};
use opentelemetry_sdk::Resource;

use super::errors::{ErrorLog, ERROR_LOG_INTERVAL};
use super::export::{self, ExportRuntime, InitError, OnRuntime, Protocol};
use super::handle::{Memspan, Pipeline};
use crate::instrumentation::Instrumentation;
use crate::probe::Probe;

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
        let (runtime, export) = ExportRuntime::start()?;
        let errors = Arc::new(ErrorLog::new(ERROR_LOG_INTERVAL));
        let resource = self.resource();
        let providers = tracer_provider(
            &resource,
            self.span_processor,
            self.protocol,
            self.endpoint.as_deref(),
            &export,
            &errors,
        )
        .and_then(|tracer| {
            let meter = meter_provider(
                &resource,
                self.metric_reader,
                self.metrics_interval,
                self.protocol,
                self.endpoint.as_deref(),
                &export,
                &errors,
            )?;
            Ok((tracer, meter))
        });
        let (tracer_provider, meter_provider) = match providers {
            Ok(p) => p,
            Err(e) => {
                // Dropping a runtime blocks, which panics where `build` is called from async code.
                runtime.shutdown_background();
                return Err(e);
            }
        };

        let pipeline = Arc::new(Pipeline::new(
            tracer_provider,
            meter_provider,
            errors,
            export,
            runtime,
        ));
        let mut instrumentation =
            Instrumentation::builder(pipeline.tracer_provider().tracer("memspan"))
                .owner(Arc::clone(&pipeline) as _)
                .boxed_probes(self.probes);
        if let Some(cohort) = self.cohort {
            instrumentation = instrumentation.cohort(cohort);
        }
        if !self.default_probes {
            instrumentation = instrumentation.without_default_probes();
        }
        let instrumentation = instrumentation.build();
        instrumentation.register_metrics(&pipeline.meter_provider().meter("memspan"));
        Ok(Memspan::new(instrumentation, pipeline))
    }

    /// [`Builder::build`], then installs the providers as the global tracer and meter providers, so spans from
    /// other instrumented libraries share the pipeline.
    pub fn install_global(self) -> Result<Memspan, InitError> {
        let m = self.build()?;
        opentelemetry::global::set_tracer_provider(m.tracer_provider().clone());
        opentelemetry::global::set_meter_provider(m.meter_provider().clone());
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

/// The tracer provider: the given span processor, else OTLP export through a batch processor on the runtime.
fn tracer_provider(
    resource: &Resource,
    span_processor: Option<ProcessorHook>,
    protocol: Option<Protocol>,
    endpoint: Option<&str>,
    export: &Arc<ExportRuntime>,
    errors: &Arc<ErrorLog>,
) -> Result<SdkTracerProvider, InitError> {
    let tp = SdkTracerProvider::builder().with_resource(resource.clone());
    let tp = match span_processor {
        Some(hook) => hook(tp),
        None => {
            let proto = resolve_protocol(protocol, "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL");
            let timeout = export_timeout("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT");
            let exporter = {
                let _enter = export.enter();
                export::span_exporter(proto, endpoint, timeout)?
            };
            tp.with_span_processor(
                BatchSpanProcessor::builder(OnRuntime::new(exporter, export, "traces", errors))
                    .build(),
            )
        }
    };
    Ok(tp.build())
}

/// The meter provider: the given exporter, else OTLP, collected every `interval` by a periodic reader.
fn meter_provider(
    resource: &Resource,
    metric_reader: Option<ReaderHook>,
    interval: Duration,
    protocol: Option<Protocol>,
    endpoint: Option<&str>,
    export: &Arc<ExportRuntime>,
    errors: &Arc<ErrorLog>,
) -> Result<SdkMeterProvider, InitError> {
    let mp = SdkMeterProvider::builder().with_resource(resource.clone());
    let mp = match metric_reader {
        Some(hook) => hook(mp, interval),
        None => {
            let proto = resolve_protocol(protocol, "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL");
            let timeout = export_timeout("OTEL_EXPORTER_OTLP_METRICS_TIMEOUT");
            let exporter = {
                let _enter = export.enter();
                export::metric_exporter(proto, endpoint, timeout)?
            };
            let reader =
                PeriodicReader::builder(OnRuntime::new(exporter, export, "metrics", errors))
                    .with_interval(interval)
                    .build();
            mp.with_reader(reader)
        }
    };
    Ok(mp.build())
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

/// `OTEL_EXPORTER_OTLP_{signal}_TIMEOUT`, else `OTEL_EXPORTER_OTLP_TIMEOUT`, in milliseconds; 10 s by default.
fn export_timeout(signal_var: &str) -> Duration {
    [signal_var, "OTEL_EXPORTER_OTLP_TIMEOUT"]
        .into_iter()
        .find_map(|v| env_nonempty(v).and_then(|t| t.trim().parse::<u64>().ok()))
        .map_or(Duration::from_secs(10), Duration::from_millis)
}

/// `Builder::from_env().install_global()`: the few lines a service adds at start.
pub fn init() -> Result<Memspan, InitError> {
    Builder::from_env().install_global()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_instance_ids_are_uuid_shaped_and_distinct() {
        let a = random_uuid();
        let b = random_uuid();
        assert_ne!(a, b);
        assert_eq!(a.len(), 36);
        assert_eq!(a.as_bytes()[14], b'4');
        assert_eq!(a.matches('-').count(), 4);
    }
}
