//! The state of one group (a cohort or an instance of a service): per signal, one pane per step of its recent
//! past, each with exact moments, a bounded reservoir of values and the exemplars of its largest values.

use std::collections::VecDeque;

use super::summary::{robust_summary, Moments};
use super::window::{GroupKey, PaneSummary, SeriesKey, WindowSummary};
use crate::sample::{Exemplar, MemorySample};
use crate::signal::Signal;

#[derive(serde::Serialize, serde::Deserialize)]
struct Pane {
    index: i64,
    moments: PaneMoments,
    min: f64,
    max: f64,
    last: (u64, f64),
    reservoir: Vec<f64>,
    /// The instance of each reservoir value (a hash of its id), so detectors can split a cohort by process.
    tags: Vec<u32>,
    /// (value, request), largest first, at most `exemplars` long.
    exemplars: Vec<(f64, Exemplar)>,
}

impl Pane {
    fn new(index: i64) -> Pane {
        Pane {
            index,
            moments: PaneMoments::default(),
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            last: (0, f64::NAN),
            reservoir: Vec::new(),
            tags: Vec::new(),
            exemplars: Vec::new(),
        }
    }

    /// Adds one value; at most `cap` values are kept (a uniform reservoir), `exemplars` trace ids.
    fn push(
        &mut self,
        (t, v, tag): (u64, f64, u32),
        trace: Option<Exemplar>,
        (cap, exemplars): (usize, usize),
        rng: &mut u64,
    ) {
        self.moments.push(v);
        self.min = self.min.min(v);
        self.max = self.max.max(v);
        if t >= self.last.0 {
            self.last = (t, v);
        }
        if self.reservoir.len() < cap {
            self.reservoir.push(v);
            self.tags.push(tag);
        } else if cap > 0 {
            self.keep_sampled((v, tag), rng);
        }
        // Full, and no larger than the smallest kept: not kept (the common case, decided without a search).
        let full = self.exemplars.len() >= exemplars;
        if full && self.exemplars.last().is_none_or(|(x, _)| *x >= v) {
            return;
        }
        if let Some(id) = trace {
            let pos = self.exemplars.partition_point(|(x, _)| *x >= v);
            if pos < exemplars {
                self.exemplars.insert(pos, (v, id));
                self.exemplars.truncate(exemplars);
            }
        }
    }

    /// A full reservoir: Algorithm R (Vitter, 1985). The `n`th value takes a uniform slot of `0..n` and is kept
    /// where that slot is one of the reservoir's, so each of the `n` values seen stays with probability
    /// `cap / n`. The slot is the high half of a 128-bit product (Lemire's multiply-shift, no division), whose
    /// bias of at most `n / 2^64` is far below anything a window can show.
    fn keep_sampled(&mut self, (v, tag): (f64, u32), rng: &mut u64) {
        let n = self.moments.n;
        let slot = ((u128::from(next_random(rng)) * u128::from(n)) >> 64) as usize;
        if slot < self.reservoir.len() {
            self.reservoir[slot] = v;
            self.tags[slot] = tag;
        }
    }
}

/// A pane's running moments as sums of deviations from its first value (the shifted-data algorithm): no
/// division per value, unlike Welford's update, and as exact. With the shift one of the values, the squared
/// distance from it to the mean is at most `n` times the variance, so the cancellation in `s2 - s1^2 / n` costs
/// at most about `n` ulps of the variance (1e-11 relative at 100,000 values a pane). Kept on disk as the
/// [`Moments`] it stands for, so checkpoints read either way.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(from = "Moments", into = "Moments")]
struct PaneMoments {
    n: u64,
    shift: f64,
    s1: f64,
    s2: f64,
}

impl PaneMoments {
    #[inline]
    fn push(&mut self, x: f64) {
        if self.n == 0 {
            self.shift = x;
        }
        self.n += 1;
        let d = x - self.shift;
        self.s1 += d;
        self.s2 += d * d;
    }
}

impl From<PaneMoments> for Moments {
    fn from(p: PaneMoments) -> Moments {
        if p.n == 0 {
            return Moments::default();
        }
        let n = p.n as f64;
        Moments {
            n: p.n,
            mean: p.shift + p.s1 / n,
            m2: (p.s2 - p.s1 * p.s1 / n).max(0.0),
        }
    }
}

impl From<Moments> for PaneMoments {
    fn from(m: Moments) -> PaneMoments {
        PaneMoments {
            n: m.n,
            shift: m.mean,
            s1: 0.0,
            s2: m.m2,
        }
    }
}

/// xorshift64*: a tiny deterministic generator, so reservoir sampling replays identically.
fn next_random(state: &mut u64) -> u64 {
    let mut x = *state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *state = x;
    x.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Series {
    panes: VecDeque<Pane>,
    rng: u64,
}

/// The series of one group, by signal.
#[derive(serde::Serialize, serde::Deserialize)]
pub(super) struct Group {
    series: [Option<Series>; Signal::COUNT],
    /// The newest event time of a sample added to it.
    pub last_seen: u64,
}

impl Group {
    pub fn new() -> Group {
        Group {
            series: Default::default(),
            last_seen: 0,
        }
    }

    /// Live series in this group.
    pub fn series_count(&self) -> usize {
        self.series.iter().flatten().count()
    }

    pub fn has(&self, signal: Signal) -> bool {
        self.series[signal as usize].is_some()
    }

    /// Adds `v` of `signal` to pane `pane`, keeping at most `keep` = (values, exemplars) per pane: a cohort
    /// keeps `max_samples_per_pane` values, an instance `instance_samples_per_pane` (its detectors read extremes).
    pub fn push(
        &mut self,
        pane: i64,
        sample: &MemorySample,
        signal: Signal,
        v: f64,
        tag: u32,
        keep: (usize, usize),
    ) {
        self.last_seen = self.last_seen.max(sample.time_unix_nano);
        let series = self.series[signal as usize].get_or_insert_with(|| Series {
            panes: VecDeque::new(),
            rng: 0x9e37_79b9_7f4a_7c15 ^ (signal as u64 + 1),
        });
        // Most samples belong to the newest pane.
        let newest = series.panes.len().checked_sub(1);
        let idx = match newest.filter(|&i| series.panes[i].index == pane) {
            Some(i) => i,
            None => match series.panes.binary_search_by_key(&pane, |p| p.index) {
                Ok(i) => i,
                Err(i) => {
                    series.panes.insert(i, Pane::new(pane));
                    i
                }
            },
        };
        series.panes[idx].push(
            (sample.time_unix_nano, v, tag),
            sample.trace_id.map(|trace_id| Exemplar {
                trace_id,
                span_id: sample.span_id,
            }),
            keep,
            &mut series.rng,
        );
    }

    /// The oldest pane index held by any series.
    pub fn earliest_pane(&self) -> Option<i64> {
        self.series
            .iter()
            .flatten()
            .filter_map(|s| s.panes.front().map(|p| p.index))
            .min()
    }

    /// Drops the panes before `first_needed`.
    pub fn evict_before(&mut self, first_needed: i64) {
        for series in self.series.iter_mut().flatten() {
            while series.panes.front().is_some_and(|p| p.index < first_needed) {
                series.panes.pop_front();
            }
        }
    }

    /// The summary of each series with a pane in `first_pane..=last_pane`.
    pub fn summaries(
        &self,
        key: &GroupKey,
        first_pane: i64,
        last_pane: i64,
        exemplars: usize,
        out: &mut Vec<WindowSummary>,
    ) {
        for signal in Signal::ALL {
            let Some(series) = &self.series[signal as usize] else {
                continue;
            };
            let panes: Vec<&Pane> = series
                .panes
                .iter()
                .filter(|p| p.index >= first_pane && p.index <= last_pane)
                .collect();
            if panes.is_empty() {
                continue;
            }
            out.push(summarize(
                SeriesKey {
                    group: key.clone(),
                    signal,
                },
                &panes,
                last_pane,
                exemplars,
            ));
        }
    }
}

fn summarize(key: SeriesKey, panes: &[&Pane], last_pane: i64, exemplars: usize) -> WindowSummary {
    let mut moments = Moments::default();
    let mut min = f64::INFINITY;
    let mut max = f64::NEG_INFINITY;
    let mut values = Vec::with_capacity(panes.iter().map(|p| p.reservoir.len()).sum());
    let mut instance_tags = Vec::with_capacity(values.capacity());
    let mut ex: Vec<(f64, Exemplar)> = Vec::new();
    for p in panes {
        moments.merge(&p.moments.into());
        min = min.min(p.min);
        max = max.max(p.max);
        values.extend_from_slice(&p.reservoir);
        instance_tags.extend_from_slice(&p.tags);
        ex.extend_from_slice(&p.exemplars);
    }
    ex.sort_by(|a, b| b.0.total_cmp(&a.0));
    ex.truncate(exemplars);
    let mut sorted = values.clone();
    let (median, mad, p95) = robust_summary(&mut sorted);
    let newest_pane = panes
        .iter()
        .find(|p| p.index == last_pane)
        .map(|p| PaneSummary {
            count: p.moments.n,
            min: p.min,
            max: p.max,
            last: p.last.1,
        });
    WindowSummary {
        key,
        count: moments.n,
        mean: moments.mean,
        sd: moments.sd(),
        median,
        mad,
        p95,
        min,
        max,
        values,
        instance_tags,
        exemplars: ex.into_iter().map(|(_, id)| id).collect(),
        newest_pane,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each value of a pane stays in its reservoir with probability cap / n, wherever it came: the first
    /// values, the ones right after the reservoir filled, the last ones.
    #[test]
    fn the_reservoir_keeps_every_value_with_equal_probability() {
        let (n, cap, trials) = (1_000usize, 50usize, 2_000u64);
        let mut kept = vec![0u32; n];
        for trial in 0..trials {
            let mut pane = Pane::new(0);
            let mut rng = 0x9e37_79b9_7f4a_7c15 ^ (trial + 1);
            for i in 0..n {
                pane.push((i as u64, i as f64, 0), None, (cap, 0), &mut rng);
            }
            assert_eq!(pane.reservoir.len(), cap);
            for v in &pane.reservoir {
                kept[*v as usize] += 1;
            }
        }
        // Expected 100 per value (sd about 9.7).
        let expected = trials as f64 * cap as f64 / n as f64;
        let chi2: f64 = (kept.iter())
            .map(|&k| (k as f64 - expected).powi(2) / expected)
            .sum();
        // About chi-square with n - 1 degrees of freedom scaled by (1 - cap/n): mean 950, sd 44.
        assert!(chi2 < 1_130.0, "chi-square {chi2:.0}");
        // The values right after the reservoir filled, and the last ones, one by one (each within 4 sd).
        for i in (cap..cap + 10).chain(n - 10..n) {
            assert!(
                (kept[i] as f64 - expected).abs() < 40.0,
                "value {i} kept {} times, expected {expected}",
                kept[i]
            );
        }
        // Tenths of the stream (expected 10,000 each, sd about 100).
        for tenth in kept.chunks(n / 10) {
            let sum: u32 = tenth.iter().sum();
            assert!((sum as f64 - 10.0 * 10_000.0 / 10.0).abs() < 400.0, "{sum}");
        }
    }

    /// Past the reservoir, replacements come ever rarer: cap / n of the `n`th value, about cap * ln(n / cap)
    /// over the stream.
    #[test]
    fn a_full_reservoir_replaces_about_cap_times_the_log_of_the_growth() {
        let (n, cap) = (100_000u64, 64usize);
        let mut pane = Pane::new(0);
        let mut rng = 7;
        let mut replacements = 0;
        for i in 0..n {
            let before = pane.reservoir.clone();
            pane.push((i, i as f64, 0), None, (cap, 0), &mut rng);
            replacements += u32::from(i >= cap as u64 && pane.reservoir != before);
        }
        // Expected cap * ln(n / cap) = 64 * 7.35 = 471 replacements (sd about 21).
        assert!((350..600).contains(&replacements), "{replacements}");
    }

    /// The mean and the sum of squared deviations from it, in two passes.
    fn two_pass(xs: &[f64]) -> (f64, f64) {
        let n = xs.len() as f64;
        let mean = xs.iter().sum::<f64>() / n;
        let m2 = xs.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>();
        (mean, m2)
    }

    fn shifted(xs: &[f64]) -> Moments {
        let mut p = PaneMoments::default();
        xs.iter().for_each(|&x| p.push(x));
        p.into()
    }

    #[test]
    fn shifted_moments_match_two_pass_ones_where_cancellation_threatens() {
        let mut rng = 0x1234_5678_9abc_def1u64;
        let mut unit = move || (next_random(&mut rng) >> 11) as f64 / (1u64 << 53) as f64;
        let cases: Vec<(&str, Vec<f64>)> = vec![
            // 2 GiB of memory with a byte of noise: the mean is 2e9 times the sd.
            ("offset", (0..5000).map(|_| 2.0e9 + unit()).collect()),
            // The first value far from the rest: a step at the pane's start.
            (
                "step",
                std::iter::once(1.0e9)
                    .chain((0..5000).map(|_| 2.0e9 + unit()))
                    .collect(),
            ),
            (
                "sawtooth",
                (0..5000).map(|i| 1.0e9 + (i % 97) as f64 * 1e6).collect(),
            ),
            ("tiny", vec![3.0, 5.0]),
        ];
        for (name, xs) in cases {
            let m = shifted(&xs);
            let (mean, m2) = two_pass(&xs);
            assert_eq!(m.n, xs.len() as u64, "{name}");
            assert!(
                (m.mean - mean).abs() <= 1e-12 * mean.abs(),
                "{name}: mean {} against {mean}",
                m.mean
            );
            assert!(
                (m.m2 - m2).abs() <= 1e-9 * m2,
                "{name}: m2 {} against {m2}",
                m.m2
            );
        }
    }

    #[test]
    fn constant_values_have_no_spread_and_an_empty_pane_no_moments() {
        let m = shifted(&[4_294_967_296.0; 1000]);
        assert_eq!((m.n, m.mean, m.m2), (1000, 4_294_967_296.0, 0.0));
        assert_eq!(Moments::from(PaneMoments::default()), Moments::default());
    }

    #[test]
    fn a_pane_s_moments_are_checkpointed_as_the_moments_they_stand_for() {
        let xs = [7.0, 1.0, 9.5, 3.25];
        let mut p = PaneMoments::default();
        xs.iter().for_each(|&x| p.push(x));
        let json = serde_json::to_string(&p).expect("serializes");
        let welford: Moments = serde_json::from_str(&json).expect("reads as Moments");
        assert_eq!(welford, Moments::from(p));
        // Read back and pushed on, it goes on as if never written.
        let mut back: PaneMoments = serde_json::from_str(&json).expect("reads back");
        let mut kept = p;
        back.push(4.0);
        kept.push(4.0);
        let (a, b) = (Moments::from(back), Moments::from(kept));
        assert_eq!(a.n, b.n);
        assert!((a.mean - b.mean).abs() < 1e-12 && (a.m2 - b.m2).abs() < 1e-9);
    }
}
