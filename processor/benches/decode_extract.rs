//! Decode + extract throughput of one OTLP trace export, in spans per second on one core.
//!
//! # What is measured
//!
//! The receiver-side CPU cost of turning one export request body into [`MemorySample`]s, on a single thread,
//! for a batch of [`BATCH_SPANS`] spans. Four benchmarks in the group `decode_extract/512_spans`:
//!
//! - `protobuf`: `extract::model::TraceRequest::decode_keeping` of the body in place (keys, string values and
//!   ids are slices of it; attributes extraction does not read are skipped unread), then `extract_spans`: what
//!   both receivers do.
//! - `json`: `JsonDocument::parse` of the OTLP/JSON body, `traces()`, then `extract_spans` (what the
//!   OTLP/HTTP-JSON receiver and `replay` do).
//! - `extract_only`: `extract_spans` on an already decoded request, so that decode cost = `protobuf` - this.
//! - `decode_generated_types_only`: decoding opentelemetry-proto's generated `ExportTraceServiceRequest`, the
//!   reference the model replaced (no extraction).
//!
//! Each iteration does what `receivers::otlp::Ingest::traces` does per request: a fresh `Vec<MemorySample>` and
//! `ExtractStats`, one shared `ExtractConfig::default()`; the decoded request and the samples are dropped inside
//! the timed loop, as they are in the receiver. Not measured: HTTP/gRPC framing, gzip, the channel to the engine.
//! Criterion reports elements/s with elements = spans (`Throughput::Elements(512)`).
//!
//! # Batch shape
//!
//! What an instrumented inference service's SDK sends (cf. `tests/peers/otlp_client.py`): one `ResourceSpans`
//! (`service.name`, `service.version`, `service.instance.id`, `host.name`, `telemetry.sdk.{language,name,version}`)
//! with one instrumentation scope and 512 spans, the default `max_export_batch_size` of the SDKs' batch span
//! processor. Each span: a 16-byte trace id, 8-byte span and parent ids, name `"chat <model>"`, kind CLIENT,
//! start/end times 2-20 ms apart, status OK, and 11 attributes: 4 `gen_ai.*` (`operation.name`, `request.model`,
//! `usage.input_tokens`, `usage.output_tokens`) and 7 `memspan.*` integers (`rss.start`, `rss.end`,
//! `heap.allocated`, `heap.resident`, `request.allocated`, `request.freed`, `limit`). The cohort comes from the
//! resource's `service.version`. Values are pseudo-random with a fixed seed, so every run sees the same bytes.
//! The protobuf body is `prost::Message::encode_to_vec`; the JSON body is `serde_json::to_vec` of the same
//! request through opentelemetry-proto's serde support (hex ids, int64 as strings: the OTLP/JSON wire form).
//!
//! # Running
//!
//! ```text
//! cargo bench -p memdrift --bench decode_extract
//! ```
//!
//! Per core: criterion runs the routine on one thread, so spans/s as reported is spans/s per core.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    span, status, ResourceSpans, ScopeSpans, Span, Status,
};
use prost::Message;

use memdrift::extract::model::TraceRequest;
use memdrift::extract::{extract_spans, ExtractConfig, ExtractStats};
use memdrift::receivers::otlp::json::JsonDocument;
use memdrift::sample::MemorySample;

/// Spans per export request: the SDKs' default `max_export_batch_size`.
const BATCH_SPANS: usize = 512;

const KIB: i64 = 1 << 10;
const MIB: i64 = 1 << 20;
const GIB: i64 = 1 << 30;

/// splitmix64: a fixed-seed generator, so the batch is the same on every run without a `rand` dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn range(&mut self, lo: i64, hi: i64) -> i64 {
        lo + (self.next() % (hi - lo + 1) as u64) as i64
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

fn string_attr(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.to_string())),
        }),
        ..Default::default()
    }
}

fn int_attr(key: &str, value: i64) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue {
            value: Some(any_value::Value::IntValue(value)),
        }),
        ..Default::default()
    }
}

/// One GenAI chat call of a ~500 MiB inference process, as its SDK would export it.
fn chat_span(rng: &mut Rng, end_time_unix_nano: u64) -> Span {
    let model = if rng.next().is_multiple_of(4) {
        "large-model"
    } else {
        "small-model"
    };
    let rss_start = 500 * MIB + rng.range(-32 * MIB, 32 * MIB);
    let allocated = rng.range(MIB, 8 * MIB);
    let retained = rng.range(0, 256 * KIB);
    let heap_allocated = rng.range(280 * MIB, 340 * MIB);
    let duration_ns = rng.range(2, 20) as u64 * 1_000_000;
    Span {
        trace_id: rng.bytes(16),
        span_id: rng.bytes(8),
        parent_span_id: rng.bytes(8),
        flags: 0x101, // W3C sampled; HAS_IS_REMOTE set, parent is local
        name: format!("chat {model}"),
        kind: span::SpanKind::Client as i32,
        start_time_unix_nano: end_time_unix_nano - duration_ns,
        end_time_unix_nano,
        attributes: vec![
            string_attr("gen_ai.operation.name", "chat"),
            string_attr("gen_ai.request.model", model),
            int_attr("gen_ai.usage.input_tokens", rng.range(20, 4000)),
            int_attr("gen_ai.usage.output_tokens", rng.range(1, 1000)),
            int_attr("memspan.rss.start", rss_start),
            int_attr("memspan.rss.end", rss_start + retained),
            int_attr("memspan.heap.allocated", heap_allocated),
            int_attr(
                "memspan.heap.resident",
                heap_allocated + rng.range(8 * MIB, 24 * MIB),
            ),
            int_attr("memspan.request.allocated", allocated),
            int_attr("memspan.request.freed", allocated - retained),
            int_attr("memspan.limit", 4 * GIB),
        ],
        status: Some(Status {
            code: status::StatusCode::Ok as i32,
            message: String::new(),
        }),
        ..Default::default()
    }
}

/// The benchmarked export request: one resource, one scope, [`BATCH_SPANS`] spans.
fn export_request() -> ExportTraceServiceRequest {
    let mut rng = Rng(0x6d65_6d64_7269_6674);
    let first_end: u64 = 1_750_000_000_000_000_000;
    let spans = (0..BATCH_SPANS)
        .map(|i| chat_span(&mut rng, first_end + i as u64 * 9_700_000))
        .collect();
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![
                    string_attr("service.name", "infer-gateway"),
                    string_attr("service.version", "1.4.2"),
                    string_attr("service.instance.id", "infer-gateway-7d9c5b6f4-x2k8p"),
                    string_attr("host.name", "gpu-node-17"),
                    string_attr("telemetry.sdk.language", "python"),
                    string_attr("telemetry.sdk.name", "opentelemetry"),
                    string_attr("telemetry.sdk.version", "1.38.0"),
                ],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "opentelemetry.instrumentation.openai_v2".to_string(),
                    version: "2.1b0".to_string(),
                    ..Default::default()
                }),
                spans,
                schema_url: "https://opentelemetry.io/schemas/1.28.0".to_string(),
            }],
            schema_url: "https://opentelemetry.io/schemas/1.28.0".to_string(),
        }],
    }
}

/// What the receiver does with decoded spans: fresh output and stats per request.
fn extract(
    request: &TraceRequest<'_>,
    config: &ExtractConfig,
) -> (Vec<MemorySample>, ExtractStats) {
    let mut samples = Vec::new();
    let mut stats = ExtractStats::default();
    extract_spans(request, config, &mut samples, &mut stats);
    (samples, stats)
}

fn decode_extract(c: &mut Criterion) {
    let request = export_request();
    let config = ExtractConfig::default();
    let protobuf = request.encode_to_vec();
    let json = serde_json::to_vec(&request).expect("the request serializes to OTLP/JSON");
    let decoded = TraceRequest::decode(&protobuf).expect("valid protobuf");
    let document = JsonDocument::parse(&json).expect("valid OTLP/JSON");

    // Every path must do the same work: every span yields one sample, with the resource's cohort.
    for (path, spans) in [("protobuf", decoded.clone()), ("json", document.traces())] {
        let (samples, stats) = extract(&spans, &config);
        assert_eq!(samples.len(), BATCH_SPANS, "{path}: one sample per span");
        assert_eq!(stats.spans_accepted, BATCH_SPANS as u64, "{path}");
        assert!(
            stats.dropped_values.is_empty() && stats.refused.is_empty(),
            "{path}: {stats:?}"
        );
        assert_eq!(samples[0].cohort.as_deref(), Some("1.4.2"), "{path}");
        assert_eq!(
            samples[0].values.len(),
            8,
            "{path}: 7 memspan attributes + rss delta"
        );
    }
    eprintln!(
        "decode_extract: {BATCH_SPANS} spans, protobuf body {} bytes ({} B/span), JSON body {} bytes ({} B/span)",
        protobuf.len(),
        protobuf.len() / BATCH_SPANS,
        json.len(),
        json.len() / BATCH_SPANS,
    );

    let mut group = c.benchmark_group(format!("decode_extract/{BATCH_SPANS}_spans"));
    group.throughput(Throughput::Elements(BATCH_SPANS as u64));

    group.bench_function("protobuf", |b| {
        b.iter(|| {
            let req = TraceRequest::decode_keeping(black_box(&protobuf), &config)
                .expect("valid protobuf");
            extract(&req, &config)
        })
    });

    group.bench_function("json", |b| {
        b.iter(|| {
            let doc = JsonDocument::parse(black_box(&json)).expect("valid OTLP/JSON");
            extract(&doc.traces(), &config)
        })
    });

    group.bench_function("extract_only", |b| {
        b.iter(|| extract(black_box(&decoded), &config))
    });

    // The reference the model replaced: decoding the generated opentelemetry-proto types alone, no extraction.
    group.bench_function("decode_generated_types_only", |b| {
        b.iter(|| {
            ExportTraceServiceRequest::decode(black_box(&protobuf[..])).expect("valid protobuf")
        })
    });

    group.finish();
}

criterion_group! {
    name = benches;
    // Shorter than criterion's 5 s default: the machine is shared, and three benchmarks x several runs add up.
    config = Criterion::default().measurement_time(Duration::from_secs(4)).warm_up_time(Duration::from_secs(2));
    targets = decode_extract
}
criterion_main!(benches);
