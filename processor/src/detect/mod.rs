//! Detectors: pure functions of closed windows. No clocks, sockets or files: closed windows in, anomaly events
//! and derived gauges out, which keeps `replay` deterministic and the tests fast.
//!
//! The engine hands every detector each closed window in event-time order. A detector keeps whatever state it
//! needs between windows, bounded per key, and forgets keys it has not seen for a while (it can tell from the
//! window end times, which are event time). Every finding opens, updates and resolves through one lifecycle,
//! [`alarm::Alarm`].
//!
//! **Adding a detector** is one folder and one row of [`DETECTORS`]: the folder holds the detector, its section
//! of the pipeline file (a serde struct whose doc comments are the user docs), its settings with the defaults,
//! and `impl Settings` for them (name, section type, checks, build); the row is `registration::<TheSettings>()`.
//! Nothing else names it: the pipeline file accepts `processors.<name>`, `service.pipelines.*.processors` may list
//! it, `memdrift validate` checks it, and `run`, `replay` and `demo` run it.

pub mod alarm;
pub mod gc_goal;
pub mod grid;
pub mod growth;
pub mod leak;
pub mod spread_drift;

use std::any::Any;
use std::fmt::Debug;
use std::sync::Arc;

use serde::de::DeserializeOwned;

use crate::checkpoint::{self, CheckpointError};
use crate::engine::{ClosedWindow, EngineConfig};
use crate::signal::Signal;

/// The detectors, in the order they see each window (which is the order of their events within it).
pub const DETECTORS: &[Registration] = &[
    registration::<spread_drift::SpreadDriftSettings>(),
    registration::<growth::GrowthSettings>(),
    registration::<leak::LeakSettings>(),
    registration::<gc_goal::GcGoalSettings>(),
];

/// Reads a detector's section (defaults filled, values checked) into the settings that build the detector.
pub type Configure =
    fn(&serde_norway::Value, &EngineConfig) -> Result<Arc<dyn Configured>, SectionError>;

/// One row of [`DETECTORS`].
pub struct Registration {
    /// The detector's name: its section under `processors:` and its name in `service.pipelines`.
    pub name: &'static str,
    /// Reads the section (defaults filled, values checked) into the settings that build the detector.
    pub configure: Configure,
}

/// A detector's settings, checked: what [`Configured::build`] turns into a running detector. The settings type
/// itself is reachable through `as_any`, for tests and tools that read a setting back. Every [`Settings`] is one.
pub trait Configured: Debug + Send + Sync {
    fn build(&self, engine: &EngineConfig) -> Box<dyn Detector>;
    fn as_any(&self) -> &dyn Any;
}

/// What a detector implements for its settings to make its row of [`DETECTORS`] (`registration::<T>()`).
pub trait Settings: Clone + Debug + Send + Sync + Sized + 'static {
    /// The section under `processors:` in the pipeline file.
    const NAME: &'static str;
    /// The section as written: a serde struct with `deny_unknown_fields`, every field optional.
    type Section: DeserializeOwned;
    /// Fills the defaults and checks the values; an error names the key.
    fn check(s: &Self::Section, engine: &EngineConfig) -> Result<Self, SectionError>;
    fn build(&self, engine: &EngineConfig) -> Box<dyn Detector>;
}

/// The detector-table row of the detector whose settings are `T`.
pub const fn registration<T: Settings>() -> Registration {
    Registration {
        name: T::NAME,
        configure: configure::<T>,
    }
}

fn configure<T: Settings>(
    section: &serde_norway::Value,
    engine: &EngineConfig,
) -> Result<Arc<dyn Configured>, SectionError> {
    let s: T::Section = read_section(T::NAME, section)?;
    Ok(Arc::new(T::check(&s, engine)?))
}

impl<T: Settings> Configured for T {
    fn build(&self, engine: &EngineConfig) -> Box<dyn Detector> {
        Settings::build(self, engine)
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// What is wrong with a section: the path of the offending key inside it (empty for the section itself) and
/// what to do about it. The pipeline loader adds the file, the line and a hint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SectionError {
    pub path: Vec<String>,
    pub message: String,
}

impl SectionError {
    pub fn at(key: &str, message: String) -> SectionError {
        SectionError {
            path: vec![key.to_string()],
            message,
        }
    }
}

impl From<(&'static str, String)> for SectionError {
    fn from((key, message): (&'static str, String)) -> SectionError {
        SectionError::at(key, message)
    }
}

/// Reads a section into its serde type; an error names the key it is about, `processors.<name>.<key>: ...`.
pub fn read_section<T: DeserializeOwned>(
    name: &str,
    section: &serde_norway::Value,
) -> Result<T, SectionError> {
    serde_path_to_error::deserialize(section.clone()).map_err(|e| {
        let mut path: Vec<String> = e
            .path()
            .iter()
            .filter_map(|s| match s {
                serde_path_to_error::Segment::Map { key } => Some(key.clone()),
                serde_path_to_error::Segment::Seq { index } => Some(index.to_string()),
                _ => None,
            })
            .collect();
        let message = e.into_inner().to_string();
        // An unknown key is not on the path yet; it is what the message is about.
        if let Some(key) = message
            .split("unknown field `")
            .nth(1)
            .and_then(|r| r.split('`').next())
        {
            path.push(key.to_string());
        }
        let at = std::iter::once(name.to_string())
            .chain(
                path.iter()
                    .filter(|k| !message.contains(&format!("`{k}`")))
                    .cloned(),
            )
            .collect::<Vec<_>>()
            .join(".");
        SectionError {
            path,
            message: format!("processors.{at}: {message}"),
        }
    })
}

/// One value of a derived metric, e.g. the sd ratio of a canary against its baseline.
#[derive(Clone, Debug, PartialEq)]
pub struct Gauge {
    /// The Prometheus name (`memdrift_*`).
    pub name: &'static str,
    pub help: &'static str,
    /// Label names and values; a given name always comes with the same label names.
    pub labels: Vec<(&'static str, String)>,
    pub value: f64,
}

/// What detectors produce for one window.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Findings {
    pub anomalies: Vec<memdrift_anomaly::Anomaly>,
    /// The current value of every derived gauge the detector keeps; a gauge absent here is gone.
    pub gauges: Vec<Gauge>,
}

pub trait Detector: Send {
    /// The detector's name in the pipeline file and in logs.
    fn name(&self) -> &'static str;

    /// Looks at one closed window and appends anomaly events (open, update, resolved) and gauges to `out`.
    fn on_window(&mut self, window: &ClosedWindow, out: &mut Findings);

    /// How many keys the detector holds state for, so tests and self-telemetry can show it stays bounded.
    fn live_keys(&self) -> usize;

    /// The signals whose instance series (`Scope::Instance` summaries) it reads. The engine keeps an instance's
    /// series of the signals some detector reads, and no others: a request's per-request values, for one,
    /// matter to the cohort comparison only. By default every signal.
    fn instance_signals(&self) -> Vec<Signal> {
        Signal::ALL.to_vec()
    }

    /// Writes the state it keeps between windows into `out`, encoded for a checkpoint ([`checkpoint::encode`]).
    /// Called twice per checkpoint (to size the section, then to write it): it must write the same bytes.
    fn save(&self, out: &mut dyn std::io::Write) -> Result<(), CheckpointError>;

    /// Carries on from what [`Detector::save`] wrote under the same settings, in place of its own state.
    fn restore(&mut self, state: &[u8]) -> Result<(), CheckpointError>;
}
