use super::*;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1 as pc;
use opentelemetry_proto::tonic::trace::v1 as pt;
use prost::Message;

fn doc(text: &str) -> JsonDocument<'_> {
    JsonDocument::parse(text.as_bytes()).expect("parses")
}

fn first_value<'d>(doc: &'d JsonDocument<'_>) -> Option<m::Value<'d>> {
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
    // What is broken otherwise still fails, saying what was expected and where.
    let e = JsonDocument::parse(br#"{"resourceSpans":[1e400,"#).unwrap_err();
    assert_eq!(
        e.to_string(),
        "expected an object (resourceSpans) at byte 18"
    );
}

#[test]
fn reads_hex_ids_and_string_timestamps() {
    let text = span_with(r#"{"intValue":"1"}"#);
    let doc = doc(&text);
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
    let e = JsonDocument::parse(b"{\"resourceSpans\":[{\"scopeSpans\":[").unwrap_err();
    assert_eq!(
        e.to_string(),
        "unexpected EOF: expected an object (scopeSpans) at byte 33"
    );
    let e = JsonDocument::parse(b"{\"resourceSpans\":[{\"sco").unwrap_err();
    assert_eq!(
        e.to_string(),
        "unexpected EOF: a string not closed at byte 23"
    );
    assert!(JsonDocument::parse(b"[]").is_err());
}

mod against_protobuf {
    //! Random requests written as JSON by opentelemetry-proto's serde support (compact, pretty, and with every
    //! object's keys in another order) read as protobuf decoding reads the same requests.
    use super::*;
    use crate::extract::model::random_requests::{self, Shape};
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    /// Text with every kind of escape JSON writers make.
    fn text(rng: &mut StdRng) -> String {
        let pieces = [
            "memspan.rss.end",
            "v",
            "\"",
            "\\",
            "é",
            "😀",
            "\u{1}",
            "\n",
            "/",
            " ",
        ];
        (0..rng.random_range(0..6))
            .map(|_| pieces[rng.random_range(0..pieces.len())])
            .collect()
    }

    /// The generated attributes, with escapes in some keys and in every string value.
    fn attribute(rng: &mut StdRng) -> pc::KeyValue {
        let mut kv = random_requests::attribute(rng);
        if rng.random_bool(0.2) {
            kv.key = text(rng);
        }
        if let Some(pc::AnyValue {
            value: Some(pc::any_value::Value::StringValue(s)),
        }) = &mut kv.value
        {
            *s = text(rng);
        }
        kv
    }

    const SHAPE: Shape = Shape {
        attribute,
        // Only ids of the right length are read from JSON (extraction uses no other).
        trace_id_len: |rng| 16 * rng.random_range(0..2),
    };

    /// The request written three ways.
    fn written<T: serde::Serialize>(request: &T) -> [String; 3] {
        let compact = serde_json::to_string(request).expect("serializes");
        // serde_json's map sorts keys: every object's members come in another order.
        let value: serde_json::Value = serde_json::from_str(&compact).expect("parses");
        [
            serde_json::to_string_pretty(request).expect("serializes"),
            value.to_string(),
            compact,
        ]
    }

    #[test]
    fn traces() {
        let mut rng = StdRng::seed_from_u64(21);
        for _ in 0..300 {
            let request = random_requests::trace_request(&mut rng, SHAPE);
            let body = request.encode_to_vec();
            let want = m::TraceRequest::decode(&body).expect("valid");
            for json in written(&request) {
                let doc = JsonDocument::parse(json.as_bytes()).expect("reads");
                assert_eq!(doc.traces(), want, "{json}");
                assert!(doc.metrics().resource_metrics().next().is_none());
            }
        }
    }

    #[test]
    fn metrics() {
        let mut rng = StdRng::seed_from_u64(22);
        for _ in 0..300 {
            let request = random_requests::metrics_request(&mut rng, SHAPE);
            let body = request.encode_to_vec();
            let want = m::MetricsRequest::decode(&body).expect("valid");
            for json in written(&request) {
                let doc = JsonDocument::parse(json.as_bytes()).expect("reads");
                assert_eq!(doc.metrics(), want, "{json}");
            }
        }
    }
}

/// Attributes the reader's filter does not keep are skipped, their values unread (even when broken beyond
/// reading as a value, so long as they are JSON).
#[test]
fn keeps_only_the_attributes_asked_for() {
    struct OnlyRss;
    impl m::KeepKeys for OnlyRss {
        fn resource(&self, key: &[u8]) -> bool {
            key == b"service.name"
        }
        fn item(&self, key: &[u8]) -> bool {
            key == b"memspan.rss.end"
        }
    }
    let body = r#"{"resourceSpans":[{"resource":{"attributes":[
        {"key":"service.name","value":{"stringValue":"svc"}},{"key":"host","value":{"stringValue":"h"}}]},
        "scopeSpans":[{"spans":[{"attributes":[
          {"key":"other","value":{"intValue":{"deep":[1,2,{"x":null}]}}},
          {"value":{"intValue":"5"},"key":"memspan.rss.end"},
          {"key":"memspan.rss.end","value":{"intValue":"6"}}]}]}]}]}"#;
    let doc = JsonDocument::parse_keeping(body.as_bytes(), &OnlyRss).expect("reads");
    let req = doc.traces();
    let (resource, spans) = req.resource_spans().next().expect("one");
    assert_eq!(
        resource,
        [m::KeyValue::new("service.name", m::Value::String(b"svc"))]
    );
    let kept: Vec<_> = req.attributes(&spans[0]).to_vec();
    assert_eq!(
        kept,
        [
            m::KeyValue::new("memspan.rss.end", m::Value::Int(5)),
            m::KeyValue::new("memspan.rss.end", m::Value::Int(6)),
        ]
    );
}

/// `null` is any field's default; a value of the wrong JSON type where a scalar belongs costs that value; an
/// OTLP message of the wrong type fails the document, saying where.
#[test]
fn null_is_the_default_and_a_wrong_type_costs_what_it_must() {
    let body = r#"{"resourceSpans":[{"resource":null,"scopeSpans":[{"spans":[
        {"traceId":null,"spanId":7,"startTimeUnixNano":null,"endTimeUnixNano":"9","attributes":null},
        {"endTimeUnixNano":"9","attributes":[{"key":5,"value":{"stringValue":5}},
          {"key":"b","value":{"boolValue":"yes"}},{"key":"c","value":null},{"key":"d","value":{"stringValue":null,"intValue":3}}]}
      ]}]}],"resourceMetrics":null,"resourceLogs":[{"x":[]}]}"#;
    let doc = doc(body);
    let req = doc.traces();
    let spans = req.spans();
    assert_eq!(spans.len(), 2);
    assert_eq!((spans[0].trace_id, spans[0].span_id), (&[][..], &[][..]));
    assert_eq!(
        (spans[0].start_time_unix_nano, spans[0].end_time_unix_nano),
        (0, 9)
    );
    let values: Vec<_> = req
        .attributes(&spans[1])
        .iter()
        .map(|kv| (kv.key, kv.value.map(|v| v.value)))
        .collect();
    assert_eq!(
        values,
        [
            (&b""[..], Some(None)),
            (&b"b"[..], Some(None)),
            (&b"c"[..], None),
            (&b"d"[..], Some(Some(m::Value::Int(3)))),
        ]
    );
    for (broken, at) in [
        (
            r#"{"resourceSpans":{}}"#,
            "expected an array (resourceSpans) at byte 17",
        ),
        (
            r#"{"resourceSpans":[{"scopeSpans":[{"spans":[3]}]}]}"#,
            "expected an object (spans) at byte 43",
        ),
        (
            r#"{"resourceSpans":[{"scopeSpans":[{"spans":[{"endTimeUnixNano":-1}]}]}]}"#,
            "a negative timestamp (endTimeUnixNano) at byte 62",
        ),
        (
            r#"{"resourceSpans":[]} {}"#,
            "trailing characters after the document at byte 21",
        ),
        (
            "{\"resourceSpans\":[],\"x\":\"\u{1}\"}",
            "a control character unescaped in a string at byte 25",
        ),
    ] {
        let e = JsonDocument::parse(broken.as_bytes()).expect_err(broken);
        assert_eq!(e.to_string(), at, "{broken}");
    }
    assert!(
        JsonDocument::parse(b"{\"a\":\"\xff\"}").is_err(),
        "not UTF-8"
    );
}

#[test]
fn counts_log_records_without_reading_them() {
    let body = r#"{"resourceLogs":[{"scopeLogs":[{"logRecords":[{"body":{"stringValue":"a"}},{}]},{"logRecords":null}]},
        {"scopeLogs":[{"logRecords":[{"x":[1,{"y":2}]}],"logRecords":[{},{},{}]}]}],"resourceLogs":[{}]}"#;
    assert_eq!(count_log_records(body.as_bytes(), &mut unbounded), Ok(3));
    assert!(count_log_records(b"[]", &mut unbounded).is_err());
    assert!(count_log_records(br#"{"resourceLogs":[{"scopeLogs":3}]}"#, &mut unbounded).is_err());
}

/// What reading and converting build is charged to the budget before it is allocated, escapes included, and a
/// refusal stops the reading.
#[test]
fn the_budget_is_asked_for_everything_built() {
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(5);
    for escaped in [false, true] {
        let value = if escaped { r#"a\"b\u00e9"# } else { "ab" };
        let n = rand::Rng::random_range(&mut rng, 1..200);
        let spans: Vec<String> = (0..n)
            .map(|i| {
                format!(
                    r#"{{"traceId":"5b8efff798038103d269b633813fc60c","endTimeUnixNano":"{i}","attributes":[{{"key":"k{value}","value":{{"stringValue":"{value}"}}}}]}}"#
                )
            })
            .collect();
        let body = format!(
            r#"{{"resourceSpans":[{{"scopeSpans":[{{"spans":[{}]}}]}}]}}"#,
            spans.join(",")
        );
        let mut charged = 0;
        let doc = JsonDocument::parse_within(body.as_bytes(), &AllKeys, &mut |b| {
            charged += b;
            true
        })
        .expect("reads");
        let req = doc.traces();
        let built = doc.scratch.capacity()
            + doc.spans.capacity() * std::mem::size_of::<Span>()
            + doc.attributes.capacity() * std::mem::size_of::<Attribute<'_>>()
            + doc.span_resources.capacity() * std::mem::size_of::<Resource>()
            + req.heap_bytes();
        assert!(built <= charged, "{built} > {charged}");
        assert_eq!(doc.scratch.capacity() > 0, escaped);
        assert_eq!(req.spans().len(), n);
        // Refused at any point: over the budget, never a partial document.
        for allowed in [0, 1, 3] {
            let mut asked = 0;
            let refused = JsonDocument::parse_within(body.as_bytes(), &AllKeys, &mut |_| {
                asked += 1;
                asked <= allowed
            });
            assert_eq!(refused.unwrap_err(), ReadError::OverBudget);
        }
    }
}

#[test]
fn ids_are_hex_of_the_right_length() {
    assert_eq!(hex_id::<4>(b"00ff7fAb"), Some([0, 0xff, 0x7f, 0xab]));
    for bad in [
        &b"00ff7fA"[..],
        b"00ff7fAbc",
        b"00ff7fAg",
        b"00ff 7fA",
        b"\xff0000000",
    ] {
        assert_eq!(hex_id::<4>(bad), None, "{bad:?}");
    }
}

#[test]
fn plain_ints_read_as_the_general_parser_reads_them() {
    for t in [
        "0",
        "-0",
        "123456789012345678",
        "-123456789012345678",
        "1234567890123456789",
        "9223372036854775807",
        "9223372036854775808",
        "-9223372036854775808",
        "-9223372036854775809",
        "9999999999999999999",
        "12345678901234567890",
        "",
        "-",
        "+5",
        " 5",
        "5x",
        "00",
    ] {
        let general = t.trim().parse::<i64>().ok();
        if let Some(i) = plain_int(t.as_bytes()) {
            assert_eq!(Some(i), general, "{t:?}");
        }
    }
    assert_eq!(plain_int(b"-42"), Some(-42));
    assert_eq!(plain_int(b"-9223372036854775808"), Some(i64::MIN));
    assert_eq!(plain_int(b"9223372036854775808"), None);
    assert_eq!(
        plain_int(b"12345678901234567890"),
        None,
        "20 digits: the general parser"
    );
}

/// Documents broken at random (bytes replaced, dropped, repeated) never panic the reader, and what a document
/// read holds was charged first.
#[test]
fn mutated_documents_never_panic_and_are_charged_what_they_hold() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(31);
    let seed = format!(
        r#"{{"resourceSpans":[{{"resource":{{"attributes":[{{"key":"service.name","value":{{"stringValue":"s\"v\u00e9c"}}}}]}},"scopeSpans":[{{"spans":[{}]}}]}}],
        "resourceMetrics":[{{"scopeMetrics":[{{"metrics":[{{"name":"process.memory.usage","gauge":{{"dataPoints":[{{"timeUnixNano":"5","asInt":"7","attributes":[{{"key":"k","value":{{"doubleValue":"NaN"}}}}]}}]}}}}]}}]}}]}}"#,
        span_with(r#"{"intValue":"1048576"}"#)
    );
    let alphabet = b"{}[]\",:\\ 0123456789.eE-+tfnulraxyzu";
    let (mut read, mut broken) = (0, 0);
    for _ in 0..20_000 {
        let mut body = seed.as_bytes().to_vec();
        for _ in 0..rng.random_range(1..4) {
            let i = rng.random_range(0..body.len());
            match rng.random_range(0..3) {
                0 => body[i] = alphabet[rng.random_range(0..alphabet.len())],
                1 => {
                    body.remove(i);
                }
                _ => {
                    let j = (i + rng.random_range(1..40)).min(body.len());
                    let piece = body[i..j].to_vec();
                    body.splice(i..i, piece);
                }
            }
        }
        let _ = count_log_records(&body, &mut unbounded);
        let mut charged = 0;
        match JsonDocument::parse_within(&body, &AllKeys, &mut |b| {
            charged += b;
            true
        }) {
            Ok(doc) => {
                read += 1;
                let built = doc.scratch.capacity()
                    + doc.spans.capacity() * std::mem::size_of::<Span>()
                    + doc.points.capacity() * std::mem::size_of::<Point>()
                    + doc.metrics.capacity() * std::mem::size_of::<Metric<'_>>()
                    + doc.attributes.capacity() * std::mem::size_of::<Attribute<'_>>()
                    + (doc.span_resources.capacity() + doc.metric_resources.capacity())
                        * std::mem::size_of::<Resource>()
                    + doc.traces().heap_bytes()
                    + doc.metrics().heap_bytes();
                assert!(
                    built <= charged,
                    "{built} > {charged}: {}",
                    String::from_utf8_lossy(&body)
                );
            }
            Err(ReadError::Malformed(_)) => broken += 1,
            Err(ReadError::OverBudget) => panic!("an unbounded budget refused"),
        }
    }
    // Both kinds were exercised.
    assert!(read > 1000 && broken > 1000, "{read} read, {broken} broken");
}
