//! A change of spread over time within one cohort: a CUSUM on the standardised log MAD of successive
//! non-overlapping windows.
//!
//! Each window gives g = ln MAD (robust to heavy tails, unlike the variance). The in-control mean and variance of
//! g are learned over a warm-up and then follow slowly (EWMA) while no alarm is raised; u = (g - mean) / sd is
//! then about N(0, 1) in control, and the one-sided CUSUM S = max(0, S + u - k) alarms above h, with h set by
//! Siegmund's approximation for the configured in-control average run length. A practical-effect gate (the
//! current MAD against the in-control MAD must pass `min_ratio`) keeps statistically real but small wobbles out.

/// Windows used to learn the in-control level before the CUSUM runs.
const WARMUP: u32 = 20;
/// EWMA weight of a new in-control window.
const LAMBDA: f64 = 0.05;
/// The CUSUM's reference value: half the shift (in sd units) it is tuned to find fastest.
pub const K: f64 = 0.5;

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SpreadChange {
    seen: u32,
    mean: f64,
    var: f64,
    up: f64,
    down: f64,
}

/// One evaluation: the CUSUM values and the MAD ratio against the in-control level.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ChangeReading {
    pub up: f64,
    pub down: f64,
    pub ratio: f64,
}

impl SpreadChange {
    pub fn new() -> SpreadChange {
        SpreadChange {
            seen: 0,
            mean: 0.0,
            var: 0.0,
            up: 0.0,
            down: 0.0,
        }
    }

    /// Feeds one window's MAD (with its sample count, which floors the variance: ln MAD of n normal values has
    /// variance about 1.35 / n). Returns the reading once warmed up. `alarming` freezes the in-control level.
    pub fn update(&mut self, mad: f64, n: usize, h: f64) -> Option<ChangeReading> {
        if !(mad > 0.0 && mad.is_finite()) || n == 0 {
            return None;
        }
        let g = mad.ln();
        if self.seen < WARMUP {
            // Welford over the warm-up windows.
            self.seen += 1;
            let d = g - self.mean;
            self.mean += d / self.seen as f64;
            self.var += (d * (g - self.mean) - self.var) / self.seen as f64;
            return None;
        }
        let sd = self.var.max(1.35 / n as f64).sqrt();
        let u = (g - self.mean) / sd;
        self.up = (self.up + u - K).max(0.0);
        self.down = (self.down - u - K).max(0.0);
        let reading = ChangeReading {
            up: self.up,
            down: self.down,
            ratio: (g - self.mean).exp(),
        };
        if self.up <= h && self.down <= h {
            let d = g - self.mean;
            self.mean += LAMBDA * d;
            self.var = (1.0 - LAMBDA) * (self.var + LAMBDA * d * d);
        }
        Some(reading)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::cusum_threshold;
    use rand::{Rng, SeedableRng};
    use rand_distr::StandardNormal;

    fn mad_of(rng: &mut rand::rngs::StdRng, n: usize, scale: f64) -> f64 {
        let mut v: Vec<f64> = (0..n)
            .map(|_| rng.sample::<f64, _>(StandardNormal) * scale)
            .collect();
        v.sort_by(f64::total_cmp);
        let m = v[n / 2];
        let mut d: Vec<f64> = v.iter().map(|x| (x - m).abs()).collect();
        d.sort_by(f64::total_cmp);
        d[n / 2]
    }

    #[test]
    fn quiet_in_control_and_quick_on_a_doubling() {
        // h for one false alarm per 30 days of one-minute windows.
        let h = cusum_threshold(K, 43_200.0);
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let mut alarms = 0;
        for _ in 0..20 {
            let mut c = SpreadChange::new();
            for _ in 0..500 {
                if let Some(r) = c.update(mad_of(&mut rng, 100, 1.0), 100, h) {
                    alarms += u32::from(r.up > h || r.down > h);
                }
            }
        }
        // 20 x 480 in-control windows against an ARL of 43,200: expect about 0.2 alarms; allow 3.
        assert!(alarms <= 3, "{alarms} alarms in control");

        let mut c = SpreadChange::new();
        for _ in 0..100 {
            c.update(mad_of(&mut rng, 100, 1.0), 100, h);
        }
        let took = (1..=20)
            .find(|_| {
                c.update(mad_of(&mut rng, 100, 2.0), 100, h)
                    .is_some_and(|r| r.up > h)
            })
            .expect("a doubling of spread is found within 20 windows");
        assert!(took <= 5, "took {took} windows");
    }
}
