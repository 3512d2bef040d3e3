//! Window summaries: count, mean, sd, median, MAD, p95.

pub use crate::stats::quantile_sorted;
use crate::stats::sort_floats;

/// Running moments of one pane, mergeable exactly (Chan et al.'s parallel update), so the mean and sd of a
/// window are exact even when the pane keeps only a reservoir of its values.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Moments {
    pub n: u64,
    pub mean: f64,
    /// Sum of squared deviations from the mean.
    pub m2: f64,
}

impl Moments {
    pub fn push(&mut self, x: f64) {
        self.n += 1;
        let d = x - self.mean;
        self.mean += d / self.n as f64;
        self.m2 += d * (x - self.mean);
    }

    pub fn merge(&mut self, o: &Moments) {
        if o.n == 0 {
            return;
        }
        if self.n == 0 {
            *self = *o;
            return;
        }
        let n = self.n + o.n;
        let d = o.mean - self.mean;
        self.mean += d * o.n as f64 / n as f64;
        self.m2 += o.m2 + d * d * (self.n as f64 * o.n as f64) / n as f64;
        self.n = n;
    }

    /// Sample standard deviation (n - 1 in the denominator); 0 for fewer than two values.
    pub fn sd(&self) -> f64 {
        if self.n < 2 {
            0.0
        } else {
            (self.m2 / (self.n - 1) as f64).max(0.0).sqrt()
        }
    }
}

/// Median, raw median absolute deviation (unscaled: multiply by 1.4826 for a normal-consistent sd estimate) and
/// p95 of `values`, which it sorts in place.
pub fn robust_summary(values: &mut [f64]) -> (f64, f64, f64) {
    sort_floats(values);
    let median = quantile_sorted(values, 0.5);
    let p95 = quantile_sorted(values, 0.95);
    let mut dev: Vec<f64> = values.iter().map(|v| (v - median).abs()).collect();
    sort_floats(&mut dev);
    (median, quantile_sorted(&dev, 0.5), p95)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merged_moments_equal_direct_ones() {
        let xs: Vec<f64> = (0..100).map(|i| ((i * 37) % 101) as f64 * 1.5).collect();
        let mut all = Moments::default();
        xs.iter().for_each(|&x| all.push(x));
        let mut a = Moments::default();
        let mut b = Moments::default();
        xs[..30].iter().for_each(|&x| a.push(x));
        xs[30..].iter().for_each(|&x| b.push(x));
        a.merge(&b);
        assert_eq!(a.n, all.n);
        assert!((a.mean - all.mean).abs() < 1e-9);
        assert!((a.sd() - all.sd()).abs() < 1e-9);
    }

    #[test]
    fn matches_numpy_reference_values() {
        // numpy: x = [2, 4, 4, 4, 5, 5, 7, 9]; np.std(x, ddof=1) = 2.138089935299395,
        // np.median(x) = 4.5, np.percentile(x, 95) = 8.3, median(|x - 4.5|) = 0.5
        let mut x = vec![9.0, 2.0, 4.0, 5.0, 4.0, 7.0, 4.0, 5.0];
        let mut m = Moments::default();
        x.iter().for_each(|&v| m.push(v));
        assert!((m.sd() - 2.138089935299395).abs() < 1e-12);
        assert!((m.mean - 5.0).abs() < 1e-12);
        let (median, mad, p95) = robust_summary(&mut x);
        assert_eq!(median, 4.5);
        assert_eq!(mad, 0.5);
        assert!((p95 - 8.3).abs() < 1e-12);
    }
}
