//! Ships memdrift's findings where operators already look.
//!
//! - [`anomaly`]: the anomaly event as a JSON lines record, the contract of DESIGN.md.
//! - [`output`]: the one trait every output of anomaly events implements.
//! - [`jsonl`]: anomaly events as JSON lines, to a file or stdout.
//! - [`prometheus`]: the scrape endpoint for self-telemetry and derived metrics.
//! - [`otlp`]: anomaly events as OTLP logs and spans, and the metrics, to any OTLP backend, with the
//!   specification's retry rules and an optional on-disk queue.
//!
//! Events arrive as the core's typed [`Anomaly`]; each output renders it its own way and parses nothing back.

pub mod anomaly;
pub mod jsonl;
pub mod otlp;
pub mod output;
pub mod prometheus;

pub use anomaly::{Anomaly, AnomalyKind, AnomalyRecord, AnomalyState};
pub use output::Output;
