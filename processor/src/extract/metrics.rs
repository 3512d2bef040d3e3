//! OTLP gauge and sum points -> samples, for services that export memory metrics and no memspan spans.

use super::model::{MetricsRequest, PointValue};

use super::spans::{item_cohort, ResourceContext};
use super::value::check_bytes;
use super::SPLIT_METRICS;
use super::{ExtractConfig, ExtractStats};
use crate::extract::DropReason;
use crate::sample::{MemorySample, LATEST_EVENT_TIME};
use crate::signal::{Signal, SignalValues};

/// `go.memory.limit` at or above this (2^62 bytes) is the runtime's "unset" (math.MaxInt64).
const NO_GO_MEMORY_LIMIT: f64 = 4.611_686_018_427_388e18;

/// Extracts one sample per number point of every metric named in the metric table. Other metrics, and
/// histogram-like points, are not memory levels and are passed over without counting as errors.
pub fn extract_metrics(
    request: &MetricsRequest<'_>,
    config: &ExtractConfig,
    out: &mut Vec<MemorySample>,
    stats: &mut ExtractStats,
) {
    for (resource, metrics) in request.resource_metrics() {
        let mut ctx = ResourceContext::new(resource, config, stats);
        for metric in metrics {
            let Ok(name) = std::str::from_utf8(metric.name) else {
                continue;
            };
            let split = SPLIT_METRICS.iter().find(|(m, _, _)| *m == name);
            let signal = config.metric_signals.get(name).copied();
            if (signal.is_none() && split.is_none()) || metric.kind.is_none() {
                continue;
            }
            for point in request.points(metric) {
                let signal = match (signal, split) {
                    (Some(s), _) => s,
                    (None, Some((_, attr, by_value))) => {
                        match split_signal(request.attributes(point), attr, by_value) {
                            Some(s) => s,
                            None => continue,
                        }
                    }
                    (None, None) => continue,
                };
                stats.metric_points += 1;
                let raw = match point.value {
                    Some(PointValue::AsDouble(d)) => d,
                    Some(PointValue::AsInt(i)) => i as f64,
                    None => {
                        stats.drop_value(DropReason::WrongType);
                        continue;
                    }
                };
                // The Go runtime reports "no GOMEMLIMIT" as the largest int64: no limit, not a bad value.
                if signal == Signal::GoMemoryLimit && raw >= NO_GO_MEMORY_LIMIT {
                    continue;
                }
                let value = match check_bytes(raw, false) {
                    Ok(v) => v,
                    Err(reason) => {
                        stats.drop_value(reason);
                        continue;
                    }
                };
                if point.time_unix_nano == 0 {
                    stats.drop_value(DropReason::NoTimestamp);
                    continue;
                }
                if point.time_unix_nano > LATEST_EVENT_TIME {
                    stats.drop_value(DropReason::FutureTimestamp);
                    continue;
                }
                let mut values = SignalValues::default();
                values.set(signal, value);
                stats.values_by_signal[signal as usize] += 1;
                stats.metric_points_accepted += 1;
                out.push(MemorySample {
                    service: ctx.service.clone(),
                    instance: ctx.instance.clone(),
                    cohort: ctx.cohort(item_cohort(request.attributes(point), config, stats)),
                    time_unix_nano: point.time_unix_nano,
                    trace_id: None,
                    span_id: None,
                    values,
                });
            }
        }
    }
}

/// The signal a point of a split metric feeds, by its attribute's string value; `None` for other values.
fn split_signal(
    attributes: &[super::model::KeyValue<'_>],
    attr: &str,
    by_value: &[(&str, Signal)],
) -> Option<Signal> {
    let kv = attributes.iter().find(|kv| kv.key == attr.as_bytes())?;
    let Some(super::model::Value::String(value)) = kv.value.as_ref()?.value else {
        return None;
    };
    by_value
        .iter()
        .find(|(v, _)| v.as_bytes() == value)
        .map(|(_, s)| *s)
}
