//! Cost of one spread comparison: what the `spread_drift` detector spends per (canary, baseline) key per
//! evaluation, with 100 values per cohort in the window.
//!
//! Measured: building both cohorts' spread summaries from the window's values (`CohortSpread::from_values`:
//! sort, median, MAD, Brown-Forsythe deviations, trimmed mean; for process-level signals also per-instance
//! centring and the lag-1/lag-2 autocorrelation) and `compare` (Brown-Forsythe with its F p-value, Bonett's
//! interval). Not measured: the engine's window, the mSPRT update and Benjamini-Hochberg (a few arithmetic
//! operations per key). Values are fixed pseudo-random normals, 2 instances per cohort.
//!
//! ```text
//! cargo bench -p memdrift --bench spread_drift
//! ```

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use memdrift::detect::spread_drift::{compare, CohortSpread};
use rand::{Rng, SeedableRng};
use rand_distr::StandardNormal;

fn cohort(rng: &mut rand::rngs::StdRng, scale: f64) -> (Vec<f64>, Vec<u32>) {
    let values = (0..100)
        .map(|_| 8e6 + 1e6 * scale * rng.sample::<f64, _>(StandardNormal))
        .collect();
    let tags = (0..100).map(|i| (i / 50) as u32).collect();
    (values, tags)
}

fn spread(c: &mut Criterion) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let (cv, ct) = cohort(&mut rng, 1.3);
    let (bv, bt) = cohort(&mut rng, 1.0);
    let mut group = c.benchmark_group("spread_drift/100+100");
    group.throughput(Throughput::Elements(1));
    for (name, per_request) in [("per_request", true), ("process_level", false)] {
        group.bench_function(name, |b| {
            b.iter(|| {
                let canary = CohortSpread::from_values(black_box(&cv), &ct, per_request)
                    .expect("enough values");
                let baseline = CohortSpread::from_values(black_box(&bv), &bt, per_request)
                    .expect("enough values");
                compare(&canary, &baseline).expect("comparable")
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(4)).warm_up_time(Duration::from_secs(2));
    targets = spread
}
criterion_main!(benches);
