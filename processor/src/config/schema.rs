//! The pipeline file's structure. Every section rejects unknown keys.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

pub use crate::duration::Duration;

use super::error::did_you_mean;
use super::ConfigError;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineFile {
    /// Components the receivers and exporters refer to by name (the Collector's `extensions:`).
    #[serde(default)]
    pub extensions: Extensions,
    #[serde(default)]
    pub receivers: Receivers,
    #[serde(default)]
    pub processors: Processors,
    #[serde(default)]
    pub exporters: Exporters,
    pub service: Service,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Receivers {
    /// OTLP over gRPC and HTTP.
    pub otlp: Option<OtlpReceiver>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OtlpReceiver {
    #[serde(default)]
    pub protocols: Protocols,
    /// Largest accepted request, compressed or not, in bytes (the decompressed body too). Default 16 MiB.
    #[serde(default = "default_max_request_bytes")]
    pub max_request_bytes: usize,
    /// Spans and points stamped further than this in the future (by the receiving host's clock) are refused, so
    /// one bad clock cannot push the watermark ahead and make everyone else's data late. Default 5m.
    #[serde(default)]
    pub max_clock_skew: Option<Duration>,
    /// Memory for the requests being decoded at once, both transports together, in bytes: each request
    /// holds its body and what decoding it builds (protobuf: asked for allocation by allocation; JSON: weighed
    /// first). One that does not fit beside
    /// the others is refused for now (HTTP 503 + Retry-After, gRPC UNAVAILABLE: the sender retries); one bigger
    /// than the whole budget is refused for good (HTTP 413, gRPC RESOURCE_EXHAUSTED). Default 256 MiB.
    #[serde(default = "default_decode_budget_bytes")]
    pub decode_budget_bytes: usize,
    /// Open connections per protocol at most. At the cap the oldest connection that has sent nothing is closed
    /// to make room; when every one has sent something, the new one is closed. Default 1024.
    #[serde(default)]
    pub max_connections: Option<usize>,
    /// A connection's first bytes, and each HTTP/1 request's headers, are due within this. Default 10s.
    #[serde(default)]
    pub header_read_timeout: Option<Duration>,
    /// A request's whole body (HTTP) or whole call (gRPC) is due within this. Default 30s.
    #[serde(default)]
    pub request_timeout: Option<Duration>,
    /// A connection silent this long is closed (senders reconnect). Default 2m.
    #[serde(default)]
    pub idle_timeout: Option<Duration>,
    /// Refuse new data (retryably) while memdrift's own memory is high. On by default inside a container with
    /// a memory limit.
    #[serde(default)]
    pub memory_limiter: MemoryLimiterSection,
}

/// The Collector's `memory_limiter` settings: the hard limit is `limit_mib`, else `limit_percentage` of the
/// container's limit; above the hard limit less `spike_limit_percentage` of it, new data is refused.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryLimiterSection {
    pub limit_mib: Option<u64>,
    /// Default 80.
    pub limit_percentage: Option<u8>,
    /// Default 20.
    pub spike_limit_percentage: Option<u8>,
}

fn default_max_request_bytes() -> usize {
    16 << 20
}

fn default_decode_budget_bytes() -> usize {
    256 << 20
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Protocols {
    pub grpc: Option<Endpoint>,
    pub http: Option<Endpoint>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    /// host:port to listen on.
    pub endpoint: String,
    /// Serve TLS (and, with `client_ca_file`, require client certificates). Off by default.
    #[serde(default)]
    pub tls: Option<ServerTls>,
    /// Require every request to authenticate with the named extension. Off by default.
    #[serde(default)]
    pub auth: Option<Auth>,
}

/// A server's TLS, as the Collector's `tls:` of a receiver.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerTls {
    /// PEM certificate chain the server presents.
    pub cert_file: String,
    /// PEM private key of that certificate.
    pub key_file: String,
    /// PEM CA certificates: when set, a client must present a certificate signed by one of them.
    #[serde(default)]
    pub client_ca_file: Option<String>,
}

/// `auth: { authenticator: bearertokenauth }`: the extension that checks requests.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Auth {
    pub authenticator: String,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Extensions {
    /// A shared bearer token, as the Collector's `bearertokenauth`: requests must carry
    /// `Authorization: Bearer <token>` (HTTP header, gRPC metadata).
    pub bearertokenauth: Option<BearerTokenAuth>,
    /// The rollout gate: "may this canary proceed?" over HTTP, for Argo Rollouts, Flagger and scripts
    /// (`GET /v1/gate`, `/v1/flagger/*`; see the README). Off unless the section is present.
    pub gate: Option<GateSection>,
}

/// `extensions.gate`: where the gate listens, and its rule. Every rule setting is optional.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GateSection {
    /// host:port to serve the gate on, e.g. `0.0.0.0:8080`.
    pub endpoint: String,
    /// Serve the gate over TLS. Off by default.
    #[serde(default)]
    pub tls: Option<ServerTls>,
    /// Require callers to authenticate with the named extension. Off by default.
    #[serde(default)]
    pub auth: Option<Auth>,
    /// Largest ratio of spreads (canary / baseline) that counts as no material difference: `pass` needs the
    /// ratio's upper bound below it on every signal. Default: `spread_drift.min_ratio` (1.25).
    #[serde(default)]
    pub tolerance: Option<f64>,
    /// Confidence of that upper bound, valid however often the gate is asked. Default 0.95.
    #[serde(default)]
    pub confidence: Option<f64>,
    /// Shortest time a canary must have run (event time, from its start) before it can pass. Default 10m.
    #[serde(default)]
    pub min_duration: Option<Duration>,
    /// Fewest values of each cohort compared before a pass. Default 200.
    #[serde(default)]
    pub min_samples: Option<u64>,
    /// A canary instance forecast (by `growth`) to reach its memory limit sooner than this cannot pass, even
    /// before the growth warning opens. Default 1h.
    #[serde(default)]
    pub min_time_to_limit: Option<Duration>,
    /// How far back a comparison may reach (looks, findings and instances are kept this long). Default 2h.
    #[serde(default)]
    pub history: Option<Duration>,
    /// Services the gate keeps state for at most; newcomers beyond are ignored (and counted). Default 10000.
    #[serde(default)]
    pub max_services: Option<usize>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BearerTokenAuth {
    /// The token itself (e.g. `${env:MEMDRIFT_BEARER_TOKEN}`).
    #[serde(default)]
    pub token: Option<String>,
    /// A file holding the token (e.g. a mounted Kubernetes secret); read at start, trailing newline ignored.
    #[serde(default)]
    pub filename: Option<String>,
    /// The scheme before the token. Default `Bearer`.
    #[serde(default)]
    pub scheme: Option<String>,
}

/// `processors:`. The two stages every pipeline has are typed here; every other section belongs to a detector
/// and is kept as YAML for the detector to read (`detect::DETECTORS`), so this file names no detector.
#[derive(Clone, Debug, Default)]
pub struct Processors {
    /// How samples are read from spans and metrics.
    pub extract: Option<ExtractSection>,
    /// Event-time windows and state bounds.
    pub windows: Option<WindowsSection>,
    /// Detector sections by name, as written.
    pub detectors: BTreeMap<String, serde_norway::Value>,
}

/// Every name `processors:` accepts: the two stages, then the detectors in table order.
pub fn processor_names() -> &'static [&'static str] {
    static NAMES: OnceLock<Vec<&'static str>> = OnceLock::new();
    NAMES.get_or_init(|| {
        ["extract", "windows"]
            .into_iter()
            .chain(crate::detect::DETECTORS.iter().map(|d| d.name))
            .collect()
    })
}

impl<'de> Deserialize<'de> for Processors {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Sections;
        impl<'de> Visitor<'de> for Sections {
            type Value = Processors;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a map of processor sections")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Processors, A::Error> {
                let mut p = Processors::default();
                let mut seen = Vec::new();
                while let Some(name) = map.next_key::<String>()? {
                    if seen.contains(&name) {
                        return Err(de::Error::custom(format_args!("duplicate field `{name}`")));
                    }
                    seen.push(name.clone());
                    match name.as_str() {
                        // Typed here, so their errors keep the parser's own position.
                        "extract" => p.extract = map.next_value()?,
                        "windows" => p.windows = map.next_value()?,
                        n if processor_names().contains(&n) => {
                            // A section left empty (`leak:`) configures nothing, as for the typed ones.
                            let v: Option<serde_norway::Value> = map.next_value()?;
                            if let Some(v) = v {
                                p.detectors.insert(name, v);
                            }
                        }
                        _ => return Err(de::Error::unknown_field(&name, processor_names())),
                    }
                }
                Ok(p)
            }
        }
        d.deserialize_map(Sections)
    }
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExtractSection {
    /// Attributes tried in order (span, then resource) for the cohort. Default: memspan.cohort,
    /// feature_flag.result.variant, service.version.
    pub cohort_attributes: Option<Vec<String>>,
    /// Extra or replacement metric names -> signal, e.g. `go.memory.used: memspan.heap.allocated`.
    #[serde(default)]
    pub metrics: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowsSection {
    /// Window length. Default 60s.
    pub size: Option<Duration>,
    /// How far windows slide; windows end on multiples of it. Default 10s.
    pub step: Option<Duration>,
    /// How far behind its own source's newest event time (an instance of a service) a sample may arrive and
    /// still be used. Each source's windows close on its own progress, so sources flushing at different
    /// moments do not make each other late. Default 5s.
    pub allowed_lateness: Option<Duration>,
    /// An instance whose newest event time is this far behind its service's newest stops holding back the
    /// service's cohort windows (it is idle; its own windows still close on its own progress). Between a step
    /// and `idle_timeout`. Default 5m (or `idle_timeout`, if shorter).
    pub source_idle: Option<Duration>,
    /// A group not seen for this long (event time) is forgotten. Default 10m.
    pub idle_timeout: Option<Duration>,
    /// Cap on live series; samples for new series beyond it are counted as overflow. Default 100000.
    pub max_keys: Option<usize>,
    /// Values a cohort series keeps per step for the spread comparison (a uniform reservoir beyond): 3,072 per
    /// one-minute window, which measures a spread ratio to about 2%. Default 512.
    pub max_samples_per_pane: Option<usize>,
    /// Values an instance series keeps per step (for its window's median, MAD and p95 only: the per-instance
    /// detectors read exact extremes). Default 64.
    pub instance_samples_per_pane: Option<usize>,
    /// Trace ids kept per window as exemplars. Default 5.
    pub exemplars: Option<usize>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Exporters {
    /// Anomaly events as JSON lines.
    pub jsonl: Option<JsonlExporter>,
    /// The Prometheus scrape endpoint.
    pub prometheus: Option<PrometheusExporter>,
    /// Anomaly events (as logs and spans) and metrics to an OTLP backend.
    pub otlp: Option<OtlpExporter>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JsonlExporter {
    /// A file path, or `stdout`.
    pub path: String,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrometheusExporter {
    /// host:port to serve /metrics on.
    pub endpoint: String,
    /// Serve `/metrics` over TLS. Off by default.
    #[serde(default)]
    pub tls: Option<ServerTls>,
    /// Require scrapers to authenticate (Prometheus: `authorization: { credentials: ... }`). Off by default.
    #[serde(default)]
    pub auth: Option<Auth>,
}

/// OTLP export. Every setting is optional: one the file leaves out (or leaves empty) is taken from the standard
/// `OTEL_EXPORTER_OTLP_*` variables, as the OpenTelemetry SDKs read them, then from the defaults below. A
/// signal's own variable (`OTEL_EXPORTER_OTLP_LOGS_ENDPOINT`, `..._TRACES_HEADERS`, ...) wins over the file for
/// that signal, so the embedded default pipeline can be steered per signal without a file.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OtlpExporter {
    /// `host:port` or a URL, e.g. `http://collector:4318` or `https://otlp.example.com`. For HTTP,
    /// `/v1/logs`, `/v1/traces` and `/v1/metrics` are appended. When it resolves empty (unset and no
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`), the exporter is skipped.
    pub endpoint: Option<String>,
    /// `grpc` or `http/protobuf` (default, as the specification says).
    pub protocol: Option<OtlpProtocol>,
    /// Sent with every request, e.g. `authorization: "Bearer ${env:OTLP_TOKEN}"`.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// `gzip` (default, as the Collector) or `none`.
    pub compression: Option<OtlpCompression>,
    /// Per attempt. Default 10s.
    pub timeout: Option<Duration>,
    #[serde(default)]
    pub tls: OtlpTls,
    #[serde(default)]
    pub retry: OtlpRetry,
    #[serde(default)]
    pub queue: OtlpQueue,
    /// How often the metrics go out. Default `OTEL_METRIC_EXPORT_INTERVAL`, else 60s.
    pub metrics_interval: Option<Duration>,
    /// How long a stopping service keeps delivering what is queued. Default 5s.
    pub shutdown_timeout: Option<Duration>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
pub enum OtlpProtocol {
    #[serde(rename = "grpc")]
    Grpc,
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
pub enum OtlpCompression {
    #[serde(rename = "gzip")]
    Gzip,
    #[serde(rename = "none")]
    None,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OtlpTls {
    /// A PEM file of extra trusted roots (a private CA), beside the system's. `OTEL_EXPORTER_OTLP_CERTIFICATE`.
    pub ca_file: Option<String>,
    /// Plain text for an endpoint without a scheme (`collector:4317`); the scheme of a URL decides by itself.
    /// `OTEL_EXPORTER_OTLP_INSECURE`. Default false.
    pub insecure: Option<bool>,
}

/// Exponential backoff with jitter between attempts of a retryable failure (defaults as the Collector's).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OtlpRetry {
    /// The first wait. Default 5s.
    pub initial_interval: Option<Duration>,
    /// The longest wait. Default 30s.
    pub max_interval: Option<Duration>,
    /// A batch still failing this long after its first attempt is given up and counted as failed; 0s means
    /// never (with `queue.directory`, nothing is lost however long the backend is away). Default 5m.
    pub max_elapsed_time: Option<Duration>,
    /// The longest wait a backend's `Retry-After` (HTTP) or RetryInfo (gRPC) is obeyed for; a longer one is cut
    /// to it. Default 60s.
    pub max_server_delay: Option<Duration>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OtlpQueue {
    /// Batches of anomaly logs and spans waiting per signal; beyond it new ones are dropped and counted. Metrics
    /// keep at most 64 batches (a newer snapshot supersedes them). Default 1000.
    pub size: Option<usize>,
    /// A directory for the on-disk queue of logs and traces: what was queued survives a crash or kill -9 and
    /// is sent after the restart (at least once). One memdrift per directory. Default: in memory only.
    pub directory: Option<String>,
    /// Disk space per signal for the on-disk queue, in bytes. Default 268435456 (256 MiB).
    pub max_disk_bytes: Option<u64>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    /// The extensions in use, as in the Collector (informational: an extension is used where it is named).
    #[serde(default)]
    pub extensions: Vec<String>,
    pub pipelines: BTreeMap<String, PipelineDef>,
    /// On SIGTERM, how long requests in flight get to finish; connections still open then (a client stuck
    /// mid-request) are cut, what was accepted is run through the engine, and the exporters flush (each within
    /// its own `shutdown_timeout`). Default 5s.
    #[serde(default)]
    pub shutdown_timeout: Option<Duration>,
    /// Keep the engine's and detectors' state across restarts: written to a directory on an interval and at
    /// shutdown, read back at start, so a restart or rolling upgrade does not open an hour-long blind window on
    /// a leak. Off by default.
    #[serde(default)]
    pub checkpoint: Option<CheckpointSection>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointSection {
    /// Where the `checkpoint` file lives (created if missing; one memdrift per directory, it is locked). State
    /// saved under other `windows` or detector settings is not restored.
    pub directory: String,
    /// How often the state is written besides at shutdown (what a crash or kill -9 can lose); `0s` writes only
    /// at shutdown. Default 60s.
    #[serde(default)]
    pub interval: Option<Duration>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineDef {
    pub receivers: Vec<String>,
    #[serde(default)]
    pub processors: Vec<String>,
    pub exporters: Vec<String>,
}

const RECEIVERS: [&str; 1] = ["otlp"];
const EXPORTERS: [&str; 3] = ["jsonl", "prometheus", "otlp"];

impl PipelineFile {
    fn referenced<'a>(&'a self, pick: impl Fn(&'a PipelineDef) -> &'a Vec<String>) -> Vec<&'a str> {
        let mut v: Vec<&str> = self
            .service
            .pipelines
            .values()
            .flat_map(|p| pick(p).iter().map(String::as_str))
            .collect();
        v.sort();
        v.dedup();
        v
    }

    pub fn receiver_enabled(&self, name: &str) -> bool {
        self.referenced(|p| &p.receivers).contains(&name)
    }

    pub fn exporter_enabled(&self, name: &str) -> bool {
        self.referenced(|p| &p.exporters).contains(&name)
    }

    pub fn processor_enabled(&self, name: &str) -> bool {
        self.referenced(|p| &p.processors).contains(&name)
    }

    /// Where a pipeline lists component `name` under `section` (`receivers`, `processors`, `exporters`):
    /// `service.pipelines.<pipeline>.<section>.<index>` for the first pipeline that does.
    fn use_path(&self, section: &str, name: &str) -> Vec<String> {
        let mut path = vec!["service".to_string(), "pipelines".to_string()];
        for (pipeline, def) in &self.service.pipelines {
            let list = match section {
                "receivers" => &def.receivers,
                "processors" => &def.processors,
                _ => &def.exporters,
            };
            if let Some(i) = list.iter().position(|n| n == name) {
                path.extend([pipeline.clone(), section.to_string(), i.to_string()]);
                break;
            }
        }
        path
    }

    /// Cross-references: every component a pipeline names is known and configured. Returns warnings for
    /// components configured but unused.
    pub fn check(&self, file: &str, text: &str) -> Result<Vec<String>, ConfigError> {
        if self.service.pipelines.is_empty() {
            return Err(ConfigError::at_path(
                file,
                text,
                &["service", "pipelines"],
                "service.pipelines is empty".into(),
                Some("add e.g. `memory: { receivers: [otlp], processors: [extract, windows], exporters: [jsonl] }`".into()),
            ));
        }
        let defined_receivers: Vec<&str> = self.receivers.otlp.iter().map(|_| "otlp").collect();
        let p = &self.processors;
        let defined_processors: Vec<&str> = processor_names()
            .iter()
            .copied()
            .filter(|n| match *n {
                "extract" => p.extract.is_some(),
                "windows" => p.windows.is_some(),
                n => p.detectors.contains_key(n),
            })
            .collect();
        let defined_exporters: Vec<&str> = [
            self.exporters.jsonl.as_ref().map(|_| "jsonl"),
            self.exporters.prometheus.as_ref().map(|_| "prometheus"),
            self.exporters.otlp.as_ref().map(|_| "otlp"),
        ]
        .into_iter()
        .flatten()
        .collect();
        let mut warnings = Vec::new();
        for (section, known, defined, used) in [
            (
                "receivers",
                &RECEIVERS[..],
                &defined_receivers,
                self.referenced(|p| &p.receivers),
            ),
            (
                "processors",
                processor_names(),
                &defined_processors,
                self.referenced(|p| &p.processors),
            ),
            (
                "exporters",
                &EXPORTERS[..],
                &defined_exporters,
                self.referenced(|p| &p.exporters),
            ),
        ] {
            for name in &used {
                let path = self.use_path(section, name);
                let path: Vec<&str> = path.iter().map(String::as_str).collect();
                if !known.contains(name) {
                    return Err(ConfigError::at_path(
                        file,
                        text,
                        &path,
                        format!("service.pipelines: unknown {section} component `{name}`"),
                        Some(
                            did_you_mean(name, known).unwrap_or_else(|| {
                                format!("known {section}: {}", known.join(", "))
                            }),
                        ),
                    ));
                }
                if !defined.contains(name) {
                    return Err(ConfigError::at_path(
                        file,
                        text,
                        &path,
                        format!("service.pipelines uses `{name}` but the top-level `{section}:` section does not configure it"),
                        Some(format!("add `{name}:` under `{section}:` (see pipelines/default.yaml)")),
                    ));
                }
            }
            for name in defined.iter().filter(|d| !used.contains(d)) {
                warnings.push(format!(
                    "{file}: {section}.{name} is configured but no pipeline uses it"
                ));
            }
        }
        for (name, p) in &self.service.pipelines {
            if p.receivers.is_empty() || p.exporters.is_empty() {
                return Err(ConfigError::at_path(
                    file,
                    text,
                    &["service", "pipelines", name],
                    format!(
                        "service.pipelines.{name} needs at least one receiver and one exporter"
                    ),
                    None,
                ));
            }
        }
        Ok(warnings)
    }
}
