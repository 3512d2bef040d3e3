//! The detector must not become the leaking service it watches: streaming a million distinct keys keeps the
//! live keys at or below the cap, counts the overflow, expires idle keys, and keeps the process's memory flat.
//! Runs alone in its own test binary so the resident-set readings are this test's.

use std::sync::Arc;

use memdrift::core::Core;
use memdrift::engine::EngineConfig;
use memdrift::sample::MemorySample;
use memdrift::signal::{Signal, SignalValues};

const S: u64 = 1_000_000_000;
const T0: u64 = 1_700_000_000 * S;
const CAP: usize = 10_000;

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm");
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("resident pages");
    pages * 4096
}

fn batch(first: u64, n: u64, time: impl Fn(u64) -> u64) -> Vec<MemorySample> {
    (first..first + n)
        .map(|k| {
            let mut values = SignalValues::default();
            values.set(Signal::RssEnd, (k % 1000) as f64 * 1e6);
            MemorySample {
                service: Arc::from(format!("svc-{k}")),
                instance: Arc::from(format!("pod-{k}")),
                cohort: Some(Arc::from("1.0.0")),
                time_unix_nano: time(k),
                trace_id: None,
                span_id: None,
                values,
            }
        })
        .collect()
}

#[test]
fn a_million_distinct_keys_stay_under_the_cap_with_flat_memory() {
    let mut core = Core::new(
        EngineConfig {
            window_ns: 10 * S,
            step_ns: S,
            allowed_lateness_ns: S,
            idle_timeout_ns: 20 * S,
            max_keys: CAP,
            ..EngineConfig::default()
        },
        Vec::new(),
    );
    const TOTAL: u64 = 1_000_000;
    const BATCH: u64 = 1_000;
    let mut overflow = 0u64;
    let mut max_live = 0usize;
    let mut rss_after_warmup = 0;
    for b in 0..TOTAL / BATCH {
        // First half: all within one second of event time, so nothing can expire and the cap must hold.
        // Second half: event time moves 0.1 ms per key (100 s in all), so idle keys expire and new ones enter.
        let samples = if b < TOTAL / BATCH / 2 {
            batch(b * BATCH, BATCH, |_| T0)
        } else {
            batch(b * BATCH, BATCH, |k| T0 + S + (k - TOTAL / 2) * 100_000)
        };
        let out = core.ingest(&samples);
        overflow += out.dropped.len() as u64;
        max_live = max_live.max(core.engine().live_keys());
        if b == 50 {
            rss_after_warmup = rss_bytes();
        }
    }
    let engine = core.engine();
    assert!(
        max_live <= CAP,
        "live keys peaked at {max_live}, over the cap {CAP}"
    );
    // In the first half, the first CAP/2 keys fill the cap (a cohort and an instance series each); the value of
    // every later key of that half overflows (once: it is dropped whole).
    let first_half_overflow = TOTAL / 2 - CAP as u64 / 2;
    assert!(
        overflow >= first_half_overflow,
        "overflow {overflow} < {first_half_overflow}"
    );
    assert_eq!(engine.stats().overflow_values, overflow);
    // Expiry, and making room at the cap for newcomers, let new keys in during the second half: at least the
    // whole first population (CAP series in CAP groups' worth of cohort and instance keys) was forgotten and
    // replaced (a service made room for takes its two groups with it).
    let stats = engine.stats();
    assert!(
        stats.expired_groups + 2 * stats.evicted_services >= CAP as u64,
        "{:?}",
        engine.stats()
    );
    assert!(engine.live_keys() > 0);
    let growth = rss_bytes().saturating_sub(rss_after_warmup);
    assert!(
        growth < 64 << 20,
        "resident memory grew by {} MiB while streaming a million keys",
        growth >> 20
    );
}
