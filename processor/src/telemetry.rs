//! Self-telemetry: the Prometheus names of DESIGN.md, plus the per-cohort window summaries as gauges.

use std::collections::{HashMap, HashSet};

use prometheus::{GaugeVec, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry};

use crate::engine::{ClosedWindow, Engine, Scope};
use crate::extract::{DropReason, ExtractStats};
use crate::signal::Signal;

/// Every metric the service exposes about itself. Cheap to clone (the metrics are shared handles).
#[derive(Clone)]
pub struct Telemetry {
    pub registry: Registry,
    pub accepted_spans: IntCounter,
    pub refused_spans: IntCounterVec,
    pub accepted_metric_points: IntCounter,
    pub log_records: IntCounter,
    pub labels_shortened: IntCounter,
    pub connections_closed: IntCounterVec,
    pub evicted_services: IntCounter,
    pub samples: IntCounterVec,
    pub dropped_values: IntCounterVec,
    pub failed_requests: IntCounterVec,
    pub keys: IntGaugeVec,
    /// `memdrift_sources`: live (service, instance) sources.
    pub sources: prometheus::IntGauge,
    pub windows_closed: IntCounter,
    pub anomalies: IntCounterVec,
    pub checkpoints: IntCounter,
    pub checkpoint_failures: IntCounterVec,
    pub checkpoint_bytes: prometheus::IntGauge,
    /// `memdrift_exporter_{sent,failed,dropped,retries}_total{exporter,signal}`, `memdrift_exporter_queue_size`.
    pub exporter: memdrift_exporter::otlp::ExporterMetrics,
    window: [GaugeVec; 6],
    published: std::sync::Arc<std::sync::Mutex<HashSet<[String; 3]>>>,
    /// Detector gauges by name, registered on first sight.
    derived: std::sync::Arc<std::sync::Mutex<HashMap<&'static str, GaugeVec>>>,
}

const WINDOW_STATS: [&str; 6] = ["count", "mean", "sd", "median", "mad", "p95"];

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("static metric definition is valid");
    registry
        .register(Box::new(c.clone()))
        .expect("metric names are unique");
    c
}

fn gauge(registry: &Registry, name: &str, help: &str) -> prometheus::IntGauge {
    let g = prometheus::IntGauge::new(name, help).expect("static metric definition is valid");
    registry
        .register(Box::new(g.clone()))
        .expect("metric names are unique");
    g
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels)
        .expect("static metric definition is valid");
    registry
        .register(Box::new(c.clone()))
        .expect("metric names are unique");
    c
}

impl Telemetry {
    pub fn new() -> Telemetry {
        let registry = Registry::new();
        let r = &registry;
        let keys = IntGaugeVec::new(
            Opts::new("memdrift_keys", "Live state keys (series) by kind."),
            &["kind"],
        )
        .expect("valid");
        r.register(Box::new(keys.clone())).expect("unique");
        let window = WINDOW_STATS.map(|stat| {
            let g = GaugeVec::new(
                Opts::new(
                    format!("memdrift_window_{stat}"),
                    format!("The {stat} of a cohort's signal over the last closed window (bytes, or samples for count)."),
                ),
                &["service", "cohort", "signal"],
            )
            .expect("valid");
            r.register(Box::new(g.clone())).expect("unique");
            g
        });
        let t = Telemetry {
            accepted_spans: counter(
                r,
                "memdrift_receiver_accepted_spans_total",
                "Spans that gave a memory sample the engine kept (not late, not over the key cap, not from the future).",
            ),
            refused_spans: counter_vec(
                r,
                "memdrift_receiver_refused_spans_total",
                "Spans that gave no sample, by reason.",
                &["reason"],
            ),
            accepted_metric_points: counter(
                r,
                "memdrift_receiver_accepted_metric_points_total",
                "Metric points that gave a memory value the engine kept.",
            ),
            log_records: counter(
                r,
                "memdrift_receiver_log_records_total",
                "Log records received (accepted and not used: logs carry no memory samples).",
            ),
            connections_closed: counter_vec(
                r,
                "memdrift_connections_closed_total",
                "Connections memdrift closed or refused, by server and reason: over_limit (at the cap, every \
                 connection busy), evicted_silent (made room at the cap), silent (no first bytes in \
                 header_read_timeout), idle (quiet past idle_timeout), accept_error.",
                &["server", "reason"],
            ),
            evicted_services: counter(
                r,
                "memdrift_evicted_services_total",
                "Services forgotten early at the key cap (windows.max_keys), the idlest first, to let a new one in.",
            ),
            labels_shortened: counter(
                r,
                "memdrift_receiver_labels_shortened_total",
                "Service, instance or cohort labels over 128 bytes, kept as their first bytes and a hash.",
            ),
            samples: counter_vec(
                r,
                "memdrift_samples_total",
                "Values read, by signal.",
                &["signal"],
            ),
            dropped_values: counter_vec(
                r,
                "memdrift_dropped_values_total",
                "Values dropped, by reason.",
                &["reason"],
            ),
            failed_requests: counter_vec(
                r,
                "memdrift_receiver_failed_requests_total",
                "Export requests answered with an error, by transport and reason.",
                &["transport", "reason"],
            ),
            keys,
            sources: gauge(
                r,
                "memdrift_sources",
                "Live sources ((service, instance) pairs) the engine keeps event time for; an instance's \
                 series are counted in memdrift_keys{kind=\"instance\"}, for the signals a detector reads.",
            ),
            windows_closed: counter(
                r,
                "memdrift_windows_closed_total",
                "Event-time windows closed.",
            ),
            checkpoints: counter(
                r,
                "memdrift_checkpoints_total",
                "Checkpoints of the engine's and detectors' state written (service.checkpoint).",
            ),
            checkpoint_failures: counter_vec(
                r,
                "memdrift_checkpoint_failures_total",
                "Checkpoints that could not be written (operation=save) or read back at start (operation=restore: \
                 corrupt, another format version, other settings); memdrift carries on either way.",
                &["operation"],
            ),
            checkpoint_bytes: gauge(
                r,
                "memdrift_checkpoint_bytes",
                "Size of the last checkpoint written.",
            ),
            anomalies: counter_vec(
                r,
                "memdrift_anomalies_total",
                "Anomaly events emitted, by kind.",
                &["kind"],
            ),
            exporter: memdrift_exporter::otlp::ExporterMetrics::register(r)
                .expect("metric names are unique"),
            window,
            published: Default::default(),
            derived: Default::default(),
            registry,
        };
        // Known label values start at zero, so rates and absent-alerts work from the first scrape.
        for reason in crate::extract::RefuseReason::ALL {
            t.refused_spans.with_label_values(&[reason.name()]);
        }
        for reason in DropReason::ALL {
            t.dropped_values.with_label_values(&[reason.name()]);
        }
        for kind in memdrift_exporter::AnomalyKind::ALL {
            t.anomalies.with_label_values(&[kind.name()]);
        }
        for kind in ["cohort", "instance"] {
            t.keys.with_label_values(&[kind]);
        }
        if let Err(e) = memdrift_exporter::prometheus::register_process_metrics(&t.registry) {
            tracing::warn!(error = %e, "process metrics unavailable");
        }
        t
    }

    /// What extraction found in one request; what was accepted is recorded once the engine has kept it.
    pub fn record_extract(&self, stats: &ExtractStats) {
        for (reason, n) in &stats.refused {
            self.refused_spans
                .with_label_values(&[reason.name()])
                .inc_by(*n);
        }
        for (reason, n) in &stats.dropped_values {
            self.dropped_values
                .with_label_values(&[reason.name()])
                .inc_by(*n);
        }
        for (signal, n) in stats.samples_by_signal() {
            self.samples.with_label_values(&[signal.name()]).inc_by(n);
        }
        self.labels_shortened.inc_by(stats.labels_shortened);
    }

    pub fn record_engine_drops(&self, dropped: &[(DropReason, Signal)]) {
        for (reason, _) in dropped {
            self.dropped_values
                .with_label_values(&[reason.name()])
                .inc();
        }
    }

    pub fn record_keys(&self, engine: &Engine) {
        for (kind, n) in engine.live_keys_by_kind() {
            self.keys.with_label_values(&[kind]).set(n as i64);
        }
        self.sources.set(engine.live_sources() as i64);
        let evicted = engine.stats().evicted_services;
        self.evicted_services
            .inc_by(evicted.saturating_sub(self.evicted_services.get()));
    }

    /// Publishes the cohort summaries of a closed window and removes gauges of cohorts absent from it, so the
    /// exposition never holds more series than the engine holds keys.
    pub fn publish_window(&self, window: &ClosedWindow) {
        self.windows_closed.inc();
        let Ok(mut published) = self.published.lock() else {
            return;
        };
        let mut now = HashSet::new();
        for s in &window.summaries {
            let Scope::Cohort(cohort) = &s.key.group.scope else {
                continue;
            };
            let labels = [
                s.key.group.service.to_string(),
                cohort.as_deref().unwrap_or("").to_string(),
                s.key.signal.name().to_string(),
            ];
            let l = [labels[0].as_str(), labels[1].as_str(), labels[2].as_str()];
            let values = [s.count as f64, s.mean, s.sd, s.median, s.mad, s.p95];
            for (gauge, v) in self.window.iter().zip(values) {
                gauge.with_label_values(&l).set(v);
            }
            now.insert(labels);
        }
        for gone in published.difference(&now) {
            let l = [gone[0].as_str(), gone[1].as_str(), gone[2].as_str()];
            for gauge in &self.window {
                let _ = gauge.remove_label_values(&l);
            }
        }
        *published = now;
    }

    /// Replaces the detectors' gauges with `gauges`: every series absent from it is removed, so the exposition
    /// holds only what the detectors hold.
    pub fn publish_gauges(&self, gauges: &[crate::detect::Gauge]) {
        let Ok(mut derived) = self.derived.lock() else {
            return;
        };
        for vec in derived.values() {
            vec.reset();
        }
        for g in gauges {
            let names: Vec<&str> = g.labels.iter().map(|(k, _)| *k).collect();
            let vec = match derived.get(g.name) {
                Some(v) => v.clone(),
                None => {
                    let Ok(v) = GaugeVec::new(Opts::new(g.name, g.help), &names) else {
                        continue;
                    };
                    if self.registry.register(Box::new(v.clone())).is_err() {
                        continue;
                    }
                    derived.insert(g.name, v.clone());
                    v
                }
            };
            let values: Vec<&str> = g.labels.iter().map(|(_, v)| v.as_str()).collect();
            if let Ok(series) = vec.get_metric_with_label_values(&values) {
                series.set(g.value);
            }
        }
    }

    pub fn render(&self) -> String {
        memdrift_exporter::prometheus::render(&self.registry)
    }
}

impl Default for Telemetry {
    fn default() -> Self {
        Telemetry::new()
    }
}
