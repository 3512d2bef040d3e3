//! Any bytes as an OTLP/protobuf body of each signal: the decode budget's wire walk, the decoders and extraction
//! never panic, and the walk accepts every body prost decodes (or valid input would be refused as malformed).
#![no_main]

use libfuzzer_sys::fuzz_target;
use memdrift::extract::model::{MetricsRequest, TraceRequest};
use memdrift::extract::{extract_metrics, extract_spans, ExtractConfig, ExtractStats};
use memdrift::receivers::otlp::budget::{weigh, LOG_RECORDS, METRICS, TRACES};
use prost::Message;

fuzz_target!(|body: &[u8]| {
    let config = ExtractConfig::default();
    let (traces, metrics) = (weigh(body, &TRACES), weigh(body, &METRICS));
    let _ = weigh(body, &LOG_RECORDS);
    let mut out = Vec::new();
    let mut stats = ExtractStats::default();
    if let Ok(req) = TraceRequest::decode(body) {
        assert!(traces.is_ok(), "prost decoded traces the walk refused");
        extract_spans(&req.resource_spans, &config, &mut out, &mut stats);
    }
    if let Ok(req) = MetricsRequest::decode(body) {
        assert!(metrics.is_ok(), "prost decoded metrics the walk refused");
        extract_metrics(&req.resource_metrics, &config, &mut out, &mut stats);
    }
});
