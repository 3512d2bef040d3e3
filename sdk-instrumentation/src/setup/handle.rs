//! The handle a service keeps: request guards from its instrumentation, and the pipeline it flushes and shuts
//! down.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use opentelemetry_sdk::trace::SdkTracerProvider;

use super::errors::ErrorLog;
use super::export::ExportRuntime;
use crate::instrumentation::Instrumentation;
use crate::probe::Readings;
use crate::request::RequestGuard;

/// The most [`Memspan::shutdown`] waits for the final flush.
pub const SHUTDOWN_BOUND: Duration = Duration::from_secs(5);

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

/// The providers and the export runtime. Every [`Memspan`] clone holds it, and so does the instrumentation (so
/// a request still in flight when the last handle goes keeps its export alive); the last one to go flushes.
pub(super) struct Pipeline {
    tracer_provider: SdkTracerProvider,
    meter_provider: SdkMeterProvider,
    shutdown: OnceLock<Result<(), ShutdownError>>,
    errors: Arc<ErrorLog>,
    export: Arc<ExportRuntime>,
    runtime: Mutex<Option<tokio::runtime::Runtime>>,
}

impl Pipeline {
    pub(super) fn new(
        tracer_provider: SdkTracerProvider,
        meter_provider: SdkMeterProvider,
        errors: Arc<ErrorLog>,
        export: Arc<ExportRuntime>,
        runtime: tokio::runtime::Runtime,
    ) -> Pipeline {
        Pipeline {
            tracer_provider,
            meter_provider,
            shutdown: OnceLock::new(),
            errors,
            export,
            runtime: Mutex::new(Some(runtime)),
        }
    }

    pub(super) fn tracer_provider(&self) -> &SdkTracerProvider {
        &self.tracer_provider
    }

    pub(super) fn meter_provider(&self) -> &SdkMeterProvider {
        &self.meter_provider
    }
}

impl Drop for Pipeline {
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
    instrumentation: Instrumentation,
    pipeline: Arc<Pipeline>,
}

impl std::fmt::Debug for Memspan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Memspan")
            .field("cohort", &self.instrumentation.cohort())
            .field("probes", &self.instrumentation.probe_names())
            .finish_non_exhaustive()
    }
}

impl Memspan {
    pub(super) fn new(instrumentation: Instrumentation, pipeline: Arc<Pipeline>) -> Memspan {
        Memspan {
            instrumentation,
            pipeline,
        }
    }

    /// Starts a request: span "{operation} {model}" with the `gen_ai.*` attributes, the cohort and the "before"
    /// readings. The span's parent is the current OpenTelemetry context.
    pub fn request(&self, operation: &str, model: &str) -> RequestGuard {
        self.instrumentation.request(operation, model)
    }

    /// Reads every probe now (what a request ending now would record).
    pub fn readings(&self) -> Readings {
        self.instrumentation.readings()
    }

    /// The tracer, probes and cohort behind [`Memspan::request`] (what a library that takes an
    /// [`Instrumentation`] wants).
    pub fn instrumentation(&self) -> &Instrumentation {
        &self.instrumentation
    }

    /// The tracer provider (for other spans of the service).
    pub fn tracer_provider(&self) -> &SdkTracerProvider {
        &self.pipeline.tracer_provider
    }

    /// The meter provider (for the service's own metrics).
    pub fn meter_provider(&self) -> &SdkMeterProvider {
        &self.pipeline.meter_provider
    }

    /// How many export calls (span batches and metric collections) have failed so far: a health signal for a
    /// service that wants to know its telemetry is not arriving, beyond the once-a-minute log line.
    pub fn export_failures(&self) -> u64 {
        self.pipeline.errors.total()
    }

    /// Exports what is queued now, bounded like shutdown.
    pub fn force_flush(&self) -> Result<(), ShutdownError> {
        let pipeline = Arc::clone(&self.pipeline);
        bounded(move || {
            let t = pipeline.tracer_provider.force_flush();
            let m = pipeline.meter_provider.force_flush();
            t.and(m)
        })
    }

    /// Flushes spans and metrics and stops export. Idempotent (later calls return the first result) and bounded
    /// by [`SHUTDOWN_BOUND`] even when the collector is gone; requests made afterwards are not exported.
    pub fn shutdown(&self) -> Result<(), ShutdownError> {
        self.pipeline
            .shutdown
            .get_or_init(|| {
                let pipeline = Arc::clone(&self.pipeline);
                bounded(move || {
                    let t = pipeline
                        .tracer_provider
                        .shutdown_with_timeout(SHUTDOWN_BOUND);
                    let m = pipeline
                        .meter_provider
                        .shutdown_with_timeout(SHUTDOWN_BOUND);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_cross_threads() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<Memspan>();
    }
}
