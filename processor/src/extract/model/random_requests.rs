//! Random OTLP export requests for tests that read them back (protobuf decoding, the JSON reader): every
//! field extraction reads, with fields it does not (scopes, events, status, histograms) around them.

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1 as pc;
use opentelemetry_proto::tonic::metrics::v1 as pm;
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1 as pt;
use rand::rngs::StdRng;
use rand::Rng;

/// What varies between the tests: how an attribute and a trace id's length are drawn.
#[derive(Clone, Copy)]
pub struct Shape {
    pub attribute: fn(&mut StdRng) -> pc::KeyValue,
    pub trace_id_len: fn(&mut StdRng) -> usize,
}

/// An attribute with a key extraction reads or not, and a value of any kind (those not read too).
pub fn attribute_with_key(rng: &mut StdRng, key: String) -> pc::KeyValue {
    use pc::any_value::Value as V;
    let value = match rng.random_range(0..7) {
        0 => Some(V::StringValue("v".repeat(rng.random_range(0..200)))),
        1 => Some(V::BoolValue(rng.random())),
        2 => Some(V::IntValue(rng.random())),
        3 => Some(V::DoubleValue(rng.random::<f64>() * 1e9 - 5e8)),
        4 => Some(V::ArrayValue(pc::ArrayValue {
            values: vec![pc::AnyValue {
                value: Some(V::IntValue(1)),
            }],
        })),
        5 => Some(V::BytesValue(vec![1, 2, 3])),
        _ => None,
    };
    pc::KeyValue {
        key,
        value: value.map(|v| pc::AnyValue { value: Some(v) }),
        ..Default::default()
    }
}

pub fn attribute(rng: &mut StdRng) -> pc::KeyValue {
    let key = [
        "memspan.rss.end",
        "service.name",
        "k",
        "",
        "gen_ai.request.model",
    ][rng.random_range(0..5)];
    attribute_with_key(rng, key.into())
}

fn attributes(rng: &mut StdRng, shape: Shape, most: usize) -> Vec<pc::KeyValue> {
    (0..rng.random_range(0..most))
        .map(|_| (shape.attribute)(rng))
        .collect()
}

fn resource(rng: &mut StdRng, shape: Shape) -> Option<Resource> {
    rng.random_bool(0.8).then(|| Resource {
        attributes: attributes(rng, shape, 4),
        dropped_attributes_count: rng.random_range(0..3),
        ..Default::default()
    })
}

pub fn trace_request(rng: &mut StdRng, shape: Shape) -> ExportTraceServiceRequest {
    let span = |rng: &mut StdRng| pt::Span {
        trace_id: vec![rng.random(); (shape.trace_id_len)(rng)],
        span_id: vec![rng.random(); 8],
        name: "chat m".into(),
        kind: 3,
        start_time_unix_nano: rng.random(),
        end_time_unix_nano: rng.random(),
        attributes: attributes(rng, shape, 12),
        events: vec![pt::span::Event {
            name: "e".into(),
            attributes: attributes(rng, shape, 2),
            ..Default::default()
        }],
        status: Some(pt::Status {
            code: 1,
            ..Default::default()
        }),
        ..Default::default()
    };
    ExportTraceServiceRequest {
        resource_spans: (0..rng.random_range(0..4))
            .map(|_| pt::ResourceSpans {
                resource: resource(rng, shape),
                scope_spans: (0..rng.random_range(0..3))
                    .map(|_| pt::ScopeSpans {
                        scope: Some(pc::InstrumentationScope {
                            name: "scope".into(),
                            ..Default::default()
                        }),
                        spans: (0..rng.random_range(0..5)).map(|_| span(rng)).collect(),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            })
            .collect(),
    }
}

pub fn metrics_request(rng: &mut StdRng, shape: Shape) -> ExportMetricsServiceRequest {
    let point = |rng: &mut StdRng| pm::NumberDataPoint {
        time_unix_nano: rng.random(),
        start_time_unix_nano: 1,
        value: match rng.random_range(0..3) {
            0 => Some(pm::number_data_point::Value::AsInt(rng.random())),
            1 => Some(pm::number_data_point::Value::AsDouble(rng.random())),
            _ => None,
        },
        attributes: attributes(rng, shape, 3),
        ..Default::default()
    };
    let points = |rng: &mut StdRng| (0..rng.random_range(0..4)).map(|_| point(rng)).collect();
    let metric = |rng: &mut StdRng, i: usize| pm::Metric {
        name: format!("m{i}"),
        unit: "By".into(),
        data: match rng.random_range(0..4) {
            0 => Some(pm::metric::Data::Gauge(pm::Gauge {
                data_points: points(rng),
            })),
            1 => Some(pm::metric::Data::Sum(pm::Sum {
                data_points: points(rng),
                aggregation_temporality: 2,
                is_monotonic: false,
            })),
            2 => Some(pm::metric::Data::Histogram(pm::Histogram::default())),
            _ => None,
        },
        ..Default::default()
    };
    ExportMetricsServiceRequest {
        resource_metrics: (0..rng.random_range(0..3))
            .map(|_| pm::ResourceMetrics {
                resource: resource(rng, shape),
                scope_metrics: (0..rng.random_range(0..3))
                    .map(|_| pm::ScopeMetrics {
                        metrics: (0..rng.random_range(0..4))
                            .map(|i| metric(rng, i))
                            .collect(),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            })
            .collect(),
    }
}
