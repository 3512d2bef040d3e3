//! The OTLP receiver: gRPC on 4317, HTTP on 4318 (protobuf and JSON, gzip), both feeding one [`Ingest`].

pub mod budget;
pub mod grpc;
pub mod http;
pub mod json;

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsPartialSuccess, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceResponse,
};
use std::sync::mpsc::SyncSender;

use self::budget::DecodeBudget;
use crate::extract::model::{ResourceMetrics, ResourceSpans};
use crate::extract::{extract_metrics, extract_spans, DropReason, ExtractConfig, ExtractStats};
use crate::sample::MemorySample;
use crate::telemetry::Telemetry;

/// A batch of samples on its way to the engine.
pub type SampleBatch = Vec<MemorySample>;

/// The engine's queue is full: the sender should retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Busy;

/// The path shared by every transport: extract, check clocks, count, enqueue.
pub struct Ingest {
    pub extract: ExtractConfig,
    pub telemetry: Telemetry,
    pub tx: SyncSender<SampleBatch>,
    /// Samples stamped later than now + this are dropped as `future_timestamp`.
    pub max_clock_skew_ns: u64,
    /// Memory for the requests being decoded, shared by both transports.
    pub budget: DecodeBudget,
}

impl Ingest {
    pub fn new(
        extract: ExtractConfig,
        telemetry: Telemetry,
        tx: SyncSender<SampleBatch>,
        max_clock_skew_ns: u64,
        budget: DecodeBudget,
    ) -> Arc<Ingest> {
        Arc::new(Ingest {
            extract,
            telemetry,
            tx,
            max_clock_skew_ns,
            budget,
        })
    }

    /// Extracts and enqueues spans; the answer carries partial success when anything was rejected.
    pub fn traces(
        &self,
        resource_spans: &[ResourceSpans],
    ) -> Result<ExportTraceServiceResponse, Busy> {
        let mut samples = Vec::new();
        let mut stats = ExtractStats::default();
        extract_spans(resource_spans, &self.extract, &mut samples, &mut stats);
        let stats = self.enqueue(samples, stats)?;
        let message = stats.error_message();
        Ok(ExportTraceServiceResponse {
            partial_success: (!message.is_empty()).then(|| ExportTracePartialSuccess {
                rejected_spans: stats.rejected_spans() as i64,
                error_message: message,
            }),
        })
    }

    /// Extracts and enqueues metric points; every dropped point counts as rejected.
    pub fn metrics(
        &self,
        resource_metrics: &[ResourceMetrics],
    ) -> Result<ExportMetricsServiceResponse, Busy> {
        let mut samples = Vec::new();
        let mut stats = ExtractStats::default();
        extract_metrics(resource_metrics, &self.extract, &mut samples, &mut stats);
        let stats = self.enqueue(samples, stats)?;
        let message = stats.error_message();
        Ok(ExportMetricsServiceResponse {
            partial_success: (!message.is_empty()).then(|| ExportMetricsPartialSuccess {
                rejected_data_points: stats.dropped_values.values().sum::<u64>() as i64,
                error_message: message,
            }),
        })
    }

    fn enqueue(
        &self,
        mut samples: SampleBatch,
        mut stats: ExtractStats,
    ) -> Result<ExtractStats, Busy> {
        // The receiving host's clock is read here, at the edge, never in the engine.
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let horizon = now.saturating_add(self.max_clock_skew_ns);
        samples.retain(|s| {
            let ok = s.time_unix_nano <= horizon;
            if !ok {
                for _ in 0..s.values.len() {
                    stats.drop_value(DropReason::FutureTimestamp);
                }
            }
            ok
        });
        if !samples.is_empty() {
            self.tx.try_send(samples).map_err(|_| Busy)?;
        }
        self.telemetry.record_extract(&stats);
        Ok(stats)
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
