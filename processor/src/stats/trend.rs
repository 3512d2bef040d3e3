//! Trend statistics on short, evenly spaced series: the Theil-Sen slope with Sen's (1968) confidence interval,
//! and the Mann-Kendall test with the Hamed-Rao (1998) variance correction for serial correlation.
//!
//! Both work on values at positions `0, 1, .., n-1` (a regular grid); missing points are `NaN` and skipped, the
//! remaining points keep their positions. Slopes are per grid step.

use statrs::distribution::{ContinuousCDF, Normal};

use super::{from_order_key as slope_of, normal_quantile, order_key as key, sort_floats};

/// Theil-Sen slope per step with a two-sided confidence interval, and the median intercept at position 0.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SenSlope {
    pub slope: f64,
    pub low: f64,
    pub high: f64,
    pub intercept: f64,
}

/// The Mann-Kendall test with its trend estimate.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MannKendall {
    /// Kendall's S.
    pub s: f64,
    /// Var(S) after the tie correction and, when asked, the Hamed-Rao factor.
    pub var_s: f64,
    /// n / n*: the Hamed-Rao variance inflation (1 when not corrected).
    pub inflation: f64,
    pub z: f64,
    /// Two-sided p-value.
    pub p_value: f64,
    pub n: usize,
}

/// Var(S) under no trend, with the correction for tied values.
fn var_s_ties(values: &mut [f64]) -> f64 {
    let n = values.len() as f64;
    sort_floats(values);
    let mut ties = 0.0;
    let mut i = 0;
    while i < values.len() {
        let mut j = i + 1;
        while j < values.len() && values[j] == values[i] {
            j += 1;
        }
        let t = (j - i) as f64;
        if t > 1.0 {
            ties += t * (t - 1.0) * (2.0 * t + 5.0);
        }
        i = j;
    }
    (n * (n - 1.0) * (2.0 * n + 5.0) - ties) / 18.0
}

/// Positions and values of the present points.
fn present(y: &[f64]) -> (Vec<f64>, Vec<f64>) {
    y.iter()
        .enumerate()
        .filter(|(_, v)| v.is_finite())
        .map(|(i, v)| (i as f64, *v))
        .unzip()
}

/// The present points with every pairwise slope and Kendall's S, from one pass over the pairs: positions
/// increase, so a pair's slope has the sign of its value difference.
///
/// Slopes are held as [`key`]s: integers ordered as `f64::total_cmp` orders the slopes, so the selections
/// below compare integers (most of a trend test's time is those selections).
struct Pairs {
    x: Vec<f64>,
    v: Vec<f64>,
    slopes: Vec<i64>,
    s: f64,
}

fn pairs(y: &[f64]) -> Pairs {
    let (x, v) = present(y);
    let n = v.len();
    let mut slopes = Vec::with_capacity(n * n.saturating_sub(1) / 2);
    let mut s = 0i64;
    for i in 0..n {
        let (xi, vi) = (x[i], v[i]);
        debug_assert!(x[i + 1..].iter().all(|&xj| xj > xi));
        // Two straight loops over the rest: both vectorise.
        s += v[i + 1..]
            .iter()
            .map(|&vj| (vj > vi) as i64 - (vj < vi) as i64)
            .sum::<i64>();
        slopes.extend(
            v[i + 1..]
                .iter()
                .zip(&x[i + 1..])
                .map(|(&vj, &xj)| key((vj - vi) / (xj - xi))),
        );
    }
    Pairs {
        x,
        v,
        slopes,
        s: s as f64,
    }
}

fn pick(s: &mut [i64], k: usize) -> f64 {
    slope_of(*s.select_nth_unstable(k).1)
}

/// The median of the pairwise slopes (the Theil-Sen slope). `slopes` is reordered, not changed, and left
/// partitioned around position m/2, which [`order_stat`] then uses to search only one side.
fn median_slope(slopes: &mut [i64]) -> f64 {
    let m = slopes.len();
    let k = m / 2;
    let b = pick(slopes, k);
    if m % 2 == 1 {
        b
    } else {
        // Everything before position k is at most the k-th: the (k-1)-th is their maximum.
        let a = slopes[..k].iter().copied().max().map_or(b, slope_of);
        (a + b) / 2.0
    }
}

/// The `i`-th smallest slope, `slopes` being partitioned around m/2 by [`median_slope`]: a selection within the
/// one side that holds it.
fn order_stat(slopes: &mut [i64], i: usize) -> f64 {
    let k = slopes.len() / 2;
    match i.cmp(&k) {
        std::cmp::Ordering::Less => pick(&mut slopes[..k], i),
        std::cmp::Ordering::Equal => slope_of(slopes[k]),
        std::cmp::Ordering::Greater => pick(&mut slopes[k + 1..], i - k - 1),
    }
}

/// The Mann-Kendall test on `p`; `sen` is the Theil-Sen slope when the Hamed-Rao correction is wanted.
fn mann_kendall_of(p: &Pairs, sen: Option<f64>) -> MannKendall {
    let (x, v, s) = (&p.x, &p.v, p.s);
    let n = v.len();
    let mut scratch = v.clone();
    let var0 = var_s_ties(&mut scratch);
    let mut inflation = 1.0;
    if let Some(slope) = sen {
        // Detrend (pymannkendall uses positions 1..n; a constant shift does not change the ranks).
        let detrended: Vec<f64> = x.iter().zip(v).map(|(t, v)| v - slope * t).collect();
        let ranks = rank(&detrended);
        let nf = n as f64;
        let mean = ranks.iter().sum::<f64>() / nf;
        let dev: Vec<f64> = ranks.iter().map(|r| r - mean).collect();
        let c0: f64 = dev.iter().map(|d| d * d).sum();
        let bound = normal_quantile(0.975) / nf.sqrt();
        let mut sum = 0.0;
        if c0 > 0.0 {
            for k in 1..n {
                let ck: f64 = (0..n - k).map(|i| dev[i] * dev[i + k]).sum();
                let r = ck / c0;
                if r.abs() > bound {
                    let m = (n - k) as f64;
                    sum += m * (m - 1.0) * (m - 2.0) * r;
                }
            }
        }
        inflation = 1.0 + 2.0 / (nf * (nf - 1.0) * (nf - 2.0)) * sum;
        if !(inflation.is_finite() && inflation > 0.0) {
            inflation = 1.0;
        }
    }
    let var_s = var0 * inflation;
    let z = if var_s <= 0.0 {
        0.0
    } else if s > 0.0 {
        (s - 1.0) / var_s.sqrt()
    } else if s < 0.0 {
        (s + 1.0) / var_s.sqrt()
    } else {
        0.0
    };
    let p_value = 2.0 * (1.0 - Normal::standard().cdf(z.abs()));
    MannKendall {
        s,
        var_s,
        inflation,
        z,
        p_value,
        n,
    }
}

/// The Mann-Kendall trend test. With `hamed_rao`, Var(S) is multiplied by n/n* computed from the significant
/// (at 5%) autocorrelations of the ranks of the Sen-detrended series, as in Hamed & Rao (1998) and
/// `pymannkendall.hamed_rao_modification_test` (all lags). `None` with fewer than 4 points.
pub fn mann_kendall(y: &[f64], hamed_rao: bool) -> Option<MannKendall> {
    let mut p = pairs(y);
    if p.v.len() < 4 {
        return None;
    }
    let sen = hamed_rao.then(|| median_slope(&mut p.slopes));
    Some(mann_kendall_of(&p, sen))
}

/// [`mann_kendall`] with the Hamed-Rao correction and [`theil_sen_with`] at its inflation, exactly as the two
/// calls give them, from one pass over the pairs (the costly part of both). `None` with fewer than 4 points.
pub fn mann_kendall_sen(y: &[f64], level: f64) -> Option<(MannKendall, SenSlope)> {
    let mut p = pairs(y);
    if p.v.len() < 4 {
        return None;
    }
    let median = median_slope(&mut p.slopes);
    let mk = mann_kendall_of(&p, Some(median));
    let sen = sen_interval(p, median, level, mk.inflation);
    Some((mk, sen))
}

/// [`mann_kendall`] with the Hamed-Rao correction and the Theil-Sen slope, without Sen's interval: for a series
/// only asked whether, and how fast, it rises. `None` with fewer than 4 points.
pub fn mann_kendall_slope(y: &[f64]) -> Option<(MannKendall, f64)> {
    let mut p = pairs(y);
    if p.v.len() < 4 {
        return None;
    }
    let median = median_slope(&mut p.slopes);
    Some((mann_kendall_of(&p, Some(median)), median))
}

/// Average ranks (1-based), ties sharing their mean rank.
fn rank(v: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..v.len()).collect();
    order.sort_by(|&a, &b| v[a].total_cmp(&v[b]));
    let mut ranks = vec![0.0; v.len()];
    let mut i = 0;
    while i < order.len() {
        let mut j = i + 1;
        while j < order.len() && v[order[j]] == v[order[i]] {
            j += 1;
        }
        let r = (i + j + 1) as f64 / 2.0;
        for &k in &order[i..j] {
            ranks[k] = r;
        }
        i = j;
    }
    ranks
}

/// The Theil-Sen slope (median of pairwise slopes) with Sen's distribution-free interval at `level`: with
/// N pairwise slopes and C = z * sqrt(Var S), the bounds are the (N - C)/2-th and ((N + C)/2 + 1)-th ordered
/// slopes (Sen 1968; Hollander & Wolfe; Gilbert 1987, 16.5; as R `trend::sens.slope`). The intercept is the
/// median of y minus the slope times the median position (as pymannkendall). `None` with fewer than 3 points.
pub fn theil_sen(y: &[f64], level: f64) -> Option<SenSlope> {
    theil_sen_with(y, level, 1.0)
}

/// The Theil-Sen slope alone, without its interval or intercept: for a series only asked how fast it rises.
/// `None` with fewer than 3 points.
pub fn sen_slope(y: &[f64]) -> Option<f64> {
    let mut p = pairs(y);
    (p.v.len() >= 3).then(|| median_slope(&mut p.slopes))
}

/// [`theil_sen`] with Var(S) multiplied by `inflation` (e.g. Hamed-Rao's n/n*): a wider interval for
/// autocorrelated series.
pub fn theil_sen_with(y: &[f64], level: f64, inflation: f64) -> Option<SenSlope> {
    let mut p = pairs(y);
    if p.v.len() < 3 {
        return None;
    }
    let median = median_slope(&mut p.slopes);
    Some(sen_interval(p, median, level, inflation))
}

/// Sen's interval around the median slope, and the intercept.
fn sen_interval(p: Pairs, median: f64, level: f64, inflation: f64) -> SenSlope {
    let Pairs {
        x, v, mut slopes, ..
    } = p;
    let m = slopes.len();
    let mut scratch = v.clone();
    let var_s = var_s_ties(&mut scratch) * inflation.max(0.0);
    let c = normal_quantile(0.5 + level / 2.0) * var_s.sqrt();
    // 1-based ranks, rounded as R's trend::sens.slope does.
    let m1 = ((m as f64 - c) / 2.0).round();
    let m2 = ((m as f64 + c) / 2.0).round() + 1.0;
    let lo_i = (m1.max(1.0) as usize - 1).min(m - 1);
    let hi_i = (m2.max(1.0) as usize - 1).min(m - 1);
    let low = order_stat(&mut slopes, lo_i);
    let high = order_stat(&mut slopes, hi_i);
    let mut xs = x;
    let mut ys = v;
    let intercept = super::median_in_place(&mut ys) - median * super::median_in_place(&mut xs);
    SenSlope {
        slope: median,
        low: low.min(median),
        high: high.max(median),
        intercept,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol
    }

    #[test]
    fn mann_kendall_matches_pymannkendall() {
        // x = [4.81, 4.17, 4.41, 3.59, 5.87, 3.83, 6.03, 4.89, 4.32, 4.69, 5.5, 5.3, 6.1, 5.8, 6.4, 6.2]
        // pymannkendall.original_test(x): s = 62, var_s = 493.3333, z = 2.7464, p = 0.0060256.
        let x = [
            4.81, 4.17, 4.41, 3.59, 5.87, 3.83, 6.03, 4.89, 4.32, 4.69, 5.5, 5.3, 6.1, 5.8, 6.4,
            6.2,
        ];
        let mk = mann_kendall(&x, false).unwrap();
        assert_eq!(mk.s, 62.0);
        assert!(close(mk.var_s, 493.3333, 1e-3), "{mk:?}");
        assert!(close(mk.z, 2.7464, 1e-3), "{mk:?}");
        assert!(close(mk.p_value, 0.0060256, 1e-5), "{mk:?}");
    }

    #[test]
    fn hamed_rao_inflates_for_autocorrelation_like_pymannkendall() {
        // AR(1) (phi 0.8) with a weak trend, 40 points, numpy default_rng(7); pymannkendall 1.4
        // hamed_rao_modification_test(y): s = -76, var_s = 25216.7678, p = 0.636714 (uncorrected var_s 7366.67).
        let x = [
            0.001, 0.35, 0.066, -0.768, -0.989, -1.693, -1.194, 0.495, 0.024, -0.472, 0.253, 0.709,
            0.833, -0.094, 0.075, 0.945, -0.388, -0.558, -2.128, -2.762, -3.811, -3.034, -3.435,
            -2.206, -1.328, -0.96, -2.984, -2.616, -1.822, -1.014, -2.001, -1.729, -2.002, -2.04,
            -0.191, -0.57, -0.089, 1.223, 0.815, 0.97,
        ];
        let (s, var_s, p) = (-76.0, 25216.7678, 0.636714);
        let mk = mann_kendall(&x, true).unwrap();
        assert_eq!(mk.s, s);
        assert!(close(mk.var_s, var_s, 1e-3 * var_s), "{mk:?}");
        assert!(close(mk.p_value, p, 1e-4), "{mk:?}");
    }

    #[test]
    fn sen_slope_matches_r_trend() {
        // Same series as the Mann-Kendall example. pymannkendall.sens_slope: slope 0.1455, intercept 4.00375.
        // Interval at 95% (R trend::sens.slope conventions): the
        // 33rd and 89th of the 120 ordered pairwise slopes, computed below by brute force.
        let x = [
            4.81, 4.17, 4.41, 3.59, 5.87, 3.83, 6.03, 4.89, 4.32, 4.69, 5.5, 5.3, 6.1, 5.8, 6.4,
            6.2,
        ];
        let s = theil_sen(&x, 0.95).unwrap();
        assert!(close(s.slope, 0.1455, 1e-9), "{s:?}");
        assert!(close(s.intercept, 4.00375, 1e-9), "{s:?}");
        let mut all = Vec::new();
        for i in 0..x.len() {
            for j in i + 1..x.len() {
                all.push((x[j] - x[i]) / (j - i) as f64);
            }
        }
        all.sort_by(f64::total_cmp);
        // C = 1.959964 * sqrt(493.3333) = 43.53; M1 = round(38.23) = 38, M2 = round(81.77) + 1 = 83.
        assert_eq!(s.low, all[37]);
        assert_eq!(s.high, all[82]);
        assert!(
            s.low > 0.0,
            "the trend is significant at 5%, so the interval excludes 0"
        );
    }

    #[test]
    fn slope_keys_order_as_total_cmp_and_round_trip() {
        let mut v = vec![
            f64::NEG_INFINITY,
            -1e300,
            -2.5,
            -f64::MIN_POSITIVE / 4.0,
            -0.0,
            0.0,
            f64::MIN_POSITIVE / 4.0,
            1e-300,
            3.0,
            f64::MAX,
            f64::INFINITY,
        ];
        let keys: Vec<i64> = v.iter().map(|&x| key(x)).collect();
        assert!(keys.windows(2).all(|w| w[0] < w[1]), "{keys:?}");
        for (x, k) in v.iter().zip(&keys) {
            assert_eq!(slope_of(*k).to_bits(), x.to_bits());
        }
        v.reverse();
        v.sort_by_key(|&x| key(x));
        assert!(v.windows(2).all(|w| w[0].total_cmp(&w[1]).is_lt()));
    }

    #[test]
    fn gaps_keep_positions() {
        let y = [1.0, f64::NAN, 3.0, 4.0, f64::NAN, 6.0];
        let s = theil_sen(&y, 0.9).unwrap();
        assert_eq!(s.slope, 1.0);
        // median(y) = 3.5 at median position 2.5.
        assert_eq!(s.intercept, 1.0);
        assert!(mann_kendall(&y, true).unwrap().s == 6.0);
    }

    #[test]
    fn the_shared_pass_gives_what_the_two_calls_give() {
        // Seeded AR(1) series with a trend, gaps and ties (values rounded): bit-for-bit the same results.
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        for n in [4usize, 5, 17, 40, 61] {
            let mut e = 0.0;
            let y: Vec<f64> = (0..n)
                .map(|i| {
                    e = 0.7 * e + rng.random_range(-1.0..1.0);
                    if rng.random_range(0.0..1.0) < 0.1 {
                        f64::NAN
                    } else {
                        (0.05 * i as f64 + e).round()
                    }
                })
                .collect();
            let Some((mk, sen)) = mann_kendall_sen(&y, 0.95) else {
                assert!(mann_kendall(&y, true).is_none());
                continue;
            };
            let alone = mann_kendall(&y, true).unwrap();
            assert_eq!(mk, alone, "n {n}");
            assert_eq!(
                sen,
                theil_sen_with(&y, 0.95, alone.inflation).unwrap(),
                "n {n}"
            );
            assert_eq!(mann_kendall_slope(&y), Some((alone, sen.slope)), "n {n}");
            // The order statistics against a full sort.
            let mut all: Vec<f64> = pairs(&y).slopes.into_iter().map(slope_of).collect();
            all.sort_by(f64::total_cmp);
            let m = all.len();
            let median = if m % 2 == 1 {
                all[m / 2]
            } else {
                (all[m / 2 - 1] + all[m / 2]) / 2.0
            };
            assert_eq!(sen.slope, median, "n {n}");
            assert_eq!(sen_slope(&y), Some(median), "n {n}");
        }
    }
}
