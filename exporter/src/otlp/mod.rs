//! OTLP export: anomaly events as logs and spans, the metrics registry as metrics, to any OTLP backend.
//!
//! ```text
//! export(anomalies) --encode--> logs queue   --sender task--> backend (gRPC or HTTP/protobuf)
//!                          \--> traces queue --sender task--> backend
//! metrics timer --gather registry--> metrics queue --sender task--> backend
//! ```
//!
//! Delivery is at least once. `export` returns once the batches are queued (on disk and fsynced, with an on-disk
//! queue); a sender removes a batch only after the backend accepted it or refused it for good (see
//! [`retry`] for which answers are retried). A batch the backend took whose removal did not reach the disk
//! before a crash is sent again after the restart, so a backend may see an event twice. An event is lost only
//! where a counter says so: refused for being over the queue's bounds (`dropped`), refused for good by the
//! backend or retried past `max_elapsed_time` (`failed`), found corrupt in the on-disk queue (`dropped`, see
//! [`disk`]), or left in a memory queue at exit (`dropped`). Each
//! signal has its own queue and sender, so a backend refusing one signal does not hold up the others. Metric
//! snapshots stay in memory: a newer snapshot supersedes them.
//!
//! Shutdown sends a last metrics snapshot, then drains the queues until empty or the deadline; what is left
//! stays on disk for the next start, or is counted as dropped when the queue is in memory.

pub mod counters;
pub mod disk;
pub mod encode;
pub mod env;
pub mod metrics;
pub mod queue;
pub mod retry;
mod signal;
pub mod transport;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use prometheus::Registry;
use prost::Message;
use rand::rngs::StdRng;
use rand::SeedableRng;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

pub use counters::ExporterMetrics;
pub use retry::{Backoff, RetryConfig, Verdict};
pub use signal::Signal;
pub use transport::{Attempt, Compression, Headers, Protocol, Target};

use crate::Anomaly;
use queue::{Batch, Queue};

/// The label value of this exporter in `memdrift_exporter_*{exporter}`.
pub const EXPORTER_NAME: &str = "otlp";

/// Anomaly events per request, so a burst (a shared dependency upsetting every service at once) still goes out
/// in requests of a size any receiver takes.
pub const MAX_EVENTS_PER_REQUEST: usize = 500;

/// Metric batches waiting, at most: a snapshot supersedes the ones before it, so during an outage a few are
/// worth keeping, not `queue.size` of them (each up to [`metrics::MAX_POINTS_PER_REQUEST`] points).
pub const METRICS_QUEUE_BATCHES: usize = 64;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueConfig {
    /// Log and trace batches waiting per signal, in memory or on disk; beyond it new batches are dropped and
    /// counted. Metrics keep at most [`METRICS_QUEUE_BATCHES`].
    pub size: usize,
    /// When set, logs and traces queue in `<directory>/logs` and `<directory>/traces` and survive a restart.
    pub directory: Option<PathBuf>,
    /// Bytes of segment files per signal on disk.
    pub max_disk_bytes: u64,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            size: 1000,
            directory: None,
            max_disk_bytes: 256 << 20,
        }
    }
}

/// A resolved OTLP exporter: every setting decided (the pipeline loader applies the file, then the standard
/// environment variables, then these defaults).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OtlpConfig {
    /// Per signal; `None` sends nothing of that signal.
    pub logs: Option<Target>,
    pub traces: Option<Target>,
    pub metrics: Option<Target>,
    pub retry: RetryConfig,
    pub queue: QueueConfig,
    /// How often the metrics registry is sent.
    pub metrics_interval: Duration,
    /// How long shutdown keeps delivering what is queued.
    pub shutdown_timeout: Duration,
    /// Resource attributes of memdrift's own metrics (`service.name` = memdrift, ...). Anomaly logs and spans
    /// are filed under the affected service instead.
    pub resource: Vec<(String, String)>,
}

impl OtlpConfig {
    pub fn target(&self, signal: Signal) -> Option<&Target> {
        match signal {
            Signal::Logs => self.logs.as_ref(),
            Signal::Traces => self.traces.as_ref(),
            Signal::Metrics => self.metrics.as_ref(),
        }
    }

    /// The default resource of memdrift's own metrics.
    pub fn default_resource() -> Vec<(String, String)> {
        vec![
            ("service.name".into(), "memdrift".into()),
            ("service.version".into(), env!("CARGO_PKG_VERSION").into()),
        ]
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("otlp exporter, {signal}: {message}")]
    Client {
        signal: &'static str,
        message: String,
    },
    #[error("otlp exporter: cannot open the on-disk queue in {dir}: {error}")]
    Disk { dir: PathBuf, error: std::io::Error },
}

/// State shared by the producers and the sender tasks.
struct Shared {
    queues: [Option<Arc<Queue>>; 3],
    metrics: ExporterMetrics,
    registry: Registry,
    resource: Vec<KeyValue>,
    start_ns: u64,
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

impl Shared {
    fn queue(&self, signal: Signal) -> Option<&Arc<Queue>> {
        self.queues[signal.index()].as_ref()
    }

    fn labels(signal: Signal) -> [&'static str; 2] {
        [EXPORTER_NAME, signal.name()]
    }

    fn update_queue_gauge(&self) {
        let n: usize = self.queues.iter().flatten().map(|q| q.len()).sum();
        self.metrics
            .queue_size
            .with_label_values(&[EXPORTER_NAME])
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    fn enqueue(&self, signal: Signal, items: usize, body: Vec<u8>) {
        let Some(queue) = self.queue(signal) else {
            return;
        };
        let items = u32::try_from(items).unwrap_or(u32::MAX);
        if let Err(e) = queue.push(Batch {
            items,
            body: Bytes::from(body),
        }) {
            self.metrics
                .dropped
                .with_label_values(&Self::labels(signal))
                .inc_by(u64::from(items));
            tracing::warn!(signal = signal.name(), items, error = %e, "otlp exporter dropped a batch");
        }
        self.update_queue_gauge();
    }

    fn export(&self, anomalies: &[Anomaly]) {
        if anomalies.is_empty()
            || (self.queue(Signal::Logs).is_none() && self.queue(Signal::Traces).is_none())
        {
            return;
        }
        for chunk in anomalies.chunks(MAX_EVENTS_PER_REQUEST) {
            let (logs, traces) = encode::encode(chunk, now_ns());
            self.enqueue(Signal::Logs, chunk.len(), logs.encode_to_vec());
            self.enqueue(Signal::Traces, chunk.len(), traces.encode_to_vec());
        }
    }

    fn export_metrics(&self) {
        if self.queue(Signal::Metrics).is_none() {
            return;
        }
        let requests = metrics::encode(
            &self.registry.gather(),
            &self.resource,
            self.start_ns,
            now_ns(),
        );
        for (request, points) in requests {
            self.enqueue(Signal::Metrics, points, request.encode_to_vec());
        }
    }
}

/// A cheap handle that queues anomaly events; clone it into whatever thread produces them.
#[derive(Clone)]
pub struct OtlpSender {
    shared: Arc<Shared>,
}

impl OtlpSender {
    /// Queues one log record and one span per event. Never waits for the network; with an on-disk queue it
    /// returns once the batches are fsynced. A full queue drops the batch and counts it.
    pub fn export(&self, anomalies: &[Anomaly]) {
        self.shared.export(anomalies);
    }

    /// Queues a snapshot of the metrics registry now (the timer does this every `metrics_interval`).
    pub fn export_metrics(&self) {
        self.shared.export_metrics();
    }
}

impl crate::output::Output for OtlpSender {
    fn name(&self) -> &'static str {
        EXPORTER_NAME
    }

    /// Queues the events; what cannot be queued is counted as dropped, never an error here.
    fn write(&mut self, events: &[Anomaly]) -> std::io::Result<()> {
        self.export(events);
        Ok(())
    }
}

/// What shutdown left behind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Drained {
    /// Batches still queued on disk, delivered after the next start.
    pub kept_on_disk: usize,
    /// Items lost with the in-memory queues.
    pub dropped_items: u64,
}

/// The running exporter: its sender tasks and metrics timer.
pub struct OtlpExporter {
    shared: Arc<Shared>,
    senders: Vec<JoinHandle<()>>,
    timer: JoinHandle<()>,
    deadline: watch::Sender<Option<Instant>>,
    shutdown_timeout: Duration,
}

impl OtlpExporter {
    /// Opens the queues (recovering what an earlier run left on disk) and starts one sender task per signal
    /// and the metrics timer. Must run inside a Tokio runtime. `metrics` are the exporter's own counters,
    /// registered on `registry`, which is what the metrics signal sends.
    pub fn start(
        config: OtlpConfig,
        metrics: ExporterMetrics,
        registry: Registry,
    ) -> Result<OtlpExporter, StartError> {
        let enabled: Vec<Signal> = Signal::ALL
            .into_iter()
            .filter(|s| config.target(*s).is_some())
            .collect();
        metrics.init(EXPORTER_NAME, &enabled);
        let mut queues: [Option<Arc<Queue>>; 3] = [None, None, None];
        let mut clients = Vec::new();
        for signal in enabled {
            let Some(target) = config.target(signal) else {
                continue;
            };
            let client =
                transport::Client::new(signal, target).map_err(|message| StartError::Client {
                    signal: signal.name(),
                    message,
                })?;
            let queue = match (&config.queue.directory, signal) {
                (Some(dir), Signal::Logs | Signal::Traces) => {
                    let dir = dir.join(signal.name());
                    let (q, recovered) =
                        Queue::disk(&dir, config.queue.size, config.queue.max_disk_bytes).map_err(
                            |error| StartError::Disk {
                                dir: dir.clone(),
                                error,
                            },
                        )?;
                    // Records found corrupt on disk are lost: counted like any other drop (the queue warned
                    // where they were).
                    metrics
                        .dropped
                        .with_label_values(&Shared::labels(signal))
                        .inc_by(recovered.corrupt_items);
                    if recovered.batches > 0 {
                        tracing::info!(
                            signal = signal.name(),
                            batches = recovered.batches,
                            dir = %dir.display(),
                            "delivering batches queued by an earlier run"
                        );
                    }
                    q
                }
                (_, Signal::Metrics) => Queue::memory(METRICS_QUEUE_BATCHES),
                _ => Queue::memory(config.queue.size),
            };
            queues[signal.index()] = Some(Arc::new(queue));
            clients.push((signal, client, target.url.clone()));
        }
        let shared = Arc::new(Shared {
            queues,
            metrics,
            registry,
            resource: config
                .resource
                .iter()
                .map(|(k, v)| encode::kv_str(k, v))
                .collect(),
            start_ns: now_ns(),
        });
        shared.update_queue_gauge();
        let (deadline, _) = watch::channel(None);
        let senders = clients
            .into_iter()
            .map(|(signal, client, url)| {
                tracing::info!(signal = signal.name(), url, "otlp exporter sending");
                let sender = Sender {
                    shared: Arc::clone(&shared),
                    signal,
                    client,
                    retry: config.retry,
                    stop: deadline.subscribe(),
                };
                tokio::spawn(sender.run())
            })
            .collect();
        let timer = {
            let shared = Arc::clone(&shared);
            let mut stop = deadline.subscribe();
            let period = config.metrics_interval.max(Duration::from_millis(10));
            tokio::spawn(async move {
                let mut ticks = tokio::time::interval_at(Instant::now() + period, period);
                ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = ticks.tick() => shared.export_metrics(),
                        // The exporter was dropped without a shutdown.
                        _ = stop.changed() => return,
                    }
                }
            })
        };
        Ok(OtlpExporter {
            shared,
            senders,
            timer,
            deadline,
            shutdown_timeout: config.shutdown_timeout,
        })
    }

    pub fn sender(&self) -> OtlpSender {
        OtlpSender {
            shared: Arc::clone(&self.shared),
        }
    }

    /// Batches waiting, all signals together.
    pub fn queued(&self) -> usize {
        self.shared.queues.iter().flatten().map(|q| q.len()).sum()
    }

    /// Sends a last metrics snapshot and delivers what is queued until done or `shutdown_timeout` has passed.
    pub async fn shutdown(self) -> Drained {
        // The timer only pushes between awaits, so aborting it never leaves half a snapshot; the last one is
        // queued before the senders learn of the deadline, or the metrics sender could stop on an empty queue.
        self.timer.abort();
        let _ = self.timer.await;
        self.shared.export_metrics();
        let deadline = Instant::now() + self.shutdown_timeout;
        let _ = self.deadline.send(Some(deadline));
        for task in self.senders {
            // Senders watch the deadline themselves; the grace covers a task stuck outside an await.
            if tokio::time::timeout_at(deadline + Duration::from_secs(1), task)
                .await
                .is_err()
            {
                tracing::warn!("an otlp sender did not stop by the shutdown deadline");
            }
        }
        let mut drained = Drained::default();
        for signal in Signal::ALL {
            let Some(q) = self.shared.queue(signal) else {
                continue;
            };
            if q.is_durable() {
                drained.kept_on_disk += q.len();
            } else {
                let lost = q.volatile_items();
                drained.dropped_items += lost;
                self.shared
                    .metrics
                    .dropped
                    .with_label_values(&Shared::labels(signal))
                    .inc_by(lost);
            }
        }
        if drained.kept_on_disk > 0 {
            tracing::info!(
                batches = drained.kept_on_disk,
                "otlp exporter stopped with batches on disk; they are sent after the next start"
            );
        }
        if drained.dropped_items > 0 {
            tracing::warn!(
                items = drained.dropped_items,
                "otlp exporter stopped before delivering everything; the rest is dropped"
            );
        }
        drained
    }
}

/// How one batch ended.
enum Delivery {
    /// Accepted (maybe partly) or given up: remove it from the queue.
    Done { sent: u64, failed: u64 },
    /// The shutdown deadline passed first: leave it queued.
    Interrupted,
}

/// The task delivering one signal's queue, oldest batch first.
struct Sender {
    shared: Arc<Shared>,
    signal: Signal,
    client: transport::Client,
    retry: RetryConfig,
    stop: watch::Receiver<Option<Instant>>,
}

impl Sender {
    async fn run(mut self) {
        let Some(queue) = self.shared.queue(self.signal).cloned() else {
            return;
        };
        let labels = Shared::labels(self.signal);
        let mut rng = StdRng::from_rng(&mut rand::rng());
        loop {
            let batch = match queue.front() {
                None => {
                    if self.stop.borrow().is_some() {
                        return;
                    }
                    tokio::select! {
                        _ = queue.pushed() => {}
                        changed = self.stop.changed() => if changed.is_err() { return },
                    }
                    continue;
                }
                Some(Err((items, e))) => {
                    tracing::error!(signal = self.signal.name(), error = %e, "skipping an unreadable queued batch");
                    self.shared
                        .metrics
                        .dropped
                        .with_label_values(&labels)
                        .inc_by(u64::from(items));
                    queue.ack();
                    self.shared.update_queue_gauge();
                    continue;
                }
                Some(Ok(batch)) => batch,
            };
            match self.deliver(&batch, &mut rng).await {
                Delivery::Done { sent, failed } => {
                    let m = &self.shared.metrics;
                    m.sent.with_label_values(&labels).inc_by(sent);
                    m.failed.with_label_values(&labels).inc_by(failed);
                    queue.ack();
                    self.shared.update_queue_gauge();
                }
                Delivery::Interrupted => return,
            }
        }
    }

    async fn deliver(&mut self, batch: &Batch, rng: &mut StdRng) -> Delivery {
        let items = u64::from(batch.items);
        let signal = self.signal.name();
        let first = Instant::now();
        let mut backoff = Backoff::new(self.retry);
        loop {
            let attempt = match until(&mut self.stop, self.client.send(batch.body.clone())).await {
                Some(a) => a,
                None => return Delivery::Interrupted,
            };
            match attempt {
                Attempt::Accepted { rejected, message } => {
                    let rejected = rejected.min(items);
                    if rejected > 0 || !message.is_empty() {
                        tracing::warn!(
                            signal,
                            rejected,
                            message,
                            "otlp backend accepted a batch in part"
                        );
                    }
                    return Delivery::Done {
                        sent: items - rejected,
                        failed: rejected,
                    };
                }
                Attempt::Failed {
                    verdict: Verdict::Permanent,
                    reason,
                } => {
                    tracing::warn!(
                        signal,
                        items,
                        reason,
                        "otlp backend refused a batch; not retried"
                    );
                    return Delivery::Done {
                        sent: 0,
                        failed: items,
                    };
                }
                Attempt::Failed {
                    verdict: Verdict::Retry { after },
                    reason,
                } => {
                    let delay = backoff.next_delay(after, rng);
                    if backoff.gives_up(first.elapsed(), delay) {
                        tracing::warn!(signal, items, reason, "otlp export still failing after retry.max_elapsed_time; giving the batch up");
                        return Delivery::Done {
                            sent: 0,
                            failed: items,
                        };
                    }
                    tracing::info!(signal, reason, delay = ?delay, "otlp export failed; retrying");
                    self.shared
                        .metrics
                        .retries
                        .with_label_values(&Shared::labels(self.signal))
                        .inc();
                    if until(&mut self.stop, tokio::time::sleep(delay))
                        .await
                        .is_none()
                    {
                        return Delivery::Interrupted;
                    }
                }
            }
        }
    }
}

/// Runs `fut`, unless the shutdown deadline (once one is set) passes first, or the exporter is gone.
async fn until<F: Future>(
    stop: &mut watch::Receiver<Option<Instant>>,
    fut: F,
) -> Option<F::Output> {
    tokio::pin!(fut);
    loop {
        let deadline = *stop.borrow_and_update();
        match deadline {
            Some(d) => return tokio::time::timeout_at(d, &mut fut).await.ok(),
            None => tokio::select! {
                out = &mut fut => return Some(out),
                changed = stop.changed() => if changed.is_err() { return None },
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::anomaly::{AnomalyState, Evidence, LeakClass};

    fn unreachable_target() -> Target {
        Target {
            protocol: Protocol::HttpProtobuf,
            // The discard port, where nothing listens on a test machine: every attempt fails and is retried.
            url: "http://127.0.0.1:9/v1/x".into(),
            headers: Headers::default(),
            compression: Compression::Gzip,
            timeout: Duration::from_secs(1),
            ca_file: None,
        }
    }

    #[tokio::test]
    async fn bursts_split_into_requests_and_full_queues_drop_and_count() {
        let config = OtlpConfig {
            logs: Some(unreachable_target()),
            traces: Some(unreachable_target()),
            metrics: None,
            retry: RetryConfig::default(),
            queue: QueueConfig {
                size: 4,
                ..QueueConfig::default()
            },
            metrics_interval: Duration::from_secs(3600),
            shutdown_timeout: Duration::ZERO,
            resource: OtlpConfig::default_resource(),
        };
        let registry = Registry::new();
        let metrics = ExporterMetrics::register(&registry).expect("registers");
        let exporter = OtlpExporter::start(config, metrics.clone(), registry).expect("starts");
        let burst: Vec<Anomaly> = (0..1200)
            .map(|i| {
                Anomaly::new(
                    AnomalyState::Open,
                    &format!("svc-{i}"),
                    "memspan.rss.end",
                    1,
                    "mann_kendall_hamed_rao+theil_sen_floor",
                    Evidence::Leak {
                        statistic: 3.0,
                        p_value: 0.001,
                        growth_bytes_per_s: 1e5,
                        classification: LeakClass::Heap,
                        limit_bytes: None,
                        limit_source: None,
                    },
                )
            })
            .collect();
        exporter.sender().export(&burst);
        // 500 + 500 + 200 events: three batches per signal.
        assert_eq!(exporter.queued(), 6);
        assert_eq!(
            metrics.queue_size.with_label_values(&[EXPORTER_NAME]).get(),
            6
        );
        // One more burst of three batches per signal overflows the queue of 4: two batches each are dropped.
        exporter.sender().export(&burst);
        assert_eq!(exporter.queued(), 8);
        let dropped = |s: Signal| metrics.dropped.with_label_values(&Shared::labels(s)).get();
        assert_eq!(dropped(Signal::Logs), 700);
        assert_eq!(dropped(Signal::Traces), 700);
        let drained = exporter.shutdown().await;
        assert_eq!(drained.kept_on_disk, 0);
        assert_eq!(drained.dropped_items, 2 * (1200 + 500));
    }

    #[tokio::test]
    async fn records_found_corrupt_on_disk_count_as_dropped() {
        let dir =
            std::env::temp_dir().join(format!("memdrift-otlp-corrupt-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let logs = dir.join(Signal::Logs.name());
        {
            let (mut q, _) = disk::DiskQueue::open(&logs, 10, 1 << 20).expect("opens");
            for items in [1, 20, 3] {
                q.push(items, &[items as u8; 40]).expect("pushes");
            }
        }
        // A flipped payload byte in the second record (12-byte headers, 40-byte payloads).
        let segment = logs.join(format!("{:020}.seg", 0));
        let mut bytes = std::fs::read(&segment).expect("reads");
        bytes[52 + 12 + 5] ^= 1;
        std::fs::write(&segment, bytes).expect("writes");
        let config = OtlpConfig {
            logs: Some(unreachable_target()),
            traces: None,
            metrics: None,
            retry: RetryConfig::default(),
            queue: QueueConfig {
                size: 10,
                directory: Some(dir.clone()),
                ..QueueConfig::default()
            },
            metrics_interval: Duration::from_secs(3600),
            shutdown_timeout: Duration::ZERO,
            resource: OtlpConfig::default_resource(),
        };
        let registry = Registry::new();
        let metrics = ExporterMetrics::register(&registry).expect("registers");
        let exporter = OtlpExporter::start(config, metrics.clone(), registry).expect("starts");
        let dropped = metrics
            .dropped
            .with_label_values(&Shared::labels(Signal::Logs))
            .get();
        assert_eq!(dropped, 20);
        assert_eq!(exporter.queued(), 2);
        let drained = exporter.shutdown().await;
        assert_eq!(drained.kept_on_disk, 2);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
