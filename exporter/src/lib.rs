//! Ships memdrift's findings where operators already look.
//!
//! - [`anomaly`]: the anomaly event, the contract of the JSON lines output (DESIGN.md).
//! - [`jsonl`]: anomaly events as JSON lines, to a file or stdout.
//! - [`prometheus`]: the scrape endpoint for self-telemetry and derived metrics.
//! - [`otlp`]: anomaly events as OTLP logs and spans, and the metrics, to any OTLP backend, with the
//!   specification's retry rules and an optional on-disk queue.

pub mod anomaly;
pub mod jsonl;
pub mod otlp;
pub mod prometheus;

pub use anomaly::{Anomaly, AnomalyKind, AnomalyState};
