//! The exporter's own metrics, registered on the service's Prometheus registry so they are scraped and exported
//! with everything else.

use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry};

use super::signal::Signal;

/// Counts in items (log records, spans, metric points), except the queue gauge, which counts batches.
#[derive(Clone)]
pub struct ExporterMetrics {
    pub sent: IntCounterVec,
    pub failed: IntCounterVec,
    pub dropped: IntCounterVec,
    pub retries: IntCounterVec,
    pub queue_size: IntGaugeVec,
}

impl ExporterMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<ExporterMetrics> {
        let labels = &["exporter", "signal"];
        let counter = |name: &str, help: &str| -> prometheus::Result<IntCounterVec> {
            let c = IntCounterVec::new(Opts::new(name, help), labels)?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        let queue_size = IntGaugeVec::new(
            Opts::new(
                "memdrift_exporter_queue_size",
                "Batches waiting to be sent (in memory or on disk).",
            ),
            &["exporter"],
        )?;
        registry.register(Box::new(queue_size.clone()))?;
        Ok(ExporterMetrics {
            sent: counter(
                "memdrift_exporter_sent_total",
                "Items (log records, spans, metric points) the backend accepted.",
            )?,
            failed: counter(
                "memdrift_exporter_failed_total",
                "Items given up: refused for good, rejected in a partial success, or retried past the limit.",
            )?,
            dropped: counter(
                "memdrift_exporter_dropped_total",
                "Items never queued (queue full, disk error), found corrupt in the on-disk queue, or left in memory at shutdown.",
            )?,
            retries: counter(
                "memdrift_exporter_retries_total",
                "Export attempts that failed and were scheduled again.",
            )?,
            queue_size,
        })
    }

    /// Creates the series of `exporter` at zero, so rates and absence alerts work from the first scrape.
    pub fn init(&self, exporter: &str, signals: &[Signal]) {
        for s in signals {
            let l = [exporter, s.name()];
            self.sent.with_label_values(&l);
            self.failed.with_label_values(&l);
            self.dropped.with_label_values(&l);
            self.retries.with_label_values(&l);
        }
        self.queue_size.with_label_values(&[exporter]);
    }
}
