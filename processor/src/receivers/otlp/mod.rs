//! The OTLP receiver: gRPC on 4317, HTTP on 4318 (protobuf and JSON, gzip), both feeding one [`Ingest`].

pub mod budget;
pub mod grpc;
pub mod http;
pub mod json;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsPartialSuccess, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceResponse,
};
use prometheus::IntCounter;
use tokio::sync::oneshot;

use self::budget::DecodeBudget;
use crate::core::{Core, Output};
use crate::extract::model::{MetricsRequest, TraceRequest};
use crate::extract::{extract_metrics, extract_spans, DropReason, ExtractConfig, ExtractStats};
use crate::sample::MemorySample;
use crate::telemetry::Telemetry;

/// A batch of samples on its way to the engine, and where the engine says what it did not keep of it.
pub struct SampleBatch {
    pub samples: Vec<MemorySample>,
    pub verdict: Option<oneshot::Sender<Verdict>>,
}

/// What the engine thread is handed.
pub enum EngineWork {
    /// Samples to run through the core.
    Batch(SampleBatch),
    /// What a receiver's own run through the core produced (windows, findings, drops), for the engine thread
    /// to publish and write to the sinks: a slow sink never stalls a receiver.
    Publish(Output),
    /// Nothing to do: look whether the service is stopping.
    Wake,
}

/// The engine as the receivers see it: its bounded queue, and the core itself.
///
/// A request that finds the core free and nothing queued runs its samples through the core on its own task and
/// has its verdict at once: no hand-off to the engine thread and back. At low rates the two wake-ups that
/// hand-off costs are a large part of an export's CPU. Otherwise the batch queues, and the engine thread takes
/// it. Order holds: a request that finds anything queued queues behind it, and the engine thread counts a batch
/// out of the queue only once the core has it.
#[derive(Clone)]
pub struct EngineInput {
    tx: SyncSender<EngineWork>,
    queued: Queued,
    /// `None`: every batch goes through the queue.
    core: Option<Arc<Mutex<Core>>>,
}

/// Work sent to the engine thread and not yet done.
#[derive(Clone, Default)]
pub struct Queued(Arc<AtomicUsize>);

impl Queued {
    /// The engine thread has done one piece of work taken from the queue. Called while it still holds the
    /// core, so that no receiver runs ahead of a batch that was queued first.
    pub fn done(&self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl EngineInput {
    /// Every batch through the queue.
    pub fn queue(tx: SyncSender<EngineWork>) -> EngineInput {
        EngineInput {
            tx,
            queued: Queued::default(),
            core: None,
        }
    }

    /// Batches run through `core` on the receiver's task when it is free and nothing is queued.
    pub fn with_core(tx: SyncSender<EngineWork>, core: Arc<Mutex<Core>>) -> EngineInput {
        EngineInput {
            core: Some(core),
            ..EngineInput::queue(tx)
        }
    }

    /// The engine thread's count of what it has done.
    pub fn queued(&self) -> Queued {
        self.queued.clone()
    }

    /// Runs `samples` through the core here if it is free and nothing waits in the queue.
    fn try_run(&self, samples: &[MemorySample]) -> Option<Output> {
        let core = self.core.as_ref()?;
        if self.queued.0.load(Ordering::Acquire) != 0 {
            return None;
        }
        // Busy (the engine thread or another receiver has it) or poisoned (a panic there): the queue.
        let mut core = core.try_lock().ok()?;
        // Queued while the lock was taken: that batch goes first.
        if self.queued.0.load(Ordering::Acquire) != 0 {
            return None;
        }
        Some(core.ingest(samples))
    }

    fn send(&self, work: EngineWork) -> Result<(), EngineWork> {
        self.queued.0.fetch_add(1, Ordering::AcqRel);
        self.tx.try_send(work).map_err(|e| {
            self.queued.0.fetch_sub(1, Ordering::AcqRel);
            match e {
                TrySendError::Full(w) | TrySendError::Disconnected(w) => w,
            }
        })
    }

    /// Hands what a receiver's run produced to the engine thread, if there is anything to publish.
    fn publish(&self, out: Output) {
        let news = !(out.windows.is_empty()
            && out.anomalies.is_empty()
            && out.gauges.is_none()
            && out.dropped.is_empty());
        if !news {
            return;
        }
        // The queue was empty a moment ago; should it have filled since, this waits for one slot rather than
        // lose findings. It fails only when the engine thread has stopped (shutdown).
        self.queued.0.fetch_add(1, Ordering::AcqRel);
        if self.tx.send(EngineWork::Publish(out)).is_err() {
            self.queued.0.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// What the engine did not keep of one batch: samples none of whose values it kept (late, over the key cap)
/// with their values, and every value it dropped, by reason. A value late for its cohort only is left out:
/// it is kept for its instance.
#[derive(Debug, Default)]
pub struct Verdict {
    pub rejected_samples: u64,
    pub rejected_values: u64,
    pub dropped: Vec<(DropReason, u64)>,
}

impl Verdict {
    pub fn of(out: &crate::core::Output) -> Verdict {
        let mut dropped: Vec<(DropReason, u64)> = Vec::new();
        for (reason, _) in out
            .dropped
            .iter()
            .filter(|(r, _)| *r != DropReason::LateForCohort)
        {
            match dropped.iter_mut().find(|(r, _)| r == reason) {
                Some((_, n)) => *n += 1,
                None => dropped.push((*reason, 1)),
            }
        }
        Verdict {
            rejected_samples: out.rejected_samples,
            rejected_values: out.rejected_sample_values,
            dropped,
        }
    }
}

/// How long an export request waits for the engine's [`Verdict`] before it is answered without one (the
/// samples are queued either way).
const VERDICT_WAIT: Duration = Duration::from_secs(2);

/// The engine's queue is full: the sender should retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Busy;

/// The path shared by every transport: extract, check clocks, count, enqueue.
pub struct Ingest {
    pub extract: ExtractConfig,
    pub telemetry: Telemetry,
    pub engine: EngineInput,
    /// Samples stamped later than now + this are dropped as `future_timestamp`.
    pub max_clock_skew_ns: u64,
    /// Memory for the requests being decoded, shared by both transports.
    pub budget: DecodeBudget,
}

/// The engine's verdict on a request: none (no samples), given already (the receiver ran the core), or to come
/// from the engine thread.
enum Answer {
    None,
    Ready(Verdict),
    Waiting(oneshot::Receiver<Verdict>),
}

/// A request whose samples are queued: its answer waits for the engine's verdict (see [`Pending::traces`]).
/// The decoded request need not be kept meanwhile.
pub struct Pending {
    stats: ExtractStats,
    /// Samples (and their values) rejected here, before the engine: stamped too far in the future.
    rejected: (u64, u64),
    verdict: Answer,
    /// `memdrift_receiver_accepted_spans_total` or `_metric_points_total`: counted once the engine has spoken.
    accepted: IntCounter,
}

impl Pending {
    /// Waits for the engine and folds what it dropped into the request's account. Returns the samples and the
    /// values rejected after extraction (here or by the engine).
    async fn settle(&mut self) -> (u64, u64) {
        let verdict = match std::mem::replace(&mut self.verdict, Answer::None) {
            Answer::Waiting(rx) => tokio::time::timeout(VERDICT_WAIT, rx)
                .await
                .ok()
                .and_then(Result::ok),
            Answer::Ready(v) => Some(v),
            Answer::None => None,
        };
        let (mut samples, mut values) = self.rejected;
        if let Some(v) = verdict {
            samples += v.rejected_samples;
            values += v.rejected_values;
            // Counted in self-telemetry by the engine; here only for the answer.
            for (reason, n) in v.dropped {
                *self.stats.dropped_values.entry(reason).or_default() += n;
            }
        }
        (samples, values)
    }

    /// The answer to a trace export: partial success when anything was rejected or dropped, with why.
    pub async fn traces(mut self) -> ExportTraceServiceResponse {
        let (samples, _) = self.settle().await;
        let stats = &self.stats;
        // A span gives one sample.
        self.accepted
            .inc_by(stats.spans_accepted.saturating_sub(samples));
        let message = stats.error_message();
        ExportTraceServiceResponse {
            partial_success: (!message.is_empty()).then(|| ExportTracePartialSuccess {
                rejected_spans: (stats.rejected_spans() + samples) as i64,
                error_message: message,
            }),
        }
    }

    /// The answer to a metrics export; every dropped point counts as rejected.
    pub async fn metrics(mut self) -> ExportMetricsServiceResponse {
        let (_, values) = self.settle().await;
        let stats = &self.stats;
        // A point gives one value.
        self.accepted
            .inc_by(stats.metric_points_accepted.saturating_sub(values));
        let message = stats.error_message();
        ExportMetricsServiceResponse {
            partial_success: (!message.is_empty()).then(|| ExportMetricsPartialSuccess {
                rejected_data_points: stats.dropped_values.values().sum::<u64>() as i64,
                error_message: message,
            }),
        }
    }
}

/// The most samples a request's vector is sized for before extraction (about 1 MB); beyond, it grows as filled.
const SAMPLES_RESERVED: usize = 4096;

impl Ingest {
    pub fn new(
        extract: ExtractConfig,
        telemetry: Telemetry,
        engine: EngineInput,
        max_clock_skew_ns: u64,
        budget: DecodeBudget,
    ) -> Arc<Ingest> {
        Arc::new(Ingest {
            extract,
            telemetry,
            engine,
            max_clock_skew_ns,
            budget,
        })
    }

    /// Extracts and enqueues spans; [`Pending::traces`] is the answer.
    pub fn traces(&self, request: &TraceRequest<'_>) -> Result<Pending, Busy> {
        // Room for a sample per span, up front (not grown by copying as it fills), up to a bound: spans without
        // memory attributes give none, and a request of empty spans must not reserve for them.
        let mut samples = Vec::with_capacity(request.spans().len().min(SAMPLES_RESERVED));
        let mut stats = ExtractStats::default();
        extract_spans(request, &self.extract, &mut samples, &mut stats);
        self.enqueue(samples, stats, &self.telemetry.accepted_spans)
    }

    /// Extracts and enqueues metric points; [`Pending::metrics`] is the answer.
    pub fn metrics(&self, request: &MetricsRequest<'_>) -> Result<Pending, Busy> {
        let mut samples = Vec::new();
        let mut stats = ExtractStats::default();
        extract_metrics(request, &self.extract, &mut samples, &mut stats);
        self.enqueue(samples, stats, &self.telemetry.accepted_metric_points)
    }

    fn enqueue(
        &self,
        mut samples: Vec<MemorySample>,
        mut stats: ExtractStats,
        accepted: &IntCounter,
    ) -> Result<Pending, Busy> {
        // The receiving host's clock is read here, at the edge, never in the engine.
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let horizon = now.saturating_add(self.max_clock_skew_ns);
        let mut rejected = (0, 0);
        samples.retain(|s| {
            let ok = s.time_unix_nano <= horizon;
            if !ok {
                rejected.0 += 1;
                rejected.1 += s.values.len() as u64;
                for _ in 0..s.values.len() {
                    stats.drop_value(DropReason::FutureTimestamp);
                }
            }
            ok
        });
        let verdict = if samples.is_empty() {
            Answer::None
        } else if let Some(out) = self.engine.try_run(&samples) {
            let verdict = Verdict::of(&out);
            self.engine.publish(out);
            Answer::Ready(verdict)
        } else {
            // A batch may wait in the engine's queue: it holds no more room than twice its samples (spans
            // without memory attributes leave the up-front room unused).
            if samples.capacity() > 2 * samples.len() {
                samples.shrink_to_fit();
            }
            let (tx, rx) = oneshot::channel();
            let batch = SampleBatch {
                samples,
                verdict: Some(tx),
            };
            self.engine
                .send(EngineWork::Batch(batch))
                .map_err(|_| Busy)?;
            Answer::Waiting(rx)
        };
        self.telemetry.record_extract(&stats);
        Ok(Pending {
            stats,
            rejected,
            verdict,
            accepted: accepted.clone(),
        })
    }

    /// Logs carry no memory samples: counted and let go.
    pub fn logs(&self, records: u64) {
        self.telemetry.log_records.inc_by(records);
    }

    pub fn failed(&self, transport: &str, reason: &str) {
        self.telemetry
            .failed_requests
            .with_label_values(&[transport, reason])
            .inc();
    }
}

/// google.rpc.Status, the error body of OTLP/HTTP (not in opentelemetry-proto).
#[derive(Clone, PartialEq, prost::Message, serde::Serialize)]
pub struct RpcStatus {
    #[prost(int32, tag = "1")]
    pub code: i32,
    #[prost(string, tag = "2")]
    pub message: String,
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc::sync_channel;

    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::{any_value::Value, AnyValue, KeyValue};
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
    use prost::Message;

    use super::*;

    /// An export of `n` spans, one of them with a memory attribute.
    fn request_body(n: usize) -> Vec<u8> {
        let memory = KeyValue {
            key: "memspan.rss.end".into(),
            value: Some(AnyValue {
                value: Some(Value::IntValue(1 << 30)),
            }),
            ..Default::default()
        };
        let spans = (0..n)
            .map(|i| Span {
                end_time_unix_nano: 1_700_000_000_000_000_000,
                attributes: if i == 0 { vec![memory.clone()] } else { vec![] },
                ..Default::default()
            })
            .collect();
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![ScopeSpans {
                    spans,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
        .encode_to_vec()
    }

    fn batches(rx: &std::sync::mpsc::Receiver<EngineWork>) -> usize {
        rx.try_iter()
            .filter(|w| matches!(w, EngineWork::Batch(_)))
            .count()
    }

    #[test]
    fn a_request_runs_the_core_itself_only_when_it_is_free_and_nothing_is_queued() {
        let body = request_body(1);
        let config = ExtractConfig::default();
        let request = TraceRequest::decode_keeping(&body, &config).expect("a valid request");
        let core = Arc::new(Mutex::new(Core::new(
            crate::engine::EngineConfig::default(),
            Vec::new(),
        )));
        let (tx, rx) = sync_channel(4);
        let input = EngineInput::with_core(tx, Arc::clone(&core));
        let queued = input.queued();
        let ingest = Ingest::new(
            config,
            Telemetry::new(),
            input,
            u64::MAX,
            DecodeBudget::new(1 << 20),
        );

        // Free and nothing queued: run here, the verdict given at once.
        let pending = ingest.traces(&request).map_err(|_| "busy").expect("taken");
        assert!(matches!(pending.verdict, Answer::Ready(_)));
        assert_eq!(batches(&rx), 0);
        assert!(core.lock().expect("the core").engine().live_keys() > 0);

        // Busy: queued, the verdict to come from the engine thread.
        let held = core.lock().expect("the core");
        let pending = ingest.traces(&request).map_err(|_| "busy").expect("queued");
        assert!(matches!(pending.verdict, Answer::Waiting(_)));
        drop(held);
        // Free again, but a batch waits: this one queues behind it.
        let pending = ingest.traces(&request).map_err(|_| "busy").expect("queued");
        assert!(matches!(pending.verdict, Answer::Waiting(_)));
        assert_eq!(batches(&rx), 2);

        // The engine thread has taken both: back to running here.
        queued.done();
        queued.done();
        let pending = ingest.traces(&request).map_err(|_| "busy").expect("taken");
        assert!(matches!(pending.verdict, Answer::Ready(_)));
        assert_eq!(batches(&rx), 0);
    }

    /// A request of 4,000 spans of which one carries memory attributes queues a batch sized for its one sample,
    /// not for the 4,000 spans: the queue holds up to a thousand batches.
    #[test]
    fn a_queued_batch_holds_room_for_its_samples_only() {
        // Any event time passes: the clock-skew bound below is unlimited.
        let body = request_body(4_000);
        let config = ExtractConfig::default();
        let request = TraceRequest::decode_keeping(&body, &config).expect("a valid request");
        let (tx, rx) = sync_channel(4);
        let ingest = Ingest::new(
            config,
            Telemetry::new(),
            EngineInput::queue(tx),
            u64::MAX,
            DecodeBudget::new(1 << 20),
        );
        let _pending = ingest.traces(&request).map_err(|_| "busy").expect("queued");
        let Ok(EngineWork::Batch(batch)) = rx.try_recv() else {
            panic!("a batch");
        };
        assert_eq!(batch.samples.len(), 1);
        assert!(
            batch.samples.capacity() <= 2,
            "{}",
            batch.samples.capacity()
        );
    }
}
