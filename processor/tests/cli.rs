//! The `memdrift` binary as a user runs it: `validate` explains a bad file, `replay` of a 15 MB Collector file
//! prints its summary and writes its outputs, `demo` finds what it plants.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use opentelemetry_proto::tonic::common::v1::{any_value::Value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, TracesData};

const BIN: &str = env!("CARGO_BIN_EXE_memdrift");

fn tempdir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("memdrift-cli-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

fn kv(key: &str, v: Value) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(v) }),
        ..Default::default()
    }
}

/// Writes `lines` lines of 100 spans each: 4 services x 2 cohorts x 3 instances, one span per 10 ms of event
/// time, as the Collector's `file` exporter would (opentelemetry-proto's OTLP/JSON writer).
fn write_collector_file(path: &Path, lines: usize) -> u64 {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).expect("create"));
    let t0: u64 = 1_700_000_000_000_000_000;
    let mut n: u64 = 0;
    for line in 0..lines {
        let service = format!("svc-{}", line % 4);
        let version = if line % 8 < 4 { "1.4.2" } else { "1.5.0" };
        let instance = format!("{service}-{version}-pod-{}", line % 3);
        let spans = (0..100)
            .map(|_| {
                n += 1;
                let end = t0 + n * 10_000_000;
                let rss = 500_000_000 + (n * 7919 % 10_000_000) as i64;
                let mut trace_id = n.to_be_bytes().to_vec();
                trace_id.extend_from_slice(&[7; 8]);
                Span {
                    trace_id,
                    span_id: n.to_be_bytes().to_vec(),
                    name: "chat small-model".into(),
                    start_time_unix_nano: end - 3_000_000,
                    end_time_unix_nano: end,
                    attributes: vec![
                        kv("memspan.rss.start", Value::IntValue(rss - 1000)),
                        kv("memspan.rss.end", Value::IntValue(rss)),
                        kv("memspan.heap.allocated", Value::IntValue(rss / 2)),
                        kv(
                            "memspan.request.allocated",
                            // Spread evenly over 0-4 MiB in every cohort (a multiplicative hash of the span's
                            // number), so the file is calm in every window, the partial last one too.
                            Value::IntValue((n * 7919 % 4096) as i64 * 1024),
                        ),
                        kv(
                            "gen_ai.request.model",
                            Value::StringValue("small-model".into()),
                        ),
                    ],
                    ..Default::default()
                }
            })
            .collect();
        let data = TracesData {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![
                        kv("service.name", Value::StringValue(service)),
                        kv("service.version", Value::StringValue(version.into())),
                        kv("service.instance.id", Value::StringValue(instance)),
                    ],
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    spans,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        serde_json::to_writer(&mut out, &data).expect("write");
        out.write_all(b"\n").expect("write");
    }
    out.flush().expect("flush");
    n
}

#[test]
fn replay_of_a_15_mb_file_prints_its_summary() {
    let dir = tempdir("replay");
    let input = dir.join("traces.jsonl");
    let spans = write_collector_file(&input, 250);
    let size = std::fs::metadata(&input).expect("input").len();
    assert!(size >= 15_000_000, "the input is {size} bytes");
    let output = dir.join("anomalies.jsonl");
    let summaries = dir.join("windows.jsonl");
    let out = Command::new(BIN)
        .args(["replay", "--input"])
        .arg(&input)
        .arg("--output")
        .arg(&output)
        .arg("--summaries")
        .arg(&summaries)
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("250 lines (0 broken)"), "{stderr}");
    assert!(
        stderr.contains(&format!("{spans} read, {spans} gave samples")),
        "{stderr}"
    );
    assert!(
        stderr.contains("anomalies  spread_drift=0, growth=0, leak=0"),
        "{stderr}"
    );
    // Event time runs from 0.01 s to 250 s (panes 0 to 25): the windows ending at 10 s, 20 s, ..., 260 s, and
    // the five after the last pane that still hold it, up to 310 s.
    let windows = std::fs::read_to_string(&summaries).expect("summaries");
    let ends: std::collections::BTreeSet<&str> = windows
        .lines()
        .filter_map(|l| l.split("\"window_end\":\"").nth(1)?.split('"').next())
        .collect();
    assert_eq!(ends.len(), 26 + 5, "distinct window ends");
    assert!(output.exists());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn replay_reports_a_missing_input_and_fails() {
    let dir = tempdir("missing");
    let out = Command::new(BIN)
        .args(["replay", "--input", "/nonexistent/file.jsonl", "--output"])
        .arg(dir.join("o.jsonl"))
        .output()
        .expect("runs");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/file.jsonl"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn validate_names_the_line_and_the_fix() {
    let dir = tempdir("validate");
    let bad = dir.join("bad.yaml");
    std::fs::write(
        &bad,
        "receivers:\n  otlp:\n    protocols:\n      grpc:\n        endpoint: 0.0.0.0:4317\n\
         exporters:\n  jsonl:\n    paht: stdout\n\
         service:\n  pipelines:\n    m: { receivers: [otlp], exporters: [jsonl] }\n",
    )
    .expect("write");
    let out = Command::new(BIN)
        .args(["validate", "--config"])
        .arg(&bad)
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("bad.yaml:8:"), "{stderr}");
    assert!(stderr.contains("unknown field `paht`"), "{stderr}");
    assert!(stderr.contains("did you mean `path`?"), "{stderr}");

    let good = Path::new(env!("CARGO_MANIFEST_DIR")).join("../pipelines/default.yaml");
    let out = Command::new(BIN)
        .args(["validate", "--config"])
        .arg(&good)
        .output()
        .expect("runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).ends_with(": ok\n"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn run_serves_on_the_default_pipeline_and_stops_cleanly_on_sigterm() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    use std::time::{Duration, Instant};

    let mut child = Command::new(BIN)
        .env("MEMDRIFT_GRPC_ENDPOINT", "127.0.0.1:0")
        .env("MEMDRIFT_HTTP_ENDPOINT", "127.0.0.1:0")
        .env("MEMDRIFT_PROMETHEUS_ENDPOINT", "127.0.0.1:0")
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("starts");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !seen
        .iter()
        .any(|l: &String| l.contains("memdrift is running"))
    {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .unwrap_or_else(|_| panic!("memdrift did not start: {seen:?}"));
        seen.push(line);
    }
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(15);
    let exit = loop {
        if let Some(exit) = child.try_wait().expect("wait") {
            break exit;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("memdrift did not stop within 15 s of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(exit.success(), "exit status {exit}");
    // The reader thread may still hold the last lines; it ends (and the channel closes) at end of file.
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(5)) {
        seen.push(line);
    }
    assert!(seen.iter().any(|l| l.contains("shutting down")), "{seen:?}");
}

/// `memdrift demo` finds the spread change and the leak it plants, in time, and nothing else: the show runs the
/// real SDK, real OTLP/gRPC and the real detectors on wall-clock time (90 s plus a few of draining).
#[test]
fn demo_finds_what_it_plants_and_nothing_else() {
    let out = Command::new(BIN)
        .args(["demo", "--duration", "90s"])
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env_remove("OTEL_RESOURCE_ATTRIBUTES")
        .output()
        .expect("memdrift runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{}\n{stdout}\n{stderr}", out.status);
    let summary = stdout
        .split("\nSummary:\n")
        .nth(1)
        .unwrap_or_else(|| panic!("no summary:\n{stdout}"));
    for found in [
        "spread_drift opened at",
        "growth opened at",
        "leak opened at",
        "no false alarms",
    ] {
        assert!(summary.contains(found), "{found:?} missing:\n{stdout}");
    }
    // The leak is classified from the heap: RSS rises, the live heap does not.
    assert!(
        stdout.contains("OPEN     leak") && stdout.contains("off_heap"),
        "{stdout}"
    );
}
