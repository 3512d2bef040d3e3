//! Per-instance evaluation cost of the `growth` and `leak` detectors.
//!
//! Measured, on one instance's grid already filled (a GC sawtooth 1.0 -> 1.8 GiB with a 0.3 MB/s leak, unless
//! said, and heap signals, 10 s buckets, fixed seed):
//! - `growth/forecast_30m`: one forecast as the detector runs it every step: the robust envelope (3rd largest) over
//!   5 minutes read every 3 buckets over the 30-minute lookback (60 points), two Theil-Sen fits with Sen's
//!   interval (60 and 20 points), time to limit.
//! - `leak/test_2h`: one leak test as the detector runs it once a minute, on 2 hours of minute minima and maxima
//!   (the default lookback) held beside a 1-hour grid: running-min floors of RSS and three heap signals, the
//!   fast test (10 minutes against the 20 before, the step checks) and, the rise being too slow for it, the
//!   sustained test over 90 minutes (Mann-Kendall with the Hamed-Rao correction, Theil-Sen, thirds, level
//!   shift) and the classification from the heap floors.
//! - `leak/test_40m`: the same 40 minutes after a start (the fast test only).
//! - `leak/test_2h_calm`: `test_2h` on a flat sawtooth (no leak): what most instances pay, the sustained test
//!   stopping at its thirds.
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
use memdrift::detect::leak::{self, LeakSettings, Minutes, STRIDE};
use memdrift::signal::Signal;
use rand::{Rng, SeedableRng};
use rand_distr::StandardNormal;

const STEP: u64 = 10_000_000_000;
const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

/// A track of `minutes` of a leaking sawtooth, in a ring of `cap` buckets.
/// The grid of an instance `minutes` long, and its minute history as the leak detector keeps it.
fn track(minutes: usize, cap: usize, leak_bytes_per_s: f64) -> (Track, Minutes) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let start = 1_000_002i64;
    let mut t = Track::new(Signal::RssEnd, start, cap);
    let mut m = Minutes::new(120);
    let settings = GrowthSettings::default().grid;
    let mut phase = 0.0;
    for k in 0..minutes as i64 * 6 {
        phase = (phase + 10.0) % 240.0;
        let noise = 3e6 * rng.sample::<f64, _>(StandardNormal);
        let v = GIB + 0.8 * GIB * phase / 240.0 + leak_bytes_per_s * 10.0 * k as f64 + noise;
        let o = Observation {
            memory: Some((Signal::RssEnd, Some((v + 1e6, v - 30e6)))),
            heap: [
                Some(v - 0.25 * GIB),
                Some(v - 0.15 * GIB),
                Some(v - 0.1 * GIB),
                None,
                None,
            ],
            limit: Some(4.0 * GIB),
            go_limit: None,
            summary: None,
        };
        t.push(start + k, &o, &settings, (start + k) as u64 * STEP);
        if (start + k).rem_euclid(STRIDE) == 0 {
            m.update(&t);
        }
    }
    (t, m)
}

fn bench(c: &mut Criterion) {
    let g = GrowthSettings::default();
    let l = LeakSettings::default();
    let (grown, _) = track(60, 211, 0.3e6);
    let mut group = c.benchmark_group("growth");
    group.bench_function("forecast_30m", |b| {
        b.iter(|| forecast(black_box(&grown), &g, STEP, 15 * 1_000_000_000))
    });
    group.finish();
    let mut group = c.benchmark_group("leak");
    for (name, minutes, rate) in [
        ("test_2h", 130, 0.3e6),
        ("test_40m", 40, 0.3e6),
        ("test_2h_calm", 130, 0.0),
    ] {
        let (t, m) = track(minutes, 391, rate);
        if rate > 0.0 {
            assert!(leak::test_minutes(&t, &m, &l, STEP).is_some());
        }
        group.bench_function(name, |b| {
            b.iter(|| leak::test_minutes(black_box(&t), &m, &l, STEP))
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = bench
}
criterion_main!(benches);
