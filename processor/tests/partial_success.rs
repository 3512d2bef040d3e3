//! What the engine drops is told to the sender: a span whose windows have closed (late) comes back in OTLP
//! partial success with its reason, on both transports, and is not counted as accepted.

mod common;

use std::time::Duration;

use common::{http_request, metric, span_request, Running};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prost::Message;

fn post(running: &Running, req: &ExportTraceServiceRequest) -> ExportTraceServiceResponse {
    let (status, body) = http_request(
        running.http,
        "POST",
        "/v1/traces",
        &[("Content-Type", "application/x-protobuf")],
        &req.encode_to_vec(),
    );
    assert_eq!(status, 200);
    ExportTraceServiceResponse::decode(body.as_slice()).expect("a response")
}

#[test]
fn late_spans_come_back_in_partial_success_on_both_transports() {
    let running = Running::start(None);
    // A span from ten minutes ago, then a fresh one, which closes the first one's windows: another span from
    // ten minutes ago is then late.
    let ten_minutes = Duration::from_secs(600);
    for ago in [ten_minutes, Duration::ZERO] {
        let kept = post(&running, &span_request("pod-h", ago));
        assert_eq!(kept.partial_success, None);
    }
    let late = post(&running, &span_request("pod-h", ten_minutes));
    let p = late.partial_success.expect("partial success");
    assert_eq!(p.rejected_spans, 1);
    assert!(p.error_message.contains("late=1"), "{}", p.error_message);

    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let (fresh, late) = rt.block_on(async {
        let mut client = TraceServiceClient::connect(format!("http://{}", running.grpc))
            .await
            .expect("connects");
        let mut kept = Vec::new();
        for ago in [ten_minutes, Duration::ZERO] {
            let r = client.export(span_request("pod-g", ago)).await;
            kept.push(r.expect("exported").into_inner());
        }
        let late = client.export(span_request("pod-g", ten_minutes)).await;
        (kept, late.expect("exported").into_inner())
    });
    assert!(fresh.iter().all(|r| r.partial_success.is_none()));
    let p = late.partial_success.expect("partial success");
    assert_eq!(p.rejected_spans, 1);
    assert!(p.error_message.contains("late=1"), "{}", p.error_message);

    // Four spans of six were kept; the late ones are counted as dropped values, not as accepted spans.
    assert_eq!(
        metric(&running, "memdrift_receiver_accepted_spans_total"),
        4.0
    );
    assert_eq!(
        metric(&running, r#"memdrift_dropped_values_total{reason="late"}"#),
        2.0
    );
    let (exit, _, log) = running.terminate(Duration::from_secs(15));
    assert!(exit.success(), "{log:#?}");
}

#[test]
fn spans_over_the_key_cap_come_back_in_partial_success() {
    // Room for two instances' series (an instance's and its cohort's per signal): a third instance is refused.
    let dir = common::tempdir("partial-key-cap");
    let config = common::pipeline_file(&dir, "", "");
    let text = std::fs::read_to_string(&config).expect("pipeline");
    assert!(text.contains("max_keys: 100000"));
    std::fs::write(&config, text.replace("max_keys: 100000", "max_keys: 3")).expect("pipeline");
    let running = Running::start(Some(&config));
    for pod in ["pod-a", "pod-b"] {
        let kept = post(&running, &span_request(pod, Duration::ZERO));
        assert_eq!(kept.partial_success, None, "{pod}");
    }
    let refused = post(&running, &span_request("pod-c", Duration::ZERO));
    let p = refused.partial_success.expect("partial success");
    assert_eq!(p.rejected_spans, 1);
    assert!(
        p.error_message.contains("key_overflow=1"),
        "{}",
        p.error_message
    );
    assert_eq!(
        metric(&running, "memdrift_receiver_accepted_spans_total"),
        2.0
    );
    let (exit, _, log) = running.terminate(Duration::from_secs(15));
    assert!(exit.success(), "{log:#?}");
    let _ = std::fs::remove_dir_all(&dir);
}
