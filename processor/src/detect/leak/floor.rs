//! The leak test's history: per-minute minima (a minute is [`STRIDE`] grid buckets) of an instance's memory signal
//! and heap signals, in a bounded ring longer than the bucket grid, and the running-minimum floors read from it.

use std::collections::VecDeque;

use crate::detect::grid::{Track, HEAPS};

/// Grid buckets per floor point (a minute at the default 10 s step).
pub const STRIDE: i64 = 6;

/// Per-minute minima, oldest first; gaps are NaN. Minute `m` holds grid buckets `m * STRIDE - STRIDE + 1 ..= m *
/// STRIDE`.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct Minutes {
    /// Minute index of the newest minute held.
    pub last: i64,
    pub rss: VecDeque<f64>,
    /// Per-minute maxima of the memory signal: the range the series covered.
    pub top: VecDeque<f64>,
    pub heap: [VecDeque<f64>; HEAPS],
    cap: usize,
}

impl Minutes {
    pub fn new(cap: usize) -> Minutes {
        Minutes {
            last: i64::MIN,
            rss: VecDeque::with_capacity(cap),
            top: VecDeque::with_capacity(cap),
            heap: Default::default(),
            cap: cap.max(2),
        }
    }

    pub fn clear(&mut self) {
        self.last = i64::MIN;
        self.rss.clear();
        self.top.clear();
        self.heap.iter_mut().for_each(VecDeque::clear);
    }

    fn push(&mut self, rss: f64, top: f64, heap: [f64; HEAPS]) {
        if self.rss.len() == self.cap {
            self.rss.pop_front();
            self.top.pop_front();
            self.heap.iter_mut().for_each(|h| {
                h.pop_front();
            });
        }
        self.rss.push_back(rss);
        self.top.push_back(top);
        for (h, v) in self.heap.iter_mut().zip(heap) {
            h.push_back(v);
        }
    }

    /// Adds every minute that `track` has completed since the newest held (those older than the grid's ring, a
    /// long silence, as gaps).
    pub fn update(&mut self, track: &Track) {
        let now = track.last.div_euclid(STRIDE);
        let first_held = track.index_of(0).div_euclid(STRIDE);
        let from = if self.last == i64::MIN {
            first_held
        } else {
            self.last + 1
        };
        let from = from.max(now - self.cap as i64 + 1);
        for m in from..=now {
            let at = m * STRIDE;
            let min = |s| track.extreme(s, at, STRIDE as usize, false);
            self.push(
                min(&track.min),
                track.extreme(&track.max, at, STRIDE as usize, true),
                std::array::from_fn(|k| min(&track.heap[k])),
            );
        }
        self.last = self.last.max(now);
    }

    /// The minutes held from minute `first` on (all of them when `first` is older).
    pub fn since(&self, first: i64) -> usize {
        let oldest = self.last - self.rss.len() as i64 + 1;
        (first - oldest).clamp(0, self.rss.len() as i64) as usize
    }
}

/// The running minimum of `p` over `w` points (gaps skipped; NaN where all are gaps): the post-GC floor when `w`
/// spans a GC cycle.
pub fn running_min(p: impl Iterator<Item = f64>, w: usize) -> Vec<f64> {
    let p: Vec<f64> = p.collect();
    (0..p.len())
        .map(|k| {
            p[(k + 1).saturating_sub(w.max(1))..=k]
                .iter()
                .copied()
                .filter(|v| v.is_finite())
                .fold(f64::NAN, f64::min)
        })
        .collect()
}

/// Whether the troughs of `p` (minute minima, NaN for gaps) still rise by at least `slope` a point after their
/// largest jump, when that jump is at least twice any other: the lows after a GC are where a leak shows cycle
/// after cycle, by about as much each time, while a one-time step lifts them once and then leaves them flat.
/// True when no jump stands out or fewer than two troughs follow it (nothing to judge yet).
/// A trough is a point below both neighbours.
pub fn troughs_keep_rising(p: &[f64], slope: f64) -> bool {
    let lows: Vec<(usize, f64)> = (1..p.len().saturating_sub(1))
        .filter(|&i| p[i].is_finite() && p[i] < p[i - 1] && p[i] < p[i + 1])
        .map(|i| (i, p[i]))
        .collect();
    let jumps: Vec<f64> = lows.windows(2).map(|w| w[1].1 - w[0].1).collect();
    let Some(jump) = (0..jumps.len()).max_by(|&a, &b| jumps[a].total_cmp(&jumps[b])) else {
        return true;
    };
    // A leak's troughs rise by about as much each cycle: only a jump at least twice any other is a step's.
    let second = (0..jumps.len())
        .filter(|&k| k != jump)
        .map(|k| jumps[k])
        .fold(0.0, f64::max);
    if jumps[jump] < 2.0 * second {
        return true;
    }
    let jump = jump + 1;
    let after = &lows[jump..];
    match (after.first(), after.last()) {
        (Some(&(i, a)), Some(&(j, z))) if j > i => z - a >= slope * (j - i) as f64,
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The leak detector's history per instance is bounded: the default 2 h lookback holds 120 minutes in five
    /// rings (minimum, maximum, three heap signals) of 8-byte values, under 5 KB however long the instance runs.
    #[test]
    fn the_minute_history_is_bounded_in_count_and_bytes() {
        let mut m = Minutes::new(120);
        for k in 0..10_000 {
            let v = k as f64;
            m.push(v, v + 1.0, [v; HEAPS]);
        }
        let rings = [&m.rss, &m.top, &m.heap[0], &m.heap[1], &m.heap[2]];
        assert!(rings.iter().all(|r| r.len() == 120));
        assert_eq!(m.rss.back(), Some(&9_999.0));
        let bytes: usize = rings.iter().map(|r| r.capacity() * 8).sum();
        assert!(bytes <= 5 * 1024, "{bytes} bytes");
    }

    #[test]
    fn troughs_that_jump_once_and_stay_are_not_rising() {
        // A sawtooth with lows 100, 102, then a step: lows 160, 161, 159 (flat after the jump).
        let step = [
            110.0, 100.0, 120.0, 140.0, 102.0, 125.0, 150.0, 160.0, 180.0, 161.0, 185.0, 159.0,
            170.0,
        ];
        assert!(!troughs_keep_rising(&step, 1.0));
        // A leak: lows 100, 112, 121, 130, 139, no jump twice another: rising, whatever the slope asked.
        let leak = [
            105.0, 100.0, 120.0, 130.0, 112.0, 130.0, 140.0, 121.0, 140.0, 150.0, 130.0, 150.0,
            160.0, 139.0, 160.0,
        ];
        assert!(troughs_keep_rising(&leak, 5.0));
        // A jump (lows 100, 102, then 160), after which the lows go on rising: 160, 170, 180 over 6 points.
        let rising = [
            110.0, 100.0, 120.0, 102.0, 130.0, 190.0, 160.0, 190.0, 200.0, 170.0, 200.0, 210.0,
            180.0, 200.0,
        ];
        assert!(troughs_keep_rising(&rising, 1.0));
        assert!(!troughs_keep_rising(&rising, 5.0));
        // One trough after the largest jump: nothing to judge.
        assert!(troughs_keep_rising(
            &[110.0, 100.0, 120.0, 200.0, 150.0, 210.0],
            1.0
        ));
    }
}
