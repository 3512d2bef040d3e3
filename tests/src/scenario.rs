//! An A/B scenario generator: simulated inference traffic of baseline and canary cohorts, written as the
//! OpenTelemetry Collector's `file` exporter writes spans (one OTLP/JSON `TracesData` per line), so that
//! `memdrift replay` can be tested on files exactly like the ones operators will feed it.
//!
//! Every request is a span "chat <model>" with `memspan.request.allocated` (normal around a per-cohort mean,
//! with a spread that can change over time), and `memspan.rss.start` / `memspan.rss.end` from a per-instance
//! AR(1) resident set size. A line holds ten seconds of one instance's spans. Seeded: the same scenario writes
//! the same bytes.

use std::io::{BufWriter, Write};
use std::path::Path;

use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, TracesData};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::StandardNormal;

use crate::{int, resource, span, string};

/// A change of a cohort's request-allocation spread during [from, until) minutes.
#[derive(Clone, Copy, Debug)]
pub struct SpreadChange {
    pub from_minute: f64,
    pub until_minute: f64,
    /// Multiplier of the sd.
    pub ratio: f64,
}

#[derive(Clone, Debug)]
pub struct Cohort {
    pub version: &'static str,
    pub instances: usize,
    /// Requests per minute over all instances of the cohort.
    pub per_minute: usize,
    /// Mean and sd of bytes allocated per request.
    pub mean_bytes: f64,
    pub sd_bytes: f64,
    pub change: Option<SpreadChange>,
}

#[derive(Clone, Debug)]
pub struct Service {
    pub name: &'static str,
    pub cohorts: Vec<Cohort>,
}

#[derive(Clone, Debug)]
pub struct Scenario {
    pub services: Vec<Service>,
    pub minutes: u64,
    pub seed: u64,
    /// Event time of minute 0, Unix nanoseconds.
    pub start_unix_nano: u64,
}

impl Scenario {
    /// Writes the scenario; returns the number of spans.
    pub fn write(&self, path: &Path) -> std::io::Result<u64> {
        let mut out = BufWriter::new(std::fs::File::create(path)?);
        let mut rng = StdRng::seed_from_u64(self.seed);
        let mut spans_written = 0;
        let step_ns: u64 = 10_000_000_000;
        let steps = self.minutes * 6;
        // One AR(1) RSS state per instance, across the whole run.
        let mut rss: Vec<Vec<Vec<f64>>> = self
            .services
            .iter()
            .map(|s| s.cohorts.iter().map(|c| vec![0.0; c.instances]).collect())
            .collect();
        let mut n = 0u64;
        for step in 0..steps {
            for (si, svc) in self.services.iter().enumerate() {
                for (ci, cohort) in svc.cohorts.iter().enumerate() {
                    let per_step = (cohort.per_minute / 6 / cohort.instances).max(1);
                    for (i, state) in rss[si][ci].iter_mut().enumerate() {
                        let instance =
                            format!("{}-{}-{i}", svc.name, cohort.version.replace('.', "-"));
                        let mut spans = Vec::with_capacity(per_step);
                        for k in 0..per_step {
                            n += 1;
                            let end = self.start_unix_nano
                                + step * step_ns
                                + (k as u64 * step_ns) / per_step as u64
                                + rng.random_range(0..1_000_000);
                            let minute = (end - self.start_unix_nano) as f64 / 60e9;
                            let ratio = cohort
                                .change
                                .filter(|c| (c.from_minute..c.until_minute).contains(&minute))
                                .map_or(1.0, |c| c.ratio);
                            let e: f64 = rng.sample(StandardNormal);
                            let allocated = (cohort.mean_bytes + cohort.sd_bytes * ratio * e)
                                .max(0.0)
                                .round();
                            let shock: f64 = rng.sample(StandardNormal);
                            let start = 800e6 + 20e6 * *state;
                            *state = 0.9 * *state + (1.0f64 - 0.81).sqrt() * shock;
                            let stop = 800e6 + 20e6 * *state;
                            spans.push(span(
                                n,
                                end,
                                vec![
                                    string("gen_ai.operation.name", "chat"),
                                    string("gen_ai.request.model", "small-model"),
                                    int("memspan.request.allocated", allocated as i64),
                                    int("memspan.rss.start", start.round() as i64),
                                    int("memspan.rss.end", stop.round() as i64),
                                    crate::kv("memspan.limit", Value::IntValue(4 << 30)),
                                ],
                            ));
                        }
                        spans_written += spans.len() as u64;
                        let data = TracesData {
                            resource_spans: vec![ResourceSpans {
                                resource: Some(resource(svc.name, cohort.version, &instance)),
                                scope_spans: vec![ScopeSpans {
                                    spans,
                                    ..Default::default()
                                }],
                                ..Default::default()
                            }],
                        };
                        serde_json::to_writer(&mut out, &data)?;
                        out.write_all(b"\n")?;
                    }
                }
            }
        }
        out.flush()?;
        Ok(spans_written)
    }
}
