//! Any bytes as an OTLP/protobuf body of each signal: the log-record walk, the decoders and extraction never
//! panic, and decoding asks the decode budget for at least what it holds (or the budget would not bound memory).
#![no_main]

use libfuzzer_sys::fuzz_target;
use memdrift::extract::model::{MetricsRequest, TraceRequest};
use memdrift::extract::{extract_metrics, extract_spans, ExtractConfig, ExtractStats};
use memdrift::receivers::otlp::budget::{weigh, LOG_RECORDS};

fuzz_target!(|body: &[u8]| {
    let config = ExtractConfig::default();
    let _ = weigh(body, &LOG_RECORDS);
    let mut out = Vec::new();
    let mut stats = ExtractStats::default();
    let mut charged = 0;
    let traces = TraceRequest::decode_within(body, &config, &mut |n| {
        charged += n;
        true
    });
    if let Ok(req) = traces {
        assert!(req.heap_bytes() <= charged, "traces hold more than charged");
        extract_spans(&req, &config, &mut out, &mut stats);
    }
    let mut charged = 0;
    let metrics = MetricsRequest::decode_within(body, &config, &mut |n| {
        charged += n;
        true
    });
    if let Ok(req) = metrics {
        assert!(
            req.heap_bytes() <= charged,
            "metrics hold more than charged"
        );
        extract_metrics(&req, &config, &mut out, &mut stats);
    }
});
