#!/usr/bin/env python3
"""How much evidence a sparse spread look can carry about a x2.5 change (EVALUATION.md, "Tried and not kept").

For each noise kind of the scenario generator (gaussian, Student-t(3), lognormal sigma 0.8, gaussian with 1%
one-sided 5 sd spikes), by simulation of looks of 12 values (absolute deviations from each look's own median)
against a reference of 10 baseline looks (120 deviations):

- the most evidence any test on ranks can draw per canary value: the Kullback-Leibler divergence of the
  canary's placements among the reference from the uniform placements of equal spreads;
- what the detector's statistic, ln of the mean absolute deviation, draws per value: delta^2 / (2 n var),
  its shift under the change against its variance under equal spreads.

Needs numpy (`pip install numpy`); not part of the test suite. Prints one line per noise kind.
"""

import numpy as np

LOOK = 12
REFERENCE_LOOKS = 10
RATIO = 2.5
TRIALS = 4000


def draw(rng, kind, n):
    if kind == "gaussian":
        return rng.standard_normal(n)
    if kind == "student-t(3)":
        return rng.standard_t(3, n)
    if kind == "lognormal":
        return np.exp(0.8 * rng.standard_normal(n))
    if kind == "spikes":
        return rng.standard_normal(n) + 5.0 * (rng.random(n) < 0.01)
    raise ValueError(kind)


def deviations(rng, kind, scale):
    x = draw(rng, kind, LOOK) * scale
    return np.abs(x - np.median(x))


def main():
    rng = np.random.default_rng(1)
    m = LOOK * REFERENCE_LOOKS
    for kind in ["gaussian", "student-t(3)", "lognormal", "spikes"]:
        changed, equal, shifted, calm = [], [], [], []
        for _ in range(TRIALS):
            ref = np.sort(np.concatenate([deviations(rng, kind, 1.0) for _ in range(REFERENCE_LOOKS)]))
            c1, c0 = deviations(rng, kind, RATIO), deviations(rng, kind, 1.0)
            changed.append(np.searchsorted(ref, c1))
            equal.append(np.searchsorted(ref, c0))
            shifted.append(np.log(c1.mean()) - np.log(ref.mean()))
            calm.append(np.log(c0.mean()) - np.log(ref.mean()))
        p1 = np.bincount(np.concatenate(changed), minlength=m + 1) / (TRIALS * LOOK)
        kl = float(np.sum(p1[p1 > 0] * np.log(p1[p1 > 0] * (m + 1))))
        delta = np.mean(shifted) - np.mean(calm)
        var = np.var(calm)
        mad = delta * delta / (2.0 * var) / LOOK
        print(
            f"{kind:13s} ranks at most {kl:.2f} nats/value (beyond the reference's largest: {p1[-1]:.2f}); "
            f"ln mean abs dev {mad:.2f} nats/value (shift {delta:.2f}, n x var {var * LOOK:.2f})"
        )


if __name__ == "__main__":
    main()
