//! Noise on memory levels and on per-request values: what a detector must not mistake for trouble.

use rand::rngs::StdRng;
use rand::Rng;
use rand_distr::StandardNormal;
use serde::Serialize;

/// The shape of the noise. Every kind has mean about zero and sd about its scale (spikes aside).
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum NoiseKind {
    Gaussian,
    /// Student's t with 3 degrees of freedom: heavy tails, finite variance.
    StudentT3,
    /// A centred lognormal (sigma 0.8): skewed, a long upper tail.
    LogNormal,
    /// Gaussian, and with probability `rate` a one-sided spike of five times the scale on top.
    Spikes {
        rate: f64,
    },
    /// AR(1): each value keeps `phi` of the last one (successive samples of one process).
    Ar1 {
        phi: f64,
    },
}

impl NoiseKind {
    /// One of the five, uniformly; the spike rate (0.5-2%) and phi (0.9-0.98) drawn too.
    pub fn draw(rng: &mut StdRng) -> NoiseKind {
        NoiseKind::nth(rng.random_range(0..5), rng)
    }

    /// The `i % 5`th kind (so that a scenario can show each of them), parameters drawn.
    pub fn nth(i: usize, rng: &mut StdRng) -> NoiseKind {
        match i % 5 {
            0 => NoiseKind::Gaussian,
            1 => NoiseKind::StudentT3,
            2 => NoiseKind::LogNormal,
            3 => NoiseKind::Spikes {
                rate: rng.random_range(0.005..0.02),
            },
            _ => NoiseKind::Ar1 {
                phi: rng.random_range(0.9..0.98),
            },
        }
    }

    /// One of the independent kinds (no AR(1)): for per-request values.
    pub fn draw_independent(rng: &mut StdRng) -> NoiseKind {
        NoiseKind::nth(rng.random_range(0..4), rng)
    }

    /// The kind without its parameters.
    pub fn short(self) -> &'static str {
        match self {
            NoiseKind::Gaussian => "gaussian",
            NoiseKind::StudentT3 => "student-t(3)",
            NoiseKind::LogNormal => "lognormal",
            NoiseKind::Spikes { .. } => "spikes",
            NoiseKind::Ar1 { .. } => "ar(1)",
        }
    }

    pub fn name(self) -> String {
        match self {
            NoiseKind::Gaussian => "gaussian".into(),
            NoiseKind::StudentT3 => "student-t(3)".into(),
            NoiseKind::LogNormal => "lognormal".into(),
            NoiseKind::Spikes { rate } => format!("spikes {:.1}%", rate * 100.0),
            NoiseKind::Ar1 { phi } => format!("ar(1) phi {phi:.2}"),
        }
    }
}

/// A noise source with its state (AR(1)).
#[derive(Clone, Debug)]
pub struct Noise {
    pub kind: NoiseKind,
    pub scale: f64,
    state: f64,
}

/// sigma of the lognormal kind.
const LN_SIGMA: f64 = 0.8;

impl Noise {
    pub fn new(kind: NoiseKind, scale: f64, rng: &mut StdRng) -> Noise {
        // AR(1) starts in its stationary distribution.
        let state: f64 = rng.sample(StandardNormal);
        Noise { kind, scale, state }
    }

    /// The next deviation.
    pub fn next(&mut self, rng: &mut StdRng) -> f64 {
        let z: f64 = rng.sample(StandardNormal);
        let unit = match self.kind {
            NoiseKind::Gaussian => z,
            NoiseKind::StudentT3 => {
                // t = Z / sqrt(chi2_3 / 3), and t(3) has variance 3.
                let chi2: f64 = (0..3)
                    .map(|_| rng.sample::<f64, _>(StandardNormal).powi(2))
                    .sum();
                z / (chi2 / 3.0).sqrt().max(1e-9) / 3f64.sqrt()
            }
            NoiseKind::LogNormal => {
                let s2 = LN_SIGMA * LN_SIGMA;
                let mean = (s2 / 2.0).exp();
                let sd = ((s2.exp() - 1.0) * s2.exp()).sqrt();
                ((LN_SIGMA * z).exp() - mean) / sd
            }
            NoiseKind::Spikes { rate } => {
                let spike = if rng.random::<f64>() < rate { 5.0 } else { 0.0 };
                z + spike
            }
            NoiseKind::Ar1 { phi } => {
                self.state = phi * self.state + (1.0 - phi * phi).sqrt() * z;
                self.state
            }
        };
        self.scale * unit
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn every_kind_has_about_unit_spread_around_zero() {
        let mut rng = StdRng::seed_from_u64(1);
        for i in 0..5 {
            let kind = NoiseKind::nth(i, &mut rng);
            let mut noise = Noise::new(kind, 1.0, &mut rng);
            let n = 200_000;
            let xs: Vec<f64> = (0..n).map(|_| noise.next(&mut rng)).collect();
            let mean = xs.iter().sum::<f64>() / n as f64;
            let sd = (xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64).sqrt();
            let (mean_max, sd_range) = match kind {
                NoiseKind::Spikes { rate } => (5.0 * rate + 0.05, (0.9, 1.0 + 5.0 * rate.sqrt())),
                NoiseKind::Ar1 { .. } => (0.2, (0.8, 1.2)),
                _ => (0.05, (0.9, 1.1)),
            };
            assert!(mean.abs() < mean_max, "{kind:?}: mean {mean}");
            assert!(sd > sd_range.0 && sd < sd_range.1, "{kind:?}: sd {sd}");
        }
    }
}
