//! The anomaly event as a JSON lines record: one object per line, the contract of DESIGN.md. The same record,
//! flattened, is the evidence of the OTLP log records and spans.
//!
//! Fields every event has: `kind`, `state`, `service`, `detected_at` (RFC 3339 UTC, event time) and `signal`;
//! `instance` for per-instance kinds; then the evidence, each field present only when the finding has it.
//! [`AnomalyRecord::from`] renders a core [`Anomaly`]; consumers (and tests) read lines back with serde.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

pub use memdrift_anomaly::{
    id128, id64, Anomaly, AnomalyKind, AnomalyState, Cohorts, Episode, Evidence, Exemplar,
    Identity, Interval, LeakClass,
};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AnomalyRecord {
    pub kind: AnomalyKind,
    pub state: AnomalyState,
    pub service: String,
    /// RFC 3339 UTC, event time.
    pub detected_at: String,
    pub signal: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_start: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_end: Option<String>,
    /// How the finding was reached, e.g. "brown_forsythe+msprt", "cusum", "theil_sen".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// The test statistic (e.g. Brown-Forsythe W, Mann-Kendall Z).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub statistic: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p_value: Option<f64>,
    /// The p-value of the latest window alone, beside the decision's `p_value` (sequential, always valid).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_p_value: Option<f64>,
    /// Lag-1 autocorrelation the test corrected for (process-level signals).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autocorrelation: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cohorts: Option<Cohorts>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sd_ratio: Option<Interval>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mad_ratio: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_to_limit_s: Option<Interval>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub growth_bytes_per_s: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit_bytes: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub classification: Option<String>,
    /// `gc_goal`: the heap size the next collection is due at, bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gc_goal_bytes: Option<f64>,
    /// `gc_goal`: where `limit_bytes` comes from ("container" or "go.memory.limit").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit_source: Option<String>,
    /// `gc_goal`: GOMEMLIMIT as the Go runtime reports it, when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub go_memory_limit_bytes: Option<f64>,
    /// `gc_goal`: the Go heap, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heap_bytes: Option<f64>,
    /// Hex trace ids of the most extreme requests behind the finding.
    #[serde(default)]
    pub exemplar_trace_ids: Vec<String>,
    /// Hex span ids of those requests, in the same order ("" where the sender gave none): with the trace ids,
    /// what a span link needs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exemplar_span_ids: Vec<String>,
}

impl AnomalyRecord {
    /// A record with the fields every event has and no evidence.
    fn bare(a: &Anomaly) -> AnomalyRecord {
        AnomalyRecord {
            kind: a.kind(),
            state: a.state,
            service: a.service.clone(),
            detected_at: rfc3339(a.detected_unix_nano),
            signal: a.signal.clone(),
            instance: a.instance.clone(),
            window_start: a.window.map(|(s, _)| rfc3339(s)),
            window_end: a.window.map(|(_, e)| rfc3339(e)),
            method: Some(a.method.to_string()),
            statistic: None,
            p_value: None,
            window_p_value: None,
            autocorrelation: None,
            cohorts: None,
            sd_ratio: None,
            mad_ratio: None,
            time_to_limit_s: None,
            growth_bytes_per_s: None,
            limit_bytes: None,
            classification: None,
            gc_goal_bytes: None,
            limit_source: None,
            go_memory_limit_bytes: None,
            heap_bytes: None,
            exemplar_trace_ids: a
                .exemplars
                .iter()
                .map(|e| hex::encode(e.trace_id))
                .collect(),
            // Left out when no exemplar has a span id; "" for the ones without.
            exemplar_span_ids: if a.exemplars.iter().any(|e| e.span_id.is_some()) {
                a.exemplars
                    .iter()
                    .map(|e| e.span_id.map(hex::encode).unwrap_or_default())
                    .collect()
            } else {
                Vec::new()
            },
        }
    }
}

impl From<&Anomaly> for AnomalyRecord {
    fn from(a: &Anomaly) -> AnomalyRecord {
        let mut r = AnomalyRecord::bare(a);
        match &a.evidence {
            Evidence::Spread {
                statistic,
                p_value,
                window_p_value,
                autocorrelation,
                sd_ratio,
                mad_ratio,
                cohorts,
            } => {
                r.statistic = Some(*statistic);
                r.p_value = Some(*p_value);
                r.window_p_value = Some(*window_p_value);
                r.autocorrelation = *autocorrelation;
                r.sd_ratio = Some(*sd_ratio);
                r.mad_ratio = *mad_ratio;
                r.cohorts = Some(cohorts.clone());
            }
            Evidence::SpreadChange {
                statistic,
                ratio,
                cohorts,
            } => {
                r.statistic = Some(*statistic);
                r.mad_ratio = Some(*ratio);
                r.cohorts = Some(cohorts.clone());
            }
            Evidence::Growth {
                envelope_bytes,
                growth_bytes_per_s,
                limit_bytes,
                limit_source,
                time_to_limit_s,
            } => {
                r.growth_bytes_per_s = Some(*growth_bytes_per_s);
                r.limit_bytes = *limit_bytes;
                r.limit_source = limit_source.map(str::to_string);
                r.statistic = Some(*envelope_bytes);
                r.time_to_limit_s = *time_to_limit_s;
            }
            Evidence::Leak {
                statistic,
                p_value,
                growth_bytes_per_s,
                classification,
                limit_bytes,
                limit_source,
            } => {
                r.statistic = Some(*statistic);
                r.p_value = Some(*p_value);
                r.growth_bytes_per_s = Some(*growth_bytes_per_s);
                r.classification = Some(classification.name().to_string());
                r.limit_bytes = *limit_bytes;
                r.limit_source = limit_source.map(str::to_string);
            }
            Evidence::GcGoal {
                goal_bytes,
                limit_bytes,
                limit_source,
                go_memory_limit_bytes,
                heap_bytes,
            } => {
                r.gc_goal_bytes = Some(*goal_bytes);
                r.limit_bytes = Some(*limit_bytes);
                r.limit_source = Some(limit_source.to_string());
                r.go_memory_limit_bytes = *go_memory_limit_bytes;
                r.heap_bytes = *heap_bytes;
            }
        }
        r
    }
}

/// RFC 3339 UTC with millisecond precision, e.g. "2026-11-24T10:00:00.000Z".
pub fn rfc3339(unix_nano: u64) -> String {
    let t = UNIX_EPOCH + Duration::from_nanos(unix_nano);
    humantime::format_rfc3339_millis(t).to_string()
}

/// The inverse of [`rfc3339`], for consumers and tests.
pub fn parse_rfc3339(s: &str) -> Option<u64> {
    let t: SystemTime = humantime::parse_rfc3339(s).ok()?;
    u64::try_from(t.duration_since(UNIX_EPOCH).ok()?.as_nanos()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn growth() -> Anomaly {
        let mut a = Anomaly::new(
            AnomalyState::Open,
            "checkout-llm",
            "memspan.rss.end",
            1_700_000_000_123_000_000,
            "theil_sen_envelope",
            Evidence::Growth {
                envelope_bytes: 3e9,
                growth_bytes_per_s: 1e6,
                limit_bytes: None,
                limit_source: None,
                time_to_limit_s: None,
            },
        );
        a.instance = Some("pod-1".into());
        a
    }

    #[test]
    fn serializes_contract_fields_and_omits_absent_evidence() {
        let a = growth();
        let record = AnomalyRecord::from(&a);
        let json: serde_json::Value = serde_json::to_value(&record).expect("serializes");
        assert_eq!(json["kind"], "growth");
        assert_eq!(json["state"], "open");
        assert_eq!(json["detected_at"], "2023-11-14T22:13:20.123Z");
        assert_eq!(json["instance"], "pod-1");
        assert!(json.get("p_value").is_none());
        assert!(json.get("limit_bytes").is_none());
        assert_eq!(json["exemplar_trace_ids"], serde_json::json!([]));
        assert!(json.get("exemplar_span_ids").is_none());
        let back: AnomalyRecord = serde_json::from_value(json).expect("reads back");
        assert_eq!(back, record);
        assert_eq!(
            parse_rfc3339(&record.detected_at),
            Some(1_700_000_000_123_000_000)
        );
    }

    #[test]
    fn span_ids_follow_the_trace_ids_and_are_left_out_when_none_is_known() {
        let mut a = growth();
        a.exemplars = vec![
            Exemplar {
                trace_id: [1; 16],
                span_id: None,
            },
            Exemplar {
                trace_id: [2; 16],
                span_id: Some([3; 8]),
            },
        ];
        let r = AnomalyRecord::from(&a);
        assert_eq!(r.exemplar_trace_ids, vec!["01".repeat(16), "02".repeat(16)]);
        assert_eq!(r.exemplar_span_ids, vec![String::new(), "03".repeat(8)]);
    }
}
