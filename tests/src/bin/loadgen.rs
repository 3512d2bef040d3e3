//! `loadgen`: OTLP load for memdrift or any other OTLP receiver, with the receiver's own cost measured beside it.
//!
//! It sends realistic memory spans (the MemorySpan attributes of `memspan`, `gen_ai.*`, a resource per service,
//! cohort and instance) whose timestamps track the wall clock, over OTLP/gRPC or OTLP/HTTP (protobuf or JSON,
//! optionally gzip), at a fixed rate or in a closed loop, and reports what the receiver accepted and refused,
//! the export latency and, given the receiver's pid, the CPU seconds it spent per million spans and its
//! resident memory over exactly the measured interval. `scripts/bench-e2e.sh` runs it against memdrift and
//! Rotel side by side; `tests/tests/loadgen.rs` checks it.
//!
//! ```text
//! loadgen --endpoint 127.0.0.1:4317 [--protocol grpc|http-protobuf|http-json] [--gzip]
//!         [--rate SPANS_PER_S | --concurrency N] [--seconds 20] [--warmup 5] [--batch 512]
//!         [--services 20] [--cohorts 2] [--instances 3] [--attributes 0] [--pid PID] [--max-in-flight 256]
//!         [--connections 1]
//! ```
//!
//! Without `--rate` the load is a closed loop: `--concurrency` (default 8) exports in flight at all times, each
//! sent when the last one answered, so the rate is what the receiver sustains. With `--rate`, a batch leaves
//! every `batch / rate` seconds; when `--max-in-flight` exports are already waiting a batch is skipped and
//! counted as `behind` (the receiver cannot keep up).
//!
//! Over gRPC every export shares one HTTP/2 connection unless `--connections` opens more (exports take them in
//! turn): one connection's frames are read and written by one task of the receiver, so a test of how the
//! receiver scales with cores needs several, as a fleet of clients makes. Over HTTP the client opens a
//! connection per export in flight already.
//!
//! Bodies are built ahead, 16 at a time, each second afresh (new values, trace ids and timestamps), gzipped
//! there when asked and, for gRPC, framed there as a gRPC message, which is sent over an HTTP/2 connection of
//! the `h2` crate as it is: an export costs the loader no encoding or compression, so its own cost stays a small
//! fraction of the receiver's. Prints a summary on stderr and one JSON object on
//! stdout. CPU time is read from `/proc/PID/stat` (all threads; clock ticks of 1/100 s, Linux's USER_HZ), and
//! over the same interval the server's CPU per thread name (`/proc/PID/task/*/stat`: the engine thread, the
//! runtime's workers), the loader's own CPU and the machine's idle share (`/proc/stat`): where the cores went
//! when the rate stops rising.

use std::io::Write;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use flate2::write::GzEncoder;
use memdrift_e2e::{int, resource, string};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::InstrumentationScope;
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{span, ResourceSpans, ScopeSpans, Span};
use prost::Message;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const USAGE: &str = "usage: loadgen --endpoint HOST:PORT [--protocol grpc|http-protobuf|http-json] [--gzip] \
[--rate SPANS_PER_S | --concurrency N] [--seconds S] [--warmup S] [--batch N] [--services N] [--cohorts N] \
[--instances N] [--attributes N] [--pid PID] [--max-in-flight N] [--connections N]";
/// Bodies built per refresh; requests take them in turn.
const POOL: usize = 16;
/// Resources (service, cohort, instance) per request: a Collector or SDK batch carries a few.
const RESOURCES_PER_REQUEST: usize = 8;
/// The most of a gRPC response loadgen keeps (an Export answer is a few bytes).
const MAX_ANSWER_BYTES: usize = 64 * 1024;
const TRACES_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

#[derive(Clone, Copy, Debug, PartialEq)]
enum Protocol {
    Grpc,
    HttpProtobuf,
    HttpJson,
}

impl Protocol {
    fn name(self) -> &'static str {
        match self {
            Protocol::Grpc => "grpc",
            Protocol::HttpProtobuf => "http-protobuf",
            Protocol::HttpJson => "http-json",
        }
    }
}

#[derive(Clone, Debug)]
struct Args {
    endpoint: String,
    protocol: Protocol,
    gzip: bool,
    rate: Option<f64>,
    concurrency: usize,
    seconds: f64,
    warmup: f64,
    batch: usize,
    services: usize,
    cohorts: usize,
    instances: usize,
    attributes: usize,
    pid: Option<u32>,
    max_in_flight: usize,
    connections: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        endpoint: String::new(),
        protocol: Protocol::Grpc,
        gzip: false,
        rate: None,
        concurrency: 8,
        seconds: 20.0,
        warmup: 5.0,
        batch: 512,
        services: 20,
        cohorts: 2,
        instances: 3,
        attributes: 0,
        pid: None,
        max_in_flight: 256,
        connections: 1,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        if flag == "--gzip" {
            a.gzip = true;
            continue;
        }
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let number = |v: &str| {
            v.parse::<f64>()
                .ok()
                .filter(|n| n.is_finite() && *n >= 0.0)
                .ok_or_else(|| format!("{flag} wants a non-negative number, got `{v}`"))
        };
        let count = |v: &str| {
            v.parse::<usize>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| format!("{flag} wants a positive whole number, got `{v}`"))
        };
        match flag.as_str() {
            "--endpoint" => a.endpoint = value,
            "--protocol" => {
                a.protocol = match value.as_str() {
                    "grpc" => Protocol::Grpc,
                    "http-protobuf" | "http/protobuf" => Protocol::HttpProtobuf,
                    "http-json" | "http/json" => Protocol::HttpJson,
                    other => {
                        return Err(format!(
                            "--protocol is grpc, http-protobuf or http-json, got `{other}`"
                        ))
                    }
                }
            }
            "--rate" => a.rate = Some(number(&value)?).filter(|r| *r > 0.0),
            "--concurrency" => a.concurrency = count(&value)?,
            "--seconds" => a.seconds = number(&value)?,
            "--warmup" => a.warmup = number(&value)?,
            "--batch" => a.batch = count(&value)?,
            "--services" => a.services = count(&value)?,
            "--cohorts" => a.cohorts = count(&value)?,
            "--instances" => a.instances = count(&value)?,
            "--attributes" => {
                a.attributes = value
                    .parse()
                    .map_err(|_| format!("--attributes wants a whole number, got `{value}`"))?
            }
            "--pid" => {
                a.pid = Some(
                    value
                        .parse()
                        .map_err(|_| format!("--pid wants a process id, got `{value}`"))?,
                )
            }
            "--max-in-flight" => a.max_in_flight = count(&value)?,
            "--connections" => a.connections = count(&value)?,
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    if a.endpoint.is_empty() {
        return Err("--endpoint is required".into());
    }
    if a.seconds <= 0.0 {
        return Err("--seconds must be above 0".into());
    }
    Ok(a)
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// One resource of the fleet: service `s`, cohort `c`, instance `i`.
fn fleet_resource(s: usize, c: usize, i: usize) -> Resource {
    let mut r = resource(
        &format!("bench-svc-{s:02}"),
        &format!("1.{c}.0"),
        &format!("bench-svc-{s:02}-{c}-{i}"),
    );
    r.attributes
        .push(string("deployment.environment.name", "bench"));
    r
}

/// A request of `batch` memory spans over [`RESOURCES_PER_REQUEST`] resources starting at resource `first`,
/// ending within the last second before `end_ns`.
fn request(a: &Args, rng: &mut StdRng, first: usize, end_ns: u64) -> ExportTraceServiceRequest {
    let fleet = a.services * a.cohorts * a.instances;
    let per = RESOURCES_PER_REQUEST.min(fleet);
    let resource_spans = (0..per)
        .map(|k| {
            let r = (first + k) % fleet;
            let (s, c, i) = (
                r / (a.cohorts * a.instances),
                (r / a.instances) % a.cohorts,
                r % a.instances,
            );
            let n = a.batch / per + usize::from(k < a.batch % per);
            let spans = (0..n)
                .map(|_| {
                    let end = end_ns.saturating_sub(rng.random_range(0..1_000_000_000));
                    let start = end.saturating_sub(rng.random_range(5_000_000..400_000_000));
                    let rss =
                        1_500_000_000 + rng.random_range(0..200_000_000i64) + 50_000_000 * c as i64;
                    let mut attributes = vec![
                        string("gen_ai.operation.name", "chat"),
                        string("gen_ai.request.model", "small-model"),
                        int("gen_ai.usage.input_tokens", rng.random_range(20..2000)),
                        int("gen_ai.usage.output_tokens", rng.random_range(10..800)),
                        int("memspan.rss.start", rss),
                        int(
                            "memspan.rss.end",
                            rss + rng.random_range(-4_000_000..8_000_000i64),
                        ),
                        int("memspan.heap.allocated", rss - 400_000_000),
                        int(
                            "memspan.request.allocated",
                            rng.random_range(1_000_000..40_000_000),
                        ),
                        int("memspan.limit", 4_294_967_296),
                    ];
                    for e in 0..a.attributes {
                        attributes.push(string(
                            &format!("bench.extra.{e}"),
                            "some-value-of-a-typical-length",
                        ));
                    }
                    Span {
                        trace_id: rng.random::<[u8; 16]>().to_vec(),
                        span_id: rng.random::<[u8; 8]>().to_vec(),
                        name: "chat small-model".into(),
                        kind: span::SpanKind::Server as i32,
                        start_time_unix_nano: start,
                        end_time_unix_nano: end,
                        attributes,
                        ..Default::default()
                    }
                })
                .collect();
            ResourceSpans {
                resource: Some(fleet_resource(s, c, i)),
                scope_spans: vec![ScopeSpans {
                    scope: Some(InstrumentationScope {
                        name: "memspan".into(),
                        version: "0.1.0".into(),
                        ..Default::default()
                    }),
                    spans,
                    ..Default::default()
                }],
                ..Default::default()
            }
        })
        .collect();
    ExportTraceServiceRequest { resource_spans }
}

/// A request's body as sent: protobuf or OTLP/JSON, gzipped when asked; for gRPC, one length-prefixed message
/// (its flag saying whether it is compressed).
fn encode(a: &Args, req: &ExportTraceServiceRequest) -> Result<Bytes, String> {
    let mut body = match a.protocol {
        Protocol::HttpJson => serde_json::to_vec(req).map_err(|e| format!("JSON encoding: {e}"))?,
        _ => req.encode_to_vec(),
    };
    if a.gzip {
        let mut gz = GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&body).map_err(|e| e.to_string())?;
        body = gz.finish().map_err(|e| e.to_string())?;
    }
    if a.protocol == Protocol::Grpc {
        let len = u32::try_from(body.len()).map_err(|_| "a gRPC message over 4 GiB".to_string())?;
        let mut framed = Vec::with_capacity(body.len() + 5);
        framed.push(u8::from(a.gzip));
        framed.extend_from_slice(&len.to_be_bytes());
        framed.extend_from_slice(&body);
        body = framed;
    }
    Ok(Bytes::from(body))
}

/// The bodies requests take in turn, rebuilt every second with fresh values and timestamps.
struct Pool {
    bodies: Mutex<Arc<Vec<Bytes>>>,
    /// The mean body size of the first pool (later pools are the same shape).
    bytes_per_request: u64,
    next: AtomicU64,
}

impl Pool {
    fn build(a: &Args, rng: &mut StdRng, round: usize) -> Result<Vec<Bytes>, String> {
        let fleet = a.services * a.cohorts * a.instances;
        (0..POOL)
            .map(|k| {
                encode(
                    a,
                    &request(
                        a,
                        rng,
                        (round * POOL + k) * RESOURCES_PER_REQUEST % fleet,
                        now_ns(),
                    ),
                )
            })
            .collect()
    }

    fn take(&self) -> Bytes {
        let bodies = self.bodies.lock().map(|b| b.clone()).unwrap_or_default();
        let k = self.next.fetch_add(1, Ordering::Relaxed) as usize;
        bodies
            .get(k % bodies.len().max(1))
            .cloned()
            .unwrap_or_default()
    }
}

/// What one export came back with.
enum Answer {
    /// Accepted, with the spans the receiver said it rejected (partial success).
    Accepted {
        rejected: u64,
    },
    Refused(String),
}

/// The client side of one protocol.
#[derive(Clone)]
enum Client {
    /// One HTTP/2 connection; exports are its streams.
    Grpc {
        send: h2::client::SendRequest<Bytes>,
        uri: http::Uri,
        gzip: bool,
    },
    Http {
        client: reqwest::Client,
        url: String,
        content_type: &'static str,
        gzip: bool,
    },
}

impl Client {
    async fn connect(a: &Args) -> Result<Client, String> {
        match a.protocol {
            Protocol::Grpc => {
                let uri: http::Uri = format!("http://{}{TRACES_PATH}", a.endpoint)
                    .parse()
                    .map_err(|e| format!("--endpoint: {e}"))?;
                let cannot = |e: &dyn std::fmt::Display| {
                    format!("cannot connect to {} over gRPC: {e}", a.endpoint)
                };
                let tcp = tokio::net::TcpStream::connect(&a.endpoint)
                    .await
                    .map_err(|e| cannot(&e))?;
                tcp.set_nodelay(true).map_err(|e| cannot(&e))?;
                let (send, connection) = h2::client::Builder::new()
                    .initial_window_size(1 << 20)
                    .initial_connection_window_size(16 << 20)
                    .handshake(tcp)
                    .await
                    .map_err(|e| cannot(&e))?;
                tokio::spawn(async move {
                    let _ = connection.await;
                });
                Ok(Client::Grpc {
                    send,
                    uri,
                    gzip: a.gzip,
                })
            }
            p => Ok(Client::Http {
                client: reqwest::Client::builder()
                    .tcp_nodelay(true)
                    .pool_max_idle_per_host(a.max_in_flight.max(a.concurrency))
                    .build()
                    .map_err(|e| e.to_string())?,
                url: format!("http://{}/v1/traces", a.endpoint),
                content_type: if p == Protocol::HttpJson {
                    "application/json"
                } else {
                    "application/x-protobuf"
                },
                gzip: a.gzip,
            }),
        }
    }

    async fn export(&mut self, body: Bytes) -> Answer {
        match self {
            Client::Grpc { send, uri, gzip } => grpc_export(send, uri, *gzip, body)
                .await
                .unwrap_or_else(Answer::Refused),
            Client::Http {
                client,
                url,
                content_type,
                gzip,
            } => {
                let mut req = client
                    .post(url.as_str())
                    .header("content-type", *content_type);
                if *gzip {
                    req = req.header("content-encoding", "gzip");
                }
                let resp = match req.body(body).send().await {
                    Ok(r) => r,
                    Err(e) => return Answer::Refused(format!("HTTP: {e}")),
                };
                let status = resp.status();
                let json = *content_type == "application/json";
                let Ok(bytes) = resp.bytes().await else {
                    return Answer::Refused(format!("HTTP {status}: body cut short"));
                };
                if !status.is_success() {
                    return Answer::Refused(format!("HTTP {status}"));
                }
                let rejected = if json {
                    serde_json::from_slice::<serde_json::Value>(&bytes)
                        .ok()
                        .and_then(|v| {
                            let r = v.get("partialSuccess")?.get("rejectedSpans")?.clone();
                            r.as_u64().or_else(|| r.as_str()?.parse().ok())
                        })
                        .unwrap_or(0)
                } else {
                    ExportTraceServiceResponse::decode(bytes)
                        .ok()
                        .and_then(|r| r.partial_success)
                        .map_or(0, |p| p.rejected_spans.max(0) as u64)
                };
                Answer::Accepted { rejected }
            }
        }
    }
}

/// One gRPC Export call of a framed message on an HTTP/2 connection: the answer, from the response message and
/// `grpc-status` (in the trailers, or in the headers of a trailers-only response).
async fn grpc_export(
    send: &h2::client::SendRequest<Bytes>,
    uri: &http::Uri,
    gzip: bool,
    message: Bytes,
) -> Result<Answer, String> {
    let mut request = http::Request::post(uri.clone())
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    if gzip {
        request = request.header("grpc-encoding", "gzip");
    }
    let request = request.body(()).map_err(|e| e.to_string())?;
    let mut ready = send
        .clone()
        .ready()
        .await
        .map_err(|e| format!("gRPC connection: {e}"))?;
    let (response, mut stream) = ready
        .send_request(request, false)
        .map_err(|e| format!("gRPC request: {e}"))?;
    stream
        .send_data(message, true)
        .map_err(|e| format!("gRPC request body: {e}"))?;
    let (head, mut body) = response
        .await
        .map_err(|e| format!("gRPC response: {e}"))?
        .into_parts();
    // The answer is one small message; what a misbehaving server sends beyond the cap is read and dropped.
    let mut answer = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.map_err(|e| format!("gRPC response body: {e}"))?;
        let _ = body.flow_control().release_capacity(chunk.len());
        let room = MAX_ANSWER_BYTES.saturating_sub(answer.len());
        answer.extend_from_slice(&chunk[..chunk.len().min(room)]);
    }
    let trailers = body
        .trailers()
        .await
        .map_err(|e| format!("gRPC trailers: {e}"))?;
    let field = |name: &str| {
        (trailers.as_ref().and_then(|t| t.get(name)))
            .or_else(|| head.headers.get(name))
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    if !head.status.is_success() || field("grpc-status").as_deref() != Some("0") {
        return Ok(Answer::Refused(format!(
            "HTTP {} gRPC status {}: {}",
            head.status,
            field("grpc-status").unwrap_or_default(),
            percent_encoding::percent_decode_str(&field("grpc-message").unwrap_or_default())
                .decode_utf8_lossy()
        )));
    }
    // One uncompressed message (memdrift answers uncompressed to a client that accepts no encoding).
    let rejected = answer
        .get(5..)
        .and_then(|m| ExportTraceServiceResponse::decode(m).ok())
        .and_then(|r| r.partial_success)
        .map_or(0, |p| p.rejected_spans.max(0) as u64);
    Ok(Answer::Accepted { rejected })
}

/// Counts over the measured interval (exports that began within it).
#[derive(Default)]
struct Tally {
    requests: AtomicU64,
    spans_sent: AtomicU64,
    spans_rejected: AtomicU64,
    refused: AtomicU64,
    behind: AtomicU64,
    latencies_us: Mutex<Vec<u32>>,
    first_error: Mutex<Option<String>>,
}

impl Tally {
    fn record(&self, spans: u64, answer: &Answer, latency: Duration) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.spans_sent.fetch_add(spans, Ordering::Relaxed);
        match answer {
            Answer::Accepted { rejected } => {
                self.spans_rejected.fetch_add(*rejected, Ordering::Relaxed);
            }
            Answer::Refused(e) => {
                self.refused.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut first) = self.first_error.lock() {
                    first.get_or_insert_with(|| e.clone());
                }
            }
        }
        if let Ok(mut l) = self.latencies_us.lock() {
            l.push(latency.as_micros().min(u32::MAX as u128) as u32);
        }
    }
}

/// CPU seconds (user + system, all threads) of a process so far, from /proc/PID/stat.
fn cpu_seconds(pid: u32) -> Option<f64> {
    stat_cpu_seconds(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// User + system seconds from the text of a `stat` file (a process's or a thread's).
fn stat_cpu_seconds(stat: &str) -> Option<f64> {
    // The command name may hold spaces: fields are counted after its closing parenthesis.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let (utime, stime): (f64, f64) = (fields.get(11)?.parse().ok()?, fields.get(12)?.parse().ok()?);
    Some((utime + stime) / 100.0)
}

/// CPU seconds so far of a process's threads, summed by thread name. A thread that ends between two readings
/// drops out of the second, so compare names present in both.
fn thread_cpu_seconds(pid: u32) -> std::collections::BTreeMap<String, f64> {
    let mut out = std::collections::BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for task in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        let name = stat
            .find('(')
            .zip(stat.rfind(')'))
            .map(|(open, close)| stat[open + 1..close].to_string());
        if let (Some(name), Some(cpu)) = (name, stat_cpu_seconds(&stat)) {
            *out.entry(name).or_insert(0.0) += cpu;
        }
    }
    out
}

/// The machine's (idle, total) jiffies so far, from the first line of /proc/stat.
fn machine_jiffies() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let fields: Vec<u64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    Some((*fields.get(3)?, fields.iter().sum()))
}

/// Resident memory of a process, MiB.
fn rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

fn percentile(sorted: &[u32], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let k = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[k.min(sorted.len() - 1)] as f64 / 1000.0
}

async fn run(a: Args) -> Result<serde_json::Value, String> {
    let mut rng = StdRng::seed_from_u64(1);
    let first = Pool::build(&a, &mut rng, 0)?;
    let pool = Arc::new(Pool {
        bytes_per_request: first.iter().map(|b| b.len() as u64).sum::<u64>() / POOL as u64,
        bodies: Mutex::new(Arc::new(first)),
        next: AtomicU64::new(0),
    });
    let stop = Arc::new(AtomicBool::new(false));
    // Bodies are rebuilt every second on a thread of their own, so timestamps track the wall clock.
    let refresher = {
        let (a, pool, stop) = (a.clone(), pool.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut round = 1;
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_secs(1));
                if let Ok(bodies) = Pool::build(&a, &mut rng, round) {
                    if let Ok(mut b) = pool.bodies.lock() {
                        *b = Arc::new(bodies);
                    }
                }
                round += 1;
            }
        })
    };
    let mut clients = Vec::with_capacity(a.connections);
    for _ in 0..a.connections {
        clients.push(Client::connect(&a).await?);
    }
    let clients = Arc::new(clients);
    // The client an export takes: each in turn.
    let turn = Arc::new(AtomicU64::new(0));
    let next_client = move || {
        let k = turn.fetch_add(1, Ordering::Relaxed) as usize;
        clients[k % clients.len()].clone()
    };
    let tally = Arc::new(Tally::default());
    // An export is measured when it begins in [warm-up, end of run): decided where it is sent, from one reading
    // of the clock that also decides whether it is sent at all, so nothing sent goes uncounted.
    let started = Instant::now();
    let warmup = Duration::from_secs_f64(a.warmup);
    let total = Duration::from_secs_f64(a.warmup + a.seconds);
    let batch = a.batch as u64;
    let in_flight = Arc::new(AtomicU64::new(0));
    let send = {
        let (tally, in_flight) = (tally.clone(), in_flight.clone());
        move |mut client: Client, body: Bytes, counted: bool| {
            let (tally, in_flight) = (tally.clone(), in_flight.clone());
            async move {
                let t = Instant::now();
                let answer = client.export(body).await;
                if counted {
                    tally.record(batch, &answer, t.elapsed());
                }
                in_flight.fetch_sub(1, Ordering::Relaxed);
            }
        }
    };
    let mut workers = Vec::new();
    match a.rate {
        Some(rate) => {
            // A batch every `batch / rate` seconds, skipped (and counted as behind) at `max_in_flight`.
            let every = Duration::from_secs_f64(a.batch as f64 / rate);
            let max = a.max_in_flight as u64;
            let (tally, in_flight) = (tally.clone(), in_flight.clone());
            let (send, pool, next_client) = (send.clone(), pool.clone(), next_client.clone());
            workers.push(tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
                let mut sends = Vec::new();
                loop {
                    tick.tick().await;
                    let now = started.elapsed();
                    if now >= total {
                        break;
                    }
                    if in_flight.load(Ordering::Relaxed) >= max {
                        if now >= warmup {
                            tally.behind.fetch_add(1, Ordering::Relaxed);
                        }
                        continue;
                    }
                    in_flight.fetch_add(1, Ordering::Relaxed);
                    let body = pool.take();
                    sends.push(tokio::spawn(send(next_client(), body, now >= warmup)));
                    sends.retain(|w: &tokio::task::JoinHandle<()>| !w.is_finished());
                }
                for w in sends {
                    let _ = w.await;
                }
            }));
        }
        None => {
            for _ in 0..a.concurrency {
                let (send, pool, client) = (send.clone(), pool.clone(), next_client());
                let in_flight = in_flight.clone();
                workers.push(tokio::spawn(async move {
                    loop {
                        let now = started.elapsed();
                        if now >= total {
                            break;
                        }
                        in_flight.fetch_add(1, Ordering::Relaxed);
                        send(client.clone(), pool.take(), now >= warmup).await;
                    }
                }));
            }
        }
    }
    tokio::time::sleep(warmup.saturating_sub(started.elapsed())).await;
    // The measured interval: from the end of the warm-up to the end of the run.
    let (cpu0, t0) = (a.pid.and_then(cpu_seconds), Instant::now());
    let threads0 = a.pid.map(thread_cpu_seconds).unwrap_or_default();
    let (loader0, machine0) = (cpu_seconds(std::process::id()), machine_jiffies());
    let mut rss_samples = Vec::new();
    let end = started + total;
    while Instant::now() < end {
        tokio::time::sleep(
            Duration::from_millis(500).min(end.saturating_duration_since(Instant::now())),
        )
        .await;
        if let Some(r) = a.pid.and_then(rss_mib) {
            rss_samples.push(r);
        }
    }
    let (cpu1, elapsed) = (a.pid.and_then(cpu_seconds), t0.elapsed().as_secs_f64());
    let threads1 = a.pid.map(thread_cpu_seconds).unwrap_or_default();
    let (loader1, machine1) = (cpu_seconds(std::process::id()), machine_jiffies());
    for w in workers {
        let _ = tokio::time::timeout(Duration::from_secs(10), w).await;
    }
    let elapsed = elapsed.max(f64::MIN_POSITIVE);
    stop.store(true, Ordering::Relaxed);
    let _ = refresher.join();
    let mut lat = tally
        .latencies_us
        .lock()
        .map(|l| l.clone())
        .unwrap_or_default();
    lat.sort_unstable();
    let sent = tally.spans_sent.load(Ordering::Relaxed);
    let rejected = tally.spans_rejected.load(Ordering::Relaxed);
    let refused = tally.refused.load(Ordering::Relaxed);
    let accepted = sent
        .saturating_sub(rejected)
        .saturating_sub(refused * batch);
    let cpu = cpu0.zip(cpu1).map(|(a, b)| b - a);
    let thread_cores: serde_json::Map<String, serde_json::Value> = threads1
        .iter()
        .filter_map(|(name, b)| Some((name.clone(), ((b - threads0.get(name)?) / elapsed).into())))
        .collect();
    let machine_idle = machine0
        .zip(machine1)
        .filter(|((_, t0), (_, t1))| t1 > t0)
        .map(|((i0, t0), (i1, t1))| i1.saturating_sub(i0) as f64 / (t1 - t0) as f64);
    rss_samples.sort_by(f64::total_cmp);
    let median_rss = rss_samples.get(rss_samples.len() / 2).copied();
    Ok(serde_json::json!({
        "protocol": a.protocol.name(),
        "gzip": a.gzip,
        "mode": if a.rate.is_some() { "rate" } else { "closed-loop" },
        "target_spans_per_s": a.rate,
        "concurrency": if a.rate.is_some() { None } else { Some(a.concurrency) },
        "connections": a.connections,
        "seconds": elapsed,
        "batch": a.batch,
        "series": a.services * a.cohorts * a.instances,
        "bytes_per_request": pool.bytes_per_request,
        "requests": tally.requests.load(Ordering::Relaxed),
        "spans_sent": sent,
        "spans_accepted": accepted,
        "spans_rejected": rejected,
        "requests_refused": refused,
        "first_error": tally.first_error.lock().ok().and_then(|e| e.clone()),
        "behind": tally.behind.load(Ordering::Relaxed),
        "spans_per_s": accepted as f64 / elapsed,
        "latency_ms": {
            "p50": percentile(&lat, 0.5),
            "p90": percentile(&lat, 0.9),
            "p99": percentile(&lat, 0.99),
            "max": percentile(&lat, 1.0),
        },
        "server_cpu_s": cpu,
        "server_cpu_s_per_million_spans": cpu.filter(|_| accepted > 0).map(|c| c * 1e6 / accepted as f64),
        "server_cpu_cores": cpu.map(|c| c / elapsed),
        "server_thread_cpu_cores": thread_cores,
        "loader_cpu_cores": loader0.zip(loader1).map(|(a, b)| (b - a) / elapsed),
        "machine_idle_share": machine_idle,
        "server_rss_mib": {
            "median": median_rss,
            "max": rss_samples.last().copied(),
        },
    }))
}

fn main() -> ExitCode {
    let a = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("loadgen: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("loadgen: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(a)) {
        Ok(report) => {
            let num = |p: &str| {
                report
                    .pointer(p)
                    .and_then(|v| v.as_f64())
                    .unwrap_or(f64::NAN)
            };
            eprintln!(
                "loadgen: {} {}: {:.0} spans/s accepted over {:.1} s ({} sent, {} rejected, {} exports refused, {} batches behind); \
                 latency p50 {:.2} ms p99 {:.2} ms; server {:.2} CPU-s per million spans, RSS {:.0} MiB",
                report["protocol"].as_str().unwrap_or(""),
                report["mode"].as_str().unwrap_or(""),
                num("/spans_per_s"),
                num("/seconds"),
                report["spans_sent"],
                report["spans_rejected"],
                report["requests_refused"],
                report["behind"],
                num("/latency_ms/p50"),
                num("/latency_ms/p99"),
                num("/server_cpu_s_per_million_spans"),
                num("/server_rss_mib/median"),
            );
            println!("{report}");
            if report["requests"].as_u64() == Some(0) {
                eprintln!("loadgen: no export was measured");
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("loadgen: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn a_grpc_message_is_percent_decoded() {
        let decoded = |s| percent_encoding::percent_decode_str(s).decode_utf8_lossy();
        assert_eq!(
            decoded("the%20limit%20is:%201000%20bytes"),
            "the limit is: 1000 bytes"
        );
        assert_eq!(decoded("100%"), "100%");
        assert_eq!(decoded("%zz%E2%9C%93"), "%zz\u{2713}");
    }

    #[test]
    fn grpc_bodies_are_framed_ahead_with_their_compression_flag() {
        let mut a = Args {
            endpoint: "127.0.0.1:4317".into(),
            protocol: Protocol::Grpc,
            gzip: false,
            rate: None,
            concurrency: 1,
            seconds: 1.0,
            warmup: 0.0,
            batch: 8,
            services: 2,
            cohorts: 2,
            instances: 2,
            attributes: 0,
            pid: None,
            max_in_flight: 1,
            connections: 1,
        };
        let req = request(&a, &mut StdRng::seed_from_u64(7), 0, now_ns());
        let plain = req.encode_to_vec();
        let framed = encode(&a, &req).expect("encodes");
        assert_eq!(framed[0], 0);
        assert_eq!(&framed[1..5], &(plain.len() as u32).to_be_bytes());
        assert_eq!(&framed[5..], &plain[..]);

        a.gzip = true;
        let framed = encode(&a, &req).expect("encodes");
        let len = u32::from_be_bytes(framed[1..5].try_into().expect("4 bytes")) as usize;
        assert_eq!((framed[0], len), (1, framed.len() - 5));
        let mut unzipped = Vec::new();
        flate2::read::GzDecoder::new(&framed[5..])
            .read_to_end(&mut unzipped)
            .expect("gzip");
        assert_eq!(unzipped, plain);
    }
}
