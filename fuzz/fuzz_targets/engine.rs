//! The engine and the default detectors fed batches of samples the input describes (any event times, from 0 to
//! u64::MAX, and any order), with the service's timer between batches, a checkpoint saved and restored halfway,
//! and the end of a replay: nothing panics, overflows or loops. An input that decodes as an OTLP/protobuf trace
//! request is also fed as the receiver would: decoded, extracted, one batch.
//!
//! Each 12 bytes of input are one sample: service, instance, cohort and signal indices (bit 7 of the fourth
//! byte: the next eight bytes are a raw event time; bit 6: a timer tick after this sample), then a time offset
//! (u32, 10 ms units, from 2023-11-14) and a value (i32, 4 KiB units).
#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use memdrift::checkpoint::Snapshot;
use memdrift::config::Pipeline;
use memdrift::core::Core;
use memdrift::extract::model::TraceRequest;
use memdrift::extract::{extract_spans, ExtractConfig, ExtractStats};
use memdrift::sample::MemorySample;
use memdrift::signal::{Signal, SignalValues};

const T0: u64 = 1_700_000_000_000_000_000;

fn pipeline() -> &'static Pipeline {
    static PIPELINE: OnceLock<Pipeline> = OnceLock::new();
    PIPELINE.get_or_init(|| Pipeline::default_pipeline().expect("the default pipeline"))
}

fn core() -> Core {
    let p = pipeline();
    Core::new(p.engine.clone(), p.build_detectors())
}

fuzz_target!(|data: &[u8]| {
    let mut core = core();
    if let Ok(req) = TraceRequest::decode(data) {
        let mut samples = Vec::new();
        let mut stats = ExtractStats::default();
        extract_spans(&req, &ExtractConfig::default(), &mut samples, &mut stats);
        core.ingest(&samples);
    }
    let mut batch = Vec::new();
    let records: Vec<&[u8]> = data.chunks_exact(12).collect();
    for (i, r) in records.iter().enumerate() {
        let word = |at: usize| u32::from_le_bytes([r[at], r[at + 1], r[at + 2], r[at + 3]]);
        let time = if r[3] & 0x80 != 0 {
            u64::from(word(4)) << 32 | u64::from(word(8))
        } else {
            T0 + u64::from(word(4)) * 10_000_000
        };
        let signal = Signal::ALL[usize::from(r[3] & 0x3f) % Signal::COUNT];
        let raw = f64::from(word(8) as i32) * 4096.0;
        let value = if signal == Signal::RssDelta {
            raw
        } else {
            raw.abs()
        };
        let mut values = SignalValues::default();
        values.set(signal, value);
        batch.push(MemorySample {
            service: Arc::from(format!("svc-{}", r[0] % 4)),
            instance: Arc::from(format!("pod-{}", r[1] % 8)),
            cohort: (r[2] % 4 < 3).then(|| Arc::from(format!("v{}", r[2] % 4))),
            time_unix_nano: time,
            trace_id: Some([r[0]; 16]),
            span_id: None,
            values,
        });
        if batch.len() == 16 || r[3] & 0x40 != 0 {
            core.ingest(&batch);
            batch.clear();
        }
        if r[3] & 0x40 != 0 {
            core.tick(time);
        }
        if i == records.len() / 2 {
            // A restart halfway: the state saved and restored into a new core, which carries on.
            let bytes = core.save_to_bytes("fuzz").expect("state encodes");
            let snapshot = Snapshot::from_bytes(&bytes).expect("reads back");
            let mut restored = self::core();
            restored.restore(&snapshot, "fuzz").expect("state decodes");
            assert_eq!(restored.engine().live_keys(), core.engine().live_keys());
            core = restored;
        }
    }
    core.ingest(&batch);
    core.finish();
});
