//! OTLP/JSON reading, lenient where the specification allows and the wire demands.
//!
//! opentelemetry-proto's own serde support fails a whole request on a single value it cannot read: a
//! `"doubleValue": "NaN"` (proto3 JSON's spelling of NaN, which the Collector's `file` exporter writes) or an
//! `"intValue": "12MB"`. memdrift must reject such a value alone and keep the rest of the batch, so JSON is read
//! through this small model of the fields extraction uses and converted into extraction's model
//! ([`crate::extract::model`]); bad values survive the reading as values of the wrong kind, and extraction
//! counts them by reason.
//!
//! What the model accepts, per the OTLP/JSON rules: lowerCamelCase keys, unknown keys ignored, trace ids in hex,
//! 64-bit integers as strings or numbers, doubles as numbers or the strings "NaN", "Infinity", "-Infinity".
//! Fields memdrift does not read (events, links, status, ...) are skipped, so the conversion is not a round
//! trip; it is a faithful reading of every field extraction looks at.

use std::fmt;

use serde::de::{self, Deserializer, IgnoredAny, Visitor};
use serde::Deserialize;

use crate::extract::model as m;

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

/// The most memory reading one JSON object can build: the largest struct of this model plus twice the largest
/// entry of extraction's model it becomes (whose arenas grow by doubling). Every struct read is a JSON object,
/// so a document with `n` objects builds at most `n` times this (strings are slices of the body or copies no
/// longer than it).
pub const MAX_BYTES_PER_OBJECT: usize = max_of(&[
    std::mem::size_of::<Span>(),
    std::mem::size_of::<NumberDataPoint>(),
    std::mem::size_of::<Attribute>(),
    std::mem::size_of::<ResourceSpans>(),
    std::mem::size_of::<ResourceMetrics>(),
    std::mem::size_of::<Metric>(),
]) + 2 * max_of(&[
    std::mem::size_of::<m::Span<'static>>(),
    std::mem::size_of::<m::NumberDataPoint>(),
    std::mem::size_of::<m::KeyValue<'static>>(),
    std::mem::size_of::<m::Metric<'static>>(),
    m::RESOURCE_ENTRY_BYTES,
]);

const fn max_of(sizes: &[usize]) -> usize {
    let mut i = 0;
    let mut max = 0;
    while i < sizes.len() {
        if sizes[i] > max {
            max = sizes[i];
        }
        i += 1;
    }
    max
}

/// An upper bound of what reading `body` builds, for the decode budget: its `{` (in strings too) times
/// [`MAX_BYTES_PER_OBJECT`].
pub fn weigh(body: &[u8]) -> usize {
    let objects = body.iter().filter(|&&b| b == b'{').count();
    objects.saturating_mul(MAX_BYTES_PER_OBJECT)
}

/// Counts the log records of an OTLP/JSON logs body without building them (each is skipped as it is read).
pub fn count_log_records(body: &[u8]) -> Result<usize, serde_json::Error> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Logs {
        #[serde(default)]
        resource_logs: Sum<ResourceLogs>,
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct ResourceLogs {
        #[serde(default)]
        scope_logs: Sum<ScopeLogs>,
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct ScopeLogs {
        #[serde(default)]
        log_records: Sum<IgnoredAny>,
    }
    trait Records {
        fn records(&self) -> usize;
    }
    impl Records for IgnoredAny {
        fn records(&self) -> usize {
            1
        }
    }
    impl Records for ResourceLogs {
        fn records(&self) -> usize {
            self.scope_logs.0
        }
    }
    impl Records for ScopeLogs {
        fn records(&self) -> usize {
            self.log_records.0
        }
    }
    /// The records of a JSON array's elements, added up as they are read; the elements are not kept.
    struct Sum<T>(usize, std::marker::PhantomData<T>);
    impl<T> Default for Sum<T> {
        fn default() -> Self {
            Sum(0, std::marker::PhantomData)
        }
    }
    impl<'de, T: Deserialize<'de> + Records> Deserialize<'de> for Sum<T> {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V<T>(std::marker::PhantomData<T>);
            impl<'de, T: Deserialize<'de> + Records> Visitor<'de> for V<T> {
                type Value = Sum<T>;
                fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                    f.write_str("an array")
                }
                fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Sum<T>, A::Error> {
                    let mut n = 0usize;
                    while let Some(item) = seq.next_element::<T>()? {
                        n = n.saturating_add(item.records());
                    }
                    Ok(Sum(n, std::marker::PhantomData))
                }
            }
            d.deserialize_seq(V(std::marker::PhantomData))
        }
    }
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(serde::de::Error::custom(
            "expected a JSON object (ExportLogsServiceRequest)",
        ));
    }
    let logs: Logs = from_slice_repairing(body)?;
    Ok(logs.resource_logs.0)
}

/// `serde_json::from_slice`, but a number out of range or a repeated key (which fail a whole document in
/// serde_json) cost only their own value: see [`super::json_repair`].
fn from_slice_repairing<T: de::DeserializeOwned>(bytes: &[u8]) -> Result<T, serde_json::Error> {
    let first = match serde_json::from_slice::<T>(bytes) {
        Ok(doc) => return Ok(doc),
        Err(e) => e,
    };
    let mut copy = bytes.to_vec();
    if !super::json_repair::repair(&mut copy) {
        return Err(first);
    }
    serde_json::from_slice(&copy).map_err(|_| first)
}

impl JsonDocument {
    pub fn parse(bytes: &[u8]) -> Result<JsonDocument, serde_json::Error> {
        // serde would also read a struct from a JSON array; an OTLP document is always an object.
        if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return Err(serde::de::Error::custom(
                "expected a JSON object (TracesData or MetricsData)",
            ));
        }
        from_slice_repairing(bytes)
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

/// An AnyValue as read. The JSON form names its kind by key, one key per object; arrays, maps and bytes are
/// unknown keys here, skipped, and leave the value empty.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct Value {
    string_value: Option<String>,
    bool_value: Option<bool>,
    #[serde(deserialize_with = "opt_i64_lenient")]
    int_value: Option<Number>,
    #[serde(deserialize_with = "opt_f64_lenient")]
    double_value: Option<Number>,
}

/// A number field as found: a value, or text that is not a number of that kind (kept to be counted).
#[derive(Debug, Clone, PartialEq)]
enum Number {
    Int(i64),
    Double(f64),
    Text(String),
    /// An array or object where a number belongs: skipped as it is read, a value of the wrong type.
    Wrong,
}

/// What a number field should hold; the visitor reads any JSON scalar into it without buffering.
#[derive(Clone, Copy)]
enum Want {
    Int,
    Double,
}

struct NumberVisitor(Want);

impl<'de> Visitor<'de> for NumberVisitor {
    type Value = Number;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a number, or a number in a string")
    }

    fn visit_i64<E: de::Error>(self, i: i64) -> Result<Number, E> {
        Ok(match self.0 {
            Want::Int => Number::Int(i),
            Want::Double => Number::Double(i as f64),
        })
    }

    fn visit_u64<E: de::Error>(self, u: u64) -> Result<Number, E> {
        Ok(match (self.0, i64::try_from(u)) {
            (Want::Int, Ok(i)) => Number::Int(i),
            _ => Number::Double(u as f64),
        })
    }

    /// JSON writers sometimes print integral int64 values as 1.0; anything fractional stays a double so that
    /// extraction rejects it as fractional.
    fn visit_f64<E: de::Error>(self, f: f64) -> Result<Number, E> {
        Ok(Number::Double(f))
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<Number, E> {
        let t = s.trim();
        let n = match self.0 {
            Want::Int => t.parse::<i64>().ok().map(Number::Int),
            Want::Double => match t {
                "NaN" => Some(Number::Double(f64::NAN)),
                "Infinity" => Some(Number::Double(f64::INFINITY)),
                "-Infinity" => Some(Number::Double(f64::NEG_INFINITY)),
                _ => t.parse::<f64>().ok().map(Number::Double),
            },
        };
        Ok(n.unwrap_or_else(|| Number::Text(s.to_string())))
    }

    /// A bool or other scalar where a number belongs: kept as text, to be counted as a string value.
    fn visit_bool<E: de::Error>(self, b: bool) -> Result<Number, E> {
        Ok(Number::Text(b.to_string()))
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Number, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Number::Wrong)
    }

    fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Number, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Number::Wrong)
    }
}

struct OptNumber(Want);

impl<'de> de::DeserializeSeed<'de> for OptNumber {
    type Value = Option<Number>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Option<Number>, D::Error> {
        struct OptVisitor(Want);
        impl<'de> Visitor<'de> for OptVisitor {
            type Value = Option<Number>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number, a number in a string, or null")
            }
            fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(None)
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(None)
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
                d.deserialize_any(NumberVisitor(self.0)).map(Some)
            }
        }
        d.deserialize_option(OptVisitor(self.0))
    }
}

fn opt_i64_lenient<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Number>, D::Error> {
    de::DeserializeSeed::deserialize(OptNumber(Want::Int), d)
}

fn opt_f64_lenient<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Number>, D::Error> {
    de::DeserializeSeed::deserialize(OptNumber(Want::Double), d)
}

/// Timestamps: a string or a number. A timestamp that is not a non-negative integer fails the document: without
/// it nothing in the document can be placed in event time reliably, and writers never produce one.
fn u64_lenient<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    match opt_i64_lenient(d)? {
        None => Ok(0),
        Some(Number::Int(i)) => {
            u64::try_from(i).map_err(|_| de::Error::custom(format!("negative timestamp {i}")))
        }
        Some(Number::Double(f)) if f >= 0.0 && f.fract() == 0.0 && f < u64::MAX as f64 => {
            Ok(f as u64)
        }
        Some(Number::Double(f)) => Err(de::Error::custom(format!(
            "timestamp {f} is not a whole number"
        ))),
        Some(Number::Text(s)) => s.parse::<u64>().map_err(|_| {
            de::Error::custom(format!("timestamp {s:?} is not a number of nanoseconds"))
        }),
        Some(Number::Wrong) => Err(de::Error::custom(
            "a timestamp is an array or object, not a number of nanoseconds",
        )),
    }
}

/// Trace and span ids are hex in OTLP/JSON. An id that is not hex is dropped (the span stays usable without it).
fn hex_id<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    struct HexVisitor;
    impl<'de> Visitor<'de> for HexVisitor {
        type Value = Vec<u8>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a hex id")
        }
        fn visit_str<E: de::Error>(self, s: &str) -> Result<Vec<u8>, E> {
            Ok(hex::decode(s).unwrap_or_default())
        }
        fn visit_unit<E: de::Error>(self) -> Result<Vec<u8>, E> {
            Ok(Vec::new())
        }
    }
    d.deserialize_any(HexVisitor)
}

impl Attribute {
    fn model(&self) -> m::KeyValue<'_> {
        m::KeyValue {
            key: self.key.as_bytes(),
            value: self.value.as_ref().map(Value::model),
        }
    }
}

fn attrs(v: &[Attribute]) -> impl Iterator<Item = m::KeyValue<'_>> {
    v.iter().map(Attribute::model)
}

impl Value {
    fn model(&self) -> m::AnyValue<'_> {
        fn number(n: &Number) -> Option<m::Value<'_>> {
            match n {
                Number::Int(i) => Some(m::Value::Int(*i)),
                Number::Double(d) => Some(m::Value::Double(*d)),
                Number::Text(s) => Some(m::Value::String(s.as_bytes())),
                Number::Wrong => None,
            }
        }
        // Arrays, maps and bytes are not read (see the model); they leave the value empty.
        let value = if let Some(s) = &self.string_value {
            Some(m::Value::String(s.as_bytes()))
        } else if let Some(n) = &self.int_value {
            number(n)
        } else if let Some(n) = &self.double_value {
            number(n)
        } else {
            self.bool_value.map(m::Value::Bool)
        };
        m::AnyValue { value }
    }
}

fn resource(r: &Option<Resource>) -> impl Iterator<Item = m::KeyValue<'_>> {
    r.iter().flat_map(|r| attrs(&r.attributes))
}

impl NumberDataPoint {
    fn model(&self) -> m::NumberDataPoint {
        let value = match (&self.as_double, &self.as_int) {
            (Some(Number::Double(d)), _) => Some(m::PointValue::AsDouble(*d)),
            (_, Some(Number::Int(i))) => Some(m::PointValue::AsInt(*i)),
            (_, Some(Number::Double(d))) => Some(m::PointValue::AsDouble(*d)),
            // Text that is no number: a point without a value, counted as wrong_type.
            _ => None,
        };
        m::NumberDataPoint::new(self.time_unix_nano, value)
    }
}

impl JsonDocument {
    /// Its spans in extraction's model, borrowing from the document.
    pub fn traces(&self) -> m::TraceRequest<'_> {
        let mut req = m::TraceRequest::default();
        for rs in &self.resource_spans {
            req.begin_resource(resource(&rs.resource));
            for s in rs.scope_spans.iter().flat_map(|ss| &ss.spans) {
                let span = m::Span::new(
                    &s.trace_id,
                    &s.span_id,
                    s.start_time_unix_nano,
                    s.end_time_unix_nano,
                );
                req.push_span(span, attrs(&s.attributes));
            }
        }
        req
    }

    /// Its metrics in extraction's model, borrowing from the document.
    pub fn metrics(&self) -> m::MetricsRequest<'_> {
        let mut req = m::MetricsRequest::default();
        for rm in &self.resource_metrics {
            req.begin_resource(resource(&rm.resource));
            for metric in rm.scope_metrics.iter().flat_map(|sm| &sm.metrics) {
                let (kind, points) = match (&metric.gauge, &metric.sum) {
                    (Some(g), _) => (Some(m::MetricKind::Gauge), &g.data_points[..]),
                    (None, Some(s)) => (Some(m::MetricKind::Sum), &s.data_points[..]),
                    (None, None) => (None, &[][..]),
                };
                req.begin_metric(metric.name.as_bytes(), kind);
                for p in points {
                    req.push_point(p.model(), attrs(&p.attributes));
                }
            }
        }
        req
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1 as pc;
    use opentelemetry_proto::tonic::trace::v1 as pt;
    use prost::Message;

    fn doc(text: &str) -> JsonDocument {
        JsonDocument::parse(text.as_bytes()).expect("parses")
    }

    fn first_value(doc: &JsonDocument) -> Option<m::Value<'_>> {
        let req = doc.traces();
        let span = req.spans()[0];
        req.attributes(&span)[0].value.and_then(|v| v.value)
    }

    fn span_with(value: &str) -> String {
        format!(
            r#"{{"resourceSpans":[{{"scopeSpans":[{{"spans":[{{"traceId":"5b8efff798038103d269b633813fc60c",
            "spanId":"eee19b7ec3c1b174","endTimeUnixNano":"1700000000000000000","attributes":[{{"key":"memspan.rss.end","value":{value}}}]}}]}}]}}]}}"#
        )
    }

    #[test]
    fn reads_int64_as_string_and_number_and_special_doubles() {
        use m::Value as V;
        assert_eq!(
            first_value(&doc(&span_with(r#"{"intValue":"1048576"}"#))),
            Some(V::Int(1048576))
        );
        assert_eq!(
            first_value(&doc(&span_with(r#"{"intValue":1048576}"#))),
            Some(V::Int(1048576))
        );
        assert_eq!(
            first_value(&doc(&span_with(r#"{"doubleValue":2048}"#))),
            Some(V::Double(2048.0))
        );
        assert!(
            matches!(first_value(&doc(&span_with(r#"{"doubleValue":"NaN"}"#))), Some(V::Double(d)) if d.is_nan())
        );
        assert_eq!(
            first_value(&doc(&span_with(r#"{"doubleValue":"-Infinity"}"#))),
            Some(V::Double(f64::NEG_INFINITY))
        );
        assert_eq!(
            first_value(&doc(&span_with(r#"{"intValue":"12MB"}"#))),
            Some(V::String(b"12MB"))
        );
        assert_eq!(
            first_value(&doc(&span_with(r#"{"arrayValue":{"values":[]}}"#))),
            None
        );
        assert_eq!(first_value(&doc(&span_with(r#"{}"#))), None);
        // An array or object where a number belongs is that value's problem alone: no value, read on.
        assert_eq!(first_value(&doc(&span_with(r#"{"intValue":[1]}"#))), None);
        assert_eq!(first_value(&doc(&span_with(r#"{"intValue":{}}"#))), None);
        assert_eq!(
            first_value(&doc(&span_with(r#"{"doubleValue":{"a":[1,{"b":2}]}}"#))),
            None
        );
        // Out of f64's range: that value is missing; a key given twice: the first wins.
        assert_eq!(
            first_value(&doc(&span_with(r#"{"doubleValue":1e400}"#))),
            None
        );
        assert_eq!(
            first_value(&doc(&span_with(r#"{"intValue":-1e999}"#))),
            None
        );
        assert_eq!(
            first_value(&doc(&span_with(r#"{"intValue":"7","intValue":"8"}"#))),
            Some(V::Int(7))
        );
    }

    #[test]
    fn a_bad_value_or_a_repeated_key_costs_only_itself() {
        let body = r#"{"resourceSpans":[{"scopeSpans":[{"spans":[
            {"endTimeUnixNano":"1700000000000000000","attributes":[{"key":"memspan.rss.end","value":{"doubleValue":1e400}}]},
            {"endTimeUnixNano":"1700000000000000000","endTimeUnixNano":"5",
             "attributes":[{"key":"memspan.rss.end","value":{"intValue":"9"}}]}]}]}]}"#;
        let doc = doc(body);
        let req = doc.traces();
        let spans = req.spans();
        assert_eq!(spans.len(), 2);
        assert_eq!(
            req.attributes(&spans[0])[0].value.and_then(|v| v.value),
            None
        );
        assert_eq!(spans[1].end_time_unix_nano, 1_700_000_000_000_000_000);
        // What is broken otherwise still fails, with serde_json's own message.
        let e = JsonDocument::parse(br#"{"resourceSpans":[1e400,"#).unwrap_err();
        assert!(e.to_string().contains("out of range"), "{e}");
    }

    #[test]
    fn reads_hex_ids_and_string_timestamps() {
        let doc = doc(&span_with(r#"{"intValue":"1"}"#));
        let req = doc.traces();
        let span = &req.spans()[0];
        assert_eq!(
            hex::encode(span.trace_id),
            "5b8efff798038103d269b633813fc60c"
        );
        assert_eq!(hex::encode(span.span_id), "eee19b7ec3c1b174");
        assert_eq!(span.end_time_unix_nano, 1_700_000_000_000_000_000);
    }

    #[test]
    fn reads_what_opentelemetry_proto_writes_as_protobuf_decoding_does() {
        use pc::any_value::Value as V;
        let kv = |k: &str, v| pc::KeyValue {
            key: k.into(),
            value: Some(pc::AnyValue { value: Some(v) }),
            ..Default::default()
        };
        let request = ExportTraceServiceRequest {
            resource_spans: vec![pt::ResourceSpans {
                resource: Some(opentelemetry_proto::tonic::resource::v1::Resource {
                    attributes: vec![kv("service.name", V::StringValue("svc".into()))],
                    ..Default::default()
                }),
                scope_spans: vec![pt::ScopeSpans {
                    spans: vec![pt::Span {
                        trace_id: vec![0xab; 16],
                        span_id: vec![1; 8],
                        name: "chat m".into(),
                        start_time_unix_nano: 1_700_000_000_000_000_000,
                        end_time_unix_nano: 1_700_000_000_005_000_000,
                        attributes: vec![
                            kv("memspan.rss.end", V::IntValue(i64::MAX)),
                            kv("memspan.rss.start", V::DoubleValue(0.5)),
                            kv("b", V::BoolValue(false)),
                            kv("s", V::StringValue("x".into())),
                        ],
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let written = serde_json::to_string(&request).expect("serializes");
        let doc = doc(&written);
        let body = request.encode_to_vec();
        let from_protobuf = m::TraceRequest::decode(&body).expect("valid");
        assert_eq!(doc.traces(), from_protobuf);
    }

    #[test]
    fn broken_json_is_an_error_not_a_panic() {
        assert!(JsonDocument::parse(b"{\"resourceSpans\":[{\"scopeSpans\":[").is_err());
        assert!(JsonDocument::parse(b"[]").is_err());
    }
}
