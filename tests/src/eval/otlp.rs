//! Records -> OTLP/JSON lines as the Collector's `file` exporter writes them: one `TracesData` or `MetricsData`
//! object per line, in the order a [`Delivery`] gives.

use std::io::{BufWriter, Write};
use std::path::Path;

use opentelemetry_proto::tonic::metrics::v1::{
    metric, number_data_point, Gauge, Metric, MetricsData, NumberDataPoint, ResourceMetrics,
    ScopeMetrics,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, TracesData};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::{Data, Delivery, MetricName, PointRec, Scenario, Source, SpanRec, T0};
use crate::{int, resource, span, string};

/// Spans of one instance in one line (in order), and the SDK's flush interval (Collector delivery).
const STEP_NS: u64 = 10_000_000_000;
const SDK_FLUSH_S: f64 = 5.0;
/// The Collector cuts a line every this many seconds of arrival.
const COLLECTOR_LINE_S: f64 = 2.0;

/// Writes the scenario's lines to `path`; returns the number of lines.
pub fn write(s: &Scenario, path: &Path) -> std::io::Result<u64> {
    let mut out = BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    let lines = match &s.data {
        Data::Spans(spans) => write_spans(s, spans, &mut out)?,
        Data::Metrics { metric, points } => write_metrics(s, *metric, points, &mut out)?,
    };
    out.flush()?;
    Ok(lines)
}

fn span_of(n: u64, r: &SpanRec) -> Span {
    span(
        n,
        r.t_ns,
        vec![
            string("gen_ai.operation.name", "chat"),
            string("gen_ai.request.model", "small-model"),
            int("memspan.rss.start", r.rss_start),
            int("memspan.rss.end", r.rss_end),
            int("memspan.heap.allocated", r.heap),
            int("memspan.request.allocated", r.request),
            int("memspan.limit", r.limit),
        ],
    )
}

fn source_resource(s: &Scenario, source: u32) -> Resource {
    match s.sources.get(source as usize) {
        Some(src) => resource(&src.service, &src.version, &src.instance),
        None => Resource::default(),
    }
}

/// A batch of one source's spans (indices into the records), as one `ResourceSpans`; flushes with the same
/// `line` share a line.
struct Flush {
    source: u32,
    arrival_s: f64,
    line: i64,
    spans: Vec<usize>,
}

/// One instance's spans per engine step, all aligned: nothing can arrive late.
fn in_order_flushes(spans: &[SpanRec], order: Vec<usize>) -> Vec<Flush> {
    let mut flushes: Vec<Flush> = Vec::new();
    for i in order {
        let r = &spans[i];
        let step = r.t_ns.saturating_sub(T0).div_ceil(STEP_NS);
        match flushes.last_mut() {
            Some(f) if f.source == r.source && f.line == step as i64 => f.spans.push(i),
            _ => flushes.push(Flush {
                source: r.source,
                arrival_s: (step * STEP_NS) as f64 / 1e9,
                line: step as i64,
                spans: vec![i],
            }),
        }
    }
    flushes
}

/// Each SDK flushing every 5 s at its own phase, a share of flushes retried late; a line per 2 s of arrival.
fn collector_flushes(
    s: &Scenario,
    spans: &[SpanRec],
    order: Vec<usize>,
    retry_share: f64,
) -> Vec<Flush> {
    let mut rng = StdRng::seed_from_u64(s.seed ^ 0xde11_7e55);
    let phases: Vec<f64> = (0..s.sources.len())
        .map(|_| rng.random_range(0.0..SDK_FLUSH_S))
        .collect();
    let mut flushes: Vec<Flush> = Vec::new();
    let mut current: Option<(u32, i64)> = None;
    for i in order {
        let r = &spans[i];
        let phase = phases.get(r.source as usize).copied().unwrap_or(0.0);
        let t = r.t_ns.saturating_sub(T0) as f64 / 1e9;
        let k = ((t - phase) / SDK_FLUSH_S).ceil() as i64;
        if current == Some((r.source, k)) {
            if let Some(f) = flushes.last_mut() {
                f.spans.push(i);
            }
            continue;
        }
        current = Some((r.source, k));
        let mut arrival_s = phase + k as f64 * SDK_FLUSH_S + rng.random_range(0.0..0.2);
        if rng.random::<f64>() < retry_share {
            arrival_s += rng.random_range(5.0..30.0);
        }
        flushes.push(Flush {
            source: r.source,
            arrival_s,
            line: (arrival_s / COLLECTOR_LINE_S).floor() as i64,
            spans: vec![i],
        });
    }
    flushes
}

fn write_spans(s: &Scenario, spans: &[SpanRec], out: &mut impl Write) -> std::io::Result<u64> {
    let mut order: Vec<usize> = (0..spans.len()).collect();
    order.sort_by_key(|&i| (spans[i].source, spans[i].t_ns));
    let mut flushes = match s.delivery {
        Delivery::InOrder => in_order_flushes(spans, order),
        Delivery::Collector { retry_share, .. } => collector_flushes(s, spans, order, retry_share),
    };
    flushes.sort_by(|a, b| a.arrival_s.total_cmp(&b.arrival_s));
    let mut lines = 0;
    let mut n = 0u64;
    let mut i = 0;
    while i < flushes.len() {
        let line = flushes[i].line;
        let mut resource_spans = Vec::new();
        while i < flushes.len() && flushes[i].line == line {
            let f = &flushes[i];
            let batch = f
                .spans
                .iter()
                .map(|&k| {
                    n += 1;
                    span_of(n, &spans[k])
                })
                .collect();
            resource_spans.push(ResourceSpans {
                resource: Some(source_resource(s, f.source)),
                scope_spans: vec![ScopeSpans {
                    spans: batch,
                    ..Default::default()
                }],
                ..Default::default()
            });
            i += 1;
        }
        serde_json::to_writer(&mut *out, &TracesData { resource_spans })?;
        out.write_all(b"\n")?;
        lines += 1;
    }
    Ok(lines)
}

fn gauge(name: &str, points: Vec<NumberDataPoint>) -> Metric {
    Metric {
        name: name.into(),
        unit: "By".into(),
        data: Some(metric::Data::Gauge(Gauge {
            data_points: points,
        })),
        ..Default::default()
    }
}

fn point(t_ns: u64, v: i64) -> NumberDataPoint {
    NumberDataPoint {
        time_unix_nano: t_ns,
        value: Some(number_data_point::Value::AsInt(v)),
        ..Default::default()
    }
}

/// A point of a pod in a line: event time (ns), level and limit (bytes).
pub type Point = (u64, i64, Option<i64>);

/// One pod's points in a line, as kubeletstats (with k8sattributes) or an SDK's process metrics report them.
pub fn metrics_resource(metric: MetricName, src: &Source, points: &[Point]) -> ResourceMetrics {
    let (attributes, mut metrics) = match metric {
        MetricName::WorkingSet => (
            vec![
                string("service.name", &src.service),
                string("k8s.namespace.name", "inference"),
                string("k8s.pod.name", &src.instance),
                string("k8s.container.name", "server"),
            ],
            vec![gauge(
                metric.name(),
                points.iter().map(|(t, v, _)| point(*t, *v)).collect(),
            )],
        ),
        MetricName::ProcessUsage => (
            vec![
                string("service.name", &src.service),
                string("service.version", &src.version),
                string("service.instance.id", &src.instance),
            ],
            vec![gauge(
                metric.name(),
                points.iter().map(|(t, v, _)| point(*t, *v)).collect(),
            )],
        ),
    };
    let limits: Vec<NumberDataPoint> = points
        .iter()
        .filter_map(|(t, _, l)| l.map(|l| point(*t, l)))
        .collect();
    if !limits.is_empty() {
        metrics.push(gauge("k8s.container.memory.limit.current", limits));
    }
    ResourceMetrics {
        resource: Some(Resource {
            attributes,
            ..Default::default()
        }),
        scope_metrics: vec![ScopeMetrics {
            metrics,
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn write_metrics(
    s: &Scenario,
    metric: MetricName,
    points: &[PointRec],
    out: &mut impl Write,
) -> std::io::Result<u64> {
    // Scrape number of each point: its rank among the distinct scrape times.
    let mut times: Vec<u64> = points.iter().map(|p| p.t_ns).collect();
    times.sort_unstable();
    times.dedup();
    let scrape = |t: u64| times.partition_point(|x| *x < t) as u64;
    let line_key = |p: &PointRec| -> (u64, u64) {
        match s.delivery {
            Delivery::InOrder => (scrape(p.t_ns), 0),
            Delivery::Collector { group, .. } => (
                scrape(p.t_ns) / 2,
                u64::from(p.source) / group.max(1) as u64,
            ),
        }
    };
    let mut order: Vec<usize> = (0..points.len()).collect();
    order.sort_by_key(|&i| (line_key(&points[i]), points[i].source, points[i].t_ns));
    let mut lines = 0;
    let mut i = 0;
    while i < order.len() {
        let key = line_key(&points[order[i]]);
        let mut resource_metrics = Vec::new();
        while i < order.len() && line_key(&points[order[i]]) == key {
            let source = points[order[i]].source;
            let mut mine = Vec::new();
            while i < order.len()
                && line_key(&points[order[i]]) == key
                && points[order[i]].source == source
            {
                let p = &points[order[i]];
                mine.push((p.t_ns, p.value, p.limit));
                i += 1;
            }
            if let Some(src) = s.sources.get(source as usize) {
                resource_metrics.push(metrics_resource(metric, src, &mine));
            }
        }
        serde_json::to_writer(&mut *out, &MetricsData { resource_metrics })?;
        out.write_all(b"\n")?;
        lines += 1;
    }
    Ok(lines)
}
