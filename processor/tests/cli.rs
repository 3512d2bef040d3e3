//! The `memdrift` binary as a user runs it: `validate` explains a bad file, `replay` of a 15 MB Collector file
//! prints its summary and writes its outputs, `demo` finds what it plants.

use std::io::Write;
use std::path::Path;
use std::process::Command;

use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, TracesData};

mod common;
use common::{kv, pipeline_file, tempdir, wait_within, Running, BIN};

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
    let running = Running::start(None);
    let (exit, took, seen) = running.terminate(std::time::Duration::from_secs(15));
    assert!(exit.success(), "exit status {exit}: {seen:?}");
    assert!(took.as_secs() < 15, "{took:?}");
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

/// A span stamped within seconds of `u64::MAX` nanoseconds once sent replay into an endless window loop: it is
/// now dropped as `future_timestamp` and the replay ends with the ordinary spans' windows.
#[test]
fn replay_of_a_span_stamped_near_the_end_of_u64_time_finishes_and_counts_it() {
    let dir = tempdir("far-future");
    let input = dir.join("traces.jsonl");
    write_collector_file(&input, 3);
    let far = u64::MAX - 5_000_000_000;
    let line = format!(
        concat!(
            r#"{{"resourceSpans":[{{"resource":{{"attributes":[{{"key":"service.name","value":{{"stringValue":"svc-0"}}}}]}},"#,
            r#""scopeSpans":[{{"spans":[{{"name":"x","startTimeUnixNano":"{}","endTimeUnixNano":"{}","#,
            r#""attributes":[{{"key":"memspan.rss.end","value":{{"intValue":"1000000"}}}}]}}]}}]}}]}}"#
        ),
        far - 1000,
        far
    );
    let mut text = std::fs::read_to_string(&input).expect("input");
    text.push_str(&line);
    text.push('\n');
    std::fs::write(&input, text).expect("write");
    let mut child = Command::new(BIN)
        .args(["replay", "--input"])
        .arg(&input)
        .arg("--output")
        .arg(dir.join("anomalies.jsonl"))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("runs");
    let exit = wait_within(&mut child, std::time::Duration::from_secs(60), "replay");
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut stderr)
        .expect("stderr");
    assert!(exit.success(), "{stderr}");
    assert!(stderr.contains("future_timestamp=1"), "{stderr}");
    assert!(stderr.contains("301 read, 300 gave samples"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// One HPACK literal header field without indexing, new name (names and values under 127 bytes).
fn hpack_literal(out: &mut Vec<u8>, name: &str, value: &str) {
    out.push(0);
    out.push(name.len() as u8);
    out.extend_from_slice(name.as_bytes());
    out.push(value.len() as u8);
    out.extend_from_slice(value.as_bytes());
}

fn h2_frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
}

/// The start of a gRPC Export call that never finishes: the HTTP/2 preface and settings, the call's headers,
/// and the first 10 bytes of a message announced as 1000.
fn partial_grpc_call() -> Vec<u8> {
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    h2_frame(&mut out, 4, 0, 0, &[]);
    let mut headers = Vec::new();
    for (name, value) in [
        (":method", "POST"),
        (":scheme", "http"),
        (
            ":path",
            "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
        ),
        (":authority", "localhost"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ] {
        hpack_literal(&mut headers, name, value);
    }
    h2_frame(&mut out, 1, 0x4, 1, &headers);
    let mut data = vec![0u8];
    data.extend_from_slice(&1000u32.to_be_bytes());
    data.extend_from_slice(&[0x0a; 10]);
    h2_frame(&mut out, 0, 0, 1, &data);
    out
}

/// SIGTERM while clients hold connections mid-request on every port (an idle connection, a partial header, a
/// short body, an unfinished chunked body, a partial gRPC message): the process cuts them at
/// `service.shutdown_timeout` and exits cleanly within a second more.
#[test]
fn sigterm_with_clients_stuck_mid_request_exits_within_the_shutdown_timeout() {
    use std::net::TcpStream;
    use std::time::Duration;

    let dir = tempdir("stuck-clients");
    let config = pipeline_file(&dir, "  shutdown_timeout: 2s\n", "");
    let running = Running::start(Some(&config));
    let (grpc, http, prometheus) = (running.grpc, running.http, running.prometheus);
    let short_body =
        "POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\n\
                      Content-Length: 1000\r\n\r\n0123456789";
    let chunked = "POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\n\
                   Transfer-Encoding: chunked\r\n\r\n10\r\n0123456789abcdef\r\n";
    let partial_header = "POST /v1/traces HTTP/1.1\r\nHost: x\r\n";
    let stuck: Vec<(std::net::SocketAddr, Vec<u8>)> = vec![
        (grpc, Vec::new()),
        (grpc, partial_grpc_call()),
        (http, Vec::new()),
        (http, partial_header.into()),
        (http, short_body.into()),
        (http, chunked.into()),
        (prometheus, Vec::new()),
        (prometheus, b"GET /metrics HTTP/1.1\r\nHost".to_vec()),
    ];
    let _held: Vec<TcpStream> = stuck
        .iter()
        .map(|(addr, bytes)| {
            let mut c = TcpStream::connect(addr).expect("connects");
            c.write_all(bytes).expect("writes");
            c
        })
        .collect();
    // Let the servers accept and start reading every one of them.
    std::thread::sleep(Duration::from_millis(500));
    let (exit, took, seen) = running.terminate(Duration::from_secs(10));
    assert!(exit.success(), "exit status {exit}: {seen:#?}");
    assert!(
        took <= Duration::from_secs(3),
        "stopped {took:?} after SIGTERM, over shutdown_timeout (2 s) + 1 s: {seen:#?}"
    );
    assert!(
        seen.iter().any(|l| l.contains("cutting their connections")),
        "{seen:#?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
