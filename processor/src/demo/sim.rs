//! The simulated processes behind `memdrift demo`'s instances.
//!
//! Three instances share one demo process, so its real RSS says nothing about any of them. Each instance gets a
//! [`SimProcess`] instead: a [`memspan::Probe`] whose readings follow a planted story (a GC sawtooth, a leak, a
//! wider per-request spread from a given moment), read on the wall clock like a real probe. Everything after the
//! probe is real: memspan's guards and spans, its OTLP/gRPC exporter, memdrift's receiver and detectors.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use memspan::probe::{Probe, Readings};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Normal};

pub const MIB: f64 = 1024.0 * 1024.0;
pub const GIB: f64 = 1024.0 * MIB;

/// What one simulated instance does.
#[derive(Clone, Debug)]
pub struct Story {
    /// RSS right after a GC at the start.
    pub floor: f64,
    /// Height of the GC sawtooth above the floor.
    pub sawtooth: f64,
    /// Seconds from one GC to the next.
    pub gc_period_s: f64,
    /// Off-heap growth of the floor, bytes per second, from the start.
    pub leak_bytes_per_s: f64,
    /// The container limit the probe reports.
    pub limit: f64,
    /// Bytes a request allocates: mean and standard deviation before `spread_from`...
    pub request_mean: f64,
    pub request_sd: f64,
    /// ...and the standard deviation from then on (the planted spread change), if any.
    pub spread_from: Option<(Duration, f64)>,
}

/// A simulated process: its memory at any moment, and the size of its next request.
pub struct SimProcess {
    story: Story,
    start: Instant,
    rng: Mutex<SmallRng>,
}

impl SimProcess {
    pub fn new(story: Story, start: Instant, seed: u64) -> SimProcess {
        SimProcess {
            story,
            start,
            rng: Mutex::new(SmallRng::seed_from_u64(seed)),
        }
    }

    fn elapsed_s(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    /// Garbage piled up since the last GC, `t` seconds after the start.
    fn since_gc(&self, t: f64) -> f64 {
        self.story.sawtooth * (t / self.story.gc_period_s).fract()
    }

    /// Live heap: the sawtooth alone (the leak, when there is one, is off the heap).
    fn heap(&self, t: f64) -> f64 {
        self.story.floor * 0.6 + self.since_gc(t)
    }

    fn rss(&self, t: f64, noise: f64) -> f64 {
        let s = &self.story;
        s.floor + s.leak_bytes_per_s * t + self.since_gc(t) + noise
    }

    /// Bytes the next request allocates, drawn from the story's distribution at this moment.
    pub fn request_bytes(&self) -> u64 {
        let s = &self.story;
        let sd = match s.spread_from {
            Some((from, sd)) if self.start.elapsed() >= from => sd,
            _ => s.request_sd,
        };
        let mut rng = self.rng.lock().unwrap_or_else(|p| p.into_inner());
        let draw = Normal::new(s.request_mean, sd).map_or(s.request_mean, |n| n.sample(&mut *rng));
        draw.max(64.0 * 1024.0) as u64
    }
}

impl Probe for SimProcess {
    fn name(&self) -> &'static str {
        "simulated-process"
    }

    fn read(&self, out: &mut Readings) {
        let t = self.elapsed_s();
        let noise = {
            let mut rng = self.rng.lock().unwrap_or_else(|p| p.into_inner());
            rng.random_range(-2.0 * MIB..2.0 * MIB)
        };
        out.rss = Some(self.rss(t, noise) as u64);
        out.heap_allocated = Some(self.heap(t) as u64);
        out.limit = Some(self.story.limit as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn story() -> Story {
        Story {
            floor: GIB,
            sawtooth: 100.0 * MIB,
            gc_period_s: 8.0,
            leak_bytes_per_s: 4.0 * MIB,
            limit: 1.5 * GIB,
            request_mean: 48.0 * MIB,
            request_sd: 4.0 * MIB,
            spread_from: Some((Duration::from_secs(20), 12.0 * MIB)),
        }
    }

    #[test]
    fn the_floor_grows_by_the_leak_and_the_heap_does_not() {
        let p = SimProcess::new(story(), Instant::now(), 1);
        // Right after a GC at 16 s and at 48 s: the floor rose by 32 s of leak, the heap is back where it was.
        let (a, b) = (p.rss(16.0, 0.0), p.rss(48.0, 0.0));
        assert!(((b - a) - 32.0 * 4.0 * MIB).abs() < 1.0, "{a} {b}");
        assert!((p.heap(16.0) - p.heap(48.0)).abs() < 1.0);
        // Mid-cycle the sawtooth is up by half its height.
        assert!((p.rss(20.0, 0.0) - p.rss(16.0, 0.0) - 50.0 * MIB - 16.0 * MIB).abs() < 1.0);
    }

    #[test]
    fn the_probe_reports_rss_heap_and_limit_and_nothing_else() {
        let p = SimProcess::new(story(), Instant::now(), 2);
        let mut r = Readings::default();
        p.read(&mut r);
        assert!(r.rss.is_some_and(|v| v as f64 > 0.9 * GIB));
        assert_eq!(r.limit, Some((1.5 * GIB) as u64));
        assert!(r.heap_allocated.is_some());
        assert_eq!(
            (r.heap_resident, r.heap_retained, r.gpu_used),
            (None, None, None)
        );
    }

    #[test]
    fn the_planted_spread_starts_when_told() {
        let mut s = story();
        s.spread_from = Some((Duration::ZERO, 12.0 * MIB));
        let wide = SimProcess::new(s.clone(), Instant::now(), 3);
        s.spread_from = None;
        let narrow = SimProcess::new(s, Instant::now(), 3);
        let sd = |p: &SimProcess| {
            let x: Vec<f64> = (0..4000).map(|_| p.request_bytes() as f64).collect();
            let m = x.iter().sum::<f64>() / x.len() as f64;
            (x.iter().map(|v| (v - m).powi(2)).sum::<f64>() / (x.len() - 1) as f64).sqrt()
        };
        let ratio = sd(&wide) / sd(&narrow);
        // 12/4 = 3; 4000 draws each put the estimate within about 5%.
        assert!((ratio - 3.0).abs() < 0.3, "{ratio}");
    }
}
