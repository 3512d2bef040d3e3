//! The same batch over every transport gives the same samples; bad requests get the OTLP answers and the
//! receivers keep serving.

use std::io::Write;
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use memdrift::extract::model::TraceRequest;
use memdrift::extract::{extract_spans, ExtractConfig, ExtractStats};
use memdrift::receivers::listener::{ConnectionLimits, GuardedListener};
use memdrift::receivers::otlp::budget::DecodeBudget;
use memdrift::receivers::otlp::{grpc, http, EngineInput, EngineWork, Ingest, RpcStatus, Verdict};
use memdrift::receivers::security::Security;
use memdrift::sample::MemorySample;
use memdrift::telemetry::Telemetry;
use memdrift_e2e::*;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use prost::Message;
use tokio::net::TcpListener;
use tonic::codec::CompressionEncoding;

const LIMIT: usize = 256 * 1024;
/// The decode budget of these receivers: 4 MiB, room for several requests at the size limit.
const BUDGET: usize = 4 << 20;

struct Receivers {
    grpc: String,
    http: String,
    /// The samples of each batch the engine would get (each batch's verdict is answered at once: nothing
    /// dropped).
    rx: Receiver<Vec<MemorySample>>,
    telemetry: Telemetry,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn start() -> Receivers {
    let telemetry = Telemetry::new();
    let (tx, engine) = sync_channel::<EngineWork>(64);
    let (relay, rx) = sync_channel(64);
    std::thread::spawn(move || {
        for work in engine {
            let EngineWork::Batch(batch) = work else {
                continue;
            };
            if let Some(v) = batch.verdict {
                let _ = v.send(Verdict::default());
            }
            if relay.send(batch.samples).is_err() {
                break;
            }
        }
    });
    let ingest = Ingest::new(
        ExtractConfig::default(),
        telemetry.clone(),
        EngineInput::queue(tx),
        300_000_000_000,
        DecodeBudget::new(BUDGET),
    );
    let g = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let h = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let (grpc_addr, http_addr) = (g.local_addr().expect("addr"), h.local_addr().expect("addr"));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let stopped = futures_util::FutureExt::shared(async move {
        let _ = stopped.await;
    });
    let limits = ConnectionLimits::default();
    let g = GuardedListener::new("otlp_grpc", g, limits, telemetry.clone());
    let h = GuardedListener::new("otlp_http", h, limits, telemetry.clone());
    let open = Security::default();
    tokio::spawn(grpc::serve(
        g,
        Arc::clone(&ingest),
        LIMIT,
        open.clone(),
        stopped.clone(),
    ));
    tokio::spawn(http::serve(h, ingest, LIMIT, open, stopped));
    Receivers {
        grpc: format!("http://{grpc_addr}"),
        http: format!("http://{http_addr}"),
        rx,
        telemetry,
        _stop: stop,
    }
}

/// Good spans, spans with some bad values, a span with only bad values, one without memory attributes and one
/// without timestamps.
fn mixed_batch() -> ExportTraceServiceRequest {
    let t = now_unix_nano();
    let mut no_time = span(9, t, vec![int("memspan.rss.end", 7)]);
    no_time.start_time_unix_nano = 0;
    no_time.end_time_unix_nano = 0;
    let mut spans: Vec<_> = (0..20)
        .map(|i| {
            span(
                i,
                t + i * 1000,
                vec![
                    int("memspan.rss.start", 500_000_000 + i as i64),
                    int("memspan.rss.end", 501_000_000 + 3 * i as i64),
                    int("memspan.request.allocated", 1 << 20),
                    string("gen_ai.request.model", "small-model"),
                ],
            )
        })
        .collect();
    spans.push(span(
        20,
        t,
        vec![
            int("memspan.rss.end", 600_000_000),
            int("memspan.heap.allocated", -5),
            kv("memspan.request.allocated", Value::DoubleValue(f64::NAN)),
            string("memspan.cohort", "canary"),
        ],
    ));
    spans.push(span(21, t, vec![string("memspan.rss.end", "12MB")]));
    spans.push(span(22, t, vec![string("gen_ai.operation.name", "chat")]));
    spans.push(no_time);
    request(resource("checkout-llm", "1.4.2", "pod-a"), spans)
}

fn expected(req: &ExportTraceServiceRequest) -> (Vec<MemorySample>, ExtractStats) {
    let mut out = Vec::new();
    let mut stats = ExtractStats::default();
    let body = req.encode_to_vec();
    let lean = TraceRequest::decode(&body).expect("valid protobuf");
    extract_spans(&lean, &ExtractConfig::default(), &mut out, &mut stats);
    (out, stats)
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(data).expect("gzip");
    enc.finish().expect("gzip")
}

fn next_batch(rx: &Receiver<Vec<MemorySample>>) -> Vec<MemorySample> {
    rx.recv_timeout(Duration::from_secs(5))
        .expect("a batch reached the engine queue")
}

async fn post(url: &str, ct: &str, gz: bool, body: Vec<u8>) -> reqwest::Response {
    let mut req = reqwest::Client::new().post(url).header("content-type", ct);
    let body = if gz {
        req = req.header("content-encoding", "gzip");
        gzip(&body)
    } else {
        body
    };
    req.body(body).send().await.expect("request sent")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_transport_gives_identical_samples_and_partial_success() {
    let r = start().await;
    let req = mixed_batch();
    let (want, stats) = expected(&req);
    assert_eq!(want.len(), 21, "20 good spans and one with some bad values");
    assert_eq!(
        stats.rejected_spans(),
        2,
        "the all-bad span and the span without timestamps"
    );

    // gRPC, plain and gzip.
    for gz in [false, true] {
        let mut client = TraceServiceClient::connect(r.grpc.clone())
            .await
            .expect("connect");
        if gz {
            client = client.send_compressed(CompressionEncoding::Gzip);
        }
        let resp = client
            .export(req.clone())
            .await
            .expect("export")
            .into_inner();
        let ps = resp.partial_success.expect("partial success reported");
        assert_eq!(ps.rejected_spans, 2);
        assert!(
            ps.error_message.contains("invalid_values=1"),
            "{}",
            ps.error_message
        );
        assert_eq!(next_batch(&r.rx), want, "grpc gzip={gz}");
    }

    // HTTP protobuf and JSON, plain and gzip. The JSON is opentelemetry-proto's own writer: hex ids, int64 as
    // strings, NaN as "NaN".
    let url = format!("{}/v1/traces", r.http);
    let json = serde_json::to_vec(&req).expect("json");
    for (ct, body) in [
        ("application/x-protobuf", req.encode_to_vec()),
        ("application/json", json),
    ] {
        for gz in [false, true] {
            let resp = post(&url, ct, gz, body.clone()).await;
            assert_eq!(resp.status(), 200, "{ct} gzip={gz}");
            assert_eq!(resp.headers()["content-type"], ct);
            let bytes = resp.bytes().await.expect("body");
            let rejected = if ct == "application/json" {
                let v: serde_json::Value = serde_json::from_slice(&bytes).expect("json response");
                v["partialSuccess"]["rejectedSpans"]
                    .to_string()
                    .trim_matches('"')
                    .parse::<i64>()
                    .expect("count")
            } else {
                ExportTraceServiceResponse::decode(bytes)
                    .expect("protobuf response")
                    .partial_success
                    .expect("partial success")
                    .rejected_spans
            };
            assert_eq!(rejected, 2, "{ct} gzip={gz}");
            assert_eq!(next_batch(&r.rx), want, "{ct} gzip={gz}");
        }
    }

    // A chunked body (no Content-Length), as Node's exporter sends.
    let chunks: Vec<Result<Bytes, std::io::Error>> = req
        .encode_to_vec()
        .chunks(97)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    let resp = reqwest::Client::new()
        .post(&url)
        .header("content-type", "application/x-protobuf")
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .expect("sent");
    assert_eq!(resp.status(), 200);
    assert_eq!(next_batch(&r.rx), want, "chunked");

    // Seven deliveries of the batch, each counted once.
    let text = r.telemetry.render();
    assert_eq!(
        metric_value(&text, "memdrift_receiver_accepted_spans_total"),
        Some(7.0 * 21.0)
    );
    assert_eq!(
        metric_value(
            &text,
            "memdrift_receiver_refused_spans_total{reason=\"no_memory_attributes\"}"
        ),
        Some(7.0)
    );
    assert_eq!(
        metric_value(&text, "memdrift_dropped_values_total{reason=\"string\"}"),
        Some(7.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_oversized_requests_get_otlp_errors_and_service_goes_on() {
    let r = start().await;
    let url = format!("{}/v1/traces", r.http);

    let resp = post(
        &url,
        "application/x-protobuf",
        false,
        b"\xff\xff\xff not protobuf".to_vec(),
    )
    .await;
    assert_eq!(resp.status(), 400);
    let status =
        RpcStatus::decode(resp.bytes().await.expect("body")).expect("google.rpc.Status body");
    assert_eq!(status.code, 3);
    assert!(
        status
            .message
            .contains("not a valid OTLP ExportTraceServiceRequest"),
        "{}",
        status.message
    );

    let resp = post(
        &url,
        "application/json",
        false,
        b"{\"resourceSpans\": [".to_vec(),
    )
    .await;
    assert_eq!(resp.status(), 400);
    let v: serde_json::Value =
        serde_json::from_slice(&resp.bytes().await.expect("body")).expect("json error body");
    assert!(v["message"].as_str().unwrap_or("").contains("EOF"), "{v}");

    let resp = post(
        &url,
        "application/x-protobuf",
        true,
        b"plain, not gzip".to_vec(),
    )
    .await;
    assert_eq!(resp.status(), 400);

    let resp = post(&url, "text/plain", false, b"hello".to_vec()).await;
    assert_eq!(resp.status(), 415);

    // Over the limit, raw and after decompression (a small gzip body that inflates past it).
    let resp = post(&url, "application/x-protobuf", false, vec![0u8; LIMIT + 1]).await;
    assert_eq!(resp.status(), 413);
    let resp = post(&url, "application/x-protobuf", true, vec![0u8; LIMIT * 4]).await;
    assert_eq!(resp.status(), 413);

    let err = grpc_raw::export_raw(
        r.grpc.clone(),
        Bytes::from_static(b"\xff\xff\xff not protobuf"),
    )
    .await
    .expect_err("rejected");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    let err = grpc_raw::export_raw(r.grpc.clone(), Bytes::from(vec![0u8; LIMIT + 1]))
        .await
        .expect_err("rejected");
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");

    // Still serving, on both transports.
    let req = mixed_batch();
    let resp = post(&url, "application/x-protobuf", false, req.encode_to_vec()).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(next_batch(&r.rx).len(), 21);
    let mut client = TraceServiceClient::connect(r.grpc.clone())
        .await
        .expect("connect");
    client.export(req).await.expect("gRPC still serves");
    assert_eq!(next_batch(&r.rx).len(), 21);

    let text = r.telemetry.render();
    assert_eq!(
        metric_value(
            &text,
            "memdrift_receiver_failed_requests_total{reason=\"malformed\",transport=\"http\"}"
        ),
        Some(3.0)
    );
    assert_eq!(
        metric_value(
            &text,
            "memdrift_receiver_failed_requests_total{reason=\"too_large\",transport=\"http\"}"
        ),
        Some(2.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_answers_retry_later() {
    let telemetry = Telemetry::new();
    let (tx, _rx) = sync_channel(1);
    let ingest = Ingest::new(
        ExtractConfig::default(),
        telemetry,
        EngineInput::queue(tx),
        300_000_000_000,
        DecodeBudget::new(BUDGET),
    );
    let h = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/v1/traces", h.local_addr().expect("addr"));
    let h = GuardedListener::new(
        "otlp_http",
        h,
        ConnectionLimits::default(),
        Telemetry::new(),
    );
    tokio::spawn(http::serve(
        h,
        ingest,
        LIMIT,
        Security::default(),
        std::future::pending(),
    ));
    let body = mixed_batch().encode_to_vec();
    assert_eq!(
        post(&url, "application/x-protobuf", false, body.clone())
            .await
            .status(),
        200
    );
    let resp = post(&url, "application/x-protobuf", false, body).await;
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.headers()["retry-after"], "1");
}

fn metrics_batch() -> ExportMetricsServiceRequest {
    use opentelemetry_proto::tonic::metrics::v1::{
        metric::Data, number_data_point, Gauge, Metric, NumberDataPoint, ResourceMetrics,
        ScopeMetrics, Sum,
    };
    let t = now_unix_nano();
    let point = |dt: u64, v| NumberDataPoint {
        time_unix_nano: t + dt,
        value: Some(v),
        ..Default::default()
    };
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(resource("embed-llm", "2.0.0", "pod-m")),
            scope_metrics: vec![ScopeMetrics {
                metrics: vec![
                    Metric {
                        name: "process.memory.usage".into(),
                        unit: "By".into(),
                        data: Some(Data::Gauge(Gauge {
                            data_points: vec![
                                point(0, number_data_point::Value::AsInt(700_000_000)),
                                point(1, number_data_point::Value::AsDouble(f64::NAN)),
                            ],
                        })),
                        ..Default::default()
                    },
                    Metric {
                        name: "container.memory.working_set".into(),
                        unit: "By".into(),
                        data: Some(Data::Sum(Sum {
                            data_points: vec![point(2, number_data_point::Value::AsDouble(8.5e8))],
                            aggregation_temporality: 2,
                            is_monotonic: false,
                        })),
                        ..Default::default()
                    },
                ],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_over_grpc_and_http_give_identical_samples() {
    use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
    use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceResponse;

    let r = start().await;
    let req = metrics_batch();
    let mut client = MetricsServiceClient::connect(r.grpc.clone())
        .await
        .expect("connect")
        .send_compressed(CompressionEncoding::Gzip);
    let resp = client
        .export(req.clone())
        .await
        .expect("export")
        .into_inner();
    assert_eq!(
        resp.partial_success.map(|p| p.rejected_data_points),
        Some(1),
        "the NaN point"
    );
    let via_grpc = next_batch(&r.rx);
    assert_eq!(via_grpc.len(), 2);
    assert_eq!(
        via_grpc[0]
            .values
            .get(memdrift::signal::Signal::ProcessMemoryUsage),
        Some(7e8)
    );
    assert_eq!(
        via_grpc[1]
            .values
            .get(memdrift::signal::Signal::ContainerWorkingSet),
        Some(8.5e8)
    );
    assert_eq!(via_grpc[0].cohort.as_deref(), Some("2.0.0"));

    let url = format!("{}/v1/metrics", r.http);
    for (ct, body) in [
        ("application/x-protobuf", req.encode_to_vec()),
        ("application/json", serde_json::to_vec(&req).expect("json")),
    ] {
        let resp = post(&url, ct, true, body).await;
        assert_eq!(resp.status(), 200, "{ct}");
        if ct == "application/x-protobuf" {
            let body = ExportMetricsServiceResponse::decode(resp.bytes().await.expect("body"))
                .expect("response");
            assert_eq!(
                body.partial_success.map(|p| p.rejected_data_points),
                Some(1)
            );
        }
        assert_eq!(next_batch(&r.rx), via_grpc, "{ct}");
    }
    let text = r.telemetry.render();
    assert_eq!(
        metric_value(&text, "memdrift_receiver_accepted_metric_points_total"),
        Some(6.0)
    );
}

/// A gzip body of two members (RFC 1952 allows any number; some compressors write one per flush) is read whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gzip_body_of_two_members_is_read_to_the_end() {
    let r = start().await;
    let req = mixed_batch();
    let (want, _) = expected(&req);
    let body = req.encode_to_vec();
    let (a, b) = body.split_at(body.len() / 2);
    let mut two = gzip(a);
    two.extend(gzip(b));
    let resp = reqwest::Client::new()
        .post(format!("{}/v1/traces", r.http))
        .header("content-type", "application/x-protobuf")
        .header("content-encoding", "gzip")
        .body(two)
        .send()
        .await
        .expect("request sent");
    assert_eq!(resp.status(), 200);
    assert_eq!(next_batch(&r.rx), want);
}
