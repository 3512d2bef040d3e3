//! Any bytes as an OTLP/JSON body: the lenient reader (with a budget that refuses at some point, too), the
//! log-record counter and extraction never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use memdrift::extract::{extract_metrics, extract_spans, ExtractConfig, ExtractStats};
use memdrift::receivers::otlp::json::{count_log_records, JsonDocument};

fuzz_target!(|body: &[u8]| {
    let _ = count_log_records(body, &mut |_| true);
    let mut left = body.len();
    let _ = JsonDocument::parse_within(body, &memdrift::extract::model::AllKeys, &mut |b| {
        left = left.saturating_sub(b);
        left > 0
    });
    if let Ok(doc) = JsonDocument::parse(body) {
        let config = ExtractConfig::default();
        let mut out = Vec::new();
        let mut stats = ExtractStats::default();
        extract_spans(&doc.traces(), &config, &mut out, &mut stats);
        extract_metrics(&doc.metrics(), &config, &mut out, &mut stats);
    }
});
