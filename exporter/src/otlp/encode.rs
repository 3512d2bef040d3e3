//! Anomaly events as OTLP: one log record and one span per event.
//!
//! Both are filed under the *affected* service's resource (`service.name`, and `service.instance.id` for
//! per-instance kinds), so a log backend's or Jaeger's search for that service finds them. All events of one
//! anomaly (open, updates, resolved) share a trace: the open event's span is its root, later spans are its
//! children, each running from the anomaly's onset to that event. Each log record carries its span's ids, so a
//! log line leads to the trace, and each span links to the exemplar traces, so the trace leads to the offending
//! requests. The evidence goes out as attributes under `memdrift.anomaly.`, flattened from the JSON event, so a
//! field a detector adds reaches OTLP without a change here.

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{
    any_value, AnyValue, ArrayValue, InstrumentationScope, KeyValue,
};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs, SeverityNumber};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    span, status, ResourceSpans, ScopeSpans, Span, Status,
};
use serde_json::Value;

use crate::anomaly::{id64, Anomaly, AnomalyRecord, AnomalyState, Evidence};

/// The `event.name` of anomaly log records.
pub const EVENT_NAME: &str = "memdrift.anomaly";
/// Prefix of the evidence attributes.
pub const ATTRIBUTE_PREFIX: &str = "memdrift.anomaly";
const SCOPE_NAME: &str = "memdrift";

pub(crate) fn kv(key: &str, value: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

pub(crate) fn kv_str(key: &str, value: &str) -> KeyValue {
    kv(key, any_value::Value::StringValue(value.to_string()))
}

pub(crate) fn scope() -> InstrumentationScope {
    InstrumentationScope {
        name: SCOPE_NAME.into(),
        version: env!("CARGO_PKG_VERSION").into(),
        ..Default::default()
    }
}

/// Where one event's span sits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpanIds {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub parent_span_id: Option<[u8; 8]>,
    pub onset_ns: u64,
    pub detected_ns: u64,
}

/// The ids of `a`'s span, from its episode alone: the open event's span is the trace's root, later events are
/// its children. Nothing is remembered, so a restart or a replay yields the same traces.
pub fn span_ids(a: &Anomaly) -> SpanIds {
    let e = &a.episode;
    let root = id64(&[&e.id, &e.opened_unix_nano.to_be_bytes(), b"root"]);
    let is_root = a.state == AnomalyState::Open;
    let span_id = if is_root {
        root
    } else {
        id64(&[
            &e.id,
            &a.detected_unix_nano.to_be_bytes(),
            a.state.name().as_bytes(),
        ])
    };
    SpanIds {
        trace_id: e.id,
        span_id,
        parent_span_id: (!is_root).then_some(root),
        onset_ns: e.onset_unix_nano,
        detected_ns: a.detected_unix_nano.max(e.onset_unix_nano),
    }
}

/// The evidence as attributes: the JSON event flattened under `memdrift.anomaly.`; an interval's `value` takes
/// the interval's own name (`memdrift.anomaly.sd_ratio`, `.sd_ratio.low`, `.sd_ratio.high`).
pub fn evidence_attributes(a: &Anomaly) -> Vec<KeyValue> {
    let mut out = Vec::new();
    match serde_json::to_value(AnomalyRecord::from(a)) {
        Ok(v) => flatten(ATTRIBUTE_PREFIX, &v, &mut out),
        Err(e) => tracing::warn!(error = %e, "anomaly event does not serialize"),
    }
    out
}

fn flatten(prefix: &str, v: &Value, out: &mut Vec<KeyValue>) {
    match v {
        Value::Object(map) => {
            for (k, v) in map {
                if k == "value" {
                    flatten(prefix, v, out);
                } else {
                    flatten(&format!("{prefix}.{k}"), v, out);
                }
            }
        }
        Value::Null => {}
        scalar_or_array => {
            if let Some(value) = any_value(scalar_or_array) {
                out.push(kv(prefix, value));
            }
        }
    }
}

fn any_value(v: &Value) -> Option<any_value::Value> {
    use any_value::Value as V;
    Some(match v {
        Value::Null | Value::Object(_) => return None,
        Value::Bool(b) => V::BoolValue(*b),
        Value::String(s) => V::StringValue(s.clone()),
        Value::Number(n) => match n.as_i64() {
            Some(i) => V::IntValue(i),
            None => V::DoubleValue(n.as_f64()?),
        },
        Value::Array(items) => V::ArrayValue(ArrayValue {
            values: items
                .iter()
                .filter_map(|i| any_value(i).map(|v| AnyValue { value: Some(v) }))
                .collect(),
        }),
    })
}

fn resource(a: &Anomaly) -> Resource {
    let mut attributes = vec![kv_str("service.name", &a.service)];
    if let Some(instance) = &a.instance {
        attributes.push(kv_str("service.instance.id", instance));
    }
    Resource {
        attributes,
        ..Default::default()
    }
}

/// The affected service and instance: what a resource stands for.
type Affected<'a> = (&'a str, Option<&'a str>);

/// Groups items by the affected (service, instance), in first-seen order.
fn by_resource<T>(anomalies: &[Anomaly], items: Vec<T>) -> Vec<(Resource, Vec<T>)> {
    let mut groups: Vec<(Affected<'_>, Resource, Vec<T>)> = Vec::new();
    for (a, item) in anomalies.iter().zip(items) {
        let key = (a.service.as_str(), a.instance.as_deref());
        match groups.iter_mut().find(|g| g.0 == key) {
            Some(g) => g.2.push(item),
            None => groups.push((key, resource(a), vec![item])),
        }
    }
    groups.into_iter().map(|(_, r, v)| (r, v)).collect()
}

/// Anomaly events as one logs request and one traces request.
pub fn encode(
    anomalies: &[Anomaly],
    now_ns: u64,
) -> (ExportLogsServiceRequest, ExportTraceServiceRequest) {
    let mut logs = Vec::with_capacity(anomalies.len());
    let mut spans = Vec::with_capacity(anomalies.len());
    for a in anomalies {
        let ids = span_ids(a);
        let attributes = evidence_attributes(a);
        let text = summary(a);
        logs.push(log_record(a, &ids, attributes.clone(), &text, now_ns));
        spans.push(span(a, &ids, attributes, &text));
    }
    let logs = ExportLogsServiceRequest {
        resource_logs: by_resource(anomalies, logs)
            .into_iter()
            .map(|(resource, log_records)| ResourceLogs {
                resource: Some(resource),
                scope_logs: vec![ScopeLogs {
                    scope: Some(scope()),
                    log_records,
                    ..Default::default()
                }],
                ..Default::default()
            })
            .collect(),
    };
    let traces = ExportTraceServiceRequest {
        resource_spans: by_resource(anomalies, spans)
            .into_iter()
            .map(|(resource, spans)| ResourceSpans {
                resource: Some(resource),
                scope_spans: vec![ScopeSpans {
                    scope: Some(scope()),
                    spans,
                    ..Default::default()
                }],
                ..Default::default()
            })
            .collect(),
    };
    (logs, traces)
}

fn log_record(
    a: &Anomaly,
    ids: &SpanIds,
    mut attributes: Vec<KeyValue>,
    text: &str,
    now_ns: u64,
) -> LogRecord {
    let (severity, severity_text) = match a.state {
        AnomalyState::Open | AnomalyState::Update => (SeverityNumber::Warn, "WARN"),
        AnomalyState::Resolved => (SeverityNumber::Info, "INFO"),
    };
    // The attribute is what backends read before the field existed (OTLP 1.5); both say the same.
    attributes.insert(0, kv_str("event.name", EVENT_NAME));
    LogRecord {
        time_unix_nano: ids.detected_ns,
        observed_time_unix_nano: now_ns,
        severity_number: severity as i32,
        severity_text: severity_text.into(),
        body: Some(AnyValue {
            value: Some(any_value::Value::StringValue(text.to_string())),
        }),
        attributes,
        flags: 1,
        trace_id: ids.trace_id.to_vec(),
        span_id: ids.span_id.to_vec(),
        event_name: EVENT_NAME.into(),
        ..Default::default()
    }
}

fn span(a: &Anomaly, ids: &SpanIds, attributes: Vec<KeyValue>, text: &str) -> Span {
    // Each link names the exemplar request's span. Where the sender gave no valid span id the link keeps the
    // trace with an all-zero span id: Jaeger and Tempo still open the linked trace from it.
    let links = a
        .exemplars
        .iter()
        .enumerate()
        .filter(|(_, e)| e.trace_id != [0; 16])
        .map(|(rank, e)| span::Link {
            trace_id: e.trace_id.to_vec(),
            span_id: e
                .span_id
                .filter(|s| *s != [0; 8])
                .unwrap_or([0; 8])
                .to_vec(),
            attributes: vec![kv(
                "memdrift.exemplar.rank",
                any_value::Value::IntValue(rank as i64),
            )],
            ..Default::default()
        })
        .collect();
    let status = match a.state {
        AnomalyState::Open | AnomalyState::Update => Status {
            message: text.to_string(),
            code: status::StatusCode::Error as i32,
        },
        AnomalyState::Resolved => Status::default(),
    };
    Span {
        trace_id: ids.trace_id.to_vec(),
        span_id: ids.span_id.to_vec(),
        parent_span_id: ids.parent_span_id.map(|p| p.to_vec()).unwrap_or_default(),
        flags: 1,
        name: format!("anomaly {}", a.kind().name()),
        kind: span::SpanKind::Internal as i32,
        start_time_unix_nano: ids.onset_ns,
        end_time_unix_nano: ids.detected_ns,
        attributes,
        links,
        status: Some(status),
        ..Default::default()
    }
}

/// What a person reads in a log line or a span's status, e.g.
/// "canary 1.5.0 of checkout-llm: RSS spread 2.6x baseline (p=3e-6) over 60 s".
pub fn summary(a: &Anomaly) -> String {
    let what = signal_label(&a.signal);
    let who = match (&a.instance, a.cohorts()) {
        (Some(i), _) => format!("{i} of {}", a.service),
        (None, Some(c)) => format!("canary {} of {}", c.canary, a.service),
        (None, None) => a.service.clone(),
    };
    let mut s = String::new();
    if a.state == AnomalyState::Resolved {
        s.push_str("resolved: ");
    }
    s.push_str(&who);
    s.push_str(": ");
    let mut p = None;
    match &a.evidence {
        Evidence::Spread {
            sd_ratio,
            cohorts,
            p_value,
            ..
        } => {
            s.push_str(&format!(
                "{what} spread {:.1}x baseline {}",
                sd_ratio.value, cohorts.baseline
            ));
            p = Some(*p_value);
        }
        Evidence::SpreadChange { cohorts, .. } => {
            s.push_str(&format!(
                "{what} spread changed vs baseline {}",
                cohorts.baseline
            ));
        }
        Evidence::Growth {
            growth_bytes_per_s,
            limit_bytes,
            limit_source,
            time_to_limit_s,
            ..
        } => {
            s.push_str(&format!("{what} grows {}/s", bytes(*growth_bytes_per_s)));
            if let Some(t) = time_to_limit_s {
                let limit = limit_bytes.map(|l| match limit_source {
                    Some(source) if *source != "container" => format!(" {} {source}", bytes(l)),
                    _ => format!(" {}", bytes(l)),
                });
                s.push_str(&format!(
                    ", reaches the{} limit in {} (at the earliest {})",
                    limit.unwrap_or_default(),
                    seconds(t.value),
                    seconds(t.low)
                ));
            }
        }
        Evidence::Leak {
            classification,
            growth_bytes_per_s,
            p_value,
            ..
        } => {
            s.push_str(&format!(
                "{} leak, {what} floor rising {}/s",
                classification.name(),
                bytes(*growth_bytes_per_s)
            ));
            p = Some(*p_value);
        }
        Evidence::GcGoal {
            goal_bytes,
            limit_bytes,
            limit_source,
            ..
        } => {
            s.push_str(&format!(
                "next GC due at {} heap, above the {} {} limit: the heap can pass the limit before the collector runs",
                bytes(*goal_bytes),
                bytes(*limit_bytes),
                limit_source
            ));
        }
    }
    if let Some(p) = p {
        s.push_str(&format!(" (p={})", p_value(p)));
    }
    if let Some(ns) = a.window.and_then(|(start, end)| end.checked_sub(start)) {
        s.push_str(&format!(" over {}", seconds(ns as f64 / 1e9)));
    }
    s
}

fn signal_label(signal: &str) -> &str {
    match signal {
        "memspan.rss.end" | "process.memory.usage" => "RSS",
        "memspan.rss.start" => "RSS at request start",
        "memspan.rss.delta" => "per-request RSS growth",
        "memspan.heap.allocated" => "heap",
        "memspan.heap.resident" => "allocator resident memory",
        "memspan.heap.retained" => "allocator retained memory",
        "memspan.request.allocated" => "per-request allocation",
        "memspan.request.freed" => "per-request frees",
        "memspan.gpu.used" => "GPU memory",
        "container.memory.working_set" => "working set",
        "container.memory.usage" => "container memory",
        other => other,
    }
}

fn p_value(p: f64) -> String {
    if p > 0.0 && p < 0.001 {
        format!("{p:.0e}")
    } else {
        format!("{p:.3}")
    }
}

fn bytes(b: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b;
    let mut unit = 0;
    while v.abs() >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{v:.0} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

fn seconds(s: f64) -> String {
    if !s.is_finite() {
        "never".into()
    } else if s < 120.0 {
        format!("{s:.0} s")
    } else if s < 7200.0 {
        format!("{:.0} min", s / 60.0)
    } else {
        format!("{:.1} h", s / 3600.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::anomaly::{AnomalyKind, Cohorts, Episode, Exemplar, Identity, Interval};

    const T0: u64 = 1_700_000_000_000_000_000;

    fn spread(state: AnomalyState, at: u64) -> Anomaly {
        let cohorts = Cohorts {
            baseline: "1.4.2".into(),
            canary: "1.5.0".into(),
            baseline_samples: 600,
            canary_samples: 60,
        };
        let identity = Identity {
            kind: AnomalyKind::SpreadDrift,
            service: "checkout-llm",
            instance: None,
            signal: "memspan.rss.end",
            cohort: Some("1.5.0"),
        };
        let exemplar = |trace_id, span_id| Exemplar { trace_id, span_id };
        Anomaly {
            state,
            // Every event of the finding carries the episode of its opening at T0.
            episode: Episode::new(identity, T0 - 60_000_000_000, T0),
            service: "checkout-llm".into(),
            instance: None,
            signal: "memspan.rss.end".into(),
            detected_unix_nano: at,
            window: Some((at - 60_000_000_000, at)),
            method: "brown_forsythe+msprt",
            evidence: Evidence::Spread {
                statistic: 21.5,
                p_value: 3e-6,
                window_p_value: 1e-4,
                autocorrelation: None,
                sd_ratio: Interval {
                    value: 2.6,
                    low: 1.9,
                    high: 3.4,
                },
                mad_ratio: None,
                cohorts,
            },
            exemplars: vec![
                // The first exemplar's span is known, the last one's is not.
                exemplar(
                    [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16],
                    Some([0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18]),
                ),
                exemplar([0; 16], None),
                exemplar(
                    [
                        0xa1, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6, 0xa7, 0xa8, 0xa9, 0xaa, 0xab, 0xac,
                        0xad, 0xae, 0xaf, 0xb0,
                    ],
                    None,
                ),
            ],
        }
    }

    fn attr<'a>(kvs: &'a [KeyValue], key: &str) -> Option<&'a any_value::Value> {
        kvs.iter()
            .find(|k| k.key == key)
            .and_then(|k| k.value.as_ref())
            .and_then(|v| v.value.as_ref())
    }

    #[test]
    fn the_body_reads_as_a_sentence() {
        let a = spread(AnomalyState::Open, T0);
        assert_eq!(
            summary(&a),
            "canary 1.5.0 of checkout-llm: RSS spread 2.6x baseline 1.4.2 (p=3e-6) over 60 s"
        );
        let mut g = Anomaly::new(
            AnomalyState::Resolved,
            "checkout-llm",
            "memspan.rss.end",
            T0,
            "theil_sen_envelope",
            Evidence::Growth {
                envelope_bytes: 1e9,
                growth_bytes_per_s: 1.5 * 1024.0 * 1024.0,
                limit_bytes: Some(2.0 * 1024.0 * 1024.0 * 1024.0),
                limit_source: Some("container"),
                time_to_limit_s: Some(Interval {
                    value: 840.0,
                    low: 600.0,
                    high: 1200.0,
                }),
            },
        );
        g.instance = Some("pod-7".into());
        assert_eq!(
            summary(&g),
            "resolved: pod-7 of checkout-llm: RSS grows 1.5 MiB/s, reaches the 2.0 GiB limit in 14 min (at the earliest 10 min)"
        );
    }

    #[test]
    fn log_and_span_carry_event_name_evidence_and_links() {
        let a = spread(AnomalyState::Open, T0);
        let (logs, traces) = encode(std::slice::from_ref(&a), T0 + 5);
        let rl = &logs.resource_logs[0];
        let res = &rl.resource.as_ref().expect("resource").attributes;
        assert_eq!(
            attr(res, "service.name"),
            Some(&any_value::Value::StringValue("checkout-llm".into()))
        );
        let log = &rl.scope_logs[0].log_records[0];
        assert_eq!(log.event_name, EVENT_NAME);
        assert_eq!(
            attr(&log.attributes, "event.name"),
            Some(&any_value::Value::StringValue(EVENT_NAME.into()))
        );
        assert_eq!(log.severity_number, SeverityNumber::Warn as i32);
        assert_eq!(log.time_unix_nano, T0);
        assert_eq!(log.observed_time_unix_nano, T0 + 5);
        for (key, want) in [
            (
                "memdrift.anomaly.kind",
                any_value::Value::StringValue("spread_drift".into()),
            ),
            (
                "memdrift.anomaly.p_value",
                any_value::Value::DoubleValue(3e-6),
            ),
            (
                "memdrift.anomaly.sd_ratio",
                any_value::Value::DoubleValue(2.6),
            ),
            (
                "memdrift.anomaly.sd_ratio.low",
                any_value::Value::DoubleValue(1.9),
            ),
            (
                "memdrift.anomaly.cohorts.canary",
                any_value::Value::StringValue("1.5.0".into()),
            ),
            (
                "memdrift.anomaly.cohorts.baseline_samples",
                any_value::Value::IntValue(600),
            ),
        ] {
            assert_eq!(attr(&log.attributes, key), Some(&want), "{key}");
        }
        let span = &traces.resource_spans[0].scope_spans[0].spans[0];
        assert_eq!(span.trace_id, log.trace_id);
        assert_eq!(span.span_id, log.span_id);
        assert!(span.parent_span_id.is_empty());
        assert_eq!(span.start_time_unix_nano, T0 - 60_000_000_000);
        assert_eq!(span.end_time_unix_nano, T0);
        let linked: Vec<String> = span
            .links
            .iter()
            .map(|l| hex::encode(&l.trace_id))
            .collect();
        // The all-zero id is left out.
        assert_eq!(
            linked,
            [
                "0102030405060708090a0b0c0d0e0f10",
                "a1a2a3a4a5a6a7a8a9aaabacadaeafb0"
            ]
        );
        // A known span id names the span; an unknown one leaves the trace with an all-zero span id.
        let spans: Vec<String> = span.links.iter().map(|l| hex::encode(&l.span_id)).collect();
        assert_eq!(spans, ["1112131415161718", "0000000000000000"]);
        assert_eq!(
            span.status.as_ref().map(|s| s.code),
            Some(status::StatusCode::Error as i32)
        );
    }

    #[test]
    fn events_of_one_anomaly_share_a_trace() {
        let open = span_ids(&spread(AnomalyState::Open, T0));
        let update = span_ids(&spread(AnomalyState::Update, T0 + 10_000_000_000));
        let resolved = span_ids(&spread(AnomalyState::Resolved, T0 + 70_000_000_000));
        assert_eq!(update.trace_id, open.trace_id);
        assert_eq!(resolved.trace_id, open.trace_id);
        assert_eq!(update.parent_span_id, Some(open.span_id));
        assert_eq!(resolved.onset_ns, open.onset_ns);
        assert_eq!(resolved.detected_ns, T0 + 70_000_000_000);
        assert_ne!(update.span_id, resolved.span_id);
        // The same events give the same ids: replays and restarts produce the same traces.
        assert_eq!(span_ids(&spread(AnomalyState::Open, T0)), open);
        // Another service's anomaly is another trace.
        let mut other = spread(AnomalyState::Open, T0);
        other.service = "search".into();
        other.episode = Episode::new(
            Identity {
                service: "search",
                ..other.identity()
            },
            T0 - 60_000_000_000,
            T0,
        );
        assert_ne!(span_ids(&other).trace_id, open.trace_id);
    }

    #[test]
    fn resources_group_by_affected_service_and_instance() {
        let mut b = spread(AnomalyState::Open, T0);
        b.instance = Some("pod-2".into());
        let events = [spread(AnomalyState::Open, T0), b.clone(), b];
        let (logs, traces) = encode(&events, T0);
        assert_eq!(logs.resource_logs.len(), 2);
        assert_eq!(logs.resource_logs[1].scope_logs[0].log_records.len(), 2);
        let res = &traces.resource_spans[1]
            .resource
            .as_ref()
            .expect("resource")
            .attributes;
        assert_eq!(
            attr(res, "service.instance.id"),
            Some(&any_value::Value::StringValue("pod-2".into()))
        );
    }
}
