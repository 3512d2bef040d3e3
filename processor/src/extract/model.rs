//! The OTLP fields extraction reads, as prost messages with the wire's own tags.
//!
//! Decoding the generated opentelemetry-proto types allocates about twenty times per span (names, ids, every
//! attribute key and string, events, links) and made decode 88% of intake cost, short of the 1M spans/s per
//! core the design asks for (BENCHMARKS.md). These messages declare only what extraction uses; prost skips every
//! other field on the wire without allocating, and `bytes` fields (keys, string values, trace ids) are slices of
//! the request buffer rather than copies. Strings stay bytes until a label is needed, and only then are checked
//! as UTF-8. The tags are those of `opentelemetry/proto/**/*.proto`; a test checks the two decodings agree.
//!
//! Not read here on purpose: array, map and bytes attribute values (a memory attribute holding one is dropped
//! as `wrong_type` all the same), histograms and summaries (not memory levels).

use bytes::Bytes;

/// `ExportTraceServiceRequest`, and the Collector file exporter's `TracesData` (same field 1).
#[derive(Clone, PartialEq, prost::Message)]
pub struct TraceRequest {
    #[prost(message, repeated, tag = "1")]
    pub resource_spans: Vec<ResourceSpans>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ResourceSpans {
    #[prost(message, optional, tag = "1")]
    pub resource: Option<Resource>,
    #[prost(message, repeated, tag = "2")]
    pub scope_spans: Vec<ScopeSpans>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Resource {
    #[prost(message, repeated, tag = "1")]
    pub attributes: Vec<KeyValue>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ScopeSpans {
    #[prost(message, repeated, tag = "2")]
    pub spans: Vec<Span>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Span {
    #[prost(bytes = "bytes", tag = "1")]
    pub trace_id: Bytes,
    #[prost(bytes = "bytes", tag = "2")]
    pub span_id: Bytes,
    #[prost(fixed64, tag = "7")]
    pub start_time_unix_nano: u64,
    #[prost(fixed64, tag = "8")]
    pub end_time_unix_nano: u64,
    #[prost(message, repeated, tag = "9")]
    pub attributes: Vec<KeyValue>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct KeyValue {
    /// A proto `string`, kept as bytes: keys are only compared with known ASCII names.
    #[prost(bytes = "bytes", tag = "1")]
    pub key: Bytes,
    #[prost(message, optional, tag = "2")]
    pub value: Option<AnyValue>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct AnyValue {
    #[prost(oneof = "Value", tags = "1, 2, 3, 4")]
    pub value: Option<Value>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Value {
    /// A proto `string`, kept as bytes until used as a label.
    #[prost(bytes = "bytes", tag = "1")]
    String(Bytes),
    #[prost(bool, tag = "2")]
    Bool(bool),
    #[prost(int64, tag = "3")]
    Int(i64),
    #[prost(double, tag = "4")]
    Double(f64),
}

/// `ExportMetricsServiceRequest`, and the Collector file exporter's `MetricsData`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct MetricsRequest {
    #[prost(message, repeated, tag = "1")]
    pub resource_metrics: Vec<ResourceMetrics>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ResourceMetrics {
    #[prost(message, optional, tag = "1")]
    pub resource: Option<Resource>,
    #[prost(message, repeated, tag = "2")]
    pub scope_metrics: Vec<ScopeMetrics>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ScopeMetrics {
    #[prost(message, repeated, tag = "2")]
    pub metrics: Vec<Metric>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Metric {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(oneof = "Data", tags = "5, 7")]
    pub data: Option<Data>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Data {
    #[prost(message, tag = "5")]
    Gauge(NumberPoints),
    #[prost(message, tag = "7")]
    Sum(NumberPoints),
}

/// `Gauge` and `Sum` share field 1, their points.
#[derive(Clone, PartialEq, prost::Message)]
pub struct NumberPoints {
    #[prost(message, repeated, tag = "1")]
    pub data_points: Vec<NumberDataPoint>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct NumberDataPoint {
    #[prost(fixed64, tag = "3")]
    pub time_unix_nano: u64,
    #[prost(message, repeated, tag = "7")]
    pub attributes: Vec<KeyValue>,
    #[prost(oneof = "PointValue", tags = "4, 6")]
    pub value: Option<PointValue>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum PointValue {
    #[prost(double, tag = "4")]
    AsDouble(f64),
    #[prost(sfixed64, tag = "6")]
    AsInt(i64),
}

impl KeyValue {
    pub fn new(key: &str, value: Value) -> KeyValue {
        KeyValue {
            key: Bytes::copy_from_slice(key.as_bytes()),
            value: Some(AnyValue { value: Some(value) }),
        }
    }
}

/// Reads a generated opentelemetry-proto message as this model, through the wire format (what a receiver sees).
pub fn from_proto<M: prost::Message, L: prost::Message + Default>(message: &M) -> L {
    L::decode(message.encode_to_vec().as_slice()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1 as pc;
    use opentelemetry_proto::tonic::metrics::v1 as pm;
    use opentelemetry_proto::tonic::trace::v1 as pt;
    use prost::Message;

    fn pkv(key: &str, v: pc::any_value::Value) -> pc::KeyValue {
        pc::KeyValue {
            key: key.into(),
            value: Some(pc::AnyValue { value: Some(v) }),
            ..Default::default()
        }
    }

    #[test]
    fn reads_the_fields_of_a_full_trace_request() {
        use pc::any_value::Value as V;
        let full = ExportTraceServiceRequest {
            resource_spans: vec![pt::ResourceSpans {
                resource: Some(opentelemetry_proto::tonic::resource::v1::Resource {
                    attributes: vec![pkv("service.name", V::StringValue("svc".into()))],
                    dropped_attributes_count: 3,
                    ..Default::default()
                }),
                scope_spans: vec![pt::ScopeSpans {
                    scope: Some(pc::InstrumentationScope {
                        name: "scope".into(),
                        ..Default::default()
                    }),
                    spans: vec![pt::Span {
                        trace_id: vec![7; 16],
                        span_id: vec![1; 8],
                        name: "chat m".into(),
                        kind: 3,
                        start_time_unix_nano: 5,
                        end_time_unix_nano: 9,
                        attributes: vec![
                            pkv("memspan.rss.end", V::IntValue(42)),
                            pkv("d", V::DoubleValue(1.5)),
                            pkv("b", V::BoolValue(true)),
                            pkv("arr", V::ArrayValue(pc::ArrayValue::default())),
                        ],
                        events: vec![pt::span::Event {
                            name: "e".into(),
                            ..Default::default()
                        }],
                        status: Some(pt::Status {
                            code: 1,
                            ..Default::default()
                        }),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let lean: TraceRequest = from_proto(&full);
        let span = &lean.resource_spans[0].scope_spans[0].spans[0];
        assert_eq!(&span.trace_id[..], &[7; 16]);
        assert_eq!((span.start_time_unix_nano, span.end_time_unix_nano), (5, 9));
        let values: Vec<_> = span
            .attributes
            .iter()
            .map(|kv| (kv.key.clone(), kv.value.clone()))
            .collect();
        assert_eq!(values[0].0, "memspan.rss.end");
        assert_eq!(
            values[0].1,
            Some(AnyValue {
                value: Some(Value::Int(42))
            })
        );
        assert_eq!(
            values[1].1,
            Some(AnyValue {
                value: Some(Value::Double(1.5))
            })
        );
        assert_eq!(
            values[2].1,
            Some(AnyValue {
                value: Some(Value::Bool(true))
            })
        );
        // Arrays are not read: present, but with no value.
        assert_eq!(values[3].1, Some(AnyValue { value: None }));
        let resource = lean.resource_spans[0].resource.as_ref().expect("resource");
        assert_eq!(
            resource.attributes[0].value,
            Some(AnyValue {
                value: Some(Value::String(Bytes::from_static(b"svc")))
            })
        );
        // The same bytes decode as a Collector TracesData too (field 1 in both).
        let again = TraceRequest::decode(full.encode_to_vec().as_slice()).expect("decodes");
        assert_eq!(again, lean);
    }

    #[test]
    fn reads_gauge_and_sum_points() {
        let point = |t, v| pm::NumberDataPoint {
            time_unix_nano: t,
            start_time_unix_nano: 1,
            value: Some(v),
            attributes: vec![pkv("k", pc::any_value::Value::StringValue("v".into()))],
            ..Default::default()
        };
        let metric = |name: &str, data| pm::Metric {
            name: name.into(),
            unit: "By".into(),
            data: Some(data),
            ..Default::default()
        };
        let full = ExportMetricsServiceRequest {
            resource_metrics: vec![pm::ResourceMetrics {
                scope_metrics: vec![pm::ScopeMetrics {
                    metrics: vec![
                        metric(
                            "g",
                            pm::metric::Data::Gauge(pm::Gauge {
                                data_points: vec![point(
                                    10,
                                    pm::number_data_point::Value::AsInt(-3),
                                )],
                            }),
                        ),
                        metric(
                            "s",
                            pm::metric::Data::Sum(pm::Sum {
                                data_points: vec![point(
                                    11,
                                    pm::number_data_point::Value::AsDouble(2.5),
                                )],
                                aggregation_temporality: 2,
                                is_monotonic: false,
                            }),
                        ),
                        metric("h", pm::metric::Data::Histogram(pm::Histogram::default())),
                    ],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let lean: MetricsRequest = from_proto(&full);
        let metrics = &lean.resource_metrics[0].scope_metrics[0].metrics;
        let Some(Data::Gauge(g)) = &metrics[0].data else {
            panic!("gauge")
        };
        assert_eq!(
            (
                g.data_points[0].time_unix_nano,
                g.data_points[0].value.clone()
            ),
            (10, Some(PointValue::AsInt(-3)))
        );
        let Some(Data::Sum(s)) = &metrics[1].data else {
            panic!("sum")
        };
        assert_eq!(s.data_points[0].value, Some(PointValue::AsDouble(2.5)));
        assert_eq!(s.data_points[0].attributes[0].key, "k");
        assert_eq!(
            (metrics[2].name.as_str(), metrics[2].data.clone()),
            ("h", None)
        );
    }
}
