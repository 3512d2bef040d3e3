//! The mixture sequential probability ratio test: evidence that accumulates over windows and may be looked at
//! after every one of them without inflating the false-alarm rate.

/// mSPRT (Robbins 1970; Johari et al. 2017, "always valid p-values") for a stream of independent estimates
/// y_t ~ N(theta, se_t^2) of one effect, H0: theta = 0, with the mixing distribution theta ~ N(0, tau^2):
///
/// Lambda_T = (1 + tau^2 W)^(-1/2) exp(tau^2 S^2 / (2 (1 + tau^2 W))), W = sum 1 / se_t^2, S = sum y_t / se_t^2.
///
/// Under H0, P(sup_T Lambda_T >= 1 / alpha) <= alpha (Ville's inequality), so p_T = min(1, 1 / max_t Lambda_t)
/// is valid at any stopping time: a detector may evaluate every window and still hold alpha over the whole run.
/// The estimates fed in must be independent, so callers feed non-overlapping windows.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Msprt {
    tau2: f64,
    w: f64,
    s: f64,
    max_log_lr: f64,
    updates: u64,
}

impl Msprt {
    /// `tau` is the scale of effects the test is tuned to find (in the units of y).
    pub fn new(tau: f64) -> Msprt {
        Msprt {
            tau2: tau * tau,
            w: 0.0,
            s: 0.0,
            max_log_lr: 0.0,
            updates: 0,
        }
    }

    /// Adds one independent estimate and its standard error. Non-finite input is ignored.
    pub fn update(&mut self, y: f64, se: f64) {
        if !(y.is_finite() && se.is_finite() && se > 0.0) {
            return;
        }
        let precision = 1.0 / (se * se);
        self.w += precision;
        self.s += y * precision;
        self.updates += 1;
        self.max_log_lr = self.max_log_lr.max(self.log_lr());
    }

    /// ln Lambda_T, the current log mixture likelihood ratio.
    pub fn log_lr(&self) -> f64 {
        let d = 1.0 + self.tau2 * self.w;
        -0.5 * d.ln() + self.tau2 * self.s * self.s / (2.0 * d)
    }

    /// The always-valid p-value.
    pub fn p_value(&self) -> f64 {
        (-self.max_log_lr).exp().min(1.0)
    }

    /// The precision-weighted mean of the estimates so far.
    pub fn estimate(&self) -> Option<f64> {
        (self.w > 0.0).then(|| self.s / self.w)
    }

    pub fn updates(&self) -> u64 {
        self.updates
    }
}

/// ln of the mixture likelihood ratio of an effect estimated as `m` with variance `v`, theta ~ N(0, tau^2):
/// sqrt(v / (v + tau^2)) exp(tau^2 m^2 / (2 v (v + tau^2))). For precision-weighted estimates (`m` = S / W,
/// `v` = 1 / W) it is the mSPRT's Lambda above; a reference estimated with variance `v_ref` and subtracted from
/// `m` adds `v_ref` to `v`.
fn mixture_log_lr_of(tau2: f64, m: f64, v: f64) -> f64 {
    0.5 * (v / (v + tau2)).ln() + tau2 * m * m / (2.0 * v * (v + tau2))
}

/// Evidence of a change that may have begun at any look: the Shiryaev-Roberts sum, over candidate starts, of
/// the mixture likelihood ratio of the estimates since that start (the mSPRT above, begun at each look).
///
/// R_T = sum over starts k <= T of Lambda_{k..T}. Each term is a martingale under H0 that starts at 1, so
/// R_T - T is a martingale and, by Doob's inequality, P(max_{T <= t} R_T >= A) <= t / A: a threshold A gives at
/// most t / A false alarms in t looks, however long the run. Only the last `recent` starts and the first are
/// kept (a subset of the terms, so the bound holds and the state is bounded). Unlike one mSPRT begun at the
/// first look, a change after a long stretch of equal spread is not diluted by that stretch: the starts after
/// it carry the evidence. The estimates fed in must be independent (non-overlapping looks).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MsprtChange {
    tau2: f64,
    /// (W, S, V) since the first look, once it is no longer among the recent starts: the sum of the weights,
    /// of weight x estimate, and of weight^2 x variance (the weighted mean is S / W, its variance V / W^2).
    first: Option<(f64, f64, f64)>,
    /// (W, S, V) since each of the recent starts, oldest first.
    recent: std::collections::VecDeque<(f64, f64, f64)>,
    max_recent: usize,
    looks: u64,
    /// The sign of the effects mixed over: +1 or -1 for a half-normal mixture on that side, 0 for both sides.
    side: f64,
}

impl MsprtChange {
    /// A test of effects of one sign only (`side` > 0: increases, < 0: decreases): the mixture is the
    /// half-normal on that side, which doubles the likelihood ratio of a clear effect of that sign (about ln 2
    /// less evidence needed) and gives none to the other sign.
    pub fn one_sided(mut self, side: f64) -> MsprtChange {
        self.side = side.signum();
        self
    }

    /// `tau`: the scale of effects the mixture is tuned to; `recent`: how many recent starts are kept (>= 1).
    pub fn new(tau: f64, recent: usize) -> MsprtChange {
        MsprtChange {
            tau2: tau * tau,
            first: None,
            recent: std::collections::VecDeque::with_capacity(recent.max(1)),
            max_recent: recent.max(1),
            looks: 0,
            side: 0.0,
        }
    }

    /// Adds one independent estimate and its standard error (a look at which a change may also begin), weighted
    /// by its precision. Non-finite input is ignored.
    pub fn update(&mut self, y: f64, se: f64) {
        self.update_weighted(y, se * se, 1.0 / (se * se));
    }

    /// Adds one independent estimate `y` with variance `var`, weighted by `weight` in the means since each start.
    /// Weights that do not depend on the estimate (a sample size) keep the means unbiased where estimated
    /// variances would not: on skewed data a look's estimated variance grows with its estimate. Non-finite or
    /// non-positive input is ignored.
    pub fn update_weighted(&mut self, y: f64, var: f64, weight: f64) {
        if !(y.is_finite() && var.is_finite() && var > 0.0 && weight.is_finite() && weight > 0.0) {
            return;
        }
        if self.recent.len() == self.max_recent {
            let oldest = self.recent.pop_front();
            if self.looks == self.max_recent as u64 {
                self.first = oldest;
            }
        }
        self.recent.push_back((0.0, 0.0, 0.0));
        for (w, s, v) in self.first.iter_mut().chain(self.recent.iter_mut()) {
            *w += weight;
            *s += y * weight;
            *v += weight * weight * var;
        }
        self.looks += 1;
    }

    fn terms(&self) -> impl Iterator<Item = &(f64, f64, f64)> + Clone {
        self.first.iter().chain(self.recent.iter())
    }

    /// ln R_T (negative infinity before any look).
    pub fn log_sr(&self) -> f64 {
        self.log_sr_against((0.0, 0.0))
    }

    /// ln R_T of the estimates less a reference level `(r, v_r)` (its value and variance): for estimates of one
    /// cohort's level compared with a reference estimated from a longer stretch of another. Each start's term is
    /// the mixture likelihood ratio of (weighted mean since the start - r) with variance V / W^2 + v_r.
    pub fn log_sr_against(&self, reference: (f64, f64)) -> f64 {
        let logs = self
            .terms()
            .filter(|t| t.0 > 0.0)
            .map(|t| self.term(t, reference));
        let max = logs.clone().fold(f64::NEG_INFINITY, f64::max);
        if !max.is_finite() {
            return max;
        }
        max + logs.map(|l| (l - max).exp()).sum::<f64>().ln()
    }

    /// The precision-weighted mean of the estimates since the start with the most evidence.
    pub fn estimate(&self) -> Option<f64> {
        self.estimate_against((0.0, 0.0))
    }

    /// [`Self::estimate`] less the reference `(r, v_r)`, the start chosen as in [`Self::log_sr_against`].
    pub fn estimate_against(&self, reference: (f64, f64)) -> Option<f64> {
        self.terms()
            .filter(|t| t.0 > 0.0)
            .max_by(|a, b| self.term(a, reference).total_cmp(&self.term(b, reference)))
            .map(|&(w, s, _)| s / w - reference.0)
    }

    /// ln of one start's mixture likelihood ratio: (its weighted mean - r) with variance V / W^2 + v_r.
    fn term(&self, &(w, s, v): &(f64, f64, f64), (r, v_r): (f64, f64)) -> f64 {
        let (m, var) = (s / w - r, v / (w * w) + v_r);
        let two_sided = mixture_log_lr_of(self.tau2, m, var);
        if self.side == 0.0 {
            return two_sided;
        }
        // The half-normal mixture: 2 Lambda P(theta on that side | m), the posterior N(m tau^2 / (var + tau^2),
        // var tau^2 / (var + tau^2)).
        let (mean, sd) = (
            m * self.tau2 / (var + self.tau2),
            (var * self.tau2 / (var + self.tau2)).sqrt(),
        );
        let side =
            0.5 * statrs::function::erf::erfc(-self.side * mean / sd / std::f64::consts::SQRT_2);
        two_sided + std::f64::consts::LN_2 + side.ln()
    }

    pub fn looks(&self) -> u64 {
        self.looks
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_distr::StandardNormal;

    #[test]
    fn matches_the_closed_form() {
        // One estimate y = 0.47 with se = 0.1 and tau = 0.3: W = 100, S = 47,
        // Lambda = exp(0.09 * 2209 / 20) / sqrt(10) = exp(9.9405) / 3.16228 = 20754.2 / 3.16228 = 6563.0.
        let mut m = Msprt::new(0.3);
        m.update(0.47, 0.1);
        assert!(
            (m.log_lr().exp() - 6563.0).abs() < 0.5,
            "{}",
            m.log_lr().exp()
        );
        assert!((m.p_value() - 1.0 / 6563.0).abs() < 1e-7);
        assert_eq!(m.estimate(), Some(0.47));
        m.update(f64::NAN, 0.1);
        assert_eq!(m.updates(), 1);
    }

    #[test]
    fn holds_alpha_over_many_looks_under_the_null() {
        // 2000 runs of 300 looks each under H0; count runs whose always-valid p ever reaches alpha = 0.01.
        // Ville's bound allows 1%; the mixture test is known to be conservative, so allow up to 1.5%
        // (binomial sd of the estimate at 1% is 0.22%).
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let runs = 2000;
        let mut rejected = 0;
        for _ in 0..runs {
            let mut m = Msprt::new(0.3);
            for _ in 0..300 {
                let se = 0.1;
                let y: f64 = rng.sample::<f64, _>(StandardNormal) * se;
                m.update(y, se);
            }
            if m.p_value() <= 0.01 {
                rejected += 1;
            }
        }
        assert!(
            (rejected as f64 / runs as f64) <= 0.015,
            "{rejected} of {runs}"
        );
    }

    #[test]
    fn finds_a_real_effect_quickly() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(8);
        let mut m = Msprt::new(0.3);
        let mut looks = 0;
        while m.p_value() > 0.01 && looks < 100 {
            let y: f64 = 0.2 + rng.sample::<f64, _>(StandardNormal) * 0.1;
            m.update(y, 0.1);
            looks += 1;
        }
        assert!(looks <= 10, "took {looks} looks");
    }

    #[test]
    fn change_evidence_holds_its_false_alarm_bound() {
        // Known truth: H0 throughout. 1000 runs of 200 looks, threshold A = 2000: Doob's bound allows
        // 200 / 2000 = 10% of runs to cross; the sum is conservative, so assert at most 10% and that it is
        // honest about the scale (some runs do come near: the largest ln R exceeds ln 20).
        let mut rng = rand::rngs::StdRng::seed_from_u64(17);
        let (runs, looks, a) = (1000, 200, 2000f64);
        let mut crossed = 0;
        let mut largest = f64::NEG_INFINITY;
        for _ in 0..runs {
            let mut m = MsprtChange::new(0.5, 16);
            let mut peak = f64::NEG_INFINITY;
            for _ in 0..looks {
                let se = 0.2;
                m.update(rng.sample::<f64, _>(StandardNormal) * se, se);
                peak = peak.max(m.log_sr());
            }
            crossed += u32::from(peak >= a.ln());
            largest = largest.max(peak);
        }
        assert!(crossed as f64 / runs as f64 <= 0.10, "{crossed} of {runs}");
        assert!(largest > 20f64.ln(), "{largest}");
    }

    #[test]
    fn a_reference_is_the_same_as_differences_when_exact_and_widens_the_variance_when_not() {
        // Estimates 1.3, 1.1 (se 0.2) against an exact reference 1.0 equal differences 0.3, 0.1; a reference
        // with variance 0.01 gives the start-0 term sqrt(v / (v + tau^2)) exp(tau^2 m^2 / (2 v (v + tau^2)))
        // with m = 0.2, v = 0.02 + 0.01 = 0.03, tau^2 = 0.25: ln = 0.5 ln(0.03 / 0.28) + 0.25 * 0.04 / (2 * 0.03
        // * 0.28) = -1.11677 + 0.59524 = -0.52153.
        let (mut a, mut b) = (MsprtChange::new(0.5, 1), MsprtChange::new(0.5, 1));
        for y in [1.3, 1.1] {
            a.update(y, 0.2);
            b.update(y - 1.0, 0.2);
        }
        assert!((a.log_sr_against((1.0, 0.0)) - b.log_sr()).abs() < 1e-9);
        assert!((a.estimate_against((1.0, 0.0)).unwrap() - 0.2).abs() < 1e-9);
        let first = MsprtChange {
            recent: Default::default(),
            ..a.clone()
        };
        assert!((first.log_sr_against((1.0, 0.01)) + 0.52153).abs() < 1e-4);
    }

    #[test]
    fn a_one_sided_mixture_doubles_a_clear_effect_on_its_side_and_ignores_the_other() {
        // m = 1.0, se 0.1, tau 0.5: the posterior P(theta > 0) is 1 to many digits, so ln Lambda+ = ln Lambda +
        // ln 2; for m = -1.0 it is Phi(-9.806) = 5.31e-23, so Lambda+ is 1.06e-22 Lambda.
        for (m, gain) in [
            (1.0, std::f64::consts::LN_2),
            (-1.0, (2.0 * 5.31e-23f64).ln()),
        ] {
            let (mut two, mut one) = (
                MsprtChange::new(0.5, 1),
                MsprtChange::new(0.5, 1).one_sided(1.0),
            );
            two.update(m, 0.1);
            one.update(m, 0.1);
            let got = one.log_sr() - two.log_sr();
            assert!((got - gain).abs() < 0.01, "m {m}: {got} vs {gain}");
        }
    }

    #[test]
    fn change_evidence_is_not_diluted_by_a_long_calm_stretch() {
        // 300 calm looks, then a shift of 0.9 (se 0.3 per look): the one mSPRT since the first look needs far
        // more looks than the change evidence, which crosses ln 14 within 6 looks of the change in each of 20
        // seeds (tolerance: 6 looks; about 3 are needed on average).
        for seed in 0..20 {
            let mut rng = rand::rngs::StdRng::seed_from_u64(100 + seed);
            let mut change = MsprtChange::new(0.5, 16);
            let mut whole = Msprt::new(0.5);
            for _ in 0..300 {
                let y = rng.sample::<f64, _>(StandardNormal) * 0.3;
                change.update(y, 0.3);
                whole.update(y, 0.3);
            }
            let mut took = None;
            for look in 1..=40 {
                let y = 0.9 + rng.sample::<f64, _>(StandardNormal) * 0.3;
                change.update(y, 0.3);
                whole.update(y, 0.3);
                if took.is_none() && change.log_sr() >= 14.0 {
                    took = Some(look);
                    assert!(whole.log_lr() < 14.0, "seed {seed}");
                }
            }
            let took = took.unwrap_or(99);
            assert!(took <= 6, "seed {seed}: {took} looks");
            let est = change.estimate().expect("an estimate");
            assert!((est - 0.9).abs() < 0.3, "seed {seed}: {est}");
        }
    }
}
