//! The Prometheus registry as OTLP metrics, so both outputs carry the same metrics from one source.
//!
//! Names follow DESIGN.md ("OTLP names are the same with dots"): the namespace separators become dots, and what
//! Prometheus appends to a name goes into OTLP's own fields instead: `_total` into a monotonic sum, a unit
//! suffix (`_bytes`, `_seconds`, `_bytes_per_second`) into the unit. So `memdrift_receiver_accepted_spans_total`
//! is the sum `memdrift.receiver.accepted_spans` in `{span}`, and a detector's `memdrift_growth_bytes_per_second`
//! the gauge `memdrift.growth` in `By/s`. The process collector's figures map to the semantic conventions'
//! `process.*` metrics; the two with no such name (`process_max_fds`, `process_start_time_seconds`) stay on the
//! scrape endpoint only.
//!
//! Temporality: Prometheus counters and histograms are cumulative since the process started, and so are the OTLP
//! sums and histograms made from them (their start time is the exporter's start).

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::metrics::v1::{
    metric, number_data_point, summary_data_point, AggregationTemporality, Gauge, Histogram,
    HistogramDataPoint, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum, Summary,
    SummaryDataPoint,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prometheus::proto::{MetricFamily, MetricType};

use super::encode::{kv_str, scope};

/// Prometheus namespaces whose underscores become dots; the first match wins.
const NAMESPACES: [&str; 6] = [
    "memdrift_receiver_",
    "memdrift_exporter_",
    "memdrift_window_",
    "memdrift_spread_",
    "memdrift_",
    "process_",
];

/// The process collector's figures under semantic-convention names; `None` keeps one off OTLP.
const PROCESS: [(&str, Option<(&str, &str)>); 7] = [
    (
        "process_resident_memory_bytes",
        Some(("process.memory.usage", "By")),
    ),
    (
        "process_virtual_memory_bytes",
        Some(("process.memory.virtual", "By")),
    ),
    ("process_cpu_seconds_total", Some(("process.cpu.time", "s"))),
    (
        "process_open_fds",
        Some(("process.open_file_descriptor.count", "{file_descriptor}")),
    ),
    (
        "process_threads",
        Some(("process.thread.count", "{thread}")),
    ),
    ("process_max_fds", None),
    ("process_start_time_seconds", None),
];

/// Units of the names that carry no unit suffix (UCUM; curly braces annotate a count).
const UNITS: [(&str, &str); 24] = [
    ("memdrift.receiver.accepted_spans", "{span}"),
    ("memdrift.receiver.refused_spans", "{span}"),
    ("memdrift.receiver.accepted_metric_points", "{data_point}"),
    ("memdrift.receiver.log_records", "{log_record}"),
    ("memdrift.receiver.failed_requests", "{request}"),
    ("memdrift.samples", "{sample}"),
    ("memdrift.dropped_values", "{value}"),
    ("memdrift.keys", "{key}"),
    ("memdrift.windows_closed", "{window}"),
    ("memdrift.anomalies", "{event}"),
    ("memdrift.window.count", "{sample}"),
    ("memdrift.window.mean", "By"),
    ("memdrift.window.sd", "By"),
    ("memdrift.window.median", "By"),
    ("memdrift.window.mad", "By"),
    ("memdrift.window.p95", "By"),
    ("memdrift.exporter.sent", "{item}"),
    ("memdrift.exporter.failed", "{item}"),
    ("memdrift.exporter.dropped", "{item}"),
    ("memdrift.exporter.queue_size", "{batch}"),
    ("memdrift.exporter.retries", "{attempt}"),
    ("memdrift.spread.sd_ratio", "1"),
    ("memdrift.spread.p_value", "1"),
    ("memdrift.spread.sequential_log_lr", "1"),
];

const UNIT_SUFFIXES: [(&str, &str); 3] = [
    ("_bytes_per_second", "By/s"),
    ("_bytes", "By"),
    ("_seconds", "s"),
];

/// The OTLP name and unit of a Prometheus metric, or `None` for one kept off OTLP.
pub fn otlp_name(prometheus_name: &str, counter: bool) -> Option<(String, String)> {
    if let Some((_, mapped)) = PROCESS.iter().find(|(p, _)| *p == prometheus_name) {
        return mapped.map(|(n, u)| (n.to_string(), u.to_string()));
    }
    let mut base = prometheus_name;
    if counter {
        base = base.strip_suffix("_total").unwrap_or(base);
    }
    let mut unit = None;
    for (suffix, u) in UNIT_SUFFIXES {
        if let Some(stripped) = base.strip_suffix(suffix) {
            base = stripped;
            unit = Some(u);
            break;
        }
    }
    let name = match NAMESPACES.iter().find(|ns| base.starts_with(*ns)) {
        Some(ns) => format!(
            "{}.{}",
            ns[..ns.len() - 1].replace('_', "."),
            &base[ns.len()..]
        ),
        None => base.to_string(),
    };
    let unit = unit
        .or_else(|| UNITS.iter().find(|(n, _)| *n == name).map(|(_, u)| *u))
        .unwrap_or(if counter { "1" } else { "" });
    Some((name, unit.to_string()))
}

fn labels(m: &prometheus::proto::Metric) -> Vec<KeyValue> {
    m.get_label()
        .iter()
        .map(|l| kv_str(l.name(), l.value()))
        .collect()
}

/// Counts go out as integers, everything else as doubles: decided by the metric, never by the value, so a series
/// never changes type between exports.
fn number(v: f64, integer: bool) -> number_data_point::Value {
    if integer && v.is_finite() {
        number_data_point::Value::AsInt(v.round() as i64)
    } else {
        number_data_point::Value::AsDouble(v)
    }
}

/// Data points per request. A registry with many series (window gauges of thousands of cohorts) goes out as
/// several requests, each far below the 4 MiB a gRPC receiver takes by default; a metric may then appear in
/// more than one of them, which OTLP allows.
pub const MAX_POINTS_PER_REQUEST: usize = 2000;

/// One gathered registry as OTLP requests of at most [`MAX_POINTS_PER_REQUEST`] points; `start_ns` is when the
/// cumulative series started, `now_ns` the gather time. Returns each request with its number of data points.
pub fn encode(
    families: &[MetricFamily],
    resource: &[KeyValue],
    start_ns: u64,
    now_ns: u64,
) -> Vec<(ExportMetricsServiceRequest, usize)> {
    let request = |metrics: Vec<Metric>| ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(Resource {
                attributes: resource.to_vec(),
                ..Default::default()
            }),
            scope_metrics: vec![ScopeMetrics {
                scope: Some(scope()),
                metrics,
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    let mut requests = Vec::new();
    let (mut metrics, mut points) = (Vec::new(), 0);
    for f in families {
        let kind = f.get_field_type();
        let Some((name, unit)) = otlp_name(f.name(), kind == MetricType::COUNTER) else {
            continue;
        };
        for chunk in f.get_metric().chunks(MAX_POINTS_PER_REQUEST) {
            let Some(data) = data(kind, chunk, &unit, start_ns, now_ns) else {
                continue;
            };
            if points + chunk.len() > MAX_POINTS_PER_REQUEST {
                requests.push((request(std::mem::take(&mut metrics)), points));
                points = 0;
            }
            points += chunk.len();
            metrics.push(Metric {
                name: name.clone(),
                description: f.help().to_string(),
                unit: unit.clone(),
                data: Some(data),
                ..Default::default()
            });
        }
    }
    if !metrics.is_empty() {
        requests.push((request(metrics), points));
    }
    requests
}

/// The points of some series of one family.
fn data(
    kind: MetricType,
    series: &[prometheus::proto::Metric],
    unit: &str,
    start_ns: u64,
    now_ns: u64,
) -> Option<metric::Data> {
    let cumulative = AggregationTemporality::Cumulative as i32;
    // Counts are integers: annotated units (`{span}`), and counters without a unit. A ratio gauge in `1` is not.
    let integer = unit.starts_with('{') || (kind == MetricType::COUNTER && unit == "1");
    let number_points = |value: fn(&prometheus::proto::Metric) -> f64, start: u64| {
        series
            .iter()
            .map(|m| NumberDataPoint {
                attributes: labels(m),
                start_time_unix_nano: start,
                time_unix_nano: now_ns,
                value: Some(number(value(m), integer)),
                ..Default::default()
            })
            .collect::<Vec<_>>()
    };
    Some(match kind {
        MetricType::COUNTER => metric::Data::Sum(Sum {
            data_points: number_points(|m| m.get_counter().get_value(), start_ns),
            aggregation_temporality: cumulative,
            is_monotonic: true,
        }),
        MetricType::GAUGE => metric::Data::Gauge(Gauge {
            data_points: number_points(|m| m.get_gauge().get_value(), 0),
        }),
        // The crate's collectors never produce untyped families (a protobuf-only type).
        MetricType::UNTYPED => return None,
        MetricType::HISTOGRAM => metric::Data::Histogram(Histogram {
            data_points: series
                .iter()
                .map(|m| histogram_point(m, start_ns, now_ns))
                .collect(),
            aggregation_temporality: cumulative,
        }),
        MetricType::SUMMARY => metric::Data::Summary(Summary {
            data_points: series
                .iter()
                .map(|m| {
                    let s = m.get_summary();
                    SummaryDataPoint {
                        attributes: labels(m),
                        start_time_unix_nano: start_ns,
                        time_unix_nano: now_ns,
                        count: s.sample_count(),
                        sum: s.sample_sum(),
                        quantile_values: s
                            .get_quantile()
                            .iter()
                            .map(|q| summary_data_point::ValueAtQuantile {
                                quantile: q.quantile(),
                                value: q.value(),
                            })
                            .collect(),
                        ..Default::default()
                    }
                })
                .collect(),
        }),
    })
}

/// Prometheus buckets hold cumulative counts up to each bound, +Inf included; OTLP holds the count of each
/// bucket and leaves the +Inf bound implicit.
fn histogram_point(
    m: &prometheus::proto::Metric,
    start_ns: u64,
    now_ns: u64,
) -> HistogramDataPoint {
    let h = m.get_histogram();
    let mut explicit_bounds = Vec::new();
    let mut bucket_counts = Vec::new();
    let mut below = 0u64;
    for b in h.get_bucket() {
        if b.upper_bound().is_infinite() {
            continue;
        }
        explicit_bounds.push(b.upper_bound());
        bucket_counts.push(b.cumulative_count().saturating_sub(below));
        below = b.cumulative_count();
    }
    bucket_counts.push(h.get_sample_count().saturating_sub(below));
    HistogramDataPoint {
        attributes: labels(m),
        start_time_unix_nano: start_ns,
        time_unix_nano: now_ns,
        count: h.get_sample_count(),
        sum: Some(h.get_sample_sum()),
        bucket_counts,
        explicit_bounds,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::{GaugeVec, HistogramOpts, IntCounterVec, Opts, Registry};

    #[test]
    fn names_drop_prometheus_suffixes_into_otlp_fields() {
        let cases = [
            (
                "memdrift_receiver_accepted_spans_total",
                true,
                "memdrift.receiver.accepted_spans",
                "{span}",
            ),
            (
                "memdrift_exporter_sent_total",
                true,
                "memdrift.exporter.sent",
                "{item}",
            ),
            (
                "memdrift_exporter_queue_size",
                false,
                "memdrift.exporter.queue_size",
                "{batch}",
            ),
            ("memdrift_window_p95", false, "memdrift.window.p95", "By"),
            ("memdrift_keys", false, "memdrift.keys", "{key}"),
            (
                "memdrift_growth_bytes_per_second",
                false,
                "memdrift.growth",
                "By/s",
            ),
            (
                "memdrift_time_to_limit_seconds",
                false,
                "memdrift.time_to_limit",
                "s",
            ),
            (
                "memdrift_something_new_total",
                true,
                "memdrift.something_new",
                "1",
            ),
            (
                "memdrift_spread_sd_ratio",
                false,
                "memdrift.spread.sd_ratio",
                "1",
            ),
            (
                "process_resident_memory_bytes",
                false,
                "process.memory.usage",
                "By",
            ),
            ("process_cpu_seconds_total", true, "process.cpu.time", "s"),
        ];
        for (prom, counter, name, unit) in cases {
            assert_eq!(
                otlp_name(prom, counter),
                Some((name.to_string(), unit.to_string())),
                "{prom}"
            );
        }
        assert_eq!(otlp_name("process_max_fds", false), None);
    }

    #[test]
    fn counters_are_cumulative_monotonic_sums_and_gauges_stay_gauges() {
        let r = Registry::new();
        let c = IntCounterVec::new(
            Opts::new("memdrift_anomalies_total", "Anomaly events."),
            &["kind"],
        )
        .expect("valid");
        r.register(Box::new(c.clone())).expect("registers");
        c.with_label_values(&["leak"]).inc_by(3);
        let g = GaugeVec::new(Opts::new("memdrift_window_sd", "sd"), &["service"]).expect("valid");
        r.register(Box::new(g.clone())).expect("registers");
        g.with_label_values(&["a"]).set(1.5e6);
        let h = prometheus::Histogram::with_opts(
            HistogramOpts::new("memdrift_export_seconds", "latency").buckets(vec![0.1, 1.0]),
        )
        .expect("valid");
        r.register(Box::new(h.clone())).expect("registers");
        for v in [0.05, 0.5, 0.7, 5.0] {
            h.observe(v);
        }

        let requests = encode(&r.gather(), &[kv_str("service.name", "memdrift")], 10, 20);
        assert_eq!(requests.len(), 1);
        let (req, points) = &requests[0];
        assert_eq!(*points, 3);
        let metrics = &req.resource_metrics[0].scope_metrics[0].metrics;
        let by_name = |n: &str| metrics.iter().find(|m| m.name == n).expect(n);

        let m = by_name("memdrift.anomalies");
        assert_eq!(m.unit, "{event}");
        let Some(metric::Data::Sum(sum)) = &m.data else {
            panic!("a sum: {m:?}")
        };
        assert!(sum.is_monotonic);
        assert_eq!(
            sum.aggregation_temporality,
            AggregationTemporality::Cumulative as i32
        );
        let p = &sum.data_points[0];
        assert_eq!((p.start_time_unix_nano, p.time_unix_nano), (10, 20));
        assert_eq!(p.value, Some(number_data_point::Value::AsInt(3)));
        assert_eq!(p.attributes, vec![kv_str("kind", "leak")]);

        let m = by_name("memdrift.window.sd");
        let Some(metric::Data::Gauge(gauge)) = &m.data else {
            panic!("a gauge: {m:?}")
        };
        assert_eq!(m.unit, "By");
        assert_eq!(
            gauge.data_points[0].value,
            Some(number_data_point::Value::AsDouble(1.5e6))
        );

        let ratio = GaugeVec::new(Opts::new("memdrift_spread_sd_ratio", "ratio"), &["canary"])
            .expect("valid");
        let r2 = Registry::new();
        r2.register(Box::new(ratio.clone())).expect("registers");
        ratio.with_label_values(&["1.5.0"]).set(2.6);
        let (req2, _) = &encode(&r2.gather(), &[], 0, 1)[0];
        let m2 = &req2.resource_metrics[0].scope_metrics[0].metrics[0];
        let Some(metric::Data::Gauge(g2)) = &m2.data else {
            panic!("a gauge: {m2:?}")
        };
        assert_eq!(m2.unit, "1");
        assert_eq!(
            g2.data_points[0].value,
            Some(number_data_point::Value::AsDouble(2.6)),
            "a ratio in unit 1 stays a double"
        );

        let m = by_name("memdrift.export");
        assert_eq!(m.unit, "s");
        let Some(metric::Data::Histogram(hist)) = &m.data else {
            panic!("a histogram: {m:?}")
        };
        let p = &hist.data_points[0];
        assert_eq!(p.explicit_bounds, vec![0.1, 1.0]);
        assert_eq!(p.bucket_counts, vec![1, 2, 1]);
        assert_eq!(p.count, 4);
    }

    #[test]
    fn many_series_are_split_across_requests() {
        let r = Registry::new();
        let g =
            GaugeVec::new(Opts::new("memdrift_window_mean", "mean"), &["cohort"]).expect("valid");
        r.register(Box::new(g.clone())).expect("registers");
        let c = IntCounterVec::new(Opts::new("memdrift_samples_total", "n"), &["signal"])
            .expect("valid");
        r.register(Box::new(c.clone())).expect("registers");
        let series = 2 * MAX_POINTS_PER_REQUEST + 10;
        for i in 0..series {
            g.with_label_values(&[&i.to_string()]).set(i as f64);
        }
        c.with_label_values(&["rss"]).inc();
        let requests = encode(&r.gather(), &[], 0, 1);
        let points: Vec<usize> = requests.iter().map(|(_, n)| *n).collect();
        assert!(
            points.iter().all(|n| *n <= MAX_POINTS_PER_REQUEST),
            "{points:?}"
        );
        assert_eq!(points.iter().sum::<usize>(), series + 1);
        let mut seen = 0;
        for (req, n) in &requests {
            let in_request: usize = req.resource_metrics[0].scope_metrics[0]
                .metrics
                .iter()
                .map(|m| match &m.data {
                    Some(metric::Data::Gauge(g)) => g.data_points.len(),
                    Some(metric::Data::Sum(s)) => s.data_points.len(),
                    _ => 0,
                })
                .sum();
            assert_eq!(in_request, *n);
            seen += in_request;
        }
        assert_eq!(seen, series + 1);
    }
}
