//! The anomaly event: one JSON object per line in the JSON lines output, one log record and one span in OTLP.
//!
//! Fields every event has: `kind`, `state`, `service`, `detected_at` (RFC 3339 UTC, event time) and `signal`;
//! `instance` for per-instance kinds; then the evidence, each field present only when the detector produced it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AnomalyKind {
    SpreadDrift,
    Growth,
    Leak,
}

impl AnomalyKind {
    pub const ALL: [AnomalyKind; 3] = [
        AnomalyKind::SpreadDrift,
        AnomalyKind::Growth,
        AnomalyKind::Leak,
    ];

    pub fn name(self) -> &'static str {
        match self {
            AnomalyKind::SpreadDrift => "spread_drift",
            AnomalyKind::Growth => "growth",
            AnomalyKind::Leak => "leak",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AnomalyState {
    Open,
    Update,
    Resolved,
}

/// An estimate with its confidence interval.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Interval {
    pub value: f64,
    pub low: f64,
    pub high: f64,
}

/// The two cohorts a spread comparison names, so that a wrong baseline guess is visible.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Cohorts {
    pub baseline: String,
    pub canary: String,
    pub baseline_samples: u64,
    pub canary_samples: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Anomaly {
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
    /// Hex trace ids of the most extreme requests behind the finding.
    #[serde(default)]
    pub exemplar_trace_ids: Vec<String>,
    /// Hex span ids of those requests, in the same order ("" where the sender gave none): with the trace ids,
    /// what a span link needs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exemplar_span_ids: Vec<String>,
}

impl Anomaly {
    /// An event with the fields every event has and no evidence yet.
    pub fn new(
        kind: AnomalyKind,
        state: AnomalyState,
        service: &str,
        signal: &str,
        detected_at_unix_nano: u64,
    ) -> Anomaly {
        Anomaly {
            kind,
            state,
            service: service.to_string(),
            detected_at: rfc3339(detected_at_unix_nano),
            signal: signal.to_string(),
            instance: None,
            window_start: None,
            window_end: None,
            method: None,
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
            exemplar_trace_ids: Vec::new(),
            exemplar_span_ids: Vec::new(),
        }
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

    #[test]
    fn serializes_contract_fields_and_omits_absent_evidence() {
        let mut a = Anomaly::new(
            AnomalyKind::Growth,
            AnomalyState::Open,
            "checkout-llm",
            "memspan.rss.end",
            1_700_000_000_123_000_000,
        );
        a.instance = Some("pod-1".into());
        let json: serde_json::Value = serde_json::to_value(&a).expect("serializes");
        assert_eq!(json["kind"], "growth");
        assert_eq!(json["state"], "open");
        assert_eq!(json["detected_at"], "2023-11-14T22:13:20.123Z");
        assert_eq!(json["instance"], "pod-1");
        assert!(json.get("p_value").is_none());
        assert_eq!(json["exemplar_trace_ids"], serde_json::json!([]));
        let back: Anomaly = serde_json::from_value(json).expect("reads back");
        assert_eq!(back, a);
        assert_eq!(
            parse_rfc3339(&a.detected_at),
            Some(1_700_000_000_123_000_000)
        );
    }
}
