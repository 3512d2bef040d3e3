//! The evaluation harness: seeded scenario families with ground truth, written as the OpenTelemetry
//! Collector's `file` exporter writes them, replayed through `memdrift::replay::replay` with the embedded default
//! pipeline, and scored against their labels beside a guarded Prometheus `predict_linear` baseline. Also the
//! real GPU-memory trace of `../shared/data/genai-gpu-memory` turned into Collector-shaped OTLP metrics.
//!
//! - [`families`]: the scenario families and what each one must (and must not) make memdrift say.
//! - [`process`], [`noise`]: one instance's memory over time, and the noise on it.
//! - [`otlp`]: records -> OTLP/JSON lines, in order or as a Collector delivers them.
//! - [`score`]: matching `open` events to expected findings; [`baseline`]: `predict_linear`.
//! - [`run`]: one scenario end to end; [`scorecard`]: per-family totals, Markdown and JSON.
//! - [`real`]: the real trace: CSV (plain or in a `.tar.gz`) -> OTLP metrics -> replay -> a report.
//!
//! `cargo run --release -p memdrift-e2e --bin eval -- --seeds 20` prints the scorecard; EVALUATION.md has the
//! method and the numbers.

pub mod baseline;
pub mod families;
pub mod noise;
pub mod otlp;
pub mod process;
pub mod real;
pub mod run;
pub mod score;
pub mod scorecard;

use std::collections::BTreeMap;

use serde::Serialize;

/// Event time of second 0 of every synthetic scenario (2027-01-15T08:00:00Z), Unix nanoseconds.
pub const T0: u64 = 1_800_000_000_000_000_000;
/// One megabyte (10^6 bytes): leak rates are quoted in MB/s.
pub const MB: f64 = 1e6;
pub const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

/// Seconds since [`T0`] as Unix nanoseconds.
pub fn at(t_s: f64) -> u64 {
    T0 + (t_s.max(0.0) * 1e9) as u64
}

/// Who sent a record: one process (an instance) of a service, in a cohort (its `service.version`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Source {
    pub service: String,
    pub version: String,
    pub instance: String,
}

/// One request span "chat <model>" of one source, with the memspan attributes (bytes).
#[derive(Clone, Copy, Debug)]
pub struct SpanRec {
    pub t_ns: u64,
    pub source: u32,
    pub rss_start: i64,
    pub rss_end: i64,
    pub heap: i64,
    pub request: i64,
    pub limit: i64,
}

/// One scraped memory level of one source, with its limit where the sender knows it.
#[derive(Clone, Copy, Debug)]
pub struct PointRec {
    pub t_ns: u64,
    pub source: u32,
    pub value: i64,
    pub limit: Option<i64>,
}

/// Which metric carries the level.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MetricName {
    /// `container.memory.working_set` and `k8s.container.memory.limit.current` gauges, resource `k8s.pod.name`
    /// (kubeletstats through the k8sattributes processor).
    WorkingSet,
    /// A `process.memory.usage` gauge, resource `service.instance.id` (an SDK's process metrics); no limit.
    ProcessUsage,
}

impl MetricName {
    pub fn name(self) -> &'static str {
        match self {
            MetricName::WorkingSet => "container.memory.working_set",
            MetricName::ProcessUsage => "process.memory.usage",
        }
    }
}

/// What a scenario sends.
#[derive(Clone, Debug)]
pub enum Data {
    Spans(Vec<SpanRec>),
    Metrics {
        metric: MetricName,
        points: Vec<PointRec>,
    },
}

/// How records become lines.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Delivery {
    /// An ideal sender: spans in one line per 10 s step (aligned to the engine's grid) holding every instance's
    /// spans of that step, metrics in one line per scrape holding every pod; lines in event-time order.
    InOrder,
    /// As a Collector's file exporter writes what several senders flush to it. Spans: each SDK flushes every 5 s
    /// at its own phase, the Collector cuts a line every 2 s of arrival (several instances per line), and a
    /// share `retry_share` of flushes arrives 5-30 s late (an export retried). Metrics: a line per group of
    /// `group` pods carrying two consecutive scrapes (57 s apart), so the first scrape of every group but the
    /// first arrives after the second scrape of the group before it.
    Collector { group: usize, retry_share: f64 },
}

/// A finding memdrift must (or may) make: its kind and subject, from when, and by when.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Expectation {
    pub kind: Kind,
    pub key: Key,
    /// For people: "heap leak 1.20 MB/s", "sd x2.6".
    pub what: String,
    /// Seconds after T0 from which an open event of this kind and key matches this finding.
    pub onset_s: f64,
    /// ...up to here (the limit crossing, or the end of the scenario).
    pub until_s: f64,
    /// `Some`: it must be said by then (the finding is required); `None`: it may be said (not a false alarm).
    pub deadline_s: Option<f64>,
    /// The leak class it must carry, where the data can tell (`heap`, `off_heap`).
    pub class: Option<String>,
    /// Growth: the limit crossing, for the lead time.
    pub crossing_s: Option<f64>,
}

/// The kinds of finding, as the JSON lines name them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Growth,
    Leak,
    SpreadDrift,
    GcGoal,
}

impl Kind {
    /// The kinds the scenarios plant (a GC goal above the limit is not one of them).
    pub const ALL: [Kind; 3] = [Kind::Growth, Kind::Leak, Kind::SpreadDrift];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Growth => "growth",
            Kind::Leak => "leak",
            Kind::SpreadDrift => "spread_drift",
            Kind::GcGoal => "gc_goal",
        }
    }

    pub fn of(kind: memdrift_exporter::AnomalyKind) -> Kind {
        match kind {
            memdrift_exporter::AnomalyKind::Growth => Kind::Growth,
            memdrift_exporter::AnomalyKind::Leak => Kind::Leak,
            memdrift_exporter::AnomalyKind::SpreadDrift => Kind::SpreadDrift,
            memdrift_exporter::AnomalyKind::GcGoal => Kind::GcGoal,
        }
    }
}

/// The subject of a finding: an instance of a service, or a canary cohort of a service.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(tag = "scope", rename_all = "snake_case")]
pub enum Key {
    Instance { service: String, instance: String },
    Cohort { service: String, cohort: String },
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Key::Instance { service, instance } => write!(f, "{service}/{instance}"),
            Key::Cohort { service, cohort } => write!(f, "{service}@{cohort}"),
        }
    }
}

/// One generated scenario: what is sent, how it is delivered, and the ground truth.
#[derive(Clone, Debug)]
pub struct Scenario {
    pub family: &'static str,
    pub seed: u64,
    pub duration_s: f64,
    pub sources: Vec<Source>,
    pub data: Data,
    pub delivery: Delivery,
    pub truth: Vec<Expectation>,
    /// What each instance (or cohort) does, for the false alarms' breakdown and for people.
    pub about: BTreeMap<Key, About>,
}

/// What a subject does: a short class to count false alarms by, and the details.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct About {
    /// e.g. "warm-up ramp / spikes", "lognormal + canary mean shift".
    pub shape: String,
    /// e.g. "warm-up ramp, spikes 1.2% noise sd 1.4%, floor 2.81 GB, limit 3.60 GB".
    pub detail: String,
}

impl Scenario {
    /// Hours each source was seen (first to last record), summed.
    pub fn instance_hours(&self) -> f64 {
        let mut span = vec![(u64::MAX, 0u64); self.sources.len()];
        let mut see = |source: u32, t: u64| {
            if let Some(s) = span.get_mut(source as usize) {
                s.0 = s.0.min(t);
                s.1 = s.1.max(t);
            }
        };
        match &self.data {
            Data::Spans(spans) => spans.iter().for_each(|r| see(r.source, r.t_ns)),
            Data::Metrics { points, .. } => points.iter().for_each(|r| see(r.source, r.t_ns)),
        }
        span.iter()
            .filter(|(a, b)| a <= b)
            .map(|(a, b)| (b - a) as f64 / 3600e9)
            .sum()
    }

    /// The key a source's per-instance findings carry.
    pub fn instance_key(&self, source: u32) -> Option<Key> {
        self.sources.get(source as usize).map(|s| Key::Instance {
            service: s.service.clone(),
            instance: s.instance.clone(),
        })
    }
}
