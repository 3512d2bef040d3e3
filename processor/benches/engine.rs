//! Cost of the engine per value: `Engine::ingest` of 512-sample batches (what one OTLP export of memory spans
//! gives) and `Engine::advance` after each, with windows closing as event time moves.
//!
//! The fleet is the end-to-end benchmark's: 20 services x 2 cohorts x 3 instances, 8 sources per batch (64
//! samples each, sharing their names as extraction gives them), 6 values a sample (RSS before, after and their
//! difference, heap, request allocation, limit), each added to its cohort's series and, where a detector of
//! the embedded default pipeline reads it (RSS after, heap, limit), to its instance's. The engine's settings
//! are the default pipeline's.
//! Event time moves 1 us per sample in `ingest_and_advance_512` (a million samples a second of event time, the
//! saturation rate) and 100 us per sample in `ingest_and_advance_512_at_10k` (10,000 spans a second, the
//! end-to-end benchmark's low rate, where a pane sees about 5 times as many values as its reservoir keeps
//! instead of 500): every 10 s of it the windows close (summaries: reservoirs copied and sorted), so their cost
//! is in the figure. Throughput is in values (samples x 6).
//!
//! ```text
//! cargo bench -p memdrift --bench engine
//! ```

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use memdrift::config::Pipeline;
use memdrift::core::Core;
use memdrift::engine::{Engine, EngineConfig};
use memdrift::sample::MemorySample;
use memdrift::signal::{Signal, SignalValues};

const BATCH: usize = 512;
const SOURCES_PER_BATCH: usize = 8;
const VALUES: u64 = 6;

/// A source's (service, instance, cohort) names.
type Source = (Arc<str>, Arc<str>, Option<Arc<str>>);

/// The fleet's names, one allocation each, shared by every sample of a source.
fn fleet() -> Vec<Source> {
    let mut out = Vec::new();
    for s in 0..20 {
        let service: Arc<str> = format!("bench-svc-{s:02}").into();
        for c in 0..2 {
            let cohort: Arc<str> = format!("1.{c}.0").into();
            for i in 0..3 {
                let instance = format!("bench-svc-{s:02}-{c}-{i}").into();
                out.push((service.clone(), instance, Some(cohort.clone())));
            }
        }
    }
    out
}

/// Batch `k`: sources `8k .. 8k + 8` of the fleet (round robin), a sample every `ns_per_sample` of event time.
fn batch(fleet: &[Source], k: u64, t0: u64, ns_per_sample: u64) -> Vec<MemorySample> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ k;
    let mut noise = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x >> 11) as f64 / (1u64 << 53) as f64
    };
    (0..BATCH)
        .map(|j| {
            let source = &fleet
                [(k as usize * SOURCES_PER_BATCH + j / (BATCH / SOURCES_PER_BATCH)) % fleet.len()];
            let rss = 1.5e9 + 2e8 * noise();
            let mut values = SignalValues::default();
            values.set(Signal::RssStart, rss);
            values.set(Signal::RssEnd, rss + 8e6 * noise());
            values.set(Signal::RssDelta, 8e6 * noise());
            values.set(Signal::HeapAllocated, rss - 4e8);
            values.set(Signal::RequestAllocated, 4e7 * noise());
            values.set(Signal::Limit, 4_294_967_296.0);
            MemorySample {
                service: source.0.clone(),
                instance: source.1.clone(),
                cohort: source.2.clone(),
                time_unix_nano: t0 + (k * BATCH as u64 + j as u64) * ns_per_sample,
                trace_id: Some([1; 16]),
                span_id: Some([2; 8]),
                values,
            }
        })
        .collect()
}

/// The engine settings the embedded default pipeline runs with, the instance signals its detectors read
/// included.
fn default_settings() -> EngineConfig {
    let pipeline = Pipeline::default_pipeline().expect("the embedded default pipeline loads");
    let core = Core::new(pipeline.engine.clone(), pipeline.build_detectors());
    core.engine().config().clone()
}

fn engine(c: &mut Criterion) {
    let fleet = fleet();
    let settings = default_settings();
    const T0: u64 = 1_800_000_000_000_000_000;
    // Batches built ahead, cycled with a shift so time keeps moving.
    const PREPARED: u64 = 1_000;
    let mut group = c.benchmark_group("engine");
    group.throughput(Throughput::Elements(BATCH as u64 * VALUES));
    for (name, ns_per_sample) in [
        ("ingest_and_advance_512", 1_000),
        ("ingest_and_advance_512_at_10k", 100_000),
    ] {
        let prepared: Vec<Vec<MemorySample>> = (0..PREPARED)
            .map(|k| batch(&fleet, k, T0, ns_per_sample))
            .collect();
        group.bench_function(name, |b| {
            let mut engine = Engine::new(settings.clone());
            let mut k = 0u64;
            let mut shifted = prepared[0].clone();
            b.iter(|| {
                // Batch k is prepared batch k % PREPARED moved on by whole rounds of event time.
                let round = k / PREPARED * PREPARED * BATCH as u64 * ns_per_sample;
                let src = &prepared[(k % PREPARED) as usize];
                for (dst, s) in shifted.iter_mut().zip(src) {
                    dst.clone_from(s);
                    dst.time_unix_nano += round;
                }
                k += 1;
                black_box(engine.ingest(black_box(&shifted)));
                black_box(engine.advance())
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(8));
    targets = engine
}
criterion_main!(benches);
