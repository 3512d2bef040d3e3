//! The `otlp` exporter section resolved against the standard OpenTelemetry environment variables.
//!
//! For each signal and setting the first that is set wins: the signal's own variable
//! (`OTEL_EXPORTER_OTLP_LOGS_ENDPOINT`), the pipeline file, the shared variable (`OTEL_EXPORTER_OTLP_ENDPOINT`),
//! the default. Headers merge key by key in the same order. A signal whose endpoint resolves empty is not sent;
//! with none left the exporter is skipped.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration as StdDuration;

use memdrift_exporter::otlp::{
    env as otel, Compression, Headers, OtlpConfig, Protocol, QueueConfig, RetryConfig, Signal,
    Target,
};

use super::schema::{OtlpCompression, OtlpExporter, OtlpProtocol, PipelineFile};
use super::ConfigError;

const DEFAULT_TIMEOUT: StdDuration = StdDuration::from_secs(10);
const DEFAULT_METRICS_INTERVAL: StdDuration = StdDuration::from_secs(60);
const DEFAULT_SHUTDOWN_TIMEOUT: StdDuration = StdDuration::from_secs(5);
const MIN_DISK_BYTES: u64 = 64 << 10;

fn signal_var(signal: Signal) -> &'static str {
    match signal {
        Signal::Logs => "LOGS",
        Signal::Traces => "TRACES",
        Signal::Metrics => "METRICS",
    }
}

struct Resolver<'a> {
    name: &'a str,
    text: &'a str,
    env: &'a dyn Fn(&str) -> Option<String>,
}

impl Resolver<'_> {
    /// A variable's value; set but empty counts as unset, as the specification says.
    fn var(&self, var: &str) -> Option<(String, String)> {
        (self.env)(var)
            .filter(|v| !v.trim().is_empty())
            .map(|v| (var.to_string(), v))
    }

    /// The signal's own variable, else the shared one (for the settings the file does not hold).
    fn signal_var(&self, signal: Signal, setting: &str) -> Option<(String, String)> {
        self.var(&format!(
            "OTEL_EXPORTER_OTLP_{}_{setting}",
            signal_var(signal)
        ))
    }

    fn shared_var(&self, setting: &str) -> Option<(String, String)> {
        self.var(&format!("OTEL_EXPORTER_OTLP_{setting}"))
    }

    fn env_error(&self, var: &str, value: &str, message: String) -> ConfigError {
        ConfigError::at_path(
            self.name,
            self.text,
            &["exporters", "otlp"],
            format!("exporters.otlp: {var}={value:?}: {message}"),
            Some(format!(
                "fix or unset {var}, or set the value in the pipeline file"
            )),
        )
    }

    /// An error about `key` of the section (dotted below it, e.g. `queue.size`).
    fn file_error(&self, key: &str, message: String, hint: &str) -> ConfigError {
        let path: Vec<&str> = ["exporters", "otlp"]
            .into_iter()
            .chain(key.split('.'))
            .collect();
        ConfigError::at_path(
            self.name,
            self.text,
            &path,
            format!("exporters.otlp.{key}: {message}"),
            Some(hint.to_string()),
        )
    }

    /// One setting of one signal: the signal's own variable, else the file's value, else the shared variable,
    /// else the default. A variable is read only when nothing before it decided.
    fn layered<T>(
        &self,
        signal: Signal,
        setting: &str,
        file: Option<T>,
        parse: impl Fn(&str) -> Result<T, String>,
        default: T,
    ) -> Result<T, ConfigError> {
        if let Some(v) = self.parsed(self.signal_var(signal, setting), &parse)? {
            return Ok(v);
        }
        if let Some(v) = file {
            return Ok(v);
        }
        Ok(self
            .parsed(self.shared_var(setting), &parse)?
            .unwrap_or(default))
    }

    /// Parses a variable with `parse`, naming the variable on failure.
    fn parsed<T>(
        &self,
        found: Option<(String, String)>,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Result<Option<T>, ConfigError> {
        found
            .map(|(var, value)| parse(&value).map_err(|m| self.env_error(&var, &value, m)))
            .transpose()
    }
}

fn protocol(p: OtlpProtocol) -> Protocol {
    match p {
        OtlpProtocol::Grpc => Protocol::Grpc,
        OtlpProtocol::HttpProtobuf => Protocol::HttpProtobuf,
    }
}

fn compression(c: OtlpCompression) -> Compression {
    match c {
        OtlpCompression::Gzip => Compression::Gzip,
        OtlpCompression::None => Compression::None,
    }
}

fn std_duration(d: super::Duration) -> StdDuration {
    StdDuration::from_nanos(d.as_nanos())
}

/// The resolved exporter, or `None` when it is not used or no signal has an endpoint.
pub fn build(
    name: &str,
    text: &str,
    file: &PipelineFile,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<OtlpConfig>, ConfigError> {
    let Some(section) = file
        .exporters
        .otlp
        .as_ref()
        .filter(|_| file.exporter_enabled("otlp"))
    else {
        return Ok(None);
    };
    let r = Resolver { name, text, env };
    let mut targets = [None, None, None];
    for (i, signal) in Signal::ALL.into_iter().enumerate() {
        targets[i] = target(&r, section, signal)?;
    }
    let [logs, traces, metrics] = targets;
    if logs.is_none() && traces.is_none() && metrics.is_none() {
        return Ok(None);
    }
    let retry = retry(&r, section)?;
    let queue = queue(&r, section)?;
    let metrics_interval = match section.metrics_interval {
        Some(d) => std_duration(d),
        None => r
            .parsed(r.var("OTEL_METRIC_EXPORT_INTERVAL"), otel::parse_timeout_ms)?
            .unwrap_or(DEFAULT_METRICS_INTERVAL),
    };
    if metrics_interval.is_zero() {
        return Err(r.file_error(
            "metrics_interval",
            "must be positive".into(),
            "e.g. metrics_interval: 60s",
        ));
    }
    Ok(Some(OtlpConfig {
        logs,
        traces,
        metrics,
        retry,
        queue,
        metrics_interval,
        shutdown_timeout: section
            .shutdown_timeout
            .map_or(DEFAULT_SHUTDOWN_TIMEOUT, std_duration),
        resource: resource(&r)?,
    }))
}

fn target(
    r: &Resolver<'_>,
    s: &OtlpExporter,
    signal: Signal,
) -> Result<Option<Target>, ConfigError> {
    let file_endpoint = s
        .endpoint
        .as_deref()
        .map(str::trim)
        .filter(|e| !e.is_empty());
    let (endpoint, signal_specific, from) = match r.signal_var(signal, "ENDPOINT") {
        Some((var, v)) => (v, true, Some(var)),
        None => match file_endpoint {
            Some(e) => (e.to_string(), false, None),
            None => match r.shared_var("ENDPOINT") {
                Some((var, v)) => (v, false, Some(var)),
                None => return Ok(None),
            },
        },
    };
    let protocol = r.layered(
        signal,
        "PROTOCOL",
        s.protocol.map(protocol),
        otel::parse_protocol,
        Protocol::HttpProtobuf,
    )?;
    let insecure = match s.tls.insecure {
        Some(b) => b,
        None => r
            .parsed(r.shared_var("INSECURE"), otel::parse_bool)?
            .unwrap_or(false),
    };
    let url =
        otel::signal_url(&endpoint, signal, protocol, signal_specific, insecure).map_err(|m| {
            match &from {
                Some(var) => r.env_error(var, &endpoint, m),
                None => r.file_error(
                    "endpoint",
                    m,
                    "write host:port or a URL, e.g. http://collector:4318",
                ),
            }
        })?;
    let headers = headers(r, s, signal)?;
    let compression = r.layered(
        signal,
        "COMPRESSION",
        s.compression.map(compression),
        otel::parse_compression,
        Compression::Gzip,
    )?;
    let timeout = r.layered(
        signal,
        "TIMEOUT",
        s.timeout.map(std_duration),
        otel::parse_timeout_ms,
        DEFAULT_TIMEOUT,
    )?;
    if timeout.is_zero() {
        return Err(r.file_error("timeout", "must be positive".into(), "e.g. timeout: 10s"));
    }
    let ca_file = match r.signal_var(signal, "CERTIFICATE") {
        Some((_, v)) => Some(v),
        None => s
            .tls
            .ca_file
            .clone()
            .filter(|f| !f.trim().is_empty())
            .or_else(|| r.shared_var("CERTIFICATE").map(|(_, v)| v)),
    };
    Ok(Some(Target {
        protocol,
        url,
        headers,
        compression,
        timeout,
        ca_file: ca_file.map(PathBuf::from),
    }))
}

fn headers(r: &Resolver<'_>, s: &OtlpExporter, signal: Signal) -> Result<Headers, ConfigError> {
    let mut merged: BTreeMap<String, String> = BTreeMap::new();
    let mut add = |pairs: Vec<(String, String)>| {
        for (k, v) in pairs {
            merged.insert(k.to_ascii_lowercase(), v);
        }
    };
    add(r
        .parsed(r.shared_var("HEADERS"), otel::parse_headers)?
        .unwrap_or_default());
    add(s.headers.clone().into_iter().collect());
    add(r
        .parsed(r.signal_var(signal, "HEADERS"), otel::parse_headers)?
        .unwrap_or_default());
    for (k, v) in &merged {
        if http::HeaderName::from_bytes(k.as_bytes()).is_err() {
            return Err(r.file_error(
                "headers",
                format!("`{k}` is not a valid header name"),
                "use letters, digits and dashes, e.g. x-api-key",
            ));
        }
        if http::HeaderValue::from_str(v).is_err() {
            return Err(r.file_error(
                "headers",
                format!("the value of `{k}` holds characters a header cannot carry"),
                "remove line breaks and control characters from the value",
            ));
        }
    }
    Ok(Headers(merged.into_iter().collect()))
}

fn retry(r: &Resolver<'_>, s: &OtlpExporter) -> Result<RetryConfig, ConfigError> {
    let d = RetryConfig::default();
    let retry = RetryConfig {
        initial_interval: s
            .retry
            .initial_interval
            .map_or(d.initial_interval, std_duration),
        max_interval: s.retry.max_interval.map_or(d.max_interval, std_duration),
        max_elapsed_time: s
            .retry
            .max_elapsed_time
            .map_or(d.max_elapsed_time, std_duration),
        max_server_delay: s
            .retry
            .max_server_delay
            .map_or(d.max_server_delay, std_duration),
    };
    if retry.initial_interval.is_zero() || retry.max_interval < retry.initial_interval {
        return Err(r.file_error(
            "retry",
            format!(
                "initial_interval ({:?}) must be positive and at most max_interval ({:?})",
                retry.initial_interval, retry.max_interval
            ),
            "e.g. retry: { initial_interval: 5s, max_interval: 30s, max_elapsed_time: 5m }",
        ));
    }
    Ok(retry)
}

fn queue(r: &Resolver<'_>, s: &OtlpExporter) -> Result<QueueConfig, ConfigError> {
    let d = QueueConfig::default();
    let q = QueueConfig {
        size: s.queue.size.unwrap_or(d.size),
        directory: s
            .queue
            .directory
            .as_deref()
            .filter(|p| !p.trim().is_empty())
            .map(PathBuf::from),
        max_disk_bytes: s.queue.max_disk_bytes.unwrap_or(d.max_disk_bytes),
    };
    if q.size == 0 {
        return Err(r.file_error("queue.size", "must be at least 1".into(), "e.g. size: 1000"));
    }
    if q.max_disk_bytes < MIN_DISK_BYTES {
        return Err(r.file_error(
            "queue.max_disk_bytes",
            format!(
                "{} bytes is too small for the on-disk queue",
                q.max_disk_bytes
            ),
            "give it at least 65536, e.g. 268435456 (256 MiB)",
        ));
    }
    Ok(q)
}

/// memdrift's own resource: `service.name` from `OTEL_SERVICE_NAME`, else `OTEL_RESOURCE_ATTRIBUTES`, else
/// `memdrift`; other `OTEL_RESOURCE_ATTRIBUTES` pairs are added.
fn resource(r: &Resolver<'_>) -> Result<Vec<(String, String)>, ConfigError> {
    let mut attrs: BTreeMap<String, String> = OtlpConfig::default_resource().into_iter().collect();
    if let Some(extra) = r.parsed(r.var("OTEL_RESOURCE_ATTRIBUTES"), otel::parse_headers)? {
        attrs.extend(extra);
    }
    if let Some((_, name)) = r.var("OTEL_SERVICE_NAME") {
        attrs.insert("service.name".into(), name);
    }
    Ok(attrs.into_iter().collect())
}
