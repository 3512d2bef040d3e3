//! Seeded mutation of valid and hostile OTLP bodies through every decoder memdrift has, then extraction and the
//! engine with the default detectors: nothing panics or loops, and decoding asks the decode budget for at least
//! what it holds. A short, deterministic stand-in
//! for coverage-guided fuzzing that runs in every `cargo test` (the corpus holds the hostile cases found so far:
//! empty repeated messages, far-future timestamps, deep groups, huge lengths).

use memdrift::config::Pipeline;
use memdrift::core::Core;
use memdrift::extract::model::{MetricsRequest, TraceRequest};
use memdrift::extract::{extract_metrics, extract_spans, ExtractConfig, ExtractStats};
use memdrift::receivers::otlp::budget::{weigh, LOG_RECORDS};
use memdrift::receivers::otlp::json::{count_log_records, JsonDocument};
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value::Value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::{
    metric::Data, number_data_point, Gauge, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prost::Message;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const T: u64 = 1_700_000_000_000_000_000;

fn kv(key: &str, v: Value) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(v) }),
        ..Default::default()
    }
}

fn traces(end: u64) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![
                    kv("service.name", Value::StringValue("svc".into())),
                    kv("service.instance.id", Value::StringValue("pod-1".into())),
                ],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans: (0..4)
                    .map(|i| Span {
                        trace_id: vec![7; 16],
                        span_id: vec![i + 1; 8],
                        start_time_unix_nano: end - 1000,
                        end_time_unix_nano: end + u64::from(i),
                        attributes: vec![
                            kv("memspan.rss.start", Value::IntValue(500_000_000)),
                            kv("memspan.rss.end", Value::IntValue(501_000_000)),
                            kv("memspan.cohort", Value::StringValue("canary".into())),
                            kv("memspan.heap.allocated", Value::DoubleValue(1e8)),
                        ],
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

fn metrics() -> ExportMetricsServiceRequest {
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(Resource {
                attributes: vec![kv("service.name", Value::StringValue("svc".into()))],
                ..Default::default()
            }),
            scope_metrics: vec![ScopeMetrics {
                metrics: vec![Metric {
                    name: "container.memory.working_set".into(),
                    data: Some(Data::Gauge(Gauge {
                        data_points: vec![NumberDataPoint {
                            time_unix_nano: T,
                            value: Some(number_data_point::Value::AsInt(700_000_000)),
                            ..Default::default()
                        }],
                    })),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// The seed bodies: valid protobuf and JSON of each signal, and the hostile shapes found so far.
fn corpus() -> Vec<Vec<u8>> {
    let mut empty_spans = vec![0x0a, 0x0a, 0x12, 0x08];
    empty_spans.extend([0x12, 0x00].repeat(4));
    vec![
        traces(T).encode_to_vec(),
        traces(u64::MAX - 5_000_000_000).encode_to_vec(),
        metrics().encode_to_vec(),
        serde_json::to_vec(&traces(T)).expect("json"),
        serde_json::to_vec(&metrics()).expect("json"),
        br#"{"resourceSpans":[{"scopeSpans":[{"spans":[{},{},{"attributes":[{"key":"memspan.rss.end","value":{"intValue":[1]}}]}]}]}]}"#.to_vec(),
        br#"{"resourceLogs":[{"scopeLogs":[{"logRecords":[{},{"body":{"stringValue":"x"}}]}]}]}"#.to_vec(),
        empty_spans,
        // A group in an unknown field, and one nested 50 deep.
        [vec![0x2b], [0x2b].repeat(50), [0x2c].repeat(50), vec![0x2c]].concat(),
        // A length far past the end.
        vec![0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f, 0x00],
    ]
}

fn mutate(rng: &mut StdRng, body: &mut Vec<u8>) {
    for _ in 0..rng.random_range(1..=4) {
        let len = body.len();
        match rng.random_range(0..6) {
            0 if len > 0 => {
                let i = rng.random_range(0..len);
                body[i] ^= 1 << rng.random_range(0..8);
            }
            1 if len > 0 => {
                let i = rng.random_range(0..len);
                body[i] = [0x00, 0x7f, 0x80, 0xff, b'{', b'"', b'[', b'9'][rng.random_range(0..8)];
            }
            2 => {
                let i = rng.random_range(0..=len);
                let bytes: Vec<u8> = (0..rng.random_range(1..8)).map(|_| rng.random()).collect();
                body.splice(i..i, bytes);
            }
            3 if len > 0 => body.truncate(rng.random_range(0..len)),
            4 if len > 1 => {
                let a = rng.random_range(0..len);
                let b = rng.random_range(a..len);
                let piece = body[a..=b].to_vec();
                let at = rng.random_range(0..=body.len());
                body.splice(at..at, piece);
            }
            _ => {
                let i = rng.random_range(0..=len);
                body.splice(
                    i..i,
                    [
                        0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
                    ],
                );
            }
        }
    }
}

#[test]
fn mutated_bodies_never_panic_and_decoding_is_charged_what_it_holds() {
    let pipeline = Pipeline::default_pipeline().expect("the default pipeline");
    let config = ExtractConfig::default();
    let mut core = Core::new(pipeline.engine.clone(), pipeline.build_detectors());
    let mut rng = StdRng::seed_from_u64(20261130);
    let corpus = corpus();
    let (mut decoded, mut samples) = (0u32, 0usize);
    for round in 0..200_000 {
        let mut body = corpus[round % corpus.len()].clone();
        mutate(&mut rng, &mut body);
        let _ = weigh(&body, &LOG_RECORDS);
        let _ = count_log_records(&body, &mut |_| true);
        let mut out = Vec::new();
        let mut stats = ExtractStats::default();
        // Decoding asks the budget for at least what it ends up holding.
        let mut charged = 0;
        let traces = TraceRequest::decode_within(&body, &config, &mut |n| {
            charged += n;
            true
        });
        if let Ok(req) = traces {
            assert!(req.heap_bytes() <= charged, "traces: {body:?}");
            extract_spans(&req, &config, &mut out, &mut stats);
            decoded += 1;
        }
        let mut charged = 0;
        let metrics = MetricsRequest::decode_within(&body, &config, &mut |n| {
            charged += n;
            true
        });
        if let Ok(req) = metrics {
            assert!(req.heap_bytes() <= charged, "metrics: {body:?}");
            extract_metrics(&req, &config, &mut out, &mut stats);
        }
        if let Ok(doc) = JsonDocument::parse(&body) {
            extract_spans(&doc.traces(), &config, &mut out, &mut stats);
            extract_metrics(&doc.metrics(), &config, &mut out, &mut stats);
        }
        samples += out.len();
        core.ingest(&out);
    }
    core.finish();
    // The mutations kept enough bodies valid to reach extraction and the engine.
    eprintln!("{decoded} trace bodies decoded, {samples} samples");
    assert!(decoded > 4_000, "{decoded} bodies decoded");
    assert!(samples > 4_000, "{samples} samples reached the engine");
}

/// Writes [`corpus`] as the seed corpus of the fuzz targets (`fuzz/corpus/otlp_protobuf`, `otlp_json`):
/// `cargo test -p memdrift --test decode_mutations -- --ignored write_fuzz_corpus`.
#[test]
#[ignore]
fn write_fuzz_corpus() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
    for (i, body) in corpus().iter().enumerate() {
        let target = if body.first() == Some(&b'{') {
            "otlp_json"
        } else {
            "otlp_protobuf"
        };
        let dir = root.join(target);
        std::fs::create_dir_all(&dir).expect("corpus dir");
        std::fs::write(dir.join(format!("seed-{i:02}")), body).expect("seed");
    }
}
