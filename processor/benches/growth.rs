//! Per-instance evaluation cost of the `growth` and `leak` detectors.
//!
//! Measured, on one instance's grid already filled (a GC sawtooth 1.0 -> 1.8 GiB with a 0.3 MB/s leak and heap
//! signals, 10 s buckets, fixed seed):
//! - `growth/forecast_30m`: one forecast as the detector runs it every step: the robust envelope (3rd largest) over
//!   5 minutes read every 3 buckets over the 30-minute lookback (60 points), two Theil-Sen fits with Sen's
//!   interval (60 and 20 points), time to limit.
//! - `leak/test_60m`: one leak test as it runs once a minute: running-min floors (5 minutes) of RSS and three
//!   heap signals read every minute over 60 minutes, Mann-Kendall with the Hamed-Rao correction, Theil-Sen,
//!   the halves and the step check, and (the series leaks) the classification from the heap floors.
//! - `leak/test_30m`: the same with 30 minutes of buckets.
//!
//! Not measured: the engine's windows, the map lookup per instance, event construction.
//!
//! ```text
//! cargo bench -p memdrift --bench growth
//! ```

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use memdrift::detect::grid::{Observation, Track};
use memdrift::detect::growth::{forecast, GrowthSettings};
use memdrift::detect::leak::{self, LeakSettings};
use memdrift::signal::Signal;
use rand::{Rng, SeedableRng};
use rand_distr::StandardNormal;

const STEP: u64 = 10_000_000_000;
const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

/// A track of `minutes` of a leaking sawtooth, in a ring of `cap` buckets.
fn track(minutes: usize, cap: usize) -> Track {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let start = 1_000_000i64;
    let mut t = Track::new(Signal::RssEnd, start, cap);
    let settings = GrowthSettings::default().grid;
    let mut phase = 0.0;
    for k in 0..minutes as i64 * 6 {
        phase = (phase + 10.0) % 240.0;
        let noise = 3e6 * rng.sample::<f64, _>(StandardNormal);
        let v = GIB + 0.8 * GIB * phase / 240.0 + 0.3e6 * 10.0 * k as f64 + noise;
        let o = Observation {
            memory: Some((Signal::RssEnd, Some((v + 1e6, v - 30e6)))),
            heap: [
                Some(v - 0.25 * GIB),
                Some(v - 0.15 * GIB),
                Some(v - 0.1 * GIB),
            ],
            limit: Some(4.0 * GIB),
            summary: None,
        };
        t.push(start + k, &o, &settings, (start + k) as u64 * STEP);
    }
    t
}

fn bench(c: &mut Criterion) {
    let g = GrowthSettings::default();
    let l = LeakSettings::default();
    let grown = track(60, 211);
    let mut group = c.benchmark_group("growth");
    group.bench_function("forecast_30m", |b| {
        b.iter(|| forecast(black_box(&grown), &g, STEP, 15 * 1_000_000_000))
    });
    group.finish();
    let mut group = c.benchmark_group("leak");
    for (name, minutes) in [("test_60m", 70), ("test_30m", 30)] {
        let t = track(minutes, 391);
        assert!(leak::test(&t, &l, STEP).is_some());
        group.bench_function(name, |b| b.iter(|| leak::test(black_box(&t), &l, STEP)));
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = bench
}
criterion_main!(benches);
