//! The pipeline file: YAML in the OpenTelemetry Collector's shape.
//!
//! ```yaml
//! receivers:  { otlp: { protocols: { grpc: { endpoint: 0.0.0.0:4317 }, http: { endpoint: 0.0.0.0:4318 } } } }
//! processors: { extract: {...}, windows: {...} }
//! exporters:  { jsonl: { path: stdout }, prometheus: { endpoint: 0.0.0.0:9464 } }
//! service:    { pipelines: { memory: { receivers: [otlp], processors: [extract, windows], exporters: [jsonl] } } }
//! ```
//!
//! `${env:VAR}` and `${env:VAR:-default}` are substituted before parsing (`$$` is a literal `$`). Unknown keys
//! and wrong types are errors that name the file, the line and, where a near name exists, the likely fix.

mod env;
mod error;
mod locate;
mod otlp;
mod schema;

use std::path::Path;
use std::sync::Arc;

pub use error::ConfigError;
pub use schema::*;

use crate::detect::{Configured, Detector, DETECTORS};
use crate::engine::EngineConfig;
use crate::extract::ExtractConfig;
use crate::gate::GateSettings;
use crate::signal::Signal;

/// The embedded default pipeline, `pipelines/default.yaml`.
pub const DEFAULT_PIPELINE: &str = include_str!("../../../pipelines/default.yaml");

/// A checked pipeline, ready to build the service from.
#[derive(Clone, Debug)]
pub struct Pipeline {
    pub file: PipelineFile,
    pub extract: ExtractConfig,
    pub engine: EngineConfig,
    /// The detectors a pipeline enables, with their settings, in the order of [`DETECTORS`].
    pub detectors: Vec<(&'static str, Arc<dyn Configured>)>,
    /// The OTLP exporter with every setting resolved; `None` when unused or without an endpoint.
    pub otlp: Option<memdrift_exporter::otlp::OtlpConfig>,
    /// The rollout gate's rule, when `extensions.gate` is present.
    pub gate: Option<GateSettings>,
    /// Notes that are not errors (unused components, unset variables).
    pub warnings: Vec<String>,
}

impl Pipeline {
    /// Loads and checks a pipeline file.
    pub fn load(path: &Path) -> Result<Pipeline, ConfigError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError::plain(&name, format!("cannot read the pipeline file: {e}"))
        })?;
        Pipeline::parse(&name, &text)
    }

    /// The embedded default pipeline.
    pub fn default_pipeline() -> Result<Pipeline, ConfigError> {
        Pipeline::parse("pipelines/default.yaml (embedded)", DEFAULT_PIPELINE)
    }

    /// Parses pipeline text against the process environment; `name` is used in error messages.
    pub fn parse(name: &str, text: &str) -> Result<Pipeline, ConfigError> {
        Pipeline::parse_with_env(name, text, &|v| std::env::var(v).ok())
    }

    /// Parses pipeline text, reading environment variables (`${env:...}`, `OTEL_EXPORTER_OTLP_*`) through `env`.
    pub fn parse_with_env(
        name: &str,
        text: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Pipeline, ConfigError> {
        let (text, mut warnings) = env::substitute(name, text, env)?;
        let file: PipelineFile =
            serde_norway::from_str(&text).map_err(|e| ConfigError::from_yaml(name, &text, &e))?;
        warnings.extend(file.check(name, &text)?);
        let extract = build_extract(name, &text, &file)?;
        let engine = build_engine(name, &text, &file)?;
        // Each enabled detector reads its own section; an error names the key's own line.
        let mut detectors = Vec::new();
        for d in DETECTORS {
            let Some(section) = file
                .processors
                .detectors
                .get(d.name)
                .filter(|_| file.processor_enabled(d.name))
            else {
                continue;
            };
            let settings = (d.configure)(section, &engine)
                .map_err(|e| ConfigError::from_section(name, &text, d.name, e))?;
            detectors.push((d.name, settings));
        }
        let otlp = otlp::build(name, &text, &file, env)?;
        let gate = match &file.extensions.gate {
            None => None,
            Some(section) => {
                let spread = detectors.iter().find_map(|(_, d)| {
                    d.as_any()
                        .downcast_ref::<crate::detect::spread_drift::SpreadDriftSettings>()
                });
                let d = GateSettings::defaults(&engine, spread);
                let settings = GateSettings {
                    tolerance: section.tolerance.unwrap_or(d.tolerance),
                    confidence: section.confidence.unwrap_or(d.confidence),
                    min_duration_ns: section
                        .min_duration
                        .map_or(d.min_duration_ns, |x| x.as_nanos()),
                    min_samples: section.min_samples.unwrap_or(d.min_samples),
                    min_time_to_limit_s: section
                        .min_time_to_limit
                        .map_or(d.min_time_to_limit_s, |x| x.as_nanos() as f64 / 1e9),
                    history_ns: section.history.map_or(d.history_ns, |x| x.as_nanos()),
                    max_services: section.max_services.unwrap_or(d.max_services),
                    ..d
                };
                let settings = settings.checked().map_err(|(key, message)| {
                    ConfigError::at_path(name, &text, &["extensions", "gate", key], message, None)
                })?;
                Some(settings)
            }
        };
        Ok(Pipeline {
            file,
            extract,
            engine,
            detectors,
            otlp,
            gate,
            warnings,
        })
    }
}

impl Pipeline {
    /// The settings of the enabled detector whose settings are of type `T`.
    pub fn settings<T: 'static>(&self) -> Option<&T> {
        self.detectors
            .iter()
            .find_map(|(_, d)| d.as_any().downcast_ref::<T>())
    }

    /// A fresh instance of every detector the pipeline enables.
    pub fn build_detectors(&self) -> Vec<Box<dyn Detector>> {
        self.detectors
            .iter()
            .map(|(_, d)| d.build(&self.engine))
            .collect()
    }
}

fn build_extract(
    name: &str,
    text: &str,
    file: &PipelineFile,
) -> Result<ExtractConfig, ConfigError> {
    let mut cfg = ExtractConfig::default();
    let Some(section) = file
        .processors
        .extract
        .as_ref()
        .filter(|_| file.processor_enabled("extract"))
    else {
        return Ok(cfg);
    };
    if let Some(attrs) = &section.cohort_attributes {
        if attrs.is_empty() {
            return Err(ConfigError::at_path(
                name,
                text,
                &["processors", "extract", "cohort_attributes"],
                "processors.extract.cohort_attributes is empty".into(),
                Some(
                    "name at least one attribute, or remove the key to use the default order"
                        .into(),
                ),
            ));
        }
        cfg.cohort_attributes = attrs.clone();
    }
    for (metric, signal) in &section.metrics {
        let Some(s) = Signal::from_name(signal) else {
            let names: Vec<&str> = Signal::ALL.iter().map(|s| s.name()).collect();
            return Err(ConfigError::at_path(
                name,
                text,
                &["processors", "extract", "metrics", metric],
                format!("processors.extract.metrics.{metric}: unknown signal `{signal}`"),
                Some(
                    error::did_you_mean(signal, &names)
                        .unwrap_or_else(|| format!("one of: {}", names.join(", "))),
                ),
            ));
        };
        cfg.metric_signals.insert(metric.clone(), s);
    }
    Ok(cfg)
}

fn build_engine(name: &str, text: &str, file: &PipelineFile) -> Result<EngineConfig, ConfigError> {
    let mut cfg = EngineConfig::default();
    let Some(w) = file
        .processors
        .windows
        .as_ref()
        .filter(|_| file.processor_enabled("windows"))
    else {
        return Ok(cfg);
    };
    let set = |field: Option<Duration>, into: &mut u64| {
        if let Some(d) = field {
            *into = d.as_nanos();
        }
    };
    set(w.size, &mut cfg.window_ns);
    set(w.step, &mut cfg.step_ns);
    set(w.allowed_lateness, &mut cfg.allowed_lateness_ns);
    set(w.idle_timeout, &mut cfg.idle_timeout_ns);
    set(w.source_idle, &mut cfg.source_idle_ns);
    if w.source_idle.is_none() {
        // The default never outlives the groups themselves.
        cfg.source_idle_ns = cfg.source_idle_ns.min(cfg.idle_timeout_ns);
    }
    if let Some(n) = w.max_keys {
        cfg.max_keys = n;
    }
    if let Some(n) = w.max_samples_per_pane {
        cfg.max_samples_per_pane = n;
    }
    if let Some(n) = w.instance_samples_per_pane {
        cfg.instance_samples_per_pane = n;
    }
    if let Some(n) = w.exemplars {
        cfg.exemplars = n;
    }
    let bad = |key: &str, message: String, hint: &str| {
        Err(ConfigError::at_path(
            name,
            text,
            &["processors", "windows", key],
            message,
            Some(hint.to_string()),
        ))
    };
    if cfg.step_ns == 0 || cfg.window_ns == 0 {
        return bad(
            "step",
            "processors.windows: size and step must be positive".into(),
            "e.g. size: 60s, step: 10s",
        );
    }
    if !cfg.window_ns.is_multiple_of(cfg.step_ns) {
        return bad(
            "size",
            format!(
                "processors.windows: size ({}) is not a whole number of steps ({})",
                Duration(cfg.window_ns),
                Duration(cfg.step_ns)
            ),
            "make size a multiple of step, e.g. size: 60s with step: 10s",
        );
    }
    if cfg.window_ns / cfg.step_ns > 360 {
        return bad(
            "size",
            "processors.windows: more than 360 steps per window".into(),
            "use a larger step",
        );
    }
    if cfg.idle_timeout_ns < cfg.window_ns {
        return bad(
            "idle_timeout",
            "processors.windows: idle_timeout is shorter than the window".into(),
            "set idle_timeout to at least the window size",
        );
    }
    if cfg.source_idle_ns < cfg.step_ns || cfg.source_idle_ns > cfg.idle_timeout_ns {
        return bad(
            "source_idle",
            format!(
                "processors.windows: source_idle ({}) must be between a step ({}) and idle_timeout ({})",
                Duration(cfg.source_idle_ns),
                Duration(cfg.step_ns),
                Duration(cfg.idle_timeout_ns)
            ),
            "set source_idle to a few scrape intervals, e.g. source_idle: 5m",
        );
    }
    if cfg.max_keys == 0 || cfg.max_samples_per_pane == 0 || cfg.instance_samples_per_pane == 0 {
        return bad(
            "max_keys",
            "processors.windows: max_keys, max_samples_per_pane and instance_samples_per_pane must be positive"
                .into(),
            "e.g. max_keys: 100000, max_samples_per_pane: 512, instance_samples_per_pane: 64",
        );
    }
    Ok(cfg)
}

#[cfg(test)]
mod tests;
