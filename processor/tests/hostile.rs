//! The `memdrift` binary under hostile input: requests built to decode into far more memory than they take on
//! the wire, and labels of a megabyte. Each is answered, counted, and leaves the process small and serving.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

mod common;
use common::{http_request, pipeline_file, tempdir, Running};

const MIB: usize = 1 << 20;

fn varint(out: &mut Vec<u8>, mut v: usize) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A length-delimited field `tag` holding `payload`.
fn field(tag: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![(tag << 3) | 2];
    varint(&mut out, payload.len());
    out.extend_from_slice(payload);
    out
}

/// A request whose one resource and one scope hold `items` empty messages at field 2 of the scope (spans in
/// a trace request, log records in a logs request): 2 bytes each on the wire, written without building them.
fn empty_items(items: usize) -> Vec<u8> {
    let scope = [0x12u8, 0x00].repeat(items);
    field(1, &field(2, &scope))
}

/// A trace request whose resource holds about `bytes` of attributes named `service.name` with no value: 16
/// bytes each on the wire, and kept by decoding (extraction reads that key), so each costs an entry in memory.
/// (Attributes with keys extraction does not read are skipped unread and cost nothing.)
fn read_attributes(bytes: usize) -> Vec<u8> {
    let one = field(1, &field(1, b"service.name"));
    let resource = field(1, &one.repeat(bytes / one.len()));
    field(1, &resource)
}

/// `{"resourceSpans":[{"scopeSpans":[{"spans":[{},{},...]}]}]}` of about `bytes`.
fn json_empty_spans(bytes: usize) -> Vec<u8> {
    let n = bytes / 3;
    let mut out = br#"{"resourceSpans":[{"scopeSpans":[{"spans":["#.to_vec();
    out.extend_from_slice(&b"{},".repeat(n));
    out.extend_from_slice(b"{}]}]}]}");
    out
}

/// Raw bytes as a gRPC message, both ways.
#[derive(Clone, Default)]
struct Raw;

impl Encoder for Raw {
    type Item = Bytes;
    type Error = tonic::Status;
    fn encode(&mut self, item: Bytes, buf: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        buf.put(item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Bytes;
    type Error = tonic::Status;
    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, tonic::Status> {
        Ok(Some(buf.copy_to_bytes(buf.remaining())))
    }
}

impl Codec for Raw {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = Raw;
    type Decoder = Raw;
    fn encoder(&mut self) -> Raw {
        Raw
    }
    fn decoder(&mut self) -> Raw {
        Raw
    }
}

async fn grpc_export(addr: SocketAddr, path: &'static str, body: Vec<u8>) -> tonic::Code {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect()
        .await
        .expect("connects");
    let mut client = tonic::client::Grpc::new(channel).max_encoding_message_size(usize::MAX);
    client.ready().await.expect("ready");
    let path = http::uri::PathAndQuery::from_static(path);
    match client
        .unary(tonic::Request::new(Bytes::from(body)), path, Raw)
        .await
    {
        Ok(_) => tonic::Code::Ok,
        Err(status) => status.code(),
    }
}

const TRACES: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";
const LOGS: &str = "/opentelemetry.proto.collector.logs.v1.LogsService/Export";

fn post(addr: SocketAddr, path: &str, content_type: &str, body: &[u8]) -> u16 {
    http_request(addr, "POST", path, &[("Content-Type", content_type)], body).0
}

fn scrape(addr: SocketAddr) -> String {
    let (status, body) = http_request(addr, "GET", "/metrics", &[], &[]);
    assert_eq!(status, 200);
    String::from_utf8(body).expect("utf-8")
}

fn counter(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Requests of empty messages (2 bytes on the wire, tens of bytes in memory each), two at a time on every path:
/// refused as soon as decoding them would pass the decode budget (64 MiB here), log records counted without
/// decoding. Peak memory stays within the budget plus the bodies in flight; the service still serves.
#[test]
fn requests_that_would_decode_into_gigabytes_are_refused_and_memory_stays_bounded() {
    let dir = tempdir("amplification");
    let config = pipeline_file(&dir, "", "    decode_budget_bytes: 67108864\n");
    let running = Running::start(Some(&config));
    let (grpc, http) = (running.grpc, running.http);
    let body_bytes = 15 * MIB;
    let spans = empty_items(body_bytes / 2);
    let attributes = read_attributes(body_bytes);
    let json = json_empty_spans(body_bytes);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let (http_codes, grpc_codes) = std::thread::scope(|s| {
        let pb = "application/x-protobuf";
        let http_jobs: Vec<_> = [
            ("/v1/traces", pb, &spans),
            ("/v1/traces", pb, &spans),
            ("/v1/traces", pb, &attributes),
            ("/v1/traces", "application/json", &json),
            ("/v1/traces", "application/json", &json),
            ("/v1/logs", pb, &spans),
            ("/v1/logs", pb, &spans),
        ]
        .into_iter()
        .map(|(path, ct, body)| s.spawn(move || post(http, path, ct, body)))
        .collect();
        let grpc_codes = rt.block_on(async {
            let calls = [
                (TRACES, spans.clone()),
                (TRACES, spans.clone()),
                (LOGS, spans.clone()),
                (LOGS, spans.clone()),
            ]
            .map(|(path, body)| tokio::spawn(grpc_export(grpc, path, body)));
            let mut codes = Vec::new();
            for c in calls {
                codes.push(c.await.expect("joins"));
            }
            codes
        });
        let http_codes: Vec<u16> = http_jobs
            .into_iter()
            .map(|j| j.join().expect("joins"))
            .collect();
        (http_codes, grpc_codes)
    });
    // Spans and attributes take hundreds of MB decoded: over the whole budget, refused for good (413), or
    // refused for now (503) when the bodies in flight had taken the budget before this one could be decoded.
    // Log records are only counted; they too may find the budget taken, but never fail.
    // (0: answered early and reset before the answer could be read; counted below all the same.)
    // Which of the two a request meets depends on the order the bodies arrive in; alone, below, it is 413.
    assert!(
        http_codes[..5].iter().all(|c| [413, 503, 0].contains(c)),
        "{http_codes:?}"
    );
    assert!(
        http_codes[5..].iter().all(|c| [200, 503, 0].contains(c)),
        "{http_codes:?}"
    );
    use tonic::Code;
    assert!(
        grpc_codes[..2]
            .iter()
            .all(|c| *c == Code::ResourceExhausted || *c == Code::Unavailable),
        "{grpc_codes:?}"
    );
    assert!(
        grpc_codes[2..]
            .iter()
            .all(|c| *c == Code::Ok || *c == Code::Unavailable),
        "{grpc_codes:?}"
    );
    let peak = running.peak_rss();
    // 64 MiB of budget, eleven 15 MiB bodies in flight (each may be held twice while read), and the
    // process itself: well under 512 MiB. Decoded, any one of these requests took 0.5-1.5 GB.
    assert!(peak < 512 * MIB as u64, "peak RSS {} MiB", peak >> 20);
    // Still serving, and every refusal counted.
    let logs = body_bytes / 2;
    assert_eq!(
        post(
            http,
            "/v1/logs",
            "application/x-protobuf",
            &empty_items(logs)
        ),
        200
    );
    let text = scrape(running.prometheus);
    assert!(counter(&text, "memdrift_receiver_log_records_total") >= logs as f64);
    // Every refusal is counted under its reason.
    let failed = |text: &str, reason: &str, transport: &str| {
        counter(
            text,
            &format!(
                "memdrift_receiver_failed_requests_total{{reason=\"{reason}\",transport=\"{transport}\"}}"
            ),
        )
    };
    let n = |codes: &[u16], c: u16| codes.iter().filter(|x| **x == c).count() as f64;
    let refused = failed(&text, "too_large", "http") + failed(&text, "busy", "http");
    assert_eq!(
        refused,
        n(&http_codes, 413) + n(&http_codes, 503) + n(&http_codes, 0)
    );
    assert!(failed(&text, "too_large", "http") >= n(&http_codes, 413));
    let g = |c: Code| grpc_codes.iter().filter(|x| **x == c).count() as f64;
    assert_eq!(
        failed(&text, "too_large", "grpc"),
        g(Code::ResourceExhausted)
    );
    assert_eq!(failed(&text, "busy", "grpc"), g(Code::Unavailable));
    // Alone, with the whole budget free, such a request is refused for good, not for now, and counted so.
    assert_eq!(
        post(http, "/v1/traces", "application/x-protobuf", &spans),
        413
    );
    assert_eq!(
        rt.block_on(grpc_export(grpc, TRACES, spans.clone())),
        Code::ResourceExhausted
    );
    let after = scrape(running.prometheus);
    for transport in ["http", "grpc"] {
        assert_eq!(
            failed(&after, "too_large", transport),
            failed(&text, "too_large", transport) + 1.0,
            "{transport}"
        );
    }
    let (exit, _, log) = running.terminate(Duration::from_secs(15));
    assert!(exit.success(), "{log:#?}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// 40 spans with 1 MiB service, instance and cohort labels: the labels are kept shortened (and counted), so
/// neither the series nor a `/metrics` scrape grows with them.
#[test]
fn megabyte_labels_are_shortened_and_metrics_stay_small() {
    let dir = tempdir("big-labels");
    let config = pipeline_file(&dir, "", "");
    let running = Running::start(Some(&config));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_nanos() as u64;
    let mut sent = 0;
    for i in 0..40u64 {
        let big = |c: char| format!("{i}{}", c.to_string().repeat(MIB));
        let body = format!(
            concat!(
                r#"{{"resourceSpans":[{{"resource":{{"attributes":["#,
                r#"{{"key":"service.name","value":{{"stringValue":"{}"}}}},"#,
                r#"{{"key":"service.instance.id","value":{{"stringValue":"{}"}}}}]}},"#,
                r#""scopeSpans":[{{"spans":[{{"name":"x","startTimeUnixNano":"{}","endTimeUnixNano":"{}","#,
                r#""attributes":[{{"key":"memspan.cohort","value":{{"stringValue":"{}"}}}},"#,
                r#"{{"key":"memspan.rss.end","value":{{"intValue":"500000000"}}}}]}}]}}]}}]}}"#
            ),
            big('s'),
            big('i'),
            now - 1000,
            now,
            big('c'),
        );
        sent += body.len();
        assert_eq!(
            post(
                running.http,
                "/v1/traces",
                "application/json",
                body.as_bytes()
            ),
            200
        );
    }
    assert!(sent > 120 * MIB);
    // Let the engine close the windows of those samples so the per-cohort gauges exist.
    std::thread::sleep(Duration::from_secs(2));
    let text = scrape(running.prometheus);
    assert!(text.len() < MIB, "/metrics is {} bytes", text.len());
    assert_eq!(
        counter(&text, "memdrift_receiver_labels_shortened_total"),
        120.0
    );
    let peak = running.peak_rss();
    assert!(peak < 256 * MIB as u64, "peak RSS {} MiB", peak >> 20);
    let (exit, _, log) = running.terminate(Duration::from_secs(15));
    assert!(exit.success(), "{log:#?}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A small valid trace request: one span with one memory attribute.
fn one_span() -> Vec<u8> {
    use prost::Message;
    common::span_request("pod-1", Duration::ZERO).encode_to_vec()
}

/// Holds `total` idle TCP connections to `ports` (round robin) from Python processes (this test process's own
/// descriptor limit would not hold them all); returns once they are all open.
fn hold_idle_connections(ports: &[u16], total: usize) -> Vec<std::process::Child> {
    use std::io::BufRead;
    const HOLDER: &str = r#"
import resource, socket, sys
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
n, ports = int(sys.argv[1]), [int(p) for p in sys.argv[2:]]
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
held = []
for i in range(n):
    s = socket.socket()
    s.connect(("127.0.0.1", ports[i % len(ports)]))
    held.append(s)
print("ready", len(held), flush=True)
sys.stdin.read()
"#;
    let per_process = 5000;
    let mut children = Vec::new();
    let mut left = total;
    while left > 0 {
        let n = left.min(per_process);
        left -= n;
        let mut child = std::process::Command::new("python3")
            .arg("-c")
            .arg(HOLDER)
            .arg(n.to_string())
            .args(ports.iter().map(|p| p.to_string()))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python3 runs");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .expect("reads");
        assert_eq!(line.trim(), format!("ready {n}"), "a holder failed");
        children.push(child);
    }
    children
}

/// 20,000 idle connections spread over the gRPC, HTTP and `/metrics` ports: every port still answers real
/// requests at once (a silent connection makes room for a new one at the cap), and memdrift holds no more
/// descriptors than its caps allow.
#[test]
fn twenty_thousand_idle_connections_leave_every_port_serving() {
    let dir = tempdir("idle-flood");
    let config = pipeline_file(&dir, "", "    max_connections: 300\n");
    let running = Running::start(Some(&config));
    let ports = [
        running.grpc.port(),
        running.http.port(),
        running.prometheus.port(),
    ];
    let holders = hold_idle_connections(&ports, 20_000);
    let started = std::time::Instant::now();
    assert_eq!(
        post(
            running.http,
            "/v1/traces",
            "application/x-protobuf",
            &one_span()
        ),
        200
    );
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    assert_eq!(
        rt.block_on(grpc_export(running.grpc, TRACES, one_span())),
        tonic::Code::Ok
    );
    let text = scrape(running.prometheus);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let evicted: f64 = ["otlp_grpc", "otlp_http", "prometheus"]
        .iter()
        .map(|s| {
            counter(
                &text,
                &format!(
                    "memdrift_connections_closed_total{{reason=\"evicted_silent\",server=\"{s}\"}}"
                ),
            )
        })
        .sum();
    assert!(evicted >= 19_000.0, "evicted {evicted}");
    let fds = std::fs::read_dir(format!("/proc/{}/fd", running.child.id()))
        .expect("fds")
        .count();
    assert!(fds < 2 * 300 + 64 + 100, "{fds} descriptors open");
    for mut h in holders {
        let _ = h.kill();
        let _ = h.wait();
    }
    let (exit, _, log) = running.terminate(Duration::from_secs(15));
    assert!(exit.success(), "{log:#?}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// An HTTP client that sends its headers or its body a byte at a time, too slowly: the headers are cut at
/// `header_read_timeout`, the body answered 408 at `request_timeout`.
#[test]
fn slow_headers_and_slow_bodies_are_cut_at_their_deadlines() {
    use std::io::{Read, Write};
    let dir = tempdir("slowloris");
    let config = pipeline_file(
        &dir,
        "",
        "    header_read_timeout: 1s\n    request_timeout: 1s\n",
    );
    let running = Running::start(Some(&config));
    let started = std::time::Instant::now();
    let mut headers = std::net::TcpStream::connect(running.http).expect("connects");
    headers
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    headers
        .write_all(b"POST /v1/traces HTTP/1.1\r\nHo")
        .expect("writes");
    let mut body = std::net::TcpStream::connect(running.http).expect("connects");
    body.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    body.write_all(
        b"POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\nContent-Length: 100\r\n\r\nab",
    )
    .expect("writes");
    let mut out = Vec::new();
    let _ = headers.read_to_end(&mut out);
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "headers cut after {:?}",
        started.elapsed()
    );
    let mut answer = Vec::new();
    let _ = body.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(started.elapsed() < Duration::from_secs(4));
    let (exit, _, log) = running.terminate(Duration::from_secs(15));
    assert!(exit.success(), "{log:#?}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Forty uploads of 12 MiB chunked bodies that never finish, at once: the bytes of bodies still arriving are
/// held from the decode budget (64 MiB here), so the uploads past it are answered 503 and memory stays bounded
/// (without the budget they would hold about 480 MB until `request_timeout`).
#[test]
fn unfinished_uploads_are_held_to_the_decode_budget() {
    use std::io::Write;
    let dir = tempdir("unfinished-uploads");
    let config = pipeline_file(&dir, "", "    decode_budget_bytes: 67108864\n");
    let running = Running::start(Some(&config));
    let http = running.http;
    let uploads: Vec<_> = (0..40)
        .map(|_| {
            std::thread::spawn(move || {
                let mut c = std::net::TcpStream::connect(http).expect("connects");
                c.set_write_timeout(Some(Duration::from_secs(5)))
                    .expect("timeout");
                let head = "POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\n\
                            Transfer-Encoding: chunked\r\n\r\n";
                if c.write_all(head.as_bytes()).is_err() {
                    return c;
                }
                let chunk = vec![0x0au8; MIB];
                for _ in 0..12 {
                    let sent = c
                        .write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
                        .and_then(|_| c.write_all(&chunk))
                        .and_then(|_| c.write_all(b"\r\n"));
                    if sent.is_err() {
                        break;
                    }
                }
                c
            })
        })
        .collect();
    let held: Vec<_> = uploads
        .into_iter()
        .map(|u| u.join().expect("joins"))
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let peak = running.peak_rss();
    assert!(peak < 256 * MIB as u64, "peak RSS {} MiB", peak >> 20);
    drop(held);
    assert_eq!(
        post(http, "/v1/traces", "application/x-protobuf", &one_span()),
        200
    );
    let text = scrape(running.prometheus);
    assert!(
        counter(
            &text,
            "memdrift_receiver_failed_requests_total{reason=\"busy\",transport=\"http\"}"
        ) >= 30.0,
        "{}",
        text.lines()
            .filter(|l| l.contains("failed_requests"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let (exit, _, log) = running.terminate(Duration::from_secs(15));
    assert!(exit.success(), "{log:#?}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Above the memory limiter's soft limit (here a limit of 8 MiB, which the process itself passes), new data is
/// refused with the retryable answers on both transports and counted; `/metrics` still answers.
#[test]
fn above_the_memory_limit_new_data_is_refused_retryably() {
    let dir = tempdir("memory-limit");
    let config = pipeline_file(&dir, "", "    memory_limiter: { limit_mib: 8 }\n");
    let running = Running::start(Some(&config));
    // The limiter reads memory every 250 ms.
    std::thread::sleep(Duration::from_millis(600));
    let (status, body) = http_request(
        running.http,
        "POST",
        "/v1/traces",
        &[("Content-Type", "application/json")],
        b"{}",
    );
    assert_eq!(status, 503, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("soft limit"));
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    assert_eq!(
        rt.block_on(grpc_export(running.grpc, TRACES, one_span())),
        tonic::Code::Unavailable
    );
    let text = scrape(running.prometheus);
    assert_eq!(
        counter(
            &text,
            "memdrift_receiver_failed_requests_total{reason=\"memory_limit\",transport=\"http\"}"
        ),
        1.0
    );
    assert!(running.seen.iter().any(|l| l.contains("memory limiter on")));
    let (exit, _, log) = running.terminate(Duration::from_secs(15));
    assert!(exit.success(), "{log:#?}");
    let _ = std::fs::remove_dir_all(&dir);
}
