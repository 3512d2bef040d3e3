//! Comparing spreads: the Brown-Forsythe test, Bonett's interval for a ratio of standard deviations, and the
//! autocorrelation correction for process-level signals.

use statrs::distribution::{ContinuousCDF, FisherSnedecor};

use super::{quantile_sorted, sort_floats, with_order_keys};

/// A test's outcome.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TestResult {
    pub statistic: f64,
    pub df1: f64,
    pub df2: f64,
    pub p_value: f64,
}

/// An estimate with its confidence interval.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Interval {
    pub value: f64,
    pub low: f64,
    pub high: f64,
}

/// What the spread tests need of one group, computed once per window and reused for every comparison the group
/// takes part in (a baseline is compared with each canary).
#[derive(Clone, Debug, PartialEq)]
pub struct SpreadSummary {
    pub n: usize,
    pub mean: f64,
    /// Sample variance (n - 1).
    pub variance: f64,
    pub median: f64,
    /// Raw median absolute deviation from the median.
    pub mad: f64,
    /// Mean and sum of squared deviations of z = |x - median|, the Brown-Forsythe response.
    z_mean: f64,
    z_ss: f64,
    /// Sum of (x - trimmed mean)^4 and of (x - mean)^2, for Bonett's pooled kurtosis.
    m4_trimmed: f64,
    m2: f64,
}

impl SpreadSummary {
    /// `None` for fewer than five values.
    pub fn new(values: &[f64]) -> Option<SpreadSummary> {
        let n = values.len();
        if n < 5 {
            return None;
        }
        let mut sorted = values.to_vec();
        sort_floats(&mut sorted);
        let median = quantile_sorted(&sorted, 0.5);
        let mean = values.iter().sum::<f64>() / n as f64;
        let m2: f64 = values.iter().map(|x| (x - mean).powi(2)).sum();
        let z = || values.iter().map(|x| (x - median).abs());
        let z_mean = z().sum::<f64>() / n as f64;
        let z_ss = z().map(|v| (v - z_mean).powi(2)).sum();
        let mad = median_abs_dev_sorted(&sorted, median);
        // Bonett trims 1 / (2 sqrt(n - 4)) from each end for the kurtosis estimate's centre.
        let cut = ((n as f64) / (2.0 * ((n as f64) - 4.0).sqrt())).floor() as usize;
        let kept = &sorted[cut..n - cut];
        let trimmed = kept.iter().sum::<f64>() / kept.len() as f64;
        let m4_trimmed = values.iter().map(|x| (x - trimmed).powi(4)).sum();
        Some(SpreadSummary {
            n,
            mean,
            variance: m2 / (n - 1) as f64,
            median,
            mad,
            z_mean,
            z_ss,
            m4_trimmed,
            m2,
        })
    }
}

impl SpreadSummary {
    /// ln of the mean absolute deviation from the median (the Brown-Forsythe response's mean) and the variance
    /// of that log by the delta method, var(|x - median|) / (n mean^2), at least its value for normal data. The mean absolute deviation scales
    /// with the spread like the sd, but its variance stays finite wherever the data's does (Student-t(3)
    /// included), where the sd's needs a fourth moment. `None` when every value equals the median.
    pub fn log_mean_abs_dev(&self) -> Option<(f64, f64)> {
        if self.z_mean.is_nan() || self.z_mean <= 0.0 || self.n < 2 {
            return None;
        }
        let var_z = self.z_ss / (self.n - 1) as f64;
        // Floored at its value for normal data, (pi / 2 - 1) / n: with a dozen values the sample variance of the
        // deviations often misses a heavy or skewed tail, and the log ratio would then look surer than it is.
        let relative = (var_z / (self.z_mean * self.z_mean)).max(std::f64::consts::FRAC_PI_2 - 1.0);
        Some((self.z_mean.ln(), relative / self.n as f64))
    }
}

/// The Brown-Forsythe test (Levene's test centred on the median): one-way ANOVA on |x - median of its group|.
/// It keeps its false-alarm rate on heavy-tailed and skewed data, where the F-test of variances does not.
///
/// `inflation` >= 1 corrects for positive autocorrelation within groups: the deviations of successive requests
/// on one process are not independent, and the ANOVA's between-group mean square is then too large by about the
/// variance inflation factor of a mean. The statistic is divided by it and the denominator degrees of freedom
/// use the effective sample size N / inflation. Use 1 for independent data.
pub fn brown_forsythe(groups: &[&[f64]], inflation: f64) -> Option<TestResult> {
    let summaries: Option<Vec<SpreadSummary>> =
        groups.iter().map(|g| SpreadSummary::new(g)).collect();
    brown_forsythe_from(&summaries?, inflation)
}

/// [`brown_forsythe`] from precomputed summaries.
pub fn brown_forsythe_from(groups: &[SpreadSummary], inflation: f64) -> Option<TestResult> {
    let k = groups.len();
    let n_total: usize = groups.iter().map(|g| g.n).sum();
    if k < 2 || n_total <= k {
        return None;
    }
    let grand = groups.iter().map(|g| g.z_mean * g.n as f64).sum::<f64>() / n_total as f64;
    let between: f64 = groups
        .iter()
        .map(|g| g.n as f64 * (g.z_mean - grand).powi(2))
        .sum();
    let within: f64 = groups.iter().map(|g| g.z_ss).sum();
    let inflation = inflation.max(1.0);
    let df1 = (k - 1) as f64;
    let df2_raw = (n_total - k) as f64;
    let df2 = ((n_total as f64 / inflation) - k as f64).max(1.0);
    let statistic = if within > 0.0 {
        (between / df1) / (within / df2_raw) / inflation
    } else if between > 0.0 {
        f64::INFINITY
    } else {
        0.0
    };
    let p_value = if statistic.is_infinite() {
        0.0
    } else {
        FisherSnedecor::new(df1, df2).ok()?.sf(statistic)
    };
    Some(TestResult {
        statistic,
        df1,
        df2,
        p_value,
    })
}

/// Bonett's (2006) confidence interval for the ratio of standard deviations sd(x) / sd(y), robust to
/// non-normality through a pooled kurtosis estimate (taken about trimmed means, trim 1 / (2 sqrt(n - 4))).
/// `n_eff` may be smaller than the sample sizes when the data are autocorrelated; the interval widens.
/// Also returns the standard error of ln(sd ratio), which the sequential test uses.
pub fn bonett_sd_ratio(
    x: &[f64],
    y: &[f64],
    n_eff: (f64, f64),
    confidence: f64,
) -> Option<(Interval, f64)> {
    bonett_sd_ratio_from(
        &SpreadSummary::new(x)?,
        &SpreadSummary::new(y)?,
        n_eff,
        confidence,
    )
}

/// [`bonett_sd_ratio`] from precomputed summaries.
pub fn bonett_sd_ratio_from(
    x: &SpreadSummary,
    y: &SpreadSummary,
    n_eff: (f64, f64),
    confidence: f64,
) -> Option<(Interval, f64)> {
    let (v1, v2) = (x.variance, y.variance);
    if v1 <= 0.0 || v2 <= 0.0 || x.m2 + y.m2 <= 0.0 {
        return None;
    }
    let kurtosis = (x.n + y.n) as f64 * (x.m4_trimmed + y.m4_trimmed) / (x.m2 + y.m2).powi(2);
    let (e1, e2) = (
        n_eff.0.clamp(5.0, x.n as f64),
        n_eff.1.clamp(5.0, y.n as f64),
    );
    let se2 = (kurtosis - (e1 - 3.0) / e1) / (e1 - 1.0) + (kurtosis - (e2 - 3.0) / e2) / (e2 - 1.0);
    let se = se2.max(1e-12).sqrt();
    let z = super::normal_quantile(0.5 + confidence / 2.0);
    let c = (e1 / (e1 - z)) / (e2 / (e2 - z));
    let center = (c * v1 / v2).ln();
    // The interval is for ln(variance ratio); halve for the sd ratio.
    Some((
        Interval {
            value: (v1 / v2).sqrt(),
            low: ((center - z * se) / 2.0).exp(),
            high: ((center + z * se) / 2.0).exp(),
        },
        se / 2.0,
    ))
}

/// The median of |x - `median`| over `sorted` (ascending), as [`median_in_place`] gives it, without a copy: the
/// deviations below and above the median are two ascending runs, merged from the median outward until the
/// middle.
fn median_abs_dev_sorted(sorted: &[f64], median: f64) -> f64 {
    let n = sorted.len();
    if n == 0 {
        return f64::NAN;
    }
    let split = sorted.partition_point(|x| *x <= median);
    let (below, above) = sorted.split_at(split);
    let mut down = below.iter().rev().map(|x| (x - median).abs()).peekable();
    let mut up = above.iter().map(|x| (x - median).abs()).peekable();
    let mut next = || match (down.peek(), up.peek()) {
        (Some(a), Some(b)) if a.total_cmp(b).is_gt() => up.next(),
        (Some(_), _) => down.next(),
        (None, _) => up.next(),
    };
    // The (n/2 - 1)-th and (n/2)-th smallest deviations (0-based).
    let mut prev = f64::NAN;
    for _ in 0..n / 2 {
        prev = next().unwrap_or(f64::NAN);
    }
    let mid = next().unwrap_or(f64::NAN);
    if n % 2 == 1 {
        mid
    } else {
        0.5 * (prev + mid)
    }
}

/// The median (mean of the two middle values for an even count), reordering `values`; linear time.
pub fn median_in_place(values: &mut [f64]) -> f64 {
    let n = values.len();
    if n == 0 {
        return f64::NAN;
    }
    with_order_keys(values, |k| {
        k.select_nth_unstable_by_key(n / 2, |v| v.to_bits() as i64);
    });
    let (lower, mid) = (&values[..n / 2], values[n / 2]);
    if n % 2 == 1 {
        mid
    } else {
        let below = lower.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        0.5 * (below + mid)
    }
}

/// Lag-1 and lag-2 autocorrelations of a sequence in time order, the lag-1 value with the first-order bias
/// correction for short series (the estimate is biased toward zero by about (1 + 4 rho) / n). `None` for fewer
/// than 8 points or no variance. Returns (rho1, rho2, n).
pub fn lag_autocorrelations(seq: &[f64]) -> Option<(f64, f64, usize)> {
    let n = seq.len();
    if n < 8 {
        return None;
    }
    let mean = seq.iter().sum::<f64>() / n as f64;
    let denom: f64 = seq.iter().map(|x| (x - mean).powi(2)).sum();
    if denom <= 0.0 {
        return None;
    }
    let lag = |k: usize| -> f64 {
        seq.iter()
            .zip(&seq[k..])
            .map(|(a, b)| (a - mean) * (b - mean))
            .sum::<f64>()
            / denom
    };
    let r1 = lag(1);
    let bias = (1.0 + 4.0 * r1.max(0.0)) / n as f64;
    Some((
        (r1 + bias).clamp(-0.99, 0.99),
        (lag(2) + bias).clamp(-0.99, 0.99),
        n,
    ))
}

/// Lag-1 autocorrelation alone; see [`lag_autocorrelations`].
pub fn lag1_autocorrelation(seq: &[f64]) -> Option<(f64, usize)> {
    lag_autocorrelations(seq).map(|(r1, _, n)| (r1, n))
}

/// The variance inflation factor of a mean of a series with lag-1 and lag-2 autocorrelations `rho1`, `rho2` and
/// geometrically decaying correlations beyond: 1 + 2 rho1 / (1 - r), r = rho2 / rho1 (for an AR(1), r = rho1
/// and this is (1 + rho) / (1 - rho)). Deviations |x - median| of an AR(1) decay more slowly than geometric in
/// rho1, so measuring the decay matters. `n` (values behind the estimates) decides whether rho1 is clearly
/// positive; if not, the AR(1) form is used. Negative autocorrelation is not credited; the factor is at most 40.
pub fn variance_inflation(rho1: f64, rho2: f64, n: usize) -> f64 {
    if rho1 <= 0.0 {
        return 1.0;
    }
    let clearly_positive = rho1 > 2.0 / (n.max(1) as f64).sqrt();
    let r = if clearly_positive {
        (rho2 / rho1).clamp(rho1.min(0.95), 0.95)
    } else {
        rho1.min(0.95)
    };
    (1.0 + 2.0 * rho1 / (1.0 - r)).min(40.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn brown_forsythe_matches_scipy() {
        // scipy 1.17.1, stats.levene(a, b, c, center='median'), the example of scipy's documentation:
        // LeveneResult(statistic=7.584952754501659, pvalue=0.002431505967249677)
        let a = [8.88, 9.12, 9.04, 8.98, 9.00, 9.08, 9.01, 8.85, 9.06, 8.99];
        let b = [8.88, 8.95, 9.29, 9.44, 9.15, 9.58, 8.36, 9.18, 8.67, 9.05];
        let c = [8.95, 9.12, 8.95, 8.85, 9.03, 8.84, 9.07, 8.98, 8.86, 8.98];
        let r = brown_forsythe(&[&a, &b, &c], 1.0).expect("computes");
        assert!((r.statistic - 7.584952754501659).abs() < 1e-9, "{r:?}");
        assert!((r.p_value - 0.002431505967249677).abs() < 1e-12, "{r:?}");
        assert_eq!((r.df1, r.df2), (2.0, 27.0));
        // Two groups: stats.levene(a, b, center='median') = (8.461374333228711, 0.009364737715584381)
        let r = brown_forsythe(&[&a, &b], 1.0).expect("computes");
        assert!((r.statistic - 8.461374333228711).abs() < 1e-9, "{r:?}");
        assert!((r.p_value - 0.009364737715584381).abs() < 1e-12, "{r:?}");
        // Unequal sizes with an outlier: stats.levene(x, y, center='median') =
        // (2.0532979390159594, 0.17001104248844448)
        let x = [
            12.1, 9.8, 15.3, 11.0, 10.4, 13.9, 8.7, 12.5, 30.2, 11.8, 10.9,
        ];
        let y = [10.2, 10.9, 11.1, 10.5, 10.8, 11.3, 10.0, 10.6];
        let r = brown_forsythe(&[&x, &y], 1.0).expect("computes");
        assert!((r.statistic - 2.0532979390159594).abs() < 1e-9, "{r:?}");
        assert!((r.p_value - 0.17001104248844448).abs() < 1e-12, "{r:?}");
    }

    #[test]
    fn bonett_interval_covers_the_true_ratio_about_95_percent_of_the_time() {
        // Known truth: sd ratio 1.5 between two samples of 50, normal and Student-t(5) data, 2000 replications
        // each. Bonett reports coverage close to nominal for these; accept 93% to 97% (binomial sd 0.5%).
        use rand::{Rng, SeedableRng};
        use rand_distr::{StandardNormal, StudentT};
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        let t5 = StudentT::new(5.0).expect("valid");
        for heavy in [false, true] {
            let mut covered = 0;
            for _ in 0..2000 {
                let mut draw = |scale: f64| -> Vec<f64> {
                    (0..50)
                        .map(|_| {
                            let e: f64 = if heavy {
                                rng.sample(t5)
                            } else {
                                rng.sample(StandardNormal)
                            };
                            e * scale
                        })
                        .collect()
                };
                let (x, y) = (draw(1.5), draw(1.0));
                let (ci, _) = bonett_sd_ratio(&x, &y, (50.0, 50.0), 0.95).expect("computes");
                if ci.low <= 1.5 && 1.5 <= ci.high {
                    covered += 1;
                }
            }
            let coverage = covered as f64 / 2000.0;
            assert!(
                (0.93..=0.97).contains(&coverage),
                "heavy={heavy}: coverage {coverage}"
            );
        }
    }

    #[test]
    fn inflation_divides_the_statistic_and_the_degrees_of_freedom() {
        let a = [8.88, 9.12, 9.04, 8.98, 9.00, 9.08, 9.01, 8.85, 9.06, 8.99];
        let b = [8.88, 8.95, 9.29, 9.44, 9.15, 9.58, 8.36, 9.18, 8.67, 9.05];
        let plain = brown_forsythe(&[&a, &b], 1.0).expect("computes");
        let corrected = brown_forsythe(&[&a, &b], 2.0).expect("computes");
        assert!((corrected.statistic - plain.statistic / 2.0).abs() < 1e-9);
        assert_eq!(corrected.df2, 8.0);
        assert!(corrected.p_value > plain.p_value);
    }

    #[test]
    fn degenerate_input_is_none_not_a_panic() {
        assert!(brown_forsythe(&[&[1.0], &[2.0, 3.0]], 1.0).is_none());
        assert!(brown_forsythe(&[&[1.0, 2.0, 3.0, 4.0, 5.0]], 1.0).is_none());
        let flat = brown_forsythe(&[&[1.0; 5], &[2.0; 5]], 1.0).expect("computes");
        assert_eq!(flat.statistic, 0.0);
        assert!(bonett_sd_ratio(
            &[1.0; 10],
            &[2.0, 3.0, 4.0, 5.0, 6.0, 7.0],
            (10.0, 6.0),
            0.95
        )
        .is_none());
        assert!(lag1_autocorrelation(&[1.0; 20]).is_none());
    }

    #[test]
    fn the_merged_deviations_give_median_in_place_s_mad() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        for n in 1..60 {
            for ties in [false, true] {
                let mut v: Vec<f64> = (0..n)
                    .map(|_| {
                        let x = rng.random_range(-50.0..50.0f64);
                        if ties {
                            x.round()
                        } else {
                            x
                        }
                    })
                    .collect();
                super::sort_floats(&mut v);
                let median = quantile_sorted(&v, 0.5);
                let mut z: Vec<f64> = v.iter().map(|x| (x - median).abs()).collect();
                let want = median_in_place(&mut z);
                assert_eq!(
                    median_abs_dev_sorted(&v, median).to_bits(),
                    want.to_bits(),
                    "n {n}"
                );
            }
        }
    }

    #[test]
    fn median_in_place_matches_the_sorted_median() {
        let mut odd = vec![5.0, 1.0, 4.0, 2.0, 3.0];
        assert_eq!(median_in_place(&mut odd), 3.0);
        let mut even = vec![8.0, 1.0, 4.0, 2.0, 3.0, 9.0];
        assert_eq!(median_in_place(&mut even), 3.5);
        assert!(median_in_place(&mut []).is_nan());
    }

    #[test]
    fn lag1_autocorrelation_of_known_sequences() {
        // An alternating sequence has r near -1; a linear ramp near +1.
        let alt: Vec<f64> = (0..100)
            .map(|i| if i % 2 == 0 { 1.0 } else { -1.0 })
            .collect();
        assert!(lag1_autocorrelation(&alt).expect("r").0 < -0.9);
        let ramp: Vec<f64> = (0..100).map(f64::from).collect();
        assert!(lag1_autocorrelation(&ramp).expect("r").0 > 0.9);
        assert_eq!(variance_inflation(-0.5, 0.2, 100), 1.0);
        // AR(1): rho2 = rho1^2 gives (1 + rho) / (1 - rho).
        assert!((variance_inflation(0.9, 0.81, 100) - 19.0).abs() < 1e-9);
        // Slower decay than geometric in rho1 inflates more.
        assert!(variance_inflation(0.78, 0.62, 100) > variance_inflation(0.78, 0.78 * 0.78, 100));
    }
}
