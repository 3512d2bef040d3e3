//! The `memdrift` command line: run (the default), replay, demo, validate.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use memdrift::config::Pipeline;
use memdrift::replay::{replay, ReplayOptions};
use tracing_subscriber::EnvFilter;

/// Catches memory trouble in AI inference services from OTLP spans and metrics.
#[derive(Parser)]
#[command(name = "memdrift", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service (the default): OTLP in, anomaly events and metrics out.
    Run {
        /// Pipeline file; without it the embedded pipelines/default.yaml.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Replay files of OTLP/JSON lines (the Collector's `file` exporter format) in event time.
    Replay {
        /// Input files, one OTLP/JSON TracesData or MetricsData object per line.
        #[arg(long, short, num_args = 1.., required = true)]
        input: Vec<PathBuf>,
        /// Where anomaly events go, as JSON lines ("-" for stdout).
        #[arg(long, short)]
        output: PathBuf,
        /// Pipeline file; without it the embedded default.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Also write each closed window's per-series summary (count, mean, sd, median, MAD, p95) here: every
        /// cohort series, and an instance's series of the signals the pipeline's per-instance detectors read.
        #[arg(long)]
        summaries: Option<PathBuf>,
        /// No progress bar and no closing summary.
        #[arg(long, short)]
        quiet: bool,
    },
    /// A self-contained show: instrumented services with planted memory trouble, and what memdrift finds.
    Demo {
        /// How long the services send requests (detection must happen within it).
        #[arg(long, default_value = "90s", value_parser = humantime::parse_duration)]
        duration: std::time::Duration,
    },
    /// Check a pipeline file and explain any problem.
    Validate {
        #[arg(long, short)]
        config: PathBuf,
    },
}

fn load(config: Option<&PathBuf>) -> Result<Pipeline, memdrift::config::ConfigError> {
    match config {
        Some(path) => Pipeline::load(path),
        None => Pipeline::default_pipeline(),
    }
}

fn runtime() -> Option<tokio::runtime::Runtime> {
    tokio::runtime::Runtime::new()
        .map_err(|e| eprintln!("error: cannot start the async runtime: {e}"))
        .ok()
}

/// glibc gives memory freed at the top of a thread's heap back to the kernel once 128 KiB of it is free
/// (`M_TRIM_THRESHOLD`), and serves each allocation over 128 KiB (a request body) with an mmap of its own, so
/// under steady load every request faulted its pages in again: 15% of the CPU at 50k spans/s went to page
/// faults and `madvise`. Up to 8 MiB free per heap is kept, and allocations up to 4 MiB come from the heaps.
/// What requests hold at once stays bounded by the decode budget; this only keeps a few MiB warm per thread.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn keep_freed_memory_warm() {
    // SAFETY: mallopt only sets allocator parameters; it is called before any other thread starts.
    unsafe {
        libc::mallopt(libc::M_TRIM_THRESHOLD, 8 << 20);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 4 << 20);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn keep_freed_memory_warm() {}

fn main() -> ExitCode {
    keep_freed_memory_warm();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Colours only for a person at a terminal: log collectors get plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Run { config: None }) {
        Command::Run { config } => {
            let pipeline = match load(config.as_ref()) {
                Ok(p) => p,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            let Some(runtime) = runtime() else {
                return ExitCode::FAILURE;
            };
            match runtime.block_on(memdrift::topology::run(pipeline)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Replay {
            input,
            output,
            config,
            summaries,
            quiet,
        } => {
            let pipeline = match load(config.as_ref()) {
                Ok(p) => p,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            let opts = ReplayOptions {
                inputs: input,
                output,
                summaries,
                progress: !quiet,
            };
            match replay(&pipeline, &opts) {
                Ok(summary) => {
                    if !quiet {
                        eprintln!("{summary}");
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Demo { duration } => {
            let Some(runtime) = runtime() else {
                return ExitCode::FAILURE;
            };
            let opts = memdrift::demo::DemoOptions { duration };
            let mut stdout = std::io::stdout();
            match runtime.block_on(memdrift::demo::run(&opts, &mut stdout)) {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => {
                    eprintln!(
                        "demo: not everything planted was found, or something else was reported"
                    );
                    ExitCode::FAILURE
                }
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Validate { config } => match Pipeline::load(&config) {
            Ok(p) => {
                for w in &p.warnings {
                    eprintln!("warning: {w}");
                }
                println!("{}: ok", config.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(2)
            }
        },
    }
}
