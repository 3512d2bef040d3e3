//! Spans -> samples, by the MemorySpan attribute convention.

use std::sync::Arc;

use super::model::{KeyValue, TraceRequest};

use super::value::{bytes_value, label_value};
use super::{DropReason, ExtractConfig, ExtractStats, RefuseReason};
use crate::sample::{MemorySample, SpanId, TraceId, LATEST_EVENT_TIME};
use crate::signal::{Signal, SignalValues};

/// Who sent a batch: read once per resource and shared by all its samples.
pub(super) struct ResourceContext {
    pub service: Arc<str>,
    pub instance: Arc<str>,
    /// The resource's value for each cohort attribute, in the configured order.
    pub cohorts: Vec<Option<Arc<str>>>,
    /// The last cohort an item (span or point) named itself: its neighbours mostly name the same one, and
    /// share it, so the engine sees one source's run of samples as one.
    item_last: Option<Arc<str>>,
}

impl ResourceContext {
    pub fn new(attrs: &[KeyValue<'_>], config: &ExtractConfig, stats: &mut ExtractStats) -> Self {
        let mut find = |key: &str| {
            let (label, shortened) = attrs
                .iter()
                .find(|kv| kv.key == key.as_bytes())
                .and_then(|kv| label_value(kv.value.as_ref()))?;
            stats.labels_shortened += u64::from(shortened);
            Some(label)
        };
        // The SDKs' own fallback when no service name is configured.
        let service = find("service.name").unwrap_or_else(|| "unknown_service".to_string());
        let instance = find("service.instance.id")
            .or_else(|| find("host.name"))
            .or_else(|| find("k8s.pod.name"))
            .unwrap_or_else(|| "unknown".to_string());
        ResourceContext {
            service: service.into(),
            instance: instance.into(),
            cohorts: config
                .cohort_attributes
                .iter()
                .map(|k| find(k).map(Arc::from))
                .collect(),
            item_last: None,
        }
    }

    /// The cohort by precedence: the first configured attribute that is present, on the item (span or point)
    /// before the resource. `item_best` is the index and value of the first configured attribute the item had.
    pub fn cohort(&mut self, item_best: Option<(usize, String)>) -> Option<Arc<str>> {
        let resource_best = self
            .cohorts
            .iter()
            .enumerate()
            .find_map(|(i, c)| c.as_ref().map(|c| (i, c)));
        match (item_best, resource_best) {
            (Some((i, v)), Some((j, _))) if i <= j => Some(self.item_named(v)),
            (_, Some((_, c))) => Some(c.clone()),
            (Some((_, v)), None) => Some(self.item_named(v)),
            (None, None) => None,
        }
    }

    /// The shared name of an item's cohort `v`.
    fn item_named(&mut self, v: String) -> Arc<str> {
        match &self.item_last {
            Some(last) if **last == *v => last.clone(),
            _ => self.item_last.insert(Arc::from(v)).clone(),
        }
    }
}

/// The first configured cohort attribute among `attrs`, as (its rank in the configuration, its value).
pub(super) fn item_cohort(
    attrs: &[KeyValue<'_>],
    config: &ExtractConfig,
    stats: &mut ExtractStats,
) -> Option<(usize, String)> {
    let mut best: Option<(usize, String)> = None;
    for kv in attrs {
        if let Some(rank) = config
            .cohort_attributes
            .iter()
            .position(|k| k.as_bytes() == kv.key)
        {
            if best.as_ref().is_none_or(|(b, _)| rank < *b) {
                if let Some((v, shortened)) = label_value(kv.value.as_ref()) {
                    stats.labels_shortened += u64::from(shortened);
                    best = Some((rank, v));
                }
            }
        }
    }
    best
}

pub(super) fn trace_id(bytes: &[u8]) -> Option<TraceId> {
    let id: TraceId = bytes.try_into().ok()?;
    (id != [0; 16]).then_some(id)
}

/// A span id, when it is a valid one (8 bytes, not all zero).
fn span_id(bytes: &[u8]) -> Option<SpanId> {
    let id: SpanId = bytes.try_into().ok()?;
    (id != [0; 8]).then_some(id)
}

/// Extracts the samples of a batch of spans, appending to `out`.
pub fn extract_spans(
    request: &TraceRequest<'_>,
    config: &ExtractConfig,
    out: &mut Vec<MemorySample>,
    stats: &mut ExtractStats,
) {
    for (resource, spans) in request.resource_spans() {
        let mut ctx = ResourceContext::new(resource, config, stats);
        for span in spans {
            stats.spans += 1;
            let attributes = request.attributes(span);
            let mut values = SignalValues::default();
            let mut had_memory = false;
            for kv in attributes {
                let Some(signal) = Signal::from_span_attribute(kv.key) else {
                    continue;
                };
                had_memory = true;
                match bytes_value(kv.value.as_ref()) {
                    Ok(v) => values.set(signal, v),
                    Err(reason) => stats.drop_value(reason),
                }
            }
            if !had_memory {
                stats.refuse(RefuseReason::NoMemoryAttributes);
                continue;
            }
            if values.is_empty() {
                stats.refuse(RefuseReason::InvalidValues);
                continue;
            }
            let time = if span.end_time_unix_nano != 0 {
                span.end_time_unix_nano
            } else {
                span.start_time_unix_nano
            };
            if time == 0 {
                stats.refuse(RefuseReason::NoTimestamp);
                continue;
            }
            if time > LATEST_EVENT_TIME {
                for _ in values.iter() {
                    stats.drop_value(DropReason::FutureTimestamp);
                }
                stats.refuse(RefuseReason::InvalidValues);
                continue;
            }
            if let (Some(start), Some(end)) =
                (values.get(Signal::RssStart), values.get(Signal::RssEnd))
            {
                values.set(Signal::RssDelta, end - start);
            }
            for (signal, _) in values.iter() {
                stats.values_by_signal[signal as usize] += 1;
            }
            stats.spans_accepted += 1;
            out.push(MemorySample {
                service: ctx.service.clone(),
                instance: ctx.instance.clone(),
                cohort: ctx.cohort(item_cohort(attributes, config, stats)),
                time_unix_nano: time,
                trace_id: trace_id(span.trace_id),
                span_id: span_id(span.span_id),
                values,
            });
        }
    }
}
