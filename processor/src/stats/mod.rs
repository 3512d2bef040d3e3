//! The statistics memdrift's detectors stand on, written by hand where no well-kept crate has them (statrs
//! supplies the distributions). Each function is checked against published or independently computed values in
//! its tests, quoted there.

mod msprt;
mod scale;
mod trend;

pub use msprt::{Msprt, MsprtChange};
pub use scale::{
    bonett_sd_ratio, bonett_sd_ratio_from, brown_forsythe, brown_forsythe_from,
    lag1_autocorrelation, lag_autocorrelations, median_in_place, variance_inflation, Interval,
    SpreadSummary, TestResult,
};
pub use trend::{
    mann_kendall, mann_kendall_sen, mann_kendall_slope, sen_slope, theil_sen, theil_sen_with,
    MannKendall, SenSlope,
};

use statrs::distribution::{ContinuousCDF, Normal};

/// The integer whose order is `f64::total_cmp`'s order of `v` (the transform `total_cmp` applies to both sides
/// of every comparison). Sorting and selecting on it compares integers: the detectors' order statistics are
/// most of their cost.
pub fn order_key(v: f64) -> i64 {
    let bits = v.to_bits() as i64;
    bits ^ (((bits >> 63) as u64) >> 1) as i64
}

/// The float an [`order_key`] stands for (bit for bit).
pub fn from_order_key(k: i64) -> f64 {
    f64::from_bits((k ^ (((k >> 63) as u64) >> 1) as i64) as u64)
}

/// Runs `f` on `values` held as their [`order_key`]s' bits (so that `f` may order them by `v.to_bits() as i64`,
/// an integer comparison), then puts the floats back. No allocation.
pub fn with_order_keys<R>(values: &mut [f64], f: impl FnOnce(&mut [f64]) -> R) -> R {
    for v in values.iter_mut() {
        *v = f64::from_bits(order_key(*v) as u64);
    }
    let r = f(values);
    for v in values.iter_mut() {
        *v = from_order_key(v.to_bits() as i64);
    }
    r
}

/// Sorts `values` as `sort_unstable_by(f64::total_cmp)` does, comparing integers ([`with_order_keys`]).
pub fn sort_floats(values: &mut [f64]) {
    with_order_keys(values, |k| k.sort_unstable_by_key(|v| v.to_bits() as i64));
}

/// The standard normal quantile.
pub fn normal_quantile(p: f64) -> f64 {
    // N(0, 1) always constructs.
    Normal::standard().inverse_cdf(p)
}

/// Benjamini-Hochberg at level `q`: which of `p_values` are discoveries. Controls the false discovery rate across
/// the keys evaluated together (independent or positively dependent tests).
pub fn benjamini_hochberg(p_values: &[f64], q: f64) -> Vec<bool> {
    let cutoff = benjamini_hochberg_cutoff(p_values, q);
    p_values
        .iter()
        .map(|p| cutoff.is_some_and(|c| *p <= c))
        .collect()
}

/// Benjamini-Hochberg's rejection threshold: the largest p_(k) with p_(k) <= k q / m; every p-value up to it is
/// a discovery. `None` when there is none.
pub fn benjamini_hochberg_cutoff(p_values: &[f64], q: f64) -> Option<f64> {
    let m = p_values.len();
    let mut sorted = p_values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted
        .iter()
        .enumerate()
        .rev()
        .find(|(rank, p)| **p <= (rank + 1) as f64 * q / m as f64)
        .map(|(_, p)| *p)
}

/// The decision threshold `h` of a one-sided CUSUM on N(0, 1) observations with reference value `k`, for an
/// in-control average run length `arl` (Siegmund's approximation, ARL0 = (e^{2kb} - 2kb - 1) / (2k^2) with
/// b = h + 1.166), solved by bisection.
pub fn cusum_threshold(k: f64, arl: f64) -> f64 {
    let arl_of = |h: f64| {
        let b = 2.0 * k * (h + 1.166);
        (b.exp() - b - 1.0) / (2.0 * k * k)
    };
    let (mut lo, mut hi) = (0.0, 100.0);
    for _ in 0..100 {
        let mid = 0.5 * (lo + hi);
        if arl_of(mid) < arl {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    0.5 * (lo + hi)
}

/// The quantile of sorted data by linear interpolation between order statistics (Hyndman-Fan type 7, the
/// default of R and numpy).
pub fn quantile_sorted(sorted: &[f64], q: f64) -> f64 {
    match sorted.len() {
        0 => f64::NAN,
        1 => sorted[0],
        n => {
            let h = (n - 1) as f64 * q.clamp(0.0, 1.0);
            let lo = h.floor() as usize;
            let hi = (lo + 1).min(n - 1);
            sorted[lo] + (h - lo as f64) * (sorted[hi] - sorted[lo])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sort_floats_sorts_as_total_cmp_does() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let special = [
            f64::NAN,
            -f64::NAN,
            -0.0,
            0.0,
            f64::INFINITY,
            f64::NEG_INFINITY,
            1e-310,
        ];
        for n in [0usize, 1, 2, 7, 20, 64, 301] {
            let mut v: Vec<f64> = (0..n)
                .map(|_| {
                    if rng.random_range(0.0..1.0) < 0.1 {
                        special[rng.random_range(0..special.len())]
                    } else {
                        rng.random_range(-1e6..1e6f64).round()
                    }
                })
                .collect();
            let mut want = v.clone();
            want.sort_by(f64::total_cmp);
            sort_floats(&mut v);
            let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&v), bits(&want), "n {n}");
        }
    }

    #[test]
    fn benjamini_hochberg_matches_the_worked_example() {
        // Benjamini & Hochberg (1995), section 3.2: 15 p-values, q = 0.05: the four smallest are rejected.
        let p = [
            0.0001, 0.0004, 0.0019, 0.0095, 0.0201, 0.0278, 0.0298, 0.0344, 0.0459, 0.3240, 0.4262,
            0.5719, 0.6528, 0.7590, 1.0,
        ];
        let r = benjamini_hochberg(&p, 0.05);
        assert_eq!(r.iter().filter(|x| **x).count(), 4);
        assert!(r[..4].iter().all(|x| *x));
        // Order does not matter.
        let mut rev = p;
        rev.reverse();
        assert_eq!(
            benjamini_hochberg(&rev, 0.05)
                .iter()
                .filter(|x| **x)
                .count(),
            4
        );
        assert!(benjamini_hochberg(&[], 0.05).is_empty());
    }

    #[test]
    fn cusum_threshold_matches_siegmund_tables() {
        // Siegmund's formula at k = 0.5, h = 5: b = 6.166, (e^b - b - 1) / 0.5 = 938.2.
        let h = cusum_threshold(0.5, 938.2);
        assert!((h - 5.0).abs() < 0.05, "h = {h}");
        assert!(cusum_threshold(0.5, 43_200.0) > h);
    }

    #[test]
    fn normal_quantiles() {
        assert!((normal_quantile(0.975) - 1.959963984540054).abs() < 1e-9);
        assert!((normal_quantile(0.5)).abs() < 1e-12);
    }
}
