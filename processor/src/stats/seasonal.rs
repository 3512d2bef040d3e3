//! A GC period in a memory series, and where a seasonal forecast of its peaks crosses a limit.
//!
//! The period comes from the autocorrelation of the detrended series (the highest peak past the first zero
//! crossing, with at least three cycles in the series). The forecast is augurs' MSTL with an AutoETS model of
//! the trend: the seasonal component is added back to the trend's forecast and its prediction interval, so the
//! upper bound follows the sawtooth's tops, where a process dies.

use augurs_core::{Fit, Predict};
use augurs_ets::AutoETS;
use augurs_mstl::MSTLModel;

/// Smallest autocorrelation at the period for a series to count as periodic.
const MIN_ACF: f64 = 0.3;

/// The dominant period of `y` (no gaps) in steps, after removing `slope` per step, between `shortest` steps and
/// a third of the series.
pub fn dominant_period(y: &[f64], slope: f64, shortest: usize) -> Option<usize> {
    let n = y.len();
    let longest = n / 3;
    if shortest < 2 || longest <= shortest {
        return None;
    }
    let d: Vec<f64> = y
        .iter()
        .enumerate()
        .map(|(i, v)| v - slope * i as f64)
        .collect();
    let mean = d.iter().sum::<f64>() / n as f64;
    let dev: Vec<f64> = d.iter().map(|v| v - mean).collect();
    let c0: f64 = dev.iter().map(|v| v * v).sum();
    if c0 <= 0.0 || !c0.is_finite() {
        return None;
    }
    let acf = |k: usize| (0..n - k).map(|i| dev[i] * dev[i + k]).sum::<f64>() / c0;
    let mut below = false;
    let mut best: Option<(usize, f64)> = None;
    for k in 1..=longest {
        let r = acf(k);
        below |= r < 0.0;
        if below && k >= shortest && r >= MIN_ACF && best.is_none_or(|(_, b)| r > b) {
            best = Some((k, r));
        }
    }
    best.map(|(k, _)| k)
}

/// Where the seasonal forecast of `y` reaches `limit`, in steps from the last point: (first step whose
/// upper bound reaches it, first step whose point forecast does, first step whose lower bound does). Steps not
/// reached within `horizon` are `None`; the whole is `None` when the model cannot be fitted.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Crossing {
    pub upper: Option<usize>,
    pub point: Option<usize>,
    pub lower: Option<usize>,
}

/// MSTL with an AutoETS trend on `y` (no gaps) with one seasonal `period`, forecast `horizon` steps at `level`.
pub fn seasonal_crossing(
    y: &[f64],
    period: usize,
    limit: f64,
    horizon: usize,
    level: f64,
) -> Option<Crossing> {
    let model = MSTLModel::new(vec![period], AutoETS::non_seasonal().into_trend_model());
    let fitted = model.fit(y).ok()?;
    let f = fitted.predict(horizon, level).ok()?;
    let iv = f.intervals?;
    let first = |v: &[f64]| v.iter().position(|x| *x >= limit).map(|k| k + 1);
    if !f
        .point
        .iter()
        .chain(&iv.lower)
        .chain(&iv.upper)
        .all(|v| v.is_finite())
    {
        return None;
    }
    Some(Crossing {
        upper: first(&iv.upper),
        point: first(&f.point),
        lower: first(&iv.lower),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_period_of_a_sawtooth_on_a_trend() {
        let y: Vec<f64> = (0..180)
            .map(|i| 100.0 + 2.0 * i as f64 + 50.0 * ((i % 24) as f64 / 24.0))
            .collect();
        assert_eq!(dominant_period(&y, 2.0, 6), Some(24));
        // White noise (seeded): no period.
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let z: Vec<f64> = (0..180).map(|_| rng.random_range(0.0..1.0)).collect();
        assert_eq!(dominant_period(&z, 0.0, 6), None);
    }

    #[test]
    fn a_seasonal_forecast_of_a_rising_sawtooth_crosses_when_its_tops_do() {
        // The series first reaches 600 at i = 233 (100 + 466 + 50 * 17 / 24), 54 steps after its last point
        // (i = 179): the upper bound must get there within two steps of that, the point forecast no earlier.
        let y: Vec<f64> = (0..180)
            .map(|i| 100.0 + 2.0 * i as f64 + 50.0 * ((i % 24) as f64 / 24.0))
            .collect();
        let c = seasonal_crossing(&y, 24, 600.0, 120, 0.9).expect("fits");
        let up = c.upper.expect("reached");
        assert!((52..=56).contains(&up), "{c:?}");
        assert!(c.point.is_some_and(|p| p >= up), "{c:?}");
    }
}
