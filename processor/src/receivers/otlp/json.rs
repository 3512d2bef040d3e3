//! OTLP/JSON reading, lenient where the specification allows and the wire demands.
//!
//! opentelemetry-proto's own serde support fails a whole request on a single value it cannot read: a
//! `"doubleValue": "NaN"` (proto3 JSON's spelling of NaN, which the Collector's `file` exporter writes) or an
//! `"intValue": "12MB"`. memdrift must reject such a value alone and keep the rest of the batch, so JSON is read
//! through this small model of the fields extraction uses and converted into the generated prost types; bad
//! values survive the reading as values of the wrong kind, and extraction counts them by reason.
//!
//! What the model accepts, per the OTLP/JSON rules: lowerCamelCase keys, unknown keys ignored, trace ids in hex,
//! 64-bit integers as strings or numbers, doubles as numbers or the strings "NaN", "Infinity", "-Infinity".
//! Fields memdrift does not read (events, links, status, ...) are skipped, so the conversion is not a round
//! trip; it is a faithful reading of every field extraction looks at.

use serde::de::{self, Deserializer, IgnoredAny};
use serde::Deserialize;

use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, ArrayValue, KeyValue};
use opentelemetry_proto::tonic::metrics::v1 as pm;
use opentelemetry_proto::tonic::resource::v1::Resource as PResource;
use opentelemetry_proto::tonic::trace::v1 as pt;

/// One OTLP/JSON document: an export request body, or one line of the Collector's `file` exporter. Either
/// signal may be present; `resourceLogs` is accepted and ignored.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct JsonDocument {
    resource_spans: Vec<ResourceSpans>,
    resource_metrics: Vec<ResourceMetrics>,
    #[allow(dead_code)]
    resource_logs: IgnoredAny,
}

impl JsonDocument {
    pub fn parse(bytes: &[u8]) -> Result<JsonDocument, serde_json::Error> {
        // serde would also read a struct from a JSON array; an OTLP document is always an object.
        if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return Err(serde::de::Error::custom(
                "expected a JSON object (TracesData or MetricsData)",
            ));
        }
        serde_json::from_slice(bytes)
    }

    /// Converts into the generated types: (spans, metrics).
    pub fn into_proto(self) -> (Vec<pt::ResourceSpans>, Vec<pm::ResourceMetrics>) {
        (
            self.resource_spans.into_iter().map(Into::into).collect(),
            self.resource_metrics.into_iter().map(Into::into).collect(),
        )
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct Resource {
    attributes: Vec<Attribute>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct ResourceSpans {
    resource: Option<Resource>,
    scope_spans: Vec<ScopeSpans>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct ScopeSpans {
    spans: Vec<Span>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct Span {
    #[serde(deserialize_with = "hex_id")]
    trace_id: Vec<u8>,
    #[serde(deserialize_with = "hex_id")]
    span_id: Vec<u8>,
    name: String,
    #[serde(deserialize_with = "u64_lenient")]
    start_time_unix_nano: u64,
    #[serde(deserialize_with = "u64_lenient")]
    end_time_unix_nano: u64,
    attributes: Vec<Attribute>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct ResourceMetrics {
    resource: Option<Resource>,
    scope_metrics: Vec<ScopeMetrics>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct ScopeMetrics {
    metrics: Vec<Metric>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct Metric {
    name: String,
    unit: String,
    gauge: Option<Points>,
    sum: Option<Points>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct Points {
    data_points: Vec<NumberDataPoint>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct NumberDataPoint {
    attributes: Vec<Attribute>,
    #[serde(deserialize_with = "u64_lenient")]
    time_unix_nano: u64,
    #[serde(deserialize_with = "opt_f64_lenient")]
    as_double: Option<Number>,
    #[serde(deserialize_with = "opt_i64_lenient")]
    as_int: Option<Number>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct Attribute {
    key: String,
    value: Option<Value>,
}

/// An AnyValue as read. The JSON form names its kind by key, one key per object.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct Value {
    string_value: Option<String>,
    bool_value: Option<bool>,
    #[serde(deserialize_with = "opt_i64_lenient")]
    int_value: Option<Number>,
    #[serde(deserialize_with = "opt_f64_lenient")]
    double_value: Option<Number>,
    array_value: Option<IgnoredAny>,
    kvlist_value: Option<IgnoredAny>,
    bytes_value: Option<IgnoredAny>,
}

/// A number field as found: a value, or text that is not a number of that kind (kept to be counted).
#[derive(Debug, Clone, PartialEq)]
enum Number {
    Int(i64),
    Double(f64),
    Text(String),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawNumber {
    U(u64),
    I(i64),
    F(f64),
    S(String),
}

fn raw_to_i64(raw: RawNumber) -> Number {
    match raw {
        RawNumber::I(i) => Number::Int(i),
        RawNumber::U(u) => i64::try_from(u)
            .map(Number::Int)
            .unwrap_or(Number::Double(u as f64)),
        // JSON writers sometimes print integral int64 values as 1.0; anything fractional is kept as a double so
        // that extraction rejects it as fractional.
        RawNumber::F(f) => Number::Double(f),
        RawNumber::S(s) => s
            .trim()
            .parse::<i64>()
            .map(Number::Int)
            .unwrap_or(Number::Text(s)),
    }
}

fn raw_to_f64(raw: RawNumber) -> Number {
    match raw {
        RawNumber::I(i) => Number::Double(i as f64),
        RawNumber::U(u) => Number::Double(u as f64),
        RawNumber::F(f) => Number::Double(f),
        RawNumber::S(s) => match s.as_str() {
            "NaN" => Number::Double(f64::NAN),
            "Infinity" => Number::Double(f64::INFINITY),
            "-Infinity" => Number::Double(f64::NEG_INFINITY),
            other => other
                .trim()
                .parse::<f64>()
                .map(Number::Double)
                .unwrap_or(Number::Text(s)),
        },
    }
}

fn opt_i64_lenient<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Number>, D::Error> {
    Ok(Option::<RawNumber>::deserialize(d)?.map(raw_to_i64))
}

fn opt_f64_lenient<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Number>, D::Error> {
    Ok(Option::<RawNumber>::deserialize(d)?.map(raw_to_f64))
}

/// Timestamps: a string or a number. A timestamp that is not a non-negative integer fails the document: without
/// it nothing in the document can be placed in event time reliably, and writers never produce one.
fn u64_lenient<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    match Option::<RawNumber>::deserialize(d)? {
        None => Ok(0),
        Some(RawNumber::U(u)) => Ok(u),
        Some(RawNumber::I(i)) => {
            u64::try_from(i).map_err(|_| de::Error::custom(format!("negative timestamp {i}")))
        }
        Some(RawNumber::F(f)) if f >= 0.0 && f.fract() == 0.0 && f < u64::MAX as f64 => {
            Ok(f as u64)
        }
        Some(RawNumber::F(f)) => Err(de::Error::custom(format!(
            "timestamp {f} is not a whole number"
        ))),
        Some(RawNumber::S(s)) => s.parse::<u64>().map_err(|_| {
            de::Error::custom(format!("timestamp {s:?} is not a number of nanoseconds"))
        }),
    }
}

/// Trace and span ids are hex in OTLP/JSON. An id that is not hex is dropped (the span stays usable without it).
fn hex_id<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    let s = Option::<String>::deserialize(d)?.unwrap_or_default();
    Ok(hex::decode(&s).unwrap_or_default())
}

impl From<Attribute> for KeyValue {
    fn from(a: Attribute) -> KeyValue {
        KeyValue {
            key: a.key,
            value: a.value.map(Into::into),
            ..Default::default()
        }
    }
}

fn attrs(v: Vec<Attribute>) -> Vec<KeyValue> {
    v.into_iter().map(Into::into).collect()
}

impl From<Value> for AnyValue {
    fn from(v: Value) -> AnyValue {
        use any_value::Value as V;
        let number = |n: Number| match n {
            Number::Int(i) => V::IntValue(i),
            Number::Double(d) => V::DoubleValue(d),
            Number::Text(s) => V::StringValue(s),
        };
        let value = if let Some(s) = v.string_value {
            Some(V::StringValue(s))
        } else if let Some(n) = v.int_value {
            Some(number(n))
        } else if let Some(n) = v.double_value {
            Some(number(n))
        } else if let Some(b) = v.bool_value {
            Some(V::BoolValue(b))
        } else if v.array_value.is_some() || v.kvlist_value.is_some() {
            Some(V::ArrayValue(ArrayValue::default()))
        } else if v.bytes_value.is_some() {
            Some(V::BytesValue(Vec::new()))
        } else {
            None
        };
        AnyValue { value }
    }
}

fn resource(r: Option<Resource>) -> Option<PResource> {
    r.map(|r| PResource {
        attributes: attrs(r.attributes),
        ..Default::default()
    })
}

impl From<ResourceSpans> for pt::ResourceSpans {
    fn from(rs: ResourceSpans) -> pt::ResourceSpans {
        pt::ResourceSpans {
            resource: resource(rs.resource),
            scope_spans: rs
                .scope_spans
                .into_iter()
                .map(|ss| pt::ScopeSpans {
                    spans: ss
                        .spans
                        .into_iter()
                        .map(|s| pt::Span {
                            trace_id: s.trace_id,
                            span_id: s.span_id,
                            name: s.name,
                            start_time_unix_nano: s.start_time_unix_nano,
                            end_time_unix_nano: s.end_time_unix_nano,
                            attributes: attrs(s.attributes),
                            ..Default::default()
                        })
                        .collect(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }
}

impl From<ResourceMetrics> for pm::ResourceMetrics {
    fn from(rm: ResourceMetrics) -> pm::ResourceMetrics {
        let points = |p: Points| -> Vec<pm::NumberDataPoint> {
            p.data_points
                .into_iter()
                .map(|p| pm::NumberDataPoint {
                    attributes: attrs(p.attributes),
                    time_unix_nano: p.time_unix_nano,
                    value: match (p.as_double, p.as_int) {
                        (Some(Number::Double(d)), _) => {
                            Some(pm::number_data_point::Value::AsDouble(d))
                        }
                        (_, Some(Number::Int(i))) => Some(pm::number_data_point::Value::AsInt(i)),
                        (_, Some(Number::Double(d))) => {
                            Some(pm::number_data_point::Value::AsDouble(d))
                        }
                        // Text that is no number: a point without a value, counted as wrong_type.
                        _ => None,
                    },
                    ..Default::default()
                })
                .collect()
        };
        pm::ResourceMetrics {
            resource: resource(rm.resource),
            scope_metrics: rm
                .scope_metrics
                .into_iter()
                .map(|sm| pm::ScopeMetrics {
                    metrics: sm
                        .metrics
                        .into_iter()
                        .map(|m| pm::Metric {
                            name: m.name,
                            unit: m.unit,
                            data: match (m.gauge, m.sum) {
                                (Some(g), _) => Some(pm::metric::Data::Gauge(pm::Gauge {
                                    data_points: points(g),
                                })),
                                (None, Some(s)) => Some(pm::metric::Data::Sum(pm::Sum {
                                    data_points: points(s),
                                    ..Default::default()
                                })),
                                (None, None) => None,
                            },
                            ..Default::default()
                        })
                        .collect(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;

    fn first_value(doc: &str) -> Option<any_value::Value> {
        let (spans, _) = JsonDocument::parse(doc.as_bytes())
            .expect("parses")
            .into_proto();
        spans[0].scope_spans[0].spans[0].attributes[0]
            .value
            .clone()
            .and_then(|v| v.value)
    }

    fn span_with(value: &str) -> String {
        format!(
            r#"{{"resourceSpans":[{{"scopeSpans":[{{"spans":[{{"traceId":"5b8efff798038103d269b633813fc60c",
            "endTimeUnixNano":"1700000000000000000","attributes":[{{"key":"memspan.rss.end","value":{value}}}]}}]}}]}}]}}"#
        )
    }

    #[test]
    fn reads_int64_as_string_and_number_and_special_doubles() {
        use any_value::Value as V;
        assert_eq!(
            first_value(&span_with(r#"{"intValue":"1048576"}"#)),
            Some(V::IntValue(1048576))
        );
        assert_eq!(
            first_value(&span_with(r#"{"intValue":1048576}"#)),
            Some(V::IntValue(1048576))
        );
        assert_eq!(
            first_value(&span_with(r#"{"doubleValue":2048}"#)),
            Some(V::DoubleValue(2048.0))
        );
        assert!(
            matches!(first_value(&span_with(r#"{"doubleValue":"NaN"}"#)), Some(V::DoubleValue(d)) if d.is_nan())
        );
        assert_eq!(
            first_value(&span_with(r#"{"doubleValue":"-Infinity"}"#)),
            Some(V::DoubleValue(f64::NEG_INFINITY))
        );
        assert_eq!(
            first_value(&span_with(r#"{"intValue":"12MB"}"#)),
            Some(V::StringValue("12MB".into()))
        );
        assert_eq!(
            first_value(&span_with(r#"{"arrayValue":{"values":[]}}"#)),
            Some(V::ArrayValue(ArrayValue::default()))
        );
        assert_eq!(first_value(&span_with(r#"{}"#)), None);
    }

    #[test]
    fn reads_hex_ids_and_string_timestamps() {
        let (spans, _) = JsonDocument::parse(span_with(r#"{"intValue":"1"}"#).as_bytes())
            .expect("parses")
            .into_proto();
        let span = &spans[0].scope_spans[0].spans[0];
        assert_eq!(
            hex::encode(&span.trace_id),
            "5b8efff798038103d269b633813fc60c"
        );
        assert_eq!(span.end_time_unix_nano, 1_700_000_000_000_000_000);
    }

    #[test]
    fn agrees_with_opentelemetry_proto_serializer() {
        // What opentelemetry-proto writes as OTLP/JSON, this model reads back to the same fields.
        let doc = span_with(r#"{"intValue":"42"}"#);
        let (spans, _) = JsonDocument::parse(doc.as_bytes())
            .expect("parses")
            .into_proto();
        let request = ExportTraceServiceRequest {
            resource_spans: spans.clone(),
        };
        let written = serde_json::to_string(&request).expect("serializes");
        let (again, _) = JsonDocument::parse(written.as_bytes())
            .expect("parses")
            .into_proto();
        assert_eq!(again, spans);
    }

    #[test]
    fn broken_json_is_an_error_not_a_panic() {
        assert!(JsonDocument::parse(b"{\"resourceSpans\":[{\"scopeSpans\":[").is_err());
        assert!(JsonDocument::parse(b"[]").is_err());
    }
}
