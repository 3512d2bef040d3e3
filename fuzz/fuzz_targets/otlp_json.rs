//! Any bytes as an OTLP/JSON body: the lenient reader, the log-record counter, the `{` weigher and extraction
//! never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use memdrift::extract::{extract_metrics, extract_spans, ExtractConfig, ExtractStats};
use memdrift::receivers::otlp::json::{count_log_records, weigh, JsonDocument};

fuzz_target!(|body: &[u8]| {
    let _ = weigh(body);
    let _ = count_log_records(body);
    if let Ok(doc) = JsonDocument::parse(body) {
        let config = ExtractConfig::default();
        let mut out = Vec::new();
        let mut stats = ExtractStats::default();
        extract_spans(&doc.traces(), &config, &mut out, &mut stats);
        extract_metrics(&doc.metrics(), &config, &mut out, &mut stats);
    }
});
