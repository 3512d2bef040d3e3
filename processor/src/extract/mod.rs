//! OTLP -> [`MemorySample`]s: the MemorySpan attribute convention and the metric table.
//!
//! Every value is checked on its own: a bad one is counted by reason and dropped while the rest of the span and
//! the batch are kept. A span is refused only when nothing of it can be used, and only the refusals that mean
//! "bad input" (not "a span that is simply not about memory") count as rejected in OTLP partial success.

mod metrics;
pub mod model;
mod spans;
mod value;
pub mod wire;

use std::collections::HashMap;

pub use metrics::extract_metrics;
pub use spans::extract_spans;
pub use value::{bytes_value, DropReason, MAX_LABEL_BYTES, MAX_PLAUSIBLE_BYTES};

use crate::signal::{attr, Signal};

/// Why a whole span yielded no sample.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RefuseReason {
    /// No `memspan.*` memory attribute at all: not our input, not an error.
    NoMemoryAttributes,
    /// It had memory attributes, but every one of them was rejected.
    InvalidValues,
    /// Neither end nor start time: the sample cannot be placed in event time.
    NoTimestamp,
}

impl RefuseReason {
    pub const ALL: [RefuseReason; 3] = [
        RefuseReason::NoMemoryAttributes,
        RefuseReason::InvalidValues,
        RefuseReason::NoTimestamp,
    ];

    pub fn name(self) -> &'static str {
        match self {
            RefuseReason::NoMemoryAttributes => "no_memory_attributes",
            RefuseReason::InvalidValues => "invalid_values",
            RefuseReason::NoTimestamp => "no_timestamp",
        }
    }

    /// Whether this refusal is reported back to the sender as rejected in OTLP partial success.
    pub fn is_rejection(self) -> bool {
        !matches!(self, RefuseReason::NoMemoryAttributes)
    }
}

/// How samples are read out of OTLP. Built from the pipeline's `extract` processor.
#[derive(Clone, Debug)]
pub struct ExtractConfig {
    /// Attribute names tried in order, span first then resource, to find a sample's cohort.
    pub cohort_attributes: Vec<String>,
    /// OTLP metric name -> the signal its points feed.
    pub metric_signals: HashMap<String, Signal>,
}

impl Default for ExtractConfig {
    fn default() -> Self {
        ExtractConfig {
            cohort_attributes: vec![
                attr::COHORT.to_string(),
                "feature_flag.result.variant".to_string(),
                // Argo Rollouts' pod-template hash, as the Collector's k8sattributes processor names a pod
                // label (the semantic-convention spelling, then the older one): stable and canary pods differ.
                "k8s.pod.label.rollouts-pod-template-hash".to_string(),
                "k8s.pod.labels.rollouts-pod-template-hash".to_string(),
                "service.version".to_string(),
            ],
            metric_signals: default_metric_signals(),
        }
    }
}

/// The metric names of DESIGN.md and the signals they feed.
pub fn default_metric_signals() -> HashMap<String, Signal> {
    [
        ("process.memory.usage", Signal::ProcessMemoryUsage),
        ("container.memory.working_set", Signal::ContainerWorkingSet),
        ("container.memory.usage", Signal::ContainerUsage),
        ("k8s.container.memory.limit.current", Signal::Limit),
        // The Go runtime, as the OpenTelemetry Go runtime instrumentation names it (semantic conventions), and
        // the older `process.runtime.go.*` names where they differ. `go.memory.used` is split by its
        // `go.memory.type` attribute ([`SPLIT_METRICS`]).
        ("go.goroutine.count", Signal::Goroutines),
        ("go.memory.gc.goal", Signal::GcGoal),
        ("go.memory.limit", Signal::GoMemoryLimit),
        ("process.runtime.go.goroutines", Signal::Goroutines),
        ("process.runtime.go.mem.heap_alloc", Signal::HeapAllocated),
    ]
    .into_iter()
    .map(|(name, signal)| (name.to_string(), signal))
    .collect()
}

/// A metric split by an attribute: (metric, attribute, [(value, signal)]).
pub type SplitMetric = (
    &'static str,
    &'static str,
    &'static [(&'static str, Signal)],
);

/// Metrics whose points feed one signal or another by the value of one of their attributes: (metric, attribute,
/// [(value, signal)]). A metric named in the pipeline's `metrics:` table is read by that table instead.
pub const SPLIT_METRICS: &[SplitMetric] = &[(
    "go.memory.used",
    "go.memory.type",
    // Goroutine stacks; everything else the Go runtime holds (mostly the heap).
    &[("stack", Signal::GoStack), ("other", Signal::HeapAllocated)],
)];

/// The resource attributes that name a sample's service and instance (see `spans::ResourceContext`).
const RESOURCE_KEYS: [&str; 4] = [
    "service.name",
    "service.instance.id",
    "host.name",
    "k8s.pod.name",
];

/// Decoding keeps only the attributes extraction reads: memory attributes and cohort attributes on spans and
/// points, identity and cohort attributes on resources.
impl model::KeepKeys for ExtractConfig {
    fn resource(&self, key: &[u8]) -> bool {
        RESOURCE_KEYS.iter().any(|k| k.as_bytes() == key) || self.is_cohort_key(key)
    }

    fn item(&self, key: &[u8]) -> bool {
        key.starts_with(b"memspan.")
            || self.is_cohort_key(key)
            || SPLIT_METRICS
                .iter()
                .any(|(_, attr, _)| attr.as_bytes() == key)
    }
}

impl ExtractConfig {
    fn is_cohort_key(&self, key: &[u8]) -> bool {
        self.cohort_attributes.iter().any(|k| k.as_bytes() == key)
    }
}

/// What one extraction saw, for self-telemetry and partial success.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExtractStats {
    pub spans: u64,
    /// Spans that gave a sample.
    pub spans_accepted: u64,
    pub refused: HashMap<RefuseReason, u64>,
    pub dropped_values: HashMap<DropReason, u64>,
    /// Number points of mapped metrics.
    pub metric_points: u64,
    pub metric_points_accepted: u64,
    /// Values read, indexed by `Signal as usize` (an array: this is counted once per value on the hot path).
    pub values_by_signal: [u64; Signal::COUNT],
    /// Service, instance or cohort labels longer than `MAX_LABEL_BYTES`, kept shortened.
    pub labels_shortened: u64,
}

impl ExtractStats {
    /// Values read per signal, the signals with none left out.
    pub fn samples_by_signal(&self) -> HashMap<Signal, u64> {
        Signal::ALL
            .into_iter()
            .map(|s| (s, self.values_by_signal[s as usize]))
            .filter(|(_, n)| *n > 0)
            .collect()
    }

    pub fn refuse(&mut self, reason: RefuseReason) {
        *self.refused.entry(reason).or_default() += 1;
    }

    pub fn drop_value(&mut self, reason: DropReason) {
        *self.dropped_values.entry(reason).or_default() += 1;
    }

    /// Spans to report as rejected in OTLP partial success.
    pub fn rejected_spans(&self) -> u64 {
        self.refused
            .iter()
            .filter(|(r, _)| r.is_rejection())
            .map(|(_, n)| n)
            .sum()
    }

    /// A short, human explanation for partial success, e.g. "2 spans rejected: invalid_values=2; dropped values:
    /// negative=3". Empty when nothing was wrong.
    pub fn error_message(&self) -> String {
        let mut parts = Vec::new();
        let rejected = self.rejected_spans();
        if rejected > 0 {
            let mut reasons: Vec<_> = self
                .refused
                .iter()
                .filter(|(r, _)| r.is_rejection())
                .map(|(r, n)| format!("{}={n}", r.name()))
                .collect();
            reasons.sort();
            parts.push(format!("{rejected} spans rejected: {}", reasons.join(", ")));
        }
        if !self.dropped_values.is_empty() {
            let mut reasons: Vec<_> = self
                .dropped_values
                .iter()
                .map(|(r, n)| format!("{}={n}", r.name()))
                .collect();
            reasons.sort();
            parts.push(format!(
                "memory attribute values dropped: {}",
                reasons.join(", ")
            ));
        }
        parts.join("; ")
    }

    pub fn merge(&mut self, other: &ExtractStats) {
        self.spans += other.spans;
        self.spans_accepted += other.spans_accepted;
        self.metric_points += other.metric_points;
        self.metric_points_accepted += other.metric_points_accepted;
        for (k, v) in &other.refused {
            *self.refused.entry(*k).or_default() += v;
        }
        for (k, v) in &other.dropped_values {
            *self.dropped_values.entry(*k).or_default() += v;
        }
        for (mine, theirs) in self.values_by_signal.iter_mut().zip(other.values_by_signal) {
            *mine += theirs;
        }
        self.labels_shortened += other.labels_shortened;
    }
}

#[cfg(test)]
mod tests {
    use super::model::{MetricsRequest, TraceRequest};
    use super::*;
    use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::{any_value::Value, AnyValue, KeyValue};
    use opentelemetry_proto::tonic::metrics::v1 as pm;
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1 as pt;
    use prost::Message;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    /// Keys extraction reads and keys it does not, on resources and items alike.
    const KEYS: [&str; 12] = [
        "service.name",
        "service.instance.id",
        "host.name",
        "k8s.pod.name",
        "service.version",
        "memspan.cohort",
        "feature_flag.result.variant",
        "memspan.rss.end",
        "memspan.rss.start",
        "memspan.heap.allocated",
        "gen_ai.request.model",
        "memspan.unknown",
    ];

    fn attributes(rng: &mut StdRng) -> Vec<KeyValue> {
        (0..rng.random_range(0..8))
            .map(|_| {
                let value = match rng.random_range(0..4) {
                    0 => Value::StringValue(
                        ["a", "1.5.0", "canary", ""][rng.random_range(0..4)].into(),
                    ),
                    1 => Value::IntValue(rng.random_range(-5..5_000_000)),
                    2 => Value::DoubleValue(rng.random_range(0.0..1e7)),
                    _ => Value::BoolValue(rng.random()),
                };
                KeyValue {
                    key: KEYS[rng.random_range(0..KEYS.len())].into(),
                    value: Some(AnyValue { value: Some(value) }),
                    ..Default::default()
                }
            })
            .collect()
    }

    fn resource(rng: &mut StdRng) -> Option<Resource> {
        Some(Resource {
            attributes: attributes(rng),
            ..Default::default()
        })
    }

    /// Skipping the attributes extraction does not read changes nothing it extracts or counts.
    #[test]
    fn decoding_only_the_keys_read_extracts_the_same() {
        let config = ExtractConfig::default();
        let mut rng = StdRng::seed_from_u64(5);
        for _ in 0..300 {
            let traces = ExportTraceServiceRequest {
                resource_spans: (0..rng.random_range(1..3))
                    .map(|_| pt::ResourceSpans {
                        resource: resource(&mut rng),
                        scope_spans: vec![pt::ScopeSpans {
                            spans: (0..rng.random_range(0..6))
                                .map(|i| pt::Span {
                                    trace_id: vec![1; 16],
                                    span_id: vec![i + 1; 8],
                                    end_time_unix_nano: 1_700_000_000_000_000_000,
                                    attributes: attributes(&mut rng),
                                    ..Default::default()
                                })
                                .collect(),
                            ..Default::default()
                        }],
                        ..Default::default()
                    })
                    .collect(),
            }
            .encode_to_vec();
            let metrics = ExportMetricsServiceRequest {
                resource_metrics: vec![pm::ResourceMetrics {
                    resource: resource(&mut rng),
                    scope_metrics: vec![pm::ScopeMetrics {
                        metrics: vec![pm::Metric {
                            name: "container.memory.working_set".into(),
                            data: Some(pm::metric::Data::Gauge(pm::Gauge {
                                data_points: (0..rng.random_range(0..4))
                                    .map(|_| pm::NumberDataPoint {
                                        time_unix_nano: 1_700_000_000_000_000_000,
                                        value: Some(pm::number_data_point::Value::AsInt(7 << 20)),
                                        attributes: attributes(&mut rng),
                                        ..Default::default()
                                    })
                                    .collect(),
                            })),
                            ..Default::default()
                        }],
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
            }
            .encode_to_vec();
            let run = |all: bool| {
                let (mut out, mut stats) = (Vec::new(), ExtractStats::default());
                let t = if all {
                    TraceRequest::decode(&traces)
                } else {
                    TraceRequest::decode_keeping(&traces, &config)
                };
                extract_spans(&t.expect("valid"), &config, &mut out, &mut stats);
                let m = if all {
                    MetricsRequest::decode(&metrics)
                } else {
                    MetricsRequest::decode_keeping(&metrics, &config)
                };
                extract_metrics(&m.expect("valid"), &config, &mut out, &mut stats);
                (out, stats)
            };
            assert_eq!(run(true), run(false));
        }
    }

    fn kv(key: &str, value: &str) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: Some(AnyValue {
                value: Some(Value::StringValue(value.into())),
            }),
            ..Default::default()
        }
    }

    /// A Go service's runtime metrics as the OpenTelemetry Go runtime instrumentation sends them (sums and
    /// gauges, `go.memory.used` by `go.memory.type`), read without configuration.
    #[test]
    fn go_runtime_metrics_are_read_without_configuration() {
        let point = |v: i64, attrs: Vec<KeyValue>| pm::NumberDataPoint {
            time_unix_nano: 1_700_000_000_000_000_000,
            value: Some(pm::number_data_point::Value::AsInt(v)),
            attributes: attrs,
            ..Default::default()
        };
        let sum = |name: &str, points: Vec<pm::NumberDataPoint>| pm::Metric {
            name: name.into(),
            data: Some(pm::metric::Data::Sum(pm::Sum {
                data_points: points,
                ..Default::default()
            })),
            ..Default::default()
        };
        let gauge = |name: &str, points: Vec<pm::NumberDataPoint>| pm::Metric {
            name: name.into(),
            data: Some(pm::metric::Data::Gauge(pm::Gauge {
                data_points: points,
            })),
            ..Default::default()
        };
        let metrics = vec![
            sum(
                "go.memory.used",
                vec![
                    point(3 << 20, vec![kv("go.memory.type", "stack")]),
                    point(600 << 20, vec![kv("go.memory.type", "other")]),
                    point(1, vec![kv("go.memory.type", "something new")]),
                ],
            ),
            sum("go.goroutine.count", vec![point(1200, vec![])]),
            gauge("go.memory.gc.goal", vec![point(1200 << 20, vec![])]),
            // GOMEMLIMIT unset: the runtime reports math.MaxInt64, which is no limit, not a bad value.
            sum("go.memory.limit", vec![point(i64::MAX, vec![])]),
            gauge("process.runtime.go.goroutines", vec![point(7, vec![])]),
            gauge("go.memory.allocated", vec![point(9 << 30, vec![])]),
        ];
        let body = ExportMetricsServiceRequest {
            resource_metrics: vec![pm::ResourceMetrics {
                resource: Some(Resource {
                    attributes: vec![
                        kv("service.name", "llm-go"),
                        kv("service.instance.id", "pod-1"),
                    ],
                    ..Default::default()
                }),
                scope_metrics: vec![pm::ScopeMetrics {
                    metrics,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
        .encode_to_vec();
        let config = ExtractConfig::default();
        let request = MetricsRequest::decode_keeping(&body, &config).expect("valid");
        let (mut out, mut stats) = (Vec::new(), ExtractStats::default());
        extract_metrics(&request, &config, &mut out, &mut stats);
        let got: Vec<(Signal, f64)> = out.iter().flat_map(|s| s.values.iter()).collect();
        assert_eq!(
            got,
            [
                (Signal::GoStack, (3 << 20) as f64),
                (Signal::HeapAllocated, (600 << 20) as f64),
                (Signal::Goroutines, 1200.0),
                (Signal::GcGoal, (1200 << 20) as f64),
                (Signal::Goroutines, 7.0),
            ]
        );
        assert!(out
            .iter()
            .all(|s| &*s.service == "llm-go" && &*s.instance == "pod-1"));
        assert!(stats.dropped_values.is_empty(), "{stats:?}");
    }
}
