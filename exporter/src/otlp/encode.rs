//! Anomaly events as OTLP: one log record and one span per event.
//!
//! Both are filed under the *affected* service's resource (`service.name`, and `service.instance.id` for
//! per-instance kinds), so a log backend's or Jaeger's search for that service finds them. All events of one
//! anomaly (open, updates, resolved) share a trace: the open event's span is its root, later spans are its
//! children, each running from the anomaly's onset to that event. Each log record carries its span's ids, so a
//! log line leads to the trace, and each span links to the exemplar traces, so the trace leads to the offending
//! requests. The evidence goes out as attributes under `memdrift.anomaly.`, flattened from the JSON event, so a
//! field a detector adds reaches OTLP without a change here.

use std::collections::HashMap;

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

use crate::anomaly::{parse_rfc3339, Anomaly, AnomalyState};

/// The `event.name` of anomaly log records.
pub const EVENT_NAME: &str = "memdrift.anomaly";
/// Prefix of the evidence attributes.
pub const ATTRIBUTE_PREFIX: &str = "memdrift.anomaly";
/// Open anomalies remembered for their trace; beyond this the oldest is forgotten (its later events start a
/// new trace), so a detector that never resolves cannot grow this without bound.
const MAX_OPEN_EPISODES: usize = 10_000;
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

/// The anomaly's identity across its events: kind, service, instance, signal and canary cohort.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct EpisodeKey(String);

impl EpisodeKey {
    fn of(a: &Anomaly) -> EpisodeKey {
        let canary = a.cohorts.as_ref().map_or("", |c| c.canary.as_str());
        EpisodeKey(format!(
            "{}\u{1f}{}\u{1f}{}\u{1f}{}\u{1f}{}",
            a.kind.name(),
            a.service,
            a.instance.as_deref().unwrap_or(""),
            a.signal,
            canary
        ))
    }
}

#[derive(Clone, Copy, Debug)]
struct Episode {
    trace_id: [u8; 16],
    root_span_id: [u8; 8],
    onset_ns: u64,
}

/// Open anomalies and their traces, so later events join the open event's trace.
#[derive(Debug, Default)]
pub struct Episodes {
    open: HashMap<EpisodeKey, Episode>,
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

impl Episodes {
    pub fn len(&self) -> usize {
        self.open.len()
    }

    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }

    /// The ids of `a`'s span; remembers an open anomaly and forgets a resolved one. Ids are hashes of the
    /// anomaly's identity and times, so a replay of the same events yields the same traces.
    pub fn place(&mut self, a: &Anomaly, now_ns: u64) -> SpanIds {
        let key = EpisodeKey::of(a);
        let detected_ns = parse_rfc3339(&a.detected_at).unwrap_or(now_ns);
        let known = match a.state {
            AnomalyState::Resolved => self.open.remove(&key),
            AnomalyState::Update => self.open.get(&key).copied(),
            AnomalyState::Open => None,
        };
        let episode = known.unwrap_or_else(|| {
            let onset_ns = a
                .window_start
                .as_deref()
                .and_then(parse_rfc3339)
                .unwrap_or(detected_ns)
                .min(detected_ns);
            let onset = onset_ns.to_be_bytes();
            let trace_id = id128(&[key.0.as_bytes(), &onset]);
            Episode {
                trace_id,
                root_span_id: id64(&[&trace_id, &detected_ns.to_be_bytes(), b"root"]),
                onset_ns,
            }
        });
        let is_root = known.is_none();
        if is_root && a.state != AnomalyState::Resolved {
            if self.open.len() >= MAX_OPEN_EPISODES {
                if let Some(oldest) = self
                    .open
                    .iter()
                    .min_by_key(|(_, e)| e.onset_ns)
                    .map(|(k, _)| k.clone())
                {
                    self.open.remove(&oldest);
                }
            }
            self.open.insert(key, episode);
        }
        let span_id = if is_root {
            episode.root_span_id
        } else {
            id64(&[
                &episode.trace_id,
                &detected_ns.to_be_bytes(),
                state_name(a.state).as_bytes(),
            ])
        };
        SpanIds {
            trace_id: episode.trace_id,
            span_id,
            parent_span_id: (!is_root).then_some(episode.root_span_id),
            onset_ns: episode.onset_ns,
            detected_ns: detected_ns.max(episode.onset_ns),
        }
    }
}

fn state_name(s: AnomalyState) -> &'static str {
    match s {
        AnomalyState::Open => "open",
        AnomalyState::Update => "update",
        AnomalyState::Resolved => "resolved",
    }
}

/// FNV-1a over the parts, from a given offset basis.
fn fnv1a(basis: u64, parts: &[&[u8]]) -> u64 {
    let mut h = basis;
    for part in parts {
        for b in part.iter().chain(std::iter::once(&0xffu8)) {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

fn id128(parts: &[&[u8]]) -> [u8; 16] {
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&fnv1a(0xcbf2_9ce4_8422_2325, parts).to_be_bytes());
    id[8..].copy_from_slice(&fnv1a(0x6c62_272e_07bb_0142, parts).to_be_bytes());
    if id == [0; 16] {
        id[15] = 1;
    }
    id
}

fn id64(parts: &[&[u8]]) -> [u8; 8] {
    let id = fnv1a(0x84222325_cbf29ce4, parts).max(1);
    id.to_be_bytes()
}

/// The evidence as attributes: the JSON event flattened under `memdrift.anomaly.`; an interval's `value` takes
/// the interval's own name (`memdrift.anomaly.sd_ratio`, `.sd_ratio.low`, `.sd_ratio.high`).
pub fn evidence_attributes(a: &Anomaly) -> Vec<KeyValue> {
    let mut out = Vec::new();
    match serde_json::to_value(a) {
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
    episodes: &mut Episodes,
    now_ns: u64,
) -> (ExportLogsServiceRequest, ExportTraceServiceRequest) {
    let mut logs = Vec::with_capacity(anomalies.len());
    let mut spans = Vec::with_capacity(anomalies.len());
    for a in anomalies {
        let ids = episodes.place(a, now_ns);
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
        .exemplar_trace_ids
        .iter()
        .enumerate()
        .filter_map(|(rank, hex_id)| {
            let id = hex::decode(hex_id)
                .ok()
                .filter(|b| b.len() == 16 && b.iter().any(|x| *x != 0))?;
            let span_id = a
                .exemplar_span_ids
                .get(rank)
                .and_then(|s| hex::decode(s).ok())
                .filter(|b| b.len() == 8 && b.iter().any(|x| *x != 0))
                .unwrap_or_else(|| vec![0; 8]);
            Some(span::Link {
                trace_id: id,
                span_id,
                attributes: vec![kv(
                    "memdrift.exemplar.rank",
                    any_value::Value::IntValue(rank as i64),
                )],
                ..Default::default()
            })
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
        name: format!("anomaly {}", a.kind.name()),
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
    use crate::anomaly::AnomalyKind;
    let what = signal_label(&a.signal);
    let who = match (&a.instance, &a.cohorts) {
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
    match a.kind {
        AnomalyKind::SpreadDrift => {
            s.push_str(&format!("{what} spread"));
            if let Some(r) = a.sd_ratio {
                s.push_str(&format!(" {:.1}x", r.value));
            } else {
                s.push_str(" changed vs");
            }
            match &a.cohorts {
                Some(c) => s.push_str(&format!(" baseline {}", c.baseline)),
                None => s.push_str(" baseline"),
            }
        }
        AnomalyKind::Growth => {
            s.push_str(&format!("{what} grows"));
            if let Some(rate) = a.growth_bytes_per_s {
                s.push_str(&format!(" {}/s", bytes(rate)));
            }
            if let Some(t) = a.time_to_limit_s {
                let limit = a.limit_bytes.map(|l| format!(" {}", bytes(l)));
                s.push_str(&format!(
                    ", reaches the{} limit in {} (at the earliest {})",
                    limit.unwrap_or_default(),
                    seconds(t.value),
                    seconds(t.low)
                ));
            }
        }
        AnomalyKind::Leak => {
            let class = a.classification.as_deref().unwrap_or("memory");
            s.push_str(&format!("{class} leak, {what} floor rising"));
            if let Some(rate) = a.growth_bytes_per_s {
                s.push_str(&format!(" {}/s", bytes(rate)));
            }
        }
    }
    if let Some(p) = a.p_value {
        s.push_str(&format!(" (p={})", p_value(p)));
    }
    let window = a
        .window_start
        .as_deref()
        .and_then(parse_rfc3339)
        .zip(a.window_end.as_deref().and_then(parse_rfc3339))
        .and_then(|(start, end)| end.checked_sub(start));
    if let Some(ns) = window {
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
    use crate::anomaly::{Cohorts, Interval};
    use crate::AnomalyKind;

    const T0: u64 = 1_700_000_000_000_000_000;

    fn spread(state: AnomalyState, at: u64) -> Anomaly {
        let mut a = Anomaly::new(
            AnomalyKind::SpreadDrift,
            state,
            "checkout-llm",
            "memspan.rss.end",
            at,
        );
        a.window_start = Some(crate::anomaly::rfc3339(at - 60_000_000_000));
        a.window_end = Some(crate::anomaly::rfc3339(at));
        a.p_value = Some(3e-6);
        a.statistic = Some(21.5);
        a.sd_ratio = Some(Interval {
            value: 2.6,
            low: 1.9,
            high: 3.4,
        });
        a.cohorts = Some(Cohorts {
            baseline: "1.4.2".into(),
            canary: "1.5.0".into(),
            baseline_samples: 600,
            canary_samples: 60,
        });
        a.exemplar_trace_ids = vec![
            "0102030405060708090a0b0c0d0e0f10".into(),
            "not hex".into(),
            "00000000000000000000000000000000".into(),
            "a1a2a3a4a5a6a7a8a9aaabacadaeafb0".into(),
        ];
        // The first exemplar's span is known, the last one's is not.
        a.exemplar_span_ids = vec!["1112131415161718".into(), "".into(), "".into(), "".into()];
        a
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
            AnomalyKind::Growth,
            AnomalyState::Resolved,
            "checkout-llm",
            "memspan.rss.end",
            T0,
        );
        g.instance = Some("pod-7".into());
        g.growth_bytes_per_s = Some(1.5 * 1024.0 * 1024.0);
        g.limit_bytes = Some(2.0 * 1024.0 * 1024.0 * 1024.0);
        g.time_to_limit_s = Some(Interval {
            value: 840.0,
            low: 600.0,
            high: 1200.0,
        });
        assert_eq!(
            summary(&g),
            "resolved: pod-7 of checkout-llm: RSS grows 1.5 MiB/s, reaches the 2.0 GiB limit in 14 min (at the earliest 10 min)"
        );
    }

    #[test]
    fn log_and_span_carry_event_name_evidence_and_links() {
        let mut episodes = Episodes::default();
        let a = spread(AnomalyState::Open, T0);
        let (logs, traces) = encode(std::slice::from_ref(&a), &mut episodes, T0 + 5);
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
        // The unreadable and the all-zero id are left out.
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
    fn events_of_one_anomaly_share_a_trace_and_resolution_forgets_it() {
        let mut episodes = Episodes::default();
        let open = episodes.place(&spread(AnomalyState::Open, T0), T0);
        let update = episodes.place(&spread(AnomalyState::Update, T0 + 10_000_000_000), T0);
        let resolved = episodes.place(&spread(AnomalyState::Resolved, T0 + 70_000_000_000), T0);
        assert_eq!(update.trace_id, open.trace_id);
        assert_eq!(resolved.trace_id, open.trace_id);
        assert_eq!(update.parent_span_id, Some(open.span_id));
        assert_eq!(resolved.onset_ns, open.onset_ns);
        assert_eq!(resolved.detected_ns, T0 + 70_000_000_000);
        assert_ne!(update.span_id, resolved.span_id);
        assert!(episodes.is_empty());
        // The same events give the same ids: replays produce the same traces.
        let mut again = Episodes::default();
        assert_eq!(again.place(&spread(AnomalyState::Open, T0), T0), open);
        // Another service's anomaly is another trace.
        let mut other = spread(AnomalyState::Open, T0);
        other.service = "search".into();
        assert_ne!(again.place(&other, T0).trace_id, open.trace_id);
        assert_eq!(again.len(), 2);
    }

    #[test]
    fn resources_group_by_affected_service_and_instance() {
        let mut b = spread(AnomalyState::Open, T0);
        b.instance = Some("pod-2".into());
        let events = [spread(AnomalyState::Open, T0), b.clone(), b];
        let (logs, traces) = encode(&events, &mut Episodes::default(), T0);
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
