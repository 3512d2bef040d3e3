//! OTLP gauge and sum points -> samples, for services that export memory metrics and no memspan spans.

use super::model::{MetricsRequest, PointValue};

use super::spans::{item_cohort, ResourceContext};
use super::value::check_bytes;
use super::{ExtractConfig, ExtractStats};
use crate::extract::DropReason;
use crate::sample::{MemorySample, LATEST_EVENT_TIME};
use crate::signal::SignalValues;

/// Extracts one sample per number point of every metric named in the metric table. Other metrics, and
/// histogram-like points, are not memory levels and are passed over without counting as errors.
pub fn extract_metrics(
    request: &MetricsRequest<'_>,
    config: &ExtractConfig,
    out: &mut Vec<MemorySample>,
    stats: &mut ExtractStats,
) {
    for (resource, metrics) in request.resource_metrics() {
        let ctx = ResourceContext::new(resource, config, stats);
        for metric in metrics {
            let signal = std::str::from_utf8(metric.name)
                .ok()
                .and_then(|name| config.metric_signals.get(name));
            let Some(&signal) = signal else {
                continue;
            };
            if metric.kind.is_none() {
                continue;
            }
            for point in request.points(metric) {
                stats.metric_points += 1;
                let raw = match point.value {
                    Some(PointValue::AsDouble(d)) => d,
                    Some(PointValue::AsInt(i)) => i as f64,
                    None => {
                        stats.drop_value(DropReason::WrongType);
                        continue;
                    }
                };
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
