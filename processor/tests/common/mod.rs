//! Running the `memdrift` binary in a test: start it on free loopback ports, read where it listens, stop it.
#![allow(dead_code)] // each test file uses its own part

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value::Value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};

pub const BIN: &str = env!("CARGO_BIN_EXE_memdrift");

pub fn tempdir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("memdrift-cli-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// Waits for `child` to exit for at most `limit`; kills it and fails otherwise.
pub fn wait_within(child: &mut Child, limit: Duration, what: &str) -> ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(exit) = child.try_wait().expect("wait") {
            return exit;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{what}: still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Reads `name=Some(addr)` from the "memdrift is running" log line.
pub fn logged_addr(line: &str, name: &str) -> SocketAddr {
    let start = line
        .find(&format!("{name}=Some("))
        .unwrap_or_else(|| panic!("{name} missing from {line}"))
        + name.len()
        + 6;
    let end = start + line[start..].find(')').expect("closing parenthesis");
    line[start..end].parse().expect("an address")
}

/// The embedded default pipeline with `service_extra` lines added under `service:` (e.g.
/// "  shutdown_timeout: 2s\n") and `receiver_extra` lines under `receivers.otlp:` (replacing the default's line
/// for the same key), written to `dir`.
pub fn pipeline_file(dir: &Path, service_extra: &str, receiver_extra: &str) -> PathBuf {
    let default = include_str!("../../../pipelines/default.yaml");
    assert!(default.contains("\nservice:\n") && default.contains("\n  otlp:\n    protocols:\n"));
    // A key given here replaces the default's own line for it.
    let given: Vec<String> = receiver_extra
        .lines()
        .filter_map(|l| Some(format!("{}:", l.split(':').next()?)))
        .collect();
    let default: String = default
        .lines()
        .filter(|l| !given.iter().any(|k| l.starts_with(k.as_str())))
        .map(|l| format!("{l}\n"))
        .collect();
    let text = default
        .replace("\nservice:\n", &format!("\nservice:\n{service_extra}"))
        .replacen(
            "\n  otlp:\n    protocols:\n",
            &format!("\n  otlp:\n{receiver_extra}    protocols:\n"),
            1,
        );
    let path = dir.join("pipeline.yaml");
    std::fs::write(&path, text).expect("write pipeline");
    path
}

/// A `memdrift run` on free loopback ports.
pub struct Running {
    pub child: Child,
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    pub prometheus: SocketAddr,
    /// Its log lines, as they come.
    pub log: Receiver<String>,
    /// The lines read so far.
    pub seen: Vec<String>,
}

impl Running {
    /// Starts `memdrift run` on `config`, or on the embedded default pipeline, without an OTLP exporter.
    pub fn start(config: Option<&Path>) -> Running {
        Running::spawn(config, true)
    }

    /// [`Running::start`] keeping the OTLP exporter the environment asks for (`OTEL_EXPORTER_OTLP_ENDPOINT`).
    pub fn start_keeping_env(config: Option<&Path>) -> Running {
        Running::spawn(config, false)
    }

    fn spawn(config: Option<&Path>, no_exporter: bool) -> Running {
        let mut command = Command::new(BIN);
        if no_exporter {
            command.env_remove("OTEL_EXPORTER_OTLP_ENDPOINT");
        }
        command.arg("run");
        if let Some(config) = config {
            command.arg("--config").arg(config);
        }
        let mut child = command
            .env("MEMDRIFT_GRPC_ENDPOINT", "127.0.0.1:0")
            .env("MEMDRIFT_HTTP_ENDPOINT", "127.0.0.1:0")
            .env("MEMDRIFT_PROMETHEUS_ENDPOINT", "127.0.0.1:0")
            .env("MEMDRIFT_GATE_ENDPOINT", "127.0.0.1:0")
            .env("RUST_LOG", "info")
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("starts");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, log) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut seen: Vec<String> = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        let running = loop {
            let line = log
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .unwrap_or_else(|_| panic!("memdrift did not start: {seen:?}"));
            seen.push(line.clone());
            if line.contains("memdrift is running") {
                break line;
            }
        };
        Running {
            child,
            grpc: logged_addr(&running, "grpc"),
            http: logged_addr(&running, "http"),
            prometheus: logged_addr(&running, "prometheus"),
            log,
            seen,
        }
    }

    /// The process's peak resident memory so far, in bytes (Linux).
    pub fn peak_rss(&self) -> u64 {
        self.status_kb("VmHWM") * 1024
    }

    /// One of the process's `/proc/<pid>/status` figures in kB (`VmRSS`, `VmHWM`, ...).
    pub fn status_kb(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("{field} in {status}"))
    }

    /// Sends SIGTERM and waits at most `limit` for the exit; returns the exit, the time it took and the log.
    pub fn terminate(mut self, limit: Duration) -> (ExitStatus, Duration, Vec<String>) {
        let sent = Instant::now();
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
        let exit = wait_within(&mut self.child, limit, "memdrift after SIGTERM");
        let took = sent.elapsed();
        while let Ok(line) = self.log.recv_timeout(Duration::from_secs(5)) {
            self.seen.push(line);
        }
        (exit, took, self.seen)
    }
}

/// One HTTP/1.1 request over a fresh connection; returns the status and the body. Status 0: the server reset
/// the connection before its answer could be read (it answered before the body was all sent).
pub fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, Vec<u8>) {
    use std::io::{Read, Write};
    let mut c = std::net::TcpStream::connect(addr).expect("connects");
    c.set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: memdrift\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    c.write_all(head.as_bytes()).expect("head");
    // A server may answer before the body is all sent (413, 503) and close: the answer is still read.
    let _ = c.write_all(body);
    let mut out = Vec::new();
    if c.read_to_end(&mut out).is_err() && out.is_empty() {
        // Answered early and reset: the kernel dropped the answer with the unread body.
        return (0, Vec::new());
    }
    let text_end = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response head");
    let head = String::from_utf8_lossy(&out[..text_end]).to_string();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head}"));
    (status, out[text_end + 4..].to_vec())
}

/// An OTLP key-value.
pub fn kv(key: &str, v: Value) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(v) }),
        ..Default::default()
    }
}

/// One span of `instance`, ending `ago` before now.
pub fn span_request(instance: &str, ago: Duration) -> ExportTraceServiceRequest {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_nanos() as u64;
    let end = now - ago.as_nanos() as u64;
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![
                    kv("service.name", Value::StringValue("llm".into())),
                    kv("service.instance.id", Value::StringValue(instance.into())),
                ],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans: vec![Span {
                    trace_id: vec![3; 16],
                    span_id: vec![4; 8],
                    start_time_unix_nano: end - 1_000,
                    end_time_unix_nano: end,
                    attributes: vec![kv("memspan.rss.end", Value::IntValue(400_000_000))],
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// One series' value on `/metrics` (0 when absent).
pub fn metric(running: &Running, series: &str) -> f64 {
    let (_, body) = http_request(running.prometheus, "GET", "/metrics", &[], &[]);
    String::from_utf8_lossy(&body)
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}
