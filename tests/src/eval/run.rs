//! One scenario end to end: written as Collector-file lines, replayed through `memdrift::replay::replay` with a
//! pipeline, its JSON lines read back and scored; the `predict_linear` baseline scored on the same points.

use std::io::BufRead;
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use memdrift::config::Pipeline;
use memdrift::replay::{replay, ReplayOptions, ReplaySummary};
use memdrift_exporter::AnomalyRecord;

use super::baseline::PredictLinear;
use super::score::{self, Open, Score};
use super::{otlp, Data, Kind, Scenario, T0};

/// What one scenario gave.
#[derive(Debug)]
pub struct ScenarioResult {
    pub family: &'static str,
    pub seed: u64,
    pub instance_hours: f64,
    pub lines: u64,
    pub bytes: u64,
    /// Values extracted (one per signal of a span or point), and those late: dropped, or kept for their instance
    /// but too late for their cohort's windows.
    pub values: u64,
    pub late_values: u64,
    pub memdrift: Score,
    pub predict_linear: Score,
    pub seconds: f64,
}

/// Reads a replay's JSON lines.
pub fn read_records(path: &Path) -> Result<Vec<AnomalyRecord>> {
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut records = Vec::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.with_context(|| format!("reading {}", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let r: AnomalyRecord = serde_json::from_str(&line)
            .with_context(|| format!("{}:{}: not an anomaly record", path.display(), i + 1))?;
        records.push(r);
    }
    Ok(records)
}

/// Replays `input` with `pipeline`, the events to `output`; returns the summary and the events.
pub fn replay_file(
    pipeline: &Pipeline,
    input: &Path,
    output: &Path,
) -> Result<(ReplaySummary, Vec<AnomalyRecord>)> {
    let opts = ReplayOptions {
        inputs: vec![input.to_path_buf()],
        output: output.to_path_buf(),
        summaries: None,
        progress: false,
    };
    let summary = replay(pipeline, &opts)?;
    let records = read_records(output)?;
    Ok((summary, records))
}

/// The baseline's alerts on the scenario's points: each instance's memory level and limit, in time order.
pub fn baseline_opens(s: &Scenario) -> Vec<Open> {
    let mut series: Vec<Vec<(u64, f64, Option<f64>)>> = vec![Vec::new(); s.sources.len()];
    match &s.data {
        Data::Spans(spans) => {
            for r in spans {
                if let Some(v) = series.get_mut(r.source as usize) {
                    v.push((r.t_ns, r.rss_end as f64, Some(r.limit as f64)));
                }
            }
        }
        Data::Metrics { points, .. } => {
            for r in points {
                if let Some(v) = series.get_mut(r.source as usize) {
                    v.push((r.t_ns, r.value as f64, r.limit.map(|l| l as f64)));
                }
            }
        }
    }
    let mut opens = Vec::new();
    for (source, mut points) in series.into_iter().enumerate() {
        let Some(key) = s.instance_key(source as u32) else {
            continue;
        };
        points.sort_by_key(|p| p.0);
        let mut rule = PredictLinear::new();
        for (t_ns, v, limit) in points {
            let t_s = (t_ns as f64 - T0 as f64) / 1e9;
            if rule.push(t_s, v, limit) {
                opens.push(Open {
                    kind: Kind::Growth,
                    key: key.clone(),
                    t_s,
                    class: None,
                    resolved_s: None,
                });
            }
        }
    }
    opens
}

/// Writes, replays and scores one scenario in `dir`; the files are removed unless `keep`.
pub fn run_scenario(
    s: &Scenario,
    pipeline: &Pipeline,
    dir: &Path,
    keep: bool,
) -> Result<ScenarioResult> {
    let started = Instant::now();
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let input = dir.join(format!("{}-{}.jsonl", s.family, s.seed));
    let output = dir.join(format!("{}-{}.anomalies.jsonl", s.family, s.seed));
    let lines = otlp::write(s, &input).with_context(|| format!("writing {}", input.display()))?;
    let (summary, records) = replay_file(pipeline, &input, &output)?;
    if !keep {
        let _ = std::fs::remove_file(&input);
        let _ = std::fs::remove_file(&output);
    }
    let tag = format!("{}#{}", s.family, s.seed);
    let memdrift = score::score(&s.truth, &score::opens(&records, T0), &tag, &s.about);
    let growth_truth: Vec<_> = s
        .truth
        .iter()
        .filter(|e| e.kind == Kind::Growth)
        .cloned()
        .collect();
    let predict_linear = score::score(&growth_truth, &baseline_opens(s), &tag, &s.about);
    Ok(ScenarioResult {
        family: s.family,
        seed: s.seed,
        instance_hours: s.instance_hours(),
        lines,
        bytes: summary.bytes,
        values: summary.extract.values_by_signal.iter().sum(),
        late_values: summary.late_values + summary.late_for_cohort_values,
        memdrift,
        predict_linear,
        seconds: started.elapsed().as_secs_f64(),
    })
}
