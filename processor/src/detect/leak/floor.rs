//! The leak test's history: per-minute minima (a minute is [`STRIDE`] grid buckets) of an instance's memory signal
//! and heap signals, in a bounded ring longer than the bucket grid, and the running-minimum floors read from it.

use std::collections::VecDeque;

use crate::detect::grid::Track;

/// Grid buckets per floor point (a minute at the default 10 s step).
pub const STRIDE: i64 = 6;

/// Per-minute minima, oldest first; gaps are NaN. Minute `m` holds grid buckets `m * STRIDE - STRIDE + 1 ..= m *
/// STRIDE`.
pub struct Minutes {
    /// Minute index of the newest minute held.
    pub last: i64,
    pub rss: VecDeque<f64>,
    /// Per-minute maxima of the memory signal: the range the series covered.
    pub top: VecDeque<f64>,
    pub heap: [VecDeque<f64>; 3],
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

    fn push(&mut self, rss: f64, top: f64, heap: [f64; 3]) {
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
                [
                    min(&track.heap[0]),
                    min(&track.heap[1]),
                    min(&track.heap[2]),
                ],
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
