//! The baseline memdrift is measured against: a Prometheus alert rule `predict_linear(x[15m], 900) > limit`,
//! evaluated at most every 10 s on each instance's raw points, with a warm-up guard (nothing before the series
//! has 15 minutes of data). It sees exactly the points memdrift is sent, late or not (a TSDB keeps them all).

use std::collections::VecDeque;

/// The rule over one series.
#[derive(Debug, Default)]
pub struct PredictLinear {
    points: VecDeque<(f64, f64)>,
    first: Option<f64>,
    last_eval: Option<f64>,
    firing: bool,
}

/// Range and horizon of the rule, seconds.
const RANGE_S: f64 = 900.0;
const HORIZON_S: f64 = 900.0;
/// Rule evaluations at most this often.
const EVERY_S: f64 = 10.0;

impl PredictLinear {
    pub fn new() -> PredictLinear {
        PredictLinear::default()
    }

    /// Adds a point (in time order); returns true when the alert starts firing at `t`.
    pub fn push(&mut self, t: f64, v: f64, limit: Option<f64>) -> bool {
        self.points.push_back((t, v));
        while self.points.front().is_some_and(|p| p.0 <= t - RANGE_S) {
            self.points.pop_front();
        }
        let first = *self.first.get_or_insert(t);
        if self.last_eval.is_some_and(|e| t - e < EVERY_S) {
            return false;
        }
        self.last_eval = Some(t);
        let fire = match limit {
            Some(limit) if t - first >= RANGE_S => self.predict(t).is_some_and(|p| p > limit),
            _ => false,
        };
        let started = fire && !self.firing;
        self.firing = fire;
        started
    }

    /// Least squares over the range, extrapolated from the evaluation time by the horizon.
    fn predict(&self, t: f64) -> Option<f64> {
        let n = self.points.len() as f64;
        if n < 2.0 {
            return None;
        }
        let mt = self.points.iter().map(|p| p.0).sum::<f64>() / n;
        let mv = self.points.iter().map(|p| p.1).sum::<f64>() / n;
        let (mut sxy, mut sxx) = (0.0, 0.0);
        for (pt, pv) in &self.points {
            sxy += (pt - mt) * (pv - mv);
            sxx += (pt - mt) * (pt - mt);
        }
        if sxx <= 0.0 {
            return None;
        }
        Some(mv + sxy / sxx * (t + HORIZON_S - mt))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_toward_the_limit_fires_once_15_minutes_ahead_and_not_before_the_guard() {
        let mut p = PredictLinear::new();
        let limit = Some(4605.0);
        let mut starts = Vec::new();
        for k in 0..400 {
            let t = k as f64 * 10.0;
            if p.push(t, 1000.0 + t, limit) {
                starts.push(t);
            }
        }
        // 1000 + t + 900 > 4605 from t = 2705 on; evaluated every 10 s.
        assert_eq!(starts, vec![2710.0]);
        // A steep start inside the first 15 minutes is not judged.
        let mut p = PredictLinear::new();
        let fired = (0..89).any(|k| p.push(k as f64 * 10.0, 1e6 * k as f64, Some(1.0)));
        assert!(!fired);
    }
}
