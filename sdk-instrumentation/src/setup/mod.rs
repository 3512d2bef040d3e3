//! Setup (feature `otlp`): tracer and meter providers with OTLP export, configured from the standard `OTEL_*`
//! variables, and the handle that owns them.
//!
//! - `builder`: the `Builder` (configuration and environment) and the assembly of the pipeline;
//! - `export`: the OTLP exporters and the private runtime every export runs on;
//! - `errors`: export failures, logged at most once per interval;
//! - `handle`: `Memspan`, the pipeline's flush and bounded shutdown.
//!
//! The request path is not here: `Memspan` holds an [`crate::Instrumentation`] over its tracer, the same type a
//! service with its own pipeline builds.

mod builder;
mod errors;
mod export;
mod handle;

pub use builder::{init, Builder};
pub use errors::{ERROR_LOG_INTERVAL, OTEL_INTERNAL_LOGS_OFF};
pub use export::{InitError, Protocol};
pub use handle::{Memspan, ShutdownError, SHUTDOWN_BOUND};
