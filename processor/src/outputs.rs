//! Where anomaly events go, assembled one way for `run`, `replay` and `demo`: a list of
//! [`memdrift_exporter::Output`]s, each handed every batch in order.
//!
//! `run` (and `demo`, which runs the service in-process) takes the pipeline's outputs: `jsonl`, `otlp` and the
//! in-process tap; `replay` takes one JSON lines file. Adding an output is one type implementing `Output` and a
//! line in [`Outputs::of_pipeline`].

use std::io;

use anyhow::{Context, Result};
use memdrift_anomaly::Anomaly;
use memdrift_exporter::jsonl::{Destination, JsonLinesWriter};
use memdrift_exporter::otlp::OtlpExporter;
use memdrift_exporter::Output;
use tokio::sync::broadcast;

use crate::config::Pipeline;

#[derive(Default)]
pub struct Outputs(Vec<Box<dyn Output>>);

impl Outputs {
    pub fn new(outputs: Vec<Box<dyn Output>>) -> Outputs {
        Outputs(outputs)
    }

    /// The outputs a running service has: the pipeline's `jsonl` (when enabled), the OTLP exporter's queue
    /// (when it started), and the in-process `tap`.
    pub fn of_pipeline(
        pipeline: &Pipeline,
        otlp: Option<&OtlpExporter>,
        tap: broadcast::Sender<Anomaly>,
    ) -> Result<Outputs> {
        let file = &pipeline.file;
        let mut outputs: Vec<Box<dyn Output>> = Vec::new();
        if let Some(j) = file
            .exporters
            .jsonl
            .as_ref()
            .filter(|_| file.exporter_enabled("jsonl"))
        {
            let writer = JsonLinesWriter::open(&Destination::parse(&j.path))
                .with_context(|| format!("jsonl exporter: cannot open {}", j.path))?;
            outputs.push(Box::new(writer));
        }
        if let Some(otlp) = otlp {
            outputs.push(Box::new(otlp.sender()));
        }
        outputs.push(Box::new(Tap(tap)));
        Ok(Outputs(outputs))
    }

    /// Hands `events` to every output. Every output gets the batch even when one fails; the first error is
    /// returned (with the output's name) for the caller to log or stop on.
    pub fn write(&mut self, events: &[Anomaly]) -> io::Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        let mut first = Ok(());
        for o in &mut self.0 {
            if let Err(e) = o.write(events) {
                if first.is_ok() {
                    first = Err(io::Error::new(e.kind(), format!("{}: {e}", o.name())));
                }
            }
        }
        first
    }
}

/// Every event to in-process subscribers ([`crate::topology::Service::events`]); never waits for one.
struct Tap(broadcast::Sender<Anomaly>);

impl Output for Tap {
    fn name(&self) -> &'static str {
        "tap"
    }

    fn write(&mut self, events: &[Anomaly]) -> io::Result<()> {
        if self.0.receiver_count() > 0 {
            for a in events {
                // An error only says that nobody is listening any more.
                let _ = self.0.send(a.clone());
            }
        }
        Ok(())
    }
}
