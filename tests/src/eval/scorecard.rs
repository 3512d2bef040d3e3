//! Per-family totals over seeds, as a Markdown table (and its details) and as JSON.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use memdrift::config::Pipeline;
use serde::Serialize;

use super::families::Family;
use super::run::{run_scenario, ScenarioResult};
use super::score::{Score, Tally};
use super::Kind;

#[derive(Clone, Debug, Default, Serialize)]
pub struct FamilyScore {
    pub family: String,
    pub about: String,
    pub calm: bool,
    pub seeds: Vec<u64>,
    pub instance_hours: f64,
    pub lines: u64,
    pub bytes: u64,
    pub values: u64,
    pub late_values: u64,
    pub memdrift: Score,
    pub predict_linear: Score,
    pub seconds: f64,
}

impl FamilyScore {
    pub fn new(f: &Family) -> FamilyScore {
        FamilyScore {
            family: f.name.into(),
            about: f.about.into(),
            calm: f.calm,
            ..FamilyScore::default()
        }
    }

    pub fn add(&mut self, r: &ScenarioResult) {
        self.seeds.push(r.seed);
        self.instance_hours += r.instance_hours;
        self.lines += r.lines;
        self.bytes += r.bytes;
        self.values += r.values;
        self.late_values += r.late_values;
        self.memdrift.add(&r.memdrift);
        self.predict_linear.add(&r.predict_linear);
        self.seconds += r.seconds;
    }

    /// False-alarm incidents per 100 instance-hours.
    pub fn false_alarm_rate(&self, s: &Score) -> f64 {
        if self.instance_hours > 0.0 {
            s.false_alarms as f64 * 100.0 / self.instance_hours
        } else {
            0.0
        }
    }

    /// The required findings of `kind` (zeros when none).
    pub fn required(&self, s: &Score, kind: Kind) -> Tally {
        s.required.get(&kind).cloned().unwrap_or_default()
    }
}

/// Runs `seeds` of `family` in `dir`, reporting each scenario through `progress`.
pub fn run_family(
    family: &Family,
    seeds: impl IntoIterator<Item = u64>,
    pipeline: &Pipeline,
    dir: &Path,
    keep: bool,
    progress: &mut dyn FnMut(&ScenarioResult),
) -> Result<FamilyScore> {
    let mut score = FamilyScore::new(family);
    for seed in seeds {
        let scenario = (family.generate)(seed);
        let r = run_scenario(&scenario, pipeline, dir, keep)
            .with_context(|| format!("{} seed {seed}", family.name))?;
        progress(&r);
        score.add(&r);
    }
    Ok(score)
}

#[derive(Clone, Debug, Serialize)]
pub struct Scorecard {
    pub command: String,
    pub pipeline: String,
    pub families: Vec<FamilyScore>,
}

fn tally(t: &Tally) -> String {
    if t.expected == 0 {
        return "-".into();
    }
    let mut s = format!("{}/{}/{}", t.timely, t.late, t.missed);
    if t.wrong_class > 0 {
        let _ = write!(s, " ({} wrong class)", t.wrong_class);
    }
    s
}

/// "median / min" of seconds, in minutes.
pub fn median_min(v: &[f64]) -> String {
    if v.is_empty() {
        return "-".into();
    }
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let median = if v.len() % 2 == 1 {
        v[v.len() / 2]
    } else {
        (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
    };
    format!("{:.1} / {:.1}", median / 60.0, v[0] / 60.0)
}

fn rate(f: &FamilyScore, s: &Score) -> String {
    format!("{:.2} ({})", f.false_alarm_rate(s), s.false_alarms)
}

impl Scorecard {
    /// The scorecard table, then the false alarms by kind, then examples, in Markdown.
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "| family | seeds | instance-h | late values | false alarms /100 h (n): memdrift | predict_linear \
             | growth t/l/m: memdrift | predict_linear | growth lead median / min (min): memdrift | predict_linear \
             | leak t/l/m | spread t/l/m |"
        );
        let _ = writeln!(
            out,
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        );
        for f in &self.families {
            let (m, p) = (&f.memdrift, &f.predict_linear);
            let late = if f.values > 0 {
                format!(
                    "{} ({:.1}%)",
                    f.late_values,
                    100.0 * f.late_values as f64 / f.values as f64
                )
            } else {
                "0".into()
            };
            let _ = writeln!(
                out,
                "| {}{} | {} | {:.0} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                f.family,
                if f.calm { " (calm)" } else { "" },
                f.seeds.len(),
                f.instance_hours,
                late,
                rate(f, m),
                rate(f, p),
                tally(&f.required(m, Kind::Growth)),
                tally(&f.required(p, Kind::Growth)),
                median_min(&m.growth_leads_s),
                median_min(&p.growth_leads_s),
                tally(&f.required(m, Kind::Leak)),
                tally(&f.required(m, Kind::SpreadDrift)),
            );
        }
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "t/l/m: required findings said in time / said late / never said. Lead: minutes from the first \
             growth warning to the limit crossing (required leaks; 15 is the target)."
        );
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "| family | memdrift false alarms: growth | leak | spread_drift | reopens | carried over | optional said | \
             leak delay median / min (min) | spread delay median / min (min) | replay s |"
        );
        let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        for f in &self.families {
            let m = &f.memdrift;
            let fa = |k| m.false_alarms_by_kind.get(&k).copied().unwrap_or(0);
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {}/{} | {} | {} | {:.1} |",
                f.family,
                fa(Kind::Growth),
                fa(Kind::Leak),
                fa(Kind::SpreadDrift),
                m.reopens,
                m.carried_over,
                m.optional_said,
                m.optional,
                median_min(&m.leak_delays_s),
                median_min(&m.spread_delays_s),
                f.seconds,
            );
        }
        out
    }

    /// Examples of false alarms, misses and late findings, per family.
    pub fn details(&self, per_family: usize) -> String {
        let mut out = String::new();
        for f in &self.families {
            if f.memdrift.examples.is_empty() {
                continue;
            }
            let _ = writeln!(out, "- {}:", f.family);
            for e in f.memdrift.examples.iter().take(per_family) {
                let _ = writeln!(out, "  - {e}");
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_minimum_in_minutes() {
        assert_eq!(median_min(&[]), "-");
        assert_eq!(median_min(&[600.0, 60.0, 1200.0]), "10.0 / 1.0");
        assert_eq!(median_min(&[600.0, 1200.0]), "15.0 / 10.0");
    }
}
