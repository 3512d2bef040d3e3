//! `memdrift replay`: files of OTLP/JSON lines (the Collector's `file` exporter format) through the same
//! extraction, engine and detectors as the service, in event time. Deterministic: the same files and pipeline
//! give the same output, byte for byte.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::io::{BufRead, BufReader, IsTerminal};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use memdrift_exporter::jsonl::{Destination, JsonLinesWriter};
use serde::Serialize;

use crate::config::Pipeline;
use crate::core::{Core, Output};
use crate::engine::{ClosedWindow, Scope};
use crate::extract::{extract_metrics, extract_spans, ExtractStats};
use crate::outputs::Outputs;
use crate::receivers::otlp::json::JsonDocument;

pub struct ReplayOptions {
    pub inputs: Vec<PathBuf>,
    /// Anomaly events, as JSON lines ("-" for stdout). The file is replaced, not appended to.
    pub output: PathBuf,
    /// Also write every closed window's per-series summary as JSON lines (an instance's series: the signals the
    /// per-instance detectors read).
    pub summaries: Option<PathBuf>,
    /// Show a progress bar (only drawn when stderr is a terminal).
    pub progress: bool,
}

/// What a replay read and produced.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ReplaySummary {
    pub files: usize,
    pub bytes: u64,
    pub lines: u64,
    pub broken_lines: u64,
    /// The first few broken lines: "file:line: error".
    pub broken_examples: Vec<String>,
    pub extract: ExtractStats,
    /// Samples (spans and points that gave at least one value).
    pub samples: u64,
    /// Values dropped because their instance's windows had closed.
    pub late_values: u64,
    /// Values kept for their instance but too late for their cohort's windows.
    pub late_for_cohort_values: u64,
    pub overflow_values: u64,
    pub windows: u64,
    pub anomalies: BTreeMap<String, u64>,
    pub elapsed: Duration,
}

/// One line of the `--summaries` output.
#[derive(Serialize)]
struct SummaryLine<'a> {
    window_start: String,
    window_end: String,
    service: &'a str,
    scope: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    cohort: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    instance: Option<&'a str>,
    signal: &'static str,
    count: u64,
    mean: f64,
    sd: f64,
    median: f64,
    mad: f64,
    p95: f64,
}

fn summary_lines(w: &ClosedWindow) -> Vec<SummaryLine<'_>> {
    use memdrift_exporter::anomaly::rfc3339;
    w.summaries
        .iter()
        .map(|s| {
            let (cohort, instance) = match &s.key.group.scope {
                Scope::Cohort(c) => (Some(c.as_deref().unwrap_or("")), None),
                Scope::Instance(i) => (None, Some(&**i)),
            };
            SummaryLine {
                window_start: rfc3339(w.start_unix_nano),
                window_end: rfc3339(w.end_unix_nano),
                service: &s.key.group.service,
                scope: s.key.group.scope.kind(),
                cohort,
                instance,
                signal: s.key.signal.name(),
                count: s.count,
                mean: s.mean,
                sd: s.sd,
                median: s.median,
                mad: s.mad,
                p95: s.p95,
            }
        })
        .collect()
}

fn open_output(path: &Path) -> Result<JsonLinesWriter> {
    if path.as_os_str() == "-" {
        return Ok(JsonLinesWriter::open(&Destination::Stdout)?);
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let file = File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    Ok(JsonLinesWriter::new(Box::new(std::io::BufWriter::new(
        file,
    ))))
}

struct Sinks {
    anomalies: Outputs,
    summaries: Option<JsonLinesWriter>,
}

impl Sinks {
    fn emit(&mut self, out: &Output, summary: &mut ReplaySummary) -> Result<()> {
        summary.windows += out.windows.len() as u64;
        for a in &out.anomalies {
            *summary
                .anomalies
                .entry(a.kind().name().to_string())
                .or_default() += 1;
        }
        self.anomalies.write(&out.anomalies)?;
        if let Some(s) = &mut self.summaries {
            for w in &out.windows {
                s.write_all(&summary_lines(w))?;
            }
        }
        Ok(())
    }
}

/// Replays `opts.inputs` through `pipeline`. Errors only for I/O (a missing input, an unwritable output);
/// broken lines are counted and skipped.
pub fn replay(pipeline: &Pipeline, opts: &ReplayOptions) -> Result<ReplaySummary> {
    let started = Instant::now();
    let mut sinks = Sinks {
        anomalies: Outputs::new(vec![Box::new(open_output(&opts.output)?)]),
        summaries: opts.summaries.as_deref().map(open_output).transpose()?,
    };
    let total: u64 = opts
        .inputs
        .iter()
        .map(|p| {
            std::fs::metadata(p)
                .map(|m| m.len())
                .with_context(|| format!("cannot read {}", p.display()))
        })
        .sum::<Result<u64>>()?;
    let bar = if opts.progress && std::io::stderr().is_terminal() {
        let bar = ProgressBar::new(total);
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} replay [{bar:30}] {bytes}/{total_bytes} {msg} ({eta})",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar
    } else {
        ProgressBar::hidden()
    };

    let mut core = Core::new(pipeline.engine.clone(), pipeline.build_detectors());
    let mut summary = ReplaySummary {
        files: opts.inputs.len(),
        ..Default::default()
    };
    let mut samples = Vec::new();
    let mut line = Vec::new();
    for path in &opts.inputs {
        let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        let mut reader = BufReader::with_capacity(1 << 20, file);
        let mut lineno = 0u64;
        loop {
            line.clear();
            let n = reader
                .read_until(b'\n', &mut line)
                .with_context(|| format!("reading {}", path.display()))?;
            if n == 0 {
                break;
            }
            lineno += 1;
            summary.bytes += n as u64;
            bar.inc(n as u64);
            while line.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                line.pop();
            }
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            summary.lines += 1;
            let doc = match JsonDocument::parse_keeping(&line, &pipeline.extract) {
                Ok(doc) => doc,
                Err(e) => {
                    summary.broken_lines += 1;
                    if summary.broken_examples.len() < 5 {
                        summary
                            .broken_examples
                            .push(format!("{}:{lineno}: {e}", path.display()));
                    }
                    continue;
                }
            };
            let mut stats = ExtractStats::default();
            samples.clear();
            extract_spans(&doc.traces(), &pipeline.extract, &mut samples, &mut stats);
            extract_metrics(&doc.metrics(), &pipeline.extract, &mut samples, &mut stats);
            summary.samples += samples.len() as u64;
            summary.extract.merge(&stats);
            let out = core.ingest(&samples);
            sinks.emit(&out, &mut summary)?;
            if lineno.is_multiple_of(64) {
                bar.set_message(format!("{} samples", summary.samples));
            }
        }
    }
    let out = core.finish();
    sinks.emit(&out, &mut summary)?;
    bar.finish_and_clear();
    let stats = core.engine().stats();
    summary.late_values = stats.late_values;
    summary.late_for_cohort_values = stats.late_for_cohort_values;
    summary.overflow_values = stats.overflow_values;
    summary.elapsed = started.elapsed();
    Ok(summary)
}

fn by_reason<K: Copy>(
    map: &std::collections::HashMap<K, u64>,
    name: impl Fn(K) -> &'static str,
) -> String {
    let mut v: Vec<(&'static str, u64)> = map.iter().map(|(k, n)| (name(*k), *n)).collect();
    v.sort();
    if v.is_empty() {
        "none".into()
    } else {
        v.iter()
            .map(|(k, n)| format!("{k}={n}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl fmt::Display for ReplaySummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        let e = &self.extract;
        writeln!(
            f,
            "replayed {} file(s), {:.1} MB: {} lines ({} broken) in {:.2} s ({:.0} lines/s, {:.0} spans/s)",
            self.files,
            self.bytes as f64 / 1e6,
            self.lines,
            self.broken_lines,
            secs,
            self.lines as f64 / secs,
            e.spans as f64 / secs,
        )?;
        for b in &self.broken_examples {
            writeln!(f, "  broken     {b}")?;
        }
        writeln!(
            f,
            "  spans      {} read, {} gave samples; refused: {}",
            e.spans,
            e.spans_accepted,
            by_reason(&e.refused, |r| r.name())
        )?;
        writeln!(
            f,
            "  metrics    {} points read, {} gave samples",
            e.metric_points, e.metric_points_accepted
        )?;
        writeln!(
            f,
            "  values     dropped: {}",
            by_reason(&e.dropped_values, |r| r.name())
        )?;
        writeln!(
            f,
            "  samples    {} ({} values late, {} late for their cohort only, {} over the key cap); by signal: {}",
            self.samples,
            self.late_values,
            self.late_for_cohort_values,
            self.overflow_values,
            by_reason(&e.samples_by_signal(), |s| s.name())
        )?;
        writeln!(f, "  windows    {} closed", self.windows)?;
        let anomalies: Vec<String> = memdrift_exporter::AnomalyKind::ALL
            .iter()
            .map(|k| {
                format!(
                    "{}={}",
                    k.name(),
                    self.anomalies.get(k.name()).copied().unwrap_or(0)
                )
            })
            .collect();
        write!(f, "  anomalies  {}", anomalies.join(", "))
    }
}
