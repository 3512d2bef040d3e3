//! Test support, not part of the product: queues anomaly events in the OTLP exporter's on-disk queue through the
//! real pipeline loader and exporter, says so, then waits to be killed.
//!
//! It exists because the kill -9 test (`tests/tests/otlp_export.rs`) needs a process of its own to kill while
//! its on-disk queue holds undelivered events (the test points it at a port nobody listens on); the test then
//! starts the real service on the same directory and checks that every event arrives. A hidden `memdrift`
//! subcommand would have done the same, at the price of test code in the product's command line.
//!
//! Usage: `otlp_queue_peer --endpoint URL --dir DIR --events N`. Prints `queued N` once `export` has returned
//! for every event (so the events are fsynced on disk).

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use memdrift_e2e::{otlp_pipeline, otlp_settings, test_anomaly};
use memdrift_exporter::otlp::{ExporterMetrics, OtlpExporter};

struct Args {
    endpoint: String,
    dir: String,
    events: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut endpoint = None;
    let mut dir = None;
    let mut events = None;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--endpoint" => endpoint = Some(value),
            "--dir" => dir = Some(value),
            "--events" => {
                events = Some(
                    value
                        .parse()
                        .map_err(|e| format!("--events {value}: {e}"))?,
                )
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(Args {
        endpoint: endpoint.ok_or("--endpoint is required")?,
        dir: dir.ok_or("--dir is required")?,
        events: events.ok_or("--events is required")?,
    })
}

async fn run(args: Args) -> Result<(), String> {
    let settings = otlp_settings(
        "grpc",
        &args.endpoint,
        &format!("    queue: {{ directory: \"{}\" }}\n", args.dir),
    );
    let config = otlp_pipeline(&settings)
        .otlp
        .ok_or("the pipeline has no otlp exporter")?;
    let registry = prometheus::Registry::new();
    let metrics = ExporterMetrics::register(&registry).map_err(|e| e.to_string())?;
    let exporter = OtlpExporter::start(config, metrics, registry).map_err(|e| e.to_string())?;
    let sender = exporter.sender();
    for i in 0..args.events {
        sender.export(&[test_anomaly(&format!("queued-{i}"))]);
    }
    println!("queued {}", args.events);
    std::io::stdout().flush().map_err(|e| e.to_string())?;
    loop {
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("otlp_queue_peer: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("otlp_queue_peer: cannot start a runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("otlp_queue_peer: {e}");
            ExitCode::FAILURE
        }
    }
}
