//! The OTLP exporters, and the private runtime that every export runs on.
//!
//! Export runs on a private one-worker tokio runtime owned by the pipeline. The SDK's batch span processor and
//! periodic metric reader each run on their own thread and drive every export through that runtime's handle, so
//! setup works the same inside and outside the service's runtime, the gRPC (tonic) and HTTP (hyper) clients
//! always find a reactor, and a slow or absent collector costs the service's own workers nothing.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use opentelemetry_otlp::{WithExportConfig as _, WithHttpConfig as _};
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::metrics::data::ResourceMetrics;
use opentelemetry_sdk::metrics::exporter::PushMetricExporter;
use opentelemetry_sdk::metrics::Temporality;
use opentelemetry_sdk::trace::{SpanData, SpanExporter};
use opentelemetry_sdk::Resource;

use super::errors::ErrorLog;

/// The OTLP transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// OTLP/gRPC (default port 4317).
    Grpc,
    /// OTLP/HTTP with protobuf bodies (default port 4318); the OpenTelemetry default.
    HttpProtobuf,
}

impl Protocol {
    pub(super) fn parse(v: &str) -> Option<Protocol> {
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

fn http_url(base: &str, path: &str) -> String {
    format!("{}{path}", base.trim_end_matches('/'))
}

/// The OTLP span exporter for `proto`; `timeout` is the HTTP client's (gRPC reads its own variables).
pub(super) fn span_exporter(
    proto: Protocol,
    endpoint: Option<&str>,
    timeout: Duration,
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
            if let Some(client) = http_client(timeout) {
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

/// The OTLP metric exporter for `proto` (cumulative temporality); `timeout` as for [`span_exporter`].
pub(super) fn metric_exporter(
    proto: Protocol,
    endpoint: Option<&str>,
    timeout: Duration,
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
            if let Some(client) = http_client(timeout) {
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
    timeout: Duration,
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
        connector, timeout, None,
    ))
}

type HttpsConnector =
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>;

/// The private export runtime's handle, and a gate that lets the pipeline's drop stop new exports and wait for the
/// running ones before it shuts the runtime down: an export polled on a runtime that is gone panics inside tokio.
#[derive(Debug)]
pub(super) struct ExportRuntime {
    handle: tokio::runtime::Handle,
    closed: AtomicBool,
    in_flight: AtomicUsize,
}

impl ExportRuntime {
    /// Starts the runtime (thread `memspan-export`); the caller owns it and shuts it down after [`close`].
    ///
    /// [`close`]: ExportRuntime::close
    pub(super) fn start() -> Result<(tokio::runtime::Runtime, Arc<ExportRuntime>), InitError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("memspan-export")
            .enable_all()
            .build()?;
        let export = Arc::new(ExportRuntime {
            handle: runtime.handle().clone(),
            closed: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
        });
        Ok((runtime, export))
    }

    /// Enters the runtime's context: exporters are built inside it (tonic's channel needs a reactor).
    pub(super) fn enter(&self) -> tokio::runtime::EnterGuard<'_> {
        self.handle.enter()
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
    pub(super) fn close(&self, wait: Duration) -> bool {
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
pub(super) struct OnRuntime<E> {
    inner: E,
    runtime: Arc<ExportRuntime>,
    signal: &'static str,
    errors: Arc<ErrorLog>,
}

impl<E> OnRuntime<E> {
    pub(super) fn new(
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

#[cfg(test)]
mod tests {
    use super::*;

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
