//! memdrift: catches memory trouble in AI inference services from OTLP spans and metrics.
//!
//! Data flows receivers -> extract -> engine -> detectors -> exporters; see ARCHITECTURE.md for the map.
//! The modules from [`extract`] to [`detect`] are pure (no clocks, sockets or files); I/O lives in
//! [`receivers`], [`topology`] and [`replay`].

pub mod checkpoint;
pub mod config;
pub mod core;
pub mod demo;
pub mod detect;
pub mod duration;
pub mod engine;
pub mod extract;
pub mod gate;
pub mod outputs;
pub mod receivers;
pub mod replay;
pub mod sample;
pub mod signal;
pub mod stats;
pub mod telemetry;
pub mod topology;

pub use memdrift_anomaly::{Anomaly, AnomalyKind, AnomalyState, Evidence, LeakClass};
