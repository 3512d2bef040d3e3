//! One instance's memory over time: a level made of a floor, a GC sawtooth of varying period, a start-up ramp,
//! a creep that stops, a one-time step, restarts and a leak; gaps in what is reported; and the limit. The level
//! is a pure function of time (the sawtooth's cycles are drawn once), so the limit crossing is known exactly;
//! noise is added when a sample is taken.

use rand::rngs::StdRng;
use rand::Rng;
use serde::Serialize;

use super::noise::{Noise, NoiseKind};
use super::MB;

/// A leak: bytes per second from `from_s` (since the last restart), in the live heap or outside it.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct LeakSpec {
    pub from_s: f64,
    pub bytes_per_s: f64,
    /// true: the allocator's live bytes grow with RSS (a heap leak); false: RSS only (off-heap).
    pub heap: bool,
}

/// A linear rise from `from_s` to `until_s`, then flat (a cache filling up once).
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Creep {
    pub from_s: f64,
    pub until_s: f64,
    pub bytes_per_s: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Process {
    /// For people: "sawtooth", "restarts", ...
    pub shape: &'static str,
    /// Seconds after T0 when it starts reporting, and when it stops.
    pub start_s: f64,
    pub end_s: f64,
    /// The level between GC cycles' bottoms, bytes.
    pub floor: f64,
    /// Height of the GC sawtooth (0: none) and the range its period is drawn from, seconds.
    pub saw_amplitude: f64,
    pub saw_period_s: (f64, f64),
    /// Start-up: the level ramps from 30% with this time constant after the start and every restart.
    pub ramp_tau_s: Option<f64>,
    pub creep: Option<Creep>,
    /// A one-time rise (at, bytes).
    pub step: Option<(f64, f64)>,
    pub restarts: Vec<f64>,
    /// Silences [from, until) in what is reported (the process keeps running).
    pub gaps: Vec<(f64, f64)>,
    pub leak: Option<LeakSpec>,
    pub limit: f64,
    pub noise: NoiseKind,
    pub noise_scale: f64,
    /// The sawtooth's cycles (start, length), in time order.
    #[serde(skip)]
    cycles: Vec<(f64, f64)>,
}

impl Process {
    /// A flat process from `start_s` to `end_s`; the limit is set later.
    pub fn flat(shape: &'static str, start_s: f64, end_s: f64, floor: f64) -> Process {
        Process {
            shape,
            start_s,
            end_s,
            floor,
            saw_amplitude: 0.0,
            saw_period_s: (120.0, 360.0),
            ramp_tau_s: None,
            creep: None,
            step: None,
            restarts: Vec::new(),
            gaps: Vec::new(),
            leak: None,
            limit: f64::INFINITY,
            noise: NoiseKind::Gaussian,
            noise_scale: 0.0,
            cycles: Vec::new(),
        }
    }

    /// Draws the sawtooth's cycles; call once the shape is set. A restart starts a new cycle.
    pub fn prepare(&mut self, rng: &mut StdRng) {
        self.restarts.sort_by(f64::total_cmp);
        self.cycles.clear();
        if self.saw_amplitude <= 0.0 {
            return;
        }
        let (lo, hi) = self.saw_period_s;
        let draw = |rng: &mut StdRng| rng.random_range(lo..hi.max(lo + 1.0));
        let mut starts = vec![self.start_s];
        starts.extend(self.restarts.iter().copied());
        for (i, &a) in starts.iter().enumerate() {
            let b = starts.get(i + 1).copied().unwrap_or(self.end_s + 3600.0);
            let first = draw(rng);
            // The first cycle of the run starts somewhere in its cycle; a restart starts a fresh one.
            let mut t = if i == 0 {
                a - rng.random_range(0.0..first)
            } else {
                a
            };
            let mut len = first;
            while t < b {
                self.cycles.push((t, len));
                t += len;
                len = draw(rng);
            }
        }
    }

    /// The last start (or restart) at or before `t`.
    fn started(&self, t: f64) -> f64 {
        self.restarts
            .iter()
            .copied()
            .filter(|r| *r <= t)
            .fold(self.start_s, f64::max)
    }

    /// Position in the GC cycle, 0..1.
    fn saw_phase(&self, t: f64) -> f64 {
        let i = self.cycles.partition_point(|(s, _)| *s <= t);
        match i.checked_sub(1).and_then(|i| self.cycles.get(i)) {
            Some((s, len)) => ((t - s) / len.max(1.0)).clamp(0.0, 1.0),
            None => 0.0,
        }
    }

    /// The leaked bytes at `t`.
    pub fn leaked(&self, t: f64) -> f64 {
        self.leak.map_or(0.0, |l| {
            l.bytes_per_s * (t - l.from_s.max(self.started(t))).max(0.0)
        })
    }

    /// Resident memory and the allocator's live heap at `t`, without noise.
    pub fn level(&self, t: f64) -> (f64, f64) {
        let since = t - self.started(t);
        let ramp = self
            .ramp_tau_s
            .map_or(1.0, |tau| 1.0 - 0.7 * (-since / tau.max(1.0)).exp());
        let saw = self.saw_amplitude * self.saw_phase(t);
        let creep = self.creep.map_or(0.0, |c| {
            c.bytes_per_s * (t.min(c.until_s) - c.from_s).max(0.0)
        });
        let step = self
            .step
            .map_or(0.0, |(at, by)| if t >= at { by } else { 0.0 });
        let leaked = self.leaked(t);
        let heap_leak = if self.leak.is_some_and(|l| l.heap) {
            leaked
        } else {
            0.0
        };
        let rss = ramp * (self.floor + saw) + creep + step + leaked;
        let heap = ramp * (0.6 * self.floor + saw) + creep + heap_leak;
        (rss, heap)
    }

    /// The highest level (without noise, without the leak) over its run, scanned every 5 s.
    pub fn peak_without_leak(&self) -> f64 {
        let quiet = Process {
            leak: None,
            ..self.clone()
        };
        let mut peak: f64 = 0.0;
        let mut t = self.start_s;
        while t < self.end_s {
            peak = peak.max(quiet.level(t).0);
            t += 5.0;
        }
        peak
    }

    /// The first second at which the level reaches the limit: the process is killed there (out of memory).
    pub fn crossing(&self) -> Option<f64> {
        let from = self
            .leak
            .map_or(self.start_s, |l| l.from_s.max(self.start_s));
        let mut t = from;
        while t < self.end_s {
            if self.level(t).0 >= self.limit {
                return Some(t);
            }
            t += 1.0;
        }
        None
    }

    /// Whether it reports at `t` (given its crossing, from [`Process::crossing`]).
    pub fn reports(&self, t: f64, crossing: Option<f64>) -> bool {
        t >= self.start_s
            && t < self.end_s
            && crossing.is_none_or(|c| t < c)
            && !self.gaps.iter().any(|(a, b)| t >= *a && t < *b)
    }

    /// A sampler: the noise state of this process, seeded.
    pub fn sampler(&self, rng: &mut StdRng) -> Sampler {
        Sampler {
            rss: Noise::new(self.noise, self.noise_scale, rng),
            heap: Noise::new(NoiseKind::Gaussian, 0.3 * self.noise_scale, rng),
        }
    }

    /// Measured RSS and live heap at `t`: the level plus noise, at least 1 MB.
    pub fn sample(&self, t: f64, s: &mut Sampler, rng: &mut StdRng) -> (f64, f64) {
        let (rss, heap) = self.level(t);
        let rss = (rss + s.rss.next(rng)).max(MB);
        let heap = (heap + s.heap.next(rng)).clamp(MB, rss);
        (rss, heap)
    }
}

/// The noise state of one process.
#[derive(Clone, Debug)]
pub struct Sampler {
    rss: Noise,
    heap: Noise,
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn a_leak_crosses_the_limit_when_its_bytes_fill_the_headroom() {
        let mut rng = StdRng::seed_from_u64(3);
        let mut p = Process::flat("leak", 0.0, 20_000.0, 1e9);
        p.saw_amplitude = 2e8;
        p.leak = Some(LeakSpec {
            from_s: 1000.0,
            bytes_per_s: 1e6,
            heap: true,
        });
        p.prepare(&mut rng);
        p.limit = p.peak_without_leak() + 1e9;
        let c = p.crossing().expect("crosses");
        // The sawtooth's top meets the limit within a cycle (at most 6 minutes) of the leak filling the headroom.
        assert!(c > 1990.0 && c <= 2000.0 + 360.0, "{c}");
        assert!(!p.reports(c + 1.0, Some(c)));
        assert!(p.reports(c - 1.0, Some(c)));
    }

    #[test]
    fn restarts_reset_the_ramp_the_sawtooth_and_the_leak() {
        let mut rng = StdRng::seed_from_u64(4);
        let mut p = Process::flat("restarts", 0.0, 10_000.0, 1e9);
        p.ramp_tau_s = Some(60.0);
        p.restarts = vec![5000.0];
        p.leak = Some(LeakSpec {
            from_s: 1000.0,
            bytes_per_s: 1e5,
            heap: false,
        });
        p.prepare(&mut rng);
        let before = p.level(4999.0).0;
        let after = p.level(5000.0).0;
        assert!(after < 0.35e9 && before > 1.3e9, "{before} {after}");
        assert_eq!(p.leaked(5000.0), 0.0);
    }
}
